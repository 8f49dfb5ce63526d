// Builds ByteLevelBpe vocabularies from GPT-2's two file formats. The tiktoken rank file holds
// raw token bytes (base64) whose rank is both id and merge priority; a pair merges when its
// concatenation is a token. vocab.json holds tokens spelled through GPT-2's bytes_to_unicode
// table (printable stand-ins for every byte), and merges.txt lists the merges in rank order.
#include <array>
#include <charconv>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include "tokenizer/byte_level_bpe.h"
#include "tokenizer/file_io.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace kvpool {
namespace {

constexpr char kEndOfText[] = "<|endoftext|>";

std::runtime_error LineError(const std::string& path, size_t line_index, const std::string& what) {
  return std::runtime_error(path + ":" + std::to_string(line_index + 1) + ": " + what);
}

// Standard base64 with optional '=' padding; false on any other character.
bool DecodeBase64(std::string_view in, std::string* out) {
  out->clear();
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  for (; i < in.size() && in[i] != '='; ++i) {
    const char c = in[i];
    int v;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      v = c - '0' + 52;
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else {
      return false;
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  for (; i < in.size(); ++i) {
    if (in[i] != '=') return false;
  }
  return !out->empty();
}

// Turns a vocab.json token into its bytes. A character outside the byte table (an added token
// such as a CJK special token) stands for its own UTF-8.
std::string UnicodeTokenToBytes(const std::string& token,
                                const std::unordered_map<char32_t, char>& byte_of) {
  std::string bytes;
  for (size_t pos = 0; pos < token.size();) {
    const size_t start = pos;
    const char32_t cp = unicode::DecodeUtf8(token, &pos);
    auto it = byte_of.find(cp);
    if (it != byte_of.end()) {
      bytes.push_back(it->second);
    } else {
      bytes.append(token, start, pos - start);
    }
  }
  return bytes;
}

}  // namespace

std::array<char32_t, 256> Gpt2BytesToUnicode() {
  std::array<char32_t, 256> table{};
  char32_t next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    table[b] = printable ? static_cast<char32_t>(b) : next_extra++;
  }
  return table;
}

std::unique_ptr<Tokenizer> LoadGpt2TiktokenFile(const std::string& path) {
  const std::string text = ReadTokenizerFile(path, "tiktoken rank file");
  ByteLevelBpeVocab vocab;
  vocab.name = "gpt2-bpe(tiktoken " + path + ")";
  vocab.whole_piece_lookup = true;
  std::unordered_map<std::string, int32_t> id_by_bytes;
  std::string bytes;
  const std::vector<std::string_view> lines = SplitLines(text);
  for (size_t li = 0; li < lines.size(); ++li) {
    const std::string_view line = lines[li];
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos) {
      throw LineError(path, li, "expected 'base64-token rank', got '" + std::string(line) + "'");
    }
    if (!DecodeBase64(line.substr(0, space), &bytes)) {
      throw LineError(path, li, "token is not valid base64");
    }
    const std::string_view rank_text = line.substr(space + 1);
    int32_t rank = -1;
    const auto [end, ec] =
        std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    if (ec != std::errc() || end != rank_text.data() + rank_text.size() || rank < 0) {
      throw LineError(path, li, "rank '" + std::string(rank_text) + "' is not an integer >= 0");
    }
    if (static_cast<size_t>(rank) >= vocab.token_bytes.size()) {
      vocab.token_bytes.resize(static_cast<size_t>(rank) + 1);
    }
    if (!vocab.token_bytes[rank].empty()) {
      throw LineError(path, li, "rank " + std::to_string(rank) + " appears twice");
    }
    if (!id_by_bytes.emplace(bytes, rank).second) {
      throw LineError(path, li, "token appears twice");
    }
    vocab.token_bytes[rank] = bytes;
  }
  if (vocab.token_bytes.empty()) throw std::runtime_error(path + ": no tokens in rank file");
  for (int b = 0; b < 256; ++b) {
    auto it = id_by_bytes.find(std::string(1, static_cast<char>(b)));
    if (it == id_by_bytes.end()) {
      throw std::runtime_error(path + ": rank file has no token for the byte " + std::to_string(b));
    }
    vocab.byte_ids[b] = it->second;
  }
  // A pair merges into the token their concatenation spells, at that token's rank.
  for (int32_t id = 0; id < static_cast<int32_t>(vocab.token_bytes.size()); ++id) {
    const std::string& token = vocab.token_bytes[id];
    for (size_t split = 1; split < token.size(); ++split) {
      auto left = id_by_bytes.find(token.substr(0, split));
      if (left == id_by_bytes.end()) continue;
      auto right = id_by_bytes.find(token.substr(split));
      if (right == id_by_bytes.end()) continue;
      vocab.merges.emplace(ByteLevelBpeVocab::PairKey(left->second, right->second),
                           ByteLevelBpeVocab::Merge{id, id});
    }
  }
  vocab.eos_id = static_cast<int32_t>(vocab.token_bytes.size());
  vocab.token_bytes.emplace_back(kEndOfText);
  return std::make_unique<ByteLevelBpe>(std::move(vocab));
}

std::unique_ptr<Tokenizer> LoadGpt2VocabMerges(const std::string& vocab_json,
                                               const std::string& merges_txt) {
  const std::string vocab_text = ReadTokenizerFile(vocab_json, "vocab.json");
  const std::string merges_text = ReadTokenizerFile(merges_txt, "merges.txt");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(vocab_text);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(vocab_json + ": malformed JSON: " + e.what());
  }
  if (!json.is_object()) {
    throw std::runtime_error(vocab_json + ": expected a JSON object of token -> id");
  }

  const std::array<char32_t, 256> unicode_of = Gpt2BytesToUnicode();
  std::unordered_map<char32_t, char> byte_of;
  for (int b = 0; b < 256; ++b) byte_of.emplace(unicode_of[b], static_cast<char>(b));

  ByteLevelBpeVocab vocab;
  vocab.name = "gpt2-bpe(" + vocab_json + " + " + merges_txt + ")";
  std::unordered_map<std::string, int32_t> id_of;
  id_of.reserve(json.size());
  for (const auto& [token, value] : json.items()) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() >= std::numeric_limits<int32_t>::max()) {
      throw std::runtime_error(vocab_json + ": id of token '" + token +
                               "' is not a non-negative integer");
    }
    const auto id = value.get<int32_t>();
    if (static_cast<size_t>(id) >= vocab.token_bytes.size()) vocab.token_bytes.resize(id + 1);
    if (!vocab.token_bytes[id].empty()) {
      throw std::runtime_error(vocab_json + ": id " + std::to_string(id) + " used twice");
    }
    vocab.token_bytes[id] = UnicodeTokenToBytes(token, byte_of);
    id_of.emplace(token, id);
  }
  for (int b = 0; b < 256; ++b) {
    std::string token;
    unicode::AppendUtf8(unicode_of[b], &token);
    auto it = id_of.find(token);
    if (it == id_of.end()) {
      throw std::runtime_error(vocab_json + ": no token for the byte " + std::to_string(b) + " ('" +
                               token + "')");
    }
    vocab.byte_ids[b] = it->second;
  }
  if (auto it = id_of.find(kEndOfText); it != id_of.end()) vocab.eos_id = it->second;

  const std::vector<std::string_view> lines = SplitLines(merges_text);
  int32_t rank = 0;
  for (size_t li = 0; li < lines.size(); ++li) {
    const std::string_view line = lines[li];
    if (line.empty() || (li == 0 && line.rfind("#version", 0) == 0)) continue;
    const size_t space = line.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos) {
      throw LineError(merges_txt, li, "expected 'left right', got '" + std::string(line) + "'");
    }
    auto id_or_throw = [&](const std::string& token) {
      auto it = id_of.find(token);
      if (it == id_of.end()) {
        throw LineError(merges_txt, li, "token '" + token + "' is not in " + vocab_json);
      }
      return it->second;
    };
    const std::string left(line.substr(0, space));
    const std::string right(line.substr(space + 1));
    const int32_t left_id = id_or_throw(left);
    const int32_t right_id = id_or_throw(right);
    const int32_t merged_id = id_or_throw(left + right);
    // A later line for the same pair wins, as in Hugging Face's and OpenAI's loaders.
    vocab.merges.insert_or_assign(ByteLevelBpeVocab::PairKey(left_id, right_id),
                                  ByteLevelBpeVocab::Merge{rank, merged_id});
    ++rank;
  }
  return std::make_unique<ByteLevelBpe>(std::move(vocab));
}

}  // namespace kvpool
