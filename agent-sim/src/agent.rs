//! Running agent-sim: embedded in a test or example, or as the `agent-sim` binary.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::acl_rules::DefaultPolicy;
use crate::cache::{CacheSettings, ConnectCache, EvictorHandle};
use crate::clock::{Clock, SystemClock};
use crate::http::{router, AppState, Listener};
use crate::state::acl::AclSettings;
use crate::state::{CaSettings, Store, StoreSettings};
use crate::tls::TlsFiles;

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
    /// The unix socket could not be bound.
    #[error("cannot listen on unix socket {}: {source}", path.display())]
    BindUnix {
        /// The socket's path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTPS API's certificate, key or CA is not usable.
    #[error("cannot serve HTTPS: {0}")]
    Tls(#[from] crate::tls::TlsError),
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
    http_unix: Option<std::path::PathBuf>,
    https_addr: Option<SocketAddr>,
    tls: TlsFiles,
    datacenter: String,
    node_name: String,
    ca: CaSettings,
    acl: AclSettings,
    cache: CacheSettings,
    clock: Arc<dyn Clock>,
    data_dir: Option<std::path::PathBuf>,
    version: crate::profile::ConsulVersion,
    primary: Option<crate::federation::Remote>,
    spin: bool,
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

    /// Spin before sleeping (default off; the `agent-sim` binary turns it on): after a
    /// request, one worker keeps polling for the next for 100 µs instead of sleeping, as Go's
    /// scheduler does, while a single connection is busy. It halves the latency for one client
    /// in another process on machines where waking a sleeping CPU is slow (BENCHMARKS.md), at
    /// the cost of that CPU time. Clients in the same process gain nothing from it.
    pub fn spin_before_sleep(mut self, spin: bool) -> Self {
        self.spin = spin;
        self
    }

    /// Listen on this address (default `127.0.0.1:0`, an ephemeral port).
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = addr;
        self.http_unix = None;
        self
    }

    /// Serve HTTP on a unix socket at `path` instead of TCP (Consul's
    /// `addresses.http = "unix:///path"`). A file already at `path` is replaced, as Consul
    /// does; the socket is removed when the agent stops.
    pub fn http_unix_socket(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.http_unix = Some(path.into());
        self
    }

    /// Also serve the API over HTTPS on this address (Consul's `ports.https`), with the
    /// certificate and key given by [`tls_cert_file`](Self::tls_cert_file) and
    /// [`tls_key_file`](Self::tls_key_file).
    pub fn https_addr(mut self, addr: SocketAddr) -> Self {
        self.https_addr = Some(addr);
        self
    }

    /// The HTTPS server's certificate chain, PEM (Consul's `cert_file`).
    pub fn tls_cert_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.cert_file = Some(path.into());
        self
    }

    /// The HTTPS server's private key, PEM (Consul's `key_file`).
    pub fn tls_key_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.key_file = Some(path.into());
        self
    }

    /// CA certificates, PEM, that HTTPS clients' certificates must chain to (Consul's
    /// `ca_file`).
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Require HTTPS clients to present a certificate signed by the CA file (Consul's
    /// `verify_incoming_https`).
    pub fn tls_verify_incoming(mut self, verify: bool) -> Self {
        self.tls.verify_incoming = verify;
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

    /// Binds the addresses and starts serving on the current tokio runtime.
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
        // TLS files first: a bad file is reported before anything is bound.
        let tls = match self.https_addr {
            Some(_) => Some(TlsAcceptor::from(self.tls.server_config()?)),
            None => None,
        };
        let bind = |addr: SocketAddr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            Ok::<_, StartError>((listener, bound))
        };
        let (http, http_addr) = match &self.http_unix {
            Some(path) => (bind_unix(path)?, None),
            None => {
                let (listener, bound) = bind(self.http_addr).await?;
                (Listener::Tcp(listener), Some(bound))
            }
        };
        let (https, https_addr) = match (self.https_addr, tls) {
            (Some(addr), Some(tls)) => {
                let (listener, bound) = bind(addr).await?;
                (Some(Listener::Tls(listener, tls)), Some(bound))
            }
            _ => (None, None),
        };
        let node_address = http_addr
            .or(https_addr)
            .map_or_else(|| "127.0.0.1".to_owned(), |a| a.ip().to_string());
        let settings = StoreSettings {
            datacenter: self.datacenter,
            node_name: self.node_name,
            node_id: uuid::Uuid::new_v4().to_string(),
            node_address,
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
                // How the primary reaches this agent: its HTTP address, else its HTTPS one.
                let own = http_addr
                    .or(https_addr)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                crate::federation::join(federation.clone(), store.clone(), own, roots).await?
            }
            None => None,
        };
        let app = router(AppState::new(store.clone(), cache.clone()).with_federation(federation));
        let (stop, stopped) = watch::channel(false);
        let stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                // A dropped sender stops the server too.
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let https_app = app.clone();
        let https_stopped = stopped.clone();
        let spin = self.spin;
        let task = tokio::spawn(async move {
            let https = async move {
                if let Some(https) = https {
                    crate::http::serve(https, https_app, https_stopped(), spin).await;
                }
            };
            tokio::join!(crate::http::serve(http, app, stopped(), spin), https);
        });
        match (&http_addr, &self.http_unix) {
            (Some(addr), _) => tracing::info!(%addr, "agent-sim HTTP API listening"),
            (None, Some(path)) => {
                tracing::info!(path = %path.display(), "agent-sim HTTP API listening")
            }
            (None, None) => {}
        }
        if let Some(addr) = https_addr {
            tracing::info!(%addr, "agent-sim HTTPS API listening");
        }
        Ok(Agent {
            http_addr,
            https_addr,
            unix_socket: self.http_unix,
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

#[cfg(unix)]
fn bind_unix(path: &std::path::Path) -> Result<Listener, StartError> {
    let error = |source| StartError::BindUnix {
        path: path.to_owned(),
        source,
    };
    // As Consul: a socket left by an earlier run is replaced.
    match std::fs::remove_file(path) {
        Ok(()) => tracing::warn!(path = %path.display(), "agent-sim: replacing socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(error)?;
    Ok(Listener::Unix(listener, path.to_owned()))
}

#[cfg(not(unix))]
fn bind_unix(path: &std::path::Path) -> Result<Listener, StartError> {
    Err(StartError::BindUnix {
        path: path.to_owned(),
        source: std::io::Error::other("unix sockets need a unix system"),
    })
}

/// A running agent-sim. Dropping it stops the server.
pub struct Agent {
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    unix_socket: Option<std::path::PathBuf>,
    store: Arc<Store>,
    cache: Arc<ConnectCache>,
    _replication: Option<crate::federation::ReplicationHandle>,
    _evictor: EvictorHandle,
    _ttl_checks: crate::ttl::TtlHandle,
    stop: Option<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Agent {
    /// A builder with the defaults.
    pub fn builder() -> AgentBuilder {
        AgentBuilder {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_unix: None,
            https_addr: None,
            tls: TlsFiles::default(),
            datacenter: "dc1".into(),
            node_name: "agent-sim".into(),
            ca: CaSettings::default(),
            acl: AclSettings::default(),
            cache: CacheSettings::default(),
            clock: Arc::new(SystemClock::new()),
            data_dir: None,
            version: Default::default(),
            primary: None,
            spin: false,
        }
    }

    /// The bound HTTP address (what `CONSUL_HTTP_ADDR` should be). For an agent serving HTTP
    /// on a unix socket it is the HTTPS address if there is one, else `127.0.0.1:0` (no
    /// address): see [`http_url`](Self::http_url).
    pub fn addr(&self) -> SocketAddr {
        self.http_addr
            .or(self.https_addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The bound HTTPS address, when HTTPS is served.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The unix socket HTTP is served on, if it is.
    pub fn unix_socket(&self) -> Option<&std::path::Path> {
        self.unix_socket.as_deref()
    }

    /// The HTTP API as a `CONSUL_HTTP_ADDR` value: `http://host:port` or `unix:///path`.
    pub fn http_url(&self) -> String {
        match (&self.http_addr, &self.unix_socket) {
            (Some(addr), _) => format!("http://{addr}"),
            (None, Some(path)) => format!("unix://{}", path.display()),
            // Unreachable: `start` binds one or the other.
            (None, None) => String::new(),
        }
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
            let _ = stop.send(true);
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
            .field("http_addr", &self.http_addr)
            .field("https_addr", &self.https_addr)
            .field("unix_socket", &self.unix_socket)
            .finish_non_exhaustive()
    }
}
