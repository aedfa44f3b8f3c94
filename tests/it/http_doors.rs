//! The HTTP front's side doors, over real sockets against a private nats-server, an in-process
//! worker and a fake provider on loopback:
//!
//! - a connection that sends half a request header is closed after the header timeout;
//! - a keep-alive connection with nothing in flight is closed after the idle timeout, and so
//!   is a fresh connection that sends nothing;
//! - a request body that does not arrive in time is a 408 `body_timeout`;
//! - past `http_max_connections`, a new connection gets a 503 `too_many_connections` and the
//!   open ones go on; once one closes, new connections are served again;
//! - a stream whose reader stops reading fills its buffer, and its job is cancelled upstream:
//!   the deployment's capacity comes back;
//! - the `x-ratelimit-*` headers of a deployment with `rpm`/`tpm`, on HTTP (plain and streamed)
//!   and on NATS replies; none for a deployment without limits;
//! - the `llmbus.http_*` settings are read from the config.
//!
//! Timeouts here are short (hundreds of milliseconds) so the tests are quick; every wait for
//! the server is bounded by a generous patience, and nothing asserts how long anything took.

use std::time::Duration;

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    http_front::HttpGateway,
};
use llmbus::{
    config::Config,
    http::{ConnLimits, HttpSettings},
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PATIENCE: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(3600);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

fn settings(conn: ConnLimits) -> HttpSettings {
    HttpSettings {
        conn,
        ..HttpSettings::default()
    }
}

fn limits(header: Duration, body: Duration, idle: Duration, max: usize) -> ConnLimits {
    ConnLimits {
        header_timeout: header,
        body_timeout: body,
        idle_timeout: idle,
        max_connections: max,
    }
}

async fn gateway(settings: HttpSettings, deployment_extra: &str) -> (FakeProvider, HttpGateway) {
    let fake = FakeProvider::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: fake
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{url}", api_key: sk-upstream}}
    model_info: {{id: fake-1}}
  - model_name: limited
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{url}", api_key: sk-upstream{deployment_extra}}}
    model_info: {{id: limited-1}}
router_settings:
  num_retries: 0
"#,
        url = fake.url(),
    );
    let gw = HttpGateway::start_with(&yaml, settings).await;
    (fake, gw)
}

fn addr(gw: &HttpGateway) -> String {
    gw.base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (EOF or reset); everything read, or `None`
/// when it is still open after [`PATIENCE`].
async fn read_to_close(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until `needle` appeared; panics after [`PATIENCE`] or at EOF.
async fn read_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} within {PATIENCE:?}: {}",
                    tail(&String::from_utf8_lossy(&all))
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            tail(&String::from_utf8_lossy(&all))
        );
        all.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&all);
        if text.contains(needle) {
            return text.into_owned();
        }
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(600);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    &s[start..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_is_closed_after_the_header_timeout() {
    let ms = Duration::from_millis;
    let (_fake, gw) = gateway(settings(limits(ms(300), LONG, LONG, 100)), "").await;
    let mut tcp = TcpStream::connect(addr(&gw)).await.unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        .await
        .unwrap();
    // Only the header timeout can close it: the idle timeout is an hour.
    let read = read_to_close(&mut tcp).await;
    assert!(
        read.is_some(),
        "a half header is still open after {PATIENCE:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let ms = Duration::from_millis;
    let (_fake, gw) = gateway(settings(limits(LONG, LONG, ms(300), 100)), "").await;

    // A keep-alive connection after its request.
    let mut tcp = TcpStream::connect(addr(&gw)).await.unwrap();
    tcp.write_all(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(&mut tcp, "I'm alive!").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"));
    let rest = read_to_close(&mut tcp).await;
    assert_eq!(
        rest.as_deref(),
        Some(&b""[..]),
        "an idle keep-alive connection is closed, with nothing more sent"
    );

    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(addr(&gw)).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_some());

    // The front still serves.
    let r = http()
        .get(format!("{}/health/liveliness", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_is_a_408() {
    let ms = Duration::from_millis;
    let (fake, gw) = gateway(settings(limits(LONG, ms(300), LONG, 100)), "").await;
    let mut tcp = TcpStream::connect(addr(&gw)).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 500\r\n\r\n{\"model\": \"fake\",",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut tcp)
        .await
        .expect("the connection is closed after the 408");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
    assert_eq!(fake.request_count(), 0, "no job went out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_new_connection_gets_a_503() {
    let (_fake, gw) = gateway(settings(limits(LONG, LONG, LONG, 2)), "").await;
    // Two connections hold the cap; a request on the first proves they are being served.
    let mut first = TcpStream::connect(addr(&gw)).await.unwrap();
    first
        .write_all(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut first, "I'm alive!").await;
    let second = TcpStream::connect(addr(&gw)).await.unwrap();

    let mut third = TcpStream::connect(addr(&gw)).await.unwrap();
    third
        .write_all(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let refused = read_to_close(&mut third)
        .await
        .expect("a refusal, then close");
    let text = String::from_utf8_lossy(&refused);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too_many_connections"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );

    // The open connections are not disturbed.
    first
        .write_all(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut first, "I'm alive!").await;

    // Once one closes, a new connection is served again.
    drop(second);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = reqwest::Client::new()
            .get(format!("{}/health/liveliness", gw.base))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after a connection closed"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_has_its_job_cancelled() {
    let s = HttpSettings {
        stream_buffer: 8,
        ..HttpSettings::default()
    };
    // One call at a time: the stalled stream holds the deployment until it is cancelled.
    let (fake, gw) = gateway(s, ", max_parallel_requests: 1").await;
    fake.push(Fault::Endless {
        piece: "x".repeat(1024),
        gap: Duration::from_millis(1),
    });
    // A small receive window, so the socket buffers fill soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr(&gw).parse().unwrap()).await.unwrap();
    let body = json!({"model": "limited", "stream": true,
        "messages": [{"role": "user", "content": "go on"}]})
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    // Not a byte is read: the buffer fills and the worker stops the upstream call.
    fake.wait_for_cut_bodies(1, PATIENCE).await;

    // The deployment's one slot came back: the next call is served.
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&json!({"model": "limited", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    // Reading again, the stalled client finds what was held, then the reason.
    let text = read_until(&mut tcp, "stream_buffer_full").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{}", tail(&text));
}

const RATE_HEADERS: [&str; 6] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_carry_the_deployment_s_rate_limits() {
    let (_fake, gw) = gateway(HttpSettings::default(), ", rpm: 100, tpm: 50000").await;
    let ask = |model: &str, stream: bool| {
        http()
            .post(format!("{}/v1/chat/completions", gw.base))
            .json(&json!({"model": model, "stream": stream,
                "messages": [{"role": "user", "content": "hello there"}]}))
            .send()
    };

    // HTTP, plain.
    let r = ask("limited", false).await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let get = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(get("x-ratelimit-limit-requests").as_deref(), Some("100"));
    assert_eq!(get("x-ratelimit-limit-tokens").as_deref(), Some("50000"));
    let remaining: u64 = get("x-ratelimit-remaining-requests")
        .unwrap()
        .parse()
        .unwrap();
    assert!((90..100).contains(&remaining), "{remaining}");
    let tokens: u64 = get("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens < 50000, "{tokens}");
    let reset = get("x-ratelimit-reset-requests").unwrap();
    assert!(reset.ends_with('s'), "{reset}");
    assert!(get("x-ratelimit-reset-tokens").is_some());

    // HTTP, streamed: the headers come with the status line.
    let r = ask("limited", true).await.unwrap();
    assert_eq!(r.status(), 200);
    for name in RATE_HEADERS {
        assert!(r.headers().contains_key(name), "{name} on a stream");
    }
    let _ = r.text().await;

    // A deployment without limits has none.
    let r = ask("fake", false).await.unwrap();
    assert_eq!(r.status(), 200);
    for name in RATE_HEADERS {
        assert!(!r.headers().contains_key(name), "{name} without limits");
    }

    // NATS: the reply headers.
    let nc = gw.nats.client().await;
    let body = json!({"model": "limited", "messages": [{"role": "user", "content": "hi"}]});
    let reply = tokio::time::timeout(
        PATIENCE,
        nc.request("llm.completion", body.to_string().into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply");
    let h = reply.headers.expect("reply headers");
    assert_eq!(h.get("Llm-Status").unwrap().as_str(), "200");
    assert_eq!(h.get("x-ratelimit-limit-requests").unwrap().as_str(), "100");
    let left: u64 = h
        .get("x-ratelimit-remaining-requests")
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    assert!(left < 100, "{left}");
    for name in RATE_HEADERS {
        assert!(h.get(name).is_some(), "{name} on NATS");
    }
    let plain = json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}]});
    let reply = nc
        .request("llm.completion", plain.to_string().into())
        .await
        .unwrap();
    let h = reply.headers.expect("reply headers");
    assert!(h.get("x-ratelimit-limit-requests").is_none());
}

#[test]
fn the_http_settings_come_from_the_config() {
    let yaml = r#"
model_list: []
llmbus:
  http_header_timeout_secs: 2.5
  http_body_timeout_secs: 30
  http_idle_timeout_secs: 90
  http_max_connections: 123
  http_stream_buffer: 64
"#;
    let config = Config::from_yaml(yaml, "t.yaml").unwrap().config;
    let s = HttpSettings::from_config(&config).unwrap();
    assert_eq!(s.conn.header_timeout, Duration::from_millis(2500));
    assert_eq!(s.conn.body_timeout, Duration::from_secs(30));
    assert_eq!(s.conn.idle_timeout, Duration::from_secs(90));
    assert_eq!(s.conn.max_connections, 123);
    assert_eq!(s.stream_buffer, 64);
    let d = HttpSettings::from_config(&Config::default()).unwrap();
    assert_eq!(d.conn, ConnLimits::default());

    let bad = "model_list: []\nllmbus:\n  http_max_connections: 0\n";
    let Err(e) = Config::from_yaml(bad, "t.yaml") else {
        panic!("refused")
    };
    assert!(e.to_string().contains("http_max_connections"), "{e}");
    let bad = "model_list: []\nllmbus:\n  http_idle_timeout_secs: -1\n";
    let Err(e) = Config::from_yaml(bad, "t.yaml") else {
        panic!("refused")
    };
    assert!(e.to_string().contains("http_idle_timeout_secs"), "{e}");
}
