//! Consul's built-in CA provider: root generation, leaf and intermediate signing, cross-signing.

use std::fmt;

use aws_lc_rs::digest;
use consul_connect_types::api::colon_hex;
use consul_connect_types::spiffe::{ServiceId, SigningId, TrustDomain};
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

use super::copy::{distinguished_name, extended_key_usages, key_usages, san_type};
use super::pem::pem_encode;
use super::root::{invalid_root, parse_certificate, subject_key_id, uri_sans};
use super::validity::{
    add_calendar_years, backdated, check_encodable, validity, whole_seconds_utc,
    CROSS_SIGNED_VALIDITY, ROOT_VALIDITY_YEARS,
};
use super::{CaError, CaProvider, CertNames, EcKey, RootCert};

/// Consul's built-in CA provider: a self-signed P-256 root and its key.
pub struct BuiltinCa {
    trust_domain: TrustDomain,
    pub(super) key: EcKey,
    root: RootCert,
    /// The root's subject, with its string types, so issuer names match it byte for byte.
    pub(super) issuer_name: DistinguishedName,
    /// The root's SKI, written as the AKI of everything this CA signs.
    pub(super) issuer_key_id: Vec<u8>,
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

pub(super) const CA_KEY_USAGES: [KeyUsagePurpose; 3] = [
    KeyUsagePurpose::DigitalSignature,
    KeyUsagePurpose::KeyCertSign,
    KeyUsagePurpose::CrlSign,
];

pub(super) const LEAF_KEY_USAGES: [KeyUsagePurpose; 4] = [
    KeyUsagePurpose::DigitalSignature,
    KeyUsagePurpose::KeyEncipherment,
    KeyUsagePurpose::DataEncipherment,
    KeyUsagePurpose::KeyAgreement,
];

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
