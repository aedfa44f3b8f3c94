//! A fake Anthropic: a real HTTP server on `127.0.0.1:0` that speaks the Messages API wire
//! format (`POST /v1/messages`, JSON or SSE), for the end-to-end tests of the `anthropic/`
//! adapter.
//!
//! **Default behaviour**:
//! - Every request is recorded. A request without `anthropic-version` gets Anthropic's 400
//!   `invalid_request_error`; with [`FakeAnthropic::require_key`], a request whose
//!   `x-api-key` is not the key gets the 401 `authentication_error`. Those do not consume a
//!   queued fault.
//! - The answer is one text block `"echo: <text of the last user message>"`, `stop_reason`
//!   `end_turn`, the request's `model`; usage `input_tokens = Σ (4 + ⌈chars/4⌉) + 3` over the
//!   messages (system included), `output_tokens = ⌈chars of the answer / 4⌉`, cache counts 0.
//! - With `"stream": true`: Anthropic's event sequence (`message_start`, `content_block_start`,
//!   `ping`, one `content_block_delta` per word-sized piece, `content_block_stop`,
//!   `message_delta`, `message_stop`), each with its `event:` name.
//!
//! **Faults**: [`FakeAnthropic::push`] queues a [`Fault`] for the next request (FIFO);
//! [`FakeAnthropic::set_default`] sets what requests get when the queue is empty.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::post,
};
use serde_json::{Value, json};

/// The id of the tool call [`Fault::ToolUse`] answers with.
pub const TOOL_USE_ID: &str = "toolu_01T1x1fJ34qAmk2tNTrN7Up6";
/// The input [`Fault::ToolUse`] answers with, as Anthropic's streaming docs show it.
pub const TOOL_INPUT: &str = r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#;
/// How [`TOOL_INPUT`] is split across `input_json_delta` events (the docs' split).
pub const TOOL_INPUT_PIECES: &[&str] = &[
    "",
    "{\"location\":",
    " \"San",
    " Francisc",
    "o,",
    " CA\"",
    ", ",
    "\"unit\": \"fah",
    "renheit\"}",
];

/// What the fake does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The echo answer.
    Ok,
    /// 529 `overloaded_error`, as Anthropic answers when it is overloaded.
    Overloaded,
    /// 429 `rate_limit_error` with `retry-after: <secs>`.
    RateLimited {
        /// The `retry-after` value in seconds.
        retry_after_secs: u64,
    },
    /// `status` with Anthropic's error body of `kind` and `message`.
    Error {
        /// The HTTP status.
        status: u16,
        /// The error type (`invalid_request_error`, ...).
        kind: String,
        /// The message.
        message: String,
    },
    /// A `tool_use` of the request's first tool (else `get_weather`) with [`TOOL_INPUT`],
    /// after a short text block; a stream splits the input into [`TOOL_INPUT_PIECES`].
    ToolUse,
    /// The echo answer, with this many prompt tokens read from the cache.
    Cached {
        /// `cache_read_input_tokens`.
        read: u64,
    },
    /// Stream: `message_start`, then an `overloaded_error` event. Non-stream: a 529.
    StreamError,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The path (`/v1/messages`).
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The JSON body; `Value::Null` when it was not JSON.
    pub body: Value,
}

impl Recorded {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The running fake; dropping it stops the server.
pub struct FakeAnthropic {
    addr: std::net::SocketAddr,
    shared: Arc<Mutex<Shared>>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    requests: Vec<Recorded>,
    queue: VecDeque<Fault>,
    default: Fault,
    key: Option<String>,
}

impl FakeAnthropic {
    /// Starts a fake on a free loopback port. Panics when it cannot bind (test setup).
    pub async fn start() -> FakeAnthropic {
        let shared = Arc::new(Mutex::new(Shared {
            requests: Vec::new(),
            queue: VecDeque::new(),
            default: Fault::Ok,
            key: None,
        }));
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .fallback(unknown)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake anthropic: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake anthropic: address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeAnthropic {
            addr,
            shared,
            server,
        }
    }

    /// The `api_base`: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a fault for the next request.
    pub fn push(&self, fault: Fault) {
        lock(&self.shared).queue.push_back(fault);
    }

    /// What requests get when the queue is empty.
    pub fn set_default(&self, fault: Fault) {
        lock(&self.shared).default = fault;
    }

    /// From now on, requests whose `x-api-key` is not `key` get a 401.
    pub fn require_key(&self, key: impl Into<String>) {
        lock(&self.shared).key = Some(key.into());
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared).requests.clone()
    }

    /// The number of requests so far.
    pub fn request_count(&self) -> usize {
        lock(&self.shared).requests.len()
    }

    /// The latest request.
    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.shared).requests.last().cloned()
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

async fn record(shared: &Mutex<Shared>, req: Request) -> Recorded {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let recorded = Recorded {
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    };
    lock(shared).requests.push(recorded.clone());
    recorded
}

async fn unknown(State(shared): State<Arc<Mutex<Shared>>>, req: Request) -> Response {
    record(&shared, req).await;
    error(404, "not_found_error", "Not found")
}

async fn messages(State(shared): State<Arc<Mutex<Shared>>>, req: Request) -> Response {
    let req = record(&shared, req).await;
    if req.header("anthropic-version").is_none() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let key = lock(&shared).key.clone();
    if let Some(key) = key
        && req.header("x-api-key") != Some(key.as_str())
    {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    if req.body.is_null() {
        return error(
            400,
            "invalid_request_error",
            "The request body is not valid JSON.",
        );
    }
    let fault = {
        let mut state = lock(&shared);
        state
            .queue
            .pop_front()
            .unwrap_or_else(|| state.default.clone())
    };
    let stream = req.body["stream"] == true;
    let answer = Answer::new(&req.body);
    match fault {
        Fault::Ok => answer.respond(stream),
        Fault::Cached { read } => Answer {
            cache_read: read,
            ..answer
        }
        .respond(stream),
        Fault::ToolUse => Answer {
            tool: true,
            ..answer
        }
        .respond(stream),
        Fault::Overloaded => error(529, "overloaded_error", "Overloaded"),
        Fault::RateLimited { retry_after_secs } => {
            let mut r = error(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after_secs));
            r
        }
        Fault::Error {
            status,
            kind,
            message,
        } => error(status, &kind, &message),
        Fault::StreamError if stream => {
            let mut body = sse("message_start", &answer.message_start());
            body.push_str(&sse(
                "error",
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            raw(200, "text/event-stream", body)
        }
        Fault::StreamError => error(529, "overloaded_error", "Overloaded"),
    }
}

/// One answer, built from the request.
struct Answer {
    id: String,
    model: String,
    text: String,
    input_tokens: u64,
    cache_read: u64,
    tool: bool,
    tool_name: String,
}

impl Answer {
    fn new(body: &Value) -> Answer {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let system = text_of(&body["system"]);
        let input_tokens = messages
            .iter()
            .map(|m| 4 + tokens(&text_of(&m["content"])))
            .sum::<u64>()
            + if system.is_empty() {
                0
            } else {
                4 + tokens(&system)
            }
            + 3;
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| text_of(&m["content"]))
            .unwrap_or_default();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Answer {
            id: format!("msg_fake{nanos:x}"),
            model: body["model"].as_str().unwrap_or("claude").to_owned(),
            text: format!("echo: {last_user}"),
            input_tokens,
            cache_read: 0,
            tool: false,
            tool_name: body["tools"][0]["name"]
                .as_str()
                .unwrap_or("get_weather")
                .to_owned(),
        }
    }

    fn text(&self) -> String {
        if self.tool {
            "Okay, let's check the weather for San Francisco, CA:".into()
        } else {
            self.text.clone()
        }
    }

    fn output_tokens(&self) -> u64 {
        tokens(&self.text()) + if self.tool { tokens(TOOL_INPUT) } else { 0 }
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": output_tokens,
        })
    }

    fn stop_reason(&self) -> &'static str {
        if self.tool { "tool_use" } else { "end_turn" }
    }

    fn respond(&self, stream: bool) -> Response {
        if stream {
            raw(200, "text/event-stream", self.events())
        } else {
            let mut content = vec![json!({"type": "text", "text": self.text()})];
            if self.tool {
                let input: Value = serde_json::from_str(TOOL_INPUT).unwrap_or_default();
                content.push(json!({"type": "tool_use", "id": TOOL_USE_ID, "name": self.tool_name, "input": input}));
            }
            let body = json!({
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": self.stop_reason(), "stop_sequence": null,
                "usage": self.usage(self.output_tokens()),
            });
            raw(200, "application/json", body.to_string())
        }
    }

    fn message_start(&self) -> Value {
        json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": self.usage(1),
        }})
    }

    /// The whole SSE body.
    fn events(&self) -> String {
        let mut out = sse("message_start", &self.message_start());
        out += &sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        out += &sse("ping", &json!({"type": "ping"}));
        for piece in split_words(&self.text()) {
            out += &sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            );
        }
        out += &sse(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        );
        if self.tool {
            out += &sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": TOOL_USE_ID, "name": self.tool_name, "input": {}}}),
            );
            for piece in TOOL_INPUT_PIECES {
                out += &sse(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}}),
                );
            }
            out += &sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 1}),
            );
        }
        out += &sse(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null}, "usage": {"output_tokens": self.output_tokens()}}),
        );
        out += &sse("message_stop", &json!({"type": "message_stop"}));
        out
    }
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_fake",
    });
    raw(status, "application/json", body.to_string())
}

fn raw(status: u16, content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(Body::from(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The text of a string or of a list of blocks (text blocks and tool results' text).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b["type"].as_str() {
                Some("text") => b["text"].as_str().unwrap_or_default().to_owned(),
                Some("tool_result") => text_of(&b["content"]),
                _ => String::new(),
            })
            .collect(),
        _ => String::new(),
    }
}

fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Word-sized pieces whose concatenation is `text`.
fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c == ' ' && !current.trim().is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}
