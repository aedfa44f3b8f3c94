//! The NATS side of the HTTP front: [`Backend`] turns an HTTP request into the same NATS job any
//! client could send, and hands back the job's replies as contract messages ([`Reply`]: status
//! from `Llm-Status`, headers, body).
//!
//! Every job gets its own reply subject under one wildcard subscription of the front
//! (`<inbox>.<n>`), so a stream and a single reply take the same path, and the front always
//! knows the reply subject it must name to cancel a job. A [`Job`] dropped before its last
//! message (the HTTP client went away, or the front gave up waiting) publishes that subject to
//! `<prefix>.cancel`, with the job's own `Authorization` header (a worker with a master key
//! honours a cancel only with the job's key), where the worker running it stops the upstream
//! call.
//!
//! Every job asks its worker for an ack (`Llm-Ack`); when the worker that acknowledged a job
//! dies before anything of the job reached the caller, the job is sent again ([`super::resend`]).
//!
//! A job's messages wait for its HTTP client in a bounded buffer (`llmbus.http_stream_buffer`
//! messages). A client that stops reading fills it; the next message cancels the job at once
//! (its capacity comes back) and the client, should it read again, gets the messages held and
//! then a `stream_buffer_full` error.
//!
//! The in-worker front runs a `Backend` on the worker's own NATS connection; `llmbus front`
//! runs one on a connection of its own. The path is the same, so is the answer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::{HeaderMap, StatusCode, client::PublishErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use tokio::{sync::mpsc, time::Instant};

use super::resend::{self, Event, Route, Routes, lock};
use crate::{
    client::{ClientError, LlmClient, Reply},
    runtime::{
        job::{self, Preparsed, stream_cut},
        local::{LocalJob, LocalJobs, Refused},
    },
    wire::{ApiError, Subjects, headers},
};

/// The kind of job an HTTP route sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// `<prefix>.completion`.
    Completion,
    /// `<prefix>.embedding`.
    Embedding,
}

impl JobKind {
    /// Its row in the job path's table of kinds.
    pub fn row(self) -> &'static job::JobKind {
        match self {
            JobKind::Completion => job::COMPLETION,
            JobKind::Embedding => job::EMBEDDING,
        }
    }
}

/// The NATS side of one HTTP front. Cheap to share (`Arc`).
pub struct Backend {
    client: LlmClient,
    /// Inside a worker: its jobs, for the groups it serves.
    local: Option<LocalJobs>,
    out: Arc<Outbox>,
    dispatcher: tokio::task::JoinHandle<()>,
    /// Pings the workers holding jobs ([`resend::watch`]).
    watch: tokio::task::JoinHandle<()>,
}

/// What a job needs to be sent (again) and cancelled.
struct Outbox {
    nats: async_nats::Client,
    /// `<inbox prefix>.` — a job's reply subject is this plus its number.
    inbox: String,
    jobs: Routes,
    next: AtomicU64,
    cancel: String,
    /// Messages held per job for a slow reader (`llmbus.http_stream_buffer`).
    buffer: AtomicUsize,
}

impl Outbox {
    /// A new number and reply subject, routed to a new bounded channel (one place more than
    /// the buffer, kept for the overflow notice).
    fn route(
        &self,
        authorization: Option<async_nats::HeaderValue>,
    ) -> (u64, String, mpsc::Receiver<Event>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.buffer.load(Ordering::Relaxed) + 1);
        let route = Route {
            tx,
            holder: None,
            authorization,
        };
        lock(&self.jobs).insert(id, route);
        (id, format!("{}{id}", self.inbox), rx)
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("prefix", &self.client.subjects().prefix())
            .field("inbox", &self.out.inbox)
            .finish_non_exhaustive()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.dispatcher.abort();
        self.watch.abort();
        lock(&self.out.jobs).clear();
    }
}

impl Backend {
    /// A backend on `nats` for the subjects under `prefix`: subscribes to its reply subjects.
    pub async fn new(nats: async_nats::Client, prefix: &str) -> Result<Self, ClientError> {
        let inbox = nats.new_inbox();
        let mut sub = nats
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))?;
        // The subscription is in place at the server before the first job goes out.
        nats.flush()
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))?;
        let jobs: Routes = Arc::default();
        let routes = jobs.clone();
        let (client, cancel) = (nats.clone(), Subjects::new(prefix).cancel());
        let dispatcher = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(id) = m
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                let ack = resend::ack_of(&m);
                let mut routes = lock(&routes);
                let Some(route) = routes.get_mut(&id) else {
                    continue;
                };
                if let Some(worker) = ack {
                    route.holder = Some(worker);
                } else if route.tx.capacity() > 1 {
                    // The last place is kept for the overflow notice.
                    let _ = route.tx.try_send(Event::Message(m));
                } else if let Some(route) = routes.remove(&id) {
                    drop(routes);
                    overflow(route, m, &client, &cancel);
                }
            }
            // The connection closed: every job waiting for a reply learns it now.
            lock(&routes).clear();
        });
        let watch = tokio::spawn(resend::watch(nats.clone(), Arc::downgrade(&jobs)));
        let client = LlmClient::new(nats.clone(), prefix);
        let cancel = client.subjects().cancel();
        Ok(Self {
            client,
            local: None,
            out: Arc::new(Outbox {
                nats,
                inbox: format!("{inbox}."),
                jobs,
                next: AtomicU64::new(1),
                cancel,
                buffer: AtomicUsize::new(super::DEFAULT_STREAM_BUFFER),
            }),
            dispatcher,
            watch,
        })
    }

    /// Holds up to `messages` per job for a slow reader (`llmbus.http_stream_buffer`).
    pub fn set_stream_buffer(&mut self, messages: usize) {
        self.out.buffer.store(messages.max(1), Ordering::Relaxed);
    }

    /// The subjects.
    pub fn subjects(&self) -> &Subjects {
        self.client.subjects()
    }

    /// The NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        self.client.nats()
    }

    /// The largest body the NATS server takes (its `max_payload`).
    pub fn max_payload(&self) -> usize {
        self.client.nats().server_info().max_payload
    }

    /// Runs the jobs for the groups `jobs` serves in process (the in-worker front): they skip
    /// NATS. The others still go over NATS.
    pub fn serve_locally(&mut self, jobs: LocalJobs) {
        self.local = Some(jobs);
    }

    /// True when jobs may run in process: the front runs inside a worker that takes jobs.
    pub fn runs_locally(&self) -> bool {
        self.local.as_ref().is_some_and(LocalJobs::open)
    }

    /// Starts a job: in process when this front runs inside a worker that serves the group
    /// `parsed` names (or when the body could not be parsed: the job path answers its error),
    /// else over NATS. Read its replies with [`Job::next`].
    pub async fn submit(
        &self,
        kind: JobKind,
        mut headers: HeaderMap,
        mut body: Bytes,
        parsed: Option<Preparsed>,
    ) -> Result<Job, ApiError> {
        if let Some(local) = &self.local {
            let here = match &parsed {
                Some(p) => local.serves(p.model()),
                None => local.open(),
            };
            if here {
                let buffer = self.out.buffer.load(Ordering::Relaxed);
                match local.submit(kind.row(), headers, body, parsed, buffer) {
                    Ok(job) => return Ok(Job(Inner::Local(job))),
                    Err(Refused::Busy(e)) => return Err(e),
                    // The worker began to drain meanwhile.
                    Err(Refused::Elsewhere(h, b)) => (headers, body) = (h, b),
                }
            }
        }
        self.publish(kind, headers, body)
            .await
            .map(|j| Job(Inner::Nats(j)))
    }

    /// Publishes a job: `body` unchanged as the payload, `headers` as the NATS headers (plus
    /// `Llm-Ack`).
    async fn publish(
        &self,
        kind: JobKind,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<NatsJob, ApiError> {
        let subject = kind.row().subject(self.subjects());
        headers.insert(headers::ACK, "1");
        // The worker's deadline, which a resend must keep.
        let deadline = headers
            .get(headers::TIMEOUT_MS)
            .and_then(|v| v.as_str().trim().parse::<u64>().ok())
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let authorization = headers.get(headers::AUTHORIZATION).cloned();
        let (id, reply, rx) = self.out.route(authorization.clone());
        let mut job = NatsJob {
            id,
            reply,
            subject,
            headers,
            body,
            deadline,
            resends: 0,
            rx,
            out: self.out.clone(),
            authorization,
            finished: false,
            broken: false,
            started: false,
            next_seq: 1,
        };
        if let Err(e) = job.publish().await {
            // Nothing went out: nothing to cancel.
            job.finished = true;
            return Err(match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => ApiError::too_large(format!(
                    "the request is larger than the NATS server's max_payload of {} bytes",
                    self.max_payload()
                )),
                _ => ApiError::unavailable(format!("the HTTP front cannot reach NATS: {e}"))
                    .with_code("nats_unavailable"),
            });
        }
        Ok(job)
    }

    /// One request/reply on `subject` (`llm.models`, ...), through the shared request muxer.
    pub async fn request(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, ApiError> {
        self.client
            .request(subject, headers, body, timeout)
            .await
            .map_err(client_error)
    }
}

/// What went wrong talking to NATS, as the error an HTTP client gets.
pub fn client_error(e: ClientError) -> ApiError {
    match e {
        ClientError::NoResponders(subject) => no_worker(&subject),
        ClientError::Timeout(t) => ApiError::deadline(format!(
            "no llmbus worker answered within {} ms",
            t.as_millis()
        )),
        ClientError::TooLarge { max, .. } => ApiError::too_large(format!(
            "the request is larger than the NATS server's max_payload of {max} bytes"
        )),
        other => ApiError::unavailable(format!("the HTTP front cannot reach NATS: {other}"))
            .with_code("nats_unavailable"),
    }
}

/// 503: no worker subscribes to `subject`.
fn no_worker(subject: &str) -> ApiError {
    ApiError::unavailable(format!(
        "no llmbus worker serves {subject}: is a worker running on this NATS?"
    ))
    .with_code("no_worker")
}

/// One job in flight: its replies, in order. Dropped before its last message, it cancels the
/// job.
#[derive(Debug)]
pub struct Job(Inner);

#[derive(Debug)]
enum Inner {
    /// Over NATS.
    Nats(NatsJob),
    /// In process: dropping it cancels the job.
    Local(LocalJob),
}

impl Job {
    /// The next message of the job (see [`NatsJob::next`] for one over NATS). `None` once the
    /// backend (or the worker) stopped.
    pub async fn next(&mut self) -> Option<Reply> {
        match &mut self.0 {
            Inner::Nats(job) => job.next().await,
            Inner::Local(job) => job.next().await,
        }
    }

    /// Marks the job answered: dropping it no longer cancels anything.
    pub fn finish(&mut self) {
        if let Inner::Nats(job) = &mut self.0 {
            job.finish();
        }
    }

    /// True when the job runs in process.
    pub fn is_local(&self) -> bool {
        matches!(self.0, Inner::Local(_))
    }
}

/// One job over NATS: its replies, in order. Dropped before its last message, it cancels the
/// job (publishes its reply subject to `<prefix>.cancel`).
struct NatsJob {
    /// Its number and reply subject now (a resend takes new ones).
    id: u64,
    reply: String,
    rx: mpsc::Receiver<Event>,
    /// What a resend publishes again.
    subject: String,
    headers: HeaderMap,
    body: Bytes,
    /// From `Llm-Timeout-Ms`: when the worker gives up on it.
    deadline: Option<Instant>,
    resends: u32,
    out: Arc<Outbox>,
    /// The job's `Authorization` header, which its cancel carries.
    authorization: Option<async_nats::HeaderValue>,
    finished: bool,
    /// A chunk was lost: the job can no longer be answered well, so it is cancelled.
    broken: bool,
    /// A message of the job went to the caller: it is never sent again.
    started: bool,
    next_seq: u64,
}

impl std::fmt::Debug for NatsJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsJob")
            .field("reply", &self.reply)
            .field("resends", &self.resends)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl NatsJob {
    /// The next message of the job. A NATS "no responders" status becomes a 503 error reply;
    /// a chunk whose `Llm-Seq` skips a number becomes a 502 error reply (a chunk was lost); the
    /// worker holding the job gone becomes a resend, or a 503 / 502 `worker_lost` error reply.
    /// `None` once the backend stopped.
    pub async fn next(&mut self) -> Option<Reply> {
        loop {
            match self.rx.recv().await? {
                Event::Message(m) => {
                    self.started = true;
                    return Some(self.reply_of(m));
                }
                Event::WorkerLost => {
                    if let Some(e) = self.resend().await {
                        return Some(error_reply(&e));
                    }
                }
            }
        }
    }

    fn reply_of(&mut self, m: async_nats::Message) -> Reply {
        if m.status == Some(StatusCode::NO_RESPONDERS) {
            return error_reply(&no_worker(&self.subject));
        }
        let headers = m.headers.unwrap_or_default();
        let status = headers
            .get(headers::STATUS)
            .and_then(|v| v.as_str().trim().parse().ok())
            .unwrap_or(200);
        if let Some(seq) = headers
            .get(headers::SEQ)
            .and_then(|v| v.as_str().parse::<u64>().ok())
        {
            if seq != self.next_seq {
                self.broken = true;
                let e = ApiError::bad_gateway(format!(
                    "stream chunk {} was lost between the worker and the HTTP front (got {seq})",
                    self.next_seq
                ))
                .with_code("chunk_lost");
                return error_reply(&e);
            }
            self.next_seq += 1;
        }
        Reply {
            status,
            headers,
            body: m.payload,
        }
    }

    /// The worker holding the job is gone. Sends the job again when nothing of it reached the
    /// caller, resends are left and so is time (`None`: wait for the new one's messages); else
    /// the error to answer.
    async fn resend(&mut self) -> Option<ApiError> {
        if self.started {
            resend::count("mid_stream");
            self.finished = true;
            return Some(
                ApiError::bad_gateway(
                    "the llmbus worker running this job stopped before the job ended",
                )
                .with_code("worker_lost"),
            );
        }
        let retimed = resend::retimed(&self.headers, self.deadline);
        let (true, Some(headers)) = (self.resends < resend::MAX_RESENDS, retimed) else {
            resend::count("gave_up");
            self.finished = true;
            return Some(
                ApiError::unavailable(format!(
                    "the llmbus worker running this job stopped before answering (the job was \
                     sent {} times)",
                    self.resends + 1
                ))
                .with_code("worker_lost"),
            );
        };
        // The old reply subject is cancelled, should its worker be alive after all.
        self.cancel_now();
        let (id, reply, rx) = self.out.route(self.authorization.clone());
        (self.id, self.reply, self.rx) = (id, reply, rx);
        self.headers = headers;
        self.resends += 1;
        if let Err(e) = self.publish().await {
            self.finished = true;
            return Some(
                ApiError::unavailable(format!("the HTTP front cannot reach NATS: {e}"))
                    .with_code("nats_unavailable"),
            );
        }
        resend::count("resent");
        tracing::info!(
            resends = self.resends,
            "sent a job again: its worker is gone"
        );
        None
    }

    /// Publishes the job under its current reply subject.
    async fn publish(&self) -> Result<(), async_nats::PublishError> {
        self.out
            .nats
            .publish_with_reply_and_headers(
                self.subject.clone(),
                self.reply.clone(),
                self.headers.clone(),
                self.body.clone(),
            )
            .await
    }

    /// Marks the job answered: dropping it no longer cancels anything (unless a chunk was
    /// lost, which leaves the job running for nothing).
    pub fn finish(&mut self) {
        self.finished = !self.broken;
    }

    /// Stops routing the current reply subject and cancels the job under it.
    fn cancel_now(&mut self) {
        lock(&self.out.jobs).remove(&self.id);
        self.publish_cancel();
    }

    /// Publishes the current reply subject to `<prefix>.cancel`, with the job's key.
    fn publish_cancel(&mut self) {
        let nats = self.out.nats.clone();
        let cancel = self.out.cancel.clone();
        let reply = Bytes::from(std::mem::take(&mut self.reply));
        let mut h = HeaderMap::new();
        if let Some(key) = self.authorization.clone() {
            h.insert(headers::AUTHORIZATION, key);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = nats.publish_with_headers(cancel, h, reply).await {
                    tracing::debug!(error = %e, "publishing a job's cancellation");
                }
            });
        }
    }
}

impl Drop for NatsJob {
    fn drop(&mut self) {
        // No route left: the backend cancelled the job already (its buffer overflowed), or
        // stopped.
        let routed = lock(&self.out.jobs).remove(&self.id).is_some();
        if self.finished || !routed {
            return;
        }
        self.publish_cancel();
    }
}

/// A job whose client stopped reading: its buffer is full and `m` is one message more. The job
/// is cancelled now, and the client, should it read again, finds a `stream_buffer_full` error
/// after the messages held.
fn overflow(route: Route, m: async_nats::Message, nats: &async_nats::Client, cancel: &str) {
    let e = stream_cut(route.tx.max_capacity() - 1);
    let notice = error_reply(&e);
    let _ = route.tx.try_send(Event::Message(async_nats::Message {
        subject: m.subject.clone(),
        reply: None,
        payload: notice.body,
        headers: Some(notice.headers),
        status: None,
        description: None,
        length: 0,
    }));
    let mut h = HeaderMap::new();
    if let Some(key) = route.authorization {
        h.insert(headers::AUTHORIZATION, key);
    }
    let (nats, cancel, reply) = (nats.clone(), cancel.to_owned(), m.subject.to_string());
    tokio::spawn(async move {
        if let Err(e) = nats.publish_with_headers(cancel, h, reply.into()).await {
            tracing::debug!(error = %e, "publishing a job's cancellation");
        }
    });
}

/// An error as a contract message: status and OpenAI error body.
pub fn error_reply(e: &ApiError) -> Reply {
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, e.status.to_string().as_str());
    Reply {
        status: e.status,
        headers: h,
        body: e.to_json(),
    }
}
