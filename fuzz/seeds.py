#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

The seeds come from the test fixtures (tests/golden, tests/fixtures) and from the provider
formats the tests' fake providers speak. Each seed starts with the byte(s) its target reads
first (see src/fuzzing/). Run from the repository root: `python3 fuzz/seeds.py`.
"""
import glob, json, os, struct, zlib, hashlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def walk(value, key):
    """Every value under `key` anywhere in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v, key)


def sse(events, named=False):
    out = ""
    for e in events:
        if named:
            out += "event: %s\n" % e.get("type", "message")
        out += "data: %s\n\n" % json.dumps(e)
    return out


# --- job_body: flags byte (bit 0: embeddings, bit 1: drop_params), then the body -----------
chat_bodies = [
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "m", "stream": True, "stream_options": {"include_usage": True},
     "messages": [{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
     "fallbacks": ["b", {"group": ["c"]}], "max_tokens": 10, "temperature": 0.5, "stop": ["x"],
     "response_format": {"type": "json_object"}, "reasoning_effort": "low", "n": 1},
    {"model": "m", "messages": [{"role": "user", "content": "w"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}],
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
        "properties": {"a": {"type": "integer"}}}}}], "tool_choice": "auto"},
]
for path in glob.glob(os.path.join(ROOT, "tests/golden/*/*.json")):
    try:
        doc = json.loads(read(path))
    except ValueError:
        continue
    if path.endswith(".openai.json") and isinstance(doc, dict) and "messages" in doc:
        chat_bodies.append(doc)
    for v in walk(doc, "openai"):
        if isinstance(v, dict) and "messages" in v:
            chat_bodies.append(v)
for i, body in enumerate(chat_bodies):
    put("job_body", bytes([i % 4 & 2]) + json.dumps(body).encode())
for body in [{"model": "e", "input": "hello"}, {"model": "e", "input": ["a", "b"], "dimensions": 8},
             {"model": "e", "input": [[1, 2, 3]], "encoding_format": "float"}, {"model": "e", "input": []}]:
    put("job_body", b"\x01" + json.dumps(body).encode())
put("job_body", b"\x00{not json")
put("job_body", b"\x00   ")

# --- job_headers: name:value lines ---------------------------------------------------------
for h in [
    "Authorization:Bearer sk-virtual-0123456789\nLlm-Timeout-Ms:30000",
    "authorization:bearer  k\nLlm-Tags:a, b,,c\nLlm-Fallbacks:x,y",
    "Authorization:Basic abc\nAuthorization:Bearer x",
    "Llm-Timeout-Ms:18446744073709551615",
    "Llm-Timeout-Ms: 0012",
    "traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nNats-Msg-Id:1",
    "Traceparent:00-00000000000000000000000000000000-00f067aa0ba902b7-01",
]:
    put("job_headers", h)

# --- sse and the SSE-based providers: seed byte, then the body -----------------------------
openai_chunks = [
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {"content": "Hel"}, "logprobs": None, "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
        "function": {"name": "f", "arguments": "{\"a\""}}]}, "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [],
     "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
               "prompt_tokens_details": {"cached_tokens": 1}}},
]
openai_body = "".join("data: %s\n\n" % json.dumps(c) for c in openai_chunks) + "data: [DONE]\n\n"
for seed in [0, 1, 7, 200]:
    put("openai_stream", bytes([seed]) + openai_body.encode())
put("openai_stream", b"\x03" + ("data: %s\r\n\r\n" % json.dumps(openai_chunks[1])).encode())
put("openai_stream", b"\x05event: error\ndata: {\"error\":{\"message\":\"bad sk-fuzz-SECRET-0123456789abcdef\",\"code\":429}}\n\n")
put("openai_stream", b"\x09: keep-alive\n\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n")

for path in sorted(glob.glob(os.path.join(ROOT, "tests/golden/*/*.sse"))):
    body = read(path)
    put("sse", b"\x11" + body)
    if "/anthropic/" in path:
        for seed in [0, 1, 2, 3]:
            put("anthropic_stream", bytes([seed]) + body)
    if "/gemini/" in path:
        for seed in [0, 1]:
            put("gemini_stream", bytes([seed]) + body)
put("sse", b"\x00" + openai_body.encode())
put("sse", b"\x05: comment\r\nid: 7\rretry: 10\nevent: x\ndata:a\ndata: b\n\n\ndata: end")
put("anthropic_stream", b"\x01" + sse([
    {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 3, "cache_read_input_tokens": 2}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t1", "name": "json_tool_call", "input": {}}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
    {"type": "message_stop"}], named=True).encode())
gemini_events = [
    {"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "index": 0}], "responseId": "r1"},
    {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}], "role": "model"},
                     "finishReason": "STOP", "index": 0}],
     "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 1, "cachedContentTokenCount": 1}},
]
put("gemini_stream", b"\x01" + sse(gemini_events).encode())
put("gemini_stream", b"\x00" + sse([{"promptFeedback": {"blockReason": "SAFETY"}}]).encode())
put("gemini_stream", b"\x00" + sse([{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
    "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]}}]).encode())

cohere_events = [
    {"type": "message-start", "id": "a1", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi"}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"thinking": "hm"}}}},
    {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look it up."}}},
    {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "w1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}},
    {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"l\":1}"}}}}},
    {"type": "tool-call-end", "index": 0},
    {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
        "billed_units": {"input_tokens": 37, "output_tokens": 28}, "tokens": {"input_tokens": 1048, "output_tokens": 28}}}},
]
for seed in [0, 1, 6]:
    put("cohere_stream", bytes([seed]) + sse(cohere_events, named=True).encode())
put("cohere_stream", b"\x01" + sse([cohere_events[0], {"type": "message-end", "delta": {"finish_reason": "ERROR"}}]).encode())
put("cohere_stream", b"\x01" + sse([{"message": "invalid api token sk-fuzz-SECRET-0123456789abcdef"}]).encode())

ollama_lines = [
    {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "Hel"}, "done": False},
    {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "", "thinking": "hm",
        "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}, "done": False},
    {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": True,
     "done_reason": "stop", "total_duration": 5191566416, "prompt_eval_count": 26, "eval_count": 9},
]
ollama_body = "".join(json.dumps(l) + "\n" for l in ollama_lines)
for seed in [0, 1, 4]:
    put("ollama_stream", bytes([seed]) + ollama_body.encode())
put("ollama_stream", b"\x01" + json.dumps(ollama_lines[0]).encode() + b"\r\n\n  \n{\"error\":\"model not found\"}\n")
put("ollama_stream", b"\x00" + json.dumps(json.loads(read("tests/golden/ollama/tools.response.json"))).encode())

# --- bedrock_stream: raw frames (seed bit 1 clear) and event specs (bit 1 set) -------------
def frame(headers, payload):
    hb = b""
    for name, value in headers:
        v = value.encode()
        hb += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    msg = prelude + struct.pack(">I", zlib.crc32(prelude)) + hb + payload
    return msg + struct.pack(">I", zlib.crc32(msg))


def event(name, body):
    return frame([(":message-type", "event"), (":event-type", name), (":content-type", "application/json")],
                 json.dumps(body).encode())


bedrock_events = [
    ("messageStart", {"role": "assistant"}),
    ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hm"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("messageStop", {"stopReason": "tool_use"}),
    ("metadata", {"usage": {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16, "cacheReadInputTokens": 2}}),
]
raw = b"".join(event(n, b) for n, b in bedrock_events)
for seed in [0, 1, 4]:
    put("bedrock_stream", bytes([seed]) + raw)
put("bedrock_stream", b"\x01" + event(*bedrock_events[0]) + frame(
    [(":message-type", "exception"), (":exception-type", "throttlingException")],
    b'{"message":"Too many requests"}'))
put("bedrock_stream", b"\x00" + raw[:-3])
names = ["messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
spec = b""
for n, b in bedrock_events:
    p = json.dumps(b).encode()[:255]
    spec += bytes([names.index(n) * 8, len(p)]) + p
put("bedrock_stream", b"\x03" + spec)
put("bedrock_stream", b"\x02" + spec[: len(spec) // 2] + bytes([6, 5]) + b"{\"a\"}" + bytes([7, 3]) + b"bad")

# --- responses: picker byte, then a body (or status, headers, NUL, body for errors) --------
def golden(path, key):
    doc = json.loads(read(path))
    return list(walk(doc, key)) or [doc]


put("responses", b"\x00" + json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode())
put("responses", b"\x01" + json.dumps({"object": "list", "data": [{"object": "embedding", "index": 0,
    "embedding": [0.1, -0.2]}], "model": "e", "usage": {"prompt_tokens": 2, "total_tokens": 2}}).encode())
for path in glob.glob(os.path.join(ROOT, "tests/golden/anthropic/response_*.json")):
    for v in golden(path, "anthropic"):
        put("responses", b"\x02" + json.dumps(v).encode())
        put("responses", b"\x03" + json.dumps(v).encode())
for path in glob.glob(os.path.join(ROOT, "tests/golden/gemini/*.gemini.json")):
    put("responses", b"\x04" + read(path))
put("responses", b"\x05" + read("tests/golden/bedrock/tool_use.response.json"))
put("responses", b"\x06" + read("tests/golden/cohere/tools.response.json"))
put("responses", b"\x07" + read("tests/golden/ollama/tools.response.json"))
put("responses", b"\x08" + read("tests/golden/gemini/embed_response.gemini.json"))
put("responses", b"\x08" + read("tests/golden/gemini/predict_response.vertex.json"))
for pick, status, headers, body in [
    (9, 429, "retry-after: 7\nretry-after-ms: 1500", {"error": {"message": "slow down", "type": "rate_limit", "code": "429"}}),
    (9, 503, "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT", "upstream connect error"),
    (10, 529, "retry-after: 2", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    (10, 429, "", {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}]}}),
    (11, 400, "x-amzn-errortype: ValidationException:http://internal", {"message": "Malformed input request"}),
]:
    b = body if isinstance(body, str) else json.dumps(body)
    put("responses", bytes([pick]) + struct.pack(">H", status) + headers.encode() + b"\x00" + b.encode())
for path in glob.glob(os.path.join(ROOT, "tests/golden/*/errors.json")):
    doc = json.loads(read(path))
    for case in doc.get("cases", []) if isinstance(doc, dict) else doc:
        body = case.get("body") or case.get("anthropic") or case.get("gemini") or case
        status = case.get("status", 400) if isinstance(case.get("status"), int) else 400
        for pick in (9, 10, 11):
            put("responses", bytes([pick]) + struct.pack(">H", status % 65536) + b"\x00" + json.dumps(body).encode())

# --- config: YAML text --------------------------------------------------------------------
for path in glob.glob(os.path.join(ROOT, "tests/fixtures/config/**/*.yaml"), recursive=True):
    put("config", read(path))
put("config", read("src/config/quickstart.yaml"))
put("config", """model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      api_base: os.environ/OPENAI_BASE_UNSET
      rpm: 20_000
      timeout: 30
  - model_name: claude
    litellm_params: {model: anthropic/claude-x, api_key: os.environ/ANTHROPIC_KEY_BLANK, stream_timeout: 5}
  - model_name: b
    litellm_params: {model: bedrock/anthropic.claude-v2, aws_region_name: os.environ/AWS_REGION}
  - model_name: v
    litellm_params: {model: vertex_ai/gemini-pro, vertex_project: p, vertex_location: us-central1}
router_settings:
  routing_strategy: usage-based-routing-v2
  num_retries: 3
  retry_after: 1
  cooldown_time: 10
  fallbacks: [{"gpt": ["claude"]}]
  model_group_alias: {"g4": "gpt"}
general_settings:
  master_key: os.environ/LLMBUS_MASTER_KEY
""")
print("seeds written to", OUT)
