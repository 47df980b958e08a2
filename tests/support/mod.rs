//! Shared test fixtures.
#![allow(dead_code)]

pub mod agent;
pub mod certs;
pub mod samples;
