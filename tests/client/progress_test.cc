// ProgressBar's status line (bar, done/total, stage and point, ETA from the mean time per
// unit) and its plain-line mode for logs: a line per point and per tenth of the units.
#include "client/cli/progress.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace kvpool::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ProgressLineTest, BarCountStagePointAndEta) {
  const std::string line =
      ProgressLine("kvpool bench", 3, 12, "cache_size", "64 blocks of 16", 90.0, 0);
  EXPECT_THAT(line, HasSubstr("[#####---------------] 3/12"));
  EXPECT_THAT(line, HasSubstr("cache_size: 64 blocks of 16"));
  EXPECT_THAT(line, HasSubstr("1m30s, ETA ~4m30s"));  // 30 s a unit, 9 left
}

TEST(ProgressLineTest, UnknownTotalHasNoBarOrEtaAndTheWidthBoundsIt) {
  const std::string line = ProgressLine("kvpool bench", 0, 0, "", "starting", 2.2, 0);
  EXPECT_EQ(line, "kvpool bench starting · 2s");
  EXPECT_THAT(ProgressLine("x", 12, 12, "", "", 5, 0), Not(HasSubstr("ETA")));  // done
  EXPECT_LE(ProgressLine("kvpool bench", 1, 2, std::string(300, 's'), "p", 1, 60).size(), 59u);
}

TEST(ProgressBarTest, PlainLinesForAPipeAndNothingWhenQuiet) {
  std::FILE* out = std::tmpfile();
  {
    ProgressBar bar("kvpool loadgen", /*quiet=*/false, /*tty=*/0, out);
    bar.SetTotal(20);
    bar.Stage("requests");
    for (int i = 0; i < 20; ++i) bar.Advance();
  }
  std::rewind(out);
  std::string text;
  char buffer[256];
  int lines = 0;
  while (std::fgets(buffer, sizeof(buffer), out) != nullptr) {
    text += buffer;
    ++lines;
  }
  std::fclose(out);
  EXPECT_EQ(lines, 11) << text;  // the stage, then one per tenth
  EXPECT_THAT(text, HasSubstr("20/20"));
  EXPECT_THAT(text, Not(HasSubstr("\r")));

  std::FILE* quiet_out = std::tmpfile();
  {
    ProgressBar bar("kvpool loadgen", /*quiet=*/true, /*tty=*/1, quiet_out);
    bar.SetTotal(2);
    bar.Stage("requests");
    bar.Advance(2);
  }
  EXPECT_EQ(std::ftell(quiet_out), 0);
  std::fclose(quiet_out);
}

TEST(ProgressBarTest, OnATerminalItRedrawsOneLineAndClearsItAtTheEnd) {
  std::FILE* out = std::tmpfile();
  {
    ProgressBar bar("kvpool bench", /*quiet=*/false, /*tty=*/1, out);
    bar.SetTotal(3);
    bar.Stage("original");
    bar.Point("mode none");
    bar.End();
    bar.Point("after the end: not drawn");
  }
  std::rewind(out);
  std::string text;
  char buffer[512];
  while (std::fgets(buffer, sizeof(buffer), out) != nullptr) text += buffer;
  std::fclose(out);
  EXPECT_THAT(text, HasSubstr("\r\033[Kkvpool bench [-"));
  EXPECT_THAT(text, HasSubstr("original: mode none"));
  EXPECT_THAT(text, Not(HasSubstr("after the end")));
  EXPECT_EQ(text.find('\n'), std::string::npos);  // redrawn in place, never a new line
}

}  // namespace
}  // namespace kvpool::cli
