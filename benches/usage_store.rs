//! The usage publisher's throughput: how fast a worker's usage events are stored in
//! `LLM_USAGE` now that each one is acknowledged by JetStream.
//!
//! A private `nats-server` (JetStream on, file storage), the `LLM_USAGE` stream, and three
//! ways of storing N events:
//!
//! - **publisher**: the worker's path — `UsageSink::record` for every event as fast as it
//!   goes, then `flush`, which returns once every event is acknowledged (pipelined rounds of
//!   up to 1,024 publishes, then their acks);
//! - **one at a time**: publish, await the ack, next (what a naive acknowledged publisher
//!   does), on a tenth of the events;
//! - **core NATS**: publish without acknowledgement, then flush (what llmbus did before:
//!   faster, but nothing says the events were stored).
//!
//! Run: `cargo bench --bench usage_store` (`LLMBUS_BENCH_EVENTS`, default 100000). Figures are
//! printed, never asserted. Without `--bench` (as under `cargo test --all-targets`) it runs a
//! smoke pass of a few thousand events.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use llmbus::{
    local_nats::{LocalNats, free_port},
    usage::{
        UsageEvent, UsageSink,
        publisher::{self, Durability},
        stream,
    },
    wire::Subjects,
};

fn event(i: usize) -> UsageEvent {
    UsageEvent {
        job_id: format!("bench-worker-{i}"),
        timestamp_ms: 1_764_458_991_511,
        model_group: "gpt-4o-mini".into(),
        deployment: Some("gpt-4o-mini-1".into()),
        provider: Some("openai".into()),
        model: Some("openai/gpt-4o-mini".into()),
        tags: vec!["eu".into()],
        prompt_tokens: 56,
        completion_tokens: 12,
        cost_usd: 0.0000156,
        latency_ms: 412.0,
        status: 200,
        attempts: 1,
        ..Default::default()
    }
}

async fn fresh_stream(js: &jetstream::Context, subjects: &Subjects) {
    let _ = js.delete_stream(subjects.usage_stream()).await;
    stream::ensure(
        js,
        subjects,
        Duration::from_secs(86_400),
        llmbus::cluster::Replicas::Auto,
    )
    .await
    .expect("the usage stream");
}

async fn stored(js: &jetstream::Context, subjects: &Subjects) -> u64 {
    js.get_stream(subjects.usage_stream())
        .await
        .expect("the stream")
        .info()
        .await
        .expect("its info")
        .state
        .messages
}

fn line(what: &str, n: usize, took: Duration, stored: u64) {
    println!(
        "  {what:<16} {n:>7} events in {:>8.1} ms: {:>9.0} events/s ({stored} stored)",
        took.as_secs_f64() * 1000.0,
        n as f64 / took.as_secs_f64()
    );
}

async fn run(url: String, n: usize) {
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let subjects = Subjects::default();

    fresh_stream(&js, &subjects).await;
    let (sink, rx) = UsageSink::bounded(n + 1, usize::MAX / 2);
    let totals = Arc::new(Mutex::new(publisher::Spend::default()));
    let task = publisher::spawn(
        client.clone(),
        subjects.clone(),
        rx,
        totals,
        Durability::JetStream { ensure: None },
    );
    let events: Vec<_> = (0..n).map(event).collect();
    let began = Instant::now();
    for e in events {
        sink.record(e);
    }
    sink.flush().await;
    let took = began.elapsed();
    line("publisher", n, took, stored(&js, &subjects).await);
    drop(sink);
    let _ = task.await;

    fresh_stream(&js, &subjects).await;
    let m = (n / 10).max(1);
    let began = Instant::now();
    for i in 0..m {
        let e = event(i);
        js.send_publish(
            subjects.usage(&e.model_group),
            jetstream::message::PublishMessage::build()
                .payload(serde_json::to_vec(&e).unwrap().into())
                .message_id(&e.job_id),
        )
        .await
        .expect("published")
        .await
        .expect("acknowledged");
    }
    line(
        "one at a time",
        m,
        began.elapsed(),
        stored(&js, &subjects).await,
    );

    fresh_stream(&js, &subjects).await;
    let began = Instant::now();
    for i in 0..n {
        let e = event(i);
        client
            .publish(
                subjects.usage(&e.model_group),
                serde_json::to_vec(&e).unwrap().into(),
            )
            .await
            .expect("published");
    }
    client.flush().await.expect("flushed");
    let took = began.elapsed();
    // Core publishes are stored a moment later, if at all: wait until the count settles.
    let mut count = 0;
    for _ in 0..100 {
        let now = stored(&js, &subjects).await;
        if now == n as u64 || (now == count && now > 0) {
            count = now;
            break;
        }
        count = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    line("core NATS", n, took, count);
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke {
        3_000
    } else {
        std::env::var("LLMBUS_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    };
    let store = tempfile::tempdir().expect("a temporary JetStream store");
    let nats = (0..5)
        .find_map(|_| LocalNats::start(free_port().ok()?, store.path()).ok())
        .expect("nats-server starts (is it on PATH?)");
    println!(
        "llmbus usage store benchmark{}: {n} events of ~{} bytes, nats-server with JetStream \
         (file storage) on loopback",
        if smoke { " (smoke pass)" } else { "" },
        serde_json::to_vec(&event(0)).unwrap().len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run(nats.url(), n));
}
