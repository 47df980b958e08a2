//! Who may connect: authorizers that decide, per new client connection, with Consul's
//! intentions.
//!
//! [`AgentAuthorizer`] (the default, as in Consul's Go SDK) asks the local agent's
//! `/v1/agent/connect/authorize` after the handshake. [`IntentionsAuthorizer`] watches the
//! intentions for the service and decides in-process, inside the handshake, so a denied
//! client gets a TLS alert and the agent sees no call. Both give the same decisions, worded as
//! the agent's Consul version words them.
//!
//! Both also say when their decisions may have changed ([`Authorizer::changes`]): the
//! intentions that match the service as a destination changed. Connections already open are
//! then authorized again, and those now denied are closed (see
//! [`ServerStream`](crate::acceptor::ServerStream)).

use std::collections::HashMap;
pub mod compose;

use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use tokio::sync::watch;

use crate::agent::{run_watch, AgentClient, AgentError, QueryOptions, WatchConfig, WatchEvent};
use crate::api::{AuthorizeRequest, Intention};
use crate::intentions::{decide_matches, DefaultDecision, Wording};
use crate::spiffe::ServiceId;
use crate::telemetry;
use crate::tls::HandshakeAuthorizer;

/// The outcome of an authorization, the same type the intention rules decide with:
/// whether the client may proceed and why, in Consul's words.
pub use crate::intentions::Decision;

/// Why a connection was not authorized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthzError {
    /// An intention (or the default policy) denies it.
    #[error("{peer} may not connect to {target}: {reason}")]
    Denied {
        /// The client identity.
        peer: ServiceId,
        /// The service connected to.
        target: String,
        /// Consul's reason.
        reason: String,
    },
    /// The decision could not be made (the agent failed to answer): the connection is refused.
    #[error("cannot authorize {peer} for {target}: {source}")]
    Unavailable {
        /// The client identity.
        peer: ServiceId,
        /// The service connected to.
        target: String,
        /// The agent error.
        source: AgentError,
    },
}

/// Decides whether a verified client may talk to this service.
///
/// Why there are two traits: an `Authorizer` may do I/O (it is async, and the listener asks it
/// after the handshake, as the agent's authorize endpoint needs); a
/// [`HandshakeAuthorizer`] runs inside rustls's synchronous
/// certificate verifier, where nothing may block, so that a refusal is a TLS alert before any
/// byte flows. An `Authorizer` that can decide without I/O offers its in-handshake form through
/// [`handshake_hook`](Authorizer::handshake_hook); the listener then uses that alone. Identity
/// rules and their combinations are in [`compose`].
#[async_trait]
pub trait Authorizer: Send + Sync + fmt::Debug {
    /// Decides for `peer` (already verified against the CA) connecting to `target`, presenting
    /// the certificate with `serial` (colon hex). A denial is `Ok` with `allowed: false`; `Err`
    /// means no decision could be made (and the connection is refused).
    async fn authorize(
        &self,
        target: &str,
        peer: &ServiceId,
        serial: &str,
    ) -> Result<Decision, AuthzError>;

    /// An in-handshake form of the same decision, when the authorizer can decide without I/O.
    /// The listener then skips [`Authorizer::authorize`].
    fn handshake_hook(&self) -> Option<Arc<dyn HandshakeAuthorizer>> {
        None
    }

    /// A receiver whose value changes each time decisions for `target` may have changed.
    /// Connections to `target` that are already open are then authorized again with
    /// [`Authorizer::authorize`], and closed when now denied. `None` (the default): decisions
    /// never change, open connections are never checked again.
    ///
    /// Called from within a Tokio runtime (an implementation may start a watch).
    fn changes(&self, target: &str) -> Option<watch::Receiver<u64>> {
        let _ = target;
        None
    }
}

/// Asks the agent's `/v1/agent/connect/authorize` for every new client.
///
/// To learn when open connections must be authorized again, it watches the intentions that
/// match each target as a destination (`/v1/connect/intentions/match?by=destination`, with
/// blocking queries; polled on agents that cannot block, such as Consul 1.4), from the first
/// time [`Authorizer::changes`] is asked for that target until the last clone is dropped.
#[derive(Clone)]
pub struct AgentAuthorizer {
    agent: AgentClient,
    watch: WatchConfig,
    watches: Arc<Watches>,
}

/// The intention watches of an [`AgentAuthorizer`], one per target, stopped on drop.
#[derive(Default)]
struct Watches {
    by_target: Mutex<HashMap<String, watch::Receiver<u64>>>,
    stop: watch::Sender<bool>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for AgentAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watched: Vec<String> = self.lock_watches().keys().cloned().collect();
        f.debug_struct("AgentAuthorizer")
            .field("agent", &self.agent)
            .field("watched", &watched)
            .finish()
    }
}

impl AgentAuthorizer {
    /// An authorizer asking `agent`.
    pub fn new(agent: AgentClient) -> Self {
        Self {
            agent,
            watch: WatchConfig::default(),
            watches: Arc::default(),
        }
    }

    /// The pacing of the intentions watch that tells when to authorize open connections
    /// again.
    pub fn with_watch_config(mut self, config: WatchConfig) -> Self {
        self.watch = config;
        self
    }

    fn lock_watches(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<u64>>> {
        // A map of receivers: a panic elsewhere cannot leave it half-written.
        self.watches
            .by_target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the watch of `target`'s intentions; the receiver changes with the match list.
    fn start_watch(&self, target: &str) -> watch::Receiver<u64> {
        let (generation, changes) = watch::channel(0u64);
        let agent = self.agent.clone();
        let target = target.to_owned();
        let stop = self.watches.stop.subscribe();
        let config = self.watch.clone();
        tokio::spawn(async move {
            let mut last: Option<Vec<Intention>> = None;
            let name = target.clone();
            run_watch(
                config,
                stop,
                |opts: QueryOptions| {
                    let agent = agent.clone();
                    let target = target.clone();
                    async move { agent.intentions_for_destination(&target, &opts).await }
                },
                |event| match event {
                    // The first list counts as a change too: a connection authorized just
                    // before it arrived may have been decided on an older state.
                    WatchEvent::Update(list) if last.as_ref() != Some(&list.value) => {
                        last = Some(list.value);
                        generation.send_modify(|g| *g += 1);
                    }
                    WatchEvent::Update(_) => {}
                    WatchEvent::Error(e) => {
                        telemetry::watch_error(&name, "intentions");
                        tracing::warn!(target = %name, error = %e, "intentions watch failed; open connections are not re-checked until it recovers");
                    }
                },
            )
            .await;
        });
        changes
    }
}

#[async_trait]
impl Authorizer for AgentAuthorizer {
    async fn authorize(
        &self,
        target: &str,
        peer: &ServiceId,
        serial: &str,
    ) -> Result<Decision, AuthzError> {
        let req = AuthorizeRequest {
            target: target.to_owned(),
            client_cert_uri: peer.to_string(),
            client_cert_serial: serial.to_owned(),
        };
        let span = tracing::debug_span!("connect.authorize", authorizer = "agent", %target, %peer);
        let resp = tracing::Instrument::instrument(self.agent.authorize(&req), span)
            .await
            .map_err(|source| {
                telemetry::authorization(target, "agent", "error");
                AuthzError::Unavailable {
                    peer: peer.clone(),
                    target: target.to_owned(),
                    source,
                }
            })?;
        telemetry::authorization(
            target,
            "agent",
            if resp.authorized { "allow" } else { "deny" },
        );
        Ok(Decision::new(resp.authorized, resp.reason))
    }

    fn changes(&self, target: &str) -> Option<watch::Receiver<u64>> {
        let mut watches = self.lock_watches();
        let changes = watches
            .entry(target.to_owned())
            .or_insert_with(|| self.start_watch(target));
        Some(changes.clone())
    }
}

/// Decides in-process from the intentions that match the service as a destination, watched
/// with blocking queries on `/v1/connect/intentions/match?by=destination`.
///
/// Until the first list arrives it denies (fail closed). The default for clients no intention
/// matches must be told: Consul allows them when ACLs are off and follows the ACL default
/// policy otherwise.
pub struct IntentionsAuthorizer {
    state: Arc<IntentionsState>,
    stop: watch::Sender<bool>,
}

#[derive(Debug)]
struct IntentionsState {
    target: String,
    default: DefaultDecision,
    /// How the agent words reasons, learnt before the first list is loaded (1.9+'s until then,
    /// or when the agent cannot say).
    wording: std::sync::OnceLock<Wording>,
    matches: ArcSwap<Option<Vec<Intention>>>,
    loaded: watch::Sender<bool>,
    /// Bumped each time the matched list changes.
    generation: watch::Sender<u64>,
}

impl fmt::Debug for IntentionsAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.state.matches.load().as_ref().as_ref().map(Vec::len);
        f.debug_struct("IntentionsAuthorizer")
            .field("target", &self.state.target)
            .field("default", &self.state.default)
            .field("intentions", &count)
            .finish()
    }
}

impl IntentionsAuthorizer {
    /// Starts watching the intentions for `target` (the service's own name) through `agent`.
    pub fn start(agent: AgentClient, target: &str, default: DefaultDecision) -> Self {
        Self::start_with(agent, target, default, WatchConfig::default())
    }

    /// As [`IntentionsAuthorizer::start`], with the watch's pacing.
    pub fn start_with(
        agent: AgentClient,
        target: &str,
        default: DefaultDecision,
        config: WatchConfig,
    ) -> Self {
        Self::start_worded(agent, target, default, None, config)
    }

    /// [`IntentionsAuthorizer::start_with`], with the agent's reason wording when the caller
    /// has already read it (otherwise it is asked for before the first list).
    pub(crate) fn start_worded(
        agent: AgentClient,
        target: &str,
        default: DefaultDecision,
        wording: Option<Wording>,
        config: WatchConfig,
    ) -> Self {
        let known = wording.is_some();
        let state = Arc::new(IntentionsState {
            target: target.to_owned(),
            default,
            wording: wording.map(std::sync::OnceLock::from).unwrap_or_default(),
            matches: ArcSwap::from_pointee(None),
            loaded: watch::channel(false).0,
            generation: watch::channel(0).0,
        });
        let (stop, stopped) = watch::channel(false);
        let watcher = state.clone();
        tokio::spawn(async move {
            let target = watcher.target.clone();
            if !known {
                match agent.reason_wording().await {
                    Ok(wording) => {
                        let _ = watcher.wording.set(wording);
                    }
                    Err(e) => {
                        tracing::debug!(%target, error = %e, "the agent's version is unknown; wording reasons as Consul 1.9+");
                    }
                }
            }
            run_watch(
                config,
                stopped,
                |opts: QueryOptions| {
                    let agent = agent.clone();
                    let target = target.clone();
                    async move { agent.intentions_for_destination(&target, &opts).await }
                },
                |event| match event {
                    WatchEvent::Update(list) => {
                        let same = watcher.matches.load().as_ref().as_ref() == Some(&list.value);
                        if !same {
                            watcher.matches.store(Arc::new(Some(list.value)));
                            watcher.generation.send_modify(|g| *g += 1);
                        }
                        watcher.loaded.send_replace(true);
                    }
                    WatchEvent::Error(e) => {
                        tracing::warn!(target = %watcher.target, error = %e, "intentions watch failed; keeping the last list");
                    }
                },
            )
            .await;
        });
        Self { state, stop }
    }

    /// Waits until the first intentions list has arrived.
    pub async fn loaded(&self) {
        let mut loaded = self.state.loaded.subscribe();
        let _ = loaded.wait_for(|l| *l).await;
    }

    /// A receiver that changes each time the intentions list for the target changes.
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.state.generation.subscribe()
    }

    fn decide(&self, peer: &ServiceId) -> Decision {
        self.state.decide(peer)
    }
}

impl IntentionsState {
    fn decide(&self, peer: &ServiceId) -> Decision {
        let decision = self.decide_uncounted(peer);
        let outcome = if decision.allowed { "allow" } else { "deny" };
        telemetry::authorization(&self.target, "intentions", outcome);
        tracing::debug!(authorizer = "intentions", target = %self.target, %peer, allowed = decision.allowed, reason = %decision.reason, "connect.authorize");
        decision
    }

    fn decide_uncounted(&self, peer: &ServiceId) -> Decision {
        let matches = self.matches.load();
        match matches.as_ref() {
            None => Decision::deny("intentions not loaded yet"),
            Some(list) => {
                let wording = self.wording.get().copied().unwrap_or(Wording::Consul1_9);
                let d = decide_matches(list.iter(), peer, self.default, wording);
                // Only what the agent's authorize endpoint answers too, so that both
                // authorizers give equal decisions.
                Decision::new(d.allowed, d.reason)
            }
        }
    }
}

impl Drop for IntentionsAuthorizer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[async_trait]
impl Authorizer for IntentionsAuthorizer {
    async fn authorize(
        &self,
        _target: &str,
        peer: &ServiceId,
        _serial: &str,
    ) -> Result<Decision, AuthzError> {
        Ok(self.decide(peer))
    }

    fn handshake_hook(&self) -> Option<Arc<dyn HandshakeAuthorizer>> {
        Some(Arc::new(IntentionsHook(self.state.clone())))
    }

    /// [`IntentionsAuthorizer::updates`]: the watched list is that of its own target.
    fn changes(&self, _target: &str) -> Option<watch::Receiver<u64>> {
        Some(self.updates())
    }
}

#[derive(Debug)]
struct IntentionsHook(Arc<IntentionsState>);

impl HandshakeAuthorizer for IntentionsHook {
    fn authorize(&self, peer: &ServiceId, _serial: &str) -> Result<(), String> {
        admit(self.0.decide(peer))
    }
}

/// A decision as an in-handshake verdict: `Err` carries the refusal's reason.
fn admit(decision: Decision) -> Result<(), String> {
    if decision.allowed {
        Ok(())
    } else {
        Err(decision.reason)
    }
}
