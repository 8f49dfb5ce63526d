// The OpenAI chat API as kvpool's gateway speaks it: a /v1/chat/completions body (the
// messages, max_completion_tokens, logprobs as a flag with top_logprobs, vLLM's
// add_generation_prompt / continue_final_message / chat_template) becomes the token
// ids of the conversation rendered by the model's chat template family
// (tokenizer/chat_template.h) and then the same GenerateRequest a completion would be,
// so every other field is checked once, by ParseCompletion. The turn's end marker
// stops generation: as a stop token where the tokenizer has it as a special token, as
// a stop string otherwise (the built-in models' ChatML). Tools, function calls and
// structured output are refused by name.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "service/openai_protocol.h"
#include "tokenizer/chat_template.h"

namespace kvpool::worker {

struct ChatContext {
  std::string served;      // the model id clients send
  std::string model_name;  // the config's name, also accepted
  const ChatSetup* setup = nullptr;
  const Tokenizer* tokenizer = nullptr;  // null: chat is refused
  int64_t max_position = 0;              // the model's context
};

// The conversation in `body` ("messages", add_generation_prompt, continue_final_message,
// chat_template) as token ids, and the template that rendered it.
std::optional<ApiError> RenderChat(const Json& body, const ChatContext& context,
                                   std::vector<int32_t>* ids, std::optional<ChatTemplate>* used);

// Parses a chat completion request into one GenerateRequest and `ask`.
std::optional<ApiError> ParseChat(const Json& body, const ChatContext& context,
                                  std::vector<v1::GenerateRequest>* requests, CompletionAsk* ask);

}  // namespace kvpool::worker
