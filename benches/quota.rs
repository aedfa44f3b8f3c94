//! The cost of a cluster-wide limit on the hot path: `try_take` + `settle` of a
//! [`ClusterLimit`] (slices leased from a real nats-server in the background) against the plain
//! local token bucket, and a deployment's whole `Capacity` check with no limits, local limits
//! and cluster limits. The bar: with a limit, p50 within 20 µs of none.
//!
//! Run: `cargo bench --bench quota` (needs `nats-server` on PATH; a private one is started).

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use llmbus::{
    cluster::quota::{ClusterLimit, ClusterQuota, LimitKind},
    limits::{Capacity, ShareParams, SharedLimit, SlidingWindow},
    local_nats::{LocalNats, free_port},
};

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// A private server, a runtime for the limiters' background tasks, and two cluster limits
/// (rpm, tpm) high enough never to refuse within a run.
struct Cluster {
    _server: LocalNats,
    _store: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    rpm: Arc<ClusterLimit>,
    tpm: Arc<ClusterLimit>,
}

fn cluster() -> Cluster {
    let store = tempfile::tempdir().expect("store");
    let port = free_port().expect("port");
    let server = LocalNats::start(port, store.path()).expect("nats-server on PATH");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (rpm, tpm) = runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let quota = ClusterQuota::open(client, "llm", "bench", llmbus::cluster::Replicas::Auto)
            .await
            .expect("bucket");
        // A long lead: on this shared 2-core machine the background task may wait a while
        // for a CPU, and the bench measures the fast path, not the lease round trip.
        let params = |limit| {
            let mut p = ShareParams::new(limit, Duration::from_secs(60));
            p.spend = Duration::from_secs(5);
            p.lead = Duration::from_secs(2);
            p
        };
        (
            Arc::new(quota.limit_with("bench", LimitKind::Rpm, params(1_000_000_000_000))),
            Arc::new(quota.limit_with("bench", LimitKind::Tpm, params(1_000_000_000_000_000))),
        )
    });
    // The first lease: wait for it.
    for limit in [&rpm, &tpm] {
        while limit.try_take(1, Instant::now()).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Cluster {
        _server: server,
        _store: store,
        runtime,
        rpm,
        tpm,
    }
}

fn fast_path(c: &mut Criterion) {
    let cl = cluster();
    let mut g = c.benchmark_group("limit fast path");
    let mut window = SlidingWindow::new(1_000_000_000_000, Instant::now());
    g.bench_function("local sliding window: try_take+settle", |b| {
        b.iter(|| {
            let now = Instant::now();
            let _ = window.try_take(black_box(60), now);
            window.settle(60, black_box(72), now, now);
        })
    });
    let mut refused = 0u64;
    g.bench_function("cluster limit: try_take+settle", |b| {
        b.iter(|| {
            let now = Instant::now();
            match cl.tpm.try_take(black_box(60), now) {
                Ok(t) => cl.tpm.settle(t, black_box(72), now),
                Err(_) => refused += 1,
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("capacity");
    let mut none = Capacity::new(None, None, None);
    g.bench_function("try_acquire+release, no limits", |b| {
        b.iter(|| {
            let now = Instant::now();
            let p = none.try_acquire(black_box(60), now).expect("no limits");
            none.release(p, Some(black_box(72)), now);
        })
    });
    let mut local = Capacity::new(Some(1_000_000_000), Some(1_000_000_000_000), Some(1_000));
    g.bench_function("try_acquire+release, local rpm+tpm", |b| {
        b.iter(|| {
            let now = Instant::now();
            let p = local.try_acquire(black_box(60), now).expect("room");
            local.release(p, Some(black_box(72)), now);
        })
    });
    let mut shared = Capacity::with_shared(
        Some(cl.rpm.clone() as Arc<dyn SharedLimit>),
        Some(cl.tpm.clone() as Arc<dyn SharedLimit>),
        Some(1_000),
        None,
    );
    g.bench_function("try_acquire+release, cluster rpm+tpm", |b| {
        b.iter(|| {
            let now = Instant::now();
            match shared.try_acquire(black_box(60), now) {
                Ok(p) => shared.release(p, Some(black_box(72)), now),
                Err(_) => refused += 1,
            }
        })
    });
    g.finish();
    let writes = cl
        .rpm
        .stats()
        .writes
        .load(std::sync::atomic::Ordering::Relaxed)
        + cl.tpm
            .stats()
            .writes
            .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "cluster limits: {refused} takes refused (the balance ran dry), {writes} KV writes in \
         the background"
    );
    drop(cl.runtime);
}

criterion_group! {
    name = benches;
    config = config();
    targets = fast_path
}
criterion_main!(benches);
