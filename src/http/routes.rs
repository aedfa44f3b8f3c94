//! The routes of the HTTP front, with and without `/v1`, and LiteLLM's health routes:
//! `GET /health/liveliness` (the process answers) and `GET /health/readiness` (it can serve:
//! connected to NATS, a worker answers, and — inside a worker — that worker serves). Anything
//! else is a 404 (405 for a wrong method) in the OpenAI error shape.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde_json::json;

use super::{AppState, chat, error, models};

/// How long readiness waits for a worker to answer.
const READINESS_PATIENCE: Duration = Duration::from_secs(2);

/// The router of the HTTP front.
pub fn router(app: Arc<AppState>) -> Router {
    let limit = app.max_body;
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/chat/completions", post(chat::completions))
        .route("/v1/embeddings", post(models::embeddings))
        .route("/embeddings", post(models::embeddings))
        .route("/v1/models", get(models::list))
        .route("/models", get(models::list))
        .route("/v1/models/{*id}", get(models::one))
        .route("/models/{*id}", get(models::one))
        .route("/health/liveliness", get(liveliness))
        .route("/health/readiness", get(readiness))
        .fallback(error::unknown_route)
        .method_not_allowed_fallback(error::wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// `GET /health/liveliness`: LiteLLM's answer, `"I'm alive!"`.
async fn liveliness() -> Response {
    error::json(StatusCode::OK, Bytes::from_static(b"\"I'm alive!\""))
}

/// `GET /health/readiness`: 200 `{"status":"healthy",...}` or 503 `{"status":"unhealthy",
/// "reason":...}`.
async fn readiness(State(app): State<Arc<AppState>>) -> Response {
    let unhealthy = |reason: String| {
        let body = json!({"status": "unhealthy", "reason": reason});
        error::json(StatusCode::SERVICE_UNAVAILABLE, body.to_string().into())
    };
    if let Some(r) = &app.readiness
        && !r.is_ready()
    {
        return unhealthy(format!("this worker is {}", r.state().as_str()));
    }
    let nats = app.backend.nats();
    if nats.connection_state() != async_nats::connection::State::Connected {
        return unhealthy("not connected to NATS".into());
    }
    let asked = app
        .backend
        .request(
            app.backend.subjects().models(),
            async_nats::HeaderMap::new(),
            Bytes::new(),
            READINESS_PATIENCE,
        )
        .await;
    match asked {
        Ok(_) => {
            let body = json!({
                "status": "healthy",
                "nats": "connected",
                "workers": "answering",
                "llmbus_version": env!("CARGO_PKG_VERSION"),
            });
            error::json(StatusCode::OK, body.to_string().into())
        }
        Err(e) => unhealthy(e.message),
    }
    .into_response()
}
