//! Retries, fallbacks, deadlines and stream failures: what the requester gets when an
//! upstream misbehaves.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{Gateway, chat, content, headers, streamed_text},
};

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
async fn a_rate_limited_call_is_retried() {
    let fake = FakeProvider::start().await;
    fake.push(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let gw = Gateway::start(&format!("model_list:\n{}", deployment("g", &fake, "d"))).await;
    let r = gw.complete(chat("g", "again")).await;
    assert_eq!(r.status, 200);
    assert_eq!(content(&r), "echo: again");
    assert_eq!(r.header("Llm-Attempts"), Some("2"));
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
