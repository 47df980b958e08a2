//! Where to dial: resolvers turn a service name into candidate instances, each with the
//! identity its server must prove.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::seq::SliceRandom;

use crate::agent::{AgentClient, AgentError, QueryOptions};
use crate::api::ServiceEntry;
use crate::intentions::DEFAULT_NAMESPACE;
use crate::spiffe::{ServiceId, DEFAULT_PARTITION};
use crate::tls::ExpectedServer;

/// One instance to try: an address and who must answer there.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// `host:port`.
    pub addr: String,
    /// The identity the server must present.
    pub expected: ExpectedServer,
}

/// Why no candidate could be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The agent could not be asked.
    #[error("cannot discover {service:?}: {source}")]
    Agent {
        /// The service asked for.
        service: String,
        /// The agent error.
        source: AgentError,
    },
    /// The agent knows no healthy Connect-capable instance.
    #[error("no healthy instances found for {service:?}")]
    NoInstances {
        /// The service asked for.
        service: String,
    },
    /// The token may not discover the service: Consul 1.16+ answers 403 where older versions
    /// answered an empty list.
    #[error(
        "cannot discover {service:?}{}: the token lacks {permission} on {service:?} ({message})",
        datacenter.as_deref().map(|dc| format!(" in {dc}")).unwrap_or_default()
    )]
    PermissionDenied {
        /// The service asked for.
        service: String,
        /// The datacenter asked for, if not the agent's.
        datacenter: Option<String>,
        /// The missing ACL permission, as Consul names it (`service:read`).
        permission: String,
        /// Consul's message.
        message: String,
    },
}

impl ResolveError {
    /// A discovery failure of `service`: a 403 names the permission the token lacks.
    fn from_agent(service: &str, datacenter: Option<&str>, source: AgentError) -> Self {
        match source {
            AgentError::PermissionDenied { message, .. } => ResolveError::PermissionDenied {
                service: service.to_owned(),
                datacenter: datacenter.map(str::to_owned),
                // Consul 1.15+: `… lacks permission 'service:read' on "db"`.
                permission: message
                    .split_once("lacks permission '")
                    .and_then(|(_, rest)| rest.split_once('\''))
                    .map_or("service:read", |(permission, _)| permission)
                    .to_owned(),
                message,
            },
            source => ResolveError::Agent {
                service: service.to_owned(),
                source,
            },
        }
    }
}

/// Turns a target into candidates, best first.
#[async_trait]
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The service being resolved (for errors and logs).
    fn service(&self) -> &str;

    /// The candidates, in the order to try them.
    async fn resolve(&self) -> Result<Vec<Candidate>, ResolveError>;
}

/// A fixed address and expected service, for when discovery is done elsewhere.
///
/// ```
/// use consul_connect::resolve::StaticResolver;
/// let db = StaticResolver::new("127.0.0.1:9191", "db");
/// ```
#[derive(Debug, Clone)]
pub struct StaticResolver {
    addr: String,
    expected: ExpectedServer,
}

impl StaticResolver {
    /// The service `service` at `addr` (`host:port`), in any datacenter.
    pub fn new(addr: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            expected: ExpectedServer::new(service),
        }
    }

    /// The instance at `addr` that must present exactly `id`'s namespace, datacenter and service.
    pub fn with_id(addr: impl Into<String>, id: &ServiceId) -> Self {
        Self {
            addr: addr.into(),
            expected: ExpectedServer::new(id.service())
                .with_namespace(id.namespace())
                .with_datacenter(id.datacenter()),
        }
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    fn service(&self) -> &str {
        self.expected.service()
    }

    async fn resolve(&self) -> Result<Vec<Candidate>, ResolveError> {
        Ok(vec![Candidate {
            addr: self.addr.clone(),
            expected: self.expected.clone(),
        }])
    }
}

/// Healthy Connect-capable instances from the agent's `/v1/health/connect/<service>?passing`,
/// in random order (Consul's Go SDK picks one at random).
#[derive(Debug, Clone)]
pub struct CatalogResolver {
    agent: AgentClient,
    service: String,
    datacenter: Option<String>,
    tag: Option<String>,
    last_known_good: Option<LastKnownGood>,
}

/// The last answer of each discovery, used while the agent cannot be reached: without it
/// every new connection fails during an agent restart, although the instances themselves are
/// still up (and each is still verified by its certificate when dialed). Shared by clones;
/// every [`ConnectService`](crate::ConnectService)'s dialer has one.
#[derive(Debug, Clone, Default)]
pub struct LastKnownGood {
    answers: Arc<Mutex<HashMap<DiscoveryKey, Vec<Candidate>>>>,
}

/// What a catalog discovery asked: service, datacenter, tag, namespace, partition.
type DiscoveryKey = (String, Option<String>, Option<String>, String, String);

impl LastKnownGood {
    /// An empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DiscoveryKey, Vec<Candidate>>> {
        // Plain data: a panic elsewhere cannot leave it half-written in a harmful way.
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The namespace and partition instances are expected in: the agent client's scope, else
/// Consul's defaults (OSS knows only those).
fn scope(agent: &AgentClient) -> (&str, &str) {
    (
        agent.namespace().unwrap_or(DEFAULT_NAMESPACE),
        agent.partition().unwrap_or(DEFAULT_PARTITION),
    )
}

impl CatalogResolver {
    /// Resolves `service` through `agent`.
    pub fn new(agent: AgentClient, service: impl Into<String>) -> Self {
        Self {
            agent,
            service: service.into(),
            datacenter: None,
            tag: None,
            last_known_good: None,
        }
    }

    /// Only instances in this datacenter.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// Remembers each answer in `memory`, and answers from it while the agent cannot be
    /// reached (it does not when the agent answers with an error: a refusal is not an outage).
    pub fn last_known_good(mut self, memory: LastKnownGood) -> Self {
        self.last_known_good = Some(memory);
        self
    }

    fn key(&self) -> DiscoveryKey {
        let (ns, partition) = scope(&self.agent);
        (
            self.service.clone(),
            self.datacenter.clone(),
            self.tag.clone(),
            ns.to_owned(),
            partition.to_owned(),
        )
    }

    /// Only instances with this tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Instances in this namespace (Consul Enterprise; sent as `?ns=`), whose certificates must
    /// name it. Consul OSS refuses any but `default` ([`AgentError::EnterpriseOnly`]).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.agent = self.agent.with_namespace(ns);
        self
    }

    /// Instances in this admin partition (Consul Enterprise 1.11+; sent as `?partition=`),
    /// whose certificates must name it.
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.agent = self.agent.with_partition(partition);
        self
    }
}

#[async_trait]
impl Resolver for CatalogResolver {
    fn service(&self) -> &str {
        &self.service
    }

    async fn resolve(&self) -> Result<Vec<Candidate>, ResolveError> {
        let opts = QueryOptions {
            datacenter: self.datacenter.clone(),
            ..QueryOptions::default()
        };
        let entries = match self
            .agent
            .health_connect(&self.service, self.tag.as_deref(), &opts)
            .await
        {
            Ok(entries) => entries.value,
            Err(source) => {
                let outage = matches!(
                    source,
                    AgentError::Unreachable { .. } | AgentError::Timeout { .. }
                );
                let remembered = self
                    .last_known_good
                    .as_ref()
                    .filter(|_| outage)
                    .and_then(|memory| memory.lock().get(&self.key()).cloned());
                if let Some(mut candidates) = remembered {
                    tracing::warn!(service = %self.service, error = %source, "the agent cannot be reached; dialing the last instances it named");
                    candidates.shuffle(&mut rand::rng());
                    return Ok(candidates);
                }
                return Err(ResolveError::from_agent(
                    &self.service,
                    self.datacenter.as_deref(),
                    source,
                ));
            }
        };
        let scope = scope(&self.agent);
        let mut candidates: Vec<Candidate> =
            entries.iter().filter_map(|e| candidate(e, scope)).collect();
        if let Some(memory) = &self.last_known_good {
            memory.lock().insert(self.key(), candidates.clone());
        }
        if candidates.is_empty() {
            return Err(ResolveError::NoInstances {
                service: self.service.clone(),
            });
        }
        candidates.shuffle(&mut rand::rng());
        Ok(candidates)
    }
}

/// Connect-capable instances found by a prepared query
/// (`/v1/query/<name>/execute?connect=true`), in the order the agent returns them (a prepared
/// query may sort by distance or fail over to other datacenters).
///
/// ```
/// # fn run(agent: consul_connect::AgentClient) {
/// use consul_connect::resolve::PreparedQueryResolver;
/// let db = PreparedQueryResolver::new(agent, "db-nearest");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PreparedQueryResolver {
    agent: AgentClient,
    query: String,
    datacenter: Option<String>,
}

impl PreparedQueryResolver {
    /// Executes the query named (or with the ID) `query` through `agent`.
    pub fn new(agent: AgentClient, query: impl Into<String>) -> Self {
        Self {
            agent,
            query: query.into(),
            datacenter: None,
        }
    }

    /// Executes it in this datacenter.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }
}

#[async_trait]
impl Resolver for PreparedQueryResolver {
    fn service(&self) -> &str {
        &self.query
    }

    async fn resolve(&self) -> Result<Vec<Candidate>, ResolveError> {
        let opts = QueryOptions {
            datacenter: self.datacenter.clone(),
            ..QueryOptions::default()
        };
        let result = self
            .agent
            .execute_query_connect(&self.query, &opts)
            .await
            .map_err(|source| ResolveError::Agent {
                service: self.query.clone(),
                source,
            })?
            .value;
        let scope = scope(&self.agent);
        let candidates: Vec<Candidate> = result
            .nodes
            .iter()
            .filter_map(|e| candidate(e, scope))
            .collect();
        if candidates.is_empty() {
            return Err(ResolveError::NoInstances {
                service: self.query.clone(),
            });
        }
        Ok(candidates)
    }
}

/// The address and expected identity of a health entry, as Consul's Go resolver derives them:
/// the service's address or else the node's; a native service proves its own name, a proxy its
/// destination's; the datacenter is the node's.
/// A dialable instance of a health entry, expected to present its service's identity in the
/// entry's namespace and partition (Enterprise answers carry them), else `scope`'s.
fn candidate(entry: &ServiceEntry, scope: (&str, &str)) -> Option<Candidate> {
    let service = &entry.service;
    let name = if service.connect.native {
        service.service.as_str()
    } else {
        service.proxy.destination_service_name.as_str()
    };
    if name.is_empty() {
        return None;
    }
    let host = if service.address.is_empty() {
        &entry.node.address
    } else {
        &service.address
    };
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", service.port)
    } else {
        format!("{host}:{}", service.port)
    };
    Some(Candidate {
        addr,
        expected: ExpectedServer::new(name)
            .with_partition(service.partition.as_deref().unwrap_or(scope.1))
            .with_namespace(service.namespace.as_deref().unwrap_or(scope.0))
            .with_datacenter(entry.node.datacenter.clone()),
    })
}
