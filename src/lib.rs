//! # llmbus — an LLM gateway on a NATS bus
//!
//! Any program that can publish a NATS message gets one OpenAI-shaped API in front of every
//! LLM provider. A client publishes an OpenAI Chat Completions request body to
//! `llm.completion`; a worker answers with the OpenAI response body (or, for
//! `"stream": true`, with `chat.completion.chunk` messages and an empty sentinel). Workers are
//! stateless processes sharing a NATS queue group: scale by starting more of them.
//!
//! ## From socket to upstream and back
//!
//! ```text
//!  client ──publish llm.completion (reply: inbox)──► NATS ──queue group──► worker
//!
//!  worker:
//!   ┌─────────────┐ spawn  ┌──────────────────┐  Route   ┌─────────────┐
//!   │ IngressActor├───────►│ RequestActor     ├─────────►│ RouterActor │ supervises
//!   │ ($SRV, subs,│ 1/job  │ validate, deadline│◄─────────┤ model groups├──────────┐
//!   │  in-flight  │        │ retries, fallbacks│          └─────────────┘          ▼
//!   │  bound)     │        │                  │ Acquire/Release  ┌──────────────────────┐
//!   └─────────────┘        │                  ├─────────────────►│ DeploymentActor (1/dep)│
//!                          │                  │                  │ RPM/TPM buckets,       │
//!                          │  spawns the HTTP │                  │ in-flight, health      │
//!                          │  call as a task ─┼──► provider      └──────────────────────┘
//!                          │  (never in a     │    adapter ──HTTP──► upstream LLM API
//!                          │   handler)       │
//!                          │                  ├── UsageSink ──► publisher ──► llm.usage.<group>
//!                          └────────┬─────────┘
//!                                   └── reply / chunks (Llm-Seq) / sentinel ──► client inbox
//! ```
//!
//! 1. [`actors::ingress`] registers the `llmbus` service with the NATS services framework
//!    (`$SRV.PING|INFO|STATS`), subscribes to `llm.completion`, `llm.embedding`,
//!    `llm.models` and `llm.deployments` in the queue group, and spawns one request actor per job while fewer
//!    than `max_in_flight` run (else a 503 at once). On shutdown it drains: jobs that still reach
//!    it are handed to the other workers, jobs in flight finish within the grace period.
//! 2. [`actors::request`] owns the job: it parses the body ([`wire::openai`]), reads the
//!    headers ([`wire::headers`]), schedules the deadline, asks the router for a deployment,
//!    waits for that deployment's capacity, runs the upstream call in a task, retries on
//!    another deployment or falls back to another group, and answers. Every failure becomes
//!    the OpenAI error body with `Llm-Status` ([`wire::error`]).
//! 3. [`actors::router`] resolves aliases and picks among the group's healthy deployments
//!    (tags, context window, capacity) with the configured routing strategy; it restarts a
//!    deployment actor that fails, and passes on cooldowns other workers announce on
//!    `llm.health.*`.
//! 4. [`actors::deployment`] holds one deployment's limits ([`limits`]) and health (cooldowns,
//!    half-open probes); it grants and settles capacity but never makes the HTTP call.
//! 5. [`providers`] turn the OpenAI request into a provider's HTTP call and its answer or
//!    stream back into OpenAI shapes: the OpenAI-compatible family (one table row each),
//!    Anthropic, Gemini and Vertex AI, Bedrock Converse, Cohere and Ollama; [`pricing`]
//!    prices the usage (built-in prices, or LiteLLM's price file); the job hands its usage
//!    event to [`usage`] without waiting.
//! 6. [`usage`] publishes one event per job on `llm.usage.<group>` (kept by the `LLM_USAGE`
//!    JetStream stream), and every worker's background aggregator folds the stream into the
//!    `LLM_SPEND` key-value bucket that `llmbus spend` reads; [`actors::cost`] owns that
//!    pipeline in a worker. `llmbus usage tail` follows the events live.
//!
//! The rules behind retries, fallbacks, cooldowns and routing strategies live in [`policy`] as
//! pure code. `llm.embedding` jobs take the same path as completions, without streaming.
//!
//! [`config`] loads a LiteLLM `config.yaml` as it is; [`worker::Worker`] starts the actors of
//! one process; [`client`] is a small Rust client of the same NATS contract; [`telemetry`]
//! sets up logs and Prometheus metrics; [`health`] serves `/healthz` and `/readyz` and answers
//! `llmbus health`; [`local_nats`] starts a private `nats-server` for `llmbus up` and the tests.

pub mod actors;
pub mod client;
pub mod config;
pub mod health;
pub mod limits;
pub mod local_nats;
pub mod nats;
pub mod policy;
pub mod pricing;
pub mod providers;
pub mod telemetry;
pub mod usage;
pub mod wire;
pub mod worker;

pub use worker::Worker;
