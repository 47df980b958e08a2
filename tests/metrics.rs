//! Metrics through the `metrics` facade, read with metrics-util's debugging recorder after a
//! handshake, a deny and a rotation. One test: the recorder is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use consul_connect::agent::WatchConfig;
use consul_connect::api::Intention;
use consul_connect::telemetry::{
    AUTHORIZATIONS, CONNECTIONS_CLOSED, HANDSHAKES, LEAF_EXPIRY, ROTATIONS,
};
use consul_connect::{ConnectListener, ConnectService, StaticResolver};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::agent::{sdk_client, start_agent, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counters accumulated over snapshots (the debugging recorder resets values it reports).
struct Seen {
    snapshotter: Snapshotter,
    counters: Vec<(String, Vec<(String, String)>, u64)>,
    gauges: Vec<(String, Vec<(String, String)>, f64)>,
}

impl Seen {
    fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter,
            counters: Vec::new(),
            gauges: Vec::new(),
        }
    }

    fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            let labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            match value {
                DebugValue::Counter(n) => match self
                    .counters
                    .iter_mut()
                    .find(|(k, l, _)| *k == name && *l == labels)
                {
                    Some(entry) => entry.2 += n,
                    None => self.counters.push((name, labels, n)),
                },
                DebugValue::Gauge(g) if g.into_inner() != 0.0 => {
                    self.gauges
                        .retain(|(k, l, _)| !(*k == name && *l == labels));
                    self.gauges.push((name, labels, g.into_inner()));
                }
                _ => {}
            }
        }
    }

    fn counter(&mut self, name: &str, want: &[(&str, &str)]) -> u64 {
        self.refresh();
        self.counters
            .iter()
            .filter(|(k, labels, _)| {
                k == name
                    && want
                        .iter()
                        .all(|(wk, wv)| labels.iter().any(|(lk, lv)| lk == wk && lv == wv))
            })
            .map(|(_, _, n)| n)
            .sum()
    }

    fn gauge(&mut self, name: &str, service: &str) -> Option<f64> {
        self.refresh();
        self.gauges
            .iter()
            .find(|(k, labels, _)| {
                k == name
                    && labels
                        .iter()
                        .any(|(lk, lv)| lk == "service" && lv == service)
            })
            .map(|(_, _, v)| *v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_denials_and_rotations_are_counted() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter());
    recorder.install().unwrap();

    let agent = start_agent().await;
    let client = sdk_client(&agent);
    let watch = WatchConfig::default().min_interval(Duration::from_millis(5));
    let db = ConnectService::builder("db")
        .agent(client.clone())
        .watch_config(watch.clone())
        .build()
        .await
        .unwrap();
    let web = ConnectService::builder("web")
        .agent(client.clone())
        .watch_config(watch)
        .build()
        .await
        .unwrap();
    db.ready_timeout(Duration::from_secs(10)).await.unwrap();
    web.ready_timeout(Duration::from_secs(10)).await.unwrap();
    let not_after = web.status().leaf_not_after.unwrap().unix_timestamp() as f64;
    assert_eq!(seen.gauge(LEAF_EXPIRY, "web"), Some(not_after));

    let mut listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let mut rejections = listener.rejections();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1];
                while let Ok(1) = stream.read(&mut buf).await {
                    let _ = stream.write_all(&buf).await;
                }
            });
        }
    });
    let resolver = StaticResolver::new(addr.to_string(), "db");
    // Open connections are authorized again when the intentions watch reports, its first list
    // included: let that list arrive before dialing, so that each count below is exact.
    let mut changes = db
        .authorizer()
        .changes("db")
        .expect("the agent authorizer follows intentions");
    changes
        .wait_for(|generation| *generation > 0)
        .await
        .unwrap();

    // One good handshake, authorized by the agent.
    let mut stream = web.dialer().dial(&resolver).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).await.unwrap();
    assert_eq!(
        seen.counter(
            HANDSHAKES,
            &[("service", "db"), ("side", "server"), ("result", "ok")]
        ),
        1
    );
    assert_eq!(
        seen.counter(
            HANDSHAKES,
            &[("service", "web"), ("side", "client"), ("result", "ok")]
        ),
        1
    );
    assert_eq!(
        seen.counter(
            AUTHORIZATIONS,
            &[
                ("service", "db"),
                ("authorizer", "agent"),
                ("decision", "allow")
            ]
        ),
        1
    );

    // A deny.
    let deny: Intention = serde_json::from_value(
        serde_json::json!({"SourceName": "web", "DestinationName": "db", "Action": "deny"}),
    )
    .unwrap();
    client.create_intention(&deny).await.unwrap();
    // The open connection is re-checked, denied and closed (one deny, one closed connection).
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut one))
        .await
        .expect("the open connection is closed after the deny");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert_eq!(
        seen.counter(AUTHORIZATIONS, &[("service", "db"), ("decision", "deny")]),
        1
    );
    assert_eq!(
        seen.counter(
            CONNECTIONS_CLOSED,
            &[("service", "db"), ("reason", "denied")]
        ),
        1
    );
    // Then a new connection is refused (the second deny).
    let mut denied = web.dialer().dial(&resolver).await.unwrap();
    let _ = denied.write_all(b"x").await;
    assert_eq!(
        denied.read(&mut one).await.unwrap_or(0),
        0,
        "the denied client gets nothing"
    );
    tokio::time::timeout(Duration::from_secs(5), rejections.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.counter(AUTHORIZATIONS, &[("service", "db"), ("decision", "deny")]),
        2
    );
    assert_eq!(
        seen.counter(
            HANDSHAKES,
            &[
                ("service", "db"),
                ("result", "failed"),
                ("reason", "denied")
            ]
        ),
        1
    );

    // A rotation: new roots, then a new leaf for each service.
    let mut updates = web.material_updates();
    let serial = web.status().leaf_serial.unwrap();
    let put = Raw::new(&agent)
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(put.status, 200);
    tokio::time::timeout(Duration::from_secs(10), async {
        while web.status().leaf_serial.as_deref() == Some(serial.as_str()) {
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(
        seen.counter(ROTATIONS, &[("service", "web"), ("kind", "leaf")]),
        1
    );
    assert_eq!(
        seen.counter(ROTATIONS, &[("service", "web"), ("kind", "roots")]),
        1
    );
    let new_not_after = web.status().leaf_not_after.unwrap().unix_timestamp() as f64;
    assert_eq!(seen.gauge(LEAF_EXPIRY, "web"), Some(new_not_after));
}
