//! Cohere v2: request conversion against golden files built from Cohere's documented tool-use
//! example, answers and SSE streams, errors, embeddings, and the whole path over NATS against
//! a fake that speaks `/v2/chat`.

use crate::support;

use std::time::Duration;

use crate::support::{
    fake_native::{FakeNative, Reply},
    gateway::{Gateway, chat, content, streamed_text},
};
use futures::StreamExt;
use llmbus::{
    config::LitellmParams,
    providers::{
        self, CallContext, ErrorClass,
        cohere::{completion, convert::chat_body},
    },
    wire::openai::{ChatCompletionRequest, EmbeddingRequest},
};
use serde_json::{Value, json};

fn golden(name: &str) -> Value {
    let path = format!("{}/tests/golden/cohere/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect("golden JSON")
}

fn request(v: Value) -> ChatCompletionRequest {
    serde_json::from_value(v).expect("a chat request")
}

#[test]
fn request_converts_to_the_documented_v2_chat_shape() {
    let body = chat_body(
        &request(golden("tools.openai.json")),
        "command-a-03-2025",
        false,
        false,
    )
    .unwrap();
    let want = golden("tools.cohere.json");
    for key in want.as_object().unwrap().keys() {
        assert_eq!(body[key], want[key], "field `{key}`");
    }
    assert_eq!(body, want);
}

#[test]
fn params_cohere_cannot_take_are_refused_or_dropped() {
    let mut r = chat("m", "hi");
    r["logprobs"] = json!(true);
    let err = chat_body(&request(r.clone()), "m", false, false).unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::BadRequest, Some(400)));
    assert!(err.message.contains("logprobs"));
    assert!(
        chat_body(&request(r), "m", false, true)
            .unwrap()
            .get("logprobs")
            .is_none()
    );

    let mut r = golden("tools.openai.json");
    r["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    assert!(chat_body(&request(r.clone()), "m", false, false).is_err());
    assert!(
        chat_body(&request(r.clone()), "m", false, true)
            .unwrap()
            .get("tool_choice")
            .is_none()
    );
    r["tool_choice"] = json!("none");
    assert_eq!(
        chat_body(&request(r), "m", false, false).unwrap()["tool_choice"],
        "NONE"
    );

    let mut r = chat("m", "hi");
    r["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
    assert_eq!(
        chat_body(&request(r), "m", true, false).unwrap()["response_format"],
        json!({"type": "json_object", "json_schema": {"type": "object"}})
    );
}

#[test]
fn the_documented_tool_call_answer_converts() {
    let r = completion(&golden("tools.response.json"), "command-a-03-2025").unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"][0],
        json!({"id": "get_weather_1byjy32y4hvq", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}})
    );
    assert_eq!(v["usage"]["prompt_tokens"], 1048);
    assert_eq!(v["usage"]["completion_tokens"], 28);
    assert_eq!(v["usage"]["total_tokens"], 1076);
    assert_eq!(
        v["usage"]["billed_units"],
        json!({"input_tokens": 37, "output_tokens": 28})
    );

    let mut failed = golden("tools.response.json");
    failed["finish_reason"] = json!("ERROR");
    assert_eq!(
        completion(&failed, "m").unwrap_err().class,
        ErrorClass::InternalServer
    );
}

fn ctx(model: &str) -> CallContext {
    CallContext {
        upstream_model: model.into(),
        timeout: Duration::from_secs(10),
        traceparent: None,
    }
}

fn provider(fake: &FakeNative) -> std::sync::Arc<dyn providers::Provider> {
    let params = LitellmParams {
        model: "cohere_chat/command-a-03-2025".into(),
        api_base: Some(fake.url()),
        api_key: Some(llmbus::config::Secret::new("co-secret-key")),
        ..LitellmParams::default()
    };
    providers::build(&params, &reqwest::Client::new())
        .unwrap()
        .0
}

async fn stream_items(fake: &FakeNative) -> Vec<Result<Value, ErrorClass>> {
    let mut body = chat("m", "weather?");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    provider(fake)
        .stream(&request(body), &ctx("command-a-03-2025"))
        .await
        .unwrap()
        .map(|r| {
            r.map(|c| serde_json::to_value(c).unwrap())
                .map_err(|e| e.class)
        })
        .collect()
        .await
}

#[tokio::test]
async fn tool_call_streams_keep_every_argument_piece_and_usage_last() {
    let fake = FakeNative::start().await;
    let tc = |kind: &str, call: Value| json!({"type": kind, "index": 0, "delta": {"message": {"tool_calls": call}}});
    fake.push(Reply::sse(&[
        json!({"type": "message-start", "id": "a1", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
        json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look it up."}}}),
        tc("tool-call-start", json!({"id": "get_weather_nsz5zm3w56q3", "type": "function", "function": {"name": "get_weather", "arguments": ""}})),
        tc("tool-call-delta", json!({"function": {"arguments": "{\n    \""}})),
        tc("tool-call-delta", json!({"function": {"arguments": "location\":"}})),
        tc("tool-call-delta", json!({"function": {"arguments": " \"Toronto\"\n}"}})),
        json!({"type": "tool-call-end", "index": 0}),
        json!({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
            "billed_units": {"input_tokens": 37, "output_tokens": 28},
            "tokens": {"input_tokens": 1048, "output_tokens": 28}}}}),
    ]));
    let items: Vec<Value> = stream_items(&fake)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(items[0]["choices"][0]["delta"]["role"], "assistant");
    let start = &items[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(start["id"], "get_weather_nsz5zm3w56q3");
    assert_eq!(start["function"]["name"], "get_weather");
    let pieces: Vec<&str> = items[2..5]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(pieces, ["{\n    \"", "location\":", " \"Toronto\"\n}"]);
    assert_eq!(items[5]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(items[6]["choices"], json!([]));
    assert_eq!(items[6]["usage"]["prompt_tokens"], 1048);
    assert_eq!(items.len(), 7);
    let seen = fake.last();
    assert_eq!(seen.path, "/v2/chat");
    assert_eq!(seen.body["stream"], true);
    assert_eq!(seen.header("authorization"), Some("Bearer co-secret-key"));
    assert_eq!(seen.header("accept"), Some("text/event-stream"));
}

#[tokio::test]
async fn failed_and_truncated_streams_end_with_an_error() {
    let fake = FakeNative::start().await;
    fake.push(Reply::sse(&[
        json!({"type": "message-start", "id": "a1", "delta": {"message": {"role": "assistant"}}}),
        json!({"type": "message-end", "delta": {"finish_reason": "ERROR"}}),
    ]));
    let items = stream_items(&fake).await;
    assert_eq!(items.last().unwrap(), &Err(ErrorClass::InternalServer));
    fake.push(Reply::sse(&[
        json!({"type": "message-start", "id": "a1", "delta": {"message": {"role": "assistant"}}}),
        json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi"}}}}),
    ]));
    let items = stream_items(&fake).await;
    assert!(items[1].is_ok());
    assert_eq!(items.last().unwrap(), &Err(ErrorClass::InvalidResponse));
}

#[tokio::test]
async fn http_errors_map_to_classes_without_the_key() {
    let fake = FakeNative::start().await;
    let p = provider(&fake);
    let cases = [
        (
            400,
            "too many tokens: size limit exceeded by 1711 tokens. Try using shorter or fewer inputs.",
            ErrorClass::ContextWindowExceeded,
        ),
        (
            400,
            "invalid request: message must be at least 1 token long",
            ErrorClass::BadRequest,
        ),
        (
            401,
            "invalid api token co-secret-key",
            ErrorClass::Authentication,
        ),
        (498, "invalid api token", ErrorClass::Authentication),
        (404, "model 'nope' not found", ErrorClass::NotFound),
        (
            429,
            "You are using a Trial key, which is limited to 20 API calls / minute.",
            ErrorClass::RateLimit,
        ),
        (
            500,
            "internal server error, this has been reported to our developers",
            ErrorClass::InternalServer,
        ),
    ];
    for (status, message, class) in cases {
        fake.push(Reply::json(status, json!({"id": "e1", "message": message})));
        let err = p
            .complete(&request(chat("m", "hi")), &ctx("nope"))
            .await
            .unwrap_err();
        assert_eq!((err.class, err.status), (class, Some(status)), "{err}");
        assert!(!err.message.contains("co-secret-key"), "{}", err.message);
    }
}

#[tokio::test]
async fn embeddings_use_v2_embed_with_float_types() {
    let fake = FakeNative::start().await;
    let req: EmbeddingRequest = serde_json::from_value(
        json!({"model": "e", "input": ["hello", "goodbye"], "input_type": "search_query"}),
    )
    .unwrap();
    let out = provider(&fake)
        .embed(&req, &ctx("embed-v4.0"))
        .await
        .unwrap();
    assert_eq!(out.data.len(), 2);
    assert_eq!(out.data[1].embedding, json!([0.5, 1.0]));
    assert_eq!(out.usage.prompt_tokens, 6);
    let seen = fake.last();
    assert_eq!(seen.path, "/v2/embed");
    assert_eq!(
        seen.body,
        json!({"model": "embed-v4.0", "texts": ["hello", "goodbye"],
               "input_type": "search_query", "embedding_types": ["float"]})
    );
}

fn config(fake: &FakeNative) -> String {
    format!(
        r#"
model_list:
  - model_name: command
    litellm_params:
      model: cohere_chat/command-a-03-2025
      api_base: {url}
      api_key: co-test-key
  - model_name: embed
    litellm_params:
      model: cohere/embed-v4.0
      api_base: {url}
      api_key: co-test-key
router_settings:
  num_retries: 0
"#,
        url = fake.url()
    )
}

#[tokio::test]
async fn completions_and_streams_over_nats() {
    let fake = FakeNative::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let reply = gw.complete(chat("command", "hello cohere")).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(content(&reply), "echo: hello cohere");
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "stop");
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 71);
    assert_eq!(fake.last().body["model"], "command-a-03-2025");
    assert_eq!(
        fake.last().header("authorization"),
        Some("Bearer co-test-key")
    );

    let mut body = chat("command", "stream it now");
    body["stream"] = json!(true);
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(sentinel.status, 200);
    assert_eq!(streamed_text(&chunks), "echo: stream it now");
    assert!(chunks.iter().all(|c| c.json().get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap().json()["choices"][0]["finish_reason"],
        "stop"
    );

    fake.push(Reply::json(429, json!({"message": "rate limited"})));
    assert_eq!(gw.complete(chat("command", "again")).await.status, 429);
}

async fn embed_over_nats(gw: &Gateway, body: Value) -> llmbus::client::Reply {
    gw.client
        .embed(
            Default::default(),
            bytes::Bytes::from(body.to_string()),
            support::gateway::PATIENCE,
        )
        .await
        .expect("an embeddings reply")
}

#[tokio::test]
async fn embeddings_over_nats() {
    let fake = FakeNative::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let reply = embed_over_nats(&gw, json!({"model": "embed", "input": "one text"})).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["data"][0]["embedding"], json!([0.5, 0.0]));
    assert_eq!(fake.last().path, "/v2/embed");
}
