//! A parsed ACL policy: the rules it keeps, and reading rules text into one.

use std::str::FromStr;

use super::decode::decode;
use super::{Access, RulesError};
use crate::hcl::{flatten_json, HclParser, JsonParser};

/// One `service "name" { … }` or `service_prefix "name" { … }` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRule {
    pub(super) name: String,
    pub(super) policy: Access,
    pub(super) intentions: Option<Access>,
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
    pub(super) name: String,
    pub(super) policy: Access,
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
    pub(super) acl: Option<Access>,
    pub(super) operator: Option<Access>,
    pub(super) services: Vec<ServiceRule>,
    pub(super) service_prefixes: Vec<ServiceRule>,
    pub(super) nodes: Vec<NamedRule>,
    pub(super) node_prefixes: Vec<NamedRule>,
    pub(super) agents: Vec<NamedRule>,
    pub(super) agent_prefixes: Vec<NamedRule>,
    pub(super) queries: Vec<NamedRule>,
    pub(super) query_prefixes: Vec<NamedRule>,
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
