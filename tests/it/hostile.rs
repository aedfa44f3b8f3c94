//! Hostile input never hangs a caller: every malformed, oversized or pointless job gets a small,
//! clear answer in OpenAI's error shape (or, with nowhere to answer, costs nothing), and the
//! jobs beside it are not harmed.

use std::time::Duration;

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{Gateway, PATIENCE, chat, content, headers},
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

fn config(fake: &FakeProvider) -> String {
    format!(
        r#"
model_list:
  - model_name: fake
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{}", api_key: sk-hostile-0123456789}}
  - model_name: demo
    litellm_params: {{model: mock/demo, mock_response: "still here"}}
router_settings:
  num_retries: 0
"#,
        fake.url()
    )
}

/// An error answer: its status, and a body small enough to never be the problem.
fn small_error(reply: &llmbus::client::Reply, status: u16) -> String {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)])
    );
    assert!(
        reply.body.len() < 1_000,
        "an error of {} bytes echoes the input",
        reply.body.len()
    );
    reply.json()["error"]["message"]
        .as_str()
        .expect("an OpenAI error body")
        .to_string()
}

#[tokio::test]
async fn a_huge_model_name_gets_a_small_404() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    // The whole body stays under the 1 MB max_payload; the echo of the name would not.
    let body = chat(&"m".repeat(1_048_400), "hi");
    let message = small_error(&gw.complete(body).await, 404);
    assert!(message.contains("1048400 bytes"), "{message}");
    assert_eq!(content(&gw.complete(chat("demo", "x")).await), "still here");
}

#[tokio::test]
async fn a_huge_unknown_role_gets_a_small_400() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let body =
        json!({"model": "fake", "messages": [{"role": "r".repeat(500_000), "content": "x"}]});
    let message = small_error(&gw.complete(body).await, 400);
    assert!(message.contains("bytes"), "{message}");
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn malformed_bodies_and_headers_get_400s() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    // Not UTF-8; nested deeper than any parser should follow; a number where text goes.
    small_error(&gw.complete_raw(&[0xff, 0xfe, 0x7b, 0x00]).await, 400);
    let deep = "[".repeat(100_000);
    small_error(&gw.complete_raw(deep.as_bytes()).await, 400);
    small_error(
        &gw.complete_raw(br#"{"model": 7, "messages": "x"}"#).await,
        400,
    );
    for bad in ["-5", "0", "soon", &"9".repeat(400)] {
        let r = gw
            .complete_with(headers(&[("Llm-Timeout-Ms", bad)]), chat("demo", "x"))
            .await;
        small_error(&r, 400);
    }
    assert_eq!(fake.request_count(), 0, "no bad job reached the upstream");
}

#[tokio::test]
async fn a_job_with_nowhere_to_answer_is_refused_before_any_upstream_call() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let nats = gw.nats.client().await;
    let mut body = chat("fake", "into the void");
    body["stream"] = true.into();
    for _ in 0..200 {
        nats.publish("llm.completion", Bytes::from(body.to_string()))
            .await
            .unwrap();
    }
    nats.flush().await.unwrap();
    // A job with a reply subject, from the same connection, arrives after all of them.
    let reply = gw.client.clone();
    let inbox = nats.new_inbox();
    let mut sub = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply(
        "llm.completion",
        inbox,
        Bytes::from(chat("fake", "real").to_string()),
    )
    .await
    .unwrap();
    let answer = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("an answer")
        .expect("the subscription");
    assert!(String::from_utf8_lossy(&answer.payload).contains("echo: real"));
    assert_eq!(
        fake.request_count(),
        1,
        "only the job with a reply subject called upstream"
    );
    drop(reply);
}

#[tokio::test]
async fn a_chunk_too_large_to_publish_ends_the_stream_with_a_small_error() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::StreamChunks {
        pieces: vec!["a normal start ".into(), "x".repeat(1_200_000)],
        gap: Duration::ZERO,
    });
    let gw = Gateway::start(&config(&fake)).await;
    let mut body = chat("fake", "huge");
    body["stream"] = true.into();
    let (chunks, end) = gw.stream(HeaderMap::new(), body).await;
    assert_eq!(end.status, 502);
    let last = chunks.last().expect("the error before the sentinel");
    assert_eq!(last.json()["error"]["code"], "reply_not_published");
    assert!(last.body.len() < 1_000);
    // Other jobs are fine.
    assert_eq!(content(&gw.complete(chat("demo", "x")).await), "still here");
}

#[tokio::test]
async fn a_reply_too_large_for_nats_is_a_clear_502() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::Fixed {
        content: "y".repeat(1_100_000),
    });
    let gw = Gateway::start(&config(&fake)).await;
    let message = small_error(&gw.complete(chat("fake", "big")).await, 502);
    assert!(message.contains("max_payload"), "{message}");
}
