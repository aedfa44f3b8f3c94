//! `llmbus up` as a user runs it, as a real process of the built binary, on a private
//! nats-server: `up` finds the server answering at `--nats-url` and serves the built-in
//! quickstart config on it. [`Up::start`] returns once `up` prints its banner; dropping it
//! kills `up` (the private server is the test's own and stops with it).

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use super::nats_server::{NatsServer, default_binary};

/// How long `up` may take to serve on a busy machine.
pub const STARTUP: Duration = Duration::from_secs(60);

/// A running `llmbus up` and the private nats-server it serves on.
pub struct Up {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    /// The private nats-server.
    pub nats: NatsServer,
}

impl Up {
    /// Starts a private nats-server and `llmbus up --nats-url <it>` with the quickstart
    /// config (no `OPENAI_API_KEY`), and waits for the banner.
    pub fn start() -> Self {
        let nats = NatsServer::start();
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmbus"))
            .args(["up", "--nats-url", &nats.url()])
            .env_remove("LLMBUS_CONFIG")
            .env_remove("OPENAI_API_KEY")
            .env_remove("NATS_URL")
            .env("LLMBUS_NATS_SERVER", default_binary())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start llmbus up");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("piped stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped stderr")),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let banner = line.contains("llmbus is up on");
                    output.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                    if banner {
                        let _ = tx.send(());
                    }
                }
            });
        }
        let up = Self {
            child,
            output,
            nats,
        };
        let deadline = Instant::now() + STARTUP;
        // The banner's whole text follows its first line at once: wait for the last line.
        let served = rx.recv_timeout(STARTUP).is_ok()
            && up.wait_for(
                "Ctrl-C stops it",
                deadline.saturating_duration_since(Instant::now()),
            );
        assert!(
            served,
            "llmbus up printed no banner within {STARTUP:?}\n{}",
            up.output()
        );
        up
    }

    /// The URL of the bus `up` serves.
    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// The root of the HTTP front `up` serves (`http://127.0.0.1:<port>`, without `/v1`), read
    /// from its banner.
    pub fn http_url(&self) -> String {
        let out = self.output();
        let at = out
            .find("OpenAI-compatible HTTP at ")
            .unwrap_or_else(|| panic!("no HTTP front in the banner:\n{out}"));
        let rest = &out[at + "OpenAI-compatible HTTP at ".len()..];
        let base = rest.split_whitespace().next().unwrap_or_default();
        base.trim_end_matches("/v1").to_string()
    }

    /// Everything `up` printed so far, stdout and stderr interleaved by line.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Waits until a line contains `needle`; false after `limit`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.output().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // The reader threads append lines; a short poll keeps this simple.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
