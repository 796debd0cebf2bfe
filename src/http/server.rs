//! The HTTP/1.1 accept loop: `axum::serve` with one setting it hides.
//!
//! hyper lets each connection's read buffer grow to about 400 KB while it
//! reads a body, and the connection keeps that capacity for its whole life.
//! With many keep-alive clients uploading photos this was the largest single
//! use of memory (about 110 KB per connection, so 1000 clients held 110 MB of
//! empty buffers). Here every connection's buffer is capped at
//! [`READ_BUFFER_BYTES`]: a large body is simply read in more, smaller reads.
//! The cap also bounds a request's head (line and headers); past it hyper
//! answers 431.
//!
//! It also bounds what connections cost while they send nothing useful:
//! - at most [`ConnectionLimits::max_connections`] are open at once; past
//!   that, new ones wait in the kernel's accept queue until one closes;
//! - hyper's `header_read_timeout` (with hyper's timer, without which it does
//!   nothing) closes a connection that has not sent a whole request head
//!   within [`ConnectionLimits::header_timeout`] of being idle: it bounds a
//!   half-sent head, a connection that sends nothing, and an idle keep-alive
//!   connection alike.
//!
//! The gRPC front is served by the same loop speaking HTTP/2 only
//! ([`Protocol::Http2`]), with the same connection cap. Its windows are
//! bounded so that a connection holds at most [`H2_CONNECTION_WINDOW`] bytes
//! its requests have not read yet (the body budget covers what they read),
//! its head at most [`READ_BUFFER_BYTES`] of headers, and at most
//! [`H2_MAX_STREAMS`] calls at once. A connection that sends no request for
//! [`ConnectionLimits::header_timeout`] is pinged and, if it does not answer,
//! closed.
//!
//! Otherwise this does what `axum::serve(..).with_graceful_shutdown(..)` did:
//! the peer address goes into each request as `ConnectInfo<SocketAddr>`; on
//! shutdown the listener closes, idle connections close, and requests in
//! flight finish before this returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The most a connection's read buffer may hold (hyper's floor is 8 KiB).
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// The HTTP/2 flow-control windows: the bytes a stream, and a connection,
/// may have in flight that the server has not read. A stream's window holds
/// a whole 602 KB tensor; with 256 KiB and 1 MiB, 32 tensor calls on one
/// connection answered 15% slower over gRPC than over HTTP, and at these
/// sizes the same (scripts/bench-protocols).
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// The most calls one HTTP/2 connection may have open at once.
pub const H2_MAX_STREAMS: u32 = 128;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: the web API.
    Http1,
    /// HTTP/2 only (prior knowledge, as gRPC clients connect): the gRPC front.
    Http2,
}

/// How long to back off when `accept` fails (typically out of file
/// descriptors), so the loop does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What connections may cost (`--max-connections`, `--header-timeout-secs`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// The longest an idle connection may take to send a whole request head.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { max_connections: 4096, header_timeout: Duration::from_secs(10) }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets each connection finish its request in flight, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    protocol: Protocol,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop, stopped) = watch::channel(());
    let connections = TaskTracker::new();
    // One permit per open connection; it goes with the connection's task.
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&open).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = router.clone().map_request(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.map(Body::new)
        });
        let stopped = stopped.clone();
        let service = TowerToHyperService::new(service);
        let io = TokioIo::new(stream);
        connections.spawn(async move {
            let _open = permit;
            match protocol {
                Protocol::Http1 => {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .max_buf_size(READ_BUFFER_BYTES)
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout);
                    let connection = builder.serve_connection(io, service);
                    drive(connection, |c| c.graceful_shutdown(), stopped, peer).await;
                }
                Protocol::Http2 => {
                    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    builder
                        .timer(TokioTimer::new())
                        .initial_stream_window_size(H2_STREAM_WINDOW)
                        .initial_connection_window_size(H2_CONNECTION_WINDOW)
                        .max_concurrent_streams(H2_MAX_STREAMS)
                        .max_header_list_size(READ_BUFFER_BYTES as u32)
                        .keep_alive_interval(limits.header_timeout)
                        .keep_alive_timeout(limits.header_timeout);
                    let connection = builder.serve_connection(io, service);
                    drive(connection, |c| c.graceful_shutdown(), stopped, peer).await;
                }
            }
        });
    }
    drop(listener);
    drop(stop);
    connections.close();
    connections.wait().await;
}

/// Runs one connection until it ends, or until `stopped` changes: then
/// `graceful` asks it to finish its requests in flight and close.
async fn drive<C: Future<Output = Result<(), hyper::Error>>>(
    connection: C,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    mut stopped: watch::Receiver<()>,
    peer: SocketAddr,
) {
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_end(result, peer),
        _ = stopped.changed() => {
            graceful(connection.as_mut());
            log_end(connection.await, peer);
        }
    }
}

fn log_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = result {
        tracing::trace!(%peer, error = %e, "connection ended with an error");
    }
}
