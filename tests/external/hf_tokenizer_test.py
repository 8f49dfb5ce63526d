#!/usr/bin/env python3
"""kvpool-export-hf's tokenizer files read by Hugging Face's own `tokenizers` (pinned in
tests/external/requirements.txt): tokenizer.json loads and encodes as GPT-2 does (the
ids tiktoken gives for GPT-2's rank file, hard-coded in tests/tokenizer/gpt2_bpe_test.cc),
the vocab.json + merges.txt pair builds the same tokenizer, decoding gives the text
back, and tokenizer_config.json names GPT-2's tokenizer class and the context length.

Usage: hf_tokenizer_test.py --bin-dir BUILD/bin --build-dir BUILD
Exit 77 (skipped) where PyPI cannot be reached.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyvenv  # noqa: E402

CASES = {
    "Hello world": [15496, 995],
    " Hello": [18435],
    "hello   world\n\nfoo": [31373, 220, 220, 995, 198, 198, 21943],
    "I'm don't they'll": [40, 1101, 836, 470, 484, 1183],
    "🙂👍🏽": [8582, 25081, 41840, 235, 8582, 237, 121],
    "12345 3.14": [10163, 2231, 513, 13, 1415],
    "naïve café Москва": [2616, 38776, 40304, 12466, 250, 15166, 21727, 31583, 38857, 16142],
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--build-dir", required=True)
    args = parser.parse_args()
    pyvenv.ensure(args.build_dir)

    with tempfile.TemporaryDirectory(prefix="kvpool-export-hf-") as out:
        return check(args, out)


def check(args, out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    subprocess.run([os.path.join(args.bin_dir, "kvpool-export-hf"), "--model", "tiny-gpt2",
                    "--out", out], check=True)
    full = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    pair = Tokenizer(models.BPE.from_file(os.path.join(out, "vocab.json"),
                                          os.path.join(out, "merges.txt")))
    pair.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pair.decoder = decoders.ByteLevel()
    assert full.get_vocab_size() == 50257, full.get_vocab_size()
    assert full.token_to_id("<|endoftext|>") == 50256
    for text, ids in CASES.items():
        got = full.encode(text).ids
        assert got == ids, f"tokenizer.json: {text!r} -> {got}, GPT-2 gives {ids}"
        assert pair.encode(text).ids == ids, f"vocab.json + merges.txt: {text!r}"
        assert full.decode(ids) == text, f"decode {ids} -> {full.decode(ids)!r}"
    config = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert config["tokenizer_class"] == "GPT2Tokenizer", config
    assert config["model_max_length"] == 512 and config["eos_token"] == "<|endoftext|>", config
    # The built-in models' chat template, ChatML, as Jinja renders it.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import chat_templates
    talk = [{"role": "user", "content": "Hi"}]
    assert config["chat_template"] == chat_templates.CHATML, config["chat_template"]
    assert chat_templates.render(config["chat_template"], talk, "", "") == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    print(f"tokenizers {__import__('tokenizers').__version__}: {len(CASES)} texts encode as GPT-2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
