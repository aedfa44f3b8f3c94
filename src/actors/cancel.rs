//! Cancellation by the requester: a client that gives up on a job (an HTTP client that
//! disconnected, a NATS client that stopped waiting) publishes the job's reply subject on
//! `llm.cancel`. Every worker listens; the one running that job stops its upstream call at
//! once (the connection to the provider is closed), gives its capacity back and reports the
//! usage so far, without answering.
//!
//! The registry maps a running job's reply subject to its cancellation token. Each job
//! removes its own entry when it ends, so the map never holds more than the jobs in flight.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_nats::Subject;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Running jobs by reply subject.
#[derive(Debug, Default)]
pub struct Cancels {
    jobs: Mutex<HashMap<Box<str>, (u64, CancellationToken)>>,
    next: AtomicU64,
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
            if jobs.get(&*reply).is_some_and(|(id, _)| *id == self.id) {
                jobs.remove(&*reply);
            }
        }
    }
}

impl Cancels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (u64, CancellationToken)>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a job answering on `reply`. A second job on a subject already registered
    /// cannot be cancelled (the first one owns the entry).
    pub fn register(self: &Arc<Self>, reply: Option<&Subject>) -> Registration {
        let token = CancellationToken::new();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut owned = None;
        if let Some(reply) = reply {
            let mut jobs = self.lock();
            if !jobs.contains_key(reply.as_str()) {
                let key: Box<str> = reply.as_str().into();
                jobs.insert(key.clone(), (id, token.clone()));
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

    /// Cancels the job answering on `reply`; true when one was running here.
    pub fn cancel(&self, reply: &str) -> bool {
        let token = self.lock().remove(reply);
        match token {
            Some((_, t)) => {
                t.cancel();
                true
            }
            None => false,
        }
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
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| format!("subscribing to {subject}: {e}"))?;
    Ok(tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(reply) = std::str::from_utf8(&m.payload)
                && cancels.cancel(reply.trim())
            {
                tracing::debug!(reply = %reply.trim(), "job cancelled by its requester");
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
        let job = cancels.register(Some(&reply));
        assert_eq!(cancels.len(), 1);
        assert!(!cancels.cancel("_INBOX.other"));
        assert!(cancels.cancel("_INBOX.a.1"));
        tokio::time::timeout(std::time::Duration::from_secs(5), job.cancelled())
            .await
            .expect("cancelled");
        drop(job);
        assert!(cancels.is_empty());
        let job = cancels.register(Some(&reply));
        let twin = cancels.register(Some(&reply));
        drop(twin);
        assert_eq!(
            cancels.len(),
            1,
            "the twin does not remove the owner's entry"
        );
        drop(job);
        assert!(cancels.is_empty());
        let _none = cancels.register(None);
        assert!(cancels.is_empty());
    }
}
