//! The TLS layer in real handshakes over loopback TCP: what is accepted, what is refused and
//! with which error on the refusing side, rotation, authorization and resumption.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use consul_connect::api::{CaRootList, LeafCert};
use consul_connect::spiffe::ServiceId;
use consul_connect::tls::{
    client_config, client_config_with_clock, recording_refusals, server_config,
    server_config_with_clock, verify_peer, ConnectClientConfig, ExpectedServer,
    HandshakeAuthorizer, Material, MaterialCell, PeerIdentity, PeerRole, TlsError, VerifyError,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, ClientConfig, CommonState, DigitallySignedStruct, HandshakeKind,
    ProtocolVersion, ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use support::certs::{
    now, roots, service_uri, unix, Intermediate, Issued, LeafSpec, TestCa, DC, OTHER_TRUST_DOMAIN,
    TRUST_DOMAIN,
};
use support::clock::ManualClock;
use support::samples::Sample;
use time::macros::datetime;
use time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------------
// Good handshakes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mutual_handshake_both_ways_and_data_flows() {
    let ca = TestCa::new(7);
    let roots = roots(&[&ca]);
    let web_leaf = ca.leaf("web");
    let db_leaf = ca.leaf("db");
    let web = Service::new(&roots, &web_leaf);
    let db = Service::new(&roots, &db_leaf);

    for (client, server, client_leaf, server_leaf) in [
        (&web, &db, &web_leaf, &db_leaf),
        (&db, &web, &db_leaf, &web_leaf),
    ] {
        let (server_side, client_side) =
            handshake(server.server.clone(), client.dial(&server_leaf.service)).await;
        let server_side = server_side.expect("server accepts");
        let client_side = client_side.expect("client connects and exchanges data");

        let seen_by_server = server_side.peer.as_ref().expect("client identity");
        assert_eq!(seen_by_server.service_id().to_string(), client_leaf.uri);
        assert_eq!(seen_by_server.serial(), client_leaf.serial());
        let seen_by_client = client_side.peer.as_ref().expect("server identity");
        assert_eq!(seen_by_client.service_id().to_string(), server_leaf.uri);
        assert_eq!(seen_by_client.serial(), server_leaf.serial());

        for side in [&server_side, &client_side] {
            assert_eq!(side.version, Some(ProtocolVersion::TLSv1_3));
            assert_eq!(side.alpn.as_deref(), Some(&b"h2"[..]));
            assert_eq!(side.kind, Some(HandshakeKind::Full));
        }
        assert_eq!(server_side.sni, None, "the client sends no SNI");
    }
}

#[tokio::test]
async fn tls12_client_with_certificate_is_accepted() {
    let ca = TestCa::new(7);
    let roots = roots(&[&ca]);
    let db = Service::new(&roots, &ca.leaf("db"));
    let web_leaf = ca.leaf("web");

    let client = plain_client(Some(&web_leaf), &[&rustls::version::TLS12], true);
    let (server_side, client_side) = handshake(db.server.clone(), client).await;
    let server_side = server_side.expect("server accepts");
    let client_side = client_side.expect("client connects");
    assert_eq!(server_side.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(client_side.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(server_side.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(
        server_side
            .peer
            .expect("client identity")
            .service_id()
            .to_string(),
        web_leaf.uri
    );
}

#[tokio::test]
async fn http11_only_client_negotiates_http11() {
    let ca = TestCa::new(7);
    let roots = roots(&[&ca]);
    let db = Service::new(&roots, &ca.leaf("db"));
    let web_leaf = ca.leaf("web");

    let mut config = (*plain_client(Some(&web_leaf), &[&rustls::version::TLS13], true)).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (server_side, _) = handshake(db.server.clone(), Arc::new(config)).await;
    assert_eq!(
        server_side.expect("server accepts").alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
}

// ---------------------------------------------------------------------------------------------
// Clients the server must refuse, each with the specific error
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = TestCa::new(7);
    let db = Service::new(&roots(&[&ca]), &ca.leaf("db"));
    let (server_side, client_side) = handshake(
        db.server.clone(),
        plain_client(None, &[&rustls::version::TLS13], true),
    )
    .await;
    assert!(matches!(refused(server_side), VerifyError::NoCertificate));
    assert_eq!(alert(client_side), AlertDescription::CertificateRequired);
}

#[tokio::test]
async fn self_signed_certificate_with_spiffe_uri_is_refused() {
    let ca = TestCa::new(7);
    let forged = LeafSpec::consul(TRUST_DOMAIN, "web").self_signed();
    let err = refused_client(&ca, &forged).await;
    match err {
        VerifyError::UntrustedChain { peer, .. } => assert_eq!(peer, Some(forged.uri.clone())),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let ca = TestCa::new(7);
    let other = TestCa::new(7); // same name and trust domain, different key
    let err = refused_client(&ca, &other.leaf("web")).await;
    assert!(matches!(err, VerifyError::UntrustedChain { .. }), "{err:?}");
}

#[tokio::test]
async fn expired_leaf_is_refused() {
    let ca = TestCa::new(7);
    let spec = LeafSpec::consul(TRUST_DOMAIN, "web");
    // The server's clock, a day after the leaf's end.
    let clock = ManualClock::new(spec.not_after + Duration::days(1));
    let err = refused_client_at(&ca, &ca.issue(&spec), clock).await;
    match err {
        VerifyError::Expired { peer, not_after } => {
            assert_eq!(
                peer.as_deref(),
                Some(service_uri(TRUST_DOMAIN, "web").as_str())
            );
            assert_eq!(not_after, spec.not_after);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn not_yet_valid_leaf_is_refused() {
    let ca = TestCa::new(7);
    let spec = LeafSpec::consul(TRUST_DOMAIN, "web");
    // The server's clock, a day before the leaf's start.
    let clock = ManualClock::new(spec.not_before - Duration::days(1));
    let err = refused_client_at(&ca, &ca.issue(&spec), clock).await;
    match err {
        VerifyError::NotYetValid { not_before, .. } => assert_eq!(not_before, spec.not_before),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn leaf_that_is_a_ca_is_refused() {
    let ca = TestCa::new(7);
    let mut spec = LeafSpec::consul(TRUST_DOMAIN, "web");
    spec.is_ca = true;
    let err = refused_client(&ca, &ca.issue(&spec)).await;
    assert!(matches!(err, VerifyError::IsCa { .. }), "{err:?}");
}

#[tokio::test]
async fn two_uri_sans_are_refused() {
    let ca = TestCa::new(7);
    let mut spec = LeafSpec::consul(TRUST_DOMAIN, "web");
    spec.uris.push(service_uri(TRUST_DOMAIN, "admin"));
    let err = refused_client(&ca, &ca.issue(&spec)).await;
    match err {
        VerifyError::MultipleUriSans { uris } => assert_eq!(uris, spec.uris),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn missing_uri_san_is_refused() {
    let ca = TestCa::new(7);
    let mut spec = LeafSpec::consul(TRUST_DOMAIN, "web");
    spec.uris.clear();
    let err = refused_client(&ca, &ca.issue(&spec)).await;
    assert!(matches!(err, VerifyError::NoUriSan), "{err:?}");
}

#[tokio::test]
async fn non_spiffe_uri_is_refused() {
    let ca = TestCa::new(7);
    let mut spec = LeafSpec::consul(TRUST_DOMAIN, "web");
    spec.uris = vec!["https://web.service.consul/".to_owned()];
    let err = refused_client(&ca, &ca.issue(&spec)).await;
    match err {
        VerifyError::NotSpiffe { uri, .. } => assert_eq!(uri, "https://web.service.consul/"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn signing_id_uri_is_refused() {
    let ca = TestCa::new(7);
    let mut spec = LeafSpec::consul(TRUST_DOMAIN, "web");
    spec.uris = vec![format!("spiffe://{TRUST_DOMAIN}")];
    let err = refused_client(&ca, &ca.issue(&spec)).await;
    match err {
        VerifyError::NotAServiceId { id } => assert_eq!(id.to_string(), spec.uris[0]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_trust_domain_is_refused() {
    let ca = TestCa::new(7);
    // Our CA signed it, but for another cluster's trust domain.
    let spec = LeafSpec::consul(OTHER_TRUST_DOMAIN, "web");
    let err = refused_client(&ca, &ca.issue(&spec)).await;
    match err {
        VerifyError::WrongTrustDomain { id, expected } => {
            assert_eq!(id.trust_domain().as_str(), OTHER_TRUST_DOMAIN);
            assert_eq!(expected.len(), 1);
            assert_eq!(expected[0].as_str(), TRUST_DOMAIN);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn trust_domain_compares_case_insensitively() {
    let ca = TestCa::new(7);
    let db = Service::new(&roots(&[&ca]), &ca.leaf("db"));
    let spec = LeafSpec::consul(&TRUST_DOMAIN.to_uppercase(), "web");
    let client = plain_client(Some(&ca.issue(&spec)), &[&rustls::version::TLS13], true);
    let (server_side, _) = handshake(db.server.clone(), client).await;
    server_side.expect("an upper-case trust domain is the same trust domain");
}

#[tokio::test]
async fn server_only_leaf_used_as_client_is_refused() {
    let ca = TestCa::new(7);
    let mut spec = LeafSpec::consul(TRUST_DOMAIN, "web");
    spec.ekus = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = ca.issue(&spec);
    let err = refused_client(&ca, &leaf).await;
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

    // And we never publish such a leaf as our own: a service is client and server.
    let err = Material::new(&roots(&[&ca]), &leaf.leaf_cert(), UnixTime::now()).unwrap_err();
    assert!(
        matches!(&err, TlsError::LeafRejected { source, .. }
            if matches!(**source, VerifyError::BadKeyUsage { role: PeerRole::Client, .. })),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Servers the client must refuse
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_presenting_another_service_is_refused_by_the_client() {
    let ca = TestCa::new(7);
    let roots = roots(&[&ca]);
    let web = Service::new(&roots, &ca.leaf("web"));
    let api = Service::new(&roots, &ca.leaf("api"));

    let (server_side, client_side) = handshake(api.server.clone(), web.dial("db")).await;
    match refused(client_side) {
        VerifyError::WrongService { expected, got } => {
            assert_eq!(expected.service(), "db");
            assert_eq!(got.service(), "api");
        }
        other => panic!("{other:?}"),
    }
    assert!(server_side.is_err(), "the server sees the client's alert");

    // Right service, wrong datacenter or namespace.
    for expected in [
        ExpectedServer::new("api").with_datacenter("dc2"),
        ExpectedServer::new("api").with_namespace("other"),
    ] {
        let (_, client_side) = handshake(api.server.clone(), web.client.for_server(expected)).await;
        assert!(matches!(
            refused(client_side),
            VerifyError::WrongService { .. }
        ));
    }
    // Names compare case-insensitively, as Consul's check does.
    let (_, client_side) = handshake(
        api.server.clone(),
        web.client
            .for_server(ExpectedServer::new("API").with_datacenter("DC1")),
    )
    .await;
    client_side.expect("case-insensitive match");
}

#[tokio::test]
async fn server_with_certificate_from_another_ca_is_refused_by_the_client() {
    let ca = TestCa::new(7);
    let other = TestCa::new(8);
    let web = Service::new(&roots(&[&ca]), &ca.leaf("web"));
    let (_, client_side) = handshake(plain_server(&other.leaf("db")), web.dial("db")).await;
    assert!(matches!(
        refused(client_side),
        VerifyError::UntrustedChain { .. }
    ));
}

#[tokio::test]
async fn agent_server_and_gateway_identities_are_never_callers_nor_dialed_servers() {
    let ca = TestCa::new(7);
    let web = Service::new(&roots(&[&ca]), &ca.leaf("web"));
    for (uri, kind) in [
        (
            format!("spiffe://{TRUST_DOMAIN}/agent/client/dc/{DC}/id/0ab1c2d3-0000-4000-8000-000000000001"),
            "agent",
        ),
        (format!("spiffe://{TRUST_DOMAIN}/agent/server/dc/{DC}"), "server"),
        (format!("spiffe://{TRUST_DOMAIN}/gateway/mesh/dc/{DC}"), "mesh gateway"),
    ] {
        let mut spec = LeafSpec::consul(TRUST_DOMAIN, "db");
        spec.uris = vec![uri.clone()];
        let leaf = ca.issue(&spec);
        for err in [
            refused_client(&ca, &leaf).await,
            refused(handshake(plain_server(&leaf), web.dial("db")).await.1),
        ] {
            match err {
                VerifyError::NotAServiceId { id } => {
                    assert_eq!(id.to_string(), uri);
                    assert_eq!(id.kind(), kind);
                }
                other => panic!("{uri}: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CA rotation: cross-signed intermediates
// ---------------------------------------------------------------------------------------------

/// An old root, a new one, and the old one's cross-signature of the new.
struct Rotation {
    old: TestCa,
    new: TestCa,
    cross: Intermediate,
}

impl Rotation {
    fn new() -> Self {
        let old = TestCa::new(7);
        let new = TestCa::new(23);
        let cross = old.cross_sign(&new);
        Self { old, new, cross }
    }

    /// The roots list right after rotation: both roots, the new one active and carrying the
    /// cross-signed certificate.
    fn both_roots(&self) -> CaRootList {
        let mut list = roots(&[&self.old, &self.new]);
        list.roots[1] = self.new.ca_root(true, &[&self.cross]);
        list
    }
}

#[tokio::test]
async fn leaf_of_new_root_without_cross_signed_intermediate_is_refused_by_old_root_peer() {
    let r = Rotation::new();
    let db = Service::new(&roots(&[&r.old]), &r.old.leaf("db"));
    let web = Service::new(&r.both_roots(), &r.new.leaf("web")); // no intermediate
    let (server_side, _) = handshake(db.server.clone(), web.dial("db")).await;
    let err = refused(server_side);
    assert!(matches!(err, VerifyError::UntrustedChain { .. }), "{err:?}");
}

#[tokio::test]
async fn leaf_of_new_root_with_cross_signed_intermediate_is_accepted_by_old_root_peer() {
    let r = Rotation::new();
    let old_only = roots(&[&r.old]);
    let web_leaf = r.new.leaf("web").with_intermediate(&r.cross);

    // Rotated client, server that only knows the old root.
    let db = Service::new(&old_only, &r.old.leaf("db"));
    let web = Service::new(&r.both_roots(), &web_leaf);
    let (server_side, client_side) = handshake(db.server.clone(), web.dial("db")).await;
    let server_side = server_side.expect("old-root server accepts the cross-signed chain");
    client_side.expect("client accepts the old-root server");
    assert_eq!(
        server_side.peer.expect("peer").service_id().to_string(),
        web_leaf.uri
    );

    // Rotated server, client that only knows the old root.
    let api = Service::new(
        &r.both_roots(),
        &r.new.leaf("api").with_intermediate(&r.cross),
    );
    let legacy = Service::new(&old_only, &r.old.leaf("legacy"));
    let (server_side, client_side) = handshake(api.server.clone(), legacy.dial("api")).await;
    server_side.expect("rotated server accepts the old-root client");
    client_side.expect("old-root client accepts the cross-signed chain");
}

#[tokio::test]
async fn leaf_of_new_root_with_cross_signed_intermediate_is_accepted_by_new_root_peer() {
    let r = Rotation::new();
    let db = Service::new(&roots(&[&r.new]), &r.new.leaf("db"));
    let web = Service::new(
        &r.both_roots(),
        &r.new.leaf("web").with_intermediate(&r.cross),
    );
    let (server_side, client_side) = handshake(db.server.clone(), web.dial("db")).await;
    server_side.expect("new-root server accepts");
    client_side.expect("client accepts");
}

#[tokio::test]
async fn expired_cross_signed_intermediate_is_ignored_when_the_new_root_is_trusted() {
    let r = Rotation::new();
    // Consul keeps serving the 7-day cross-signature after it expired (hashicorp/consul#8681).
    let expired = r.old.cross_sign_valid(
        &r.new,
        now() - Duration::days(10),
        now() - Duration::days(3),
    );
    let web_leaf = r.new.leaf("web").with_intermediate(&expired);
    let mut both = roots(&[&r.old, &r.new]);
    both.roots[1] = r.new.ca_root(true, &[&expired]);
    let web = Service::new(&both, &web_leaf);

    for server_roots in [roots(&[&r.new]), both.clone()] {
        let db = Service::new(&server_roots, &r.new.leaf("db").with_intermediate(&expired));
        let (server_side, client_side) = handshake(db.server.clone(), web.dial("db")).await;
        server_side.expect("direct path to the new root is used");
        client_side.expect("and the same on the client side");
    }

    // A peer that only knows the old root has no valid path: refused, and the error blames
    // the intermediate, not the (valid) leaf.
    let db = Service::new(&roots(&[&r.old]), &r.old.leaf("db"));
    let (server_side, _) = handshake(db.server.clone(), web.dial("db")).await;
    match refused(server_side) {
        VerifyError::UntrustedChain { reason, .. } => {
            assert!(reason.contains("intermediate"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Rotation through the cell
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rotation_by_store_applies_to_the_next_handshake_and_spares_open_connections() {
    let r = Rotation::new();
    let old_only = roots(&[&r.old]);
    let db = Service::new(&old_only, &r.old.leaf("db"));
    let web = Service::new(&old_only, &r.old.leaf("web"));
    let server = EchoServer::start(db.server.clone()).await;

    let (mut first, first_side) = dial(web.dial("db"), server.addr).await.expect("first dial");
    let first_serial = first_side.peer.expect("peer").serial().to_owned();
    assert_eq!(first_serial, db.cell.load().expect("material").serial());

    // The roots watch fires: both services trust both roots before any new leaf is shown.
    for service in [&db, &web] {
        let current = service.cell.load().expect("material");
        service.cell.store(
            current
                .with_roots(&r.both_roots(), UnixTime::now())
                .expect("same leaf, new roots"),
        );
    }
    // Then db's leaf watch delivers a leaf of the new root, presented with the cross-sign.
    let new_leaf = r.new.leaf("db").with_intermediate(&r.cross);
    let current = db.cell.load().expect("material");
    db.cell.store(
        current
            .with_leaf(&new_leaf.leaf_cert(), UnixTime::now())
            .expect("new leaf verifies"),
    );

    let (mut second, second_side) = dial(web.dial("db"), server.addr)
        .await
        .expect("second dial");
    assert_eq!(second_side.peer.expect("peer").serial(), new_leaf.serial());
    assert_ne!(first_serial, new_leaf.serial());

    // Same ServerConfig, same ClientConfig source: no rebuild was needed. The first
    // connection is untouched by the rotation.
    echo(&mut first, b"still open after rotation")
        .await
        .expect("old connection");
    echo(&mut second, b"new connection")
        .await
        .expect("new connection");

    // A service that never saw the new roots still accepts db's new leaf (cross-signed).
    let legacy = Service::new(&old_only, &r.old.leaf("legacy"));
    dial(legacy.dial("db"), server.addr)
        .await
        .expect("old-root client");
}

// ---------------------------------------------------------------------------------------------
// Material
// ---------------------------------------------------------------------------------------------

#[test]
fn material_refuses_a_leaf_that_does_not_chain_to_the_roots() {
    let ca = TestCa::new(7);
    let other = TestCa::new(8);
    let err = Material::new(
        &roots(&[&ca]),
        &other.leaf("web").leaf_cert(),
        UnixTime::now(),
    )
    .unwrap_err();
    match err {
        TlsError::LeafRejected {
            service, source, ..
        } => {
            assert_eq!(service, "web");
            assert!(
                matches!(*source, VerifyError::UntrustedChain { .. }),
                "{source:?}"
            );
        }
        other => panic!("{other:?}"),
    }

    // New roots that no longer vouch for the current leaf are refused too, and the current
    // material stays usable.
    let material = Material::new(&roots(&[&ca]), &ca.leaf("web").leaf_cert(), UnixTime::now())
        .expect("good material");
    let err = material
        .with_roots(&roots(&[&other]), UnixTime::now())
        .unwrap_err();
    assert!(matches!(err, TlsError::LeafRejected { .. }), "{err:?}");
    assert_eq!(material.service_id().service(), "web");
}

#[test]
fn material_refuses_a_key_that_does_not_match_the_leaf() {
    let ca = TestCa::new(7);
    let mut leaf = ca.leaf("web").leaf_cert();
    leaf.private_key_pem = ca.leaf("web").leaf_cert().private_key_pem;
    let err = Material::new(&roots(&[&ca]), &leaf, UnixTime::now()).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn material_refuses_empty_or_broken_input() {
    let ca = TestCa::new(7);
    let good_roots = roots(&[&ca]);
    let good_leaf = ca.leaf("web").leaf_cert();
    let now = UnixTime::now();

    let mut no_roots = good_roots.clone();
    no_roots.roots.clear();
    assert!(matches!(
        Material::new(&no_roots, &good_leaf, now),
        Err(TlsError::NoRoots)
    ));

    let mut bad_root = good_roots.clone();
    bad_root.roots[0].root_cert = "not a certificate".to_owned();
    assert!(matches!(
        Material::new(&bad_root, &good_leaf, now),
        Err(TlsError::BadRoot { .. })
    ));

    let leaf = LeafCert {
        cert_pem: String::new(),
        ..good_leaf.clone()
    };
    assert!(matches!(
        Material::new(&good_roots, &leaf, now),
        Err(TlsError::BadLeafPem { .. })
    ));

    let leaf = LeafCert {
        private_key_pem: String::new(),
        ..good_leaf.clone()
    };
    assert!(matches!(
        Material::new(&good_roots, &leaf, now),
        Err(TlsError::BadPrivateKey { .. })
    ));
}

#[test]
fn material_debug_shows_no_key_material() {
    let ca = TestCa::new(7);
    let leaf = ca.leaf("web").leaf_cert();
    let material = Material::new(&roots(&[&ca]), &leaf, UnixTime::now()).expect("material");
    let cell = MaterialCell::from(material);
    let debug = format!("{cell:?}");
    assert!(debug.contains("web"), "{debug}");
    let key_body: String = leaf
        .private_key_pem
        .lines()
        .nth(1)
        .expect("PEM body")
        .to_owned();
    assert!(!debug.contains(&key_body), "{debug}");
    assert!(!debug.to_ascii_lowercase().contains("private"), "{debug}");
}

// ---------------------------------------------------------------------------------------------
// Authorization inside the handshake
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn handshake_authorizer_denial_alerts_the_client_and_names_the_peer_on_the_server() {
    let ca = TestCa::new(7);
    let roots = roots(&[&ca]);
    let calls: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen = calls.clone();
    let hook: Arc<dyn HandshakeAuthorizer> = Arc::new(move |peer: &ServiceId, serial: &str| {
        seen.lock()
            .expect("lock")
            .push((peer.service().to_owned(), serial.to_owned()));
        if peer.service() == "web" {
            Err("denied by intention web => db (deny)".to_owned())
        } else {
            Ok(())
        }
    });
    let db = Service::with_authorizer(&roots, &ca.leaf("db"), Some(hook));
    let web_leaf = ca.leaf("web");
    let web = Service::new(&roots, &web_leaf);
    let api_leaf = ca.leaf("api");
    let api = Service::new(&roots, &api_leaf);

    // TLS 1.3: the client learns of the refusal from the alert after its Finished. A deny is
    // `access_denied` (issue #16), not a certificate problem.
    let (server_side, client_side) = handshake(db.server.clone(), web.dial("db")).await;
    match refused(server_side) {
        VerifyError::Unauthorized { peer, reason } => {
            assert_eq!(peer.to_string(), web_leaf.uri);
            assert!(reason.contains("denied by intention"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(alert(client_side), AlertDescription::AccessDenied);

    // TLS 1.2: the handshake itself fails on the client.
    let tls12 = plain_client(Some(&web_leaf), &[&rustls::version::TLS12], true);
    let (server_side, client_side) = handshake(db.server.clone(), tls12).await;
    assert!(matches!(
        refused(server_side),
        VerifyError::Unauthorized { .. }
    ));
    assert_eq!(alert(client_side), AlertDescription::AccessDenied);

    // Allowed clients pass, and the hook sees identity and serial.
    let (server_side, client_side) = handshake(db.server.clone(), api.dial("db")).await;
    server_side.expect("api is allowed");
    client_side.expect("api is allowed");
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0], ("web".to_owned(), web_leaf.serial()));
    assert_eq!(calls[2], ("api".to_owned(), api_leaf.serial()));
}

// ---------------------------------------------------------------------------------------------
// No session resumption
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_are_never_resumed() {
    let ca = TestCa::new(7);
    let roots = roots(&[&ca]);
    let db_leaf = ca.leaf("db");
    let web_leaf = ca.leaf("web");
    let db = Service::new(&roots, &db_leaf);
    let web = Service::new(&roots, &web_leaf);

    // Control: plain rustls on both sides resumes, so the observation below is meaningful.
    let resuming_server = plain_server(&db_leaf);
    let resuming_client = plain_client(Some(&web_leaf), &[&rustls::version::TLS13], false);
    assert_eq!(
        two_handshake_kinds(resuming_server.clone(), resuming_client.clone()).await,
        [HandshakeKind::Full, HandshakeKind::Resumed]
    );

    // Ours on both sides; ours against a resuming peer on either side.
    let config = web.dial("db");
    assert_eq!(
        two_handshake_kinds(db.server.clone(), config.clone()).await,
        [HandshakeKind::Full, HandshakeKind::Full]
    );
    assert_eq!(
        two_handshake_kinds(resuming_server, config).await,
        [HandshakeKind::Full, HandshakeKind::Full],
        "our client does not resume"
    );
    assert_eq!(
        two_handshake_kinds(db.server.clone(), resuming_client).await,
        [HandshakeKind::Full, HandshakeKind::Full],
        "our server does not resume"
    );
}

/// Two connections from the same client configuration; the client's view of each.
async fn two_handshake_kinds(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> [HandshakeKind; 2] {
    let mut kinds = Vec::new();
    let echo_server = EchoServer::start(server).await;
    for _ in 0..2 {
        let (mut stream, side) = dial(client.clone(), echo_server.addr).await.expect("dial");
        echo(&mut stream, b"x").await.expect("echo");
        kinds.push(side.kind.expect("handshake done"));
    }
    [kinds[0], kinds[1]]
}

// ---------------------------------------------------------------------------------------------
// Real Consul 1.4.5 certificates
// ---------------------------------------------------------------------------------------------

#[test]
fn real_consul_1_4_5_certificates_verify() {
    // The captures are from 2026-11-25; their leaves are valid until 2026-11-28 20:36.
    let now = unix(datetime!(2026-11-26 12:00 UTC));
    let roots1: CaRootList = sample_json("04_agent_ca_roots.http");
    let leaf1: LeafCert = sample_json("07_agent_leaf_web.http");
    let material = Material::new(&roots1, &leaf1, now).expect("real leaf with ASCII key ids");
    assert_eq!(material.service_id().to_string(), leaf1.service_uri);
    assert_eq!(material.serial(), "08");
    assert_eq!(material.serial(), leaf1.serial_number);
    assert_eq!(material.not_after(), leaf1.valid_before);
    assert_eq!(
        material.trust_domains()[0].as_str(),
        "678277b4-c121-fe15-9eff-637834838f87.consul"
    );

    let web = pem_chain("web.pem");
    for role in [PeerRole::Client, PeerRole::Server] {
        let id = verify_peer(&material, &web[0], &[], now, role).expect("web verifies");
        assert_eq!(id.service(), "web");
    }
    let later = unix(datetime!(2026-11-29 00:00 UTC));
    assert!(matches!(
        verify_peer(&material, &web[0], &[], later, PeerRole::Client),
        Err(VerifyError::Expired { .. })
    ));
    let earlier = unix(datetime!(2026-11-25 00:00 UTC));
    assert!(matches!(
        verify_peer(&material, &web[0], &[], earlier, PeerRole::Client),
        Err(VerifyError::NotYetValid { .. })
    ));
    // A self-signed CA certificate claiming to be web (from the captures' foreign CA).
    let foreign = pem_chain("foreign.pem");
    assert!(matches!(
        verify_peer(&material, &foreign[0], &[], now, PeerRole::Client),
        Err(VerifyError::IsCa { .. })
    ));

    // After the real rotation: leaf of root 23 + cross-signed by root 7.
    let web2 = pem_chain("web2.pem");
    assert_eq!(web2.len(), 2, "leaf and cross-signed intermediate");
    verify_peer(&material, &web2[0], &web2[1..], now, PeerRole::Client)
        .expect("root-7-only peer accepts the cross-signed chain");
    assert!(matches!(
        verify_peer(&material, &web2[0], &[], now, PeerRole::Client),
        Err(VerifyError::UntrustedChain { .. })
    ));

    let roots2: CaRootList = sample_json("42_agent_ca_roots_after_rotation.http");
    let leaf2: LeafCert = sample_json("45_agent_leaf_web_after_rotation.http");
    let rotated = Material::new(&roots2, &leaf2, now).expect("rotated material");
    assert_eq!(rotated.leaf_chain().len(), 2);
    assert_eq!(rotated.root_certs().len(), 2);
    verify_peer(&rotated, &web2[0], &[], now, PeerRole::Server).expect("direct path to root 23");
    verify_peer(&rotated, &web[0], &[], now, PeerRole::Server).expect("old leaf still trusted");
    let db2 = pem_chain("db2.pem");
    let id = verify_peer(&rotated, &db2[0], &db2[1..], now, PeerRole::Server).expect("db2");
    assert_eq!(id.service(), "db");
    // The old material keeps its leaf under the new roots.
    material
        .with_roots(&roots2, now)
        .expect("root 7 is still listed");
}

fn sample_json<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(&Sample::load(name).body).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn pem_chain(name: &str) -> Vec<CertificateDer<'static>> {
    let path = Sample::dir().join(name);
    let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

const TIMEOUT: StdDuration = StdDuration::from_secs(10);
const GREETING: &[u8; 4] = b"helo";

/// One Connect service: its cell and the configurations built once over it.
struct Service {
    cell: Arc<MaterialCell>,
    server: Arc<ServerConfig>,
    client: ConnectClientConfig,
}

impl Service {
    fn new(roots: &CaRootList, leaf: &Issued) -> Self {
        Self::with_authorizer(roots, leaf, None)
    }

    fn with_authorizer(
        roots: &CaRootList,
        leaf: &Issued,
        authorizer: Option<Arc<dyn HandshakeAuthorizer>>,
    ) -> Self {
        let material =
            Material::new(roots, &leaf.leaf_cert(), UnixTime::now()).expect("valid material");
        let cell = Arc::new(MaterialCell::from(material));
        Self {
            server: server_config(cell.clone(), authorizer),
            client: client_config(cell.clone()),
            cell,
        }
    }

    /// A service whose handshakes check certificates at the time `clock` shows.
    fn with_clock(roots: &CaRootList, leaf: &Issued, clock: Arc<ManualClock>) -> Self {
        let material =
            Material::new(roots, &leaf.leaf_cert(), UnixTime::now()).expect("valid material");
        let cell = Arc::new(MaterialCell::from(material));
        Self {
            server: server_config_with_clock(cell.clone(), None, clock.clone()),
            client: client_config_with_clock(cell.clone(), clock),
            cell,
        }
    }

    /// The configuration to dial `service` in dc1.
    fn dial(&self, service: &str) -> Arc<ClientConfig> {
        self.client
            .for_server(ExpectedServer::new(service).with_datacenter(DC))
    }
}

/// What one side saw of a finished handshake.
#[derive(Debug)]
struct Side {
    peer: Option<PeerIdentity>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    kind: Option<HandshakeKind>,
    sni: Option<String>,
}

impl Side {
    fn of(conn: &CommonState, sni: Option<&str>) -> Self {
        Self {
            peer: consul_connect::tls::peer_identity(conn),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version(),
            kind: conn.handshake_kind(),
            sni: sni.map(str::to_owned),
        }
    }
}

/// A TLS echo server: greets each client after the handshake, then echoes. Reports each
/// handshake's outcome.
struct EchoServer {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<io::Result<Side>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    async fn start(config: Arc<ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(config);
        let (tx, accepted) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut tls = match recording_refusals(acceptor.accept(tcp)).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let conn = tls.get_ref().1;
                    let _ = tx.send(Ok(Side::of(conn, conn.server_name())));
                    if tls.write_all(GREETING).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    async fn next(&mut self) -> io::Result<Side> {
        tokio::time::timeout(TIMEOUT, self.accepted.recv())
            .await
            .expect("server handshake timed out")
            .expect("server task alive")
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects and waits for the server's greeting, so that a refusal by the server (which in
/// TLS 1.3 arrives after the client's Finished) shows up here as the alert.
async fn dial(config: Arc<ClientConfig>, addr: SocketAddr) -> io::Result<(ClientStream, Side)> {
    tokio::time::timeout(TIMEOUT, async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let mut greeting = [0u8; GREETING.len()];
        tls.read_exact(&mut greeting).await?;
        assert_eq!(&greeting, GREETING);
        let side = Side::of(tls.get_ref().1, None);
        Ok((tls, side))
    })
    .await
    .expect("client handshake timed out")
}

async fn echo(stream: &mut ClientStream, message: &[u8]) -> io::Result<()> {
    stream.write_all(message).await?;
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut back))
        .await
        .expect("echo timed out")?;
    assert_eq!(back, message);
    Ok(())
}

/// One connection: (server outcome, client outcome including a round trip of data).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (io::Result<Side>, io::Result<Side>) {
    let mut echo_server = EchoServer::start(server).await;
    let client_side = match dial(client, echo_server.addr).await {
        Ok((mut stream, side)) => echo(&mut stream, b"ping").await.map(|()| side),
        Err(e) => Err(e),
    };
    (echo_server.next().await, client_side)
}

/// Dials our `db` server (trusting `ca`) with a plain client presenting `leaf`; returns the
/// server's verification error.
async fn refused_client(ca: &TestCa, leaf: &Issued) -> VerifyError {
    refused_by(Service::new(&roots(&[ca]), &ca.leaf("db")), leaf).await
}

/// [`refused_client`] by a server whose clock shows what `clock` does.
async fn refused_client_at(ca: &TestCa, leaf: &Issued, clock: Arc<ManualClock>) -> VerifyError {
    refused_by(
        Service::with_clock(&roots(&[ca]), &ca.leaf("db"), clock),
        leaf,
    )
    .await
}

async fn refused_by(db: Service, leaf: &Issued) -> VerifyError {
    let client = plain_client(Some(leaf), &[&rustls::version::TLS13], true);
    let (server_side, client_side) = handshake(db.server.clone(), client).await;
    assert_eq!(alert(client_side), AlertDescription::CertificateUnknown);
    refused(server_side)
}

fn refused(outcome: io::Result<Side>) -> VerifyError {
    let err = outcome.expect_err("the handshake should have been refused");
    VerifyError::from_io(&err).unwrap_or_else(|| panic!("not a verification error: {err:?}"))
}

fn alert(outcome: io::Result<Side>) -> AlertDescription {
    let err = outcome.expect_err("the peer should have sent an alert");
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => *alert,
        _ => panic!("expected a TLS alert, got {err:?}"),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A plain rustls client (a peer we do not control): presents `leaf` if given, accepts any
/// server certificate, resumes sessions unless `no_resumption`.
fn plain_client(
    leaf: Option<&Issued>,
    versions: &[&'static SupportedProtocolVersion],
    no_resumption: bool,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.private_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    if no_resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// A plain rustls server presenting `leaf`, no client auth, default resumption.
fn plain_server(leaf: &Issued) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.private_key())
        .expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Test peers only: trusts any server certificate (signatures are still checked).
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
