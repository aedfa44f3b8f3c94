//! `router_settings.routing_strategy`: the strategies llmbus knows, by their LiteLLM names.
//! The config check refuses any other name; `policy::routing` carries each out.

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
