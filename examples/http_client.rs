//! Calls an HTTP service over Connect by its Consul DNS name and prints the response body.
//!
//! ```text
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example http_client -- --service web --url http://api.service.consul/
//! ```
//!
//! The host must be `<name>.service[.<datacenter>].consul`: the healthy Connect instances of
//! `<name>` come from the agent's catalog. Exits non-zero with the error when the request
//! fails (refused, denied by an intention, no instance) or the status is not a success.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use consul_connect::http::HttpClient;
use consul_connect::ConnectService;
use http_body_util::BodyExt;

#[derive(Debug, Parser)]
struct Args {
    /// Our own service name (the identity we call as).
    #[arg(long, default_value = "web")]
    service: String,
    /// The URL to GET, e.g. `http://api.service.consul/`.
    #[arg(long)]
    url: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http_client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let service = ConnectService::builder(&args.service).build().await?;
    service.ready_timeout(Duration::from_secs(30)).await?;
    let response = HttpClient::new(&service).get(args.url.as_str()).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    print!("{}", String::from_utf8_lossy(&body));
    if !status.is_success() {
        return Err(format!("{} answered {status}", args.url).into());
    }
    Ok(())
}
