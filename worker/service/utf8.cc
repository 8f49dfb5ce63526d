// Whole UTF-8 characters out of token bytes: see utf8.h.
#include "service/utf8.h"

#include <cstdint>

namespace kvpool::worker {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";

// Length of the UTF-8 character starting with `lead`, or 0 if it cannot start one.
int SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether bytes [1, n) of a sequence with this lead are valid continuations
// (including the narrower second-byte ranges that rule out overlong forms,
// surrogates and code points above U+10FFFF).
bool ValidContinuation(const uint8_t* s, int n) {
  for (int i = 1; i < n; ++i) {
    uint8_t lo = 0x80, hi = 0xBF;
    if (i == 1) {
      if (s[0] == 0xE0) lo = 0xA0;
      if (s[0] == 0xED) hi = 0x9F;
      if (s[0] == 0xF0) lo = 0x90;
      if (s[0] == 0xF4) hi = 0x8F;
    }
    if (s[i] < lo || s[i] > hi) return false;
  }
  return true;
}

}  // namespace

std::string TakeCompleteUtf8(std::string& pending, bool flush) {
  std::string out;
  const auto* bytes = reinterpret_cast<const uint8_t*>(pending.data());
  const size_t size = pending.size();
  size_t i = 0;
  while (i < size) {
    const int n = SequenceLength(bytes[i]);
    if (n == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    if (i + n > size) {
      // An incomplete tail: wait for more bytes if what is there could still be valid.
      if (!flush && ValidContinuation(bytes + i, static_cast<int>(size - i))) break;
      out += kReplacement;
      ++i;
      continue;
    }
    if (!ValidContinuation(bytes + i, n)) {
      out += kReplacement;
      ++i;
      continue;
    }
    out.append(pending, i, n);
    i += static_cast<size_t>(n);
  }
  pending.erase(0, i);
  return out;
}

}  // namespace kvpool::worker
