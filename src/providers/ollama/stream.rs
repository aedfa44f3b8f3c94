//! Ollama's NDJSON stream → OpenAI chunks. Each line is one JSON object with a piece of
//! `message.content` (or `message.thinking`, or whole `message.tool_calls`); the last has
//! `done: true`, `done_reason` and the counts. A line `{"error": "..."}` is an error item,
//! and so is a body that ends before `done: true`.

use std::collections::VecDeque;

use futures::{Stream, StreamExt};
use serde_json::Value;

use super::convert;
use crate::{
    providers::{ChunkStream, ErrorClass, ProviderError, http},
    wire::openai::{
        ChatCompletionChunk, ChunkChoice, Delta, Extra, FunctionCallDelta, Role, ToolCallDelta,
        unix_now,
    },
};

/// The longest line buffered before the stream is declared broken.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Splits a byte stream into lines (without the `\n`; blank lines skipped).
pub fn lines<S>(bytes: S) -> impl Stream<Item = Result<Vec<u8>, ProviderError>> + Send
where
    S: Stream<Item = Result<bytes::Bytes, ProviderError>> + Send + 'static,
{
    struct State<S> {
        bytes: std::pin::Pin<Box<S>>,
        buffer: Vec<u8>,
        ready: VecDeque<Vec<u8>>,
        done: bool,
    }
    let state = State {
        bytes: Box::pin(bytes),
        buffer: Vec::new(),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.ready.pop_front() {
                return Some((Ok(line), st));
            }
            if st.done {
                return None;
            }
            match st.bytes.next().await {
                Some(Ok(chunk)) => {
                    st.buffer.extend_from_slice(&chunk);
                    while let Some(at) = st.buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = st.buffer.drain(..=at).collect();
                        let line = line.trim_ascii().to_vec();
                        if !line.is_empty() {
                            st.ready.push_back(line);
                        }
                    }
                    if st.buffer.len() > MAX_LINE {
                        st.done = true;
                        return Some((
                            Err(ProviderError::new(
                                ErrorClass::InvalidResponse,
                                format!("an NDJSON line is longer than {MAX_LINE} bytes"),
                            )),
                            st,
                        ));
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    let rest = std::mem::take(&mut st.buffer);
                    let rest = rest.trim_ascii();
                    if !rest.is_empty() {
                        st.ready.push_back(rest.to_vec());
                    }
                }
            }
        }
    })
}

/// The state of one stream's conversion.
#[derive(Debug)]
pub struct Converter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    started: bool,
    tools: u32,
    done: bool,
}

impl Converter {
    /// A converter at the start of a stream.
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: unix_now(),
            model: model.to_owned(),
            include_usage,
            started: false,
            tools: 0,
            done: false,
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

    /// Converts one line.
    pub fn line(&mut self, line: &[u8]) -> Result<Vec<ChatCompletionChunk>, ProviderError> {
        let value: Value = serde_json::from_slice(line).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("an Ollama stream line is not JSON: {e}"),
            )
        })?;
        if http::is_error_body(&value) {
            return Err(http::error_from_event(&value));
        }
        let message = value.get("message").cloned().unwrap_or(Value::Null);
        let mut out = Vec::new();
        let mut delta = Delta::default();
        if !self.started {
            self.started = true;
            delta.role = Some(Role::Assistant);
        }
        if let Some(text) = message.get("content").and_then(Value::as_str)
            && (!text.is_empty() || delta.role.is_some())
        {
            delta.content = Some(text.to_owned());
        }
        if let Some(thinking) = message
            .get("thinking")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            delta.reasoning_content = Some(thinking.to_owned());
        }
        let calls = convert::tool_calls(&message);
        if !calls.is_empty() {
            delta.tool_calls = Some(
                calls
                    .into_iter()
                    .map(|call| {
                        let index = self.tools;
                        self.tools += 1;
                        ToolCallDelta {
                            index,
                            id: Some(call.id),
                            kind: Some("function".into()),
                            function: Some(FunctionCallDelta {
                                name: Some(call.function.name),
                                arguments: Some(call.function.arguments),
                            }),
                        }
                    })
                    .collect(),
            );
        }
        if delta != Delta::default() {
            out.push(self.chunk(delta, None));
        }
        if value.get("done").and_then(Value::as_bool) == Some(true) {
            self.done = true;
            let finish = convert::finish_reason(&value, self.tools > 0);
            out.push(self.chunk(Delta::default(), Some(finish)));
            if self.include_usage {
                let mut chunk = self.chunk(Delta::default(), None);
                chunk.choices.clear();
                chunk.usage = Some(convert::usage(&value));
                out.push(chunk);
            }
        }
        Ok(out)
    }
}

/// OpenAI chunks from an Ollama NDJSON body.
pub fn chunks<S>(bytes: S, model: &str, include_usage: bool, key: Option<String>) -> ChunkStream
where
    S: Stream<Item = Result<bytes::Bytes, ProviderError>> + Send + 'static,
{
    struct State<L> {
        lines: std::pin::Pin<Box<L>>,
        converter: Converter,
        ready: VecDeque<ChatCompletionChunk>,
        finished: bool,
        key: Option<String>,
    }
    let state = State {
        lines: Box::pin(lines(bytes)),
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
            if st.finished || st.converter.done {
                return None;
            }
            let err = match st.lines.next().await {
                Some(Ok(line)) => match st.converter.line(&line) {
                    Ok(chunks) => {
                        st.ready.extend(chunks);
                        continue;
                    }
                    Err(e) => e,
                },
                Some(Err(e)) => e,
                None => ProviderError::new(
                    ErrorClass::InvalidResponse,
                    "the Ollama stream ended before `done: true`",
                ),
            };
            st.finished = true;
            return Some((Err(err.redact(st.key.as_deref())), st));
        }
    })
    .boxed()
}
