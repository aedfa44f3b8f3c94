//! The soak benchmark: a worker's memory over a million mixed jobs.
//!
//! A private `nats-server`, four fake providers (fast, failing, slow, slow stream) in this
//! process, and one `llmbus serve` **process**, whose resident memory is read from `/proc`
//! every few seconds. The load generator keeps 64 jobs in flight, mixed like a busy day:
//!
//! | share | job |
//! | --- | --- |
//! | 50 % | plain completion |
//! | 20 % | streamed completion, read to its sentinel |
//! | 10 % | the upstream fails (500, retried, then a 502) |
//! | 5 % | malformed body (400) |
//! | 5 % | the job's deadline passes before the slow upstream answers (504) |
//! | 5 % | the client stops waiting after 5 ms and walks away (the worker answers into the void) |
//! | 5 % | a stream its client cancels after the first chunk (`llm.cancel`) |
//!
//! It prints RSS over time and the verdict: **pass** when RSS after the run is within 10 % of
//! RSS after the warm-up (the first 10 % of the jobs) and the second half shows no upward
//! trend (under 1 MB per 100,000 jobs).
//!
//! Run: `cargo bench --bench soak`. `LLMBUS_SOAK_JOBS` (default 1,000,000) sets the count,
//! `LLMBUS_SOAK_CONCURRENCY` (64) the jobs in flight. Without `--bench` (as under `cargo test
//! --all-targets`) it runs a smoke pass of 2,000 jobs.

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use bytes::Bytes;
use fake_provider::{FakeProvider, Fault};
use futures::StreamExt;
use llmbus::{
    client::LlmClient,
    local_nats::{LocalNats, free_port},
};
use support::{WorkerProcess, runtime, slope};

const PATIENCE: Duration = Duration::from_secs(30);

fn config(
    fast: &FakeProvider,
    failing: &FakeProvider,
    slow: &FakeProvider,
    drip: &FakeProvider,
) -> String {
    let dep = |name: &str, fake: &FakeProvider| {
        format!(
            "  - model_name: {name}\n    litellm_params: {{model: openai/gpt-4o-mini, api_base: \"{}\", api_key: sk-soak-0123456789}}\n",
            fake.url()
        )
    };
    format!(
        "model_list:\n{}{}{}{}router_settings:\n  num_retries: 1\n  disable_cooldowns: true\n  retry_after: 0\nllmbus:\n  metrics_listen: null\n  max_in_flight: 4096\n",
        dep("fast", fast),
        dep("failing", failing),
        dep("slow", slow),
        dep("drip", drip),
    )
}

fn body(model: &str, stream: bool) -> Bytes {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"}
        ]
    });
    if stream {
        v["stream"] = true.into();
    }
    Bytes::from(v.to_string())
}

/// One job of the mix; `Err` only for an answer the job should not have had.
async fn one(client: &LlmClient, nats: &async_nats::Client, i: u64) -> Result<(), String> {
    let status = |want: u16, got: u16| {
        if want == got {
            Ok(())
        } else {
            Err(format!("wanted {want}, got {got}"))
        }
    };
    match i % 20 {
        0..=9 => {
            let r = client
                .complete(HeaderMap::new(), body("fast", false), PATIENCE)
                .await
                .map_err(|e| e.to_string())?;
            status(200, r.status)
        }
        10..=13 => {
            let reader = client
                .stream(HeaderMap::new(), body("fast", true), PATIENCE)
                .await
                .map_err(|e| e.to_string())?;
            let (_, end) = reader.collect().await.map_err(|e| e.to_string())?;
            status(200, end.status)
        }
        14 | 15 => {
            let r = client
                .complete(HeaderMap::new(), body("failing", false), PATIENCE)
                .await
                .map_err(|e| e.to_string())?;
            status(502, r.status)
        }
        16 => {
            let r = client
                .complete(
                    HeaderMap::new(),
                    Bytes::from_static(b"{\"model\": 12"),
                    PATIENCE,
                )
                .await
                .map_err(|e| e.to_string())?;
            status(400, r.status)
        }
        17 => {
            let mut h = HeaderMap::new();
            h.insert("Llm-Timeout-Ms", "20");
            let r = client
                .complete(h, body("slow", false), PATIENCE)
                .await
                .map_err(|e| e.to_string())?;
            status(504, r.status)
        }
        18 => {
            // The client walks away; the worker answers later into the void.
            let _ = client
                .complete(
                    HeaderMap::new(),
                    body("slow", false),
                    Duration::from_millis(5),
                )
                .await;
            Ok(())
        }
        _ => {
            let inbox = nats.new_inbox();
            let mut sub = nats
                .subscribe(inbox.clone())
                .await
                .map_err(|e| e.to_string())?;
            nats.publish_with_reply("llm.completion", inbox.clone(), body("drip", true))
                .await
                .map_err(|e| e.to_string())?;
            let first = tokio::time::timeout(PATIENCE, sub.next()).await;
            if !matches!(first, Ok(Some(_))) {
                return Err("no first chunk".into());
            }
            nats.publish("llm.cancel", Bytes::from(inbox.to_string()))
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    }
}

fn main() {
    let smoke = support::smoke();
    let var = support::env_count;
    let total = if smoke {
        2_000
    } else {
        var("LLMBUS_SOAK_JOBS", 1_000_000)
    };
    let concurrency = var("LLMBUS_SOAK_CONCURRENCY", 64).max(1);

    let store = tempfile::tempdir().expect("a JetStream store");
    let nats = LocalNats::start(free_port().expect("a free port"), store.path())
        .expect("start nats-server (is it installed?)");
    let fake_rt = runtime("fake", 1);
    let (fast, failing, slow, drip) = fake_rt.block_on(async {
        let fast = FakeProvider::start().await;
        let failing = FakeProvider::start().await;
        failing.set_default(Fault::status(500));
        let slow = FakeProvider::start().await;
        slow.set_default(Fault::Delay(Duration::from_millis(100)));
        let drip = FakeProvider::start().await;
        drip.set_default(Fault::StreamChunks {
            pieces: (0..20).map(|i| format!("piece {i} ")).collect(),
            gap: Duration::from_millis(10),
        });
        for f in [&fast, &failing, &slow, &drip] {
            f.keep_requests(false);
        }
        (fast, failing, slow, drip)
    });
    let worker = WorkerProcess::start(&nats.url(), &config(&fast, &failing, &slow, &drip), "warn");
    let idle = worker.rss_mb();

    let load_rt = runtime("load", 1);
    let done = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let began = Instant::now();
    let load = load_rt.spawn({
        let url = nats.url();
        let done = done.clone();
        let unexpected = unexpected.clone();
        let first_error = first_error.clone();
        async move {
            let nats = async_nats::connect(&url).await.expect("connect");
            let client = LlmClient::new(nats.clone(), "llm");
            let next = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (client, nats, next, done, unexpected, first_error) = (
                        client.clone(),
                        nats.clone(),
                        next.clone(),
                        done.clone(),
                        unexpected.clone(),
                        first_error.clone(),
                    );
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= total {
                                break;
                            }
                            if let Err(e) = one(&client, &nats, i).await {
                                unexpected.fetch_add(1, Ordering::Relaxed);
                                first_error.lock().unwrap().get_or_insert(e);
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }
    });

    println!(
        "llmbus soak: {total} mixed jobs, {concurrency} in flight; worker pid {}",
        worker.pid()
    );
    println!(
        "idle RSS {idle:.1} MB (started in {} ms)\n",
        worker.started_in.as_millis()
    );
    println!(
        "{:>8} {:>10} {:>9} {:>9}",
        "time s", "jobs", "jobs/s", "RSS MB"
    );
    let warmup_at = total / 10;
    let mut warm_rss = None;
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let interval = if smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (Instant::now(), 0u64);
    while !load.is_finished() {
        std::thread::sleep(interval);
        let n = done.load(Ordering::Relaxed);
        let rss = worker.rss_mb();
        let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), n);
        println!(
            "{:>8.1} {n:>10} {rate:>9.0} {rss:>9.1}",
            began.elapsed().as_secs_f64()
        );
        if warm_rss.is_none() && n >= warmup_at {
            warm_rss = Some(rss);
        }
        samples.push((n as f64, rss));
    }
    load_rt.block_on(load).expect("the load ends");
    // Let the last slow answers and abandoned jobs end, then read the memory the worker keeps.
    std::thread::sleep(Duration::from_secs(if smoke { 1 } else { 3 }));
    let after = worker.rss_mb();
    let elapsed = began.elapsed();
    let warm = warm_rss.unwrap_or(after);
    let half: Vec<&(f64, f64)> = samples
        .iter()
        .filter(|(n, _)| *n >= total as f64 / 2.0)
        .collect();
    let per_100k = slope(
        &half.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        &half.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
    ) * 100_000.0;
    let growth = (after - warm) / warm.max(1e-9) * 100.0;
    let pass = growth.abs() <= 10.0 && per_100k < 1.0;
    println!(
        "\n{total} jobs in {:.1} s ({:.0} jobs/s), {} unexpected answers{}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        unexpected.load(Ordering::Relaxed),
        first_error
            .lock()
            .unwrap()
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
    println!(
        "RSS: idle {idle:.1} MB, after warm-up {warm:.1} MB, after the run {after:.1} MB ({growth:+.1} %); \
         trend over the second half {per_100k:+.2} MB per 100,000 jobs"
    );
    println!(
        "verdict: {}",
        if pass {
            "PASS (flat)"
        } else {
            "FAIL (memory grows)"
        }
    );
    drop((fast, failing, slow, drip));
    if !pass && !smoke {
        std::process::exit(1);
    }
}
