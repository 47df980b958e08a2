//! agent-sim's built-in Consul CA: root generation, leaf signing and cross-signing.
//!
//! Pure functions over values: no I/O and no clock reads (the current time is passed in), so
//! expiry and rotation are tested without waiting. Keys are ECDSA P-256 and signatures
//! ECDSA-SHA256, as Consul's built-in `consul` provider uses.
//!
//! The certificate profiles are Consul 1.4.5's (spec §2 and §3) with one deliberate change: the
//! Subject and Authority Key Identifiers are the raw 32-byte SHA-256 of the DER
//! SubjectPublicKeyInfo (Consul ≥ 1.7), not 1.4.5's 95 bytes of ASCII colon hex, and a leaf's SKI
//! identifies the leaf's own key (1.4.5 wrote the CA's).
//!
//! ```
//! use agent_sim::ca::{BuiltinCa, CaProvider, EcKey};
//! use consul_connect_types::spiffe::{ServiceId, TrustDomain};
//! use time::macros::datetime;
//!
//! let td = TrustDomain::new("11111111-2222-3333-4444-555555555555.consul")?;
//! let now = datetime!(2026-11-25 20:36:49 UTC);
//! let ca = BuiltinCa::new(td.clone(), EcKey::generate()?, 7, now)?;
//! assert_eq!(ca.root().serial, 7);
//!
//! let web = ServiceId::new(td, "default", "dc1", "web")?;
//! let agent_key = EcKey::generate()?;
//! let ttl = std::time::Duration::from_secs(72 * 3600);
//! let leaf_pem = ca.sign_leaf(&web, &agent_key, 8, now, ttl)?;
//! assert!(leaf_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builtin;
mod copy;
mod key;
mod names;
mod pem;
mod root;
mod validity;

use std::fmt;

use consul_connect_types::spiffe::{ServiceId, SpiffeIdError, TrustDomain};
use time::OffsetDateTime;

pub use builtin::BuiltinCa;
pub use key::{EcKey, PrivateKeyError};
pub use names::CertNames;
pub use root::RootCert;
pub use validity::{BACKDATE, CROSS_SIGNED_VALIDITY, ROOT_VALIDITY_YEARS};

/// A Connect CA: Consul's built-in provider, or another behind the same interface.
pub trait CaProvider: Send + Sync + fmt::Debug {
    /// The CA's root certificate.
    fn root(&self) -> &RootCert;

    /// The trust domain the CA signs for.
    fn trust_domain(&self) -> &TrustDomain;

    /// Signs a leaf for `id` over the public key of `key` (the agent's key; Consul's agent makes
    /// key + CSR, the server signs). Returns the leaf PEM only, without any chain.
    fn sign_leaf(
        &self,
        id: &ServiceId,
        key: &EcKey,
        serial: u64,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> Result<String, CaError>;

    /// Cross-signs another root (same subject, key, SKI, URI SAN, CA flags) with this CA's key,
    /// so leaves of the new root chain to this one. Returns the PEM.
    fn cross_sign(
        &self,
        other: &RootCert,
        serial: u64,
        now: OffsetDateTime,
    ) -> Result<String, CaError>;

    /// Signs a secondary datacenter's intermediate CA over `public_key` (a DER
    /// SubjectPublicKeyInfo), valid `ttl` from now − 1 min. Returns the PEM.
    fn sign_intermediate(
        &self,
        public_key: &[u8],
        common_name: &str,
        serial: u64,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> Result<String, CaError>;

    /// The CA private key as PEM (for persistence); never logged.
    fn private_key_pem(&self) -> String;
}

/// Errors of the built-in CA.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA private key could not be used.
    ///
    /// Consul 1.4.5 answers `PUT /v1/connect/ca/configuration` with a bad `PrivateKey` with
    /// `error generating CA root certificate: error generating CA: error parsing private key
    /// "<the PEM>": <ParseSigner error>`. This text is the part after the first colon, without
    /// the echoed key: private keys are never put in messages here.
    #[error("error generating CA: error parsing private key: {0}")]
    PrivateKey(#[from] PrivateKeyError),
    /// The random number generator or key generation failed.
    #[error("error generating private key: {reason}")]
    KeyGeneration {
        /// The cause.
        reason: String,
    },
    /// A key could not be serialised (should not happen for a valid key).
    #[error("error encoding private key: {reason}")]
    KeyEncoding {
        /// The cause.
        reason: String,
    },
    /// A root certificate PEM is unusable.
    #[error("error parsing root cert: {reason}")]
    InvalidRootCert {
        /// What is wrong with it.
        reason: String,
    },
    /// The root certificate is not for the private key it was given with.
    #[error(
        "root cert is for a different private key (cert key {cert_key_id}, private key {key_id})"
    )]
    KeyMismatch {
        /// Colon-hex SHA-256 of the certificate's SubjectPublicKeyInfo.
        cert_key_id: String,
        /// Colon-hex key ID of the private key.
        key_id: String,
    },
    /// The root certificate's URI SAN is not this trust domain's signing ID.
    #[error("root cert URI {got:?} does not match current URI: {want:?}")]
    RootUriMismatch {
        /// The first URI SAN of the certificate (empty if none).
        got: String,
        /// `spiffe://<trust-domain>`.
        want: String,
    },
    /// The trust domain cannot name a CA (Consul's form is `<cluster-id>.<domain>`).
    #[error("trust domain {trust_domain} cannot be a CA signing ID: {source}")]
    InvalidTrustDomain {
        /// The trust domain given.
        trust_domain: TrustDomain,
        /// Why.
        source: SpiffeIdError,
    },
    /// A leaf was requested for a service of another trust domain (Consul's Sign RPC text).
    #[error(
        "SPIFFE ID in CSR from a different trust domain: {}, we are {trust_domain}",
        .id.trust_domain()
    )]
    ForeignTrustDomain {
        /// The service identity requested (boxed to keep every `CaError` small).
        id: Box<ServiceId>,
        /// This CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// Serial numbers must be positive (RFC 5280 §4.1.2.2).
    #[error("certificate serial number must be positive, got 0")]
    ZeroSerial,
    /// A validity period cannot be computed or encoded.
    #[error("certificate validity out of range: {reason}")]
    Validity {
        /// Which value and why.
        reason: String,
    },
    /// Another root cannot be cross-signed faithfully.
    #[error("cannot cross-sign {subject}: {reason}")]
    CrossSign {
        /// The other root's subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// Building or signing a certificate failed.
    #[error("error generating {what}: {reason}")]
    Certificate {
        /// `certificate` (leaf) or `CA certificate` (root, cross-signed), as Consul words it.
        what: &'static str,
        /// The cause.
        reason: String,
    },
    /// A CA configuration problem found by a caller of this module, with Consul's text.
    #[error("{0}")]
    Config(String),
}

impl From<crate::state::persist::PersistError> for CaError {
    fn from(e: crate::state::persist::PersistError) -> Self {
        CaError::Config(e.to_string())
    }
}

#[cfg(test)]
mod tests;
