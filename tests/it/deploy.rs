//! What an operator runs, under `deploy/`, stays valid and agrees with the code:
//!
//! - `deploy/nats/nats-server.conf` passes `nats-server -t`, and a server started with it lets
//!   the `llmbus` user serve jobs (request/reply, streams, `$SRV`, usage events, JetStream)
//!   without a single permissions violation, lets an application user (`app1`) ask, and
//!   refuses an application that tries to serve `llm.completion` itself (what one application
//!   may do to another is `tests/it/nats_auth.rs`'s);
//! - `deploy/nats/cluster/`'s three node files pass `nats-server -t` on every flavour, hold the
//!   single server's accounts word for word, and started as a real cluster (ports and routes
//!   from the command line) let the `llmbus` user keep a stream on three replicas and an
//!   application on one node reach a worker on another;
//! - `deploy/compose/docker-compose.yaml` runs those node files, two workers as the `llmbus`
//!   user and one front as `app1`, with configs that load, and every variable it reads is in
//!   `env.example`;
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
    nats_cluster::{NatsCluster, NodeCommand, NodePlan},
    nats_server::flavours,
    shipped_nats::{ShippedNats, USERS, passwords},
};
use async_nats::{ConnectOptions, HeaderMap};
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

/// `nats-server -c <conf> -t` with `binary` and the shipped passwords: (valid, what it said).
fn nats_server_t(binary: &Path, conf: &Path) -> (bool, String) {
    let out = Command::new(binary)
        .arg("-c")
        .arg(conf)
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
    (out.status.success() && said.contains("is valid"), said)
}

#[test]
fn nats_server_conf_passes_nats_server_t() {
    let binary = support::nats_server::default_binary();
    let (valid, said) = nats_server_t(&binary, &deploy("nats/nats-server.conf"));
    assert!(valid, "nats-server -t rejects the file:\n{said}");
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
// NATS: the three-node cluster
// ---------------------------------------------------------------------------------------------

/// The node files of `deploy/nats/cluster/`, in node order.
const NODE_CONFS: [&str; 3] = ["node-1.conf", "node-2.conf", "node-3.conf"];

/// The workers' password, as the tests give it (`shipped_nats::USERS`).
fn password_of(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, ..)| *u == user)
        .map(|(_, _, pw, _)| *pw)
        .unwrap_or_else(|| panic!("no user {user}"))
}

#[test]
fn nats_cluster_node_confs_pass_nats_server_t_on_every_flavour() {
    for flavour in flavours() {
        let binary = flavour.binary().expect("the flavour's binary");
        for node in NODE_CONFS {
            let (valid, said) = nats_server_t(&binary, &deploy("nats/cluster").join(node));
            assert!(
                valid,
                "{flavour:?}: nats-server -t rejects cluster/{node}:\n{said}"
            );
        }
    }
}

#[test]
fn nats_cluster_accounts_are_the_single_servers_word_for_word() {
    let single = read("nats/nats-server.conf");
    let cluster = read("nats/cluster/accounts.conf");
    let block = |text: &str| {
        let at = text.find("\naccounts {").expect("an accounts block");
        text[at..].trim().to_string()
    };
    assert_eq!(
        block(&cluster),
        block(&single),
        "cluster/accounts.conf and nats-server.conf give the users different permissions"
    );
    // Each node names itself and shares the rest; the routes name every node.
    let server = read("nats/cluster/server.conf");
    assert!(server.contains("include \"accounts.conf\""), "{server}");
    for (i, node) in NODE_CONFS.iter().enumerate() {
        let text = read(&format!("nats/cluster/{node}"));
        assert!(
            text.contains(&format!("server_name: nats-{}", i + 1)),
            "{node}"
        );
        assert!(text.contains("include \"server.conf\""), "{node}");
        assert!(
            server.contains(&format!("nats://nats-{}:6222", i + 1)),
            "routes"
        );
    }
}

/// How the shipped node files start on this machine: a copy of the folder per node whose
/// store_dir is the node's own (`-sd` cannot override a file's store_dir), with the ports and
/// routes of the plan on the command line (flags override the file).
fn shipped_node(binary: PathBuf) -> NodeCommand {
    Box::new(move |plan: &NodePlan| {
        for entry in std::fs::read_dir(deploy("nats/cluster")).expect("deploy/nats/cluster") {
            let path = entry.expect("a file").path();
            let name = path.file_name().expect("a file name");
            let mut text = std::fs::read_to_string(&path).expect("a config file");
            if name == "server.conf" {
                let line = "store_dir: \"/data/jetstream\"";
                assert!(text.contains(line), "server.conf lacks {line:?}");
                text = text.replace(line, &format!("store_dir: {:?}", plan.store));
            }
            std::fs::write(plan.dir.join(name), text).expect("copy a config file");
        }
        let mut cmd = Command::new(&binary);
        cmd.arg("-c")
            .arg(plan.dir.join(NODE_CONFS[plan.index]))
            .args(["-a", "127.0.0.1", "-p", &plan.port.to_string()])
            .args(["-m", &plan.monitor_port.to_string()])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", plan.cluster_port))
            .arg("--routes")
            .arg(plan.routes.join(","))
            .envs(passwords());
        cmd
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_confs_form_a_cluster_where_the_workers_keep_three_replicas() {
    for flavour in flavours() {
        let binary = flavour.binary().expect("the flavour's binary");
        let cluster = NatsCluster::start_nodes(&binary, 3, shipped_node(binary.clone()));
        let worker =
            ConnectOptions::with_user_and_password("llmbus".into(), password_of("llmbus").into())
                .connect(cluster.url(1))
                .await
                .expect("the llmbus user connects to a node");
        cluster.wait_for_jetstream(&worker).await;

        let js = async_nats::jetstream::new(worker.clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "LLM_USAGE".into(),
            subjects: vec!["llm.usage.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{flavour:?}: the llmbus user's R3 stream: {e}\n{}",
                cluster.logs()
            )
        });
        assert_eq!(
            cluster.replicas(&worker, "LLM_USAGE").await,
            3,
            "{flavour:?}"
        );
        let leader = cluster
            .stream_leader(&worker, "LLM_USAGE")
            .await
            .unwrap_or_default();
        assert!(
            ["nats-1", "nats-2", "nats-3"].contains(&leader.as_str()),
            "{flavour:?}: the leader is {leader:?}, not a node of the files"
        );
        js.publish("llm.usage.demo", "{}".into())
            .await
            .expect("publish")
            .await
            .unwrap_or_else(|e| panic!("{flavour:?}: a replicated write: {e}"));

        // An application reaches the workers through any node: a request from node 3 to a
        // responder on node 1 (the cluster carries the account's subjects).
        let serving =
            ConnectOptions::with_user_and_password("llmbus".into(), password_of("llmbus").into())
                .connect(cluster.url(0))
                .await
                .expect("connect to node 1");
        let mut jobs = serving
            .queue_subscribe("llm.models", "llmbus".into())
            .await
            .expect("serve");
        serving.flush().await.expect("flush");
        tokio::spawn(async move {
            while let Some(job) = jobs.next().await {
                if let Some(reply) = job.reply {
                    let _ = serving.publish(reply, "[]".into()).await;
                }
            }
        });
        let app = ConnectOptions::with_user_and_password("app1".into(), password_of("app1").into())
            .custom_inbox_prefix(ShippedNats::inbox_of("app1").expect("app1's inbox"))
            .connect(cluster.url(2))
            .await
            .expect("app1 connects to node 3");
        let reply = until_answered(&app, "llm.models").await;
        assert_eq!(reply, "[]", "{flavour:?}");
        eprintln!(
            "{flavour:?} (nats-server {}): the shipped cluster formed, {leader} leads LLM_USAGE",
            cluster.version
        );
    }
}

/// Asks `subject` until someone answers (the subscription on another node may take a moment
/// to reach this one); panics after `PATIENCE`.
async fn until_answered(client: &async_nats::Client, subject: &'static str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            client.request(subject, Bytes::new()),
        )
        .await;
        match asked {
            Ok(Ok(reply)) => return String::from_utf8_lossy(&reply.payload).into_owned(),
            _ if std::time::Instant::now() > deadline => panic!("nobody answers {subject}"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// docker compose
// ---------------------------------------------------------------------------------------------

/// `deploy/compose/docker-compose.yaml` with its merge keys (`<<: *nats`) applied, as JSON.
fn compose() -> Value {
    let text = read("compose/docker-compose.yaml");
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("docker-compose.yaml: {e}"));
    yaml.apply_merge().expect("merge keys");
    serde_json::to_value(yaml).expect("the compose file as JSON")
}

/// A service's command, as words.
fn command_of(service: &Value) -> Vec<&str> {
    service["command"]
        .as_array()
        .expect("a command list")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// The word after `flag` in a command.
fn after<'a>(command: &[&'a str], flag: &str) -> &'a str {
    command
        .windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("{command:?} lacks {flag}"))
}

/// Where a service mounts `target`: the host path (relative to deploy/compose), from
/// `host:target[:ro]` volume lines.
fn mount_of<'a>(service: &'a Value, target: &str) -> &'a str {
    service["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| {
            let mut parts = v.split(':');
            let host = parts.next()?;
            (parts.next()? == target).then_some(host)
        })
        .unwrap_or_else(|| panic!("nothing is mounted at {target}"))
}

/// The `llmbus:` settings of a config file under deploy/compose, loaded as llmbus loads it
/// with every variable set; no unsupported key, no typo.
fn compose_config(file: &str) -> llmbus::config::LlmbusSettings {
    let path = format!("compose/{file}");
    let loaded = Config::from_yaml_with_env(&read(&path), &path, &|_| Some("set".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        loaded.unsupported.is_empty(),
        "{path}: {:?}",
        loaded.unsupported
    );
    assert!(loaded.typos.is_empty(), "{path}: {:?}", loaded.typos);
    loaded.config.llmbus
}

/// Seconds of a compose duration such as `45s`.
fn seconds(duration: &Value) -> f64 {
    let text = duration.as_str().expect("a duration");
    text.strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{text}: write it in seconds"))
}

#[test]
fn compose_file_runs_the_cluster_configs_two_workers_and_a_front() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let server = read("nats/cluster/server.conf");

    // Three NATS nodes, each on its own node file and its own store.
    let nats: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("nats:")))
        .collect();
    assert_eq!(nats.len(), 3, "three NATS nodes");
    let mut stores = BTreeSet::new();
    for (name, node) in &nats {
        let conf = after(&command_of(node), "--config");
        let folder = mount_of(node, "/etc/nats");
        let file = deploy("compose").join(folder).join(
            conf.strip_prefix("/etc/nats/")
                .expect("a file in /etc/nats"),
        );
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{name} runs {}: {e}", file.display()));
        assert!(
            text.contains(&format!("server_name: {name}")),
            "{name}: {conf}"
        );
        assert_eq!(node["hostname"], name.as_str());
        assert!(
            server.contains(&format!("nats://{name}:6222")),
            "no route to {name}"
        );
        stores.insert(mount_of(node, "/data"));
        for (_, var, ..) in USERS {
            assert!(node["environment"][var].is_string(), "{name} lacks {var}");
        }
    }
    assert_eq!(
        stores.len(),
        3,
        "each node has a store of its own: {stores:?}"
    );
    assert!(
        server.contains("store_dir: \"/data/"),
        "the store is on the /data volume"
    );
    let node_names: BTreeSet<&str> = nats.iter().map(|(n, _)| n.as_str()).collect();
    let node_of = |service: &Value| {
        let url = service["environment"]["NATS_URL"]
            .as_str()
            .expect("NATS_URL");
        let host = url
            .strip_prefix("nats://")
            .and_then(|h| h.strip_suffix(":4222"))
            .unwrap_or_else(|| panic!("{url}: one nats://<node>:4222"));
        assert!(node_names.contains(host), "{url} names no node");
        host.to_string()
    };

    // Two workers as the `llmbus` user, each on its own node.
    let workers: Vec<&Value> = services
        .values()
        .filter(|s| s.get("command").is_some() && command_of(s).contains(&"serve"))
        .collect();
    assert_eq!(workers.len(), 2, "two workers");
    let mut worker_nodes = BTreeSet::new();
    for worker in &workers {
        let config = after(&command_of(worker), "--config");
        let file = mount_of(worker, config);
        let settings = compose_config(file.strip_prefix("./").expect("a file here"));
        assert_eq!(settings.nats_user.as_deref(), Some("llmbus"));
        let yaml: Value = serde_yaml_ng::from_str(&read(&format!("compose/{}", &file[2..])))
            .expect("the workers' config");
        assert_eq!(
            yaml["llmbus"]["replicas"], 3,
            "{file}: three replicas on three nodes"
        );
        assert!(
            worker["environment"]["NATS_PASSWORD"]
                .as_str()
                .is_some_and(|p| p.starts_with("${LLMBUS_NATS_PASSWORD")),
            "the workers' password is the llmbus user's"
        );
        assert!(
            seconds(&worker["stop_grace_period"]) > settings.shutdown_grace_secs,
            "stop_grace_period must exceed the drain"
        );
        worker_nodes.insert(node_of(worker));
    }
    assert_eq!(
        worker_nodes.len(),
        2,
        "the workers start on different nodes"
    );

    // One front, as an application's user, on port 4000.
    let fronts: Vec<&Value> = services
        .values()
        .filter(|s| s.get("command").is_some() && command_of(s).contains(&"front"))
        .collect();
    assert_eq!(fronts.len(), 1, "one front");
    let front = fronts[0];
    let command = command_of(front);
    assert_eq!(after(&command, "--listen"), "0.0.0.0:4000");
    assert!(
        front["ports"][0]
            .as_str()
            .is_some_and(|p| p.ends_with(":4000"))
    );
    let file = mount_of(front, after(&command, "--config"));
    let settings = compose_config(file.strip_prefix("./").expect("a file here"));
    assert_eq!(settings.nats_user.as_deref(), Some("app1"));
    assert_eq!(
        settings.nats_inbox_prefix.as_deref(),
        ShippedNats::inbox_of("app1")
    );
    assert!(
        front["environment"]["NATS_PASSWORD"]
            .as_str()
            .is_some_and(|p| p.starts_with("${APP1_NATS_PASSWORD")),
        "the front's password is app1's"
    );
    node_of(front);

    // The llmbus services run the image of deploy/Dockerfile, once every node is healthy.
    for service in workers.iter().chain(&fronts) {
        let build = &service["build"];
        let context = deploy("compose").join(build["context"].as_str().expect("context"));
        let dockerfile = context.join(build["dockerfile"].as_str().expect("dockerfile"));
        assert_eq!(
            dockerfile.canonicalize().expect("the Dockerfile"),
            deploy("Dockerfile")
                .canonicalize()
                .expect("deploy/Dockerfile")
        );
        for name in &node_names {
            assert_eq!(service["depends_on"][name]["condition"], "service_healthy");
        }
    }

    // Every variable the file reads is in env.example.
    let example = read("compose/env.example");
    let text = read("compose/docker-compose.yaml");
    for var in text.split("${").skip(1).filter_map(|rest| {
        rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
    }) {
        assert!(
            example.lines().any(|l| l.starts_with(&format!("{var}="))),
            "env.example lacks {var}"
        );
    }
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
