//! Cooldowns other workers announce (`llm.health.<deployment>` gossip, or the health board in
//! JetStream KV): which of them this worker takes on, and for how long.
//!
//! NATS permissions are the wall: in the shipped `deploy/nats/nats-server.conf` only the
//! workers' user may publish `llm.health.>` or write `$KV.>`. Behind it, a worker believes an
//! announcement only from a worker it knows:
//!
//! - **From a member.** The announcing `worker` must be in this worker's membership view
//!   ([`crate::cluster::members`]), or have left it less than [`DEPARTED_GRACE`] ago (a worker
//!   that stops right after it decided a cooldown still counts). Anything else is ignored,
//!   counted in `llmbus_cooldown_announcements_ignored_total{reason="unknown_worker"}` and
//!   logged at debug. Without JetStream there is no membership: announcements are then taken
//!   from any worker id, and only the permissions and the bound below hold.
//! - **Bounded.** An announced cooldown lasts at most the longer of this worker's own
//!   `cooldown_time` and [`MIN_REMOTE_CAP`] (60 s, so that a `Retry-After` another worker was
//!   given still carries); a longer one is cut to that and counted in
//!   `llmbus_cooldown_announcements_clamped_total`. The worker that saw the failure keeps its
//!   own full cooldown.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{cluster::members::MemberWatch, policy::health::HealthPolicy, telemetry};

/// How long a worker that left the membership view is still believed.
pub const DEPARTED_GRACE: Duration = Duration::from_secs(60);

/// The shortest bound on an announced cooldown, whatever `cooldown_time` says.
pub const MIN_REMOTE_CAP: Duration = Duration::from_secs(60);

/// The longest cooldown another worker may impose under `policy`.
pub fn remote_cap(policy: Option<&HealthPolicy>) -> Duration {
    policy.map_or(MIN_REMOTE_CAP, |p| p.cooldown.max(MIN_REMOTE_CAP))
}

/// What to do with one announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This worker's own announcement, back through NATS: already applied.
    Own,
    /// The announcing worker is not a member: ignore it.
    UnknownWorker,
    /// Take it on for `length` (`clamped` when that is shorter than announced).
    Apply {
        /// How long the deployment cools down here.
        length: Duration,
        /// The announcement asked for longer.
        clamped: bool,
    },
}

/// Judges the announcements reaching one worker.
pub struct Announced {
    me: String,
    members: Option<MemberWatch>,
    departed: Arc<Mutex<HashMap<String, Instant>>>,
    follower: Option<tokio::task::JoinHandle<()>>,
    cap: Duration,
}

impl Announced {
    /// For worker `me`, checking announcers against `members` (none: any is taken), cutting
    /// cooldowns to `cap`. Follows the membership to remember who left recently.
    pub fn new(me: impl Into<String>, members: Option<MemberWatch>, cap: Duration) -> Self {
        let departed = Arc::new(Mutex::new(HashMap::new()));
        let follower = members
            .clone()
            .map(|m| tokio::spawn(follow(m, departed.clone())));
        Self {
            me: me.into(),
            members,
            departed,
            follower,
            cap,
        }
    }

    /// The bound from now on (the config changed).
    pub fn set_cap(&mut self, cap: Duration) {
        self.cap = cap;
    }

    /// What to do with a cooldown of `length` that `worker` announced.
    pub fn judge(&self, worker: &str, length: Duration) -> Verdict {
        if worker == self.me {
            return Verdict::Own;
        }
        if !self.knows(worker) {
            return Verdict::UnknownWorker;
        }
        Verdict::Apply {
            length: length.min(self.cap),
            clamped: length > self.cap,
        }
    }

    /// [`Announced::judge`], counting and logging what is ignored or cut; `Some(length)` to
    /// apply. `deployment` only names it in the log.
    pub fn accept(&self, worker: &str, deployment: &str, length: Duration) -> Option<Duration> {
        match self.judge(worker, length) {
            Verdict::Own => None,
            Verdict::UnknownWorker => {
                metrics::counter!(telemetry::COOLDOWNS_IGNORED, "reason" => "unknown_worker")
                    .increment(1);
                tracing::debug!(
                    worker,
                    deployment,
                    "ignored a cooldown announced by a worker that is not a member"
                );
                None
            }
            Verdict::Apply { length, clamped } => {
                if clamped {
                    metrics::counter!(telemetry::COOLDOWNS_CLAMPED).increment(1);
                    tracing::debug!(
                        worker,
                        deployment,
                        cap_ms = length.as_millis() as u64,
                        "an announced cooldown was longer than another worker may impose; cut"
                    );
                }
                Some(length)
            }
        }
    }

    fn knows(&self, worker: &str) -> bool {
        let Some(members) = &self.members else {
            return true;
        };
        if members.snapshot().members.contains_key(worker) {
            return true;
        }
        let departed = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        departed
            .get(worker)
            .is_some_and(|at| at.elapsed() < DEPARTED_GRACE)
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
    }
}

/// Records when each member leaves the view; forgets it after [`DEPARTED_GRACE`], or when it
/// comes back.
async fn follow(members: MemberWatch, departed: Arc<Mutex<HashMap<String, Instant>>>) {
    let mut changed = members.changed();
    let ids =
        |m: &MemberWatch| -> BTreeSet<String> { m.snapshot().members.keys().cloned().collect() };
    let mut before = ids(&members);
    while changed.changed().await.is_ok() {
        let now_ids = ids(&members);
        let now = Instant::now();
        let mut d = departed.lock().unwrap_or_else(|e| e.into_inner());
        for gone in before.difference(&now_ids) {
            d.insert(gone.clone(), now);
        }
        for id in &now_ids {
            d.remove(id);
        }
        d.retain(|_, at| now.duration_since(*at) < DEPARTED_GRACE);
        before = now_ids;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_bound_is_the_longer_of_cooldown_time_and_a_minute() {
        assert_eq!(remote_cap(None), secs(60));
        let mut p = HealthPolicy::default();
        assert_eq!(remote_cap(Some(&p)), secs(60));
        p.cooldown = secs(300);
        assert_eq!(remote_cap(Some(&p)), secs(300));
    }

    #[tokio::test]
    async fn without_membership_any_worker_is_taken_and_cut_to_the_bound() {
        let a = Announced::new("me", None, secs(60));
        assert_eq!(a.judge("me", secs(5)), Verdict::Own);
        assert_eq!(
            a.judge("other", secs(5)),
            Verdict::Apply {
                length: secs(5),
                clamped: false
            }
        );
        assert_eq!(
            a.judge("other", secs(3600)),
            Verdict::Apply {
                length: secs(60),
                clamped: true
            }
        );
        assert_eq!(a.accept("other", "d", secs(3600)), Some(secs(60)));
        assert_eq!(a.accept("me", "d", secs(1)), None);
    }
}
