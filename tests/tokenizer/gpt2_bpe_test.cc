// GPT-2 byte-level BPE against GPT-2's real ids. Expected ids come from tiktoken 0.14.0 with
// tiktoken.Encoding(name="gpt2", pat_str=<GPT-2 regex>, mergeable_ranks=<bench/data/gpt2.tiktoken>,
// special_tokens={"<|endoftext|>": 50256}).encode_ordinary(text), and for the gpt2_first1000
// fixture from Hugging Face tokenizers 0.23.3 (models.BPE + ByteLevel pre-tokenizer);
// tests/data/tokenizer/make_fixtures.py prints them all. Beyond those, a naive O(n^2) BPE over
// the same ranks is the reference for randomized text.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "test_util.h"
#include "tokenizer/byte_level_bpe.h"
#include "tokenizer/gpt2_pretokenizer.h"
#include "tokenizer/hf_tokenizer_files.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace kvpool {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using testing_util::FixturePath;
using testing_util::kNoRankFile;
using testing_util::RankFilePath;
using testing_util::ScratchDir;
using testing_util::SharedGpt2;

struct Case {
  const char* text;
  std::vector<int32_t> ids;
};

const std::vector<Case>& TiktokenCases() {
  static const std::vector<Case> cases = {
      {"Hello world", {15496, 995}},
      {" Hello", {18435}},
      {"hello   world\n\nfoo", {31373, 220, 220, 995, 198, 198, 21943}},
      {"I'm don't they'll", {40, 1101, 836, 470, 484, 1183}},
      {"深度学习中的注意力机制是一种",
       {162,   115, 109,   41753, 99,    27764, 99,    20046, 254,   40792, 21410, 37345, 101,
        35707, 237, 27950, 249,   17312, 118,   26344, 114,   42468, 31660, 163,   100,   235}},
      {"🙂👍🏽", {8582, 25081, 41840, 235, 8582, 237, 121}},
      {"  a \n\n  b\t\t\n   ", {220, 257, 220, 628, 220, 275, 197, 197, 198, 220, 220, 220}},
      {"12345 3.14", {10163, 2231, 513, 13, 1415}},
      {"naïve café Москва", {2616, 38776, 40304, 12466, 250, 15166, 21727, 31583, 38857, 16142}},
      {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}},
      {"'s 'S ''s !'ll x'rex", {338, 705, 50, 10148, 82, 5145, 6, 297, 2124, 821, 87}},
      {"Ελληνικά 日本語のテキスト 한국어 텍스트",
       {138,   243, 39377, 39377, 138,  115,   26180, 29945, 43000, 138,   105, 10545, 245, 98,
        17312, 105, 45739, 252,   5641, 24336, 25084, 43302, 220,   47991, 250, 166,   113, 255,
        168,   244, 112,   220,   169,  227,   235,   168,   232,   97,    169, 232,   116}},
      {"1,000,000 and ²³ ½", {16, 11, 830, 11, 830, 290, 1587, 110, 126, 111, 25208}},
      {"", {}},
  };
  return cases;
}

// A fixed-seed mix of the things GPT-2's splitter and merges care about, including bytes that
// are not UTF-8.
std::vector<std::string> RandomTexts(size_t count, uint32_t seed) {
  static const std::vector<std::string> kFragments = {
      "a",   "b",    "Z",     " ",     "  ",       "\t",     "\n",       "\r\n",    "\n\n",
      "'",   "'s",   "'ll",   "'re",   "'D",       ".",      ",",        "!?",      "-",
      "(",   "0",    "42",    "3.14",  "é",        "naïve",  "Москва",   "Ω",       "深",
      "度",  "の",   "한",    "🙂",  "👍🏽", "\u00A0", "\u3000",   "e\u0301", "\u200D",
      "the", " the", "hello", "world", "\xFF",     "\xC3",   "\xE6\xB7", "ing",     "tion"};
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, kFragments.size() - 1);
  std::uniform_int_distribution<int> length(0, 30);
  std::vector<std::string> texts(count);
  for (std::string& text : texts) {
    for (int i = length(rng); i > 0; --i) text += kFragments[pick(rng)];
  }
  return texts;
}

// The textbook BPE loop over a bytes -> rank table (tiktoken's rule: a piece that is a token is
// taken whole). Quadratic and allocation-heavy, which is fine for a reference.
class NaiveBpe {
 public:
  explicit NaiveBpe(std::unordered_map<std::string, int32_t> ranks) : ranks_(std::move(ranks)) {}

  std::vector<int32_t> Encode(std::string_view text) const {
    std::vector<int32_t> ids;
    for (std::string_view piece : SplitGpt2Pieces(text)) {
      for (const std::string& part : Merge(piece, std::numeric_limits<int32_t>::max())) {
        ids.push_back(ranks_.at(part));
      }
    }
    return ids;
  }

  // The parts `piece` ends as when only merges ranked below max_rank may apply.
  std::vector<std::string> Merge(std::string_view piece, int32_t max_rank) const {
    if (auto it = ranks_.find(std::string(piece)); it != ranks_.end() && it->second < max_rank) {
      return {std::string(piece)};
    }
    std::vector<std::string> parts;
    for (char c : piece) parts.emplace_back(1, c);
    while (parts.size() > 1) {
      int32_t best_rank = max_rank;
      size_t best = 0;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = ranks_.find(parts[i] + parts[i + 1]);
        if (it != ranks_.end() && it->second < best_rank) best_rank = it->second, best = i;
      }
      if (best_rank == max_rank) break;
      parts[best] += parts[best + 1];
      parts.erase(parts.begin() + best + 1);
    }
    return parts;
  }

 private:
  std::unordered_map<std::string, int32_t> ranks_;
};

// bytes -> rank for the first `limit` ranks, read back through TokenText.
std::unordered_map<std::string, int32_t> RanksOf(const Tokenizer& tokenizer, int32_t limit) {
  std::unordered_map<std::string, int32_t> ranks;
  for (int32_t id = 0; id < limit; ++id) ranks.emplace(tokenizer.TokenText(id), id);
  return ranks;
}

std::string Base64(const std::string& bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const size_t n = std::min<size_t>(3, bytes.size() - i);
    uint32_t chunk = 0;
    for (size_t k = 0; k < 3; ++k) {
      chunk = (chunk << 8) | (k < n ? static_cast<unsigned char>(bytes[i + k]) : 0u);
    }
    for (size_t k = 0; k < 4; ++k) out += k <= n ? kAlphabet[(chunk >> (18 - 6 * k)) & 63] : '=';
  }
  return out;
}

// Writes vocab.json + merges.txt holding the first `limit` ranks of `tokenizer`, deriving each
// merge as the split the naive BPE reaches with lower ranks only (as make_fixtures.py does).
class Gpt2TiktokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpt2_ = SharedGpt2();
    if (gpt2_ == nullptr) GTEST_SKIP() << kNoRankFile;
  }
  const Tokenizer* gpt2_ = nullptr;
};

TEST_F(Gpt2TiktokenTest, EncodesHelloWorld) {
  EXPECT_THAT(gpt2_->Encode("Hello world"), ElementsAre(15496, 995));
  EXPECT_THAT(gpt2_->Encode(" Hello"), ElementsAre(18435));
}

TEST_F(Gpt2TiktokenTest, MatchesTiktokenIdsAndRoundTrips) {
  for (const Case& c : TiktokenCases()) {
    EXPECT_THAT(gpt2_->Encode(c.text), ElementsAreArray(c.ids)) << c.text;
    EXPECT_EQ(gpt2_->Decode(c.ids), c.text);
  }
}

TEST_F(Gpt2TiktokenTest, VocabularyShape) {
  EXPECT_EQ(gpt2_->VocabSize(), 50257);
  EXPECT_EQ(gpt2_->EosId(), 50256);
  EXPECT_EQ(gpt2_->Decode({50256}), "<|endoftext|>");
  EXPECT_EQ(gpt2_->TokenText(15496), "Hello");
  EXPECT_EQ(gpt2_->TokenText(162), "\xE6");  // The first byte of 深.
  EXPECT_THAT(gpt2_->Name(), HasSubstr("gpt2.tiktoken"));
}

TEST_F(Gpt2TiktokenTest, RejectsIdsOutsideTheVocabulary) {
  EXPECT_THROW(gpt2_->Decode({15496, 50257}), std::out_of_range);
  EXPECT_THROW(gpt2_->Decode({-1}), std::out_of_range);
  EXPECT_THROW(gpt2_->TokenText(1 << 20), std::out_of_range);
}

TEST_F(Gpt2TiktokenTest, MatchesNaiveBpeOnRandomText) {
  const NaiveBpe naive(RanksOf(*gpt2_, 50256));
  for (const std::string& text : RandomTexts(400, 20260101)) {
    const std::vector<int32_t> ids = gpt2_->Encode(text);
    EXPECT_EQ(ids, naive.Encode(text)) << text;
    EXPECT_EQ(gpt2_->Decode(ids), text);
  }
}

TEST_F(Gpt2TiktokenTest, LongPiecesStayExact) {
  const std::string text = std::string(3000, ' ') + "x" + std::string(2000, '\n') + "y" +
                           std::string(4000, 'a') + std::string(1000, '7');
  const NaiveBpe naive(RanksOf(*gpt2_, 50256));
  EXPECT_EQ(gpt2_->Encode(text), naive.Encode(text));
}

TEST_F(Gpt2TiktokenTest, Encodes10KbWellUnder50Ms) {
  // Fresh words (a seed no other test uses) so the per-piece cache does not help.
  std::string text;
  for (const std::string& part : RandomTexts(2000, 777)) {
    if (text.size() >= 10 * 1024) break;
    text += part + " ";
  }
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = gpt2_->Encode(text);
  const double elapsed_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(elapsed_ms, 50.0) << ids.size() << " tokens";
  EXPECT_EQ(gpt2_->Decode(ids), text);
}

TEST_F(Gpt2TiktokenTest, ConcurrentEncodesAgree) {
  const std::vector<std::string> texts = RandomTexts(200, 4242);
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts) expected.push_back(gpt2_->Encode(text));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (gpt2_->Encode(texts[i]) != expected[i]) ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

TEST(Gpt2VocabMergesTest, SmallFixtureMatchesHuggingFaceIds) {
  const auto bpe = LoadGpt2VocabMerges(FixturePath("gpt2_first1000/vocab.json"),
                                       FixturePath("gpt2_first1000/merges.txt"));
  EXPECT_EQ(bpe->VocabSize(), 1001);
  EXPECT_EQ(bpe->EosId(), 1000);
  const std::vector<Case> cases = {
      {"Hello world", {39, 695, 78, 995}},
      {"the cat sat on the mat", {83, 258, 269, 265, 264, 265, 319, 262, 285, 265}},
      {"I'm don't they'll", {40, 6, 76, 836, 470, 484, 6, 297}},
      {" 12345\n\n", {352, 17, 18, 19, 20, 628}},
      {"深度", {162, 115, 109, 161, 118, 99}},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(bpe->Encode(c.text), ElementsAreArray(c.ids)) << c.text;
    EXPECT_EQ(bpe->Decode(c.ids), c.text);
  }
  EXPECT_EQ(bpe->Decode({1000}), "<|endoftext|>");
}

TEST(Gpt2VocabMergesTest, SmallFixtureEqualsTruncatedRankFile) {
  if (SharedGpt2() == nullptr) GTEST_SKIP() << kNoRankFile;
  const ScratchDir dir;
  std::string ranks;
  for (int32_t id = 0; id < 1000; ++id) {
    ranks += Base64(SharedGpt2()->TokenText(id)) + " " + std::to_string(id) + "\n";
  }
  const auto truncated = LoadGpt2TiktokenFile(dir.Write("first1000.tiktoken", ranks));
  const auto fixture = LoadGpt2VocabMerges(FixturePath("gpt2_first1000/vocab.json"),
                                           FixturePath("gpt2_first1000/merges.txt"));
  for (const std::string& text : RandomTexts(300, 99)) {
    EXPECT_EQ(fixture->Encode(text), truncated->Encode(text)) << text;
  }
}

// The Hugging Face files kvpool-export-hf writes (hf_tokenizer_files.h), from the rank
// file: the first 1000 ranks' vocab and merges equal the fixture Hugging Face's
// tokenizers built from the same ranks, and the full files encode as tiktoken does.
TEST(Gpt2VocabMergesTest, ExportedFilesMatchHuggingFaceAndTiktoken) {
  if (SharedGpt2() == nullptr) GTEST_SKIP() << kNoRankFile;
  const ScratchDir dir;
  WriteGpt2HfTokenizerFiles(*SharedGpt2(), 1024, dir.path());
  const auto lines = [](const std::string& path) {
    std::ifstream in(path);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  };
  const std::vector<std::string> fixture = lines(FixturePath("gpt2_first1000/merges.txt"));
  const std::vector<std::string> exported = lines(dir.path() + "/merges.txt");
  ASSERT_EQ(exported.size(), 50001u);  // the version line and GPT-2's 50000 merges
  EXPECT_EQ(std::vector<std::string>(exported.begin(), exported.begin() + fixture.size()), fixture);
  const nlohmann::json vocab = nlohmann::json::parse(lines(dir.path() + "/vocab.json").at(0));
  const nlohmann::json small = nlohmann::json::parse(
      lines(FixturePath("gpt2_first1000/vocab.json")).at(0));
  for (const auto& [token, id] : small.items()) {
    if (token != "<|endoftext|>") {  // 1000 in the truncated fixture
      EXPECT_EQ(vocab.at(token), id) << token;
    }
  }
  const nlohmann::json full = nlohmann::json::parse(lines(dir.path() + "/tokenizer.json").at(0));
  EXPECT_EQ(full["model"]["vocab"], vocab);
  EXPECT_EQ(full["model"]["merges"].size(), 50000u);
  EXPECT_EQ(full["added_tokens"][0]["content"], "<|endoftext|>");
  const auto bpe = LoadGpt2VocabMerges(dir.path() + "/vocab.json", dir.path() + "/merges.txt");
  EXPECT_EQ(bpe->VocabSize(), 50257);
  EXPECT_EQ(bpe->EosId(), 50256);
  for (const Case& c : TiktokenCases()) {
    EXPECT_THAT(bpe->Encode(c.text), ElementsAreArray(c.ids)) << c.text;
  }
  for (const std::string& text : RandomTexts(300, 31337)) {
    EXPECT_EQ(bpe->Encode(text), SharedGpt2()->Encode(text)) << text;
  }
}

}  // namespace
}  // namespace kvpool
