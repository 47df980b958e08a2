//! The Connect CA endpoints: roots, leaf certificates, CA configuration.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use consul_connect::api::CaConfiguration;
use consul_connect::spiffe::ServiceId;
use tokio::time::Instant;

use super::{allow, decode_body, ApiError, AppState, Json, Query};
use crate::state::leaf::IssuedLeaf;
use crate::state::{Store, Table};

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

async fn agent_roots(app: State<AppState>, query: Query) -> Result<Response, ApiError> {
    Ok(roots_answer(app, &query)
        .await?
        .header("X-Cache", "MISS")
        .into_response())
}

async fn roots(app: State<AppState>, query: Query) -> Result<Response, ApiError> {
    Ok(roots_answer(app, &query).await?.into_response())
}

async fn roots_answer<'q>(
    State(app): State<AppState>,
    query: &'q Query,
) -> Result<Json<'q>, ApiError> {
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    let (index, roots) = app
        .store
        .block(Table::Roots, blocking, |inner| {
            (inner.table_index(Table::Roots), inner.ca.root_list())
        })
        .await;
    Ok(Json::new(&roots, query).meta(index))
}

async fn leaf_without_name() -> ApiError {
    ApiError::Internal("SPIFFE ID is not in the expected format".into())
}

async fn leaf(
    State(app): State<AppState>,
    Path(service): Path<String>,
    query: Query,
) -> Result<Response, ApiError> {
    let blocking = query.blocking()?;
    query.datacenter(&app.store)?;
    let store = &app.store;
    let id = store
        .read(|inner| {
            ServiceId::new(
                inner.ca.trust_domain().clone(),
                "default",
                &store.settings().datacenter,
                &service,
            )
        })
        .map_err(|_| ApiError::Internal("SPIFFE ID is not in the expected format".into()))?;
    let deadline = blocking.map(|b| Instant::now() + b.wait);
    loop {
        let (leaf, leaves_index) = current_leaf(store, &id)?;
        let waiting = match (blocking, deadline) {
            (Some(b), Some(deadline)) => {
                leaf.cert.modify_index <= b.min_index && Instant::now() < deadline
            }
            _ => false,
        };
        if !waiting {
            return Ok(Json::new(&leaf.cert, &query)
                .index(leaf.cert.modify_index)
                .header("X-Cache", "MISS")
                .into_response());
        }
        let remaining = deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let until_renewal = (leaf.renew_at - store.clock().now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        store
            .changed(Table::Leaves, leaves_index, remaining.min(until_renewal))
            .await;
    }
}

/// The service's leaf, issued anew when there is none, its root was rotated out, or it is past
/// its renewal point; with the Leaves table's index.
fn current_leaf(store: &Store, id: &ServiceId) -> Result<(IssuedLeaf, u64), ApiError> {
    let now = store.clock().now();
    let fresh = store.read(|inner| {
        (!inner.leaf_is_stale(id.service(), now)).then(|| {
            let leaf = inner.leaves.get(id.service()).cloned();
            (leaf, inner.table_index(Table::Leaves))
        })
    });
    if let Some((Some(leaf), index)) = fresh {
        return Ok((leaf, index));
    }
    store.write(|inner, _, changes| {
        // Another request may have issued it meanwhile.
        if inner.leaf_is_stale(id.service(), now) {
            inner
                .issue_leaf(id, now)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            changes.touch(Table::Leaves);
        }
        let leaf = inner
            .leaves
            .get(id.service())
            .cloned()
            .ok_or_else(|| ApiError::Internal("leaf was not issued".into()))?;
        Ok((leaf, inner.table_index(Table::Leaves)))
    })
}

async fn ca_config(State(app): State<AppState>, query: Query) -> Response {
    let config = app.store.read(|inner| inner.ca.config_view());
    Json::new(&config, &query).into_response()
}

async fn set_ca_config(State(app): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let config: CaConfiguration = decode_body(&body, &["Provider", "Config"])
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
    let now = app.store.clock().now();
    app.store.write(|inner, _, changes| {
        let rotated = inner
            .set_ca_config(config, now)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        changes.touch(Table::CaConfig);
        if rotated {
            // Leaves signed by the old root are now stale: wake their blocking queries.
            changes.touch(Table::Roots);
            changes.touch(Table::Leaves);
        }
        Ok(StatusCode::OK)
    })
}
