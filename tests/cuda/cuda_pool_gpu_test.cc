// The manager's CudaPoolHost and the worker's CudaPoolAttachment across two processes.
// The parent hosts a pool and
// writes a pattern; it re-executes this test binary (/proc/self/exe: a fork without
// exec is not allowed with CUDA) running only CudaPoolIpcChild.AttachVerifyWrite, with
// the hex IPC handle and GPU UUID in KVPOOL_IPC_CHILD. The child attaches, checks the
// pattern, writes a second one into another block and exits 0; the parent then checks
// the second pattern. Also: handle hex round trip, region pointers, unknown UUIDs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "cache_service/cuda_pool_host.h"
#include "cuda/cuda_pool.h"
#include "gpu_test_util.h"

extern char** environ;

namespace kvpool::gpu {
namespace {

using ::testing::HasSubstr;

constexpr char kChildEnv[] = "KVPOOL_IPC_CHILD";

PoolGeometry SmallGeometry() {
  PoolGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 2;
  g.head_dim = 64;
  g.block_size = 16;
  g.num_blocks = 8;
  g.dtype = KvDtype::kFloat16;
  return g;
}

// The parent's pattern lives in layer 0 K, block 1; the child's in layer 1 V, block 5.
size_t BlockByteOffset(const PoolGeometry& g, int32_t layer, KvPart part, int64_t block) {
  return g.slot_offset(layer, part, block, 0) * KvDtypeBytes(g.dtype);
}
size_t BlockBytes(const PoolGeometry& g) { return g.block_elems() * KvDtypeBytes(g.dtype); }
std::vector<uint8_t> Pattern(size_t n, int seed) {
  std::vector<uint8_t> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(i * 7 + seed);
  return bytes;
}

// Index of the first differing byte, or -1.
int64_t FirstMismatch(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

TEST(CudaPoolTest, IpcHandleHexRoundTrip) {
  IpcHandleBytes handle{};
  for (size_t i = 0; i < handle.size(); ++i) handle[i] = static_cast<uint8_t>(i * 37 + 1);
  const std::string hex = IpcHandleToHex(handle);
  EXPECT_EQ(hex.size(), 128u);
  StatusOr<IpcHandleBytes> back = IpcHandleFromHex(hex);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, handle);
  EXPECT_FALSE(IpcHandleFromHex("abc").ok());
  EXPECT_FALSE(IpcHandleFromHex(std::string(128, 'z')).ok());
}

TEST(CudaPoolTest, RegionPointerFollowsTheLayout) {
  const PoolGeometry g = SmallGeometry();
  char* base = reinterpret_cast<char*>(uintptr_t{1} << 20);
  EXPECT_EQ(RegionPointer(base, g, 0, KvPart::kKey), base);
  EXPECT_EQ(static_cast<char*>(RegionPointer(base, g, 1, KvPart::kValue)) - base,
            static_cast<ptrdiff_t>(3 * g.region_bytes()));
}

TEST(CudaPoolTest, AttachToUnknownUuidFailsWithNotFound) {
  const std::string uuid = "GPU-00000000-0000-0000-0000-000000000000";
  StatusOr<CudaPoolAttachment> attachment =
      CudaPoolAttachment::Open(IpcHandleBytes{}, uuid, SmallGeometry());
  ASSERT_FALSE(attachment.ok());
  EXPECT_EQ(attachment.status().code(), StatusCode::kNotFound) << attachment.status().message();
  EXPECT_THAT(attachment.status().message(), HasSubstr(uuid));
}

TEST(CudaPoolTest, HostExposesUuidAndZeroedPool) {
  KVPOOL_SKIP_WITHOUT_GPU();
  StatusOr<manager::CudaPoolHost> host = manager::CudaPoolHost::Create(0, SmallGeometry());
  ASSERT_TRUE(host.ok()) << host.status().message();
  EXPECT_THAT(host->gpu_uuid(), ::testing::MatchesRegex("GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                                        "[0-9a-f]{4}-[0-9a-f]{12}"));
  StatusOr<int> found = FindDeviceByUuid(host->gpu_uuid());
  ASSERT_TRUE(found.ok()) << found.status().message();
  EXPECT_EQ(*found, 0);
  std::vector<uint8_t> bytes(host->pool_bytes(), 0xAB);
  KVPOOL_CUDA_ASSERT(cudaMemcpy(bytes.data(), host->base(), bytes.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(FirstMismatch(bytes, std::vector<uint8_t>(bytes.size(), 0)), -1);
  manager::CudaPoolHost moved = std::move(host).value();  // move-only ownership transfer
  EXPECT_NE(moved.base(), nullptr);
}

TEST(CudaPoolIpcTest, ChildProcessAttachesReadsAndWrites) {
  KVPOOL_SKIP_WITHOUT_GPU();
  if (std::getenv(kChildEnv) != nullptr) GTEST_SKIP() << "parent side only";
  const PoolGeometry g = SmallGeometry();
  StatusOr<manager::CudaPoolHost> host = manager::CudaPoolHost::Create(0, g);
  ASSERT_TRUE(host.ok()) << host.status().message();
  const std::vector<uint8_t> parent_pattern = Pattern(BlockBytes(g), 3);
  char* base = static_cast<char*>(host->base());
  KVPOOL_CUDA_ASSERT(cudaMemcpy(base + BlockByteOffset(g, 0, KvPart::kKey, 1),
                                parent_pattern.data(), parent_pattern.size(),
                                cudaMemcpyHostToDevice));
  KVPOOL_CUDA_ASSERT(cudaDeviceSynchronize());

  const std::string env =
      std::string(kChildEnv) + "=" + IpcHandleToHex(host->ipc_handle()) + ":" + host->gpu_uuid();
  std::vector<std::string> env_strings = {env};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind(std::string(kChildEnv) + "=", 0) != 0) env_strings.push_back(*e);
  }
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string arg0 = "kvpool_cuda_pool_test(child)";
  std::string arg1 = "--gtest_filter=CudaPoolIpcChild.AttachVerifyWrite";
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()), 0)
      << "posix_spawn of /proc/self/exe failed";
  int wait_status = 0;
  ASSERT_EQ(waitpid(pid, &wait_status, 0), pid);
  ASSERT_TRUE(WIFEXITED(wait_status))
      << "child did not exit normally (signal "
      << (WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0) << ")";
  ASSERT_EQ(WEXITSTATUS(wait_status), 0) << "the child test failed: see its output above";

  std::vector<uint8_t> got(BlockBytes(g));
  KVPOOL_CUDA_ASSERT(cudaMemcpy(got.data(), base + BlockByteOffset(g, 1, KvPart::kValue, 5),
                                got.size(), cudaMemcpyDeviceToHost));
  const int64_t bad = FirstMismatch(got, Pattern(BlockBytes(g), 11));
  EXPECT_EQ(bad, -1) << "child's pattern wrong at byte " << bad << " of layer 1 V block 5 "
                     << "(did the child run? it prints 'CHILD OK')";
  KVPOOL_CUDA_ASSERT(cudaMemcpy(got.data(), base + BlockByteOffset(g, 0, KvPart::kKey, 1),
                                got.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(FirstMismatch(got, parent_pattern), -1) << "parent's pattern changed";
}

// Runs only in the process the test above starts.
TEST(CudaPoolIpcChild, AttachVerifyWrite) {
  const char* spec = std::getenv(kChildEnv);
  if (spec == nullptr) GTEST_SKIP() << "runs only as the child of CudaPoolIpcTest";
  const std::string text(spec);
  const size_t colon = text.find(':');
  ASSERT_NE(colon, std::string::npos) << kChildEnv << " must be HEX:UUID, got " << text;
  StatusOr<IpcHandleBytes> handle = IpcHandleFromHex(text.substr(0, colon));
  ASSERT_TRUE(handle.ok()) << handle.status().message();
  const PoolGeometry g = SmallGeometry();
  StatusOr<CudaPoolAttachment> attachment =
      CudaPoolAttachment::Open(*handle, text.substr(colon + 1), g);
  ASSERT_TRUE(attachment.ok()) << attachment.status().message();
  char* base = static_cast<char*>(attachment->base());
  ASSERT_NE(base, nullptr);

  std::vector<uint8_t> got(BlockBytes(g));
  KVPOOL_CUDA_ASSERT(cudaMemcpy(got.data(), base + BlockByteOffset(g, 0, KvPart::kKey, 1),
                                got.size(), cudaMemcpyDeviceToHost));
  const int64_t bad = FirstMismatch(got, Pattern(BlockBytes(g), 3));
  ASSERT_EQ(bad, -1) << "child read a wrong byte " << bad << " of the parent's pattern";
  // The rest of the pool is still zero (the host zeroes it).
  std::vector<uint8_t> other(BlockBytes(g));
  KVPOOL_CUDA_ASSERT(cudaMemcpy(other.data(), base + BlockByteOffset(g, 0, KvPart::kKey, 2),
                                other.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(FirstMismatch(other, std::vector<uint8_t>(other.size(), 0)), -1);

  const std::vector<uint8_t> child_pattern = Pattern(BlockBytes(g), 11);
  KVPOOL_CUDA_ASSERT(cudaMemcpy(base + BlockByteOffset(g, 1, KvPart::kValue, 5),
                                child_pattern.data(), child_pattern.size(),
                                cudaMemcpyHostToDevice));
  KVPOOL_CUDA_ASSERT(cudaDeviceSynchronize());
  std::cout << "CHILD OK: attached to " << text.substr(colon + 1) << " as device "
            << attachment->device() << "\n";
}

}  // namespace
}  // namespace kvpool::gpu
