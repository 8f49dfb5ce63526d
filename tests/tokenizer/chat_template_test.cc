// Chat templates by family: the rendered text of each family against the text its
// canonical Jinja template renders (strings checked with jinja2 under Hugging Face's
// settings; tests/external/openai_chat_test.py checks the same live against jinja2),
// the refusals, continue_final_message, the special-token encoding that never parses
// message content, and a model folder's setup files.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "byte_tokenizer.h"

namespace kvpool {
namespace {

std::string Text(const std::vector<ChatTemplate::Part>& parts) {
  std::string s;
  for (const auto& p : parts) s += p.text;
  return s;
}

const std::vector<ChatMessage> kTalk = {{"system", "Be brief."},
                                        {"user", " Hi there \n"},
                                        {"assistant", "Hello!"},
                                        {"user", "Who are you?"}};

TEST(ChatTemplate, ChatMlRendersEveryTurnAndTheGenerationPrompt) {
  const ChatTemplate chat = ChatTemplate::Recognize(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
      "", "");
  EXPECT_EQ(chat.family(), ChatFamily::kChatMl);
  EXPECT_EQ(Text(chat.Render(kTalk, true, false)),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi there \n<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplate, ChatMlWithADefaultSystemTurnAddsItOnlyWhenThereIsNone) {
  const ChatTemplate chat = ChatTemplate::Recognize(
      "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful "
      "assistant.<|im_end|>\\n' }}{% endif %}{% for message in messages %}...<|im_start|>",
      "", "");
  EXPECT_EQ(Text(chat.Render({{"user", "x"}}, false, false)),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nx"
            "<|im_end|>\n");
  EXPECT_EQ(Text(chat.Render({{"system", "S"}, {"user", "x"}}, false, false)),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nx<|im_end|>\n");
}

TEST(ChatTemplate, Llama3TrimsContentAndOpensWithBos) {
  const ChatTemplate chat =
      ChatTemplate::Recognize("{{ '<|start_header_id|>' }}", "<|begin_of_text|>", "<|eot_id|>");
  EXPECT_EQ(chat.family(), ChatFamily::kLlama3);
  EXPECT_EQ(Text(chat.Render(kTalk, true, false)),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(chat.EndOfTurn(), "<|eot_id|>");
}

TEST(ChatTemplate, Llama2FoldsTheSystemIntoTheFirstTurn) {
  const ChatTemplate chat = ChatTemplate::Recognize("[INST] <<SYS>>", "<s>", "</s>");
  EXPECT_EQ(chat.family(), ChatFamily::kLlama2);
  EXPECT_EQ(Text(chat.Render(kTalk, true, false)),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi there [/INST] Hello! </s>"
            "<s>[INST] Who are you? [/INST]");
  EXPECT_EQ(Text(chat.Render({{"user", "  a  "}}, true, false)), "<s>[INST] a [/INST]");
  EXPECT_THROW(chat.Render({{"user", "a"}, {"user", "b"}}, true, false), std::invalid_argument);
  EXPECT_THROW(chat.Render({{"assistant", "a"}}, true, false), std::invalid_argument);
}

TEST(ChatTemplate, GemmaRefusesASystemTurnAndNamesTheModelRole) {
  const ChatTemplate chat = ChatTemplate::Recognize("<start_of_turn>", "<bos>", "<eos>");
  EXPECT_EQ(Text(chat.Render({{"user", "Hi "}, {"assistant", "Yo"}, {"user", "Q"}}, true, false)),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
            "<start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_THROW(chat.Render(kTalk, true, false), std::invalid_argument);
}

TEST(ChatTemplate, ContinueFinalMessageLeavesTheLastTurnOpen) {
  const ChatTemplate chat = ChatTemplate::ChatMl();
  EXPECT_EQ(Text(chat.Render({{"user", "Q"}, {"assistant", "The answer is"}}, false, true)),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nThe answer is");
  EXPECT_THROW(chat.Render({{"user", "Q"}}, false, true), std::invalid_argument);
  EXPECT_THROW(chat.Render({{"user", "Q"}, {"assistant", "A"}}, true, true), std::invalid_argument);
}

TEST(ChatTemplate, RefusesUnknownTemplatesAndRoles) {
  EXPECT_THROW(ChatTemplate::Recognize("{{ messages }}", "", ""), std::invalid_argument);
  EXPECT_THROW(ChatTemplate::Recognize("<|start_header_id|> Cutting Knowledge Date", "", ""),
               std::invalid_argument);
  EXPECT_THROW(ChatTemplate::ChatMl().Render({{"tool", "x"}}, true, false), std::invalid_argument);
  EXPECT_THROW(ChatTemplate::ChatMl().Render({}, true, false), std::invalid_argument);
}

using testing_util::ByteTokenizer;

TEST(ChatTemplate, SpecialTokensComeFromTemplateTextOnly) {
  const ChatTemplate chat = ChatTemplate::ChatMl();
  const SpecialTokens special = {{"<|im_start|>", 900}, {"<|im_end|>", 901}};
  const std::vector<int32_t> ids =
      EncodeChat(chat.Render({{"user", "a<|im_end|>"}}, true, false), ByteTokenizer(), special);
  std::vector<int32_t> want = {900};
  for (char c : std::string("user\na<|im_end|>")) want.push_back(c);  // content stays text
  want.push_back(901);
  want.push_back('\n');
  want.push_back(900);
  for (char c : std::string("assistant\n")) want.push_back(c);
  EXPECT_EQ(ids, want);
}

TEST(ChatTemplate, LoadsAFoldersTemplateTokensAndSpecials) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kvpool-chat-" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
             "chat_template": [{"name": "tool_use", "template": "x"},
                               {"name": "default", "template": "[INST] <<SYS>>"}],
             "added_tokens_decoder": {"1": {"content": "<s>", "special": true},
                                      "2": {"content": "</s>", "special": true},
                                      "7": {"content": "word", "special": false}}})";
  const ChatSetup setup = LoadChatSetup(dir.string());
  ASSERT_TRUE(setup.chat.has_value()) << setup.note;
  EXPECT_EQ(setup.chat->family(), ChatFamily::kLlama2);
  EXPECT_EQ(setup.bos, "<s>");
  EXPECT_EQ(setup.special, (SpecialTokens{{"<s>", 1}, {"</s>", 2}}));
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "{{ messages }}"})";
  EXPECT_FALSE(LoadChatSetup(dir.string()).chat.has_value());
  EXPECT_NE(LoadChatSetup(dir.string()).note.find("not one of the families"), std::string::npos);
  fs::remove(dir / "tokenizer_config.json");
  std::ofstream(dir / "chat_template.jinja") << "<start_of_turn>";
  EXPECT_EQ(LoadChatSetup(dir.string()).chat->family(), ChatFamily::kGemma);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvpool
