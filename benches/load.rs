//! The end-to-end load benchmark: what llmbus adds on top of NATS and HTTP, and how much it
//! carries.
//!
//! Everything runs on loopback in this process (except `nats-server`, a child process): a
//! private `nats-server`, the fake OpenAI-compatible provider of the tests, one llmbus worker
//! and the load generator. Each of the three in-process parts has its own tokio runtime, as if
//! it were its own process, so that one part's tasks never wait behind another's on a worker
//! thread. Phases:
//!
//! - **Floor A**: a plain NATS responder (reply = request payload), request/reply with the
//!   same client code and payload as a chat job.
//! - **Floor B**: the same chat request POSTed straight to the fake (keep-alive `reqwest`).
//! - **Gateway, 1 client**: sequential jobs through llmbus, after a warm-up; overhead =
//!   gateway − (A + B) at p50 and p99.
//! - **Closed loop**: N tasks (64) sending back to back, for A, B and the gateway.
//! - **Open loop**: the gateway at fixed offered rates. A generator thread sends on a
//!   schedule whatever the replies do; latency is measured from the *scheduled* send time
//!   (no coordinated omission), and also from the actual send.
//! - **Streaming**: one client, `"stream": true`: time to the first chunk and to the end, next
//!   to the same stream read straight from the fake.
//!
//! Run: `cargo bench --bench load`. Environment:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LLMBUS_BENCH_SECS` | 3 | seconds per measured phase (warm-ups are 1/3 of it) |
//! | `LLMBUS_BENCH_RATES` | 2000,4000,6000,8000 | open-loop offered rates, req/s |
//! | `LLMBUS_BENCH_CONCURRENCY` | 64 | closed-loop tasks |
//! | `LLMBUS_BENCH_CONNS` | 1 | NATS connections the load generator spreads its jobs over |
//! | `LLMBUS_BENCH_GW_THREADS` | 2 | tokio worker threads of the llmbus worker |
//! | `LLMBUS_BENCH_TELEMETRY` | 1 | 1: info logs + Prometheus recorder as `llmbus serve` has them; 0: none |
//! | `LLMBUS_BENCH_PHASES` | all | comma list of `floors,single,closed,open,stream` to run |
//!
//! Targets are printed next to the figures, never asserted. Without `--bench` (as under
//! `cargo test --all-targets`) it runs a smoke pass of a second or two.

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;

/// The same allocator as the `llmbus` binary, so the figures are the binary's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use llmbus::{
    Worker,
    client::LlmClient,
    config::Config,
    local_nats::{LocalNats, free_port},
};
use tokio::runtime::Runtime;

use fake_provider::FakeProvider;

/// The model group, and the upstream model (a real name, so the job is priced).
const MODEL: &str = "gpt-4o-mini";
/// The key the worker sends upstream, and the direct client too.
const API_KEY: &str = "sk-bench-0123456789";
/// The subject of floor A's responder.
const ECHO_SUBJECT: &str = "bench.echo";
/// The most one request may take before it counts as an error.
const PATIENCE: Duration = Duration::from_secs(5);
/// Target: p50 overhead with one client.
const TARGET_OVERHEAD_US: f64 = 150.0;
/// Target: throughput with 64 concurrent clients.
const TARGET_RPS: f64 = 5000.0;
/// The open-loop generator's shortest sleep: at most one wake-up per this long.
const MIN_GAP: Duration = Duration::from_micros(200);
/// The most requests any one phase sends (a bound on every loop).
const MAX_PER_PHASE: u64 = 5_000_000;

/// What the run was asked to do.
#[derive(Debug, Clone)]
struct Settings {
    phase: Duration,
    rates: Vec<u64>,
    concurrency: usize,
    conns: usize,
    gw_threads: usize,
    telemetry: bool,
    phases: Vec<String>,
    smoke: bool,
}

impl Settings {
    fn from_env() -> Self {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let num = |name: &str, default: f64| {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
                })
                .unwrap_or(default)
        };
        let secs = num("LLMBUS_BENCH_SECS", if smoke { 0.2 } else { 3.0 }).clamp(0.05, 600.0);
        let rates = var("LLMBUS_BENCH_RATES")
            .map(|v| {
                v.split(',')
                    .map(|r| {
                        r.trim()
                            .parse::<u64>()
                            .unwrap_or_else(|_| panic!("LLMBUS_BENCH_RATES: bad rate {r:?}"))
                    })
                    .filter(|r| *r > 0)
                    .collect()
            })
            .unwrap_or_else(|| {
                if smoke {
                    vec![200]
                } else {
                    vec![2000, 4000, 6000, 8000]
                }
            });
        let phases = var("LLMBUS_BENCH_PHASES")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_else(|| {
                ["floors", "single", "closed", "open", "stream"]
                    .map(String::from)
                    .to_vec()
            });
        Self {
            phase: Duration::from_secs_f64(secs),
            rates,
            concurrency: num("LLMBUS_BENCH_CONCURRENCY", if smoke { 8.0 } else { 64.0 }).max(1.0)
                as usize,
            conns: num("LLMBUS_BENCH_CONNS", 1.0).max(1.0) as usize,
            gw_threads: num("LLMBUS_BENCH_GW_THREADS", 2.0).max(1.0) as usize,
            telemetry: num("LLMBUS_BENCH_TELEMETRY", 1.0) != 0.0,
            phases,
            smoke,
        }
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase || p == "all")
    }

    fn warmup(&self) -> Duration {
        self.phase / 3
    }
}

/// Latencies (ns) and failures of one phase.
struct Stats {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// CPU µs per successful request: gateway, fake, nats-server, load generator.
    cpu: Option<[f64; 4]>,
}

impl Stats {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds"),
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            cpu: None,
        }
    }

    fn record(&mut self, latency: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => self.hist.saturating_record(latency.as_nanos() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    fn ok(&self) -> u64 {
        self.hist.len()
    }

    /// Percentile in µs.
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn mean(&self) -> f64 {
        self.hist.mean() / 1000.0
    }

    fn rps(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Echo,
    Direct,
    Gateway,
}

/// Everything needed to send one request of any kind.
#[derive(Clone)]
struct Load {
    clients: Arc<Vec<LlmClient>>,
    http: reqwest::Client,
    direct_url: Arc<str>,
    body: Bytes,
    stream_body: Bytes,
}

impl Load {
    fn client(&self, i: usize) -> &LlmClient {
        &self.clients[i % self.clients.len()]
    }

    async fn call(&self, target: Target, i: usize) -> Result<(), String> {
        match target {
            Target::Echo => {
                let r = self
                    .client(i)
                    .request(
                        ECHO_SUBJECT.to_string(),
                        HeaderMap::new(),
                        self.body.clone(),
                        PATIENCE,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if r.body.len() != self.body.len() {
                    return Err(format!("echo of {} bytes", r.body.len()));
                }
                Ok(())
            }
            Target::Direct => {
                let response = self
                    .http
                    .post(&*self.direct_url)
                    .bearer_auth(API_KEY)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(self.body.clone())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() || body.is_empty() {
                    return Err(format!("HTTP {status}"));
                }
                Ok(())
            }
            Target::Gateway => {
                let r = self
                    .client(i)
                    .complete(HeaderMap::new(), self.body.clone(), PATIENCE)
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status != 200 || r.body.is_empty() {
                    return Err(format!(
                        "Llm-Status {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                }
                Ok(())
            }
        }
    }

    /// A streaming job through the gateway: (time to the first chunk, total).
    async fn gateway_stream(&self) -> Result<(Duration, Duration), String> {
        let start = Instant::now();
        let mut reader = self
            .client(0)
            .stream(HeaderMap::new(), self.stream_body.clone(), PATIENCE)
            .await
            .map_err(|e| e.to_string())?;
        let mut first = None;
        let mut chunks = 0;
        // A stream of the default fake answer has a handful of chunks; 10k bounds the loop.
        for _ in 0..10_000 {
            match reader.next().await {
                None => return Err("stream ended without a sentinel".into()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(r)) if r.body.is_empty() => {
                    if r.status != 200 {
                        return Err(format!("sentinel Llm-Status {}", r.status));
                    }
                    let total = start.elapsed();
                    if chunks == 0 {
                        return Err("no chunk before the sentinel".into());
                    }
                    return Ok((first.unwrap_or(total), total));
                }
                Some(Ok(r)) => {
                    if r.status != 200 {
                        return Err(format!("chunk Llm-Status {}", r.status));
                    }
                    chunks += 1;
                    first.get_or_insert_with(|| start.elapsed());
                }
            }
        }
        Err("more than 10000 messages".into())
    }

    /// The same stream read straight from the fake: (first SSE bytes, `[DONE]`).
    async fn direct_stream(&self) -> Result<(Duration, Duration), String> {
        let start = Instant::now();
        let response = self
            .http
            .post(&*self.direct_url)
            .bearer_auth(API_KEY)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.stream_body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = response.bytes_stream();
        let mut first = None;
        let mut tail: Vec<u8> = Vec::new();
        for _ in 0..10_000 {
            match body.next().await {
                None => break,
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(bytes)) => {
                    first.get_or_insert_with(|| start.elapsed());
                    tail.extend_from_slice(&bytes);
                }
            }
        }
        let total = start.elapsed();
        if !tail.windows(6).any(|w| w == b"[DONE]") {
            return Err("no [DONE]".into());
        }
        Ok((first.unwrap_or(total), total))
    }
}

/// CPU time used so far, in ns, by each part of the setup: the gateway runtime's threads, the
/// fake provider's, the `nats-server` process, and everything else in this process (the load
/// generator). Read from Linux's `/proc` (`schedstat`); `None` elsewhere.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    gateway: u64,
    fake: u64,
    nats: u64,
    client: u64,
}

impl Cpu {
    fn now() -> Option<Cpu> {
        let mut cpu = Cpu::default();
        for (comm, ns) in threads(std::path::Path::new("/proc/self/task"))? {
            if comm.starts_with("gateway") {
                cpu.gateway += ns;
            } else if comm.starts_with("fake") {
                cpu.fake += ns;
            } else {
                cpu.client += ns;
            }
        }
        if let Some(pid) = nats_pid() {
            let tasks = std::path::PathBuf::from(format!("/proc/{pid}/task"));
            cpu.nats = threads(&tasks).map_or(0, |t| t.iter().map(|(_, ns)| ns).sum());
        }
        Some(cpu)
    }

    /// CPU µs per request of each part between `self` (earlier) and `later`.
    fn per_request(&self, later: &Cpu, requests: u64) -> [f64; 4] {
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0 / requests.max(1) as f64;
        [
            per(self.gateway, later.gateway),
            per(self.fake, later.fake),
            per(self.nats, later.nats),
            per(self.client, later.client),
        ]
    }
}

/// `(name, ns on CPU)` of every thread under a `/proc/<pid>/task` directory.
fn threads(dir: &std::path::Path) -> Option<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        out.push((comm.trim().to_string(), ns));
    }
    Some(out)
}

/// The pid of our `nats-server` child.
fn nats_pid() -> Option<u32> {
    static PID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *PID.get_or_init(|| {
        let me = std::process::id();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: the comm may hold spaces, so split after ')'.
            let (head, rest) = stat.rsplit_once(')')?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == me && head.ends_with("(nats-server")).then_some(pid)
        })
    })
}

/// Sends `target` requests one after another for `duration`.
async fn sequential(load: &Load, target: Target, duration: Duration) -> Stats {
    let mut stats = Stats::new();
    let cpu = Cpu::now();
    let start = Instant::now();
    for i in 0..MAX_PER_PHASE {
        if start.elapsed() >= duration {
            break;
        }
        let t = Instant::now();
        let r = load.call(target, i as usize).await;
        stats.record(t.elapsed(), r);
    }
    stats.elapsed = start.elapsed();
    stats.cpu = cpu
        .zip(Cpu::now())
        .map(|(a, b)| a.per_request(&b, stats.ok()));
    stats
}

/// `concurrency` tasks each sending `target` requests back to back for `duration`.
async fn closed_loop(load: &Load, target: Target, concurrency: usize, duration: Duration) -> Stats {
    let cpu = Cpu::now();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|k| {
            let load = load.clone();
            tokio::spawn(async move {
                let mut stats = Stats::new();
                for _ in 0..MAX_PER_PHASE {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    let r = load.call(target, k).await;
                    stats.record(t.elapsed(), r);
                }
                stats
            })
        })
        .collect();
    let mut all = Stats::new();
    for t in tasks {
        all.merge(t.await.expect("a closed-loop task"));
    }
    all.elapsed = start.elapsed();
    all.cpu = cpu
        .zip(Cpu::now())
        .map(|(a, b)| a.per_request(&b, all.ok()));
    all
}

/// One open-loop run's results.
struct OpenRun {
    offered: u64,
    sent: u64,
    from_schedule: Stats,
    from_send: Stats,
    /// The most the generator fell behind its schedule.
    max_lag: Duration,
}

/// Sends gateway jobs at `rate` per second for `duration`, on a schedule that does not wait
/// for replies. A plain thread keeps the schedule (`thread::sleep` is far finer than tokio's
/// 1 ms timer) and spawns each job onto the client runtime; it wakes at most every
/// [`MIN_GAP`], sending every job then due, so that at high rates the generator's own wake-ups
/// do not eat the CPU the gateway needs.
fn open_loop(rt: &Runtime, load: &Load, rate: u64, duration: Duration) -> OpenRun {
    let n = ((rate as f64 * duration.as_secs_f64()) as u64).clamp(1, MAX_PER_PHASE);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let results: Arc<Mutex<(Stats, Stats)>> = Arc::new(Mutex::new((Stats::new(), Stats::new())));
    let handle = rt.handle().clone();
    let cpu = Cpu::now();
    let start = Instant::now() + Duration::from_millis(5);
    let mut max_lag = Duration::ZERO;
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(MIN_GAP));
        } else {
            max_lag = max_lag.max(now - due);
        }
        let load = load.clone();
        let results = results.clone();
        tasks.push(handle.spawn(async move {
            let sent = Instant::now();
            let r = load.call(Target::Gateway, i as usize).await;
            let done = Instant::now();
            let mut g = results.lock().expect("results lock");
            g.0.record(done - due, r.clone());
            g.1.record(done - sent, r);
        }));
    }
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = start.elapsed();
    let (mut from_schedule, mut from_send) = Arc::try_unwrap(results)
        .ok()
        .expect("every task ended")
        .into_inner()
        .expect("results lock");
    from_schedule.elapsed = elapsed;
    from_send.elapsed = elapsed;
    from_schedule.cpu = cpu
        .zip(Cpu::now())
        .map(|(a, b)| a.per_request(&b, from_schedule.ok() + from_schedule.errors));
    OpenRun {
        offered: rate,
        sent: n,
        from_schedule,
        from_send,
        max_lag,
    }
}

/// One streaming measure: first-chunk and total latencies.
struct StreamStats {
    first: Stats,
    total: Stats,
}

async fn streaming<F, Fut>(duration: Duration, mut one: F) -> StreamStats
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(Duration, Duration), String>>,
{
    let mut s = StreamStats {
        first: Stats::new(),
        total: Stats::new(),
    };
    let start = Instant::now();
    for _ in 0..MAX_PER_PHASE {
        if start.elapsed() >= duration {
            break;
        }
        match one().await {
            Ok((first, total)) => {
                s.first.record(first, Ok(()));
                s.total.record(total, Ok(()));
            }
            Err(e) => {
                s.first.record(Duration::ZERO, Err(e.clone()));
                s.total.record(Duration::ZERO, Err(e));
            }
        }
    }
    s.first.elapsed = start.elapsed();
    s.total.elapsed = s.first.elapsed;
    s
}

/// The `_sum` and `_count` of the worker's latency histograms, added over their label sets,
/// read from the Prometheus endpoint.
async fn scrape(http: &reqwest::Client, url: &str) -> Option<BTreeMap<String, f64>> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = key.split('{').next().unwrap_or(key);
        if (name.ends_with("_sum") || name.ends_with("_count"))
            && let Ok(v) = value.parse::<f64>()
        {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    Some(out)
}

/// The mean of histogram `name` between two scrapes, in µs.
fn mean_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    name: &str,
) -> Option<f64> {
    let d =
        |k: String| after.get(&k).copied().unwrap_or(0.0) - before.get(&k).copied().unwrap_or(0.0);
    let count = d(format!("{name}_count"));
    (count > 0.0).then(|| d(format!("{name}_sum")) / count * 1e6)
}

fn runtime(name: &str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A typical small chat request: a system prompt, a short history and a question.
fn chat_body(stream: bool) -> Bytes {
    let mut v = serde_json::json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And roughly how many people live there, city proper?"}
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "user": "bench-user-42"
    });
    if stream {
        v["stream"] = serde_json::Value::Bool(true);
    }
    Bytes::from(serde_json::to_vec(&v).expect("JSON"))
}

fn header_row() {
    println!(
        "  {:<34} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} │ {:>6} {:>6} {:>6} {:>6}",
        "",
        "ok",
        "req/s",
        "p50",
        "p90",
        "p99",
        "mean",
        "max",
        "errors",
        "gw",
        "fake",
        "nats",
        "gen"
    );
}

fn row(name: &str, s: &Stats) {
    println!(
        "  {:<34} {:>8} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7} │ {}",
        name,
        s.ok(),
        s.rps(),
        s.p(0.5),
        s.p(0.9),
        s.p(0.99),
        s.mean(),
        s.hist.max() as f64 / 1000.0,
        s.errors,
        cpu_cells(s.cpu)
    );
    if let Some(e) = &s.first_error {
        println!(
            "    first error: {}",
            e.chars().take(200).collect::<String>()
        );
    }
}

/// The CPU µs per request of each part, or blanks.
fn cpu_cells(cpu: Option<[f64; 4]>) -> String {
    match cpu {
        Some(c) => format!("{:>6.1} {:>6.1} {:>6.1} {:>6.1}", c[0], c[1], c[2], c[3]),
        None => format!("{:>6} {:>6} {:>6} {:>6}", "-", "-", "-", "-"),
    }
}

fn verdict(smoke: bool, ok: bool) -> &'static str {
    match (smoke, ok) {
        (true, _) => "not judged in this run",
        (false, true) => "meets",
        (false, false) => "MISSES",
    }
}

fn main() {
    let settings = Settings::from_env();
    let metrics_url = settings.telemetry.then(|| {
        llmbus::telemetry::init_logging(llmbus::telemetry::LogFormat::Text);
        let port = free_port().expect("a free port for metrics");
        llmbus::worker::ops::install_metrics(([127, 0, 0, 1], port).into())
            .expect("the Prometheus recorder");
        format!("http://127.0.0.1:{port}/metrics")
    });

    // The NATS server.
    let store = tempfile::tempdir().expect("a temporary JetStream store");
    let nats = (0..5)
        .find_map(|_| LocalNats::start(free_port().ok()?, store.path()).ok())
        .expect("nats-server starts (is it installed?)");
    let url = nats.url();

    // The parts, each on its own runtime.
    let fake_rt = runtime("fake", 1);
    let gw_rt = runtime("gateway", settings.gw_threads);
    let client_rt = runtime("client", 1);

    let fake = fake_rt.block_on(FakeProvider::start());
    let yaml = format!(
        r#"
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {base}
      api_key: {API_KEY}
llmbus:
  metrics_listen: null
"#,
        base = fake.url()
    );
    let config = Config::from_yaml(&yaml, "bench.yaml")
        .expect("the bench config loads")
        .config;
    let worker = gw_rt.block_on(async {
        let client = async_nats::connect(&url).await.expect("worker connects");
        Worker::start(&config, client).await.expect("worker starts")
    });
    // Floor A's responder lives on the gateway's runtime, as the worker would.
    let (nc, mut sub) = gw_rt.block_on(async {
        let nc = async_nats::connect(&url).await.expect("echo connects");
        let sub = nc.subscribe(ECHO_SUBJECT).await.expect("echo subscribes");
        nc.flush().await.expect("echo flushes");
        (nc, sub)
    });
    let echo = gw_rt.spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = nc.publish(reply, m.payload).await;
            }
        }
    });
    let load = client_rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..settings.conns {
            let nc = async_nats::connect(&url).await.expect("client connects");
            clients.push(LlmClient::new(nc, "llm"));
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        Load {
            clients: Arc::new(clients),
            http,
            direct_url: format!("{}/chat/completions", fake.url()).into(),
            body: chat_body(false),
            stream_body: chat_body(true),
        }
    });

    // One job end to end first: the setup works, and the answer is the fake's.
    client_rt.block_on(async {
        let r = load
            .client(0)
            .complete(HeaderMap::new(), load.body.clone(), PATIENCE)
            .await
            .expect("a first reply");
        let v = r.json();
        assert_eq!(r.status, 200, "first job: {v}");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
        assert!(content.starts_with("echo: "), "first job: {v}");
    });

    let s = &settings;
    println!();
    println!(
        "llmbus load benchmark{} — loopback, {} CPUs, request {} B, reply ≈ {} B, phase {:.1} s",
        if s.smoke {
            " (smoke pass: not a measurement)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.body.len(),
        client_rt.block_on(async {
            load.client(0)
                .complete(HeaderMap::new(), load.body.clone(), PATIENCE)
                .await
                .map_or(0, |r| r.body.len())
        }),
        s.phase.as_secs_f64()
    );
    println!(
        "  runtimes: gateway {} thread(s), fake provider 1, load generator 1; {} client NATS connection(s); telemetry {}",
        s.gw_threads,
        s.conns,
        if s.telemetry {
            "on (info logs, Prometheus recorder)"
        } else {
            "off"
        }
    );
    println!(
        "  latencies in µs; right of │: CPU µs per request of the gateway's threads, the fake's, \
         nats-server's, and the load generator's (the rest of this process)"
    );

    let mut singles: BTreeMap<&str, Stats> = BTreeMap::new();
    if s.runs("floors") || s.runs("single") {
        println!();
        println!("1 client, sequential request/reply");
        header_row();
    }
    if s.runs("floors") {
        for (key, name, target) in [
            ("echo", "floor A: NATS echo", Target::Echo),
            ("direct", "floor B: direct HTTP to the fake", Target::Direct),
        ] {
            let st = client_rt.block_on(async {
                sequential(&load, target, s.warmup()).await;
                sequential(&load, target, s.phase).await
            });
            row(name, &st);
            singles.insert(key, st);
        }
    }
    if s.runs("single") {
        let (st, inside) = client_rt.block_on(async {
            sequential(&load, Target::Gateway, s.warmup()).await;
            let before = match &metrics_url {
                Some(url) => scrape(&load.http, url).await,
                None => None,
            };
            let st = sequential(&load, Target::Gateway, s.phase).await;
            let after = match &metrics_url {
                Some(url) => scrape(&load.http, url).await,
                None => None,
            };
            (st, before.zip(after))
        });
        row("gateway (llmbus)", &st);
        if let Some((before, after)) = inside {
            let m = |name| mean_between(&before, &after, name).unwrap_or(f64::NAN);
            let total = m(llmbus::telemetry::REQUEST_SECONDS);
            let upstream = m(llmbus::telemetry::UPSTREAM_SECONDS);
            println!(
                "    inside the worker (its Prometheus histograms, means): receipt→reply {total:.1} µs \
                 = upstream call {upstream:.1} µs + llmbus {:.1} µs; the rest of the mean, {:.1} µs, \
                 is NATS and the client",
                m(llmbus::telemetry::OVERHEAD_SECONDS),
                st.mean() - total
            );
        }
        singles.insert("gateway", st);
    }
    if let (Some(a), Some(b), Some(g)) = (
        singles.get("echo"),
        singles.get("direct"),
        singles.get("gateway"),
    ) {
        let o50 = g.p(0.5) - a.p(0.5) - b.p(0.5);
        let o99 = g.p(0.99) - a.p(0.99) - b.p(0.99);
        let omean = g.mean() - a.mean() - b.mean();
        println!(
            "  overhead = gateway − (A + B):      p50 {o50:.1} µs   p99 {o99:.1} µs   mean {omean:.1} µs   \
             (target p50 ≤ {TARGET_OVERHEAD_US:.0} µs: {})",
            verdict(s.smoke, o50 <= TARGET_OVERHEAD_US)
        );
    }

    if s.runs("closed") {
        println!();
        println!(
            "{} clients, closed loop (each sends its next request when its reply came)",
            s.concurrency
        );
        header_row();
        let mut gateway_rps = 0.0;
        for (name, target) in [
            ("floor A: NATS echo", Target::Echo),
            ("floor B: direct HTTP to the fake", Target::Direct),
            ("gateway (llmbus)", Target::Gateway),
        ] {
            let st = client_rt.block_on(async {
                closed_loop(&load, target, s.concurrency, s.warmup()).await;
                closed_loop(&load, target, s.concurrency, s.phase).await
            });
            row(name, &st);
            if target == Target::Gateway {
                gateway_rps = st.rps();
            }
        }
        println!(
            "  gateway throughput {gateway_rps:.0} req/s (target ≥ {TARGET_RPS:.0} req/s with 64 clients: {})",
            verdict(s.smoke || s.concurrency != 64, gateway_rps >= TARGET_RPS)
        );
    }

    if s.runs("open") {
        println!();
        println!(
            "gateway, open loop (sends on schedule; latency from the scheduled send, and from the actual send)"
        );
        println!(
            "  {:>8} {:>8} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} │ {:>6} {:>6} {:>6} {:>6}",
            "offered",
            "sent",
            "achieved",
            "errors",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "p50 sent",
            "p99 sent",
            "max lag",
            "gw",
            "fake",
            "nats",
            "gen"
        );
        for &rate in &s.rates {
            let run = open_loop(&client_rt, &load, rate, s.phase);
            let f = &run.from_schedule;
            println!(
                "  {:>8} {:>8} {:>9.0} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>9.1} │ {}",
                run.offered,
                run.sent,
                f.rps(),
                f.errors,
                f.p(0.5),
                f.p(0.9),
                f.p(0.99),
                f.p(0.999),
                run.from_send.p(0.5),
                run.from_send.p(0.99),
                run.max_lag.as_secs_f64() * 1e6,
                cpu_cells(f.cpu),
            );
            if let Some(e) = &f.first_error {
                println!(
                    "    first error: {}",
                    e.chars().take(200).collect::<String>()
                );
            }
            // Let the worker drain before the next rate.
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "  (max lag: how far the generator thread fell behind its schedule, µs; \
             gw/fake/nats/gen: CPU µs per request sent)"
        );
    }

    if s.runs("stream") {
        println!();
        println!("1 client, streaming (\"stream\": true, the fake's default stream)");
        println!(
            "  {:<34} {:>8} {:>12} {:>12} {:>12} {:>12} {:>7}",
            "", "ok", "first p50", "first p99", "total p50", "total p99", "errors"
        );
        let direct = client_rt.block_on(async {
            streaming(s.warmup(), || load.direct_stream()).await;
            streaming(s.phase, || load.direct_stream()).await
        });
        let gateway = client_rt.block_on(async {
            streaming(s.warmup(), || load.gateway_stream()).await;
            streaming(s.phase, || load.gateway_stream()).await
        });
        for (name, st) in [
            ("direct SSE from the fake", &direct),
            ("gateway (llmbus), NATS chunks", &gateway),
        ] {
            println!(
                "  {:<34} {:>8} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>7}",
                name,
                st.total.ok(),
                st.first.p(0.5),
                st.first.p(0.99),
                st.total.p(0.5),
                st.total.p(0.99),
                st.total.errors
            );
            if let Some(e) = &st.total.first_error {
                println!(
                    "    first error: {}",
                    e.chars().take(200).collect::<String>()
                );
            }
        }
    }
    println!();

    gw_rt.block_on(async {
        echo.abort();
        worker.stop().await;
    });
    drop(load);
    drop(fake);
    client_rt.shutdown_timeout(Duration::from_secs(2));
    gw_rt.shutdown_timeout(Duration::from_secs(2));
    fake_rt.shutdown_timeout(Duration::from_secs(2));
    drop(nats);
}
