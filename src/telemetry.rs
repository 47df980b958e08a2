//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade: install any recorder
//! (Prometheus exporter, StatsD, ...) and these appear; without one they cost nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `consul_connect_leaf_expiry_timestamp_seconds` | gauge | `service` |
//! | `consul_connect_rotations_total` | counter | `service`, `kind` (`leaf`, `roots`) |
//! | `consul_connect_handshakes_total` | counter | `service`, `side` (`server`, `client`), `result` (`ok`, `failed`), `reason` |
//! | `consul_connect_authorizations_total` | counter | `service`, `authorizer` (`agent`, `intentions`), `decision` (`allow`, `deny`, `error`) |
//! | `consul_connect_watch_errors_total` | counter | `service`, `watch` (`roots`, `leaf`, `intentions`, `material`) |
//! | `consul_connect_connections_closed_total` | counter | `service`, `reason` (`denied`, `max_age`) |
//!
//! `reason` is a short, stable name of what failed (`untrusted_chain`, `wrong_service`,
//! `denied`, `timeout`, ...) and `ok` for successes. No label ever holds a key or token.

use time::OffsetDateTime;

/// Leaf expiry gauge name.
pub const LEAF_EXPIRY: &str = "consul_connect_leaf_expiry_timestamp_seconds";
/// Rotations counter name.
pub const ROTATIONS: &str = "consul_connect_rotations_total";
/// Handshakes counter name.
pub const HANDSHAKES: &str = "consul_connect_handshakes_total";
/// Authorization decisions counter name.
pub const AUTHORIZATIONS: &str = "consul_connect_authorizations_total";
/// Watch errors counter name.
pub const WATCH_ERRORS: &str = "consul_connect_watch_errors_total";
/// Name of the counter of open connections the server closed after `accept`: the client is no
/// longer authorized, or the connection reached its maximum age.
pub const CONNECTIONS_CLOSED: &str = "consul_connect_connections_closed_total";

pub(crate) fn leaf_expiry(service: &str, not_after: OffsetDateTime) {
    metrics::gauge!(LEAF_EXPIRY, "service" => service.to_owned())
        .set(not_after.unix_timestamp() as f64);
}

pub(crate) fn rotation(service: &str, kind: &'static str) {
    metrics::counter!(ROTATIONS, "service" => service.to_owned(), "kind" => kind).increment(1);
}

pub(crate) fn handshake(service: &str, side: &'static str, outcome: Result<(), &'static str>) {
    let (result, reason) = match outcome {
        Ok(()) => ("ok", "ok"),
        Err(reason) => ("failed", reason),
    };
    metrics::counter!(
        HANDSHAKES,
        "service" => service.to_owned(),
        "side" => side,
        "result" => result,
        "reason" => reason
    )
    .increment(1);
}

pub(crate) fn authorization(service: &str, authorizer: &'static str, decision: &'static str) {
    metrics::counter!(
        AUTHORIZATIONS,
        "service" => service.to_owned(),
        "authorizer" => authorizer,
        "decision" => decision
    )
    .increment(1);
}

pub(crate) fn watch_error(service: &str, watch: &'static str) {
    metrics::counter!(WATCH_ERRORS, "service" => service.to_owned(), "watch" => watch).increment(1);
}

pub(crate) fn connection_closed(service: &str, reason: &'static str, count: u64) {
    metrics::counter!(CONNECTIONS_CLOSED, "service" => service.to_owned(), "reason" => reason)
        .increment(count);
}

/// `err` with each underlying cause appended (`: cause`), skipping causes its message already
/// shows, so a log line names the root cause ("Connection refused") that wrappers such as
/// hyper's `client error (Connect)` hide.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !out.contains(&message) {
            out.push_str(": ");
            out.push_str(&message);
        }
        source = cause.source();
    }
    out
}
