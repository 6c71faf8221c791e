//! Serving a router on a TCP listener with limits against slow and idle clients; the operations
//! listener and the webhook ingress both use it.
//!
//! - `header_read_timeout`: a request's head (request line and headers) must arrive within it,
//!   counted from when the connection is ready for a request (a new connection, or the end of the
//!   previous response on a kept-alive one); hyper closes the connection otherwise. A client
//!   that sends its headers a byte at a time, or says nothing at all, is cut off there.
//! - `idle_timeout`: a connection on which no byte moves either way for this long is closed, even
//!   mid-request (a body that stops arriving, a client that stops reading its response).
//! - `request_timeout`: a request must be answered within it, counted from its head having
//!   arrived; past it the handler is dropped, the client gets 408 and the connection is closed
//!   (hyper closes it without reading the rest of a body still arriving). This is what bounds a
//!   body trickled a byte just under `idle_timeout` apart, which the idle timer never catches.
//!   Handlers that wait on something slow (the dead-letter listing) keep their own limits well
//!   under it (`api::dead_letter_budget`).
//! - `max_connections`: connections served at once. Beyond it, new connections are not accepted
//!   and wait in the kernel's backlog until one closes; the connections in service go on as usual.
//!
//! On shutdown, connections finish the request they are serving (graceful), for at most
//! `SHUTDOWN_WAIT`; idle ones are closed at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long shutdown waits for the requests in service.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How often "the connection limit is reached" may be logged.
const SATURATION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A listener's connection limits (`header_read_timeout`, `idle_timeout`, `request_timeout`,
/// `max_connections` in `[http]` and in `[ingress]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a request's head may take to arrive.
    pub header_read_timeout: Duration,
    /// The longest a connection may move no byte.
    pub idle_timeout: Duration,
    /// The longest from a request's head to its answer (408 and the connection closed beyond).
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the backlog.
    pub max_connections: usize,
}

impl Limits {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let limits = Self {
            header_read_timeout: section.duration("header_read_timeout"),
            idle_timeout: section.duration("idle_timeout"),
            request_timeout: section.duration("request_timeout"),
            max_connections: section.value("max_connections"),
        };
        section.check(
            "header_read_timeout",
            !limits.header_read_timeout.is_zero(),
            "must be greater than zero (a client could hold a connection forever)",
        );
        section.check(
            "idle_timeout",
            !limits.idle_timeout.is_zero(),
            "must be greater than zero (a client could hold a connection forever)",
        );
        section.check(
            "request_timeout",
            !limits.request_timeout.is_zero(),
            "must be greater than zero (a client trickling a body could hold a connection forever)",
        );
        section.check(
            "max_connections",
            (1..=Semaphore::MAX_PERMITS.min(1 << 20)).contains(&limits.max_connections),
            "must be between 1 and 1048576",
        );
        limits
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`; `name` names the listener in
/// log lines.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: CancellationToken, name: &str) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut saturation_logged: Option<Instant> = None;
    loop {
        if permits.available_permits() == 0
            && saturation_logged.is_none_or(|at| at.elapsed() >= SATURATION_LOG_INTERVAL)
        {
            tracing::warn!(
                listener = name,
                max_connections = limits.max_connections,
                "Connection limit reached: new connections wait until one closes."
            );
            saturation_logged = Some(Instant::now());
        }
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(listener = name, %error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let span = tracing::info_span!("connection", listener = name);
        connections.spawn(connection(stream, router.clone(), limits, shutdown.clone(), permit).instrument(span));
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, connections.wait()).await.is_err() {
        tracing::warn!(listener = name, open = connections.len(), "Connections still open at shutdown; dropped.");
    }
}

/// One connection: HTTP/1.1 with the header timeout, closed when idle, graceful on shutdown.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = hyper_util::rt::TokioIo::new(Watched { inner: stream, activity: Arc::clone(&activity) });
    let request_timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let handled = tower::ServiceExt::oneshot(router.clone(), request.map(Body::new));
        async move {
            match tokio::time::timeout(request_timeout, handled).await {
                Ok(answered) => answered,
                Err(_) => Ok(timed_out(request_timeout)),
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    loop {
        let deadline = activity.last() + limits.idle_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    // Header timeouts, resets, malformed requests: the client's business.
                    tracing::debug!(%error, "Connection closed.");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    tracing::debug!(idle = ?limits.idle_timeout, "Idle connection closed.");
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            () = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, connection).await;
                return;
            }
        }
    }
}

/// The answer to a request not answered within `request_timeout`: 408, and the connection closed
/// after it (a body still arriving is not read further).
fn timed_out(request_timeout: Duration) -> axum::response::Response {
    tracing::debug!(?request_timeout, "Request not answered within its deadline; 408 and closing.");
    let mut response = axum::response::IntoResponse::into_response((
        axum::http::StatusCode::REQUEST_TIMEOUT,
        axum::Json(serde_json::json!({
            "error": format!("the request was not complete and answered within {request_timeout:?}")
        })),
    ));
    response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}

/// When a byte last moved on a connection.
struct Activity {
    start: Instant,
    /// Milliseconds from `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(elapsed, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// A stream that records when bytes move.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, buffers);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{Error, Source};
    use crate::daemon::load;

    fn load_with(env: &[(&str, &str)]) -> Result<crate::daemon::Settings, Error> {
        let env: HashMap<String, String> =
            env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        load(&Source { file: None, env })
    }

    #[test]
    fn both_listeners_have_the_limits_with_their_defaults() {
        let settings = load_with(&[]).unwrap();
        let defaults = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
        };
        assert_eq!(settings.http.connections, defaults);
        assert_eq!(settings.ingress.connections, defaults);
        let settings =
            load_with(&[("ONAIR__INGRESS__IDLE_TIMEOUT", "5s"), ("ONAIR__HTTP__MAX_CONNECTIONS", "16")]).unwrap();
        assert_eq!(settings.ingress.connections.idle_timeout, Duration::from_secs(5));
        assert_eq!(settings.http.connections.max_connections, 16);
        assert_eq!(settings.http.connections.idle_timeout, Duration::from_secs(60));
        let settings = load_with(&[("ONAIR__INGRESS__REQUEST_TIMEOUT", "7s")]).unwrap();
        assert_eq!(settings.ingress.connections.request_timeout, Duration::from_secs(7));
        assert_eq!(settings.http.connections.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn limits_that_would_let_a_client_hold_a_connection_forever_are_problems() {
        let Err(Error::Invalid(problems)) = load_with(&[
            ("ONAIR__HTTP__HEADER_READ_TIMEOUT", "0s"),
            ("ONAIR__INGRESS__IDLE_TIMEOUT", "0s"),
            ("ONAIR__INGRESS__MAX_CONNECTIONS", "0"),
            ("ONAIR__HTTP__REQUEST_TIMEOUT", "0s"),
        ]) else {
            panic!("zero limits must be refused");
        };
        let keys: Vec<&str> = problems.0.iter().map(|problem| problem.key.as_str()).collect();
        for key in
            ["http.header_read_timeout", "ingress.idle_timeout", "ingress.max_connections", "http.request_timeout"]
        {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
    }
}
