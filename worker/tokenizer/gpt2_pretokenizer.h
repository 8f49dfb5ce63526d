// GPT-2's pre-tokenizer: splits text into the pieces BPE runs on, exactly as the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// does, written out by hand over UTF-8 code points (std::regex has no \p{L}). Owns only the
// splitting; the pieces are views into the caller's text and cover it exactly, in order.
#pragma once

#include <string_view>
#include <vector>

namespace kvpool {

std::vector<std::string_view> SplitGpt2Pieces(std::string_view text);

}  // namespace kvpool
