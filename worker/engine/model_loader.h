// Resolves what a user names with --model: a built-in configuration (seeded random
// weights, the GPT-2 tokenizer where the vocabulary is GPT-2's) or a Hugging Face
// folder (config.json, safetensors, its tokenizer files).
#pragma once

#include <memory>
#include <string>

#include "common/model_config.h"
#include "common/status.h"
#include "weights/weights.h"

namespace kvpool {

class Tokenizer;

struct LoadedModel {
  ModelConfig config;
  ModelWeights weights;
  std::shared_ptr<const Tokenizer> tokenizer;  // null when none could be found
  std::string source;                          // "built-in, seed 42" or the folder
  std::string tokenizer_note;                  // why there is no tokenizer, if so
};

StatusOr<LoadedModel> LoadModel(const std::string& name_or_dir, uint64_t seed = 42);

}  // namespace kvpool
