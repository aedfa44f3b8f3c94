//! Prices of models and the cost of one request.
//!
//! A [`PriceTable`] maps upstream model names to [`ModelFacts`]: USD per token for input, cache
//! reads, cache writes, output and reasoning, and the context window (`max_input_tokens`,
//! `max_output_tokens`) that feeds the router's pre-call checks. The built-in table
//! (`builtin`, each block naming its source) is always there; `llmbus.price_table` names a file
//! in LiteLLM's `model_prices_and_context_window.json` format (`litellm`) whose rows override
//! and extend it, so an operator can keep prices current by dropping in LiteLLM's file.
//!
//! [`PriceTable::lookup`] finds a model by its upstream name (with or without a provider
//! prefix, dated snapshots falling back to their base name), [`PriceTable::price_for`] applies
//! a deployment's `model_info` overrides, and [`cost`] prices a [`Usage`]. A model no table
//! knows costs 0: [`cost_or_unpriced`] counts it in `llmbus_unpriced_requests_total{model}` and
//! warns once per model (`unpriced`).
//!
//! Simplifications, on purpose: the standard (not batch, flex or priority) tier; the
//! short-prompt tier where a provider charges more above a prompt size (Gemini 2.5 Pro above
//! 200k tokens); the 5-minute cache-write price (not the 1-hour one).

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, LazyLock},
};

use serde::{Deserialize, Serialize};

use crate::wire::openai::Usage;

mod builtin;
mod litellm;
mod unpriced;

pub use litellm::PriceFileError;
pub use unpriced::cost_or_unpriced;

/// What a model costs, in US dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Per prompt token not read from a cache.
    pub input_per_token: f64,
    /// Per prompt token read from the provider's cache (LiteLLM's
    /// `cache_read_input_token_cost`); `None` charges cached tokens as plain input.
    pub cached_input_per_token: Option<f64>,
    /// Per completion token (reasoning tokens too, unless `reasoning_per_token` is set).
    pub output_per_token: f64,
    /// Per prompt token written to the provider's cache (Anthropic's and Bedrock's
    /// `cache_creation_input_tokens`; LiteLLM's `cache_creation_input_token_cost`); `None`
    /// charges them as plain input.
    pub cache_write_per_token: Option<f64>,
    /// Per reasoning token (LiteLLM's `output_cost_per_reasoning_token`), for the few models
    /// that price reasoning apart; `None` charges reasoning tokens as output.
    pub reasoning_per_token: Option<f64>,
    /// Per second of the upstream call, for the input side (LiteLLM's
    /// `input_cost_per_second`: SageMaker and other endpoints billed by time).
    #[serde(default)]
    pub input_per_second: Option<f64>,
    /// Per second of the upstream call, for the output side (`output_cost_per_second`).
    #[serde(default)]
    pub output_per_second: Option<f64>,
}

/// A deployment's own prices, each replacing the table's for its side: LiteLLM's custom
/// pricing keys, from `model_info` or else `litellm_params` (see [`PriceTable::price_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PriceOverrides {
    /// `input_cost_per_token`.
    pub input_per_token: Option<f64>,
    /// `output_cost_per_token`.
    pub output_per_token: Option<f64>,
    /// `input_cost_per_second`.
    pub input_per_second: Option<f64>,
    /// `output_cost_per_second`.
    pub output_per_second: Option<f64>,
}

impl PriceOverrides {
    /// Each field from `first` when it sets it, else from `second`.
    pub fn or(self, second: PriceOverrides) -> PriceOverrides {
        PriceOverrides {
            input_per_token: self.input_per_token.or(second.input_per_token),
            output_per_token: self.output_per_token.or(second.output_per_token),
            input_per_second: self.input_per_second.or(second.input_per_second),
            output_per_second: self.output_per_second.or(second.output_per_second),
        }
    }

    /// Without the negative and non-finite values (ignored).
    fn valid(self) -> PriceOverrides {
        let v = |p: Option<f64>| p.filter(|v| v.is_finite() && *v >= 0.0);
        PriceOverrides {
            input_per_token: v(self.input_per_token),
            output_per_token: v(self.output_per_token),
            input_per_second: v(self.input_per_second),
            output_per_second: v(self.output_per_second),
        }
    }

    fn is_empty(&self) -> bool {
        *self == PriceOverrides::default()
    }
}

/// What a price table knows of one model.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelFacts {
    /// Its price, when the table has one.
    pub price: Option<Price>,
    /// The context window: the most prompt tokens it takes.
    pub max_input_tokens: Option<u64>,
    /// The most tokens it generates in one answer.
    pub max_output_tokens: Option<u64>,
}

/// Model names (lower case) to what is known of them: the built-in table, optionally
/// overridden and extended by a LiteLLM price file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PriceTable {
    rows: Arc<HashMap<String, ModelFacts>>,
    /// Rows that came from a price file.
    from_file: usize,
}

static BUILTIN: LazyLock<PriceTable> = LazyLock::new(|| PriceTable {
    rows: Arc::new(
        builtin::TABLE
            .iter()
            .map(|(name, price)| {
                (
                    name.to_string(),
                    ModelFacts {
                        price: Some(*price),
                        ..ModelFacts::default()
                    },
                )
            })
            .collect(),
    ),
    from_file: 0,
});

impl Default for PriceTable {
    fn default() -> Self {
        Self::builtin()
    }
}

impl PriceTable {
    /// The built-in table.
    pub fn builtin() -> Self {
        BUILTIN.clone()
    }

    /// The built-in table overridden and extended by the LiteLLM price file at `path`.
    pub fn load(path: &Path) -> Result<Self, PriceFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::builtin()
            .with_litellm_json(&text)
            .map_err(|source| PriceFileError::Format {
                path: path.display().to_string(),
                source,
            })
    }

    /// This table with the rows of `text`, LiteLLM's `model_prices_and_context_window.json`
    /// format, laid over it: a row of the file replaces the row of the same name. The error
    /// says what is wrong with the text (it is not a JSON object).
    pub fn with_litellm_json(self, text: &str) -> Result<Self, serde_json::Error> {
        let file = litellm::parse(text)?;
        let from_file = file.len();
        let mut rows = Arc::unwrap_or_clone(self.rows);
        rows.extend(file);
        Ok(Self {
            rows: Arc::new(rows),
            from_file,
        })
    }

    /// Models the table knows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the table knows no model.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows that came from a price file.
    pub fn from_file(&self) -> usize {
        self.from_file
    }

    /// The price of `model`, or `None` when the table does not know it.
    ///
    /// `model` is the upstream model name as a deployment's `litellm_params.model` has it.
    /// Matching is case-insensitive and tries, in order: the whole name
    /// (`groq/llama-3.3-70b-versatile`); the name without its provider prefix (`openai/gpt-4o`
    /// → `gpt-4o`); the last path segment. Each of these also falls back from a dated snapshot
    /// to its base name (`gpt-4o-2024-08-06` → `gpt-4o`, `claude-sonnet-4-5-20250929` →
    /// `claude-sonnet-4-5`), unless the dated snapshot has a row of its own because it is
    /// priced differently (`gpt-4o-2024-05-13`).
    pub fn lookup(&self, model: &str) -> Option<Price> {
        self.find(model, |f| f.price)
    }

    /// The context window of `model` (the same matching as [`PriceTable::lookup`]).
    pub fn max_input_tokens(&self, model: &str) -> Option<u64> {
        self.find(model, |f| f.max_input_tokens)
    }

    /// The most tokens `model` generates in one answer (the same matching as
    /// [`PriceTable::lookup`]).
    pub fn max_output_tokens(&self, model: &str) -> Option<u64> {
        self.find(model, |f| f.max_output_tokens)
    }

    /// The first row along `model`'s candidate names that has `what`.
    fn find<T>(&self, model: &str, what: impl Fn(&ModelFacts) -> Option<T>) -> Option<T> {
        let model = model.trim().to_ascii_lowercase();
        candidates(&model).into_iter().find_map(|name| {
            let mut name = name.as_str();
            loop {
                if let Some(found) = self.rows.get(name).and_then(&what) {
                    return Some(found);
                }
                name = strip_date(name)?;
            }
        })
    }

    /// The price of a deployment's model with `model_info` overrides applied: the input and
    /// output price per token ([`PriceTable::price_with`] for the per-second ones too).
    pub fn price_for(
        &self,
        model: &str,
        input_override: Option<f64>,
        output_override: Option<f64>,
    ) -> Option<Price> {
        self.price_with(
            model,
            PriceOverrides {
                input_per_token: input_override,
                output_per_token: output_override,
                ..PriceOverrides::default()
            },
        )
    }

    /// The price of a deployment's model with its own prices applied, side by side.
    ///
    /// An override replaces the table's price for its side (input or output). A per-token
    /// override wins over a per-second one of the same side; a per-second override makes its
    /// side cost nothing per token. When the input price is overridden, cached tokens and
    /// cache writes are charged at it too (the table's cache prices belong to another input
    /// price); when the output price is, reasoning tokens are. With an override and no table
    /// row, the side not overridden costs 0, as in LiteLLM. A negative or non-finite override
    /// is ignored.
    pub fn price_with(&self, model: &str, overrides: PriceOverrides) -> Option<Price> {
        let o = overrides.valid();
        let table = self.lookup(model);
        if o.is_empty() {
            return table;
        }
        let input_set = o.input_per_token.is_some() || o.input_per_second.is_some();
        let output_set = o.output_per_token.is_some() || o.output_per_second.is_some();
        let side =
            |token: Option<f64>, second: Option<f64>, table: Option<f64>| match (token, second) {
                (Some(t), _) => (t, None),
                (None, Some(s)) => (0.0, Some(s)),
                (None, None) => (table.unwrap_or(0.0), None),
            };
        let (input_per_token, input_per_second) = side(
            o.input_per_token,
            o.input_per_second,
            table.map(|p| p.input_per_token),
        );
        let (output_per_token, output_per_second) = side(
            o.output_per_token,
            o.output_per_second,
            table.map(|p| p.output_per_token),
        );
        let keep = |set: bool, f: fn(&Price) -> Option<f64>| match set {
            true => None,
            false => table.as_ref().and_then(f),
        };
        Some(Price {
            input_per_token,
            cached_input_per_token: keep(input_set, |p| p.cached_input_per_token),
            output_per_token,
            cache_write_per_token: keep(input_set, |p| p.cache_write_per_token),
            reasoning_per_token: keep(output_set, |p| p.reasoning_per_token),
            input_per_second: input_per_second.or(keep(input_set, |p| p.input_per_second)),
            output_per_second: output_per_second.or(keep(output_set, |p| p.output_per_second)),
        })
    }
}

/// The built-in price of `model` ([`PriceTable::lookup`] on the built-in table).
pub fn lookup(model: &str) -> Option<Price> {
    BUILTIN.lookup(model)
}

/// [`PriceTable::price_with`] on the built-in table.
pub fn price_with(model: &str, overrides: PriceOverrides) -> Option<Price> {
    BUILTIN.price_with(model, overrides)
}

/// [`PriceTable::price_for`] on the built-in table.
pub fn price_for(
    model: &str,
    input_override: Option<f64>,
    output_override: Option<f64>,
) -> Option<Price> {
    BUILTIN.price_for(model, input_override, output_override)
}

/// The cost in US dollars of one upstream call: its usage at the per-token prices
/// ([`cost`]) plus its duration, `upstream`, at the per-second prices (LiteLLM's
/// `input_cost_per_second` / `output_cost_per_second`).
pub fn call_cost(price: &Price, usage: &Usage, upstream: std::time::Duration) -> f64 {
    let secs = upstream.as_secs_f64();
    cost(price, usage)
        + price.input_per_second.unwrap_or(0.0) * secs
        + price.output_per_second.unwrap_or(0.0) * secs
}

/// The cost in US dollars of one request's usage at the per-token prices.
///
/// The prompt splits into tokens read from a cache (`prompt_tokens_details.cached_tokens`),
/// tokens written to one (`cache_creation_input_tokens`, Anthropic and Bedrock) and the rest,
/// each at its price (the input price where the table has none); the completion into reasoning
/// tokens (`completion_tokens_details.reasoning_tokens`, at the reasoning price where there is
/// one) and the rest at the output price. Reasoning tokens are part of `completion_tokens`, so
/// they are never counted twice; no part exceeds the whole.
pub fn cost(price: &Price, usage: &Usage) -> f64 {
    let cached = usage.cached_tokens().min(usage.prompt_tokens);
    let written = usage
        .extra
        .get("cache_creation_input_tokens")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
        .min(usage.prompt_tokens - cached);
    let plain = usage.prompt_tokens - cached - written;
    let reasoning = usage.reasoning_tokens().min(usage.completion_tokens);
    let text = usage.completion_tokens - reasoning;
    let cached_price = price
        .cached_input_per_token
        .unwrap_or(price.input_per_token);
    let write_price = price.cache_write_per_token.unwrap_or(price.input_per_token);
    let reasoning_price = price.reasoning_per_token.unwrap_or(price.output_per_token);
    plain as f64 * price.input_per_token
        + cached as f64 * cached_price
        + written as f64 * write_price
        + text as f64 * price.output_per_token
        + reasoning as f64 * reasoning_price
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
    fn per_second_prices_charge_the_call_time() {
        use std::time::Duration;
        let o = PriceOverrides {
            input_per_second: Some(0.5),
            ..PriceOverrides::default()
        };
        // A per-second input price replaces the table's input side, keeps its output side.
        let p = price_with("gpt-4o-mini", o).unwrap();
        let table = lookup("gpt-4o-mini").unwrap();
        assert_eq!((p.input_per_token, p.cached_input_per_token), (0.0, None));
        assert_eq!(p.output_per_token, table.output_per_token);
        let u = Usage::new(1_000, 1_000);
        let c = call_cost(&p, &u, Duration::from_millis(1_500));
        assert!(close(c, 0.75 + 1_000.0 * table.output_per_token), "{c}");
        // A per-token price of the same side wins over the per-second one.
        let p = price_with(
            "nope",
            PriceOverrides {
                input_per_token: Some(1e-6),
                output_per_second: Some(0.25),
                ..o
            },
        )
        .unwrap();
        assert_eq!((p.input_per_token, p.input_per_second), (1e-6, None));
        assert_eq!((p.output_per_token, p.output_per_second), (0.0, Some(0.25)));
        assert!(close(
            call_cost(&p, &u, Duration::from_secs(2)),
            0.001 + 0.5
        ));
        // Without per-second prices, the time changes nothing.
        assert_eq!(
            call_cost(&table, &u, Duration::from_secs(9)),
            cost(&table, &u)
        );
    }

    #[test]
    fn overrides_merge_field_by_field_the_first_winning() {
        let info = PriceOverrides {
            input_per_token: Some(1.0),
            ..PriceOverrides::default()
        };
        let params = PriceOverrides {
            input_per_token: Some(9.0),
            output_per_token: Some(2.0),
            ..PriceOverrides::default()
        };
        let merged = info.or(params);
        assert_eq!(
            (merged.input_per_token, merged.output_per_token),
            (Some(1.0), Some(2.0))
        );
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
        for (name, p) in builtin::TABLE {
            assert_eq!(*name, name.to_ascii_lowercase());
            assert!(
                p.input_per_token >= 0.0 && p.output_per_token >= 0.0,
                "{name}"
            );
            if let Some(c) = p.cached_input_per_token {
                assert!(c <= p.input_per_token, "{name}: cached above input");
            }
            assert_eq!(
                builtin::TABLE.iter().filter(|(n, _)| n == name).count(),
                1,
                "{name} is listed twice"
            );
            assert_eq!(lookup(name), Some(*p));
        }
    }
}
