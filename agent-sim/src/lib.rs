//! agent-sim: Consul's Connect surface in one process.
//!
//! A built-in CA with root rotation and cross-signing, intentions, catalog and health for
//! discovery, and blocking queries, answering over HTTP exactly as a Consul 1.10.9 (the default) or 1.4.5 agent does
//! ([`profile::ConsulVersion`]).
//! Embed it in tests with [`Agent::builder`], or run the `agent-sim` binary.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl_rules;
pub mod acl_versions;
pub mod agent;
pub mod ca;
pub mod cache;
pub mod clock;
pub mod config;
pub mod federation;
mod hcl;
pub mod http;
pub mod intentions;
pub mod profile;
pub mod state;
pub mod tls;
mod ttl;

pub use agent::Agent;

/// The tokio runtime the `agent-sim` binary serves on, for embedders that want the same
/// scheduling (the e2e benchmark measures it with clients in another process).
///
/// ```
/// let runtime = agent_sim::runtime().unwrap();
/// runtime.block_on(async {
///     let agent = agent_sim::Agent::builder().start().await.unwrap();
///     agent.shutdown().await;
/// });
/// ```
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
