// The arithmetic behind `kvpool calc` (client/cli/kv_memory.h), against hand-computed
// values and against ModelConfig::KvBytesPerToken for every built-in shape.
#include "client/cli/kv_memory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/model_config.h"

namespace kvpool::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kGiB = int64_t{1} << 30;

TEST(KvMemoryTest, DtypeBits) {
  EXPECT_EQ(*KvDtypeBits("fp32"), 32);
  EXPECT_EQ(*KvDtypeBits("fp16"), 16);
  EXPECT_EQ(*KvDtypeBits("bf16"), 16);
  EXPECT_EQ(*KvDtypeBits("fp8"), 8);
  EXPECT_EQ(*KvDtypeBits("int8"), 8);
  EXPECT_EQ(*KvDtypeBits("int4"), 4);
  const Status bad = KvDtypeBits("fp7").status();
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("'fp7'"));
}

TEST(KvMemoryTest, Llama7bIsTwoGibPerFp16SequenceOf4096) {
  const ModelConfig llama = BuiltinModelConfig("llama-7b").value();
  const int64_t per_token = KvBytesPerToken(llama, 16).value();
  EXPECT_EQ(per_token, 2 * 32 * 32 * 128 * 2);
  EXPECT_EQ(*KvBytes(per_token, 4096, 1), 2 * kGiB);
  EXPECT_EQ(*KvBytes(per_token, 4096, 32), 64 * kGiB);
}

TEST(KvMemoryTest, WholeByteDtypesAgreeWithModelConfig) {
  for (const std::string& name : BuiltinModelNames()) {
    const ModelConfig c = BuiltinModelConfig(name).value();
    for (int64_t bytes : {1, 2, 4}) {
      EXPECT_EQ(*KvBytesPerToken(c, 8 * bytes), c.KvBytesPerToken(bytes)) << name << " " << bytes;
    }
  }
}

TEST(KvMemoryTest, Int4IsExactEvenForASingleElementPair) {
  ModelConfig one;
  one.name = "one";
  one.num_layers = one.num_kv_heads = one.head_dim = 1;
  EXPECT_EQ(*KvBytesPerToken(one, 4), 1);  // K and V: two half bytes
  const ModelConfig gpt2 = BuiltinModelConfig("gpt2").value();
  EXPECT_EQ(*KvBytesPerToken(gpt2, 4) * 4, *KvBytesPerToken(gpt2, 16));
}

TEST(KvMemoryTest, OverflowIsOutOfRange) {
  EXPECT_EQ(KvBytes(int64_t{1} << 40, int64_t{1} << 20, 1 << 10).status().code(),
            StatusCode::kOutOfRange);
  ModelConfig huge;
  huge.num_layers = huge.num_kv_heads = huge.head_dim = int64_t{1} << 20;
  EXPECT_EQ(KvBytesPerToken(huge, 32).status().code(), StatusCode::kOutOfRange);
}

TEST(KvMemoryTest, AttentionKind) {
  EXPECT_EQ(AttentionKind(32, 32), "MHA");
  EXPECT_EQ(AttentionKind(64, 8), "GQA");
  EXPECT_EQ(AttentionKind(32, 1), "MQA");
}

TEST(KvMemoryTest, DefaultSeqLensFollowTheContext) {
  EXPECT_THAT(DefaultSeqLens(4096), ElementsAre(512, 1024, 2048, 4096));
  EXPECT_THAT(DefaultSeqLens(1024), ElementsAre(512, 1024));
  EXPECT_THAT(DefaultSeqLens(40960), ElementsAre(512, 1024, 2048, 4096, 8192, 16384, 32768, 40960));
  EXPECT_THAT(DefaultSeqLens(256), ElementsAre(256));
  EXPECT_THAT(DefaultSeqLens(0), ElementsAre(512, 1024, 2048, 4096));
}

TEST(KvMemoryTest, ParseByteSize) {
  EXPECT_EQ(*ParseByteSize("24GiB"), 24 * kGiB);
  EXPECT_EQ(*ParseByteSize("24gib"), 24 * kGiB);
  EXPECT_EQ(*ParseByteSize("2G"), 2 * kGiB);
  EXPECT_EQ(*ParseByteSize("80GB"), int64_t{80'000'000'000});
  EXPECT_EQ(*ParseByteSize("512 MiB"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("1.5GiB"), 3 * kGiB / 2);
  EXPECT_EQ(*ParseByteSize("1048576"), int64_t{1} << 20);
  EXPECT_EQ(*ParseByteSize("4096B"), 4096);
  EXPECT_EQ(*ParseByteSize("1TB"), int64_t{1'000'000'000'000});
  for (const char* bad : {"", "0", "GiB", "1.2.3GiB", "12XB", "-1GiB", "99999999999TiB"}) {
    const Status status = ParseByteSize(bad).status();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("--memory")) << bad;
  }
}

TEST(KvMemoryTest, FormatBytes) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(768), "768 B");
  EXPECT_EQ(FormatBytes(1024), "1 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
  EXPECT_EQ(FormatBytes(2 * kGiB), "2 GiB");
  EXPECT_EQ(FormatBytes(5 * kGiB / 4), "1.25 GiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 40), "3 TiB");
}

TEST(KvMemoryTest, KvShapeFromHfJsonNeedsTheAttentionKeys) {
  const Status status = KvShapeFromHfJson(R"({"model_type": "mamba"})", "m").status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("no attention shape"));
  const ModelConfig mistral = KvShapeFromHfJson(R"({"model_type": "mistral",
      "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
      "num_key_value_heads": 8, "max_position_embeddings": 32768})",
                                                "mistral")
                                  .value();
  EXPECT_FALSE(mistral.runnable);
  EXPECT_EQ(mistral.num_kv_heads, 8);
  EXPECT_EQ(mistral.head_dim, 128);
  EXPECT_EQ(mistral.max_position, 32768);
}

}  // namespace
}  // namespace kvpool::cli
