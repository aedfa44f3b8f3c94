//! The HTTP front's added latency: the same chat request sent straight to the fake provider over
//! HTTP, and through llmbus's OpenAI-compatible HTTP front — inside the worker (its groups'
//! jobs in process, as `llmbus serve --http` runs them) and through `llmbus front` (a separate
//! process with its own connection, over NATS) — at one client (sequential) and in an open
//! loop at a fixed rate (2,000 req/s by default).
//! llmbus's own NATS client path is measured too, for reference.
//!
//! Everything runs on loopback: a private `nats-server`, the fake provider of the tests, one
//! worker with its HTTP front (each part on its own tokio runtime, as if it were its own
//! process), the `llmbus` binary as `llmbus front`, and the load generator. Added latency =
//! path − direct HTTP, at p50 and p99. Open-loop latency is measured from the scheduled send
//! time (no coordinated omission).
//!
//! Run: `cargo bench --bench http`. Environment: `LLMBUS_BENCH_SECS` (seconds per phase,
//! default 3), `LLMBUS_BENCH_RATE` (open-loop req/s, default 2000). Without `--bench` (as under
//! `cargo test --all-targets`) it runs a short smoke pass that measures nothing.

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;
// Shared with the tests, which use more of it.
#[allow(dead_code)]
#[path = "../tests/support/llmbus_process.rs"]
mod llmbus_process;

/// The same allocator as the `llmbus` binary, so the figures are the binary's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use bytes::Bytes;
use hdrhistogram::Histogram;
use llmbus::{
    Worker,
    client::LlmClient,
    config::Config,
    http::{Backend, HttpServer, HttpSettings},
    local_nats::{LocalNats, free_port},
};
use tokio::runtime::Runtime;

use fake_provider::FakeProvider;
use llmbus_process::LlmbusProcess;

const MODEL: &str = "gpt-4o-mini";
const API_KEY: &str = "sk-bench-0123456789";
const PATIENCE: Duration = Duration::from_secs(5);
/// The open-loop generator's shortest sleep.
const MIN_GAP: Duration = Duration::from_micros(200);
/// A bound on every loop.
const MAX_PER_PHASE: u64 = 5_000_000;

/// What a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Straight to the fake over HTTP: the floor.
    Direct,
    /// llmbus's Rust NATS client to the worker.
    Nats,
    /// The HTTP front inside the worker.
    InWorker,
    /// `llmbus front`, a separate process.
    Front,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct HTTP to the fake (floor)",
            Path::Nats => "llmbus over NATS (Rust client)",
            Path::InWorker => "HTTP front in the worker",
            Path::Front => "llmbus front (separate process)",
        }
    }
}

#[derive(Clone)]
struct Load {
    http: reqwest::Client,
    nats: LlmClient,
    direct: Arc<str>,
    in_worker: Arc<str>,
    front: Arc<str>,
    body: Bytes,
}

impl Load {
    async fn call(&self, path: Path) -> Result<(), String> {
        let url = match path {
            Path::Nats => {
                let r = self
                    .nats
                    .complete(HeaderMap::new(), self.body.clone(), PATIENCE)
                    .await
                    .map_err(|e| e.to_string())?;
                return if r.status == 200 && !r.body.is_empty() {
                    Ok(())
                } else {
                    Err(format!("Llm-Status {}", r.status))
                };
            }
            Path::Direct => &self.direct,
            Path::InWorker => &self.in_worker,
            Path::Front => &self.front,
        };
        let response = self
            .http
            .post(&**url)
            .bearer_auth(API_KEY)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .timeout(PATIENCE)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() || body.is_empty() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(())
    }
}

struct Stats {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Stats {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds"),
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
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

    /// Percentile in µs.
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn rps(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn sequential(load: &Load, path: Path, duration: Duration) -> Stats {
    let mut stats = Stats::new();
    let start = Instant::now();
    for _ in 0..MAX_PER_PHASE {
        if start.elapsed() >= duration {
            break;
        }
        let t = Instant::now();
        let r = load.call(path).await;
        stats.record(t.elapsed(), r);
    }
    stats.elapsed = start.elapsed();
    stats
}

/// Sends at `rate` per second for `duration` on a schedule that does not wait for replies; a
/// plain thread keeps the schedule and spawns each request onto the client runtime.
fn open_loop(rt: &Runtime, load: &Load, path: Path, rate: u64, duration: Duration) -> Stats {
    let n = ((rate as f64 * duration.as_secs_f64()) as u64).clamp(1, MAX_PER_PHASE);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let results = Arc::new(Mutex::new(Stats::new()));
    let start = Instant::now() + Duration::from_millis(5);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(MIN_GAP));
        }
        let load = load.clone();
        let results = results.clone();
        tasks.push(rt.spawn(async move {
            let r = load.call(path).await;
            let done = Instant::now();
            results.lock().expect("results lock").record(done - due, r);
        }));
    }
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut stats = Arc::try_unwrap(results)
        .ok()
        .expect("every task ended")
        .into_inner()
        .expect("results lock");
    stats.elapsed = start.elapsed();
    stats
}

fn runtime(name: &str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn chat_body() -> Bytes {
    let v = serde_json::json!({
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
    Bytes::from(serde_json::to_vec(&v).expect("JSON"))
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let var = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(default)
    };
    let phase = Duration::from_secs_f64(
        var("LLMBUS_BENCH_SECS", if smoke { 0.2 } else { 3.0 }).clamp(0.05, 600.0),
    );
    let rate = var("LLMBUS_BENCH_RATE", if smoke { 100.0 } else { 2000.0 }).max(1.0) as u64;
    let warmup = phase / 3;

    let store = tempfile::tempdir().expect("a temporary JetStream store");
    let nats = (0..5)
        .find_map(|_| LocalNats::start(free_port().ok()?, store.path()).ok())
        .expect("nats-server starts (is it installed?)");
    let url = nats.url();

    let fake_rt = runtime("fake", 1);
    let gw_rt = runtime("gateway", 2);
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
    let (worker, in_worker) = gw_rt.block_on(async {
        let nc = async_nats::connect(&url).await.expect("worker connects");
        let worker = Worker::start(&config, nc.clone())
            .await
            .expect("worker starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut backend = Backend::new(nc, "llm").await.expect("backend");
        // As `llmbus serve --http`: the worker's groups run in process.
        backend.serve_locally(worker.local_jobs());
        let http = HttpServer::start(listener, backend, HttpSettings::default(), None)
            .expect("the in-worker HTTP front");
        (worker, http)
    });
    let front = LlmbusProcess::start(
        &["front", "--listen", "127.0.0.1:0", "--nats-url", &url],
        &[("RUST_LOG", "warn")],
    );
    let front_base = client_rt.block_on(front.wait_for_url(
        "llmbus front: OpenAI-compatible HTTP at",
        Duration::from_secs(60),
    ));
    let load = client_rt.block_on(async {
        let nc = async_nats::connect(&url).await.expect("client connects");
        Load {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .build()
                .expect("HTTP client"),
            nats: LlmClient::new(nc, "llm"),
            direct: format!("{}/chat/completions", fake.url()).into(),
            in_worker: format!("http://{}/v1/chat/completions", in_worker.addr()).into(),
            front: format!("{front_base}/v1/chat/completions").into(),
            body: chat_body(),
        }
    });
    let paths = [Path::Direct, Path::Nats, Path::InWorker, Path::Front];
    // Every path answers before anything is measured.
    client_rt.block_on(async {
        for p in paths {
            load.call(p)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", p.name()));
        }
    });

    println!();
    println!(
        "llmbus HTTP front benchmark{} — loopback, {} CPUs, request {} B, phase {:.1} s; latencies in µs",
        if smoke {
            " (smoke pass: not a measurement)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.body.len(),
        phase.as_secs_f64()
    );
    let mut single = Vec::new();
    let mut open = Vec::new();
    for p in paths {
        let s = client_rt.block_on(async {
            sequential(&load, p, warmup).await;
            sequential(&load, p, phase).await
        });
        single.push(s);
    }
    for p in paths {
        open_loop(&client_rt, &load, p, rate, warmup);
        open.push(open_loop(&client_rt, &load, p, rate, phase));
        std::thread::sleep(Duration::from_millis(200));
    }

    println!();
    println!(
        "  {:<38} │ {:>9} {:>9} {:>8} │ {:>9} {:>9} {:>9} {:>7}",
        "",
        "1 client",
        "",
        "",
        format!("{rate}/s"),
        "open loop",
        "",
        ""
    );
    println!(
        "  {:<38} │ {:>9} {:>9} {:>8} │ {:>9} {:>9} {:>9} {:>7}",
        "path", "p50", "p99", "errors", "p50", "p99", "achieved", "errors"
    );
    for (i, p) in paths.iter().enumerate() {
        let (s, o) = (&single[i], &open[i]);
        println!(
            "  {:<38} │ {:>9.1} {:>9.1} {:>8} │ {:>9.1} {:>9.1} {:>9.0} {:>7}",
            p.name(),
            s.p(0.5),
            s.p(0.99),
            s.errors,
            o.p(0.5),
            o.p(0.99),
            o.rps(),
            o.errors
        );
        for e in [&s.first_error, &o.first_error].into_iter().flatten() {
            println!(
                "    first error: {}",
                e.chars().take(200).collect::<String>()
            );
        }
    }
    for (i, label) in [
        (2, "added by the HTTP front in the worker"),
        (3, "added through llmbus front"),
    ] {
        println!(
            "  {:<38} │ {:>9.1} {:>9.1} {:>8} │ {:>9.1} {:>9.1} {:>9} {:>7}",
            label,
            single[i].p(0.5) - single[0].p(0.5),
            single[i].p(0.99) - single[0].p(0.99),
            "",
            open[i].p(0.5) - open[0].p(0.5),
            open[i].p(0.99) - open[0].p(0.99),
            "",
            ""
        );
    }
    println!(
        "  (added = path − direct HTTP at the same percentile; open-loop latency from the scheduled send)"
    );
    println!();

    front.terminate();
    client_rt.block_on(front.wait_exit(Duration::from_secs(10)));
    gw_rt.block_on(async {
        in_worker.stop(Duration::from_secs(2)).await;
        worker.stop().await;
    });
    drop(load);
    drop(fake);
    client_rt.shutdown_timeout(Duration::from_secs(2));
    gw_rt.shutdown_timeout(Duration::from_secs(2));
    fake_rt.shutdown_timeout(Duration::from_secs(2));
    drop(nats);
}
