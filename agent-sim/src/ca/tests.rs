// A failed unwrap is a failed test, which is what a test should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lc_rs::digest;
use consul_connect_types::api::{colon_hex, serial_hex};
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use time::macros::datetime;
use time::Duration;
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    Oid, OID_SIG_ECDSA_WITH_SHA256, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{X509Name, X509Version};

use super::builtin::{CA_KEY_USAGES, LEAF_KEY_USAGES};
use super::copy::{extended_key_usages, key_usages};
use super::names::shorten_service_and_namespace;
use super::pem::pem_encode;
use super::*;

const OPENSSL: &str = "/usr/bin/openssl";
const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
/// A clock reading with a fraction of a second, which certificates drop.
const NOW: OffsetDateTime = datetime!(2026-11-25 20:36:49.750 UTC);
const NOW_WHOLE: OffsetDateTime = datetime!(2026-11-25 20:36:49 UTC);
const TTL: std::time::Duration = std::time::Duration::from_secs(72 * 3600);
/// DER prefix of every P-256 SubjectPublicKeyInfo: id-ecPublicKey, prime256v1, 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

// Captured from a real Consul 1.4.5 (tests/data/consul-1.4.5).
const SAMPLE_TD: &str = "678277b4-c121-fe15-9eff-637834838f87.consul";
const SAMPLE_ROOT1: &str = include_str!("../../../tests/data/consul-1.4.5/root1.pem");
const SAMPLE_ROOT2: &str = include_str!("../../../tests/data/consul-1.4.5/root2.pem");
const SAMPLE_ROOT2_KEY: &str = include_str!("../../../tests/data/consul-1.4.5/newca.key");
const SAMPLE_WEB_LEAF: &str = include_str!("../../../tests/data/consul-1.4.5/web.pem");
const SAMPLE_WEB_KEY: &str = include_str!("../../../tests/data/consul-1.4.5/web.key");

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
    let (a_der, b_der, cross_der) = (a.root().der.clone(), b.root().der.clone(), cert_der(&cross));
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
    let err = BuiltinCa::from_parts(td(), &ca.root().pem, EcKey::generate().unwrap()).unwrap_err();
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
    let err =
        BuiltinCa::from_parts(TrustDomain::new(SAMPLE_TD).unwrap(), SAMPLE_ROOT1, key).unwrap_err();
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
