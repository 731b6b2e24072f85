//! The HTTP/1.1 server: an accept loop over hyper with the connection-level
//! limits `axum::serve` does not have.
//!
//! - A cap on open connections (`CHECKLINE_MAX_CONNECTIONS`). A connection
//!   beyond it is answered `503 overloaded` (a problem document, with
//!   `Retry-After`) and closed; beyond a small overflow allowance it is
//!   closed at once, so a flood of connections costs almost nothing.
//! - A header read timeout (`CHECKLINE_HEADER_READ_TIMEOUT_MS`): a client
//!   must send a whole request head within it, and a kept-alive connection
//!   may idle that long, else the connection is closed. Slow clients cannot
//!   hold connections.
//! - A hard ceiling on a request head (twice `CHECKLINE_HEADER_MAX_BYTES`,
//!   at least 16 KiB): beyond it hyper itself answers a bare `431` and
//!   closes. Between the configured limit and the ceiling, the router
//!   answers `431 headers_too_large` as a problem document.
//! - Graceful shutdown: on the signal the listener closes, open connections
//!   finish their requests (up to `CHECKLINE_SHUTDOWN_GRACE_MS`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::EdgeConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Connections over the cap that still get a `503` (rather than being
/// closed unanswered) at any one time.
const OVERFLOW_CONNECTIONS: usize = 256;
/// How long an over-cap connection may take to send its request head.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// The hard ceiling on a request head (see the module docs).
pub fn head_ceiling_bytes(header_max_bytes: usize) -> usize {
    (2 * header_max_bytes).max(16 * 1024)
}

fn http1_builder(edge: &EdgeConfig) -> http1::Builder {
    let ceiling = head_ceiling_bytes(edge.header_max_bytes);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(edge.header_read_timeout)
        .max_header_size(ceiling)
        // The read buffer: room for the head ceiling and body chunks, not
        // hyper's ~400 KiB default per connection.
        .max_buf_size(ceiling + 8 * 1024)
        .keep_alive(true);
    builder
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// connections finish for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    edge: EdgeConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let builder = http1_builder(&edge);
    let mut overflow_builder = http1_builder(&edge);
    overflow_builder
        .keep_alive(false)
        .header_read_timeout(OVERFLOW_HEADER_TIMEOUT.min(edge.header_read_timeout));
    let connections = Arc::new(Semaphore::new(edge.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if !is_connection_error(&err) {
                        // Out of file descriptors and the like: back off
                        // rather than spin.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if let Ok(permit) = connections.clone().try_acquire_owned() {
            let service = app
                .clone()
                .map_request(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
            let connection =
                graceful.watch(builder.serve_connection(io, TowerToHyperService::new(service)));
            tokio::spawn(async move {
                // Errors here are the client's (reset, timeout, bad request).
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "connection ended");
                }
                drop(permit);
            });
        } else {
            metrics.connections_refused.inc();
            let Ok(permit) = overflow.clone().try_acquire_owned() else {
                continue; // dropped: closed unanswered
            };
            let service = hyper::service::service_fn(|_request: Request<Incoming>| async {
                Ok::<_, Infallible>(overloaded())
            });
            let connection = graceful.watch(overflow_builder.serve_connection(io, service));
            tokio::spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
    }
    // Stop accepting at once: new connections are refused by the kernel.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("requests still open after the grace period; stopping anyway");
        }
    }
}

fn overloaded() -> axum::response::Response {
    let mut response =
        ApiError::Overloaded("too many open connections; retry later".into()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-request-id", id);
    }
    response
}

/// Errors of one connection that do not concern the listener.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ceiling_is_above_the_limit() {
        assert_eq!(head_ceiling_bytes(1024), 16 * 1024);
        assert_eq!(head_ceiling_bytes(64 * 1024), 128 * 1024);
    }
}
