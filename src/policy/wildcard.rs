//! Wildcard model groups, as LiteLLM has them: a `model_name` holding `*` is a pattern, and a
//! request for any model the pattern matches goes to that group's deployments, with the
//! matched text put into the deployment's model.
//!
//! ```yaml
//! - model_name: "anthropic/*"        # anthropic/claude-x → upstream model claude-x
//!   litellm_params: {model: "anthropic/*"}
//! - model_name: "*"                  # gpt-4o → upstream model gpt-4o (on OpenAI)
//!   litellm_params: {model: "openai/*"}
//! ```
//!
//! Rules (LiteLLM's `PatternMatchRouter`, with one deliberate difference):
//! - `*` matches any text, the empty text included; everything else matches itself. An
//!   earlier `*` takes as much as it can (LiteLLM's regex is greedy).
//! - A group whose name is exactly the requested model (or an alias of one) always wins over
//!   patterns; among patterns, the most specific wins: the one with the most literal
//!   (non-`*`) characters, then the one first in the config. LiteLLM sorts by the length of
//!   its regex, which amounts to the same order for the patterns people write.
//! - The pattern must match the whole requested name. (LiteLLM anchors only the start, so
//!   `gpt-*-mini` also takes `gpt-4o-mini-2024`, dropping the `-2024`; llmbus does not.)
//! - The deployment's model gets the captured texts in place of its `*`s, in order. A model
//!   without `*` is used as it is. When the pattern captures more texts than the model has
//!   `*`s, the model is the whole requested name (LiteLLM does the same).
//!
//! This module works on the upstream model name (after the provider prefix): `openai/*` is
//! built into a deployment whose upstream model is `*`, and [`Match::upstream`] fills it in.

/// One pattern: a `model_name` with at least one `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// The literal pieces between the `*`s (one more than there are `*`s).
    pieces: Vec<String>,
}

impl Pattern {
    /// The pattern of `model_name`, or `None` when it has no `*` (an ordinary group name).
    pub fn new(model_name: &str) -> Option<Self> {
        if !model_name.contains('*') {
            return None;
        }
        Some(Self {
            text: model_name.to_owned(),
            pieces: model_name.split('*').map(str::to_owned).collect(),
        })
    }

    /// The pattern as written in the config (the model group's name).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Literal characters: the more, the more specific.
    pub fn specificity(&self) -> usize {
        self.pieces.iter().map(|p| p.chars().count()).sum()
    }

    /// The texts the `*`s matched, when the pattern matches all of `name`.
    pub fn captures(&self, name: &str) -> Option<Vec<String>> {
        let (first, rest) = self.pieces.split_first()?;
        let tail = name.strip_prefix(first.as_str())?;
        let mut out = Vec::with_capacity(rest.len());
        if capture(rest, tail, &mut out) {
            Some(out)
        } else {
            None
        }
    }
}

/// Matches `text` against `*piece0*piece1…` (each piece preceded by a `*`) and pushes what
/// each `*` took. Like LiteLLM's greedy `(.*)`, an earlier `*` takes as much as it can.
fn capture(pieces: &[String], text: &str, out: &mut Vec<String>) -> bool {
    let Some((piece, rest)) = pieces.split_first() else {
        return text.is_empty();
    };
    if rest.is_empty() {
        // The last `*`: it takes everything up to the final literal piece.
        return match text.strip_suffix(piece.as_str()) {
            Some(taken) => {
                out.push(taken.to_owned());
                true
            }
            None => false,
        };
    }
    // Every place the piece occurs (overlaps included), the last first.
    let starts: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .filter(|&i| text[i..].starts_with(piece.as_str()))
        .collect();
    for at in starts.into_iter().rev() {
        out.push(text[..at].to_owned());
        if capture(rest, &text[at + piece.len()..], out) {
            return true;
        }
        out.pop();
    }
    false
}

/// A request's model matched to a pattern group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The model group (the pattern as written).
    pub group: String,
    /// What the `*`s matched, in order.
    pub captures: Vec<String>,
    /// The requested model name.
    pub requested: String,
}

impl Match {
    /// The upstream model for a deployment whose upstream model is `template` (`*` for
    /// `openai/*`, `us.anthropic.*` for `bedrock/us.anthropic.*`, `gpt-4o` for a deployment
    /// without `*`).
    pub fn upstream(&self, template: &str) -> String {
        let stars = template.matches('*').count();
        if stars == 0 {
            return template.to_owned();
        }
        if self.captures.len() > stars {
            return self.requested.clone();
        }
        let mut out = template.to_owned();
        for c in &self.captures {
            out = out.replacen('*', c, 1);
        }
        out
    }
}

/// Every pattern group of a worker, most specific first.
#[derive(Debug, Clone, Default)]
pub struct Wildcards {
    patterns: Vec<Pattern>,
}

impl Wildcards {
    /// The pattern groups among `groups` (model group names in config order).
    pub fn new<'a>(groups: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<Pattern> = groups.into_iter().filter_map(Pattern::new).collect();
        // Stable: equally specific patterns keep their config order.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.specificity()));
        patterns.dedup();
        Self { patterns }
    }

    /// True when there is no pattern group.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns, most specific first.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(Pattern::as_str)
    }

    /// The most specific pattern group that matches `model`. Callers look for an exact group
    /// or alias first: this is only for names no group has.
    pub fn resolve(&self, model: &str) -> Option<Match> {
        self.patterns.iter().find_map(|p| {
            p.captures(model).map(|captures| Match {
                group: p.text.clone(),
                captures,
                requested: model.to_owned(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(pattern: &str, name: &str) -> Option<Vec<String>> {
        Pattern::new(pattern).unwrap().captures(name)
    }

    #[test]
    fn names_without_a_star_are_not_patterns() {
        assert_eq!(Pattern::new("gpt-4o"), None);
        assert!(Pattern::new("*").is_some());
    }

    #[test]
    fn star_matches_any_text_and_the_rest_matches_itself() {
        assert_eq!(caps("*", "gpt-4o").unwrap(), ["gpt-4o"]);
        assert_eq!(caps("*", "").unwrap(), [""]);
        assert_eq!(
            caps("anthropic/*", "anthropic/claude-x").unwrap(),
            ["claude-x"]
        );
        assert_eq!(caps("anthropic/*", "openai/gpt-4o"), None);
        assert_eq!(caps("anthropic/*", "anthropic"), None);
        assert_eq!(
            caps("fo::*::static::*", "fo::hi::static::there").unwrap(),
            ["hi", "there"]
        );
        assert_eq!(
            caps("*meta.llama3*", "hello-world-meta.llama3-70b").unwrap(),
            ["hello-world-", "-70b"]
        );
        // `.` and other regex characters are literal.
        assert_eq!(caps("a.b/*", "axb/c"), None);
    }

    #[test]
    fn the_whole_name_must_match() {
        assert_eq!(caps("gpt-*-mini", "gpt-4o-mini").unwrap(), ["4o"]);
        assert_eq!(caps("gpt-*-mini", "gpt-4o-mini-2024"), None);
        assert_eq!(caps("*-mini", "a-mini-b-mini").unwrap(), ["a-mini-b"]);
        assert_eq!(
            caps("x*y*z", "xayybz").unwrap(),
            ["ay", "b"],
            "greedy, as LiteLLM"
        );
    }

    #[test]
    fn non_ascii_names_do_not_break_matching() {
        assert_eq!(caps("é*/*", "éà/ü").unwrap(), ["à", "ü"]);
        assert_eq!(caps("*/ü", "ü/ü/ü").unwrap(), ["ü/ü"]);
    }

    #[test]
    fn the_upstream_model_gets_the_captures() {
        let w = Wildcards::new(["*"]);
        let m = w.resolve("gpt-4o").unwrap();
        assert_eq!(m.group, "*");
        assert_eq!(m.upstream("*"), "gpt-4o");
        let w = Wildcards::new(["anthropic/*"]);
        let m = w.resolve("anthropic/claude-x").unwrap();
        assert_eq!(m.upstream("*"), "claude-x");
        assert_eq!(m.upstream("claude-fixed"), "claude-fixed");
        assert_eq!(m.upstream("us.anthropic.*-v1"), "us.anthropic.claude-x-v1");
        let w = Wildcards::new(["*/*"]);
        let m = w.resolve("a/b").unwrap();
        assert_eq!(m.upstream("*"), "a/b", "more captures than stars");
        assert_eq!(m.upstream("*-*"), "a-b");
    }

    #[test]
    fn the_most_specific_pattern_wins_then_config_order() {
        let w = Wildcards::new(["*", "openai/*", "openai/gpt-4*", "groq/*", "grok/*"]);
        assert_eq!(
            w.patterns().collect::<Vec<_>>(),
            ["openai/gpt-4*", "openai/*", "groq/*", "grok/*", "*"]
        );
        assert_eq!(w.resolve("openai/gpt-4o").unwrap().group, "openai/gpt-4*");
        assert_eq!(w.resolve("openai/o3").unwrap().group, "openai/*");
        assert_eq!(w.resolve("groq/llama").unwrap().group, "groq/*");
        assert_eq!(w.resolve("mistral/x").unwrap().group, "*");
        assert!(Wildcards::new(["a", "b"]).is_empty());
        assert_eq!(Wildcards::new(["a/*"]).resolve("b/c"), None);
    }

    #[test]
    fn a_repeated_pattern_is_one_group() {
        let w = Wildcards::new(["a/*", "a/*"]);
        assert_eq!(w.patterns().count(), 1);
    }
}
