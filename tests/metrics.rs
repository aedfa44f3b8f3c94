//! Prometheus metrics: after a job, the exporter shows requests by status, latency and
//! overhead histograms with explicit buckets, tokens, jobs in flight and deployment states.

mod support;

use llmbus::{local_nats::free_port, worker::ops};
use support::gateway::{Gateway, chat};

#[tokio::test]
async fn metrics_are_exported_with_buckets() {
    let port = free_port().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    ops::install_metrics(addr).expect("metrics listener");
    let gw = Gateway::start(
        r#"
model_list:
  - model_name: demo
    litellm_params: {model: openai/gpt-4o-mini, mock_response: "hello", rpm: 100, api_key: sk-metric-secret}
    model_info: {id: demo-1}
  - model_name: demo
    litellm_params: {model: nosuch/provider}
    model_info: {id: broken}
"#,
    )
    .await;
    assert_eq!(gw.complete(chat("demo", "hi")).await.status, 200);
    assert_eq!(gw.complete(chat("nope", "hi")).await.status, 404);
    // Tokens and spend are counted as the usage pipeline takes the job's event (every 20 ms),
    // not when the answer goes out: wait for it, as a scrape 20 ms later would.
    gw.worker.as_ref().expect("the worker").flush_usage().await;
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"llmbus_requests_total{model_group="demo",deployment="demo-1",status="200"} 1"#,
        r#"llmbus_requests_total{model_group="unknown",deployment="none",status="404"} 1"#,
        "llmbus_request_duration_seconds_bucket{",
        "llmbus_overhead_seconds_bucket{le=\"0.0001\"}",
        "llmbus_upstream_duration_seconds_bucket{",
        r#"llmbus_prompt_tokens_total{model_group="demo",deployment="demo-1"}"#,
        "llmbus_spend_usd{",
        "llmbus_jobs_in_flight",
        // Requests counted in the window (cluster-wide limits count leased slices: at least 1).
        r#"llmbus_deployment_rpm_used{deployment="demo-1"} "#,
        // A misconfigured deployment is state 3.
        r#"llmbus_deployment_state{deployment="broken"} 3"#,
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let rpm_used: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"llmbus_deployment_rpm_used{deployment="demo-1"} "#))
        .and_then(|v| v.trim().parse().ok())
        .expect("the rpm gauge");
    assert!(rpm_used >= 1.0, "{rpm_used}");
    assert!(!text.contains("sk-metric-secret"));
}
