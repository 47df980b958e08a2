//! Certificates in the profiles of Consul 1.4.5's built-in CA (spec §2), built with rcgen.
//!
//! - Root: `CN=Consul CA <n>`, serial n, CA:TRUE (critical), key usage digitalSignature,
//!   keyCertSign, cRLSign, URI SAN `spiffe://<trust-domain>`, NotBefore now (not backdated),
//!   10 years; SKI = AKI = the Consul key id.
//! - Leaf: `CN=<service>`, CA:FALSE (critical), key usage digitalSignature, keyEncipherment,
//!   dataEncipherment, keyAgreement, EKU clientAuth + serverAuth, one service URI SAN,
//!   NotBefore now − 1 min, 72 h; AKI = the CA key id and (Consul ≤1.6 bug) SKI = the CA key
//!   id too.
//! - Cross-signed: the new root's subject, key and extensions, signed by the old root's key,
//!   NotBefore now − 1 min, 7 days.
//!
//! Key ids are written as Consul ≤1.6 does: the ASCII text of the colon-hex SHA-256 of the
//! SubjectPublicKeyInfo (95 bytes). Keys are ECDSA P-256 (PKCS#8 PEM here; Consul writes SEC1,
//! which the captured real certificates cover).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use consul_connect::api::{CaRoot, CaRootList, LeafCert};
use consul_connect_types::api::colon_hex;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use time::{Duration, OffsetDateTime};

/// The trust domain of Consul's own test CA (`connect/certgen`).
pub const TRUST_DOMAIN: &str = "11111111-2222-3333-4444-555555555555.consul";
/// Another cluster's trust domain.
pub const OTHER_TRUST_DOMAIN: &str = "99999999-8888-7777-6666-555555555555.consul";
/// The datacenter of every test leaf.
pub const DC: &str = "dc1";

/// `spiffe://<td>/ns/default/dc/dc1/svc/<service>`.
pub fn service_uri(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/default/dc/{DC}/svc/{service}")
}

/// The wall clock, to the second (certificates hold seconds).
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// `t` as rustls time.
pub fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).expect("after 1970"),
    ))
}

/// Consul ≤1.6's key id: the ASCII bytes of the colon-hex SHA-256 of the SPKI.
pub fn consul_key_id(key: &impl PublicKeyData) -> Vec<u8> {
    colon_hex(&sha256(&key.subject_public_key_info())).into_bytes()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => {
            suite.common.hash_provider.hash(data).as_ref().to_vec()
        }
        _ => unreachable!("a TLS 1.3 suite"),
    }
}

fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(1000);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// A Consul CA root with its key.
pub struct TestCa {
    /// The root's serial (and the `<n>` of its CN).
    pub serial: u64,
    /// The trust domain in its URI SAN.
    pub trust_domain: String,
    /// The parameters, reused to cross-sign.
    pub params: CertificateParams,
    /// The CA key.
    pub key: KeyPair,
    /// The root, DER.
    pub der: CertificateDer<'static>,
    /// The root, PEM.
    pub pem: String,
}

impl TestCa {
    /// `Consul CA <serial>` for [`TRUST_DOMAIN`].
    pub fn new(serial: u64) -> Self {
        Self::with_trust_domain(serial, TRUST_DOMAIN)
    }

    /// `Consul CA <serial>` for `trust_domain`.
    pub fn with_trust_domain(serial: u64, trust_domain: &str) -> Self {
        Self::build(serial, trust_domain, true)
    }

    /// A CA of the user's own: no SPIFFE URI SAN, so it names no trust domain; its leaves
    /// are still issued in `trust_domain`.
    pub fn without_spiffe_uri(serial: u64, trust_domain: &str) -> Self {
        Self::build(serial, trust_domain, false)
    }

    fn build(serial: u64, trust_domain: &str, spiffe_uri: bool) -> Self {
        let key = KeyPair::generate().expect("P-256 key");
        let now = now();
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Consul CA {serial}"));
        params.not_before = now;
        params.not_after = now + Duration::days(3653);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        if spiffe_uri {
            params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))];
        }
        params.key_identifier_method = KeyIdMethod::PreSpecified(consul_key_id(&key));
        params.use_authority_key_identifier_extension = true;
        let cert = params.self_signed(&key).expect("self-signed root");
        Self {
            serial,
            trust_domain: trust_domain.to_owned(),
            params,
            key,
            der: cert.der().clone(),
            pem: cert.pem(),
        }
    }

    /// A CA from an existing root and its key (e.g. agent-sim's, started with a known key), to
    /// forge leaves that the real CA's key signed.
    pub fn from_pem(root_pem: &str, key_pem: &str, trust_domain: &str) -> Self {
        let key = KeyPair::from_pem(key_pem).expect("CA key PEM");
        let der = CertificateDer::pem_slice_iter(root_pem.as_bytes())
            .next()
            .expect("one certificate")
            .expect("root DER");
        // Only what issuing needs: the subject (leaves' issuer) and the key identifier.
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("root parses");
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .expect("root CN")
            .to_owned();
        let mut params = CertificateParams::default();
        // Go (and agent-sim) write the CN as a PrintableString; issuer names compare byte-wise.
        let cn = rcgen::DnValue::PrintableString(cn.as_str().try_into().expect("printable CN"));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        if let Some(ski) = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
        {
            params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
        }
        Self {
            serial: 0,
            trust_domain: trust_domain.to_owned(),
            params,
            key,
            der,
            pem: root_pem.to_owned(),
        }
    }

    /// The issuer handle rcgen signs with.
    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// The Consul-profile leaf of `service` in this CA's trust domain, valid now.
    pub fn leaf(&self, service: &str) -> Issued {
        self.issue(&LeafSpec::consul(&self.trust_domain, service))
    }

    /// A leaf as `spec` says, signed by this CA.
    pub fn issue(&self, spec: &LeafSpec) -> Issued {
        let key = KeyPair::generate().expect("P-256 key");
        let mut params = spec.params();
        // Consul ≤1.6 writes the CA's key id as the leaf's SKI (hashicorp/consul#6771).
        params.key_identifier_method = KeyIdMethod::PreSpecified(consul_key_id(&self.key));
        let cert = params.signed_by(&key, &self.issuer()).expect("signed leaf");
        Issued::new(spec, cert.der().clone(), cert.pem(), key)
    }

    /// This (old) root cross-signing `newer`, valid for Consul's 7 days.
    pub fn cross_sign(&self, newer: &TestCa) -> Intermediate {
        let now = now();
        self.cross_sign_valid(newer, now - Duration::minutes(1), now + Duration::days(7))
    }

    /// This root cross-signing `newer`, with the given validity.
    pub fn cross_sign_valid(
        &self,
        newer: &TestCa,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Intermediate {
        let mut params = newer.params.clone();
        params.serial_number = Some(SerialNumber::from(next_serial()));
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&newer.key, &self.issuer())
            .expect("cross-signed root");
        Intermediate {
            der: cert.der().clone(),
            pem: cert.pem(),
        }
    }

    /// This root as the agent lists it.
    pub fn ca_root(&self, active: bool, intermediates: &[&Intermediate]) -> CaRoot {
        let id = colon_hex(&sha256(&self.der)[..20]);
        CaRoot {
            id,
            name: "Consul CA Root Cert".to_owned(),
            serial_number: self.serial,
            signing_key_id: colon_hex(&consul_key_id(&self.key)),
            external_trust_domain: self.trust_domain.trim_end_matches(".consul").to_owned(),
            not_before: self.params.not_before,
            not_after: self.params.not_after,
            root_cert: self.pem.clone(),
            intermediate_certs: (!intermediates.is_empty())
                .then(|| intermediates.iter().map(|i| i.pem.clone()).collect()),
            active,
            private_key_type: None,
            private_key_bits: None,
            create_index: self.serial,
            modify_index: self.serial,
        }
    }
}

/// A roots list holding `cas`, the last one active, in the first one's trust domain.
pub fn roots(cas: &[&TestCa]) -> CaRootList {
    let last = cas.len().checked_sub(1).expect("at least one root");
    let roots: Vec<CaRoot> = cas
        .iter()
        .enumerate()
        .map(|(i, ca)| ca.ca_root(i == last, &[]))
        .collect();
    CaRootList {
        active_root_id: roots[last].id.clone(),
        trust_domain: cas[0].trust_domain.clone(),
        roots,
    }
}

/// What a leaf should look like; [`LeafSpec::consul`] is Consul's profile, tests bend it.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The subject CN (the service name).
    pub common_name: String,
    /// The URI SANs (Consul: exactly one service ID).
    pub uris: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// BasicConstraints CA:TRUE instead of CA:FALSE.
    pub is_ca: bool,
    /// Extended key usages.
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
}

impl LeafSpec {
    /// Consul's leaf for `service` in `trust_domain`, valid from a minute ago for 72 hours.
    pub fn consul(trust_domain: &str, service: &str) -> Self {
        let now = now();
        Self {
            common_name: service.to_owned(),
            uris: vec![service_uri(trust_domain, service)],
            not_before: now - Duration::minutes(1),
            not_after: now - Duration::minutes(1) + Duration::hours(72),
            is_ca: false,
            ekus: vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
        }
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from(next_serial()));
        params
            .distinguished_name
            .push(DnType::CommonName, self.common_name.clone());
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.is_ca = if self.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = if self.is_ca {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ]
        } else {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
                KeyUsagePurpose::DataEncipherment,
                KeyUsagePurpose::KeyAgreement,
            ]
        };
        params.extended_key_usages = self.ekus.clone();
        params.subject_alt_names = self.uris.iter().map(|u| uri_san(u)).collect();
        params.use_authority_key_identifier_extension = true;
        params
    }

    /// A self-signed certificate following this spec (no CA vouches for it).
    pub fn self_signed(&self) -> Issued {
        let key = KeyPair::generate().expect("P-256 key");
        let mut params = self.params();
        params.use_authority_key_identifier_extension = false;
        let cert = params.self_signed(&key).expect("self-signed leaf");
        Issued::new(self, cert.der().clone(), cert.pem(), key)
    }
}

/// An intermediate (cross-signed root) to present after a leaf.
#[derive(Debug, Clone)]
pub struct Intermediate {
    /// DER.
    pub der: CertificateDer<'static>,
    /// PEM.
    pub pem: String,
}

/// An issued leaf, its key and the chain presented with it.
pub struct Issued {
    /// The service name (CN).
    pub service: String,
    /// The leaf's first URI SAN, if any.
    pub uri: String,
    /// The leaf, then intermediates, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf, then intermediates, PEM.
    pub chain_pem: Vec<String>,
    /// The leaf key.
    pub key: KeyPair,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Issued {
    fn new(spec: &LeafSpec, der: CertificateDer<'static>, pem: String, key: KeyPair) -> Self {
        Self {
            service: spec.common_name.clone(),
            uri: spec.uris.first().cloned().unwrap_or_default(),
            chain: vec![der],
            chain_pem: vec![pem],
            key,
            not_before: spec.not_before,
            not_after: spec.not_after,
        }
    }

    /// The same leaf presented with `intermediate` appended to its chain.
    pub fn with_intermediate(mut self, intermediate: &Intermediate) -> Self {
        self.chain.push(intermediate.der.clone());
        self.chain_pem.push(intermediate.pem.clone());
        self
    }

    /// The leaf alone.
    pub fn end_entity(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The intermediates presented after the leaf.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.chain[1..]
    }

    /// The leaf key, DER, for a plain rustls config.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The leaf's serial as Consul writes it.
    pub fn serial(&self) -> String {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.chain[0]).expect("leaf DER");
        consul_connect_types::api::serial_hex(cert.raw_serial())
    }

    /// The chain as one PEM text (the leaf, then intermediates), as `CertPEM` holds it.
    pub fn chain_pem(&self) -> String {
        self.chain_pem
            .iter()
            .map(|p| p.trim())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    /// The leaf as the agent's leaf endpoint returns it (CertPEM = leaf + intermediates).
    pub fn leaf_cert(&self) -> LeafCert {
        let cert_pem = self.chain_pem();
        LeafCert {
            serial_number: self.serial(),
            cert_pem,
            private_key_pem: self.key.serialize_pem(),
            service: self.service.clone(),
            service_uri: self.uri.clone(),
            valid_after: self.not_before,
            valid_before: self.not_after,
            create_index: 1,
            modify_index: 1,
        }
    }
}

fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.try_into().expect("an IA5 URI"))
}
