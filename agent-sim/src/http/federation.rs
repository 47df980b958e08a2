//! Routes and forwarding of a federated agent (see [`crate::federation`]):
//! `/v1/catalog/datacenters`, the primary's intermediate signing, `?dc=` and writes that go to
//! the primary.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;

use super::{allow, plain, ApiError, AppState, Json, Query, RequestToken, MAX_BODY_BYTES};
use crate::federation::{IntermediateRequest, IntermediateResponse};

/// Where the primary signs a secondary's intermediate (agent-sim's stand-in for Consul's
/// `ConnectCA.SignIntermediate` RPC).
pub const INTERMEDIATE_PATH: &str = "/v1/internal/agent-sim/connect/ca/intermediate";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/catalog/datacenters", allow(get(datacenters), "GET"))
        .route(INTERMEDIATE_PATH, allow(post(sign_intermediate), "POST"))
}

async fn datacenters(State(app): State<AppState>, query: Query) -> Response {
    Json::new(&app.federation.datacenters(), &query).into_response()
}

async fn sign_intermediate(
    State(app): State<AppState>,
    token: RequestToken,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Whoever holds an intermediate can sign leaves for any service.
    super::require(app.acl(&token)?.operator_write())?;
    let req: IntermediateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequestPrefixed(format!("Request decode failed: {e}")))?;
    if app.federation.primary().is_some() {
        return Err(ApiError::Internal(
            "intermediates are signed by the primary datacenter".into(),
        ));
    }
    let public_key = base64::engine::general_purpose::STANDARD
        .decode(&req.public_key)
        .map_err(|e| ApiError::BadRequestPrefixed(format!("PublicKey: {e}")))?;
    let (serial, provider, ttl, root_id) = app
        .store
        .write(|inner, _, _| {
            let serial = inner.next_index();
            Ok::<_, crate::state::persist::PersistError>((
                serial,
                inner.ca.provider().clone(),
                inner.ca.intermediate_cert_ttl(),
                inner.ca.active_root().id.clone(),
            ))
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = app.store.clock().now();
    let cert_pem = provider
        .sign_intermediate(&public_key, &req.common_name, serial, now, ttl)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    app.federation.add_remote(&req.datacenter, &req.address);
    let answer = IntermediateResponse { cert_pem, root_id };
    Ok(Json::new(&answer, &Query::default()).into_response())
}

/// Sends a request for another datacenter (`?dc=`) to that datacenter's agent, and, in a
/// secondary, intention and config-entry writes to the primary (Consul forwards both).
/// A request served here carries `query` on to the handler's `Query` extractor, parsed once.
pub(super) async fn forward(
    app: &AppState,
    query: Query,
    mut request: Request,
    next: Next,
) -> Response {
    let federation = &app.federation;
    let own = &app.store.settings().datacenter;
    let target = match query.get("dc") {
        Some(dc) if !dc.is_empty() && dc != own => federation.remote(dc),
        _ if writes_to_primary(request.method(), request.uri().path()) => {
            federation.primary().map(|p| p.addr.clone())
        }
        _ => None,
    };
    let Some(addr) = target else {
        request.extensions_mut().insert(query);
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return plain(StatusCode::BAD_REQUEST, "request body too large".into());
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    match federation
        .send(&addr, parts.method, &path, &parts.headers, body)
        .await
    {
        Ok(answer) => {
            let (mut parts, body) = answer.into_parts();
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(body))
        }
        Err(reason) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rpc error: cannot reach the agent at {addr}: {reason}"),
        ),
    }
}

/// Writes a secondary forwards to the primary.
fn writes_to_primary(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && (path.starts_with("/v1/connect/intentions") || path.starts_with("/v1/config"))
}
