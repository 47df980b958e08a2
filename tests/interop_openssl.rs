//! Black-box interop with openssl: real processes and real TLS on loopback.
//!
//! - `openssl s_client`, holding a `web` leaf fetched over HTTP from an embedded agent-sim, talks
//!   to the `echo_server` example binary: TLS 1.3 and 1.2, ALPN, a deny intention, no client
//!   certificate, an ALPN protocol we do not speak.
//! - The `echo_client` example binary talks to `openssl s_server` presenting the `echo` leaf, and
//!   refuses an `s_server` presenting another service's leaf, naming the mismatch.
//!
//! Every wait has a deadline; every child process is killed and reaped when its guard drops,
//! so a failing assertion leaves no orphan behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use agent_sim::Agent;
use support::agent::{start_agent, temp_dir, Raw, TRUST_DOMAIN};

/// The limit for any one step (a line to appear, a process to exit).
const STEP: Duration = Duration::from_secs(20);
/// How long a refused peer is given to produce an (unwanted) answer or close.
const REFUSAL: Duration = Duration::from_secs(10);

fn spiffe(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{service}")
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process with piped stdio. Its stdout arrives line by line on a channel (the channel
/// disconnects at EOF); stdout and stderr are also kept whole for failure messages. Dropping it
/// kills and reaps the process.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stdout_all: Arc<Mutex<String>>,
    stderr_all: Arc<Mutex<String>>,
    /// The stderr copier, done at EOF (see [`Proc::stderr_at_exit`]).
    stderr_pump: Option<std::thread::JoinHandle<()>>,
}

/// Copies `stream` into `all`, sending each line (without its end) to `lines` if given.
fn pump(
    stream: impl Read + Send + 'static,
    lines: Option<Sender<String>>,
    all: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Ok(mut all) = all.lock() {
                        all.push_str(&text);
                    }
                    if let Some(lines) = &lines {
                        let _ = lines.send(text.trim_end_matches(['\n', '\r']).to_owned());
                    }
                }
            }
        }
    })
}

impl Proc {
    fn spawn(name: impl Into<String>, mut cmd: Command) -> Proc {
        let name = name.into();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let (tx, rx) = mpsc::channel();
        let stdout_all = Arc::new(Mutex::new(String::new()));
        let stderr_all = Arc::new(Mutex::new(String::new()));
        pump(child.stdout.take().unwrap(), Some(tx), stdout_all.clone());
        let stderr_pump = pump(child.stderr.take().unwrap(), None, stderr_all.clone());
        Proc {
            name,
            stdin: child.stdin.take(),
            child,
            stdout: rx,
            stdout_all,
            stderr_all,
            stderr_pump: Some(stderr_pump),
        }
    }

    fn stderr(&self) -> String {
        self.stderr_all
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Everything the process printed on stderr, once it has exited: waits for the copier to
    /// reach EOF, which it may reach after the exit is seen.
    fn stderr_at_exit(&mut self) -> String {
        if let Some(pump) = self.stderr_pump.take() {
            let _ = pump.join();
        }
        self.stderr()
    }

    /// Everything the process printed so far, for failure messages.
    fn output(&self) -> String {
        let stdout = self
            .stdout_all
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        format!(
            "\n----- {} stdout -----\n{stdout}\n----- {} stderr -----\n{}\n-----",
            self.name,
            self.name,
            self.stderr()
        )
    }

    /// The next stdout line that satisfies `wanted`, skipping others, within `timeout`.
    fn line_matching(
        &self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no such line from {} within {timeout:?}",
                        self.name
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{} closed its stdout first", self.name))
                }
            }
        }
    }

    /// The next stdout line, whatever it is.
    fn next_line(&self, timeout: Duration) -> Result<String, String> {
        self.line_matching(timeout, |_| true)
    }

    /// The stdout lines still to come, up to EOF; `Err` with those seen when EOF does not come
    /// within `timeout`.
    fn rest_of_stdout(&self, timeout: Duration) -> Result<Vec<String>, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => return Ok(lines),
                Err(RecvTimeoutError::Timeout) => return Err(lines),
            }
        }
    }

    fn try_send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()
    }

    fn send_line(&mut self, line: &str) {
        if let Err(e) = self.try_send_line(line) {
            panic!("cannot write to {}: {e}{}", self.name, self.output());
        }
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The exit status, if the process ends within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => return None,
                Err(e) => panic!("cannot wait for {}: {e}", self.name),
            }
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process and reaps it.
    fn kill(&mut self) {
        self.stdin = None;
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The example binaries
// ---------------------------------------------------------------------------------------------

/// `target/<profile>/examples/<name>`, built by `cargo test`; built here when missing or older
/// than the sources (a `cargo test --test interop_openssl` does not rebuild examples).
fn example_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let examples = BUILT
        .get_or_init(ensure_examples)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    examples.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

const EXAMPLES: [&str; 2] = ["echo_server", "echo_client"];

fn ensure_examples() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/interop_openssl-<hash>
    let deps = exe.parent().ok_or("test binary has no parent directory")?;
    let profile_dir = deps.parent().ok_or("deps directory has no parent")?;
    let examples = profile_dir.join("examples");
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = newest_source(manifest_dir);
    let stale: Vec<&str> = EXAMPLES
        .into_iter()
        .filter(|name| {
            let bin = examples.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            match std::fs::metadata(&bin).and_then(|m| m.modified()) {
                Ok(built) => sources.is_some_and(|newest| newest > built),
                Err(_) => true,
            }
        })
        .collect();
    if stale.is_empty() {
        return Ok(examples);
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(manifest_dir)
        .args(["build", "--profile", &profile]);
    for name in EXAMPLES {
        cmd.args(["--example", name]);
    }
    eprintln!("interop_openssl: building {stale:?} (missing or older than the sources): {cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?} to build the example binaries: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the example binaries failed ({cmd:?}, {}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for name in EXAMPLES {
        let bin = examples.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if !bin.is_file() {
            return Err(format!(
                "{cmd:?} succeeded but {} does not exist",
                bin.display()
            ));
        }
    }
    Ok(examples)
}

/// The newest modification time among the sources the examples are built from.
fn newest_source(root: &Path) -> Option<SystemTime> {
    fn walk(path: &Path, newest: &mut Option<SystemTime>) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    walk(&entry.path(), newest);
                }
            }
        } else if let Ok(modified) = meta.modified() {
            if newest.is_none_or(|n| modified > n) {
                *newest = Some(modified);
            }
        }
    }
    let mut newest = None;
    walk(&root.join("src"), &mut newest);
    for name in EXAMPLES {
        walk(
            &root.join("examples").join(format!("{name}.rs")),
            &mut newest,
        );
    }
    walk(&root.join("Cargo.toml"), &mut newest);
    newest
}

// ---------------------------------------------------------------------------------------------
// Certificates from agent-sim, as files for openssl
// ---------------------------------------------------------------------------------------------

/// A leaf certificate and its key written to files.
struct LeafFiles {
    /// `CertPEM`: the leaf followed by any intermediates.
    cert: PathBuf,
    key: PathBuf,
    /// The intermediates alone, when there are any (openssl's `-cert` reads only the first
    /// certificate of its file).
    chain: Option<PathBuf>,
}

impl LeafFiles {
    /// `-cert`, `-key` and, with intermediates, `-cert_chain`.
    fn openssl_args(&self) -> Vec<String> {
        let mut args = vec![
            "-cert".to_owned(),
            self.cert.display().to_string(),
            "-key".to_owned(),
            self.key.display().to_string(),
        ];
        if let Some(chain) = &self.chain {
            args.push("-cert_chain".to_owned());
            args.push(chain.display().to_string());
        }
        args
    }
}

/// Every `RootCert` of `/v1/agent/connect/ca/roots`, in one file.
async fn write_roots(raw: &Raw, dir: &Path) -> PathBuf {
    let answer = raw.get("/v1/agent/connect/ca/roots").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json = answer.json();
    let roots = json["Roots"].as_array().expect("Roots is an array");
    assert!(!roots.is_empty(), "no roots: {}", answer.body);
    let mut pem = String::new();
    for root in roots {
        let cert = root["RootCert"].as_str().expect("RootCert is a string");
        pem.push_str(cert.trim_end());
        pem.push('\n');
    }
    let path = dir.join("roots.pem");
    std::fs::write(&path, pem).expect("write roots.pem");
    path
}

/// `service`'s leaf from `/v1/agent/connect/ca/leaf/<service>`.
async fn write_leaf(raw: &Raw, dir: &Path, service: &str) -> LeafFiles {
    let answer = raw
        .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json = answer.json();
    assert_eq!(json["ServiceURI"], spiffe(service), "{}", answer.body);
    let cert_pem = json["CertPEM"].as_str().expect("CertPEM");
    let key_pem = json["PrivateKeyPEM"].as_str().expect("PrivateKeyPEM");
    let cert = dir.join(format!("{service}.pem"));
    let key = dir.join(format!("{service}.key"));
    std::fs::write(&cert, cert_pem).expect("write leaf");
    std::fs::write(&key, key_pem).expect("write key");
    const END: &str = "-----END CERTIFICATE-----";
    let intermediates = cert_pem
        .find(END)
        .map(|i| cert_pem[i + END.len()..].trim())
        .unwrap_or_default();
    let chain = (!intermediates.is_empty()).then(|| {
        let path = dir.join(format!("{service}_chain.pem"));
        std::fs::write(&path, format!("{intermediates}\n")).expect("write chain");
        path
    });
    LeafFiles { cert, key, chain }
}

// ---------------------------------------------------------------------------------------------
// echo_server and openssl s_client
// ---------------------------------------------------------------------------------------------

/// The `echo_server` example running as `echo` against `agent`.
struct EchoServer {
    proc: Proc,
    port: u16,
}

impl EchoServer {
    async fn start(agent: &Agent, raw: &Raw) -> EchoServer {
        Self::start_with(agent, raw, &[]).await
    }

    /// `echo_server` with `extra` arguments.
    async fn start_with(agent: &Agent, raw: &Raw, extra: &[&str]) -> EchoServer {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(example_binary("echo_server"));
        cmd.args(["--service", "echo", "--listen", &listen])
            .args(extra)
            .env("CONSUL_HTTP_ADDR", agent.addr().to_string())
            .env_remove("CONSUL_HTTP_TOKEN")
            .env("RUST_LOG", "consul_connect=debug");
        let proc = Proc::spawn("echo_server", cmd);
        let line = proc
            .line_matching(STEP, |l| l.starts_with("echo_server listening on "))
            .unwrap_or_else(|e| panic!("{e}{}", proc.output()));
        assert_eq!(
            line,
            format!("echo_server listening on {listen} as {}", spiffe("echo")),
            "{}",
            proc.output()
        );

        let answer = raw.get("/v1/agent/services").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let services = answer.json();
        let echo = &services["echo"];
        assert_eq!(echo["Service"], "echo", "not registered: {}", answer.body);
        assert_eq!(echo["Port"], port, "{}", answer.body);
        assert_eq!(echo["Address"], "127.0.0.1", "{}", answer.body);
        assert_eq!(echo["Connect"]["Native"], true, "{}", answer.body);
        EchoServer { proc, port }
    }

    /// Checks it is still serving, then kills and reaps it.
    fn stop(mut self) {
        assert!(
            self.proc.is_running(),
            "echo_server exited during the test{}",
            self.proc.output()
        );
        self.proc.kill();
        assert!(
            self.proc.wait_exit(STEP).is_some(),
            "echo_server not reaped"
        );
    }
}

/// Certificates for the `s_client` runs: the roots and `web`'s leaf.
struct ClientPki {
    _dir: support::agent::TempDir,
    roots: PathBuf,
    web: LeafFiles,
}

async fn client_pki(raw: &Raw, test: &str) -> ClientPki {
    let dir = temp_dir(test);
    let roots = write_roots(raw, &dir).await;
    let web = write_leaf(raw, &dir, "web").await;
    ClientPki {
        _dir: dir,
        roots,
        web,
    }
}

/// `openssl s_client` to `port`, verifying the server against the roots (no host name: the
/// server has only a SPIFFE URI), as `client` when given.
fn s_client(port: u16, roots: &Path, client: Option<&LeafFiles>, extra: &[&str]) -> Proc {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(roots)
        .arg("-verify_return_error");
    if let Some(leaf) = client {
        cmd.args(leaf.openssl_args());
    }
    cmd.args(extra);
    let label = if client.is_some() { "" } else { " (no cert)" };
    Proc::spawn(format!("openssl s_client{label} {}", extra.join(" ")), cmd)
}

/// Sends `line` and expects nothing back: the connection closes (s_client exits) without an
/// echo. Returns what s_client printed on stderr.
fn assert_refused(mut client: Proc, line: &str) -> String {
    // The write fails when s_client has already gone (a TLS 1.2 handshake refused outright):
    // that is a refusal too.
    let _ = client.try_send_line(line);
    match client.stdout.recv_timeout(REFUSAL) {
        Ok(got) => panic!(
            "refused client got {got:?} back (sent {line:?}){}",
            client.output()
        ),
        Err(RecvTimeoutError::Timeout) => panic!(
            "no answer but the connection is still open after {REFUSAL:?} (sent {line:?}){}",
            client.output()
        ),
        Err(RecvTimeoutError::Disconnected) => {}
    }
    assert!(
        client.wait_exit(STEP).is_some(),
        "s_client did not exit after its stdout closed{}",
        client.output()
    );
    client.stderr_at_exit()
}

fn unique(label: &str) -> String {
    format!("{label}-{:08x}", rand::random::<u32>())
}

// ---------------------------------------------------------------------------------------------
// s_client -> echo_server
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_client_with_web_leaf_is_echoed_by_echo_server_over_tls13_and_tls12() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let server = EchoServer::start(&agent, &raw).await;
    let pki = client_pki(&raw, "interop-echo").await;

    for (label, extra) in [
        ("default", vec!["-quiet"]),
        ("tls1_3", vec!["-quiet", "-tls1_3"]),
        ("tls1_2", vec!["-quiet", "-tls1_2"]),
    ] {
        let mut client = s_client(server.port, &pki.roots, Some(&pki.web), &extra);
        for round in 0..2 {
            let line = unique(&format!("hello-{label}-{round}"));
            client.send_line(&line);
            let echoed = client.next_line(STEP);
            assert_eq!(echoed, Ok(line), "{label}{}", client.output());
        }
        drop(client);
    }

    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_client_negotiates_alpn_and_tls_version_with_echo_server() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let server = EchoServer::start(&agent, &raw).await;
    let pki = client_pki(&raw, "interop-alpn").await;

    for (extra, version, alpn) in [
        (vec!["-alpn", "h2"], "TLSv1.3", "h2"),
        (vec!["-alpn", "http/1.1"], "TLSv1.3", "http/1.1"),
        (vec!["-alpn", "h2,http/1.1"], "TLSv1.3", "h2"),
        (vec!["-tls1_2", "-alpn", "h2"], "TLSv1.2", "h2"),
        (vec!["-tls1_2", "-alpn", "http/1.1"], "TLSv1.2", "http/1.1"),
    ] {
        // Not -quiet: s_client prints the session, and quits at stdin EOF.
        let mut client = s_client(server.port, &pki.roots, Some(&pki.web), &extra);
        let line = unique("ping-alpn");
        client.send_line(&line);
        let echoed = client.line_matching(STEP, |l| l == line);
        assert_eq!(echoed, Ok(line), "{extra:?}{}", client.output());
        client.close_stdin();
        assert!(
            client.rest_of_stdout(STEP).is_ok(),
            "s_client did not finish at stdin EOF{}",
            client.output()
        );
        assert!(client.wait_exit(STEP).is_some(), "{}", client.output());
        let output = client.output();
        assert!(
            output.contains(&format!("ALPN protocol: {alpn}\n")),
            "{extra:?}: expected ALPN {alpn}{output}"
        );
        assert!(
            output.contains(&format!("New, {version}, Cipher is ")),
            "{extra:?}: expected {version}{output}"
        );
        assert!(
            output.contains("Verify return code: 0 (ok)"),
            "{extra:?}{output}"
        );
    }

    // Like Consul (tests/data/consul-1.4.5/s_client_alpn_unknown.txt): a protocol neither
    // h2 nor http/1.1 gets the no_application_protocol alert, and no echo.
    let client = s_client(
        server.port,
        &pki.roots,
        Some(&pki.web),
        &["-quiet", "-alpn", "foo"],
    );
    let stderr = assert_refused(client, &unique("ping-alpn-foo"));
    assert!(
        stderr.contains("no application protocol"),
        "expected the no_application_protocol alert:\n{stderr}"
    );

    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_client_gets_no_echo_once_an_intention_denies_web() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let server = EchoServer::start(&agent, &raw).await;
    let pki = client_pki(&raw, "interop-deny").await;

    // Allowed by default first, so the refusal below is the intention's doing.
    let mut client = s_client(server.port, &pki.roots, Some(&pki.web), &["-quiet"]);
    let line = unique("before-deny");
    client.send_line(&line);
    assert_eq!(client.next_line(STEP), Ok(line), "{}", client.output());
    drop(client);

    let created = raw
        .post(
            "/v1/connect/intentions",
            r#"{"SourceName":"web","DestinationName":"echo","Action":"deny"}"#,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let authorize = raw
        .post(
            "/v1/agent/connect/authorize",
            &serde_json::json!({
                "Target": "echo",
                "ClientCertURI": spiffe("web"),
                "ClientCertSerial": "01",
            })
            .to_string(),
        )
        .await;
    assert_eq!(authorize.status, 200, "{}", authorize.body);
    assert_eq!(
        authorize.json()["Authorized"],
        false,
        "agent-sim itself does not deny: {}",
        authorize.body
    );

    for extra in [vec!["-quiet"], vec!["-quiet", "-tls1_2"]] {
        let client = s_client(server.port, &pki.roots, Some(&pki.web), &extra);
        assert_refused(client, &unique("after-deny"));
    }

    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_with_the_intentions_authorizer_refuses_inside_the_handshake() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let created = raw
        .post(
            "/v1/connect/intentions",
            r#"{"SourceName":"web","DestinationName":"echo","Action":"deny"}"#,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let server = EchoServer::start_with(&agent, &raw, &["--authorizer", "intentions"]).await;
    let pki = client_pki(&raw, "interop-intentions").await;
    let dir = temp_dir("interop-intentions-api");
    let api = write_leaf(&raw, &dir, "api").await;

    // web is denied by the intention; api, which no intention names, is allowed by default,
    // so the refusal is the intention's and not a fail-closed start.
    for extra in [vec!["-quiet"], vec!["-quiet", "-tls1_2"]] {
        let client = s_client(server.port, &pki.roots, Some(&pki.web), &extra);
        let stderr = assert_refused(client, &unique("denied"));
        assert!(
            stderr.contains("access denied") || stderr.contains("alert number 49"),
            "refused inside the handshake with access_denied: {stderr}"
        );
        let mut client = s_client(server.port, &pki.roots, Some(&api), &extra);
        let line = unique("allowed");
        client.send_line(&line);
        assert_eq!(client.next_line(STEP), Ok(line), "{}", client.output());
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_client_without_a_client_certificate_gets_no_echo() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let server = EchoServer::start(&agent, &raw).await;
    let pki = client_pki(&raw, "interop-nocert").await;

    for extra in [vec!["-quiet"], vec!["-quiet", "-tls1_2"]] {
        let client = s_client(server.port, &pki.roots, None, &extra);
        assert_refused(client, &unique("no-cert"));
    }

    // The same server still echoes a client that does present its leaf.
    let mut client = s_client(server.port, &pki.roots, Some(&pki.web), &["-quiet"]);
    let line = unique("with-cert");
    client.send_line(&line);
    assert_eq!(client.next_line(STEP), Ok(line), "{}", client.output());
    drop(client);

    server.stop();
}

// ---------------------------------------------------------------------------------------------
// echo_client -> s_server
// ---------------------------------------------------------------------------------------------

/// `openssl s_server` on a fresh port presenting `leaf`, requiring a client certificate that
/// chains to `roots`; returns once it accepts.
fn s_server(roots: &Path, leaf: &LeafFiles, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.arg("s_server")
        .arg("-accept")
        .arg(port.to_string())
        .args(leaf.openssl_args())
        .arg("-CAfile")
        .arg(roots)
        .args(["-Verify", "1", "-verify_return_error", "-naccept", "1"])
        .args(extra);
    let proc = Proc::spawn(format!("openssl s_server {}", extra.join(" ")), cmd);
    if let Err(e) = proc.line_matching(STEP, |l| l == "ACCEPT") {
        panic!("{e}{}", proc.output());
    }
    (proc, port)
}

/// The `echo_client` example as `web`, dialing `echo` at `port`.
fn echo_client(agent: &Agent, port: u16) -> Proc {
    let mut cmd = Command::new(example_binary("echo_client"));
    cmd.args([
        "--service",
        "web",
        "--upstream",
        "echo",
        "--addr",
        &format!("127.0.0.1:{port}"),
    ])
    .env("CONSUL_HTTP_ADDR", agent.addr().to_string())
    .env_remove("CONSUL_HTTP_TOKEN")
    .env("RUST_LOG", "consul_connect=debug");
    Proc::spawn("echo_client", cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_client_talks_to_s_server_presenting_the_echo_leaf() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let dir = temp_dir("interop-s-server");
    let roots = write_roots(&raw, &dir).await;
    let echo = write_leaf(&raw, &dir, "echo").await;

    for (label, extra) in [("tls1_3", vec![]), ("tls1_2", vec!["-tls1_2"])] {
        let (mut server, port) = s_server(&roots, &echo, &extra);
        let mut client = echo_client(&agent, port);

        let question = unique(&format!("hello-from-echo_client-{label}"));
        client.send_line(&question);
        // s_server prints what it receives; the test answers through its stdin (no echo mode).
        let received = server.line_matching(STEP, |l| l.ends_with(&question));
        assert_eq!(
            received,
            Ok(question.clone()),
            "{label}{}{}",
            server.output(),
            client.output()
        );
        // Lines starting with Q, q, P, S, ... are s_server commands; this one is not.
        let answer = unique(&format!("pong-from-s_server-{label}"));
        server.send_line(&answer);
        let printed = client.next_line(STEP);
        assert_eq!(
            printed,
            Ok(answer),
            "{label}{}{}",
            client.output(),
            server.output()
        );

        client.close_stdin();
        let status = client.wait_exit(STEP);
        assert!(
            status.is_some_and(|s| s.success()),
            "{label}: echo_client exit {status:?}{}",
            client.output()
        );
        // With -naccept 1, s_server ends once echo_client has gone.
        assert!(
            server.wait_exit(STEP).is_some(),
            "{label}: s_server still running{}",
            server.output()
        );
        // s_server saw web's leaf, and the version asked for (TLS 1.3 suites are TLS_*).
        let seen = server.output();
        let cipher = match label {
            "tls1_2" => "CIPHER is ECDHE-ECDSA-",
            _ => "CIPHER is TLS_",
        };
        assert!(seen.contains(cipher), "{label}: expected {cipher}{seen}");
        assert!(seen.contains("subject=CN = web"), "{label}{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_client_refuses_s_server_presenting_another_services_leaf() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let dir = temp_dir("interop-s-server-db");
    let roots = write_roots(&raw, &dir).await;
    let db = write_leaf(&raw, &dir, "db").await;

    let (server, port) = s_server(&roots, &db, &[]);
    let mut client = echo_client(&agent, port);
    let _ = client.try_send_line(&unique("hello-db"));
    let status = client.wait_exit(STEP);
    let output = format!("{}{}", client.output(), server.output());
    let status = status.unwrap_or_else(|| panic!("echo_client did not exit{output}"));
    assert!(!status.success(), "echo_client accepted db as echo{output}");
    assert!(
        client.rest_of_stdout(STEP).is_ok_and(|l| l.is_empty()),
        "echo_client printed an answer{output}"
    );
    let stderr = client.stderr();
    let error = stderr
        .lines()
        .find_map(|l| l.strip_prefix("echo_client: "))
        .unwrap_or_else(|| panic!("no error line from echo_client{output}"));
    // The dialer expects `echo` in any of our trust domains, so it may print a pattern for
    // it (`spiffe://*/ns/*/dc/*/svc/echo`); what db presented is a full identity.
    assert!(
        error.contains(&spiffe("db")),
        "the error does not name the presented identity (db): {error}{output}"
    );
    assert!(
        error.contains("/svc/echo"),
        "the error does not name the expected service (echo): {error}{output}"
    );
}
