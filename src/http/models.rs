//! `POST /v1/embeddings` (to `<prefix>.embedding`, one reply), `GET /v1/models` (the
//! `<prefix>.models` list, unchanged) and `GET /v1/models/{id}` (one entry of it, or OpenAI's
//! 404 `model_not_found`).

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use bytes::Bytes;

use super::{
    AppState,
    backend::JobKind,
    chat::{answer_one, reply_response, submit},
    error::{HttpError, body_rejected, json},
};
use crate::wire::{ApiError, openai::ModelList};

/// How long the front waits for a worker to list the models.
const MODELS_PATIENCE: Duration = Duration::from_secs(10);

/// The embeddings route.
pub async fn embeddings(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_rejected(r, app.max_body).into_response(),
    };
    let parsed = app
        .backend
        .runs_locally()
        .then(|| JobKind::Embedding.row().preparse(&body).ok())
        .flatten();
    match submit(&app, JobKind::Embedding, &headers, body, parsed).await {
        Ok((job, deadline)) => answer_one(job, deadline, started).await,
        Err(e) => HttpError(e).into_response(),
    }
}

/// `GET /v1/models`.
pub async fn list(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let started = std::time::Instant::now();
    match app.models(&headers).await {
        Ok(reply) => reply_response(&reply, started.elapsed()),
        Err(e) => HttpError(e).into_response(),
    }
}

/// `GET /v1/models/{id}`; the id may hold slashes (`openai/gpt-4o`).
pub async fn one(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = std::time::Instant::now();
    let reply = match app.models(&headers).await {
        Ok(r) => r,
        Err(e) => return HttpError(e).into_response(),
    };
    if reply.status != 200 {
        return reply_response(&reply, started.elapsed());
    }
    let list: ModelList = match serde_json::from_slice(&reply.body) {
        Ok(l) => l,
        Err(e) => {
            return HttpError(ApiError::bad_gateway(format!(
                "the worker's model list did not parse: {e}"
            )))
            .into_response();
        }
    };
    match list.data.into_iter().find(|m| m.id == id) {
        Some(model) => match serde_json::to_vec(&model) {
            Ok(body) => json(StatusCode::OK, body.into()),
            Err(e) => HttpError(ApiError::internal(e.to_string())).into_response(),
        },
        None => HttpError(ApiError::model_not_found(&short(&id))).into_response(),
    }
}

impl AppState {
    /// The `<prefix>.models` reply, asked with the request's key (so a worker that checks keys
    /// sees the same one as for a job).
    async fn models(&self, headers: &HeaderMap) -> Result<crate::client::Reply, ApiError> {
        let job_headers = super::headers::to_job(headers)?;
        self.backend
            .request(
                self.backend.subjects().models(),
                job_headers.nats,
                Bytes::new(),
                MODELS_PATIENCE,
            )
            .await
    }
}

/// At most 100 characters of a caller's model id, marked when cut.
fn short(id: &str) -> String {
    match id.char_indices().nth(100) {
        Some((i, _)) => format!("{}… (cut)", &id[..i]),
        None => id.to_string(),
    }
}
