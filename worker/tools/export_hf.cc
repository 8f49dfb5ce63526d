// kvpool-export-hf: writes a model's weights (a built-in config's seeded random
// weights by default) as a Hugging Face folder, so that transformers can run exactly
// the weights kvpool runs (the external check, and the Hugging Face baseline), with
// its tokenizer files, so that Hugging Face, vLLM and the field's benchmark tools
// tokenize as kvpool does: a built-in GPT-2-vocabulary model gets vocab.json,
// merges.txt, tokenizer.json and tokenizer_config.json written from the rank file; a
// model read from a folder gets that folder's tokenizer files copied.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "engine/model_loader.h"
#include "tokenizer/hf_tokenizer_files.h"
#include "tokenizer/tokenizer.h"
#include "weights/hf_writer.h"

namespace {

// The files a Hugging Face folder's tokenizer may consist of.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json",
                                           "tokenizer_config.json",
                                           "special_tokens_map.json",
                                           "vocab.json",
                                           "merges.txt",
                                           "vocab.txt",
                                           "tokenizer.model",
                                           "added_tokens.json"};

// What tokenizer files it wrote, or why none.
std::string WriteTokenizer(const std::string& model, const kvpool::LoadedModel& loaded,
                           const std::string& out) {
  namespace fs = std::filesystem;
  if (fs::is_directory(model)) {
    std::string copied;
    for (const char* name : kTokenizerFiles) {
      const fs::path from = fs::path(model) / name;
      if (!fs::exists(from)) continue;
      fs::copy_file(from, fs::path(out) / name, fs::copy_options::overwrite_existing);
      copied += std::string(copied.empty() ? "" : ", ") + name;
    }
    return copied.empty() ? "no tokenizer files in " + model : "copied " + copied;
  }
  if (!loaded.tokenizer) return "no tokenizer: " + loaded.tokenizer_note;
  kvpool::WriteGpt2HfTokenizerFiles(*loaded.tokenizer, loaded.config.max_position, out);
  return "vocab.json, merges.txt, tokenizer.json, tokenizer_config.json";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Write a model's weights as a Hugging Face folder (config.json + model.safetensors + "
      "its tokenizer files)"};
  std::string model = "gpt2", out, dtype = "fp32";
  uint64_t seed = 42;
  app.add_option("--model", model, "built-in name or Hugging Face folder");
  app.add_option("--out", out, "output folder")->required();
  app.add_option("--seed", seed, "seed of the random weights");
  app.add_option("--dtype", dtype, "stored dtype")->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  CLI11_PARSE(app, argc, argv);
  auto loaded = kvpool::LoadModel(model, seed);
  if (!loaded.ok()) {
    std::cerr << "kvpool-export-hf: " << loaded.status().ToString() << "\n";
    return 2;
  }
  std::filesystem::create_directories(out);
  const at::ScalarType t = dtype == "fp16"   ? at::kHalf
                           : dtype == "bf16" ? at::kBFloat16
                                             : at::kFloat;
  kvpool::Status st = kvpool::SaveHfFolder(out, loaded->config, loaded->weights, t);
  if (!st.ok()) {
    std::cerr << "kvpool-export-hf: " << st.ToString() << "\n";
    return 1;
  }
  std::string tokenizer;
  try {
    tokenizer = WriteTokenizer(model, *loaded, out);
  } catch (const std::exception& e) {
    std::cerr << "kvpool-export-hf: the tokenizer files: " << e.what() << "\n";
    return 1;
  }
  std::cout << "wrote " << out << " (" << loaded->source << ", " << dtype
            << "; tokenizer: " << tokenizer << ")\n";
  return 0;
}
