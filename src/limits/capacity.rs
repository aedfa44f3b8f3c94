//! The capacity of one deployment: requests per minute, tokens per minute and calls in flight.
//!
//! The deployment actor owns one [`Capacity`]. Before an upstream call it asks for a
//! [`Permit`] with [`Capacity::try_acquire`], reserving one request and an estimate of the
//! tokens; after the call it gives the permit back with [`Capacity::release`] and the real token
//! count, so the TPM window is corrected both ways. A refusal is a [`Wait`]: how long until the
//! request could pass, or that it waits for a call in flight to finish.
//!
//! Each of the RPM and TPM limits is either a local [`SlidingWindow`] (one process alone) or a
//! [`SharedLimit`]: a window-exact allowance shared with other workers, such as
//! [`crate::cluster::quota::ClusterLimit`] ([`Capacity::with_shared`]). The calls are the same
//! either way, and neither awaits.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{share::Taken, window::SlidingWindow};

/// A per-window allowance shared with other workers. Implementations must not block: the
/// deployment's hot path calls them.
pub trait SharedLimit: Send + Sync + std::fmt::Debug {
    /// Takes `n` units now, or says how long to wait.
    fn try_take(&self, n: u64, now: Instant) -> Result<Taken, Wait>;
    /// Settles units taken with the real count (0 when the call was never made).
    fn settle(&self, taken: Taken, actual: u64, now: Instant);
    /// Units allowed per window.
    fn limit(&self) -> u64;
    /// Units counted in the trailing window, cluster-wide, as last seen.
    fn used(&self, now: Instant) -> u64;
}

/// One RPM or TPM limit: local, or shared with the cluster.
#[derive(Debug, Clone)]
enum Limit {
    Local(SlidingWindow),
    Shared(Arc<dyn SharedLimit>),
}

impl Limit {
    fn capacity(&self) -> u64 {
        match self {
            Limit::Local(b) => b.limit(),
            Limit::Shared(s) => s.limit(),
        }
    }

    fn used(&mut self, now: Instant) -> u64 {
        match self {
            Limit::Local(b) => b.used(now),
            Limit::Shared(s) => s.used(now),
        }
    }
}

/// LiteLLM's default for `max_parallel_requests` when the deployment does not set it.
///
/// The rule of LiteLLM's `calculate_max_parallel_requests` (in `litellm/utils.py`, called by the
/// router's `set_max_parallel_requests_client` for each deployment):
/// 1. `max_parallel_requests` when it is set;
/// 2. else `rpm`;
/// 3. else `int(tpm / 1000 * 6)`, at least 1;
/// 4. else the router's `default_max_parallel_requests` (unset by default: no bound).
///
/// LiteLLM only builds the semaphore when the result is truthy, so a result of 0 means "no
/// bound"; this function answers `None` for it, as for "nothing set".
pub fn default_max_parallel(
    max_parallel: Option<u32>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    router_default: Option<u32>,
) -> Option<u32> {
    let computed = if let Some(n) = max_parallel {
        Some(n)
    } else if let Some(rpm) = rpm {
        Some(saturate(rpm))
    } else if let Some(tpm) = tpm {
        // int(tpm / 1000 * 6) == tpm * 6 / 1000 rounded down, and at least 1.
        Some(saturate((tpm.saturating_mul(6) / 1000).max(1)))
    } else {
        router_default
    };
    computed.filter(|&n| n > 0)
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Why a request cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The RPM or TPM window will allow it after this long (if nothing else takes from it).
    For(Duration),
    /// Every parallel slot is taken: it can start when a call in flight is released.
    ParallelSlot,
    /// A limit of 0 requests or tokens per minute: this deployment never serves it.
    Never,
}

impl Wait {
    /// The time to wait, when one is known.
    pub fn duration(&self) -> Option<Duration> {
        match self {
            Wait::For(d) => Some(*d),
            Wait::ParallelSlot | Wait::Never => None,
        }
    }
}

/// The units one upstream call holds: a parallel slot, a request, its token reservation. Give
/// it back with [`Capacity::release`] (or [`Capacity::cancel`] when the call was never made); it
/// cannot be copied. This is the bare record: outside this module it only travels inside an
/// owner that gives it back when dropped (`runtime::deployment::Lease`).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit holds a parallel slot until it is released"]
pub struct Permit {
    reserved_tokens: u64,
    /// When the units were taken: where a local window counts them.
    taken_at: Instant,
    /// What shared limits handed out, to settle with them.
    rpm_taken: Taken,
    tpm_taken: Taken,
}

impl Permit {
    /// The tokens reserved against the TPM limit when the permit was granted.
    pub fn reserved_tokens(&self) -> u64 {
        self.reserved_tokens
    }
}

/// A deployment's capacity in use, for `llm.deployments` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CapacitySnapshot {
    /// Upstream calls running now.
    pub in_flight: u32,
    /// The most calls allowed at once; `null` for no bound.
    pub max_parallel: Option<u32>,
    /// Requests counted in the trailing minute. With a limit shared with the cluster: the
    /// requests leased in the window by every worker, spent or still held (as last seen).
    pub rpm_used: u64,
    /// Requests allowed per minute; `null` for no limit.
    pub rpm_limit: Option<u64>,
    /// Tokens counted in the trailing minute (reservations included; can exceed the limit
    /// after a call that used more than its reservation).
    pub tpm_used: u64,
    /// Tokens allowed per minute; `null` for no limit.
    pub tpm_limit: Option<u64>,
}

/// RPM, TPM and parallel limits of one deployment. Not thread-safe on purpose: one actor owns it.
#[derive(Debug, Clone)]
pub struct Capacity {
    rpm: Option<Limit>,
    tpm: Option<Limit>,
    max_parallel: Option<u32>,
    in_flight: u32,
}

impl Capacity {
    /// Limits from a deployment's `rpm`, `tpm` and `max_parallel_requests`, with LiteLLM's
    /// defaulting of the parallel bound ([`default_max_parallel`], no router default).
    pub fn new(rpm: Option<u64>, tpm: Option<u64>, max_parallel: Option<u32>) -> Self {
        Self::with_router_default(rpm, tpm, max_parallel, None, Instant::now())
    }

    /// Like [`Capacity::new`], with the router's `default_max_parallel_requests` and the
    /// instant at which the windows start empty.
    pub fn with_router_default(
        rpm: Option<u64>,
        tpm: Option<u64>,
        max_parallel: Option<u32>,
        router_default: Option<u32>,
        now: Instant,
    ) -> Self {
        Self {
            rpm: rpm.map(|n| Limit::Local(SlidingWindow::new(n, now))),
            tpm: tpm.map(|n| Limit::Local(SlidingWindow::new(n, now))),
            max_parallel: default_max_parallel(max_parallel, rpm, tpm, router_default),
            in_flight: 0,
        }
    }

    /// Limits shared with the cluster: `rpm` and `tpm` are [`SharedLimit`]s (for example
    /// [`crate::cluster::quota::ClusterLimit`]s); the parallel bound stays per process and
    /// defaults from their limits as LiteLLM does.
    pub fn with_shared(
        rpm: Option<Arc<dyn SharedLimit>>,
        tpm: Option<Arc<dyn SharedLimit>>,
        max_parallel: Option<u32>,
        router_default: Option<u32>,
    ) -> Self {
        let max_parallel = default_max_parallel(
            max_parallel,
            rpm.as_ref().map(|l| l.limit()),
            tpm.as_ref().map(|l| l.limit()),
            router_default,
        );
        Self {
            rpm: rpm.map(Limit::Shared),
            tpm: tpm.map(Limit::Shared),
            max_parallel,
            in_flight: 0,
        }
    }

    /// Reserves one request, `est_tokens` tokens and a parallel slot, or tells why not.
    ///
    /// Either everything is taken or nothing is. A parallel-slot shortage is reported first,
    /// since no time bound is known for it; otherwise the wait is the longer of the RPM and TPM
    /// waits. A request needing more tokens than the whole TPM limit is admitted when the TPM
    /// window is empty (see [`SlidingWindow::check`]).
    pub fn try_acquire(&mut self, est_tokens: u64, now: Instant) -> Result<Permit, Wait> {
        if self.max_parallel.is_some_and(|max| self.in_flight >= max) {
            return Err(Wait::ParallelSlot);
        }
        // Local windows are checked before anything is taken; shared limits take, and give
        // back when the other limit refuses. Either way nothing stays taken on a refusal.
        let rpm_wait = check(self.rpm.as_mut(), 1, now);
        let tpm_wait = check(self.tpm.as_mut(), est_tokens, now);
        if rpm_wait.is_some() || tpm_wait.is_some() {
            return Err(to_wait(rpm_wait, tpm_wait));
        }
        let rpm_taken = match take(self.rpm.as_mut(), 1, now) {
            Ok(t) => t,
            Err(w) => return Err(to_wait(Some(w), None)),
        };
        let tpm_taken = match take(self.tpm.as_mut(), est_tokens, now) {
            Ok(t) => t,
            Err(w) => {
                give_back(self.rpm.as_mut(), 1, rpm_taken, now, now);
                return Err(to_wait(None, Some(w)));
            }
        };
        self.in_flight += 1;
        Ok(Permit {
            reserved_tokens: est_tokens,
            taken_at: now,
            rpm_taken,
            tpm_taken,
        })
    }

    /// Gives back a permit after the upstream call.
    ///
    /// `actual_tokens` is the usage the upstream reported (`total_tokens`): the TPM window is
    /// settled against the reservation, both ways. `None` means the count is unknown, and the
    /// reservation stands as the best guess. The request stays counted against RPM.
    pub fn release(&mut self, permit: Permit, actual_tokens: Option<u64>, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let (Some(limit), Some(actual)) = (self.tpm.as_mut(), actual_tokens) {
            match limit {
                Limit::Local(window) => {
                    window.settle(permit.reserved_tokens, actual, permit.taken_at, now)
                }
                Limit::Shared(shared) => shared.settle(permit.tpm_taken, actual, now),
            }
        }
    }

    /// Gives back a permit whose call was never made (deadline passed, job dropped): the
    /// request and its tokens are refunded.
    pub fn cancel(&mut self, permit: Permit, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let at = permit.taken_at;
        give_back(self.rpm.as_mut(), 1, permit.rpm_taken, at, now);
        give_back(
            self.tpm.as_mut(),
            permit.reserved_tokens,
            permit.tpm_taken,
            at,
            now,
        );
    }

    /// Upstream calls running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The parallel bound in force (after defaulting); `None` for no bound.
    pub fn max_parallel(&self) -> Option<u32> {
        self.max_parallel
    }

    /// The capacity in use at `now`.
    pub fn snapshot(&mut self, now: Instant) -> CapacitySnapshot {
        CapacitySnapshot {
            in_flight: self.in_flight,
            max_parallel: self.max_parallel,
            rpm_used: self.rpm.as_mut().map_or(0, |b| b.used(now)),
            rpm_limit: self.rpm.as_ref().map(Limit::capacity),
            tpm_used: self.tpm.as_mut().map_or(0, |b| b.used(now)),
            tpm_limit: self.tpm.as_ref().map(Limit::capacity),
        }
    }
}

/// The wait of one optional local window for `n`, `None` when it allows it now (or has no
/// limit, or is shared: shared limits are asked by [`take`]).
fn check(limit: Option<&mut Limit>, n: u64, now: Instant) -> Option<Wait> {
    match limit {
        Some(Limit::Local(b)) => b.check(n, now).err().map(|d| {
            if d == Duration::MAX {
                Wait::Never
            } else {
                Wait::For(d)
            }
        }),
        _ => None,
    }
}

/// Takes `n` from one optional limit (a local window was checked already).
fn take(limit: Option<&mut Limit>, n: u64, now: Instant) -> Result<Taken, Wait> {
    match limit {
        Some(Limit::Local(b)) => {
            let _ = b.try_take(n, now);
            Ok(Taken::NONE)
        }
        Some(Limit::Shared(s)) => s.try_take(n, now),
        None => Ok(Taken::NONE),
    }
}

/// Gives `n` units taken at `at` (or what a shared limit handed out) back.
fn give_back(limit: Option<&mut Limit>, n: u64, taken: Taken, at: Instant, now: Instant) {
    match limit {
        Some(Limit::Local(b)) => b.refund(n, at, now),
        Some(Limit::Shared(s)) => s.settle(taken, 0, now),
        None => {}
    }
}

/// One wait from the RPM and TPM answers: never if either never allows it, else the longer.
fn to_wait(rpm: Option<Wait>, tpm: Option<Wait>) -> Wait {
    let waits = [rpm, tpm];
    if waits.iter().flatten().any(|w| *w == Wait::Never) {
        return Wait::Never;
    }
    let longest = waits
        .iter()
        .flatten()
        .filter_map(Wait::duration)
        .max()
        .unwrap_or(Duration::ZERO);
    Wait::For(longest)
}

#[cfg(test)]
mod tests;
