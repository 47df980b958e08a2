//! gRPC over Connect with tonic, end to end with nothing running: an embedded agent-sim, an
//! `echo` gRPC service on a Connect listener, and a `web` client calling it by Consul name.
//!
//! ```text
//! cargo run --example grpc_echo
//! cargo run --example grpc_echo -- hello there
//! ```
//!
//! No `.proto` file and no protoc: the service is written by hand with tonic's codegen-free
//! APIs (`tonic::server::Grpc`, `tonic::client::Grpc`) and prost messages, which is what
//! tonic-build would generate for
//!
//! ```text
//! package echo;
//! service Echo { rpc UnaryEcho(EchoRequest) returns (EchoResponse); }
//! message EchoRequest { string message = 1; }
//! message EchoResponse { string message = 1; }
//! ```

use std::time::Duration;

use consul_connect::{grpc, AgentClient, ConnectListener, ConnectService};
use echo::{EchoClient, EchoServer};

mod echo;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let message = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let message = if message.is_empty() {
        "ping".to_owned()
    } else {
        message
    };

    let agent = agent_sim::Agent::builder().start().await?;
    let client = AgentClient::new(&agent.addr().to_string())?;

    // The echo service: a Connect identity, a tonic server on a Connect listener, registered
    // as Connect-native so clients find it in the catalog.
    let echo = ConnectService::builder("echo")
        .agent(client.clone())
        .build()
        .await?;
    let echo_id = echo.ready_timeout(Duration::from_secs(10)).await?;
    let listener = ConnectListener::bind(&echo, "127.0.0.1:0").await?;
    let addr = listener.local_addr();
    let _registered = echo.register(addr).await?;
    println!("echo gRPC server on {addr} as {echo_id}");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(grpc::incoming(listener)),
    );

    // The web client: a tonic channel to echo.service.consul, dialed over Connect.
    let web = ConnectService::builder("web").agent(client).build().await?;
    web.ready_timeout(Duration::from_secs(10)).await?;
    let channel = grpc::channel(&web, "http://echo.service.consul").await?;
    let reply = EchoClient::new(channel).unary_echo(&message).await?;
    println!("web  got: {reply}");

    agent.shutdown().await;
    Ok(())
}
