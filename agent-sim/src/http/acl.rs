//! ACL endpoints: bootstrap, policies, tokens (Consul 1.4's API).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use consul_connect_types::api::{AclPolicy, AclToken};

use super::{allow, decode_body, require, ApiError, AppState, Json, Query, RequestToken};
use crate::state::acl::AclError;
use crate::state::Table;

const POLICY_FIELDS: &[&str] = &["ID", "Name", "Description", "Rules", "Datacenters"];
const TOKEN_FIELDS: &[&str] = &[
    "AccessorID",
    "SecretID",
    "Description",
    "Policies",
    "Local",
    "ID",
    "Name",
];

/// What Consul shows instead of a secret the caller may not see.
const HIDDEN: &str = "<hidden>";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/acl/bootstrap", allow(put(bootstrap), "PUT"))
        .route("/v1/acl/policy", allow(put(create_policy), "PUT"))
        .route(
            "/v1/acl/policy/{id}",
            allow(
                get(read_policy).put(update_policy).delete(delete_policy),
                "GET,PUT,DELETE",
            ),
        )
        .route("/v1/acl/policies", allow(get(list_policies), "GET"))
        .route("/v1/acl/token", allow(put(create_token), "PUT"))
        .route("/v1/acl/token/self", allow(get(token_self), "GET"))
        .route(
            "/v1/acl/token/{accessor}",
            allow(
                get(read_token).put(update_token).delete(delete_token),
                "GET,PUT,DELETE",
            ),
        )
        .route("/v1/acl/tokens", allow(get(list_tokens), "GET"))
}

fn enabled(app: &AppState) -> Result<(), ApiError> {
    if app.store.settings().acl.enabled {
        Ok(())
    } else {
        Err(AclError::Disabled.into())
    }
}

fn acl_read(app: &AppState, token: &RequestToken) -> Result<(), ApiError> {
    enabled(app)?;
    require(app.acl(token)?.acl_read())
}

fn acl_write(app: &AppState, token: &RequestToken) -> Result<(), ApiError> {
    enabled(app)?;
    require(app.acl(token)?.acl_write())
}

/// Runs an ACL write and marks the ACL table changed.
fn write<R>(
    app: &AppState,
    f: impl FnOnce(&mut crate::state::acl::AclState, u64, time::OffsetDateTime) -> Result<R, AclError>,
) -> Result<R, ApiError> {
    let now = app.store.clock().now();
    Ok(app.store.write(|inner, index, changes| {
        let result = f(&mut inner.acl, index, now)?;
        changes.touch(Table::Acl);
        Ok::<_, AclError>(result)
    })?)
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8], fields: &[&str]) -> Result<T, ApiError> {
    decode_body(body, fields)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
}

async fn bootstrap(State(app): State<AppState>, query: Query) -> Result<Response, ApiError> {
    enabled(&app)?;
    let token = write(&app, |acl, index, now| acl.bootstrap(index, now))?;
    Ok(Json::new(&token, &query).into_response())
}

async fn create_policy(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    acl_write(&app, &token)?;
    let mut policy: AclPolicy = decode(&body, POLICY_FIELDS)?;
    if !policy.id.is_empty() {
        return Err(ApiError::BadRequest(
            "Cannot specify an ID when creating a policy".into(),
        ));
    }
    policy.id.clear();
    let modern = app.acl_rules.modern_rule_errors;
    let policy = write(&app, |acl, index, _| acl.set_policy(policy, index, modern))?;
    Ok(Json::new(&policy, &query).into_response())
}

async fn update_policy(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    acl_write(&app, &token)?;
    let mut policy: AclPolicy = decode(&body, POLICY_FIELDS)?;
    policy.id = id;
    let modern = app.acl_rules.modern_rule_errors;
    let policy = write(&app, |acl, index, _| acl.set_policy(policy, index, modern))?;
    Ok(Json::new(&policy, &query).into_response())
}

async fn read_policy(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    acl_read(&app, &token)?;
    let policy = app
        .store
        .read(|inner| inner.acl.policy(&id).cloned())
        .ok_or(AclError::NoSuchPolicy)?;
    Ok(Json::new(&policy, &query).into_response())
}

async fn delete_policy(
    State(app): State<AppState>,
    Path(id): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    acl_write(&app, &token)?;
    write(&app, |acl, _, _| acl.delete_policy(&id))?;
    Ok(Json::new(&true, &query).into_response())
}

async fn list_policies(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    acl_read(&app, &token)?;
    let (index, mut list) = app.store.read(|inner| {
        let list: Vec<AclPolicy> = inner.acl.policies().cloned().collect();
        (inner.table_index(Table::Acl), list)
    });
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json::new(&list, &query).meta(index).into_response())
}

async fn create_token(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    acl_write(&app, &token)?;
    let new: AclToken = decode(&body, TOKEN_FIELDS)?;
    if !new.accessor_id.is_empty() {
        return Err(ApiError::BadRequest(
            "Cannot specify an AccessorID when creating a token".into(),
        ));
    }
    let created = write(&app, |acl, index, now| acl.set_token(new, index, now))?;
    Ok(Json::new(&created, &query).into_response())
}

async fn update_token(
    State(app): State<AppState>,
    Path(accessor): Path<String>,
    token: RequestToken,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    acl_write(&app, &token)?;
    let mut update: AclToken = decode(&body, TOKEN_FIELDS)?;
    update.accessor_id = accessor;
    let updated = write(&app, |acl, index, now| acl.set_token(update, index, now))?;
    Ok(Json::new(&updated, &query).into_response())
}

async fn read_token(
    State(app): State<AppState>,
    Path(accessor): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    enabled(&app)?;
    let acl = app.acl(&token)?;
    require(acl.acl_read())?;
    let mut found = app
        .store
        .read(|inner| inner.acl.token(&accessor).cloned())
        .ok_or(AclError::NotFound)?;
    // Consul shows a token's secret only to tokens that may write ACLs.
    if !acl.acl_write() {
        found.secret_id = HIDDEN.to_owned();
    }
    Ok(Json::new(&found, &query).into_response())
}

async fn token_self(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    enabled(&app)?;
    // No token is not the anonymous token here: Consul looks the secret up and finds none.
    if token.0.is_empty() {
        return Err(AclError::NotFound.into());
    }
    let found = app
        .store
        .read(|inner| inner.acl.token_by_secret(&token.0).cloned())
        .ok_or(AclError::NotFound)?;
    Ok(Json::new(&found, &query).into_response())
}

async fn delete_token(
    State(app): State<AppState>,
    Path(accessor): Path<String>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    acl_write(&app, &token)?;
    write(&app, |acl, _, _| acl.delete_token(&accessor))?;
    Ok(Json::new(&true, &query).into_response())
}

async fn list_tokens(
    State(app): State<AppState>,
    token: RequestToken,
    query: Query,
) -> Result<Response, ApiError> {
    enabled(&app)?;
    let acl = app.acl(&token)?;
    require(acl.acl_read())?;
    // 1.4 listings never carry secrets; 1.9+ ones do, hidden from tokens without acl:write.
    let secret = |t: &AclToken| match (app.acl_rules.token_list_secrets, acl.acl_write()) {
        (false, _) => String::new(),
        (true, true) => t.secret_id.clone(),
        (true, false) => HIDDEN.to_owned(),
    };
    let (index, mut list) = app.store.read(|inner| {
        let list: Vec<AclToken> = inner
            .acl
            .tokens()
            .map(|t| AclToken {
                secret_id: secret(t),
                ..t.clone()
            })
            .collect();
        (inner.table_index(Table::Acl), list)
    });
    list.sort_by(|a, b| a.accessor_id.cmp(&b.accessor_id));
    Ok(Json::new(&list, &query).meta(index).into_response())
}
