//! Consul's intention rules that both ends need, as plain functions over values: precedence,
//! evaluation order, `Intention.String()`, and the authorize decision.
//!
//! The SDK's local authorizer watches `/v1/connect/intentions/match?by=destination` and decides
//! inside the TLS handshake with [`decide_matches`]; agent-sim's indexed intention set answers
//! `/v1/agent/connect/authorize` through the same function, so there is one decision rule.
//! Validation and indexing are the server's and live in agent-sim.
//!
//! The rules, from Consul's `agent/structs/intention.go`, `agent/consul/state/intention.go` and
//! `agent/agent_endpoint.go`:
//! - the first intention whose *source* matches the client decides, and that comparison is
//!   exact and case-sensitive (`*` or equal namespace, `*` or equal service); the client's trust
//!   domain and datacenter play no part;
//! - with no match, the ACL default decides.
//!
//! ```
//! use consul_connect_types::api::Intention;
//! use consul_connect_types::intentions::{decide_matches, DefaultDecision, Wording};
//! use consul_connect_types::spiffe::ServiceId;
//!
//! let matches: Vec<Intention> = serde_json::from_str(r#"[
//!   {"ID":"5887dc37-28b6-ab1e-5d8b-e5fa4499b42d","SourceNS":"default","SourceName":"web",
//!    "DestinationNS":"default","DestinationName":"db","SourceType":"consul","Action":"deny",
//!    "Precedence":9}
//! ]"#)?;
//! let web: ServiceId = "spiffe://abc.consul/ns/default/dc/dc1/svc/web".parse()?;
//! let decision = decide_matches(&matches, &web, DefaultDecision::AclsDisabled, Wording::Consul1_4);
//! assert!(!decision.allowed);
//! assert_eq!(
//!     decision.reason,
//!     "Matched intention: DENY default/web => default/db \
//!      (ID: 5887dc37-28b6-ab1e-5d8b-e5fa4499b42d, Precedence: 9)"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cmp::Ordering;
use std::fmt;

use crate::api::Intention;
use crate::spiffe::{ServiceId, DEFAULT_PARTITION};

/// The wildcard value of a namespace or name.
pub const WILDCARD: &str = "*";
/// The namespace the server fills in when one is left empty (the only one in Consul OSS 1.4).
pub const DEFAULT_NAMESPACE: &str = "default";
/// The only `SourceType` Consul 1.4 knows.
pub const SOURCE_TYPE_CONSUL: &str = "consul";

/// Reason when no intention matched and ACLs are disabled (the connection is allowed).
pub const REASON_ACLS_DISABLED: &str = "ACLs disabled, access is allowed by default";
/// Reason when no intention matched and the agent's `default_intention_policy` decided
/// (Consul 1.18+).
pub const REASON_DEFAULT_INTENTION_POLICY: &str = "Default intention policy";
/// Reason when no intention matched and the ACL default policy decided.
pub const REASON_ACL_DEFAULT: &str = "Default behavior configured by ACLs";
/// Prefix of the reason when an intention decided, in Consul 1.4–1.8; the intention's
/// [`Display`](fmt::Display) form follows.
pub const REASON_MATCHED_PREFIX: &str = "Matched intention: ";
/// Prefix of the reason when an L4 intention (one with an `Action`) decided, in Consul 1.9+.
pub const REASON_MATCHED_L4_PREFIX: &str = "Matched L4 intention: ";
/// Prefix of the reason when an L7 intention (one with `Permissions`) matched, in Consul 1.9+:
/// the connection is refused, since only a proxy can apply L7 rules.
pub const REASON_MATCHED_L7_PREFIX: &str = "Matched L7 intention: ";

/// How a Consul version words the reason of a matched intention. The decision itself is the
/// same in every version.
///
/// ```
/// use consul_connect_types::api::Intention;
/// use consul_connect_types::intentions::Wording;
///
/// let ixn: Intention = serde_json::from_str(
///     r#"{"ID":"a","SourceNS":"default","SourceName":"web","DestinationNS":"default",
///         "DestinationName":"db","Action":"deny","Precedence":9}"#,
/// )?;
/// assert_eq!(
///     Wording::Consul1_4.matched(&ixn),
///     "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)"
/// );
/// assert_eq!(
///     Wording::Consul1_9.matched(&ixn),
///     "Matched L4 intention: default/web => default/db (ID: a, Precedence: 9, Action: DENY)"
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Wording {
    /// Consul 1.4–1.8: `Matched intention: DENY default/web => default/db (ID: <id>,
    /// Precedence: 9)`.
    Consul1_4,
    /// Consul 1.9+: `Matched L4 intention: default/web => default/db (ID: <id>, Precedence: 9,
    /// Action: DENY)`, without the `ID: ` part for an intention that has none (a config
    /// entry's), and `Matched L7 intention: … (Precedence: 9, Permissions: 2)` for L7 ones.
    Consul1_9,
}

impl Wording {
    /// The reason given when `ixn` decided.
    pub fn matched(self, ixn: &Intention) -> String {
        match self {
            Wording::Consul1_4 => format!("{REASON_MATCHED_PREFIX}{ixn}"),
            Wording::Consul1_9 => {
                let prefix = if is_l7(ixn) {
                    REASON_MATCHED_L7_PREFIX
                } else {
                    REASON_MATCHED_L4_PREFIX
                };
                format!("{prefix}{}", ModernDisplay(ixn))
            }
        }
    }

    /// The wording of the Consul `version` an agent reports (`Config.Version` of
    /// `/v1/agent/self`, such as `1.4.5` or `1.16.2+ent`): 1.4 up to 1.8, else 1.9's (also
    /// for a version that cannot be read).
    ///
    /// ```
    /// use consul_connect_types::intentions::Wording;
    ///
    /// assert_eq!(Wording::for_version("1.4.5"), Wording::Consul1_4);
    /// assert_eq!(Wording::for_version("1.8.19"), Wording::Consul1_4);
    /// assert_eq!(Wording::for_version("1.10.9"), Wording::Consul1_9);
    /// assert_eq!(Wording::for_version("1.21.0+ent"), Wording::Consul1_9);
    /// ```
    pub fn for_version(version: &str) -> Wording {
        let mut parts = version.split(['.', '+', '-']);
        let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
        match (number(), number()) {
            (Some(1), Some(minor)) if minor < 9 => Wording::Consul1_4,
            _ => Wording::Consul1_9,
        }
    }
}

/// Whether an intention carries L7 `Permissions` (and so never admits an L4 connection).
pub fn is_l7(ixn: &Intention) -> bool {
    ixn.permissions.as_ref().is_some_and(|p| !p.is_empty())
}

/// Consul 1.9+'s `Intention.String()`.
struct ModernDisplay<'a>(&'a Intention);

impl fmt::Display for ModernDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ixn = self.0;
        write!(
            f,
            "{}/{} => {}/{} (",
            ixn.source_ns, ixn.source_name, ixn.destination_ns, ixn.destination_name
        )?;
        if !ixn.id.is_empty() {
            write!(f, "ID: {}, ", ixn.id)?;
        }
        match &ixn.permissions {
            Some(p) if !p.is_empty() => {
                write!(
                    f,
                    "Precedence: {}, Permissions: {})",
                    ixn.precedence,
                    p.len()
                )
            }
            _ => write!(
                f,
                "Precedence: {}, Action: {})",
                ixn.precedence,
                ixn.action.to_uppercase()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Precedence, order, display
// ---------------------------------------------------------------------------------------------

/// An intention's precedence (9 highest, 1 lowest), computed from the shape of its names:
///
/// | Destination \ Source | ns/name | ns/`*` | `*`/`*` |
/// |---|---|---|---|
/// | ns/name | 9 | 8 | 7 |
/// | ns/`*`  | 6 | 5 | 4 |
/// | `*`/`*` | 3 | 2 | 1 |
///
/// ```
/// use consul_connect_types::api::Intention;
/// use consul_connect_types::intentions::precedence;
///
/// let ixn: Intention = serde_json::from_str(
///     r#"{"SourceNS":"default","SourceName":"*","DestinationNS":"default","DestinationName":"db"}"#,
/// )?;
/// assert_eq!(precedence(&ixn), 8);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn precedence(ixn: &Intention) -> i32 {
    let max = match exact_count(&ixn.destination_ns, &ixn.destination_name) {
        2 => 9,
        1 => 6,
        _ => 3,
    };
    max - (2 - exact_count(&ixn.source_ns, &ixn.source_name))
}

/// How many of (namespace, name) are exact: a wildcard namespace implies a wildcard name.
fn exact_count(ns: &str, name: &str) -> i32 {
    if ns == WILDCARD {
        0
    } else if name == WILDCARD {
        1
    } else {
        2
    }
}

/// Consul's evaluation order: `Precedence` descending, then `SourceNS`, `SourceName`,
/// `DestinationNS`, `DestinationName` ascending by bytes. The stored `Precedence` field is used,
/// as Consul does (a server recomputes it on every write). The `ID` breaks
/// the remaining ties so the order is total; Consul's uniqueness rule means it never has to.
pub fn compare_precedence(a: &Intention, b: &Intention) -> Ordering {
    b.precedence
        .cmp(&a.precedence)
        .then_with(|| a.source_ns.cmp(&b.source_ns))
        .then_with(|| a.source_name.cmp(&b.source_name))
        .then_with(|| a.destination_ns.cmp(&b.destination_ns))
        .then_with(|| a.destination_name.cmp(&b.destination_name))
        .then_with(|| a.id.cmp(&b.id))
}

/// Sorts intentions in evaluation order ([`compare_precedence`]).
pub fn sort_by_precedence(ixns: &mut [Intention]) {
    ixns.sort_by(compare_precedence);
}

/// Consul 1.4's `Intention.String()`:
/// `DENY default/web => default/db (ID: <id>, Precedence: 9)`, action uppercased, with the
/// stored precedence. Authorize reasons and the duplicate error embed it.
impl fmt::Display for Intention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} => {}/{} (ID: {}, Precedence: {})",
            self.action.to_uppercase(),
            self.source_ns,
            self.source_name,
            self.destination_ns,
            self.destination_name,
            self.id,
            self.precedence
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Decision
// ---------------------------------------------------------------------------------------------

/// What happens when no intention matches: the agent's `default_intention_policy` (1.18+)
/// when set, otherwise the ACL default policy (the anonymous token's), allow with ACLs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DefaultDecision {
    /// ACLs are off: allow, [`REASON_ACLS_DISABLED`].
    AclsDisabled,
    /// ACLs on with `default_policy = "allow"`: allow, [`REASON_ACL_DEFAULT`].
    AclDefaultAllow,
    /// ACLs on with `default_policy = "deny"`: deny, [`REASON_ACL_DEFAULT`].
    AclDefaultDeny,
    /// `default_intention_policy = "allow"` (Consul 1.18+): allow,
    /// [`REASON_DEFAULT_INTENTION_POLICY`].
    IntentionPolicyAllow,
    /// `default_intention_policy = "deny"` (Consul 1.18+): deny,
    /// [`REASON_DEFAULT_INTENTION_POLICY`].
    IntentionPolicyDeny,
}

impl DefaultDecision {
    /// Whether the default lets a connection through.
    pub fn allowed(self) -> bool {
        !matches!(
            self,
            DefaultDecision::AclDefaultDeny | DefaultDecision::IntentionPolicyDeny
        )
    }

    /// Consul's reason text for the default.
    pub fn reason(self) -> &'static str {
        match self {
            DefaultDecision::AclsDisabled => REASON_ACLS_DISABLED,
            DefaultDecision::AclDefaultAllow | DefaultDecision::AclDefaultDeny => {
                REASON_ACL_DEFAULT
            }
            DefaultDecision::IntentionPolicyAllow | DefaultDecision::IntentionPolicyDeny => {
                REASON_DEFAULT_INTENTION_POLICY
            }
        }
    }
}

/// The outcome of authorizing one client for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the connection may proceed (`Authorized`).
    pub allowed: bool,
    /// Consul's `Reason`: `Matched intention: <String()>` or the default's text. Plain text; a
    /// Go JSON encoder writes its `=>` as `=\u003e`.
    pub reason: String,
    /// The ID of the intention that decided, if one did.
    pub matched: Option<String>,
    /// How many intentions were compared with the client before deciding: at most the size of
    /// the destination's three buckets, whatever the total number of intentions.
    pub examined: usize,
}

impl Decision {
    /// A decision made without an intention (`matched` is `None`): by an allow-list, a trust
    /// domain policy or the agent's authorize answer.
    ///
    /// ```
    /// use consul_connect_types::intentions::Decision;
    ///
    /// let caller = "web";
    /// let d = Decision::new(caller == "web", "only web");
    /// assert!(d.allowed);
    /// assert_eq!(d, Decision::allow("only web"));
    /// assert!(!Decision::deny("only web").allowed);
    /// ```
    pub fn new(allowed: bool, reason: impl Into<String>) -> Self {
        Decision {
            allowed,
            reason: reason.into(),
            matched: None,
            examined: 0,
        }
    }

    /// [`Decision::new`] letting the client in.
    pub fn allow(reason: impl Into<String>) -> Self {
        Decision::new(true, reason)
    }

    /// [`Decision::new`] refusing the client.
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision::new(false, reason)
    }
}

/// Decides over the intentions matching a destination, already in evaluation order (as
/// `/v1/connect/intentions/match?by=destination` returns them): the first whose source matches
/// the client decides; otherwise `default` does.
///
/// Takes anything that iterates `&Intention`: `&[Intention]`, `&Vec<Intention>`,
/// `Vec<&Intention>`.
///
/// ```
/// use consul_connect_types::api::Intention;
/// use consul_connect_types::intentions::{decide_matches, DefaultDecision, Wording};
/// use consul_connect_types::spiffe::ServiceId;
///
/// let matches: Vec<Intention> = serde_json::from_str(r#"[
///   {"ID":"a","SourceNS":"default","SourceName":"web","DestinationNS":"default",
///    "DestinationName":"db","SourceType":"consul","Action":"allow","Precedence":9}
/// ]"#)?;
/// let api: ServiceId = "spiffe://abc.consul/ns/default/dc/dc1/svc/api".parse()?;
/// let d = decide_matches(&matches, &api, DefaultDecision::AclDefaultDeny, Wording::Consul1_9);
/// assert!(!d.allowed);
/// assert_eq!(d.reason, "Default behavior configured by ACLs");
/// assert_eq!(d.matched, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decide_matches<'a, I>(
    matches: I,
    source: &ServiceId,
    default: DefaultDecision,
    wording: Wording,
) -> Decision
where
    I: IntoIterator<Item = &'a Intention>,
{
    decide_for(
        matches,
        (source.partition(), source.namespace(), source.service()),
        default,
        wording,
    )
}

/// [`decide_matches`] for a source given by namespace and name, as
/// `/v1/connect/intentions/check` gives it.
pub fn decide_matches_by_name<'a, I>(
    matches: I,
    source_ns: &str,
    source_name: &str,
    default: DefaultDecision,
    wording: Wording,
) -> Decision
where
    I: IntoIterator<Item = &'a Intention>,
{
    decide_for(
        matches,
        (DEFAULT_PARTITION, source_ns, source_name),
        default,
        wording,
    )
}

/// The decision for a source given by (partition, namespace, name).
fn decide_for<'a, I>(
    matches: I,
    (source_partition, source_ns, source_name): (&str, &str, &str),
    default: DefaultDecision,
    wording: Wording,
) -> Decision
where
    I: IntoIterator<Item = &'a Intention>,
{
    let mut examined = 0;
    for ixn in matches {
        examined += 1;
        if source_partition_matches(ixn, source_partition)
            && source_matches(ixn, source_ns, source_name)
        {
            return Decision {
                // Go compares with IntentionActionAllow: anything else denies. L7 rules only
                // a proxy can apply, so they never admit an L4 connection.
                allowed: !is_l7(ixn) && ixn.action == "allow",
                reason: wording.matched(ixn),
                matched: Some(ixn.id.clone()),
                examined,
            };
        }
    }
    Decision {
        allowed: default.allowed(),
        reason: default.reason().to_owned(),
        matched: None,
        examined,
    }
}

/// Whether an intention's source covers a local client: `SourceNS` is `*` or equals the
/// namespace, and `SourceName` is `*` or equals the service, compared exactly (case-sensitive).
/// An intention for a cluster peer's source (`SourcePeer`, 1.13+) never covers a local client.
pub fn source_matches(ixn: &Intention, source_ns: &str, source_name: &str) -> bool {
    ixn.source_peer.as_deref().is_none_or(str::is_empty)
        && (ixn.source_ns == WILDCARD || ixn.source_ns == source_ns)
        && (ixn.source_name == WILDCARD || ixn.source_name == source_name)
}

/// Whether an intention's `SourcePartition` (Enterprise 1.11+; empty means `default`) is the
/// client's partition. A caller in another partition is another caller.
fn source_partition_matches(ixn: &Intention, partition: &str) -> bool {
    let wanted = ixn
        .source_partition
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_PARTITION);
    wanted == partition
}

#[cfg(test)]
mod tests;
