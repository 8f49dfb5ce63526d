// KvMode: how a sequence keeps its K/V, the one mode enum of every process (the wire
// has its own, v1::SequenceMode, mapped at the gRPC edges):
//   none        nothing kept: every step recomputes the whole context (no blocks);
//   contiguous  one run of blocks reserved for prompt + max_tokens at admission;
//   paged       blocks taken one at a time as the sequence grows, full ones shared
//               by prefix.
// The manager sees only contiguous and paged (`none` never asks it for blocks).
#pragma once

#include <string>

#include "common/status.h"

namespace kvpool {

enum class KvMode { kNone, kContiguous, kPaged };

inline const char* KvModeName(KvMode mode) {
  switch (mode) {
    case KvMode::kNone:
      return "none";
    case KvMode::kContiguous:
      return "contiguous";
    case KvMode::kPaged:
      return "paged";
  }
  return "?";
}

inline StatusOr<KvMode> ParseKvMode(const std::string& name) {
  if (name == "none") return KvMode::kNone;
  if (name == "contiguous") return KvMode::kContiguous;
  if (name == "paged") return KvMode::kPaged;
  return InvalidArgument("unknown KV mode '" + name + "' (none, contiguous, paged)");
}

}  // namespace kvpool
