//! [`UsageError`]: why reading or writing usage failed (the spend bucket, the aggregator's
//! reading of the stream, `llmbus spend` and `llmbus usage tail`). Each variant carries what
//! it names and the NATS or JSON error beneath as its source; the messages are what the
//! commands print and the aggregator logs. (Ensuring the stream has its own
//! [`super::stream::StreamError`].)

use std::io;

use crate::cluster::ClusterError;

/// What the NATS client said (its error kinds differ by call; the message is what counts).
type Source = async_nats::Error;

/// Why a usage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The spend bucket could neither be found nor created.
    #[error(transparent)]
    Bucket(#[from] ClusterError),
    /// The spend bucket exists but could not be opened.
    #[error("the {bucket} key-value bucket: {source}")]
    Open {
        /// The bucket.
        bucket: String,
        /// Why.
        source: Source,
    },
    /// The server has no JetStream.
    #[error("JetStream is not available ({source}); is the NATS server started with -js?")]
    NoJetStream {
        /// What the server said.
        source: Source,
    },
    /// `llmbus spend` found no bucket.
    #[error(
        "no spend yet: the {bucket} bucket does not exist (workers create it when they start \
         with JetStream on)"
    )]
    NoSpend {
        /// The bucket.
        bucket: String,
    },
    /// A key could not be read.
    #[error("reading {key}: {source}")]
    Read {
        /// The key.
        key: String,
        /// Why.
        source: Source,
    },
    /// A key holds something else than an llmbus document.
    #[error("{bucket} {key} is not an llmbus document: {source}")]
    NotADocument {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// A document could not be serialized.
    #[error("{key}: {source}")]
    Encode {
        /// The key it was for.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A key could not be written.
    #[error("writing {key}: {source}")]
    Write {
        /// The key.
        key: String,
        /// Why.
        source: Source,
    },
    /// The bucket's keys could not be listed.
    #[error("listing {bucket}: {source}")]
    List {
        /// The bucket.
        bucket: String,
        /// Why.
        source: Source,
    },
    /// Compare-and-set lost too many times in a row.
    #[error("{what}: gave up after {tries} conflicting writes")]
    Conflicts {
        /// The key (or `the <bucket> cursor`).
        what: String,
        /// How many tries.
        tries: usize,
    },
    /// The usage stream could not be read.
    #[error("the {stream} stream: {source}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        source: Source,
    },
    /// The cursor points past the stream's end: the stream was made again.
    #[error(
        "{bucket}'s cursor ({cursor}) is beyond the end of {stream} ({last}): was the stream \
         deleted and created again? Delete the {bucket} bucket to start the aggregates over"
    )]
    CursorBeyond {
        /// The spend bucket.
        bucket: String,
        /// The cursor.
        cursor: u64,
        /// The stream.
        stream: String,
        /// The stream's last sequence.
        last: u64,
    },
    /// The cursor moved back under the aggregator's feet.
    #[error(
        "the {bucket} cursor went back from {base} to {cursor}: was it reset? Starting over from it"
    )]
    CursorBack {
        /// The spend bucket.
        bucket: String,
        /// Where it was.
        base: u64,
        /// Where it is.
        cursor: u64,
    },
    /// A consumer on the stream could not be made.
    #[error("a consumer on {stream}: {source}")]
    Consumer {
        /// The stream.
        stream: String,
        /// Why.
        source: Source,
    },
    /// Fetching a batch failed.
    #[error("fetching from {stream}: {source}")]
    Fetch {
        /// The stream.
        stream: String,
        /// Why.
        source: Source,
    },
    /// A stream message came without its JetStream metadata.
    #[error("a message of {stream} without metadata: {source}")]
    NoMetadata {
        /// The stream.
        stream: String,
        /// Why.
        source: Source,
    },
    /// Acknowledging a batch failed.
    #[error("acknowledging {stream} messages: {source}")]
    Ack {
        /// The stream.
        stream: String,
        /// Why.
        source: Source,
    },
    /// `--since` is not a date, `today` or a duration.
    #[error(
        "--since {text:?}: expected a date (2025-01-31), `today`, or a duration such as 90m, \
         24h, 7d or 2w"
    )]
    Since {
        /// What was given.
        text: String,
    },
    /// `--since` is out of the range a stream start time can hold.
    #[error("--since: {source}")]
    SinceTime {
        /// Why.
        source: Source,
    },
    /// `--status` is not `ok`, `error` or a status.
    #[error("--status {text:?}: expected ok, error or an HTTP status such as 429")]
    Status {
        /// What was given.
        text: String,
    },
    /// Following the stream failed.
    #[error("following {stream}: {source}")]
    Follow {
        /// The stream.
        stream: String,
        /// Why.
        source: Source,
    },
    /// Subscribing on core NATS failed.
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        source: Source,
    },
    /// The connection ended while following.
    #[error("the connection to NATS ended")]
    Ended,
    /// Printing failed.
    #[error("writing: {0}")]
    Print(#[source] io::Error),
}
