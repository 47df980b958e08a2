//! Sends each stdin line to an echo service over Connect and prints the answers.
//!
//! ```text
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example echo_client -- --service web --upstream echo
//! cargo run --example echo_client -- --service web --upstream echo --addr 127.0.0.1:9191
//! ```
//!
//! Exits non-zero with the error when the connection is refused or denied.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use consul_connect::dialer::ServerRefusal;
use consul_connect::{CatalogResolver, ConnectService, Resolver, StaticResolver};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Parser)]
struct Args {
    /// Our own service name (the identity we dial as).
    #[arg(long, default_value = "web")]
    service: String,
    /// The service to dial.
    #[arg(long, default_value = "echo")]
    upstream: String,
    /// Dial this address instead of discovering the upstream.
    #[arg(long)]
    addr: Option<String>,
    /// Discover the upstream in this datacenter (default: the agent's).
    #[arg(long)]
    datacenter: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let service = ConnectService::builder(&args.service).build().await?;
    service.ready_timeout(Duration::from_secs(30)).await?;
    let resolver: Box<dyn Resolver> = match args.addr {
        Some(addr) => Box::new(StaticResolver::new(addr, &args.upstream)),
        None => {
            let mut resolver = CatalogResolver::new(service.agent().clone(), &args.upstream);
            if let Some(dc) = &args.datacenter {
                resolver = resolver.datacenter(dc);
            }
            Box::new(resolver)
        }
    };
    let stream = service.dialer().dial(resolver.as_ref()).await?;
    let (read, mut write) = tokio::io::split(stream);
    let mut answers = BufReader::new(read).lines();
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = input.next_line().await? {
        write.write_all(format!("{line}\n").as_bytes()).await?;
        match answers.next_line().await {
            Ok(Some(answer)) => println!("{answer}"),
            Ok(None) => return Err(closed(&args.upstream).into()),
            Err(e) => {
                return Err(match ServerRefusal::from_io(&e) {
                    Some(why) => format!("{} refused this service: {why}", args.upstream),
                    None => format!("{}: {e}", closed(&args.upstream)),
                }
                .into())
            }
        }
    }
    Ok(())
}

fn closed(upstream: &str) -> String {
    format!("{upstream} closed the connection without answering")
}
