//! The connections of the HTTP front: the accept loop, the connection cap and the timeouts.
//!
//! `axum::serve` runs hyper without a timer, so a client that sends half a request header, or
//! opens a connection and sends nothing, holds a file descriptor and memory for ever. Here each
//! connection is served by hyper-util's `auto` builder (HTTP/1.1 and HTTP/2, hyper's own timer
//! on) over a [`Watched`] socket that enforces, per connection:
//!
//! - **idle** (`llmbus.http_idle_timeout_secs`): no request in flight and no byte of a new one
//!   arriving — a fresh connection that sends nothing, or a keep-alive connection between
//!   requests; also a reply the client stops reading (no byte written for that long);
//! - **header** (`llmbus.http_header_timeout_secs`): from the first byte of a request to the
//!   end of its headers;
//! - **body** (`llmbus.http_body_timeout_secs`): from the end of the headers to the end of the
//!   body; past it the request is answered 408 and the connection closed.
//!
//! Past `llmbus.http_max_connections` connections, a new one is accepted, answered at once with
//! a 503 (`Connection: close`, the OpenAI error body, code `too_many_connections`) and closed;
//! the connections already open are not disturbed.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use axum::{Router, body::Body, response::Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
    time::{Instant, Sleep},
};
use tower::Service;

use crate::{telemetry, wire::ApiError};

/// How long connections may wait, and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// From the first byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// From the end of a request's headers to the end of its body.
    pub body_timeout: Duration,
    /// With no request in flight and no byte arriving, or no byte of a reply written.
    pub idle_timeout: Duration,
    /// Connections open at once; past it a new one is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// Refused connections that get their 503 at once; past it, further refused connections are
/// closed without one until some of these are done.
const REFUSALS_AT_ONCE: usize = 256;
/// How long a refused connection is kept to read what the client sent (so that closing it does
/// not reset the connection before the client reads the 503).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stopped` turns true, then lets the connections finish
/// their requests (each closes once its requests are answered).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    mut stopped: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is this module's (it starts at a request's first byte, not when the
    // connection turns idle); hyper's timer still serves HTTP/2 keep-alive.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut conns = JoinSet::new();
    let mut accept_errors = Quiet::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopping(&mut stopped) => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, most often: the pending connection stays queued.
                if accept_errors.due() {
                    tracing::warn!(error = %e, "the HTTP front cannot accept a connection");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let conn = Connection {
                    builder: builder.clone(),
                    router: router.clone(),
                    limits,
                    _open: Open::new(permit),
                };
                conns.spawn(conn.run(tcp, stopped.clone()));
            }
            Err(_) => refuse(tcp, &refusals, limits.max_connections),
        }
    }
    // No new connections from now on (they are refused by the OS, not left waiting).
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves once `stopped` turns true (or its sender is gone).
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// One accepted connection within the cap.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: ConnLimits,
    _open: Open,
}

impl Connection {
    async fn run(self, tcp: TcpStream, mut stopped: watch::Receiver<bool>) {
        let phase = Arc::new(Mutex::new(Phase::idle()));
        let io = TokioIo::new(Watched::new(tcp, phase.clone(), self.limits));
        let service = Requests {
            router: self.router,
            phase,
            body_timeout: self.limits.body_timeout,
        };
        let conn = self.builder.serve_connection(io, service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stopping(&mut stopped) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "an HTTP connection ended");
        }
    }
}

/// An open connection: its place under the cap and the gauge, given back when dropped.
struct Open(#[allow(dead_code)] OwnedSemaphorePermit);

impl Open {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(telemetry::HTTP_CONNECTIONS).increment(1.0);
        Self(permit)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::HTTP_CONNECTIONS).decrement(1.0);
    }
}

/// A connection over the cap: a 503 and close, or — past [`REFUSALS_AT_ONCE`] — close alone.
fn refuse(mut tcp: TcpStream, refusals: &Arc<Semaphore>, max: usize) {
    metrics::counter!(telemetry::HTTP_REFUSED).increment(1);
    static LOG: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    if Quiet::shared(&LOG) {
        tracing::warn!(
            max_connections = max,
            "the HTTP front is at llmbus.http_max_connections: new connections get a 503"
        );
    }
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let body = ApiError::unavailable(format!(
            "this llmbus HTTP front has {max} connections open, its limit \
             (llmbus.http_max_connections); try again shortly"
        ))
        .with_code("too_many_connections")
        .to_json();
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
            body.len()
        );
        let answer = async {
            tcp.write_all(head.as_bytes()).await?;
            tcp.write_all(&body).await?;
            tcp.shutdown().await?;
            // Read what the client sent, so that the close does not reset the connection
            // before the client has read the answer.
            let mut sink = [0u8; 4096];
            loop {
                if tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? == 0 {
                    return Ok::<_, io::Error>(());
                }
            }
        };
        let _ = tokio::time::timeout(REFUSAL_LINGER, answer).await;
    });
}

/// At most one log line a second (a flood must not flood the log).
#[derive(Default)]
struct Quiet(Option<std::time::Instant>);

impl Quiet {
    fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        let due = self.0.is_none_or(|t| now >= t + Duration::from_secs(1));
        if due {
            self.0 = Some(now);
        }
        due
    }

    fn shared(cell: &Mutex<Option<std::time::Instant>>) -> bool {
        let mut g = cell.lock().unwrap_or_else(|e| e.into_inner());
        let mut q = Quiet(*g);
        let due = q.due();
        *g = q.0;
        due
    }
}

/// Where a connection is between requests; shared by its socket and its requests.
#[derive(Debug)]
struct Phase {
    /// Requests in flight (until their response body is done or dropped).
    in_flight: u32,
    /// When the last request ended (or the connection opened).
    idle_since: Instant,
    /// When the first byte of the next request arrived, while none is in flight.
    head_from: Option<Instant>,
    /// The socket's reader, parked while a request was in flight (no read deadline then):
    /// woken when the last request ends, so that it arms the idle timer.
    reader: Option<Waker>,
}

impl Phase {
    fn idle() -> Self {
        Self {
            in_flight: 0,
            idle_since: Instant::now(),
            head_from: None,
            reader: None,
        }
    }
}

fn lock(phase: &Mutex<Phase>) -> std::sync::MutexGuard<'_, Phase> {
    phase.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a connection was cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Idle,
    Header,
    WriteStall,
}

impl Cut {
    fn as_str(self) -> &'static str {
        match self {
            Cut::Idle => "idle_timeout",
            Cut::Header => "header_timeout",
            Cut::WriteStall => "write_stall",
        }
    }
}

/// A socket that fails with `TimedOut` when the connection idles too long, a request's headers
/// take too long, or a reply's bytes stop going out.
struct Watched {
    tcp: TcpStream,
    phase: Arc<Mutex<Phase>>,
    limits: ConnLimits,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// When writes started to wait, while they do.
    write_stalled: Option<Instant>,
}

impl Watched {
    fn new(tcp: TcpStream, phase: Arc<Mutex<Phase>>, limits: ConnLimits) -> Self {
        Self {
            tcp,
            phase,
            limits,
            read_timer: None,
            write_timer: None,
            write_stalled: None,
        }
    }

    /// The read deadline now, and what it is for: none while a request is in flight (the
    /// reader is then woken when it ends, by `cx`'s waker).
    fn read_deadline(&self, cx: &Context<'_>) -> Option<(Instant, Cut)> {
        let mut p = lock(&self.phase);
        if p.in_flight > 0 {
            p.reader = Some(cx.waker().clone());
            return None;
        }
        Some(match p.head_from {
            Some(t) => (t + self.limits.header_timeout, Cut::Header),
            None => (p.idle_since + self.limits.idle_timeout, Cut::Idle),
        })
    }
}

/// Polls `timer` set to `deadline`; `Ready` once it passed.
fn expired(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    if Instant::now() >= deadline {
        return true;
    }
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if t.deadline() != deadline {
        t.as_mut().reset(deadline);
    }
    t.as_mut().poll(cx).is_ready()
}

fn timed_out(cut: Cut) -> io::Error {
    metrics::counter!(telemetry::HTTP_CONNECTIONS_CUT, "reason" => cut.as_str()).increment(1);
    tracing::debug!(reason = cut.as_str(), "an HTTP connection was cut");
    io::Error::new(io::ErrorKind::TimedOut, cut.as_str())
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut p = lock(&this.phase);
                    if p.in_flight == 0 && p.head_from.is_none() {
                        p.head_from = Some(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.read_deadline(cx) {
                Some((deadline, cut)) if expired(&mut this.read_timer, deadline, cx) => {
                    Poll::Ready(Err(timed_out(cut)))
                }
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, data);
        this.stall(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.stall(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl Watched {
    /// A write that waits longer than the idle timeout fails: the client stopped reading.
    fn stall(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if !r.is_pending() {
            self.write_stalled = None;
            return r;
        }
        let since = *self.write_stalled.get_or_insert_with(Instant::now);
        if expired(&mut self.write_timer, since + self.limits.idle_timeout, cx) {
            return Poll::Ready(Err(timed_out(Cut::WriteStall)));
        }
        Poll::Pending
    }
}

/// The requests of one connection: the router, with each request counted in flight until its
/// response body is done, and each request body given the body timeout.
#[derive(Clone)]
struct Requests {
    router: Router,
    phase: Arc<Mutex<Phase>>,
    body_timeout: Duration,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Requests {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Busy::new(self.phase.clone());
        let deadline = Instant::now() + self.body_timeout;
        let req = req.map(|b| {
            Body::new(Timed {
                inner: b,
                deadline,
                limit: self.body_timeout,
                timer: None,
            })
        });
        let fut = self.router.clone().call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(response.map(|b| {
                Body::new(Counted {
                    inner: b,
                    _busy: busy,
                })
            }))
        })
    }
}

/// One request in flight on a connection.
struct Busy(Arc<Mutex<Phase>>);

impl Busy {
    fn new(phase: Arc<Mutex<Phase>>) -> Self {
        {
            let mut p = lock(&phase);
            p.in_flight += 1;
            p.head_from = None;
        }
        Self(phase)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut p = lock(&self.0);
        p.in_flight = p.in_flight.saturating_sub(1);
        if p.in_flight == 0 {
            p.idle_since = Instant::now();
            p.head_from = None;
            // A reader parked while the request ran must now arm the idle timer.
            if let Some(reader) = p.reader.take() {
                reader.wake();
            }
        }
    }
}

/// A response body that keeps its request counted in flight until it is done or dropped.
struct Counted {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body did not arrive whole within `llmbus.http_body_timeout_secs`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (llmbus.http_body_timeout_secs)")]
pub struct BodyTimeout(Duration);

/// A request body that fails with [`BodyTimeout`] past its deadline.
struct Timed {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for Timed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if expired(&mut this.timer, this.deadline, cx) => {
                metrics::counter!(telemetry::HTTP_CONNECTIONS_CUT, "reason" => "body_timeout")
                    .increment(1);
                Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// True when `e` (a body read error, through its sources) is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct Woken(AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_last_request_ending_wakes_the_parked_reader_to_arm_the_idle_timer() {
        // A reader polled while a request ran has no deadline; had nothing woken it when the
        // request ended, a keep-alive connection would stay open for ever (seen under load).
        let phase = Arc::new(Mutex::new(Phase::idle()));
        let first = Busy::new(phase.clone());
        let second = Busy::new(phase.clone());
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = Waker::from(woken.clone());
        // What `Watched::read_deadline` does for a reader polled while a request runs.
        lock(&phase).reader = Some(waker);
        assert_eq!(lock(&phase).in_flight, 2);
        drop(first);
        assert!(!woken.0.load(Ordering::SeqCst), "a request still runs");
        drop(second);
        assert!(woken.0.load(Ordering::SeqCst), "the reader is woken");
        assert!(lock(&phase).reader.is_none());
    }
}
