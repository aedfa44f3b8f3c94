//! An idle-connection flood against `llmbus front`: 10,000 connections that send nothing (by
//! default; `LLMBUS_BENCH_FLOOD`), opened at once. It prints how many the front accepted, its
//! open file descriptors and resident memory while they are open, how long until the front
//! closed every one (its idle timeout, `LLMBUS_BENCH_IDLE_SECS`, default 20 s), and the latency
//! of normal chat requests (one client, sequential) before, during and after the flood.
//!
//! Everything runs on loopback: a private `nats-server`, the fake provider of the tests, one
//! worker in this process, and the `llmbus` binary as `llmbus front --config` with
//! `http_idle_timeout_secs` and `http_max_connections: 20000`. The front is its own process so
//! that its descriptors and memory are its own; this process raises its own open-file limit
//! for the client side.
//!
//! Run: `cargo bench --bench http_flood`. `LLMBUS_BENCH_SECS` sets each latency phase (default
//! 3 s). Without `--bench` it runs a small smoke pass.

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;
#[allow(dead_code)]
#[path = "../tests/support/llmbus_process.rs"]
mod llmbus_process;
mod support;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use llmbus::{
    Worker,
    config::Config,
    local_nats::{LocalNats, free_port},
};
use tokio::{io::AsyncReadExt, net::TcpStream, task::JoinSet};

use fake_provider::FakeProvider;
use llmbus_process::LlmbusProcess;

const MODEL: &str = "gpt-4o-mini";

fn main() {
    let smoke = support::smoke();
    let flood = support::env_count("LLMBUS_BENCH_FLOOD", if smoke { 200 } else { 10_000 });
    let idle = support::env_count("LLMBUS_BENCH_IDLE_SECS", if smoke { 1 } else { 20 });
    let secs = support::env_count("LLMBUS_BENCH_SECS", if smoke { 0 } else { 3 });
    let phase = if smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(secs.max(1))
    };
    let flood = flood.min(raise_nofile().saturating_sub(500)) as usize;

    let store = tempfile::tempdir().expect("a temporary JetStream store");
    let nats = (0..5)
        .find_map(|_| LocalNats::start(free_port().ok()?, store.path()).ok())
        .expect("nats-server starts (is it installed?)");
    let url = nats.url();
    let fake_rt = support::runtime("fake", 1);
    let worker_rt = support::runtime("worker", 1);
    let client_rt = support::runtime("client", 1);

    let fake = fake_rt.block_on(FakeProvider::start());
    fake.keep_requests(false);
    let yaml = format!(
        "model_list:\n  - model_name: {MODEL}\n    litellm_params: {{model: openai/{MODEL}, \
         api_base: \"{}\", api_key: sk-bench}}\nllmbus:\n  metrics_listen: null\n",
        fake.url()
    );
    let config = Config::from_yaml(&yaml, "bench.yaml").unwrap().config;
    let _worker = worker_rt.block_on(async {
        let nc = async_nats::connect(&url).await.expect("worker connects");
        Worker::start(&config, nc).await.expect("worker starts")
    });
    let front_yaml = store.path().join("front.yaml");
    std::fs::write(
        &front_yaml,
        format!(
            "llmbus:\n  http_idle_timeout_secs: {idle}\n  http_header_timeout_secs: {idle}\n  \
             http_max_connections: 20000\n"
        ),
    )
    .expect("write the front's config");
    let front_config = front_yaml.to_string_lossy().into_owned();
    let front = LlmbusProcess::start(
        &[
            "front",
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &url,
            "--config",
            &front_config,
        ],
        &[("RUST_LOG", "error")],
    );
    let base = client_rt.block_on(front.wait_for_url(
        "llmbus front: OpenAI-compatible HTTP at",
        Duration::from_secs(60),
    ));
    let addr = base.trim_start_matches("http://").to_string();
    let pid = front.pid();
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client");
    let url = format!("{base}/v1/chat/completions");
    let body = Bytes::from(
        serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]})
            .to_string(),
    );
    let load = |duration: Duration| client_rt.block_on(sequential(&http, &url, &body, duration));
    load(phase / 3); // warm-up

    println!();
    println!("HTTP front under an idle-connection flood (llmbus front, idle timeout {idle} s)");
    println!(
        "  front at rest: {} fds, {:.1} MB RSS",
        fds(pid),
        support::rss_mb(pid)
    );
    let before = load(phase);
    print_latency("before the flood", &before);

    let opened_at = Instant::now();
    let (conns, failed) = client_rt.block_on(open(&addr, flood));
    let open_secs = opened_at.elapsed().as_secs_f64();
    println!(
        "  opened {} idle connections in {open_secs:.2} s ({failed} failed to connect)",
        conns.len()
    );
    println!(
        "  front with the flood open: {} fds, {:.1} MB RSS",
        fds(pid),
        support::rss_mb(pid)
    );
    // Every connection waits for the front to close it, on the client runtime; each reports
    // how long it was open.
    let mut watchers = JoinSet::new();
    for (mut tcp, at) in conns {
        watchers.spawn_on(
            async move {
                let mut buf = [0u8; 512];
                let _ = tcp.read(&mut buf).await;
                at.elapsed()
            },
            client_rt.handle(),
        );
    }
    let during = load(phase);
    print_latency("during the flood", &during);

    let (lifetimes, still_open) = client_rt.block_on(async {
        let mut lifetimes = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("bounds");
        let limit = Duration::from_secs(idle * 3 + 30);
        let deadline = tokio::time::Instant::now() + limit;
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, watchers.join_next()).await {
            if let Ok(open_for) = r {
                lifetimes.saturating_record(open_for.as_millis() as u64);
            }
        }
        (lifetimes, watchers.len())
    });
    println!(
        "  the front closed {} of them; time each was open: min {:.2} s, p50 {:.2} s, \
         max {:.2} s (idle timeout {idle} s)",
        lifetimes.len(),
        lifetimes.min() as f64 / 1000.0,
        lifetimes.value_at_quantile(0.5) as f64 / 1000.0,
        lifetimes.max() as f64 / 1000.0,
    );
    if still_open > 0 {
        println!(
            "  {still_open} connections the client saw open were never accepted by the front \
             (the kernel's listen backlog overflowed; the front holds no descriptor for them)"
        );
    }
    watchers.abort_all();
    println!(
        "  front after the flood: {} fds, {:.1} MB RSS",
        fds(pid),
        support::rss_mb(pid)
    );
    let after = load(phase);
    print_latency("after the flood", &after);
    drop(front);
}

/// Opens `n` connections to `addr`, a few hundred at a time; returns them with the time each
/// opened, and how many failed.
async fn open(addr: &str, n: usize) -> (Vec<(TcpStream, Instant)>, usize) {
    let mut out = Vec::with_capacity(n);
    let mut failed = 0;
    let mut set = JoinSet::new();
    for i in 0..n {
        let addr = addr.to_string();
        set.spawn(async move { (TcpStream::connect(addr).await, Instant::now()) });
        if set.len() >= 256 || i + 1 == n {
            while let Some(r) = set.join_next().await {
                match r {
                    Ok((Ok(tcp), at)) => out.push((tcp, at)),
                    _ => failed += 1,
                }
            }
        }
    }
    (out, failed)
}

async fn sequential(
    http: &reqwest::Client,
    url: &str,
    body: &Bytes,
    duration: Duration,
) -> (Histogram<u64>, u64) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3).expect("bounds");
    let mut errors = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let ok = match http
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            hist.saturating_record(t.elapsed().as_nanos() as u64);
        } else {
            errors += 1;
        }
    }
    (hist, errors)
}

fn print_latency(label: &str, (hist, errors): &(Histogram<u64>, u64)) {
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  {label:<18} {:>6} requests  p50 {:>8.0} µs  p99 {:>8.0} µs  errors {errors}",
        hist.len(),
        us(0.5),
        us(0.99)
    );
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Raises this process's soft open-file limit to its hard limit (or 65,536 when allowed);
/// returns the soft limit now in force.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let want = lim.rlim_max.max(65_536);
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}
