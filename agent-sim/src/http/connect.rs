//! The Connect CA endpoints: roots, leaf certificates, CA configuration.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use consul_connect_types::api::CaConfiguration;
use consul_connect_types::spiffe::ServiceId;
use tokio::time::Instant;

use super::{allow, decode_body, ApiError, AppState, Json, Query, RequestToken};
use crate::cache::{wait_for, LeafFill};
use crate::state::Table;

/// The CA settings Consul 1.4 knows (and agent-sim's `ForceRotate`).
const CA_CONFIG_KEYS: &[&str] = &[
    "LeafCertTTL",
    "RotationPeriod",
    "PrivateKey",
    "RootCert",
    "CSRMaxPerSecond",
    "CSRMaxConcurrent",
    "SkipValidate",
    "ForceRotate",
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/connect/ca/roots", allow(get(agent_roots), "GET"))
        .route("/v1/connect/ca/roots", allow(get(roots), "GET"))
        .route(
            "/v1/agent/connect/ca/leaf/",
            allow(get(leaf_without_name), "GET"),
        )
        .route(
            "/v1/agent/connect/ca/leaf/{service}",
            allow(get(leaf), "GET"),
        )
        .route(
            "/v1/connect/ca/configuration",
            allow(get(ca_config).put(set_ca_config), "GET,PUT"),
        )
}

async fn agent_roots(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    let lookup = app.cache.roots(&app.partition(&token));
    let (index, roots) = match blocking {
        Some(_) => read_entry(lookup.value, blocking).await?,
        None => crate::cache::caught_up(lookup.value, app.store.current_index(Table::Roots))
            .await
            .ok_or_else(|| ApiError::Internal("agent cache: no roots fetched".into()))?,
    };
    Ok(Json::new(&*roots, &query)
        .meta(index)
        .cache(lookup.hit)
        .into_response())
}

async fn roots(State(app): State<AppState>, query: Query) -> Result<Response, ApiError> {
    let pem = match query.get("pem") {
        Some(v) if app.store.settings().profile().ca.pem_roots => {
            parse_go_bool(v).ok_or_else(|| {
                ApiError::BadRequestPrefixed(
                    "The 'pem' query parameter must be a boolean value".into(),
                )
            })?
        }
        _ => false,
    };
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    if pem {
        // Every root, each followed by its intermediates, as one PEM chain (no query meta).
        let chain: String = app.store.read(|inner| {
            let list = inner.ca.root_list();
            list.roots
                .iter()
                .flat_map(|r| {
                    std::iter::once(&r.root_cert).chain(r.intermediate_certs.iter().flatten())
                })
                .map(|p| format!("{}\n", p.trim_end()))
                .collect()
        });
        return Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "application/pem-certificate-chain",
            )],
            chain,
        )
            .into_response());
    }
    let (index, roots) = app
        .store
        .block(Table::Roots, blocking, |inner| {
            (inner.table_index(Table::Roots), inner.ca.root_list())
        })
        .await;
    Ok(Json::new(&roots, &query).meta(index).into_response())
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Reads a cache entry, waiting as a blocking query asks.
async fn read_entry<V>(
    value: tokio::sync::watch::Receiver<crate::cache::Versioned<V>>,
    blocking: Option<crate::state::Blocking>,
) -> Result<(u64, std::sync::Arc<V>), ApiError> {
    let deadline = Instant::now() + blocking.map_or(Duration::ZERO, |b| b.wait);
    wait_for(value, blocking.map(|b| b.min_index), deadline)
        .await
        .ok_or_else(|| ApiError::Internal("agent cache: no value fetched".into()))
}

async fn leaf_without_name(State(app): State<AppState>) -> ApiError {
    ApiError::Internal(app.store.settings().profile().leaf_without_name.into())
}

async fn leaf(
    State(app): State<AppState>,
    Path(service): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    let store = &app.store;
    let id = ServiceId::new(
        store.trust_domain().clone(),
        "default",
        &store.settings().datacenter,
        &service,
    )
    .map_err(|_| ApiError::Internal("SPIFFE ID is not in the expected format".into()))?;
    super::require(app.acl(&token)?.service_write(&service))?;
    let part = app.partition(&token);
    let lookup = app.cache.leaf(&part, &id);
    // 1.10 revalidates a leaf read without an index, so it is never a cache hit.
    let revalidated = blocking.is_none() && app.store.settings().profile().leaf_reads_revalidate;
    let (_, fill) = read_entry(lookup.value, blocking).await?;
    let LeafFill::Issued(leaf) = &*fill else {
        app.cache.forget_refused_leaf(&part, id.service());
        return Err(ApiError::RateLimited);
    };
    Ok(Json::new(&leaf.cert, &query)
        .index(leaf.cert.modify_index)
        .cache(lookup.hit && !revalidated)
        .into_response())
}

async fn ca_config(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    super::require(app.acl_rules.ca_config_read(&*app.acl(&token)?))?;
    let config = app.store.read(|inner| inner.ca.config_view());
    Ok(Json::new(&config, &query).into_response())
}

async fn set_ca_config(
    State(app): State<AppState>,
    token: RequestToken,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    super::require(app.acl(&token)?.operator_write())?;
    let mut config: CaConfiguration = decode_body(&body, &["Provider", "Config"])
        .map_err(|e| ApiError::decode_failed(app.store.settings().profile(), e))?;
    // Consul reads provider settings case-insensitively and in snake case (`private_key`):
    // store them under their canonical names so they are used, and hidden, whatever the
    // spelling.
    config.config = std::mem::take(&mut config.config)
        .into_iter()
        .map(|(key, value)| {
            let canonical = CA_CONFIG_KEYS
                .iter()
                .find(|k| super::same_field(k, &key))
                .map_or(key, |k| (*k).to_owned());
            (canonical, value)
        })
        .collect();
    let now = app.store.clock().now();
    app.store.write(|inner, _, changes| {
        let rotated = inner
            .set_ca_config(config, now)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        changes.touch(Table::CaConfig);
        if rotated {
            // Cached leaves follow the roots table and re-issue within the jitter window.
            changes.touch(Table::Roots);
        }
        Ok(StatusCode::OK)
    })
}
