//! A deployment taking over from the one it replaces when the worker's limits change between
//! local and shared (the worker joined the cluster late, or its clock went too far off): the
//! router builds a new [`Deployment`] on the same facts and lets the old one finish the calls
//! it holds (their permits go back to it). The new one carries on what the old one knew: its
//! cooldown, and the units it spent in the current window, so that a worker joining the
//! cluster does not spend its local window's units a second time against the shared limit.

use std::time::Instant;

use super::Deployment;
use crate::limits::Taken;

impl Deployment {
    /// Carries `old`'s cooldown and window over to this deployment (see the module docs).
    pub(crate) fn take_over(&self, old: &Deployment, now: Instant) {
        let (cooling, used) = {
            let mut core = old.lock();
            let cooling = core
                .health
                .cooling_until()
                .map(|until| until.saturating_duration_since(now))
                .filter(|left| !left.is_zero());
            let snap = core.capacity.snapshot(now);
            (cooling, (snap.rpm_used, snap.tpm_used))
        };
        if let Some(left) = cooling {
            self.remote_cooldown(left, now);
        }
        // `shared` holds the rpm limit first, then the tpm limit, each when the deployment has
        // it (see `Deployment::new`). Units spent in a local window are recorded in the ledger
        // as spent now: they count a little longer than they must, never less.
        let mut shared = self.shared.iter();
        for (has, spent) in [(self.info.rpm, used.0), (self.info.tpm, used.1)] {
            if has.is_none() {
                continue;
            }
            if let Some(limit) = shared.next()
                && !old.cluster_limited()
                && spent > 0
            {
                limit.settle(Taken::NONE, spent, now);
            }
        }
    }
}
