//! The router: holds model groups and their deployments, picks a deployment for each attempt
//! of a job, and supervises the deployment actors (a deployment actor that fails is started
//! again with the same settings; its counts restart from zero).
//!
//! A request's model names a group, an alias of one, or else matches a wildcard group
//! ([`crate::policy::wildcard`], most specific pattern first). A pick narrows the group's
//! deployments step by step, then lets the routing strategy ([`crate::policy::routing`])
//! choose:
//! 0. not misconfigured (a group with nothing else answers a 500 naming the reasons);
//! 1. not already failed for this job (unless all have: then all again);
//! 2. healthy — a cooling-down deployment gets nothing, a half-open one gets exactly one probe;
//! 3. with `enable_tag_filtering`: tagged with one of the request's `Llm-Tags`, or `default`
//!    when the request has none;
//! 4. with `enable_pre_call_checks`: a context window (`model_info.max_input_tokens`) that
//!    fits the prompt;
//! 5. with capacity right now, when any has.
//!
//! The router also listens on `llm.health.*` for cooldowns other workers saw, and passes them
//! to the local deployment actors.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::deployment::{
    DeploymentActor, DeploymentArgs, DeploymentInfo, DeploymentMsg, DeploymentStatus, Gossip,
    HealthEvent,
};
use crate::{
    policy::{
        health::{HealthPolicy, HealthState},
        routing::{self, Candidate, Strategy},
        wildcard::Wildcards,
    },
    pricing::{self, Price},
    providers::misconfigured,
    wire::{
        ApiError,
        openai::{Model, ModelList, unix_now},
    },
};

/// How long a half-open deployment's probe may take before another job may probe it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The router's arguments.
pub struct RouterArgs {
    /// Deployments in configuration order.
    pub deployments: Vec<Arc<DeploymentInfo>>,
    /// `alias → (model group, hidden)`.
    pub aliases: BTreeMap<String, (String, bool)>,
    /// The routing strategy.
    pub strategy: Strategy,
    /// `enable_tag_filtering`.
    pub tag_filtering: bool,
    /// `enable_pre_call_checks`.
    pub pre_call_checks: bool,
    /// Health thresholds for every deployment; `None` disables cooldowns.
    pub health: Option<HealthPolicy>,
    /// Cooldown gossip with the other workers; `None` keeps health local.
    pub gossip: Option<Gossip>,
}

/// What a job asks the router.
#[derive(Debug, Clone)]
pub struct RouteRequest {
    /// Model group or alias, as the request named it.
    pub model: String,
    /// Deployment ids that already failed this job.
    pub exclude: Vec<String>,
    /// The request's `Llm-Tags`.
    pub tags: Vec<String>,
    /// The prompt's estimated tokens, for pre-call checks.
    pub prompt_tokens: u64,
    /// True for streams (latency routing then looks at time to first token).
    pub stream: bool,
}

/// Messages the router takes.
pub enum RouterMsg {
    /// Pick a deployment.
    Route(RouteRequest, RpcReplyPort<Result<Route, RouteError>>),
    /// The model groups in the `/v1/models` shape.
    Models(RpcReplyPort<ModelList>),
    /// Every deployment's state.
    Deployments(RpcReplyPort<Vec<DeploymentStatus>>),
    /// A cooldown another worker announced.
    Remote(HealthEvent),
}

/// The router's answer to [`RouterMsg::Route`].
#[derive(Clone)]
pub struct Route {
    /// The model group the request's name resolved to.
    pub group: String,
    /// The chosen deployment.
    pub deployment: Arc<DeploymentInfo>,
    /// The model name to send upstream: the deployment's, or for a wildcard group the one the
    /// request's model resolved to ([`crate::policy::wildcard`]).
    pub upstream_model: String,
    /// The price of the call: the deployment's, or for a wildcard deployment without one the
    /// price of the model the request resolved to.
    pub price: Option<Price>,
    /// Its actor.
    pub actor: ActorRef<DeploymentMsg>,
    /// False when the deployment already failed this job (nothing else was left).
    pub fresh: bool,
}

/// Why no deployment was picked.
#[derive(Debug, Clone)]
pub enum RouteError {
    /// No such model group or alias (404).
    UnknownModel(ApiError),
    /// The group exists but no deployment can take the job now: all cooling down, a probe
    /// already out, or none with a matching tag. `retry_in` is when one may be back.
    Unavailable {
        /// The resolved group.
        group: String,
        /// The error the client gets when nothing else works.
        error: ApiError,
        /// When a cooling-down deployment comes back, if one will.
        retry_in: Option<Duration>,
    },
    /// No deployment's context window fits the prompt (pre-call check).
    ContextWindow {
        /// The resolved group.
        group: String,
        /// The error the client gets when no fallback fits either.
        error: ApiError,
    },
}

/// The router actor.
pub struct RouterActor;

struct Slot {
    info: Arc<DeploymentInfo>,
    actor: ActorRef<DeploymentMsg>,
    /// When a half-open probe went out, and for which cooldown (its end, in epoch ms).
    probe: Option<(Instant, u64)>,
}

/// The router's state.
pub struct RouterState {
    slots: Vec<Slot>,
    by_id: HashMap<String, usize>,
    groups: HashMap<String, Vec<usize>>,
    group_order: Vec<String>,
    wildcards: Wildcards,
    aliases: BTreeMap<String, (String, bool)>,
    strategy: Strategy,
    tag_filtering: bool,
    pre_call_checks: bool,
    health: Option<HealthPolicy>,
    gossip: Option<Gossip>,
    listener: Option<tokio::task::JoinHandle<()>>,
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
        let mut state = RouterState {
            slots: Vec::with_capacity(args.deployments.len()),
            by_id: HashMap::new(),
            groups: HashMap::new(),
            group_order: Vec::new(),
            wildcards: Wildcards::default(),
            aliases: args.aliases,
            strategy: args.strategy,
            tag_filtering: args.tag_filtering,
            pre_call_checks: args.pre_call_checks,
            health: args.health,
            gossip: args.gossip,
            listener: None,
            created: unix_now(),
        };
        for info in args.deployments {
            let actor = state.spawn(&myself, info.clone()).await?;
            let members = state.groups.entry(info.model_group.clone()).or_default();
            if members.is_empty() {
                state.group_order.push(info.model_group.clone());
            }
            members.push(state.slots.len());
            state.by_id.insert(info.id.clone(), state.slots.len());
            state.slots.push(Slot {
                info,
                actor,
                probe: None,
            });
        }
        state.wildcards = Wildcards::new(state.group_order.iter().map(String::as_str));
        if let Some(g) = &state.gossip {
            state.listener = Some(listen(g.clone(), myself.clone()).await?);
        }
        Ok(state)
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
            RouterMsg::Route(request, reply) => {
                let _ = reply.send(state.route(&request, Instant::now()));
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
            RouterMsg::Remote(event) => {
                let own = state
                    .gossip
                    .as_ref()
                    .is_some_and(|g| g.worker == event.worker);
                if !own
                    && state.health.is_some()
                    && let Some(&i) = state.by_id.get(&event.deployment)
                {
                    let cooldown = Duration::from_millis(event.cooldown_ms.min(3_600_000));
                    let _ = state.slots[i]
                        .actor
                        .cast(DeploymentMsg::RemoteCooldown { cooldown });
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
            let Some(i) = state
                .slots
                .iter()
                .position(|s| s.actor.get_id() == cell.get_id())
            else {
                return Ok(());
            };
            let info = state.slots[i].info.clone();
            tracing::error!(deployment = %info.id, error = %err, "deployment actor failed; restarting it");
            state.slots[i].actor = state.spawn(&myself, info).await?;
        }
        Ok(())
    }
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

impl RouterState {
    async fn spawn(
        &self,
        myself: &ActorRef<RouterMsg>,
        info: Arc<DeploymentInfo>,
    ) -> Result<ActorRef<DeploymentMsg>, ActorProcessingErr> {
        let args = DeploymentArgs {
            info,
            policy: self.health.clone().unwrap_or_default(),
            gossip: self.gossip.clone(),
        };
        let (actor, _) =
            Actor::spawn_linked(None, DeploymentActor, args, myself.get_cell()).await?;
        Ok(actor)
    }

    fn resolve<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        if self.groups.contains_key(model) {
            return Some(model);
        }
        let (group, _) = self.aliases.get(model)?;
        self.groups
            .contains_key(group.as_str())
            .then_some(group.as_str())
    }

    // The result travels in a message right away; boxing the error would only add an allocation.
    #[allow(clippy::result_large_err)]
    fn route(&mut self, req: &RouteRequest, now: Instant) -> Result<Route, RouteError> {
        // An exact group or alias first, else the most specific wildcard group.
        let (group, wildcard) = match self.resolve(&req.model) {
            Some(group) => (group.to_string(), None),
            None => match self.wildcards.resolve(&req.model) {
                Some(m) => (m.group.clone(), Some(m)),
                None => {
                    return Err(RouteError::UnknownModel(ApiError::model_not_found(
                        &req.model,
                    )));
                }
            },
        };
        // 0. Never a misconfigured deployment; a group of nothing else answers why.
        let all = &self.groups[&group];
        let members: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| self.slots[i].info.misconfigured.is_none())
            .collect();
        if members.is_empty() {
            let reasons: Vec<(&str, &str)> = all
                .iter()
                .map(|&i| {
                    let info = &self.slots[i].info;
                    (
                        info.id.as_str(),
                        info.misconfigured.as_deref().unwrap_or(""),
                    )
                })
                .collect();
            let error = misconfigured::group_error(&group, &reasons);
            return Err(RouteError::Unavailable {
                group,
                error,
                retry_in: None,
            });
        }

        // 1. Not already failed for this job, unless every one has.
        let fresh: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| !req.exclude.contains(&self.slots[i].info.id))
            .collect();
        let (mut pool, is_fresh) = if fresh.is_empty() {
            (members.clone(), false)
        } else {
            (fresh, true)
        };

        // 2. Healthy, or half-open with no probe out yet.
        if self.health.is_some() {
            let healthy: Vec<usize> = pool
                .iter()
                .copied()
                .filter(|&i| self.available(i, now))
                .collect();
            if healthy.is_empty() {
                let retry_in = pool
                    .iter()
                    .map(|&i| self.slots[i].info.live.cooldown_left(now))
                    .filter(|d| !d.is_zero())
                    .min();
                let error = ApiError::rate_limited(format!(
                    "no healthy deployment in model group `{group}`: all are cooling down after failures{}",
                    retry_in.map_or(String::new(), |d| format!("; retry in {} ms", d.as_millis()))
                ))
                .with_code("no_healthy_deployment");
                return Err(RouteError::Unavailable {
                    group,
                    error,
                    retry_in,
                });
            }
            pool = healthy;
        }

        // 3. Tags.
        if self.tag_filtering {
            let tagged: Vec<usize> = if req.tags.is_empty() {
                let defaults: Vec<usize> = pool
                    .iter()
                    .copied()
                    .filter(|&i| self.slots[i].info.tags.iter().any(|t| t == "default"))
                    .collect();
                if defaults.is_empty() {
                    pool.clone()
                } else {
                    defaults
                }
            } else {
                pool.iter()
                    .copied()
                    .filter(|&i| self.slots[i].info.tags.iter().any(|t| req.tags.contains(t)))
                    .collect()
            };
            if tagged.is_empty() {
                let error = ApiError::bad_request(format!(
                    "no deployment of model group `{group}` has any of the tags {:?}",
                    req.tags
                ))
                .with_code("no_deployment_for_tags");
                return Err(RouteError::Unavailable {
                    group,
                    error,
                    retry_in: None,
                });
            }
            pool = tagged;
        }

        // 4. Context window.
        if self.pre_call_checks {
            let fits: Vec<usize> = pool
                .iter()
                .copied()
                .filter(|&i| {
                    self.slots[i]
                        .info
                        .max_input_tokens
                        .is_none_or(|max| req.prompt_tokens <= max)
                })
                .collect();
            if fits.is_empty() {
                let error = ApiError::bad_request(format!(
                    "the prompt (about {} tokens) exceeds the context window of every deployment of `{group}`",
                    req.prompt_tokens
                ))
                .with_param("messages")
                .with_code("context_length_exceeded");
                return Err(RouteError::ContextWindow { group, error });
            }
            pool = fits;
        }

        // 5. Capacity now, when any has it.
        let ready: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| self.slots[i].info.live.has_capacity())
            .collect();
        if !ready.is_empty() {
            pool = ready;
        }

        let candidates: Vec<Candidate> = pool
            .iter()
            .map(|&i| candidate(&self.slots[i].info, req.stream))
            .collect();
        let chosen = pool[routing::pick(self.strategy, &candidates, routing::random())];
        let slot = &mut self.slots[chosen];
        if slot.info.live.health(now) == HealthState::HalfOpen {
            let until = slot
                .info
                .live
                .cooling_until_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            slot.probe = Some((now, until));
        }
        let (upstream_model, price) = match &wildcard {
            Some(m) => (
                m.upstream(&slot.info.upstream_model),
                slot.info
                    .price
                    .or_else(|| pricing::lookup(&m.upstream(&slot.info.model))),
            ),
            None => (slot.info.upstream_model.clone(), slot.info.price),
        };
        Ok(Route {
            group,
            upstream_model,
            price,
            deployment: slot.info.clone(),
            actor: slot.actor.clone(),
            fresh: is_fresh,
        })
    }

    /// True when slot `i` may take a job now: healthy, or half-open with no probe out.
    fn available(&self, i: usize, now: Instant) -> bool {
        let slot = &self.slots[i];
        match slot.info.live.health(now) {
            HealthState::Healthy => true,
            HealthState::CoolingDown | HealthState::Misconfigured => false,
            HealthState::HalfOpen => {
                let until = slot
                    .info
                    .live
                    .cooling_until_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                match slot.probe {
                    Some((sent, for_until)) if for_until == until => {
                        now.duration_since(sent) > PROBE_TIMEOUT
                    }
                    _ => true,
                }
            }
        }
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

fn candidate(info: &DeploymentInfo, stream: bool) -> Candidate {
    use std::sync::atomic::Ordering::Relaxed;
    let live = &info.live;
    let ttft = live.ttft_ewma_us.load(Relaxed);
    Candidate {
        weight: info.weight,
        in_flight: live.in_flight.load(Relaxed),
        latency_us: if stream && ttft > 0 {
            ttft
        } else {
            live.latency_ewma_us.load(Relaxed)
        },
        tpm_used: live.tpm_used.load(Relaxed),
        rpm_used: live.rpm_used.load(Relaxed),
        price: info
            .price
            .as_ref()
            .map(|p| p.input_per_token + p.output_per_token),
    }
}
