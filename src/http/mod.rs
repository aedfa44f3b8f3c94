//! The OpenAI-compatible HTTP front (LiteLLM Proxy's role): unmodified OpenAI SDKs, LangChain
//! or coding tools point `base_url` at it. Each HTTP request becomes the same job any NATS
//! client could send (the body unchanged, headers per [`crate::wire::headers`]), and each reply
//! or chunk becomes the HTTP response or a server-sent event.
//!
//! It runs inside a worker (`llmbus.http_listen`, `--http`, and by default in `llmbus up`) or
//! alone as `llmbus front`, on its own NATS connection, with no model config. Both are
//! [`HttpServer::start`] over a [`Backend`]; the answer is the same. Inside a worker, the jobs
//! for the groups it serves skip NATS: the front parses the body once and hands the job to the
//! worker's job path in process ([`crate::runtime::local`], [`Backend::serve_locally`]); the
//! others go over the worker's NATS connection.
//!
//! - [`backend`]: where a job goes (in process, or over NATS: reply subjects, cancellation).
//! - `resend`: a job whose worker died before anything reached the caller is sent again
//!   (`Llm-Ack`, `$SRV` pings).
//! - [`routes`]: the router, health routes, 404/405.
//! - [`chat`]: chat completions, single replies; [`sse`]: streams and keep-alives.
//! - [`models`]: embeddings and the model list.
//! - [`headers`]: HTTP ↔ NATS headers (keys, deadline, tags, cost, deployment, ...).
//! - [`error`]: errors as OpenAI error bodies with their HTTP status.
//! - [`listen`]: binding the address (a chosen one or the default's next free port).
//! - [`conn`]: accepting connections: the cap, the header, body and idle timeouts.
//! - [`front`]: the `llmbus front` process.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub mod backend;
pub mod chat;
pub mod conn;
pub mod error;
pub mod front;
pub mod headers;
pub mod listen;
pub mod models;
mod resend;
pub mod routes;
pub mod sse;

pub use backend::Backend;
pub use conn::ConnLimits;
pub use listen::{DEFAULT_ADDR, Listen, bind};

use crate::{config::Config, runtime::readiness::Readiness};

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
    /// Connection timeouts and cap (`llmbus.http_header_timeout_secs`, `http_body_timeout_secs`,
    /// `http_idle_timeout_secs`, `http_max_connections`).
    pub conn: ConnLimits,
    /// Messages of one job held for a client that reads them too slowly; one more and the job
    /// is cancelled (`llmbus.http_stream_buffer`, default 1024).
    pub stream_buffer: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(15),
            default_timeout: Duration::from_secs(600),
            margin: Duration::from_secs(5),
            conn: ConnLimits::default(),
            stream_buffer: DEFAULT_STREAM_BUFFER,
        }
    }
}

/// An `llmbus.http_*` value the HTTP front cannot use; the message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// A count that must be at least 1.
    #[error("llmbus.{key} must be at least 1")]
    Zero {
        /// The key under `llmbus.`.
        key: &'static str,
    },
    /// A duration that is not a positive number of seconds.
    #[error("llmbus.{key} must be a positive number of seconds, not {secs}")]
    Seconds {
        /// The key under `llmbus.`.
        key: &'static str,
        /// The value given.
        secs: f64,
    },
}

impl HttpSettings {
    /// The settings of `config`: `llmbus.http_*` and the default deadline. An unusable value is
    /// an error naming the key.
    pub fn from_config(config: &Config) -> Result<Self, SettingsError> {
        let l = &config.llmbus;
        let positive = |key: &'static str, n: usize| {
            if n == 0 {
                Err(SettingsError::Zero { key })
            } else {
                Ok(n)
            }
        };
        Ok(Self {
            keepalive: keepalive(l.http_keepalive_secs)?,
            default_timeout: config.default_timeout(),
            conn: ConnLimits {
                header_timeout: seconds("http_header_timeout_secs", l.http_header_timeout_secs)?,
                body_timeout: seconds("http_body_timeout_secs", l.http_body_timeout_secs)?,
                idle_timeout: seconds("http_idle_timeout_secs", l.http_idle_timeout_secs)?,
                max_connections: positive("http_max_connections", l.http_max_connections)?,
            },
            stream_buffer: positive("http_stream_buffer", l.http_stream_buffer)?,
            ..Self::default()
        })
    }
}

/// The default of `llmbus.http_stream_buffer`: messages held per job for a slow reader.
pub const DEFAULT_STREAM_BUFFER: usize = 1024;

/// `secs` of `llmbus.<key>` as a positive duration.
fn seconds(key: &'static str, secs: f64) -> Result<Duration, SettingsError> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or(SettingsError::Seconds { key, secs })
}

/// `secs` as a keep-alive interval: a positive number of seconds.
pub fn keepalive(secs: f64) -> Result<Duration, SettingsError> {
    seconds("http_keepalive_secs", secs)
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
        mut backend: Backend,
        settings: HttpSettings,
        readiness: Option<Readiness>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        backend.set_stream_buffer(settings.stream_buffer);
        let max_body = backend.max_payload().max(1);
        let app = Arc::new(AppState {
            backend,
            settings,
            max_body,
            readiness,
        });
        let router = routes::router(app);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(conn::serve(listener, router, settings.conn, stopped));
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
