//! Cohere v2's SSE stream → OpenAI chunks. Each event's JSON carries its `type`:
//!
//! | event | chunk |
//! | --- | --- |
//! | `message-start` | `delta: {role: assistant, content: ""}` |
//! | `content-delta` | `content` (or `reasoning_content` for `thinking`) |
//! | `tool-call-start` | a `tool_calls` delta with id, name and the first arguments |
//! | `tool-call-delta` | a `tool_calls` delta with the next piece of the arguments |
//! | `message-end` | empty delta with `finish_reason`; then the usage chunk when asked |
//!
//! `content-start`/`-end`, `tool-plan-delta`, `tool-call-end`, citations and unknown events
//! add nothing. A `message-end` with `ERROR`/`TIMEOUT`, an error object, or a stream that ends
//! before `message-end` is one error item.

use std::collections::{HashMap, VecDeque};

use futures::{Stream, StreamExt};
use serde_json::Value;

use super::convert;
use crate::{
    providers::{ChunkStream, ErrorClass, ProviderError, http, sse},
    wire::openai::{
        ChatCompletionChunk, ChunkChoice, Delta, Extra, FunctionCallDelta, Role, ToolCallDelta,
        unix_now,
    },
};

/// The state of one stream's conversion.
#[derive(Debug)]
pub struct Converter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Cohere's tool-call index → OpenAI's.
    tools: HashMap<u64, u32>,
    ended: bool,
}

impl Converter {
    /// A converter at the start of a stream.
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: unix_now(),
            model: model.to_owned(),
            include_usage,
            tools: HashMap::new(),
            ended: false,
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(str::to_owned),
                logprobs: None,
                extra: Extra::new(),
            }],
            usage: None,
            system_fingerprint: None,
            extra: Extra::new(),
        }
    }

    fn tool_index(&mut self, event: &Value) -> u32 {
        let cohere = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        let next = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
        *self.tools.entry(cohere).or_insert(next)
    }

    /// Converts one event's JSON.
    pub fn event(&mut self, event: &Value) -> Result<Vec<ChatCompletionChunk>, ProviderError> {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let message = event.pointer("/delta/message").unwrap_or(&Value::Null);
        let chunks = match kind {
            "message-start" => vec![self.chunk(
                Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..Delta::default()
                },
                None,
            )],
            "content-delta" => {
                let content = message.get("content").unwrap_or(&Value::Null);
                let text = |k: &str| content.get(k).and_then(Value::as_str).map(str::to_owned);
                let delta = Delta {
                    content: text("text"),
                    reasoning_content: text("thinking"),
                    ..Delta::default()
                };
                if delta == Delta::default() {
                    Vec::new()
                } else {
                    vec![self.chunk(delta, None)]
                }
            }
            "tool-call-start" | "tool-call-delta" => {
                let call = message.get("tool_calls").unwrap_or(&Value::Null);
                let field = |p: &str| call.pointer(p).and_then(Value::as_str).map(str::to_owned);
                let index = self.tool_index(event);
                let start = kind == "tool-call-start";
                let delta = ToolCallDelta {
                    index,
                    id: if start { field("/id") } else { None },
                    kind: start.then(|| "function".to_owned()),
                    function: Some(FunctionCallDelta {
                        name: if start { field("/function/name") } else { None },
                        arguments: Some(field("/function/arguments").unwrap_or_default()),
                    }),
                };
                vec![self.chunk(
                    Delta {
                        tool_calls: Some(vec![delta]),
                        ..Delta::default()
                    },
                    None,
                )]
            }
            "message-end" => {
                self.ended = true;
                let delta = event.get("delta").unwrap_or(&Value::Null);
                let reason = delta
                    .get("finish_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("COMPLETE");
                let finish = convert::finish_reason(reason)?;
                let mut out = vec![self.chunk(Delta::default(), Some(finish))];
                if self.include_usage
                    && let Some(usage) = delta.get("usage")
                {
                    let mut chunk = self.chunk(Delta::default(), None);
                    chunk.choices.clear();
                    chunk.usage = Some(convert::usage(usage));
                    out.push(chunk);
                }
                out
            }
            "" if event.get("message").is_some() => {
                return Err(http::error_from_event(event));
            }
            _ => Vec::new(),
        };
        Ok(chunks)
    }
}

/// OpenAI chunks from a Cohere v2 SSE body.
pub fn chunks<S>(bytes: S, model: &str, include_usage: bool, key: Option<String>) -> ChunkStream
where
    S: Stream<Item = Result<bytes::Bytes, ProviderError>> + Send + 'static,
{
    struct State {
        events: futures::stream::BoxStream<'static, Result<sse::SseEvent, ProviderError>>,
        converter: Converter,
        ready: VecDeque<ChatCompletionChunk>,
        finished: bool,
        key: Option<String>,
    }
    let state = State {
        events: sse::events(bytes),
        converter: Converter::new(model, include_usage),
        ready: VecDeque::new(),
        finished: false,
        key,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.ready.pop_front() {
                return Some((Ok(chunk), st));
            }
            if st.finished || st.converter.ended {
                return None;
            }
            let err = match st.events.next().await {
                Some(Ok(event)) => {
                    let data = event.data.trim();
                    if data.is_empty() || data == "[DONE]" {
                        continue;
                    }
                    match serde_json::from_str::<Value>(data) {
                        Ok(value) => match st.converter.event(&value) {
                            Ok(chunks) => {
                                st.ready.extend(chunks);
                                continue;
                            }
                            Err(e) => e,
                        },
                        Err(e) => ProviderError::new(
                            ErrorClass::InvalidResponse,
                            format!("a Cohere stream event is not JSON: {e}"),
                        ),
                    }
                }
                Some(Err(e)) => e,
                None => ProviderError::new(
                    ErrorClass::InvalidResponse,
                    "the Cohere stream ended before `message-end`",
                ),
            };
            st.finished = true;
            return Some((Err(err.redact(st.key.as_deref())), st));
        }
    })
    .boxed()
}
