//! Anthropic's SSE stream → OpenAI `chat.completion.chunk`s.
//!
//! This module owns [`StreamConverter`], a state machine fed one SSE event at a time:
//! `message_start` gives the id, model and prompt usage and opens with a `role: assistant`
//! chunk; `content_block_start` / `content_block_delta` become content, reasoning and
//! tool-call deltas (tool calls numbered among tool calls, every `input_json_delta` piece its
//! own delta); `message_delta` gives the finish chunk and the output tokens; `message_stop`
//! ends the stream, after a usage chunk when one was asked for. `ping` and unknown events are
//! skipped; an `error` event becomes an error item. [`chunks`] runs it over an HTTP body.

use std::collections::HashMap;

use futures::StreamExt;
use serde_json::{Value, json};

use super::{error, request::JSON_TOOL_NAME, response};
use crate::config::Secret;
use crate::providers::{
    ChunkStream, ErrorClass, ProviderError, http,
    sse::{self, SseEvent},
};
use crate::wire::openai::{
    ChatCompletionChunk, ChunkChoice, Delta, Extra, FunctionCallDelta, Role, ToolCallDelta,
    unix_now,
};

/// What a content block of the stream is, by its Anthropic block index.
#[derive(Debug, Clone, Copy)]
enum Block {
    Text,
    Thinking,
    /// A tool call, with its index among the message's tool calls.
    Tool(u32),
    /// The JSON tool of `response_format`: its input is streamed as content.
    JsonAnswer,
    /// Server tools and block types this converter does not know.
    Other,
}

/// The stream state of one call.
#[derive(Debug)]
pub struct StreamConverter {
    include_usage: bool,
    json_mode: bool,
    id: String,
    model: String,
    created: u64,
    /// Anthropic's usage so far (`message_start`, then updated by `message_delta`).
    usage: Value,
    blocks: HashMap<u64, Block>,
    tool_calls: u32,
    json_answer: bool,
    finished: bool,
    done: bool,
}

impl StreamConverter {
    /// A converter for one stream; `include_usage` adds the usage chunk at the end,
    /// `json_mode` streams the JSON tool's input as content.
    pub fn new(include_usage: bool, json_mode: bool) -> Self {
        Self {
            include_usage,
            json_mode,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            usage: json!({}),
            blocks: HashMap::new(),
            tool_calls: 0,
            json_answer: false,
            finished: false,
            done: false,
        }
    }

    /// True once `message_stop` arrived: nothing more is expected.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The chunks one event yields (often none), or the error it carries.
    pub fn on_event(
        &mut self,
        event: &SseEvent,
    ) -> Result<Vec<ChatCompletionChunk>, ProviderError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("the upstream sent a stream event that is not JSON: {e}"),
            )
        })?;
        let kind = value["type"]
            .as_str()
            .or(event.event.as_deref())
            .unwrap_or_default();
        Ok(match kind {
            "message_start" => self.message_start(&value["message"]),
            "content_block_start" => self.block_start(&value),
            "content_block_delta" => self.block_delta(&value),
            "message_delta" => self.message_delta(&value),
            "message_stop" => self.message_stop(),
            "error" => return Err(error::from_event(&value)),
            // `ping`, `content_block_stop` and event types added after this was written.
            _ => Vec::new(),
        })
    }

    fn message_start(&mut self, message: &Value) -> Vec<ChatCompletionChunk> {
        self.id = message["id"].as_str().unwrap_or_default().to_owned();
        self.model = message["model"].as_str().unwrap_or_default().to_owned();
        merge(&mut self.usage, &message["usage"]);
        let delta = Delta {
            role: Some(Role::Assistant),
            content: Some(String::new()),
            ..Delta::default()
        };
        vec![self.chunk(delta, None)]
    }

    fn block_start(&mut self, event: &Value) -> Vec<ChatCompletionChunk> {
        let index = event["index"].as_u64().unwrap_or_default();
        let block = &event["content_block"];
        let (kind, delta) = match block["type"].as_str().unwrap_or_default() {
            "text" => (Block::Text, text_delta(block["text"].as_str())),
            "thinking" => (Block::Thinking, reasoning_delta(block["thinking"].as_str())),
            "redacted_thinking" => (Block::Other, Some(thinking_blocks_delta(block.clone()))),
            "tool_use" if self.json_mode && block["name"] == JSON_TOOL_NAME => {
                self.json_answer = true;
                (Block::JsonAnswer, None)
            }
            "tool_use" => {
                let call = self.tool_calls;
                self.tool_calls += 1;
                let delta = tool_delta(ToolCallDelta {
                    index: call,
                    id: block["id"].as_str().map(str::to_owned),
                    kind: Some("function".into()),
                    function: Some(FunctionCallDelta {
                        name: block["name"].as_str().map(str::to_owned),
                        arguments: Some(String::new()),
                    }),
                });
                (Block::Tool(call), Some(delta))
            }
            _ => (Block::Other, None),
        };
        self.blocks.insert(index, kind);
        delta.map(|d| vec![self.chunk(d, None)]).unwrap_or_default()
    }

    fn block_delta(&mut self, event: &Value) -> Vec<ChatCompletionChunk> {
        let index = event["index"].as_u64().unwrap_or_default();
        let block = self.blocks.get(&index).copied().unwrap_or(Block::Other);
        let d = &event["delta"];
        let delta = match (d["type"].as_str().unwrap_or_default(), block) {
            ("text_delta", _) => text_delta(d["text"].as_str()),
            ("thinking_delta", _) => reasoning_delta(d["thinking"].as_str()),
            ("signature_delta", _) => Some(thinking_blocks_delta(json!({
                "type": "thinking",
                "thinking": "",
                "signature": d["signature"],
            }))),
            ("input_json_delta", Block::JsonAnswer) => Some(content_delta(
                d["partial_json"].as_str().unwrap_or_default(),
            )),
            ("input_json_delta", Block::Tool(call)) => Some(tool_delta(ToolCallDelta {
                index: call,
                id: None,
                kind: None,
                function: Some(FunctionCallDelta {
                    name: None,
                    arguments: Some(d["partial_json"].as_str().unwrap_or_default().to_owned()),
                }),
            })),
            _ => None,
        };
        delta.map(|d| vec![self.chunk(d, None)]).unwrap_or_default()
    }

    fn message_delta(&mut self, event: &Value) -> Vec<ChatCompletionChunk> {
        merge(&mut self.usage, &event["usage"]);
        let Some(stop) = event["delta"]["stop_reason"].as_str() else {
            return Vec::new();
        };
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut reason = response::finish_reason(stop);
        if self.json_answer && self.tool_calls == 0 {
            reason = "stop".into();
        }
        vec![self.chunk(Delta::default(), Some(reason))]
    }

    fn message_stop(&mut self) -> Vec<ChatCompletionChunk> {
        self.done = true;
        if !self.include_usage {
            return Vec::new();
        }
        let mut chunk = self.chunk(Delta::default(), None);
        chunk.choices.clear();
        chunk.usage = Some(response::usage(&self.usage));
        vec![chunk]
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<String>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs: None,
                extra: Extra::new(),
            }],
            usage: None,
            system_fingerprint: None,
            extra: Extra::new(),
        }
    }
}

/// Copies the non-null counts of `update` over `usage` (`message_delta` counts are
/// cumulative, so the last one wins).
fn merge(usage: &mut Value, update: &Value) {
    if let (Some(target), Some(fields)) = (usage.as_object_mut(), update.as_object()) {
        for (key, value) in fields.iter().filter(|(_, v)| !v.is_null()) {
            target.insert(key.clone(), value.clone());
        }
    }
}

fn content_delta(text: &str) -> Delta {
    Delta {
        content: Some(text.to_owned()),
        ..Delta::default()
    }
}

fn text_delta(text: Option<&str>) -> Option<Delta> {
    text.filter(|t| !t.is_empty()).map(content_delta)
}

fn reasoning_delta(text: Option<&str>) -> Option<Delta> {
    text.filter(|t| !t.is_empty()).map(|t| Delta {
        reasoning_content: Some(t.to_owned()),
        ..Delta::default()
    })
}

fn tool_delta(call: ToolCallDelta) -> Delta {
    Delta {
        tool_calls: Some(vec![call]),
        ..Delta::default()
    }
}

/// LiteLLM's `thinking_blocks` delta: a signature, or a redacted thinking block.
fn thinking_blocks_delta(block: Value) -> Delta {
    let mut delta = Delta::default();
    delta
        .extra
        .insert("thinking_blocks".into(), Value::Array(vec![block]));
    delta
}

/// Runs a converter over an SSE response. The stream ends after `message_stop`; a stream
/// that ends before it, an unparsable event or an error event yields one error item and ends.
pub fn chunks(
    response: reqwest::Response,
    converter: StreamConverter,
    key: Option<Secret>,
) -> ChunkStream {
    let bytes = response
        .bytes_stream()
        .map(|r| r.map_err(http::error_from_reqwest));
    struct State {
        events: futures::stream::BoxStream<'static, Result<SseEvent, ProviderError>>,
        converter: StreamConverter,
        ready: std::collections::VecDeque<ChatCompletionChunk>,
        failed: bool,
        key: Option<Secret>,
    }
    let state = State {
        events: sse::events(bytes),
        converter,
        ready: Default::default(),
        failed: false,
        key,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.ready.pop_front() {
                return Some((Ok(chunk), st));
            }
            if st.failed || st.converter.is_done() {
                return None;
            }
            let err = match st.events.next().await {
                Some(Ok(event)) => match st.converter.on_event(&event) {
                    Ok(chunks) => {
                        st.ready.extend(chunks);
                        continue;
                    }
                    Err(err) => err,
                },
                Some(Err(err)) => err,
                None => ProviderError::new(
                    ErrorClass::InvalidResponse,
                    "the upstream's stream ended before `message_stop`",
                ),
            };
            st.failed = true;
            let err = err.redact(st.key.as_ref().map(Secret::expose));
            return Some((Err(err), st));
        }
    })
    .boxed()
}
