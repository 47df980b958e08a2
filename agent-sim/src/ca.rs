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

use std::fmt;
use std::io::Cursor;
use std::net::IpAddr;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as lc, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use consul_connect_types::api::colon_hex;
use consul_connect_types::spiffe::{ServiceId, SigningId, SpiffeIdError, TrustDomain};
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use time::{Date, Duration, Month, OffsetDateTime, UtcOffset};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, KeyUsage, ParsedExtension};
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// How far back a leaf's or a cross-signed certificate's NotBefore is set, as Consul does to
/// absorb clock skew between nodes. Roots are not backdated.
pub const BACKDATE: Duration = Duration::minutes(1);

/// Lifetime of a generated root in calendar years (Go's `AddDate(10, 0, 0)`).
pub const ROOT_VALIDITY_YEARS: i32 = 10;

/// Lifetime of a cross-signed root, counted from its backdated NotBefore. Consul hard-codes this
/// (`effectiveNow.Add(7 * 24 * time.Hour)`; the 1.4.5 sample shows NotAfter = NotBefore + 7 days).
pub const CROSS_SIGNED_VALIDITY: Duration = Duration::days(7);

/// How the CA names what it signs: Consul's common names changed after 1.4.
///
/// ```
/// use agent_sim::ca::CertNames;
/// use consul_connect_types::spiffe::{ServiceId, TrustDomain};
///
/// let td = TrustDomain::new("948f9bc5-27b7-56a1-4955-4da0cfcecc8f.consul")?;
/// let web = ServiceId::new(td.clone(), "default", "dc1", "web")?;
/// assert_eq!(CertNames::Consul1_4.leaf(&web), "web");
/// assert_eq!(CertNames::Consul1_10.leaf(&web), "web.svc.default.948f9bc5.consul");
/// assert_eq!(CertNames::Consul1_4.ca(7, &td, true), "Consul CA 7");
/// let cn = CertNames::Consul1_10.ca(7, &td, false);
/// assert!(cn.starts_with("sec-") && cn.ends_with(".consul.ca.948f9bc5.consul"), "{cn}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CertNames {
    /// Consul 1.4: roots `Consul CA <serial>`, leaves `<service>`.
    #[default]
    Consul1_4,
    /// Consul 1.10: roots `pri-<uid>.consul.ca.<first 8 of the trust domain>.consul`
    /// (a secondary datacenter's intermediate `sec-…`), leaves
    /// `<service>.svc.<namespace>.<first 8 of the trust domain>.consul`, the service and
    /// namespace shortened so the name fits in 64 bytes.
    Consul1_10,
}

impl CertNames {
    /// The common name of a new CA certificate (`primary`: a root, else a secondary
    /// datacenter's intermediate).
    pub fn ca(self, serial: u64, trust_domain: &TrustDomain, primary: bool) -> String {
        match self {
            CertNames::Consul1_4 => format!("Consul CA {serial}"),
            CertNames::Consul1_10 => {
                // Go's CompactUID: a random number in base 36, at most 8 characters.
                let uid = base36(rand::random::<u64>());
                let uid = &uid[..uid.len().min(8)];
                let kind = if primary { "pri" } else { "sec" };
                format!("{kind}-{uid}.consul.ca.{}.consul", td8(trust_domain))
            }
        }
    }

    /// The common name of a leaf for `id`.
    pub fn leaf(self, id: &ServiceId) -> String {
        match self {
            CertNames::Consul1_4 => id.service().to_owned(),
            CertNames::Consul1_10 => {
                let service: String = id
                    .service()
                    .to_ascii_lowercase()
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect();
                let (service, namespace) = shorten_service_and_namespace(&service, id.namespace());
                format!(
                    "{service}.svc.{namespace}.{}.consul",
                    td8(id.trust_domain())
                )
            }
        }
    }
}

fn td8(trust_domain: &TrustDomain) -> String {
    trust_domain.as_str().chars().take(8).collect()
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// Consul's cut of a service and namespace name to 43 bytes together (64 minus the rest of a
/// leaf's common name), each kept to at least 15 bytes when both are long.
fn shorten_service_and_namespace<'a>(service: &'a str, namespace: &'a str) -> (&'a str, &'a str) {
    const MAX: usize = 43;
    const MIN: usize = 15;
    let cut = |s: &'a str, n: usize| {
        let end = (0..=n.min(s.len()))
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        &s[..end]
    };
    let (svc, ns) = (service.len(), namespace.len());
    if svc + ns <= MAX {
        return (service, namespace);
    }
    let remove = svc + ns - MAX;
    if svc <= MIN {
        return (service, cut(namespace, ns.saturating_sub(remove)));
    }
    if ns <= MIN {
        return (cut(service, svc.saturating_sub(remove)), namespace);
    }
    let (mut svc_to, mut ns_to) = (svc - remove / 2 - remove % 2, ns - remove / 2);
    if svc_to <= MIN {
        (svc_to, ns_to) = (MIN, MAX - MIN);
    } else if ns_to <= MIN {
        (svc_to, ns_to) = (MAX - MIN, MIN);
    }
    (cut(service, svc_to), cut(namespace, ns_to))
}

/// An ECDSA P-256 key pair: a CA key, or the key an agent makes for a leaf.
///
/// `Debug` shows only the algorithm and the key identifier, never key material.
pub struct EcKey {
    /// Signs for rcgen directly (see the `SigningKey` impl): no rcgen `KeyPair`, which would
    /// parse and check the key again (two thirds of the cost of generating one).
    pair: EcdsaKeyPair,
    /// SEC1 (RFC 5915) `ECPrivateKey` DER, with curve parameters and public key, as Go writes it.
    sec1_der: Vec<u8>,
    /// DER SubjectPublicKeyInfo, exactly as it appears in certificates for this key.
    spki_der: Vec<u8>,
}

impl EcKey {
    /// Generates a new random P-256 key.
    pub fn generate() -> Result<EcKey, CaError> {
        let pair = EcdsaKeyPair::generate(&lc::ECDSA_P256_SHA256_ASN1_SIGNING).map_err(|e| {
            CaError::KeyGeneration {
                reason: e.to_string(),
            }
        })?;
        Self::from_aws_lc(pair)
    }

    /// Parses the first PEM block of `pem`: SEC1 `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`, P-256
    /// only.
    ///
    /// Any other input is refused with a [`CaError::PrivateKey`] naming the problem: no PEM block,
    /// another block type (including `RSA PRIVATE KEY`), another key type or curve, or a block
    /// that does not decode.
    pub fn from_pem(pem: &str) -> Result<EcKey, CaError> {
        let block = first_pem_block(pem).ok_or(PrivateKeyError::NoPemData)?;
        let pair = match block.label.as_str() {
            "EC PRIVATE KEY" => parse_sec1(&block.contents)?,
            "PRIVATE KEY" => parse_pkcs8(&block.contents)?,
            other => {
                return Err(PrivateKeyError::UnknownPemBlockType {
                    label: other.to_owned(),
                }
                .into())
            }
        };
        Self::from_aws_lc(pair)
    }

    /// The key as a SEC1 `-----BEGIN EC PRIVATE KEY-----` PEM block, as Consul emits keys.
    ///
    /// This is secret material: persist it, hand it to its owner, never log it.
    pub fn to_pem(&self) -> String {
        pem_encode("EC PRIVATE KEY", &self.sec1_der)
    }

    /// The key identifier: SHA-256 of the DER SubjectPublicKeyInfo, raw 32 bytes (Consul ≥ 1.7).
    pub fn key_id(&self) -> Vec<u8> {
        digest::digest(&digest::SHA256, &self.spki_der)
            .as_ref()
            .to_vec()
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn subject_public_key_info(&self) -> &[u8] {
        &self.spki_der
    }

    fn from_aws_lc(pair: EcdsaKeyPair) -> Result<EcKey, CaError> {
        let encoding = |reason: String| CaError::KeyEncoding { reason };
        let sec1_der = pair
            .private_key()
            .as_der()
            .map_err(|e| encoding(e.to_string()))?
            .as_ref()
            .to_vec();
        let spki_der = pair
            .public_key()
            .as_der()
            .map_err(|e| encoding(e.to_string()))?
            .as_ref()
            .to_vec();
        Ok(EcKey {
            pair,
            sec1_der,
            spki_der,
        })
    }
}

impl PublicKeyData for EcKey {
    fn der_bytes(&self) -> &[u8] {
        // The uncompressed point, as rcgen expects it inside the SubjectPublicKeyInfo.
        self.pair.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for EcKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), msg)
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        Ok(signature.as_ref().to_vec())
    }
}

impl fmt::Debug for EcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcKey")
            .field("algorithm", &"ECDSA P-256")
            .field("key_id", &colon_hex(&self.key_id()))
            .finish_non_exhaustive()
    }
}

/// A root certificate with the values Consul's roots API reports about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCert {
    /// The certificate as one PEM block (64-column lines, trailing newline).
    pub pem: String,
    /// The certificate DER.
    pub der: Vec<u8>,
    /// The certificate serial number.
    pub serial: u64,
    /// Consul's root ID: colon hex of the SHA-1 of the DER.
    pub id: String,
    /// Colon hex of the root's Subject Key Identifier; leaves it signs carry it as their AKI.
    pub signing_key_id: String,
    /// NotBefore.
    pub not_before: OffsetDateTime,
    /// NotAfter.
    pub not_after: OffsetDateTime,
}

impl RootCert {
    /// Reads a root from the first PEM block of `pem`, which must be a `CERTIFICATE` with a
    /// Subject Key Identifier and a serial number that fits in 64 bits.
    pub fn from_pem(pem: &str) -> Result<RootCert, CaError> {
        let block =
            first_pem_block(pem).ok_or_else(|| invalid_root("no PEM-encoded data found"))?;
        if block.label != "CERTIFICATE" {
            return Err(invalid_root("first PEM-block should be CERTIFICATE type"));
        }
        RootCert::from_der(block.contents)
    }

    fn from_der(der: Vec<u8>) -> Result<RootCert, CaError> {
        let (serial, ski, not_before, not_after) = {
            let cert = parse_certificate(&der).map_err(invalid_root)?;
            let serial = serial_u64(cert.raw_serial()).ok_or_else(|| {
                invalid_root(format!(
                    "serial number {} does not fit in 64 bits",
                    cert.raw_serial_as_string()
                ))
            })?;
            let ski = subject_key_id(&cert)
                .ok_or_else(|| invalid_root("certificate has no Subject Key Identifier"))?;
            (
                serial,
                ski,
                cert.validity().not_before.to_datetime(),
                cert.validity().not_after.to_datetime(),
            )
        };
        let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        Ok(RootCert {
            pem: pem_encode("CERTIFICATE", &der),
            id: colon_hex(sha1.as_ref()),
            signing_key_id: colon_hex(&ski),
            serial,
            not_before,
            not_after,
            der,
        })
    }
}

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

/// Consul's built-in CA provider: a self-signed P-256 root and its key.
pub struct BuiltinCa {
    trust_domain: TrustDomain,
    key: EcKey,
    root: RootCert,
    /// The root's subject, with its string types, so issuer names match it byte for byte.
    issuer_name: DistinguishedName,
    /// The root's SKI, written as the AKI of everything this CA signs.
    issuer_key_id: Vec<u8>,
    /// How leaves are named.
    names: CertNames,
}

impl BuiltinCa {
    /// Self-signed root for `trust_domain` using `key`, serial `serial`, valid from `now` (not
    /// backdated) for [`ROOT_VALIDITY_YEARS`] calendar years.
    ///
    /// Subject and issuer `CN=Consul CA <serial>`; BasicConstraints critical CA:TRUE without
    /// pathLen; KeyUsage critical digitalSignature, keyCertSign, cRLSign; no EKU; URI SAN
    /// `spiffe://<trust-domain>`; SKI = AKI = `key.key_id()`.
    pub fn new(
        trust_domain: TrustDomain,
        key: EcKey,
        serial: u64,
        now: OffsetDateTime,
    ) -> Result<BuiltinCa, CaError> {
        BuiltinCa::generate(trust_domain, key, serial, now, CertNames::Consul1_4)
    }

    /// As [`BuiltinCa::new`], with the root and its leaves named as `names` says.
    pub fn generate(
        trust_domain: TrustDomain,
        key: EcKey,
        serial: u64,
        now: OffsetDateTime,
        names: CertNames,
    ) -> Result<BuiltinCa, CaError> {
        let signing_uri = signing_uri(&trust_domain)?;
        let serial_number = serial_number(serial)?;
        let not_before = whole_seconds_utc(now)?;
        let not_after = add_calendar_years(not_before, ROOT_VALIDITY_YEARS).ok_or_else(|| {
            CaError::Validity {
                reason: format!("{not_before} + {ROOT_VALIDITY_YEARS} years is out of range"),
            }
        })?;
        check_encodable(not_after)?;

        let name = common_name(&names.ca(serial, &trust_domain, true));
        let key_id = key.key_id();
        let mut params = CertificateParams::default();
        params.serial_number = Some(serial_number);
        params.distinguished_name = name.clone();
        params.not_before = not_before;
        params.not_after = not_after;
        params.subject_alt_names = vec![uri_san(&signing_uri, "CA certificate")?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = CA_KEY_USAGES.to_vec();
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id.clone());
        let cert = params
            .self_signed(&key)
            .map_err(generation_error("CA certificate"))?;
        let root = RootCert::from_der(cert.der().to_vec())?;
        Ok(BuiltinCa {
            trust_domain,
            key,
            root,
            issuer_name: name,
            issuer_key_id: key_id,
            names,
        })
    }

    /// The same CA, naming the leaves it signs as `names` says.
    pub fn with_cert_names(mut self, names: CertNames) -> BuiltinCa {
        self.names = names;
        self
    }

    /// Rebuilds a CA from a persisted root PEM and its key, so a restarted agent keeps its root;
    /// or a secondary datacenter's CA from its intermediate (signed by the primary's root) and
    /// key.
    ///
    /// The root must be a CA certificate for `key` (same SubjectPublicKeyInfo), carry a Subject
    /// Key Identifier and the URI SAN `spiffe://<trust-domain>`. Roots Consul 1.4.5 made (ASCII
    /// key identifiers) are accepted: new leaves then carry that SKI as their AKI.
    pub fn from_parts(
        trust_domain: TrustDomain,
        root_pem: &str,
        key: EcKey,
    ) -> Result<BuiltinCa, CaError> {
        let want_uri = signing_uri(&trust_domain)?;
        let root = RootCert::from_pem(root_pem)?;
        let (issuer_name, issuer_key_id) = {
            let cert = parse_certificate(&root.der).map_err(invalid_root)?;
            let cert_spki = cert.public_key().raw;
            if cert_spki != key.subject_public_key_info() {
                return Err(CaError::KeyMismatch {
                    cert_key_id: colon_hex(digest::digest(&digest::SHA256, cert_spki).as_ref()),
                    key_id: colon_hex(&key.key_id()),
                });
            }
            if !cert.is_ca() {
                return Err(invalid_root("root cert is not a CA certificate"));
            }
            let uris = uri_sans(&cert);
            if !uris.iter().any(|uri| uri.eq_ignore_ascii_case(&want_uri)) {
                return Err(CaError::RootUriMismatch {
                    got: uris.first().cloned().unwrap_or_default(),
                    want: want_uri,
                });
            }
            let name = distinguished_name(cert.subject()).map_err(invalid_root)?;
            // RootCert::from_der already refused roots without an SKI.
            let ski = subject_key_id(&cert)
                .ok_or_else(|| invalid_root("certificate has no Subject Key Identifier"))?;
            (name, ski)
        };
        Ok(BuiltinCa {
            trust_domain,
            key,
            root,
            issuer_name,
            issuer_key_id,
            names: CertNames::default(),
        })
    }

    /// The issuer every certificate of this CA is signed by: the root's name and SKI.
    fn issuer(&self) -> Issuer<'static, &EcKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name = self.issuer_name.clone();
        params.key_identifier_method = KeyIdMethod::PreSpecified(self.issuer_key_id.clone());
        params.key_usages = CA_KEY_USAGES.to_vec();
        Issuer::new(params, &self.key)
    }
}

impl CaProvider for BuiltinCa {
    fn root(&self) -> &RootCert {
        &self.root
    }

    fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Leaf profile: subject `CN=<service>` only (or 1.10's form, see [`CertNames`]); issuer = root subject; NotBefore = now − 1 min,
    /// NotAfter = NotBefore + `ttl`; BasicConstraints critical CA:FALSE; KeyUsage critical
    /// digitalSignature, keyEncipherment, dataEncipherment, keyAgreement; EKU clientAuth,
    /// serverAuth; one URI SAN, the SPIFFE ID; SKI = `key.key_id()`; AKI = the root's SKI.
    fn sign_leaf(
        &self,
        id: &ServiceId,
        key: &EcKey,
        serial: u64,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> Result<String, CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: Box::new(id.clone()),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let serial_number = serial_number(serial)?;
        let (not_before, not_after) = validity(now, ttl, "leaf")?;

        let mut params = CertificateParams::default();
        params.serial_number = Some(serial_number);
        params.distinguished_name = common_name(&self.names.leaf(id));
        params.not_before = not_before;
        params.not_after = not_after;
        params.subject_alt_names = vec![uri_san(&id.to_string(), "certificate")?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = LEAF_KEY_USAGES.to_vec();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(key.key_id());
        let cert = params
            .signed_by(key, &self.issuer())
            .map_err(generation_error("certificate"))?;
        Ok(pem_encode("CERTIFICATE", cert.der()))
    }

    /// Cross-signed profile: `other`'s subject, public key, SKI, SANs, BasicConstraints,
    /// KeyUsage and EKU; issuer = this root's subject; AKI = this root's SKI; serial `serial`;
    /// NotBefore = now − 1 min, NotAfter = NotBefore + [`CROSS_SIGNED_VALIDITY`].
    ///
    /// Other extensions are not carried over (as with Go's template copy); a root with name
    /// constraints or another critical extension is refused rather than weakened.
    fn cross_sign(
        &self,
        other: &RootCert,
        serial: u64,
        now: OffsetDateTime,
    ) -> Result<String, CaError> {
        let serial_number = serial_number(serial)?;
        let not_before = backdated(now)?;
        let not_after = not_before
            .checked_add(CROSS_SIGNED_VALIDITY)
            .ok_or_else(|| CaError::Validity {
                reason: format!("{not_before} + {CROSS_SIGNED_VALIDITY} is out of range"),
            })?;
        check_encodable(not_after)?;

        let cert = parse_certificate(&other.der).map_err(|reason| CaError::CrossSign {
            subject: format!("root {}", other.id),
            reason,
        })?;
        let subject = cert.subject().to_string();
        let refuse = |reason: String| CaError::CrossSign {
            subject: subject.clone(),
            reason,
        };

        let mut params = CertificateParams::default();
        params.serial_number = Some(serial_number);
        params.not_before = not_before;
        params.not_after = not_after;
        params.distinguished_name = distinguished_name(cert.subject()).map_err(refuse)?;
        params.key_identifier_method = KeyIdMethod::PreSpecified(
            subject_key_id(&cert)
                .ok_or_else(|| refuse("it has no Subject Key Identifier".into()))?,
        );
        params.use_authority_key_identifier_extension = true;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    if !bc.ca {
                        return Err(refuse("it is not a CA certificate".into()));
                    }
                    params.is_ca = IsCa::Ca(match bc.path_len_constraint {
                        None => BasicConstraints::Unconstrained,
                        Some(n) => {
                            BasicConstraints::Constrained(u8::try_from(n).map_err(|_| {
                                refuse(format!("path length constraint {n} is too large"))
                            })?)
                        }
                    });
                }
                ParsedExtension::KeyUsage(ku) => params.key_usages = key_usages(ku),
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    params.extended_key_usages = extended_key_usages(eku)
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    params.subject_alt_names = san
                        .general_names
                        .iter()
                        .map(san_type)
                        .collect::<Result<_, _>>()
                        .map_err(refuse)?;
                }
                // Replaced by this CA's values.
                ParsedExtension::SubjectKeyIdentifier(_)
                | ParsedExtension::AuthorityKeyIdentifier(_) => {}
                ParsedExtension::NameConstraints(_) => {
                    return Err(refuse("name constraints are not supported".into()))
                }
                _ if ext.critical => {
                    return Err(refuse(format!(
                        "critical extension {} is not supported",
                        ext.oid
                    )))
                }
                _ => {}
            }
        }
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(refuse(
                "it is not a CA certificate (no BasicConstraints)".into(),
            ));
        }
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(cert.public_key().raw)
            .map_err(|e| refuse(format!("unsupported public key: {e}")))?;
        let signed = params
            .signed_by(&public_key, &self.issuer())
            .map_err(generation_error("CA certificate"))?;
        Ok(pem_encode("CERTIFICATE", signed.der()))
    }

    /// Intermediate profile (Consul 1.10's `SignIntermediate`): subject `CN=<common_name>`;
    /// issuer = root subject; BasicConstraints critical CA:TRUE pathLen 0; KeyUsage critical
    /// digitalSignature, keyCertSign, cRLSign; URI SAN `spiffe://<trust-domain>`; SKI = SHA-256
    /// of `public_key`; AKI = the root's SKI.
    fn sign_intermediate(
        &self,
        public_key: &[u8],
        common_name_text: &str,
        serial: u64,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> Result<String, CaError> {
        let invalid = |reason: String| CaError::Certificate {
            what: "intermediate certificate",
            reason,
        };
        let spki = rcgen::SubjectPublicKeyInfo::from_der(public_key)
            .map_err(|e| invalid(format!("unsupported public key: {e}")))?;
        let (not_before, not_after) = validity(now, ttl, "intermediate")?;
        let mut params = CertificateParams::default();
        params.serial_number = Some(serial_number(serial)?);
        params.distinguished_name = common_name(common_name_text);
        params.not_before = not_before;
        params.not_after = not_after;
        params.subject_alt_names = vec![uri_san(
            &signing_uri(&self.trust_domain)?,
            "CA certificate",
        )?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = CA_KEY_USAGES.to_vec();
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(
            digest::digest(&digest::SHA256, public_key)
                .as_ref()
                .to_vec(),
        );
        let cert = params
            .signed_by(&spki, &self.issuer())
            .map_err(generation_error("CA certificate"))?;
        Ok(pem_encode("CERTIFICATE", cert.der()))
    }

    fn private_key_pem(&self) -> String {
        self.key.to_pem()
    }
}

impl fmt::Debug for BuiltinCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuiltinCa")
            .field("trust_domain", &self.trust_domain)
            .field("root_id", &self.root.id)
            .field("root_serial", &self.root.serial)
            .field("signing_key_id", &self.root.signing_key_id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Why a CA private key PEM was refused.
///
/// The texts are those of Consul's `connect.ParseSigner` (`agent/connect/parsing.go`) where
/// Consul refuses the same input; where Consul would accept a key that this CA does not use
/// (other curves, RSA or Ed25519 in PKCS#8), the text starts with Consul's `invalid key type`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivateKeyError {
    /// No PEM block could be decoded (empty input, no `-----BEGIN`, bad base64).
    #[error("no PEM-encoded data found")]
    NoPemData,
    /// The first PEM block is neither `EC PRIVATE KEY` nor `PRIVATE KEY`.
    #[error("unknown PEM block type for signing key: {label}")]
    UnknownPemBlockType {
        /// The block's label, e.g. `RSA PRIVATE KEY` or `CERTIFICATE`.
        label: String,
    },
    /// An `EC PRIVATE KEY` block that does not hold a valid SEC1 key.
    #[error("x509: failed to parse EC private key: {reason}")]
    InvalidEcPrivateKey {
        /// What the parser rejected.
        reason: String,
    },
    /// A `PRIVATE KEY` block that does not hold a valid PKCS#8 key.
    #[error("x509: failed to parse private key: {reason}")]
    InvalidPkcs8PrivateKey {
        /// What the parser rejected.
        reason: String,
    },
    /// A valid key of a type or curve the built-in CA does not use.
    #[error("invalid key type: {key_type} (the built-in CA uses ECDSA P-256 keys only)")]
    UnsupportedKeyType {
        /// For example `RSA`, `ECDSA P-384` or `Ed25519`.
        key_type: &'static str,
    },
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

const CA_KEY_USAGES: [KeyUsagePurpose; 3] = [
    KeyUsagePurpose::DigitalSignature,
    KeyUsagePurpose::KeyCertSign,
    KeyUsagePurpose::CrlSign,
];

const LEAF_KEY_USAGES: [KeyUsagePurpose; 4] = [
    KeyUsagePurpose::DigitalSignature,
    KeyUsagePurpose::KeyEncipherment,
    KeyUsagePurpose::DataEncipherment,
    KeyUsagePurpose::KeyAgreement,
];

/// Curves a key may be on that this CA does not use, to name them in errors.
fn other_ec_curves() -> [(&'static str, &'static EcdsaSigningAlgorithm); 3] {
    [
        ("ECDSA P-384", &lc::ECDSA_P384_SHA384_ASN1_SIGNING),
        ("ECDSA P-521", &lc::ECDSA_P521_SHA512_ASN1_SIGNING),
        ("ECDSA secp256k1", &lc::ECDSA_P256K1_SHA256_ASN1_SIGNING),
    ]
}

fn parse_sec1(der: &[u8]) -> Result<EcdsaKeyPair, PrivateKeyError> {
    EcdsaKeyPair::from_private_key_der(&lc::ECDSA_P256_SHA256_ASN1_SIGNING, der).map_err(
        |rejected| match other_ec_curves()
            .into_iter()
            .find(|(_, alg)| EcdsaKeyPair::from_private_key_der(alg, der).is_ok())
        {
            Some((key_type, _)) => PrivateKeyError::UnsupportedKeyType { key_type },
            None => PrivateKeyError::InvalidEcPrivateKey {
                reason: rejected.to_string(),
            },
        },
    )
}

fn parse_pkcs8(der: &[u8]) -> Result<EcdsaKeyPair, PrivateKeyError> {
    EcdsaKeyPair::from_pkcs8(&lc::ECDSA_P256_SHA256_ASN1_SIGNING, der).map_err(|rejected| {
        let key_type = other_ec_curves()
            .into_iter()
            .find(|(_, alg)| EcdsaKeyPair::from_pkcs8(alg, der).is_ok())
            .map(|(name, _)| name)
            .or_else(|| lc::RsaKeyPair::from_pkcs8(der).is_ok().then_some("RSA"))
            .or_else(|| {
                lc::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .is_ok()
                    .then_some("Ed25519")
            });
        match key_type {
            Some(key_type) => PrivateKeyError::UnsupportedKeyType { key_type },
            None => PrivateKeyError::InvalidPkcs8PrivateKey {
                reason: rejected.to_string(),
            },
        }
    })
}

/// The first PEM block of `text`, or `None` when there is none or it does not decode (Go's
/// `pem.Decode` returns no block in both cases).
fn first_pem_block(text: &str) -> Option<Pem> {
    Pem::read(Cursor::new(text.as_bytes()))
        .ok()
        .map(|(pem, _)| pem)
}

/// PEM-encodes `der` as Go's `pem.Encode` does: 64-column base64 lines, trailing newline.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut column = 0;
    for chunk in der.chunks(3) {
        let bytes = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..4 {
            // A chunk of n bytes yields n + 1 significant characters, then padding.
            let c = if i <= chunk.len() {
                char::from(ALPHABET[(group >> (18 - 6 * i)) as usize & 0x3f])
            } else {
                '='
            };
            out.push(c);
            column += 1;
            if column == 64 {
                out.push('\n');
                column = 0;
            }
        }
    }
    if column != 0 {
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after the certificate".into()),
        Err(e) => Err(format!("x509: {e}")),
    }
}

fn invalid_root(reason: impl Into<String>) -> CaError {
    CaError::InvalidRootCert {
        reason: reason.into(),
    }
}

fn generation_error(what: &'static str) -> impl Fn(rcgen::Error) -> CaError {
    move |e| CaError::Certificate {
        what,
        reason: e.to_string(),
    }
}

/// The serial as a positive DER INTEGER. rcgen (yasna) strips leading zero bytes and adds one
/// only when the high bit is set, so the encoding is minimal: 8 → `02 01 08`.
fn serial_number(serial: u64) -> Result<SerialNumber, CaError> {
    if serial == 0 {
        return Err(CaError::ZeroSerial);
    }
    Ok(SerialNumber::from(serial))
}

/// A DER INTEGER's content as u64, if it is non-negative and fits.
fn serial_u64(raw: &[u8]) -> Option<u64> {
    if raw.first().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = &raw[first..];
    if digits.len() > 8 {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)))
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `spiffe://<trust-domain>`, host lowercased as Consul writes signing IDs.
fn signing_uri(trust_domain: &TrustDomain) -> Result<String, CaError> {
    let id =
        SigningId::new(trust_domain.clone()).map_err(|source| CaError::InvalidTrustDomain {
            trust_domain: trust_domain.clone(),
            source,
        })?;
    Ok(id.to_string().to_ascii_lowercase())
}

fn uri_san(uri: &str, what: &'static str) -> Result<SanType, CaError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| CaError::Certificate {
            what,
            reason: format!("URI SAN {uri:?}: {e}"),
        })
}

/// `CN=<cn>` as Go's `pkix.Name` writes it: PrintableString when the text allows, else UTF8String.
fn common_name(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    match PrintableString::try_from(cn) {
        Ok(printable) => name.push(DnType::CommonName, DnValue::PrintableString(printable)),
        Err(_) => name.push(DnType::CommonName, DnValue::Utf8String(cn.to_owned())),
    }
    name
}

/// Copies a parsed name into rcgen's form, keeping each attribute's string type so the
/// re-encoded name is byte-identical (path building compares names).
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err("names with multi-valued RDNs are not supported".into());
        };
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or_else(|| format!("name attribute {} is too large", attribute.attr_type()))?
            .collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(format!(
                "names repeating attribute {} are not supported",
                attribute.attr_type()
            ));
        }
        let text = std::str::from_utf8(attribute.as_slice())
            .map_err(|_| format!("name attribute {} is not text", attribute.attr_type()))?;
        let value = match attribute.attr_value().tag() {
            Tag::PrintableString => DnValue::PrintableString(
                PrintableString::try_from(text).map_err(|e| e.to_string())?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::Ia5String => {
                DnValue::Ia5String(Ia5String::try_from(text).map_err(|e| e.to_string())?)
            }
            tag => {
                return Err(format!(
                    "name attribute {} has unsupported string type {tag}",
                    attribute.attr_type()
                ))
            }
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

fn key_usages(ku: &KeyUsage) -> Vec<KeyUsagePurpose> {
    [
        (ku.digital_signature(), KeyUsagePurpose::DigitalSignature),
        (ku.non_repudiation(), KeyUsagePurpose::ContentCommitment),
        (ku.key_encipherment(), KeyUsagePurpose::KeyEncipherment),
        (ku.data_encipherment(), KeyUsagePurpose::DataEncipherment),
        (ku.key_agreement(), KeyUsagePurpose::KeyAgreement),
        (ku.key_cert_sign(), KeyUsagePurpose::KeyCertSign),
        (ku.crl_sign(), KeyUsagePurpose::CrlSign),
        (ku.encipher_only(), KeyUsagePurpose::EncipherOnly),
        (ku.decipher_only(), KeyUsagePurpose::DecipherOnly),
    ]
    .into_iter()
    .filter_map(|(set, purpose)| set.then_some(purpose))
    .collect()
}

fn extended_key_usages(
    eku: &x509_parser::extensions::ExtendedKeyUsage<'_>,
) -> Vec<ExtendedKeyUsagePurpose> {
    let mut out: Vec<ExtendedKeyUsagePurpose> = [
        (eku.any, ExtendedKeyUsagePurpose::Any),
        (eku.server_auth, ExtendedKeyUsagePurpose::ServerAuth),
        (eku.client_auth, ExtendedKeyUsagePurpose::ClientAuth),
        (eku.code_signing, ExtendedKeyUsagePurpose::CodeSigning),
        (
            eku.email_protection,
            ExtendedKeyUsagePurpose::EmailProtection,
        ),
        (eku.time_stamping, ExtendedKeyUsagePurpose::TimeStamping),
        (eku.ocsp_signing, ExtendedKeyUsagePurpose::OcspSigning),
    ]
    .into_iter()
    .filter_map(|(set, purpose)| set.then_some(purpose))
    .collect();
    out.extend(
        eku.other
            .iter()
            .filter_map(|oid| oid.iter())
            .map(|arcs| ExtendedKeyUsagePurpose::Other(arcs.collect())),
    );
    out
}

fn san_type(name: &GeneralName<'_>) -> Result<SanType, String> {
    let ia5 = |s: &str| Ia5String::try_from(s).map_err(|e| e.to_string());
    Ok(match name {
        GeneralName::URI(uri) => SanType::URI(ia5(uri)?),
        GeneralName::DNSName(dns) => SanType::DnsName(ia5(dns)?),
        GeneralName::RFC822Name(email) => SanType::Rfc822Name(ia5(email)?),
        GeneralName::IPAddress(bytes) => SanType::IpAddress(match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).map_err(|e| e.to_string())?),
            16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).map_err(|e| e.to_string())?),
            n => return Err(format!("IP address SAN of {n} bytes")),
        }),
        other => return Err(format!("unsupported subject alternative name {other:?}")),
    })
}

/// `now` in UTC without its fraction of a second (certificates hold whole seconds), so that
/// NotAfter − NotBefore is exactly the requested lifetime.
fn whole_seconds_utc(now: OffsetDateTime) -> Result<OffsetDateTime, CaError> {
    let utc = now
        .checked_to_offset(UtcOffset::UTC)
        .ok_or_else(|| CaError::Validity {
            reason: format!("{now} cannot be expressed in UTC"),
        })?;
    let utc = utc.replace_nanosecond(0).unwrap_or(utc);
    check_encodable(utc)?;
    Ok(utc)
}

/// The validity of a certificate issued at `now` for `ttl`: backdated as Consul backdates,
/// ending `ttl` later, encodable. `what` names the certificate in errors.
fn validity(
    now: OffsetDateTime,
    ttl: std::time::Duration,
    what: &str,
) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    let ttl = Duration::try_from(ttl)
        .ok()
        .filter(|ttl| ttl.is_positive())
        .ok_or_else(|| CaError::Validity {
            reason: format!("{what} TTL {ttl:?} must be positive and representable"),
        })?;
    let not_before = backdated(now)?;
    let not_after = not_before
        .checked_add(ttl)
        .ok_or_else(|| CaError::Validity {
            reason: format!("{not_before} + {ttl} is out of range"),
        })?;
    check_encodable(not_after)?;
    Ok((not_before, not_after))
}

fn backdated(now: OffsetDateTime) -> Result<OffsetDateTime, CaError> {
    let now = whole_seconds_utc(now)?;
    let not_before = now.checked_sub(BACKDATE).ok_or_else(|| CaError::Validity {
        reason: format!("{now} - {BACKDATE} is out of range"),
    })?;
    check_encodable(not_before)?;
    Ok(not_before)
}

/// Adds calendar years as Go's `AddDate(years, 0, 0)`: 29 February becomes 1 March in a
/// non-leap target year.
fn add_calendar_years(t: OffsetDateTime, years: i32) -> Option<OffsetDateTime> {
    let year = t.year().checked_add(years)?;
    t.replace_year(year).ok().or_else(|| {
        let march_first = Date::from_calendar_date(year, Month::March, 1).ok()?;
        Some(t.replace_date(march_first))
    })
}

/// Certificates hold years 0–9999 (GeneralizedTime); rcgen would panic beyond.
fn check_encodable(t: OffsetDateTime) -> Result<(), CaError> {
    if (0..=9999).contains(&t.year()) {
        Ok(())
    } else {
        Err(CaError::Validity {
            reason: format!("{t} cannot be written in a certificate"),
        })
    }
}

impl From<crate::state::persist::PersistError> for CaError {
    fn from(e: crate::state::persist::PersistError) -> Self {
        CaError::Config(e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use consul_connect_types::api::serial_hex;
    use time::macros::datetime;
    use x509_parser::extensions::X509Extension;
    use x509_parser::oid_registry::{
        Oid, OID_SIG_ECDSA_WITH_SHA256, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
        OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
    };
    use x509_parser::x509::X509Version;

    use super::*;

    const OPENSSL: &str = "/usr/bin/openssl";
    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
    /// A clock reading with a fraction of a second, which certificates drop.
    const NOW: OffsetDateTime = datetime!(2026-11-25 20:36:49.750 UTC);
    const NOW_WHOLE: OffsetDateTime = datetime!(2026-11-25 20:36:49 UTC);
    const TTL: std::time::Duration = std::time::Duration::from_secs(72 * 3600);
    /// DER prefix of every P-256 SubjectPublicKeyInfo: id-ecPublicKey, prime256v1, 65-byte point.
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];

    // Captured from a real Consul 1.4.5 (tests/data/consul-1.4.5).
    const SAMPLE_TD: &str = "678277b4-c121-fe15-9eff-637834838f87.consul";
    const SAMPLE_ROOT1: &str = include_str!("../../tests/data/consul-1.4.5/root1.pem");
    const SAMPLE_ROOT2: &str = include_str!("../../tests/data/consul-1.4.5/root2.pem");
    const SAMPLE_ROOT2_KEY: &str = include_str!("../../tests/data/consul-1.4.5/newca.key");
    const SAMPLE_WEB_LEAF: &str = include_str!("../../tests/data/consul-1.4.5/web.pem");
    const SAMPLE_WEB_KEY: &str = include_str!("../../tests/data/consul-1.4.5/web.key");

    fn td() -> TrustDomain {
        TrustDomain::new(TD).unwrap()
    }

    fn service(name: &str) -> ServiceId {
        ServiceId::new(td(), "default", "dc1", name).unwrap()
    }

    fn new_ca(serial: u64, now: OffsetDateTime) -> BuiltinCa {
        BuiltinCa::new(td(), EcKey::generate().unwrap(), serial, now).unwrap()
    }

    /// DER of the only PEM block of `pem`, checking the block's shape as Go writes it.
    fn cert_der(pem: &str) -> Vec<u8> {
        assert_eq!(pem.matches("-----BEGIN").count(), 1, "one PEM block: {pem}");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(pem.ends_with("\n-----END CERTIFICATE-----\n"), "{pem}");
        let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let (last, full) = body.split_last().unwrap();
        assert!(full.iter().all(|l| l.len() == 64), "64-column lines: {pem}");
        assert!(!last.is_empty() && last.len() <= 64, "{pem}");
        let (rest, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert!(rest.iter().all(u8::is_ascii_whitespace));
        assert_eq!(block.label, "CERTIFICATE");
        block.contents
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = X509Certificate::from_der(der).unwrap();
        assert!(rest.is_empty());
        cert
    }

    fn sha256(bytes: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, bytes).as_ref().to_vec()
    }

    fn ext<'a>(cert: &'a X509Certificate<'a>, oid: &Oid<'_>) -> &'a X509Extension<'a> {
        cert.get_extension_unique(oid)
            .unwrap()
            .unwrap_or_else(|| panic!("extension {oid} missing"))
    }

    fn ext_oids(cert: &X509Certificate<'_>) -> Vec<String> {
        let mut oids: Vec<String> = cert
            .extensions()
            .iter()
            .map(|e| e.oid.to_id_string())
            .collect();
        oids.sort();
        oids
    }

    fn expect_oids(oids: &[&Oid<'_>]) -> Vec<String> {
        let mut oids: Vec<String> = oids.iter().map(|o| o.to_id_string()).collect();
        oids.sort();
        oids
    }

    fn ski(cert: &X509Certificate<'_>) -> Vec<u8> {
        let ext = ext(cert, &OID_X509_EXT_SUBJECT_KEY_IDENTIFIER);
        assert!(!ext.critical, "SKI must not be critical");
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => id.0.to_vec(),
            other => panic!("SKI: {other:?}"),
        }
    }

    fn aki(cert: &X509Certificate<'_>) -> Vec<u8> {
        let ext = ext(cert, &OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER);
        assert!(!ext.critical, "AKI must not be critical");
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                assert!(aki.authority_cert_issuer.is_none());
                assert!(aki.authority_cert_serial.is_none());
                aki.key_identifier
                    .as_ref()
                    .expect("AKI keyIdentifier")
                    .0
                    .to_vec()
            }
            other => panic!("AKI: {other:?}"),
        }
    }

    /// The SAN extension's names, checking it is not critical and holds URIs only.
    fn san_uris(cert: &X509Certificate<'_>) -> Vec<String> {
        let ext = ext(cert, &OID_X509_EXT_SUBJECT_ALT_NAME);
        assert!(
            !ext.critical,
            "SAN must not be critical when the subject is set"
        );
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => san
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::URI(uri) => (*uri).to_owned(),
                    other => panic!("unexpected SAN {other:?}"),
                })
                .collect(),
            other => panic!("SAN: {other:?}"),
        }
    }

    /// `(ca, path_len)` of a critical BasicConstraints.
    fn basic_constraints(cert: &X509Certificate<'_>) -> (bool, Option<u32>) {
        let ext = ext(cert, &OID_X509_EXT_BASIC_CONSTRAINTS);
        assert!(ext.critical, "BasicConstraints must be critical");
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => (bc.ca, bc.path_len_constraint),
            other => panic!("BasicConstraints: {other:?}"),
        }
    }

    /// The purposes of a critical KeyUsage.
    fn key_usage(cert: &X509Certificate<'_>) -> Vec<KeyUsagePurpose> {
        let ext = ext(cert, &OID_X509_EXT_KEY_USAGE);
        assert!(ext.critical, "KeyUsage must be critical");
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => key_usages(ku),
            other => panic!("KeyUsage: {other:?}"),
        }
    }

    /// The only attribute of a one-RDN name, which must be a common name.
    fn only_cn(name: &X509Name<'_>) -> (String, Tag) {
        assert_eq!(name.iter().count(), 1, "one RDN in {name}");
        assert_eq!(name.iter_attributes().count(), 1, "one attribute in {name}");
        let cn = name.iter_common_name().next().expect("a common name");
        (cn.as_str().unwrap().to_owned(), cn.attr_value().tag())
    }

    fn assert_signed_ecdsa_sha256(cert: &X509Certificate<'_>) {
        assert_eq!(cert.version(), X509Version::V3);
        assert_eq!(
            cert.signature_algorithm.algorithm,
            OID_SIG_ECDSA_WITH_SHA256
        );
        assert_eq!(
            cert.tbs_certificate.signature.algorithm,
            OID_SIG_ECDSA_WITH_SHA256
        );
    }

    /// A directory of its own under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "agent-sim-ca-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn openssl(args: &[&str]) -> Vec<u8> {
        let out = Command::new(OPENSSL)
            .args(args)
            .output()
            .expect("run /usr/bin/openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn openssl_text(args: &[&str]) -> String {
        String::from_utf8(openssl(args)).unwrap()
    }

    /// `openssl verify -x509_strict` of `leaf` against `ca` (plus `untrusted` intermediates) at
    /// `at`, for the TLS purpose `purpose` (`sslserver` or `sslclient`).
    fn verify(
        scratch: &Scratch,
        ca: &str,
        untrusted: Option<&str>,
        leaf: &str,
        at: OffsetDateTime,
        purpose: &str,
    ) -> Result<(), String> {
        let ca_path = scratch.write("ca.pem", ca);
        let leaf_path = scratch.write("leaf.pem", leaf);
        let mut cmd = Command::new(OPENSSL);
        cmd.args(["verify", "-x509_strict", "-purpose", purpose, "-attime"])
            .arg(at.unix_timestamp().to_string())
            .arg("-CAfile")
            .arg(ca_path);
        if let Some(untrusted) = untrusted {
            cmd.arg("-untrusted")
                .arg(scratch.write("untrusted.pem", untrusted));
        }
        let out = cmd.arg(leaf_path).output().expect("run /usr/bin/openssl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(text)
        }
    }

    fn verify_both_purposes(
        scratch: &Scratch,
        ca: &str,
        untrusted: Option<&str>,
        leaf: &str,
        at: OffsetDateTime,
    ) -> Result<(), String> {
        verify(scratch, ca, untrusted, leaf, at, "sslserver")?;
        verify(scratch, ca, untrusted, leaf, at, "sslclient")
    }

    fn key_error(pem: &str) -> PrivateKeyError {
        match EcKey::from_pem(pem) {
            Err(CaError::PrivateKey(e)) => e,
            Err(other) => panic!("expected a private key error, got {other}"),
            Ok(key) => panic!("expected an error, got {key:?}"),
        }
    }

    #[test]
    fn root_profile() {
        let key = EcKey::generate().unwrap();
        let key_id = key.key_id();
        let spki = key.subject_public_key_info().to_vec();
        let ca = BuiltinCa::new(td(), key, 7, NOW).unwrap();
        let root = ca.root();
        let der = cert_der(&root.pem);
        assert_eq!(der, root.der);
        let cert = parse(&der);

        assert_signed_ecdsa_sha256(&cert);
        assert_eq!(cert.raw_serial(), [7]);
        assert_eq!(
            only_cn(cert.subject()),
            ("Consul CA 7".to_owned(), Tag::PrintableString)
        );
        assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
        assert_eq!(cert.validity().not_before.to_datetime(), NOW_WHOLE);
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            datetime!(2036-11-25 20:36:49 UTC)
        );
        assert_eq!(cert.public_key().raw, spki);

        assert_eq!(
            ext_oids(&cert),
            expect_oids(&[
                &OID_X509_EXT_KEY_USAGE,
                &OID_X509_EXT_BASIC_CONSTRAINTS,
                &OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
                &OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
                &OID_X509_EXT_SUBJECT_ALT_NAME,
            ]),
            "no EKU, nothing else"
        );
        assert_eq!(basic_constraints(&cert), (true, None));
        assert_eq!(key_usage(&cert), CA_KEY_USAGES);
        assert_eq!(san_uris(&cert), [format!("spiffe://{TD}")]);
        assert_eq!(key_id.len(), 32);
        assert_eq!(key_id, sha256(&spki));
        assert_eq!(ski(&cert), key_id);
        assert_eq!(aki(&cert), key_id);

        assert_eq!(root.serial, 7);
        assert_eq!(
            root.id,
            colon_hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der).as_ref())
        );
        assert_eq!(root.id.len(), 20 * 3 - 1);
        assert_eq!(root.signing_key_id, colon_hex(&key_id));
        assert_eq!(root.not_before, NOW_WHOLE);
        assert_eq!(root.not_after, datetime!(2036-11-25 20:36:49 UTC));
        assert_eq!(ca.trust_domain(), &td());
    }

    #[test]
    fn root_signing_uri_is_lowercase_and_validity_is_calendar_years() {
        let mixed = TrustDomain::new("ABCDEF00-2222-3333-4444-555555555555.Consul").unwrap();
        let leap_day = datetime!(2028-02-29 12:00:00 UTC);
        let ca = BuiltinCa::new(mixed, EcKey::generate().unwrap(), 1, leap_day).unwrap();
        let der = cert_der(&ca.root().pem);
        let cert = parse(&der);
        assert_eq!(
            san_uris(&cert),
            ["spiffe://abcdef00-2222-3333-4444-555555555555.consul"]
        );
        assert_eq!(ca.root().not_before, leap_day);
        // Go's AddDate(10, 0, 0) from 29 February lands on 1 March.
        assert_eq!(ca.root().not_after, datetime!(2038-03-01 12:00:00 UTC));

        let from_other_offset = datetime!(2026-11-25 22:36:49 +02:00);
        let ca = BuiltinCa::new(td(), EcKey::generate().unwrap(), 1, from_other_offset).unwrap();
        assert_eq!(ca.root().not_before, NOW_WHOLE);
    }

    #[test]
    fn root_needs_a_signing_trust_domain() {
        let no_dot = TrustDomain::new("nodot").unwrap();
        let err = BuiltinCa::new(no_dot, EcKey::generate().unwrap(), 1, NOW).unwrap_err();
        assert!(matches!(err, CaError::InvalidTrustDomain { .. }), "{err}");
    }

    #[test]
    fn leaf_profile() {
        let ca_key = EcKey::generate().unwrap();
        let ca_key_id = ca_key.key_id();
        let ca = BuiltinCa::new(td(), ca_key, 7, NOW).unwrap();
        let root_der = ca.root().der.clone();
        let root = parse(&root_der);
        let agent_key = EcKey::generate().unwrap();
        let web = service("web");

        let pem = ca.sign_leaf(&web, &agent_key, 8, NOW, TTL).unwrap();
        let der = cert_der(&pem);
        let cert = parse(&der);

        assert_signed_ecdsa_sha256(&cert);
        assert_eq!(cert.raw_serial(), [8]);
        assert_eq!(
            only_cn(cert.subject()),
            ("web".to_owned(), Tag::PrintableString)
        );
        assert_eq!(cert.issuer().as_raw(), root.subject().as_raw());
        let not_before = NOW_WHOLE - Duration::minutes(1);
        assert_eq!(cert.validity().not_before.to_datetime(), not_before);
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            not_before + Duration::hours(72)
        );
        assert_eq!(cert.public_key().raw, agent_key.subject_public_key_info());

        assert_eq!(
            ext_oids(&cert),
            expect_oids(&[
                &OID_X509_EXT_KEY_USAGE,
                &OID_X509_EXT_EXTENDED_KEY_USAGE,
                &OID_X509_EXT_BASIC_CONSTRAINTS,
                &OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
                &OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
                &OID_X509_EXT_SUBJECT_ALT_NAME,
            ])
        );
        assert_eq!(basic_constraints(&cert), (false, None));
        assert_eq!(key_usage(&cert), LEAF_KEY_USAGES);
        let eku = ext(&cert, &OID_X509_EXT_EXTENDED_KEY_USAGE);
        assert!(!eku.critical);
        match eku.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert_eq!(
                    extended_key_usages(eku),
                    [
                        ExtendedKeyUsagePurpose::ServerAuth,
                        ExtendedKeyUsagePurpose::ClientAuth
                    ]
                );
            }
            other => panic!("EKU: {other:?}"),
        }
        assert_eq!(
            san_uris(&cert),
            ["spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web"]
        );
        assert_eq!(ski(&cert), agent_key.key_id());
        assert_eq!(aki(&cert), ca_key_id);
        assert_eq!(colon_hex(&aki(&cert)), ca.root().signing_key_id);

        // Names PrintableString cannot hold are written as UTF8String, as Go does.
        let pem = ca
            .sign_leaf(&service("db_primary"), &agent_key, 9, NOW, TTL)
            .unwrap();
        let der = cert_der(&pem);
        assert_eq!(
            only_cn(parse(&der).subject()),
            ("db_primary".to_owned(), Tag::Utf8String)
        );
    }

    #[test]
    fn serials_are_minimal_der() {
        let ca = new_ca(u64::MAX, NOW);
        assert_eq!(ca.root().serial, u64::MAX);
        let key = EcKey::generate().unwrap();
        let cases: [(u64, &[u8], &str); 6] = [
            (1, &[0x01], "01"),
            (8, &[0x08], "08"),
            (0x7f, &[0x7f], "7f"),
            (0x80, &[0x00, 0x80], "80"),
            (300, &[0x01, 0x2c], "01:2c"),
            (
                u64::MAX,
                &[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                "ff:ff:ff:ff:ff:ff:ff:ff",
            ),
        ];
        for (serial, raw, hex) in cases {
            let pem = ca
                .sign_leaf(&service("web"), &key, serial, NOW, TTL)
                .unwrap();
            let der = cert_der(&pem);
            let cert = parse(&der);
            assert_eq!(cert.raw_serial(), raw, "serial {serial}");
            assert_eq!(serial_hex(cert.raw_serial()), hex);
        }

        let scratch = Scratch::new("serial");
        let pem = ca.sign_leaf(&service("web"), &key, 8, NOW, TTL).unwrap();
        let path = scratch.write("leaf.pem", &pem);
        let text = openssl_text(&["x509", "-noout", "-text", "-in", path.to_str().unwrap()]);
        assert!(text.contains("Serial Number: 8 (0x8)"), "{text}");
    }

    #[test]
    fn zero_serials_and_bad_ttls_are_refused() {
        let err = BuiltinCa::new(td(), EcKey::generate().unwrap(), 0, NOW).unwrap_err();
        assert!(matches!(err, CaError::ZeroSerial), "{err}");
        let ca = new_ca(7, NOW);
        let key = EcKey::generate().unwrap();
        let err = ca
            .sign_leaf(&service("web"), &key, 0, NOW, TTL)
            .unwrap_err();
        assert!(matches!(err, CaError::ZeroSerial), "{err}");
        let other = new_ca(8, NOW);
        let err = ca.cross_sign(other.root(), 0, NOW).unwrap_err();
        assert!(matches!(err, CaError::ZeroSerial), "{err}");

        let zero = std::time::Duration::ZERO;
        let err = ca
            .sign_leaf(&service("web"), &key, 9, NOW, zero)
            .unwrap_err();
        assert!(matches!(err, CaError::Validity { .. }), "{err}");
        let forever = std::time::Duration::from_secs(u64::MAX);
        let err = ca
            .sign_leaf(&service("web"), &key, 9, NOW, forever)
            .unwrap_err();
        assert!(matches!(err, CaError::Validity { .. }), "{err}");
    }

    #[test]
    fn leaf_of_another_trust_domain_is_refused() {
        let ca = new_ca(7, NOW);
        let foreign_td = TrustDomain::new("99999999-2222-3333-4444-555555555555.consul").unwrap();
        let foreign = ServiceId::new(foreign_td, "default", "dc1", "web").unwrap();
        let err = ca
            .sign_leaf(&foreign, &EcKey::generate().unwrap(), 8, NOW, TTL)
            .unwrap_err();
        assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "SPIFFE ID in CSR from a different trust domain: \
             99999999-2222-3333-4444-555555555555.consul, we are \
             11111111-2222-3333-4444-555555555555.consul"
        );
        // Trust domains compare case-insensitively, as Consul lowercases the host.
        let upper = ServiceId::new(
            TrustDomain::new(&TD.to_uppercase()).unwrap(),
            "default",
            "dc1",
            "web",
        )
        .unwrap();
        ca.sign_leaf(&upper, &EcKey::generate().unwrap(), 9, NOW, TTL)
            .unwrap();
    }

    /// 1.10's names (`root1.txt`, `web.txt`): `pri-<uid>.consul.ca.<td8>.consul` and
    /// `<svc>.svc.<ns>.<td8>.consul`, long names cut to 64 bytes as Consul cuts them.
    #[test]
    fn consul_1_10_names() {
        let ca = BuiltinCa::generate(
            td(),
            EcKey::generate().unwrap(),
            7,
            NOW,
            CertNames::Consul1_10,
        )
        .unwrap();
        let root = parse(&ca.root().der);
        let (cn, _) = only_cn(root.subject());
        let uid = cn
            .strip_prefix("pri-")
            .and_then(|r| r.strip_suffix(".consul.ca.11111111.consul"))
            .unwrap_or_else(|| panic!("{cn}"));
        assert!(
            (1..=8).contains(&uid.len()) && uid.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{cn}"
        );
        let pem = ca
            .sign_leaf(&service("web"), &EcKey::generate().unwrap(), 8, NOW, TTL)
            .unwrap();
        let der = cert_der(&pem);
        assert_eq!(
            only_cn(parse(&der).subject()).0,
            "web.svc.default.11111111.consul"
        );
        let long = "a".repeat(60);
        let cn = CertNames::Consul1_10.leaf(&service(&long));
        assert_eq!(
            cn,
            format!("{}.svc.default.11111111.consul", "a".repeat(36))
        );
        assert_eq!(cn.len(), 64);
        assert_eq!(
            shorten_service_and_namespace(&"s".repeat(40), &"n".repeat(40)),
            ("s".repeat(21).as_str(), "n".repeat(22).as_str())
        );
    }

    /// A secondary datacenter's intermediate as `wan_dc2_intermediate.txt` shows it, and its
    /// leaves verifying through it (`wan_verify.txt`).
    #[test]
    fn intermediate_profile_and_chain() {
        let scratch = Scratch::new("intermediate");
        let primary = BuiltinCa::generate(
            td(),
            EcKey::generate().unwrap(),
            7,
            NOW,
            CertNames::Consul1_10,
        )
        .unwrap();
        let key = EcKey::generate().unwrap();
        let cn = CertNames::Consul1_10.ca(9, &td(), false);
        let year = std::time::Duration::from_secs(8760 * 3600);
        let pem = primary
            .sign_intermediate(key.subject_public_key_info(), &cn, 9, NOW, year)
            .unwrap();
        let der = cert_der(&pem);
        let cert = parse(&der);
        assert_eq!(only_cn(cert.subject()).0, cn);
        assert!(cn.starts_with("sec-"), "{cn}");
        assert_eq!(
            cert.issuer().as_raw(),
            parse(&primary.root().der).subject().as_raw()
        );
        assert_eq!(basic_constraints(&cert), (true, Some(0)));
        assert_eq!(key_usage(&cert), CA_KEY_USAGES);
        assert_eq!(san_uris(&cert), [format!("spiffe://{TD}")]);
        assert_eq!(ski(&cert), key.key_id());
        assert_eq!(aki(&cert), primary.key.key_id());
        let not_before = cert.validity().not_before.to_datetime();
        assert_eq!(not_before, NOW_WHOLE - BACKDATE);
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            not_before + Duration::days(365)
        );

        let secondary = BuiltinCa::from_parts(td(), &pem, key)
            .unwrap()
            .with_cert_names(CertNames::Consul1_10);
        assert_eq!(secondary.root().signing_key_id, colon_hex(&ski(&cert)));
        let dc2_web = ServiceId::new(td(), "default", "dc2", "web").unwrap();
        let leaf = secondary
            .sign_leaf(&dc2_web, &EcKey::generate().unwrap(), 10, NOW, TTL)
            .unwrap();
        let leaf_der = cert_der(&leaf);
        assert_eq!(aki(&parse(&leaf_der)), ski(&cert));
        let root_pem = &primary.root().pem;
        verify_both_purposes(&scratch, root_pem, Some(&pem), &leaf, NOW).unwrap();
        assert!(verify(&scratch, root_pem, None, &leaf, NOW, "sslserver").is_err());
        verify(&scratch, root_pem, None, &pem, NOW, "any").unwrap();
    }

    #[test]
    fn openssl_verifies_leaf_against_its_root_only() {
        let scratch = Scratch::new("verify");
        let ca = new_ca(7, NOW);
        let other = new_ca(7, NOW);
        let key = EcKey::generate().unwrap();
        let leaf = ca.sign_leaf(&service("web"), &key, 8, NOW, TTL).unwrap();
        let foreign_leaf = other.sign_leaf(&service("web"), &key, 8, NOW, TTL).unwrap();
        let at = NOW + Duration::hours(1);

        verify_both_purposes(&scratch, &ca.root().pem, None, &leaf, at).unwrap();
        let err = verify(
            &scratch,
            &ca.root().pem,
            None,
            &foreign_leaf,
            at,
            "sslserver",
        )
        .unwrap_err();
        assert!(
            err.contains("unable to get local issuer certificate"),
            "{err}"
        );
        // Same subject (CN=Consul CA 7), different key: the signature decides.
        assert!(verify(&scratch, &other.root().pem, None, &leaf, at, "sslserver").is_err());
        let expired = verify(
            &scratch,
            &ca.root().pem,
            None,
            &leaf,
            NOW + Duration::hours(73),
            "sslserver",
        )
        .unwrap_err();
        assert!(expired.contains("certificate has expired"), "{expired}");
    }

    #[test]
    fn rotation_with_cross_signed_root() {
        let scratch = Scratch::new("rotation");
        let key_a = EcKey::generate().unwrap();
        let key_a_id = key_a.key_id();
        let key_b = EcKey::generate().unwrap();
        let key_b_id = key_b.key_id();
        let a = BuiltinCa::new(td(), key_a, 7, NOW).unwrap();
        let agent_key = EcKey::generate().unwrap();
        let leaf_a = a
            .sign_leaf(&service("web"), &agent_key, 8, NOW, TTL)
            .unwrap();

        let later = NOW + Duration::hours(1);
        let later_whole = NOW_WHOLE + Duration::hours(1);
        let b = BuiltinCa::new(td(), key_b, 23, later).unwrap();
        let cross = a.cross_sign(b.root(), 24, later).unwrap();
        let leaf_b = b
            .sign_leaf(&service("web"), &agent_key, 25, later, TTL)
            .unwrap();

        // Profile of the cross-signed root.
        let (a_der, b_der, cross_der) =
            (a.root().der.clone(), b.root().der.clone(), cert_der(&cross));
        let (a_cert, b_cert, x) = (parse(&a_der), parse(&b_der), parse(&cross_der));
        assert_signed_ecdsa_sha256(&x);
        assert_eq!(x.raw_serial(), [24]);
        assert_eq!(x.subject().as_raw(), b_cert.subject().as_raw());
        assert_eq!(x.issuer().as_raw(), a_cert.subject().as_raw());
        assert_eq!(x.public_key().raw, b_cert.public_key().raw);
        assert_eq!(ski(&x), key_b_id);
        assert_eq!(aki(&x), key_a_id);
        assert_eq!(san_uris(&x), san_uris(&b_cert));
        assert_eq!(basic_constraints(&x), (true, None));
        assert_eq!(key_usage(&x), CA_KEY_USAGES);
        assert_eq!(ext_oids(&x), ext_oids(&b_cert));
        let not_before = later_whole - Duration::minutes(1);
        assert_eq!(x.validity().not_before.to_datetime(), not_before);
        assert_eq!(
            x.validity().not_after.to_datetime(),
            not_before + Duration::days(7)
        );

        let at = later + Duration::hours(1);
        verify_both_purposes(&scratch, &b.root().pem, None, &leaf_b, at).unwrap();
        verify_both_purposes(&scratch, &a.root().pem, Some(&cross), &leaf_b, at).unwrap();
        assert!(verify(&scratch, &a.root().pem, None, &leaf_b, at, "sslserver").is_err());
        verify_both_purposes(&scratch, &a.root().pem, None, &leaf_a, at).unwrap();
        assert!(verify(&scratch, &b.root().pem, None, &leaf_a, at, "sslserver").is_err());
    }

    #[test]
    fn cross_signs_a_root_made_by_consul() {
        let scratch = Scratch::new("cross-consul");
        let sample_td = TrustDomain::new(SAMPLE_TD).unwrap();
        let now = datetime!(2026-11-25 21:00:00 UTC);
        let ours = BuiltinCa::new(sample_td, EcKey::generate().unwrap(), 30, now).unwrap();
        let consul_root = RootCert::from_pem(SAMPLE_ROOT1).unwrap();
        let cross = ours.cross_sign(&consul_root, 31, now).unwrap();

        let cross_der = cert_der(&cross);
        let (x, original) = (parse(&cross_der), parse(&consul_root.der));
        // Byte-identical subject (PrintableString kept), key, SKI (1.4.5's 95 ASCII bytes), SAN.
        assert_eq!(x.subject().as_raw(), original.subject().as_raw());
        assert_eq!(x.public_key().raw, original.public_key().raw);
        assert_eq!(ski(&x), ski(&original));
        assert_eq!(ski(&x).len(), 95);
        assert_eq!(san_uris(&x), san_uris(&original));
        assert_eq!(basic_constraints(&x), (true, None));
        assert_eq!(key_usage(&x), CA_KEY_USAGES);
        assert_eq!(aki(&x), ours.issuer_key_id);

        // Consul's own `web` leaf (issued by root1) now chains to our root through `cross`.
        let at = datetime!(2026-11-26 00:00:00 UTC);
        verify_both_purposes(&scratch, SAMPLE_ROOT1, None, SAMPLE_WEB_LEAF, at).unwrap();
        verify_both_purposes(
            &scratch,
            &ours.root().pem,
            Some(&cross),
            SAMPLE_WEB_LEAF,
            at,
        )
        .unwrap();
    }

    #[test]
    fn cross_signing_refuses_a_leaf() {
        let ca = new_ca(7, NOW);
        let leaf_key = EcKey::generate().unwrap();
        let leaf = ca
            .sign_leaf(&service("web"), &leaf_key, 8, NOW, TTL)
            .unwrap();
        let not_a_root = RootCert {
            der: cert_der(&leaf),
            ..ca.root().clone()
        };
        let err = ca.cross_sign(&not_a_root, 9, NOW).unwrap_err();
        assert!(
            matches!(&err, CaError::CrossSign { reason, .. } if reason.contains("not a CA")),
            "{err}"
        );
    }

    #[test]
    fn roots_read_from_consul_samples() {
        let root1 = RootCert::from_pem(SAMPLE_ROOT1).unwrap();
        assert_eq!(
            root1.id,
            "61:cd:f8:1d:36:65:ba:53:5e:85:29:2f:42:88:ec:e1:e6:07:4d:69"
        );
        assert_eq!(root1.serial, 7);
        assert_eq!(
            root1.signing_key_id,
            "34:66:3a:39:61:3a:31:37:3a:34:66:3a:35:64:3a:37:66:3a:39:63:3a:30:36:3a:62:34:3a:35:\
             65:3a:30:33:3a:65:66:3a:39:39:3a:33:32:3a:33:61:3a:39:39:3a:66:32:3a:61:35:3a:39:65:\
             3a:64:64:3a:62:31:3a:62:34:3a:37:36:3a:38:35:3a:33:38:3a:64:39:3a:39:37:3a:33:33:3a:\
             61:33:3a:64:32:3a:38:35:3a:66:35"
        );
        assert_eq!(root1.not_before, datetime!(2026-11-25 20:36:49 UTC));
        assert_eq!(root1.not_after, datetime!(2036-11-25 20:36:49 UTC));
        assert_eq!(
            root1.pem, SAMPLE_ROOT1,
            "PEM re-encoded exactly as Go wrote it"
        );

        let root2 = RootCert::from_pem(SAMPLE_ROOT2).unwrap();
        assert_eq!(
            root2.id,
            "4b:79:fe:91:7e:4a:62:e5:e2:8e:b6:96:91:60:70:f0:83:8f:f3:84"
        );
        assert_eq!(root2.serial, 23);
        assert!(root2
            .signing_key_id
            .starts_with("65:36:3a:38:62:3a:36:38:3a:63:66"));
        assert_eq!(root2.not_before, datetime!(2026-11-25 20:37:52 UTC));
        assert_eq!(root2.not_after, datetime!(2036-11-25 20:37:52 UTC));

        let err = RootCert::from_pem("").unwrap_err();
        assert_eq!(
            err.to_string(),
            "error parsing root cert: no PEM-encoded data found"
        );
        let err = RootCert::from_pem(SAMPLE_WEB_KEY).unwrap_err();
        assert_eq!(
            err.to_string(),
            "error parsing root cert: first PEM-block should be CERTIFICATE type"
        );
    }

    #[test]
    fn from_parts_round_trips() {
        let scratch = Scratch::new("from-parts");
        let ca = new_ca(7, NOW);
        let key = EcKey::from_pem(&ca.private_key_pem()).unwrap();
        let restored = BuiltinCa::from_parts(td(), &ca.root().pem, key).unwrap();
        assert_eq!(restored.root(), ca.root());
        assert_eq!(restored.issuer_name, ca.issuer_name);
        assert_eq!(restored.issuer_key_id, ca.issuer_key_id);
        assert_eq!(restored.private_key_pem(), ca.private_key_pem());

        let agent_key = EcKey::generate().unwrap();
        let leaf = restored
            .sign_leaf(&service("web"), &agent_key, 8, NOW, TTL)
            .unwrap();
        let (leaf_der, root_der) = (cert_der(&leaf), ca.root().der.clone());
        let (leaf_cert, root_cert) = (parse(&leaf_der), parse(&root_der));
        assert_eq!(leaf_cert.issuer().as_raw(), root_cert.subject().as_raw());
        assert_eq!(aki(&leaf_cert), ski(&root_cert));
        verify_both_purposes(
            &scratch,
            &ca.root().pem,
            None,
            &leaf,
            NOW + Duration::hours(1),
        )
        .unwrap();
    }

    #[test]
    fn from_parts_refuses_mismatches() {
        let ca = new_ca(7, NOW);
        let err =
            BuiltinCa::from_parts(td(), &ca.root().pem, EcKey::generate().unwrap()).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("root cert is for a different private key"));

        let other_td = TrustDomain::new("99999999-2222-3333-4444-555555555555.consul").unwrap();
        let key = EcKey::from_pem(&ca.private_key_pem()).unwrap();
        let err = BuiltinCa::from_parts(other_td, &ca.root().pem, key).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "root cert URI \"spiffe://{TD}\" does not match current URI: \
                 \"spiffe://99999999-2222-3333-4444-555555555555.consul\""
            )
        );

        let leaf_key = EcKey::generate().unwrap();
        let leaf = ca
            .sign_leaf(&service("web"), &leaf_key, 8, NOW, TTL)
            .unwrap();
        let err = BuiltinCa::from_parts(td(), &leaf, leaf_key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "error parsing root cert: root cert is not a CA certificate"
        );

        let key = EcKey::from_pem(&ca.private_key_pem()).unwrap();
        let err = BuiltinCa::from_parts(td(), "garbage", key).unwrap_err();
        assert!(matches!(err, CaError::InvalidRootCert { .. }), "{err}");
    }

    #[test]
    fn from_parts_accepts_a_root_made_by_consul() {
        let scratch = Scratch::new("consul-root");
        let sample_td = TrustDomain::new(SAMPLE_TD).unwrap();
        let key = EcKey::from_pem(SAMPLE_ROOT2_KEY).unwrap();
        let ca = BuiltinCa::from_parts(sample_td.clone(), SAMPLE_ROOT2, key).unwrap();
        assert_eq!(
            ca.root().id,
            "4b:79:fe:91:7e:4a:62:e5:e2:8e:b6:96:91:60:70:f0:83:8f:f3:84"
        );
        assert_eq!(ca.private_key_pem(), SAMPLE_ROOT2_KEY);

        let web = ServiceId::new(sample_td, "default", "dc1", "web").unwrap();
        let now = datetime!(2026-11-25 21:00:00 UTC);
        let leaf = ca
            .sign_leaf(&web, &EcKey::generate().unwrap(), 40, now, TTL)
            .unwrap();
        let (leaf_der, root_der) = (cert_der(&leaf), ca.root().der.clone());
        let (leaf_cert, root_cert) = (parse(&leaf_der), parse(&root_der));
        // The root's own SKI (ASCII, 95 bytes) is what leaves must name as their authority.
        assert_eq!(aki(&leaf_cert), ski(&root_cert));
        assert_eq!(colon_hex(&aki(&leaf_cert)), ca.root().signing_key_id);
        verify_both_purposes(
            &scratch,
            SAMPLE_ROOT2,
            None,
            &leaf,
            now + Duration::hours(1),
        )
        .unwrap();

        // root1's key is not newca.key.
        let key = EcKey::from_pem(SAMPLE_ROOT2_KEY).unwrap();
        let err = BuiltinCa::from_parts(TrustDomain::new(SAMPLE_TD).unwrap(), SAMPLE_ROOT1, key)
            .unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn key_pem_round_trips_as_go_writes_it() {
        for sample in [SAMPLE_WEB_KEY, SAMPLE_ROOT2_KEY] {
            let key = EcKey::from_pem(sample).unwrap();
            assert_eq!(
                key.to_pem(),
                sample,
                "SEC1 DER and PEM layout identical to Go's"
            );
        }
        let key = EcKey::generate().unwrap();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(pem.ends_with("\n-----END EC PRIVATE KEY-----\n"));
        assert!(key.subject_public_key_info().starts_with(&P256_SPKI_PREFIX));
        assert_eq!(
            key.subject_public_key_info().len(),
            P256_SPKI_PREFIX.len() + 65
        );
        let again = EcKey::from_pem(&pem).unwrap();
        assert_eq!(again.key_id(), key.key_id());
        assert_eq!(again.to_pem(), pem);
        assert_ne!(EcKey::generate().unwrap().key_id(), key.key_id());
    }

    #[test]
    fn from_pem_accepts_p256_in_sec1_and_pkcs8() {
        let scratch = Scratch::new("keys-ok");
        let pkcs8 = openssl_text(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]);
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"), "{pkcs8}");
        let sec1 = openssl_text(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"]);
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");

        for (name, pem) in [("pkcs8.pem", &pkcs8), ("sec1.pem", &sec1)] {
            let key = EcKey::from_pem(pem).unwrap();
            let input = scratch.write(name, pem);
            let spki = openssl(&[
                "pkey",
                "-in",
                input.to_str().unwrap(),
                "-pubout",
                "-outform",
                "DER",
            ]);
            assert_eq!(key.subject_public_key_info(), spki, "{name}");
            assert_eq!(key.key_id(), sha256(&spki), "{name}");

            // Our SEC1 output is the same key to OpenSSL.
            let ours = scratch.write("ours.pem", &key.to_pem());
            let text = openssl_text(&["ec", "-in", ours.to_str().unwrap(), "-check", "-noout"]);
            assert!(text.is_empty() || text.contains("valid"), "{text}");
            let spki_again = openssl(&[
                "pkey",
                "-in",
                ours.to_str().unwrap(),
                "-pubout",
                "-outform",
                "DER",
            ]);
            assert_eq!(spki_again, spki, "{name}");
        }
        assert_eq!(EcKey::from_pem(&sec1).unwrap().to_pem(), sec1);
    }

    #[test]
    fn from_pem_refuses_other_keys_and_garbage() {
        // OpenSSL 3 writes RSA keys as PKCS#8; -traditional gives PKCS#1.
        let rsa = openssl_text(&["genrsa", "2048"]);
        assert!(rsa.starts_with("-----BEGIN PRIVATE KEY-----"), "{rsa}");
        assert_eq!(
            key_error(&rsa),
            PrivateKeyError::UnsupportedKeyType { key_type: "RSA" }
        );
        let err = EcKey::from_pem(&rsa).unwrap_err();
        assert_eq!(
            err.to_string(),
            "error generating CA: error parsing private key: invalid key type: RSA \
             (the built-in CA uses ECDSA P-256 keys only)"
        );
        let rsa1 = openssl_text(&["genrsa", "-traditional", "2048"]);
        assert_eq!(
            key_error(&rsa1).to_string(),
            "unknown PEM block type for signing key: RSA PRIVATE KEY"
        );

        let p384 = openssl_text(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ]);
        assert_eq!(
            key_error(&p384),
            PrivateKeyError::UnsupportedKeyType {
                key_type: "ECDSA P-384"
            }
        );
        let p384_sec1 = openssl_text(&["ecparam", "-name", "secp384r1", "-genkey", "-noout"]);
        assert_eq!(
            key_error(&p384_sec1),
            PrivateKeyError::UnsupportedKeyType {
                key_type: "ECDSA P-384"
            }
        );
        let ed25519 = openssl_text(&["genpkey", "-algorithm", "ed25519"]);
        assert_eq!(
            key_error(&ed25519),
            PrivateKeyError::UnsupportedKeyType {
                key_type: "Ed25519"
            }
        );

        for no_pem in [
            "",
            "not a key",
            "-----BEGIN EC PRIVATE KEY-----\n!!!not base64!!!\n-----END EC PRIVATE KEY-----\n",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n",
        ] {
            assert_eq!(key_error(no_pem), PrivateKeyError::NoPemData, "{no_pem:?}");
        }
        assert_eq!(
            EcKey::from_pem("").unwrap_err().to_string(),
            "error generating CA: error parsing private key: no PEM-encoded data found"
        );
        assert!(matches!(
            key_error("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"),
            PrivateKeyError::InvalidEcPrivateKey { .. }
        ));
        let err = key_error("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(
            matches!(err, PrivateKeyError::InvalidPkcs8PrivateKey { .. }),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("x509: failed to parse private key: "));
        assert_eq!(
            key_error(SAMPLE_ROOT1),
            PrivateKeyError::UnknownPemBlockType {
                label: "CERTIFICATE".into()
            }
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = EcKey::generate().unwrap();
        let pem = key.to_pem();
        let secret_lines: Vec<String> = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned)
            .collect();
        let key_debug = format!("{key:?}");
        let ca = BuiltinCa::new(td(), key, 7, NOW).unwrap();
        let provider: Box<dyn CaProvider> = Box::new(ca);
        for debug in [key_debug, format!("{provider:?}"), format!("{provider:#?}")] {
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
            assert!(!debug.contains("serialized_der"), "{debug}");
            for line in &secret_lines {
                assert!(!debug.contains(line.as_str()), "{debug}");
            }
            assert!(debug.contains(&provider.root().signing_key_id), "{debug}");
        }
        assert_eq!(provider.private_key_pem(), pem);
    }

    #[test]
    fn pem_encoding_matches_rfc4648_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, base64) in cases {
            let body = if base64.is_empty() {
                String::new()
            } else {
                format!("{base64}\n")
            };
            assert_eq!(
                pem_encode("X", input),
                format!("-----BEGIN X-----\n{body}-----END X-----\n")
            );
        }
        let exactly_one_line = pem_encode("X", &[0u8; 48]);
        assert_eq!(
            exactly_one_line,
            format!("-----BEGIN X-----\n{}\n-----END X-----\n", "A".repeat(64))
        );
        let two_lines = pem_encode("X", &[0u8; 49]);
        assert_eq!(
            two_lines,
            format!(
                "-----BEGIN X-----\n{}\nAA==\n-----END X-----\n",
                "A".repeat(64)
            )
        );
    }
}
