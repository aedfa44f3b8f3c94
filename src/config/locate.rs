//! Key paths (`model_list[1].litellm_params.rpm`) and finding a key's line in the YAML text.
//!
//! serde_yaml_ng reports the line of a syntax or type error itself, but the checks that run
//! after parsing (an empty `model`, an alias naming an unknown group, ...) only have the parsed
//! values, which carry no positions. [`locate`] finds the line by reading the text the way a
//! person does: by indentation. It understands block mappings and sequences (the style of every
//! LiteLLM config); inside a flow collection (`[...]`, `{...}`) it stops at the deepest key it
//! found, which is still the right line in practice.

use std::fmt;

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// The path to a value in the config, displayed as `model_list[1].litellm_params.rpm`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Step>);

impl KeyPath {
    /// The document itself.
    pub(crate) fn root() -> Self {
        Self::default()
    }

    /// This path, then mapping key `key`.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(Step::Key(key.to_owned()));
        path
    }

    /// This path, then sequence index `index`.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Step::Index(index));
        path
    }

    /// The steps before the last one, and the last one; `None` for the root.
    pub(crate) fn split_last(&self) -> Option<(&[Step], &Step)> {
        let (last, parent) = self.0.split_last()?;
        Some((parent, last))
    }

    /// From the path serde_path_to_error reports.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut out = Self::root();
        for segment in path {
            out = match segment {
                Segment::Seq { index } => out.index(*index),
                Segment::Map { key } => out.key(key),
                Segment::Enum { variant } => out.key(variant),
                Segment::Unknown => out.key("?"),
            };
        }
        out
    }

    /// From the path serde_ignored reports for an unsupported key.
    pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path;
        match path {
            Path::Root => Self::root(),
            Path::Seq { parent, index } => Self::from_ignored(parent).index(*index),
            Path::Map { parent, key } => Self::from_ignored(parent).key(key),
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => Self::from_ignored(parent),
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => f.write_str(key)?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// One line's worth of YAML structure: a `- ` sequence item marker or the text after it.
/// `  - model_name: a` gives a dash at column 2 and `model_name: a` at column 4.
struct Item<'a> {
    line: usize,
    column: usize,
    dash: bool,
    text: &'a str,
}

/// Splits the text into [`Item`]s, skipping blank lines, comments and document markers.
fn items(text: &str) -> Vec<Item<'_>> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start_matches(' ');
        let blank = trimmed.trim().is_empty() || trimmed.starts_with('#');
        if blank || trimmed.starts_with("---") || trimmed.starts_with("...") {
            continue;
        }
        let mut column = raw.len() - trimmed.len();
        let mut rest = trimmed;
        while rest == "-" || rest.starts_with("- ") || rest.starts_with("-\t") {
            out.push(Item {
                line: n + 1,
                column,
                dash: true,
                text: "-",
            });
            let after = &rest[1..];
            let content = after.trim_start();
            column += 1 + after.len() - content.len();
            rest = content;
        }
        if !rest.is_empty() {
            out.push(Item {
                line: n + 1,
                column,
                dash: false,
                text: rest,
            });
        }
    }
    out
}

/// The key of a `key: value` item, unquoted.
fn key_of(text: &str) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(rest) = text.strip_prefix(quote) {
            let end = rest.find(quote)?;
            return rest[end + 1..]
                .trim_start()
                .starts_with(':')
                .then(|| &rest[..end]);
        }
    }
    let end = text
        .find(": ")
        .or_else(|| text.ends_with(':').then(|| text.len() - 1))?;
    Some(text[..end].trim_end())
}

/// The items nested under item `at`: deeper ones, and for a key, a sequence at its own column.
fn children(items: &[Item<'_>], at: usize) -> std::ops::Range<usize> {
    let parent = &items[at];
    let end = items[at + 1..]
        .iter()
        .position(|item| {
            item.column < parent.column
                || (item.column == parent.column && (parent.dash || !item.dash))
        })
        .map_or(items.len(), |offset| at + 1 + offset);
    at + 1..end
}

/// The 1-based line and column of the value at `path`, or of its deepest ancestor that the
/// text shows. `None` when not even the first key is found (or the path is the root).
pub(crate) fn locate(text: &str, path: &KeyPath) -> Option<(usize, usize)> {
    let items = items(text);
    let mut range = 0..items.len();
    let mut found = None;
    for step in &path.0 {
        let level = items[range.clone()].iter().map(|item| item.column).min();
        let mut siblings = range.clone().filter(|&i| Some(items[i].column) == level);
        let hit = match step {
            Step::Key(key) => {
                siblings.find(|&i| !items[i].dash && key_of(items[i].text) == Some(key.as_str()))
            }
            Step::Index(index) => siblings.filter(|&i| items[i].dash).nth(*index),
        };
        let Some(at) = hit else { break };
        found = Some(at);
        range = children(&items, at);
    }
    found.map(|at| (items[at].line, items[at].column + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
model_list:
- model_name: a          # first
  litellm_params:
    model: openai/gpt-4o
    rpm: 5
-   model_name: b
    litellm_params:
      model: 'groq/llama'
      mock_response: |
        rpm: 99
      timeout: 3
router_settings:
  model_group_alias: {\"x\": \"a\"}
  fallbacks:
    - a: [b]
  \"quoted.key\": 1
";

    fn at(path: &KeyPath) -> Option<(usize, usize)> {
        locate(TEXT, path)
    }

    #[test]
    fn finds_keys_under_their_parents() {
        let list = KeyPath::root().key("model_list");
        assert_eq!(at(&list), Some((2, 1)));
        assert_eq!(at(&list.index(0)), Some((3, 1)));
        assert_eq!(at(&list.index(0).key("model_name")), Some((3, 3)));
        let p0 = list.index(0).key("litellm_params");
        assert_eq!(at(&p0.key("rpm")), Some((6, 5)));
        assert_eq!(at(&list.index(1).key("model_name")), Some((7, 5)));
        let p1 = list.index(1).key("litellm_params");
        assert_eq!(at(&p1.key("model")), Some((9, 7)));
        // `rpm: 99` inside the block scalar is not a key of litellm_params.
        assert_eq!(at(&p1.key("timeout")), Some((12, 7)));
        assert_eq!(at(&p1.key("rpm")), Some((8, 5)));
        let router = KeyPath::root().key("router_settings");
        assert_eq!(
            at(&router.key("fallbacks").index(0).key("a")),
            Some((16, 7))
        );
        // Inside a flow mapping: the deepest key found.
        assert_eq!(at(&router.key("model_group_alias").key("x")), Some((14, 3)));
        assert_eq!(at(&router.key("quoted.key")), Some((17, 3)));
        assert_eq!(at(&KeyPath::root().key("llmbus")), None);
    }

    #[test]
    fn displays_dotted() {
        let path = KeyPath::root()
            .key("model_list")
            .index(1)
            .key("litellm_params")
            .key("rpm");
        assert_eq!(path.to_string(), "model_list[1].litellm_params.rpm");
        assert_eq!(KeyPath::root().to_string(), "");
    }
}
