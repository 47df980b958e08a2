//! What a service needs for every handshake: trusted roots and its own verified leaf.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::verify::{
    self, pem_certs, unix_seconds, verify_with_roots, CertFacts, ExpectedServer,
    HandshakeAuthorizer, PeerIdentity, PeerRole, Roots, VerifyError,
};
use super::{provider, TlsError};
use crate::api::{CaRootList, LeafCert};
use crate::spiffe::{ServiceId, TrustDomain};

/// The TLS material of one service: CA roots, trust domains, and its leaf with its key.
///
/// Built once per update from the agent's roots and leaf, then read on every handshake, so
/// everything a handshake needs is parsed here (roots as webpki trust anchors, the leaf as a
/// rustls [`CertifiedKey`]). A `Material` only exists if its leaf verifies against its roots:
/// it chains to one of them (with the leaf's own intermediates), is valid at the given time,
/// is usable for both TLS client and server authentication, carries exactly one SPIFFE
/// service URI in one of the roots' trust domains, and matches its private key.
///
/// `Debug` shows identities, serials and dates, never key material.
///
/// ```
/// use consul_connect::api::{CaRootList, LeafCert};
/// use consul_connect::tls::{Material, TlsError};
/// use rustls::pki_types::UnixTime;
///
/// fn update(roots: &CaRootList, leaf: &LeafCert) -> Result<Material, TlsError> {
///     let material = Material::new(roots, leaf, UnixTime::now())?;
///     println!("serving as {} (serial {})", material.service_id(), material.serial());
///     Ok(material)
/// }
/// ```
pub struct Material {
    roots: Arc<Roots>,
    leaf: Leaf,
    /// False only after [`Material::with_roots_keeping_leaf`] took roots the held leaf does
    /// not chain to.
    leaf_chains: bool,
}

impl Material {
    /// Builds the material from a roots list and a leaf, verifying the leaf at `now`.
    ///
    /// All PEM blocks of `leaf.cert_pem` form the presented chain (the leaf, then any
    /// intermediate such as a cross-signed root after a CA rotation).
    pub fn new(roots: &CaRootList, leaf: &LeafCert, now: UnixTime) -> Result<Self, TlsError> {
        let roots = Arc::new(Roots::from_list(roots)?);
        let leaf = Leaf::from_api(leaf, &roots, now)?;
        Ok(Self {
            roots,
            leaf,
            leaf_chains: true,
        })
    }

    /// The same leaf under a new roots list, re-verified at `now`.
    ///
    /// Used when the roots watch fires: the new roots must still vouch for the current leaf
    /// (Consul keeps a rotated-out root in the list until leaves signed by it have expired).
    pub fn with_roots(&self, roots: &CaRootList, now: UnixTime) -> Result<Self, TlsError> {
        let roots = Arc::new(Roots::from_list(roots)?);
        let service = self.leaf.id.service().to_owned();
        let leaf = Leaf::verified(self.leaf.certified_key.clone(), &service, &roots, now)?;
        Ok(Self {
            roots,
            leaf,
            leaf_chains: true,
        })
    }

    /// New roots trusted at once, the held leaf still presented even when it does not chain
    /// to them (then [`leaf_chains`](Self::leaf_chains) is false, and the error says why).
    ///
    /// This is the policy of Consul's Go SDK: a roots list from the agent is what peers are
    /// checked against from now on, whether or not our own leaf has been renewed yet. The
    /// held leaf keeps being presented (peers not yet rotated still accept it) until a new
    /// one arrives; a service holding such material is not ready. A roots list that is
    /// unusable in itself (no roots, bad PEM) is refused as by [`Material::new`].
    pub fn with_roots_keeping_leaf(
        &self,
        roots: &CaRootList,
        now: UnixTime,
    ) -> Result<(Self, Option<TlsError>), TlsError> {
        let roots = Arc::new(Roots::from_list(roots)?);
        let service = self.leaf.id.service().to_owned();
        Ok(
            match Leaf::verified(self.leaf.certified_key.clone(), &service, &roots, now) {
                Ok(leaf) => (
                    Self {
                        roots,
                        leaf,
                        leaf_chains: true,
                    },
                    None,
                ),
                Err(e) => (
                    Self {
                        roots,
                        leaf: self.leaf.clone(),
                        leaf_chains: false,
                    },
                    Some(e),
                ),
            },
        )
    }

    /// Whether the presented leaf verifies under the trusted roots. False only between a
    /// roots change the leaf does not chain to and the arrival of a new leaf.
    pub fn leaf_chains(&self) -> bool {
        self.leaf_chains
    }

    /// A new leaf under the current roots, verified at `now`.
    pub fn with_leaf(&self, leaf: &LeafCert, now: UnixTime) -> Result<Self, TlsError> {
        let leaf = Leaf::from_api(leaf, &self.roots, now)?;
        Ok(Self {
            roots: self.roots.clone(),
            leaf,
            leaf_chains: true,
        })
    }

    /// Our identity, from the leaf's URI SAN.
    pub fn service_id(&self) -> &ServiceId {
        &self.leaf.id
    }

    /// The leaf's serial as Consul writes it (colon hex, minimal bytes).
    pub fn serial(&self) -> &str {
        &self.leaf.serial
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.leaf.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.leaf.not_after
    }

    /// Whether the leaf is within its validity period at `now`.
    pub fn leaf_valid_at(&self, now: UnixTime) -> bool {
        let now = unix_seconds(now);
        self.leaf.not_before.unix_timestamp() <= now && now <= self.leaf.not_after.unix_timestamp()
    }

    /// The trust domains peers may belong to: the list's `TrustDomain` and each root's.
    pub fn trust_domains(&self) -> &[TrustDomain] {
        self.roots.trust_domains()
    }

    /// Every root of the list, DER.
    pub fn root_certs(&self) -> &[CertificateDer<'static>] {
        &self.roots.certs
    }

    /// The chain we present: the leaf, then its intermediates.
    pub fn leaf_chain(&self) -> &[CertificateDer<'static>] {
        &self.leaf.certified_key.cert
    }

    /// The leaf chain and signing key, as the certificate resolvers hand them to rustls.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.leaf.certified_key
    }

    pub(crate) fn roots(&self) -> &Roots {
        &self.roots
    }
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("service_id", &self.leaf.id)
            .field("serial", &self.leaf.serial)
            .field("not_before", &self.leaf.not_before)
            .field("not_after", &self.leaf.not_after)
            .field("chain_len", &self.leaf.certified_key.cert.len())
            .field("roots", &self.roots.ids)
            .field("trust_domains", &self.roots.trust_domains())
            .field("leaf_chains", &self.leaf_chains)
            .finish_non_exhaustive()
    }
}

/// Verifies a peer's certificate chain and identity against `material`'s roots at `now`.
///
/// This is the one place where peer certificates are judged; the rustls verifiers call it.
/// It checks, in order:
///
/// 1. **Chain**: webpki finds a path from `end_entity` to any current root, using the
///    `intermediates` the peer sent (after a CA rotation a leaf carries the cross-signed new
///    root; if that intermediate has expired but the new root is trusted directly, the direct
///    path is used). Every certificate on the path must be valid at `now` and correctly
///    signed (with the aws-lc-rs provider's algorithms).
/// 2. **Key usage**: EKU `clientAuth` for a [`PeerRole::Client`], `serverAuth` for a
///    [`PeerRole::Server`].
/// 3. **Not a CA**: the leaf's BasicConstraints must not say CA.
/// 4. **Identity**: exactly one URI SAN, a SPIFFE *service* ID, whose trust domain is one of
///    the roots' (case-insensitively).
///
/// ```
/// use consul_connect::tls::{verify_peer, Material, PeerRole, VerifyError};
/// use rustls::pki_types::{CertificateDer, UnixTime};
///
/// fn who(material: &Material, chain: &[CertificateDer<'_>]) -> Result<String, VerifyError> {
///     let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
///     let id = verify_peer(material, leaf, intermediates, UnixTime::now(), PeerRole::Client)?;
///     Ok(id.service().to_owned())
/// }
/// ```
pub fn verify_peer(
    material: &Material,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: PeerRole,
) -> Result<ServiceId, VerifyError> {
    verify_with_roots(material.roots(), end_entity, intermediates, now, usage).map(|p| p.id)
}

/// [`verify_peer`] for a server we dialed, plus the check that it is the `expected` service.
pub fn verify_server(
    material: &Material,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    expected: &ExpectedServer,
) -> Result<ServiceId, VerifyError> {
    let id = verify_peer(material, end_entity, intermediates, now, PeerRole::Server)?;
    if !expected.matches(&id) {
        return Err(VerifyError::WrongService {
            expected: Box::new(expected.clone()),
            got: id,
        });
    }
    Ok(id)
}

/// [`verify_peer`] for a client that connected to us, then the `authorizer`'s decision.
pub fn verify_client(
    material: &Material,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    authorizer: Option<&dyn HandshakeAuthorizer>,
) -> Result<PeerIdentity, VerifyError> {
    let peer = verify_with_roots(
        material.roots(),
        end_entity,
        intermediates,
        now,
        PeerRole::Client,
    )?;
    if let Some(authorizer) = authorizer {
        if let Err(reason) = authorizer.authorize(&peer.id, &peer.serial) {
            return Err(VerifyError::Unauthorized {
                peer: peer.id,
                reason,
            });
        }
    }
    Ok(peer)
}

/// The current [`Material`] of a service, shared by its configurations and watches.
///
/// Readers (every handshake) take a lock-free snapshot with [`load`](Self::load); writers
/// (the roots and leaf watches) publish a complete new `Material` with
/// [`store`](Self::store). A handshake in progress keeps the snapshot it started with, and
/// open connections are never affected.
///
/// ```
/// use consul_connect::tls::MaterialCell;
///
/// let cell = MaterialCell::new();
/// assert!(cell.load().is_none(), "not ready until the first leaf and roots arrive");
/// ```
#[derive(Default)]
pub struct MaterialCell {
    current: ArcSwapOption<Material>,
}

impl MaterialCell {
    /// An empty cell: handshakes fail until material is stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `material` for all following handshakes.
    pub fn store(&self, material: impl Into<Arc<Material>>) {
        self.current.store(Some(material.into()));
    }

    /// The current material, if any (lock-free).
    pub fn load(&self) -> Option<Arc<Material>> {
        self.current.load_full()
    }
}

impl From<Material> for MaterialCell {
    fn from(material: Material) -> Self {
        let cell = Self::new();
        cell.store(material);
        cell
    }
}

impl fmt::Debug for MaterialCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MaterialCell")
            .field(&*self.current.load())
            .finish()
    }
}

/// Our own leaf, verified when it was built.
#[derive(Clone)]
struct Leaf {
    certified_key: Arc<CertifiedKey>,
    id: ServiceId,
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Leaf {
    fn from_api(leaf: &LeafCert, roots: &Roots, now: UnixTime) -> Result<Self, TlsError> {
        let service = leaf.service.as_str();
        let chain = pem_certs(&leaf.cert_pem).map_err(|reason| TlsError::BadLeafPem {
            service: service.to_owned(),
            reason,
        })?;
        if chain.is_empty() {
            return Err(TlsError::BadLeafPem {
                service: service.to_owned(),
                reason: "CertPEM holds no certificate".to_owned(),
            });
        }
        let bad_key = |reason: String| TlsError::BadPrivateKey {
            service: service.to_owned(),
            reason,
        };
        let key_der = PrivateKeyDer::from_pem_slice(leaf.private_key_pem.as_bytes()).map_err(
            |e| match e {
                pem::Error::NoItemsFound => {
                    bad_key("PrivateKeyPEM holds no private key".to_owned())
                }
                e => bad_key(format!("unreadable PEM: {e}")),
            },
        )?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| bad_key(e.to_string()))?;
        let certified_key = Arc::new(CertifiedKey::new(chain, signing_key));
        Self::verified(certified_key, service, roots, now)
    }

    /// Checks a leaf chain and key against `roots` at `now`.
    fn verified(
        certified_key: Arc<CertifiedKey>,
        service: &str,
        roots: &Roots,
        now: UnixTime,
    ) -> Result<Self, TlsError> {
        let (end_entity, intermediates) = match certified_key.cert.split_first() {
            Some(split) => split,
            None => {
                return Err(TlsError::BadLeafPem {
                    service: service.to_owned(),
                    reason: "CertPEM holds no certificate".to_owned(),
                })
            }
        };
        let facts = CertFacts::parse(end_entity).map_err(|source| TlsError::LeafRejected {
            service: service.to_owned(),
            serial: String::new(),
            source: Box::new(source),
        })?;
        let rejected = |source| TlsError::LeafRejected {
            service: service.to_owned(),
            serial: facts.serial.clone(),
            source: Box::new(source),
        };
        // We act as both client and server, so the leaf must pass both profiles.
        let peer =
            verify::verify_with_roots(roots, end_entity, intermediates, now, PeerRole::Client)
                .map_err(rejected)?;
        verify::verify_with_roots(roots, end_entity, intermediates, now, PeerRole::Server)
            .map_err(rejected)?;
        // An unknown consistency (a key that cannot say its public half) is refused too: a
        // leaf is only published when we know the peer can check our signatures.
        if certified_key.keys_match().is_err() {
            return Err(TlsError::KeyMismatch {
                service: service.to_owned(),
            });
        }
        Ok(Self {
            certified_key,
            id: peer.id,
            serial: peer.serial,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }
}
