// GPU paged attention (decode, prefill) and WriteKvCache against float64 CPU
// references computed from the same dtype-rounded inputs, over pools with shuffled,
// non-consecutive block ids, addressed through kv_layout.h (layer 1 of a 2-layer
// pool, so region offsets matter). Error metric: max|out - ref| / max|ref| over the
// whole output; fp32 <= 1e-5, fp16 <= 1e-3, bf16 <= 1e-2. Outputs are poisoned with
// NaN bytes (0xFF) first, so an unwritten element fails as non-finite. Tests skip
// without a CUDA device, except the argument checks, which never touch the GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/device_buffer.h"
#include "cuda/cuda_pool.h"
#include "cuda/paged_attention.h"
#include "gpu_test_util.h"

namespace kvpool::gpu {
namespace {

using ::testing::HasSubstr;
using testing::Compare;
using testing::HostTensor;
using testing::ToleranceFor;

constexpr int kLayer = 1;

// A 2-layer pool on host and device, with a block table of shuffled ids per sequence.
struct TestPool {
  PoolGeometry geometry;
  HostTensor host;
  DeviceBuffer device;
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq], -1 padded
  int32_t max_blocks_per_seq = 0;

  float Value(int seq, int position, KvPart part, int kv_head, int d) const {
    const int32_t block = block_tables[size_t(seq) * max_blocks_per_seq + position / geometry.block_size];
    return host.value(geometry.slot_offset(kLayer, part, block, position % geometry.block_size) +
                      int64_t{kv_head} * geometry.head_dim + d);
  }
  const void* Region(KvPart part) const { return RegionPointer(device.data(), geometry, kLayer, part); }
};

TestPool MakePool(KvDtype dtype, int head_dim, int block_size, int num_kv_heads,
                  const std::vector<int>& context_lens, std::mt19937_64& rng) {
  PoolGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = num_kv_heads;
  g.head_dim = head_dim;
  g.block_size = block_size;
  g.dtype = dtype;
  int32_t total = 0, max_blocks = 1;
  for (int ctx : context_lens) {
    const int32_t n = std::max(1, (ctx + block_size - 1) / block_size);
    total += n;
    max_blocks = std::max(max_blocks, n);
  }
  g.num_blocks = total + 3;  // spare blocks nobody owns
  TestPool pool{g, HostTensor(dtype, g.pool_bytes() / KvDtypeBytes(dtype)), DeviceBuffer(), {}, max_blocks + 2};
  pool.host.FillUniform(rng, -1.0f, 1.0f);
  std::vector<int32_t> ids(g.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  pool.block_tables.assign(context_lens.size() * pool.max_blocks_per_seq, -1);
  size_t next = 0;
  for (size_t s = 0; s < context_lens.size(); ++s) {
    const int n = std::max(1, (context_lens[s] + block_size - 1) / block_size);
    for (int b = 0; b < n; ++b) pool.block_tables[s * pool.max_blocks_per_seq + b] = ids[next++];
  }
  return pool;
}

template <typename T>
DeviceBuffer Upload(const T* data, size_t bytes) {
  StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(buffer.ok()) << buffer.status().message();
  if (!buffer.ok()) return DeviceBuffer();
  const cudaError_t e = cudaMemcpy(buffer->data(), data, bytes, cudaMemcpyHostToDevice);
  EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  return std::move(buffer).value();
}

DeviceBuffer PoisonedOutput(size_t bytes) {
  StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(buffer.ok()) << buffer.status().message();
  if (!buffer.ok()) return DeviceBuffer();
  EXPECT_EQ(cudaMemset(buffer->data(), 0xFF, bytes), cudaSuccess);  // NaN in every dtype
  return std::move(buffer).value();
}

// Softmax(scale * q.K[0..n)) V in float64 for one (seq, head): `positions` visible.
void ReferenceRow(const TestPool& pool, int seq, int kv_head, const float* q, int visible,
                  double scale, double* out) {
  const int d_max = pool.geometry.head_dim;
  std::vector<double> scores(visible);
  double m = -INFINITY;
  for (int t = 0; t < visible; ++t) {
    double s = 0;
    for (int d = 0; d < d_max; ++d) s += double(q[d]) * pool.Value(seq, t, KvPart::kKey, kv_head, d);
    scores[t] = s * scale;
    m = std::max(m, scores[t]);
  }
  double sum = 0;
  for (double& s : scores) sum += (s = std::exp(s - m));
  for (int d = 0; d < d_max; ++d) out[d] = 0;
  for (int t = 0; t < visible; ++t) {
    for (int d = 0; d < d_max; ++d) out[d] += scores[t] / sum * pool.Value(seq, t, KvPart::kValue, kv_head, d);
  }
}

// ---------------------------------------------------------------- decode

struct DecodeCase {
  std::string name;
  KvDtype dtype;
  int head_dim;
  int block_size;
  int num_heads;
  int num_kv_heads;
  std::vector<int> context_lens;
  bool use_workspace = true;
  int expect_split = -1;          // 1: must take the split path, 0: must not, -1: either
  int max_context_override = -1;  // pass a max_context_len below the real one
};

void PrintTo(const DecodeCase& c, std::ostream* os) { *os << c.name; }

class PagedAttentionDecodeTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(PagedAttentionDecodeTest, MatchesFloat64Reference) {
  KVPOOL_SKIP_WITHOUT_GPU();
  const DecodeCase& c = GetParam();
  std::mt19937_64 rng(1234);
  TestPool pool = MakePool(c.dtype, c.head_dim, c.block_size, c.num_kv_heads, c.context_lens, rng);
  const int num_seqs = static_cast<int>(c.context_lens.size());
  const int d_max = c.head_dim;
  HostTensor q(c.dtype, size_t(num_seqs) * c.num_heads * d_max);
  q.FillUniform(rng, -2.0f, 2.0f);

  pool.device = Upload(pool.host.bytes(), pool.host.byte_size());
  DeviceBuffer q_dev = Upload(q.bytes(), q.byte_size());
  DeviceBuffer tables_dev = Upload(pool.block_tables.data(), pool.block_tables.size() * 4);
  DeviceBuffer ctx_dev = Upload(c.context_lens.data(), c.context_lens.size() * 4);
  DeviceBuffer out_dev = PoisonedOutput(q.byte_size());
  ASSERT_FALSE(::testing::Test::HasFailure());

  PagedAttentionDecodeParams p;
  p.geometry = pool.geometry;
  p.k_cache = pool.Region(KvPart::kKey);
  p.v_cache = pool.Region(KvPart::kValue);
  p.q = q_dev.data();
  p.out = out_dev.data();
  p.block_tables = static_cast<const int32_t*>(tables_dev.data());
  p.context_lens = static_cast<const int32_t*>(ctx_dev.data());
  p.num_seqs = num_seqs;
  p.num_heads = c.num_heads;
  p.max_blocks_per_seq = pool.max_blocks_per_seq;
  p.max_context_len = c.max_context_override >= 0
                          ? c.max_context_override
                          : *std::max_element(c.context_lens.begin(), c.context_lens.end());
  p.scale = 1.0f / std::sqrt(float(d_max));
  const size_t workspace_bytes = PagedAttentionDecodeWorkspaceBytes(p);
  if (c.expect_split >= 0) {
    EXPECT_EQ(workspace_bytes > 0, c.expect_split == 1)
        << "split path expectation (workspace " << workspace_bytes << " bytes)";
  }
  StatusOr<DeviceBuffer> workspace = DeviceBuffer::Allocate(c.use_workspace ? workspace_bytes : 0);
  ASSERT_TRUE(workspace.ok()) << workspace.status().message();
  p.workspace = workspace->data();
  p.workspace_bytes = workspace->bytes();

  const Status status = PagedAttentionDecode(p, nullptr);
  ASSERT_TRUE(status.ok()) << status.message();
  KVPOOL_CUDA_ASSERT(cudaDeviceSynchronize());
  HostTensor out(c.dtype, q.elems());
  KVPOOL_CUDA_ASSERT(cudaMemcpy(out.bytes(), out_dev.data(), out.byte_size(), cudaMemcpyDeviceToHost));
  out.DecodeBytes();

  std::vector<double> ref(q.elems());
  const int group = c.num_heads / c.num_kv_heads;
  for (int s = 0; s < num_seqs; ++s) {
    for (int h = 0; h < c.num_heads; ++h) {
      const size_t row = (size_t(s) * c.num_heads + h) * d_max;
      ReferenceRow(pool, s, h / group, &q.values()[row], c.context_lens[s], p.scale, &ref[row]);
    }
  }
  const auto name = [&](size_t i) {
    return "[seq " + std::to_string(i / d_max / c.num_heads) + ", head " +
           std::to_string(i / d_max % c.num_heads) + ", dim " + std::to_string(i % d_max) +
           "] (context " + std::to_string(c.context_lens[i / d_max / c.num_heads]) + ")";
  };
  const testing::Comparison cmp = Compare(out.values(), ref, name);
  std::cout << "[ decode  ] " << c.name << " splits=" << (workspace_bytes > 0 && c.use_workspace)
            << ": " << cmp.report << "\n";
  EXPECT_TRUE(cmp.all_finite) << cmp.report;
  EXPECT_LE(cmp.rel_error, ToleranceFor(c.dtype)) << cmp.report;
}

std::vector<int> RandomLengths(int n, int max_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> dist(1, max_len);
  std::vector<int> lens(n);
  for (int& len : lens) len = dist(rng);
  return lens;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PagedAttentionDecodeTest,
    ::testing::Values(
        DecodeCase{"fp16_d128_bs16_g4", KvDtype::kFloat16, 128, 16, 32, 8, {1, 17, 100, 3000}, true, 1},
        DecodeCase{"fp16_d64_bs8_g1", KvDtype::kFloat16, 64, 8, 12, 12, {1, 7, 64, 1000, 3000}, true, 1},
        DecodeCase{"fp16_d128_bs32_g8", KvDtype::kFloat16, 128, 32, 32, 4, {5, 33, 3000}, true, 1},
        DecodeCase{"fp16_d64_bs16_g12", KvDtype::kFloat16, 64, 16, 24, 2, {1, 250, 2049}},
        DecodeCase{"fp16_d128_bs8_mqa16_batch1", KvDtype::kFloat16, 128, 8, 16, 1, {4000}, true, 1},
        DecodeCase{"fp16_d64_bs32_g1_batch1_short", KvDtype::kFloat16, 64, 32, 12, 12, {200}},
        DecodeCase{"bf16_d128_bs16_g8", KvDtype::kBFloat16, 128, 16, 16, 2, {3, 300, 3000}, true, 1},
        DecodeCase{"bf16_d64_bs32_g1", KvDtype::kBFloat16, 64, 32, 12, 12, {1, 31, 32, 33, 500}},
        DecodeCase{"bf16_d64_bs8_g2", KvDtype::kBFloat16, 64, 8, 8, 4, {1000}},
        DecodeCase{"fp32_d64_bs8_g4", KvDtype::kFloat32, 64, 8, 16, 4, {1, 9, 700}},
        DecodeCase{"fp32_d128_bs32_g3", KvDtype::kFloat32, 128, 32, 6, 2, {2, 100, 3000}, true, 1},
        DecodeCase{"fp32_d128_bs16_g8", KvDtype::kFloat32, 128, 16, 8, 1, {1500}},
        DecodeCase{"fp16_d128_bs16_g4_batch100_unsplit", KvDtype::kFloat16, 128, 16, 32, 8,
                   RandomLengths(100, 600, 7), true, 0},
        DecodeCase{"fp16_d128_bs16_g4_no_workspace", KvDtype::kFloat16, 128, 16, 32, 8, {3000, 5}, false, 1},
        DecodeCase{"fp16_d64_bs16_g1_max_context_too_small", KvDtype::kFloat16, 64, 16, 12, 12,
                   {3000, 40}, true, 1, 600}),
    [](const ::testing::TestParamInfo<DecodeCase>& info) { return info.param.name; });

// ---------------------------------------------------------------- prefill

struct PrefillCase {
  std::string name;
  KvDtype dtype;
  int head_dim;
  int block_size;
  int num_heads;
  int num_kv_heads;
  std::vector<int> q_lens;
  std::vector<int> prefix_lens;  // cached tokens before the new ones
};

void PrintTo(const PrefillCase& c, std::ostream* os) { *os << c.name; }

class PagedAttentionPrefillTest : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(PagedAttentionPrefillTest, MatchesCausalFloat64Reference) {
  KVPOOL_SKIP_WITHOUT_GPU();
  const PrefillCase& c = GetParam();
  std::mt19937_64 rng(99);
  const int num_seqs = static_cast<int>(c.q_lens.size());
  std::vector<int> context_lens(num_seqs), query_start_loc(num_seqs + 1, 0);
  for (int s = 0; s < num_seqs; ++s) {
    context_lens[s] = c.prefix_lens[s] + c.q_lens[s];
    query_start_loc[s + 1] = query_start_loc[s] + c.q_lens[s];
  }
  const int total_q = query_start_loc[num_seqs];
  const int d_max = c.head_dim;
  TestPool pool = MakePool(c.dtype, d_max, c.block_size, c.num_kv_heads, context_lens, rng);
  HostTensor q(c.dtype, size_t(total_q) * c.num_heads * d_max);
  q.FillUniform(rng, -2.0f, 2.0f);

  pool.device = Upload(pool.host.bytes(), pool.host.byte_size());
  DeviceBuffer q_dev = Upload(q.bytes(), q.byte_size());
  DeviceBuffer tables_dev = Upload(pool.block_tables.data(), pool.block_tables.size() * 4);
  DeviceBuffer ctx_dev = Upload(context_lens.data(), context_lens.size() * 4);
  DeviceBuffer qsl_dev = Upload(query_start_loc.data(), query_start_loc.size() * 4);
  DeviceBuffer out_dev = PoisonedOutput(q.byte_size());
  ASSERT_FALSE(::testing::Test::HasFailure());

  PagedAttentionPrefillParams p;
  p.geometry = pool.geometry;
  p.k_cache = pool.Region(KvPart::kKey);
  p.v_cache = pool.Region(KvPart::kValue);
  p.q = q_dev.data();
  p.out = out_dev.data();
  p.query_start_loc = static_cast<const int32_t*>(qsl_dev.data());
  p.context_lens = static_cast<const int32_t*>(ctx_dev.data());
  p.block_tables = static_cast<const int32_t*>(tables_dev.data());
  p.num_seqs = num_seqs;
  p.num_heads = c.num_heads;
  p.max_blocks_per_seq = pool.max_blocks_per_seq;
  p.max_query_len = *std::max_element(c.q_lens.begin(), c.q_lens.end());
  p.scale = 1.0f / std::sqrt(float(d_max));
  const Status status = PagedAttentionPrefill(p, nullptr);
  ASSERT_TRUE(status.ok()) << status.message();
  KVPOOL_CUDA_ASSERT(cudaDeviceSynchronize());
  HostTensor out(c.dtype, q.elems());
  KVPOOL_CUDA_ASSERT(cudaMemcpy(out.bytes(), out_dev.data(), out.byte_size(), cudaMemcpyDeviceToHost));
  out.DecodeBytes();

  std::vector<double> ref(q.elems());
  std::vector<int> token_seq(total_q);
  const int group = c.num_heads / c.num_kv_heads;
  for (int s = 0; s < num_seqs; ++s) {
    for (int i = 0; i < c.q_lens[s]; ++i) {
      const int token = query_start_loc[s] + i;
      token_seq[token] = s;
      const int position = context_lens[s] - c.q_lens[s] + i;
      for (int h = 0; h < c.num_heads; ++h) {
        const size_t row = (size_t(token) * c.num_heads + h) * d_max;
        ReferenceRow(pool, s, h / group, &q.values()[row], position + 1, p.scale, &ref[row]);
      }
    }
  }
  const auto name = [&](size_t i) {
    const int token = static_cast<int>(i / d_max / c.num_heads);
    const int s = token_seq[token];
    return "[token " + std::to_string(token) + " = seq " + std::to_string(s) + " query " +
           std::to_string(token - query_start_loc[s]) + ", head " +
           std::to_string(i / d_max % c.num_heads) + ", dim " + std::to_string(i % d_max) + "]";
  };
  const testing::Comparison cmp = Compare(out.values(), ref, name);
  std::cout << "[ prefill ] " << c.name << ": " << cmp.report << "\n";
  EXPECT_TRUE(cmp.all_finite) << cmp.report;
  EXPECT_LE(cmp.rel_error, ToleranceFor(c.dtype)) << cmp.report;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PagedAttentionPrefillTest,
    ::testing::Values(
        PrefillCase{"fp16_d128_bs16_g4", KvDtype::kFloat16, 128, 16, 32, 8, {5, 37, 70}, {0, 20, 100}},
        PrefillCase{"bf16_d64_bs8_g1", KvDtype::kBFloat16, 64, 8, 12, 12, {1, 33, 64}, {7, 0, 300}},
        PrefillCase{"fp32_d64_bs32_g4", KvDtype::kFloat32, 64, 32, 8, 2, {100, 3}, {50, 1000}},
        PrefillCase{"fp16_d64_bs16_g12_single", KvDtype::kFloat16, 64, 16, 12, 1, {129}, {0}}),
    [](const ::testing::TestParamInfo<PrefillCase>& info) { return info.param.name; });

// ---------------------------------------------------------------- WriteKvCache

class WriteKvCacheTest : public ::testing::TestWithParam<KvDtype> {};

TEST_P(WriteKvCacheTest, WritesExactlyTheTargetedSlots) {
  KVPOOL_SKIP_WITHOUT_GPU();
  const KvDtype dtype = GetParam();
  PoolGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 2;
  g.head_dim = 64;
  g.block_size = 16;
  g.num_blocks = 6;
  g.dtype = dtype;
  std::mt19937_64 rng(5);
  HostTensor pool(dtype, g.pool_bytes() / KvDtypeBytes(dtype));
  pool.FillUniform(rng, -1.0f, 1.0f);
  // Slot 95 is the pool's last; 96 is past it and -1 / -3 are padding: all three skipped.
  const std::vector<int64_t> slots = {5, -1, 17, 95, 0, -3, 40, 96};
  const int64_t num_tokens = static_cast<int64_t>(slots.size());
  HostTensor k(dtype, num_tokens * g.token_elems()), v(dtype, num_tokens * g.token_elems());
  k.FillUniform(rng, -3.0f, 3.0f);
  v.FillUniform(rng, -3.0f, 3.0f);

  DeviceBuffer pool_dev = Upload(pool.bytes(), pool.byte_size());
  DeviceBuffer k_dev = Upload(k.bytes(), k.byte_size());
  DeviceBuffer v_dev = Upload(v.bytes(), v.byte_size());
  DeviceBuffer slots_dev = Upload(slots.data(), slots.size() * sizeof(int64_t));
  ASSERT_FALSE(::testing::Test::HasFailure());

  WriteKvCacheParams p;
  p.geometry = g;
  p.k_cache = RegionPointer(pool_dev.data(), g, kLayer, KvPart::kKey);
  p.v_cache = RegionPointer(pool_dev.data(), g, kLayer, KvPart::kValue);
  p.k = k_dev.data();
  p.v = v_dev.data();
  p.slot_mapping = static_cast<const int64_t*>(slots_dev.data());
  p.num_tokens = num_tokens;
  const Status status = WriteKvCache(p, nullptr);
  ASSERT_TRUE(status.ok()) << status.message();
  KVPOOL_CUDA_ASSERT(cudaDeviceSynchronize());

  std::vector<uint8_t> expected(pool.bytes(), pool.bytes() + pool.byte_size());
  const size_t row_bytes = g.token_elems() * KvDtypeBytes(dtype);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t slot = slots[t];
    if (slot < 0 || slot >= g.num_blocks * g.block_size) continue;
    const int64_t block = slot / g.block_size;
    const int32_t offset = static_cast<int32_t>(slot % g.block_size);
    std::memcpy(&expected[g.slot_offset(kLayer, KvPart::kKey, block, offset) * KvDtypeBytes(dtype)],
                k.bytes() + t * row_bytes, row_bytes);
    std::memcpy(&expected[g.slot_offset(kLayer, KvPart::kValue, block, offset) * KvDtypeBytes(dtype)],
                v.bytes() + t * row_bytes, row_bytes);
  }
  std::vector<uint8_t> got(pool.byte_size());
  KVPOOL_CUDA_ASSERT(cudaMemcpy(got.data(), pool_dev.data(), got.size(), cudaMemcpyDeviceToHost));
  size_t mismatches = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == expected[i]) continue;
    if (mismatches++ == 0) {
      const size_t elem = i / KvDtypeBytes(dtype);
      const int64_t region = elem / g.region_elems();
      const int64_t slot = elem % g.region_elems() / g.token_elems();
      ADD_FAILURE() << "first wrong byte " << i << ": region " << region << " (layer "
                    << region / 2 << (region % 2 ? " V" : " K") << "), slot " << slot
                    << ", element " << elem % g.token_elems() << ": got " << int(got[i])
                    << ", want " << int(expected[i]);
    }
  }
  EXPECT_EQ(mismatches, 0u) << "bytes differing from the expected pool";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, WriteKvCacheTest,
                         ::testing::Values(KvDtype::kFloat16, KvDtype::kBFloat16, KvDtype::kFloat32),
                         [](const ::testing::TestParamInfo<KvDtype>& info) {
                           return std::string(KvDtypeName(info.param));
                         });

// ---------------------------------------------------------------- argument checks

// Validation runs before any CUDA call: these need no GPU. The pointers are fake.
PagedAttentionDecodeParams ValidDecodeParams() {
  PagedAttentionDecodeParams p;
  p.geometry.num_layers = 1;
  p.geometry.num_kv_heads = 4;
  p.geometry.head_dim = 128;
  p.geometry.block_size = 16;
  p.geometry.num_blocks = 8;
  p.geometry.dtype = KvDtype::kFloat16;
  void* fake = reinterpret_cast<void*>(uintptr_t{4096});
  p.k_cache = p.v_cache = p.q = fake;
  p.out = fake;
  p.block_tables = p.context_lens = static_cast<const int32_t*>(fake);
  p.num_seqs = 2;
  p.num_heads = 8;
  p.max_blocks_per_seq = 4;
  p.max_context_len = 64;
  p.scale = 0.125f;
  return p;
}

PagedAttentionPrefillParams ValidPrefillParams() {
  const PagedAttentionDecodeParams d = ValidDecodeParams();
  PagedAttentionPrefillParams p;
  p.geometry = d.geometry;
  p.k_cache = d.k_cache;
  p.v_cache = d.v_cache;
  p.q = d.q;
  p.out = d.out;
  p.query_start_loc = p.context_lens = p.block_tables = d.block_tables;
  p.num_seqs = 2;
  p.num_heads = 8;
  p.max_blocks_per_seq = 4;
  p.max_query_len = 16;
  p.scale = 0.125f;
  return p;
}

void ExpectInvalid(const Status& s, const std::string& needle) {
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
  EXPECT_THAT(s.message(), HasSubstr(needle));
}

TEST(PagedAttentionArgsTest, DecodeRejectsUnsupportedShapes) {
  PagedAttentionDecodeParams p = ValidDecodeParams();
  p.geometry.head_dim = 96;
  ExpectInvalid(PagedAttentionDecode(p, nullptr), "head_dim 96");
  p = ValidDecodeParams();
  p.num_heads = 10;
  ExpectInvalid(PagedAttentionDecode(p, nullptr), "multiple of num_kv_heads");
  p = ValidDecodeParams();
  p.geometry.block_size = 7;
  ExpectInvalid(PagedAttentionDecode(p, nullptr), "block_size 7");
  p = ValidDecodeParams();
  p.geometry.dtype = static_cast<KvDtype>(9);
  ExpectInvalid(PagedAttentionDecode(p, nullptr), "dtype");
  p = ValidDecodeParams();
  p.q = reinterpret_cast<const void*>(uintptr_t{4098});
  ExpectInvalid(PagedAttentionDecode(p, nullptr), "q must be 16-byte aligned");
  p = ValidDecodeParams();
  p.block_tables = nullptr;
  ExpectInvalid(PagedAttentionDecode(p, nullptr), "block_tables is null");
  p = ValidDecodeParams();
  p.geometry.head_dim = 96;
  EXPECT_EQ(PagedAttentionDecodeWorkspaceBytes(p), 0u);
}

TEST(PagedAttentionArgsTest, PrefillRejectsUnsupportedShapes) {
  PagedAttentionPrefillParams p = ValidPrefillParams();
  p.geometry.head_dim = 80;
  ExpectInvalid(PagedAttentionPrefill(p, nullptr), "head_dim 80");
  p = ValidPrefillParams();
  p.num_heads = 6;
  ExpectInvalid(PagedAttentionPrefill(p, nullptr), "multiple of num_kv_heads");
  p = ValidPrefillParams();
  p.geometry.block_size = 7;
  ExpectInvalid(PagedAttentionPrefill(p, nullptr), "block_size 7");
}

TEST(PagedAttentionArgsTest, WriteKvCacheRejectsUnalignedRows) {
  WriteKvCacheParams p;
  p.geometry.num_layers = 1;
  p.geometry.num_kv_heads = 2;
  p.geometry.head_dim = 6;  // 12 bytes of fp16: not a whole number of 16-byte packs
  p.geometry.block_size = 16;
  p.geometry.num_blocks = 4;
  p.geometry.dtype = KvDtype::kFloat16;
  p.num_tokens = 1;
  ExpectInvalid(WriteKvCache(p, nullptr), "head_dim 6");
}

TEST(PagedAttentionArgsTest, DecodeRejectsTooSmallWorkspace) {
  KVPOOL_SKIP_WITHOUT_GPU();
  PagedAttentionDecodeParams p = ValidDecodeParams();
  p.num_seqs = 1;
  p.max_context_len = 8000;
  p.max_blocks_per_seq = 500;
  ASSERT_GT(PagedAttentionDecodeWorkspaceBytes(p), 0u) << "batch 1, context 8000 should split";
  p.workspace = reinterpret_cast<void*>(uintptr_t{4096});
  p.workspace_bytes = 16;
  ExpectInvalid(PagedAttentionDecode(p, nullptr), "workspace of 16 bytes");
}

}  // namespace
}  // namespace kvpool::gpu
