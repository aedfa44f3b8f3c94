//! The cost actor: owns a worker's usage pipeline ([`crate::usage`]). At start it makes sure
//! the `LLM_USAGE` stream exists (warning, not failing, when JetStream is not there), starts
//! the publisher task that empties the job side's [`UsageSink`] into the stream (with
//! acknowledgements; on core NATS only while there is no stream), and starts the spend
//! aggregator in the background. It answers this worker's own totals ([`CostMsg::Spend`])
//! and, at shutdown, flushes what is buffered (waiting for the acknowledgements).
//!
//! Jobs do not message this actor: they call [`UsageSink::record`] (the sink is in the
//! worker context), which never waits.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub use crate::usage::{
    UsageEvent,
    publisher::{Spend, Totals},
};
use crate::{
    usage::{
        UsageSink,
        aggregator::Aggregator,
        publisher::{self, Durability, UsageReceiver},
        stream::{self, Ensured},
    },
    wire::Subjects,
};

/// How long start-up waits for JetStream to answer about the stream.
const ENSURE_WAIT: Duration = Duration::from_secs(10);

/// How long a stopping worker waits for buffered events to be published.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// How long a stopping worker waits to give the spend aggregator's lease back.
const LEASE_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Messages the cost actor takes.
pub enum CostMsg {
    /// This worker's totals so far.
    Spend(RpcReplyPort<Spend>),
    /// Answers once every event recorded before it is published and flushed.
    Flush(RpcReplyPort<()>),
    /// Stops the spend aggregator, giving its lease back so that another worker takes the
    /// aggregates over at once; answers when done. A stopping worker sends it while its
    /// connection is still open.
    StopAggregator(RpcReplyPort<()>),
}

/// How the usage pipeline runs.
#[derive(Debug, Clone)]
pub struct UsageSettings {
    /// How long `LLM_USAGE` keeps events (`llmbus.usage_retention_days`) and its replicas.
    pub keep: stream::Keep,
    /// Ensure the `LLM_USAGE` stream at start (`false` only for tests and tools).
    pub ensure_stream: bool,
    /// Run the spend aggregator in this worker (`llmbus.spend_aggregator`).
    pub aggregate: bool,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            keep: stream::Keep {
                retention: stream::retention(crate::config::DEFAULT_USAGE_RETENTION_DAYS),
                replicas: crate::cluster::Replicas::Auto,
            },
            ensure_stream: true,
            aggregate: true,
        }
    }
}

/// The cost actor's arguments.
pub struct CostArgs {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Subject names.
    pub subjects: Subjects,
    /// The sink the jobs hold (for flushing at shutdown).
    pub sink: UsageSink,
    /// Its receiving end, for the publisher.
    pub receiver: UsageReceiver,
    /// Stream and aggregator settings.
    pub settings: UsageSettings,
}

/// The cost actor.
pub struct CostActor;

/// The cost actor's state.
pub struct CostState {
    sink: UsageSink,
    totals: Arc<Mutex<Spend>>,
    publisher: tokio::task::JoinHandle<()>,
    aggregator: Option<Aggregator>,
}

impl Actor for CostActor {
    type Msg = CostMsg;
    type State = CostState;
    type Arguments = CostArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let CostArgs {
            client,
            subjects,
            sink,
            receiver,
            settings,
        } = args;
        let durability = if !settings.ensure_stream {
            Durability::Core { ensure: None }
        } else if ensure_stream(&client, &subjects, settings.keep).await {
            Durability::JetStream {
                ensure: Some(settings.keep),
            }
        } else {
            Durability::Core {
                ensure: Some(settings.keep),
            }
        };
        let totals = Arc::new(Mutex::new(Spend::default()));
        let aggregator = settings
            .aggregate
            .then(|| Aggregator::spawn(client.clone(), &subjects, settings.keep.replicas));
        let publisher = publisher::spawn(client, subjects, receiver, totals.clone(), durability);
        Ok(CostState {
            sink,
            totals,
            publisher,
            aggregator,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CostMsg::Spend(reply) => {
                let totals = state
                    .totals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let _ = reply.send(totals);
            }
            CostMsg::Flush(reply) => {
                let sink = state.sink.clone();
                // Off the actor's loop: a slow NATS must not hold other messages up.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(FLUSH_WAIT, sink.flush()).await;
                    let _ = reply.send(());
                });
            }
            CostMsg::StopAggregator(reply) => {
                let aggregator = state.aggregator.take();
                tokio::spawn(async move {
                    if let Some(a) = aggregator {
                        a.stop(LEASE_RELEASE_WAIT).await;
                    }
                    let _ = reply.send(());
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(a) = state.aggregator.take() {
            // Safe at any point: compare-and-set keeps the aggregates exact. Its lease goes
            // back, so another worker takes the aggregates over at once.
            a.stop(LEASE_RELEASE_WAIT).await;
        }
        if tokio::time::timeout(FLUSH_WAIT, state.sink.flush())
            .await
            .is_err()
        {
            let (events, bytes) = state.sink.buffered();
            tracing::warn!(
                events,
                bytes,
                "{events} usage event(s) still buffered at shutdown were not stored in the \
                 usage stream within {FLUSH_WAIT:?}: they are lost"
            );
        }
        state.publisher.abort();
        Ok(())
    }
}

/// Ensures the usage stream and logs how it went; true when it captures the usage subjects
/// (events are then stored with acknowledgements).
async fn ensure_stream(
    client: &async_nats::Client,
    subjects: &Subjects,
    keep: stream::Keep,
) -> bool {
    let retention = keep.retention;
    let js = async_nats::jetstream::new(client.clone());
    let days = retention.as_secs_f64() / 86_400.0;
    let name = subjects.usage_stream();
    let ensured = match tokio::time::timeout(
        ENSURE_WAIT,
        stream::ensure(&js, subjects, retention, keep.replicas),
    )
    .await
    {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            tracing::warn!(
                error = %e,
                "usage events are not kept durably (they still go out on core NATS; the \
                 stream is tried again every 30 s): {e}"
            );
            return false;
        }
        Err(_) => {
            tracing::warn!(
                "JetStream did not answer within {ENSURE_WAIT:?}: usage events are not kept \
                 durably until the {name} stream exists (tried again every 30 s)"
            );
            return false;
        }
    };
    match &ensured {
        Ensured::Created => tracing::info!(
            retention_days = days,
            "created the {name} stream: usage events are kept {days} days"
        ),
        Ensured::Existing => tracing::debug!("the {name} stream is in place"),
        Ensured::RetentionUpdated { from } => tracing::info!(
            retention_days = days,
            "the {name} stream now keeps usage events {days} days (was {} days)",
            from.as_secs_f64() / 86_400.0
        ),
        Ensured::LeftAlone(why) | Ensured::RetentionKept(why) => {
            tracing::warn!("the {name} stream: {why}")
        }
    }
    ensured.captures()
}
