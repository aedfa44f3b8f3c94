"""The official OpenAI Python SDK against llmbus's HTTP front, unmodified: only base_url.

Usage: python http_openai_test.py BASE_URL CASE [CASE ...]
Prints `ok CASE` per case that passes, `FAIL CASE: ...` per case that fails; exits 1 when any
failed. The model groups are the ones tests/it/http.rs configures.
"""

import json
import sys
import traceback

import openai
from openai import OpenAI

TOOL_ARGUMENTS = '{"location":"Paris, France","unit":"celsius"}'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def client(base_url, key="anything"):
    # No retries: an error must surface as its class at once.
    return OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)


def hello(model="fake", text="Hello"):
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def case_chat(base):
    r = client(base).chat.completions.create(**hello())
    assert r.object == "chat.completion", r
    assert r.choices[0].message.content == "echo: Hello", r
    assert r.choices[0].finish_reason == "stop", r
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage


def case_chat_headers(base):
    raw = client(base).chat.completions.with_raw_response.create(**hello())
    h = raw.headers
    assert h.get("x-llmbus-deployment") == "fake-1", dict(h)
    assert h.get("x-litellm-model-id") == "fake-1", dict(h)
    assert h.get("x-llmbus-attempts") == "1", dict(h)
    assert h.get("x-llmbus-job-id"), dict(h)
    assert float(h.get("x-llmbus-cost-usd")) >= 0, dict(h)
    assert h.get("x-litellm-response-cost") == h.get("x-llmbus-cost-usd"), dict(h)
    assert raw.parse().choices[0].message.content == "echo: Hello"


def case_stream(base):
    stream = client(base).chat.completions.create(
        **hello(text="Stream these words please"),
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage:
            usage = chunk.usage
            assert chunk.choices == [], chunk
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == "echo: Stream these words please", repr(text)
    assert finish == "stop", finish
    assert usage and usage.completion_tokens > 0, usage


def case_tools_stream(base):
    stream = client(base).chat.completions.create(
        **hello(model="tools", text="Weather in Paris?"), tools=[WEATHER_TOOL], stream=True
    )
    calls, finish, pieces = {}, None, 0
    for chunk in stream:
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for tc in c.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = tc.id or call["id"]
                if tc.function and tc.function.name:
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
                    pieces += 1
    assert finish == "tool_calls", finish
    assert list(calls) == [0], calls
    assert calls[0]["id"] == "call_fake_0001", calls
    assert calls[0]["name"] == "get_weather", calls
    assert calls[0]["arguments"] == TOOL_ARGUMENTS, calls
    assert json.loads(calls[0]["arguments"])["location"] == "Paris, France"
    assert pieces > 1, f"the arguments came in {pieces} piece(s), not streamed"


def case_tools(base):
    r = client(base).chat.completions.create(
        **hello(model="tools", text="Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == TOOL_ARGUMENTS, r
    assert r.choices[0].finish_reason == "tool_calls", r


def case_embeddings(base):
    r = client(base).embeddings.create(model="embed", input=["hello", "world!"])
    assert r.object == "list", r
    assert [d.index for d in r.data] == [0, 1], r
    # The fake embeds text i as [i, chars, 1.0].
    assert r.data[1].embedding[:3] == [1.0, 6.0, 1.0], r.data[1].embedding


def case_models(base):
    c = client(base)
    ids = {m.id for m in c.models.list()}
    assert {"fake", "tools", "embed"} <= ids, ids
    m = c.models.retrieve("fake")
    assert m.id == "fake" and m.object == "model", m
    try:
        c.models.retrieve("no-such-model")
    except openai.NotFoundError as e:
        assert e.status_code == 404
    else:
        raise AssertionError("retrieving an unknown model did not raise NotFoundError")


def expect(error_class, status, call, code=None):
    try:
        call()
    except error_class as e:
        assert e.status_code == status, (e.status_code, e)
        assert isinstance(e.body, dict) and e.body.get("message"), e.body
        if code is not None:
            assert e.body.get("code") == code, e.body
        return e
    raise AssertionError(f"no {error_class.__name__}")


def case_not_found(base):
    c = client(base)
    expect(openai.NotFoundError, 404,
           lambda: c.chat.completions.create(**hello(model="no-such-model")), "model_not_found")
    # The same before a stream starts: an HTTP error, not an event.
    expect(openai.NotFoundError, 404,
           lambda: list(c.chat.completions.create(**hello(model="no-such-model"), stream=True)))


def case_rate_limit(base):
    c = client(base)
    expect(openai.RateLimitError, 429, lambda: c.chat.completions.create(**hello(model="limited")))


def case_bad_request(base):
    c = client(base)
    expect(openai.BadRequestError, 400, lambda: c.chat.completions.create(
        model="fake", messages=[{"role": "wizard", "content": "hi"}]))
    expect(openai.BadRequestError, 400, lambda: c.chat.completions.create(
        model="fake", messages=[]))


def case_permission_denied(base):
    c = client(base)
    expect(openai.PermissionDeniedError, 403,
           lambda: c.chat.completions.create(**hello(model="forbidden")))


def case_upstream_auth(base):
    # The upstream refuses the deployment's key: the SDK's AuthenticationError.
    c = client(base)
    expect(openai.AuthenticationError, 401,
           lambda: c.chat.completions.create(**hello(model="keyed")))


def case_master_key(base):
    # The gateway's master key is sk-master-test (tests/it/http.rs).
    expect(openai.AuthenticationError, 401,
           lambda: client(base, "sk-wrong").chat.completions.create(**hello()))
    r = client(base, "sk-master-test").chat.completions.create(**hello())
    assert r.choices[0].message.content == "echo: Hello", r


def case_mid_stream_error(base):
    # The fake breaks the stream after its first content: the SDK raises APIError mid-stream.
    stream = client(base).chat.completions.create(**hello(model="broken", text="one two three"),
                                                  stream=True)
    got = ""
    try:
        for chunk in stream:
            for c in chunk.choices:
                got += c.delta.content or ""
    except openai.APIError as e:
        assert "broke" in str(e) or "error" in str(e).lower(), e
        assert got.startswith("echo"), repr(got)
        return
    raise AssertionError(f"the broken stream ended without an error: {got!r}")


def main():
    base, cases = sys.argv[1], sys.argv[2:]
    failed = False
    for name in cases:
        try:
            globals()["case_" + name](base)
            print("ok", name, flush=True)
        except Exception:  # noqa: BLE001 - report every case
            failed = True
            print("FAIL", name + ":", traceback.format_exc(), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
