#!/usr/bin/env python3
"""The original experiment's own baseline: Hugging Face transformers decoding the
same weights kvpool runs (a folder written by kvpool-export-hf), with
use_cache=False (recompute) and use_cache=True (past_key_values), timed the way
kvpool-engine-bench times kvpool: batch 1, a prompt of --context random token ids,
the median of --steps single decode steps after --warmup, plus generate()'s wall time
per new token for --new-tokens (what the original notebook measured). With
--serial-requests N: N requests of --serial-prompt-tokens random ids and
--serial-new-tokens greedy new tokens served one after another by generate() (how
transformers serves without a batching server), as output tokens per second.
Prints one JSON object. Needs torch and transformers (see docs/benchmarks.md)."""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_times(model, ids, use_cache, warmup, steps, device):
    times = []
    with torch.no_grad():
        out = model(ids, use_cache=use_cache)
        past = out.past_key_values if use_cache else None
        seq = ids
        nxt = out.logits[:, -1:].argmax(-1)
        for i in range(warmup + steps):
            sync(device)
            t0 = time.perf_counter()
            if use_cache:
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
            else:
                seq = torch.cat([seq, nxt], dim=1)
                out = model(seq, use_cache=False)
            nxt = out.logits[:, -1:].argmax(-1)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def generate_time(model, ids, use_cache, new_tokens, device):
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=use_cache, pad_token_id=0)
        sync(device)
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       use_cache=use_cache, pad_token_id=0)
        sync(device)
    return (time.perf_counter() - t0) / new_tokens


def serial_generate(model, n, prompt_tokens, new_tokens, device):
    g = torch.Generator().manual_seed(n)
    prompts = [torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=g).to(device)
               for _ in range(n)]
    with torch.no_grad():
        model.generate(prompts[0], max_new_tokens=4, do_sample=False, pad_token_id=0)
        sync(device)
        t0 = time.perf_counter()
        for ids in prompts:
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)
        sync(device)
    wall = time.perf_counter() - t0
    return {"requests": n, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "wall_s": wall, "output_tokens_per_s": n * new_tokens / wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--serial-requests", type=int, default=0)
    ap.add_argument("--serial-prompt-tokens", type=int, default=130)
    ap.add_argument("--serial-new-tokens", type=int, default=130)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(args.folder, torch_dtype=dtype).to(args.device).eval()
    g = torch.Generator().manual_seed(args.context)
    ids = torch.randint(0, model.config.vocab_size, (1, args.context), generator=g).to(args.device)
    result = {"folder": args.folder, "device": args.device, "dtype": args.dtype,
              "context": args.context, "steps": args.steps,
              "torch": torch.__version__, "transformers": __import__("transformers").__version__}
    for name, use_cache in (("use_cache_false", False), ("use_cache_true", True)):
        result[name] = {
            "decode_ms_per_token": 1e3 * step_times(model, ids, use_cache, args.warmup, args.steps, args.device),
            "generate_ms_per_token": 1e3 * generate_time(model, ids[:, :16], use_cache, args.new_tokens, args.device),
        }
    if args.serial_requests > 0:
        result["serial_generate"] = serial_generate(model, args.serial_requests, args.serial_prompt_tokens,
                                                    args.serial_new_tokens, args.device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
