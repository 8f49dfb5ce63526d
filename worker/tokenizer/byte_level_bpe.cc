// The merge loop is a min-heap of candidate pairs over a linked list of parts, so a piece of n
// bytes costs O(n log n) even for pathological pieces (long runs of spaces or digits-free
// base64). Stale heap entries are skipped by re-checking the two parts' current ids.
#include "tokenizer/byte_level_bpe.h"

#include <functional>
#include <queue>
#include <stdexcept>
#include <utility>

#include "tokenizer/gpt2_pretokenizer.h"

namespace kvpool {
namespace {

constexpr size_t kMaxCacheEntries = 1 << 16;
constexpr size_t kMaxCachedPieceBytes = 64;

struct Candidate {
  int32_t rank;
  int32_t left;  // Index of the left part's first byte; stable while the part lives.
  int32_t left_id;
  int32_t right_id;
  int32_t merged_id;
  // Min-heap on (rank, left): the lowest rank wins, the leftmost pair among equal ranks.
  bool operator>(const Candidate& o) const {
    return rank != o.rank ? rank > o.rank : left > o.left;
  }
};

}  // namespace

ByteLevelBpe::ByteLevelBpe(ByteLevelBpeVocab vocab) : vocab_(std::move(vocab)) {
  const auto size = static_cast<int32_t>(vocab_.token_bytes.size());
  auto valid = [size](int32_t id) { return id >= 0 && id < size; };
  for (int b = 0; b < 256; ++b) {
    const int32_t id = vocab_.byte_ids[b];
    if (!valid(id) || vocab_.token_bytes[id] != std::string(1, static_cast<char>(b))) {
      throw std::runtime_error(vocab_.name + ": no token for the single byte " + std::to_string(b));
    }
  }
  for (const auto& [key, merge] : vocab_.merges) {
    if (!valid(static_cast<int32_t>(key >> 32)) || !valid(static_cast<int32_t>(key)) ||
        !valid(merge.merged_id)) {
      throw std::runtime_error(vocab_.name + ": merge refers to an id outside the vocabulary");
    }
  }
  if (vocab_.whole_piece_lookup) {
    id_by_bytes_.reserve(vocab_.token_bytes.size());
    for (int32_t id = 0; id < size; ++id) {
      if (id != vocab_.eos_id && !vocab_.token_bytes[id].empty()) {
        id_by_bytes_.emplace(vocab_.token_bytes[id], id);
      }
    }
  }
}

std::vector<int32_t> ByteLevelBpe::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  for (std::string_view piece : SplitGpt2Pieces(text)) EncodePiece(piece, &ids);
  return ids;
}

void ByteLevelBpe::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.size() == 1) {
    out->push_back(vocab_.byte_ids[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (vocab_.whole_piece_lookup) {
    auto it = id_by_bytes_.find(piece);
    if (it != id_by_bytes_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids = MergePiece(piece);
  out->insert(out->end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::move(ids));
  }
}

std::vector<int32_t> ByteLevelBpe::MergePiece(std::string_view piece) const {
  const auto n = static_cast<int32_t>(piece.size());
  // Part p starts at byte p; parts absorbed into their left neighbour get id -1.
  std::vector<int32_t> id(n), next(n), prev(n);
  for (int32_t i = 0; i < n; ++i) {
    id[i] = vocab_.byte_ids[static_cast<unsigned char>(piece[i])];
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int32_t left) {
    if (left < 0 || next[left] < 0) return;
    const int32_t right = next[left];
    auto it = vocab_.merges.find(ByteLevelBpeVocab::PairKey(id[left], id[right]));
    if (it == vocab_.merges.end()) return;
    heap.push({it->second.rank, left, id[left], id[right], it->second.merged_id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int32_t right = next[c.left];
    if (id[c.left] != c.left_id || right < 0 || id[right] != c.right_id) continue;
    id[c.left] = c.merged_id;
    id[right] = -1;
    next[c.left] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  std::vector<int32_t> ids;
  for (int32_t i = 0; i >= 0; i = next[i]) ids.push_back(id[i]);
  return ids;
}

const std::string& ByteLevelBpe::CheckedBytes(int32_t id) const {
  if (id < 0 || id >= VocabSize() || vocab_.token_bytes[id].empty()) {
    throw std::out_of_range(vocab_.name + ": token id " + std::to_string(id) +
                            " is not in the vocabulary");
  }
  return vocab_.token_bytes[id];
}

std::string ByteLevelBpe::Decode(const std::vector<int32_t>& ids) const {
  std::string text;
  for (int32_t id : ids) text += CheckedBytes(id);
  return text;
}

std::string ByteLevelBpe::TokenText(int32_t id) const { return CheckedBytes(id); }

}  // namespace kvpool
