//! Arbitrary bytes through the peer-certificate path: `verify_peer` (which reads the leaf's
//! facts with `CertFacts::parse` before anything else), `verify_server` and `verify_client`,
//! against a fixed `Material`.
//!
//! The first byte picks how the rest becomes a chain:
//! - 0: the rest is the leaf's DER;
//! - 1: the rest is a leaf and one intermediate, split at a 16-bit offset;
//! - 2: the rest is a TBSCertificate, signed here by the fixture CA, so that mutations of a real
//!   leaf's TBS get past the signature check and reach the identity checks;
//! - 3: the rest lists URI SANs (newline-separated) and flags; rcgen builds a well-formed leaf
//!   with them, signed by the CA.
//!
//! Beyond "never panics": whenever verification succeeds, an independent reading of the leaf
//! must agree that it carries exactly one URI SAN, that this URI is the returned service
//! identity in one of the roots' trust domains, and that the leaf is no CA and valid now.
#![no_main]

use consul_connect::spiffe::{ServiceId, SpiffeId};
use consul_connect::tls::{
    verify_client, verify_peer, verify_server, ExpectedServer, HandshakeAuthorizer, PeerRole,
    VerifyError,
};
use fuzz_support::{first_inner_tlv, fixture, Fixture, NOW, TRUST_DOMAIN};
use libfuzzer_sys::fuzz_target;
use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, SanType};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

fuzz_target!(
    init: {
        // `CERT_IDENTITY_SEEDS=<dir>` writes the fixture-derived seeds there (README.md).
        if let Some(dir) = std::env::var_os("CERT_IDENTITY_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
        }
    },
    |data: &[u8]| {
    let fx = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (leaf, intermediates): (Vec<u8>, Vec<Vec<u8>>) = match mode % 4 {
        0 => (rest.to_vec(), Vec::new()),
        1 => {
            if rest.len() < 2 {
                return;
            }
            let at = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let body = &rest[2..];
            let at = at.min(body.len());
            (body[..at].to_vec(), vec![body[at..].to_vec()])
        }
        2 => (fx.sign_tbs(rest), Vec::new()),
        _ => match built_leaf(fx, mode, rest) {
            Some(der) => (der, Vec::new()),
            None => return,
        },
    };
    check(fx, &leaf, &intermediates);
});

/// One seed per mode from the fixture: its leaf (alone, then with the root as intermediate),
/// the leaf's TBS for mode 2, and URI lists for mode 3.
fn write_seeds(dir: &std::path::Path) {
    let fx = fixture();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    seeds.push([&[0u8][..], &fx.leaf_der].concat());
    let len = u16::try_from(fx.leaf_der.len()).expect("small leaf");
    seeds.push([&[1u8][..], &len.to_be_bytes(), &fx.leaf_der, &fx.ca_der].concat());
    let tbs = first_inner_tlv(&fx.leaf_der).expect("leaf TBS");
    seeds.push([&[2u8][..], tbs].concat());
    let uri = format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web");
    for mode in [
        3u8,
        3 | 0x04,
        3 | 0x08,
        3 | 0x10,
        3 | 0x18,
        3 | 0x20,
        3 | 0x40,
    ] {
        seeds.push([&[mode][..], uri.as_bytes()].concat());
    }
    seeds.push([&[3u8][..], format!("{uri}\n{uri}").as_bytes()].concat());
    seeds.push(
        [
            &[3u8][..],
            b"spiffe://other.consul/ns/default/dc/dc1/svc/web",
        ]
        .concat(),
    );
    seeds.push([&[3u8][..], format!("spiffe://{TRUST_DOMAIN}").as_bytes()].concat());
    seeds.push([&[3u8][..], b"https://example.com/x"].concat());
    seeds.push(vec![3u8]);
    std::fs::create_dir_all(dir).expect("seed dir");
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("fixture-{i:02}")), seed).expect("write seed");
    }
}

/// Mode 3: flags in the mode byte's high bits, URI SANs in the rest.
fn built_leaf(fx: &Fixture, mode: u8, rest: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(rest).ok()?;
    let uris: Vec<&str> = if text.is_empty() {
        Vec::new()
    } else {
        text.split('\n').take(4).collect()
    };
    let mut params = fx.leaf_params(&uris)?;
    if mode & 0x04 != 0 {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    params.extended_key_usages = match (mode >> 3) & 0x03 {
        0 => vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ],
        1 => vec![ExtendedKeyUsagePurpose::ClientAuth],
        2 => vec![ExtendedKeyUsagePurpose::ServerAuth],
        _ => Vec::new(),
    };
    if mode & 0x20 != 0 {
        params
            .subject_alt_names
            .push(SanType::DnsName("web.service.consul".try_into().ok()?));
    }
    if mode & 0x40 != 0 {
        // Expired at NOW.
        params.not_after = NOW - time::Duration::days(1);
    }
    fx.issue(&params).map(|der| der.to_vec())
}

fn check(fx: &Fixture, leaf: &[u8], intermediates: &[Vec<u8>]) {
    let end_entity = CertificateDer::from(leaf);
    let inters: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|i| CertificateDer::from(i.as_slice()))
        .collect();
    let now = fx.now();
    let material = &fx.material;

    for role in [PeerRole::Client, PeerRole::Server] {
        let result = verify_peer(material, &end_entity, &inters, now, role);
        if trace() {
            // `CERT_IDENTITY_TRACE=1`: one line per input and role, to see which checks the
            // corpus reaches (README.md).
            match &result {
                Ok(id) => eprintln!("trace {role}: ok {id}"),
                Err(e) => eprintln!("trace {role}: {}", e.kind()),
            }
        }
        observe(&result);
        if let Ok(id) = &result {
            oracle(fx, leaf, id, role);
        }
    }

    let expected = ExpectedServer::new("web").with_datacenter("dc1");
    let result = verify_server(material, &end_entity, &inters, now, &expected);
    observe(&result);
    if let Ok(id) = &result {
        assert!(expected.matches(id));
        oracle(fx, leaf, id, PeerRole::Server);
    }

    let authorizer = |peer: &ServiceId, serial: &str| -> Result<(), String> {
        // Consul's colon hex: pairs of lowercase hex digits.
        assert!(
            serial
                .split(':')
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit())),
            "serial {serial:?}"
        );
        if peer.service() == "evil" {
            Err(format!("denied {peer}"))
        } else {
            Ok(())
        }
    };
    let authz: &dyn HandshakeAuthorizer = &authorizer;
    let result = verify_client(material, &end_entity, &inters, now, Some(authz));
    observe(&result);
    if let Ok(peer) = &result {
        oracle(fx, leaf, peer.service_id(), PeerRole::Client);
        let _ = format!("{peer:?} {}", peer.serial());
    }
}

fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("CERT_IDENTITY_TRACE").is_some())
}

/// Every error must format and name its kind without panicking.
fn observe<T>(result: &Result<T, VerifyError>) {
    if let Err(e) = result {
        let _ = e.to_string();
        let _ = format!("{e:?}");
        let _ = e.kind();
        let _ = std::error::Error::source(e).map(ToString::to_string);
        let back: rustls::Error = e.clone().into();
        assert!(VerifyError::from_rustls(&back).is_some());
    }
}

/// What a successful verification promises, checked with a separate reading of the leaf.
fn oracle(fx: &Fixture, leaf: &[u8], id: &ServiceId, role: PeerRole) {
    let (rest, cert) = x509_parser::parse_x509_certificate(leaf)
        .unwrap_or_else(|e| panic!("verified a leaf x509-parser cannot read: {e}"));
    assert!(rest.is_empty(), "verified a leaf with trailing data");
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(uris.len(), 1, "verified a leaf with URI SANs {uris:?}");
    match uris[0].parse::<SpiffeId>() {
        Ok(SpiffeId::Service(parsed)) => assert_eq!(&parsed, id),
        other => panic!("verified {id} from URI SAN {:?} ({other:?})", uris[0]),
    }
    assert!(
        fx.material.trust_domains().contains(id.trust_domain()),
        "verified {id} outside the roots' trust domains"
    );
    let ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    assert!(!ca, "verified a CA certificate as a leaf");
    let validity = cert.validity();
    assert!(
        validity.not_before.to_datetime() <= NOW && NOW <= validity.not_after.to_datetime(),
        "verified a leaf outside its validity"
    );
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let ok = match role {
            PeerRole::Client => eku.value.client_auth,
            PeerRole::Server => eku.value.server_auth,
        };
        assert!(ok, "verified a leaf whose EKU does not allow {role}");
    }
}
