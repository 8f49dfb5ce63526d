// File reading for the tokenizer loaders (see file_io.h).
#include "tokenizer/file_io.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace kvpool {

std::string ReadTokenizerFile(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!FileExists(path) || !in) {
    throw std::runtime_error("cannot open " + std::string(what) + " '" + path + "'");
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) {
    throw std::runtime_error("error reading " + std::string(what) + " '" + path + "'");
  }
  return contents.str();
}

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

bool FileExists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

}  // namespace kvpool
