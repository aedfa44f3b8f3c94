//! The gate: which jobs a worker takes. It holds the bound on jobs in flight
//! (`max_in_flight`; past it a job gets a 503 at once, so the worker never builds an
//! unbounded queue), the worker's phase (serving, draining, leaving), the signal that cuts off
//! the jobs still running when the shutdown grace period ends, and the drain's counts.
//!
//! Every endpoint reader admits jobs through the gate without a message to anyone: a
//! [`Ticket`] is an atomic increment, and dropping it (when the job's task ends, whatever the
//! way) gives the slot back.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{telemetry, wire::ApiError};

/// Where the worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Taking jobs.
    Serving = 0,
    /// Relaying new jobs to the other workers (or, when none is left, still taking them),
    /// finishing those in flight.
    Draining = 1,
    /// Leaving the queue group: relaying everything that still arrives.
    Leaving = 2,
}

/// The admission state of one worker.
pub struct Gate {
    max_in_flight: usize,
    in_flight: AtomicUsize,
    idle: Notify,
    phase: AtomicU8,
    /// True during a drain when no other worker serves the subjects: jobs are run here.
    alone: AtomicBool,
    cutoff: CancellationToken,
    next_job: AtomicU64,
    /// Jobs admitted since the start (the idle self-check sees whether one came meanwhile).
    admitted: AtomicU64,
    /// Jobs admitted since the drain began.
    jobs_in_drain: AtomicUsize,
    relayed: AtomicUsize,
    cut_off: AtomicUsize,
    /// The connection that relays what arrives while leaving (else the worker's own).
    pub relay: ArcSwapOption<async_nats::Client>,
    gauge: metrics::Gauge,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("max_in_flight", &self.max_in_flight)
            .field("in_flight", &self.in_flight())
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

/// A job's place in the gate; the place frees up when the ticket is dropped.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.gauge.decrement(1.0);
        if self.gate.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gate.idle.notify_waiters();
        }
    }
}

impl Gate {
    /// A gate for at most `max_in_flight` jobs at once.
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            phase: AtomicU8::new(Phase::Serving as u8),
            alone: AtomicBool::new(false),
            cutoff: CancellationToken::new(),
            next_job: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            jobs_in_drain: AtomicUsize::new(0),
            relayed: AtomicUsize::new(0),
            cut_off: AtomicUsize::new(0),
            relay: ArcSwapOption::empty(),
            gauge: metrics::gauge!(telemetry::IN_FLIGHT),
        }
    }

    /// A place for one more job, or `None` at the bound.
    pub fn enter(self: &Arc<Self>) -> Option<Ticket> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.admitted.fetch_add(1, Ordering::SeqCst);
        self.gauge.increment(1.0);
        if self.phase() != Phase::Serving {
            self.jobs_in_drain.fetch_add(1, Ordering::Relaxed);
        }
        Some(Ticket { gate: self.clone() })
    }

    /// The bound.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The 503 of a job refused because the worker runs its limit of jobs (counted): over
    /// NATS and in process alike.
    pub(crate) fn busy(&self) -> ApiError {
        metrics::counter!(telemetry::REJECTED).increment(1);
        ApiError::unavailable(format!(
            "this worker is running its limit of {} jobs; retry shortly",
            self.max_in_flight
        ))
        .with_code("worker_busy")
    }

    /// Jobs running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Jobs admitted since the gate opened.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::SeqCst)
    }

    /// The next job's number (1, 2, 3, ...).
    pub fn next_job(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Serving,
            1 => Phase::Draining,
            _ => Phase::Leaving,
        }
    }

    /// Moves to `phase`. Entering the drain counts the jobs in flight as jobs of the drain.
    pub fn set_phase(&self, phase: Phase) {
        let old = self.phase.swap(phase as u8, Ordering::AcqRel);
        if old == Phase::Serving as u8 && phase != Phase::Serving {
            self.jobs_in_drain
                .fetch_add(self.in_flight(), Ordering::Relaxed);
        }
    }

    /// During a drain: whether this worker is the last one serving (it then keeps taking jobs).
    pub fn set_alone(&self, alone: bool) {
        self.alone.store(alone, Ordering::Release);
    }

    /// True when no other worker serves the subjects.
    pub fn alone(&self) -> bool {
        self.alone.load(Ordering::Acquire)
    }

    /// Waits until no job runs.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The signal every running job watches: once cancelled, each answers a 503 and ends.
    pub fn cutoff(&self) -> &CancellationToken {
        &self.cutoff
    }

    /// A job answered because of the cut-off.
    pub fn count_cut_off(&self) {
        self.cut_off.fetch_add(1, Ordering::Relaxed);
    }

    /// A job relayed to the other workers.
    pub fn count_relayed(&self) {
        self.relayed.fetch_add(1, Ordering::Relaxed);
    }

    /// The drain's counts so far.
    pub fn counts(&self) -> DrainCounts {
        DrainCounts {
            jobs: self.jobs_in_drain.load(Ordering::Relaxed),
            cut_off: self.cut_off.load(Ordering::Relaxed),
            relayed: self.relayed.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainCounts {
    /// Jobs that ran during the drain: those in flight when it began, and those admitted after.
    pub jobs: usize,
    /// Of those, the jobs still running at the cut-off, answered with a 503.
    pub cut_off: usize,
    /// Jobs and requests that arrived during the drain and were relayed to the other workers.
    pub relayed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bound_holds_and_tickets_give_places_back() {
        let gate = Arc::new(Gate::new(2));
        let a = gate.enter().unwrap();
        let b = gate.enter().unwrap();
        assert!(gate.enter().is_none());
        assert_eq!(gate.in_flight(), 2);
        drop(a);
        let c = gate.enter().unwrap();
        drop(b);
        drop(c);
        assert_eq!(gate.in_flight(), 0);
        gate.idle().await;
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_ticket() {
        let gate = Arc::new(Gate::new(4));
        let t = gate.enter().unwrap();
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(t);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("idle once the last ticket is gone")
            .unwrap();
    }

    #[test]
    fn the_drain_counts_jobs_in_flight_and_after() {
        let gate = Arc::new(Gate::new(4));
        let _a = gate.enter().unwrap();
        gate.set_phase(Phase::Draining);
        let _b = gate.enter().unwrap();
        assert_eq!(gate.counts().jobs, 2);
    }
}
