// CheckGeneration: the one check of what a caller asks the model to generate (the
// prompt's tokens against the vocabulary, room in the context, max_tokens, the
// sampling parameters, stop strings needing a tokenizer). Every API calls it at its
// edge: the worker's gRPC service (worker_service.cc, after mapping the wire's fields)
// and the offline engine the engine tools drive (OfflineEngine::AddSequence); the
// engine itself only asserts it. Block
// tables, cached prefixes and swapped K/V are the scheduler's, not a caller's: the
// engine checks those itself. Messages name the fields as the API calls them.
#pragma once

#include <string>

#include "common/model_config.h"
#include "common/status.h"
#include "engine/engine.h"

namespace kvpool {

// The API's names for the checked fields, for the messages.
struct RequestFieldNames {
  std::string prompt = "prompt";  // token i is named prompt[i]
  std::string sampling;           // prefix of the sampling fields, e.g. "sampling."
};

Status CheckGeneration(const GenerationRequest& request, const ModelConfig& config,
                       bool has_tokenizer, const RequestFieldNames& names = {});

}  // namespace kvpool
