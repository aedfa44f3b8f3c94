//! Failover and routing policy, as pure code (no actors, no NATS; time is passed in), so each
//! rule is unit-tested on its own:
//!
//! - [`health`]: when a deployment cools down and comes back (LiteLLM's `allowed_fails`,
//!   `allowed_fails_policy`, failure rate, `cooldown_time`, `Retry-After`), with a half-open
//!   probe after each cooldown;
//! - [`retry`]: how many retries an error class gets (`num_retries`, `retry_policy`), how long
//!   to back off, and which fallback list applies;
//! - [`routing`]: the rules that narrow a group's deployments for one attempt (misconfigured,
//!   health, already failed, tags, context window, capacity) and the routing strategies that
//!   pick among those left;
//! - [`wildcard`]: model groups named by a pattern (`*`, `anthropic/*`) and the upstream model
//!   a request for a matching name gets.

pub mod health;
pub mod retry;
pub mod routing;
pub mod wildcard;

use std::{collections::HashMap, time::Duration};

use crate::{config::Config, providers::ErrorClass};

/// Every policy of one worker, read from `router_settings` (and `litellm_settings`).
#[derive(Debug, Clone)]
pub struct Policies {
    /// Retries and back-off.
    pub retry: retry::RetryPolicy,
    /// Fallback lists.
    pub fallbacks: retry::Fallbacks,
    /// Cooldown thresholds; `None` with `disable_cooldowns`.
    pub health: Option<health::HealthPolicy>,
    /// The routing strategy.
    pub strategy: crate::config::Strategy,
}

impl Policies {
    /// The policies `config` sets, with LiteLLM's defaults for what it leaves out.
    pub fn from_config(config: &Config) -> Self {
        let r = &config.router_settings;
        let rp = &r.retry_policy;
        let retry_classes = [
            (ErrorClass::BadRequest, rp.bad_request_error_retries),
            (ErrorClass::Authentication, rp.authentication_error_retries),
            (ErrorClass::Timeout, rp.timeout_error_retries),
            (ErrorClass::RateLimit, rp.rate_limit_error_retries),
            (
                ErrorClass::ContentPolicyViolation,
                rp.content_policy_violation_error_retries,
            ),
            (ErrorClass::InternalServer, rp.internal_server_error_retries),
        ];
        let ap = &r.allowed_fails_policy;
        let fail_classes = [
            (ErrorClass::BadRequest, ap.bad_request_error_allowed_fails),
            (
                ErrorClass::Authentication,
                ap.authentication_error_allowed_fails,
            ),
            (ErrorClass::Timeout, ap.timeout_error_allowed_fails),
            (ErrorClass::RateLimit, ap.rate_limit_error_allowed_fails),
            (
                ErrorClass::ContentPolicyViolation,
                ap.content_policy_violation_error_allowed_fails,
            ),
            (
                ErrorClass::InternalServer,
                ap.internal_server_error_allowed_fails,
            ),
        ];
        let known = |list: &[(ErrorClass, Option<u32>)]| -> HashMap<ErrorClass, u32> {
            let mut map: HashMap<ErrorClass, u32> = list
                .iter()
                .filter_map(|(c, n)| n.map(|n| (*c, n)))
                .collect();
            // LiteLLM's timeout and server-error classes cover connection errors and broken
            // upstream bodies too.
            if let Some(n) = map.get(&ErrorClass::Timeout).copied() {
                map.entry(ErrorClass::Connection).or_insert(n);
            }
            if let Some(n) = map.get(&ErrorClass::InternalServer).copied() {
                map.entry(ErrorClass::InvalidResponse).or_insert(n);
            }
            map
        };
        let secs = |s: Option<f64>| s.map(|s| Duration::from_secs_f64(s.max(0.0)));
        Self {
            retry: retry::RetryPolicy {
                num_retries: config.num_retries(),
                per_class: known(&retry_classes),
                min_wait: secs(r.retry_after).unwrap_or(Duration::ZERO),
            },
            fallbacks: retry::Fallbacks {
                generic: retry::Fallbacks::merge(&r.fallbacks),
                context_window: retry::Fallbacks::merge(&r.context_window_fallbacks),
                content_policy: retry::Fallbacks::merge(&r.content_policy_fallbacks),
                default: r.default_fallbacks.clone(),
                max: r.max_fallbacks.unwrap_or(0) as usize,
            },
            health: (!r.disable_cooldowns).then(|| health::HealthPolicy {
                allowed_fails: r.allowed_fails.unwrap_or(health::DEFAULT_ALLOWED_FAILS),
                per_class: known(&fail_classes),
                cooldown: secs(r.cooldown_time).unwrap_or(health::DEFAULT_COOLDOWN),
                lone: false,
            }),
            strategy: r
                .routing_strategy
                .as_deref()
                .and_then(|name| {
                    crate::config::Strategy::parse(
                        name,
                        r.routing_strategy_args.lowest_latency_buffer.unwrap_or(0.0),
                    )
                })
                .unwrap_or(crate::config::Strategy::SimpleShuffle),
        }
    }
}
