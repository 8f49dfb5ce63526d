// The regex alternatives are tried in order at each position, like the regex engine does:
// contractions, then letter/number/other runs with one optional leading space, then whitespace.
#include "tokenizer/gpt2_pretokenizer.h"

#include <cstddef>

#include "tokenizer/unicode.h"

namespace kvpool {
namespace {

enum class CharClass { kLetter, kNumber, kSpace, kOther };

CharClass Classify(char32_t cp) {
  if (unicode::IsLetter(cp)) return CharClass::kLetter;
  if (unicode::IsNumber(cp)) return CharClass::kNumber;
  if (unicode::IsWhiteSpace(cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

// Length in code points of the contraction ('s 't 're 've 'm 'll 'd) at cps[i], or 0.
size_t ContractionLength(const std::u32string& cps, size_t i) {
  if (cps[i] != U'\'' || i + 1 >= cps.size()) return 0;
  const char32_t a = cps[i + 1];
  if (a == U's' || a == U't' || a == U'm' || a == U'd') return 2;
  if (i + 2 >= cps.size()) return 0;
  const char32_t b = cps[i + 2];
  if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return 3;
  return 0;
}

}  // namespace

std::vector<std::string_view> SplitGpt2Pieces(std::string_view text) {
  // Code points and their byte offsets (offsets has one extra entry: text.size()).
  std::u32string cps;
  std::vector<size_t> offsets;
  cps.reserve(text.size());
  offsets.reserve(text.size() + 1);
  std::vector<CharClass> classes;
  classes.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    offsets.push_back(pos);
    cps.push_back(unicode::DecodeUtf8(text, &pos));
    classes.push_back(Classify(cps.back()));
  }
  offsets.push_back(text.size());

  const size_t n = cps.size();
  std::vector<std::string_view> pieces;
  size_t i = 0;
  auto emit = [&](size_t end) {
    pieces.push_back(text.substr(offsets[i], offsets[end] - offsets[i]));
    i = end;
  };
  auto run_end = [&](size_t from, CharClass cls) {
    while (from < n && classes[from] == cls) ++from;
    return from;
  };
  while (i < n) {
    if (size_t len = ContractionLength(cps, i)) {
      emit(i + len);
      continue;
    }
    // " ?X+" for X in letter / number / other: a space joins the run that follows it.
    size_t start = i;
    if (cps[i] == U' ' && i + 1 < n && classes[i + 1] != CharClass::kSpace) start = i + 1;
    if (classes[start] != CharClass::kSpace) {
      emit(run_end(start, classes[start]));
      continue;
    }
    // Whitespace: "\s+(?!\S)" gives the run's last character back to a following non-space
    // (so " word" keeps its space); a single whitespace character left over is "\s+".
    const size_t end = run_end(i, CharClass::kSpace);
    emit(end < n && end - i >= 2 ? end - 1 : end);
  }
  return pieces;
}

}  // namespace kvpool
