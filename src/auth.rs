//! The gateway's key check: who may run a job, and what a caller may choose.
//!
//! With `general_settings.master_key` set, every job must carry `Authorization: Bearer <master
//! key>` (header name and scheme in any case), as LiteLLM Proxy demands; anything else is a 401
//! in OpenAI's error shape. Without a master key every job passes (NATS accounts and subject
//! permissions are then the only gate). The HTTP front maps LiteLLM's `x-litellm-api-key`
//! header to `Authorization` before the job reaches NATS.
//!
//! With `general_settings.reject_clientside_metadata_tags`, a job that chooses its own routing
//! tags (an `Llm-Tags` header, the only way llmbus takes tags from a caller) is a 400, as
//! LiteLLM refuses client-side `metadata.tags`.
//!
//! The comparison is constant-time: both keys are hashed with SHA-256 and the digests compared
//! byte by byte without an early exit, so neither the key's content nor its length shows in the
//! time a check takes. No message, log line or metric ever holds the key or what the caller
//! sent.
//!
//! A job can be cancelled (`llm.cancel`) only by its own key or the master key
//! ([`Auth::may_cancel`]): the cancel registry remembers each job's key as a [`KeyDigest`]
//! (its SHA-256), never the key. Without a master key nobody is authenticated, so a cancel
//! needs only the job's reply subject.
//!
//! The admin subjects (`llm.admin.>`, config push and rollback) need the master key itself
//! ([`Auth::is_master`]); a worker without one refuses them.
//!
//! Virtual keys (a later feature) plug into [`Auth::check`]: a key that is not the master key
//! is looked up there, and [`Caller`] grows the variant that names it.

use ring::digest::{SHA256, digest};

use crate::{
    config::{Config, Secret},
    wire::{ApiError, headers},
};

/// The key check of one worker, built from the config.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    master_key: Option<Secret>,
    reject_client_tags: bool,
}

/// The SHA-256 digest of a key: what llmbus keeps when it must remember which key a job came
/// with. Compared in constant time; `Debug` prints nothing of it.
#[derive(Clone, Copy)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &str) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
        Self(out)
    }

    /// Constant-time equality.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// Who a job runs for, as the key check established it (for usage events and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No master key is configured: nobody is authenticated, everybody passes.
    Anonymous,
    /// The caller presented the master key.
    Master,
}

impl Caller {
    /// A short name for usage events and logs: `anonymous` or `master`.
    pub fn label(&self) -> &'static str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Master => "master",
        }
    }
}

impl Auth {
    /// A check against `master_key`; `None` lets every job pass.
    pub fn new(master_key: Option<Secret>) -> Self {
        Self {
            master_key,
            reject_client_tags: false,
        }
    }

    /// The check `config` asks for (`general_settings.master_key` and
    /// `general_settings.reject_clientside_metadata_tags`).
    pub fn from_config(config: &Config) -> Self {
        let g = &config.general_settings;
        Self {
            master_key: g.master_key.clone(),
            reject_client_tags: g.reject_clientside_metadata_tags,
        }
    }

    /// True when jobs must present a key.
    pub fn required(&self) -> bool {
        self.master_key.is_some()
    }

    /// The digest of the key `headers` present (`Authorization: Bearer <key>`), when a key is
    /// required and one is presented well-formed; what a job's cancel is checked against.
    pub fn owner(&self, headers: Option<&async_nats::HeaderMap>) -> Option<KeyDigest> {
        if !self.required() {
            return None;
        }
        headers::api_key(headers)
            .ok()
            .flatten()
            .map(|k| KeyDigest::of(&k))
    }

    /// Whether a cancel presenting `headers` may stop a job registered with `owner` (see
    /// [`Auth::owner`]): always without a master key; else only with the job's own key or the
    /// master key.
    pub fn may_cancel(
        &self,
        owner: Option<&KeyDigest>,
        headers: Option<&async_nats::HeaderMap>,
    ) -> bool {
        let Some(master) = &self.master_key else {
            return true;
        };
        let Some(presented) = headers::api_key(headers).ok().flatten() else {
            return false;
        };
        let presented = KeyDigest::of(&presented);
        // Both compared, whatever the first says: no early exit to time.
        let is_master = presented.matches(&KeyDigest::of(master.expose()));
        let is_owner = owner.is_some_and(|o| o.matches(&presented));
        is_master | is_owner
    }

    /// Whether `headers` present the master key; false when there is none (a worker without a
    /// master key lets nobody use the admin subjects).
    pub fn is_master(&self, headers: Option<&async_nats::HeaderMap>) -> bool {
        matches!(
            (&self.master_key, headers::api_key(headers)),
            (Some(master), Ok(Some(presented)))
                if same_key(presented.as_bytes(), master.expose().as_bytes())
        )
    }

    /// Checks a job's headers: `Ok` with the caller, or a 401 in OpenAI's error shape (type
    /// `authentication_error`, code `invalid_api_key`, which OpenAI's SDKs raise as
    /// `AuthenticationError`). The error never repeats the key or what the caller sent.
    ///
    /// A job with an `Llm-Tags` header, when the config rejects client-side tags, is a 400
    /// (checked after the key, so an unauthenticated caller learns nothing more).
    pub fn check(&self, headers: Option<&async_nats::HeaderMap>) -> Result<Caller, ApiError> {
        let caller = self.caller(headers)?;
        if self.reject_client_tags
            && let Some(h) = headers
            && h.iter()
                .any(|(name, _)| AsRef::<str>::as_ref(name).eq_ignore_ascii_case(headers::TAGS))
        {
            return Err(ApiError::bad_request(format!(
                "This gateway does not let callers choose routing tags: remove the `{}` header \
                 (general_settings.reject_clientside_metadata_tags).",
                headers::TAGS
            ))
            .with_param(headers::TAGS));
        }
        Ok(caller)
    }

    fn caller(&self, headers: Option<&async_nats::HeaderMap>) -> Result<Caller, ApiError> {
        let Some(master) = &self.master_key else {
            return Ok(Caller::Anonymous);
        };
        let Some(presented) = headers::api_key(headers)? else {
            return Err(ApiError::unauthorized(
                "No API key: this gateway needs the header `Authorization: Bearer <key>`.",
            )
            .with_code("invalid_api_key"));
        };
        if same_key(presented.as_bytes(), master.expose().as_bytes()) {
            Ok(Caller::Master)
        } else {
            Err(
                ApiError::unauthorized("The API key in the Authorization header is not valid.")
                    .with_code("invalid_api_key"),
            )
        }
    }
}

/// Constant-time equality of two keys of any length: their SHA-256 digests are compared
/// without an early exit.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (digest(&SHA256, a), digest(&SHA256, b));
    let diff = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;

    const MASTER: &str = "sk-master-7f3a9c";

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, *v);
        }
        h
    }

    fn auth() -> Auth {
        Auth::new(Some(Secret::new(MASTER)))
    }

    #[test]
    fn without_a_master_key_everything_passes() {
        let open = Auth::default();
        assert!(!open.required());
        assert_eq!(open.check(None), Ok(Caller::Anonymous));
        let h = map(&[("Authorization", "Bearer whatever")]);
        assert_eq!(open.check(Some(&h)), Ok(Caller::Anonymous));
    }

    #[test]
    fn the_master_key_passes_in_any_case_of_name_and_scheme() {
        for (name, scheme) in [
            ("Authorization", "Bearer"),
            ("authorization", "bearer"),
            ("AUTHORIZATION", "BEARER"),
        ] {
            let h = map(&[(name, &format!("{scheme} {MASTER}"))]);
            assert_eq!(
                auth().check(Some(&h)),
                Ok(Caller::Master),
                "{name} {scheme}"
            );
        }
        assert_eq!(Caller::Master.label(), "master");
    }

    #[test]
    fn no_key_is_a_401() {
        for headers in [None, Some(map(&[])), Some(map(&[("Llm-Tags", "a")]))] {
            let e = auth().check(headers.as_ref()).unwrap_err();
            assert_eq!(e.status, 401);
            assert_eq!(e.kind, "authentication_error");
            assert_eq!(e.code.as_deref(), Some("invalid_api_key"));
            assert!(e.message.contains("Authorization: Bearer"), "{}", e.message);
        }
    }

    #[test]
    fn a_wrong_or_malformed_key_is_a_401_that_echoes_nothing() {
        for value in [
            "Bearer sk-wrong-key-1234",
            "Bearer sk-master-7f3a9",
            "Bearer sk-master-7f3a9cX",
            "sk-master-7f3a9c",
            "Basic sk-master-7f3a9c",
            "Bearer",
        ] {
            let h = map(&[("Authorization", value)]);
            let e = auth().check(Some(&h)).unwrap_err();
            assert_eq!(e.status, 401, "{value}");
            assert_eq!(e.code.as_deref(), Some("invalid_api_key"), "{value}");
            assert!(!e.message.contains("sk-"), "{}", e.message);
        }
        let h = map(&[
            ("Authorization", &format!("Bearer {MASTER}")),
            ("Authorization", "Bearer other"),
        ]);
        assert_eq!(auth().check(Some(&h)).unwrap_err().status, 401);
    }

    #[test]
    fn keys_compare_by_content_and_length() {
        assert!(same_key(b"abc", b"abc"));
        assert!(!same_key(b"abc", b"abd"));
        assert!(!same_key(b"abc", b"abcd"));
        assert!(!same_key(b"", b"a"));
        assert!(same_key(b"", b""));
    }

    #[test]
    fn debug_never_prints_the_key() {
        assert!(!format!("{:?}", auth()).contains(MASTER));
        assert_eq!(format!("{:?}", KeyDigest::of(MASTER)), "KeyDigest(..)");
    }

    #[test]
    fn a_cancel_needs_the_jobs_own_key_or_the_master_key() {
        let a = auth();
        let job_key = map(&[("Authorization", "Bearer sk-job-key")]);
        let owner = a.owner(Some(&job_key));
        assert!(owner.is_some());
        assert!(a.may_cancel(owner.as_ref(), Some(&job_key)));
        let master = map(&[("authorization", &format!("bearer {MASTER}"))]);
        assert!(a.may_cancel(owner.as_ref(), Some(&master)));
        for other in [
            Some(map(&[("Authorization", "Bearer sk-other-key")])),
            Some(map(&[("Authorization", "sk-job-key")])),
            Some(map(&[])),
            None,
        ] {
            assert!(!a.may_cancel(owner.as_ref(), other.as_ref()), "{other:?}");
        }
        // A job that came without a key: only the master key cancels it.
        assert!(a.owner(None).is_none());
        assert!(!a.may_cancel(None, Some(&job_key)));
        assert!(a.may_cancel(None, Some(&master)));
        // Without a master key nobody is authenticated: the reply subject is enough.
        let open = Auth::default();
        assert!(open.owner(Some(&job_key)).is_none());
        assert!(open.may_cancel(None, None));
    }

    #[test]
    fn only_the_master_key_is_the_master_key() {
        let master = map(&[("Authorization", &format!("Bearer {MASTER}"))]);
        assert!(auth().is_master(Some(&master)));
        assert!(!auth().is_master(Some(&map(&[("Authorization", "Bearer sk-x")]))));
        assert!(!auth().is_master(None));
        assert!(
            !Auth::default().is_master(Some(&master)),
            "no master key: nobody is"
        );
    }

    #[test]
    fn client_side_tags_are_a_400_when_the_config_rejects_them() {
        let yaml =
            "general_settings:\n  master_key: sk-1\n  reject_clientside_metadata_tags: true\n";
        let a = Auth::from_config(
            &Config::from_yaml_with_env(yaml, "t", &|_| None)
                .unwrap()
                .config,
        );
        let ok = map(&[("Authorization", "Bearer sk-1")]);
        assert_eq!(a.check(Some(&ok)), Ok(Caller::Master));
        let tagged = map(&[("Authorization", "Bearer sk-1"), ("llm-tags", "eu")]);
        let e = a.check(Some(&tagged)).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("Llm-Tags")));
        // Without a key the caller gets the 401 first.
        let e = a.check(Some(&map(&[("Llm-Tags", "eu")]))).unwrap_err();
        assert_eq!(e.status, 401);
        // Tags are fine when the config does not reject them.
        assert_eq!(
            auth().check(Some(&map(&[
                ("Authorization", &format!("Bearer {MASTER}")),
                ("Llm-Tags", "eu")
            ]))),
            Ok(Caller::Master)
        );
    }

    #[test]
    fn from_config_reads_general_settings_master_key() {
        let yaml = "general_settings:\n  master_key: sk-from-config\n";
        let loaded = Config::from_yaml_with_env(yaml, "t.yaml", &|_| None).unwrap();
        let a = Auth::from_config(&loaded.config);
        assert!(a.required());
        let h = map(&[("Authorization", "Bearer sk-from-config")]);
        assert_eq!(a.check(Some(&h)), Ok(Caller::Master));
    }
}
