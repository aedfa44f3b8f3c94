//! Memory: a worker's live allocations do not grow with the number of jobs it has served.
//!
//! This test binary counts every byte allocated and freed. It runs a worker, warms it up,
//! then serves 20,000 more mixed jobs (plain, streamed, malformed, unknown model, failing
//! upstream, cancelled) and checks that live memory grew by less than a generous bound. The
//! leak this guards against kept about 6 KB per job for the length of the default deadline
//! (each per-job actor's mailbox was held by its deadline timer): 120 MB for 20,000 jobs.

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use support::{
    gateway::{Gateway, PATIENCE, chat},
    nats_server::NatsServer,
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const CONFIG: &str = r#"
model_list:
  - model_name: demo
    litellm_params: {model: mock/demo, mock_response: "Hello from the memory test, a few words long."}
  - model_name: broken
    litellm_params: {model: mock/broken, mock_response: "litellm.InternalServerError"}
router_settings:
  num_retries: 0
  disable_cooldowns: true
"#;

/// One job of the mix, by its number.
async fn one(gw: &Gateway, nats: &async_nats::Client, i: usize) {
    match i % 6 {
        0 | 1 => {
            let r = gw.complete(chat("demo", "hi")).await;
            assert_eq!(r.status, 200);
        }
        2 => {
            let mut body = chat("demo", "stream");
            body["stream"] = true.into();
            let (_, end) = gw.stream(HeaderMap::new(), body).await;
            assert_eq!(end.status, 200);
        }
        3 => {
            let r = gw.complete_raw(b"{not json").await;
            assert_eq!(r.status, 400);
        }
        4 => {
            let r = gw
                .complete(chat(if i % 12 == 4 { "nope" } else { "broken" }, "x"))
                .await;
            assert!(r.status == 404 || r.status >= 500, "{}", r.status);
        }
        _ => {
            // A stream its requester cancels at once.
            let inbox = nats.new_inbox();
            let mut sub = nats.subscribe(inbox.clone()).await.unwrap();
            let mut body = chat("demo", "cancel me");
            body["stream"] = true.into();
            nats.publish_with_reply(
                "llm.completion",
                inbox.clone(),
                Bytes::from(body.to_string()),
            )
            .await
            .unwrap();
            nats.publish("llm.cancel", Bytes::from(inbox.to_string()))
                .await
                .unwrap();
            nats.flush().await.unwrap();
            // Either the job finished before the cancel arrived, or nothing more comes.
            let _ = tokio::time::timeout(Duration::from_millis(50), async {
                while let Some(m) = sub.next().await {
                    if m.payload.is_empty() {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

async fn run(gw: &Gateway, nats: &async_nats::Client, from: usize, n: usize) {
    futures::stream::iter(from..from + n)
        .for_each_concurrent(32, |i| one(gw, nats, i))
        .await;
}

/// Waits until the worker runs no job.
async fn settled(gw: &Gateway) -> isize {
    let worker = gw.worker.as_ref().unwrap();
    tokio::time::timeout(PATIENCE, async {
        while worker.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every job ends");
    // The usage events of the jobs are stored with acknowledgements, a little behind the jobs:
    // what is measured is what stays once they are, not the backlog.
    tokio::time::timeout(PATIENCE, worker.flush_usage())
        .await
        .expect("the usage events are stored");
    tokio::time::sleep(Duration::from_millis(200)).await;
    LIVE.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_memory_does_not_grow_with_jobs_served() {
    let nats_server = NatsServer::start();
    let worker = support::gateway::start_worker(&nats_server, CONFIG).await;
    let gw = Gateway {
        client: llmbus::client::LlmClient::new(nats_server.client().await, "llm"),
        worker: Some(worker),
        nats: nats_server,
    };
    let nats = gw.nats.client().await;
    run(&gw, &nats, 0, 3_000).await;
    let base = settled(&gw).await;
    run(&gw, &nats, 3_000, 20_000).await;
    let after = settled(&gw).await;
    let growth = after - base;
    eprintln!(
        "live memory: {:.1} MB after warm-up, {:.1} MB after 20,000 more jobs ({:+.1} KB)",
        base as f64 / 1e6,
        after as f64 / 1e6,
        growth as f64 / 1e3
    );
    assert!(
        growth < 4_000_000,
        "live memory grew by {growth} bytes over 20,000 jobs ({} bytes a job)",
        growth / 20_000
    );
}
