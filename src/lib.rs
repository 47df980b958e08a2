//! Consul Connect native integration for Rust.
//!
//! A service gets its identity (a SPIFFE X.509 leaf signed by the Consul CA) from the local
//! agent, accepts mutual-TLS connections authorized by intentions, and dials other services by
//! name, verifying that the server is the service it asked for.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use consul_connect::{ConnectListener, ConnectService};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // The agent comes from CONSUL_HTTP_ADDR, as for every Consul client.
//! let db = ConnectService::builder("db").build().await?;
//! db.ready().await?;
//! let mut listener = ConnectListener::bind(&db, "127.0.0.1:9191").await?;
//! let (mut stream, peer) = listener.accept().await?; // verified and authorized
//! stream.write_all(format!("hello {}\n", peer.service()).as_bytes()).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acceptor;
pub mod agent;
pub mod api;
pub mod authz;
pub mod dialer;
pub mod files;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod http;
pub mod listener;
pub mod registration;
pub mod resolve;
mod revoke;
pub mod service;
pub mod telemetry;
pub mod tls;

/// Consul's intention rules: precedence, evaluation order and the authorize decision, as the
/// in-process authorizer applies them (from `consul-connect-types`).
pub use consul_connect_types::intentions;
/// SPIFFE identities as Consul issues them (from `consul-connect-types`).
pub use consul_connect_types::spiffe;

/// The versions of the crates whose types appear in this crate's API, so that users need not
/// match them by hand.
pub use {hyper, rustls, tokio_rustls};

pub use acceptor::ConnectAcceptor;
pub use agent::AgentClient;
pub use authz::{AgentAuthorizer, Authorizer, IntentionsAuthorizer};
pub use dialer::ConnectDialer;
pub use listener::ConnectListener;
pub use resolve::{CatalogResolver, Resolver, StaticResolver};
pub use service::ConnectService;
pub use spiffe::{ServiceId, SpiffeId};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
