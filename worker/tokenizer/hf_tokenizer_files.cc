// WriteGpt2HfTokenizerFiles: see hf_tokenizer_files.h. tokenizer.json follows the
// layout of GPT-2's on the Hugging Face Hub (BPE model, ByteLevel pre-tokenizer,
// post-processor and decoder, <|endoftext|> as the one added special token).
#include "tokenizer/hf_tokenizer_files.h"

#include <array>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "tokenizer/byte_level_bpe.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/unicode.h"

namespace kvpool {
namespace {

using Json = nlohmann::ordered_json;

// GPT-2's bytes_to_unicode() spelling, as vocab.json and merges.txt write tokens.
std::string Spell(const std::string& bytes) {
  static const std::array<char32_t, 256> kTable = Gpt2BytesToUnicode();
  std::string out;
  for (unsigned char b : bytes) unicode::AppendUtf8(kTable[b], &out);
  return out;
}

// The two parts `token` ends as when byte-level BPE may apply only merges ranked below
// `rank` (the pair whose concatenation has the lowest rank merges first).
std::vector<std::string> SplitBelow(const std::string& token, int32_t rank,
                                    const std::unordered_map<std::string, int32_t>& ranks) {
  std::vector<std::string> parts;
  for (char c : token) parts.emplace_back(1, c);
  for (;;) {
    int32_t best = std::numeric_limits<int32_t>::max();
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const auto it = ranks.find(parts[i] + parts[i + 1]);
      if (it != ranks.end() && it->second < rank && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == std::numeric_limits<int32_t>::max()) return parts;
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace

void WriteGpt2HfTokenizerFiles(const Tokenizer& tokenizer, int64_t model_max_length,
                               const std::string& dir) {
  const auto eos = tokenizer.EosId();
  if (eos != tokenizer.VocabSize() - 1) {
    throw std::runtime_error("tokenizer " + tokenizer.Name() +
                             ": its EOS must be its last id to export it as GPT-2's files");
  }
  std::unordered_map<std::string, int32_t> ranks;
  for (int32_t id = 0; id < eos; ++id) ranks.emplace(tokenizer.TokenText(id), id);
  Json vocab = Json::object();
  Json merges = Json::array();
  std::string merges_txt = "#version: 0.2\n";
  for (int32_t id = 0; id < eos; ++id) {
    const std::string bytes = tokenizer.TokenText(id);
    vocab[Spell(bytes)] = id;
    if (bytes.size() < 2) continue;
    const std::vector<std::string> parts = SplitBelow(bytes, id, ranks);
    if (parts.size() != 2) {
      throw std::runtime_error("token " + std::to_string(id) + " of " + tokenizer.Name() +
                               " is not the merge of two lower-ranked tokens");
    }
    const std::string line = Spell(parts[0]) + " " + Spell(parts[1]);
    merges.push_back(line);
    merges_txt += line + "\n";
  }
  const std::string eos_text = tokenizer.TokenText(eos);
  vocab[eos_text] = eos;
  WriteFile(dir + "/vocab.json", vocab.dump());
  WriteFile(dir + "/merges.txt", merges_txt);

  const auto byte_level = [](bool add_prefix_space, bool trim_offsets) {
    return Json{{"type", "ByteLevel"},
                {"add_prefix_space", add_prefix_space},
                {"trim_offsets", trim_offsets},
                {"use_regex", true}};
  };
  Json tokenizer_json = {{"version", "1.0"},
                         {"truncation", nullptr},
                         {"padding", nullptr},
                         {"added_tokens", Json::array({Json{{"id", eos},
                                                            {"content", eos_text},
                                                            {"single_word", false},
                                                            {"lstrip", false},
                                                            {"rstrip", false},
                                                            {"normalized", true},
                                                            {"special", true}}})},
                         {"normalizer", nullptr},
                         {"pre_tokenizer", byte_level(false, true)},
                         {"post_processor", byte_level(true, false)},
                         {"decoder", byte_level(true, true)},
                         {"model", Json{{"type", "BPE"},
                                        {"dropout", nullptr},
                                        {"unk_token", nullptr},
                                        {"continuing_subword_prefix", ""},
                                        {"end_of_word_suffix", ""},
                                        {"fuse_unk", false},
                                        {"byte_fallback", false},
                                        {"vocab", vocab},
                                        {"merges", merges}}}};
  WriteFile(dir + "/tokenizer.json", tokenizer_json.dump());
  const Json config = {{"tokenizer_class", "GPT2Tokenizer"},
                       {"model_max_length", model_max_length},
                       {"bos_token", eos_text},
                       {"eos_token", eos_text},
                       {"unk_token", eos_text},
                       {"add_prefix_space", false},
                       {"add_bos_token", false},
                       {"errors", "replace"},
                       {"chat_template", std::string(kChatMlJinja)}};
  WriteFile(dir + "/tokenizer_config.json", config.dump(2) + "\n");
}

}  // namespace kvpool
