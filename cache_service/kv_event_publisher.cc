// KvEventPublisher: see kv_event_publisher.h. The encoding follows msgspec's for vLLM's
// structs: EventBatch is array-like (ts, events, data_parallel_rank); the events are
// tagged structs, encoded as maps with the tag "type" first and every field without a
// default, nulls included, in declaration order (fields with defaults, such as
// extra_keys or group_idx, are left out as msgspec's omit_defaults leaves them).
#include "cache_service/kv_event_publisher.h"

#include <msgpack.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <chrono>
#include <iostream>
#include <iterator>

namespace kvpool::manager {
namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

void PackStr(Packer& pk, const std::string& s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

void PackHashes(Packer& pk, const std::vector<uint64_t>& hashes) {
  pk.pack_array(static_cast<uint32_t>(hashes.size()));
  for (uint64_t h : hashes) pk.pack_uint64(h);
}

std::string BigEndian(int64_t v) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(static_cast<uint64_t>(v) & 0xff);
    v = static_cast<int64_t>(static_cast<uint64_t>(v) >> 8);
  }
  return out;
}

int64_t FromBigEndian(const zmq::message_t& m) {
  uint64_t v = 0;
  const auto* p = static_cast<const unsigned char*>(m.data());
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return static_cast<int64_t>(v);
}

std::string TopicFor(const std::string& pattern, const std::string& tenant) {
  std::string topic = pattern;
  const std::string key = "{tenant}";
  for (size_t at = topic.find(key); at != std::string::npos; at = topic.find(key, at)) {
    topic.replace(at, key.size(), tenant);
    at += tenant.size();
  }
  return topic;
}

}  // namespace

std::string EncodeKvEventBatch(double ts, const std::vector<const KvEvent*>& events,
                               const std::string& medium, int32_t block_size) {
  msgpack::sbuffer buf;
  Packer pk(&buf);
  pk.pack_array(3);
  pk.pack_double(ts);
  pk.pack_array(static_cast<uint32_t>(events.size()));
  for (const KvEvent* e : events) {
    switch (e->kind) {
      case KvEvent::Kind::kBlockStored:
        pk.pack_map(8);
        PackStr(pk, "type");
        PackStr(pk, "BlockStored");
        PackStr(pk, "block_hashes");
        PackHashes(pk, e->block_hashes);
        PackStr(pk, "parent_block_hash");
        if (e->parent_block_hash) {
          pk.pack_uint64(*e->parent_block_hash);
        } else {
          pk.pack_nil();
        }
        PackStr(pk, "token_ids");
        pk.pack_array(static_cast<uint32_t>(e->token_ids.size()));
        for (int32_t t : e->token_ids) pk.pack_int32(t);
        PackStr(pk, "block_size");
        pk.pack_int32(block_size);
        PackStr(pk, "lora_id");
        pk.pack_nil();
        PackStr(pk, "medium");
        PackStr(pk, medium);
        PackStr(pk, "lora_name");
        pk.pack_nil();
        break;
      case KvEvent::Kind::kBlockRemoved:
        pk.pack_map(3);
        PackStr(pk, "type");
        PackStr(pk, "BlockRemoved");
        PackStr(pk, "block_hashes");
        PackHashes(pk, e->block_hashes);
        PackStr(pk, "medium");
        PackStr(pk, medium);
        break;
      case KvEvent::Kind::kAllBlocksCleared:
        pk.pack_map(1);
        PackStr(pk, "type");
        PackStr(pk, "AllBlocksCleared");
        break;
    }
  }
  pk.pack_int32(0);  // data_parallel_rank: one manager is one rank
  return std::string(buf.data(), buf.size());
}

struct KvEventPublisher::Sockets {
  zmq::context_t context{1};
  zmq::socket_t pub{context, zmq::socket_type::pub};
  std::unique_ptr<zmq::socket_t> replay;
};

StatusOr<std::unique_ptr<KvEventPublisher>> KvEventPublisher::Start(
    KvEventPublisherOptions options) {
  auto sockets = std::make_unique<Sockets>();
  const auto bind = [](zmq::socket_t& socket, const std::string& endpoint,
                       const char* flag) -> Status {
    try {
      socket.bind(endpoint);
    } catch (const zmq::error_t& e) {
      return InvalidArgument(std::string("cannot bind ") + flag + " '" + endpoint +
                             "': " + e.what() +
                             " (a ZMQ endpoint such as tcp://127.0.0.1:5557 or ipc:///path)");
    }
    return Status::Ok();
  };
  sockets->pub.set(zmq::sockopt::sndhwm, 100000);
  sockets->pub.set(zmq::sockopt::linger, 1000);
  KVPOOL_RETURN_IF_ERROR(bind(sockets->pub, options.endpoint, "--kv-events-endpoint"));
  if (!options.replay_endpoint.empty()) {
    sockets->replay = std::make_unique<zmq::socket_t>(sockets->context, zmq::socket_type::router);
    sockets->replay->set(zmq::sockopt::linger, 0);
    KVPOOL_RETURN_IF_ERROR(
        bind(*sockets->replay, options.replay_endpoint, "--kv-events-replay-endpoint"));
  }
  return std::unique_ptr<KvEventPublisher>(
      new KvEventPublisher(std::move(options), std::move(sockets)));
}

KvEventPublisher::KvEventPublisher(KvEventPublisherOptions options,
                                   std::unique_ptr<Sockets> sockets)
    : options_(std::move(options)), sockets_(std::move(sockets)) {
  thread_ = std::thread([this] { Run(); });
}

KvEventPublisher::~KvEventPublisher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void KvEventPublisher::Publish(std::vector<KvEvent> events) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= options_.max_queued_calls) {
      dropped_.fetch_add(1);
      return;
    }
    queue_.push_back(std::move(events));
  }
  wake_.notify_one();
}

void KvEventPublisher::Run() {
  for (;;) {
    std::deque<std::vector<KvEvent>> work;
    bool stop = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_for(lock, std::chrono::milliseconds(20),
                     [&] { return stopping_ || !queue_.empty(); });
      work.swap(queue_);
      stop = stopping_;
    }
    for (const std::vector<KvEvent>& events : work) Send(events);
    if (sockets_->replay) ServeReplay();
    if (stop) return;  // the queue was drained in this round
  }
}

void KvEventPublisher::Send(const std::vector<KvEvent>& events) {
  // One batch per tenant, each in the order the manager recorded.
  std::vector<std::pair<const std::string*, std::vector<const KvEvent*>>> groups;
  for (const KvEvent& e : events) {
    auto it = groups.begin();
    while (it != groups.end() && *it->first != e.tenant) ++it;
    if (it == groups.end()) it = groups.insert(groups.end(), {&e.tenant, {}});
    it->second.push_back(&e);
  }
  const double ts =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  for (const auto& [tenant, group] : groups) {
    std::string payload = EncodeKvEventBatch(ts, group, options_.medium, options_.block_size);
    const int64_t seq = next_seq_++;
    const std::string topic = TopicFor(options_.topic, *tenant);
    const std::string seq_bytes = BigEndian(seq);
    try {
      sockets_->pub.send(zmq::buffer(topic), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      sockets_->pub.send(zmq::buffer(seq_bytes),
                         zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      sockets_->pub.send(zmq::buffer(payload), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      std::cerr << "kvpool-manager: KV event batch " << seq << " not sent: " << e.what() << "\n";
    }
    sent_.fetch_add(1);
    if (sockets_->replay) {
      replay_.emplace_back(seq, std::move(payload));
      if (replay_.size() > options_.replay_batches) replay_.pop_front();
    }
  }
}

void KvEventPublisher::ServeReplay() {
  zmq::socket_t& router = *sockets_->replay;
  for (;;) {
    std::vector<zmq::message_t> request;
    zmq::recv_result_t got;
    try {
      got = zmq::recv_multipart(router, std::back_inserter(request), zmq::recv_flags::dontwait);
    } catch (const zmq::error_t& e) {
      std::cerr << "kvpool-manager: KV event replay request dropped: " << e.what() << "\n";
      return;
    }
    if (!got) return;  // nothing waiting
    // [identity, empty, start sequence]: anything else is not a replay request.
    if (request.size() != 3 || request[1].size() != 0 || request[2].size() != 8) continue;
    const int64_t start = FromBigEndian(request[2]);
    const std::string identity = request[0].to_string();
    const auto reply = [&](const std::string& seq, const std::string& payload) {
      router.send(zmq::buffer(identity), zmq::send_flags::sndmore);
      router.send(zmq::message_t(), zmq::send_flags::sndmore);
      router.send(zmq::buffer(seq), zmq::send_flags::sndmore);
      router.send(zmq::buffer(payload), zmq::send_flags::none);
    };
    try {
      for (const auto& [seq, payload] : replay_) {
        if (seq >= start) reply(BigEndian(seq), payload);
      }
      reply(BigEndian(-1), std::string());
    } catch (const zmq::error_t& e) {
      std::cerr << "kvpool-manager: KV event replay cut short: " << e.what() << "\n";
    }
  }
}

}  // namespace kvpool::manager
