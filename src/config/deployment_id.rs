//! Deployment ids. The cluster's shared state is keyed by them (the quota ledger of
//! `rpm`/`tpm`, the cooldown board), so two workers must name the same upstream the same way
//! and different upstreams differently, whatever the order of their `model_list`s.
//!
//! `model_info.id` wins when the config gives one. Otherwise the id is `<model_name>-<hash>`,
//! where `<hash>` is 8 hex digits of a SHA-256 over what the deployment *is* (LiteLLM derives
//! its default id the same way, as a hash of the group and `litellm_params`):
//!
//! - `litellm_params.model` as written (`openai/gpt-4o`),
//! - `api_base` without credentials: user, password, query and fragment are left out
//!   (`https://u:p@h/v1?key=k` counts as `https://h/v1`),
//! - `organization`, `vertex_project`, `vertex_location`, `aws_region_name`,
//! - where the credentials come from: the *name* of the variable of an `os.environ/NAME`
//!   reference (`api_key`, `vertex_credentials`, `aws_access_key_id`), or only the fact that a
//!   literal is given. **A key's value never enters the id**: deployments that differ only by a
//!   literal key get the same base id (and the suffix below), so give them `model_info.id`.
//!
//! Limits, weights, tags, timeouts and prices are settings of a deployment, not what it is:
//! they do not change its id. The same upstream listed twice in one group (two entries with
//! the same base id) is numbered by occurrence: the first keeps the base id, the second is
//! `<base>-2`, the third `<base>-3`. Entries that differ only in their settings should carry
//! `model_info.id`, since their occurrence order is all that tells them apart.

use std::collections::{BTreeMap, BTreeSet};

use super::{Config, LitellmParams, ModelEntry, Secret};

/// Hex digits of the digest in a derived id.
const HASH_HEX: usize = 8;

/// The id of each `model_list` entry, in order: unique within the config.
pub fn deployment_ids(config: &Config) -> Vec<String> {
    let explicit: BTreeSet<&str> = config
        .model_list
        .iter()
        .filter_map(|e| e.model_info.id.as_deref())
        .collect();
    let mut taken: BTreeSet<String> = explicit.iter().map(|s| s.to_string()).collect();
    let mut occurrences: BTreeMap<String, u32> = BTreeMap::new();
    let mut ids = Vec::with_capacity(config.model_list.len());
    for entry in &config.model_list {
        if let Some(id) = &entry.model_info.id {
            ids.push(id.clone());
            continue;
        }
        let base = derived_id(entry);
        let n = occurrences.entry(base.clone()).or_insert(0);
        let id = loop {
            *n += 1;
            let candidate = match *n {
                1 => base.clone(),
                k => format!("{base}-{k}"),
            };
            if !taken.contains(&candidate) {
                break candidate;
            }
        };
        taken.insert(id.clone());
        ids.push(id);
    }
    ids
}

/// `<model_name>-<hash of the upstream>`: the id an entry gets without `model_info.id`, before
/// duplicates are numbered.
pub fn derived_id(entry: &ModelEntry) -> String {
    format!(
        "{}-{}",
        entry.model_name,
        upstream_hash(&entry.litellm_params)
    )
}

/// 8 hex digits naming the upstream a deployment calls (see the module docs).
fn upstream_hash(p: &LitellmParams) -> String {
    let mut text = String::new();
    let mut field = |name: &str, value: Option<&str>| {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            text.push_str(name);
            text.push('=');
            text.push_str(v);
            text.push('\n');
        }
    };
    field("model", Some(&p.model));
    field(
        "api_base",
        p.api_base.as_deref().map(without_credentials).as_deref(),
    );
    field("organization", p.organization.as_deref());
    field("vertex_project", p.vertex_project.as_deref());
    field("vertex_location", p.vertex_location.as_deref());
    field("aws_region_name", p.aws_region_name.as_deref());
    field("api_key", source(&p.api_key).as_deref());
    field(
        "vertex_credentials",
        source(&p.vertex_credentials).as_deref(),
    );
    field("aws_access_key_id", source(&p.aws_access_key_id).as_deref());
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex[..HASH_HEX].to_string()
}

/// Where a secret comes from, never its value: `os.environ/NAME`, or `literal`.
fn source(secret: &Option<Secret>) -> Option<String> {
    let s = secret.as_ref()?;
    Some(match s.variable() {
        Some(name) => format!("os.environ/{name}"),
        None => "literal".to_string(),
    })
}

/// A URL without user, password, query or fragment, its scheme and host in lower case and
/// without a trailing `/`.
fn without_credentials(url: &str) -> String {
    let url = url.trim();
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let mut out = String::new();
    if let Some(s) = scheme {
        out.push_str(&s);
        out.push_str("://");
    }
    out.push_str(&host.to_ascii_lowercase());
    out.push_str(path.trim_end_matches('/'));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str, env: &[(&str, &str)]) -> Config {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_yaml_with_env(yaml, "test.yaml", &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .expect("the config loads")
        .config
    }

    fn ids_by_base(config: &Config) -> BTreeMap<String, String> {
        config
            .model_list
            .iter()
            .zip(deployment_ids(config))
            .map(|(e, id)| {
                let base = e.litellm_params.api_base.clone().unwrap_or_default();
                (format!("{}|{base}", e.model_name), id)
            })
            .collect()
    }

    const EU: &str = "  - model_name: gpt\n    litellm_params: {model: openai/gpt-4o, api_base: https://eu.example/v1, api_key: os.environ/KEY_EU, rpm: 10}\n";
    const US: &str = "  - model_name: gpt\n    litellm_params: {model: openai/gpt-4o, api_base: https://us.example/v1, api_key: os.environ/KEY_US}\n";
    const MINI: &str = "  - model_name: mini\n    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/KEY_EU}\n";

    #[test]
    fn two_workers_with_differently_ordered_configs_agree_on_every_id() {
        let env = [
            ("KEY_EU", "sk-eu-secret-value"),
            ("KEY_US", "sk-us-secret-value"),
        ];
        let a = config(&format!("model_list:\n{EU}{US}{MINI}"), &env);
        let b = config(&format!("model_list:\n{MINI}{US}{EU}"), &env);
        let (a, b) = (ids_by_base(&a), ids_by_base(&b));
        assert_eq!(a, b);
        let ids: BTreeSet<&String> = a.values().collect();
        assert_eq!(ids.len(), 3, "different upstreams, different ids: {a:?}");
        for id in a.values() {
            assert!(!id.contains("secret"), "{id}");
            assert!(id.starts_with("gpt-") || id.starts_with("mini-"), "{id}");
        }
    }

    #[test]
    fn the_key_value_never_enters_the_id_but_its_variable_does() {
        let one = config(&format!("model_list:\n{EU}"), &[("KEY_EU", "sk-one")]);
        let two = config(&format!("model_list:\n{EU}"), &[("KEY_EU", "sk-two")]);
        assert_eq!(deployment_ids(&one), deployment_ids(&two));
        let other_var = EU.replace("KEY_EU", "KEY_OTHER");
        let three = config(
            &format!("model_list:\n{other_var}"),
            &[("KEY_OTHER", "sk-one")],
        );
        assert_ne!(deployment_ids(&one), deployment_ids(&three));
        // Literal keys: the same id whatever the value.
        let lit = |k: &str| {
            config(
                &format!(
                    "model_list:\n  - model_name: g\n    litellm_params: {{model: openai/x, api_key: {k}}}\n"
                ),
                &[],
            )
        };
        assert_eq!(
            deployment_ids(&lit("sk-aaa")),
            deployment_ids(&lit("sk-bbb"))
        );
    }

    #[test]
    fn credentials_in_the_base_url_do_not_count() {
        assert_eq!(
            without_credentials("HTTPS://user:pass@Api.Example:8443/v1/?key=k#x"),
            "https://api.example:8443/v1"
        );
        assert_eq!(without_credentials("http://h"), "http://h");
        let with = config(
            "model_list:\n  - model_name: g\n    litellm_params: {model: openai/x, api_base: 'https://u:secret@h/v1?key=zzz'}\n",
            &[],
        );
        let without = config(
            "model_list:\n  - model_name: g\n    litellm_params: {model: openai/x, api_base: 'https://h/v1'}\n",
            &[],
        );
        assert_eq!(deployment_ids(&with), deployment_ids(&without));
    }

    #[test]
    fn the_same_upstream_twice_is_numbered_and_an_explicit_id_wins() {
        let twice = format!(
            "model_list:\n{EU}{EU}  - model_name: gpt\n    litellm_params: {{model: openai/gpt-4o}}\n    model_info: {{id: mine}}\n"
        );
        let c = config(&twice, &[("KEY_EU", "k")]);
        let ids = deployment_ids(&c);
        assert_eq!(ids[1], format!("{}-2", ids[0]));
        assert_eq!(ids[2], "mine");
        assert!(ids[0].starts_with("gpt-") && ids[0].len() == "gpt-".len() + HASH_HEX);
    }

    #[test]
    fn settings_do_not_change_the_id() {
        let a = config(&format!("model_list:\n{EU}"), &[("KEY_EU", "k")]);
        let tuned = EU.replace("rpm: 10", "rpm: 99, weight: 3, timeout: 5");
        let b = config(&format!("model_list:\n{tuned}"), &[("KEY_EU", "k")]);
        assert_eq!(deployment_ids(&a), deployment_ids(&b));
    }
}
