#!/usr/bin/env python3
"""Makes tests/data/hf/tiny-chat: a Hugging Face GPT-2 folder with a chat template, for
the chat API's tests. The geometry is kvpool's built-in tiny-gpt2 (2 layers, 4 heads of
16, so a manager started with --model tiny-gpt2 serves its KV), with a 1000-token
byte-level BPE trained by Hugging Face `tokenizers` on this repository's docs, the
special tokens of every chat family kvpool renders, ChatML as the chat template, and
seeded random fp16 weights (written as safetensors with the standard library). The
output is checked in; run again only to change it.

Usage (the external tests' venv has `tokenizers`):
  build/external-venv/bin/python3 tests/data/hf/make_tiny_chat.py"""
import glob
import json
import os
import random
import struct
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "external"))
OUT = os.path.join(HERE, "tiny-chat")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>",
            "<end_of_turn>", "<s>", "</s>", "<bos>", "<eos>"]
VOCAB, EMBD, LAYERS, HEADS, POSITIONS = 1000, 64, 2, 4, 512
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    files = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [
        os.path.join(ROOT, "README.md")]
    tok.train(files, trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    tok.model.save(OUT)  # vocab.json and merges.txt
    return tok


def write_weights(path):
    rng = random.Random(7)
    inner = 4 * EMBD
    shapes = {"transformer.wte.weight": [VOCAB, EMBD], "transformer.wpe.weight": [POSITIONS, EMBD],
              "transformer.ln_f.weight": [EMBD], "transformer.ln_f.bias": [EMBD]}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": [EMBD], p + "ln_1.bias": [EMBD],
                       p + "attn.c_attn.weight": [EMBD, 3 * EMBD], p + "attn.c_attn.bias": [3 * EMBD],
                       p + "attn.c_proj.weight": [EMBD, EMBD], p + "attn.c_proj.bias": [EMBD],
                       p + "ln_2.weight": [EMBD], p + "ln_2.bias": [EMBD],
                       p + "mlp.c_fc.weight": [EMBD, inner], p + "mlp.c_fc.bias": [inner],
                       p + "mlp.c_proj.weight": [inner, EMBD], p + "mlp.c_proj.bias": [EMBD]})
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(shapes):
        count = 1
        for d in shapes[name]:
            count *= d
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            values = [1.0] * count
        else:
            values = [rng.gauss(0.0, 0.2) for _ in range(count)]
        blob = struct.pack(f"<{count}e", *values)
        header[name] = {"dtype": "F16", "shape": shapes[name], "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = train_tokenizer()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
              "activation_function": "gelu_new", "n_embd": EMBD, "n_head": HEADS,
              "n_layer": LAYERS, "n_positions": POSITIONS, "n_inner": None,
              "layer_norm_epsilon": 1e-5, "vocab_size": VOCAB, "tie_word_embeddings": True,
              "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"],
              "torch_dtype": "float16"}
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": POSITIONS,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "added_tokens_decoder": {str(ids[s]): {"content": s, "special": True, "lstrip": False,
                                               "rstrip": False, "normalized": False,
                                               "single_word": False} for s in SPECIALS},
        "chat_template": CHATML}
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=2)
    write_weights(os.path.join(OUT, "model.safetensors"))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
