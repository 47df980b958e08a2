//! Dialing other services over Connect: resolve, connect, mutual TLS, and proof that the
//! server is the service asked for.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::agent::AgentClient;
use crate::resolve::{Candidate, CatalogResolver, LastKnownGood, ResolveError, Resolver};
use crate::telemetry;
use crate::tls::VerifyError;
use crate::tls::{ConnectClientConfig, MaterialCell};

/// A client-side Connect stream.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Default limit for one whole dial (resolution and every attempt).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one instance could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The server failed a check (wrong service, untrusted chain...).
    #[error("server rejected: {0}")]
    Verify(VerifyError),
    /// The server refused us during the handshake (TLS 1.2; with TLS 1.3 the refusal
    /// arrives after it, on the first read: see [`ServerRefusal::from_io`]).
    #[error("refused by the server: {0}")]
    Refused(ServerRefusal),
    /// The handshake failed otherwise.
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
}

/// Why a Connect server refused this service, as its TLS alert says. Distinct from a server
/// that failed our checks ([`AttemptError::Verify`]: bad chain, wrong identity).
///
/// With TLS 1.3 the server decides after our side of the handshake is done, so the refusal
/// surfaces on the stream's first read (or write) as an I/O error;
/// [`ServerRefusal::from_io`] reads it back:
///
/// ```no_run
/// # async fn run(web: consul_connect::ConnectService) -> Result<(), Box<dyn std::error::Error>> {
/// use consul_connect::dialer::ServerRefusal;
/// use tokio::io::AsyncReadExt;
///
/// let mut stream = web.dialer().dial_service("db").await?;
/// let mut buf = [0u8; 1];
/// if let Err(e) = stream.read(&mut buf).await {
///     match ServerRefusal::from_io(&e) {
///         Some(ServerRefusal::Denied) => eprintln!("db denies web (intention)"),
///         Some(ServerRefusal::AuthorizationUnavailable) => eprintln!("db could not authorize us"),
///         _ => eprintln!("connection failed: {e}"),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerRefusal {
    /// `access_denied`: an intention (or the default policy) denies this service.
    #[error("denied by an intention (TLS alert access_denied)")]
    Denied,
    /// `internal_error`: the server could not decide (its authorization source, such as its
    /// local Consul agent, failed) and refused us to stay closed.
    #[error("the server could not authorize this connection (TLS alert internal_error)")]
    AuthorizationUnavailable,
}

impl ServerRefusal {
    /// The refusal a rustls error reports, if it is one.
    pub fn from_rustls(err: &rustls::Error) -> Option<Self> {
        match err {
            rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied) => {
                Some(ServerRefusal::Denied)
            }
            rustls::Error::AlertReceived(rustls::AlertDescription::InternalError) => {
                Some(ServerRefusal::AuthorizationUnavailable)
            }
            _ => None,
        }
    }

    /// The refusal behind an I/O error of a Connect stream or handshake, if it is one.
    pub fn from_io(err: &std::io::Error) -> Option<Self> {
        Self::from_rustls(err.get_ref()?.downcast_ref::<rustls::Error>()?)
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The service has no identity yet.
    #[error("service {service:?} has no Connect certificate yet (not ready)")]
    NotReady {
        /// Our service name.
        service: String,
    },
    /// Resolution failed.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Every candidate failed; each attempt is listed.
    #[error("cannot connect to {target:?}: {}", attempts.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    Failed {
        /// The service dialed.
        target: String,
        /// Each instance tried and why it failed.
        attempts: Vec<(String, AttemptError)>,
    },
    /// The overall timeout passed.
    #[error("dialing {target:?} timed out after {timeout:?} ({} instance(s) failed before)", attempts.len())]
    Timeout {
        /// The service dialed.
        target: String,
        /// The limit.
        timeout: Duration,
        /// Attempts that failed before the limit.
        attempts: Vec<(String, AttemptError)>,
    },
}

/// Connects to other services as a [`ConnectService`](crate::ConnectService).
///
/// ```no_run
/// # async fn run(web: consul_connect::ConnectService) -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::AsyncWriteExt;
/// let mut stream = web.dialer().dial_service("db").await?;
/// stream.write_all(b"hello\n").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectDialer {
    /// The dialing service's name (for logs and metrics).
    name: Arc<str>,
    agent: AgentClient,
    cell: Arc<MaterialCell>,
    client: ConnectClientConfig,
    /// The service's memory of past discoveries, for dials while the agent is down.
    discovery: LastKnownGood,
    /// Keeps the dialing service's watches running for as long as the dialer lives.
    _service: Arc<dyn std::any::Any + Send + Sync>,
    timeout: Duration,
    /// ALPN protocols to offer instead of the configuration's (`h2`, `http/1.1`).
    alpn: Option<Arc<[Vec<u8>]>>,
}

impl fmt::Debug for ConnectDialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpn = self.alpn.as_ref().map(|protocols| {
            protocols
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
        });
        f.debug_struct("ConnectDialer")
            .field("service", &self.name)
            .field("timeout", &self.timeout)
            .field("alpn", &alpn)
            .finish()
    }
}

impl ConnectDialer {
    /// A dialer for the service `name`, with its agent, material and client configuration;
    /// `service` is held to keep the service's watches running.
    pub(crate) fn new(
        name: &str,
        agent: AgentClient,
        cell: Arc<MaterialCell>,
        client: ConnectClientConfig,
        discovery: LastKnownGood,
        service: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        Self {
            name: name.into(),
            agent,
            cell,
            client,
            discovery,
            _service: service,
            timeout: DEFAULT_DIAL_TIMEOUT,
            alpn: None,
        }
    }

    /// The limit for a whole dial (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The application protocols to offer with ALPN, most preferred first, instead of `h2`
    /// then `http/1.1`. An empty list offers none.
    ///
    /// ```no_run
    /// # async fn run(web: consul_connect::ConnectService) -> Result<(), Box<dyn std::error::Error>> {
    /// // Speak HTTP/1.1 to db even though it would agree to HTTP/2.
    /// let stream = web.dialer().alpn([b"http/1.1".to_vec()]).dial_service("db").await?;
    /// assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    /// # Ok(()) }
    /// ```
    pub fn alpn(mut self, protocols: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.alpn = Some(protocols.into_iter().collect());
        self
    }

    /// A [`CatalogResolver`] for `service` through the dialing service's agent, remembering
    /// its answers for dials while the agent cannot be reached ([`LastKnownGood`]), as
    /// [`dial_service`](Self::dial_service) and the HTTP connector use.
    pub fn catalog(&self, service: impl Into<String>) -> CatalogResolver {
        CatalogResolver::new(self.agent.clone(), service).last_known_good(self.discovery.clone())
    }

    /// Finds `service` through the agent's catalog and dials it.
    pub async fn dial_service(&self, service: &str) -> Result<ClientStream, DialError> {
        let resolver = self.catalog(service);
        self.dial(&resolver).await
    }

    /// Resolves and tries each candidate in turn until one completes a verified handshake.
    pub async fn dial(&self, resolver: &dyn Resolver) -> Result<ClientStream, DialError> {
        if self.cell.load().is_none() {
            return Err(DialError::NotReady {
                service: self.name.to_string(),
            });
        }
        let target = resolver.service().to_owned();
        let mut attempts = Vec::new();
        let work = async {
            let candidates = resolver.resolve().await?;
            for candidate in candidates {
                match self.attempt(&candidate).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => {
                        tracing::debug!(target = %target, addr = %candidate.addr, error = %e, "Connect dial attempt failed");
                        attempts.push((candidate.addr, e));
                    }
                }
            }
            Err(None)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(Some(resolve))) => Err(DialError::Resolve(resolve)),
            Ok(Err(None)) => Err(DialError::Failed { target, attempts }),
            Err(_) => Err(DialError::Timeout {
                target,
                timeout: self.timeout,
                attempts,
            }),
        }
    }

    async fn attempt(&self, candidate: &Candidate) -> Result<ClientStream, AttemptError> {
        let tcp = TcpStream::connect(&candidate.addr)
            .await
            .map_err(AttemptError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut config = self.client.for_server(candidate.expected.clone());
        if let Some(alpn) = &self.alpn {
            Arc::make_mut(&mut config).alpn_protocols = alpn.to_vec();
        }
        // SPIFFE peers have no DNS name and no SNI is sent; rustls still wants a name, so give
        // it the peer's IP. The verifier checks the SPIFFE identity instead.
        let ip: IpAddr = tcp.peer_addr().map_err(AttemptError::Connect)?.ip();
        let span = tracing::info_span!("connect.handshake", side = "client", service = %self.name, target = %candidate.expected, addr = %candidate.addr);
        let connect = TlsConnector::from(config).connect(ServerName::IpAddress(ip.into()), tcp);
        let result = tracing::Instrument::instrument(connect, span)
            .await
            .map_err(|e| {
                if let Some(v) = VerifyError::from_io(&e) {
                    AttemptError::Verify(v)
                } else if let Some(r) = ServerRefusal::from_io(&e) {
                    AttemptError::Refused(r)
                } else {
                    AttemptError::Handshake(e)
                }
            });
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(AttemptError::Verify(v)) => Err(v.kind()),
            Err(AttemptError::Refused(ServerRefusal::Denied)) => Err("denied"),
            Err(AttemptError::Refused(_)) => Err("authz_unavailable"),
            Err(_) => Err("tls"),
        };
        telemetry::handshake(&self.name, "client", outcome);
        result
    }
}
