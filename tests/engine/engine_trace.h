// Shared by the engine tests (CPU and GPU): random prompts, and a greedy batch run that
// records every step's logits and the generated tokens, its blocks from the manager's
// core in process (OfflineEngine).
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "engine/engine.h"
#include "service/offline_engine.h"

namespace kvpool::testing {

inline std::vector<int32_t> RandomPrompt(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab) - 1);
  std::vector<int32_t> out(n);
  for (auto& t : out) t = dist(rng);
  return out;
}

// Greedy-decodes `lengths.size()` prompts together in `mode`; returns per sequence the
// logits after prefill and after each decode step, and the generated tokens.
struct Trace {
  std::vector<std::vector<at::Tensor>> logits;
  std::vector<std::vector<int32_t>> tokens;
};

inline Trace RunBatch(worker::OfflineEngine& engine, KvMode mode, const std::vector<int64_t>& lengths,
                      int32_t steps, uint32_t first_seed = 100) {
  std::vector<SequenceId> ids;
  for (size_t i = 0; i < lengths.size(); ++i) {
    GenerationRequest r;
    r.prompt = RandomPrompt(lengths[i], engine.config().vocab_size, first_seed + i);
    r.max_tokens = steps + 1;
    r.mode = mode;
    r.ignore_eos = true;
    auto id = engine.AddSequence(std::move(r));
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    ids.push_back(*id);
  }
  Trace trace;
  trace.logits.resize(ids.size());
  auto collect = [&] {
    for (size_t i = 0; i < ids.size(); ++i) {
      trace.logits[i].push_back(engine.sequence(ids[i]).last_logits.clone());
    }
  };
  EXPECT_TRUE(engine.Prefill(ids).ok());
  collect();
  for (int32_t s = 0; s < steps; ++s) {
    Status st = engine.Decode(ids);
    EXPECT_TRUE(st.ok()) << st.ToString();
    collect();
  }
  for (SequenceId id : ids) {
    const Sequence& seq = engine.sequence(id);
    trace.tokens.emplace_back(seq.tokens.begin() + seq.prompt_len(), seq.tokens.end());
    const Status released = engine.Release(id);
    EXPECT_TRUE(released.ok()) << released.ToString();
  }
  return trace;
}

// Largest |logit difference| over every sequence and step of two traces.
inline double MaxDiff(const Trace& a, const Trace& b) {
  double worst = 0;
  for (size_t i = 0; i < a.logits.size(); ++i) {
    for (size_t s = 0; s < a.logits[i].size(); ++s) {
      worst = std::max(worst, (a.logits[i][s] - b.logits[i][s]).abs().max().item<double>());
    }
  }
  return worst;
}

}  // namespace kvpool::testing
