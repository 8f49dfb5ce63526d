// WordPiece (see wordpiece.h) and LoadWordPiece, which reads vocab.txt: one token per line, the
// line index is the id.
#include "tokenizer/wordpiece.h"

#include <stdexcept>
#include <utility>

#include "tokenizer/file_io.h"
#include "tokenizer/unicode.h"

namespace kvpool {
namespace {

// BertTokenizer's max_input_chars_per_word: longer words become [UNK] without matching.
constexpr size_t kMaxCharsPerWord = 100;

// BERT counts all ASCII non-alphanumeric printables as punctuation, symbols like $ ^ ` included.
bool IsBertPunctuation(char32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
      (cp >= 123 && cp <= 126)) {
    return true;
  }
  return unicode::IsPunctuation(cp);
}

std::string ToUtf8(const char32_t* begin, const char32_t* end) {
  std::string out;
  for (const char32_t* p = begin; p != end; ++p) unicode::AppendUtf8(*p, &out);
  return out;
}

char32_t FirstCodepoint(const std::string& text) {
  size_t pos = 0;
  return text.empty() ? 0 : unicode::DecodeUtf8(text, &pos);
}

char32_t LastCodepoint(const std::string& text) {
  if (text.empty()) return 0;
  size_t start = text.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return unicode::DecodeUtf8(text, &start);
}

}  // namespace

WordPiece::WordPiece(std::vector<std::string> tokens, bool do_lower_case, std::string name)
    : tokens_(std::move(tokens)), do_lower_case_(do_lower_case), name_(std::move(name)) {
  ids_.reserve(tokens_.size());
  for (size_t i = 0; i < tokens_.size(); ++i) {
    ids_.insert_or_assign(tokens_[i], static_cast<int32_t>(i));  // Later lines win, as in HF.
  }
  auto find = [this](const char* token) {
    auto it = ids_.find(token);
    return it == ids_.end() ? -1 : it->second;
  };
  unk_id_ = find("[UNK]");
  sep_id_ = find("[SEP]");
  if (unk_id_ < 0) throw std::runtime_error(name_ + ": vocabulary has no [UNK] token");
}

std::vector<std::u32string> WordPiece::BasicTokenize(std::string_view text) const {
  std::vector<std::u32string> words;
  std::u32string word;
  std::u32string folded;  // One input code point after lowercasing.
  auto finish_word = [&] {
    if (!word.empty()) words.push_back(std::move(word));
    word.clear();
  };
  for (size_t pos = 0; pos < text.size();) {
    const char32_t cp = unicode::DecodeUtf8(text, &pos);
    const bool is_tab_or_newline = cp == U'\t' || cp == U'\n' || cp == U'\r';
    if (cp == 0 || cp == 0xFFFD || cp == unicode::kInvalidCodepoint ||
        (!is_tab_or_newline && unicode::IsControl(cp))) {
      continue;
    }
    if (unicode::IsWhiteSpace(cp)) {
      finish_word();
      continue;
    }
    if (unicode::IsCjkIdeograph(cp)) {
      finish_word();
      word.push_back(cp);
      finish_word();
      continue;
    }
    folded.clear();
    if (do_lower_case_) {
      unicode::AppendBertLowerStripAccents(cp, &folded);
    } else {
      folded.push_back(cp);
    }
    // Punctuation (judged after folding, as BERT splits the lowercased word) stands alone.
    for (char32_t c : folded) {
      if (IsBertPunctuation(c)) {
        finish_word();
        words.emplace_back(1, c);
      } else {
        word.push_back(c);
      }
    }
  }
  finish_word();
  return words;
}

void WordPiece::AppendWordPieces(const std::u32string& word, std::vector<int32_t>* out) const {
  if (word.size() > kMaxCharsPerWord) {
    out->push_back(unk_id_);
    return;
  }
  const size_t first_piece = out->size();
  size_t start = 0;
  while (start < word.size()) {
    int32_t match = -1;
    size_t end = word.size();
    for (; end > start; --end) {
      std::string piece = start > 0 ? "##" : "";
      piece += ToUtf8(word.data() + start, word.data() + end);
      auto it = ids_.find(piece);
      if (it != ids_.end()) {
        match = it->second;
        break;
      }
    }
    if (match < 0) {
      out->resize(first_piece);
      out->push_back(unk_id_);
      return;
    }
    out->push_back(match);
    start = end;
  }
}

std::vector<int32_t> WordPiece::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  for (const std::u32string& word : BasicTokenize(text)) AppendWordPieces(word, &ids);
  return ids;
}

std::string WordPiece::Decode(const std::vector<int32_t>& ids) const {
  std::string text;
  for (int32_t id : ids) {
    if (id < 0 || id >= VocabSize()) {
      throw std::out_of_range(name_ + ": token id " + std::to_string(id) +
                              " is not in the vocabulary");
    }
    const std::string& token = tokens_[id];
    if (!text.empty() && token.size() > 2 && token.compare(0, 2, "##") == 0) {
      text.append(token, 2, std::string::npos);
      continue;
    }
    const bool no_space_before = token == "." || token == "," || token == "!" || token == "?" ||
                                 unicode::IsCjkIdeograph(FirstCodepoint(token)) ||
                                 unicode::IsCjkIdeograph(LastCodepoint(text));
    if (!text.empty() && !no_space_before) text.push_back(' ');
    text += token;
  }
  return text;
}

std::unique_ptr<Tokenizer> LoadWordPiece(const std::string& vocab_txt, bool do_lower_case) {
  const std::string text = ReadTokenizerFile(vocab_txt, "WordPiece vocab.txt");
  std::vector<std::string> tokens;
  for (std::string_view line : SplitLines(text)) tokens.emplace_back(line);
  if (tokens.empty()) throw std::runtime_error(vocab_txt + ": vocabulary is empty");
  return std::make_unique<WordPiece>(std::move(tokens), do_lower_case,
                                     "wordpiece(" + vocab_txt + ")");
}

}  // namespace kvpool
