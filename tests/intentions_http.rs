//! The same decisions three ways: agent-sim's `check` and `authorize` endpoints over HTTP,
//! and the pure intention rules over the list the agent returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use agent_sim::intentions::IntentionSet;
use consul_connect::api::Intention;
use consul_connect::intentions::DefaultDecision;
use consul_connect::spiffe::ServiceId;
use support::agent::{start_agent_1_4_5 as start_agent, Raw, TRUST_DOMAIN};

/// Exact and wildcard sources and destinations, allow and deny, including a default deny.
const INTENTIONS: &[(&str, &str, &str)] = &[
    ("web", "db", "allow"),
    ("*", "db", "deny"),
    ("api", "*", "allow"),
    ("web", "*", "deny"),
    ("*", "cache", "allow"),
    ("admin", "cache", "deny"),
    ("batch", "queue", "allow"),
    ("*", "*", "deny"),
    ("Web", "Db", "deny"),
];
const SOURCES: &[&str] = &["web", "api", "admin", "batch", "metrics", "Web", "WEB"];
const DESTINATIONS: &[&str] = &["db", "cache", "queue", "search", "DB", "Cache"];

#[tokio::test]
async fn check_and_authorize_agree_with_the_pure_rules() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    for (source, destination, action) in INTENTIONS {
        let body = serde_json::json!({"SourceName": source, "DestinationName": destination, "Action": action});
        let answer = raw.post("/v1/connect/intentions", &body.to_string()).await;
        // "Web => Db" duplicates "web => db" case-insensitively and must be refused.
        if *source == "Web" {
            assert_eq!(answer.status, 500, "{}", answer.body);
            assert!(
                answer
                    .body
                    .starts_with("duplicate intention found: ALLOW default/web => default/db"),
                "{}",
                answer.body
            );
        } else {
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
    }
    let listed: Vec<Intention> =
        serde_json::from_str(&raw.get("/v1/connect/intentions").await.body).unwrap();
    assert_eq!(listed.len(), INTENTIONS.len() - 1);
    let precedences: Vec<i32> = listed.iter().map(|i| i.precedence).collect();
    let mut sorted = precedences.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(precedences, sorted, "the list is in precedence order");
    let mut set = IntentionSet::new();
    for ixn in listed {
        set.insert(ixn).unwrap();
    }

    let mut cases = 0;
    for source in SOURCES {
        for destination in DESTINATIONS {
            let client: ServiceId =
                format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{source}")
                    .parse()
                    .unwrap();
            let pure = set.decide(
                &client,
                "default",
                destination,
                DefaultDecision::AclsDisabled,
                consul_connect_types::intentions::Wording::Consul1_4,
            );
            let check = raw
                .get(&format!(
                    "/v1/connect/intentions/check?source={source}&destination={destination}"
                ))
                .await
                .json();
            assert_eq!(
                check["Allowed"], pure.allowed,
                "check {source} -> {destination}"
            );
            let body = serde_json::json!({"Target": destination, "ClientCertURI": client.to_string(), "ClientCertSerial": "01"});
            let authorize = raw
                .post("/v1/agent/connect/authorize", &body.to_string())
                .await
                .json();
            assert_eq!(
                authorize["Authorized"], pure.allowed,
                "authorize {source} -> {destination}"
            );
            assert_eq!(
                authorize["Reason"],
                pure.reason.as_str(),
                "authorize {source} -> {destination}"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, SOURCES.len() * DESTINATIONS.len());
}

#[tokio::test]
async fn match_lists_evaluation_order_for_each_name() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    for (source, destination, action) in INTENTIONS.iter().filter(|(s, _, _)| *s != "Web") {
        let body = serde_json::json!({"SourceName": source, "DestinationName": destination, "Action": action});
        assert_eq!(
            raw.post("/v1/connect/intentions", &body.to_string())
                .await
                .status,
            200
        );
    }
    let answer = raw
        .get("/v1/connect/intentions/match?by=destination&name=db&name=search")
        .await;
    assert!(
        answer.header("X-Consul-Index").is_none(),
        "Consul 1.4.5 sends no index on match"
    );
    let matches = answer.json();
    let names = |name: &str| -> Vec<String> {
        matches[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}=>{}",
                    i["SourceName"].as_str().unwrap(),
                    i["DestinationName"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        names("db"),
        ["web=>db", "*=>db", "api=>*", "web=>*", "*=>*"]
    );
    assert_eq!(names("search"), ["api=>*", "web=>*", "*=>*"]);
    let by_source = raw
        .get("/v1/connect/intentions/match?by=source&name=web")
        .await
        .json();
    let sources: Vec<&str> = by_source["web"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["DestinationName"].as_str().unwrap())
        .collect();
    // web=>db (9), then *=>cache and *=>db (8, tie broken by destination), web=>* (6), *=>* (5).
    assert_eq!(sources, ["db", "cache", "db", "*", "*"]);
}
