//! `llmbus usage tail`: follows the usage events live, one line per event (or the event's JSON
//! with `--json`), filtered by model group and status.
//!
//! It reads the `LLM_USAGE` stream with an ordered push consumer (ephemeral, no acks; works on
//! nats-server 2.9), from new events on, or from `--since` back. Without the stream (no
//! JetStream) it subscribes to `llm.usage.>` on core NATS and says so: live events still
//! arrive, history does not.

use std::io::Write;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, push},
};
use futures::StreamExt;

use super::{UsageError, UsageEvent};
use crate::wire::Subjects;

/// Which statuses to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// 2xx.
    Ok,
    /// Anything else.
    Error,
    /// Exactly this status.
    Code(u16),
}

impl std::str::FromStr for StatusFilter {
    type Err = UsageError;

    fn from_str(s: &str) -> Result<Self, UsageError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ok" | "success" => Ok(Self::Ok),
            "error" | "failure" | "failed" => Ok(Self::Error),
            n => n
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .map(Self::Code)
                .ok_or_else(|| UsageError::Status { text: s.to_owned() }),
        }
    }
}

impl StatusFilter {
    /// True when `status` passes.
    pub fn matches(self, status: u16) -> bool {
        match self {
            Self::Ok => (200..300).contains(&status),
            Self::Error => !(200..300).contains(&status),
            Self::Code(c) => c == status,
        }
    }
}

/// What to follow and how to print it.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Only this model group.
    pub model_group: Option<String>,
    /// Only these statuses.
    pub status: Option<StatusFilter>,
    /// Print each event's JSON instead of a line.
    pub json: bool,
    /// Start this far back (Unix milliseconds) instead of with new events.
    pub since_ms: Option<u64>,
    /// Stop after printing this many events.
    pub count: Option<u64>,
}

/// Follows the events and prints them to `out` until `count` is reached or the connection
/// ends. Tells on stderr what it follows once it is subscribed.
pub async fn tail(
    client: async_nats::Client,
    subjects: &Subjects,
    options: &TailOptions,
    out: &mut (dyn Write + Send),
) -> Result<(), UsageError> {
    let subject = match &options.model_group {
        Some(g) => subjects.usage(g),
        None => subjects.usage_all(),
    };
    let js = jetstream::new(client.clone());
    let mut printed = 0u64;
    let stream_name = subjects.usage_stream();
    let stream_name = stream_name.as_str();
    match js.get_stream(stream_name).await {
        Ok(stream) => {
            let deliver_policy = match options.since_ms {
                Some(ms) => DeliverPolicy::ByStartTime {
                    start_time: async_nats::datetime::from_nanos(i128::from(ms) * 1_000_000)
                        .map_err(|source| UsageError::SinceTime { source })?,
                },
                None => DeliverPolicy::New,
            };
            let following = |source: async_nats::Error| UsageError::Follow {
                stream: stream_name.to_owned(),
                source,
            };
            let consumer = stream
                .create_consumer(push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    filter_subject: subject.clone(),
                    deliver_policy,
                    ..Default::default()
                })
                .await
                .map_err(|e| following(e.into()))?;
            let mut messages = consumer.messages().await.map_err(|e| following(e.into()))?;
            eprintln!("following {subject} in the {stream_name} stream (Ctrl-C to stop)");
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| following(e.into()))?;
                if show(&m.payload, options, out)? {
                    printed += 1;
                    if options.count.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                }
            }
        }
        Err(e) => {
            let subscribing = |source: async_nats::Error| UsageError::Subscribe {
                subject: subject.clone(),
                source,
            };
            let mut sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| subscribing(e.into()))?;
            // Make sure the server has the subscription before saying we follow.
            client.flush().await.map_err(|e| subscribing(e.into()))?;
            eprintln!(
                "following {subject} on core NATS (the {stream_name} stream is not there: {e}; \
                 no history)"
            );
            while let Some(m) = sub.next().await {
                if show(&m.payload, options, out)? {
                    printed += 1;
                    if options.count.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                }
            }
        }
    }
    Err(UsageError::Ended)
}

/// Prints one event if it passes the filters; true when printed.
fn show(
    payload: &[u8],
    options: &TailOptions,
    out: &mut (dyn Write + Send),
) -> Result<bool, UsageError> {
    let Ok(event) = serde_json::from_slice::<UsageEvent>(payload) else {
        return Ok(false);
    };
    if options.status.is_some_and(|f| !f.matches(event.status)) {
        return Ok(false);
    }
    let written = if options.json {
        out.write_all(payload).and_then(|()| out.write_all(b"\n"))
    } else {
        writeln!(out, "{}", event.line())
    };
    written
        .and_then(|()| out.flush())
        .map_err(UsageError::Print)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        let ok: StatusFilter = "ok".parse().unwrap();
        assert!(ok.matches(200) && !ok.matches(429));
        let err: StatusFilter = "error".parse().unwrap();
        assert!(err.matches(503) && !err.matches(201));
        let c: StatusFilter = "429".parse().unwrap();
        assert!(c.matches(429) && !c.matches(500));
        assert!("99".parse::<StatusFilter>().is_err());
        assert!(
            "bad"
                .parse::<StatusFilter>()
                .unwrap_err()
                .to_string()
                .contains("--status")
        );
    }

    #[test]
    fn filtered_events_are_not_printed() {
        let e = UsageEvent {
            job_id: "j".into(),
            model_group: "g".into(),
            status: 503,
            ..Default::default()
        };
        let payload = serde_json::to_vec(&e).unwrap();
        let mut out = Vec::new();
        let only_ok = TailOptions {
            status: Some(StatusFilter::Ok),
            ..Default::default()
        };
        assert!(!show(&payload, &only_ok, &mut out).unwrap());
        assert!(!show(b"not json", &TailOptions::default(), &mut out).unwrap());
        assert!(out.is_empty());
        let json = TailOptions {
            json: true,
            ..Default::default()
        };
        assert!(show(&payload, &json, &mut out).unwrap());
        let line: UsageEvent = serde_json::from_slice(out.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(line, e);
    }
}
