//! The actors of one worker (ractor) and the context they share.
//!
//! ```text
//!   NATS ──► IngressActor ──spawn──► RequestActor (one per job) ──► reply subject
//!                                      │  ▲      │
//!                              Route   │  │      │ Acquire / Release / Outcome
//!                                      ▼  │      ▼
//!                                 RouterActor ─supervises─► DeploymentActor (one per deployment)
//!                                                          
//!   RequestActor ── UsageSink::record ──► publisher (started by CostActor) ──► llm.usage.<group>
//! ```

use std::time::Duration;

use ractor::ActorRef;

pub mod cost;
pub mod deployment;
pub mod ingress;
pub mod request;
pub mod router;

use crate::wire::Subjects;

/// What every request actor needs, shared by all of them.
pub struct WorkerContext {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Subject names.
    pub subjects: Subjects,
    /// The router.
    pub router: ActorRef<router::RouterMsg>,
    /// The cost actor.
    pub cost: ActorRef<cost::CostMsg>,
    /// Where a finished job's usage event goes (never waits; see [`crate::usage`]).
    pub usage: crate::usage::UsageSink,
    /// A job's deadline when its request sets none.
    pub default_timeout: Duration,
    /// Retries per error class and back-off.
    pub retry: crate::policy::retry::RetryPolicy,
    /// Fallback lists.
    pub fallbacks: crate::policy::retry::Fallbacks,
    /// The largest message the NATS server takes.
    pub max_payload: usize,
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("subjects", &self.subjects)
            .field("default_timeout", &self.default_timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}
