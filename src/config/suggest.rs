//! Typos: "did you mean `num_retries`?" for a key that is not one llmbus knows but is close to
//! one that is, and the same for provider names.
//!
//! The known keys of each section come from the config structs themselves (serde's list of a
//! struct's field names), so they never drift from what the loader takes. Closeness is the
//! optimal string alignment distance (Levenshtein plus swapping two neighbours, so
//! `num_retires` is one edit from `num_retries`), compared case-insensitively.

use serde::{
    Deserialize,
    de::{self, Deserializer, Visitor},
};

use super::{
    AllowedFailsPolicy, Config, GeneralSettings, LitellmParams, LitellmSettings, LlmbusSettings,
    ModelEntry, ModelInfo, RetryPolicy, RouterSettings, RoutingStrategyArgs,
    locate::{KeyPath, Step},
};

/// The known key closest to the last key of `path`, when one is close enough to be a typo of
/// it.
pub(crate) fn key_suggestion(path: &KeyPath) -> Option<&'static str> {
    let (parent, last) = path.split_last()?;
    let Step::Key(key) = last else { return None };
    closest(key, known_keys(parent)?)
}

/// The keys the struct at `parent` takes, or `None` for a place the loader takes no struct.
fn known_keys(parent: &[Step]) -> Option<&'static [&'static str]> {
    fn key(step: &Step) -> Option<&str> {
        match step {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        }
    }
    let shape: Vec<Option<&str>> = parent.iter().map(key).collect();
    Some(match shape.as_slice() {
        [] => fields::<Config>(),
        [Some("model_list"), None] => fields::<ModelEntry>(),
        [Some("model_list"), None, Some("litellm_params")] => fields::<LitellmParams>(),
        [Some("model_list"), None, Some("model_info")] => fields::<ModelInfo>(),
        [Some("router_settings")] => fields::<RouterSettings>(),
        [Some("router_settings"), Some("retry_policy")] => fields::<RetryPolicy>(),
        [Some("router_settings"), Some("allowed_fails_policy")] => fields::<AllowedFailsPolicy>(),
        [Some("router_settings"), Some("routing_strategy_args")] => fields::<RoutingStrategyArgs>(),
        [Some("litellm_settings")] => fields::<LitellmSettings>(),
        [Some("general_settings")] => fields::<GeneralSettings>(),
        [Some("llmbus")] => fields::<LlmbusSettings>(),
        _ => return None,
    })
}

/// The candidate closest to `word` when it is close enough to be a typo: at most one edit for
/// words of up to 5 characters, two up to 10, three beyond. Exact matches are no typo.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let word_lower = word.to_lowercase();
    let len = word_lower.chars().count();
    let allowed = match len {
        0..=2 => return None,
        3..=5 => 1,
        6..=10 => 2,
        _ => 3,
    };
    if candidates.contains(&word) {
        return None;
    }
    candidates
        .iter()
        .map(|c| (distance(&word_lower, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring characters each cost one.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[n][m]
}

/// The field names of a struct that derives `Deserialize` (its serialized names, renames
/// applied): serde hands them to `deserialize_struct`, where this deserializer picks them up.
fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut names));
    names
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names taken"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(keys: &[&str]) -> KeyPath {
        let mut p = KeyPath::root();
        for k in keys {
            p = match k.parse::<usize>() {
                Ok(i) => p.index(i),
                Err(_) => p.key(k),
            };
        }
        p
    }

    #[test]
    fn field_names_come_from_the_structs() {
        assert!(fields::<RouterSettings>().contains(&"num_retries"));
        assert!(fields::<LitellmParams>().contains(&"mock_response"));
        assert!(fields::<RetryPolicy>().contains(&"RateLimitErrorRetries"));
        assert!(fields::<LlmbusSettings>().contains(&"max_in_flight"));
        assert!(fields::<Config>().contains(&"model_list"));
    }

    #[test]
    fn close_keys_get_a_suggestion() {
        let cases = [
            (
                path(&["router_settings", "num_retires"]),
                Some("num_retries"),
            ),
            (
                path(&["model_list", "0", "litellm_params", "mock_respons"]),
                Some("mock_response"),
            ),
            (
                path(&["model_list", "3", "litellm_params", "api_bse"]),
                Some("api_base"),
            ),
            (
                path(&["model_list", "0", "model_info", "max_input_token"]),
                Some("max_input_tokens"),
            ),
            (path(&["router_setting"]), Some("router_settings")),
            (path(&["Model_List"]), Some("model_list")),
            (path(&["general_settings", "master_ky"]), Some("master_key")),
            (path(&["llmbus", "nats_ur"]), Some("nats_url")),
            (
                path(&["router_settings", "retry_policy", "RateLimitErrorRetry"]),
                Some("RateLimitErrorRetries"),
            ),
        ];
        for (p, want) in cases {
            assert_eq!(key_suggestion(&p), want, "{p}");
        }
    }

    #[test]
    fn real_litellm_keys_get_no_false_suggestion() {
        for p in [
            path(&["model_list", "0", "litellm_params", "max_retries"]),
            path(&["model_list", "0", "litellm_params", "temperature"]),
            path(&["model_list", "0", "litellm_params", "region_name"]),
            path(&["model_list", "0", "litellm_params", "input_cost_per_token"]),
            path(&["model_list", "0", "litellm_params", "aws_profile_name"]),
            path(&["model_list", "0", "litellm_params", "api_type"]),
            path(&["model_list", "0", "model_info", "db_model"]),
            path(&["litellm_settings", "set_verbose"]),
            path(&["litellm_settings", "modify_params"]),
            path(&["general_settings", "database_url"]),
            path(&["environment_variables"]),
            path(&["files_settings"]),
            path(&["router_settings", "redis_host"]),
            path(&["router_settings", "num_retries"]),
            path(&["unknown_section", "num_retires"]),
        ] {
            assert_eq!(key_suggestion(&p), None, "{p}");
        }
    }

    #[test]
    fn distance_counts_swaps_as_one_edit() {
        assert_eq!(distance("num_retires", "num_retries"), 1);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(
            closest("antropic", &["anthropic", "openai"]),
            Some("anthropic")
        );
        assert_eq!(closest("xy", &["xz"]), None, "too short to guess");
        assert_eq!(closest("openai", &["openai"]), None, "exact is no typo");
    }
}
