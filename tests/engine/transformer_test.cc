// TransformerForward's contract with its backends, seen through a backend of plain ATen
// ops that records what it is asked: in the last layer only the logit rows go past the
// attention (every token's K/V is still written there), and the logits are those of
// the full forward.
#include "engine/transformer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/model_config.h"
#include "weights/weights.h"

namespace kvpool {
namespace {

// One sequence from position 0, all of it in the batch: attention is causal
// self-attention over the batch's own q, k and v.
class RecordingBackend : public ForwardBackend {
 public:
  explicit RecordingBackend(const ModelConfig& c) : c_(c) {}

  at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                    const at::Tensor& residual, bool gelu_tanh) override {
    linear_rows.push_back(x.size(0));
    at::Tensor y = at::linear(x, w, b.defined() ? b : at::Tensor());
    if (gelu_tanh) y = at::gelu(y, "tanh");
    return residual.defined() ? residual + y : y;
  }

  at::Tensor Attention(int32_t layer, const at::Tensor& qkv) override {
    attention_layers.push_back(layer);
    kv_rows_written.push_back(qkv.size(0));
    return Attend(qkv);
  }

  at::Tensor AttentionRows(int32_t layer, const at::Tensor& qkv, const at::Tensor& rows) override {
    rows_layers.push_back(layer);
    kv_rows_written.push_back(qkv.size(0));
    selected_rows.push_back(rows.size(0));
    return Attend(qkv).index_select(0, rows);
  }

  std::vector<int64_t> linear_rows, kv_rows_written, selected_rows;
  std::vector<int32_t> attention_layers, rows_layers;

 private:
  at::Tensor Attend(const at::Tensor& qkv) const {
    const int64_t t = qkv.size(0), h = c_.num_heads, d = c_.head_dim;
    auto split = qkv.split(h * d, 1);
    auto heads = [&](const at::Tensor& x) { return x.reshape({t, h, d}).transpose(0, 1); };
    const at::Tensor q = heads(split[0]), k = heads(split[1]), v = heads(split[2]);
    at::Tensor scores = at::matmul(q, k.transpose(1, 2)) / std::sqrt(static_cast<double>(d));
    const at::Tensor future = at::ones({t, t}, at::kBool).triu(1);
    scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
    return at::matmul(scores.softmax(-1), v).transpose(0, 1).reshape({t, h * d});
  }

  const ModelConfig& c_;
};

class TransformerTest : public ::testing::Test {
 protected:
  TransformerTest()
      : config_(BuiltinModelConfig("tiny-gpt2").value()), weights_(RandomWeights(config_, 7)) {}

  at::Tensor Forward(RecordingBackend& backend, int64_t tokens, std::vector<int64_t> rows) const {
    const at::Tensor ids = at::arange(tokens, at::kLong) * 97 + 5;
    const at::Tensor positions = at::arange(tokens, at::kLong);
    const at::Tensor logit_rows =
        at::tensor(rows, at::kLong).reshape({static_cast<int64_t>(rows.size())});
    return TransformerForward(config_, weights_, backend, ids, positions, logit_rows);
  }

  ModelConfig config_;
  ModelWeights weights_;
};

TEST_F(TransformerTest, TheLastLayerCarriesOnlyTheLogitRowsPastItsAttention) {
  ASSERT_EQ(config_.num_layers, 2);
  RecordingBackend selected(config_), everything(config_);
  const at::Tensor some = Forward(selected, 9, {3, 8});
  const at::Tensor all = Forward(everything, 9, {0, 1, 2, 3, 4, 5, 6, 7, 8});

  // Layer 0 as usual; layer 1 writes all 9 tokens' K/V and attends for 2.
  EXPECT_EQ(selected.attention_layers, std::vector<int32_t>({0}));
  EXPECT_EQ(selected.rows_layers, std::vector<int32_t>({1}));
  EXPECT_EQ(selected.kv_rows_written, std::vector<int64_t>({9, 9}));
  EXPECT_EQ(selected.selected_rows, std::vector<int64_t>({2}));
  // Per layer qkv, o, up, down; then the head.
  EXPECT_EQ(selected.linear_rows, std::vector<int64_t>({9, 9, 9, 9, 9, 2, 2, 2, 2}));
  // Every row asked for: no selection, every layer whole.
  EXPECT_EQ(everything.attention_layers, std::vector<int32_t>({0, 1}));
  EXPECT_TRUE(everything.rows_layers.empty());
  EXPECT_EQ(everything.linear_rows, std::vector<int64_t>(9, 9));

  ASSERT_EQ(some.sizes(), at::IntArrayRef({2, config_.vocab_size}));
  const at::Tensor expected = all.index_select(0, at::tensor(std::vector<int64_t>{3, 8}));
  EXPECT_LT((some - expected).abs().max().item<float>(), 1e-5f)
      << "the selected rows' logits differ from the full forward's";
}

TEST_F(TransformerTest, AChunkWithoutLogitsStopsAfterTheLastLayersKvWrite) {
  RecordingBackend backend(config_);
  const at::Tensor logits = Forward(backend, 5, {});
  EXPECT_EQ(logits.sizes(), at::IntArrayRef({0, config_.vocab_size}));
  EXPECT_EQ(backend.kv_rows_written, std::vector<int64_t>({5, 5}));
  EXPECT_EQ(backend.selected_rows, std::vector<int64_t>({0}));
  EXPECT_EQ(backend.linear_rows, std::vector<int64_t>({5, 5, 5, 5, 5, 0, 0, 0, 0}));
}

}  // namespace
}  // namespace kvpool
