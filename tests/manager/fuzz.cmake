# libFuzzer target (clang only): configure with CXX=clang++ -DKVPOOL_FUZZ=ON, or run
# scripts/fuzz-manager.sh SECONDS, which does that in build-fuzz/.
if(KVPOOL_FUZZ)
  add_executable(kvpool-manager-fuzz ${CMAKE_CURRENT_LIST_DIR}/fuzz/manager_request_fuzz.cc)
  target_link_libraries(kvpool-manager-fuzz PRIVATE kvpool_manager_service)
  target_compile_options(kvpool-manager-fuzz PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(kvpool-manager-fuzz PRIVATE -fsanitize=fuzzer,address,undefined)
endif()
