//! Chaos, in short: real `llmbus serve` processes behind a real `llmbus front`, on a private
//! nats-server, against the fake provider (the harness is `support/chaos.rs`; the long run
//! with every fault is `cargo bench --bench chaos`).
//!
//! - A request to `llmbus front` whose worker is killed (`kill -9`) before anything of the job
//!   reached the caller is sent again and answered: plain, and streamed; a stream already under
//!   way is not sent again, it ends with a `worker_lost` error event instead of waiting out its
//!   deadline.
//! - Under steady mixed load with three workers, one worker killed and the provider answering
//!   garbage for a while: no job is answered twice, every request gets its answer or a clear
//!   error by its deadline (except those in flight on the killed worker, counted), capacity is
//!   whole afterwards, and usage is counted once per answered request.

use std::time::{Duration, Instant};

use crate::support::{
    chaos::{self, Cluster, Kind, LIMITED_PARALLEL, Load, Verdict},
    fake_provider::Fault,
};
use futures::StreamExt;
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

fn chat(stream: bool, text: &str) -> Value {
    json!({"model": "plain", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

fn post(http: &reqwest::Client, c: &Cluster, body: &Value) -> reqwest::RequestBuilder {
    http.post(format!("{}/v1/chat/completions", c.base))
        .header("Llm-Timeout-Ms", "30000")
        .json(body)
}

/// Sends `body` while the only worker holds it against a provider that never answers, starts
/// another worker, kills the first: returns the HTTP status and body.
async fn ask_and_kill(c: &mut Cluster, http: &reqwest::Client, body: Value) -> (u16, String) {
    let before = c.fake.request_count();
    c.fake.push(Fault::NeverEnding { after_chunks: 0 });
    let ask = tokio::spawn(post(http, c, &body).send());
    c.fake.wait_for_requests(before + 1, PATIENCE).await;
    c.add_worker().await;
    c.kill_worker();
    let response = ask.await.unwrap().expect("an HTTP answer");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_before_answering_is_sent_again() {
    let mut c = Cluster::start(1).await;
    let http = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();

    // Plain: the job is sent again and the second worker answers it.
    let (status, body) = ask_and_kill(&mut c, &http, chat(false, "plain question")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "echo: plain question"
    );
    assert_eq!(c.fake.request_count(), 2, "one call per worker");

    // Streamed, before the first chunk: the same.
    let (status, body) = ask_and_kill(&mut c, &http, chat(true, "streamed question")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");
    let content: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "echo: streamed question");
    assert_eq!(c.fake.request_count(), 4);

    // Streamed, after chunks reached the caller: never sent again; a clear error ends it.
    let before = c.fake.request_count();
    c.fake.push(Fault::NeverEnding { after_chunks: 3 });
    let response = post(&http, &c, &chat(true, "one two three four five"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"content\":\"echo") {
        let chunk = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the first chunks")
            .expect("the stream goes on")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    c.add_worker().await;
    c.kill_worker();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("the stream ends well before its deadline")
    {
        match chunk {
            Ok(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => break,
        }
    }
    assert!(seen.contains("worker_lost"), "{seen}");
    assert!(!seen.contains("[DONE]"), "{seen}");
    assert_eq!(
        c.fake.request_count(),
        before + 1,
        "a stream under way is not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_worker_killed_and_garbage_from_the_provider() {
    let mut c = Cluster::start(3).await;
    c.fake.set_default(Fault::Delay(Duration::from_millis(150)));
    let load = Load::start(&c, 6).await;
    let side = load.nats.clone();

    // 0: steady.
    load.wait_for(30).await;
    // 1: a worker killed with jobs in flight: the next 6 calls (one per requester) take 2 s,
    // and the worker holding the most of them is killed once they all reached the provider.
    load.set_phase(1);
    let before = c.fake.request_count();
    for _ in 0..6 {
        c.fake.push(Fault::Delay(Duration::from_secs(2)));
    }
    c.fake.wait_for_requests(before + 6, PATIENCE).await;
    let held = c.kill_busiest_worker().await;
    let killed_at = Instant::now();
    assert!(
        held >= 2.0,
        "the busiest of 3 workers holds 2 of 6 jobs or more: {held}"
    );
    load.wait_for(30).await;
    // 2: the provider answers garbage (truncated JSON) to the next 8 calls.
    load.set_phase(2);
    let before = c.fake.request_count();
    for _ in 0..8 {
        c.fake.push(Fault::MalformedJson);
    }
    c.fake.wait_for_requests(before + 16, PATIENCE).await;
    // 3: steady again.
    load.set_phase(3);
    load.wait_for(20).await;
    let outcomes = load.stop().await;
    println!(
        "{}",
        chaos::report(&["steady", "kill -9", "garbage", "after"], &outcomes)
    );
    let audit = c.audit(&side, &outcomes).await;
    println!("{audit:?}");

    assert!(
        audit.duplicates.is_empty(),
        "answered twice: {:?}",
        audit.duplicates
    );
    // Every request is answered by its deadline, but those in flight on the killed worker
    // (sent on NATS, or over HTTP before the worker acknowledged them), which includes those
    // routed to it in the instant before the server saw its connection close.
    let in_flight_at_kill = |o: &chaos::Outcome| {
        o.started <= killed_at + Duration::from_secs(1) && killed_at < o.started + chaos::DEADLINE
    };
    let lost: Vec<_> = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Timeout)
        .collect();
    println!("requests lost with the killed worker: {}", lost.len());
    for o in &lost {
        assert!(in_flight_at_kill(o), "a request timed out: {o:?}");
    }
    for o in &outcomes {
        if let Verdict::Error(e) = &o.verdict {
            // A clear error: a status and a code, never a cut transport or a wrong answer.
            assert!(
                e.split(' ')
                    .nth(1)
                    .is_some_and(|code| !matches!(code, "?" | "wrong" | "body" | "stream")),
                "not a clear error: {o:?}"
            );
        }
        if o.phase == 0 && !in_flight_at_kill(o) {
            assert_eq!(o.verdict, Verdict::Ok, "before any fault: {o:?}");
        }
    }
    assert!(
        outcomes
            .iter()
            .any(|o| o.kind == Kind::HttpStream && o.phase == 3 && o.verdict == Verdict::Ok)
    );
    // Capacity is whole.
    assert!(
        audit.in_flight.iter().all(|n| *n == 0.0),
        "in flight at rest: {:?}",
        audit.in_flight
    );
    assert_eq!(
        audit.burst_ok,
        2 * LIMITED_PARALLEL,
        "the limited deployment's full parallelism"
    );
    // Usage: once per answered request.
    assert!(
        audit.usage_twice.is_empty(),
        "usage counted twice: {:?}",
        audit.usage_twice
    );
    // A kill -9 loses the events the killed worker had not stored yet: those of the jobs it
    // answered in its last drain interval (20 ms, plus an ack round trip; README, *Usage*).
    // Only those may be missing; on a loaded machine "just before" is given a second.
    for id in &audit.usage_missing {
        let o = outcomes.iter().find(|o| o.id == *id).unwrap();
        let ended = o.started + o.elapsed;
        assert!(
            ended <= killed_at && killed_at - ended < Duration::from_secs(1),
            "usage missing for a request not answered just before the kill: {o:?}"
        );
    }
    let resent = c.front.log().matches("sent a job again").count();
    println!(
        "the killed worker held {held} jobs; the front sent {resent} again; usage events \
         missing (lost with the killed worker) {}",
        audit.usage_missing.len()
    );
}
