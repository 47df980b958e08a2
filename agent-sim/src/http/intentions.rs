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
use crate::state::intentions::{IntentionWrite, IntentionWriteError};
use crate::state::Table;

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
        let destinations = match &write {
            IntentionWrite::Create(ixn) => vec![ixn.destination_name.clone()],
            IntentionWrite::Update(id, ixn) => vec![stored(id)?, ixn.destination_name.clone()],
            IntentionWrite::Delete(id) => vec![stored(id)?],
        };
        for destination in destinations {
            super::require(acl.intention_write(&destination))?;
        }
        let id = inner.intentions.apply(write, index, now)?;
        changes.touch(Table::Intentions);
        Ok(id)
    })
}

/// Consul looks intentions up by UUID and says so when the ID is not one.
fn check_uuid(id: &str) -> Result<(), ApiError> {
    if id.len() != 36 {
        return Err(ApiError::BadRequestPrefixed(
            "failed intention lookup: index error: UUID must be 36 characters".into(),
        ));
    }
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::BadRequestPrefixed(
            "failed intention lookup: index error: UUID must be hex characters".into(),
        ));
    }
    Ok(())
}

async fn get_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    check_uuid(&id)?;
    let acl = app.acl(&token)?;
    let ixn = app
        .store
        .read(|inner| inner.intentions.set().get(&id).cloned())
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.into()))?;
    super::require(
        app.acl_rules
            .intention_read(&acl, &ixn.source_name, &ixn.destination_name),
    )?;
    Ok(Json::new(&ixn, &query).into_response())
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
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
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
    let (_, result) = app
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
    Ok(Json::new(&result, &query).into_response())
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
    // Consul checks service:read on the destination here (its docs say intentions:read).
    super::require(app.acl(&token)?.service_read(&dst_name))?;
    let default = app.default_decision();
    let allowed = app.store.read(|inner| {
        inner
            .intentions
            .set()
            .check(&src_ns, &src_name, &dst_ns, &dst_name, default)
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
    super::require(
        app.acl_rules
            .intention_read(&*app.acl(&token)?, &src.1, &dst.1),
    )?;
    let ixn = app
        .store
        .read(|inner| find_exact(inner.intentions.set(), &src, &dst))
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.into()))?;
    Ok(Json::new(&ixn, &query).into_response())
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
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
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
        // A CA, agent, server or mesh-gateway identity is never a Connect caller.
        Ok(_) => {
            return Err(ApiError::BadRequestPrefixed(
                "ClientCertURI not a valid Service identifier".into(),
            ))
        }
        Err(_) => {
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
    let decision = decide_matches(matches.iter(), &client, app.default_decision());
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
