//! A fake upstream speaking three native wire formats over loopback HTTP: AWS Bedrock
//! Converse (with real `application/vnd.amazon.eventstream` frames, encoded by
//! `aws-smithy-eventstream`), Ollama's `/api/chat` and `/api/embed` (NDJSON streams), and
//! Cohere's `/v2/chat` and `/v2/embed` (SSE streams).
//!
//! Every request is recorded. A reply pushed with [`FakeNative::push`] answers the next
//! request; with none queued, the fake answers by path with an echo (`"echo: <last user
//! text>"`) in the format the path belongs to:
//!
//! | path | answer |
//! | --- | --- |
//! | `/model/{id}/converse` | a Converse response |
//! | `/model/{id}/converse-stream` | event-stream frames: messageStart, two text deltas, messageStop, metadata |
//! | `/model/{id}/invoke` | a Titan embedding `{"embedding": [..], "inputTextTokenCount": n}` |
//! | `/api/chat` | an Ollama answer, or NDJSON lines unless `"stream": false` |
//! | `/api/embed` | `{"embeddings": [[..] per input], "prompt_eval_count": n}` |
//! | `/v2/chat` | a Cohere v2 answer, or SSE events when `"stream": true` |
//! | `/v2/embed` | `{"embeddings": {"float": [[..]]}, "meta": {"billed_units": ..}}` |
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `POST`, ...
    pub method: String,
    /// The path, percent-encoding kept.
    pub path: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON (`null` when it was not JSON).
    pub body: Value,
    /// The body as it came.
    pub raw: Vec<u8>,
}

impl Seen {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A canned answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A JSON body with a status and extra headers.
    Json {
        status: u16,
        headers: Vec<(String, String)>,
        body: Value,
    },
    /// A 200 whose body is sent in these parts, one write each.
    Parts {
        content_type: String,
        parts: Vec<Vec<u8>>,
    },
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::Json {
            status,
            headers: Vec::new(),
            body,
        }
    }

    /// A JSON answer with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Json { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    /// Bedrock's error shape: `x-amzn-ErrorType` and `{"message": ...}`.
    pub fn bedrock_error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::json(status, json!({ "message": message })).with_header(
            "x-amzn-ErrorType",
            &format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        )
    }

    /// A ConverseStream body: one event frame per `(event type, payload)`, each frame split
    /// into two writes so the reader must join frames across reads.
    pub fn bedrock_events(events: &[(&str, Value)]) -> Reply {
        let frames = events
            .iter()
            .map(|(kind, payload)| event_frame(kind, payload))
            .collect();
        Reply::bedrock_frames(frames)
    }

    /// A ConverseStream body of ready frames (see [`event_frame`], [`exception_frame`]).
    pub fn bedrock_frames(frames: Vec<Vec<u8>>) -> Reply {
        let mut parts = Vec::new();
        for frame in frames {
            let (a, b) = frame.split_at(frame.len() / 2);
            parts.push(a.to_vec());
            parts.push(b.to_vec());
        }
        Reply::Parts {
            content_type: "application/vnd.amazon.eventstream".into(),
            parts,
        }
    }

    /// An NDJSON body (Ollama): one JSON document per line, one write per line.
    pub fn ndjson(lines: &[Value]) -> Reply {
        Reply::Parts {
            content_type: "application/x-ndjson".into(),
            parts: lines
                .iter()
                .map(|l| format!("{l}\n").into_bytes())
                .collect(),
        }
    }

    /// An SSE body (Cohere v2): `event: <type>` and `data: <json>` per event.
    pub fn sse(events: &[Value]) -> Reply {
        Reply::Parts {
            content_type: "text/event-stream".into(),
            parts: events
                .iter()
                .map(|e| {
                    let kind = e["type"].as_str().unwrap_or("message");
                    format!("event: {kind}\ndata: {e}\n\n").into_bytes()
                })
                .collect(),
        }
    }
}

fn frame(headers: Vec<Header>, payload: Vec<u8>) -> Vec<u8> {
    let message = Message::new_from_parts(headers, payload);
    let mut out = Vec::new();
    write_message_to(&message, &mut out).expect("the frame encodes");
    out
}

fn string(name: &'static str, value: &str) -> Header {
    Header::new(name, HeaderValue::String(value.to_owned().into()))
}

/// An event frame, as Bedrock sends them: `:event-type`, `:content-type`, `:message-type`.
pub fn event_frame(kind: &str, payload: &Value) -> Vec<u8> {
    frame(
        vec![
            string(":event-type", kind),
            string(":content-type", "application/json"),
            string(":message-type", "event"),
        ],
        payload.to_string().into_bytes(),
    )
}

/// An exception frame (`:message-type: exception`, `:exception-type`).
pub fn exception_frame(kind: &str, message: &str) -> Vec<u8> {
    frame(
        vec![
            string(":exception-type", kind),
            string(":content-type", "application/json"),
            string(":message-type", "exception"),
        ],
        json!({ "message": message }).to_string().into_bytes(),
    )
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    queue: Mutex<VecDeque<Reply>>,
}

/// The running fake; dropping it stops the server.
pub struct FakeNative {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNative {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeNative {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> FakeNative {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeNative {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues the answer to a coming request.
    pub fn push(&self, reply: Reply) {
        self.shared.queue.lock().unwrap().push_back(reply);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The last request.
    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the fake was called")
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        raw: bytes.to_vec(),
    };
    shared.seen.lock().unwrap().push(seen.clone());
    let queued = shared.queue.lock().unwrap().pop_front();
    respond(queued.unwrap_or_else(|| default_reply(&seen)))
}

fn respond(reply: Reply) -> Response {
    match reply {
        Reply::Json {
            status,
            headers,
            body,
        } => {
            let mut builder = Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
                .header(header::CONTENT_TYPE, "application/json");
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            builder.body(Body::from(body.to_string())).unwrap()
        }
        Reply::Parts {
            content_type,
            parts,
        } => {
            let stream = futures::stream::unfold(parts.into_iter(), |mut it| async move {
                let part = it.next()?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                Some((Ok::<_, Infallible>(Bytes::from(part)), it))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// The text of a content value: a string, or the `text` of its parts/blocks.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default()
}

fn default_reply(seen: &Seen) -> Reply {
    let echo = format!("echo: {}", last_user_text(&seen.body));
    let path = seen.path.as_str();
    if path.starts_with("/model/") && path.ends_with("/converse") {
        Reply::json(
            200,
            json!({
                "output": {"message": {"role": "assistant", "content": [{"text": echo}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16},
                "metrics": {"latencyMs": 42}
            }),
        )
    } else if path.starts_with("/model/") && path.ends_with("/converse-stream") {
        let (a, b) = echo.split_at(echo.len() / 2);
        Reply::bedrock_events(&[
            ("messageStart", json!({"role": "assistant"})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": a}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": b}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 0})),
            ("messageStop", json!({"stopReason": "end_turn"})),
            (
                "metadata",
                json!({"usage": {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16},
                       "metrics": {"latencyMs": 42}}),
            ),
        ])
    } else if path.starts_with("/model/") && path.ends_with("/invoke") {
        let n = seen.body["inputText"].as_str().map_or(0, str::len) as u64;
        Reply::json(
            200,
            json!({"embedding": [0.25, -0.5, n as f64], "inputTextTokenCount": n}),
        )
    } else if path == "/api/chat" {
        ollama_chat(&seen.body, &echo)
    } else if path == "/api/embed" {
        let inputs = match &seen.body["input"] {
            Value::Array(a) => a.len(),
            _ => 1,
        };
        Reply::json(
            200,
            json!({
                "model": seen.body["model"],
                "embeddings": (0..inputs).map(|i| json!([0.1, i as f64])).collect::<Vec<_>>(),
                "prompt_eval_count": 7 * inputs
            }),
        )
    } else if path == "/v2/chat" {
        cohere_chat(&seen.body, &echo)
    } else if path == "/v2/embed" {
        let texts = seen.body["texts"].as_array().map_or(0, Vec::len);
        Reply::json(
            200,
            json!({
                "id": "emb-1",
                "embeddings": {"float": (0..texts).map(|i| json!([0.5, i as f64])).collect::<Vec<_>>()},
                "texts": seen.body["texts"],
                "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 3 * texts}}
            }),
        )
    } else {
        Reply::json(404, json!({"message": format!("no route {path}")}))
    }
}

fn ollama_chat(body: &Value, echo: &str) -> Reply {
    let model = body["model"].clone();
    let at = "2024-07-22T20:33:28.123648Z";
    if body["stream"] == json!(false) {
        return Reply::json(
            200,
            json!({
                "model": model, "created_at": at,
                "message": {"role": "assistant", "content": echo},
                "done": true, "done_reason": "stop",
                "total_duration": 5191566416u64, "load_duration": 2154458,
                "prompt_eval_count": 26, "prompt_eval_duration": 383809000,
                "eval_count": 9, "eval_duration": 4799921000u64
            }),
        );
    }
    let mut lines: Vec<Value> = echo
        .split_inclusive(' ')
        .map(|piece| {
            json!({"model": model, "created_at": at,
                   "message": {"role": "assistant", "content": piece}, "done": false})
        })
        .collect();
    lines.push(json!({
        "model": model, "created_at": at,
        "message": {"role": "assistant", "content": ""},
        "done": true, "done_reason": "stop",
        "total_duration": 5191566416u64, "prompt_eval_count": 26, "eval_count": 9
    }));
    Reply::ndjson(&lines)
}

fn cohere_chat(body: &Value, echo: &str) -> Reply {
    let usage = json!({
        "billed_units": {"input_tokens": 5, "output_tokens": 3},
        "tokens": {"input_tokens": 71, "output_tokens": 3}
    });
    if body["stream"] != json!(true) {
        return Reply::json(
            200,
            json!({
                "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
                "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": echo}]},
                "usage": usage
            }),
        );
    }
    let mut events = vec![
        json!({"type": "message-start", "id": "29f14a5a-11de-4cae-9800-25e4747408ea",
               "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "",
                                     "tool_calls": [], "citations": []}}}),
        json!({"type": "content-start", "index": 0,
               "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
    ];
    for piece in echo.split_inclusive(' ') {
        events.push(json!({"type": "content-delta", "index": 0,
                           "delta": {"message": {"content": {"text": piece}}}}));
    }
    events.push(json!({"type": "content-end", "index": 0}));
    events.push(json!({"type": "message-end",
                       "delta": {"finish_reason": "COMPLETE", "usage": usage}}));
    Reply::sse(&events)
}
