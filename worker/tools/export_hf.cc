// kvpool-export-hf: writes a model's weights (a built-in config's seeded random
// weights by default) as a Hugging Face folder, so that transformers can run exactly
// the weights kvpool runs (the external check, and the Hugging Face baseline).
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "engine/model_loader.h"
#include "weights/hf_writer.h"

int main(int argc, char** argv) {
  CLI::App app{
      "Write a model's weights as a Hugging Face folder (config.json + model.safetensors)"};
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
  std::cout << "wrote " << out << " (" << loaded->source << ", " << dtype << ")\n";
  return 0;
}
