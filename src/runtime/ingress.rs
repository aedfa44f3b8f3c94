//! Ingress: where NATS messages become jobs. It registers the worker with the NATS services
//! framework (`$SRV.PING|INFO|STATS` answer for `llmbus`) and subscribes to the request
//! subjects in the queue group. One reader task per endpoint admits each job through the
//! [`super::gate::Gate`] and starts its task ([`super::job::supervise`]) — no mailbox sits between NATS and
//! the jobs. A job with no reply subject (nowhere to answer) is refused before any upstream
//! call; past `max_in_flight` a job gets a 503 at once. A job that asks for it (`Llm-Ack`, as
//! the HTTP front does) is acknowledged on admission with this worker's `$SRV` id, so its
//! requester can tell when the worker holding it dies. `llm.models` and `llm.deployments`
//! are answered from the routing table.
//!
//! The ingress actor owns the worker's way out, without losing a job:
//! 1. [`IngressMsg::Drain`]: the worker stops taking jobs but stays subscribed. A job that
//!    still arrives is *relayed*: published again to the same subject with the same reply
//!    subject and headers (plus `Llm-Relayed: <hops>`), so the queue group hands it to another
//!    worker. When no other worker serves the subjects (this is the last one), it keeps
//!    running the jobs itself through the grace period instead of relaying into the void.
//!    After [`MAX_RELAYS`] hops a job runs wherever it is.
//! 2. The jobs in flight finish; [`IngressMsg::CutOff`] signals those still running when the
//!    grace period ends: each answers a 503 (an error message and the sentinel) and stops.
//! 3. [`IngressMsg::Leave`] leaves the queue group. With a relay connection, the worker's
//!    connection is *drained* (`Client::drain`: the server confirms every unsubscription, and
//!    every job it routed here before that is still delivered), and what arrives meanwhile is
//!    relayed on the relay connection. Without one, the endpoints unsubscribe (async-nats's
//!    `Endpoint::stop`): a job routed here in the instant before the server processed the
//!    unsubscription (about one round trip) is dropped by the client library, unseen.
//!
//! The worker's own subjects (`<prefix>.worker.<id>.completion|embedding`) take the jobs other
//! workers hand it and their probes ([`super::direct`]): it runs those jobs while it serves and
//! while it drains, and once it leaves relays them to the shared subject instead.
//!
//! Endpoints can only unsubscribe, not drain, in async-nats 0.51: that is why step 1 keeps the
//! subscriptions and relays instead, and why step 3 drains the whole connection.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    service::{Request, Service, ServiceExt},
};
use bytes::Bytes;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    RuntimeError, WorkerContext, direct,
    gate::{DrainCounts, Phase},
    job::{self, Job, JobKind, KINDS},
    readiness::Readiness,
};
use crate::{
    client::health,
    cluster::sharing::Sharing,
    telemetry,
    wire::{
        ApiError,
        headers::{self, MAX_RELAYS, RELAYED, relays_of},
        service::{SERVICE_NAME, State},
    },
};

/// How long leaving the queue group may take (reading the endpoint buffers, then a round trip).
const LEAVE_PATIENCE: Duration = Duration::from_secs(10);

/// How long the drain waits for other workers to say they serve.
const PEERS_PATIENCE: Duration = Duration::from_millis(500);

/// Ingress's arguments.
pub struct IngressArgs {
    /// The worker's shared context.
    pub ctx: Arc<WorkerContext>,
    /// The queue group the workers share.
    pub queue_group: String,
}

/// Messages ingress takes.
pub enum IngressMsg {
    /// Stop taking jobs: from now on new jobs are relayed to the other workers (or, when
    /// none serves, still run here). Replies once the phase has changed.
    Drain(RpcReplyPort<()>),
    /// Answer every job still running with a 503 and stop it; replies with how many.
    CutOff(RpcReplyPort<usize>),
    /// Leave the queue group: drain the connection and relay on the given connection, or
    /// without one unsubscribe the endpoints. Replies with the drain's counts once the server
    /// routes nothing more to this worker.
    Leave(Option<async_nats::Client>, RpcReplyPort<DrainCounts>),
    /// The endpoints' subscriptions have ended (sent by ingress to itself).
    Left(RpcReplyPort<DrainCounts>),
}

/// The ingress actor.
pub struct IngressActor;

/// Ingress's state.
pub struct IngressState {
    ctx: Arc<WorkerContext>,
    service: Option<Service>,
    readers: Vec<JoinHandle<()>>,
    /// Set to true to make the readers unsubscribe their endpoints.
    leave: watch::Sender<bool>,
    readiness: Readiness,
    worker_id: String,
}

/// What the endpoint readers share.
struct Reader {
    ctx: Arc<WorkerContext>,
    worker_id: String,
    /// The `$SRV` id of this worker's service, which its acks name (`Llm-Ack`).
    service_id: String,
}

/// Which endpoint a reader serves.
#[derive(Clone, Copy)]
enum Endpoint {
    Job(&'static JobKind),
    /// This worker's own subject: jobs other workers hand it, and their probes.
    Direct(&'static JobKind),
    Models,
    Deployments,
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
        let stats = {
            let readiness = readiness.clone();
            let ctx = ctx.clone();
            // `$SRV.STATS` carries the live state (`$SRV.INFO` metadata is fixed at start),
            // including the fingerprint of the config served now (it changes on a reload).
            move |_endpoint: String, _stats: async_nats::service::endpoint::Stats| {
                serde_json::json!({
                    "state": readiness.state().as_str(),
                    "in_flight": ctx.gate.in_flight(),
                    "config": ctx.fingerprint.load().as_str(),
                    "worker_id": ctx.worker_id,
                    "limits": limits_data(&ctx.sharing),
                    "store": ctx.store.data(),
                    "capacity_lost": ctx
                        .table
                        .load()
                        .deployments()
                        .iter()
                        .map(|d| u64::from(d.capacity_lost()))
                        .sum::<u64>(),
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
                ("worker_id".to_string(), ctx.worker_id.clone()),
            ]))
            .queue_group(&args.queue_group)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| format!("registering the NATS service: {e}"))?;
        let worker_id = ctx.worker_id.clone();
        let endpoint = |name: String, subject: String| {
            let service = &service;
            async move {
                service
                    .endpoint_builder()
                    .name(&name)
                    .add(subject)
                    .await
                    .map_err(|e| format!("subscribing to {name}: {e}"))
            }
        };
        let (leave, _) = watch::channel(false);
        let reader = Arc::new(Reader {
            ctx: ctx.clone(),
            worker_id: worker_id.clone(),
            service_id: service.info().await.id,
        });
        let mut readers = Vec::new();
        // One endpoint per kind of job (the table of kinds), then the lists, then this
        // worker's own subjects, for jobs other workers hand it (groups they do not serve).
        for kind in &KINDS {
            let jobs = endpoint(kind.name().to_string(), kind.subject(subjects)).await?;
            readers.push(read(
                jobs,
                reader.clone(),
                leave.subscribe(),
                Endpoint::Job(kind),
            ));
        }
        let models = endpoint("models".into(), subjects.models()).await?;
        readers.push(read(
            models,
            reader.clone(),
            leave.subscribe(),
            Endpoint::Models,
        ));
        let deployments = endpoint("deployments".into(), subjects.deployments()).await?;
        readers.push(read(
            deployments,
            reader.clone(),
            leave.subscribe(),
            Endpoint::Deployments,
        ));
        for kind in &KINDS {
            let direct = endpoint(
                format!("direct-{}", kind.name()),
                subjects.direct(&worker_id, kind.name()),
            )
            .await?;
            readers.push(read(
                direct,
                reader.clone(),
                leave.subscribe(),
                Endpoint::Direct(kind),
            ));
        }
        // Make sure the server has our subscriptions before anyone is told we serve (a flush
        // only writes them to the socket).
        tokio::time::timeout(LEAVE_PATIENCE, round_trip(&ctx.client))
            .await
            .map_err(|_| RuntimeError::Unconfirmed)??;
        readiness.set(State::Serving);
        tracing::info!(worker_id = %worker_id, subject = %subjects.completion(), queue_group = %args.queue_group, "worker is serving");
        let _ = myself;
        Ok(IngressState {
            ctx,
            service: Some(service),
            readers,
            leave,
            readiness,
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
            IngressMsg::Drain(reply) => {
                state.drain().await;
                let _ = reply.send(());
            }
            IngressMsg::CutOff(reply) => {
                let _ = reply.send(state.cut_off().await);
            }
            IngressMsg::Leave(relay, reply) => state.leave(&myself, relay, reply).await,
            IngressMsg::Left(reply) => {
                if let Some(relay) = state.ctx.gate.relay.load_full() {
                    match tokio::time::timeout(LEAVE_PATIENCE, relay.flush()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "flushing the relayed jobs"),
                        Err(_) => tracing::warn!("flushing the relayed jobs timed out"),
                    }
                }
                let counts = state.ctx.gate.counts();
                tracing::info!(
                    relayed = counts.relayed,
                    "left the queue group: new jobs go to the other workers"
                );
                let _ = reply.send(counts);
            }
        }
        Ok(())
    }
}

impl IngressState {
    /// Begins the drain: new jobs are relayed from now on, unless no other worker serves.
    async fn drain(&mut self) {
        let gate = &self.ctx.gate;
        if gate.phase() != Phase::Serving {
            return;
        }
        gate.set_phase(Phase::Draining);
        self.readiness.set(State::Draining);
        let prefix = self.ctx.subjects.prefix().to_string();
        let peers = match health::check(&self.ctx.client, &prefix, PEERS_PATIENCE).await {
            Ok(workers) => workers
                .iter()
                .filter(|w| w.id != self.worker_id && w.is_ready())
                .count(),
            Err(e) => {
                tracing::warn!(error = %e, "could not ask for the other workers; relaying anyway");
                1
            }
        };
        gate.set_alone(peers == 0);
        if peers == 0 {
            tracing::info!(
                jobs_in_flight = gate.in_flight(),
                "draining: no other worker serves {}; this one keeps taking jobs through its grace period",
                self.ctx.subjects.completion()
            );
        } else {
            tracing::info!(
                jobs_in_flight = gate.in_flight(),
                other_workers = peers,
                "draining: new jobs go to the other workers; finishing the jobs in flight"
            );
        }
    }

    /// Signals every job still running to answer a 503 and stop, and waits (10 s at most)
    /// until they have. Returns how many were cut off.
    async fn cut_off(&mut self) -> usize {
        let gate = &self.ctx.gate;
        let before = gate.counts().cut_off;
        gate.cutoff().cancel();
        if tokio::time::timeout(LEAVE_PATIENCE, gate.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                jobs = gate.in_flight(),
                "jobs did not stop within 10 s of the cut-off"
            );
        }
        if let Err(e) = self.ctx.client.flush().await {
            tracing::debug!(error = %e, "flushing the cut-off answers");
        }
        gate.counts().cut_off - before
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
        let gate = self.ctx.gate.clone();
        if gate.phase() == Phase::Leaving {
            let _ = reply.send(gate.counts());
            return;
        }
        if gate.phase() == Phase::Serving {
            self.drain().await;
        }
        gate.set_phase(Phase::Leaving);
        let drained = match relay {
            Some(relay) => {
                gate.relay.store(Some(Arc::new(relay)));
                match self.ctx.client.drain().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "draining the NATS connection; unsubscribing");
                        gate.relay.store(None);
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
            // Only after every request the readers took has been relayed.
            let _ = myself.cast(IngressMsg::Left(reply));
        });
    }
}

impl Reader {
    /// One message of an endpoint.
    async fn take(&self, endpoint: Endpoint, request: Request) {
        let gate = &self.ctx.gate;
        let phase = gate.phase();
        match endpoint {
            Endpoint::Job(kind) => match phase {
                Phase::Serving => self.admit(kind, request).await,
                Phase::Draining => {
                    let hops = relays(&request);
                    if gate.alone() || hops >= MAX_RELAYS {
                        self.admit(kind, request).await;
                    } else {
                        self.relay(request, hops, None).await;
                    }
                }
                Phase::Leaving => {
                    let hops = relays(&request);
                    self.relay(request, hops, None).await;
                }
            },
            Endpoint::Direct(_) if direct::is_probe(&request) => {
                direct::answer_probe(&request, phase).await;
            }
            // Handed over because this worker serves the model: it runs the job while it
            // drains too (senders pick a draining worker only when no other serves); once it
            // leaves, the job goes on to the shared subject, where another worker takes it.
            Endpoint::Direct(kind) => match phase {
                Phase::Serving | Phase::Draining => self.admit(kind, request).await,
                Phase::Leaving => {
                    let hops = relays(&request);
                    let shared = kind.subject(&self.ctx.subjects);
                    self.relay(request, hops, Some(shared)).await;
                }
            },
            _ if phase == Phase::Leaving => self.relay(request, 0, None).await,
            _ if let Err(e) = self
                .ctx
                .settings
                .load()
                .auth
                .check(request.message.headers.as_ref()) =>
            {
                respond_error(&request, &e).await;
            }
            Endpoint::Models => {
                let list = self.ctx.table.load().models();
                respond_json(&request, &list).await;
            }
            Endpoint::Deployments => {
                let list = self.ctx.table.load().statuses(std::time::Instant::now());
                let mut h = HeaderMap::new();
                if let Some(configs) = self.config_mismatch() {
                    h.insert(headers::CONFIGS, configs.as_str());
                }
                respond_json_with(&request, &list, h).await;
            }
        }
    }

    /// When the live workers serve more than one config: each fingerprint with its count.
    fn config_mismatch(&self) -> Option<String> {
        let view = self.ctx.members.load().as_ref()?.snapshot();
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for m in view.members.values() {
            *counts.entry(m.config.as_str()).or_default() += 1;
        }
        (counts.len() > 1).then(|| {
            counts
                .iter()
                .map(|(fp, n)| format!("{fp}×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// Starts the job's task, or refuses it.
    async fn admit(&self, kind: &'static JobKind, request: Request) {
        let received = std::time::Instant::now();
        if request.message.reply.is_none() {
            metrics::counter!(telemetry::UNANSWERABLE).increment(1);
            tracing::debug!(subject = %request.message.subject, "a job without a reply subject was refused: it has nowhere to answer");
            return;
        }
        let Some(ticket) = self.ctx.gate.enter() else {
            let e = self.ctx.gate.busy();
            respond_error(&request, &e).await;
            return;
        };
        self.ack(&request).await;
        let id = format!("{}-{}", self.worker_id, self.ctx.gate.next_job());
        let job = Job {
            kind,
            request: job::Request::nats(request),
            parsed: None,
            received,
            id,
        };
        tokio::spawn(job::supervise(job, self.ctx.clone(), ticket));
    }

    /// When the job asks for it (`Llm-Ack`, the HTTP front does): tells its requester that this
    /// worker holds it, by its `$SRV` id, before anything else goes to the reply subject.
    async fn ack(&self, request: &Request) {
        let message = &request.message;
        if let Some(reply) = message.reply.clone()
            && message
                .headers
                .as_ref()
                .is_some_and(|h| h.get(headers::ACK).is_some())
        {
            let mut h = HeaderMap::new();
            h.insert(headers::ACK, self.service_id.as_str());
            if let Err(e) = self
                .ctx
                .client
                .publish_with_headers(reply, h, Bytes::new())
                .await
            {
                tracing::debug!(error = %e, "acknowledging a job");
            }
        }
    }

    /// Publishes `request` again on its subject (or on `to`), with its reply subject and
    /// headers, for another worker of the queue group.
    async fn relay(&self, request: Request, hops: u32, to: Option<String>) {
        let gate = &self.ctx.gate;
        let relay = gate.relay.load_full();
        let client = relay.as_deref().unwrap_or(&self.ctx.client);
        let message = request.message;
        let subject = to.map_or(message.subject, async_nats::Subject::from);
        let mut h = message.headers.unwrap_or_default();
        h.insert(RELAYED, (hops + 1).to_string().as_str());
        let sent = match message.reply {
            Some(reply) => {
                client
                    .publish_with_reply_and_headers(subject, reply, h, message.payload)
                    .await
            }
            None => {
                client
                    .publish_with_headers(subject, h, message.payload)
                    .await
            }
        };
        match sent {
            Ok(()) => gate.count_relayed(),
            Err(e) => tracing::warn!(error = %e, "relaying a job to the other workers failed"),
        }
    }
}

/// A message to a fresh inbox of our own and back: once it arrives, the server has processed
/// everything this connection sent before it (`Client::flush` only writes to the socket).
async fn round_trip(client: &async_nats::Client) -> Result<(), RuntimeError> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| RuntimeError::RoundTrip(e.into()))?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(|e| RuntimeError::RoundTrip(e.into()))?;
    sub.next()
        .await
        .map(|_| ())
        .ok_or(RuntimeError::RoundTripEnded)
}

/// How many times draining workers relayed `request` already.
fn relays(request: &Request) -> u32 {
    relays_of(request.message.headers.as_ref())
}

/// The `limits` object of a worker's `$SRV.STATS` data: where its limits hold and its clock
/// offset from the server.
fn limits_data(sharing: &Sharing) -> serde_json::Value {
    let status = sharing.status();
    serde_json::json!({
        "mode": status.limits.as_str(),
        "note": status.limits.describe(),
        "clock_offset_ms": status.clock.map(|c| c.offset_ms),
    })
}

/// Reads an endpoint and hands each message to `reader`. When `leave` turns true it
/// unsubscribes the endpoint, takes what the subscription's buffer still holds, and ends.
fn read(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    reader: Arc<Reader>,
    mut leave: watch::Receiver<bool>,
    kind: Endpoint,
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
                Step::Next(Some(request)) => reader.take(kind, request).await,
                Step::Next(None) => break,
            }
        }
    })
}

async fn respond_json<T: serde::Serialize>(request: &Request, body: &T) {
    respond_json_with(request, body, HeaderMap::new()).await;
}

async fn respond_json_with<T: serde::Serialize>(request: &Request, body: &T, mut h: HeaderMap) {
    h.insert(headers::STATUS, "200");
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
