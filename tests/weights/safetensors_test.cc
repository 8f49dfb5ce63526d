// The safetensors reader and writer: hand-built bytes, round trips per dtype, and
// corrupt files (bad JSON, bad lengths, truncation, overlaps, gaps, random byte
// flips), each failing with the right code and a message naming the file.
#include "weights/safetensors.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "weights/safetensors_aten.h"
#include "weights_test_files.h"

namespace kvpool {
namespace weights_test {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Bytes of a safetensors file with `header` (padded to 8 with spaces) and `data`.
std::string FileBytes(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  const uint64_t n = header.size();
  std::string bytes(reinterpret_cast<const char*>(&n), 8);
  return bytes + header + data;
}

using SafetensorsTest = TempDirTest;

TEST_F(SafetensorsTest, ReadsHandBuiltFile) {
  const fs::path path = dir_ / "hand.safetensors";
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},)"
                             R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const int64_t i64 = -5;
  WriteBytes(path, FileBytes(header, FloatBytes({1.5f, -2.0f}) +
                                         std::string(reinterpret_cast<const char*>(&i64), 8)));

  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_THAT(file->TensorNames(), ElementsAre("a", "b"));
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->metadata().size(), 1u);

  StatusOr<TensorView> a = file->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->dtype, SafetensorsDType::kF32);
  EXPECT_THAT(a->shape, ElementsAre(2));
  EXPECT_EQ(a->byte_size, 8);
  float values[2];
  std::memcpy(values, a->data, 8);
  EXPECT_EQ(values[0], 1.5f);
  EXPECT_EQ(values[1], -2.0f);

  StatusOr<TensorView> b = file->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dtype, SafetensorsDType::kI64);
  int64_t got = 0;
  std::memcpy(&got, b->data, 8);
  EXPECT_EQ(got, -5);

  StatusOr<TensorView> missing = file->Get("c");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("'c'"));

  // Moving keeps the mapping valid.
  SafetensorsFile moved = std::move(file).value();
  EXPECT_TRUE(moved.Get("a").ok());
}

TEST_F(SafetensorsTest, WriterRoundTripsEveryFloatDtype) {
  const fs::path path = dir_ / "rt.safetensors";
  const at::Tensor source = at::arange(0, 24, at::kFloat).reshape({2, 3, 4}) * 0.37 - 3.1;
  std::vector<at::Tensor> keep;
  std::vector<NamedBuffer> buffers;
  for (auto [name, dtype] : std::vector<std::pair<const char*, at::ScalarType>>{
           {"z_f32", at::kFloat}, {"a_f16", at::kHalf}, {"m_bf16", at::kBFloat16}}) {
    keep.push_back(source.to(dtype).contiguous());
    buffers.push_back(BufferFromTensor(name, keep.back()).value());
  }
  ASSERT_TRUE(WriteSafetensors(path.string(), buffers, {{"format", "pt"}}).ok());

  const std::string bytes = ReadBytes(path);
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes.data(), 8);
  EXPECT_EQ(header_bytes % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(bytes.size(), 8 + header_bytes + 24 * (4 + 2 + 2));

  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_THAT(file->TensorNames(), ElementsAre("a_f16", "m_bf16", "z_f32"));
  EXPECT_EQ(file->Get("a_f16")->dtype, SafetensorsDType::kF16);
  EXPECT_EQ(file->Get("m_bf16")->dtype, SafetensorsDType::kBF16);
  EXPECT_EQ(file->Get("z_f32")->dtype, SafetensorsDType::kF32);
  for (size_t i = 0; i < buffers.size(); ++i) {
    SCOPED_TRACE(buffers[i].name);
    TensorView view = file->Get(buffers[i].name).value();
    EXPECT_THAT(view.shape, ElementsAre(2, 3, 4));
    at::Tensor back = FloatTensorFromView(view).value();
    EXPECT_TRUE(at::equal(back, keep[i].to(at::kFloat)));
  }
}

TEST_F(SafetensorsTest, BadJsonIsDataLoss) {
  const fs::path path = dir_ / "badjson.safetensors";
  WriteBytes(path, FileBytes(R"({"a":{"dtype":"F32",)", FloatBytes({1})));
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  EXPECT_THAT(file.status().message(), HasSubstr("JSON"));
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFileIsDataLoss) {
  const fs::path path = dir_ / "longheader.safetensors";
  std::string bytes =
      FileBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", FloatBytes({1}));
  const uint64_t huge = bytes.size();  // 8 + header + data > file size
  std::memcpy(bytes.data(), &huge, 8);
  WriteBytes(path, bytes);
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  EXPECT_THAT(file.status().message(), HasSubstr("header length"));

  const uint64_t absurd = ~uint64_t{0};
  std::memcpy(bytes.data(), &absurd, 8);
  WriteBytes(path, bytes);
  EXPECT_EQ(SafetensorsFile::Open(path.string()).status().code(), StatusCode::kDataLoss);
}

TEST_F(SafetensorsTest, ShortOrMissingFile) {
  const fs::path path = dir_ / "short.safetensors";
  WriteBytes(path, "abc");
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));

  const fs::path missing = dir_ / "nope.safetensors";
  file = SafetensorsFile::Open(missing.string());
  EXPECT_EQ(file.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr(missing.string()));
}

TEST_F(SafetensorsTest, TruncatedDataIsDataLossNamingTheTensor) {
  const fs::path path = dir_ / "truncated.safetensors";
  std::string bytes = FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("big":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                FloatBytes({1, 2, 3, 4}));
  bytes.resize(bytes.size() - 3);
  WriteBytes(path, bytes);
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  EXPECT_THAT(file.status().message(), HasSubstr("'big'"));
  EXPECT_THAT(file.status().message(), HasSubstr("truncated"));
}

TEST_F(SafetensorsTest, OffsetsNotMatchingShapeIsDataLoss) {
  const fs::path path = dir_ / "mismatch.safetensors";
  WriteBytes(path, FileBytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                             FloatBytes({1, 2, 3})));
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  EXPECT_THAT(file.status().message(), HasSubstr("'w'"));
  EXPECT_THAT(file.status().message(), HasSubstr("needs 12"));
}

TEST_F(SafetensorsTest, OverlappingTensorsAreDataLoss) {
  const fs::path path = dir_ / "overlap.safetensors";
  WriteBytes(path, FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                             FloatBytes({1, 2, 3})));
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr("'b' overlaps tensor 'a'"));
}

TEST_F(SafetensorsTest, GapsAndTrailingBytesAreDataLoss) {
  const fs::path path = dir_ / "gap.safetensors";
  WriteBytes(path, FileBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                             FloatBytes({1, 2, 3})));
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr("tensor 'b' starts at data byte 8"));

  WriteBytes(path, FileBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                             FloatBytes({1, 2})));
  file = SafetensorsFile::Open(path.string());
  EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  EXPECT_THAT(file.status().message(), HasSubstr("4 bytes after the last tensor"));
}

TEST_F(SafetensorsTest, UnknownDtypeIsInvalidArgument) {
  const fs::path path = dir_ / "dtype.safetensors";
  WriteBytes(path, FileBytes(R"({"q":{"dtype":"F8_E9M9","shape":[4],"data_offsets":[0,4]}})",
                             FloatBytes({1})));
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  EXPECT_THAT(file.status().message(), HasSubstr("'q'"));
  EXPECT_THAT(file.status().message(), HasSubstr("F8_E9M9"));
}

TEST_F(SafetensorsTest, MalformedEntriesAreDataLoss) {
  const fs::path path = dir_ / "malformed.safetensors";
  for (const char* header :
       {R"([1, 2])", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})",
        R"({"a":{"dtype":"F32","shape":[1]}})", R"({"__metadata__":{"format":3}})",
        R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})"}) {
    SCOPED_TRACE(header);
    WriteBytes(path, FileBytes(header, FloatBytes({1})));
    StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
    EXPECT_EQ(file.status().code(), StatusCode::kDataLoss);
    EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  }
}

TEST_F(SafetensorsTest, EveryTruncationAndByteFlipFailsCleanly) {
  const fs::path good = dir_ / "good.safetensors";
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const uint16_t b[3] = {1, 2, 3};
  ASSERT_TRUE(WriteSafetensors(good.string(),
                               {{"a", SafetensorsDType::kF32, {2, 3}, a.data()},
                                {"b", SafetensorsDType::kF16, {3}, b}},
                               {{"format", "pt"}})
                  .ok());
  const std::string bytes = ReadBytes(good);
  const fs::path path = dir_ / "bad.safetensors";
  for (size_t n = 0; n < bytes.size(); ++n) {
    SCOPED_TRACE(n);
    WriteBytes(path, bytes.substr(0, n));
    EXPECT_EQ(SafetensorsFile::Open(path.string()).status().code(), StatusCode::kDataLoss);
  }
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string corrupt = bytes;
    corrupt[rng() % corrupt.size()] = static_cast<char>(rng() % 256);
    WriteBytes(path, corrupt);
    StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
    if (!file.ok()) {
      EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
      continue;
    }
    for (const std::string& name : file->TensorNames()) {  // every view must be readable
      TensorView view = file->Get(name).value();
      EXPECT_EQ(view.byte_size, view.NumElements() * SafetensorsDTypeBytes(view.dtype));
      std::string copy(static_cast<const char*>(view.data), view.byte_size);
    }
  }
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateNames) {
  const float x = 1;
  const Status s = WriteSafetensors(
      (dir_ / "dup.safetensors").string(),
      {{"a", SafetensorsDType::kF32, {1}, &x}, {"a", SafetensorsDType::kF32, {1}, &x}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'a'"));
}

}  // namespace
}  // namespace weights_test
}  // namespace kvpool
