//! Consul's intention rules as plain functions over values: validation, precedence, matching and
//! the authorize decision (Consul 1.4.5).
//!
//! Both ends use this module: agent-sim for its `/v1/connect/intentions*` and
//! `/v1/agent/connect/authorize` endpoints, and the SDK's local authorizer, which watches
//! `/v1/connect/intentions/match?by=destination` and decides inside the TLS handshake with
//! [`decide_matches`]. [`IntentionSet::decide`] goes through the same function, so there is one
//! decision rule.
//!
//! The rules, from Consul's `agent/structs/intention.go`, `agent/consul/state/intention.go` and
//! `agent/agent_endpoint.go`:
//! - destination (and source) lookups are case-insensitive: the buckets (`*`,`*`), (ns,`*`) and
//!   (ns,name) of the lowercased names, merged in precedence order;
//! - the first intention whose *source* matches the client decides, and that comparison is
//!   exact and case-sensitive (`*` or equal namespace, `*` or equal service); the client's trust
//!   domain and datacenter play no part;
//! - with no match, the ACL default decides.
//!
//! ```
//! use consul_connect::api::Intention;
//! use consul_connect::intentions::{fill_defaults, validate, DefaultDecision, IntentionSet};
//! use consul_connect::spiffe::ServiceId;
//!
//! let mut deny: Intention = serde_json::from_str(
//!     r#"{"ID":"5887dc37-28b6-ab1e-5d8b-e5fa4499b42d","SourceName":"web","DestinationName":"db","Action":"deny"}"#,
//! )?;
//! fill_defaults(&mut deny);
//! validate(&deny)?;
//!
//! let mut set = IntentionSet::new();
//! set.insert(deny)?;
//!
//! let web: ServiceId = "spiffe://abc.consul/ns/default/dc/dc1/svc/web".parse()?;
//! let decision = set.decide(&web, "default", "db", DefaultDecision::AclsDisabled);
//! assert!(!decision.allowed);
//! assert_eq!(
//!     decision.reason,
//!     "Matched intention: DENY default/web => default/db \
//!      (ID: 5887dc37-28b6-ab1e-5d8b-e5fa4499b42d, Precedence: 9)"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::api::Intention;
use crate::spiffe::ServiceId;

/// The wildcard value of a namespace or name.
pub const WILDCARD: &str = "*";
/// The namespace the server fills in when one is left empty (the only one in Consul OSS 1.4).
pub const DEFAULT_NAMESPACE: &str = "default";
/// The only `SourceType` Consul 1.4 knows.
pub const SOURCE_TYPE_CONSUL: &str = "consul";
/// Longest `Description`, and longest `Meta` value, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 512;
/// Most `Meta` pairs.
pub const MAX_META_PAIRS: usize = 64;
/// Longest `Meta` key, in bytes.
pub const MAX_META_KEY_LEN: usize = 128;
/// Longest `Meta` value, in bytes.
pub const MAX_META_VALUE_LEN: usize = 512;

/// Reason when no intention matched and ACLs are disabled (the connection is allowed).
pub const REASON_ACLS_DISABLED: &str = "ACLs disabled, access is allowed by default";
/// Reason when no intention matched and the ACL default policy decided.
pub const REASON_ACL_DEFAULT: &str = "Default behavior configured by ACLs";
/// Prefix of the reason when an intention decided; the intention's [`Display`](fmt::Display)
/// form follows.
pub const REASON_MATCHED_PREFIX: &str = "Matched intention: ";

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// One of the four name fields of an intention, named as in Consul's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentionField {
    /// `SourceNS`.
    SourceNs,
    /// `SourceName`.
    SourceName,
    /// `DestinationNS`.
    DestinationNs,
    /// `DestinationName`.
    DestinationName,
}

impl fmt::Display for IntentionField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IntentionField::SourceNs => "SourceNS",
            IntentionField::SourceName => "SourceName",
            IntentionField::DestinationNs => "DestinationNS",
            IntentionField::DestinationName => "DestinationName",
        })
    }
}

/// One rule an intention breaks, with Consul's message as its `Display`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A name field is empty.
    #[error("{0} must be set")]
    Missing(IntentionField),
    /// A name field holds `*` together with other characters.
    #[error("{0}: wildcard character '*' cannot be used with partial values")]
    PartialWildcard(IntentionField),
    /// An exact (or empty) name under the wildcard namespace.
    #[error("{0}: exact value cannot follow wildcard namespace")]
    ExactAfterWildcardNamespace(IntentionField),
    /// `Description` is longer than [`MAX_DESCRIPTION_LEN`] bytes.
    #[error("Description exceeds maximum length {}", MAX_DESCRIPTION_LEN)]
    DescriptionTooLong,
    /// `Meta` has more than [`MAX_META_PAIRS`] pairs.
    #[error("Meta exceeds maximum element count {}", MAX_META_PAIRS)]
    TooManyMeta,
    /// A `Meta` key is longer than [`MAX_META_KEY_LEN`] bytes.
    #[error("Meta key {} exceeds maximum length {}", go_quote(.key), MAX_META_KEY_LEN)]
    MetaKeyTooLong {
        /// The key.
        key: String,
    },
    /// A `Meta` value is longer than [`MAX_META_VALUE_LEN`] bytes.
    #[error("Meta value for key {} exceeds maximum length {}", go_quote(.key), MAX_META_VALUE_LEN)]
    MetaValueTooLong {
        /// The key whose value is too long.
        key: String,
    },
    /// `Action` is neither `allow` nor `deny` (exact, lowercase).
    #[error("Action must be set to 'allow' or 'deny'")]
    InvalidAction,
    /// `SourceType` is not `consul`.
    #[error("SourceType must be set to 'consul'")]
    InvalidSourceType,
}

/// Everything wrong with an intention, in Consul's order.
///
/// `Display` is go-multierror's format as Consul 1.4.5 answers it (HTTP 500, plain text):
/// `N error(s) occurred:\n\n* first\n* second`, without a trailing newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors {
    errors: Vec<ValidationError>,
}

impl ValidationErrors {
    /// The errors, in the order Consul reports them (never empty).
    pub fn errors(&self) -> &[ValidationError] {
        &self.errors
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s) occurred:\n\n", self.errors.len())?;
        for (i, e) in self.errors.iter().enumerate() {
            let sep = if i == 0 { "" } else { "\n" };
            write!(f, "{sep}* {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Checks an intention as Consul's `Intention.Validate` does, accumulating every error.
///
/// Order: the four `must be set` checks; wildcard checks for `SourceNS`, `SourceName` (partial
/// wildcard, then exact-after-wildcard-namespace), `DestinationNS`, `DestinationName`; the
/// description length; the meta count; each meta pair (key, then value); `Action`;
/// `SourceType`. Go walks `Meta` in random map order; here keys come in sorted order, so the
/// output is deterministic. Call [`fill_defaults`] first, as the server does.
///
/// # Errors
///
/// Every rule the intention breaks, in that order.
///
/// ```
/// use consul_connect::api::Intention;
/// use consul_connect::intentions::{fill_defaults, validate};
///
/// let mut ixn: Intention = serde_json::from_str(r#"{"SourceName":"web","DestinationName":"db","Action":"alow"}"#)?;
/// fill_defaults(&mut ixn);
/// let err = validate(&ixn).unwrap_err();
/// assert_eq!(err.to_string(), "1 error(s) occurred:\n\n* Action must be set to 'allow' or 'deny'");
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn validate(ixn: &Intention) -> Result<(), ValidationErrors> {
    use IntentionField::*;
    let mut errors = Vec::new();

    for (field, value) in [
        (SourceNs, &ixn.source_ns),
        (SourceName, &ixn.source_name),
        (DestinationNs, &ixn.destination_ns),
        (DestinationName, &ixn.destination_name),
    ] {
        if value.is_empty() {
            errors.push(ValidationError::Missing(field));
        }
    }

    check_wildcards(
        &mut errors,
        (SourceNs, &ixn.source_ns),
        (SourceName, &ixn.source_name),
    );
    check_wildcards(
        &mut errors,
        (DestinationNs, &ixn.destination_ns),
        (DestinationName, &ixn.destination_name),
    );

    if ixn.description.len() > MAX_DESCRIPTION_LEN {
        errors.push(ValidationError::DescriptionTooLong);
    }
    if let Some(meta) = &ixn.meta {
        if meta.len() > MAX_META_PAIRS {
            errors.push(ValidationError::TooManyMeta);
        }
        for (key, value) in meta {
            if key.len() > MAX_META_KEY_LEN {
                errors.push(ValidationError::MetaKeyTooLong { key: key.clone() });
            }
            if value.len() > MAX_META_VALUE_LEN {
                errors.push(ValidationError::MetaValueTooLong { key: key.clone() });
            }
        }
    }

    if !matches!(ixn.action.as_str(), "allow" | "deny") {
        errors.push(ValidationError::InvalidAction);
    }
    if ixn.source_type != SOURCE_TYPE_CONSUL {
        errors.push(ValidationError::InvalidSourceType);
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors { errors })
    }
}

/// Fills what the server fills on create and update, before validating: an empty `SourceType`
/// becomes `consul`, an empty `SourceNS` or `DestinationNS` becomes `default`, and `Precedence`
/// is computed. A missing `Meta` becomes `{}`, as the state store writes it (this does not
/// change what [`validate`] reports).
pub fn fill_defaults(ixn: &mut Intention) {
    if ixn.source_type.is_empty() {
        ixn.source_type = SOURCE_TYPE_CONSUL.to_owned();
    }
    if ixn.source_ns.is_empty() {
        ixn.source_ns = DEFAULT_NAMESPACE.to_owned();
    }
    if ixn.destination_ns.is_empty() {
        ixn.destination_ns = DEFAULT_NAMESPACE.to_owned();
    }
    ixn.precedence = precedence(ixn);
    ixn.meta.get_or_insert_with(Default::default);
}

fn check_wildcards(
    errors: &mut Vec<ValidationError>,
    (ns_field, ns): (IntentionField, &str),
    (name_field, name): (IntentionField, &str),
) {
    if ns != WILDCARD && ns.contains(WILDCARD) {
        errors.push(ValidationError::PartialWildcard(ns_field));
    }
    if name != WILDCARD {
        if name.contains(WILDCARD) {
            errors.push(ValidationError::PartialWildcard(name_field));
        }
        if ns == WILDCARD {
            errors.push(ValidationError::ExactAfterWildcardNamespace(name_field));
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
/// use consul_connect::api::Intention;
/// use consul_connect::intentions::precedence;
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
/// as Consul does ([`fill_defaults`] and [`IntentionSet::insert`] keep it right). The `ID` breaks
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

/// Consul's `Intention.String()`:
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

/// What happens when no intention matches: Consul resolves the anonymous token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefaultDecision {
    /// ACLs are off: allow, [`REASON_ACLS_DISABLED`].
    AclsDisabled,
    /// ACLs on with `default_policy = "allow"`: allow, [`REASON_ACL_DEFAULT`].
    AclDefaultAllow,
    /// ACLs on with `default_policy = "deny"`: deny, [`REASON_ACL_DEFAULT`].
    AclDefaultDeny,
}

impl DefaultDecision {
    /// Whether the default lets a connection through.
    pub fn allowed(self) -> bool {
        !matches!(self, DefaultDecision::AclDefaultDeny)
    }

    /// Consul's reason text for the default.
    pub fn reason(self) -> &'static str {
        match self {
            DefaultDecision::AclsDisabled => REASON_ACLS_DISABLED,
            DefaultDecision::AclDefaultAllow | DefaultDecision::AclDefaultDeny => {
                REASON_ACL_DEFAULT
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

/// Decides over the intentions matching a destination, already in evaluation order (as
/// `/v1/connect/intentions/match?by=destination` returns them): the first whose source matches
/// the client decides; otherwise `default` does.
///
/// Takes anything that iterates `&Intention`: `&[Intention]`, `&Vec<Intention>`,
/// `Vec<&Intention>`.
///
/// ```
/// use consul_connect::api::Intention;
/// use consul_connect::intentions::{decide_matches, DefaultDecision};
/// use consul_connect::spiffe::ServiceId;
///
/// let matches: Vec<Intention> = serde_json::from_str(r#"[
///   {"ID":"a","SourceNS":"default","SourceName":"web","DestinationNS":"default",
///    "DestinationName":"db","SourceType":"consul","Action":"allow","Precedence":9}
/// ]"#)?;
/// let api: ServiceId = "spiffe://abc.consul/ns/default/dc/dc1/svc/api".parse()?;
/// let d = decide_matches(&matches, &api, DefaultDecision::AclDefaultDeny);
/// assert!(!d.allowed);
/// assert_eq!(d.reason, "Default behavior configured by ACLs");
/// assert_eq!(d.matched, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decide_matches<'a, I>(matches: I, source: &ServiceId, default: DefaultDecision) -> Decision
where
    I: IntoIterator<Item = &'a Intention>,
{
    decide_matches_by_name(matches, source.namespace(), source.service(), default)
}

/// [`decide_matches`] for a source given by namespace and name, as
/// `/v1/connect/intentions/check` gives it.
pub fn decide_matches_by_name<'a, I>(
    matches: I,
    source_ns: &str,
    source_name: &str,
    default: DefaultDecision,
) -> Decision
where
    I: IntoIterator<Item = &'a Intention>,
{
    let mut examined = 0;
    for ixn in matches {
        examined += 1;
        if source_matches(ixn, source_ns, source_name) {
            return Decision {
                // Go compares with IntentionActionAllow: anything else denies.
                allowed: ixn.action == "allow",
                reason: format!("{REASON_MATCHED_PREFIX}{ixn}"),
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

/// Whether an intention's source covers a client: `SourceNS` is `*` or equals the namespace,
/// and `SourceName` is `*` or equals the service, compared exactly (case-sensitive).
pub fn source_matches(ixn: &Intention, source_ns: &str, source_name: &str) -> bool {
    (ixn.source_ns == WILDCARD || ixn.source_ns == source_ns)
        && (ixn.source_name == WILDCARD || ixn.source_name == source_name)
}

// ---------------------------------------------------------------------------------------------
// IntentionSet
// ---------------------------------------------------------------------------------------------

/// An intention whose four names equal, case-insensitively, those of one with another ID.
///
/// `Display` is Consul's message (HTTP 500): `duplicate intention found: <existing String()>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate intention found: {existing}")]
pub struct DuplicateIntention {
    /// The intention already stored.
    pub existing: Box<Intention>,
}

/// Intentions indexed as Consul's state store does, so that matching and deciding cost depends
/// on the buckets involved, not on the number of intentions.
///
/// Each intention sits in one destination bucket and one source bucket, keyed by its lowercased
/// (namespace, name); buckets are kept in evaluation order. A match for (ns, name) merges the
/// buckets (`*`,`*`), (ns,`*`) unless ns is `*`, and (ns,name) unless name is `*`.
///
/// ```
/// use consul_connect::api::Intention;
/// use consul_connect::intentions::{fill_defaults, IntentionSet};
///
/// let mut set = IntentionSet::new();
/// for (id, src, dst, action) in [("1", "web", "db", "deny"), ("2", "*", "db", "allow")] {
///     let mut ixn: Intention = serde_json::from_value(serde_json::json!({
///         "ID": id, "SourceName": src, "DestinationName": dst, "Action": action,
///     }))?;
///     fill_defaults(&mut ixn);
///     set.insert(ixn)?;
/// }
/// let ids: Vec<&str> = set.match_destination("default", "DB").iter().map(|i| i.id.as_str()).collect();
/// assert_eq!(ids, ["1", "2"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct IntentionSet {
    by_id: HashMap<String, Arc<Intention>>,
    by_destination: Index,
    by_source: Index,
    /// Lowercased (SourceNS, SourceName, DestinationNS, DestinationName) → ID.
    by_names: HashMap<NamesKey, String>,
}

type NamesKey = (String, String, String, String);

impl IntentionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of intentions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the set holds no intention.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The intention with this ID.
    pub fn get(&self, id: &str) -> Option<&Intention> {
        self.by_id.get(id).map(|ixn| &**ixn)
    }

    /// All intentions, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Intention> + '_ {
        self.by_id.values().map(|ixn| &**ixn)
    }

    /// The stored intention with the same four names (case-insensitively) and another ID: what
    /// makes Consul refuse a create or update.
    pub fn find_duplicate(&self, ixn: &Intention) -> Option<&Intention> {
        let id = self.by_names.get(&names_key(ixn))?;
        if *id == ixn.id {
            return None;
        }
        self.get(id)
    }

    /// Inserts an intention, or replaces the one with the same ID (moving it between buckets if
    /// its names changed), and returns the replaced one. `Precedence` is recomputed, as Consul
    /// does on every write. A duplicate of another intention is refused and the set is left
    /// unchanged. Validation is the caller's ([`validate`]).
    ///
    /// # Errors
    ///
    /// [`DuplicateIntention`] naming the stored intention, as Consul's
    /// `duplicate intention found: ...`.
    pub fn insert(&mut self, mut ixn: Intention) -> Result<Option<Intention>, DuplicateIntention> {
        if let Some(existing) = self.find_duplicate(&ixn) {
            return Err(DuplicateIntention {
                existing: Box::new(existing.clone()),
            });
        }
        ixn.precedence = precedence(&ixn);
        let replaced = self.remove(&ixn.id);
        let ixn = Arc::new(ixn);
        self.by_destination
            .add(&ixn.destination_ns, &ixn.destination_name, &ixn);
        self.by_source.add(&ixn.source_ns, &ixn.source_name, &ixn);
        self.by_names.insert(names_key(&ixn), ixn.id.clone());
        self.by_id.insert(ixn.id.clone(), ixn);
        Ok(replaced)
    }

    /// Removes the intention with this ID and returns it.
    pub fn remove(&mut self, id: &str) -> Option<Intention> {
        let ixn = self.by_id.remove(id)?;
        self.by_destination
            .remove(&ixn.destination_ns, &ixn.destination_name, &ixn);
        self.by_source
            .remove(&ixn.source_ns, &ixn.source_name, &ixn);
        let key = names_key(&ixn);
        if self
            .by_names
            .get(&key)
            .is_some_and(|stored| *stored == ixn.id)
        {
            self.by_names.remove(&key);
        }
        // Every index has dropped its clone, so this is normally the only reference left.
        Some(Arc::try_unwrap(ixn).unwrap_or_else(|shared| (*shared).clone()))
    }

    /// All intentions in evaluation order, as `GET /v1/connect/intentions` lists them.
    pub fn all_sorted(&self) -> Vec<&Intention> {
        let mut all: Vec<&Intention> = self.iter().collect();
        all.sort_by(|a, b| compare_precedence(a, b));
        all
    }

    /// Intentions whose destination covers (namespace, name), in evaluation order
    /// (`match?by=destination`). The lookup is case-insensitive.
    pub fn match_destination(&self, namespace: &str, name: &str) -> Vec<&Intention> {
        self.by_destination.matches(namespace, name).collect()
    }

    /// Intentions whose source covers (namespace, name), in evaluation order
    /// (`match?by=source`). The lookup is case-insensitive.
    pub fn match_source(&self, namespace: &str, name: &str) -> Vec<&Intention> {
        self.by_source.matches(namespace, name).collect()
    }

    /// Authorizes `source` for the target service, as `/v1/agent/connect/authorize` does:
    /// [`decide_matches`] over the destination's matches, walked lazily from its buckets.
    pub fn decide(
        &self,
        source: &ServiceId,
        target_ns: &str,
        target: &str,
        default: DefaultDecision,
    ) -> Decision {
        decide_matches(
            self.by_destination.matches(target_ns, target),
            source,
            default,
        )
    }

    /// Decides for a source given by names, as `/v1/connect/intentions/check` does.
    pub fn check(
        &self,
        source_ns: &str,
        source_name: &str,
        destination_ns: &str,
        destination_name: &str,
        default: DefaultDecision,
    ) -> Decision {
        decide_matches_by_name(
            self.by_destination
                .matches(destination_ns, destination_name),
            source_ns,
            source_name,
            default,
        )
    }
}

fn names_key(ixn: &Intention) -> NamesKey {
    (
        lower(&ixn.source_ns).into_owned(),
        lower(&ixn.source_name).into_owned(),
        lower(&ixn.destination_ns).into_owned(),
        lower(&ixn.destination_name).into_owned(),
    )
}

/// Lowercases as Go's `strings.ToLower` (memdb's `Lowercase` indexes), borrowing when there is
/// nothing to change.
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

/// One side's buckets: lowercased namespace → lowercased name → intentions in evaluation order.
#[derive(Debug, Clone, Default)]
struct Index {
    buckets: HashMap<String, HashMap<String, Vec<Arc<Intention>>>>,
}

impl Index {
    fn add(&mut self, ns: &str, name: &str, ixn: &Arc<Intention>) {
        let bucket = self
            .buckets
            .entry(lower(ns).into_owned())
            .or_default()
            .entry(lower(name).into_owned())
            .or_default();
        let at = bucket
            .binary_search_by(|probe| compare_precedence(probe, ixn))
            .unwrap_or_else(|at| at);
        bucket.insert(at, Arc::clone(ixn));
    }

    fn remove(&mut self, ns: &str, name: &str, ixn: &Intention) {
        let (ns, name) = (lower(ns), lower(name));
        let Some(names) = self.buckets.get_mut(ns.as_ref()) else {
            return;
        };
        let Some(bucket) = names.get_mut(name.as_ref()) else {
            return;
        };
        if let Ok(at) = bucket.binary_search_by(|probe| compare_precedence(probe, ixn)) {
            bucket.remove(at);
        }
        if bucket.is_empty() {
            names.remove(name.as_ref());
            if names.is_empty() {
                self.buckets.remove(ns.as_ref());
            }
        }
    }

    /// The bucket of already-lowercased names.
    fn bucket(&self, ns: &str, name: &str) -> &[Arc<Intention>] {
        self.buckets
            .get(ns)
            .and_then(|names| names.get(name))
            .map_or(&[], Vec::as_slice)
    }

    fn matches(&self, ns: &str, name: &str) -> Merge<'_> {
        let mut heads: [&[Arc<Intention>]; 3] = [&[], &[], &[]];
        heads[0] = self.bucket(WILDCARD, WILDCARD);
        if ns != WILDCARD {
            let ns = lower(ns);
            heads[1] = self.bucket(&ns, WILDCARD);
            if name != WILDCARD {
                heads[2] = self.bucket(&ns, &lower(name));
            }
        }
        Merge { heads }
    }
}

/// Merges up to three buckets, each in evaluation order, into one sequence in that order.
struct Merge<'a> {
    heads: [&'a [Arc<Intention>]; 3],
}

impl<'a> Iterator for Merge<'a> {
    type Item = &'a Intention;

    fn next(&mut self) -> Option<&'a Intention> {
        let mut best: Option<(usize, &'a Intention)> = None;
        for (i, head) in self.heads.iter().enumerate() {
            if let Some(candidate) = head.first() {
                let better = match best {
                    None => true,
                    Some((_, current)) => compare_precedence(candidate, current) == Ordering::Less,
                };
                if better {
                    best = Some((i, candidate));
                }
            }
        }
        let (i, ixn) = best?;
        self.heads[i] = &self.heads[i][1..];
        Some(ixn)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.heads.iter().map(|h| h.len()).sum();
        (n, Some(n))
    }
}

/// Go's `%q` for a string: double quotes, with `"` and `\` escaped, control characters as
/// `\n`, `\t`, ..., `\x1f`, `\u0085`; other characters as they are. (Go also escapes a few
/// non-printable Unicode ranges beyond the controls; meta keys in practice never hold them.)
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
// A failed unwrap is a failed test, which is what a test should do.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use time::OffsetDateTime;

    use super::*;
    use crate::api::AuthorizeResponse;
    use crate::spiffe::TrustDomain;

    const TD: &str = "678277b4-c121-fe15-9eff-637834838f87.consul";
    const SAMPLE_ID: &str = "5887dc37-28b6-ab1e-5d8b-e5fa4499b42d";

    const OFF: DefaultDecision = DefaultDecision::AclsDisabled;
    const ACL_ALLOW: DefaultDecision = DefaultDecision::AclDefaultAllow;
    const ACL_DENY: DefaultDecision = DefaultDecision::AclDefaultDeny;

    /// An intention from `ns/name` pairs, with its precedence set.
    fn ixn(id: &str, src: &str, dst: &str, action: &str) -> Intention {
        let (source_ns, source_name) = src.split_once('/').unwrap();
        let (destination_ns, destination_name) = dst.split_once('/').unwrap();
        let mut ixn = Intention {
            id: id.to_owned(),
            description: String::new(),
            source_ns: source_ns.to_owned(),
            source_name: source_name.to_owned(),
            destination_ns: destination_ns.to_owned(),
            destination_name: destination_name.to_owned(),
            source_type: "consul".to_owned(),
            action: action.to_owned(),
            default_addr: String::new(),
            default_port: 0,
            meta: Some(BTreeMap::new()),
            precedence: 0,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            create_index: 1,
            modify_index: 1,
        };
        ixn.precedence = precedence(&ixn);
        ixn
    }

    /// `"id: src_ns/src -> dst_ns/dst action"`.
    fn spec(s: &str) -> Intention {
        let (id, rest) = s.split_once(": ").unwrap();
        match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
            [src, "->", dst, action] => ixn(id, src, dst, action),
            other => panic!("bad spec {other:?}"),
        }
    }

    fn client(ns: &str, name: &str) -> ServiceId {
        ServiceId::new(TrustDomain::new(TD).unwrap(), ns, "dc1", name).unwrap()
    }

    fn set_of(specs: &[&str]) -> IntentionSet {
        let mut set = IntentionSet::new();
        for s in specs {
            set.insert(spec(s)).unwrap();
        }
        set
    }

    fn ids<'a>(list: impl IntoIterator<Item = &'a Intention>) -> Vec<&'a str> {
        list.into_iter().map(|i| i.id.as_str()).collect()
    }

    /// The body of a captured `curl -i` response.
    fn sample_body(raw: &str) -> &str {
        raw.split_once("\r\n\r\n").unwrap().1
    }

    // -- decision table ------------------------------------------------------------------------

    struct Case {
        name: &'static str,
        ixns: &'static [&'static str],
        source: &'static str,
        target: &'static str,
        default: DefaultDecision,
        allowed: bool,
        matched: Option<&'static str>,
        reason: &'static str,
    }

    const LADDER: &[&str] = &[
        "p9: default/web -> default/db deny",
        "p8: default/* -> default/db allow",
        "p7: */* -> default/db deny",
        "p6: default/web -> default/* allow",
        "p5: default/* -> default/* deny",
        "p4: */* -> default/* allow",
        "p3: default/web -> */* deny",
        "p2: default/* -> */* allow",
        "p1: */* -> */* deny",
    ];

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        Case { name: "no intentions, ACLs disabled", ixns: &[],
            source: "default/web", target: "default/db", default: OFF,
            allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
        Case { name: "no intentions, ACL default deny", ixns: &[],
            source: "default/web", target: "default/db", default: ACL_DENY,
            allowed: false, matched: None, reason: "Default behavior configured by ACLs" },
        Case { name: "no intentions, ACL default allow", ixns: &[],
            source: "default/web", target: "default/db", default: ACL_ALLOW,
            allowed: true, matched: None, reason: "Default behavior configured by ACLs" },
        Case { name: "exact deny", ixns: &["a: default/web -> default/db deny"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: false, matched: Some("a"),
            reason: "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)" },
        Case { name: "exact allow beats ACL default deny", ixns: &["a: default/web -> default/db allow"],
            source: "default/web", target: "default/db", default: ACL_DENY,
            allowed: true, matched: Some("a"),
            reason: "Matched intention: ALLOW default/web => default/db (ID: a, Precedence: 9)" },
        Case { name: "exact allow does not cover another source", ixns: &["a: default/web -> default/db allow"],
            source: "default/api", target: "default/db", default: ACL_DENY,
            allowed: false, matched: None, reason: "Default behavior configured by ACLs" },
        Case { name: "exact deny (9) beats */* allow (1)",
            ixns: &["a: default/web -> default/db deny", "b: */* -> */* allow"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: false, matched: Some("a"),
            reason: "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)" },
        Case { name: "*/* allow (1) covers other clients",
            ixns: &["a: default/web -> default/db deny", "b: */* -> */* allow"],
            source: "default/api", target: "default/db", default: ACL_DENY,
            allowed: true, matched: Some("b"),
            reason: "Matched intention: ALLOW */* => */* (ID: b, Precedence: 1)" },
        Case { name: "exact deny (9) beats ns/* allow (8)",
            ixns: &["a: default/web -> default/db deny", "b: default/* -> default/db allow"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: false, matched: Some("a"),
            reason: "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)" },
        Case { name: "ns/* allow (8) covers the rest of the namespace",
            ixns: &["a: default/web -> default/db deny", "b: default/* -> default/db allow"],
            source: "default/api", target: "default/db", default: ACL_DENY,
            allowed: true, matched: Some("b"),
            reason: "Matched intention: ALLOW default/* => default/db (ID: b, Precedence: 8)" },
        Case { name: "exact allow (9) beats ns/* deny (8)",
            ixns: &["a: default/web -> default/db allow", "b: default/* -> default/db deny"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: true, matched: Some("a"),
            reason: "Matched intention: ALLOW default/web => default/db (ID: a, Precedence: 9)" },
        Case { name: "ns/* deny (8) for the others",
            ixns: &["a: default/web -> default/db allow", "b: default/* -> default/db deny"],
            source: "default/api", target: "default/db", default: ACL_ALLOW,
            allowed: false, matched: Some("b"),
            reason: "Matched intention: DENY default/* => default/db (ID: b, Precedence: 8)" },
        Case { name: "* -> db allow (7) beats web -> * deny (6)",
            ixns: &["a: */* -> default/db allow", "b: default/web -> default/* deny"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: true, matched: Some("a"),
            reason: "Matched intention: ALLOW */* => default/db (ID: a, Precedence: 7)" },
        Case { name: "web -> * deny (6) for another destination",
            ixns: &["a: */* -> default/db allow", "b: default/web -> default/* deny"],
            source: "default/web", target: "default/cache", default: OFF,
            allowed: false, matched: Some("b"),
            reason: "Matched intention: DENY default/web => default/* (ID: b, Precedence: 6)" },
        Case { name: "no match falls to ACL default deny",
            ixns: &["a: */* -> default/db allow", "b: default/web -> default/* deny"],
            source: "default/api", target: "default/cache", default: ACL_DENY,
            allowed: false, matched: None, reason: "Default behavior configured by ACLs" },
        Case { name: "no match falls to ACLs disabled",
            ixns: &["a: */* -> default/db allow", "b: default/web -> default/* deny"],
            source: "default/api", target: "default/cache", default: OFF,
            allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
        Case { name: "ns/* -> db allow (8) beats web -> * deny (6)",
            ixns: &["a: default/* -> default/db allow", "b: default/web -> default/* deny"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: true, matched: Some("a"),
            reason: "Matched intention: ALLOW default/* => default/db (ID: a, Precedence: 8)" },
        Case { name: "web -> * allow (6) beats ns/* -> * deny (5)",
            ixns: &["a: default/web -> default/* allow", "b: default/* -> default/* deny"],
            source: "default/web", target: "default/cache", default: ACL_DENY,
            allowed: true, matched: Some("a"),
            reason: "Matched intention: ALLOW default/web => default/* (ID: a, Precedence: 6)" },
        Case { name: "ns/* -> * deny (5) for the others",
            ixns: &["a: default/web -> default/* allow", "b: default/* -> default/* deny"],
            source: "default/api", target: "default/cache", default: ACL_ALLOW,
            allowed: false, matched: Some("b"),
            reason: "Matched intention: DENY default/* => default/* (ID: b, Precedence: 5)" },
        Case { name: "*/* -> ns/* allow (4) beats ns/* -> */* deny (2)",
            ixns: &["a: */* -> default/* allow", "b: default/* -> */* deny"],
            source: "default/web", target: "default/cache", default: OFF,
            allowed: true, matched: Some("a"),
            reason: "Matched intention: ALLOW */* => default/* (ID: a, Precedence: 4)" },
        Case { name: "*/* -> db allow (7) beats web -> */* deny (3)",
            ixns: &["a: default/web -> */* deny", "b: */* -> default/db allow"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: true, matched: Some("b"),
            reason: "Matched intention: ALLOW */* => default/db (ID: b, Precedence: 7)" },
        Case { name: "web -> */* deny (3) elsewhere",
            ixns: &["a: default/web -> */* deny", "b: */* -> default/db allow"],
            source: "default/web", target: "default/cache", default: OFF,
            allowed: false, matched: Some("a"),
            reason: "Matched intention: DENY default/web => */* (ID: a, Precedence: 3)" },
        Case { name: "*/* deny (1) beats ACL default allow", ixns: &["a: */* -> */* deny"],
            source: "default/web", target: "default/db", default: ACL_ALLOW,
            allowed: false, matched: Some("a"),
            reason: "Matched intention: DENY */* => */* (ID: a, Precedence: 1)" },
        // The full ladder: each shape decides exactly when every shape above it misses.
        Case { name: "ladder 9", ixns: LADDER, source: "default/web", target: "default/db", default: OFF,
            allowed: false, matched: Some("p9"),
            reason: "Matched intention: DENY default/web => default/db (ID: p9, Precedence: 9)" },
        Case { name: "ladder 8", ixns: LADDER, source: "default/api", target: "default/db", default: OFF,
            allowed: true, matched: Some("p8"),
            reason: "Matched intention: ALLOW default/* => default/db (ID: p8, Precedence: 8)" },
        Case { name: "ladder 7", ixns: LADDER, source: "other/web", target: "default/db", default: OFF,
            allowed: false, matched: Some("p7"),
            reason: "Matched intention: DENY */* => default/db (ID: p7, Precedence: 7)" },
        Case { name: "ladder 6", ixns: LADDER, source: "default/web", target: "default/cache", default: OFF,
            allowed: true, matched: Some("p6"),
            reason: "Matched intention: ALLOW default/web => default/* (ID: p6, Precedence: 6)" },
        Case { name: "ladder 5", ixns: LADDER, source: "default/api", target: "default/cache", default: OFF,
            allowed: false, matched: Some("p5"),
            reason: "Matched intention: DENY default/* => default/* (ID: p5, Precedence: 5)" },
        Case { name: "ladder 4", ixns: LADDER, source: "other/api", target: "default/cache", default: ACL_DENY,
            allowed: true, matched: Some("p4"),
            reason: "Matched intention: ALLOW */* => default/* (ID: p4, Precedence: 4)" },
        Case { name: "ladder 3", ixns: LADDER, source: "default/web", target: "other/db", default: OFF,
            allowed: false, matched: Some("p3"),
            reason: "Matched intention: DENY default/web => */* (ID: p3, Precedence: 3)" },
        Case { name: "ladder 2", ixns: LADDER, source: "default/api", target: "other/db", default: ACL_DENY,
            allowed: true, matched: Some("p2"),
            reason: "Matched intention: ALLOW default/* => */* (ID: p2, Precedence: 2)" },
        Case { name: "ladder 1", ixns: LADDER, source: "other/api", target: "other/db", default: ACL_ALLOW,
            allowed: false, matched: Some("p1"),
            reason: "Matched intention: DENY */* => */* (ID: p1, Precedence: 1)" },
        // Case: destination lookups ignore case, source comparison does not (#16244).
        Case { name: "mixed-case intention destination matches", ixns: &["a: default/web -> default/DB deny"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: false, matched: Some("a"),
            reason: "Matched intention: DENY default/web => default/DB (ID: a, Precedence: 9)" },
        Case { name: "mixed-case target matches", ixns: &["a: default/web -> default/db deny"],
            source: "default/web", target: "default/Db", default: OFF,
            allowed: false, matched: Some("a"),
            reason: "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)" },
        Case { name: "mixed-case target namespace matches", ixns: &["a: default/web -> default/* deny"],
            source: "default/web", target: "DEFAULT/db", default: OFF,
            allowed: false, matched: Some("a"),
            reason: "Matched intention: DENY default/web => default/* (ID: a, Precedence: 6)" },
        Case { name: "mixed-case intention source does not match", ixns: &["a: default/Web -> default/db deny"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
        Case { name: "mixed-case client does not match", ixns: &["a: default/web -> default/db deny"],
            source: "default/Web", target: "default/db", default: OFF,
            allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
        Case { name: "mixed-case source namespace does not match", ixns: &["a: Default/web -> default/db deny"],
            source: "default/web", target: "default/db", default: ACL_ALLOW,
            allowed: true, matched: None, reason: "Default behavior configured by ACLs" },
        Case { name: "other source namespace does not match", ixns: &["a: other/web -> default/db allow"],
            source: "default/web", target: "default/db", default: ACL_DENY,
            allowed: false, matched: None, reason: "Default behavior configured by ACLs" },
        Case { name: "intentions for other destinations do not apply",
            ixns: &["a: default/web -> default/cache deny", "b: default/web -> other/* deny",
                    "c: default/web -> other/db deny"],
            source: "default/web", target: "default/db", default: OFF,
            allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
        Case { name: "target namespace selects the buckets",
            ixns: &["a: default/web -> default/db allow", "c: default/web -> other/db deny"],
            source: "default/web", target: "other/db", default: OFF,
            allowed: false, matched: Some("c"),
            reason: "Matched intention: DENY default/web => other/db (ID: c, Precedence: 9)" },
    ];

    #[test]
    fn decision_table() {
        assert!(CASES.len() >= 30, "{} cases", CASES.len());
        for case in CASES {
            let (src_ns, src_name) = case.source.split_once('/').unwrap();
            let (dst_ns, dst_name) = case.target.split_once('/').unwrap();
            let source = client(src_ns, src_name);
            // Insertion order must not matter.
            for reversed in [false, true] {
                let mut specs = case.ixns.to_vec();
                if reversed {
                    specs.reverse();
                }
                let set = set_of(&specs);
                let what = format!("{} (reversed: {reversed})", case.name);

                let d = set.decide(&source, dst_ns, dst_name, case.default);
                assert_eq!(d.allowed, case.allowed, "{what}: allowed");
                assert_eq!(d.matched.as_deref(), case.matched, "{what}: matched");
                assert_eq!(d.reason, case.reason, "{what}: reason");

                // The SDK path: the agent's match list, decided by the free function.
                let list: Vec<Intention> = set
                    .match_destination(dst_ns, dst_name)
                    .into_iter()
                    .cloned()
                    .collect();
                assert_eq!(
                    decide_matches(&list, &source, case.default),
                    d,
                    "{what}: sdk"
                );

                // `/intentions/check` gives the same answer by names.
                let checked = set.check(src_ns, src_name, dst_ns, dst_name, case.default);
                assert_eq!(checked, d, "{what}: check");
            }
        }
    }

    #[test]
    fn trust_domain_and_datacenter_are_ignored() {
        let set = set_of(&["a: default/web -> default/db deny"]);
        let foreign: ServiceId = "spiffe://other-cluster.consul/ns/default/dc/dc9/svc/web"
            .parse()
            .unwrap();
        let d = set.decide(&foreign, "default", "db", OFF);
        assert!(!d.allowed);
        assert_eq!(d.matched.as_deref(), Some("a"));
    }

    #[test]
    fn non_allow_action_denies_like_go() {
        // Go authorizes with `Action == "allow"`; an unvalidated action never allows.
        let list = vec![ixn("a", "default/web", "default/db", "ALLOW")];
        let d = decide_matches(&list, &client("default", "web"), ACL_ALLOW);
        assert!(!d.allowed);
        assert_eq!(d.matched.as_deref(), Some("a"));
    }

    #[test]
    fn reasons_equal_the_captured_authorize_answers() {
        let web = client("default", "web");
        for (raw, action) in [
            (
                include_str!("../tests/data/consul-1.4.5/15_authorize_deny.http"),
                "deny",
            ),
            (
                include_str!("../tests/data/consul-1.4.5/49_authorize_allow_intention.http"),
                "allow",
            ),
        ] {
            let captured: AuthorizeResponse = serde_json::from_str(sample_body(raw)).unwrap();
            let list = vec![ixn(SAMPLE_ID, "default/web", "default/db", action)];
            let d = decide_matches(&list, &web, OFF);
            assert_eq!(d.allowed, captured.authorized);
            assert_eq!(d.reason, captured.reason);
        }
    }

    #[test]
    fn default_decisions() {
        assert!(OFF.allowed() && ACL_ALLOW.allowed() && !ACL_DENY.allowed());
        assert_eq!(OFF.reason(), "ACLs disabled, access is allowed by default");
        assert_eq!(ACL_ALLOW.reason(), "Default behavior configured by ACLs");
        assert_eq!(ACL_DENY.reason(), "Default behavior configured by ACLs");
        let d = decide_matches(&[], &client("default", "web"), ACL_DENY);
        assert_eq!((d.allowed, d.matched, d.examined), (false, None, 0));
    }

    // -- precedence, order, display ------------------------------------------------------------

    #[test]
    fn precedence_of_all_nine_shapes() {
        let dests = [("default/db", 9), ("default/*", 6), ("*/*", 3)];
        let sources = [("default/web", 0), ("default/*", 1), ("*/*", 2)];
        let mut seen = Vec::new();
        for (dst, max) in dests {
            for (src, drop) in sources {
                let p = precedence(&ixn("x", src, dst, "allow"));
                assert_eq!(p, max - drop, "{src} -> {dst}");
                seen.push(p);
            }
        }
        assert_eq!(seen, [9, 8, 7, 6, 5, 4, 3, 2, 1]);
        // Precedence looks at the shape only, not at the letters.
        assert_eq!(precedence(&ixn("x", "Other/Web", "Default/DB", "deny")), 9);
    }

    #[test]
    fn sort_is_precedence_then_source_then_destination() {
        let mut list = vec![
            spec("1: b/a -> a/a allow"),
            spec("2: a/b -> a/a allow"),
            spec("3: a/a -> b/a allow"),
            spec("4: a/a -> a/b allow"),
            spec("5: a/a -> a/a allow"),
            spec("6: a/* -> a/a allow"),
            spec("7: */* -> */* allow"),
            spec("8: A/a -> a/a allow"),
            spec("9: a/* -> */* allow"),
        ];
        list.reverse();
        sort_by_precedence(&mut list);
        // 'A' < 'a' by bytes; the source decides before the destination ("3" before "1").
        assert_eq!(ids(&list), ["8", "5", "4", "3", "2", "1", "6", "9", "7"]);

        // "8" is "5" up to case, so a set (which refuses duplicates) holds the rest.
        let mut set = IntentionSet::new();
        for i in list.iter().rev().filter(|i| i.id != "8") {
            set.insert(i.clone()).unwrap();
        }
        assert_eq!(
            ids(set.all_sorted()),
            ["5", "4", "3", "2", "1", "6", "9", "7"]
        );
        assert_eq!(
            ids(set.match_destination("a", "a")),
            ["5", "2", "1", "6", "9", "7"]
        );
        assert_eq!(compare_precedence(&list[0], &list[0]), Ordering::Equal);
    }

    #[test]
    fn display_is_consuls_string() {
        let mut i = ixn(SAMPLE_ID, "default/web", "default/db", "deny");
        assert_eq!(
            i.to_string(),
            "DENY default/web => default/db (ID: 5887dc37-28b6-ab1e-5d8b-e5fa4499b42d, Precedence: 9)"
        );
        i.action = "allow".into();
        i.precedence = 3; // the stored field is shown, as Go does
        assert_eq!(
            i.to_string(),
            "ALLOW default/web => default/db (ID: 5887dc37-28b6-ab1e-5d8b-e5fa4499b42d, Precedence: 3)"
        );
    }

    // -- validation ----------------------------------------------------------------------------

    fn valid() -> Intention {
        ixn("", "default/web", "default/db", "allow")
    }

    fn messages(ixn: &Intention) -> Vec<String> {
        match validate(ixn) {
            Ok(()) => Vec::new(),
            Err(e) => e.errors().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn valid_intentions_pass() {
        for (src, dst) in [
            ("default/web", "default/db"),
            ("default/*", "default/db"),
            ("*/*", "*/*"),
            ("default/web", "*/*"),
        ] {
            assert_eq!(
                validate(&ixn("", src, dst, "deny")),
                Ok(()),
                "{src} -> {dst}"
            );
        }
        let mut edge = valid();
        edge.description = "d".repeat(512);
        edge.meta = Some(
            (0..64)
                .map(|i| (format!("{i:0>128}"), "v".repeat(512)))
                .collect(),
        );
        assert_eq!(validate(&edge), Ok(()));
    }

    #[test]
    fn every_message() {
        type Mutate = fn(&mut Intention);
        let long_key = "k".repeat(129);
        let cases: Vec<(Mutate, String)> = vec![
            (|i| i.source_ns.clear(), "SourceNS must be set".into()),
            (|i| i.source_name.clear(), "SourceName must be set".into()),
            (
                |i| i.destination_ns.clear(),
                "DestinationNS must be set".into(),
            ),
            (
                |i| i.destination_name.clear(),
                "DestinationName must be set".into(),
            ),
            (
                |i| i.source_ns = "def*".into(),
                "SourceNS: wildcard character '*' cannot be used with partial values".into(),
            ),
            (
                |i| i.source_name = "*web".into(),
                "SourceName: wildcard character '*' cannot be used with partial values".into(),
            ),
            (
                |i| i.destination_ns = "**".into(),
                "DestinationNS: wildcard character '*' cannot be used with partial values".into(),
            ),
            (
                |i| i.destination_name = "d*b".into(),
                "DestinationName: wildcard character '*' cannot be used with partial values".into(),
            ),
            (
                |i| i.source_ns = "*".into(),
                "SourceName: exact value cannot follow wildcard namespace".into(),
            ),
            (
                |i| i.destination_ns = "*".into(),
                "DestinationName: exact value cannot follow wildcard namespace".into(),
            ),
            (
                |i| i.description = "d".repeat(513),
                "Description exceeds maximum length 512".into(),
            ),
            (
                |i| i.meta = Some((0..65).map(|n| (n.to_string(), String::new())).collect()),
                "Meta exceeds maximum element count 64".into(),
            ),
            (
                |i| i.meta = Some([("k".repeat(129), "v".into())].into()),
                format!("Meta key \"{long_key}\" exceeds maximum length 128"),
            ),
            (
                |i| i.meta = Some([("key".into(), "v".repeat(513))].into()),
                "Meta value for key \"key\" exceeds maximum length 512".into(),
            ),
            (
                |i| i.action = "Allow".into(),
                "Action must be set to 'allow' or 'deny'".into(),
            ),
            (
                |i| i.action.clear(),
                "Action must be set to 'allow' or 'deny'".into(),
            ),
            (
                |i| i.source_type = "CONSUL".into(),
                "SourceType must be set to 'consul'".into(),
            ),
        ];
        for (mutate, expected) in cases {
            let mut i = valid();
            mutate(&mut i);
            assert_eq!(messages(&i), std::slice::from_ref(&expected), "{expected}");
        }
    }

    #[test]
    fn errors_accumulate_in_consuls_order() {
        let mut i = valid();
        i.source_ns = "*".into();
        i.source_name = "we*b".into();
        i.destination_ns = "de*".into();
        i.destination_name.clear();
        i.description = "d".repeat(600);
        let mut meta: BTreeMap<String, String> = (0..63)
            .map(|n| (format!("m{n:02}"), String::new()))
            .collect();
        meta.insert("b".repeat(129), "v".repeat(513));
        meta.insert("a".into(), "v".repeat(513));
        i.meta = Some(meta);
        i.action = "maybe".into();
        i.source_type = "external".into();

        let err = validate(&i).unwrap_err();
        use IntentionField::*;
        assert_eq!(
            err.errors(),
            [
                ValidationError::Missing(DestinationName),
                ValidationError::PartialWildcard(SourceName),
                ValidationError::ExactAfterWildcardNamespace(SourceName),
                ValidationError::PartialWildcard(DestinationNs),
                ValidationError::DescriptionTooLong,
                ValidationError::TooManyMeta,
                ValidationError::MetaValueTooLong { key: "a".into() },
                ValidationError::MetaKeyTooLong {
                    key: "b".repeat(129)
                },
                ValidationError::MetaValueTooLong {
                    key: "b".repeat(129)
                },
                ValidationError::InvalidAction,
                ValidationError::InvalidSourceType,
            ]
        );
        let b = "b".repeat(129);
        assert_eq!(
            err.to_string(),
            format!(
                "11 error(s) occurred:\n\n\
                 * DestinationName must be set\n\
                 * SourceName: wildcard character '*' cannot be used with partial values\n\
                 * SourceName: exact value cannot follow wildcard namespace\n\
                 * DestinationNS: wildcard character '*' cannot be used with partial values\n\
                 * Description exceeds maximum length 512\n\
                 * Meta exceeds maximum element count 64\n\
                 * Meta value for key \"a\" exceeds maximum length 512\n\
                 * Meta key \"{b}\" exceeds maximum length 128\n\
                 * Meta value for key \"{b}\" exceeds maximum length 512\n\
                 * Action must be set to 'allow' or 'deny'\n\
                 * SourceType must be set to 'consul'"
            )
        );
    }

    #[test]
    fn empty_names_report_in_field_order() {
        let mut i = valid();
        i.source_ns.clear();
        i.source_name.clear();
        i.destination_ns.clear();
        i.destination_name.clear();
        assert_eq!(
            messages(&i),
            [
                "SourceNS must be set",
                "SourceName must be set",
                "DestinationNS must be set",
                "DestinationName must be set"
            ]
        );
        // An empty name under the wildcard namespace is also an "exact" value, as in Go.
        i.source_ns = "*".into();
        assert_eq!(
            messages(&i),
            [
                "SourceName must be set",
                "DestinationNS must be set",
                "DestinationName must be set",
                "SourceName: exact value cannot follow wildcard namespace"
            ]
        );
    }

    #[test]
    fn multierror_display_equals_sample_21() {
        let raw = include_str!("../tests/data/consul-1.4.5/21_bad_intention_unknown_action.http");
        let mut i: Intention =
            serde_json::from_str(r#"{"SourceName":"web","DestinationName":"db","Action":"bogus"}"#)
                .unwrap();
        fill_defaults(&mut i);
        let err = validate(&i).unwrap_err();
        assert_eq!(err.to_string(), sample_body(raw));
        assert_eq!(
            err.to_string(),
            "1 error(s) occurred:\n\n* Action must be set to 'allow' or 'deny'"
        );
    }

    #[test]
    fn multierror_display_equals_sample_38() {
        let raw = include_str!("../tests/data/consul-1.4.5/38_bad_intention_missing_names.http");
        let mut i: Intention = serde_json::from_str(r#"{"Action":"allow"}"#).unwrap();
        fill_defaults(&mut i);
        let err = validate(&i).unwrap_err();
        assert_eq!(err.to_string(), sample_body(raw));
        assert_eq!(
            err.to_string(),
            "2 error(s) occurred:\n\n* SourceName must be set\n* DestinationName must be set"
        );
    }

    #[test]
    fn fill_defaults_as_the_server() {
        let mut i: Intention =
            serde_json::from_str(r#"{"SourceName":"web","DestinationName":"*","Action":"deny"}"#)
                .unwrap();
        assert_eq!((i.precedence, i.meta.is_none()), (0, true));
        fill_defaults(&mut i);
        assert_eq!(i.source_type, "consul");
        assert_eq!(i.source_ns, "default");
        assert_eq!(i.destination_ns, "default");
        assert_eq!(i.precedence, 6);
        assert_eq!(i.meta, Some(BTreeMap::new()));
        assert_eq!(validate(&i), Ok(()));

        // Given values are kept.
        let mut j = ixn("", "*/*", "other/db", "allow");
        j.source_type = "nope".into();
        fill_defaults(&mut j);
        assert_eq!(
            (j.source_ns.as_str(), j.destination_ns.as_str()),
            ("*", "other")
        );
        assert_eq!(j.source_type, "nope");
    }

    #[test]
    fn go_quoting_of_meta_keys() {
        assert_eq!(go_quote("plain"), r#""plain""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\n\t\r\u{7}\u{8}\u{b}\u{c}"),
            r#""\n\t\r\a\b\v\f""#
        );
        assert_eq!(go_quote("\u{0}\u{1f}\u{7f}"), r#""\x00\x1f\x7f""#);
        assert_eq!(go_quote("\u{85}é"), "\"\\u0085é\"");
        let err = ValidationError::MetaKeyTooLong { key: "a\"b".into() };
        assert_eq!(
            err.to_string(),
            r#"Meta key "a\"b" exceeds maximum length 128"#
        );
    }

    // -- IntentionSet --------------------------------------------------------------------------

    #[test]
    fn insert_get_remove() {
        let mut set = IntentionSet::new();
        assert!(set.is_empty());
        let mut i = ixn("a", "default/web", "default/db", "deny");
        i.precedence = 0; // recomputed on insert
        assert_eq!(set.insert(i).unwrap(), None);
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("a").unwrap().precedence, 9);
        assert!(set.get("b").is_none());
        assert_eq!(set.iter().count(), 1);
        let removed = set.remove("a").unwrap();
        assert_eq!(removed.id, "a");
        assert!(set.is_empty());
        assert!(set.remove("a").is_none());
        assert!(
            set.by_destination.buckets.is_empty(),
            "empty buckets are dropped"
        );
        assert!(set.by_source.buckets.is_empty());
        assert!(set.by_names.is_empty());
    }

    #[test]
    fn a_removed_deny_no_longer_decides() {
        let mut set = set_of(&["a: default/web -> default/db deny", "b: */* -> */* allow"]);
        let web = client("default", "web");
        assert_eq!(
            set.decide(&web, "default", "db", ACL_DENY)
                .matched
                .as_deref(),
            Some("a")
        );
        set.remove("a").unwrap();
        let d = set.decide(&web, "default", "db", ACL_DENY);
        assert!(d.allowed);
        assert_eq!(d.matched.as_deref(), Some("b"));
        set.remove("b").unwrap();
        let d = set.decide(&web, "default", "db", ACL_DENY);
        assert_eq!((d.allowed, d.matched), (false, None));
    }

    #[test]
    fn a_replaced_intention_moves_buckets() {
        let mut set = set_of(&[
            "a: default/web -> default/db deny",
            "z: default/api -> default/db allow",
        ]);
        let web = client("default", "web");
        let old = set
            .insert(spec("a: default/web -> default/cache deny"))
            .unwrap()
            .unwrap();
        assert_eq!(old.destination_name, "db");
        assert_eq!(set.len(), 2);

        assert_eq!(ids(set.match_destination("default", "db")), ["z"]);
        assert_eq!(ids(set.match_destination("default", "cache")), ["a"]);
        assert_eq!(set.decide(&web, "default", "db", OFF).matched, None);
        assert_eq!(
            set.decide(&web, "default", "cache", OFF).matched.as_deref(),
            Some("a")
        );

        // Source side too.
        set.insert(spec("a: default/cron -> default/cache deny"))
            .unwrap();
        assert!(set.match_source("default", "web").is_empty());
        assert_eq!(ids(set.match_source("default", "cron")), ["a"]);
        assert!(!set.by_source.buckets["default"].contains_key("web"));

        // A change of action only: the new action decides.
        set.insert(spec("a: default/cron -> default/cache allow"))
            .unwrap();
        let d = set.decide(&client("default", "cron"), "default", "cache", ACL_DENY);
        assert!(d.allowed);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn duplicates_are_found_case_insensitively() {
        let mut set = set_of(&["a: default/web -> default/db deny"]);
        let dup = spec("b: DEFAULT/Web -> default/DB allow");
        assert_eq!(set.find_duplicate(&dup).map(|i| i.id.as_str()), Some("a"));
        let err = set.insert(dup.clone()).unwrap_err();
        assert_eq!(err.existing.id, "a");
        assert_eq!(
            err.to_string(),
            "duplicate intention found: DENY default/web => default/db (ID: a, Precedence: 9)"
        );
        assert_eq!(set.len(), 1);
        assert!(set.get("b").is_none());
        assert_eq!(ids(set.match_destination("default", "db")), ["a"]);

        // The same ID is an update, not a duplicate, even with other letter case.
        assert!(set
            .find_duplicate(&spec("a: default/WEB -> default/db deny"))
            .is_none());
        set.insert(spec("a: default/WEB -> default/db deny"))
            .unwrap();
        assert_eq!(set.find_duplicate(&dup).map(|i| i.id.as_str()), Some("a"));

        // An update of another intention onto taken names is refused and changes nothing.
        set.insert(spec("c: default/api -> default/db allow"))
            .unwrap();
        assert!(set
            .insert(spec("c: default/web -> default/db allow"))
            .is_err());
        assert_eq!(set.get("c").unwrap().source_name, "api");
        assert_eq!(ids(set.match_source("default", "api")), ["c"]);

        // Once the original is gone, the names are free.
        set.remove("a").unwrap();
        assert!(set.insert(dup).is_ok());
    }

    #[test]
    fn duplicate_message_equals_sample_30() {
        let raw = include_str!("../tests/data/consul-1.4.5/30_bad_intention_duplicate.http");
        let set = set_of(&[&format!("{SAMPLE_ID}: default/web -> default/db deny")]);
        let err = set
            .clone()
            .insert(spec("new: default/web -> default/db deny"))
            .unwrap_err();
        assert_eq!(err.to_string(), sample_body(raw));
    }

    #[test]
    fn match_uses_consuls_buckets() {
        let set = set_of(&[
            "1: default/web -> default/db deny",
            "2: default/* -> default/db allow",
            "3: */* -> default/db deny",
            "4: default/web -> default/* allow",
            "5: */* -> */* allow",
            "6: default/web -> other/db deny",
            "7: other/* -> other/* deny",
        ]);
        assert_eq!(
            ids(set.match_destination("default", "db")),
            ["1", "2", "3", "4", "5"]
        );
        assert_eq!(
            ids(set.match_destination("Default", "DB")),
            ["1", "2", "3", "4", "5"]
        );
        assert_eq!(ids(set.match_destination("default", "*")), ["4", "5"]);
        assert_eq!(ids(set.match_destination("*", "db")), ["5"]);
        assert_eq!(ids(set.match_destination("other", "db")), ["6", "7", "5"]);
        assert_eq!(ids(set.match_destination("nowhere", "db")), ["5"]);

        assert_eq!(
            ids(set.match_source("default", "web")),
            ["1", "6", "2", "3", "4", "5"]
        );
        assert_eq!(
            ids(set.match_source("default", "WEB")),
            ["1", "6", "2", "3", "4", "5"]
        );
        assert_eq!(ids(set.match_source("default", "*")), ["2", "3", "5"]);
        assert_eq!(ids(set.match_source("other", "x")), ["3", "7", "5"]);
        assert_eq!(ids(set.match_source("*", "*")), ["3", "5"]);
    }

    /// The index against a brute-force filter and sort, over many generated sets.
    #[test]
    fn index_agrees_with_brute_force() {
        const NS: [&str; 4] = ["default", "Default", "other", "*"];
        const NAMES: [&str; 5] = ["web", "Web", "db", "DB", "*"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..40 {
            let mut set = IntentionSet::new();
            let mut all: Vec<Intention> = Vec::new();
            for k in 0..60 {
                let src = format!("{}/{}", NS[next(4)], NAMES[next(5)]);
                let dst = format!("{}/{}", NS[next(4)], NAMES[next(5)]);
                let action = ["allow", "deny"][next(2)];
                let i = ixn(&format!("{round}-{k}"), &src, &dst, action);
                if validate(&i).is_err() {
                    continue;
                }
                if set.insert(i.clone()).is_ok() {
                    all.push(i);
                }
                if next(5) == 0 {
                    // Remove a random earlier one now and then.
                    let victim = all.swap_remove(next(all.len()));
                    set.remove(&victim.id).unwrap();
                }
            }
            assert_eq!(set.len(), all.len());
            for ns in NS {
                for name in NAMES {
                    let (lns, lname) = (ns.to_lowercase(), name.to_lowercase());
                    let covers = |qns: &str, qname: &str| {
                        let (qns, qname) = (qns.to_lowercase(), qname.to_lowercase());
                        (qns == "*" && qname == "*")
                            || (ns != "*" && qns == lns && qname == "*")
                            || (ns != "*" && name != "*" && qns == lns && qname == lname)
                    };
                    let mut expect: Vec<&Intention> = all
                        .iter()
                        .filter(|i| covers(&i.destination_ns, &i.destination_name))
                        .collect();
                    expect.sort_by(|a, b| compare_precedence(a, b));
                    assert_eq!(set.match_destination(ns, name), expect, "dst {ns}/{name}");

                    let mut expect: Vec<&Intention> = all
                        .iter()
                        .filter(|i| covers(&i.source_ns, &i.source_name))
                        .collect();
                    expect.sort_by(|a, b| compare_precedence(a, b));
                    assert_eq!(set.match_source(ns, name), expect, "src {ns}/{name}");
                }
            }
            let mut sorted = all.clone();
            sort_by_precedence(&mut sorted);
            assert_eq!(set.all_sorted(), sorted.iter().collect::<Vec<_>>());
        }
    }

    // -- scale ---------------------------------------------------------------------------------

    /// The intentions that concern `default/svc-42`: its own bucket (10), three in
    /// (`default`,`*`) and two in (`*`,`*`).
    fn relevant_to_svc_42() -> Vec<Intention> {
        let mut v: Vec<Intention> = (0..10)
            .map(|s| {
                ixn(
                    &format!("x-{s}-42"),
                    &format!("default/src-{s}"),
                    "default/svc-42",
                    "deny",
                )
            })
            .collect();
        v.extend((0..3).map(|k| {
            ixn(
                &format!("w{k}"),
                &format!("default/w-{k}"),
                "default/*",
                "deny",
            )
        }));
        v.extend((0..2).map(|k| ixn(&format!("s{k}"), &format!("default/s-{k}"), "*/*", "allow")));
        v
    }

    #[test]
    fn decision_cost_does_not_grow_with_the_set() {
        let mut big = IntentionSet::new();
        for i in 0..100_000u32 {
            let (src, dst) = (i / 10_000, i % 10_000);
            let spec = ixn(
                &format!("x-{src}-{dst}"),
                &format!("default/src-{src}"),
                &format!("default/svc-{dst}"),
                "deny",
            );
            big.insert(spec).unwrap();
        }
        for extra in relevant_to_svc_42().into_iter().skip(10) {
            big.insert(extra).unwrap();
        }
        assert_eq!(big.len(), 100_005);

        let mut small = IntentionSet::new();
        for i in relevant_to_svc_42() {
            small.insert(i).unwrap();
        }

        let nobody = client("default", "nobody");
        let d_big = big.decide(&nobody, "default", "svc-42", ACL_DENY);
        let d_small = small.decide(&nobody, "default", "svc-42", ACL_DENY);
        // No source matches "nobody", so every candidate is examined: exactly the 15 in the
        // destination's three buckets, out of 100,005.
        assert_eq!(d_big.matched, None);
        assert_eq!(d_big.examined, 15);
        assert_eq!(d_big, d_small);
        assert_eq!(big.match_destination("default", "svc-42").len(), 15);

        // A matching client stops at its intention.
        let d = big.decide(&client("default", "src-7"), "default", "svc-42", ACL_ALLOW);
        assert_eq!(d.matched.as_deref(), Some("x-7-42"));
        assert!(!d.allowed);
        assert!(d.examined <= 15);
        assert_eq!(
            d,
            small.decide(&client("default", "src-7"), "default", "svc-42", ACL_ALLOW)
        );

        // By source as well: src-3 has 10,000 intentions, but a source outside the set
        // only sees the wildcard-source buckets (none here).
        assert!(big.match_source("default", "nobody").is_empty());
        assert_eq!(big.match_source("default", "src-3").len(), 10_000);
    }
}
