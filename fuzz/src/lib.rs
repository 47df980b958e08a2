//! Shared fixtures for the fuzz targets: a fixed Consul-profile CA, its `Material`, and helpers
//! to turn fuzz input into certificates that chain to it.
//!
//! Everything is deterministic (fixed keys, fixed validity, fixed "now"), so a crashing input
//! replays the same way on any machine.
#![allow(clippy::unwrap_used, clippy::expect_used)] // fixtures: a failure is a broken harness

use std::sync::OnceLock;

use consul_connect::api::{CaRoot, CaRootList, LeafCert};
use consul_connect::tls::Material;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SigningKey,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::macros::datetime;
use time::OffsetDateTime;

/// The fixture's trust domain.
pub const TRUST_DOMAIN: &str = "11111111-2222-3333-4444-555555555555.consul";
/// The fixture leaf's service.
pub const SERVICE: &str = "web";

/// Test-only CA key (P-256, PKCS#8), fixed so that crashes replay identically.
const CA_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgoH8OuvEMfSEKBWBI
QW3jkuOT+1tWQEDXHa/kllmyyyuhRANCAAQk29wXkzrArJ/e3hxcqwxQZ71VSZYD
qK1TuMKooJFTzCOpxltAD24EGMTKIqmGepfllMCSTCzQ1FQxwCdxHxPG
-----END PRIVATE KEY-----
";

/// Test-only leaf key (P-256, PKCS#8).
const LEAF_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg/hHwNXoI1DKaEhHK
eBx8f4qVqsOtg+kwEZfsnbpWyA6hRANCAATKqc1NW0ps92u+s4uOZXwtUL7sDIIf
5mVbd8Q+OfWweLB7fn2FWRBRn3xwjDikrzlGC8OD6iRPgLokKhUurUS8
-----END PRIVATE KEY-----
";

const CA_NOT_BEFORE: OffsetDateTime = datetime!(2020-01-01 00:00 UTC);
const CA_NOT_AFTER: OffsetDateTime = datetime!(2050-01-01 00:00 UTC);
/// Validity of the fixture leaf and of leaves built from fuzz input.
pub const LEAF_NOT_BEFORE: OffsetDateTime = datetime!(2024-01-01 00:00 UTC);
/// See [`LEAF_NOT_BEFORE`].
pub const LEAF_NOT_AFTER: OffsetDateTime = datetime!(2034-01-01 00:00 UTC);
/// The instant every verification runs at.
pub const NOW: OffsetDateTime = datetime!(2025-06-01 12:00 UTC);

/// The CA, its material and a good leaf, built once per process.
pub struct Fixture {
    /// CA parameters (the issuer of every leaf).
    pub ca_params: CertificateParams,
    /// CA key.
    pub ca_key: KeyPair,
    /// Leaf key (every fuzz-built leaf uses it).
    pub leaf_key: KeyPair,
    /// The CA root, DER.
    pub ca_der: CertificateDer<'static>,
    /// A good Consul-profile leaf for [`SERVICE`], DER.
    pub leaf_der: CertificateDer<'static>,
    /// The material the SDK verifies peers with.
    pub material: Material,
}

impl Fixture {
    /// `NOW` as rustls time.
    pub fn now(&self) -> UnixTime {
        unix(NOW)
    }

    /// The issuer handle rcgen signs with.
    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.ca_params, &self.ca_key)
    }

    /// A certificate whose TBSCertificate is `tbs` exactly as given, signed by the CA with
    /// ECDSA P-256/SHA-256 (so webpki accepts the signature whatever the TBS holds).
    pub fn sign_tbs(&self, tbs: &[u8]) -> Vec<u8> {
        let sig = self.ca_key.sign(tbs).expect("ECDSA signing");
        let mut bits = Vec::with_capacity(sig.len() + 1);
        bits.push(0); // no unused bits
        bits.extend_from_slice(&sig);
        let mut body = tbs.to_vec();
        body.extend_from_slice(&ECDSA_SHA256_ALG_ID);
        body.extend_from_slice(&tlv(0x03, &bits));
        tlv(0x30, &body)
    }

    /// Leaf parameters in Consul's profile for `uris`, valid at [`NOW`].
    pub fn leaf_params(&self, uris: &[&str]) -> Option<CertificateParams> {
        leaf_params(uris)
    }

    /// Signs `params` with the CA for the fixture leaf key.
    pub fn issue(&self, params: &CertificateParams) -> Option<CertificateDer<'static>> {
        params
            .signed_by(&self.leaf_key, &self.issuer())
            .ok()
            .map(|c| c.der().clone())
    }
}

/// Leaf parameters in Consul's profile for `uris`, valid at [`NOW`]; `None` if a URI is not
/// ASCII (rcgen writes URIs as IA5String).
pub fn leaf_params(uris: &[&str]) -> Option<CertificateParams> {
    {
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from(8u64));
        params
            .distinguished_name
            .push(DnType::CommonName, SERVICE.to_owned());
        params.not_before = LEAF_NOT_BEFORE;
        params.not_after = LEAF_NOT_AFTER;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DataEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().ok()?));
        }
        Some(params)
    }
}

/// The process-wide fixture.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

fn build() -> Fixture {
    let ca_key = KeyPair::from_pem(CA_KEY_PEM).expect("CA key");
    let leaf_key = KeyPair::from_pem(LEAF_KEY_PEM).expect("leaf key");
    let mut ca_params = CertificateParams::default();
    ca_params.serial_number = Some(SerialNumber::from(7u64));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Consul CA 7");
    ca_params.not_before = CA_NOT_BEFORE;
    ca_params.not_after = CA_NOT_AFTER;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    ca_params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{TRUST_DOMAIN}")
            .try_into()
            .expect("ascii"),
    )];
    let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");

    let uri = format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{SERVICE}");
    let params = leaf_params(&[&uri]).expect("ascii uri");
    let leaf = params
        .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
        .expect("leaf");

    let roots = CaRootList {
        active_root_id: "root".to_owned(),
        trust_domain: TRUST_DOMAIN.to_owned(),
        roots: vec![CaRoot {
            id: "root".to_owned(),
            name: "Consul CA Root Cert".to_owned(),
            serial_number: 7,
            signing_key_id: String::new(),
            external_trust_domain: "11111111-2222-3333-4444-555555555555".to_owned(),
            not_before: CA_NOT_BEFORE,
            not_after: CA_NOT_AFTER,
            root_cert: ca.pem(),
            intermediate_certs: None,
            active: true,
            private_key_type: None,
            private_key_bits: None,
            create_index: 1,
            modify_index: 1,
        }],
    };
    let leaf_cert = LeafCert {
        serial_number: "08".to_owned(),
        cert_pem: leaf.pem(),
        private_key_pem: LEAF_KEY_PEM.to_owned(),
        service: SERVICE.to_owned(),
        service_uri: uri,
        valid_after: LEAF_NOT_BEFORE,
        valid_before: LEAF_NOT_AFTER,
        create_index: 1,
        modify_index: 1,
    };
    let material = Material::new(&roots, &leaf_cert, unix(NOW)).expect("fixture material");
    Fixture {
        ca_der: ca.der().clone(),
        leaf_der: leaf.der().clone(),
        ca_params,
        ca_key,
        leaf_key,
        material,
    }
}

/// `t` as rustls time.
pub fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).expect("after 1970"),
    ))
}

/// AlgorithmIdentifier ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters.
const ECDSA_SHA256_ALG_ID: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// A DER TLV with a definite length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The first TLV inside the outer SEQUENCE of `der` (for a certificate: its TBSCertificate).
pub fn first_inner_tlv(der: &[u8]) -> Option<&[u8]> {
    let (_, body) = split_tlv(der)?;
    let (tlv_len, _) = split_tlv(body)?;
    body.get(..tlv_len)
}

/// (total length of the TLV at the start of `der`, its content).
fn split_tlv(der: &[u8]) -> Option<(usize, &[u8])> {
    let first = *der.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in der.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let content = der.get(header..header + len)?;
    Some((header + len, content))
}
