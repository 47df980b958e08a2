//! An embedded agent-sim and a raw HTTP client for checking status codes, headers and bodies
//! exactly.

use std::process::Command;
use std::time::Duration;

use agent_sim::Agent;
use bytes::Bytes;
use consul_connect::agent::AgentClient;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The cluster ID the tests fix, so trust domains are predictable.
pub const CLUSTER_ID: &str = "11111111-2222-3333-4444-555555555555";
/// The trust domain that follows from it.
pub const TRUST_DOMAIN: &str = "11111111-2222-3333-4444-555555555555.consul";

/// Starts agent-sim on an ephemeral port with the fixed cluster ID.
pub async fn start_agent() -> Agent {
    Agent::builder()
        .cluster_id(CLUSTER_ID)
        .start()
        .await
        .expect("agent-sim starts")
}

/// Starts agent-sim in Consul 1.4.5 mode, for tests of 1.4.5's answers.
pub async fn start_agent_1_4_5() -> Agent {
    Agent::builder()
        .cluster_id(CLUSTER_ID)
        .consul_version(agent_sim::profile::ConsulVersion::V1_4_5)
        .start()
        .await
        .expect("agent-sim starts")
}

/// Watch pacing for tests: quick retries and polls, so a change shows within milliseconds.
pub fn fast_watch() -> consul_connect::agent::WatchConfig {
    consul_connect::agent::WatchConfig::default()
        .wait(Duration::from_secs(30))
        .backoff_range(Duration::from_millis(20), Duration::from_millis(200))
        .min_interval(Duration::from_millis(5))
        .poll_interval(Duration::from_millis(20))
}

/// An SDK client for `agent`.
pub fn sdk_client(agent: &Agent) -> AgentClient {
    AgentClient::new(&agent.addr().to_string()).expect("valid address")
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// `X-Consul-Index` as a number.
    pub fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", self.headers))
    }
}

/// A raw HTTP client bound to one agent.
#[derive(Clone)]
pub struct Raw {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Raw {
    /// A client for `agent`.
    pub fn new(agent: &Agent) -> Self {
        Self {
            base: format!("http://{}", agent.addr()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `method path` with `body` and returns the whole answer.
    pub async fn send(&self, method: &str, path: &str, body: &str) -> Answer {
        self.send_with_headers(method, path, body, &[]).await
    }

    /// Sends `method path` with `body` and extra headers.
    pub async fn send_with_headers(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .expect("answer within 60s")
            .expect("HTTP exchange");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, "").await
    }

    /// PUT with a body.
    pub async fn put(&self, path: &str, body: &str) -> Answer {
        self.send("PUT", path, body).await
    }

    /// POST with a body.
    pub async fn post(&self, path: &str, body: &str) -> Answer {
        self.send("POST", path, body).await
    }
}

/// Runs openssl with `args`; returns (success, stdout + stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (scripts/test.sh installs it)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A fresh temporary directory for one test, removed with everything in it when dropped (so
/// keep it alive as long as its files are used).
pub fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "consul-connect-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

/// See [`temp_dir`].
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PEM files for serving agent-sim's API over HTTPS: a CA, a server certificate for
/// `127.0.0.1` and `localhost`, and a client certificate, all signed by the CA.
pub struct HttpsFiles {
    /// The CA certificate.
    pub ca: std::path::PathBuf,
    /// The server certificate.
    pub server_cert: std::path::PathBuf,
    /// Its key.
    pub server_key: std::path::PathBuf,
    /// The client certificate.
    pub client_cert: std::path::PathBuf,
    /// Its key.
    pub client_key: std::path::PathBuf,
    /// Where they are, removed with this.
    _dir: TempDir,
}

impl HttpsFiles {
    /// Makes a fresh CA and certificates in a new temporary directory.
    pub fn new() -> Self {
        let dir = temp_dir("https");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Consul Agent CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let issue = |names: Vec<String>, cert_name: &str, key_name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("cert");
            (
                write(cert_name, cert.pem()),
                write(key_name, key.serialize_pem()),
            )
        };
        let (server_cert, server_key) = issue(
            vec!["127.0.0.1".into(), "localhost".into()],
            "server.pem",
            "server-key.pem",
        );
        let (client_cert, client_key) = issue(
            vec!["client.dc1.consul".into()],
            "client.pem",
            "client-key.pem",
        );
        Self {
            ca: write("ca.pem", ca.pem()),
            server_cert,
            server_key,
            client_cert,
            client_key,
            _dir: dir,
        }
    }
}
