//! The ACL decisions that differ between the Consul versions agent-sim emulates, in one place.
//!
//! Everything else about permissions is the same in 1.4.5 and 1.10.9 and lives in
//! [`crate::acl_rules`]. The differences were measured with the ACL matrix
//! (`agent-sim/tests/data/acl-matrix/`) against real agents:
//!
//! | decision | 1.4.5 | 1.10.9 |
//! |---|---|---|
//! | `GET /v1/connect/ca/configuration` | `operator:read` | `operator:write` |
//! | reading an intention (list, get, exact) | `intentions:read` on the destination, or `acl:read` | `intentions:read` on the source or the destination |
//! | `SecretID` in `GET /v1/acl/tokens` | never | with `acl:write` (`<hidden>` without) |
//! | rule errors | `acl.ServicePolicy{…, Sentinel:…}` | `&acl.ServiceRule{…, EnterpriseRule:…}` |
//!
//! ```
//! use agent_sim::acl_rules::{Authorizer, DefaultPolicy, Policy};
//! use agent_sim::acl_versions::AclRules;
//!
//! let operator_read = Policy::parse(r#"operator = "read""#)?;
//! let authz = Authorizer::new([&operator_read], DefaultPolicy::Deny, false);
//! assert!(AclRules::CONSUL_1_4_5.ca_config_read(&authz));
//! assert!(!AclRules::CONSUL_1_10_9.ca_config_read(&authz));
//! # Ok::<(), agent_sim::acl_rules::RulesError>(())
//! ```

use crate::acl_rules::Authorizer;

/// A permission the version-specific rules pick between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// `operator = "read"`.
    OperatorRead,
    /// `operator = "write"`.
    OperatorWrite,
}

impl Perm {
    fn granted(self, acl: &Authorizer) -> bool {
        match self {
            Perm::OperatorRead => acl.operator_read(),
            Perm::OperatorWrite => acl.operator_write(),
        }
    }
}

/// The version-dependent ACL decisions of one Consul version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclRules {
    /// What `GET /v1/connect/ca/configuration` requires.
    pub ca_config_read: Perm,
    /// `acl:read` reveals every intention (1.4's `filterIntentions` skipped filtering for it).
    pub intention_read_by_acl_read: bool,
    /// `intentions:read` on an intention's source name reveals it (1.9+'s `CanRead`).
    pub intention_read_by_source: bool,
    /// Rule validation errors print the rule as 1.10 does (`&acl.ServiceRule{…}`).
    pub modern_rule_errors: bool,
    /// `GET /v1/acl/tokens` carries `SecretID`s, `<hidden>` without `acl:write` (1.9+).
    pub token_list_secrets: bool,
}

impl AclRules {
    /// Consul 1.4.5.
    pub const CONSUL_1_4_5: AclRules = AclRules {
        ca_config_read: Perm::OperatorRead,
        intention_read_by_acl_read: true,
        intention_read_by_source: false,
        modern_rule_errors: false,
        token_list_secrets: false,
    };

    /// Consul 1.10.9.
    pub const CONSUL_1_10_9: AclRules = AclRules {
        ca_config_read: Perm::OperatorWrite,
        intention_read_by_acl_read: false,
        intention_read_by_source: true,
        modern_rule_errors: true,
        token_list_secrets: true,
    };

    /// Whether `acl` may read the CA configuration.
    pub fn ca_config_read(&self, acl: &Authorizer) -> bool {
        self.ca_config_read.granted(acl)
    }

    /// Whether `acl` may read the intention from `source` to `destination`.
    pub fn intention_read(&self, acl: &Authorizer, source: &str, destination: &str) -> bool {
        acl.intention_read(destination)
            || (self.intention_read_by_acl_read && acl.acl_read())
            || (self.intention_read_by_source && acl.intention_read(source))
    }
}

impl Default for AclRules {
    /// Consul 1.4.5, the version agent-sim emulates unless told otherwise.
    fn default() -> Self {
        AclRules::CONSUL_1_4_5
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::acl_rules::{DefaultPolicy, Policy};

    fn authz(rules: &str) -> Authorizer {
        let policy = Policy::parse(rules).expect("valid rules");
        Authorizer::new([&policy], DefaultPolicy::Deny, false)
    }

    #[test]
    fn ca_configuration_needs_operator_write_from_1_10() {
        let read = authz(r#"operator = "read""#);
        let write = authz(r#"operator = "write""#);
        assert!(AclRules::CONSUL_1_4_5.ca_config_read(&read));
        assert!(!AclRules::CONSUL_1_10_9.ca_config_read(&read));
        assert!(AclRules::CONSUL_1_10_9.ca_config_read(&write));
        assert!(!AclRules::CONSUL_1_4_5.ca_config_read(&authz(r#"acl = "write""#)));
    }

    #[test]
    fn intention_visibility_per_version() {
        let acl_read = authz(r#"acl = "read""#);
        let web_read = authz(r#"service "web" { policy = "read" }"#);
        let db_read = authz(r#"service "db" { policy = "read" }"#);
        let (v14, v110) = (AclRules::CONSUL_1_4_5, AclRules::CONSUL_1_10_9);
        // web -> db, as the matrix asks it.
        assert!(v14.intention_read(&acl_read, "web", "db"));
        assert!(!v110.intention_read(&acl_read, "web", "db"));
        assert!(!v14.intention_read(&web_read, "web", "db"));
        assert!(v110.intention_read(&web_read, "web", "db"));
        assert!(v14.intention_read(&db_read, "web", "db"));
        assert!(v110.intention_read(&db_read, "web", "db"));
        assert_eq!(AclRules::default(), v14);
    }
}
