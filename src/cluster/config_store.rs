//! The cluster's configuration in JetStream KV: one config for every worker, pushed once,
//! with its history (bucket `LLM_CONFIG`, key `config`, the last 64 revisions kept).
//!
//! The value is a small JSON envelope around the config file's text exactly as pushed:
//! `{text, source, pushed_at_ms, pushed_by, fingerprint, rollback_of?}`. The text keeps its
//! `os.environ/NAME` references: each worker resolves them from its own environment when it
//! loads the text, so the secrets never enter NATS.
//!
//! A config is validated before it is written ([`validate`]): it must load as a worker would
//! load it if every `os.environ/` variable were set ([`crate::config::Detached`]), pass every
//! start-up check of `llmbus check` ([`crate::preflight::examine_detached`]), write no secret
//! as a literal, by key name or by the value's shape (unless
//! [`PushOptions::allow_literal_secrets`]) and be meant for this store's subject prefix. A
//! rollback checks the old text the same way, so a revision stored before a check existed
//! cannot come back through it. A refused config is never written, so it never reaches a
//! worker.
//!
//! Who may write: whoever may write the bucket (`$KV.<PREFIX>_CONFIG.>` and the JetStream
//! API; in the shipped NATS config, the workers' user only), or anyone holding the master key,
//! through a worker ([`crate::runtime::admin`] serves `llm.admin.config.push|rollback`: it
//! checks the key and writes here itself). [`AdminPush`], [`AdminRollback`] and
//! [`AdminReply`] are those subjects' bodies.
//!
//! [`ConfigStore::watch`] follows the bucket for hot reload. It delivers every revision newer
//! than the one the worker loaded, in order, each once. It does not miss the latest across a
//! NATS outage: the KV watch is an ordered consumer that resumes where it stopped after a
//! reconnect; when it ends or fails instead, it is re-created, and a re-created watch starts
//! with the latest revision stored; and every [`RESYNC_EVERY`] the latest revision is read
//! directly, so even a watch that went silent catches up within that time.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::{StreamExt, stream::BoxStream};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{ClusterError, Replicas, bucket_name, ensure_bucket, epoch_ms, jetstream};
use crate::config::{Config, fingerprint};

/// The key the config is stored under.
pub const KEY: &str = "config";

/// How many revisions the bucket keeps (what `history` and `rollback` can reach).
pub const HISTORY: i64 = 64;

/// How often a [`ConfigStore::watch`] also reads the latest revision directly.
pub const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// What the bucket holds for one revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    text: String,
    source: String,
    pushed_at_ms: u64,
    #[serde(default)]
    pushed_by: String,
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback_of: Option<u64>,
}

/// One revision of the cluster's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stored {
    /// The KV revision (grows with every push).
    pub revision: u64,
    /// The config file's text, byte for byte as pushed.
    pub text: String,
    /// Where it came from: the pushed file's name.
    pub source: String,
    /// When it was pushed, epoch ms (the pusher's clock).
    pub pushed_at_ms: u64,
    /// Who pushed it: `user@host` of the pushing process.
    pub pushed_by: String,
    /// [`crate::config::fingerprint`] of the text.
    pub fingerprint: String,
    /// For a rollback: the revision whose text this is.
    pub rollback_of: Option<u64>,
}

impl Stored {
    /// How messages about this text name it: `cluster config revision 7 (config.yaml)`.
    pub fn origin(&self) -> String {
        format!(
            "cluster config revision {} ({})",
            self.revision, self.source
        )
    }
}

/// How a push is checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushOptions {
    /// Store a config that writes a key, the master key or a NATS credential as a literal
    /// (readable by anyone who may read the bucket). Off by default.
    pub allow_literal_secrets: bool,
}

/// The body of `llm.admin.config.push` (with `Authorization: Bearer <master key>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminPush {
    /// The config file's text.
    pub text: String,
    /// The file's name, for the record.
    pub source: String,
    /// Who pushes (`user@host`), for the record.
    #[serde(default)]
    pub pushed_by: String,
    /// Store it even with literal secrets.
    #[serde(default)]
    pub allow_literal_secrets: bool,
}

/// The body of `llm.admin.config.rollback` (with `Authorization: Bearer <master key>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminRollback {
    /// The revision to make current again.
    pub revision: u64,
    /// Store it even with literal secrets.
    #[serde(default)]
    pub allow_literal_secrets: bool,
}

/// The answer of both admin subjects when the write happened (status 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    /// The new revision.
    pub revision: u64,
    /// The bucket written.
    pub bucket: String,
    /// The config's fingerprint.
    pub fingerprint: String,
    /// How many deployments it has.
    pub deployments: usize,
    /// The revision that held the same text before, if the current one did.
    pub same_as: Option<u64>,
    /// For a rollback: the revision whose text this is.
    pub rollback_of: Option<u64>,
    /// What is worth knowing about the config (see [`Validated::notes`]).
    pub notes: Vec<String>,
}

/// A config that passed [`validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// Its [`crate::config::fingerprint`].
    pub fingerprint: String,
    /// Its `llmbus.subject_prefix`: the store it belongs in.
    pub prefix: String,
    /// How many deployments it has.
    pub deployments: usize,
    /// What is worth knowing but not a reason to refuse it (keys llmbus does not support,
    /// deployments only a worker can check).
    pub notes: Vec<String>,
}

/// A config refused at push, with every reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_refused(.source_name, .problems))]
pub struct Refused {
    /// The pushed file's name.
    pub source_name: String,
    /// Each reason, one line each.
    pub problems: Vec<String>,
}

fn describe_refused(source: &str, problems: &[String]) -> String {
    format!(
        "{source}: refused, nothing was pushed: {} problem{}:\n  - {}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.join("\n  - ")
    )
}

/// Why a push or a rollback did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The config is not valid; the store is unchanged.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The revision to roll back to is not in the store.
    #[error(
        "revision {0} is not in the cluster's config history (it keeps the last {HISTORY} \
         pushes; `llmbus config history` lists them)"
    )]
    NoSuchRevision(u64),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] ClusterError),
}

/// Checks `text` as a push does, without a store: it loads as a worker would with every
/// `os.environ/` variable set, has no problem `llmbus check` would report, and (unless
/// `options` allow it) writes no secret as a literal. `source` names it in messages.
pub fn validate(text: &str, source: &str, options: &PushOptions) -> Result<Validated, Refused> {
    let refuse = |problems: Vec<String>| Refused {
        source_name: source.to_owned(),
        problems,
    };
    let detached =
        Config::from_yaml_detached(text, source).map_err(|e| refuse(vec![e.to_string()]))?;
    let report = crate::preflight::examine_detached(&detached);
    let mut problems = report.problems;
    if !options.allow_literal_secrets {
        problems.extend(detached.literal_secrets.iter().cloned());
    }
    if !problems.is_empty() {
        return Err(refuse(problems));
    }
    Ok(Validated {
        fingerprint: fingerprint(text),
        prefix: detached.loaded.config.llmbus.subject_prefix.clone(),
        deployments: report.deployments,
        notes: report.notes,
    })
}

/// The cluster's config store under one subject prefix. Cheap to clone.
#[derive(Clone)]
pub struct ConfigStore {
    kv: kv::Store,
    prefix: String,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("bucket", &self.kv.name)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The config bucket under `prefix` (`LLM_CONFIG`, on file, [`HISTORY`] revisions).
pub fn bucket(prefix: &str) -> kv::Config {
    kv::Config {
        bucket: bucket_name(prefix, "CONFIG"),
        description: "llmbus: the cluster's config (llmbus config push)".into(),
        history: HISTORY,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

impl ConfigStore {
    /// Opens the store of `prefix` (bucket `<PREFIX>_CONFIG`), creating the bucket with
    /// `replicas` when it does not exist. On a server without JetStream the error says so.
    pub async fn open(
        client: async_nats::Client,
        prefix: &str,
        replicas: Replicas,
    ) -> Result<Self, ClusterError> {
        let js = jetstream(client.clone(), Duration::from_secs(5));
        let opened = ensure_bucket(&js, bucket(prefix), replicas).await;
        match opened {
            Ok(kv) => Ok(Self {
                kv,
                prefix: prefix.to_owned(),
            }),
            Err(e) => Err(explain(&client, e).await),
        }
    }

    /// The bucket's name (`LLM_CONFIG`).
    pub fn bucket(&self) -> &str {
        &self.kv.name
    }

    /// The subject prefix the store belongs to.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Validates `text` ([`validate`], literal secrets refused) and stores it as the cluster's
    /// config; `source` is the file's name. Returns the new revision.
    pub async fn push(&self, text: &str, source: &str) -> Result<u64, PushError> {
        self.push_with(text, source, &PushOptions::default()).await
    }

    /// [`ConfigStore::push`] with options.
    pub async fn push_with(
        &self,
        text: &str,
        source: &str,
        options: &PushOptions,
    ) -> Result<u64, PushError> {
        self.push_as(text, source, &who(), options).await
    }

    /// [`ConfigStore::push_with`], recorded as pushed by `pushed_by`.
    pub async fn push_as(
        &self,
        text: &str,
        source: &str,
        pushed_by: &str,
        options: &PushOptions,
    ) -> Result<u64, PushError> {
        let origin = Origin {
            source,
            pushed_by,
            rollback_of: None,
        };
        self.store(text, &origin, options).await
    }

    /// Makes revision `revision`'s text the current config again, as a new revision. Its text
    /// is validated again as any push, literal secrets included: a revision stored before the
    /// check found them (or pushed with `--allow-literal-secrets`) is refused. Returns the new
    /// revision.
    pub async fn rollback(&self, revision: u64) -> Result<u64, PushError> {
        self.rollback_with(revision, &PushOptions::default()).await
    }

    /// [`ConfigStore::rollback`] with options.
    pub async fn rollback_with(
        &self,
        revision: u64,
        options: &PushOptions,
    ) -> Result<u64, PushError> {
        self.rollback_as(revision, &who(), options).await
    }

    /// [`ConfigStore::rollback_with`], recorded as made by `pushed_by`.
    pub async fn rollback_as(
        &self,
        revision: u64,
        pushed_by: &str,
        options: &PushOptions,
    ) -> Result<u64, PushError> {
        let old = self
            .revision(revision)
            .await?
            .ok_or(PushError::NoSuchRevision(revision))?;
        let origin = Origin {
            source: &old.source,
            pushed_by,
            rollback_of: Some(revision),
        };
        self.store(&old.text, &origin, options).await
    }

    async fn store(
        &self,
        text: &str,
        origin: &Origin<'_>,
        options: &PushOptions,
    ) -> Result<u64, PushError> {
        // Refusals name a rollback's revision too.
        let named = match origin.rollback_of {
            Some(r) => format!("{} (revision {r})", origin.source),
            None => origin.source.to_owned(),
        };
        let valid = validate(text, &named, options)?;
        if valid.prefix != self.prefix {
            return Err(Refused {
                source_name: named,
                problems: vec![format!(
                    "llmbus.subject_prefix is `{}`, but this is the config store of prefix `{}`: \
                     its workers would serve `{}.*`; push it to prefix `{}` (--prefix), or change \
                     the file",
                    valid.prefix, self.prefix, valid.prefix, valid.prefix
                )],
            }
            .into());
        }
        let envelope = Envelope {
            text: text.to_owned(),
            source: origin.source.to_owned(),
            pushed_at_ms: epoch_ms(),
            pushed_by: origin.pushed_by.to_owned(),
            fingerprint: valid.fingerprint,
            rollback_of: origin.rollback_of,
        };
        let body = serde_json::to_vec(&envelope).map_err(|e| self.error(e))?;
        self.kv
            .put(KEY, body.into())
            .await
            .map_err(|e| self.error(e).into())
    }

    /// The cluster's config now; `None` when nothing was ever pushed.
    pub async fn current(&self) -> Result<Option<Stored>, ClusterError> {
        let entry = self.kv.entry(KEY).await.map_err(|e| self.error(e))?;
        entry
            .map(|e| self.stored(e))
            .transpose()
            .map(Option::flatten)
    }

    /// Revision `revision`; `None` when the store does not have it (never pushed, or older
    /// than the history kept).
    pub async fn revision(&self, revision: u64) -> Result<Option<Stored>, ClusterError> {
        let entry = self
            .kv
            .entry_for_revision(KEY, revision)
            .await
            .map_err(|e| self.error(e))?;
        entry
            .map(|e| self.stored(e))
            .transpose()
            .map(Option::flatten)
    }

    /// Every revision kept, newest first.
    pub async fn history(&self) -> Result<Vec<Stored>, ClusterError> {
        let mut entries = self.kv.history(KEY).await.map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| self.error(e))?;
            if let Some(stored) = self.stored(entry)? {
                out.push(stored);
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.revision));
        Ok(out)
    }

    /// Every revision newer than `after` (the one the caller loaded; 0 for all), in order,
    /// each once, for as long as the stream is held: the latest stored first when it is newer,
    /// then each push as it happens. Survives NATS outages without missing the latest (see the
    /// module docs).
    pub async fn watch(&self, after: u64) -> Result<BoxStream<'static, Stored>, ClusterError> {
        let first = self
            .kv
            .watch_with_history(KEY)
            .await
            .map_err(|e| self.error(e))?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(follow(self.clone(), first, after, tx));
        Ok(
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
                .boxed(),
        )
    }

    /// An entry as a revision; `None` for a delete or purge marker.
    fn stored(&self, entry: kv::Entry) -> Result<Option<Stored>, ClusterError> {
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let e: Envelope = serde_json::from_slice(&entry.value).map_err(|err| {
            self.error(format!(
                "revision {} is not an llmbus config: {err}",
                entry.revision
            ))
        })?;
        Ok(Some(Stored {
            revision: entry.revision,
            text: e.text,
            source: e.source,
            pushed_at_ms: e.pushed_at_ms,
            pushed_by: e.pushed_by,
            fingerprint: e.fingerprint,
            rollback_of: e.rollback_of,
        }))
    }

    fn error(&self, source: impl Into<async_nats::Error>) -> ClusterError {
        ClusterError::kv(&self.kv.name, source)
    }
}

/// Where a write comes from, for the record.
struct Origin<'a> {
    /// The file's name.
    source: &'a str,
    pushed_by: &'a str,
    rollback_of: Option<u64>,
}

/// What `llmbus serve` without `--config` serves: the store and the revision it loaded. The
/// running worker follows `store.watch(stored.revision)` to reload.
#[derive(Debug, Clone)]
pub struct ServedConfig {
    /// The store the config came from.
    pub store: ConfigStore,
    /// The revision loaded.
    pub stored: Stored,
}

/// The watch task behind [`ConfigStore::watch`].
async fn follow(store: ConfigStore, first: kv::Watch, after: u64, tx: mpsc::Sender<Stored>) {
    let mut last = after;
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        let mut watch = match current.take() {
            Some(w) => w,
            // A new watch starts with the latest revision stored.
            None => match store.kv.watch_with_history(KEY).await {
                Ok(w) => {
                    backoff = Duration::from_millis(100);
                    w
                }
                Err(e) => {
                    tracing::debug!(error = %e, "config watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = tx.closed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        loop {
            let next = tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => match store.stored(entry) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("{e}; skipped");
                            None
                        }
                    },
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "config watch error; restarting it");
                        break;
                    }
                    None => break,
                },
                _ = resync.tick() => store.current().await.ok().flatten(),
                _ = tx.closed() => return,
            };
            if let Some(stored) = next
                && stored.revision > last
            {
                last = stored.revision;
                if tx.send(stored).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A bucket that could not be opened, explained: a server without JetStream says so.
async fn explain(client: &async_nats::Client, err: ClusterError) -> ClusterError {
    let probe = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await;
    match probe {
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => match err {
            ClusterError::Bucket { bucket, .. } | ClusterError::Kv { bucket, .. } => {
                ClusterError::NoJetStream { bucket }
            }
            other => other,
        },
        _ => err,
    }
}

/// `user@host` of this process, for the record of who pushed.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok());
    match host {
        Some(host) => format!("{user}@{host}"),
        None => user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
";

    #[test]
    fn a_config_with_references_validates_without_the_secrets() {
        let v = validate(GOOD, "c.yaml", &PushOptions::default()).expect("valid");
        assert_eq!(v.prefix, "llm");
        assert_eq!(v.deployments, 1);
        assert_eq!(v.fingerprint, fingerprint(GOOD));
    }

    #[test]
    fn problems_are_all_listed_and_literal_secrets_refused_unless_allowed() {
        let bad = "\
model_list:
  - model_name: a
    litellm_params:
      model: nosuch/a
  - model_name: b
    litellm_params:
      model: openai/b
      api_key: sk-live
router_settings:
  num_retires: 3
";
        let err = validate(bad, "bad.yaml", &PushOptions::default()).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("bad.yaml: refused, nothing was pushed: 3 problems"),
            "{text}"
        );
        assert!(text.contains("unknown provider `nosuch`"), "{text}");
        assert!(text.contains("did you mean `num_retries`"), "{text}");
        assert!(
            text.contains("model_list[1].litellm_params.api_key"),
            "{text}"
        );
        assert!(!text.contains("sk-live"), "{text}");
        let allowed = PushOptions {
            allow_literal_secrets: true,
        };
        assert_eq!(
            validate(bad, "bad.yaml", &allowed)
                .unwrap_err()
                .problems
                .len(),
            2
        );
    }

    #[test]
    fn what_only_a_worker_can_check_is_a_note() {
        let vertex = "\
model_list:
  - model_name: gem
    litellm_params:
      model: vertex_ai/gemini-2.5-flash
      vertex_credentials: os.environ/VERTEX_KEY
";
        let v = validate(vertex, "v.yaml", &PushOptions::default()).expect("valid");
        assert_eq!(v.notes.len(), 1, "{:?}", v.notes);
        assert!(v.notes[0].contains("read on each worker"), "{:?}", v.notes);
        assert!(
            !v.notes[0].contains("os-environ"),
            "no placeholder shown: {:?}",
            v.notes
        );
    }

    #[test]
    fn bad_yaml_and_refused_security_settings_are_refused() {
        let err = validate("model_list: [\n", "y.yaml", &PushOptions::default()).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].starts_with("y.yaml, line"), "{err}");
        let guard = format!("{GOOD}guardrails:\n  - guardrail_name: pii\n");
        let err = validate(&guard, "g.yaml", &PushOptions::default()).unwrap_err();
        assert!(err.to_string().contains("guardrails"), "{err}");
    }
}
