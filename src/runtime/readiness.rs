//! The [`Readiness`] state one worker process reports: `/readyz` on the ops server, and the
//! `state` in its `$SRV.STATS` endpoint data ([`crate::wire::service`]).
//!
//! A worker is *ready* while it takes jobs. It is not ready before its subscriptions are in
//! place, nor once it drains (after `SIGTERM`), when it has left the queue group and only
//! finishes the jobs it already has.

use std::sync::{
    Arc,
    atomic::{AtomicU8, Ordering},
};

use crate::wire::service::State;

/// A shared, cheap-to-clone readiness flag: every clone sees the same state.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// A new flag in [`State::Starting`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves to `state`.
    pub fn set(&self, state: State) {
        let v = match state {
            State::Starting => 0,
            State::Serving => 1,
            State::Draining => 2,
            State::Stopped => 3,
        };
        self.0.store(v, Ordering::Release);
    }

    /// True while serving.
    pub fn is_ready(&self) -> bool {
        self.state() == State::Serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_shared_by_clones() {
        let r = Readiness::new();
        let seen = r.clone();
        assert_eq!(seen.state(), State::Starting);
        assert!(!seen.is_ready());
        r.set(State::Serving);
        assert!(seen.is_ready());
        r.set(State::Draining);
        assert_eq!(seen.state().as_str(), "draining");
        assert!(!seen.is_ready());
    }
}
