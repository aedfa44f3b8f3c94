//! Routing rules: which of a group's deployments gets the next attempt of a job. The rules are
//! pure: they read a snapshot of each deployment ([`Member`]) and never touch it. The routing
//! table (`runtime::table`) gathers the snapshot, calls [`narrow`] and [`pick`], and claims the
//! chosen deployment's half-open probe.
//!
//! [`narrow`] keeps, step by step:
//! 0. the deployments not misconfigured (a group with nothing else answers a 500 naming the
//!    reasons);
//! 1. the healthy ones — a cooling-down deployment gets nothing, a half-open one exactly one
//!    probe; when none is, the pick fails at once with LiteLLM's 429 "No deployments available
//!    for selected model, Try again in N seconds…" ([`no_deployments_available`]; N: the first
//!    cooldown's end), so the job falls back or answers without waiting for a cooldown;
//! 2. those not already failed for this job (unless every healthy one has: then those again);
//! 3. with `enable_tag_filtering`: those tagged with one of the request's `Llm-Tags`, or
//!    `default` when the request has none;
//! 4. with `enable_pre_call_checks`: those whose context window (`model_info.max_input_tokens`)
//!    fits the prompt;
//! 5. those with capacity right now, when any has.
//!
//! Then the routing strategy ([`pick`]) chooses among them:
//!
//! | `routing_strategy` | picks |
//! |---|---|
//! | `simple-shuffle` (default) | at random, weighted by `weight`, else `rpm`, else `tpm` |
//! | `least-busy` | the fewest calls in flight |
//! | `latency-based-routing` | the lowest moving-average latency (time to first token for streams); `routing_strategy_args.lowest_latency_buffer` spreads load over those within that share of the best |
//! | `usage-based-routing-v2` | the lowest TPM use in the current minute, then RPM use |
//! | `cost-based-routing` | the cheapest per token by the price table (unknown prices last) |

use std::time::Duration;

use rand::Rng;

use crate::{config::Strategy, providers::misconfigured, wire::ApiError};

/// The `router_settings` the narrowing rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filters {
    /// False when cooldowns are disabled (rule 1 keeps every deployment).
    pub health: bool,
    /// `enable_tag_filtering` (rule 3).
    pub tag_filtering: bool,
    /// `enable_pre_call_checks` (rule 4).
    pub pre_call_checks: bool,
}

/// What the rules read of one deployment of the group, at the moment of the pick.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// The deployment's id.
    pub id: &'a str,
    /// Why the deployment cannot work, when it cannot (rule 0).
    pub misconfigured: Option<&'a str>,
    /// Healthy, or half-open with no probe out (rule 1); read only with cooldowns on.
    pub available: bool,
    /// Its `tags` (rule 3).
    pub tags: &'a [String],
    /// Its context window, when known (rule 4).
    pub max_input_tokens: Option<u64>,
    /// It can take a call right now (rule 5).
    pub has_capacity: bool,
}

/// What a job asks of the rules.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Deployment ids that already failed this job.
    pub exclude: &'a [String],
    /// The request's `Llm-Tags`.
    pub tags: &'a [String],
    /// The prompt's estimated tokens.
    pub prompt_tokens: u64,
}

/// The deployments left for the strategy: indexes into the members [`narrow`] was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Never empty.
    pub members: Vec<usize>,
    /// False when every one left already failed this job (nothing else was left).
    pub fresh: bool,
}

/// Why no deployment of the group can take the job.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Rule 0: every deployment is misconfigured; the 500 naming why.
    Misconfigured(ApiError),
    /// Rule 1: none is healthy; the members (indexes) cooling down or with their probe out.
    AllCooling(Vec<usize>),
    /// Rule 3: none has any of the request's tags; the 400.
    NoTag(ApiError),
    /// Rule 4: no context window fits the prompt; the 400.
    ContextWindow(ApiError),
}

/// Rules 0–5: the members of `group` that may take the next attempt of a job.
// The result is used at once; boxing the error would only add an allocation.
#[allow(clippy::result_large_err)]
pub fn narrow(
    group: &str,
    members: &[Member<'_>],
    filters: Filters,
    ask: &Ask<'_>,
) -> Result<Pool, Refusal> {
    // 0. Never a misconfigured deployment; a group of nothing else answers why.
    let usable: Vec<usize> = (0..members.len())
        .filter(|&k| members[k].misconfigured.is_none())
        .collect();
    if usable.is_empty() {
        let reasons: Vec<(&str, &str)> = members
            .iter()
            .map(|m| (m.id, m.misconfigured.unwrap_or("")))
            .collect();
        return Err(Refusal::Misconfigured(misconfigured::group_error(
            group, &reasons,
        )));
    }

    // 1. Healthy, or half-open with no probe out yet. When none is, no deployment of the
    //    group can take the job now: the job falls back (or fails) at once, never waits.
    let healthy: Vec<usize> = if filters.health {
        let (healthy, cooling): (Vec<usize>, Vec<usize>) =
            usable.into_iter().partition(|&k| members[k].available);
        if healthy.is_empty() {
            return Err(Refusal::AllCooling(cooling));
        }
        healthy
    } else {
        usable
    };

    // 2. Not already failed for this job, unless every healthy one has.
    let mut pool: Vec<usize> = healthy
        .iter()
        .copied()
        .filter(|&k| !ask.exclude.iter().any(|x| x == members[k].id))
        .collect();
    let fresh = !pool.is_empty();
    if !fresh {
        pool = healthy;
    }

    // 3. Tags.
    if filters.tag_filtering {
        let has_tag =
            |k: usize, wanted: &dyn Fn(&str) -> bool| members[k].tags.iter().any(|t| wanted(t));
        if ask.tags.is_empty() {
            if pool.iter().any(|&k| has_tag(k, &|t| t == "default")) {
                pool.retain(|&k| has_tag(k, &|t| t == "default"));
            }
        } else {
            pool.retain(|&k| has_tag(k, &|t| ask.tags.iter().any(|w| w == t)));
            if pool.is_empty() {
                return Err(Refusal::NoTag(
                    ApiError::bad_request(format!(
                        "no deployment of model group `{group}` has any of the tags {:?}",
                        ask.tags
                    ))
                    .with_code("no_deployment_for_tags"),
                ));
            }
        }
    }

    // 4. Context window.
    if filters.pre_call_checks {
        pool.retain(|&k| {
            members[k]
                .max_input_tokens
                .is_none_or(|max| ask.prompt_tokens <= max)
        });
        if pool.is_empty() {
            return Err(Refusal::ContextWindow(
                ApiError::bad_request(format!(
                    "the prompt (about {} tokens) exceeds the context window of every deployment of `{group}`",
                    ask.prompt_tokens
                ))
                .with_param("messages")
                .with_code("context_length_exceeded"),
            ));
        }
    }

    // 5. Capacity now, when any has it.
    if pool.iter().any(|&k| members[k].has_capacity) {
        pool.retain(|&k| members[k].has_capacity);
    }
    Ok(Pool {
        members: pool,
        fresh,
    })
}

/// Whole seconds to wait for `d`, rounded up (what a `Retry-After` header carries).
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// LiteLLM's `RouterRateLimitError`, word for word (clients match on its message): a 429 for
/// a model whose deployments are all cooling down. `code` is llmbus's own.
pub fn no_deployments_available(
    model: &str,
    retry_in: Duration,
    pre_call_checks: bool,
    cooldown_list: &[&str],
) -> ApiError {
    let list: Vec<String> = cooldown_list.iter().map(|id| format!("'{id}'")).collect();
    ApiError::rate_limited(format!(
        "No deployments available for selected model, Try again in {} seconds. Passed model={}. \
         pre-call-checks={}, cooldown_list=[{}]",
        retry_after_secs(retry_in),
        crate::wire::error::echo(model),
        if pre_call_checks { "True" } else { "False" },
        list.join(", ")
    ))
    .with_code("no_healthy_deployment")
}

/// What a strategy looks at for one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Candidate {
    /// Share under weighted shuffle.
    pub weight: f64,
    /// Calls in flight.
    pub in_flight: u32,
    /// Moving-average latency in microseconds (0 = not measured yet).
    pub latency_us: u64,
    /// Tokens used in the current minute.
    pub tpm_used: u64,
    /// Requests used in the current minute.
    pub rpm_used: u64,
    /// USD per prompt token plus per completion token, when known.
    pub price: Option<f64>,
}

/// The index (into `candidates`, never empty) of the one to try; `random` is in 0..1.
pub fn pick(strategy: Strategy, candidates: &[Candidate], random: f64) -> usize {
    debug_assert!(!candidates.is_empty());
    if candidates.len() == 1 {
        return 0;
    }
    match strategy {
        Strategy::SimpleShuffle => weighted(candidates.iter().map(|c| c.weight), random),
        Strategy::LeastBusy => lowest(candidates, |c| c.in_flight as f64, random),
        Strategy::LowestLatency { buffer } => {
            // Unmeasured deployments go first, so that every one gets measured.
            if let Some(i) = candidates.iter().position(|c| c.latency_us == 0) {
                return i;
            }
            let best = candidates.iter().map(|c| c.latency_us).min().unwrap_or(0) as f64;
            let near: Vec<usize> = (0..candidates.len())
                .filter(|&i| candidates[i].latency_us as f64 <= best * (1.0 + buffer))
                .collect();
            near[((random * near.len() as f64) as usize).min(near.len() - 1)]
        }
        Strategy::LowestUsage => lowest(
            candidates,
            |c| c.tpm_used as f64 * 1e6 + c.rpm_used as f64,
            random,
        ),
        Strategy::LowestCost => lowest(candidates, |c| c.price.unwrap_or(f64::MAX), random),
    }
}

/// The index with the lowest `key`; ties are broken at random.
fn lowest(candidates: &[Candidate], key: impl Fn(&Candidate) -> f64, random: f64) -> usize {
    let best = candidates.iter().map(&key).fold(f64::INFINITY, f64::min);
    let tied: Vec<usize> = (0..candidates.len())
        .filter(|&i| key(&candidates[i]) <= best)
        .collect();
    tied[((random * tied.len() as f64) as usize).min(tied.len() - 1)]
}

/// A weighted random index; weights ≤ 0 count as tiny.
fn weighted(weights: impl Iterator<Item = f64> + Clone, random: f64) -> usize {
    let ws: Vec<f64> = weights.map(|w| w.max(1e-9)).collect();
    let mut x = random.clamp(0.0, 1.0) * ws.iter().sum::<f64>();
    for (i, w) in ws.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    ws.len() - 1
}

/// A random number in 0..1.
pub fn random() -> f64 {
    rand::rng().random_range(0.0..1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(f: impl Fn(&mut Candidate)) -> Candidate {
        let mut x = Candidate {
            weight: 1.0,
            ..Candidate::default()
        };
        f(&mut x);
        x
    }

    #[test]
    fn names_parse_as_litellm_spells_them() {
        assert_eq!(
            Strategy::parse("simple-shuffle", 0.0),
            Some(Strategy::SimpleShuffle)
        );
        assert_eq!(
            Strategy::parse("usage-based-routing-v2", 0.0),
            Some(Strategy::LowestUsage)
        );
        assert_eq!(
            Strategy::parse("latency-based-routing", 0.1),
            Some(Strategy::LowestLatency { buffer: 0.1 })
        );
        assert_eq!(Strategy::parse("magic", 0.0), None);
    }

    #[test]
    fn shuffle_follows_the_weights() {
        let cs = [c(|x| x.weight = 9.0), c(|x| x.weight = 1.0)];
        let mut first = 0;
        for i in 0..1000 {
            if pick(Strategy::SimpleShuffle, &cs, i as f64 / 1000.0) == 0 {
                first += 1;
            }
        }
        assert_eq!(first, 900);
    }

    #[test]
    fn least_busy_takes_the_fewest_in_flight() {
        let cs = [
            c(|x| x.in_flight = 3),
            c(|x| x.in_flight = 1),
            c(|x| x.in_flight = 2),
        ];
        assert_eq!(pick(Strategy::LeastBusy, &cs, 0.99), 1);
    }

    #[test]
    fn latency_takes_the_fastest_or_one_within_the_buffer() {
        let cs = [
            c(|x| x.latency_us = 900),
            c(|x| x.latency_us = 300),
            c(|x| x.latency_us = 320),
        ];
        let s = Strategy::LowestLatency { buffer: 0.0 };
        assert_eq!(pick(s, &cs, 0.99), 1);
        let s = Strategy::LowestLatency { buffer: 0.1 };
        assert_eq!(pick(s, &cs, 0.0), 1);
        assert_eq!(pick(s, &cs, 0.99), 2);
        let cs = [c(|x| x.latency_us = 300), c(|x| x.latency_us = 0)];
        assert_eq!(pick(s, &cs, 0.0), 1, "unmeasured first");
    }

    #[test]
    fn usage_takes_the_least_used() {
        let cs = [
            c(|x| x.tpm_used = 5000),
            c(|x| {
                x.tpm_used = 100;
                x.rpm_used = 9
            }),
            c(|x| {
                x.tpm_used = 100;
                x.rpm_used = 2
            }),
        ];
        assert_eq!(pick(Strategy::LowestUsage, &cs, 0.5), 2);
    }

    #[test]
    fn cost_takes_the_cheapest_and_unknown_last() {
        let cs = [
            c(|x| x.price = None),
            c(|x| x.price = Some(3e-6)),
            c(|x| x.price = Some(1e-6)),
        ];
        assert_eq!(pick(Strategy::LowestCost, &cs, 0.5), 2);
    }

    #[test]
    fn a_cooling_group_gets_litellm_s_message_word_for_word() {
        let e = no_deployments_available(
            "broken",
            Duration::from_millis(59_001),
            false,
            &["broken-1", "broken-2"],
        );
        assert_eq!(e.status, 429);
        assert_eq!(e.kind, "rate_limit_error");
        assert_eq!(
            e.message,
            "No deployments available for selected model, Try again in 60 seconds. Passed \
             model=broken. pre-call-checks=False, cooldown_list=['broken-1', 'broken-2']"
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }

    const ALL_ON: Filters = Filters {
        health: true,
        tag_filtering: true,
        pre_call_checks: true,
    };

    fn member(id: &str) -> Member<'_> {
        Member {
            id,
            misconfigured: None,
            available: true,
            tags: &[],
            max_input_tokens: None,
            has_capacity: true,
        }
    }

    fn ask<'a>(exclude: &'a [String], tags: &'a [String], prompt_tokens: u64) -> Ask<'a> {
        Ask {
            exclude,
            tags,
            prompt_tokens,
        }
    }

    fn pool(members: &[usize], fresh: bool) -> Pool {
        Pool {
            members: members.to_vec(),
            fresh,
        }
    }

    #[test]
    fn rule_0_a_group_of_misconfigured_deployments_answers_why() {
        let ms = [
            Member {
                misconfigured: Some("no key"),
                ..member("a")
            },
            Member {
                misconfigured: Some("no base"),
                ..member("b")
            },
        ];
        let Err(Refusal::Misconfigured(e)) = narrow("g", &ms, ALL_ON, &ask(&[], &[], 0)) else {
            panic!("a 500");
        };
        assert_eq!(e.status, 500);
        assert!(
            e.message
                .contains("deployment `a` is misconfigured: no key")
        );
        assert!(
            e.message
                .contains("deployment `b` is misconfigured: no base")
        );
        let ms = [ms[0], member("c")];
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&[], &[], 0)).unwrap(),
            pool(&[1], true)
        );
    }

    #[test]
    fn rule_1_only_healthy_ones_and_none_healthy_fails_at_once() {
        let ms = [
            Member {
                available: false,
                ..member("a")
            },
            member("b"),
        ];
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&[], &[], 0)).unwrap(),
            pool(&[1], true)
        );
        let ms = [ms[0], ms[0]];
        let Err(Refusal::AllCooling(cooling)) = narrow("g", &ms, ALL_ON, &ask(&[], &[], 0)) else {
            panic!("all cooling");
        };
        assert_eq!(cooling, vec![0, 1]);
        let off = Filters {
            health: false,
            ..ALL_ON
        };
        assert_eq!(
            narrow("g", &ms, off, &ask(&[], &[], 0)).unwrap(),
            pool(&[0, 1], true)
        );
    }

    #[test]
    fn rule_2_failed_ones_only_when_nothing_else_is_left() {
        let ms = [member("a"), member("b")];
        let a = ["a".to_string()];
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&a, &[], 0)).unwrap(),
            pool(&[1], true)
        );
        let both = ["a".to_string(), "b".to_string()];
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&both, &[], 0)).unwrap(),
            pool(&[0, 1], false)
        );
    }

    #[test]
    fn rule_3_tags_and_the_default_tag() {
        let default = ["default".to_string()];
        let eu = ["eu".to_string()];
        let ms = [
            member("a"),
            Member {
                tags: &default,
                ..member("b")
            },
            Member {
                tags: &eu,
                ..member("c")
            },
        ];
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&[], &[], 0)).unwrap(),
            pool(&[1], true)
        );
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&[], &eu, 0)).unwrap(),
            pool(&[2], true)
        );
        let us = ["us".to_string()];
        let Err(Refusal::NoTag(e)) = narrow("g", &ms, ALL_ON, &ask(&[], &us, 0)) else {
            panic!("a 400");
        };
        assert_eq!(
            (e.status, e.code.as_deref()),
            (400, Some("no_deployment_for_tags"))
        );
        let off = Filters {
            tag_filtering: false,
            ..ALL_ON
        };
        assert_eq!(
            narrow("g", &ms, off, &ask(&[], &us, 0)).unwrap(),
            pool(&[0, 1, 2], true)
        );
    }

    #[test]
    fn rule_4_the_context_window_fits_the_prompt() {
        let ms = [
            Member {
                max_input_tokens: Some(100),
                ..member("a")
            },
            member("b"),
        ];
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&[], &[], 500)).unwrap(),
            pool(&[1], true)
        );
        let ms = [ms[0]];
        let Err(Refusal::ContextWindow(e)) = narrow("g", &ms, ALL_ON, &ask(&[], &[], 500)) else {
            panic!("a 400");
        };
        assert_eq!(e.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&[], &[], 100)).unwrap(),
            pool(&[0], true)
        );
    }

    #[test]
    fn rule_5_capacity_now_when_any_has_it() {
        let full = Member {
            has_capacity: false,
            ..member("a")
        };
        let ms = [full, member("b")];
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&[], &[], 0)).unwrap(),
            pool(&[1], true)
        );
        let ms = [full, full];
        assert_eq!(
            narrow("g", &ms, ALL_ON, &ask(&[], &[], 0)).unwrap(),
            pool(&[0, 1], true)
        );
    }
}
