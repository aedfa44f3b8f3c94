//! Whether a worker's limits hold for the whole cluster right now, and why not: the state
//! `llmbus health`, `llm.deployments` and the `llmbus_limits_shared` gauge report.
//!
//! A worker shares its `rpm`/`tpm` limits (and cooldowns) through JetStream KV. When it cannot
//! (no JetStream yet, or its clock too far off the server's), every limit holds for this
//! worker alone: N such workers let N times the limit through. That mode is allowed, so that a
//! worker still serves, but it is never quiet.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::clock::Offset;

/// Why a worker's limits are its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalReason {
    /// JetStream KV could not be reached (yet): the error it gave.
    NoJetStream(String),
    /// The worker's clock is further off the server's than [`super::clock::MAX_OFFSET`].
    ClockOffset(Offset),
}

impl std::fmt::Display for LocalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalReason::NoJetStream(e) => write!(f, "JetStream KV is not available ({e})"),
            LocalReason::ClockOffset(o) => write!(
                f,
                "this worker's clock is {:.1} s {} the NATS server's (more than {} s off)",
                o.offset_ms.unsigned_abs() as f64 / 1000.0,
                if o.offset_ms < 0 {
                    "ahead of"
                } else {
                    "behind"
                },
                super::clock::MAX_OFFSET.as_secs()
            ),
        }
    }
}

/// Where a worker's limits hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limits {
    /// For the whole cluster.
    Shared,
    /// For this worker alone, and why.
    Local(LocalReason),
}

impl Limits {
    /// `shared` or `local`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Limits::Shared => "shared",
            Limits::Local(_) => "local",
        }
    }

    /// One line for people: `shared with the cluster`, or `local, not shared: <why>`.
    pub fn describe(&self) -> String {
        match self {
            Limits::Shared => "shared with the cluster".into(),
            Limits::Local(why) => format!("local, not shared: {why}"),
        }
    }
}

/// What a worker says about its limits and clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharingStatus {
    /// Where the limits hold.
    pub limits: Limits,
    /// The last clock measurement, if any.
    pub clock: Option<Offset>,
}

/// A worker's sharing state, cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct Sharing(Arc<ArcSwap<SharingStatus>>);

impl std::fmt::Debug for Sharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sharing").field(&*self.status()).finish()
    }
}

impl Sharing {
    /// A state with limits `limits` and no clock measurement.
    pub(crate) fn new(limits: Limits) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(SharingStatus {
            limits,
            clock: None,
        })))
    }

    /// The state now.
    pub fn status(&self) -> Arc<SharingStatus> {
        self.0.load_full()
    }

    /// True when the limits hold for the cluster.
    pub fn is_shared(&self) -> bool {
        self.status().limits == Limits::Shared
    }

    /// Replaces the state.
    pub(crate) fn set(&self, status: SharingStatus) {
        self.0.store(Arc::new(status));
    }
}
