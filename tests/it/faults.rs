//! Fault injection: for each way an upstream can misbehave, what the requester receives
//! (status, error type and code, body shape, stream messages then the sentinel, within its
//! deadline) and what happens to the deployment's health (as `llm.deployments` reports it,
//! and as cooldowns are gossiped on `llm.health.<deployment>`).
//!
//! The fake provider plays the faults over real loopback HTTP. Synchronisation is by awaited
//! events: a job's failure is reported to its deployment actor before the job is answered, so
//! an `llm.deployments` request sent after the answer always sees it. The only timers wait out
//! a configured cooldown.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{
        Gateway, PATIENCE, chat, content, deployments, headers, start_worker, status_of,
        streamed_text,
    },
    nats_server::NatsServer,
};
use async_nats::{HeaderMap, Subscriber};
use futures::{StreamExt, future::join_all};
use llmbus::client::{LlmClient, Reply};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// One `model_list` entry of group `g` with id `id` calling `api_base`; `extra` is more
/// `litellm_params` (`"timeout: 0.5"`).
fn entry(id: &str, api_base: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "  - model_name: g\n    litellm_params: {{model: openai/m, api_base: \"{api_base}\", api_key: sk-fake-0123456789abcdef{extra}}}\n    model_info: {{id: {id}}}\n"
    )
}

/// A config of `entries` with `router_settings` (a YAML flow mapping body, may be empty).
fn config(entries: &[String], router_settings: &str) -> String {
    format!(
        "model_list:\n{}router_settings: {{{router_settings}}}\n",
        entries.concat()
    )
}

/// A gateway plus a subscription to every health gossip event.
struct Rig {
    gw: Gateway,
    health: Subscriber,
}

impl Rig {
    async fn start(yaml: &str) -> Self {
        let gw = Gateway::start(yaml).await;
        let health = health_events(&gw.client).await;
        Self { gw, health }
    }

    /// Every deployment's status, from `llm.deployments`.
    async fn deployments(&self) -> Vec<Value> {
        deployments(&self.gw.client).await
    }

    /// The status of deployment `id`.
    async fn status(&self, id: &str) -> Value {
        status_of(&self.deployments().await, id)
    }

    /// The next cooldown gossiped on `llm.health.*`.
    async fn next_cooldown(&mut self) -> Value {
        next_event(&mut self.health).await
    }

    /// A job whose deadline is 1 s: too short to wait for a cooldown to end.
    async fn impatient(&self) -> Reply {
        self.gw
            .complete_with(headers(&[("Llm-Timeout-Ms", "1000")]), chat("g", "anyone?"))
            .await
    }

    async fn stream(&self, text: &str) -> (Vec<Reply>, Reply) {
        let mut body = chat("g", text);
        body["stream"] = json!(true);
        self.gw.stream(HeaderMap::new(), body).await
    }
}

/// Subscribes to `llm.health.*`; the subscription is in place when this returns.
async fn health_events(client: &LlmClient) -> Subscriber {
    let sub = client
        .nats()
        .subscribe("llm.health.*")
        .await
        .expect("subscribe to health gossip");
    client.nats().flush().await.expect("flush the subscription");
    sub
}

async fn next_event(sub: &mut Subscriber) -> Value {
    let m = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a health event within the patience")
        .expect("the health subscription is open");
    serde_json::from_slice(&m.payload).expect("a health event is JSON")
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` is not a number in {v}"))
}

fn attempts(r: &Reply) -> u32 {
    r.header("Llm-Attempts")
        .expect("Llm-Attempts")
        .parse()
        .expect("Llm-Attempts is a number")
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Asserts `r` is an error reply with `status` and the OpenAI error body of `kind` (exactly
/// `message`, `type`, `param`, `code`, with a string code); returns the `error` object.
fn assert_error(r: &Reply, status: u16, kind: &str) -> Value {
    assert_eq!(r.status, status, "{}", text(r));
    let v = r.json();
    let obj = v.as_object().expect("an error body is a JSON object");
    assert_eq!(obj.len(), 1, "only `error`: {v}");
    let e = v["error"].clone();
    let keys: HashSet<&str> = e
        .as_object()
        .expect("`error` is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["message", "type", "param", "code"]),
        "{v}"
    );
    assert_eq!(e["type"], kind, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["code"].is_string(), "the code is a string: {v}");
    e
}

/// A deployment's state is healthy, with `fails` failures counted in the last minute.
fn assert_healthy(d: &Value, fails: u64) {
    assert_eq!(d["state"], "healthy", "{d}");
    assert_eq!(num(d, "cooldown_remaining_ms"), 0, "{d}");
    assert_eq!(num(d, "failures_last_minute"), fails, "{d}");
}

/// A cooldown event for `deployment`, caused by `reason`, of `cooldown_ms`.
fn assert_cooldown_event(e: &Value, deployment: &str, reason: &str, cooldown_ms: u64) {
    assert_eq!(e["deployment"], deployment, "{e}");
    assert_eq!(e["state"], "cooldown", "{e}");
    assert_eq!(e["reason"], reason, "{e}");
    assert_eq!(num(e, "cooldown_ms"), cooldown_ms, "{e}");
    assert!(e["worker"].as_str().is_some_and(|w| !w.is_empty()), "{e}");
}

/// A cooling deployment gets no traffic: a job that cannot wait out the cooldown is refused
/// with 429 `no_healthy_deployment` and the upstream sees nothing.
async fn assert_refused_while_cooling(rig: &Rig, seen_by: impl Fn() -> usize) {
    let before = seen_by();
    let r = rig.impatient().await;
    let e = assert_error(&r, 429, "rate_limit_error");
    assert_eq!(e["code"], "no_healthy_deployment", "{e}");
    assert_eq!(seen_by(), before, "a cooling-down deployment got a request");
}

/// Sends `n` jobs at once; every one must be answered.
async fn concurrent(client: &LlmClient, n: usize, tag: &str) -> Vec<Reply> {
    let jobs = (0..n).map(|i| {
        let client = client.clone();
        let body = chat("g", &format!("{tag} {i}")).to_string();
        async move {
            client
                .complete(HeaderMap::new(), body.into(), PATIENCE)
                .await
                .expect("every job is answered")
        }
    });
    join_all(jobs).await
}

// ---------------------------------------------------------------------------------------------
// Upstream HTTP errors.

/// A 5xx from the upstream: the requester gets 502 `api_error` naming the deployment; each
/// failure counts; more than `allowed_fails` cool the deployment down (class
/// `InternalServer`), after which it gets no traffic.
async fn server_error_counts_then_cools_down(status: u16) {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::status(status));
    let yaml = config(
        &[entry("d", &fake.url(), "")],
        "num_retries: 0, allowed_fails: 2, cooldown_time: 60",
    );
    let mut rig = Rig::start(&yaml).await;
    for i in 1..=2 {
        let r = rig.gw.complete(chat("g", "x")).await;
        let e = assert_error(&r, 502, "api_error");
        assert_eq!(e["code"], "502", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("deployment `d`"),
            "{e}"
        );
        assert_eq!(attempts(&r), 1);
        let d = rig.status("d").await;
        assert_healthy(&d, i);
        assert_eq!(num(&d, "failures"), i, "{d}");
        assert_eq!(num(&d, "cooldowns"), 0, "{d}");
    }
    // The third failure is more than allowed_fails (2): a cooldown of cooldown_time.
    assert_error(&rig.gw.complete(chat("g", "x")).await, 502, "api_error");
    let d = rig.status("d").await;
    assert_eq!(d["state"], "cooling_down", "{d}");
    assert_eq!(num(&d, "failures_last_minute"), 3, "{d}");
    assert_eq!(num(&d, "cooldowns"), 1, "{d}");
    let left = num(&d, "cooldown_remaining_ms");
    assert!(left > 30_000 && left <= 60_000, "{d}");
    let e = rig.next_cooldown().await;
    assert_cooldown_event(&e, "d", "InternalServer", 60_000);
    assert_refused_while_cooling(&rig, || fake.request_count()).await;
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn upstream_500_is_a_502_and_counts_against_the_deployment() {
    server_error_counts_then_cools_down(500).await;
}

#[tokio::test]
async fn upstream_502_is_a_502_and_counts_against_the_deployment() {
    server_error_counts_then_cools_down(502).await;
}

#[tokio::test]
async fn upstream_503_is_a_502_and_counts_against_the_deployment() {
    server_error_counts_then_cools_down(503).await;
}

#[tokio::test]
async fn a_429_with_retry_after_cools_the_deployment_down_at_least_that_long() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::RateLimited {
        retry_after_secs: 30,
    });
    // Two deployments: a group's only one is not cooled down by a Retry-After alone (the
    // test below). cooldown_time stays at its default (5 s): the 30 s can only come from
    // Retry-After.
    let mut rig = Rig::start(&config(
        &[entry("d", &fake.url(), ""), entry("e", &fake.url(), "")],
        "num_retries: 0",
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = rig.gw.complete(chat("g", "x")).await;
        let e = assert_error(&r, 429, "rate_limit_error");
        assert_eq!(attempts(&r), 1);
        let message = e["message"].as_str().unwrap().to_string();
        let id = ["d", "e"]
            .into_iter()
            .find(|id| message.contains(&format!("deployment `{id}`")))
            .unwrap_or_else(|| panic!("names its deployment: {e}"));
        seen.push(id);
        let ev = rig.next_cooldown().await;
        assert_cooldown_event(&ev, id, "RateLimit", 30_000);
    }
    seen.sort();
    assert_eq!(seen, ["d", "e"], "the cooling one is not tried again");
    for id in seen {
        let d = rig.status(id).await;
        assert_eq!(d["state"], "cooling_down", "{d}");
        let left = num(&d, "cooldown_remaining_ms");
        assert!(
            left > 25_000 && left <= 30_000,
            "cooling down for the Retry-After (30 s), not cooldown_time (5 s): {d}"
        );
        // One failure, below allowed_fails (3): the cooldown is Retry-After's alone.
        assert_eq!(num(&d, "failures_last_minute"), 1, "{d}");
        assert_eq!(num(&d, "cooldowns"), 1, "{d}");
    }
    assert_refused_while_cooling(&rig, || fake.request_count()).await;
}

#[tokio::test]
async fn a_429_with_retry_after_never_cools_a_group_s_only_deployment_down() {
    // As LiteLLM: cooling a lone deployment for a rate limit would fail every job of the
    // group until the cooldown ends; the next job is simply tried.
    let fake = FakeProvider::start().await;
    fake.push(Fault::RateLimited {
        retry_after_secs: 30,
    });
    let rig = Rig::start(&config(&[entry("d", &fake.url(), "")], "num_retries: 0")).await;
    let r = rig.gw.complete(chat("g", "x")).await;
    assert_error(&r, 429, "rate_limit_error");
    assert_eq!(r.header("Retry-After"), Some("30"));
    let d = rig.status("d").await;
    assert_eq!(d["state"], "healthy", "{d}");
    let r = rig.gw.complete(chat("g", "y")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn a_400_from_the_upstream_never_counts_against_the_deployment() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::status(400));
    let rig = Rig::start(&config(
        &[entry("d", &fake.url(), "")],
        "allowed_fails: 1, cooldown_time: 60",
    ))
    .await;
    // Far more than allowed_fails, and more than the failure-rate rule's 10 requests.
    let replies = concurrent(&rig.gw.client, 25, "bad").await;
    for r in &replies {
        let e = assert_error(r, 400, "invalid_request_error");
        assert!(
            e["message"].as_str().unwrap().contains("deployment `d`"),
            "{e}"
        );
        assert_eq!(attempts(r), 1, "a client error is not retried");
    }
    let d = rig.status("d").await;
    assert_healthy(&d, 0);
    assert_eq!(num(&d, "cooldowns"), 0, "{d}");
    assert_eq!(num(&d, "calls_last_minute"), 0, "{d}");
    // Still taking traffic: every job reached the upstream, and the next one does too.
    fake.set_default(Fault::Ok);
    let r = rig.gw.complete(chat("g", "still here")).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(content(&r), "echo: still here");
    assert_eq!(fake.request_count(), 26);
}

#[tokio::test]
async fn a_401_cools_the_deployment_down_at_once() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::status(401));
    let mut rig = Rig::start(&config(&[entry("d", &fake.url(), "")], "cooldown_time: 60")).await;
    let r = rig.gw.complete(chat("g", "x")).await;
    let e = assert_error(&r, 401, "authentication_error");
    assert!(
        e["message"].as_str().unwrap().contains("Incorrect API key"),
        "{e}"
    );
    assert_eq!(attempts(&r), 1, "an authentication error is not retried");
    let d = rig.status("d").await;
    // One failure, with allowed_fails at its default of 3: a misconfigured key.
    assert_eq!(d["state"], "cooling_down", "{d}");
    assert_eq!(num(&d, "failures_last_minute"), 1, "{d}");
    assert_eq!(num(&d, "cooldowns"), 1, "{d}");
    assert!(num(&d, "cooldown_remaining_ms") > 30_000, "{d}");
    let e = rig.next_cooldown().await;
    assert_cooldown_event(&e, "d", "Authentication", 60_000);
    assert_refused_while_cooling(&rig, || fake.request_count()).await;
    assert_eq!(fake.request_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Transport faults, non-streaming.

/// Two jobs against a deployment that fails with `class` every time, with `allowed_fails: 1`:
/// the first answer is `status`/`kind` and counts, the second cools the deployment down with
/// `class` as the reason. Returns the two answers.
async fn fails_twice_then_cools_down(
    api_base: &str,
    extra: &str,
    router: &str,
    status: u16,
    kind: &str,
    class: &str,
) -> Vec<Reply> {
    let yaml = config(
        &[entry("d", api_base, extra)],
        &format!("num_retries: 0, allowed_fails: 1, cooldown_time: 60{router}"),
    );
    let mut rig = Rig::start(&yaml).await;
    let mut replies = Vec::new();
    for i in 1..=2 {
        let r = rig.gw.complete(chat("g", "x")).await;
        let e = assert_error(&r, status, kind);
        assert!(
            e["message"].as_str().unwrap().contains("deployment `d`"),
            "{e}"
        );
        assert_eq!(attempts(&r), 1);
        let d = rig.status("d").await;
        if i == 1 {
            assert_healthy(&d, 1);
        } else {
            assert_eq!(d["state"], "cooling_down", "{d}");
            assert_eq!(num(&d, "failures_last_minute"), 2, "{d}");
        }
        replies.push(r);
    }
    let e = rig.next_cooldown().await;
    assert_cooldown_event(&e, "d", class, 60_000);
    replies
}

#[tokio::test]
async fn a_slow_first_byte_past_the_deployment_timeout_is_a_504_and_a_timeout() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::Delay(Duration::from_secs(60)));
    let started = Instant::now();
    // TimeoutErrorAllowedFails counts timeouts only: the cooldown proves the class.
    let replies = fails_twice_then_cools_down(
        &fake.url(),
        "timeout: 0.5",
        ", allowed_fails_policy: {TimeoutErrorAllowedFails: 1}",
        504,
        "timeout_error",
        "Timeout",
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(20),
        "two calls cut at 0.5 s each: {took:?}"
    );
    assert!(
        replies[0].json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("within"),
        "{}",
        text(&replies[0])
    );
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn connection_refused_is_a_502_and_counts() {
    // A port bound but never listened on: connections to it are refused, and no other test
    // can take it meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind a free port");
    let port = socket.local_addr().expect("its address").port();
    let base = format!("http://127.0.0.1:{port}/v1");
    fails_twice_then_cools_down(&base, "", "", 502, "api_error", "Connection").await;
    drop(socket);
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_a_502() {
    let fake = FakeProvider::start().await;
    // 200, half of the JSON body, then the connection breaks.
    fake.set_default(Fault::BrokenStream { after_chunks: 0 });
    fails_twice_then_cools_down(&fake.url(), "", "", 502, "api_error", "Connection").await;
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn a_malformed_json_body_is_a_502_invalid_response() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::MalformedJson);
    fails_twice_then_cools_down(&fake.url(), "", "", 502, "api_error", "InvalidResponse").await;
    assert_eq!(fake.request_count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Streams.

/// Two deployments on one fake, so the fault queued for the next request hits whichever
/// deployment the first attempt goes to.
async fn two_on_one_fake(fake: &FakeProvider, extra: &str, router: &str) -> Rig {
    Rig::start(&config(
        &[
            entry("a", &fake.url(), extra),
            entry("b", &fake.url(), extra),
        ],
        router,
    ))
    .await
}

/// The ids that failed and succeeded once, from `llm.deployments`: (failed, served).
async fn failed_and_served(rig: &Rig) -> (String, String) {
    let all = rig.deployments().await;
    let pick = |failures: u64, successes: u64| {
        all.iter()
            .find(|d| num(d, "failures") == failures && num(d, "successes") == successes)
            .map(|d| d["id"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no deployment with {failures} failures: {all:?}"))
    };
    (pick(1, 0), pick(0, 1))
}

/// A stream cut before its first content chunk fails over to the other deployment: the
/// client sees one clean stream, never the abandoned attempt.
async fn cut_before_content_fails_over_silently(fault: Fault) {
    let fake = FakeProvider::start().await;
    fake.push(fault.clone());
    let rig = two_on_one_fake(&fake, "", "").await;
    let (chunks, sentinel) = rig.stream("one two three").await;
    assert_eq!(sentinel.status, 200, "{fault:?}");
    assert_eq!(attempts(&sentinel), 2, "{fault:?}");
    assert_eq!(streamed_text(&chunks), "echo: one two three", "{fault:?}");
    for c in &chunks {
        assert_eq!(c.status, 200, "{fault:?}: {}", text(c));
        assert!(c.json().get("error").is_none(), "{fault:?}: {}", text(c));
        assert_eq!(c.json()["object"], "chat.completion.chunk");
    }
    let roles = chunks
        .iter()
        .filter(|c| c.json()["choices"][0]["delta"]["role"] == "assistant")
        .count();
    assert_eq!(
        roles, 1,
        "{fault:?}: the abandoned attempt's role chunk never went out"
    );
    assert_eq!(fake.request_count(), 2);
    let (failed, served) = failed_and_served(&rig).await;
    assert_ne!(failed, served);
    assert_eq!(sentinel.header("Llm-Deployment"), Some(served.as_str()));
    assert_healthy(&rig.status(&failed).await, 1);
}

#[tokio::test]
async fn a_stream_broken_before_its_first_content_fails_over_silently() {
    // Only the role chunk, then the connection breaks.
    cut_before_content_fails_over_silently(Fault::BrokenStream { after_chunks: 1 }).await;
}

#[tokio::test]
async fn a_stream_with_malformed_json_before_its_first_content_fails_over_silently() {
    // The role chunk, then a `data:` line cut in the middle of the JSON.
    cut_before_content_fails_over_silently(Fault::MalformedJson).await;
}

/// A stream cut after content went out: the content, then an error body, then the sentinel
/// with the error status. Never a silent truncation, never a second attempt.
async fn cut_after_content_ends_with_error_then_sentinel(fault: Fault, status: u16, kind: &str) {
    let fake = FakeProvider::start().await;
    fake.push(fault.clone());
    let rig = two_on_one_fake(&fake, "", "").await;
    let full = "echo: one two three four five six";
    let (messages, sentinel) = rig.stream("one two three four five six").await;
    let (last, content_chunks) = messages.split_last().expect("at least the error body");
    let e = assert_error(last, status, kind);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("broke after it started"),
        "{fault:?}: {e}"
    );
    let sent = streamed_text(content_chunks);
    assert!(
        !sent.is_empty() && full.starts_with(&sent) && sent != full,
        "{fault:?}: a strict prefix of the content came first: {sent:?}"
    );
    assert!(content_chunks.iter().all(|c| c.status == 200));
    assert_eq!(sentinel.status, status, "{fault:?}");
    assert!(sentinel.body.is_empty());
    assert_eq!(attempts(&sentinel), 1, "{fault:?}");
    assert_eq!(fake.request_count(), 1, "{fault:?}: no second attempt");
    let failed = sentinel.header("Llm-Deployment").expect("Llm-Deployment");
    let d = rig.status(failed).await;
    assert_eq!(num(&d, "failures"), 1, "{d}");
    assert_healthy(&d, 1);
}

#[tokio::test]
async fn a_stream_broken_after_its_first_content_ends_with_an_error_then_the_sentinel() {
    // Role chunk, "echo:", " one", then the connection breaks.
    cut_after_content_ends_with_error_then_sentinel(
        Fault::BrokenStream { after_chunks: 3 },
        502,
        "api_error",
    )
    .await;
}

#[tokio::test]
async fn an_error_event_after_the_first_content_ends_with_an_error_then_the_sentinel() {
    cut_after_content_ends_with_error_then_sentinel(
        Fault::MidStreamError { after_chunks: 3 },
        502,
        "api_error",
    )
    .await;
}

#[tokio::test]
async fn sse_with_garbage_lines_arrives_whole() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::GarbageSse);
    let rig = Rig::start(&config(&[entry("d", &fake.url(), "")], "")).await;
    let (chunks, sentinel) = rig.stream("through the noise").await;
    assert_eq!(sentinel.status, 200);
    assert_eq!(attempts(&sentinel), 1);
    assert_eq!(streamed_text(&chunks), "echo: through the noise");
    assert!(
        chunks
            .iter()
            .all(|c| c.status == 200 && c.json().get("error").is_none())
    );
    let last = chunks.last().unwrap().json();
    assert_eq!(last["choices"][0]["finish_reason"], "stop", "{last}");
    let d = rig.status("d").await;
    assert_healthy(&d, 0);
    assert_eq!(num(&d, "successes"), 1, "{d}");
    assert_eq!(num(&d, "failures"), 0, "{d}");
}

#[tokio::test]
async fn a_stream_that_never_ends_gets_an_error_and_a_504_sentinel_within_its_deadline() {
    let fake = FakeProvider::start().await;
    // Role chunk, "echo:", " one", then silence forever.
    fake.set_default(Fault::NeverEnding { after_chunks: 3 });
    let mut rig = Rig::start(&config(
        &[entry("d", &fake.url(), "stream_timeout: 0.5")],
        "num_retries: 0, cooldown_time: 60, allowed_fails_policy: {TimeoutErrorAllowedFails: 0}",
    ))
    .await;
    let mut body = chat("g", "one two three four");
    body["stream"] = json!(true);
    let started = Instant::now();
    // The job's own deadline is far away: the stream timeout must end it.
    let (messages, sentinel) = rig
        .gw
        .stream(headers(&[("Llm-Timeout-Ms", "60000")]), body)
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let (last, content_chunks) = messages.split_last().expect("an error body");
    let e = assert_error(last, 504, "timeout_error");
    assert!(
        e["message"].as_str().unwrap().contains("sent nothing"),
        "{e}"
    );
    assert_eq!(streamed_text(content_chunks), "echo: one");
    assert_eq!(sentinel.status, 504);
    assert!(sentinel.body.is_empty());
    // A timeout, and it counts: with TimeoutErrorAllowedFails 0 one is enough to cool down.
    let d = rig.status("d").await;
    assert_eq!(d["state"], "cooling_down", "{d}");
    assert_eq!(num(&d, "failures_last_minute"), 1, "{d}");
    let e = rig.next_cooldown().await;
    assert_cooldown_event(&e, "d", "Timeout", 60_000);
}

// ---------------------------------------------------------------------------------------------
// One failing deployment of two, under load.

/// A (always 500) and B (healthy) in group `g`, with `router_settings`.
async fn one_bad_of_two(router: &str) -> (FakeProvider, FakeProvider, Rig) {
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(500));
    let good = FakeProvider::start().await;
    let rig = Rig::start(&config(
        &[entry("a", &bad.url(), ""), entry("b", &good.url(), "")],
        router,
    ))
    .await;
    (bad, good, rig)
}

/// Sends jobs one at a time until `a` is cooling down; every job succeeds (on `b` when `a`
/// fails). Returns the number of jobs sent.
async fn until_a_cools_down(rig: &Rig) -> usize {
    for sent in 1..=200 {
        let r = rig.gw.complete(chat("g", "warm")).await;
        assert_eq!(r.status, 200, "{}", text(&r));
        assert_eq!(r.header("Llm-Deployment"), Some("b"));
        // The failure reached `a`'s actor before the answer: this sees it.
        if rig.status("a").await["state"] == "cooling_down" {
            return sent;
        }
    }
    panic!("`a` never cooled down in 200 jobs");
}

#[tokio::test]
async fn a_failing_deployment_gets_exactly_allowed_fails_plus_one_requests() {
    let (bad, good, rig) = one_bad_of_two("allowed_fails: 3, cooldown_time: 60").await;
    let jobs = until_a_cools_down(&rig).await;
    // Jobs one at a time: nothing else is in flight, so `a` saw exactly the failures that
    // tripped it, allowed_fails + 1.
    assert_eq!(bad.request_count(), 4);
    let a = rig.status("a").await;
    assert_eq!(num(&a, "failures_last_minute"), 4, "{a}");
    assert_eq!(num(&a, "cooldowns"), 1, "{a}");
    // From then on, nothing for `a`.
    for _ in 0..50 {
        let r = rig.gw.complete(chat("g", "after")).await;
        assert_eq!(r.status, 200);
        assert_eq!(attempts(&r), 1);
        assert_eq!(r.header("Llm-Deployment"), Some("b"));
    }
    assert_eq!(bad.request_count(), 4);
    assert_eq!(good.request_count(), jobs + 50);
}

#[tokio::test]
async fn one_deployment_of_two_failing_under_200_concurrent_jobs() {
    let (bad, good, rig) = one_bad_of_two("allowed_fails: 3, cooldown_time: 60").await;

    // Wave 1, cold: 200 jobs at once. Each job tries `a` at most once (a failed deployment is
    // excluded for the rest of the job while another is left), so every job succeeds on `b`,
    // and `a`'s requests are exactly the jobs' retries.
    let wave1 = concurrent(&rig.gw.client, 200, "wave1").await;
    let mut retries = 0;
    for r in &wave1 {
        assert_eq!(r.status, 200, "{}", text(r));
        assert_eq!(r.header("Llm-Deployment"), Some("b"));
        let n = attempts(r);
        assert!(n == 1 || n == 2, "{n} attempts");
        retries += n as usize - 1;
    }
    let after_wave1 = bad.request_count();
    assert_eq!(
        after_wave1, retries,
        "every request to `a` was one retried attempt"
    );
    assert_eq!(good.request_count(), 200);
    // How many reached `a` depends on how many were routed before its 4th failure came back
    // (with 200 at once, up to all of them); what is certain is that it cooled down.
    assert!(after_wave1 >= 4, "{after_wave1} requests reached `a`");
    let a = rig.status("a").await;
    assert_eq!(a["state"], "cooling_down", "{a}");
    assert_eq!(num(&a, "failures_last_minute") as usize, after_wave1, "{a}");
    eprintln!(
        "wave 1: `a` got {after_wave1} of 200 jobs before its cooldown; {} cooldown(s) started",
        num(&a, "cooldowns")
    );

    // Wave 2: `a` is cooling down, so it gets none of 200 jobs at once.
    let wave2 = concurrent(&rig.gw.client, 200, "wave2").await;
    for r in &wave2 {
        assert_eq!(r.status, 200, "{}", text(r));
        assert_eq!(attempts(r), 1, "no retries: `a` is never picked");
        assert_eq!(r.header("Llm-Deployment"), Some("b"));
    }
    assert_eq!(
        bad.request_count(),
        after_wave1,
        "`a` got requests in wave 2"
    );
    assert_eq!(good.request_count(), 400);
}

#[tokio::test]
async fn after_a_cooldown_one_probe_decides() {
    // allowed_fails 0: one failure cools `a` down for 1 s.
    let (bad, _good, rig) = one_bad_of_two("allowed_fails: 0, cooldown_time: 1").await;
    until_a_cools_down(&rig).await;
    assert_eq!(bad.request_count(), 1);

    // Wait out the cooldown (a timer of the known, configured length).
    let wait_out = |a: &Value| Duration::from_millis(num(a, "cooldown_remaining_ms") + 50);
    tokio::time::sleep(wait_out(&rig.status("a").await)).await;
    let a = rig.status("a").await;
    assert_eq!(a["state"], "half_open", "{a}");

    // 1. A failed probe: exactly one job probes, fails over to `b`, and `a` cools down again.
    let mut jobs = 0;
    while bad.request_count() == 1 {
        let r = rig.gw.complete(chat("g", "probe")).await;
        assert_eq!(r.status, 200, "{}", text(&r));
        assert_eq!(r.header("Llm-Deployment"), Some("b"));
        jobs += 1;
        assert!(jobs < 100, "`a` was never probed");
    }
    assert_eq!(bad.request_count(), 2);
    let a = rig.status("a").await;
    assert_eq!(
        num(&a, "cooldowns"),
        2,
        "the failed probe started a new cooldown: {a}"
    );
    assert_ne!(a["state"], "healthy", "{a}");

    // 2. A successful probe. `a` recovers but answers slowly, so the probe is still out while
    // many jobs arrive at once: exactly one of them goes to `a`.
    bad.set_default(Fault::Delay(Duration::from_secs(3)));
    tokio::time::sleep(wait_out(&a)).await;
    assert_eq!(rig.status("a").await["state"], "half_open");
    let replies = concurrent(&rig.gw.client, 30, "probe").await;
    assert!(replies.iter().all(|r| r.status == 200));
    let probes = replies
        .iter()
        .filter(|r| r.header("Llm-Deployment") == Some("a"))
        .count();
    assert_eq!(probes, 1, "exactly one probe");
    assert_eq!(bad.request_count(), 3);
    let a = rig.status("a").await;
    assert_eq!(a["state"], "healthy", "{a}");
    assert_eq!(
        num(&a, "failures_last_minute"),
        0,
        "old failures forgotten: {a}"
    );
    assert_eq!(num(&a, "successes"), 1, "{a}");

    // Healthy again: it takes its share of the traffic.
    bad.set_default(Fault::Ok);
    let replies = concurrent(&rig.gw.client, 40, "back").await;
    assert!(replies.iter().all(|r| r.status == 200 && attempts(r) == 1));
    assert!(bad.request_count() > 3, "`a` takes traffic again");
}

// ---------------------------------------------------------------------------------------------
// Two workers.

/// The id of the worker that served `r` (job ids are `<worker id>-<n>`).
fn worker_of(r: &Reply) -> String {
    let job = r.header("Llm-Job-Id").expect("Llm-Job-Id");
    job.rsplit_once('-').expect("<worker>-<n>").0.to_string()
}

#[tokio::test]
async fn a_cooldown_on_one_worker_reaches_the_other_through_gossip() {
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(401));
    let good = FakeProvider::start().await;
    let yaml = config(
        &[entry("a", &bad.url(), ""), entry("b", &good.url(), "")],
        "cooldown_time: 60",
    );
    let nats = NatsServer::start();
    let client = LlmClient::new(nats.client().await, "llm");
    let probe = || async {
        // An unknown model: answered at once by whichever worker gets it, touching nothing.
        let r = client
            .complete(
                HeaderMap::new(),
                chat("nope", "x").to_string().into(),
                PATIENCE,
            )
            .await
            .expect("a started worker answers at once");
        assert_eq!(r.status, 404);
        worker_of(&r)
    };

    // Worker 1 alone, to learn its id; then worker 2, once it serves jobs (its health
    // subscription, made before its job subscription on the same connection, is then live).
    let mut w1 = Some(start_worker(&nats, &yaml).await);
    let id1 = probe().await;
    let mut w2 = Some(start_worker(&nats, &yaml).await);
    let mut tries = 0;
    while probe().await == id1 {
        tries += 1;
        assert!(tries < 200, "worker 2 never served a job");
    }
    let mut health = health_events(&client).await;

    // Jobs until one hits `a`: its 401 cools `a` down at once on the worker that served it.
    let hit = loop {
        let r = client
            .complete(
                HeaderMap::new(),
                chat("g", "x").to_string().into(),
                PATIENCE,
            )
            .await
            .unwrap();
        if r.status == 401 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", text(&r));
    };
    assert_eq!(bad.request_count(), 1);
    let event = next_event(&mut health).await;
    assert_cooldown_event(&event, "a", "Authentication", 60_000);

    // Stop the worker that saw the failure; the other never called `a`.
    let (cooler, other) = if worker_of(&hit) == id1 {
        (w1.take(), w2.take())
    } else {
        (w2.take(), w1.take())
    };
    cooler.expect("the cooling worker").stop().await;
    let other = other.expect("the other worker");

    // The other worker learns the cooldown from the gossip alone (it never saw `a` fail).
    // Gossip is asynchronous: await the state change as `llm.deployments` (now answered by the
    // other worker only) reports it.
    let started = Instant::now();
    let a = loop {
        let a = status_of(&deployments(&client).await, "a");
        if a["state"] == "cooling_down" {
            break a;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the gossip never arrived: {a}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(num(&a, "failures"), 0, "this worker never called `a`: {a}");
    assert_eq!(num(&a, "cooldowns"), 1, "{a}");
    assert!(num(&a, "cooldown_remaining_ms") > 30_000, "{a}");

    // And it sends `a` nothing.
    let replies = concurrent(&client, 100, "gossip").await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", text(r));
        assert_eq!(r.header("Llm-Deployment"), Some("b"));
        assert_eq!(attempts(r), 1);
    }
    assert_eq!(
        bad.request_count(),
        1,
        "the other worker sent `a` a request"
    );
    other.stop().await;
}

#[tokio::test]
async fn a_hanging_upstream_cut_by_the_jobs_deadline_counts_as_a_timeout() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::NeverEnding { after_chunks: 0 });
    // No deployment `timeout`: only the job's deadline ends the call. allowed_fails is 3.
    let mut rig = Rig::start(&config(
        &[entry("d", &fake.url(), "")],
        "num_retries: 0, cooldown_time: 60",
    ))
    .await;
    for i in 1..=4u64 {
        let r = rig
            .gw
            .complete_with(headers(&[("Llm-Timeout-Ms", "300")]), chat("g", "x"))
            .await;
        assert_error(&r, 504, "timeout_error");
        let d = rig.status("d").await;
        assert_eq!(
            num(&d, "failures_last_minute"),
            i,
            "the hung call counts: {d}"
        );
    }
    // A deployment that hangs on every call leaves the rotation like any failing one.
    let d = rig.status("d").await;
    assert_eq!(d["state"], "cooling_down", "{d}");
    let e = rig.next_cooldown().await;
    assert_cooldown_event(&e, "d", "Timeout", 60_000);
}

#[tokio::test]
async fn failures_in_flight_when_the_cooldown_starts_do_not_start_more_cooldowns() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::Delay(Duration::from_secs(60)));
    // allowed_fails 0: the first failure cools down. Four calls are in flight together, and
    // all four time out (0.5 s) at about the same time.
    let mut rig = Rig::start(&config(
        &[entry("d", &fake.url(), "timeout: 0.5")],
        "num_retries: 0, allowed_fails: 0, cooldown_time: 60",
    ))
    .await;
    let replies = concurrent(&rig.gw.client, 4, "in flight").await;
    for r in &replies {
        assert_error(r, 504, "timeout_error");
    }
    assert_eq!(fake.request_count(), 4, "all four were in flight together");
    let e = rig.next_cooldown().await;
    assert_cooldown_event(&e, "d", "Timeout", 60_000);
    let d = rig.status("d").await;
    assert_eq!(d["state"], "cooling_down", "{d}");
    assert_eq!(
        num(&d, "failures_last_minute"),
        4,
        "every failure is recorded: {d}"
    );
    assert_eq!(num(&d, "cooldowns"), 1, "one incident, one cooldown: {d}");
}
