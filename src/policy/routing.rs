//! Routing strategies: which of a group's candidate deployments gets the next attempt.
//! The router narrows the candidates first (not excluded, healthy, tag match, context window,
//! capacity) and then asks [`pick`].
//!
//! | `routing_strategy` | picks |
//! |---|---|
//! | `simple-shuffle` (default) | at random, weighted by `weight`, else `rpm`, else `tpm` |
//! | `least-busy` | the fewest calls in flight |
//! | `latency-based-routing` | the lowest moving-average latency (time to first token for streams); `routing_strategy_args.lowest_latency_buffer` spreads load over those within that share of the best |
//! | `usage-based-routing-v2` | the lowest TPM use in the current minute, then RPM use |
//! | `cost-based-routing` | the cheapest per token by the price table (unknown prices last) |

use rand::Rng;

/// A routing strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// `simple-shuffle`.
    SimpleShuffle,
    /// `least-busy`.
    LeastBusy,
    /// `latency-based-routing`, with its buffer (0 = always the fastest).
    LowestLatency {
        /// Deployments within `(1 + buffer) ×` the lowest latency share the load.
        buffer: f64,
    },
    /// `usage-based-routing-v2` (and the legacy `usage-based-routing`).
    LowestUsage,
    /// `cost-based-routing`.
    LowestCost,
}

impl Strategy {
    /// The strategy of a `routing_strategy` name, or `None` for an unknown one.
    pub fn parse(name: &str, latency_buffer: f64) -> Option<Self> {
        Some(match name {
            "simple-shuffle" => Strategy::SimpleShuffle,
            "least-busy" => Strategy::LeastBusy,
            "latency-based-routing" => Strategy::LowestLatency {
                buffer: latency_buffer.max(0.0),
            },
            "usage-based-routing-v2" | "usage-based-routing" => Strategy::LowestUsage,
            "cost-based-routing" => Strategy::LowestCost,
            _ => return None,
        })
    }
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
}
