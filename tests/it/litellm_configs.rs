//! LiteLLM's own example configs (tests/fixtures/config/litellm, copied from the litellm wheel)
//! load as users have them: each one is loaded with only `LITELLM_MASTER_KEY` set (the one
//! variable LiteLLM itself insists on) and, when it loads, a real worker starts with it on a
//! private NATS server.
//!
//! The test prints the start rate. Every config that does not start must be refused over a
//! security setting llmbus does not enforce (guardrails, custom auth), with the key and line
//! named: a broken deployment (unknown provider, no `api_base`, unset variable) never stops a
//! start.

use std::{collections::BTreeMap, path::PathBuf};

use crate::support::nats_server::NatsServer;
use llmbus::{
    Worker,
    config::{Config, ConfigError},
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/litellm")
}

fn env(name: &str) -> Option<String> {
    (name == "LITELLM_MASTER_KEY").then(|| "sk-test-master".to_owned())
}

/// The configs refused on purpose, with the key the refusal must name.
const REFUSED: &[(&str, &str)] = &[
    ("otel_test_config.yaml", "line 54: guardrails"),
    (
        "pass_through_config.yaml",
        "line 33: general_settings.custom_auth",
    ),
    ("test_pipeline_config.yaml", "line 13: guardrails"),
    ("tool_permission_example.yaml", "line 7: guardrails"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litellm_example_configs_start() {
    let nats = NatsServer::start();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 23, "the fixtures are missing");

    let mut started = Vec::new();
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let mut misconfigured = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        match Config::from_yaml_with_env(&text, &name, &env) {
            Ok(loaded) => {
                misconfigured += loaded
                    .config
                    .model_list
                    .iter()
                    .filter(|m| m.misconfigured.is_some())
                    .count();
                let worker = Worker::start(&loaded.config, nats.client().await)
                    .await
                    .unwrap_or_else(|e| panic!("{name} loads but no worker starts: {e}"));
                worker.stop().await;
                started.push(name);
            }
            Err(e) => {
                refused.insert(name, e.to_string());
            }
        }
    }

    let total = files.len();
    let rate = 100.0 * started.len() as f64 / total as f64;
    println!(
        "LiteLLM example configs: {} of {total} start a worker ({rate:.0} %); {misconfigured} \
         deployments among them are kept as misconfigured",
        started.len()
    );
    let examples = files
        .iter()
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("proxy_")
        })
        .count();
    let examples_started = started.iter().filter(|n| !n.starts_with("proxy_")).count();
    println!(
        "  of which litellm/proxy/example_config_yaml: {examples_started} of {examples} ({:.0} %)",
        100.0 * examples_started as f64 / examples as f64
    );
    for (name, why) in &refused {
        println!("refused by design: {name}:\n{why}");
    }

    // Every refusal is one of the expected ones, over a security setting, naming the key.
    for (name, why) in &refused {
        let expected = REFUSED.iter().find(|(n, _)| n == name);
        let Some((_, key)) = expected else {
            panic!("{name} is refused but should start:\n{why}");
        };
        assert!(
            why.contains("security settings that llmbus does not enforce"),
            "{name}: {why}"
        );
        assert!(why.contains(key), "{name} should name `{key}`: {why}");
        assert!(
            why.contains(name.as_str()),
            "{name}: the file is named: {why}"
        );
    }
    // Those refused over security settings aside, every config starts.
    let eligible = total - refused.len();
    assert_eq!(started.len(), eligible);
    assert!(
        started.len() * 100 >= eligible * 90,
        "at least 90 % of the configs without an unenforced security setting start"
    );
    assert_eq!(refused.len(), REFUSED.len(), "{refused:#?}");
    assert!(
        misconfigured > 0,
        "some deployments need variables this test does not set"
    );
}

#[test]
fn without_its_master_key_variable_a_config_refuses_to_start() {
    let text = std::fs::read_to_string(dir().join("proxy_wildcard_config.yaml")).unwrap();
    let err = Config::from_yaml_with_env(&text, "proxy_wildcard_config.yaml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("general_settings.master_key"), "{err}");
    assert!(err.contains("LITELLM_MASTER_KEY"), "{err}");
    assert!(err.contains("line 48"), "{err}");
}

#[test]
fn the_wildcard_config_keeps_its_patterns() {
    let text = std::fs::read_to_string(dir().join("proxy_wildcard_config.yaml")).unwrap();
    let loaded = Config::from_yaml_with_env(&text, "w.yaml", &env).unwrap();
    let names: Vec<&str> = loaded
        .config
        .model_list
        .iter()
        .map(|m| m.model_name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "anthropic/*",
            "bedrock/*",
            "vertex_ai/*",
            "azure_ai/*",
            "azure/*",
            "gemini/*",
            "openai/*"
        ]
    );
    // `os.environ/ANTHROPIC_API_KEY` is not set here: misconfigured, with the variable named.
    let anthropic = loaded.config.model_list[0]
        .misconfigured
        .as_deref()
        .unwrap();
    assert!(
        anthropic.contains("`ANTHROPIC_API_KEY` is not set"),
        "{anthropic}"
    );
    assert!(matches!(
        Config::from_yaml_with_env("model_list: [", "x", &env),
        Err(ConfigError::At { .. })
    ));
}
