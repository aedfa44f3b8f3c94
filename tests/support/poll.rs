//! Waiting for a state that has no event to await (a stream's replicas, a leader elected, a
//! bucket recreated): poll it every 100 ms until it holds, or fail the test with what it was
//! waiting for once `wait` has passed.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// How often a poll looks.
const EVERY: Duration = Duration::from_millis(100);

/// Polls `check` until it is true; panics naming `what` after `wait`.
pub async fn until<F: Future<Output = bool>>(
    wait: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + wait;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {wait:?}");
        tokio::time::sleep(EVERY).await;
    }
}

/// Polls `check` until it gives `Some`, and returns what it gave; panics naming `what` after
/// `wait`.
pub async fn until_some<T, F: Future<Output = Option<T>>>(
    wait: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {wait:?}");
        tokio::time::sleep(EVERY).await;
    }
}

/// Retries `attempt` until it succeeds; panics naming `what` with the last error after `wait`.
pub async fn until_ok<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    wait: Duration,
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + wait;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => panic!("{what}: still failing: {e}"),
            Err(_) => tokio::time::sleep(EVERY).await,
        }
    }
}
