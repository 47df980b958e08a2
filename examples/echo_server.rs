//! A line echo service over Connect.
//!
//! ```text
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example echo_server -- --service echo --listen 127.0.0.1:9191
//! ```
//!
//! Registers the service with the agent as Connect-native on the listen port, answers each line
//! with the same line, and deregisters on Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use consul_connect::{ConnectListener, ConnectService};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Parser)]
struct Args {
    /// The service name to register and serve as.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9191")]
    listen: SocketAddr,
    /// Who decides for each client: `agent` (the agent's authorize endpoint, after the
    /// handshake) or `intentions` (the intentions, watched and evaluated in-process, inside
    /// the handshake).
    #[arg(long, value_enum, default_value = "agent")]
    authorizer: AuthorizerKind,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthorizerKind {
    Agent,
    Intentions,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "consul_connect=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut builder = ConnectService::builder(&args.service);
    if let AuthorizerKind::Intentions = args.authorizer {
        builder = builder.intentions_authorizer_from_agent();
    }
    let service = builder.build().await?;
    let identity = service.ready_timeout(Duration::from_secs(30)).await?;
    let mut listener = ConnectListener::bind(&service, args.listen).await?;
    let addr = listener.local_addr();
    // Kept registered (again after an agent restart) until deregistered below.
    let registration = service.register(addr).await?;
    println!("echo_server listening on {addr} as {identity}");

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                tokio::spawn(async move {
                    let (read, mut write) = tokio::io::split(stream);
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    tracing::debug!(%peer, "client done");
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    registration.deregister().await;
    service.shutdown();
    Ok(())
}
