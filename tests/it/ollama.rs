//! Ollama's native API: request conversion against golden files built from Ollama's
//! documented examples, answers and NDJSON streams, errors, embeddings, and the whole path
//! over NATS against a fake that speaks `/api/chat`.

use crate::support;

use std::time::Duration;

use crate::support::{
    fake_native::{FakeNative, Reply},
    gateway::{Gateway, chat, content, streamed_text},
};
use futures::StreamExt;
use llmbus::{
    config::LitellmParams,
    providers::{self, CallContext, ErrorClass, ollama::convert::chat_body},
    wire::openai::{ChatCompletionRequest, EmbeddingRequest},
};
use serde_json::{Value, json};

fn golden(name: &str) -> Value {
    let path = format!("{}/tests/golden/ollama/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect("golden JSON")
}

fn request(v: Value) -> ChatCompletionRequest {
    serde_json::from_value(v).expect("a chat request")
}

#[test]
fn request_converts_to_the_documented_api_chat_shape() {
    let body = chat_body(
        &request(golden("tools.openai.json")),
        "llama3.2",
        false,
        false,
    )
    .unwrap();
    let want = golden("tools.ollama.json");
    for key in [
        "model",
        "messages",
        "tools",
        "format",
        "keep_alive",
        "stream",
        "options",
    ] {
        assert_eq!(body[key], want[key], "field `{key}`");
    }
    assert_eq!(body, want);
}

#[test]
fn params_ollama_cannot_take_are_refused_or_dropped() {
    let mut r = chat("m", "hi");
    r["logit_bias"] = json!({"1": 1});
    let err = chat_body(&request(r.clone()), "m", false, false).unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::BadRequest, Some(400)));
    assert!(err.message.contains("logit_bias"));
    let body = chat_body(&request(r), "m", false, true).unwrap();
    assert!(body.get("options").is_none(), "{body}");

    let mut r = golden("tools.openai.json");
    r["tool_choice"] = json!("none");
    let body = chat_body(&request(r.clone()), "m", true, false).unwrap();
    assert!(
        body.get("tools").is_none(),
        "tool_choice none leaves the tools out"
    );
    assert_eq!(body["stream"], true);
    r["tool_choice"] = json!("required");
    assert!(chat_body(&request(r.clone()), "m", true, false).is_err());
    assert!(
        chat_body(&request(r), "m", true, true)
            .unwrap()
            .get("tools")
            .is_some()
    );

    let mut r = chat("m", "hi");
    r["response_format"] = json!({"type": "json_object"});
    assert_eq!(
        chat_body(&request(r), "m", false, false).unwrap()["format"],
        "json"
    );
    let r = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]});
    assert!(chat_body(&request(r), "m", false, false).is_err());
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
        model: "ollama/llama3.2".into(),
        api_base: Some(fake.url()),
        api_key: Some(llmbus::config::Secret::new("ollama-secret-key")),
        ..LitellmParams::default()
    };
    providers::build(&params, &reqwest::Client::new())
        .unwrap()
        .0
}

#[tokio::test]
async fn the_documented_tool_call_answer_converts() {
    let fake = FakeNative::start().await;
    fake.push(Reply::json(200, golden("tools.response.json")));
    let r = provider(&fake)
        .complete(&request(golden("tools.openai.json")), &ctx("llama3.2"))
        .await
        .unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_current_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"format": "celsius", "location": "Paris, FR"}));
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 122, "completion_tokens": 33, "total_tokens": 155})
    );
    let seen = fake.last();
    assert_eq!(seen.path, "/api/chat");
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer ollama-secret-key")
    );
    assert_eq!(seen.body["stream"], false);
}

async fn stream_items(fake: &FakeNative, include_usage: bool) -> Vec<Result<Value, ErrorClass>> {
    let mut body = chat("m", "weather?");
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    provider(fake)
        .stream(&request(body), &ctx("llama3.2"))
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
async fn streams_carry_text_tool_calls_and_usage_last() {
    let fake = FakeNative::start().await;
    let line = |message: Value, done: bool| json!({"model": "llama3.2", "created_at": "2024-07-22T20:33:28Z", "message": message, "done": done});
    let mut last = line(json!({"role": "assistant", "content": ""}), true);
    last["done_reason"] = json!("stop");
    last["prompt_eval_count"] = json!(26);
    last["eval_count"] = json!(298);
    fake.push(Reply::ndjson(&[
        line(json!({"role": "assistant", "content": "Let me "}), false),
        line(json!({"role": "assistant", "content": "check."}), false),
        line(
            json!({"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {}}}]}),
            false,
        ),
        last,
    ]));
    let items: Vec<Value> = stream_items(&fake, true)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(items[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(items[0]["choices"][0]["delta"]["content"], "Let me ");
    assert_eq!(items[1]["choices"][0]["delta"]["content"], "check.");
    let calls = &items[2]["choices"][0]["delta"]["tool_calls"];
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[1]["index"], 1);
    assert_eq!(
        calls[0]["function"]["arguments"],
        "{\"location\":\"Paris\"}"
    );
    assert_eq!(items[3]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(items[4]["choices"], json!([]));
    assert_eq!(items[4]["usage"]["total_tokens"], 324);
    assert_eq!(items.len(), 5);
    assert_eq!(fake.last().body["stream"], true);
}

#[tokio::test]
async fn errors_mid_stream_and_truncation_are_error_items() {
    let fake = FakeNative::start().await;
    fake.push(Reply::ndjson(&[
        json!({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": false}),
        json!({"error": "an error was encountered while running the model"}),
    ]));
    let items = stream_items(&fake, false).await;
    assert!(items[0].is_ok());
    assert_eq!(items[1], Err(ErrorClass::InternalServer));
    assert_eq!(items.len(), 2);

    fake.push(Reply::ndjson(&[
        json!({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": false}),
    ]));
    let items = stream_items(&fake, false).await;
    assert_eq!(items.last().unwrap(), &Err(ErrorClass::InvalidResponse));
}

#[tokio::test]
async fn http_errors_map_to_classes_without_the_key() {
    let fake = FakeNative::start().await;
    let p = provider(&fake);
    let cases = [
        (
            404,
            "model \"nope\" not found, try pulling it first",
            ErrorClass::NotFound,
        ),
        (
            400,
            "invalid options: ollama-secret-key",
            ErrorClass::BadRequest,
        ),
        (
            500,
            "llama runner process has terminated",
            ErrorClass::InternalServer,
        ),
        (
            503,
            "server busy, please try again.  maximum pending requests exceeded",
            ErrorClass::InternalServer,
        ),
    ];
    for (status, message, class) in cases {
        fake.push(Reply::json(status, json!({ "error": message })));
        let err = p
            .complete(&request(chat("m", "hi")), &ctx("nope"))
            .await
            .unwrap_err();
        assert_eq!((err.class, err.status), (class, Some(status)), "{err}");
        assert!(
            !err.message.contains("ollama-secret-key"),
            "{}",
            err.message
        );
    }
}

#[tokio::test]
async fn embeddings_use_api_embed() {
    let fake = FakeNative::start().await;
    let req: EmbeddingRequest =
        serde_json::from_value(json!({"model": "e", "input": ["a", "b"]})).unwrap();
    let out = provider(&fake)
        .embed(&req, &ctx("all-minilm"))
        .await
        .unwrap();
    assert_eq!(out.data.len(), 2);
    assert_eq!(out.data[1].embedding, json!([0.1, 1.0]));
    assert_eq!(out.usage.prompt_tokens, 14);
    let seen = fake.last();
    assert_eq!(seen.path, "/api/embed");
    assert_eq!(
        seen.body,
        json!({"model": "all-minilm", "input": ["a", "b"]})
    );
}

fn config(fake: &FakeNative) -> String {
    format!(
        r#"
model_list:
  - model_name: local
    litellm_params:
      model: ollama_chat/llama3.2
      api_base: {url}
  - model_name: minilm
    litellm_params:
      model: ollama/all-minilm
      api_base: {url}
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
    let mut body = chat("local", "hello ollama");
    body["temperature"] = json!(0.1);
    let reply = gw.complete(body).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(content(&reply), "echo: hello ollama");
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 26);
    let seen = fake.last();
    assert_eq!(seen.body["model"], "llama3.2");
    assert_eq!(seen.body["options"], json!({"temperature": 0.1}));
    assert!(seen.header("authorization").is_none());

    let mut body = chat("local", "stream this one");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(sentinel.status, 200);
    assert_eq!(streamed_text(&chunks), "echo: stream this one");
    let last = chunks.last().unwrap().json();
    assert_eq!(last["usage"]["completion_tokens"], 9);

    fake.push(Reply::json(
        404,
        json!({"error": "model \"llama3.2\" not found, try pulling it first"}),
    ));
    let reply = gw.complete(chat("local", "hi")).await;
    assert_eq!(
        reply.status,
        404,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
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
    let reply = embed_over_nats(&gw, json!({"model": "minilm", "input": ["x", "y", "z"]})).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    assert_eq!(v["data"][2]["embedding"], json!([0.1, 2.0]));
    assert_eq!(fake.last().body["model"], "all-minilm");
}
