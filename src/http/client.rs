//! Calling over Connect: the connector that dials `<name>.service.consul` names, and the
//! client built on it.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service;

use super::BoxError;
use crate::dialer::{ClientStream, DialError, DEFAULT_DIAL_TIMEOUT};
use crate::resolve::PreparedQueryResolver;
use crate::service::ConnectService;
use crate::telemetry::error_chain;

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
