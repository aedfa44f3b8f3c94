//! Ingress: where NATS messages become jobs. It registers the worker with the NATS services
//! framework (`$SRV.PING|INFO|STATS` answer for `llmbus`), subscribes to the request subjects
//! in the queue group, and starts one request actor per completion job — as long as fewer
//! than `max_in_flight` jobs are running. Past that bound a job gets a 503 at once: the
//! worker never builds an unbounded queue.
//!
//! It supervises the request actors: when one fails (a panic), the job still gets an answer,
//! a 500, and no other job notices.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use async_nats::{
    HeaderMap, Subject,
    service::{Request, Service, ServiceExt},
};
use bytes::Bytes;
use futures::StreamExt;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use super::{
    WorkerContext,
    request::{Job, RequestActor},
    router::RouterMsg,
};
use crate::{
    telemetry,
    wire::{ApiError, headers},
};

/// The name the worker registers under with the NATS services framework.
pub const SERVICE_NAME: &str = "llmbus";

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
    /// A `llm.models` request arrived.
    Models(Request),
    /// A `llm.deployments` request arrived.
    Deployments(Request),
}

/// The ingress actor.
pub struct IngressActor;

struct Running {
    reply: Option<Subject>,
    done: Arc<AtomicBool>,
}

/// Ingress's state.
pub struct IngressState {
    ctx: Arc<WorkerContext>,
    service: Option<Service>,
    readers: Vec<JoinHandle<()>>,
    max_in_flight: usize,
    running: HashMap<ActorId, Running>,
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
        let service = ctx
            .client
            .service_builder()
            .description("llmbus: an OpenAI-shaped LLM gateway on NATS")
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
        let models = endpoint("models", subjects.models()).await?;
        let deployments = endpoint("deployments", subjects.deployments()).await?;
        let readers = vec![
            read(completion, myself.clone(), |r| {
                IngressMsg::Completion(r, Instant::now())
            }),
            read(models, myself.clone(), IngressMsg::Models),
            read(deployments, myself.clone(), IngressMsg::Deployments),
        ];
        // Make sure the server has our subscriptions before anyone is told we serve.
        ctx.client
            .flush()
            .await
            .map_err(|e| format!("flushing subscriptions: {e}"))?;
        tracing::info!(worker_id = %worker_id, subject = %subjects.completion(), queue_group = %args.queue_group, "worker is serving");
        Ok(IngressState {
            ctx,
            service: Some(service),
            readers,
            max_in_flight: args.max_in_flight,
            running: HashMap::new(),
            next_job: 0,
            worker_id,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
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
                state.admit(&myself, request, received).await;
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
                    answer_failed_job(&state.ctx.client, reply).await;
                }
            }
            _ => {}
        }
        metrics::gauge!(telemetry::IN_FLIGHT).set(state.running.len() as f64);
        Ok(())
    }
}

impl IngressState {
    async fn admit(&mut self, myself: &ActorRef<IngressMsg>, request: Request, received: Instant) {
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
            request,
            received,
            id,
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
                self.running.insert(actor.get_id(), Running { reply, done });
                metrics::gauge!(telemetry::IN_FLIGHT).set(self.running.len() as f64);
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start a request actor");
                if let Some(reply) = reply {
                    answer_failed_job(&self.ctx.client, reply).await;
                }
            }
        }
    }
}

/// Forwards every request of an endpoint to ingress.
fn read(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    ingress: ActorRef<IngressMsg>,
    wrap: impl Fn(Request) -> IngressMsg + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            if ingress.cast(wrap(request)).is_err() {
                break;
            }
        }
    })
}

/// A job whose actor died before answering: a 500 error body, then a sentinel (so a streaming
/// requester stops reading too).
async fn answer_failed_job(client: &async_nats::Client, reply: Subject) {
    let e = ApiError::internal("internal error while running the job; it was not completed");
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, "500");
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
