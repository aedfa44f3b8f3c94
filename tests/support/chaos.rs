//! The chaos harness that `tests/it/chaos.rs` and `benches/chaos.rs` share: a private nats-server,
//! the fake provider, three `llmbus serve` processes and an `llmbus front` process, and a
//! steady mixed load on them: chat requests over HTTP through the front (plain, streamed, and
//! to a deployment with `max_parallel_requests`) and straight on NATS (plain and streamed),
//! each with its own deadline. Faults are injected while the load runs ([`Cluster::kill_worker`],
//! [`Cluster::restart_nats`], the fake's faults); afterwards [`Cluster::audit`] checks what the
//! requests got (see [`Outcome`]), how many answers each NATS job received, that capacity came
//! back whole (every worker's `llmbus_deployment_in_flight` is 0, and a burst of the limited
//! deployment's full parallelism succeeds), and the usage events per request (the `LLM_USAGE`
//! stream; each request names itself in the OpenAI `user` field, which the events carry).
//!
//! The file is included by the test (`mod support;`) and by the bench (`#[path]`), next to
//! `chaos_nats.rs` (the jobs sent straight on NATS), `fake_provider.rs`, `llmbus_process.rs`
//! and `worker_process.rs`.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use llmbus::local_nats::{LocalNats, free_port};
use serde_json::{Value, json};

pub use super::chaos_nats::NatsSide;
use super::{
    fake_provider::FakeProvider,
    llmbus_process::LlmbusProcess,
    worker_process::{WorkerOptions, WorkerProcess},
};

/// Every request's deadline (`Llm-Timeout-Ms`).
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How long past its deadline a requester waits before it counts a timeout: the front's own
/// margin (5 s) and room for a loaded machine.
pub const SLACK: Duration = Duration::from_secs(10);
/// The limited deployment's `max_parallel_requests`.
pub const LIMITED_PARALLEL: usize = 4;

const PATIENCE: Duration = Duration::from_secs(60);

/// What a request asks for and how it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// HTTP through `llmbus front`, model `plain`.
    HttpPlain,
    /// HTTP through `llmbus front`, model `plain`, `"stream": true`.
    HttpStream,
    /// HTTP through `llmbus front`, model `limited` (`max_parallel_requests`).
    HttpLimited,
    /// Straight on NATS, model `plain`.
    NatsPlain,
    /// Straight on NATS, model `limited`, streamed.
    NatsStream,
}

const KINDS: [Kind; 5] = [
    Kind::HttpPlain,
    Kind::HttpStream,
    Kind::HttpLimited,
    Kind::NatsPlain,
    Kind::NatsStream,
];

impl Kind {
    pub(crate) fn model(self) -> &'static str {
        match self {
            Kind::HttpLimited | Kind::NatsStream => "limited",
            _ => "plain",
        }
    }
    pub(crate) fn stream(self) -> bool {
        matches!(self, Kind::HttpStream | Kind::NatsStream)
    }
    pub(crate) fn http(self) -> bool {
        matches!(self, Kind::HttpPlain | Kind::HttpStream | Kind::HttpLimited)
    }
}

/// What one request got.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// The right answer (the echo of its own prompt, a whole stream).
    Ok,
    /// A clear error: `<status> <code or type>` (`502 upstream_error`, `503 worker_lost`).
    Error(String),
    /// The requester gave up: no answer by the deadline plus [`SLACK`] (or the front's own
    /// 504 `front_timeout`, which comes at the deadline plus its margin).
    Timeout,
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: u64,
    pub kind: Kind,
    /// The phase it started in.
    pub phase: usize,
    pub started: Instant,
    pub elapsed: Duration,
    pub verdict: Verdict,
}

/// The model list: `plain` (no limits) and `limited`, both on the fake; retries but no
/// cooldowns (a single deployment cooling down would only measure the cooldown).
pub fn model_list(fake: &FakeProvider) -> String {
    format!(
        r#"model_list:
  - model_name: plain
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{url}", api_key: sk-chaos-upstream}}
    model_info: {{id: plain-1}}
  - model_name: limited
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{url}", api_key: sk-chaos-upstream, max_parallel_requests: {LIMITED_PARALLEL}}}
    model_info: {{id: limited-1}}
router_settings:
  num_retries: 1
  disable_cooldowns: true
"#,
        url = fake.url()
    )
}

/// The processes under test.
pub struct Cluster {
    pub nats: LocalNats,
    _store: tempfile::TempDir,
    pub fake: FakeProvider,
    /// `None` once killed.
    pub workers: Vec<Option<WorkerProcess>>,
    pub front: LlmbusProcess,
    /// `http://127.0.0.1:<port>` of the front.
    pub base: String,
    started: usize,
}

impl Cluster {
    /// Starts everything: `workers` worker processes (each serving metrics) and the front.
    pub async fn start(workers: usize) -> Self {
        let store = tempfile::tempdir().expect("a JetStream store");
        let nats = (0..5)
            .find_map(|_| LocalNats::start(free_port().ok()?, store.path()).ok())
            .expect("a private nats-server starts");
        let fake = FakeProvider::start().await;
        fake.keep_requests(false);
        let mut cluster = Self {
            front: LlmbusProcess::start(
                &[
                    "front",
                    "--listen",
                    "127.0.0.1:0",
                    "--nats-url",
                    &nats.url(),
                ],
                &[],
            )
            .with_label("llmbus front"),
            nats,
            _store: store,
            fake,
            workers: Vec::new(),
            base: String::new(),
            started: 0,
        };
        cluster.base = cluster
            .front
            .wait_for_url("llmbus front: OpenAI-compatible HTTP at", PATIENCE)
            .await;
        for _ in 0..workers {
            cluster.add_worker().await;
        }
        cluster
    }

    /// Starts one more worker and waits until it serves.
    pub async fn add_worker(&mut self) {
        let name = format!("w{}", self.started);
        self.started += 1;
        let options = WorkerOptions {
            metrics: true,
            ..WorkerOptions::default()
        };
        let w =
            WorkerProcess::start(&name, &self.nats.url(), &model_list(&self.fake), options).await;
        self.workers.push(Some(w));
    }

    /// `kill -9` the first live worker.
    pub fn kill_worker(&mut self) {
        let slot = self
            .workers
            .iter_mut()
            .find(|w| w.is_some())
            .expect("a live worker to kill");
        // Dropping a worker process sends it SIGKILL.
        drop(slot.take());
    }

    /// `kill -9` the live worker with the most jobs in flight (`llmbus_jobs_in_flight`); returns
    /// how many it had.
    pub async fn kill_busiest_worker(&mut self) -> f64 {
        let mut busiest = (0, -1.0);
        for (i, w) in self.workers.iter().enumerate() {
            if let Some(w) = w {
                let n = gauge(w, "llmbus_jobs_in_flight").await;
                if n > busiest.1 {
                    busiest = (i, n);
                }
            }
        }
        drop(self.workers[busiest.0].take());
        busiest.1
    }

    /// Kills the nats-server and starts it again on the same port and store.
    pub fn restart_nats(&mut self) {
        self.nats.kill();
        let mut last = None;
        for _ in 0..50 {
            match self.nats.restart() {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nats-server did not restart: {last:?}");
    }

    /// The live workers.
    pub fn live(&self) -> impl Iterator<Item = &WorkerProcess> {
        self.workers.iter().flatten()
    }
}

/// A steady load: `clients` loops, each sending one request after the other, the kinds in
/// turn.
pub struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub nats: Arc<NatsSide>,
}

impl Load {
    /// Starts `clients` request loops on `cluster`.
    pub async fn start(cluster: &Cluster, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(1));
        let nats = Arc::new(NatsSide::start(&cluster.nats.url()).await);
        let http = reqwest::Client::builder()
            .timeout(DEADLINE + SLACK)
            .build()
            .expect("an HTTP client");
        let tasks = (0..clients)
            .map(|c| {
                let (stop, phase, outcomes, next) =
                    (stop.clone(), phase.clone(), outcomes.clone(), next.clone());
                let (nats, http, base) = (nats.clone(), http.clone(), cluster.base.clone());
                tokio::spawn(async move {
                    let mut turn = c;
                    while !stop.load(Ordering::Acquire) {
                        let kind = KINDS[turn % KINDS.len()];
                        turn += 1;
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        let p = phase.load(Ordering::Acquire);
                        let started = Instant::now();
                        let verdict = if kind.http() {
                            http_request(&http, &base, kind, id).await
                        } else {
                            nats.request(kind, id).await
                        };
                        let o = Outcome {
                            id,
                            kind,
                            phase: p,
                            started,
                            elapsed: started.elapsed(),
                            verdict,
                        };
                        outcomes.lock().unwrap().push(o);
                    }
                })
            })
            .collect();
        Self {
            stop,
            phase,
            outcomes,
            tasks,
            nats,
        }
    }

    /// Requests started from now on belong to phase `p`.
    pub fn set_phase(&self, p: usize) {
        self.phase.store(p, Ordering::Release);
    }

    /// How many requests have finished.
    pub fn finished(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Waits until `n` more requests than now have finished (a minute at most).
    pub async fn wait_for(&self, n: usize) {
        let target = self.finished() + n;
        let until = Instant::now() + PATIENCE;
        while self.finished() < target {
            assert!(
                Instant::now() < until,
                "the load made no progress: {} of {target} requests finished",
                self.finished()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the loops, waits for the requests in flight, returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await.expect("a load loop");
        }
        let mut all = std::mem::take(&mut *self.outcomes.lock().unwrap());
        all.sort_by_key(|o| o.id);
        all
    }
}

pub(crate) fn prompt(id: u64) -> String {
    format!("chaos request {id}")
}

pub(crate) fn user(id: u64) -> String {
    format!("chaos-{id}")
}

pub(crate) fn body(kind: Kind, id: u64) -> Value {
    json!({
        "model": kind.model(),
        "stream": kind.stream(),
        "user": user(id),
        "messages": [{"role": "user", "content": prompt(id)}],
    })
}

/// `<status> <code or type>` of an OpenAI error body.
pub(crate) fn error_kind(status: u16, body: &[u8]) -> Verdict {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let code = e["code"]
        .as_str()
        .or_else(|| e["type"].as_str())
        .unwrap_or("?");
    if code == "front_timeout" {
        return Verdict::Timeout;
    }
    Verdict::Error(format!("{status} {code}"))
}

async fn http_request(http: &reqwest::Client, base: &str, kind: Kind, id: u64) -> Verdict {
    let sent = http
        .post(format!("{base}/v1/chat/completions"))
        .header("Llm-Timeout-Ms", DEADLINE.as_millis().to_string())
        .json(&body(kind, id))
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Verdict::Timeout,
        Err(_) => return Verdict::Error("transport".into()),
    };
    let status = response.status().as_u16();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => return Verdict::Timeout,
        Err(_) => return Verdict::Error(format!("{status} body cut")),
    };
    if status != 200 {
        return error_kind(status, &bytes);
    }
    let expected = format!("echo: {}", prompt(id));
    if !kind.stream() {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return match v["choices"][0]["message"]["content"].as_str() {
            Some(c) if c == expected => Verdict::Ok,
            _ => Verdict::Error("200 wrong answer".into()),
        };
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut content = String::new();
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            return if content == expected {
                Verdict::Ok
            } else {
                Verdict::Error("200 wrong stream".into())
            };
        }
        let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        if v.get("error").is_some() {
            return match error_kind(200, data.as_bytes()) {
                Verdict::Error(e) => Verdict::Error(format!("stream {}", &e[4..])),
                other => other,
            };
        }
        if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
    }
    Verdict::Error("200 stream without [DONE]".into())
}

/// What the audit after a run found.
#[derive(Debug, Default)]
pub struct Audit {
    /// NATS jobs answered more than once.
    pub duplicates: Vec<u64>,
    /// Each live worker's summed `llmbus_deployment_in_flight`.
    pub in_flight: Vec<f64>,
    /// How many of a burst of the limited deployment's full parallelism succeeded.
    pub burst_ok: usize,
    /// Requests answered 200 whose usage shows no 200 event.
    pub usage_missing: Vec<u64>,
    /// Requests with more than one 200 usage event.
    pub usage_twice: Vec<u64>,
    /// Usage events read.
    pub usage_events: usize,
}

impl Cluster {
    /// Checks capacity, answers and usage after `outcomes` (the load stopped).
    pub async fn audit(&self, load_nats: &NatsSide, outcomes: &[Outcome]) -> Audit {
        let mut audit = Audit {
            duplicates: load_nats.duplicates(),
            ..Audit::default()
        };
        for w in self.live() {
            audit.in_flight.push(in_flight(w).await);
        }
        audit.burst_ok = self.burst().await;
        let answered: Vec<u64> = outcomes
            .iter()
            .filter(|o| o.verdict == Verdict::Ok)
            .map(|o| o.id)
            .collect();
        let events = usage_by_user(&load_nats.client, answered.len()).await;
        audit.usage_events = events.values().map(Vec::len).sum();
        for id in answered {
            let ok = events
                .get(&user(id))
                .map_or(0, |s| s.iter().filter(|s| **s == 200).count());
            match ok {
                0 => audit.usage_missing.push(id),
                1 => {}
                _ => audit.usage_twice.push(id),
            }
        }
        audit
    }

    /// Sends [`LIMITED_PARALLEL`] requests at once to `limited` through the front, twice;
    /// returns how many succeeded.
    async fn burst(&self) -> usize {
        let http = reqwest::Client::builder()
            .timeout(DEADLINE + SLACK)
            .build()
            .expect("an HTTP client");
        let mut ok = 0;
        for round in 0..2u64 {
            let asks = (0..LIMITED_PARALLEL as u64).map(|i| {
                let id = 1_000_000 + round * 100 + i;
                http_request(&http, &self.base, Kind::HttpLimited, id)
            });
            ok += futures::future::join_all(asks)
                .await
                .into_iter()
                .filter(|v| *v == Verdict::Ok)
                .count();
        }
        ok
    }
}

/// A worker's `llmbus_deployment_in_flight`, summed over its deployments.
async fn in_flight(w: &WorkerProcess) -> f64 {
    gauge(w, "llmbus_deployment_in_flight").await
}

/// A worker's gauge `name`, summed over its labels.
async fn gauge(w: &WorkerProcess, name: &str) -> f64 {
    let addr = w.metrics_addr().expect("workers serve metrics");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `LLM_USAGE` stream's events, their statuses by `user`. Waits (30 s at most) until it
/// holds at least `expected` events: the workers publish them in the background.
async fn usage_by_user(nats: &async_nats::Client, expected: usize) -> HashMap<String, Vec<u16>> {
    let js = async_nats::jetstream::new(nats.clone());
    let until = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        if let Ok(s) = js.get_stream("LLM_USAGE").await {
            break s;
        }
        assert!(Instant::now() < until, "no LLM_USAGE stream");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        let n = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
        if n as usize >= expected || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = stream.info().await.expect("LLM_USAGE info").state.clone();
    let mut by_user: HashMap<String, Vec<u16>> = HashMap::new();
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        if let Some(u) = v["user"].as_str() {
            let status = v["status"].as_u64().unwrap_or(0) as u16;
            by_user.entry(u.to_string()).or_default().push(status);
        }
    }
    by_user
}

/// Per phase: requests, ok, errors by kind, timeouts, p50/p99 of the elapsed time.
pub fn report(names: &[&str], outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for (p, name) in names.iter().enumerate() {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.phase == p).collect();
        let ok = mine.iter().filter(|o| o.verdict == Verdict::Ok).count();
        let timeouts = mine
            .iter()
            .filter(|o| o.verdict == Verdict::Timeout)
            .count();
        let http_timeouts = mine
            .iter()
            .filter(|o| o.verdict == Verdict::Timeout && o.kind.http())
            .count();
        let mut errors: std::collections::BTreeMap<&str, usize> = Default::default();
        for o in &mine {
            if let Verdict::Error(e) = &o.verdict {
                *errors.entry(e.as_str()).or_default() += 1;
            }
        }
        let mut ms: Vec<f64> = mine.iter().map(|o| o.elapsed.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let q = |f: f64| {
            ms.get(((ms.len() as f64 * f) as usize).min(ms.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        out.push_str(&format!(
            "{name:<14} requests {:>5}  ok {:>5}  timeouts {:>3} (http {:>2})  p50 {:>7.1} ms  p99 {:>8.1} ms  errors {:?}\n",
            mine.len(),
            ok,
            timeouts,
            http_timeouts,
            q(0.5),
            q(0.99),
            errors
        ));
    }
    out
}
