//! # llmbus — an LLM gateway on a NATS bus
//!
//! Any program that can publish a NATS message gets one OpenAI-shaped API in front of every
//! LLM provider. A client publishes an OpenAI Chat Completions request body to
//! `llm.completion`; a worker answers with the OpenAI response body (or, for
//! `"stream": true`, with `chat.completion.chunk` messages and an empty sentinel). Workers are
//! stateless processes sharing a NATS queue group: scale by starting more of them.
//!
//! ## Layers
//!
//! Imports go one way, down: a module uses its own layer and the layers below it, never one
//! above, and no two modules import each other (`tests/it/layering.rs` checks both, and that this
//! drawing matches its table). A type two layers share lives in the lower one.
//!
//! ```text
//! ┌──────────────┬──────────────────────────┬─────────────────────────────────────────────────┐
//! │ layer        │ modules                  │ what it holds                                   │
//! ├──────────────┼──────────────────────────┼─────────────────────────────────────────────────┤
//! │ CLI          │ cli, fuzzing             │ the llmbus subcommands; fuzz entry points       │
//! │ worker       │ worker                   │ start, reload, drain; the ops server (/metrics) │
//! │ HTTP front   │ http                     │ OpenAI-compatible HTTP in front of the bus      │
//! │ runtime      │ runtime                  │ ingress, the job, deployments, router, cost     │
//! │ over NATS    │ cluster, usage, client   │ shared KV state; usage events and spend; the    │
//! │              │                          │ Rust client and the `llmbus health` probe       │
//! │ pure code    │ policy, pricing,         │ routing, retry and health rules; prices; the    │
//! │              │ providers, auth,         │ upstream wire formats; key checks; a config's   │
//! │              │ preflight                │ problems                                        │
//! │ contract     │ wire, config, limits,    │ the NATS contract (subjects, headers, bodies,   │
//! │ and settings │ telemetry, nats,         │ the usage event); settings and their defaults;  │
//! │              │ local_nats               │ rate limits; metric names, logs; NATS at hand   │
//! └──────────────┴──────────────────────────┴─────────────────────────────────────────────────┘
//! ```
//!
//! Where new code goes:
//! - a subject, header, body or event that travels on NATS: [`wire`]; a setting and its
//!   default: [`config`]; a metric: its name in [`telemetry`];
//! - a rule that decides without doing I/O (which deployment, retry or not, cool down or
//!   not): [`policy`], as a pure function with its unit tests; a provider's wire format: a
//!   module of [`providers`] (an OpenAI-compatible one is a row of its table);
//! - state every worker shares in JetStream: [`cluster`]; what happens to usage events after
//!   a job: [`usage`]; a question any NATS client may ask the workers: [`client`];
//! - a new kind of job, or a step every job takes: [`runtime::job`]; a NATS endpoint of the
//!   worker: [`runtime::ingress`];
//! - an HTTP route: [`http`]; starting or stopping something with the worker, or an ops
//!   endpoint: [`worker`]; a subcommand: [`cli`].
//!
//! ## From socket to upstream and back
//!
//! ```text
//!  client ──publish llm.completion (reply: inbox)──► NATS ──queue group──► worker
//!
//!  worker:
//!   ┌──────────────────┐ admit  ┌─────────────────────┐ reads  ┌──────────────────────┐
//!   │ ingress          │ (Gate: │ job task (1/job)    ├───────►│ RoutingTable snapshot│
//!   │ endpoint readers ├───────►│ validate, deadline, │ ArcSwap│ (RouterActor owns it,│
//!   │ $SRV, drain      │ bound) │ retries, fallbacks, │        │ supervises ↓)        │
//!   └──────────────────┘        │ cancel, cut-off     │ permit └──────────────────────┘
//!                               │                     ├───────►┌──────────────────────┐
//!                               │ calls the provider  │ (fast  │ Deployment (1/dep)   │
//!                               │ adapter in place ───┼──HTTP──► RPM/TPM, in-flight,  │
//!                               │                     │  path) │ health; its actor    │
//!                               │                     │        │ queues the waiters   │
//!                               │                     ├─usage─►└──────────────────────┘
//!                               └──────────┬──────────┘  UsageSink ──► llm.usage.<group>
//!                                          └── reply / chunks (Llm-Seq) / sentinel ──► inbox
//! ```
//!
//! 1. [`runtime::ingress`] registers the `llmbus` service with the NATS services framework
//!    (`$SRV.PING|INFO|STATS`) and subscribes to `llm.completion`, `llm.embedding`,
//!    `llm.models` and `llm.deployments` in the queue group. Each endpoint's reader admits a
//!    job through the [`runtime::gate::Gate`] (fewer than `max_in_flight` running, else a 503
//!    at once; a job with no reply subject is refused) and starts its task. On shutdown it
//!    drains: jobs that still reach it are handed to the other workers (or run here when this
//!    is the last worker), jobs in flight finish within the grace period.
//! 2. [`runtime::job`] is the request-actor role, one tokio task per job: it parses the body
//!    ([`wire::openai`]), reads the headers ([`wire::headers`]), races the work against the
//!    deadline, the worker's cut-off and the requester's cancel ([`runtime::cancel`]), picks a
//!    deployment from the routing table, takes its capacity, calls the upstream in place,
//!    retries on another deployment or falls back to another group, and answers. Every
//!    failure becomes the OpenAI error body with `Llm-Status` ([`wire::error`]); a panic is a
//!    500 for that job only. What differs between kinds of job (chat on `llm.completion`,
//!    embeddings on `llm.embedding`; next Anthropic Messages, OpenAI Responses, batches) is one
//!    module each in [`runtime::job::kind`] (how the body is parsed, which provider call is
//!    made, how the answer and the stream are framed) and one row of its table
//!    ([`runtime::job::KINDS`]), which ingress subscribes by; routing, limits, retries,
//!    fallbacks, cooldowns, cancel, usage and cost are written once for every kind.
//! 3. [`runtime::table`] is the routing table: groups, aliases and deployments as an immutable
//!    snapshot that jobs read through an `ArcSwap`; the pick rules it applies (health, tags,
//!    context window, capacity, then the routing strategy) are pure functions in
//!    [`policy::routing`]. [`runtime::plan`] makes a config into its deployments and rules at
//!    start and on every reload. [`runtime::router`] owns the table,
//!    spawns and supervises the deployment actors, and passes on cooldowns other workers
//!    announce on `llm.health.*`, those of current members only and bounded in length
//!    ([`runtime::announced`]).
//! 4. [`runtime::deployment`] holds one deployment's limits ([`limits`]) and health
//!    (cooldowns, half-open probes). A job takes capacity on the fast path, under a short
//!    uncontended lock; only a job that has to wait asks the deployment's actor, which queues
//!    it first come, first served and wakes it when capacity returns. What a job holds is a
//!    lease (`deployment::lease`) whose `Drop` gives every unit back on every path, a lease
//!    still travelling in a reply channel included; a worker at idle checks that nothing is
//!    left in flight (`deployment::selfcheck`, `llmbus_capacity_lost_total`). With JetStream, `rpm`
//!    and `tpm` hold for the whole cluster: the local balance is fed by slices leased from a
//!    KV ledger in the background ([`cluster::quota`]), so a job far from its limit never waits
//!    on a round trip; cooldowns go to every worker, and to those that start later, through
//!    the health board ([`cluster::health`]). A job for a group this worker does not serve is
//!    handed to one that does ([`cluster::members`]) and still answers ([`runtime::direct`]).
//! 5. [`providers`] turn the OpenAI request into a provider's HTTP call and its answer or
//!    stream back into OpenAI shapes: the OpenAI-compatible family (one table row each),
//!    Anthropic, Gemini and Vertex AI, Bedrock Converse, Cohere and Ollama; [`pricing`]
//!    prices the usage (built-in prices, LiteLLM's price file, or the deployment's own
//!    prices); the job hands its usage event to [`usage`] without waiting.
//! 6. [`usage`] stores one event per job in the `LLM_USAGE` JetStream stream
//!    (`llm.usage.<group>`, acknowledged, retried until stored), and a background aggregator (one worker's at a time, by a lease)
//!    folds the stream into the `LLM_SPEND` key-value bucket that `llmbus spend` reads;
//!    [`runtime::cost`] owns that pipeline in a worker. `llmbus usage tail` follows the events live.
//!
//! ## Why the hot path looks like this
//!
//! Measured on the 2-core machine (`cargo bench --bench micro`, `cargo bench --bench load`):
//! spawning a ractor actor per job cost about 15 µs and a mailbox per job, and every job
//! crossed four actor hops (ingress admit, router call, deployment acquire, call task and
//! reply message). A job is now one task with no message on its way when a deployment has
//! capacity: the routing table is a snapshot, capacity a lock, the upstream call is made in
//! the job's own task. The actor roles stay where they carry state that needs one owner: the
//! router (the table, supervision), the deployment actors (the queue of jobs waiting for
//! capacity, cooldown announcements), the cost actor (usage), ingress (the drain).
//!
//! Memory: nothing a job creates outlives it. Its future owns its state; the deadline is a
//! timer inside that future (the per-job ractor actors held their mailbox for the whole default
//! deadline through `send_after`, about 6 KB a job for 10 minutes); the cancel registry and the
//! gate hold one entry per job in flight, bounded by `max_in_flight`.
//!
//! The rules behind retries, fallbacks, cooldowns and routing strategies live in [`policy`] as
//! pure code. `llm.embedding` jobs take the same path as completions, without streaming.
//!
//! [`auth`] is the key check of every job (`general_settings.master_key`), of every cancel (the
//! job's own key or the master key, [`runtime::cancel`]) and of the admin subjects
//! (`llm.admin.config.push|rollback`, [`runtime::admin`], which change the cluster's config
//! with the master key). [`config`] loads a
//! LiteLLM `config.yaml` as it is, refusing security settings llmbus does not enforce and
//! keeping a deployment that cannot work as *misconfigured* (it takes no traffic);
//! [`preflight`] lists every problem of a config for `llmbus check` and `serve --strict`;
//! [`worker::Worker`] starts the actors of one process and applies a new config to them
//! ([`worker::Worker::reload`]) and serves `/metrics`, `/healthz` and `/readyz`
//! ([`worker::ops`]; readiness is [`runtime::readiness`]); [`client`] is a small Rust client of
//! the same NATS contract, and asks the workers about themselves for `llmbus health`
//! ([`client::health`]); [`telemetry`] names every metric and sets up logs; [`local_nats`] starts a private
//! `nats-server` for `llmbus up` and the tests (and finds or installs the binary); [`cli`]
//! holds the `llmbus` subcommands that `src/main.rs` dispatches to. `fuzzing` (hidden from
//! the docs) holds the entry points of the fuzz targets in `fuzz/` and of their regression
//! tests: one per parser that reads bytes from outside, each checking that parser's invariants.
//!
//! [`http`] is the OpenAI-compatible HTTP front (inside a worker or as `llmbus front`): it turns
//! each HTTP request into the same NATS job any client could send, and the replies and chunks
//! back into HTTP and server-sent events; inside a worker, the jobs of the groups it serves go
//! to its job path in process ([`runtime::local`]). It serves its connections itself
//! ([`http::conn`]: header, body and idle timeouts, a connection cap) and holds each job's
//! messages in a bounded buffer. Replies carry OpenAI's `x-ratelimit-*` headers from the
//! serving deployment's limits ([`wire::ratelimit`]).
//! A job whose worker dies before anything of it reached the caller is sent again: workers
//! acknowledge the front's jobs (`Llm-Ack`), and the front pings the workers holding its jobs
//! (`http::resend`).
//!
//! [`cluster`] keeps the state that makes several workers one gateway in JetStream KV:
//! membership, deployment limits that hold cluster-wide, cooldowns for late joiners, and the
//! cluster's config file ([`cluster::config_store`]: `llmbus config push|show|history|rollback`,
//! `llmbus serve` without `--config`), checked at push without the workers' secrets
//! ([`config::Detached`]) and named by its [`config::fingerprint`]. Its times are the NATS
//! server's as each worker measures them ([`cluster::clock`]), its keys the deployment ids
//! every worker derives alike ([`config::deployment_ids`]); a worker that cannot share its
//! limits (no JetStream yet, a clock too far off) keeps them local, says so
//! ([`cluster::sharing`]) and joins when it can.
//! Every bucket and stream gets `llmbus.replicas` copies (3 on a NATS cluster of 3 or more;
//! [`cluster::store`]), and each worker's keeper creates again what the store lost while it
//! runs and reports any bucket short of replicas (`worker::keeper`, `llmbus health`).

pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod limits;
pub mod local_nats;
pub mod nats;
pub mod policy;
pub mod preflight;
pub mod pricing;
pub mod providers;
pub mod runtime;
pub mod telemetry;
pub mod usage;
pub mod wire;
pub mod worker;

pub use worker::Worker;
