//! The router: owns the model groups and their deployments. It builds the [`RoutingTable`]
//! that every job reads (through an `ArcSwap`, so routing needs no message), spawns one
//! [`DeploymentActor`] per deployment and supervises them (one that fails is started again on
//! the same [`Deployment`]: its numbers survive, its queue of waiting jobs does not), and
//! passes on the cooldowns other workers announce on `llm.health.*`.
//!
//! The rules a pick follows are in [`super::table`].

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::{
    deployment::{
        Deployment, DeploymentActor, DeploymentArgs, DeploymentInfo, Gossip, HealthEvent,
    },
    table::{RoutingRules, RoutingTable},
};
use crate::{
    cluster::{
        health::{Cooldown, HealthBoard},
        quota::ClusterQuota,
    },
    policy::health::HealthPolicy,
    wire::openai::unix_now,
};

/// The routing table every job reads; the router replaces it.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// The router's arguments.
pub struct RouterArgs {
    /// Deployments in configuration order.
    pub deployments: Vec<Arc<DeploymentInfo>>,
    /// How the table routes.
    pub rules: RoutingRules,
    /// Health thresholds for every deployment; `None` disables cooldowns.
    pub health: Option<HealthPolicy>,
    /// Cooldown gossip with the other workers; `None` keeps health local.
    pub gossip: Option<Gossip>,
    /// Cluster-wide limits; `None` keeps `rpm`/`tpm` per worker.
    pub quota: Option<ClusterQuota>,
    /// Where the table is published.
    pub table: SharedTable,
}

/// Messages the router takes.
pub enum RouterMsg {
    /// A cooldown another worker announced (core NATS gossip).
    Remote(HealthEvent),
    /// A cooldown recorded on the cluster's health board.
    Board(Cooldown),
}

/// The router actor.
pub struct RouterActor;

/// The router's state.
pub struct RouterState {
    table: SharedTable,
    gossip: Option<Gossip>,
    health: bool,
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
        let mut deployments = Vec::with_capacity(args.deployments.len());
        for info in args.deployments {
            let deployment = Deployment::new(info, args.health.clone(), args.quota.as_ref());
            spawn(&myself, deployment.clone(), args.gossip.clone()).await?;
            deployments.push(deployment);
        }
        let health = args.rules.health;
        args.table.store(Arc::new(RoutingTable::new(
            deployments,
            args.rules,
            unix_now(),
        )));
        // Cooldowns of the other workers: from the board when the cluster has one (it also
        // holds those decided before this worker started), else from core NATS gossip.
        let listener = match &args.gossip {
            Some(Gossip {
                board: Some(board), ..
            }) => Some(watch_board(board.clone(), myself.clone()).await?),
            Some(g) => Some(listen(g.clone(), myself.clone()).await?),
            None => None,
        };
        Ok(RouterState {
            table: args.table,
            gossip: args.gossip,
            health,
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
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Remote(event) => {
                let own = state
                    .gossip
                    .as_ref()
                    .is_some_and(|g| g.worker == event.worker);
                if !own
                    && state.health
                    && let Some(d) = state.table.load().deployment(&event.deployment)
                {
                    let cooldown = Duration::from_millis(event.cooldown_ms.min(3_600_000));
                    d.remote_cooldown(cooldown, Instant::now());
                }
            }
            RouterMsg::Board(c) => {
                let own = state.gossip.as_ref().is_some_and(|g| g.worker == c.worker);
                if !own
                    && state.health
                    && let Some(d) = state.table.load().deployment(&c.deployment)
                    && let Some(left) = c.remaining(crate::cluster::epoch_ms())
                {
                    d.remote_cooldown(left.min(Duration::from_secs(3600)), Instant::now());
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
            if let Ok(event) = serde_json::from_slice::<HealthEvent>(&m.payload)
                && router.cast(RouterMsg::Remote(event)).is_err()
            {
                break;
            }
        }
    }))
}
