//! Intentions endpoints (the 1.4 API and the later `exact` API) and agent authorize.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use consul_connect_types::api::{
    AuthorizeRequest, AuthorizeResponse, Intention, IntentionCheck, IntentionCreated,
};
use consul_connect_types::intentions::decide_matches;
#[cfg(test)]
use consul_connect_types::intentions::WILDCARD;
use consul_connect_types::spiffe::SpiffeId;

use super::{allow, decode_body, ApiError, AppState, Json, Query, RequestToken};
use crate::profile::{IntentionShape, Profile};
use crate::state::config_entries;
use crate::state::intentions::{IntentionWrite, IntentionWriteError};
use crate::state::Table;
use consul_connect_types::api::{ServiceIntentionsEntry, SourceIntention};
use consul_connect_types::intentions::DEFAULT_NAMESPACE;

/// Field names of an intention, for Go-style case-insensitive decoding.
const INTENTION_FIELDS: &[&str] = &[
    "ID",
    "Description",
    "SourceNS",
    "SourceName",
    "DestinationNS",
    "DestinationName",
    "SourceType",
    "Action",
    "DefaultAddr",
    "DefaultPort",
    "Permissions",
    "Meta",
    "Precedence",
    "CreatedAt",
    "UpdatedAt",
    "CreateIndex",
    "ModifyIndex",
];
const AUTHORIZE_FIELDS: &[&str] = &["Target", "ClientCertURI", "ClientCertSerial"];
/// Consul's text when an intention ID is not found.
const NOT_FOUND: &str = "Intention not found";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/connect/intentions",
            allow(get(list).post(create), "GET,POST"),
        )
        .route("/v1/connect/intentions/match", allow(get(matches), "GET"))
        .route("/v1/connect/intentions/check", allow(get(check), "GET"))
        .route(
            "/v1/connect/intentions/exact",
            allow(
                get(exact_get).put(exact_put).delete(exact_delete),
                "GET,PUT,DELETE",
            ),
        )
        .route(
            "/v1/connect/intentions/{id}",
            allow(get(get_one).put(update).delete(delete), "GET,PUT,DELETE"),
        )
        .route(
            "/v1/agent/connect/authorize",
            allow(post(authorize), "POST"),
        )
}

impl From<IntentionWriteError> for ApiError {
    fn from(e: IntentionWriteError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// `name` or `ns/name`, as Consul's `parseIntentionMatchEntry` reads it.
fn parse_entry(input: &str) -> Result<(String, String), String> {
    match input.split_once('/') {
        None => Ok(("default".to_owned(), input.to_owned())),
        Some((_, name)) if name.contains('/') => {
            Err("input can contain at most one '/'".to_owned())
        }
        Some((ns, name)) => Ok((ns.to_owned(), name.to_owned())),
    }
}

async fn list(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    let acl = app.acl(&token)?;
    let rules = app.acl_rules;
    let (index, list) = app
        .store
        .block(Table::Intentions, blocking, |inner| {
            let list: Vec<Intention> = inner
                .intentions
                .set()
                .all_sorted()
                .into_iter()
                .filter(|i| rules.intention_read(&acl, &i.source_name, &i.destination_name))
                .cloned()
                .collect();
            (inner.table_index(Table::Intentions), list)
        })
        .await;
    let shape = app.store.settings().profile().intention_shape;
    let list: Vec<_> = list.iter().map(|i| IntentionView(i, shape)).collect();
    Ok(Json::new(&list, &query).meta(index).into_response())
}

fn decode_intention(body: &[u8]) -> Result<Intention, String> {
    decode_body(body, INTENTION_FIELDS)
}

async fn create(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    let ixn = decode_intention(&body)
        .map_err(|e| ApiError::Internal(format!("Failed to decode request body: {e}")))?;
    check_oss_namespaces(&ixn)?;
    let id = write(&app, &token, IntentionWrite::Create(ixn))?;
    Ok(Json::new(&IntentionCreated { id }, &query).into_response())
}

/// Applies a write after checking `intentions:write` on the new and the stored destination.
fn write(app: &AppState, token: &RequestToken, write: IntentionWrite) -> Result<String, ApiError> {
    let acl = app.acl(token)?;
    let now = app.store.clock().now();
    app.store.write(|inner, index, changes| {
        let set = inner.intentions.set();
        let stored = |id: &str| {
            set.get(id)
                .map(|i| i.destination_name.clone())
                .ok_or_else(|| IntentionWriteError::NotFound(id.to_owned()))
        };
        let profile = app.store.settings().profile();
        let destinations = match &write {
            IntentionWrite::Create(ixn) => vec![ixn.destination_name.clone()],
            IntentionWrite::Update(id, ixn) => vec![stored(id)?, ixn.destination_name.clone()],
            IntentionWrite::Delete(id) => vec![stored(id).map_err(|_| {
                ApiError::Internal(format!("{}: '{id}'", profile.delete_missing_intention))
            })?],
        };
        for destination in destinations {
            super::require(acl.intention_write(&destination))?;
        }
        let id = if profile.config_entries {
            let id = legacy_write(inner, write, index, now, profile)?;
            changes.touch(Table::ConfigEntries);
            id
        } else {
            inner.intentions.apply(write, index, now)?
        };
        changes.touch(Table::Intentions);
        Ok(id)
    })
}

/// Consul looks intentions up by UUID and says so when the ID is not one.
fn check_uuid(id: &str, lookup: &str) -> Result<(), ApiError> {
    if id.len() != 36 {
        return Err(ApiError::BadRequestPrefixed(format!(
            "{lookup}: index error: UUID must be 36 characters"
        )));
    }
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::BadRequestPrefixed(format!(
            "{lookup}: index error: UUID must be hex characters"
        )));
    }
    Ok(())
}

/// An intention as the emulated version writes it.
struct IntentionView<'a>(&'a Intention, IntentionShape);

impl serde::Serialize for IntentionView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (ixn, shape) = (self.0, self.1);
        if shape == IntentionShape::Consul1_4 {
            return ixn.serialize(s);
        }
        let rfc3339 = |t: &time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let mut m = s.serialize_map(None)?;
        if ixn.created_at != time::OffsetDateTime::UNIX_EPOCH {
            m.serialize_entry("CreatedAt", &rfc3339(&ixn.created_at))?;
            m.serialize_entry("UpdatedAt", &rfc3339(&ixn.updated_at))?;
        }
        if !ixn.id.is_empty() {
            m.serialize_entry("ID", &ixn.id)?;
        }
        if !ixn.description.is_empty() {
            m.serialize_entry("Description", &ixn.description)?;
        }
        m.serialize_entry("SourceNS", &ixn.source_ns)?;
        m.serialize_entry("SourceName", &ixn.source_name)?;
        m.serialize_entry("DestinationNS", &ixn.destination_ns)?;
        m.serialize_entry("DestinationName", &ixn.destination_name)?;
        m.serialize_entry("SourceType", &ixn.source_type)?;
        if !ixn.action.is_empty() {
            m.serialize_entry("Action", &ixn.action)?;
        }
        if let Some(p) = ixn.permissions.as_ref().filter(|p| !p.is_empty()) {
            m.serialize_entry("Permissions", p)?;
        }
        if let Some(meta) = ixn.meta.as_ref().filter(|m| !m.is_empty()) {
            m.serialize_entry("Meta", meta)?;
        }
        m.serialize_entry("Precedence", &ixn.precedence)?;
        if let Some(hash) = &ixn.hash {
            m.serialize_entry("Hash", hash)?;
        }
        m.serialize_entry("CreateIndex", &ixn.create_index)?;
        m.serialize_entry("ModifyIndex", &ixn.modify_index)?;
        m.end()
    }
}

/// Consul OSS refuses namespaces other than `default` in an intention body.
fn check_oss_namespaces(ixn: &Intention) -> Result<(), ApiError> {
    for (field, ns) in [
        ("SourceNS", &ixn.source_ns),
        ("DestinationNS", &ixn.destination_ns),
    ] {
        if !ns.is_empty() && ns != DEFAULT_NAMESPACE {
            return Err(ApiError::BadRequestPrefixed(format!(
                "Invalid {field}({ns}): Namespaces is a Consul Enterprise feature"
            )));
        }
    }
    Ok(())
}

/// A legacy (UUID) write in a 1.9+ profile: the intention lives as a source of its
/// destination's `service-intentions` entry, marked with its `LegacyID`.
fn legacy_write(
    inner: &mut crate::state::Inner,
    write: IntentionWrite,
    index: u64,
    now: time::OffsetDateTime,
    profile: &Profile,
) -> Result<String, ApiError> {
    let validated = |mut ixn: Intention| -> Result<Intention, ApiError> {
        crate::intentions::fill_defaults(&mut ixn);
        crate::intentions::validate(&ixn).map_err(|e| {
            ApiError::Internal(
                profile
                    .multierror
                    .format(e.errors().iter().map(ToString::to_string)),
            )
        })?;
        Ok(ixn)
    };
    let entry_for =
        |inner: &crate::state::Inner, destination: &str| match inner.config.intentions(destination)
        {
            Some(e) if !config_entries::legacy_editable(e) => {
                Err(ApiError::from(config_entries::legacy_refusal(destination)))
            }
            Some(e) => Ok(e.clone()),
            None => Ok(ServiceIntentionsEntry {
                name: destination.to_owned(),
                partition: None,
                namespace: None,
                sources: Vec::new(),
                meta: None,
                create_index: 0,
                modify_index: 0,
            }),
        };
    let (id, destination, entry) = match write {
        IntentionWrite::Create(ixn) => {
            if !ixn.id.is_empty() {
                return Err(IntentionWriteError::IdOnCreate.into());
            }
            let mut ixn = validated(ixn)?;
            ixn.id = uuid::Uuid::new_v4().to_string();
            (ixn.created_at, ixn.updated_at) = (now, now);
            let mut entry = entry_for(inner, &ixn.destination_name)?;
            entry.sources.push(config_entries::legacy_source(&ixn));
            (ixn.id, ixn.destination_name, entry)
        }
        IntentionWrite::Update(id, ixn) => {
            let Some((stored, at)) = inner.config.find_legacy(&id) else {
                return Err(IntentionWriteError::NotFound(id).into());
            };
            let mut ixn = validated(ixn)?;
            if !ixn.destination_name.eq_ignore_ascii_case(&stored.name) {
                return Err(ApiError::Internal(
                    "Cannot modify DestinationNS or DestinationName for an intention once it exists.".into(),
                ));
            }
            let mut entry = stored.clone();
            ixn.id = id.clone();
            ixn.created_at = entry.sources[at].legacy_create_time.unwrap_or(now);
            ixn.updated_at = now;
            entry.sources[at] = config_entries::legacy_source(&ixn);
            (id, entry.name.clone(), entry)
        }
        IntentionWrite::Delete(id) => {
            let Some((stored, at)) = inner.config.find_legacy(&id) else {
                return Err(ApiError::Internal(format!(
                    "{}: '{id}'",
                    profile.delete_missing_intention
                )));
            };
            let mut entry = stored.clone();
            entry.sources.remove(at);
            (id, entry.name.clone(), entry)
        }
    };
    inner.config.put_intentions(entry, index)?;
    super::config::sync_intentions(inner, &destination);
    Ok(id)
}

async fn get_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    let profile = app.store.settings().profile();
    check_uuid(&id, profile.intention_lookup)?;
    let acl = app.acl(&token)?;
    let ixn = app
        .store
        .read(|inner| inner.intentions.set().get(&id).cloned())
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.into()))?;
    super::require(
        app.acl_rules
            .intention_read(&acl, &ixn.source_name, &ixn.destination_name),
    )?;
    Ok(Json::new(&IntentionView(&ixn, profile.intention_shape), &query).into_response())
}

async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    let ixn = decode_intention(&body)
        .map_err(|e| ApiError::decode_failed(app.store.settings().profile(), e))?;
    let id = write(&app, &token, IntentionWrite::Update(id, ixn))?;
    Ok(Json::new(&IntentionCreated { id }, &query).into_response())
}

async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    write(&app, &token, IntentionWrite::Delete(id))?;
    Ok(Json::new(&true, &query).into_response())
}

async fn matches(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    let by = match query.all("by").collect::<Vec<_>>().as_slice() {
        [by] => *by,
        _ => {
            return Err(ApiError::Internal(
                "required query parameter 'by' not set".into(),
            ))
        }
    };
    let by_source = match by {
        "source" => true,
        "destination" => false,
        _ => {
            return Err(ApiError::Internal(
                "'by' parameter must be one of 'source' or 'destination'".into(),
            ))
        }
    };
    let names: Vec<&str> = query.all("name").collect();
    if names.is_empty() {
        return Err(ApiError::Internal(
            "required query parameter 'name' not set".into(),
        ));
    }
    let entries = names
        .iter()
        .map(|n| {
            parse_entry(n).map_err(|e| ApiError::Internal(format!("name {n:?} is invalid: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let acl = app.acl(&token)?;
    for (_, name) in &entries {
        super::require(acl.intention_read(name))?;
    }
    // The match RPC blocks like any other; Consul 1.4.5 sends no index header for it.
    let profile = app.store.settings().profile();
    let (index, result) = app
        .store
        .block(Table::Intentions, blocking, |inner| {
            let set = inner.intentions.set();
            let result: BTreeMap<String, Option<Vec<Intention>>> = names
                .iter()
                .zip(&entries)
                .map(|(name, (ns, n))| {
                    let found = if by_source {
                        set.match_source(ns, n)
                    } else {
                        set.match_destination(ns, n)
                    };
                    let list: Vec<Intention> = found.into_iter().cloned().collect();
                    ((*name).to_owned(), (!list.is_empty()).then_some(list))
                })
                .collect();
            (inner.table_index(Table::Intentions), result)
        })
        .await;
    let result: BTreeMap<&String, Option<Vec<IntentionView<'_>>>> = result
        .iter()
        .map(|(name, list)| {
            let views = list.as_ref().map(|l| {
                l.iter()
                    .map(|i| IntentionView(i, profile.intention_shape))
                    .collect()
            });
            (name, views)
        })
        .collect();
    let json = Json::new(&result, &query);
    Ok(if profile.match_query_meta {
        json.meta(index)
            .header("X-Consul-Effective-Consistency", "leader")
            .into_response()
    } else {
        json.into_response()
    })
}

async fn check(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    let source_type = query.get("source-type").unwrap_or("consul");
    let one = |key: &str| match query.all(key).collect::<Vec<_>>().as_slice() {
        [v] => Ok((*v).to_owned()),
        _ => Err(ApiError::Internal(format!(
            "required query parameter '{key}' not set"
        ))),
    };
    let source = one("source")?;
    let destination = one("destination")?;
    if source_type != "consul" {
        return Err(ApiError::Internal(format!(
            "unsupported SourceType: {source_type:?}"
        )));
    }
    let (src_ns, src_name) = parse_entry(&source)
        .map_err(|e| ApiError::Internal(format!("source {source:?} is invalid: {e}")))?;
    let (dst_ns, dst_name) = parse_entry(&destination)
        .map_err(|e| ApiError::Internal(format!("destination {destination:?} is invalid: {e}")))?;
    let acl = app.acl(&token)?;
    if app.store.settings().profile().refuses_namespaces {
        for (which, ns) in [("source", &src_ns), ("destination", &dst_ns)] {
            if !ns.eq_ignore_ascii_case(DEFAULT_NAMESPACE) {
                return Err(ApiError::Internal(format!(
                    "Invalid {which} namespace {ns:?}: Namespaces is a Consul Enterprise feature"
                )));
            }
        }
    }
    // Consul checks service:read on the destination here (its docs say intentions:read).
    super::require(acl.service_read(&dst_name))?;
    let default = app.default_decision();
    let allowed = app.store.read(|inner| {
        inner
            .intentions
            .set()
            .check(
                &src_ns,
                &src_name,
                &dst_ns,
                &dst_name,
                default,
                app.store.settings().profile().wording,
            )
            .allowed
    });
    Ok(Json::new(&IntentionCheck { allowed }, &query).into_response())
}

/// `?source=` and `?destination=` of the `exact` API: each exactly once (and, for writes,
/// not empty), else a 500 with the bare message, as Consul answers.
fn exact_names(
    query: &Query,
    write: bool,
) -> Result<((String, String), (String, String)), ApiError> {
    let get = |key: &str| {
        let values: Vec<&str> = query.all(key).collect();
        let value = match values.as_slice() {
            [v] if !(write && v.is_empty()) => *v,
            _ => {
                return Err(ApiError::Internal(format!(
                    "required query parameter '{key}' not set"
                )))
            }
        };
        parse_entry(value)
            .map_err(|e| ApiError::Internal(format!("{key} {value:?} is invalid: {e}")))
    };
    Ok((get("source")?, get("destination")?))
}

fn find_exact(
    set: &crate::intentions::IntentionSet,
    src: &(String, String),
    dst: &(String, String),
) -> Option<Intention> {
    set.match_destination(&dst.0, &dst.1)
        .into_iter()
        .find(|i| {
            i.source_ns.eq_ignore_ascii_case(&src.0)
                && i.source_name.eq_ignore_ascii_case(&src.1)
                && i.destination_ns.eq_ignore_ascii_case(&dst.0)
                && i.destination_name.eq_ignore_ascii_case(&dst.1)
        })
        .cloned()
}

async fn exact_get(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    let (src, dst) = exact_names(&query, false)?;
    let profile = app.store.settings().profile();
    if profile.config_entries && src.0 != DEFAULT_NAMESPACE {
        return Err(ApiError::Internal(format!(
            "Invalid SourceNS {:?}: Namespaces is a Consul Enterprise feature",
            src.0
        )));
    }
    super::require(
        app.acl_rules
            .intention_read(&*app.acl(&token)?, &src.1, &dst.1),
    )?;
    let ixn = app
        .store
        .read(|inner| find_exact(inner.intentions.set(), &src, &dst))
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.into()))?;
    Ok(Json::new(&IntentionView(&ixn, profile.intention_shape), &query).into_response())
}

async fn exact_put(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    let (src, dst) = exact_names(&query, true)?;
    super::require(app.acl(&token)?.intention_write(&dst.1))?;
    let mut ixn = decode_intention(&body)
        .map_err(|e| ApiError::BadRequestPrefixed(format!("Request decode failed: {e}")))?;
    if app.store.settings().profile().config_entries {
        exact_write(&app, &dst.1, Some((&src.1, ixn)))?;
        return Ok(Json::new(&true, &query).into_response());
    }
    ixn.source_ns = src.0.clone();
    ixn.source_name = src.1.clone();
    ixn.destination_ns = dst.0.clone();
    ixn.destination_name = dst.1.clone();
    let now = app.store.clock().now();
    app.store.write(|inner, index, changes| {
        let write = match find_exact(inner.intentions.set(), &src, &dst) {
            Some(existing) => IntentionWrite::Update(
                existing.id,
                Intention {
                    id: String::new(),
                    ..ixn
                },
            ),
            None => IntentionWrite::Create(Intention {
                id: String::new(),
                ..ixn
            }),
        };
        inner.intentions.apply(write, index, now)?;
        changes.touch(Table::Intentions);
        Ok::<_, ApiError>(())
    })?;
    Ok(Json::new(&true, &query).into_response())
}

async fn exact_delete(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    let (src, dst) = exact_names(&query, true)?;
    super::require(app.acl(&token)?.intention_write(&dst.1))?;
    if app.store.settings().profile().config_entries {
        exact_remove(&app, &dst.1, &src.1)?;
        return Ok(Json::new(&true, &query).into_response());
    }
    app.store.write(|inner, index, changes| {
        if let Some(existing) = find_exact(inner.intentions.set(), &src, &dst) {
            inner.intentions.apply(
                IntentionWrite::Delete(existing.id),
                index,
                app.store.clock().now(),
            )?;
            changes.touch(Table::Intentions);
        }
        Ok::<_, ApiError>(())
    })?;
    Ok(Json::new(&true, &query).into_response())
}

/// `PUT /v1/connect/intentions/exact` in a 1.9+ profile: the source is written into the
/// destination's `service-intentions` entry (a namespace in `source` is dropped, as OSS does).
fn exact_write(
    app: &AppState,
    destination: &str,
    put: Option<(&str, Intention)>,
) -> Result<(), ApiError> {
    let Some((source, ixn)) = put else {
        return Ok(());
    };
    if ixn.meta.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::Internal(
            "Meta must not be specified, or should be unchanged during an update.".into(),
        ));
    }
    let new = SourceIntention {
        name: source.to_owned(),
        namespace: None,
        partition: None,
        peer: None,
        action: (!ixn.action.is_empty()).then(|| ixn.action.to_lowercase()),
        permissions: ixn.permissions.clone(),
        precedence: 0,
        legacy_id: None,
        source_type: ixn.source_type.clone(),
        description: (!ixn.description.is_empty()).then(|| ixn.description.clone()),
        legacy_meta: None,
        legacy_create_time: None,
        legacy_update_time: None,
    };
    update_entry(app, destination, |entry| {
        match entry.sources.iter_mut().find(|s| s.name == source) {
            Some(s) => *s = new,
            None => entry.sources.push(new),
        }
    })
}

/// `DELETE /v1/connect/intentions/exact` in a 1.9+ profile (absent is fine).
fn exact_remove(app: &AppState, destination: &str, source: &str) -> Result<(), ApiError> {
    update_entry(app, destination, |entry| {
        entry.sources.retain(|s| s.name != source);
    })
}

/// Edits a destination's `service-intentions` entry (created empty if absent) and stores it.
fn update_entry(
    app: &AppState,
    destination: &str,
    edit: impl FnOnce(&mut ServiceIntentionsEntry),
) -> Result<(), ApiError> {
    app.store.write(|inner, index, changes| {
        let mut entry =
            inner
                .config
                .intentions(destination)
                .cloned()
                .unwrap_or(ServiceIntentionsEntry {
                    name: destination.to_owned(),
                    partition: None,
                    namespace: None,
                    sources: Vec::new(),
                    meta: None,
                    create_index: 0,
                    modify_index: 0,
                });
        let before = entry.sources.len();
        edit(&mut entry);
        if before == 0 && entry.sources.is_empty() {
            return Ok(());
        }
        inner.config.put_intentions(entry, index)?;
        super::config::sync_intentions(inner, destination);
        changes.touch(Table::ConfigEntries);
        changes.touch(Table::Intentions);
        Ok::<_, ApiError>(())
    })
}

async fn authorize(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AuthorizeRequest = decode_body(&body, AUTHORIZE_FIELDS)
        .map_err(|e| ApiError::BadRequestPrefixed(format!("Request decode failed: {e}")))?;
    if req.target.is_empty() {
        return Err(ApiError::BadRequestPrefixed(
            "Target service must be specified".into(),
        ));
    }
    let client = match req.client_cert_uri.parse::<SpiffeId>() {
        Ok(SpiffeId::Service(id)) => id,
        // None of these is ever a Connect caller. Each version words the refusal by what its
        // parser knew: the signing ID always, agent IDs from 1.7 on (the profile's text), and
        // server and mesh-gateway IDs (1.13+) not at all.
        Ok(SpiffeId::Signing(_)) => {
            return Err(ApiError::BadRequestPrefixed(
                "ClientCertURI not a valid Service identifier".into(),
            ))
        }
        Ok(SpiffeId::Agent(_)) => {
            return Err(ApiError::BadRequestPrefixed(
                app.store
                    .settings()
                    .profile()
                    .authorize_not_service_uri
                    .into(),
            ))
        }
        Ok(_) | Err(_) => {
            return Err(ApiError::BadRequestPrefixed(
                "ClientCertURI not a valid Connect identifier".into(),
            ))
        }
    };
    super::require(app.acl(&token)?.service_write(&req.target))?;
    // The agent decides from its cached match list for the target: no store access on a hit.
    let lookup = app.cache.matches(&app.partition(&token), &req.target);
    let current = app.store.current_index(Table::Intentions);
    let (_, matches) = crate::cache::caught_up(lookup.value, current)
        .await
        .ok_or_else(|| ApiError::Internal("agent cache: no intentions fetched".into()))?;
    let decision = decide_matches(
        matches.iter(),
        &client,
        app.default_decision(),
        app.store.settings().profile().wording,
    );
    let resp = AuthorizeResponse {
        authorized: decision.allowed,
        reason: decision.reason,
    };
    Ok(Json::new(&resp, &query).cache(lookup.hit).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_entries_parse_like_consul() {
        assert_eq!(parse_entry("db").unwrap(), ("default".into(), "db".into()));
        assert_eq!(parse_entry("ns/db").unwrap(), ("ns".into(), "db".into()));
        assert_eq!(
            parse_entry(WILDCARD).unwrap(),
            ("default".into(), "*".into())
        );
        assert!(parse_entry("a/b/c").is_err());
    }
}
