//! HTTP over Connect: serve hyper, tower and axum services on a [`ConnectListener`], and call
//! other services by their Consul DNS name through a hyper-util connector.
//!
//! Serving: [`serve`] runs any tower service (an axum `Router`, a tonic `Routes`, a
//! `tower::service_fn`) on a listener, HTTP/1.1 or HTTP/2 as the client negotiated with ALPN.
//! Every request carries the authorized client as a [`Caller`] extension, and HTTP/1
//! connections run inside [`PollAgain`], which spares a worker wake-up per request body. With
//! the `axum` feature, `ConnectListener` is also an `axum::serve::Listener`, and `Caller` an
//! extractor (`axum::serve` drives connections itself, without `PollAgain`).
//!
//! Calling: [`ConnectConnector`] is a tower `Service<Uri>` for hyper-util's pooled client (and
//! tonic's `Endpoint`). It maps `http://<name>.service[.<datacenter>].consul/...` to the
//! healthy Connect instances of `<name>` in the agent's catalog, as Consul's Go SDK does, and
//! dials them over mutual TLS; HTTP/2 is used when the server agreed to it with ALPN.
//! [`HttpClient`] bundles both.
//!
//! How a handler learns who called (the [`Caller`]: SPIFFE ID and address):
//!
//! | served by | the handler asks for |
//! |---|---|
//! | [`serve`], [`serve_connection`] | `Caller` (axum extractor), `Extension<Caller>`, or `request.extensions().get::<Caller>()` |
//! | `axum::serve(listener, app.into_make_service_with_connect_info::<Caller>())` | `Caller` (axum extractor) or `ConnectInfo<Caller>` |
//! | `axum::serve(listener, app)` | nothing: axum passes no connection data without connect info |
//! | tonic, `serve_with_incoming(grpc::incoming(listener))` | `request.extensions().get::<Caller>()` |
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use consul_connect::http::HttpClient;
//! use consul_connect::ConnectService;
//! use http_body_util::BodyExt;
//!
//! let web = ConnectService::builder("web").build().await?;
//! web.ready().await?;
//! let client = HttpClient::new(&web);
//! let response = client.get("http://api.service.consul/").await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! println!("{}", String::from_utf8_lossy(&body));
//! # Ok(()) }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_service::Service;

use crate::dialer::{ClientStream, DialError, DEFAULT_DIAL_TIMEOUT};
use crate::listener::{ConnectListener, ServerStream};
use crate::resolve::PreparedQueryResolver;
use crate::service::ConnectService;
use crate::spiffe::ServiceId;

pub use poll_again::PollAgain;

/// A boxed error, as hyper and tower pass them around.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The authorized client of a connection: its SPIFFE service identity and address.
///
/// [`serve`] and [`serve_connection`] put it in every request's extensions; tonic servers fed
/// by `grpc::incoming` (feature `tonic`) do too. With `axum::serve`, ask for it as connect info
/// (`into_make_service_with_connect_info::<Caller>()`). With the `axum` feature it is an
/// extractor that finds it either way.
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
/// axum::serve(listener, app.into_make_service_with_connect_info::<Caller>()).await
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
pub async fn serve<S, B>(mut listener: ConnectListener, service: S) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let stream = accept_authorized(&mut listener).await?;
        let service = service.clone();
        tokio::spawn(async move {
            let caller = stream.caller().clone();
            if let Err(e) = serve_connection(stream, service).await {
                tracing::debug!(%caller, error = %e, "HTTP connection ended with an error");
            }
        });
    }
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

#[cfg(feature = "axum")]
mod axum_support {
    use std::io;
    use std::net::SocketAddr;

    use axum::extract::connect_info::{ConnectInfo, Connected};
    use axum::extract::FromRequestParts;
    use axum::serve::{IncomingStream, Listener};
    use http::request::Parts;
    use http::StatusCode;

    use super::{accept_authorized, AuthorizedStream, Caller};
    use crate::listener::ConnectListener;

    /// `axum::serve(listener, app)` over Connect. Connections arrive already verified and
    /// authorized; the address is the client's. If the TCP listener itself fails (transient
    /// accept errors are retried inside the listener), the failure is logged and no further
    /// connection is accepted, while open ones carry on.
    impl Listener for ConnectListener {
        type Io = AuthorizedStream;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match accept_authorized(self).await {
                Ok(stream) => {
                    let remote = stream.caller().remote_addr();
                    (stream, remote)
                }
                Err(e) => {
                    tracing::error!(error = %e, "the Connect listener failed; accepting no more connections");
                    std::future::pending().await
                }
            }
        }

        fn local_addr(&self) -> io::Result<Self::Addr> {
            Ok(ConnectListener::local_addr(self))
        }
    }

    /// `app.into_make_service_with_connect_info::<Caller>()` gives handlers
    /// `ConnectInfo<Caller>` (or just `Caller`, the extractor below).
    impl Connected<IncomingStream<'_, ConnectListener>> for Caller {
        fn connect_info(stream: IncomingStream<'_, ConnectListener>) -> Self {
            stream.io().caller().clone()
        }
    }

    /// The caller from the request extensions ([`super::serve`]) or from axum's connect info
    /// (`axum::serve` with `into_make_service_with_connect_info::<Caller>()`). Without
    /// either, the request is answered 500: the server is set up wrongly.
    impl<S: Send + Sync> FromRequestParts<S> for Caller {
        type Rejection = (StatusCode, &'static str);

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            if let Some(caller) = parts.extensions.get::<Caller>() {
                return Ok(caller.clone());
            }
            match parts.extensions.get::<ConnectInfo<Caller>>() {
                Some(ConnectInfo(caller)) => Ok(caller.clone()),
                None => Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no Connect caller: serve with consul_connect::http::serve, or axum::serve \
                     with into_make_service_with_connect_info::<Caller>()",
                )),
            }
        }
    }
}

/// Why the connector could not produce a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// The URI has no host to resolve.
    #[error("URI {uri:?} has no host")]
    NoHost {
        /// The URI.
        uri: String,
    },
    /// The host is not under `.consul` (required even when the cluster uses another domain,
    /// as in Consul's Go SDK: the datacenter label could not be told apart otherwise).
    #[error(
        "invalid Consul DNS domain: {host:?} does not end in .consul (the Connect SDK requires \
         the .consul domain even if the cluster is configured with a different domain)"
    )]
    InvalidDomain {
        /// The host, lowercased, without port.
        host: String,
    },
    /// The host is under `.consul` but is not a name the connector resolves.
    #[error(
        "unsupported Consul DNS domain: {host:?} must be either <name>.service[.<datacenter>].consul \
         or <name>.query[.<datacenter>].consul"
    )]
    UnsupportedDomain {
        /// The host, lowercased, without port.
        host: String,
    },
    /// Resolution or every dial attempt failed, or the dial timed out.
    #[error(transparent)]
    Dial(#[from] DialError),
}

/// A hyper-util connector (a tower `Service<Uri>`) that dials Connect services by their
/// Consul DNS name.
///
/// The URI's host, lowercased and without its port (ignored), must be
/// `<name>.service.consul` or `<name>.service.<datacenter>.consul`: the healthy Connect
/// instances of `<name>` from the agent's catalog are tried in random order, each one's
/// server proving it is `<name>`. The scheme is ignored too: the connection is always mutual
/// TLS. The resulting connection tells hyper-util when ALPN agreed on `h2`, so HTTP/2 is used
/// then. Works with hyper-util's pooled client (see [`HttpClient`]) and tonic's `Endpoint`.
///
/// ```no_run
/// # async fn run(web: consul_connect::ConnectService) {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use consul_connect::http::ConnectConnector;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
///
/// let connector = ConnectConnector::new(&web).dial_timeout(Duration::from_secs(3));
/// let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
/// let response = client.get("http://db.service.dc1.consul/".parse().unwrap()).await;
/// # }
/// ```
#[derive(Clone)]
pub struct ConnectConnector {
    service: ConnectService,
    timeout: Duration,
    http1_only: bool,
}

impl fmt::Debug for ConnectConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectConnector")
            .field("service", &self.service.name())
            .field("dial_timeout", &self.timeout)
            .field("http1_only", &self.http1_only)
            .finish()
    }
}

impl ConnectConnector {
    /// Dials as `service`.
    pub fn new(service: &ConnectService) -> Self {
        Self {
            service: service.clone(),
            timeout: DEFAULT_DIAL_TIMEOUT,
            http1_only: false,
        }
    }

    /// The limit for one whole dial: resolution and every instance tried (default 10 s).
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Offers only `http/1.1` with ALPN, so connections speak HTTP/1.1 even to servers that
    /// would agree to HTTP/2. One request at a time per connection (the pool opens more), but
    /// each costs less: hyper runs every HTTP/2 stream as a task of its own (see
    /// BENCHMARKS.md, "HTTP over Connect").
    ///
    /// ```no_run
    /// # fn run(web: consul_connect::ConnectService) {
    /// use consul_connect::http::{ConnectConnector, HttpClient};
    /// let client: HttpClient = HttpClient::with_connector(ConnectConnector::new(&web).http1_only());
    /// # }
    /// ```
    pub fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }

    async fn connect(self, uri: Uri) -> Result<ConnectIo, ConnectorError> {
        let host = uri.host().ok_or_else(|| ConnectorError::NoHost {
            uri: uri.to_string(),
        })?;
        let target = ConsulName::parse(host)?;
        let agent = self.service.agent().clone();
        let resolver: Box<dyn crate::resolve::Resolver> = match (target.query, target.datacenter) {
            (false, None) => Box::new(self.service.dialer().catalog(target.name)),
            (false, Some(dc)) => {
                Box::new(self.service.dialer().catalog(target.name).datacenter(dc))
            }
            (true, None) => Box::new(PreparedQueryResolver::new(agent, target.name)),
            (true, Some(dc)) => {
                Box::new(PreparedQueryResolver::new(agent, target.name).datacenter(dc))
            }
        };
        let mut dialer = self.service.dialer().timeout(self.timeout);
        if self.http1_only {
            dialer = dialer.alpn([b"http/1.1".to_vec()]);
        }
        let stream = dialer.dial(resolver.as_ref()).await?;
        Ok(ConnectIo::new(stream))
    }
}

impl Service<Uri> for ConnectConnector {
    type Response = ConnectIo;
    type Error = ConnectorError;
    type Future = Pin<Box<dyn Future<Output = Result<ConnectIo, ConnectorError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A dialed Connect connection, as hyper (and tonic) use it: it reports ALPN `h2` to
/// hyper-util so HTTP/2 is spoken when the server agreed to it.
///
/// ```no_run
/// # async fn run(web: consul_connect::ConnectService) -> Result<(), Box<dyn std::error::Error>> {
/// use consul_connect::http::ConnectConnector;
/// use tower_service::Service;
///
/// let io = ConnectConnector::new(&web).call("http://db.service.consul".parse()?).await?;
/// println!("HTTP/2: {}", io.is_h2());
/// # Ok(()) }
/// ```
pub struct ConnectIo {
    inner: TokioIo<ClientStream>,
    h2: bool,
}

impl ConnectIo {
    fn new(stream: ClientStream) -> Self {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Self {
            inner: TokioIo::new(stream),
            h2,
        }
    }

    /// Whether ALPN agreed on HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2
    }

    /// The TLS stream.
    pub fn get_ref(&self) -> &ClientStream {
        self.inner.inner()
    }
}

impl fmt::Debug for ConnectIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectIo")
            .field("h2", &self.h2)
            .finish_non_exhaustive()
    }
}

impl Connection for ConnectIo {
    fn connected(&self) -> Connected {
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for ConnectIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ConnectIo {
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

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// Why an [`HttpClient`] request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request could not be built (a bad URI...).
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] http::Error),
    /// Connecting or the HTTP exchange failed; the message gives the whole cause chain.
    #[error("{method} {uri}: {}", error_chain(source))]
    Http {
        /// The request method.
        method: http::Method,
        /// The request URI.
        uri: Uri,
        /// hyper-util's error.
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body could not be read to its end.
    #[error("reading the answer to {uri}: {source}")]
    Body {
        /// The request URI.
        uri: Uri,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The answer's body is not the JSON asked for.
    #[error("the answer to {uri} ({status}) is not the JSON expected: {source}")]
    Json {
        /// The request URI.
        uri: Uri,
        /// The answer's status.
        status: http::StatusCode,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The connector's error, when the connection could not be made.
    pub fn connector_error(&self) -> Option<&ConnectorError> {
        let Self::Http { source, .. } = self else {
            return None;
        };
        let mut cause = source.source();
        while let Some(e) = cause {
            if let Some(found) = e.downcast_ref::<ConnectorError>() {
                return Some(found);
            }
            cause = e.source();
        }
        None
    }
}

/// An HTTP client that calls Connect services by Consul DNS name, e.g.
/// `http://api.service.consul/path`: hyper-util's pooled client over a [`ConnectConnector`],
/// so connections are reused, HTTP/2 is used when agreed, and each dial has a timeout.
///
/// ```no_run
/// # async fn run(web: consul_connect::ConnectService) -> Result<(), Box<dyn std::error::Error>> {
/// use consul_connect::http::HttpClient;
/// let client = HttpClient::new(&web);
/// let response = client.get("http://api.service.consul/health").await?;
/// assert!(response.status().is_success());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpClient<B = Full<Bytes>> {
    client: Client<ConnectConnector, B>,
}

impl<B> fmt::Debug for HttpClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client dialing as `service`, with hyper-util's default pool and the default dial
    /// timeout (10 s).
    pub fn new(service: &ConnectService) -> Self {
        Self::with_connector(ConnectConnector::new(service))
    }
}

impl<B> HttpClient<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A client over `connector`, with hyper-util's default pool.
    ///
    /// ```no_run
    /// # fn run(web: consul_connect::ConnectService) {
    /// use std::time::Duration;
    /// use consul_connect::http::{ConnectConnector, HttpClient};
    /// let connector = ConnectConnector::new(&web).dial_timeout(Duration::from_secs(2));
    /// let client: HttpClient = HttpClient::with_connector(connector);
    /// # }
    /// ```
    pub fn with_connector(connector: ConnectConnector) -> Self {
        Self::from_builder(&Client::builder(TokioExecutor::new()), connector)
    }

    /// A client configured by a hyper-util builder (pool sizes, idle timeout, HTTP/2
    /// options).
    ///
    /// ```no_run
    /// # fn run(web: consul_connect::ConnectService) {
    /// use std::time::Duration;
    /// use consul_connect::http::{ConnectConnector, HttpClient};
    /// use hyper_util::client::legacy::Client;
    /// use hyper_util::rt::TokioExecutor;
    ///
    /// let mut builder = Client::builder(TokioExecutor::new());
    /// builder.pool_idle_timeout(Duration::from_secs(30));
    /// let client: HttpClient = HttpClient::from_builder(&builder, ConnectConnector::new(&web));
    /// # }
    /// ```
    pub fn from_builder(
        builder: &hyper_util::client::legacy::Builder,
        connector: ConnectConnector,
    ) -> Self {
        Self {
            client: builder.build(connector),
        }
    }

    /// Sends `request`.
    pub async fn request(&self, request: Request<B>) -> Result<Response<Incoming>, ClientError> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        self.client
            .request(request)
            .await
            .map_err(|source| ClientError::Http {
                method,
                uri,
                source,
            })
    }

    /// `GET uri` with an empty body.
    pub async fn get<U>(&self, uri: U) -> Result<Response<Incoming>, ClientError>
    where
        B: Default,
        Uri: TryFrom<U>,
        <Uri as TryFrom<U>>::Error: Into<http::Error>,
    {
        let request = Request::get(uri).body(B::default())?;
        self.request(request).await
    }

    /// `GET uri`, and the answer's status and body as text (invalid UTF-8 replaced).
    ///
    /// ```no_run
    /// # async fn run(web: consul_connect::ConnectService) -> Result<(), consul_connect::http::ClientError> {
    /// let client: consul_connect::http::HttpClient = consul_connect::http::HttpClient::new(&web);
    /// let (status, body) = client.get_text("http://api.service.consul/").await?;
    /// println!("{status}: {body}");
    /// # Ok(()) }
    /// ```
    pub async fn get_text<U>(&self, uri: U) -> Result<(http::StatusCode, String), ClientError>
    where
        B: Default,
        Uri: TryFrom<U>,
        <Uri as TryFrom<U>>::Error: Into<http::Error>,
    {
        let (status, _, bytes) = self.get_bytes(uri).await?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// `GET uri`, and the answer's body decoded from JSON, whatever its status.
    pub async fn get_json<T, U>(&self, uri: U) -> Result<T, ClientError>
    where
        T: serde::de::DeserializeOwned,
        B: Default,
        Uri: TryFrom<U>,
        <Uri as TryFrom<U>>::Error: Into<http::Error>,
    {
        let (status, uri, bytes) = self.get_bytes(uri).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Json {
            uri,
            status,
            source,
        })
    }

    /// `GET uri`, read to the end.
    async fn get_bytes<U>(&self, uri: U) -> Result<(http::StatusCode, Uri, Bytes), ClientError>
    where
        B: Default,
        Uri: TryFrom<U>,
        <Uri as TryFrom<U>>::Error: Into<http::Error>,
    {
        let request = Request::get(uri).body(B::default())?;
        let uri = request.uri().clone();
        let response = self.request(request).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Body {
                uri: uri.clone(),
                source,
            })?
            .to_bytes();
        Ok((status, uri, bytes))
    }

    /// The underlying hyper-util client.
    pub fn inner(&self) -> &Client<ConnectConnector, B> {
        &self.client
    }
}

/// A Consul DNS name the connector resolves: `<name>.service[.<datacenter>].consul` or a
/// prepared query's `<name>.query[.<datacenter>].consul`.
#[derive(Debug, PartialEq, Eq)]
struct ConsulName {
    name: String,
    datacenter: Option<String>,
    /// A prepared query rather than a service.
    query: bool,
}

impl ConsulName {
    /// Parses a URI host as Consul's Go SDK does (`ConsulResolverFromAddrFunc`): lowercased,
    /// any port stripped, `.consul` mandatory, then `<name>.<type>[.<dc>]`.
    fn parse(host: &str) -> Result<Self, ConnectorError> {
        let host = strip_port(host).to_ascii_lowercase();
        let Some(labels) = host.strip_suffix(".consul") else {
            return Err(ConnectorError::InvalidDomain { host });
        };
        let parts: Vec<&str> = labels.split('.').collect();
        let (name, kind, datacenter) = match parts.as_slice() {
            [name, kind] => (*name, *kind, None),
            [name, kind, dc] if !dc.is_empty() => (*name, *kind, Some((*dc).to_owned())),
            _ => return Err(ConnectorError::UnsupportedDomain { host }),
        };
        if name.is_empty() {
            return Err(ConnectorError::UnsupportedDomain { host });
        }
        let query = match kind {
            "service" => false,
            "query" => true,
            _ => return Err(ConnectorError::UnsupportedDomain { host }),
        };
        Ok(Self {
            name: name.to_owned(),
            datacenter,
            query,
        })
    }
}

/// `host[:port]` or `[v6]:port` without the port (http::Uri::host already drops it; this
/// also serves hosts from elsewhere).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.split(':').next().unwrap_or(host)
}

/// An error and its sources, joined by `: `.
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let next = e.to_string();
        // Transparent wrappers repeat their source's message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(host: &str) -> Result<ConsulName, String> {
        ConsulName::parse(host).map_err(|e| e.to_string())
    }

    #[test]
    fn service_names_with_and_without_datacenter() {
        assert_eq!(
            parse("db.service.consul").unwrap(),
            ConsulName {
                name: "db".into(),
                datacenter: None,
                query: false
            }
        );
        assert_eq!(
            parse("DB.Service.DC2.Consul:8080").unwrap(),
            ConsulName {
                name: "db".into(),
                datacenter: Some("dc2".into()),
                query: false
            }
        );
    }

    #[test]
    fn consul_domain_is_mandatory() {
        for host in [
            "%%%",
            "db.service.my-consul.com",
            "consul",
            "db.service.consul.",
            "",
        ] {
            let err = parse(host).unwrap_err();
            assert!(
                err.starts_with("invalid Consul DNS domain: "),
                "{host}: {err}"
            );
        }
    }

    #[test]
    fn other_consul_names_are_unsupported() {
        for host in [
            "db.connect.consul",
            "db.connect.dc1.consul",
            "tag1.db.service.consul",
            "tag1.db.service.dc1.consul",
            ".service.consul",
            "db.consul",
            "db.service..consul",
        ] {
            let err = parse(host).unwrap_err();
            assert!(
                err.starts_with("unsupported Consul DNS domain: "),
                "{host}: {err}"
            );
        }
    }

    #[test]
    fn prepared_query_names_are_read() {
        let name = ConsulName::parse("Geo-DB.query.dc1.consul").unwrap();
        assert_eq!(
            name,
            ConsulName {
                name: "geo-db".into(),
                datacenter: Some("dc1".into()),
                query: true
            }
        );
        assert!(!ConsulName::parse("db.service.consul").unwrap().query);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("db.service.consul:443"), "db.service.consul");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("db.service.consul"), "db.service.consul");
    }
}
