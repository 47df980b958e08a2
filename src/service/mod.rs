//! [`ConnectService`]: a service's Connect identity, kept fresh in the background.

mod builder;
mod watches;

pub use builder::{ConnectServiceBuilder, DEFAULT_LEAF_FIRST_READ_TIMEOUT};

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::agent::{
    run_watch_woken, AgentClient, AgentClientBuilder, AgentError, QueryOptions, Token, WatchConfig,
    WatchEvent,
};
use crate::api::{CaRootList, LeafCert};
use crate::authz::{AgentAuthorizer, Authorizer, IntentionsAuthorizer};
use crate::dialer::ConnectDialer;
use crate::files::{CertificateFiles, Contents, FilesError};
use crate::intentions::DefaultDecision;
use crate::spiffe::ServiceId;
use crate::telemetry;
use crate::tls::{
    client_config_with_clock, server_config_with_clock, ConnectClientConfig, Material, MaterialCell,
};

/// Why a service is not ready.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// The wait ran out; says what was missing and the last error seen.
    #[error("service {service:?} is not ready after {waited:?}: {missing}{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout {
        /// The service name.
        service: String,
        /// How long we waited.
        waited: Duration,
        /// `CA roots`, `leaf certificate`, or `a leaf valid under the roots`.
        missing: &'static str,
        /// The most recent watch or verification error.
        last_error: Option<String>,
    },
    /// The service was shut down.
    #[error("service {service:?} was shut down")]
    Shutdown {
        /// The service name.
        service: String,
    },
}

/// Why [`ConnectServiceBuilder::build`] refused to build a service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The agent client could not be built, or the agent refused a request made at build
    /// time (such as the ACL default for
    /// [`intentions_authorizer_from_agent`](ConnectServiceBuilder::intentions_authorizer_from_agent)).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A service with [`certificate_files`](ConnectServiceBuilder::certificate_files) was
    /// given no authorizer: the default (the agent's authorize endpoint) and the intentions
    /// authorizers need an agent, and a service must never accept clients unauthorized.
    #[error("service {service:?} takes its certificates from files and has no authorizer: give one with ConnectServiceBuilder::authorizer (the agent's authorize endpoint and intentions are not used without an agent)")]
    AuthorizerRequired {
        /// The service name.
        service: String,
    },
    /// The certificate files could not be read or do not make valid material for the
    /// service.
    #[error("service {service:?}: {source}")]
    Files {
        /// The service name.
        service: String,
        /// What is wrong with the files.
        #[source]
        source: FilesError,
    },
    /// The clock gave no current time, so the material could not be verified.
    #[error("service {service:?}: the clock gave no current time")]
    NoTime {
        /// The service name.
        service: String,
    },
    /// [`build_ready`](ConnectServiceBuilder::build_ready): the service did not become ready
    /// in time.
    #[error(transparent)]
    NotReady(#[from] NotReady),
}

/// A failure a watch or the material check reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFailure {
    /// `roots`, `leaf`, `material` (a fetched leaf or roots list that did not verify) or
    /// `files` (certificate files that could not be read or did not verify).
    pub source: &'static str,
    /// The error.
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
}

/// A snapshot of a service's Connect state.
#[derive(Debug, Clone)]
pub struct Status {
    /// A leaf valid under the current roots is held.
    pub ready: bool,
    /// The identity of the held leaf.
    pub identity: Option<ServiceId>,
    /// The held leaf's serial (colon hex).
    pub leaf_serial: Option<String>,
    /// The held leaf's expiry.
    pub leaf_not_after: Option<OffsetDateTime>,
    /// IDs of the roots the service trusts.
    pub root_ids: Vec<String>,
    /// The most recent failure that still holds: each source's failure is cleared by that
    /// source's next success.
    pub last_error: Option<WatchFailure>,
}

/// A service's Connect identity: its leaf certificate and the CA roots, fetched from the local
/// agent and kept fresh by blocking queries (or read from certificate files, see
/// [`ConnectServiceBuilder::certificate_files`]), with the TLS configurations and authorizer
/// built on them. Cheap to clone; the watches stop when [`ConnectService::shutdown`] is called or the last
/// clone is dropped.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use consul_connect::ConnectService;
/// use std::time::Duration;
///
/// let web = ConnectService::builder("web").build().await?;
/// web.ready_timeout(Duration::from_secs(10)).await?;
/// println!("I am {}", web.identity().expect("ready"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectService {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    datacenter: Option<String>,
    agent: AgentClient,
    /// Past discoveries of this service's dialers (see [`crate::resolve::LastKnownGood`]).
    discovery: crate::resolve::LastKnownGood,
    cell: Arc<MaterialCell>,
    server: Arc<rustls::ServerConfig>,
    client: ConnectClientConfig,
    authorizer: Arc<dyn Authorizer>,
    /// What certificate validity is checked against.
    clock: Arc<dyn TimeProvider>,
    fetched: Mutex<Fetched>,
    ready: watch::Sender<bool>,
    /// Counts published materials, so callers can wait for a rotation.
    generation: watch::Sender<u64>,
    /// Counts changes of the active CA root, which wake the leaf watch from a back-off: the
    /// agent signs a new leaf then.
    root_moves: watch::Sender<u64>,
    /// Counts fetched leaves that could not be published, which wake the roots watch from a
    /// back-off: a leaf from a new CA may have come before its roots.
    leaf_refusals: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

/// The latest answers of the two watches, which together make a `Material`.
#[derive(Default)]
struct Fetched {
    roots: Option<CaRootList>,
    leaf: Option<LeafCert>,
    /// IDs of the roots in the published material.
    trusted_roots: Vec<String>,
    /// The current failure of each source (`roots`, `leaf`, `material`), cleared by that
    /// source's next success.
    errors: Vec<WatchFailure>,
}

impl Fetched {
    fn clear_error(&mut self, source: &str) {
        self.errors.retain(|e| e.source != source);
    }

    /// The most recent current failure.
    fn last_error(&self) -> Option<&WatchFailure> {
        self.errors.iter().max_by_key(|e| e.at)
    }
}

impl fmt::Debug for ConnectService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectService")
            .field("name", &self.shared.name)
            .field("ready", &*self.shared.ready.borrow())
            .field("agent", &self.shared.agent)
            .finish_non_exhaustive()
    }
}

impl ConnectService {
    /// A builder for the service `name`.
    pub fn builder(name: impl Into<String>) -> ConnectServiceBuilder {
        ConnectServiceBuilder::new(name.into())
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The service's SPIFFE identity, once a leaf is held.
    pub fn identity(&self) -> Option<ServiceId> {
        self.shared.cell.load().map(|m| m.service_id().clone())
    }

    /// The agent client the service uses.
    pub fn agent(&self) -> &AgentClient {
        &self.shared.agent
    }

    /// Waits until a leaf valid under the current roots is held, and returns the identity it
    /// proves (what [`identity`](Self::identity) then returns too).
    pub async fn ready(&self) -> Result<ServiceId, NotReady> {
        let mut ready = self.shared.ready.subscribe();
        let mut stop = self.shared.stop.subscribe();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.map_err(|_| self.shutdown_error())?,
            _ = stop.wait_for(|s| *s) => return Err(self.shutdown_error()),
        };
        // Ready means material is held (it is stored before readiness is announced).
        self.identity().ok_or_else(|| self.shutdown_error())
    }

    /// [`ConnectService::ready`] with a limit; the error says what is missing.
    pub async fn ready_timeout(&self, limit: Duration) -> Result<ServiceId, NotReady> {
        match tokio::time::timeout(limit, self.ready()).await {
            Ok(result) => result,
            Err(_) => {
                let fetched = self.shared.lock_fetched();
                let missing = match (&fetched.roots, &fetched.leaf) {
                    (None, _) => "CA roots",
                    (_, None) => "leaf certificate",
                    _ => "a leaf valid under the roots",
                };
                Err(NotReady::Timeout {
                    service: self.shared.name.clone(),
                    waited: limit,
                    missing,
                    last_error: fetched
                        .last_error()
                        .map(|e| format!("{}: {}", e.source, e.message)),
                })
            }
        }
    }

    /// Readiness, the held leaf and roots, and the last error.
    pub fn status(&self) -> Status {
        let material = self.shared.cell.load();
        let fetched = self.shared.lock_fetched();
        Status {
            ready: material.as_ref().is_some_and(|m| m.leaf_chains()),
            identity: material.as_ref().map(|m| m.service_id().clone()),
            leaf_serial: material.as_ref().map(|m| m.serial().to_owned()),
            leaf_not_after: material.as_ref().map(|m| m.not_after()),
            root_ids: fetched.trusted_roots.clone(),
            last_error: fetched.last_error().cloned(),
        }
    }

    /// Accepts connections for this service over sockets of your own, always authorizing
    /// each client (as [`ConnectListener`](crate::ConnectListener) does). Go's
    /// `svc.ServerTLSConfig()` in a custom accept loop becomes this.
    pub fn acceptor(&self) -> crate::ConnectAcceptor {
        crate::ConnectAcceptor::new(self)
    }

    /// A rustls server configuration that authorizes every client inside the handshake, for
    /// servers that take a `rustls::ServerConfig` (hyper-rustls, tonic's TLS, ...). Only an
    /// authorizer that decides without I/O can run there, such as the
    /// [`IntentionsAuthorizer`]: with the default agent
    /// authorizer, which asks the agent after the handshake, this is `None`; use
    /// [`acceptor`](Self::acceptor) then.
    pub fn authorizing_server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.shared
            .authorizer
            .handshake_hook()
            .is_some()
            .then(|| self.shared.server.clone())
    }

    /// Access to what can skip authorization; see [`DangerousService`].
    pub fn dangerous(&self) -> DangerousService<'_> {
        DangerousService(self)
    }

    /// The client configuration, from which each dial derives its own.
    pub fn client_config(&self) -> &ConnectClientConfig {
        &self.shared.client
    }

    /// The authorizer for incoming connections.
    pub fn authorizer(&self) -> &Arc<dyn Authorizer> {
        &self.shared.authorizer
    }

    /// The current material, if any.
    pub fn material(&self) -> Option<Arc<Material>> {
        self.shared.cell.load()
    }

    /// A receiver of the material generation: it changes each time new material (a renewed
    /// leaf or new roots) is published.
    ///
    /// ```no_run
    /// # async fn run(web: consul_connect::ConnectService) {
    /// let mut updates = web.material_updates();
    /// updates.changed().await.ok(); // the next rotation
    /// # }
    /// ```
    pub fn material_updates(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// A dialer for connecting to other services as this one.
    pub fn dialer(&self) -> ConnectDialer {
        ConnectDialer::new(
            &self.shared.name,
            self.shared.agent.clone(),
            self.shared.cell.clone(),
            self.shared.client.clone(),
            self.shared.discovery.clone(),
            self.shared.clone(),
        )
    }

    /// Stops the watches. Existing connections are not touched; new handshakes keep using the
    /// last material.
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
    }

    /// Registers the service with the agent as Connect-native, listening at `addr` (ID and
    /// name are the service's name), so that others find it by name. The registration is
    /// renewed when the agent has forgotten it (checked every
    /// [`DEFAULT_CHECK_INTERVAL`](crate::registration::DEFAULT_CHECK_INTERVAL)) and removed
    /// when the returned [`Registration`](crate::registration::Registration) is dropped or the
    /// service shut down.
    ///
    /// # Errors
    ///
    /// The agent's answer to the first registration.
    pub async fn register(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<crate::registration::Registration, AgentError> {
        self.register_checking_every(addr, crate::registration::DEFAULT_CHECK_INTERVAL)
            .await
    }

    /// [`register`](Self::register), checking the registration every `interval`.
    pub async fn register_checking_every(
        &self,
        addr: std::net::SocketAddr,
        interval: Duration,
    ) -> Result<crate::registration::Registration, AgentError> {
        crate::registration::Registration::start(
            self.shared.agent.clone(),
            &self.shared.name,
            addr,
            interval,
            self.shared.stop.subscribe(),
        )
        .await
    }

    fn shutdown_error(&self) -> NotReady {
        NotReady::Shutdown {
            service: self.shared.name.clone(),
        }
    }
}

/// What can hand out this service's TLS without authorization, named so; from
/// [`ConnectService::dangerous`].
#[derive(Debug, Clone, Copy)]
pub struct DangerousService<'a>(&'a ConnectService);

impl DangerousService<'_> {
    /// The raw rustls server configuration: client certificates required and verified
    /// against the current roots, the current leaf presented, no resumption. It runs only an
    /// in-handshake authorizer: with the default [`AgentAuthorizer`]
    /// it **authorizes no one**, so a client that intentions deny still gets through. Use
    /// [`ConnectService::acceptor`] or [`ConnectService::authorizing_server_config`] instead,
    /// unless you authorize each connection yourself.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.0.shared.server.clone()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
