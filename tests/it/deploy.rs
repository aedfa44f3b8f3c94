//! What an operator runs, under `deploy/`, stays valid and agrees with the code:
//!
//! - `deploy/nats/nats-server.conf` passes `nats-server -t`, and a server started with it lets
//!   the `llmbus` user serve jobs (request/reply, streams, `$SRV`, usage events, JetStream)
//!   without a single permissions violation, lets an application user (`app1`) ask, and
//!   refuses an application that tries to serve `llm.completion` itself (what one application
//!   may do to another is `tests/it/nats_auth.rs`'s);
//! - `deploy/systemd/llmbus.service` passes `systemd-analyze verify` (where installed);
//! - `deploy/kubernetes/` parses, its `config.yaml` loads as an llmbus config, and the
//!   manifests agree with each other (config path, metrics port, labels, Secret keys);
//! - `deploy/grafana/llmbus-dashboard.json` charts every metric `src/telemetry.rs` records and
//!   no metric that does not exist.

use crate::support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::support::{
    gateway::{PATIENCE, chat},
    shipped_nats::{ShippedNats, passwords},
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use llmbus::{Worker, client::LlmClient, config::Config};
use serde::Deserialize;
use serde_json::{Value, json};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------------

#[test]
fn nats_server_conf_passes_nats_server_t() {
    let out = Command::new(support::nats_server::default_binary())
        .arg("-c")
        .arg(deploy("nats/nats-server.conf"))
        .arg("-t")
        .envs(passwords())
        .stdin(Stdio::null())
        .output()
        .expect("start nats-server");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "nats-server -t rejects the file:\n{said}"
    );
    assert!(said.contains("is valid"), "{said}");
}

const WORKER_CONFIG: &str = r#"
model_list:
  - model_name: demo
    litellm_params: {model: mock/demo, mock_response: "Hello through the permissions."}
llmbus:
  metrics_listen: null
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_conf_permissions_let_llmbus_work_and_keep_clients_in_their_lane() {
    let nats = ShippedNats::start();
    let (worker_nc, worker_events) = nats.connect("llmbus").await;

    // The worker user may manage JetStream in its account: the usage stream, for one.
    let js = async_nats::jetstream::new(worker_nc.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "LLM_USAGE".into(),
        subjects: vec!["llm.usage.>".into()],
        ..Default::default()
    })
    .await
    .expect("the llmbus user creates a stream");

    let loaded = Config::from_yaml(WORKER_CONFIG, "test.yaml").expect("config");
    let worker = Worker::start(&loaded.config, worker_nc.clone())
        .await
        .expect("the worker starts under the llmbus user's permissions");

    let (client_nc, client_events) = nats.connect("app1").await;
    let client = LlmClient::new(client_nc.clone(), "llm");
    let body = |v: Value| Bytes::from(v.to_string());

    // Request/reply.
    let reply = client
        .complete(HeaderMap::new(), body(chat("demo", "hi")), PATIENCE)
        .await
        .expect("a reply");
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "Hello through the permissions."
    );

    // A stream: many messages to one reply subject.
    let mut streamed = chat("demo", "hi");
    streamed["stream"] = json!(true);
    let (chunks, sentinel) = client
        .stream(HeaderMap::new(), body(streamed), PATIENCE)
        .await
        .expect("stream started")
        .collect()
        .await
        .expect("stream read to its sentinel");
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    assert_eq!(sentinel.status, 200);

    // llm.models, llm.deployments and $SRV discovery.
    for subject in ["llm.models", "llm.deployments", "$SRV.PING.llmbus"] {
        let reply = client
            .request(subject.into(), HeaderMap::new(), Bytes::new(), PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        assert!(!reply.body.is_empty(), "{subject} answered nothing");
    }

    // The usage events of the two jobs reached JetStream; the worker user reads them back with
    // a pull consumer (JetStream API requests, deliveries to its inbox, acknowledgements).
    let stream = js.get_stream("LLM_USAGE").await.expect("usage stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .expect("the llmbus user creates a consumer");
    let mut messages = consumer.messages().await.expect("pull messages");
    for n in 1..=2 {
        let msg = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .unwrap_or_else(|_| panic!("usage event {n} of 2 did not reach LLM_USAGE"))
            .expect("a message")
            .expect("no error");
        assert_eq!(msg.subject.as_str(), "llm.usage.demo");
        let event: Value = serde_json::from_slice(&msg.payload).expect("JSON usage event");
        assert_eq!(event["model_group"], "demo", "{event}");
        msg.ack().await.expect("ack");
    }

    // A client may not serve the request subjects (nor read other subjects).
    let _sub = client_nc
        .subscribe("llm.completion")
        .await
        .expect("the subscribe call itself succeeds; the server refuses it");
    let violation = client_events.wait_violation(PATIENCE).await;
    assert!(violation.contains("llm.completion"), "{violation}");
    let _sub = client_nc.subscribe("llm.usage.>").await.expect("subscribe");
    client_nc.flush().await.expect("flush");

    // The worker did all of the above without one permissions violation.
    worker_nc
        .flush()
        .await
        .expect("flush the worker connection");
    assert!(
        worker_events.violations().is_empty(),
        "the llmbus user lacks a permission: {:?}",
        worker_events.violations()
    );
    worker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

#[test]
fn systemd_unit_runs_serve_and_verifies() {
    let unit = read("systemd/llmbus.service");
    for needle in [
        "ExecStart=/usr/local/bin/llmbus --log-format json serve --config /etc/llmbus/config.yaml",
        "EnvironmentFile=/etc/llmbus/llmbus.env",
        "Restart=on-failure",
        "TimeoutStopSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(needle), "llmbus.service lacks {needle:?}");
    }

    // systemd's SIGKILL must not cut the worker's drain (default grace period) short.
    let stop: f64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec=<seconds>");
    let drain = llmbus::config::LlmbusSettings::default().shutdown_grace_secs;
    assert!(
        stop > drain,
        "TimeoutStopSec={stop} <= shutdown_grace_secs {drain}"
    );

    if Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: the unit was checked by text only");
        return;
    }
    // Verify a copy whose binary exists here and whose secrets file may be missing.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("llmbus.service");
    let text = unit
        .replace("/usr/local/bin/llmbus", env!("CARGO_BIN_EXE_llmbus"))
        .replace(
            "EnvironmentFile=/etc/llmbus/",
            "EnvironmentFile=-/etc/llmbus/",
        );
    std::fs::write(&copy, text).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("llmbus.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

/// Every YAML document of a file, as JSON values (empty documents skipped).
fn documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("deploy/{path}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn one(path: &str, kind: &str) -> Value {
    let docs = documents(path);
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "deploy/{path}: one {kind} expected");
    found[0].clone()
}

#[test]
fn kubernetes_manifests_parse_and_agree() {
    let kustomization = documents("kubernetes/kustomization.yaml").remove(0);
    for resource in kustomization["resources"].as_array().expect("resources") {
        let file = resource.as_str().expect("a file name");
        assert!(
            deploy("kubernetes").join(file).is_file(),
            "kustomization names a missing {file}"
        );
    }
    let generator = &kustomization["configMapGenerator"][0];
    assert_eq!(generator["files"][0], "config.yaml");

    // The config the workers run loads, with no key llmbus ignores.
    let loaded = Config::from_yaml_with_env(
        &read("kubernetes/config.yaml"),
        "deploy/kubernetes/config.yaml",
        &|_| Some("set".into()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.unsupported.is_empty(), "{:?}", loaded.unsupported);
    let metrics = loaded
        .config
        .llmbus
        .metrics_listen
        .expect("metrics_listen is set: the probes use it");
    assert!(
        metrics.ip().is_unspecified(),
        "metrics must listen on the pod's address, not {metrics}"
    );

    let deployment = one("kubernetes/deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("serve --config <path>");
    assert!(args.contains(&"serve"), "{args:?}");
    let mount = &container["volumeMounts"][0];
    assert_eq!(
        Path::new(config_path).parent(),
        Some(Path::new(mount["mountPath"].as_str().expect("mountPath")))
    );
    let volume = &pod["spec"]["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["configMap"]["name"], generator["name"]);
    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], metrics.port());
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"], port["name"], "{probe} checks the metrics port");
        assert_eq!(get["path"], path, "{probe}");
    }
    // Kubernetes' SIGKILL must not cut the worker's drain short.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("terminationGracePeriodSeconds");
    let drain = loaded.config.llmbus.shutdown_grace_secs;
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} <= shutdown_grace_secs {drain}"
    );
    assert!(
        deployment["spec"]["replicas"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    );

    // Every os.environ/NAME of the config is a key of the Secret the pods load.
    let secret = one("kubernetes/secret.example.yaml", "Secret");
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    let keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .expect("stringData")
        .keys()
        .map(String::as_str)
        .collect();
    let text = read("kubernetes/config.yaml");
    let without_comments: String = text
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default())
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let referenced: BTreeSet<&str> = without_comments
        .split("os.environ/")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
        })
        .collect();
    assert!(!referenced.is_empty());
    let missing: Vec<&&str> = referenced.difference(&keys).collect();
    assert!(missing.is_empty(), "the Secret lacks {missing:?}");

    let service = one("kubernetes/service.yaml", "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    assert_eq!(service["spec"]["ports"][0]["port"], metrics.port());

    let pdb = one("kubernetes/poddisruptionbudget.yaml", "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);

    let namespace = one("kubernetes/namespace.yaml", "Namespace");
    assert_eq!(namespace["metadata"]["name"], kustomization["namespace"]);
}

// ---------------------------------------------------------------------------------------------
// Grafana
// ---------------------------------------------------------------------------------------------

/// The metric names `src/telemetry.rs` defines (`"llmbus_..."` string constants).
fn telemetry_metrics() -> BTreeSet<String> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry.rs"))
            .expect("src/telemetry.rs");
    let names: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("llmbus_"))
        .map(str::to_string)
        .collect();
    assert!(names.contains(llmbus::telemetry::REQUESTS), "{names:?}");
    names
}

/// Every `llmbus_...` name in a PromQL expression, without histogram suffixes.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("llmbus_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn grafana_dashboard_charts_every_metric_and_only_real_ones() {
    let dashboard: Value =
        serde_json::from_str(&read("grafana/llmbus-dashboard.json")).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            let expr = target["expr"].as_str().expect("expr");
            used.extend(metrics_in(expr));
        }
    }
    let known = telemetry_metrics();
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard charts unknown metrics {unknown:?}"
    );
    let missing: Vec<&String> = known.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "the dashboard has no panel for {missing:?}"
    );
    // The label filters name real template variables.
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["datasource", "model_group", "deployment"] {
        assert!(variables.contains(&v), "{variables:?}");
    }
}
