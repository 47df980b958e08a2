//! agent-sim's HTTP API: Consul's routes, status codes, messages and headers.

mod acl;
mod catalog;
mod config;
mod connect;
mod federation;
mod intentions;
mod limits;
mod messages;
mod queries;
pub(crate) mod server;
mod shapes;
mod spin;

pub use federation::INTERMEDIATE_PATH;
use messages::same_field;
pub use messages::{canonical_keys, decode_body, effective_consistency, json_body, Json, Query};
pub(crate) use server::{serve, Listener};

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use rand::Rng;
use serde::Serialize;

use crate::acl_rules::{Authorizer, DefaultPolicy};
use crate::acl_versions::AclRules;
use crate::cache::{ConnectCache, Partition};
use crate::profile::Profile;
use crate::state::acl::AclError;
use crate::state::{Blocking, Inner, Store, Table};

/// Consul's longest blocking wait.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul's blocking wait when `wait` is not given.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// What every handler shares: one reference-counted pointer, because axum clones the state for
/// every request and every middleware (one atomic increment and decrement each, not six).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// The fields of an [`AppState`].
#[derive(Debug, Clone)]
pub struct Shared {
    /// The state store.
    pub store: Arc<Store>,
    /// The agent cache for `/v1/agent/connect/*`.
    pub cache: Arc<ConnectCache>,
    /// Resolved token authorizers, valid for one ACL table index.
    acl_cache: Arc<std::sync::Mutex<AclCache>>,
    allow_all: Arc<Authorizer>,
    /// The ACL decisions of the emulated Consul version (from its profile).
    pub acl_rules: AclRules,
    /// The other datacenters.
    pub federation: Arc<crate::federation::Federation>,
    /// In-flight blocking queries per client address.
    blocking: Arc<BlockingLimits>,
}

#[derive(Debug, Default)]
struct AclCache {
    index: u64,
    by_secret: std::collections::HashMap<String, Arc<Authorizer>>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State for the router.
    pub fn new(store: Arc<Store>, cache: Arc<ConnectCache>) -> Self {
        let acl_rules = store.settings().profile().acl;
        let federation = Arc::new(crate::federation::Federation::new(
            store.settings().datacenter.clone(),
            None,
            None,
        ));
        Self(Arc::new(Shared {
            store,
            cache,
            acl_cache: Arc::default(),
            allow_all: Arc::new(Authorizer::new(&[], DefaultPolicy::Allow, true)),
            acl_rules,
            federation,
            blocking: Arc::default(),
        }))
    }

    /// The same state, federated with other datacenters as `federation` says.
    pub fn with_federation(mut self, federation: Arc<crate::federation::Federation>) -> Self {
        Arc::make_mut(&mut self.0).federation = federation;
        self
    }

    /// What `token` may do, resolved from state already under the store's lock (for reads
    /// that re-run in the background, such as the agent cache's refreshes, which must see a
    /// revoked or changed token the next time they run).
    pub fn acl_in(&self, inner: &Inner, token: &RequestToken) -> Result<Arc<Authorizer>, AclError> {
        let settings = &self.store.settings().acl;
        if !settings.enabled {
            return Ok(self.allow_all.clone());
        }
        Ok(Arc::new(
            inner.acl.authorizer(&token.0, settings.default_policy)?,
        ))
    }

    /// What the request's token may do. With ACLs off, everything. Resolved tokens are kept
    /// until the ACL table changes, so cache hits do not touch the store.
    pub fn acl(&self, token: &RequestToken) -> Result<Arc<Authorizer>, ApiError> {
        let settings = &self.store.settings().acl;
        if !settings.enabled {
            return Ok(self.allow_all.clone());
        }
        let index = self.store.current_index(Table::Acl);
        {
            let cache = self.acl_cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.index == index {
                if let Some(found) = cache.by_secret.get(&token.0) {
                    return Ok(found.clone());
                }
            }
        }
        let authorizer = Arc::new(
            self.store
                .read(|inner| inner.acl.authorizer(&token.0, settings.default_policy))?,
        );
        let mut cache = self.acl_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.index != index {
            cache.by_secret.clear();
            cache.index = index;
        }
        cache.by_secret.insert(token.0.clone(), authorizer.clone());
        Ok(authorizer)
    }

    /// The authorize decision when no intention matches: Consul resolves the anonymous
    /// token, so it follows the ACL default policy (or allows when ACLs are off).
    pub fn default_decision(&self) -> consul_connect_types::intentions::DefaultDecision {
        use consul_connect_types::intentions::DefaultDecision;
        let acl = &self.store.settings().acl;
        match (acl.enabled, acl.default_policy) {
            (false, _) => DefaultDecision::AclsDisabled,
            (true, DefaultPolicy::Allow) => DefaultDecision::AclDefaultAllow,
            (true, DefaultPolicy::Deny) => DefaultDecision::AclDefaultDeny,
        }
    }

    /// The cache partition of a request: the agent's datacenter and the caller's token.
    pub fn partition(&self, token: &RequestToken) -> Partition {
        Partition {
            datacenter: self.store.settings().datacenter.clone(),
            token: token.0.clone(),
        }
    }
}

/// The request's ACL token: `?token=`, else `X-Consul-Token`, else `Authorization: Bearer`
/// (empty for anonymous).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RequestToken(pub String);

impl std::fmt::Debug for RequestToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "RequestToken(anonymous)"
        } else {
            "RequestToken(<redacted>)"
        })
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = Query::from_uri(&parts.uri);
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let token = query
            .get("token")
            .or_else(|| header("X-Consul-Token"))
            .or_else(|| {
                header("Authorization").and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
            })
            .unwrap_or("")
            .trim()
            .to_owned();
        Ok(RequestToken(token))
    }
}

/// Blocking queries one client address may hold at once (Consul's
/// `limits.http_max_conns_per_client` default); past it, 429.
pub const MAX_BLOCKING_PER_CLIENT: usize = 200;

/// In-flight blocking queries per client address.
#[derive(Debug, Default)]
struct BlockingLimits {
    by_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// Releases a client's blocking-query slot when the request is done.
struct BlockingSlot<'a> {
    limits: &'a BlockingLimits,
    ip: std::net::IpAddr,
}

impl BlockingLimits {
    fn acquire(&self, ip: std::net::IpAddr) -> Option<BlockingSlot<'_>> {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= MAX_BLOCKING_PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(BlockingSlot { limits: self, ip })
    }
}

impl Drop for BlockingSlot<'_> {
    fn drop(&mut self) {
        let mut by_ip = self.limits.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Whether a request is a blocking query, as the handlers will read it: the decoded query
/// string has `index` (`%69ndex=` is `index=` too).
fn is_blocking(query: &Query) -> bool {
    query.has("index")
}

/// The full router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(acl::routes())
        .merge(catalog::routes())
        .merge(config::routes())
        .merge(connect::routes())
        .merge(intentions::routes())
        .merge(queries::routes())
        .merge(federation::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), front))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// What runs around every handler, in this order: the blocking-query limit per client (429),
/// the refusal of namespaces by an OSS agent, forwarding to another datacenter; then the
/// emulated version's headers on the answer. One layer rather than four: axum clones the
/// state and the inner service in each layer, for every request.
async fn front(
    axum::extract::State(app): axum::extract::State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let query = Query::from_uri(request.uri());
    let response = 'answer: {
        // Held until the answer is made: a blocking query's slot for its client.
        let mut _slot = None;
        if is_blocking(&query) {
            _slot = app.blocking.acquire(peer.ip());
            if _slot.is_none() {
                break 'answer plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Your IP is issuing too many concurrent connections, please rate limit your \
                     calls\n"
                        .into(),
                );
            }
        }
        // Before forwarding: the namespace is refused where the request arrives, as Consul's
        // HTTP layer does before any RPC.
        if let Some(refusal) = namespace_refusal(&app, &request, &query) {
            break 'answer refusal;
        }
        federation::forward(&app, query, request, next).await
    };
    version_headers(&app, response)
}

/// An OSS agent that knows namespaces refuses them where a handler would read them (Consul's
/// `parseEntMeta`): `X-Consul-Namespace`, then `?ns=`, before anything else.
fn namespace_refusal(
    app: &AppState,
    request: &axum::extract::Request,
    query: &Query,
) -> Option<Response> {
    if !app.store.settings().profile().refuses_namespaces
        || !reads_namespace(request.method(), request.uri().path())
    {
        return None;
    }
    let header = request
        .headers()
        .get("X-Consul-Namespace")
        .is_some_and(|v| !v.is_empty());
    let what = if header {
        "Invalid header: \"X-Consul-Namespace\""
    } else if query.get("ns").is_some_and(|ns| !ns.is_empty()) {
        "Invalid query parameter: \"ns\""
    } else {
        return None;
    };
    Some(
        ApiError::BadRequestPrefixed(format!(
            "{what} - Namespaces are a Consul Enterprise feature"
        ))
        .into_response(),
    )
}

/// The endpoints whose Consul handler parses a namespace (`parseEntMeta`).
fn reads_namespace(method: &Method, path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "/v1/agent/services",
        "/v1/agent/service/",
        "/v1/agent/checks",
        "/v1/agent/check/",
        "/v1/agent/health/service/",
        "/v1/agent/connect/authorize",
        "/v1/agent/connect/ca/leaf/",
        "/v1/catalog/register",
        "/v1/catalog/deregister",
        "/v1/catalog/services",
        "/v1/catalog/service/",
        "/v1/catalog/connect/",
        "/v1/catalog/node/",
        "/v1/catalog/node-services/",
        "/v1/catalog/gateway-services/",
        "/v1/health/",
        "/v1/config",
    ];
    if PREFIXES.iter().any(|p| path.starts_with(p)) {
        return true;
    }
    // Intentions: every endpoint but get and delete by ID.
    match path.strip_prefix("/v1/connect/intentions") {
        Some("" | "/") => true,
        Some("/check" | "/match" | "/exact") => true,
        Some(_) => method == Method::PUT,
        None => false,
    }
}

/// The headers the emulated version adds to answers: `X-Consul-Default-Acl-Policy` on every
/// one, `X-Consul-Query-Backend` wherever query meta is set.
fn version_headers(app: &AppState, mut resp: Response) -> Response {
    let settings = app.store.settings();
    let profile = settings.profile();
    let headers = resp.headers_mut();
    if profile.query_backend_header
        && headers.contains_key("X-Consul-KnownLeader")
        && !headers.contains_key("X-Consul-Query-Backend")
    {
        headers.insert(
            "X-Consul-Query-Backend",
            HeaderValue::from_static("blocking-query"),
        );
    }
    if profile.default_acl_policy_header {
        let policy = match (settings.acl.enabled, settings.acl.default_policy) {
            (true, DefaultPolicy::Deny) => "deny",
            _ => "allow",
        };
        headers.insert(
            "X-Consul-Default-Acl-Policy",
            HeaderValue::from_static(policy),
        );
    }
    resp
}

async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "404 page not found\n".to_owned())
}

/// Restricts a route to the listed methods the way Consul does: `OPTIONS` answers 200 with
/// `Allow`, other methods 405 `method X not allowed` with `Allow`.
fn allow(router: MethodRouter<AppState>, methods: &'static str) -> MethodRouter<AppState> {
    router.fallback(move |method: Method| async move {
        let allow = format!("OPTIONS,{methods}");
        let mut resp = if method == Method::OPTIONS {
            StatusCode::OK.into_response()
        } else {
            plain(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed"),
            )
        };
        if let Ok(value) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, value);
        }
        resp
    })
}

/// An error answered the way Consul answers it: a status code and a plain-text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400 written directly by a handler (no prefix).
    BadRequest(String),
    /// 400 from a typed bad-request error: `Bad request: <msg>`.
    BadRequestPrefixed(String),
    /// 401.
    Unauthorized(String),
    /// 403.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 429 `Rate limit reached, try again later`.
    RateLimited,
    /// 500 with the message.
    Internal(String),
}

impl ApiError {
    /// 400 for a body that does not decode, with or without `Bad request: ` as the emulated
    /// version writes it.
    pub fn decode_failed(profile: &Profile, e: impl std::fmt::Display) -> Self {
        let m = format!("Request decode failed: {e}");
        if profile.decode_errors_prefixed {
            ApiError::BadRequestPrefixed(m)
        } else {
            ApiError::BadRequest(m)
        }
    }
}

impl From<AclError> for ApiError {
    fn from(e: AclError) -> Self {
        match e {
            AclError::NotFound | AclError::PermissionDenied | AclError::BootstrapDone(_) => {
                ApiError::Forbidden(e.to_string())
            }
            AclError::Disabled => ApiError::Unauthorized(e.to_string()),
            AclError::Invalid(m) => ApiError::Internal(m),
            AclError::NoSuchPolicy => ApiError::NotFound(String::new()),
        }
    }
}

impl From<crate::state::persist::PersistError> for ApiError {
    fn from(e: crate::state::persist::PersistError) -> Self {
        tracing::error!(error = %e, "write not saved to the data dir");
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    /// 403 `Permission denied`.
    pub fn denied() -> Self {
        ApiError::Forbidden("Permission denied".into())
    }
}

/// `Ok` when `acl` may write `service`; else 403 as the emulated version words a refused agent
/// write.
pub fn require_service_write(
    acl: &Authorizer,
    profile: &Profile,
    service: &str,
) -> Result<(), ApiError> {
    require_service_write_named(acl, profile, service, service)
}

/// As [`require_service_write`], the refusal naming `named` (Consul names the new
/// registration when the instance it replaces is not writable).
pub fn require_service_write_named(
    acl: &Authorizer,
    profile: &Profile,
    service: &str,
    named: &str,
) -> Result<(), ApiError> {
    match (acl.service_write(service), profile.denials_name_permission) {
        (true, _) => Ok(()),
        (false, true) => Err(ApiError::Forbidden(format!(
            "Permission denied: Missing service:write on {named}"
        ))),
        (false, false) => Err(ApiError::denied()),
    }
}

/// `Ok` when `allowed`, else 403 `Permission denied`.
pub fn require(allowed: bool) -> Result<(), ApiError> {
    if allowed {
        Ok(())
    } else {
        Err(ApiError::denied())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::BadRequestPrefixed(m) => {
                (StatusCode::BAD_REQUEST, format!("Bad request: {m}"))
            }
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached, try again later".to_owned(),
            ),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        plain(status, body)
    }
}

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn blocking_queries_are_counted_however_index_is_spelled() {
        for uri in [
            "/v1/health/service/db?index=5",
            "/v1/health/service/db?%69ndex=5",
            "/v1/health/service/db?passing&%69%6E%64%65%78=5&wait=1s",
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert!(is_blocking(&Query::from_uri(&uri)), "{uri}");
        }
        let reindex: Uri = "/v1/health/service/db?reindex=5".parse().unwrap();
        assert!(!is_blocking(&Query::from_uri(&reindex)));
    }
}
