//! The OpenAI-compatible HTTP front, in-worker mode, against a private nats-server, an
//! in-process worker and fake providers on loopback:
//!
//! - the official OpenAI Python SDK (`tests/python/http_openai_test.py`, run with the venv of
//!   `support::pyenv`): chat plain, streamed with usage, tools with streamed arguments,
//!   embeddings, models, the routing headers, and the SDK's error classes `NotFoundError`,
//!   `RateLimitError`, `BadRequestError`, `PermissionDeniedError`, `AuthenticationError`
//!   (upstream key refused; and the master key, once the worker checks it), an error mid-stream;
//! - with a raw HTTP client: SSE keep-alives on a slow first token, the SSE headers, 404 for an
//!   unknown route, 413 for a body over NATS's max_payload, 400 for malformed JSON, models/{id},
//!   the deadline header, health routes, no worker → 503;
//! - a client that goes away cancels the job (`llm.cancel` carries its reply subject), and the
//!   upstream connection closes (needs the worker side of `llm.cancel`).

use crate::support;

use std::{process::Stdio, time::Duration};

use crate::support::{
    fake_provider::{FakeProvider, Fault, TOOL_ARGUMENTS},
    http_front::{HttpGateway, fast_keepalive, stream_past_first_event},
    pyenv,
};
use futures::StreamExt;
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);

/// The model groups the Python script uses, over fakes with fixed behaviour.
struct Fakes {
    ok: FakeProvider,
    tools: FakeProvider,
    forbidden: FakeProvider,
    keyed: FakeProvider,
    broken: FakeProvider,
}

impl Fakes {
    async fn start() -> Self {
        let tools = FakeProvider::start().await;
        tools.set_default(Fault::ToolCalls);
        let forbidden = FakeProvider::start().await;
        forbidden.set_default(Fault::status(403));
        let keyed = FakeProvider::start().await;
        keyed.require_key("sk-upstream-right");
        let broken = FakeProvider::start().await;
        broken.set_default(Fault::MidStreamError { after_chunks: 2 });
        Self {
            ok: FakeProvider::start().await,
            tools,
            forbidden,
            keyed,
            broken,
        }
    }

    fn config(&self, extra: &str) -> String {
        format!(
            r#"
model_list:
  - model_name: fake
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{ok}", api_key: sk-upstream}}
    model_info: {{id: fake-1}}
  - model_name: tools
    litellm_params: {{model: openai/gpt-4o, api_base: "{tools}", api_key: sk-upstream}}
  - model_name: embed
    litellm_params: {{model: openai/text-embedding-3-small, api_base: "{ok}", api_key: sk-upstream}}
  - model_name: forbidden
    litellm_params: {{model: openai/gpt-4o, api_base: "{forbidden}", api_key: sk-upstream}}
  - model_name: keyed
    litellm_params: {{model: openai/gpt-4o, api_base: "{keyed}", api_key: sk-upstream-wrong}}
  - model_name: broken
    litellm_params: {{model: openai/gpt-4o, api_base: "{broken}", api_key: sk-upstream}}
  - model_name: limited
    litellm_params: {{model: mock/limited, mock_response: litellm.RateLimitError}}
router_settings:
  num_retries: 0
{extra}
"#,
            ok = self.ok.url(),
            tools = self.tools.url(),
            forbidden = self.forbidden.url(),
            keyed = self.keyed.url(),
            broken = self.broken.url(),
        )
    }
}

/// Runs the SDK script's `cases` against `base_url`; panics with its output unless every case
/// printed `ok`.
async fn run_sdk(base_url: &str, cases: &[&str]) {
    let python = tokio::task::spawn_blocking(pyenv::python)
        .await
        .expect("the Python venv");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/http_openai_test.py");
    let child = tokio::process::Command::new(python)
        .arg(script)
        .arg(base_url)
        .args(cases)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let out = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
        .await
        .expect("the SDK script ends within 240 s")
        .expect("the SDK script's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for case in cases {
        assert!(
            stdout.lines().any(|l| l == format!("ok {case}")),
            "case {case} did not pass.\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_unmodified() {
    let fakes = Fakes::start().await;
    let gw = HttpGateway::start(&fakes.config("")).await;
    run_sdk(
        &gw.v1(),
        &[
            "chat",
            "chat_headers",
            "stream",
            "tools",
            "tools_stream",
            "embeddings",
            "models",
            "not_found",
            "rate_limit",
            "bad_request",
            "permission_denied",
            "upstream_auth",
            "mid_stream_error",
        ],
    )
    .await;
    // The tool's arguments went through the gateway in pieces, as the fake streamed them.
    assert!(fakes.tools.request_count() >= 2);
    assert!(TOOL_ARGUMENTS.contains("Paris"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_master_key_is_the_sdk_s_authentication_error() {
    let fakes = Fakes::start().await;
    let gw = HttpGateway::start(&fakes.config("general_settings:\n  master_key: sk-master-test\n"))
        .await;
    run_sdk(&gw.v1(), &["master_key"]).await;
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

async fn one_fake_gateway(settings: llmbus::http::HttpSettings) -> (FakeProvider, HttpGateway) {
    let fake = FakeProvider::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: fake
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{}", api_key: sk-upstream}}
    model_info: {{id: fake-1}}
  - model_name: openai/gpt-4o
    litellm_params: {{model: openai/gpt-4o, api_base: "{}", api_key: sk-upstream}}
router_settings:
  num_retries: 0
"#,
        fake.url(),
        fake.url()
    );
    let gw = HttpGateway::start_with(&yaml, settings).await;
    (fake, gw)
}

/// The body read to its end, as text.
async fn sse_text(response: reqwest::Response) -> String {
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.next())
        .await
        .expect("the stream goes on")
    {
        text.extend_from_slice(&chunk.expect("body bytes"));
    }
    String::from_utf8(text).expect("UTF-8 SSE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_comments_go_out_until_the_first_token() {
    let (fake, gw) = one_fake_gateway(fast_keepalive()).await;
    // The upstream answers only after 3 s; keep-alives go out every 0.2 s meanwhile.
    fake.push(Fault::Delay(Duration::from_secs(3)));
    let response = http()
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&json!({"model": "fake", "stream": true, "messages": [{"role": "user", "content": "slow one"}]}))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["x-accel-buffering"], "no");
    assert_eq!(h["cache-control"], "no-cache");
    let text = sse_text(response).await;
    let first_data = text.find("data: ").expect("data events");
    let keep_alives = text[..first_data].matches(": keep-alive\n\n").count();
    assert!(
        keep_alives >= 1,
        "no keep-alive before the first token:\n{text}"
    );
    // None after it, and the stream is OpenAI's: events, then [DONE].
    assert!(!text[first_data..].contains(": keep-alive"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("a JSON chunk"))
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "echo: slow one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_stream_is_an_error_event_and_the_end() {
    let (fake, gw) = one_fake_gateway(Default::default()).await;
    fake.push(Fault::MidStreamError { after_chunks: 2 });
    let response = http()
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&json!({"model": "fake", "stream": true, "messages": [{"role": "user", "content": "a b c"}]}))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);
    let text = sse_text(response).await;
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let last: Value = serde_json::from_str(
        events
            .last()
            .and_then(|e| e.strip_prefix("data: "))
            .expect("a last data event"),
    )
    .expect("JSON");
    assert!(last["error"]["message"].is_string(), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(events.len() >= 2, "content came before the error: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_replies_carry_the_routing_headers_and_the_status() {
    let (_fake, gw) = one_fake_gateway(Default::default()).await;
    for path in ["/v1/chat/completions", "/chat/completions"] {
        let r = http()
            .post(format!("{}{path}", gw.base))
            .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("a response");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["x-llmbus-deployment"], "fake-1");
        assert_eq!(h["x-litellm-model-id"], "fake-1");
        assert_eq!(h["x-llmbus-model-group"], "fake");
        assert_eq!(h["x-llmbus-attempts"], "1");
        assert!(h.contains_key("x-llmbus-job-id"));
        assert!(h.contains_key("x-llmbus-cost-usd"));
        assert_eq!(h["content-type"], "application/json");
        let v: Value = r.json().await.expect("JSON");
        assert_eq!(v["choices"][0]["message"]["content"], "echo: hi");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_bodies_with_their_status() {
    let (fake, gw) = one_fake_gateway(Default::default()).await;
    let client = http();
    let check = |status: u16, v: &Value, what: &str| {
        assert!(v["error"]["message"].is_string(), "{what}: {v}");
        assert!(v["error"]["type"].is_string(), "{what}: {v}");
        assert!(v["error"].get("param").is_some(), "{what}: {v}");
        assert!(v["error"].get("code").is_some(), "{what}: {v}");
        let _ = status;
    };

    // An unknown route, and a known one with the wrong method.
    let r = client
        .post(format!("{}/v1/nope", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    check(404, &r.json().await.unwrap(), "unknown route");
    let r = client
        .get(format!("{}/v1/chat/completions", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    check(405, &r.json().await.unwrap(), "wrong method");

    // Malformed JSON: the worker's 400 comes back as the HTTP status.
    let r = client
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("content-type", "application/json")
        .body("{\"model\": \"fake\", \"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    check(400, &r.json().await.unwrap(), "malformed JSON");
    let r = client
        .post(format!("{}/v1/embeddings", gw.base))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Over NATS's max_payload (1 MB by default): 413 before anything is published.
    let big = format!(
        "{{\"model\":\"fake\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(1_100_000)
    );
    let r = client
        .post(format!("{}/v1/chat/completions", gw.base))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    check(413, &v, "too large");
    assert_eq!(fake.request_count(), 0, "nothing reached the upstream");

    // A bad header is the worker's 400 naming it.
    let r = client
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("x-llmbus-timeout-ms", "soon")
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "Llm-Timeout-Ms", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_header_reaches_the_worker() {
    let (fake, gw) = one_fake_gateway(Default::default()).await;
    fake.push(Fault::Delay(Duration::from_secs(20)));
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("x-llmbus-timeout-ms", "500")
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "timeout_error", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_and_found_by_id() {
    let (_fake, gw) = one_fake_gateway(Default::default()).await;
    let client = http();
    for path in ["/v1/models", "/models"] {
        let v: Value = client
            .get(format!("{}{path}", gw.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert!(
            ids.contains(&"fake") && ids.contains(&"openai/gpt-4o"),
            "{v}"
        );
    }
    // An id with a slash, as LiteLLM-style groups have.
    let r = client
        .get(format!("{}/v1/models/openai/gpt-4o", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "openai/gpt-4o");
    assert_eq!(v["object"], "model");
    let r = client
        .get(format!("{}/v1/models/nope", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_routes_answer_as_litellm_s() {
    let (_fake, mut gw) = one_fake_gateway(Default::default()).await;
    let client = http();
    let r = client
        .get(format!("{}/health/liveliness", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!("I'm alive!"));
    let r = client
        .get(format!("{}/health/readiness", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "healthy");

    // Without a worker: not ready, and a job gets a 503 (NATS has no responders).
    gw.worker.take().expect("the worker").stop().await;
    let r = client
        .get(format!("{}/health/readiness", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "unhealthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_worker_a_job_is_a_503() {
    let nats = support::nats_server::NatsServer::start();
    let http_server = support::http_front::serve(nats.client().await, Default::default()).await;
    let base = format!("http://{}", http_server.addr());
    for stream in [false, true] {
        let r = http()
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "fake", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "stream {stream}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "no_worker", "{v}");
    }
}

/// Subscribes to `llm.cancel` on `gw`'s NATS (the client keeps the connection open).
async fn cancels(gw: &HttpGateway) -> (async_nats::Client, async_nats::Subscriber) {
    let nc = gw.nats.client().await;
    let sub = nc.subscribe("llm.cancel").await.expect("subscribe");
    nc.flush().await.expect("flush");
    (nc, sub)
}

async fn next_cancel(sub: &mut async_nats::Subscriber) -> String {
    let m = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a cancellation within 30 s")
        .expect("the subscription is open");
    String::from_utf8(m.payload.to_vec()).expect("a UTF-8 subject")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_job() {
    let (fake, gw) = one_fake_gateway(fast_keepalive()).await;
    let (_nc, mut cancel) = cancels(&gw).await;

    // Mid-stream: read the first event, then hang up.
    fake.push(Fault::NeverEnding { after_chunks: 2 });
    let body = stream_past_first_event(&gw.base).await;
    drop(body);
    let subject = next_cancel(&mut cancel).await;
    assert!(subject.starts_with("_INBOX."), "{subject}");

    // Before the first token: a plain request whose upstream has not answered yet.
    fake.push(Fault::Delay(Duration::from_secs(60)));
    let base = gw.base.clone();
    let request = tokio::spawn(async move {
        http()
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "wait"}]}))
            .send()
            .await
    });
    fake.wait_for_requests(2, PATIENCE).await;
    request.abort();
    let second = next_cancel(&mut cancel).await;
    assert!(
        second.starts_with("_INBOX.") && second != subject,
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_closes_the_upstream_connection() {
    let (fake, gw) = one_fake_gateway(Default::default()).await;
    fake.push(Fault::NeverEnding { after_chunks: 2 });
    let response = http()
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&json!({"model": "fake", "stream": true, "messages": [{"role": "user", "content": "go on"}]}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(PATIENCE, body.next())
        .await
        .expect("a first event");
    assert!(first.is_some());
    assert_eq!(fake.cut_bodies(), 0);
    drop(body);
    // The worker stops the upstream call: the fake sees its connection close mid-body.
    fake.wait_for_cut_bodies(1, PATIENCE).await;
}

/// The detector of the test above works: a client that hangs up on the fake mid-body is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_provider_sees_a_client_hang_up() {
    let fake = FakeProvider::start().await;
    fake.push(Fault::NeverEnding { after_chunks: 2 });
    let response = http()
        .post(format!("{}/chat/completions", fake.url()))
        .json(
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    assert!(body.next().await.is_some());
    assert_eq!(fake.cut_bodies(), 0);
    drop(body);
    assert_eq!(fake.wait_for_cut_bodies(1, PATIENCE).await, 1);
}

/// What the front publishes is the job any NATS client could send: the body byte for byte, the
/// contract's headers. A worker that never answers gets the front's own 504 at the deadline
/// (plus the margin), and the job is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_publishes_the_body_unchanged_and_never_hangs() {
    let nats = support::nats_server::NatsServer::start();
    let nc = nats.client().await;
    let mut jobs = nc.subscribe("llm.completion").await.unwrap();
    let mut cancel = nc.subscribe("llm.cancel").await.unwrap();
    nc.flush().await.unwrap();
    let settings = llmbus::http::HttpSettings {
        margin: Duration::from_millis(100),
        ..Default::default()
    };
    let server = support::http_front::serve(nats.client().await, settings).await;
    let body =
        "{\"model\":\"silent\",  \"messages\":[{\"role\":\"user\",\"content\":\"ünï\"}],\n\"x\":1}";
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http()
        .post(format!("http://{}/v1/chat/completions", server.addr()))
        .header("x-litellm-api-key", "sk-caller")
        .header("llm-timeout-ms", "300")
        .header("x-litellm-tags", "eu")
        .header("llm-fallbacks", "b")
        .header("traceparent", tp)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "front_timeout", "{v}");

    let job = tokio::time::timeout(PATIENCE, jobs.next())
        .await
        .expect("the job was published")
        .unwrap();
    assert_eq!(&job.payload[..], body.as_bytes(), "the body goes unchanged");
    let h = job.headers.expect("headers");
    let get = |name: &str| h.get(name).map(|v| v.as_str().to_string());
    assert_eq!(get("Authorization").as_deref(), Some("Bearer sk-caller"));
    assert_eq!(get("Llm-Timeout-Ms").as_deref(), Some("300"));
    assert_eq!(get("Llm-Tags").as_deref(), Some("eu"));
    assert_eq!(get("Llm-Fallbacks").as_deref(), Some("b"));
    assert_eq!(get("traceparent").as_deref(), Some(tp));
    let reply = job.reply.expect("a reply subject").to_string();
    let cancelled = tokio::time::timeout(PATIENCE, cancel.next())
        .await
        .expect("the job was cancelled")
        .unwrap();
    assert_eq!(std::str::from_utf8(&cancelled.payload).unwrap(), reply);
}
