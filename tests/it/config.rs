//! The config loader: a real LiteLLM config, broken files, `os.environ/` references, YAML 1.1
//! integers and the quickstart config.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use llmbus::config::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// An environment holding exactly `vars`.
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

/// Loads `text` with no environment variables set.
fn load(text: &str) -> Result<Loaded, ConfigError> {
    Config::from_yaml_with_env(text, "test.yaml", &no_env)
}

/// The error `text` gives, as a message.
fn error(text: &str) -> String {
    match load(text) {
        Ok(loaded) => panic!("expected an error, got {:?}", loaded.config),
        Err(err) => err.to_string(),
    }
}

/// A one-deployment config followed by `rest`.
fn with_one_model(rest: &str) -> String {
    format!("model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n{rest}")
}

const FULL_ENV: &[(&str, &str)] = &[
    ("AZURE_API_KEY_EU", "azure-eu-key"),
    ("AZURE_API_KEY_CA", "azure-ca-key"),
    ("OPENAI_API_KEY", "sk-openai"),
    ("OPENAI_PROJECT", "proj_123"),
    ("GROQ_API_KEY", "gsk-groq"),
    ("LITELLM_MASTER_KEY", "sk-master"),
    ("NATS_URL", "nats://nats-1:4222,nats://nats-2:4222"),
    ("NATS_PASSWORD", "nats-secret"),
];

fn load_full() -> Loaded {
    let text = std::fs::read_to_string(fixture("litellm_full.yaml")).unwrap();
    Config::from_yaml_with_env(&text, "litellm_full.yaml", &env_of(FULL_ENV)).unwrap()
}

#[test]
fn full_litellm_config_loads_deployments() {
    let Loaded { config, .. } = load_full();
    let models = &config.model_list;
    let names: Vec<&str> = models.iter().map(|m| m.model_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "gpt-4o",
            "gpt-4o",
            "gpt-4o-mini",
            "llama-3.1-8b",
            "gemini-1.5-pro",
            "fake-openai-endpoint"
        ]
    );

    // rpm inside litellm_params.
    let eu = &models[0];
    assert_eq!(eu.litellm_params.model, "azure/gpt-4o-eu");
    assert_eq!(
        eu.litellm_params.api_key.as_ref().unwrap().expose(),
        "azure-eu-key"
    );
    assert_eq!(
        eu.litellm_params.api_version.as_deref(),
        Some("2024-08-01-preview")
    );
    assert_eq!(eu.rpm(), Some(6));
    assert_eq!(eu.tpm(), None);
    assert_eq!(eu.litellm_params.timeout, Some(30.0));
    assert_eq!(eu.litellm_params.stream_timeout, Some(10.0));
    assert_eq!(eu.litellm_params.weight, Some(2.0));
    assert_eq!(eu.model_info.id.as_deref(), Some("gpt-4o-eu"));
    assert_eq!(eu.model_info.base_model.as_deref(), Some("azure/gpt-4o"));

    // rpm and tpm beside litellm_params, written `20_000`.
    let ca = &models[1];
    assert_eq!(ca.litellm_params.rpm, None);
    assert_eq!(ca.rpm(), Some(20_000));
    assert_eq!(ca.tpm(), Some(1_000_000));
    assert_eq!(
        ca.litellm_params.api_key.as_ref().unwrap().expose(),
        "azure-ca-key"
    );

    let mini = &models[2].litellm_params;
    assert_eq!(mini.api_key.as_ref().unwrap().expose(), "sk-openai");
    assert_eq!(mini.organization, None, "OPENAI_ORG_ID is not set");
    assert_eq!(mini.tpm, Some(2_000_000));
    assert_eq!(mini.max_parallel_requests, Some(1_000));
    assert_eq!(mini.extra_headers["X-Team"], "research");
    assert_eq!(mini.extra_headers["OpenAI-Project"], "proj_123");

    let llama = &models[3];
    assert_eq!(llama.litellm_params.model, "groq/llama-3.1-8b-instant");
    assert_eq!(llama.rpm(), Some(30));
    assert_eq!(llama.litellm_params.tags, ["free", "fast"]);
    assert_eq!(llama.model_info.max_input_tokens, Some(131_072));
    assert_eq!(llama.model_info.max_output_tokens, Some(8192));
    assert_eq!(llama.model_info.input_cost_per_token, Some(0.00000005));
    assert_eq!(llama.model_info.output_cost_per_token, Some(8.0e-8));
    assert_eq!(llama.model_info.mode.as_deref(), Some("chat"));

    let fake = &models[5].litellm_params;
    assert_eq!(fake.mock_response.as_deref(), Some("This is a mock."));
    assert_eq!(fake.api_key.as_ref().unwrap().expose(), "fake-key");
}

#[test]
fn full_litellm_config_loads_settings() {
    let Loaded { config, .. } = load_full();
    let r = &config.router_settings;
    assert_eq!(r.routing_strategy.as_deref(), Some("simple-shuffle"));
    assert_eq!(r.num_retries, Some(3));
    assert_eq!(r.allowed_fails, Some(3));
    assert_eq!(r.cooldown_time, Some(30.0));
    assert_eq!(r.model_group_alias["gpt-4"].group(), "gpt-4o");
    assert!(!r.model_group_alias["gpt-4"].hidden());
    assert_eq!(r.model_group_alias["gpt-3.5-turbo"].group(), "gpt-4o-mini");
    assert!(r.model_group_alias["gpt-3.5-turbo"].hidden());
    assert_eq!(r.fallbacks.len(), 2);
    assert_eq!(r.fallbacks[0]["gpt-4o"], ["gpt-4o-mini"]);
    assert_eq!(r.fallbacks[1]["gpt-4o-mini"], ["llama-3.1-8b"]);
    assert_eq!(
        r.context_window_fallbacks[0]["llama-3.1-8b"],
        ["gpt-4o-mini"]
    );
    assert_eq!(r.default_fallbacks, ["gpt-4o-mini"]);
    assert_eq!(r.retry_policy.authentication_error_retries, Some(0));
    assert_eq!(r.retry_policy.rate_limit_error_retries, Some(5));
    assert_eq!(r.retry_policy.timeout_error_retries, Some(2));
    assert_eq!(r.retry_policy.bad_request_error_retries, None);
    assert_eq!(
        r.allowed_fails_policy.rate_limit_error_allowed_fails,
        Some(100)
    );
    assert_eq!(
        r.allowed_fails_policy
            .content_policy_violation_error_allowed_fails,
        Some(1_000)
    );

    // router_settings wins over litellm_settings.
    assert_eq!(config.litellm_settings.num_retries, Some(5));
    assert_eq!(config.litellm_settings.request_timeout, Some(600.0));
    assert_eq!(config.num_retries(), 3);
    assert_eq!(config.default_timeout(), Duration::from_secs(30));

    let master = config.general_settings.master_key.as_ref().unwrap();
    assert_eq!(master.expose(), "sk-master");

    let l = &config.llmbus;
    assert_eq!(
        l.nats_url.as_deref(),
        Some("nats://nats-1:4222,nats://nats-2:4222")
    );
    assert_eq!(l.nats_user.as_deref(), Some("llmbus"));
    assert_eq!(l.nats_password.as_ref().unwrap().expose(), "nats-secret");
    assert_eq!(l.subject_prefix, "acme");
    assert_eq!(l.queue_group, "llmbus-prod");
    assert_eq!(l.metrics_listen, Some("0.0.0.0:9464".parse().unwrap()));
    assert_eq!(l.max_in_flight, 2_048);
    assert_eq!(l.http_listen, Some("0.0.0.0:4000".parse().unwrap()));
}

#[test]
fn full_litellm_config_reports_unsupported_keys_and_missing_variables() {
    let loaded = load_full();
    assert_eq!(
        loaded.unsupported,
        [
            "model_list[2].litellm_params.temperature",
            "model_list[5].model_info.supports_vision",
            "router_settings.redis_host",
            "router_settings.redis_password",
            "litellm_settings.success_callback",
            "litellm_settings.failure_callback",
            "litellm_settings.callbacks",
            "litellm_settings.cache",
            "litellm_settings.cache_params",
            "general_settings.database_url",
            "general_settings.alerting",
            "environment_variables",
        ]
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let warning = &loaded.warnings[0];
    assert!(
        warning.contains("model_list[2].litellm_params.organization"),
        "{warning}"
    );
    assert!(warning.contains("OPENAI_ORG_ID"), "{warning}");
    assert!(warning.contains("line 33"), "{warning}");
}

#[test]
fn load_reads_the_file() {
    // The process environment may or may not hold these variables: it loads, or it refuses
    // over the master key's variable alone.
    match Config::load(&fixture("litellm_full.yaml")) {
        Ok(loaded) => {
            assert_eq!(loaded.config.model_list.len(), 6);
            assert_eq!(loaded.unsupported.len(), 12);
        }
        Err(e) => assert!(
            e.to_string().contains("`LITELLM_MASTER_KEY` is not set"),
            "{e}"
        ),
    }

    let err = Config::load(&fixture("no_such_file.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("no_such_file.yaml"), "{err}");
}

/// Loads a broken fixture and returns (message, key, line).
fn broken(name: &str) -> (String, String, Option<usize>) {
    match Config::load(&fixture(name)) {
        Ok(loaded) => panic!("{name} loaded: {:?}", loaded.config),
        Err(err @ ConfigError::At { .. }) => {
            let message = err.to_string();
            let ConfigError::At { key, line, .. } = err else {
                unreachable!()
            };
            assert!(message.contains(name), "{message}");
            (message, key, line)
        }
        Err(other) => panic!("{name}: unexpected error {other:?}"),
    }
}

#[test]
fn bad_yaml_names_the_line() {
    let (message, key, line) = broken("bad_yaml.yaml");
    // libyaml notices the unclosed `[` on the next line.
    assert_eq!(line, Some(6), "{message}");
    assert!(message.contains("line 6"), "{message}");
    assert!(key.starts_with("model_list"), "{message}");
}

#[test]
fn wrong_type_names_the_key_and_line() {
    let (message, key, line) = broken("wrong_type.yaml");
    assert_eq!(key, "model_list[1].litellm_params.rpm");
    assert_eq!(line, Some(8));
    assert!(
        message.contains("model_list[1].litellm_params.rpm"),
        "{message}"
    );
    assert!(message.contains("line 8, column 12"), "{message}");
    assert!(message.contains("\"lots\""), "{message}");
}

#[test]
fn missing_model_marks_the_deployment_misconfigured() {
    let loaded = Config::load(&fixture("missing_model.yaml")).unwrap();
    let entry = &loaded.config.model_list[0];
    let reason = entry.misconfigured.as_deref().unwrap();
    assert!(
        reason.contains("model_list[0].litellm_params.model: required key is missing"),
        "{reason}"
    );
    let location = entry.location.as_deref().unwrap();
    assert!(
        location.ends_with("missing_model.yaml, line 3"),
        "{location}"
    );
}

#[test]
fn unknown_alias_target_names_the_key_and_line() {
    let (message, key, line) = broken("unknown_alias.yaml");
    assert_eq!(key, "router_settings.model_group_alias.claude");
    assert_eq!(line, Some(9));
    assert!(
        message.contains("`claude-3-5-sonnet` is not a model group"),
        "{message}"
    );
    assert!(message.contains("gpt-4o"), "{message}");
}

#[test]
fn bad_subject_prefix_names_the_key_and_line() {
    let (message, key, line) = broken("bad_subject_prefix.yaml");
    assert_eq!(key, "llmbus.subject_prefix");
    assert_eq!(line, Some(8));
    assert!(message.contains("line 8, column 3"), "{message}");
    assert!(
        message.contains("`acme.*` is not a NATS subject prefix"),
        "{message}"
    );
}

#[test]
fn missing_required_keys() {
    let e = error("model_list:\n  - litellm_params:\n      model: openai/a\n");
    assert!(
        e.contains("model_list[0].model_name: required key is missing"),
        "{e}"
    );
    assert!(e.contains("line 2"), "{e}");
    // Without `litellm_params` the deployment loads, misconfigured.
    let loaded = load("model_list:\n  - model_name: a\n    model_info: {id: x}\n").unwrap();
    let reason = loaded.config.model_list[0]
        .misconfigured
        .as_deref()
        .unwrap();
    assert!(reason.contains("required key is missing"), "{reason}");
}

#[test]
fn semantic_errors_name_key_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "model_list:\n  - model_name: ''\n    litellm_params:\n      model: openai/a\n",
            "model_list[0].model_name",
            "line 2",
        ),
        (
            &with_one_model("      timeout: 0\n"),
            "model_list[0].litellm_params.timeout",
            "line 5",
        ),
        (
            &with_one_model("      timeout: -3\n"),
            "model_list[0].litellm_params.timeout",
            "line 5",
        ),
        (
            &with_one_model("      weight: -1\n"),
            "model_list[0].litellm_params.weight",
            "line 5",
        ),
        (
            &with_one_model("      max_parallel_requests: 0\n"),
            "model_list[0].litellm_params.max_parallel_requests",
            "line 5",
        ),
        (
            &with_one_model("router_settings:\n  timeout: 0\n"),
            "router_settings.timeout",
            "line 6",
        ),
        (
            &with_one_model("router_settings:\n  fallbacks: [{\"a\": [\"b\"]}]\n"),
            "router_settings.fallbacks[0].a",
            "line 6",
        ),
        (
            &with_one_model("router_settings:\n  fallbacks:\n    - zz: [a]\n"),
            "router_settings.fallbacks[0].zz",
            "line 7",
        ),
        (
            &with_one_model("router_settings:\n  default_fallbacks:\n    - a\n    - b\n"),
            "router_settings.default_fallbacks[1]",
            "line 8",
        ),
        (
            &with_one_model("llmbus:\n  max_in_flight: 0\n"),
            "llmbus.max_in_flight",
            "line 6",
        ),
        (
            &with_one_model("llmbus:\n  queue_group: 'my group'\n"),
            "llmbus.queue_group",
            "line 6",
        ),
        (
            &with_one_model("llmbus:\n  subject_prefix: ''\n"),
            "llmbus.subject_prefix",
            "line 6",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params: {model: openai/a}\n    model_info: {id: x}\n  - model_name: b\n    litellm_params: {model: openai/b}\n    model_info:\n      id: x\n",
            "model_list[1].model_info.id",
            "line 8",
        ),
    ];
    for (text, key, line) in cases {
        let e = error(text);
        assert!(e.starts_with("test.yaml, "), "{e}");
        assert!(e.contains(&format!("{key}: ")), "{key}: {e}");
        assert!(e.contains(&format!("{line}, ")), "{key}: {e}");
    }
}

#[test]
fn yaml11_integers_and_float_fields() {
    let loaded = load(
        "model_list:
  - model_name: a
    litellm_params:
      model: openai/a
      rpm: 1_000_000
      tpm: +20_000
      max_parallel_requests: 50
      timeout: 30
      weight: 1
router_settings:
  num_retries: 1_0
  timeout: 2.5
llmbus:
  max_in_flight: 4_096
",
    )
    .unwrap();
    let c = &loaded.config;
    let p = &c.model_list[0].litellm_params;
    assert_eq!(
        (p.rpm, p.tpm, p.max_parallel_requests),
        (Some(1_000_000), Some(20_000), Some(50))
    );
    assert_eq!((p.timeout, p.weight), (Some(30.0), Some(1.0)));
    assert_eq!(c.router_settings.num_retries, Some(10));
    assert_eq!(c.default_timeout(), Duration::from_millis(2500));
    assert_eq!(c.llmbus.max_in_flight, 4096);

    let e = error(&with_one_model("      rpm: -5\n"));
    assert!(e.contains("model_list[0].litellm_params.rpm"), "{e}");
    let e = error(&with_one_model("      rpm: 1.5\n"));
    assert!(e.contains("model_list[0].litellm_params.rpm"), "{e}");
    let e = error(&with_one_model(
        "router_settings:\n  num_retries: 99_999_999_999\n",
    ));
    assert!(e.contains("router_settings.num_retries"), "{e}");
}

#[test]
fn rpm_null_means_unset() {
    let loaded = load(&with_one_model("      rpm: null\n    tpm: ~\n")).unwrap();
    let m = &loaded.config.model_list[0];
    assert_eq!((m.rpm(), m.tpm()), (None, None));
}

#[test]
fn env_references_resolve_everywhere_and_missing_ones_warn() {
    let text = "\
model_list:
  - model_name: a
    litellm_params:
      model: os.environ/MODEL
      api_base: os.environ/BASE
      api_key: os.environ/KEY
      api_version: os.environ/VERSION
      extra_headers:
        X-Present: os.environ/HEADER
        X-Absent: os.environ/NO_HEADER
llmbus:
  nats_url: os.environ/NO_NATS_URL
  nats_token: os.environ/TOKEN
  nats_creds_file: os.environ/CREDS
";
    let env = env_of(&[
        ("MODEL", "openai/gpt-4o"),
        ("BASE", "https://example.test/v1"),
        ("KEY", "sk-from-env"),
        ("VERSION", "2024-06-01"),
        ("HEADER", "yes"),
        ("TOKEN", "tok-from-env"),
        ("CREDS", "/etc/llmbus/nats.creds"),
    ]);
    let loaded = Config::from_yaml_with_env(text, "env.yaml", &env).unwrap();
    let c = &loaded.config;
    let p = &c.model_list[0].litellm_params;
    assert_eq!(p.model, "openai/gpt-4o");
    assert_eq!(p.api_base.as_deref(), Some("https://example.test/v1"));
    assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-from-env");
    assert_eq!(p.api_version.as_deref(), Some("2024-06-01"));
    assert_eq!(p.extra_headers.len(), 1);
    assert_eq!(p.extra_headers["X-Present"], "yes");
    assert!(c.model_list[0].misconfigured.is_none());
    assert_eq!(c.llmbus.nats_url, None);
    assert_eq!(
        c.llmbus.nats_token.as_ref().unwrap().expose(),
        "tok-from-env"
    );
    assert_eq!(
        c.llmbus.nats_creds_file.as_deref(),
        Some("/etc/llmbus/nats.creds")
    );

    let w = &loaded.warnings;
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("model_list[0].litellm_params.extra_headers.X-Absent"),
        "{w:?}"
    );
    assert!(
        w[0].contains("`NO_HEADER`") && w[0].contains("line 10"),
        "{w:?}"
    );
    assert!(w[1].contains("llmbus.nats_url") && w[1].contains("`NO_NATS_URL`"));
    let all = w.join("\n");
    for value in ["sk-from-env", "tok-from-env", "yes"] {
        assert!(!all.contains(value), "{all}");
    }
}

#[test]
fn missing_variable_for_model_marks_the_deployment_misconfigured() {
    let loaded =
        load("model_list:\n  - model_name: a\n    litellm_params:\n      model: os.environ/NOPE\n")
            .unwrap();
    let reason = loaded.config.model_list[0]
        .misconfigured
        .as_deref()
        .unwrap();
    assert!(
        reason.contains("model_list[0].litellm_params.model"),
        "{reason}"
    );
    assert!(
        reason.contains("`NOPE`") && reason.contains("line 4"),
        "{reason}"
    );
    assert!(
        !reason.contains("required key is missing"),
        "one reason: {reason}"
    );
}

#[test]
fn metrics_listen_null_turns_metrics_off() {
    let default: SocketAddr = "127.0.0.1:9464".parse().unwrap();
    let absent = load(&with_one_model("llmbus:\n  subject_prefix: llm\n")).unwrap();
    assert_eq!(absent.config.llmbus.metrics_listen, Some(default));
    let no_section = load(&with_one_model("")).unwrap();
    assert_eq!(no_section.config.llmbus.metrics_listen, Some(default));
    assert_eq!(no_section.config.llmbus.subject_prefix, "llm");
    assert_eq!(no_section.config.llmbus.queue_group, "llmbus");
    assert_eq!(no_section.config.llmbus.max_in_flight, 1024);
    let null = load(&with_one_model("llmbus:\n  metrics_listen: null\n")).unwrap();
    assert_eq!(null.config.llmbus.metrics_listen, None);
    let tilde = load(&with_one_model("llmbus:\n  metrics_listen: ~\n")).unwrap();
    assert_eq!(tilde.config.llmbus.metrics_listen, None);
    let set = load(&with_one_model("llmbus:\n  metrics_listen: '[::1]:9000'\n")).unwrap();
    assert_eq!(
        set.config.llmbus.metrics_listen,
        Some("[::1]:9000".parse().unwrap())
    );
    let e = error(&with_one_model("llmbus:\n  metrics_listen: nowhere\n"));
    assert!(
        e.contains("llmbus.metrics_listen") && e.contains("line 6"),
        "{e}"
    );
}

#[test]
fn secrets_never_print() {
    let secret = "sk-very-secret-value";
    let text = format!(
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      api_key: {secret}\n      weight: -1\n"
    );
    let err = load(&text).unwrap_err();
    assert!(!err.to_string().contains(secret), "{err}");
    assert!(!format!("{err:?}").contains(secret), "{err:?}");

    let ok = load(&text.replace("weight: -1", "weight: 1")).unwrap();
    let debug = format!("{:?}", ok.config);
    assert!(!debug.contains(secret), "{debug}");
    assert!(debug.contains("Secret(***)"), "{debug}");

    // A secret field with the wrong type does not echo the value either.
    let text = format!(
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      api_key: [{secret}]\n"
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(
        err.contains("model_list[0].litellm_params.api_key"),
        "{err}"
    );
    assert!(!err.contains(secret), "{err}");

    // Nor does a secret from the environment.
    let env = env_of(&[("NATS_PASSWORD", secret)]);
    let text =
        with_one_model("llmbus:\n  nats_password: os.environ/NATS_PASSWORD\n  max_in_flight: 0\n");
    let err = Config::from_yaml_with_env(&text, "t.yaml", &env).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(secret));
    let text = with_one_model("llmbus:\n  nats_password: os.environ/NATS_PASSWORD\n");
    let ok = Config::from_yaml_with_env(&text, "t.yaml", &env).unwrap();
    assert!(!format!("{ok:?}").contains(secret));
}

#[test]
fn empty_config_loads_with_a_warning() {
    let loaded = load("# nothing yet\n").unwrap();
    assert!(loaded.config.model_list.is_empty());
    assert_eq!(loaded.warnings.len(), 1);
}

#[test]
fn quickstart_without_openai_key_is_the_demo_groups() {
    let loaded = Config::quickstart_with_env(&no_env);
    assert!(loaded.unsupported.is_empty(), "{:?}", loaded.unsupported);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let models = &loaded.config.model_list;
    assert_eq!(models.len(), 3);
    let ids: Vec<_> = models
        .iter()
        .map(|m| m.model_info.id.as_deref().unwrap())
        .collect();
    assert_eq!(ids, ["demo-a", "demo-b", "demo-embedding"]);
    assert_eq!(models[2].model_name, "demo-embedding");
    assert_eq!(models[2].model_info.mode.as_deref(), Some("embedding"));
    for m in &models[..2] {
        assert_eq!(m.model_name, "demo");
        let text = m.litellm_params.mock_response.as_deref().unwrap();
        assert!(text.contains("Hello from llmbus"), "{text}");
        assert!(text.contains("OPENAI_API_KEY"), "{text}");
        assert!(m.litellm_params.api_key.is_none());
    }
}

#[test]
fn quickstart_with_openai_key_adds_openai_groups() {
    let loaded = Config::quickstart_with_env(&env_of(&[("OPENAI_API_KEY", "sk-test")]));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let models = &loaded.config.model_list;
    let names: Vec<_> = models.iter().map(|m| m.model_name.as_str()).collect();
    assert_eq!(
        names,
        ["demo", "demo", "demo-embedding", "gpt-4o-mini", "gpt-4o"]
    );
    assert_eq!(models[3].litellm_params.model, "openai/gpt-4o-mini");
    assert_eq!(models[4].litellm_params.model, "openai/gpt-4o");
    for m in &models[3..] {
        assert_eq!(
            m.litellm_params.api_key.as_ref().unwrap().expose(),
            "sk-test"
        );
    }
}

#[test]
fn quickstart_yaml_is_a_valid_config_on_its_own() {
    let loaded = Config::from_yaml_with_env(QUICKSTART_YAML, "quickstart.yaml", &no_env).unwrap();
    assert!(loaded.unsupported.is_empty());
}

#[test]
fn example_config_loads_without_unsupported_keys() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let env = env_of(&[("LLMBUS_MASTER_KEY", "sk-example")]);
    let loaded = Config::from_yaml_with_env(&text, "config.example.yaml", &env).unwrap();
    assert!(loaded.unsupported.is_empty(), "{:?}", loaded.unsupported);
    assert!(loaded.typos.is_empty(), "{:?}", loaded.typos);
    assert!(!loaded.config.model_list.is_empty());
}

#[test]
fn repeated_key_is_an_error() {
    let e = error(&with_one_model("      rpm: 1\n      rpm: 2\n"));
    assert!(
        e.contains("model_list[0].litellm_params.rpm: key appears more than once"),
        "{e}"
    );
}
