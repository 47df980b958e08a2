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

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use consul_connect::http::Caller;
use consul_connect::{grpc, AgentClient, ConnectListener, ConnectService};

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

// ---------------------------------------------------------------------------------------------
// The Echo service, as tonic-build would generate it
// ---------------------------------------------------------------------------------------------

/// `echo.EchoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
}

/// `echo.EchoResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoResponse {
    #[prost(string, tag = "1")]
    message: String,
}

const UNARY_ECHO: &str = "/echo.Echo/UnaryEcho";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The server: routes `/echo.Echo/UnaryEcho` to [`UnaryEcho`], answers anything else
/// `UNIMPLEMENTED`.
#[derive(Clone)]
struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "echo.Echo";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != UNARY_ECHO {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("no such method").into_http())
            });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                EchoResponse,
                EchoRequest,
            >::default());
            Ok(grpc.unary(UnaryEcho, request).await)
        })
    }
}

/// The method: echoes the message, naming the caller Connect authorized.
struct UnaryEcho;

impl tonic::server::UnaryService<EchoRequest> for UnaryEcho {
    type Response = EchoResponse;
    type Future = BoxFuture<Result<tonic::Response<EchoResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        // Every request over a Connect listener carries the authorized caller.
        let caller = request.extensions().get::<Caller>().cloned();
        let message = request.into_inner().message;
        Box::pin(async move {
            let caller =
                caller.ok_or_else(|| tonic::Status::unauthenticated("no Connect caller"))?;
            println!("echo got {message:?} from {}", caller.id());
            Ok(tonic::Response::new(EchoResponse {
                message: format!("{message} (echoed for {})", caller.id()),
            }))
        })
    }
}

/// The client.
struct EchoClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    async fn unary_echo(&mut self, message: &str) -> Result<String, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("echo is not ready: {e}")))?;
        let request = tonic::Request::new(EchoRequest {
            message: message.to_owned(),
        });
        let response = self
            .inner
            .unary(
                request,
                http::uri::PathAndQuery::from_static(UNARY_ECHO),
                tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default(),
            )
            .await?;
        Ok(response.into_inner().message)
    }
}
