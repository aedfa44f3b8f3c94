//! Spend aggregates: what `llmbus spend` reads, kept in the JetStream KV bucket `LLM_SPEND`
//! (named after the subject prefix like every llmbus bucket: `ACME_SPEND` for `acme`).
//!
//! # Documents
//!
//! - `day.<YYYY-MM-DD>` ([`DayDoc`]): the UTC day's totals (requests, failures, tokens, USD)
//!   overall and by model group, deployment, key, user, team and tag, plus `applied_through`:
//!   the `LLM_USAGE` stream sequence up to which every event of that day is counted.
//! - `cursor` ([`Cursor`]): the stream sequence up to which every event is counted in its day.
//!   It is the aggregator's durable position: a worker that (re)starts reads the stream from
//!   `cursor + 1`, never from the beginning.
//!
//! # Exactly once with several workers
//!
//! Every worker runs the aggregator ([`super::aggregator`]) and one at a time reads the stream,
//! by a lease; but a lease can overlap (a holder that stalls is outlived), so correctness never
//! rests on it: aggregators may read the same events and race to apply them, and JetStream
//! KV's compare-and-set (`update(key, value, revision)`) lets exactly one win each write:
//!
//! 1. A worker holds a batch of events with stream sequences `(b, e]`, where `b` is at most
//!    the cursor it last read (so every event up to `b` is already counted).
//! 2. It drops the events at or below the current cursor, groups the rest by day, and for each
//!    day reads `day.<d>` with its revision, adds the events whose sequence is above the
//!    document's `applied_through`, sets `applied_through = e`, and writes it back only if the
//!    revision is unchanged. When another worker wrote first, it re-reads and retries: the
//!    watermark skips what the other one already added ([`DayDoc::apply`]).
//! 3. Then it moves the cursor to `e` with compare-and-set, never backwards.
//!
//! A worker that dies between steps 2 and 3 leaves days written and the cursor behind; the
//! next batch over the same events finds the watermarks and skips them. So every event counts
//! exactly once, whatever the number of workers, crashes or restarts. The cost of racing is a
//! few extra KV reads per batch; batches are up to 500 events, so the KV sees a handful of
//! writes per second at most, off the job path.
//!
//! Limits: one document per day holds every key, user, team and tag seen that day, so a day
//! with very many distinct keys (tens of thousands) could outgrow the server's `max_payload`;
//! the aggregator then logs the KV error and retries. If `LLM_USAGE` is deleted and created
//! again (sequences restart at 1), delete `LLM_SPEND` too: the aggregator refuses to go on with
//! a cursor beyond the stream's end.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use super::{UsageError, UsageEvent};

/// The cursor's key.
pub const CURSOR_KEY: &str = "cursor";

/// The key of a day's document.
pub fn day_key(day: &str) -> String {
    format!("day.{day}")
}

/// Totals of some slice of the usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tally {
    /// Jobs, failures included.
    pub requests: u64,
    /// Jobs that failed (status not 2xx).
    pub failures: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Prompt tokens read from a cache.
    pub cached_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Reasoning tokens (part of the completion tokens).
    pub reasoning_tokens: u64,
    /// US dollars.
    pub cost_usd: f64,
}

impl Tally {
    /// Adds one event.
    pub fn add(&mut self, e: &UsageEvent) {
        self.requests += 1;
        if !e.is_success() {
            self.failures += 1;
        }
        self.prompt_tokens += e.prompt_tokens;
        self.cached_tokens += e.cached_tokens;
        self.completion_tokens += e.completion_tokens;
        self.reasoning_tokens += e.reasoning_tokens;
        self.cost_usd += e.cost_usd;
    }

    /// Adds another tally.
    pub fn merge(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.failures += o.failures;
        self.prompt_tokens += o.prompt_tokens;
        self.cached_tokens += o.cached_tokens;
        self.completion_tokens += o.completion_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.cost_usd += o.cost_usd;
    }

    /// Prompt plus completion tokens.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Tallies by the dimensions `llmbus spend` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Breakdown {
    /// Everything.
    pub total: Tally,
    /// By model group.
    pub by_model_group: BTreeMap<String, Tally>,
    /// By deployment (jobs that reached one).
    pub by_deployment: BTreeMap<String, Tally>,
    /// By key (jobs that had one).
    pub by_key: BTreeMap<String, Tally>,
    /// By end user (the request's `user`).
    pub by_user: BTreeMap<String, Tally>,
    /// By team.
    pub by_team: BTreeMap<String, Tally>,
    /// By tag (a job with two tags counts in both).
    pub by_tag: BTreeMap<String, Tally>,
}

impl Breakdown {
    /// Adds one event to every slice it belongs to.
    pub fn add(&mut self, e: &UsageEvent) {
        self.total.add(e);
        self.by_model_group
            .entry(e.model_group.clone())
            .or_default()
            .add(e);
        let add = |map: &mut BTreeMap<String, Tally>, name: &Option<String>| {
            if let Some(n) = name {
                map.entry(n.clone()).or_default().add(e);
            }
        };
        add(&mut self.by_deployment, &e.deployment);
        add(&mut self.by_key, &e.key);
        add(&mut self.by_user, &e.user);
        add(&mut self.by_team, &e.team);
        for tag in &e.tags {
            self.by_tag.entry(tag.clone()).or_default().add(e);
        }
    }

    /// Adds another breakdown.
    pub fn merge(&mut self, o: &Breakdown) {
        self.total.merge(&o.total);
        for (mine, theirs) in [
            (&mut self.by_model_group, &o.by_model_group),
            (&mut self.by_deployment, &o.by_deployment),
            (&mut self.by_key, &o.by_key),
            (&mut self.by_user, &o.by_user),
            (&mut self.by_team, &o.by_team),
            (&mut self.by_tag, &o.by_tag),
        ] {
            for (name, t) in theirs {
                mine.entry(name.clone()).or_default().merge(t);
            }
        }
    }
}

/// One UTC day's aggregates (`day.<YYYY-MM-DD>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DayDoc {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Every event of this day with a stream sequence up to this one is counted.
    pub applied_through: u64,
    /// The totals.
    #[serde(flatten)]
    pub spend: Breakdown,
}

impl DayDoc {
    /// Adds the events (stream sequence, event) whose sequence is above
    /// [`DayDoc::applied_through`], then sets it to `through` (the end of the batch they came
    /// from). Returns how many were added. The events must be this day's, in sequence order.
    pub fn apply<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a (u64, UsageEvent)>,
        through: u64,
    ) -> usize {
        let mut added = 0;
        for (seq, e) in events {
            if *seq > self.applied_through {
                self.spend.add(e);
                added += 1;
            }
        }
        self.applied_through = self.applied_through.max(through);
        added
    }
}

/// The aggregator's durable position (`cursor`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cursor {
    /// Every event with a stream sequence up to this one is counted in its day.
    pub applied_through: u64,
    /// Unix milliseconds of the last move.
    pub updated_ms: u64,
}

/// The spend bucket `bucket` ([`crate::wire::Subjects::spend_bucket`]): file storage, one
/// revision per key.
pub fn bucket_config(bucket: &str) -> kv::Config {
    kv::Config {
        bucket: bucket.to_owned(),
        description: "llmbus spend aggregates by day (llmbus spend)".to_owned(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// Opens the spend bucket `bucket`, creating it with `replicas` when it is missing, as every
/// llmbus bucket is made ([`crate::cluster::ensure_bucket`]).
pub async fn bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: crate::cluster::Replicas,
) -> Result<kv::Store, UsageError> {
    Ok(crate::cluster::ensure_bucket(js, bucket_config(bucket), replicas).await?)
}

/// Opens the spend bucket `bucket` without creating it (for readers); `None` when it does not
/// exist.
pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Option<kv::Store>, UsageError> {
    use jetstream::context::GetStreamErrorKind;
    let open = |source: async_nats::Error| UsageError::Open {
        bucket: bucket.to_owned(),
        source,
    };
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => js
            .get_key_value(bucket)
            .await
            .map(Some)
            .map_err(|e| open(e.into())),
        Err(e) if super::stream::is_not_found(&e) => Ok(None),
        Err(e) => match e.kind() {
            GetStreamErrorKind::Request => Err(UsageError::NoJetStream { source: e.into() }),
            _ => Err(open(e.into())),
        },
    }
}

/// A document and the revision it was read at (0: the key does not exist).
pub async fn read<T: for<'de> Deserialize<'de> + Default>(
    kv: &kv::Store,
    key: &str,
) -> Result<(T, u64), UsageError> {
    let entry = kv.entry(key).await.map_err(|e| UsageError::Read {
        key: key.to_owned(),
        source: e.into(),
    })?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let doc = serde_json::from_slice(&entry.value).map_err(|source| {
                UsageError::NotADocument {
                    bucket: kv.name.clone(),
                    key: key.to_owned(),
                    source,
                }
            })?;
            Ok((doc, entry.revision))
        }
        // Deleted or purged: start over, with the revision for compare-and-set.
        Some(entry) => Ok((T::default(), entry.revision)),
        None => Ok((T::default(), 0)),
    }
}

/// Writes `doc` if the key is still at `revision` (0: if it does not exist). `Ok(false)`
/// when another writer came first.
pub async fn write<T: Serialize>(
    kv: &kv::Store,
    key: &str,
    doc: &T,
    revision: u64,
) -> Result<bool, UsageError> {
    let body = serde_json::to_vec(doc)
        .map_err(|source| UsageError::Encode {
            key: key.to_owned(),
            source,
        })?
        .into();
    let failed = |source: async_nats::Error| UsageError::Write {
        key: key.to_owned(),
        source,
    };
    if revision == 0 {
        return match kv.create(key, body).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(failed(e.into())),
        };
    }
    match kv.update(key, body, revision).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(e) => Err(failed(e.into())),
    }
}

/// The days' documents from `first` (inclusive, `YYYY-MM-DD`; `None`: every day kept), in
/// day order.
pub async fn days_since(kv: &kv::Store, first: Option<&str>) -> Result<Vec<DayDoc>, UsageError> {
    use futures::TryStreamExt;
    let listing = |source: async_nats::Error| UsageError::List {
        bucket: kv.name.clone(),
        source,
    };
    let mut keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| listing(e.into()))?
        .try_collect()
        .await
        .map_err(|e| listing(e.into()))?;
    keys.retain(|k| {
        k.strip_prefix("day.")
            .is_some_and(|d| first.is_none_or(|f| d >= f))
    });
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let (doc, revision) = read::<DayDoc>(kv, &key).await?;
        if revision > 0 {
            out.push(doc);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(group: &str, key: Option<&str>, cost: f64, status: u16) -> UsageEvent {
        UsageEvent {
            job_id: "j".into(),
            model_group: group.into(),
            deployment: Some(format!("{group}-1")),
            key: key.map(Into::into),
            tags: vec!["a".into(), "b".into()],
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: cost,
            status,
            ..Default::default()
        }
    }

    #[test]
    fn a_watermark_counts_each_event_once() {
        let batch = vec![
            (5, event("g", Some("k1"), 0.5, 200)),
            (6, event("g", None, 0.25, 200)),
            (8, event("h", Some("k1"), 1.0, 503)),
        ];
        let mut doc = DayDoc::default();
        assert_eq!(doc.apply(&batch, 9), 3);
        assert_eq!(doc.applied_through, 9);
        // The same batch again (another worker's copy, or a retry): nothing changes.
        let before = doc.clone();
        assert_eq!(doc.apply(&batch, 9), 0);
        assert_eq!(doc, before);
        // An overlapping batch adds only what is new.
        let more = vec![
            (8, event("h", Some("k1"), 1.0, 503)),
            (10, event("g", Some("k2"), 2.0, 200)),
        ];
        assert_eq!(doc.apply(&more, 12), 1);
        let s = &doc.spend;
        assert_eq!(s.total.requests, 4);
        assert_eq!(s.total.failures, 1);
        assert_eq!(s.total.cost_usd, 3.75);
        assert_eq!(s.by_model_group["g"].requests, 3);
        assert_eq!(s.by_key["k1"].requests, 2);
        assert_eq!(s.by_key.len(), 2, "jobs without a key are not in by_key");
        assert_eq!(s.by_tag["a"].requests, 4);
        assert_eq!(s.by_deployment["h-1"].failures, 1);
    }

    #[test]
    fn breakdowns_merge() {
        let mut a = Breakdown::default();
        a.add(&event("g", Some("k"), 1.0, 200));
        let mut b = Breakdown::default();
        b.add(&event("g", Some("k"), 2.0, 200));
        b.add(&event("h", None, 4.0, 200));
        a.merge(&b);
        assert_eq!(a.total.cost_usd, 7.0);
        assert_eq!(a.by_model_group["g"].cost_usd, 3.0);
        assert_eq!(a.by_key["k"].requests, 2);
        assert_eq!(a.by_model_group["h"].tokens(), 15);
    }

    #[test]
    fn documents_read_back_with_missing_fields() {
        let doc: DayDoc = serde_json::from_str(
            r#"{"day":"2025-01-02","applied_through":7,"total":{"requests":1}}"#,
        )
        .unwrap();
        assert_eq!(doc.applied_through, 7);
        assert_eq!(doc.spend.total.requests, 1);
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json["by_model_group"].is_object(), "flattened: {json}");
    }
}
