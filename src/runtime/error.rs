//! [`RuntimeError`]: why a worker role could not start listening (its subscriptions, the
//! round trip that confirms them). Once a job runs, its failures are [`crate::wire::ApiError`]s.

/// Why a listener could not start or confirm its subscriptions.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A subscription was refused.
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// What the client said.
        source: async_nats::SubscribeError,
    },
    /// The round trip to the server failed.
    #[error("round trip to the NATS server: {0}")]
    RoundTrip(#[source] async_nats::Error),
    /// The round trip's subscription ended before its message came back.
    #[error("round trip to the NATS server: the subscription ended")]
    RoundTripEnded,
    /// The server did not confirm the subscriptions in time.
    #[error("the NATS server did not confirm the subscriptions")]
    Unconfirmed,
}
