//! Consul Connect agent simulator.
