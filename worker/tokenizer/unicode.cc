// Lookups over the generated tables in unicode_tables.cc, with ASCII fast paths: tokenizing
// mostly-English text should never reach a binary search.
#include "tokenizer/unicode.h"

#include <algorithm>

#include "tokenizer/unicode_tables.h"

namespace kvpool {
namespace unicode {
namespace {

using unicode_internal::CodepointFold;
using unicode_internal::CodepointRange;

bool InRanges(const CodepointRange* ranges, size_t count, char32_t cp) {
  const CodepointRange* end = ranges + count;
  const CodepointRange* it = std::upper_bound(
      ranges, end, cp, [](char32_t value, const CodepointRange& r) { return value < r.first; });
  return it != ranges && cp <= (it - 1)->last;
}

bool IsContinuation(unsigned char byte) { return (byte & 0xC0) == 0x80; }

// Hangul syllables decompose algorithmically (Unicode 3.12): L V [T] conjoining jamo.
constexpr char32_t kHangulBase = 0xAC00;
constexpr char32_t kHangulCount = 11172;
constexpr char32_t kJamoLBase = 0x1100;
constexpr char32_t kJamoVBase = 0x1161;
constexpr char32_t kJamoTBase = 0x11A7;
constexpr char32_t kJamoVCount = 21;
constexpr char32_t kJamoTCount = 28;

}  // namespace

char32_t DecodeUtf8(std::string_view text, size_t* pos) {
  const size_t i = *pos;
  const auto b0 = static_cast<unsigned char>(text[i]);
  if (b0 < 0x80) {
    *pos = i + 1;
    return b0;
  }
  size_t len = 0;
  char32_t cp = 0;
  char32_t min_cp = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min_cp = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min_cp = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min_cp = 0x10000;
  } else {
    *pos = i + 1;
    return kInvalidCodepoint;
  }
  if (i + len > text.size()) {
    *pos = i + 1;
    return kInvalidCodepoint;
  }
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(text[i + k]);
    if (!IsContinuation(b)) {
      *pos = i + 1;
      return kInvalidCodepoint;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    *pos = i + 1;
    return kInvalidCodepoint;
  }
  *pos = i + len;
  return cp;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsLetter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return InRanges(unicode_internal::kLetterRanges, unicode_internal::kNumLetterRanges, cp);
}

bool IsNumber(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return InRanges(unicode_internal::kNumberRanges, unicode_internal::kNumNumberRanges, cp);
}

bool IsWhiteSpace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool IsPunctuation(char32_t cp) {
  return InRanges(unicode_internal::kPunctuationRanges, unicode_internal::kNumPunctuationRanges,
                  cp);
}

bool IsControl(char32_t cp) {
  return InRanges(unicode_internal::kControlRanges, unicode_internal::kNumControlRanges, cp);
}

bool IsNonspacingMark(char32_t cp) {
  if (cp < 0x300) return false;
  return InRanges(unicode_internal::kNonspacingMarkRanges,
                  unicode_internal::kNumNonspacingMarkRanges, cp);
}

bool IsCjkIdeograph(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

void AppendBertLowerStripAccents(char32_t cp, std::u32string* out) {
  if (cp < 0x80) {
    out->push_back(cp >= 'A' && cp <= 'Z' ? cp + ('a' - 'A') : cp);
    return;
  }
  if (IsNonspacingMark(cp)) return;
  if (cp >= kHangulBase && cp < kHangulBase + kHangulCount) {
    const char32_t index = cp - kHangulBase;
    out->push_back(kJamoLBase + index / (kJamoVCount * kJamoTCount));
    out->push_back(kJamoVBase + (index % (kJamoVCount * kJamoTCount)) / kJamoTCount);
    if (index % kJamoTCount != 0) out->push_back(kJamoTBase + index % kJamoTCount);
    return;
  }
  const CodepointFold* begin = unicode_internal::kBertFolds;
  const CodepointFold* end = begin + unicode_internal::kNumBertFolds;
  const CodepointFold* it = std::lower_bound(
      begin, end, cp, [](const CodepointFold& f, char32_t value) { return f.from < value; });
  out->push_back(it != end && it->from == cp ? it->to : cp);
}

}  // namespace unicode
}  // namespace kvpool
