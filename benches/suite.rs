//! The performance suite: llmbus side by side with other gateways, on the same machine, the
//! same fake provider and the same load, one system at a time. One command prints the table:
//!
//! ```sh
//! cargo bench --bench suite
//! ```
//!
//! Each system runs as its own process (so its memory is its own) in front of the fake
//! OpenAI-compatible provider of the tests (in this process, on its own runtime); the load
//! generator runs here too. The method of public cross-gateway benchmarks:
//!
//! - **added latency at 1 client**, p50 and p99: the system's latency minus the matching
//!   floor (a direct HTTP call to the fake; for llmbus over NATS, a NATS echo round trip plus
//!   the direct call), paired: each round calls the floors and then the system, one after the
//!   other, and the percentiles are those of the rounds' differences, so a shared machine's
//!   drifts touch both alike;
//! - **req/s at 64 connections** (closed loop) and **throughput at tail bounds**: open-loop
//!   rates rising until the p99 (measured from the scheduled send, no coordinated omission)
//!   passes 10 ms; the highest rate whose p99 stays under 1 ms, 5 ms and 10 ms;
//! - **streaming**: 64-chunk streams, the time to first token over the direct stream's (for
//!   llmbus over NATS, plus an echo round trip), paired the same way, and the added time per
//!   chunk (from the medians of whole streams);
//! - **CPU per request** in the 64-connection phase: the system's process (from `/proc`), and
//!   for llmbus the NATS server's too (its usage stream, the spend aggregator's reads, the
//!   NATS path's messages), since on two cores every process's CPU is the others' loss;
//! - **memory**: RSS idle and after the run (and the descriptors then open). The leak rate
//!   over a long run is `cargo bench --bench soak`'s job.
//! - llmbus only: start-up to serving, and the RSS holding 10,000 concurrent streams.
//!
//! Systems: llmbus over NATS; llmbus's HTTP front in the worker (OpenAI-compatible, when the
//! binary has it); the LiteLLM proxy when `litellm` (with its `proxy` extra) is importable by
//! the Python in `LLMBUS_SUITE_LITELLM_PYTHON` (default `python3`); and any other gateway
//! given by path in `LLMBUS_SUITE_PEERS`: `name=command line` entries separated by `;`, where
//! the command line may use `{port}` (where it must serve OpenAI's
//! `POST /v1/chat/completions`), `{upstream}` (the fake's base URL, `http://127.0.0.1:N/v1`),
//! `{model}` and `{key}`, and `{config:PATH}`, replaced by a copy of the file at PATH with the
//! same placeholders filled in. A name `name@/v1/messages` measures the peer's Anthropic
//! Messages route instead (a pass-through such as LiteLLM's Rust server's), in front of the
//! fake's own `/v1/messages` (an echo in Anthropic's shape), which is then its floor; its
//! streams are not measured. Ratios are printed against llmbus. LiteLLM's Rust server, built
//! at `/work/peers/litellm-rust`:
//!
//! ```sh
//! LLMBUS_SUITE_PEERS='litellm-rust@/v1/messages=/work/peers/litellm-rust/target/release/lite --config {config:/work/peers/litellm-rust.yaml} --port {port}' \
//!     cargo bench --bench suite
//! ```
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LLMBUS_SUITE_SECS` | 4 | seconds per measured phase |
//! | `LLMBUS_SUITE_RATES` | 1000,2000,5000,8000,12000,16000,20000,25000 | open-loop ladder |
//! | `LLMBUS_SUITE_STREAMS` | 10000 | concurrent streams for the memory measure (0: skip) |
//! | `LLMBUS_SUITE_SYSTEMS` | all | comma list among `nats,http,litellm,<peer names>` |
//! | `LLMBUS_SUITE_CHUNK_GAP_US` | 0 | pause of the fake between stream chunks, in µs |
//!
//! Without `--bench` (as under `cargo test --all-targets`) it runs a smoke pass of llmbus
//! alone. Figures are printed, never asserted.

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;
mod support;

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use bytes::Bytes;
use fake_provider::{FakeProvider, Fault};
use futures::StreamExt;
use llmbus::{
    client::LlmClient,
    local_nats::{LocalNats, free_port},
};
use support::{Stats, WorkerProcess, cpu_seconds, rss_mb, runtime};
use tokio::runtime::Runtime;

const MODEL: &str = "gpt-4o-mini";
const KEY: &str = "sk-suite-0123456789";
const ECHO: &str = "suite.echo";
const PATIENCE: Duration = Duration::from_secs(10);
const CHUNKS: usize = 64;

/// What the run was asked to do.
struct Settings {
    secs: Duration,
    rates: Vec<u64>,
    streams: usize,
    systems: Option<Vec<String>>,
    smoke: bool,
}

impl Settings {
    fn from_env() -> Self {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        let list = |v: String| -> Vec<u64> {
            v.split(',').filter_map(|r| r.trim().parse().ok()).collect()
        };
        Self {
            secs: Duration::from_secs_f64(
                var("LLMBUS_SUITE_SECS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(if smoke { 0.3 } else { 4.0 }),
            ),
            rates: var("LLMBUS_SUITE_RATES").map(list).unwrap_or_else(|| {
                if smoke {
                    vec![200]
                } else {
                    vec![1000, 2000, 5000, 8000, 12000, 16000, 20000, 25000]
                }
            }),
            streams: var("LLMBUS_SUITE_STREAMS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(if smoke { 100 } else { 10_000 }),
            systems: var("LLMBUS_SUITE_SYSTEMS")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
            smoke,
        }
    }

    fn wants(&self, system: &str) -> bool {
        self.systems
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == system || x == "all"))
    }
}

/// How a request reaches the system under test.
#[derive(Clone)]
enum Lane {
    /// Plain NATS request/reply to an echo responder (floor).
    Echo(LlmClient),
    /// llmbus over NATS.
    Nats(LlmClient),
    /// An OpenAI-compatible HTTP endpoint (the fake itself, llmbus's front, a peer); with
    /// `messages`, an Anthropic Messages endpoint (a peer's `/v1/messages` pass-through, and
    /// its floor, the fake's own `/v1/messages`).
    Http {
        http: reqwest::Client,
        url: Arc<str>,
        messages: bool,
    },
}

/// The same conversation as [`body`], as an Anthropic Messages request.
fn messages_body() -> Bytes {
    let v = serde_json::json!({
        "model": MODEL,
        "system": "You are a concise assistant. Answer in one sentence.",
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And roughly how many people live there, city proper?"}
        ],
        "max_tokens": 64,
        "temperature": 0.2
    });
    Bytes::from(v.to_string())
}

/// The fake's `/v1/messages`: Anthropic's answer shape, doing the work the OpenAI fake does
/// (read the JSON, echo the last user message, count tokens, write the JSON).
async fn fake_messages(body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let messages = v["messages"].as_array().cloned().unwrap_or_default();
    let input: usize = messages
        .iter()
        .map(|m| 4 + m["content"].as_str().map_or(0, |c| c.len().div_ceil(4)))
        .sum::<usize>()
        + 3;
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let text = format!("echo: {last}");
    let answer = serde_json::json!({
        "id": format!("msg_{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()),
        "type": "message",
        "role": "assistant",
        "model": v["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": text.len().div_ceil(4),
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

/// Serves [`fake_messages`] on a free loopback port; its base URL.
async fn start_fake_messages() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/v1/messages", axum::routing::post(fake_messages));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn body(stream: bool) -> Bytes {
    let mut v = serde_json::json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And roughly how many people live there, city proper?"}
        ],
        "max_tokens": 64,
        "temperature": 0.2
    });
    if stream {
        v["stream"] = true.into();
    }
    Bytes::from(v.to_string())
}

impl Lane {
    async fn call(&self) -> Result<(), String> {
        match self {
            Lane::Echo(c) => {
                let r = c
                    .request(ECHO.to_string(), HeaderMap::new(), body(false), PATIENCE)
                    .await
                    .map_err(|e| e.to_string())?;
                (!r.body.is_empty())
                    .then_some(())
                    .ok_or("empty echo".into())
            }
            Lane::Nats(c) => {
                let r = c
                    .complete(HeaderMap::new(), body(false), PATIENCE)
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!(
                        "Llm-Status {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ))
                }
            }
            Lane::Http {
                http,
                url,
                messages,
            } => {
                let r = http
                    .post(&**url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .header("anthropic-version", "2023-06-01")
                    .body(if *messages {
                        messages_body()
                    } else {
                        body(false)
                    })
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let b = r.bytes().await.map_err(|e| e.to_string())?;
                if status.is_success() && !b.is_empty() {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&b)))
                }
            }
        }
    }

    /// One stream: (time to the first content, total).
    async fn stream(&self) -> Result<(Duration, Duration), String> {
        let start = Instant::now();
        let mut first = None;
        match self {
            Lane::Echo(_) => Err("no streams on the echo".into()),
            Lane::Nats(c) => {
                let mut reader = c
                    .stream(HeaderMap::new(), body(true), PATIENCE)
                    .await
                    .map_err(|e| e.to_string())?;
                while let Some(m) = reader.next().await {
                    let m = m.map_err(|e| e.to_string())?;
                    if m.body.is_empty() {
                        return if m.status == 200 {
                            Ok((first.unwrap_or_default(), start.elapsed()))
                        } else {
                            Err(format!("sentinel {}", m.status))
                        };
                    }
                    if first.is_none() && has_content(&m.body) {
                        first = Some(start.elapsed());
                    }
                }
                Err("no sentinel".into())
            }
            Lane::Http { messages: true, .. } => Err("streams: OpenAI lanes only".into()),
            Lane::Http { http, url, .. } => {
                let r = http
                    .post(&**url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body(true))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("HTTP {}", r.status()));
                }
                let mut bytes = r.bytes_stream();
                let mut text = Vec::new();
                let mut seen = 0;
                while let Some(b) = bytes.next().await {
                    text.extend_from_slice(&b.map_err(|e| e.to_string())?);
                    // Each complete `data: {...}` event, looked at once.
                    while first.is_none()
                        && let Some(end) = text[seen..].windows(2).position(|w| w == b"\n\n")
                    {
                        let event = &text[seen..seen + end];
                        if let Some(json) = event.strip_prefix(b"data: ")
                            && has_content(json)
                        {
                            first = Some(start.elapsed());
                        }
                        seen += end + 2;
                    }
                }
                if text.windows(6).any(|w| w == b"[DONE]") {
                    Ok((first.unwrap_or_default(), start.elapsed()))
                } else {
                    Err("no [DONE]".into())
                }
            }
        }
    }
}

/// True when `json` is a chat chunk whose first choice brings text.
fn has_content(json: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(json).is_ok_and(|v| {
        v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    })
}

/// One system's figures.
#[derive(Default)]
struct Figures {
    name: String,
    single: Stats,
    /// Paired added latency at one client, µs, sorted (see [`sequential`]).
    added: Vec<f64>,
    /// Paired added time to first token, µs, sorted (see [`streams`]).
    added_ttft: Vec<f64>,
    closed: Stats,
    /// (offered rate, p99 µs from the schedule, errors)
    ladder: Vec<(u64, f64, u64)>,
    ttft: Stats,
    stream_total: Stats,
    rss_idle: f64,
    rss_after: f64,
    /// The system's CPU time per request in the 64-connection phase, µs; and the NATS
    /// server's, for llmbus.
    cpu_per_request: Option<f64>,
    nats_cpu_per_request: Option<f64>,
    started_ms: Option<f64>,
    streams_rss: Option<(usize, f64)>,
}

impl Figures {
    fn best_rate(&self, p99_us: f64) -> Option<u64> {
        self.ladder
            .iter()
            .filter(|(_, p99, errors)| *p99 <= p99_us && *errors == 0)
            .map(|(r, _, _)| *r)
            .max()
    }
}

/// One client, one call at a time. With `floors`, each round first calls every floor lane,
/// then the system, and keeps the system's time minus the floors' of the same round (µs,
/// sorted): the drifts of a shared machine then touch the system and its floors alike.
fn sequential(rt: &Runtime, lane: &Lane, floors: &[&Lane], secs: Duration) -> (Stats, Vec<f64>) {
    rt.block_on(async {
        let mut s = Stats::default();
        let mut added = Vec::new();
        // Warm-up: connections, caches.
        for _ in 0..200 {
            for floor in floors {
                let _ = floor.call().await;
            }
            let _ = lane.call().await;
        }
        let start_measure = Instant::now();
        'rounds: while start_measure.elapsed() < secs {
            let mut floor_time = Duration::ZERO;
            for floor in floors {
                let t = Instant::now();
                if floor.call().await.is_err() {
                    continue 'rounds;
                }
                floor_time += t.elapsed();
            }
            let t = Instant::now();
            let r = lane.call().await;
            let took = t.elapsed();
            if r.is_ok() && !floors.is_empty() {
                added.push((took.as_secs_f64() - floor_time.as_secs_f64()) * 1e6);
            }
            s.record(took, r);
        }
        s.elapsed = start_measure.elapsed();
        added.sort_by(f64::total_cmp);
        (s, added)
    })
}

fn closed_loop(rt: &Runtime, lane: &Lane, tasks: usize, secs: Duration) -> Stats {
    rt.block_on(async {
        let deadline = Instant::now() + secs;
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let lane = lane.clone();
                tokio::spawn(async move {
                    let mut s = Stats::default();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let r = lane.call().await;
                        s.record(t.elapsed(), r);
                    }
                    s
                })
            })
            .collect();
        let mut all = Stats::default();
        for h in handles {
            all.merge(&h.await.expect("a load task"));
        }
        all.elapsed = start.elapsed();
        all
    })
}

/// Jobs at `rate` per second for `secs`, on a schedule that does not wait for replies;
/// latency from the scheduled send time.
fn open_loop(rt: &Runtime, lane: &Lane, rate: u64, secs: Duration) -> Stats {
    let n = ((rate as f64 * secs.as_secs_f64()) as u64).max(1);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let results = Arc::new(Mutex::new(Stats::default()));
    let start = Instant::now() + Duration::from_millis(5);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(Duration::from_micros(200)));
        }
        let lane = lane.clone();
        let results = results.clone();
        tasks.push(rt.spawn(async move {
            let r = lane.call().await;
            results.lock().unwrap().record(due.elapsed(), r);
        }));
    }
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut s = Arc::try_unwrap(results).ok().unwrap().into_inner().unwrap();
    s.elapsed = start.elapsed();
    s
}

/// Streams one at a time: (time to first token, total, paired added time to first token in
/// µs, sorted). With `floors`, each round first runs the floors (a stream's first token, or
/// an echo's round trip), as [`sequential`] does.
fn streams(
    rt: &Runtime,
    lane: &Lane,
    floors: &[&Lane],
    secs: Duration,
) -> (Stats, Stats, Vec<f64>) {
    rt.block_on(async {
        let (mut first, mut total) = (Stats::default(), Stats::default());
        let mut added = Vec::new();
        for _ in 0..20 {
            let _ = lane.stream().await;
        }
        let start = Instant::now();
        'rounds: while start.elapsed() < secs {
            let mut floor_time = Duration::ZERO;
            for floor in floors {
                let t = Instant::now();
                floor_time += match floor {
                    Lane::Echo(_) => match floor.call().await {
                        Ok(()) => t.elapsed(),
                        Err(_) => continue 'rounds,
                    },
                    _ => match floor.stream().await {
                        Ok((f, _)) => f,
                        Err(_) => continue 'rounds,
                    },
                };
            }
            match lane.stream().await {
                Ok((f, t)) => {
                    if !floors.is_empty() {
                        added.push((f.as_secs_f64() - floor_time.as_secs_f64()) * 1e6);
                    }
                    first.record(f, Ok(()));
                    total.record(t, Ok(()));
                }
                Err(e) => {
                    first.record(Duration::ZERO, Err(e.clone()));
                    total.record(Duration::ZERO, Err(e));
                }
            }
        }
        first.elapsed = start.elapsed();
        total.elapsed = first.elapsed;
        added.sort_by(f64::total_cmp);
        (first, total, added)
    })
}

/// Runs the standard phases against `lane`.
fn measure(
    rt: &Runtime,
    name: &str,
    (lane, floors): (&Lane, &[&Lane]),
    s: &Settings,
    (pid, nats_pid): (Option<u32>, Option<u32>),
) -> Figures {
    let mut f = Figures {
        name: name.to_string(),
        rss_idle: pid.map_or(0.0, rss_mb),
        ..Default::default()
    };
    eprintln!("  {name}: 1 client");
    (f.single, f.added) = sequential(rt, lane, floors, s.secs);
    eprintln!("  {name}: 64 connections");
    let (cpu, nats_cpu) = (pid.map(cpu_seconds), nats_pid.map(cpu_seconds));
    f.closed = closed_loop(rt, lane, 64, s.secs);
    let per_request = |pid: Option<u32>, before: Option<f64>| {
        pid.zip(before).map(|(pid, before)| {
            (cpu_seconds(pid) - before) * 1e6
                / (f.closed.hist.len() + f.closed.errors).max(1) as f64
        })
    };
    f.cpu_per_request = per_request(pid, cpu);
    f.nats_cpu_per_request = per_request(nats_pid, nats_cpu);
    for &rate in &s.rates {
        eprintln!("  {name}: open loop at {rate}/s");
        let o = open_loop(rt, lane, rate, s.secs);
        let p99 = o.p(0.99);
        f.ladder.push((rate, p99, o.errors));
        if p99 > 10_000.0 || o.errors > 0 {
            break;
        }
    }
    if !matches!(lane, Lane::Echo(_) | Lane::Http { messages: true, .. }) {
        eprintln!("  {name}: streams of {CHUNKS} chunks");
        (f.ttft, f.stream_total, f.added_ttft) = streams(rt, lane, floors, s.secs);
    }
    f.rss_after = pid.map_or(0.0, rss_mb);
    if let Some(pid) = pid {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        eprintln!(
            "  {name}: RSS {:.0} MB with {fds} file descriptors open",
            f.rss_after
        );
    }
    f
}

/// A peer gateway process; killed when dropped.
struct Peer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fills the placeholders of a peer's command line (and of the config files it names).
fn fill(text: &str, port: u16, upstream: &str, dir: &std::path::Path) -> String {
    let mut out = text
        .replace("{port}", &port.to_string())
        .replace("{upstream}", upstream)
        .replace("{model}", MODEL)
        .replace("{key}", KEY);
    while let Some(at) = out.find("{config:") {
        let end = out[at..].find('}').map_or(out.len(), |e| at + e);
        let path = &out[at + 8..end];
        let template = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("peer config template {path}: {e}"));
        let copy = dir.join(format!("config-{at}.yaml"));
        std::fs::write(&copy, fill(&template, port, upstream, dir)).expect("write a peer config");
        out.replace_range(at..=end.min(out.len() - 1), &copy.display().to_string());
    }
    out
}

/// Starts a peer and waits until it answers a chat completion (two minutes at most).
fn start_peer(
    rt: &Runtime,
    name: &str,
    command: &str,
    upstream: &str,
    path: &str,
) -> Option<(Peer, Lane)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port().expect("a free port");
    let line = fill(command, port, upstream, dir.path());
    let mut parts = line.split_whitespace();
    let program = parts.next()?;
    let child = Command::new(program)
        .args(parts)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("  {name}: could not start `{line}`: {e}"))
        .ok()?;
    let peer = Peer { child, _dir: dir };
    let lane = Lane::Http {
        http: reqwest::Client::new(),
        url: format!("http://127.0.0.1:{port}{path}").into(),
        messages: path.ends_with("/messages"),
    };
    let ready = rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            if lane.call().await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    });
    if !ready {
        eprintln!("  {name}: did not answer within two minutes; skipped");
        return None;
    }
    Some((peer, lane))
}

/// The LiteLLM proxy's command line, when its Python has `litellm[proxy]`.
fn litellm_command() -> Option<String> {
    let python = std::env::var("LLMBUS_SUITE_LITELLM_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import litellm.proxy.proxy_server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("llmbus-suite-litellm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let template = dir.join("litellm.yaml");
    std::fs::write(
        &template,
        "model_list:\n  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n      api_base: {upstream}\n      api_key: {key}\ngeneral_settings:\n  dangerously_permit_weak_or_unset_master_key: true\n",
    )
    .ok()?;
    Some(format!(
        "env LITELLM_LOCAL_MODEL_COST_MAP=True {python} -m litellm.proxy.proxy_cli --config {{config:{}}} --port {{port}} --host 127.0.0.1 --num_workers 1",
        template.display()
    ))
}

/// Resident memory with `n` streams held open at once (upstream chunks 10 s apart).
fn held_streams(rt: &Runtime, nats_url: &str, worker: &WorkerProcess, n: usize) -> f64 {
    rt.block_on(async {
        let nc = async_nats::ConnectOptions::new()
            .subscription_capacity(1024)
            .connect(nats_url)
            .await
            .expect("connect");
        let client = LlmClient::new(nc, "llm");
        let mut body: serde_json::Value = serde_json::from_slice(&body(true)).unwrap();
        body["model"] = "held".into();
        let payload = Bytes::from(body.to_string());
        let mut readers = Vec::with_capacity(n);
        for _ in 0..n {
            match client
                .stream(HeaderMap::new(), payload.clone(), Duration::from_secs(120))
                .await
            {
                Ok(r) => readers.push(r),
                Err(e) => {
                    eprintln!("  streams: {e}");
                    break;
                }
            }
        }
        // Wait for the first chunk of each: every stream is then in flight in the worker.
        let mut held = Vec::with_capacity(readers.len());
        for mut r in readers {
            if let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(60), r.next()).await {
                held.push(r);
            }
        }
        let rss = worker.rss_mb();
        eprintln!("  {} streams held: RSS {rss:.1} MB", held.len());
        drop(held);
        rss
    })
}

fn main() {
    let s = Settings::from_env();
    let store = tempfile::tempdir().expect("a JetStream store");
    let nats = LocalNats::start(free_port().expect("a free port"), store.path())
        .expect("start nats-server (is it installed?)");
    let fake_rt = runtime("fake", 1);
    let load_rt = runtime("load", 1);
    let (fake, held) = fake_rt.block_on(async {
        let fake = FakeProvider::start().await;
        fake.keep_requests(false);
        fake.set_default(Fault::StreamChunks {
            pieces: (0..CHUNKS).map(|i| format!("w{i} ")).collect(),
            gap: Duration::from_micros(
                std::env::var("LLMBUS_SUITE_CHUNK_GAP_US").map_or(0, |v| v.parse().unwrap_or(0)),
            ),
        });
        let held = FakeProvider::start().await;
        held.keep_requests(false);
        held.set_default(Fault::StreamChunks {
            pieces: (0..3).map(|i| format!("w{i} ")).collect(),
            gap: Duration::from_secs(10),
        });
        (fake, held)
    });
    let upstream = fake.url();
    let direct = Lane::Http {
        http: reqwest::Client::new(),
        url: format!("{upstream}/chat/completions").into(),
        messages: false,
    };
    let messages_upstream = fake_rt.block_on(start_fake_messages());
    let direct_messages = Lane::Http {
        http: reqwest::Client::new(),
        url: format!("{messages_upstream}/v1/messages").into(),
        messages: true,
    };

    println!(
        "llmbus performance suite — {} on {} cores, {}",
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if s.smoke { "smoke pass" } else { "full run" }
    );
    eprintln!("floors:");
    let echo_rt = runtime("echo", 1);
    let echo_client = echo_rt.block_on(async {
        let nc = async_nats::connect(nats.url()).await.expect("connect");
        let mut sub = nc.subscribe(ECHO).await.expect("subscribe");
        nc.flush().await.expect("flush");
        let responder = nc.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = responder.publish(reply, m.payload).await;
                }
            }
        });
        LlmClient::new(
            async_nats::connect(nats.url()).await.expect("connect"),
            "llm",
        )
    });
    let floor_http = measure(
        &load_rt,
        "direct HTTP",
        (&direct, &[]),
        &Settings {
            rates: vec![],
            ..s_copy(&s)
        },
        (None, None),
    );
    let echo = Lane::Echo(echo_client);
    let (floor_echo, _) = sequential(&load_rt, &echo, &[], s.secs);

    let yaml = format!(
        "model_list:\n  - model_name: {MODEL}\n    litellm_params: {{model: openai/{MODEL}, api_base: \"{upstream}\", api_key: {KEY}}}\n  - model_name: held\n    litellm_params: {{model: openai/{MODEL}, api_base: \"{}\", api_key: {KEY}}}\nllmbus:\n  metrics_listen: null\n  max_in_flight: 20000\n",
        held.url()
    );
    let mut all = Vec::new();
    let mut starts = Vec::new();
    if s.wants("nats") {
        eprintln!("llmbus over NATS:");
        for _ in 0..5 {
            let w = WorkerProcess::start(&nats.url(), &yaml, "warn");
            starts.push(w.started_in.as_secs_f64() * 1000.0);
        }
        let worker = WorkerProcess::start(&nats.url(), &yaml, "warn");
        let client = load_rt.block_on(async {
            LlmClient::new(
                async_nats::connect(nats.url()).await.expect("connect"),
                "llm",
            )
        });
        let mut f = measure(
            &load_rt,
            "llmbus (NATS)",
            (&Lane::Nats(client), &[&direct, &echo]),
            &s,
            (Some(worker.pid()), nats.pid()),
        );
        starts.sort_by(f64::total_cmp);
        f.started_ms = starts.get(starts.len() / 2).copied();
        if s.streams > 0 {
            let rss = held_streams(&load_rt, &nats.url(), &worker, s.streams);
            f.streams_rss = Some((s.streams, rss));
        }
        all.push(f);
    }
    if s.wants("http") {
        eprintln!("llmbus HTTP front (in the worker, in process):");
        let port = free_port().expect("a free port");
        let worker = WorkerProcess::start(
            &nats.url(),
            &format!("{yaml}  http_listen: 127.0.0.1:{port}\n"),
            "warn",
        );
        let lane = Lane::Http {
            http: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{port}/v1/chat/completions").into(),
            messages: false,
        };
        let ready = load_rt.block_on(async {
            for _ in 0..400 {
                if lane.call().await.is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            false
        });
        if ready {
            all.push(measure(
                &load_rt,
                "llmbus (HTTP front, in process)",
                (&lane, &[&direct]),
                &s,
                (Some(worker.pid()), nats.pid()),
            ));
        } else {
            eprintln!("  the HTTP front did not answer; skipped");
        }
    }
    if s.wants("litellm")
        && !s.smoke
        && let Some(cmd) = litellm_command()
    {
        eprintln!("LiteLLM proxy:");
        if let Some((peer, lane)) =
            start_peer(&load_rt, "litellm", &cmd, &upstream, "/v1/chat/completions")
        {
            let pid = peer.child.id();
            all.push(measure(
                &load_rt,
                "LiteLLM proxy",
                (&lane, &[&direct]),
                &s,
                (Some(pid), None),
            ));
        }
    }
    if !s.smoke {
        for entry in std::env::var("LLMBUS_SUITE_PEERS")
            .unwrap_or_default()
            .split(';')
        {
            let Some((name, cmd)) = entry.split_once('=') else {
                continue;
            };
            // `name@/v1/messages=...`: the peer's Anthropic Messages pass-through, in front of
            // the fake's `/v1/messages` (its floor).
            let (name, path) = name
                .trim()
                .split_once('@')
                .unwrap_or((name.trim(), "/v1/chat/completions"));
            if !s.wants(name) {
                continue;
            }
            eprintln!("{name}:");
            let messages = path.ends_with("/messages");
            let upstream = if messages {
                messages_upstream.clone()
            } else {
                upstream.clone()
            };
            if let Some((peer, lane)) = start_peer(&load_rt, name, cmd.trim(), &upstream, path) {
                let pid = peer.child.id();
                let floor = if messages { &direct_messages } else { &direct };
                all.push(measure(
                    &load_rt,
                    &format!("{name} ({path})"),
                    (&lane, &[floor]),
                    &s,
                    (Some(pid), None),
                ));
            }
        }
    }
    report(&floor_http, &floor_echo, &all);
    drop((fake, held));
}

fn s_copy(s: &Settings) -> Settings {
    Settings {
        secs: s.secs,
        rates: s.rates.clone(),
        streams: s.streams,
        systems: s.systems.clone(),
        smoke: s.smoke,
    }
}

fn report(direct: &Figures, echo: &Stats, all: &[Figures]) {
    let us = |v: f64| format!("{v:.0} µs");
    let rate = |r: Option<u64>| r.map_or("-".to_string(), |r| format!("{r}"));
    println!();
    println!(
        "floors: direct HTTP p50 {} p99 {}; NATS echo p50 {} p99 {}; direct stream TTFT p50 {}, total p50 {}",
        us(direct.single.p(0.5)),
        us(direct.single.p(0.99)),
        us(echo.p(0.5)),
        us(echo.p(0.99)),
        us(direct.ttft.p(0.5)),
        us(direct.stream_total.p(0.5)),
    );
    println!();
    println!(
        "| system | added p50, 1 client | added p99, 1 client | req/s, 64 conns | CPU per request, 64 conns | req/s at p99 < 1 / 5 / 10 ms | added TTFT p50 | added per chunk | RSS idle → after | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let nats = f.name.contains("NATS");
        // Paired rounds when there are some; else the floors' own percentiles.
        let floor = |q: f64| direct.single.p(q) + if nats { echo.p(q) } else { 0.0 };
        let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        let added = |q: f64| match f.added.len() {
            0 => f.single.p(q) - floor(q),
            _ => at(&f.added, q),
        };
        let added_ttft = match f.added_ttft.len() {
            0 => f.ttft.p(0.5) - direct.ttft.p(0.5) - if nats { echo.p(0.5) } else { 0.0 },
            _ => at(&f.added_ttft, 0.5),
        };
        let per_chunk = (f.stream_total.p(0.5) - direct.stream_total.p(0.5)) / CHUNKS as f64;
        println!(
            "| {} | {} | {} | {:.0} | {} | {} / {} / {} | {} | {:.1} µs | {:.0} → {:.0} MB | {} |",
            f.name,
            us(added(0.5)),
            us(added(0.99)),
            f.closed.rps(),
            match (f.cpu_per_request, f.nats_cpu_per_request) {
                (Some(own), Some(nats)) => format!("{} + {} NATS", us(own), us(nats)),
                (Some(own), None) => us(own),
                _ => "-".to_string(),
            },
            rate(f.best_rate(1_000.0)),
            rate(f.best_rate(5_000.0)),
            rate(f.best_rate(10_000.0)),
            us(added_ttft),
            per_chunk,
            f.rss_idle,
            f.rss_after,
            f.single.errors + f.closed.errors + f.ttft.errors,
        );
    }
    if let Some(base) = all.iter().find(|f| f.name.contains("llmbus")) {
        println!();
        for f in all.iter().filter(|f| !std::ptr::eq(*f, base)) {
            println!(
                "{} vs llmbus: {:.3}x the req/s at 64 connections, {:.1}x the RSS after the run",
                f.name,
                f.closed.rps() / base.closed.rps().max(1e-9),
                f.rss_after / base.rss_after.max(1e-9)
            );
        }
    }
    for f in all {
        if let Some(ms) = f.started_ms {
            println!("{}: start-up to serving (median of 5) {ms:.0} ms", f.name);
        }
        if let Some((n, rss)) = f.streams_rss {
            println!("{}: {n} concurrent streams held in {rss:.0} MB RSS", f.name);
        }
        for (rate, p99, errors) in &f.ladder {
            println!(
                "  {}: open loop {rate}/s → p99 {p99:.0} µs, {errors} errors",
                f.name
            );
        }
    }
}
