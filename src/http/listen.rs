//! Where the HTTP front listens: an address the user chose is used as it is or refused when
//! taken; the default (`127.0.0.1:4000`) moves on to the next free port, so two `llmbus up` on
//! one machine both start (the banner prints the port that was taken).

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// The default HTTP address of `llmbus up` and `llmbus front` (LiteLLM's port).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000);

/// How many ports after the default are tried.
const PORTS_TRIED: u16 = 100;

/// An address to listen on, and whether the user chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// From `--http`, `--listen` or `llmbus.http_listen`: used as it is, or refused.
    Chosen(SocketAddr),
    /// The default: when taken, the next free port is used.
    Default(SocketAddr),
}

/// Why the HTTP front could not listen.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The chosen address is taken (or not allowed).
    #[error(
        "cannot listen for HTTP on {addr}: {source}; choose another address with --http / --listen or llmbus.http_listen"
    )]
    Chosen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No port from the default on was free.
    #[error("cannot listen for HTTP on {addr} or any of the next {PORTS_TRIED} ports: {source}")]
    NoFreePort {
        /// The default address.
        addr: SocketAddr,
        /// The last error.
        source: std::io::Error,
    },
}

/// Binds `listen`.
pub async fn bind(listen: Listen) -> Result<TcpListener, BindError> {
    match listen {
        Listen::Chosen(addr) => TcpListener::bind(addr)
            .await
            .map_err(|source| BindError::Chosen { addr, source }),
        Listen::Default(addr) => {
            let mut last = None;
            for port in addr.port()..=addr.port().saturating_add(PORTS_TRIED) {
                match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                    Ok(l) => return Ok(l),
                    Err(e) => last = Some(e),
                }
            }
            Err(BindError::NoFreePort {
                addr,
                source: last.unwrap_or_else(|| std::io::Error::other("no port tried")),
            })
        }
    }
}

/// The listener of a worker's HTTP front: `flag` (`--http`), else `llmbus.http_listen`, else —
/// when `default` (as for `llmbus up`) — [`DEFAULT_ADDR`] or the next free port; else none.
pub async fn worker(
    settings: &crate::config::LlmbusSettings,
    flag: Option<SocketAddr>,
    default: bool,
) -> Result<Option<TcpListener>, BindError> {
    let listen = match (flag.or(settings.http_listen), default) {
        (Some(addr), _) => Listen::Chosen(addr),
        (None, true) => Listen::Default(DEFAULT_ADDR),
        (None, false) => return Ok(None),
    };
    bind(listen).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_chosen_address_that_is_taken_is_refused_the_default_moves_on() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(Listen::Chosen(addr)).await.unwrap_err();
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        let moved = bind(Listen::Default(addr)).await.unwrap();
        let port = moved.local_addr().unwrap().port();
        assert!(port > addr.port(), "{port} after {}", addr.port());
    }
}
