//! One token's policies merged and compiled over the default policy, answering the checks the
//! Connect endpoints need.

use std::collections::BTreeMap;
use std::iter;

use super::{Access, DefaultPolicy, NamedRule, Policy, ServiceRule};

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
