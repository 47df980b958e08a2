//! Registration and discovery: agent services, catalog, health, agent self.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use consul_connect_types::api::ServiceRegistration;
use serde_json::json;

use super::{allow, decode_body, require, ApiError, AppState, Json, Query, RequestToken};
use crate::acl_rules::Authorizer;
use crate::cache::{wait_for, CachedBody};
use crate::state::catalog::{CatalogError, ServiceFilter};
use crate::state::Table;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Field names of a registration and its nested objects, for Go-style case-insensitive
/// decoding (clients such as py-consul send `name`, `port`, `check`...).
const REGISTER_FIELDS: &[&str] = &[
    "Kind",
    "ID",
    "Name",
    "Tags",
    "Port",
    "Address",
    "Meta",
    "Weights",
    "EnableTagOverride",
    "Proxy",
    "Connect",
    "Check",
    "Checks",
    "Native",
    "SidecarService",
    "Passing",
    "Warning",
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "Upstreams",
    "DestinationType",
    "DestinationNamespace",
    "DestinationName",
    "Datacenter",
    "LocalBindAddress",
    "LocalBindPort",
    "Config",
    "CheckID",
    "TTL",
    "HTTP",
    "TCP",
    "Interval",
    "Status",
    "Notes",
    "DeregisterCriticalServiceAfter",
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/service/register", allow(put(register), "PUT"))
        .route(
            "/v1/agent/service/deregister/{id}",
            allow(put(deregister), "PUT"),
        )
        .route("/v1/agent/services", allow(get(agent_services), "GET"))
        .route("/v1/agent/service/{id}", allow(get(agent_service), "GET"))
        .route("/v1/status/leader", allow(get(status_leader), "GET"))
        .route("/v1/status/peers", allow(get(status_peers), "GET"))
        .route("/v1/agent/self", allow(get(agent_self), "GET"))
        .route("/v1/agent/check/pass/{id}", allow(put(check_pass), "PUT"))
        .route("/v1/agent/check/warn/{id}", allow(put(check_warn), "PUT"))
        .route("/v1/agent/check/fail/{id}", allow(put(check_fail), "PUT"))
        .route(
            "/v1/agent/check/update/{id}",
            allow(put(check_update), "PUT"),
        )
        .route("/v1/catalog/services", allow(get(catalog_services), "GET"))
        .route(
            "/v1/catalog/service/{name}",
            allow(get(catalog_service), "GET"),
        )
        .route(
            "/v1/catalog/connect/{name}",
            allow(get(catalog_connect), "GET"),
        )
        .route(
            "/v1/health/service/{name}",
            allow(get(health_service), "GET"),
        )
        .route(
            "/v1/health/connect/{name}",
            allow(get(health_connect), "GET"),
        )
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::BadRequest(m) => ApiError::BadRequest(m),
            CatalogError::Internal(m) => ApiError::Internal(m),
        }
    }
}

async fn register(
    State(app): State<AppState>,
    token: RequestToken,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let reg: ServiceRegistration = decode_body(&body, REGISTER_FIELDS)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
    let acl = app.acl(&token)?;
    let profile = app.store.settings().profile();
    super::require_service_write(&acl, profile, &reg.name)?;
    if let Some(proxy) = reg.proxy.as_ref().filter(|_| reg.kind == "connect-proxy") {
        super::require_service_write(&acl, profile, &proxy.destination_service_name)?;
    }
    let id = if reg.id.is_empty() {
        reg.name.clone()
    } else {
        reg.id.clone()
    };
    // The sidecar is registered too, so Consul vets it as a registration of its own.
    let sidecar = reg
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_deref())
        .map(|s| {
            let id = if s.id.is_empty() {
                format!("{id}-sidecar-proxy")
            } else {
                s.id.clone()
            };
            let name = if s.name.is_empty() {
                format!("{}-sidecar-proxy", reg.name)
            } else {
                s.name.clone()
            };
            (id, name)
        });
    if let Some((_, name)) = &sidecar {
        super::require_service_write(&acl, profile, name)?;
    }
    let now = app.store.clock().now();
    app.store.write(|inner, index, changes| {
        // Whatever a registration replaces must be writable too (Consul's
        // `vetServiceRegister` checks the existing instance's name).
        let existing = |id: &str| {
            inner
                .catalog
                .services()
                .find(|s| s.reg.id == id)
                .map(|s| s.reg.name.clone())
        };
        let replaced = [
            Some((id.as_str(), reg.name.as_str())),
            sidecar
                .as_ref()
                .map(|(id, name)| (id.as_str(), name.as_str())),
        ];
        for (id, new_name) in replaced.into_iter().flatten() {
            if let Some(name) = existing(id) {
                super::require_service_write_named(&acl, profile, &name, new_name)?;
            }
        }
        inner.catalog.register(reg, index, now)?;
        changes.touch(Table::Services);
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::OK)
}

async fn deregister(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
) -> Result<StatusCode, ApiError> {
    let acl = app.acl(&token)?;
    let profile = app.store.settings().profile();
    let acls_on = app.store.settings().acl.enabled;
    app.store.write(|inner, _, changes| {
        let name = inner
            .catalog
            .services()
            .find(|s| s.reg.id == id)
            .map(|s| s.reg.name.clone());
        match name {
            Some(name) => {
                super::require_service_write(&acl, profile, &name)?;
                inner.catalog.deregister(&id);
                changes.touch(Table::Services);
            }
            // With ACLs enabled Consul's check finds no such service and says so; with ACLs
            // off it answers 200 for an unknown ID.
            None if acls_on => return Err(ApiError::Internal(format!("Unknown service {id:?}"))),
            None => {}
        }
        Ok(())
    })?;
    Ok(StatusCode::OK)
}

async fn agent_services(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let acl = app.acl(&token)?;
    let mut services = app.store.read(|inner| inner.catalog.agent_services());
    services.retain(|_, s| acl.service_read(&s.service));
    let settings = app.store.settings();
    let body =
        settings
            .profile()
            .service_shape
            .agent_services(&services, &settings.datacenter, false);
    Ok(Json::new(&body, &query).into_response())
}

/// `GET /v1/agent/service/<id>`: one local service, with its `ContentHash` (also sent as
/// `X-Consul-ContentHash`).
async fn agent_service(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let acl = app.acl(&token)?;
    let service = app
        .store
        .read(|inner| inner.catalog.agent_services().remove(&id))
        .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
    require(acl.service_read(&service.service))?;
    let settings = app.store.settings();
    let mut body =
        settings
            .profile()
            .service_shape
            .agent_services(&service, &settings.datacenter, true);
    let hash = content_hash(&body);
    if let Some(map) = body.as_object_mut() {
        map.insert("ContentHash".into(), json!(hash));
    }
    Ok(Json::new(&body, &query)
        .header("X-Consul-ContentHash", &hash)
        .into_response())
}

/// A stable 64-bit hash of a service's JSON, as hex (Consul hashes the struct; the value only
/// has to change when the service does).
fn content_hash(body: &serde_json::Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.to_string().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The Raft address of this single-server agent.
fn server_address(app: &AppState) -> String {
    format!("{}:8300", app.store.settings().node_address)
}

/// `GET /v1/status/leader`: this agent is its own leader.
async fn status_leader(State(app): State<AppState>, query: Query) -> Response {
    Json::new(&server_address(&app), &query).into_response()
}

/// `GET /v1/status/peers`: the Raft peers, this agent alone.
async fn status_peers(State(app): State<AppState>, query: Query) -> Response {
    Json::new(&[server_address(&app)], &query).into_response()
}

/// `GET /v1/agent/self`: the emulated version's dev agent answer (every field Consul sends)
/// with this agent's node, datacenter, version and ACL settings.
async fn agent_self(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let s = app.store.settings();
    require(app.acl(&token)?.agent_read(&s.node_name))?;
    let mut body: serde_json::Value = serde_json::from_str(s.profile().agent_self)
        .map_err(|e| ApiError::Internal(format!("agent/self template: {e}")))?;
    let policy = match s.acl.default_policy {
        crate::acl_rules::DefaultPolicy::Allow => "allow",
        crate::acl_rules::DefaultPolicy::Deny => "deny",
    };
    let version = s.profile().version;
    // Keys only overwritten where the version has them (`PrimaryDatacenter` is 1.10's).
    let set = |v: &mut serde_json::Value, key: &str, value: serde_json::Value| {
        if let Some(slot) = v.get_mut(key) {
            *slot = value;
        }
    };
    let config = &mut body["Config"];
    for (key, value) in [
        ("Datacenter", json!(s.datacenter)),
        ("PrimaryDatacenter", json!(s.datacenter)),
        ("NodeName", json!(s.node_name)),
        ("NodeID", json!(s.node_id)),
        ("Revision", json!("agent-sim")),
        ("Version", json!(version)),
    ] {
        set(config, key, value);
    }
    let debug = &mut body["DebugConfig"];
    let acl_dc = if debug["ACLDatacenter"] == "" {
        ""
    } else {
        s.datacenter.as_str()
    };
    for (key, value) in [
        ("Datacenter", json!(s.datacenter)),
        ("PrimaryDatacenter", json!(s.datacenter)),
        ("ACLDatacenter", json!(acl_dc)),
        ("NodeName", json!(s.node_name)),
        ("NodeID", json!(s.node_id)),
        ("Revision", json!("agent-sim")),
        ("Version", json!(version)),
        ("ACLsEnabled", json!(s.acl.enabled)),
        ("ACLDefaultPolicy", json!(policy)),
    ] {
        set(debug, key, value);
    }
    let member = &mut body["Member"];
    set(member, "Name", json!(s.node_name));
    set(member, "Addr", json!(s.node_address));
    set(member, "Port", json!(8301));
    let tags = &mut member["Tags"];
    for (key, value) in [
        ("dc", s.datacenter.clone()),
        ("id", s.node_id.clone()),
        ("build", format!("{version}:agent-sim")),
        ("acls", if s.acl.enabled { "1" } else { "0" }.to_owned()),
        ("port", "8300".to_owned()),
        ("wan_join_port", "8302".to_owned()),
    ] {
        set(tags, key, json!(value));
    }
    Ok(Json::new(&body, &query).into_response())
}

async fn check_pass(
    app: State<AppState>,
    id: Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<StatusCode, ApiError> {
    let note = query.get("note").unwrap_or("").to_owned();
    update_check(app, id, token, "passing", note).await
}

async fn check_warn(
    app: State<AppState>,
    id: Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<StatusCode, ApiError> {
    let note = query.get("note").unwrap_or("").to_owned();
    update_check(app, id, token, "warning", note).await
}

async fn check_fail(
    app: State<AppState>,
    id: Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<StatusCode, ApiError> {
    let note = query.get("note").unwrap_or("").to_owned();
    update_check(app, id, token, "critical", note).await
}

/// The body of `PUT /v1/agent/check/update/:id`.
#[derive(serde::Deserialize)]
struct CheckUpdate {
    #[serde(rename = "Status", default)]
    status: String,
    #[serde(rename = "Output", default)]
    output: String,
}

async fn check_update(
    app: State<AppState>,
    id: Path<String>,
    token: RequestToken,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let update: CheckUpdate = decode_body(&body, &["Status", "Output"])
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
    if !matches!(update.status.as_str(), "passing" | "warning" | "critical") {
        return Err(ApiError::BadRequest(format!(
            "Invalid check status: '{}'",
            update.status
        )));
    }
    update_check(app, id, token, &update.status, update.output).await
}

/// Sets a TTL check's status after Consul's `vetCheckUpdate`: `service:write` on the check's
/// service (agent-sim has no node checks).
async fn update_check(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    status: &str,
    output: String,
) -> Result<StatusCode, ApiError> {
    let acl = app.acl(&token)?;
    let profile = app.store.settings().profile();
    let now = app.store.clock().now();
    app.store.write(|inner, index, changes| {
        let owner = inner
            .catalog
            .services()
            .find(|s| s.checks.iter().any(|c| c.id == id))
            .map(|s| s.reg.name.clone())
            .ok_or_else(|| ApiError::Internal(format!("Unknown check {id:?}")))?;
        super::require_service_write(&acl, profile, &owner)?;
        inner
            .catalog
            .update_check(&id, status, &output, index, now)?;
        changes.touch(Table::Services);
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::OK)
}

/// `GET /v1/catalog/services`: every service name the token may read, with its tags. The
/// server's own `consul` service is listed as a Consul server lists it.
async fn catalog_services(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    let acl = app.acl(&token)?;
    let (index, services) = app
        .store
        .block(Table::Services, blocking, |inner| {
            let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            services.insert("consul".into(), BTreeSet::new());
            for s in inner.catalog.services() {
                services
                    .entry(s.reg.name.clone())
                    .or_default()
                    .extend(s.reg.tags.iter().flatten().cloned());
            }
            services.retain(|name, _| acl.service_read(name));
            (inner.table_index(Table::Services), services)
        })
        .await;
    Ok(Json::new(&services, &query)
        .meta(index)
        .header(
            "X-Consul-Effective-Consistency",
            super::effective_consistency(&query),
        )
        .into_response())
}

/// Which listing a discovery request asks for.
#[derive(Debug, Clone, Copy)]
enum Listing {
    Catalog,
    Health,
}

async fn catalog_service(
    app: State<AppState>,
    name: Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    discovery(app, name, token, query, Listing::Catalog, false).await
}

async fn catalog_connect(
    app: State<AppState>,
    name: Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    discovery(app, name, token, query, Listing::Catalog, true).await
}

async fn health_service(
    app: State<AppState>,
    name: Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    discovery(app, name, token, query, Listing::Health, false).await
}

async fn health_connect(
    app: State<AppState>,
    name: Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    discovery(app, name, token, query, Listing::Health, true).await
}

async fn discovery(
    State(app): State<AppState>,
    Path(name): Path<String>,
    token: RequestToken,
    query: Query,
    listing: Listing,
    connect: bool,
) -> Result<Response, ApiError> {
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    let filter = ServiceFilter {
        tag: query.get("tag").map(str::to_owned),
        passing: matches!(listing, Listing::Health) && query.flag("passing"),
        connect,
        node_meta: query
            .all("node-meta")
            .filter_map(|m| m.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    // Resolved now so an unknown token is refused at once; a `?cached` entry resolves the
    // token again on each refresh (below), as Consul's agent cache does.
    let request_acl = app.acl(&token)?;
    let consistency = super::effective_consistency(&query);
    let streaming = matches!(listing, Listing::Health)
        && app.store.settings().profile().health_streaming
        && (query.has("cached") || blocking.is_some());
    let clock = app.store.clock().clone();
    let key = format!("{listing:?}/{connect}/{name}/{filter:?}");
    let cached = query.has("cached");
    let resolver = (app.clone(), token.clone());
    let shape = app.store.settings().profile().service_shape;
    let read = move |inner: &crate::state::Inner| {
        let now = clock.now();
        let acl = if cached {
            // A token revoked or changed since the entry was filled sees nothing it lost.
            let (app, token) = &resolver;
            app.acl_in(inner, token)
                .unwrap_or_else(|_| std::sync::Arc::new(Authorizer::deny_all()))
        } else {
            request_acl.clone()
        };
        match listing {
            Listing::Catalog => {
                let mut items = inner.catalog.catalog_services(&name, &filter, now);
                items.retain(|i| acl.service_read(&i.service_name) && acl.node_read(&i.node));
                CachedBody::View(shape.catalog(&items))
            }
            Listing::Health => {
                let mut items = inner.catalog.health_services(&name, &filter, now);
                items.retain(|i| {
                    acl.service_read(&i.service.service) && acl.node_read(&i.node.node)
                });
                CachedBody::View(shape.health(&items, inner))
            }
        }
    };
    let resp = if query.has("cached") {
        // The agent cache's refreshing health/catalog types: kept fresh in the background.
        let lookup = app.cache.listing(&app.partition(&token), key, read);
        let deadline = tokio::time::Instant::now() + blocking.map_or(Duration::ZERO, |b| b.wait);
        let (index, timed) = wait_for(lookup.value, blocking.map(|b| b.min_index), deadline)
            .await
            .ok_or_else(|| ApiError::Internal("agent cache: nothing fetched".into()))?;
        Json::new(&timed.body, &query).meta(index).cache(lookup.hit)
    } else {
        let (index, body) = app
            .store
            .block(Table::Services, blocking, |inner| {
                (inner.table_index(Table::Services), read(inner))
            })
            .await;
        Json::new(&body, &query).meta(index)
    };
    let resp = resp.header("X-Consul-Effective-Consistency", consistency);
    let resp = if streaming {
        resp.header("X-Consul-Query-Backend", "streaming")
            .header("X-Consul-KnownLeader", "false")
    } else {
        resp
    };
    Ok(resp.into_response())
}
