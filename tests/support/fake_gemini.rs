//! A fake Google Gemini API: a real HTTP server on `127.0.0.1:0` speaking Gemini's wire format
//! for AI Studio and Vertex AI, plus a fake OAuth 2.0 token endpoint for service accounts.
//!
//! ```ignore
//! let fake = FakeGemini::start("test-key").await;
//! fake.expect_service_account(CLIENT_EMAIL, public_key_der);
//! // AI Studio deployments: api_base = fake.url(); Vertex AI: api_base = fake.url() and a key
//! // file whose token_uri = fake.token_url().
//! fake.push(Reply::Error { http: 429, status: "RESOURCE_EXHAUSTED".into(), ... });
//! ```
//!
//! **Routes** (every request is recorded, whatever happens to it):
//! - `POST /v1beta/models/{model}:{method}` (AI Studio): needs `x-goog-api-key` equal to the
//!   fake's key, else Google's 400 `API_KEY_INVALID`.
//! - `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}` (Vertex
//!   AI): needs `Authorization: Bearer <a token this fake issued>`, else 401 `UNAUTHENTICATED`.
//! - Methods: `generateContent`; `streamGenerateContent` (with `alt=sse`: `data: {json}\n\n`
//!   events, no `[DONE]`); `batchEmbedContents`; `predict` (Vertex embeddings).
//! - `POST /token`: the JWT-bearer exchange. It decodes the assertion, checks `alg`, `iss`,
//!   `scope`, `aud` (= [`FakeGemini::token_url`]), `exp - iat = 3600`, `iat` near now, and the
//!   RS256 signature with the public key from [`FakeGemini::expect_service_account`]; on
//!   success it answers `{"access_token": "ya29.fake-<n>", "expires_in": 3599}`. Failed checks
//!   are answered `400 invalid_grant` and kept in [`FakeGemini::jwt_failures`].
//!
//! **Default answer** ([`Reply::Echo`]): the text `"echo: <text of the last user turn>"`,
//! `finishReason: STOP`, `usageMetadata` with `promptTokenCount` = ⌈chars of all text parts/4⌉,
//! `candidatesTokenCount` = the answer's word count. A stream sends one event per word-sized
//! piece (pieces concatenate to the text), usage on every event, `finishReason` on the last.
//! Embeddings: vector `i` of a request is `[chars of text, 0.5, 0.25, …]`, `outputDimensionality`
//! long (default 3); `predict` reports `token_count` = the word count.
//!
//! Replies queued with [`FakeGemini::push`] are used first, one per generate/stream/embed call.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery, State},
    http::{HeaderMap, header},
    response::Response,
    routing::post,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// What the fake answers to one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The default echo answer.
    Echo,
    /// 200 with this `GenerateContentResponse` (a stream sends it as its one event).
    Json(Value),
    /// A stream of these events (a non-stream call gets the last one).
    Events(Vec<Value>),
    /// Google's error body `{"error": {"code", "message", "status"}}` with HTTP `http`, and a
    /// `RetryInfo` detail when `retry_delay` is set (`"3s"`).
    Error {
        /// The HTTP status.
        http: u16,
        /// The canonical status (`RESOURCE_EXHAUSTED`, ...).
        status: String,
        /// The message.
        message: String,
        /// A `RetryInfo.retryDelay`.
        retry_delay: Option<String>,
    },
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The path.
    pub path: String,
    /// The raw query string.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The JSON body (`Null` when not JSON; the raw form for `/token`).
    pub body: Value,
}

impl Recorded {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct FakeState {
    requests: Vec<Recorded>,
    queue: VecDeque<Reply>,
    api_key: String,
    service_account: Option<(String, Vec<u8>)>,
    issued: Vec<String>,
    token_requests: usize,
    jwt_failures: Vec<String>,
}

struct Shared {
    state: Mutex<FakeState>,
    addr: Mutex<Option<SocketAddr>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake; dropping it stops the server.
pub struct FakeGemini {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGemini {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGemini {
    /// Starts a fake whose AI Studio routes accept `api_key`.
    pub async fn start(api_key: &str) -> FakeGemini {
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                requests: Vec::new(),
                queue: VecDeque::new(),
                api_key: api_key.to_owned(),
                service_account: None,
                issued: Vec::new(),
                token_requests: 0,
                jwt_failures: Vec::new(),
            }),
            addr: Mutex::new(None),
        });
        let app = Router::new()
            .route("/v1beta/models/{action}", post(ai_studio))
            .route(
                "/v1/projects/{project}/locations/{location}/publishers/google/models/{action}",
                post(vertex),
            )
            .route("/token", post(token))
            .fallback(not_found)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake gemini: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake gemini: local address");
        *shared.addr.lock().unwrap() = Some(addr);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGemini {
            addr,
            shared,
            server,
        }
    }

    /// The base URL (`http://127.0.0.1:<port>`), for `api_base`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint, for a key file's `token_uri`.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Accept JWTs from `client_email` signed by the key whose PKCS#1 public key is `der`.
    pub fn expect_service_account(&self, client_email: &str, der: Vec<u8>) {
        self.shared.lock().service_account = Some((client_email.to_owned(), der));
    }

    /// Queues a reply for the next generate/stream/embed call.
    pub fn push(&self, reply: Reply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The requests to model routes (not `/token`).
    pub fn model_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path != "/token")
            .collect()
    }

    /// The last request to a model route.
    pub fn last_request(&self) -> Option<Recorded> {
        self.model_requests().pop()
    }

    /// How many token requests arrived.
    pub fn token_requests(&self) -> usize {
        self.shared.lock().token_requests
    }

    /// Why token requests were refused.
    pub fn jwt_failures(&self) -> Vec<String> {
        self.shared.lock().jwt_failures.clone()
    }
}

fn record(shared: &Shared, path: String, query: Option<String>, headers: &HeaderMap, body: Value) {
    shared.lock().requests.push(Recorded {
        path,
        query,
        headers: headers.clone(),
        body,
    });
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn google_error(http: u16, status: &str, message: &str, retry_delay: Option<&str>) -> Response {
    let mut error = json!({"code": http, "message": message, "status": status});
    if let Some(delay) = retry_delay {
        error["details"] =
            json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]);
    }
    json_response(http, &json!({"error": error}))
}

async fn not_found(uri: axum::http::Uri, State(shared): State<Arc<Shared>>) -> Response {
    record(
        &shared,
        uri.path().to_owned(),
        None,
        &HeaderMap::new(),
        Value::Null,
    );
    google_error(404, "NOT_FOUND", "Requested entity was not found.", None)
}

async fn ai_studio(
    State(shared): State<Arc<Shared>>,
    Path(action): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(
        &shared,
        format!("/v1beta/models/{action}"),
        query.clone(),
        &headers,
        body.clone(),
    );
    let key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    if key != Some(shared.lock().api_key.as_str()) {
        return json_response(
            400,
            &json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}),
        );
    }
    answer(&shared, &action, query.as_deref(), &body)
}

async fn vertex(
    State(shared): State<Arc<Shared>>,
    Path((project, location, action)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(
        &shared,
        format!("/v1/projects/{project}/locations/{location}/publishers/google/models/{action}"),
        query.clone(),
        &headers,
        body.clone(),
    );
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let known = bearer.is_some_and(|t| shared.lock().issued.contains(&t));
    if !known {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            None,
        );
    }
    answer(&shared, &action, query.as_deref(), &body)
}

fn answer(shared: &Shared, action: &str, query: Option<&str>, body: &Value) -> Response {
    let Some((_model, method)) = action.split_once(':') else {
        return google_error(404, "NOT_FOUND", "Requested entity was not found.", None);
    };
    let reply = shared.lock().queue.pop_front().unwrap_or(Reply::Echo);
    if let Reply::Error {
        http,
        status,
        message,
        retry_delay,
    } = &reply
    {
        return google_error(*http, status, message, retry_delay.as_deref());
    }
    match method {
        "generateContent" => json_response(200, &generate(&reply, body)),
        "streamGenerateContent" if query.is_some_and(|q| q.contains("alt=sse")) => {
            let mut sse = String::new();
            for event in events(&reply, body) {
                sse.push_str(&format!("data: {event}\r\n\r\n"));
            }
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from(sse))
                .unwrap_or_default()
        }
        "batchEmbedContents" => json_response(200, &batch_embed(body)),
        "predict" => json_response(200, &predict(body)),
        _ => google_error(
            400,
            "INVALID_ARGUMENT",
            &format!("fake gemini: unsupported method {method}"),
            None,
        ),
    }
}

/// The text of every text part of the request's contents.
fn all_text(body: &Value) -> String {
    let mut out = String::new();
    for content in body["contents"].as_array().into_iter().flatten() {
        for part in content["parts"].as_array().into_iter().flatten() {
            out.push_str(part["text"].as_str().unwrap_or_default());
        }
    }
    out
}

/// The echo text: `"echo: "` and the text parts of the last user turn.
fn echo_text(body: &Value) -> String {
    let last_user = body["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|c| c["role"] == "user");
    let text: String = last_user
        .and_then(|c| c["parts"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p["text"].as_str())
        .collect();
    format!("echo: {text}")
}

fn usage(body: &Value, answer: &str) -> Value {
    let prompt = all_text(body).chars().count().div_ceil(4);
    let candidates = answer.split_whitespace().count();
    json!({"promptTokenCount": prompt, "candidatesTokenCount": candidates,
           "totalTokenCount": prompt + candidates})
}

fn generate(reply: &Reply, body: &Value) -> Value {
    match reply {
        Reply::Json(v) => v.clone(),
        Reply::Events(list) => list.last().cloned().unwrap_or_default(),
        _ => {
            let text = echo_text(body);
            json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage(body, &text),
                "modelVersion": "fake-gemini",
                "responseId": "fake-response-1"
            })
        }
    }
}

fn events(reply: &Reply, body: &Value) -> Vec<Value> {
    match reply {
        Reply::Json(v) => vec![v.clone()],
        Reply::Events(list) => list.clone(),
        _ => {
            let text = echo_text(body);
            let pieces = pieces(&text);
            let last = pieces.len().saturating_sub(1);
            pieces
                .iter()
                .enumerate()
                .map(|(i, piece)| {
                    let mut candidate =
                        json!({"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0});
                    if i == last {
                        candidate["finishReason"] = json!("STOP");
                    }
                    let so_far: String = pieces[..=i].concat();
                    json!({"candidates": [candidate], "usageMetadata": usage(body, &so_far),
                           "modelVersion": "fake-gemini", "responseId": "fake-stream-1"})
                })
                .collect()
        }
    }
}

/// Word-sized pieces whose concatenation is `text`.
pub fn pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        if i == 0 {
            out.push(word.to_owned());
        } else {
            out.push(format!(" {word}"));
        }
    }
    out
}

fn vector(text: &str, dims: usize) -> Vec<f64> {
    let mut v = vec![text.chars().count() as f64];
    let mut x = 0.5;
    while v.len() < dims {
        v.push(x);
        x /= 2.0;
    }
    v.truncate(dims.max(1));
    v
}

fn batch_embed(body: &Value) -> Value {
    let embeddings: Vec<Value> = body["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let text = r["content"]["parts"][0]["text"]
                .as_str()
                .unwrap_or_default();
            let dims = r["outputDimensionality"].as_u64().unwrap_or(3) as usize;
            json!({"values": vector(text, dims)})
        })
        .collect();
    json!({"embeddings": embeddings})
}

fn predict(body: &Value) -> Value {
    let dims = body["parameters"]["outputDimensionality"]
        .as_u64()
        .unwrap_or(3) as usize;
    let predictions: Vec<Value> = body["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let text = i["content"].as_str().unwrap_or_default();
            json!({"embeddings": {"values": vector(text, dims),
                   "statistics": {"token_count": text.split_whitespace().count(), "truncated": false}}})
        })
        .collect();
    json!({"predictions": predictions})
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let form = String::from_utf8_lossy(&body).into_owned();
    record(
        &shared,
        "/token".into(),
        None,
        &headers,
        Value::String(form.clone()),
    );
    shared.lock().token_requests += 1;
    let aud = shared
        .addr
        .lock()
        .unwrap()
        .map(|a| format!("http://{a}/token"))
        .unwrap_or_default();
    match check_assertion(&shared, &form, &aud) {
        Ok(()) => {
            let mut st = shared.lock();
            let token = format!("ya29.fake-{}", st.issued.len() + 1);
            st.issued.push(token.clone());
            json_response(
                200,
                &json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
            )
        }
        Err(why) => {
            shared.lock().jwt_failures.push(why.clone());
            json_response(
                400,
                &json!({"error": "invalid_grant", "error_description": why}),
            )
        }
    }
}

fn form_pairs(form: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x/?{form}")).expect("form parses as a query");
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn check_assertion(shared: &Shared, form: &str, aud: &str) -> Result<(), String> {
    let pairs = form_pairs(form);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    if get("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Err("wrong grant_type".into());
    }
    let assertion = get("assertion").ok_or("no assertion")?;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts.as_slice() else {
        return Err("the assertion is not a JWS compact serialization".into());
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|e| e.to_string());
    let header: Value = serde_json::from_slice(&decode(header_b64)?).map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&decode(claims_b64)?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" || header["typ"] != "JWT" {
        return Err(format!("unexpected header {header}"));
    }
    let (email, der) = shared
        .lock()
        .service_account
        .clone()
        .ok_or("no service account is expected")?;
    if claims["iss"] != email.as_str() {
        return Err(format!("iss is {}", claims["iss"]));
    }
    if claims["scope"] != "https://www.googleapis.com/auth/cloud-platform" {
        return Err(format!("scope is {}", claims["scope"]));
    }
    if claims["aud"] != aud {
        return Err(format!("aud is {}, expected {aud}", claims["aud"]));
    }
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if exp != iat + 3600 || iat.abs_diff(now) > 120 {
        return Err(format!("iat {iat} / exp {exp} are not now / now + 3600"));
    }
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, der);
    let signed = format!("{header_b64}.{claims_b64}");
    key.verify(signed.as_bytes(), &decode(signature_b64)?)
        .map_err(|_| "bad signature".to_owned())
}
