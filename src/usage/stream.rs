//! The `LLM_USAGE` JetStream stream: it captures every usage event (`<prefix>.usage.>`) on
//! file storage for `llmbus.usage_retention_days` (default 30), so consumers can replay and
//! `llmbus spend` can aggregate after any worker restart. Its name carries the subject prefix
//! ([`Subjects::usage_stream`]: `LLM_USAGE` for `llm`, `ACME_USAGE` for `acme`).
//!
//! Every worker calls [`ensure`] at start-up; it is idempotent and safe when several workers
//! start at once:
//! - no stream: it is created with `llmbus.replicas` ([`crate::cluster::Replicas`]; a
//!   concurrent creation by another worker counts as success);
//! - the stream exists: it is left alone except for its retention (`max_age`), which is
//!   updated to the configured one with `update_stream` (works on nats-server 2.9). Settings an
//!   operator changed by hand (replicas, `max_bytes`, placement) are kept (the worker's keeper
//!   reports fewer replicas than wanted). A stream of that
//!   name that does not capture the usage subjects is reported, never changed or deleted.
//! - no JetStream on the server (or no permission): an error the worker logs as a warning; it
//!   runs on without the durable stream, usage events still flow on core NATS, and the
//!   publisher tries to create the stream every 30 s ([`super::delivery`]).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{CreateStreamErrorKind, GetStreamErrorKind},
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::{cluster::Replicas, wire::Subjects};

/// How a worker keeps the stream: what it creates it with when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// How long it keeps events (`llmbus.usage_retention_days`).
    pub retention: Duration,
    /// Its replicas (`llmbus.replicas`).
    pub replicas: Replicas,
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq)]
pub enum Ensured {
    /// The stream was created.
    Created,
    /// It existed with the wanted subjects and retention.
    Existing,
    /// It existed; its retention was changed to the configured one.
    RetentionUpdated {
        /// The retention it had.
        from: Duration,
    },
    /// It existed but does not capture the usage subjects: it was left alone (the message
    /// says what), and usage events are not kept.
    LeftAlone(String),
    /// It existed and captures the usage subjects, but its retention could not be changed to
    /// the configured one (the message says why).
    RetentionKept(String),
}

impl Ensured {
    /// True when the stream captures the usage subjects now.
    pub fn captures(&self) -> bool {
        !matches!(self, Ensured::LeftAlone(_))
    }
}

/// Why the stream could not be ensured.
#[derive(Debug, thiserror::Error)]
#[error("the {stream} stream: {reason}")]
pub struct StreamError {
    stream: String,
    reason: String,
}

/// The stream's configuration for `subjects`, `retention` and `replicas`.
pub fn config(subjects: &Subjects, retention: Duration, replicas: usize) -> Config {
    Config {
        name: subjects.usage_stream(),
        description: Some(format!(
            "llmbus usage events, one per finished job ({}.usage.<model_group>)",
            subjects.prefix()
        )),
        subjects: vec![subjects.usage_all()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        max_age: retention,
        // The usage publisher sets Nats-Msg-Id to the job id.
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Creates the stream when it is missing, or brings its retention in line (see the module
/// docs). Never deletes or recreates a stream.
pub async fn ensure(
    js: &jetstream::Context,
    subjects: &Subjects,
    retention: Duration,
    replicas: Replicas,
) -> Result<Ensured, StreamError> {
    let name = subjects.usage_stream();
    let error = |reason: String| StreamError {
        stream: name.clone(),
        reason,
    };
    let found = js.get_stream(&name).await;
    // After a first request: a client that connects in the background knows its server only
    // once connected.
    let wanted = config(subjects, retention, replicas.resolve(&js.client()));
    match found {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| error(e.to_string()))?;
            reconcile(js, info.config.clone(), &wanted).await
        }
        Err(e) if is_not_found(&e) => match js.create_stream(wanted.clone()).await {
            Ok(_) => Ok(Ensured::Created),
            Err(e) if name_taken(&e) => {
                // Another worker created it a moment ago.
                let mut stream = js
                    .get_stream(&name)
                    .await
                    .map_err(|e| error(e.to_string()))?;
                let info = stream.info().await.map_err(|e| error(e.to_string()))?;
                reconcile(js, info.config.clone(), &wanted).await
            }
            Err(e) => Err(error(describe_create(&e, &wanted.subjects[0]))),
        },
        Err(e) => Err(error(match e.kind() {
            GetStreamErrorKind::Request => {
                format!("{e} (is JetStream enabled on the NATS server? `nats-server -js`)")
            }
            _ => e.to_string(),
        })),
    }
}

async fn reconcile(
    js: &jetstream::Context,
    current: Config,
    wanted: &Config,
) -> Result<Ensured, StreamError> {
    if !current.subjects.iter().any(|s| wanted.subjects.contains(s)) {
        return Ok(Ensured::LeftAlone(format!(
            "it exists but captures {:?}, not {:?}: usage events are not kept; fix or delete \
             the stream by hand",
            current.subjects, wanted.subjects
        )));
    }
    if current.max_age == wanted.max_age {
        return Ok(Ensured::Existing);
    }
    let from = current.max_age;
    let updated = Config {
        max_age: wanted.max_age,
        ..current
    };
    match js.update_stream(updated).await {
        Ok(_) => Ok(Ensured::RetentionUpdated { from }),
        Err(e) => Ok(Ensured::RetentionKept(format!(
            "its retention is {} days, not the configured {} days, and updating it failed: {e}",
            days(from),
            days(wanted.max_age)
        ))),
    }
}

fn days(d: Duration) -> f64 {
    d.as_secs_f64() / 86_400.0
}

/// True when the server says the stream does not exist.
pub(super) fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn name_taken(e: &async_nats::jetstream::context::CreateStreamError) -> bool {
    matches!(e.kind(), CreateStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST)
}

fn describe_create(e: &async_nats::jetstream::context::CreateStreamError, subject: &str) -> String {
    match e.kind() {
        CreateStreamErrorKind::JetStreamUnavailable => {
            format!("{e} (is JetStream enabled on the NATS server? `nats-server -js`)")
        }
        CreateStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP =>
        {
            format!(
                "creating it: another stream already captures {subject} (an llmbus from \
                 before the stream's name carried the subject prefix called it LLM_USAGE; \
                 delete that stream, or copy it into this one, to keep the events): {e}"
            )
        }
        _ => format!("creating it: {e}"),
    }
}

/// The retention for `days` (at least one second).
pub fn retention(days: f64) -> Duration {
    Duration::try_from_secs_f64(days * 86_400.0)
        .unwrap_or(Duration::from_secs(30 * 86_400))
        .max(Duration::from_secs(1))
}
