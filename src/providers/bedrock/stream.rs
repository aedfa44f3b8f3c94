//! ConverseStream → OpenAI chunks.
//!
//! The body is `application/vnd.amazon.eventstream`: binary frames (prelude, headers,
//! payload, CRCs) that `aws-smithy-eventstream` decodes. Each event frame names its event in
//! `:event-type` and carries a JSON payload:
//!
//! | event | chunk |
//! | --- | --- |
//! | `messageStart` | `delta: {role: assistant, content: ""}` |
//! | `contentBlockStart` with `toolUse` | a `tool_calls` delta with id, name, empty arguments |
//! | `contentBlockDelta` `text` / `reasoningContent.text` | `content` / `reasoning_content` |
//! | `contentBlockDelta` `toolUse.input` | a `tool_calls` delta with that piece, as it came |
//! | `contentBlockStop` | nothing |
//! | `messageStop` | empty delta with `finish_reason` |
//! | `metadata` | the usage chunk (`choices: []`), when the request asked for usage |
//!
//! An exception frame (`:message-type: exception`) or an error frame becomes one error item
//! and ends the stream; so does a body that ends before `messageStop`.

use std::collections::{HashMap, VecDeque};

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::Value;

use super::{error, response};
use crate::{
    providers::{ChunkStream, ErrorClass, ProviderError},
    wire::openai::{
        ChatCompletionChunk, ChunkChoice, Delta, Extra, FunctionCallDelta, Role, ToolCallDelta,
        unix_now,
    },
};

/// What the converter needs to know about the call.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// The model named in every chunk.
    pub model: String,
    /// Whether to send the usage chunk.
    pub include_usage: bool,
}

/// The state of one stream's conversion.
#[derive(Debug)]
pub struct Converter {
    info: StreamInfo,
    id: String,
    created: u64,
    /// Content block index → tool call index, for tool blocks.
    tools: HashMap<u64, u32>,
    stopped: bool,
}

/// What one decoded frame means.
#[derive(Debug)]
pub enum Step {
    /// Chunks to send (possibly none).
    Chunks(Vec<ChatCompletionChunk>),
    /// The stream failed.
    Error(ProviderError),
}

fn header_str<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

impl Converter {
    /// A converter at the start of a stream.
    pub fn new(info: StreamInfo) -> Self {
        Self {
            info,
            id: response::completion_id(),
            created: unix_now(),
            tools: HashMap::new(),
            stopped: false,
        }
    }

    /// True once `messageStop` has arrived: the stream may end.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.info.model.clone(),
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

    fn tool_delta(&self, call: ToolCallDelta) -> ChatCompletionChunk {
        self.chunk(
            Delta {
                tool_calls: Some(vec![call]),
                ..Delta::default()
            },
            None,
        )
    }

    /// Converts one frame.
    pub fn frame(&mut self, message: &Message) -> Step {
        let payload = message.payload();
        match header_str(message, ":message-type") {
            Some("event") => {}
            Some("exception") => {
                let name = header_str(message, ":exception-type").unwrap_or("exception");
                return Step::Error(error::from_exception(name, payload));
            }
            Some("error") => {
                let code = header_str(message, ":error-code").unwrap_or("error");
                let text = header_str(message, ":error-message").unwrap_or("");
                return Step::Error(error::from_exception(code, text.as_bytes()));
            }
            other => {
                return Step::Error(ProviderError::new(
                    ErrorClass::InvalidResponse,
                    format!("a ConverseStream frame has the message type {other:?}"),
                ));
            }
        }
        let Some(event) = header_str(message, ":event-type") else {
            return Step::Error(ProviderError::new(
                ErrorClass::InvalidResponse,
                "a ConverseStream event has no `:event-type`",
            ));
        };
        let body: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return Step::Error(ProviderError::new(
                    ErrorClass::InvalidResponse,
                    format!("a ConverseStream `{event}` event is not JSON: {e}"),
                ));
            }
        };
        Step::Chunks(self.event(event, &body))
    }

    /// Converts one event's JSON payload.
    pub fn event(&mut self, event: &str, body: &Value) -> Vec<ChatCompletionChunk> {
        let index = body
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match event {
            "messageStart" => vec![self.chunk(
                Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..Delta::default()
                },
                None,
            )],
            "contentBlockStart" => match body.pointer("/start/toolUse") {
                Some(tool) => {
                    let n = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                    self.tools.insert(index, n);
                    let field = |k: &str| tool.get(k).and_then(Value::as_str).map(str::to_owned);
                    vec![self.tool_delta(ToolCallDelta {
                        index: n,
                        id: field("toolUseId"),
                        kind: Some("function".into()),
                        function: Some(FunctionCallDelta {
                            name: field("name"),
                            arguments: Some(String::new()),
                        }),
                    })]
                }
                None => Vec::new(),
            },
            "contentBlockDelta" => self.delta(index, body.get("delta").unwrap_or(&Value::Null)),
            "messageStop" => {
                self.stopped = true;
                let reason = body
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                vec![self.chunk(Delta::default(), Some(response::finish_reason(reason)))]
            }
            "metadata" if self.info.include_usage => match body.get("usage") {
                Some(usage) => {
                    let mut chunk = self.chunk(Delta::default(), None);
                    chunk.choices.clear();
                    chunk.usage = Some(response::usage(usage));
                    vec![chunk]
                }
                None => Vec::new(),
            },
            // contentBlockStop, metadata without include_usage, and events newer than llmbus.
            _ => Vec::new(),
        }
    }

    fn delta(&mut self, index: u64, delta: &Value) -> Vec<ChatCompletionChunk> {
        if let Some(text) = delta.get("text").and_then(Value::as_str) {
            return vec![self.chunk(
                Delta {
                    content: Some(text.to_owned()),
                    ..Delta::default()
                },
                None,
            )];
        }
        if let Some(text) = delta
            .pointer("/reasoningContent/text")
            .and_then(Value::as_str)
        {
            return vec![self.chunk(
                Delta {
                    reasoning_content: Some(text.to_owned()),
                    ..Delta::default()
                },
                None,
            )];
        }
        if let Some(piece) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
            // A block that started without `contentBlockStart` still gets its own call index.
            let next = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
            let n = *self.tools.entry(index).or_insert(next);
            return vec![self.tool_delta(ToolCallDelta {
                index: n,
                id: None,
                kind: None,
                function: Some(FunctionCallDelta {
                    name: None,
                    arguments: Some(piece.to_owned()),
                }),
            })];
        }
        Vec::new()
    }
}

/// Decodes frames from a byte stream: a transport error, a broken frame or a body that ends
/// inside a frame is an error item (and the last item), after every frame before it, however
/// the body's bytes were split into reads. (A broken frame used to be reported before the whole
/// frames of the same read, so the converter stopped and lost them; found by the
/// `bedrock_stream` fuzz target.)
pub fn frames<S>(bytes: S) -> impl Stream<Item = Result<Message, ProviderError>> + Send
where
    S: Stream<Item = Result<bytes::Bytes, ProviderError>> + Send + 'static,
{
    struct State<S> {
        bytes: std::pin::Pin<Box<S>>,
        buffer: BytesMut,
        decoder: MessageFrameDecoder,
        ready: VecDeque<Message>,
        /// A broken frame's error, for after the frames in `ready`.
        broken: Option<ProviderError>,
        done: bool,
    }
    let state = State {
        bytes: Box::pin(bytes),
        buffer: BytesMut::new(),
        decoder: MessageFrameDecoder::new(),
        ready: VecDeque::new(),
        broken: None,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(message) = st.ready.pop_front() {
                return Some((Ok(message), st));
            }
            if let Some(err) = st.broken.take() {
                return Some((Err(err), st));
            }
            if st.done {
                return None;
            }
            match st.bytes.next().await {
                Some(Ok(chunk)) => {
                    st.buffer.extend_from_slice(&chunk);
                    loop {
                        match st.decoder.decode_frame(&mut st.buffer) {
                            Ok(DecodedFrame::Complete(m)) => st.ready.push_back(m),
                            Ok(DecodedFrame::Incomplete) => break,
                            Err(e) => {
                                st.done = true;
                                st.broken = Some(ProviderError::new(
                                    ErrorClass::InvalidResponse,
                                    format!("a ConverseStream frame is broken: {e}"),
                                ));
                                break;
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    if st.buffer.has_remaining() {
                        return Some((
                            Err(ProviderError::new(
                                ErrorClass::InvalidResponse,
                                "the ConverseStream body ended inside a frame",
                            )),
                            st,
                        ));
                    }
                }
            }
        }
    })
}

/// OpenAI chunks from a ConverseStream body. `secrets` are scrubbed from error messages.
pub fn chunks<S>(bytes: S, info: StreamInfo, secrets: Vec<String>) -> ChunkStream
where
    S: Stream<Item = Result<bytes::Bytes, ProviderError>> + Send + 'static,
{
    struct State<F> {
        frames: std::pin::Pin<Box<F>>,
        converter: Converter,
        ready: VecDeque<ChatCompletionChunk>,
        finished: bool,
        secrets: Vec<String>,
    }
    let state = State {
        frames: Box::pin(frames(bytes)),
        converter: Converter::new(info),
        ready: VecDeque::new(),
        finished: false,
        secrets,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.ready.pop_front() {
                return Some((Ok(chunk), st));
            }
            if st.finished {
                return None;
            }
            let err = match st.frames.next().await {
                Some(Ok(message)) => match st.converter.frame(&message) {
                    Step::Chunks(chunks) => {
                        st.ready.extend(chunks);
                        continue;
                    }
                    Step::Error(e) => e,
                },
                Some(Err(e)) => e,
                None if st.converter.stopped() => return None,
                None => ProviderError::new(
                    ErrorClass::InvalidResponse,
                    "the ConverseStream ended before `messageStop`",
                ),
            };
            st.finished = true;
            let err = st
                .secrets
                .iter()
                .fold(err, |e, s| e.redact(Some(s.as_str())));
            return Some((Err(err), st));
        }
    })
    .boxed()
}
