//! The failover benchmark: what one failing deployment of two costs the requesters.
//!
//! A model group of two deployments, each on its own fake OpenAI-compatible provider: `a` and
//! `b`, with `allowed_fails: 3` and `cooldown_time: 2` (so `a` is probed again every two
//! seconds or so). Closed-loop request/reply load (N clients sending back to back for a fixed
//! time) in two runs, each on a fresh worker:
//!
//! - **baseline**: both deployments healthy;
//! - **one failing**: `a` answers every request with a 500, `b` stays fast and healthy.
//!
//! Both runs warm up with both deployments healthy (connection pools filled); the failing run
//! then turns `a` bad at the start of its measurement, so the measurement includes the first
//! trip into cooldown. Printed: success rate, retries per job (from `Llm-Attempts`: attempts
//! − 1), latency percentiles and the latency the failing deployment adds (p50/p99 minus the
//! baseline's), and the requests the failing deployment received (per second, and the
//! cooldowns `llm.deployments` reports).
//!
//! Everything runs on loopback in this process except `nats-server` (a child process): the
//! worker, the fakes and the load generator each get their own tokio runtime, as if each were
//! its own process.
//!
//! Run: `cargo bench --bench failover`. Environment:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LLMBUS_BENCH_SECS` | 10 | seconds per measured run |
//! | `LLMBUS_BENCH_CONCURRENCY` | 64 | clients |
//! | `LLMBUS_BENCH_GW_THREADS` | 2 | tokio worker threads of the llmbus worker |
//!
//! Figures are printed, never asserted. Without `--bench` (as under `cargo test
//! --all-targets`) it runs a smoke pass of a second or two.

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use bytes::Bytes;
use hdrhistogram::Histogram;
use llmbus::{
    Worker,
    client::LlmClient,
    config::Config,
    local_nats::{LocalNats, free_port},
};
use serde_json::Value;
use tokio::runtime::Runtime;

use fake_provider::{FakeProvider, Fault};

/// The most one job may take before the run counts it as failed.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// The most jobs one run sends, whatever the duration.
const MAX_JOBS: usize = 2_000_000;
const ALLOWED_FAILS: u32 = 3;
const COOLDOWN_SECS: f64 = 2.0;

struct Settings {
    run: Duration,
    warm_up: Duration,
    clients: usize,
    gw_threads: usize,
    smoke: bool,
}

impl Settings {
    fn from_env() -> Self {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let num = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
                })
                .unwrap_or(default)
        };
        let secs = num("LLMBUS_BENCH_SECS", if smoke { 0.5 } else { 10.0 }).clamp(0.1, 600.0);
        Self {
            run: Duration::from_secs_f64(secs),
            warm_up: Duration::from_secs_f64((secs / 5.0).clamp(0.1, 2.0)),
            clients: num("LLMBUS_BENCH_CONCURRENCY", if smoke { 8.0 } else { 64.0 }).max(1.0)
                as usize,
            gw_threads: num("LLMBUS_BENCH_GW_THREADS", 2.0).max(1.0) as usize,
            smoke,
        }
    }
}

/// What one run measured.
struct Stats {
    jobs: usize,
    ok: usize,
    /// Σ (attempts − 1) over every answered job.
    retries: u64,
    /// Jobs that took more than one attempt.
    retried_jobs: usize,
    /// Latency of successful jobs, µs.
    hist: Histogram<u64>,
    /// Latency of successful jobs that took more than one attempt, µs.
    retried_hist: Histogram<u64>,
    first_error: Option<String>,
    took: Duration,
}

impl Stats {
    fn new() -> Self {
        Self {
            jobs: 0,
            ok: 0,
            retries: 0,
            retried_jobs: 0,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            retried_hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            first_error: None,
            took: Duration::ZERO,
        }
    }

    fn merge(&mut self, other: Stats) {
        self.jobs += other.jobs;
        self.ok += other.ok;
        self.retries += other.retries;
        self.retried_jobs += other.retried_jobs;
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.retried_hist
            .add(&other.retried_hist)
            .expect("same histogram bounds");
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Percentile `q` (0..1) of the latency, ms.
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn success_rate(&self) -> f64 {
        if self.jobs == 0 {
            0.0
        } else {
            100.0 * self.ok as f64 / self.jobs as f64
        }
    }

    fn retries_per_job(&self) -> f64 {
        if self.jobs == 0 {
            0.0
        } else {
            self.retries as f64 / self.jobs as f64
        }
    }

    fn rps(&self) -> f64 {
        self.jobs as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// A chat request body.
fn body() -> Bytes {
    let v = serde_json::json!({
        "model": "g",
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "What is the capital of France?"}
        ],
        "max_tokens": 64
    });
    Bytes::from(serde_json::to_vec(&v).expect("JSON"))
}

fn config(a: &FakeProvider, b: &FakeProvider) -> Config {
    let entry = |id: &str, fake: &FakeProvider| {
        format!(
            "  - model_name: g\n    litellm_params: {{model: openai/gpt-4o-mini, api_base: \"{}\", api_key: sk-bench-0123456789}}\n    model_info: {{id: {id}}}\n",
            fake.url()
        )
    };
    let yaml = format!(
        "model_list:\n{}{}router_settings: {{allowed_fails: {ALLOWED_FAILS}, cooldown_time: {COOLDOWN_SECS}}}\n",
        entry("a", a),
        entry("b", b)
    );
    Config::from_yaml(&yaml, "failover-bench.yaml")
        .expect("bench config loads")
        .config
}

/// `clients` tasks sending jobs back to back until `until` (at most `MAX_JOBS` in all).
async fn closed_loop(client: &LlmClient, clients: usize, until: Instant) -> Stats {
    let started = Instant::now();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut s = Stats::new();
                let payload = body();
                while Instant::now() < until
                    && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < MAX_JOBS
                {
                    let t = Instant::now();
                    let reply = client
                        .complete(HeaderMap::new(), payload.clone(), JOB_TIMEOUT)
                        .await;
                    let latency = t.elapsed();
                    s.jobs += 1;
                    match reply {
                        Ok(r) => {
                            let attempts: u64 = r
                                .header("Llm-Attempts")
                                .and_then(|a| a.parse().ok())
                                .unwrap_or(1);
                            s.retries += attempts.saturating_sub(1);
                            if attempts > 1 {
                                s.retried_jobs += 1;
                            }
                            if r.status == 200 {
                                s.ok += 1;
                                s.hist.saturating_record(latency.as_micros() as u64);
                                if attempts > 1 {
                                    s.retried_hist.saturating_record(latency.as_micros() as u64);
                                }
                            } else if s.first_error.is_none() {
                                s.first_error = Some(format!(
                                    "{}: {}",
                                    r.status,
                                    String::from_utf8_lossy(&r.body)
                                ));
                            }
                        }
                        Err(e) => {
                            s.first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                s
            })
        })
        .collect();
    let mut all = Stats::new();
    for t in tasks {
        all.merge(t.await.expect("a load task"));
    }
    all.took = started.elapsed();
    all
}

/// `llm.deployments`, as JSON.
async fn deployments(client: &LlmClient) -> Vec<Value> {
    let r = client
        .request(
            client.subjects().deployments(),
            HeaderMap::new(),
            Bytes::new(),
            JOB_TIMEOUT,
        )
        .await
        .expect("llm.deployments answers");
    match r.json() {
        Value::Array(all) => all,
        other => panic!("llm.deployments: {other}"),
    }
}

/// One run's figures, plus what happened to deployment `a`.
struct Run {
    stats: Stats,
    /// Requests `a` received during the measurement.
    a_requests: usize,
    /// Requests `b` received during the measurement.
    b_requests: usize,
    /// `a`'s requests in each second of the measurement.
    a_per_second: Vec<usize>,
    /// `a`'s status after the run.
    a_status: Value,
}

struct Rig {
    nats_url: String,
    gw: Runtime,
    fakes: Runtime,
    load: Runtime,
}

impl Rig {
    /// A run on a fresh worker and fresh fakes; `a` fails with 500s when `fail_a`.
    fn run(&self, s: &Settings, fail_a: bool) -> Run {
        let (a, b) = self
            .fakes
            .block_on(async { (FakeProvider::start().await, FakeProvider::start().await) });
        let config = config(&a, &b);
        let worker = self.gw.block_on(async {
            let nats = async_nats::connect(&self.nats_url)
                .await
                .expect("worker connects to NATS");
            Worker::start(&config, nats).await.expect("worker starts")
        });
        let client = self.load.block_on(async {
            let nats = async_nats::connect(&self.nats_url)
                .await
                .expect("load generator connects to NATS");
            LlmClient::new(nats, "llm")
        });

        // Warm up with both healthy: pools filled, code paths hot.
        let warm = self
            .load
            .block_on(closed_loop(&client, s.clients, Instant::now() + s.warm_up));
        assert!(warm.ok > 0, "warm-up: {:?}", warm.first_error);

        if fail_a {
            a.set_default(Fault::status(500));
        }
        let (a0, b0) = (a.request_count(), b.request_count());
        let start = Instant::now();
        let until = start + s.run;
        let (stats, a_per_second) = self.load.block_on(async {
            // Sample `a`'s request count once a second while the load runs.
            let a_count = || a.request_count();
            let sampler = async {
                let mut per_second = Vec::new();
                let mut last = a0;
                let mut tick = start;
                while tick + Duration::from_secs(1) <= until {
                    tick += Duration::from_secs(1);
                    tokio::time::sleep_until(tick.into()).await;
                    let now = a_count();
                    per_second.push(now - last);
                    last = now;
                }
                per_second
            };
            tokio::join!(closed_loop(&client, s.clients, until), sampler)
        });
        let a_status = self.load.block_on(async {
            deployments(&client)
                .await
                .into_iter()
                .find(|d| d["id"] == "a")
                .expect("deployment a")
        });
        let run = Run {
            stats,
            a_requests: a.request_count() - a0,
            b_requests: b.request_count() - b0,
            a_per_second,
            a_status,
        };
        self.gw.block_on(worker.stop());
        drop(client);
        drop((a, b));
        run
    }
}

fn runtime(name: &str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn row(name: &str, r: &Run) {
    let s = &r.stats;
    println!(
        "  {:<12} {:>8} {:>8.3}% {:>9.0} {:>12.4} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>10} {:>10}",
        name,
        s.jobs,
        s.success_rate(),
        s.rps(),
        s.retries_per_job(),
        s.p(0.5),
        s.p(0.99),
        s.p(0.999),
        s.hist.max() as f64 / 1000.0,
        r.a_requests,
        r.b_requests,
    );
    if let Some(e) = &s.first_error {
        println!(
            "    first error: {}",
            e.chars().take(200).collect::<String>()
        );
    }
}

fn main() {
    let s = Settings::from_env();
    let store = tempfile::tempdir().expect("a temporary JetStream store");
    let nats = (0..5)
        .find_map(|_| LocalNats::start(free_port().ok()?, store.path()).ok())
        .expect("nats-server starts (is it on PATH?)");
    let rig = Rig {
        nats_url: nats.url(),
        gw: runtime("gateway", s.gw_threads),
        fakes: runtime("fakes", 1),
        load: runtime("load", 1),
    };

    println!(
        "llmbus failover benchmark{}: {} clients, closed loop, {:.1} s per run after a {:.1} s warm-up",
        if s.smoke { " (smoke pass)" } else { "" },
        s.clients,
        s.run.as_secs_f64(),
        s.warm_up.as_secs_f64()
    );
    println!(
        "  group `g` = deployments `a` and `b` (fakes on loopback), allowed_fails {ALLOWED_FAILS}, cooldown_time {COOLDOWN_SECS} s, num_retries 2"
    );
    println!(
        "  runtimes: gateway {} thread(s), fakes 1, load generator 1; one client NATS connection",
        s.gw_threads
    );
    println!();
    println!(
        "  {:<12} {:>8} {:>9} {:>9} {:>12} {:>8} {:>8} {:>9} {:>8} {:>10} {:>10}",
        "run",
        "jobs",
        "success",
        "req/s",
        "retries/job",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "a got",
        "b got"
    );
    let baseline = rig.run(&s, false);
    row("baseline", &baseline);
    let failing = rig.run(&s, true);
    row("a failing", &failing);

    let (b, f) = (&baseline.stats, &failing.stats);
    println!();
    println!(
        "  added latency with `a` failing: p50 {:+.2} ms, p99 {:+.2} ms, p99.9 {:+.2} ms",
        f.p(0.5) - b.p(0.5),
        f.p(0.99) - b.p(0.99),
        f.p(0.999) - b.p(0.999)
    );
    println!(
        "  jobs retried: {} of {} ({:.3}%); success {:.3}%",
        f.retried_jobs,
        f.jobs,
        100.0 * f.retried_jobs as f64 / f.jobs.max(1) as f64,
        f.success_rate()
    );
    if !f.retried_hist.is_empty() {
        let q = |p: f64| f.retried_hist.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "  latency of the retried jobs (failed attempt on `a`, then `b`): min {:.2} ms, p50 {:.2} ms, max {:.2} ms",
            f.retried_hist.min() as f64 / 1000.0,
            q(0.5),
            f.retried_hist.max() as f64 / 1000.0
        );
    }
    let a = &failing.a_status;
    println!(
        "  the failing deployment `a` received {} requests ({:.2}/s; every one a retried attempt), by second: {:?}",
        failing.a_requests,
        failing.a_requests as f64 / f.took.as_secs_f64().max(1e-9),
        failing.a_per_second
    );
    println!(
        "  `a` after the run: state {}, cooldowns started {}, failures in the last minute {}; \
         a probe per cooldown would be about {:.0} requests after the first trip",
        a["state"],
        a["cooldowns"],
        a["failures_last_minute"],
        f.took.as_secs_f64() / COOLDOWN_SECS
    );
    drop(rig);
    drop(nats);
}
