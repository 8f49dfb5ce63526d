// Shared helpers for the tokenizer tests: fixture paths, the real GPT-2 rank file (absent on
// machines that never ran scripts/install-deps.sh, so tests that need it skip), and a scratch
// folder per test for files the tests write themselves.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"

namespace kvpool {
namespace testing_util {

inline std::string FixturePath(const std::string& name) {
  return std::string(KVPOOL_TEST_DATA_DIR) + "/tokenizer/" + name;
}

inline std::string RankFilePath() {
  return std::string(KVPOOL_SOURCE_DIR) + "/bench/data/gpt2.tiktoken";
}

inline bool HaveRankFile() { return std::filesystem::is_regular_file(RankFilePath()); }

constexpr char kNoRankFile[] = "bench/data/gpt2.tiktoken is missing: run scripts/install-deps.sh";

// The real GPT-2 tokenizer, loaded once per process; nullptr when the rank file is absent.
inline const Tokenizer* SharedGpt2() {
  static const std::unique_ptr<Tokenizer> tokenizer =
      HaveRankFile() ? LoadGpt2TiktokenFile(RankFilePath()) : nullptr;
  return tokenizer.get();
}

// A fresh folder under the system temp dir, removed with everything in it on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("kvpool_tok_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" +
             std::to_string(getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  // Writes `contents` to <dir>/<name> and returns the full path.
  std::string Write(const std::string& name, const std::string& contents) const {
    const std::string file = (path_ / name).string();
    std::ofstream(file, std::ios::binary) << contents;
    return file;
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace testing_util
}  // namespace kvpool
