// --model resolution: see model_loader.h. A built-in name (seeded random weights) or a
// Hugging Face folder; the model list itself is common/model_config.
#include "engine/model_loader.h"

#include <filesystem>

#include "tokenizer/tokenizer.h"
#include "weights/hf_loader.h"

namespace kvpool {

StatusOr<LoadedModel> LoadModel(const std::string& name_or_dir, uint64_t seed) {
  LoadedModel m;
  namespace fs = std::filesystem;
  if (fs::is_directory(name_or_dir)) {
    KVPOOL_ASSIGN_OR_RETURN(m.config, LoadHfConfig(name_or_dir));
    KVPOOL_ASSIGN_OR_RETURN(m.weights, LoadHfWeights(name_or_dir, m.config));
    m.source = name_or_dir;
    try {
      m.tokenizer = LoadTokenizerFromFolder(name_or_dir);
    } catch (const std::exception& e) {
      m.tokenizer_note = e.what();
    }
    return m;
  }
  KVPOOL_ASSIGN_OR_RETURN(m.config, BuiltinModelConfig(name_or_dir));
  if (!m.config.runnable) {
    return InvalidArgument("model '" + name_or_dir +
                           "' is a shape for memory calculations only (kvpool calc)");
  }
  m.weights = RandomWeights(m.config, seed);
  m.source = "built-in " + name_or_dir + ", random weights, seed " + std::to_string(seed);
  if (m.config.vocab_size == 50257) {
    try {
      m.tokenizer = LoadDefaultGpt2Tokenizer();
    } catch (const std::exception& e) {
      m.tokenizer_note = e.what();
    }
  } else {
    m.tokenizer_note = "built-in '" + name_or_dir +
                       "' has no tokenizer of its own; give a Hugging Face folder for one";
  }
  return m;
}

}  // namespace kvpool
