//! rustls glue: certificate resolvers and verifiers over a [`MaterialCell`], and the server
//! and client configurations built from them.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};

use super::material::{verify_client, verify_server, MaterialCell};
use super::provider;
use super::verify::{ExpectedServer, HandshakeAuthorizer, VerifyError};

/// The ALPN protocols both sides offer, in order of preference: `h2`, then `http/1.1`
/// (Consul 1.4.5 offered only `h2`, which broke HTTP/1.1 services, hashicorp/consul#4466).
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS 1.3 preferred, TLS 1.2 accepted (Consul's Go SDK has a TLS 1.2 minimum).
static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The server configuration of a Connect service, built once for its whole life.
///
/// - Presents the current leaf of `cell` on every handshake (a rotation needs no new config).
/// - Requires a client certificate and checks it with [`verify_client`](super::verify_client)
///   against the current roots; then `authorizer`, if given, decides inside the handshake.
///   A client it denies gets the alert `access_denied` (run the accept inside
///   [`recording_refusals`](super::recording_refusals) to get the
///   [`VerifyError::Unauthorized`] back on the server); a client whose certificate fails a
///   check gets `certificate_unknown` and the server's handshake error carries the
///   [`VerifyError`] (see [`VerifyError::from_io`]).
/// - Secret extraction is enabled, only so that a client refused after the handshake can be
///   sent a fatal alert (see `ConnectListener`); nothing else extracts or logs secrets.
/// - TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, no session resumption (no session cache, no
///   tickets), so every connection is fully verified and authorized.
///
/// ```
/// use std::sync::Arc;
/// use consul_connect::tls::{server_config, MaterialCell};
///
/// let config = server_config(Arc::new(MaterialCell::new()), None);
/// let acceptor = tokio_rustls::TlsAcceptor::from(config);
/// # let _ = acceptor;
/// ```
pub fn server_config(
    cell: Arc<MaterialCell>,
    authorizer: Option<Arc<dyn HandshakeAuthorizer>>,
) -> Arc<ServerConfig> {
    server_config_with_clock(cell, authorizer, Arc::new(DefaultTimeProvider))
}

/// [`server_config`] whose handshakes check certificate validity at the time `clock` gives,
/// instead of the system clock (see [`ConnectServiceBuilder::clock`](crate::service::ConnectServiceBuilder::clock)).
pub fn server_config_with_clock(
    cell: Arc<MaterialCell>,
    authorizer: Option<Arc<dyn HandshakeAuthorizer>>,
    clock: Arc<dyn TimeProvider>,
) -> Arc<ServerConfig> {
    let verifier = Arc::new(ClientVerifier {
        cell: cell.clone(),
        authorizer,
    });
    #[allow(clippy::expect_used)]
    // Invariant: the aws-lc-rs default provider has cipher suites and key exchange groups for
    // both TLS 1.2 and 1.3, so this version selection cannot fail.
    let builder = ServerConfig::builder_with_details(provider().clone(), clock)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(LeafResolver { cell }));
    config.alpn_protocols = alpn_protocols();
    // No resumption: rustls does not re-run the client verifier (nor our authorizer) for a
    // resumed session. No stateful cache and no TLS 1.3 tickets; the builder's ticketer
    // already never produces TLS 1.2 tickets.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // Lets the listener seal an `access_denied` / `internal_error` alert for a client refused
    // after the handshake (rustls has no API to send one); see `tls::refusal`.
    config.enable_secret_extraction = true;
    Arc::new(config)
}

/// The client side of a Connect service: one base configuration for its whole life, from
/// which each dial derives a configuration that knows which server it must reach.
///
/// # How the per-dial expectation reaches the verifier
///
/// rustls hands a `ServerCertVerifier` only the certificates and a [`ServerName`]. A SPIFFE
/// server is not identified by a DNS name (service names need not be valid DNS labels, and
/// encoding an identity into a fake hostname would be a second, fragile parser), and a
/// thread- or task-local would not follow the handshake across await points. So the
/// expectation is a field of the verifier itself: [`for_server`](Self::for_server) clones the
/// base `ClientConfig` (a few `Arc` increments and small vectors; the provider, certificate
/// resolver and [`MaterialCell`] are shared) and installs a verifier holding the
/// [`ExpectedServer`]. With resumption disabled there is no session cache whose sharing a
/// per-dial config would lose. The `ServerName` passed to the connector is not used for
/// verification and is not sent (no SNI, like Go's Connect SDK); any value will do, such as
/// the peer's IP address.
///
/// The base configuration is never handed out, so no connection can skip the expectation.
///
/// ```no_run
/// use std::sync::Arc;
/// use consul_connect::tls::{client_config, ExpectedServer, MaterialCell};
/// use rustls::pki_types::ServerName;
///
/// # async fn dial(cell: Arc<MaterialCell>, addr: std::net::SocketAddr) -> std::io::Result<()> {
/// let client = client_config(cell); // once per service
/// let config = client.for_server(ExpectedServer::new("db").with_datacenter("dc1"));
/// let tcp = tokio::net::TcpStream::connect(addr).await?;
/// let tls = tokio_rustls::TlsConnector::from(config)
///     .connect(ServerName::IpAddress(addr.ip().into()), tcp)
///     .await?; // fails unless the server proves it is db in dc1
/// # let _ = tls; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectClientConfig {
    base: ClientConfig,
    cell: Arc<MaterialCell>,
}

/// Builds the client side of a Connect service over `cell`: presents the current leaf on
/// every handshake, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, no resumption, no SNI.
/// Derive one configuration per dial with [`ConnectClientConfig::for_server`].
pub fn client_config(cell: Arc<MaterialCell>) -> ConnectClientConfig {
    client_config_with_clock(cell, Arc::new(DefaultTimeProvider))
}

/// [`client_config`] whose handshakes check the server's certificate at the time `clock`
/// gives, instead of the system clock.
pub fn client_config_with_clock(
    cell: Arc<MaterialCell>,
    clock: Arc<dyn TimeProvider>,
) -> ConnectClientConfig {
    #[allow(clippy::expect_used)]
    // Invariant: the aws-lc-rs default provider has cipher suites and key exchange groups for
    // both TLS 1.2 and 1.3, so this version selection cannot fail.
    let builder = ClientConfig::builder_with_details(provider().clone(), clock)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    let mut base = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoExpectation))
        .with_client_cert_resolver(Arc::new(LeafResolver { cell: cell.clone() }));
    base.alpn_protocols = alpn_protocols();
    base.resumption = Resumption::disabled();
    base.enable_sni = false;
    ConnectClientConfig { base, cell }
}

impl ConnectClientConfig {
    /// A configuration for one dial: the server must present a valid leaf of the `expected`
    /// service, checked inside the handshake (see the type's docs).
    pub fn for_server(&self, expected: ExpectedServer) -> Arc<ClientConfig> {
        let mut config = self.base.clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(ServerVerifier {
                cell: self.cell.clone(),
                expected,
            }));
        Arc::new(config)
    }

    /// The cell the configurations read.
    pub fn cell(&self) -> &Arc<MaterialCell> {
        &self.cell
    }
}

impl fmt::Debug for ConnectClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectClientConfig")
            .field("cell", &self.cell)
            .finish_non_exhaustive()
    }
}

fn alpn_protocols() -> Vec<Vec<u8>> {
    ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect()
}

/// Presents the current leaf of the cell, on both sides.
#[derive(Debug)]
struct LeafResolver {
    cell: Arc<MaterialCell>,
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.cell.load().map(|m| m.certified_key().clone())
    }
}

impl ResolvesClientCert for LeafResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.cell.load().map(|m| m.certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        self.cell.load().is_some()
    }
}

/// Server side: checks the client's certificate, then asks the authorizer.
struct ClientVerifier {
    cell: Arc<MaterialCell>,
    authorizer: Option<Arc<dyn HandshakeAuthorizer>>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA names in the CertificateRequest: a Connect client has exactly one leaf.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self.cell.load().ok_or(VerifyError::NoMaterial)?;
        match verify_client(
            &material,
            end_entity,
            intermediates,
            now,
            self.authorizer.as_deref(),
        ) {
            Ok(peer) => {
                tracing::debug!(peer = %peer.service_id(), serial = peer.serial(), "client certificate accepted");
                Ok(ClientCertVerified::assertion())
            }
            // Debug only: the accepting side (ConnectAcceptor, and so ConnectListener) reports
            // each refusal once, with the peer.
            Err(error @ VerifyError::Unauthorized { .. }) => {
                tracing::debug!(%error, "client refused by the handshake authorizer");
                // A real deny: the client gets `access_denied`. That rustls error carries no
                // detail, so the refusal is recorded for the server's reports.
                super::refusal::record_refusal(&error);
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            Err(error) => {
                tracing::debug!(%error, "client certificate refused");
                Err(error.into())
            }
        }
    }

    super::signature_checks_with!(super::provider_algorithms);
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field(
                "authorizer",
                &self.authorizer.as_ref().map(|_| "<authorizer>"),
            )
            .finish_non_exhaustive()
    }
}

/// Client side: checks the server's certificate and that it is the expected service.
#[derive(Debug)]
struct ServerVerifier {
    cell: Arc<MaterialCell>,
    expected: ExpectedServer,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self.cell.load().ok_or(VerifyError::NoMaterial)?;
        match verify_server(&material, end_entity, intermediates, now, &self.expected) {
            Ok(id) => {
                tracing::debug!(server = %id, "server certificate accepted");
                Ok(ServerCertVerified::assertion())
            }
            Err(error) => {
                tracing::warn!(%error, expected = %self.expected, "server certificate refused");
                Err(error.into())
            }
        }
    }

    super::signature_checks_with!(super::provider_algorithms);
}

/// The verifier of the never-exposed base client configuration: refuses every server, so a
/// configuration without an expectation cannot connect even by mistake.
#[derive(Debug)]
struct NoExpectation;

impl ServerCertVerifier for NoExpectation {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(
            "consul-connect: client configuration used without an expected server".to_owned(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no expected server".to_owned()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no expected server".to_owned()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
