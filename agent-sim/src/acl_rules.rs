//! Consul 1.4 ACL rules: the policy language, and how one token's policies answer "may this
//! token do X?".
//!
//! Pure values and functions, no I/O. [`Policy::parse`] reads rules text (HCL or JSON, as
//! `PUT /v1/acl/policy` accepts it) and validates it the way Consul 1.4's
//! `acl.NewPolicyFromSource` does, with Consul's error texts. An [`Authorizer`] compiles the
//! policies of one token together with the agent's `acl_default_policy` and answers the checks
//! the Connect endpoints need.
//!
//! ```
//! use agent_sim::acl_rules::{Authorizer, DefaultPolicy, Policy};
//!
//! let policy = Policy::parse(r#"
//!     service "web" { policy = "write" }
//!     service_prefix "" { policy = "read" }
//! "#)?;
//! let authz = Authorizer::new([&policy], DefaultPolicy::Deny, false);
//! assert!(authz.service_write("web"));
//! assert!(authz.service_read("db") && !authz.service_write("db"));
//! assert!(authz.intention_read("web") && !authz.intention_write("web"));
//! # Ok::<(), agent_sim::acl_rules::RulesError>(())
//! ```
//!
//! # Semantics
//!
//! Checked against the hashicorp/consul 1.4 sources named in brackets.
//!
//! * **Lookup** [`acl/acl.go`, `getPolicy`]: the exact rule for the name (`service "web"`) wins.
//!   Without one, the longest `*_prefix` rule whose prefix starts the name wins
//!   (`service_prefix ""` matches every name). Without either, the default policy decides.
//! * **A matching rule decides**: `deny` denies even under `default_policy = allow`.
//! * **Default** [`agent/consul/acl.go` compiles every token over
//!   `acl.RootAuthorizer(ACLDefaultPolicy)`; `StaticAuthorizer` in `acl/acl.go`]: `allow` grants
//!   read and write on services, intentions, nodes, agents and operator, and `deny` grants none
//!   of them. No default ever grants `acl` read or write. Only an `acl = "..."` rule or a
//!   management token does.
//! * **Intentions** [`acl/acl.go`, `NewPolicyAuthorizer`]: each (merged) service rule also
//!   acts as an intention rule for the same name or prefix. It uses the rule's `intentions`
//!   value if set. Otherwise a `read` or `write` policy gives `read` and `deny` gives `deny`.
//!   Intentions are checked on the *destination* name, with the same exact/longest-prefix
//!   lookup.
//! * **Merging** [`acl/policy.go`, `MergePolicies` and `takesPrecedenceOver`]: the rules of all
//!   of a token's policies that name the same exact name, or the same prefix, merge field by
//!   field. This includes repeated blocks inside one policy. The stronger value wins, in the
//!   order `deny > write > read > unset`. `policy` and `intentions` merge separately, so
//!   `{policy = "write"}` plus `{policy = "read", intentions = "deny"}` gives write with
//!   intentions denied. Exact and prefix rules never merge with each other. `acl` and
//!   `operator` merge the same way.
//! * **Management** tokens may do everything.
//!
//! # Parsing
//!
//! Input whose first non-space character is `{` is JSON. Anything else is HCL, as in Go's
//! `hcl.Decode`. The HCL reader here is written for this module. It follows hashicorp/hcl v1
//! (`hcl/scanner`, `hcl/parser`, `decoder.go`, `json/parser/flatten.go`):
//! * comments `#`, `//` and `/* */`;
//! * strings with Go escapes and `${}`;
//! * heredocs;
//! * blocks, with items separated by newlines or commas;
//! * case-insensitive keys;
//! * unquoted names (`service web { … }`) and the nested forms `service { web { … } }` and
//!   `service = { web = { … } }`;
//! * JSON objects, and JSON arrays of objects (`{"service": [{"web": [{"policy": "write"}]}]}`).
//!
//! Unknown keys are ignored, like Go's decoder ignores them.
//!
//! All rule kinds are validated: `acl`, `agent`, `key`, `node`, `service`, `session`,
//! `event` and `query` (each with its `_prefix` form), plus `keyring` and `operator`. The
//! module keeps `service`, `node`, `agent`, `query`, `acl` and `operator` rules and drops the
//! rest after validating them.

use std::collections::BTreeMap;
use std::fmt;
use std::iter;
use std::str::FromStr;

use crate::hcl::{flatten_json, HclParser, Item, JsonParser, LitKind, Node, Pos, SyntaxError};
use consul_connect_types::go::go_quote;

/// The access a rule grants. Ordered by privilege: `Deny < Read < Write`.
///
/// ```
/// use agent_sim::acl_rules::Access;
///
/// assert!(Access::Deny < Access::Read && Access::Read < Access::Write);
/// assert!(Access::Write.allows_read() && !Access::Read.allows_write());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// `deny`: nothing.
    Deny,
    /// `read`: read only.
    Read,
    /// `write`: read and write.
    Write,
}

impl Access {
    /// Whether this access permits reading.
    pub fn allows_read(self) -> bool {
        self >= Access::Read
    }

    /// Whether this access permits writing.
    pub fn allows_write(self) -> bool {
        self == Access::Write
    }

    /// The rules-language word: `deny`, `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Deny => "deny",
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    /// Consul's `isPolicyValid`: exactly `deny`, `read` or `write` (case-sensitive).
    fn from_policy(word: &str) -> Option<Access> {
        match word {
            "deny" => Some(Access::Deny),
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }

    /// Rank in Consul's `takesPrecedenceOver` (`deny > write > list > read > ""`), used only to
    /// merge rules. This is not the privilege order.
    fn merge_rank(self) -> u8 {
        match self {
            Access::Deny => 4,
            Access::Write => 3,
            Access::Read => 1,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent's `acl_default_policy`: what a token may do where none of its rules match.
///
/// Consul's default is `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultPolicy {
    /// Unmatched checks pass (write access).
    #[default]
    Allow,
    /// Unmatched checks fail (no access).
    Deny,
}

impl DefaultPolicy {
    fn access(self) -> Access {
        match self {
            DefaultPolicy::Allow => Access::Write,
            DefaultPolicy::Deny => Access::Deny,
        }
    }
}

/// One `service "name" { … }` or `service_prefix "name" { … }` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRule {
    name: String,
    policy: Access,
    intentions: Option<Access>,
}

impl ServiceRule {
    /// The service name, or for a prefix rule the prefix (possibly empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `policy` value.
    pub fn policy(&self) -> Access {
        self.policy
    }

    /// The `intentions` value, if the rule sets one.
    pub fn intentions(&self) -> Option<Access> {
        self.intentions
    }
}

/// One `node`/`node_prefix`/`agent`/`agent_prefix` rule: a name (or prefix) and its `policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedRule {
    name: String,
    policy: Access,
}

impl NamedRule {
    /// The node name, or for a prefix rule the prefix (possibly empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `policy` value.
    pub fn policy(&self) -> Access {
        self.policy
    }
}

/// A parsed and validated ACL policy: the rules Connect needs, in source order.
///
/// Build it with [`Policy::parse`] (or `str::parse`). [`Policy::default`] is the empty policy,
/// which is what Consul makes of empty rules text.
///
/// ```
/// use agent_sim::acl_rules::{Access, Policy};
///
/// let policy: Policy = r#"{"service": {"web": {"policy": "write", "intentions": "write"}},
///                          "operator": "read"}"#.parse()?;
/// assert_eq!(policy.services()[0].name(), "web");
/// assert_eq!(policy.services()[0].intentions(), Some(Access::Write));
/// assert_eq!(policy.operator(), Some(Access::Read));
/// # Ok::<(), agent_sim::acl_rules::RulesError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    acl: Option<Access>,
    operator: Option<Access>,
    services: Vec<ServiceRule>,
    service_prefixes: Vec<ServiceRule>,
    nodes: Vec<NamedRule>,
    node_prefixes: Vec<NamedRule>,
    agents: Vec<NamedRule>,
    agent_prefixes: Vec<NamedRule>,
    queries: Vec<NamedRule>,
    query_prefixes: Vec<NamedRule>,
}

impl Policy {
    /// Parses and validates rules text (HCL, or JSON when it starts with `{`).
    ///
    /// Error texts are Consul 1.4's. A syntax error reads `Failed to parse ACL rules: At
    /// <line>:<column>: <what>`. A bad access value reads, for example, `Invalid service policy:
    /// acl.ServicePolicy{Name:"web", Policy:"writ", …}` or `Invalid operator policy: "writ"`.
    /// [`RulesError::line`] gives the line in both cases.
    ///
    /// ```
    /// use agent_sim::acl_rules::Policy;
    ///
    /// let err = Policy::parse("operator = \"writ\"").unwrap_err();
    /// assert_eq!(err.to_string(), r#"Invalid operator policy: "writ""#);
    /// assert_eq!(err.line(), 1);
    /// ```
    pub fn parse(rules: &str) -> Result<Policy, RulesError> {
        // Consul's hot path: empty text is the empty policy without parsing.
        if rules.is_empty() {
            return Ok(Policy::default());
        }
        let items = if rules.trim_start().starts_with('{') {
            let mut items = JsonParser::new(rules).parse()?;
            flatten_json(&mut items);
            items
        } else {
            HclParser::new(rules).parse()?
        };
        let raw = decode(&items)?;
        raw.validate()
    }

    /// The `acl = "..."` rule, if any.
    pub fn acl(&self) -> Option<Access> {
        self.acl
    }

    /// The `operator = "..."` rule, if any.
    pub fn operator(&self) -> Option<Access> {
        self.operator
    }

    /// The exact `service "name"` rules.
    pub fn services(&self) -> &[ServiceRule] {
        &self.services
    }

    /// The `service_prefix "prefix"` rules.
    pub fn service_prefixes(&self) -> &[ServiceRule] {
        &self.service_prefixes
    }

    /// The exact `node "name"` rules.
    pub fn nodes(&self) -> &[NamedRule] {
        &self.nodes
    }

    /// The `node_prefix "prefix"` rules.
    pub fn node_prefixes(&self) -> &[NamedRule] {
        &self.node_prefixes
    }

    /// The exact `agent "node"` rules.
    pub fn agents(&self) -> &[NamedRule] {
        &self.agents
    }

    /// The `agent_prefix "prefix"` rules.
    pub fn agent_prefixes(&self) -> &[NamedRule] {
        &self.agent_prefixes
    }

    /// The exact `query "name"` rules (prepared queries).
    pub fn queries(&self) -> &[NamedRule] {
        &self.queries
    }

    /// The `query_prefix "prefix"` rules.
    pub fn query_prefixes(&self) -> &[NamedRule] {
        &self.query_prefixes
    }
}

impl FromStr for Policy {
    type Err = RulesError;

    fn from_str(rules: &str) -> Result<Self, Self::Err> {
        Policy::parse(rules)
    }
}

/// Why rules text was rejected. `Display` gives Consul 1.4's error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// The text is not HCL/JSON of the shape Consul decodes.
    #[error("Failed to parse ACL rules: At {line}:{column}: {message}")]
    Syntax {
        /// 1-based line of the offending token.
        line: usize,
        /// 1-based column (in characters) of the offending token.
        column: usize,
        /// What is wrong. Follows hashicorp/hcl's wording where it has one, e.g. `object
        /// expected closing RBRACE got: EOF` or `literal not terminated`.
        message: String,
    },
    /// A rule names an access level Consul does not accept for it.
    #[error("Invalid {rule} {}policy: {detail}", if *.intentions { "intentions " } else { "" })]
    InvalidPolicy {
        /// The rule kind as written: `service`, `service_prefix`, `node`, `acl`, `operator`, …
        rule: &'static str,
        /// The bad value is a service rule's `intentions` field rather than its `policy`.
        intentions: bool,
        /// The rule's name (`service "web"` gives `web`). `None` for `acl`, `operator` and
        /// `keyring`.
        name: Option<String>,
        /// The rejected value as written. Empty when `policy` is missing.
        value: String,
        /// 1-based line of the value, or of the rule if the value is missing.
        line: usize,
        /// The offending rule as Consul prints it (Go `%#v`), e.g. `acl.ServicePolicy{Name:"web",
        /// Policy:"writ", Sentinel:acl.Sentinel{Code:"", EnforcementLevel:""}, Intentions:""}`,
        /// or the quoted value for `acl`/`operator`/`keyring`.
        detail: String,
        /// The same as Consul 1.10 prints it (rules became pointers to `*Rule` structs with an
        /// `EnterpriseRule` and no `Sentinel`), e.g. `&acl.ServiceRule{Name:"web",
        /// Policy:"writ", Intentions:"", EnterpriseRule:acl.EnterpriseRule{}}`.
        modern_detail: String,
    },
}

impl RulesError {
    /// The error as Consul 1.10 words it (`modern`) or as 1.4 does (the `Display` text).
    pub fn text(&self, modern: bool) -> String {
        match self {
            RulesError::InvalidPolicy {
                rule,
                intentions,
                modern_detail,
                ..
            } if modern => format!(
                "Invalid {rule} {}policy: {modern_detail}",
                if *intentions { "intentions " } else { "" }
            ),
            _ => self.to_string(),
        }
    }

    /// The 1-based line the error points at.
    pub fn line(&self) -> usize {
        match self {
            RulesError::Syntax { line, .. } | RulesError::InvalidPolicy { line, .. } => *line,
        }
    }
}

pub use crate::hcl::MAX_NESTING;

/// What one token may do: its policies merged and compiled over the default policy.
///
/// `management` is for tokens that may do everything (the master token, legacy management
/// tokens). Such a token passes every check whatever its rules say.
///
/// ```
/// use agent_sim::acl_rules::{Authorizer, DefaultPolicy, Policy};
///
/// let a = Policy::parse(r#"service "web" { policy = "write" }"#)?;
/// let b = Policy::parse(r#"service "web" { policy = "read" intentions = "deny" }"#)?;
/// let authz = Authorizer::new([&a, &b], DefaultPolicy::Allow, false);
/// assert!(authz.service_write("web")); // write beats read
/// assert!(!authz.intention_read("web")); // deny beats the derived read
/// assert!(authz.service_write("db")); // no rule: default allow
/// assert!(!authz.acl_read()); // never granted by the default
///
/// let root = Authorizer::new([], DefaultPolicy::Deny, true);
/// assert!(root.acl_write() && root.service_write("db"));
/// # Ok::<(), agent_sim::acl_rules::RulesError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Authorizer {
    default_policy: DefaultPolicy,
    management: bool,
    services: RuleTable<MergedService>,
    nodes: RuleTable<Access>,
    agents: RuleTable<Access>,
    queries: RuleTable<Access>,
    acl: Option<Access>,
    operator: Option<Access>,
}

impl Authorizer {
    /// Merges `policies` (in order) and compiles them over `default_policy`.
    pub fn new<'a, I>(policies: I, default_policy: DefaultPolicy, management: bool) -> Authorizer
    where
        I: IntoIterator<Item = &'a Policy>,
    {
        let mut authz = Authorizer {
            default_policy,
            management,
            services: RuleTable::default(),
            nodes: RuleTable::default(),
            agents: RuleTable::default(),
            queries: RuleTable::default(),
            acl: None,
            operator: None,
        };
        for policy in policies {
            authz.acl = stronger_opt(authz.acl, policy.acl);
            authz.operator = stronger_opt(authz.operator, policy.operator);
            merge_services(&mut authz.services.exact, &policy.services);
            merge_services(&mut authz.services.prefix, &policy.service_prefixes);
            merge_named(&mut authz.nodes.exact, &policy.nodes);
            merge_named(&mut authz.nodes.prefix, &policy.node_prefixes);
            merge_named(&mut authz.agents.exact, &policy.agents);
            merge_named(&mut authz.agents.prefix, &policy.agent_prefixes);
            merge_named(&mut authz.queries.exact, &policy.queries);
            merge_named(&mut authz.queries.prefix, &policy.query_prefixes);
        }
        authz
    }

    /// A token that may do nothing: no rules over `default_policy = deny`.
    pub fn deny_all() -> Authorizer {
        Authorizer::new([], DefaultPolicy::Deny, false)
    }

    /// Whether this is a management token.
    pub fn is_management(&self) -> bool {
        self.management
    }

    /// The default policy the rules were compiled over.
    pub fn default_policy(&self) -> DefaultPolicy {
        self.default_policy
    }

    /// Whether a Connect request that matches no intention is allowed.
    ///
    /// In 1.4 this is the default policy. Neither token rules nor the management flag change it
    /// (`IntentionDefaultAllow` always asks the parent authorizer).
    pub fn intention_default_allow(&self) -> bool {
        self.default_policy == DefaultPolicy::Allow
    }

    /// The access on service `name`: exact rule, else longest prefix, else the default.
    pub fn service_access(&self, name: &str) -> Access {
        if self.management {
            return Access::Write;
        }
        self.services
            .lookup(name)
            .map_or(self.default_policy.access(), |rule| rule.policy)
    }

    /// `service:read` on `name` (discovery, `intentions/check`).
    pub fn service_read(&self, name: &str) -> bool {
        self.service_access(name).allows_read()
    }

    /// `service:write` on `name` (registration, leaf certificates, `authorize`).
    pub fn service_write(&self, name: &str) -> bool {
        self.service_access(name).allows_write()
    }

    /// The access on intentions whose destination is `destination`.
    ///
    /// Uses the same rule as [`Authorizer::service_access`]. Its `intentions` value counts if
    /// set. Otherwise a `read`/`write` policy gives `read` and `deny` gives `deny`.
    pub fn intention_access(&self, destination: &str) -> Access {
        if self.management {
            return Access::Write;
        }
        match self.services.lookup(destination) {
            Some(rule) => rule.intentions.unwrap_or(match rule.policy {
                Access::Read | Access::Write => Access::Read,
                Access::Deny => Access::Deny,
            }),
            None => self.default_policy.access(),
        }
    }

    /// `intentions:read` on `destination`.
    pub fn intention_read(&self, destination: &str) -> bool {
        self.intention_access(destination).allows_read()
    }

    /// `intentions:write` on `destination`.
    pub fn intention_write(&self, destination: &str) -> bool {
        self.intention_access(destination).allows_write()
    }

    /// The access on node `name`.
    pub fn node_access(&self, name: &str) -> Access {
        if self.management {
            return Access::Write;
        }
        self.nodes
            .lookup(name)
            .copied()
            .unwrap_or(self.default_policy.access())
    }

    /// `node:read` on `name`.
    pub fn node_read(&self, name: &str) -> bool {
        self.node_access(name).allows_read()
    }

    /// `node:write` on `name`.
    pub fn node_write(&self, name: &str) -> bool {
        self.node_access(name).allows_write()
    }

    /// The access on the agent endpoints of node `node`.
    pub fn agent_access(&self, node: &str) -> Access {
        if self.management {
            return Access::Write;
        }
        self.agents
            .lookup(node)
            .copied()
            .unwrap_or(self.default_policy.access())
    }

    /// `agent:read` on `node` (e.g. `GET /v1/agent/self`).
    pub fn agent_read(&self, node: &str) -> bool {
        self.agent_access(node).allows_read()
    }

    /// `agent:write` on `node`.
    pub fn agent_write(&self, node: &str) -> bool {
        self.agent_access(node).allows_write()
    }

    /// The access on prepared queries named `prefix` (Consul checks a query's name as its ACL
    /// prefix; queries without a name have none).
    pub fn query_access(&self, prefix: &str) -> Access {
        if self.management {
            return Access::Write;
        }
        self.queries
            .lookup(prefix)
            .copied()
            .unwrap_or(self.default_policy.access())
    }

    /// `query:read` on `prefix` (listing and reading prepared queries).
    pub fn query_read(&self, prefix: &str) -> bool {
        self.query_access(prefix).allows_read()
    }

    /// `query:write` on `prefix` (creating, updating, deleting prepared queries).
    pub fn query_write(&self, prefix: &str) -> bool {
        self.query_access(prefix).allows_write()
    }

    /// The `operator` access: the merged rule, else the default.
    pub fn operator_access(&self) -> Access {
        if self.management {
            return Access::Write;
        }
        self.operator.unwrap_or(self.default_policy.access())
    }

    /// `operator:read` (e.g. `GET /v1/connect/ca/configuration`).
    pub fn operator_read(&self) -> bool {
        self.operator_access().allows_read()
    }

    /// `operator:write` (e.g. `PUT /v1/connect/ca/configuration`).
    pub fn operator_write(&self) -> bool {
        self.operator_access().allows_write()
    }

    /// The `acl` access: the merged rule, else nothing. Even `default_policy = allow` grants no
    /// ACL management (Consul's `StaticAuthorizer.ACLRead` returns `allowManage`).
    pub fn acl_access(&self) -> Access {
        if self.management {
            return Access::Write;
        }
        self.acl.unwrap_or(Access::Deny)
    }

    /// `acl:read`.
    pub fn acl_read(&self) -> bool {
        self.acl_access().allows_read()
    }

    /// `acl:write`.
    pub fn acl_write(&self) -> bool {
        self.acl_access().allows_write()
    }
}

// ---------------------------------------------------------------------------------------------
// Rule tables and merging

/// A service rule after merging: Consul keeps `policy` and `intentions` apart until lookup.
#[derive(Debug, Clone, Copy)]
struct MergedService {
    policy: Access,
    intentions: Option<Access>,
}

/// Exact and prefix rules for one resource, keyed by name/prefix (Consul's radix tree leaves).
#[derive(Debug, Clone)]
struct RuleTable<T> {
    exact: BTreeMap<String, T>,
    prefix: BTreeMap<String, T>,
}

impl<T> Default for RuleTable<T> {
    fn default() -> Self {
        RuleTable {
            exact: BTreeMap::new(),
            prefix: BTreeMap::new(),
        }
    }
}

impl<T> RuleTable<T> {
    /// Consul's `getPolicy`: the exact rule, else the longest prefix rule (the radix walk from
    /// the root keeps the last prefix it passes). Prefixes compare bytewise. Every prefix of a
    /// valid name ends on a character boundary, so only those ends are tried, longest first.
    fn lookup(&self, name: &str) -> Option<&T> {
        if let Some(rule) = self.exact.get(name) {
            return Some(rule);
        }
        name.char_indices()
            .map(|(end, _)| end)
            .chain(iter::once(name.len()))
            .rev()
            .find_map(|end| self.prefix.get(&name[..end]))
    }
}

/// `takesPrecedenceOver` applied to two values: the one with the higher merge rank.
fn stronger(current: Access, new: Access) -> Access {
    if new.merge_rank() >= current.merge_rank() {
        new
    } else {
        current
    }
}

/// As [`stronger`], with "unset" ranking below everything.
fn stronger_opt(current: Option<Access>, new: Option<Access>) -> Option<Access> {
    match (current, new) {
        (Some(current), Some(new)) => Some(stronger(current, new)),
        (current, None) => current,
        (None, new) => new,
    }
}

fn merge_services(table: &mut BTreeMap<String, MergedService>, rules: &[ServiceRule]) {
    for rule in rules {
        table
            .entry(rule.name.clone())
            .and_modify(|merged| {
                merged.policy = stronger(merged.policy, rule.policy);
                merged.intentions = stronger_opt(merged.intentions, rule.intentions);
            })
            .or_insert(MergedService {
                policy: rule.policy,
                intentions: rule.intentions,
            });
    }
}

fn merge_named(table: &mut BTreeMap<String, Access>, rules: &[NamedRule]) {
    for rule in rules {
        table
            .entry(rule.name.clone())
            .and_modify(|merged| *merged = stronger(*merged, rule.policy))
            .or_insert(rule.policy);
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding: the generic tree → raw rules (Go's `hcl.Decode` into `acl.Policy`), then validation
// (`parseCurrent`).

/// The rule kinds, in the field order of Go's `acl.Policy` (which is also the validation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Agent,
    AgentPrefix,
    Key,
    KeyPrefix,
    Node,
    NodePrefix,
    Service,
    ServicePrefix,
    Session,
    SessionPrefix,
    Event,
    EventPrefix,
    Query,
    QueryPrefix,
}

const KINDS: [Kind; 14] = [
    Kind::Agent,
    Kind::AgentPrefix,
    Kind::Key,
    Kind::KeyPrefix,
    Kind::Node,
    Kind::NodePrefix,
    Kind::Service,
    Kind::ServicePrefix,
    Kind::Session,
    Kind::SessionPrefix,
    Kind::Event,
    Kind::EventPrefix,
    Kind::Query,
    Kind::QueryPrefix,
];

impl Kind {
    /// The rules-language keyword (also the word in Consul's error texts).
    fn keyword(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::AgentPrefix => "agent_prefix",
            Kind::Key => "key",
            Kind::KeyPrefix => "key_prefix",
            Kind::Node => "node",
            Kind::NodePrefix => "node_prefix",
            Kind::Service => "service",
            Kind::ServicePrefix => "service_prefix",
            Kind::Session => "session",
            Kind::SessionPrefix => "session_prefix",
            Kind::Event => "event",
            Kind::EventPrefix => "event_prefix",
            Kind::Query => "query",
            Kind::QueryPrefix => "query_prefix",
        }
    }

    /// The Go struct the rule decodes into and the name of its `hcl:",key"` field.
    fn go_struct(self) -> (&'static str, &'static str) {
        match self {
            Kind::Agent | Kind::AgentPrefix => ("acl.AgentPolicy", "Node"),
            Kind::Key | Kind::KeyPrefix => ("acl.KeyPolicy", "Prefix"),
            Kind::Node | Kind::NodePrefix => ("acl.NodePolicy", "Name"),
            Kind::Service | Kind::ServicePrefix => ("acl.ServicePolicy", "Name"),
            Kind::Session | Kind::SessionPrefix => ("acl.SessionPolicy", "Node"),
            Kind::Event | Kind::EventPrefix => ("acl.EventPolicy", "Event"),
            Kind::Query | Kind::QueryPrefix => ("acl.PreparedQueryPolicy", "Prefix"),
        }
    }

    fn has_sentinel(self) -> bool {
        matches!(
            self,
            Kind::Key
                | Kind::KeyPrefix
                | Kind::Node
                | Kind::NodePrefix
                | Kind::Service
                | Kind::ServicePrefix
        )
    }

    fn has_intentions(self) -> bool {
        matches!(self, Kind::Service | Kind::ServicePrefix)
    }
}

/// One rule as decoded, before validation. Strings are kept as written so that errors can
/// echo them.
#[derive(Debug, Clone)]
struct RawRule {
    kind: Kind,
    name: String,
    pos: Pos,
    policy: Option<(String, Pos)>,
    intentions: Option<(String, Pos)>,
    sentinel_code: String,
    sentinel_level: String,
}

impl RawRule {
    fn policy_str(&self) -> &str {
        self.policy.as_ref().map_or("", |(value, _)| value)
    }

    fn intentions_str(&self) -> &str {
        self.intentions.as_ref().map_or("", |(value, _)| value)
    }

    /// Go's `fmt.Sprintf("%#v", rule)`, which Consul puts in its error texts.
    fn go_repr(&self) -> String {
        let (go_type, key_field) = self.kind.go_struct();
        let mut out = format!(
            "{go_type}{{{key_field}:{}, Policy:{}",
            go_quote(&self.name),
            go_quote(self.policy_str())
        );
        if self.kind.has_sentinel() {
            out.push_str(&format!(
                ", Sentinel:acl.Sentinel{{Code:{}, EnforcementLevel:{}}}",
                go_quote(&self.sentinel_code),
                go_quote(&self.sentinel_level)
            ));
        }
        if self.kind.has_intentions() {
            out.push_str(&format!(", Intentions:{}", go_quote(self.intentions_str())));
        }
        out.push('}');
        out
    }

    /// Go's `%#v` of the rule in Consul 1.10, where it is a pointer to an `acl.*Rule`.
    fn go_repr_modern(&self) -> String {
        let (go_type, key_field) = self.kind.go_struct();
        let go_type = go_type.replace("Policy", "Rule");
        let mut out = format!(
            "&{go_type}{{{key_field}:{}, Policy:{}",
            go_quote(&self.name),
            go_quote(self.policy_str())
        );
        if self.kind.has_intentions() {
            out.push_str(&format!(", Intentions:{}", go_quote(self.intentions_str())));
        }
        // The kinds that had a Sentinel now embed the (empty in OSS) EnterpriseRule.
        if self.kind.has_sentinel() {
            out.push_str(", EnterpriseRule:acl.EnterpriseRule{}");
        }
        out.push('}');
        out
    }

    fn invalid(&self, intentions: bool) -> RulesError {
        let (value, line) = match if intentions {
            &self.intentions
        } else {
            &self.policy
        } {
            Some((value, pos)) => (value.clone(), pos.line),
            None => (String::new(), self.pos.line),
        };
        RulesError::InvalidPolicy {
            rule: self.kind.keyword(),
            intentions,
            name: Some(self.name.clone()),
            value,
            line,
            detail: self.go_repr(),
            modern_detail: self.go_repr_modern(),
        }
    }
}

/// The whole decoded document.
#[derive(Debug, Default)]
struct RawPolicy {
    acl: Option<(String, Pos)>,
    rules: Vec<RawRule>,
    keyring: Option<(String, Pos)>,
    operator: Option<(String, Pos)>,
}

impl RawPolicy {
    /// Consul's `parseCurrent` checks, in its order. The first failure is reported.
    fn validate(self) -> Result<Policy, RulesError> {
        let acl = validate_scalar("acl", self.acl)?;
        let mut policy = Policy {
            acl,
            ..Policy::default()
        };
        for kind in KINDS {
            for rule in self.rules.iter().filter(|rule| rule.kind == kind) {
                let access = Access::from_policy(rule.policy_str());
                let access = match (access, kind) {
                    (Some(access), _) => access,
                    // `list` is valid only for key rules, which are not kept.
                    (None, Kind::Key | Kind::KeyPrefix) if rule.policy_str() == "list" => continue,
                    (None, _) => return Err(rule.invalid(false)),
                };
                let intentions = match rule.intentions_str() {
                    "" => None,
                    word => Some(Access::from_policy(word).ok_or_else(|| rule.invalid(true))?),
                };
                let named = || NamedRule {
                    name: rule.name.clone(),
                    policy: access,
                };
                let service = || ServiceRule {
                    name: rule.name.clone(),
                    policy: access,
                    intentions,
                };
                match kind {
                    Kind::Service => policy.services.push(service()),
                    Kind::ServicePrefix => policy.service_prefixes.push(service()),
                    Kind::Node => policy.nodes.push(named()),
                    Kind::NodePrefix => policy.node_prefixes.push(named()),
                    Kind::Agent => policy.agents.push(named()),
                    Kind::AgentPrefix => policy.agent_prefixes.push(named()),
                    Kind::Query => policy.queries.push(named()),
                    Kind::QueryPrefix => policy.query_prefixes.push(named()),
                    _ => {}
                }
            }
        }
        validate_scalar("keyring", self.keyring)?;
        policy.operator = validate_scalar("operator", self.operator)?;
        Ok(policy)
    }
}

/// `acl`, `keyring`, `operator`: empty means unset, anything else must be a valid policy.
fn validate_scalar(
    rule: &'static str,
    value: Option<(String, Pos)>,
) -> Result<Option<Access>, RulesError> {
    match value {
        None => Ok(None),
        Some((value, _)) if value.is_empty() => Ok(None),
        Some((value, pos)) => match Access::from_policy(&value) {
            Some(access) => Ok(Some(access)),
            None => Err(RulesError::InvalidPolicy {
                rule,
                intentions: false,
                name: None,
                detail: go_quote(&value),
                modern_detail: go_quote(&value),
                value,
                line: pos.line,
            }),
        },
    }
}

/// Decodes the root object the way Go's reflection decoder fills `acl.Policy`.
fn decode(root: &[Item]) -> Result<RawPolicy, RulesError> {
    let mut raw = RawPolicy {
        acl: decode_string_in("root.acl", root, "acl")?,
        ..RawPolicy::default()
    };
    for kind in KINDS {
        decode_rules(kind, root, &mut raw.rules)?;
    }
    raw.keyring = decode_string_in("root.keyring", root, "keyring")?;
    raw.operator = decode_string_in("root.operator", root, "operator")?;
    Ok(raw)
}

/// Go's `ObjectList.Filter(field)`: items whose first key equals `field` (ASCII case-insensitive),
/// with that key removed, split into those with keys left (`Children`) and those without (`Elem`).
fn filter(items: &[Item], field: &str) -> (Vec<Item>, Vec<Item>) {
    let mut children = Vec::new();
    let mut elems = Vec::new();
    for item in items {
        let Some((first, rest)) = item.keys.split_first() else {
            continue;
        };
        if !first.value.eq_ignore_ascii_case(field) {
            continue;
        }
        let stripped = Item {
            keys: rest.to_vec(),
            value: item.value.clone(),
        };
        if rest.is_empty() {
            elems.push(stripped);
        } else {
            children.push(stripped);
        }
    }
    (children, elems)
}

/// A string field of a struct: labelled blocks are an error, later assignments win.
fn decode_string_in(
    path: &str,
    body: &[Item],
    field: &str,
) -> Result<Option<(String, Pos)>, RulesError> {
    let (children, elems) = filter(body, field);
    if let Some(first) = children.first() {
        return Err(decode_error(
            first.pos(),
            format!("{path}: unknown type for string *ast.ObjectList"),
        ));
    }
    let mut out = None;
    for elem in &elems {
        out = Some((decode_string(path, &elem.value)?, elem.value.pos()));
    }
    Ok(out)
}

fn decode_string(path: &str, node: &Node) -> Result<String, RulesError> {
    match node {
        Node::Lit(lit) if lit.kind != LitKind::Null => Ok(lit.value.clone()),
        other => Err(decode_error(
            other.list_pos(),
            format!(
                "{path}: unknown type for string {}",
                other.go_type_as_list()
            ),
        )),
    }
}

/// A `[]*XxxPolicy` field: `kind "name" { … }` items first, then `kind { … }`/`kind = { … }`.
fn decode_rules(kind: Kind, root: &[Item], out: &mut Vec<RawRule>) -> Result<(), RulesError> {
    let path = format!("root.{}", kind.keyword());
    let (children, elems) = filter(root, kind.keyword());
    decode_rule_items(kind, &path, &children, out)?;
    for elem in &elems {
        match &elem.value {
            Node::Object { items, .. } => decode_rule_items(kind, &path, items, out)?,
            Node::List { elems, .. } => {
                // A list element has no key to name the rule: the first one fails.
                let (_, key_field) = kind.go_struct();
                if let Some(node) = elems.first() {
                    let message = match node {
                        Node::Object { .. } => {
                            format!("{path}[0]: {key_field} asked for 'key', impossible")
                        }
                        other => format!(
                            "{path}[0]: not an object type for struct ({})",
                            other.go_type()
                        ),
                    };
                    return Err(decode_error(node.pos(), message));
                }
            }
            Node::Lit(lit) => {
                return Err(decode_error(
                    lit.pos,
                    "unknown slice type: *ast.LiteralType".to_string(),
                ));
            }
        }
    }
    Ok(())
}

fn decode_rule_items(
    kind: Kind,
    path: &str,
    items: &[Item],
    out: &mut Vec<RawRule>,
) -> Result<(), RulesError> {
    for (i, item) in items.iter().enumerate() {
        out.push(decode_rule(
            kind,
            &format!("{path}[{i}]"),
            expand_object(item),
        )?);
    }
    Ok(())
}

/// Go's `expandObject`: an item with exactly two keys (`service "web" "x" { … }`, or flattened
/// JSON) is read as `web { x { … } }`.
fn expand_object(item: &Item) -> Item {
    match item.keys.as_slice() {
        [first, second] => Item {
            keys: vec![first.clone()],
            value: Node::Object {
                items: vec![Item {
                    keys: vec![second.clone()],
                    value: item.value.clone(),
                }],
                pos: second.pos,
            },
        },
        _ => item.clone(),
    }
}

fn decode_rule(kind: Kind, path: &str, item: Item) -> Result<RawRule, RulesError> {
    let (name, pos) = item
        .keys
        .first()
        .map_or((String::new(), item.value.pos()), |key| {
            (key.value.clone(), key.pos)
        });
    let body = match &item.value {
        Node::Object { items, .. } => items.clone(),
        // Go decodes a literal-valued item as a struct made of that item alone.
        Node::Lit(_) => vec![item.clone()],
        Node::List { pos, .. } => {
            return Err(decode_error(
                *pos,
                format!("{path}: not an object type for struct (*ast.ListType)"),
            ));
        }
    };
    let policy = decode_string_in(&format!("{path}.Policy"), &body, "Policy")?;
    let (sentinel_code, sentinel_level) = if kind.has_sentinel() {
        decode_sentinel(&format!("{path}.Sentinel"), &body)?
    } else {
        (String::new(), String::new())
    };
    let intentions = if kind.has_intentions() {
        decode_string_in(&format!("{path}.Intentions"), &body, "Intentions")?
    } else {
        None
    };
    Ok(RawRule {
        kind,
        name,
        pos,
        policy,
        intentions,
        sentinel_code,
        sentinel_level,
    })
}

/// The `sentinel { code = … enforcementlevel = … }` block (Enterprise; OSS only echoes it in
/// error texts).
fn decode_sentinel(path: &str, body: &[Item]) -> Result<(String, String), RulesError> {
    let (children, elems) = filter(body, "Sentinel");
    let mut code = String::new();
    let mut level = String::new();
    let mut bodies = Vec::new();
    if !children.is_empty() {
        bodies.push(children);
    }
    for elem in elems {
        match elem.value {
            Node::Object { items, .. } => bodies.push(items),
            other => {
                return Err(decode_error(
                    other.pos(),
                    format!(
                        "{path}: not an object type for struct ({})",
                        other.go_type()
                    ),
                ));
            }
        }
    }
    for items in &bodies {
        if let Some((value, _)) = decode_string_in(&format!("{path}.Code"), items, "Code")? {
            code = value;
        }
        if let Some((value, _)) = decode_string_in(
            &format!("{path}.EnforcementLevel"),
            items,
            "EnforcementLevel",
        )? {
            level = value;
        }
    }
    Ok((code, level))
}

impl From<SyntaxError> for RulesError {
    fn from(e: SyntaxError) -> Self {
        RulesError::Syntax {
            line: e.line,
            column: e.column,
            message: e.message,
        }
    }
}

fn decode_error(pos: Pos, message: String) -> RulesError {
    RulesError::Syntax {
        line: pos.line,
        column: pos.column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact, order-preserving rendering of everything a `Policy` keeps.
    fn summary(policy: &Policy) -> String {
        let mut parts = Vec::new();
        if let Some(access) = policy.acl() {
            parts.push(format!("acl={access}"));
        }
        if let Some(access) = policy.operator() {
            parts.push(format!("operator={access}"));
        }
        let services = [
            ("service", policy.services()),
            ("service_prefix", policy.service_prefixes()),
        ];
        for (kind, rules) in services {
            for rule in rules {
                let intentions = rule
                    .intentions()
                    .map(|i| format!("/intentions={i}"))
                    .unwrap_or_default();
                parts.push(format!(
                    "{kind} {:?}={}{intentions}",
                    rule.name(),
                    rule.policy()
                ));
            }
        }
        let named = [
            ("node", policy.nodes()),
            ("node_prefix", policy.node_prefixes()),
            ("agent", policy.agents()),
            ("agent_prefix", policy.agent_prefixes()),
        ];
        for (kind, rules) in named {
            for rule in rules {
                parts.push(format!("{kind} {:?}={}", rule.name(), rule.policy()));
            }
        }
        parts.join("; ")
    }

    const SENTINEL_EMPTY: &str = r#"Sentinel:acl.Sentinel{Code:"", EnforcementLevel:""}"#;

    #[test]
    fn parse_accepts_consul_rules() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "one-line block",
                r#"service "web" { policy = "write" intentions = "read" }"#,
                r#"service "web"=write/intentions=read"#,
            ),
            (
                "multi-line blocks and all comment styles",
                "# leading comment\nservice \"web\" {\n  // line comment\n  policy = \"write\" /* inline */\n}\n\
                 /* block\n comment */\nservice_prefix \"\" {\n  policy = \"read\"\n}\n",
                r#"service "web"=write; service_prefix ""=read"#,
            ),
            (
                "nodes and prefixes",
                r#"node "n" { policy = "read" } node_prefix "" { policy = "write" }"#,
                r#"node "n"=read; node_prefix ""=write"#,
            ),
            (
                "scalars",
                "operator = \"read\"\nacl = \"write\"\nkeyring = \"deny\"",
                "acl=write; operator=read",
            ),
            (
                "agent rules kept",
                r#"agent "a1" { policy = "write" } agent_prefix "" { policy = "read" }"#,
                r#"agent "a1"=write; agent_prefix ""=read"#,
            ),
            (
                "other kinds validated and dropped, list allowed on keys",
                r#"key_prefix "" { policy = "list" } key "k" { policy = "read" }
                   session_prefix "" { policy = "write" } event "e" { policy = "deny" }
                   query_prefix "" { policy = "read" }"#,
                "",
            ),
            (
                "unknown keys ignored",
                "foo = \"bar\"\nunknown \"x\" { y = [1, 2] }\nservice \"a\" { policy = \"read\" color = \"blue\" }",
                r#"service "a"=read"#,
            ),
            (
                "keys are case-insensitive",
                r#"Service "web" { Policy = "read" INTENTIONS = "write" }"#,
                r#"service "web"=read/intentions=write"#,
            ),
            (
                "unquoted name",
                "service web-1.x { policy = \"read\" }",
                r#"service "web-1.x"=read"#,
            ),
            (
                "nested block form",
                r#"service { "web" { policy = "read" } db { policy = "write" } }"#,
                r#"service "web"=read; service "db"=write"#,
            ),
            (
                "assignment form",
                r#"service = { web = { policy = "read" } }"#,
                r#"service "web"=read"#,
            ),
            (
                "commas separate items",
                r#"service "a" { policy = "read", intentions = "deny", }, operator = "write""#,
                r#"operator=write; service "a"=read/intentions=deny"#,
            ),
            (
                "later assignment wins",
                r#"service "a" { policy = "read" policy = "write" }"#,
                r#"service "a"=write"#,
            ),
            (
                "string escapes",
                r#"service "we\u0062\x2d\"q\"" { policy = "\x72ead" }"#,
                r#"service "web-\"q\""=read"#,
            ),
            (
                "repeated blocks are kept in order",
                r#"service "a" { policy = "read" } service "a" { policy = "deny" }"#,
                r#"service "a"=read; service "a"=deny"#,
            ),
            (
                "empty text",
                "",
                "",
            ),
            (
                "only whitespace and comments",
                "  \n# nothing\n// here\n",
                "",
            ),
            (
                "empty intentions means unset",
                r#"service "a" { policy = "read" intentions = "" }"#,
                r#"service "a"=read"#,
            ),
            (
                "bare field block reads as a rule named after the field (Go decoder quirk)",
                r#"service { policy = "read" }"#,
                r#"service "policy"=read"#,
            ),
            (
                "sentinel block accepted",
                r#"service "a" { policy = "write" sentinel { code = "x" enforcementlevel = "soft-mandatory" } }"#,
                r#"service "a"=write"#,
            ),
            (
                "JSON objects",
                r#"{"service": {"web": {"policy": "write"}, "db": {"policy": "read", "intentions": "write"}},
                   "service_prefix": {"": {"policy": "read"}}, "operator": "read"}"#,
                r#"operator=read; service "web"=write; service "db"=read/intentions=write; service_prefix ""=read"#,
            ),
            (
                "JSON arrays of objects",
                r#"{"service": [{"web": [{"policy": "write"}]}, {"db": [{"policy": "deny"}]}],
                   "node_prefix": [{"": [{"policy": "read"}]}]}"#,
                r#"service "web"=write; service "db"=deny; node_prefix ""=read"#,
            ),
            (
                "JSON with leading whitespace and escapes",
                "\n  {\"service\": {\"w\\u00e9b\\/1\": {\"policy\": \"read\"}}}",
                r#"service "wéb/1"=read"#,
            ),
            (
                "CRLF line endings",
                "service \"a\" {\r\n  policy = \"read\"\r\n}\r\n",
                r#"service "a"=read"#,
            ),
        ];
        for (name, rules, expected) in cases {
            match Policy::parse(rules) {
                Ok(policy) => assert_eq!(summary(&policy), *expected, "case {name:?}"),
                Err(err) => panic!("case {name:?}: unexpected error: {err}"),
            }
        }
    }

    #[test]
    fn parse_rejects_with_consul_texts() {
        let service = |name: &str, policy: &str, intentions: &str| {
            format!(
                "acl.ServicePolicy{{Name:{name:?}, Policy:{policy:?}, {SENTINEL_EMPTY}, Intentions:{intentions:?}}}"
            )
        };
        let cases: Vec<(&str, &str, String, usize)> = vec![
            (
                "bad service policy",
                r#"service "web" { policy = "writ" }"#,
                format!("Invalid service policy: {}", service("web", "writ", "")),
                1,
            ),
            (
                "missing service policy",
                "\n\nservice \"web\" {}",
                format!("Invalid service policy: {}", service("web", "", "")),
                3,
            ),
            (
                "policy values are case-sensitive",
                r#"service "web" { policy = "Write" }"#,
                format!("Invalid service policy: {}", service("web", "Write", "")),
                1,
            ),
            (
                "bad intentions on a prefix rule",
                "service_prefix \"\" {\n  policy = \"read\"\n  intentions = \"list\"\n}",
                format!(
                    "Invalid service_prefix intentions policy: {}",
                    service("", "read", "list")
                ),
                3,
            ),
            (
                "sentinel is echoed",
                r#"service "a" { policy = "wr" sentinel { code = "x" enforcementlevel = "soft-mandatory" } }"#,
                r#"Invalid service policy: acl.ServicePolicy{Name:"a", Policy:"wr", Sentinel:acl.Sentinel{Code:"x", EnforcementLevel:"soft-mandatory"}, Intentions:""}"#.to_string(),
                1,
            ),
            (
                "two labels expand into a nested block (Go expandObject)",
                r#"service "web" "x" { policy = "read" }"#,
                format!("Invalid service policy: {}", service("web", "", "")),
                1,
            ),
            ("bad operator", r#"operator = "writ""#, r#"Invalid operator policy: "writ""#.into(), 1),
            ("list is not an acl policy", "\nacl = \"list\"", r#"Invalid acl policy: "list""#.into(), 2),
            ("bad keyring", r#"keyring = "x""#, r#"Invalid keyring policy: "x""#.into(), 1),
            ("numbers decode as text", "operator = 1", r#"Invalid operator policy: "1""#.into(), 1),
            (
                "heredoc value keeps its newline",
                "operator = <<EOF\nread\nEOF\n",
                r#"Invalid operator policy: "read\n""#.into(),
                1,
            ),
            (
                "list is not a node policy",
                r#"node "n" { policy = "list" }"#,
                format!(r#"Invalid node policy: acl.NodePolicy{{Name:"n", Policy:"list", {SENTINEL_EMPTY}}}"#),
                1,
            ),
            (
                "bad key policy",
                r#"key "k" { policy = "lis" }"#,
                format!(r#"Invalid key policy: acl.KeyPolicy{{Prefix:"k", Policy:"lis", {SENTINEL_EMPTY}}}"#),
                1,
            ),
            (
                "bad agent policy",
                r#"agent "a" { policy = "x" }"#,
                r#"Invalid agent policy: acl.AgentPolicy{Node:"a", Policy:"x"}"#.into(),
                1,
            ),
            (
                "bad session_prefix policy",
                r#"session_prefix "" { policy = "list" }"#,
                r#"Invalid session_prefix policy: acl.SessionPolicy{Node:"", Policy:"list"}"#.into(),
                1,
            ),
            (
                "bad event policy",
                r#"event "deploy" { policy = "fire" }"#,
                r#"Invalid event policy: acl.EventPolicy{Event:"deploy", Policy:"fire"}"#.into(),
                1,
            ),
            (
                "bad query_prefix policy",
                r#"query_prefix "" { policy = "list" }"#,
                r#"Invalid query_prefix policy: acl.PreparedQueryPolicy{Prefix:"", Policy:"list"}"#.into(),
                1,
            ),
            (
                "validation follows Consul's field order, not source order",
                "operator = \"bad\"\nservice \"web\" { policy = \"bad\" }\nnode \"n\" { policy = \"bad\" }",
                format!(r#"Invalid node policy: acl.NodePolicy{{Name:"n", Policy:"bad", {SENTINEL_EMPTY}}}"#),
                3,
            ),
            (
                "control characters are quoted like Go",
                "operator = \"a\\tb\\x01\\\"\"",
                r#"Invalid operator policy: "a\tb\x01\"""#.into(),
                1,
            ),
            (
                "JSON bad value",
                r#"{"service": {"web": {"policy": "writ"}}}"#,
                format!("Invalid service policy: {}", service("web", "writ", "")),
                1,
            ),
            (
                "unclosed block",
                r#"service "web" {"#,
                "Failed to parse ACL rules: At 1:16: object expected closing RBRACE got: EOF".into(),
                1,
            ),
            (
                "bare words",
                "not a valid hcl",
                "Failed to parse ACL rules: At 1:17: key 'not a valid hcl' expected start of object ('{') or assignment ('=')"
                    .into(),
                1,
            ),
            (
                "labels then closing brace",
                "service \"a\" {\n  policy \"x\"\n}",
                r#"Failed to parse ACL rules: At 3:1: key 'policy "x"' expected start of object ('{') or assignment ('=')"#
                    .into(),
                3,
            ),
            (
                "labelled assignment",
                r#"service "web" = { policy = "read" }"#,
                "Failed to parse ACL rules: At 1:15: nested object expected: LBRACE got: ASSIGN".into(),
                1,
            ),
            (
                "unterminated string",
                r#"operator = "read"#,
                "Failed to parse ACL rules: At 1:17: literal not terminated".into(),
                1,
            ),
            (
                "newline ends a string; the first error on line 1 is reported",
                "operator = \"re\n",
                "Failed to parse ACL rules: At 1:15: literal not terminated".into(),
                1,
            ),
            (
                "the last scanner error wins, as in hcl",
                "operator = \"re\nad\"",
                "Failed to parse ACL rules: At 2:4: literal not terminated".into(),
                2,
            ),
            (
                "missing value",
                r#"service "web" { policy = }"#,
                "Failed to parse ACL rules: At 1:26: Unknown token: {Type:RBRACE Pos:1:26 Text:} JSON:false}".into(),
                1,
            ),
            (
                "illegal character",
                "\noperator = \"read\" @",
                "Failed to parse ACL rules: At 2:19: illegal char".into(),
                2,
            ),
            (
                "unterminated comment",
                "/* unterminated",
                "Failed to parse ACL rules: At 1:16: comment not terminated".into(),
                1,
            ),
            (
                "single slash",
                "operator = \"read\" / x",
                "Failed to parse ACL rules: At 1:19: expected '/' for comment".into(),
                1,
            ),
            (
                "bad escape",
                r#"operator = "\q""#,
                "Failed to parse ACL rules: At 1:14: illegal char escape".into(),
                1,
            ),
            (
                "list where a string belongs",
                r#"operator = ["read"]"#,
                "Failed to parse ACL rules: At 1:12: root.operator: unknown type for string *ast.ListType".into(),
                1,
            ),
            (
                "block where a string belongs",
                "service \"a\" {\n  policy { x = 1 }\n}",
                "Failed to parse ACL rules: At 2:12: root.service[0].Policy: unknown type for string *ast.ObjectList"
                    .into(),
                2,
            ),
            (
                "string where rules belong",
                r#"service = "web""#,
                "Failed to parse ACL rules: At 1:11: unknown slice type: *ast.LiteralType".into(),
                1,
            ),
            (
                "list where rules belong",
                r#"service = [{ policy = "read" }]"#,
                "Failed to parse ACL rules: At 1:12: root.service[0]: Name asked for 'key', impossible".into(),
                1,
            ),
            (
                "missing comma in list",
                r#"x = ["a" "b"]"#,
                "Failed to parse ACL rules: At 1:10: error parsing list, expected comma or list end, got: STRING"
                    .into(),
                1,
            ),
            (
                "JSON missing value",
                r#"{"service": }"#,
                "Failed to parse ACL rules: At 1:13: expected a JSON value, found '}'".into(),
                1,
            ),
            (
                "JSON null policy",
                "{\"operator\":\n null}",
                "Failed to parse ACL rules: At 2:2: root.operator: unknown type for string *ast.LiteralType".into(),
                2,
            ),
            (
                "JSON trailing text",
                r#"{"operator": "read"} x"#,
                "Failed to parse ACL rules: At 1:22: unexpected 'x' after the JSON object".into(),
                1,
            ),
        ];
        for (name, rules, expected, line) in &cases {
            match Policy::parse(rules) {
                Ok(policy) => panic!("case {name:?}: parsed as {:?}", summary(&policy)),
                Err(err) => {
                    assert_eq!(err.to_string(), *expected, "case {name:?}");
                    assert_eq!(err.line(), *line, "case {name:?}: line");
                }
            }
        }
    }

    #[test]
    fn invalid_policy_error_carries_the_rule() {
        let err = Policy::parse("\nservice \"web\" {\n  policy = \"writ\"\n}").unwrap_err();
        match err {
            RulesError::InvalidPolicy {
                rule,
                intentions,
                name,
                value,
                line,
                ..
            } => {
                assert_eq!(rule, "service");
                assert!(!intentions);
                assert_eq!(name.as_deref(), Some("web"));
                assert_eq!(value, "writ");
                assert_eq!(line, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn access_order_and_predicates() {
        assert!(Access::Deny < Access::Read && Access::Read < Access::Write);
        let table = [
            (Access::Deny, false, false),
            (Access::Read, true, false),
            (Access::Write, true, true),
        ];
        for (access, read, write) in table {
            assert_eq!(access.allows_read(), read, "{access}");
            assert_eq!(access.allows_write(), write, "{access}");
            assert_eq!(Access::from_policy(access.as_str()), Some(access));
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Check {
        ServiceRead(&'static str),
        ServiceWrite(&'static str),
        IntentionRead(&'static str),
        IntentionWrite(&'static str),
        NodeRead(&'static str),
        NodeWrite(&'static str),
        AgentRead(&'static str),
        OperatorRead,
        OperatorWrite,
        AclRead,
        AclWrite,
        IntentionDefaultAllow,
    }

    use Check::*;
    use DefaultPolicy::{Allow, Deny};

    struct Case {
        name: &'static str,
        policies: &'static [&'static str],
        default: DefaultPolicy,
        management: bool,
        checks: &'static [(Check, bool)],
    }

    fn run(case: &Case, check: Check) -> bool {
        let policies: Vec<Policy> = case
            .policies
            .iter()
            .map(|rules| {
                Policy::parse(rules).unwrap_or_else(|err| panic!("case {:?}: {err}", case.name))
            })
            .collect();
        let authz = Authorizer::new(&policies, case.default, case.management);
        match check {
            ServiceRead(name) => authz.service_read(name),
            ServiceWrite(name) => authz.service_write(name),
            IntentionRead(name) => authz.intention_read(name),
            IntentionWrite(name) => authz.intention_write(name),
            NodeRead(name) => authz.node_read(name),
            NodeWrite(name) => authz.node_write(name),
            AgentRead(name) => authz.agent_read(name),
            OperatorRead => authz.operator_read(),
            OperatorWrite => authz.operator_write(),
            AclRead => authz.acl_read(),
            AclWrite => authz.acl_write(),
            IntentionDefaultAllow => authz.intention_default_allow(),
        }
    }

    const CASES: &[Case] = &[
        Case {
            name: "exact deny beats empty prefix write",
            policies: &[
                r#"service "web" { policy = "deny" } service_prefix "" { policy = "write" }"#,
            ],
            default: Deny,
            management: false,
            checks: &[
                (ServiceRead("web"), false),
                (ServiceWrite("db"), true),
                (ServiceWrite("webx"), true),
            ],
        },
        Case {
            name: "exact write beats empty prefix deny",
            policies: &[
                r#"service "web" { policy = "write" } service_prefix "" { policy = "deny" }"#,
            ],
            default: Allow,
            management: false,
            checks: &[
                (ServiceWrite("web"), true),
                (ServiceRead("webx"), false),
                (ServiceRead(""), false),
            ],
        },
        Case {
            name: "longest prefix wins",
            policies: &[
                r#"service_prefix "we" { policy = "write" } service_prefix "web" { policy = "read" }"#,
            ],
            default: Deny,
            management: false,
            checks: &[
                (ServiceWrite("webby"), false),
                (ServiceRead("webby"), true),
                (ServiceWrite("wet"), true),
                (ServiceRead("w"), false),
            ],
        },
        Case {
            name: "prefix equal to the name is a prefix match",
            policies: &[
                r#"service_prefix "web" { policy = "deny" } service_prefix "" { policy = "write" }"#,
            ],
            default: Allow,
            management: false,
            checks: &[(ServiceRead("web"), false), (ServiceRead("we"), true)],
        },
        Case {
            name: "exact rule is not a prefix",
            policies: &[r#"service "web" { policy = "write" }"#],
            default: Deny,
            management: false,
            checks: &[
                (ServiceWrite("web"), true),
                (ServiceRead("web-sidecar-proxy"), false),
            ],
        },
        Case {
            name: "empty prefix matches every name",
            policies: &[r#"service_prefix "" { policy = "read" }"#],
            default: Deny,
            management: false,
            checks: &[
                (ServiceRead("anything"), true),
                (ServiceRead(""), true),
                (ServiceWrite("anything"), false),
            ],
        },
        Case {
            name: "multibyte prefixes",
            policies: &[
                r#"service_prefix "wé" { policy = "deny" } service_prefix "w" { policy = "write" }"#,
            ],
            default: Deny,
            management: false,
            checks: &[
                (ServiceRead("wéb"), false),
                (ServiceWrite("wxb"), true),
                (ServiceWrite("w"), true),
            ],
        },
        Case {
            name: "no matching rule: default allow grants write",
            policies: &[r#"service "web" { policy = "read" }"#],
            default: Allow,
            management: false,
            checks: &[
                (ServiceWrite("db"), true),
                (IntentionWrite("db"), true),
                (NodeWrite("n1"), true),
            ],
        },
        Case {
            name: "no matching rule: default deny grants nothing",
            policies: &[r#"service "web" { policy = "write" }"#],
            default: Deny,
            management: false,
            checks: &[
                (ServiceRead("db"), false),
                (IntentionRead("db"), false),
                (NodeRead("n1"), false),
            ],
        },
        Case {
            name: "deny rule overrides default allow",
            policies: &[r#"service "web" { policy = "deny" }"#],
            default: Allow,
            management: false,
            checks: &[(ServiceRead("web"), false), (IntentionRead("web"), false)],
        },
        Case {
            name: "write policy implies intentions read only",
            policies: &[r#"service "web" { policy = "write" }"#],
            default: Allow,
            management: false,
            checks: &[(IntentionRead("web"), true), (IntentionWrite("web"), false)],
        },
        Case {
            name: "read policy implies intentions read",
            policies: &[r#"service_prefix "" { policy = "read" }"#],
            default: Deny,
            management: false,
            checks: &[(IntentionRead("db"), true), (IntentionWrite("db"), false)],
        },
        Case {
            name: "explicit intentions write on a read policy",
            policies: &[r#"service "web" { policy = "read" intentions = "write" }"#],
            default: Deny,
            management: false,
            checks: &[(IntentionWrite("web"), true), (ServiceWrite("web"), false)],
        },
        Case {
            name: "explicit intentions deny on a write policy",
            policies: &[r#"service "web" { policy = "write" intentions = "deny" }"#],
            default: Allow,
            management: false,
            checks: &[(IntentionRead("web"), false), (ServiceWrite("web"), true)],
        },
        Case {
            name: "explicit intentions survive a deny policy",
            policies: &[r#"service "web" { policy = "deny" intentions = "write" }"#],
            default: Deny,
            management: false,
            checks: &[(IntentionWrite("web"), true), (ServiceRead("web"), false)],
        },
        Case {
            name: "intentions follow the same exact-over-prefix rule",
            policies: &[
                r#"service_prefix "" { policy = "read" intentions = "write" }
                           service "db" { policy = "write" }"#,
            ],
            default: Deny,
            management: false,
            checks: &[
                (IntentionWrite("db"), false),
                (IntentionRead("db"), true),
                (IntentionWrite("web"), true),
            ],
        },
        Case {
            name: "policies merge: deny beats write",
            policies: &[
                r#"service "web" { policy = "write" }"#,
                r#"service "web" { policy = "deny" }"#,
            ],
            default: Allow,
            management: false,
            checks: &[(ServiceRead("web"), false), (IntentionRead("web"), false)],
        },
        Case {
            name: "policies merge: write beats read, in either order",
            policies: &[
                r#"service "web" { policy = "write" } service "db" { policy = "read" }"#,
                r#"service "web" { policy = "read" } service "db" { policy = "write" }"#,
            ],
            default: Deny,
            management: false,
            checks: &[(ServiceWrite("web"), true), (ServiceWrite("db"), true)],
        },
        Case {
            name: "policies merge fields separately",
            policies: &[
                r#"service "web" { policy = "write" }"#,
                r#"service "web" { policy = "read" intentions = "deny" }"#,
            ],
            default: Allow,
            management: false,
            checks: &[(ServiceWrite("web"), true), (IntentionRead("web"), false)],
        },
        Case {
            name: "merged explicit intentions beat derived ones",
            policies: &[
                r#"service "web" { policy = "read" }"#,
                r#"service "web" { policy = "read" intentions = "write" }"#,
            ],
            default: Deny,
            management: false,
            checks: &[(IntentionWrite("web"), true)],
        },
        Case {
            name: "blocks repeated within one policy merge too",
            policies: &[
                r#"service_prefix "a" { policy = "read" } service_prefix "a" { policy = "write" }"#,
            ],
            default: Deny,
            management: false,
            checks: &[(ServiceWrite("abc"), true)],
        },
        Case {
            name: "exact rule from one policy beats prefix from another",
            policies: &[
                r#"service "web" { policy = "read" }"#,
                r#"service_prefix "" { policy = "write" }"#,
            ],
            default: Deny,
            management: false,
            checks: &[(ServiceWrite("web"), false), (ServiceWrite("db"), true)],
        },
        Case {
            name: "management overrides deny rules and default deny",
            policies: &[r#"service "web" { policy = "deny" } operator = "deny" acl = "deny""#],
            default: Deny,
            management: true,
            checks: &[
                (ServiceWrite("web"), true),
                (IntentionWrite("web"), true),
                (NodeWrite("n"), true),
                (OperatorWrite, true),
                (AclWrite, true),
            ],
        },
        Case {
            name: "operator rule",
            policies: &[r#"operator = "read""#],
            default: Allow,
            management: false,
            checks: &[(OperatorRead, true), (OperatorWrite, false)],
        },
        Case {
            name: "operator unset follows the default",
            policies: &[r#"service_prefix "" { policy = "write" }"#],
            default: Allow,
            management: false,
            checks: &[(OperatorWrite, true)],
        },
        Case {
            name: "operator unset under default deny",
            policies: &[],
            default: Deny,
            management: false,
            checks: &[(OperatorRead, false)],
        },
        Case {
            name: "operator merges deny-first",
            policies: &[
                r#"operator = "write""#,
                r#"operator = "deny""#,
                r#"operator = "read""#,
            ],
            default: Allow,
            management: false,
            checks: &[(OperatorRead, false)],
        },
        Case {
            name: "acl is never granted by default allow",
            policies: &[],
            default: Allow,
            management: false,
            checks: &[
                (AclRead, false),
                (AclWrite, false),
                (ServiceWrite("x"), true),
            ],
        },
        Case {
            name: "acl read rule",
            policies: &[r#"acl = "read""#],
            default: Deny,
            management: false,
            checks: &[(AclRead, true), (AclWrite, false)],
        },
        Case {
            name: "acl merges: write beats read",
            policies: &[r#"acl = "read""#, r#"acl = "write""#],
            default: Deny,
            management: false,
            checks: &[(AclWrite, true)],
        },
        Case {
            name: "node exact beats prefix",
            policies: &[r#"node_prefix "" { policy = "read" } node "db" { policy = "deny" }"#],
            default: Allow,
            management: false,
            checks: &[
                (NodeRead("db"), false),
                (NodeRead("web"), true),
                (NodeWrite("web"), false),
            ],
        },
        Case {
            name: "agent prefix rules",
            policies: &[r#"agent_prefix "node-" { policy = "read" }"#],
            default: Deny,
            management: false,
            checks: &[(AgentRead("node-1"), true), (AgentRead("other"), false)],
        },
        Case {
            name: "service rules do not leak into nodes",
            policies: &[r#"service_prefix "" { policy = "deny" }"#],
            default: Allow,
            management: false,
            checks: &[(NodeRead("web"), true), (ServiceRead("web"), false)],
        },
        Case {
            name: "intention default follows the default policy only",
            policies: &[r#"service_prefix "" { policy = "write" intentions = "write" }"#],
            default: Deny,
            management: true,
            checks: &[(IntentionDefaultAllow, false)],
        },
        Case {
            name: "intention default allow",
            policies: &[r#"service_prefix "" { policy = "deny" }"#],
            default: Allow,
            management: false,
            checks: &[(IntentionDefaultAllow, true)],
        },
        Case {
            name: "JSON policy evaluates like HCL",
            policies: &[
                r#"{"service": [{"web": [{"policy": "write", "intentions": "write"}]}],
                           "service_prefix": {"": {"policy": "read"}}}"#,
            ],
            default: Deny,
            management: false,
            checks: &[
                (IntentionWrite("web"), true),
                (ServiceRead("db"), true),
                (ServiceWrite("db"), false),
            ],
        },
    ];

    #[test]
    fn authorizer_table() {
        let mut count = 0;
        for case in CASES {
            for (check, expected) in case.checks {
                assert_eq!(
                    run(case, *check),
                    *expected,
                    "case {:?}: {check:?}",
                    case.name
                );
                count += 1;
            }
        }
        assert!(count >= 25, "only {count} authorization checks");
    }

    #[test]
    fn access_getters_report_levels() {
        let policy = Policy::parse(
            r#"service "web" { policy = "read" } service_prefix "" { policy = "deny" }"#,
        )
        .expect("valid rules");
        let authz = Authorizer::new([&policy], DefaultPolicy::Allow, false);
        assert_eq!(authz.service_access("web"), Access::Read);
        assert_eq!(authz.service_access("db"), Access::Deny);
        assert_eq!(authz.intention_access("web"), Access::Read);
        assert_eq!(authz.intention_access("db"), Access::Deny);
        assert_eq!(authz.operator_access(), Access::Write);
        assert_eq!(authz.acl_access(), Access::Deny);
        assert!(!authz.is_management());
        assert_eq!(authz.default_policy(), DefaultPolicy::Allow);
    }
}
