//! Ingress: where NATS messages become jobs. It registers the worker with the NATS services
//! framework (`$SRV.PING|INFO|STATS` answer for `llmbus`), subscribes to the request subjects
//! in the queue group, and starts one request actor per completion job — as long as fewer
//! than `max_in_flight` jobs are running. Past that bound a job gets a 503 at once: the
//! worker never builds an unbounded queue.
//!
//! It supervises the request actors: when one fails (a panic), the job still gets an answer,
//! a 500, and no other job notices.
//!
//! It also owns the worker's way out, without losing a job:
//! 1. [`IngressMsg::Drain`]: the worker stops taking jobs but stays subscribed. A job that
//!    still arrives is *relayed*: published again to the same subject with the same reply
//!    subject and headers (plus `Llm-Relayed: <hops>`), so the queue group hands it to another
//!    worker. After [`MAX_RELAYS`] hops (this worker is likely alone) it runs here instead.
//! 2. The jobs in flight finish; [`IngressMsg::CutOff`] answers those still running when the
//!    grace period ends with a 503 (an error message and the sentinel) and stops them.
//! 3. [`IngressMsg::Leave`] leaves the queue group. With a relay connection, the worker's
//!    connection is *drained* (`Client::drain`: the server confirms every unsubscription, and
//!    every job it routed here before that is still delivered), and what arrives meanwhile is
//!    relayed on the relay connection. Without one, the endpoints unsubscribe (async-nats's
//!    `Endpoint::stop`): a job routed here in the instant before the server processed the
//!    unsubscription (about one round trip) is dropped by the client library, unseen.
//!
//! Endpoints can only unsubscribe, not drain, in async-nats 0.51: that is why step 1 keeps the
//! subscriptions and relays instead, and why step 3 drains the whole connection.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap, Subject,
    service::{Request, Service, ServiceExt},
};
use bytes::Bytes;
use futures::StreamExt;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    WorkerContext,
    request::{Job, JobKind, RequestActor},
    router::RouterMsg,
};
use crate::{
    health::{Readiness, State},
    telemetry,
    wire::{ApiError, headers},
};

/// The name the worker registers under with the NATS services framework.
pub const SERVICE_NAME: &str = "llmbus";

/// How long leaving the queue group may take (reading the endpoint buffers, then a round trip).
const LEAVE_PATIENCE: Duration = Duration::from_secs(10);

/// The header counting how many times draining workers relayed a job.
pub const RELAYED: &str = "Llm-Relayed";

/// Relays after which a draining worker runs a job itself.
pub const MAX_RELAYS: u32 = 8;

/// Ingress's arguments.
pub struct IngressArgs {
    /// The worker's shared context.
    pub ctx: Arc<WorkerContext>,
    /// The queue group the workers share.
    pub queue_group: String,
    /// Jobs this worker runs at once.
    pub max_in_flight: usize,
}

/// Messages ingress takes.
pub enum IngressMsg {
    /// A completion job arrived.
    Completion(Request, Instant),
    /// An embeddings job arrived.
    Embedding(Request, Instant),
    /// A `llm.models` request arrived.
    Models(Request),
    /// A `llm.deployments` request arrived.
    Deployments(Request),
    /// Stop taking jobs: from now on new jobs are relayed to the other workers. Replies at once
    /// with the jobs in flight.
    Drain(RpcReplyPort<Draining>),
    /// Answer every job still running with a 503 and stop it; replies with how many.
    CutOff(RpcReplyPort<usize>),
    /// Leave the queue group: drain the connection and relay on the given connection, or
    /// without one unsubscribe the endpoints. Replies with the drain's counts once the server
    /// routes nothing more to this worker.
    Leave(Option<async_nats::Client>, RpcReplyPort<DrainCounts>),
    /// The endpoints' subscriptions have ended (sent by ingress to itself).
    Left(RpcReplyPort<DrainCounts>),
}

/// What [`IngressMsg::Drain`] answers: the jobs in flight, as they change.
pub struct Draining {
    /// The number of jobs running; it reaches 0 when the last one has answered.
    pub in_flight: watch::Receiver<usize>,
}

/// What [`IngressMsg::CutOff`] answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainCounts {
    /// Jobs that ran during the drain: those in flight when it began, and those already
    /// delivered to this worker that it admitted while leaving the queue group.
    pub jobs: usize,
    /// Of those, the jobs still running at the cut-off, answered with a 503.
    pub cut_off: usize,
    /// Jobs and requests that arrived during the drain and were relayed to the other workers.
    pub relayed: usize,
}

/// Where ingress is in the worker's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking jobs.
    Serving,
    /// Relaying new jobs, finishing those in flight.
    Draining,
    /// Leaving the queue group: relaying everything that still arrives.
    Leaving,
}

/// The ingress actor.
pub struct IngressActor;

struct Running {
    id: String,
    reply: Option<Subject>,
    done: Arc<AtomicBool>,
    actor: ActorCell,
}

/// Ingress's state.
pub struct IngressState {
    ctx: Arc<WorkerContext>,
    service: Option<Service>,
    readers: Vec<JoinHandle<()>>,
    /// Set to true to make the readers unsubscribe their endpoints.
    leave: watch::Sender<bool>,
    max_in_flight: usize,
    running: HashMap<ActorId, Running>,
    /// `running.len()`, for the drain to wait on and for `$SRV.STATS`.
    in_flight: watch::Sender<usize>,
    readiness: Readiness,
    phase: Phase,
    /// The connection that relays what arrives while leaving (else the worker's own).
    relay: Option<async_nats::Client>,
    /// The drain's counts so far.
    counts: DrainCounts,
    next_job: u64,
    worker_id: String,
}

impl Actor for IngressActor {
    type Msg = IngressMsg;
    type State = IngressState;
    type Arguments = IngressArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: IngressArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx = args.ctx;
        let subjects = &ctx.subjects;
        let readiness = Readiness::new();
        let in_flight = watch::Sender::new(0usize);
        let stats = {
            let readiness = readiness.clone();
            let in_flight = in_flight.subscribe();
            // `$SRV.STATS` carries the live state (`$SRV.INFO` metadata is fixed at start).
            move |_endpoint: String, _stats: async_nats::service::endpoint::Stats| {
                serde_json::json!({
                    "state": readiness.state().as_str(),
                    "in_flight": *in_flight.borrow(),
                })
            }
        };
        let service = ctx
            .client
            .service_builder()
            .description("llmbus: an OpenAI-shaped LLM gateway on NATS")
            .stats_handler(stats)
            .metadata(HashMap::from([
                ("subject_prefix".to_string(), subjects.prefix().to_string()),
                ("queue_group".to_string(), args.queue_group.clone()),
            ]))
            .queue_group(&args.queue_group)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| format!("registering the NATS service: {e}"))?;
        let worker_id = service.info().await.id;
        let endpoint = |name: &'static str, subject: String| {
            let service = &service;
            async move {
                service
                    .endpoint_builder()
                    .name(name)
                    .add(subject)
                    .await
                    .map_err(|e| format!("subscribing to {name}: {e}"))
            }
        };
        let completion = endpoint("completion", subjects.completion()).await?;
        let embedding = endpoint("embedding", subjects.embedding()).await?;
        let models = endpoint("models", subjects.models()).await?;
        let deployments = endpoint("deployments", subjects.deployments()).await?;
        let (leave, _) = watch::channel(false);
        let readers = vec![
            read(completion, myself.clone(), leave.subscribe(), |r| {
                IngressMsg::Completion(r, Instant::now())
            }),
            read(embedding, myself.clone(), leave.subscribe(), |r| {
                IngressMsg::Embedding(r, Instant::now())
            }),
            read(
                models,
                myself.clone(),
                leave.subscribe(),
                IngressMsg::Models,
            ),
            read(
                deployments,
                myself.clone(),
                leave.subscribe(),
                IngressMsg::Deployments,
            ),
        ];
        // Make sure the server has our subscriptions before anyone is told we serve (a flush
        // only writes them to the socket).
        tokio::time::timeout(LEAVE_PATIENCE, round_trip(&ctx.client))
            .await
            .map_err(|_| "the NATS server did not confirm the subscriptions".to_string())??;
        readiness.set(State::Serving);
        tracing::info!(worker_id = %worker_id, subject = %subjects.completion(), queue_group = %args.queue_group, "worker is serving");
        Ok(IngressState {
            ctx,
            service: Some(service),
            readers,
            leave,
            max_in_flight: args.max_in_flight,
            running: HashMap::new(),
            in_flight,
            readiness,
            phase: Phase::Serving,
            relay: None,
            counts: DrainCounts::default(),
            next_job: 0,
            worker_id,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.readiness.set(State::Stopped);
        for reader in state.readers.drain(..) {
            reader.abort();
        }
        if let Some(service) = state.service.take() {
            let _ = service.stop().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IngressMsg::Completion(request, received) => {
                state
                    .take(&myself, JobKind::Completion, request, received)
                    .await;
            }
            IngressMsg::Embedding(request, received) => {
                state
                    .take(&myself, JobKind::Embedding, request, received)
                    .await;
            }
            IngressMsg::Models(request) | IngressMsg::Deployments(request)
                if state.phase == Phase::Leaving =>
            {
                state.relay(request, 0).await;
            }
            IngressMsg::Models(request) => {
                let router = state.ctx.router.clone();
                tokio::spawn(async move {
                    match ractor::call!(router, RouterMsg::Models) {
                        Ok(list) => respond_json(&request, 200, &list).await,
                        Err(_) => {
                            respond_error(&request, &ApiError::internal("router unavailable")).await
                        }
                    }
                });
            }
            IngressMsg::Deployments(request) => {
                let router = state.ctx.router.clone();
                tokio::spawn(async move {
                    match ractor::call!(router, RouterMsg::Deployments) {
                        Ok(list) => respond_json(&request, 200, &list).await,
                        Err(_) => {
                            respond_error(&request, &ApiError::internal("router unavailable")).await
                        }
                    }
                });
            }
            IngressMsg::Drain(reply) => {
                state.drain();
                let _ = reply.send(Draining {
                    in_flight: state.in_flight.subscribe(),
                });
            }
            IngressMsg::CutOff(reply) => {
                let cut_off = state.cut_off().await;
                let _ = reply.send(cut_off);
            }
            IngressMsg::Leave(relay, reply) => state.leave(&myself, relay, reply).await,
            IngressMsg::Left(reply) => {
                if let Some(relay) = &state.relay {
                    match tokio::time::timeout(LEAVE_PATIENCE, relay.flush()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "flushing the relayed jobs"),
                        Err(_) => tracing::warn!("flushing the relayed jobs timed out"),
                    }
                }
                tracing::info!(
                    relayed = state.counts.relayed,
                    "left the queue group: new jobs go to the other workers"
                );
                let _ = reply.send(state.counts);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The default would stop ingress when a request actor ends: count it out instead.
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.running.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(job) = state.running.remove(&cell.get_id()) else {
                    return Ok(());
                };
                tracing::error!(error = %err, "a request actor failed");
                if !job.done.swap(true, Ordering::AcqRel)
                    && let Some(reply) = job.reply
                {
                    answer_failed_job(&state.ctx.client, reply, Some(&job.id)).await;
                }
            }
            _ => {}
        }
        state.counted();
        Ok(())
    }
}

impl IngressState {
    /// A job arrived: run it, or relay it while draining.
    async fn take(
        &mut self,
        myself: &ActorRef<IngressMsg>,
        kind: JobKind,
        request: Request,
        received: Instant,
    ) {
        match self.phase {
            Phase::Serving => self.admit(myself, kind, request, received).await,
            Phase::Draining => {
                let hops = relays(&request);
                if hops < MAX_RELAYS {
                    self.relay(request, hops).await;
                } else {
                    self.admit(myself, kind, request, received).await;
                }
            }
            Phase::Leaving => {
                let hops = relays(&request);
                self.relay(request, hops).await;
            }
        }
    }

    /// Publishes `request` again on its subject, with its reply subject and headers, for
    /// another worker of the queue group.
    async fn relay(&mut self, request: Request, hops: u32) {
        let client = self.relay.as_ref().unwrap_or(&self.ctx.client);
        let message = request.message;
        let mut h = message.headers.unwrap_or_default();
        h.insert(RELAYED, (hops + 1).to_string().as_str());
        let sent = match message.reply {
            Some(reply) => {
                client
                    .publish_with_reply_and_headers(message.subject, reply, h, message.payload)
                    .await
            }
            None => {
                client
                    .publish_with_headers(message.subject, h, message.payload)
                    .await
            }
        };
        match sent {
            Ok(()) => self.counts.relayed += 1,
            Err(e) => tracing::warn!(error = %e, "relaying a job to the other workers failed"),
        }
    }

    async fn admit(
        &mut self,
        myself: &ActorRef<IngressMsg>,
        kind: JobKind,
        request: Request,
        received: Instant,
    ) {
        if self.running.len() >= self.max_in_flight {
            metrics::counter!(telemetry::REJECTED).increment(1);
            let e = ApiError::unavailable(format!(
                "this worker is running its limit of {} jobs; retry shortly",
                self.max_in_flight
            ))
            .with_code("worker_busy");
            tokio::spawn(async move { respond_error(&request, &e).await });
            return;
        }
        self.next_job += 1;
        let id = format!("{}-{}", self.worker_id, self.next_job);
        let done = Arc::new(AtomicBool::new(false));
        let reply = request.message.reply.clone();
        let job = Job {
            kind,
            request,
            received,
            id: id.clone(),
            done: done.clone(),
        };
        match Actor::spawn_linked(
            None,
            RequestActor,
            (job, self.ctx.clone()),
            myself.get_cell(),
        )
        .await
        {
            Ok((actor, _)) => {
                if self.phase != Phase::Serving {
                    self.counts.jobs += 1;
                }
                self.running.insert(
                    actor.get_id(),
                    Running {
                        id,
                        reply,
                        done,
                        actor: actor.get_cell(),
                    },
                );
                self.counted();
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start a request actor");
                if let Some(reply) = reply {
                    answer_failed_job(&self.ctx.client, reply, Some(&id)).await;
                }
            }
        }
    }

    /// Publishes the number of running jobs (gauge, drain watchers, `$SRV.STATS`).
    fn counted(&self) {
        metrics::gauge!(telemetry::IN_FLIGHT).set(self.running.len() as f64);
        self.in_flight.send_replace(self.running.len());
    }

    /// Begins the drain: new jobs are relayed from now on.
    fn drain(&mut self) {
        if self.phase != Phase::Serving {
            return;
        }
        self.phase = Phase::Draining;
        self.readiness.set(State::Draining);
        self.counts.jobs = self.running.len();
        tracing::info!(
            jobs_in_flight = self.running.len(),
            "draining: new jobs go to the other workers; finishing the jobs in flight"
        );
    }

    /// Leaves the queue group. With `relay`, the worker's connection drains (lossless: every
    /// job the server routed here before it processed the unsubscriptions is delivered, and
    /// relayed); without, the endpoints unsubscribe and a round trip makes sure the server has
    /// processed that. `Left` answers `reply` once the readers have forwarded everything.
    async fn leave(
        &mut self,
        myself: &ActorRef<IngressMsg>,
        relay: Option<async_nats::Client>,
        reply: RpcReplyPort<DrainCounts>,
    ) {
        if self.phase == Phase::Serving {
            self.drain();
        }
        if self.phase == Phase::Leaving {
            let _ = reply.send(self.counts);
            return;
        }
        self.phase = Phase::Leaving;
        let drained = match relay {
            Some(relay) => {
                self.relay = Some(relay);
                match self.ctx.client.drain().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "draining the NATS connection; unsubscribing");
                        self.relay = None;
                        false
                    }
                }
            }
            None => false,
        };
        if !drained {
            self.leave.send_replace(true);
        }
        let readers = std::mem::take(&mut self.readers);
        let client = (!drained).then(|| self.ctx.client.clone());
        let myself = myself.clone();
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + LEAVE_PATIENCE;
            for mut reader in readers {
                if tokio::time::timeout_at(until, &mut reader).await.is_err() {
                    tracing::warn!("an endpoint reader did not end; dropping it");
                    reader.abort();
                }
            }
            // Every UNSUB went out before this round trip's message: once it is back, the
            // server has processed them and routes nothing more here.
            if let Some(client) = client {
                match tokio::time::timeout_at(until, round_trip(&client)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "confirming the unsubscriptions"),
                    Err(_) => tracing::warn!("confirming the unsubscriptions timed out"),
                }
            }
            // Queued behind every request the readers forwarded, so they are all relayed first.
            let _ = myself.cast(IngressMsg::Left(reply));
        });
    }

    /// Answers every job still running with a 503 (and a sentinel) and stops its actor.
    /// Returns how many jobs were answered so.
    async fn cut_off(&mut self) -> usize {
        let mut cut = 0;
        for (_, job) in self.running.drain() {
            if !job.done.swap(true, Ordering::AcqRel) {
                cut += 1;
                tracing::warn!(job_id = %job.id, "the shutdown grace period ran out: answering 503");
                if let Some(reply) = job.reply {
                    let e = ApiError::unavailable(
                        "the worker stopped before this job finished (its shutdown grace period \
                         ran out); retry it",
                    )
                    .with_code("worker_shutting_down");
                    answer_job(&self.ctx.client, reply, &e, Some(&job.id)).await;
                }
            }
            job.actor.stop(Some("cut off at shutdown".into()));
        }
        if let Err(e) = self.ctx.client.flush().await {
            tracing::debug!(error = %e, "flushing the cut-off answers");
        }
        self.counts.cut_off += cut;
        self.counted();
        cut
    }
}

/// A message to a fresh inbox of our own and back: once it arrives, the server has processed
/// everything this connection sent before it (`Client::flush` only writes to the socket).
async fn round_trip(client: &async_nats::Client) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("round trip to the NATS server: {e}"))?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(|e| format!("round trip to the NATS server: {e}"))?;
    sub.next()
        .await
        .map(|_| ())
        .ok_or_else(|| "round trip to the NATS server: the subscription ended".to_string())
}

/// How many times draining workers relayed `request` already.
fn relays(request: &Request) -> u32 {
    request
        .message
        .headers
        .as_ref()
        .and_then(|h| h.get(RELAYED))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// Forwards every request of an endpoint to ingress. When `leave` turns true it unsubscribes
/// the endpoint, forwards what the subscription's buffer still holds, and ends.
fn read(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    ingress: ActorRef<IngressMsg>,
    mut leave: watch::Receiver<bool>,
    wrap: impl Fn(Request) -> IngressMsg + Send + 'static,
) -> JoinHandle<()> {
    // A stack temporary, moved out at once: boxing it would cost an allocation per job.
    #[allow(clippy::large_enum_variant)]
    enum Step {
        Leave,
        Next(Option<Request>),
    }
    tokio::spawn(async move {
        let mut left = false;
        loop {
            let step = tokio::select! {
                biased;
                _ = leave.wait_for(|l| *l), if !left => Step::Leave,
                next = endpoint.next() => Step::Next(next),
            };
            match step {
                Step::Leave => {
                    left = true;
                    // Unsubscribes and closes the buffer; what it holds is still read below.
                    if let Err(e) = endpoint.stop().await {
                        tracing::warn!(error = %e, "unsubscribing an endpoint");
                        break;
                    }
                }
                Step::Next(Some(request)) => {
                    if ingress.cast(wrap(request)).is_err() {
                        break;
                    }
                }
                Step::Next(None) => break,
            }
        }
    })
}

/// A job whose actor died before answering: a 500 error body, then a sentinel (so a streaming
/// requester stops reading too).
async fn answer_failed_job(client: &async_nats::Client, reply: Subject, job_id: Option<&str>) {
    let e = ApiError::internal("internal error while running the job; it was not completed");
    answer_job(client, reply, &e, job_id).await;
}

/// Answers a job on ingress's behalf: the error body, then a sentinel (a non-streaming
/// requester keeps the first message; a streaming one reads to the sentinel).
async fn answer_job(
    client: &async_nats::Client,
    reply: Subject,
    e: &ApiError,
    job_id: Option<&str>,
) {
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, e.status.to_string().as_str());
    if let Some(id) = job_id {
        h.insert(headers::JOB_ID, id);
    }
    let _ = client
        .publish_with_headers(reply.clone(), h.clone(), e.to_json())
        .await;
    let _ = client.publish_with_headers(reply, h, Bytes::new()).await;
}

async fn respond_json<T: serde::Serialize>(request: &Request, status: u16, body: &T) {
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, status.to_string().as_str());
    match serde_json::to_vec(body) {
        Ok(payload) => {
            let _ = request.respond_with_headers(Ok(payload.into()), h).await;
        }
        Err(e) => respond_error(request, &ApiError::internal(e.to_string())).await,
    }
}

async fn respond_error(request: &Request, e: &ApiError) {
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, e.status.to_string().as_str());
    let _ = request.respond_with_headers(Ok(e.to_json()), h).await;
}
