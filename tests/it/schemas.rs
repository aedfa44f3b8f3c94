//! The JSON Schemas in `schemas/` are what the wire types generate, and they are usable: real
//! payloads validate against them and bad ones do not.
//!
//! After changing a wire type, regenerate the files with
//! `LLMBUS_BLESS=1 cargo test --test it schemas::` and review the diff.

use std::path::PathBuf;

use llmbus::wire::error::ErrorBody;
use llmbus::wire::headers::{ReplyHeaders, RequestHeaders};
use llmbus::wire::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ModelList,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn pretty(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}

#[test]
fn checked_in_schemas_match_the_types() {
    let bless = std::env::var("LLMBUS_BLESS").is_ok_and(|v| v == "1");
    let dir = schema_dir();
    let mut stale = Vec::new();
    for (file, schema) in llmbus::wire::schemas() {
        let path = dir.join(file);
        let expected = pretty(&schema);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, expected).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(expected.as_str()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/{stale:?} differ from what the types generate; \
         run `LLMBUS_BLESS=1 cargo test --test it schemas::` and review the diff"
    );
}

#[test]
fn no_schema_file_is_left_over() {
    let generated: Vec<&str> = llmbus::wire::schemas().iter().map(|(f, _)| *f).collect();
    for entry in std::fs::read_dir(schema_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            assert!(
                generated.contains(&name.as_str()),
                "schemas/{name} is not generated any more"
            );
        }
    }
}

/// The checked-in schema `file`, compiled (the generated one while blessing, since the files
/// are being rewritten then).
fn validator(file: &str) -> jsonschema::Validator {
    let schema: Value = if std::env::var("LLMBUS_BLESS").is_ok_and(|v| v == "1") {
        llmbus::wire::schemas()
            .into_iter()
            .find_map(|(f, s)| (f == file).then_some(s))
            .unwrap()
    } else {
        let text = std::fs::read_to_string(schema_dir().join(file)).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{file} does not compile: {e}"))
}

/// `instance` is valid against `file` and deserializes into `T`.
fn assert_valid<T: DeserializeOwned>(file: &str, instance: Value) {
    let errors: Vec<String> = validator(file)
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{file}: {errors:#?}\n{instance:#}");
    serde_json::from_value::<T>(instance)
        .unwrap_or_else(|e| panic!("{file}: type refuses it: {e}"));
}

fn assert_invalid(file: &str, instance: Value) {
    assert!(
        !validator(file).is_valid(&instance),
        "{file} accepts {instance:#}"
    );
}

#[test]
fn requests_validate() {
    let file = "chat-completion-request.json";
    assert_valid::<ChatCompletionRequest>(
        file,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}]}),
    );
    // Tools, image parts, a tool result, JSON mode, streaming with usage and an unknown field.
    assert_valid::<ChatCompletionRequest>(
        file,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "You are terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": true
            }}],
            "tool_choice": "auto",
            "response_format": {"type": "json_object"},
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.2,
            "stop": ["\n\n"],
            "seed": 42
        }),
    );
    assert_invalid(file, json!({"model": "gpt-4o"}));
    assert_invalid(
        file,
        json!({"model": "gpt-4o", "messages": [{"role": "robot", "content": "hi"}]}),
    );
    assert_invalid(file, json!({"model": 4, "messages": []}));
}

#[test]
fn responses_validate() {
    // OpenAI's documented example response, `refusal` and `annotations` included.
    assert_valid::<ChatCompletionResponse>(
        "chat-completion-response.json",
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion",
            "created": 1741570283,
            "model": "gpt-4o-2024-08-06",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The image shows a wooden boardwalk through a meadow.",
                    "refusal": null,
                    "annotations": []
                },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 1117,
                "completion_tokens": 46,
                "total_tokens": 1163,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
                }
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fc9f1d7035"
        }),
    );
    assert_invalid(
        "chat-completion-response.json",
        json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m"}),
    );
}

#[test]
fn stream_chunks_validate() {
    let file = "chat-completion-chunk.json";
    let chunk = |choices: Value, usage: Value| {
        json!({
            "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
            "choices": choices, "usage": usage
        })
    };
    // First chunk, content chunk, tool-call fragment, last chunk, usage chunk.
    assert_valid::<ChatCompletionChunk>(
        file,
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            Value::Null,
        ),
    );
    assert_valid::<ChatCompletionChunk>(
        file,
        chunk(
            json!([{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}]),
            Value::Null,
        ),
    );
    assert_valid::<ChatCompletionChunk>(
        file,
        chunk(
            json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"ci"}}
            ]}, "finish_reason": null}]),
            Value::Null,
        ),
    );
    assert_valid::<ChatCompletionChunk>(
        file,
        chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            Value::Null,
        ),
    );
    assert_valid::<ChatCompletionChunk>(
        file,
        chunk(
            json!([]),
            json!({"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
                   "prompt_tokens_details": {"cached_tokens": 0}}),
        ),
    );
    assert_invalid(
        file,
        chunk(json!([{"delta": {"content": "x"}}]), Value::Null),
    );
}

#[test]
fn error_bodies_validate() {
    assert_valid::<ErrorBody>(
        "error.json",
        json!({"error": {
            "message": "The model `gpt-5-turbo` does not exist.",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"
        }}),
    );
    assert_valid::<ErrorBody>(
        "error.json",
        json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "param": null, "code": "429"}}),
    );
    // What llmbus itself sends.
    let ours: Value =
        serde_json::from_slice(&llmbus::wire::ApiError::deadline("too slow").to_json()).unwrap();
    assert_valid::<ErrorBody>("error.json", ours);
    assert_invalid("error.json", json!({"error": {"type": "api_error"}}));
    assert_invalid("error.json", json!({"message": "no envelope"}));
}

#[test]
fn model_lists_validate() {
    assert_valid::<ModelList>(
        "model-list.json",
        json!({"object": "list", "data": [
            {"id": "gpt-4o", "object": "model", "created": 1686935002, "owned_by": "llmbus"}
        ]}),
    );
    assert_invalid(
        "model-list.json",
        json!({"object": "list", "data": [{"id": "gpt-4o"}]}),
    );
}

#[test]
fn headers_validate() {
    let req = "request-headers.json";
    assert_valid::<RequestHeaders>(
        req,
        json!({
            "Authorization": "Bearer sk-llmbus-abc",
            "Llm-Timeout-Ms": "30000",
            "Llm-Tags": "eu,fast",
            "Llm-Fallbacks": "gpt-4o-mini",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "Nats-Msg-Id": "batch-1/line-7"
        }),
    );
    assert_invalid(req, json!({"Llm-Timeout-Ms": "0"}));
    assert_invalid(req, json!({"Llm-Timeout-Ms": "soon"}));
    assert_invalid(req, json!({"traceparent": "00-xyz-01"}));
    assert_invalid(req, json!({"Authorization": "sk-no-scheme"}));
    assert_invalid(req, json!({"Llm-Tags": 5}));

    let rep = "reply-headers.json";
    assert_valid::<ReplyHeaders>(
        rep,
        json!({
            "Llm-Status": "200", "Llm-Model-Group": "gpt-4o", "Llm-Deployment": "openai-eu-1",
            "Llm-Attempts": "2", "Llm-Cost-Usd": "0.00045", "Llm-Cache": "miss", "Llm-Job-Id": "j-1"
        }),
    );
    assert_valid::<ReplyHeaders>(rep, json!({"Llm-Seq": "17"}));
    assert_valid::<ReplyHeaders>(rep, json!({"Llm-Status": "503"}));
    assert_invalid(rep, json!({"Llm-Status": "2000"}));
    assert_invalid(rep, json!({"Llm-Status": "099"}));
    assert_invalid(rep, json!({"Llm-Seq": "0"}));
    assert_invalid(rep, json!({"Llm-Cache": "maybe"}));
    assert_invalid(rep, json!({"Llm-Cost-Usd": "-1"}));
}

#[test]
fn usage_events_validate() {
    let file = "usage-event.json";
    // What a worker publishes (every field present).
    let event = llmbus::usage::UsageEvent {
        job_id: "j-1".into(),
        timestamp_ms: 1_741_608_000_000,
        model_group: "gpt-4o".into(),
        deployment: Some("openai-eu-1".into()),
        provider: Some("openai".into()),
        model: Some("openai/gpt-4o".into()),
        user: Some("alice".into()),
        tags: vec!["eu".into()],
        prompt_tokens: 1117,
        cached_tokens: 1024,
        completion_tokens: 46,
        cost_usd: 0.00045,
        latency_ms: 812.5,
        ttft_ms: Some(240.0),
        status: 200,
        stream: true,
        attempts: 1,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ..Default::default()
    };
    assert_valid::<llmbus::usage::UsageEvent>(file, serde_json::to_value(&event).unwrap());
    // A failure that never reached a deployment.
    assert_valid::<llmbus::usage::UsageEvent>(
        file,
        json!({"job_id": "j-2", "timestamp_ms": 1, "model_group": "nope", "status": 404,
               "error_class": "model_not_found", "deployment": null}),
    );
    assert_invalid(
        file,
        json!({"timestamp_ms": 1, "model_group": "g", "status": 200}),
    );
    assert_invalid(
        file,
        json!({"job_id": "j", "timestamp_ms": 1, "model_group": "g", "status": 1000}),
    );
    assert_invalid(
        file,
        json!({"job_id": "j", "timestamp_ms": 1, "model_group": "g", "status": 200, "cost_usd": -1}),
    );
}
