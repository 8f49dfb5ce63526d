#!/usr/bin/env python3
"""KV-cache events from a real kvpool-manager, read by a subscriber nobody here wrote
the wire code of (pyzmq and msgpack, Debian's python3-zmq and python3-msgpack):

  - a manager (tiny-gpt2 geometry, a small pool so that blocks get evicted, two
    tenants by token) with --kv-events-endpoint and --kv-events-replay-endpoint, a
    kvpool-worker, and `kvpool loadgen` traffic of both tenants with shared prefixes;
  - every message is [topic, 8-byte big-endian sequence number, msgpack payload],
    sequence numbers from 0 without gaps, and every payload passes a schema check of
    vLLM 0.32's encoding (the batch an array [ts, events, data_parallel_rank]; each
    event a map, "type" first, the fields in vLLM's order, nulls included);
  - the set of (tenant, block hash) rebuilt from the events alone equals the
    manager's prefix index (/api/prefix-index) once traffic stops, and evictions were
    part of it;
  - a subscriber to one tenant's topic gets that tenant's batches only;
  - a subscriber that starts late rebuilds the same set through the replay socket.

Exit 77 (ctest: skipped) when pyzmq or msgpack is missing.
"""
import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

try:
    import msgpack
    import zmq
except ImportError as e:
    print(f"python3-zmq / python3-msgpack missing ({e}): skipping", file=sys.stderr)
    sys.exit(77)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kvpool_process import Process  # noqa: E402

BLOCK_SIZE = 4
U64 = 1 << 64
FIELDS = {
    "BlockStored": ["type", "block_hashes", "parent_block_hash", "token_ids", "block_size",
                    "lora_id", "medium", "lora_name"],
    "BlockRemoved": ["type", "block_hashes", "medium"],
    "AllBlocksCleared": ["type"],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_payload(payload):
    """Decodes one batch and checks it against vLLM 0.32's encoding; returns its events."""
    batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    assert isinstance(batch, list) and len(batch) == 3, f"batch is not [ts, events, rank]: {batch}"
    ts, events, rank = batch
    assert isinstance(ts, float) and abs(ts - time.time()) < 3600, f"ts {ts!r}"
    assert rank == 0, f"data_parallel_rank {rank!r}"
    assert isinstance(events, list) and events, "a batch without events"
    for e in events:
        assert isinstance(e, dict), f"event is not a map: {e!r}"
        kind = e.get("type")
        assert kind in FIELDS, f"unknown event type {kind!r}"
        assert list(e.keys()) == FIELDS[kind], f"{kind} fields {list(e.keys())}"
        if kind == "AllBlocksCleared":
            continue
        hashes = e["block_hashes"]
        assert isinstance(hashes, list) and hashes, f"{kind} without hashes"
        assert all(isinstance(h, int) and 0 <= h < U64 for h in hashes), hashes
        assert e["medium"] == "CPU", e["medium"]
        if kind == "BlockStored":
            parent = e["parent_block_hash"]
            assert parent is None or (isinstance(parent, int) and 0 <= parent < U64), parent
            assert e["block_size"] == BLOCK_SIZE
            assert len(e["token_ids"]) == BLOCK_SIZE * len(hashes), "token_ids do not fill the blocks"
            assert all(isinstance(t, int) for t in e["token_ids"])
            assert e["lora_id"] is None and e["lora_name"] is None
    return events


def tenant_of(topic):
    # The default topic template: kv@{tenant}@
    assert topic.startswith(b"kv@") and topic.endswith(b"@"), topic
    return topic[3:-1].decode()


class Mirror:
    """The cache as the events describe it: (tenant, hash) pairs."""

    def __init__(self):
        self.blocks = set()
        self.stored = self.removed = 0

    def apply(self, topic, events):
        tenant = tenant_of(topic)
        for e in events:
            if e["type"] == "AllBlocksCleared":
                self.blocks = {b for b in self.blocks if b[0] != tenant}
                continue
            for h in e["block_hashes"]:
                if e["type"] == "BlockStored":
                    assert (tenant, h) not in self.blocks, f"stored twice: {tenant} {h}"
                    self.blocks.add((tenant, h))
                    self.stored += 1
                else:
                    assert (tenant, h) in self.blocks, f"removed but never stored: {tenant} {h}"
                    self.blocks.remove((tenant, h))
                    self.removed += 1


class Subscriber:
    """A SUB socket on its own thread, checking sequence numbers and payloads."""

    def __init__(self, context, endpoint, prefix=b""):
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, prefix)
        self.socket.connect(endpoint)
        self.messages = []  # (topic, seq, events)
        self.errors = []
        self.last_at = time.time()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while self.running:
            if not poller.poll(100):
                continue
            try:
                frames = self.socket.recv_multipart()
                assert len(frames) == 3, f"{len(frames)} frames"
                topic, seq_bytes, payload = frames
                assert len(seq_bytes) == 8
                seq = struct.unpack(">q", seq_bytes)[0]
                self.messages.append((topic, seq, check_payload(payload)))
                self.last_at = time.time()
            except Exception as e:  # reported by the main thread
                self.errors.append(repr(e))

    def close(self):
        self.running = False
        self.thread.join()
        self.socket.close(0)


def replay(context, endpoint, start):
    """Asks the ROUTER for every batch from `start` on; returns [(seq, events)]."""
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send_multipart([b"", struct.pack(">q", start)])
    out = []
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    while True:
        assert poller.poll(10000), "replay: no answer within 10 s"
        empty, seq_bytes, payload = dealer.recv_multipart()
        assert empty == b""
        seq = struct.unpack(">q", seq_bytes)[0]
        if seq == -1:
            assert payload == b""
            break
        out.append((seq, check_payload(payload)))
    dealer.close(0)
    return out


def prefix_index(http, token):
    request = urllib.request.Request(f"http://{http}/api/prefix-index",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        body = json.load(r)
    return {(b["tenant"], b["hash"]) for b in body["blocks"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    args = parser.parse_args()
    binary = lambda name: os.path.join(args.bin_dir, name)
    tmp = tempfile.mkdtemp(prefix="kvpool-kv-events-")
    tokens = os.path.join(tmp, "tokens")
    with open(tokens, "w") as f:
        f.write("op-token operator worker\ntok-a tenant-a client\ntok-b tenant-b client\n")
    for name, token in (("op", "op-token"), ("a", "tok-a"), ("b", "tok-b")):
        with open(os.path.join(tmp, name), "w") as f:
            f.write(token + "\n")
    pub = f"tcp://127.0.0.1:{free_port()}"
    router = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    procs = []
    try:
        manager = Process([binary("kvpool-manager"), "--listen", "127.0.0.1:0", "--http",
                           "127.0.0.1:0", "--model", "tiny-gpt2", "--block-size", str(BLOCK_SIZE),
                           "--num-blocks", "64", "--auth-token-file", tokens,
                           "--kv-events-endpoint", pub, "--kv-events-replay-endpoint", router])
        procs.append(manager)
        grpc_address = manager.wait_for("kvpool-manager listening on ")
        http = manager.wait_for("http on ")
        everyone = Subscriber(context, pub)
        only_a = Subscriber(context, pub, b"kv@tenant-a@")
        worker = Process([binary("kvpool-worker"), "--manager", grpc_address, "--listen",
                          "127.0.0.1:0", "--model", "tiny-gpt2", "--threads", "1",
                          "--token-file", os.path.join(tmp, "op")])
        procs.append(worker)
        worker_address = worker.wait_for("kvpool-worker listening on ")
        time.sleep(0.5)  # the SUB sockets' subscriptions reach the PUB socket

        def loadgen(tenant, seed, shared):
            subprocess.run([binary("kvpool"), "loadgen", "--server", worker_address,
                            "--token-file", os.path.join(tmp, tenant), "--concurrency", "2",
                            "--requests", "16", "--prompt-tokens", "40", "--shared-prefix-tokens",
                            str(shared), "--max-tokens", "6", "--mode", "paged", "--seed", str(seed),
                            "--vocab", "1000"], check=True, stdout=subprocess.DEVNULL)

        for tenant, seed, shared in (("a", 1, 24), ("b", 2, 24), ("a", 3, 32), ("b", 4, 8),
                                     ("a", 1, 24)):
            loadgen(tenant, seed, shared)
        # Quiet: no message for a second.
        while time.time() - everyone.last_at < 1.0:
            time.sleep(0.2)
        everyone.close()
        only_a.close()
        assert not everyone.errors, everyone.errors[:3]
        assert not only_a.errors, only_a.errors[:3]

        seqs = [seq for _, seq, _ in everyone.messages]
        assert seqs == list(range(len(seqs))), f"sequence numbers not 0.. without gaps: {seqs[:20]}"
        mirror = Mirror()
        for topic, _, events in everyone.messages:
            mirror.apply(topic, events)
        index = prefix_index(http, "op-token")
        assert mirror.removed > 0, "the workload evicted nothing: the test needs evictions"
        assert {tenant_of(topic) for topic, _, _ in everyone.messages} == {"tenant-a", "tenant-b"}
        assert index, "the prefix index is empty after the workload"
        assert mirror.blocks == index, (
            f"events say {len(mirror.blocks)} blocks, the index holds {len(index)}: "
            f"{len(mirror.blocks - index)} only in the events, {len(index - mirror.blocks)} only "
            "in the index")
        topics = {topic for topic, _, _ in only_a.messages}
        assert topics == {b"kv@tenant-a@"}, f"tenant-a's subscriber got {topics}"

        late = replay(context, router, 0)
        assert [seq for seq, _ in late] == seqs, "the replay does not hold every batch"
        rebuilt = Mirror()
        for (topic, _, _), (_, events) in zip(everyone.messages, late):
            rebuilt.apply(topic, events)
        assert rebuilt.blocks == index
        tail = replay(context, router, len(seqs) - 2)
        assert [seq for seq, _ in tail] == seqs[-2:]
        # A malformed replay request is ignored; the socket still answers.
        bad = context.socket(zmq.DEALER)
        bad.connect(router)
        bad.send_multipart([b"", b"xyz"])
        bad.close(0)
        assert [seq for seq, _ in replay(context, router, len(seqs) - 1)] == seqs[-1:]
        print(f"kv events: {len(seqs)} batches, {mirror.stored} blocks stored, {mirror.removed} "
              f"removed, {len(index)} in the index; tenant-a's subscriber got "
              f"{len(only_a.messages)} batches")
    finally:
        for p in reversed(procs):
            p.stop()
        context.term()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
