// The Unicode classes and GPT-2's pre-tokenizer split, checked against what the regex
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ yields.
#include "tokenizer/unicode.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "tokenizer/gpt2_pretokenizer.h"

namespace kvpool {
namespace {

using ::testing::ElementsAre;

TEST(UnicodeTest, LettersAcrossScripts) {
  for (char32_t cp : {U'a', U'Z', U'é', U'ÿ', U'ž', U'Ω', U'λ', U'Ж', U'я', U'深', U'の', U'テ',
                      U'한', U'ª', U'\U00020000'}) {
    EXPECT_TRUE(unicode::IsLetter(cp)) << static_cast<uint32_t>(cp);
    EXPECT_FALSE(unicode::IsNumber(cp)) << static_cast<uint32_t>(cp);
  }
}

TEST(UnicodeTest, NumbersAcrossScripts) {
  for (char32_t cp : {U'0', U'9', U'²', U'½', U'٣', U'Ⅻ', U'〇'}) {
    EXPECT_TRUE(unicode::IsNumber(cp)) << static_cast<uint32_t>(cp);
    EXPECT_FALSE(unicode::IsLetter(cp)) << static_cast<uint32_t>(cp);
  }
}

TEST(UnicodeTest, SymbolsMarksAndSpaceAreNeither) {
  for (char32_t cp : {U'🙂', U'👍', U'\U0001F3FD', U'×', U'$', U'\u0301', U'\u200D', U' ', U'。',
                      unicode::kInvalidCodepoint}) {
    EXPECT_FALSE(unicode::IsLetter(cp)) << static_cast<uint32_t>(cp);
    EXPECT_FALSE(unicode::IsNumber(cp)) << static_cast<uint32_t>(cp);
  }
  EXPECT_TRUE(unicode::IsWhiteSpace(U'\u3000'));
  EXPECT_TRUE(unicode::IsWhiteSpace(U'\u00A0'));
  EXPECT_FALSE(unicode::IsWhiteSpace(U'\u200B'));
  EXPECT_TRUE(unicode::IsPunctuation(U'，'));
  EXPECT_TRUE(unicode::IsControl(U'\u200B'));
  EXPECT_TRUE(unicode::IsNonspacingMark(U'\u0301'));
}

TEST(UnicodeTest, DecodesUtf8AndFlagsMalformedBytes) {
  const std::string text = "a\xC3\xA9\xF0\x9F\x99\x82\xC3(\xED\xA0\x80";
  size_t pos = 0;
  std::u32string cps;
  while (pos < text.size()) cps.push_back(unicode::DecodeUtf8(text, &pos));
  const char32_t bad = unicode::kInvalidCodepoint;
  EXPECT_EQ(cps, (std::u32string{U'a', U'é', U'🙂', bad, U'(', bad, bad, bad}));
  std::string round_trip;
  for (char32_t cp : {U'a', U'é', U'深', U'🙂'}) unicode::AppendUtf8(cp, &round_trip);
  EXPECT_EQ(round_trip, "aé深🙂");
}

TEST(UnicodeTest, BertFoldLowercasesAndStripsAccents) {
  std::u32string out;
  for (char32_t cp : {U'É', U'Ñ', U'Ω', U'ά', U'Й', U'Ё', U'ぼ', U'Ａ', U'\u0301', U'深'}) {
    unicode::AppendBertLowerStripAccents(cp, &out);
  }
  EXPECT_EQ(out, U"enωαиеほａ深");
  out.clear();
  unicode::AppendBertLowerStripAccents(U'한', &out);
  EXPECT_EQ(out, (std::u32string{0x1112, 0x1161, 0x11AB}));
}

TEST(Gpt2PretokenizerTest, WhitespaceRunGivesLastSpaceToNextWord) {
  EXPECT_THAT(SplitGpt2Pieces("hello   world\n\nfoo"),
              ElementsAre("hello", "  ", " world", "\n", "\n", "foo"));
  EXPECT_THAT(SplitGpt2Pieces("  a \n\n  b\t\t\n   "),
              ElementsAre(" ", " a", " \n\n ", " b", "\t\t\n   "));  // At the end: all of it.
}

TEST(Gpt2PretokenizerTest, ContractionsAndPunctuationRuns) {
  EXPECT_THAT(SplitGpt2Pieces("I'm don't they'll"),
              ElementsAre("I", "'m", " don", "'t", " they", "'ll"));
  EXPECT_THAT(SplitGpt2Pieces("'s 'S ''s !'ll x'rex"),
              ElementsAre("'s", " '", "S", " ''", "s", " !'", "ll", " x", "'re", "x"));
}

TEST(Gpt2PretokenizerTest, LettersNumbersAndSymbolsSplitApart) {
  EXPECT_THAT(SplitGpt2Pieces("12345 3.14 naïve Москва 深度🙂👍🏽"),
              ElementsAre("12345", " 3", ".", "14", " naïve", " Москва", " 深度", "🙂👍🏽"));
  EXPECT_THAT(SplitGpt2Pieces(""), ElementsAre());
}

TEST(Gpt2PretokenizerTest, PiecesCoverInvalidUtf8) {
  EXPECT_THAT(SplitGpt2Pieces("ab\xFF\xFE cd"), ElementsAre("ab", "\xFF\xFE", " cd"));
}

}  // namespace
}  // namespace kvpool
