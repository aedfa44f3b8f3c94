//! `llmbus front`: the HTTP front as a process of its own. It connects to NATS, serves HTTP and
//! forwards every request to the workers as a NATS job; it holds no model config, so fronts and
//! workers scale separately. With `--config` it reads only the file's `llmbus:` section (NATS
//! URL and credentials, subject prefix, `http_listen`, `http_keepalive_secs` and the other
//! `http_*` settings) and the default deadline (`router_settings.timeout`).
//!
//! It stops on SIGTERM or SIGINT: it stops taking connections and lets the requests in flight
//! finish for up to the grace period.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{Backend, HttpServer, HttpSettings, Listen, bind};
use crate::config::{Config, LlmbusSettings};

/// What `llmbus front` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct FrontOptions {
    /// `--listen`: where to serve HTTP (else `llmbus.http_listen`, else 127.0.0.1:4000 or the
    /// next free port).
    pub listen: Option<SocketAddr>,
    /// `--prefix` (else `llmbus.subject_prefix`, else `llm`).
    pub prefix: Option<String>,
    /// `--nats-url` / `NATS_URL`.
    pub nats_url: Option<String>,
    /// `--config`: read its `llmbus:` section.
    pub config: Option<PathBuf>,
    /// `--keepalive-secs` (else `llmbus.http_keepalive_secs`, else 15).
    pub keepalive_secs: Option<f64>,
    /// `--grace-secs` (else `llmbus.shutdown_grace_secs`, else 30).
    pub grace_secs: Option<f64>,
}

/// Runs `llmbus front` until SIGTERM or SIGINT.
pub async fn run(options: FrontOptions) -> Result<(), Box<dyn std::error::Error>> {
    let config = match &options.config {
        Some(path) => Config::load(path)?.config,
        None => Config::default(),
    };
    let settings: &LlmbusSettings = &config.llmbus;
    let mut http = HttpSettings::from_config(&config)?;
    if let Some(secs) = options.keepalive_secs {
        http.keepalive = super::keepalive(secs)?;
    }
    let grace =
        Duration::try_from_secs_f64(options.grace_secs.unwrap_or(settings.shutdown_grace_secs))
            .map_err(|_| "the grace period must be a number of seconds >= 0")?;
    let prefix = options
        .prefix
        .clone()
        .unwrap_or_else(|| settings.subject_prefix.clone());
    let listen = match options.listen.or(settings.http_listen) {
        Some(addr) => Listen::Chosen(addr),
        None => Listen::Default(super::DEFAULT_ADDR),
    };
    let listener = bind(listen).await?;
    let url = crate::nats::url(settings, options.nats_url.as_deref());
    let nats = crate::nats::connect(settings, Some(&url), "llmbus-front").await?;
    let backend = Backend::new(nats, &prefix).await?;
    let mut signals = Signals::install()?;
    let server = HttpServer::start(listener, backend, http, None)?;
    let addr = server.addr();
    let url = crate::nats::redacted(&url);
    tracing::info!(%addr, %url, %prefix, "llmbus front is serving");
    println!(
        "llmbus front: OpenAI-compatible HTTP at http://{addr}/v1, forwarding to {prefix}.* on {url}"
    );
    let signal = signals.next().await;
    tracing::info!(signal, "stopping: finishing the HTTP requests in flight");
    tokio::select! {
        _ = server.stop(grace) => {
            tracing::info!("stopped");
            Ok(())
        }
        signal = signals.next() => Err(format!("{signal} while stopping: stopped at once").into()),
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?,
                int: signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
