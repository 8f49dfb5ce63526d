#!/usr/bin/env python3
"""Builds the external reference fixtures under tests/data/hf/ with Hugging Face
transformers (the library the original experiment used; nobody in this project
wrote it): tiny GPT-2 and Llama-with-GQA models with fixed seeds and random weights,
saved as Hugging Face folders, and Hugging Face's own logits and greedy continuations
(use_cache=True and use_cache=False) for a few prompts.

Run it where PyPI is reachable, in a virtualenv outside the repo:
    python3 -m venv /tmp/hf && /tmp/hf/bin/pip install torch==2.11.0 transformers==5.17.0 safetensors
    /tmp/hf/bin/python scripts/make-hf-fixtures.py --out tests/data/hf
(the committed fixtures were made on the GPU machine's PyPI torch + transformers; the
versions are recorded in each reference.safetensors' metadata). Everything runs on
the CPU in float32, so the output does not depend on the machine.
"""
import argparse
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

PROMPTS = [[7], [1, 5, 9, 200, 17], [42, 3, 999, 512, 77, 8, 300, 301, 302, 5, 6, 999]]
NEW_TOKENS = 12


def randomize(model, seed):
    """Random values for every parameter (biases and norms too), so that each one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            is_norm = "norm" in name or ".ln_" in name
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    return model


def reference(model, out_dir, note):
    model.eval()
    tensors = {}
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            cached = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True,
                                    pad_token_id=0, eos_token_id=None)
            uncached = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=False,
                                      pad_token_id=0, eos_token_id=None)
            full = cached[0]
            logits = model(full.unsqueeze(0), use_cache=False).logits[0]
        tensors[f"prompt{i}.ids"] = torch.tensor(prompt, dtype=torch.int64)
        tensors[f"prompt{i}.greedy_use_cache"] = cached[0, len(prompt):].clone()
        tensors[f"prompt{i}.greedy_no_cache"] = uncached[0, len(prompt):].clone()
        # logits[t] predicts token t+1 of prompt + greedy continuation.
        tensors[f"prompt{i}.logits"] = logits.float().contiguous()
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "new_tokens": str(NEW_TOKENS), "note": note}
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"), metadata=meta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/hf")
    ap.add_argument("--reference-dir", help="only write reference.safetensors for this existing "
                    "Hugging Face folder (e.g. one written by kvpool-export-hf)")
    args = ap.parse_args()
    if args.reference_dir:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(args.reference_dir, torch_dtype=torch.float32)
        reference(model, args.reference_dir, "folder written by kvpool-export-hf")
        print("wrote", os.path.join(args.reference_dir, "reference.safetensors"))
        return
    torch.manual_seed(0)
    torch.set_num_threads(4)

    gpt2_cfg = GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                          activation_function="gelu_new", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                          bos_token_id=0, eos_token_id=0)
    gpt2 = randomize(GPT2LMHeadModel(gpt2_cfg), 1234)
    d = os.path.join(args.out, "tiny-gpt2")
    os.makedirs(d, exist_ok=True)
    gpt2.save_pretrained(d, safe_serialization=True)
    reference(gpt2, d, "tiny GPT-2, fp32 weights")

    # The same GPT-2 stored in fp16: Hugging Face's logits from the rounded weights.
    d16 = os.path.join(args.out, "tiny-gpt2-fp16")
    os.makedirs(d16, exist_ok=True)
    gpt2.half().save_pretrained(d16, safe_serialization=True)
    reference(gpt2.float(), d16, "tiny GPT-2, weights stored in fp16, logits computed in fp32")

    llama_cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                            bos_token_id=1, eos_token_id=2, attention_dropout=0.0)
    llama = randomize(LlamaForCausalLM(llama_cfg), 5678)
    dl = os.path.join(args.out, "tiny-llama-gqa")
    os.makedirs(dl, exist_ok=True)
    llama.save_pretrained(dl, safe_serialization=True, max_shard_size="300KB")  # sharded + index
    reference(llama, dl, "tiny Llama, 4 query heads / 2 KV heads, sharded safetensors")
    for name in ("tiny-gpt2", "tiny-gpt2-fp16", "tiny-llama-gqa"):
        files = sorted(os.listdir(os.path.join(args.out, name)))
        print(name, files)


if __name__ == "__main__":
    main()
