//! Any `llmbus` command as a real process (`up`, `front`, `serve --http`, the `--model`
//! one-liner), with its stdout and stderr read line by line into one log, so a test can wait
//! for a line (an event, not a sleep) and read what it printed. Dropping it kills the process.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

/// A running `llmbus` process.
pub struct LlmbusProcess {
    /// What failure messages call it.
    label: String,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    seen: watch::Receiver<usize>,
    /// How many of its two output pipes have reached their end.
    closed: watch::Receiver<usize>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl LlmbusProcess {
    /// Starts `llmbus <args>` with `env` set (and `NATS_URL`, `LLMBUS_CONFIG` removed).
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmbus"));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("LLMBUS_CONFIG")
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the llmbus binary");
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (seen_tx, seen) = watch::channel(0usize);
        let seen_tx = Arc::new(seen_tx);
        let (closed_tx, closed) = watch::channel(0usize);
        let closed_tx = Arc::new(closed_tx);
        let readers: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout is piped")),
            Box::new(child.stderr.take().expect("stderr is piped")),
        ];
        for reader in readers {
            let lines = lines.clone();
            let seen_tx = seen_tx.clone();
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let n = {
                        let mut all = lines.lock().unwrap_or_else(|p| p.into_inner());
                        all.push(line);
                        all.len()
                    };
                    // Two readers (stdout, stderr) publish after the lock: the highest wins.
                    seen_tx.send_if_modified(|seen| {
                        let newer = n > *seen;
                        *seen = (*seen).max(n);
                        newer
                    });
                }
                closed_tx.send_modify(|n| *n += 1);
            });
        }
        let (exit_tx, exit) = watch::channel(None);
        std::thread::spawn(move || {
            let status = child.wait().ok();
            exit_tx.send_replace(status);
        });
        Self {
            label: format!("`llmbus {}`", args.join(" ")),
            pid,
            lines,
            seen,
            closed,
            exit,
        }
    }

    /// Names the process in failure messages (for example "worker w2").
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// True when a line it printed contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.find(needle).is_some()
    }

    fn find(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Waits for a line containing `needle` and returns it; panics with the log after
    /// `timeout` or when the process ends without printing it.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let mut seen = self.seen.clone();
        let mut exit = self.exit.clone();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(line) = self.find(needle) {
                    return Some(line);
                }
                tokio::select! {
                    changed = seen.changed() => if changed.is_err() { return self.find(needle) },
                    // (The guard `wait_for` returns is let go at once: the future stays `Send`.)
                    _ = async { exit.wait_for(|s| s.is_some()).await.map(|_| ()) } => {
                        self.drained().await;
                        return self.find(needle);
                    }
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "{}: no line with {needle:?} within {timeout:?}; the output:\n{}",
                self.label,
                self.log()
            ),
        }
    }

    /// The `http://ADDR` in the first line that contains `needle` and a URL (waiting for it).
    pub async fn wait_for_url(&self, needle: &str, timeout: Duration) -> String {
        let line = self.wait_for_line(needle, timeout).await;
        let start = line.find("http://").expect("a URL in the line");
        let rest = &line[start..];
        let end = rest[7..]
            .find(['/', ' ', ','])
            .map_or(rest.len(), |i| i + 7);
        rest[..end].to_string()
    }

    /// Waits for the process to end, and for the readers to take everything it printed: the
    /// process can be reaped before the last lines leave the pipes.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut exit = self.exit.clone();
        let status = match tokio::time::timeout(timeout, exit.wait_for(|s| s.is_some())).await {
            Ok(Ok(status)) => *status,
            _ => return None,
        };
        self.drained().await;
        status
    }

    /// After the process ended: waits until both pipes reached their end. A child it started
    /// (a nats-server) can hold them open, so the wait is bounded.
    async fn drained(&self) {
        let mut closed = self.closed.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), closed.wait_for(|n| *n >= 2)).await;
    }

    /// Waits for the process to end and asserts it exited with status 0.
    pub async fn assert_exits_cleanly(&self, timeout: Duration) {
        let status = self.wait_exit(timeout).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} exited with {status:?} (None: still running after {timeout:?}); the output:\n{}",
            self.label,
            self.log()
        );
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("-TERM");
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

impl Drop for LlmbusProcess {
    fn drop(&mut self) {
        self.signal("-KILL");
    }
}
