//! Intentions (being written).
