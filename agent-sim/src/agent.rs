//! Running agent-sim: embedded in a test or example, or as the `agent-sim` binary.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::acl_rules::DefaultPolicy;
use crate::cache::{CacheSettings, ConnectCache, EvictorHandle};
use crate::clock::{Clock, SystemClock};
use crate::http::{router, AppState};
use crate::state::acl::AclSettings;
use crate::state::{CaSettings, Store, StoreSettings};

/// Why agent-sim could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The CA or the data directory could not be set up.
    #[error("cannot open the state store: {0}")]
    Store(#[from] crate::state::OpenError),
    /// A secondary datacenter could not join its primary.
    #[error("cannot join the primary datacenter: {0}")]
    Federation(#[from] crate::federation::FederationError),
    /// The settings cannot be used together.
    #[error("{0}")]
    Settings(String),
}

/// Configures and starts an agent.
///
/// ```no_run
/// # async fn run() -> Result<(), agent_sim::agent::StartError> {
/// let agent = agent_sim::Agent::builder().datacenter("dc1").start().await?;
/// println!("CONSUL_HTTP_ADDR={}", agent.addr());
/// agent.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AgentBuilder {
    http_addr: SocketAddr,
    datacenter: String,
    node_name: String,
    ca: CaSettings,
    acl: AclSettings,
    cache: CacheSettings,
    clock: Arc<dyn Clock>,
    data_dir: Option<std::path::PathBuf>,
    version: crate::profile::ConsulVersion,
    primary: Option<crate::federation::Remote>,
}

impl AgentBuilder {
    /// Run as a secondary datacenter of `primary` (another agent-sim, embedded): same trust
    /// domain, a CA intermediate signed by the primary's root, intentions replicated from it,
    /// `?dc=` and intention writes forwarded to it. See [`crate::federation`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), agent_sim::agent::StartError> {
    /// let dc1 = agent_sim::Agent::builder().start().await?;
    /// let dc2 = agent_sim::Agent::builder().datacenter("dc2").primary(&dc1).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn primary(self, primary: &Agent) -> Self {
        let dc = primary.store().settings().datacenter.clone();
        self.join_wan(dc, &primary.addr().to_string())
    }

    /// Run as a secondary datacenter of the agent-sim in `primary_datacenter` at `addr` (its
    /// HTTP address, `host:port`), as [`AgentBuilder::primary`] does for an embedded one.
    pub fn join_wan(mut self, primary_datacenter: impl Into<String>, addr: &str) -> Self {
        self.primary = Some(crate::federation::Remote::new(primary_datacenter, addr));
        self
    }

    /// The Consul version to answer as (default: the newest emulated, 1.10.9), ACL decisions
    /// included.
    pub fn consul_version(mut self, version: crate::profile::ConsulVersion) -> Self {
        self.version = version;
        self
    }

    /// Keep state in `dir` (CA key and roots, intentions, services, ACLs), saved before each
    /// write is acknowledged and loaded at start. Without it the agent is in-memory (`--dev`).
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Enforce ACLs with `default_policy` for what no rule covers (Consul's `acl.enabled` and
    /// `acl.default_policy`).
    pub fn acl(mut self, default_policy: DefaultPolicy) -> Self {
        self.acl.enabled = true;
        self.acl.default_policy = default_policy;
        self
    }

    /// A management token to create at start (`acl.tokens.initial_management`, 1.4's
    /// `acl_master_token`).
    pub fn acl_initial_management_token(mut self, secret: impl Into<String>) -> Self {
        self.acl.initial_management_token = Some(secret.into());
        self
    }

    /// Evict agent-cache entries unread for this long (default 72 h, as Consul).
    pub fn cache_unused_ttl(mut self, ttl: Duration) -> Self {
        self.cache.unused_ttl = ttl;
        self
    }

    /// After a root rotation, cached leaves are re-issued at a random point within this window
    /// (Consul uses 30 s; the default here is 500 ms).
    pub fn rotation_jitter(mut self, window: Duration) -> Self {
        self.cache.rotation_jitter = window;
        self
    }

    /// Listen on this address (default `127.0.0.1:0`, an ephemeral port).
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = addr;
        self
    }

    /// The datacenter (default `dc1`).
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = dc.into();
        self
    }

    /// The node name (default `agent-sim`).
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = name.into();
        self
    }

    /// A fixed cluster ID (a UUID), making the trust domain `<id>.consul`.
    pub fn cluster_id(mut self, id: impl Into<String>) -> Self {
        self.ca.cluster_id = Some(id.into());
        self
    }

    /// The leaf certificate lifetime (default 72h).
    pub fn leaf_cert_ttl(mut self, ttl: Duration) -> Self {
        self.ca.leaf_cert_ttl = Some(ttl);
        self
    }

    /// The CA's private key (PEM, P-256), instead of a generated one: tests use it to forge
    /// certificates the CA's own key signed.
    pub fn ca_private_key(mut self, pem: impl Into<String>) -> Self {
        self.ca.private_key = Some(pem.into());
        self
    }

    /// The clock for certificates and renewal (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Binds the address and starts serving on the current tokio runtime.
    pub async fn start(mut self) -> Result<Agent, StartError> {
        let primary = self
            .primary
            .take()
            .filter(|p| p.datacenter != self.datacenter);
        if primary.is_some() && self.data_dir.is_some() {
            return Err(StartError::Settings(
                "a secondary datacenter keeps no state: --data-dir cannot be used with --join-wan"
                    .into(),
            ));
        }
        // As in a dev setup with one management token for both datacenters, it is also the
        // replication token.
        let federation = Arc::new(crate::federation::Federation::new(
            self.datacenter.clone(),
            primary,
            self.acl.initial_management_token.clone(),
        ));
        let primary_roots = crate::federation::primary_roots(&federation).await?;
        if let Some(roots) = &primary_roots {
            // The secondary joins the primary's cluster: same trust domain.
            let cluster_id = roots.trust_domain.trim_end_matches(".consul");
            self.ca.cluster_id = Some(cluster_id.to_owned());
        }
        let listener =
            TcpListener::bind(self.http_addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: self.http_addr,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.http_addr,
            source,
        })?;
        let settings = StoreSettings {
            datacenter: self.datacenter,
            node_name: self.node_name,
            node_id: uuid::Uuid::new_v4().to_string(),
            node_address: addr.ip().to_string(),
            ca: self.ca,
            acl: self.acl,
            version: self.version,
        };
        let store = Arc::new(Store::open(settings, self.clock, self.data_dir.as_deref())?);
        let cache = Arc::new(ConnectCache::new(store.clone(), self.cache));
        let evictor = cache.start_evictor();
        let ttl_checks = crate::ttl::start(store.clone());
        let replication = match primary_roots {
            Some(roots) => {
                crate::federation::join(federation.clone(), store.clone(), addr.to_string(), roots)
                    .await?
            }
            None => None,
        };
        let app = router(AppState::new(store.clone(), cache.clone()).with_federation(federation));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            crate::http::serve(listener, app, async {
                let _ = stopped.await;
            })
            .await;
        });
        tracing::info!(%addr, "agent-sim HTTP API listening");
        Ok(Agent {
            addr,
            store,
            cache,
            _replication: replication,
            _evictor: evictor,
            _ttl_checks: ttl_checks,
            stop: Some(stop),
            task,
        })
    }
}

/// A running agent-sim. Dropping it stops the server.
pub struct Agent {
    addr: SocketAddr,
    store: Arc<Store>,
    cache: Arc<ConnectCache>,
    _replication: Option<crate::federation::ReplicationHandle>,
    _evictor: EvictorHandle,
    _ttl_checks: crate::ttl::TtlHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Agent {
    /// A builder with the defaults.
    pub fn builder() -> AgentBuilder {
        AgentBuilder {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            datacenter: "dc1".into(),
            node_name: "agent-sim".into(),
            ca: CaSettings::default(),
            acl: AclSettings::default(),
            cache: CacheSettings::default(),
            clock: Arc::new(SystemClock::new()),
            data_dir: None,
            version: Default::default(),
            primary: None,
        }
    }

    /// The bound HTTP address (what `CONSUL_HTTP_ADDR` should be).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state store, for tests that inspect or drive state directly.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The agent cache, for tests that inspect it.
    pub fn cache(&self) -> &Arc<ConnectCache> {
        &self.cache
    }

    /// Stops serving: open blocking queries end and the listener closes.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for open connections; blocking queries may hold them for
        // minutes, so give them a moment and then stop the server task outright.
        if tokio::time::timeout(Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
