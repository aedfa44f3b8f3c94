//! What the process-level benchmarks share: a worker run as its own process (so its memory
//! is its own), its resident memory read from `/proc`, and latency statistics.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// `llmbus serve` as a child process; killed when dropped.
pub struct WorkerProcess {
    child: Child,
    /// How long from spawning the process to its "worker is serving" log line.
    pub started_in: Duration,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts `llmbus serve --config <yaml>` on `nats_url` and waits (a minute at most) until
    /// it logs that it serves. `RUST_LOG` is `warn` unless `log` says otherwise, so that a long
    /// run's failures do not fill a pipe.
    pub fn start(nats_url: &str, yaml: &str, log: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("write the worker config");
        let began = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmbus"))
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--nats-url", nats_url])
            .env("RUST_LOG", format!("{log},llmbus::runtime::ingress=info"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the llmbus binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready, serving) = mpsc::channel();
        std::thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !told && line.contains("worker is serving") {
                    told = true;
                    let _ = ready.send(Ok(()));
                } else if !told {
                    let _ = ready.send(Err(line));
                }
            }
        });
        let deadline = began + Duration::from_secs(60);
        let mut log = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match serving.recv_timeout(left) {
                Ok(Ok(())) => break,
                Ok(Err(line)) => log.push(line),
                Err(_) => panic!(
                    "the worker did not serve within a minute:\n{}",
                    log.join("\n")
                ),
            }
        }
        Self {
            started_in: began.elapsed(),
            child,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in MB.
    pub fn rss_mb(&self) -> f64 {
        rss_mb(self.pid())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` in MB (`VmRSS` of `/proc/<pid>/status`; 0 elsewhere).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time process `pid` has used so far, user and system, in seconds (`/proc/<pid>/stat`;
/// 0 elsewhere).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the 14th and 15th fields of the line, 12th and 13th after `)`.
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Clock ticks per second, as `getconf CLK_TCK` prints it (100 on Linux, almost always).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// True unless run by `cargo bench` (which passes `--bench`): under `cargo test
/// --all-targets` the benchmarks run a short smoke pass.
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The whole number in the environment variable `name` (`1_000_000` is fine), else `default`.
pub fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The scale benchmarks' plan: the worker counts to run in turn (`LLMBUS_SCALE_WORKERS`, a
/// comma list, default 50 and 200) and the seconds per run (`LLMBUS_SCALE_SECS`, else
/// `secs`); 3 workers for 3 s in a smoke pass.
pub fn scale_plan(secs: u64) -> (Vec<usize>, u64) {
    if smoke() {
        return (vec![3], 3);
    }
    let workers = std::env::var("LLMBUS_SCALE_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200]);
    (workers, env_count("LLMBUS_SCALE_SECS", secs))
}

/// A multi-threaded tokio runtime whose threads carry `name`.
pub fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Latencies (ns) and failures.
#[derive(Clone)]
pub struct Stats {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds"),
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
        }
    }
}

impl Stats {
    pub fn record(&mut self, latency: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => self.hist.saturating_record(latency.as_nanos() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    pub fn ok(&self) -> u64 {
        self.hist.len()
    }

    /// Percentile in µs.
    pub fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn rps(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The least-squares slope of `ys` over `xs`.
pub fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}
