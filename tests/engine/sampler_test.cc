#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

namespace kvpool {
namespace {

const std::vector<float> kLogits = {0.1f, 2.0f, -1.0f, 1.5f, 0.0f};

TEST(SamplerTest, GreedyIsArgmax) {
  std::mt19937_64 rng(0);
  EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), SamplingParams{}, rng), 1);
}

TEST(SamplerTest, TopKOneAndTinyTopPAreGreedy) {
  std::mt19937_64 rng(7);
  SamplingParams top_k{1.0, 1, 1.0, 0};
  SamplingParams top_p{1.0, 0, 1e-6, 0};
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), top_k, rng), 1);
    EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), top_p, rng), 1);
  }
}

TEST(SamplerTest, SameSeedSameDraws) {
  SamplingParams p{0.9, 0, 1.0, 99};
  std::mt19937_64 a(p.seed), b(p.seed);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), p, a),
              SampleToken(kLogits.data(), kLogits.size(), p, b));
  }
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  SamplingParams p{1.0, 0, 1.0, 5};
  std::mt19937_64 rng(p.seed);
  constexpr int kDraws = 200000;
  std::map<int, int> counts;
  for (int i = 0; i < kDraws; ++i) ++counts[SampleToken(kLogits.data(), kLogits.size(), p, rng)];
  double z = 0;
  for (float l : kLogits) z += std::exp(l);
  for (size_t i = 0; i < kLogits.size(); ++i) {
    const double want = std::exp(kLogits[i]) / z;
    EXPECT_NEAR(counts[i] / double{kDraws}, want, 0.005) << "token " << i;
  }
}

TEST(SamplerTest, TopPKeepsTheNucleusOnly) {
  // Probabilities at T=1: token1 .47, token3 .29, token0 .08, token4 .07, token2 .03.
  SamplingParams p{1.0, 0, 0.7, 3};
  std::mt19937_64 rng(p.seed);
  for (int i = 0; i < 2000; ++i) {
    const int t = SampleToken(kLogits.data(), kLogits.size(), p, rng);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
}

TEST(SamplerTest, RejectsBadParameters) {
  EXPECT_EQ(SamplingParams({-0.1, 0, 1.0, 0}).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SamplingParams({std::nan(""), 0, 1.0, 0}).Validate().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(SamplingParams({1.0, 0, 0.0, 0}).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SamplingParams({1.0, 0, 1.5, 0}).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SamplingParams({1.0, -1, 1.0, 0}).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(SamplingParams({0.7, 50, 0.9, 0}).Validate().ok());
}

}  // namespace
}  // namespace kvpool
