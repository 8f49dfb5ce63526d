// The chat API's request mapping (openai_chat.h): the turn's end becomes a stop token
// where the tokenizer has it as a special token and a stop string where it does not,
// max_tokens defaults to the rest of the context, logprobs and top_logprobs map onto
// the completion's logprobs, and chat-only refusals name their field.
#include "service/openai_chat.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "tests/tokenizer/byte_tokenizer.h"

namespace kvpool::worker {
namespace {

using testing_util::ByteTokenizer;

struct Parsed {
  std::optional<ApiError> error;
  std::vector<v1::GenerateRequest> requests;
  CompletionAsk ask;
};

Parsed Parse(const ChatSetup& setup, Json body) {
  static const ByteTokenizer tokenizer;
  body["model"] = "m";
  if (!body.contains("messages")) body["messages"] = {{{"role", "user"}, {"content", "Hi"}}};
  Parsed p;
  p.error = ParseChat(body, {"m", "m", &setup, &tokenizer, 512}, &p.requests, &p.ask);
  return p;
}

TEST(OpenAiChat, TheTurnsEndIsAStopTokenWhenSpecialAndAStopStringOtherwise) {
  ChatSetup special;
  special.chat = ChatTemplate::ChatMl();
  special.special = {{"<|im_start|>", 900}, {"<|im_end|>", 901}};
  Parsed p = Parse(special, {{"stop_token_ids", {7}}});
  ASSERT_FALSE(p.error) << p.error->message;
  ASSERT_EQ(p.requests.size(), 1u);
  const auto& ids = p.requests[0].stop_token_ids();
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.end()), (std::vector<int32_t>{7, 901}));
  EXPECT_EQ(p.requests[0].stop_size(), 0);
  EXPECT_EQ(p.requests[0].token_ids(0), 900);  // the template's marker, as its token
  EXPECT_TRUE(p.ask.chat);

  ChatSetup builtin;
  builtin.chat = ChatTemplate::ChatMl();
  p = Parse(builtin, {{"stop", "END"}});
  ASSERT_FALSE(p.error) << p.error->message;
  const auto& stops = p.requests[0].stop();
  EXPECT_EQ(std::vector<std::string>(stops.begin(), stops.end()),
            (std::vector<std::string>{"END", "<|im_end|>"}));
  EXPECT_EQ(p.requests[0].stop_token_ids_size(), 0);
}

TEST(OpenAiChat, MaxTokensDefaultsToTheRestOfTheContext) {
  ChatSetup setup;
  setup.chat = ChatTemplate::ChatMl();
  Parsed p = Parse(setup, Json::object());
  ASSERT_FALSE(p.error);
  EXPECT_EQ(p.requests[0].max_tokens(), 512 - p.requests[0].token_ids_size());
  p = Parse(setup, {{"max_completion_tokens", 5}, {"max_tokens", 9}});
  EXPECT_EQ(p.requests[0].max_tokens(), 5);
  p = Parse(setup, {{"max_completion_tokens", "5"}});
  ASSERT_TRUE(p.error);
  EXPECT_EQ(p.error->param, "max_completion_tokens");
}

TEST(OpenAiChat, LogprobsAreAFlagWithTopLogprobs) {
  ChatSetup setup;
  setup.chat = ChatTemplate::ChatMl();
  Parsed p = Parse(setup, {{"logprobs", true}, {"top_logprobs", 3}});
  ASSERT_FALSE(p.error);
  EXPECT_EQ(p.requests[0].logprobs(), 3);
  EXPECT_EQ(p.ask.top_logprobs, 3);
  p = Parse(setup, {{"logprobs", true}});
  EXPECT_EQ(p.requests[0].logprobs(), 1);
  EXPECT_EQ(p.ask.top_logprobs, 0);
  p = Parse(setup, Json::object());
  EXPECT_EQ(p.requests[0].logprobs(), 0);
  EXPECT_EQ(p.ask.top_logprobs, -1);
  for (const Json& bad : {Json{{"top_logprobs", 2}}, Json{{"logprobs", 1}},
                          Json{{"logprobs", true}, {"top_logprobs", 6}}}) {
    p = Parse(setup, bad);
    ASSERT_TRUE(p.error) << bad;
    EXPECT_EQ(p.error->http, 400);
  }
}

TEST(OpenAiChat, RefusalsNameTheirField) {
  ChatSetup none;
  none.note = "no template here";
  Parsed p = Parse(none, Json::object());
  ASSERT_TRUE(p.error);
  EXPECT_NE(p.error->message.find("no template here"), std::string::npos);
  ChatSetup setup;
  setup.chat = ChatTemplate::ChatMl();
  for (const auto& [body, param] : std::vector<std::pair<Json, std::string>>{
           {{{"prompt", "x"}}, "prompt"},
           {{{"tools", {{{"type", "function"}}}}}, "tools"},
           {{{"tool_choice", "auto"}}, "tool_choice"},
           {{{"chat_template", "{{ messages }}"}}, "chat_template"},
           {{{"messages", Json::array()}}, "messages"},
           {{{"messages", {{{"role", "user"}}}}}, "messages"},
           {{{"add_generation_prompt", "yes"}}, "add_generation_prompt"},
           {{{"echo", true}}, "echo"}}) {
    p = Parse(setup, body);
    ASSERT_TRUE(p.error) << body;
    EXPECT_EQ(p.error->param, param) << body;
  }
}

}  // namespace
}  // namespace kvpool::worker
