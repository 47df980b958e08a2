//! Dialing other services over Connect: resolve, connect, mutual TLS, and proof that the
//! server is the service asked for.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::resolve::{Candidate, CatalogResolver, ResolveError, Resolver};
use crate::service::ConnectService;
use crate::telemetry;
use crate::tls::VerifyError;

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
    /// The handshake failed otherwise (the server refused us, e.g. denied by intention).
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
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

/// Connects to other services as a [`ConnectService`].
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
    service: ConnectService,
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
            .field("service", &self.service.name())
            .field("timeout", &self.timeout)
            .field("alpn", &alpn)
            .finish()
    }
}

impl ConnectDialer {
    pub(crate) fn new(service: ConnectService) -> Self {
        Self {
            service,
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

    /// Finds `service` through the agent's catalog and dials it.
    pub async fn dial_service(&self, service: &str) -> Result<ClientStream, DialError> {
        let resolver = CatalogResolver::new(self.service.agent().clone(), service);
        self.dial(&resolver).await
    }

    /// Resolves and tries each candidate in turn until one completes a verified handshake.
    pub async fn dial(&self, resolver: &dyn Resolver) -> Result<ClientStream, DialError> {
        if self.service.material().is_none() {
            return Err(DialError::NotReady {
                service: self.service.name().to_owned(),
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
        let mut config = self
            .service
            .client_config()
            .for_server(candidate.expected.clone());
        if let Some(alpn) = &self.alpn {
            Arc::make_mut(&mut config).alpn_protocols = alpn.to_vec();
        }
        // SPIFFE peers have no DNS name and no SNI is sent; rustls still wants a name, so give
        // it the peer's IP. The verifier checks the SPIFFE identity instead.
        let ip: IpAddr = tcp.peer_addr().map_err(AttemptError::Connect)?.ip();
        let span = tracing::info_span!("connect.handshake", side = "client", service = %self.service.name(), target = %candidate.expected, addr = %candidate.addr);
        let connect = TlsConnector::from(config).connect(ServerName::IpAddress(ip.into()), tcp);
        let result = tracing::Instrument::instrument(connect, span)
            .await
            .map_err(|e| match VerifyError::from_io(&e) {
                Some(v) => AttemptError::Verify(v),
                None => AttemptError::Handshake(e),
            });
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(AttemptError::Verify(v)) => Err(v.kind()),
            Err(_) => Err("tls"),
        };
        telemetry::handshake(self.service.name(), "client", outcome);
        result
    }
}
