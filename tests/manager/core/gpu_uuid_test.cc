// The GPU UUID text both sides of the CUDA pool compare (common/gpu_uuid.h).
#include "common/gpu_uuid.h"

#include <gtest/gtest.h>

namespace kvpool {
namespace {

TEST(GpuUuidTest, FormatsLikeNvidiaSmi) {
  const unsigned char bytes[16] = {0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71,
                                   0x82, 0x93, 0xa4, 0xb5, 0xc6, 0xd7, 0xe8, 0xf9};
  EXPECT_EQ(FormatGpuUuid(bytes), "GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9");
}

}  // namespace
}  // namespace kvpool
