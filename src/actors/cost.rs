//! The cost actor: totals tokens and US dollars per model group and per deployment, records
//! them as metrics, and publishes one usage event per finished job on `llm.usage.<group>`.

use std::collections::BTreeMap;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::{telemetry, wire::Subjects};

/// One finished job's usage, as published on `llm.usage.<model_group>`.
#[derive(Debug, Clone, Serialize)]
pub struct UsageEvent {
    /// The job id.
    pub job_id: String,
    /// The model group.
    pub model_group: String,
    /// The deployment that served it.
    pub deployment: String,
    /// Prompt tokens (cached ones included).
    pub prompt_tokens: u64,
    /// Prompt tokens read from a cache.
    pub cached_tokens: u64,
    /// Completion tokens (reasoning included).
    pub completion_tokens: u64,
    /// Cost in USD; 0 when the price is unknown.
    pub cost_usd: f64,
    /// Unix time (seconds).
    pub created: u64,
}

/// Totals for one model group or deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Jobs counted.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// USD.
    pub cost_usd: f64,
}

impl Totals {
    fn add(&mut self, e: &UsageEvent) {
        self.requests += 1;
        self.prompt_tokens += e.prompt_tokens;
        self.completion_tokens += e.completion_tokens;
        self.cost_usd += e.cost_usd;
    }
}

/// Totals by model group and by deployment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spend {
    /// By model group.
    pub by_model_group: BTreeMap<String, Totals>,
    /// By deployment.
    pub by_deployment: BTreeMap<String, Totals>,
}

/// Messages the cost actor takes.
pub enum CostMsg {
    /// A job finished.
    Record(UsageEvent),
    /// The totals so far.
    Spend(RpcReplyPort<Spend>),
}

/// The cost actor; its arguments are the NATS client and subjects for usage events.
pub struct CostActor;

impl Actor for CostActor {
    type Msg = CostMsg;
    type State = (async_nats::Client, Subjects, Spend);
    type Arguments = (async_nats::Client, Subjects);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (client, subjects): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok((client, subjects, Spend::default()))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        (client, subjects, spend): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CostMsg::Record(event) => {
                let labels = [
                    ("model_group", event.model_group.clone()),
                    ("deployment", event.deployment.clone()),
                ];
                metrics::counter!(telemetry::TOKENS_IN, &labels).increment(event.prompt_tokens);
                metrics::counter!(telemetry::TOKENS_OUT, &labels)
                    .increment(event.completion_tokens);
                // `metrics` counters are integers: spend is a gauge that only ever grows.
                metrics::gauge!(telemetry::COST_USD, &labels).increment(event.cost_usd);
                spend
                    .by_model_group
                    .entry(event.model_group.clone())
                    .or_default()
                    .add(&event);
                spend
                    .by_deployment
                    .entry(event.deployment.clone())
                    .or_default()
                    .add(&event);
                if let Ok(body) = serde_json::to_vec(&event) {
                    // Fire and forget: usage events must never slow a job down.
                    let _ = client
                        .publish(subjects.usage(&event.model_group), body.into())
                        .await;
                }
            }
            CostMsg::Spend(reply) => {
                let _ = reply.send(spend.clone());
            }
        }
        Ok(())
    }
}
