//! What each worker of a two-worker cluster spends in CPU, and what the spend aggregator's
//! lease saves: only the worker that holds it reads the usage events back.
//!
//! Each round starts a private `nats-server` with JetStream and two `llmbus serve` processes
//! with a mock deployment (no upstream, so a job's CPU is llmbus's own), sends the jobs over
//! NATS with 32 in flight (the queue group spreads them over both workers), waits until
//! `llmbus spend`'s aggregates have counted every one, and reads each worker's CPU time
//! (`utime + stime` from `/proc/<pid>/stat`) from just before the load to then. It prints the
//! two workers' CPU seconds, the difference (what the lease holder pays to aggregate, per
//! event) and the cluster's CPU per job.
//!
//! Run: `cargo bench --bench cluster_cpu`. `LLMBUS_CLUSTER_JOBS` (default 50,000) sets the
//! jobs per round, `LLMBUS_CLUSTER_ROUNDS` (4) the rounds. Without `--bench` (as under
//! `cargo test --all-targets`) it runs one smoke round of 1,000 jobs.

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use llmbus::{
    client::LlmClient,
    local_nats::{LocalNats, free_port},
    usage::report,
    wire::Subjects,
};
use support::{WorkerProcess, cpu_seconds, runtime};

const CONFIG: &str = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, mock_response: \"hello from the mock\"}\nllmbus:\n  metrics_listen: null\n";

const IN_FLIGHT: usize = 32;

/// Sends `jobs` jobs, `IN_FLIGHT` at a time; the count that did not answer 200.
async fn load(client: &LlmClient, jobs: u64) -> u64 {
    let body = Bytes::from(
        serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    );
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, next, body) = (client.clone(), next.clone(), body.clone());
            tokio::spawn(async move {
                let mut failed = 0;
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                    let r = client
                        .complete(Default::default(), body.clone(), Duration::from_secs(30))
                        .await;
                    if !r.is_ok_and(|r| r.status == 200) {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(0);
    }
    failed
}

fn main() {
    let smoke = support::smoke();
    let var = support::env_count;
    let (jobs, rounds) = if smoke {
        (1_000, 1)
    } else {
        (
            var("LLMBUS_CLUSTER_JOBS", 50_000),
            var("LLMBUS_CLUSTER_ROUNDS", 4),
        )
    };
    let rt = runtime("load", 1);
    println!("llmbus cluster CPU: 2 workers, {jobs} mock jobs a round, {IN_FLIGHT} in flight\n");
    println!(
        "{:>5} {:>9} {:>12} {:>12} {:>16} {:>14}",
        "round", "failed", "worker A s", "worker B s", "A-B per job µs", "cluster µs/job"
    );
    for round in 1..=rounds {
        let store = tempfile::tempdir().expect("a JetStream store");
        let nats = LocalNats::start(free_port().expect("a free port"), store.path())
            .expect("start nats-server (is it installed?)");
        let workers = [
            WorkerProcess::start(&nats.url(), CONFIG, "warn"),
            WorkerProcess::start(&nats.url(), CONFIG, "warn"),
        ];
        let (failed, used) = rt.block_on(async {
            let nc = async_nats::connect(nats.url()).await.expect("connect");
            let client = LlmClient::new(nc.clone(), "llm");
            // Warm up (and let an aggregator take the lease), then count from here.
            load(&client, 200).await;
            let before = workers.each_ref().map(|w| cpu_seconds(w.pid()));
            let failed = load(&client, jobs).await;
            // Until every event is aggregated: the holder's reading is part of the cost.
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                let r = report::spend(nc.clone(), &Subjects::default(), None).await;
                if r.is_ok_and(|r| r.pending() == 0 && r.spend.total.requests >= jobs + 200) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let after = workers.each_ref().map(|w| cpu_seconds(w.pid()));
            (failed, [after[0] - before[0], after[1] - before[1]])
        });
        let [a, b] = if used[0] >= used[1] {
            used
        } else {
            [used[1], used[0]]
        };
        println!(
            "{round:>5} {failed:>9} {a:>12.2} {b:>12.2} {:>16.1} {:>14.1}",
            (a - b) / jobs as f64 * 1e6,
            (a + b) / jobs as f64 * 1e6
        );
    }
    println!(
        "\nA is the worker that used more CPU: the one holding the aggregator's lease, which \
         reads every usage event back; B does not. Before the lease both read them all."
    );
}
