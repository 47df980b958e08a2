//! Built-in CA (being written).
