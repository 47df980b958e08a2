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
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-sim"))
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("agent-sim HTTP API listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Sim { child, addr }
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
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
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

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "agent-sim-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
