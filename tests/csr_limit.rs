//! The CA's CSR rate limit (issue #14): with `CSRMaxPerSecond` set, a burst of new leaves gets
//! 429 `Rate limit reached, try again later`, as Consul 1.4.1+ answers, and the SDK retries
//! until the limit lets its leaf through. Time is a manual clock: the bucket refills only when
//! the test advances it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_sim::clock::ManualClock;
use agent_sim::Agent;
use consul_connect::agent::WatchConfig;
use consul_connect::ConnectService;
use serde_json::Value;
use support::agent::{sdk_client, Raw};
use time::OffsetDateTime;

const RATE_LIMITED: &str = "Rate limit reached, try again later";

/// An agent on a stopped clock whose CA signs at most one leaf per second.
async fn limited_agent() -> (Agent, Arc<ManualClock>, Raw) {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let agent = Agent::builder().clock(clock.clone()).start().await.unwrap();
    let raw = Raw::new(&agent);
    let put = raw
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"LeafCertTTL":"72h","RotationPeriod":"2160h","CSRMaxPerSecond":1}}"#,
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    (agent, clock, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_leaves_is_rate_limited_until_the_bucket_refills() {
    let (_agent, clock, raw) = limited_agent().await;
    let burst: Vec<_> = (0..5)
        .map(|i| {
            let raw = raw.clone();
            tokio::spawn(async move { raw.get(&format!("/v1/agent/connect/ca/leaf/svc{i}")).await })
        })
        .collect();
    let mut limited = Vec::new();
    let mut issued = 0;
    for answer in burst {
        let answer = answer.await.unwrap();
        match answer.status {
            200 => issued += 1,
            429 => limited.push(answer),
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(issued, 1, "one leaf per second");
    assert_eq!(limited.len(), 4);
    for answer in &limited {
        assert_eq!(answer.body, RATE_LIMITED);
        assert_eq!(
            answer.header("Content-Type"),
            Some("text/plain; charset=utf-8")
        );
    }

    // The refused entries are not cached: asking again asks the CA again, refused while the
    // clock stands still, granted once a second has passed.
    let again = raw.get("/v1/agent/connect/ca/leaf/svc9").await;
    assert_eq!((again.status, again.body.as_str()), (429, RATE_LIMITED));
    clock.advance(Duration::from_secs(1));
    let later = raw.get("/v1/agent/connect/ca/leaf/svc9").await;
    assert_eq!(later.status, 200, "{}", later.body);
    assert_eq!(later.json()["Service"], "svc9");

    // A cached leaf is answered without signing, whatever the limit.
    let cached = raw.get("/v1/agent/connect/ca/leaf/svc9").await;
    assert_eq!(cached.status, 200);
    assert_eq!(cached.json()["SerialNumber"], later.json()["SerialNumber"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_retries_a_rate_limited_leaf_and_becomes_ready() {
    let (agent, clock, raw) = limited_agent().await;
    // Spend this second's token.
    assert_eq!(raw.get("/v1/agent/connect/ca/leaf/web").await.status, 200);

    let service = ConnectService::builder("db")
        .agent(sdk_client(&agent))
        .watch_config(
            WatchConfig::default()
                .wait(Duration::from_secs(30))
                .backoff_range(Duration::from_millis(20), Duration::from_millis(100))
                .min_interval(Duration::from_millis(5))
                .poll_interval(Duration::from_millis(20)),
        )
        .build()
        .await
        .unwrap();
    let not_yet = service.ready_timeout(Duration::from_millis(500)).await;
    assert!(not_yet.is_err(), "the leaf must wait for the limit");

    clock.advance(Duration::from_secs(1));
    service
        .ready_timeout(Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_rate_the_concurrency_limit_applies_and_zero_means_unlimited() {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let agent = Agent::builder().clock(clock.clone()).start().await.unwrap();
    let raw = Raw::new(&agent);
    let put = raw
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"LeafCertTTL":"72h","RotationPeriod":"2160h","CSRMaxPerSecond":0,"CSRMaxConcurrent":0}}"#,
        )
        .await;
    assert_eq!(put.status, 200);
    // The default (50/s) would refuse those past the first 26 on a stopped clock.
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let raw = raw.clone();
            tokio::spawn(async move { raw.get(&format!("/v1/agent/connect/ca/leaf/s{i}")).await })
        })
        .collect();
    for answer in burst {
        assert_eq!(answer.await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_renewal_keeps_the_leaf_and_retries_in_a_later_window() {
    let jitter = Duration::from_secs(1);
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let agent = Agent::builder()
        .clock(clock.clone())
        .rotation_jitter(jitter)
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&agent);
    let limited = r#"{"Provider":"consul","Config":{"LeafCertTTL":"72h","RotationPeriod":"2160h","CSRMaxPerSecond":1}}"#;
    assert_eq!(
        raw.put("/v1/connect/ca/configuration", limited)
            .await
            .status,
        200
    );
    let mut before = Vec::new();
    for name in ["a", "b"] {
        let leaf = raw.get(&format!("/v1/agent/connect/ca/leaf/{name}")).await;
        assert_eq!(leaf.status, 200, "{}", leaf.body);
        before.push(leaf.json());
        clock.advance(Duration::from_secs(1));
    }
    let rotate = r#"{"Provider":"consul","Config":{"LeafCertTTL":"72h","RotationPeriod":"2160h","CSRMaxPerSecond":1,"ForceRotate":true}}"#;
    assert_eq!(
        raw.put("/v1/connect/ca/configuration", rotate).await.status,
        200
    );
    let waiters: Vec<_> = ["a", "b"]
        .into_iter()
        .zip(&before)
        .map(|(name, leaf)| {
            let raw = raw.clone();
            let path = format!(
                "/v1/agent/connect/ca/leaf/{name}?index={}&wait=20s",
                leaf["ModifyIndex"]
            );
            tokio::spawn(async move { raw.get(&path).await.json() })
        })
        .collect();
    // Both re-issues fall due within the window; the bucket holds one token.
    clock.advance(jitter);
    let (first, _, mut rest) = futures_select(waiters).await;
    assert_ne!(first["SerialNumber"], Value::Null);
    let other = rest.pop().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !other.is_finished(),
        "the second renewal must wait for a later window"
    );
    // The refused one retries within two more windows and gets its new leaf.
    clock.advance(jitter * 3);
    let renewed = tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .unwrap()
        .unwrap();
    let old: Vec<&Value> = before.iter().map(|l| &l["SerialNumber"]).collect();
    assert!(!old.contains(&&renewed["SerialNumber"]));
    assert!(!old.contains(&&first["SerialNumber"]));
}

/// The first of `tasks` to finish, its index and the others.
async fn futures_select<T: Send + 'static>(
    mut tasks: Vec<tokio::task::JoinHandle<T>>,
) -> (T, usize, Vec<tokio::task::JoinHandle<T>>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            let done = tasks.remove(i);
            return (done.await.unwrap(), i, tasks);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
