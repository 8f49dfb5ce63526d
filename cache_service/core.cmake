# kvpool_manager_core: block pool, prefix index, sequence table, leases, CacheManager.
set(KVPOOL_MANAGER_CORE_SRC
  block_pool.cc
  block_hash.cc
  prefix_index.cc
  sequence_table.cc
  lease_tracker.cc
  cache_manager.cc
  cache_manager_stats.cc
  cache_manager_pins.cc
  pin_table.cc
  stack_distance.cc
  hit_rate_curve.cc)
list(TRANSFORM KVPOOL_MANAGER_CORE_SRC PREPEND ${CMAKE_CURRENT_SOURCE_DIR}/)
add_library(kvpool_manager_core STATIC ${KVPOOL_MANAGER_CORE_SRC})
target_include_directories(kvpool_manager_core PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(kvpool_manager_core PUBLIC kvpool_common Threads::Threads PRIVATE kvpool_warnings)

# What the predicted hit-rate curve costs per block reference (Google Benchmark, from
# Debian's libbenchmark-dev; skipped where it is missing).
if(benchmark_FOUND)
  add_executable(kvpool-hit-rate-bench ${CMAKE_CURRENT_SOURCE_DIR}/hit_rate_curve_bench.cc)
  target_link_libraries(kvpool-hit-rate-bench PRIVATE kvpool_manager_core benchmark::benchmark
    kvpool_warnings)
endif()
