//! The built-in quickstart config: what `llmbus up` runs without a config file.
//!
//! It is the YAML in `quickstart.yaml`, loaded like any other file: a model group `demo` with
//! two `mock_response` deployments (`demo-a`, `demo-b`) so routing is visible with no key at
//! all, a mock embedding model `demo-embedding` for `llm.embedding`, and, only when
//! `OPENAI_API_KEY` is set, the groups `gpt-4o-mini` and `gpt-4o`.

use super::{Config, Loaded};

/// The quickstart config's YAML text (also a minimal example config).
pub const QUICKSTART_YAML: &str = include_str!("quickstart.yaml");

/// The name the quickstart config goes by in messages.
const ORIGIN: &str = "built-in quickstart config";

impl Config {
    /// The quickstart config, reading `OPENAI_API_KEY` from the process environment.
    pub fn quickstart() -> Loaded {
        Self::quickstart_with_env(&|name| std::env::var(name).ok())
    }

    /// [`Config::quickstart`] with `env` in place of the process environment.
    pub fn quickstart_with_env(env: &dyn Fn(&str) -> Option<String>) -> Loaded {
        match Config::from_yaml_with_env(QUICKSTART_YAML, ORIGIN, env) {
            Ok(mut loaded) => {
                // A deployment whose key is unset is one of the optional OpenAI ones: drop it,
                // quietly, instead of warning about a variable the user never promised to set.
                loaded
                    .config
                    .model_list
                    .retain(|m| m.misconfigured.is_none());
                loaded.warnings.clear();
                loaded
            }
            // Unreachable while the tests pass; still, never panic at start-up.
            Err(err) => Loaded {
                config: Config::default(),
                unsupported: Vec::new(),
                typos: Vec::new(),
                warnings: vec![format!("the quickstart config did not load: {err}")],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_without_warnings() {
        let loaded = Config::quickstart_with_env(&|_| None);
        assert!(loaded.unsupported.is_empty(), "{:?}", loaded.unsupported);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let groups: Vec<&str> = loaded
            .config
            .model_list
            .iter()
            .map(|m| m.model_name.as_str())
            .collect();
        assert_eq!(groups, ["demo", "demo", "demo-embedding"]);
    }
}
