//! HTTP over Connect: serve hyper, tower and axum services on a [`ConnectListener`](crate::ConnectListener), and call
//! other services by their Consul DNS name through a hyper-util connector.
//!
//! Serving: [`serve`] runs any tower service (an axum `Router`, a tonic `Routes`, a
//! `tower::service_fn`) on a listener, HTTP/1.1 or HTTP/2 as the client negotiated with ALPN.
//! Every request carries the authorized client as a [`Caller`] extension, and HTTP/1
//! connections run inside [`PollAgain`], which spares a worker wake-up per request body. With
//! the `axum` feature, `Caller` is an axum extractor. Where an axum service would call
//! `axum::serve(listener, app)`, it calls `serve(listener, app)`: `ConnectListener` is not an
//! axum `Listener`, because with one `axum::serve(listener, app)` would compile and then give
//! handlers no caller.
//!
//! Calling: [`ConnectConnector`] is a tower `Service<Uri>` for hyper-util's pooled client (and
//! tonic's `Endpoint`). It maps `http://<name>.service[.<datacenter>].consul/...` to the
//! healthy Connect instances of `<name>` in the agent's catalog, as Consul's Go SDK does, and
//! dials them over mutual TLS; HTTP/2 is used when the server agreed to it with ALPN.
//! [`HttpClient`] bundles both.
//!
//! How a handler learns who called (the [`Caller`]: SPIFFE ID and address):
//!
//! | served by | the handler asks for |
//! |---|---|
//! | [`serve`], [`serve_with_graceful_shutdown`], [`serve_connection`] | `Caller` (axum extractor), `Extension<Caller>`, or `request.extensions().get::<Caller>()` |
//! | tonic, `serve_with_incoming(grpc::incoming(listener))` | `request.extensions().get::<Caller>()` |
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use consul_connect::http::HttpClient;
//! use consul_connect::ConnectService;
//! use http_body_util::BodyExt;
//!
//! let web = ConnectService::builder("web").build().await?;
//! web.ready().await?;
//! let client = HttpClient::new(&web);
//! let response = client.get("http://api.service.consul/").await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! println!("{}", String::from_utf8_lossy(&body));
//! # Ok(()) }
//! ```

use std::error::Error as StdError;

pub use poll_again::PollAgain;

#[cfg(feature = "axum")]
mod axum_support;
mod client;
mod server;

pub use client::{ClientError, ConnectConnector, ConnectIo, ConnectorError, HttpClient};
pub(crate) use server::accept_authorized;
pub use server::{serve, serve_connection, serve_with_graceful_shutdown, AuthorizedStream, Caller};

/// A boxed error, as hyper and tower pass them around.
pub type BoxError = Box<dyn StdError + Send + Sync>;
