//! The table of OpenAI-compatible providers by LiteLLM prefix: each row gives the default
//! base URL, the environment variables LiteLLM reads for the base and the key, and the
//! endpoint layout (OpenAI's or Azure's). Supporting one more such provider is one more row.

use crate::config::ConfigError;

/// The Azure OpenAI `api-version` used when neither the deployment nor `AZURE_API_VERSION`
/// names one: the latest GA version of the data-plane inference API.
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// How a provider's endpoint and key are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `POST {api_base}/chat/completions` with `Authorization: Bearer <key>`.
    OpenAi,
    /// `POST {api_base}/openai/deployments/{deployment}/chat/completions?api-version=…` with
    /// `api-key: <key>`.
    Azure,
}

/// One row of the provider table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSpec {
    /// The LiteLLM prefix, without the slash: `groq` for `groq/llama-3.1-8b-instant`.
    pub prefix: &'static str,
    /// The documented base URL; `None` when the deployment must give `api_base`.
    pub default_api_base: Option<&'static str>,
    /// Environment variables that may hold the base URL, first set one wins.
    pub api_base_env: &'static [&'static str],
    /// Environment variables that may hold the key, first set one wins (LiteLLM's name first).
    pub api_key_env: &'static [&'static str],
    /// Endpoint and key layout.
    pub flavor: Flavor,
}

const fn row(
    prefix: &'static str,
    default_api_base: Option<&'static str>,
    api_base_env: &'static [&'static str],
    api_key_env: &'static [&'static str],
) -> ProviderSpec {
    ProviderSpec {
        prefix,
        default_api_base,
        api_base_env,
        api_key_env,
        flavor: Flavor::OpenAi,
    }
}

/// The OpenAI-compatible providers llmbus knows, by LiteLLM prefix. A model name without a
/// prefix (`gpt-4o`) means `openai`, as in LiteLLM.
pub const PROVIDERS: &[ProviderSpec] = &[
    row(
        "openai",
        Some("https://api.openai.com/v1"),
        &["OPENAI_BASE_URL", "OPENAI_API_BASE"],
        &["OPENAI_API_KEY"],
    ),
    ProviderSpec {
        flavor: Flavor::Azure,
        ..row("azure", None, &["AZURE_API_BASE"], &["AZURE_API_KEY"])
    },
    row(
        "groq",
        Some("https://api.groq.com/openai/v1"),
        &["GROQ_API_BASE"],
        &["GROQ_API_KEY"],
    ),
    row(
        "together_ai",
        Some("https://api.together.xyz/v1"),
        &["TOGETHER_AI_API_BASE"],
        &["TOGETHERAI_API_KEY", "TOGETHER_API_KEY"],
    ),
    row(
        "fireworks_ai",
        Some("https://api.fireworks.ai/inference/v1"),
        &["FIREWORKS_API_BASE"],
        &["FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY"],
    ),
    row(
        "deepseek",
        Some("https://api.deepseek.com/v1"),
        &["DEEPSEEK_API_BASE"],
        &["DEEPSEEK_API_KEY"],
    ),
    row(
        "mistral",
        Some("https://api.mistral.ai/v1"),
        &["MISTRAL_API_BASE"],
        &["MISTRAL_API_KEY"],
    ),
    row(
        "xai",
        Some("https://api.x.ai/v1"),
        &["XAI_API_BASE"],
        &["XAI_API_KEY"],
    ),
    row(
        "openrouter",
        Some("https://openrouter.ai/api/v1"),
        &["OPENROUTER_API_BASE"],
        &["OPENROUTER_API_KEY", "OR_API_KEY"],
    ),
    row(
        "perplexity",
        Some("https://api.perplexity.ai"),
        &["PERPLEXITY_API_BASE"],
        &["PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"],
    ),
    row(
        "hosted_vllm",
        None,
        &["HOSTED_VLLM_API_BASE"],
        &["HOSTED_VLLM_API_KEY"],
    ),
    row(
        "lm_studio",
        Some("http://localhost:1234/v1"),
        &["LM_STUDIO_API_BASE"],
        &["LM_STUDIO_API_KEY"],
    ),
];

/// The row used for model names without a prefix (the table's first).
const OPENAI: &ProviderSpec = &PROVIDERS[0];

/// The table row of a prefix.
pub fn lookup(prefix: &str) -> Option<&'static ProviderSpec> {
    PROVIDERS.iter().find(|p| p.prefix == prefix)
}

/// Splits a LiteLLM model name into its provider and the upstream model:
/// `groq/llama-3.1-8b-instant` → (`groq`, `llama-3.1-8b-instant`),
/// `together_ai/meta-llama/Llama-3` → (`together_ai`, `meta-llama/Llama-3`),
/// `gpt-4o` → (`openai`, `gpt-4o`).
pub fn split_model(model: &str) -> Result<(&'static ProviderSpec, &str), ConfigError> {
    let model = model.trim();
    let Some((prefix, name)) = model.split_once('/') else {
        return non_empty(OPENAI, model, model);
    };
    match lookup(prefix) {
        Some(spec) => non_empty(spec, name, model),
        None => Err(crate::providers::unknown_provider(prefix, model)),
    }
}

fn non_empty<'m>(
    spec: &'static ProviderSpec,
    name: &'m str,
    model: &str,
) -> Result<(&'static ProviderSpec, &'m str), ConfigError> {
    if name.is_empty() {
        Err(ConfigError::Invalid(format!(
            "model `{model}` names no model after the provider"
        )))
    } else {
        Ok((spec, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::Url;

    #[test]
    fn prefixes_split_as_litellm_does() {
        let (spec, model) = split_model("openai/gpt-4o").unwrap();
        assert_eq!((spec.prefix, model), ("openai", "gpt-4o"));
        let (spec, model) = split_model("gpt-4o").unwrap();
        assert_eq!((spec.prefix, model), ("openai", "gpt-4o"));
        let (spec, model) = split_model("together_ai/meta-llama/Llama-3-8b").unwrap();
        assert_eq!(
            (spec.prefix, model),
            ("together_ai", "meta-llama/Llama-3-8b")
        );
        let (spec, model) = split_model("azure/my-deployment").unwrap();
        assert_eq!(
            (spec.prefix, spec.flavor, model),
            ("azure", Flavor::Azure, "my-deployment")
        );
        assert!(split_model("nosuch/model").is_err());
        assert!(split_model("groq/").is_err());
        assert!(split_model("").is_err());
    }

    #[test]
    fn table_has_documented_defaults() {
        let base = |p: &str| lookup(p).unwrap().default_api_base;
        let key = |p: &str| lookup(p).unwrap().api_key_env[0];
        assert_eq!(base("openai"), Some("https://api.openai.com/v1"));
        assert_eq!(base("groq"), Some("https://api.groq.com/openai/v1"));
        assert_eq!(
            base("fireworks_ai"),
            Some("https://api.fireworks.ai/inference/v1")
        );
        assert_eq!(base("openrouter"), Some("https://openrouter.ai/api/v1"));
        assert_eq!(base("perplexity"), Some("https://api.perplexity.ai"));
        assert_eq!(base("azure"), None);
        assert_eq!(base("hosted_vllm"), None);
        assert_eq!(key("openai"), "OPENAI_API_KEY");
        assert_eq!(key("azure"), "AZURE_API_KEY");
        assert_eq!(key("together_ai"), "TOGETHERAI_API_KEY");
        assert_eq!(key("fireworks_ai"), "FIREWORKS_AI_API_KEY");
        assert_eq!(key("perplexity"), "PERPLEXITYAI_API_KEY");
        for spec in PROVIDERS {
            assert_eq!(lookup(spec.prefix), Some(spec), "prefixes are unique");
            if let Some(base) = spec.default_api_base {
                assert!(Url::parse(base).is_ok(), "{base}");
            }
        }
    }
}
