//! Gemini's `streamGenerateContent?alt=sse` → OpenAI `chat.completion.chunk`s.
//!
//! Every SSE event is a whole `GenerateContentResponse` holding the new parts; there is no
//! `[DONE]`: the stream ends with the connection, after an event that carries `finishReason`
//! (and the final `usageMetadata`). [`StreamConverter`] turns the events into chunks:
//!
//! 1. a role chunk (`delta: {"role":"assistant","content":""}`) before anything else;
//! 2. per event and candidate, one chunk with the new text (`content`), thinking
//!    (`reasoning_content`) and function calls (`tool_calls` deltas, each complete, with a
//!    stable `index` counted per choice);
//! 3. on `finishReason`, a finish chunk with an empty delta;
//! 4. at the end, when the request asked for it, a usage chunk (`choices: []`) with the last
//!    `usageMetadata` converted as in [`super::response::usage`].
//!
//! An error document in the stream, a blocked prompt, or a stream that ends before any
//! `finishReason` yields one error and ends the stream.

use std::collections::{HashMap, HashSet, VecDeque};

use futures::StreamExt;
use serde_json::Value;

use super::{
    error,
    response::{self, Gathered, GenerateContentResponse, UsageMetadata},
};
use crate::{
    config::Secret,
    providers::{ChunkStream, ErrorClass, ProviderError, http, sse},
    wire::openai::{
        ChatCompletionChunk, ChunkChoice, Delta, Extra, FunctionCallDelta, Role, ToolCallDelta,
        unix_now,
    },
};

/// The state of one stream's conversion.
#[derive(Debug)]
pub struct StreamConverter {
    id: Option<String>,
    created: u64,
    model: String,
    include_usage: bool,
    started: bool,
    finished: bool,
    next_tool_index: HashMap<u32, u32>,
    called: HashSet<u32>,
    usage: Option<UsageMetadata>,
}

impl StreamConverter {
    /// A converter for a stream of `model`; `include_usage` adds the usage chunk at the end.
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: None,
            created: unix_now(),
            model: model.to_owned(),
            include_usage,
            started: false,
            finished: false,
            next_tool_index: HashMap::new(),
            called: HashSet::new(),
            usage: None,
        }
    }

    /// The chunks of one event's `data`.
    pub fn on_event(&mut self, data: &str) -> Result<Vec<ChatCompletionChunk>, ProviderError> {
        let data = data.trim();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let document: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("the upstream sent a stream event that is not JSON: {e}"),
            )
        })?;
        if let Some(err) = error::from_document(&document) {
            return Err(err);
        }
        let event: GenerateContentResponse = serde_json::from_value(document).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!(
                    "the upstream sent a stream event that is not a GenerateContentResponse: {e}"
                ),
            )
        })?;
        if let Some(err) = response::prompt_blocked(&event) {
            return Err(err);
        }
        if self.id.is_none() {
            self.id = Some(response::completion_id(event.response_id.as_deref()));
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let delta = Delta {
                role: Some(Role::Assistant),
                content: Some(String::new()),
                ..Delta::default()
            };
            out.push(self.chunk(vec![choice(0, delta, None)]));
        }
        for (position, candidate) in event.candidates.iter().flatten().enumerate() {
            let index = candidate
                .index
                .unwrap_or(u32::try_from(position).unwrap_or(u32::MAX));
            let delta = self.delta(index, Gathered::of(candidate));
            if delta != Delta::default() {
                out.push(self.chunk(vec![choice(index, delta, None)]));
            }
            if let Some(reason) = candidate.finish_reason.as_deref() {
                self.finished = true;
                let reason = response::finish_reason(reason, self.called.contains(&index));
                out.push(self.chunk(vec![choice(index, Delta::default(), Some(reason))]));
            }
        }
        if let Some(usage) = event.usage_metadata {
            self.usage = Some(usage);
        }
        Ok(out)
    }

    /// The chunks after the last event: the usage chunk, when asked for. Fails when no event
    /// carried a `finishReason` (the stream was cut).
    pub fn finish(&mut self) -> Result<Vec<ChatCompletionChunk>, ProviderError> {
        if !self.finished {
            return Err(ProviderError::new(
                ErrorClass::InvalidResponse,
                "the upstream's stream ended before a finishReason",
            ));
        }
        let mut out = Vec::new();
        if self.include_usage
            && let Some(meta) = self.usage.take()
        {
            let mut chunk = self.chunk(Vec::new());
            chunk.usage = Some(response::usage(&meta));
            out.push(chunk);
        }
        Ok(out)
    }

    fn delta(&mut self, index: u32, gathered: Gathered) -> Delta {
        let mut delta = Delta::default();
        if !gathered.text.is_empty() {
            delta.content = Some(gathered.text);
        }
        if !gathered.reasoning.is_empty() {
            delta.reasoning_content = Some(gathered.reasoning);
        }
        if !gathered.calls.is_empty() {
            self.called.insert(index);
            let next = self.next_tool_index.entry(index).or_insert(0);
            let calls = gathered
                .calls
                .into_iter()
                .map(|(name, arguments)| {
                    let call = ToolCallDelta {
                        index: *next,
                        id: Some(response::tool_call_id()),
                        kind: Some("function".into()),
                        function: Some(FunctionCallDelta {
                            name: Some(name),
                            arguments: Some(arguments),
                        }),
                    };
                    *next += 1;
                    call
                })
                .collect();
            delta.tool_calls = Some(calls);
        }
        delta
    }

    fn chunk(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone().unwrap_or_default(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: None,
            system_fingerprint: None,
            extra: Extra::new(),
        }
    }
}

fn choice(index: u32, delta: Delta, finish_reason: Option<&str>) -> ChunkChoice {
    ChunkChoice {
        index,
        delta,
        finish_reason: finish_reason.map(str::to_owned),
        logprobs: None,
        extra: Extra::new(),
    }
}

/// Turns an SSE response into OpenAI chunks; errors have every one of `secrets` scrubbed.
pub fn chunks(
    response: reqwest::Response,
    converter: StreamConverter,
    secrets: Vec<Secret>,
) -> ChunkStream {
    let bytes = response
        .bytes_stream()
        .map(|r| r.map_err(http::error_from_reqwest));
    struct State {
        events: futures::stream::BoxStream<'static, Result<sse::SseEvent, ProviderError>>,
        converter: StreamConverter,
        ready: VecDeque<ChatCompletionChunk>,
        done: bool,
        secrets: Vec<Secret>,
    }
    let state = State {
        events: sse::events(bytes),
        converter,
        ready: VecDeque::new(),
        done: false,
        secrets,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.ready.pop_front() {
                return Some((Ok(chunk), st));
            }
            if st.done {
                return None;
            }
            let step = match st.events.next().await {
                Some(Ok(event)) => st.converter.on_event(&event.data),
                Some(Err(err)) => Err(err),
                None => {
                    st.done = true;
                    st.converter.finish()
                }
            };
            match step {
                Ok(chunks) => st.ready.extend(chunks),
                Err(err) => {
                    st.done = true;
                    st.ready.clear();
                    return Some((Err(super::redact(err, &st.secrets)), st));
                }
            }
        }
    })
    .boxed()
}
