// The SentencePiece tokenizer, built as a loadable module (kvpool_spm) rather than
// linked into the tokenizer library. Debian's libsentencepiece carries its own copy of
// protobuf-lite and exports those symbols; in a process that also loads libprotobuf
// (LibTorch does) the two copies interpose each other and the process crashes at
// start-up. Loading this module with RTLD_LOCAL | RTLD_DEEPBIND keeps sentencepiece's
// protobuf private to it. The module exports one C factory; the library owns the
// model; this file only adapts ids and errors.
#include <sentencepiece_processor.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "tokenizer/file_io.h"
#include "tokenizer/tokenizer.h"

namespace kvpool {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_file)
      : name_("sentencepiece(" + model_file + ")") {
    if (!FileExists(model_file)) {
      throw std::runtime_error("cannot open SentencePiece model '" + model_file + "'");
    }
    const auto status = processor_.Load(model_file);
    if (!status.ok()) {
      throw std::runtime_error("cannot load SentencePiece model '" + model_file +
                               "': " + status.ToString());
    }
  }

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto status = processor_.Encode(text, &ids);
    if (!status.ok()) throw std::runtime_error(name_ + ": encode failed: " + status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  std::string Decode(const std::vector<int32_t>& ids) const override {
    for (int32_t id : ids) CheckId(id);
    std::string text;
    const auto status = processor_.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
    if (!status.ok()) throw std::runtime_error(name_ + ": decode failed: " + status.ToString());
    return text;
  }

  // The piece as it reads mid-text: "▁" is a space, <0xAB> byte pieces are that byte, and
  // control pieces such as <s> are empty.
  std::string TokenText(int32_t id) const override {
    CheckId(id);
    if (processor_.IsControl(id)) return "";
    const std::string& piece = processor_.IdToPiece(id);
    if (processor_.IsByte(id)) {
      return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    }
    static const std::string kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space.
    std::string text;
    for (size_t pos = 0; pos < piece.size();) {
      if (piece.compare(pos, kSpaceMark.size(), kSpaceMark) == 0) {
        text.push_back(' ');
        pos += kSpaceMark.size();
      } else {
        text.push_back(piece[pos++]);
      }
    }
    return text;
  }

  int64_t VocabSize() const override { return processor_.GetPieceSize(); }
  int32_t EosId() const override { return processor_.eos_id(); }
  std::string Name() const override { return name_; }

 private:
  void CheckId(int32_t id) const {
    if (id < 0 || id >= VocabSize()) {
      throw std::out_of_range(name_ + ": token id " + std::to_string(id) +
                              " is not in the vocabulary");
    }
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::string name_;
};

}  // namespace

}  // namespace kvpool

// Returns a new Tokenizer, or null with the reason in `error` (NUL-terminated).
extern "C" __attribute__((visibility("default"))) kvpool::Tokenizer* kvpool_spm_create(
    const char* model_file, char* error, size_t error_len) {
  try {
    return new kvpool::SentencePieceTokenizer(model_file);
  } catch (const std::exception& e) {
    std::strncpy(error, e.what(), error_len - 1);
    error[error_len - 1] = '\0';
    return nullptr;
  }
}
