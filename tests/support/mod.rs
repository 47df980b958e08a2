//! Shared test fixtures.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod certs;
pub mod clock;
pub mod faults;
pub mod rawtls;
pub mod samples;
