//! How the cluster-wide limits behave as the cluster grows: 50 and then 200 workers' limit
//! clients (each its own NATS connection and [`ClusterQuota`], as each worker has) in one
//! process against one nats-server, on one limited deployment and on ten, all of them busier
//! than the limit allows. Prints, per run:
//!
//! - the quota ledger's writes per second and bytes per second (from the `KV_LLM_QUOTA`
//!   stream's sequence and the ledger documents' sizes);
//! - how long a granted request waited for its slice (each request waits as a job does, for up
//!   to 2 s, its deadline here, and then counts as refused), p50 / p99 / max;
//! - the most granted in any window (sliding, in 100 ms steps) against the limit: the
//!   overshoot, if any;
//! - the compare-and-set races the limiters lost per write they made, and the CPU the
//!   simulation itself used (two cores at most: past about 1.8 s/s its waits are its own).
//!
//! ```sh
//! cargo bench --bench quota_scale
//! ```
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LLMBUS_SCALE_WORKERS` | 50,200 | worker counts, in turn |
//! | `LLMBUS_SCALE_SECS` | 25 | seconds of load per run |
//!
//! The window is 10 s (the real one is 60 s) so that a run sees several; each deployment's
//! limit is 2,000 requests per window (200 req/s). Two loads, spread evenly over the workers:
//! **over** the limit (300 req/s per deployment: the limit must hold) and
//! **under** it (180 req/s, 90 % of the limit: nothing should be refused, the slices must not
//! strand capacity); the last column gives what was granted of what was offered.
//! Without `--bench` (as under `cargo test --all-targets`) it runs a 3-worker, 3 s smoke pass.
//! Figures are printed, never asserted.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use llmbus::{
    cluster::quota::{ClusterLimit, ClusterQuota, LimitKind, QuotaOptions},
    local_nats::{LocalNats, free_port},
};
use support::{Stats, cpu_seconds, runtime};

const WINDOW: Duration = Duration::from_secs(10);
const LIMIT: u64 = 2_000;
/// The loads, as requests per second per deployment, all workers together.
const LOADS: [(&str, f64); 2] = [("over", 300.0), ("under", 180.0)];
/// How long a request waits for a slice before it counts as refused (a job's deadline).
const JOB_DEADLINE: Duration = Duration::from_secs(2);
/// The grant counts' resolution.
const STEP: Duration = Duration::from_millis(100);

fn main() {
    let (workers, secs) = support::scale_plan(25);
    println!(
        "cluster limits at scale — window {} s, limit {LIMIT} per window per deployment, {secs} s \
         per run",
        WINDOW.as_secs(),
    );
    println!();
    println!(
        "| workers | deployments | load (req/s per deployment) | ledger writes/s | ledger KB/s | largest document | a granted request's wait p50 / p99 / max | most granted in a window / limit | granted / offered | races lost per write | the simulation's CPU, s/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &workers {
        for deployments in [1, 10] {
            for load in LOADS {
                run(n, deployments, load, Duration::from_secs(secs));
            }
        }
    }
}

/// One run: `n` workers on `deployments` limited deployments, offered `rate` req/s per
/// deployment in all, for `secs`.
fn run(n: usize, deployments: usize, (load, rate): (&str, f64), secs: Duration) {
    let every = Duration::from_secs_f64(n as f64 / rate);
    let store = tempfile::tempdir().expect("a JetStream store");
    let nats = LocalNats::start(free_port().expect("a free port"), store.path())
        .expect("start nats-server (is it installed?)");
    let rt = runtime("scale", 2);
    let opts = QuotaOptions {
        window: WINDOW,
        ..QuotaOptions::default()
    };
    let names: Vec<String> = (0..deployments).map(|d| format!("dep-{d}")).collect();
    // Every worker's limiters, its own connection each.
    let limits: Vec<Vec<Arc<ClusterLimit>>> = rt.block_on(async {
        let mut all = Vec::with_capacity(n);
        for w in 0..n {
            let client = async_nats::connect(nats.url()).await.expect("connect");
            let quota = ClusterQuota::open_with(client, "llm", format!("w{w}"), opts)
                .await
                .expect("the quota bucket");
            all.push(
                names
                    .iter()
                    .map(|d| Arc::new(quota.limit(d, LimitKind::Rpm, LIMIT)))
                    .collect(),
            );
        }
        all
    });
    let steps = ((secs + JOB_DEADLINE).as_millis() / STEP.as_millis()) as usize + 2;
    // Grants per deployment per step.
    let granted: Arc<Vec<Vec<AtomicU64>>> = Arc::new(
        (0..deployments)
            .map(|_| (0..steps).map(|_| AtomicU64::new(0)).collect())
            .collect(),
    );
    let waits = Arc::new(std::sync::Mutex::new(Stats::default()));
    let offered = Arc::new(AtomicU64::new(0));
    let (stream_before, _) = rt.block_on(ledger(&nats));
    let cpu_before = cpu_seconds(std::process::id());
    let start = Instant::now();
    let deadline = start + secs;
    let tasks: Vec<_> = limits
        .iter()
        .flat_map(|per_worker| per_worker.iter().enumerate())
        .enumerate()
        .map(|(i, (d, limit))| {
            let (limit, granted, waits) = (limit.clone(), granted.clone(), waits.clone());
            let offered = offered.clone();
            rt.spawn(async move {
                // Spread the workers' offers over the interval.
                let first = tokio::time::Instant::now() + every.mul_f64((i % n) as f64 / n as f64);
                let mut tick = tokio::time::interval_at(first, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut offers = Vec::new();
                loop {
                    tick.tick().await;
                    let offer = Instant::now();
                    if offer >= deadline {
                        break;
                    }
                    offered.fetch_add(1, Ordering::Relaxed);
                    let (limit, granted, waits) = (limit.clone(), granted.clone(), waits.clone());
                    // As a job does: wait for a slice until its deadline.
                    offers.push(tokio::spawn(async move {
                        loop {
                            let now = Instant::now();
                            // Past its deadline a job has failed, whatever arrives.
                            if now >= offer + JOB_DEADLINE {
                                return;
                            }
                            if let Ok(t) = limit.try_take(1, now) {
                                limit.settle(t, 1, now);
                                let step = (now - start).as_millis() / STEP.as_millis();
                                // A grant the scheduler delayed past the last step
                                // counts in it.
                                let last = granted[d].len() - 1;
                                granted[d][(step as usize).min(last)]
                                    .fetch_add(1, Ordering::Relaxed);
                                waits.lock().unwrap().record(now - offer, Ok(()));
                                return;
                            }
                            tokio::select! {
                                _ = limit.refilled() => {}
                                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            }
                        }
                    }));
                    offers.retain(|o| !o.is_finished());
                }
                for o in offers {
                    let _ = o.await;
                }
            })
        })
        .collect();
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(std::process::id()) - cpu_before) / elapsed;
    let (stream_after, largest) = rt.block_on(ledger(&nats));
    // The limiters' own count of compare-and-set races lost, against their writes.
    let (mut cas_writes, mut conflicts) = (0u64, 0u64);
    for l in limits.iter().flatten() {
        cas_writes += l.stats().writes.load(Ordering::Relaxed);
        conflicts += l.stats().conflicts.load(Ordering::Relaxed);
    }
    let writes = stream_after.0 - stream_before.0;
    let bytes = stream_after.1.saturating_sub(stream_before.1);
    // The most granted in any window, over the deployments.
    let per_window = (WINDOW.as_millis() / STEP.as_millis()) as usize;
    let most = granted
        .iter()
        .map(|steps| {
            let counts: Vec<u64> = steps.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            counts
                .windows(per_window.min(counts.len()))
                .map(|w| w.iter().sum::<u64>())
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let total_granted: u64 = granted
        .iter()
        .flat_map(|steps| steps.iter().map(|c| c.load(Ordering::Relaxed)))
        .sum();
    let waits = waits.lock().unwrap();
    let ms = |q: f64| waits.p(q) / 1000.0;
    println!(
        "| {n} | {deployments} | {load}: {rate:.0} | {:.0} | {:.1} | {:.1} KB | {:.1} / {:.1} / {:.1} ms | {most} / {LIMIT} ({:+.1} %) | {:.1} % | {:.2} | {cpu:.2} |",
        writes as f64 / elapsed,
        bytes as f64 / elapsed / 1024.0,
        largest as f64 / 1024.0,
        ms(0.5),
        ms(0.99),
        waits.hist.max() as f64 / 1e6,
        (most as f64 / LIMIT as f64 - 1.0) * 100.0,
        total_granted as f64 * 100.0 / offered.load(Ordering::Relaxed).max(1) as f64,
        conflicts as f64 / cas_writes.max(1) as f64,
    );
    rt.block_on(async {
        for per_worker in &limits {
            for l in per_worker {
                l.close(Duration::from_millis(200)).await;
            }
        }
    });
    drop(limits);
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(nats);
}

/// The quota ledger's stream now: (its last sequence, that is the writes so far, and the bytes
/// written so far, estimated as the writes times the average stored document: the stream keeps
/// only each document's last revision), and the largest document's size.
async fn ledger(nats: &LocalNats) -> ((u64, u64), usize) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let Ok(mut stream) = js.get_stream("KV_LLM_QUOTA").await else {
        return ((0, 0), 0);
    };
    let Ok(info) = stream.info().await else {
        return ((0, 0), 0);
    };
    let (last, messages, stored) = (
        info.state.last_sequence,
        info.state.messages,
        info.state.bytes,
    );
    let average = stored.checked_div(messages).unwrap_or(0);
    // Bytes written: every write is a whole document, about the average stored one.
    let written = last * average;
    let mut largest = 0usize;
    if let Ok(kv) = js.get_key_value("LLM_QUOTA").await
        && let Ok(mut keys) = kv.keys().await
    {
        use futures::StreamExt;
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(v)) = kv.get(&key).await {
                largest = largest.max(v.len());
            }
        }
    }
    ((last, written), largest)
}
