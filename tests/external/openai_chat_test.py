#!/usr/bin/env python3
"""kvpool's chat API against clients and references nobody here wrote, on a real
kvpool-manager and a kvpool-worker serving tests/data/hf/tiny-chat (a Hugging Face
folder with a ChatML template and the special tokens of every family kvpool renders):

  - each family's rendering (ChatML, Qwen's ChatML with a default system turn, Llama-2,
    Llama-3, Gemma; through vLLM's /tokenize with messages and a chat_template) gives
    the token ids of the canonical Jinja template rendered by jinja2 under Hugging
    Face's settings and encoded by Hugging Face `tokenizers` from the folder's
    tokenizer.json; conversations a template refuses are refused (400);
  - the official `openai` client: chat completions non-streaming and streaming (the
    same greedy text; the role first; usage when asked), prompt_tokens equal to the
    rendered conversation, n=2 with a seed, stop strings, max_completion_tokens,
    logprobs with top_logprobs, cached_tokens > 0 for a repeated long system prompt,
    and its typed errors (400 with the field, 401, 404).

Usage: openai_chat_test.py --bin-dir BUILD/bin --build-dir BUILD
Exit 77 (skipped) where PyPI cannot be reached."""
import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyvenv  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kvpool_process import Node  # noqa: E402

MODEL = "kvpool-chat"
FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "hf", "tiny-chat")
# The fixture's bos_token and eos_token: a request's chat_template renders with the
# model's own.
BOS = EOS = "<|endoftext|>"
TALKS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "You answer in one line."},
     {"role": "user", "content": "  What is a KV cache? \n"},
     {"role": "assistant", "content": "Keys and values, kept."},
     {"role": "user", "content": "And paging?"}],
    [{"role": "user", "content": "Name: <tab>\tdone"},
     {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "Ünïcödé text ✓"}],
]


def post(http, path, body, token="tok-a"):
    request = urllib.request.Request(f"http://{http}{path}", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def check_families(http, chat_templates, hf_tokenizer):
    """Our rendering + encoding against jinja2 + Hugging Face tokenizers."""
    compared = 0
    for family, template in chat_templates.FAMILIES.items():
        bos, eos = BOS, EOS
        for talk in TALKS:
            for add_generation_prompt in (True, False):
                try:
                    text = chat_templates.render(template, talk, bos, eos, add_generation_prompt)
                except Exception as e:  # the template refuses this conversation
                    status, out = post(http, "/tokenize", {
                        "model": MODEL, "messages": talk, "chat_template": template,
                        "add_generation_prompt": add_generation_prompt})
                    assert status == 400 and out["error"]["param"] == "messages", (family, out, e)
                    continue
                want = hf_tokenizer.encode(text, add_special_tokens=False).ids
                body = {"model": MODEL, "messages": talk, "chat_template": template,
                        "add_generation_prompt": add_generation_prompt}
                if family == "chatml":
                    body.pop("chat_template")  # the folder's own template
                status, out = post(http, "/tokenize", body)
                assert status == 200, (family, out)
                assert out["tokens"] == want, (family, talk, text, out["tokens"], want)
                compared += 1
        # continue_final_message: the final assistant turn left open (vLLM's cut).
        talk = TALKS[1][:3]
        if family == "gemma":
            talk = talk[1:]
        full = chat_templates.render(template, talk, bos, eos, False)
        final = talk[-1]["content"]
        text = full[:full.rindex(final) + len(final)]
        status, out = post(http, "/tokenize", {"model": MODEL, "messages": talk,
                                               "chat_template": template,
                                               "add_generation_prompt": False,
                                               "continue_final_message": True})
        assert status == 200 and out["tokens"] == hf_tokenizer.encode(
            text, add_special_tokens=False).ids, (family, out)
    status, out = post(http, "/tokenize", {"model": MODEL, "messages": TALKS[0],
                                           "chat_template": "{{ messages | tojson }}"})
    assert status == 400 and out["error"]["param"] == "chat_template", out
    return compared


def check_client(openai, http):
    client = openai.OpenAI(base_url=f"http://{http}/v1", api_key="tok-a", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    talk = TALKS[1]
    greedy = client.chat.completions.create(model=MODEL, messages=talk, max_completion_tokens=8,
                                            temperature=0)
    assert greedy.object == "chat.completion" and len(greedy.choices) == 1, greedy
    message = greedy.choices[0].message
    assert message.role == "assistant" and greedy.choices[0].finish_reason in ("length", "stop")
    _, rendered = post(http, "/tokenize", {"model": MODEL, "messages": talk})
    assert greedy.usage.prompt_tokens == rendered["count"], (greedy.usage, rendered)
    assert 1 <= greedy.usage.completion_tokens <= 8

    pieces, roles, usage, finish = [], [], None, None
    for chunk in client.chat.completions.create(model=MODEL, messages=talk,
                                                max_completion_tokens=8, temperature=0,
                                                stream=True,
                                                stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert roles == ["assistant"], roles
    assert "".join(pieces) == message.content, (pieces, message.content)
    assert usage is not None and usage.completion_tokens == greedy.usage.completion_tokens
    assert finish == greedy.choices[0].finish_reason

    two = client.chat.completions.create(model=MODEL, messages=TALKS[0], max_tokens=6, n=2,
                                         temperature=1.0, seed=11)
    again = client.chat.completions.create(model=MODEL, messages=TALKS[0], max_tokens=6, n=2,
                                           temperature=1.0, seed=11)
    assert sorted(c.index for c in two.choices) == [0, 1]
    assert [c.message.content for c in two.choices] == [c.message.content for c in again.choices]

    long = client.chat.completions.create(model=MODEL, messages=talk, max_completion_tokens=12,
                                          temperature=0, extra_body={"ignore_eos": True})
    text = long.choices[0].message.content
    if len(text) > 4:
        stop = text[2:4]
        stopped = client.chat.completions.create(model=MODEL, messages=talk, stop=[stop],
                                                 max_completion_tokens=12, temperature=0,
                                                 extra_body={"ignore_eos": True})
        assert stopped.choices[0].finish_reason == "stop", stopped
        assert stop not in stopped.choices[0].message.content

    scored = client.chat.completions.create(model=MODEL, messages=TALKS[0], max_tokens=4,
                                            temperature=0, logprobs=True, top_logprobs=2)
    content = scored.choices[0].logprobs.content
    assert 1 <= len(content) <= 4
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.bytes is not None and abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-4

    system = {"role": "system", "content": " ".join(["The pool keeps every block."] * 12)}
    client.chat.completions.create(model=MODEL, messages=[system, TALKS[0][0]], max_tokens=2)
    second = client.chat.completions.create(model=MODEL, messages=[system, TALKS[0][0]],
                                            max_tokens=2)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached and cached >= 32, f"cached_tokens {cached}"

    refusals = [({"messages": talk, "tools": [{"type": "function",
                                              "function": {"name": "f"}}]}, "tools"),
                ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
                ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                             "image_url": {"url": "x"}}]}]},
                 "messages"),
                ({"messages": talk, "top_logprobs": 2}, "top_logprobs"),
                ({"messages": talk, "max_completion_tokens": 0}, "max_completion_tokens"),
                ({"messages": talk, "extra_body": {"chat_template": "{{ x }}"}},
                 "chat_template"),
                ({"messages": []}, "messages"),
                ({"messages": talk, "response_format": {"type": "json_object"}},
                 "response_format")]
    for extra, param in refusals:
        try:
            client.chat.completions.create(model=MODEL, **extra)
            raise AssertionError(f"accepted: {extra}")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body.get("param") == param, (extra, e.body)
    try:
        client.chat.completions.create(model="nope", messages=talk)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404
    try:
        openai.OpenAI(base_url=f"http://{http}/v1", api_key="wrong",
                      max_retries=0).chat.completions.create(model=MODEL, messages=talk)
        raise AssertionError("a bad token was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    return message.content


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--build-dir", required=True)
    args = parser.parse_args()
    pyvenv.ensure(args.build_dir)
    import openai
    import chat_templates
    from tokenizers import Tokenizer

    hf_tokenizer = Tokenizer.from_file(os.path.join(FOLDER, "tokenizer.json"))
    tmp = tempfile.mkdtemp(prefix="kvpool-chat-")
    try:
        with Node(args.bin_dir, tmp, model=FOLDER,
                  worker_args=["--served-model-name", MODEL]) as node:
            compared = check_families(node.http, chat_templates, hf_tokenizer)
            text = check_client(openai, node.http)
        print(f"openai {openai.__version__}: {compared} renderings equal jinja2 + tokenizers "
              f"over {len(chat_templates.FAMILIES)} template families; chat completions, "
              f"streaming, n=2, stop, logprobs, cached tokens and typed errors pass "
              f"(greedy text {text!r})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
