//! gRPC over Connect with tonic: servers on a [`ConnectListener`], channels to services by
//! their Consul DNS name.
//!
//! Server: [`incoming`] turns a listener into the stream of connections tonic's
//! `serve_with_incoming` takes. Each connection is already verified and authorized, and each
//! request carries the client as a [`Caller`] extension (`request.extensions().get::<Caller>()`).
//!
//! Client: [`channel`] connects a tonic `Channel` through a [`ConnectConnector`], so
//! `http://<name>.service[.<datacenter>].consul` reaches the healthy Connect instances of
//! `<name>`. For a lazy channel or custom endpoint options, pass a `ConnectConnector` to
//! `Endpoint::connect_with_connector_lazy` or `Endpoint::connect_with_connector` directly.
//!
//! ```no_run
//! # async fn run(db: consul_connect::ConnectService, web: consul_connect::ConnectService,
//! #     routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
//! use consul_connect::{grpc, ConnectListener};
//!
//! // Server side: any tonic service (generated or hand-written) on a Connect listener.
//! let listener = ConnectListener::bind(&db, "127.0.0.1:9393").await?;
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .add_routes(routes)
//!         .serve_with_incoming(grpc::incoming(listener)),
//! );
//!
//! // Client side: a channel to db, as web, for any tonic client.
//! let channel = grpc::channel(&web, "http://db.service.consul").await?;
//! # drop(channel);
//! # Ok(()) }
//! ```
//!
//! [`Caller`]: crate::http::Caller

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::http::{accept_authorized, AuthorizedStream, Caller, ConnectConnector};
use crate::listener::ConnectListener;
use crate::service::ConnectService;

/// The authorized connections of a listener, as tonic's `serve_with_incoming` takes them.
///
/// Yields each verified and authorized connection; if the TCP listener fails, yields that
/// error once and ends (tonic then stops accepting and drains open connections).
///
/// ```no_run
/// # async fn run(db: consul_connect::ConnectService, routes: tonic::service::Routes)
/// #     -> Result<(), Box<dyn std::error::Error>> {
/// use consul_connect::{grpc, ConnectListener};
/// let listener = ConnectListener::bind(&db, "127.0.0.1:9393").await?;
/// tonic::transport::Server::builder()
///     .add_routes(routes)
///     .serve_with_incoming(grpc::incoming(listener))
///     .await?;
/// # Ok(()) }
/// ```
pub fn incoming(listener: ConnectListener) -> ConnectIncoming {
    ConnectIncoming {
        local_addr: listener.local_addr(),
        next: Some(Box::pin(accept_next(listener))),
    }
}

/// Connects a tonic channel to `uri` (`http://<name>.service[.<datacenter>].consul`) as
/// `service`, over a [`ConnectConnector`] with the default dial timeout.
///
/// The connection is made before this returns. A client refused by intentions may still get a
/// channel when the server authorizes after the TLS handshake (the default authorizer, as in
/// Consul): the first call then fails with a transport error, while the server's
/// [`ConnectListener::rejections`] says why.
///
/// ```no_run
/// # async fn run(web: consul_connect::ConnectService) -> Result<(), Box<dyn std::error::Error>> {
/// let channel = consul_connect::grpc::channel(&web, "http://db.service.consul").await?;
/// let mut client = tonic::client::Grpc::new(channel);
/// client.ready().await?;
/// # Ok(()) }
/// ```
pub async fn channel(
    service: &ConnectService,
    uri: impl Into<String>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(uri.into())?
        .connect_with_connector(ConnectConnector::new(service))
        .await
}

type Accept = Pin<Box<dyn Future<Output = (ConnectListener, io::Result<AuthorizedStream>)> + Send>>;

/// The stream [`incoming`] returns.
pub struct ConnectIncoming {
    local_addr: SocketAddr,
    /// The accept in progress; `None` once the listener failed.
    next: Option<Accept>,
}

impl fmt::Debug for ConnectIncoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectIncoming")
            .field("local_addr", &self.local_addr)
            .field("ended", &self.next.is_none())
            .finish()
    }
}

impl ConnectIncoming {
    /// The listener's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_next(
    mut listener: ConnectListener,
) -> (ConnectListener, io::Result<AuthorizedStream>) {
    let accepted = accept_authorized(&mut listener).await;
    (listener, accepted)
}

impl Stream for ConnectIncoming {
    type Item = io::Result<AuthorizedStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (listener, accepted) = std::task::ready!(next.as_mut().poll(cx));
        self.next = match accepted {
            Ok(_) => Some(Box::pin(accept_next(listener))),
            Err(_) => None,
        };
        Poll::Ready(Some(accepted))
    }
}

/// tonic puts the [`Caller`] in every request's extensions.
impl Connected for AuthorizedStream {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller().clone()
    }
}
