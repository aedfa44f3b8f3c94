//! Retries, fallbacks, deadlines and stream failures: what the requester gets when an
//! upstream misbehaves. A group none of whose deployments can take a job now (all cooling
//! down) falls back at once, or answers LiteLLM's 429 with `Retry-After`; a job still waits
//! for capacity that frees before its deadline.

use std::time::{Duration, Instant};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{Gateway, PATIENCE, chat, content, headers, streamed_text},
    http_front::HttpGateway,
};
use serde_json::json;

fn deployment(group: &str, fake: &FakeProvider, id: &str) -> String {
    format!(
        "  - model_name: {group}\n    litellm_params: {{model: openai/m, api_base: \"{}\", api_key: k}}\n    model_info: {{id: {id}}}\n",
        fake.url()
    )
}

#[tokio::test]
async fn a_failing_deployment_is_retried_on_the_other_one() {
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(500));
    let good = FakeProvider::start().await;
    let yaml = format!(
        "model_list:\n{}{}",
        deployment("g", &bad, "bad"),
        deployment("g", &good, "good")
    );
    let gw = Gateway::start(&yaml).await;
    for _ in 0..10 {
        let r = gw.complete(chat("g", "x")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("Llm-Deployment"), Some("good"));
        let attempts: u32 = r.header("Llm-Attempts").unwrap().parse().unwrap();
        assert!(attempts == 1 || attempts == 2);
    }
    assert!(
        bad.request_count() > 0,
        "the bad one was tried at least once"
    );
}

#[tokio::test]
async fn a_job_fails_with_502_after_its_retries() {
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(503));
    let yaml = format!(
        "model_list:\n{}router_settings: {{num_retries: 2}}\n",
        deployment("g", &bad, "only")
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("g", "x")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["type"], "api_error");
    assert_eq!(r.header("Llm-Attempts"), Some("3"));
    assert_eq!(bad.request_count(), 3);
}

#[tokio::test]
async fn a_client_error_is_not_retried_and_keeps_its_status() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::status(400));
    let gw = Gateway::start(&format!("model_list:\n{}", deployment("g", &fake, "d"))).await;
    let r = gw.complete(chat("g", "x")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("Llm-Attempts"), Some("1"));
    assert_eq!(fake.request_count(), 1);

    let fake = FakeProvider::start().await;
    fake.set_default(Fault::ContextLengthExceeded);
    let gw = Gateway::start(&format!("model_list:\n{}", deployment("g", &fake, "d"))).await;
    let r = gw.complete(chat("g", "x")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn a_rate_limited_call_is_retried_on_another_deployment() {
    let limited = FakeProvider::start().await;
    limited.push(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let other = FakeProvider::start().await;
    let yaml = format!(
        "model_list:\n{}{}router_settings: {{routing_strategy: least-busy}}\n",
        deployment("g", &limited, "limited"),
        deployment("g", &other, "other")
    );
    let gw = Gateway::start(&yaml).await;
    for i in 0..4 {
        let r = gw.complete(chat("g", &format!("again {i}"))).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(content(&r), format!("echo: again {i}"));
    }
}

#[tokio::test]
async fn a_lone_rate_limited_deployment_is_retried_after_its_retry_after_not_cooled_down() {
    // As LiteLLM: a group's only deployment is not cooled down by a 429 alone (that would fail
    // every job of the group until it ends); the retry waits out the upstream's `Retry-After`.
    let fake = FakeProvider::start().await;
    fake.push(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let gw = Gateway::start(&format!("model_list:\n{}", deployment("g", &fake, "d"))).await;
    let r = gw.complete(chat("g", "again")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Attempts"), Some("2"));
    // Not cooling: the next job is served by its first attempt.
    let r = gw.complete(chat("g", "next")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Attempts"), Some("1"));
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_answers_429_with_retry_after_at_once() {
    let fake = FakeProvider::start().await;
    fake.push(Fault::RateLimited {
        retry_after_secs: 30,
    });
    let gw = Gateway::start(&format!("model_list:\n{}", deployment("g", &fake, "d"))).await;
    let r = gw
        .complete_with(headers(&[("Llm-Timeout-Ms", "20000")]), chat("g", "again"))
        .await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    let wait: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert_eq!(fake.request_count(), 1);
}

/// The groups: `gpt-mock` (one good deployment) and `broken` (one deployment that
/// answers 500), two retries, a cooldown after two failures, and optionally a fallback.
fn cooling_config(bad: &FakeProvider, good: &FakeProvider, fallbacks: bool) -> String {
    format!(
        "model_list:\n{}{}router_settings:\n  num_retries: 2\n  allowed_fails: 1\n  cooldown_time: 60\n{}",
        deployment("gpt-mock", good, "mock-1"),
        deployment("broken", bad, "broken-1"),
        if fallbacks {
            "  fallbacks: [{broken: [gpt-mock]}]\n"
        } else {
            ""
        }
    )
}

/// LiteLLM's answer for a model whose deployments all cool down, with its `Retry-After`.
fn assert_no_deployments_available(
    status: u16,
    body: &serde_json::Value,
    retry_after: Option<&str>,
) {
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("No deployments available for selected model, Try again in "),
        "{message}"
    );
    assert!(
        message.contains("Passed model=broken. pre-call-checks=False, cooldown_list=['broken-1']"),
        "{message}"
    );
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let wait: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(
        message.contains(&format!("Try again in {wait} seconds")),
        "{message}"
    );
}

#[tokio::test]
async fn a_group_that_cools_down_falls_back_at_once_not_after_the_cooldown() {
    // Without `Llm-Timeout-Ms` the deadline is 600 s: waiting out the 60 s cooldown would
    // outlast the test's patience (30 s) and fail it.
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(500));
    let good = FakeProvider::start().await;
    let gw = Gateway::start(&cooling_config(&bad, &good, true)).await;
    let r = gw.complete(chat("broken", "first")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Model-Group"), Some("gpt-mock"));
    assert_eq!(content(&r), "echo: first");
    assert_eq!(bad.request_count(), 2, "two attempts, then the cooldown");
    // Every later job goes straight to the fallback while `broken` cools down.
    for i in 0..5 {
        let r = gw.complete(chat("broken", &format!("later {i}"))).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("Llm-Model-Group"), Some("gpt-mock"));
        assert_eq!(r.header("Llm-Attempts"), Some("1"));
    }
    assert_eq!(bad.request_count(), 2, "a cooling deployment gets nothing");
}

#[tokio::test]
async fn without_fallbacks_a_cooling_group_answers_litellm_s_429_with_retry_after() {
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(500));
    let good = FakeProvider::start().await;
    let gw = Gateway::start(&cooling_config(&bad, &good, false)).await;
    // The first job fails twice, cools the deployment down, and is answered at once.
    let r = gw.complete(chat("broken", "first")).await;
    assert_no_deployments_available(r.status, &r.json(), r.header("Retry-After"));
    assert_eq!(r.header("Llm-Attempts"), Some("2"));
    // So is every later one, without an upstream call.
    for i in 0..3 {
        let r = gw.complete(chat("broken", &format!("later {i}"))).await;
        assert_no_deployments_available(r.status, &r.json(), r.header("Retry-After"));
        assert_eq!(r.header("Llm-Attempts"), Some("0"));
    }
    // A stream gets the same error, then its sentinel with the same status.
    let mut body = chat("broken", "streamed");
    body["stream"] = json!(true);
    let (messages, sentinel) = gw.stream(Default::default(), body).await;
    let error = messages.last().expect("an error message");
    assert_no_deployments_available(error.status, &error.json(), sentinel.header("Retry-After"));
    assert_eq!(sentinel.status, 429);
    assert_eq!(bad.request_count(), 2);
    // The other group is not affected.
    assert_eq!(gw.complete(chat("gpt-mock", "ok")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_front_answers_a_cooling_group_with_429_and_retry_after() {
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(500));
    let good = FakeProvider::start().await;
    let gw = HttpGateway::start(&cooling_config(&bad, &good, false)).await;
    let http = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("an HTTP client");
    for text in ["first", "second"] {
        let response = http
            .post(format!("{}/chat/completions", gw.v1()))
            .json(&chat("broken", text))
            .send()
            .await
            .expect("an HTTP answer");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body: serde_json::Value = response.json().await.expect("an error body");
        assert_no_deployments_available(status, &body, retry_after.as_deref());
    }
    assert_eq!(bad.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_waits_for_capacity_that_frees_before_its_deadline() {
    // One call at a time on the only deployment, and a fallback that must not be used: the
    // second job waits for the first one's slot instead of failing over.
    let slow = FakeProvider::start().await;
    slow.push(Fault::Delay(Duration::from_millis(800)));
    let spare = FakeProvider::start().await;
    let yaml = format!(
        "model_list:\n  - model_name: g\n    litellm_params: {{model: openai/m, api_base: \"{}\", api_key: k, max_parallel_requests: 1}}\n    model_info: {{id: only}}\n{}router_settings:\n  fallbacks: [{{g: [spare]}}]\n",
        slow.url(),
        deployment("spare", &spare, "spare-1")
    );
    let gw = Gateway::start(&yaml).await;
    let first = gw.complete(chat("g", "one"));
    let second = async {
        // Sent once the first call holds the slot.
        slow.wait_for_requests(1, PATIENCE).await;
        gw.complete(chat("g", "two")).await
    };
    let (first, second) = tokio::join!(first, second);
    for (r, text) in [(first, "one"), (second, "two")] {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("Llm-Deployment"), Some("only"));
        assert_eq!(content(&r), format!("echo: {text}"));
    }
    assert_eq!(spare.request_count(), 0, "nobody fell back");
}

#[tokio::test]
async fn a_failing_group_falls_back_to_its_fallbacks() {
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(500));
    let good = FakeProvider::start().await;
    let yaml = format!(
        "model_list:\n{}{}router_settings:\n  num_retries: 1\n  fallbacks: [{{primary: [backup]}}]\n",
        deployment("primary", &bad, "p"),
        deployment("backup", &good, "b")
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("primary", "fall")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Model-Group"), Some("backup"));
    assert_eq!(r.header("Llm-Attempts"), Some("3"));
    assert_eq!(bad.request_count(), 2);
}

#[tokio::test]
async fn the_llm_fallbacks_header_adds_fallbacks() {
    let bad = FakeProvider::start().await;
    bad.set_default(Fault::status(502));
    let good = FakeProvider::start().await;
    let yaml = format!(
        "model_list:\n{}{}router_settings: {{num_retries: 0}}\n",
        deployment("primary", &bad, "p"),
        deployment("spare", &good, "s")
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw
        .complete_with(
            headers(&[("Llm-Fallbacks", "nope, spare")]),
            chat("primary", "x"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Model-Group"), Some("spare"));
}

#[tokio::test]
async fn the_requester_gets_a_504_at_its_deadline_when_the_upstream_hangs() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::NeverEnding { after_chunks: 0 });
    let gw = Gateway::start(&format!("model_list:\n{}", deployment("g", &fake, "d"))).await;
    let started = Instant::now();
    let r = gw
        .complete_with(headers(&[("Llm-Timeout-Ms", "500")]), chat("g", "x"))
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "timeout_error");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_before_its_first_content_fails_over_silently() {
    let fake = FakeProvider::start().await;
    // The first call sends only the role chunk, then drops the connection.
    fake.push(Fault::BrokenStream { after_chunks: 1 });
    let gw = Gateway::start(&format!("model_list:\n{}", deployment("g", &fake, "d"))).await;
    let mut body = chat("g", "second time lucky");
    body["stream"] = json!(true);
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(sentinel.status, 200);
    assert_eq!(sentinel.header("Llm-Attempts"), Some("2"));
    assert_eq!(streamed_text(&chunks), "echo: second time lucky");
    let roles = chunks
        .iter()
        .filter(|c| c.json()["choices"][0]["delta"]["role"] == "assistant")
        .count();
    assert_eq!(
        roles, 1,
        "the abandoned attempt's role chunk never reached the client"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_after_it_started_ends_with_an_error_and_the_sentinel() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::BrokenStream { after_chunks: 3 });
    let gw = Gateway::start(&format!("model_list:\n{}", deployment("g", &fake, "d"))).await;
    let mut body = chat("g", "one two three four five six");
    body["stream"] = json!(true);
    let (messages, sentinel) = gw.stream(Default::default(), body).await;
    let last = messages.last().unwrap();
    assert_eq!(last.status, 502);
    assert!(
        last.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke")
    );
    assert!(messages.len() >= 3, "the content chunks came first");
    assert_eq!(sentinel.status, 502);
    assert_eq!(fake.request_count(), 1, "no retry once content went out");
}

#[tokio::test]
async fn a_stream_that_goes_silent_times_out_with_a_504() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::NeverEnding { after_chunks: 3 });
    let yaml = format!(
        "model_list:\n  - model_name: g\n    litellm_params: {{model: openai/m, api_base: \"{}\", api_key: k, stream_timeout: 0.3}}\n",
        fake.url()
    );
    let gw = Gateway::start(&yaml).await;
    let mut body = chat("g", "one two three four five");
    body["stream"] = json!(true);
    let (messages, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(messages.last().unwrap().status, 504);
    assert_eq!(sentinel.status, 504);
}
