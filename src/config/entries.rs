//! Per-deployment problems the loader can see: they mark the one deployment misconfigured
//! instead of stopping the whole config, as one broken deployment must not stop a gateway.
//!
//! Also records where each entry is written ([`ModelEntry::location`]), so that problems found
//! later (by the provider that builds the deployment) can name the file and line too.

use super::{
    Config, ModelEntry,
    locate::{KeyPath, locate},
};

/// Sets every entry's location and marks the entries that cannot work.
pub(crate) fn mark(config: &mut Config, text: &str, origin: &str) {
    let list = KeyPath::root().key("model_list");
    for (i, entry) in config.model_list.iter_mut().enumerate() {
        let model = list.index(i).key("litellm_params").key("model");
        entry.location = Some(match locate(text, &model) {
            Some((line, _)) => format!("{origin}, line {line}"),
            None => origin.to_owned(),
        });
        if let Some(problem) = problem(entry) {
            entry.misconfigure(format!("{model}: {problem}"));
        }
    }
}

/// What is wrong with the entry's shape, if anything.
fn problem(entry: &ModelEntry) -> Option<&'static str> {
    let model = entry.litellm_params.model.trim();
    if model.is_empty() {
        return Some("required key is missing (write `provider/model`, such as `openai/gpt-4o`)");
    }
    if model.contains('*')
        && !entry.model_name.contains('*')
        && entry.litellm_params.mock_response.is_none()
    {
        return Some(
            "`*` in `model` takes the text a wildcard `model_name` matched, but `model_name` has \
             no `*` (write `model_name: \"*\"` or `model_name: \"provider/*\"`)",
        );
    }
    None
}
