//! Prepared queries: create, list, read, delete, execute (with `?connect=true`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use consul_connect_types::api::{PreparedQuery, PreparedQueryResult};
use serde_json::json;

use super::{allow, decode_body, require, ApiError, AppState, Json, Query, RequestToken};
use crate::acl_rules::Authorizer;
use crate::cache::CachedBody;
use crate::state::catalog::ServiceFilter;
use crate::state::queries::QueryError;
use crate::state::Table;
use axum::http::HeaderMap;

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

/// The name Consul checks prepared-query ACLs on: the query's name; a query without one has
/// no ACL prefix (`GetACLPrefix`).
fn acl_prefix(q: &PreparedQuery) -> Option<&str> {
    (!q.name.is_empty()).then_some(q.name.as_str())
}

/// Whether `acl` may see `q` in a listing or a read (Consul's `filterPreparedQueries`: ACL
/// write sees every query, others need `query:read` on its name).
fn may_read(acl: &Authorizer, q: &PreparedQuery) -> bool {
    acl.acl_write() || acl_prefix(q).is_some_and(|p| acl.query_read(p))
}

async fn create(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let definition: PreparedQuery = decode_body(&body, QUERY_FIELDS)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
    let acl = app.acl(&token)?;
    if let Some(prefix) = acl_prefix(&definition) {
        require(acl.query_write(prefix))?;
    }
    let id = app.store.write(|inner, index, changes| {
        let id = inner.queries.create(definition, index)?;
        changes.touch(Table::Queries);
        Ok::<_, ApiError>(id)
    })?;
    Ok(Json::new(&json!({ "ID": id }), &query).into_response())
}

async fn list(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let acl = app.acl(&token)?;
    let (index, all) = app.store.read(|inner| {
        let all: Vec<PreparedQuery> = inner
            .queries
            .all()
            .filter(|q| may_read(&acl, q))
            .cloned()
            .collect();
        (inner.table_index(Table::Queries), all)
    });
    Ok(Json::new(&all, &query).meta(index).into_response())
}

async fn read(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    let acl = app.acl(&token)?;
    let found = app
        .store
        .read(|inner| inner.queries.find(&id).filter(|q| q.id == id).cloned())
        .ok_or(QueryError::NotFound)?;
    // A query that exists but is filtered out is a denial, not a 404.
    require(may_read(&acl, &found))?;
    Ok(Json::new(&[found], &query).into_response())
}

async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
) -> Result<Response, ApiError> {
    let acl = app.acl(&token)?;
    app.store.write(|inner, _, changes| {
        let stored = inner
            .queries
            .find(&id)
            .filter(|q| q.id == id)
            .ok_or(QueryError::NotFound)?;
        if let Some(prefix) = acl_prefix(stored) {
            require(acl.query_write(prefix))?;
        }
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
    headers: HeaderMap,
    query: Query,
) -> Result<Response, ApiError> {
    let path_id = id.clone();
    query.datacenter(&app.store)?;
    let acl = app.acl(&token)?;
    let connect = query.flag("connect");
    let store = app.store.clone();
    let fetch = move || -> Result<(u64, PreparedQueryResult), QueryError> {
        let now = store.clock().now();
        store.read(|inner| {
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
                // Consul's `filterCheckServiceNodes`: node and service must be readable.
                .filter(|e| acl.service_read(&e.service.service) && acl.node_read(&e.node.node))
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
                datacenter: store.settings().datacenter.clone(),
                failovers: 0,
            };
            Ok((inner.table_index(Table::Services), result))
        })
    };
    if !query.has("cached") {
        let (index, result) = fetch()?;
        return Ok(Json::new(&result, &query).meta(index).into_response());
    }
    // Prepared queries are a simple cache type: Cache-Control: max-age bounds the age.
    let max_age = cache_control_max_age(&headers);
    let key = format!("query/{}/{connect}", path_id);
    let mut failure = None;
    let lookup = app
        .cache
        .simple(&app.partition(&token), key, max_age, || match fetch() {
            Ok((index, result)) => (index, CachedBody::Query(result)),
            Err(e) => {
                failure = Some(e);
                (0, CachedBody::Health(Vec::new()))
            }
        });
    if let Some(e) = failure {
        return Err(e.into());
    }
    let Some((index, timed)) = lookup.value.borrow().clone() else {
        return Err(ApiError::Internal("agent cache: nothing fetched".into()));
    };
    let age = timed.fetched.elapsed().as_secs().to_string();
    let json = Json::new(&timed.body, &query).meta(index);
    Ok(if lookup.hit {
        json.header("X-Cache", "HIT").header("Age", &age)
    } else {
        json.header("X-Cache", "MISS")
    }
    .into_response())
}

/// `Cache-Control: max-age=N`.
fn cache_control_max_age(headers: &HeaderMap) -> Option<std::time::Duration> {
    headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age=")?.parse().ok())
        .map(std::time::Duration::from_secs)
}
