//! Bad input and refusals: every failure is the OpenAI error body with `Llm-Status`, and the
//! requester always gets an answer.

use crate::support;

use crate::support::gateway::{Gateway, chat, headers};
use serde_json::json;

const CONFIG: &str = r#"
model_list:
  - model_name: demo
    litellm_params: {model: openai/demo, mock_response: "hello there"}
"#;

fn assert_error(reply: &llmbus::client::Reply, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(
        reply.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(v["error"].get("param").is_some() && v["error"].get("code").is_some());
    v
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let gw = Gateway::start(CONFIG).await;
    let r = gw
        .complete_raw(b"{\"model\": \"demo\", \"messages\": [")
        .await;
    let v = assert_error(&r, 400, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid request body")
    );
    let r = gw.complete_raw(b"").await;
    assert_error(&r, 400, "invalid_request_error");
    let r = gw.complete_raw(b"[1,2,3]").await;
    assert_error(&r, 400, "invalid_request_error");
}

#[tokio::test]
async fn wrong_field_types_are_a_400_naming_the_field() {
    let gw = Gateway::start(CONFIG).await;
    let mut body = chat("demo", "hi");
    body["temperature"] = json!("hot");
    let v = assert_error(&gw.complete(body).await, 400, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{v}"
    );
    let body = json!({"model": "demo", "messages": [{"role": "wizard", "content": "hi"}]});
    assert_error(&gw.complete(body).await, 400, "invalid_request_error");
    let body = json!({"model": 42, "messages": [{"role": "user", "content": "hi"}]});
    assert_error(&gw.complete(body).await, 400, "invalid_request_error");
}

#[tokio::test]
async fn missing_model_or_messages_is_a_400() {
    let gw = Gateway::start(CONFIG).await;
    let v = assert_error(
        &gw.complete(json!({"messages": [{"role": "user", "content": "hi"}]}))
            .await,
        400,
        "invalid_request_error",
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("model"));
    let v = assert_error(
        &gw.complete(json!({"model": "demo"})).await,
        400,
        "invalid_request_error",
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"));
    let v = assert_error(
        &gw.complete(json!({"model": "demo", "messages": []})).await,
        400,
        "invalid_request_error",
    );
    assert_eq!(v["error"]["param"], "messages");
}

#[tokio::test]
async fn an_unknown_model_is_a_404_model_not_found() {
    let gw = Gateway::start(CONFIG).await;
    let v = assert_error(
        &gw.complete(chat("gpt-17", "hi")).await,
        404,
        "invalid_request_error",
    );
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-17"));
}

#[tokio::test]
async fn a_bad_timeout_header_is_a_400_naming_the_header() {
    let gw = Gateway::start(CONFIG).await;
    let r = gw
        .complete_with(headers(&[("Llm-Timeout-Ms", "soon")]), chat("demo", "hi"))
        .await;
    let v = assert_error(&r, 400, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Llm-Timeout-Ms"),
        "{v}"
    );
}

#[tokio::test]
async fn a_stream_that_fails_gets_an_error_body_then_the_sentinel() {
    let gw = Gateway::start(CONFIG).await;
    let mut body = chat("nope", "hi");
    body["stream"] = json!(true);
    let (messages, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].status, 404);
    assert_eq!(messages[0].json()["error"]["code"], "model_not_found");
    assert!(sentinel.body.is_empty());
    assert_eq!(sentinel.status, 404);
}

#[tokio::test]
async fn bad_input_does_not_harm_other_jobs() {
    let gw = Gateway::start(CONFIG).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let client = gw.client.clone();
        tasks.push(tokio::spawn(async move {
            let payload: Vec<u8> = match i % 3 {
                0 => b"{oops".to_vec(),
                1 => chat("nope", "x").to_string().into_bytes(),
                _ => chat("demo", "x").to_string().into_bytes(),
            };
            let r = client
                .complete(
                    Default::default(),
                    payload.into(),
                    support::gateway::PATIENCE,
                )
                .await
                .unwrap();
            (i % 3, r.status)
        }));
    }
    for t in tasks {
        let (kind, status) = t.await.unwrap();
        assert_eq!(status, [400, 404, 200][kind]);
    }
}

#[tokio::test]
async fn a_request_too_large_for_nats_is_refused_clearly_by_the_client() {
    let gw = Gateway::start(CONFIG).await;
    let huge = "x".repeat(2 * 1024 * 1024);
    let err = gw
        .client
        .complete(
            Default::default(),
            chat("demo", &huge).to_string().into(),
            support::gateway::PATIENCE,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_payload"), "{text}");
    // The worker is unharmed.
    assert_eq!(gw.complete(chat("demo", "hi")).await.status, 200);
}

#[tokio::test]
async fn a_panic_inside_one_job_is_answered_with_500_and_harms_no_other_job() {
    let gw = Gateway::start(
        r#"
model_list:
  - model_name: crash
    litellm_params: {model: openai/x, mock_response: "llmbus.panic"}
  - model_name: demo
    litellm_params: {model: openai/demo, mock_response: "hello there"}
"#,
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = gw.client.clone();
        tasks.push(tokio::spawn(async move {
            let model = if i % 2 == 0 { "crash" } else { "demo" };
            let mut body = chat(model, "x");
            if i % 4 < 2 {
                body["stream"] = json!(true);
                let (msgs, end) = client
                    .stream(
                        Default::default(),
                        body.to_string().into(),
                        support::gateway::PATIENCE,
                    )
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                (model, end.status, msgs.last().map(|m| m.json()))
            } else {
                let r = client
                    .complete(
                        Default::default(),
                        body.to_string().into(),
                        support::gateway::PATIENCE,
                    )
                    .await
                    .unwrap();
                (model, r.status, Some(r.json()))
            }
        }));
    }
    for t in tasks {
        let (model, status, last) = t.await.unwrap();
        if model == "crash" {
            assert_eq!(status, 500);
            assert_eq!(last.unwrap()["error"]["type"], "api_error");
        } else {
            assert_eq!(status, 200);
        }
    }
}

#[tokio::test]
async fn simulated_upstream_failures_map_to_their_statuses() {
    let gw = Gateway::start(
        r#"
model_list:
  - model_name: limited
    litellm_params: {model: openai/x, mock_response: "litellm.RateLimitError"}
  - model_name: down
    litellm_params: {model: openai/x, mock_response: "litellm.InternalServerError"}
  - model_name: denied
    litellm_params: {model: openai/x, mock_response: "litellm.AuthenticationError"}
router_settings: {num_retries: 1}
"#,
    )
    .await;
    let r = gw.complete(chat("limited", "x")).await;
    assert_error(&r, 429, "rate_limit_error");
    assert_eq!(r.header("Llm-Attempts"), Some("2"));
    assert_error(&gw.complete(chat("down", "x")).await, 502, "api_error");
    let r = gw.complete(chat("denied", "x")).await;
    assert_error(&r, 401, "authentication_error");
    assert_eq!(
        r.header("Llm-Attempts"),
        Some("1"),
        "auth failures are not retried"
    );
}
