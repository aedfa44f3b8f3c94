//! Capacity: jobs wait for a deployment's RPM/TPM/parallel capacity until their deadline,
//! then get a 429; the worker bounds its jobs in flight; many concurrent jobs all get answers.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{Gateway, chat, headers},
};

#[tokio::test]
async fn a_job_waits_for_capacity_then_gets_a_429_at_its_deadline() {
    let gw = Gateway::start(
        r#"
model_list:
  - model_name: slow
    litellm_params: {model: openai/x, mock_response: "ok", rpm: 1}
"#,
    )
    .await;
    assert_eq!(gw.complete(chat("slow", "first")).await.status, 200);
    let started = Instant::now();
    let r = gw
        .complete_with(
            headers(&[("Llm-Timeout-Ms", "400")]),
            chat("slow", "second"),
        )
        .await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it waited for capacity first"
    );
}

#[tokio::test]
async fn a_waiting_job_is_served_when_capacity_returns() {
    // One call at a time, each taking 100 ms upstream: 12 jobs at once wait their turn, first
    // come first served, and every one is answered within its deadline.
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::Delay(Duration::from_millis(100)));
    let gw = Gateway::start(&format!(
        r#"
model_list:
  - model_name: paced
    litellm_params: {{model: openai/x, api_base: "{}", api_key: sk-x, max_parallel_requests: 1}}
"#,
        fake.url()
    ))
    .await;
    let mut statuses = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = gw.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .complete(
                    headers(&[("Llm-Timeout-Ms", "20000")]),
                    chat("paced", "x").to_string().into(),
                    support::gateway::PATIENCE,
                )
                .await
                .unwrap()
                .status
        }));
    }
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn the_worker_bounds_its_jobs_in_flight_with_a_503() {
    let gw = Gateway::start(
        r#"
model_list:
  - model_name: slow
    litellm_params: {model: openai/x, mock_response: "ok", rpm: 1}
llmbus:
  max_in_flight: 2
"#,
    )
    .await;
    assert_eq!(
        gw.complete(chat("slow", "uses the one request"))
            .await
            .status,
        200
    );
    // Two jobs wait for capacity and fill the worker. They are published (not awaited) on
    // the client's connection, so NATS delivers them before the probe sent after them.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let reader = gw
            .client
            .stream(
                headers(&[("Llm-Timeout-Ms", "3000")]),
                chat("slow", "x").to_string().into(),
                support::gateway::PATIENCE,
            )
            .await
            .unwrap();
        waiting.push(reader);
    }
    let r = gw
        .complete_with(
            headers(&[("Llm-Timeout-Ms", "50")]),
            chat("slow", "one too many"),
        )
        .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "worker_busy");
    for mut w in waiting {
        let reply = w.next().await.unwrap().unwrap();
        assert_eq!(reply.status, 429);
    }
}

#[tokio::test]
async fn five_hundred_concurrent_jobs_are_all_answered() {
    let gw = Gateway::start(
        r#"
model_list:
  - model_name: demo
    litellm_params: {model: openai/a, mock_response: "hello"}
  - model_name: demo
    litellm_params: {model: openai/b, mock_response: "hello"}
"#,
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..500 {
        let client = gw.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = chat("demo", &format!("job {i}"));
            if i % 2 == 0 {
                body["stream"] = serde_json::json!(true);
                let (chunks, end) = client
                    .stream(
                        Default::default(),
                        body.to_string().into(),
                        support::gateway::PATIENCE,
                    )
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                (end.status, support::gateway::streamed_text(&chunks))
            } else {
                let r = client
                    .complete(
                        Default::default(),
                        body.to_string().into(),
                        support::gateway::PATIENCE,
                    )
                    .await
                    .unwrap();
                (r.status, support::gateway::content(&r))
            }
        }));
    }
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(text, "hello");
    }
}
