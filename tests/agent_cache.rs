//! agent-sim's agent cache: hits from memory, partitions by token, leaf renewal in the 60-90%
//! window, re-issue within the jitter window after a rotation, eviction of unused entries.
//! Time is a manual clock: nothing waits for real expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_sim::clock::ManualClock;
use agent_sim::Agent;
use support::agent::{start_agent_1_4_5 as start_agent, Answer, Raw, TRUST_DOMAIN};
use time::OffsetDateTime;

const TTL: Duration = Duration::from_secs(72 * 3600);

async fn agent_with_clock(jitter: Duration) -> (Agent, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let agent = Agent::builder()
        .clock(clock.clone())
        .rotation_jitter(jitter)
        .start()
        .await
        .unwrap();
    (agent, clock)
}

async fn get_with_token(raw: &Raw, path: &str, token: &str) -> Answer {
    raw.send_with_headers("GET", path, "", &[("X-Consul-Token", token)])
        .await
}

#[tokio::test]
async fn hits_are_answered_without_touching_the_store() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let authorize = format!(
        r#"{{"Target":"db","ClientCertURI":"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web","ClientCertSerial":"01"}}"#
    );
    assert_eq!(
        raw.get("/v1/agent/connect/ca/leaf/web")
            .await
            .header("X-Cache"),
        Some("MISS")
    );
    assert_eq!(
        raw.get("/v1/agent/connect/ca/roots")
            .await
            .header("X-Cache"),
        Some("MISS")
    );
    assert_eq!(
        raw.post("/v1/agent/connect/authorize", &authorize)
            .await
            .header("X-Cache"),
        Some("MISS")
    );

    let before = agent.store().accesses();
    for _ in 0..20 {
        let leaf = raw.get("/v1/agent/connect/ca/leaf/web").await;
        assert_eq!(
            (leaf.header("X-Cache"), leaf.header("Age")),
            (Some("HIT"), Some("0"))
        );
        assert_eq!(
            raw.get("/v1/agent/connect/ca/roots")
                .await
                .header("X-Cache"),
            Some("HIT")
        );
        let auth = raw.post("/v1/agent/connect/authorize", &authorize).await;
        assert_eq!(auth.header("X-Cache"), Some("HIT"));
        assert_eq!(auth.json()["Authorized"], true);
    }
    assert_eq!(agent.store().accesses(), before, "60 hits, no store access");
}

#[tokio::test]
async fn tokens_never_share_entries() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let a1 = get_with_token(&raw, "/v1/agent/connect/ca/leaf/web", "token-a").await;
    let b1 = get_with_token(&raw, "/v1/agent/connect/ca/leaf/web", "token-b").await;
    assert_eq!(
        (a1.header("X-Cache"), b1.header("X-Cache")),
        (Some("MISS"), Some("MISS"))
    );
    let (a1, b1) = (a1.json(), b1.json());
    assert_ne!(
        a1["SerialNumber"], b1["SerialNumber"],
        "each token gets its own leaf"
    );
    assert_ne!(a1["PrivateKeyPEM"], b1["PrivateKeyPEM"]);
    for _ in 0..3 {
        let a = get_with_token(&raw, "/v1/agent/connect/ca/leaf/web", "token-a").await;
        let b = raw.get("/v1/agent/connect/ca/leaf/web?token=token-b").await;
        assert_eq!(
            (a.header("X-Cache"), b.header("X-Cache")),
            (Some("HIT"), Some("HIT"))
        );
        assert_eq!(a.json()["SerialNumber"], a1["SerialNumber"]);
        assert_eq!(b.json()["SerialNumber"], b1["SerialNumber"]);
    }
    let bearer = raw
        .send_with_headers(
            "GET",
            "/v1/agent/connect/ca/leaf/web",
            "",
            &[("Authorization", "Bearer token-a")],
        )
        .await;
    assert_eq!(
        bearer.json()["SerialNumber"],
        a1["SerialNumber"],
        "Authorization: Bearer is the same token"
    );
    assert_eq!(agent.cache().len(), 2);
}

#[tokio::test]
async fn leaves_renew_between_60_and_90_percent_of_their_lifetime() {
    let (agent, clock) = agent_with_clock(Duration::ZERO).await;
    let raw = Raw::new(&agent);
    let first = raw.get("/v1/agent/connect/ca/leaf/web").await.json();
    let index = first["ModifyIndex"].as_u64().unwrap();
    let valid_after = OffsetDateTime::parse(
        first["ValidAfter"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let started = clock.now_utc();

    // Just before 60%: no renewal (a blocking query times out with the same leaf).
    clock.advance(
        (at_fraction(valid_after, 0.599) - started)
            .try_into()
            .unwrap(),
    );
    let same = raw
        .get(&format!(
            "/v1/agent/connect/ca/leaf/web?index={index}&wait=300ms"
        ))
        .await
        .json();
    assert_eq!(
        same["SerialNumber"], first["SerialNumber"],
        "renewed before 60%"
    );

    // A blocking query waiting on the old leaf wakes with the new one by 90%.
    let waiter = {
        let raw = raw.clone();
        tokio::spawn(async move {
            raw.get(&format!(
                "/v1/agent/connect/ca/leaf/web?index={index}&wait=30s"
            ))
            .await
        })
    };
    tokio::task::yield_now().await;
    clock.advance(
        (at_fraction(valid_after, 0.9) - clock.now_utc())
            .try_into()
            .unwrap(),
    );
    let renewed = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .json();
    assert_ne!(
        renewed["SerialNumber"], first["SerialNumber"],
        "not renewed by 90%"
    );
    assert!(renewed["ModifyIndex"].as_u64().unwrap() > index);
}

fn at_fraction(valid_after: OffsetDateTime, fraction: f64) -> OffsetDateTime {
    valid_after + TTL.mul_f64(fraction)
}

trait NowUtc {
    fn now_utc(&self) -> OffsetDateTime;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> OffsetDateTime {
        agent_sim::clock::Clock::now(self)
    }
}

#[tokio::test]
async fn a_rotation_reissues_leaves_within_the_jitter_window() {
    let jitter = Duration::from_secs(30);
    let (agent, clock) = agent_with_clock(jitter).await;
    let raw = Raw::new(&agent);
    let first = raw.get("/v1/agent/connect/ca/leaf/web").await.json();
    let index = first["ModifyIndex"].as_u64().unwrap();
    let put = raw
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(put.status, 200);
    let waiter = {
        let raw = raw.clone();
        tokio::spawn(async move {
            raw.get(&format!(
                "/v1/agent/connect/ca/leaf/web?index={index}&wait=30s"
            ))
            .await
        })
    };
    // No time has passed on the agent's clock: the re-issue is scheduled, not done.
    let early = raw
        .get(&format!(
            "/v1/agent/connect/ca/leaf/web?index={index}&wait=200ms"
        ))
        .await
        .json();
    assert_eq!(early["SerialNumber"], first["SerialNumber"]);
    // Once the whole window has passed, the leaf has been re-issued under the new root.
    clock.advance(jitter);
    let renewed = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .json();
    assert_ne!(renewed["SerialNumber"], first["SerialNumber"]);
    assert_eq!(
        renewed["CertPEM"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
}

#[tokio::test]
async fn unused_entries_are_evicted_after_72_hours() {
    let (agent, clock) = agent_with_clock(Duration::ZERO).await;
    let raw = Raw::new(&agent);
    raw.get("/v1/agent/connect/ca/leaf/web").await;
    raw.get("/v1/agent/connect/ca/roots").await;
    assert_eq!(agent.cache().len(), 2);
    clock.advance(Duration::from_secs(71 * 3600));
    assert_eq!(
        raw.get("/v1/agent/connect/ca/roots")
            .await
            .header("X-Cache"),
        Some("HIT")
    );
    clock.advance(Duration::from_secs(2 * 3600));
    // The leaf went unread for 73 h: the evictor (woken by the clock jump) drops it; the
    // roots entry was read 2 h ago and stays.
    tokio::time::timeout(Duration::from_secs(5), async {
        while agent.cache().len() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the unused leaf is evicted");
    assert_eq!(
        raw.get("/v1/agent/connect/ca/leaf/web")
            .await
            .header("X-Cache"),
        Some("MISS")
    );
}

#[tokio::test]
async fn cached_health_reads_are_refreshed_in_the_background() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    raw.put(
        "/v1/agent/service/register",
        r#"{"Name":"db","Port":1,"Connect":{"Native":true}}"#,
    )
    .await;
    let first = raw.get("/v1/health/connect/db?cached").await;
    assert_eq!(first.header("X-Cache"), Some("MISS"));
    assert_eq!(first.json().as_array().unwrap().len(), 1);
    let index = first.index();
    let second = raw.get("/v1/health/connect/db?cached").await;
    assert_eq!(
        (second.header("X-Cache"), second.header("Age")),
        (Some("HIT"), Some("0"))
    );
    // A change reaches the cached entry; a blocking cached read wakes with it.
    let waiter = {
        let raw = raw.clone();
        tokio::spawn(async move {
            raw.get(&format!(
                "/v1/health/connect/db?cached&index={index}&wait=10s"
            ))
            .await
        })
    };
    raw.put(
        "/v1/agent/service/register",
        r#"{"ID":"db-2","Name":"db","Port":2,"Connect":{"Native":true}}"#,
    )
    .await;
    let updated = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.header("X-Cache"), Some("HIT"));
    assert_eq!(updated.json().as_array().unwrap().len(), 2);
    assert!(updated.index() > index);
    // Uncached reads carry no X-Cache header.
    assert_eq!(
        raw.get("/v1/health/connect/db").await.header("X-Cache"),
        None
    );
}

#[tokio::test]
async fn cached_prepared_queries_honour_cache_control_max_age() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    raw.put(
        "/v1/agent/service/register",
        r#"{"Name":"db","Port":1,"Connect":{"Native":true}}"#,
    )
    .await;
    assert_eq!(
        raw.post("/v1/query", r#"{"Name":"dbq","Service":{"Service":"db"}}"#)
            .await
            .status,
        200
    );
    let path = "/v1/query/dbq/execute?connect=true&cached";
    assert_eq!(raw.get(path).await.header("X-Cache"), Some("MISS"));
    let hit = raw
        .send_with_headers("GET", path, "", &[("Cache-Control", "max-age=60")])
        .await;
    assert_eq!(hit.header("X-Cache"), Some("HIT"));
    assert_eq!(hit.header("Age"), Some("0"));
    // A simple cache type is not refreshed: a new instance is not seen until max-age forces a
    // fetch.
    raw.put(
        "/v1/agent/service/register",
        r#"{"ID":"db-2","Name":"db","Port":2,"Connect":{"Native":true}}"#,
    )
    .await;
    let stale = raw
        .send_with_headers("GET", path, "", &[("Cache-Control", "max-age=60")])
        .await;
    assert_eq!(stale.json()["Nodes"].as_array().unwrap().len(), 1);
    let fresh = raw
        .send_with_headers("GET", path, "", &[("Cache-Control", "max-age=0")])
        .await;
    assert_eq!(fresh.header("X-Cache"), Some("MISS"));
    assert_eq!(fresh.json()["Nodes"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn rotated_out_roots_are_dropped_after_twice_the_leaf_lifetime() {
    let (agent, clock) = agent_with_clock(Duration::ZERO).await;
    let raw = Raw::new(&agent);
    let put = raw
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(put.status, 200);
    let rotated = raw.get("/v1/connect/ca/roots").await;
    assert_eq!(rotated.json()["Roots"].as_array().unwrap().len(), 2);
    let index = rotated.index();
    // Just under 2 x 72 h: the old root stays.
    clock.advance(2 * TTL - Duration::from_secs(60));
    let kept = raw
        .get(&format!("/v1/connect/ca/roots?index={index}&wait=300ms"))
        .await;
    assert_eq!(kept.json()["Roots"].as_array().unwrap().len(), 2);
    // Past it: the housekeeping tick (woken by the clock) removes it.
    clock.advance(Duration::from_secs(120));
    let pruned = raw
        .get(&format!("/v1/connect/ca/roots?index={index}&wait=10s"))
        .await
        .json();
    let roots = pruned["Roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{pruned}");
    assert_eq!(roots[0]["Active"], true);
}
