// Chat templates without a Jinja engine (Debian has none for C++): a model folder's
// template text is recognised as one of the well-known families (ChatML, Llama-2's
// [INST]/<<SYS>>, Llama-3's header tokens, Gemma's turns), as llama.cpp did before it
// had a Jinja engine, and rendered natively, to exactly the text the family's
// canonical template renders under Hugging Face's Jinja settings (trim_blocks,
// lstrip_blocks). Other templates are refused at load with a message naming the
// families kvpool knows. Built-in random-weight models use plain ChatML.
//
// A rendering is a list of parts, template text and message content apart. Encoding
// maps a special token's text to its id only inside template text: the content of a
// message is always ordinary text, so a user cannot forge a turn by writing
// "<|im_end|>" (Hugging Face's apply_chat_template would parse it as the token; this
// is the one deliberate difference from its output).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kvpool {

enum class ChatFamily { kChatMl, kLlama2, kLlama3, kGemma };

// The canonical ChatML template's Jinja text, as exported folders carry it (the
// built-in models' chat template).
extern const char kChatMlJinja[];

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

// Added tokens marked special, by their text.
using SpecialTokens = std::unordered_map<std::string, int32_t>;

class ChatTemplate {
 public:
  struct Part {
    std::string text;
    bool content = false;  // a message's content (never parsed for special tokens)
  };

  // The family of `template_text`; throws std::invalid_argument saying why it is not
  // one kvpool renders. bos/eos are the tokenizer's bos_token/eos_token text.
  static ChatTemplate Recognize(std::string_view template_text, std::string bos, std::string eos);
  // Plain ChatML, the built-in models' template (no BOS).
  static ChatTemplate ChatMl();

  ChatFamily family() const { return family_; }
  const char* FamilyName() const;
  // The marker that ends an assistant turn ("<|im_end|>", "<|eot_id|>",
  // "<end_of_turn>", or the EOS text for Llama-2): a stop token where it is special.
  std::string EndOfTurn() const;

  // The conversation as the family's template renders it. add_generation_prompt opens
  // the assistant's turn; continue_final_message leaves the final (assistant) message
  // open so the model continues it (vLLM's option). Throws std::invalid_argument for a
  // conversation the template refuses (roles out of order, a role it has no place for).
  std::vector<Part> Render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                           bool continue_final_message) const;

 private:
  ChatTemplate(ChatFamily family, std::string bos, std::string eos)
      : family_(family), bos_(std::move(bos)), eos_(std::move(eos)) {}
  std::vector<Part> RenderAll(const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt) const;

  ChatFamily family_;
  std::string bos_, eos_;
  std::string default_system_;  // ChatML templates that add a system turn (Qwen's)
};

// The parts' token ids: template text split at special tokens' text (their ids), the
// rest, content included, through `tokenizer` as ordinary text (adjacent pieces joined
// first, as a tokenizer given the whole rendered text would see them). No BOS is added
// beyond what the template wrote.
std::vector<int32_t> EncodeChat(const std::vector<ChatTemplate::Part>& parts,
                                const Tokenizer& tokenizer, const SpecialTokens& special);

// What a model folder says about chat: its template (tokenizer_config.json's
// "chat_template", a string or the list entry named "default", else
// chat_template.jinja or chat_template.json), bos_token/eos_token, and its special
// tokens (tokenizer_config.json's added_tokens_decoder, else tokenizer.json's
// added_tokens). `chat` is empty with `note` saying why when there is no template or
// kvpool does not render it.
struct ChatSetup {
  std::optional<ChatTemplate> chat;
  std::string note;
  SpecialTokens special;
  std::string bos, eos;
};
ChatSetup LoadChatSetup(const std::string& dir);

}  // namespace kvpool
