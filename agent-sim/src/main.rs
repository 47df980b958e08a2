//! The `agent-sim` binary: Consul's Connect agent API on one port.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

/// Consul's Connect surface in one process: CA, intentions, discovery, blocking queries.
#[derive(Debug, Parser)]
#[command(name = "agent-sim", version)]
struct Cli {
    /// In-memory state (the default; kept for Consul's `-dev` habit).
    #[arg(long, default_value_t = true)]
    dev: bool,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8500")]
    http_addr: SocketAddr,
    /// Datacenter name.
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    /// Node name.
    #[arg(long, default_value = "agent-sim")]
    node_name: String,
    /// Leaf certificate lifetime, a Go duration (`72h`, `90m`).
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    leaf_cert_ttl: std::time::Duration,
    /// Fixed cluster ID (a UUID); random when unset.
    #[arg(long)]
    cluster_id: Option<String>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    agent_sim::duration::parse(s).map_err(|e| e.to_string())
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
    let mut builder = agent_sim::Agent::builder()
        .http_addr(cli.http_addr)
        .datacenter(cli.datacenter)
        .node_name(cli.node_name)
        .leaf_cert_ttl(cli.leaf_cert_ttl);
    if let Some(id) = cli.cluster_id {
        builder = builder.cluster_id(id);
    }
    let agent = match builder.start().await {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("agent-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("agent-sim HTTP API listening on http://{}", agent.addr());
    shutdown_signal().await;
    agent.shutdown().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
