// BERT's WordPiece tokenizer as Hugging Face's BertTokenizer runs it: the basic tokenizer
// (drop control characters, isolate CJK ideographs, split on whitespace and punctuation,
// optionally lowercase and strip accents), then greedy longest-match-first word pieces where
// non-initial pieces carry a "##" prefix; a word with no full cover becomes [UNK]. Owns the
// vocab.txt vocabulary only; no special tokens are added or recognized in the input text.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kvpool {

class WordPiece final : public Tokenizer {
 public:
  // tokens[i] is id i; throws std::runtime_error if [UNK] is missing.
  WordPiece(std::vector<std::string> tokens, bool do_lower_case, std::string name);

  std::vector<int32_t> Encode(std::string_view text) const override;
  // Joins pieces like Hugging Face's decode: "##" pieces glue to the previous one, CJK
  // characters and the punctuation . , ! ? take no space before them; no special token is
  // dropped.
  std::string Decode(const std::vector<int32_t>& ids) const override;
  int64_t VocabSize() const override { return static_cast<int64_t>(tokens_.size()); }
  int32_t EosId() const override { return sep_id_; }
  std::string Name() const override { return name_; }

 private:
  // BERT's basic tokenizer: the words (as code points) that word pieces are matched within.
  std::vector<std::u32string> BasicTokenize(std::string_view text) const;
  void AppendWordPieces(const std::u32string& word, std::vector<int32_t>* out) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> ids_;
  bool do_lower_case_;
  std::string name_;
  int32_t unk_id_ = -1;
  int32_t sep_id_ = -1;
};

}  // namespace kvpool
