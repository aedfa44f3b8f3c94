//! A gateway with its HTTP front, for one test: a private nats-server, a worker started in this
//! process from a YAML config, and the OpenAI-compatible HTTP front on the worker's own NATS
//! connection (the in-worker mode), listening on a free loopback port.

use std::time::Duration;

use llmbus::{
    Worker,
    config::Config,
    http::{Backend, HttpServer, HttpSettings},
};

use super::nats_server::NatsServer;

/// A private NATS server, one worker and its HTTP front.
pub struct HttpGateway {
    pub nats: NatsServer,
    pub worker: Option<Worker>,
    pub http: Option<HttpServer>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl HttpGateway {
    /// A gateway for `yaml` with the default HTTP settings.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, HttpSettings::default()).await
    }

    /// A gateway for `yaml` with these HTTP settings.
    pub async fn start_with(yaml: &str, settings: HttpSettings) -> Self {
        let nats = NatsServer::start();
        let loaded = Config::from_yaml(yaml, "test.yaml").expect("test config loads");
        let nc = nats.client().await;
        let worker = Worker::start(&loaded.config, nc.clone())
            .await
            .expect("worker starts");
        let http = serve(nc, settings).await;
        let base = format!("http://{}", http.addr());
        Self {
            nats,
            worker: Some(worker),
            http: Some(http),
            base,
        }
    }

    /// `<base>/v1`, what an OpenAI SDK takes as `base_url`.
    pub fn v1(&self) -> String {
        format!("{}/v1", self.base)
    }
}

/// The HTTP front on `nc` (prefix `llm`), on a free loopback port.
pub async fn serve(nc: async_nats::Client, settings: HttpSettings) -> HttpServer {
    serve_in(nc, settings, None).await
}

/// The HTTP front on `nc`; with `local`, inside that worker (its groups run in process).
pub async fn serve_in(
    nc: async_nats::Client,
    settings: HttpSettings,
    local: Option<llmbus::runtime::local::LocalJobs>,
) -> HttpServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let mut backend = Backend::new(nc, "llm").await.expect("the HTTP backend");
    if let Some(local) = local {
        backend.serve_locally(local);
    }
    HttpServer::start(listener, backend, settings, None).expect("the HTTP front starts")
}

/// Settings with a short keep-alive interval.
pub fn fast_keepalive() -> HttpSettings {
    HttpSettings {
        keepalive: Duration::from_millis(200),
        ..HttpSettings::default()
    }
}

/// Opens a streamed chat completion for model `fake` at `base` (`http://127.0.0.1:<port>`)
/// and reads its first event, which must be a `data:` event; returns the rest of the body, to
/// read on or to drop (a client that goes away mid-stream).
pub async fn stream_past_first_event(
    base: &str,
) -> impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + use<> {
    use futures::StreamExt;
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .timeout(Duration::from_secs(60))
        .json(&serde_json::json!({"model": "fake", "stream": true, "messages": [{"role": "user", "content": "go on"}]}))
        .send()
        .await
        .expect("the stream's response");
    let mut body = Box::pin(response.bytes_stream());
    let first = tokio::time::timeout(super::gateway::PATIENCE, body.next())
        .await
        .expect("a first event")
        .expect("bytes")
        .expect("bytes");
    assert!(first.starts_with(b"data: "), "{first:?}");
    body
}
