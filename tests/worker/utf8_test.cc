// The worker's token text is valid UTF-8 for protobuf: whole characters pass, a
// character split across tokens waits for its last byte, invalid bytes become U+FFFD.
#include "service/utf8.h"

#include <gtest/gtest.h>

namespace kvpool::worker {
namespace {

TEST(Utf8Test, WholeCharactersPassAndSplitOnesWait) {
  std::string pending = "ab\xE6\xB7";  // "ab" + the first two bytes of 深 (E6 B7 B1)
  EXPECT_EQ(TakeCompleteUtf8(pending, false), "ab");
  EXPECT_EQ(pending, "\xE6\xB7");
  pending += "\xB1!";
  EXPECT_EQ(TakeCompleteUtf8(pending, false), "\xE6\xB7\xB1!");
  EXPECT_TRUE(pending.empty());
}

TEST(Utf8Test, InvalidBytesBecomeReplacementCharacters) {
  std::string pending = "x\xFFy\xC0\x80z\xED\xA0\x80";  // 0xFF, overlong, a surrogate
  EXPECT_EQ(TakeCompleteUtf8(pending, false),
            "x\xEF\xBF\xBDy\xEF\xBF\xBD\xEF\xBF\xBDz\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_TRUE(pending.empty());
}

TEST(Utf8Test, FlushReplacesAnUnfinishedCharacter) {
  std::string pending = "ok\xF0\x9F";
  EXPECT_EQ(TakeCompleteUtf8(pending, false), "ok");
  EXPECT_EQ(TakeCompleteUtf8(pending, true), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_TRUE(pending.empty());
}

}  // namespace
}  // namespace kvpool::worker
