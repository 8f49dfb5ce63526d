// The CPU engine's precision flags as the engine tools take them (kvpool-engine-bench,
// kvpool-engine-run): --weight-dtype (fp32, bf16, fp16, auto) and --kv-cache-dtype (any
// KvDtype), parsed into EngineOptions with the same messages in every tool.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "engine/cpu_linear.h"
#include "engine/engine.h"

namespace kvpool {

struct CpuDtypeFlags {
  std::string weight = "fp32";
  std::string kv = "fp32";
  std::string weight_why;  // after Apply: what --weight-dtype chose and why

  void Add(CLI::App& app) {
    app.add_option("--weight-dtype", weight, "CPU linear weights: fp32, bf16, fp16 or auto")
        ->capture_default_str();
    app.add_option("--kv-cache-dtype", kv, "CPU KV pool: fp32, fp16, bf16, int8 or fp8 (e4m3)")
        ->capture_default_str();
  }
  // Sets options->cpu_weight_dtype and cpu_kv_dtype; INVALID_ARGUMENT naming the flag.
  Status Apply(EngineOptions* options) {
    KVPOOL_ASSIGN_OR_RETURN(options->cpu_weight_dtype, CpuWeightDtype(weight, &weight_why));
    if (!ParseKvDtype(kv, &options->cpu_kv_dtype)) {
      return InvalidArgument("--kv-cache-dtype must be " + std::string(kKvDtypeNames) + ", got '" +
                             kv + "'");
    }
    return Status::Ok();
  }
  // After the weights are loaded: auto's fp16 falls back to fp32 where they do not fit.
  void FitToWeights(const ModelWeights& weights, EngineOptions* options) {
    if (weight == "auto") {
      options->cpu_weight_dtype =
          FitAutoWeightDtype(weights, options->cpu_weight_dtype, &weight_why);
    }
  }
};

}  // namespace kvpool
