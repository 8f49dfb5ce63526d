// `kvpool calc`: how much memory a model's KV cache takes, computed from its shape
// alone (a built-in name or a Hugging Face folder's config.json; no weights, no server):
// the model's attention shape and bytes per token, the same per token for MHA, this
// model and MQA, a table over sequence lengths (rows) and batch sizes (columns), and
// with --memory how many sequences of each length fit. Text, or one JSON object.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "client/cli/cli_util.h"
#include "client/cli/kv_memory.h"
#include "common/model_config.h"

namespace kvpool::cli {
namespace {

struct CalcFlags {
  std::string model;
  std::vector<int64_t> batches = {1, 8, 32};
  std::vector<int64_t> seq_lens;  // empty: DefaultSeqLens of the model's context
  std::string dtype = "fp16";
  std::string memory;    // a byte size; empty: no "fit" column
  int64_t kv_heads = 0;  // 0: the model's own
  bool json = false;
};

// Everything the text and the JSON reports print.
struct CalcReport {
  ModelConfig model;  // num_kv_heads is the --kv-heads override when given
  std::string source;
  std::string dtype;
  int64_t dtype_bits = 0;
  int64_t scale_bits = 0;  // per head vector: kvpool's int8/fp8 keep an fp32 scale
  int64_t bytes_per_token = 0;
  int64_t mha_bytes_per_token = 0;  // the same layers and head_dim, one KV head per query head
  int64_t mqa_bytes_per_token = 0;  // ... one KV head in all
  std::vector<int64_t> seq_lens, batches;
  std::vector<std::vector<int64_t>> bytes;  // [seq][batch]
  int64_t memory_bytes = 0;                 // 0: no --memory
  std::vector<int64_t> sequences_that_fit;  // [seq], with --memory
};

// A folder's config.json (named after the folder, as the worker names it), else a
// built-in name.
StatusOr<ModelConfig> ResolveModel(const std::string& name_or_dir, std::string* source) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(name_or_dir)) {
    *source = "built-in";
    return BuiltinModelConfig(name_or_dir);
  }
  const fs::path config_path = fs::path(name_or_dir) / "config.json";
  std::ifstream in(config_path);
  if (!in) return NotFound("cannot open " + config_path.string());
  std::ostringstream text;
  text << in.rdbuf();
  std::error_code ec;
  const std::string name = fs::weakly_canonical(fs::path(name_or_dir), ec).filename().string();
  *source = config_path.string();
  return KvShapeFromHfJson(text.str(), name.empty() ? name_or_dir : name);
}

StatusOr<CalcReport> Calculate(const CalcFlags& flags) {
  CalcReport r;
  KVPOOL_ASSIGN_OR_RETURN(r.model, ResolveModel(flags.model, &r.source));
  const int64_t num_heads = r.model.num_heads;
  if (flags.kv_heads != 0) {
    if (flags.kv_heads < 0 || flags.kv_heads > num_heads || num_heads % flags.kv_heads != 0) {
      return InvalidArgument("--kv-heads " + std::to_string(flags.kv_heads) +
                             " must divide the model's " + std::to_string(num_heads) +
                             " query heads (1 = MQA, " + std::to_string(num_heads) + " = MHA)");
    }
    r.model.num_kv_heads = flags.kv_heads;
    r.source += ", --kv-heads " + std::to_string(flags.kv_heads);
  }
  r.dtype = flags.dtype;
  KVPOOL_ASSIGN_OR_RETURN(r.dtype_bits, KvDtypeBits(flags.dtype));
  r.scale_bits = KvScaleBitsPerHead(flags.dtype);
  r.seq_lens = flags.seq_lens.empty() ? DefaultSeqLens(r.model.max_position) : flags.seq_lens;
  r.batches = flags.batches;
  for (const auto& [values, flag] :
       {std::pair(&r.seq_lens, "--seq"), std::pair(&r.batches, "--batch")}) {
    if (values->empty()) return InvalidArgument(std::string(flag) + " needs at least one value");
    for (int64_t v : *values) {
      if (v <= 0) {
        return InvalidArgument(std::string(flag) + " values must be positive, got " +
                               std::to_string(v));
      }
    }
  }
  if (!flags.memory.empty()) {
    KVPOOL_ASSIGN_OR_RETURN(r.memory_bytes, ParseByteSize(flags.memory));
  }

  KVPOOL_ASSIGN_OR_RETURN(r.bytes_per_token, KvBytesPerToken(r.model, r.dtype_bits, r.scale_bits));
  ModelConfig variant = r.model;
  variant.num_kv_heads = num_heads;
  KVPOOL_ASSIGN_OR_RETURN(r.mha_bytes_per_token,
                          KvBytesPerToken(variant, r.dtype_bits, r.scale_bits));
  variant.num_kv_heads = 1;
  KVPOOL_ASSIGN_OR_RETURN(r.mqa_bytes_per_token,
                          KvBytesPerToken(variant, r.dtype_bits, r.scale_bits));
  for (int64_t seq_len : r.seq_lens) {
    std::vector<int64_t>& row = r.bytes.emplace_back();
    for (int64_t batch : r.batches) {
      KVPOOL_ASSIGN_OR_RETURN(int64_t bytes, KvBytes(r.bytes_per_token, seq_len, batch));
      row.push_back(bytes);
    }
    if (r.memory_bytes > 0) {
      KVPOOL_ASSIGN_OR_RETURN(int64_t sequence_bytes, KvBytes(r.bytes_per_token, seq_len, 1));
      r.sequences_that_fit.push_back(r.memory_bytes / sequence_bytes);
    }
  }
  return r;
}

// "1 KV head", "8 KV heads".
std::string KvHeads(int64_t n) { return std::to_string(n) + (n == 1 ? " KV head" : " KV heads"); }

std::string AttentionLabel(int64_t num_heads, int64_t num_kv_heads) {
  std::string kind(AttentionKind(num_heads, num_kv_heads));
  if (kind == "GQA") kind += ", group size " + std::to_string(num_heads / num_kv_heads);
  return kind;
}

nlohmann::ordered_json ToJson(const CalcReport& r) {
  const ModelConfig& m = r.model;
  nlohmann::ordered_json j;
  j["model"] = {{"name", m.name},
                {"source", r.source},
                {"num_layers", m.num_layers},
                {"num_heads", m.num_heads},
                {"num_kv_heads", m.num_kv_heads},
                {"head_dim", m.head_dim},
                {"max_position", m.max_position},
                {"attention", AttentionKind(m.num_heads, m.num_kv_heads)},
                {"group_size", m.group_size()}};
  j["dtype"] = r.dtype;
  j["dtype_bits"] = r.dtype_bits;
  j["scale_bits_per_head"] = r.scale_bits;
  j["scale_layout"] = r.scale_bits > 0 ? "fp32 per (token, KV head)" : "none";
  j["bytes_per_token"] = r.bytes_per_token;
  j["attention_comparison"] = {{"mha_bytes_per_token", r.mha_bytes_per_token},
                               {"model_bytes_per_token", r.bytes_per_token},
                               {"mqa_bytes_per_token", r.mqa_bytes_per_token}};
  j["table"] = nlohmann::ordered_json::array();
  for (size_t s = 0; s < r.seq_lens.size(); ++s) {
    for (size_t b = 0; b < r.batches.size(); ++b) {
      j["table"].push_back(
          {{"seq", r.seq_lens[s]}, {"batch", r.batches[b]}, {"bytes", r.bytes[s][b]}});
    }
  }
  if (r.memory_bytes > 0) {
    j["memory_bytes"] = r.memory_bytes;
    j["fits"] = nlohmann::ordered_json::array();
    for (size_t s = 0; s < r.seq_lens.size(); ++s) {
      j["fits"].push_back({{"seq", r.seq_lens[s]}, {"sequences", r.sequences_that_fit[s]}});
    }
  }
  return j;
}

void PrintText(const CalcReport& r) {
  const ModelConfig& m = r.model;
  char bytes_per_element[16];
  std::snprintf(bytes_per_element, sizeof(bytes_per_element), "%g",
                static_cast<double>(r.dtype_bits) / 8);
  std::printf("model      %s (%s)\n", m.name.c_str(), r.source.c_str());
  std::printf("shape      %lld layers, %lld query heads, %s (%s), head dim %lld, context %lld\n",
              static_cast<long long>(m.num_layers), static_cast<long long>(m.num_heads),
              KvHeads(m.num_kv_heads).c_str(), AttentionLabel(m.num_heads, m.num_kv_heads).c_str(),
              static_cast<long long>(m.head_dim), static_cast<long long>(m.max_position));
  std::printf("per token  %s = 2 (K, V) x %lld layers x %s x %lld head dim x %s bytes (%s)%s\n",
              FormatBytes(r.bytes_per_token).c_str(), static_cast<long long>(m.num_layers),
              KvHeads(m.num_kv_heads).c_str(), static_cast<long long>(m.head_dim),
              bytes_per_element, r.dtype.c_str(),
              r.scale_bits > 0 ? ", plus one fp32 scale per (token, layer, KV head, K|V)" : "");
  std::string attention;
  auto add = [&](const char* kind, int64_t kv_heads, int64_t bytes_per_token) {
    attention += std::string(attention.empty() ? "" : ", ") + kind + " " +
                 FormatBytes(bytes_per_token) + " (" + KvHeads(kv_heads) +
                 (kv_heads == m.num_kv_heads ? ", this model)" : ")");
  };
  add("MHA", m.num_heads, r.mha_bytes_per_token);
  if (m.num_kv_heads != m.num_heads && m.num_kv_heads != 1) {
    add("GQA", m.num_kv_heads, r.bytes_per_token);
  }
  if (m.num_heads != 1) add("MQA", 1, r.mqa_bytes_per_token);
  std::printf("attention  per token: %s\n", attention.c_str());

  std::printf("\nKV cache by sequence length (rows) and batch size (columns):\n%7s ", "seq");
  for (int64_t batch : r.batches) {
    std::printf("  %12s", ("batch " + std::to_string(batch)).c_str());
  }
  if (r.memory_bytes > 0) std::printf("  fit in %s", FormatBytes(r.memory_bytes).c_str());
  std::printf("\n");
  bool beyond_context = false;
  for (size_t s = 0; s < r.seq_lens.size(); ++s) {
    const bool beyond = m.max_position > 0 && r.seq_lens[s] > m.max_position;
    beyond_context |= beyond;
    std::printf("%7lld%s", static_cast<long long>(r.seq_lens[s]), beyond ? "*" : " ");
    for (int64_t bytes : r.bytes[s]) std::printf("  %12s", FormatBytes(bytes).c_str());
    if (r.memory_bytes > 0) {
      std::printf("  %lld sequences", static_cast<long long>(r.sequences_that_fit[s]));
    }
    std::printf("\n");
  }
  if (beyond_context) {
    std::printf("* longer than the model's context (%lld)\n",
                static_cast<long long>(m.max_position));
  }
}

}  // namespace

void AddCalcCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<CalcFlags>();
  CLI::App* command = app.add_subcommand(
      "calc", "KV-cache memory of a model: per token, per batch x sequence length, and fit");
  command->add_option("--model", flags->model, "built-in name or Hugging Face folder")->required();
  command->add_option("--batch", flags->batches, "batch sizes, comma-separated (1,8,32)")
      ->delimiter(',');
  command
      ->add_option("--seq", flags->seq_lens,
                   "sequence lengths in tokens, comma-separated (512 doubling up to the "
                   "model's context)")
      ->delimiter(',');
  command->add_option("--dtype", flags->dtype,
                      "K/V element type: fp32, fp16, bf16, fp8, int8, int4 (fp16); fp8 and "
                      "int8 count kvpool's fp32 scale per (token, KV head)");
  command->add_option("--memory", flags->memory,
                      "KV-cache budget, e.g. 24GiB or 80GB: how many sequences fit (weights "
                      "not subtracted)");
  command->add_option("--kv-heads", flags->kv_heads,
                      "override the model's KV heads (1 = MQA, query heads = MHA)");
  command->add_flag("--json", flags->json, "print one JSON object");
  command->callback([flags, exit_code] {
    StatusOr<CalcReport> report = Calculate(*flags);
    if (!report.ok()) {
      *exit_code = ReportError("calc", report.status());
      return;
    }
    if (flags->json) {
      std::printf("%s\n", ToJson(*report).dump().c_str());
    } else {
      PrintText(*report);
    }
  });
}

}  // namespace kvpool::cli
