//! The stream targets: the SSE decoder and each provider's stream parser, fed the same body in
//! several chunkings. Input: the first byte seeds the chunking (its low bit also says whether
//! the request asked for usage); the rest is the upstream's body.

use std::collections::VecDeque;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use futures::{StreamExt, executor::block_on, stream};
use serde_json::Value;

use super::{SECRET, chunkings, no_secret, reserialises};
use crate::{
    config::Secret,
    providers::{
        ChunkStream, ProviderError, anthropic, bedrock, cohere, gemini, ollama, openai_compat,
        sse::{SseDecoder, SseEvent},
    },
    wire::openai::ChatCompletionChunk,
};

/// What a stream yielded, made comparable: each chunk as JSON without the fields that differ
/// from run to run (its id, its time, generated tool call ids), each error as its text.
type Items = Vec<Result<Value, String>>;

/// The seed byte and the body.
fn input(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(seed, body)| (*seed, body))
}

/// Runs `parse` over every chunking of `body` and asserts they all yield the same items.
fn same_for_every_chunking(body: &[u8], seed: u8, parse: impl Fn(Vec<Bytes>) -> ChunkStream) {
    let mut first: Option<Items> = None;
    for chunks in chunkings(body, seed) {
        let owned = chunks.into_iter().map(Bytes::copy_from_slice).collect();
        let items = collect(parse(owned));
        match &first {
            None => first = Some(items),
            Some(expected) => assert_eq!(
                &items, expected,
                "the stream yields other items when its bytes come in other chunks"
            ),
        }
    }
}

/// Drains a chunk stream, checking each item: chunks re-serialise, errors carry no key and end
/// the stream.
fn collect(stream: ChunkStream) -> Items {
    let items: Vec<Result<ChatCompletionChunk, ProviderError>> = block_on(stream.collect());
    if let Some(at) = items.iter().position(Result::is_err) {
        assert_eq!(at + 1, items.len(), "items follow an error item: {items:?}");
    }
    items
        .into_iter()
        .map(|item| match item {
            Ok(chunk) => Ok(normalise(reserialises(&chunk, "a stream chunk"))),
            Err(e) => {
                let text = e.to_string();
                no_secret(&text, "a stream error");
                Err(text)
            }
        })
        .collect()
}

fn normalise(mut chunk: Value) -> Value {
    chunk["id"] = Value::Null;
    chunk["created"] = Value::Null;
    for choice in chunk["choices"].as_array_mut().into_iter().flatten() {
        let calls = choice.pointer_mut("/delta/tool_calls");
        for call in calls.and_then(Value::as_array_mut).into_iter().flatten() {
            if call.get("id").is_some_and(|id| !id.is_null()) {
                call["id"] = "<id>".into();
            }
        }
    }
    chunk
}

/// The body as a byte stream in `chunks`.
fn bytes(chunks: Vec<Bytes>) -> stream::Iter<std::vec::IntoIter<Result<Bytes, ProviderError>>> {
    stream::iter(chunks.into_iter().map(Ok).collect::<Vec<_>>())
}

/// The body as an HTTP response whose body arrives in `chunks`.
fn response(chunks: Vec<Bytes>) -> reqwest::Response {
    let body = stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    reqwest::Response::from(http::Response::new(reqwest::Body::wrap_stream(body)))
}

/// The SSE decoder: the same events for every chunking; event data holds no line break but
/// the `\n` that joins `data:` lines.
pub fn sse(data: &[u8]) {
    let Some((seed, body)) = input(data) else {
        return;
    };
    let mut first: Option<Vec<SseEvent>> = None;
    for chunks in chunkings(body, seed) {
        let mut decoder = SseDecoder::new();
        let mut out = VecDeque::new();
        for chunk in chunks {
            decoder
                .push(chunk, &mut out)
                .expect("a short body is within the event limit");
        }
        out.extend(decoder.finish());
        let events: Vec<SseEvent> = out.into();
        for event in &events {
            assert!(
                !event.data.contains('\r'),
                "a `\\r` in event data: {event:?}"
            );
            let name = event.event.as_deref().unwrap_or_default();
            assert!(
                !name.contains(['\r', '\n']),
                "a line break in an event name"
            );
        }
        match &first {
            None => first = Some(events),
            Some(expected) => assert_eq!(&events, expected, "other events in other chunks"),
        }
    }
}

/// The OpenAI-compatible stream (`data:` chunks up to `[DONE]`).
pub fn openai_stream(data: &[u8]) {
    let Some((seed, body)) = input(data) else {
        return;
    };
    same_for_every_chunking(body, seed, |chunks| {
        openai_compat::chunks(response(chunks), Some(Secret::new(SECRET)))
    });
}

/// Anthropic's Messages stream; the seed's second bit turns on `response_format` JSON mode.
pub fn anthropic_stream(data: &[u8]) {
    let Some((seed, body)) = input(data) else {
        return;
    };
    same_for_every_chunking(body, seed, |chunks| {
        let converter = anthropic::stream::StreamConverter::new(seed & 1 == 1, seed & 2 == 2);
        anthropic::stream::chunks(response(chunks), converter, Some(Secret::new(SECRET)))
    });
}

/// Gemini's `streamGenerateContent?alt=sse`.
pub fn gemini_stream(data: &[u8]) {
    let Some((seed, body)) = input(data) else {
        return;
    };
    same_for_every_chunking(body, seed, |chunks| {
        let converter = gemini::stream::StreamConverter::new("gemini-fuzz", seed & 1 == 1);
        gemini::stream::chunks(response(chunks), converter, vec![Secret::new(SECRET)])
    });
}

/// Cohere v2's SSE stream.
pub fn cohere_stream(data: &[u8]) {
    let Some((seed, body)) = input(data) else {
        return;
    };
    same_for_every_chunking(body, seed, |chunks| {
        cohere::stream::chunks(
            bytes(chunks),
            "command-fuzz",
            seed & 1 == 1,
            Some(SECRET.into()),
        )
    });
}

/// Ollama's newline-delimited JSON stream.
pub fn ollama_stream(data: &[u8]) {
    let Some((seed, body)) = input(data) else {
        return;
    };
    same_for_every_chunking(body, seed, |chunks| {
        ollama::stream::chunks(
            bytes(chunks),
            "llama-fuzz",
            seed & 1 == 1,
            Some(SECRET.into()),
        )
    });
}

/// Bedrock's ConverseStream (`application/vnd.amazon.eventstream`). With the seed's second bit
/// clear the body is raw bytes (mostly broken frames: the frame decoder's errors); with it set
/// the body is a list of events that are encoded as valid frames first, so that the converter
/// behind the decoder is reached: per event, a byte picking the message type and event, a
/// length byte, then that much JSON payload.
pub fn bedrock_stream(data: &[u8]) {
    let Some((seed, body)) = input(data) else {
        return;
    };
    let framed;
    let body = if seed & 2 == 2 {
        framed = frames(body);
        &framed[..]
    } else {
        body
    };
    same_for_every_chunking(body, seed, |chunks| {
        let info = bedrock::stream::StreamInfo {
            model: "bedrock-fuzz".into(),
            include_usage: seed & 1 == 1,
        };
        bedrock::stream::chunks(bytes(chunks), info, vec![SECRET.into()])
    });
}

/// Valid eventstream frames for the events described by `spec` (see [`bedrock_stream`]).
fn frames(mut spec: &[u8]) -> Vec<u8> {
    const EVENTS: [&str; 7] = [
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
        "somethingNew",
    ];
    let mut out = Vec::new();
    while let [pick, len, rest @ ..] = spec {
        let len = usize::from(*len).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        spec = tail;
        let message = match pick % 8 {
            0..=5 => Message::new(Bytes::copy_from_slice(payload))
                .add_header(Header::new(
                    ":message-type",
                    HeaderValue::String("event".into()),
                ))
                .add_header(Header::new(
                    ":event-type",
                    HeaderValue::String(EVENTS[usize::from(pick / 8) % EVENTS.len()].into()),
                )),
            6 => Message::new(Bytes::copy_from_slice(payload))
                .add_header(Header::new(
                    ":message-type",
                    HeaderValue::String("exception".into()),
                ))
                .add_header(Header::new(
                    ":exception-type",
                    HeaderValue::String("throttlingException".into()),
                )),
            _ => Message::new(Bytes::new())
                .add_header(Header::new(
                    ":message-type",
                    HeaderValue::String("error".into()),
                ))
                .add_header(Header::new(
                    ":error-message",
                    HeaderValue::String(String::from_utf8_lossy(payload).into_owned().into()),
                )),
        };
        write_message_to(&message, &mut out).expect("a frame encodes");
    }
    out
}
