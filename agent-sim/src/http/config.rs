//! `/v1/config`: config entries, for the kinds a Connect integration writes
//! (`service-intentions`, `service-defaults`). Only in profiles that have them (1.9+); 1.4.5
//! answers these paths with its 404.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use consul_connect_types::api::{ConfigEntry, KIND_SERVICE_DEFAULTS, KIND_SERVICE_INTENTIONS};
use serde_json::{Map, Value};

use super::{allow, ApiError, AppState, Json, Query, RequestToken};
use crate::state::config_entries::ConfigEntryError;
use crate::state::{Inner, Table};

const INTENTIONS_FIELDS: &[&str] = &["Kind", "Name", "Sources", "Meta"];
const SOURCE_FIELDS: &[&str] = &[
    "Name",
    "Peer",
    "Action",
    "Permissions",
    "Precedence",
    "LegacyID",
    "Type",
    "Description",
    "LegacyMeta",
    "LegacyCreateTime",
    "LegacyUpdateTime",
];
const PERMISSION_FIELDS: &[&str] = &[
    "Action",
    "HTTP",
    "PathExact",
    "PathPrefix",
    "PathRegex",
    "Header",
    "Methods",
    "Name",
    "Present",
    "Exact",
    "Prefix",
    "Suffix",
    "Regex",
    "Invert",
];
const DEFAULTS_FIELDS: &[&str] = &[
    "Kind",
    "Name",
    "Protocol",
    "Mode",
    "TransparentProxy",
    "MeshGateway",
    "Expose",
    "ExternalSNI",
    "UpstreamConfig",
    "Meta",
    "OutboundListenerPort",
    "DialedDirectly",
    "Checks",
    "Paths",
    "Path",
    "LocalPathPort",
    "ListenerPort",
    "Overrides",
    "Defaults",
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/config", allow(put(apply), "PUT"))
        .route(
            "/v1/config/{kind}",
            allow(get(list).delete(delete_without_name), "GET,DELETE"),
        )
        .route(
            "/v1/config/{kind}/{name}",
            allow(get(read).delete(delete), "GET,DELETE"),
        )
}

impl From<ConfigEntryError> for ApiError {
    fn from(e: ConfigEntryError) -> Self {
        ApiError::Internal(e.0)
    }
}

/// 1.4.5 has no `/v1/config`: its router answers 404.
fn supported(app: &AppState) -> Result<(), ApiError> {
    if app.store.settings().profile().config_entries {
        Ok(())
    } else {
        Err(ApiError::NotFound("404 page not found\n".into()))
    }
}

fn known_kind(kind: &str) -> Result<(), ApiError> {
    match kind {
        KIND_SERVICE_INTENTIONS | KIND_SERVICE_DEFAULTS => Ok(()),
        _ => Err(ApiError::Internal(format!(
            "invalid config entry kind: {kind}"
        ))),
    }
}

fn decode_error(m: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequestPrefixed(format!("Request decoding failed: {m}"))
}

/// Decodes a config entry as Consul does: keys in any case or snake_case, unknown keys and
/// enterprise fields refused with Consul's texts.
pub(crate) fn decode_entry(
    body: &[u8],
    profile: &crate::profile::Profile,
) -> Result<ConfigEntry, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(decode_error("EOF"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Eof => decode_error("unexpected EOF"),
        _ => decode_error(format!("invalid character: {e}")),
    })?;
    let Value::Object(map) = value else {
        return Err(decode_error("expected a JSON object"));
    };
    let kind = map
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("kind"))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let mut errors = Vec::new();
    let value = match kind.as_str() {
        KIND_SERVICE_INTENTIONS => {
            let mut map = canonical(map, INTENTIONS_FIELDS, "", &mut errors);
            if let Some(Value::Array(sources)) = map.get_mut("Sources") {
                for (i, s) in sources.iter_mut().enumerate() {
                    if let Value::Object(m) = std::mem::take(s) {
                        let mut m =
                            canonical(m, SOURCE_FIELDS, &format!("Sources[{i}]."), &mut errors);
                        if let Some(p) = m.remove("Permissions") {
                            m.insert(
                                "Permissions".into(),
                                super::canonical_keys(p, PERMISSION_FIELDS),
                            );
                        }
                        *s = Value::Object(m);
                    }
                }
            }
            // Go reports the sources' keys before the entry's.
            errors.sort_by_key(|e: &String| !e.contains("Sources["));
            map
        }
        KIND_SERVICE_DEFAULTS => {
            let mut map = canonical(map, DEFAULTS_FIELDS, "", &mut errors);
            for key in ["MeshGateway", "Expose", "TransparentProxy"] {
                let v = map.remove(key).unwrap_or_else(|| Value::Object(Map::new()));
                map.insert(key.into(), super::canonical_keys(v, DEFAULTS_FIELDS));
            }
            map
        }
        _ => return Err(decode_error(format!("invalid config entry kind: {kind}"))),
    };
    if !errors.is_empty() {
        return Err(decode_error(profile.multierror.format(errors)));
    }
    serde_json::from_value(Value::Object(value)).map_err(decode_error)
}

/// Renames the keys of `map` to their canonical spelling; records unknown and enterprise keys.
fn canonical(
    map: Map<String, Value>,
    fields: &[&str],
    at: &str,
    errors: &mut Vec<String>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, v) in map {
        if super::same_field("Namespace", &key) {
            errors.push(format!(
                "invalid config key \"{at}Namespace\", namespaces are a consul enterprise feature"
            ));
            continue;
        }
        match fields.iter().find(|f| super::same_field(f, &key)) {
            Some(f) => {
                out.insert((*f).to_owned(), v);
            }
            None => errors.push(format!("invalid config key \"{at}{key}\"")),
        }
    }
    out
}

/// Applies the side effects of a config-entry change on the intentions table.
pub(crate) fn sync_intentions(inner: &mut Inner, destination: &str) {
    let entry = inner.config.intentions(destination).cloned();
    inner
        .intentions
        .sync_destination(destination, entry.as_ref());
}

async fn apply(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    supported(&app)?;
    query.datacenter(&app.store)?;
    let entry = decode_entry(&body, app.store.settings().profile())?;
    let acl = app.acl(&token)?;
    match &entry {
        ConfigEntry::ServiceIntentions(e) => super::require(acl.intention_write(&e.name))?,
        _ => super::require(acl.service_write(entry.name()))?,
    }
    let cas = match query.get("cas") {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::BadRequestPrefixed(format!("Request decoding failed: invalid cas {c:?}"))
        })?),
    };
    let written = app.store.write(|inner, index, changes| {
        let kind = entry.kind();
        let name = entry.name().to_owned();
        let written = inner.config.put(entry, cas, index)?;
        if written {
            changes.touch(Table::ConfigEntries);
            if kind == KIND_SERVICE_INTENTIONS {
                sync_intentions(inner, &name);
                changes.touch(Table::Intentions);
            }
        }
        Ok::<_, ApiError>(written)
    })?;
    Ok(Json::new(&written, &query).into_response())
}

async fn read(
    State(app): State<AppState>,
    Path((kind, name)): Path<(String, String)>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    supported(&app)?;
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    known_kind(&kind)?;
    let acl = app.acl(&token)?;
    let allowed = match kind.as_str() {
        KIND_SERVICE_INTENTIONS => acl.intention_read(&name),
        _ => acl.service_read(&name),
    };
    super::require(allowed)?;
    let (index, entry) = app
        .store
        .block(Table::ConfigEntries, blocking, |inner| {
            (
                inner.table_index(Table::ConfigEntries),
                inner.config.get(&kind, &name).cloned(),
            )
        })
        .await;
    match entry {
        Some(entry) => Ok(Json::new(&entry, &query).meta(index).into_response()),
        None => {
            let mut resp =
                ApiError::NotFound(format!("Config entry not found for {kind:?} / {name:?}"))
                    .into_response();
            for (k, v) in [
                ("X-Consul-Index", index.max(1).to_string()),
                ("X-Consul-KnownLeader", "true".into()),
                ("X-Consul-LastContact", "0".into()),
            ] {
                if let Ok(v) = v.parse() {
                    resp.headers_mut().insert(k, v);
                }
            }
            Ok(resp)
        }
    }
}

async fn list(
    State(app): State<AppState>,
    Path(kind): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    supported(&app)?;
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    known_kind(&kind)?;
    let acl = app.acl(&token)?;
    let (index, entries) = app
        .store
        .block(Table::ConfigEntries, blocking, |inner| {
            let entries: Vec<ConfigEntry> = inner
                .config
                .list(&kind)
                .into_iter()
                .filter(|e| match e {
                    ConfigEntry::ServiceIntentions(e) => acl.intention_read(&e.name),
                    e => acl.service_read(e.name()),
                })
                .cloned()
                .collect();
            (inner.table_index(Table::ConfigEntries), entries)
        })
        .await;
    Ok(Json::new(&entries, &query).meta(index).into_response())
}

/// `DELETE /v1/config/<kind>`: Consul's handler wants both path parts.
async fn delete_without_name(State(app): State<AppState>) -> Result<Response, ApiError> {
    supported(&app)?;
    Err(ApiError::NotFound(
        "Must provide both a kind and name to delete".into(),
    ))
}

async fn delete(
    State(app): State<AppState>,
    Path((kind, name)): Path<(String, String)>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    supported(&app)?;
    query.datacenter(&app.store)?;
    known_kind(&kind)?;
    let acl = app.acl(&token)?;
    let allowed = match kind.as_str() {
        KIND_SERVICE_INTENTIONS => acl.intention_write(&name),
        _ => acl.service_write(&name),
    };
    super::require(allowed)?;
    app.store.write(|inner, _, changes| {
        if inner.config.delete(&kind, &name)? {
            changes.touch(Table::ConfigEntries);
            if kind == KIND_SERVICE_INTENTIONS {
                sync_intentions(inner, &name);
                changes.touch(Table::Intentions);
            }
        }
        Ok::<_, ApiError>(())
    })?;
    Ok((StatusCode::OK, Json::new(&serde_json::json!({}), &query)).into_response())
}
