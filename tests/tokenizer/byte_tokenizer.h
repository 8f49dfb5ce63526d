// A Tokenizer whose ids are bytes (each byte its own token), so that a test's expected
// encodings read as text. For tests of code above the tokenizer (chat templates, the
// chat API's request mapping).
#pragma once

#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kvpool::testing_util {

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text) const override {
    return {text.begin(), text.end()};
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    return {ids.begin(), ids.end()};
  }
  int64_t VocabSize() const override { return 1000; }
  int32_t EosId() const override { return -1; }
  std::string Name() const override { return "bytes"; }
};

}  // namespace kvpool::testing_util
