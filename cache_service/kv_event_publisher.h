// KvEventPublisher: the manager's KV events (kv_events.h) on the wire as vLLM publishes
// its own (vllm/distributed/kv_events.py, the encoding of vLLM 0.32), so that routers
// built for vLLM read kvpool unchanged:
//  - a ZMQ PUB socket sends multipart messages [topic, sequence number (8 bytes,
//    big-endian, from 0), payload]; the payload is msgpack: an event batch, the array
//    [ts (float seconds since the epoch), events, data_parallel_rank (0)], each event a
//    map whose first key "type" names it: BlockStored {block_hashes, parent_block_hash,
//    token_ids, block_size, lora_id, medium, lora_name}, BlockRemoved {block_hashes,
//    medium}, AllBlocksCleared {} (nulls where kvpool has no value: no LoRA);
//  - an optional ZMQ ROUTER socket replays what a subscriber missed: a request
//    [empty frame, start sequence (8 bytes, big-endian)] gets every buffered
//    [empty, sequence, payload] from that number on, then [empty, -1, empty];
//  - one batch per tenant per manager call, on the topic the template gives with
//    "{tenant}" replaced by the tenant (so that a subscriber can be given one tenant's
//    events only).
// Publish only queues (the manager calls it under its lock); one thread of its own
// encodes, sends and answers replays, and owns both sockets. The queue and the replay
// buffer are bounded; batches over the queue's bound are dropped and counted.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cache_service/kv_events.h"
#include "common/status.h"

namespace kvpool::manager {

struct KvEventPublisherOptions {
  std::string endpoint;         // PUB, bound: tcp://127.0.0.1:5557 (or ipc://...)
  std::string replay_endpoint;  // ROUTER, bound; empty: no replay
  std::string topic = "kv@{tenant}@";
  std::string medium = "CPU";   // vLLM's medium: "CPU" (shared memory) or "GPU"
  int32_t block_size = 16;
  size_t replay_batches = 10000;   // batches kept for replay (vLLM's buffer_steps)
  size_t max_queued_calls = 100000;  // calls' events waiting for the thread
};

// The msgpack payload of one batch (exposed for tests).
std::string EncodeKvEventBatch(double ts, const std::vector<const KvEvent*>& events,
                               const std::string& medium, int32_t block_size);

class KvEventPublisher final : public KvEventSink {
 public:
  // Binds the sockets and starts the thread. INVALID_ARGUMENT for an endpoint ZMQ
  // cannot bind, naming it and why.
  static StatusOr<std::unique_ptr<KvEventPublisher>> Start(KvEventPublisherOptions options);
  ~KvEventPublisher() override;  // sends what is queued, then stops

  void Publish(std::vector<KvEvent> events) override;

  int64_t batches_sent() const { return sent_.load(); }
  int64_t calls_dropped() const { return dropped_.load(); }

 private:
  struct Sockets;
  KvEventPublisher(KvEventPublisherOptions options, std::unique_ptr<Sockets> sockets);
  void Run();
  void Send(const std::vector<KvEvent>& events);
  void ServeReplay();

  const KvEventPublisherOptions options_;
  std::unique_ptr<Sockets> sockets_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::vector<KvEvent>> queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                   // GUARDED_BY(mu_)
  std::deque<std::pair<int64_t, std::string>> replay_;  // the thread's only
  int64_t next_seq_ = 0;                                 // the thread's only
  std::atomic<int64_t> sent_{0}, dropped_{0};
  std::thread thread_;
};

}  // namespace kvpool::manager
