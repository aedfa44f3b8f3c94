//! From a config to the deployments a worker runs: one [`DeploymentInfo`] per `model_list`
//! entry (its provider built, its price and context window found), and the names the worker
//! takes jobs for.

use std::{sync::Arc, time::Duration};

use super::StartError;
use crate::{
    config::{Config, LitellmParams, deployment_ids},
    policy::{Policies, health::HealthPolicy},
    pricing::PriceTable,
    providers,
    runtime::{
        deployment::{DeploymentInfo, Live},
        table::RoutingRules,
    },
};

/// What a config makes of a worker's routing: its deployments, the routing rules and the
/// health thresholds. Built at start and again on every reload.
pub struct Plan {
    /// One per `model_list` entry, in order.
    pub deployments: Vec<Arc<DeploymentInfo>>,
    /// Aliases, strategy, filters.
    pub rules: RoutingRules,
    /// Cooldown thresholds; `None` when cooldowns are disabled.
    pub health: Option<HealthPolicy>,
}

impl Plan {
    /// The plan of `config`, with providers on the shared `http` pool.
    pub fn of(config: &Config, http: &reqwest::Client) -> Result<Self, StartError> {
        let prices = match &config.llmbus.price_table {
            Some(path) => {
                let table = PriceTable::load(std::path::Path::new(path))?;
                tracing::info!(
                    path = %path,
                    models = table.from_file(),
                    "loaded {} model prices from {path}",
                    table.from_file()
                );
                table
            }
            None => PriceTable::builtin(),
        };
        let deployments = deployments(config, http, &prices)?;
        if deployments.is_empty() {
            return Err(StartError::NoDeployments);
        }
        let policies = Policies::from_config(config);
        let aliases = config
            .router_settings
            .model_group_alias
            .iter()
            .map(|(alias, t)| (alias.clone(), (t.group().to_string(), t.hidden())))
            .collect();
        Ok(Self {
            deployments,
            rules: RoutingRules {
                aliases,
                strategy: policies.strategy,
                tag_filtering: config.router_settings.enable_tag_filtering,
                pre_call_checks: config.router_settings.enable_pre_call_checks,
                health: policies.health.is_some(),
            },
            health: policies.health,
        })
    }
}

/// What makes a deployment what it is, as a digest: its id and entry (secrets included, by
/// value), the settings every deployment takes from the rest of the config, and its price. A
/// reload keeps a running deployment (its capacity, health and actor) when this is unchanged.
fn identity(id: &str, config: &Config, entry_index: usize, extra: &str) -> String {
    let entry = &config.model_list[entry_index];
    let mut view = entry.clone();
    view.location = None;
    let secrets: Vec<&str> = secrets_of(&entry.litellm_params);
    let text = format!(
        "{id}|{view:?}|{secrets:?}|{:?}|{:?}|{extra}",
        config.router_settings, config.litellm_settings
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret values of a deployment's parameters (they print as `***`, so a key change would
/// otherwise go unseen).
fn secrets_of(p: &LitellmParams) -> Vec<&str> {
    [
        &p.api_key,
        &p.vertex_credentials,
        &p.aws_access_key_id,
        &p.aws_secret_access_key,
        &p.aws_session_token,
    ]
    .into_iter()
    .flatten()
    .map(|s| s.expose())
    .collect()
}

/// The model names a worker takes jobs for: its groups (wildcard patterns included) and their
/// aliases, as announced to the cluster.
pub fn served_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let groups = config.model_list.iter().map(|m| m.model_name.clone());
    let aliases = config.router_settings.model_group_alias.keys().cloned();
    for name in groups.chain(aliases) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// One [`DeploymentInfo`] per `model_list` entry, with the ids of
/// [`crate::config::deployment_ids`].
pub(super) fn deployments(
    config: &Config,
    http: &reqwest::Client,
    prices: &PriceTable,
) -> Result<Vec<Arc<DeploymentInfo>>, StartError> {
    let mut out = Vec::new();
    let ids = deployment_ids(config);
    for ((index, entry), id) in config.model_list.iter().enumerate().zip(ids) {
        let mut params = entry.litellm_params.clone();
        params.drop_params = params
            .drop_params
            .or(Some(config.litellm_settings.drop_params));
        let p = &params;
        let prepared = providers::prepare(entry, p, http);
        prepared.warn(&id, entry.location.as_deref());
        let rpm = entry.rpm();
        let tpm = entry.tpm();
        let weight = p
            .weight
            .or(rpm.map(|r| r as f64))
            .or(tpm.map(|t| t as f64))
            .unwrap_or(1.0);
        let price_model = entry.model_info.base_model.as_deref().unwrap_or(&p.model);
        let price = prices.price_with(price_model, price_overrides(entry));
        let identity = identity(&id, config, index, &format!("{price:?}"));
        out.push(Arc::new(DeploymentInfo {
            identity,
            id,
            model_group: entry.model_name.clone(),
            model: p.model.clone(),
            upstream_model: prepared.upstream_model,
            provider: prepared.provider,
            timeout: p.timeout.map(Duration::from_secs_f64),
            stream_timeout: p
                .stream_timeout
                .or(config.router_settings.stream_timeout)
                .map(Duration::from_secs_f64),
            weight,
            price,
            rpm,
            tpm,
            max_parallel: p.max_parallel_requests,
            tags: p.tags.clone(),
            max_input_tokens: entry
                .model_info
                .max_input_tokens
                .or_else(|| prices.max_input_tokens(price_model)),
            misconfigured: prepared.misconfigured,
            live: Live::default(),
        }));
    }
    Ok(out)
}

/// A deployment's own prices: `model_info`'s, else `litellm_params`' (where LiteLLM's custom
/// pricing documentation puts them).
fn price_overrides(entry: &crate::config::ModelEntry) -> crate::pricing::PriceOverrides {
    let (info, params) = (&entry.model_info, &entry.litellm_params);
    let of = |i: Option<f64>, o: Option<f64>, is: Option<f64>, os: Option<f64>| {
        crate::pricing::PriceOverrides {
            input_per_token: i,
            output_per_token: o,
            input_per_second: is,
            output_per_second: os,
        }
    };
    of(
        info.input_cost_per_token,
        info.output_cost_per_token,
        info.input_cost_per_second,
        info.output_cost_per_second,
    )
    .or(of(
        params.input_cost_per_token,
        params.output_cost_per_token,
        params.input_cost_per_second,
        params.output_cost_per_second,
    ))
}
