//! A lease: one holder at a time for a background duty that every worker can do but only one
//! needs to (the spend aggregator: [`crate::usage::aggregator`]). The lease is one key of a
//! JetStream KV bucket, written only by compare-and-set.
//!
//! - **Taking it.** A worker that wants the duty reads the key every `ttl / 3`. The lease is
//!   free when the key is missing, names no holder (given back), or has kept the same revision
//!   for a whole `ttl` of this worker's own clock (its holder stopped renewing). The worker
//!   then writes its name with the revision it read: of several that try at once, one wins.
//! - **Keeping it.** The holder rewrites the key every `ttl / 3`, each write a
//!   compare-and-set on its last revision. A write that finds another revision means someone
//!   took the lease over: the holder stops the duty. When no write succeeds for a `ttl` (NATS
//!   unreachable), it stops too, since the others may have taken over by then.
//! - **Giving it back.** A holder that stops cleanly writes an empty holder, so that another
//!   worker takes over at its next look rather than after a `ttl`.
//!
//! Freshness is judged by revisions seen on the local monotonic clock, never by comparing
//! timestamps written by other machines, so clock skew between workers does not matter. The
//! lease saves work, it does not make anything correct: a duty run under it must stay safe when
//! two holders overlap for a moment (the aggregator's compare-and-set writes are).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::ClusterError;

/// What the lease key holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseDoc {
    /// Who holds it; empty when it was given back.
    pub holder: String,
    /// When the holder last renewed it (Unix milliseconds; for people reading it, not used to
    /// judge freshness).
    pub renewed_ms: u64,
}

/// One would-be holder's handle on a lease.
pub struct Lease {
    kv: kv::Store,
    key: String,
    holder: String,
    ttl: Duration,
    /// The revision of this holder's last write; 0 while it does not hold the lease.
    revision: AtomicU64,
}

impl Lease {
    /// The lease `key` in `kv`, taken in the name of `holder`, lost by a holder that does not
    /// renew it for `ttl`.
    pub fn new(
        kv: kv::Store,
        key: impl Into<String>,
        holder: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            kv,
            key: key.into(),
            holder: holder.into(),
            ttl,
            revision: AtomicU64::new(0),
        }
    }

    /// The holder's name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The lease key as it is now, with its revision (0 when it does not exist).
    pub async fn read(&self) -> Result<(LeaseDoc, u64), ClusterError> {
        match self.kv.entry(&self.key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                let doc = serde_json::from_slice(&entry.value).unwrap_or_default();
                Ok((doc, entry.revision))
            }
            Ok(Some(entry)) => Ok((LeaseDoc::default(), entry.revision)),
            Ok(None) => Ok((LeaseDoc::default(), 0)),
            Err(e) => Err(ClusterError::LeaseRead {
                key: self.key.clone(),
                source: e.into(),
            }),
        }
    }

    /// Waits until this holder has the lease.
    pub async fn acquire(&self) {
        let mut seen = None;
        loop {
            match self.try_take(&mut seen).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "taking the lease {}", self.key),
            }
            tokio::time::sleep(self.ttl / 3).await;
        }
    }

    /// One look at the lease: takes it when it is free. `seen` is the revision last seen and
    /// since when, kept between looks.
    async fn try_take(&self, seen: &mut Option<(u64, Instant)>) -> Result<bool, ClusterError> {
        let (doc, revision) = self.read().await?;
        let now = Instant::now();
        let stale = match *seen {
            Some((r, since)) if r == revision => now.duration_since(since) >= self.ttl,
            _ => {
                *seen = Some((revision, now));
                false
            }
        };
        if revision != 0 && !doc.holder.is_empty() && doc.holder != self.holder && !stale {
            return Ok(false);
        }
        Ok(self.write(&self.holder, revision).await?.is_some())
    }

    /// Renews the lease every `ttl / 3` and returns why it was lost: another holder took it,
    /// or no renewal succeeded for a `ttl`. Call it after [`Lease::acquire`].
    pub async fn keep(&self) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self
                .write(&self.holder, self.revision.load(Ordering::Relaxed))
                .await
            {
                Ok(Some(_)) => renewed = Instant::now(),
                Ok(None) => {
                    self.revision.store(0, Ordering::Relaxed);
                    return "another worker took it over".into();
                }
                Err(e) if renewed.elapsed() >= self.ttl => {
                    self.revision.store(0, Ordering::Relaxed);
                    return format!("not renewed for {:?}: {e}", self.ttl);
                }
                Err(e) => tracing::debug!(error = %e, "renewing the lease {}", self.key),
            }
        }
    }

    /// Gives the lease back when this holder has it (best effort: a holder that cannot
    /// write it is simply outlived). It reads the key rather than trusting its own record, so
    /// that a take whose answer was cut short by the stop is given back too.
    pub async fn release(&self) {
        self.revision.store(0, Ordering::Relaxed);
        if let Ok((doc, revision)) = self.read().await
            && revision != 0
            && doc.holder == self.holder
        {
            let _ = self.write("", revision).await;
        }
    }

    /// Writes `holder` if the key is still at `revision` (0: if it does not exist); the new
    /// revision, or `None` when another writer came first.
    async fn write(&self, holder: &str, revision: u64) -> Result<Option<u64>, ClusterError> {
        let doc = LeaseDoc {
            holder: holder.to_owned(),
            renewed_ms: super::epoch_ms(),
        };
        let failed = |source: async_nats::Error| ClusterError::LeaseWrite {
            key: self.key.clone(),
            source,
        };
        let body = serde_json::to_vec(&doc)
            .map_err(|e| failed(e.into()))?
            .into();
        let written = if revision == 0 {
            match self.kv.create(&self.key, body).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                Err(e) => return Err(failed(e.into())),
            }
        } else {
            match self.kv.update(&self.key, body, revision).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                Err(e) => return Err(failed(e.into())),
            }
        };
        if let Some(r) = written
            && !holder.is_empty()
        {
            self.revision.store(r, Ordering::Relaxed);
        }
        Ok(written)
    }
}
