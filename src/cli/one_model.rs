//! The one-model config of LiteLLM's one-liner, `llmbus --model gpt-4o` (like `litellm --model
//! gpt-3.5-turbo`): one model group named as given, one deployment of that model. The provider
//! comes from the prefix (none means OpenAI); the key from `--api-key`, else the provider's own
//! variable (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, ...), which the provider reads as usual.
//! `provider/name` is also served under the bare `name` (an alias).

use crate::{
    config::{AliasTarget, Config, ConfigError, Loaded, Secret},
    providers::{self, openai_compat},
};

/// The config for one model. `env` stands for the process environment (tests pass their
/// own); it is only read to warn when no key is set.
pub fn single_model(
    model: &str,
    api_key: Option<&str>,
    api_base: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let model = model.trim();
    if model.is_empty() || model.chars().any(|c| c.is_control()) {
        return Err(ConfigError::ModelName {
            model: model.to_owned(),
        });
    }
    // A JSON string is a YAML string: the name goes into the document quoted.
    let name = serde_json::Value::from(model).to_string();
    let yaml =
        format!("model_list:\n  - model_name: {name}\n    litellm_params:\n      model: {name}\n");
    let mut loaded = Config::from_yaml_with_env(&yaml, "--model", env)?;
    let params = &mut loaded.config.model_list[0].litellm_params;
    params.api_key = api_key.map(Secret::new);
    params.api_base = api_base.map(str::to_string);
    if let Some((_, bare)) = model.split_once('/')
        && !bare.is_empty()
        && bare != model
    {
        loaded
            .config
            .router_settings
            .model_group_alias
            .insert(bare.to_string(), AliasTarget::Group(model.to_string()));
    }
    if api_key.is_none() {
        let vars = key_variables(model);
        if !vars.is_empty() && !vars.iter().any(|v| env(v).is_some_and(|k| !k.is_empty())) {
            loaded.warnings.push(format!(
                "no API key for {model}: set {} or pass --api-key",
                vars.join(" or ")
            ));
        }
    }
    Ok(loaded)
}

/// The environment variables a provider reads its key from; empty when it uses other
/// credentials (Bedrock, Vertex AI) or none (Ollama).
fn key_variables(model: &str) -> Vec<&'static str> {
    match crate::config::provider_prefix(model) {
        Some("anthropic") => vec![providers::anthropic::API_KEY_ENV],
        Some("gemini") => vec!["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        Some("cohere" | "cohere_chat") => vec!["COHERE_API_KEY", "CO_API_KEY"],
        Some("bedrock" | "vertex_ai" | "ollama" | "ollama_chat") => Vec::new(),
        Some(prefix) => openai_compat::lookup(prefix)
            .map(|spec| spec.api_key_env.to_vec())
            .unwrap_or_default(),
        None => openai_compat::lookup("openai")
            .map(|spec| spec.api_key_env.to_vec())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_named_as_given_with_the_bare_name_as_alias() {
        let env = |_: &str| None;
        let loaded =
            single_model("anthropic/claude-sonnet-4-5", Some("sk-ant-1"), None, &env).unwrap();
        let c = &loaded.config;
        assert_eq!(c.model_list.len(), 1);
        assert_eq!(c.model_list[0].model_name, "anthropic/claude-sonnet-4-5");
        let p = &c.model_list[0].litellm_params;
        assert_eq!(p.model, "anthropic/claude-sonnet-4-5");
        assert_eq!(p.api_key.as_ref().map(Secret::expose), Some("sk-ant-1"));
        assert_eq!(
            c.router_settings.model_group_alias["claude-sonnet-4-5"].group(),
            "anthropic/claude-sonnet-4-5"
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn a_missing_key_is_a_warning_naming_the_variable() {
        let none = |_: &str| None;
        let loaded = single_model("gpt-4o", None, None, &none).unwrap();
        assert_eq!(loaded.config.model_list[0].model_name, "gpt-4o");
        assert!(loaded.config.router_settings.model_group_alias.is_empty());
        assert!(
            loaded.warnings[0].contains("OPENAI_API_KEY"),
            "{:?}",
            loaded.warnings
        );
        let set = |name: &str| (name == "ANTHROPIC_API_KEY").then(|| "k".to_string());
        let loaded = single_model("anthropic/claude-3-5-haiku", None, None, &set).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let loaded = single_model("ollama/llama3", None, None, &none).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn names_that_need_quoting_still_load_and_empty_ones_do_not() {
        let none = |_: &str| None;
        let loaded = single_model(
            "openai/gpt-4o: mini #1",
            Some("k"),
            Some("http://x/v1"),
            &none,
        )
        .unwrap();
        assert_eq!(
            loaded.config.model_list[0].model_name,
            "openai/gpt-4o: mini #1"
        );
        assert_eq!(
            loaded.config.model_list[0]
                .litellm_params
                .api_base
                .as_deref(),
            Some("http://x/v1")
        );
        assert!(single_model(" ", None, None, &none).is_err());
    }
}
