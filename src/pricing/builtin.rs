//! The built-in price table: what llmbus knows without `llmbus.price_table`.
//!
//! Each block names its source. A price file in LiteLLM's format overrides and extends it
//! ([`super::litellm`]).

use super::Price;

/// A table row in the unit price pages use: dollars per million tokens.
pub(super) const fn per_m(input: f64, cached: Option<f64>, output: f64) -> Price {
    Price {
        input_per_token: input / 1e6,
        cached_input_per_token: match cached {
            Some(c) => Some(c / 1e6),
            None => None,
        },
        output_per_token: output / 1e6,
        cache_write_per_token: None,
        reasoning_per_token: None,
        input_per_second: None,
        output_per_second: None,
    }
}

/// An Anthropic row: like [`per_m`], with cache writes (5-minute cache) at 1.25 × the input
/// price, as https://docs.anthropic.com/en/docs/about-claude/pricing lists them.
pub(super) const fn anthropic_m(input: f64, cached: Option<f64>, output: f64) -> Price {
    let mut p = per_m(input, cached, output);
    p.cache_write_per_token = Some(input * 1.25 / 1e6);
    p
}

/// The built-in table: (model name, price per million tokens), lower case.
pub(super) static TABLE: &[(&str, Price)] = &[
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
