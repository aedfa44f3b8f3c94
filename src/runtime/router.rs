//! The router: owns the model groups and their deployments. It builds the [`RoutingTable`]
//! that every job reads (through an `ArcSwap`, so routing needs no message), spawns one
//! [`DeploymentActor`] per deployment and supervises them (one that fails is started again on
//! the same [`Deployment`]: its numbers survive, its queue of waiting jobs does not), and
//! passes on the cooldowns other workers announce on `llm.health.*` or the health board, those
//! of current members only and no longer than it lets another worker impose
//! ([`super::announced`]). When the worker's limits change between local and shared
//! ([`RouterMsg::Share`]), it rebuilds every deployment on the new terms; the old ones finish
//! the calls they hold.
//!
//! The rules a pick follows are in [`super::table`].

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::{
    announced::{self, Announced},
    deployment::{Deployment, DeploymentActor, DeploymentArgs, Gossip, HealthEvent},
    plan::Plan,
    table::RoutingTable,
};
use crate::{
    cluster::{
        health::{Cooldown, HealthBoard},
        members::MemberWatch,
        quota::ClusterQuota,
    },
    policy::health::HealthPolicy,
    wire::openai::unix_now,
};

/// The routing table every job reads; the router replaces it.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// The router's arguments.
pub struct RouterArgs {
    /// The deployments, routing rules and health thresholds.
    pub plan: Plan,
    /// Cooldown gossip with the other workers; `None` keeps health local.
    pub gossip: Option<Gossip>,
    /// Cluster-wide limits; `None` keeps `rpm`/`tpm` per worker.
    pub quota: Option<ClusterQuota>,
    /// The cluster's members, whose cooldown announcements are believed; `None` without
    /// JetStream (announcements are then taken from any worker).
    pub members: Option<MemberWatch>,
    /// Where the table is published.
    pub table: SharedTable,
}

/// Messages the router takes.
pub enum RouterMsg {
    /// A cooldown another worker announced (core NATS gossip).
    Remote(HealthEvent),
    /// A cooldown recorded on the cluster's health board.
    Board(Cooldown),
    /// A new config: swap the table, keeping the deployments whose identity is unchanged.
    Reload(Plan, RpcReplyPort<ReloadReport>),
    /// The worker's limits now hold for the cluster (`Some` quota) or for it alone (`None`):
    /// every deployment is rebuilt on these terms, with this cooldown board (or none).
    Share(Box<Shared>, RpcReplyPort<()>),
}

/// What the worker shares with the cluster now.
#[derive(Clone, Default)]
pub struct Shared {
    /// Cluster-wide limits; `None` keeps `rpm`/`tpm` per worker.
    pub quota: Option<ClusterQuota>,
    /// The cooldown board; `None` leaves cooldowns to core NATS gossip.
    pub board: Option<HealthBoard>,
    /// The membership, once the worker has joined it: from then on only members' announced
    /// cooldowns are believed. `None` leaves the router's membership as it is.
    pub members: Option<MemberWatch>,
}

/// What a reload changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Deployments kept running as they were.
    pub kept: usize,
    /// Deployments started.
    pub added: usize,
    /// Deployments stopped.
    pub removed: usize,
}

/// The router actor.
pub struct RouterActor;

/// The router's state.
pub struct RouterState {
    table: SharedTable,
    gossip: Option<Gossip>,
    quota: Option<ClusterQuota>,
    /// Cooldowns on (the table's rules say so too).
    health: bool,
    /// The cooldown thresholds deployments are built with.
    policy: Option<HealthPolicy>,
    /// Which announced cooldowns are taken on, and for how long.
    announced: Announced,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RouterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let plan = args.plan;
        let policy = plan.health.clone();
        let me = args.gossip.as_ref().map(|g| g.worker.clone());
        let announced = Announced::new(
            me.unwrap_or_default(),
            args.members,
            announced::remote_cap(plan.health.as_ref()),
        );
        let mut deployments = Vec::with_capacity(plan.deployments.len());
        let sizes = group_sizes(plan.deployments.iter().map(|d| d.model_group.as_str()));
        for info in plan.deployments {
            let health = health_of(&plan.health, &sizes, &info.model_group);
            let deployment = Deployment::new(info, health, args.quota.as_ref());
            spawn(&myself, deployment.clone(), args.gossip.clone()).await?;
            deployments.push(deployment);
        }
        let health = plan.rules.health;
        args.table.store(Arc::new(RoutingTable::new(
            deployments,
            plan.rules,
            unix_now(),
        )));
        let listener = listener(&args.gossip, &myself).await?;
        Ok(RouterState {
            table: args.table,
            gossip: args.gossip,
            quota: args.quota,
            health,
            policy,
            announced,
            listener,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(l) = state.listener.take() {
            l.abort();
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
            RouterMsg::Reload(plan, reply) => {
                let report = state.reload(&myself, plan).await?;
                let _ = reply.send(report);
            }
            RouterMsg::Share(shared, reply) => {
                state.share(&myself, *shared).await?;
                let _ = reply.send(());
            }
            RouterMsg::Remote(event) => state.remote(
                &event.worker,
                &event.deployment,
                Duration::from_millis(event.cooldown_ms),
            ),
            RouterMsg::Board(c) => {
                if let Some(left) = board_of(&state.gossip).and_then(|b| b.remaining(&c)) {
                    state.remote(&c.worker, &c.deployment, left);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The default would stop the router when a child ends: restart the child instead.
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            let table = state.table.load_full();
            let failed = table
                .deployments()
                .iter()
                .find(|d| d.actor_id().is_none_or(|id| id == cell.get_id()));
            let Some(deployment) = failed else {
                return Ok(());
            };
            tracing::error!(deployment = %deployment.id(), error = %err, "deployment actor failed; restarting it");
            spawn(&myself, deployment.clone(), state.gossip.clone()).await?;
        }
        Ok(())
    }
}

impl RouterState {
    /// A cooldown of `length` that `worker` announced for `deployment`: taken on when the
    /// worker is a member, cut to the bound ([`Announced`]).
    fn remote(&self, worker: &str, deployment: &str, length: Duration) {
        if !self.health {
            return;
        }
        if let Some(length) = self.announced.accept(worker, deployment, length)
            && let Some(d) = self.table.load().deployment(deployment)
        {
            d.remote_cooldown(length, Instant::now());
        }
    }

    /// Builds the new table: a deployment whose identity is unchanged is kept as it runs;
    /// the others start; those left out stop once the jobs queued on them have moved on.
    async fn reload(
        &mut self,
        myself: &ActorRef<RouterMsg>,
        plan: Plan,
    ) -> Result<ReloadReport, ActorProcessingErr> {
        let old = self.table.load_full();
        let mut running: HashMap<&str, &Arc<Deployment>> = old
            .deployments()
            .iter()
            .map(|d| (d.info.identity.as_str(), d))
            .collect();
        let mut report = ReloadReport::default();
        self.policy = plan.health.clone();
        self.announced
            .set_cap(announced::remote_cap(plan.health.as_ref()));
        let mut deployments = Vec::with_capacity(plan.deployments.len());
        let sizes = group_sizes(plan.deployments.iter().map(|d| d.model_group.as_str()));
        for info in plan.deployments {
            if let Some(kept) = running.remove(info.identity.as_str()) {
                report.kept += 1;
                deployments.push(kept.clone());
                continue;
            }
            let health = health_of(&plan.health, &sizes, &info.model_group);
            let deployment = Deployment::new(info, health, self.quota.as_ref());
            spawn(myself, deployment.clone(), self.gossip.clone()).await?;
            report.added += 1;
            deployments.push(deployment);
        }
        self.health = plan.rules.health;
        self.table.store(Arc::new(RoutingTable::new(
            deployments,
            plan.rules,
            unix_now(),
        )));
        // Jobs that already hold a removed deployment finish their call on it; those queued
        // for its capacity are told it went away and pick again from the new table.
        for gone in running.into_values() {
            report.removed += 1;
            let gone = gone.clone();
            tokio::spawn(async move { gone.retire().await });
        }
        tracing::info!(
            kept = report.kept,
            added = report.added,
            removed = report.removed,
            "new config: routing table replaced"
        );
        Ok(report)
    }
}

impl RouterState {
    /// Rebuilds every deployment with `shared`'s limits and board. A call in flight keeps its
    /// permit and gives it back to the deployment it came from; jobs queued for capacity on
    /// an old deployment are told it went away and pick again from the new table. The new
    /// deployments take over the cooldowns and the window the old ones had.
    async fn share(
        &mut self,
        myself: &ActorRef<RouterMsg>,
        shared: Shared,
    ) -> Result<(), ActorProcessingErr> {
        self.quota = shared.quota;
        if let Some(g) = &mut self.gossip {
            g.board = shared.board;
        }
        if let Some(members) = shared.members {
            let me = self.gossip.as_ref().map(|g| g.worker.clone());
            let cap = announced::remote_cap(self.policy.as_ref());
            self.announced = Announced::new(me.unwrap_or_default(), Some(members), cap);
        }
        let old = self.table.load_full();
        let now = Instant::now();
        let mut deployments = Vec::with_capacity(old.deployments().len());
        let sizes = group_sizes(
            old.deployments()
                .iter()
                .map(|d| d.info.model_group.as_str()),
        );
        for d in old.deployments() {
            let info = Arc::new(d.info.renewed());
            let health = health_of(&self.policy, &sizes, &info.model_group);
            let fresh = Deployment::new(info, health, self.quota.as_ref());
            fresh.take_over(d, now);
            spawn(myself, fresh.clone(), self.gossip.clone()).await?;
            deployments.push(fresh);
        }
        self.table.store(Arc::new(old.rebuilt(deployments)));
        for gone in old.deployments() {
            let gone = gone.clone();
            tokio::spawn(async move { gone.retire().await });
        }
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        self.listener = listener(&self.gossip, myself).await?;
        tracing::info!(
            limits = if self.quota.is_some() {
                "shared"
            } else {
                "local"
            },
            deployments = old.deployments().len(),
            "deployments rebuilt with {} limits",
            if self.quota.is_some() {
                "cluster-wide"
            } else {
                "local"
            }
        );
        Ok(())
    }
}

/// The cooldown board the router follows, if any.
fn board_of(gossip: &Option<Gossip>) -> Option<&HealthBoard> {
    gossip.as_ref()?.board.as_ref()
}

/// Follows the other workers' cooldowns: from the board when the cluster has one (it also
/// holds those decided before this worker started), else from core NATS gossip.
async fn listener(
    gossip: &Option<Gossip>,
    router: &ActorRef<RouterMsg>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ActorProcessingErr> {
    Ok(match gossip {
        Some(Gossip {
            board: Some(board), ..
        }) => Some(watch_board(board.clone(), router.clone()).await?),
        Some(g) => Some(listen(g.clone(), router.clone()).await?),
        None => None,
    })
}

/// How many deployments each group has.
fn group_sizes<'a>(groups: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut sizes = HashMap::new();
    for g in groups {
        *sizes.entry(g.to_owned()).or_insert(0) += 1;
    }
    sizes
}

/// The health policy of a deployment of `group`: a group's only deployment is `lone` (an
/// upstream's `Retry-After` alone does not cool it down). A reload keeps a running deployment's
/// policy; new deployments take the group's size then.
fn health_of(
    policy: &Option<HealthPolicy>,
    sizes: &HashMap<String, usize>,
    group: &str,
) -> Option<HealthPolicy> {
    policy.clone().map(|p| HealthPolicy {
        lone: sizes.get(group).copied().unwrap_or(0) <= 1,
        ..p
    })
}

async fn spawn(
    router: &ActorRef<RouterMsg>,
    deployment: Arc<Deployment>,
    gossip: Option<Gossip>,
) -> Result<(), ActorProcessingErr> {
    let args = DeploymentArgs { deployment, gossip };
    Actor::spawn_linked(None, DeploymentActor, args, router.get_cell()).await?;
    Ok(())
}

/// Watches the cluster's health board and forwards every cooldown in force (those recorded
/// before this worker started first) to the router.
async fn watch_board(
    board: HealthBoard,
    router: ActorRef<RouterMsg>,
) -> Result<tokio::task::JoinHandle<()>, ActorProcessingErr> {
    // The watch first, so no cooldown written meanwhile falls between it and the initial read.
    let updates = board
        .watch()
        .await
        .map_err(|e| format!("watching the health board: {e}"))?;
    let initial = board
        .initial()
        .await
        .map_err(|e| format!("reading the health board: {e}"))?;
    for c in initial {
        let _ = router.cast(RouterMsg::Board(c));
    }
    Ok(tokio::spawn(async move {
        futures::pin_mut!(updates);
        while let Some(c) = updates.next().await {
            if router.cast(RouterMsg::Board(c)).is_err() {
                break;
            }
        }
    }))
}

/// Subscribes to `llm.health.*` and forwards other workers' cooldowns to the router.
async fn listen(
    g: Gossip,
    router: ActorRef<RouterMsg>,
) -> Result<tokio::task::JoinHandle<()>, ActorProcessingErr> {
    let mut sub = g
        .client
        .subscribe(format!("{}.health.*", g.subjects.prefix()))
        .await
        .map_err(|e| format!("subscribing to health gossip: {e}"))?;
    Ok(tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Ok(event) = serde_json::from_slice::<HealthEvent>(&m.payload) else {
                crate::cluster::health::malformed();
                continue;
            };
            if router.cast(RouterMsg::Remote(event)).is_err() {
                break;
            }
        }
    }))
}
