//! A worker as a real process: the `llmbus` binary run as `serve --config <file> --nats-url
//! <url>`, with its config written to a temporary directory. Its log (stderr) is read line by
//! line: [`WorkerProcess::start`] returns once the worker logs "worker is serving" (an event,
//! not a sleep), and tests can wait for any other line. [`WorkerProcess::terminate`] sends
//! SIGTERM, [`WorkerProcess::wait_exit`] awaits the exit status; dropping it kills the process.

use std::{net::SocketAddr, process::ExitStatus, time::Duration};

use llmbus::local_nats::free_port;

use super::llmbus_process::LlmbusProcess;

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
    /// More environment variables for the process.
    pub env: Vec<(String, String)>,
}

/// A running `llmbus serve` process.
pub struct WorkerProcess {
    process: LlmbusProcess,
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
        let (path, grace) = (
            path.display().to_string(),
            options.grace_flag.map(|g| g.to_string()),
        );
        let mut args = vec!["serve", "--config", &path, "--nats-url", nats_url];
        if let Some(g) = &grace {
            args.extend(["--grace-secs", g]);
        }
        let env: Vec<(&str, &str)> = options
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let worker = Self {
            process: LlmbusProcess::start(&args, &env).with_label(format!("worker {name}")),
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
        self.process.log()
    }

    /// True when a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.process.logged(needle)
    }

    /// Waits until a log line contains `needle`; panics with the log after `timeout` or when
    /// the process ends without it.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.process.wait_for_line(needle, timeout).await;
    }

    /// The process id (for a test that kills it with SIGKILL).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    /// Waits for the process to end; `None` when it is still running after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout).await
    }

    /// Waits for the process to end and asserts it exited with status 0.
    pub async fn assert_exits_cleanly(&self, timeout: Duration) {
        self.process.assert_exits_cleanly(timeout).await;
    }
}
