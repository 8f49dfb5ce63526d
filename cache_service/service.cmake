# The manager service around kvpool_manager_core: pool host, auth, metrics, HTTP,
# the gRPC service (kvpool_manager_service), the kvpool-manager binary and its bench.
# Never links LibTorch.
add_library(kvpool_manager_service STATIC
  ${CMAKE_CURRENT_LIST_DIR}/pool_host.cc
  ${CMAKE_CURRENT_LIST_DIR}/auth.cc
  ${CMAKE_CURRENT_LIST_DIR}/metrics.cc
  ${CMAKE_CURRENT_LIST_DIR}/http_server.cc
  ${CMAKE_CURRENT_LIST_DIR}/grpc_service.cc)
target_include_directories(kvpool_manager_service PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(kvpool_manager_service
  PUBLIC kvpool_manager_core kvpool_proto gRPC::grpc++ Boost::system Threads::Threads rt
  PRIVATE kvpool_warnings)

if(TARGET kvpool_manager_cuda)
  target_link_libraries(kvpool_manager_service PUBLIC kvpool_manager_cuda)
  target_compile_definitions(kvpool_manager_service PRIVATE KVPOOL_MANAGER_HAVE_CUDA=1)
endif()

add_executable(kvpool-manager ${CMAKE_CURRENT_LIST_DIR}/main.cc)
target_link_libraries(kvpool-manager PRIVATE kvpool_manager_service kvpool_tls gRPC::grpc++_reflection
  kvpool_warnings)

add_executable(kvpool-manager-bench ${CMAKE_CURRENT_LIST_DIR}/bench_main.cc)
target_link_libraries(kvpool-manager-bench PRIVATE kvpool_manager_service kvpool_warnings)
