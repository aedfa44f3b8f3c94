//! Entry points for the fuzz targets in `fuzz/` and for their regression tests
//! (`tests/it/fuzz_regressions.rs`). Not an API: hidden from the docs, kept small.
//!
//! Each `pub fn` takes the fuzzer's bytes, runs one parser that sees bytes from outside the
//! gateway (a job's body and headers, an upstream's answer or stream, a config file) and panics
//! when one of its invariants breaks: besides not panicking, a parser returns an error or a
//! well-formed result (a parsed value that re-serialises and parses back the same), a stream
//! parser yields the same items whatever the chunking of its bytes, an error item ends a
//! stream, and no key reaches an error message. The same function serves the fuzz target and
//! the regression test that replays a crash input, so both check the same thing.
//!
//! - `job`: a job's body ([`job_body`]) and headers ([`job_headers`]).
//! - `streams`: the SSE decoder ([`sse`]) and each provider's stream parser.
//! - `responses`: each provider's non-streaming answer and error parsers ([`responses`]).
//! - `config`: the config loader ([`config`]).

mod config;
mod job;
mod responses;
mod streams;

pub use config::config;
pub use job::{job_body, job_headers};
pub use responses::responses;
pub use streams::{
    anthropic_stream, bedrock_stream, cohere_stream, gemini_stream, ollama_stream, openai_stream,
    sse,
};

use serde::{Serialize, de::DeserializeOwned};

/// The provider key the stream and error targets hand their parsers: it must never come back
/// in an error message, whatever the upstream sent.
pub const SECRET: &str = "sk-fuzz-SECRET-0123456789abcdef";

/// Splits `body` into chunks whose lengths (1 to 64 bytes) follow a small generator seeded by
/// `seed`; the same seed gives the same chunks.
fn split(body: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 64 + 1) as usize;
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// The chunkings every stream target compares: the whole body at once, the seeded split, and
/// one byte at a time (for bodies short enough that this stays fast).
fn chunkings(body: &[u8], seed: u8) -> Vec<Vec<&[u8]>> {
    let mut out = vec![vec![body], split(body, seed)];
    if body.len() <= 2048 {
        out.push(body.chunks(1).collect());
    }
    out
}

/// Asserts that `value` serialises to JSON that parses back into a value that serialises to
/// the same JSON; returns that JSON.
fn reserialises<T: Serialize + DeserializeOwned>(value: &T, what: &str) -> serde_json::Value {
    let text =
        serde_json::to_string(value).unwrap_or_else(|e| panic!("{what} does not serialise: {e}"));
    let again: T = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what} does not parse back: {e}\n{text}"));
    let text2 = serde_json::to_string(&again).expect("serialises twice");
    assert_eq!(text, text2, "{what} changes when parsed back");
    serde_json::from_str(&text).expect("JSON text parses as a value")
}

/// Asserts that `message` does not carry [`SECRET`].
fn no_secret(message: &str, what: &str) {
    assert!(
        !message.contains(SECRET),
        "{what} carries the provider key: {message}"
    );
}
