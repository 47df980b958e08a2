//! Identity sources apart from the agent: `Material` from PEM and DER, and services that run
//! from certificate files (no agent), reload them while serving, keep the last good material on
//! bad files, and check validity against an injected clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consul_connect::authz::{AuthzError, Decision};
use consul_connect::files::{CertificateFiles, FilesError};
use consul_connect::listener::Rejection;
use consul_connect::service::{BuildError, Status};
use consul_connect::spiffe::ServiceId;
use consul_connect::tls::{verify_peer, Material, PeerRole, TlsError, VerifyError};
use consul_connect::{AgentClient, Authorizer, ConnectListener, ConnectService, StaticResolver};
use consul_connect_types::api::colon_hex;
use rustls::pki_types::UnixTime;
use support::agent::temp_dir;
use support::certs::{
    now, roots, sha256, unix, Issued, LeafSpec, TestCa, OTHER_TRUST_DOMAIN, TRUST_DOMAIN,
};
use support::clock::ManualClock;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;

const POLL: Duration = Duration::from_millis(20);
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Material from PEM and DER
// ---------------------------------------------------------------------------------------------

#[test]
fn material_from_pem_and_der_equals_the_consul_form() {
    let ca = TestCa::new(7);
    let web = ca.leaf("web");
    let at = UnixTime::now();
    let consul = Material::new(&roots(&[&ca]), &web.leaf_cert(), at).unwrap();
    let pem = Material::from_pem(&ca.pem, &web.chain_pem(), &web.key.serialize_pem(), at).unwrap();
    let der = Material::from_der(
        vec![ca.der.clone()],
        web.chain.clone(),
        web.private_key(),
        at,
    )
    .unwrap();
    for m in [&pem, &der] {
        assert_eq!(m.service_id(), consul.service_id());
        assert_eq!(m.serial(), consul.serial());
        assert_eq!(m.leaf_chain(), consul.leaf_chain());
        assert_eq!(m.root_certs(), consul.root_certs());
        assert_eq!(m.trust_domains(), consul.trust_domains());
        assert_eq!(m.trust_domains()[0].as_str(), TRUST_DOMAIN);
    }
    // The key never shows.
    let debug = format!("{pem:?}");
    let key_line = web.key.serialize_pem().lines().nth(1).unwrap().to_owned();
    assert!(!debug.contains(&key_line), "{debug}");
}

#[test]
fn material_from_pem_takes_several_roots_and_an_intermediate() {
    let old = TestCa::new(7);
    let new = TestCa::new(8);
    let cross = old.cross_sign(&new);
    let web = new.leaf("web").with_intermediate(&cross);
    let bundle = format!("{}{}", old.pem, new.pem);
    let m = Material::from_pem(
        &bundle,
        &web.chain_pem(),
        &web.key.serialize_pem(),
        UnixTime::now(),
    )
    .unwrap();
    assert_eq!(m.root_certs().len(), 2);
    assert_eq!(m.leaf_chain().len(), 2, "the intermediate is presented");
    // Under the old root alone, the leaf chains through the cross-signed intermediate.
    Material::from_pem(
        &old.pem,
        &web.chain_pem(),
        &web.key.serialize_pem(),
        UnixTime::now(),
    )
    .expect("old root + cross-signed intermediate");
}

#[test]
fn a_user_ca_without_spiffe_uri_stands_for_the_leafs_trust_domain() {
    let ca = TestCa::without_spiffe_uri(70, OTHER_TRUST_DOMAIN);
    let web = ca.leaf("web");
    let m = Material::from_pem(
        &ca.pem,
        &web.chain_pem(),
        &web.key.serialize_pem(),
        UnixTime::now(),
    )
    .expect("a CA of one's own");
    let tds: Vec<_> = m.trust_domains().iter().map(|t| t.as_str()).collect();
    assert_eq!(tds, [OTHER_TRUST_DOMAIN]);
    // Peers of that CA in the same trust domain verify; in another one they do not.
    let db = ca.leaf("db");
    verify_peer(&m, db.end_entity(), &[], UnixTime::now(), PeerRole::Client).unwrap();
    let foreign = ca.issue(&LeafSpec::consul(TRUST_DOMAIN, "api"));
    let err = verify_peer(
        &m,
        foreign.end_entity(),
        &[],
        UnixTime::now(),
        PeerRole::Client,
    )
    .unwrap_err();
    assert!(
        matches!(err, VerifyError::WrongTrustDomain { .. }),
        "{err:?}"
    );

    // A Consul root names its trust domain: a leaf in another one is refused, not adopted.
    let consul_ca = TestCa::new(71);
    let stranger = consul_ca.issue(&LeafSpec::consul(OTHER_TRUST_DOMAIN, "web"));
    let err = Material::from_pem(
        &consul_ca.pem,
        &stranger.chain_pem(),
        &stranger.key.serialize_pem(),
        UnixTime::now(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, TlsError::LeafRejected { source, .. }
            if matches!(**source, VerifyError::WrongTrustDomain { .. })),
        "{err:?}"
    );
}

#[test]
fn material_from_pem_keeps_every_check() {
    let ca = TestCa::new(7);
    let web = ca.leaf("web");
    let key = web.key.serialize_pem();
    let at = UnixTime::now();
    let rejected = |err: TlsError| match err {
        TlsError::LeafRejected { source, .. } => *source,
        other => panic!("{other:?}"),
    };

    assert!(matches!(
        Material::from_pem("", &web.chain_pem(), &key, at),
        Err(TlsError::NoRoots)
    ));
    assert!(matches!(
        Material::from_pem(
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            &web.chain_pem(),
            &key,
            at
        ),
        Err(TlsError::BadRootsPem { .. })
    ));
    assert!(matches!(
        Material::from_pem(&ca.pem, "", &key, at),
        Err(TlsError::BadLeafPem { .. })
    ));
    let err = Material::from_pem(&ca.pem, &web.chain_pem(), "", at).unwrap_err();
    assert!(
        matches!(&err, TlsError::BadPrivateKey { service, reason } if service == "web" && reason.contains("no private key")),
        "{err:?}"
    );
    let other_key = ca.leaf("web").key.serialize_pem();
    assert!(matches!(
        Material::from_pem(&ca.pem, &web.chain_pem(), &other_key, at),
        Err(TlsError::KeyMismatch { service }) if service == "web"
    ));
    // Chain: another CA.
    let stranger = TestCa::new(7).leaf("web");
    let err = Material::from_pem(
        &ca.pem,
        &stranger.chain_pem(),
        &stranger.key.serialize_pem(),
        at,
    )
    .unwrap_err();
    assert!(matches!(rejected(err), VerifyError::UntrustedChain { .. }));
    // Validity at the time given.
    let later = unix(web.not_after + time::Duration::days(1));
    let err = Material::from_pem(&ca.pem, &web.chain_pem(), &key, later).unwrap_err();
    assert!(matches!(rejected(err), VerifyError::Expired { .. }));
    // Not a CA; EKU; exactly one SPIFFE service URI.
    for (what, spec) in [
        (
            "CA",
            LeafSpec {
                is_ca: true,
                ..LeafSpec::consul(TRUST_DOMAIN, "web")
            },
        ),
        (
            "EKU",
            LeafSpec {
                ekus: vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
                ..LeafSpec::consul(TRUST_DOMAIN, "web")
            },
        ),
        (
            "two URIs",
            LeafSpec {
                uris: vec![
                    support::certs::service_uri(TRUST_DOMAIN, "web"),
                    support::certs::service_uri(TRUST_DOMAIN, "db"),
                ],
                ..LeafSpec::consul(TRUST_DOMAIN, "web")
            },
        ),
        (
            "no URI",
            LeafSpec {
                uris: vec![],
                ..LeafSpec::consul(TRUST_DOMAIN, "web")
            },
        ),
    ] {
        let leaf = ca.issue(&spec);
        let err = Material::from_pem(&ca.pem, &leaf.chain_pem(), &leaf.key.serialize_pem(), at)
            .expect_err(what);
        let source = rejected(err);
        let ok = match what {
            "CA" => matches!(
                source,
                VerifyError::IsCa { .. } | VerifyError::UntrustedChain { .. }
            ),
            "EKU" => matches!(
                source,
                VerifyError::UntrustedChain { .. } | VerifyError::BadKeyUsage { .. }
            ),
            "two URIs" => matches!(source, VerifyError::MultipleUriSans { .. }),
            _ => matches!(source, VerifyError::NoUriSan),
        };
        assert!(ok, "{what}: {source:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Services from certificate files
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_from_files_serves_and_dials_without_an_agent() {
    let dir = temp_dir("files-serve");
    let ca = TestCa::new(7);
    write(&dir.join("ca.pem"), &ca.pem);
    let db_files = leaf_files(&dir, &ca.leaf("db"));
    let web_files = leaf_files(&dir, &ca.leaf("web"));
    let api_files = leaf_files(&dir, &ca.leaf("api"));

    // An "agent" that would see any connection: the services must never contact it.
    let agent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    agent.set_nonblocking(true).unwrap();
    let client = AgentClient::new(&format!("http://{}", agent.local_addr().unwrap())).unwrap();

    let db = file_service("db", &db_files, Some(&client)).await;
    let web = file_service("web", &web_files, Some(&client)).await;
    let api = file_service("api", &api_files, Some(&client)).await;
    db.ready_timeout(Duration::from_millis(1))
        .await
        .expect("ready once built");
    let status = db.status();
    assert!(status.ready);
    assert_eq!(status.identity.unwrap().service(), "db");
    assert_eq!(
        status.root_ids,
        [colon_hex(&sha256(&ca.der))],
        "SHA-256 fingerprints"
    );
    assert!(status.last_error.is_none(), "{:?}", status.last_error);

    let (addr, mut rejections) = echo_server(&db).await;
    let mut conn = Conn::open(&web, addr, "db").await;
    let serial = web.status().leaf_serial.unwrap();
    assert_eq!(
        conn.ask("hi").await.unwrap(),
        format!("hi from web serial {serial}")
    );
    // The authorizer given decides: api is not allowed.
    let mut denied = Conn::open(&api, addr, "db").await;
    assert_eq!(denied.ask("hi").await, None);
    let rejection = next_rejection(&mut rejections).await;
    assert_eq!(rejection.peer.unwrap().service(), "api");

    match agent.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the agent was contacted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_service_needs_an_agent_and_says_so() {
    let dir = temp_dir("files-catalog");
    let ca = TestCa::new(7);
    write(&dir.join("ca.pem"), &ca.pem);
    let web_files = leaf_files(&dir, &ca.leaf("web"));
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = AgentClient::new(&format!("http://{port}")).unwrap();
    let web = file_service("web", &web_files, Some(&client)).await;
    let err = web.dialer().dial_service("db").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot reach the Consul agent"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_files_are_picked_up_without_restart_or_dropping_connections() {
    let dir = temp_dir("files-rotate");
    let ca1 = TestCa::new(7);
    let ca_file = dir.join("ca.pem");
    write(&ca_file, &ca1.pem);
    let db_files = leaf_files(&dir, &ca1.leaf("db"));
    let web_files = leaf_files(&dir, &ca1.leaf("web"));
    let db = file_service("db", &db_files, None).await;
    let web = file_service("web", &web_files, None).await;
    let (addr, _) = echo_server(&db).await;
    let first_serial = web.status().leaf_serial.unwrap();
    let mut first = Conn::open(&web, addr, "db").await;
    assert_eq!(
        first.ask("one").await.unwrap(),
        format!("one from web serial {first_serial}")
    );

    // A new leaf from the same CA.
    let web2 = ca1.leaf("web");
    let generation = *web.material_updates().borrow();
    write_leaf(&web_files, &web2);
    wait_for(&web, |s| {
        s.leaf_serial.as_deref() == Some(web2.serial().as_str())
    })
    .await;
    assert_eq!(
        *web.material_updates().borrow(),
        generation + 1,
        "published once"
    );
    let mut second = Conn::open(&web, addr, "db").await;
    assert_eq!(
        second.ask("two").await.unwrap(),
        format!("two from web serial {}", web2.serial())
    );
    assert_eq!(
        first.ask("still").await.unwrap(),
        format!("still from web serial {first_serial}"),
        "the open connection keeps its leaf"
    );

    // A new CA: both trusted first, then each service gets a leaf of the new one, then the
    // old CA goes.
    let ca2 = TestCa::new(8);
    write(&ca_file, &format!("{}{}", ca1.pem, ca2.pem));
    for service in [&db, &web] {
        wait_for(service, |s| s.root_ids.len() == 2).await;
    }
    let db3 = ca2.leaf("db");
    let web3 = ca2.leaf("web");
    write_leaf(&db_files, &db3);
    write_leaf(&web_files, &web3);
    wait_for(&db, |s| {
        s.leaf_serial.as_deref() == Some(db3.serial().as_str())
    })
    .await;
    wait_for(&web, |s| {
        s.leaf_serial.as_deref() == Some(web3.serial().as_str())
    })
    .await;
    write(&ca_file, &ca2.pem);
    for service in [&db, &web] {
        wait_for(service, |s| s.root_ids.len() == 1).await;
        assert!(service.status().last_error.is_none());
    }
    assert_eq!(
        web.material().unwrap().root_certs(),
        std::slice::from_ref(&ca2.der)
    );
    let mut third = Conn::open(&web, addr, "db").await;
    assert_eq!(
        third.ask("three").await.unwrap(),
        format!("three from web serial {}", web3.serial())
    );
    for (conn, serial) in [(&mut first, &first_serial), (&mut second, &web2.serial())] {
        assert_eq!(
            conn.ask("old").await.unwrap(),
            format!("old from web serial {serial}"),
            "connections opened before the CA rotation stay open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_keep_the_last_good_material_and_are_reported() {
    let dir = temp_dir("files-bad");
    let ca = TestCa::new(7);
    write(&dir.join("ca.pem"), &ca.pem);
    let start = now();
    let clock = ManualClock::new(start);
    let good = ca.leaf("web");
    let web_files = leaf_files(&dir, &good);
    let web = file_service_with(
        ConnectService::builder("web").clock(clock.clone()),
        &web_files,
    )
    .await;
    let db = file_service("db", &leaf_files(&dir, &ca.leaf("db")), None).await;
    let (addr, _) = echo_server(&db).await;
    let generation = *web.material_updates().borrow();

    // Valid now, expired at the injected clock's time once it has moved on.
    let short = ca.issue(&LeafSpec {
        not_before: start - time::Duration::minutes(1),
        not_after: start + time::Duration::hours(1),
        ..LeafSpec::consul(TRUST_DOMAIN, "web")
    });
    let other_key = ca.leaf("web");
    let stranger = TestCa::new(7).leaf("web");
    let cases: Vec<(&str, Box<dyn Fn()>, &str)> = vec![
        (
            "garbage certificate",
            Box::new(|| {
                write(
                    &web_files.cert,
                    "-----BEGIN CERTIFICATE-----\ngarbage!\n-----END CERTIFICATE-----\n",
                )
            }),
            "unreadable PEM",
        ),
        (
            "wrong key",
            Box::new(|| write(&web_files.key, &other_key.key.serialize_pem())),
            "does not match its private key",
        ),
        (
            "another CA",
            Box::new(|| write_leaf(&web_files, &stranger)),
            "does not chain to a trusted CA root",
        ),
        (
            "another service",
            Box::new(|| write_leaf(&web_files, &ca.leaf("db"))),
            "not for service \"web\"",
        ),
        (
            "expired at the clock's time",
            Box::new(|| {
                clock.set(start + time::Duration::hours(2));
                write_leaf(&web_files, &short);
            }),
            "expired",
        ),
        (
            "missing key file",
            Box::new(|| std::fs::remove_file(&web_files.key).unwrap()),
            "cannot read",
        ),
    ];
    for (what, break_files, expected) in cases {
        break_files();
        // Several files change one after the other: wait for the error of the final state.
        let status = wait_for_status(&web, |s| {
            s.last_error
                .as_ref()
                .is_some_and(|e| e.message.contains(expected))
        })
        .await;
        let error = status.last_error.unwrap();
        assert_eq!(error.source, "files", "{what}");
        assert!(
            error.message.contains(expected),
            "{what}: {}",
            error.message
        );
        assert!(status.ready, "{what}");
        assert_eq!(
            status.leaf_serial,
            Some(good.serial()),
            "{what}: the last good leaf stays"
        );
        let mut conn = Conn::open(&web, addr, "db").await;
        assert_eq!(
            conn.ask(what).await.unwrap(),
            format!("{what} from web serial {}", good.serial()),
            "{what}: still served"
        );

        // The good files again: the error clears, and the same material is not republished.
        clock.set(start);
        write_leaf(&web_files, &good);
        let status = wait_for_status(&web, |s| s.last_error.is_none()).await;
        assert_eq!(status.leaf_serial, Some(good.serial()));
        assert_eq!(
            *web.material_updates().borrow(),
            generation,
            "{what}: not republished"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_refuses_files_without_an_authorizer_or_valid_material() {
    let dir = temp_dir("files-build");
    let ca = TestCa::new(7);
    write(&dir.join("ca.pem"), &ca.pem);
    let files = leaf_files(&dir, &ca.leaf("web"));

    for builder in [
        ConnectService::builder("web"),
        ConnectService::builder("web")
            .intentions_authorizer(consul_connect::intentions::DefaultDecision::AclsDisabled),
        ConnectService::builder("web").intentions_authorizer_from_agent(),
    ] {
        let err = builder
            .certificate_files(files.certificate_files())
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BuildError::AuthorizerRequired { service } if service == "web"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("ConnectServiceBuilder::authorizer"),
            "{err}"
        );
    }

    // With one, the same files build.
    file_service("web", &files, None).await;

    // Files for another service, and unreadable files, fail the build.
    let err = ConnectService::builder("db")
        .certificate_files(files.certificate_files())
        .authorizer(allow_only("web"))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            BuildError::Files {
                source: FilesError::NotThisService { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let missing = CertificateFiles::new(dir.join("nope.pem"), &files.cert, &files.key);
    let err = ConnectService::builder("web")
        .certificate_files(missing)
        .authorizer(allow_only("web"))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::Files { source: FilesError::Read { path, .. }, .. } if path.ends_with("nope.pem")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_service_and_its_errors_show_no_key() {
    let dir = temp_dir("files-secrets");
    let ca = TestCa::new(7);
    write(&dir.join("ca.pem"), &ca.pem);
    let web = ca.leaf("web");
    let files = leaf_files(&dir, &web);
    let builder = ConnectService::builder("web")
        .certificate_files(files.certificate_files())
        .clock(ManualClock::new(now()))
        .authorizer(allow_only("web"));
    let mut shown = vec![format!("{builder:?}")];
    let service = builder.build().await.unwrap();
    shown.push(format!("{service:?}"));
    shown.push(format!("{:?}", service.material().unwrap()));
    // A key that does not match: the error, in the status and from build, names no key.
    let other = ca.leaf("web").key.serialize_pem();
    write(&files.key, &other);
    let status = wait_for_status(&service, |s| s.last_error.is_some()).await;
    shown.push(format!("{status:?}"));
    let err = ConnectService::builder("web")
        .certificate_files(files.certificate_files())
        .authorizer(allow_only("web"))
        .build()
        .await
        .unwrap_err();
    shown.push(format!("{err:?}"));
    shown.push(err.to_string());
    assert!(
        shown[0].contains("web.pem"),
        "the paths are shown: {}",
        shown[0]
    );
    for key in [web.key.serialize_pem(), other] {
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            for text in &shown {
                assert!(!text.contains(line), "key material in {text}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_check_validity_at_the_injected_clock() {
    let dir = temp_dir("files-clock");
    let ca = TestCa::new(7);
    write(&dir.join("ca.pem"), &ca.pem);
    let start = now();
    // Both leaves valid for one hour only.
    let short = |service: &str| {
        ca.issue(&LeafSpec {
            not_before: start - time::Duration::minutes(1),
            not_after: start + time::Duration::hours(1),
            ..LeafSpec::consul(TRUST_DOMAIN, service)
        })
    };
    let (db_clock, web_clock) = (ManualClock::new(start), ManualClock::new(start));
    let db = file_service_with(
        ConnectService::builder("db").clock(db_clock.clone()),
        &leaf_files(&dir, &short("db")),
    )
    .await;
    let web = file_service_with(
        ConnectService::builder("web").clock(web_clock.clone()),
        &leaf_files(&dir, &short("web")),
    )
    .await;
    let (addr, mut rejections) = echo_server(&db).await;
    let mut conn = Conn::open(&web, addr, "db").await;
    assert!(conn.ask("now").await.is_some());

    // Two hours later for the client: db's leaf has expired.
    web_clock.set(start + time::Duration::hours(2));
    let err = web
        .dialer()
        .dial(&StaticResolver::new(addr.to_string(), "db"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    let refused_by_client = next_rejection(&mut rejections).await;
    assert!(
        refused_by_client.reason.contains("CertificateUnknown"),
        "db sees web refuse its certificate: {refused_by_client:?}"
    );

    // Two hours later for the server: web's leaf has expired.
    web_clock.set(start);
    db_clock.set(start + time::Duration::hours(2));
    let mut late = Conn::open(&web, addr, "db").await;
    assert_eq!(late.ask("late").await, None);
    let rejection = next_rejection(&mut rejections).await;
    assert!(rejection.reason.contains("expired"), "{rejection:?}");
    assert!(
        conn.ask("still").await.is_some(),
        "open connections are not re-checked"
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The files of one service in `dir`: the shared `ca.pem`, `<service>.pem`, `<service>-key.pem`.
struct LeafFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl LeafFiles {
    fn certificate_files(&self) -> CertificateFiles {
        CertificateFiles::new(&self.ca, &self.cert, &self.key).poll_interval(POLL)
    }
}

fn leaf_files(dir: &Path, leaf: &Issued) -> LeafFiles {
    let files = LeafFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{}.pem", leaf.service)),
        key: dir.join(format!("{}-key.pem", leaf.service)),
    };
    write_leaf(&files, leaf);
    files
}

fn write_leaf(files: &LeafFiles, leaf: &Issued) {
    write(&files.cert, &leaf.chain_pem());
    write(&files.key, &leaf.key.serialize_pem());
}

/// Writes through a temporary file and a rename, as deployment tools do, so a poll never
/// reads half a file.
fn write(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Allows `service` only; the authorizer a file-based service must be given.
#[derive(Debug)]
struct AllowOnly(&'static str);

#[async_trait]
impl Authorizer for AllowOnly {
    async fn authorize(
        &self,
        _target: &str,
        peer: &ServiceId,
        _serial: &str,
    ) -> Result<Decision, AuthzError> {
        Ok(Decision::new(
            peer.service() == self.0,
            format!("only {} may connect", self.0),
        ))
    }
}

fn allow_only(service: &'static str) -> Arc<dyn Authorizer> {
    Arc::new(AllowOnly(service))
}

async fn file_service(
    name: &str,
    files: &LeafFiles,
    agent: Option<&AgentClient>,
) -> ConnectService {
    let mut builder = ConnectService::builder(name);
    if let Some(agent) = agent {
        builder = builder.agent(agent.clone());
    }
    file_service_with(builder, files).await
}

async fn file_service_with(
    builder: consul_connect::service::ConnectServiceBuilder,
    files: &LeafFiles,
) -> ConnectService {
    builder
        .certificate_files(files.certificate_files())
        .authorizer(allow_only("web"))
        .build()
        .await
        .unwrap()
}

/// Waits (on material updates) until the service's status satisfies `done`.
async fn wait_for(service: &ConnectService, done: impl Fn(&Status) -> bool) {
    let mut updates = service.material_updates();
    tokio::time::timeout(WAIT, async {
        while !done(&service.status()) {
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not reached: {:?}", service.status()));
}

/// Polls the status until `done`: errors and their clearing publish no material, so there
/// is no update to wait on.
async fn wait_for_status(service: &ConnectService, done: impl Fn(&Status) -> bool) -> Status {
    tokio::time::timeout(WAIT, async {
        loop {
            let status = service.status();
            if done(&status) {
                return status;
            }
            tokio::time::sleep(POLL / 2).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not reached: {:?}", service.status()))
}

/// An echo server for `service`: answers each line with the client's service and leaf serial.
async fn echo_server(service: &ConnectService) -> (SocketAddr, broadcast::Receiver<Rejection>) {
    let mut listener = ConnectListener::bind(service, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let rejections = listener.rejections();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let serial = consul_connect::tls::peer_identity(stream.get_ref().1)
                    .map(|p| p.serial().to_owned())
                    .unwrap_or_default();
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = format!("{line} from {} serial {serial}\n", peer.service());
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rejections)
}

async fn next_rejection(rejections: &mut broadcast::Receiver<Rejection>) -> Rejection {
    tokio::time::timeout(WAIT, rejections.recv())
        .await
        .expect("a rejection is reported")
        .unwrap()
}

struct Conn {
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<consul_connect::dialer::ClientStream>>>,
    write: tokio::io::WriteHalf<consul_connect::dialer::ClientStream>,
}

impl Conn {
    /// Dials `server` at `addr` as `client` over a static resolver.
    async fn open(client: &ConnectService, addr: SocketAddr, server: &str) -> Conn {
        let stream = client
            .dialer()
            .dial(&StaticResolver::new(addr.to_string(), server))
            .await
            .unwrap();
        let (read, write) = tokio::io::split(stream);
        Conn {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    /// Sends a line; `None` when the server closed the connection instead of answering.
    async fn ask(&mut self, line: &str) -> Option<String> {
        self.write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .ok()?;
        self.lines.next_line().await.ok().flatten()
    }
}
