//! agent-sim: Consul's Connect surface in one process.
//!
//! A built-in CA with root rotation and cross-signing, intentions, catalog and health for
//! discovery, and blocking queries, answering over HTTP exactly as a Consul 1.4.5 agent does.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ca;
