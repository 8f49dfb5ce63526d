#include "engine/sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace kvpool {
namespace {

const std::vector<float> kLogits = {0.1f, 2.0f, -1.0f, 1.5f, 0.0f};

SamplingParams Params(double temperature, int32_t top_k, double top_p, uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  return p;
}

TEST(SamplerTest, GreedyIsArgmax) {
  std::mt19937_64 rng(0);
  EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), SamplingParams{}, rng), 1);
}

// The vectorized argmax gives std::max_element's index on every row: ties at the lowest
// index, the maximum anywhere (first, last, inside or at the end of a 256-value chunk),
// rows shorter than a vector, all -inf, and a row with a NaN.
TEST(SamplerTest, ArgmaxIsStdMaxElementsAnswer) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<float> value(-30.f, 30.f);
  auto expect_same = [](const std::vector<float>& row, const std::string& what) {
    const int64_t want = std::max_element(row.begin(), row.end()) - row.begin();
    EXPECT_EQ(ArgmaxLogit(row.data(), static_cast<int64_t>(row.size())), want) << what;
  };
  for (int64_t vocab : {1, 3, 15, 16, 17, 255, 256, 257, 1000, 50257}) {
    std::vector<float> row(static_cast<size_t>(vocab));
    for (float& x : row) x = value(rng);
    expect_same(row, "random, vocab " + std::to_string(vocab));
    for (int64_t at : {int64_t{0}, vocab / 2, vocab - 1, std::min<int64_t>(255, vocab - 1),
                       std::min<int64_t>(256, vocab - 1)}) {
      std::vector<float> peak = row;
      peak[at] = 100.f;
      expect_same(peak, "peak at " + std::to_string(at) + ", vocab " + std::to_string(vocab));
      // A tie with a later index: the lower one wins.
      if (at + 300 < vocab) {
        peak[at + 300] = 100.f;
        expect_same(peak, "tie at " + std::to_string(at) + " and " + std::to_string(at + 300));
      }
    }
  }
  expect_same(std::vector<float>(50257, -std::numeric_limits<float>::infinity()), "all -inf");
  std::vector<float> quantized(50257);
  for (size_t i = 0; i < quantized.size(); ++i) quantized[i] = static_cast<float>(i % 7);
  expect_same(quantized, "many ties");
  std::vector<float> nan_row(1000, 0.f);
  nan_row[3] = 5.f;
  nan_row[10] = std::nanf("");
  expect_same(nan_row, "a NaN inside");
  nan_row[0] = std::nanf("");
  expect_same(nan_row, "a NaN first");
  // A NaN in the lane of the largest value, after it, then smaller values in that lane.
  std::vector<float> lane(1000, 0.f);
  lane[3] = 5.f;
  lane[19] = std::nanf("");
  expect_same(lane, "a NaN after the largest, 16 apart");
}

TEST(SamplerTest, TopKOneAndTinyTopPAreGreedy) {
  std::mt19937_64 rng(7);
  SamplingParams top_k = Params(1.0, 1, 1.0, 0);
  SamplingParams top_p = Params(1.0, 0, 1e-6, 0);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), top_k, rng), 1);
    EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), top_p, rng), 1);
  }
}

TEST(SamplerTest, SameSeedSameDraws) {
  SamplingParams p = Params(0.9, 0, 1.0, 99);
  std::mt19937_64 a(p.seed), b(p.seed);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), p, a),
              SampleToken(kLogits.data(), kLogits.size(), p, b));
  }
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  SamplingParams p = Params(1.0, 0, 1.0, 5);
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
  SamplingParams p = Params(1.0, 0, 0.7, 3);
  std::mt19937_64 rng(p.seed);
  for (int i = 0; i < 2000; ++i) {
    const int t = SampleToken(kLogits.data(), kLogits.size(), p, rng);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
}

TEST(SamplerTest, RejectsBadParameters) {
  EXPECT_EQ(Params(-0.1, 0, 1.0, 0).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Params(std::nan(""), 0, 1.0, 0).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Params(1.0, 0, 0.0, 0).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Params(1.0, 0, 1.5, 0).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Params(1.0, -1, 1.0, 0).Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Params(0.7, 50, 0.9, 0).Validate().ok());
}

// vLLM's order and arithmetic: repetition divides a positive logit (multiplies a
// negative one) of every token seen in prompt or output; frequency and presence come
// off the generated ones; banned ids are never drawn.
TEST(SamplerTest, PenaltiesAndBansChangeTheChoice) {
  std::mt19937_64 rng(0);
  const std::vector<int32_t> tokens = {3, 1, 1};  // prompt [3], generated [1, 1]
  SampleContext context;
  context.tokens = &tokens;
  context.first_generated = 1;
  SamplingParams p;  // greedy: token 1 (2.0) without penalties
  EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), p, rng, &context), 1);
  p.frequency_penalty = 0.8;  // token 1: 2.0 - 1.6 = 0.4 < token 3's 1.5
  EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), p, rng, &context), 3);
  p.frequency_penalty = 0;
  p.presence_penalty = 0.6;  // 1.4 < 1.5
  EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), p, rng, &context), 3);
  p.presence_penalty = 0;
  p.repetition_penalty = 2.0;  // token 1: 1.0, token 3 (prompt): 0.75, token 0: 0.1
  EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), p, rng, &context), 1);
  p.frequency_penalty = 0.6;  // token 1: 1.0 - 1.2 = -0.2: token 3 wins at 0.75
  EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), p, rng, &context), 3);
  SamplingParams plain;
  SampleContext banned;
  banned.banned = {1, 3};
  EXPECT_EQ(SampleToken(kLogits.data(), kLogits.size(), plain, rng, &banned), 0);
}

TEST(SamplerTest, MinPKeepsTokensNearTheTopOnly) {
  // At T=1: token1 .47, token3 .29, token0 .08: min_p 0.5 keeps p >= .235: 1 and 3.
  SamplingParams p = Params(1.0, 0, 1.0, 11);
  p.min_p = 0.5;
  std::mt19937_64 rng(p.seed);
  std::map<int, int> counts;
  for (int i = 0; i < 4000; ++i) ++counts[SampleToken(kLogits.data(), kLogits.size(), p, rng)];
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], counts[3]);
  EXPECT_GT(counts[3], 0);
}

TEST(SamplerTest, RejectsBadPenalties) {
  SamplingParams p;
  p.min_p = 1.5;
  EXPECT_THAT(p.Validate("x.").message(), ::testing::HasSubstr("x.min_p"));
  p = SamplingParams();
  p.presence_penalty = 3;
  EXPECT_THAT(p.Validate().message(), ::testing::HasSubstr("presence_penalty"));
  p = SamplingParams();
  p.frequency_penalty = -2.5;
  EXPECT_THAT(p.Validate().message(), ::testing::HasSubstr("frequency_penalty"));
  p = SamplingParams();
  p.repetition_penalty = 0;
  EXPECT_THAT(p.Validate().message(), ::testing::HasSubstr("repetition_penalty"));
  p.repetition_penalty = 1.2;
  EXPECT_TRUE(p.Validate().ok());
}

}  // namespace
}  // namespace kvpool
