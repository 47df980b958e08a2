//! Intentions as Consul's servers keep them: validation with Consul's messages, the server's
//! defaults, and [`IntentionSet`], indexed as Consul's state store is so that matching and
//! deciding cost depends on the buckets involved, not on the number of intentions.
//!
//! The decision itself is the shared rule of [`consul_connect_types::intentions`], which the
//! SDK's in-process authorizer also uses.
//!
//! ```
//! use agent_sim::intentions::{fill_defaults, validate, IntentionSet};
//! use consul_connect_types::api::Intention;
//! use consul_connect_types::intentions::{DefaultDecision, Wording};
//! use consul_connect_types::spiffe::ServiceId;
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
//! let decision = set.decide(&web, "default", "db", DefaultDecision::AclsDisabled, Wording::Consul1_9);
//! assert!(!decision.allowed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use consul_connect_types::api::Intention;
use consul_connect_types::go::go_quote;
use consul_connect_types::intentions::{
    compare_precedence, decide_matches, decide_matches_by_name, precedence, Decision,
    DefaultDecision, Wording, DEFAULT_NAMESPACE, SOURCE_TYPE_CONSUL, WILDCARD,
};
use consul_connect_types::spiffe::ServiceId;

/// Longest `Description`, and longest `Meta` value, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 512;
/// Most `Meta` pairs.
pub const MAX_META_PAIRS: usize = 64;
/// Longest `Meta` key, in bytes.
pub const MAX_META_KEY_LEN: usize = 128;
/// Longest `Meta` value, in bytes.
pub const MAX_META_VALUE_LEN: usize = 512;

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
/// use consul_connect_types::api::Intention;
/// use agent_sim::intentions::{fill_defaults, validate};
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
/// use consul_connect_types::api::Intention;
/// use agent_sim::intentions::{fill_defaults, IntentionSet};
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
    /// Lowercased (SourceNS, SourceName, DestinationNS, DestinationName) → the intention. The
    /// names are unique; the ID is not always set (a config entry's intentions have none).
    by_names: HashMap<NamesKey, Arc<Intention>>,
    by_destination: Index,
    by_source: Index,
    /// ID → names, for the intentions that have an ID.
    by_id: HashMap<String, NamesKey>,
}

type NamesKey = (String, String, String, String);

impl IntentionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of intentions.
    pub fn len(&self) -> usize {
        self.by_names.len()
    }

    /// Whether the set holds no intention.
    pub fn is_empty(&self) -> bool {
        self.by_names.is_empty()
    }

    /// The intention with this ID.
    pub fn get(&self, id: &str) -> Option<&Intention> {
        self.by_id
            .get(id)
            .and_then(|key| self.by_names.get(key))
            .map(|ixn| &**ixn)
    }

    /// All intentions, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Intention> + '_ {
        self.by_names.values().map(|ixn| &**ixn)
    }

    /// The stored intention with the same four names (case-insensitively) and another ID: what
    /// makes Consul refuse a create or update. Without IDs, the names are the identity.
    pub fn find_duplicate(&self, ixn: &Intention) -> Option<&Intention> {
        let stored = self.by_names.get(&names_key(ixn))?;
        if stored.id == ixn.id {
            return None;
        }
        Some(stored)
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
        let key = names_key(&ixn);
        let replaced = if ixn.id.is_empty() {
            self.remove_key(&key)
        } else {
            self.remove(&ixn.id)
        };
        let ixn = Arc::new(ixn);
        self.by_destination
            .add(&ixn.destination_ns, &ixn.destination_name, &ixn);
        self.by_source.add(&ixn.source_ns, &ixn.source_name, &ixn);
        if !ixn.id.is_empty() {
            self.by_id.insert(ixn.id.clone(), key.clone());
        }
        self.by_names.insert(key, ixn);
        Ok(replaced)
    }

    /// Removes the intention with this ID and returns it.
    pub fn remove(&mut self, id: &str) -> Option<Intention> {
        let key = self.by_id.get(id)?.clone();
        self.remove_key(&key)
    }

    /// Removes every intention whose destination is exactly (namespace, name), as replacing a
    /// `service-intentions` config entry does.
    pub fn remove_destination(&mut self, namespace: &str, name: &str) {
        let keys: Vec<NamesKey> = self
            .by_destination
            .bucket(&lower(namespace), &lower(name))
            .iter()
            .map(|ixn| names_key(ixn))
            .collect();
        for key in keys {
            self.remove_key(&key);
        }
    }

    fn remove_key(&mut self, key: &NamesKey) -> Option<Intention> {
        let ixn = self.by_names.remove(key)?;
        self.by_destination
            .remove(&ixn.destination_ns, &ixn.destination_name, &ixn);
        self.by_source
            .remove(&ixn.source_ns, &ixn.source_name, &ixn);
        if !ixn.id.is_empty() {
            self.by_id.remove(&ixn.id);
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
        wording: Wording,
    ) -> Decision {
        decide_matches(
            self.by_destination.matches(target_ns, target),
            source,
            default,
            wording,
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
        wording: Wording,
    ) -> Decision {
        decide_matches_by_name(
            self.by_destination
                .matches(destination_ns, destination_name),
            source_ns,
            source_name,
            default,
            wording,
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

#[cfg(test)]
mod tests;
