//! The chaos harness's jobs sent straight on NATS ([`NatsSide`]): one connection, one wildcard
//! reply subscription that stays open for the whole run, so that a second answer to a job (or
//! a chunk seen twice) is counted. Part of `chaos.rs`, included next to it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use serde_json::Value;

use super::chaos::{DEADLINE, Kind, SLACK, Verdict, body, error_kind, prompt};

/// Jobs sent straight on NATS, on one connection with one wildcard reply subscription that
/// stays open for the whole run, so a second answer to a job is seen.
pub struct NatsSide {
    pub(crate) client: async_nats::Client,
    inbox: String,
    state: Arc<Mutex<Replies>>,
    _reader: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Replies {
    /// Jobs waiting for their end, by id.
    waiting: HashMap<u64, Waiting>,
    /// Answers (plain) or sentinels (streams) seen per job, and repeated `Llm-Seq` numbers.
    answers: HashMap<u64, u32>,
    /// Whether each job sent so far streams.
    streams: HashMap<u64, bool>,
}

struct Waiting {
    stream: bool,
    content: String,
    seqs: Vec<u64>,
    done: Option<tokio::sync::oneshot::Sender<Verdict>>,
    expected: String,
}

impl NatsSide {
    pub(crate) async fn start(url: &str) -> Self {
        let client = async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(url)
            .await
            .expect("the load's NATS connection");
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(format!("{inbox}.*"))
            .await
            .expect("subscribe to the replies");
        client.flush().await.expect("flush");
        let state: Arc<Mutex<Replies>> = Arc::default();
        let replies = state.clone();
        let reader = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(id) = m.subject.rsplit('.').next().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                replies.lock().unwrap().take(id, &m);
            }
        });
        Self {
            client,
            inbox,
            state,
            _reader: reader,
        }
    }

    pub(crate) async fn request(&self, kind: Kind, id: u64) -> Verdict {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.state.lock().unwrap().waiting.insert(
            id,
            Waiting {
                stream: kind.stream(),
                content: String::new(),
                seqs: Vec::new(),
                done: Some(tx),
                expected: format!("echo: {}", prompt(id)),
            },
        );
        self.state.lock().unwrap().streams.insert(id, kind.stream());
        let mut h = async_nats::HeaderMap::new();
        h.insert("Llm-Timeout-Ms", DEADLINE.as_millis().to_string().as_str());
        let payload = serde_json::to_vec(&body(kind, id)).expect("a body").into();
        let sent = self
            .client
            .publish_with_reply_and_headers(
                "llm.completion",
                format!("{}.{id}", self.inbox),
                h,
                payload,
            )
            .await;
        let verdict = match sent {
            Err(_) => Verdict::Error("publish".into()),
            Ok(()) => match tokio::time::timeout(DEADLINE + SLACK, rx).await {
                Ok(Ok(v)) => v,
                _ => Verdict::Timeout,
            },
        };
        self.state.lock().unwrap().waiting.remove(&id);
        verdict
    }

    /// Jobs that got more than one answer (plain) or sentinel (stream), or a chunk twice.
    pub fn duplicates(&self) -> Vec<u64> {
        let state = self.state.lock().unwrap();
        let mut ids: Vec<u64> = state
            .answers
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

impl Replies {
    fn take(&mut self, id: u64, m: &async_nats::Message) {
        let no_responders = m.status == Some(async_nats::StatusCode::NO_RESPONDERS);
        let h = m.headers.clone().unwrap_or_default();
        let status: u16 = h
            .get("Llm-Status")
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(200);
        // An answer (plain) or the sentinel (stream) counts, for duplicates.
        let counts = match self.streams.get(&id) {
            Some(false) => !m.payload.is_empty() || no_responders,
            Some(true) => m.payload.is_empty() && !no_responders,
            None => false,
        };
        if counts {
            *self.answers.entry(id).or_default() += 1;
        }
        let Some(w) = self.waiting.get_mut(&id) else {
            return;
        };
        if no_responders {
            w.finish(Verdict::Error("503 no_responders".into()));
            return;
        }
        if let Some(seq) = h.get("Llm-Seq").and_then(|v| v.as_str().parse().ok()) {
            if w.seqs.contains(&seq) {
                *self.answers.entry(id).or_default() += 1;
            }
            w.seqs.push(seq);
        }
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        if status != 200 {
            w.finish(error_kind(status, &m.payload));
        } else if !w.stream {
            let ok = v["choices"][0]["message"]["content"].as_str() == Some(&w.expected);
            w.finish(if ok {
                Verdict::Ok
            } else {
                Verdict::Error("200 wrong answer".into())
            });
        } else if m.payload.is_empty() {
            let ok = w.content == w.expected;
            w.finish(if ok {
                Verdict::Ok
            } else {
                Verdict::Error("200 wrong stream".into())
            });
        } else if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
            w.content.push_str(piece);
        }
    }
}

impl Waiting {
    fn finish(&mut self, v: Verdict) {
        if let Some(done) = self.done.take() {
            let _ = done.send(v);
        }
    }
}
