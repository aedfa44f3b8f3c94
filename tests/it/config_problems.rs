//! What a config gets wrong, and what llmbus does about it: typos get a "did you mean",
//! security settings llmbus does not enforce refuse the start, a broken deployment is kept as
//! misconfigured, a deployment without credentials is a warning, and `llmbus check` / `serve
//! --strict` turn every one of these into a failure (the real binary is run for those).

use std::{collections::HashMap, path::Path, process::Command};

use llmbus::{
    config::{Config, ConfigError, Loaded},
    preflight,
};

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Loaded, ConfigError> {
    Config::from_yaml_with_env(text, "test.yaml", &no_env)
}

#[test]
fn typos_get_a_suggestion_with_file_and_line() {
    let text = "\
model_list:
  - model_name: demo
    litellm_params:
      model: mock/demo
      mock_respons: hello
router_settings:
  num_retires: 3
  redis_host: localhost
";
    let loaded = load(text).unwrap();
    assert_eq!(
        loaded.typos,
        [
            "test.yaml, line 5: model_list[0].litellm_params.mock_respons: llmbus does not know \
             this key; did you mean `mock_response`?",
            "test.yaml, line 7: router_settings.num_retires: llmbus does not know this key; did \
             you mean `num_retries`?",
        ]
    );
    // A LiteLLM key llmbus lacks is unsupported, not a typo; typos are not listed twice.
    assert_eq!(loaded.unsupported, ["router_settings.redis_host"]);

    // Without its mock_response, `mock/demo` names an unknown provider: the report names the
    // file and line and lists every provider, native ones included.
    let report = preflight::examine_with_env(&loaded, &no_env);
    let all = report.problems.join("\n");
    assert!(
        all.contains("test.yaml, line 4: deployment model_list[0]"),
        "{all}"
    );
    assert!(all.contains("unknown provider `mock`"), "{all}");
    for provider in [
        "openai",
        "azure",
        "groq",
        "anthropic",
        "gemini",
        "vertex_ai",
        "bedrock",
        "cohere",
        "ollama",
    ] {
        assert!(all.contains(provider), "{provider}: {all}");
    }
    assert_eq!(report.problems.len(), 3, "{all}");
}

#[test]
fn a_misspelled_provider_gets_a_suggestion() {
    let loaded = load("model_list:\n  - model_name: c\n    litellm_params:\n      model: antropic/claude\n      api_key: k\n").unwrap();
    let report = preflight::examine_with_env(&loaded, &no_env);
    assert!(
        report.problems[0].contains("unknown provider `antropic` (did you mean `anthropic`?)"),
        "{:?}",
        report.problems
    );
}

#[test]
fn security_settings_llmbus_does_not_enforce_refuse_the_start() {
    let text = "\
model_list:
  - model_name: a
    litellm_params:
      model: openai/a
general_settings:
  master_key: sk-admin-1
  allowed_ips: [\"10.0.0.1\"]
  enable_jwt_auth: true
litellm_settings:
  success_callback: [\"langfuse\", \"presidio\"]
guardrails:
  - guardrail_name: pii
    litellm_params: {guardrail: presidio, mode: pre_call}
";
    let err = load(text).unwrap_err();
    let ConfigError::Unenforced { settings, .. } = &err else {
        panic!("{err:?}")
    };
    let keys: Vec<(&str, Option<usize>)> =
        settings.iter().map(|s| (s.key.as_str(), s.line)).collect();
    assert_eq!(
        keys,
        [
            ("general_settings.allowed_ips", Some(7)),
            ("general_settings.enable_jwt_auth", Some(8)),
            ("litellm_settings.success_callback", Some(10)),
            ("guardrails", Some(11)),
        ]
    );
    let message = err.to_string();
    assert!(
        message.starts_with("test.yaml: llmbus refuses to start"),
        "{message}"
    );
    assert!(
        message
            .contains("line 7: general_settings.allowed_ips: llmbus does not filter callers by IP"),
        "{message}"
    );
    assert!(message.contains("`presidio`"), "{message}");
    assert!(!message.contains("sk-admin-1"), "{message}");

    // Turned off, or only relaxing, they are fine.
    let ok = "\
model_list:
  - model_name: a
    litellm_params: {model: openai/a}
general_settings:
  allowed_ips: []
  enforce_user_param: false
  public_routes: [\"/health\"]
  database_url: postgresql://localhost/litellm
  reject_clientside_metadata_tags: true
";
    let loaded = load(ok).unwrap();
    assert!(
        loaded
            .config
            .general_settings
            .reject_clientside_metadata_tags
    );
}

#[test]
fn a_master_key_that_cannot_be_read_refuses_the_start() {
    let text = "general_settings:\n  master_key: os.environ/MY_MASTER\n";
    let e = load(text).unwrap_err().to_string();
    assert!(e.contains("test.yaml, line 2"), "{e}");
    assert!(e.contains("general_settings.master_key"), "{e}");
    assert!(e.contains("`MY_MASTER` is not set"), "{e}");
    let env = env_of(&[("MY_MASTER", "sk-set")]);
    let loaded = Config::from_yaml_with_env(text, "test.yaml", &env).unwrap();
    assert_eq!(
        loaded.config.general_settings.master_key.unwrap().expose(),
        "sk-set"
    );
    for empty in [
        "general_settings:\n  master_key: ''\n",
        "general_settings:\n  master_key: '  '\n",
    ] {
        let e = load(empty).unwrap_err().to_string();
        assert!(e.contains("the master key is empty"), "{e}");
    }
    let env = env_of(&[("MY_MASTER", "")]);
    let e = Config::from_yaml_with_env(text, "test.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the master key is empty"), "{e}");
}

#[test]
fn broken_deployments_are_kept_as_misconfigured() {
    let text = "\
model_list:
  - model_name: a
    litellm_params:
      model: anthropic/claude
      api_key: os.environ/ANTHROPIC_KEY_X
      api_base: os.environ/ANTHROPIC_BASE_X
  - model_name: b
    litellm_params:
      model: openai/*
  - model_name: c
    litellm_params:
      model: openai/c
      organization: os.environ/ORG_X
";
    let loaded = load(text).unwrap();
    let list = &loaded.config.model_list;
    let a = list[0].misconfigured.as_deref().unwrap();
    assert!(
        a.contains("`ANTHROPIC_BASE_X` is not set (model_list[0].litellm_params.api_base, line 6)"),
        "{a}"
    );
    assert!(
        a.contains("`ANTHROPIC_KEY_X` is not set (model_list[0].litellm_params.api_key, line 5)"),
        "{a}"
    );
    let b = list[1].misconfigured.as_deref().unwrap();
    assert!(b.contains("`model_name` has no `*`"), "{b}");
    // An optional decoration only warns.
    assert!(list[2].misconfigured.is_none());
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("`ORG_X`"));
    assert_eq!(list[0].location.as_deref(), Some("test.yaml, line 4"));
}

#[test]
fn a_deployment_without_credentials_is_named_with_its_variable() {
    let text = "\
model_list:
  - model_name: a
    litellm_params: {model: anthropic/claude}
  - model_name: b
    litellm_params: {model: bedrock/anthropic.claude, aws_region_name: us-east-1}
  - model_name: c
    litellm_params: {model: hosted_vllm/llama, api_base: 'http://127.0.0.1:8000/v1'}
  - model_name: d
    litellm_params: {model: groq/llama, api_key: gsk-1}
";
    let loaded = load(text).unwrap();
    let report = preflight::examine_with_env(&loaded, &no_env);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("model_list[0]"),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems[0].contains("ANTHROPIC_API_KEY"),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems[1].contains("AWS_ACCESS_KEY_ID"),
        "{:?}",
        report.problems
    );
    // With the variable set, no problem.
    let env = env_of(&[
        ("ANTHROPIC_API_KEY", "sk-ant"),
        ("AWS_BEARER_TOKEN_BEDROCK", "bedrock-key"),
    ]);
    assert!(preflight::examine_with_env(&loaded, &env).ok());
}

/// Runs the llmbus binary with only PATH in its environment.
fn llmbus(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmbus"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("llmbus runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn check_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: nosuch/x\n  - model_name: b\n    litellm_params:\n      model: openai/b\n      api_key: os.environ/UNSET_KEY_X\nrouter_settings:\n  num_retires: 2\n",
    );
    let (ok, out) = llmbus(&["check", &bad]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("3 problems (0 of 2 deployments ready)"),
        "{out}"
    );
    assert!(out.contains("unknown provider `nosuch`"), "{out}");
    assert!(out.contains("`UNSET_KEY_X` is not set"), "{out}");
    assert!(out.contains("did you mean `num_retries`?"), "{out}");

    let good = write(
        dir.path(),
        "good.yaml",
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: mock/a\n      mock_response: hi\n",
    );
    let (ok, out) = llmbus(&["check", &good]);
    assert!(ok, "{out}");
    assert!(out.contains("OK: 1 deployments, all ready"), "{out}");

    let refused = write(
        dir.path(),
        "refused.yaml",
        "general_settings:\n  custom_auth: my_auth.check\n",
    );
    let (ok, out) = llmbus(&["check", &refused]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("line 2: general_settings.custom_auth"),
        "{out}"
    );
}

#[test]
fn serve_strict_refuses_a_config_with_problems_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: anthropic/claude\n",
    );
    // Port 9 (discard) on loopback: nothing speaks NATS there, and --strict never gets that far.
    let (ok, out) = llmbus(&[
        "--nats-url",
        "nats://127.0.0.1:9",
        "serve",
        "--strict",
        "-c",
        &bad,
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("--strict: refusing to start over 1 problem"),
        "{out}"
    );
    assert!(out.contains("ANTHROPIC_API_KEY"), "{out}");
}

#[test]
fn wildcard_deployments_build_for_every_provider() {
    let mut text = String::from("model_list:\n");
    for provider in [
        "openai",
        "groq",
        "together_ai",
        "anthropic",
        "gemini",
        "bedrock",
        "cohere_chat",
        "ollama",
    ] {
        text.push_str(&format!(
            "  - model_name: \"{provider}/*\"\n    litellm_params: {{model: \"{provider}/*\", api_key: k, aws_region_name: us-east-1}}\n"
        ));
    }
    text.push_str("  - model_name: \"azure/*\"\n    litellm_params: {model: \"azure/*\", api_key: k, api_base: \"https://r.openai.azure.com\"}\n");
    let loaded = load(&text).unwrap();
    let report = preflight::examine_with_env(&loaded, &no_env);
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.ready, 9);
}
