//! A worker: the actors of one llmbus process, started from a [`Config`] on a NATS connection.
//!
//! [`Worker::start`] builds one provider per deployment (sharing one HTTP client pool),
//! joins the cluster's shared state, spawns the router (which spawns the deployment actors),
//! the cost actor and ingress, and returns once the worker is subscribed and serving.
//! [`Worker::reload`] applies a new config to the running worker (the cluster's config
//! changed): deployments whose settings did not change keep running, the others are replaced,
//! and no job in flight notices.
//!
//! - [`ops`]: the operations HTTP server (`/metrics`, `/healthz`, `/readyz`).
//! - `cluster`: what the worker shares through JetStream KV, joining late when JetStream comes
//!   up after the worker, and its clock against the server's.
//! - `keeper`: creates again the buckets and streams the NATS store lost while the worker
//!   runs, and compares their replicas with `llmbus.replicas`.
//!
//! A stopping worker leaves the cluster in an order that strands nothing: it leaves the
//! membership as the drain begins (nobody hands it jobs any more), lets the jobs in flight
//! finish, returns the unspent parts of its limits, and only then closes its NATS connection.

mod cluster;
mod keeper;
pub mod ops;

use cluster::{Announce, Link, LinkArgs};

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use ractor::{Actor, ActorRef};

use crate::{
    cluster::{
        Replicas,
        clock::Clock,
        sharing::{Limits, LocalReason, Sharing},
        store::StoreStatus,
    },
    config::{Config, ConfigError},
    pricing,
    runtime::{
        JobSettings, WorkerContext,
        cancel::{self, Cancels},
        cost::{CostActor, CostArgs, CostMsg, Spend, UsageSettings},
        deployment::Gossip,
        gate::Gate,
        ingress::{IngressActor, IngressArgs, IngressMsg},
        plan::{Plan, PlanError, served_names},
        router::{ReloadReport, RouterActor, RouterArgs, RouterMsg},
        table::{RoutingRules, RoutingTable},
    },
    usage::{UsageSink, stream},
    wire::Subjects,
};

/// What a worker's drain did (see `Worker::drain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Jobs that ran during the drain: in flight when it began, or already delivered.
    pub jobs: usize,
    /// Of those, the jobs that finished with their own answer.
    pub finished: usize,
    /// Of those, the jobs still running when the grace period ran out, answered with a 503.
    pub cut_off: usize,
    /// Jobs and requests that arrived during the drain and were relayed to other workers.
    pub relayed: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A deployment's settings are wrong (for example an unknown provider).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The configuration has no deployment.
    #[error("the configuration has no deployment: add at least one entry to model_list")]
    NoDeployments,
    /// An actor did not start.
    #[error("starting the {0} actor: {1}")]
    Actor(&'static str, String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(String),
    /// `llmbus.price_table` could not be loaded.
    #[error("{0}")]
    PriceTable(#[from] pricing::PriceFileError),
}

impl From<PlanError> for StartError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::NoDeployments => StartError::NoDeployments,
            PlanError::PriceTable(e) => StartError::PriceTable(e),
        }
    }
}

/// A running worker.
pub struct Worker {
    ctx: Arc<WorkerContext>,
    http: reqwest::Client,
    ingress: ActorRef<IngressMsg>,
    router: ActorRef<RouterMsg>,
    cost: ActorRef<CostMsg>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    cancel_listener: tokio::task::JoinHandle<()>,
    /// Joining the cluster late, following the clock.
    link: Link,
    /// What the membership is told (a reload changes it).
    announce: Announce,
    /// Serves `llm.admin.config.push|rollback` ([`crate::runtime::admin`]).
    admin: tokio::task::JoinHandle<()>,
    /// The idle self-check ([`crate::runtime::deployment::selfcheck`]).
    selfcheck: tokio::task::JoinHandle<()>,
    /// Creates again what the store lost, and compares replicas ([`keeper`]).
    _keeper: keeper::Keeper,
}

impl Worker {
    /// Starts a worker serving `config` on `client`.
    pub async fn start(config: &Config, client: async_nats::Client) -> Result<Self, StartError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // An API gateway does not follow redirects (neither do the providers' SDKs): a
            // redirect is the upstream's answer, passed on.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StartError::Http(e.to_string()))?;
        let plan = Plan::of(config, &http)?;
        let subjects = Subjects::new(config.llmbus.subject_prefix.clone());
        let worker_id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = config.llmbus.subject_prefix.clone();
        let clock = Clock::from_env();
        let announce: Announce = Arc::new(Mutex::new((served_names(config), config.fingerprint())));
        let store = Arc::new(StoreStatus::new(Replicas::from_setting(
            config.llmbus.replicas,
        )));
        let first = cluster::first_join(
            &client,
            &prefix,
            &worker_id,
            &announce,
            &clock,
            store.replicas,
        )
        .await;
        let shared = first.shared.clone();
        let gossip = Gossip {
            client: client.clone(),
            subjects: subjects.clone(),
            worker: worker_id.clone(),
            board: shared.board.clone(),
        };
        let mut handles = Vec::new();
        let table = Arc::new(ArcSwap::from_pointee(RoutingTable::new(
            Vec::new(),
            RoutingRules {
                aliases: BTreeMap::new(),
                strategy: plan.rules.strategy,
                tag_filtering: false,
                pre_call_checks: false,
                health: false,
            },
            0,
        )));
        let (router, h) = Actor::spawn(
            None,
            RouterActor,
            RouterArgs {
                plan,
                gossip: Some(gossip),
                quota: shared.quota.clone(),
                members: first.members.as_ref().map(|m| m.watch()),
                table: table.clone(),
            },
        )
        .await
        .map_err(|e| StartError::Actor("router", e.to_string()))?;
        handles.push(h);
        let usage_keep = stream::Keep {
            retention: stream::retention(config.llmbus.usage_retention_days),
            replicas: store.replicas,
        };
        let (usage, receiver) =
            UsageSink::bounded(config.llmbus.usage_buffer, config.llmbus.usage_buffer_bytes);
        let (cost, h) = Actor::spawn(
            None,
            CostActor,
            CostArgs {
                client: client.clone(),
                subjects: subjects.clone(),
                sink: usage.clone(),
                receiver,
                settings: UsageSettings {
                    keep: usage_keep,
                    ensure_stream: true,
                    aggregate: config.llmbus.spend_aggregator,
                },
            },
        )
        .await
        .map_err(|e| StartError::Actor("cost", e.to_string()))?;
        handles.push(h);
        let cancels = Arc::new(Cancels::new(crate::auth::Auth::from_config(config)));
        let cancel_listener = cancel::listen(&client, subjects.cancel(), cancels.clone())
            .await
            .map_err(|e| StartError::Actor("cancel listener", e.to_string()))?;
        let ctx = Arc::new(WorkerContext {
            worker_id,
            fingerprint: ArcSwap::from_pointee(config.fingerprint()),
            members: arc_swap::ArcSwapOption::new(first.members),
            sharing: Sharing::new(Limits::Local(LocalReason::NoJetStream(
                "not joined yet".into(),
            ))),
            max_payload: client.server_info().max_payload,
            store,
            client,
            subjects,
            table,
            gate: Arc::new(Gate::new(config.llmbus.max_in_flight)),
            cancels,
            cost: cost.clone(),
            usage,
            settings: ArcSwap::from_pointee(JobSettings::from_config(config)),
        });
        let admin = crate::runtime::admin::serve(ctx.clone(), config.llmbus.queue_group.clone())
            .await
            .map_err(|e| StartError::Actor("admin", e.to_string()))?;
        let link = Link::start(
            LinkArgs {
                client: ctx.client.clone(),
                prefix,
                clock,
                announce: announce.clone(),
                router: router.clone(),
                ctx: ctx.clone(),
            },
            first.outcome,
        );
        let (ingress, h) = Actor::spawn(
            None,
            IngressActor,
            IngressArgs {
                ctx: ctx.clone(),
                queue_group: config.llmbus.queue_group.clone(),
            },
        )
        .await
        .map_err(|e| StartError::Actor("ingress", e.to_string()))?;
        handles.push(h);
        let selfcheck =
            crate::runtime::deployment::selfcheck::spawn(ctx.gate.clone(), ctx.table.clone());
        let keeper = keeper::Keeper::start(
            ctx.client.clone(),
            ctx.subjects.clone(),
            usage_keep,
            config.llmbus.spend_aggregator,
            ctx.store.clone(),
        );
        Ok(Self {
            ctx,
            http,
            ingress,
            router,
            cost,
            handles,
            cancel_listener,
            link,
            announce,
            admin,
            selfcheck,
            _keeper: keeper,
        })
    }

    /// Applies `config` to the running worker: the deployments whose settings are unchanged
    /// keep running (their capacity, health and queues), new ones start, removed ones stop once
    /// the jobs waiting on them have moved on; the routing table, aliases, retries, fallbacks,
    /// deadlines and master key switch at once. Jobs in flight finish as they began.
    ///
    /// A config this worker cannot run (a price file it cannot read, no deployment) is refused
    /// with the error, and the worker keeps its current config. The NATS connection settings,
    /// subject prefix, queue group and listen addresses are fixed for the process.
    pub async fn reload(&self, config: &Config) -> Result<ReloadReport, StartError> {
        let plan = Plan::of(config, &self.http)?;
        let report = ractor::call_t!(self.router, RouterMsg::Reload, 30_000, plan)
            .map_err(|e| StartError::Actor("router", e.to_string()))?;
        self.ctx
            .settings
            .store(Arc::new(JobSettings::from_config(config)));
        self.ctx
            .cancels
            .set_auth(crate::auth::Auth::from_config(config));
        let fingerprint = config.fingerprint();
        self.ctx.fingerprint.store(Arc::new(fingerprint.clone()));
        *self.announce.lock().unwrap_or_else(|e| e.into_inner()) =
            (served_names(config), fingerprint.clone());
        if let Some(members) = self.ctx.members.load_full()
            && let Err(e) = members.update(served_names(config), fingerprint).await
        {
            tracing::warn!(error = %e, "announcing the new config to the cluster");
        }
        Ok(report)
    }

    /// Where its `rpm`/`tpm` limits hold now (shared with the cluster, or its own and why).
    pub fn sharing(&self) -> &Sharing {
        &self.ctx.sharing
    }

    /// This worker's jobs as its own HTTP front reaches them: in process, for the groups it
    /// serves ([`crate::runtime::local`]).
    pub fn local_jobs(&self) -> crate::runtime::local::LocalJobs {
        crate::runtime::local::LocalJobs::new(self.ctx.clone())
    }

    /// Jobs running now.
    pub fn in_flight(&self) -> usize {
        self.ctx.gate.in_flight()
    }

    /// Waits until every usage event recorded so far is stored (or the publisher stopped).
    pub async fn flush_usage(&self) {
        self.ctx.usage.flush().await;
    }

    /// The totals the cost actor has counted so far.
    pub async fn spend(&self) -> Option<Spend> {
        ractor::call!(self.cost, crate::runtime::cost::CostMsg::Spend).ok()
    }

    /// Stops at once: [`Worker::drain`] without a grace period. The jobs still running are
    /// answered with a 503, the worker leaves the queue group (once this returns, the server
    /// routes no job here; what was already buffered is relayed to the other workers), and
    /// every actor stops.
    pub async fn stop(self) {
        self.drain(Duration::ZERO).await;
    }

    /// Stops gracefully: [`Worker::drain_via`] without a relay connection. Leaving the queue
    /// group then unsubscribes the endpoints: a job the server routed here in the last round
    /// trip before it processed that is lost (async-nats endpoints cannot drain).
    pub async fn drain(self, grace: Duration) -> DrainReport {
        self.drain_via(grace, None).await
    }

    /// Stops gracefully. From now on the worker takes no new job: it leaves the cluster's
    /// membership at once (no worker hands it a job any more), and a job that still arrives
    /// is relayed (published again with its reply subject) to the other workers of the queue
    /// group. It waits up to `grace` for every job in flight (streams included) to finish; a
    /// job still running then is answered with a 503 (`worker_shutting_down`; an error
    /// message and the sentinel for a stream). It gives the unspent parts of its cluster-wide
    /// limits back while its connection is still open. Then it leaves the queue group: with
    /// `relay` (a second connection to the same NATS), by draining its own connection, which
    /// loses no job (what arrives meanwhile is relayed on `relay`); this closes the worker's
    /// connection. Then every actor stops. Never leaves a job without an answer.
    ///
    /// Relaying needs publish permission on the request subjects (`llm.completion`, ...).
    pub async fn drain_via(
        self,
        grace: Duration,
        relay: Option<async_nats::Client>,
    ) -> DrainReport {
        use crate::runtime::gate::DrainCounts;
        let began = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + grace;
        self.leave_membership().await;
        match ractor::call_t!(self.ingress, IngressMsg::Drain, 30_000) {
            Ok(()) => {
                let idle = tokio::time::timeout_at(deadline, self.ctx.gate.idle())
                    .await
                    .is_ok();
                if !idle && !grace.is_zero() {
                    tracing::warn!(
                        grace_secs = grace.as_secs_f64(),
                        "the shutdown grace period ran out with jobs still running"
                    );
                }
                if let Err(e) = ractor::call_t!(self.ingress, IngressMsg::CutOff, 30_000) {
                    tracing::warn!(error = %e, "ingress did not answer the cut-off");
                }
            }
            Err(e) => tracing::warn!(error = %e, "ingress did not answer the drain"),
        }
        // The last jobs' usage events go out before the connection may close, and the spend
        // aggregator gives its lease back while it still can.
        let _ = ractor::call_t!(self.cost, CostMsg::Flush, 10_000);
        let _ = ractor::call_t!(self.cost, CostMsg::StopAggregator, 10_000);
        self.return_limits().await;
        // Leaving takes a round trip to the server; ingress bounds it by 10 s.
        let counts = ractor::call_t!(self.ingress, IngressMsg::Leave, 30_000, relay)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ingress did not answer the leave");
                DrainCounts::default()
            });
        let report = DrainReport {
            jobs: counts.jobs,
            finished: counts.jobs.saturating_sub(counts.cut_off),
            cut_off: counts.cut_off,
            relayed: counts.relayed,
            took: began.elapsed(),
        };
        let alone = self.ctx.gate.alone();
        tracing::info!(
            jobs = report.jobs,
            finished = report.finished,
            cut_off = report.cut_off,
            relayed = report.relayed,
            last_worker = alone,
            took_ms = report.took.as_millis() as u64,
            "drained: {} jobs finished here, {} cut off, {}",
            report.finished,
            report.cut_off,
            if report.relayed == 0 {
                "none relayed".to_string()
            } else {
                format!("{} relayed to other workers", report.relayed)
            }
        );
        self.ingress.stop(None);
        self.router.stop(None);
        self.cost.stop(None);
        self.cancel_listener.abort();
        self.admin.abort();
        self.selfcheck.abort();
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        report
    }

    /// Stops following the cluster and deletes this worker's membership entry (bounded by
    /// 5 s), so the others drop it at once.
    async fn leave_membership(&self) {
        self.link.stop();
        if let Some(members) = self.ctx.members.swap(None) {
            match tokio::time::timeout(Duration::from_secs(5), members.leave()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "leaving the cluster's membership"),
                Err(_) => tracing::warn!("leaving the cluster's membership timed out"),
            }
        }
    }

    /// Gives the unspent parts of the cluster-wide limits back (bounded by 5 s): once no job
    /// runs, before the connection closes.
    async fn return_limits(&self) {
        let limits = async {
            for d in self.ctx.table.load().deployments() {
                d.close_limits(Duration::from_secs(2)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), limits)
            .await
            .is_err()
        {
            tracing::warn!(
                "returning the unspent parts of the cluster-wide limits timed out; they age out \
                 within a minute"
            );
        }
    }
}

/// Whether a worker would share its `rpm`/`tpm` limits with the cluster on `client` now
/// (JetStream KV reachable, clock within [`crate::cluster::clock::MAX_OFFSET`] of the
/// server's): the check `serve --strict` makes before it starts. The error says why not.
pub async fn check_shared(
    client: &async_nats::Client,
    config: &Config,
) -> Result<(), crate::cluster::sharing::LocalReason> {
    let replicas = Replicas::from_setting(config.llmbus.replicas);
    cluster::check(client, &config.llmbus.subject_prefix, replicas).await
}
