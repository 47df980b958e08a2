//! The local Consul agent's HTTP API: a pooled hyper client, Consul's token and address
//! conventions, typed errors, and the blocking-query loop every watch uses.
//!
//! ```no_run
//! # async fn run() -> Result<(), consul_connect::agent::AgentError> {
//! use consul_connect::agent::{AgentClient, QueryOptions};
//!
//! // CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ... as Go's `api.DefaultConfig()`.
//! let agent = AgentClient::from_env()?;
//! let roots = agent.roots(&QueryOptions::default()).await?;
//! println!("trust domain {} at index {}", roots.value.trust_domain, roots.index);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;

mod config;
mod default_policy;
mod transport;
mod watch_state;
mod watching;

pub use watch_state::{AfterAnswer, WatchState};
pub(crate) use watching::run_watch_woken;
pub use watching::{run_watch, WatchConfig, WatchEvent};

pub use config::*;
use transport::AgentConnector;

use crate::api::{
    AuthorizeRequest, AuthorizeResponse, CaRootList, Intention, IntentionCreated, IntentionMatches,
    LeafCert, PreparedQueryResult, ServiceEntry, ServiceRegistration,
};

/// The agent Consul clients talk to when `CONSUL_HTTP_ADDR` is unset.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8500";
/// Time allowed for a non-blocking request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pooled connection to the agent may stay idle before it is closed (as Go's
/// `cleanhttp` pooled transport, which Consul's `api` package uses).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// `CONSUL_HTTP_ADDR` (or the address given) is not usable.
    #[error("invalid Consul agent address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A setting (named by its environment variable, e.g. `CONSUL_CACERT`) is not usable: a
    /// malformed value, or a file that cannot be read or parsed.
    #[error("{setting}: {message}")]
    Config {
        /// The environment variable the setting is read from.
        setting: &'static str,
        /// What is wrong, naming the file where there is one.
        message: String,
    },
    /// The agent could not be reached.
    #[error("cannot reach the Consul agent at {addr} ({path}): {source}")]
    Unreachable {
        /// Agent address.
        addr: String,
        /// The request path.
        path: String,
        /// The transport error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request took longer than allowed.
    #[error("the Consul agent at {addr} did not answer {path} within {timeout:?}")]
    Timeout {
        /// Agent address.
        addr: String,
        /// The request path.
        path: String,
        /// The limit.
        timeout: Duration,
    },
    /// The token lacks a permission (403).
    #[error(
        "permission denied by the Consul agent for {path}: {message} (the token needs {needed})"
    )]
    PermissionDenied {
        /// The request path.
        path: String,
        /// Consul's message.
        message: String,
        /// The ACL permission the endpoint requires.
        needed: &'static str,
    },
    /// Consul OSS refused an Enterprise feature: a namespace or admin partition other than
    /// `default` (`Namespaces are a Consul Enterprise feature`).
    #[error(
        "the Consul agent refused {path}: {message} (it is Consul OSS: leave the namespace and \
         partition unset or `default`)"
    )]
    EnterpriseOnly {
        /// The request path.
        path: String,
        /// The status code (400 for a parameter or header, 500 for a namespace in a name).
        status: StatusCode,
        /// Consul's message.
        message: String,
    },
    /// Any other non-2xx answer, with Consul's message.
    #[error("Consul agent answered {status} for {path}: {message}")]
    Status {
        /// The request path.
        path: String,
        /// The status code.
        status: StatusCode,
        /// Consul's plain-text message.
        message: String,
    },
    /// A 2xx answer whose body is not what the endpoint returns.
    #[error("cannot decode the Consul agent's answer to {path}: {source}")]
    Decode {
        /// The request path.
        path: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl AgentError {
    /// The HTTP status, for answers the agent gave.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            AgentError::Status { status, .. } | AgentError::EnterpriseOnly { status, .. } => {
                Some(*status)
            }
            AgentError::PermissionDenied { .. } => Some(StatusCode::FORBIDDEN),
            _ => None,
        }
    }
}

/// An ACL token. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token's secret ID.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Options of one read, built from [`Default`] and the setters.
///
/// ```
/// use std::time::Duration;
/// let blocking = consul_connect::agent::QueryOptions::default()
///     .index(42)
///     .wait(Duration::from_secs(30))
///     .datacenter("dc2");
/// assert_eq!(blocking.index, 42);
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct QueryOptions {
    /// Blocking: return once the resource's index is past this (0 = do not block).
    pub index: u64,
    /// Blocking: the longest wait (the agent's default when `None`).
    pub wait: Option<Duration>,
    /// Datacenter to ask (the agent's own when `None`).
    pub datacenter: Option<String>,
}

impl QueryOptions {
    /// Block until the resource's index is past `index` (0: do not block).
    pub fn index(mut self, index: u64) -> Self {
        self.index = index;
        self
    }

    /// The longest wait of a blocking read.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Ask this datacenter instead of the agent's own.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }
}

/// A value with the `X-Consul-Index` it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    /// The value.
    pub value: T,
    /// The index (0 when the endpoint sends none).
    pub index: u64,
}

/// A client of the local agent's HTTP API. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<ClientInner>,
}

#[derive(Clone)]
struct ClientInner {
    http: Client<AgentConnector, Full<Bytes>>,
    connector: AgentConnector,
    /// `http(s)://authority[/prefix]`, prepended to each request's path.
    base: String,
    /// What [`AgentClient::address`] shows.
    display: String,
    token: Option<Token>,
    /// `Authorization: Basic …`, marked sensitive.
    basic_auth: Option<http::HeaderValue>,
    namespace: Option<String>,
    partition: Option<String>,
    idle_timeout: Duration,
}

impl ClientInner {
    /// `path_and_query` with the client's `ns` and `partition` parameters, as Go's client
    /// adds them to every request.
    fn path_with_scope(&self, path_and_query: &str) -> String {
        let mut out = path_and_query.to_owned();
        for (key, value) in [("ns", &self.namespace), ("partition", &self.partition)] {
            if let Some(value) = value {
                out.push(if out.contains('?') { '&' } else { '?' });
                out.push_str(&form_query(&[(key, value)]));
            }
        }
        out
    }

    #[cfg(test)]
    fn connector_dial(&self) -> transport::Dial {
        self.connector.dial().clone()
    }
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("addr", &self.inner.display)
            .field("token", &self.inner.token)
            .field(
                "basic_auth",
                &self.inner.basic_auth.as_ref().map(|_| "<redacted>"),
            )
            .field("namespace", &self.inner.namespace)
            .field("partition", &self.inner.partition)
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish()
    }
}

impl AgentClient {
    /// A builder with Go's defaults (`127.0.0.1:8500`, plain HTTP, no token); see
    /// [`AgentClientBuilder::from_env`] to start from the environment instead.
    pub fn builder() -> AgentClientBuilder {
        AgentClientBuilder::default()
    }

    /// A client configured from the `CONSUL_*` environment variables as Go's
    /// `api.DefaultConfig()` reads them: `CONSUL_HTTP_ADDR` (default `127.0.0.1:8500`),
    /// `CONSUL_HTTP_TOKEN` / `CONSUL_HTTP_TOKEN_FILE`, TLS settings, namespace and partition
    /// (see [`AgentClientBuilder`]).
    pub fn from_env() -> Result<Self, AgentError> {
        AgentClientBuilder::from_env()?.build()
    }

    /// A client for the agent at `addr` (`host:port`, `http://host:port`, `https://host:port`
    /// verified with the system's CAs, or `unix:///path`) with no other settings.
    ///
    /// ```
    /// let agent = consul_connect::agent::AgentClient::new("127.0.0.1:8500")?;
    /// assert_eq!(agent.address(), "127.0.0.1:8500");
    /// # Ok::<(), consul_connect::agent::AgentError>(())
    /// ```
    pub fn new(addr: &str) -> Result<Self, AgentError> {
        Self::builder().address(addr).build()
    }

    /// The same agent, sending `token` as `X-Consul-Token` on every request.
    pub fn with_token(self, token: Token) -> Self {
        let mut inner = (*self.inner).clone();
        inner.token = Some(token);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The same agent, closing pooled connections that stay idle for `idle` (default
    /// [`DEFAULT_IDLE_TIMEOUT`]). The returned client has a pool of its own.
    ///
    /// ```
    /// use std::time::Duration;
    /// let agent = consul_connect::agent::AgentClient::new("127.0.0.1:8500")?
    ///     .with_idle_timeout(Duration::from_secs(15));
    /// assert_eq!(agent.idle_timeout(), Duration::from_secs(15));
    /// # Ok::<(), consul_connect::agent::AgentError>(())
    /// ```
    pub fn with_idle_timeout(self, idle: Duration) -> Self {
        let mut inner = (*self.inner).clone();
        inner.http = pooled_client(inner.connector.clone(), idle);
        inner.idle_timeout = idle;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The same agent, scoped to the namespace `ns` (Consul Enterprise): `?ns=` on every
    /// request, as Go's client sends it. `default` is the namespace of Consul OSS, which
    /// refuses any other with [`AgentError::EnterpriseOnly`].
    pub fn with_namespace(self, ns: impl Into<String>) -> Self {
        let mut inner = (*self.inner).clone();
        inner.namespace = Some(ns.into());
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The same agent, scoped to the admin partition `partition` (Consul Enterprise 1.11+):
    /// `?partition=` on every request.
    pub fn with_partition(self, partition: impl Into<String>) -> Self {
        let mut inner = (*self.inner).clone();
        inner.partition = Some(partition.into());
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The namespace every request is scoped to, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    /// The admin partition every request is scoped to, if any.
    pub fn partition(&self) -> Option<&str> {
        self.inner.partition.as_deref()
    }

    /// How long a pooled connection to the agent may stay idle before it is closed.
    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    /// The agent's address: `host:port` for plain HTTP over TCP, the whole URL otherwise
    /// (`https://host:port`, `unix:///path`).
    pub fn address(&self) -> &str {
        &self.inner.display
    }

    /// `GET /v1/agent/connect/ca/roots`.
    pub async fn roots(&self, opts: &QueryOptions) -> Result<Indexed<CaRootList>, AgentError> {
        self.get("/v1/agent/connect/ca/roots", &[], opts).await
    }

    /// `GET /v1/agent/connect/ca/leaf/<service>`.
    pub async fn leaf(
        &self,
        service: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<LeafCert>, AgentError> {
        self.get(
            &format!("/v1/agent/connect/ca/leaf/{}", encode(service)),
            &[],
            opts,
        )
        .await
    }

    /// `POST /v1/agent/connect/authorize`.
    pub async fn authorize(&self, req: &AuthorizeRequest) -> Result<AuthorizeResponse, AgentError> {
        self.send(Method::POST, "/v1/agent/connect/authorize", Some(req))
            .await
    }

    /// `GET /v1/health/connect/<service>?passing`: Connect-capable healthy instances.
    pub async fn health_connect(
        &self,
        service: &str,
        tag: Option<&str>,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, AgentError> {
        let mut params = vec![("passing", "1")];
        if let Some(tag) = tag {
            params.push(("tag", tag));
        }
        self.get(
            &format!("/v1/health/connect/{}", encode(service)),
            &params,
            opts,
        )
        .await
    }

    /// `GET /v1/query/<id or name>/execute?connect=true`: Connect-capable instances found by a
    /// prepared query.
    pub async fn execute_query_connect(
        &self,
        query: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<PreparedQueryResult>, AgentError> {
        let path = format!("/v1/query/{}/execute", encode(query));
        self.get(&path, &[("connect", "true")], opts).await
    }

    /// What the agent decides for callers no intention matches, from `GET /v1/agent/self`
    /// read as each Consul version offers it: `DebugConfig.DefaultIntentionPolicy` (1.18+),
    /// else `DebugConfig.ACLsEnabled` with `ACLDefaultPolicy` (up to 1.10) or
    /// `ACLResolverSettings.ACLDefaultPolicy` (1.11+), else the `X-Consul-Default-Acl-Policy`
    /// header (1.9+, also on the 403 a token without `agent:read` gets). When none of them can
    /// be read, the answer is deny, with a warning saying why.
    ///
    /// # Errors
    ///
    /// Only when the agent cannot be asked at all (unreachable, timed out).
    pub async fn intention_default(
        &self,
    ) -> Result<crate::intentions::DefaultDecision, AgentError> {
        Ok(self.authorization_settings().await?.0)
    }

    /// How the agent words authorization reasons: from the Consul version `GET /v1/agent/self`
    /// reports, or, for a token that may not read it, from whether the 403 carries the
    /// `X-Consul-Default-Acl-Policy` header that only Consul 1.9+ sends.
    ///
    /// # Errors
    ///
    /// Only when the agent cannot be asked at all (unreachable, timed out).
    pub async fn reason_wording(&self) -> Result<crate::intentions::Wording, AgentError> {
        Ok(self.authorization_settings().await?.1)
    }

    /// [`intention_default`](Self::intention_default) and
    /// [`reason_wording`](Self::reason_wording) from one read of `/v1/agent/self`.
    pub(crate) async fn authorization_settings(
        &self,
    ) -> Result<
        (
            crate::intentions::DefaultDecision,
            crate::intentions::Wording,
        ),
        AgentError,
    > {
        let answer = self
            .request(Method::GET, "/v1/agent/self", Bytes::new(), REQUEST_TIMEOUT)
            .await?;
        let header = answer.default_acl_policy.as_deref();
        let default = match default_policy::from_agent_self(answer.status, &answer.body, header) {
            default_policy::Found::Read(decision) => decision,
            default_policy::Found::Unknown(why) => {
                tracing::warn!(%why, "the agent's default for callers no intention matches cannot be read; denying them");
                crate::intentions::DefaultDecision::AclDefaultDeny
            }
        };
        let wording = default_policy::wording_from_agent_self(answer.status, &answer.body, header);
        Ok((default, wording))
    }

    /// `GET /v1/connect/intentions/match?by=destination&name=<service>`.
    pub async fn intentions_for_destination(
        &self,
        service: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<Intention>>, AgentError> {
        let got: Indexed<IntentionMatches> = self
            .get(
                "/v1/connect/intentions/match",
                &[("by", "destination"), ("name", service)],
                opts,
            )
            .await?;
        let list = got.value.into_values().next().flatten().unwrap_or_default();
        Ok(Indexed {
            value: list,
            index: got.index,
        })
    }

    /// `POST /v1/connect/intentions`: creates an intention, returning its ID.
    pub async fn create_intention(&self, intention: &Intention) -> Result<String, AgentError> {
        let created: IntentionCreated = self
            .send(Method::POST, "/v1/connect/intentions", Some(intention))
            .await?;
        Ok(created.id)
    }

    /// `PUT /v1/agent/service/register`.
    pub async fn register(&self, reg: &ServiceRegistration) -> Result<(), AgentError> {
        self.send_no_body(Method::PUT, "/v1/agent/service/register", Some(reg))
            .await
    }

    /// `PUT /v1/agent/service/deregister/<id>`.
    pub async fn deregister(&self, service_id: &str) -> Result<(), AgentError> {
        let path = format!("/v1/agent/service/deregister/{}", encode(service_id));
        self.send_no_body::<()>(Method::PUT, &path, None).await
    }

    /// A GET with query parameters and blocking options, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, &str)],
        opts: &QueryOptions,
    ) -> Result<Indexed<T>, AgentError> {
        let mut query = form_query(params);
        if let Some(dc) = &opts.datacenter {
            push_param(&mut query, "dc", dc);
        }
        let mut timeout = REQUEST_TIMEOUT;
        if opts.index > 0 {
            push_param(&mut query, "index", &opts.index.to_string());
            let wait = opts.wait.unwrap_or(Duration::from_secs(300));
            push_param(&mut query, "wait", &format!("{}ms", wait.as_millis()));
            // The agent may add up to wait/16 of jitter; allow that and some slack.
            timeout = wait + wait / 16 + REQUEST_TIMEOUT;
        }
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let answer = self
            .request(Method::GET, &uri, Bytes::new(), timeout)
            .await?;
        let value = decode(path, answer.status, &answer.body)?;
        Ok(Indexed {
            value,
            index: answer.index,
        })
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, AgentError> {
        let answer = self
            .request(method, path, json_bytes(body), REQUEST_TIMEOUT)
            .await?;
        decode(path, answer.status, &answer.body)
    }

    async fn send_no_body<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), AgentError> {
        let answer = self
            .request(method, path, json_bytes(body), REQUEST_TIMEOUT)
            .await?;
        check_status(path, answer.status, &answer.body)
    }

    async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, AgentError> {
        let path = path_and_query
            .split('?')
            .next()
            .unwrap_or(path_and_query)
            .to_owned();
        let unreachable =
            |source: Box<dyn std::error::Error + Send + Sync>| AgentError::Unreachable {
                addr: self.address().to_owned(),
                path: path.clone(),
                source,
            };
        let mut req = Request::builder()
            .method(method)
            .uri(format!(
                "{}{}",
                self.inner.base,
                self.inner.path_with_scope(path_and_query)
            ))
            .header(
                header::USER_AGENT,
                concat!("consul-connect-rust/", env!("CARGO_PKG_VERSION")),
            );
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.inner.token {
            req = req.header("X-Consul-Token", token.expose());
        }
        if let Some(auth) = &self.inner.basic_auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| unreachable(Box::new(e)))?;
        let exchange = async {
            let resp = self
                .inner
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(connect_error(e)))?;
            let status = resp.status();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let index = header("X-Consul-Index")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let default_acl_policy = header("X-Consul-Default-Acl-Policy");
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(Box::new(e)))?
                .to_bytes();
            Ok(Answer {
                status,
                index,
                default_acl_policy,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AgentError::Timeout {
                addr: self.address().to_owned(),
                path: path.clone(),
                timeout,
            })?
    }
}

/// One answer of the agent: what the client reads of it.
struct Answer {
    status: StatusCode,
    /// `X-Consul-Index`, 0 when absent.
    index: u64,
    /// `X-Consul-Default-Acl-Policy` (Consul 1.9+, on every answer).
    default_acl_policy: Option<String>,
    body: Bytes,
}

/// The pooled HTTP client to the agent. hyper-util's pool only expires idle connections when
/// it has a timer: without `pool_timer`, `pool_idle_timeout` is silently ignored and every
/// connection stays open for the client's life.
fn pooled_client(connector: AgentConnector, idle: Duration) -> Client<AgentConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle)
        .build(connector)
}

/// A failed exchange as one message with its causes: hyper's own text ("client error
/// (Connect)") says nothing of why, the causes do (the agent's certificate is not signed by the
/// CA given, the agent wants a client certificate, the socket does not exist).
fn connect_error(e: hyper_util::client::legacy::Error) -> Box<dyn std::error::Error + Send + Sync> {
    crate::telemetry::error_chain(&e).into()
}

fn json_bytes<B: Serialize>(body: Option<&B>) -> Bytes {
    // Serializing our own wire types cannot fail (string keys, no non-finite floats).
    body.and_then(|b| serde_json::to_vec(b).ok())
        .map(Bytes::from)
        .unwrap_or_default()
}

fn check_status(path: &str, status: StatusCode, body: &[u8]) -> Result<(), AgentError> {
    if status.is_success() {
        return Ok(());
    }
    let message = String::from_utf8_lossy(body).trim().to_owned();
    if status == StatusCode::FORBIDDEN {
        return Err(AgentError::PermissionDenied {
            path: path.to_owned(),
            message,
            needed: needed_permission(path),
        });
    }
    // 400 for ?ns= / ?partition= / X-Consul-Namespace, 500 for a namespace inside a name:
    // "... is a Consul Enterprise feature" / "... are a Consul Enterprise feature".
    if message.contains("a Consul Enterprise feature") {
        return Err(AgentError::EnterpriseOnly {
            path: path.to_owned(),
            status,
            message,
        });
    }
    Err(AgentError::Status {
        path: path.to_owned(),
        status,
        message,
    })
}

fn decode<T: DeserializeOwned>(
    path: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<T, AgentError> {
    check_status(path, status, body)?;
    serde_json::from_slice(body).map_err(|source| AgentError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// The ACL rule Consul checks for an endpoint, to make a 403 actionable.
fn needed_permission(path: &str) -> &'static str {
    if path.starts_with("/v1/agent/connect/ca/leaf/") {
        "service:write on the service"
    } else if path.starts_with("/v1/agent/connect/authorize") {
        "service:write on the target service"
    } else if path.starts_with("/v1/connect/intentions") {
        "intentions:read (or write) on the destination"
    } else if path.starts_with("/v1/connect/ca/configuration") {
        "operator:read (or write)"
    } else if path.starts_with("/v1/agent/service/") {
        "service:write on the service"
    } else if path.starts_with("/v1/health/") {
        // 1.16+ answers 403 here (before, an empty list).
        "service:read on the service"
    } else {
        "service:read or node:read"
    }
}

fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn form_query(params: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        out.append_pair(k, v);
    }
    out.finish()
}

fn push_param(query: &mut String, key: &str, value: &str) {
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str(&form_query(&[(key, value)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_parsed_like_consul_clients() {
        assert_eq!(
            AgentClient::new("127.0.0.1:8500").unwrap().address(),
            "127.0.0.1:8500"
        );
        assert_eq!(
            AgentClient::new("http://localhost:8500/")
                .unwrap()
                .address(),
            "localhost:8500"
        );
        for bad in ["", "unix://", "ftp://x", "http://", "x:1/path", "x:1?q"] {
            assert!(AgentClient::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_is_never_printed() {
        let client = AgentClient::new("127.0.0.1:1")
            .unwrap()
            .with_token(Token::new("s3cr3t-token"));
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    #[test]
    fn backoff_grows_jitters_and_is_capped() {
        let config = WatchConfig::default();
        for errors in 1..40 {
            let d = config.backoff(errors);
            let full = config
                .backoff_base
                .saturating_mul(1 << (errors - 1).min(20))
                .min(config.backoff_max);
            assert!(
                d >= full / 2 && d <= full,
                "{errors}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        assert!(config.backoff(30) <= config.backoff_max);
    }

    #[test]
    fn forbidden_names_the_permission() {
        let err = check_status(
            "/v1/agent/connect/ca/leaf/db",
            StatusCode::FORBIDDEN,
            b"Permission denied",
        )
        .unwrap_err();
        assert!(err.to_string().contains("service:write"), "{err}");
    }
}
