// Declarations of the generated Unicode property tables in unicode_tables.cc. Only unicode.cc
// reads them; everything else asks the predicates in unicode.h.
#pragma once

#include <cstddef>

namespace kvpool {
namespace unicode_internal {

// Inclusive code point range; each table is sorted and its ranges are disjoint.
struct CodepointRange {
  char32_t first;
  char32_t last;
};

// One code point and what BERT's lowercase + NFD + drop-Mn turns it into; sorted by `from`.
struct CodepointFold {
  char32_t from;
  char32_t to;
};

extern const CodepointRange kLetterRanges[];
extern const size_t kNumLetterRanges;
extern const CodepointRange kNumberRanges[];
extern const size_t kNumNumberRanges;
extern const CodepointRange kPunctuationRanges[];
extern const size_t kNumPunctuationRanges;
extern const CodepointRange kControlRanges[];
extern const size_t kNumControlRanges;
extern const CodepointRange kNonspacingMarkRanges[];
extern const size_t kNumNonspacingMarkRanges;
extern const CodepointFold kBertFolds[];
extern const size_t kNumBertFolds;

}  // namespace unicode_internal
}  // namespace kvpool
