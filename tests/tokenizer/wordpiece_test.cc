// WordPiece over tests/data/tokenizer/wordpiece/vocab.txt (63 hand-picked tokens). Expected ids
// come from Hugging Face tokenizers 0.23.3 BertWordPieceTokenizer(vocab, lowercase=True)
// .encode(text, add_special_tokens=False); tests/data/tokenizer/make_fixtures.py prints them.
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

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using testing_util::FixturePath;

constexpr int32_t kUnk = 1;
constexpr int32_t kSep = 3;

class WordPieceTest : public ::testing::Test {
 protected:
  void SetUp() override { wp_ = LoadWordPiece(FixturePath("wordpiece/vocab.txt")); }
  std::unique_ptr<Tokenizer> wp_;
};

TEST_F(WordPieceTest, VocabularyShape) {
  EXPECT_EQ(wp_->VocabSize(), 63);
  EXPECT_EQ(wp_->EosId(), kSep);
  EXPECT_EQ(wp_->TokenText(kUnk), "[UNK]");
  EXPECT_EQ(wp_->TokenText(39), "##aff");
}

TEST_F(WordPieceTest, MatchesHuggingFaceIds) {
  struct Case {
    const char* text;
    std::vector<int32_t> ids;
  };
  const std::vector<Case> cases = {
      {"深度学习中的注意力机制是一种", {15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28}},
      {"你好，世界！", {29, 30, 5, 31, 32, 7}},
      {"Hello, World!", {35, 10, 36, 11}},
      {"unaffable playing played plays", {38, 39, 40, 41, 42, 41, 43, 41, 44}},
      {"Naïve CAFÉ in Москва", {46, 45, kUnk, 48}},
      {"12345 123 1.2", {56, 53, 54, 55, 56, 53, 49, 9, 50}},
      {"abc cab ##a", {57, 61, 62, 59, 60, 61, kUnk, kUnk, 57}},
      {"hello\tworld\u00A0the\u3000我们", {35, 36, 37, 33, 34}},
      {"xyz 漢 unplay", {kUnk, kUnk, kUnk}},
      {"the 😀 world", {37, kUnk, 36}},
      {"don't-stop", {kUnk, 13, kUnk, 14, kUnk}},
      {"Ａ hello", {kUnk, 35}},
  };
  for (const Case& c : cases) EXPECT_THAT(wp_->Encode(c.text), ElementsAreArray(c.ids)) << c.text;
}

TEST_F(WordPieceTest, ControlCharactersAreDropped) {
  EXPECT_THAT(wp_->Encode(std::string("ab\0c\u200Bd", 8)), ElementsAre(kUnk));  // "abcd".
  EXPECT_THAT(wp_->Encode(std::string("ab\0c", 4)), ElementsAre(57, 61, 62));   // "abc".
}

TEST_F(WordPieceTest, DecodeGluesPiecesAndCjk) {
  EXPECT_EQ(wp_->Decode(wp_->Encode("深度学习中的注意力机制是一种")),
            "深度学习中的注意力机制是一种");
  EXPECT_EQ(wp_->Decode(wp_->Encode("你好，世界！")), "你好，世界！");
  EXPECT_EQ(wp_->Decode(wp_->Encode("Hello, World!")), "hello, world!");
  EXPECT_EQ(wp_->Decode(wp_->Encode("unaffable playing played")), "unaffable playing played");
  EXPECT_EQ(wp_->Decode(wp_->Encode("the 😀 world我们")), "the [UNK] world我们");
  EXPECT_EQ(wp_->Decode({2, 29, 30, kSep}), "[CLS]你好[SEP]");
  EXPECT_THROW(wp_->Decode({63}), std::out_of_range);
}

TEST(WordPieceCaseTest, WithoutLowerCaseKeepsCaseAndAccents) {
  const auto cased = LoadWordPiece(FixturePath("wordpiece/vocab.txt"), /*do_lower_case=*/false);
  EXPECT_THAT(cased->Encode("Hello hello café cafe"), ElementsAre(kUnk, 35, kUnk, 45));
}

}  // namespace
}  // namespace kvpool
