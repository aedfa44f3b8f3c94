//! The docs name only what exists: every subject, header and config key that `README.md`,
//! `schemas/README.md` and `deploy/config.example.yaml` name is one the code knows, unless the
//! docs mark it planned (the word "planned" on the same line or table row).
//!
//! - Subjects: code spans that start with `llm.`, checked against `llmbus::wire::Subjects`
//!   (`<model_group>`-style placeholders stand for one token).
//! - Headers: code spans naming an `Llm-*` header (alone or as `Name:value`), `traceparent` or
//!   `Authorization`, checked against the `llmbus::wire::headers` constants and the header
//!   schemas generated from the types.
//! - Config keys: YAML blocks and `deploy/config.example.yaml` load with no unsupported key;
//!   its commented-out `# key: value` lines and the code spans of the README's Configuration
//!   section (and `section.key` spans anywhere) are probed: a key is known when the loader,
//!   given it in some section with some value, does not report it as unsupported.
//!
//! Code spans are parsed from the Markdown (inline spans, fenced blocks skipped), not diffed as
//! text, so rewording the docs never breaks this test; naming something that does not exist
//! does.

use std::path::Path;

use llmbus::{
    config::Config,
    wire::{Subjects, headers},
};

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// An inline code span and the line it is on.
#[derive(Debug, Clone)]
struct Span {
    text: String,
    line_no: usize,
    line: String,
}

impl Span {
    fn planned(&self) -> bool {
        self.line.to_lowercase().contains("planned")
    }
}

/// The inline code spans of a Markdown text, outside fenced blocks.
fn spans(markdown: &str) -> Vec<Span> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(code), Some(_)) = (parts.next(), parts.next()) {
            out.push(Span {
                text: code.to_string(),
                line_no: i + 1,
                line: line.to_string(),
            });
        }
    }
    out
}

/// The fenced blocks of one language.
fn fenced(markdown: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("```") {
            match current.take() {
                Some(block) => out.push(block),
                None if rest.trim() == lang => current = Some(String::new()),
                None => current = Some(String::from("\u{0}")), // another language: dropped
            }
            continue;
        }
        if let Some(block) = &mut current {
            block.push_str(line);
            block.push('\n');
        }
    }
    out.retain(|b| !b.starts_with('\u{0}'));
    out
}

const DOCS: &[&str] = &["README.md", "schemas/README.md"];

// ---------------------------------------------------------------------------------------------
// Subjects
// ---------------------------------------------------------------------------------------------

/// True when `subject` (placeholders `<...>` standing for one token) is one llmbus uses.
fn known_subject(subject: &str) -> bool {
    let s = Subjects::new("llm");
    let fixed = [
        s.completion(),
        s.embedding(),
        s.models(),
        s.deployments(),
        s.cancel(),
        s.admin_all(),
        s.admin_config_push(),
        s.admin_config_rollback(),
    ];
    if fixed.iter().any(|f| f == subject) {
        return true;
    }
    // One-token parameters: llm.usage.<group>, llm.health.<deployment>.
    let one_token = |prefix: &str| {
        subject
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('.'))
    };
    let usage = s.usage("X");
    let health = s.health("X");
    // A worker's own subjects: llm.worker.<worker>.completion and .embedding.
    let direct = ["completion", "embedding"].iter().any(|kind| {
        let example = s.direct("W", kind);
        let (head, tail) = example.split_once('W').expect("a worker token");
        subject
            .strip_prefix(head)
            .and_then(|rest| rest.strip_suffix(tail))
            .is_some_and(|worker| !worker.is_empty() && !worker.contains('.'))
    });
    direct || one_token(usage.trim_end_matches('X')) || one_token(health.trim_end_matches('X'))
}

#[test]
fn every_subject_the_docs_name_exists() {
    let mut checked = 0;
    let mut unknown = Vec::new();
    for file in DOCS {
        for span in spans(&read(file)) {
            let t = span.text.trim();
            if !t.starts_with("llm.") || t.contains(' ') || span.planned() {
                continue;
            }
            checked += 1;
            if !known_subject(t) {
                unknown.push(format!("{file}:{}: `{t}`", span.line_no));
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} subjects found: is the parser broken?"
    );
    assert!(
        unknown.is_empty(),
        "the docs name subjects llmbus does not use (mark them planned, or fix them):\n{}",
        unknown.join("\n")
    );
    // And the checker itself tells them apart.
    assert!(known_subject("llm.usage.<model_group>"));
    assert!(!known_subject("llm.batch.<batch_id>"));
    assert!(!known_subject("llm.usage.a.b"));
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

fn known_headers() -> Vec<String> {
    let mut names: Vec<String> = [
        headers::AUTHORIZATION,
        headers::TIMEOUT_MS,
        headers::TAGS,
        headers::FALLBACKS,
        headers::TRACEPARENT,
        headers::STATUS,
        headers::SEQ,
        headers::MODEL_GROUP,
        headers::DEPLOYMENT,
        headers::ATTEMPTS,
        headers::COST_USD,
        headers::CACHE,
        headers::JOB_ID,
        headers::UPSTREAM_MS,
        headers::ACK,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The header schemas are generated from the types: their properties are headers too.
    for (file, schema) in llmbus::wire::schemas() {
        if file.contains("headers")
            && let Some(props) = schema["properties"].as_object()
        {
            names.extend(props.keys().cloned());
        }
    }
    names
}

/// The header a code span names, if it names one: `Llm-Status`, `Llm-Timeout-Ms:5000`,
/// `traceparent`, `Authorization: Bearer <key>`.
fn header_in(span: &str) -> Option<&str> {
    let name = span.split(':').next()?.trim();
    let is_header = (name.starts_with("Llm-")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        || name.eq_ignore_ascii_case("traceparent")
        || name == "Authorization";
    is_header.then_some(name)
}

#[test]
fn every_header_the_docs_name_exists() {
    let known = known_headers();
    let mut checked = 0;
    let mut unknown = Vec::new();
    for file in DOCS {
        let text = read(file);
        let mut named: Vec<(usize, String, bool)> = spans(&text)
            .into_iter()
            .filter_map(|s| header_in(&s.text).map(|h| (s.line_no, h.to_string(), s.planned())))
            .collect();
        // Headers sent in examples: -H 'Name:value'.
        for (i, line) in text.lines().enumerate() {
            for part in line.split("-H ").skip(1) {
                let value = part.trim_start_matches(['\'', '"']);
                if let Some(h) = header_in(value) {
                    named.push((i + 1, h.to_string(), false));
                }
            }
        }
        for (line, name, planned) in named {
            if planned {
                continue;
            }
            checked += 1;
            if !known.iter().any(|k| k.eq_ignore_ascii_case(&name)) {
                unknown.push(format!("{file}:{line}: `{name}`"));
            }
        }
    }
    assert!(
        checked >= 15,
        "only {checked} headers found: is the parser broken?"
    );
    assert!(
        unknown.is_empty(),
        "the docs name headers llmbus does not know (mark them planned, or fix them):\n{}",
        unknown.join("\n")
    );
}

#[test]
fn a_header_no_code_sets_yet_is_marked_planned_wherever_the_docs_name_it() {
    // `Llm-Cache` is a constant (the schemas describe it) but no worker sets it yet.
    for file in DOCS {
        for span in spans(&read(file)) {
            if header_in(&span.text) == Some(headers::CACHE) {
                assert!(
                    span.planned(),
                    "{file}:{}: `{}` is promised but not marked planned",
                    span.line_no,
                    headers::CACHE
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config keys
// ---------------------------------------------------------------------------------------------

fn no_env(_: &str) -> Option<String> {
    None
}

/// The environment the documented configs expect: only the master key they name is set.
fn docs_env(name: &str) -> Option<String> {
    (name == "LLMBUS_MASTER_KEY").then(|| "sk-docs-example-master-key".to_string())
}

/// Where a key may sit, as YAML with `{k}: {v}` to fill in.
const PLACES: &[&str] = &[
    "model_list:\n  - model_name: probe\n    litellm_params:\n      model: mock/probe\n      mock_response: hi\n      {k}: {v}\n",
    "model_list:\n  - model_name: probe\n    litellm_params: {model: mock/probe, mock_response: hi}\n    model_info:\n      {k}: {v}\n",
    "model_list:\n  - model_name: probe\n    litellm_params: {model: mock/probe, mock_response: hi}\n    {k}: {v}\n",
    "router_settings:\n  {k}: {v}\n",
    "router_settings:\n  retry_policy:\n    {k}: {v}\n",
    "router_settings:\n  allowed_fails_policy:\n    {k}: {v}\n",
    "router_settings:\n  routing_strategy_args:\n    {k}: {v}\n",
    "litellm_settings:\n  {k}: {v}\n",
    "general_settings:\n  {k}: {v}\n",
    "llmbus:\n  {k}: {v}\n",
    "{k}: {v}\n",
];

/// Values tried for a key: one of them has its type.
const VALUES: &[&str] = &["1", "x", "true", "[]", "{}", "\"127.0.0.1:1\""];

/// True when some section takes `key` with some value without reporting it unsupported.
fn known_key(key: &str) -> bool {
    if matches!(
        key,
        "model_name" | "litellm_params" | "model" | "mock_response"
    ) {
        return true; // the probe's own keys
    }
    for place in PLACES {
        for value in VALUES {
            let yaml = place.replace("{k}", key).replace("{v}", value);
            let yaml = if yaml.starts_with("model_list") {
                yaml
            } else {
                format!("model_list: []\n{yaml}")
            };
            match Config::from_yaml_with_env(&yaml, "probe.yaml", &no_env) {
                Ok(loaded)
                    if !loaded
                        .unsupported
                        .iter()
                        .any(|u| u == key || u.ends_with(&format!(".{key}")))
                        && !loaded.typos.iter().any(|t| t.contains(&format!("{key}:"))) =>
                {
                    return true;
                }
                // The loader refused the value of this very key: it reads the key.
                Err(e) => {
                    let e = e.to_string();
                    let about_key =
                        e.contains(&format!(".{key}:")) || e.contains(&format!(" {key}:"));
                    let unknown = ["did you mean", "unknown key", "not supported"]
                        .iter()
                        .any(|w| e.contains(w));
                    if about_key && !unknown {
                        return true;
                    }
                }
                Ok(_) => {}
            }
        }
    }
    false
}

/// A dotted `section.key` path's last key, when its first segment is a config section.
fn config_path(span: &str) -> Option<&str> {
    let first = span.split('.').next()?;
    let sections = [
        "model_list",
        "litellm_params",
        "model_info",
        "router_settings",
        "routing_strategy_args",
        "retry_policy",
        "allowed_fails_policy",
        "litellm_settings",
        "general_settings",
        "llmbus",
    ];
    (span.contains('.') && sections.contains(&first)).then(|| span.rsplit('.').next())?
}

fn is_key_like(span: &str) -> bool {
    let snake = span
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && span.starts_with(|c: char| c.is_ascii_lowercase());
    let pascal = span.starts_with(|c: char| c.is_ascii_uppercase())
        && span.chars().all(|c| c.is_ascii_alphanumeric())
        && (span.ends_with("Retries") || span.ends_with("AllowedFails"));
    snake || pascal
}

/// Words in code spans of the Configuration section that are values, not keys: tag and group
/// names, and the wire fields and error codes the provider list names.
const VALUES_NOT_KEYS: &[&str] = &[
    // Error codes, metrics and setting values the Configuration section quotes.
    "invalid_api_key",
    "llmbus_unpriced_requests_total",
    // Fields of LiteLLM's price file (`litellm` is the package that ships it).
    "litellm",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
    "deployment_misconfigured",
    "llmbus_deployment_state",
    // Request and usage fields a call's token reservation is made of, and the idle
    // self-check's field in `$SRV.STATS` (README, *Capacity*).
    "max_completion_tokens",
    "max_tokens",
    "n",
    "completion_tokens",
    "capacity_lost",
    "false",
    // Guardrail and moderation hooks: values of LiteLLM's callback lists, refused by name.
    "presidio",
    "lakera_prompt_injection",
    "llamaguard_moderations",
    "openai_moderations",
    "hide_secrets",
    // LiteLLM settings the README says llmbus reads and deliberately ignores (they only relax,
    // guard features llmbus does not have, or are met by construction); the loader lists them
    // in its start-up warning.
    "public_routes",
    "ui_access_mode",
    "turn_off_message_logging",
    "database_url",
    "default",
    "demo",
    "system",
    "input_json_delta",
    "reasoning_content",
    "overloaded_error",
    "content_filter",
    "no_healthy_deployment",
    "worker_unreachable",
    "llmbus_handover_unreachable_total",
];

#[test]
fn every_config_key_the_docs_name_is_one_the_loader_knows() {
    let readme = read("README.md");
    let config_section = readme
        .split("\n## Configuration")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a Configuration section");
    let mut keys: Vec<(String, String)> = Vec::new();
    for span in spans(config_section) {
        let t = span.text.trim();
        if span.planned() || VALUES_NOT_KEYS.contains(&t) {
            continue;
        }
        if let Some(k) = config_path(t) {
            keys.push((format!("README Configuration: `{t}`"), k.to_string()));
        } else if is_key_like(t) {
            keys.push((format!("README Configuration: `{t}`"), t.to_string()));
        }
    }
    for file in DOCS {
        for span in spans(&read(file)) {
            if let Some(k) = config_path(span.text.trim())
                && !span.planned()
            {
                keys.push((
                    format!("{file}:{}: `{}`", span.line_no, span.text),
                    k.to_string(),
                ));
            }
        }
    }
    // Commented-out keys of the example config.
    for (i, line) in read("deploy/config.example.yaml").lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("# ") else {
            continue;
        };
        if let Some((k, _)) = rest.split_once(": ")
            && is_key_like(k)
        {
            keys.push((
                format!("deploy/config.example.yaml:{}: `{k}`", i + 1),
                k.to_string(),
            ));
        }
    }
    assert!(
        keys.len() >= 60,
        "only {} keys found: is the parser broken?",
        keys.len()
    );
    let unknown: Vec<&String> = keys
        .iter()
        .filter(|(_, k)| !known_key(k))
        .map(|(place, _)| place)
        .collect();
    assert!(
        unknown.is_empty(),
        "the docs name config keys llmbus does not read:\n{}",
        unknown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // And the probe tells them apart.
    assert!(known_key("num_retries") && known_key("RateLimitErrorRetries"));
    assert!(!known_key("num_retires"));
}

#[test]
fn every_yaml_block_and_the_example_config_load_with_no_unsupported_key() {
    let mut configs: Vec<(String, String)> = Vec::new();
    for file in DOCS {
        for (i, block) in fenced(&read(file), "yaml").into_iter().enumerate() {
            configs.push((format!("{file} yaml block {}", i + 1), block));
        }
    }
    configs.push((
        "deploy/config.example.yaml".into(),
        read("deploy/config.example.yaml"),
    ));
    assert!(configs.len() >= 2);
    for (name, yaml) in configs {
        let loaded = Config::from_yaml_with_env(&yaml, &name, &docs_env)
            .unwrap_or_else(|e| panic!("{name} does not load: {e}"));
        assert!(
            loaded.unsupported.is_empty(),
            "{name} has keys llmbus does not read: {:?}",
            loaded.unsupported
        );
    }
}

#[test]
fn the_example_config_says_every_native_provider_is_supported() {
    let text = read("deploy/config.example.yaml").to_lowercase();
    assert!(
        !text.contains("not supported"),
        "deploy/config.example.yaml still says something is not supported"
    );
    for provider in [
        "anthropic/",
        "gemini/",
        "vertex_ai/",
        "bedrock/",
        "cohere_chat/",
        "ollama/",
    ] {
        assert!(
            text.contains(provider),
            "deploy/config.example.yaml does not mention {provider}"
        );
    }
}
