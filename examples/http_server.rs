//! An HTTP service over Connect with axum: `GET /` names the caller.
//!
//! ```text
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example http_server -- --service api --listen 127.0.0.1:9292
//! cargo run --example http_client -- --service web --url http://api.service.consul/
//! ```
//!
//! Registers the service with the agent as Connect-native on the listen port, serves HTTP/1.1
//! and HTTP/2 (as the client chose with ALPN) to clients that intentions allow, and deregisters
//! on Ctrl-C. Any client holding a leaf of the same CA can call it, curl included:
//! `curl -k --cert web.pem --key web.key https://127.0.0.1:9292/`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use clap::Parser;
use consul_connect::http::{serve_with_graceful_shutdown, Caller};
use consul_connect::{ConnectListener, ConnectService};
use http::Version;

#[derive(Debug, Parser)]
struct Args {
    /// The service name to register and serve as.
    #[arg(long, default_value = "api")]
    service: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9292")]
    listen: SocketAddr,
    /// Who decides for each client: `agent` (the agent's authorize endpoint, after the
    /// handshake) or `intentions` (evaluated in-process, inside the handshake).
    #[arg(long, value_enum, default_value = "agent")]
    authorizer: AuthorizerKind,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthorizerKind {
    Agent,
    Intentions,
}

/// `GET /`: who called, over which HTTP version.
async fn hello(caller: Caller, version: Version) -> String {
    format!("hello {} ({version:?})\n", caller.id())
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
    let listener = ConnectListener::bind(&service, args.listen).await?;
    let addr = listener.local_addr();
    // Kept registered (again after an agent restart) until deregistered below.
    let registration = service.register(addr).await?;
    println!("http_server listening on {addr} as {identity}");

    let app = Router::new().route("/", get(hello));
    serve_with_graceful_shutdown(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    registration.deregister().await;
    service.shutdown();
    Ok(())
}
