//! Usage: one event per finished job, durable, aggregated into spend.
//!
//! ```text
//!  job ──UsageSink::record (never waits)──► buffer, bounded in bytes ──► publisher task
//!        (drops counted: llmbus_usage_events_dropped_total)                  │
//!                   llm.usage.<model_group>, Nats-Msg-Id = job id, acked, retried until stored
//!                                                                            ▼
//!   any consumer ◄── core NATS / JetStream ◄── LLM_USAGE stream (file, retention 30 d)
//!                                                                  │ one worker at a time
//!                                                                  ▼ (lease), off the job path
//!                    llmbus spend ◄── LLM_SPEND KV ◄── aggregator (cursor + CAS per day)
//! ```
//!
//! - [`UsageEvent`] is part of the wire contract (`schemas/usage-event.json`): it lives in
//!   [`crate::wire::usage`].
//! - [`publisher`]: [`UsageSink`], the job side's non-blocking handle on a buffer bounded in
//!   bytes; [`delivery`]: the task that stores each event in the stream with an
//!   acknowledgement, retrying until it is stored, and what a `kill -9` can lose.
//! - [`stream`]: the `LLM_USAGE` stream, created idempotently at worker start-up.
//! - [`spend`]: the `LLM_SPEND` documents and why aggregation is exactly-once with many
//!   workers; [`aggregator`]: the background task that keeps them up to date, in the worker
//!   that holds its lease.
//! - [`tail`] and [`report`]: `llmbus usage tail` and `llmbus spend` (their arguments are in
//!   `cli::usage`).
//! - [`UsageError`]: why a usage operation failed.
//!
//! The cost actor ([`crate::runtime::cost`]) owns the pipeline inside a worker: it starts the
//! publisher and the aggregator and ensures the stream. A job records its event once, when
//! it answers; a job that ends without answering (a panic) records one as its state is
//! dropped (`runtime::job`).

pub mod aggregator;
pub mod delivery;
mod error;
pub mod publisher;
pub mod report;
pub mod spend;
pub mod stream;
pub mod tail;

pub use crate::wire::usage::UsageEvent;
pub use error::UsageError;
pub use publisher::UsageSink;
