//! [`Lease`]: a deployment's capacity held by one job, given back by ownership.
//!
//! A lease owns a [`Permit`] (a parallel slot, one request and a token reservation, and the
//! cluster slices behind them) and the deployment it came from. Whatever ends it, its `Drop`
//! gives the units back: a job that answered, failed, was cut by its deadline, was cancelled or
//! panicked; a lease still travelling in the reply channel of a waiter that has gone (the
//! channel drops it, and with it the units); an actor that stopped. Nothing releases capacity by
//! hand, so no path can forget to.
//!
//! Before its upstream call starts ([`Lease::start_call`]) a dropped lease refunds everything:
//! the call was never made. After it, the request stays counted and the token reservation is
//! settled to what the call used ([`Lease::settle`]), or stands when that is unknown.
//!
//! Dropping a lease takes the deployment's lock: never drop one while holding it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use super::Deployment;
use crate::{limits::Permit, wire::openai::Usage};

/// Capacity held on a deployment; given back when dropped, whatever ends the job.
#[must_use = "a lease holds capacity until it is dropped"]
pub struct Lease {
    deployment: Arc<Deployment>,
    permit: Option<Permit>,
    /// Set once the upstream call has been made: dropping then settles instead of refunding.
    called: bool,
    /// The tokens the call really used, when known (settles the TPM reservation).
    actual_tokens: Option<u64>,
    /// Choices the call asked for, to learn the deployment's output per choice.
    choices: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("deployment", &self.deployment.info.id)
            .field("permit", &self.permit)
            .field("called", &self.called)
            .field("actual_tokens", &self.actual_tokens)
            .finish()
    }
}

impl Lease {
    pub(super) fn new(deployment: Arc<Deployment>, permit: Permit, choices: u64) -> Self {
        Self {
            deployment,
            permit: Some(permit),
            called: false,
            actual_tokens: None,
            choices: choices.max(1),
        }
    }

    /// The tokens reserved against the TPM limit.
    pub fn reserved_tokens(&self) -> u64 {
        self.permit.as_ref().map_or(0, Permit::reserved_tokens)
    }

    /// The upstream call starts now: from here on the request counts, whatever happens.
    pub fn start_call(&mut self) {
        self.called = true;
    }

    /// The call used `usage`: the reservation settles to it, and its output teaches the
    /// deployment what calls without a bound generate.
    pub fn settle(&mut self, usage: &Usage) {
        self.actual_tokens = Some(usage.total_tokens);
        if usage.completion_tokens > 0 {
            self.deployment
                .observe_output(usage.completion_tokens / self.choices);
        }
    }

    /// The call used `tokens` in all (`None`: unknown, the reservation stands).
    pub fn settle_tokens(&mut self, tokens: Option<u64>) {
        self.actual_tokens = tokens;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let now = Instant::now();
        if self.called {
            self.deployment.release(permit, self.actual_tokens, now);
        } else {
            self.deployment.cancel(permit, now);
        }
    }
}

impl Deployment {
    /// Folds a call's output per choice into the average reserved for calls without a bound
    /// (weight 1/5 for the new sample).
    pub(super) fn observe_output(&self, tokens: u64) {
        let avg = &self.output_avg;
        let old = avg.load(Ordering::Relaxed);
        let new = if old == 0 {
            tokens
        } else {
            (old * 4 + tokens) / 5
        };
        avg.store(new.max(1), Ordering::Relaxed);
    }

    /// The average output per choice of this deployment's calls; 0 before the first.
    pub fn observed_output(&self) -> u64 {
        self.output_avg.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;

    use futures::FutureExt;

    use super::*;
    use crate::{limits::Demand, runtime::deployment::testing::deployment};

    const DEMAND: Demand = Demand {
        prompt: 50,
        max_output: Some(1000),
        choices: 1,
    };

    #[test]
    fn a_lease_dropped_before_its_call_refunds_and_after_it_settles() {
        let d = deployment("d", 1);
        let demand = Demand {
            prompt: 50,
            max_output: Some(1000),
            choices: 1,
        };
        let now = Instant::now();
        let lease = d.try_acquire(&demand, now).unwrap();
        assert_eq!(lease.reserved_tokens(), 1050);
        assert!(d.try_acquire(&demand, now).is_none(), "one slot");
        drop(lease);
        let s = d.status(now).capacity;
        assert_eq!((s.in_flight, s.rpm_used, s.tpm_used), (0, 0, 0));
        let mut lease = d.try_acquire(&demand, now).unwrap();
        lease.start_call();
        lease.settle(&crate::wire::openai::Usage::new(50, 300));
        drop(lease);
        let s = d.status(now).capacity;
        assert_eq!((s.in_flight, s.rpm_used, s.tpm_used), (0, 1, 350));
        // What calls without a bound reserve now follows what this deployment generates.
        assert_eq!(d.observed_output(), 300);
        let open = Demand {
            max_output: None,
            ..demand
        };
        assert_eq!(d.reservation(&open), 350);
    }

    #[test]
    fn a_lease_lost_in_the_channel_of_a_waiter_that_left_comes_back() {
        // The bug of issue 14: capacity sent to a job that is going away.
        let d = deployment("d", 1);
        let (tx, rx) = tokio::sync::oneshot::channel::<Lease>();
        let lease = d.try_acquire(&DEMAND, Instant::now()).unwrap();
        tx.send(lease).unwrap();
        assert_eq!(d.status(Instant::now()).capacity.in_flight, 1);
        drop(rx);
        let s = d.status(Instant::now()).capacity;
        assert_eq!((s.in_flight, s.rpm_used, s.tpm_used), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_job_that_panics_gives_its_lease_back() {
        let d = deployment("d", 1);
        let job = async {
            let mut lease = d.try_acquire(&DEMAND, Instant::now()).unwrap();
            lease.start_call();
            tokio::task::yield_now().await;
            panic!("the job panics while it holds capacity");
        };
        assert!(AssertUnwindSafe(job).catch_unwind().await.is_err());
        let s = d.status(Instant::now()).capacity;
        assert_eq!(
            (s.in_flight, s.rpm_used),
            (0, 1),
            "the call was made: it counts"
        );
        assert!(d.try_acquire(&DEMAND, Instant::now()).is_some());
    }
}
