//! In-process jobs: the in-worker HTTP front's door into the job path. A request for a model
//! group this worker serves does not travel through NATS: it is admitted through the same
//! [`Gate`](super::gate::Gate) as a NATS job (`max_in_flight`, a 503 `worker_busy` when
//! full) and runs as the same job task ([`job::supervise`]), answering on a channel instead of
//! a reply subject (`job::reply`). Everything else (the key check, limits, deadline, retries,
//! fallbacks, cancel, usage and cost) is the job path's, written once for both.
//!
//! A job answered whole runs in the task that waits for its answer (the HTTP connection's),
//! not in a task of its own: handing it to another task, and its answer back, cost two wake-ups
//! of another thread (about 20 µs of the front's added p50, measured A/B in the README's
//! performance section). A stream runs in a task of
//! its own, since its reader writes each chunk out while the job reads the next one. Either
//! way, dropping the [`LocalJob`] before its answer is the job's cancel: a job run in the
//! reader's task is then finished in a task of its own, which finds its requester gone and
//! ends as a cancelled job does (its call dropped, its capacity back, its usage recorded).
//!
//! While the worker drains, and for groups it does not serve, the front sends its jobs over
//! NATS as before: there the drain relays them to the other workers, and a worker serving the
//! group takes them.

use std::{future::Future, pin::Pin, sync::Arc, time::Instant};

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
    /// it could); read its answer with [`LocalJob::next`]. A stream's messages wait for a slow
    /// reader in a buffer of `buffer` messages. Dropping the [`LocalJob`] cancels the job.
    pub fn submit(
        &self,
        kind: &'static JobKind,
        headers: HeaderMap,
        payload: Bytes,
        parsed: Option<Preparsed>,
        buffer: usize,
    ) -> Result<LocalJob, Refused> {
        let received = Instant::now();
        if !self.open() {
            return Err(Refused::Elsewhere(headers, payload));
        }
        let Some(ticket) = self.ctx.gate.enter() else {
            return Err(Refused::Busy(self.ctx.gate.busy()));
        };
        // A body that could not be parsed is answered whole (its 400).
        let stream = parsed.as_ref().is_some_and(Preparsed::stream);
        let (request, rx) = Request::local(headers, payload, if stream { buffer } else { 1 });
        let id = format!("{}-{}", self.ctx.worker_id, self.ctx.gate.next_job());
        let job = Job {
            kind,
            request,
            parsed,
            received,
            id,
        };
        metrics::counter!(telemetry::JOBS_IN_PROCESS).increment(1);
        let run = job::supervise(job, self.ctx.clone(), ticket);
        if stream {
            tokio::spawn(run);
            return Ok(LocalJob { rx, run: None });
        }
        Ok(LocalJob {
            rx,
            run: Some(Box::pin(run)),
        })
    }
}

/// A job running in process, as its reader holds it: its answer and, for a job answered
/// whole, the job itself, which runs as the reader awaits [`LocalJob::next`].
pub struct LocalJob {
    rx: mpsc::Receiver<Answer>,
    /// The job, run in the reader's task (a job answered whole) until it ends.
    run: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for LocalJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJob")
            .field("in_reader_task", &self.run.is_some())
            .finish_non_exhaustive()
    }
}

impl LocalJob {
    /// The next message of the job's answer; `None` once the job ended without one more.
    pub async fn next(&mut self) -> Option<Answer> {
        if let Some(run) = &mut self.run {
            // The job answers before it ends, and what it does after its answer does not
            // wait on anything (its usage event and metrics).
            run.await;
            self.run = None;
        }
        self.rx.recv().await
    }
}

impl Drop for LocalJob {
    /// A job run in the reader's task and dropped before its end (its HTTP client went away,
    /// or the front gave up waiting) is finished in a task of its own: it finds its requester
    /// gone and ends as a cancelled job.
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            self.rx.close();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(run);
            }
        }
    }
}
