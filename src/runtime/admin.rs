//! The admin subjects a worker serves: `llm.admin.config.push` and `llm.admin.config.rollback`
//! (request/reply, in the workers' queue group, so one worker answers each request).
//!
//! They are how someone without the workers' NATS credentials changes the cluster's config:
//! the request carries `Authorization: Bearer <master key>`; the worker checks it against its
//! own config's `general_settings.master_key` (constant-time, [`crate::auth`]), validates the
//! config as `llmbus config push` does (literal secrets included), and writes the config bucket
//! itself with its own NATS permissions. A worker without a master key refuses every admin
//! request (403): a config names the upstreams that receive the providers' keys, so changing it
//! must never be open. Pushing then needs the workers' NATS credentials (a direct write).
//!
//! Answers: 200 with [`AdminReply`]; else OpenAI's error body with `Llm-Status`: 401 (no or
//! wrong master key), 403 (`no_master_key`), 400 (a body that is not the request, or a config
//! refused: `config_refused`, every reason in the message), 404 (`revision_not_found`), 503 (the
//! bucket cannot be reached). Each request is counted in `llmbus_admin_requests_total{action,
//! status}`; refused keys are logged at warn, never the key.

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use super::{RuntimeError, WorkerContext};
use crate::{
    cluster::config_store::{
        AdminPush, AdminReply, AdminRollback, ConfigStore, PushError, PushOptions, validate,
    },
    telemetry,
    wire::{ApiError, headers},
};

/// What an admin request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Push,
    Rollback,
}

impl Action {
    fn label(self) -> &'static str {
        match self {
            Action::Push => "config_push",
            Action::Rollback => "config_rollback",
        }
    }
}

/// Subscribes to the admin subjects in `queue_group` and answers them until aborted.
pub async fn serve(
    ctx: Arc<WorkerContext>,
    queue_group: String,
) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
    let push = ctx.subjects.admin_config_push();
    let rollback = ctx.subjects.admin_config_rollback();
    let mut subs = Vec::new();
    for (subject, action) in [(push, Action::Push), (rollback, Action::Rollback)] {
        let sub = ctx
            .client
            .queue_subscribe(subject.clone(), queue_group.clone())
            .await
            .map_err(|source| RuntimeError::Subscribe { subject, source })?;
        subs.push(sub.map(move |m| (action, m)));
    }
    let mut all = futures::stream::select_all(subs);
    Ok(tokio::spawn(async move {
        while let Some((action, m)) = all.next().await {
            // One at a time: admin requests are rare, and two pushes at once would race anyway.
            let Some(reply) = m.reply.clone() else {
                continue;
            };
            let (status, body) = match answer(&ctx, action, &m).await {
                Ok(ok) => (
                    200,
                    Bytes::from(serde_json::to_vec(&ok).unwrap_or_default()),
                ),
                Err(e) => (e.status, e.to_json()),
            };
            metrics::counter!(
                telemetry::ADMIN_REQUESTS,
                "action" => action.label(),
                "status" => status.to_string()
            )
            .increment(1);
            let mut h = HeaderMap::new();
            h.insert(headers::STATUS, status.to_string().as_str());
            if let Err(e) = ctx.client.publish_with_headers(reply, h, body).await {
                tracing::warn!(error = %e, "answering an admin request");
            }
        }
    }))
}

/// Checks the key, reads the request, writes the bucket.
async fn answer(
    ctx: &WorkerContext,
    action: Action,
    m: &async_nats::Message,
) -> Result<AdminReply, ApiError> {
    let auth = ctx.settings.load().auth.clone();
    if !auth.required() {
        tracing::warn!(
            action = action.label(),
            "refused an admin request: this worker has no master key"
        );
        return Err(ApiError::new(
            403,
            "permission_error",
            "This worker's config has no general_settings.master_key, so nobody may change the \
             cluster's config through the admin subjects; push with the workers' NATS \
             credentials instead (`llmbus config push` without --master-key writes the bucket \
             directly).",
        )
        .with_code("no_master_key"));
    }
    if !auth.is_master(m.headers.as_ref()) {
        tracing::warn!(
            action = action.label(),
            "refused an admin request without the master key"
        );
        return Err(ApiError::unauthorized(
            "The admin subjects need the header `Authorization: Bearer <master key>`.",
        )
        .with_code("invalid_api_key"));
    }
    let store = ConfigStore::open(
        ctx.client.clone(),
        ctx.subjects.prefix(),
        ctx.store.replicas,
    )
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()).with_code("config_store_unavailable"))?;
    let before = store.current().await.ok().flatten();
    let (revision, rollback_of) = match action {
        Action::Push => {
            let req: AdminPush = parse(&m.payload)?;
            let options = PushOptions {
                allow_literal_secrets: req.allow_literal_secrets,
            };
            let pushed = store.push_as(&req.text, &req.source, &req.pushed_by, &options);
            (pushed.await?, None)
        }
        Action::Rollback => {
            let req: AdminRollback = parse(&m.payload)?;
            let options = PushOptions {
                allow_literal_secrets: req.allow_literal_secrets,
            };
            let by = "llm.admin.config.rollback (master key)";
            let made = store.rollback_as(req.revision, by, &options);
            (made.await?, Some(req.revision))
        }
    };
    let stored = store
        .revision(revision)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::unavailable("the new revision could not be read back"))?;
    // Validated when it was written: this only reads what the check found.
    let everything = PushOptions {
        allow_literal_secrets: true,
    };
    let valid = validate(&stored.text, &stored.source, &everything)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(
        action = action.label(),
        revision,
        fingerprint = %stored.fingerprint,
        "the cluster's config was changed through the admin subject"
    );
    Ok(AdminReply {
        revision,
        bucket: store.bucket().to_owned(),
        same_as: before
            .filter(|b| b.fingerprint == stored.fingerprint)
            .map(|b| b.revision),
        rollback_of,
        fingerprint: stored.fingerprint,
        deployments: valid.deployments,
        notes: valid.notes,
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // The position only: serde's message may quote what was sent.
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the admin request is not JSON of its shape (line {}, column {}); see \
             schemas/README.md, Admin subjects",
            e.line(),
            e.column()
        ))
    })
}

/// A store's refusal as the caller's error: the one conversion of the config store's errors
/// into the reply's.
impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Refused(r) => {
                ApiError::bad_request(r.to_string()).with_code("config_refused")
            }
            PushError::NoSuchRevision(_) => {
                ApiError::new(404, "invalid_request_error", e.to_string())
                    .with_code("revision_not_found")
            }
            PushError::Store(s) => {
                ApiError::unavailable(s.to_string()).with_code("config_store_unavailable")
            }
        }
    }
}
