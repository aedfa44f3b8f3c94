//! A deployment's connection settings: where its calls go, the key they carry, its
//! `extra_headers` and `drop_params`, read once from `litellm_params` and the environment.
//!
//! The lookups (`api_base`, the key, the base URL check, header values, the missing-key
//! warning) are shared by every adapter, so that each reads its settings by the same rules and
//! with the same error texts. [`Upstream`] keeps the settings of the providers whose calls are
//! JSON posts under one base URL with a bearer key (Cohere, Ollama: [`super::json_api`]).

use std::fmt;

use reqwest::{
    Url,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use serde_json::Value;

use super::{CallContext, ErrorClass, ProviderError, http};
use crate::config::{ConfigError, LitellmParams, Secret};

/// The environment as the adapters read it: a variable that holds only blanks is unset.
pub fn non_blank(env: impl Fn(&str) -> Option<String>) -> impl Fn(&str) -> Option<String> {
    move |name| env(name).filter(|v| !v.trim().is_empty())
}

/// The deployment's `api_base`, else the first of the variables `names` that is set.
pub fn api_base(
    params: &LitellmParams,
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
) -> Option<String> {
    params
        .api_base
        .clone()
        .or_else(|| names.iter().find_map(|n| env(n)))
}

/// The configured key, else the first of the variables `names` that is set; an empty key is
/// none.
pub fn api_key(
    configured: &Option<Secret>,
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
) -> Option<Secret> {
    configured
        .clone()
        .or_else(|| names.iter().find_map(|n| env(n)).map(Secret::new))
        .filter(|k| !k.expose().is_empty())
}

/// [`api_key`], where a configured `os.environ/NAME` is read from the variable `NAME` (and
/// the variables `names` are then not read).
pub fn api_key_or_env_ref(
    configured: &Option<Secret>,
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
) -> Option<Secret> {
    match configured
        .as_ref()
        .and_then(|k| k.expose().strip_prefix("os.environ/"))
    {
        Some(name) => env(name)
            .map(Secret::new)
            .filter(|k| !k.expose().is_empty()),
        None => api_key(configured, env, names),
    }
}

/// `base` as an http(s) URL that paths can be joined to, or `None`.
pub fn http_base(base: &str) -> Option<Url> {
    Url::parse(base.trim()).ok().filter(is_http_base)
}

fn is_http_base(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && !url.cannot_be_a_base()
}

/// The error for an `api_base` that is no http(s) URL.
pub fn not_http(model: &str) -> ConfigError {
    ConfigError::Invalid(format!(
        "model `{model}`: `api_base` must be an http(s) URL"
    ))
}

/// [`http_base`], with an error that tells a string that is no URL at all from a URL of
/// another scheme.
pub fn parse_base(base: &str, model: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(base.trim()).map_err(|e| {
        ConfigError::Invalid(format!("model `{model}`: `api_base` is not a URL ({e})"))
    })?;
    Some(url)
        .filter(is_http_base)
        .ok_or_else(|| not_http(model))
}

/// `base` with `segments` appended to its path (a trailing slash in `base` is fine); each
/// segment is percent-encoded as one segment.
pub fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// A header value that holds a key: marked sensitive, and the error never shows it.
pub fn secret_header(value: &str, model: &str) -> Result<HeaderValue, ConfigError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        ConfigError::Invalid(format!(
            "model `{model}`: the API key holds characters an HTTP header cannot carry"
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Inserts the deployment's `extra_headers` into `headers` (replacing what they name).
pub fn insert_extra_headers(
    headers: &mut HeaderMap,
    params: &LitellmParams,
) -> Result<(), ConfigError> {
    let model = &params.model;
    for (name, value) in &params.extra_headers {
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError::Invalid(format!(
                "model `{model}`: `extra_headers` has an invalid header name `{name}`"
            ))
        })?;
        let header_value = HeaderValue::from_str(value).map_err(|_| {
            ConfigError::Invalid(format!(
                "model `{model}`: `extra_headers.{name}` is not a header value"
            ))
        })?;
        headers.insert(header_name, header_value);
    }
    Ok(())
}

/// The warning for a deployment whose calls carry no key: the settings that would give it
/// one (`None` when no variable can).
pub fn no_key(vars: &[&str]) -> Option<String> {
    let (first, others) = vars.split_first()?;
    let others = if others.is_empty() {
        String::new()
    } else {
        format!(" (or {})", others.join(", "))
    };
    Some(format!(
        "no API key: set `api_key` or the environment variable {first}{others}"
    ))
}

/// What [`Upstream::resolve`] needs to know of a provider.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The provider's name in messages (`Cohere`).
    pub name: &'static str,
    /// The model prefixes, the first that matches is dropped (`cohere_chat/`, `cohere/`).
    pub prefixes: &'static [&'static str],
    /// Variables that may hold the base URL, first set one wins.
    pub base_env: &'static [&'static str],
    /// Variables that may hold the key, first set one wins.
    pub key_env: &'static [&'static str],
    /// The base URL when neither `api_base` nor `base_env` names one.
    pub default_base: &'static str,
    /// A path an `api_base` may end in that the calls add themselves (`/v2/chat`).
    pub path_suffix: &'static str,
}

impl Spec {
    /// The error for an answer of this provider that is not what its API documents.
    pub fn invalid(&self, what: &str, e: impl fmt::Display) -> ProviderError {
        ProviderError::new(
            ErrorClass::InvalidResponse,
            format!("{}'s {what} is not what its API documents: {e}", self.name),
        )
    }
}

/// One deployment's connection settings. The key never shows in `Debug` output.
pub struct Upstream {
    http: reqwest::Client,
    base: Url,
    key: Option<Secret>,
    /// What every call carries: the key as a bearer token (marked sensitive) and the
    /// `extra_headers`, checked and built once.
    headers: HeaderMap,
    drop_params: bool,
}

impl Upstream {
    /// Reads the settings of the deployment `params` of the provider `spec`; returns them with
    /// the upstream model (the name after the prefix). `http` is the shared client pool.
    pub fn resolve(
        spec: &Spec,
        params: &LitellmParams,
        http: &reqwest::Client,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, String), ConfigError> {
        let env = non_blank(env);
        let model = params.model.trim();
        let name = spec
            .prefixes
            .iter()
            .find_map(|p| model.strip_prefix(p))
            .unwrap_or(model);
        if name.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "model `{model}` names no {} model",
                spec.name
            )));
        }
        let base =
            api_base(params, &env, spec.base_env).unwrap_or_else(|| spec.default_base.to_owned());
        let base = base.trim();
        let base = base.strip_suffix(spec.path_suffix).unwrap_or(base);
        let key = api_key(&params.api_key, &env, spec.key_env);
        let mut headers = HeaderMap::new();
        if let Some(key) = &key {
            let bearer = secret_header(&format!("Bearer {}", key.expose()), model)?;
            headers.insert(header::AUTHORIZATION, bearer);
        }
        insert_extra_headers(&mut headers, params)?;
        let upstream = Upstream {
            http: http.clone(),
            base: http_base(base).ok_or_else(|| not_http(model))?,
            key,
            headers,
            drop_params: params.drop_params.unwrap_or(false),
        };
        Ok((upstream, name.to_owned()))
    }

    /// The key, for the one place that sends it and to scrub it from errors.
    pub fn key(&self) -> Option<&str> {
        self.key.as_ref().map(Secret::expose)
    }

    /// Whether parameters the provider cannot take are dropped rather than refused.
    pub fn drop_params(&self) -> bool {
        self.drop_params
    }

    /// Whether the calls carry credentials: a key, or an `Authorization` extra header.
    pub fn has_credentials(&self) -> bool {
        self.headers.contains_key(header::AUTHORIZATION)
    }

    /// `{base}/{path}`, for a `path` of the adapter's own (`v2/chat`); adapters join their
    /// URLs once, when the deployment is built.
    pub fn url(&self, path: &str) -> Url {
        join(&self.base, &path.split('/').collect::<Vec<_>>())
    }

    /// Posts `body` as JSON to `url` (from [`Upstream::url`]) with `accept`, the key as a
    /// bearer token, the extra headers (which replace the bearer token when they name
    /// `Authorization`) and the trace context; a non-2xx answer is the error `to_error` makes.
    pub async fn post(
        &self,
        url: Url,
        body: &Value,
        accept: Option<&str>,
        ctx: &CallContext,
        to_error: impl FnOnce(u16, &HeaderMap, &[u8]) -> ProviderError,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut builder = self.http.post(url).headers(self.headers.clone()).json(body);
        if let Some(accept) = accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        if let Some(tp) = &ctx.traceparent {
            builder = builder.header("traceparent", tp.as_str());
        }
        let response = builder.send().await.map_err(http::error_from_reqwest)?;
        http::successful(response, to_error).await
    }

    /// The `Debug` output of the adapter `name` that holds these settings: the base URL, and
    /// whether there is a key.
    pub fn debug_as(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("base", &self.base.as_str())
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        name: "Example",
        prefixes: &["example_chat/", "example/"],
        base_env: &["EXAMPLE_API_BASE"],
        key_env: &["EXAMPLE_API_KEY", "EX_API_KEY"],
        default_base: "https://api.example.com",
        path_suffix: "/v1/chat",
    };

    /// The `Debug` output and upstream model of `model` with `api_base` and `api_key` set as
    /// given and the environment `vars`, or the error text.
    fn resolved(
        model: &str,
        set: (Option<&str>, Option<&str>),
        vars: &[(&str, &str)],
    ) -> Result<(String, String), ConfigError> {
        let params = LitellmParams {
            model: model.into(),
            api_base: set.0.map(str::to_owned),
            api_key: set.1.map(Secret::new),
            ..LitellmParams::default()
        };
        let env = |name: &str| vars.iter().find(|v| v.0 == name).map(|v| v.1.to_owned());
        let (upstream, model) = Upstream::resolve(&SPEC, &params, &reqwest::Client::new(), env)?;
        let debug = fmt::from_fn(|f| upstream.debug_as(SPEC.name, f));
        Ok((format!("{debug:?}"), model))
    }

    #[test]
    fn prefixes_base_and_key_resolve_in_order() {
        let (debug, model) = resolved("example_chat/m-1", (None, None), &[]).unwrap();
        assert_eq!(model, "m-1");
        assert_eq!(
            debug,
            r#"Example { base: "https://api.example.com/", key: None }"#
        );

        let vars = [
            ("EXAMPLE_API_BASE", " http://h:1/v1/chat "),
            ("EXAMPLE_API_KEY", "  "),
            ("EX_API_KEY", "ex-secret"),
        ];
        let (debug, model) = resolved("example/m-2", (None, None), &vars).unwrap();
        assert_eq!(model, "m-2");
        assert_eq!(
            debug,
            r#"Example { base: "http://h:1/", key: Some("***") }"#
        );

        let (debug, model) = resolved(" m-3 ", (Some("http://h:2/base"), Some("")), &vars).unwrap();
        assert_eq!(model, "m-3");
        assert_eq!(debug, r#"Example { base: "http://h:2/base", key: None }"#);
    }

    #[test]
    fn bad_settings_name_the_provider_and_the_model() {
        let err = resolved("example/", (None, None), &[])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "model `example/` names no Example model");
        for base in ["ftp://h", "not a url", "mailto:a@b"] {
            let err = resolved("example/m", (Some(base), None), &[])
                .unwrap_err()
                .to_string();
            assert_eq!(err, "model `example/m`: `api_base` must be an http(s) URL");
        }
        // Bedrock asked for a host where the others ask for a base: an http(s) URL has both.
        for base in ["http:h", "https:///h", " http://h:1/p "] {
            let url = http_base(base).unwrap();
            assert!(
                url.host_str().is_some() && !url.cannot_be_a_base(),
                "{base}"
            );
        }
        let err = parse_base("not a url", "m").unwrap_err().to_string();
        assert!(
            err.starts_with("model `m`: `api_base` is not a URL ("),
            "{err}"
        );
        let err = secret_header("sk-\nsecret", "m").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn headers_are_built_and_checked_once_at_start_up() {
        let upstream = |key: Option<&str>, extra: &[(&str, &str)]| {
            let params = LitellmParams {
                model: "example/m".into(),
                api_key: key.map(Secret::new),
                extra_headers: extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..LitellmParams::default()
            };
            Upstream::resolve(&SPEC, &params, &reqwest::Client::new(), |_| None)
                .map(|(u, _)| u)
                .map_err(|e| e.to_string())
        };
        let u = upstream(Some("sk-1"), &[("x-team", "blue")]).unwrap();
        assert!(u.has_credentials());
        assert_eq!(u.headers["x-team"], "blue");
        assert_eq!(u.headers[header::AUTHORIZATION], "Bearer sk-1");
        assert!(u.headers[header::AUTHORIZATION].is_sensitive());

        // An `Authorization` extra header is a credential, and replaces the key's.
        let u = upstream(None, &[("Authorization", "Basic abc")]).unwrap();
        assert!(u.has_credentials());
        let u = upstream(Some("sk-1"), &[("authorization", "Basic abc")]).unwrap();
        assert_eq!(u.headers.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert!(!upstream(None, &[]).unwrap().has_credentials());

        // Refused when the deployment is built, not on its first call; the key never shows.
        let err = upstream(None, &[("bad name", "v")])
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("invalid header name `bad name`"), "{err}");
        let err = upstream(None, &[("x-ok", "line\nbreak")])
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.contains("`extra_headers.x-ok` is not a header value"),
            "{err}"
        );
        let err = upstream(Some("sk-\nsecret"), &[]).map(|_| ()).unwrap_err();
        assert!(err.contains("API key holds characters"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn env_references_read_the_named_variable_only() {
        let env = |name: &str| match name {
            "MINE" => Some("k-mine".to_owned()),
            "EXAMPLE_API_KEY" => Some("k-default".to_owned()),
            _ => None,
        };
        let key = |k: Option<&str>| {
            api_key_or_env_ref(&k.map(Secret::new), &env, SPEC.key_env)
                .map(|s| s.expose().to_owned())
        };
        assert_eq!(key(Some("os.environ/MINE")).as_deref(), Some("k-mine"));
        assert_eq!(key(Some("os.environ/UNSET")), None);
        assert_eq!(key(Some("literal")).as_deref(), Some("literal"));
        assert_eq!(key(None).as_deref(), Some("k-default"));
        assert_eq!(
            no_key(SPEC.key_env).unwrap(),
            "no API key: set `api_key` or the environment variable EXAMPLE_API_KEY (or \
             EX_API_KEY)"
        );
    }
}
