//! The `agent-sim` binary: Consul's Connect agent API over HTTP (TCP or a unix socket) and,
//! when asked, HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agent_sim::acl_rules::DefaultPolicy;
use agent_sim::tls::TlsFiles;
use clap::Parser;

/// Consul's Connect surface in one process: CA, intentions, discovery, blocking queries.
#[derive(Debug, Parser)]
#[command(name = "agent-sim", version)]
struct Cli {
    /// In-memory state, lost at exit (the default unless --data-dir is given).
    #[arg(long, conflicts_with = "data_dir")]
    dev: bool,
    /// Keep state in this directory (CA key and roots, intentions, services, ACLs), saved
    /// before each write is acknowledged.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Address of the HTTP API: `host:port`, or `unix:///path` for a unix socket (Consul's
    /// `addresses.http`). Default `127.0.0.1:8500`.
    #[arg(long, value_parser = parse_http_addr)]
    http_addr: Option<HttpAddr>,
    /// Also serve the API over HTTPS on this address (Consul's `ports.https`); needs
    /// --tls-cert-file and --tls-key-file.
    #[arg(long)]
    https_addr: Option<SocketAddr>,
    /// The HTTPS server's certificate chain, PEM (Consul's `cert_file`).
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// The HTTPS server's private key, PEM (Consul's `key_file`).
    #[arg(long)]
    tls_key_file: Option<PathBuf>,
    /// CA certificates, PEM, for verifying HTTPS clients (Consul's `ca_file`).
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,
    /// Require HTTPS clients to present a certificate signed by --tls-ca-file (Consul's
    /// `verify_incoming_https`).
    #[arg(long)]
    tls_verify_incoming: bool,
    /// The Consul version to answer as: 1.4.5 or 1.10.9.
    #[arg(long, default_value_t)]
    consul_version: agent_sim::profile::ConsulVersion,
    /// Datacenter name.
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    /// The primary datacenter (Consul's `primary_datacenter`); with --join-wan, this agent
    /// is a secondary datacenter of it.
    #[arg(long, requires = "join_wan")]
    primary_datacenter: Option<String>,
    /// HTTP address (`host:port`) of the primary datacenter's agent-sim to join.
    #[arg(long, requires = "primary_datacenter")]
    join_wan: Option<String>,
    /// Node name.
    #[arg(long, default_value = "agent-sim")]
    node_name: String,
    /// Leaf certificate lifetime, a Go duration (`72h`, `90m`).
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    leaf_cert_ttl: std::time::Duration,
    /// Fixed cluster ID (a UUID); random when unset.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Enforce ACLs.
    #[arg(long)]
    acl_enabled: bool,
    /// What tokens may do where no rule matches: allow or deny.
    #[arg(long, value_parser = ["allow", "deny"])]
    acl_default_policy: Option<String>,
    /// A management token to create at start.
    #[arg(
        long,
        env = "AGENT_SIM_ACL_INITIAL_MANAGEMENT_TOKEN",
        hide_env_values = true
    )]
    acl_initial_management_token: Option<String>,
    /// A config file (HCL if its name ends in `.hcl`, JSON otherwise) with Consul's ACL
    /// settings: `acl_master_token`, `acl_default_policy`, or the `acl` block (`enabled`,
    /// `default_policy`, `tokens.initial_management` / `tokens.master`); and Consul 1.10's
    /// listener settings: `client_addr`, `addresses.http` / `addresses.https`, `ports.http` /
    /// `ports.https`, `cert_file`, `key_file`, `ca_file`, `verify_incoming` /
    /// `verify_incoming_https`. Flags win over the file.
    #[arg(long)]
    config_file: Option<std::path::PathBuf>,
}

/// Where the HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HttpAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

fn parse_http_addr(s: &str) -> Result<HttpAddr, String> {
    match s.strip_prefix("unix://") {
        Some("") => Err("expected unix:///path/to/socket".to_owned()),
        Some(path) => Ok(HttpAddr::Unix(PathBuf::from(path))),
        None => s
            .parse()
            .map(HttpAddr::Tcp)
            .map_err(|_| format!("expected host:port or unix:///path, not {s:?}")),
    }
}

/// Settings from a config file: ACLs in Consul's 1.4 (`acl_master_token`) or later (`acl {}`)
/// spelling, and Consul 1.10's listeners and TLS files.
#[derive(Debug, Default)]
struct FileConfig {
    enabled: Option<bool>,
    default_policy: Option<String>,
    management_token: Option<String>,
    http_addr: Option<HttpAddr>,
    https_addr: Option<SocketAddr>,
    tls: TlsFiles,
}

/// A config file as Consul spells it: the fields agent-sim reads, typed. Consul 1.4's
/// top-level `acl_*` keys and the later `acl {}` block are both accepted.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct RawConfig {
    acl: RawAcl,
    acl_default_policy: Option<String>,
    acl_master_token: Option<String>,
    client_addr: Option<String>,
    addresses: Listeners<Option<String>>,
    ports: Listeners<Option<i64>>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    verify_incoming: Option<bool>,
    verify_incoming_https: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct RawAcl {
    enabled: Option<bool>,
    default_policy: Option<String>,
    tokens: RawTokens,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct RawTokens {
    initial_management: Option<String>,
    master: Option<String>,
}

/// `addresses.*` or `ports.*`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Listeners<T> {
    http: T,
    https: T,
}

fn read_config_file(path: &std::path::Path) -> Result<FileConfig, String> {
    let json = agent_sim::config::read_file(path).map_err(|e| e.to_string())?;
    let in_file = |e: String| format!("{}: {e}", path.display());
    let raw: RawConfig = serde_json::from_value(json).map_err(|e| in_file(e.to_string()))?;
    let listener =
        |kind: &str, address: &Option<String>, port: Option<i64>, default: Option<u16>| {
            file_addr(
                kind,
                address.as_deref().or(raw.client_addr.as_deref()),
                port,
                default,
            )
            .map_err(in_file)
        };
    let https_addr = match listener("https", &raw.addresses.https, raw.ports.https, None)? {
        Some(HttpAddr::Tcp(addr)) => Some(addr),
        Some(HttpAddr::Unix(_)) => {
            return Err(in_file("HTTPS on a unix socket is not supported".into()))
        }
        None => None,
    };
    let config = FileConfig {
        http_addr: listener("http", &raw.addresses.http, raw.ports.http, Some(8500))?,
        https_addr,
        tls: TlsFiles {
            cert_file: raw.cert_file,
            key_file: raw.key_file,
            ca_file: raw.ca_file,
            verify_incoming: raw.verify_incoming_https.unwrap_or(false)
                || raw.verify_incoming.unwrap_or(false),
        },
        // In 1.4 setting acl_master_token (with acl_datacenter) turned ACLs on.
        enabled: raw
            .acl
            .enabled
            .or(raw.acl_master_token.as_ref().map(|_| true)),
        default_policy: raw.acl.default_policy.or(raw.acl_default_policy),
        management_token: raw
            .acl
            .tokens
            .initial_management
            .or(raw.acl.tokens.master)
            .or(raw.acl_master_token),
    };
    if let Some(policy) = &config.default_policy {
        if policy != "allow" && policy != "deny" {
            return Err(in_file(format!(
                "acl default policy must be allow or deny, not {policy:?}"
            )));
        }
    }
    Ok(config)
}

/// A listener from `addresses.<kind>` (or `client_addr`) and `ports.<kind>`, as Consul
/// combines them; none when the file sets neither (or, without a default port, no port).
fn file_addr(
    kind: &str,
    address: Option<&str>,
    port: Option<i64>,
    default_port: Option<u16>,
) -> Result<Option<HttpAddr>, String> {
    if let Some(path) = address.and_then(|a| a.strip_prefix("unix://")) {
        return Ok(Some(HttpAddr::Unix(PathBuf::from(path))));
    }
    if address.is_none() && port.is_none() {
        return Ok(None);
    }
    // Consul's -1 turns a listener off.
    let port = match port.or(default_port.map(i64::from)) {
        None | Some(-1) => return Ok(None),
        Some(port) => {
            u16::try_from(port).map_err(|_| format!("ports.{kind}: invalid port {port}"))?
        }
    };
    let ip: std::net::IpAddr = address
        .unwrap_or("127.0.0.1")
        .parse()
        .map_err(|_| format!("addresses.{kind}: invalid IP address {address:?}"))?;
    Ok(Some(HttpAddr::Tcp(SocketAddr::new(ip, port))))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    consul_connect_types::go::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match agent_sim::runtime() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("agent-sim: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let file = match cli.config_file.as_deref().map(read_config_file).transpose() {
        Ok(file) => file.unwrap_or_default(),
        Err(e) => {
            eprintln!("agent-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Its clients are other processes: spinning spares them a CPU wake-up per request.
    let mut builder = agent_sim::Agent::builder().spin_before_sleep(true);
    let http_addr = cli
        .http_addr
        .or(file.http_addr)
        .unwrap_or(HttpAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8500))));
    builder = match http_addr {
        HttpAddr::Tcp(addr) => builder.http_addr(addr),
        HttpAddr::Unix(path) => builder.http_unix_socket(path),
    };
    if let Some(addr) = cli.https_addr.or(file.https_addr) {
        builder = builder.https_addr(addr);
    }
    let tls = TlsFiles {
        cert_file: cli.tls_cert_file.or(file.tls.cert_file),
        key_file: cli.tls_key_file.or(file.tls.key_file),
        ca_file: cli.tls_ca_file.or(file.tls.ca_file),
        verify_incoming: cli.tls_verify_incoming || file.tls.verify_incoming,
    };
    if let Some(cert) = tls.cert_file {
        builder = builder.tls_cert_file(cert);
    }
    if let Some(key) = tls.key_file {
        builder = builder.tls_key_file(key);
    }
    if let Some(ca) = tls.ca_file {
        builder = builder.tls_ca_file(ca);
    }
    let mut builder = builder
        .tls_verify_incoming(tls.verify_incoming)
        .datacenter(cli.datacenter)
        .node_name(cli.node_name)
        .leaf_cert_ttl(cli.leaf_cert_ttl)
        .consul_version(cli.consul_version);
    if let Some(id) = cli.cluster_id {
        builder = builder.cluster_id(id);
    }
    if let Some(dir) = cli.data_dir {
        builder = builder.data_dir(dir);
    }
    if let (Some(primary), Some(addr)) = (cli.primary_datacenter, cli.join_wan) {
        builder = builder.join_wan(primary, &addr);
    }
    if cli.acl_enabled || file.enabled == Some(true) {
        let policy = cli.acl_default_policy.or(file.default_policy);
        builder = builder.acl(match policy.as_deref() {
            Some("deny") => DefaultPolicy::Deny,
            _ => DefaultPolicy::Allow,
        });
    }
    if let Some(token) = cli.acl_initial_management_token.or(file.management_token) {
        builder = builder.acl_initial_management_token(token);
    }
    let shutdown = shutdown_signal();
    let agent = match builder.start().await {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("agent-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("agent-sim HTTP API listening on {}", agent.http_url());
    if let Some(addr) = agent.https_addr() {
        println!("agent-sim HTTPS API listening on https://{addr}");
    }
    shutdown.await;
    agent.shutdown().await;
    ExitCode::SUCCESS
}

/// Registers for SIGTERM and SIGINT at once (before the agent serves, so a signal right after
/// startup is not fatal) and resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
