//! The rest of the cluster state at 50 and 200 workers (the limits are `quota_scale`'s): the
//! membership and the cooldown board, each worker's part run as a worker runs it (its own NATS
//! connection, [`Members`] with the default 2 s heartbeat, a [`HealthBoard`] watching for
//! cooldowns) in one process against one nats-server. Prints, per worker count:
//!
//! - how long until every worker sees every other one, from the last one's start;
//! - the membership bucket's writes per second and bytes per second, and the entries the
//!   server delivers to the watchers per second (every write goes to every watcher);
//! - the CPU the workers' side and the nats-server spend on it per second, in all and per
//!   worker;
//! - how long a cooldown takes to reach every worker's board (p50 / max of the last one).
//!
//! ```sh
//! cargo bench --bench cluster_scale
//! ```
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LLMBUS_SCALE_WORKERS` | 50,200 | worker counts, in turn |
//! | `LLMBUS_SCALE_SECS` | 20 | seconds of steady state measured per run |
//!
//! Without `--bench` (as under `cargo test --all-targets`) it runs a 3-worker, 3 s smoke pass.
//! Figures are printed, never asserted.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use llmbus::{
    cluster::{
        Replicas,
        health::HealthBoard,
        members::{MemberInfo, Members, MembersOptions},
    },
    local_nats::{LocalNats, free_port},
};
use support::{Stats, cpu_seconds, runtime};

/// Cooldowns sent per run, one after the other.
const COOLDOWNS: usize = 10;

fn main() {
    let (workers, secs) = support::scale_plan(20);
    println!("membership and cooldown board at scale — {secs} s of steady state per run");
    println!();
    println!(
        "| workers | all see all after | membership writes/s | KB/s written | entries delivered/s | CPU, workers' side (all / per worker) | CPU, nats-server | a cooldown reaches every board p50 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &workers {
        run(n, Duration::from_secs(secs));
    }
}

fn run(n: usize, secs: Duration) {
    let store = tempfile::tempdir().expect("a JetStream store");
    let nats = LocalNats::start(free_port().expect("a free port"), store.path())
        .expect("start nats-server (is it installed?)");
    let rt = runtime("scale", 2);
    let me = std::process::id();
    let server = nats.pid().unwrap_or(0);
    rt.block_on(async {
        let mut members = Vec::with_capacity(n);
        let mut boards = Vec::with_capacity(n);
        for w in 0..n {
            let client = async_nats::connect(nats.url()).await.expect("connect");
            let info = MemberInfo::new(format!("w{w}"), vec!["demo".into()], "cfg");
            let member = Members::start_with(
                client.clone(),
                "llm",
                info,
                MembersOptions::default(),
            )
            .await
            .expect("join");
            members.push(member);
            let board = HealthBoard::open(client, "llm", format!("w{w}"), Replicas::Auto)
                .await
                .expect("the health bucket");
            let watch = Box::pin(board.watch().await.expect("watch the board"));
            boards.push((board, watch));
        }
        // Every worker sees all the others.
        let joined = Instant::now();
        while !members.iter().all(|m| m.snapshot().len() == n) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let converged = joined.elapsed();

        // Steady state: heartbeats only.
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let seq = |js: async_nats::jetstream::Context| async move {
            let mut s = js.get_stream("KV_LLM_WORKERS").await.unwrap();
            let info = s.info().await.unwrap();
            (info.state.last_sequence, info.state.bytes)
        };
        let (seq0, _) = seq(js.clone()).await;
        let (cpu0, server0) = (cpu_seconds(me), cpu_seconds(server));
        let began = Instant::now();
        tokio::time::sleep(secs).await;
        let elapsed = began.elapsed().as_secs_f64();
        let (cpu1, server1) = (cpu_seconds(me), cpu_seconds(server));
        let (seq1, bytes) = seq(js.clone()).await;
        let writes = (seq1 - seq0) as f64 / elapsed;
        // One entry per worker is kept: its size is the bucket's bytes over its workers.
        let entry = bytes as f64 / n as f64;

        // Cooldowns: one worker publishes, every board must hear it.
        let mut reach = Stats::default();
        for c in 0..COOLDOWNS {
            let sent = Instant::now();
            let deployment = format!("dep-{c}");
            boards[0]
                .0
                .publish_for(&deployment, Duration::from_secs(30), "bench")
                .await
                .expect("publish a cooldown");
            let mut last = Duration::ZERO;
            for (_, watch) in boards.iter_mut() {
                loop {
                    let cooldown = tokio::time::timeout(Duration::from_secs(10), watch.next())
                        .await
                        .expect("the cooldown arrives")
                        .expect("the watch goes on");
                    if cooldown.deployment == deployment {
                        break;
                    }
                }
                last = last.max(sent.elapsed());
            }
            reach.record(last, Ok(()));
        }
        println!(
            "| {n} | {} ms | {writes:.0} | {:.1} | {:.0} | {:.3} s/s / {:.2} ms/s | {:.3} s/s | {:.1} / {:.1} ms |",
            converged.as_millis(),
            writes * entry / 1024.0,
            writes * n as f64,
            (cpu1 - cpu0) / elapsed,
            (cpu1 - cpu0) / elapsed / n as f64 * 1000.0,
            (server1 - server0) / elapsed,
            reach.p(0.5) / 1000.0,
            reach.p(1.0) / 1000.0,
        );
        for m in &members {
            let _ = m.leave().await;
        }
    });
}
