//! Checking a config away from the workers that will run it (`llmbus config push`): the person
//! who pushes does not hold the workers' secrets, so every `os.environ/NAME` counts as set.
//!
//! [`Config::from_yaml_detached`] loads the text with a stand-in for each variable, shaped
//! for the key it fills (an `https://` URL for `api_base` and `*_API_BASE`, a region for
//! `aws_region_name` and `AWS_REGION`, an opaque value for keys), so that everything that does
//! not depend on the workers' environment is checked as a worker would: YAML, types, refused
//! security settings, typos, unknown providers, a provider without the `api_base` it needs.
//! The provider's default variables (`OPENAI_API_KEY` for a deployment without `api_key`)
//! count as set too. What only a worker can check stays for the worker, which checks it when
//! it loads the text ([`Detached::checked_on_workers`]): a Vertex AI service-account key that
//! is not written inline, a `model` that is itself a variable.
//!
//! [`Detached::literal_secrets`] lists the secrets written as literals: by the key they are
//! written under (keys, the master key, NATS credentials, credential headers such as
//! `extra_headers.Authorization`) or by their shape wherever they are (`sk-...`, `AKIA...`,
//! `Bearer ...`, a JWT, `user:password@` or `?key=` in a URL; [`super::secret`]). The
//! cluster's config is stored in NATS KV, readable by anyone who may read the bucket and
//! printed by `llmbus config show`, so a push (and a rollback) refuses them unless told
//! otherwise. The message names the key path and line, never the value.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::{
    Config, ConfigError, Loaded, ModelEntry,
    env::reference,
    locate::{KeyPath, locate},
    secret::{credential_shape, is_secret_key},
};

/// What a variable stands in for, which decides the shape of its placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Url,
    Region,
    Location,
    Project,
    Model,
    Credentials,
    Opaque,
}

/// The stand-in for a `model` that is an `os.environ/` reference.
const PLACEHOLDER_MODEL: &str = "openai/os-environ-model";

/// A config loaded with every `os.environ/` variable counted as set.
#[derive(Debug)]
pub struct Detached {
    /// The config as a worker with every variable set would load it (the values of the
    /// variables are placeholders: never run this config).
    pub loaded: Loaded,
    /// `origin, line N: key: ...` for each secret written as a literal.
    pub literal_secrets: Vec<String>,
    refs: BTreeMap<String, Kind>,
}

impl Detached {
    /// The environment the config was loaded with: every variable is set, to a placeholder
    /// shaped for the key it fills.
    pub fn env(&self, name: &str) -> Option<String> {
        Some(placeholder(kind_of(&self.refs, name)).to_owned())
    }

    /// Why a deployment that does not build here may still build on a worker, when that can
    /// be: its `model` is an `os.environ/` reference, or it is a Vertex AI deployment whose
    /// service-account key is not written inline (a variable, or a file on the workers).
    pub fn checked_on_workers(&self, entry: &ModelEntry) -> Option<&'static str> {
        let params = &entry.litellm_params;
        if params.model == PLACEHOLDER_MODEL {
            return Some("its `model` is an environment variable, read on each worker");
        }
        let inline = params
            .vertex_credentials
            .as_ref()
            .is_some_and(|c| c.expose().trim_start().starts_with('{'));
        if super::provider_prefix(&params.model) == Some("vertex_ai") && !inline {
            return Some("its Vertex AI service-account key is read on each worker");
        }
        None
    }
}

impl Config {
    /// Loads `text` as a worker would if every `os.environ/` variable were set (see the
    /// module docs); `origin` names it in messages. An error is a config no worker could load.
    pub fn from_yaml_detached(text: &str, origin: &str) -> Result<Detached, ConfigError> {
        let mut refs = BTreeMap::new();
        let mut literal_secrets = Vec::new();
        if let Ok(doc) = serde_yaml_ng::from_str::<Value>(text) {
            scan(&doc, &KeyPath::root(), None, &mut |path, key, value| {
                if let Some(name) = reference(value) {
                    let kind = key.map_or(by_name(name), |k| by_key(k, name));
                    refs.entry(name.to_owned()).or_insert(kind);
                } else if let Some(what) = literal_secret(key, value) {
                    let at = match locate(text, path) {
                        Some((line, _)) => format!("{origin}, line {line}"),
                        None => origin.to_owned(),
                    };
                    literal_secrets.push(format!(
                        "{at}: {path}: {what} written in the file; the cluster's config is \
                         stored in NATS KV and shown by `llmbus config show`, so write \
                         `os.environ/NAME` and set NAME on each worker"
                    ));
                }
            });
        }
        let loaded = Config::from_yaml_with_env(text, origin, &|name| {
            Some(placeholder(kind_of(&refs, name)).to_owned())
        })?;
        Ok(Detached {
            loaded,
            literal_secrets,
            refs,
        })
    }
}

/// Calls `visit(path, key, value)` for every string in the document, with the mapping key it
/// is the value of (`None` for a list item).
fn scan(
    value: &Value,
    path: &KeyPath,
    key: Option<&str>,
    visit: &mut dyn FnMut(&KeyPath, Option<&str>, &str),
) {
    match value {
        Value::String(s) => visit(path, key, s),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                scan(item, &path.index(i), None, visit);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map {
                if let Some(k) = k.as_str() {
                    scan(v, &path.key(k), Some(k), visit);
                }
            }
        }
        Value::Tagged(tagged) => scan(&tagged.value, path, key, visit),
        _ => {}
    }
}

/// What makes `value` (under `key`) a literal secret, if it is one: its key's name, or its
/// own shape. Never repeats the value.
fn literal_secret(key: Option<&str>, value: &str) -> Option<&'static str> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Some(key) = key
        && is_secret_key(key)
        // A Vertex AI key may be a path to a file: only the inline JSON is the secret.
        && (key != "vertex_credentials" || value.starts_with('{'))
    {
        return Some("a secret");
    }
    credential_shape(value)
}

fn kind_of(refs: &BTreeMap<String, Kind>, name: &str) -> Kind {
    refs.get(name).copied().unwrap_or_else(|| by_name(name))
}

/// The kind of a variable referred to under `key`.
fn by_key(key: &str, name: &str) -> Kind {
    match key {
        "api_base" | "nats_url" => Kind::Url,
        "aws_region_name" => Kind::Region,
        "vertex_location" => Kind::Location,
        "vertex_project" => Kind::Project,
        "vertex_credentials" => Kind::Credentials,
        "model" => Kind::Model,
        _ => by_name(name),
    }
}

/// The kind of a variable a provider reads by name (`AZURE_API_BASE`, `AWS_REGION`, ...).
fn by_name(name: &str) -> Kind {
    let n = name.to_ascii_uppercase();
    let has = |w: &str| n.contains(w);
    if has("CREDENTIALS") {
        Kind::Credentials
    } else if has("REGION") {
        Kind::Region
    } else if has("LOCATION") {
        Kind::Location
    } else if has("PROJECT") {
        Kind::Project
    } else if has("BASE") || has("URL") || has("ENDPOINT") || has("HOST") {
        Kind::Url
    } else {
        Kind::Opaque
    }
}

fn placeholder(kind: Kind) -> &'static str {
    match kind {
        Kind::Url => "https://os-environ.invalid",
        Kind::Region => "us-east-1",
        Kind::Location => "us-central1",
        Kind::Project => "os-environ-project",
        Kind::Model => PLACEHOLDER_MODEL,
        Kind::Credentials => "os-environ-credentials",
        Kind::Opaque => "os-environ-value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detached(yaml: &str) -> Detached {
        Config::from_yaml_detached(yaml, "c.yaml").expect("loads")
    }

    #[test]
    fn every_variable_counts_as_set_in_the_shape_its_key_needs() {
        let d = detached(
            "\
model_list:
  - model_name: a
    litellm_params:
      model: azure/gpt-4o
      api_base: os.environ/MY_AZURE_ENDPOINT_X
      api_key: os.environ/AZ_KEY
      api_version: os.environ/AZ_VERSION
  - model_name: b
    litellm_params:
      model: bedrock/anthropic.claude-3
      aws_region_name: os.environ/WHERE
  - model_name: c
    litellm_params:
      model: openai/gpt-4o
general_settings:
  master_key: os.environ/MASTER
",
        );
        for entry in &d.loaded.config.model_list {
            assert!(entry.misconfigured.is_none(), "{entry:?}");
        }
        assert!(d.loaded.warnings.is_empty(), "{:?}", d.loaded.warnings);
        assert_eq!(
            d.loaded.config.model_list[0]
                .litellm_params
                .api_base
                .as_deref(),
            Some("https://os-environ.invalid")
        );
        assert_eq!(d.env("AWS_REGION").as_deref(), Some("us-east-1"));
        assert_eq!(d.env("WHERE").as_deref(), Some("us-east-1"));
        assert_eq!(d.env("OPENAI_API_KEY").as_deref(), Some("os-environ-value"));
        assert!(d.literal_secrets.is_empty(), "{:?}", d.literal_secrets);
    }

    #[test]
    fn literal_secrets_are_named_with_their_line() {
        let d = detached(
            "\
model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-live-123
  - model_name: v
    litellm_params:
      model: vertex_ai/gemini-2.5-flash
      vertex_credentials: /etc/llmbus/sa.json
general_settings:
  master_key: sk-master
",
        );
        assert_eq!(d.literal_secrets.len(), 2, "{:?}", d.literal_secrets);
        assert!(
            d.literal_secrets[0]
                .starts_with("c.yaml, line 5: model_list[0].litellm_params.api_key"),
            "{}",
            d.literal_secrets[0]
        );
        assert!(
            d.literal_secrets[1].starts_with("c.yaml, line 11: general_settings.master_key"),
            "{}",
            d.literal_secrets[1]
        );
        assert!(!d.literal_secrets.join("\n").contains("sk-"));
        let vertex = &d.loaded.config.model_list[1];
        assert!(d.checked_on_workers(vertex).is_some());
        assert!(
            d.checked_on_workers(&d.loaded.config.model_list[0])
                .is_none()
        );
    }

    #[test]
    fn secrets_are_found_by_their_shape_wherever_they_are_written() {
        let d = detached(
            "\
model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
      api_base: https://proxy-user:hunter2-pass@llm.example.com/v1
      api_key: os.environ/OPENAI_API_KEY
      extra_headers:
        Authorization: Bearer tok-0123456789abcdef
        X-Trace: on
        X-Other: sk-proj-0123456789abcdefghij
  - model_name: g
    litellm_params:
      model: gemini/gemini-2.5-flash
      api_base: https://generativelanguage.example.com/v1beta?key=AIzaSyExample0123
      api_key: os.environ/GEMINI_API_KEY
  - model_name: m
    litellm_params: {model: mock/m, mock_response: \"Hello, no secret here.\"}
",
        );
        let all = d.literal_secrets.join("\n");
        assert_eq!(d.literal_secrets.len(), 4, "{all}");
        for (line, path, what) in [
            (5, "model_list[0].litellm_params.api_base", "user:password@"),
            (
                8,
                "model_list[0].litellm_params.extra_headers.Authorization",
                "a secret",
            ),
            (
                10,
                "model_list[0].litellm_params.extra_headers.X-Other",
                "OpenAI-style key",
            ),
            (14, "model_list[1].litellm_params.api_base", "query"),
        ] {
            let want = format!("c.yaml, line {line}: {path}: ");
            let found = d
                .literal_secrets
                .iter()
                .find(|m| m.starts_with(&want))
                .unwrap_or_else(|| panic!("no {want}: {all}"));
            assert!(found.contains(what), "{found}");
        }
        for secret in ["hunter2", "tok-0123", "sk-proj", "AIzaSy"] {
            assert!(!all.contains(secret), "{secret} echoed: {all}");
        }
    }

    #[test]
    fn a_model_from_a_variable_is_left_to_the_workers() {
        let d = detached(
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: os.environ/M\n",
        );
        assert!(
            d.checked_on_workers(&d.loaded.config.model_list[0])
                .is_some()
        );
    }
}
