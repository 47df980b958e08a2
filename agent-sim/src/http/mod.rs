//! agent-sim's HTTP API: Consul's routes, status codes, messages and headers.

mod acl;
mod catalog;
mod config;
mod connect;
mod federation;
mod intentions;
mod limits;
mod queries;
pub(crate) mod server;
mod shapes;

pub use federation::INTERMEDIATE_PATH;
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

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
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
}

#[derive(Debug, Default)]
struct AclCache {
    index: u64,
    by_secret: std::collections::HashMap<String, Arc<Authorizer>>,
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
        Self {
            store,
            cache,
            acl_cache: Arc::default(),
            allow_all: Arc::new(Authorizer::new(&[], DefaultPolicy::Allow, true)),
            acl_rules,
            federation,
        }
    }

    /// The same state, federated with other datacenters as `federation` says.
    pub fn with_federation(mut self, federation: Arc<crate::federation::Federation>) -> Self {
        self.federation = federation;
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

async fn limit_blocking(
    axum::extract::State(limits): axum::extract::State<Arc<BlockingLimits>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !is_blocking(request.uri()) {
        return next.run(request).await;
    }
    let Some(_slot) = limits.acquire(peer.ip()) else {
        return plain(
            StatusCode::TOO_MANY_REQUESTS,
            "Your IP is issuing too many concurrent connections, please rate limit your calls\n"
                .into(),
        );
    };
    next.run(request).await
}

/// Whether a request is a blocking query, as the handlers will read it: the decoded query
/// string has `index` (`%69ndex=` is `index=` too).
fn is_blocking(uri: &Uri) -> bool {
    Query::from_uri(uri).has("index")
}

/// The full router.
pub fn router(state: AppState) -> Router {
    let limits = Arc::new(BlockingLimits::default());
    Router::new()
        .merge(acl::routes())
        .merge(catalog::routes())
        .merge(config::routes())
        .merge(connect::routes())
        .merge(intentions::routes())
        .merge(queries::routes())
        .merge(federation::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            federation::forward,
        ))
        // Outside the forwarding: the namespace is refused where the request arrives, as
        // Consul's HTTP layer does before any RPC.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_namespaces,
        ))
        .layer(axum::middleware::from_fn_with_state(limits, limit_blocking))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            version_headers,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An OSS agent that knows namespaces refuses them where a handler would read them (Consul's
/// `parseEntMeta`): `X-Consul-Namespace`, then `?ns=`, before anything else.
async fn refuse_namespaces(
    axum::extract::State(app): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !app.store.settings().profile().refuses_namespaces
        || !reads_namespace(request.method(), request.uri().path())
    {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get("X-Consul-Namespace")
        .is_some_and(|v| !v.is_empty());
    let refusal = if header {
        Some("Invalid header: \"X-Consul-Namespace\"")
    } else if Query::from_uri(request.uri())
        .get("ns")
        .is_some_and(|ns| !ns.is_empty())
    {
        Some("Invalid query parameter: \"ns\"")
    } else {
        None
    };
    match refusal {
        Some(what) => ApiError::BadRequestPrefixed(format!(
            "{what} - Namespaces are a Consul Enterprise feature"
        ))
        .into_response(),
        None => next.run(request).await,
    }
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
async fn version_headers(
    axum::extract::State(app): axum::extract::State<AppState>,
    mut resp: Response,
) -> Response {
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

/// `X-Consul-Effective-Consistency` for a read: `consistent`, `stale` or `leader`.
pub fn effective_consistency(query: &Query) -> &'static str {
    if query.has("consistent") {
        "consistent"
    } else if query.has("stale") {
        "stale"
    } else {
        "leader"
    }
}

/// The query string, with Consul's presence flags (`?passing`, `?stale`) kept.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn from_uri(uri: &Uri) -> Self {
        let pairs = uri
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self { pairs }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All values of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present (with any value or none).
    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// A boolean flag: present bare, or with a true-ish value.
    pub fn flag(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => !matches!(v, "false" | "0"),
        }
    }

    /// `?pretty`.
    pub fn pretty(&self) -> bool {
        self.has("pretty")
    }

    /// `?index=` and `?wait=`, checked as Consul checks them.
    pub fn blocking(&self) -> Result<Option<Blocking>, ApiError> {
        if self.has("stale") && self.has("consistent") {
            return Err(ApiError::BadRequest(
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
            ));
        }
        if self.has("cached") && self.has("consistent") {
            return Err(ApiError::BadRequest(
                "Cannot specify ?cached with ?consistent, conflicting semantics.".into(),
            ));
        }
        let wait = match self.get("wait") {
            None => None,
            Some(w) => Some(
                consul_connect_types::go::parse_duration(w)
                    .map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?,
            ),
        };
        let min_index = match self.get("index") {
            None => return Ok(None),
            Some(i) => i
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest("Invalid index".into()))?,
        };
        let wait = wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
        // Consul adds up to wait/16 of jitter so that many watchers do not return together.
        let jitter = match wait.as_nanos() as u64 / 16 {
            0 => Duration::ZERO,
            max => Duration::from_nanos(rand::rng().random_range(0..max)),
        };
        Ok(Some(Blocking {
            min_index,
            wait: wait + jitter,
        }))
    }

    /// Checks `?dc=` against the agent's datacenter.
    pub fn datacenter(&self, store: &Store) -> Result<(), ApiError> {
        match self.get("dc") {
            Some(dc) if !dc.is_empty() && dc != store.settings().datacenter => {
                Err(ApiError::Internal("No path to datacenter".into()))
            }
            _ => Ok(()),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Query {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Query::from_uri(&parts.uri))
    }
}

/// Serializes `value` as Go's encoder does: `<`, `>`, `&`, U+2028 and U+2029 escaped; with
/// `?pretty`, four-space indents and a final newline.
pub fn json_body<T: Serialize>(value: &T, pretty: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let written = if pretty {
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        value.serialize(&mut ser)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    if written.is_err() {
        // Our own types always serialize; answer an empty body rather than panic.
        return Vec::new();
    }
    if pretty {
        out.push(b'\n');
    }
    escape_like_go(out)
}

/// `<`, `>` and `&` can only appear inside JSON strings, so escaping bytes is exact.
fn escape_like_go(json: Vec<u8>) -> Vec<u8> {
    let needs = json.iter().any(|b| matches!(b, b'<' | b'>' | b'&'))
        || json
            .windows(3)
            .any(|w| w == "\u{2028}".as_bytes() || w == "\u{2029}".as_bytes());
    if !needs {
        return json;
    }
    let text = String::from_utf8_lossy(&json);
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// A JSON answer with optional Consul headers.
pub struct Json<'q> {
    body: Vec<u8>,
    headers: HeaderMap,
    _query: std::marker::PhantomData<&'q ()>,
}

impl<'q> Json<'q> {
    /// `value` as JSON, pretty if the query asked.
    pub fn new<T: Serialize>(value: &T, query: &'q Query) -> Self {
        Self {
            body: json_body(value, query.pretty()),
            headers: HeaderMap::new(),
            _query: std::marker::PhantomData,
        }
    }

    /// Adds `X-Consul-Index`, `X-Consul-KnownLeader: true` and `X-Consul-LastContact: 0`.
    pub fn meta(self, index: u64) -> Self {
        self.index(index)
            .header("X-Consul-KnownLeader", "true")
            .header("X-Consul-LastContact", "0")
    }

    /// Adds `X-Consul-Index` only.
    pub fn index(self, index: u64) -> Self {
        self.header("X-Consul-Index", &index.max(1).to_string())
    }

    /// Adds `X-Cache: HIT` with `Age: 0`, or `X-Cache: MISS`.
    pub fn cache(self, hit: bool) -> Self {
        if hit {
            self.header("X-Cache", "HIT").header("Age", "0")
        } else {
            self.header("X-Cache", "MISS")
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }
}

impl IntoResponse for Json<'_> {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.body));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.extend(self.headers);
        resp
    }
}

/// Go's JSON decoding matches field names case-insensitively; serde does not. Renames the
/// keys of `value` (recursively, but not inside free-form maps such as `Meta`) that match one
/// of `fields` ignoring case and underscores.
pub fn canonical_keys(mut value: serde_json::Value, fields: &[&str]) -> serde_json::Value {
    const FREE_FORM: &[&str] = &["Meta", "NodeMeta", "Config", "TaggedAddresses"];
    match &mut value {
        serde_json::Value::Object(map) => {
            let old = std::mem::take(map);
            for (key, v) in old {
                let key = fields
                    .iter()
                    .find(|f| same_field(f, &key))
                    .map_or(key, |f| (*f).to_owned());
                let v = if FREE_FORM.contains(&key.as_str()) {
                    v
                } else {
                    canonical_keys(v, fields)
                };
                map.insert(key, v);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items.iter_mut() {
                *item = canonical_keys(std::mem::take(item), fields);
            }
        }
        _ => {}
    }
    value
}

/// `SidecarService` matches `sidecarservice` and `sidecar_service` (Consul translates the
/// snake-case names its HCL and some clients use).
fn same_field(canonical: &str, key: &str) -> bool {
    let mut key_chars = key.chars().filter(|c| *c != '_');
    let mut canon_chars = canonical.chars();
    loop {
        match (canon_chars.next(), key_chars.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
            _ => return false,
        }
    }
}

/// Decodes a JSON body with Go's error texts for the common failures (`EOF` for an empty
/// body, `unexpected EOF` for a truncated one).
pub fn decode_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    fields: &[&str],
) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("EOF".into());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(go_json_error)?;
    serde_json::from_value(canonical_keys(value, fields)).map_err(|e| format!("json: {e}"))
}

fn go_json_error(e: serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected EOF".into(),
        _ => format!("invalid character: {e}"),
    }
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
            assert!(is_blocking(&uri.parse().unwrap()), "{uri}");
        }
        assert!(!is_blocking(
            &"/v1/health/service/db?reindex=5".parse().unwrap()
        ));
    }
}
