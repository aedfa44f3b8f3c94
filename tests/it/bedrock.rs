//! AWS Bedrock Converse: request conversion against golden files built from AWS's documented
//! examples, response and stream conversion, SigV4 on the wire, error mapping, and the whole
//! path over NATS against a fake that speaks Converse (real event-stream frames).

use crate::support;

use std::time::Duration;

use crate::support::{
    fake_native::{FakeNative, Reply, event_frame, exception_frame},
    gateway::{Gateway, chat, content, streamed_text},
};
use futures::StreamExt;
use llmbus::{
    config::LitellmParams,
    providers::{
        self, CallContext, ErrorClass,
        bedrock::{request::converse_body, response::completion, stream},
    },
    wire::openai::{ChatCompletionRequest, EmbeddingRequest},
};
use serde_json::{Value, json};

fn golden(name: &str) -> Value {
    let path = format!("{}/tests/golden/bedrock/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect("golden JSON")
}

fn request(v: Value) -> ChatCompletionRequest {
    serde_json::from_value(v).expect("a chat request")
}

#[test]
fn request_converts_to_the_documented_converse_shape() {
    let body = converse_body(&request(golden("tool_use.openai.json")), false).unwrap();
    let want = golden("tool_use.converse.json");
    for key in [
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "additionalModelRequestFields",
    ] {
        assert_eq!(body[key], want[key], "field `{key}`");
    }
    assert_eq!(body, want);
}

#[test]
fn tool_choice_required_and_named_map_to_any_and_tool() {
    let mut r = golden("tool_use.openai.json");
    r["tool_choice"] = json!("required");
    let body = converse_body(&request(r.clone()), false).unwrap();
    assert_eq!(body["toolConfig"]["toolChoice"], json!({"any": {}}));
    r["tool_choice"] = json!({"type": "function", "function": {"name": "top_song"}});
    let body = converse_body(&request(r), false).unwrap();
    assert_eq!(
        body["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "top_song"}})
    );
}

#[test]
fn response_converts_tool_use_text_and_usage() {
    let r = completion(&golden("tool_use.response.json"), "anthropic.claude-3").unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "anthropic.claude-3");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(
        choice["message"]["content"],
        "To find the most popular song, I will call the top_song tool."
    );
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "top_song");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"sign": "WZPZ"}));
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 375, "completion_tokens": 36, "total_tokens": 411})
    );
}

/// A ConverseStream with a tool call whose input arrives in three pieces.
fn tool_stream_frames() -> Vec<Vec<u8>> {
    let events = [
        ("messageStart", json!({"role": "assistant"})),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Let me check."}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex": 0})),
        (
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "top_song"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"si"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "gn\": \"WZ"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "PZ\"}"}}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex": 1})),
        ("messageStop", json!({"stopReason": "tool_use"})),
        (
            "metadata",
            json!({"usage": {"inputTokens": 100, "outputTokens": 20, "totalTokens": 150,
                             "cacheReadInputTokens": 30}, "metrics": {"latencyMs": 900}}),
        ),
    ];
    events.iter().map(|(k, p)| event_frame(k, p)).collect()
}

async fn decode(
    bytes: Vec<u8>,
    piece: usize,
    include_usage: bool,
) -> Vec<Result<Value, ErrorClass>> {
    let parts: Vec<Result<bytes::Bytes, providers::ProviderError>> = bytes
        .chunks(piece)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let info = stream::StreamInfo {
        model: "m".into(),
        include_usage,
    };
    stream::chunks(futures::stream::iter(parts), info, vec!["SECRETKEY".into()])
        .map(|r| {
            r.map(|c| serde_json::to_value(c).unwrap())
                .map_err(|e| e.class)
        })
        .collect()
        .await
}

#[tokio::test]
async fn stream_frames_become_chunks_even_when_split_byte_by_byte() {
    let bytes: Vec<u8> = tool_stream_frames().concat();
    for piece in [1, 7, bytes.len()] {
        let chunks: Vec<Value> = decode(bytes.clone(), piece, true)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Let me check.");
        let start = &chunks[2]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(start["index"], 0);
        assert_eq!(start["id"], "tooluse_1");
        assert_eq!(start["function"]["name"], "top_song");
        let pieces: Vec<&str> = chunks[3..6]
            .iter()
            .map(|c| {
                let call = &c["choices"][0]["delta"]["tool_calls"][0];
                assert_eq!(call["index"], 0);
                call["function"]["arguments"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            pieces,
            ["{\"si", "gn\": \"WZ", "PZ\"}"],
            "each piece kept as it came"
        );
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
        let last = chunks.last().unwrap();
        assert_eq!(chunks.len(), 8);
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 130);
        assert_eq!(last["usage"]["completion_tokens"], 20);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 30);
        let ids: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "one id for the stream");
    }
    let without_usage = decode(bytes, 64, false).await;
    assert_eq!(without_usage.len(), 7, "no usage chunk unless asked");
}

#[tokio::test]
async fn exceptions_and_truncation_end_the_stream_with_an_error() {
    let mut bytes = event_frame("messageStart", &json!({"role": "assistant"}));
    bytes.extend(exception_frame(
        "throttlingException",
        "Too many tokens, slow down (SECRETKEY)",
    ));
    let items = decode(bytes, 16, false).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[1], Err(ErrorClass::RateLimit));

    let bytes = exception_frame("modelStreamErrorException", "the model broke");
    assert_eq!(
        decode(bytes, 16, false).await,
        vec![Err(ErrorClass::InternalServer)]
    );

    let bytes = exception_frame(
        "validationException",
        "Input is too long for requested model.",
    );
    assert_eq!(
        decode(bytes, 16, false).await,
        vec![Err(ErrorClass::ContextWindowExceeded)]
    );

    // Cut in the middle of the second frame, then the body ends.
    let full = tool_stream_frames().concat();
    let first = tool_stream_frames()[0].len();
    let items = decode(full[..first + 10].to_vec(), 5, false).await;
    assert!(items[0].is_ok());
    assert_eq!(items.last().unwrap(), &Err(ErrorClass::InvalidResponse));
    // Whole frames but no messageStop.
    let items = decode(tool_stream_frames()[..3].concat(), 64, false).await;
    assert_eq!(items.last().unwrap(), &Err(ErrorClass::InvalidResponse));
}

fn ctx(model: &str) -> CallContext {
    CallContext {
        upstream_model: model.into(),
        timeout: Duration::from_secs(10),
        traceparent: None,
    }
}

fn provider(fake: &FakeNative, model: &str) -> std::sync::Arc<dyn providers::Provider> {
    let params = LitellmParams {
        model: format!("bedrock/{model}"),
        api_base: Some(fake.url()),
        aws_region_name: Some("us-west-2".into()),
        aws_access_key_id: Some(llmbus::config::Secret::new("AKIDEXAMPLE")),
        aws_secret_access_key: Some(llmbus::config::Secret::new("SECRETKEY")),
        ..LitellmParams::default()
    };
    providers::build(&params, &reqwest::Client::new())
        .unwrap()
        .0
}

#[tokio::test]
async fn errors_map_to_classes_and_never_carry_the_secret() {
    let fake = FakeNative::start().await;
    let p = provider(&fake, "m");
    let cases = [
        (
            400,
            "ValidationException",
            "Input is too long for requested model.",
            ErrorClass::ContextWindowExceeded,
        ),
        (
            400,
            "ValidationException",
            "messages: field required",
            ErrorClass::BadRequest,
        ),
        (
            403,
            "AccessDeniedException",
            "You don't have access to the model",
            ErrorClass::PermissionDenied,
        ),
        (
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid. SECRETKEY",
            ErrorClass::Authentication,
        ),
        (
            404,
            "ResourceNotFoundException",
            "Could not resolve the foundation model",
            ErrorClass::NotFound,
        ),
        (
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
            ErrorClass::RateLimit,
        ),
        (
            408,
            "ModelTimeoutException",
            "Model has timed out",
            ErrorClass::Timeout,
        ),
        (
            500,
            "InternalServerException",
            "Internal server error",
            ErrorClass::InternalServer,
        ),
        (
            503,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
            ErrorClass::InternalServer,
        ),
    ];
    for (status, kind, message, class) in cases {
        fake.push(Reply::bedrock_error(status, kind, message));
        let err = p
            .complete(&request(chat("x", "hi")), &ctx("m"))
            .await
            .unwrap_err();
        assert_eq!(
            (err.class, err.status),
            (class, Some(status)),
            "{kind}: {err}"
        );
        assert!(!err.message.contains("SECRETKEY"), "{}", err.message);
    }
}

#[tokio::test]
async fn titan_embeddings_call_invoke_once_per_input() {
    let fake = FakeNative::start().await;
    let p = provider(&fake, "amazon.titan-embed-text-v2:0");
    let req: EmbeddingRequest = serde_json::from_value(json!({
        "model": "emb", "input": ["hello", "world!"], "dimensions": 256
    }))
    .unwrap();
    let out = p
        .embed(&req, &ctx("amazon.titan-embed-text-v2:0"))
        .await
        .unwrap();
    assert_eq!(out.data.len(), 2);
    assert_eq!(out.data[1].index, 1);
    assert_eq!(out.data[1].embedding, json!([0.25, -0.5, 6.0]));
    assert_eq!(out.usage.prompt_tokens, 11);
    let seen = fake.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
    assert_eq!(
        seen[0].body,
        json!({"inputText": "hello", "dimensions": 256})
    );
}

fn config(fake: &FakeNative, token: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: claude
    litellm_params:
      model: bedrock/anthropic.claude-3-haiku-20240307-v1:0
      api_base: {url}
      aws_region_name: us-east-1
      aws_access_key_id: AKIDEXAMPLE
      aws_secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
      {token}
  - model_name: titan
    litellm_params:
      model: bedrock/amazon.titan-embed-text-v2:0
      api_base: {url}
      aws_region_name: us-east-1
      aws_access_key_id: AKIDEXAMPLE
      aws_secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
router_settings:
  num_retries: 0
"#,
        url = fake.url()
    )
}

#[tokio::test]
async fn a_completion_over_nats_is_signed_and_converted() {
    let fake = FakeNative::start().await;
    let gw = Gateway::start(&config(&fake, "aws_session_token: SESSIONTOKEN")).await;
    let mut body = chat("claude", "hello bedrock");
    body["max_tokens"] = json!(100);
    let reply = gw.complete(body).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(content(&reply), "echo: hello bedrock");
    let v = reply.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], 16);

    let seen = fake.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path,
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    );
    assert_eq!(seen.body["inferenceConfig"], json!({"maxTokens": 100}));
    assert_eq!(
        seen.body["messages"][0],
        json!({"role": "user", "content": [{"text": "hello bedrock"}]})
    );
    let auth = seen.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{auth}"
    );
    assert!(
        auth.contains("/us-east-1/bedrock/aws4_request, SignedHeaders="),
        "{auth}"
    );
    assert!(auth.contains("x-amz-security-token"), "{auth}");
    let signature = auth.rsplit("Signature=").next().unwrap();
    assert_eq!(signature.len(), 64);
    assert!(signature.chars().all(|c| c.is_ascii_hexdigit()));
    let date = seen.header("x-amz-date").unwrap();
    assert_eq!(date.len(), 16, "{date}");
    assert!(date.ends_with('Z'));
    assert_eq!(seen.header("x-amz-security-token"), Some("SESSIONTOKEN"));
    assert_eq!(
        recomputed_authorization(&fake, &seen, Some("SESSIONTOKEN")),
        auth
    );
}

/// Unix seconds of an `x-amz-date` (`20150830T123600Z`).
fn amz_date(text: &str) -> std::time::SystemTime {
    let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15);
    std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

/// The signature the fake computes itself over what it received: same URL, headers, body.
fn recomputed_authorization(
    fake: &FakeNative,
    seen: &support::fake_native::Seen,
    token: Option<&str>,
) -> String {
    use llmbus::{config::Secret, providers::bedrock::sign};
    let keys = sign::AwsKeys {
        access_key_id: Secret::new("AKIDEXAMPLE"),
        secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        session_token: token.map(Secret::new),
    };
    let url = format!("{}{}", fake.url(), seen.path);
    let headers = [
        ("content-type", seen.header("content-type").unwrap()),
        ("accept", seen.header("accept").unwrap()),
    ];
    let request = sign::SignRequest {
        method: &seen.method,
        url: &url,
        headers: &headers,
        body: &seen.raw,
    };
    let time = amz_date(seen.header("x-amz-date").unwrap());
    let out = sign::sigv4_headers(&keys, &request, "us-east-1", "bedrock", time).unwrap();
    out.into_iter()
        .find(|(k, _)| k == "authorization")
        .unwrap()
        .1
}

#[test]
fn amz_dates_parse() {
    assert_eq!(
        amz_date("20150830T123600Z"),
        std::time::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    );
}

#[tokio::test]
async fn a_stream_over_nats_decodes_event_frames_with_usage_last() {
    let fake = FakeNative::start().await;
    let gw = Gateway::start(&config(&fake, "")).await;
    let mut body = chat("claude", "stream me please");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(sentinel.status, 200);
    assert_eq!(streamed_text(&chunks), "echo: stream me please");
    let last = chunks.last().unwrap().json();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 4);
    let finish = chunks[chunks.len() - 2].json();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let seen = fake.last();
    assert_eq!(
        seen.path,
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
    );
    assert_eq!(
        seen.header("accept"),
        Some("application/vnd.amazon.eventstream")
    );
    assert!(seen.header("x-amz-security-token").is_none());
}

#[tokio::test]
async fn a_tool_call_stream_and_errors_over_nats() {
    let fake = FakeNative::start().await;
    let gw = Gateway::start(&config(&fake, "")).await;
    fake.push(Reply::bedrock_frames(tool_stream_frames()));
    let mut body = chat("claude", "top song?");
    body["stream"] = json!(true);
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(sentinel.status, 200);
    let args: String = chunks
        .iter()
        .filter_map(|c| {
            c.json()["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(args, "{\"sign\": \"WZPZ\"}");
    assert!(
        chunks.iter().all(|c| c.json().get("usage").is_none()),
        "usage only when asked"
    );

    fake.push(Reply::bedrock_error(
        429,
        "ThrottlingException",
        "Too many requests",
    ));
    let reply = gw.complete(chat("claude", "again")).await;
    assert_eq!(
        reply.status,
        429,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    let mut body = chat("claude", "hi");
    body["logit_bias"] = json!({"1": 5});
    let reply = gw.complete(body).await;
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("logit_bias"));
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
async fn titan_embeddings_over_nats() {
    let fake = FakeNative::start().await;
    let gw = Gateway::start(&config(&fake, "")).await;
    let reply = embed_over_nats(&gw, json!({"model": "titan", "input": "abc"})).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.json()["data"][0]["embedding"],
        json!([0.25, -0.5, 3.0])
    );
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 3);
    let seen = fake.last();
    assert_eq!(seen.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
    assert!(
        seen.header("authorization")
            .unwrap()
            .contains("/bedrock/aws4_request")
    );
}
