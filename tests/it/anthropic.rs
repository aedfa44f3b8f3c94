//! The Anthropic Messages adapter (`anthropic/`): request, response, stream and error
//! conversion checked against golden files built from Anthropic's documented examples
//! (`tests/golden/anthropic/`), and end to end over NATS against a fake Anthropic.

use std::{collections::VecDeque, time::Duration};

use crate::support::{
    fake_anthropic::{FakeAnthropic, Fault, TOOL_INPUT, TOOL_INPUT_PIECES, TOOL_USE_ID},
    gateway::{Gateway, chat, content, streamed_text},
};
use llmbus::providers::{
    ErrorClass, ProviderError,
    anthropic::{error, request, response, stream::StreamConverter},
    sse::SseDecoder,
};
use llmbus::wire::openai::{ChatCompletionChunk, ChatCompletionRequest};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Golden files
// ---------------------------------------------------------------------------------------

fn golden(name: &str) -> String {
    let path = format!(
        "{}/tests/golden/anthropic/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn golden_json(name: &str) -> Value {
    serde_json::from_str(&golden(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Compares two JSON documents field by field: every key of `expected` is in `actual` with
/// an equal value, and `actual` has no key `expected` lacks. Failures name the field path.
fn assert_fields(what: &str, path: &str, actual: &Value, expected: &Value) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for key in e.keys() {
                assert!(
                    a.contains_key(key),
                    "{what}: `{path}.{key}` is missing in {actual}"
                );
            }
            for key in a.keys() {
                assert!(
                    e.contains_key(key),
                    "{what}: `{path}.{key}` is unexpected: {}",
                    a[key]
                );
                assert_fields(what, &format!("{path}.{key}"), &a[key], &e[key]);
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(
                a.len(),
                e.len(),
                "{what}: `{path}` has {} items, expected {}: {actual}",
                a.len(),
                e.len()
            );
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_fields(what, &format!("{path}[{i}]"), a, e);
            }
        }
        _ => assert_eq!(actual, expected, "{what}: `{path}` differs"),
    }
}

fn openai_request(value: &Value) -> ChatCompletionRequest {
    serde_json::from_value(value.clone()).expect("golden OpenAI request parses")
}

fn convert(value: &Value, drop_params: bool) -> Result<request::Converted, ProviderError> {
    let options = request::Options {
        drop_params,
        stream: false,
    };
    request::convert(&openai_request(value), "claude-sonnet-4-5", options)
}

#[test]
fn requests_convert_as_the_golden_files_say() {
    for file in [
        "request_system_prompt.json",
        "request_multi_turn.json",
        "request_tools.json",
        "request_images.json",
        "request_stop_sequences.json",
        "request_thinking.json",
    ] {
        let doc = golden_json(file);
        let cases = doc["cases"].as_array().expect("cases");
        assert!(!cases.is_empty(), "{file}");
        for case in cases {
            let what = format!("{file}: {}", case["name"]);
            let converted =
                convert(&case["openai"], false).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_fields(&what, "body", &converted.body, &case["anthropic"]);
        }
    }
}

#[test]
fn tool_choice_variants_convert_as_the_golden_file_says() {
    let doc = golden_json("request_tool_choice.json");
    for case in doc["cases"].as_array().expect("cases") {
        let mut body = json!({
            "model": "claude",
            "max_tokens": 64,
            "tools": doc["tools"],
            "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        });
        for key in ["tool_choice", "parallel_tool_calls"] {
            if let Some(v) = case.get(key) {
                body[key] = v.clone();
            }
        }
        let converted = convert(&body, false).unwrap();
        let got = converted
            .body
            .get("tool_choice")
            .cloned()
            .unwrap_or(Value::Null);
        assert_fields(
            &case["name"].to_string(),
            "tool_choice",
            &got,
            &case["expected"],
        );
    }
}

#[test]
fn a_stream_request_asks_for_a_stream_and_leaves_stream_options_out() {
    let mut body = chat("claude", "hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let options = request::Options {
        drop_params: false,
        stream: true,
    };
    let converted = request::convert(&openai_request(&body), "claude-haiku-4-5", options).unwrap();
    assert_eq!(converted.body["stream"], true);
    assert!(converted.body.get("stream_options").is_none());
    assert_eq!(converted.body["model"], "claude-haiku-4-5");
}

#[test]
fn responses_convert_as_the_golden_files_say() {
    for file in [
        "response_text.json",
        "response_tool_use.json",
        "response_thinking.json",
        "response_cache_usage.json",
    ] {
        let doc = golden_json(file);
        let body = serde_json::to_vec(&doc["anthropic"]).unwrap();
        let converted = response::convert(&body, false).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut actual = serde_json::to_value(&converted).unwrap();
        assert!(actual["created"].as_u64().is_some_and(|c| c > 0), "{file}");
        actual.as_object_mut().unwrap().remove("created");
        assert_fields(file, "response", &actual, &doc["openai"]);
    }
}

#[test]
fn tool_use_arguments_are_the_json_of_the_input() {
    let doc = golden_json("response_tool_use.json");
    let converted =
        response::convert(&serde_json::to_vec(&doc["anthropic"]).unwrap(), false).unwrap();
    let calls = converted.choices[0].message.tool_calls.clone().unwrap();
    let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
    assert_eq!(args, doc["anthropic"]["content"][1]["input"]);
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ] {
        assert_eq!(response::finish_reason(stop), finish, "{stop}");
    }
}

#[test]
fn json_mode_turns_the_json_tool_back_into_content() {
    let body = json!({
        "id": "msg_json", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "tool_use", "id": "toolu_j", "name": request::JSON_TOOL_NAME, "input": {"temperature": 21.5}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5},
    });
    let converted = response::convert(&serde_json::to_vec(&body).unwrap(), true).unwrap();
    let choice = &converted.choices[0];
    assert_eq!(choice.message.text_content(), r#"{"temperature":21.5}"#);
    assert!(choice.message.tool_calls.is_none());
    assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

/// Feeds a recorded transcript through the converter, as the adapter does.
fn run_transcript(
    name: &str,
    include_usage: bool,
) -> Vec<Result<ChatCompletionChunk, ProviderError>> {
    let mut decoder = SseDecoder::new();
    let mut events = VecDeque::new();
    decoder.push(golden(name).as_bytes(), &mut events).unwrap();
    events.extend(decoder.finish());
    let mut converter = StreamConverter::new(include_usage, false);
    let mut out = Vec::new();
    for event in events {
        match converter.on_event(&event) {
            Ok(chunks) => out.extend(chunks.into_iter().map(Ok)),
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    assert!(
        converter.is_done() || out.last().is_some_and(Result::is_err),
        "{name} ended"
    );
    out
}

fn ok_chunks(items: Vec<Result<ChatCompletionChunk, ProviderError>>) -> Vec<ChatCompletionChunk> {
    items
        .into_iter()
        .map(|c| c.expect("no error item"))
        .collect()
}

fn text_of(chunks: &[ChatCompletionChunk]) -> String {
    chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.clone())
        .collect()
}

fn finish_of(chunks: &[ChatCompletionChunk]) -> Vec<String> {
    chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.finish_reason.clone())
        .collect()
}

#[test]
fn a_text_stream_opens_with_the_role_and_ends_with_the_finish_and_usage() {
    let chunks = ok_chunks(run_transcript("stream_text.sse", true));
    let first = &chunks[0];
    assert_eq!(first.id, "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
    assert_eq!(first.model, "claude-opus-4-6");
    assert_eq!(first.object, "chat.completion.chunk");
    assert_eq!(
        serde_json::to_value(&first.choices[0].delta).unwrap(),
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(text_of(&chunks), "Hello!");
    assert_eq!(finish_of(&chunks), ["stop"]);
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty(), "the usage chunk has no choices");
    let usage = last.usage.as_ref().unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (25, 15, 40)
    );
    assert!(chunks.iter().all(|c| c.id == first.id));

    let without = ok_chunks(run_transcript("stream_text.sse", false));
    assert!(
        without
            .iter()
            .all(|c| c.usage.is_none() && !c.choices.is_empty())
    );
    assert_eq!(finish_of(&without), ["stop"]);
}

#[test]
fn a_tool_use_stream_keeps_every_argument_fragment() {
    let transcript = golden("stream_tool_use.sse");
    let documented: Vec<String> = transcript
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["delta"]["type"] == "input_json_delta")
        .map(|v| v["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(documented.len(), 9);

    let chunks = ok_chunks(run_transcript("stream_tool_use.sse", true));
    assert_eq!(
        text_of(&chunks),
        "Okay, let's check the weather for San Francisco, CA:"
    );
    let calls: Vec<Value> = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.tool_calls.clone())
        .map(|calls| {
            assert_eq!(calls.len(), 1, "one fragment per chunk");
            serde_json::to_value(&calls[0]).unwrap()
        })
        .collect();
    assert_eq!(
        calls[0],
        json!({"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
               "function": {"name": "get_weather", "arguments": ""}})
    );
    let fragments: Vec<String> = calls[1..]
        .iter()
        .map(|c| {
            assert_eq!(
                c["index"], 0,
                "the tool-call index, not the block index (1)"
            );
            assert!(c.get("id").is_none() && c["function"].get("name").is_none());
            c["function"]["arguments"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        fragments, documented,
        "fragments preserved, in order, never collapsed"
    );
    let joined = fragments.concat();
    assert_eq!(
        joined,
        r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#
    );
    assert_eq!(
        serde_json::from_str::<Value>(&joined).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    assert_eq!(finish_of(&chunks), ["tool_calls"]);
    let usage = chunks.last().unwrap().usage.clone().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (472, 89));
}

#[test]
fn a_thinking_stream_gives_reasoning_content_and_the_signature() {
    let chunks = ok_chunks(run_transcript("stream_thinking.sse", false));
    let reasoning: String = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.reasoning_content.clone())
        .collect();
    assert!(reasoning.starts_with("I need to find the GCD of 1071 and 462"));
    assert!(reasoning.ends_with("So GCD(1071, 462) = 21"));
    let signatures: Vec<Value> = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.extra.get("thinking_blocks").cloned())
        .collect();
    assert_eq!(signatures.len(), 1);
    assert_eq!(
        signatures[0][0]["signature"],
        "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."
    );
    assert_eq!(
        text_of(&chunks),
        "The greatest common divisor of 1071 and 462 is **21**."
    );
    assert_eq!(finish_of(&chunks), ["stop"]);
}

#[test]
fn stream_usage_counts_cache_reads_and_writes_as_prompt_tokens() {
    let chunks = ok_chunks(run_transcript("stream_cache_usage.sse", true));
    assert_eq!(finish_of(&chunks), ["length"]);
    let usage = chunks.last().unwrap().usage.clone().unwrap();
    assert_eq!(usage.prompt_tokens, 21 + 188 + 188_086);
    assert_eq!(usage.cached_tokens(), 188_086);
    assert_eq!(usage.completion_tokens, 393);
    assert_eq!(usage.extra["cache_creation_input_tokens"], 188);
    assert_eq!(usage.extra["cache_read_input_tokens"], 188_086);
}

#[test]
fn an_error_event_ends_the_stream_with_a_classified_error() {
    let items = run_transcript("stream_error.sse", true);
    assert_eq!(items.len(), 3, "role, text, error");
    let err = items.last().unwrap().clone().unwrap_err();
    assert_eq!(err.class, ErrorClass::InternalServer);
    assert_eq!(err.status, Some(529));
    assert_eq!(err.message, "Overloaded");
    assert!(err.is_retryable());
}

fn http_response(status: u16, content_type: &str, body: &str) -> reqwest::Response {
    let mut response = axum::http::Response::new(body.to_owned());
    *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    reqwest::Response::from(response)
}

#[tokio::test]
async fn a_stream_cut_before_message_stop_ends_in_an_error_item() {
    use futures::StreamExt;
    let full = golden("stream_text.sse");
    let cut = &full[..full.find("event: message_delta").unwrap()];
    let response = http_response(200, "text/event-stream", cut);
    let converter = StreamConverter::new(false, false);
    let items: Vec<_> = llmbus::providers::anthropic::stream::chunks(response, converter, None)
        .collect()
        .await;
    let err = items.last().unwrap().clone().unwrap_err();
    assert_eq!(err.class, ErrorClass::InvalidResponse);
    assert!(err.message.contains("message_stop"), "{}", err.message);
    assert_eq!(
        items.iter().filter(|i| i.is_ok()).count(),
        3,
        "role, Hello, !"
    );
}

// ---------------------------------------------------------------------------------------
// Errors and drop_params
// ---------------------------------------------------------------------------------------

#[test]
fn every_error_type_maps_to_its_class() {
    let doc = golden_json("errors.json");
    for case in doc["cases"].as_array().unwrap() {
        let status = case["status"].as_u64().unwrap() as u16;
        let body = json!({
            "type": "error",
            "error": {"type": case["type"], "message": case["message"]},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        });
        let mut headers = HeaderMap::new();
        if let Some(secs) = case["retry_after"].as_str() {
            headers.insert("retry-after", HeaderValue::from_str(secs).unwrap());
        }
        let err = error::from_response(status, &headers, body.to_string().as_bytes());
        let class = format!("{:?}", err.class);
        assert_eq!(class, case["class"].as_str().unwrap(), "{case}");
        assert_eq!(err.status, Some(status));
        assert_eq!(err.message, case["message"].as_str().unwrap());
        if case["retry_after"].is_string() {
            assert_eq!(err.retry_after, Some(Duration::from_secs(17)));
        }
        // The same error as a stream event (no HTTP status): same class, documented status.
        let event = error::from_event(&body);
        assert_eq!(format!("{:?}", event.class), class, "event {case}");
        assert_eq!(event.status, Some(status), "event {case}");
    }
    let err = error::from_response(529, &HeaderMap::new(), b"");
    assert_eq!(err.class, ErrorClass::InternalServer);
    assert!(err.is_retryable());
    let err = error::from_response(502, &HeaderMap::new(), b"<html>bad gateway</html>");
    assert_eq!(err.class, ErrorClass::InternalServer);
    assert!(err.message.contains("bad gateway"), "{}", err.message);
}

fn with_unsupported() -> Value {
    let mut body = chat("claude", "hello");
    body["logit_bias"] = json!({"50256": -100});
    body["presence_penalty"] = json!(0.5);
    body["frequency_penalty"] = json!(0.5);
    body["n"] = json!(2);
    body["logprobs"] = json!(true);
    body["seed"] = json!(42);
    body
}

#[test]
fn unsupported_params_are_refused_without_drop_params() {
    let err = convert(&with_unsupported(), false).unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
    assert_eq!(err.status, Some(400));
    assert!(
        err.message.contains("`n`") || err.message.contains("`logit_bias`"),
        "{}",
        err.message
    );
    assert!(err.message.contains("drop_params: true"), "{}", err.message);
    for (param, value) in [
        ("logit_bias", json!({"1": 1})),
        ("presence_penalty", json!(0.1)),
        ("frequency_penalty", json!(0.1)),
        ("n", json!(3)),
        ("logprobs", json!(true)),
        ("seed", json!(7)),
    ] {
        let mut body = chat("claude", "hello");
        body[param] = value;
        let err = convert(&body, false).unwrap_err();
        assert!(
            err.message.contains(&format!("`{param}`")),
            "{param}: {}",
            err.message
        );
    }
    // Values that ask for nothing are fine.
    let mut body = chat("claude", "hello");
    body["n"] = json!(1);
    body["logprobs"] = json!(false);
    assert!(convert(&body, false).is_ok());
}

#[test]
fn unsupported_params_are_dropped_with_drop_params() {
    let converted = convert(&with_unsupported(), true).unwrap();
    for param in [
        "logit_bias",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "logprobs",
        "seed",
    ] {
        assert!(converted.body.get(param).is_none(), "{param} dropped");
    }
    assert_eq!(converted.body["messages"][0]["content"], "hello");
}

#[test]
fn requests_anthropic_cannot_express_are_400s() {
    let cases = [
        json!([{"role": "function", "name": "f", "content": "x"}]),
        json!([{"role": "tool", "content": "no id"}]),
        json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": null,
                "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]),
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]),
        json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]),
    ];
    for messages in cases {
        let body = json!({"model": "claude", "messages": messages});
        let err = convert(&body, true).unwrap_err();
        assert_eq!(
            (err.class, err.status),
            (ErrorClass::BadRequest, Some(400)),
            "{messages}"
        );
    }
    let mut body = chat("claude", "x");
    body["reasoning_effort"] = json!("extreme");
    assert!(convert(&body, true).is_err());
}

// ---------------------------------------------------------------------------------------
// End to end: NATS → worker → adapter → fake Anthropic over loopback HTTP
// ---------------------------------------------------------------------------------------

const KEY: &str = "sk-ant-test-0123456789";

fn deployment(group: &str, fake: &FakeAnthropic, id: &str) -> String {
    format!(
        "  - model_name: {group}\n    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_base: \"{}\", api_key: {KEY}}}\n    model_info: {{id: {id}}}\n",
        fake.url()
    )
}

async fn gateway(fake: &FakeAnthropic, settings: &str) -> Gateway {
    Gateway::start(&format!(
        "model_list:\n{}{settings}",
        deployment("claude", fake, "claude-1")
    ))
    .await
}

#[tokio::test]
async fn a_completion_goes_through_the_messages_api_and_comes_back_openai_shaped() {
    let fake = FakeAnthropic::start().await;
    fake.require_key(KEY);
    let gw = gateway(&fake, "").await;
    let body = json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello claude"},
        ],
    });
    let reply = gw.complete(body).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(content(&reply), "echo: hello claude");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(usage["completion_tokens"], 5, "⌈18 chars / 4⌉");
    let cost: f64 = reply.header("Llm-Cost-Usd").unwrap().parse().unwrap();
    assert!(cost > 0.0, "claude-sonnet-4-5 has a price: {cost}");

    let seen = fake.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.body["model"], "claude-sonnet-4-5");
    assert_eq!(seen.body["system"], "Be brief.");
    assert_eq!(seen.body["max_tokens"], 4096);
    assert_eq!(
        seen.body["messages"],
        json!([{"role": "user", "content": "hello claude"}])
    );
    assert!(seen.body.get("stream").is_none());
}

#[tokio::test]
async fn a_stream_arrives_as_openai_chunks_with_usage_and_cost() {
    let fake = FakeAnthropic::start().await;
    let gw = gateway(&fake, "").await;
    let mut body = chat("claude", "the quick brown fox");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(
        sentinel.status,
        200,
        "{:?}",
        chunks.iter().map(|c| c.json()).collect::<Vec<_>>()
    );
    assert_eq!(chunks[0].json()["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), "echo: the quick brown fox");
    let finishes: Vec<Value> = chunks
        .iter()
        .map(|c| c.json()["choices"][0]["finish_reason"].clone())
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [json!("stop")]);
    let last = chunks.last().unwrap().json();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 7);
    assert!(last["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let cost: f64 = sentinel.header("Llm-Cost-Usd").unwrap().parse().unwrap();
    assert!(cost > 0.0);
    assert_eq!(fake.last_request().unwrap().body["stream"], true);
}

#[tokio::test]
async fn streamed_tool_call_fragments_survive_the_gateway() {
    let fake = FakeAnthropic::start().await;
    fake.set_default(Fault::ToolUse);
    let gw = gateway(&fake, "").await;
    let mut body = chat("claude", "What's the weather like in San Francisco?");
    body["stream"] = json!(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(sentinel.status, 200);
    let calls: Vec<Value> = chunks
        .iter()
        .filter_map(|c| {
            c.json()["choices"][0]["delta"]["tool_calls"]
                .get(0)
                .cloned()
        })
        .collect();
    assert_eq!(calls[0]["id"], TOOL_USE_ID);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let fragments: Vec<&str> = calls[1..]
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(fragments, TOOL_INPUT_PIECES);
    assert_eq!(fragments.concat(), TOOL_INPUT);
    let last = chunks.last().unwrap().json();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        fake.last_request().unwrap().body["tools"][0]["name"],
        "get_weather"
    );
}

#[tokio::test]
async fn cached_prompt_tokens_are_reported_and_priced() {
    let fake = FakeAnthropic::start().await;
    fake.push(Fault::Cached { read: 2000 });
    let gw = gateway(&fake, "").await;
    let reply = gw.complete(chat("claude", "hello")).await;
    assert_eq!(reply.status, 200);
    let usage = reply.json()["usage"].clone();
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 2000);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 2000);
    assert_eq!(usage["cache_read_input_tokens"], 2000);
    let cost: f64 = reply.header("Llm-Cost-Usd").unwrap().parse().unwrap();
    assert!(cost > 0.0);
}

#[tokio::test]
async fn an_overloaded_deployment_is_retried_on_the_other_one() {
    let bad = FakeAnthropic::start().await;
    bad.set_default(Fault::Overloaded);
    let good = FakeAnthropic::start().await;
    let yaml = format!(
        "model_list:\n{}{}",
        deployment("claude", &bad, "bad"),
        deployment("claude", &good, "good")
    );
    let gw = Gateway::start(&yaml).await;
    for _ in 0..6 {
        let r = gw.complete(chat("claude", "x")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("Llm-Deployment"), Some("good"));
    }
    assert!(bad.request_count() > 0, "the overloaded one was tried");
}

#[tokio::test]
async fn a_529_fails_like_any_5xx_after_the_retries() {
    let fake = FakeAnthropic::start().await;
    fake.set_default(Fault::Overloaded);
    let gw = gateway(&fake, "router_settings: {num_retries: 2}\n").await;
    let r = gw.complete(chat("claude", "x")).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "api_error");
    assert_eq!(r.header("Llm-Attempts"), Some("3"));
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn a_rate_limited_call_is_retried_and_an_overloaded_stream_too() {
    let fake = FakeAnthropic::start().await;
    fake.push(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let gw = gateway(&fake, "").await;
    let r = gw.complete(chat("claude", "again")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(content(&r), "echo: again");
    assert_eq!(r.header("Llm-Attempts"), Some("2"));

    // An `overloaded_error` event before any content: the stream is retried.
    fake.push(Fault::StreamError);
    let mut body = chat("claude", "stream again");
    body["stream"] = json!(true);
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(sentinel.status, 200);
    assert_eq!(streamed_text(&chunks), "echo: stream again");
}

#[tokio::test]
async fn errors_keep_their_class_and_never_carry_the_key() {
    let fake = FakeAnthropic::start().await;
    fake.push(Fault::Error {
        status: 401,
        kind: "authentication_error".into(),
        message: format!("invalid x-api-key: {KEY}"),
    });
    // A 401 cools a deployment down at once (misconfigured, as LiteLLM): without cooldowns the
    // second call reaches the upstream.
    let gw = gateway(&fake, "router_settings: {disable_cooldowns: true}\n").await;
    let r = gw.complete(chat("claude", "x")).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(!text.contains(KEY), "the key leaked: {text}");
    assert!(text.contains("invalid x-api-key"), "{text}");

    fake.push(Fault::Error {
        status: 400,
        kind: "invalid_request_error".into(),
        message: "prompt is too long: 208310 tokens > 200000 maximum".into(),
    });
    let r = gw.complete(chat("claude", "x")).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["code"],
        "context_length_exceeded",
        "{}",
        r.json()
    );
}

#[tokio::test]
async fn drop_params_decides_between_a_400_and_a_dropped_parameter() {
    let fake = FakeAnthropic::start().await;
    let gw = gateway(&fake, "").await;
    let mut body = chat("claude", "x");
    body["logit_bias"] = json!({"50256": -100});
    let r = gw.complete(body.clone()).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("logit_bias") && message.contains("drop_params: true"),
        "{message}"
    );
    assert_eq!(fake.request_count(), 0, "the upstream is not called");

    let gw = gateway(&fake, "litellm_settings: {drop_params: true}\n").await;
    let r = gw.complete(body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        fake.last_request()
            .unwrap()
            .body
            .get("logit_bias")
            .is_none()
    );
}

#[test]
fn cache_control_on_a_tool_definition_reaches_anthropic() {
    let request = serde_json::json!({
        "model": "claude",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}},
            "cache_control": {"type": "ephemeral"}
        }]
    });
    let converted = convert(&request, false).expect("converts");
    assert_eq!(
        converted.body["tools"][0]["cache_control"],
        serde_json::json!({"type": "ephemeral"})
    );
}
