//! The routing table: model groups, aliases and their deployments, as one immutable snapshot.
//!
//! The router actor builds it and publishes it through an `ArcSwap`; every job reads the
//! current snapshot and picks its deployment with [`RoutingTable::route`] without a message
//! to anyone. A request's model names a group, an alias of one, or else matches a wildcard
//! group ([`crate::policy::wildcard`], most specific pattern first). A pick reads each of the
//! group's deployments once ([`routing::Member`]: health, tags, context window, capacity),
//! lets the rules of [`crate::policy::routing`] narrow them ([`routing::narrow`]: not
//! misconfigured, healthy, not failed yet for this job, tags, context window, capacity) and
//! the routing strategy choose ([`routing::pick`]), then claims the chosen one (a half-open
//! deployment takes exactly one probe).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use super::deployment::{Deployment, DeploymentInfo, DeploymentStatus};
use crate::{
    config::Strategy,
    policy::{
        routing::{self, Ask, Candidate, Filters, Member, Pool, Refusal},
        wildcard::{Match, Wildcards},
    },
    pricing::{self, Price},
    wire::{
        ApiError,
        openai::{Model, ModelList},
    },
};

/// How the table routes.
#[derive(Debug, Clone)]
pub struct RoutingRules {
    /// `alias → (model group, hidden)`.
    pub aliases: BTreeMap<String, (String, bool)>,
    /// The routing strategy.
    pub strategy: Strategy,
    /// `enable_tag_filtering`.
    pub tag_filtering: bool,
    /// `enable_pre_call_checks`.
    pub pre_call_checks: bool,
    /// False when cooldowns are disabled.
    pub health: bool,
}

/// What a job asks of the table.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Model group or alias, as the request named it.
    pub model: &'a str,
    /// Deployment ids that already failed this job.
    pub exclude: &'a [String],
    /// The request's `Llm-Tags`.
    pub tags: &'a [String],
    /// The prompt's estimated tokens, for pre-call checks.
    pub prompt_tokens: u64,
    /// True for streams (latency routing then looks at time to first token).
    pub stream: bool,
}

/// The table's answer to [`RoutingTable::route`].
#[derive(Clone)]
pub struct Route {
    /// The model group the request's name resolved to.
    pub group: Arc<str>,
    /// The chosen deployment.
    pub deployment: Arc<Deployment>,
    /// For a wildcard group, the model name to send upstream (the one the request's model
    /// resolved to); `None` sends the deployment's own.
    pub wildcard_model: Option<String>,
    /// The price of the call: the deployment's, or for a wildcard deployment without one the
    /// price of the model the request resolved to.
    pub price: Option<Price>,
    /// False when the deployment already failed this job (nothing else was left).
    pub fresh: bool,
}

impl Route {
    /// The chosen deployment's facts.
    pub fn info(&self) -> &DeploymentInfo {
        &self.deployment.info
    }

    /// The model name the provider gets.
    pub fn upstream_model(&self) -> &str {
        self.wildcard_model
            .as_deref()
            .unwrap_or(&self.deployment.info.upstream_model)
    }
}

/// Why no deployment was picked.
#[derive(Debug, Clone)]
pub enum RouteError {
    /// No such model group or alias (404).
    UnknownModel(ApiError),
    /// The group exists but no deployment can take the job now: all misconfigured, all
    /// cooling down (or their probe out), or none with a matching tag. `retry_in` is when one
    /// may be back (the `Retry-After` of the answer), for cooldowns.
    Unavailable {
        /// The resolved group.
        group: Arc<str>,
        /// The error the client gets when nothing else works.
        error: ApiError,
        /// When a cooling-down deployment comes back, if one will.
        retry_in: Option<Duration>,
    },
    /// No deployment's context window fits the prompt (pre-call check).
    ContextWindow {
        /// The resolved group.
        group: Arc<str>,
        /// The error the client gets when no fallback fits either.
        error: ApiError,
    },
}

/// Model groups → deployments, fixed once built.
pub struct RoutingTable {
    deployments: Vec<Arc<Deployment>>,
    by_id: HashMap<String, usize>,
    groups: HashMap<Arc<str>, Vec<usize>>,
    group_order: Vec<Arc<str>>,
    wildcards: Wildcards,
    rules: RoutingRules,
    created: u64,
}

impl RoutingTable {
    /// A table of `deployments` (configuration order) under `rules`.
    pub fn new(deployments: Vec<Arc<Deployment>>, rules: RoutingRules, created: u64) -> Self {
        let mut groups: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        let mut group_order: Vec<Arc<str>> = Vec::new();
        let mut by_id = HashMap::new();
        for (i, d) in deployments.iter().enumerate() {
            by_id.insert(d.info.id.clone(), i);
            let name = d.info.model_group.as_str();
            match groups.get_mut(name) {
                Some(members) => members.push(i),
                None => {
                    let name: Arc<str> = Arc::from(name);
                    group_order.push(name.clone());
                    groups.insert(name, vec![i]);
                }
            }
        }
        let wildcards = Wildcards::new(group_order.iter().map(|g| &**g));
        Self {
            deployments,
            by_id,
            groups,
            group_order,
            wildcards,
            rules,
            created,
        }
    }

    /// The same table (rules, creation time) over `deployments`, which replace this table's.
    pub fn rebuilt(&self, deployments: Vec<Arc<Deployment>>) -> Self {
        Self::new(deployments, self.rules.clone(), self.created)
    }

    /// Every deployment, in configuration order.
    pub fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
    }

    /// The deployment with id `id`.
    pub fn deployment(&self, id: &str) -> Option<&Arc<Deployment>> {
        self.by_id.get(id).map(|&i| &self.deployments[i])
    }

    /// True when `model` names a group, an alias of one, or matches a wildcard group.
    pub fn serves(&self, model: &str) -> bool {
        self.resolve(model).is_some()
    }

    /// The group `model` names (exactly or by an alias), else the most specific wildcard
    /// group it matches.
    fn resolve(&self, model: &str) -> Option<(&Arc<str>, &[usize], Option<Match>)> {
        let named = self.groups.get_key_value(model).or_else(|| {
            let (group, _) = self.rules.aliases.get(model)?;
            self.groups.get_key_value(group.as_str())
        });
        if let Some((name, members)) = named {
            return Some((name, members, None));
        }
        let m = self.wildcards.resolve(model)?;
        let (name, members) = self.groups.get_key_value(m.group.as_str())?;
        Some((name, members, Some(m)))
    }

    /// Picks a deployment for one attempt of a job.
    // The result is used at once; boxing the error would only add an allocation.
    #[allow(clippy::result_large_err)]
    pub fn route(&self, req: &RouteRequest<'_>, now: Instant) -> Result<Route, RouteError> {
        let Some((group, all, wildcard)) = self.resolve(req.model) else {
            return Err(RouteError::UnknownModel(ApiError::model_not_found(
                req.model,
            )));
        };
        let dep = |i: usize| &self.deployments[i];
        let health = self.rules.health;
        let members: Vec<Member<'_>> = all.iter().map(|&i| member(dep(i), health, now)).collect();
        let filters = Filters {
            health,
            tag_filtering: self.rules.tag_filtering,
            pre_call_checks: self.rules.pre_call_checks,
        };
        let ask = Ask {
            exclude: req.exclude,
            tags: req.tags,
            prompt_tokens: req.prompt_tokens,
        };
        let Pool {
            members: pool,
            fresh,
        } = match routing::narrow(group, &members, filters, &ask) {
            Ok(pool) => pool,
            Err(refusal) => return Err(self.refused(group, req, all, refusal, now)),
        };
        let mut pool: Vec<usize> = pool.into_iter().map(|k| all[k]).collect();

        loop {
            let chosen = if pool.len() == 1 {
                pool[0]
            } else {
                let candidates: Vec<Candidate> = pool
                    .iter()
                    .map(|&i| candidate(&dep(i).info, req.stream))
                    .collect();
                pool[routing::pick(self.rules.strategy, &candidates, routing::random())]
            };
            // A half-open deployment takes exactly one probe: another job may have taken it
            // since the health filter looked.
            if !self.rules.health || dep(chosen).claim(now) {
                let info = &dep(chosen).info;
                let (wildcard_model, price) = match &wildcard {
                    Some(m) => (
                        Some(m.upstream(&info.upstream_model)),
                        info.price
                            .or_else(|| pricing::lookup(&m.upstream(&info.model))),
                    ),
                    None => (None, info.price),
                };
                return Ok(Route {
                    group: group.clone(),
                    deployment: dep(chosen).clone(),
                    wildcard_model,
                    price,
                    fresh,
                });
            }
            pool.retain(|&i| i != chosen);
            if pool.is_empty() {
                // Every one left was half-open and another job took its probe meanwhile.
                return Err(self.all_cooling(group, req, &[chosen], now));
            }
        }
    }

    /// The error for a refusal of the rules; `all` are the group's deployments, which the
    /// refusal's indexes point into.
    fn refused(
        &self,
        group: &Arc<str>,
        req: &RouteRequest<'_>,
        all: &[usize],
        refusal: Refusal,
        now: Instant,
    ) -> RouteError {
        match refusal {
            Refusal::Misconfigured(error) | Refusal::NoTag(error) => RouteError::Unavailable {
                group: group.clone(),
                error,
                retry_in: None,
            },
            Refusal::ContextWindow(error) => RouteError::ContextWindow {
                group: group.clone(),
                error,
            },
            Refusal::AllCooling(cooling) => {
                let cooling: Vec<usize> = cooling.into_iter().map(|k| all[k]).collect();
                self.all_cooling(group, req, &cooling, now)
            }
        }
    }

    /// The answer when no deployment of `group` can take a job now (`cooling` are the ones
    /// that are cooling down or have their probe out): LiteLLM's 429, with the time until the
    /// first of them comes back (at least a second; a probe out decides within its call).
    fn all_cooling(
        &self,
        group: &Arc<str>,
        req: &RouteRequest<'_>,
        cooling: &[usize],
        now: Instant,
    ) -> RouteError {
        let dep = |i: usize| &self.deployments[i];
        let retry_in = cooling
            .iter()
            .map(|&i| dep(i).info.live.cooldown_left(now))
            .filter(|left| !left.is_zero())
            .min()
            .unwrap_or(Duration::from_secs(1));
        let ids: Vec<&str> = cooling.iter().map(|&i| dep(i).info.id.as_str()).collect();
        RouteError::Unavailable {
            group: group.clone(),
            error: routing::no_deployments_available(
                req.model,
                retry_in,
                self.rules.pre_call_checks,
                &ids,
            ),
            retry_in: Some(retry_in),
        }
    }

    /// The model groups and visible aliases, in the `/v1/models` shape.
    pub fn models(&self) -> ModelList {
        let entry = |id: &str| Model {
            id: id.to_string(),
            object: "model".into(),
            created: self.created,
            owned_by: "llmbus".into(),
        };
        let mut data: Vec<Model> = self.group_order.iter().map(|g| entry(g)).collect();
        data.extend(
            self.rules
                .aliases
                .iter()
                .filter(|(_, (group, hidden))| !hidden && self.groups.contains_key(group.as_str()))
                .map(|(alias, _)| entry(alias)),
        );
        ModelList {
            object: "list".into(),
            data,
        }
    }

    /// Every deployment's state, for `llm.deployments`.
    pub fn statuses(&self, now: Instant) -> Vec<DeploymentStatus> {
        self.deployments.iter().map(|d| d.status(now)).collect()
    }
}

/// What the rules read of `d` now; its health only with cooldowns on (`health`).
fn member(d: &Deployment, health: bool, now: Instant) -> Member<'_> {
    let info = &d.info;
    Member {
        id: &info.id,
        misconfigured: info.misconfigured.as_deref(),
        available: !health || (info.misconfigured.is_none() && d.available(now)),
        tags: &info.tags,
        max_input_tokens: info.max_input_tokens,
        has_capacity: info.live.has_capacity(),
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
