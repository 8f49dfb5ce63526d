// SentencePiece over tests/data/tokenizer/sentencepiece/tokenizer.model (600-piece BPE with byte
// fallback, trained by make_fixtures.py). Expected ids come from the sentencepiece 0.2.x Python
// package, SentencePieceProcessor(model_file=...).encode(text), which adds no BOS either.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace kvpool {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;
using testing_util::FixturePath;

#if KVPOOL_HAVE_SENTENCEPIECE

class SentencePieceTest : public ::testing::Test {
 protected:
  void SetUp() override { sp_ = LoadSentencePiece(FixturePath("sentencepiece/tokenizer.model")); }
  std::unique_ptr<Tokenizer> sp_;
};

TEST_F(SentencePieceTest, MatchesPythonIdsAndRoundTrips) {
  struct Case {
    const char* text;
    std::vector<int32_t> ids;
  };
  const std::vector<Case> cases = {
      {"This program is free software.", {431, 280, 319, 378, 341, 284, 468, 396, 476, 517}},
      {"Hello world", {494, 540, 495, 393, 496, 276, 262, 506, 505}},
      {"深度学习中的注意力机制是一种",
       {494, 590, 583, 582, 575, 563, 565, 564, 584, 580, 587, 579, 586, 574, 591}},
      {"🙂 naïve café",
       {494, 243, 162, 156, 133, 299, 501, 198, 178, 313, 268, 501, 508, 198, 172}},
      {"  leading and  double  spaces",
       {494, 494, 314, 495, 501, 389, 311, 494, 303, 277, 515, 322, 494, 282, 509, 501, 503, 294}},
      {"Licensed under the Apache License, Version 2.0",
       {325, 505, 384, 267, 347, 509, 501, 344, 495, 325, 514, 494, 553, 264, 339, 494, 551, 517,
        550}},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(sp_->Encode(c.text), ElementsAreArray(c.ids)) << c.text;
    EXPECT_EQ(sp_->Decode(c.ids), c.text);
  }
}

TEST_F(SentencePieceTest, VocabularyShape) {
  EXPECT_EQ(sp_->VocabSize(), 600);
  EXPECT_EQ(sp_->EosId(), 2);
  EXPECT_EQ(sp_->TokenText(494), " ");                 // "▁".
  EXPECT_EQ(sp_->TokenText(3), std::string(1, '\0'));  // "<0x00>".
  EXPECT_EQ(sp_->TokenText(2), "");                    // "</s>" is a control piece.
  EXPECT_THROW(sp_->Decode({600}), std::out_of_range);
}

TEST(SentencePieceLoadTest, MissingModelNamesThePath) {
  EXPECT_THAT([] { LoadSentencePiece("/nonexistent/tokenizer.model"); },
              ThrowsMessage<std::runtime_error>(HasSubstr("/nonexistent/tokenizer.model")));
}

#else

TEST(SentencePieceLoadTest, BuiltWithoutLibraryExplains) {
  EXPECT_THAT([] { LoadSentencePiece(FixturePath("sentencepiece/tokenizer.model")); },
              ThrowsMessage<std::runtime_error>(HasSubstr("without libsentencepiece")));
}

#endif

}  // namespace
}  // namespace kvpool
