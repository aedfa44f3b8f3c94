//! A NATS server restart under load: the worker's connection reconnects by itself, async-nats
//! subscribes the service endpoints again, and the worker serves again; the upstream calls in
//! flight during the outage finish, and their replies to requesters that went away are dropped
//! quietly. The time from the restart to the first successful reply is printed; the test only
//! fails past a generous bound.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{Gateway, PATIENCE, chat, content},
};
use bytes::Bytes;
use llmbus::client::{LlmClient, health};
use tokio::sync::watch;

/// The longest a recovery may take before the test fails.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_again_after_the_nats_server_restarts() {
    let fast = FakeProvider::start().await;
    fast.set_default(Fault::Delay(Duration::from_millis(100)));
    let slow = FakeProvider::start().await;
    slow.set_default(Fault::Delay(Duration::from_secs(2)));
    let mut gw = Gateway::start(&format!(
        "model_list:\n  \
         - model_name: fast\n    litellm_params: {{model: openai/gpt-4o-mini, api_base: \"{}\", api_key: k}}\n  \
         - model_name: slow\n    litellm_params: {{model: openai/gpt-4o-mini, api_base: \"{}\", api_key: k}}\n",
        fast.url(),
        slow.url()
    ))
    .await;

    // Steady load: each success records when its request was sent.
    let (sent_ok_tx, mut sent_ok) = watch::channel(Vec::<Instant>::new());
    let sent_ok_tx = Arc::new(sent_ok_tx);
    let failures = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..4 {
        let client = LlmClient::new(gw.nats.client().await, "llm");
        let (sent_ok_tx, failures, stop) = (sent_ok_tx.clone(), failures.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                let text = format!("client {c} job {i}");
                match client
                    .complete(
                        Default::default(),
                        Bytes::from(chat("fast", &text).to_string()),
                        Duration::from_secs(3),
                    )
                    .await
                {
                    Ok(r) if r.status == 200 && content(&r) == format!("echo: {text}") => {
                        sent_ok_tx.send_modify(|v| v.push(sent));
                    }
                    // A request sent while the server is down fails: expected.
                    _ => *failures.lock().unwrap() += 1,
                }
            }
        }));
    }
    let running = tokio::time::timeout(PATIENCE, sent_ok.wait_for(|v| v.len() >= 20))
        .await
        .is_ok();
    assert!(running, "the load runs before the restart");

    // A requester that goes away while its upstream call runs through the outage.
    let gone = LlmClient::new(gw.nats.client().await, "llm");
    let abandoned = tokio::spawn(async move {
        let _ = gone
            .complete(
                Default::default(),
                Bytes::from(chat("slow", "nobody waits for me").to_string()),
                Duration::from_millis(500),
            )
            .await;
        // Dropping `gone` closes its connection: its inbox is gone for good.
    });
    slow.wait_for_requests(1, PATIENCE).await;

    gw.nats.kill();
    tokio::task::block_in_place(|| gw.nats.restart());
    let restarted = Instant::now();
    // Reduced to a bool at once: holding the watch's read guard would block the load tasks.
    let recovered = matches!(
        tokio::time::timeout(
            RECOVERY_BOUND,
            sent_ok.wait_for(|v| v.iter().any(|sent| *sent >= restarted)),
        )
        .await,
        Ok(Ok(_))
    );
    let recovery = restarted.elapsed();
    assert!(
        recovered,
        "no successful reply within {RECOVERY_BOUND:?} of the NATS restart"
    );
    eprintln!("NATS restart: first successful reply {recovery:?} after the server was back");

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a load task");
    }
    abandoned.await.expect("the abandoned requester");
    eprintln!(
        "NATS restart: {} requests answered, {} failed during the outage",
        sent_ok.borrow().len(),
        failures.lock().unwrap()
    );

    // The worker is healthy: it serves every job, its actors answer, and it reports itself as
    // serving through the services framework (re-subscribed after the reconnect).
    for i in 0..10 {
        let r = gw.complete(chat("fast", &format!("after {i}"))).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // The abandoned job (2 s upstream) finishes too: its reply goes nowhere, quietly, and the
    // worker's jobs in flight (from `$SRV.STATS`, re-subscribed after the reconnect) drop to 0.
    let mut last = Vec::new();
    for _ in 0..150 {
        last = health::check(gw.client.nats(), "llm", Duration::from_secs(2))
            .await
            .expect("health check");
        if last.iter().any(|w| w.is_ready() && w.in_flight == Some(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.iter().any(|w| w.is_ready() && w.in_flight == Some(0)),
        "the worker does not report itself as serving and idle: {last:?}"
    );
    assert!(gw.worker.as_ref().unwrap().spend().await.is_some());
    if let Some(worker) = gw.worker.take() {
        worker.stop().await;
    }
}
