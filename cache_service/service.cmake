# The manager service around kvpool_manager_core: pool host, auth, metrics, HTTP,
# the gRPC service (kvpool_manager_service), the kvpool-manager binary and its bench.
# Never links LibTorch.
# The dashboard's page, script and style, compiled in as byte arrays.
set(KVPOOL_DASHBOARD_FILES ${CMAKE_CURRENT_LIST_DIR}/dashboard/index.html
  ${CMAKE_CURRENT_LIST_DIR}/dashboard/dashboard.js ${CMAKE_CURRENT_LIST_DIR}/dashboard/dashboard.css
  ${CMAKE_CURRENT_LIST_DIR}/dashboard/cache_size.js)
add_custom_command(OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/dashboard_assets.cc
  COMMAND ${CMAKE_COMMAND} -DOUT=${CMAKE_CURRENT_BINARY_DIR}/dashboard_assets.cc
    "-DFILES=${KVPOOL_DASHBOARD_FILES}" -P ${CMAKE_CURRENT_LIST_DIR}/dashboard/embed.cmake
  DEPENDS ${KVPOOL_DASHBOARD_FILES} ${CMAKE_CURRENT_LIST_DIR}/dashboard/embed.cmake
  COMMENT "Embedding the dashboard" VERBATIM)

# KV events on the wire (kv_event_publisher.h): ZeroMQ through cppzmq, msgpack-c++.
find_package(cppzmq CONFIG REQUIRED)
find_package(msgpack-cxx CONFIG QUIET)  # msgpack-c++ 6 (Ubuntu 24.04): target msgpack-cxx
if(TARGET msgpack-cxx)
  set(KVPOOL_MSGPACK msgpack-cxx)
else()
  find_package(msgpack CONFIG REQUIRED)  # Debian 12's 4.1: package msgpack, msgpackc-cxx
  set(KVPOOL_MSGPACK msgpackc-cxx)
endif()

add_library(kvpool_manager_service STATIC
  ${CMAKE_CURRENT_LIST_DIR}/pool_host.cc
  ${CMAKE_CURRENT_LIST_DIR}/kv_event_publisher.cc
  ${CMAKE_CURRENT_LIST_DIR}/auth.cc
  ${CMAKE_CURRENT_LIST_DIR}/metrics.cc
  ${CMAKE_CURRENT_LIST_DIR}/grpc_service.cc
  ${CMAKE_CURRENT_LIST_DIR}/dashboard.cc
  ${CMAKE_CURRENT_BINARY_DIR}/dashboard_assets.cc)
target_include_directories(kvpool_manager_service PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(kvpool_manager_service
  PUBLIC kvpool_manager_core kvpool_rpc kvpool_observability kvpool_model_config gRPC::grpc++
    Boost::system Threads::Threads rt
  PRIVATE nlohmann_json::nlohmann_json cppzmq ${KVPOOL_MSGPACK} kvpool_warnings)

if(TARGET kvpool_manager_cuda)
  target_link_libraries(kvpool_manager_service PUBLIC kvpool_manager_cuda)
  target_compile_definitions(kvpool_manager_service PRIVATE KVPOOL_MANAGER_HAVE_CUDA=1)
endif()

add_executable(kvpool-manager ${CMAKE_CURRENT_LIST_DIR}/main.cc)
target_link_libraries(kvpool-manager PRIVATE kvpool_manager_service kvpool_rpc gRPC::grpc++_reflection
  kvpool_warnings)

add_executable(kvpool-manager-bench ${CMAKE_CURRENT_LIST_DIR}/bench_main.cc)
target_link_libraries(kvpool-manager-bench PRIVATE kvpool_manager_service kvpool_warnings)
