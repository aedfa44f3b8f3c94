//! The in-worker HTTP front runs the jobs of the groups its worker serves in process:
//!
//! - no job goes through NATS for them (nothing on `llm.completion`, `llm.embedding` or
//!   `llm.cancel`), and the answers are those of the NATS path (the same front without the
//!   worker's jobs): statuses, routing and rate-limit headers, bodies and SSE events but ids and
//!   timestamps; the key check and errors included;
//! - a client that goes away cancels its job in process: the upstream call stops, the
//!   deployment's capacity comes back, and the job's usage event says it was cancelled (499),
//!   for a stream (its own task) and for a plain answer (run in the connection's task) alike;
//! - the worker's gate admits them: past `max_in_flight` a 503 `worker_busy`;
//! - a group the worker does not serve still goes over NATS, to a worker that serves it.

use std::time::Duration;

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    http_front::{serve_in, stream_past_first_event},
    nats_server::NatsServer,
};
use futures::StreamExt;
use llmbus::{Worker, config::Config, http::HttpServer};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);

fn config(fake: &FakeProvider, group: &str, extra: &str) -> String {
    format!(
        r#"model_list:
  - model_name: {group}
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{}", api_key: sk-up, max_parallel_requests: 1, rpm: 1000}}
    model_info: {{id: {group}-1}}
router_settings:
  num_retries: 0
llmbus:
  metrics_listen: null
{extra}"#,
        fake.url()
    )
}

async fn worker(nats: &NatsServer, yaml: &str) -> Worker {
    let loaded = Config::from_yaml(yaml, "test.yaml").expect("test config loads");
    Worker::start(&loaded.config, nats.client().await)
        .await
        .expect("worker starts")
}

/// The worker's front, serving its groups in process.
async fn local_front(nats: &NatsServer, w: &Worker) -> HttpServer {
    serve_in(
        nats.client().await,
        Default::default(),
        Some(w.local_jobs()),
    )
    .await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// Every job subject a front could publish to, watched on a connection of its own.
async fn watch_jobs(nats: &NatsServer) -> (async_nats::Client, async_nats::Subscriber) {
    let nc = nats.client().await;
    let sub = nc.subscribe("llm.>").await.expect("subscribe");
    nc.flush().await.expect("flush");
    (nc, sub)
}

/// The job subjects seen so far (`llm.completion`, `llm.embedding`, `llm.cancel`).
async fn jobs_seen(sub: &mut async_nats::Subscriber) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        let s = m.subject.to_string();
        if ["llm.completion", "llm.embedding", "llm.cancel"].contains(&s.as_str()) {
            seen.push(s);
        }
    }
    seen
}

fn normalized(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for key in ["id", "created"] {
                    if map.contains_key(key) && !map[key].is_object() {
                        map.insert(key.to_string(), json!("<volatile>"));
                    }
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Status, the headers that do not change from one job to the next, and the body (each SSE
/// event normalized).
async fn answer(r: reqwest::Response) -> (u16, Vec<(String, String)>, Vec<Value>) {
    let status = r.status().as_u16();
    let mut headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            ![
                "date",
                "x-llmbus-job-id",
                "x-llmbus-overhead-ms",
                "content-length",
            ]
            .contains(&k)
                && !k.contains("cost")
                && !k.starts_with("x-ratelimit-remaining")
                && !k.starts_with("x-ratelimit-reset")
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    headers.sort();
    let text = r.text().await.expect("a body");
    let body = if text.starts_with("data: ") || text.starts_with(':') {
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| match d {
                "[DONE]" => json!("[DONE]"),
                d => normalized(serde_json::from_str(d).expect("a JSON event")),
            })
            .collect()
    } else {
        vec![normalized(serde_json::from_str(&text).expect("JSON"))]
    };
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_groups_run_in_process_and_answer_as_over_nats() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let w = worker(
        &nats,
        &config(
            &fake,
            "fake",
            "general_settings:\n  master_key: sk-master\n",
        ),
    )
    .await;
    let local = local_front(&nats, &w).await;
    let over_nats =
        crate::support::http_front::serve(nats.client().await, Default::default()).await;
    let (_nc, mut jobs) = watch_jobs(&nats).await;

    let chat = json!({"model": "fake", "messages": [{"role": "user", "content": "hello there"}]});
    let stream = json!({"model": "fake", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "one two three"}]});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/chat/completions", chat.clone(), "sk-master"),
        ("/v1/chat/completions", stream, "sk-master"),
        ("/v1/chat/completions", chat.clone(), "sk-wrong"),
        (
            "/v1/chat/completions",
            json!({"model": "fake", "messages": []}),
            "sk-master",
        ),
        (
            "/v1/embeddings",
            json!({"model": "fake", "input": ["a b", "c"]}),
            "sk-master",
        ),
    ];
    let mut answers = Vec::new();
    for (path, body, key) in &cases {
        let r = http()
            .post(format!("http://{}{path}", local.addr()))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        answers.push(answer(r).await);
    }
    assert_eq!(
        jobs_seen(&mut jobs).await,
        Vec::<String>::new(),
        "jobs of a group the worker serves do not go through NATS"
    );
    assert_eq!(answers[0].0, 200, "{:?}", answers[0]);
    assert!(
        answers[0]
            .1
            .iter()
            .any(|(k, v)| k == "x-llmbus-deployment" && v == "fake-1")
    );
    assert!(
        answers[0]
            .1
            .iter()
            .any(|(k, _)| k == "x-ratelimit-limit-requests")
    );
    assert_eq!(answers[1].0, 200);
    assert_eq!(answers[1].2.last(), Some(&json!("[DONE]")));
    assert_eq!(answers[2].0, 401, "the key is checked: {:?}", answers[2]);
    assert_eq!(answers[3].0, 400);
    assert_eq!(answers[4].0, 200, "{:?}", answers[4]);

    // The same requests through the NATS path of the front.
    for ((path, body, key), local) in cases.iter().zip(&answers) {
        let r = http()
            .post(format!("http://{}{path}", over_nats.addr()))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(&answer(r).await, local, "{path} {body}");
    }
    assert_eq!(jobs_seen(&mut jobs).await.len(), cases.len());
}

/// The capacity of `fake-1` (one call at a time) is free: a plain request is answered.
async fn capacity_is_back(front: &HttpServer, w: &Worker) {
    let until = tokio::time::Instant::now() + PATIENCE;
    while w.in_flight() > 0 {
        assert!(tokio::time::Instant::now() < until, "the job ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http()
        .post(format!("http://{}/v1/chat/completions", front.addr()))
        .header("llm-timeout-ms", "3000")
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "next"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_in_process_and_capacity_returns() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let w = worker(&nats, &config(&fake, "fake", "")).await;
    let front = local_front(&nats, &w).await;
    let (nc, mut jobs) = watch_jobs(&nats).await;
    let mut usage = nc
        .subscribe(llmbus::wire::Subjects::default().usage_all())
        .await
        .unwrap();
    nc.flush().await.unwrap();

    // Mid-stream: read the first event, then hang up.
    fake.push(Fault::NeverEnding { after_chunks: 2 });
    let body = stream_past_first_event(&format!("http://{}", front.addr())).await;
    assert_eq!(w.in_flight(), 1);
    drop(body);
    // The upstream call stops, the capacity comes back.
    fake.wait_for_cut_bodies(1, PATIENCE).await;
    capacity_is_back(&front, &w).await;

    // Before the first byte of a plain answer.
    fake.push(Fault::Delay(Duration::from_secs(60)));
    let addr = front.addr();
    let request = tokio::spawn(async move {
        http()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "wait"}]}))
            .send()
            .await
    });
    fake.wait_for_requests(3, PATIENCE).await;
    assert_eq!(w.in_flight(), 1);
    request.abort();
    capacity_is_back(&front, &w).await;
    // Both ended as cancels (not as jobs dropped unanswered: status 500, `abandoned`).
    let mut ends = Vec::new();
    while ends.len() < 3 {
        let m = tokio::time::timeout(PATIENCE, usage.next())
            .await
            .expect("a usage event")
            .expect("the subscription");
        let e: llmbus::wire::usage::UsageEvent = serde_json::from_slice(&m.payload).unwrap();
        ends.push((e.status, e.error_class));
    }
    let cancelled = (499, Some("cancelled".to_string()));
    assert_eq!(ends[0], cancelled, "the stream: {ends:?}");
    assert_eq!(ends[1].0, 200, "the job after it: {ends:?}");
    assert_eq!(ends[2], cancelled, "the plain answer: {ends:?}");
    assert_eq!(
        jobs_seen(&mut jobs).await,
        Vec::<String>::new(),
        "the cancel did not need NATS either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_s_gate_admits_in_process_jobs() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let w = worker(&nats, &config(&fake, "fake", "  max_in_flight: 1\n")).await;
    let front = local_front(&nats, &w).await;
    fake.push(Fault::Delay(Duration::from_secs(60)));
    let addr = front.addr();
    let first = tokio::spawn(async move {
        http()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "slow"}]}))
            .send()
            .await
    });
    fake.wait_for_requests(1, PATIENCE).await;
    let r = http()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "more"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "worker_busy", "{v}");
    first.abort();
    capacity_is_back(&front, &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_the_worker_does_not_serve_goes_over_nats() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let a = worker(&nats, &config(&fake, "alpha", "")).await;
    let _b = worker(&nats, &config(&fake, "beta", "")).await;
    let front = local_front(&nats, &a).await;
    let (_nc, mut jobs) = watch_jobs(&nats).await;
    for (model, served_by, over_nats) in [("alpha", "alpha-1", false), ("beta", "beta-1", true)] {
        for stream in [false, true] {
            let r = http()
                .post(format!("http://{}/v1/chat/completions", front.addr()))
                .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{model}");
            let dep = r.headers().get("x-llmbus-deployment").cloned();
            let text = r.text().await.unwrap();
            if stream {
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            } else {
                assert_eq!(dep.unwrap(), served_by);
            }
            let seen = jobs_seen(&mut jobs).await;
            let expected: Vec<String> = if over_nats {
                vec!["llm.completion".into()]
            } else {
                vec![]
            };
            assert_eq!(seen, expected, "{model} stream={stream}");
        }
    }
}
