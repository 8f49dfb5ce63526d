// KV-cache events: what the manager's prefix cache gained and lost, in the order it
// happened, for routers that place requests by prefix (vLLM's KV events: Dynamo's KV
// router, llm-d's prefix-cache scorer). The core records them under its lock at the
// two places the prefix index changes (a committed full block becomes shareable; a
// cached block is evicted) and hands each call's events to a KvEventSink; the sink
// (kv_event_publisher.h: ZMQ + msgpack) encodes and sends them on its own thread.
// Nothing here encodes, blocks or allocates per block beyond the event itself, and
// with no sink the core records nothing.
//
// Hashes on the wire: the low 64 bits (`BlockHash::lo`) of our 128-bit block hash.
// It chains SipHash-128 over (parent hash, the block's token ids), and the first
// block's extra key is the tenant's salt (block_hash.h), so equal token ids of two
// tenants never give equal hashes and a router cannot rebuild our keys from token ids:
// it must take the hashes from these events.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvpool::manager {

struct KvEvent {
  enum class Kind { kBlockStored, kBlockRemoved, kAllBlocksCleared };
  Kind kind = Kind::kBlockStored;
  std::string tenant;                  // whose blocks (the topic); empty for kAllBlocksCleared
  std::vector<uint64_t> block_hashes;  // stored: in token order; removed: any order
  // kBlockStored only: the hash of the block before the first (none for a sequence's
  // first block), and the token ids of every stored block, in order.
  std::optional<uint64_t> parent_block_hash;
  std::vector<int32_t> token_ids;
};

class KvEventSink {
 public:
  virtual ~KvEventSink() = default;
  // One core call's events, in order. Called with the core's lock held: must not block
  // (queue and return) and must not call back into the core.
  virtual void Publish(std::vector<KvEvent> events) = 0;
};

}  // namespace kvpool::manager
