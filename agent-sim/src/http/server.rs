//! The accept loop: one task per connection, served by hyper (HTTP/1.1 and HTTP/2).
//!
//! `axum::serve` would do the same, with three differences that matter here: its connection
//! tasks outlive the server task (so a dropped agent still answered its open blocking queries
//! minutes later); it cannot wrap them in [`PollAgain`], which saves a worker wake-up per
//! request with a body; and it closes a connection with a request body still arriving, which
//! can reset the answer away ([`LingeringStream`] closes as Go's server does).
//!
//! One loop serves each [`Listener`]: HTTP, HTTPS (the handshake runs in the connection's task)
//! or a unix socket.

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
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::limits;
use super::spin::{self, Spinner};

/// Where the API is served: plain TCP, TLS over TCP, or a unix socket.
pub(crate) enum Listener {
    /// HTTP over TCP.
    Tcp(TcpListener),
    /// HTTPS: TCP, then a TLS handshake (in the connection's task, never in the accept loop).
    Tls(TcpListener, TlsAcceptor),
    /// HTTP over a unix socket, removed when the server stops (as Go's listener does).
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

/// A connection accepted by a [`Listener`], before any TLS handshake.
enum Accepted {
    Tcp(LingeringStream),
    Tls(LingeringStream, TlsAcceptor),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// The peer address handlers see for a unix-socket client, which has none: loopback, as the
/// client is on this machine.
#[cfg(unix)]
const UNIX_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Listener {
    async fn accept(&self) -> std::io::Result<(Accepted, Option<Closing>, SocketAddr)> {
        let tcp = |(stream, peer): (tokio::net::TcpStream, SocketAddr)| {
            // Small requests and answers: do not let Nagle hold them back.
            let _ = stream.set_nodelay(true);
            let (stream, closing) = LingeringStream::new(stream);
            (stream, closing, peer)
        };
        Ok(match self {
            Listener::Tcp(l) => {
                let (stream, closing, peer) = tcp(l.accept().await?);
                (Accepted::Tcp(stream), Some(closing), peer)
            }
            Listener::Tls(l, acceptor) => {
                let (stream, closing, peer) = tcp(l.accept().await?);
                (Accepted::Tls(stream, acceptor.clone()), Some(closing), peer)
            }
            #[cfg(unix)]
            Listener::Unix(l, _) => (Accepted::Unix(l.accept().await?.0), None, UNIX_PEER),
        })
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// their requests. Dropping (aborting) the returned future ends every connection at once.
/// With `spin`, a worker polls for a while before it sleeps (see [`super::spin`]).
pub(crate) async fn serve(
    listener: Listener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    spin: bool,
) {
    let limits = limits::ConnLimits::new(
        limits::MAX_CONNS_PER_CLIENT,
        limits::MAX_CONNS,
        limits::HEADER_READ_TIMEOUT,
    );
    serve_with(listener, app, shutdown, limits, spin).await;
}

/// [`serve`] with the given connection limits.
pub(crate) async fn serve_with(
    listener: Listener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    conn_limits: Arc<limits::ConnLimits>,
    spin: bool,
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
    let spinner = spin.then(|| Arc::new(Spinner::default()));
    let _spinning = spinner
        .clone()
        .map(|spinner| AbortOnDrop(tokio::spawn(spinner.run())));
    let mut numbered = 0u64;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (accepted, closing, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "agent-sim: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Over the per-client or total cap: closed at once. (Unix-socket clients share
                // one address, loopback.)
                let Some(permit) = conn_limits.admit(peer.ip()) else { continue };
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let service = service(&app, peer);
                numbered += 1;
                connections.spawn(spin::watch(spinner.as_ref(), numbered, PollAgain::new(async move {
                    let _permit = permit;
                    // A client that connects and stays silent is dropped (hyper's header
                    // timer starts only with the first byte).
                    let tcp = match &accepted {
                        Accepted::Tcp(s) | Accepted::Tls(s, _) => Some(&s.stream),
                        #[cfg(unix)]
                        Accepted::Unix(_) => None,
                    };
                    if let Some(tcp) = tcp {
                        if !limits::spoke_in_time(tcp, header_timeout).await {
                            return;
                        }
                    }
                    let stream = match accepted {
                        Accepted::Tcp(stream) => ServerStream::Tcp(stream),
                        Accepted::Tls(stream, acceptor) => {
                            let handshake = acceptor.accept(stream);
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                                Ok(Ok(stream)) => ServerStream::Tls(Box::new(stream)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "agent-sim: TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "agent-sim: TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                        #[cfg(unix)]
                        Accepted::Unix(stream) => ServerStream::Unix(stream),
                    };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection).await {
                        tracing::debug!(%peer, error = %e, "agent-sim: connection ended");
                    }
                    if let Some(closing) = closing {
                        closing.linger().await;
                    }
                })));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    #[cfg(unix)]
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    // The caller bounds this wait (`Agent::shutdown` gives it a second) by dropping the
    // future, and with it `connections`, which aborts the connections still open.
    graceful.shutdown().await;
}

/// Aborts a task when dropped (the spinner, when the accept loop ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An accepted connection, after the TLS handshake for HTTPS.
enum ServerStream {
    Tcp(LingeringStream),
    Tls(Box<tokio_rustls::server::TlsStream<LingeringStream>>),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// Forwards a tokio I/O call to whichever stream is inside.
macro_rules! forward {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            ServerStream::Tcp($s) => $call,
            ServerStream::Tls($s) => $call,
            #[cfg(unix)]
            ServerStream::Unix($s) => $call,
        }
    };
}

impl tokio::io::AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        forward!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        forward!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Tcp(s) => s.is_write_vectored(),
            ServerStream::Tls(s) => s.is_write_vectored(),
            #[cfg(unix)]
            ServerStream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_shutdown(cx))
    }
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
