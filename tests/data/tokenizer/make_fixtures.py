#!/usr/bin/env python3
"""Rebuilds the tokenizer test fixtures and prints the reference ids tests/tokenizer/ hard-codes.

Needs bench/data/gpt2.tiktoken (scripts/install-deps.sh) and, in a throwaway venv,
`pip install tiktoken==0.14.0 tokenizers==0.23.3 sentencepiece==0.2.x`. Run from the repo root:
    python3 tests/data/tokenizer/make_fixtures.py
  gpt2_first1000/      vocab.json + merges.txt equal to the first 1000 ranks of gpt2.tiktoken
  sentencepiece/       tokenizer.model: 600-piece BPE trained on two license texts
  wordpiece/vocab.txt  hand-written; only its reference ids are printed here
"""
import base64
import json
import os

import sentencepiece as spm
import tiktoken
from tokenizers import BertWordPieceTokenizer, Tokenizer, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
RANKS = os.path.join(HERE, "..", "..", "..", "bench", "data", "gpt2.tiktoken")
PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def load_ranks(limit=None):
    ranks = {}
    for line in open(RANKS, "rb"):
        token, rank = line.split()
        if limit is None or int(rank) < limit:
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bytes_to_unicode():
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_vocab_merges(limit, out_dir):
    """Each token's merge is the split BPE reaches when only lower ranks may merge."""
    ranks = load_ranks(limit)
    b2u = bytes_to_unicode()
    spell = lambda b: "".join(b2u[x] for x in b)
    vocab = {spell(t): r for t, r in ranks.items()}
    vocab["<|endoftext|>"] = len(ranks)
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)]
            _, i = min(pairs)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append(spell(parts[0]) + " " + spell(parts[1]))
    os.makedirs(out_dir, exist_ok=True)
    json.dump(vocab, open(os.path.join(out_dir, "vocab.json"), "w"), ensure_ascii=False)
    open(os.path.join(out_dir, "merges.txt"), "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")


def train_sentencepiece(out_dir):
    corpus = "/tmp/kvpool_sp_corpus.txt"
    text = open("/usr/share/common-licenses/GPL-3").read()
    text += open("/usr/share/common-licenses/Apache-2.0").read()
    text += "\n深度学习中的注意力机制是一种让模型关注输入中重要部分的方法。\n" * 3
    open(corpus, "w").write(text)
    os.makedirs(out_dir, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(out_dir, "tokenizer"), vocab_size=600,
        model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)
    os.remove(os.path.join(out_dir, "tokenizer.vocab"))


def main():
    write_vocab_merges(1000, os.path.join(HERE, "gpt2_first1000"))
    train_sentencepiece(os.path.join(HERE, "sentencepiece"))
    gpt2 = tiktoken.Encoding(name="gpt2", pat_str=PAT, mergeable_ranks=load_ranks(),
                             special_tokens={"<|endoftext|>": 50256})
    small = Tokenizer(models.BPE.from_file(os.path.join(HERE, "gpt2_first1000", "vocab.json"),
                                           os.path.join(HERE, "gpt2_first1000", "merges.txt")))
    small.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    wordpiece = BertWordPieceTokenizer(os.path.join(HERE, "wordpiece", "vocab.txt"), lowercase=True)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(HERE, "sentencepiece", "tokenizer.model"))
    cases = {
        "gpt2 (tiktoken)": (lambda s: gpt2.encode_ordinary(s), [
            "Hello world", " Hello", "hello   world\n\nfoo", "I'm don't they'll",
            "深度学习中的注意力机制是一种", "🙂👍🏽", "  a \n\n  b\t\t\n   ", "12345 3.14",
            "naïve café Москва", "<|endoftext|>", "'s 'S ''s !'ll x'rex",
            "Ελληνικά 日本語のテキスト 한국어 텍스트", "1,000,000 and ²³ ½"]),
        "gpt2_first1000 (HF tokenizers)": (lambda s: small.encode(s).ids, [
            "Hello world", "the cat sat on the mat", "I'm don't they'll", " 12345\n\n", "深度"]),
        "wordpiece (HF BertWordPieceTokenizer)": (
            lambda s: wordpiece.encode(s, add_special_tokens=False).ids, [
                "深度学习中的注意力机制是一种", "你好，世界！", "Hello, World!",
                "unaffable playing played plays", "Naïve CAFÉ in Москва", "12345 123 1.2",
                "abc cab ##a", "hello\tworld\u00a0the\u3000我们", "xyz 漢 unplay", "the 😀 world",
                "don't-stop", "ab\u0000c\u200bd", "Ａ hello"]),
        "sentencepiece": (sp.encode, [
            "This program is free software.", "Hello world", "深度学习中的注意力机制是一种",
            "🙂 naïve café", "  leading and  double  spaces",
            "Licensed under the Apache License, Version 2.0"]),
    }
    for name, (encode, strings) in cases.items():
        print(f"== {name}")
        for s in strings:
            print(json.dumps(s, ensure_ascii=True), encode(s))


if __name__ == "__main__":
    main()
