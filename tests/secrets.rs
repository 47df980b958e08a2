//! Secrets stay secret: `Debug` of every public type that can hold a private key or an ACL
//! token shows neither, agent-sim never answers a CA key, and the logs of a whole demo run at
//! TRACE level (ACLs on, a bad token, a refused client) hold no key material and no token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agent_sim::acl_rules::DefaultPolicy;
use agent_sim::Agent;
use consul_connect::agent::{AgentClient, Token};
use consul_connect::api::{Intention, LeafCert, ServiceConnect, ServiceRegistration};
use consul_connect::intentions::DefaultDecision;
use consul_connect::tls::{ExpectedServer, MaterialCell};
use consul_connect::{
    AgentAuthorizer, CatalogResolver, ConnectListener, ConnectService, IntentionsAuthorizer,
    StaticResolver,
};
use consul_connect_types::api::{AclToken, CaConfiguration};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use support::agent::{Raw, CLUSTER_ID, TRUST_DOMAIN};
use support::faults::watch_config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::MakeWriter;

const MANAGEMENT_TOKEN: &str = "5e1a9f43-0d1f-4c4e-9b2a-7d5c3e8f1a01";
const BOGUS_TOKEN: &str = "b0905b0a-ffff-4e4e-8d8d-c0ffeec0ffee";

/// Every form in which a secret could show up in text.
#[derive(Default)]
struct Secrets {
    needles: Vec<(String, String)>,
}

impl Secrets {
    fn token(&mut self, token: &str) {
        self.needles
            .push((format!("token {token}"), token.to_owned()));
    }

    /// A PEM private key: each base64 line, and the private scalar as bytes would print it
    /// (decimal list, hex, colon hex).
    fn key(&mut self, what: &str, pem: &str) {
        for line in pem.lines().map(str::trim) {
            if !line.starts_with("-----") && line.len() >= 16 {
                self.needles
                    .push((format!("{what} PEM line"), line.to_owned()));
            }
        }
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("a private key PEM");
        let der = der.secret_der();
        // ECPrivateKey: version 1, then the 32-byte scalar (SEC1 alone or inside PKCS#8).
        let at = der
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
            .expect("an EC private key")
            + 5;
        let scalar = &der[at..at + 32];
        let decimal = format!("{:?}", &scalar[..8]);
        let hex: String = scalar[..16].iter().map(|b| format!("{b:02x}")).collect();
        let colon: Vec<String> = scalar[..8].iter().map(|b| format!("{b:02x}")).collect();
        let colon = colon.join(":");
        for (form, text) in [
            ("decimal", decimal.trim_matches(['[', ']']).to_owned()),
            ("hex", hex.clone()),
            ("HEX", hex.to_uppercase()),
            ("colon hex", colon.clone()),
            ("COLON HEX", colon.to_uppercase()),
        ] {
            self.needles.push((format!("{what} scalar ({form})"), text));
        }
    }

    /// What of the secrets `text` shows.
    fn leaks(&self, text: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .needles
            .iter()
            .filter(|(_, needle)| text.contains(needle.as_str()))
            .map(|(what, _)| what.clone())
            .collect();
        if text.contains("PRIVATE KEY") {
            found.push("a PEM private-key marker".into());
        }
        found
    }
}

#[test]
fn the_scanner_finds_every_form_of_a_secret_and_nothing_public() {
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = key.serialize_pem();
    let mut secrets = Secrets::default();
    secrets.key("key", &pem);
    secrets.token(MANAGEMENT_TOKEN);
    let der = key.serialize_der();
    let hex: String = der.iter().map(|b| format!("{b:02X}")).collect();
    let body_line = pem.lines().nth(1).unwrap().to_owned();
    for (form, text) in [
        ("PEM", pem.clone()),
        ("one base64 line", format!("key: {body_line}")),
        ("DER as Debug bytes", format!("{der:?}")),
        ("DER as upper hex", hex.clone()),
        ("DER as lower hex", hex.to_lowercase()),
        ("token", format!("Token({MANAGEMENT_TOKEN})")),
    ] {
        assert!(!secrets.leaks(&text).is_empty(), "{form} not detected");
    }
    // Public material of the same key does not trip it.
    let mut params = rcgen::CertificateParams::new(vec!["web".into()]).unwrap();
    params.is_ca = rcgen::IsCa::NoCa;
    let cert = params.self_signed(&key).unwrap();
    let public = format!("{}{:?}", cert.pem(), key.public_key_raw());
    assert!(
        secrets.leaks(&public).is_empty(),
        "{:?}",
        secrets.leaks(&public)
    );
}

/// Formats each value with `{:?}` and `{:#?}` and lists what leaks, by type.
fn leaks_of(secrets: &Secrets, shown: &[(&str, String)]) -> BTreeMap<String, Vec<String>> {
    shown
        .iter()
        .filter_map(|(name, text)| {
            let leaks = secrets.leaks(text);
            (!leaks.is_empty()).then(|| ((*name).to_owned(), leaks))
        })
        .collect()
}

macro_rules! show {
    ($($name:literal => $value:expr),* $(,)?) => {
        vec![$(
            ($name, format!("{:?}", $value)),
            ($name, format!("{:#?}", $value)),
        )*]
    };
}

/// agent-sim with a known CA key and ACLs on, and an SDK client with the management token.
async fn acl_agent(ca_key_pem: &str) -> (Agent, AgentClient) {
    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .ca_private_key(ca_key_pem)
        // Default allow, as in the demo, so intentions decide (and unknown tokens still fail).
        .acl(DefaultPolicy::Allow)
        .acl_initial_management_token(MANAGEMENT_TOKEN)
        .start()
        .await
        .unwrap();
    let client = AgentClient::new(&agent.addr().to_string())
        .unwrap()
        .with_token(Token::new(MANAGEMENT_TOKEN));
    (agent, client)
}

/// The leaf agent-sim holds for `service` in the management token's cache partition (the one
/// the SDK's watches read).
async fn leaf_of(agent: &Agent, service: &str) -> LeafCert {
    let answer = Raw::new(agent)
        .send_with_headers(
            "GET",
            &format!("/v1/agent/connect/ca/leaf/{service}"),
            "",
            &[("X-Consul-Token", MANAGEMENT_TOKEN)],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

async fn ready_service(client: &AgentClient, name: &str) -> ConnectService {
    let service = ConnectService::builder(name)
        .agent(client.clone())
        .watch_config(watch_config())
        .build()
        .await
        .unwrap();
    service
        .ready_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_of_sdk_types_shows_no_key_and_no_token() {
    log_capture();
    let ca_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let (agent, client) = acl_agent(&ca_key).await;
    let web = ConnectService::builder("web")
        .agent(AgentClient::new(&agent.addr().to_string()).unwrap())
        .token(Token::new(MANAGEMENT_TOKEN))
        .watch_config(watch_config());
    let builder_shown = format!("{web:?}");
    let web = web.build().await.unwrap();
    web.ready_timeout(Duration::from_secs(10)).await.unwrap();
    let leaf = leaf_of(&agent, "web").await;
    assert_eq!(Some(&leaf.serial_number), web.status().leaf_serial.as_ref());

    let mut secrets = Secrets::default();
    secrets.token(MANAGEMENT_TOKEN);
    secrets.key("leaf key", &leaf.private_key_pem);
    secrets.key("CA key", &ca_key);

    let material = web.material().unwrap();
    let cell = MaterialCell::new();
    cell.store(material.clone());
    let ca_config = CaConfiguration {
        provider: "consul".into(),
        config: BTreeMap::from([
            ("PrivateKey".into(), serde_json::Value::from(ca_key.clone())),
            ("LeafCertTTL".into(), serde_json::Value::from("72h")),
        ]),
        create_index: 1,
        modify_index: 1,
    };
    let acl_token = AclToken {
        accessor_id: "a1".into(),
        secret_id: MANAGEMENT_TOKEN.into(),
        description: "management".into(),
        ..AclToken::default()
    };
    let intentions = IntentionsAuthorizer::start_with(
        client.clone(),
        "web",
        DefaultDecision::AclDefaultDeny,
        watch_config(),
    );
    let listener = ConnectListener::bind(&web, "127.0.0.1:0").await.unwrap();
    let http_client: consul_connect::http::HttpClient = consul_connect::http::HttpClient::new(&web);
    // A request the agent refuses, so an AgentError is at hand.
    let denied = AgentClient::new(&agent.addr().to_string())
        .unwrap()
        .with_token(Token::new(BOGUS_TOKEN))
        .leaf("web", &Default::default())
        .await
        .unwrap_err();
    secrets.token(BOGUS_TOKEN);

    let mut shown = show! {
        "LeafCert" => &leaf,
        "CaConfiguration" => &ca_config,
        "Token" => Token::new(MANAGEMENT_TOKEN),
        "AgentClient" => &client,
        "AclToken" => &acl_token,
        "Material" => &*material,
        "MaterialCell" => &cell,
        "ConnectService" => &web,
        "Status" => web.status(),
        "ConnectDialer" => web.dialer(),
        "ConnectListener" => &listener,
        "AgentAuthorizer" => AgentAuthorizer::new(client.clone()),
        "IntentionsAuthorizer" => &intentions,
        "CatalogResolver" => CatalogResolver::new(client.clone(), "db"),
        "ConnectConnector" => consul_connect::http::ConnectConnector::new(&web),
        "HttpClient" => &http_client,
        "rustls::ServerConfig" => web.dangerous().server_config(),
        "ConnectClientConfig" => web.client_config(),
        "rustls::ClientConfig" => web.client_config().for_server(ExpectedServer::new("db")),
        "AgentError" => &denied,
    };
    shown.push(("ConnectServiceBuilder", builder_shown));
    shown.push(("AgentError (Display)", denied.to_string()));
    // The leaf's Debug must still say what it is, or the test shows nothing.
    assert!(shown[0].1.contains(&leaf.serial_number), "{}", shown[0].1);
    let leaks = leaks_of(&secrets, &shown);
    assert!(leaks.is_empty(), "secrets in Debug output: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_of_agent_sim_types_shows_no_key_and_no_token() {
    log_capture();
    let ca_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let builder = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .ca_private_key(ca_key.clone())
        .acl(DefaultPolicy::Deny)
        .acl_initial_management_token(MANAGEMENT_TOKEN);
    let builder_shown = format!("{builder:?}");
    let agent = builder.start().await.unwrap();
    let leaf = leaf_of(&agent, "web").await;
    let mut secrets = Secrets::default();
    secrets.token(MANAGEMENT_TOKEN);
    secrets.key("CA key", &ca_key);
    secrets.key("leaf key", &leaf.private_key_pem);

    let key = agent_sim::ca::EcKey::from_pem(&ca_key).unwrap();
    let generated = agent_sim::ca::EcKey::generate().unwrap();
    secrets.key("generated key", &generated.to_pem());
    let td = consul_connect::spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let ca = agent_sim::ca::BuiltinCa::new(
        td,
        agent_sim::ca::EcKey::from_pem(&ca_key).unwrap(),
        9,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let ca_settings = agent_sim::state::ca::CaSettings {
        private_key: Some(ca_key.clone()),
        ..Default::default()
    };
    let acl_settings = agent_sim::state::acl::AclSettings {
        enabled: true,
        default_policy: DefaultPolicy::Deny,
        initial_management_token: Some(MANAGEMENT_TOKEN.into()),
    };
    let ca_state = agent.store().read(|inner| format!("{:?}", inner.ca));
    let settings = agent.store().settings().clone();

    let mut shown = show! {
        "EcKey" => &key,
        "EcKey (generated)" => &generated,
        "BuiltinCa" => &ca,
        "CaSettings" => &ca_settings,
        "AclSettings" => &acl_settings,
        "StoreSettings" => &settings,
        "RequestToken" => agent_sim::http::RequestToken(MANAGEMENT_TOKEN.into()),
        "Agent" => &agent,
    };
    shown.push(("AgentBuilder", builder_shown));
    shown.push(("CaState", ca_state));
    assert!(
        shown.iter().any(|(_, s)| s.contains("key_id")),
        "EcKey says what it is"
    );
    let leaks = leaks_of(&secrets, &shown);
    assert!(leaks.is_empty(), "secrets in Debug output: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_of_agent_sim_state_and_cache_shows_no_token() {
    log_capture();
    let ca_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let (agent, _) = acl_agent(&ca_key).await;
    let mut secrets = Secrets::default();
    secrets.token(MANAGEMENT_TOKEN);
    secrets.key("CA key", &ca_key);
    let shown = show! {
        "Store" => agent.store(),
        "ConnectCache" => agent.cache(),
        "cache::Partition" => agent_sim::cache::Partition {
            datacenter: "dc1".into(),
            token: MANAGEMENT_TOKEN.into(),
        },
    };
    let leaks = leaks_of(&secrets, &shown);
    assert!(leaks.is_empty(), "secrets in Debug output: {leaks:#?}");
}

#[test]
fn ca_configuration_debug_hides_the_key_under_any_spelling() {
    let ca_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let mut secrets = Secrets::default();
    secrets.key("CA key", &ca_key);
    let shown: Vec<(&str, String)> = ["private_key", "privatekey", "privateKey"]
        .iter()
        .map(|spelling| {
            let config = CaConfiguration {
                provider: "consul".into(),
                config: BTreeMap::from([(
                    (*spelling).to_owned(),
                    serde_json::Value::from(ca_key.clone()),
                )]),
                create_index: 0,
                modify_index: 0,
            };
            (*spelling, format!("{config:?}"))
        })
        .collect();
    let leaks = leaks_of(&secrets, &shown);
    assert!(leaks.is_empty(), "secrets in Debug output: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sim_never_answers_the_ca_key() {
    // As Consul 1.4 (1.10 shows a configured key to operator:write holders, sample 44:
    // tests/agent_sim_ca.rs).
    log_capture();
    let ca_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let agent = Agent::builder()
        .consul_version(agent_sim::profile::ConsulVersion::V1_4_5)
        .cluster_id(CLUSTER_ID)
        .ca_private_key(ca_key.clone())
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&agent);
    let new_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let mut secrets = Secrets::default();
    secrets.key("CA key", &ca_key);
    secrets.key("new CA key", &new_key);

    let at_start = raw.get("/v1/connect/ca/configuration").await;
    assert_eq!(at_start.status, 200);
    // A rotation to a given key: the key is stored, never shown.
    let body = serde_json::json!({"Provider": "consul", "Config": {"PrivateKey": new_key}});
    let put = raw
        .put("/v1/connect/ca/configuration", &body.to_string())
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let after = raw.get("/v1/connect/ca/configuration").await;
    assert_eq!(
        after.json()["Config"]["PrivateKey"],
        "hidden",
        "{}",
        after.body
    );
    let roots = raw.get("/v1/connect/ca/roots").await;
    assert_eq!(
        roots.json()["Roots"].as_array().unwrap().len(),
        2,
        "rotated"
    );
    let shown = vec![
        ("GET configuration at start", at_start.body),
        ("GET configuration after rotation", after.body),
        ("GET roots", roots.body),
    ];
    let leaks = leaks_of(&secrets, &shown);
    assert!(leaks.is_empty(), "keys in agent answers: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sim_never_answers_a_ca_key_spelled_otherwise() {
    log_capture();
    let agent = Agent::builder()
        .consul_version(agent_sim::profile::ConsulVersion::V1_4_5)
        .cluster_id(CLUSTER_ID)
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&agent);
    let new_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let mut secrets = Secrets::default();
    secrets.key("new CA key", &new_key);
    let body = serde_json::json!({"Provider": "consul", "Config": {"private_key": new_key}});
    let put = raw
        .put("/v1/connect/ca/configuration", &body.to_string())
        .await;
    let after = raw.get("/v1/connect/ca/configuration").await;
    let shown = vec![("PUT answer", put.body), ("GET configuration", after.body)];
    let leaks = leaks_of(&secrets, &shown);
    assert!(leaks.is_empty(), "keys in agent answers: {leaks:#?}");
}

/// Everything the process logs, at TRACE, from `tracing` and from `log` (rustls).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter(self.0.clone())
    }
}

/// Installs (once) the process-wide TRACE subscriber writing to the capture buffer.
fn log_capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_span_events(FmtSpan::FULL)
            .with_writer(capture.clone())
            .try_init()
            .expect("the only subscriber of this test binary");
        capture
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_logged_once_with_the_peer() {
    let capture = log_capture();
    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .start()
        .await
        .unwrap();
    let client = AgentClient::new(&agent.addr().to_string()).unwrap();
    let caller = ready_service(&client, "once-web").await;
    let deny: Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "once-web", "DestinationName": "once-db", "Action": "deny",
    }))
    .unwrap();
    client.create_intention(&deny).await.unwrap();
    let intentions = Arc::new(IntentionsAuthorizer::start(
        client.clone(),
        "once-db",
        DefaultDecision::AclsDisabled,
    ));
    intentions.loaded().await;
    for (name, authorizer) in [
        ("agent", None),
        (
            "intentions",
            Some(intentions as Arc<dyn consul_connect::Authorizer>),
        ),
    ] {
        let mut builder = ConnectService::builder("once-db")
            .agent(client.clone())
            .watch_config(watch_config());
        if let Some(authorizer) = authorizer {
            builder = builder.authorizer(authorizer);
        }
        let server = builder.build().await.unwrap();
        server.ready_timeout(Duration::from_secs(10)).await.unwrap();
        let listener = ConnectListener::bind(&server, "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr();
        let mut rejections = listener.rejections();
        let start = capture.text().len();
        let _ = caller
            .dialer()
            .dial(&StaticResolver::new(addr.to_string(), "once-db"))
            .await;
        tokio::time::timeout(Duration::from_secs(5), rejections.recv())
            .await
            .expect("the refusal is reported")
            .unwrap();
        // The server's refusal messages at INFO and above, for this service only.
        let text = capture.text();
        let logged: Vec<&str> = text[start..]
            .lines()
            .filter(|l| l.contains("once-db") && (l.contains(" INFO ") || l.contains(" WARN ")))
            .filter(|l| {
                [
                    "Connect client refused",
                    "client refused by",
                    "client certificate refused",
                ]
                .iter()
                .any(|m| l.contains(m))
            })
            .collect();
        assert_eq!(logged.len(), 1, "{name}: {logged:#?}");
        assert!(
            logged[0].contains("peer=spiffe://") && logged[0].contains("/svc/once-web"),
            "{name}: {}",
            logged[0]
        );
    }
}

/// One line to `addr` as `client` (dialing `server`); the echo, or why there was none.
async fn echo_once(client: &ConnectService, server: &str) -> Result<String, String> {
    let stream = client
        .dialer()
        .dial_service(server)
        .await
        .map_err(|e| e.to_string())?;
    let (read, mut write) = tokio::io::split(stream);
    write
        .write_all(b"hello\n")
        .await
        .map_err(|e| e.to_string())?;
    match BufReader::new(read).lines().next_line().await {
        Ok(Some(line)) => Ok(line),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_demo_run_at_trace_hold_no_key_and_no_token() {
    let capture = log_capture();
    let ca_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let (agent, client) = acl_agent(&ca_key).await;

    // The demo: echo registered as Connect-native, web finds it and talks to it, then a deny
    // intention refuses web.
    let echo = ready_service(&client, "echo").await;
    let mut listener = ConnectListener::bind(&echo, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    client
        .register(&ServiceRegistration {
            name: "echo".into(),
            port: addr.port(),
            address: addr.ip().to_string(),
            connect: Some(ServiceConnect {
                native: true,
                sidecar_service: None,
            }),
            ..ServiceRegistration::default()
        })
        .await
        .unwrap();
    let mut rejections = listener.rejections();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = write.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
        }
    });
    let web = ready_service(&client, "web").await;
    assert_eq!(echo_once(&web, "echo").await.unwrap(), "hello");

    let deny: Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "web", "DestinationName": "echo", "Action": "deny",
    }))
    .unwrap();
    client.create_intention(&deny).await.unwrap();
    assert!(echo_once(&web, "echo").await.is_err(), "denied");
    tokio::time::timeout(Duration::from_secs(5), rejections.recv())
        .await
        .expect("the refusal is reported")
        .unwrap();
    // A dial that finds the wrong service behind an address.
    let wrong = web
        .dialer()
        .dial(&StaticResolver::new(addr.to_string(), "db"))
        .await;
    assert!(wrong.is_err());
    // A service with a token the agent does not know: 403s, logged as watch failures.
    let intruder = ConnectService::builder("intruder")
        .agent(
            AgentClient::new(&agent.addr().to_string())
                .unwrap()
                .with_token(Token::new(BOGUS_TOKEN)),
        )
        .watch_config(watch_config())
        .build()
        .await
        .unwrap();
    let err = intruder
        .ready_timeout(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ACL not found"), "{err}");

    let mut secrets = Secrets::default();
    secrets.token(MANAGEMENT_TOKEN);
    secrets.token(BOGUS_TOKEN);
    secrets.key("CA key", &ca_key);
    for (name, service) in [("echo", &echo), ("web", &web)] {
        let leaf = leaf_of(&agent, name).await;
        assert_eq!(
            Some(&leaf.serial_number),
            service.status().leaf_serial.as_ref(),
            "the key scanned for is the one {name} used"
        );
        secrets.key(&format!("{name} leaf key"), &leaf.private_key_pem);
    }
    web.shutdown();
    echo.shutdown();
    intruder.shutdown();
    agent.shutdown().await;

    let logs = capture.text();
    // For a human look at what was scanned: SECRETS_LOG_DUMP=/tmp/trace.log cargo test ...
    if let Ok(path) = std::env::var("SECRETS_LOG_DUMP") {
        std::fs::write(path, &logs).unwrap();
    }
    // The capture saw the run: SDK events, spans with their fields, and rustls's `log` records.
    for expected in [
        "Connect material published",
        "Connect client refused",
        // The intruder never gets material: its failures say so (not "keeping the last good").
        "no Connect material yet",
        "ACL not found",
        "connect.handshake",
        "server certificate refused",
        "rustls",
    ] {
        assert!(
            logs.contains(expected),
            "the TRACE capture lacks {expected:?} ({} bytes captured)",
            logs.len()
        );
    }
    let leaks = secrets.leaks(&logs);
    assert!(
        leaks.is_empty(),
        "secrets in {} bytes of TRACE logs: {leaks:#?}",
        logs.len()
    );
    eprintln!("scanned {} bytes of TRACE logs", logs.len());
}
