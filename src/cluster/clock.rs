//! The cluster's clock: the NATS server's time as this worker sees it, for every time a worker
//! writes into shared state or judges from it (quota slices and their window, cooldown ends,
//! membership heartbeats).
//!
//! Workers' wall clocks disagree: one that runs 30 s fast would prune the other workers' quota
//! slices 30 s early and lease their units again, and the cluster would overshoot its limits.
//! So a worker measures its offset from the server ([`Clock::measure`]): it writes a key of
//! the `LLM_CLOCK` bucket and reads back the time the server stamped on it, the server's own
//! clock, taken between the write's send and its acknowledgement (the middle of that round
//! trip is the estimate, half of it the uncertainty; the best of three samples is kept). From
//! then on [`Clock::now_ms`] is the server's time at the measurement plus the *monotonic* time
//! since: a step of the local wall clock between two measurements changes nothing.
//!
//! The worker measures again every [`MEASURE_EVERY`]. An offset past [`WARN_OFFSET`] is logged
//! (the times are corrected, but the machine's clock should be fixed); past [`MAX_OFFSET`] the
//! worker refuses to share its limits ([`super::sharing`]): a clock a minute off is not kept
//! by anything, and llmbus does not bet the cluster's limits on a correction of it.
//!
//! For tests, `LLMBUS_TEST_CLOCK_SKEW_MS` ([`SKEW_ENV`]) shifts the wall clock a worker reads
//! by that many milliseconds, as if its clock were off (a warning says so at start).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::kv;

use super::{ClusterError, Replicas, bucket_name, ensure_bucket, jetstream, key_token};

/// An offset from the server past which a worker warns.
pub const WARN_OFFSET: Duration = Duration::from_millis(500);

/// An offset from the server past which a worker does not share its limits.
pub const MAX_OFFSET: Duration = Duration::from_secs(60);

/// How often a worker measures its offset again.
pub const MEASURE_EVERY: Duration = Duration::from_secs(30);

/// The environment variable that skews a worker's wall clock, for tests only.
pub const SKEW_ENV: &str = "LLMBUS_TEST_CLOCK_SKEW_MS";

/// Samples per measurement; the one with the shortest round trip is kept.
const SAMPLES: usize = 3;

/// One measurement of this worker's clock against the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    /// Server time minus this worker's wall clock, milliseconds (positive: the worker is
    /// behind).
    pub offset_ms: i64,
    /// Half the round trip of the sample: the offset is right within this, milliseconds.
    pub uncertainty_ms: u64,
}

impl Offset {
    /// The offset's size.
    pub fn magnitude(&self) -> Duration {
        Duration::from_millis(self.offset_ms.unsigned_abs())
    }
}

/// The server's time at a monotonic instant, and the offset it was measured with.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: Instant,
    server_ms: u64,
    offset: Offset,
}

struct Inner {
    /// Added to the wall clock this worker reads (tests only).
    skew_ms: i64,
    anchor: Mutex<Option<Anchor>>,
}

/// A worker's view of the cluster's time: cheap to clone, every clone sees the same
/// measurement. Before the first measurement it is the wall clock.
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("skew_ms", &self.inner.skew_ms)
            .field("offset", &self.offset())
            .finish()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The machine's wall clock, until measured.
    pub fn system() -> Self {
        Self::skewed(0)
    }

    /// A wall clock off by `skew_ms` (tests).
    pub fn skewed(skew_ms: i64) -> Self {
        Self {
            inner: Arc::new(Inner {
                skew_ms,
                anchor: Mutex::new(None),
            }),
        }
    }

    /// The wall clock, skewed by `LLMBUS_TEST_CLOCK_SKEW_MS` when it is set (with a warning).
    pub fn from_env() -> Self {
        let skew = std::env::var(SKEW_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0);
        if skew != 0 {
            tracing::warn!(
                skew_ms = skew,
                "{SKEW_ENV} is set: this worker's wall clock reads {skew} ms off (for tests only)"
            );
        }
        Self::skewed(skew)
    }

    /// Milliseconds since the Unix epoch on this worker's wall clock (skew included).
    pub fn wall_ms(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        real.saturating_add(self.inner.skew_ms).max(0) as u64
    }

    /// Milliseconds since the Unix epoch on the server's clock, as well as this worker knows
    /// it: the last measurement carried forward on the monotonic clock, or the wall clock
    /// before any measurement.
    pub fn now_ms(&self) -> u64 {
        match *self.lock() {
            Some(a) => a.server_ms + a.at.elapsed().as_millis() as u64,
            None => self.wall_ms(),
        }
    }

    /// The last measurement, if any.
    pub fn offset(&self) -> Option<Offset> {
        self.lock().map(|a| a.offset)
    }

    /// Measures the offset on the probe's key and corrects the clock with it.
    pub async fn measure(&self, probe: &ClockProbe) -> Result<Offset, ClusterError> {
        let mut best: Option<Anchor> = None;
        for _ in 0..SAMPLES {
            let sample = self.sample(probe).await?;
            if best.is_none_or(|b| sample.offset.uncertainty_ms < b.offset.uncertainty_ms) {
                best = Some(sample);
            }
        }
        let best = best.expect("at least one sample");
        *self.lock() = Some(best);
        Ok(best.offset)
    }

    /// One write and read-back: the server stamped the write between `sent` and `acked`.
    async fn sample(&self, probe: &ClockProbe) -> Result<Anchor, ClusterError> {
        let sent = Instant::now();
        let wall = self.wall_ms();
        let revision = probe
            .kv
            .put(&probe.key, bytes::Bytes::new())
            .await
            .map_err(|e| probe.error(e))?;
        let acked = Instant::now();
        let entry = probe
            .kv
            .entry_for_revision(&probe.key, revision)
            .await
            .map_err(|e| probe.error(e))?
            .ok_or_else(|| probe.error("the clock probe's write is gone"))?;
        let server_ms = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let half = acked.duration_since(sent) / 2;
        let local_ms = wall + half.as_millis() as u64;
        Ok(Anchor {
            at: sent + half,
            server_ms,
            offset: Offset {
                offset_ms: server_ms as i64 - local_ms as i64,
                uncertainty_ms: half.as_millis() as u64,
            },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Anchor>> {
        self.inner.anchor.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The clock bucket under `prefix` (`LLM_CLOCK`, in memory).
pub fn bucket(prefix: &str) -> kv::Config {
    kv::Config {
        bucket: bucket_name(prefix, "CLOCK"),
        description: "llmbus workers' clock probes (server timestamps)".into(),
        history: 1,
        max_age: Duration::from_secs(300),
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    }
}

/// Where a worker measures its clock: its own key in the `LLM_CLOCK` bucket (in memory,
/// entries gone after 5 minutes).
#[derive(Clone)]
pub struct ClockProbe {
    kv: kv::Store,
    key: String,
}

impl ClockProbe {
    /// Opens (creating if needed, with `replicas`) the clock bucket under `prefix`, for worker
    /// `worker`.
    pub async fn open(
        client: async_nats::Client,
        prefix: &str,
        worker: &str,
        replicas: Replicas,
    ) -> Result<Self, ClusterError> {
        let js = jetstream(client, Duration::from_secs(5));
        let kv = ensure_bucket(&js, bucket(prefix), replicas).await?;
        Ok(Self {
            kv,
            key: key_token(worker),
        })
    }

    fn error(&self, source: impl Into<async_nats::Error>) -> ClusterError {
        ClusterError::kv(&self.kv.name, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_reads_off_until_measured() {
        let fast = Clock::skewed(30_000);
        let normal = Clock::system();
        let diff = fast.now_ms() as i64 - normal.now_ms() as i64;
        assert!((29_900..=30_100).contains(&diff), "{diff}");
        assert_eq!(fast.offset(), None);
    }

    #[test]
    fn an_anchor_carries_the_server_time_forward() {
        let clock = Clock::skewed(-45_000);
        let server_ms = Clock::system().wall_ms();
        *clock.lock() = Some(Anchor {
            at: Instant::now(),
            server_ms,
            offset: Offset {
                offset_ms: 45_000,
                uncertainty_ms: 1,
            },
        });
        let diff = clock.now_ms() as i64 - Clock::system().wall_ms() as i64;
        assert!(diff.abs() < 100, "{diff}");
        assert_eq!(clock.offset().unwrap().magnitude(), Duration::from_secs(45));
    }
}
