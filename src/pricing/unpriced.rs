//! Requests to models no price table knows: they cost 0, are counted in
//! `llmbus_unpriced_requests_total{model}`, and each model is warned about once per process.
//!
//! The set of models already warned about is bounded ([`MAX_WARNED`]): past it, further
//! unknown models are still counted but no longer logged, so a misconfiguration cannot grow
//! memory or flood the log. Mock deployments (`mock/...`) are free by definition and are
//! neither counted nor warned about.

use std::{
    collections::HashSet,
    sync::{LazyLock, Mutex},
};

use super::{Price, call_cost};
use crate::{telemetry, wire::openai::Usage};

/// The most distinct models warned about per process.
pub const MAX_WARNED: usize = 1024;

static WARNED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// The cost of an upstream call of `usage` that took `upstream` at `price`
/// ([`super::call_cost`]); without a price, 0, and `model` (the deployment's
/// `litellm_params.model`) is counted and, the first time, warned about.
pub fn cost_or_unpriced(
    price: Option<&Price>,
    model: &str,
    usage: &Usage,
    upstream: std::time::Duration,
) -> f64 {
    match price {
        Some(p) => call_cost(p, usage, upstream),
        None => {
            unpriced(model);
            0.0
        }
    }
}

fn unpriced(model: &str) {
    if model.starts_with("mock/") {
        return;
    }
    metrics::counter!(telemetry::UNPRICED_REQUESTS, "model" => model.to_string()).increment(1);
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.len() >= MAX_WARNED || warned.contains(model) {
        return;
    }
    warned.insert(model.to_string());
    let last = warned.len() == MAX_WARNED;
    drop(warned);
    tracing::warn!(
        model,
        "no price for model {model}: its requests cost 0; add it to the price table \
         (llmbus.price_table) or set input_cost_per_token / output_cost_per_token in the \
         deployment's model_info or litellm_params{}",
        if last {
            " (the last such warning: too many unpriced models)"
        } else {
            ""
        }
    );
}

/// True when `model` has been warned about.
#[cfg(test)]
fn warned_about(model: &str) -> bool {
    WARNED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: std::time::Duration = std::time::Duration::ZERO;

    #[test]
    fn unknown_models_cost_nothing_and_are_remembered() {
        let usage = Usage::new(1_000, 1_000);
        assert_eq!(cost_or_unpriced(None, "acme/unknown-1", &usage, ZERO), 0.0);
        assert!(warned_about("acme/unknown-1"));
        assert_eq!(cost_or_unpriced(None, "mock/demo", &usage, ZERO), 0.0);
        assert!(!warned_about("mock/demo"));
        let p = super::super::lookup("gpt-4o-mini").unwrap();
        assert!(cost_or_unpriced(Some(&p), "openai/gpt-4o-mini", &usage, ZERO) > 0.0);
    }
}
