//! In-process jobs: the in-worker HTTP front's door into the job path. A request for a model
//! group this worker serves does not travel through NATS: it is admitted through the same
//! [`Gate`](super::gate::Gate) as a NATS job (`max_in_flight`, a 503 `worker_busy` when
//! full) and runs as the same job task ([`job::supervise`]), answering on a channel instead of
//! a reply subject (`job::reply`). Everything else (the key check, limits, deadline, retries,
//! fallbacks, cancel, usage and cost) is the job path's, written once for both.
//!
//! While the worker drains, and for groups it does not serve, the front sends its jobs over
//! NATS as before: there the drain relays them to the other workers, and a worker serving the
//! group takes them.

use std::{sync::Arc, time::Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    WorkerContext,
    gate::Phase,
    job::{self, Answer, Job, JobKind, Preparsed, Request},
};
use crate::{telemetry, wire::ApiError};

/// A worker's jobs, as the in-worker front reaches them. Cheap to clone.
#[derive(Clone)]
pub struct LocalJobs {
    ctx: Arc<WorkerContext>,
}

impl std::fmt::Debug for LocalJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJobs")
            .field("worker_id", &self.ctx.worker_id)
            .finish()
    }
}

/// Why a job was not taken in process.
#[derive(Debug)]
pub enum Refused {
    /// Not here: the worker drains. Send it over NATS (its headers and payload, back).
    Elsewhere(HeaderMap, Bytes),
    /// The worker runs its limit of jobs: the 503 to answer.
    Busy(ApiError),
}

impl LocalJobs {
    pub(crate) fn new(ctx: Arc<WorkerContext>) -> Self {
        Self { ctx }
    }

    /// True when a job for `model` runs here: the worker serves and its routing table has the
    /// group (by name, alias or wildcard).
    pub fn serves(&self, model: &str) -> bool {
        self.ctx.gate.phase() == Phase::Serving && self.ctx.table.load().serves(model)
    }

    /// True while the worker takes jobs (not draining).
    pub fn open(&self) -> bool {
        self.ctx.gate.phase() == Phase::Serving
    }

    /// Starts a job with these NATS `headers` and `payload` (and the body the front parsed, if
    /// it could); its answer comes on the returned channel, which holds `buffer` messages for a
    /// slow reader. Dropping the receiver cancels the job.
    pub fn submit(
        &self,
        kind: &'static JobKind,
        headers: HeaderMap,
        payload: Bytes,
        parsed: Option<Preparsed>,
        buffer: usize,
    ) -> Result<mpsc::Receiver<Answer>, Refused> {
        let received = Instant::now();
        if !self.open() {
            return Err(Refused::Elsewhere(headers, payload));
        }
        let Some(ticket) = self.ctx.gate.enter() else {
            return Err(Refused::Busy(self.ctx.gate.busy()));
        };
        let (request, rx) = Request::local(headers, payload, buffer);
        let id = format!("{}-{}", self.ctx.worker_id, self.ctx.gate.next_job());
        let job = Job {
            kind,
            request,
            parsed,
            received,
            id,
        };
        metrics::counter!(telemetry::JOBS_IN_PROCESS).increment(1);
        tokio::spawn(job::supervise(job, self.ctx.clone(), ticket));
        Ok(rx)
    }
}
