//! The job-kind seam: what differs between kinds of job, and the one table of them.
//!
//! A kind of job (a chat completion, embeddings; next the Anthropic Messages and OpenAI
//! Responses APIs and batches) says four things, as an implementation of `Kind`:
//! - how its **body is parsed** (`Kind::parse`: the checks, what the shared path needs to
//!   know of it — model, stream or not, fallbacks it names, what it reserves);
//! - which **provider call** it makes (`Kind::call`, and `Kind::stream` for a stream);
//! - how its **answer and stream are framed** (its `Kind::Answer` and `Kind::Chunk` types
//!   as they serialise, `Kind::error_body`);
//! - how its **usage** is read from an answer (`Kind::usage`) or a stream (`Chunk`).
//!
//! Everything else is written once, for every kind, in the job path ([`super`]): routing,
//! limits and capacity, retries, fallbacks, cooldowns, the deadline, cancel, reply headers,
//! usage events and cost.
//!
//! [`KINDS`] is the one table of kinds: the subject's last token (`<prefix>.<name>`, and a
//! worker's own `<prefix>.worker.<id>.<name>`) → the kind. Ingress subscribes to one endpoint
//! per row and hands each job its row. **Adding a kind is one new module here (an
//! implementation of `Kind`) plus one row in [`KINDS`].**

use std::{any::Any, future::Future, pin::Pin, sync::atomic::AtomicBool};

use bytes::Bytes;
use futures::{future::BoxFuture, stream::BoxStream};
use serde::Serialize;

use super::{Job, JobState};
use crate::{
    limits::Demand,
    providers::{CallContext, Provider, ProviderError},
    runtime::WorkerContext,
    wire::{ApiError, Subjects, openai::Usage},
};

mod chat;
mod embeddings;

/// The kinds of job, by the last token of their subject: the one table ingress reads.
pub static KINDS: [JobKind; 2] = [
    JobKind::new::<chat::Chat>("completion", Subjects::completion),
    JobKind::new::<embeddings::Embeddings>("embedding", Subjects::embedding),
];

/// A chat completion (`llm.completion`).
pub static COMPLETION: &JobKind = &KINDS[0];

/// Embeddings (`llm.embedding`).
pub static EMBEDDING: &JobKind = &KINDS[1];

/// What one kind of job does its own way; the job path does the rest.
pub(crate) trait Kind: Send + Sync + 'static {
    /// The body as parsed and sent upstream.
    type Body: Send + Sync + 'static;
    /// A whole answer, as it is sent to the requester.
    type Answer: Serialize + Send + Sync + 'static;
    /// One message of a streamed answer, as it is sent to the requester.
    type Chunk: Chunk;

    /// Reads and checks a job's `payload`. An error is the caller's (a 400).
    fn parse(payload: &[u8]) -> Result<Parsed<Self::Body>, ApiError>;

    /// The model (group) the body names.
    fn model(body: &Self::Body) -> &str;

    /// The body's end-user id, for the usage event.
    fn user(body: &Self::Body) -> Option<String>;

    /// The provider call for a whole answer.
    fn call<'a>(
        provider: &'a dyn Provider,
        body: &'a Self::Body,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Self::Answer, ProviderError>>;

    /// The provider call for a stream: made only for a body `Kind::parse` found `stream`.
    fn stream<'a>(
        provider: &'a dyn Provider,
        body: &'a Self::Body,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream<Self::Chunk>, ProviderError>>;

    /// The usage of `answer`, estimated from `prompt_tokens` (and the answer) when the
    /// upstream sent none; the answer then carries the estimate too.
    fn usage(answer: &mut Self::Answer, prompt_tokens: u64) -> Usage;

    /// The body of an error answer.
    fn error_body(e: &ApiError) -> Bytes {
        e.to_json()
    }
}

/// A stream of one kind's chunks.
pub(crate) type ChunkStream<C> = BoxStream<'static, Result<C, ProviderError>>;

/// What the job path reads of a stream's chunk.
pub(crate) trait Chunk: Serialize + Sized + Send + Sync + 'static {
    /// The usage the chunk carries, if any.
    fn usage(&self) -> Option<&Usage>;
    /// Bytes of generated text it carries (for an estimate when no usage comes).
    fn text_len(&self) -> usize;
    /// True when it carries content: the stream commits to its deployment then.
    fn has_content(&self) -> bool;
    /// The chunk as a client that did not ask for usage sees it; `None` when it is only
    /// usage (it is not sent).
    fn without_usage(self) -> Option<Self>;
}

/// What parsing a body tells the job path.
pub(crate) struct Parsed<B> {
    /// The body, as sent upstream.
    pub body: B,
    /// True for a streamed answer.
    pub stream: bool,
    /// True when the client asked for a stream's usage itself.
    pub client_wants_usage: bool,
    /// Fallback groups the body names (LiteLLM's `fallbacks`).
    pub fallbacks: Vec<String>,
    /// What each attempt reserves on its deployment.
    pub demand: Demand,
}

/// The chunk of a kind that never streams.
#[derive(Debug)]
pub(crate) enum NoChunk {}

impl Serialize for NoChunk {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        match *self {}
    }
}

impl Chunk for NoChunk {
    fn usage(&self) -> Option<&Usage> {
        match *self {}
    }
    fn text_len(&self) -> usize {
        match *self {}
    }
    fn has_content(&self) -> bool {
        match *self {}
    }
    fn without_usage(self) -> Option<Self> {
        match self {}
    }
}

/// The running of one job of a kind, as a future that borrows its worker's context.
type Run = for<'a> fn(
    Job,
    &'a WorkerContext,
    &'a AtomicBool,
    tracing::Span,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Reading a body of one kind ahead of its job.
type Preparse = fn(&'static JobKind, &[u8]) -> Result<Preparsed, ApiError>;

/// One row of [`KINDS`]: a kind of job, by its name.
pub struct JobKind {
    name: &'static str,
    subject: fn(&Subjects) -> String,
    run: Run,
    preparse: Preparse,
}

/// A body read before its job started (the in-worker HTTP front reads it once, to know its
/// group and whether it streams), handed to the job so that it is not read again.
pub struct Preparsed {
    /// The kind it was read as: a job of another kind reads its payload itself.
    kind: &'static JobKind,
    model: String,
    stream: bool,
    /// The kind's `Parsed<Kind::Body>`.
    parsed: Box<dyn Any + Send>,
}

impl Preparsed {
    /// The model (group) the body names.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// True when it asks for a streamed answer.
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// What `K::parse` made of the body, for a job of `kind`.
    pub(super) fn take<K: Kind>(self, kind: &JobKind) -> Option<Parsed<K::Body>> {
        if self.kind != kind {
            return None;
        }
        self.parsed.downcast::<Parsed<K::Body>>().ok().map(|p| *p)
    }
}

impl std::fmt::Debug for Preparsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preparsed")
            .field("kind", &self.kind)
            .field("model", &self.model)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

fn preparse<K: Kind>(kind: &'static JobKind, payload: &[u8]) -> Result<Preparsed, ApiError> {
    let parsed = K::parse(payload)?;
    Ok(Preparsed {
        kind,
        model: K::model(&parsed.body).to_string(),
        stream: parsed.stream,
        parsed: Box::new(parsed),
    })
}

impl JobKind {
    const fn new<K: Kind>(name: &'static str, subject: fn(&Subjects) -> String) -> Self {
        Self {
            name,
            subject,
            run: run::<K>,
            preparse: preparse::<K>,
        }
    }

    /// Reads and checks a body of this kind ahead of its job, as the job would; the job then
    /// takes it as it is ([`super::Job::parsed`]). An error is the one the job would answer.
    pub fn preparse(&'static self, payload: &[u8]) -> Result<Preparsed, ApiError> {
        (self.preparse)(self, payload)
    }

    /// The last token of its subjects, and its endpoint's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The shared subject its jobs come on (`llm.<name>`).
    pub fn subject(&self, subjects: &Subjects) -> String {
        (self.subject)(subjects)
    }

    /// The kind whose subject ends in `name`.
    pub fn named(name: &str) -> Option<&'static JobKind> {
        KINDS.iter().find(|k| k.name == name)
    }

    /// Runs `job` to its end (its answer included).
    pub(super) fn run<'a>(
        &self,
        job: Job,
        ctx: &'a WorkerContext,
        answered: &'a AtomicBool,
        span: tracing::Span,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        (self.run)(job, ctx, answered, span)
    }
}

impl PartialEq for JobKind {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for JobKind {}

impl std::fmt::Debug for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

// Boxed: the job's state machine is several kilobytes, and a task's future is moved by value
// on spawn; this way only a pointer moves.
fn run<'a, K: Kind>(
    job: Job,
    ctx: &'a WorkerContext,
    answered: &'a AtomicBool,
    span: tracing::Span,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(JobState::<K>::new(job, ctx, answered, span).run())
}

/// Makes sure nothing but the table names kinds: each row's name is unique and its subject is
/// `<prefix>.<name>`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_kind_once_by_its_subject() {
        let subjects = Subjects::new("llm");
        let rows: Vec<(&str, String)> = KINDS
            .iter()
            .map(|k| (k.name(), k.subject(&subjects)))
            .collect();
        assert_eq!(
            rows,
            [
                ("completion", "llm.completion".to_string()),
                ("embedding", "llm.embedding".to_string()),
            ]
        );
        for k in &KINDS {
            assert_eq!(JobKind::named(k.name()), Some(k));
        }
        assert_eq!(JobKind::named("messages"), None);
        assert_eq!(COMPLETION.name(), "completion");
        assert_eq!(EMBEDDING.name(), "embedding");
    }

    #[test]
    fn a_kind_parses_its_own_body() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
                        "fallbacks":["f"]}"#;
        let parsed = chat::Chat::parse(body).unwrap();
        assert!(parsed.stream && !parsed.client_wants_usage);
        assert_eq!(parsed.fallbacks, ["f"]);
        // A stream always asks the upstream for usage, to count cost.
        assert!(parsed.body.include_usage());
        assert_eq!(chat::Chat::model(&parsed.body), "m");
        let e = embeddings::Embeddings::parse(body).err().unwrap();
        assert_eq!(e.status, 400, "{e}");
        let parsed = embeddings::Embeddings::parse(br#"{"model":"e","input":"abcdefgh"}"#).unwrap();
        assert!(!parsed.stream);
        assert!(parsed.demand.prompt > 0);
    }
}
