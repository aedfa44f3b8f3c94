//! The worker's small operations HTTP server on `llmbus.metrics_listen`: `GET /metrics`
//! (Prometheus text), `GET /healthz` (the process is up) and `GET /readyz` (200 while the
//! worker serves, 503 before it does and while it drains). It installs the Prometheus recorder
//! with the names, help and buckets of [`crate::telemetry`].

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::State as Extract, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{runtime::readiness::Readiness, telemetry};

/// Why the operations server could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The address could not be bound.
    #[error("metrics listener on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The listener could not be made non-blocking.
    #[error("metrics listener: {0}")]
    Listener(std::io::Error),
    /// The Prometheus recorder refused a histogram's buckets.
    #[error("{0}")]
    Buckets(BuildError),
    /// The Prometheus recorder could not be installed (one is already).
    #[error("installing the metrics recorder: {0}")]
    Recorder(BuildError),
    /// No Tokio runtime, and no runtime of its own could be made.
    #[error("a runtime for the metrics listener: {0}")]
    Runtime(std::io::Error),
    /// No thread of its own could be started.
    #[error("a thread for the metrics listener: {0}")]
    Thread(std::io::Error),
}

/// Installs the Prometheus recorder (explicit histogram buckets) and serves `/metrics`,
/// `/healthz` and `/readyz` on `addr`. Returns the [`Readiness`] that `/readyz` reports; it
/// starts in `starting` (503) and the caller moves it on. The server runs on the current Tokio
/// runtime, or on a thread of its own when there is none.
pub fn install_metrics(addr: SocketAddr) -> Result<Readiness, OpsError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| OpsError::Bind { addr, source: e })?;
    install_metrics_on(listener)
}

/// [`install_metrics`] on a listener the caller bound (to pick the address itself).
pub fn install_metrics_on(listener: std::net::TcpListener) -> Result<Readiness, OpsError> {
    listener.set_nonblocking(true).map_err(OpsError::Listener)?;
    let mut builder = PrometheusBuilder::new();
    for name in telemetry::HISTOGRAMS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), telemetry::LATENCY_BUCKETS)
            .map_err(OpsError::Buckets)?;
    }
    let handle = builder.install_recorder().map_err(OpsError::Recorder)?;
    telemetry::describe();
    let readiness = Readiness::new();
    let serve = serve_ops(listener, handle, readiness.clone());
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(serve);
        }
        Err(_) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(OpsError::Runtime)?;
            std::thread::Builder::new()
                .name("llmbus-metrics".into())
                .spawn(move || rt.block_on(serve))
                .map_err(OpsError::Thread)?;
        }
    }
    Ok(readiness)
}

/// Serves the operations endpoints until the process ends, and runs the recorder's upkeep.
async fn serve_ops(listener: std::net::TcpListener, handle: PrometheusHandle, ready: Readiness) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "metrics are off: the listener failed");
            return;
        }
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(|Extract(h): Extract<PrometheusHandle>| async move { h.render() }),
        )
        .with_state(handle)
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|Extract(r): Extract<Readiness>| async move {
                let state = r.state();
                let code = if r.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, format!("{}\n", state.as_str()))
            }),
        )
        .with_state(ready);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}
