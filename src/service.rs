//! [`ConnectService`]: a service's Connect identity, kept fresh in the background.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::agent::{
    run_watch, AgentClient, AgentClientBuilder, AgentError, QueryOptions, Token, WatchConfig,
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

/// Which authorizer a service uses for incoming connections.
#[derive(Debug, Clone)]
enum AuthorizerChoice {
    Agent,
    Intentions(DefaultDecision),
    IntentionsFromAgent,
    Custom(Arc<dyn Authorizer>),
}

/// Where the service's agent client comes from.
#[derive(Debug)]
enum AgentSource {
    Client(AgentClient),
    Builder(Box<AgentClientBuilder>),
}

/// Configures a [`ConnectService`].
#[derive(Debug)]
pub struct ConnectServiceBuilder {
    name: String,
    agent: Option<AgentSource>,
    token: Option<Token>,
    datacenter: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
    authorizer: AuthorizerChoice,
    watch: WatchConfig,
    leaf_first_read_timeout: Duration,
    files: Option<CertificateFiles>,
    clock: Arc<dyn TimeProvider>,
}

/// How long a non-blocking leaf read may take before it is retried as a short blocking read
/// (see [`ConnectServiceBuilder::leaf_first_read_timeout`]).
pub const DEFAULT_LEAF_FIRST_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl ConnectServiceBuilder {
    /// Bounds each non-blocking leaf read (the first one, and the one after an error); when it
    /// runs out, the read is retried as a blocking read at index 1 with that same wait, which
    /// an agent holding a leaf answers at once. Consul 1.10 and 1.11 hold a non-blocking leaf
    /// read while a blocking leaf query for the service, even one whose client has gone, is
    /// pending (hashicorp/consul#12048, fixed in 1.12): without the bound a restarted
    /// service waits for its predecessor's abandoned query. Default
    /// [`DEFAULT_LEAF_FIRST_READ_TIMEOUT`].
    pub fn leaf_first_read_timeout(mut self, timeout: Duration) -> Self {
        self.leaf_first_read_timeout = timeout;
        self
    }

    /// The agent to use (default: [`AgentClient::from_env`], the `CONSUL_*` variables as Go's
    /// `api.DefaultConfig()` reads them).
    pub fn agent(mut self, agent: AgentClient) -> Self {
        self.agent = Some(AgentSource::Client(agent));
        self
    }

    /// The agent to use, as configured by `builder` (built, and its files read, by
    /// [`build`](Self::build)).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use consul_connect::agent::AgentClientBuilder;
    /// let agent = AgentClientBuilder::from_env()?.ca_file("/etc/consul/ca.pem");
    /// let service = consul_connect::ConnectService::builder("web")
    ///     .agent_builder(agent)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn agent_builder(mut self, builder: AgentClientBuilder) -> Self {
        self.agent = Some(AgentSource::Builder(Box::new(builder)));
        self
    }

    /// The ACL token for every request (overrides the agent client's).
    pub fn token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    /// The namespace the service lives in (Consul Enterprise; every agent request is scoped
    /// to it with `?ns=`, and the leaf must name it). Consul OSS knows only `default` and
    /// refuses others with [`AgentError::EnterpriseOnly`].
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// The admin partition the service lives in (Consul Enterprise 1.11+; `?partition=` on
    /// every agent request, and the leaf must name it).
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// The datacenter to request the leaf for (default: the agent's).
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// Authorize clients in-process from watched intentions, inside the handshake, with
    /// `default` for clients no intention matches (Consul: allow when ACLs are off, else the
    /// ACL default policy). The default is the agent's authorize endpoint.
    pub fn intentions_authorizer(mut self, default: DefaultDecision) -> Self {
        self.authorizer = AuthorizerChoice::Intentions(default);
        self
    }

    /// Authorize in-process from watched intentions (as
    /// [`ConnectServiceBuilder::intentions_authorizer`]), with the default for unmatched
    /// clients read from the agent's ACL settings at build time.
    pub fn intentions_authorizer_from_agent(mut self) -> Self {
        self.authorizer = AuthorizerChoice::IntentionsFromAgent;
        self
    }

    /// Use a custom authorizer.
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = AuthorizerChoice::Custom(authorizer);
        self
    }

    /// Takes the roots, leaf and key from certificate files instead of the agent, as Go's
    /// `connect.NewDevServiceFromCertFiles`: [`build`](Self::build) reads them (and fails if
    /// they do not make valid material for this service) without contacting any agent, and
    /// the files are re-read every [`CertificateFiles::poll_interval`] while the service runs.
    ///
    /// Such a service needs an [`authorizer`](Self::authorizer): `build` refuses with
    /// [`BuildError::AuthorizerRequired`] otherwise, since the default authorizer and the
    /// intentions authorizers ask an agent. Dialing works with a
    /// [`StaticResolver`](crate::StaticResolver); [`ConnectDialer::dial_service`] asks the
    /// agent's catalog, so it needs a reachable agent ([`agent`](Self::agent), or
    /// `CONSUL_HTTP_ADDR` as for every service).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use consul_connect::files::CertificateFiles;
    /// use consul_connect::{Authorizer, ConnectService};
    ///
    /// # fn my_authorizer() -> Arc<dyn Authorizer> { unimplemented!() }
    /// let authorizer: Arc<dyn Authorizer> = my_authorizer(); // decides who may connect
    /// let web = ConnectService::builder("web")
    ///     .certificate_files(CertificateFiles::new("ca.pem", "web.pem", "web-key.pem"))
    ///     .authorizer(authorizer)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn certificate_files(mut self, files: CertificateFiles) -> Self {
        self.files = Some(files);
        self
    }

    /// The clock that certificate validity is checked against: when new material is
    /// verified, and in every handshake (the rustls configurations' `time_provider`).
    /// Default: the system clock. For tests of expiry and rotation that must not wait.
    pub fn clock(mut self, clock: Arc<dyn TimeProvider>) -> Self {
        self.clock = clock;
        self
    }

    /// Pacing of the roots, leaf and intentions watches.
    pub fn watch_config(mut self, config: WatchConfig) -> Self {
        self.watch = config;
        self
    }

    /// [`build`](Self::build), then waits until the service is ready (its leaf and the roots
    /// held and verified), at most `limit`: the one call a program usually needs.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), consul_connect::service::BuildError> {
    /// use std::time::Duration;
    /// let web = consul_connect::ConnectService::builder("web")
    ///     .build_ready(Duration::from_secs(10))
    ///     .await?;
    /// println!("serving as {}", web.identity().expect("ready"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), or [`BuildError::NotReady`] saying what was still missing.
    pub async fn build_ready(self, limit: Duration) -> Result<ConnectService, BuildError> {
        let service = self.build().await?;
        service.ready_timeout(limit).await?;
        Ok(service)
    }

    /// Starts the roots and leaf watches. Returns at once; use [`ConnectService::ready`] to
    /// wait for the first certificate.
    ///
    /// With [`certificate_files`](Self::certificate_files), reads and verifies the files
    /// first (the service is ready when this returns) and starts polling them instead.
    pub async fn build(self) -> Result<ConnectService, BuildError> {
        if self.files.is_some() && !matches!(self.authorizer, AuthorizerChoice::Custom(_)) {
            return Err(BuildError::AuthorizerRequired { service: self.name });
        }
        let mut agent = match self.agent {
            Some(AgentSource::Client(agent)) => agent,
            Some(AgentSource::Builder(builder)) => builder.build()?,
            None => AgentClient::from_env()?,
        };
        if let Some(token) = self.token {
            agent = agent.with_token(token);
        }
        if let Some(ns) = &self.namespace {
            agent = agent.with_namespace(ns.clone());
        }
        if let Some(partition) = &self.partition {
            agent = agent.with_partition(partition.clone());
        }
        let authorizer: Arc<dyn Authorizer> = match self.authorizer {
            AuthorizerChoice::Agent => {
                Arc::new(AgentAuthorizer::new(agent.clone()).with_watch_config(self.watch.clone()))
            }
            AuthorizerChoice::Intentions(default) => Arc::new(IntentionsAuthorizer::start_with(
                agent.clone(),
                &self.name,
                default,
                self.watch.clone(),
            )),
            AuthorizerChoice::IntentionsFromAgent => {
                let default = agent.intention_default().await?;
                Arc::new(IntentionsAuthorizer::start_with(
                    agent.clone(),
                    &self.name,
                    default,
                    self.watch.clone(),
                ))
            }
            AuthorizerChoice::Custom(a) => a,
        };
        // Certificate files: the first material, read and verified before anything starts.
        let first = match &self.files {
            Some(files) => {
                let files_error = |source| BuildError::Files {
                    service: self.name.clone(),
                    source,
                };
                let contents = files.read().map_err(files_error)?;
                let now = self
                    .clock
                    .current_time()
                    .ok_or_else(|| BuildError::NoTime {
                        service: self.name.clone(),
                    })?;
                let material = contents
                    .material(files, now)
                    .and_then(|m| {
                        check_identity(
                            &self.name,
                            self.datacenter.as_deref(),
                            (agent.namespace(), agent.partition()),
                            m,
                        )
                        .map_err(|reason| FilesError::NotThisService {
                            cert_file: files.cert_file().to_owned(),
                            reason,
                        })
                    })
                    .map_err(files_error)?;
                Some((files.clone(), contents, material))
            }
            None => None,
        };
        let cell = Arc::new(MaterialCell::new());
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            discovery: crate::resolve::LastKnownGood::new(),
            server: server_config_with_clock(
                cell.clone(),
                authorizer.handshake_hook(),
                self.clock.clone(),
            ),
            client: client_config_with_clock(cell.clone(), self.clock.clone()),
            name: self.name,
            datacenter: self.datacenter,
            agent,
            cell,
            authorizer,
            clock: self.clock,
            fetched: Mutex::new(Fetched::default()),
            ready: watch::channel(false).0,
            generation: watch::channel(0).0,
            stop,
        });
        match first {
            Some((files, contents, material)) => {
                let root_ids = material.roots().ids.clone();
                shared.install(&mut shared.lock_fetched(), material, root_ids);
                shared.clone().spawn_file_watch(files, contents);
            }
            None => shared
                .clone()
                .spawn_watches(self.watch, self.leaf_first_read_timeout),
        }
        Ok(ConnectService { shared })
    }
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
        ConnectServiceBuilder {
            name: name.into(),
            agent: None,
            token: None,
            datacenter: None,
            namespace: None,
            partition: None,
            authorizer: AuthorizerChoice::Agent,
            watch: WatchConfig::default(),
            leaf_first_read_timeout: DEFAULT_LEAF_FIRST_READ_TIMEOUT,
            files: None,
            clock: Arc::new(DefaultTimeProvider),
        }
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

impl Shared {
    fn lock_fetched(&self) -> std::sync::MutexGuard<'_, Fetched> {
        // Plain data; a panic elsewhere cannot leave it half-written in a harmful way.
        self.fetched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the two watches. They hold only a weak reference, so dropping the service ends
    /// them.
    fn spawn_watches(self: Arc<Self>, config: WatchConfig, leaf_first_read: Duration) {
        let weak = Arc::downgrade(&self);
        let agent = self.agent.clone();
        let stop = self.stop.subscribe();
        let roots_weak = weak.clone();
        tokio::spawn(run_watch(
            config.clone(),
            stop.clone(),
            move |opts: QueryOptions| {
                let agent = agent.clone();
                async move { agent.roots(&opts).await }
            },
            move |event| {
                if let Some(shared) = roots_weak.upgrade() {
                    shared.on_roots(event);
                }
            },
        ));
        let agent = self.agent.clone();
        let name = self.name.clone();
        let dc = self.datacenter.clone();
        tokio::spawn(run_watch(
            config,
            stop,
            move |mut opts: QueryOptions| {
                let agent = agent.clone();
                let name = name.clone();
                opts.datacenter = dc.clone();
                async move {
                    if opts.index > 0 {
                        return agent.leaf(&name, &opts).await;
                    }
                    match tokio::time::timeout(leaf_first_read, agent.leaf(&name, &opts)).await {
                        Ok(result) => result,
                        Err(_) => {
                            // Consul 1.10-1.11 (hashicorp/consul#12048): a non-blocking leaf
                            // read waits for a pending blocking one, even an abandoned one.
                            // A blocking read at index 1 is answered at once instead.
                            tracing::warn!(service = %name, waited = ?leaf_first_read, "leaf read stalled (Consul 1.10-1.11 leaf cache, hashicorp/consul#12048); retrying as a blocking read");
                            let retry = QueryOptions {
                                index: 1,
                                wait: Some(leaf_first_read),
                                ..opts
                            };
                            agent.leaf(&name, &retry).await
                        }
                    }
                }
            },
            move |event| {
                if let Some(shared) = weak.upgrade() {
                    shared.on_leaf(event);
                }
            },
        ));
    }

    /// Polls the certificate files; `seen` is what they held when last read. Holds only a
    /// weak reference, so dropping the service ends it.
    fn spawn_file_watch(self: Arc<Self>, files: CertificateFiles, seen: Contents) {
        let weak = Arc::downgrade(&self);
        let mut stop = self.stop.subscribe();
        drop(self);
        tokio::spawn(async move {
            // `None` after a failed read, so the next good read is always checked (and clears
            // the error) even if the files are back to what they were.
            let mut seen = Some(seen);
            let mut ticks = tokio::time::interval(files.interval());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the files were just read
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let reader = files.clone();
                let read = match tokio::task::spawn_blocking(move || reader.read()).await {
                    Ok(read) => read,
                    Err(e) => Err(FilesError::Read {
                        path: files.cert_file().to_owned(),
                        reason: format!("the reading task failed: {e}"),
                    }),
                };
                let Some(shared) = weak.upgrade() else { return };
                match read {
                    Ok(contents) if seen.as_ref() == Some(&contents) => {}
                    Ok(contents) => {
                        shared.on_files(&files, &contents);
                        seen = Some(contents);
                    }
                    Err(e) => {
                        // Reported once per failure, not on every tick while it lasts.
                        let message = e.to_string();
                        let mut fetched = shared.lock_fetched();
                        let known = fetched
                            .errors
                            .iter()
                            .any(|f| f.source == "files" && f.message == message);
                        if !known {
                            shared.record_error(&mut fetched, "files", message);
                        }
                        seen = None;
                    }
                }
            }
        });
    }

    /// New contents of the certificate files: published if they verify and are ours,
    /// otherwise the last good material stays and the error is recorded.
    fn on_files(&self, files: &CertificateFiles, contents: &Contents) {
        let mut fetched = self.lock_fetched();
        let Some(now) = self.clock.current_time() else {
            self.record_error(
                &mut fetched,
                "files",
                "the clock gave no current time".to_owned(),
            );
            return;
        };
        let built = contents
            .material(files, now)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                check_identity(
                    &self.name,
                    self.datacenter.as_deref(),
                    (self.agent.namespace(), self.agent.partition()),
                    m,
                )
            });
        match built {
            Ok(material) => {
                tracing::debug!(service = %self.name, serial = %material.serial(), "certificate files changed");
                fetched.clear_error("files");
                let root_ids = material.roots().ids.clone();
                self.install(&mut fetched, material, root_ids);
            }
            Err(message) => self.record_error(&mut fetched, "files", message),
        }
    }

    fn on_roots(&self, event: WatchEvent<CaRootList>) {
        let mut fetched = self.lock_fetched();
        match event {
            WatchEvent::Update(roots) => {
                tracing::debug!(service = %self.name, roots = roots.value.roots.len(), "CA roots updated");
                fetched.clear_error("roots");
                fetched.roots = Some(roots.value);
                self.publish(&mut fetched, "roots");
            }
            WatchEvent::Error(e) => self.record_error(&mut fetched, "roots", e.to_string()),
        }
    }

    fn on_leaf(&self, event: WatchEvent<LeafCert>) {
        let mut fetched = self.lock_fetched();
        match event {
            WatchEvent::Update(leaf) => {
                tracing::debug!(service = %self.name, serial = %leaf.value.serial_number, "leaf certificate updated");
                fetched.clear_error("leaf");
                fetched.leaf = Some(leaf.value);
                self.publish(&mut fetched, "leaf");
            }
            WatchEvent::Error(e) => self.record_error(&mut fetched, "leaf", e.to_string()),
        }
    }

    /// Builds and publishes new material when both halves are there, the leaf verifies and
    /// names this service; otherwise the last good material keeps serving. New roots are still
    /// taken when only the fetched leaf was refused and the held leaf verifies under them.
    fn publish(&self, fetched: &mut Fetched, source: &'static str) {
        let (Some(roots), Some(leaf)) = (&fetched.roots, &fetched.leaf) else {
            return;
        };
        let Some(now) = self.clock.current_time() else {
            self.record_error(
                fetched,
                "material",
                "the clock gave no current time".to_owned(),
            );
            return;
        };
        let built = Material::new(roots, leaf, now)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                check_identity(
                    &self.name,
                    self.datacenter.as_deref(),
                    (self.agent.namespace(), self.agent.partition()),
                    m,
                )
            });
        match built {
            Ok(material) => {
                let ids = roots.roots.iter().map(|r| r.id.clone()).collect();
                fetched.clear_error("material");
                self.install(fetched, material, ids);
            }
            Err(message) => {
                // New roots are trusted at once, even when the held leaf does not chain to
                // them (the service is then not ready until a leaf that does arrives).
                let fallback = match (source, self.cell.load()) {
                    ("roots", Some(current)) => current.with_roots_keeping_leaf(roots, now).ok(),
                    _ => None,
                };
                let mut message = message;
                if let Some((material, stale)) = fallback {
                    let ids = roots.roots.iter().map(|r| r.id.clone()).collect();
                    self.install(fetched, material, ids);
                    if stale.is_some() {
                        message.push_str(
                            "; the new roots are trusted, and the service is not ready until a leaf that chains to them arrives",
                        );
                    }
                }
                self.record_error(fetched, "material", message);
            }
        }
    }

    fn install(&self, fetched: &mut Fetched, material: Material, root_ids: Vec<String>) {
        fetched.trusted_roots = root_ids;
        if let Some(previous) = self.cell.load() {
            // A watch re-reads without blocking after an error and reports what it got even
            // when nothing changed: republishing that would log, count and wake every
            // `material_updates` receiver for nothing.
            if same_material(&previous, &material) {
                tracing::debug!(service = %self.name, serial = %material.serial(), "Connect material unchanged");
                return;
            }
            if previous.serial() != material.serial() {
                telemetry::rotation(&self.name, "leaf");
            }
            if previous.root_certs() != material.root_certs() {
                telemetry::rotation(&self.name, "roots");
            }
        }
        telemetry::leaf_expiry(&self.name, material.not_after());
        tracing::info!(service = %self.name, serial = %material.serial(), "Connect material published");
        let ready = material.leaf_chains();
        self.cell.store(material);
        self.ready.send_replace(ready);
        self.generation.send_modify(|g| *g += 1);
    }

    fn record_error(&self, fetched: &mut Fetched, source: &'static str, message: String) {
        telemetry::watch_error(&self.name, source);
        if self.cell.load().is_some() {
            tracing::warn!(service = %self.name, source, error = %message, "keeping the last good Connect material");
        } else {
            tracing::warn!(service = %self.name, source, error = %message, "no Connect material yet");
        }
        fetched.clear_error(source);
        fetched.errors.push(WatchFailure {
            source,
            message,
            at: SystemTime::now(),
        });
    }
}

/// Whether `a` and `b` present the same leaf chain and trust the same roots and trust domains
/// (the key follows from the leaf: `Material` only holds a key that matches its leaf).
fn same_material(a: &Material, b: &Material) -> bool {
    a.leaf_chain() == b.leaf_chain()
        && a.root_certs() == b.root_certs()
        && a.trust_domains() == b.trust_domains()
}

/// Refuses a leaf that names another service than `name` (or another datacenter than asked
/// for): a valid certificate is not enough, it must be ours.
/// The namespace and partition a service was configured for, when set.
type Scope<'a> = (Option<&'a str>, Option<&'a str>);

/// Refuses a leaf that names another service than `name` (or another datacenter, namespace or
/// partition than asked for): a valid certificate is not enough, it must be ours.
fn check_identity(
    name: &str,
    datacenter: Option<&str>,
    (namespace, partition): Scope<'_>,
    material: Material,
) -> Result<Material, String> {
    let id = material.service_id();
    if id.service() != name {
        return Err(format!(
            "leaf certificate is for {id}, not for service {name:?}"
        ));
    }
    let wanted = [
        ("datacenter", datacenter, id.datacenter()),
        ("namespace", namespace, id.namespace()),
        ("partition", partition, id.partition()),
    ];
    for (what, want, got) in wanted {
        if let Some(want) = want.filter(|want| *want != got) {
            return Err(format!(
                "leaf certificate is for {id}, not for {what} {want:?}"
            ));
        }
    }
    Ok(material)
}
