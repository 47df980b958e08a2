//! Prepared queries: create, list, read, delete, execute (with `?connect=true`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use consul_connect::api::{PreparedQuery, PreparedQueryResult};
use serde_json::json;

use super::{allow, decode_body, ApiError, AppState, Json, Query, RequestToken};
use crate::state::catalog::ServiceFilter;
use crate::state::queries::QueryError;
use crate::state::Table;

const QUERY_FIELDS: &[&str] = &["ID", "Name", "Service", "OnlyPassing", "Tags", "Connect"];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/query", allow(get(list).post(create), "GET,POST"))
        .route(
            "/v1/query/{id}",
            allow(get(read).delete(delete), "GET,DELETE"),
        )
        .route("/v1/query/{id}/execute", allow(get(execute), "GET"))
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid(m) => ApiError::BadRequest(m),
            QueryError::NotFound => ApiError::NotFound(e.to_string()),
        }
    }
}

async fn create(
    State(app): State<AppState>,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let definition: PreparedQuery = decode_body(&body, QUERY_FIELDS)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
    let id = app.store.write(|inner, index, changes| {
        let id = inner.queries.create(definition, index)?;
        changes.touch(Table::Queries);
        Ok::<_, ApiError>(id)
    })?;
    Ok(Json::new(&json!({ "ID": id }), &query).into_response())
}

async fn list(State(app): State<AppState>, query: Query) -> Response {
    let (index, all) = app.store.read(|inner| {
        let all: Vec<PreparedQuery> = inner.queries.all().cloned().collect();
        (inner.table_index(Table::Queries), all)
    });
    Json::new(&all, &query).meta(index).into_response()
}

async fn read(
    State(app): State<AppState>,
    Path(id): Path<String>,
    query: Query,
) -> Result<Response, ApiError> {
    let found = app
        .store
        .read(|inner| inner.queries.find(&id).filter(|q| q.id == id).cloned())
        .ok_or(QueryError::NotFound)?;
    Ok(Json::new(&[found], &query).into_response())
}

async fn delete(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    app.store.write(|inner, _, changes| {
        inner.queries.delete(&id)?;
        changes.touch(Table::Queries);
        Ok::<_, ApiError>(())
    })?;
    Ok(axum::http::StatusCode::OK.into_response())
}

async fn execute(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    query.datacenter(&app.store)?;
    let acl = app.acl(&token)?;
    let connect = query.flag("connect");
    let now = app.store.clock().now();
    let (index, result) = app.store.read(|inner| {
        let definition = inner
            .queries
            .find(&id)
            .cloned()
            .ok_or(QueryError::NotFound)?;
        let filter = ServiceFilter {
            passing: definition.service.only_passing,
            connect: connect || definition.service.connect,
            ..ServiceFilter::default()
        };
        let tags = definition.service.tags.clone().unwrap_or_default();
        let nodes = inner
            .catalog
            .health_services(&definition.service.service, &filter, now)
            .into_iter()
            .filter(|e| acl.service_read(&e.service.service))
            .filter(|e| {
                let has = |t: &str| {
                    e.service
                        .tags
                        .iter()
                        .flatten()
                        .any(|x| x.eq_ignore_ascii_case(t))
                };
                tags.iter().all(|t| match t.strip_prefix('!') {
                    Some(excluded) => !has(excluded),
                    None => has(t),
                })
            })
            .collect();
        let result = PreparedQueryResult {
            service: definition.service.service,
            nodes,
            datacenter: app.store.settings().datacenter.clone(),
            failovers: 0,
        };
        Ok::<_, QueryError>((inner.table_index(Table::Services), result))
    })?;
    Ok(Json::new(&result, &query).meta(index).into_response())
}
