//! One upstream call of a job: what it holds while it runs ([`Call`]), how it can end
//! ([`Ending`], closed by [`super::attempt::Attempts::finish`]), and how it can fail
//! ([`CallError`]: the upstream's error, or a panic of the provider adapter).

use std::{
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use futures::FutureExt;

use crate::{
    providers::{ErrorClass, ProviderError},
    runtime::{deployment::Lease, table::Route},
    wire::ApiError,
};

/// The upstream call of the current attempt.
pub(super) struct Call {
    /// The deployment it goes to.
    pub route: Route,
    /// The deployment's capacity this call holds; dropping the call gives it back.
    pub held: Lease,
    /// When it started.
    pub started: Instant,
    /// From its start to a stream's first chunk.
    pub first_chunk: Option<Duration>,
}

/// How a call ended, for its capacity and its deployment's health.
pub(super) enum Ending<'u> {
    /// The upstream answered and used `usage`: the deployment counts a success.
    Answered(&'u crate::wire::openai::Usage),
    /// The upstream failed (or the job's deadline cut the call: a timeout): the deployment
    /// counts the failure; `tokens` is what the call used (`None`: unknown, the reservation
    /// stands).
    Failed {
        class: ErrorClass,
        retry_after: Option<Duration>,
        tokens: Option<u64>,
    },
    /// A committed stream broke after sending `usage`: the deployment counts the failure.
    Broke {
        class: ErrorClass,
        retry_after: Option<Duration>,
        usage: &'u crate::wire::openai::Usage,
    },
    /// The requester cancelled: `tokens` as for `Failed`; the deployment hears nothing.
    Cancelled(Option<u64>),
    /// The job let the call go for a reason of its own (a chunk it could not publish, the
    /// worker's cut-off): what it used settles (`None`: the reservation stands); its time
    /// is not counted and the deployment hears nothing.
    Dropped(Option<&'u crate::wire::openai::Usage>),
}

/// What is left of a closed call.
pub(super) struct Closed {
    /// The deployment it went to.
    pub route: Route,
    /// How long it took.
    pub latency: Duration,
    /// When it started.
    pub started: Instant,
    /// From its start to a stream's first chunk.
    pub first_chunk: Option<Duration>,
}

/// Why an upstream call failed.
pub(super) enum CallError {
    /// The upstream, or the adapter reading its answer, failed.
    Upstream(ProviderError),
    /// The provider adapter panicked: a defect of llmbus, not of the deployment. The job
    /// answers a 500 at once and tries nothing else; the deployment counts an invalid
    /// response.
    Panicked,
}

impl CallError {
    /// The error as the deployment's health and a broken stream's answer see it.
    pub fn provider(&self) -> ProviderError {
        match self {
            CallError::Upstream(e) => e.clone(),
            CallError::Panicked => ProviderError::new(
                ErrorClass::InvalidResponse,
                "internal error in the provider adapter (panic)",
            )
            .with_status(500),
        }
    }
}

impl From<ProviderError> for CallError {
    fn from(e: ProviderError) -> Self {
        CallError::Upstream(e)
    }
}

/// A provider future that turns a panic inside the adapter into [`CallError::Panicked`].
pub(super) async fn guarded<T>(
    work: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, CallError> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError::Upstream(e)),
        Err(_) => Err(CallError::Panicked),
    }
}

/// Turns a failed upstream call into the error the client gets.
pub(super) fn upstream_error(deployment: &str, e: &ProviderError) -> ApiError {
    let message = format!("deployment `{deployment}`: {}", e.message);
    match e.class {
        ErrorClass::Authentication => ApiError::unauthorized(message),
        ErrorClass::PermissionDenied => ApiError::new(403, "permission_error", message),
        ErrorClass::NotFound => {
            ApiError::new(e.status.unwrap_or(404), "invalid_request_error", message)
        }
        ErrorClass::BadRequest => {
            ApiError::new(e.status.unwrap_or(400), "invalid_request_error", message)
        }
        ErrorClass::ContextWindowExceeded => ApiError::new(400, "invalid_request_error", message)
            .with_code("context_length_exceeded"),
        ErrorClass::ContentPolicyViolation => ApiError::new(400, "invalid_request_error", message)
            .with_code("content_policy_violation"),
        ErrorClass::RateLimit => ApiError::rate_limited(message),
        ErrorClass::Timeout => ApiError::deadline(message),
        ErrorClass::Connection | ErrorClass::InternalServer | ErrorClass::InvalidResponse => {
            ApiError::bad_gateway(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_client_errors_keep_their_status() {
        let e = ProviderError {
            class: ErrorClass::BadRequest,
            status: Some(422),
            message: "bad".into(),
            retry_after: None,
        };
        assert_eq!(upstream_error("d", &e).status, 422);
        let e = ProviderError::new(ErrorClass::InternalServer, "boom");
        assert_eq!(upstream_error("d", &e).status, 502);
        let e = ProviderError::new(ErrorClass::Authentication, "no");
        assert_eq!(upstream_error("d", &e).status, 401);
    }

    #[tokio::test]
    async fn a_panic_is_its_own_variant_and_an_upstream_saying_panic_is_not() {
        let panicked = guarded(async {
            if true {
                panic!("the adapter panics");
            }
            Ok::<(), ProviderError>(())
        })
        .await;
        assert!(matches!(panicked, Err(CallError::Panicked)));
        // An upstream whose 500 names a panic is the upstream's failure, not the adapter's.
        let said =
            ProviderError::new(ErrorClass::InternalServer, "worker died (panic)").with_status(500);
        let upstream = guarded(async { Err::<(), _>(said.clone()) }).await;
        assert!(matches!(upstream, Err(CallError::Upstream(e)) if e == said));
    }
}
