//! Prices of the main models and the cost of one request.
//!
//! A built-in table gives USD per token for input, cached input and output; [`lookup`] finds a
//! model by its upstream name (with or without a provider prefix, dated snapshots falling back to
//! their base name), [`price_for`] applies a deployment's `model_info` overrides, and [`cost`]
//! prices a [`Usage`]. Prices change: each block names its source, and an operator can always
//! override a price in `model_info` (`input_cost_per_token`, `output_cost_per_token`).
//!
//! Simplifications, on purpose: the standard (not batch, flex or priority) tier; the short-prompt
//! tier where a provider charges more above a prompt size (Gemini 2.5 Pro above 200k tokens);
//! prompt-cache *writes* (Anthropic) priced as plain input.

use serde::{Deserialize, Serialize};

use crate::wire::openai::Usage;

/// What a model costs, in US dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Per prompt token not read from a cache.
    pub input_per_token: f64,
    /// Per prompt token read from the provider's cache; `None` when the table has no such price
    /// (cached tokens are then charged as plain input).
    pub cached_input_per_token: Option<f64>,
    /// Per completion token, reasoning tokens included.
    pub output_per_token: f64,
    /// Per prompt token written to the provider's cache (Anthropic's and Bedrock's
    /// `cache_creation_input_tokens`); `None` charges them as plain input.
    pub cache_write_per_token: Option<f64>,
}

/// A table row in the unit price pages use: dollars per million tokens.
const fn per_m(input: f64, cached: Option<f64>, output: f64) -> Price {
    Price {
        input_per_token: input / 1e6,
        cached_input_per_token: match cached {
            Some(c) => Some(c / 1e6),
            None => None,
        },
        output_per_token: output / 1e6,
        cache_write_per_token: None,
    }
}

/// An Anthropic row: like [`per_m`], with cache writes (5-minute cache) at 1.25 × the input
/// price, as https://docs.anthropic.com/en/docs/about-claude/pricing lists them.
const fn anthropic_m(input: f64, cached: Option<f64>, output: f64) -> Price {
    let mut p = per_m(input, cached, output);
    p.cache_write_per_token = Some(input * 1.25 / 1e6);
    p
}

/// The built-in table: (model name, price per million tokens), lower case.
static TABLE: &[(&str, Price)] = &[
    // OpenAI. Source: LiteLLM's model_prices_and_context_window.json (BerriAI/litellm, commit
    // 00035b69), which follows https://platform.openai.com/docs/pricing; standard tier.
    ("gpt-4o", per_m(2.50, Some(1.25), 10.00)),
    ("gpt-4o-2024-05-13", per_m(5.00, None, 15.00)),
    ("gpt-4o-mini", per_m(0.15, Some(0.075), 0.60)),
    ("gpt-4.1", per_m(2.00, Some(0.50), 8.00)),
    // OpenAI embeddings (https://platform.openai.com/docs/pricing, "Embeddings"): input only.
    ("text-embedding-3-small", per_m(0.02, None, 0.0)),
    ("text-embedding-3-large", per_m(0.13, None, 0.0)),
    ("text-embedding-ada-002", per_m(0.10, None, 0.0)),
    ("gpt-4.1-mini", per_m(0.40, Some(0.10), 1.60)),
    ("gpt-4.1-nano", per_m(0.10, Some(0.025), 0.40)),
    ("gpt-5", per_m(1.25, Some(0.125), 10.00)),
    ("gpt-5-mini", per_m(0.25, Some(0.025), 2.00)),
    ("gpt-5-nano", per_m(0.05, Some(0.005), 0.40)),
    ("gpt-5-chat", per_m(1.25, Some(0.125), 10.00)),
    ("gpt-5.1", per_m(1.25, Some(0.125), 10.00)),
    ("gpt-5.2", per_m(1.75, Some(0.175), 14.00)),
    ("gpt-4-turbo", per_m(10.00, None, 30.00)),
    ("gpt-4", per_m(30.00, None, 60.00)),
    ("gpt-3.5-turbo", per_m(0.50, None, 1.50)),
    // OpenAI reasoning models. Source: https://platform.openai.com/docs/pricing (o3 after its
    // June 2025 price cut), cross-checked with public price summaries of that page.
    ("o3", per_m(2.00, Some(0.50), 8.00)),
    ("o3-mini", per_m(1.10, Some(0.55), 4.40)),
    ("o4-mini", per_m(1.10, Some(0.275), 4.40)),
    // Anthropic. Source: https://docs.anthropic.com/en/docs/about-claude/pricing ("Cache hits
    // & refreshes" is the cached price) and https://platform.claude.com/docs/en/about-claude/pricing
    // for Opus 4.5 and later; Haiku 4.5 from its model overview page ($1 / $5, cache hits at
    // 0.1x as for every Claude model).
    ("claude-opus-4-7", anthropic_m(5.00, Some(0.50), 25.00)),
    ("claude-opus-4-6", anthropic_m(5.00, Some(0.50), 25.00)),
    ("claude-opus-4-5", anthropic_m(5.00, Some(0.50), 25.00)),
    ("claude-opus-4-1", anthropic_m(15.00, Some(1.50), 75.00)),
    ("claude-opus-4", anthropic_m(15.00, Some(1.50), 75.00)),
    ("claude-opus-4-0", anthropic_m(15.00, Some(1.50), 75.00)),
    ("claude-sonnet-4-5", anthropic_m(3.00, Some(0.30), 15.00)),
    ("claude-sonnet-4", anthropic_m(3.00, Some(0.30), 15.00)),
    ("claude-sonnet-4-0", anthropic_m(3.00, Some(0.30), 15.00)),
    ("claude-3-7-sonnet", anthropic_m(3.00, Some(0.30), 15.00)),
    ("claude-3-5-sonnet", anthropic_m(3.00, Some(0.30), 15.00)),
    ("claude-haiku-4-5", anthropic_m(1.00, Some(0.10), 5.00)),
    ("claude-3-5-haiku", anthropic_m(0.80, Some(0.08), 4.00)),
    ("claude-3-haiku", anthropic_m(0.25, Some(0.03), 1.25)),
    // Google Gemini (Gemini Developer API, paid tier, prompts up to 200k tokens). Source:
    // LiteLLM's table (commit above), entries citing https://ai.google.dev/gemini-api/docs/pricing.
    ("gemini-2.5-pro", per_m(1.25, Some(0.125), 10.00)),
    ("gemini-2.5-flash", per_m(0.30, Some(0.03), 2.50)),
    ("gemini-2.5-flash-lite", per_m(0.10, Some(0.01), 0.40)),
    ("gemini-2.0-flash", per_m(0.10, Some(0.025), 0.40)),
    ("gemini-2.0-flash-lite", per_m(0.075, Some(0.01875), 0.30)),
    ("gemini-3-pro-preview", per_m(2.00, Some(0.20), 12.00)),
    ("gemini-3-flash-preview", per_m(0.50, Some(0.05), 3.00)),
    // Groq (provider-prefixed: the same open model costs differently elsewhere). Source:
    // LiteLLM's table (commit above), following https://groq.com/pricing.
    ("groq/llama-3.1-8b-instant", per_m(0.05, None, 0.08)),
    ("groq/llama-3.3-70b-versatile", per_m(0.59, None, 0.79)),
    (
        "groq/meta-llama/llama-4-scout-17b-16e-instruct",
        per_m(0.11, None, 0.34),
    ),
    (
        "groq/meta-llama/llama-4-maverick-17b-128e-instruct",
        per_m(0.20, None, 0.60),
    ),
    ("groq/openai/gpt-oss-120b", per_m(0.15, Some(0.075), 0.60)),
    ("groq/openai/gpt-oss-20b", per_m(0.075, Some(0.0375), 0.30)),
    ("groq/qwen/qwen3-32b", per_m(0.29, None, 0.59)),
    // DeepSeek. Source: https://api-docs.deepseek.com/quick_start/pricing-details-usd
    // ("input price (cache hit)" is the cached price).
    ("deepseek-chat", per_m(0.27, Some(0.07), 1.10)),
    ("deepseek-reasoner", per_m(0.55, Some(0.14), 2.19)),
    // Mistral: dated model ids only, since the `-latest` aliases move between versions with
    // different prices. Source: Mistral's pricing as listed by API gateways that track it
    // (https://www.lava.so/docs/gateway/providers/mistral); verify before billing on it.
    ("mistral-large-2411", per_m(2.00, None, 6.00)),
    ("mistral-large-2407", per_m(2.00, None, 6.00)),
];

/// The built-in price of `model`, or `None` when the table does not know it.
///
/// `model` is the upstream model name as a deployment's `litellm_params.model` has it. Matching
/// is case-insensitive and tries, in order: the whole name (`groq/llama-3.3-70b-versatile`);
/// the name without its provider prefix (`openai/gpt-4o` → `gpt-4o`); the last path segment.
/// Each of these also falls back from a dated snapshot to its base name (`gpt-4o-2024-08-06` →
/// `gpt-4o`, `claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`), unless the dated snapshot has
/// a row of its own because it is priced differently (`gpt-4o-2024-05-13`).
pub fn lookup(model: &str) -> Option<Price> {
    let model = model.trim().to_ascii_lowercase();
    candidates(&model).into_iter().find_map(|name| {
        let mut name = name.as_str();
        loop {
            if let Some(price) = exact(name) {
                return Some(price);
            }
            name = strip_date(name)?;
        }
    })
}

/// The price of a deployment's model with `model_info` overrides applied.
///
/// An override replaces the table's price. When the input price is overridden, cached tokens
/// are charged at it too (the table's cached price belongs to another input price). With an
/// override and no table row, the side not overridden costs 0, as in LiteLLM. A negative or
/// non-finite override is ignored.
pub fn price_for(
    model: &str,
    input_override: Option<f64>,
    output_override: Option<f64>,
) -> Option<Price> {
    let valid = |p: Option<f64>| p.filter(|v| v.is_finite() && *v >= 0.0);
    let (input, output) = (valid(input_override), valid(output_override));
    let table = lookup(model);
    if input.is_none() && output.is_none() {
        return table;
    }
    Some(Price {
        input_per_token: input.or(table.map(|p| p.input_per_token)).unwrap_or(0.0),
        cached_input_per_token: match input {
            Some(_) => None,
            None => table.and_then(|p| p.cached_input_per_token),
        },
        output_per_token: output.or(table.map(|p| p.output_per_token)).unwrap_or(0.0),
        cache_write_per_token: match input {
            Some(_) => None,
            None => table.and_then(|p| p.cache_write_per_token),
        },
    })
}

/// The cost in US dollars of one request's usage.
///
/// Prompt tokens read from a cache (`prompt_tokens_details.cached_tokens`, at most
/// `prompt_tokens`) are charged at the cached price when the price has one; the rest of the
/// prompt at the input price. Reasoning tokens are already part of `completion_tokens`, so
/// they are not added again.
pub fn cost(price: &Price, usage: &Usage) -> f64 {
    let cached = usage.cached_tokens().min(usage.prompt_tokens);
    let written = usage
        .extra
        .get("cache_creation_input_tokens")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
        .min(usage.prompt_tokens - cached);
    let plain = usage.prompt_tokens - cached - written;
    let cached_price = price
        .cached_input_per_token
        .unwrap_or(price.input_per_token);
    let write_price = price.cache_write_per_token.unwrap_or(price.input_per_token);
    plain as f64 * price.input_per_token
        + cached as f64 * cached_price
        + written as f64 * write_price
        + usage.completion_tokens as f64 * price.output_per_token
}

fn exact(name: &str) -> Option<Price> {
    TABLE
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, price)| *price)
}

/// The names to try for `model`: whole, without the first path segment, last segment.
fn candidates(model: &str) -> Vec<String> {
    let mut out = vec![model.to_string()];
    if let Some((_, rest)) = model.split_once('/') {
        out.push(rest.to_string());
    }
    if let Some((_, last)) = model.rsplit_once('/') {
        out.push(last.to_string());
    }
    out.dedup();
    out
}

/// `name` without a trailing date: `-YYYY-MM-DD`, `-YYYYMMDD`, `@YYYYMMDD` or `-MMDD`.
fn strip_date(name: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // -YYYY-MM-DD
    if name.len() > 11 {
        let (base, tail) = name.split_at(name.len() - 11);
        let t = tail.as_bytes();
        if t[0] == b'-'
            && t[5] == b'-'
            && t[8] == b'-'
            && digits(&tail[1..5])
            && digits(&tail[6..8])
            && digits(&tail[9..11])
        {
            return Some(base);
        }
    }
    let (base, tail) = name.rsplit_once(['-', '@'])?;
    if !base.is_empty() && digits(tail) && (tail.len() == 8 || tail.len() == 4) {
        return Some(base);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::openai::{CompletionTokensDetails, PromptTokensDetails};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn finds_models_with_or_without_a_provider_prefix() {
        let p = lookup("gpt-4o").unwrap();
        assert!(close(p.input_per_token, 2.5e-6));
        assert!(close(p.output_per_token, 1e-5));
        assert_eq!(lookup("openai/gpt-4o"), Some(p));
        assert_eq!(lookup("  OpenAI/GPT-4o "), Some(p));
        assert_eq!(lookup("azure/gpt-4o"), Some(p));
        assert_eq!(
            lookup("anthropic/claude-sonnet-4-5"),
            lookup("claude-sonnet-4-5")
        );
        assert_eq!(
            lookup("gemini/gemini-2.5-flash"),
            lookup("gemini-2.5-flash")
        );
        assert!(lookup("deepseek/deepseek-chat").is_some());
        assert!(lookup("groq/llama-3.3-70b-versatile").is_some());
        assert!(lookup("groq/meta-llama/llama-4-scout-17b-16e-instruct").is_some());
    }

    #[test]
    fn dated_snapshots_fall_back_to_the_base_name() {
        assert_eq!(lookup("gpt-4o-2024-08-06"), lookup("gpt-4o"));
        assert_eq!(
            lookup("openai/gpt-4.1-mini-2025-04-14"),
            lookup("gpt-4.1-mini")
        );
        assert_eq!(
            lookup("anthropic/claude-sonnet-4-5-20250929"),
            lookup("claude-sonnet-4-5")
        );
        assert_eq!(
            lookup("vertex_ai/claude-opus-4-1@20250805"),
            lookup("claude-opus-4-1")
        );
        assert_eq!(lookup("gpt-3.5-turbo-0125"), lookup("gpt-3.5-turbo"));
        // A snapshot with a price of its own keeps it.
        let old = lookup("gpt-4o-2024-05-13").unwrap();
        assert!(close(old.input_per_token, 5e-6));
    }

    #[test]
    fn unknown_models_have_no_price() {
        assert_eq!(lookup("my-local-llama"), None);
        assert_eq!(lookup(""), None);
        assert_eq!(lookup("/"), None);
        assert_eq!(lookup("-2024-01-01"), None);
        assert_eq!(lookup("ollama/llama3.3-70b"), None);
        // An open model is priced per provider: not from Groq's row elsewhere.
        assert_eq!(lookup("together_ai/llama-3.3-70b-versatile"), None);
    }

    #[test]
    fn cost_of_a_plain_request() {
        // gpt-4o-mini: 1,000 prompt tokens at $0.15/M + 500 completion tokens at $0.60/M
        // = $0.00015 + $0.0003 = $0.00045.
        let p = lookup("gpt-4o-mini").unwrap();
        assert!(close(cost(&p, &Usage::new(1000, 500)), 0.00045));
    }

    #[test]
    fn cached_prompt_tokens_cost_the_cached_price() {
        // gpt-4.1: 10,000 prompt tokens of which 8,000 cached, 1,000 completion tokens:
        // 2,000 x $2/M + 8,000 x $0.50/M + 1,000 x $8/M = $0.004 + $0.004 + $0.008 = $0.016.
        let p = lookup("gpt-4.1").unwrap();
        let mut u = Usage::new(10_000, 1_000);
        u.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(8_000),
            ..Default::default()
        });
        assert!(close(cost(&p, &u), 0.016));
        // Without a cached price, cached tokens cost the input price.
        let plain = Price {
            cached_input_per_token: None,
            ..p
        };
        assert!(close(cost(&plain, &u), 0.028));
        // A cached count above the prompt count is capped, never negative.
        u.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(50_000),
            ..Default::default()
        });
        assert!(close(cost(&p, &u), 10_000.0 * 0.5e-6 + 0.008));
    }

    #[test]
    fn anthropic_cache_writes_cost_a_quarter_more_than_input() {
        // claude-sonnet-4-5: 1,000 plain + 2,000 cache reads + 4,000 cache writes in, 100 out
        // = 1,000 x $3/M + 2,000 x $0.30/M + 4,000 x $3.75/M + 100 x $15/M
        // = $0.003 + $0.0006 + $0.015 + $0.0015 = $0.0201.
        let p = lookup("claude-sonnet-4-5").unwrap();
        let mut u = Usage::new(7_000, 100);
        u.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(2_000),
            ..Default::default()
        });
        u.extra.insert(
            "cache_creation_input_tokens".into(),
            serde_json::json!(4_000),
        );
        assert!(close(cost(&p, &u), 0.0201), "{}", cost(&p, &u));
        // Other providers' rows charge writes as input.
        assert_eq!(lookup("gpt-4o").unwrap().cache_write_per_token, None);
    }

    #[test]
    fn reasoning_tokens_are_not_counted_twice() {
        // o4-mini: 100 prompt + 2,000 completion tokens (1,500 of them reasoning)
        // = 100 x $1.10/M + 2,000 x $4.40/M = $0.00011 + $0.0088 = $0.00891.
        let p = lookup("o4-mini").unwrap();
        let mut u = Usage::new(100, 2_000);
        u.completion_tokens_details = Some(CompletionTokensDetails {
            reasoning_tokens: Some(1_500),
            ..Default::default()
        });
        assert!(close(cost(&p, &u), 0.00891));
    }

    #[test]
    fn overrides_replace_table_prices() {
        let table = lookup("claude-haiku-4-5").unwrap();
        assert_eq!(price_for("claude-haiku-4-5", None, None), Some(table));

        let p = price_for("claude-haiku-4-5", None, Some(9e-6)).unwrap();
        assert_eq!(p.input_per_token, table.input_per_token);
        assert_eq!(p.cached_input_per_token, table.cached_input_per_token);
        assert_eq!(p.output_per_token, 9e-6);

        let p = price_for("claude-haiku-4-5", Some(2e-6), None).unwrap();
        assert_eq!(p.input_per_token, 2e-6);
        assert_eq!(p.cached_input_per_token, None);
        assert_eq!(p.output_per_token, table.output_per_token);
    }

    #[test]
    fn overrides_price_unknown_models() {
        let p = price_for("my-vllm-model", Some(1e-7), Some(2e-7)).unwrap();
        assert!(close(cost(&p, &Usage::new(1_000_000, 1_000_000)), 0.3));
        let p = price_for("my-vllm-model", Some(1e-7), None).unwrap();
        assert_eq!(p.output_per_token, 0.0);
        assert_eq!(price_for("my-vllm-model", None, None), None);
    }

    #[test]
    fn bad_overrides_are_ignored() {
        assert_eq!(
            price_for("gpt-4o", Some(f64::NAN), Some(-1.0)),
            lookup("gpt-4o")
        );
        assert_eq!(price_for("nope", Some(f64::INFINITY), None), None);
    }

    #[test]
    fn every_row_is_lower_case_and_sane() {
        for (name, p) in TABLE {
            assert_eq!(*name, name.to_ascii_lowercase());
            assert!(
                p.input_per_token >= 0.0 && p.output_per_token >= 0.0,
                "{name}"
            );
            if let Some(c) = p.cached_input_per_token {
                assert!(c <= p.input_per_token, "{name}: cached above input");
            }
            assert_eq!(exact(name), Some(*p), "{name} is listed twice");
        }
    }
}
