#!/usr/bin/env python3
"""llmbus's NATS contract, spoken by nats-py (the Python client any user would pick).

Run by `tests/it/python.rs` against a private nats-server and a worker whose config has the
mock deployments below:

    python3 tests/python/client_test.py nats://127.0.0.1:<port>

Every step has a timeout, so the script fails instead of hanging; any failed check raises, and
the exit status is non-zero.
"""

import asyncio
import json
import sys

try:
    import nats
    from nats.errors import NoRespondersError
except ImportError as e:  # tests/it/python.rs checks this first; a clear message all the same
    sys.exit(f"nats-py is not installed ({e}): pip install nats-py")

# Keep in sync with the config in tests/it/python.rs.
MOCK_TEXT = "Hello from the mock: several words, ünïcode and  double  spaces."
GROUPS = {"demo", "small", "gpt-4o-mini"}

# How long any one reply may take, and the overall budget for the whole script.
PATIENCE = 30.0
OVERALL = 120.0


def chat(model, text="Say hello", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    body.update(extra)
    return json.dumps(body).encode()


def ok(what):
    print(f"ok: {what}", flush=True)


async def request_reply(nc):
    msg = await nc.request(
        "llm.completion",
        chat("demo"),
        timeout=PATIENCE,
        headers={"Llm-Timeout-Ms": "20000"},
    )
    headers = msg.headers or {}
    assert headers.get("Llm-Status") == "200", headers
    assert headers.get("Llm-Model-Group") == "demo", headers
    assert headers.get("Llm-Deployment"), headers
    cost = headers.get("Llm-Cost-Usd")
    assert cost is not None and float(cost) >= 0.0, headers
    body = json.loads(msg.data)
    assert body["object"] == "chat.completion", body
    assert body["choices"][0]["message"]["role"] == "assistant", body
    assert body["choices"][0]["message"]["content"] == MOCK_TEXT, body
    assert body["choices"][0]["finish_reason"] == "stop", body
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
    ok("request/reply: chat.completion with Llm-Status 200, Llm-Model-Group, Llm-Cost-Usd")


async def read_stream(nc, payload):
    """Publishes a streaming job with a fresh inbox as reply subject; returns (messages,
    sentinel), each message a (headers, parsed body) pair."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(
            "llm.completion",
            payload,
            reply=inbox,
            headers={"Llm-Timeout-Ms": "20000"},
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE
        messages = []
        while True:
            remaining = deadline - loop.time()
            assert remaining > 0, f"no sentinel within {PATIENCE}s; got {messages}"
            msg = await sub.next_msg(timeout=remaining)
            headers = msg.headers or {}
            if not msg.data:
                return messages, headers
            messages.append((headers, json.loads(msg.data)))
    finally:
        await sub.unsubscribe()


async def streaming(nc):
    messages, sentinel = await read_stream(
        nc, chat("demo", stream=True, stream_options={"include_usage": True})
    )
    assert len(messages) >= 3, messages
    seqs = [int(h["Llm-Seq"]) for h, _ in messages]
    assert seqs == list(range(1, len(messages) + 1)), f"Llm-Seq has gaps: {seqs}"
    ids = set()
    for headers, chunk in messages:
        assert "Llm-Status" not in headers, f"a chunk carries Llm-Status: {headers}"
        assert chunk["object"] == "chat.completion.chunk", chunk
        ids.add(chunk["id"])
    assert len(ids) == 1, f"chunks of one stream have different ids: {ids}"
    text = "".join(
        choice.get("delta", {}).get("content") or ""
        for _, chunk in messages
        for choice in chunk["choices"]
    )
    assert text == MOCK_TEXT, f"{text!r} != {MOCK_TEXT!r}"
    finishes = [c.get("finish_reason") for _, ch in messages for c in ch["choices"]]
    assert "stop" in finishes, finishes
    _, last = messages[-1]
    assert last["choices"] == [], last
    usage = last["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0, usage
    assert all(ch.get("usage") is None for _, ch in messages[:-1]), "usage before the last chunk"
    assert sentinel.get("Llm-Status") == "200", sentinel
    assert sentinel.get("Llm-Model-Group") == "demo", sentinel
    assert sentinel.get("Llm-Cost-Usd") is not None, sentinel
    ok(f"stream: {len(messages)} chunks, Llm-Seq 1..{len(messages)}, usage last, sentinel 200")

    # Without include_usage there is no usage chunk.
    messages, sentinel = await read_stream(nc, chat("demo", stream=True))
    assert all(ch.get("usage") is None for _, ch in messages), messages
    assert all(ch["choices"] for _, ch in messages), "a chunk with empty choices"
    assert sentinel.get("Llm-Status") == "200", sentinel
    ok("stream without include_usage: no usage chunk")


async def errors(nc):
    msg = await nc.request("llm.completion", chat("no-such-model"), timeout=PATIENCE)
    headers = msg.headers or {}
    assert headers.get("Llm-Status") == "404", headers
    error = json.loads(msg.data)["error"]
    assert error["code"] == "model_not_found", error
    assert error["type"] == "invalid_request_error", error
    assert "no-such-model" in error["message"], error
    ok("unknown model: Llm-Status 404, code model_not_found")

    msg = await nc.request("llm.completion", b"{not json", timeout=PATIENCE)
    assert (msg.headers or {}).get("Llm-Status") == "400", msg.headers
    assert json.loads(msg.data)["error"]["type"] == "invalid_request_error", msg.data
    ok("malformed JSON: Llm-Status 400")

    # A stream that fails before it starts: one error body (with Llm-Seq), then the sentinel.
    messages, sentinel = await read_stream(nc, chat("no-such-model", stream=True))
    assert len(messages) == 1, messages
    headers, body = messages[0]
    assert body["error"]["code"] == "model_not_found", body
    assert headers.get("Llm-Seq") == "1", headers
    assert sentinel.get("Llm-Status") == "404", sentinel
    ok("stream of an unknown model: error body, then sentinel with Llm-Status 404")


async def no_responders(nc):
    # Nothing subscribes here: the server answers a request with "no responders".
    try:
        await nc.request("llmbus-test-nobody.completion", chat("demo"), timeout=PATIENCE)
    except NoRespondersError:
        pass
    else:
        raise AssertionError("a request nobody serves did not raise NoRespondersError")
    # For a hand-made stream, the same answer is an empty message with the header Status: 503.
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish("llmbus-test-nobody.completion", chat("demo"), reply=inbox)
        msg = await sub.next_msg(timeout=PATIENCE)
        assert msg.data == b"", msg
        assert (msg.headers or {}).get("Status") == "503", msg.headers
    finally:
        await sub.unsubscribe()
    ok("no responders: NoRespondersError, or an empty message with Status 503")


async def models(nc):
    msg = await nc.request("llm.models", b"", timeout=PATIENCE)
    body = json.loads(msg.data)
    assert body["object"] == "list", body
    ids = {m["id"] for m in body["data"]}
    assert ids == GROUPS, ids
    assert all(m["object"] == "model" for m in body["data"]), body
    ok(f"llm.models lists {sorted(ids)}")


async def main(url):
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False, name="llmbus-pytest")
    try:
        await request_reply(nc)
        await streaming(nc)
        await errors(nc)
        await no_responders(nc)
        await models(nc)
    finally:
        await nc.drain()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: client_test.py <nats_url>")
    # A timeout raises (nats.errors.TimeoutError is an asyncio.TimeoutError) with a traceback
    # that shows the step.
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), OVERALL))
    print("all Python client checks passed")
