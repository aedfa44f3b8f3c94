//! LiteLLM's price file, `model_prices_and_context_window.json`: one object per model name
//! with prices in USD per token and the context window. llmbus reads the fields it prices with
//! and ignores the rest (batch, flex and priority tiers, per-image and per-second prices,
//! `supports_*` flags):
//!
//! | LiteLLM field                      | [`Price`] / [`ModelFacts`]  |
//! |------------------------------------|-----------------------------|
//! | `input_cost_per_token`             | `input_per_token`           |
//! | `output_cost_per_token`            | `output_per_token`          |
//! | `cache_read_input_token_cost`      | `cached_input_per_token`    |
//! | `cache_creation_input_token_cost`  | `cache_write_per_token`     |
//! | `output_cost_per_reasoning_token`  | `reasoning_per_token`       |
//! | `max_input_tokens`                 | `max_input_tokens`          |
//! | `max_output_tokens`                | `max_output_tokens`         |
//!
//! A row with neither an input nor an output price has no [`Price`] (its context window still
//! counts); a row with one of them costs 0 on the other side, as in LiteLLM. The
//! `sample_spec` row (the file's own documentation) and values of the wrong type (a string
//! where a number belongs, a negative price) are skipped, never fatal: one odd row must not
//! keep a worker from starting. A file that is not a JSON object is an error.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{ModelFacts, Price};

/// Why a price file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PriceFileError {
    /// The file could not be read.
    #[error("llmbus.price_table: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not in LiteLLM's format.
    #[error(
        "llmbus.price_table: {path} is not in LiteLLM's model_prices_and_context_window.json \
         format: {source}"
    )]
    Format {
        /// The file.
        path: String,
        /// What is wrong: the file is not a JSON object.
        source: serde_json::Error,
    },
}

/// The rows of a LiteLLM price file, by lower-case model name.
pub(super) fn parse(text: &str) -> Result<HashMap<String, ModelFacts>, serde_json::Error> {
    let all: Map<String, Value> = serde_json::from_str(text)?;
    let mut rows = HashMap::with_capacity(all.len());
    for (name, row) in &all {
        if name == "sample_spec" {
            continue;
        }
        let Some(row) = row.as_object() else {
            continue;
        };
        rows.insert(name.trim().to_ascii_lowercase(), facts(row));
    }
    Ok(rows)
}

fn facts(row: &Map<String, Value>) -> ModelFacts {
    let price = |key: &str| {
        row.get(key)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let tokens = |key: &str| {
        row.get(key).and_then(|v| {
            v.as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f > 0.0)
                        .map(|f| f as u64)
                })
                .filter(|n| *n > 0)
        })
    };
    let (input, output) = (
        price("input_cost_per_token"),
        price("output_cost_per_token"),
    );
    let (input_s, output_s) = (
        price("input_cost_per_second"),
        price("output_cost_per_second"),
    );
    let priced = [input, output, input_s, output_s]
        .iter()
        .any(Option::is_some);
    ModelFacts {
        price: priced.then(|| Price {
            input_per_token: input.unwrap_or(0.0),
            cached_input_per_token: price("cache_read_input_token_cost"),
            output_per_token: output.unwrap_or(0.0),
            cache_write_per_token: price("cache_creation_input_token_cost"),
            reasoning_per_token: price("output_cost_per_reasoning_token"),
            input_per_second: input_s,
            output_per_second: output_s,
        }),
        max_input_tokens: tokens("max_input_tokens"),
        max_output_tokens: tokens("max_output_tokens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_it_prices_with() {
        let rows = parse(
            r#"{
              "sample_spec": {"input_cost_per_token": 0.0, "max_input_tokens": "max input tokens"},
              "Claude-X": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
                "max_input_tokens": 200000, "max_output_tokens": 64000, "supports_vision": true},
              "embed": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,
                "max_input_tokens": 8191},
              "reasoner": {"input_cost_per_token": 1, "output_cost_per_token": 2,
                "output_cost_per_reasoning_token": 4e-06},
              "window-only": {"max_input_tokens": 1000, "max_output_tokens": "lots"},
              "odd": {"input_cost_per_token": "free", "output_cost_per_token": -1},
              "not-an-object": 3
            }"#,
        )
        .unwrap();
        assert!(!rows.contains_key("sample_spec"));
        assert!(!rows.contains_key("not-an-object"));
        let c = rows["claude-x"];
        let p = c.price.unwrap();
        assert_eq!(p.input_per_token, 3e-6);
        assert_eq!(p.output_per_token, 1.5e-5);
        assert_eq!(p.cached_input_per_token, Some(3e-7));
        assert_eq!(p.cache_write_per_token, Some(3.75e-6));
        assert_eq!(p.reasoning_per_token, None);
        assert_eq!(
            (c.max_input_tokens, c.max_output_tokens),
            (Some(200_000), Some(64_000))
        );
        assert_eq!(rows["embed"].price.unwrap().output_per_token, 0.0);
        let r = rows["reasoner"].price.unwrap();
        assert_eq!(
            (r.input_per_token, r.reasoning_per_token),
            (1.0, Some(4e-6))
        );
        assert_eq!(rows["window-only"].price, None);
        assert_eq!(rows["window-only"].max_input_tokens, Some(1000));
        assert_eq!(rows["window-only"].max_output_tokens, None);
        assert_eq!(rows["odd"].price, None);
    }

    #[test]
    fn a_file_that_is_not_an_object_is_an_error() {
        assert!(parse("[1, 2]").is_err());
        assert!(parse("{").is_err());
        assert!(parse("").is_err());
    }
}
