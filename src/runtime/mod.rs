//! The roles of one worker and the context they share.
//!
//! ```text
//!  NATS ──► endpoint readers ──admit (Gate)──► job task (one per job) ──► reply subject
//!             (ingress)                          │   │        │
//!                          reads the snapshot ◄──┘   │        └── UsageSink ──► publisher
//!                          of RoutingTable           │ permit (fast path; the
//!                          (RouterActor owns it,     ▼ DeploymentActor queues waiters)
//!                           supervises ──────────► Deployment ──► provider adapter ──HTTP──►
//! ```
//!
//! - [`ingress`]: the NATS service and its endpoint readers; the drain.
//! - [`direct`]: jobs handed between workers (a group this worker does not serve), probed
//!   first so that none goes to a worker that has left.
//! - [`admin`]: the admin subjects (`llm.admin.config.push|rollback`), checked against the
//!   master key.
//! - [`gate`]: admission (the in-flight bound), the worker's phase, the cut-off signal.
//! - [`job`]: one job's life as a task (the "request actor" role).
//! - [`local`]: jobs the in-worker HTTP front hands over in process (groups this worker
//!   serves), admitted through the same gate.
//! - [`cancel`]: cancellation by the requester (`llm.cancel`).
//! - [`readiness`]: whether the worker serves (`/readyz`, the `state` of `$SRV.STATS`).
//! - [`plan`]: a config made into deployments and routing rules (at start, on reload).
//! - [`table`]: the routing table snapshot; it applies the pick rules of
//!   [`crate::policy::routing`] and claims half-open probes.
//! - [`router`]: the actor that owns the table and supervises the deployment actors.
//! - [`announced`]: which cooldowns other workers announce are believed, and for how long.
//! - [`deployment`]: one deployment's capacity and health, and its actor.
//! - [`cost`]: the cost actor.
//! - [`RuntimeError`]: why a listener could not start.

use std::{sync::Arc, time::Duration};

use ractor::ActorRef;

pub mod admin;
pub mod announced;
pub mod cancel;
pub mod cost;
pub mod deployment;
pub mod direct;
mod error;
pub mod gate;
pub mod ingress;
pub mod job;
pub mod local;
pub mod plan;
pub mod readiness;
pub mod router;
pub mod table;

pub use error::RuntimeError;

use crate::wire::Subjects;

/// What every job needs, shared by all of them.
pub struct WorkerContext {
    /// This worker's id: in job ids, cluster state and its direct subjects.
    pub worker_id: String,
    /// The fingerprint of the config it serves ([`crate::config::Config::fingerprint`]).
    pub fingerprint: arc_swap::ArcSwap<String>,
    /// The cluster's live workers and what each serves; empty without JetStream (until the
    /// worker joins; empty again once it leaves, when it stops).
    pub members: arc_swap::ArcSwapOption<crate::cluster::members::Members>,
    /// Whether its limits hold for the cluster now ($SRV.STATS, `llmbus health`).
    pub sharing: crate::cluster::sharing::Sharing,
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Subject names.
    pub subjects: Subjects,
    /// The routing table (the router replaces it).
    pub table: router::SharedTable,
    /// Admission, phase and cut-off.
    pub gate: Arc<gate::Gate>,
    /// Jobs their requesters may cancel.
    pub cancels: Arc<cancel::Cancels>,
    /// What the config says about every job (deadline, retries, fallbacks, keys); the worker
    /// replaces it when the cluster's config changes.
    pub settings: arc_swap::ArcSwap<JobSettings>,
    /// The cost actor.
    pub cost: ActorRef<cost::CostMsg>,
    /// Where a finished job's usage event goes (never waits; see [`crate::usage`]).
    pub usage: crate::usage::UsageSink,
    /// The largest message the NATS server takes.
    pub max_payload: usize,
    /// The replicas its buckets and streams get, and what its keeper found of them.
    pub store: Arc<crate::cluster::store::StoreStatus>,
}

/// The config's rules for every job: one snapshot, read once per job.
#[derive(Debug)]
pub struct JobSettings {
    /// A job's deadline when its request sets none.
    pub default_timeout: Duration,
    /// Retries per error class and back-off.
    pub retry: crate::policy::retry::RetryPolicy,
    /// Fallback lists.
    pub fallbacks: crate::policy::retry::Fallbacks,
    /// Who may run jobs (the master key).
    pub auth: crate::auth::Auth,
}

impl JobSettings {
    /// The settings `config` gives.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let policies = crate::policy::Policies::from_config(config);
        Self {
            default_timeout: config.default_timeout(),
            retry: policies.retry,
            fallbacks: policies.fallbacks,
            auth: crate::auth::Auth::from_config(config),
        }
    }
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("worker_id", &self.worker_id)
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}
