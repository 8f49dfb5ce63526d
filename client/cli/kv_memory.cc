// KV-cache memory arithmetic: see kv_memory.h.
#include "client/cli/kv_memory.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>

namespace kvpool::cli {
namespace {

constexpr int64_t kMaxInt64 = std::numeric_limits<int64_t>::max();

// a x b x ... for non-negative factors; OUT_OF_RANGE naming `what` on int64 overflow.
StatusOr<int64_t> CheckedProduct(std::initializer_list<int64_t> factors, const char* what) {
  int64_t product = 1;
  for (int64_t f : factors) {
    if (f != 0 && product > kMaxInt64 / f) {
      return Status(StatusCode::kOutOfRange, std::string(what) + " does not fit in 64 bits");
    }
    product *= f;
  }
  return product;
}

std::string Lower(std::string_view text) {
  std::string lower(text);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower;
}

// Bytes per unit; 0 when `unit` (lower case) is not one.
int64_t UnitBytes(const std::string& unit) {
  static constexpr struct {
    const char* binary;
    const char* binary_short;
    const char* decimal;
    int power;
  } kUnits[] = {
      {"kib", "k", "kb", 1}, {"mib", "m", "mb", 2}, {"gib", "g", "gb", 3}, {"tib", "t", "tb", 4}};
  if (unit.empty() || unit == "b") return 1;
  for (const auto& u : kUnits) {
    int64_t binary = 1, decimal = 1;
    for (int i = 0; i < u.power; ++i) binary *= 1024, decimal *= 1000;
    if (unit == u.binary || unit == u.binary_short) return binary;
    if (unit == u.decimal) return decimal;
  }
  return 0;
}

}  // namespace

StatusOr<int64_t> KvDtypeBits(std::string_view dtype) {
  if (dtype == "fp32") return int64_t{32};
  if (dtype == "fp16" || dtype == "bf16") return int64_t{16};
  if (dtype == "fp8" || dtype == "int8") return int64_t{8};
  if (dtype == "int4") return int64_t{4};
  return InvalidArgument("unknown --dtype '" + std::string(dtype) +
                         "'; one of fp32, fp16, bf16, fp8, int8, int4");
}

int64_t KvScaleBitsPerHead(std::string_view dtype) {
  return dtype == "fp8" || dtype == "int8" ? 32 : 0;
}

StatusOr<int64_t> KvBytesPerToken(const ModelConfig& model, int64_t dtype_bits,
                                  int64_t scale_bits) {
  if (model.num_layers <= 0 || model.num_kv_heads <= 0 || model.head_dim <= 0 || dtype_bits <= 0 ||
      dtype_bits % 4 != 0 || scale_bits < 0 || scale_bits % 4 != 0) {
    return InvalidArgument("KV shape of '" + model.name +
                           "' needs positive layers, KV heads and head_dim, and whole "
                           "nibbles per element");
  }
  KVPOOL_ASSIGN_OR_RETURN(const int64_t element_bits,
                          CheckedProduct({model.head_dim, dtype_bits}, "KV bits per head"));
  KVPOOL_ASSIGN_OR_RETURN(
      const int64_t bits,
      CheckedProduct({2, model.num_layers, model.num_kv_heads, element_bits + scale_bits},
                     "KV bits per token"));
  return bits / 8;  // exact: 2 x (a multiple of 4) bits
}

StatusOr<int64_t> KvBytes(int64_t bytes_per_token, int64_t seq_len, int64_t batch) {
  return CheckedProduct({bytes_per_token, seq_len, batch}, "KV bytes");
}

std::string_view AttentionKind(int64_t num_heads, int64_t num_kv_heads) {
  if (num_kv_heads == num_heads) return "MHA";
  if (num_kv_heads == 1) return "MQA";
  return "GQA";
}

std::vector<int64_t> DefaultSeqLens(int64_t max_position) {
  const int64_t context = max_position > 0 ? max_position : 4096;
  std::vector<int64_t> seq_lens;
  for (int64_t s = 512; s < context; s *= 2) seq_lens.push_back(s);
  seq_lens.push_back(context);
  return seq_lens;
}

StatusOr<int64_t> ParseByteSize(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return InvalidArgument("--memory '" + std::string(text) + "': " + why +
                           " (e.g. 24GiB, 80GB, 512MiB, 1073741824)");
  };
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  const size_t number_begin = i;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
    ++i;
  }
  const std::string number(text.substr(number_begin, i - number_begin));
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  std::string unit = Lower(text.substr(i));
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();
  const size_t dot = number.find('.');
  if (number.empty() || number == "." ||
      (dot != std::string::npos && number.find('.', dot + 1) != std::string::npos)) {
    return bad("not a number of bytes");
  }
  const int64_t unit_bytes = UnitBytes(unit);
  if (unit_bytes == 0) return bad("unknown unit '" + unit + "'");
  int64_t bytes = 0;
  if (dot == std::string::npos) {
    if (number.size() > 18) return bad("too large");
    StatusOr<int64_t> product = CheckedProduct({std::stoll(number), unit_bytes}, "--memory");
    if (!product.ok()) return bad("too large");
    bytes = *product;
  } else {
    const long double value = std::stold(number) * static_cast<long double>(unit_bytes);
    if (value >= static_cast<long double>(kMaxInt64)) return bad("too large");
    bytes = static_cast<int64_t>(std::floor(value));
  }
  if (bytes <= 0) return bad("must be at least one byte");
  return bytes;
}

std::string FormatBytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  int64_t unit_bytes = 1;
  while (unit + 1 < 7 && bytes / 1024 >= unit_bytes) {
    unit_bytes *= 1024;
    ++unit;
  }
  char text[32];
  if (bytes % unit_bytes == 0) {
    std::snprintf(text, sizeof(text), "%lld %s", static_cast<long long>(bytes / unit_bytes),
                  kUnits[unit]);
  } else {
    std::snprintf(text, sizeof(text), "%.2f %s",
                  static_cast<double>(bytes) / static_cast<double>(unit_bytes), kUnits[unit]);
  }
  return text;
}

}  // namespace kvpool::cli
