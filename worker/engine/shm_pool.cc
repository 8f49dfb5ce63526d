// ShmPoolMapping: see shm_pool.h. Opens, checks and maps the manager's POSIX shared
// memory segment; it never creates or unlinks one (the manager owns it).
#include "engine/shm_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace kvpool {

StatusOr<ShmPoolAttachment> ShmPoolAttachment::Open(const std::string& shm_name,
                                                    const PoolGeometry& geometry) {
  const int fd = shm_open(shm_name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    return FailedPrecondition("cannot open the manager's pool '" + shm_name +
                              "': " + std::strerror(errno) +
                              " (is the manager on this node, in this IPC namespace?)");
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const std::string error = std::strerror(errno);
    close(fd);
    return Internal("fstat of '" + shm_name + "' failed: " + error);
  }
  if (static_cast<size_t>(st.st_size) != geometry.pool_bytes()) {
    close(fd);
    return FailedPrecondition("pool '" + shm_name + "' holds " + std::to_string(st.st_size) +
                              " bytes but this model's geometry needs " +
                              std::to_string(geometry.pool_bytes()) +
                              ": the worker's model does not match the manager's pool");
  }
  // MAP_POPULATE maps every page now (0.08-0.12 s a GiB on a 2-core Zen 4): the K/V
  // writes of a fresh worker took a minor fault per 4 KiB page otherwise, 0.3 s a GiB
  // spread over its first requests. Only up to kPopulateMaxBytes: the attach runs
  // between the worker's registration and its first lease renewal, and a pool of
  // 100 GiB would take about the default lease (10 s) to populate; larger pools fault
  // their pages in as they are first written.
  constexpr size_t kPopulateMaxBytes = size_t{8} << 30;
  const int populate = geometry.pool_bytes() <= kPopulateMaxBytes ? MAP_POPULATE : 0;
  void* base =
      mmap(nullptr, geometry.pool_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | populate, fd, 0);
  const int map_errno = errno;
  close(fd);  // the mapping keeps the segment
  if (base == MAP_FAILED) {
    return Internal("mmap of '" + shm_name + "' failed: " + std::strerror(map_errno));
  }
  ShmPoolAttachment a;
  a.base_ = base;
  a.geometry_ = geometry;
  return a;
}

ShmPoolAttachment::ShmPoolAttachment(ShmPoolAttachment&& other) noexcept {
  *this = std::move(other);
}

ShmPoolAttachment& ShmPoolAttachment::operator=(ShmPoolAttachment&& other) noexcept {
  if (this != &other) {
    Reset();
    base_ = std::exchange(other.base_, nullptr);
    geometry_ = other.geometry_;
  }
  return *this;
}

ShmPoolAttachment::~ShmPoolAttachment() { Reset(); }

void ShmPoolAttachment::Reset() {
  if (base_ != nullptr) munmap(base_, geometry_.pool_bytes());
  base_ = nullptr;
}

}  // namespace kvpool
