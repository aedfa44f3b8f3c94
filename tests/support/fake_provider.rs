//! A fake LLM provider: a real HTTP server on `127.0.0.1:0` that speaks OpenAI's Chat
//! Completions wire format (and Azure OpenAI's URL layout), for tests and benchmarks.
//!
//! ```ignore
//! let fake = FakeProvider::start().await;
//! fake.push(Fault::RateLimited { retry_after_secs: 3 }); // the next request gets a 429
//! // point a deployment at fake.url() (`http://127.0.0.1:<port>/v1`) and call it ...
//! let seen = fake.wait_for_requests(2, Duration::from_secs(5)).await;
//! assert_eq!(seen[1].body["model"], "gpt-4o");
//! ```
//!
//! **Default behaviour** (the contract tests rely on):
//! - `POST /v1/chat/completions`, and `POST /openai/deployments/{deployment}/chat/completions`
//!   with an `api-version` query parameter (Azure; 404 "Resource not found" without it).
//! - The reply's content is `"echo: <text of the last user message>"` (parts' text joined),
//!   `model` is the request's `model` (Azure: the deployment), `finish_reason` is `stop`.
//! - Usage: `prompt_tokens = Σ over messages (4 + ⌈chars/4⌉) + 3`, `completion_tokens =
//!   ⌈chars of the content/4⌉` (the same estimate as `llmbus::limits`).
//! - With `"stream": true`: `text/event-stream` of `data: {chunk}\n\n` events: a role chunk
//!   (`delta: {"role":"assistant","content":""}`), one chunk per word-sized piece (pieces
//!   concatenate to the content exactly), a finish chunk (empty delta, `finish_reason`), a usage
//!   chunk (`choices: []`) only when `stream_options.include_usage` is true, then
//!   `data: [DONE]\n\n`. All chunks share one id.
//! - Every request is recorded, whatever happens to it (even on unknown paths). A request whose
//!   body is not JSON gets OpenAI's 400; with [`FakeProvider::require_key`] a request without
//!   the key gets OpenAI's 401 `invalid_api_key` (`Authorization: Bearer` on `/v1`, `api-key`
//!   on Azure). Those requests do not consume a queued fault.
//!
//! **Faults**: [`FakeProvider::push`] queues a [`Fault`] for the next request (FIFO, one per
//! request); when the queue is empty, the default ([`FakeProvider::set_default`], initially
//! [`Fault::Ok`]) applies.
//!
//! This file is included by the integration tests (`mod support;`) and by benches
//! (`#[path = "../tests/support/fake_provider.rs"] mod fake_provider;`), so it only uses
//! llmbus's dependencies and dev-dependencies, and not llmbus itself: it is an independent
//! speaker of the wire format.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::post,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The id of the tool call [`Fault::ToolCalls`] answers with.
pub const TOOL_CALL_ID: &str = "call_fake_0001";
/// The function name [`Fault::ToolCalls`] calls when the request has no `tools`.
pub const DEFAULT_TOOL_NAME: &str = "get_weather";
/// The arguments [`Fault::ToolCalls`] answers with (streamed in [`TOOL_ARGUMENT_PIECES`]).
pub const TOOL_ARGUMENTS: &str = r#"{"location":"Paris, France","unit":"celsius"}"#;
/// How [`TOOL_ARGUMENTS`] is split across stream chunks.
pub const TOOL_ARGUMENT_PIECES: &[&str] = &[
    "{\"loc",
    "ation\":\"Par",
    "is, Fra",
    "nce\",\"unit\"",
    ":\"celsius\"}",
];

/// What the fake does with one request. Unless a variant says otherwise it applies to stream
/// and non-stream requests alike.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The default behaviour: an echo answer (see the module docs).
    Ok,
    /// Answer `status` with `body` (sent as `application/json`, whatever it holds). Use
    /// [`Fault::status`] for OpenAI's real error body of a status.
    Status {
        /// The HTTP status.
        status: u16,
        /// The body, sent as is.
        body: String,
    },
    /// 429 with `Retry-After: <retry_after_secs>`, OpenAI's `x-ratelimit-*` headers and its
    /// `rate_limit_exceeded` error body.
    RateLimited {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// Wait this long before answering (before the status line and headers), then answer
    /// normally. The wait ends early when the fake is dropped.
    Delay(Duration),
    /// Answer with these content pieces; a stream sends the role chunk at once, then waits
    /// `gap` before each piece and before the finish chunk. A non-stream answer is the pieces
    /// joined, at once.
    StreamChunks {
        /// The content pieces, one chunk each.
        pieces: Vec<String>,
        /// The wait before each piece.
        gap: Duration,
    },
    /// Stream: send the first `after_chunks` chunks of the normal stream (the role chunk is the
    /// first), then abort the connection: no `[DONE]`, the HTTP body ends in an error.
    /// Non-stream: 200 with half of the JSON body, then abort.
    BrokenStream {
        /// How many SSE events go out before the connection breaks.
        after_chunks: usize,
    },
    /// Stream: the role chunk, then `data: {"id": ...` cut in the middle of the JSON, then the
    /// stream ends (no `[DONE]`). Non-stream: 200 with a truncated JSON document.
    MalformedJson,
    /// Stream: the normal stream, with SSE comments, `event:`/`id:`/`retry:` lines, blank
    /// lines and lines that are not SSE at all mixed in between the events (all of which an
    /// SSE reader must ignore). Non-stream: the normal answer.
    GarbageSse,
    /// Stream: send the first `after_chunks` chunks, then keep the connection open without
    /// sending anything (never `[DONE]`). Non-stream: never answer at all. Either ends when the
    /// fake is dropped.
    NeverEnding {
        /// How many SSE events go out before the silence.
        after_chunks: usize,
    },
    /// Stream: the role chunk, then a content chunk of `piece` every `gap`, for ever: the
    /// stream ends only when the client hangs up (counted by [`FakeProvider::cut_bodies`]) or
    /// the fake is dropped. Non-stream: never answer at all.
    Endless {
        /// The content of every chunk.
        piece: String,
        /// The wait before each chunk.
        gap: Duration,
    },
    /// Stream: send the first `after_chunks` chunks, then an OpenAI error event
    /// (`data: {"error":{"message":...,"type":"server_error",...}}`) and end without `[DONE]`.
    /// Non-stream: 500 with the same error body.
    MidStreamError {
        /// How many SSE events go out before the error event.
        after_chunks: usize,
    },
    /// 400 with OpenAI's `context_length_exceeded` error body.
    ContextLengthExceeded,
    /// 400 with OpenAI's `content_policy_violation` error body.
    ContentFiltered,
    /// Answer `content` instead of the echo.
    Fixed {
        /// The reply text.
        content: String,
    },
    /// Answer with one tool call: id [`TOOL_CALL_ID`], the request's first tool's name (else
    /// [`DEFAULT_TOOL_NAME`]), arguments [`TOOL_ARGUMENTS`], `content: null`,
    /// `finish_reason: "tool_calls"`. A stream sends the id and name with empty arguments
    /// first, then the arguments in [`TOOL_ARGUMENT_PIECES`].
    ToolCalls,
}

impl Fault {
    /// `status` with OpenAI's error body for it (400, 401, 403, 404, 429, 500, 502, 503; a
    /// generic `api_error` body otherwise).
    pub fn status(status: u16) -> Fault {
        let (message, kind, code) = match status {
            400 => (
                "Invalid request (fake provider).",
                "invalid_request_error",
                Value::Null,
            ),
            401 => (
                "Incorrect API key provided: sk-***. You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                json!("invalid_api_key"),
            ),
            403 => (
                "Country, region, or territory not supported",
                "request_forbidden",
                json!("unsupported_country_region_territory"),
            ),
            404 => (
                "The model does not exist or you do not have access to it.",
                "invalid_request_error",
                json!("model_not_found"),
            ),
            429 => {
                return Fault::RateLimited {
                    retry_after_secs: 1,
                };
            }
            500 => (
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                Value::Null,
            ),
            502 => ("Bad gateway.", "cf_bad_gateway", json!(502)),
            503 => (
                "The engine is currently overloaded, please try again later.",
                "server_error",
                Value::Null,
            ),
            _ => ("Fake provider error.", "api_error", Value::Null),
        };
        Fault::error(status, message, kind, code)
    }

    /// `status` with the body `{"error":{"message","type","param":null,"code"}}`.
    pub fn error(status: u16, message: &str, kind: &str, code: Value) -> Fault {
        Fault::Status {
            status,
            body: error_body(message, kind, code).to_string(),
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The client's address: two requests with the same `peer` came on one connection.
    pub peer: SocketAddr,
    /// `POST`, ...
    pub method: String,
    /// The path, `/v1/chat/completions` or the Azure one.
    pub path: String,
    /// The raw query string (`api-version=...`), when there was one.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The JSON body; `Value::Null` when the body was not JSON.
    pub body: Value,
    /// When it arrived (its headers and body were read).
    pub at: std::time::Instant,
}

impl Recorded {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body's `model`.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// True when the body asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
    }
}

/// The running fake. Dropping it stops the server and ends its hanging responses.
pub struct FakeProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<FakeState>,
    /// The number of requests received so far.
    count: watch::Sender<usize>,
    /// The number of scripted bodies dropped before their end (the client closed the
    /// connection mid-body).
    cut: watch::Sender<usize>,
    /// Becomes true when the fake is dropped.
    closed: watch::Sender<bool>,
}

struct FakeState {
    requests: Vec<Recorded>,
    queue: VecDeque<Fault>,
    default: Fault,
    required_key: Option<String>,
    /// False to count requests without keeping them (long benchmarks).
    keep: bool,
    /// Requests counted but not kept.
    forgotten: usize,
}

impl FakeProvider {
    /// Starts a fake on a free loopback port. Panics when it cannot bind (test setup).
    pub async fn start() -> FakeProvider {
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                requests: Vec::new(),
                queue: VecDeque::new(),
                default: Fault::Ok,
                required_key: None,
                keep: true,
                forgotten: 0,
            }),
            count: watch::channel(0).0,
            cut: watch::channel(0).0,
            closed: watch::channel(false).0,
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_route))
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(azure_route),
            )
            .route("/v1/embeddings", post(embeddings_route))
            .route(
                "/openai/deployments/{deployment}/embeddings",
                post(azure_embeddings_route),
            )
            .fallback(unknown_route)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake provider: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake provider: local address");
        let server = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            // No Nagle: each SSE event goes out as it is written, as from a real provider.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider {
            addr,
            shared,
            server,
        }
    }

    /// The OpenAI base URL: `http://127.0.0.1:<port>/v1` (an `api_base`).
    pub fn url(&self) -> String {
        format!("{}/v1", self.base())
    }

    /// The server root without `/v1`: `http://127.0.0.1:<port>` (an Azure `api_base`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a fault for the next request that has none yet (FIFO).
    pub fn push(&self, fault: Fault) {
        self.shared.lock().queue.push_back(fault);
    }

    /// Changes what requests get when the queue is empty.
    pub fn set_default(&self, fault: Fault) {
        self.shared.lock().default = fault;
    }

    /// From now on, requests without this key get OpenAI's 401 `invalid_api_key`.
    pub fn require_key(&self, key: impl Into<String>) {
        self.shared.lock().required_key = Some(key.into());
    }

    /// Whether requests are kept for [`FakeProvider::requests`] (the default) or only counted,
    /// for benchmarks that send millions.
    pub fn keep_requests(&self, keep: bool) {
        self.shared.lock().keep = keep;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The number of requests so far.
    pub fn request_count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// The latest request.
    pub fn last_request(&self) -> Option<Recorded> {
        self.shared.lock().requests.last().cloned()
    }

    /// Waits until at least `n` scripted bodies were cut by the client (see
    /// [`FakeProvider::cut_bodies`]) and returns the count; panics after `timeout`.
    pub async fn wait_for_cut_bodies(&self, n: usize, timeout: Duration) -> usize {
        let mut cut = self.shared.cut.subscribe();
        let reached = tokio::time::timeout(timeout, cut.wait_for(|c| *c >= n)).await;
        if !matches!(reached, Ok(Ok(_))) {
            panic!(
                "fake provider: expected {n} bodies cut by the client within {timeout:?}, got {}",
                *self.shared.cut.borrow()
            );
        }
        *self.shared.cut.borrow()
    }

    /// The number of streamed (scripted) bodies the client stopped reading before their end,
    /// by closing the connection: what an upstream sees when a gateway cancels a call.
    pub fn cut_bodies(&self) -> usize {
        *self.shared.cut.borrow()
    }

    /// Waits until at least `n` requests have arrived and returns all of them; panics after
    /// `timeout` (a test failure).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let mut count = self.shared.count.subscribe();
        let reached = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await;
        if !matches!(reached, Ok(Ok(_))) {
            panic!(
                "fake provider: expected {n} requests within {timeout:?}, got {}",
                self.request_count()
            );
        }
        self.requests()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.shared.closed.send_replace(true);
        self.server.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves when the fake is dropped.
    async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// Sleeps, or returns early when the fake is dropped.
    async fn sleep(&self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.closed() => {}
        }
    }

    /// Records a request and wakes the waiters.
    async fn record(&self, peer: SocketAddr, req: Request) -> Recorded {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let recorded = Recorded {
            peer,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            at: std::time::Instant::now(),
        };
        let count = {
            let mut state = self.lock();
            if state.keep {
                state.requests.push(recorded.clone());
            } else {
                state.forgotten += 1;
            }
            state.requests.len() + state.forgotten
        };
        // Counted under the lock but published after it: the highest count wins, so a request
        // that publishes late never sets the count back.
        self.count.send_if_modified(|c| {
            let newer = count > *c;
            *c = (*c).max(count);
            newer
        });
        recorded
    }

    /// The 401 body when a key is required and `presented` is not it.
    fn check_key(&self, presented: Option<&str>) -> Option<Response> {
        let required = self.lock().required_key.clone()?;
        if presented == Some(required.as_str()) {
            return None;
        }
        let masked = match presented {
            Some(k) if k.len() > 8 && k.is_char_boundary(3) && k.is_char_boundary(k.len() - 4) => {
                format!("{}***{}", &k[..3], &k[k.len() - 4..])
            }
            _ => "***".to_owned(),
        };
        let message = format!(
            "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
        );
        Some(json_response(
            401,
            error_body(&message, "invalid_request_error", json!("invalid_api_key")),
        ))
    }

    fn next_fault(&self) -> Fault {
        let mut state = self.lock();
        state
            .queue
            .pop_front()
            .unwrap_or_else(|| state.default.clone())
    }
}

async fn openai_route(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let recorded = shared.record(peer, req).await;
    let bearer = recorded
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(denied) = shared.check_key(bearer) {
        return denied;
    }
    let model = recorded.model().unwrap_or("gpt-4o").to_owned();
    answer(shared, recorded, model).await
}

async fn azure_route(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(deployment): Path<String>,
    req: Request,
) -> Response {
    let recorded = shared.record(peer, req).await;
    let has_version = recorded
        .query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("api-version=")));
    if !has_version {
        return json_response(
            404,
            json!({"error": {"code": "404", "message": "Resource not found"}}),
        );
    }
    if let Some(denied) = shared.check_key(recorded.header("api-key")) {
        return denied;
    }
    answer(shared, recorded, deployment).await
}

/// `POST /v1/embeddings`: one vector per input, `[index, chars of the text, 1.0]` (padded with
/// zeros to `dimensions` when given), so tests can check order and content. `Status`,
/// `RateLimited` and `Delay` faults apply; other faults answer normally.
async fn embeddings_route(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let recorded = shared.record(peer, req).await;
    let bearer = recorded
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(denied) = shared.check_key(bearer) {
        return denied;
    }
    let model = recorded
        .model()
        .unwrap_or("text-embedding-3-small")
        .to_owned();
    embed_answer(shared, recorded, model).await
}

/// Azure's embeddings path; like [`embeddings_route`].
async fn azure_embeddings_route(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(deployment): Path<String>,
    req: Request,
) -> Response {
    let recorded = shared.record(peer, req).await;
    if let Some(denied) = shared.check_key(recorded.header("api-key")) {
        return denied;
    }
    embed_answer(shared, recorded, deployment).await
}

async fn embed_answer(shared: Arc<Shared>, req: Recorded, model: String) -> Response {
    match shared.next_fault() {
        Fault::Status { status, body } => return raw_response(status, "application/json", body),
        Fault::RateLimited { retry_after_secs } => return rate_limited(retry_after_secs),
        Fault::Delay(wait) => shared.sleep(wait).await,
        _ => {}
    }
    let texts: Vec<String> = match &req.body["input"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        other => vec![other.to_string()],
    };
    let dims = req.body["dimensions"].as_u64().unwrap_or(3).max(3) as usize;
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = vec![json!(i as f64), json!(t.chars().count() as f64), json!(1.0)];
            v.resize(dims, json!(0.0));
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let tokens: usize = texts.iter().map(|t| t.chars().count().div_ceil(4)).sum();
    json_response(
        200,
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
        }),
    )
}

async fn unknown_route(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let recorded = shared.record(peer, req).await;
    let message = format!("Invalid URL ({} {})", recorded.method, recorded.path);
    json_response(
        404,
        error_body(&message, "invalid_request_error", Value::Null),
    )
}

/// Plays the next fault for a recorded, authorized request.
async fn answer(shared: Arc<Shared>, req: Recorded, model: String) -> Response {
    if req.body.is_null() {
        return json_response(
            400,
            error_body(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
                "invalid_request_error",
                Value::Null,
            ),
        );
    }
    let fault = shared.next_fault();
    let reply = Reply::new(&req, model);
    let stream = req.is_stream();
    match fault {
        Fault::Ok | Fault::GarbageSse if !stream => reply.complete(),
        Fault::Ok => reply.stream(shared, Ending::Done, false),
        Fault::GarbageSse => reply.stream(shared, Ending::Done, true),
        Fault::Status { status, body } => raw_response(status, "application/json", body),
        Fault::RateLimited { retry_after_secs } => rate_limited(retry_after_secs),
        Fault::Delay(wait) => {
            shared.sleep(wait).await;
            if stream {
                reply.stream(shared, Ending::Done, false)
            } else {
                reply.complete()
            }
        }
        Fault::StreamChunks { pieces, gap } => {
            let reply = reply.with_pieces(pieces, gap);
            if stream {
                reply.stream(shared, Ending::Done, false)
            } else {
                reply.complete()
            }
        }
        Fault::BrokenStream { after_chunks } if stream => {
            reply.stream(shared, Ending::Abort(after_chunks), false)
        }
        Fault::BrokenStream { .. } => {
            let body = Bytes::from(reply.completion().to_string());
            let half = body.slice(..body.len() / 2);
            play(shared, "application/json", vec![Step::Send(half), Step::Abort])
        }
        Fault::MalformedJson if stream => {
            let mut steps = vec![Step::Send(event(&reply.role_chunk()))];
            steps.push(Step::Send(Bytes::from_static(
                b"data: {\"id\": \"chatcmpl-broken\", \"choices\": [{\"delta\": {\"content\": \"unterminated\n\n",
            )));
            play(shared, "text/event-stream; charset=utf-8", steps)
        }
        Fault::MalformedJson => raw_response(
            200,
            "application/json",
            r#"{"id":"chatcmpl-broken","object":"chat.completion","choices":[{"index":0,"message":"#
                .to_owned(),
        ),
        Fault::NeverEnding { after_chunks } if stream => {
            reply.stream(shared, Ending::Hang(after_chunks), false)
        }
        Fault::NeverEnding { .. } => {
            shared.closed().await;
            raw_response(503, "text/plain", "fake provider closed".to_owned())
        }
        Fault::Endless { piece, gap } if stream => endless(shared, &reply, &piece, gap),
        Fault::Endless { .. } => {
            shared.closed().await;
            raw_response(503, "text/plain", "fake provider closed".to_owned())
        }
        Fault::MidStreamError { after_chunks } if stream => {
            reply.stream(shared, Ending::Error(after_chunks), false)
        }
        Fault::MidStreamError { .. } => json_response(500, server_error_body()),
        Fault::ContextLengthExceeded => json_response(
            400,
            json!({"error": {
                "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 200000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }}),
        ),
        Fault::ContentFiltered => json_response(
            400,
            json!({"error": {
                "message": "Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.",
                "type": "invalid_request_error",
                "param": null,
                "code": "content_policy_violation",
            }}),
        ),
        Fault::Fixed { content } => {
            let reply = reply.with_content(content);
            if stream {
                reply.stream(shared, Ending::Done, false)
            } else {
                reply.complete()
            }
        }
        Fault::ToolCalls => {
            let reply = reply.with_tool_call();
            if stream {
                reply.stream(shared, Ending::Done, false)
            } else {
                reply.complete()
            }
        }
    }
}

/// How a stream ends.
enum Ending {
    /// Every chunk, then `data: [DONE]`.
    Done,
    /// The first n events, then the connection breaks.
    Abort(usize),
    /// The first n events, then silence until the fake is dropped.
    Hang(usize),
    /// The first n events, then an error event, then the end of the body.
    Error(usize),
}

/// One answer, built from the request: the same data makes the JSON completion and the
/// stream, so both always agree.
struct Reply {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    prompt_tokens: u64,
    /// The content, in the pieces a stream sends.
    pieces: Vec<String>,
    /// The wait before each streamed piece and before the finish chunk.
    gap: Duration,
    /// The function to call when the answer is a tool call.
    tool_name: String,
    tool_call: bool,
}

impl Reply {
    fn new(req: &Recorded, model: String) -> Reply {
        let messages = req.body["messages"].as_array().cloned().unwrap_or_default();
        let prompt_tokens = messages
            .iter()
            .map(|m| 4 + tokens(&message_text(m)))
            .sum::<u64>()
            + 3;
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(message_text)
            .unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Reply {
            id: format!("chatcmpl-fake{:x}", now.as_nanos()),
            created: now.as_secs(),
            model,
            include_usage: req.body["stream_options"]["include_usage"] == true,
            prompt_tokens,
            pieces: split_words(&format!("echo: {last_user}")),
            gap: Duration::ZERO,
            tool_name: req.body["tools"][0]["function"]["name"]
                .as_str()
                .unwrap_or(DEFAULT_TOOL_NAME)
                .to_owned(),
            tool_call: false,
        }
    }

    fn with_content(mut self, content: String) -> Reply {
        self.pieces = split_words(&content);
        self
    }

    fn with_pieces(mut self, pieces: Vec<String>, gap: Duration) -> Reply {
        self.pieces = pieces;
        self.gap = gap;
        self
    }

    fn with_tool_call(mut self) -> Reply {
        self.tool_call = true;
        self
    }

    fn finish_reason(&self) -> &'static str {
        if self.tool_call { "tool_calls" } else { "stop" }
    }

    fn usage(&self) -> Value {
        let completion = if self.tool_call {
            tokens(TOOL_ARGUMENTS)
        } else {
            tokens(&self.pieces.concat())
        };
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }

    /// The `chat.completion` body.
    fn completion(&self) -> Value {
        let message = if self.tool_call {
            json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": TOOL_CALL_ID,
                    "type": "function",
                    "function": {"name": self.tool_name, "arguments": TOOL_ARGUMENTS},
                }],
                "refusal": null,
                "annotations": [],
            })
        } else {
            json!({
                "role": "assistant",
                "content": self.pieces.concat(),
                "refusal": null,
                "annotations": [],
            })
        };
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish_reason(),
            }],
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        })
    }

    fn complete(&self) -> Response {
        json_response(200, self.completion())
    }

    /// A `chat.completion.chunk` with one choice.
    fn chunk(&self, delta: Value, finish_reason: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if self.include_usage {
            // OpenAI sends `"usage": null` on every chunk but the last when usage is asked for.
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn role_chunk(&self) -> Value {
        let content = if self.tool_call {
            Value::Null
        } else {
            json!("")
        };
        self.chunk(
            json!({"role": "assistant", "content": content, "refusal": null}),
            Value::Null,
        )
    }

    /// Every event of the full stream, each with the wait before it (not `[DONE]`).
    fn events(&self) -> Vec<(Duration, Value)> {
        let mut events = vec![(Duration::ZERO, self.role_chunk())];
        if self.tool_call {
            let first = json!({"tool_calls": [{
                "index": 0,
                "id": TOOL_CALL_ID,
                "type": "function",
                "function": {"name": self.tool_name, "arguments": ""},
            }]});
            events.push((Duration::ZERO, self.chunk(first, Value::Null)));
            for piece in TOOL_ARGUMENT_PIECES {
                let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                events.push((self.gap, self.chunk(delta, Value::Null)));
            }
        } else {
            for piece in &self.pieces {
                events.push((self.gap, self.chunk(json!({"content": piece}), Value::Null)));
            }
        }
        events.push((self.gap, self.chunk(json!({}), json!(self.finish_reason()))));
        if self.include_usage {
            let mut usage = self.chunk(json!({}), Value::Null);
            usage["choices"] = json!([]);
            usage["usage"] = self.usage();
            events.push((Duration::ZERO, usage));
        }
        events
    }

    fn stream(&self, shared: Arc<Shared>, ending: Ending, garbage: bool) -> Response {
        let mut events = self.events();
        let keep = match ending {
            Ending::Done => events.len(),
            Ending::Abort(n) | Ending::Hang(n) | Ending::Error(n) => n,
        };
        events.truncate(keep);
        let mut steps = Vec::new();
        for (i, (wait, chunk)) in events.iter().enumerate() {
            if !wait.is_zero() {
                steps.push(Step::Sleep(*wait));
            }
            if garbage {
                steps.push(Step::Send(Bytes::from_static(GARBAGE[i % GARBAGE.len()])));
            }
            steps.push(Step::Send(event(chunk)));
        }
        match ending {
            Ending::Done => {
                if garbage {
                    steps.push(Step::Send(Bytes::from_static(b": almost done\n\n")));
                }
                steps.push(Step::Send(Bytes::from_static(b"data: [DONE]\n\n")));
            }
            Ending::Abort(_) => steps.push(Step::Abort),
            Ending::Hang(_) => steps.push(Step::Hang),
            Ending::Error(_) => steps.push(Step::Send(event(&server_error_body()))),
        }
        play(shared, "text/event-stream; charset=utf-8", steps)
    }
}

/// Lines an SSE reader must ignore: comments, fields it does not use, lines without a colon,
/// blank lines, CRLF endings.
const GARBAGE: &[&[u8]] = &[
    b": keep-alive\n\n",
    b"event: ping\nid: 42\nretry: 3000\n",
    b"this line is not server-sent events at all\n\n",
    b"\r\n",
    b"x-garbage: {not json}\r\n\r\n",
    b":\n",
];

/// Counts a scripted body dropped before its end (see [`FakeProvider::cut_bodies`]).
struct CutGuard {
    shared: Arc<Shared>,
    ended: bool,
}

impl Drop for CutGuard {
    fn drop(&mut self) {
        if !self.ended && !*self.shared.closed.borrow() {
            self.shared.cut.send_modify(|c| *c += 1);
        }
    }
}

/// One step of a scripted body.
enum Step {
    Send(Bytes),
    Sleep(Duration),
    /// Break the connection (the body ends in an error).
    Abort,
    /// Send nothing more until the fake is dropped, then break the connection.
    Hang,
}

/// A 200 response whose body plays `steps` as the server polls it. Each wait (and the moment
/// before a break) returns `Pending` to the server, which flushes what it has, so the client
/// really receives everything sent before a break or a silence.
fn play(shared: Arc<Shared>, content_type: &'static str, steps: Vec<Step>) -> Response {
    let shared_for_guard = shared.clone();
    let broken = || std::io::Error::other("fake provider broke the connection");
    let steps = futures::stream::iter(steps).then(move |step| {
        let shared = shared.clone();
        async move {
            match step {
                Step::Send(bytes) => Some(Ok(bytes)),
                Step::Sleep(wait) => {
                    shared.sleep(wait).await;
                    None
                }
                Step::Abort => {
                    tokio::task::yield_now().await;
                    Some(Err(broken()))
                }
                Step::Hang => {
                    shared.closed().await;
                    Some(Err(broken()))
                }
            }
        }
    });
    let guard = CutGuard {
        shared: shared_for_guard,
        ended: false,
    };
    let body = steps
        .filter_map(futures::future::ready)
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(
            guard,
            |guard, item: Option<Result<Bytes, std::io::Error>>| {
                // The body's end, or a break the fake made itself: not the client's doing.
                if !matches!(item, Some(Ok(_))) {
                    guard.ended = true;
                }
                futures::future::ready(Some(item))
            },
        )
        .filter_map(futures::future::ready);
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The body of [`Fault::Endless`].
fn endless(shared: Arc<Shared>, reply: &Reply, piece: &str, gap: Duration) -> Response {
    let first = event(&reply.role_chunk());
    let chunk = event(&reply.chunk(json!({"content": piece}), Value::Null));
    let guard = CutGuard {
        shared,
        ended: false,
    };
    let rest = futures::stream::unfold(guard, move |guard| {
        let chunk = chunk.clone();
        async move {
            // The fake is closing: not the client's doing (the guard does not count it).
            if *guard.shared.closed.borrow() {
                return None;
            }
            guard.shared.sleep(gap).await;
            Some((Ok::<_, std::io::Error>(chunk), guard))
        }
    });
    let body = futures::stream::once(async move { Ok(first) }).chain(rest);
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    response
}

fn rate_limited(retry_after_secs: u64) -> Response {
    let message = format!(
        "Rate limit reached for gpt-4o in organization org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in {retry_after_secs}s."
    );
    let mut response = json_response(
        429,
        error_body(&message, "requests", json!("rate_limit_exceeded")),
    );
    let headers = response.headers_mut();
    let secs = HeaderValue::from(retry_after_secs);
    headers.insert(header::RETRY_AFTER, secs);
    headers.insert("x-ratelimit-limit-requests", HeaderValue::from_static("3"));
    headers.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from_static("0"),
    );
    if let Ok(reset) = HeaderValue::from_str(&format!("{retry_after_secs}s")) {
        headers.insert("x-ratelimit-reset-requests", reset);
    }
    response
}

fn server_error_body() -> Value {
    error_body(
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        Value::Null,
    )
}

fn error_body(message: &str, kind: &str, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn json_response(status: u16, body: Value) -> Response {
    raw_response(status, "application/json", body.to_string())
}

fn raw_response(status: u16, content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// One SSE event: `data: <json>\n\n`.
fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// The text of a message: its string content, or its text parts joined.
fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Tokens at four characters each, rounded up (the `llmbus::limits` estimate).
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Word-sized pieces (whitespace, then a word) whose concatenation is `text`.
fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() && in_word {
            pieces.push(std::mem::take(&mut current));
            in_word = false;
        }
        in_word |= !c.is_whitespace();
        current.push(c);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}
