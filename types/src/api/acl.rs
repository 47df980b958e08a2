//! ACL policies and tokens (agent-sim serves them; the SDK sends only a token).

use std::fmt;

use serde::{Deserialize, Serialize};

use time::OffsetDateTime;

use super::unix_epoch;

/// A link from a token to a policy (`Policies` of a token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AclPolicyLink {
    /// Policy ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Policy name.
    #[serde(rename = "Name")]
    pub name: String,
}

/// An ACL policy (`/v1/acl/policy`), Consul 1.4's model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclPolicy {
    /// Policy ID (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Rules in Consul's HCL or JSON rule language.
    pub rules: String,
    /// Datacenters the policy applies in (all when empty).
    pub datacenters: Option<Vec<String>>,
    /// Opaque hash of the policy.
    pub hash: String,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of last change.
    pub modify_index: u64,
}

/// An ACL token (`/v1/acl/token`), Consul 1.4's model. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclToken {
    /// Public identifier.
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    /// The secret sent as `X-Consul-Token`.
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    /// Free text.
    pub description: String,
    /// Policies granted.
    pub policies: Option<Vec<AclPolicyLink>>,
    /// Local to this datacenter.
    pub local: bool,
    /// When created.
    #[serde(with = "time::serde::rfc3339", default = "unix_epoch")]
    pub create_time: OffsetDateTime,
    /// Opaque hash of the token.
    pub hash: String,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of last change.
    pub modify_index: u64,
}

impl fmt::Debug for AclToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclToken")
            .field("accessor_id", &self.accessor_id)
            .field("secret_id", &"<redacted>")
            .field("description", &self.description)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl Default for AclToken {
    fn default() -> Self {
        Self {
            accessor_id: String::new(),
            secret_id: String::new(),
            description: String::new(),
            policies: None,
            local: false,
            create_time: unix_epoch(),
            hash: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}
