//! Request parameters a native wire format cannot carry: LiteLLM's `drop_params` rule, shared
//! by the native adapters. A parameter the provider does not take is dropped when
//! `drop_params` is set; otherwise the request is refused with a 400 that names it.

use serde_json::Value;

use super::{ErrorClass, ProviderError};
use crate::wire::openai::Extra;

/// A 400 for a request the provider cannot express.
pub fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::BadRequest, message).with_status(400)
}

/// The 400 for `param`, which `provider` does not take.
pub fn unsupported(provider: &str, param: &str) -> ProviderError {
    bad_request(format!(
        "{provider} does not support the parameter `{param}`; set `drop_params: true` to drop it"
    ))
}

/// The request's other fields (`extra`) that go on to the provider: null values and the
/// `ignored` ones are left out; an `unsupported` one is dropped with `drop_params`, else it
/// refuses the request.
pub fn pass_on<'a>(
    provider: &str,
    extra: &'a Extra,
    ignored: &[&str],
    unsupported_params: &[&str],
    drop_params: bool,
) -> Result<Vec<(&'a str, &'a Value)>, ProviderError> {
    let mut out = Vec::new();
    for (key, value) in extra {
        let key = key.as_str();
        if value.is_null() || ignored.contains(&key) {
            continue;
        }
        if unsupported_params.contains(&key) {
            if drop_params {
                continue;
            }
            return Err(unsupported(provider, key));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// `n` above 1 (several choices), which the native formats cannot ask for.
pub fn check_n(provider: &str, n: Option<u32>, drop_params: bool) -> Result<(), ProviderError> {
    if n.is_some_and(|n| n != 1) && !drop_params {
        return Err(unsupported(provider, "n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_params_refuse_or_drop_and_the_rest_pass_on() {
        let extra: Extra = serde_json::from_str(
            r#"{"logit_bias": {"1": 2}, "seed": 7, "metadata": {"a": 1}, "gone": null}"#,
        )
        .unwrap();
        let e = pass_on("x", &extra, &["metadata"], &["logit_bias"], false).unwrap_err();
        assert_eq!(e.status, Some(400));
        assert!(e.message.contains("`logit_bias`") && e.message.contains("drop_params"));
        let kept = pass_on("x", &extra, &["metadata"], &["logit_bias"], true).unwrap();
        assert_eq!(kept, vec![("seed", &serde_json::json!(7))]);
        assert!(check_n("x", Some(2), false).is_err());
        assert!(check_n("x", Some(2), true).is_ok() && check_n("x", Some(1), false).is_ok());
    }
}
