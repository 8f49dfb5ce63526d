// The tokenizer interface the worker encodes prompts and decodes generations with, and the
// factories that build one from the files a model ships: GPT-2's tiktoken rank file, a Hugging
// Face vocab.json + merges.txt pair (byte-level BPE), a BERT vocab.txt (WordPiece) or a
// SentencePiece tokenizer.model. This library owns text <-> token id conversion only: it never
// adds BOS/EOS or chat templates (callers do), and it never depends on the engine or LibTorch.
// Factories report bad input by throwing std::runtime_error whose message names the file and
// the problem; Decode/TokenText throw std::out_of_range for ids outside the vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kvpool {

// Immutable after construction; every method is safe to call from several threads at once.
class Tokenizer {
 public:
  virtual ~Tokenizer();

  // Special-token text such as "<|endoftext|>" is encoded as ordinary text.
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // The bytes one token stands for; for byte-level BPE this may be part of a UTF-8 sequence.
  virtual std::string TokenText(int32_t id) const;
  virtual int64_t VocabSize() const = 0;
  // The end-of-sequence id, or -1 when the vocabulary has none.
  virtual int32_t EosId() const = 0;
  // What kind of tokenizer this is and which file it came from, for logs.
  virtual std::string Name() const = 0;
};

// GPT-2 byte-level BPE from a tiktoken rank file: lines "base64(bytes) rank", rank == token id.
// <|endoftext|> gets the id after the last rank (50256 for GPT-2) and is the EOS.
std::unique_ptr<Tokenizer> LoadGpt2TiktokenFile(const std::string& path);

// GPT-2 byte-level BPE from Hugging Face vocab.json + merges.txt (or OpenAI's encoder.json +
// vocab.bpe, the same formats). A merge's rank is its line index; EOS is <|endoftext|> if present.
std::unique_ptr<Tokenizer> LoadGpt2VocabMerges(const std::string& vocab_json,
                                               const std::string& merges_txt);

// BERT WordPiece (e.g. uer/gpt2-chinese-cluecorpussmall): BERT's basic tokenizer, then greedy
// longest-match-first word pieces with "##" continuations. EOS is [SEP].
std::unique_ptr<Tokenizer> LoadWordPiece(const std::string& vocab_txt, bool do_lower_case = true);

// SentencePiece model (needs the library built with KVPOOL_HAVE_SENTENCEPIECE, else throws).
// Encode adds no BOS; EOS comes from the model.
std::unique_ptr<Tokenizer> LoadSentencePiece(const std::string& model_file);

// Picks by what a Hugging Face model folder holds: tokenizer.model -> SentencePiece;
// vocab.json + merges.txt -> GPT-2 BPE; vocab.txt -> WordPiece (do_lower_case read from
// tokenizer_config.json when present). Throws naming what is missing.
std::unique_ptr<Tokenizer> LoadTokenizerFromFolder(const std::string& dir);

// The built-in tokenizer for gpt2-family configs: $KVPOOL_GPT2_TIKTOKEN if set, else
// KVPOOL_DEFAULT_DATA_DIR/gpt2.tiktoken (fetched by scripts/install-deps.sh).
std::unique_ptr<Tokenizer> LoadDefaultGpt2Tokenizer();

}  // namespace kvpool
