//! Serving over Connect: the authorized stream and its caller, and the accept loops.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_service::Service;

use super::{BoxError, PollAgain};
use crate::listener::{ConnectListener, ServerStream};
use crate::spiffe::ServiceId;

/// The authorized client of a connection: its SPIFFE service identity and address.
///
/// [`serve`] and [`serve_connection`] put it in every request's extensions; tonic servers fed
/// by `grpc::incoming` (feature `tonic`) do too. With the `axum` feature it is also an
/// extractor.
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # async fn run(api: consul_connect::ConnectService) -> std::io::Result<()> {
/// use axum::{routing::get, Router};
/// use consul_connect::{http::Caller, ConnectListener};
///
/// async fn hello(caller: Caller) -> String {
///     format!("hello {}\n", caller.id())
/// }
///
/// let listener = ConnectListener::bind(&api, "127.0.0.1:9292").await?;
/// let app = Router::new().route("/", get(hello));
/// consul_connect::http::serve(listener, app).await
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    // Shared: every request of a connection carries a clone.
    inner: std::sync::Arc<(ServiceId, SocketAddr)>,
}

impl Caller {
    /// A caller with identity `id` connected from `remote`.
    pub fn new(id: ServiceId, remote: SocketAddr) -> Self {
        Self {
            inner: std::sync::Arc::new((id, remote)),
        }
    }

    /// The client's SPIFFE service identity, verified and authorized.
    pub fn id(&self) -> &ServiceId {
        &self.inner.0
    }

    /// The client's service name (shorthand for `id().service()`).
    pub fn service(&self) -> &str {
        self.inner.0.service()
    }

    /// The client's TCP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.1
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Caller({} at {})", self.id(), self.remote_addr())
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.id(), f)
    }
}

/// A server stream whose client passed verification and authorization, with that client.
///
/// What [`serve`], the axum listener and the gRPC incoming stream hand to hyper, axum and
/// tonic. Reads and writes go to the TLS stream.
///
/// ```no_run
/// # async fn run(mut listener: consul_connect::ConnectListener) -> std::io::Result<()> {
/// use consul_connect::http::AuthorizedStream;
/// let (stream, peer) = listener.accept().await?;
/// let stream = AuthorizedStream::new(stream, peer)?;
/// println!("{} negotiated {:?}", stream.caller(), stream.alpn_protocol());
/// # Ok(()) }
/// ```
pub struct AuthorizedStream {
    inner: ServerStream,
    caller: Caller,
}

impl AuthorizedStream {
    /// Wraps a stream from [`ConnectListener::accept`] with its client's identity. Fails only
    /// when the socket no longer has a peer address (the client already went away).
    pub fn new(stream: ServerStream, peer: ServiceId) -> io::Result<Self> {
        let remote = stream.get_ref().0.peer_addr()?;
        Ok(Self {
            inner: stream,
            caller: Caller::new(peer, remote),
        })
    }

    /// The authorized client.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The application protocol agreed with ALPN (`h2`, `http/1.1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.inner.get_ref().1.alpn_protocol()
    }

    /// The TLS stream.
    pub fn get_ref(&self) -> &ServerStream {
        &self.inner
    }

    /// The TLS stream and the client.
    pub fn into_inner(self) -> (ServerStream, Caller) {
        (self.inner, self.caller)
    }
}

impl fmt::Debug for AuthorizedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizedStream")
            .field("caller", &self.caller)
            .field("alpn", &self.alpn_protocol().map(String::from_utf8_lossy))
            .finish_non_exhaustive()
    }
}

impl AsyncRead for AuthorizedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthorizedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `service` on every connection `listener` accepts, each in its own task, until the
/// listener fails. HTTP/1.1 or HTTP/2 as agreed with ALPN (see [`serve_connection`]); each
/// request carries the [`Caller`] as an extension.
///
/// `service` is any tower service over hyper's request body: an axum `Router`, a tonic
/// `Routes`, a `tower::service_fn`.
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # async fn run(api: consul_connect::ConnectService) -> std::io::Result<()> {
/// use axum::{routing::get, Extension, Router};
/// use consul_connect::http::{serve, Caller};
/// use consul_connect::ConnectListener;
///
/// let app = Router::new().route(
///     "/",
///     get(|Extension(caller): Extension<Caller>| async move { format!("hello {caller}\n") }),
/// );
/// serve(ConnectListener::bind(&api, "127.0.0.1:9292").await?, app).await
/// # }
/// ```
///
/// The connections belong to the returned future: dropping it (aborting its task) ends them.
pub async fn serve<S, B>(listener: ConnectListener, service: S) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_with_graceful_shutdown(listener, service, std::future::pending()).await
}

/// [`serve`] until `signal` completes, then shuts down gracefully: no new connection is
/// accepted, requests in progress finish (HTTP/2 connections get GOAWAY), and this returns once
/// every connection has ended.
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # async fn run(api: consul_connect::ConnectService, app: axum::Router) -> std::io::Result<()> {
/// use consul_connect::http::serve_with_graceful_shutdown;
/// use consul_connect::ConnectListener;
///
/// let listener = ConnectListener::bind(&api, "127.0.0.1:9292").await?;
/// serve_with_graceful_shutdown(listener, app, async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await
/// # }
/// ```
///
/// # Errors
///
/// The listener's, if it fails before the signal.
pub async fn serve_with_graceful_shutdown<S, B>(
    mut listener: ConnectListener,
    service: S,
    signal: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        tokio::select! {
            accepted = accept_authorized(&mut listener) => {
                let stream = accepted?;
                let service = service.clone();
                let mut stopping = stopping.clone();
                connections.spawn(async move {
                    let caller = stream.caller().clone();
                    let stop = async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    };
                    if let Err(e) = serve_connection_until(stream, service, stop).await {
                        tracing::debug!(%caller, error = %e, "HTTP connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut signal => break,
        }
    }
    drop(listener);
    stop.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves `service` on one accepted connection until the client closes it.
///
/// The protocol is the one agreed with ALPN: `h2` gets HTTP/2 only, `http/1.1` HTTP/1.1 only
/// (with upgrades, for WebSockets); without ALPN the client's first bytes decide. Each request
/// carries the [`Caller`] as an extension.
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # async fn run(mut listener: consul_connect::ConnectListener, app: axum::Router) -> std::io::Result<()> {
/// use consul_connect::http::{serve_connection, AuthorizedStream};
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     let stream = AuthorizedStream::new(stream, peer)?;
///     tokio::spawn(serve_connection(stream, app.clone()));
/// }
/// # }
/// ```
pub async fn serve_connection<S, B>(stream: AuthorizedStream, service: S) -> Result<(), BoxError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_connection_until(stream, service, std::future::pending()).await
}

/// [`serve_connection`], shutting the connection down gracefully once `shutdown` completes:
/// requests in progress finish, no new one is read (HTTP/2 sends GOAWAY).
async fn serve_connection_until<S, B>(
    stream: AuthorizedStream,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Drives `$conn` to its end, asking it to shut down gracefully once `shutdown` completes.
    macro_rules! until_shutdown {
        ($conn:expr) => {{
            let mut conn = std::pin::pin!($conn);
            let mut shutdown = std::pin::pin!(shutdown);
            tokio::select! {
                result = conn.as_mut() => result.map_err(Into::into),
                () = &mut shutdown => {
                    conn.as_mut().graceful_shutdown();
                    conn.await.map_err(Into::into)
                }
            }
        }};
    }
    let alpn = stream.alpn_protocol().map(<[u8]>::to_vec);
    let service = WithCaller {
        caller: stream.caller().clone(),
        inner: service,
    };
    let io = TokioIo::new(stream);
    // The timer gives HTTP/1 its default 30 s limit for reading a request's headers.
    // HTTP/1 connections wake themselves for every request body; see `PollAgain`.
    match alpn.as_deref() {
        Some(b"h2") => until_shutdown!(hyper::server::conn::http2::Builder::new(
            TokioExecutor::new()
        )
        .timer(TokioTimer::new())
        .serve_connection(io, service)),
        Some(b"http/1.1") => {
            PollAgain::new(async move {
                until_shutdown!(hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(io, service)
                    .with_upgrades())
            })
            .await
        }
        _ => {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            PollAgain::new(async move {
                until_shutdown!(builder.serve_connection_with_upgrades(io, service))
            })
            .await
        }
    }
}

/// The next authorized connection of `listener`, skipping clients gone before we saw them.
pub(crate) async fn accept_authorized(
    listener: &mut ConnectListener,
) -> io::Result<AuthorizedStream> {
    loop {
        let (stream, peer) = listener.accept().await?;
        match AuthorizedStream::new(stream, peer) {
            Ok(stream) => return Ok(stream),
            Err(e) => tracing::debug!(error = %e, "Connect client left before being served"),
        }
    }
}

/// A tower service turned into a hyper one that adds the caller to each request.
#[derive(Clone)]
struct WithCaller<S> {
    caller: Caller,
    inner: S,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for WithCaller<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.caller.clone());
        // A tower service must be ready before each call; a clone keeps this one's readiness
        // to itself, as hyper-util's TowerToHyperService does.
        let mut service = self.inner.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(request).await
        })
    }
}
