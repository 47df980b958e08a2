//! The `agent-sim` binary: Consul's Connect agent API on one port.

use std::net::SocketAddr;
use std::process::ExitCode;

use agent_sim::acl_rules::DefaultPolicy;
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
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8500")]
    http_addr: SocketAddr,
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
    /// `default_policy`, `tokens.initial_management` / `tokens.master`).
    #[arg(long)]
    config_file: Option<std::path::PathBuf>,
}

/// ACL settings from a config file, in Consul's 1.4 (`acl_master_token`) or later (`acl {}`)
/// spelling.
#[derive(Debug, Default)]
struct FileAcl {
    enabled: Option<bool>,
    default_policy: Option<String>,
    management_token: Option<String>,
}

fn read_config_file(path: &std::path::Path) -> Result<FileAcl, String> {
    let json = agent_sim::config::read_file(path).map_err(|e| e.to_string())?;
    let str_at = |v: &serde_json::Value, pointer: &str| {
        v.pointer(pointer)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let mut acl = FileAcl {
        enabled: json.pointer("/acl/enabled").and_then(|v| v.as_bool()),
        default_policy: str_at(&json, "/acl/default_policy")
            .or_else(|| str_at(&json, "/acl_default_policy")),
        management_token: str_at(&json, "/acl/tokens/initial_management")
            .or_else(|| str_at(&json, "/acl/tokens/master"))
            .or_else(|| str_at(&json, "/acl_master_token")),
    };
    // In 1.4 setting acl_master_token (with acl_datacenter) turned ACLs on.
    if acl.enabled.is_none() && json.get("acl_master_token").is_some() {
        acl.enabled = Some(true);
    }
    if let Some(policy) = &acl.default_policy {
        if policy != "allow" && policy != "deny" {
            return Err(format!(
                "{}: acl default policy must be allow or deny, not {policy:?}",
                path.display()
            ));
        }
    }
    Ok(acl)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    consul_connect_types::go::parse_duration(s).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
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
    let mut builder = agent_sim::Agent::builder()
        .http_addr(cli.http_addr)
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
    println!("agent-sim HTTP API listening on http://{}", agent.addr());
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
