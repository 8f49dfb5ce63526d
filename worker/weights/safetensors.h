// The safetensors file format, without LibTorch: SafetensorsFile maps a file
// read-only and validates its whole header up front (header length, JSON, dtypes,
// shapes, data offsets against the file size and each other), so that every
// TensorView it hands out points at bytes that exist and match their shape. It never
// copies tensor data and never writes; WriteSafetensors is the writer, producing
// files Python's `safetensors` loads (8-byte little-endian header length, JSON header
// padded with spaces to a multiple of 8, tensors back to back in the given order).
// Conversion to and from at::Tensor lives in safetensors_aten.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvpool {

enum class SafetensorsDType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// The format's spelling: "F32", "BF16", ...
const char* SafetensorsDTypeName(SafetensorsDType dtype);
StatusOr<SafetensorsDType> ParseSafetensorsDType(const std::string& name);
int64_t SafetensorsDTypeBytes(SafetensorsDType dtype);
// "[2, 3]": shapes as error messages print them.
std::string FormatShape(const std::vector<int64_t>& shape);

// One tensor inside a mapped file. `data` is valid while the SafetensorsFile lives;
// it is only as aligned as the writer made it, so copy with memcpy.
struct TensorView {
  std::string name;
  SafetensorsDType dtype = SafetensorsDType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t byte_size = 0;

  int64_t NumElements() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. NotFound if it cannot be opened; DataLoss for a
  // corrupt or truncated file; InvalidArgument for a dtype this reader does not know.
  static StatusOr<SafetensorsFile> Open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // Sorted by name.
  std::vector<std::string> TensorNames() const;
  bool Contains(const std::string& name) const { return entries_.count(name) > 0; }
  // NotFound (naming the file and the tensor) if absent.
  StatusOr<TensorView> Get(const std::string& name) const;
  // The header's "__metadata__" (string to string); empty if it has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    SafetensorsDType dtype;
    std::vector<int64_t> shape;
    size_t begin;  // offsets into the data section (after the header)
    size_t end;
  };

  SafetensorsFile() = default;
  void Unmap();

  std::string path_;
  const std::byte* map_ = nullptr;  // the whole file, PROT_READ; owned
  size_t map_bytes_ = 0;
  size_t data_start_ = 0;  // 8 + header length
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: `data` must hold NumElements(shape) * dtype bytes and stay
// valid during the call.
struct NamedBuffer {
  std::string name;
  SafetensorsDType dtype = SafetensorsDType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes the tensors in the given order with contiguous offsets (to `path`.tmp,
// then renamed over `path`). InvalidArgument for duplicate, empty or "__metadata__"
// names or negative dims; Internal if the file cannot be written.
Status WriteSafetensors(const std::string& path, const std::vector<NamedBuffer>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace kvpool
