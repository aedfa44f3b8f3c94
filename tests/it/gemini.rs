//! Google Gemini (AI Studio) and Vertex AI: conversions against golden files built from
//! Google's documented examples, error mapping, embeddings, the service-account JWT against a
//! known vector, and end to end over NATS against a fake Gemini API (`support::fake_gemini`).

use crate::support;

use std::{sync::Arc, time::Duration};

use crate::support::{
    fake_gemini::{FakeGemini, Reply},
    gateway::{Gateway, chat, content, headers, streamed_text},
};
use futures::StreamExt;
use llmbus::{
    config::{LitellmParams, Secret},
    providers::{
        CallContext, ErrorClass, Provider,
        gemini::{self, embed, error, request, response, stream::StreamConverter, vertex_auth},
    },
    wire::openai::{ChatCompletionRequest, EmbeddingRequest},
};
use serde_json::{Value, json};

const API_KEY: &str = "AIza-test-gemini-key-0123456789";
const CLIENT_EMAIL: &str = "llmbus-test@llmbus-test-project.iam.gserviceaccount.com";
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/gemini");

fn golden(name: &str) -> String {
    std::fs::read_to_string(format!("{GOLDEN}/{name}")).expect("golden file exists")
}

fn golden_json(name: &str) -> Value {
    serde_json::from_str(&golden(name)).expect("golden file is JSON")
}

/// A golden file of expected OpenAI output, normalized like the actual output.
fn expected(name: &str) -> Value {
    normalized(golden_json(name))
}

fn test_key_pem() -> String {
    golden("test_only_service_account_key.pem")
}

fn chat_request(v: Value) -> ChatCompletionRequest {
    serde_json::from_value(v).expect("a chat request")
}

/// Makes generated values comparable: `created` → 0, fresh ids → placeholders, and tool-call
/// arguments parsed (their key order is not part of the contract).
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match (key.as_str(), &*value) {
                    ("created", _) => *value = json!(0),
                    ("id", Value::String(s)) if s.starts_with("call_") => {
                        *value = json!("call_<id>")
                    }
                    ("id", Value::String(s))
                        if s.len() == 41
                            && s.starts_with("chatcmpl-")
                            && s[9..].chars().all(|c| c.is_ascii_hexdigit()) =>
                    {
                        *value = json!("chatcmpl-<id>")
                    }
                    ("arguments", Value::String(s)) => {
                        *value = serde_json::from_str(s).unwrap_or(Value::String(s.clone()))
                    }
                    _ => normalize(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn normalized(v: impl serde::Serialize) -> Value {
    let mut v = serde_json::to_value(v).unwrap();
    normalize(&mut v);
    v
}

// ---------------------------------------------------------------- request conversion

#[test]
fn chat_request_converts_field_by_field() {
    let req = chat_request(golden_json("chat_request.openai.json"));
    let body = request::to_gemini(&req, "gemini-2.5-flash", false).unwrap();
    let expected = golden_json("chat_request.gemini.json");
    for key in ["systemInstruction", "contents", "generationConfig"] {
        assert_eq!(body[key], expected[key], "{key}");
    }
    assert_eq!(body, expected);
}

#[test]
fn tool_request_converts_field_by_field() {
    let req = chat_request(golden_json("tools_request.openai.json"));
    let body = request::to_gemini(&req, "gemini-2.5-flash", false).unwrap();
    let expected = golden_json("tools_request.gemini.json");
    for key in ["contents", "tools", "toolConfig"] {
        assert_eq!(body[key], expected[key], "{key}");
    }
    assert_eq!(body, expected);
}

#[test]
fn tool_choice_strings_map_to_modes() {
    for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
        let mut v = chat("m", "hi");
        v["tool_choice"] = json!(choice);
        let body = request::to_gemini(&chat_request(v), "gemini-2.5-flash", false).unwrap();
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": mode}})
        );
    }
}

#[test]
fn unsupported_params_are_refused_unless_dropped() {
    let mut v = chat("m", "hi");
    v["logit_bias"] = json!({"50256": -100});
    let req = chat_request(v);
    let err = request::to_gemini(&req, "gemini-2.5-flash", false).unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
    assert_eq!(err.status, Some(400));
    assert!(err.message.contains("`logit_bias`"), "{}", err.message);
    let body = request::to_gemini(&req, "gemini-2.5-flash", true).unwrap();
    assert!(!body.to_string().contains("logit_bias"));
    assert!(!body.to_string().contains("50256"));
}

#[test]
fn reasoning_effort_follows_litellm() {
    let budget = |effort: &str, model: &str| request::thinking_config(effort, model).unwrap();
    assert_eq!(
        budget("minimal", "gemini-2.5-flash"),
        json!({"thinkingBudget": 1, "includeThoughts": true})
    );
    assert_eq!(
        budget("minimal", "gemini-2.5-flash-lite"),
        json!({"thinkingBudget": 512, "includeThoughts": true})
    );
    assert_eq!(
        budget("minimal", "gemini-2.5-pro"),
        json!({"thinkingBudget": 128, "includeThoughts": true})
    );
    assert_eq!(
        budget("medium", "gemini-2.5-pro")["thinkingBudget"],
        json!(2048)
    );
    assert_eq!(
        budget("high", "gemini-2.5-pro")["thinkingBudget"],
        json!(4096)
    );
    assert_eq!(
        budget("none", "gemini-2.5-flash"),
        json!({"thinkingBudget": 0, "includeThoughts": false})
    );
    assert_eq!(
        budget("low", "gemini-3-pro-preview"),
        json!({"thinkingLevel": "low", "includeThoughts": true})
    );
    assert_eq!(
        budget("medium", "gemini-3-flash-preview")["thinkingLevel"],
        json!("medium")
    );
    assert!(request::thinking_config("extreme", "gemini-2.5-flash").is_none());

    let mut v = chat("m", "hi");
    v["reasoning_effort"] = json!("extreme");
    let err = request::to_gemini(&chat_request(v), "gemini-2.5-flash", false).unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
}

#[test]
fn bad_messages_are_bad_requests() {
    let v = json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "call_unknown", "content": "42"}
    ]});
    let err = request::to_gemini(&chat_request(v), "m", false).unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
    assert!(err.message.contains("messages[1]"), "{}", err.message);

    let v = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.png"}}
    ]}]});
    assert!(request::to_gemini(&chat_request(v), "m", false).is_err());

    // Only instructions: sent as the user's turn, since Gemini needs one.
    let v = json!({"model": "m", "messages": [{"role": "system", "content": "Say hi."}]});
    let body = request::to_gemini(&chat_request(v), "m", false).unwrap();
    assert_eq!(
        body["contents"],
        json!([{"role": "user", "parts": [{"text": "Say hi."}]}])
    );
    assert!(body.get("systemInstruction").is_none());
}

// ---------------------------------------------------------------- response conversion

fn parse_response(name: &str) -> response::GenerateContentResponse {
    response::parse(golden(name).as_bytes()).unwrap()
}

#[test]
fn responses_convert_with_thoughts_and_cached_usage() {
    let out = response::to_openai(
        parse_response("response_thinking.gemini.json"),
        "gemini-2.5-flash",
    )
    .unwrap();
    assert_eq!(normalized(&out), expected("response_thinking.openai.json"));
}

#[test]
fn function_calls_become_tool_calls() {
    let out = response::to_openai(
        parse_response("response_function_call.gemini.json"),
        "gemini-2.5-flash",
    )
    .unwrap();
    let calls = out.choices[0].message.tool_calls.as_ref().unwrap();
    assert!(
        calls
            .iter()
            .all(|c| c.id.len() == 37 && c.id.starts_with("call_"))
    );
    assert_ne!(calls[0].id, calls[1].id);
    assert_eq!(
        normalized(&out),
        expected("response_function_call.openai.json")
    );
}

#[test]
fn safety_finishes_are_content_filter_and_blocked_prompts_are_policy_errors() {
    let out = response::to_openai(parse_response("response_safety.gemini.json"), "m").unwrap();
    assert_eq!(
        out.choices[0].finish_reason.as_deref(),
        Some("content_filter")
    );
    for (reason, expected) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
    ] {
        assert_eq!(response::finish_reason(reason, false), expected, "{reason}");
    }
    assert_eq!(response::finish_reason("STOP", true), "tool_calls");

    let err = response::to_openai(parse_response("prompt_blocked.gemini.json"), "m").unwrap_err();
    assert_eq!(err.class, ErrorClass::ContentPolicyViolation);
    assert!(err.message.contains("SAFETY"), "{}", err.message);
}

// ---------------------------------------------------------------- stream conversion

fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data:").map(|d| d.trim().to_owned()))
        .collect()
}

#[test]
fn stream_converts_text_thoughts_calls_and_final_usage() {
    let mut converter = StreamConverter::new("gemini-2.5-flash", true);
    let mut chunks = Vec::new();
    for data in sse_data(&golden("stream_function_call.sse")) {
        chunks.extend(converter.on_event(&data).unwrap());
    }
    chunks.extend(converter.finish().unwrap());
    assert_eq!(
        normalized(&chunks),
        expected("stream_function_call.openai.json")
    );
    assert!(chunks.iter().all(|c| c.id == "chatcmpl-stream-resp-1"));
}

#[test]
fn stream_without_usage_request_has_no_usage_chunk() {
    let mut converter = StreamConverter::new("m", false);
    let mut chunks = Vec::new();
    for data in sse_data(&golden("stream_function_call.sse")) {
        chunks.extend(converter.on_event(&data).unwrap());
    }
    chunks.extend(converter.finish().unwrap());
    assert!(chunks.iter().all(|c| c.usage.is_none()));
    assert_eq!(
        chunks.last().unwrap().choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );
}

#[test]
fn stream_failures_are_errors() {
    let mut converter = StreamConverter::new("m", true);
    let first = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}]},"index":0}]}"#;
    assert_eq!(converter.on_event(first).unwrap().len(), 2);
    let err = converter.finish().unwrap_err();
    assert_eq!(err.class, ErrorClass::InvalidResponse);

    let mut converter = StreamConverter::new("m", true);
    let err = converter
        .on_event(&golden("prompt_blocked.gemini.json"))
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContentPolicyViolation);

    let mut converter = StreamConverter::new("m", true);
    let err = converter
        .on_event(r#"{"error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED"}}"#)
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::RateLimit);

    let mut converter = StreamConverter::new("m", true);
    let safety = r#"{"candidates":[{"content":{"parts":[]},"finishReason":"SAFETY","index":0}]}"#;
    let chunks = converter.on_event(safety).unwrap();
    assert_eq!(
        chunks.last().unwrap().choices[0].finish_reason.as_deref(),
        Some("content_filter")
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn google_errors_map_to_classes() {
    let cases = golden_json("errors.json");
    for case in cases.as_array().unwrap() {
        let http = case["http"].as_u64().unwrap() as u16;
        let body = case["body"].to_string();
        let err = error::from_response(http, &reqwest::header::HeaderMap::new(), body.as_bytes());
        assert_eq!(
            format!("{:?}", err.class),
            case["expect"].as_str().unwrap(),
            "{body}"
        );
        assert_eq!(err.status, Some(http));
        assert_eq!(
            err.message,
            case["body"]["error"]["message"].as_str().unwrap()
        );
        if let Some(ms) = case["retry_after_ms"].as_u64() {
            assert_eq!(err.retry_after, Some(Duration::from_millis(ms)));
        }
    }
    // A Retry-After header wins over the RetryInfo detail.
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("retry-after", "5".parse().unwrap());
    let body = br#"{"error":{"code":429,"message":"q","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
    let err = error::from_response(429, &h, body);
    assert_eq!(err.retry_after, Some(Duration::from_secs(5)));
}

// ---------------------------------------------------------------- embeddings

fn embedding_request(v: Value) -> EmbeddingRequest {
    serde_json::from_value(v).unwrap()
}

#[test]
fn embeddings_convert_both_ways() {
    let req = embedding_request(json!({
        "model": "emb",
        "input": ["What is the meaning of life?", "How much wood would a woodchuck chuck?"],
        "dimensions": 3,
        "task_type": "RETRIEVAL_DOCUMENT"
    }));
    let texts = embed::texts(&req, false).unwrap();
    assert_eq!(
        embed::batch_request(&req, "gemini-embedding-001", &texts),
        golden_json("embed_request.gemini.json")
    );
    let out = embed::from_batch(
        &golden_json("embed_response.gemini.json"),
        &req,
        "gemini-embedding-001",
        &texts,
    )
    .unwrap();
    assert_eq!(out.object, "list");
    assert_eq!(out.data.len(), 2);
    assert_eq!(out.data[1].index, 1);
    assert_eq!(
        out.data[0].embedding,
        json!([0.013168523, -0.008711934, -0.046782676])
    );
    assert!(out.usage.prompt_tokens > 0);
    assert_eq!(out.usage.completion_tokens, 0);

    assert_eq!(
        embed::predict_request(&req, &texts),
        json!({
            "instances": [
                {"content": "What is the meaning of life?", "task_type": "RETRIEVAL_DOCUMENT"},
                {"content": "How much wood would a woodchuck chuck?", "task_type": "RETRIEVAL_DOCUMENT"}
            ],
            "parameters": {"outputDimensionality": 3}
        })
    );
    let out = embed::from_predict(
        &golden_json("predict_response.vertex.json"),
        &req,
        "text-embedding-005",
        2,
    )
    .unwrap();
    assert_eq!(out.usage.prompt_tokens, 15);
    assert_eq!(out.data[1].embedding, json!([0.25, -0.5, 0.125]));

    let mut b64 = req.clone();
    b64.encoding_format = Some("base64".into());
    let out =
        embed::from_predict(&golden_json("predict_response.vertex.json"), &b64, "t", 2).unwrap();
    // 0.25, -0.5, 0.125 as little-endian f32s.
    assert_eq!(out.data[1].embedding, json!("AACAPgAAAL8AAAA+"));

    let tokens = embedding_request(json!({"model": "emb", "input": [1, 2, 3]}));
    assert_eq!(
        embed::texts(&tokens, false).unwrap_err().class,
        ErrorClass::BadRequest
    );
    let odd = embedding_request(json!({"model": "emb", "input": "x", "logit_bias": {}}));
    assert!(embed::texts(&odd, false).is_err());
    assert!(embed::texts(&odd, true).is_ok());
}

// ---------------------------------------------------------------- service-account JWT

#[test]
fn jwt_matches_the_known_rs256_vector() {
    let key = vertex_auth::ServiceAccountKey::from_pem(
        CLIENT_EMAIL,
        &test_key_pem(),
        vertex_auth::DEFAULT_TOKEN_URI,
    )
    .unwrap();
    let expected = golden("jwt_rs256_expected.txt");
    let expected = expected.trim();
    let token = key.sign_jwt(1_700_000_000).unwrap();
    // Header and claims byte for byte (derived independently with printf + base64).
    let (input, _) = expected.rsplit_once('.').unwrap();
    assert_eq!(key.signing_input(1_700_000_000), input);
    // The whole token, signature included (computed with `openssl dgst -sha256 -sign`).
    assert_eq!(token, expected);

    let public = std::fs::read(format!("{GOLDEN}/test_only_public_key.der")).unwrap();
    assert_eq!(key.public_key_der(), public);
    let (signed, signature) = token.rsplit_once('.').unwrap();
    use base64::Engine;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(signed.as_bytes(), &signature)
        .expect("the signature verifies with the public key");
}

// ---------------------------------------------------------------- end to end

/// A service-account key file pointing at the fake's token endpoint.
fn key_file(fake: &FakeGemini) -> tempfile::NamedTempFile {
    let key = json!({
        "type": "service_account",
        "project_id": "llmbus-test-project",
        "private_key_id": "0123456789abcdef",
        "private_key": test_key_pem(),
        "client_email": CLIENT_EMAIL,
        "client_id": "1234567890",
        "token_uri": fake.token_url()
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), key.to_string()).unwrap();
    let public = std::fs::read(format!("{GOLDEN}/test_only_public_key.der")).unwrap();
    fake.expect_service_account(CLIENT_EMAIL, public);
    file
}

fn config(fake: &FakeGemini, key: &tempfile::NamedTempFile) -> String {
    format!(
        r#"
model_list:
  - model_name: gemini-flash
    litellm_params:
      model: gemini/gemini-2.5-flash
      api_base: {url}
      api_key: {API_KEY}
  - model_name: vertex-flash
    litellm_params:
      model: vertex_ai/gemini-2.5-flash
      api_base: {url}
      vertex_project: llmbus-test-project
      vertex_location: europe-west4
      vertex_credentials: {key}
  - model_name: gemini-embed
    litellm_params:
      model: gemini/gemini-embedding-001
      api_base: {url}
      api_key: {API_KEY}
  - model_name: vertex-embed
    litellm_params:
      model: vertex_ai/text-embedding-005
      api_base: {url}
      vertex_project: llmbus-test-project
      vertex_credentials: {key}
"#,
        url = fake.url(),
        key = key.path().display()
    )
}

async fn start() -> (FakeGemini, tempfile::NamedTempFile, Gateway) {
    let fake = FakeGemini::start(API_KEY).await;
    let key = key_file(&fake);
    let gw = Gateway::start(&config(&fake, &key)).await;
    (fake, key, gw)
}

#[tokio::test]
async fn gemini_completion_over_nats() {
    let (fake, _key, gw) = start().await;
    let mut body = chat("gemini-flash", "hello gemini");
    body["messages"] = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello gemini"}
    ]);
    body["max_tokens"] = json!(64);
    let reply = gw.complete(body).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(content(&reply), "echo: hello gemini");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gemini-2.5-flash");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    let seen = fake.last_request().unwrap();
    assert_eq!(seen.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen.query, None, "the key never travels in the URL");
    assert_eq!(seen.header("x-goog-api-key"), Some(API_KEY));
    assert_eq!(
        seen.body["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(seen.body["generationConfig"]["maxOutputTokens"], 64);
}

#[tokio::test]
async fn gemini_stream_over_nats() {
    let (fake, _key, gw) = start().await;
    let mut body = chat("gemini-flash", "stream these four words");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, end) = gw.stream(headers(&[]), body).await;
    assert!(end.body.is_empty(), "the sentinel is empty");
    assert_eq!(streamed_text(&chunks), "echo: stream these four words");
    let first = chunks[0].json();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let finish = chunks
        .iter()
        .filter_map(|c| {
            c.json()["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_owned)
        })
        .collect::<Vec<_>>();
    assert_eq!(finish, vec!["stop".to_owned()]);
    let last = chunks.last().unwrap().json();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 5);
    assert!(last["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let seen = fake.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(seen.query.as_deref(), Some("alt=sse"));
}

#[tokio::test]
async fn gemini_function_calls_and_blocked_prompts_over_nats() {
    let (fake, _key, gw) = start().await;
    fake.push(Reply::Json(golden_json(
        "response_function_call.gemini.json",
    )));
    let mut body = chat(
        "gemini-flash",
        "Which theaters in Mountain View show Barbie movie?",
    );
    body["tools"] = golden_json("tools_request.openai.json")["tools"].clone();
    let reply = gw.complete(body).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "find_theaters"
    );
    let sent = fake.last_request().unwrap();
    assert_eq!(
        sent.body["tools"][0]["functionDeclarations"][2],
        json!({"name": "get_time"})
    );

    fake.push(Reply::Json(golden_json("prompt_blocked.gemini.json")));
    let reply = gw.complete(chat("gemini-flash", "something unsafe")).await;
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["error"]["code"], "content_policy_violation");
}

#[tokio::test]
async fn vertex_fetches_one_token_and_reuses_it() {
    let (fake, _key, gw) = start().await;
    for text in ["first", "second"] {
        let reply = gw.complete(chat("vertex-flash", text)).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(content(&reply), format!("echo: {text}"));
    }
    let mut body = chat("vertex-flash", "third as a stream");
    body["stream"] = json!(true);
    let (chunks, _) = gw.stream(headers(&[]), body).await;
    assert_eq!(streamed_text(&chunks), "echo: third as a stream");

    assert_eq!(fake.jwt_failures(), Vec::<String>::new());
    assert_eq!(fake.token_requests(), 1, "one token, reused");
    let calls = fake.model_requests();
    assert_eq!(calls.len(), 3);
    let base = "/v1/projects/llmbus-test-project/locations/europe-west4/publishers/google/models";
    assert_eq!(
        calls[0].path,
        format!("{base}/gemini-2.5-flash:generateContent")
    );
    assert_eq!(
        calls[2].path,
        format!("{base}/gemini-2.5-flash:streamGenerateContent")
    );
    for call in &calls {
        assert_eq!(call.header("authorization"), Some("Bearer ya29.fake-1"));
        assert_eq!(call.header("x-goog-api-key"), None);
    }
}

fn ctx(model: &str) -> CallContext {
    CallContext {
        upstream_model: model.into(),
        timeout: Duration::from_secs(20),
        traceparent: None,
    }
}

fn vertex_params(fake: &FakeGemini, key: &tempfile::NamedTempFile) -> LitellmParams {
    LitellmParams {
        model: "vertex_ai/gemini-2.5-flash".into(),
        api_base: Some(fake.url()),
        vertex_project: Some("llmbus-test-project".into()),
        vertex_credentials: Some(Secret::new(key.path().display().to_string())),
        ..LitellmParams::default()
    }
}

#[tokio::test]
async fn concurrent_vertex_calls_share_one_token_refresh() {
    let fake = FakeGemini::start(API_KEY).await;
    let key = key_file(&fake);
    let http = reqwest::Client::new();
    let provider =
        Arc::new(gemini::vertex_provider(&vertex_params(&fake, &key), &http, |_| None).unwrap());
    let req = chat_request(chat("m", "together"));
    let calls = (0..8).map(|_| {
        let provider = provider.clone();
        let req = req.clone();
        async move { provider.complete(&req, &ctx("gemini-2.5-flash")).await }
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(
            result.unwrap().choices[0].message.text_content(),
            "echo: together"
        );
    }
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(provider.token_source().unwrap().fetch_count(), 1);
}

#[tokio::test]
async fn errors_are_classified_and_never_show_the_key() {
    let fake = FakeGemini::start(API_KEY).await;
    let http = reqwest::Client::new();
    let params = LitellmParams {
        model: "gemini/gemini-2.5-flash".into(),
        api_base: Some(fake.url()),
        api_key: Some(Secret::new(API_KEY)),
        ..LitellmParams::default()
    };
    let provider = gemini::gemini_provider(&params, &http, |_| None).unwrap();
    let req = chat_request(chat("m", "hi"));
    let c = ctx("gemini-2.5-flash");

    fake.push(Reply::Error {
        http: 429,
        status: "RESOURCE_EXHAUSTED".into(),
        message: format!("quota exceeded for key {API_KEY}"),
        retry_delay: Some("3s".into()),
    });
    let err = provider.complete(&req, &c).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::RateLimit);
    assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
    assert!(!err.message.contains(API_KEY), "{}", err.message);
    assert!(err.message.contains("***"));

    fake.push(Reply::Error {
        http: 503,
        status: "UNAVAILABLE".into(),
        message: "The model is overloaded.".into(),
        retry_delay: None,
    });
    let err = match provider.stream(&req, &c).await {
        Err(err) => err,
        Ok(_) => panic!("a 503 fails the stream call"),
    };
    assert_eq!(err.class, ErrorClass::InternalServer);
    assert!(err.is_retryable());

    let bad_key = LitellmParams {
        api_key: Some(Secret::new("AIza-wrong")),
        ..params.clone()
    };
    let provider = gemini::gemini_provider(&bad_key, &http, |_| None).unwrap();
    let err = provider.complete(&req, &c).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Authentication);
}

#[tokio::test]
async fn stream_errors_mid_way_arrive_as_one_error() {
    let fake = FakeGemini::start(API_KEY).await;
    let http = reqwest::Client::new();
    let params = LitellmParams {
        model: "gemini/gemini-2.5-flash".into(),
        api_base: Some(fake.url()),
        api_key: Some(Secret::new(API_KEY)),
        ..LitellmParams::default()
    };
    let provider = gemini::gemini_provider(&params, &http, |_| None).unwrap();
    fake.push(Reply::Events(vec![
        json!({"candidates": [{"content": {"parts": [{"text": "Hel"}]}, "index": 0}]}),
        json!({"error": {"code": 500, "message": "internal", "status": "INTERNAL"}}),
    ]));
    let mut stream = provider
        .stream(&chat_request(chat("m", "hi")), &ctx("gemini-2.5-flash"))
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item);
    }
    assert_eq!(items.len(), 3, "role, text, error");
    assert_eq!(
        items[1].as_ref().unwrap().choices[0]
            .delta
            .content
            .as_deref(),
        Some("Hel")
    );
    assert_eq!(
        items[2].as_ref().unwrap_err().class,
        ErrorClass::InternalServer
    );
}

#[tokio::test]
async fn embeddings_against_the_fake() {
    let fake = FakeGemini::start(API_KEY).await;
    let key = key_file(&fake);
    let http = reqwest::Client::new();
    let params = LitellmParams {
        model: "gemini/gemini-embedding-001".into(),
        api_base: Some(fake.url()),
        api_key: Some(Secret::new(API_KEY)),
        ..LitellmParams::default()
    };
    let studio = gemini::gemini_provider(&params, &http, |_| None).unwrap();
    let req = embedding_request(
        json!({"model": "emb", "input": ["abc", "hello world"], "dimensions": 2}),
    );
    let out = studio
        .embed(&req, &ctx("gemini-embedding-001"))
        .await
        .unwrap();
    assert_eq!(out.data.len(), 2);
    assert_eq!(out.data[1].embedding, json!([11.0, 0.5]));
    let seen = fake.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(
        seen.body["requests"].as_array().unwrap().len(),
        2,
        "one call for the list"
    );

    let mut vparams = vertex_params(&fake, &key);
    vparams.model = "vertex_ai/text-embedding-005".into();
    let vertex = gemini::vertex_provider(&vparams, &http, |_| None).unwrap();
    let out = vertex
        .embed(&req, &ctx("text-embedding-005"))
        .await
        .unwrap();
    assert_eq!(out.data[0].embedding, json!([3.0, 0.5]));
    assert_eq!(out.usage.prompt_tokens, 3);
    assert!(
        fake.last_request()
            .unwrap()
            .path
            .ends_with("text-embedding-005:predict")
    );
}

#[test]
fn vertex_build_needs_credentials_and_a_project() {
    let http = reqwest::Client::new();
    let params = LitellmParams {
        model: "vertex_ai/gemini-2.5-flash".into(),
        ..LitellmParams::default()
    };
    let err = gemini::build_vertex_with_env(&params, &http, |_| None).unwrap_err();
    assert!(err.to_string().contains("vertex_credentials"), "{err}");

    let key = json!({
        "type": "service_account",
        "private_key": test_key_pem(),
        "client_email": CLIENT_EMAIL
    })
    .to_string();
    let env = move |name: &str| (name == "GOOGLE_APPLICATION_CREDENTIALS").then(|| key.clone());
    let err = gemini::build_vertex_with_env(&params, &http, &env).unwrap_err();
    assert!(err.to_string().contains("vertex_project"), "{err}");
    let with_project = LitellmParams {
        vertex_project: Some("p".into()),
        vertex_location: Some("global".into()),
        ..params.clone()
    };
    let provider = gemini::vertex_provider(&with_project, &http, &env).unwrap();
    assert_eq!(
        provider
            .endpoint()
            .url("gemini-2.5-flash", "generateContent", false)
            .as_str(),
        "https://aiplatform.googleapis.com/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash:generateContent"
    );
    let debug = format!("{provider:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    let regional = LitellmParams {
        vertex_location: None,
        ..with_project
    };
    let provider = gemini::vertex_provider(&regional, &http, &env).unwrap();
    assert!(
        provider
            .endpoint()
            .url("m", "predict", false)
            .as_str()
            .starts_with(
                "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/"
            )
    );
}

#[tokio::test]
async fn embeddings_over_nats() {
    let (fake, _key, gw) = start().await;
    let embed = |body: Value| {
        let client = &gw.client;
        async move {
            client
                .embed(
                    Default::default(),
                    bytes::Bytes::from(body.to_string()),
                    support::gateway::PATIENCE,
                )
                .await
                .expect("a reply")
        }
    };
    let reply =
        embed(json!({"model": "gemini-embed", "input": ["abc", "hello world"], "dimensions": 3}))
            .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["embedding"], json!([3.0, 0.5, 0.25]));
    assert_eq!(v["data"][1]["index"], 1);
    let seen = fake.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(seen.body["requests"][1]["outputDimensionality"], 3);

    let reply = embed(json!({"model": "vertex-embed", "input": "one two three"})).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["data"][0]["embedding"], json!([13.0, 0.5, 0.25]));
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert!(
        fake.last_request().unwrap().path.ends_with(
            "/locations/us-central1/publishers/google/models/text-embedding-005:predict"
        )
    );
    assert_eq!(fake.token_requests(), 1);
}
