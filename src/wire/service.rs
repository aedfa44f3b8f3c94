//! The worker in the NATS services framework (ADR-32): the name it registers under
//! (`$SRV.PING|INFO|STATS.llmbus`) and the [`State`] that the `data` of its `$SRV.STATS`
//! endpoints reports (`"state": "serving"`). The services framework fixes `$SRV.INFO` metadata
//! when the service starts, so the live state travels in that `data`: `{"state": "serving" |
//! "draining", "in_flight": <jobs>, "config": <fingerprint>, "limits": {"mode": "shared" |
//! "local", "note": <why, for people>, "clock_offset_ms": <ms>}, "capacity_lost": <calls>}`.
//! The worker writes it (`runtime::ingress`); `llmbus health` reads it (`client::health`).

/// The name the worker registers under with the NATS services framework.
pub const SERVICE_NAME: &str = "llmbus";

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not subscribed yet.
    Starting,
    /// Taking jobs.
    Serving,
    /// Left the queue group; finishing the jobs in flight.
    Draining,
    /// Done.
    Stopped,
}

impl State {
    /// `starting`, `serving`, `draining` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Serving => "serving",
            State::Draining => "draining",
            State::Stopped => "stopped",
        }
    }

    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            1 => State::Serving,
            2 => State::Draining,
            3 => State::Stopped,
            _ => State::Starting,
        }
    }
}
