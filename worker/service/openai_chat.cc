// The chat API: see openai_chat.h.
#include "service/openai_chat.h"

#include <algorithm>

namespace kvpool::worker {
namespace {

constexpr size_t kMaxMessages = 1024;
constexpr size_t kMaxTemplateBytes = 64 << 10;

// OpenAI's message list as role and text; content parts of type "text" are joined
// with newlines, as vLLM joins them.
std::optional<ApiError> MessagesOf(const Json& body, std::vector<ChatMessage>* out) {
  const Json messages = body.value("messages", Json());
  if (!messages.is_array() || messages.empty()) {
    return Bad("messages", "messages must be a non-empty list of {\"role\", \"content\"}");
  }
  if (messages.size() > kMaxMessages) {
    return Bad("messages", "at most " + std::to_string(kMaxMessages) + " messages, got " +
                               std::to_string(messages.size()));
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& m = messages[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return Bad("messages", where + " must be an object with role and content");
    const Json role = m.value("role", Json());
    if (!role.is_string()) return Bad("messages", where + ".role must be a string");
    std::string name = role.get<std::string>();
    if (name == "developer") name = "system";  // OpenAI's newer name for it
    if (name == "tool" || name == "function" ||
        (m.contains("tool_calls") && !m["tool_calls"].is_null() && !m["tool_calls"].empty())) {
      return Bad("messages", where + ": tool and function calls are not supported by kvpool");
    }
    const Json content = m.value("content", Json());
    std::string text;
    if (content.is_string()) {
      text = content.get<std::string>();
    } else if (content.is_array()) {
      for (const Json& part : content) {
        if (!part.is_object() || part.value("type", Json()) != "text" ||
            !part.value("text", Json()).is_string()) {
          return Bad("messages", where +
                                     ".content: only parts of type \"text\" are supported "
                                     "(kvpool serves text models)");
        }
        if (!text.empty()) text += "\n";
        text += part["text"].get<std::string>();
      }
    } else if (!(content.is_null() && name == "assistant")) {
      return Bad("messages", where + ".content must be a string or a list of text parts");
    }
    out->push_back({std::move(name), std::move(text)});
  }
  return std::nullopt;
}

std::optional<ApiError> Flag(const Json& body, const char* field, bool fallback, bool* out) {
  const Json v = body.value(field, Json());
  if (v.is_null()) {
    *out = fallback;
    return std::nullopt;
  }
  if (!v.is_boolean()) return Bad(field, std::string(field) + " must be true or false");
  *out = v.get<bool>();
  return std::nullopt;
}

}  // namespace

std::optional<ApiError> RenderChat(const Json& body, const ChatContext& context,
                                   std::vector<int32_t>* ids, std::optional<ChatTemplate>* used) {
  if (!body.is_object()) return Bad("", "the body must be a JSON object");
  if (context.tokenizer == nullptr) {
    return Bad("messages", "this worker's model has no tokenizer, which chat needs");
  }
  std::optional<ChatTemplate> chat = context.setup->chat;
  const Json custom = body.value("chat_template", Json());
  if (!custom.is_null()) {
    if (!custom.is_string() || custom.get<std::string>().size() > kMaxTemplateBytes) {
      return Bad("chat_template", "chat_template must be a string of at most 64 KiB");
    }
    try {
      chat = ChatTemplate::Recognize(custom.get<std::string>(), context.setup->bos,
                                     context.setup->eos);
    } catch (const std::invalid_argument& e) {
      return Bad("chat_template", e.what());
    }
  }
  if (!chat) {
    return Bad("messages", "this model has no chat template kvpool renders (" +
                               context.setup->note +
                               "): use /v1/completions, or send a chat_template of a known "
                               "family");
  }
  bool add_generation_prompt = true, continue_final = false;
  if (auto e = Flag(body, "add_generation_prompt", true, &add_generation_prompt)) return e;
  if (auto e = Flag(body, "continue_final_message", false, &continue_final)) return e;
  std::vector<ChatMessage> messages;
  if (auto e = MessagesOf(body, &messages)) return e;
  try {
    *ids =
        EncodeChat(chat->Render(messages, add_generation_prompt && !continue_final, continue_final),
                   *context.tokenizer, context.setup->special);
  } catch (const std::invalid_argument& e) {
    return Bad("messages", e.what());
  }
  if (ids->empty()) return Bad("messages", "the conversation renders to no tokens");
  *used = std::move(chat);
  return std::nullopt;
}

std::optional<ApiError> ParseChat(const Json& body, const ChatContext& context,
                                  std::vector<v1::GenerateRequest>* requests, CompletionAsk* ask) {
  if (!body.is_object()) return Bad("", "the body must be a JSON object");
  if (body.contains("prompt")) return Bad("prompt", "chat takes messages, not a prompt");
  for (const char* field : {"tools", "functions"}) {
    if (body.contains(field) && !body[field].is_null() && !body[field].empty()) {
      return Bad(field, std::string(field) + " (tool calling) is not supported by kvpool");
    }
  }
  for (const char* field : {"tool_choice", "function_call"}) {
    if (body.contains(field) && !body[field].is_null() && body[field] != "none") {
      return Bad(field, std::string(field) + " (tool calling) is not supported by kvpool");
    }
  }
  if (body.contains("response_format") && !body["response_format"].is_null() &&
      body["response_format"] != Json{{"type", "text"}}) {
    return Bad("response_format", "only response_format {\"type\": \"text\"} is supported");
  }
  std::vector<int32_t> ids;
  std::optional<ChatTemplate> chat;
  if (auto e = RenderChat(body, context, &ids, &chat)) return e;

  Json completion = body;
  for (const char* field : {"messages", "max_completion_tokens", "logprobs", "top_logprobs",
                            "add_generation_prompt", "continue_final_message", "chat_template"}) {
    completion.erase(field);
  }
  completion["prompt"] = ids;
  Json max = body.value("max_completion_tokens", Json());
  const char* max_field = "max_completion_tokens";
  if (max.is_null()) {
    max = body.value("max_tokens", Json());
    max_field = "max_tokens";
  }
  if (max.is_null()) {  // vLLM's default: the rest of the context
    max = std::max<int64_t>(1, context.max_position - static_cast<int64_t>(ids.size()));
  } else if (!max.is_number_integer()) {
    return Bad(max_field, std::string(max_field) + " must be an integer");
  }
  completion["max_tokens"] = max;
  bool logprobs = false;
  if (auto e = Flag(body, "logprobs", false, &logprobs)) return e;
  const Json top = body.value("top_logprobs", Json());
  if (!top.is_null()) {
    if (!top.is_number_integer() || top.get<int64_t>() < 0 || top.get<int64_t>() > 5) {
      return Bad("top_logprobs", "top_logprobs must be an integer in [0, 5]");
    }
    if (!logprobs) return Bad("top_logprobs", "top_logprobs needs logprobs: true");
  }
  const int32_t top_n = top.is_null() ? 0 : top.get<int32_t>();
  if (logprobs) completion["logprobs"] = std::max(1, top_n);

  // The end of the assistant's turn stops generation.
  const std::string end = chat->EndOfTurn();
  const auto special = context.setup->special.find(end);
  if (special != context.setup->special.end()) {
    Json ids_stop = completion.value("stop_token_ids", Json::array());
    if (ids_stop.is_array()) {
      ids_stop.push_back(special->second);
      completion["stop_token_ids"] = ids_stop;
    }
  } else if (!end.empty()) {
    Json stop = completion.value("stop", Json::array());
    if (stop.is_string()) stop = Json::array({stop});
    if (stop.is_array()) {
      stop.push_back(end);
      completion["stop"] = stop;
    }
  }
  std::optional<ApiError> e =
      ParseCompletion(completion, context.served, context.model_name, requests, ask);
  if (e && e->param == "max_tokens") e->param = max_field;
  if (e && e->param == "prompt") e->param = "messages";
  ask->chat = true;
  ask->top_logprobs = logprobs ? top_n : -1;
  return e;
}

}  // namespace kvpool::worker
