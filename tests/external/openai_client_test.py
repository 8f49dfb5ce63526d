#!/usr/bin/env python3
"""kvpool's OpenAI-compatible API driven by the official `openai` Python client
(pinned in tests/external/requirements.txt) against a real kvpool-manager and
kvpool-worker on loopback (tiny-gpt2, random weights, auth with two tenants):

  - models.list(); completions non-streaming and streaming (the same greedy text,
    usage in the last chunk when asked), n=2, stop strings, seed reproducibility,
    token-id prompts, cached_tokens > 0 for a second request with the same long prefix;
  - the client's typed errors: BadRequestError (400, with the field as `param`),
    AuthenticationError (401), NotFoundError (404, unknown model);
  - at the socket: the exact bytes of the first SSE chunk's framing and of [DONE],
    a client that disconnects mid-stream gets its blocks freed (the manager's in-use
    blocks back to 0), and 50 hostile requests (malformed JSON, wrong types, a body
    over the limit, invalid UTF-8, a slow client) each get a clear 4xx or a closed
    connection while the worker keeps serving.

Usage: openai_client_test.py --bin-dir BUILD/bin --build-dir BUILD
Exit 77 (skipped) where PyPI cannot be reached.
"""
import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyvenv  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kvpool_process import Node  # noqa: E402

MODEL = "kvpool-tiny"


def raw_request(address, body, path="/v1/completions", token="tok-a", extra=b"", timeout=30):
    """One HTTP/1.1 request on a fresh socket; returns (status, headers+body bytes)."""
    host, port = address.rsplit(":", 1)
    data = body if isinstance(body, bytes) else body.encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n").encode() + extra + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(head + data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) before reading everything: read its answer
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    status = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else 0
    return status, out


def in_use_blocks(manager_http):
    """Blocks held by requests: in use, less those the pins of check_client hold."""
    request = urllib.request.Request(f"http://{manager_http}/api/stats",
                                     headers={"Authorization": "Bearer op-token"})
    with urllib.request.urlopen(request, timeout=10) as r:
        stats = json.load(r)
        return stats["pool"]["in_use_blocks"] - stats["pinned_blocks"]


def check_client(openai, base_url):
    client = openai.OpenAI(base_url=base_url, api_key="tok-a", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]

    greedy = client.completions.create(model=MODEL, prompt="The attention mechanism",
                                       max_tokens=8, temperature=0)
    assert greedy.object == "text_completion" and len(greedy.choices) == 1
    assert greedy.choices[0].finish_reason == "length", greedy
    assert greedy.usage.completion_tokens == 8 and greedy.usage.prompt_tokens > 0
    text = greedy.choices[0].text

    pieces, usage = [], None
    for chunk in client.completions.create(model=MODEL, prompt="The attention mechanism",
                                           max_tokens=8, temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == text, (pieces, text)
    assert usage is not None and usage.completion_tokens == 8

    two = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6,
                                    temperature=1.0, n=2, seed=3)
    assert sorted(c.index for c in two.choices) == [0, 1]
    again = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6,
                                      temperature=1.0, n=2, seed=3)
    assert [c.text for c in two.choices] == [c.text for c in again.choices], "seed not reproducible"

    words = [w for w in text.split(" ") if w]
    if len(words) >= 3:
        stop = " " + words[2]
        stopped = client.completions.create(model=MODEL, prompt="The attention mechanism",
                                            max_tokens=8, temperature=0, stop=[stop])
        assert stopped.choices[0].finish_reason == "stop", stopped
        assert stop not in stopped.choices[0].text and text.startswith(stopped.choices[0].text)

    # The penalties and vLLM's extras (extra_body, as vLLM's docs show them).
    penalized = client.completions.create(
        model=MODEL, prompt="The attention mechanism", max_tokens=8, temperature=0,
        frequency_penalty=1.5, presence_penalty=1.0,
        extra_body={"repetition_penalty": 1.3, "min_p": 0.05, "top_k": 20})
    assert penalized.choices[0].text != text, "the penalties changed nothing"
    scored = client.completions.create(model=MODEL, prompt="The attention mechanism",
                                       max_tokens=5, temperature=0, logprobs=2)
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == 5 and len(lp.token_logprobs) == 5 and len(lp.top_logprobs) == 5
    assert "".join(lp.tokens).startswith(scored.choices[0].text[:1]) or not scored.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and 1 <= len(top) <= 2
        assert abs(max(top.values()) - logprob) < 1e-4, (token, logprob, top)  # greedy: the top one
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    streamed_lp = [c.choices[0].logprobs for c in client.completions.create(
        model=MODEL, prompt="The attention mechanism", max_tokens=5, temperature=0, logprobs=2,
        stream=True) if c.choices and c.choices[0].logprobs is not None]
    assert [x.token_logprobs[0] for x in streamed_lp] == lp.token_logprobs
    # A batch of prompts: choice p * n + i is prompt p's sample i; usage sums them.
    batch = client.completions.create(model=MODEL, prompt=["The attention mechanism", "Hello"],
                                      max_tokens=8, temperature=0, n=2)
    assert [c.index for c in sorted(batch.choices, key=lambda c: c.index)] == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in batch.choices}
    assert by_index[0] == by_index[1] == text, (by_index, text)
    assert batch.usage.completion_tokens == 32, batch.usage
    streamed = {}
    for chunk in client.completions.create(model=MODEL, prompt=["The attention mechanism",
                                                                 "Hello"], max_tokens=8,
                                           temperature=0, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed[0] == text and streamed[1] == by_index[2], (streamed, by_index)

    # The built-in model's chat: plain ChatML, its markers as ordinary text.
    chat = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    chatml = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids_chat = client.completions.create(model=MODEL, prompt=chatml, max_tokens=4,
                                         temperature=0)
    assert chat.usage.prompt_tokens == ids_chat.usage.prompt_tokens, (chat.usage, ids_chat.usage)

    ids = client.completions.create(model=MODEL, prompt=[464, 3241, 9030], max_tokens=3,
                                    temperature=0)
    held = client.completions.create(model=MODEL, prompt=[464, 3241, 9030], max_tokens=4,
                                     temperature=0, extra_body={"min_tokens": 4,
                                                                "stop_token_ids": [50256]})
    assert held.usage.completion_tokens == 4 and held.choices[0].finish_reason == "length"
    assert ids.usage.prompt_tokens == 3

    long_prompt = list(range(1000, 1064))  # 64 tokens: four 16-token blocks
    client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=2, temperature=0)
    second = client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=2,
                                       temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached and cached >= 48, f"cached_tokens {cached}"

    # kvpool's retention extension: pin the prompt's blocks; the pin comes back in the
    # response's "kvpool" object (model_extra in the openai client), through chat too.
    pinned = client.completions.create(model=MODEL, prompt=list(range(2000, 2064)), max_tokens=2,
                                       temperature=0,
                                       extra_body={"kvpool_retention": {"pin_ttl_s": 30,
                                                                        "priority": 80}})
    pins = pinned.model_extra["kvpool"]["pins"]
    assert len(pins) == 1 and pins[0]["pinned_tokens"] == 64 and pins[0]["pin_id"] >= 1, pins
    chat_pinned = client.chat.completions.create(
        model=MODEL, max_tokens=2, temperature=0,
        messages=[{"role": "user", "content": "Keep this system prompt resident " * 8}],
        extra_body={"kvpool_retention": {"pin_ttl_s": 30}})
    assert chat_pinned.model_extra["kvpool"]["pins"][0]["pinned_tokens"] >= 16, chat_pinned
    for bad in ({"pin_ttl_s": -1}, {"priority": 101}, {"ttl": 5}, "forever"):
        try:
            client.completions.create(model=MODEL, prompt="x", max_tokens=1,
                                      extra_body={"kvpool_retention": bad})
            raise AssertionError(f"kvpool_retention {bad!r} accepted")
        except openai.BadRequestError as e:
            assert e.body.get("param", "").startswith("kvpool_retention"), e.body

    try:
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
        raise AssertionError("max_tokens=0 accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body.get("param") == "max_tokens", e.body
    try:
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).completions.create(
            model=MODEL, prompt="x", max_tokens=1)
        raise AssertionError("a bad token was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    try:
        client.completions.create(model="nope", prompt="x", max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body.get("code") == "model_not_found", e.body
    return text


def check_sockets(http, manager_http):
    body = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0,
                       "stream": True})
    status, out = raw_request(http, body)
    assert status == 200, out[:300]
    head, _, payload = out.partition(b"\r\n\r\n")
    assert b"Content-Type: text/event-stream" in head and b"Transfer-Encoding: chunked" in head
    # De-chunk, then the SSE framing itself.
    stream, rest = b"", payload
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        stream, rest = stream + rest[:n], rest[n + 2:]
    events = stream.split(b"\n\n")
    assert events[0].startswith(b'data: {"id":"cmpl-') and b'"object":"text_completion"' in events[0]
    assert stream.endswith(b"data: [DONE]\n\n"), stream[-60:]

    # A client that goes away mid-stream: its request is cancelled, its blocks freed.
    host, port = http.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    body = json.dumps({"model": MODEL, "prompt": list(range(200)), "max_tokens": 300,
                       "stream": True, "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-a\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    assert in_use_blocks(manager_http) > 0
    s.close()
    deadline = time.time() + 10
    while in_use_blocks(manager_http) != 0:
        assert time.time() < deadline, "the disconnected client's blocks were not freed"
        time.sleep(0.1)

    # A slow client (headers never finished) is cut off after the request timeout.
    slow = socket.create_connection((host, int(port)))
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    started = time.time()

    hostile = [b"{", b"[]", b'"text"', b"null", b'{"model": 5, "prompt": "x"}',
               b'{"model": "kvpool-tiny"}', b'{"model": "kvpool-tiny", "prompt": ""}',
               b'{"model": "kvpool-tiny", "prompt": []}', b'{"model": "kvpool-tiny", "prompt": [[1], "x", 5]}',
               b'{"model": "kvpool-tiny", "prompt": [1.5]}', b'{"model": "kvpool-tiny", "prompt": [-1]}',
               b'{"model": "kvpool-tiny", "prompt": [99999999]}',
               b'{"model": "kvpool-tiny", "prompt": [9999999999999]}',
               b'{"model": "kvpool-tiny", "prompt": "x", "max_tokens": "ten"}',
               b'{"model": "kvpool-tiny", "prompt": "x", "max_tokens": -1}',
               b'{"model": "kvpool-tiny", "prompt": "x", "max_tokens": 100000}',
               b'{"model": "kvpool-tiny", "prompt": "x", "temperature": "hot"}',
               b'{"model": "kvpool-tiny", "prompt": "x", "temperature": -1}',
               b'{"model": "kvpool-tiny", "prompt": "x", "top_p": 0}',
               b'{"model": "kvpool-tiny", "prompt": "x", "top_p": 7}',
               b'{"model": "kvpool-tiny", "prompt": "x", "n": 0}',
               b'{"model": "kvpool-tiny", "prompt": "x", "n": 1000}',
               b'{"model": "kvpool-tiny", "prompt": "x", "stop": 5}',
               b'{"model": "kvpool-tiny", "prompt": "x", "stop": [""]}',
               b'{"model": "kvpool-tiny", "prompt": "x", "stream": "yes"}',
               b'{"model": "kvpool-tiny", "prompt": "x", "stream_options": 1}',
               b'{"model": "kvpool-tiny", "prompt": "x", "kv_mode": "fast"}',
               b'{"model": "kvpool-tiny", "prompt": "x", "cache_salt": "s"}',
               b'{"model": "kvpool-tiny", "prompt": "x", "logprobs": 6}',
               b'{"model": "kvpool-tiny", "prompt": "x", "echo": true}',
               b'{"model": "kvpool-tiny", "prompt": "x", "presence_penalty": 5}',
               b'{"model": "kvpool-tiny", "prompt": "x", "seed": "s"}',
               b'{"model": "kvpool-tiny", "prompt": "x", "top_k": 1.5}',
               b'{"model": "kvpool-tiny", "prompt": "\xff\xfe"}',
               b'{"model": "kvpool-tiny", "prompt": "x"' + b" " * 10,
               b"\x00\x01\x02", b'{"model": "kvpool-tiny", "prompt": {"a": 1}}',
               b'{"model": "kvpool-tiny", "prompt": "x", "ignore_eos": 1}',
               b'{"model": "kvpool-tiny", "prompt": "x", "min_tokens": -1}',
               b'{"model": "kvpool-tiny", "prompt": "x", "stop_token_ids": [-3]}',
               b'{"model": "kvpool-tiny", "prompt": "x", "repetition_penalty": 0}',
               b'{"model": "kvpool-tiny", "prompt": "x", "min_p": "a"}',
               b'{"model": "kvpool-tiny", "prompt": "x", "stop": ["a", 1]}',
               b'{"model": "kvpool-tiny", "prompt": ["x"' + b', "y"' * 64 + b']}']
    hostile_chat = [b'{"model": "kvpool-tiny", "messages": "hi"}',
                    b'{"model": "kvpool-tiny", "messages": [{"role": 1, "content": "x"}]}',
                    b'{"model": "kvpool-tiny", "messages": [{"role": "user", "content": 5}]}']
    codes = [raw_request(http, b)[0] for b in hostile]
    codes += [raw_request(http, b, path="/v1/chat/completions")[0] for b in hostile_chat]
    assert all(c == 400 for c in codes), list(zip(codes, hostile + hostile_chat))
    assert raw_request(http, b"x" * (2 << 20))[0] == 413
    assert raw_request(http, "{}", path="/v1/nope")[0] == 404
    assert raw_request(http, "{}", path="/v1/completions", token="bad")[0] in (400, 401)
    assert raw_request(http, '{"model":"kvpool-tiny","prompt":"x"}', token="bad")[0] == 401
    tokens = json.loads(raw_request(http, '{"prompt": "Hello world"}', path="/tokenize")[1]
                        .partition(b"\r\n\r\n")[2])
    assert tokens["tokens"] == [15496, 995], tokens
    back = json.loads(raw_request(http, '{"tokens": [15496, 995]}', path="/detokenize")[1]
                      .partition(b"\r\n\r\n")[2])
    assert back["prompt"] == "Hello world", back
    assert raw_request(http, '{"tokens": [-4]}', path="/detokenize")[0] == 400
    assert raw_request(http, '{"model":"kvpool-tiny","prompt":"ok","max_tokens":1}')[0] == 200
    slow.settimeout(30)
    assert slow.recv(100) == b"", "the slow client was not cut off"
    assert time.time() - started < 25
    slow.close()
    return len(hostile) + len(hostile_chat) + 6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--build-dir", required=True)
    args = parser.parse_args()
    pyvenv.ensure(args.build_dir)
    import openai

    tmp = tempfile.mkdtemp(prefix="kvpool-openai-")
    try:
        with Node(args.bin_dir, tmp, worker_args=["--served-model-name", MODEL]) as node:
            text = check_client(openai, f"http://{node.http}/v1")
            hostile = check_sockets(node.http, node.manager_http)
        print(f"openai {openai.__version__}: completions, streaming, n=2, prompt batches, stop, "
              "seed, token ids, built-in chat, "
              f"cached tokens and typed errors pass; {hostile} hostile requests refused "
              f"(greedy text {text!r})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
