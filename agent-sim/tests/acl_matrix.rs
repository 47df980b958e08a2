//! The ACL matrix: every request of `tests/data/acl-matrix/` asked with each of 20 kinds of
//! token of an embedded agent-sim (ACLs on, `default_policy = "deny"`, node `node1`), held
//! cell for cell to what real Consul answered: the status, the error text, the items a listing
//! returns and the decision fields (`SecretID` shown or hidden, `Authorized`, `Allowed`).
//!
//! The expected cells come from real Consul 1.4.5 and 1.10.9 agents (see the README next to
//! them). The requests, fixtures and normalisation follow the harness that asked them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use agent_sim::acl_rules::DefaultPolicy;
use agent_sim::profile::ConsulVersion;
use agent_sim::Agent;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MANAGEMENT: &str = "root";
const GLOBAL_MANAGEMENT: &str = "00000000-0000-0000-0000-000000000001";

/// `ask` with every token kind, in 1.4.5 mode: no cell may differ from Consul 1.4.5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_matches_consul_1_4_5() {
    let expected = load("consul-1.4.5.json");
    let cells = run(ConsulVersion::V1_4_5, &expected).await;
    assert_eq!(cells.len(), 800, "20 token kinds x 40 requests");
    compare(&expected, &cells);
}

/// `ask` with every token kind, in 1.10.9 mode, the 1.9+ endpoints (intentions/exact, config
/// entries) included: no cell may differ from Consul 1.10.9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_matches_consul_1_10_9() {
    let expected = load("consul-1.10.9.json");
    let cells = run(ConsulVersion::V1_10_9, &expected).await;
    assert_eq!(cells.len(), 940, "20 token kinds x 47 requests");
    compare(&expected, &cells);
}

/// One answer, reduced to what must match.
#[derive(Debug, Clone, PartialEq)]
struct Cell {
    token: String,
    request: String,
    status: u16,
    error: Option<String>,
    names: Option<Vec<String>>,
    fields: Option<BTreeMap<String, Value>>,
}

struct Expected {
    kinds: Vec<(String, Option<String>)>,
    /// Policies created before the tokens, to compare rule validation: (name, rules, status,
    /// body).
    probes: Vec<(String, String, u16, String)>,
    cells: Vec<Cell>,
}

fn load(file: &str) -> Expected {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/acl-matrix/");
    let text = std::fs::read_to_string(format!("{path}{file}")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let kinds = doc["token_kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let rules = k["rules"].as_str().map(str::to_owned);
            (k["token"].as_str().unwrap().to_owned(), rules)
        })
        .collect();
    let cells = doc["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Cell {
            token: c["token"].as_str().unwrap().to_owned(),
            request: c["request"].as_str().unwrap().to_owned(),
            status: c["status"].as_u64().unwrap() as u16,
            error: c["error"].as_str().map(str::to_owned),
            names: c.get("names").map(|n| {
                n.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect()
            }),
            fields: c.get("fields").map(|f| {
                f.as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
        })
        .collect();
    let probes = doc["policy_probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_owned();
            let status = p["status"].as_u64().unwrap() as u16;
            (s("name"), s("rules"), status, s("body"))
        })
        .collect();
    Expected {
        kinds,
        probes,
        cells,
    }
}

fn compare(expected: &Expected, got: &[Cell]) {
    let want: BTreeMap<(&str, &str), &Cell> = expected
        .cells
        .iter()
        .map(|c| ((c.token.as_str(), c.request.as_str()), c))
        .collect();
    let mut differ = Vec::new();
    for cell in got {
        let Some(exp) = want.get(&(cell.token.as_str(), cell.request.as_str())) else {
            differ.push(format!("not in the expected data: {cell:?}"));
            continue;
        };
        if *exp != cell {
            differ.push(format!(
                "{} | {}\n    consul:    {:?} {:?} {:?} {:?}\n    agent-sim: {:?} {:?} {:?} {:?}",
                cell.token,
                cell.request,
                exp.status,
                exp.error,
                exp.names,
                exp.fields,
                cell.status,
                cell.error,
                cell.names,
                cell.fields
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} cells differ:\n{}",
        differ.len(),
        got.len(),
        differ.join("\n")
    );
}

async fn run(version: ConsulVersion, expected: &Expected) -> Vec<Cell> {
    let agent = Agent::builder()
        .node_name("node1")
        .acl(DefaultPolicy::Deny)
        .acl_initial_management_token(MANAGEMENT)
        .consul_version(version)
        .start()
        .await
        .unwrap();
    let mut m = Matrix {
        addr: agent.addr(),
        known: Vec::new(),
        tokens: BTreeMap::new(),
        cells: Vec::new(),
        query_id: String::new(),
        ca_config: Value::Null,
        // As the harness: the 1.9+ endpoints are asked where they exist.
        extended: version.profile().config_entries,
    };
    for (name, rules, status, body) in &expected.probes {
        let policy = json!({"Name": format!("probe-{name}"), "Rules": rules}).to_string();
        let got = call(
            m.addr,
            "PUT",
            "/v1/acl/policy",
            Some(MANAGEMENT),
            Some(&policy),
        )
        .await;
        let got_body = if got.0 == 200 { "<policy>" } else { &got.1 };
        assert_eq!(
            (got.0, got_body),
            (*status, body.as_str()),
            "policy {rules}"
        );
    }
    m.setup(&expected.kinds).await;
    for (kind, _) in &expected.kinds {
        m.run_token(kind).await;
    }
    agent.shutdown().await;
    m.cells
}

struct Matrix {
    addr: SocketAddr,
    /// literal -> placeholder, as the harness's normaliser holds them.
    known: Vec<(String, String)>,
    /// kind -> (secret, accessor)
    tokens: BTreeMap<String, (Option<String>, Option<String>)>,
    cells: Vec<Cell>,
    query_id: String,
    ca_config: Value,
    /// Whether the 1.9+ endpoints are asked.
    extended: bool,
}

const WEB: &str = r#"{"ID":"web","Name":"web","Port":8080,"Connect":{"Native":true}}"#;
const DB: &str =
    r#"{"ID":"db","Name":"db","Port":5432,"Connect":{"Native":true},"Check":{"TTL":"10m"}}"#;

impl Matrix {
    async fn mgmt(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, text) = call(self.addr, method, path, Some(MANAGEMENT), body).await;
        assert_eq!(status, 200, "{method} {path} as management: {text}");
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    fn add(&mut self, literal: &str, placeholder: String) {
        if !literal.is_empty() {
            self.known.push((literal.to_owned(), placeholder));
            self.known.sort_by_key(|k| std::cmp::Reverse(k.0.len()));
        }
    }

    async fn setup(&mut self, kinds: &[(String, Option<String>)]) {
        let roots = self.mgmt("GET", "/v1/connect/ca/roots", None).await;
        let td = roots["TrustDomain"].as_str().unwrap().to_owned();
        self.add(&td, "<trust-domain>".into());
        self.add(MANAGEMENT, "<secret:management>".into());
        for (kind, rules) in kinds {
            let entry = match kind.as_str() {
                "anonymous" => (None, None),
                "unknown" => {
                    let secret = uuid::Uuid::new_v4().to_string();
                    self.add(&secret, "<secret:unknown>".into());
                    (Some(secret), None)
                }
                "management" => {
                    let me = self.mgmt("GET", "/v1/acl/token/self", None).await;
                    let accessor = me["AccessorID"].as_str().unwrap().to_owned();
                    self.add(&accessor, "<accessor:management>".into());
                    (Some(MANAGEMENT.to_owned()), Some(accessor))
                }
                _ => {
                    let policy = if kind == "mgmt-policy" {
                        GLOBAL_MANAGEMENT.to_owned()
                    } else {
                        let body = json!({
                            "Name": format!("p-{}", kind.replace('+', "-")),
                            "Rules": rules.as_deref().unwrap_or(""),
                        });
                        let p = self
                            .mgmt("PUT", "/v1/acl/policy", Some(&body.to_string()))
                            .await;
                        p["ID"].as_str().unwrap().to_owned()
                    };
                    let body = json!({"Description": kind, "Policies": [{"ID": policy}]});
                    let tok = self
                        .mgmt("PUT", "/v1/acl/token", Some(&body.to_string()))
                        .await;
                    let secret = tok["SecretID"].as_str().unwrap().to_owned();
                    let accessor = tok["AccessorID"].as_str().unwrap().to_owned();
                    self.add(&secret, format!("<secret:{kind}>"));
                    self.add(&accessor, format!("<accessor:{kind}>"));
                    (Some(secret), Some(accessor))
                }
            };
            self.tokens.insert(kind.clone(), entry);
        }
        self.restore_services().await;
        for (src, dst, action) in [("web", "db", "allow"), ("billing", "web", "deny")] {
            let body = json!({"SourceName": src, "DestinationName": dst, "Action": action});
            self.mgmt("POST", "/v1/connect/intentions", Some(&body.to_string()))
                .await;
        }
        let q = json!({"Name": "db-query", "Service": {"Service": "db"}}).to_string();
        let q = self.mgmt("POST", "/v1/query", Some(&q)).await;
        self.query_id = q["ID"].as_str().unwrap().to_owned();
        let id = self.query_id.clone();
        self.add(&id, "<query:db-query>".into());
        let cfg = self.mgmt("GET", "/v1/connect/ca/configuration", None).await;
        self.ca_config = json!({"Provider": cfg["Provider"], "Config": cfg["Config"]});
    }

    /// web and db as the fixtures define them (db's TTL check passing), nothing else.
    async fn restore_services(&mut self) {
        let services = self.mgmt("GET", "/v1/agent/services", None).await;
        for id in services.as_object().unwrap().keys() {
            if id != "web" && id != "db" {
                let path = format!("/v1/agent/service/deregister/{id}");
                self.mgmt("PUT", &path, None).await;
            }
        }
        self.mgmt("PUT", "/v1/agent/service/register", Some(WEB))
            .await;
        self.mgmt("PUT", "/v1/agent/service/register", Some(DB))
            .await;
        self.mgmt("PUT", "/v1/agent/check/pass/service:db", None)
            .await;
    }

    async fn base_intention_id(&mut self) -> String {
        let list = self.mgmt("GET", "/v1/connect/intentions", None).await;
        let found = list.as_array().unwrap().iter().find(|x| {
            x["SourceName"] == "web" && x["DestinationName"] == "db" && x["ID"].is_string()
        });
        let id = match found {
            Some(x) => x["ID"].as_str().unwrap().to_owned(),
            None => {
                if self.extended {
                    let _ = call(
                        self.addr,
                        "DELETE",
                        "/v1/config/service-intentions/db",
                        Some(MANAGEMENT),
                        None,
                    )
                    .await;
                    let _ = call(
                        self.addr,
                        "DELETE",
                        "/v1/connect/intentions/exact?source=web&destination=db",
                        Some(MANAGEMENT),
                        None,
                    )
                    .await;
                }
                let body = json!({"SourceName": "web", "DestinationName": "db", "Action": "allow"});
                let got = self
                    .mgmt("POST", "/v1/connect/intentions", Some(&body.to_string()))
                    .await;
                got["ID"].as_str().unwrap().to_owned()
            }
        };
        self.add(&id, "<intention:web->db>".into());
        id
    }

    fn text(&self, s: &str) -> String {
        let mut s = s.to_owned();
        for (literal, placeholder) in &self.known {
            s = s.replace(literal, placeholder);
        }
        replace_uuids(&s)
    }

    #[allow(clippy::too_many_arguments)]
    async fn ask(
        &mut self,
        t: &str,
        request: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
        listing: Option<&str>,
        fields: &[&str],
    ) -> (u16, Value) {
        let secret = self.tokens[t].0.clone();
        let (status, raw) = call(self.addr, method, path, secret.as_deref(), body).await;
        let parsed: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
        let ok = (200..300).contains(&status);
        let mut cell = Cell {
            token: t.to_owned(),
            request: request.to_owned(),
            status,
            error: None,
            names: None,
            fields: None,
        };
        if !ok {
            let first = raw.trim().split('\n').next().unwrap_or("");
            cell.error = Some(self.text(first).chars().take(200).collect());
        }
        if ok && !parsed.is_null() {
            if let Some(listing) = listing {
                cell.names = names_of(listing, &parsed)
                    .map(|names| names.iter().map(|n| self.text(n)).collect());
                if listing == "tokens" {
                    let shown = parsed.as_array().map_or(0, |list| {
                        list.iter()
                            .filter(|x| {
                                !matches!(x["SecretID"].as_str(), None | Some("" | "<hidden>"))
                            })
                            .count()
                    });
                    cell.fields = Some([("SecretIDs shown".to_owned(), json!(shown))].into());
                }
            }
            // As the harness: decision fields only when some were asked for.
            if !fields.is_empty() {
                let got = fields
                    .iter()
                    .map(|f| {
                        let v = match parsed.get(*f) {
                            Some(Value::String(s)) => Value::String(self.text(s)),
                            Some(v) => v.clone(),
                            None => json!("<absent>"),
                        };
                        ((*f).to_owned(), v)
                    })
                    .collect();
                cell.fields = Some(got);
            }
        }
        self.cells.push(cell);
        (status, parsed)
    }

    async fn get(&mut self, t: &str, path: &str, listing: Option<&str>, fields: &[&str]) {
        self.ask(
            t,
            &format!("GET {path}"),
            "GET",
            path,
            None,
            listing,
            fields,
        )
        .await;
    }

    async fn run_token(&mut self, t: &str) {
        let base_id = self.base_intention_id().await;
        let td = self
            .known
            .iter()
            .find(|k| k.1 == "<trust-domain>")
            .unwrap()
            .0
            .clone();
        self.get(t, "/v1/agent/connect/ca/roots", Some("roots"), &[])
            .await;
        self.get(t, "/v1/connect/ca/roots", Some("roots"), &[])
            .await;
        self.get(t, "/v1/agent/connect/ca/leaf/web", None, &["Service"])
            .await;
        self.get(t, "/v1/agent/connect/ca/leaf/db", None, &["Service"])
            .await;
        for (target, from, req) in [
            (
                "db",
                "web",
                "POST /v1/agent/connect/authorize (Target db, from web)",
            ),
            (
                "web",
                "db",
                "POST /v1/agent/connect/authorize (Target web, from db)",
            ),
        ] {
            let uri = format!("spiffe://{td}/ns/default/dc/dc1/svc/{from}");
            let body = json!({"Target": target, "ClientCertURI": uri}).to_string();
            self.ask(
                t,
                req,
                "POST",
                "/v1/agent/connect/authorize",
                Some(&body),
                None,
                &["Authorized", "Reason"],
            )
            .await;
        }
        self.get(t, "/v1/connect/ca/configuration", None, &["Provider"])
            .await;
        let cfg = self.ca_config.to_string();
        self.ask(
            t,
            "PUT /v1/connect/ca/configuration (unchanged)",
            "PUT",
            "/v1/connect/ca/configuration",
            Some(&cfg),
            None,
            &[],
        )
        .await;
        self.get(t, "/v1/connect/intentions", Some("intentions"), &[])
            .await;
        self.get(
            t,
            "/v1/connect/intentions/match?by=destination&name=db",
            Some("intentions"),
            &[],
        )
        .await;
        self.get(
            t,
            "/v1/connect/intentions/check?source=web&destination=db",
            None,
            &["Allowed"],
        )
        .await;
        let path = format!("/v1/connect/intentions/{base_id}");
        self.ask(
            t,
            "GET /v1/connect/intentions/{id of web->db}",
            "GET",
            &path,
            None,
            Some("intentions"),
            &[],
        )
        .await;
        self.get(t, "/v1/catalog/services", Some("dict"), &[]).await;
        self.get(t, "/v1/catalog/service/db", Some("service_nodes"), &[])
            .await;
        self.get(t, "/v1/catalog/connect/db", Some("service_nodes"), &[])
            .await;
        self.get(t, "/v1/health/service/db", Some("check_service_nodes"), &[])
            .await;
        self.get(t, "/v1/health/connect/db", Some("check_service_nodes"), &[])
            .await;
        self.get(t, "/v1/agent/services", Some("dict"), &[]).await;
        self.get(t, "/v1/agent/self", None, &[]).await;
        self.get(t, "/v1/query", Some("queries"), &[]).await;
        let qid = self.query_id.clone();
        self.ask(
            t,
            "GET /v1/query/{id of db-query}",
            "GET",
            &format!("/v1/query/{qid}"),
            None,
            Some("queries"),
            &[],
        )
        .await;
        self.ask(
            t,
            "GET /v1/query/{id of db-query}/execute",
            "GET",
            &format!("/v1/query/{qid}/execute"),
            None,
            Some("query_execute"),
            &[],
        )
        .await;
        for (kind, req) in [
            (
                "svc-web-write",
                "GET /v1/acl/token/{accessor of svc-web-write}",
            ),
            ("management", "GET /v1/acl/token/{accessor of management}"),
        ] {
            let accessor = self.tokens[kind].1.clone().unwrap();
            self.ask(
                t,
                req,
                "GET",
                &format!("/v1/acl/token/{accessor}"),
                None,
                None,
                &["SecretID"],
            )
            .await;
        }
        self.get(t, "/v1/acl/token/self", None, &["Description", "SecretID"])
            .await;
        self.get(t, "/v1/acl/tokens", Some("tokens"), &[]).await;
        self.get(t, "/v1/acl/policies", Some("policies"), &[]).await;
        if self.extended {
            self.get(
                t,
                "/v1/connect/intentions/exact?source=web&destination=db",
                Some("intentions"),
                &[],
            )
            .await;
            self.get(
                t,
                "/v1/config/service-intentions",
                Some("config_entries"),
                &[],
            )
            .await;
            self.get(
                t,
                "/v1/config/service-intentions/db",
                None,
                &["Kind", "Name"],
            )
            .await;
        }

        // Intention writes, each on its own intention.
        let body =
            json!({"SourceName": format!("t-{t}"), "DestinationName": "db", "Action": "allow"});
        let tmp = self
            .mgmt("POST", "/v1/connect/intentions", Some(&body.to_string()))
            .await;
        let tmp_id = tmp["ID"].as_str().unwrap().to_owned();
        self.add(&tmp_id, "<intention:tmp>".into());
        let path = format!("/v1/connect/intentions/{tmp_id}");
        let update = json!({"SourceName": format!("t-{t}"), "DestinationName": "db", "Action": "deny", "Description": "updated"}).to_string();
        self.ask(
            t,
            "PUT /v1/connect/intentions/{id of tmp->db}",
            "PUT",
            &path,
            Some(&update),
            None,
            &[],
        )
        .await;
        self.ask(
            t,
            "DELETE /v1/connect/intentions/{id of tmp->db}",
            "DELETE",
            &path,
            None,
            None,
            &[],
        )
        .await;
        let _ = call(self.addr, "DELETE", &path, Some(MANAGEMENT), None).await;
        let body =
            json!({"SourceName": format!("p-{t}"), "DestinationName": "db", "Action": "allow"})
                .to_string();
        let (status, parsed) = self
            .ask(
                t,
                "POST /v1/connect/intentions (new->db)",
                "POST",
                "/v1/connect/intentions",
                Some(&body),
                None,
                &[],
            )
            .await;
        if status == 200 {
            if let Some(id) = parsed["ID"].as_str() {
                let _ = call(
                    self.addr,
                    "DELETE",
                    &format!("/v1/connect/intentions/{id}"),
                    Some(MANAGEMENT),
                    None,
                )
                .await;
            }
        }

        if self.extended {
            self.config_writes(t).await;
        }

        // Agent writes; the fixtures are restored afterwards.
        let reg = "/v1/agent/service/register";
        self.ask(
            t,
            "PUT /v1/agent/service/register (web)",
            "PUT",
            reg,
            Some(WEB),
            None,
            &[],
        )
        .await;
        self.ask(
            t,
            "PUT /v1/agent/service/register (db)",
            "PUT",
            reg,
            Some(DB),
            None,
            &[],
        )
        .await;
        let db_named_web = r#"{"ID":"db","Name":"web","Port":8080,"Connect":{"Native":true}}"#;
        self.ask(
            t,
            "PUT /v1/agent/service/register (ID db, Name web)",
            "PUT",
            reg,
            Some(db_named_web),
            None,
            &[],
        )
        .await;
        self.restore_services().await;
        let sidecar = r#"{"ID":"web","Name":"web","Port":8080,"Connect":{"SidecarService":{"Name":"billing"}}}"#;
        self.ask(
            t,
            "PUT /v1/agent/service/register (web with sidecar named billing)",
            "PUT",
            reg,
            Some(sidecar),
            None,
            &[],
        )
        .await;
        self.restore_services().await;
        for path in [
            "/v1/agent/check/pass/service:db",
            "/v1/agent/check/fail/service:db",
            "/v1/agent/service/deregister/web",
            "/v1/agent/service/deregister/db",
        ] {
            self.ask(t, &format!("PUT {path}"), "PUT", path, None, None, &[])
                .await;
        }
        self.restore_services().await;

        // Prepared query writes.
        let body = json!({"Name": format!("q-{t}"), "Service": {"Service": "db"}}).to_string();
        let (status, parsed) = self
            .ask(
                t,
                "POST /v1/query (new, service db)",
                "POST",
                "/v1/query",
                Some(&body),
                None,
                &[],
            )
            .await;
        if status == 200 {
            if let Some(id) = parsed["ID"].as_str() {
                let _ = call(
                    self.addr,
                    "DELETE",
                    &format!("/v1/query/{id}"),
                    Some(MANAGEMENT),
                    None,
                )
                .await;
            }
        }
        let body = json!({"Name": format!("d-{t}"), "Service": {"Service": "db"}}).to_string();
        let tmpq = self.mgmt("POST", "/v1/query", Some(&body)).await;
        let path = format!("/v1/query/{}", tmpq["ID"].as_str().unwrap());
        self.ask(
            t,
            "DELETE /v1/query/{id of tmp}",
            "DELETE",
            &path,
            None,
            None,
            &[],
        )
        .await;
        let _ = call(self.addr, "DELETE", &path, Some(MANAGEMENT), None).await;
    }
}

impl Matrix {
    /// The 1.9+ writes: exact PUT and DELETE of `e-<kind>` -> db, then the db entry written
    /// back unchanged and deleted; web -> db is re-created afterwards.
    async fn config_writes(&mut self, t: &str) {
        let q = format!("/v1/connect/intentions/exact?source=e-{t}&destination=db");
        let allow = r#"{"Action":"allow"}"#;
        self.ask(
            t,
            "PUT /v1/connect/intentions/exact?source=new&destination=db",
            "PUT",
            &q,
            Some(allow),
            None,
            &[],
        )
        .await;
        let _ = call(self.addr, "PUT", &q, Some(MANAGEMENT), Some(allow)).await;
        self.ask(
            t,
            "DELETE /v1/connect/intentions/exact?source=tmp&destination=db",
            "DELETE",
            &q,
            None,
            None,
            &[],
        )
        .await;
        let _ = call(self.addr, "DELETE", &q, Some(MANAGEMENT), None).await;
        let (status, raw) = call(
            self.addr,
            "GET",
            "/v1/config/service-intentions/db",
            Some(MANAGEMENT),
            None,
        )
        .await;
        let entry = if status == 200 {
            let mut entry: Value = serde_json::from_str(&raw).unwrap();
            let map = entry.as_object_mut().unwrap();
            map.remove("CreateIndex");
            map.remove("ModifyIndex");
            entry
        } else {
            json!({"Kind": "service-intentions", "Name": "db",
                   "Sources": [{"Name": "web", "Action": "allow"}]})
        };
        self.ask(
            t,
            "PUT /v1/config (service-intentions db, unchanged)",
            "PUT",
            "/v1/config",
            Some(&entry.to_string()),
            None,
            &[],
        )
        .await;
        self.ask(
            t,
            "DELETE /v1/config/service-intentions/db",
            "DELETE",
            "/v1/config/service-intentions/db",
            None,
            None,
            &[],
        )
        .await;
        self.base_intention_id().await;
    }
}

/// The items of a listing, as the harness names them.
fn names_of(kind: &str, j: &Value) -> Option<Vec<String>> {
    let s = |v: &Value| v.as_str().map_or("?".to_owned(), str::to_owned);
    let mut names: Vec<String> = match kind {
        "dict" => j.as_object()?.keys().cloned().collect(),
        "service_nodes" => j.as_array()?.iter().map(|x| s(&x["ServiceID"])).collect(),
        "check_service_nodes" => j
            .as_array()?
            .iter()
            .map(|x| s(&x["Service"]["ID"]))
            .collect(),
        "queries" | "policies" => j.as_array()?.iter().map(|x| s(&x["Name"])).collect(),
        "config_entries" => j
            .as_array()?
            .iter()
            .map(|x| format!("{}/{}", s(&x["Kind"]), s(&x["Name"])))
            .collect(),
        "tokens" => j.as_array()?.iter().map(|x| s(&x["Description"])).collect(),
        "roots" => vec![format!(
            "roots:{}",
            j.get("Roots")?.as_array().map_or(0, Vec::len)
        )],
        "query_execute" => j
            .get("Nodes")?
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let node = n["Node"]["Node"].as_str().unwrap_or("None");
                let id = n["Service"]["ID"].as_str().unwrap_or("None");
                format!("{node}/{id}")
            })
            .collect(),
        "intentions" => {
            let list: Vec<&Value> = match j {
                Value::Object(o) if o.contains_key("SourceName") => vec![j],
                Value::Object(o) => o.values().filter_map(Value::as_array).flatten().collect(),
                Value::Array(a) => a.iter().collect(),
                _ => return None,
            };
            list.iter()
                .map(|x| format!("{}->{}", s(&x["SourceName"]), s(&x["DestinationName"])))
                .collect()
        }
        other => panic!("unknown listing {other}"),
    };
    names.sort();
    Some(names)
}

/// Every UUID (8-4-4-4-12 hex digits) becomes `<uuid>`.
fn replace_uuids(s: &str) -> String {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let bytes = s.as_bytes();
    let at = |i: usize| -> Option<usize> {
        let mut j = i;
        for (n, len) in GROUPS.iter().enumerate() {
            if n > 0 {
                if bytes.get(j) != Some(&b'-') {
                    return None;
                }
                j += 1;
            }
            for _ in 0..*len {
                if !bytes.get(j)?.is_ascii_hexdigit() {
                    return None;
                }
                j += 1;
            }
        }
        Some(j)
    };
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        match at(i) {
            Some(end) => {
                out.push_str("<uuid>");
                i = end;
            }
            None => {
                let c = s[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// One HTTP/1.1 request on its own connection: (status, body).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("X-Consul-Token: {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

#[test]
fn uuids_are_replaced() {
    assert_eq!(
        replace_uuids("ID: 5f1e7f0c-9d0b-4c0e-a0a4-0c1c7d7e8f90, x"),
        "ID: <uuid>, x"
    );
    assert_eq!(replace_uuids("not-a-uuid"), "not-a-uuid");
}

/// A `?cached` listing resolves its token again on every refresh: after `service:read` is
/// revoked, a new instance is not shown to the token (Consul's agent cache fetches with the
/// token each time; agent-sim used to keep the permissions of the first fetch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_listing_forgets_a_revoked_permission() {
    let agent = Agent::builder()
        .node_name("node1")
        .acl(DefaultPolicy::Deny)
        .acl_initial_management_token(MANAGEMENT)
        .start()
        .await
        .unwrap();
    let addr = agent.addr();
    let mgmt = |method: &'static str, path: String, body: Option<String>| async move {
        let (status, text) = call(addr, method, &path, Some(MANAGEMENT), body.as_deref()).await;
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
    };
    let rules = r#"service "db" { policy = "read" } node_prefix "" { policy = "read" }"#;
    let policy = mgmt(
        "PUT",
        "/v1/acl/policy".into(),
        Some(json!({"Name": "db-read", "Rules": rules}).to_string()),
    )
    .await;
    let token = mgmt(
        "PUT",
        "/v1/acl/token".into(),
        Some(json!({"Description": "t", "Policies": [{"ID": policy["ID"]}]}).to_string()),
    )
    .await;
    let (secret, accessor) = (
        token["SecretID"].as_str().unwrap().to_owned(),
        token["AccessorID"].as_str().unwrap().to_owned(),
    );
    mgmt("PUT", "/v1/agent/service/register".into(), Some(DB.into())).await;

    let (status, first) = call(
        addr,
        "GET",
        "/v1/health/service/db?cached",
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        names_of(
            "check_service_nodes",
            &serde_json::from_str(&first).unwrap()
        ),
        Some(vec!["db".to_owned()])
    );
    let index = agent
        .store()
        .current_index(agent_sim::state::Table::Services);

    // Revoke: the token keeps existing, without its policy.
    mgmt(
        "PUT",
        format!("/v1/acl/token/{accessor}"),
        Some(json!({"Description": "t", "Policies": []}).to_string()),
    )
    .await;
    let db2 = r#"{"ID":"db2","Name":"db","Port":5433}"#;
    mgmt("PUT", "/v1/agent/service/register".into(), Some(db2.into())).await;

    // The entry's next refresh (after the registration) is what a blocking read returns.
    let path = format!("/v1/health/service/db?cached&index={index}&wait=5s");
    let (status, after) = call(addr, "GET", &path, Some(&secret), None).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        names_of(
            "check_service_nodes",
            &serde_json::from_str(&after).unwrap()
        ),
        Some(vec![]),
        "a revoked token still sees instances through the cache"
    );
    agent.shutdown().await;
}
