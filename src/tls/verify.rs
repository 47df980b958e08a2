//! Peer certificate verification as plain functions over DER: no I/O, no rustls state.
//!
//! The rustls verifiers in `config` are thin wrappers around these.

use std::fmt;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use rustls::CommonState;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use super::{provider, TlsError};
use crate::api::CaRootList;
use crate::spiffe::{ServiceId, SpiffeId, SpiffeIdError, TrustDomain};
use consul_connect_types::api::serial_hex;

/// The role of the peer whose certificate is checked, which decides the required extended
/// key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// The peer is a TLS client: its leaf needs EKU `clientAuth`.
    Client,
    /// The peer is a TLS server: its leaf needs EKU `serverAuth`.
    Server,
}

impl PeerRole {
    fn key_usage(self) -> webpki::KeyUsage {
        match self {
            PeerRole::Client => webpki::KeyUsage::client_auth(),
            PeerRole::Server => webpki::KeyUsage::server_auth(),
        }
    }
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerRole::Client => "client",
            PeerRole::Server => "server",
        })
    }
}

/// Why a peer certificate was refused. Each variant names the check that failed and, where
/// known, the identity involved.
///
/// `peer` fields hold the URI SAN the certificate *claims* (unverified, for logs); they are
/// `None` when it has none.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The peer sent no certificate (a client must; mutual TLS is required).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// We have no roots and leaf yet, so no peer can be verified.
    #[error("no TLS material (CA roots and leaf) is loaded yet")]
    NoMaterial,
    /// The certificate could not be parsed.
    #[error("malformed peer certificate: {reason}")]
    Malformed {
        /// The parser's complaint.
        reason: String,
    },
    /// No path leads from the certificate to a current Consul CA root (unknown issuer, bad
    /// signature, an expired or unusable intermediate...).
    #[error("peer certificate{} does not chain to a trusted CA root: {reason}", claims(.peer))]
    UntrustedChain {
        /// The URI SAN the certificate claims.
        peer: Option<String>,
        /// What failed on the way to a root.
        reason: String,
    },
    /// The peer's leaf has expired.
    #[error("peer certificate{} expired at {not_after}", claims(.peer))]
    Expired {
        /// The URI SAN the certificate claims.
        peer: Option<String>,
        /// The leaf's NotAfter.
        not_after: OffsetDateTime,
    },
    /// The peer's leaf is not valid yet.
    #[error("peer certificate{} is not valid before {not_before}", claims(.peer))]
    NotYetValid {
        /// The URI SAN the certificate claims.
        peer: Option<String>,
        /// The leaf's NotBefore.
        not_before: OffsetDateTime,
    },
    /// The leaf's extended key usage does not allow the role it is used in.
    #[error("peer certificate{} is not valid for TLS {role} authentication", claims(.peer))]
    BadKeyUsage {
        /// The URI SAN the certificate claims.
        peer: Option<String>,
        /// The role the peer played.
        role: PeerRole,
    },
    /// The peer presented a CA certificate as its leaf.
    #[error("peer certificate{} is a CA certificate, not a leaf", claims(.peer))]
    IsCa {
        /// The URI SAN the certificate claims.
        peer: Option<String>,
    },
    /// The leaf has no URI SAN, so no SPIFFE identity.
    #[error("peer certificate has no URI SAN")]
    NoUriSan,
    /// The leaf has more than one URI SAN; Connect identities are unambiguous.
    #[error("peer certificate has {} URI SANs, expected one: {uris:?}", .uris.len())]
    MultipleUriSans {
        /// All URI SANs found.
        uris: Vec<String>,
    },
    /// The URI SAN is not a SPIFFE ID of the form Consul issues.
    #[error("peer certificate URI SAN {uri:?} is not a Consul SPIFFE ID: {reason}")]
    NotSpiffe {
        /// The URI SAN.
        uri: String,
        /// Why it does not parse.
        #[source]
        reason: SpiffeIdError,
    },
    /// The URI SAN is a SPIFFE ID but not a service identity (for example a CA signing ID).
    #[error("peer identity {id} is not a service identity")]
    NotAServiceId {
        /// The identity found.
        id: SpiffeId,
    },
    /// The identity belongs to a trust domain none of our roots serves.
    #[error("peer {id} is outside the trust domain(s) {expected:?}")]
    WrongTrustDomain {
        /// The peer's identity.
        id: ServiceId,
        /// The trust domains of the current roots.
        expected: Vec<TrustDomain>,
    },
    /// The server is a valid Connect service, but not the one dialed.
    #[error("server certificate mismatch: got {got}, want {expected}")]
    WrongService {
        /// What the dialer asked for (boxed to keep the error small).
        expected: Box<ExpectedServer>,
        /// Who answered.
        got: ServiceId,
    },
    /// The handshake authorizer (intentions) denied the client.
    #[error("{peer} is not authorized: {reason}")]
    Unauthorized {
        /// The verified client identity.
        peer: ServiceId,
        /// The authorizer's reason.
        reason: String,
    },
}

impl VerifyError {
    /// A short, stable name of the failed check, for metrics labels and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::NoCertificate => "no_certificate",
            VerifyError::NoMaterial => "no_material",
            VerifyError::Malformed { .. } => "malformed",
            VerifyError::UntrustedChain { .. } => "untrusted_chain",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::BadKeyUsage { .. } => "bad_key_usage",
            VerifyError::IsCa { .. } => "is_ca",
            VerifyError::NoUriSan => "no_uri_san",
            VerifyError::MultipleUriSans { .. } => "multiple_uri_sans",
            VerifyError::NotSpiffe { .. } => "not_spiffe",
            VerifyError::NotAServiceId { .. } => "not_a_service_id",
            VerifyError::WrongTrustDomain { .. } => "wrong_trust_domain",
            VerifyError::WrongService { .. } => "wrong_service",
            VerifyError::Unauthorized { .. } => "unauthorized",
        }
    }

    /// The verification error behind a rustls error raised by this crate's verifiers.
    ///
    /// rustls rejects a missing client certificate itself; that is reported as
    /// [`VerifyError::NoCertificate`].
    pub fn from_rustls(err: &rustls::Error) -> Option<VerifyError> {
        match err {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<VerifyError>().cloned()
            }
            rustls::Error::NoCertificatesPresented => Some(VerifyError::NoCertificate),
            _ => None,
        }
    }

    /// The verification error behind an I/O error from a handshake (tokio-rustls wraps the
    /// rustls error in the `io::Error` it returns).
    ///
    /// ```
    /// use consul_connect::tls::VerifyError;
    ///
    /// fn log_refusal(err: &std::io::Error) {
    ///     match VerifyError::from_io(err) {
    ///         Some(why) => eprintln!("peer refused: {why}"),
    ///         None => eprintln!("handshake failed: {err}"),
    ///     }
    /// }
    /// ```
    pub fn from_io(err: &std::io::Error) -> Option<VerifyError> {
        let inner = err.get_ref()?;
        Self::from_rustls(inner.downcast_ref::<rustls::Error>()?)
    }
}

impl From<VerifyError> for rustls::Error {
    /// Carried as `CertificateError::Other`, so the rejecting side can recover the variant
    /// with [`VerifyError::from_rustls`]; the peer gets a `certificate_unknown` alert.
    fn from(err: VerifyError) -> Self {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(err),
        )))
    }
}

fn claims(peer: &Option<String>) -> String {
    match peer {
        Some(uri) => format!(" (claiming {uri})"),
        None => String::new(),
    }
}

/// What a client requires of the server it dials: the service name, and optionally the
/// namespace and datacenter.
///
/// Compared case-insensitively against the server's verified identity, as Consul's
/// `verifyServerCertMatchesURI` does; the trust domain is not part of the expectation (the
/// chain and the trust-domain check against the roots establish it). A part left unset
/// matches any value.
///
/// ```
/// use consul_connect::spiffe::ServiceId;
/// use consul_connect::tls::ExpectedServer;
///
/// let db: ServiceId = "spiffe://abc.consul/ns/default/dc/dc1/svc/db".parse()?;
/// assert!(ExpectedServer::new("DB").with_datacenter("dc1").matches(&db));
/// assert!(!ExpectedServer::new("db").with_datacenter("dc2").matches(&db));
/// assert!(ExpectedServer::from(&db).matches(&db));
/// # Ok::<(), consul_connect::spiffe::SpiffeIdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExpectedServer {
    service: String,
    partition: Option<String>,
    namespace: Option<String>,
    datacenter: Option<String>,
}

impl ExpectedServer {
    /// Expects the service `service`, in any namespace and datacenter.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            partition: None,
            namespace: None,
            datacenter: None,
        }
    }

    /// Also requires the admin partition (`default` in Consul OSS and for URIs without `/ap/`).
    pub fn with_partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Also requires the namespace (`default` in Consul OSS).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Also requires the datacenter.
    pub fn with_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// The expected service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The expected partition, if constrained.
    pub fn partition(&self) -> Option<&str> {
        self.partition.as_deref()
    }

    /// The expected namespace, if constrained.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The expected datacenter, if constrained.
    pub fn datacenter(&self) -> Option<&str> {
        self.datacenter.as_deref()
    }

    /// Whether `id` is the expected server (trust domain ignored, see the type's docs).
    pub fn matches(&self, id: &ServiceId) -> bool {
        let part = |want: Option<&str>, got: &str| want.is_none_or(|w| w.eq_ignore_ascii_case(got));
        self.service.eq_ignore_ascii_case(id.service())
            && part(self.partition(), id.partition())
            && part(self.namespace(), id.namespace())
            && part(self.datacenter(), id.datacenter())
    }
}

impl From<&ServiceId> for ExpectedServer {
    /// Expects exactly this service, partition, namespace and datacenter (any trust domain the
    /// roots serve), as a resolver's expected `CertURI` does.
    fn from(id: &ServiceId) -> Self {
        Self::new(id.service())
            .with_partition(id.partition())
            .with_namespace(id.namespace())
            .with_datacenter(id.datacenter())
    }
}

impl fmt::Display for ExpectedServer {
    /// A URI pattern: `spiffe://*[/ap/<partition>]/ns/<ns|*>/dc/<dc|*>/svc/<service>`, the
    /// partition shown when one other than `default` is required.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("spiffe://*")?;
        if let Some(p) = self
            .partition()
            .filter(|p| !p.eq_ignore_ascii_case("default"))
        {
            write!(f, "/ap/{p}")?;
        }
        write!(
            f,
            "/ns/{}/dc/{}/svc/{}",
            self.namespace().unwrap_or("*"),
            self.datacenter().unwrap_or("*"),
            self.service
        )
    }
}

/// Decides, inside the server's handshake, whether a verified client may connect.
///
/// Called from the client-certificate verifier after every other check passed, with the
/// client's identity and its certificate serial (colon hex, as Consul's authorize API takes
/// it). An `Err(reason)` fails the handshake: the client gets the alert `access_denied`, the
/// server a [`VerifyError::Unauthorized`] (when the accept runs inside
/// [`recording_refusals`](super::recording_refusals), as `ConnectListener`'s does). It runs on the handshake path, so it must be quick and must
/// not block (an in-process intentions lookup, not an HTTP call).
///
/// Closures implement it:
///
/// ```
/// use std::sync::Arc;
/// use consul_connect::spiffe::ServiceId;
/// use consul_connect::tls::HandshakeAuthorizer;
///
/// let only_web: Arc<dyn HandshakeAuthorizer> = Arc::new(|peer: &ServiceId, _serial: &str| {
///     if peer.service() == "web" { Ok(()) } else { Err("denied by intention".to_owned()) }
/// });
/// # let _ = only_web;
/// ```
///
/// It is the synchronous, in-handshake form of [`crate::Authorizer`] (see there why both
/// exist); a service gets it from its authorizer's `handshake_hook`.
pub trait HandshakeAuthorizer: Send + Sync {
    /// `Ok(())` to let `peer` in, `Err(reason)` to refuse it.
    fn authorize(&self, peer: &ServiceId, serial: &str) -> Result<(), String>;
}

impl<F> HandshakeAuthorizer for F
where
    F: Fn(&ServiceId, &str) -> Result<(), String> + Send + Sync,
{
    fn authorize(&self, peer: &ServiceId, serial: &str) -> Result<(), String> {
        self(peer, serial)
    }
}

/// A verified peer: its identity and its certificate serial (colon hex).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub(crate) id: ServiceId,
    pub(crate) serial: String,
}

impl PeerIdentity {
    /// The peer's service identity.
    pub fn service_id(&self) -> &ServiceId {
        &self.id
    }

    /// The serial of the peer's leaf, as Consul writes it (`ClientCertSerial`).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The service identity, by value.
    pub fn into_service_id(self) -> ServiceId {
        self.id
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerIdentity({}, serial {})", self.id, self.serial)
    }
}

/// The identity of the peer of a finished handshake, read from its leaf certificate.
///
/// Meaningful on connections made with this crate's configurations, whose verifiers have
/// already checked the certificate: this only reads the URI SAN and serial back (rustls keeps
/// the peer's certificates, not the verifier's result). On a connection made with another
/// configuration it reports what the certificate claims. `None` before the handshake or if
/// the leaf has no single SPIFFE service URI.
///
/// ```
/// use consul_connect::tls::peer_identity;
///
/// fn log_peer(conn: &rustls::ServerConnection) {
///     if let Some(peer) = peer_identity(conn) {
///         println!("{} (serial {})", peer.service_id(), peer.serial());
///     }
/// }
/// ```
pub fn peer_identity(conn: &CommonState) -> Option<PeerIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    let facts = CertFacts::parse(leaf).ok()?;
    match facts.uris.as_slice() {
        [uri] => Some(PeerIdentity {
            id: uri.parse().ok()?,
            serial: facts.serial,
        }),
        _ => None,
    }
}

/// The full check behind [`verify_peer`], over parsed roots.
pub(crate) fn verify_with_roots(
    roots: &Roots,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> Result<PeerIdentity, VerifyError> {
    let facts = CertFacts::parse(end_entity)?;
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| VerifyError::Malformed {
        reason: e.to_string(),
    })?;
    cert.verify_for_usage(
        provider().signature_verification_algorithms.all,
        roots.anchors(),
        intermediates,
        now,
        role.key_usage(),
        None,
        None,
    )
    .map_err(|e| map_webpki_error(e, &facts, now, role))?;

    // webpki already refuses a CA as end entity; kept so that the rule does not depend on it.
    if facts.is_ca {
        return Err(VerifyError::IsCa {
            peer: facts.claimed(),
        });
    }
    let uri = match facts.uris.as_slice() {
        [] => return Err(VerifyError::NoUriSan),
        [uri] => uri,
        _ => {
            return Err(VerifyError::MultipleUriSans {
                uris: facts.uris.clone(),
            })
        }
    };
    let id = match uri.parse::<SpiffeId>() {
        Ok(SpiffeId::Service(id)) => id,
        Ok(id) => return Err(VerifyError::NotAServiceId { id }),
        Err(reason) => {
            return Err(VerifyError::NotSpiffe {
                uri: uri.clone(),
                reason,
            })
        }
    };
    if !roots.trust_domains().contains(id.trust_domain()) {
        return Err(VerifyError::WrongTrustDomain {
            id,
            expected: roots.trust_domains().to_vec(),
        });
    }
    Ok(PeerIdentity {
        id,
        serial: facts.serial,
    })
}

/// Turns a webpki path-building error into the check that failed.
///
/// webpki checks the end entity's own validity, basic constraints and EKU before looking for
/// issuers and returns those errors at once, but the same error kinds also come from
/// intermediates; the leaf's own facts tell the two apart, so an expired cross-signed
/// intermediate is never reported as an expired leaf (or the reverse).
fn map_webpki_error(
    err: webpki::Error,
    leaf: &CertFacts,
    now: UnixTime,
    role: PeerRole,
) -> VerifyError {
    use webpki::Error as E;
    let peer = leaf.claimed();
    let now_s = unix_seconds(now);
    let untrusted = |reason: String| VerifyError::UntrustedChain {
        peer: leaf.claimed(),
        reason,
    };
    #[allow(deprecated)] // RequiredEkuNotFound is still returned by some paths.
    match err {
        E::CertExpired { .. } if now_s > leaf.not_after.unix_timestamp() => VerifyError::Expired {
            peer,
            not_after: leaf.not_after,
        },
        E::CertExpired { not_after, .. } => untrusted(format!(
            "an intermediate certificate expired at {}",
            fmt_unix(not_after)
        )),
        E::CertNotValidYet { .. } if now_s < leaf.not_before.unix_timestamp() => {
            VerifyError::NotYetValid {
                peer,
                not_before: leaf.not_before,
            }
        }
        E::CertNotValidYet { not_before, .. } => untrusted(format!(
            "an intermediate certificate is not valid before {}",
            fmt_unix(not_before)
        )),
        E::CaUsedAsEndEntity => VerifyError::IsCa { peer },
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension
            if !leaf.eku_allows(role) =>
        {
            VerifyError::BadKeyUsage { peer, role }
        }
        E::UnknownIssuer => untrusted(
            "no path to a current CA root (issuer unknown; a cross-signed intermediate may be missing)"
                .to_owned(),
        ),
        E::InvalidSignatureForPublicKey => {
            untrusted("a signature on the chain does not verify".to_owned())
        }
        other => untrusted(other.to_string()),
    }
}

fn fmt_unix(t: UnixTime) -> String {
    match OffsetDateTime::from_unix_timestamp(unix_seconds(t)) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{} s after the epoch", t.as_secs()),
    }
}

/// What we read from a certificate with x509-parser (webpki does not expose these).
pub(crate) struct CertFacts {
    pub(crate) uris: Vec<String>,
    pub(crate) is_ca: bool,
    pub(crate) serial: String,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    /// `(clientAuth, serverAuth)` if the EKU extension is present.
    eku: Option<(bool, bool)>,
}

impl CertFacts {
    pub(crate) fn parse(der: &[u8]) -> Result<Self, VerifyError> {
        let malformed = |reason: String| VerifyError::Malformed { reason };
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed("trailing data after the certificate".to_owned()));
        }
        let uris = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(malformed(format!("subject alternative name: {e}"))),
        };
        let is_ca = match cert.basic_constraints() {
            Ok(bc) => bc.is_some_and(|bc| bc.value.ca),
            Err(e) => return Err(malformed(format!("basic constraints: {e}"))),
        };
        let eku = match cert.extended_key_usage() {
            Ok(eku) => eku.map(|eku| (eku.value.client_auth, eku.value.server_auth)),
            Err(e) => return Err(malformed(format!("extended key usage: {e}"))),
        };
        let validity = cert.validity();
        Ok(Self {
            uris,
            is_ca,
            serial: serial_hex(cert.raw_serial()),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            eku,
        })
    }

    /// The first URI SAN, for error context only.
    fn claimed(&self) -> Option<String> {
        self.uris.first().cloned()
    }

    /// Whether the leaf's own EKU allows `role` (webpki ignores `anyExtendedKeyUsage`, so do we).
    fn eku_allows(&self, role: PeerRole) -> bool {
        match (self.eku, role) {
            (None, _) => true,
            (Some((client, _)), PeerRole::Client) => client,
            (Some((_, server)), PeerRole::Server) => server,
        }
    }
}

/// Trusted roots, parsed once.
pub(crate) struct Roots {
    pub(crate) ids: Vec<String>,
    pub(crate) certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    trust_domains: Vec<TrustDomain>,
}

impl Roots {
    /// The roots of Consul's list: each `RootCert` must hold exactly one certificate; the
    /// list's `TrustDomain` covers every root, and a root's own signing-ID URI SAN adds its.
    pub(crate) fn from_list(list: &CaRootList) -> Result<Self, TlsError> {
        if list.roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let trust_domain = if list.trust_domain.is_empty() {
            None
        } else {
            Some(TrustDomain::new(&list.trust_domain).map_err(|source| {
                TlsError::BadTrustDomain {
                    trust_domain: list.trust_domain.clone(),
                    source,
                }
            })?)
        };
        let mut roots = Vec::with_capacity(list.roots.len());
        for root in &list.roots {
            let bad = |reason: String| TlsError::BadRoot {
                id: root.id.clone(),
                reason,
            };
            let mut certs = pem_certs(&root.root_cert).map_err(bad)?;
            match certs.len() {
                1 => roots.push((root.id.clone(), certs.remove(0))),
                n => return Err(bad(format!("RootCert holds {n} certificates, expected 1"))),
            }
        }
        Self::new(roots, trust_domain, None)
    }

    /// Trust anchors from `roots` (each with its ID, for errors and status). The trust
    /// domains are `trust_domain` if given, each root's signing-ID URI SAN, and `for_unnamed`
    /// for a root that names none (a user CA).
    pub(crate) fn new(
        roots: Vec<(String, CertificateDer<'static>)>,
        trust_domain: Option<TrustDomain>,
        for_unnamed: Option<&TrustDomain>,
    ) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let mut trust_domains: Vec<TrustDomain> = Vec::new();
        let mut add_trust_domain = |td: &TrustDomain| {
            if !trust_domains.contains(td) {
                trust_domains.push(td.clone());
            }
        };
        if let Some(td) = &trust_domain {
            add_trust_domain(td);
        }
        let mut out = Self {
            ids: Vec::with_capacity(roots.len()),
            certs: Vec::with_capacity(roots.len()),
            anchors: Vec::with_capacity(roots.len()),
            trust_domains: Vec::new(),
        };
        for (id, cert) in roots {
            let bad = |reason: String| TlsError::BadRoot {
                id: id.clone(),
                reason,
            };
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| bad(format!("not usable as a trust anchor: {e}")))?
                .to_owned();
            let facts = CertFacts::parse(&cert).map_err(|e| bad(e.to_string()))?;
            // A root names its trust domain with a signing-ID URI SAN. A user-supplied root
            // may lack one; the list's TrustDomain (or `for_unnamed`) then covers it.
            let mut named = false;
            for uri in &facts.uris {
                match uri.parse::<SpiffeId>() {
                    Ok(SpiffeId::Signing(signing)) => {
                        named = true;
                        add_trust_domain(signing.trust_domain());
                    }
                    Ok(other) => {
                        tracing::warn!(root = %id, id = %other, kind = other.kind(), "CA root carries a URI SAN that is not a signing ID; ignored");
                    }
                    Err(error) => {
                        tracing::warn!(root = %id, %uri, %error, "CA root URI SAN is not a SPIFFE signing ID; ignored");
                    }
                }
            }
            if let (false, Some(td)) = (named, for_unnamed) {
                add_trust_domain(td);
            }
            out.ids.push(id);
            out.certs.push(cert);
            out.anchors.push(anchor);
        }
        if trust_domains.is_empty() {
            return Err(TlsError::NoTrustDomain);
        }
        out.trust_domains = trust_domains;
        Ok(out)
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub(crate) fn trust_domains(&self) -> &[TrustDomain] {
        &self.trust_domains
    }
}

pub(crate) fn unix_seconds(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

/// All `CERTIFICATE` blocks of a PEM text, in order; other block types are skipped.
pub(crate) fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable PEM: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(uri: &str) -> ServiceId {
        uri.parse().expect("service id")
    }

    #[test]
    fn expected_server_matches_like_consul() {
        let db = id("spiffe://abc.consul/ns/default/dc/dc1/svc/db");
        assert!(ExpectedServer::new("db").matches(&db));
        assert!(ExpectedServer::new("DB")
            .with_namespace("Default")
            .with_datacenter("DC1")
            .matches(&db));
        assert!(
            ExpectedServer::from(&id("spiffe://other.consul/ns/default/dc/dc1/svc/db"))
                .matches(&db),
            "the trust domain is not part of the expectation"
        );
        assert!(!ExpectedServer::new("web").matches(&db));
        assert!(!ExpectedServer::new("db")
            .with_datacenter("dc2")
            .matches(&db));
        assert!(!ExpectedServer::new("db").with_namespace("ops").matches(&db));
        assert!(!ExpectedServer::new("d").matches(&db));
        // Partitions: a server in another partition is another service.
        let eu = id("spiffe://abc.consul/ap/eu/ns/default/dc/dc1/svc/db");
        assert!(!ExpectedServer::from(&db).matches(&eu));
        assert!(!ExpectedServer::from(&eu).matches(&db));
        assert!(ExpectedServer::from(&eu).matches(&eu));
        assert!(ExpectedServer::new("db")
            .with_partition("default")
            .matches(&db));
        assert_eq!(
            ExpectedServer::from(&eu).to_string(),
            "spiffe://*/ap/eu/ns/default/dc/dc1/svc/db"
        );
        assert_eq!(
            ExpectedServer::new("db").to_string(),
            "spiffe://*/ns/*/dc/*/svc/db"
        );
        assert_eq!(
            ExpectedServer::from(&db).to_string(),
            "spiffe://*/ns/default/dc/dc1/svc/db"
        );
    }

    #[test]
    fn verify_errors_survive_rustls_and_io_wrapping() {
        let err = VerifyError::WrongService {
            expected: Box::new(ExpectedServer::new("db")),
            got: id("spiffe://abc.consul/ns/default/dc/dc1/svc/api"),
        };
        let tls: rustls::Error = err.into();
        assert!(matches!(
            VerifyError::from_rustls(&tls),
            Some(VerifyError::WrongService { got, .. }) if got.service() == "api"
        ));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        assert!(matches!(
            VerifyError::from_io(&io),
            Some(VerifyError::WrongService { .. })
        ));

        assert!(matches!(
            VerifyError::from_rustls(&rustls::Error::NoCertificatesPresented),
            Some(VerifyError::NoCertificate)
        ));
        assert!(VerifyError::from_rustls(&rustls::Error::DecryptError).is_none());
        assert!(VerifyError::from_io(&std::io::Error::other("plain")).is_none());
    }

    #[test]
    fn error_messages_name_the_peer() {
        let err = VerifyError::Expired {
            peer: Some("spiffe://abc.consul/ns/default/dc/dc1/svc/web".to_owned()),
            not_after: OffsetDateTime::UNIX_EPOCH,
        };
        assert!(err.to_string().contains("svc/web"), "{err}");
        let err = VerifyError::Unauthorized {
            peer: id("spiffe://abc.consul/ns/default/dc/dc1/svc/web"),
            reason: "denied".to_owned(),
        };
        assert_eq!(
            err.to_string(),
            "spiffe://abc.consul/ns/default/dc/dc1/svc/web is not authorized: denied"
        );
    }

    fn facts(not_before: i64, not_after: i64, eku: Option<(bool, bool)>) -> CertFacts {
        CertFacts {
            uris: vec!["spiffe://abc.consul/ns/default/dc/dc1/svc/web".to_owned()],
            is_ca: false,
            serial: "08".to_owned(),
            not_before: OffsetDateTime::from_unix_timestamp(not_before).expect("time"),
            not_after: OffsetDateTime::from_unix_timestamp(not_after).expect("time"),
            eku,
        }
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
    }

    #[test]
    fn webpki_time_errors_blame_the_right_certificate() {
        let now = at(1_000);
        let expired = webpki::Error::CertExpired {
            time: now,
            not_after: at(900),
        };
        // The leaf itself expired.
        let err = map_webpki_error(expired.clone(), &facts(0, 900, None), now, PeerRole::Client);
        assert!(
            matches!(err, VerifyError::Expired { peer: Some(_), .. }),
            "{err:?}"
        );
        // The leaf is fine: an intermediate expired.
        let err = map_webpki_error(expired, &facts(0, 2_000, None), now, PeerRole::Client);
        assert!(
            matches!(&err, VerifyError::UntrustedChain { reason, .. } if reason.contains("intermediate")),
            "{err:?}"
        );

        let early = webpki::Error::CertNotValidYet {
            time: now,
            not_before: at(1_100),
        };
        let err = map_webpki_error(
            early.clone(),
            &facts(1_100, 2_000, None),
            now,
            PeerRole::Client,
        );
        assert!(matches!(err, VerifyError::NotYetValid { .. }), "{err:?}");
        let err = map_webpki_error(early, &facts(0, 2_000, None), now, PeerRole::Client);
        assert!(matches!(err, VerifyError::UntrustedChain { .. }), "{err:?}");
    }

    #[test]
    fn webpki_eku_errors_blame_the_right_certificate() {
        let now = at(1_000);
        let eku = || webpki::Error::EmptyEkuExtension;
        let server_only = facts(0, 2_000, Some((false, true)));
        let err = map_webpki_error(eku(), &server_only, now, PeerRole::Client);
        assert!(
            matches!(
                err,
                VerifyError::BadKeyUsage {
                    role: PeerRole::Client,
                    ..
                }
            ),
            "{err:?}"
        );
        // The leaf allows the role, so the complaint was about an intermediate.
        let err = map_webpki_error(eku(), &server_only, now, PeerRole::Server);
        assert!(matches!(err, VerifyError::UntrustedChain { .. }), "{err:?}");
    }

    #[test]
    fn other_webpki_errors_are_untrusted_chains_never_success() {
        let f = facts(0, 2_000, None);
        for e in [
            webpki::Error::UnknownIssuer,
            webpki::Error::InvalidSignatureForPublicKey,
            webpki::Error::EndEntityUsedAsCa,
            webpki::Error::PathLenConstraintViolated,
            webpki::Error::CertNotValidForName(webpki::InvalidNameContext {
                expected: rustls::pki_types::ServerName::try_from("db").expect("name"),
                presented: vec![],
            }),
        ] {
            let err = map_webpki_error(e, &f, at(1_000), PeerRole::Server);
            assert!(matches!(err, VerifyError::UntrustedChain { .. }), "{err:?}");
        }
        assert!(matches!(
            map_webpki_error(
                webpki::Error::CaUsedAsEndEntity,
                &f,
                at(1_000),
                PeerRole::Server
            ),
            VerifyError::IsCa { .. }
        ));
    }
}
