// Token text for a protobuf `string` field, which must be valid UTF-8. A byte-level
// BPE token can end in the middle of a character (and random weights emit any byte
// sequence), so each sample keeps the bytes that do not yet form a whole character
// and sends them with a later token.
#pragma once

#include <string>

namespace kvpool::worker {

// Takes from `pending` the longest prefix that is whole UTF-8 characters, with each
// invalid byte replaced by U+FFFD; an incomplete character at the end stays in
// `pending` unless `flush` (the sample's last token), when it becomes U+FFFD too.
std::string TakeCompleteUtf8(std::string& pending, bool flush);

}  // namespace kvpool::worker
