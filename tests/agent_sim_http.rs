//! agent-sim answers as the captured Consul 1.4.5 agent did: status codes, messages and
//! headers for good and bad requests, and discovery of Connect-capable instances.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::agent::{start_agent_1_4_5 as start_agent, temp_dir, Raw, TRUST_DOMAIN};
use support::samples::Sample;

fn web_uri() -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web")
}

/// Replaces the intention ID a sample captured with the one this run created.
fn with_id(sample: &str, captured_id: &str, id: &str) -> String {
    sample.replace(captured_id, id)
}

const CAPTURED_ID: &str = "5887dc37-28b6-ab1e-5d8b-e5fa4499b42d";

/// The requests behind samples 20 to 38, each answered as the capture shows.
#[tokio::test]
async fn bad_inputs_match_the_captured_answers() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let created = raw
        .post(
            "/v1/connect/intentions",
            r#"{"SourceName":"web","DestinationName":"db","Action":"deny","Description":"test deny"}"#,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.json()["ID"].as_str().unwrap().to_owned();
    let authorize =
        |uri: &str| format!(r#"{{"Target":"db","ClientCertURI":"{uri}","ClientCertSerial":"08"}}"#);

    let cases: Vec<(&str, &str, String, String)> = vec![
        (
            "20_bad_intention_malformed_json.http",
            "POST",
            "/v1/connect/intentions".into(),
            r#"{"SourceName":"web""#.into(),
        ),
        (
            "21_bad_intention_unknown_action.http",
            "POST",
            "/v1/connect/intentions".into(),
            r#"{"SourceName":"api","DestinationName":"db","Action":"maybe"}"#.into(),
        ),
        (
            "22_bad_authorize_non_spiffe_uri.http",
            "POST",
            "/v1/agent/connect/authorize".into(),
            authorize("https://example.com/web"),
        ),
        (
            "24_bad_authorize_malformed_json.http",
            "POST",
            "/v1/agent/connect/authorize".into(),
            r#"{"Target":"db""#.into(),
        ),
        (
            "25_bad_authorize_missing_target.http",
            "POST",
            "/v1/agent/connect/authorize".into(),
            format!(r#"{{"ClientCertURI":"{}"}}"#, web_uri()),
        ),
        (
            "26_authorize_foreign_trust_domain.http",
            "POST",
            "/v1/agent/connect/authorize".into(),
            authorize(
                "spiffe://99999999-8888-7777-6666-555555555555.consul/ns/default/dc/dc1/svc/web",
            ),
        ),
        (
            "27_bad_authorize_spiffe_agent_uri.http",
            "POST",
            "/v1/agent/connect/authorize".into(),
            authorize(&format!(
                "spiffe://{TRUST_DOMAIN}/agent/client/dc/dc1/id/abc"
            )),
        ),
        (
            "28_bad_authorize_spiffe_signing_uri.http",
            "POST",
            "/v1/agent/connect/authorize".into(),
            authorize(&format!("spiffe://{TRUST_DOMAIN}")),
        ),
        (
            "29_bad_authorize_empty_body.http",
            "POST",
            "/v1/agent/connect/authorize".into(),
            String::new(),
        ),
        (
            "30_bad_intention_duplicate.http",
            "POST",
            "/v1/connect/intentions".into(),
            r#"{"SourceName":"web","DestinationName":"db","Action":"deny"}"#.into(),
        ),
        (
            "31_bad_intention_get_unknown_id.http",
            "GET",
            "/v1/connect/intentions/00000000-0000-0000-0000-000000000000".into(),
            String::new(),
        ),
        (
            "32_bad_intention_get_malformed_id.http",
            "GET",
            "/v1/connect/intentions/not-a-uuid".into(),
            String::new(),
        ),
        (
            "33_bad_intention_check_missing_params.http",
            "GET",
            "/v1/connect/intentions/check?source=web".into(),
            String::new(),
        ),
        (
            "34_bad_intention_match_missing_by.http",
            "GET",
            "/v1/connect/intentions/match?name=db".into(),
            String::new(),
        ),
        (
            "35_bad_intention_empty_body.http",
            "POST",
            "/v1/connect/intentions".into(),
            String::new(),
        ),
        (
            "36_bad_leaf_empty_name.http",
            "GET",
            "/v1/agent/connect/ca/leaf/".into(),
            String::new(),
        ),
        (
            "37_bad_authorize_wrong_method.http",
            "GET",
            "/v1/agent/connect/authorize".into(),
            String::new(),
        ),
        (
            "38_bad_intention_missing_names.http",
            "POST",
            "/v1/connect/intentions".into(),
            r#"{"Action":"allow"}"#.into(),
        ),
    ];
    for (name, method, path, body) in cases {
        let sample = Sample::load(name);
        let answer = raw.send(method, &path, &body).await;
        assert_eq!(answer.status, sample.status, "{name}: {}", answer.body);
        let content_type = sample.header("Content-Type").unwrap_or_default();
        if content_type.starts_with("text/plain") {
            assert_eq!(
                answer.body,
                with_id(&sample.body, CAPTURED_ID, &id),
                "{name}"
            );
            assert_eq!(answer.header("Content-Type"), Some(content_type), "{name}");
        } else {
            // JSON answers: compare the values (the capture is pretty-printed).
            let want: serde_json::Value =
                serde_json::from_str(&with_id(&sample.body, CAPTURED_ID, &id)).unwrap();
            assert_eq!(answer.json(), want, "{name}");
            // Go escapes `>` in "=>"; so must we.
            if sample.body.contains("\\u003e") {
                assert!(answer.body.contains("\\u003e"), "{name}: {}", answer.body);
            }
        }
        if let Some(allow) = sample.header("Allow") {
            assert_eq!(answer.header("Allow"), Some(allow), "{name}");
        }
    }
}

#[tokio::test]
async fn authorize_answers_like_the_captures_and_sees_changes_at_once() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let body = format!(
        r#"{{"Target":"db","ClientCertURI":"{}","ClientCertSerial":"08"}}"#,
        web_uri()
    );
    let first = raw.post("/v1/agent/connect/authorize", &body).await;
    assert_eq!(
        first.json(),
        serde_json::from_str::<serde_json::Value>(
            &Sample::load("09_authorize_allow_default.http").body
        )
        .unwrap()
    );
    assert_eq!(first.header("X-Cache"), Some("MISS"));

    let id = raw
        .post(
            "/v1/connect/intentions",
            r#"{"SourceName":"web","DestinationName":"db","Action":"deny"}"#,
        )
        .await
        .json()["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = raw.post("/v1/agent/connect/authorize", &body).await;
    assert_eq!(denied.header("X-Cache"), Some("HIT"));
    assert_eq!(denied.header("Age"), Some("0"));
    assert_eq!(
        denied.json()["Authorized"],
        false,
        "no stale allow after a deny is written"
    );

    let update = raw
        .put(
            &format!("/v1/connect/intentions/{id}"),
            r#"{"SourceName":"web","DestinationName":"db","Action":"allow"}"#,
        )
        .await;
    assert_eq!(update.json()["ID"], id.as_str());
    let allowed = raw.post("/v1/agent/connect/authorize", &body).await.json();
    let want = Sample::load("49_authorize_allow_intention.http")
        .body
        .replace(CAPTURED_ID, &id);
    assert_eq!(
        allowed,
        serde_json::from_str::<serde_json::Value>(&want).unwrap()
    );

    let deleted = raw
        .send("DELETE", &format!("/v1/connect/intentions/{id}"), "")
        .await;
    assert_eq!((deleted.status, deleted.body.as_str()), (200, "true"));
    let again = raw
        .send("DELETE", &format!("/v1/connect/intentions/{id}"), "")
        .await;
    assert_eq!(
        (again.status, again.body),
        (500, format!("Cannot modify non-existent intention: '{id}'"))
    );
    let list = raw.get("/v1/connect/intentions").await;
    assert_eq!(list.body, "[]");
    assert!(list.index() > 1);
}

#[tokio::test]
async fn registration_and_connect_discovery() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    for body in [
        r#"{"Name":"db","ID":"db","Port":19200,"Address":"127.0.0.1","Connect":{"Native":true}}"#,
        // py-consul style: lowercase and snake-case keys, as Go's decoder accepts.
        r#"{"name":"db","id":"db-2","port":19201,"address":"127.0.0.1","tags":["v2"],"connect":{"native":true}}"#,
        r#"{"Name":"db","ID":"db-plain","Port":5432}"#,
        r#"{"Kind":"connect-proxy","Name":"db-proxy","ID":"db-proxy","Port":21000,"Proxy":{"DestinationServiceName":"db","LocalServicePort":5432}}"#,
        r#"{"Name":"db","ID":"db-sick","Port":19202,"Connect":{"Native":true},"Check":{"TTL":"10s"}}"#,
        r#"{"Name":"web","Port":8080,"Connect":{"Native":true}}"#,
    ] {
        let answer = raw.put("/v1/agent/service/register", body).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, ""), "{body}");
    }

    let services = raw.get("/v1/agent/services").await.json();
    let sample: serde_json::Value =
        serde_json::from_str(&Sample::load("03_agent_services.http").body).unwrap();
    assert_eq!(
        services["db"], sample["db"],
        "agent service view matches the capture"
    );
    assert_eq!(services["db-2"]["Tags"], serde_json::json!(["v2"]));

    let connect = raw.get("/v1/health/connect/db").await;
    assert_eq!(
        connect.header("X-Consul-Effective-Consistency"),
        Some("leader")
    );
    let ids = |v: &serde_json::Value| {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&connect.json()),
        ["db", "db-2", "db-proxy", "db-sick"],
        "only Connect-capable instances"
    );
    let passing = raw.get("/v1/health/connect/db?passing").await.json();
    assert_eq!(
        ids(&passing),
        ["db", "db-2", "db-proxy"],
        "the critical TTL check filters db-sick"
    );
    let tagged = raw
        .get("/v1/health/connect/db?passing=1&tag=v2")
        .await
        .json();
    assert_eq!(ids(&tagged), ["db-2"]);
    let all = raw.get("/v1/health/service/db").await.json();
    assert_eq!(
        all.as_array().unwrap().len(),
        4,
        "health/service lists typical services too"
    );

    // The native db entry has the shape of the capture.
    let sample: serde_json::Value =
        serde_json::from_str(&Sample::load("17_health_connect_db.http").body).unwrap();
    let entry = connect
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Service"]["ID"] == "db")
        .unwrap()
        .clone();
    for key in ["Service", "Checks"] {
        let keys =
            |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        assert_eq!(keys(&entry[key]), keys(&sample[0][key]), "{key} fields");
    }
    assert_eq!(
        entry["Service"]["Connect"],
        serde_json::json!({"Native": true})
    );
    assert_eq!(entry["Node"]["Datacenter"], "dc1");

    let catalog = raw.get("/v1/catalog/connect/db").await.json();
    let sample: serde_json::Value =
        serde_json::from_str(&Sample::load("18_catalog_connect_db.http").body).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&catalog[0]), keys(&sample[0]));

    // TTL check passes: the instance joins the passing set.
    let pass = raw.put("/v1/agent/check/pass/service:db-sick", "").await;
    assert_eq!(pass.status, 200, "{}", pass.body);
    let passing = raw.get("/v1/health/connect/db?passing").await.json();
    assert_eq!(ids(&passing).len(), 4);

    // Deregistration; an unknown ID is accepted silently with ACLs off, as in Consul.
    assert_eq!(
        raw.put("/v1/agent/service/deregister/db-2", "")
            .await
            .status,
        200
    );
    assert_eq!(
        raw.put("/v1/agent/service/deregister/nope", "")
            .await
            .status,
        200
    );
    assert_eq!(ids(&raw.get("/v1/health/connect/db").await.json()).len(), 3);
}

#[tokio::test]
async fn bad_registrations_get_consuls_messages() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let cases = [
        ("{", "Request decode failed: unexpected EOF"),
        ("", "Request decode failed: EOF"),
        (r#"{"Port":1}"#, "Missing service name"),
        (r#"{"Name":""}"#, "Missing service name"),
        (
            r#"{"Kind":"connect-proxy","Name":"p","Port":1}"#,
            "Proxy.DestinationServiceName must be non-empty for Connect proxy services",
        ),
        (
            r#"{"Kind":"connect-proxy","Name":"p","Proxy":{"DestinationServiceName":"db"}}"#,
            "Port must be set for a Connect proxy",
        ),
        (
            r#"{"Kind":"connect-proxy","Name":"p","Port":1,"Proxy":{"DestinationServiceName":"db"},"Connect":{"Native":true}}"#,
            "A Proxy cannot also be Connect Native, only typical services",
        ),
    ];
    for (body, message) in cases {
        let answer = raw.put("/v1/agent/service/register", body).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (400, message),
            "{body:?}"
        );
    }
    assert_eq!(raw.get("/v1/agent/services").await.body, "{}");
    let wrong_method = raw.get("/v1/agent/service/register").await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("Allow"), Some("OPTIONS,PUT"));
    let options = raw.send("OPTIONS", "/v1/agent/connect/authorize", "").await;
    assert_eq!(
        (options.status, options.header("Allow")),
        (200, Some("OPTIONS,POST"))
    );
    let unknown = raw.get("/v1/no/such/path").await;
    assert_eq!(unknown.status, 404);
    let bad_index = raw.get("/v1/agent/connect/ca/roots?index=x").await;
    assert_eq!(
        (bad_index.status, bad_index.body.as_str()),
        (400, "Invalid index")
    );
    let bad_wait = raw.get("/v1/agent/connect/ca/roots?index=1&wait=10").await;
    assert_eq!(
        (bad_wait.status, bad_wait.body.as_str()),
        (400, "Invalid wait time")
    );
    let bad_dc = raw.get("/v1/health/connect/db?dc=dc9").await;
    assert_eq!(
        (bad_dc.status, bad_dc.body.as_str()),
        (500, "No path to datacenter")
    );
}

#[tokio::test]
async fn health_connect_blocks_until_a_registration() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let first = raw.get("/v1/health/connect/api").await;
    assert_eq!(first.body, "[]");
    let index = first.index();
    let waiter = {
        let raw = raw.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = raw
                .get(&format!("/v1/health/connect/api?index={index}&wait=30s"))
                .await;
            (answer, started.elapsed())
        })
    };
    tokio::task::yield_now().await;
    raw.put(
        "/v1/agent/service/register",
        r#"{"Name":"api","Port":9000,"Connect":{"Native":true}}"#,
    )
    .await;
    let (answer, took) = waiter.await.unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(answer.index() > index);
    assert_eq!(answer.json().as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn pretty_json_matches_gos_layout() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let pretty = raw
        .get("/v1/connect/intentions/check?source=web&destination=db&pretty")
        .await;
    let sample = Sample::load("52_intentions_check_db_web_default.http");
    assert_eq!(pretty.body, sample.body);
    let compact = raw
        .get("/v1/connect/intentions/check?source=web&destination=db")
        .await;
    assert_eq!(compact.body, r#"{"Allowed":true}"#);
}

/// Consul decodes bodies with Go's encoding/json and mapstructure without `ErrorUnused`:
/// unknown fields are ignored, not refused, on every Connect endpoint. agent-sim does the same.
#[tokio::test]
async fn unknown_fields_are_ignored_as_consul_does() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let reg = raw
        .put(
            "/v1/agent/service/register",
            r#"{"Name":"web","Port":1,"NoSuchField":true,"Connect":{"Native":true,"Bogus":1}}"#,
        )
        .await;
    assert_eq!(reg.status, 200, "{}", reg.body);
    let ixn = raw
        .post(
            "/v1/connect/intentions",
            r#"{"SourceName":"web","DestinationName":"db","Action":"allow","Extra":"x"}"#,
        )
        .await;
    assert_eq!(ixn.status, 200, "{}", ixn.body);
    let body = format!(
        r#"{{"Target":"db","ClientCertURI":"{}","ClientCertSerial":"01","Other":[1,2]}}"#,
        web_uri()
    );
    assert_eq!(
        raw.post("/v1/agent/connect/authorize", &body).await.json()["Authorized"],
        true
    );
    let ca = raw
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"LeafCertTTL":"72h","Unknown":"kept"},"Extra":1}"#,
        )
        .await;
    assert_eq!(ca.status, 200, "{}", ca.body);
    let config = raw.get("/v1/connect/ca/configuration").await.json();
    assert_eq!(
        config["Config"]["Unknown"], "kept",
        "the stored Config is the submitted map"
    );
}

/// A stopped agent ends its open connections at once, blocking queries included, as a stopped
/// Consul agent does, rather than answering them later from a server that is gone.
#[tokio::test]
async fn a_dropped_agent_ends_its_blocking_queries() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agent = start_agent().await;
    let index = Raw::new(&agent)
        .get("/v1/agent/connect/ca/roots")
        .await
        .index();
    let mut conn = tokio::net::TcpStream::connect(agent.addr()).await.unwrap();
    let request = format!(
        "GET /v1/agent/connect/ca/roots?index={index}&wait=60s HTTP/1.1\r\nHost: agent\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 1024];
    let blocked = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut answer)).await;
    assert!(blocked.is_err(), "the query blocks: {blocked:?}");

    drop(agent);
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
        .await
        .expect("the connection closes when the agent stops");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// A TTL check that misses its deadline turns critical at that moment, as Consul's agent timer
/// makes it: a blocking `?passing` query wakes and drops the instance, and the check keeps its
/// last output after Consul's prefix. An update re-arms it.
#[tokio::test]
async fn a_missed_ttl_wakes_blocking_health_queries() {
    use agent_sim::clock::ManualClock;
    use std::sync::Arc;
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let agent = agent_sim::agent::Agent::builder()
        .consul_version(agent_sim::profile::ConsulVersion::V1_4_5)
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&agent);
    register_db_with_a_passing_ttl(&raw, "all%20good").await;
    let healthy = raw.get("/v1/health/service/db?passing").await;
    assert_eq!(healthy.json().as_array().unwrap().len(), 1);

    let waiting = {
        let raw = Raw::new(&agent);
        let path = format!(
            "/v1/health/service/db?passing&index={}&wait=60s",
            healthy.index()
        );
        tokio::spawn(async move { raw.get(&path).await })
    };
    clock.advance(Duration::from_secs(11));
    let woke = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the blocking query wakes when the TTL passes")
        .unwrap();
    assert!(woke.index() > healthy.index());
    assert_eq!(
        woke.json(),
        serde_json::json!([]),
        "no passing instance left"
    );

    assert_eq!(
        db_check(&raw, "db-ttl").await,
        (
            "critical".into(),
            "TTL expired (last output before timeout follows): all good".into()
        )
    );
    let pass = raw.put("/v1/agent/check/pass/db-ttl", "").await;
    assert_eq!(pass.status, 200, "{}", pass.body);
    assert_eq!(
        db_check(&raw, "db-ttl").await,
        ("passing".into(), "".into())
    );
}

/// Registers `db-1` with the 10 s TTL check `db-ttl` and passes it with `note` (URL-encoded).
async fn register_db_with_a_passing_ttl(raw: &Raw, note: &str) {
    let register = raw
        .put(
            "/v1/agent/service/register",
            r#"{"Name":"db","ID":"db-1","Port":19200,"Check":{"CheckID":"db-ttl","TTL":"10s"}}"#,
        )
        .await;
    assert_eq!(register.status, 200, "{}", register.body);
    let pass = raw
        .put(&format!("/v1/agent/check/pass/db-ttl?note={note}"), "")
        .await;
    assert_eq!(pass.status, 200, "{}", pass.body);
}

/// The status and output of check `id` of the first `db` instance.
async fn db_check(raw: &Raw, id: &str) -> (serde_json::Value, serde_json::Value) {
    let entries = raw.get("/v1/health/service/db").await.json();
    let checks = entries[0]["Checks"].as_array().unwrap().clone();
    let check = checks.into_iter().find(|c| c["CheckID"] == id);
    let check = check.expect("the check is listed");
    (check["Status"].clone(), check["Output"].clone())
}

/// With `--data-dir`, a TTL check's state survives a restart while its TTL has not run out,
/// and then gets a whole TTL again, as Consul's persisted check state does; once it has run
/// out, the check starts afresh.
#[tokio::test]
async fn ttl_check_state_survives_a_restart_until_it_expires() {
    use agent_sim::clock::ManualClock;
    use std::sync::Arc;
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let dir = temp_dir("ttl-restart");
    let start = || {
        agent_sim::agent::Agent::builder()
            .consul_version(agent_sim::profile::ConsulVersion::V1_4_5)
            .clock(clock.clone())
            .data_dir(&*dir)
            .start()
    };
    let first = start().await.unwrap();
    let raw = Raw::new(&first);
    register_db_with_a_passing_ttl(&raw, "ok").await;
    first.shutdown().await;

    clock.advance(Duration::from_secs(6));
    let second = start().await.unwrap();
    let raw = Raw::new(&second);
    assert_eq!(
        db_check(&raw, "db-ttl").await,
        ("passing".into(), "ok".into())
    );
    // A whole TTL from the restart: still passing 6 s past the saved deadline.
    clock.advance(Duration::from_secs(9));
    assert_eq!(
        db_check(&raw, "db-ttl").await,
        ("passing".into(), "ok".into())
    );
    clock.advance(Duration::from_secs(2));
    let expired = (
        "critical".into(),
        "TTL expired (last output before timeout follows): ok".into(),
    );
    assert_eq!(db_check(&raw, "db-ttl").await, expired);
    second.shutdown().await;

    let third = start().await.unwrap();
    let raw = Raw::new(&third);
    assert_eq!(
        db_check(&raw, "db-ttl").await,
        ("critical".into(), "".into())
    );
    third.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
