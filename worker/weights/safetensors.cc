// Safetensors reading (mmap + strict header validation) and writing; see safetensors.h.
#include "weights/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>
#include <utility>

namespace kvpool {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors stores little-endian data; this reader maps it as is");

// The Rust reference implementation refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

struct DTypeInfo {
  SafetensorsDType dtype;
  const char* name;
  int64_t bytes;
};

constexpr DTypeInfo kDTypes[] = {
    {SafetensorsDType::kF64, "F64", 8}, {SafetensorsDType::kF32, "F32", 4},
    {SafetensorsDType::kF16, "F16", 2}, {SafetensorsDType::kBF16, "BF16", 2},
    {SafetensorsDType::kI64, "I64", 8}, {SafetensorsDType::kI32, "I32", 4},
    {SafetensorsDType::kI16, "I16", 2}, {SafetensorsDType::kI8, "I8", 1},
    {SafetensorsDType::kU8, "U8", 1},   {SafetensorsDType::kBool, "BOOL", 1},
};

const DTypeInfo& Info(SafetensorsDType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[1];  // unreachable: every enumerator is in the table
}

// Elements of `shape`, or -1 if a dim is negative or the product overflows.
int64_t CheckedNumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

// Reads an unsigned JSON integer no larger than `limit`.
bool GetUnsigned(const nlohmann::json& j, uint64_t limit, uint64_t* out) {
  if (!j.is_number_unsigned()) return false;
  *out = j.get<uint64_t>();
  return *out <= limit;
}

}  // namespace

const char* SafetensorsDTypeName(SafetensorsDType dtype) { return Info(dtype).name; }

int64_t SafetensorsDTypeBytes(SafetensorsDType dtype) { return Info(dtype).bytes; }

std::string FormatShape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

StatusOr<SafetensorsDType> ParseSafetensorsDType(const std::string& name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return InvalidArgument("unknown safetensors dtype '" + name + "'");
}

int64_t TensorView::NumElements() const { return CheckedNumElements(shape); }

StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  const std::string where = "safetensors file " + path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFound(where + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Internal(where + ": fstat failed: " + std::strerror(err));
  }
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
  if (file_bytes < 8) {
    ::close(fd);
    return DataLoss(where + ": " + std::to_string(file_bytes) +
                    " bytes, too short for the 8-byte header length");
  }
  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) return Internal(where + ": mmap failed: " + std::strerror(map_err));
  file.map_ = static_cast<const std::byte*>(map);
  file.map_bytes_ = file_bytes;

  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, file.map_, 8);
  if (header_bytes > kMaxHeaderBytes || header_bytes > file_bytes - 8) {
    return DataLoss(where + ": header length " + std::to_string(header_bytes) +
                    " exceeds the file size " + std::to_string(file_bytes));
  }
  file.data_start_ = 8 + header_bytes;
  const char* header = reinterpret_cast<const char*>(file.map_ + 8);
  const nlohmann::json j = nlohmann::json::parse(header, header + header_bytes, nullptr,
                                                 /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return DataLoss(where + ": header is not a JSON object");
  }

  const uint64_t data_bytes = file_bytes - file.data_start_;
  std::vector<std::tuple<size_t, size_t, std::string>> spans;  // (begin, end, name)
  for (const auto& [name, value] : j.items()) {
    const std::string tensor = where + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!value.is_object()) return DataLoss(where + ": __metadata__ is not an object");
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) {
          return DataLoss(where + ": __metadata__ value for '" + key + "' is not a string");
        }
        file.metadata_[key] = v.get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets") || !value["dtype"].is_string() ||
        !value["shape"].is_array() || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2) {
      return DataLoss(tensor + ": needs \"dtype\" (string), \"shape\" (array) and " +
                      "\"data_offsets\" ([begin, end])");
    }
    Entry entry{};
    StatusOr<SafetensorsDType> dtype = ParseSafetensorsDType(value["dtype"].get<std::string>());
    if (!dtype.ok()) return InvalidArgument(tensor + ": " + dtype.status().message());
    entry.dtype = *dtype;
    for (const nlohmann::json& dim : value["shape"]) {
      uint64_t d = 0;
      if (!GetUnsigned(dim, std::numeric_limits<int64_t>::max(), &d)) {
        return DataLoss(tensor + ": shape " + value["shape"].dump() +
                        " has a dim that is not a non-negative integer");
      }
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    uint64_t begin = 0, end = 0;
    if (!GetUnsigned(value["data_offsets"][0], data_bytes, &begin) ||
        !GetUnsigned(value["data_offsets"][1], data_bytes, &end) || begin > end) {
      return DataLoss(tensor + ": data_offsets " + value["data_offsets"].dump() +
                      " out of range of the " + std::to_string(data_bytes) +
                      " data bytes (file truncated?)");
    }
    const int64_t numel = CheckedNumElements(entry.shape);
    int64_t need = 0;
    if (numel < 0 || __builtin_mul_overflow(numel, SafetensorsDTypeBytes(entry.dtype), &need) ||
        static_cast<uint64_t>(need) != end - begin) {
      return DataLoss(tensor + ": data_offsets " + value["data_offsets"].dump() + " span " +
                      std::to_string(end - begin) + " bytes but shape " + FormatShape(entry.shape) +
                      " of " + SafetensorsDTypeName(entry.dtype) + " needs " +
                      std::to_string(need));
    }
    entry.begin = begin;
    entry.end = end;
    spans.emplace_back(begin, end, name);
    file.entries_.emplace(name, std::move(entry));
  }

  // The format requires the tensors to tile the data section exactly, as the
  // reference implementation checks: no overlap, no gap, nothing after the last.
  std::sort(spans.begin(), spans.end());
  size_t covered = 0;  // end of the previous span
  std::string previous;
  for (const auto& [begin, end, name] : spans) {
    if (begin < covered) {
      return DataLoss(where + ": tensor '" + name + "' overlaps tensor '" + previous + "'");
    }
    if (begin > covered) {
      return DataLoss(where + ": tensor '" + name + "' starts at data byte " +
                      std::to_string(begin) + " but the tensors before it end at " +
                      std::to_string(covered) + " (gap)");
    }
    covered = end;
    previous = name;
  }
  if (covered != data_bytes) {
    return DataLoss(where + ": " + std::to_string(data_bytes - covered) +
                    " bytes after the last tensor's data");
  }
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    data_start_ = other.data_start_;
    entries_ = std::move(other.entries_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
}

std::vector<std::string> SafetensorsFile::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) names.push_back(name);
  return names;
}

StatusOr<TensorView> SafetensorsFile::Get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return NotFound("safetensors file " + path_ + ": no tensor '" + name + "'");
  }
  const Entry& e = it->second;
  TensorView view;
  view.name = name;
  view.dtype = e.dtype;
  view.shape = e.shape;
  view.data = map_ + data_start_ + e.begin;
  view.byte_size = static_cast<int64_t>(e.end - e.begin);
  return view;
}

Status WriteSafetensors(const std::string& path, const std::vector<NamedBuffer>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  const std::string where = "safetensors file " + path;
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<int64_t> sizes;
  sizes.reserve(tensors.size());
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const NamedBuffer& t : tensors) {
    const std::string tensor = where + ": tensor '" + t.name + "'";
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      return InvalidArgument(tensor + ": empty, reserved or duplicate name");
    }
    const int64_t numel = CheckedNumElements(t.shape);
    int64_t bytes = 0;
    if (numel < 0 || __builtin_mul_overflow(numel, SafetensorsDTypeBytes(t.dtype), &bytes)) {
      return InvalidArgument(tensor + ": bad shape " + FormatShape(t.shape));
    }
    if (bytes > 0 && t.data == nullptr) return InvalidArgument(tensor + ": null data");
    header[t.name] = {{"dtype", SafetensorsDTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + static_cast<uint64_t>(bytes)}}};
    offset += static_cast<uint64_t>(bytes);
    sizes.push_back(bytes);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_bytes = text.size();

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return Internal(where + ": cannot create " + tmp + ": " + std::strerror(errno));
  bool ok = std::fwrite(&header_bytes, 8, 1, f) == 1 &&
            std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (size_t i = 0; ok && i < tensors.size(); ++i) {
    const size_t n = static_cast<size_t>(sizes[i]);
    ok = n == 0 || std::fwrite(tensors[i].data, 1, n, f) == n;
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return Internal(where + ": write failed: " + std::strerror(err));
  }
  return Status::Ok();
}

}  // namespace kvpool
