//! Routing: each strategy makes the choice it promises; tags, pre-call checks and every kind
//! of fallback send the job where LiteLLM's router would.

use std::{collections::HashMap, time::Duration};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{Gateway, PATIENCE, chat, deployments, headers},
};
use serde_json::{Value, json};

/// A `model_list` entry for `group` served by `fake`, with id `id` and extra params.
fn dep(group: &str, id: &str, fake: &FakeProvider, extra: &str) -> String {
    format!(
        "  - model_name: {group}\n    litellm_params: {{model: openai/gpt-4o-mini, api_base: \"{}\", api_key: k{extra}}}\n    model_info: {{id: {id}}}\n",
        fake.url()
    )
}

async fn served_by(gw: &Gateway, body: Value, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = gw.complete(body.clone()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        *counts
            .entry(r.header("Llm-Deployment").unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn simple_shuffle_follows_the_weights() {
    let (a, b) = (FakeProvider::start().await, FakeProvider::start().await);
    let yaml = format!(
        "model_list:\n{}{}",
        dep("g", "heavy", &a, ", weight: 9"),
        dep("g", "light", &b, ", weight: 1")
    );
    let gw = Gateway::start(&yaml).await;
    let counts = served_by(&gw, chat("g", "x"), 200).await;
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    // Expected 180; fewer than 150 has a probability below 1e-9.
    assert!((150..200).contains(&heavy), "{counts:?}");
}

#[tokio::test]
async fn least_busy_avoids_the_deployment_with_a_call_in_flight() {
    let (a, b) = (FakeProvider::start().await, FakeProvider::start().await);
    a.set_default(Fault::Delay(Duration::from_secs(2)));
    b.set_default(Fault::Delay(Duration::from_secs(2)));
    let yaml = format!(
        "model_list:\n{}{}router_settings: {{routing_strategy: least-busy}}\n",
        dep("g", "a", &a, ""),
        dep("g", "b", &b, "")
    );
    let gw = Gateway::start(&yaml).await;
    let first = gw.client.clone();
    let job1 = tokio::spawn(async move {
        first
            .complete(
                Default::default(),
                chat("g", "one").to_string().into(),
                PATIENCE,
            )
            .await
            .unwrap()
    });
    // Wait until the first job's call is running on one of them.
    let busy = tokio::select! {
        _ = a.wait_for_requests(1, PATIENCE) => "a",
        _ = b.wait_for_requests(1, PATIENCE) => "b",
    };
    let r2 = gw.complete(chat("g", "two")).await;
    let r1 = job1.await.unwrap();
    assert_eq!(r1.header("Llm-Deployment"), Some(busy));
    assert_ne!(
        r2.header("Llm-Deployment"),
        Some(busy),
        "the idle one took the second job"
    );
}

#[tokio::test]
async fn latency_based_routing_prefers_the_fastest() {
    let (slow, fast) = (FakeProvider::start().await, FakeProvider::start().await);
    slow.set_default(Fault::Delay(Duration::from_millis(150)));
    let yaml = format!(
        "model_list:\n{}{}router_settings: {{routing_strategy: latency-based-routing}}\n",
        dep("g", "slow", &slow, ""),
        dep("g", "fast", &fast, "")
    );
    let gw = Gateway::start(&yaml).await;
    // Unmeasured deployments go first: one request each.
    served_by(&gw, chat("g", "warm"), 2).await;
    // Wait until both averages are in.
    for _ in 0..200 {
        if deployments(&gw.client)
            .await
            .iter()
            .all(|d| d["latency_ms"].as_f64().unwrap() > 0.0)
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(slow.request_count(), 1);
    let counts = served_by(&gw, chat("g", "x"), 10).await;
    assert_eq!(counts.get("fast"), Some(&10), "{counts:?}");
}

#[tokio::test]
async fn usage_based_routing_takes_the_least_used_deployment() {
    let (a, b) = (FakeProvider::start().await, FakeProvider::start().await);
    // Tags only steer the first, large job to `a`; untagged jobs may go to either.
    let yaml = format!(
        "model_list:\n{}{}router_settings:\n  routing_strategy: usage-based-routing-v2\n  enable_tag_filtering: true\n",
        dep("g", "a", &a, ", tpm: 10000000, tags: [default, big]"),
        dep("g", "b", &b, ", tpm: 10000000, tags: [default]")
    );
    let gw = Gateway::start(&yaml).await;
    let big = "many words ".repeat(4000);
    let r = gw
        .complete_with(headers(&[("Llm-Tags", "big")]), chat("g", &big))
        .await;
    assert_eq!(r.header("Llm-Deployment"), Some("a"));
    // `a` has used ~11k tokens this minute, `b` none: small jobs all go to `b`.
    let counts = served_by(&gw, chat("g", "small"), 10).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
}

#[tokio::test]
async fn cost_based_routing_takes_the_cheapest() {
    let (a, b) = (FakeProvider::start().await, FakeProvider::start().await);
    let yaml = format!(
        "model_list:\n  - model_name: g\n    litellm_params: {{model: openai/gpt-4o, api_base: \"{}\", api_key: k}}\n    model_info: {{id: dear}}\n{}router_settings: {{routing_strategy: cost-based-routing}}\n",
        a.url(),
        dep("g", "cheap", &b, "")
    );
    let gw = Gateway::start(&yaml).await;
    let counts = served_by(&gw, chat("g", "x"), 10).await;
    assert_eq!(counts.get("cheap"), Some(&10), "{counts:?}");
}

#[tokio::test]
async fn tags_route_to_matching_deployments() {
    let (a, b) = (FakeProvider::start().await, FakeProvider::start().await);
    let yaml = format!(
        "model_list:\n{}{}router_settings: {{enable_tag_filtering: true}}\n",
        dep("g", "fast", &a, ", tags: [fast, paid]"),
        dep("g", "std", &b, ", tags: [default]")
    );
    let gw = Gateway::start(&yaml).await;
    for _ in 0..5 {
        let r = gw
            .complete_with(headers(&[("Llm-Tags", "fast")]), chat("g", "x"))
            .await;
        assert_eq!(r.header("Llm-Deployment"), Some("fast"));
        let r = gw.complete(chat("g", "x")).await;
        assert_eq!(
            r.header("Llm-Deployment"),
            Some("std"),
            "untagged jobs go to `default`"
        );
    }
    let r = gw
        .complete_with(headers(&[("Llm-Tags", "gold")]), chat("g", "x"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "no_deployment_for_tags");
}

#[tokio::test]
async fn pre_call_checks_send_long_prompts_to_the_context_window_fallback() {
    let (small, big) = (FakeProvider::start().await, FakeProvider::start().await);
    let yaml = format!(
        "model_list:\n  - model_name: small\n    litellm_params: {{model: openai/m, api_base: \"{}\", api_key: k}}\n    model_info: {{max_input_tokens: 50}}\n{}router_settings:\n  enable_pre_call_checks: true\n  context_window_fallbacks: [{{small: [big]}}]\n",
        small.url(),
        dep("big", "big", &big, "")
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("small", "short")).await;
    assert_eq!(r.header("Llm-Model-Group"), Some("small"));
    let r = gw.complete(chat("small", &"long words ".repeat(100))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Llm-Model-Group"), Some("big"));
    assert_eq!(
        small.request_count(),
        1,
        "the long prompt never reached `small`"
    );
}

#[tokio::test]
async fn each_failure_kind_takes_its_own_fallbacks() {
    let (a, generic, long, safe) = (
        FakeProvider::start().await,
        FakeProvider::start().await,
        FakeProvider::start().await,
        FakeProvider::start().await,
    );
    let yaml = format!(
        "model_list:\n{}{}{}{}router_settings:\n  fallbacks: [{{a: [generic]}}]\n  context_window_fallbacks: [{{a: [long]}}]\n  content_policy_fallbacks: [{{a: [safe]}}]\n",
        dep("a", "a", &a, ""),
        dep("generic", "generic", &generic, ""),
        dep("long", "long", &long, ""),
        dep("safe", "safe", &safe, "")
    );
    let gw = Gateway::start(&yaml).await;
    a.push(Fault::ContextLengthExceeded);
    let r = gw.complete(chat("a", "x")).await;
    assert_eq!(r.header("Llm-Model-Group"), Some("long"));
    assert_eq!(
        r.header("Llm-Attempts"),
        Some("2"),
        "no retry on a context-window error"
    );
    a.push(Fault::ContentFiltered);
    let r = gw.complete(chat("a", "x")).await;
    assert_eq!(r.header("Llm-Model-Group"), Some("safe"));
    a.push(Fault::status(500));
    a.push(Fault::status(500));
    a.push(Fault::status(500));
    let r = gw.complete(chat("a", "x")).await;
    assert_eq!(r.header("Llm-Model-Group"), Some("generic"));
    assert_eq!(
        r.header("Llm-Attempts"),
        Some("4"),
        "three attempts on `a`, then `generic`"
    );
}

#[tokio::test]
async fn default_fallbacks_and_the_body_fallbacks_field() {
    let (bad, spare, other) = (
        FakeProvider::start().await,
        FakeProvider::start().await,
        FakeProvider::start().await,
    );
    bad.set_default(Fault::status(503));
    let yaml = format!(
        "model_list:\n{}{}{}router_settings:\n  num_retries: 0\n  default_fallbacks: [spare]\n",
        dep("bad", "bad", &bad, ""),
        dep("spare", "spare", &spare, ""),
        dep("other", "other", &other, "")
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("bad", "x")).await;
    assert_eq!(r.header("Llm-Model-Group"), Some("spare"));

    // The request's own fallbacks come after the configured ones, and never reach upstream.
    let yaml_no_default = format!(
        "model_list:\n{}{}router_settings: {{num_retries: 0}}\n",
        dep("bad", "bad", &bad, ""),
        dep("other", "other", &other, "")
    );
    let gw = Gateway::start(&yaml_no_default).await;
    let mut body = chat("bad", "x");
    body["fallbacks"] = json!(["other"]);
    let r = gw.complete(body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Model-Group"), Some("other"));
    let seen = other.last_request().unwrap();
    assert!(seen.body.get("fallbacks").is_none(), "{}", seen.body);
    assert!(bad.last_request().unwrap().body.get("fallbacks").is_none());
}

#[tokio::test]
async fn max_fallbacks_bounds_the_fallbacks_tried() {
    let fakes = [
        FakeProvider::start().await,
        FakeProvider::start().await,
        FakeProvider::start().await,
    ];
    for f in &fakes {
        f.set_default(Fault::status(500));
    }
    let yaml = format!(
        "model_list:\n{}{}{}router_settings:\n  num_retries: 0\n  max_fallbacks: 1\n  fallbacks: [{{a: [b, c]}}]\n",
        dep("a", "a", &fakes[0], ""),
        dep("b", "b", &fakes[1], ""),
        dep("c", "c", &fakes[2], "")
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("a", "x")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("Llm-Attempts"), Some("2"));
    assert_eq!(fakes[2].request_count(), 0, "`c` is past max_fallbacks");
}

#[tokio::test]
async fn retry_policy_sets_retries_per_error_class() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::RateLimited {
        retry_after_secs: 0,
    });
    let yaml = format!(
        "model_list:\n{}router_settings:\n  num_retries: 3\n  retry_policy: {{RateLimitErrorRetries: 0}}\n",
        dep("g", "g", &fake, "")
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("g", "x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Llm-Attempts"), Some("1"));
    assert_eq!(fake.request_count(), 1);

    let fake = FakeProvider::start().await;
    fake.push(Fault::status(401));
    let yaml = format!(
        "model_list:\n{}{}router_settings:\n  retry_policy: {{AuthenticationErrorRetries: 1}}\n",
        dep("g", "g1", &fake, ""),
        dep("g", "g2", &fake, "")
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("g", "x")).await;
    assert_eq!(
        r.status, 200,
        "an auth failure was retried on the other deployment"
    );
    assert_eq!(r.header("Llm-Attempts"), Some("2"));
}
