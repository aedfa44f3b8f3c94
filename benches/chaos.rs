//! Chaos under load: three `llmbus serve` processes behind `llmbus front`, on a private
//! nats-server, against the fake provider, with a steady mixed load (HTTP plain, streamed and
//! limited through the front; plain and streamed straight on NATS). Phase after phase, while
//! the load runs: `kill -9` a worker (a new one is started at the phase's end), restart the
//! nats-server, stall the provider, reset its connections, make it answer garbage. Then the
//! audit: jobs answered twice, capacity left in flight, a burst of the limited deployment's
//! full parallelism, usage events per answered request.
//!
//! Prints per phase: requests, ok, timeouts, p50/p99 and errors by kind; then the audit.
//! The harness is `tests/support/chaos.rs` (the test `tests/it/chaos.rs` runs a short case).
//!
//! Run: `cargo bench --bench chaos`. Environment: `LLMBUS_CHAOS_SECS` (seconds per phase,
//! default 8), `LLMBUS_CHAOS_CLIENTS` (concurrent requesters, default 8). Without `--bench`
//! (as under `cargo test --all-targets`) it only says so and measures nothing.

#[path = "../tests/support/chaos.rs"]
mod chaos;
#[path = "../tests/support/chaos_nats.rs"]
mod chaos_nats;
#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;
#[allow(dead_code)]
#[path = "../tests/support/llmbus_process.rs"]
mod llmbus_process;
#[allow(dead_code)]
#[path = "../tests/support/worker_process.rs"]
mod worker_process;

use std::time::{Duration, Instant};

use chaos::{Cluster, Kind, Load, Verdict};
use fake_provider::Fault;

/// How many calls each provider fault phase spoils.
const SPOILED: usize = 12;

const PHASES: [&str; 7] = [
    "steady",
    "kill -9",
    "nats restart",
    "stall",
    "reset",
    "garbage",
    "after",
];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("chaos: run with `cargo bench --bench chaos` to measure");
        return;
    }
    let var = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(default)
    };
    let phase = Duration::from_secs_f64(var("LLMBUS_CHAOS_SECS", 8.0).clamp(1.0, 600.0));
    let clients = var("LLMBUS_CHAOS_CLIENTS", 8.0).clamp(1.0, 256.0) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run(phase, clients));
}

async fn run(phase: Duration, clients: usize) {
    let mut c = Cluster::start(3).await;
    c.fake.set_default(Fault::Delay(Duration::from_millis(150)));
    let load = Load::start(&c, clients).await;
    let side = load.nats.clone();
    let began = Instant::now();
    let mut lost_on_kill = 0usize;
    let mut kill_at = None;
    for (p, name) in PHASES.iter().enumerate() {
        load.set_phase(p);
        let start = Instant::now();
        match *name {
            "kill -9" => {
                kill_at = Some(Instant::now());
                c.kill_worker();
            }
            "nats restart" => tokio::task::block_in_place(|| c.restart_nats()),
            "stall" => spoil(&c, Fault::NeverEnding { after_chunks: 0 }),
            "reset" => spoil(&c, Fault::BrokenStream { after_chunks: 1 }),
            "garbage" => {
                spoil(&c, Fault::MalformedJson);
                spoil(&c, Fault::GarbageSse);
                spoil(
                    &c,
                    Fault::Status {
                        status: 200,
                        body: "<html>not json</html>".into(),
                    },
                );
            }
            _ => {}
        }
        tokio::time::sleep(phase.saturating_sub(start.elapsed())).await;
        if *name == "kill -9" {
            c.add_worker().await;
        }
    }
    let outcomes = load.stop().await;
    let elapsed = began.elapsed();
    if let Some(at) = kill_at {
        lost_on_kill = outcomes
            .iter()
            .filter(|o| {
                o.verdict == Verdict::Timeout && o.started <= at && at < o.started + chaos::DEADLINE
            })
            .count();
    }
    println!(
        "chaos: 3 workers, llmbus front, {clients} clients, {:.0} s per phase, {} requests in {:.1} s; \
         deadline {} s, requesters wait {} s more",
        phase.as_secs_f64(),
        outcomes.len(),
        elapsed.as_secs_f64(),
        chaos::DEADLINE.as_secs(),
        chaos::SLACK.as_secs()
    );
    print!("{}", chaos::report(&PHASES, &outcomes));
    let by_kind = |k: Kind| {
        let mine: Vec<_> = outcomes.iter().filter(|o| o.kind == k).collect();
        let ok = mine.iter().filter(|o| o.verdict == Verdict::Ok).count();
        format!("{k:?} {ok}/{}", mine.len())
    };
    println!(
        "by kind (ok/all): {}",
        [
            Kind::HttpPlain,
            Kind::HttpStream,
            Kind::HttpLimited,
            Kind::NatsPlain,
            Kind::NatsStream
        ]
        .map(by_kind)
        .join(", ")
    );
    println!("timeouts of requests in flight on the killed worker: {lost_on_kill}");
    let audit = c.audit(&side, &outcomes).await;
    println!(
        "audit: answered twice {}, in flight at rest per worker {:?}, burst of the limited \
         deployment {}/{}, usage events {}, answered requests without a 200 usage event {}, \
         with two or more {}",
        audit.duplicates.len(),
        audit.in_flight,
        audit.burst_ok,
        2 * chaos::LIMITED_PARALLEL,
        audit.usage_events,
        audit.usage_missing.len(),
        audit.usage_twice.len()
    );
    let front_log = c.front.log();
    let resent = front_log.matches("sent a job again").count();
    let gone = front_log.matches("is gone (no responders").count();
    println!("llmbus front: {gone} worker(s) seen gone, {resent} job(s) sent again");
}

/// The next [`SPOILED`] provider calls get `fault`.
fn spoil(c: &Cluster, fault: Fault) {
    for _ in 0..SPOILED {
        c.fake.push(fault.clone());
    }
}
