//! The idle self-check: capacity held while no job runs is a bug, and it says so.
//!
//! Every [`IDLE_CHECK`] the worker looks at itself when it runs no job: a deployment that still
//! counts a call in flight then holds capacity nobody will give back (every [`super::Lease`] is
//! gone once its job is). Each such call is logged at error level once, counted in
//! `llmbus_capacity_lost_total{deployment}`, and reported by `llmbus health` (the worker's
//! `capacity_lost` in `$SRV.STATS`). The check is exact: it counts the jobs admitted around
//! its look and drops the look when one came meanwhile.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use super::Deployment;
use crate::{runtime::gate::Gate, telemetry};

/// How often the worker checks itself.
pub const IDLE_CHECK: Duration = Duration::from_secs(10);

impl Deployment {
    /// Calls found in flight here at idle, as reported so far.
    pub fn capacity_lost(&self) -> u32 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// One look at the worker while it runs no job: the deployments that count calls in flight
/// anyway, with how many. `None` when a job ran (or came) during the look.
pub fn idle_holders(gate: &Gate, deployments: &[Arc<Deployment>]) -> Option<Vec<(String, u32)>> {
    let admitted = gate.admitted();
    if gate.in_flight() != 0 {
        return None;
    }
    let now = Instant::now();
    let held: Vec<(String, u32)> = deployments
        .iter()
        .map(|d| {
            (
                d.id().to_string(),
                d.lock().capacity.snapshot(now).in_flight,
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    if gate.in_flight() != 0 || gate.admitted() != admitted {
        return None;
    }
    Some(held)
}

/// Runs one check: logs and counts the calls newly found held at idle. Returns how many
/// deployments hold capacity (0 when the worker was busy or all is well).
pub fn check_once(gate: &Gate, deployments: &[Arc<Deployment>]) -> usize {
    let Some(held) = idle_holders(gate, deployments) else {
        return 0;
    };
    for (id, n) in &held {
        let Some(d) = deployments.iter().find(|d| d.id() == id) else {
            continue;
        };
        let before = d.lost.swap(*n, Ordering::Relaxed);
        if *n > before {
            tracing::error!(
                deployment = %id,
                in_flight = n,
                "bug: capacity lost: the deployment counts {n} calls in flight while the worker \
                 runs no job; they will not come back until the worker restarts"
            );
            metrics::counter!(telemetry::CAPACITY_LOST, "deployment" => id.clone())
                .increment(u64::from(*n - before));
        }
    }
    held.len()
}

/// Checks the deployments of `table` every [`IDLE_CHECK`] until the task is aborted.
pub fn spawn(
    gate: Arc<Gate>,
    table: crate::runtime::router::SharedTable,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(IDLE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let table = table.load_full();
            check_once(&gate, table.deployments());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{limits::Demand, runtime::deployment::testing::deployment};

    #[test]
    fn capacity_held_with_no_job_running_is_found_and_counted_once() {
        let gate = Arc::new(Gate::new(10));
        let d = deployment("d1", 2);
        let all = [d.clone(), deployment("d2", 2)];
        let demand = Demand::input_only(10);
        // Held by a running job: not a loss.
        let ticket = gate.enter().unwrap();
        let lease = d.try_acquire(&demand, Instant::now()).unwrap();
        assert_eq!(check_once(&gate, &all), 0);
        drop(lease);
        drop(ticket);
        assert_eq!(check_once(&gate, &all), 0);
        // A lease that never comes back (as one dropped with a channel used to).
        std::mem::forget(d.try_acquire(&demand, Instant::now()).unwrap());
        assert_eq!(idle_holders(&gate, &all), Some(vec![("d1".to_string(), 1)]));
        assert_eq!(check_once(&gate, &all), 1);
        assert_eq!(d.capacity_lost(), 1);
        // Seen again: still one lost call, not two.
        assert_eq!(check_once(&gate, &all), 1);
        assert_eq!(d.capacity_lost(), 1);
    }
}
