//! Consul Connect native integration for Rust.
//!
//! A service gets its identity (a SPIFFE X.509 leaf signed by the Consul CA) from the local
//! agent, accepts mutual-TLS connections authorized by intentions, and dials other services by
//! name, verifying that the server is the service it asked for.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod spiffe;
pub mod intentions;
pub mod tls;
