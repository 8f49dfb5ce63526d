// The factories in tokenizer.h: picking a format from a model folder, the built-in GPT-2
// default, and the errors every loader gives for missing or malformed files (each message must
// name the file so a user can fix it).
#include "tokenizer/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "test_util.h"

namespace kvpool {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;
using testing_util::FixturePath;
using testing_util::kNoRankFile;
using testing_util::RankFilePath;
using testing_util::ScratchDir;

TEST(LoadTokenizerFromFolderTest, PicksFormatByFiles) {
  EXPECT_THAT(LoadTokenizerFromFolder(FixturePath("gpt2_first1000"))->Name(),
              HasSubstr("gpt2-bpe"));
  EXPECT_THAT(LoadTokenizerFromFolder(FixturePath("wordpiece"))->Name(), HasSubstr("wordpiece"));
#if KVPOOL_HAVE_SENTENCEPIECE
  EXPECT_THAT(LoadTokenizerFromFolder(FixturePath("sentencepiece"))->Name(),
              HasSubstr("sentencepiece"));
#endif
}

TEST(LoadTokenizerFromFolderTest, WordPieceReadsDoLowerCase) {
  const ScratchDir dir;
  std::filesystem::copy_file(FixturePath("wordpiece/vocab.txt"), dir.path() + "/vocab.txt");
  EXPECT_EQ(LoadTokenizerFromFolder(dir.path())->Encode("Hello"), std::vector<int32_t>{35});
  dir.Write("tokenizer_config.json", R"({"do_lower_case": false})");
  EXPECT_EQ(LoadTokenizerFromFolder(dir.path())->Encode("Hello"), std::vector<int32_t>{1});
}

TEST(LoadTokenizerFromFolderTest, NamesWhatIsMissing) {
  const ScratchDir dir;
  EXPECT_THAT([&] { LoadTokenizerFromFolder(dir.path()); },
              ThrowsMessage<std::runtime_error>(
                  AllOf(HasSubstr(dir.path()), HasSubstr("tokenizer.model"),
                        HasSubstr("vocab.json + merges.txt"), HasSubstr("vocab.txt"))));
  dir.Write("vocab.json", "{}");
  EXPECT_THAT([&] { LoadTokenizerFromFolder(dir.path()); },
              ThrowsMessage<std::runtime_error>(HasSubstr("vocab.json but no merges.txt")));
}

TEST(LoadDefaultGpt2TokenizerTest, HonoursEnvironmentOverride) {
  setenv("KVPOOL_GPT2_TIKTOKEN", "/nonexistent/gpt2.tiktoken", 1);
  EXPECT_THAT([] { LoadDefaultGpt2Tokenizer(); },
              ThrowsMessage<std::runtime_error>(AllOf(HasSubstr("/nonexistent/gpt2.tiktoken"),
                                                      HasSubstr("scripts/install-deps.sh"))));
  unsetenv("KVPOOL_GPT2_TIKTOKEN");
  if (!testing_util::HaveRankFile()) GTEST_SKIP() << kNoRankFile;
  EXPECT_EQ(LoadDefaultGpt2Tokenizer()->Encode("Hello world"), (std::vector<int32_t>{15496, 995}));
}

TEST(LoaderErrorsTest, MissingFilesNameThePath) {
  EXPECT_THAT([] { LoadGpt2TiktokenFile("/nonexistent/a.tiktoken"); },
              ThrowsMessage<std::runtime_error>(HasSubstr("/nonexistent/a.tiktoken")));
  EXPECT_THAT([] { LoadWordPiece("/nonexistent/vocab.txt"); },
              ThrowsMessage<std::runtime_error>(HasSubstr("/nonexistent/vocab.txt")));
  EXPECT_THAT(
      [] { LoadGpt2VocabMerges(FixturePath("gpt2_first1000/vocab.json"), "/nonexistent/m.txt"); },
      ThrowsMessage<std::runtime_error>(HasSubstr("/nonexistent/m.txt")));
}

TEST(LoaderErrorsTest, MalformedRankLinesNameFileAndLine) {
  const ScratchDir dir;
  const std::string no_rank = dir.Write("no_rank.tiktoken", "IQ== 0\nIg==\n");
  EXPECT_THAT([&] { LoadGpt2TiktokenFile(no_rank); },
              ThrowsMessage<std::runtime_error>(HasSubstr(no_rank + ":2:")));
  const std::string bad_b64 = dir.Write("bad_b64.tiktoken", "IQ== 0\n*** 1\n");
  EXPECT_THAT(
      [&] { LoadGpt2TiktokenFile(bad_b64); },
      ThrowsMessage<std::runtime_error>(AllOf(HasSubstr(bad_b64 + ":2:"), HasSubstr("base64"))));
  const std::string bad_rank = dir.Write("bad_rank.tiktoken", "IQ== zero\n");
  EXPECT_THAT([&] { LoadGpt2TiktokenFile(bad_rank); },
              ThrowsMessage<std::runtime_error>(HasSubstr(bad_rank + ":1:")));
  const std::string few_bytes = dir.Write("few_bytes.tiktoken", "IQ== 0\nIg== 1\n");
  EXPECT_THAT([&] { LoadGpt2TiktokenFile(few_bytes); },
              ThrowsMessage<std::runtime_error>(
                  AllOf(HasSubstr(few_bytes), HasSubstr("no token for the byte 0"))));
}

TEST(LoaderErrorsTest, MalformedVocabJsonNamesTheFile) {
  const ScratchDir dir;
  const std::string merges = FixturePath("gpt2_first1000/merges.txt");
  const std::string broken = dir.Write("broken.json", R"({"a": 1,)");
  EXPECT_THAT(
      [&] { LoadGpt2VocabMerges(broken, merges); },
      ThrowsMessage<std::runtime_error>(AllOf(HasSubstr(broken), HasSubstr("malformed JSON"))));
  const std::string array = dir.Write("array.json", "[1, 2]");
  EXPECT_THAT([&] { LoadGpt2VocabMerges(array, merges); },
              ThrowsMessage<std::runtime_error>(HasSubstr(array)));
  const std::string string_id = dir.Write("string_id.json", R"({"a": "1"})");
  EXPECT_THAT([&] { LoadGpt2VocabMerges(string_id, merges); },
              ThrowsMessage<std::runtime_error>(AllOf(HasSubstr(string_id), HasSubstr("'a'"))));
}

TEST(LoaderErrorsTest, MergeOutsideVocabNamesLine) {
  const ScratchDir dir;
  const std::string merges = dir.Write("merges.txt", "#version: 0.2\nĠ t\nq qqq\n");
  EXPECT_THAT(
      [&] { LoadGpt2VocabMerges(FixturePath("gpt2_first1000/vocab.json"), merges); },
      ThrowsMessage<std::runtime_error>(AllOf(HasSubstr(merges + ":3:"), HasSubstr("'qqq'"))));
}

TEST(LoaderErrorsTest, WordPieceNeedsUnk) {
  const ScratchDir dir;
  const std::string vocab = dir.Write("vocab.txt", "[PAD]\n[SEP]\nhello\n");
  EXPECT_THAT([&] { LoadWordPiece(vocab); },
              ThrowsMessage<std::runtime_error>(AllOf(HasSubstr(vocab), HasSubstr("[UNK]"))));
}

}  // namespace
}  // namespace kvpool
