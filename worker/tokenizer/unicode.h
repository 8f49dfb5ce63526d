// UTF-8 decoding/encoding and the Unicode character classes the tokenizers split text by:
// letters (\p{L}), numbers (\p{N}), White_Space (\s), punctuation, control characters, CJK
// ideographs, and BERT's lowercase-and-strip-accents fold. Tables come from unicode_tables.cc.
// Bytes that are not valid UTF-8 decode to kInvalidCodepoint one byte at a time so that every
// byte string can still be tokenized and round-tripped; that value belongs to no class.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kvpool {
namespace unicode {

// Outside Unicode's range, so no property table contains it.
constexpr char32_t kInvalidCodepoint = 0x110000;

// Decodes the code point starting at text[*pos] and advances *pos past it (by one byte for a
// malformed, overlong or surrogate sequence, which yields kInvalidCodepoint). *pos < size().
char32_t DecodeUtf8(std::string_view text, size_t* pos);
void AppendUtf8(char32_t cp, std::string* out);

bool IsLetter(char32_t cp);          // General category L*.
bool IsNumber(char32_t cp);          // General category N*.
bool IsWhiteSpace(char32_t cp);      // The White_Space property, what \s matches.
bool IsPunctuation(char32_t cp);     // General category P*.
bool IsControl(char32_t cp);         // Cc, Cf or Co.
bool IsNonspacingMark(char32_t cp);  // General category Mn (combining accents).
// The ideograph blocks BERT's tokenizer isolates (CJK Unified + Extensions + Compatibility).
bool IsCjkIdeograph(char32_t cp);

// Appends what BERT's do_lower_case normalization (lowercase, NFD, drop Mn) makes of one code
// point. Exact for Latin, Greek, Cyrillic, Armenian, kana, fullwidth forms, Hangul and combining
// marks; other characters pass through unchanged (CJK compatibility ideographs, for one).
void AppendBertLowerStripAccents(char32_t cp, std::u32string* out);

}  // namespace unicode
}  // namespace kvpool
