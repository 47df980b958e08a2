//! ACL tokens and policies (Consul 1.4's model, the subset Connect needs).

use std::collections::HashMap;

use consul_connect_types::api::{AclPolicy, AclPolicyLink, AclToken};
use time::OffsetDateTime;

use crate::acl_rules::{Authorizer, DefaultPolicy, Policy};

/// The built-in management policy's ID.
pub const MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
/// The anonymous token's accessor ID.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
/// The anonymous token's secret.
pub const ANONYMOUS_SECRET: &str = "anonymous";

/// ACL settings given at start.
#[derive(Clone, Default)]
pub struct AclSettings {
    /// Whether ACLs are enforced.
    pub enabled: bool,
    /// What tokens get where no rule matches.
    pub default_policy: DefaultPolicy,
    /// A management token's secret to create at start (`acl_master_token` in 1.4).
    pub initial_management_token: Option<String>,
}

impl std::fmt::Debug for AclSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclSettings")
            .field("enabled", &self.enabled)
            .field("default_policy", &self.default_policy)
            .field(
                "initial_management_token",
                &self.initial_management_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why an ACL request was refused, in Consul's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// 403 `ACL not found`.
    #[error("ACL not found")]
    NotFound,
    /// 403 `Permission denied`.
    #[error("Permission denied")]
    PermissionDenied,
    /// 403 after bootstrap.
    #[error("Permission denied: ACL bootstrap no longer allowed (reset index: {0})")]
    BootstrapDone(u64),
    /// 401 `ACL support disabled`.
    #[error("ACL support disabled")]
    Disabled,
    /// 500 with the message (validation).
    #[error("{0}")]
    Invalid(String),
    /// 404 (policy not found).
    #[error("")]
    NoSuchPolicy,
}

/// Tokens and policies. `Debug` shows counts, never secrets.
#[derive(Default)]
pub struct AclState {
    policies: HashMap<String, AclPolicy>,
    tokens: HashMap<String, AclToken>,
    by_secret: HashMap<String, String>,
    bootstrap_index: Option<u64>,
}

impl std::fmt::Debug for AclState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclState")
            .field("policies", &self.policies.len())
            .field("tokens", &self.tokens.len())
            .field("bootstrapped", &self.bootstrap_index.is_some())
            .finish()
    }
}

impl AclState {
    pub(super) fn new(settings: &AclSettings, index: u64, now: OffsetDateTime) -> Self {
        let mut state = Self::default();
        state.policies.insert(
            MANAGEMENT_POLICY_ID.into(),
            AclPolicy {
                id: MANAGEMENT_POLICY_ID.into(),
                name: "global-management".into(),
                description: "Builtin Policy that grants unlimited access".into(),
                rules: String::new(),
                datacenters: None,
                hash: String::new(),
                create_index: index,
                modify_index: index,
            },
        );
        let anonymous = AclToken {
            accessor_id: ANONYMOUS_ACCESSOR.into(),
            secret_id: ANONYMOUS_SECRET.into(),
            description: "Anonymous Token".into(),
            policies: None,
            create_time: now,
            create_index: index,
            modify_index: index,
            ..AclToken::default()
        };
        state.insert_token(anonymous);
        if let Some(secret) = &settings.initial_management_token {
            state.insert_token(AclToken {
                accessor_id: uuid::Uuid::new_v4().to_string(),
                secret_id: secret.clone(),
                description: "Master Token".into(),
                policies: Some(vec![management_link()]),
                create_time: now,
                create_index: index,
                modify_index: index,
                ..AclToken::default()
            });
        }
        state
    }

    /// What `--data-dir` keeps.
    pub fn snapshot(&self) -> super::persist::AclSnapshot {
        super::persist::AclSnapshot {
            policies: self.policies.values().cloned().collect(),
            tokens: self.tokens.values().cloned().collect(),
            bootstrap_index: self.bootstrap_index,
        }
    }

    /// ACL state restored from `--data-dir`; the initial management token of this start is
    /// added if it is not there yet.
    pub(super) fn restore(
        saved: super::persist::AclSnapshot,
        settings: &AclSettings,
        index: u64,
        now: OffsetDateTime,
    ) -> Self {
        let mut state = Self::new(settings, index, now);
        for policy in saved.policies {
            state.policies.insert(policy.id.clone(), policy);
        }
        for token in saved.tokens {
            if let Some(old) = state.by_secret.get(&token.secret_id).cloned() {
                state.tokens.remove(&old);
            }
            state.insert_token(token);
        }
        state.bootstrap_index = saved.bootstrap_index;
        state
    }

    /// The token with this secret; the empty secret is the anonymous token.
    pub fn token_by_secret(&self, secret: &str) -> Option<&AclToken> {
        let secret = if secret.is_empty() {
            ANONYMOUS_SECRET
        } else {
            secret
        };
        self.by_secret.get(secret).and_then(|a| self.tokens.get(a))
    }

    /// The token with this accessor ID.
    pub fn token(&self, accessor: &str) -> Option<&AclToken> {
        self.tokens.get(accessor)
    }

    /// All tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &AclToken> {
        self.tokens.values()
    }

    /// The policy with this ID.
    pub fn policy(&self, id: &str) -> Option<&AclPolicy> {
        self.policies.get(id)
    }

    /// All policies.
    pub fn policies(&self) -> impl Iterator<Item = &AclPolicy> {
        self.policies.values()
    }

    /// The authorizer of the token with `secret`.
    pub fn authorizer(&self, secret: &str, default: DefaultPolicy) -> Result<Authorizer, AclError> {
        let token = self.token_by_secret(secret).ok_or(AclError::NotFound)?;
        let links = token.policies.iter().flatten();
        let mut management = false;
        let mut policies = Vec::new();
        for link in links {
            if link.id == MANAGEMENT_POLICY_ID {
                management = true;
                continue;
            }
            // A link to a deleted policy grants nothing, as in Consul.
            if let Some(policy) = self.policies.get(&link.id) {
                policies.push(
                    Policy::parse(&policy.rules).map_err(|e| AclError::Invalid(e.to_string()))?,
                );
            }
        }
        Ok(Authorizer::new(&policies, default, management))
    }

    /// `PUT /v1/acl/bootstrap`.
    pub fn bootstrap(&mut self, index: u64, now: OffsetDateTime) -> Result<AclToken, AclError> {
        if let Some(done) = self.bootstrap_index {
            return Err(AclError::BootstrapDone(done));
        }
        self.bootstrap_index = Some(index);
        let token = AclToken {
            accessor_id: uuid::Uuid::new_v4().to_string(),
            secret_id: uuid::Uuid::new_v4().to_string(),
            description: "Bootstrap Token (Global Management)".into(),
            policies: Some(vec![management_link()]),
            create_time: now,
            create_index: index,
            modify_index: index,
            ..AclToken::default()
        };
        self.insert_token(token.clone());
        Ok(token)
    }

    /// Creates (`id` empty) or updates a policy; rule errors are worded as 1.10 words them
    /// when `modern_errors`.
    pub fn set_policy(
        &mut self,
        mut policy: AclPolicy,
        index: u64,
        modern_errors: bool,
    ) -> Result<AclPolicy, AclError> {
        let invalid = |m: String| Err(AclError::Invalid(m));
        if policy.name.is_empty() {
            return invalid("Invalid Policy: no Name is set".into());
        }
        if !valid_name(&policy.name) {
            return invalid("Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed".into());
        }
        // Consul returns the rules error as it is (`Invalid service policy: ...`, or `Failed
        // to parse ACL rules: ...` for syntax), without a prefix of its own.
        if let Err(e) = Policy::parse(&policy.rules) {
            return invalid(e.text(modern_errors));
        }
        let clash = self
            .policies
            .values()
            .any(|p| p.name == policy.name && p.id != policy.id);
        if clash {
            return invalid(format!(
                "Invalid Policy: A Policy with Name {:?} already exists",
                policy.name
            ));
        }
        if policy.id.is_empty() {
            policy.id = uuid::Uuid::new_v4().to_string();
            policy.create_index = index;
        } else {
            let existing = self
                .policies
                .get(&policy.id)
                .ok_or_else(|| AclError::Invalid(format!("Cannot find policy {}", policy.id)))?;
            if policy.id == MANAGEMENT_POLICY_ID {
                return invalid(
                    "Changing the Rules for the builtin global-management policy is not permitted"
                        .into(),
                );
            }
            policy.create_index = existing.create_index;
        }
        policy.modify_index = index;
        policy.hash = hash_of(&[&policy.name, &policy.description, &policy.rules]);
        self.policies.insert(policy.id.clone(), policy.clone());
        // Keep the names in token links current.
        for token in self.tokens.values_mut() {
            for link in token.policies.iter_mut().flatten() {
                if link.id == policy.id {
                    link.name = policy.name.clone();
                }
            }
        }
        Ok(policy)
    }

    /// Deletes a policy.
    pub fn delete_policy(&mut self, id: &str) -> Result<(), AclError> {
        if id == MANAGEMENT_POLICY_ID {
            return Err(AclError::Invalid(
                "Delete operation not permitted on the builtin global-management policy".into(),
            ));
        }
        self.policies
            .remove(id)
            .map(|_| ())
            .ok_or(AclError::NoSuchPolicy)
    }

    /// Creates (`accessor` empty) or updates a token; policy links resolve by ID or name.
    pub fn set_token(
        &mut self,
        mut token: AclToken,
        index: u64,
        now: OffsetDateTime,
    ) -> Result<AclToken, AclError> {
        let mut links = Vec::new();
        for link in token.policies.take().into_iter().flatten() {
            let found = if !link.id.is_empty() {
                self.policies.get(&link.id)
            } else {
                self.policies.values().find(|p| p.name == link.name)
            };
            let policy = found.ok_or_else(|| {
                AclError::Invalid(if link.id.is_empty() {
                    format!("No such ACL policy with name {:?}", link.name)
                } else {
                    format!("No such ACL policy with ID {:?}", link.id)
                })
            })?;
            links.push(AclPolicyLink {
                id: policy.id.clone(),
                name: policy.name.clone(),
            });
        }
        token.policies = Some(links);
        match self.tokens.get(&token.accessor_id) {
            Some(existing) => {
                if token.accessor_id == ANONYMOUS_ACCESSOR
                    && token
                        .policies
                        .as_ref()
                        .is_some_and(|p| p.iter().any(|l| l.id == MANAGEMENT_POLICY_ID))
                {
                    return Err(AclError::Invalid(
                        "Cannot grant management to the anonymous token".into(),
                    ));
                }
                token.secret_id = existing.secret_id.clone();
                token.create_time = existing.create_time;
                token.create_index = existing.create_index;
            }
            None if token.accessor_id.is_empty() => {
                token.accessor_id = uuid::Uuid::new_v4().to_string();
                if token.secret_id.is_empty() {
                    token.secret_id = uuid::Uuid::new_v4().to_string();
                }
                if self.by_secret.contains_key(&token.secret_id) {
                    return Err(AclError::Invalid(
                        "Invalid Token: SecretID is already in use".into(),
                    ));
                }
                token.create_time = now;
                token.create_index = index;
            }
            None => {
                return Err(AclError::Invalid(format!(
                    "Cannot find token {:?}",
                    token.accessor_id
                )))
            }
        }
        token.modify_index = index;
        token.hash = hash_of(&[&token.description, &format!("{:?}", token.policies)]);
        self.insert_token(token.clone());
        Ok(token)
    }

    /// Deletes a token.
    pub fn delete_token(&mut self, accessor: &str) -> Result<(), AclError> {
        if accessor == ANONYMOUS_ACCESSOR {
            return Err(AclError::Invalid(
                "Delete operation not permitted on the anonymous token".into(),
            ));
        }
        let token = self.tokens.remove(accessor).ok_or(AclError::NotFound)?;
        self.by_secret.remove(&token.secret_id);
        Ok(())
    }

    fn insert_token(&mut self, token: AclToken) {
        self.by_secret
            .insert(token.secret_id.clone(), token.accessor_id.clone());
        self.tokens.insert(token.accessor_id.clone(), token);
    }
}

fn management_link() -> AclPolicyLink {
    AclPolicyLink {
        id: MANAGEMENT_POLICY_ID.into(),
        name: "global-management".into(),
    }
}

fn valid_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An opaque, stable hash (base64 of SHA-256), as Consul shows one on policies and tokens.
fn hash_of(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

impl From<super::persist::PersistError> for AclError {
    fn from(e: super::persist::PersistError) -> Self {
        AclError::Invalid(e.to_string())
    }
}
