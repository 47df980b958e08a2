//! The hot pure functions, without sockets or runtimes: SPIFFE ID parsing, reading a peer's
//! identity back from its DER leaf, chain verification, a whole mutual-TLS handshake and 1 MiB
//! of application data in memory (Connect configurations against plain rustls ones), and
//! agent-sim's leaf signing.
//!
//! Certificates come from agent-sim's own state store (its built-in CA, P-256), so they are
//! exactly what the agent serves. Intention decisions have their own bench (`intentions`).
//!
//! Run: `cargo bench --bench hot_paths` (add `-- --quick` for a fast pass).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use agent_sim::ca::{BuiltinCa, CaProvider, EcKey};
use consul_connect::api::{CaRoot, CaRootList, LeafCert};
use consul_connect::spiffe::{ServiceId, SpiffeId, TrustDomain};
use consul_connect::tls::{
    client_config, peer_identity, server_config, verify_client, verify_peer, ExpectedServer,
    Material, MaterialCell, PeerRole,
};
use consul_connect_types::api::serial_hex;
use criterion::{criterion_main, Criterion};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use support::raw_tls::{chain, raw_configs};
use time::OffsetDateTime;

mod support {
    pub mod raw_tls;
}

const CLUSTER_ID: &str = "11111111-2222-3333-4444-555555555555";
const WEB_URI: &str =
    "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web";

/// Roots and leaves from agent-sim's built-in CA, in the shapes the agent serves them.
struct Fixture {
    td: TrustDomain,
    roots: CaRootList,
    web: LeafCert,
    db: LeafCert,
    /// A `web` leaf of the CA that replaced the root in `roots`, presented with the
    /// cross-signed new root: it chains to the old root only through that intermediate.
    web_rotated: LeafCert,
}

fn fixture() -> Fixture {
    let td = TrustDomain::new(&format!("{CLUSTER_ID}.consul")).unwrap();
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let ca = BuiltinCa::new(td.clone(), EcKey::generate().unwrap(), 1, now).unwrap();
    let next = BuiltinCa::new(td.clone(), EcKey::generate().unwrap(), 2, now).unwrap();
    let cross = ca.cross_sign(next.root(), 3, now).unwrap();
    let root = ca.root();
    let roots = CaRootList {
        active_root_id: root.id.clone(),
        trust_domain: td.to_string(),
        roots: vec![CaRoot {
            id: root.id.clone(),
            name: "Consul CA Root Cert".into(),
            serial_number: root.serial,
            signing_key_id: root.signing_key_id.clone(),
            external_trust_domain: CLUSTER_ID.into(),
            not_before: root.not_before,
            not_after: root.not_after,
            root_cert: root.pem.clone(),
            intermediate_certs: None,
            active: true,
            private_key_type: None,
            private_key_bits: None,
            create_index: 1,
            modify_index: 1,
        }],
    };
    let issue = |ca: &BuiltinCa, name: &str, serial: u64, intermediate: Option<&str>| {
        let id = ServiceId::new(td.clone(), "default", "dc1", name).unwrap();
        let key = EcKey::generate().unwrap();
        let ttl = Duration::from_secs(72 * 3600);
        let mut cert_pem = ca.sign_leaf(&id, &key, serial, now, ttl).unwrap();
        if let Some(pem) = intermediate {
            cert_pem.push_str(pem);
        }
        LeafCert {
            serial_number: serial_hex(&serial.to_be_bytes()),
            cert_pem,
            private_key_pem: key.to_pem(),
            service: name.into(),
            service_uri: id.to_string(),
            valid_after: now - time::Duration::minutes(1),
            valid_before: now - time::Duration::minutes(1) + ttl,
            create_index: serial,
            modify_index: serial,
        }
    };
    let fixture = Fixture {
        web: issue(&ca, "web", 10, None),
        db: issue(&ca, "db", 11, None),
        web_rotated: issue(&next, "web", 12, Some(&cross)),
        td,
        roots,
    };
    assert_eq!(
        chain(&fixture.web_rotated).len(),
        2,
        "leaf + cross-signed root"
    );
    fixture
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn spiffe(c: &mut Criterion) {
    let mut group = c.benchmark_group("spiffe");
    group.bench_function("parse_service_id", |b| {
        b.iter(|| black_box(WEB_URI).parse::<ServiceId>().unwrap())
    });
    group.bench_function("parse_spiffe_id", |b| {
        b.iter(|| black_box(WEB_URI).parse::<SpiffeId>().unwrap())
    });
    let id: ServiceId = WEB_URI.parse().unwrap();
    group.bench_function("to_string", |b| b.iter(|| black_box(&id).to_string()));
    group.finish();
}

fn verify(c: &mut Criterion) {
    let f = fixture();
    let now = UnixTime::now();
    let material = Material::new(&f.roots, &f.db, now).unwrap();
    let web = chain(&f.web);
    let rotated = chain(&f.web_rotated);

    let mut group = c.benchmark_group("verify");
    // The whole peer check: webpki path to a root, EKU, not-a-CA, one SPIFFE URI SAN, trust
    // domain (x509-parser reads what webpki does not expose).
    group.bench_function("verify_peer/direct", |b| {
        b.iter(|| verify_peer(&material, black_box(&web[0]), &[], now, PeerRole::Client).unwrap())
    });
    group.bench_function("verify_peer/cross_signed", |b| {
        b.iter(|| {
            verify_peer(
                &material,
                black_box(&rotated[0]),
                &rotated[1..],
                now,
                PeerRole::Client,
            )
            .unwrap()
        })
    });
    let allow_web = |peer: &ServiceId, _serial: &str| {
        if peer.service() == "web" {
            Ok(())
        } else {
            Err("denied".to_owned())
        }
    };
    group.bench_function("verify_client/direct+authorizer", |b| {
        b.iter(|| verify_client(&material, black_box(&web[0]), &[], now, Some(&allow_web)).unwrap())
    });
    // Baseline: webpki's path building and signature check alone, as any mTLS server does.
    let anchors: Vec<_> = material
        .root_certs()
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned())
        .collect();
    let algs = provider().signature_verification_algorithms.all;
    // webpki alone on `chain` (leaf first), as the listener's client check would call it.
    let webpki_only = |chain: &[CertificateDer<'static>]| {
        webpki::EndEntityCert::try_from(black_box(&chain[0]))
            .unwrap()
            .verify_for_usage(
                algs,
                &anchors,
                &chain[1..],
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| ())
            .unwrap()
    };
    group.bench_function("baseline_webpki/direct", |b| {
        b.iter(|| webpki_only(&web[..1]))
    });
    group.bench_function("baseline_webpki/cross_signed", |b| {
        b.iter(|| webpki_only(&rotated))
    });
    group.finish();
}

/// Drives a client and a server connection to the end of their handshake in memory.
fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> ServerConnection {
    match connected(client, server).1 {
        Connection::Server(server) => server,
        Connection::Client(_) => unreachable!("built as a server"),
    }
}

/// A client and a server connection that finished their handshake in memory.
fn connected(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> (Connection, Connection) {
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let mut client = Connection::Client(ClientConnection::new(client, name).unwrap());
    let mut server = Connection::Server(ServerConnection::new(server).unwrap());
    let mut buf = Vec::with_capacity(8192);
    while client.is_handshaking() || server.is_handshaking() {
        transfer(&mut client, &mut server, &mut buf);
        transfer(&mut server, &mut client, &mut buf);
    }
    (client, server)
}

/// Sends 1 MiB from `client` to `server` in 64 KiB writes: encryption, record framing and
/// decryption, without sockets.
fn send_mib(client: &mut Connection, server: &mut Connection, wire: &mut Vec<u8>, out: &mut [u8]) {
    use std::io::{Read, Write};
    let chunk = [0x5au8; 64 * 1024];
    for _ in 0..16 {
        client.writer().write_all(&chunk).unwrap();
        wire.clear();
        while client.wants_write() {
            client.write_tls(wire).unwrap();
        }
        let mut rest = &wire[..];
        let mut got = 0;
        while !rest.is_empty() {
            server.read_tls(&mut rest).unwrap();
            server.process_new_packets().unwrap();
            loop {
                match server.reader().read(out) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(got, chunk.len());
    }
}

fn transfer(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).unwrap();
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
    }
    to.process_new_packets().unwrap();
}

fn tls(c: &mut Criterion) {
    let f = fixture();
    let now = UnixTime::now();
    let server_cell = Arc::new(MaterialCell::from(
        Material::new(&f.roots, &f.db, now).unwrap(),
    ));
    let client_cell = Arc::new(MaterialCell::from(
        Material::new(&f.roots, &f.web, now).unwrap(),
    ));
    let allow_web: Arc<dyn consul_connect::tls::HandshakeAuthorizer> =
        Arc::new(|peer: &ServiceId, _serial: &str| {
            if peer.service() == "web" {
                Ok(())
            } else {
                Err("denied".to_owned())
            }
        });
    let connect_server = server_config(server_cell, Some(allow_web));
    let connect_client = client_config(client_cell);
    let (raw_client, raw_server) = raw_configs(&f.roots, &f.db, &f.web);

    let mut group = c.benchmark_group("handshake_in_memory");
    group.sample_size(30);
    // Both sides of a full mutual-TLS 1.3 handshake on one thread: key exchange, two ECDSA
    // signatures, two signature checks and two chain verifications.
    group.bench_function("raw_rustls", |b| {
        b.iter(|| handshake(raw_client.clone(), raw_server.clone()))
    });
    group.bench_function("connect", |b| {
        b.iter(|| {
            // A dial derives its configuration per server, as ConnectDialer does.
            let client = connect_client.for_server(ExpectedServer::new("db"));
            handshake(client, connect_server.clone())
        })
    });
    group.finish();

    // The data path after the handshake: the same rustls connection types either way, so
    // this should not differ; it is the noise-free form of the e2e bulk figure.
    let mut group = c.benchmark_group("bulk_in_memory");
    group.throughput(criterion::Throughput::Bytes(1 << 20));
    let (mut wire, mut out) = (Vec::with_capacity(80 * 1024), vec![0u8; 64 * 1024]);
    let (mut client, mut server) = connected(raw_client.clone(), raw_server.clone());
    group.bench_function("raw_rustls_1MiB", |b| {
        b.iter(|| send_mib(&mut client, &mut server, &mut wire, &mut out))
    });
    let (mut client, mut server) = connected(
        connect_client.for_server(ExpectedServer::new("db")),
        connect_server.clone(),
    );
    group.bench_function("connect_1MiB", |b| {
        b.iter(|| send_mib(&mut client, &mut server, &mut wire, &mut out))
    });
    group.finish();

    // Reading the identity back from the DER leaf of a finished handshake (the listener does
    // this once per accepted connection).
    let server = handshake(
        connect_client.for_server(ExpectedServer::new("db")),
        connect_server,
    );
    let mut group = c.benchmark_group("identity");
    group.bench_function("peer_identity_from_der", |b| {
        b.iter(|| peer_identity(black_box(&server)).unwrap())
    });
    let leaf = server.peer_certificates().unwrap()[0].clone();
    group.bench_function("baseline_x509_parse_only", |b| {
        b.iter(|| {
            x509_parser::parse_x509_certificate(black_box(&leaf))
                .unwrap()
                .1
                .version()
        })
    });
    group.finish();
    let _ = &f.td;
}

fn signing(c: &mut Criterion) {
    let f = fixture();
    let now = OffsetDateTime::now_utc();
    let ca = BuiltinCa::new(f.td.clone(), EcKey::generate().unwrap(), 7, now).unwrap();
    let web = ServiceId::new(f.td.clone(), "default", "dc1", "web").unwrap();
    let agent_key = EcKey::generate().unwrap();
    let ttl = Duration::from_secs(72 * 3600);

    let mut group = c.benchmark_group("agent_sim_ca");
    group.bench_function("keygen_p256", |b| b.iter(|| EcKey::generate().unwrap()));
    group.bench_function("sign_leaf", |b| {
        b.iter(|| ca.sign_leaf(&web, &agent_key, 8, now, ttl).unwrap())
    });
    group.bench_function("keygen+sign_leaf", |b| {
        b.iter(|| {
            let key = EcKey::generate().unwrap();
            ca.sign_leaf(&web, &key, 8, now, ttl).unwrap()
        })
    });
    // Baseline: rcgen alone, a leaf of the same shape signed by a P-256 issuer.
    let issuer_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut issuer_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    issuer_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(issuer_params, &issuer_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let rcgen_leaf = || {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "web");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(WEB_URI).unwrap(),
        )];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params
    };
    group.bench_function("baseline_rcgen_sign", |b| {
        b.iter(|| rcgen_leaf().signed_by(&leaf_key, &issuer).unwrap().pem())
    });
    group.bench_function("baseline_rcgen_keygen+sign", |b| {
        b.iter(|| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            rcgen_leaf().signed_by(&key, &issuer).unwrap().pem()
        })
    });
    group.finish();

    // The SDK's side of a rotation: parse the PEMs, load the key, verify the leaf both ways.
    let mut group = c.benchmark_group("sdk_material");
    let unix = UnixTime::now();
    group.bench_function("material_new", |b| {
        b.iter(|| Material::new(&f.roots, black_box(&f.web), unix).unwrap())
    });
    group.finish();
}

/// Private, so the function `criterion_group!` generates needs no doc comment.
mod group {
    criterion::criterion_group! {
        name = benches;
        config = criterion::Criterion::default()
            .warm_up_time(std::time::Duration::from_millis(300))
            .measurement_time(std::time::Duration::from_secs(1));
        targets = super::spiffe, super::verify, super::tls, super::signing
    }
}
criterion_main!(group::benches);
