//! The accept loop: one task per connection, served by hyper (HTTP/1.1 and HTTP/2).
//!
//! `axum::serve` would do the same, with three differences that matter here: its connection
//! tasks outlive the server task (so a dropped agent still answered its open blocking queries
//! minutes later); it cannot wrap them in [`PollAgain`], which saves a worker wake-up per
//! request with a body; and it closes a connection with a request body still arriving, which
//! can reset the answer away ([`LingeringStream`] closes as Go's server does).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use poll_again::PollAgain;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_service::Service;

use super::limits;

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// their requests. Dropping (aborting) the returned future ends every connection at once.
pub(crate) async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let limits = limits::ConnLimits::new(
        limits::MAX_CONNS_PER_CLIENT,
        limits::MAX_CONNS,
        limits::HEADER_READ_TIMEOUT,
    );
    serve_with(listener, app, shutdown, limits).await;
}

/// [`serve`] with the given connection limits.
pub(crate) async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    conn_limits: Arc<limits::ConnLimits>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(conn_limits.header_timeout);
    let builder = Arc::new(builder);
    let header_timeout = conn_limits.header_timeout;
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "agent-sim: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Over the per-client or total cap: closed at once.
                let Some(permit) = conn_limits.admit(peer.ip()) else { continue };
                // Small requests and answers: do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                let (builder, service, watcher) = (builder.clone(), service(&app, peer), graceful.watcher());
                connections.spawn(PollAgain::new(async move {
                    let _permit = permit;
                    if !limits::spoke_in_time(&stream, header_timeout).await {
                        return;
                    }
                    let (stream, closing) = LingeringStream::new(stream);
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection).await {
                        tracing::debug!(%peer, error = %e, "agent-sim: connection ended");
                    }
                    closing.linger().await;
                }));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // The caller bounds this wait (`Agent::shutdown` gives it a second) by dropping the
    // future, and with it `connections`, which aborts the connections still open.
    graceful.shutdown().await;
}

/// How long a closed connection still reads what its client sends (Go's `rstAvoidanceDelay`).
const LINGER: Duration = Duration::from_millis(500);

/// A connection's socket that closes the way Go's HTTP server does (`closeWriteAndWait`).
///
/// hyper closes a connection whose request body it did not read (a 413 for an oversize body,
/// for one) with that body still arriving; the kernel then answers with a reset, which can
/// destroy the answer before the client reads it, or fail the client's write so it never
/// looks. So when hyper shuts the socket down, a duplicate of it is kept in [`Closing`]; once
/// hyper has dropped its own, [`Closing::linger`] reads and drops what the client still sends
/// until it closes or [`LINGER`] passes.
struct LingeringStream {
    stream: tokio::net::TcpStream,
    closing: Closing,
}

/// Where [`LingeringStream`] leaves the duplicate socket on shutdown.
#[derive(Clone, Default)]
struct Closing(Arc<Mutex<Option<std::net::TcpStream>>>);

impl LingeringStream {
    fn new(stream: tokio::net::TcpStream) -> (Self, Closing) {
        let closing = Closing::default();
        let stream = LingeringStream {
            stream,
            closing: closing.clone(),
        };
        (stream, closing)
    }
}

impl tokio::io::AsyncRead for LingeringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LingeringStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        {
            let mut kept = self.closing.0.lock().unwrap_or_else(|e| e.into_inner());
            if kept.is_none() {
                *kept = duplicate(&self.stream);
            }
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(unix)]
fn duplicate(stream: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    let fd = stream.as_fd().try_clone_to_owned().ok()?;
    Some(std::net::TcpStream::from(fd))
}

#[cfg(not(unix))]
fn duplicate(_: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    None
}

impl Closing {
    /// After hyper is done with the connection: drains it for up to [`LINGER`] if hyper shut
    /// it down, then closes it.
    async fn linger(self) {
        use tokio::io::AsyncReadExt;
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(socket) = kept else { return };
        // The duplicate shares the original's non-blocking mode, as tokio needs.
        let Ok(mut socket) = tokio::net::TcpStream::from_std(socket) else {
            return;
        };
        let mut sink = vec![0u8; 16 * 1024];
        let drain = async { while let Ok(1..) = socket.read(&mut sink).await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// The router as a hyper service, with the peer address where axum's `ConnectInfo` finds it.
fn service(
    app: &Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    let app = app.clone();
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(request).await }
    })
}
