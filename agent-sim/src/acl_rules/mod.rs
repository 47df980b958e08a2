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

mod authorizer;
mod decode;
mod policy;

use std::fmt;

pub use crate::hcl::MAX_NESTING;
pub use authorizer::Authorizer;
pub use policy::{NamedRule, Policy, ServiceRule};

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

#[cfg(test)]
mod tests;
