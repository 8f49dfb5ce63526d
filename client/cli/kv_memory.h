// KV-cache memory arithmetic for `kvpool calc`: every token keeps a K and a V vector
// per layer and KV head, so a batch of sequences needs
// 2 x layers x kv_heads x head_dim x seq x batch x bytes per element. Sizes are
// counted in bits until the per-token total, so int4's half byte is exact, and every
// product is checked for int64 overflow. Pure functions: no I/O, no flags.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/model_config.h"
#include "common/status.h"

namespace kvpool::cli {

// Bits per K/V element: fp32 32, fp16 and bf16 16, fp8 and int8 8, int4 4;
// INVALID_ARGUMENT naming the known dtypes otherwise.
StatusOr<int64_t> KvDtypeBits(std::string_view dtype);

// Scale bits per head vector (one token's K or V of one KV head) as kvpool's pool keeps
// them: 32 (one fp32 scale) for int8 and fp8, 0 for the others (int4 is not a pool
// dtype: counted bare).
int64_t KvScaleBitsPerHead(std::string_view dtype);

// 2 x num_layers x num_kv_heads x (head_dim x dtype_bits + scale_bits) / 8. Always whole
// bytes: the vector count is even (K and V) and both bit counts are multiples of 4.
// OUT_OF_RANGE on overflow.
StatusOr<int64_t> KvBytesPerToken(const ModelConfig& model, int64_t dtype_bits,
                                  int64_t scale_bits = 0);

// bytes_per_token x seq_len x batch; OUT_OF_RANGE on overflow.
StatusOr<int64_t> KvBytes(int64_t bytes_per_token, int64_t seq_len, int64_t batch);

// "MHA" when every query head has its own KV head, "MQA" when one KV head serves them
// all, "GQA" in between.
std::string_view AttentionKind(int64_t num_heads, int64_t num_kv_heads);

// The table's default sequence lengths: 512 doubling up to the context, then the
// context itself (4096 when unknown): 512, 1024, 2048, 4096 for a 4096-token model.
std::vector<int64_t> DefaultSeqLens(int64_t max_position);

// "24GiB", "80GB", "512 MiB", "1.5GiB", "1048576". KiB/MiB/GiB/TiB (and K/M/G/T) are
// powers of 1024, KB/MB/GB/TB powers of 1000; case is ignored. INVALID_ARGUMENT for
// anything else, zero included.
StatusOr<int64_t> ParseByteSize(std::string_view text);

// In the largest binary unit that keeps the number >= 1, with two decimals unless it
// is whole: "512 B", "2 GiB", "1.53 GiB".
std::string FormatBytes(int64_t bytes);

}  // namespace kvpool::cli
