//! The `agent-sim` binary: its listening line, ACL settings from flags and from a config file
//! (JSON or HCL), `--data-dir` surviving SIGKILL in the middle of acknowledged writes, and a
//! clean SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running agent-sim process, killed on drop.
struct Sim {
    child: Child,
    addr: String,
}

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let mut all = vec!["--http-addr", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (child, lines) = Self::spawn(&all, 1);
        let addr = lines[0]
            .strip_prefix("agent-sim HTTP API listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {:?}", lines[0]))
            .to_owned();
        Sim { child, addr }
    }

    /// Starts agent-sim with exactly `args` and returns it with its first `lines` lines.
    fn spawn(args: &[&str], lines: usize) -> (Child, Vec<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-sim"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let read = (0..lines)
            .map(|_| {
                let mut line = String::new();
                stdout.read_line(&mut line).unwrap();
                line.trim().to_owned()
            })
            .collect();
        (child, read)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on its own connection: (status, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    http_over(stream, addr, method, path, headers, body)
}

/// One HTTP/1.1 request over `stream`, which the answer closes: (status, body).
fn http_over(
    mut stream: impl Read + Write,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// A fresh temporary directory, removed with its files when dropped.
fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "agent-sim-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn acl_settings_come_from_flags_and_from_a_1_4_config_file() {
    let sim = Sim::start(&[
        "--acl-enabled",
        "--acl-default-policy",
        "deny",
        "--acl-initial-management-token",
        "flag-root",
    ]);
    let (status, body) = http(&sim.addr, "GET", "/v1/agent/connect/ca/leaf/web", &[], "").unwrap();
    assert_eq!((status, body.as_str()), (403, "Permission denied"));
    let (status, _) = http(
        &sim.addr,
        "GET",
        "/v1/agent/connect/ca/leaf/web",
        &[("X-Consul-Token", "flag-root")],
        "",
    )
    .unwrap();
    assert_eq!(status, 200);
    drop(sim);

    let dir = temp_dir("config");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"acl_datacenter":"dc1","acl_master_token":"file-root","acl_default_policy":"deny"}"#,
    )
    .unwrap();
    let sim = Sim::start(&["--config-file", config.to_str().unwrap()]);
    let (status, _) = http(&sim.addr, "GET", "/v1/agent/connect/ca/leaf/web", &[], "").unwrap();
    assert_eq!(
        status, 403,
        "acl_master_token turns ACLs on with default deny"
    );
    let (status, body) = http(
        &sim.addr,
        "GET",
        "/v1/acl/token/self",
        &[("X-Consul-Token", "file-root")],
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["Policies"][0]["Name"], "global-management");
}

#[test]
fn acl_settings_come_from_an_hcl_config_file() {
    let dir = temp_dir("config-hcl");
    let config = dir.join("acl.hcl");
    std::fs::write(
        &config,
        "# as in Consul's own config files\nacl {\n  enabled = true\n  default_policy = \"deny\"\n  tokens {\n    master = \"hcl-root\"\n  }\n}\n",
    )
    .unwrap();
    let sim = Sim::start(&["--config-file", config.to_str().unwrap()]);
    let (status, _) = http(&sim.addr, "GET", "/v1/agent/connect/ca/leaf/web", &[], "").unwrap();
    assert_eq!(status, 403, "default deny from the acl block");
    let (status, body) = http(
        &sim.addr,
        "GET",
        "/v1/acl/token/self",
        &[("X-Consul-Token", "hcl-root")],
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["Policies"][0]["Name"], "global-management");
    drop(sim);

    // A syntax error stops it, naming the file and the place.
    std::fs::write(&config, "acl {\n  enabled = \n}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent-sim"))
        .args(["--http-addr", "127.0.0.1:0", "--config-file"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("Error parsing {}: At 3:1:", config.display())),
        "{stderr}"
    );

    // A value of the wrong type stops it too, naming the file, instead of being ignored.
    std::fs::write(&config, "acl {\n  enabled = \"yes\"\n}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent-sim"))
        .args(["--http-addr", "127.0.0.1:0", "--config-file"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&config.display().to_string()) && stderr.contains("invalid type"),
        "{stderr}"
    );
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = temp_dir("durable");
    let data_dir = dir.to_str().unwrap().to_owned();
    let sim = Sim::start(&["--data-dir", &data_dir]);
    let (_, roots_before) = http(&sim.addr, "GET", "/v1/agent/connect/ca/roots", &[], "").unwrap();
    let roots_before = json(&roots_before);
    let (_, leaf) = http(&sim.addr, "GET", "/v1/agent/connect/ca/leaf/web", &[], "").unwrap();
    let old_leaf = json(&leaf)["CertPEM"].as_str().unwrap().to_owned();
    let (status, _) = http(
        &sim.addr,
        "PUT",
        "/v1/agent/service/register",
        &[],
        r#"{"Name":"db","Port":5432,"Connect":{"Native":true}}"#,
    )
    .unwrap();
    assert_eq!(status, 200);

    // A stream of intention writes; the process is killed while it runs.
    let addr = sim.addr.clone();
    let writer = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            let body =
                format!(r#"{{"SourceName":"web-{i}","DestinationName":"db","Action":"allow"}}"#);
            match http(&addr, "POST", "/v1/connect/intentions", &[], &body) {
                Ok((200, body)) => {
                    acknowledged.push(json(&body)["ID"].as_str().unwrap().to_owned())
                }
                Ok((status, body)) => panic!("write {i} refused: {status} {body}"),
                Err(_) => break,
            }
        }
        acknowledged
    });
    // Kill once writes are flowing: wait until some are on disk.
    let state = dir.join("state.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let saved = std::fs::read_to_string(&state).unwrap_or_default();
        if saved.matches("\"SourceName\":\"web-").count() >= 25 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes never reached the data dir"
        );
        std::thread::yield_now();
    }
    let mut sim = sim;
    sim.child.kill().unwrap(); // SIGKILL
    sim.child.wait().unwrap();
    let acknowledged = writer.join().unwrap();
    // Writes are sequential: at most the one in flight was saved but not acknowledged.
    assert!(
        acknowledged.len() >= 24,
        "only {} writes acknowledged",
        acknowledged.len()
    );

    let again = Sim::start(&["--data-dir", &data_dir]);
    let (status, list) = http(&again.addr, "GET", "/v1/connect/intentions", &[], "").unwrap();
    assert_eq!(status, 200);
    let stored: Vec<String> = json(&list)
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ID"].as_str().unwrap().to_owned())
        .collect();
    for id in &acknowledged {
        assert!(
            stored.contains(id),
            "acknowledged intention {id} lost ({} acknowledged, {} stored)",
            acknowledged.len(),
            stored.len()
        );
    }
    let (_, roots_after) = http(&again.addr, "GET", "/v1/agent/connect/ca/roots", &[], "").unwrap();
    let roots_after = json(&roots_after);
    assert_eq!(roots_after["TrustDomain"], roots_before["TrustDomain"]);
    assert_eq!(roots_after["ActiveRootID"], roots_before["ActiveRootID"]);
    let (_, services) = http(&again.addr, "GET", "/v1/agent/services", &[], "").unwrap();
    assert!(json(&services).get("db").is_some(), "services survive");

    // A leaf issued before the crash still verifies against the roots after it.
    let root_pem = dir.join("root.pem");
    let leaf_pem = dir.join("leaf.pem");
    std::fs::write(
        &root_pem,
        roots_after["Roots"][0]["RootCert"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(&leaf_pem, &old_leaf).unwrap();
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            root_pem.to_str().unwrap(),
            leaf_pem.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // New leaves never reuse a serial from before the crash.
    let (_, new_leaf) = http(&again.addr, "GET", "/v1/agent/connect/ca/leaf/web", &[], "").unwrap();
    assert_ne!(json(&new_leaf)["SerialNumber"], json(&leaf)["SerialNumber"]);
}

#[cfg(unix)]
#[test]
fn sigterm_stops_cleanly() {
    let mut sim = Sim::start(&[]);
    let (status, _) = http(&sim.addr, "GET", "/v1/agent/self", &[], "").unwrap();
    assert_eq!(status, 200);
    let pid = sim.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = sim.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written as PEM files in
/// `dir`: (ca, server cert, server key, client cert, client key).
fn tls_files(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let issue = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = issue(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client, client_key) = issue(vec!["client.dc1.consul".into()]);
    let files = [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ]
    .map(|name| dir.join(name));
    for (path, pem) in files
        .iter()
        .zip([ca.pem(), server, server_key, client, client_key])
    {
        std::fs::write(path, pem).unwrap();
    }
    files
}

/// One HTTPS request to `addr`, verifying the server with `ca` and presenting `client` (cert,
/// key) when given.
fn https(
    addr: &str,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    http_over(
        rustls::StreamOwned::new(connection, tcp),
        addr,
        "GET",
        path,
        &[],
        "",
    )
}

#[test]
fn https_from_a_consul_config_file_beside_http() {
    let dir = temp_dir("https");
    let [ca, cert, key, client, client_key] = tls_files(&dir);
    let config = dir.join("tls.hcl");
    std::fs::write(
        &config,
        format!(
            "ports {{ https = 0 }}\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             verify_incoming_https = true\n",
            cert.display(),
            key.display(),
            ca.display()
        ),
    )
    .unwrap();
    let (child, lines) = Sim::spawn(
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--config-file",
            config.to_str().unwrap(),
        ],
        2,
    );
    let sim = Sim {
        child,
        addr: lines[0]
            .strip_prefix("agent-sim HTTP API listening on http://")
            .unwrap_or_else(|| panic!("{lines:?}"))
            .to_owned(),
    };
    let https_addr = lines[1]
        .strip_prefix("agent-sim HTTPS API listening on https://")
        .unwrap_or_else(|| panic!("{lines:?}"));
    // Plain HTTP still answers, as Consul serves both.
    let (status, _) = http(&sim.addr, "GET", "/v1/agent/self", &[], "").unwrap();
    assert_eq!(status, 200);
    let (status, body) = https(
        https_addr,
        &ca,
        Some((&client, &client_key)),
        "/v1/agent/connect/ca/roots",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["Roots"][0]["RootCert"].is_string());
    // verify_incoming_https: a client without a certificate is refused in the handshake.
    let err = https(https_addr, &ca, None, "/v1/agent/self").unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn a_bad_tls_file_stops_start_up_naming_the_file() {
    let dir = temp_dir("badtls");
    let [_, cert, key, ..] = tls_files(&dir);
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not PEM\n").unwrap();
    for (cert, key, named) in [(&junk, &key, "cert_file"), (&cert, &junk, "key_file")] {
        let out = Command::new(env!("CARGO_BIN_EXE_agent-sim"))
            .args(["--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0"])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{named} {}", junk.display())),
            "{stderr}"
        );
    }
    let missing = dir.join("missing.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_agent-sim"))
        .args(["--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0"])
        .arg("--tls-cert-file")
        .arg(&missing)
        .arg("--tls-key-file")
        .arg(&key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cert_file {}: No such file", missing.display())),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn http_on_a_unix_socket_from_the_flag_or_the_config_file() {
    let dir = temp_dir("unix");
    let socket = dir.join("agent.sock");
    let url = format!("unix://{}", socket.display());
    let config = dir.join("unix.json");
    std::fs::write(
        &config,
        serde_json::json!({ "addresses": { "http": url } }).to_string(),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for args in [["--http-addr", url.as_str()], ["--config-file", config]] {
        // A stale file at the path is replaced, as Consul does.
        std::fs::write(&socket, "stale").unwrap();
        let (child, lines) = Sim::spawn(&args, 1);
        let mut sim = Sim {
            child,
            addr: String::new(),
        };
        assert_eq!(lines[0], format!("agent-sim HTTP API listening on {url}"));
        let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (status, body) = http_over(
            stream,
            "localhost",
            "GET",
            "/v1/agent/connect/ca/roots",
            &[],
            "",
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(json(&body)["Roots"][0]["RootCert"].is_string());
        // SIGTERM: a clean exit that removes the socket.
        let pid = sim.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        assert!(sim.child.wait().unwrap().success());
        assert!(!socket.exists());
    }
}
