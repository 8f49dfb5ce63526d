// The Tokenizer base class and the two factories that choose a format: from a model folder's
// contents, and the built-in GPT-2 default.
#include "tokenizer/tokenizer.h"

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "tokenizer/file_io.h"

#ifndef KVPOOL_DEFAULT_DATA_DIR
#error "KVPOOL_DEFAULT_DATA_DIR must be defined by the build (worker/CMakeLists.txt)"
#endif

namespace kvpool {
namespace {

// tokenizer_config.json's do_lower_case, defaulting to BERT's true when absent or unreadable.
bool ReadDoLowerCase(const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  if (!FileExists(path)) return true;
  const nlohmann::json config =
      nlohmann::json::parse(ReadTokenizerFile(path, "tokenizer config"), nullptr,
                            /*allow_exceptions=*/false);
  if (!config.is_object()) return true;
  auto it = config.find("do_lower_case");
  return it == config.end() || !it->is_boolean() || it->get<bool>();
}

}  // namespace

Tokenizer::~Tokenizer() = default;

std::string Tokenizer::TokenText(int32_t id) const { return Decode({id}); }

std::unique_ptr<Tokenizer> LoadTokenizerFromFolder(const std::string& dir) {
  const std::string sp_model = dir + "/tokenizer.model";
  const std::string vocab_json = dir + "/vocab.json";
  const std::string merges_txt = dir + "/merges.txt";
  const std::string vocab_txt = dir + "/vocab.txt";
  if (FileExists(sp_model)) return LoadSentencePiece(sp_model);
  const bool has_vocab_json = FileExists(vocab_json);
  const bool has_merges = FileExists(merges_txt);
  if (has_vocab_json && has_merges) return LoadGpt2VocabMerges(vocab_json, merges_txt);
  if (FileExists(vocab_txt)) return LoadWordPiece(vocab_txt, ReadDoLowerCase(dir));
  if (has_vocab_json || has_merges) {
    throw std::runtime_error(
        "tokenizer folder '" + dir + "' has " +
        (has_vocab_json ? "vocab.json but no merges.txt" : "merges.txt but no vocab.json"));
  }
  throw std::runtime_error("no tokenizer in folder '" + dir +
                           "': expected tokenizer.model (SentencePiece), vocab.json + merges.txt "
                           "(GPT-2 BPE) or vocab.txt (WordPiece)");
}

std::unique_ptr<Tokenizer> LoadDefaultGpt2Tokenizer() {
  const char* env = std::getenv("KVPOOL_GPT2_TIKTOKEN");
  const std::string path =
      env != nullptr && *env != '\0' ? env : std::string(KVPOOL_DEFAULT_DATA_DIR "/gpt2.tiktoken");
  if (!FileExists(path)) {
    throw std::runtime_error("GPT-2 rank file '" + path +
                             "' not found: run scripts/install-deps.sh to fetch it, or point "
                             "KVPOOL_GPT2_TIKTOKEN at a copy");
  }
  return LoadGpt2TiktokenFile(path);
}

}  // namespace kvpool
