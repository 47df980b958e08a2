//! Authorizers that decide from the caller's identity alone, and one that combines others:
//! an allow-list of services, a trust-domain policy, and "all of these must allow".
//!
//! They need no I/O, so they decide inside the TLS handshake (a refused client gets the alert
//! `access_denied`), and they compose with the intentions authorizers:
//!
//! ```no_run
//! # async fn run(agent: consul_connect::AgentClient) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use consul_connect::authz::compose::{all_of, allow_services, member_of};
//! use consul_connect::intentions::DefaultDecision;
//! use consul_connect::spiffe::TrustDomain;
//! use consul_connect::{ConnectService, IntentionsAuthorizer};
//!
//! // Only web and api, only from our own cluster, and only if intentions allow too.
//! let intentions = Arc::new(IntentionsAuthorizer::start(agent.clone(), "db", DefaultDecision::AclDefaultDeny));
//! let db = ConnectService::builder("db")
//!     .agent(agent)
//!     .authorizer(Arc::new(all_of([
//!         Arc::new(member_of([TrustDomain::new("11111111-2222-3333-4444-555555555555.consul")?])) as _,
//!         Arc::new(allow_services(["web", "api"])) as _,
//!         intentions as _,
//!     ])))
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Authorizer, AuthzError, Decision};
use crate::spiffe::{ServiceId, TrustDomain};
use crate::tls::HandshakeAuthorizer;

/// Allows callers whose service name is one of a list (in any namespace and partition unless
/// [`AllowServices::in_namespace`] narrows it), and refuses every other.
#[derive(Debug, Clone)]
pub struct AllowServices {
    names: Vec<String>,
    namespace: Option<String>,
}

/// An [`AllowServices`] for `names`.
pub fn allow_services<I, S>(names: I) -> AllowServices
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    AllowServices {
        names: names.into_iter().map(Into::into).collect(),
        namespace: None,
    }
}

impl AllowServices {
    /// Only callers in this namespace.
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    fn decide(&self, peer: &ServiceId) -> Decision {
        let named = self.names.iter().any(|n| n == peer.service());
        let in_namespace = self
            .namespace
            .as_deref()
            .is_none_or(|ns| ns == peer.namespace());
        match (named, in_namespace) {
            (true, true) => Decision::allow(format!("{} is on the allow-list", peer.service())),
            (false, _) => Decision::deny(format!("{} is not on the allow-list", peer.service())),
            (true, false) => Decision::deny(format!(
                "{} is on the allow-list in namespace {:?}, not {:?}",
                peer.service(),
                self.namespace.as_deref().unwrap_or_default(),
                peer.namespace()
            )),
        }
    }
}

/// Allows callers from the given trust domains (clusters) only.
#[derive(Debug, Clone)]
pub struct MemberOf {
    trust_domains: Vec<TrustDomain>,
}

/// A [`MemberOf`] for `trust_domains`.
pub fn member_of(trust_domains: impl IntoIterator<Item = TrustDomain>) -> MemberOf {
    MemberOf {
        trust_domains: trust_domains.into_iter().collect(),
    }
}

impl MemberOf {
    fn decide(&self, peer: &ServiceId) -> Decision {
        if self.trust_domains.contains(peer.trust_domain()) {
            Decision::allow(format!("trust domain {} is allowed", peer.trust_domain()))
        } else {
            Decision::deny(format!(
                "trust domain {} is not allowed",
                peer.trust_domain()
            ))
        }
    }
}

/// Allows a caller only when every part allows it; the first refusal decides, with its reason.
///
/// It decides inside the handshake when every part can; otherwise after it. Its changes (for
/// re-checking open connections) are those of all its parts.
pub struct AllOf {
    parts: Vec<Arc<dyn Authorizer>>,
}

/// An [`AllOf`] over `parts`, asked in order.
pub fn all_of(parts: impl IntoIterator<Item = Arc<dyn Authorizer>>) -> AllOf {
    AllOf {
        parts: parts.into_iter().collect(),
    }
}

impl fmt::Debug for AllOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.parts).finish()
    }
}

/// The decision of an identity-only authorizer, at either point.
macro_rules! identity_authorizer {
    ($ty:ty) => {
        #[async_trait]
        impl Authorizer for $ty {
            async fn authorize(
                &self,
                _target: &str,
                peer: &ServiceId,
                _serial: &str,
            ) -> Result<Decision, AuthzError> {
                Ok(self.decide(peer))
            }

            fn handshake_hook(&self) -> Option<Arc<dyn HandshakeAuthorizer>> {
                Some(Arc::new(self.clone()))
            }
        }

        impl HandshakeAuthorizer for $ty {
            fn authorize(&self, peer: &ServiceId, _serial: &str) -> Result<(), String> {
                super::admit(self.decide(peer))
            }
        }
    };
}

identity_authorizer!(AllowServices);
identity_authorizer!(MemberOf);

#[async_trait]
impl Authorizer for AllOf {
    async fn authorize(
        &self,
        target: &str,
        peer: &ServiceId,
        serial: &str,
    ) -> Result<Decision, AuthzError> {
        let mut reasons = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            let decision = part.authorize(target, peer, serial).await?;
            if !decision.allowed {
                return Ok(decision);
            }
            reasons.push(decision.reason);
        }
        Ok(Decision::allow(reasons.join("; ")))
    }

    fn handshake_hook(&self) -> Option<Arc<dyn HandshakeAuthorizer>> {
        let hooks: Option<Vec<_>> = self.parts.iter().map(|p| p.handshake_hook()).collect();
        let hooks = hooks?;
        Some(Arc::new(move |peer: &ServiceId, serial: &str| {
            hooks.iter().try_for_each(|h| h.authorize(peer, serial))
        }))
    }

    fn changes(&self, target: &str) -> Option<watch::Receiver<u64>> {
        let mut sources: Vec<_> = self
            .parts
            .iter()
            .filter_map(|p| p.changes(target))
            .collect();
        if sources.len() <= 1 {
            return sources.pop();
        }
        // Several parts change: one signal that moves with any of them.
        let (tx, rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        for mut source in sources {
            let tx = tx.clone();
            tokio::spawn(async move {
                while source.changed().await.is_ok() && !tx.is_closed() {
                    tx.send_modify(|g| *g += 1);
                }
            });
        }
        Some(rx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn id(uri: &str) -> ServiceId {
        uri.parse().unwrap()
    }

    #[tokio::test]
    async fn each_part_and_their_combination() {
        let web = id("spiffe://a.consul/ns/default/dc/dc1/svc/web");
        let api_elsewhere = id("spiffe://b.consul/ns/default/dc/dc1/svc/api");
        let web_in_ops = id("spiffe://a.consul/ns/ops/dc/dc1/svc/web");
        let list = allow_services(["web", "api"]).in_namespace("default");
        let ours = member_of([TrustDomain::new("A.consul").unwrap()]);
        assert!(list.decide(&web).allowed);
        assert!(list.decide(&api_elsewhere).allowed);
        assert!(!list.decide(&web_in_ops).allowed);
        assert!(
            ours.decide(&web).allowed,
            "trust domains compare case-insensitively"
        );
        assert!(!ours.decide(&api_elsewhere).allowed);

        let both = all_of([Arc::new(list) as Arc<dyn Authorizer>, Arc::new(ours) as _]);
        let hook = both
            .handshake_hook()
            .expect("both parts decide in the handshake");
        assert_eq!(hook.authorize(&web, "01"), Ok(()));
        let refused = hook.authorize(&api_elsewhere, "01").unwrap_err();
        assert_eq!(refused, "trust domain b.consul is not allowed");
        let decision = both.authorize("db", &web_in_ops, "01").await.unwrap();
        assert!(!decision.allowed);
        assert!(decision.reason.contains("namespace"), "{}", decision.reason);
        assert!(both.changes("db").is_none(), "identity rules never change");
    }
}
