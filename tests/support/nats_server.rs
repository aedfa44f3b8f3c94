//! A private `nats-server` for one test: its own free port, its own JetStream store in a
//! temporary directory, stopped when dropped. It can be killed and started again on the same
//! port and store, for fault tests. Built on `llmbus::local_nats`, which waits for the
//! server's "Server is ready" log line instead of sleeping.

use llmbus::local_nats::{LocalNats, LocalNatsError, free_port};

/// A running private nats-server.
pub struct NatsServer {
    server: LocalNats,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free loopback port with JetStream on.
    ///
    /// Panics with a clear message when `nats-server` is not on PATH.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with more command-line options (`--auth TOKEN`, `--user U --pass P`).
    pub fn start_with(args: &[&str]) -> Self {
        let store = tempfile::tempdir().expect("temporary directory for the JetStream store");
        let mut last = None;
        // Another process may take the free port before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port().expect("a free loopback port");
            match LocalNats::start_with(port, store.path(), args) {
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
        panic!("nats-server did not start: {last:?}");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.server.port()
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

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.server.restart().expect("restart nats-server");
    }
}
