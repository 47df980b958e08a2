//! Namespaces and admin partitions: scoped requests, identities checked against them, and
//! Consul OSS's refusals as typed errors.
//!
//! agent-sim emulates Consul OSS; the refusals here are Consul 1.10.9's captured answers
//! (`m46`, `m48b`), served by wiremock so that every agent request can be inspected.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use consul_connect::agent::{AgentClient, AgentError};
use consul_connect::resolve::ResolveError;
use consul_connect::{CatalogResolver, ConnectService, Resolver};
use support::samples::{dir_1_10_9, Sample};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An agent answering every request as Consul 1.10.9 OSS answered `?ns=foo` (capture `m46`).
async fn oss_agent() -> (MockServer, String) {
    let refusal = Sample::load_path(&dir_1_10_9().join("m46_bad_intentions_list_ns_query.http"));
    assert_eq!(refusal.status, 400);
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(400).set_body_string(refusal.body.clone()))
        .mount(&server)
        .await;
    (server, refusal.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_in_a_namespace_is_refused_by_consul_oss_with_a_typed_error() {
    let (server, message) = oss_agent().await;
    let agent = AgentClient::new(&server.address().to_string()).unwrap();
    let web = ConnectService::builder("web")
        .agent(agent.clone())
        .namespace("foo")
        .partition("eu")
        .build()
        .await
        .unwrap();
    let err = web
        .ready_timeout(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Namespaces are a Consul Enterprise feature"),
        "{err}"
    );
    // Every agent request was scoped, as Go's client scopes them.
    let requests = server.received_requests().await.unwrap();
    assert!(!requests.is_empty());
    for request in &requests {
        let query = request.url.query().unwrap_or_default();
        assert!(
            query.contains("ns=foo") && query.contains("partition=eu"),
            "{} {query}",
            request.url.path()
        );
    }

    // Discovery in a namespace: the same refusal, typed.
    let err = CatalogResolver::new(agent, "db")
        .namespace("foo")
        .resolve()
        .await
        .unwrap_err();
    match err {
        ResolveError::Agent {
            source:
                AgentError::EnterpriseOnly {
                    message: m, status, ..
                },
            ..
        } => {
            assert_eq!(m, message.trim());
            assert_eq!(status, 400);
        }
        other => panic!("{other:?}"),
    }
}

/// An agent that ignores the namespace (Consul 1.4.5 had none) hands out a leaf for `default`:
/// a service configured for another namespace never serves with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_for_another_namespace_is_never_served() {
    let agent = support::agent::start_agent_1_4_5().await;
    let web = ConnectService::builder("web")
        .agent(support::agent::sdk_client(&agent))
        .namespace("foo")
        .build()
        .await
        .unwrap();
    let err = web
        .ready_timeout(Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not for namespace \"foo\""),
        "{err}"
    );
    assert!(web.material().is_none());
}
