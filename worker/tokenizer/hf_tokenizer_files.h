// The Hugging Face files of a GPT-2 byte-level BPE tokenizer (vocab.json, merges.txt,
// tokenizer.json, tokenizer_config.json), written from a tokenizer whose ids are its
// merge ranks (a tiktoken rank file, as kvpool's built-in GPT-2 tokenizer is), so that
// transformers, vLLM and the field's benchmark tools tokenize exactly as kvpool does.
// The merge list is what Hugging Face's own tiktoken conversion computes: each token
// longer than one byte, in rank order, split into the two parts byte-level BPE reaches
// when only lower-ranked merges apply. It writes files only; it never tokenizes for
// serving.
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace kvpool {

// `tokenizer`'s ids 0..VocabSize()-1 must be its ranks with the EOS (<|endoftext|>)
// last. Throws std::runtime_error naming the token when one cannot be split into two
// lower-ranked tokens (not a rank-ordered byte-level BPE), or when `dir` cannot be
// written.
void WriteGpt2HfTokenizerFiles(const Tokenizer& tokenizer, int64_t model_max_length,
                               const std::string& dir);

}  // namespace kvpool
