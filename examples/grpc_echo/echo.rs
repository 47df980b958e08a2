//! The `echo.Echo` gRPC service, written by hand as tonic-build would generate it (no protoc):
//! prost messages, a server answering `UnaryEcho` with the message and the [`Caller`] that
//! Connect authorized, and a client. Shared by the `grpc_echo` example and `tests/http.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use consul_connect::http::Caller;

/// `echo.EchoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `echo.EchoResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    #[prost(string, tag = "1")]
    pub message: String,
}

const UNARY_ECHO: &str = "/echo.Echo/UnaryEcho";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The server: routes `/echo.Echo/UnaryEcho` to [`UnaryEcho`], answers anything else
/// `UNIMPLEMENTED`.
#[derive(Clone)]
pub struct EchoServer;

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
            Ok(tonic::Response::new(EchoResponse {
                message: format!("{message} (echoed for {})", caller.id()),
            }))
        })
    }
}

/// The client.
pub struct EchoClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    /// A client over `channel` (from `consul_connect::grpc::channel`).
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// Calls `UnaryEcho` with `message`; returns the answer.
    pub async fn unary_echo(&mut self, message: &str) -> Result<String, tonic::Status> {
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
