// Chat templates by family: see chat_template.h. Each Render branch reproduces one
// canonical Hugging Face template; the comments quote the Jinja it stands for.
#include "tokenizer/chat_template.h"

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "tokenizer/file_io.h"
#include "tokenizer/unicode.h"

namespace kvpool {

const char kChatMlJinja[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

namespace {

using Part = ChatTemplate::Part;

bool Contains(std::string_view text, std::string_view what) {
  return text.find(what) != std::string_view::npos;
}

// Python's str.isspace() for one code point: what Jinja's trim and str.strip() remove.
bool IsPythonSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// str.strip() over the concatenation of parts[from..] (their text may be split anywhere).
void StripParts(std::vector<Part>* parts, size_t from) {
  // Leading whitespace.
  for (size_t i = from; i < parts->size(); ++i) {
    std::string& t = (*parts)[i].text;
    size_t pos = 0, keep = 0;
    while (pos < t.size()) {
      const char32_t c = unicode::DecodeUtf8(t, &pos);
      if (!IsPythonSpace(c)) break;
      keep = pos;
    }
    t.erase(0, keep);
    if (!t.empty()) break;
  }
  // Trailing whitespace: the end of the last non-space code point.
  for (size_t i = parts->size(); i-- > from;) {
    std::string& t = (*parts)[i].text;
    size_t pos = 0, end = 0;
    while (pos < t.size()) {
      const char32_t c = unicode::DecodeUtf8(t, &pos);
      if (!IsPythonSpace(c)) end = pos;
    }
    t.resize(end);
    if (!t.empty()) break;
  }
}

// The default system message a ChatML template writes as a literal when the
// conversation has none (Qwen's "<|im_start|>system\nYou are ...<|im_end|>"); "" when
// its system turns all come from the messages.
std::string DefaultSystem(std::string_view t) {
  for (const std::string_view marker :
       {std::string_view("<|im_start|>system\\n"), std::string_view("<|im_start|>system\n")}) {
    for (size_t at = t.find(marker); at != std::string_view::npos; at = t.find(marker, at + 1)) {
      const size_t begin = at + marker.size();
      const size_t end = t.find("<|im_end|>", begin);
      if (end == std::string_view::npos) continue;
      std::string_view literal = t.substr(begin, end - begin);
      if (literal.empty() || Contains(literal, "'") || Contains(literal, "\"") ||
          Contains(literal, "{")) {
        continue;  // the system text comes from an expression, not a literal
      }
      std::string out;  // Jinja string escapes the canonical templates use
      for (size_t i = 0; i < literal.size(); ++i) {
        if (literal[i] == '\\' && i + 1 < literal.size() && literal[i + 1] == 'n') {
          out += '\n';
          ++i;
        } else {
          out += literal[i];
        }
      }
      return out;
    }
  }
  return "";
}

void CheckAlternation(const std::vector<ChatMessage>& messages, size_t from) {
  for (size_t i = from; i < messages.size(); ++i) {
    const bool user = messages[i].role == "user";
    if (user != ((i - from) % 2 == 0) || (!user && messages[i].role != "assistant")) {
      throw std::invalid_argument(
          "Conversation roles must alternate user/assistant/user/assistant/... (message " +
          std::to_string(i) + " is '" + messages[i].role + "')");
    }
  }
}

}  // namespace

ChatTemplate ChatTemplate::Recognize(std::string_view t, std::string bos, std::string eos) {
  if (Contains(t, "<|im_start|>")) {
    ChatTemplate chat(ChatFamily::kChatMl, std::move(bos), std::move(eos));
    chat.default_system_ = DefaultSystem(t);
    return chat;
  }
  if (Contains(t, "<|start_header_id|>")) {
    if (Contains(t, "Cutting Knowledge Date") || Contains(t, "tools")) {
      throw std::invalid_argument(
          "this is a Llama-3.1-or-later chat template (a dated system header, tool calls), "
          "which kvpool does not render: only Llama-3's plain header template is");
    }
    return ChatTemplate(ChatFamily::kLlama3, std::move(bos), std::move(eos));
  }
  if (Contains(t, "<start_of_turn>")) {
    return ChatTemplate(ChatFamily::kGemma, std::move(bos), std::move(eos));
  }
  if (Contains(t, "[INST]") && Contains(t, "<<SYS>>")) {
    return ChatTemplate(ChatFamily::kLlama2, std::move(bos), std::move(eos));
  }
  throw std::invalid_argument(
      "the chat template is not one of the families kvpool renders without a Jinja engine "
      "(ChatML <|im_start|>, Llama-2 [INST] with <<SYS>>, Llama-3 <|start_header_id|>, "
      "Gemma <start_of_turn>): use /v1/completions with a prompt you format yourself");
}

ChatTemplate ChatTemplate::ChatMl() { return ChatTemplate(ChatFamily::kChatMl, "", ""); }

const char* ChatTemplate::FamilyName() const {
  switch (family_) {
    case ChatFamily::kChatMl:
      return "chatml";
    case ChatFamily::kLlama2:
      return "llama-2";
    case ChatFamily::kLlama3:
      return "llama-3";
    case ChatFamily::kGemma:
      return "gemma";
  }
  return "?";
}

std::string ChatTemplate::EndOfTurn() const {
  switch (family_) {
    case ChatFamily::kChatMl:
      return "<|im_end|>";
    case ChatFamily::kLlama3:
      return "<|eot_id|>";
    case ChatFamily::kGemma:
      return "<end_of_turn>";
    case ChatFamily::kLlama2:
      return eos_;
  }
  return eos_;
}

std::vector<Part> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt,
                                       bool continue_final_message) const {
  if (messages.empty()) throw std::invalid_argument("messages must not be empty");
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      throw std::invalid_argument("role '" + m.role +
                                  "' is not one the chat template renders (system, user, "
                                  "assistant)");
    }
  }
  if (!continue_final_message) return RenderAll(messages, add_generation_prompt);
  if (add_generation_prompt) {
    throw std::invalid_argument(
        "continue_final_message and add_generation_prompt cannot both be true");
  }
  if (messages.back().role != "assistant") {
    throw std::invalid_argument("continue_final_message needs a final assistant message");
  }
  // Render as usual, then cut after the final message's content (each message renders
  // exactly one content part, so it is the last one).
  std::vector<Part> parts = RenderAll(messages, false);
  size_t last = parts.size();
  while (last > 0 && !parts[last - 1].content) --last;
  parts.resize(last);
  return parts;
}

std::vector<Part> ChatTemplate::RenderAll(const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt) const {
  std::vector<Part> out;
  const auto tmpl = [&](std::string text) { out.push_back({std::move(text), false}); };
  const auto content = [&](const std::string& text) { out.push_back({text, true}); };
  switch (family_) {
    case ChatFamily::kChatMl:
      // {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' +
      // message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if
      // add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
      if (!default_system_.empty() && messages.front().role != "system") {
        tmpl("<|im_start|>system\n" + default_system_ + "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        tmpl("<|im_start|>" + m.role + "\n");
        content(m.content);
        tmpl("<|im_end|>\n");
      }
      if (add_generation_prompt) tmpl("<|im_start|>assistant\n");
      break;
    case ChatFamily::kLlama3:
      // bos_token, then per message '<|start_header_id|>' + role +
      // '<|end_header_id|>\n\n' + content | trim + '<|eot_id|>'; the generation prompt
      // '<|start_header_id|>assistant<|end_header_id|>\n\n'.
      tmpl(bos_);
      for (const ChatMessage& m : messages) {
        tmpl("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
        content(m.content);
        StripParts(&out, out.size() - 1);
        tmpl("<|eot_id|>");
      }
      if (add_generation_prompt) tmpl("<|start_header_id|>assistant<|end_header_id|>\n\n");
      break;
    case ChatFamily::kGemma:
      // bos_token; no system role; roles alternate; '<start_of_turn>' + ('model' for
      // assistant) + '\n' + content | trim + '<end_of_turn>\n'; the generation prompt
      // '<start_of_turn>model\n'.
      if (messages.front().role == "system") {
        throw std::invalid_argument("System role not supported (by this Gemma template)");
      }
      CheckAlternation(messages, 0);
      tmpl(bos_);
      for (const ChatMessage& m : messages) {
        tmpl("<start_of_turn>" + std::string(m.role == "assistant" ? "model" : m.role) + "\n");
        content(m.content);
        StripParts(&out, out.size() - 1);
        tmpl("<end_of_turn>\n");
      }
      if (add_generation_prompt) tmpl("<start_of_turn>model\n");
      break;
    case ChatFamily::kLlama2: {
      // A leading system message goes into the first user turn as '<<SYS>>\n' + system
      // + '\n<</SYS>>\n\n' + content; roles then alternate; a user turn is bos_token +
      // '[INST] ' + content.strip() + ' [/INST]', an assistant turn ' ' +
      // content.strip() + ' ' + eos_token. No generation prompt.
      const size_t from = messages.front().role == "system" ? 1 : 0;
      CheckAlternation(messages, from);
      for (size_t i = from; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user") {
          tmpl(bos_ + "[INST] ");
          const size_t begin = out.size();
          if (i == from && from == 1) {
            tmpl("<<SYS>>\n");
            content(messages.front().content);
            tmpl("\n<</SYS>>\n\n");
          }
          content(m.content);
          StripParts(&out, begin);
          tmpl(" [/INST]");
        } else {
          tmpl(" ");
          content(m.content);
          StripParts(&out, out.size() - 1);
          tmpl(" " + eos_);
        }
      }
      if (from == 1 && messages.size() == 1) {
        throw std::invalid_argument(
            "this Llama-2 template needs a user message after the system one");
      }
      break;
    }
  }
  return out;
}

std::vector<int32_t> EncodeChat(const std::vector<Part>& parts, const Tokenizer& tokenizer,
                                const SpecialTokens& special) {
  std::vector<int32_t> ids;
  std::string plain;
  const auto flush = [&] {
    if (plain.empty()) return;
    const std::vector<int32_t> more = tokenizer.Encode(plain);
    ids.insert(ids.end(), more.begin(), more.end());
    plain.clear();
  };
  for (const Part& part : parts) {
    if (part.content || special.empty()) {
      plain += part.text;
      continue;
    }
    std::string_view rest = part.text;
    while (!rest.empty()) {
      size_t best = std::string_view::npos, best_len = 0;
      int32_t best_id = -1;
      for (const auto& [text, id] : special) {
        if (text.empty()) continue;
        const size_t at = rest.find(text);
        if (at < best || (at == best && at != std::string_view::npos && text.size() > best_len)) {
          best = at;
          best_len = text.size();
          best_id = id;
        }
      }
      if (best == std::string_view::npos) {
        plain += rest;
        break;
      }
      plain += rest.substr(0, best);
      flush();
      ids.push_back(best_id);
      rest.remove_prefix(best + best_len);
    }
  }
  flush();
  return ids;
}

namespace {

// A token entry of tokenizer_config.json: a string or an AddedToken object.
std::string TokenText(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.value("content", nlohmann::json()).is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

nlohmann::json ReadJson(const std::string& path, std::string_view what) {
  if (!FileExists(path)) return nlohmann::json();
  nlohmann::json j = nlohmann::json::parse(ReadTokenizerFile(path, what), nullptr, false);
  if (j.is_discarded()) throw std::runtime_error(path + ": malformed JSON");
  return j;
}

}  // namespace

ChatSetup LoadChatSetup(const std::string& dir) {
  ChatSetup setup;
  std::string text;
  try {
    const nlohmann::json config = ReadJson(dir + "/tokenizer_config.json", "tokenizer config");
    if (config.is_object()) {
      setup.bos = TokenText(config.value("bos_token", nlohmann::json()));
      setup.eos = TokenText(config.value("eos_token", nlohmann::json()));
      const nlohmann::json chat = config.value("chat_template", nlohmann::json());
      if (chat.is_string()) text = chat.get<std::string>();
      if (chat.is_array()) {
        for (const nlohmann::json& entry : chat) {
          if (entry.is_object() && entry.value("name", "") == "default" &&
              entry.value("template", nlohmann::json()).is_string()) {
            text = entry["template"].get<std::string>();
          }
        }
      }
      const nlohmann::json added = config.value("added_tokens_decoder", nlohmann::json());
      if (added.is_object()) {
        for (const auto& [id, token] : added.items()) {
          if (!token.is_object() || !token.value("special", false)) continue;
          const std::string content = TokenText(token);
          if (!content.empty()) setup.special[content] = std::stoi(id);
        }
      }
    }
    if (setup.special.empty()) {
      const nlohmann::json tok = ReadJson(dir + "/tokenizer.json", "tokenizer.json");
      if (tok.is_object() && tok.value("added_tokens", nlohmann::json()).is_array()) {
        for (const nlohmann::json& token : tok["added_tokens"]) {
          if (token.is_object() && token.value("special", false) &&
              token.value("id", nlohmann::json()).is_number_integer()) {
            setup.special[TokenText(token)] = token["id"].get<int32_t>();
          }
        }
      }
    }
    if (text.empty() && FileExists(dir + "/chat_template.jinja")) {
      text = ReadTokenizerFile(dir + "/chat_template.jinja", "chat template");
    }
    if (text.empty()) {
      const nlohmann::json j = ReadJson(dir + "/chat_template.json", "chat template");
      if (j.is_object() && j.value("chat_template", nlohmann::json()).is_string()) {
        text = j["chat_template"].get<std::string>();
      }
    }
  } catch (const std::exception& e) {
    setup.note = e.what();
    return setup;
  }
  if (text.empty()) {
    setup.note =
        "the model folder has no chat template (tokenizer_config.json chat_template, "
        "chat_template.jinja or chat_template.json)";
    return setup;
  }
  try {
    setup.chat = ChatTemplate::Recognize(text, setup.bos, setup.eos);
  } catch (const std::invalid_argument& e) {
    setup.note = e.what();
  }
  return setup;
}

}  // namespace kvpool
