//! Cancellation by the requester: a client that gives up on a job (an HTTP client that
//! disconnected, a NATS client that stopped waiting) publishes the job's reply subject on
//! `llm.cancel`. Every worker listens; the one running that job stops its upstream call at
//! once (the connection to the provider is closed), gives its capacity back and reports the
//! usage so far, without answering.
//!
//! The registry maps a running job's reply subject to its cancellation token. Each job
//! removes its own entry when it ends, so the map never holds more than the jobs in flight.
//!
//! Who may cancel: with a master key, a cancel carries the requester's `Authorization: Bearer
//! <key>` header, and is honoured only when that is the job's own key or the master key
//! ([`crate::auth::Auth::may_cancel`]); the registry keeps the digest of the job's key, never
//! the key. A refused cancel changes nothing, is counted (`llmbus_cancels_refused_total`) and
//! logged at debug, without the key. Without a master key nobody is authenticated, so the
//! reply subject alone cancels, and NATS permissions (each application its own inbox prefix,
//! so no other can learn its reply subjects) are the only gate.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use async_nats::{HeaderMap, Subject};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::RuntimeError;
use crate::{
    auth::{Auth, KeyDigest},
    telemetry,
};

/// Running jobs by reply subject.
#[derive(Debug, Default)]
pub struct Cancels {
    jobs: Mutex<HashMap<Box<str>, Entry>>,
    next: AtomicU64,
    /// The key check in force (the master key); replaced when the config changes.
    auth: ArcSwap<Auth>,
}

/// One running job: its registration's id, its token, and the digest of the key it came with
/// (only when a master key is configured).
#[derive(Debug)]
struct Entry {
    id: u64,
    token: CancellationToken,
    owner: Option<KeyDigest>,
}

/// What became of a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The job ran here and is stopped.
    Stopped,
    /// No job answering on that subject runs here.
    NotHere,
    /// The job runs here, but the cancel did not carry its key or the master key.
    Refused,
}

/// A job's entry in the registry; removed when dropped.
#[derive(Debug)]
pub struct Registration {
    cancels: Arc<Cancels>,
    reply: Option<Box<str>>,
    id: u64,
    token: CancellationToken,
}

impl Registration {
    /// Resolves when the requester cancels the job.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let mut jobs = self.cancels.lock();
            // Only our own entry: another job may have taken the subject after a cancel.
            if jobs.get(&*reply).is_some_and(|e| e.id == self.id) {
                jobs.remove(&*reply);
            }
        }
    }
}

impl Cancels {
    /// A registry whose cancels are checked by `auth`.
    pub fn new(auth: Auth) -> Self {
        Self {
            auth: ArcSwap::from_pointee(auth),
            ..Self::default()
        }
    }

    /// Checks cancels with `auth` from now on (the config changed). Jobs already running keep
    /// the key they were registered with.
    pub fn set_auth(&self, auth: Auth) {
        self.auth.store(Arc::new(auth));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Entry>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a job answering on `reply`, sent with `headers` (whose key, if a master key is
    /// configured, is the one that may cancel it). A second job on a subject already
    /// registered cannot be cancelled (the first one owns the entry).
    pub fn register(
        self: &Arc<Self>,
        reply: Option<&Subject>,
        headers: Option<&HeaderMap>,
    ) -> Registration {
        let token = CancellationToken::new();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut owned = None;
        if let Some(reply) = reply {
            let owner = self.auth.load().owner(headers);
            let mut jobs = self.lock();
            if !jobs.contains_key(reply.as_str()) {
                let key: Box<str> = reply.as_str().into();
                let entry = Entry {
                    id,
                    token: token.clone(),
                    owner,
                };
                jobs.insert(key.clone(), entry);
                owned = Some(key);
            }
        }
        Registration {
            cancels: self.clone(),
            reply: owned,
            id,
            token,
        }
    }

    /// Cancels the job answering on `reply`, when `headers` carry its key or the master key
    /// (any cancel, without a master key).
    pub fn cancel(&self, reply: &str, headers: Option<&HeaderMap>) -> Cancelled {
        let auth = self.auth.load();
        let mut jobs = self.lock();
        let Some(entry) = jobs.get(reply) else {
            return Cancelled::NotHere;
        };
        if !auth.may_cancel(entry.owner.as_ref(), headers) {
            return Cancelled::Refused;
        }
        if let Some(entry) = jobs.remove(reply) {
            entry.token.cancel();
        }
        Cancelled::Stopped
    }

    /// Jobs registered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no job is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Subscribes to `subject` (`llm.cancel`) and cancels the jobs it names.
pub async fn listen(
    client: &async_nats::Client,
    subject: String,
    cancels: Arc<Cancels>,
) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|source| RuntimeError::Subscribe { subject, source })?;
    Ok(tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Ok(reply) = std::str::from_utf8(&m.payload) else {
                continue;
            };
            let reply = reply.trim();
            match cancels.cancel(reply, m.headers.as_ref()) {
                Cancelled::Stopped => {
                    tracing::debug!(reply = %reply, "job cancelled by its requester");
                }
                Cancelled::Refused => {
                    metrics::counter!(telemetry::CANCELS_REFUSED).increment(1);
                    tracing::debug!(
                        reply = %reply,
                        "a cancel without the job's key or the master key was refused"
                    );
                }
                Cancelled::NotHere => {}
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_reaches_the_job_and_entries_go_with_their_jobs() {
        let cancels = Arc::new(Cancels::default());
        let reply = Subject::from("_INBOX.a.1");
        let job = cancels.register(Some(&reply), None);
        assert_eq!(cancels.len(), 1);
        assert_eq!(cancels.cancel("_INBOX.other", None), Cancelled::NotHere);
        assert_eq!(cancels.cancel("_INBOX.a.1", None), Cancelled::Stopped);
        tokio::time::timeout(std::time::Duration::from_secs(5), job.cancelled())
            .await
            .expect("cancelled");
        drop(job);
        assert!(cancels.is_empty());
        let job = cancels.register(Some(&reply), None);
        let twin = cancels.register(Some(&reply), None);
        drop(twin);
        assert_eq!(
            cancels.len(),
            1,
            "the twin does not remove the owner's entry"
        );
        drop(job);
        assert!(cancels.is_empty());
        let _none = cancels.register(None, None);
        assert!(cancels.is_empty());
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("Authorization", format!("Bearer {key}").as_str());
        h
    }

    #[tokio::test]
    async fn with_a_master_key_only_the_jobs_key_or_the_master_key_cancels() {
        let cancels = Arc::new(Cancels::new(Auth::new(Some(crate::config::Secret::new(
            "sk-master",
        )))));
        let reply = Subject::from("_INBOX_app2.job.1");
        let job = cancels.register(Some(&reply), Some(&bearer("sk-app2")));
        for wrong in [None, Some(bearer("sk-app1")), Some(HeaderMap::new())] {
            assert_eq!(
                cancels.cancel("_INBOX_app2.job.1", wrong.as_ref()),
                Cancelled::Refused
            );
        }
        assert_eq!(
            cancels.len(),
            1,
            "a refused cancel leaves the job registered"
        );
        assert!(!job.token.is_cancelled());
        assert_eq!(
            cancels.cancel("_INBOX_app2.job.1", Some(&bearer("sk-app2"))),
            Cancelled::Stopped
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), job.cancelled())
            .await
            .expect("cancelled by its own key");
        // The master key cancels any job; a new config's key check applies to new cancels.
        let other = cancels.register(Some(&Subject::from("_INBOX_app1.9")), None);
        assert_eq!(
            cancels.cancel("_INBOX_app1.9", Some(&bearer("sk-master"))),
            Cancelled::Stopped
        );
        assert!(other.token.is_cancelled());
        let third = cancels.register(Some(&Subject::from("_INBOX_app1.10")), None);
        cancels.set_auth(Auth::default());
        assert_eq!(cancels.cancel("_INBOX_app1.10", None), Cancelled::Stopped);
        assert!(third.token.is_cancelled());
    }
}
