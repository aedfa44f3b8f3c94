//! Several workers on one NATS server: the queue group spreads jobs across them, and every
//! job is answered exactly once.

use std::collections::HashMap;

use crate::support::{
    gateway::{PATIENCE, chat, start_worker},
    nats_server::NatsServer,
};
use llmbus::client::LlmClient;

const CONFIG: &str = r#"
model_list:
  - model_name: demo
    litellm_params: {model: openai/demo, mock_response: "hello"}
"#;

#[tokio::test]
async fn two_workers_share_the_load_through_the_queue_group() {
    let nats = NatsServer::start();
    let a = start_worker(&nats, CONFIG).await;
    let b = start_worker(&nats, CONFIG).await;
    let client = LlmClient::new(nats.client().await, "llm");
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        let r = client
            .complete(
                Default::default(),
                chat("demo", &format!("{i}")).to_string().into(),
                PATIENCE,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        // Job ids are `<worker id>-<n>`.
        let job = r.header("Llm-Job-Id").unwrap();
        let worker = job.rsplit_once('-').unwrap().0.to_string();
        *per_worker.entry(worker).or_default() += 1;
    }
    assert_eq!(per_worker.len(), 2, "both workers served: {per_worker:?}");
    // Random spreading: each gets a fair share (the chance of fewer than 50 of 200 is ~1e-13).
    assert!(per_worker.values().all(|n| *n >= 50), "{per_worker:?}");
    a.stop().await;
    // With one worker stopped, the other still answers everything.
    for _ in 0..20 {
        let r = client
            .complete(
                Default::default(),
                chat("demo", "x").to_string().into(),
                PATIENCE,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    b.stop().await;
}
