//! The OpenAI-compatible HTTP front (LiteLLM Proxy's role): unmodified OpenAI SDKs, LangChain
//! or coding tools point `base_url` at it. Each HTTP request becomes the same NATS job any
//! client could send (the body unchanged, headers per [`crate::wire::headers`]), and each NATS
//! reply or chunk becomes the HTTP response or a server-sent event. NATS stays the backbone.
//!
//! It runs inside a worker (`llmbus.http_listen`, `--http`, and by default in `llmbus up`), on
//! the worker's own NATS connection, or alone as `llmbus front`, on its own connection, with no
//! model config. Both are [`HttpServer::start`] over a [`Backend`]; the answer is the same.
//!
//! - [`backend`]: the NATS side: jobs, reply subjects, cancellation.
//! - `resend`: a job whose worker died before anything reached the caller is sent again
//!   (`Llm-Ack`, `$SRV` pings).
//! - [`routes`]: the router, health routes, 404/405.
//! - [`chat`]: chat completions, single replies; [`sse`]: streams and keep-alives.
//! - [`models`]: embeddings and the model list.
//! - [`headers`]: HTTP ↔ NATS headers (keys, deadline, tags, cost, deployment, ...).
//! - [`error`]: errors as OpenAI error bodies with their HTTP status.
//! - [`listen`]: binding the address (a chosen one or the default's next free port).
//! - [`front`]: the `llmbus front` process.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub mod backend;
pub mod chat;
pub mod error;
pub mod front;
pub mod headers;
pub mod listen;
pub mod models;
mod resend;
pub mod routes;
pub mod sse;

pub use backend::Backend;
pub use listen::{DEFAULT_ADDR, Listen, bind};

use crate::{config::Config, health::Readiness};

/// How the front waits and streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// Between SSE keep-alive comments until a stream's first token (`llmbus.
    /// http_keepalive_secs`, default 15 s).
    pub keepalive: Duration,
    /// A job's deadline when the request sets none: the worker's default
    /// (`router_settings.timeout`, default 600 s).
    pub default_timeout: Duration,
    /// Waited beyond the deadline for the worker's own deadline answer before the front answers
    /// a 504 itself.
    pub margin: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(15),
            default_timeout: Duration::from_secs(600),
            margin: Duration::from_secs(5),
        }
    }
}

impl HttpSettings {
    /// The settings of `config`: `llmbus.http_keepalive_secs` and the default deadline. An
    /// unusable keep-alive is an error naming the key.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        Ok(Self {
            keepalive: keepalive(config.llmbus.http_keepalive_secs)?,
            default_timeout: config.default_timeout(),
            ..Self::default()
        })
    }
}

/// `secs` as a keep-alive interval: a positive number of seconds.
pub fn keepalive(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!("llmbus.http_keepalive_secs must be a positive number of seconds, not {secs}")
        })
}

/// What every route shares.
#[derive(Debug)]
pub struct AppState {
    /// The NATS side.
    pub backend: Backend,
    /// Waits and keep-alives.
    pub settings: HttpSettings,
    /// The largest request body (the NATS server's `max_payload`).
    pub max_body: usize,
    /// Inside a worker: its readiness, which `/health/readiness` reports.
    pub readiness: Option<Readiness>,
}

/// A running HTTP front.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serves the front on `listener` over `backend`. `readiness` is the worker's, when the
    /// front runs inside one.
    pub fn start(
        listener: TcpListener,
        backend: Backend,
        settings: HttpSettings,
        readiness: Option<Readiness>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let max_body = backend.max_payload().max(1);
        let app = Arc::new(AppState {
            backend,
            settings,
            max_body,
            readiness,
        });
        let router = routes::router(app);
        let (stop, mut stopped) = watch::channel(false);
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "the HTTP front stopped");
            }
        });
        tracing::info!(%addr, "OpenAI-compatible HTTP front at http://{addr}/v1");
        Ok(Self { addr, stop, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections; requests in flight go on. [`HttpServer::stop`] waits for them.
    pub fn close(&self) {
        self.stop.send_replace(true);
    }

    /// Stops taking connections and waits up to `grace` for the requests in flight, then cuts
    /// them.
    pub async fn stop(self, grace: Duration) {
        self.close();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs_f64(),
                "HTTP requests still in flight after the grace period were cut"
            );
            task.abort();
        }
    }
}

/// The lines `llmbus up` prints to show the HTTP front: a Python OpenAI SDK snippet and a curl
/// command that work as printed against `addr`, asking `model`.
pub fn banner(addr: SocketAddr, model: &str, master_key: bool) -> String {
    let base = format!("http://{addr}/v1");
    let key = if master_key {
        "<your master key>"
    } else {
        "anything"
    };
    let auth = if master_key {
        " -H 'Authorization: Bearer <your master key>'"
    } else {
        ""
    };
    let model_lit = serde_json::to_string(model).unwrap_or_else(|_| "\"demo\"".into());
    let body =
        format!(r#"{{"model":{model_lit},"messages":[{{"role":"user","content":"Hello"}}]}}"#);
    format!(
        "OpenAI-compatible HTTP at {base}\n\
         \x20 python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"{base}\", api_key=\"{key}\"); \
         print(c.chat.completions.create(model={model_lit}, messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}]).choices[0].message.content)'   # pip install openai\n\
         \x20 curl -s {base}/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"
    )
}
