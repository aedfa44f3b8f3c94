//! A worker as a real process: the `llmbus` binary run as `serve --config <file> --nats-url
//! <url>`, with its config written to a temporary directory. Its log (stderr) is read line by
//! line: [`WorkerProcess::start`] returns once the worker logs "worker is serving" (an event,
//! not a sleep), and tests can wait for any other line. [`WorkerProcess::terminate`] sends
//! SIGTERM, [`WorkerProcess::wait_exit`] awaits the exit status; dropping it kills the process.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use llmbus::local_nats::free_port;
use tokio::sync::watch;

/// How a worker process is started.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// `llmbus.shutdown_grace_secs` in the config file.
    pub grace_secs: Option<f64>,
    /// `--grace-secs` on the command line.
    pub grace_flag: Option<f64>,
    /// Serve `/metrics`, `/healthz`, `/readyz` on a free loopback port (else `metrics_listen:
    /// null`).
    pub metrics: bool,
}

/// A running `llmbus serve` process.
pub struct WorkerProcess {
    name: String,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    /// The number of log lines so far; closed when stderr ends.
    seen: watch::Receiver<usize>,
    /// The exit status, once the process has ended.
    exit: watch::Receiver<Option<ExitStatus>>,
    metrics: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts `llmbus serve` on `nats_url` with `model_list_yaml` (a config without an
    /// `llmbus:` section) and waits until it logs that it serves. Panics (a test failure, with
    /// the log) when it does not within a minute.
    pub async fn start(
        name: &str,
        nats_url: &str,
        model_list_yaml: &str,
        options: WorkerOptions,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the config");
        let metrics = options.metrics.then(|| {
            SocketAddr::from((
                [127, 0, 0, 1],
                free_port().expect("a free port for metrics"),
            ))
        });
        let mut yaml = format!("{model_list_yaml}\nllmbus:\n");
        match metrics {
            Some(addr) => yaml.push_str(&format!("  metrics_listen: \"{addr}\"\n")),
            None => yaml.push_str("  metrics_listen: null\n"),
        }
        if let Some(g) = options.grace_secs {
            yaml.push_str(&format!("  shutdown_grace_secs: {g}\n"));
        }
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("write the worker config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmbus"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--nats-url")
            .arg(nats_url);
        if let Some(g) = options.grace_flag {
            cmd.arg("--grace-secs").arg(g.to_string());
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("LLMBUS_CONFIG")
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the llmbus binary");
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (seen_tx, seen) = watch::channel(0usize);
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let n = {
                        let mut all = lines.lock().unwrap_or_else(|p| p.into_inner());
                        all.push(line);
                        all.len()
                    };
                    seen_tx.send_replace(n);
                }
                // Dropping the sender closes the channel: the log has ended.
            });
        }
        let (exit_tx, exit) = watch::channel(None);
        std::thread::spawn(move || {
            let status = child.wait().ok();
            exit_tx.send_replace(status);
        });
        let worker = Self {
            name: name.to_string(),
            pid,
            lines,
            seen,
            exit,
            metrics,
            _dir: dir,
        };
        worker
            .wait_for_log("worker is serving", Duration::from_secs(60))
            .await;
        worker
    }

    /// The `/metrics`, `/healthz`, `/readyz` address, when it serves them.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// True when a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits until a log line contains `needle`; panics with the log after `timeout` or when
    /// the log ends without it.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let mut seen = self.seen.clone();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if self.logged(needle) {
                    return true;
                }
                if seen.changed().await.is_err() {
                    return self.logged(needle);
                }
            }
        })
        .await;
        if found != Ok(true) {
            panic!(
                "worker {}: no log line with {needle:?} within {timeout:?}; its log:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Waits for the process to end; `None` when it is still running after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut exit = self.exit.clone();
        match tokio::time::timeout(timeout, exit.wait_for(|s| s.is_some())).await {
            Ok(Ok(status)) => *status,
            _ => None,
        }
    }

    /// Waits for the process to end and asserts it exited with status 0.
    pub async fn assert_exits_cleanly(&self, timeout: Duration) {
        let status = self.wait_exit(timeout).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "worker {} exited with {status:?} (None: still running after {timeout:?}); its log:\n{}",
            self.name,
            self.log()
        );
    }

    fn signal(&self, sig: &str) {
        if self.exit.borrow().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg(sig)
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.signal("-KILL");
    }
}
