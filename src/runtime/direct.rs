//! Jobs handed between workers: a job for a model group this worker does not serve goes to a
//! worker that serves it (cluster membership says which), on that worker's own subject
//! (`<prefix>.worker.<id>.completion|embedding`), unchanged and with the requester's reply
//! subject, so the worker that takes it answers the requester directly.
//!
//! Membership lags: a worker killed with `kill -9` stays in the others' views for a few
//! heartbeats. A job published to its subject would get NATS's empty "no responders" status
//! (or nothing at all), which the requester cannot tell from an answer. So before a job goes,
//! the chosen worker is *probed*: a request with the [`PROBE`] header and no body on the same
//! subject, which its endpoint reader answers at once with `Llm-Status: 200` while it serves
//! (`503` while it drains). One that does not answer is skipped for this job — logged and
//! counted (`llmbus_handover_unreachable_total`) — and the next one is tried; a draining one
//! only when no other serves. When none is left, the job answers a 503 `worker_unreachable`
//! in OpenAI's error shape. The probe costs one round trip, on the hand-over path only.
//!
//! The receiving side ([`answer_probe`], and the drain rules in [`super::ingress`]): a worker
//! runs the jobs handed to it while it serves and while it drains (a sender only picks a
//! draining worker when no other serves the group); once it leaves, a job that still reaches
//! its own subject goes on to the shared subject, where another worker takes it.

use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Message, service::Request};
use bytes::Bytes;

use super::{WorkerContext, gate::Phase, job::JobKind};
use crate::{
    policy::routing::random,
    telemetry,
    wire::{ApiError, headers},
};

/// Request header of a probe: "do you take jobs now?" (the value is ignored).
pub const PROBE: &str = "Llm-Probe";

/// How long a probe may take before its worker counts as gone (bounded by the job's deadline).
const PROBE_PATIENCE: Duration = Duration::from_secs(2);

/// What handing a job over came to.
pub(crate) enum HandOver {
    /// A worker that serves the model took it; it answers the requester.
    Sent,
    /// No other worker serves the model (or the job went round too often): not for here.
    NoTaker,
    /// Workers that serve it are listed, but none answered: the job's answer.
    Unreachable(ApiError),
}

/// How a probed worker answered.
enum Reach {
    Serving,
    Draining,
    Gone(String),
}

/// Hands the job `message` (of `kind`, for `model`) to a worker that serves `model` and
/// answers a probe, preferring those not draining. `deadline` bounds the probes.
pub(crate) async fn hand_over(
    ctx: &WorkerContext,
    kind: &'static JobKind,
    message: &Message,
    model: &str,
    deadline: Instant,
) -> HandOver {
    let Some(members) = ctx.members.load_full() else {
        return HandOver::NoTaker;
    };
    let hops = headers::relays_of(message.headers.as_ref());
    let Some(reply) = message.reply.clone() else {
        return HandOver::NoTaker;
    };
    if hops >= headers::MAX_RELAYS {
        return HandOver::NoTaker;
    }
    let view = members.snapshot();
    let mut takers: Vec<String> = view
        .takers(model, &ctx.worker_id)
        .map(str::to_string)
        .collect();
    if takers.is_empty() {
        return HandOver::NoTaker;
    }
    // A random order spreads the jobs over the workers that serve the model.
    let offset = (random() * takers.len() as f64) as usize % takers.len();
    takers.rotate_left(offset);
    let mut draining = None;
    let mut gone = 0;
    for target in &takers {
        match probe(ctx, kind, target, deadline).await {
            Reach::Serving => return send(ctx, kind, message, reply, hops, target, model).await,
            Reach::Draining => {
                draining.get_or_insert(target);
            }
            Reach::Gone(why) => {
                gone += 1;
                tracing::warn!(worker = %target, model = %model, reason = %why, "a worker listed as serving the model did not answer; it may have stopped (the membership drops it within a few heartbeats)");
                metrics::counter!(telemetry::HANDOVER_UNREACHABLE).increment(1);
            }
        }
    }
    if let Some(target) = draining {
        return send(ctx, kind, message, reply, hops, target, model).await;
    }
    HandOver::Unreachable(
        ApiError::unavailable(format!(
            "model `{}` is served only by other workers, and none of them answered ({gone} \
             listed as members did not; they may have stopped); retry shortly",
            crate::wire::error::echo(model)
        ))
        .with_code("worker_unreachable"),
    )
}

/// Asks `target` whether it takes jobs now.
async fn probe(
    ctx: &WorkerContext,
    kind: &'static JobKind,
    target: &str,
    deadline: Instant,
) -> Reach {
    let patience = PROBE_PATIENCE.min(deadline.saturating_duration_since(Instant::now()));
    let mut h = HeaderMap::new();
    h.insert(PROBE, "1");
    let subject = ctx.subjects.direct(target, kind.name());
    let asked = ctx.client.request_with_headers(subject, h, Bytes::new());
    match tokio::time::timeout(patience, asked).await {
        Ok(Ok(answer)) => {
            let status = answer
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::STATUS))
                .map(|v| v.as_str().to_string());
            match status.as_deref() {
                Some("200") => Reach::Serving,
                Some("503") => Reach::Draining,
                other => Reach::Gone(format!("its probe answer has status {other:?}")),
            }
        }
        Ok(Err(e)) => Reach::Gone(e.to_string()),
        Err(_) => Reach::Gone(format!("no answer to a probe within {patience:?}")),
    }
}

/// Publishes the job to `target`'s own subject, with the requester's reply subject.
async fn send(
    ctx: &WorkerContext,
    kind: &'static JobKind,
    message: &Message,
    reply: async_nats::Subject,
    hops: u32,
    target: &str,
    model: &str,
) -> HandOver {
    let mut h = message.headers.clone().unwrap_or_default();
    h.insert(headers::RELAYED, (hops + 1).to_string().as_str());
    let subject = ctx.subjects.direct(target, kind.name());
    match ctx
        .client
        .publish_with_reply_and_headers(subject, reply, h, message.payload.clone())
        .await
    {
        Ok(()) => {
            tracing::debug!(model = %model, worker = %target, "handed the job to a worker that serves its model");
            metrics::counter!(telemetry::HANDED_OVER).increment(1);
            HandOver::Sent
        }
        Err(e) => HandOver::Unreachable(
            ApiError::unavailable(format!(
                "handing the job to a worker that serves model `{}` failed: {e}; retry shortly",
                crate::wire::error::echo(model)
            ))
            .with_code("worker_unreachable"),
        ),
    }
}

/// True when `request` is a probe, not a job.
pub(crate) fn is_probe(request: &Request) -> bool {
    request
        .message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(PROBE).is_some())
}

/// Answers a probe: `200` while this worker serves, `503` once it drains or leaves.
pub(crate) async fn answer_probe(request: &Request, phase: Phase) {
    let status = if phase == Phase::Serving {
        "200"
    } else {
        "503"
    };
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, status);
    let _ = request.respond_with_headers(Ok(Bytes::new()), h).await;
}
