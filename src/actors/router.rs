//! The router: holds model groups and their deployments, picks a deployment for each attempt
//! of a job, and supervises the deployment actors (a deployment actor that fails is started
//! again with the same settings; its capacity counts restart from zero).
//!
//! Picking in this version is LiteLLM's `simple-shuffle`: a weighted random choice (by
//! `weight`, else `rpm`, else `tpm`) among the group's deployments that have capacity right
//! now, or among all of them when none has.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rand::Rng;

use super::deployment::{DeploymentActor, DeploymentInfo, DeploymentMsg, DeploymentStatus};
use crate::wire::{
    ApiError,
    openai::{Model, ModelList, unix_now},
};

/// The router's arguments: every deployment, the aliases and the fallbacks.
pub struct RouterArgs {
    /// Deployments in configuration order.
    pub deployments: Vec<Arc<DeploymentInfo>>,
    /// `alias → (model group, hidden)`.
    pub aliases: BTreeMap<String, (String, bool)>,
    /// `model group → fallback groups`, in order.
    pub fallbacks: BTreeMap<String, Vec<String>>,
}

/// Messages the router takes.
pub enum RouterMsg {
    /// Pick a deployment of `model` (a group or an alias), avoiding `exclude` when it can.
    Route {
        /// Model group or alias, as the request named it.
        model: String,
        /// Deployment ids that already failed this job.
        exclude: Vec<String>,
        /// The choice, or 404 `model_not_found`.
        reply: RpcReplyPort<Result<Route, ApiError>>,
    },
    /// The model groups in the `/v1/models` shape.
    Models(RpcReplyPort<ModelList>),
    /// Every deployment's state.
    Deployments(RpcReplyPort<Vec<DeploymentStatus>>),
}

/// The router's answer to [`RouterMsg::Route`].
#[derive(Clone)]
pub struct Route {
    /// The model group the request's name resolved to.
    pub group: String,
    /// The group's fallback groups.
    pub fallbacks: Arc<[String]>,
    /// The chosen deployment.
    pub deployment: Arc<DeploymentInfo>,
    /// Its actor.
    pub actor: ActorRef<DeploymentMsg>,
}

/// The router actor.
pub struct RouterActor;

struct Slot {
    info: Arc<DeploymentInfo>,
    actor: ActorRef<DeploymentMsg>,
}

/// The router's state.
pub struct RouterState {
    slots: Vec<Slot>,
    groups: HashMap<String, Vec<usize>>,
    group_order: Vec<String>,
    aliases: BTreeMap<String, (String, bool)>,
    fallbacks: HashMap<String, Arc<[String]>>,
    created: u64,
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
        let mut slots = Vec::with_capacity(args.deployments.len());
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        let mut group_order = Vec::new();
        for info in args.deployments {
            let (actor, _) =
                Actor::spawn_linked(None, DeploymentActor, info.clone(), myself.get_cell()).await?;
            let members = groups.entry(info.model_group.clone()).or_default();
            if members.is_empty() {
                group_order.push(info.model_group.clone());
            }
            members.push(slots.len());
            slots.push(Slot { info, actor });
        }
        let fallbacks = args
            .fallbacks
            .into_iter()
            .map(|(group, list)| (group, Arc::from(list)))
            .collect();
        Ok(RouterState {
            slots,
            groups,
            group_order,
            aliases: args.aliases,
            fallbacks,
            created: unix_now(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Route {
                model,
                exclude,
                reply,
            } => {
                let _ = reply.send(state.route(&model, &exclude));
            }
            RouterMsg::Models(reply) => {
                let _ = reply.send(state.models());
            }
            RouterMsg::Deployments(reply) => {
                // Ask every deployment actor without holding up the router.
                let actors: Vec<_> = state.slots.iter().map(|s| s.actor.clone()).collect();
                tokio::spawn(async move {
                    let mut all = Vec::with_capacity(actors.len());
                    for actor in actors {
                        if let Ok(status) = ractor::call!(actor, DeploymentMsg::Status) {
                            all.push(status);
                        }
                    }
                    let _ = reply.send(all);
                });
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
            let Some(i) = state
                .slots
                .iter()
                .position(|s| s.actor.get_id() == cell.get_id())
            else {
                return Ok(());
            };
            let info = state.slots[i].info.clone();
            tracing::error!(deployment = %info.id, error = %err, "deployment actor failed; restarting it");
            let (actor, _) =
                Actor::spawn_linked(None, DeploymentActor, info, myself.get_cell()).await?;
            state.slots[i].actor = actor;
        }
        Ok(())
    }
}

impl RouterState {
    fn resolve<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        if self.groups.contains_key(model) {
            return Some(model);
        }
        let (group, _) = self.aliases.get(model)?;
        self.groups
            .contains_key(group.as_str())
            .then_some(group.as_str())
    }

    fn route(&self, model: &str, exclude: &[String]) -> Result<Route, ApiError> {
        let group = self
            .resolve(model)
            .ok_or_else(|| ApiError::model_not_found(model))?;
        let members = &self.groups[group];
        let fresh: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| !exclude.contains(&self.slots[i].info.id))
            .collect();
        // Every deployment already failed this job: try them again rather than give up.
        let pool = if fresh.is_empty() { members } else { &fresh };
        let ready: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| self.slots[i].info.live.has_capacity())
            .collect();
        let pool = if ready.is_empty() { pool } else { &ready };
        let chosen = weighted_pick(pool, |i| self.slots[i].info.weight);
        let slot = &self.slots[chosen];
        Ok(Route {
            group: group.to_string(),
            fallbacks: self
                .fallbacks
                .get(group)
                .cloned()
                .unwrap_or_else(|| Arc::from(Vec::new())),
            deployment: slot.info.clone(),
            actor: slot.actor.clone(),
        })
    }

    fn models(&self) -> ModelList {
        let entry = |id: &str| Model {
            id: id.to_string(),
            object: "model".into(),
            created: self.created,
            owned_by: "llmbus".into(),
        };
        let mut data: Vec<Model> = self.group_order.iter().map(|g| entry(g)).collect();
        data.extend(
            self.aliases
                .iter()
                .filter(|(_, (group, hidden))| !hidden && self.groups.contains_key(group))
                .map(|(alias, _)| entry(alias)),
        );
        ModelList {
            object: "list".into(),
            data,
        }
    }
}

/// A weighted random choice among `pool` (never empty); weights ≤ 0 count as tiny.
fn weighted_pick(pool: &[usize], weight: impl Fn(usize) -> f64) -> usize {
    if pool.len() == 1 {
        return pool[0];
    }
    let weights: Vec<f64> = pool.iter().map(|&i| weight(i).max(1e-9)).collect();
    let total: f64 = weights.iter().sum();
    let mut x = rand::rng().random_range(0.0..total);
    for (k, w) in weights.iter().enumerate() {
        if x < *w {
            return pool[k];
        }
        x -= w;
    }
    pool[pool.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_pick_follows_the_weights() {
        let pool = [0usize, 1];
        let weights = [9.0, 1.0];
        let mut counts = [0u32; 2];
        for _ in 0..20_000 {
            counts[weighted_pick(&pool, |i| weights[i])] += 1;
        }
        let share = counts[0] as f64 / 20_000.0;
        assert!(
            (0.85..0.95).contains(&share),
            "share of the heavy one: {share}"
        );
    }

    #[test]
    fn weighted_pick_of_one_is_that_one() {
        assert_eq!(weighted_pick(&[7], |_| 0.0), 7);
    }
}
