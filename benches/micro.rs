//! Micro-benchmarks of the hot pieces of a job's path: parsing the request body, the upstream
//! round of JSON (request out, response in), serializing the reply, capacity accounting,
//! pricing, the request headers, and the actor/task hops a job makes.
//!
//! Run: `cargo bench --bench micro` (a filter narrows it: `cargo bench --bench micro -- json`).
//! Measurement times are short on purpose; `--measurement-time` and friends override them.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use llmbus::{
    limits::{Capacity, estimate_prompt_tokens},
    pricing,
    wire::{
        headers::RequestHeaders,
        openai::{ChatCompletionRequest, ChatCompletionResponse},
    },
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// A typical small chat request (the load benchmark sends the same one).
const REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a concise assistant. Answer in one sentence."},{"role":"user","content":"What is the capital of France?"},{"role":"assistant","content":"The capital of France is Paris."},{"role":"user","content":"And roughly how many people live there, city proper?"}],"max_tokens":64,"temperature":0.2,"user":"bench-user-42"}"#;

/// A typical upstream answer, as OpenAI sends it.
const RESPONSE: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"About 2.1 million people live in Paris proper.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":56,"completion_tokens":12,"total_tokens":68,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

fn json(c: &mut Criterion) {
    let request: ChatCompletionRequest = serde_json::from_str(REQUEST).expect("request parses");
    let response: ChatCompletionResponse = serde_json::from_str(RESPONSE).expect("response parses");

    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    g.bench_function("parse ChatCompletionRequest", |b| {
        b.iter(|| {
            serde_json::from_slice::<ChatCompletionRequest>(black_box(REQUEST.as_bytes()))
                .expect("parses")
        })
    });
    g.bench_function("parse the same request as serde_json::Value", |b| {
        b.iter(|| {
            serde_json::from_slice::<serde_json::Value>(black_box(REQUEST.as_bytes()))
                .expect("parses")
        })
    });
    g.bench_function("clone ChatCompletionRequest (provider send)", |b| {
        b.iter(|| black_box(&request).clone())
    });
    g.bench_function("serialize ChatCompletionRequest (upstream body)", |b| {
        b.iter(|| serde_json::to_vec(black_box(&request)).expect("serializes"))
    });
    g.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    g.bench_function("parse ChatCompletionResponse (upstream answer)", |b| {
        b.iter(|| {
            serde_json::from_slice::<ChatCompletionResponse>(black_box(RESPONSE.as_bytes()))
                .expect("parses")
        })
    });
    g.bench_function("serialize ChatCompletionResponse (reply)", |b| {
        b.iter(|| serde_json::to_vec(black_box(&response)).expect("serializes"))
    });
    g.finish();

    c.bench_function("estimate_prompt_tokens", |b| {
        b.iter(|| estimate_prompt_tokens(black_box(&request)))
    });
}

fn capacity(c: &mut Criterion) {
    let mut g = c.benchmark_group("capacity");
    let mut unlimited = Capacity::new(None, None, None);
    g.bench_function("try_acquire+release, no limits", |b| {
        b.iter(|| {
            let now = Instant::now();
            let permit = unlimited
                .try_acquire(black_box(60), now)
                .expect("no limits");
            unlimited.release(permit, Some(black_box(72)), now);
        })
    });
    // Limits high enough never to refuse within a run.
    let mut limited = Capacity::new(Some(1_000_000_000), Some(1_000_000_000_000), Some(1_000));
    g.bench_function("try_acquire+release, rpm+tpm+parallel", |b| {
        b.iter(|| {
            let now = Instant::now();
            let permit = limited.try_acquire(black_box(60), now).expect("room");
            limited.release(permit, Some(black_box(72)), now);
        })
    });
    g.finish();
}

fn pricing(c: &mut Criterion) {
    let mut g = c.benchmark_group("pricing");
    g.bench_function("lookup openai/gpt-4o-mini", |b| {
        b.iter(|| pricing::lookup(black_box("openai/gpt-4o-mini")))
    });
    g.bench_function("lookup dated snapshot claude-sonnet-4-5-20250929", |b| {
        b.iter(|| pricing::lookup(black_box("anthropic/claude-sonnet-4-5-20250929")))
    });
    g.bench_function("lookup unknown model", |b| {
        b.iter(|| pricing::lookup(black_box("openai/no-such-model-2030-01-01")))
    });
    let price = pricing::lookup("gpt-4o-mini").expect("gpt-4o-mini has a price");
    let response: ChatCompletionResponse = serde_json::from_str(RESPONSE).expect("response parses");
    let usage = response.usage.expect("usage");
    g.bench_function("cost", |b| {
        b.iter(|| pricing::cost(black_box(&price), black_box(&usage)))
    });
    g.finish();
}

/// What the job side pays to hand its usage event over: `UsageSink::record` into a buffer a
/// thread drains, and into a full buffer (the event is dropped and counted).
fn usage(c: &mut Criterion) {
    use llmbus::usage::{UsageEvent, UsageSink};
    let event = UsageEvent {
        job_id: "worker-0123456789-42".into(),
        timestamp_ms: 1_764_458_991_511,
        model_group: "gpt-4o-mini".into(),
        deployment: Some("gpt-4o-mini-1".into()),
        provider: Some("openai".into()),
        model: Some("openai/gpt-4o-mini".into()),
        tags: vec!["eu".into()],
        prompt_tokens: 56,
        completion_tokens: 12,
        cost_usd: 0.0000156,
        latency_ms: 412.0,
        status: 200,
        attempts: 1,
        ..Default::default()
    };
    let mut g = c.benchmark_group("usage");
    // As in a worker: the publisher is a task on the same multi-threaded runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (sink, rx) = UsageSink::channel(1 << 16);
    // Drains the way the publisher does: on a timer, never waiting in `recv`.
    let drainer = rt.spawn(async move {
        let mut rx = rx;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            loop {
                match rx.try_recv_event() {
                    Ok(e) => drop(black_box(e)),
                    Err(true) => break,
                    Err(false) => return,
                }
            }
        }
    });
    g.bench_function("record (publisher draining every 20 ms)", |b| {
        b.iter(|| {
            let sink = &sink;
            rt.block_on(async { sink.record(black_box(event.clone())) })
        })
    });
    g.bench_function("block_on alone (subtract from the line above)", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    drop(sink);
    let _ = rt.block_on(drainer);
    let (full, _rx) = UsageSink::channel(1);
    full.record(event.clone());
    g.bench_function("record (buffer full: dropped)", |b| {
        b.iter(|| full.record(black_box(event.clone())))
    });
    g.bench_function("clone the event (part of both)", |b| {
        b.iter(|| black_box(event.clone()))
    });
    g.finish();
}

fn headers(c: &mut Criterion) {
    let mut typical = HeaderMap::new();
    typical.insert("Authorization", "Bearer sk-llmbus-virtual-key-0123456789");
    typical.insert("Llm-Timeout-Ms", "30000");
    typical.insert("Llm-Fallbacks", "gpt-4o, claude-sonnet-4-5");
    typical.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    typical.insert("Nats-Msg-Id", "9f1c2a4e-5b7d-4c1e-8a2b-3d4e5f607182");
    let mut g = c.benchmark_group("headers");
    g.bench_function("RequestHeaders::from_nats, 5 headers", |b| {
        b.iter(|| RequestHeaders::from_nats(Some(black_box(&typical))).expect("valid"))
    });
    g.bench_function("RequestHeaders::from_nats, none", |b| {
        b.iter(|| RequestHeaders::from_nats(black_box(None)).expect("valid"))
    });
    g.finish();
}

/// A do-nothing actor: what a request actor costs to start and stop, and what one `call`
/// round trip (router `Route`, deployment `Acquire`) costs, without their work.
struct Nop;

enum NopMsg {
    Ping(RpcReplyPort<u64>),
}

impl Actor for Nop {
    type Msg = NopMsg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NopMsg::Ping(reply) => {
                *state += 1;
                let _ = reply.send(*state);
            }
        }
        Ok(())
    }
}

/// Runs `iters` rounds of `f` on `rt` and times them.
fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

fn hops(c: &mut Criterion) {
    // The worker's shape: a multi-thread runtime with 2 workers; the caller is a task on it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("hops");
    g.bench_function("tokio::spawn + join", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        tokio::spawn(async { black_box(1) }).await.expect("joins");
                    }
                    start.elapsed()
                })
                .await
                .expect("joins")
            })
        })
    });
    g.bench_function("ractor spawn + stop_and_wait (one per job)", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                let (actor, handle) = Actor::spawn(None, Nop, ()).await.expect("spawns");
                actor.stop(None);
                handle.await.expect("ends");
            })
        })
    });
    let (actor, handle) = rt.block_on(Actor::spawn(None, Nop, ())).expect("spawns");
    g.bench_function("ractor call round trip (Route, Acquire)", |b| {
        b.iter_custom(|iters| {
            let actor = actor.clone();
            rt.block_on(async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let n = ractor::call!(actor, NopMsg::Ping).expect("answers");
                        black_box(n);
                    }
                    start.elapsed()
                })
                .await
                .expect("joins")
            })
        })
    });
    g.finish();
    actor.stop(None);
    let _ = rt.block_on(handle);
}

criterion_group! {
    name = benches;
    config = config();
    targets = json, capacity, pricing, usage, headers, hops
}
criterion_main!(benches);
