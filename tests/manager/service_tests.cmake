# Service tests: the real kvpool-manager binary on loopback, driven through the
# generated stub (errors + auth, 16-client load, leases, SIGTERM, metrics, health).
if(TARGET kvpool-manager)
  add_executable(kvpool-manager-test-client ${CMAKE_CURRENT_LIST_DIR}/service/lease_client_main.cc)
  target_link_libraries(kvpool-manager-test-client PRIVATE kvpool_rpc kvpool_warnings)

  kvpool_add_test(manager_service_test
    SOURCES
      ${CMAKE_CURRENT_LIST_DIR}/service/manager_process.cc
      ${CMAKE_CURRENT_LIST_DIR}/service/service_errors_test.cc
      ${CMAKE_CURRENT_LIST_DIR}/service/service_security_test.cc
      ${CMAKE_CURRENT_LIST_DIR}/service/service_load_test.cc
      ${CMAKE_CURRENT_LIST_DIR}/service/service_lifecycle_test.cc
    LIBS kvpool_rpc kvpool_subprocess kvpool_health_proto nlohmann_json::nlohmann_json
    LABELS manager)
  target_include_directories(manager_service_test PRIVATE ${KVPOOL_SOURCE_DIR})
  target_compile_definitions(manager_service_test PRIVATE
    KVPOOL_MANAGER_BIN="$<TARGET_FILE:kvpool-manager>"
    KVPOOL_TEST_CLIENT_BIN="$<TARGET_FILE:kvpool-manager-test-client>")
  add_dependencies(manager_service_test kvpool-manager kvpool-manager-test-client)
endif()
