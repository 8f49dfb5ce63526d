// `kvpool pin`, `kvpool pins`, `kvpool unpin`, `kvpool reset-prefix-cache`: the prefix
// cache's controls. `pin` prefills a prompt on a worker and pins its full blocks for a
// TTL (optionally with a retention priority for when the pin ends); `pins` lists the
// caller's tenant's pins; `unpin` ends one; `reset-prefix-cache` asks a manager (an
// operator's token) to end every pin and evict every cached block. One line per pin or
// result on stdout; errors on stderr with exit code 1.
#include <cstdio>

#include "client/cli/cli_util.h"

namespace kvpool::cli {
namespace {

struct PinFlags {
  ConnectionFlags connection;
  std::string prompt;
  std::vector<int32_t> token_ids;
  double ttl_s = 300;
  int32_t priority = -1;
  int64_t pin_id = 0;
};

void PrintPin(const v1::PrefixPin& pin) {
  std::printf("pin %lld: %lld tokens, expires in %.1f s", static_cast<long long>(pin.pin_id()),
              static_cast<long long>(pin.pinned_tokens()), pin.expires_in_ms() / 1000.0);
  if (pin.has_priority()) std::printf(", then retention priority %d", pin.priority());
  std::printf("\n");
}

int RunPin(const PinFlags& flags) {
  StatusOr<ClientOptions> options = MakeClientOptions(flags.connection);
  if (!options.ok()) return ReportError("pin", options.status());
  Client client(std::move(*options));
  v1::PinPromptRequest request;
  request.set_prompt(flags.prompt);
  request.mutable_token_ids()->Add(flags.token_ids.begin(), flags.token_ids.end());
  request.mutable_retention()->set_pin_ttl_ms(static_cast<int64_t>(flags.ttl_s * 1000));
  if (flags.priority >= 0) request.mutable_retention()->set_priority(flags.priority);
  StatusOr<v1::PinPromptResponse> pinned = client.PinPrompt(request);
  if (!pinned.ok()) return ReportError("pin", pinned.status());
  PrintPin(pinned->pin());
  std::printf("prompt %lld tokens, %lld of them already cached\n",
              static_cast<long long>(pinned->prompt_tokens()),
              static_cast<long long>(pinned->cached_tokens()));
  return 0;
}

int RunPins(const PinFlags& flags) {
  StatusOr<ClientOptions> options = MakeClientOptions(flags.connection);
  if (!options.ok()) return ReportError("pins", options.status());
  Client client(std::move(*options));
  StatusOr<v1::ListPinsForClientResponse> pins = client.ListPins();
  if (!pins.ok()) return ReportError("pins", pins.status());
  if (pins->pins().empty()) std::printf("no pins\n");
  for (const v1::PrefixPin& pin : pins->pins()) PrintPin(pin);
  return 0;
}

int RunUnpin(const PinFlags& flags) {
  StatusOr<ClientOptions> options = MakeClientOptions(flags.connection);
  if (!options.ok()) return ReportError("unpin", options.status());
  Client client(std::move(*options));
  const Status status = client.Unpin(flags.pin_id);
  if (!status.ok()) return ReportError("unpin", status);
  std::printf("unpinned %lld\n", static_cast<long long>(flags.pin_id));
  return 0;
}

int RunReset(const PinFlags& flags) {
  StatusOr<ClientOptions> options = MakeClientOptions(flags.connection);
  if (!options.ok()) return ReportError("reset-prefix-cache", options.status());
  Client client(std::move(*options));
  StatusOr<v1::ResetPrefixCacheResponse> reset = client.ResetPrefixCache();
  if (!reset.ok()) return ReportError("reset-prefix-cache", reset.status());
  std::printf("evicted %lld cached blocks, dropped %lld pins\n",
              static_cast<long long>(reset->evicted_blocks()),
              static_cast<long long>(reset->dropped_pins()));
  return 0;
}

}  // namespace

void AddPinCommands(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<PinFlags>();
  CLI::App* pin = app.add_subcommand("pin", "prefill a prompt and pin its blocks in the pool");
  AddConnectionFlags(pin, &flags->connection);
  pin->add_option("--prompt", flags->prompt, "prompt text (tokenized by the worker)");
  pin->add_option("--token-ids", flags->token_ids, "prompt as token ids: 1,2,3")->delimiter(',');
  pin->add_option("--ttl-s", flags->ttl_s, "how long the pin lasts")
      ->check(CLI::Range(0.001, 30.0 * 86400))
      ->capture_default_str();
  pin->add_option("--retention-priority", flags->priority,
                  "0..100: the blocks' eviction priority once the pin ends")
      ->check(CLI::Range(0, 100));
  pin->callback([flags, exit_code] { *exit_code = RunPin(*flags); });

  CLI::App* pins = app.add_subcommand("pins", "list this tenant's prefix pins");
  AddConnectionFlags(pins, &flags->connection);
  pins->callback([flags, exit_code] { *exit_code = RunPins(*flags); });

  CLI::App* unpin = app.add_subcommand("unpin", "end one of this tenant's prefix pins");
  AddConnectionFlags(unpin, &flags->connection);
  unpin->add_option("pin_id", flags->pin_id, "the pin's id (kvpool pins)")->required();
  unpin->callback([flags, exit_code] { *exit_code = RunUnpin(*flags); });

  CLI::App* reset = app.add_subcommand(
      "reset-prefix-cache", "a manager (--server): end every pin, evict every cached block");
  AddConnectionFlags(reset, &flags->connection);
  reset->callback([flags, exit_code] { *exit_code = RunReset(*flags); });
}

}  // namespace kvpool::cli
