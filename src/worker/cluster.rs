//! What a worker shares with the others through JetStream KV ([`crate::cluster`]): the
//! cluster-wide limits, the cooldown board and its membership, all kept in the server's time
//! ([`crate::cluster::clock`]).
//!
//! The worker tries to join once before it serves ([`join`]). When JetStream is not available
//! it starts anyway with limits of its own, and says so: one warning, the gauge
//! `llmbus_limits_shared` at 0, its line in `llmbus health`, `"limits": "local"` in
//! `llm.deployments`. Its [`Link`] keeps trying in the background (after 1 s, doubling up to
//! 15 s); once in, the router rebuilds the deployments with the shared limits and board
//! ([`RouterMsg::Share`]) and the worker joins the membership, without a restart.
//!
//! Once joined, the worker measures its clock against the server's every 30 s. Past
//! [`MAX_OFFSET`] it stops sharing its limits (they go local, loudly, as above) and takes them
//! up again when its clock comes back within the bound.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ractor::ActorRef;
use tokio::task::JoinHandle;

use crate::{
    cluster::{
        ClusterError, Replicas,
        clock::{Clock, ClockProbe, MAX_OFFSET, MEASURE_EVERY, Offset, WARN_OFFSET},
        health::HealthBoard,
        members::{MemberInfo, MemberWatch, Members, MembersOptions},
        quota::ClusterQuota,
        sharing::{Limits, LocalReason, Sharing, SharingStatus},
    },
    runtime::{
        WorkerContext,
        router::{RouterMsg, Shared},
    },
    telemetry,
};

/// The first pause before trying to join again, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(15);

/// What a worker announces to the membership: the names it serves and its config's
/// fingerprint (a reload changes both).
pub(super) type Announce = Arc<Mutex<(Vec<String>, String)>>;

/// The parts of the cluster a worker holds once it has joined (its membership goes to the
/// worker's context).
pub(super) struct Joined {
    probe: ClockProbe,
    offset: Offset,
    quota: ClusterQuota,
    board: HealthBoard,
}

impl Joined {
    /// What the router gets with a clock `offset` off: everything, or nothing when the clock
    /// is too far off.
    fn shared(&self, offset: Offset) -> Shared {
        match limits_for(offset) {
            Limits::Shared => Shared {
                quota: Some(self.quota.clone()),
                board: Some(self.board.clone()),
                members: None,
            },
            Limits::Local(_) => Shared::default(),
        }
    }
}

/// Joins the cluster's shared state under `prefix`: measures the clock, opens the quota and
/// health buckets and starts the membership. All or nothing: every part needs JetStream KV.
pub(super) async fn join(
    client: &async_nats::Client,
    prefix: &str,
    worker_id: &str,
    announce: &Announce,
    clock: &Clock,
    replicas: Replicas,
) -> Result<(Joined, Members), ClusterError> {
    let probe = ClockProbe::open(client.clone(), prefix, worker_id, replicas).await?;
    let offset = clock.measure(&probe).await?;
    let quota = ClusterQuota::open(client.clone(), prefix, worker_id, replicas)
        .await?
        .with_clock(clock.clone());
    let board = HealthBoard::open(client.clone(), prefix, worker_id, replicas)
        .await?
        .with_clock(clock.clone());
    let (groups, fingerprint) = announce.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let me = MemberInfo::new(worker_id, groups, fingerprint);
    let members = Members::start_on(
        client.clone(),
        prefix,
        me,
        MembersOptions {
            replicas,
            ..MembersOptions::default()
        },
        clock.clone(),
    )
    .await?;
    let joined = Joined {
        probe,
        offset,
        quota,
        board,
    };
    Ok((joined, members))
}

/// The first attempt to join, made before the worker serves.
pub(super) struct FirstJoin {
    /// What the router starts with.
    pub(super) shared: Shared,
    /// The membership, for the worker's context.
    pub(super) members: Option<Arc<Members>>,
    /// For the [`Link`], which takes over from there.
    pub(super) outcome: Result<Joined, ClusterError>,
}

/// [`join`], once, before the worker serves.
pub(super) async fn first_join(
    client: &async_nats::Client,
    prefix: &str,
    worker_id: &str,
    announce: &Announce,
    clock: &Clock,
    replicas: Replicas,
) -> FirstJoin {
    match join(client, prefix, worker_id, announce, clock, replicas).await {
        Ok((joined, members)) => FirstJoin {
            shared: joined.shared(joined.offset),
            members: Some(Arc::new(members)),
            outcome: Ok(joined),
        },
        Err(e) => FirstJoin {
            shared: Shared::default(),
            members: None,
            outcome: Err(e),
        },
    }
}

/// Whether a worker could share its limits on `client` now: the check of `serve --strict`.
pub(super) async fn check(
    client: &async_nats::Client,
    prefix: &str,
    replicas: Replicas,
) -> Result<(), LocalReason> {
    let clock = Clock::from_env();
    let probe = ClockProbe::open(client.clone(), prefix, "strict-check", replicas)
        .await
        .map_err(|e| LocalReason::NoJetStream(e.to_string()))?;
    let offset = clock
        .measure(&probe)
        .await
        .map_err(|e| LocalReason::NoJetStream(e.to_string()))?;
    ClusterQuota::open(client.clone(), prefix, "strict-check", replicas)
        .await
        .map_err(|e| LocalReason::NoJetStream(e.to_string()))?;
    match limits_for(offset) {
        Limits::Shared => Ok(()),
        Limits::Local(why) => Err(why),
    }
}

/// Where limits hold with a clock `offset` off the server's.
fn limits_for(offset: Offset) -> Limits {
    if offset.magnitude() > MAX_OFFSET {
        Limits::Local(LocalReason::ClockOffset(offset))
    } else {
        Limits::Shared
    }
}

/// Says where the limits hold now: the state, the gauges, and a log line when it changed.
fn report(sharing: &Sharing, limits: Limits, clock: Option<Offset>) {
    let before = sharing.status();
    if let Some(o) = clock {
        metrics::gauge!(telemetry::CLOCK_OFFSET).set(o.offset_ms as f64 / 1000.0);
        let was_off = before.clock.is_some_and(|c| c.magnitude() > WARN_OFFSET);
        if o.magnitude() > WARN_OFFSET && !was_off {
            tracing::warn!(
                offset_ms = o.offset_ms,
                uncertainty_ms = o.uncertainty_ms,
                "this machine's clock is {:.3} s off the NATS server's: llmbus corrects the times \
                 it shares, but the clock should be synchronised (NTP)",
                o.offset_ms as f64 / 1000.0
            );
        }
    }
    metrics::gauge!(telemetry::LIMITS_SHARED).set(if limits == Limits::Shared { 1.0 } else { 0.0 });
    if before.limits != limits {
        match &limits {
            Limits::Shared => {
                tracing::info!("rpm/tpm limits and cooldowns are shared with the cluster")
            }
            Limits::Local(why) => tracing::warn!(
                reason = %why,
                "rpm/tpm limits are local, not shared with the cluster: {why}; each worker in \
                 this state lets a whole limit through on its own{}",
                match why {
                    LocalReason::NoJetStream(_) =>
                        "; this worker keeps trying to join, and takes up the shared limits when it can",
                    LocalReason::ClockOffset(_) => "",
                }
            ),
        }
    }
    sharing.set(SharingStatus { limits, clock });
}

/// The worker's side of the cluster after start: joining late, and following the clock.
pub(super) struct Link {
    task: JoinHandle<()>,
}

/// What the background task needs.
pub(super) struct LinkArgs {
    pub(super) client: async_nats::Client,
    pub(super) prefix: String,
    pub(super) clock: Clock,
    pub(super) announce: Announce,
    pub(super) router: ActorRef<RouterMsg>,
    pub(super) ctx: Arc<WorkerContext>,
}

impl Link {
    /// Reports the state the worker starts in and follows the cluster from there: `joined` is
    /// the first attempt's outcome.
    pub(super) fn start(args: LinkArgs, joined: Result<Joined, ClusterError>) -> Self {
        let joined = match joined {
            Ok(j) => {
                report(&args.ctx.sharing, limits_for(j.offset), Some(j.offset));
                Some(j)
            }
            Err(e) => {
                report(
                    &args.ctx.sharing,
                    Limits::Local(LocalReason::NoJetStream(e.to_string())),
                    None,
                );
                None
            }
        };
        let task = tokio::spawn(run(args, joined));
        Self { task }
    }

    /// Stops following the cluster (the worker stops).
    pub(super) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(args: LinkArgs, mut joined: Option<Joined>) {
    let mut backoff = RETRY_FIRST;
    loop {
        match &joined {
            None => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
                let id = &args.ctx.worker_id;
                let replicas = args.ctx.store.replicas;
                let joining = join(
                    &args.client,
                    &args.prefix,
                    id,
                    &args.announce,
                    &args.clock,
                    replicas,
                );
                match joining.await {
                    Ok((j, members)) => {
                        let watch = members.watch();
                        args.ctx.members.store(Some(Arc::new(members)));
                        apply(&args, &j, j.offset, Some(watch)).await;
                        joined = Some(j);
                    }
                    Err(e) => tracing::debug!(error = %e, "joining the cluster: not yet"),
                }
            }
            Some(j) => {
                tokio::time::sleep(MEASURE_EVERY).await;
                match args.clock.measure(&j.probe).await {
                    Ok(offset) => apply(&args, j, offset, None).await,
                    Err(e) => tracing::debug!(error = %e, "measuring the clock against the server"),
                }
            }
        }
    }
}

/// Applies a clock measurement: the router is told when the limits change between shared and
/// local, and of the membership `members` the worker has just joined.
async fn apply(args: &LinkArgs, joined: &Joined, offset: Offset, members: Option<MemberWatch>) {
    let limits = limits_for(offset);
    let shared_before = args.ctx.sharing.is_shared();
    if (limits == Limits::Shared) != shared_before || members.is_some() {
        let parts = Box::new(Shared {
            members,
            ..joined.shared(offset)
        });
        if let Err(e) = ractor::call_t!(args.router, RouterMsg::Share, 30_000, parts) {
            tracing::warn!(error = %e, "the router did not take the new limits; trying again later");
            return;
        }
    }
    report(&args.ctx.sharing, limits, Some(offset));
}
