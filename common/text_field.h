// Checks of text a person sends in a request (names, prompts, stop strings): valid
// UTF-8 and a length bound, with an INVALID_ARGUMENT naming the field and the limit.
// Header-only and free of any library, for every service's request validator.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace kvpool::v1 {

// Offset of the first byte that does not start a well-formed UTF-8 character (RFC 3629:
// no overlong forms, no surrogates, nothing above U+10FFFF), or npos when all are.
inline size_t FirstInvalidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

// INVALID_ARGUMENT naming `field` when `value` is longer than `max_bytes` or is not
// valid UTF-8.
inline Status CheckTextField(std::string_view value, const std::string& field, size_t max_bytes) {
  if (value.size() > max_bytes) {
    return InvalidArgument(field + " has " + std::to_string(value.size()) +
                           " bytes, over the limit of " + std::to_string(max_bytes));
  }
  if (const size_t bad = FirstInvalidUtf8(value); bad != std::string_view::npos) {
    return InvalidArgument(field + " is not valid UTF-8 (byte " + std::to_string(bad) +
                           "): send text as UTF-8, or token ids");
  }
  return Status::Ok();
}

}  // namespace kvpool::v1
