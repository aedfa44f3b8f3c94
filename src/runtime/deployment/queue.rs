//! A deployment's actor: the queue of jobs that found no capacity (first come, first served,
//! each until its own deadline), the timer that wakes them when the windows slide, and the
//! announcements of cooldowns to the other workers on `llm.health.<deployment>`
//! ([`HealthEvent`], sent through [`Gossip`]).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use super::{Deployment, Lease};
use crate::{cluster::health::HealthBoard, limits::Demand, providers::ErrorClass, wire::Subjects};

/// Publishes cooldowns for the other workers.
#[derive(Clone)]
pub struct Gossip {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Subject names.
    pub subjects: Subjects,
    /// This worker's id, so it can ignore its own messages.
    pub worker: String,
    /// The cluster's cooldown board in JetStream KV (workers that start later read it); `None`
    /// without JetStream, when core NATS gossip is all there is.
    pub board: Option<HealthBoard>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("worker", &self.worker)
            .field("board", &self.board.is_some())
            .finish_non_exhaustive()
    }
}

/// A health change, as published on `llm.health.<deployment>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthEvent {
    /// The deployment.
    pub deployment: String,
    /// The worker that saw it.
    pub worker: String,
    /// `cooldown`.
    pub state: String,
    /// How long the cooldown lasts from now, milliseconds.
    pub cooldown_ms: u64,
    /// The error class that caused it.
    pub reason: String,
}

/// The actor's arguments.
pub struct DeploymentArgs {
    /// The deployment.
    pub deployment: Arc<Deployment>,
    /// Where cooldowns are announced; `None` to keep them local.
    pub gossip: Option<Gossip>,
}

/// Messages a deployment actor takes.
pub enum DeploymentMsg {
    /// Grant capacity for a call of `demand`, in arrival order, when there is some; the answer
    /// may wait.
    Acquire {
        /// What the call reserves until it settles.
        demand: Demand,
        /// Where the lease goes. A lease the job is no longer there to take goes back to the
        /// deployment when the channel drops it.
        reply: RpcReplyPort<Lease>,
    },
    /// Capacity may have come free: look at the queue again.
    Wake,
    /// A cooldown started here: tell the other workers.
    Announce {
        /// How long it lasts.
        length: Duration,
        /// The failure class that started it.
        class: ErrorClass,
    },
}

/// The actor: the queue of jobs waiting for capacity, and cooldown announcements.
pub struct DeploymentActor;

/// The actor's state.
pub struct DeploymentState {
    deployment: Arc<Deployment>,
    gossip: Option<Gossip>,
    waiting: VecDeque<(Demand, RpcReplyPort<Lease>)>,
    wake_at: Option<Instant>,
}

impl Actor for DeploymentActor {
    type Msg = DeploymentMsg;
    type State = DeploymentState;
    type Arguments = DeploymentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DeploymentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let deployment = args.deployment;
        // A restarted actor has lost its predecessor's queue (those jobs were told so).
        deployment.lock().waiting = 0;
        deployment.actor.store(Some(Arc::new(myself)));
        Ok(DeploymentState {
            deployment,
            gossip: args.gossip,
            waiting: VecDeque::new(),
            wake_at: None,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Forget ourselves unless a successor already took over.
        let slot = &state.deployment.actor;
        let current = slot.load_full();
        if current.is_some_and(|a| a.get_id() == myself.get_id()) {
            slot.store(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            DeploymentMsg::Acquire { demand, reply } => {
                state.waiting.push_back((demand, reply));
                state.serve_waiting(&myself, now);
            }
            DeploymentMsg::Wake => {
                state.serve_waiting(&myself, now);
            }
            DeploymentMsg::Announce { length, class } => state.announce(length, class),
        }
        Ok(())
    }
}

impl DeploymentState {
    /// Tells the other workers about a cooldown this worker started.
    fn announce(&self, length: Duration, class: ErrorClass) {
        let Some(g) = &self.gossip else { return };
        let id = &self.deployment.info.id;
        let event = HealthEvent {
            deployment: id.clone(),
            worker: g.worker.clone(),
            state: "cooldown".into(),
            cooldown_ms: length.as_millis() as u64,
            reason: format!("{class:?}"),
        };
        let client = g.client.clone();
        let subject = g.subjects.health(id);
        let board = g.board.clone();
        // Fire and forget: gossip never holds up the actor.
        tokio::spawn(async move {
            if let Ok(body) = serde_json::to_vec(&event) {
                let _ = client.publish(subject, body.into()).await;
            }
            if let Some(board) = board
                && let Err(e) = board
                    .publish_for(&event.deployment, length, &event.reason)
                    .await
            {
                tracing::warn!(error = %e, "recording a cooldown in the cluster's health board");
            }
        });
    }

    /// Grants capacity to waiting jobs in arrival order, while there is capacity.
    ///
    /// The lock is held only to take each permit, never while a lease is sent: a lease the job
    /// is no longer there to take is dropped (by the failed send, or later by the channel), and
    /// its drop gives the units back under the same lock.
    fn serve_waiting(&mut self, myself: &ActorRef<DeploymentMsg>, now: Instant) {
        let deployment = self.deployment.clone();
        let mut wake = None;
        // Jobs that gave up (deadline, cancel) anywhere in the queue: forget them, so the count
        // of waiting jobs is true (a job that leaves wakes the actor for this).
        self.waiting.retain(|(_, reply)| !reply.is_closed());
        while let Some((demand, reply)) = self.waiting.front() {
            if reply.is_closed() {
                // The job gave up (its deadline passed); forget it.
                self.waiting.pop_front();
                continue;
            }
            let reserve = deployment.reservation(demand);
            let granted = deployment.lock().capacity.try_acquire(reserve, now);
            match granted {
                Ok(permit) => {
                    let (demand, reply) = self.waiting.pop_front().expect("front exists");
                    let lease = Lease::new(deployment.clone(), permit, demand.choices);
                    // When the job went away, the lease comes back in the error and is
                    // dropped here: its units go back.
                    let _ = reply.send(lease);
                }
                Err(wait) => {
                    wake = wait.duration();
                    break;
                }
            }
        }
        let mut core = deployment.lock();
        core.waiting = self.waiting.len();
        deployment.publish_capacity(&mut core, now);
        drop(core);
        if let Some(after) = wake {
            self.schedule_wake(myself, now + after, after);
        }
    }

    fn schedule_wake(&mut self, myself: &ActorRef<DeploymentMsg>, at: Instant, after: Duration) {
        if self.wake_at.is_some_and(|w| w > Instant::now() && w <= at) {
            return;
        }
        self.wake_at = Some(at);
        // The timer holds the actor only until `after`, a refill time (well under a minute).
        myself.send_after(after, || DeploymentMsg::Wake);
    }
}
