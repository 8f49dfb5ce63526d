// Byte-level BPE as GPT-2 uses it: GPT-2's pre-tokenizer splits the text, then each piece's
// bytes are merged pair by pair, always the adjacent pair with the lowest merge rank (leftmost
// on ties), until no pair merges. Owns the vocabulary (id -> bytes), the merge table and a
// per-piece cache; it knows nothing about file formats (gpt2_loaders.cc builds it).
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kvpool {

// Everything a ByteLevelBpe is made of. Invariants the constructor checks: byte_ids[b] is a
// valid id whose token_bytes is the single byte b; every merge's ids are valid.
struct ByteLevelBpeVocab {
  struct Merge {
    int32_t rank;       // Lower merges first.
    int32_t merged_id;  // The token the pair becomes.
  };
  std::vector<std::string> token_bytes;  // Index is the id; "" marks an unused id.
  std::array<int32_t, 256> byte_ids{};
  // Keyed by PairKey(left_id, right_id).
  std::unordered_map<uint64_t, Merge> merges;
  int32_t eos_id = -1;
  // tiktoken semantics: a piece that is itself a token is emitted whole, without merging.
  bool whole_piece_lookup = false;
  std::string name;

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
};

// GPT-2's bytes_to_unicode(): the printable character vocab.json and merges.txt spell each byte
// with (printable bytes stand for themselves, the rest for U+0100 onwards).
std::array<char32_t, 256> Gpt2BytesToUnicode();

class ByteLevelBpe final : public Tokenizer {
 public:
  // Throws std::runtime_error when the vocab breaks the invariants above.
  explicit ByteLevelBpe(ByteLevelBpeVocab vocab);

  std::vector<int32_t> Encode(std::string_view text) const override;
  std::string Decode(const std::vector<int32_t>& ids) const override;
  std::string TokenText(int32_t id) const override;
  int64_t VocabSize() const override { return static_cast<int64_t>(vocab_.token_bytes.size()); }
  int32_t EosId() const override { return vocab_.eos_id; }
  std::string Name() const override { return vocab_.name; }

 private:
  // Appends the ids of one pre-tokenized piece.
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;
  std::vector<int32_t> MergePiece(std::string_view piece) const;
  const std::string& CheckedBytes(int32_t id) const;

  ByteLevelBpeVocab vocab_;
  // Only used when vocab_.whole_piece_lookup; views into vocab_.token_bytes.
  std::unordered_map<std::string_view, int32_t> id_by_bytes_;

  mutable std::mutex cache_mu_;
  // Piece bytes -> ids. GUARDED_BY(cache_mu_); cleared when it reaches kMaxCacheEntries.
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace kvpool
