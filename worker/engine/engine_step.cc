// The Engine's steps (see engine.h): one forward over a mixed batch of prefills and
// decode tokens through the model runner, the recompute of a `none` sequence's whole
// context, sampling and stop handling after each forward, and the usage counters.
// Sequences and their blocks are engine.cc's; nothing here allocates a block.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "engine/engine.h"
#include "engine/model.h"
#include "tokenizer/tokenizer.h"

namespace kvpool {

StatusOr<at::Tensor> Engine::Recompute(const std::vector<Sequence*>& seqs) {
  const PoolGeometry& g = pool_.geometry();
  int64_t blocks = 0;
  for (const Sequence* s : seqs) blocks += CeilDiv(s->tokens.size(), g.block_size);
  if (!scratch_ || scratch_->geometry().num_blocks < blocks) {
    PoolGeometry sg = g;
    sg.num_blocks = blocks;
    KVPOOL_ASSIGN_OR_RETURN(KvPool scratch, runner_->CreatePool(sg));
    scratch_ = std::move(scratch);
  }
  scratch_bytes_ = static_cast<int64_t>(g.block_bytes()) * blocks;
  // Consecutive scratch blocks per sequence; tables must outlive the forward.
  std::vector<std::vector<int32_t>> tables(seqs.size());
  batch_.Clear();
  int32_t next_block = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t n = static_cast<int64_t>(seqs[i]->tokens.size());
    for (int64_t b = 0; b < CeilDiv(n, g.block_size); ++b) tables[i].push_back(next_block++);
    batch_.AddTokens(seqs[i]->tokens, 0, n, tables[i], g.block_size, /*want_logits=*/true);
  }
  return runner_->Forward(batch_, *scratch_);
}

int32_t Engine::DrawToken(Sequence& seq, const float* logits_row) const {
  const ModelConfig& c = runner_->config();
  const GenerationRequest& r = seq.request;
  SampleContext context;
  context.tokens = &seq.tokens;
  context.first_generated = static_cast<size_t>(seq.prompt_len() - r.generated_before);
  if (seq.num_generated() < r.min_tokens) {  // min_tokens counts from this admission
    context.banned = r.stop_token_ids;
    context.banned.push_back(static_cast<int32_t>(c.eos_token_id));
  }
  return SampleToken(logits_row, c.vocab_size, r.sampling, seq.rng, &context);
}

void Engine::SampleNext(Sequence& seq, const at::Tensor& logits_row) {
  TakeToken(seq, logits_row, DrawToken(seq, logits_row.data_ptr<float>()));
}

void Engine::SampleNext(const std::vector<Sequence*>& seqs, const at::Tensor& logits,
                        const std::vector<int64_t>& rows) {
  const at::Tensor all = logits.contiguous();
  const float* base = all.data_ptr<float>();
  const int64_t vocab = all.size(1);
  std::vector<int32_t> tokens(seqs.size());
  at::parallel_for(0, static_cast<int64_t>(seqs.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) tokens[i] = DrawToken(*seqs[i], base + rows[i] * vocab);
  });
  for (size_t i = 0; i < seqs.size(); ++i) TakeToken(*seqs[i], all[rows[i]], tokens[i]);
}

void Engine::TakeToken(Sequence& seq, const at::Tensor& logits_row, int32_t token) {
  seq.last_logits = logits_row;
  const ModelConfig& c = runner_->config();
  const GenerationRequest& r = seq.request;
  seq.tokens.push_back(token);
  if (r.logprobs > 0) {
    seq.last_logprobs = LogprobsOf(logits_row.data_ptr<float>(), c.vocab_size, token, r.logprobs);
  }
  if (std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), token) !=
      r.stop_token_ids.end()) {
    seq.finish = FinishReason::kStop;
    return;
  }
  if (seq.stop_matcher) {
    // Only the new token's bytes are matched: the cost per token does not grow with
    // the number of stop strings or the text so far.
    const std::string piece = tokenizer_->TokenText(token);
    seq.text += piece;
    if (seq.stop_matcher->Feed(seq.stop_state, piece)) {
      seq.finish = FinishReason::kStop;
      return;
    }
  }
  if (!seq.request.ignore_eos && token == c.eos_token_id) {
    seq.finish = FinishReason::kEos;
  } else if (seq.num_generated() >= seq.request.max_tokens) {
    seq.finish = FinishReason::kLength;
  } else if (static_cast<int64_t>(seq.tokens.size()) >= c.max_position) {
    seq.finish = FinishReason::kContext;
  }
}

Status Engine::Prefill(const std::vector<SequenceId>& ids) { return Step(ids, {}); }

Status Engine::Decode(const std::vector<SequenceId>& ids) { return Step({}, ids); }

Status Engine::Step(const std::vector<SequenceId>& prefill_ids,
                    const std::vector<SequenceId>& decode_ids, const std::vector<int64_t>& chunks) {
  // The sequences in the order they enter the batch: prefills, then decodes; `ends`:
  // the position each one's K/V reaches after this step.
  std::vector<Sequence*> cached, recomputed;
  std::vector<bool> cached_is_prefill;
  std::vector<int64_t> ends;
  auto take = [&](Sequence* s, bool prefill, int64_t chunk) {
    if (s->request.mode == KvMode::kNone) {
      recomputed.push_back(s);  // its whole sequence, prefill or not
      return;
    }
    cached.push_back(s);
    cached_is_prefill.push_back(prefill);
    const int64_t end = prefill ? s->prompt_len() : static_cast<int64_t>(s->tokens.size());
    ends.push_back(chunk > 0 ? std::min(end, s->num_kv_tokens + chunk) : end);
  };
  for (size_t i = 0; i < prefill_ids.size(); ++i) {
    const SequenceId id = prefill_ids[i];
    auto it = sequences_.find(id);
    if (it == sequences_.end()) return NotFound("unknown sequence " + std::to_string(id));
    if (it->second.prefilled) {
      return FailedPrecondition("sequence " + std::to_string(id) + " is already prefilled");
    }
    const int64_t chunk = i < chunks.size() ? chunks[i] : 0;
    if (chunk < 0) return InvalidArgument("a prefill chunk must be >= 0 tokens");
    take(&it->second, true, chunk);
  }
  for (SequenceId id : decode_ids) {
    auto it = sequences_.find(id);
    if (it == sequences_.end()) return NotFound("unknown sequence " + std::to_string(id));
    Sequence& s = it->second;
    if (!s.prefilled || s.finished()) {
      return FailedPrecondition("sequence " + std::to_string(id) +
                                (s.finished() ? " has finished" : " is not prefilled yet"));
    }
    take(&s, false, 0);
  }
  // Blocks first (the batch keeps pointers into the tables), then one forward for the
  // prompts' uncached tokens and every decoding sequence's next token.
  for (size_t i = 0; i < cached.size(); ++i) {
    if (!cached_is_prefill[i]) {
      KVPOOL_RETURN_IF_ERROR(CheckCovered(*cached[i], cached[i]->tokens.size()));
    }
  }
  if (!cached.empty()) {
    batch_.Clear();
    // A prefill chunk short of its prompt's end wants no logits row.
    const auto complete = [&](size_t i) {
      return !cached_is_prefill[i] || ends[i] == cached[i]->prompt_len();
    };
    for (size_t i = 0; i < cached.size(); ++i) {
      Sequence* s = cached[i];
      batch_.AddTokens(s->tokens, s->num_kv_tokens, ends[i], s->block_table, options_.block_size,
                       complete(i));
    }
    at::Tensor logits = runner_->Forward(batch_, pool_);
    std::vector<Sequence*> sampled;
    std::vector<int64_t> rows;
    for (size_t i = 0; i < cached.size(); ++i) {
      Sequence* s = cached[i];
      s->num_kv_tokens = ends[i];
      if (!complete(i)) continue;
      s->prefilled = true;
      rows.push_back(static_cast<int64_t>(sampled.size()));
      sampled.push_back(s);
    }
    SampleNext(sampled, logits, rows);
  }
  if (!recomputed.empty()) {
    KVPOOL_ASSIGN_OR_RETURN(at::Tensor logits, Recompute(recomputed));
    std::vector<int64_t> rows;
    for (size_t i = 0; i < recomputed.size(); ++i) {
      recomputed[i]->prefilled = true;
      rows.push_back(static_cast<int64_t>(i));
    }
    SampleNext(recomputed, logits, rows);
  }
  return Status::Ok();
}

KvUsage Engine::Usage() const {
  KvUsage u;
  const PoolGeometry& g = pool_.geometry();
  for (const auto& [id, s] : sequences_) {
    u.blocks_in_use += static_cast<int64_t>(s.block_table.size());
    u.bytes_used += s.num_kv_tokens * static_cast<int64_t>(g.token_bytes());
  }
  u.bytes_reserved = u.blocks_in_use * static_cast<int64_t>(g.block_bytes());
  u.scratch_bytes = scratch_bytes_;
  return u;
}

}  // namespace kvpool
