// PoolHost: POSIX shared-memory pool creation, naming, cleanup of stale segments.
// See pool_host.h for what it owns.
#include "cache_service/pool_host.h"

#if KVPOOL_MANAGER_HAVE_CUDA
#include "cache_service/cuda_pool_host.h"
#endif

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <utility>

namespace kvpool::manager {
namespace {

constexpr char kShmPrefix[] = "kvpool-";

std::string ErrnoText(int err) { return std::string(std::strerror(err)); }

std::string UniqueShmName() {
  std::random_device rd;
  char buf[64];
  std::snprintf(buf, sizeof(buf), "/%s%d-%08x", kShmPrefix, static_cast<int>(getpid()), rd());
  return buf;
}

// Takes the whole-file OFD write lock without waiting; false if another open file
// description holds it (errno EAGAIN) or locking failed.
bool LockLiveness(int fd) {
  struct flock lock {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  return fcntl(fd, F_OFD_SETLK, &lock) == 0;
}

}  // namespace

StatusOr<PoolHost> PoolHost::Create(PoolBackend backend, const PoolGeometry& geometry,
                                    int cuda_device) {
  if (geometry.num_layers <= 0 || geometry.num_kv_heads <= 0 || geometry.head_dim <= 0 ||
      geometry.block_size <= 0 || geometry.num_blocks <= 0) {
    return InvalidArgument("pool geometry has a zero or negative dimension");
  }
  if (backend == PoolBackend::kCuda) {
#if KVPOOL_MANAGER_HAVE_CUDA
    KVPOOL_ASSIGN_OR_RETURN(CudaPoolHost cuda, CudaPoolHost::Create(cuda_device, geometry));
    PoolHost host;
    host.cuda_ = std::make_shared<CudaPoolHost>(std::move(cuda));
    host.backend_name_ = "cuda";
    host.data_ = host.cuda_->base();
    host.pool_bytes_ = host.cuda_->pool_bytes();
    return host;
#else
    (void)cuda_device;
    return FailedPrecondition(
        "this kvpool-manager was built without CUDA (no CUDA toolkit was found at build "
        "time); use --backend shm or rebuild where nvcc is installed");
#endif
  }
  const size_t bytes = geometry.pool_bytes();
  for (int attempt = 0; attempt < 8; ++attempt) {
    const std::string name = UniqueShmName();
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      return FailedPrecondition("shm_open(" + name + ") failed: " + ErrnoText(errno));
    }
    // The liveness mark, taken before the segment has a size (RemoveStaleSegments skips
    // empty segments, so no cleaner can see this one unlocked): an open-file-description
    // lock held while this host lives and dropped by the kernel when the process dies,
    // however it dies. Unlike a pid it means the same thing across PID namespaces (a
    // DaemonSet pod with hostIPC).
    if (!LockLiveness(fd)) {
      const int lock_errno = errno;
      close(fd);
      shm_unlink(name.c_str());
      return FailedPrecondition("cannot lock " + name + ": " + ErrnoText(lock_errno));
    }
    // posix_fallocate reserves tmpfs pages now (fresh pages read as zero), so an
    // undersized /dev/shm is an error at start rather than SIGBUS at first write.
    int err = ftruncate(fd, static_cast<off_t>(bytes)) == 0 ? 0 : errno;
    if (err == 0) err = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
    if (err != 0) {
      close(fd);
      shm_unlink(name.c_str());
      return ResourceExhausted("cannot size shared memory " + name + " to " +
                               std::to_string(bytes) + " bytes: " + ErrnoText(err) +
                               " (is /dev/shm large enough? lower --num-blocks)");
    }
    void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    err = errno;
    if (data == MAP_FAILED) {
      close(fd);
      shm_unlink(name.c_str());
      return FailedPrecondition("mmap of " + name + " failed: " + ErrnoText(err));
    }
    PoolHost host;
    host.lock_fd_ = fd;
    host.backend_name_ = "shm";
    host.shm_name_ = name;
    host.data_ = data;
    host.pool_bytes_ = bytes;
    return host;
  }
  return FailedPrecondition("could not find an unused shared-memory name");
}

int PoolHost::RemoveStaleSegments() {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return 0;
  int removed = 0;
  const size_t prefix_len = std::strlen(kShmPrefix);
  while (dirent* entry = readdir(dir)) {
    const std::string file = entry->d_name;
    if (file.compare(0, prefix_len, kShmPrefix) != 0) continue;
    // Stale = nobody holds its liveness lock (its manager is gone, whatever its pid
    // meant in whichever PID namespace).
    const int fd = shm_open(("/" + file).c_str(), O_RDWR, 0);
    if (fd < 0) continue;
    struct stat st {};
    // An empty segment is one being created right now (its lock comes before its size).
    const bool sized = fstat(fd, &st) == 0 && st.st_size > 0;
    const bool stale = sized && LockLiveness(fd);
    if (stale && shm_unlink(("/" + file).c_str()) == 0) ++removed;
    close(fd);
  }
  closedir(dir);
  return removed;
}

PoolHost::PoolHost(PoolHost&& other) noexcept { *this = std::move(other); }

PoolHost& PoolHost::operator=(PoolHost&& other) noexcept {
  if (this != &other) {
    Release();
    cuda_ = std::move(other.cuda_);
    lock_fd_ = std::exchange(other.lock_fd_, -1);
    backend_name_ = std::move(other.backend_name_);
    shm_name_ = std::move(other.shm_name_);
    data_ = other.data_;
    pool_bytes_ = other.pool_bytes_;
    other.shm_name_.clear();
    other.data_ = nullptr;
    other.pool_bytes_ = 0;
  }
  return *this;
}

PoolHost::~PoolHost() { Release(); }

std::string PoolHost::cuda_ipc_handle() const {
#if KVPOOL_MANAGER_HAVE_CUDA
  if (cuda_) return std::string(cuda_->ipc_handle().begin(), cuda_->ipc_handle().end());
#endif
  return {};
}

std::string PoolHost::gpu_uuid() const {
#if KVPOOL_MANAGER_HAVE_CUDA
  if (cuda_) return cuda_->gpu_uuid();
#endif
  return {};
}

void PoolHost::Release() {
  if (cuda_) {  // device memory: the CudaPoolHost frees it
    cuda_.reset();
    data_ = nullptr;
    return;
  }
  if (data_ != nullptr) munmap(data_, pool_bytes_);
  if (!shm_name_.empty()) shm_unlink(shm_name_.c_str());
  if (lock_fd_ >= 0) close(lock_fd_);
  lock_fd_ = -1;
  data_ = nullptr;
  shm_name_.clear();
}

}  // namespace kvpool::manager
