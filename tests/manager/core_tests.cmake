# Tests of kvpool_manager_core (no gRPC): unit tests of each part and a randomized
# property test of CacheManager with CheckInvariants after every operation.
kvpool_add_test(manager_core_test
  SOURCES
    ${CMAKE_CURRENT_SOURCE_DIR}/core/block_hash_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/core/block_pool_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/core/cache_manager_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/core/gpu_uuid_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/core/hit_rate_curve_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/core/kv_events_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/core/pin_test.cc
  LIBS kvpool_manager_core
  LABELS manager)
kvpool_add_test(manager_core_property_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/core/cache_manager_property_test.cc
  LIBS kvpool_manager_core
  LABELS manager)
