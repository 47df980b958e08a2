//! Two datacenters: a secondary agent-sim joined to a primary over HTTP, as Consul's WAN
//! federation looks from the HTTP API.
//!
//! The secondary shares the primary's trust domain. Its CA is an intermediate the primary's
//! active root signs (`sec-…` CN, pathlen 0, a year), so its leaves chain leaf → intermediate →
//! the primary's root; the roots it serves are the primary's, with that intermediate added to
//! the active root's `IntermediateCerts` and its key as `SigningKeyID`. A rotation in the
//! primary reaches the secondary through a blocking roots query: it has a new intermediate
//! signed and its leaves follow. Intentions are replicated the same way (reads in the
//! secondary answer from the replica), and intention and config-entry writes are forwarded to
//! the primary, as are requests for another datacenter (`?dc=`).
//!
//! The primary signs intermediates at `POST /v1/internal/agent-sim/connect/ca/intermediate`,
//! agent-sim's stand-in for Consul's `ConnectCA.SignIntermediate` RPC (the secondary sends its
//! public key, not a CSR; `operator:write` is required, as for the RPC). That call also tells the primary the secondary's datacenter and
//! address, so each lists the other in `/v1/catalog/datacenters` and forwards `?dc=` to it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};
use base64::Engine as _;
use consul_connect_types::api::{CaRootList, Intention};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde::{Deserialize, Serialize};

use crate::ca::EcKey;
use crate::state::{Store, Table};

/// How long a replication query blocks on the primary.
const REPLICATION_WAIT: &str = "60s";
/// Pause before retrying a failed replication query.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Largest answer read from another datacenter.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The datacenters an agent knows of, and the HTTP client that reaches them.
#[derive(Debug)]
pub struct Federation {
    datacenter: String,
    primary: Option<Remote>,
    /// Other datacenters by name: their HTTP address (`host:port`).
    remotes: RwLock<BTreeMap<String, String>>,
    client: Client<HttpConnector, Body>,
    /// The token a secondary sends the primary (signing needs `operator:write`, replication
    /// reads `intentions:read`): Consul's replication token.
    token: Option<String>,
}

/// Another datacenter's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Its datacenter.
    pub datacenter: String,
    /// Its HTTP address (`host:port`).
    pub addr: String,
}

impl Remote {
    /// `addr` as `host:port`, with any `http://` prefix and trailing `/` removed.
    pub fn new(datacenter: impl Into<String>, addr: &str) -> Remote {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/');
        Remote {
            datacenter: datacenter.into(),
            addr: addr.to_owned(),
        }
    }
}

/// Why a secondary could not join its primary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// The primary could not be reached or answered an error.
    #[error("primary datacenter {datacenter} at {addr}: {reason}")]
    Primary {
        /// The primary's datacenter.
        datacenter: String,
        /// Its address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The primary's answer could not be used.
    #[error("cannot use the primary's CA: {0}")]
    Ca(#[from] crate::ca::CaError),
}

/// `POST /v1/internal/agent-sim/connect/ca/intermediate`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntermediateRequest {
    /// The intermediate's public key: base64 of the DER SubjectPublicKeyInfo.
    pub public_key: String,
    /// Its common name.
    pub common_name: String,
    /// The secondary's datacenter.
    pub datacenter: String,
    /// The secondary's HTTP address.
    pub address: String,
}

/// Its answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntermediateResponse {
    /// The intermediate certificate, PEM.
    pub cert_pem: String,
    /// The ID of the root that signed it.
    #[serde(rename = "RootID")]
    pub root_id: String,
}

impl Federation {
    /// An agent in `datacenter`, joined to `primary` when it is a secondary, sending `token`
    /// to it (with ACLs on in the primary).
    pub fn new(datacenter: String, primary: Option<Remote>, token: Option<String>) -> Federation {
        let remotes = primary
            .iter()
            .map(|p| (p.datacenter.clone(), p.addr.clone()))
            .collect();
        Federation {
            datacenter,
            primary,
            remotes: RwLock::new(remotes),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            token,
        }
    }

    /// Headers of the secondary's own requests to the primary.
    fn own_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = self
            .token
            .as_deref()
            .and_then(|t| axum::http::HeaderValue::from_str(t).ok())
        {
            headers.insert("X-Consul-Token", value);
        }
        headers
    }

    /// The primary, in a secondary.
    pub fn primary(&self) -> Option<&Remote> {
        self.primary.as_ref()
    }

    /// Every datacenter known, this one first (Consul sorts by round-trip time).
    pub fn datacenters(&self) -> Vec<String> {
        let remotes = self.remotes.read().unwrap_or_else(|e| e.into_inner());
        std::iter::once(self.datacenter.clone())
            .chain(remotes.keys().filter(|dc| **dc != self.datacenter).cloned())
            .collect()
    }

    /// The address of another datacenter's agent.
    pub fn remote(&self, datacenter: &str) -> Option<String> {
        let remotes = self.remotes.read().unwrap_or_else(|e| e.into_inner());
        remotes.get(datacenter).cloned()
    }

    /// Records a secondary that joined this (primary) agent.
    pub fn add_remote(&self, datacenter: &str, addr: &str) {
        if datacenter == self.datacenter || datacenter.is_empty() {
            return;
        }
        let remote = Remote::new(datacenter, addr);
        let mut remotes = self.remotes.write().unwrap_or_else(|e| e.into_inner());
        remotes.insert(remote.datacenter, remote.addr);
    }

    /// Sends a request to `addr` and reads the whole answer.
    pub async fn send(
        &self,
        addr: &str,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Bytes>, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path_and_query}"))
            .body(Body::from(body))
            .map_err(|e| e.to_string())?;
        for (name, value) in headers {
            if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                request.headers_mut().append(name.clone(), value.clone());
            }
        }
        let answer = self
            .client
            .request(request)
            .await
            .map_err(|e| with_sources(&e))?;
        let (parts, body) = answer.into_parts();
        let body = axum::body::to_bytes(Body::new(body), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Response::from_parts(parts, body))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        primary: &Remote,
        path_and_query: &str,
    ) -> Result<(u64, T), FederationError> {
        let answer = self
            .send(
                &primary.addr,
                Method::GET,
                path_and_query,
                &self.own_headers(),
                Bytes::new(),
            )
            .await
            .map_err(|reason| primary_error(primary, reason))?;
        decode(primary, answer)
    }
}

/// An error and its causes (hyper-util's own text is only `client error (Connect)`).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn primary_error(primary: &Remote, reason: String) -> FederationError {
    FederationError::Primary {
        datacenter: primary.datacenter.clone(),
        addr: primary.addr.clone(),
        reason,
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    primary: &Remote,
    answer: Response<Bytes>,
) -> Result<(u64, T), FederationError> {
    if answer.status() != StatusCode::OK {
        return Err(primary_error(
            primary,
            format!(
                "{}: {}",
                answer.status(),
                String::from_utf8_lossy(answer.body())
            ),
        ));
    }
    let index = answer
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let value = serde_json::from_slice(answer.body())
        .map_err(|e| primary_error(primary, format!("undecodable answer: {e}")))?;
    Ok((index, value))
}

/// The primary's roots, before the secondary's store exists: its trust domain names the
/// cluster the secondary joins.
pub async fn primary_roots(federation: &Federation) -> Result<Option<CaRootList>, FederationError> {
    let Some(primary) = federation.primary() else {
        return Ok(None);
    };
    let (_, roots) = federation
        .get_json::<CaRootList>(primary, "/v1/connect/ca/roots")
        .await?;
    Ok(Some(roots))
}

/// Has the primary sign a new intermediate for the secondary and installs it with `roots`.
async fn install_intermediate(
    federation: &Federation,
    store: &Store,
    own_addr: &str,
    roots: CaRootList,
) -> Result<String, FederationError> {
    let Some(primary) = federation.primary() else {
        return Ok(String::new());
    };
    let key = EcKey::generate()?;
    let names = store.settings().profile().ca.cert_names;
    let request = IntermediateRequest {
        public_key: base64::engine::general_purpose::STANDARD.encode(key.subject_public_key_info()),
        common_name: names.ca(0, store.trust_domain(), false),
        datacenter: federation.datacenter.clone(),
        address: own_addr.to_owned(),
    };
    let body = serde_json::to_vec(&request).unwrap_or_default();
    let answer = federation
        .send(
            &primary.addr,
            Method::POST,
            crate::http::INTERMEDIATE_PATH,
            &federation.own_headers(),
            body.into(),
        )
        .await
        .map_err(|reason| primary_error(primary, reason))?;
    let (_, signed): (_, IntermediateResponse) = decode(primary, answer)?;
    store.write(|inner, _, changes| {
        if inner
            .ca
            .set_secondary(roots, Some((&signed.cert_pem, key)))?
        {
            changes.touch(Table::Roots);
        }
        Ok::<_, FederationError>(())
    })?;
    Ok(signed.root_id)
}

impl From<crate::state::persist::PersistError> for FederationError {
    fn from(e: crate::state::persist::PersistError) -> Self {
        FederationError::Ca(e.into())
    }
}

/// Joins the primary: installs a first intermediate (before the agent serves, so its first
/// leaves already chain to the primary), then keeps roots and intentions replicated in the
/// background until the returned handle is dropped.
pub async fn join(
    federation: Arc<Federation>,
    store: Arc<Store>,
    own_addr: String,
    roots: CaRootList,
) -> Result<Option<ReplicationHandle>, FederationError> {
    if federation.primary().is_none() {
        return Ok(None);
    }
    let signed_under = install_intermediate(&federation, &store, &own_addr, roots).await?;
    let roots_task = tokio::spawn(replicate_roots(
        federation.clone(),
        store.clone(),
        own_addr,
        signed_under,
    ));
    let intentions_task = tokio::spawn(replicate_intentions(federation, store));
    Ok(Some(ReplicationHandle {
        tasks: vec![roots_task, intentions_task],
    }))
}

/// Stops replication when dropped.
#[derive(Debug)]
pub struct ReplicationHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ReplicationHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Follows the primary's roots: a new active root gets a new intermediate signed; other
/// changes (a root pruned) are copied.
async fn replicate_roots(
    federation: Arc<Federation>,
    store: Arc<Store>,
    own_addr: String,
    mut signed_under: String,
) {
    let Some(primary) = federation.primary().cloned() else {
        return;
    };
    let mut index = 0;
    loop {
        let path = format!("/v1/connect/ca/roots?index={index}&wait={REPLICATION_WAIT}");
        let step = async {
            let (new_index, roots) = federation.get_json::<CaRootList>(&primary, &path).await?;
            index = new_index;
            if roots.active_root_id != signed_under {
                signed_under = install_intermediate(&federation, &store, &own_addr, roots).await?;
            } else {
                store.write(|inner, _, changes| {
                    if inner.ca.set_secondary(roots, None)? {
                        changes.touch(Table::Roots);
                    }
                    Ok::<_, FederationError>(())
                })?;
            }
            Ok::<_, FederationError>(())
        };
        if let Err(e) = step.await {
            tracing::warn!(error = %e, "roots replication from the primary failed; retrying");
            index = 0;
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}

/// Keeps a replica of the primary's intentions.
async fn replicate_intentions(federation: Arc<Federation>, store: Arc<Store>) {
    let Some(primary) = federation.primary().cloned() else {
        return;
    };
    let mut index = 0;
    loop {
        let path = format!("/v1/connect/intentions?index={index}&wait={REPLICATION_WAIT}");
        let step = async {
            let (new_index, list) = federation
                .get_json::<Vec<Intention>>(&primary, &path)
                .await?;
            if new_index != index {
                store.write(|inner, _, changes| {
                    inner.intentions.replace_all(list);
                    changes.touch(Table::Intentions);
                    Ok::<_, FederationError>(())
                })?;
            }
            index = new_index;
            Ok::<_, FederationError>(())
        };
        if let Err(e) = step.await {
            tracing::warn!(error = %e, "intention replication from the primary failed; retrying");
            index = 0;
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}
