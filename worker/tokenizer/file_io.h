// Reading tokenizer files with errors that name the file: every loader goes through here so a
// missing or unreadable file always produces the same kind of message.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvpool {

// The whole file; throws std::runtime_error("cannot open <what> '<path>'") when it cannot.
std::string ReadTokenizerFile(const std::string& path, std::string_view what);

// Splits on '\n', dropping a trailing '\r' from each line and a final empty line.
std::vector<std::string_view> SplitLines(std::string_view text);

bool FileExists(const std::string& path);

}  // namespace kvpool
