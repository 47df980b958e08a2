//! Consul Connect's wire types, SPIFFE identities and intention rules, with no I/O.
//!
//! This crate is what the `consul-connect` SDK and the `agent-sim` agent share: the JSON of
//! Consul's HTTP API ([`api`]), parsed SPIFFE identities ([`spiffe`]), the intention rules both
//! ends evaluate ([`intentions`]) and Go-compatible text helpers ([`go`]). It depends on serde
//! and `time` only: no runtime, TLS stack or HTTP client.
//!
//! ```
//! use consul_connect_types::spiffe::ServiceId;
//!
//! let id: ServiceId = "spiffe://abc.consul/ns/default/dc/dc1/svc/db".parse()?;
//! assert_eq!(id.service(), "db");
//! # Ok::<(), consul_connect_types::spiffe::SpiffeIdError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod go;
pub mod intentions;
pub mod spiffe;
