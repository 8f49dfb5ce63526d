// `kvpool calc` as a user runs it: the real binary with --json, its numbers checked
// against 2 x layers x kv_heads x head_dim x seq x batch x bytes worked by hand, for
// built-in names, --kv-heads overrides and Hugging Face folders; bad input exits 1
// with a message naming the problem.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/client/test_util.h"

namespace kvpool {
namespace {

using ::kvpool::testing::CliRun;
using ::kvpool::testing::RunCli;
using ::testing::HasSubstr;

constexpr int64_t kGiB = int64_t{1} << 30;

// The --json report of `kvpool calc ARGS`; an empty object (and a test failure) if it
// failed. Callers index it non-const, so a missing key reads as null, not a crash.
nlohmann::json Calc(const std::string& args) {
  const CliRun run = RunCli("calc " + args + " --json");
  EXPECT_EQ(run.exit_code, 0) << args << ": " << run.output;
  nlohmann::json report = nlohmann::json::parse(run.output, nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(report.is_object()) << args << ": " << run.output;
  return report.is_object() ? report : nlohmann::json::object();
}

// The table cell for (seq, batch); -1 when there is none.
int64_t TableBytes(const nlohmann::json& report, int64_t seq, int64_t batch) {
  if (!report.contains("table")) return -1;
  for (const auto& cell : report["table"]) {
    if (cell["seq"] == seq && cell["batch"] == batch) return cell["bytes"].get<int64_t>();
  }
  return -1;
}

// A fresh folder holding `config_json` as config.json; removed with the fixture.
class CalcTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const std::string& dir : dirs_) std::filesystem::remove_all(dir);
  }
  std::string HfFolder(const std::string& name, const std::string& config_json) {
    char base[] = "/tmp/kvpool-calc-test-XXXXXX";
    const std::string dir = std::string(mkdtemp(base)) + "/" + name;
    dirs_.push_back(base);
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << config_json;
    return dir;
  }

 private:
  std::vector<std::string> dirs_;
};

TEST_F(CalcTest, Llama7bFp16IsTwoGibPerSequenceAndSixtyFourAtBatch32) {
  nlohmann::json r = Calc("--model llama-7b --seq 4096 --dtype fp16 --batch 1,32");
  EXPECT_EQ(r["bytes_per_token"], 2 * 32 * 32 * 128 * 2);
  EXPECT_EQ(TableBytes(r, 4096, 1), 2 * kGiB);
  EXPECT_EQ(TableBytes(r, 4096, 32), 64 * kGiB);
  EXPECT_EQ(r["table"].size(), 2u);
  EXPECT_EQ(r["model"]["attention"], "MHA");
  EXPECT_FALSE(r.contains("fits"));
}

TEST_F(CalcTest, GqaDividesByTheGroupSize) {
  nlohmann::json r = Calc("--model llama-70b --seq 4096 --batch 1");
  EXPECT_EQ(r["model"]["num_heads"], 64);
  EXPECT_EQ(r["model"]["num_kv_heads"], 8);
  EXPECT_EQ(r["model"]["attention"], "GQA");
  EXPECT_EQ(r["model"]["group_size"], 8);
  const int64_t mha = r["attention_comparison"]["mha_bytes_per_token"];
  EXPECT_EQ(mha, 2 * 80 * 64 * 128 * 2);
  EXPECT_EQ(r["bytes_per_token"], mha / 8);
  EXPECT_EQ(r["attention_comparison"]["model_bytes_per_token"], mha / 8);
  EXPECT_EQ(r["attention_comparison"]["mqa_bytes_per_token"], mha / 64);
  EXPECT_EQ(TableBytes(r, 4096, 1), mha / 8 * 4096);
}

TEST_F(CalcTest, KvHeadsOneIsMqa) {
  nlohmann::json mha = Calc("--model llama-7b --seq 4096 --batch 1");
  nlohmann::json mqa = Calc("--model llama-7b --seq 4096 --batch 1 --kv-heads 1");
  EXPECT_EQ(mqa["model"]["attention"], "MQA");
  EXPECT_EQ(mqa["model"]["num_kv_heads"], 1);
  EXPECT_EQ(mqa["bytes_per_token"], mha["bytes_per_token"].get<int64_t>() / 32);
  EXPECT_EQ(TableBytes(mqa, 4096, 1), 2 * kGiB / 32);
  nlohmann::json gqa = Calc("--model llama-7b --seq 4096 --batch 1 --kv-heads 4");
  EXPECT_EQ(gqa["model"]["attention"], "GQA");
  EXPECT_EQ(gqa["model"]["group_size"], 8);
  EXPECT_EQ(TableBytes(gqa, 4096, 1), 2 * kGiB / 8);
}

TEST_F(CalcTest, DtypesScaleTheBytes) {
  const int64_t fp16 = Calc("--model gpt2 --dtype fp16")["bytes_per_token"];
  EXPECT_EQ(fp16, 2 * 12 * 12 * 64 * 2);
  EXPECT_EQ(Calc("--model gpt2 --dtype fp32")["bytes_per_token"], fp16 * 2);
  EXPECT_EQ(Calc("--model gpt2 --dtype bf16")["bytes_per_token"], fp16);
  // int8 and fp8 as kvpool's pool keeps them: one fp32 scale per head vector.
  EXPECT_EQ(Calc("--model gpt2 --dtype int8")["bytes_per_token"], fp16 / 2 + 2 * 12 * 12 * 4);
  EXPECT_EQ(Calc("--model gpt2 --dtype fp8")["scale_layout"], "fp32 per (token, KV head)");
  nlohmann::json int4 = Calc("--model gpt2 --dtype int4 --kv-heads 1 --seq 3 --batch 1");
  EXPECT_EQ(int4["dtype_bits"], 4);
  EXPECT_EQ(int4["bytes_per_token"], 2 * 12 * 1 * 64 / 2);
  EXPECT_EQ(TableBytes(int4, 3, 1), 3 * 12 * 64);
}

TEST_F(CalcTest, MemorySaysHowManySequencesFit) {
  nlohmann::json r = Calc("--model llama-7b --seq 4096,1000 --dtype fp16 --memory 80GiB");
  EXPECT_EQ(r["memory_bytes"], 80 * kGiB);
  ASSERT_EQ(r["fits"].size(), 2u);
  EXPECT_EQ(r["fits"][0]["seq"], 4096);
  EXPECT_EQ(r["fits"][0]["sequences"], 40);
  EXPECT_EQ(r["fits"][1]["sequences"], 80 * kGiB / (1000 * 512 * 1024));  // 163, floored
}

TEST_F(CalcTest, DefaultsFollowTheModelsContext) {
  nlohmann::json r = Calc("--model gpt3-175b");
  EXPECT_EQ(r["model"]["num_layers"], 96);
  EXPECT_EQ(r["model"]["num_kv_heads"], 96);
  EXPECT_EQ(r["model"]["head_dim"], 128);
  EXPECT_EQ(r["dtype"], "fp16");
  EXPECT_EQ(r["table"].size(), 3u * 3u);  // 512, 1024, 2048 x batch 1, 8, 32
  EXPECT_EQ(TableBytes(r, 2048, 32), int64_t{2} * 96 * 96 * 128 * 2 * 2048 * 32);
}

TEST_F(CalcTest, HuggingFaceFolder) {
  // TinyLlama-1.1B's shape: 22 layers, 32 query heads sharing 4 KV heads of 64.
  const std::string tiny_llama = HfFolder("TinyLlama-1.1B", R"({
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
    "max_position_embeddings": 2048, "vocab_size": 32000})");
  nlohmann::json r = Calc("--model " + tiny_llama + " --seq 2048 --batch 1");
  EXPECT_EQ(r["model"]["name"], "TinyLlama-1.1B");
  EXPECT_EQ(r["model"]["attention"], "GQA");
  EXPECT_EQ(r["model"]["group_size"], 8);
  EXPECT_EQ(r["bytes_per_token"], 2 * 22 * 4 * 64 * 2);
  EXPECT_EQ(TableBytes(r, 2048, 1), int64_t{2} * 22 * 4 * 64 * 2 * 2048);

  // Llama-3.1-8B: rope_scaling, which the engine cannot run, still has a shape.
  const std::string llama31 = HfFolder("Llama-3.1-8B", R"({
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 131072, "vocab_size": 128256,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})");
  nlohmann::json r31 = Calc("--model " + llama31 + " --seq 131072 --batch 1");
  EXPECT_EQ(r31["bytes_per_token"], 128 * 1024);
  EXPECT_EQ(TableBytes(r31, 131072, 1), 16 * kGiB);
}

TEST_F(CalcTest, BadInputExitsOneNamingTheProblem) {
  const struct {
    std::string args, error;
  } cases[] = {
      {"--model no-such-model", "INVALID_ARGUMENT: unknown model 'no-such-model'"},
      {"--model llama-7b --dtype fp7", "INVALID_ARGUMENT: unknown --dtype 'fp7'"},
      {"--model llama-7b --seq 0", "INVALID_ARGUMENT: --seq values must be positive, got 0"},
      {"--model llama-7b --batch 8,0", "INVALID_ARGUMENT: --batch values must be positive"},
      {"--model llama-7b --kv-heads 5", "INVALID_ARGUMENT: --kv-heads 5 must divide"},
      {"--model llama-7b --memory 24XB", "INVALID_ARGUMENT: --memory '24XB'"},
      // The parent of a folder with a config.json: a folder without one.
      {"--model " + HfFolder("llama", "{}") + "/..", "NOT_FOUND: cannot open"},
      {"--model " + HfFolder("mamba", R"({"model_type": "mamba"})"),
       "INVALID_ARGUMENT: config.json of 'mamba' has no attention shape"},
  };
  for (const auto& c : cases) {
    const CliRun run = RunCli("calc " + c.args);
    EXPECT_EQ(run.exit_code, 1) << c.args;
    EXPECT_THAT(run.output, HasSubstr("kvpool calc: " + c.error)) << c.args;
  }
}

}  // namespace
}  // namespace kvpool
