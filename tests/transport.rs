//! The SDK's agent client against an embedded agent-sim over HTTPS (CA file and directory,
//! mutual TLS, an agent that requires client certificates, a wrong CA) and over a unix socket,
//! configured through the `CONSUL_*` variables as an application's environment would hold them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use agent_sim::Agent;
use consul_connect::agent::{AgentClient, AgentClientBuilder, AgentError, QueryOptions};
use consul_connect::{ConnectListener, ConnectService, StaticResolver};
use support::agent::{temp_dir, HttpsFiles, CLUSTER_ID};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const READY: Duration = Duration::from_secs(10);

/// A builder from these variables only (the process environment is not touched).
fn from_vars(vars: &[(&str, String)]) -> AgentClientBuilder {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    AgentClientBuilder::from_lookup(move |name| map.get(name).cloned()).unwrap()
}

/// agent-sim serving HTTP and HTTPS; `verify_incoming` requires client certificates.
async fn https_agent(files: &HttpsFiles, verify_incoming: bool) -> Agent {
    Agent::builder()
        .cluster_id(CLUSTER_ID)
        .https_addr("127.0.0.1:0".parse().unwrap())
        .tls_cert_file(&files.server_cert)
        .tls_key_file(&files.server_key)
        .tls_ca_file(&files.ca)
        .tls_verify_incoming(verify_incoming)
        .start()
        .await
        .unwrap()
}

fn https_url(agent: &Agent) -> String {
    format!("https://{}", agent.https_addr().unwrap())
}

/// Two services on `agent` (built from `client`): `web` dials `db` through a Connect listener
/// and gets its line echoed, authorized by the agent over the same transport.
async fn dial_and_accept(builder: AgentClientBuilder) {
    let build = |name: &str| {
        ConnectService::builder(name)
            .agent_builder(builder.clone())
            .build()
    };
    let db = build("db").await.unwrap();
    let web = build("web").await.unwrap();
    db.ready_timeout(READY).await.unwrap();
    web.ready_timeout(READY).await.unwrap();
    let mut listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        write
            .write_all(format!("{line} from {}\n", peer.service()).as_bytes())
            .await
            .unwrap();
    });
    let stream = web
        .dialer()
        .dial(&StaticResolver::new(addr.to_string(), "db"))
        .await
        .unwrap();
    let (read, mut write) = tokio::io::split(stream);
    write.write_all(b"hello\n").await.unwrap();
    let answer = BufReader::new(read).lines().next_line().await.unwrap();
    assert_eq!(answer.as_deref(), Some("hello from web"));
    server.await.unwrap();
}

#[tokio::test]
async fn https_with_the_agent_ca_file() {
    let files = HttpsFiles::new();
    let agent = https_agent(&files, false).await;
    let builder = from_vars(&[
        ("CONSUL_HTTP_ADDR", https_url(&agent)),
        ("CONSUL_CACERT", files.ca.display().to_string()),
    ]);
    assert!(builder
        .clone()
        .build()
        .unwrap()
        .address()
        .starts_with("https://127.0.0.1:"));
    dial_and_accept(builder).await;
}

#[tokio::test]
async fn https_with_ssl_switch_ca_directory_and_server_name() {
    let files = HttpsFiles::new();
    let agent = https_agent(&files, false).await;
    let ca_dir = temp_dir("capath");
    std::fs::copy(&files.ca, ca_dir.join("agent-ca.pem")).unwrap();
    // A bare address made https by CONSUL_HTTP_SSL, verified as `localhost`.
    let client = from_vars(&[
        ("CONSUL_HTTP_ADDR", agent.https_addr().unwrap().to_string()),
        ("CONSUL_HTTP_SSL", "true".into()),
        ("CONSUL_CAPATH", ca_dir.display().to_string()),
        ("CONSUL_TLS_SERVER_NAME", "localhost".into()),
    ])
    .build()
    .unwrap();
    let roots = client.roots(&QueryOptions::default()).await.unwrap();
    assert_eq!(roots.value.roots.len(), 1);
    // The certificate holds no such name.
    let client = from_vars(&[
        ("CONSUL_HTTP_ADDR", https_url(&agent)),
        ("CONSUL_CAPATH", ca_dir.display().to_string()),
        ("CONSUL_TLS_SERVER_NAME", "consul.example".into()),
    ])
    .build()
    .unwrap();
    let err = client.roots(&QueryOptions::default()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("certificate not valid for name \"consul.example\""),
        "{err}"
    );
}

#[tokio::test]
async fn mutual_tls_when_the_agent_verifies_incoming() {
    let files = HttpsFiles::new();
    let agent = https_agent(&files, true).await;
    let base = [
        ("CONSUL_HTTP_ADDR", https_url(&agent)),
        ("CONSUL_CACERT", files.ca.display().to_string()),
    ];
    let mut with_cert = base.to_vec();
    with_cert.push((
        "CONSUL_CLIENT_CERT",
        files.client_cert.display().to_string(),
    ));
    with_cert.push(("CONSUL_CLIENT_KEY", files.client_key.display().to_string()));
    dial_and_accept(from_vars(&with_cert)).await;

    // Without a certificate the agent refuses the connection, and the error says why.
    let client = from_vars(&base).build().unwrap();
    let err = client.roots(&QueryOptions::default()).await.unwrap_err();
    assert!(matches!(err, AgentError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("CertificateRequired"), "{text}");
    // Plain HTTP is still served beside it, as Consul does.
    let plain = AgentClient::new(&agent.addr().to_string()).unwrap();
    plain.roots(&QueryOptions::default()).await.unwrap();
}

#[tokio::test]
async fn a_wrong_ca_fails_with_a_clear_error() {
    let files = HttpsFiles::new();
    let other = HttpsFiles::new();
    let agent = https_agent(&files, false).await;
    let client = from_vars(&[
        ("CONSUL_HTTP_ADDR", https_url(&agent)),
        ("CONSUL_CACERT", other.ca.display().to_string()),
    ])
    .build()
    .unwrap();
    let err = client.roots(&QueryOptions::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("TLS handshake with the agent (server name \"127.0.0.1\") failed")
            // Both CAs bear the same name: the chain is found and its signature is wrong.
            && text.contains("invalid peer certificate: BadSignature"),
        "{text}"
    );
    // Verification off (named as dangerous) accepts it.
    let client = from_vars(&[
        ("CONSUL_HTTP_ADDR", https_url(&agent)),
        ("CONSUL_CACERT", other.ca.display().to_string()),
        ("CONSUL_HTTP_SSL_VERIFY", "false".into()),
    ])
    .build()
    .unwrap();
    client.roots(&QueryOptions::default()).await.unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn unix_socket() {
    let dir = temp_dir("agent-unix");
    let socket = dir.join("agent.sock");
    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .http_unix_socket(&socket)
        .start()
        .await
        .unwrap();
    assert_eq!(agent.http_url(), format!("unix://{}", socket.display()));
    let builder = from_vars(&[("CONSUL_HTTP_ADDR", agent.http_url())]);
    assert_eq!(builder.clone().build().unwrap().address(), agent.http_url());
    dial_and_accept(builder).await;

    agent.shutdown().await;
    assert!(!socket.exists(), "the socket is removed at stop");
    let client = from_vars(&[("CONSUL_HTTP_ADDR", format!("unix://{}", socket.display()))])
        .build()
        .unwrap();
    let err = client.roots(&QueryOptions::default()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("cannot connect to {}", socket.display())),
        "{err}"
    );
}

/// What Go's client puts on the wire for CONSUL_NAMESPACE, CONSUL_PARTITION, CONSUL_HTTP_AUTH
/// and CONSUL_HTTP_TOKEN_FILE, read by a bare listener (agent-sim, like Consul OSS, ignores
/// them).
#[tokio::test]
async fn namespace_partition_basic_auth_and_token_file_on_the_wire() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = temp_dir("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "file-token\n").unwrap();
    let client = from_vars(&[
        ("CONSUL_HTTP_ADDR", format!("http://{addr}/prefix")),
        ("CONSUL_NAMESPACE", "team a".into()),
        ("CONSUL_PARTITION", "p1".into()),
        ("CONSUL_HTTP_AUTH", "admin:secret".into()),
        ("CONSUL_HTTP_TOKEN", "env-token".into()),
        ("CONSUL_HTTP_TOKEN_FILE", token_file.display().to_string()),
    ])
    .build()
    .unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "request cut short");
            request.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]")
            .await
            .unwrap();
        String::from_utf8(request).unwrap()
    });
    let got = client
        .health_connect("db", None, &QueryOptions::default())
        .await
        .unwrap();
    assert!(got.value.is_empty());
    let request = server.await.unwrap();
    assert!(
        request.starts_with("GET /prefix/v1/health/connect/db?passing=1&ns=team+a&partition=p1 "),
        "{request}"
    );
    // base64("admin:secret")
    assert!(
        request.contains("\r\nauthorization: Basic YWRtaW46c2VjcmV0\r\n"),
        "{request}"
    );
    assert!(
        request.contains("\r\nx-consul-token: file-token\r\n"),
        "{request}"
    );
}
