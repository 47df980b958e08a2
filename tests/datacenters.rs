//! Two datacenters: two embedded agent-sims, dc1 primary and dc2 secondary (joined as
//! Consul's WAN federation looks over HTTP), and the SDK dialing across them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use agent_sim::Agent;
use consul_connect::agent::AgentClient;
use consul_connect::http::HttpClient;
use consul_connect::{CatalogResolver, ConnectListener, ConnectService};
use http_body_util::BodyExt;
use serde_json::Value;
use support::agent::{fast_watch, openssl, sdk_client, start_agent, temp_dir, Raw, TRUST_DOMAIN};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const READY: Duration = Duration::from_secs(10);

async fn dc2_of(dc1: &Agent) -> Agent {
    Agent::builder()
        .datacenter("dc2")
        .node_name("dc2-server")
        .primary(dc1)
        .start()
        .await
        .expect("dc2 joins dc1")
}

fn pem_blocks(bundle: &str) -> Vec<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .map(|b| b.trim().to_owned() + "\n")
        .collect()
}

fn active_root(roots: &Value) -> &Value {
    let id = roots["ActiveRootID"].as_str().unwrap();
    roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == id)
        .unwrap()
}

/// `openssl verify` of `leaf` against `root`, with `untrusted` intermediates if any.
fn verify(dir: &std::path::Path, root: &str, untrusted: &[String], leaf: &str) -> bool {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let root = write("root.pem", root);
    let leaf = write("leaf.pem", leaf);
    let mut args = vec!["verify", "-CAfile", &root];
    let untrusted_path = write("untrusted.pem", &untrusted.concat());
    if !untrusted.is_empty() {
        args.extend(["-untrusted", &untrusted_path]);
    }
    args.push(&leaf);
    openssl(&args).0
}

fn text_of(dir: &std::path::Path, pem: &str) -> String {
    let path = dir.join("cert.pem");
    std::fs::write(&path, pem).unwrap();
    openssl(&["x509", "-noout", "-text", "-in", path.to_str().unwrap()]).1
}

/// Reads `path` on `raw` as a blocking query past `index` (10 s at most).
async fn next(raw: &Raw, path: &str, index: u64) -> support::agent::Answer {
    let sep = if path.contains('?') { '&' } else { '?' };
    raw.get(&format!("{path}{sep}index={index}&wait=10s")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secondary_ca_is_an_intermediate_of_the_primary_root() {
    let dc1 = start_agent().await;
    let dc2 = dc2_of(&dc1).await;
    let (raw1, raw2) = (Raw::new(&dc1), Raw::new(&dc2));
    let dir = temp_dir("datacenters-ca");

    // wan01: each lists itself first.
    assert_eq!(
        raw2.get("/v1/catalog/datacenters").await.json(),
        serde_json::json!(["dc2", "dc1"])
    );
    assert_eq!(
        raw1.get("/v1/catalog/datacenters").await.json(),
        serde_json::json!(["dc1", "dc2"])
    );

    // wan02 vs wan07: the primary's root, with dc2's intermediate and its key ID.
    let roots1 = raw1.get("/v1/connect/ca/roots").await.json();
    let roots2 = raw2.get("/v1/connect/ca/roots").await.json();
    assert_eq!(roots2["TrustDomain"], TRUST_DOMAIN);
    assert_eq!(roots2["ActiveRootID"], roots1["ActiveRootID"]);
    let (root1, root2) = (active_root(&roots1), active_root(&roots2));
    assert_eq!(root2["RootCert"], root1["RootCert"]);
    assert_eq!(root1["IntermediateCerts"], Value::Null);
    let intermediates = root2["IntermediateCerts"].as_array().unwrap();
    assert_eq!(intermediates.len(), 1);
    assert_ne!(root2["SigningKeyID"], root1["SigningKeyID"]);
    let intermediate = intermediates[0].as_str().unwrap().to_owned();
    let root_pem = root1["RootCert"].as_str().unwrap().to_owned();
    let text = text_of(&dir, &intermediate);
    assert!(text.contains("Subject: CN = sec-"), "{text}");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(verify(&dir, &root_pem, &[], &intermediate));
    // wan03: the agent endpoint answers the same.
    let agent_roots = raw2.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(
        active_root(&agent_roots)["IntermediateCerts"],
        root2["IntermediateCerts"]
    );

    // wan06 / wan_verify.txt: leaf + intermediate, verifying only through the intermediate.
    let leaf = raw2.get("/v1/agent/connect/ca/leaf/web").await.json();
    assert_eq!(
        leaf["ServiceURI"],
        format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc2/svc/web")
    );
    let chain = pem_blocks(leaf["CertPEM"].as_str().unwrap());
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].trim(), intermediate.trim());
    assert!(verify(&dir, &root_pem, &chain[1..], &chain[0]));
    assert!(!verify(&dir, &root_pem, &[], &chain[0]));

    // wan09: the primary's leaves are signed by the root itself.
    let leaf1 = raw1.get("/v1/agent/connect/ca/leaf/db").await.json();
    let chain1 = pem_blocks(leaf1["CertPEM"].as_str().unwrap());
    assert_eq!(chain1.len(), 1);
    assert!(verify(&dir, &root_pem, &[], &chain1[0]));

    // wan12 / wan13: ?dc=dc1 from dc2 is answered by dc1.
    let leaf_dc1 = raw2.get("/v1/agent/connect/ca/leaf/db?dc=dc1").await.json();
    assert_eq!(
        leaf_dc1["ServiceURI"],
        format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/db")
    );
    let roots_dc1 = raw2.get("/v1/connect/ca/roots?dc=dc1").await.json();
    assert_eq!(active_root(&roots_dc1)["IntermediateCerts"], Value::Null);
    let nowhere = raw2.get("/v1/connect/ca/roots?dc=dc9").await;
    assert_eq!(
        (nowhere.status, nowhere.body.as_str()),
        (500, "No path to datacenter")
    );

    // dc2's CA follows dc1's root: it cannot rotate on its own.
    let refused = raw2
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert!(
        refused.body.contains("secondary datacenter"),
        "{}",
        refused.body
    );

    // A rotation in dc1 reaches dc2: a new intermediate under the new root, and new leaves.
    let roots_index = raw2.get("/v1/connect/ca/roots").await.index();
    let leaf_index = leaf["ModifyIndex"].as_u64().unwrap();
    let put = raw1
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let new_roots1 = raw1.get("/v1/connect/ca/roots").await.json();
    let new_root_pem = active_root(&new_roots1)["RootCert"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut new_roots2 = next(&raw2, "/v1/connect/ca/roots", roots_index)
        .await
        .json();
    while new_roots2["ActiveRootID"] != new_roots1["ActiveRootID"] {
        let index = raw2.get("/v1/connect/ca/roots").await.index();
        new_roots2 = next(&raw2, "/v1/connect/ca/roots", index).await.json();
    }
    let new_intermediates: Vec<String> = active_root(&new_roots2)["IntermediateCerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        new_intermediates.len(),
        2,
        "cross-signed root + dc2's new intermediate"
    );
    let new_intermediate = new_intermediates.last().unwrap();
    assert_ne!(new_intermediate.trim(), intermediate.trim());
    assert!(verify(&dir, &new_root_pem, &[], new_intermediate));
    let new_leaf = next(&raw2, "/v1/agent/connect/ca/leaf/web", leaf_index)
        .await
        .json();
    assert_ne!(new_leaf["SerialNumber"], leaf["SerialNumber"]);
    let new_chain = pem_blocks(new_leaf["CertPEM"].as_str().unwrap());
    assert!(verify(&dir, &new_root_pem, &new_chain[1..], &new_chain[0]));
    // Through the cross-signed root, the old root still accepts it.
    assert!(verify(&dir, &root_pem, &new_chain[1..], &new_chain[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intentions_are_replicated_and_writes_forwarded_to_the_primary() {
    let dc1 = start_agent().await;
    let dc2 = dc2_of(&dc1).await;
    let (raw1, raw2) = (Raw::new(&dc1), Raw::new(&dc2));
    let authorize = r#"{"Target":"web","ClientCertURI":"spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/db"}"#;
    assert_eq!(
        raw2.post("/v1/agent/connect/authorize", authorize)
            .await
            .json()["Authorized"],
        true
    );

    // wan14 → wan15/wan16: written in dc1, read in dc2 from the replica.
    let index = raw2.get("/v1/connect/intentions").await.index();
    let created = raw1
        .post(
            "/v1/connect/intentions",
            r#"{"SourceName":"db","DestinationName":"web","Action":"deny"}"#,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.json()["ID"].as_str().unwrap().to_owned();
    let mut list = next(&raw2, "/v1/connect/intentions", index).await;
    while list.json().as_array().unwrap().is_empty() {
        list = next(&raw2, "/v1/connect/intentions", list.index()).await;
    }
    assert_eq!(list.json()[0]["ID"], id);
    let decision = raw2
        .post("/v1/agent/connect/authorize", authorize)
        .await
        .json();
    assert_eq!(decision["Authorized"], false, "{decision}");
    assert!(
        decision["Reason"].as_str().unwrap().contains(&id),
        "{decision}"
    );

    // wan17: written in dc2, stored in dc1.
    let forwarded = raw2
        .post(
            "/v1/connect/intentions",
            r#"{"SourceName":"api","DestinationName":"web","Action":"allow"}"#,
        )
        .await;
    assert_eq!(forwarded.status, 200, "{}", forwarded.body);
    let id = forwarded.json()["ID"].as_str().unwrap().to_owned();
    let in_dc1 = raw1.get(&format!("/v1/connect/intentions/{id}")).await;
    assert_eq!(in_dc1.status, 200, "{}", in_dc1.body);
    assert_eq!(in_dc1.json()["SourceName"], "api");
}

async fn service(agent: &AgentClient, name: &str) -> ConnectService {
    let service = ConnectService::builder(name)
        .agent(agent.clone())
        .watch_config(fast_watch())
        .build()
        .await
        .unwrap();
    service.ready_timeout(READY).await.unwrap();
    service
}

/// An echo server for `service`, registered in its agent's catalog.
async fn echo_server(service: &ConnectService, raw: &Raw) -> SocketAddr {
    let mut listener = ConnectListener::bind(service, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = format!("{line} from {}\n", peer);
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let body = serde_json::json!({
        "Name": service.name(), "Port": addr.port(), "Address": addr.ip().to_string(),
        "Connect": {"Native": true},
    });
    let answer = raw
        .put("/v1/agent/service/register", &body.to_string())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    addr
}

/// Dials `target` in `dc` from `from` through the catalog and asks one line.
async fn ask(
    from: &ConnectService,
    client: &AgentClient,
    target: &str,
    dc: &str,
    line: &str,
) -> String {
    let resolver = CatalogResolver::new(client.clone(), target).datacenter(dc);
    let stream = from.dialer().dial(&resolver).await.unwrap();
    let (read, mut write) = tokio::io::split(stream);
    write
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await.unwrap();
    answer.trim_end().to_owned()
}

/// Waits until `service` publishes a leaf other than `serial`.
async fn wait_for_new_leaf(service: &ConnectService, serial: &str) {
    let mut updates = service.material_updates();
    tokio::time::timeout(Duration::from_secs(15), async {
        while service.status().leaf_serial.as_deref() == Some(serial) {
            updates.changed().await.unwrap();
        }
    })
    .await
    .expect("a new leaf is published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_in_dc2_dials_db_in_dc1_across_a_root_rotation() {
    let dc1 = start_agent().await;
    let dc2 = dc2_of(&dc1).await;
    let (client1, client2) = (sdk_client(&dc1), sdk_client(&dc2));
    let db = service(&client1, "db").await;
    echo_server(&db, &Raw::new(&dc1)).await;
    let web = service(&client2, "web").await;
    let web_id = web.identity().unwrap();
    assert_eq!(web_id.datacenter(), "dc2");
    assert_eq!(
        web.material().unwrap().leaf_chain().len(),
        2,
        "dc2's leaf + its intermediate"
    );

    let answer = ask(&web, &client2, "db", "dc1", "hello").await;
    assert_eq!(answer, format!("hello from {web_id}"));
    // And the other way: web serves in dc2 with its leaf + intermediate.
    echo_server(&web, &Raw::new(&dc2)).await;
    let db_id = db.identity().unwrap();
    let answer = ask(&db, &client1, "web", "dc2", "hi").await;
    assert_eq!(answer, format!("hi from {db_id}"));

    // The HTTP client: a server for db in dc1, reached by its Consul name.
    let http_db = service(&client1, "db").await;
    let listener = ConnectListener::bind(&http_db, "127.0.0.1:0")
        .await
        .unwrap();
    let http_addr = listener.local_addr();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|caller: consul_connect::http::Caller| async move {
            format!("caller={}", caller.id())
        }),
    );
    tokio::spawn(consul_connect::http::serve(listener, app));
    let http = HttpClient::new(&web);
    // Only the HTTP server is registered from here on.
    let raw1 = Raw::new(&dc1);
    let dereg = raw1.put("/v1/agent/service/deregister/db", "").await;
    assert_eq!(dereg.status, 200, "{}", dereg.body);
    let body = serde_json::json!({
        "Name": "db", "Port": http_addr.port(), "Address": "127.0.0.1",
        "Connect": {"Native": true},
    });
    assert_eq!(
        raw1.put("/v1/agent/service/register", &body.to_string())
            .await
            .status,
        200
    );
    let get = |http: HttpClient| async move {
        let response = http.get("http://db.service.dc1.consul/").await.unwrap();
        assert_eq!(response.status(), 200);
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };
    assert_eq!(get(http.clone()).await, format!("caller={web_id}"));

    // A root rotation in dc1: dc2 gets a new intermediate, web and db new leaves.
    let web_serial = web.status().leaf_serial.unwrap();
    let db_serial = http_db.status().leaf_serial.unwrap();
    let put = raw1
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    wait_for_new_leaf(&web, &web_serial).await;
    wait_for_new_leaf(&http_db, &db_serial).await;
    let chain = web.material().unwrap().leaf_chain().len();
    assert_eq!(
        chain, 3,
        "leaf + cross-signed root + dc2's new intermediate"
    );
    // New connections (the pool's old one may be gone with the old leaf's connection).
    let fresh = HttpClient::new(&web);
    assert_eq!(get(fresh).await, format!("caller={web_id}"));
}

/// Consul 1.16+ answers 403 on `/v1/health/connect/<svc>` to a token without `service:read`
/// (1.10, which agent-sim emulates, filters to an empty list: a wiremock stands in).
#[tokio::test]
async fn a_403_on_discovery_names_the_missing_service_read() {
    use consul_connect::resolve::{ResolveError, Resolver};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let message = r#"Permission denied: token with AccessorID 'c4e8a2f0-5a1b-4c1d-9e6f-0a1b2c3d4e5f' lacks permission 'service:read' on "db""#;
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/health/connect/db"))
        .respond_with(ResponseTemplate::new(403).set_body_string(message))
        .mount(&mock)
        .await;
    let client = AgentClient::new(&mock.address().to_string()).unwrap();
    let err = CatalogResolver::new(client, "db")
        .datacenter("dc1")
        .resolve()
        .await
        .unwrap_err();
    match &err {
        ResolveError::PermissionDenied {
            service,
            datacenter,
            permission,
            message: got,
            ..
        } => {
            assert_eq!(service, "db");
            assert_eq!(datacenter.as_deref(), Some("dc1"));
            assert_eq!(permission, "service:read");
            assert_eq!(got, message);
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(r#"cannot discover "db" in dc1: the token lacks service:read on "db""#),
        "{err}"
    );
}

/// With ACLs on, an intermediate (which can sign leaves for any service) is signed only for
/// `operator:write`; a secondary sends its management token, as a replication token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediates_need_operator_write() {
    use agent_sim::acl_rules::DefaultPolicy;
    let secured = |dc: &str| {
        Agent::builder()
            .datacenter(dc)
            .acl(DefaultPolicy::Deny)
            .acl_initial_management_token("root")
    };
    let dc1 = secured("dc1").start().await.unwrap();
    let raw1 = Raw::new(&dc1);
    // Refused before the key is even read.
    let body = serde_json::json!({
        "PublicKey": "AAAA",
        "CommonName": "sec-x.consul.ca.11111111.consul",
        "Datacenter": "dc9",
        "Address": "127.0.0.1:1",
    })
    .to_string();
    let anonymous = raw1
        .post("/v1/internal/agent-sim/connect/ca/intermediate", &body)
        .await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (403, "Permission denied")
    );
    assert_eq!(
        raw1.get("/v1/catalog/datacenters?token=root").await.json(),
        serde_json::json!(["dc1"]),
        "a refused caller is not listed"
    );

    let dc2 = secured("dc2").primary(&dc1).start().await.unwrap();
    let roots = Raw::new(&dc2)
        .get("/v1/connect/ca/roots?token=root")
        .await
        .json();
    assert_eq!(
        active_root(&roots)["IntermediateCerts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
