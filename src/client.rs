//! A small llmbus client over NATS, in Rust: what `llmbus complete` uses, and what the tests
//! and benchmarks use to talk to workers exactly as any other NATS client would.
//!
//! A non-streaming job is one request/reply. A streaming job follows the ADR-47 "request
//! many" convention: subscribe to a fresh inbox, publish the job with that inbox as reply
//! subject, read chunks (each with `Llm-Seq`) until the empty-payload sentinel.

pub mod health;

use std::time::Duration;

use async_nats::{HeaderMap, StatusCode, Subscriber, client::RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;

use crate::wire::{Subjects, headers};

/// What went wrong talking to llmbus (not an error reply: those come back as [`Reply`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing serves the subject: no worker is running.
    #[error("no llmbus worker answers on {0}: is a worker running?")]
    NoResponders(String),
    /// No reply within the time allowed.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The request is larger than the NATS server accepts.
    #[error("the request is {size} bytes, more than the NATS server's max_payload of {max} bytes")]
    TooLarge {
        /// Request size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// A stream went silent after it started: no message within the stall time (ADR-47's
    /// stall timer). The worker serving it most likely stopped.
    #[error(
        "the stream stalled: no message for {waited:?} after message {after} (the worker \
         serving it may have stopped)"
    )]
    Stalled {
        /// Messages received before the silence.
        after: u64,
        /// How long the reader waited.
        waited: Duration,
    },
    /// A stream chunk went missing (`Llm-Seq` skipped a number).
    #[error("stream chunk {expected} was lost (got {got}): the subscriber was too slow")]
    Gap {
        /// The number expected.
        expected: u64,
        /// The number that came.
        got: u64,
    },
    /// Another NATS failure.
    #[error("NATS: {0}")]
    Nats(String),
}

/// One reply: the status from `Llm-Status`, the headers and the body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `Llm-Status` (200 when absent).
    pub status: u16,
    /// All reply headers.
    pub headers: HeaderMap,
    /// The body: an OpenAI response, chunk or error body; empty for a sentinel.
    pub body: Bytes,
}

impl Reply {
    fn from_message(m: async_nats::Message) -> Self {
        Self::from_parts(m.headers.unwrap_or_default(), m.payload)
    }

    /// A reply of these headers and body; its status is read from `Llm-Status`.
    pub fn from_parts(headers: HeaderMap, body: Bytes) -> Self {
        Self {
            status: status_of(&headers),
            headers,
            body,
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn status_of(headers: &HeaderMap) -> u16 {
    headers
        .get(headers::STATUS)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(200)
}

/// A client of the llmbus subjects under one prefix.
#[derive(Debug, Clone)]
pub struct LlmClient {
    nats: async_nats::Client,
    subjects: Subjects,
}

impl LlmClient {
    /// A client on `nats` for the subjects under `prefix`.
    pub fn new(nats: async_nats::Client, prefix: &str) -> Self {
        Self {
            nats,
            subjects: Subjects::new(prefix),
        }
    }

    /// The subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// One request/reply on `subject`.
    pub async fn request(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        self.check_size(&body)?;
        let request = async_nats::Request::new()
            .payload(body)
            .headers(headers)
            .timeout(Some(timeout));
        match self.nats.send_request(subject.clone(), request).await {
            Ok(m) => Ok(Reply::from_message(m)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => ClientError::NoResponders(subject),
                RequestErrorKind::TimedOut => ClientError::Timeout(timeout),
                RequestErrorKind::MaxPayloadExceeded => ClientError::TooLarge {
                    size: 0,
                    max: self.nats.server_info().max_payload,
                },
                _ => ClientError::Nats(e.to_string()),
            }),
        }
    }

    /// A non-streaming completion: `body` is the OpenAI request JSON.
    pub async fn complete(
        &self,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        self.request(self.subjects.completion(), headers, body, timeout)
            .await
    }

    /// Embeddings: `body` is the OpenAI embeddings request JSON.
    pub async fn embed(
        &self,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        self.request(self.subjects.embedding(), headers, body, timeout)
            .await
    }

    /// Starts a streaming completion; read it with [`ChunkReader::next`]. `stall` bounds the
    /// wait for each message ([`ChunkReader::with_stall`] sets another bound for the messages
    /// after the first).
    pub async fn stream(
        &self,
        headers: HeaderMap,
        body: Bytes,
        stall: Duration,
    ) -> Result<ChunkReader, ClientError> {
        self.check_size(&body)?;
        let inbox = self.nats.new_inbox();
        let sub = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))?;
        self.nats
            .publish_with_reply_and_headers(self.subjects.completion(), inbox, headers, body)
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))?;
        Ok(ChunkReader {
            sub,
            first: stall,
            stall,
            received: 0,
            next_seq: 1,
            done: false,
            subject: self.subjects.completion(),
        })
    }

    fn check_size(&self, body: &Bytes) -> Result<(), ClientError> {
        let max = self.nats.server_info().max_payload;
        if max > 0 && body.len() > max {
            return Err(ClientError::TooLarge {
                size: body.len(),
                max,
            });
        }
        Ok(())
    }
}

/// Reads one streaming job's messages.
pub struct ChunkReader {
    sub: Subscriber,
    /// The wait for the first message (the upstream's time to first token is in it).
    first: Duration,
    /// The wait for each later message.
    stall: Duration,
    received: u64,
    next_seq: u64,
    done: bool,
    subject: String,
}

impl ChunkReader {
    /// Bounds the wait for each message after the first by `stall` (ADR-47's stall timer): a
    /// stream whose worker died ends with [`ClientError::Stalled`] that much after its last
    /// message, not at the job's deadline.
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// The next message: a chunk or error body (`Reply` with a body), then the sentinel
    /// (`Reply` with an empty body and the final `Llm-Status`); `None` after the sentinel.
    pub async fn next(&mut self) -> Option<Result<Reply, ClientError>> {
        if self.done {
            return None;
        }
        let wait = if self.received == 0 {
            self.first
        } else {
            self.stall
        };
        let m = match tokio::time::timeout(wait, self.sub.next()).await {
            Err(_) => {
                self.done = true;
                return Some(Err(if self.received == 0 {
                    ClientError::Timeout(wait)
                } else {
                    ClientError::Stalled {
                        after: self.received,
                        waited: wait,
                    }
                }));
            }
            Ok(None) => {
                self.done = true;
                return Some(Err(ClientError::Nats("subscription closed".into())));
            }
            Ok(Some(m)) => m,
        };
        if m.status == Some(StatusCode::NO_RESPONDERS) {
            self.done = true;
            return Some(Err(ClientError::NoResponders(self.subject.clone())));
        }
        self.received += 1;
        let reply = Reply::from_message(m);
        if reply.body.is_empty() {
            self.done = true;
            return Some(Ok(reply));
        }
        if let Some(seq) = reply
            .header(headers::SEQ)
            .and_then(|s| s.parse::<u64>().ok())
        {
            if seq != self.next_seq {
                self.done = true;
                return Some(Err(ClientError::Gap {
                    expected: self.next_seq,
                    got: seq,
                }));
            }
            self.next_seq += 1;
        }
        Some(Ok(reply))
    }

    /// Reads to the end: every message with a body, then the sentinel.
    pub async fn collect(mut self) -> Result<(Vec<Reply>, Reply), ClientError> {
        let mut chunks = Vec::new();
        while let Some(r) = self.next().await {
            let r = r?;
            if r.body.is_empty() {
                return Ok((chunks, r));
            }
            chunks.push(r);
        }
        Err(ClientError::Nats("stream ended without a sentinel".into()))
    }
}
