//! [`ConnectServiceBuilder`]: how a service is configured and started.

use super::watches::check_identity;
use super::*;

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
    /// The defaults: the agent from the environment, the agent authorizer, default pacing.
    pub(super) fn new(name: String) -> Self {
        Self {
            name,
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
                // One read of /v1/agent/self gives the default and the wording.
                let (default, wording) = agent.authorization_settings().await?;
                Arc::new(IntentionsAuthorizer::start_worded(
                    agent.clone(),
                    &self.name,
                    default,
                    Some(wording),
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
            root_moves: watch::channel(0).0,
            leaf_refusals: watch::channel(0).0,
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
