//! Usage events, durable: every job (success or failure) publishes one event on
//! `llm.usage.<model_group>` with the fields of `schemas/usage-event.json`; the `LLM_USAGE`
//! stream is created idempotently at start-up and its retention follows the config without
//! losing events; a worker without JetStream still serves; and the spend aggregators count
//! every event exactly once however many run at once and across restarts.
//!
//! Each test runs against every nats-server binary found (`support::nats_binaries`): Debian's
//! 2.9 and, where installed, the current 2.1x.

use crate::support;

use std::{collections::HashMap, time::Duration};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::PATIENCE,
    nats_binaries::{Binary, Server, binaries},
};
use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use futures::StreamExt;
use llmbus::{
    Worker,
    client::{LlmClient, Reply},
    cluster::lease,
    config::Config,
    usage::{
        UsageEvent,
        aggregator::{self, Aggregator},
        report::{self, SpendReport},
        spend, stream,
    },
    wire::{Subjects, headers},
};
use serde_json::json;

const DAY: Duration = Duration::from_secs(86_400);

fn config(fake: &FakeProvider, extra: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: demo
    litellm_params: {{model: mock/demo, mock_response: "hello from the mock"}}
  - model_name: echo
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {}
      api_key: sk-test
    model_info: {{id: echo-1}}
router_settings:
  num_retries: 0
{extra}
"#,
        fake.url()
    )
}

async fn worker(server: &Server, yaml: &str) -> Worker {
    let loaded = Config::from_yaml(yaml, "test.yaml").expect("test config loads");
    Worker::start(&loaded.config, server.client().await)
        .await
        .expect("worker starts")
}

async fn complete(client: &LlmClient, headers: HeaderMap, body: serde_json::Value) -> Reply {
    client
        .complete(headers, Bytes::from(body.to_string()), PATIENCE)
        .await
        .expect("a reply")
}

/// The next `n` usage events on `sub`, by job id.
async fn events(sub: &mut async_nats::Subscriber, n: usize) -> HashMap<String, UsageEvent> {
    let mut out = HashMap::new();
    while out.len() < n {
        let msg = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("a usage event in time")
            .expect("subscription open");
        let e: UsageEvent = serde_json::from_slice(&msg.payload).expect("a usage event");
        assert_eq!(msg.subject.as_str(), format!("llm.usage.{}", e.model_group));
        out.insert(e.job_id.clone(), e);
    }
    out
}

async fn stream_messages(js: &jetstream::Context) -> u64 {
    js.get_stream(Subjects::default().usage_stream())
        .await
        .expect("the usage stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}

/// Polls `check` until it holds; panics with `what` after 60 s.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    crate::support::poll::until(Duration::from_secs(60), what, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_publishes_one_usage_event_success_or_failure() {
    for binary in binaries() {
        let server = Server::start(&binary, true);
        let fake = FakeProvider::start().await;
        let w = worker(&server, &config(&fake, "")).await;
        let nats = server.client().await;
        let mut sub = nats.subscribe("llm.usage.>").await.unwrap();
        nats.flush().await.unwrap();
        let client = LlmClient::new(server.client().await, "llm");

        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(headers::TRACEPARENT, traceparent);
        h.insert(headers::TAGS, "eu,batch");
        let ok = complete(
            &client,
            h,
            json!({"model": "echo", "user": "alice",
                   "messages": [{"role": "user", "content": "price me"}]}),
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.json());
        let (_, sentinel) = client
            .stream(
                HeaderMap::new(),
                Bytes::from(
                    json!({"model": "echo", "stream": true,
                           "messages": [{"role": "user", "content": "stream me please"}]})
                    .to_string(),
                ),
                PATIENCE,
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(sentinel.status, 200);
        let unknown = complete(
            &client,
            HeaderMap::new(),
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(unknown.status, 404);
        fake.push(Fault::status(429));
        let limited = complete(
            &client,
            HeaderMap::new(),
            json!({"model": "echo", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(limited.status, 429, "{}", limited.json());
        let mock = complete(
            &client,
            HeaderMap::new(),
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(mock.status, 200);

        let all = events(&mut sub, 5).await;
        let job = |r: &Reply| r.header(headers::JOB_ID).expect("a job id").to_string();

        let e = &all[&job(&ok)];
        let usage = &ok.json()["usage"];
        assert_eq!(e.status, 200);
        assert_eq!(e.model_group, "echo");
        assert_eq!(e.deployment.as_deref(), Some("echo-1"));
        assert_eq!(e.provider.as_deref(), Some("openai"));
        assert_eq!(e.model.as_deref(), Some("openai/gpt-4o-mini"));
        assert_eq!(e.user.as_deref(), Some("alice"));
        assert_eq!(e.tags, ["eu", "batch"]);
        assert_eq!(e.traceparent.as_deref(), Some(traceparent));
        assert_eq!(e.prompt_tokens, usage["prompt_tokens"].as_u64().unwrap());
        assert_eq!(
            e.completion_tokens,
            usage["completion_tokens"].as_u64().unwrap()
        );
        let header_cost: f64 = ok.header(headers::COST_USD).unwrap().parse().unwrap();
        assert!(e.cost_usd > 0.0 && (e.cost_usd - header_cost).abs() < 1e-15);
        // gpt-4o-mini: $0.15/M in, $0.60/M out.
        let expected = e.prompt_tokens as f64 * 0.15e-6 + e.completion_tokens as f64 * 0.6e-6;
        assert!(
            (e.cost_usd - expected).abs() < 1e-12,
            "{} vs {expected}",
            e.cost_usd
        );
        assert!(e.latency_ms > 0.0);
        assert_eq!(
            (e.ttft_ms, e.stream, e.error_class.as_deref()),
            (None, false, None)
        );
        assert_eq!(e.attempts, 1);
        assert!(e.timestamp_ms > 1_700_000_000_000);

        let e = &all[&job(&sentinel)];
        assert_eq!((e.status, e.stream), (200, true));
        let ttft = e.ttft_ms.expect("a stream has a time to first token");
        assert!(
            ttft > 0.0 && ttft <= e.latency_ms,
            "{ttft} vs {}",
            e.latency_ms
        );
        assert!(e.completion_tokens > 0 && e.cost_usd > 0.0);

        let e = &all[&job(&unknown)];
        assert_eq!(e.status, 404);
        assert_eq!(e.model_group, "nope");
        assert_eq!(e.error_class.as_deref(), Some("model_not_found"));
        assert_eq!((e.deployment.as_deref(), e.cost_usd), (None, 0.0));

        let e = &all[&job(&limited)];
        assert_eq!(e.status, 429);
        assert_eq!(e.deployment.as_deref(), Some("echo-1"));
        assert_eq!(e.error_class.as_deref(), Some("rate_limit_error"));
        assert_eq!(e.cost_usd, 0.0);

        let e = &all[&job(&mock)];
        assert_eq!((e.provider.as_deref(), e.cost_usd), (Some("mock"), 0.0));

        // The stream keeps all five.
        let js = jetstream::new(nats.clone());
        eventually("five events in LLM_USAGE", || async {
            stream_messages(&js).await == 5
        })
        .await;
        w.stop().await;
        eprintln!("ok on nats-server {}", server.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_stream_is_created_once_and_its_retention_follows_the_config() {
    for binary in binaries() {
        let server = Server::start(&binary, true);
        let fake = FakeProvider::start().await;
        let nats = server.client().await;
        let js = jetstream::new(nats.clone());

        let a = worker(&server, &config(&fake, "")).await;
        let mut s = js
            .get_stream(Subjects::default().usage_stream())
            .await
            .expect("created at start-up");
        let info = s.info().await.unwrap().clone();
        assert_eq!(info.config.subjects, ["llm.usage.>"]);
        assert_eq!(info.config.storage, jetstream::stream::StorageType::File);
        assert_eq!(info.config.max_age, 30 * DAY);
        let created = info.created;

        // An event, and a setting an operator changed by hand.
        let client = LlmClient::new(server.client().await, "llm");
        let r = complete(
            &client,
            HeaderMap::new(),
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(r.status, 200);
        eventually("the event stored", || async {
            stream_messages(&js).await == 1
        })
        .await;
        js.update_stream(jetstream::stream::Config {
            max_bytes: 64 << 20,
            ..info.config.clone()
        })
        .await
        .expect("an operator's change");

        // Same settings: nothing changes. Another retention: updated in place.
        let b = worker(&server, &config(&fake, "")).await;
        let c = worker(
            &server,
            &config(&fake, "llmbus:\n  usage_retention_days: 7"),
        )
        .await;
        let info = js
            .get_stream(Subjects::default().usage_stream())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.created, created, "never recreated");
        assert_eq!(info.config.max_age, 7 * DAY);
        assert_eq!(
            info.config.max_bytes,
            64 << 20,
            "the operator's change is kept"
        );
        assert_eq!(info.state.messages, 1, "no event lost");
        assert_eq!(
            stream::ensure(
                &js,
                &Subjects::default(),
                7 * DAY,
                llmbus::cluster::Replicas::Auto
            )
            .await
            .unwrap(),
            stream::Ensured::Existing
        );
        for w in [a, b, c] {
            w.stop().await;
        }

        // A stream of that name that captures something else is left alone, and the worker
        // still starts.
        js.delete_stream(Subjects::default().usage_stream())
            .await
            .unwrap();
        js.create_stream(jetstream::stream::Config {
            name: Subjects::default().usage_stream(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let d = worker(&server, &config(&fake, "")).await;
        let info = js
            .get_stream(Subjects::default().usage_stream())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.subjects, ["other.>"]);
        match stream::ensure(
            &js,
            &Subjects::default(),
            30 * DAY,
            llmbus::cluster::Replicas::Auto,
        )
        .await
        .unwrap()
        {
            stream::Ensured::LeftAlone(why) => assert!(why.contains("other.>"), "{why}"),
            other => panic!("{other:?}"),
        }
        d.stop().await;
        eprintln!("ok on nats-server {}", server.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_jetstream_a_worker_serves_and_events_flow_on_core_nats() {
    for binary in binaries() {
        let server = Server::start(&binary, false);
        let fake = FakeProvider::start().await;
        let w = worker(&server, &config(&fake, "")).await;
        let nats = server.client().await;
        let mut sub = nats.subscribe("llm.usage.demo").await.unwrap();
        nats.flush().await.unwrap();
        let client = LlmClient::new(server.client().await, "llm");
        let r = complete(
            &client,
            HeaderMap::new(),
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(r.status, 200);
        let all = events(&mut sub, 1).await;
        assert!(all.contains_key(r.header(headers::JOB_ID).unwrap()));
        w.stop().await;
    }
}

/// The usage events `LLM_USAGE` holds, by job id (read with an ephemeral consumer); panics
/// when a job's event is stored twice.
async fn stored_events(js: &jetstream::Context) -> HashMap<String, UsageEvent> {
    let mut stream = js
        .get_stream(Subjects::default().usage_stream())
        .await
        .expect("the usage stream");
    let total = stream.info().await.expect("stream info").state.messages as usize;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("a consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = HashMap::new();
    for _ in 0..total {
        let msg = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .expect("the stored events in time")
            .expect("the consumer open")
            .expect("a message");
        let e: UsageEvent = serde_json::from_slice(&msg.payload).expect("a usage event");
        let info = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        if let Some(first) = out.insert(e.job_id.clone(), e.clone()) {
            panic!("a job's event is stored twice (seq {info}):\n{first:?}\n{e:?}");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_are_retried_until_the_stream_stores_them() {
    for binary in binaries() {
        let server = Server::start(&binary, true);
        let fake = FakeProvider::start().await;
        let w = worker(&server, &config(&fake, "")).await;
        let nats = server.client().await;
        let js = jetstream::new(nats.clone());
        // The stream goes away (an operator's mistake, a JetStream hiccup): the jobs still
        // answer, and their events wait.
        js.delete_stream(Subjects::default().usage_stream())
            .await
            .unwrap();
        let client = LlmClient::new(server.client().await, "llm");
        let mut jobs = Vec::new();
        for _ in 0..10 {
            let r = complete(
                &client,
                HeaderMap::new(),
                json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]}),
            )
            .await;
            assert_eq!(r.status, 200);
            jobs.push(r.header(headers::JOB_ID).unwrap().to_string());
        }
        // The stream is back (created here, or by the worker itself, whichever comes first).
        stream::ensure(
            &js,
            &Subjects::default(),
            30 * DAY,
            llmbus::cluster::Replicas::Auto,
        )
        .await
        .unwrap();
        eventually("the ten events stored after the hiccup", || async {
            stream_messages(&js).await >= 10
        })
        .await;
        let stored = stored_events(&js).await;
        let mut ids: Vec<_> = stored.keys().cloned().collect();
        ids.sort();
        jobs.sort();
        assert_eq!(ids, jobs, "each job's event, once");
        w.stop().await;
        eprintln!("ok on nats-server {}", server.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_outlive_a_nats_server_restarted_without_jetstream() {
    let fake = FakeProvider::start().await;
    let mut nats_server = support::nats_server::NatsServer::start();
    let loaded = Config::from_yaml(&config(&fake, ""), "test.yaml").expect("test config loads");
    let w = Worker::start(&loaded.config, nats_server.client().await)
        .await
        .expect("worker starts");
    let demo = || json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]});
    let client = LlmClient::new(nats_server.client().await, "llm");
    let first = complete(&client, HeaderMap::new(), demo()).await;
    assert_eq!(first.status, 200);

    // The server comes back without JetStream: jobs are served, their events cannot be stored.
    nats_server.set_jetstream(false);
    tokio::task::block_in_place(|| {
        nats_server.kill();
        nats_server.restart();
    });
    let client = LlmClient::new(nats_server.client().await, "llm");
    let mut jobs = vec![first.header(headers::JOB_ID).unwrap().to_string()];
    while jobs.len() < 6 {
        // Until the worker has reconnected, a request may find no responder: ask again.
        let r = client
            .complete(HeaderMap::new(), Bytes::from(demo().to_string()), PATIENCE)
            .await;
        match r {
            Ok(r) if r.status == 200 => jobs.push(r.header(headers::JOB_ID).unwrap().to_string()),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    // JetStream is back, with the stream on disk: every event gets stored.
    nats_server.set_jetstream(true);
    tokio::task::block_in_place(|| {
        nats_server.kill();
        nats_server.restart();
    });
    let nats = nats_server.client().await;
    let js = jetstream::new(nats.clone());
    eventually("the six events stored", || async {
        match js.get_stream(Subjects::default().usage_stream()).await {
            Ok(mut s) => s.info().await.is_ok_and(|i| i.state.messages >= 6),
            Err(_) => false,
        }
    })
    .await;
    let stored = stored_events(&js).await;
    let mut ids: Vec<_> = stored.keys().cloned().collect();
    ids.sort();
    jobs.sort();
    assert_eq!(ids, jobs, "each job's event, once");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_panics_runs_out_of_time_or_is_cancelled_still_has_its_usage_event() {
    let server = Server::start(&binaries()[0], true);
    let fake = FakeProvider::start().await;
    let extra = r#"  - model_name: crash
    litellm_params: {model: openai/x, mock_response: "llmbus.panic"}
    model_info: {id: crash-1}
"#;
    let yaml =
        config(&fake, "").replacen("router_settings:", &format!("{extra}router_settings:"), 1);
    let w = worker(&server, &yaml).await;
    let nats = server.client().await;
    let js = jetstream::new(nats.clone());
    let client = LlmClient::new(server.client().await, "llm");
    let crash = complete(
        &client,
        HeaderMap::new(),
        json!({"model": "crash", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(crash.status, 500, "{}", crash.json());
    fake.push(support::fake_provider::Fault::Delay(Duration::from_secs(
        30,
    )));
    let mut h = HeaderMap::new();
    h.insert(headers::TIMEOUT_MS, "300");
    let late = complete(
        &client,
        h,
        json!({"model": "echo", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(late.status, 504, "{}", late.json());
    // Cancelled by its requester while the upstream call runs: no answer, an event (499).
    fake.push(support::fake_provider::Fault::Delay(Duration::from_secs(
        30,
    )));
    let inbox = nats.new_inbox();
    let _replies = nats.subscribe(inbox.clone()).await.unwrap();
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "x"}]});
    nats.publish_with_reply(
        Subjects::default().completion(),
        inbox.clone(),
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap();
    fake.wait_for_requests(2, PATIENCE).await;
    nats.publish(Subjects::default().cancel(), Bytes::from(inbox))
        .await
        .unwrap();
    eventually("three events stored", || async {
        stream_messages(&js).await >= 3
    })
    .await;
    let stored = stored_events(&js).await;
    let e = &stored[crash.header(headers::JOB_ID).unwrap()];
    assert_eq!(e.status, 500);
    assert_eq!(e.model_group, "crash");
    assert_eq!(e.deployment.as_deref(), Some("crash-1"));
    assert_eq!(e.error_class.as_deref(), Some("panic"));
    let e = &stored[late.header(headers::JOB_ID).unwrap()];
    assert_eq!((e.status, e.deployment.as_deref()), (504, Some("echo-1")));
    assert_eq!(e.error_class.as_deref(), Some("timeout_error"));
    let cancelled: Vec<_> = stored.values().filter(|e| e.status == 499).collect();
    assert_eq!(cancelled.len(), 1, "{stored:?}");
    assert_eq!(cancelled[0].deployment.as_deref(), Some("echo-1"));
    assert_eq!(cancelled[0].error_class.as_deref(), Some("cancelled"));
    assert_eq!(stored.len(), 3);
    w.stop().await;
}

fn synthetic(i: u64, day: u64) -> UsageEvent {
    UsageEvent {
        job_id: format!("job-{day}-{i}"),
        timestamp_ms: day * DAY.as_millis() as u64 + i,
        model_group: if i.is_multiple_of(3) { "g-a" } else { "g-b" }.into(),
        deployment: Some(format!("d-{}", i % 2)),
        key: Some(format!("key-{}", i % 4)),
        team: i.is_multiple_of(5).then(|| "ml".to_string()),
        prompt_tokens: 10,
        completion_tokens: i % 7,
        // Binary fractions: sums are exact, so "exactly once" is an equality.
        cost_usd: 0.0078125,
        status: if i % 10 == 9 { 503 } else { 200 },
        ..Default::default()
    }
}

async fn publish(nats: &async_nats::Client, events: impl IntoIterator<Item = UsageEvent>) {
    let js = jetstream::new(nats.clone());
    for e in events {
        js.publish(
            Subjects::default().usage(&e.model_group),
            serde_json::to_vec(&e).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

async fn report(nats: &async_nats::Client) -> SpendReport {
    report::spend(nats.clone(), &Subjects::default(), None)
        .await
        .unwrap_or_default()
}

/// A private server running `binary` with the `LLM_USAGE` stream in place, a client and its
/// JetStream context.
async fn with_usage_stream(binary: &Binary) -> (Server, async_nats::Client, jetstream::Context) {
    let server = Server::start(binary, true);
    let nats = server.client().await;
    let js = jetstream::new(nats.clone());
    stream::ensure(
        &js,
        &Subjects::default(),
        30 * DAY,
        llmbus::cluster::Replicas::Auto,
    )
    .await
    .unwrap();
    (server, nats, js)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregators_count_every_event_exactly_once_across_races_and_restarts() {
    for binary in binaries() {
        let (server, nats, js) = with_usage_stream(&binary).await;
        // Three aggregators on their own connections, racing over the same events (no
        // lease: every one of them reads and writes).
        let mut racers = Vec::new();
        for _ in 0..3 {
            racers.push(tokio::spawn(aggregator::follow(
                server.client().await,
                Subjects::default(),
                llmbus::cluster::Replicas::Auto,
            )));
        }
        let day1 = 20_000; // 2024-10-04
        let day2 = day1 + 1;
        publish(&nats, (0..200).map(|i| synthetic(i, day1))).await;
        publish(&nats, (0..100).map(|i| synthetic(i, day2))).await;
        eventually("300 events aggregated", || async {
            let r = report(&nats).await;
            r.pending() == 0 && r.aggregated_through == 300
        })
        .await;
        let r = report(&nats).await;
        assert_eq!(r.spend.total.requests, 300);
        assert_eq!(r.spend.total.cost_usd, 300.0 * 0.0078125);
        assert_eq!(r.spend.total.failures, 20 + 10);
        assert_eq!(r.by_day.len(), 2);
        assert_eq!(
            (r.by_day[0].day.as_str(), r.by_day[0].tally.requests),
            ("2024-10-04", 200)
        );
        assert_eq!(r.by_day[1].tally.requests, 100);
        assert_eq!(r.spend.by_model_group["g-a"].requests, 67 + 34);
        assert_eq!(r.spend.by_key.len(), 4);
        assert_eq!(r.spend.by_team["ml"].requests, 40 + 20);
        let completion: u64 = (0..200).chain(0..100).map(|i| i % 7).sum();
        assert_eq!(r.spend.total.completion_tokens, completion);

        // Every aggregator stops; new events; new aggregators (as workers run them, under the
        // lease) go on from the cursor, not from the beginning of the stream.
        for t in racers {
            t.abort();
        }
        publish(&nats, (200..250).map(|i| synthetic(i, day1))).await;
        let mut leased = Vec::new();
        for _ in 0..2 {
            leased.push(Aggregator::spawn(
                server.client().await,
                &Subjects::default(),
                llmbus::cluster::Replicas::Auto,
            ));
        }
        eventually("350 events aggregated", || async {
            report(&nats).await.aggregated_through == 350
        })
        .await;
        let r = report(&nats).await;
        assert_eq!(r.spend.total.requests, 350);
        assert_eq!(r.spend.total.cost_usd, 350.0 * 0.0078125);
        assert_eq!(r.by_day[0].tally.requests, 250);
        // --since reads only the days from then on.
        let since = report::parse_since("2024-10-05", 0).unwrap();
        let r = report::spend(nats.clone(), &Subjects::default(), Some(since))
            .await
            .unwrap();
        assert_eq!(r.spend.total.requests, 100);
        // The day documents are what the KV holds, with their watermarks.
        let kv = spend::open(&js, "LLM_SPEND")
            .await
            .unwrap()
            .expect("the bucket");
        let (doc, _) = spend::read::<spend::DayDoc>(&kv, &spend::day_key("2024-10-04"))
            .await
            .unwrap();
        assert_eq!(doc.spend.total.requests, 250);
        assert!(doc.applied_through >= 300);
        drop(leased);
        eprintln!("ok on nats-server {}", server.version);
    }
}

/// The lease key's holder, when someone holds it.
async fn lease_holder(kv: &jetstream::kv::Store) -> Option<String> {
    let entry = kv.entry(aggregator::LEASE_KEY).await.unwrap()?;
    let doc: lease::LeaseDoc = serde_json::from_slice(&entry.value).unwrap();
    Some(doc.holder).filter(|h| !h.is_empty())
}

/// Consumers on `LLM_USAGE`: an aggregator reading it has one.
async fn readers(js: &jetstream::Context) -> usize {
    let mut s = js
        .get_stream(Subjects::default().usage_stream())
        .await
        .unwrap();
    s.info().await.unwrap().state.consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_aggregator_reads_the_stream_at_a_time_and_another_takes_over() {
    // A short ttl so that a holder that dies is outlived quickly (long enough that a renewal
    // is never late on a busy machine).
    const TTL: Duration = Duration::from_secs(6);
    for binary in binaries() {
        let (server, nats, js) = with_usage_stream(&binary).await;
        let mut aggregators = Vec::new();
        for _ in 0..3 {
            aggregators.push(Aggregator::spawn_with_ttl(
                server.client().await,
                &Subjects::default(),
                llmbus::cluster::Replicas::Auto,
                TTL,
            ));
        }
        let day = 20_100;
        publish(&nats, (0..100).map(|i| synthetic(i, day))).await;
        eventually("100 events aggregated", || async {
            report(&nats).await.aggregated_through == 100
        })
        .await;
        let kv = spend::open(&js, "LLM_SPEND")
            .await
            .unwrap()
            .expect("the bucket");
        let first = lease_holder(&kv).await.expect("a holder");
        // Three aggregators, one reader of the stream, through a few renewals.
        for _ in 0..4 {
            assert_eq!(readers(&js).await, 1, "{}", server.version);
            assert_eq!(lease_holder(&kv).await.as_deref(), Some(first.as_str()));
            tokio::time::sleep(TTL / 3).await;
        }

        // The holder dies without a word (its task aborted): another takes over after the
        // ttl and counts what came meanwhile.
        let holder = aggregators
            .iter()
            .position(|a| a.name() == first)
            .expect("one of them");
        drop(aggregators.remove(holder));
        publish(&nats, (100..150).map(|i| synthetic(i, day))).await;
        eventually("150 events aggregated", || async {
            report(&nats).await.aggregated_through == 150
        })
        .await;
        let second = lease_holder(&kv).await.expect("a holder");
        assert_ne!(second, first);

        // The new holder stops cleanly: it gives the lease back, and the last one takes it.
        let holder = aggregators
            .iter()
            .position(|a| a.name() == second)
            .expect("one of them");
        aggregators
            .remove(holder)
            .stop(Duration::from_secs(10))
            .await;
        // Given back (the last one may have taken it already).
        assert_ne!(lease_holder(&kv).await.as_deref(), Some(second.as_str()));
        let last = aggregators[0].name().to_owned();
        eventually("the last aggregator holds the lease", || async {
            lease_holder(&kv).await.as_deref() == Some(last.as_str())
        })
        .await;
        publish(&nats, (150..160).map(|i| synthetic(i, day))).await;
        eventually("160 events aggregated", || async {
            report(&nats).await.aggregated_through == 160
        })
        .await;
        let r = report(&nats).await;
        assert_eq!(r.spend.total.requests, 160, "each event counted once");
        eprintln!("ok on nats-server {}", server.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_on_one_server_keep_their_usage_and_spend_apart() {
    for binary in binaries() {
        let server = Server::start(&binary, true);
        let fake = FakeProvider::start().await;
        let default = worker(&server, &config(&fake, "")).await;
        let acme = worker(&server, &config(&fake, "llmbus:\n  subject_prefix: acme\n")).await;
        let nats = server.client().await;
        let js = jetstream::new(nats.clone());
        for (prefix, jobs) in [("llm", 3), ("acme", 5)] {
            let client = LlmClient::new(server.client().await, prefix);
            for _ in 0..jobs {
                let r = complete(
                    &client,
                    HeaderMap::new(),
                    json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]}),
                )
                .await;
                assert_eq!(r.status, 200, "{prefix}: {}", r.json());
            }
        }
        for (subjects, jobs) in [(Subjects::default(), 3), (Subjects::new("acme"), 5)] {
            let name = subjects.usage_stream();
            let mut s = js.get_stream(&name).await.expect("created at start-up");
            let config = s.info().await.unwrap().config.clone();
            assert_eq!(config.subjects, [subjects.usage_all()], "{name}");
            eventually("each installation's spend counts its own jobs", || async {
                report::spend(nats.clone(), &subjects, None)
                    .await
                    .is_ok_and(|r| r.pending() == 0 && r.spend.total.requests == jobs)
            })
            .await;
            assert!(
                spend::open(&js, &subjects.spend_bucket())
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert_eq!(
            Subjects::new("acme").usage_stream(),
            "ACME_USAGE",
            "the default installation's names stay LLM_USAGE and LLM_SPEND"
        );
        acme.stop().await;
        default.stop().await;
        eprintln!("ok on nats-server {}", server.version);
    }
}

/// What a `kill -9` of a worker under load loses: closed-loop load on a worker process, which
/// is killed with SIGKILL once it has answered a few thousand jobs; then the events stored in
/// `LLM_USAGE` are counted against the jobs answered. Figures are printed, never asserted
/// (they depend on the machine); what is asserted is that no event is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_loses_only_the_events_not_yet_stored() {
    use std::sync::{Arc, Mutex};
    const CLIENTS: usize = 32;
    const BEFORE_KILL: usize = 3_000;
    let nats_server = support::nats_server::NatsServer::start();
    let yaml = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, \
                mock_response: \"hello from the mock\"}\n";
    let w = support::worker_process::WorkerProcess::start(
        "victim",
        &nats_server.url(),
        yaml,
        Default::default(),
    )
    .await;
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let (enough_tx, mut enough) = tokio::sync::watch::channel(0usize);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::time::Instant::now();
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let client = LlmClient::new(nats_server.client().await, "llm");
        let (answered, stop, enough_tx) = (answered.clone(), stop.clone(), enough_tx.clone());
        load.push(tokio::spawn(async move {
            let body = Bytes::from(
                json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]})
                    .to_string(),
            );
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // After the kill nobody answers: a short patience ends the loop quickly.
                let Ok(r) = client
                    .complete(HeaderMap::new(), body.clone(), Duration::from_secs(5))
                    .await
                else {
                    continue;
                };
                if r.status == 200 {
                    let mut a = answered.lock().unwrap();
                    a.push(r.header(headers::JOB_ID).unwrap().to_string());
                    enough_tx.send_replace(a.len());
                }
            }
        }));
    }
    enough
        .wait_for(|n| *n >= BEFORE_KILL)
        .await
        .expect("the load runs");
    let status = std::process::Command::new("kill")
        .args(["-9", &w.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let killed_at = started.elapsed();
    w.wait_exit(PATIENCE).await.expect("the worker is gone");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let js = jetstream::new(nats_server.client().await);
    let stored = stored_events(&js).await;
    let lost = answered.iter().filter(|j| !stored.contains_key(*j)).count();
    let unanswered = stored.keys().filter(|j| !answered.contains(*j)).count();
    let rate = answered.len() as f64 / killed_at.as_secs_f64();
    eprintln!(
        "kill -9 under load ({CLIENTS} clients, {rate:.0} jobs/s): {} jobs answered, {} events \
         stored; {lost} answered jobs without a stored event ({:.2} %, {:.0} ms of load); {} \
         events of jobs whose answer was lost in the kill",
        answered.len(),
        stored.len(),
        lost as f64 * 100.0 / answered.len() as f64,
        lost as f64 / rate * 1000.0,
        unanswered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_model_does_not_hold_up_the_events_after_it() {
    // A body that is not JSON names no model group: its event went to `llm.usage.`, which no
    // stream captures, and being retried at the head of the queue it held every later event.
    let server = Server::start(&binaries()[0], true);
    let fake = FakeProvider::start().await;
    let w = worker(&server, &config(&fake, "")).await;
    let js = jetstream::new(server.client().await);
    let client = LlmClient::new(server.client().await, "llm");
    let bad = client
        .complete(HeaderMap::new(), Bytes::from_static(b"{not json"), PATIENCE)
        .await
        .expect("a reply");
    assert_eq!(bad.status, 400);
    let r = complete(
        &client,
        HeaderMap::new(),
        json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let job = r.header(headers::JOB_ID).unwrap().to_string();
    eventually("the good job's event stored", || async {
        stream_messages(&js).await >= 2
    })
    .await;
    let stored = stored_events(&js).await;
    assert!(stored.contains_key(&job), "{stored:?}");
    w.stop().await;
}
