//! Agent faults: the agent down at start, restarting mid-run (its index going backwards or not),
//! 500s, 429s, answers slower than the wait, truncated JSON, indexes that go backwards, leaves
//! that do not verify, and empty roots lists.
//!
//! For each, the service keeps its last good material (still ready, same leaf, a leaf its own
//! verifier accepts), reports the fault in `status().last_error`, backs off with a bounded
//! request rate, and recovers on its own when the fault clears. agent-sim produces the faults a
//! real agent would (down, restarted); wiremock, replaying answers captured from agent-sim,
//! produces the rest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sim::Agent;
use consul_connect::agent::AgentClient;
use consul_connect::api::LeafCert;
use consul_connect::listener::ListenerConfig;
use consul_connect::{ConnectListener, ConnectService, StaticResolver};
use support::agent::{Raw, CLUSTER_ID, TRUST_DOMAIN};
use support::certs::{LeafSpec, TestCa};
use support::faults::{
    assert_material_verifies, capture, eventually, leaf_json, max_requests_while_failing,
    max_requests_while_polling, min_backoff, presented_serial, watch_config, Captured,
    ConnectionCounter, Endpoint, LeafStallProxy, MockAgent, Reply, ROOTS_PATH,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const READY: Duration = Duration::from_secs(10);
/// How long a fault is watched to bound the request rate.
const FAULT_WINDOW: Duration = Duration::from_millis(1200);

async fn mocked_service(mock: &MockAgent, name: &str) -> ConnectService {
    let service = ConnectService::builder(name)
        .agent(mock.client())
        .watch_config(watch_config())
        .build()
        .await
        .unwrap();
    service.ready_timeout(READY).await.unwrap();
    service
}

async fn agent_service(agent: &AgentClient, name: &str) -> ConnectService {
    let service = ConnectService::builder(name)
        .agent(agent.clone())
        .watch_config(watch_config())
        .build()
        .await
        .unwrap();
    service.ready_timeout(READY).await.unwrap();
    service
}

/// Answers captured from agent-sim for `service`, and a mock agent replaying them.
async fn replaying(service: &str) -> (Captured, MockAgent) {
    let cap = capture(service).await;
    let mock = MockAgent::start(
        service,
        cap.roots_reply(cap.roots_index),
        cap.leaf_reply(cap.leaf_index),
    )
    .await;
    (cap, mock)
}

/// Waits until the service publishes material whose leaf serial is `serial`.
async fn wait_for_serial(service: &ConnectService, serial: &str) {
    let mut updates = service.material_updates();
    tokio::time::timeout(Duration::from_secs(10), async {
        while service.status().leaf_serial.as_deref() != Some(serial) {
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "leaf {serial} was not published; status {:?}",
            service.status()
        )
    });
}

/// Sleeps until `at + window` (a measurement window, not a stand-in for a signal).
async fn until(at: Instant, window: Duration) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at + window)).await;
}

/// The requests labelled `label` that arrived within `window` of the first of them, after
/// checking each retry came no sooner than the backoff allows and their number is within the
/// bound `WatchConfig` implies.
fn assert_backed_off(name: &str, endpoint: &Endpoint, label: &str) -> usize {
    let config = watch_config();
    let hits = endpoint.hits_labelled(label);
    let first = hits.first().expect("the fault was hit").at;
    let in_window: Vec<_> = hits
        .iter()
        .filter(|h| h.at <= first + FAULT_WINDOW)
        .collect();
    let bound = max_requests_while_failing(&config, FAULT_WINDOW);
    assert!(
        in_window.len() <= bound,
        "{name}: {} requests within {FAULT_WINDOW:?} of a fault, more than the {bound} the \
         backoff allows",
        in_window.len()
    );
    assert!(
        in_window.len() >= 3,
        "{name}: the watch keeps retrying ({} requests)",
        in_window.len()
    );
    for (k, pair) in in_window.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let floor = min_backoff(&config, k as u32 + 1);
        assert!(
            gap >= floor,
            "{name}: retry {} came {gap:?} after the previous request, less than the {floor:?} \
             backoff",
            k + 1
        );
    }
    in_window.len()
}

/// Waits until wiremock's own request log and the endpoints' logs agree (nothing in flight).
async fn assert_wiremock_agrees(mock: &MockAgent) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let roots = (mock.received(ROOTS_PATH).await, mock.roots.hits().len());
        let leaf = (mock.received(&mock.leaf_path).await, mock.leaf.hits().len());
        if roots.0 == roots.1 && leaf.0 == leaf.1 {
            assert!(roots.0 > 0 && leaf.0 > 0);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "wiremock recorded (roots, leaf) = ({}, {}), the responders ({}, {})",
            roots.0,
            leaf.0,
            roots.1,
            leaf.1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fault on both endpoints: reported, material kept, backoff bounded, then recovery to a new
/// leaf once the agent answers well again.
async fn fault_then_recover(cap: &Captured, roots_fault: Reply, leaf_fault: Reply, expect: &str) {
    let mock = MockAgent::start(
        "web",
        cap.roots_reply(cap.roots_index),
        cap.leaf_reply(cap.leaf_index),
    )
    .await;
    let web = mocked_service(&mock, "web").await;
    let before = web.status();
    assert!(before.last_error.is_none(), "{:?}", before.last_error);
    let generation = *web.material_updates().borrow();

    mock.roots.set(roots_fault);
    mock.leaf.set(leaf_fault);
    eventually(Duration::from_secs(5), "the fault in last_error", || {
        web.status()
            .last_error
            .is_some_and(|e| e.message.contains(expect))
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "both watches meet the fault",
        || {
            !mock.roots.hits_labelled("fault").is_empty()
                && !mock.leaf.hits_labelled("fault").is_empty()
        },
    )
    .await;
    let last_first = [&mock.roots, &mock.leaf]
        .iter()
        .map(|e| e.hits_labelled("fault")[0].at)
        .max()
        .unwrap();
    until(last_first, FAULT_WINDOW).await;

    let roots_requests = assert_backed_off("roots", &mock.roots, "fault");
    let leaf_requests = assert_backed_off("leaf", &mock.leaf, "fault");
    // A watch that ignored errors would poll at `min_interval`: the bound tells the two apart.
    assert!(
        max_requests_while_failing(&watch_config(), FAULT_WINDOW)
            < max_requests_while_polling(&watch_config(), FAULT_WINDOW) / 2,
        "the bound is meaningful"
    );

    let during = web.status();
    assert!(during.ready, "still ready during the fault");
    assert_eq!(during.leaf_serial, before.leaf_serial, "same leaf");
    assert_eq!(during.root_ids, before.root_ids, "same roots");
    assert_eq!(
        *web.material_updates().borrow(),
        generation,
        "nothing was published during the fault"
    );
    assert_material_verifies(&web);
    let failure = during.last_error.expect("the fault is reported");
    assert!(
        ["roots", "leaf"].contains(&failure.source),
        "{}",
        failure.source
    );
    assert!(failure.message.contains(expect), "{}", failure.message);

    // The fault clears: the agent answers the same roots and a renewed leaf.
    let (new_leaf, json) = cap.new_leaf("web", cap.leaf_index + 1);
    mock.roots.set(cap.roots_reply(cap.roots_index));
    mock.leaf
        .set(Reply::json("recovered", json, cap.leaf_index + 1));
    wait_for_serial(&web, &new_leaf.serial_number).await;
    assert!(web.status().ready);
    assert_material_verifies(&web);

    web.shutdown();
    assert_wiremock_agrees(&mock).await;
    eprintln!("fault {expect:?}: {roots_requests} roots and {leaf_requests} leaf requests in {FAULT_WINDOW:?}");
}

/// Issue #16 found 41 idle sockets to the agent still open 140 s after the load stopped:
/// hyper-util's pool ignored `pool_idle_timeout` without a pool timer. Idle connections close
/// after the configured idle time, counted on the agent's side of a relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_agent_connections_are_closed_after_the_idle_timeout() {
    let agent = support::agent::start_agent().await;
    let relay = ConnectionCounter::start(agent.addr()).await;
    let idle = Duration::from_millis(300);
    let client = AgentClient::new(&relay.addr().to_string())
        .unwrap()
        .with_idle_timeout(idle);
    // Concurrent reads open several connections; each goes back to the pool when done.
    let opts = consul_connect::agent::QueryOptions::default();
    let (a, b, c, d) = tokio::join!(
        client.roots(&opts),
        client.roots(&opts),
        client.roots(&opts),
        client.roots(&opts)
    );
    for r in [a, b, c, d] {
        r.unwrap();
    }
    let idle_since = Instant::now();
    let opened = relay.accepted();
    assert!(opened >= 1, "the reads went through the relay");
    assert!(relay.open() >= 1, "the pool keeps connections for reuse");
    // A bounded poll: socket closure has no signal of its own.
    eventually(
        Duration::from_secs(10),
        "the idle connections to close",
        || relay.open() == 0,
    )
    .await;
    let closed_after = idle_since.elapsed();
    assert!(
        closed_after >= idle - Duration::from_millis(50),
        "{opened} connection(s) closed after {closed_after:?}, before the {idle:?} idle time"
    );
    // The client still works: a new connection is opened on demand.
    client.roots(&opts).await.unwrap();
    assert_eq!(relay.accepted(), opened + 1);
    drop(client);
    agent.shutdown().await;
}

/// Consul 1.10-1.11 (hashicorp/consul#12048): a short-lived process that exits with a blocking
/// leaf query pending makes the next process's non-blocking leaf read wait for that query's
/// whole `wait` (issue #16 saw a 6 min 53 s stall). The SDK bounds the read and retries it as a
/// blocking read, so the second process is ready promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_query_abandoned_by_a_previous_process_does_not_stall_the_next() {
    let agent = support::agent::start_agent().await;
    let proxy = LeafStallProxy::start(agent.addr()).await;
    let client = AgentClient::new(&proxy.addr().to_string()).unwrap();
    let long_wait = watch_config().wait(Duration::from_secs(30));

    // The first process: ready, its leaf watch parked in a blocking query, then gone.
    let first = ConnectService::builder("web")
        .agent(client.clone())
        .watch_config(long_wait.clone())
        .build()
        .await
        .unwrap();
    first.ready_timeout(READY).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the leaf watch's blocking query",
        || proxy.blocking_query_seen(),
    )
    .await;
    first.shutdown();
    drop(first);

    // The next process, with a leaf read bound well under the abandoned query's wait.
    let started = Instant::now();
    let second = ConnectService::builder("web")
        .agent(client.clone())
        .watch_config(long_wait)
        .leaf_first_read_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    second
        .ready_timeout(Duration::from_secs(5))
        .await
        .expect("ready promptly despite the stalled leaf read");
    let took = started.elapsed();
    let held = proxy.held();
    assert!(
        !held.is_empty() && held[0] > Duration::from_secs(20),
        "the proxy reproduced the stall: {held:?}"
    );
    assert!(took < Duration::from_secs(5), "ready after {took:?}");
    assert_material_verifies(&second);
    second.shutdown();
    agent.shutdown().await;
}

/// Consul with a dead Raft leader: blocking reads fail at once ("No cluster leader") while the
/// agent's cache still answers non-blocking reads. Issue #16 saw 52 requests in 7 s and 26
/// republishes of unchanged material: each cached answer reset the back-off. The watches must
/// keep backing off until a blocking read succeeds, and publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_between_failed_blocking_reads_do_not_reset_the_backoff() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    let before = web.status();
    let generation = *web.material_updates().borrow();

    let fault = Reply::status("fault", 500, "rpc error: No cluster leader");
    mock.roots.set_blocking(Some(fault.clone()));
    mock.leaf.set_blocking(Some(fault));
    eventually(
        Duration::from_secs(5),
        "both watches meet the fault",
        || {
            !mock.roots.hits_labelled("fault").is_empty()
                && !mock.leaf.hits_labelled("fault").is_empty()
        },
    )
    .await;
    let last_first = [&mock.roots, &mock.leaf]
        .iter()
        .map(|e| e.hits_labelled("fault")[0].at)
        .max()
        .unwrap();
    until(last_first, FAULT_WINDOW).await;

    let config = watch_config();
    for (name, endpoint) in [("roots", &mock.roots), ("leaf", &mock.leaf)] {
        // The failed blocking reads back off as if nothing else answered...
        assert_backed_off(name, endpoint, "fault");
        // ...and each may be preceded by at most one cached (non-blocking) read.
        let first = endpoint.hits_labelled("fault")[0].at;
        let in_window: Vec<_> = endpoint
            .hits()
            .into_iter()
            .filter(|h| h.at >= first && h.at <= first + FAULT_WINDOW)
            .collect();
        let bound = 2 * max_requests_while_failing(&config, FAULT_WINDOW);
        assert!(
            in_window.len() <= bound,
            "{name}: {} requests within {FAULT_WINDOW:?} of the fault, more than {bound}: {:?}",
            in_window.len(),
            in_window
                .iter()
                .map(|h| (h.index, h.label))
                .collect::<Vec<_>>()
        );
        assert!(
            in_window
                .iter()
                .any(|h| h.index.is_none() && h.label == "good"),
            "{name}: the cached answers were read (the fault is the one reported)"
        );
    }
    let during = web.status();
    assert!(during.ready, "still ready during the fault");
    assert_eq!(during.leaf_serial, before.leaf_serial, "same leaf");
    assert_eq!(during.root_ids, before.root_ids, "same roots");
    assert_eq!(
        *web.material_updates().borrow(),
        generation,
        "unchanged material was republished"
    );
    assert_material_verifies(&web);

    // The servers recover: blocking reads work again and a renewed leaf is taken.
    let (new_leaf, json) = cap.new_leaf("web", cap.leaf_index + 1);
    mock.roots.set_blocking(None);
    mock.leaf.set_blocking(None);
    mock.leaf
        .set(Reply::json("recovered", json, cap.leaf_index + 1));
    wait_for_serial(&web, &new_leaf.serial_number).await;
    assert_eq!(
        *web.material_updates().borrow(),
        generation + 1,
        "the renewed leaf is published once"
    );
    web.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_keeps_material_backs_off_and_recovers() {
    let cap = capture("web").await;
    let fault = Reply::status("fault", 500, "rpc error: No cluster leader");
    fault_then_recover(&cap, fault.clone(), fault, "500").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_keeps_material_backs_off_and_recovers() {
    let cap = capture("web").await;
    let fault = Reply::status("fault", 429, "Rate limit reached, try again later");
    fault_then_recover(&cap, fault.clone(), fault, "Rate limit reached").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_json_keeps_material_backs_off_and_recovers() {
    let cap = capture("web").await;
    let roots = &cap.roots_body[..cap.roots_body.len() / 2];
    // Cut inside the private key, so a decoder that echoed its input would show key text.
    let key_at = cap
        .leaf_body
        .find("PRIVATE KEY")
        .expect("key in the leaf JSON");
    let leaf = &cap.leaf_body[..key_at + 40];
    fault_then_recover(
        &cap,
        Reply::json("fault", roots, cap.roots_index + 1),
        Reply::json("fault", leaf, cap.leaf_index + 1),
        "cannot decode",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_errors_do_not_echo_the_private_key() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    // A leaf whose key is there but another field has the wrong type: serde names the field.
    let mut value: serde_json::Value = serde_json::from_str(&cap.leaf_body).unwrap();
    value["ModifyIndex"] = serde_json::Value::from("not a number");
    mock.leaf
        .set(Reply::json("fault", value.to_string(), cap.leaf_index + 1));
    eventually(Duration::from_secs(5), "a decode error", || {
        web.status()
            .last_error
            .is_some_and(|e| e.message.contains("cannot decode"))
    })
    .await;
    let message = web.status().last_error.unwrap().message;
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    for line in cap
        .leaf
        .private_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(!message.contains(line), "{message}");
    }
    assert!(web.status().ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_bound_catches_a_watch_that_does_not_back_off() {
    // The bound the tests above hold watches to, against a watch configured to retry every
    // few milliseconds: the check must fail it, or it proves nothing.
    let fault = Reply::status("fault", 500, "rpc error: No cluster leader");
    let mock = MockAgent::start("web", fault.clone(), fault).await;
    let hammering = watch_config()
        .backoff_range(Duration::from_millis(5), Duration::from_millis(5))
        .min_interval(Duration::from_millis(5));
    let web = ConnectService::builder("web")
        .agent(mock.client())
        .watch_config(hammering)
        .build()
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the first failure", || {
        !mock.roots.hits().is_empty()
    })
    .await;
    until(mock.roots.hits()[0].at, FAULT_WINDOW).await;
    web.shutdown();
    let first = mock.roots.hits()[0].at;
    let n = mock
        .roots
        .hits()
        .iter()
        .filter(|h| h.at <= first + FAULT_WINDOW)
        .count();
    let bound = max_requests_while_failing(&watch_config(), FAULT_WINDOW);
    assert!(n > 3 * bound, "{n} requests, bound {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answer_beyond_the_wait_times_out_and_is_retried() {
    let cap = capture("web").await;
    let config = watch_config();
    let mock = MockAgent::start(
        "web",
        cap.roots_reply(cap.roots_index),
        cap.leaf_reply(cap.leaf_index),
    )
    .await;
    let web = mocked_service(&mock, "web").await;
    let before = web.status();

    // The next leaf request hangs far beyond the blocking wait; later ones get a renewed leaf.
    let (new_leaf, json) = cap.new_leaf("web", cap.leaf_index + 1);
    mock.leaf
        .set(Reply::json("recovered", json, cap.leaf_index + 1));
    let mut slow = cap
        .leaf_reply(cap.leaf_index)
        .delayed(Duration::from_secs(120));
    slow.label = "slow";
    mock.leaf.once(slow);

    eventually(Duration::from_secs(25), "a timeout in last_error", || {
        web.status()
            .last_error
            .is_some_and(|e| e.source == "leaf" && e.message.contains("did not answer"))
    })
    .await;
    let reported = Instant::now();
    let during = web.status();
    assert!(during.ready);
    assert_eq!(during.leaf_serial, before.leaf_serial);
    assert_material_verifies(&web);

    let slow_at = mock.leaf.hits_labelled("slow")[0].at;
    let held = reported - slow_at;
    // The SDK allows the agent its wait plus Consul's wait/16 jitter, plus the fixed 10 s
    // `REQUEST_TIMEOUT` slack of src/agent.rs; 2 s more for polling and scheduling.
    let limit = config.wait + config.wait / 16 + Duration::from_secs(10);
    assert!(
        held >= config.wait,
        "gave up after {held:?}, before the wait"
    );
    assert!(
        held <= limit + Duration::from_secs(2),
        "held {held:?}, limit {limit:?}"
    );

    wait_for_serial(&web, &new_leaf.serial_number).await;
    assert_material_verifies(&web);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_going_backwards_resets_the_watch() {
    let cap = capture("web").await;
    let mock = MockAgent::start("web", cap.roots_reply(100), cap.leaf_reply(100)).await;
    let web = mocked_service(&mock, "web").await;
    let before = web.status();
    eventually(
        Duration::from_secs(5),
        "blocking reads at index 100",
        || {
            mock.roots.hits().iter().any(|h| h.index == Some(100))
                && mock.leaf.hits().iter().any(|h| h.index == Some(100))
        },
    )
    .await;

    let mut roots = cap.roots_reply(7);
    roots.label = "backwards";
    let mut leaf = cap.leaf_reply(3);
    leaf.label = "backwards";
    mock.roots.set(roots);
    mock.leaf.set(leaf);

    for (name, endpoint, low) in [("roots", &mock.roots, 7), ("leaf", &mock.leaf, 3)] {
        eventually(
            Duration::from_secs(5),
            "blocking reads at the new index",
            || {
                endpoint
                    .hits_labelled("backwards")
                    .iter()
                    .any(|h| h.index == Some(low))
            },
        )
        .await;
        let hits = endpoint.hits_labelled("backwards");
        // The answer lower than asked is followed by a non-blocking read (index reset), then
        // blocking reads from the new index.
        assert_eq!(hits[0].index, Some(100), "{name}: {hits:?}");
        assert_eq!(hits[1].index, None, "{name}: the index is reset: {hits:?}");
        assert_eq!(hits[2].index, Some(low), "{name}: {hits:?}");
        let first = hits[0].at;
        until(first, FAULT_WINDOW).await;
        let n = endpoint
            .hits_labelled("backwards")
            .iter()
            .filter(|h| h.at <= first + FAULT_WINDOW)
            .count();
        let bound = max_requests_while_polling(&watch_config(), FAULT_WINDOW);
        assert!(n <= bound, "{name}: {n} requests, bound {bound}");
    }
    let after = web.status();
    assert!(after.ready);
    assert_eq!(after.leaf_serial, before.leaf_serial);
    assert!(after.last_error.is_none(), "{:?}", after.last_error);
    assert_material_verifies(&web);
}

/// Leaves the agent might hand out that must never be presented.
fn bad_leaves(cap: &Captured) -> Vec<(&'static str, LeafCert, &'static str)> {
    let other_ca = TestCa::new(99);
    let now = support::certs::now();
    let expired = cap
        .ca
        .issue(&LeafSpec {
            not_before: now - time::Duration::days(4),
            not_after: now - time::Duration::days(1),
            ..LeafSpec::consul(TRUST_DOMAIN, "web")
        })
        .leaf_cert();
    let mut mismatched = cap.ca.leaf("web").leaf_cert();
    mismatched.private_key_pem = cap.ca.leaf("web").leaf_cert().private_key_pem;
    let ca_leaf = cap
        .ca
        .issue(&LeafSpec {
            is_ca: true,
            ..LeafSpec::consul(TRUST_DOMAIN, "web")
        })
        .leaf_cert();
    let mut no_key = cap.ca.leaf("web").leaf_cert();
    no_key.private_key_pem = String::new();
    vec![
        (
            "another CA",
            other_ca.leaf("web").leaf_cert(),
            "does not chain to a trusted CA root",
        ),
        ("expired", expired, "expired"),
        ("key mismatch", mismatched, "does not match its private key"),
        ("CA certificate", ca_leaf, "is a CA certificate"),
        ("no private key", no_key, "holds no private key"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_that_do_not_verify_are_never_served() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    let listener = ConnectListener::bind(&web, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let before = web.status();
    let good_serial = before.leaf_serial.clone().unwrap();
    assert_eq!(presented_serial(addr).await, good_serial);
    let generation = *web.material_updates().borrow();

    let mut index = cap.leaf_index;
    for (name, leaf, expect) in bad_leaves(&cap) {
        index += 1;
        let previous = web.status().last_error.map(|e| e.at);
        mock.leaf.set(Reply::json("bad", leaf_json(&leaf), index));
        eventually(Duration::from_secs(5), name, || {
            web.status().last_error.is_some_and(|e| {
                Some(e.at) != previous && e.source == "material" && e.message.contains(expect)
            })
        })
        .await;
        let status = web.status();
        assert!(status.ready, "{name}");
        assert_eq!(
            status.leaf_serial.as_deref(),
            Some(good_serial.as_str()),
            "{name}"
        );
        assert_eq!(
            *web.material_updates().borrow(),
            generation,
            "{name}: nothing published"
        );
        assert_material_verifies(&web);
        assert_eq!(
            presented_serial(addr).await,
            good_serial,
            "{name}: on the wire"
        );
    }

    let (new_leaf, json) = cap.new_leaf("web", index + 1);
    mock.leaf.set(Reply::json("recovered", json, index + 1));
    wait_for_serial(&web, &new_leaf.serial_number).await;
    assert!(
        web.status().last_error.is_none(),
        "{:?}",
        web.status().last_error
    );
    assert_eq!(presented_serial(addr).await, new_leaf.serial_number);
    assert_material_verifies(&web);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_for_another_service_is_never_served() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    let good_serial = web.status().leaf_serial.unwrap();

    // A leaf the right CA signed for `db`, answered on web's leaf endpoint; the JSON claims web.
    let mut db_leaf = cap.ca.leaf("db").leaf_cert();
    db_leaf.service = "web".into();
    db_leaf.service_uri = support::certs::service_uri(TRUST_DOMAIN, "web");
    db_leaf.modify_index = cap.leaf_index + 1;
    mock.leaf
        .set(Reply::json("bad", leaf_json(&db_leaf), cap.leaf_index + 1));
    eventually(
        Duration::from_secs(5),
        "the leaf watch reads the db leaf",
        || {
            mock.leaf
                .hits_labelled("bad")
                .iter()
                .any(|h| h.index == Some(cap.leaf_index + 1))
        },
    )
    .await;
    eventually(Duration::from_secs(5), "the db leaf refused", || {
        web.status()
            .last_error
            .is_some_and(|e| e.source == "material")
            || web.status().leaf_serial.as_deref() != Some(good_serial.as_str())
    })
    .await;
    let status = web.status();
    assert_eq!(
        status.identity.as_ref().map(|i| i.service()),
        Some("web"),
        "web now presents {:?}",
        status.identity
    );
    assert_eq!(status.leaf_serial.as_deref(), Some(good_serial.as_str()));
    assert_material_verifies(&web);
}

fn zero_roots(cap: &Captured) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&cap.roots_body).unwrap();
    value["Roots"] = serde_json::json!([]);
    value["ActiveRootID"] = serde_json::json!("");
    value.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roots_list_with_zero_roots_keeps_the_last_good_roots() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    let listener = ConnectListener::bind(&web, "127.0.0.1:0").await.unwrap();
    let before = web.status();
    let root_certs = web.material().unwrap().root_certs().to_vec();
    let generation = *web.material_updates().borrow();

    let mut null_roots: serde_json::Value = serde_json::from_str(&cap.roots_body).unwrap();
    null_roots["Roots"] = serde_json::Value::Null;
    let cases = [
        ("empty", zero_roots(&cap), "material", "holds no roots"),
        ("null", null_roots.to_string(), "roots", "cannot decode"),
    ];
    let mut index = cap.roots_index;
    for (name, body, source, expect) in cases {
        index += 1;
        let previous = web.status().last_error.map(|e| e.at);
        mock.roots.set(Reply::json("fault", body, index));
        eventually(Duration::from_secs(5), name, || {
            web.status().last_error.is_some_and(|e| {
                Some(e.at) != previous && e.source == source && e.message.contains(expect)
            })
        })
        .await;
        let status = web.status();
        assert!(status.ready, "{name}");
        assert_eq!(status.leaf_serial, before.leaf_serial, "{name}");
        let material = web.material().unwrap();
        assert_eq!(material.root_certs(), &root_certs[..], "{name}: roots kept");
        assert_eq!(*web.material_updates().borrow(), generation, "{name}");
        assert_material_verifies(&web);
        assert_eq!(
            presented_serial(listener.local_addr()).await,
            before.leaf_serial.clone().unwrap(),
            "{name}"
        );
    }

    // Recovery: the real list again, at a new index. The material never changed, so it is
    // not republished (issue #16): the recovery shows as the error clearing.
    mock.roots.set(cap.roots_reply(index + 1));
    eventually(
        Duration::from_secs(5),
        "the roots to be taken again",
        || web.status().last_error.is_none(),
    )
    .await;
    let status = web.status();
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    assert_eq!(status.root_ids, before.root_ids);
    assert_eq!(
        *web.material_updates().borrow(),
        generation,
        "the unchanged material is not republished"
    );
    assert_material_verifies(&web);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_root_ids_are_the_trusted_roots_after_a_rejected_roots_list() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    let before = web.status();
    mock.roots
        .set(Reply::json("fault", zero_roots(&cap), cap.roots_index + 1));
    eventually(Duration::from_secs(5), "the empty list refused", || {
        web.status()
            .last_error
            .is_some_and(|e| e.message.contains("holds no roots"))
    })
    .await;
    let status = web.status();
    assert!(status.ready);
    assert_eq!(
        status.root_ids, before.root_ids,
        "the material still trusts {:?}",
        before.root_ids
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_roots_are_trusted_even_after_a_rejected_leaf() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    let good_serial = web.status().leaf_serial.unwrap();

    // A leaf from an unknown CA arrives and is refused...
    let stray = TestCa::new(98).leaf("web").leaf_cert();
    mock.leaf
        .set(Reply::json("bad", leaf_json(&stray), cap.leaf_index + 1));
    eventually(Duration::from_secs(5), "the stray leaf refused", || {
        web.status()
            .last_error
            .is_some_and(|e| e.source == "material")
    })
    .await;

    // ...then the CA starts a rotation: a second root joins the list. The held leaf still
    // chains to the first, so the new list must be trusted (peers with new leaves are coming).
    let next = TestCa::new(97);
    let mut roots = cap.roots.clone();
    roots.roots.push(next.ca_root(false, &[]));
    mock.roots.set(Reply::json(
        "rotating",
        serde_json::to_string(&roots).unwrap(),
        cap.roots_index + 1,
    ));
    eventually(Duration::from_secs(5), "the new roots list is read", || {
        !mock.roots.hits_labelled("rotating").is_empty()
    })
    .await;
    let der = next.der.clone();
    eventually(Duration::from_secs(5), "the new root is trusted", || {
        web.material()
            .is_some_and(|m| m.root_certs().contains(&der))
    })
    .await;
    assert_eq!(
        web.status().leaf_serial.as_deref(),
        Some(good_serial.as_str())
    );
    assert_material_verifies(&web);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_the_held_leaf_does_not_chain_to_are_trusted_at_once_and_the_service_waits() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    let held_serial = web.status().leaf_serial.unwrap();

    // Leaf renewal fails (as for a token that lost service:write), and the CA moves to a new
    // root that the held leaf does not chain to.
    mock.leaf
        .set(Reply::status("denied", 403, "Permission denied"));
    let next = TestCa::new(97);
    mock.roots.set(new_ca_roots(&cap, &next));
    let der = next.der.clone();
    eventually(
        Duration::from_secs(5),
        "the new roots trusted at once",
        || {
            web.material()
                .is_some_and(|m| m.root_certs() == std::slice::from_ref(&der))
        },
    )
    .await;
    let status = web.status();
    assert!(!status.ready, "a leaf that does not chain is not ready");
    assert_eq!(status.leaf_serial.as_deref(), Some(held_serial.as_str()));
    assert!(!web.material().unwrap().leaf_chains());
    let err = web
        .ready_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("a leaf valid under the roots"),
        "{err}"
    );

    // A leaf from the new CA makes it ready again.
    let renewed = next.leaf("web").leaf_cert();
    mock.leaf.set(Reply::json(
        "renewed",
        leaf_json(&renewed),
        cap.leaf_index + 1,
    ));
    web.ready_timeout(READY).await.unwrap();
    let material = web.material().unwrap();
    assert!(material.leaf_chains());
    assert_eq!(material.serial(), renewed.serial_number);
    assert_material_verifies(&web);
}

/// A `web` service on `mock`, ready, whose watches back off for half an hour to an hour after
/// one failure: only a wake-up can make them ask again within a test.
async fn backing_off_for_an_hour(mock: &MockAgent) -> ConnectService {
    let hour = Duration::from_secs(3600);
    let web = ConnectService::builder("web")
        .agent(mock.client())
        .watch_config(watch_config().backoff_range(hour, hour))
        .build()
        .await
        .unwrap();
    web.ready_timeout(READY).await.unwrap();
    web
}

/// The captured roots moved to `next` alone, at the next index.
fn new_ca_roots(cap: &Captured, next: &TestCa) -> Reply {
    let mut roots = cap.roots.clone();
    roots.roots = vec![next.ca_root(true, &[])];
    roots.active_root_id = roots.roots[0].id.clone();
    Reply::json(
        "new CA",
        serde_json::to_string(&roots).unwrap(),
        cap.roots_index + 1,
    )
}

/// A leaf watch backing off after errors asks again as soon as the active CA root changes (the
/// agent signs a new leaf then), not when its back-off ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_change_cuts_the_leaf_watch_back_off_short() {
    let (cap, mock) = replaying("web").await;
    let web = backing_off_for_an_hour(&mock).await;

    mock.leaf
        .set(Reply::status("denied", 403, "Permission denied"));
    eventually(READY, "the leaf watch failed once", || {
        !mock.leaf.hits_labelled("denied").is_empty()
    })
    .await;
    let next = TestCa::new(96);
    let renewed = next.leaf("web").leaf_cert();
    mock.leaf.set(Reply::json(
        "renewed",
        leaf_json(&renewed),
        cap.leaf_index + 1,
    ));
    mock.roots.set(new_ca_roots(&cap, &next));

    wait_for_serial(&web, &renewed.serial_number).await;
    web.ready_timeout(READY).await.unwrap();
    assert_eq!(
        mock.leaf.hits_labelled("denied").len(),
        1,
        "no second failure: the leaf was asked for again once the roots moved"
    );
    assert_material_verifies(&web);
}

/// The other way round: a leaf from a new CA arriving while the roots watch backs off wakes the
/// roots watch, whose new roots then make the leaf valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_from_an_unknown_ca_cuts_the_roots_watch_back_off_short() {
    let (cap, mock) = replaying("web").await;
    let web = backing_off_for_an_hour(&mock).await;

    mock.roots.set(Reply::status("down", 500, "rpc error"));
    eventually(READY, "the roots watch failed once", || {
        !mock.roots.hits_labelled("down").is_empty()
    })
    .await;
    let next = TestCa::new(95);
    mock.roots.set(new_ca_roots(&cap, &next));
    let renewed = next.leaf("web").leaf_cert();
    mock.leaf.set(Reply::json(
        "renewed",
        leaf_json(&renewed),
        cap.leaf_index + 1,
    ));

    wait_for_serial(&web, &renewed.serial_number).await;
    web.ready_timeout(READY).await.unwrap();
    assert_eq!(mock.roots.hits_labelled("down").len(), 1);
    assert_material_verifies(&web);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_error_clears_when_the_agent_answers_again() {
    let (cap, mock) = replaying("web").await;
    let web = mocked_service(&mock, "web").await;
    mock.roots
        .set(Reply::status("fault", 500, "rpc error: No cluster leader"));
    eventually(Duration::from_secs(5), "the 500 reported", || {
        web.status().last_error.is_some()
    })
    .await;
    // The agent is back with the same state: same roots at the same index.
    mock.roots.set(cap.roots_reply(cap.roots_index));
    eventually(Duration::from_secs(5), "good answers again", || {
        mock.roots.hits().last().is_some_and(|h| h.label == "good")
    })
    .await;
    let answered = mock.roots.hits_labelled("good").len();
    eventually(Duration::from_secs(5), "three more good answers", || {
        mock.roots.hits_labelled("good").len() >= answered + 3
    })
    .await;
    let status = web.status();
    assert!(
        status.last_error.is_none(),
        "the agent has answered well {} times since; status still says {:?}",
        mock.roots.hits_labelled("good").len() - answered + 1,
        status.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_error_clears_once_ready_after_the_agent_comes_up() {
    let cap = capture("web").await;
    let fault = Reply::status("fault", 500, "rpc error: No cluster leader");
    let mock = MockAgent::start("web", fault.clone(), fault).await;
    let web = ConnectService::builder("web")
        .agent(mock.client())
        .watch_config(watch_config())
        .build()
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "both watches failing", || {
        !mock.roots.hits().is_empty() && !mock.leaf.hits().is_empty()
    })
    .await;
    // The agent's leaf answer is on its way (slowly); meanwhile the roots fail once more, then
    // come back, and then the leaf lands: the service is ready and nothing is failing.
    let mut slow = cap
        .leaf_reply(cap.leaf_index)
        .delayed(Duration::from_millis(1500));
    slow.label = "slow";
    mock.leaf.set(cap.leaf_reply(cap.leaf_index));
    mock.leaf.once(slow);
    eventually(Duration::from_secs(5), "the leaf request in flight", || {
        !mock.leaf.hits_labelled("slow").is_empty()
    })
    .await;
    let slow_at = mock.leaf.hits_labelled("slow")[0].at;
    eventually(Duration::from_secs(5), "a roots failure after it", || {
        mock.roots.hits_labelled("fault").last().unwrap().at > slow_at
    })
    .await;
    mock.roots.set(cap.roots_reply(cap.roots_index));
    web.ready_timeout(READY).await.unwrap();
    assert!(
        mock.leaf.hits_labelled("fault").last().unwrap().at < slow_at,
        "no leaf failure since"
    );
    let status = web.status();
    assert!(status.ready);
    assert!(
        status.last_error.is_none(),
        "ready, both watches answering, yet: {:?}",
        status.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_down_at_start_is_reported_then_recovers_on_its_own() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let web = ConnectService::builder("web")
        .agent(AgentClient::new(&addr.to_string()).unwrap())
        .watch_config(watch_config())
        .build()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the unreachable agent reported",
        || {
            web.status()
                .last_error
                .is_some_and(|e| e.message.contains("cannot reach the Consul agent"))
        },
    )
    .await;
    let status = web.status();
    assert!(!status.ready);
    assert!(web.material().is_none());
    let err = web
        .ready_timeout(Duration::from_millis(100))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CA roots") && err.contains("cannot reach"),
        "{err}"
    );

    // The agent comes up on that port: the service gets ready without being told.
    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .http_addr(addr)
        .start()
        .await
        .unwrap();
    web.ready_timeout(READY).await.unwrap();
    assert_material_verifies(&web);
    let roots = Raw::new(&agent).get(ROOTS_PATH).await.json();
    assert_eq!(
        web.status().root_ids,
        vec![roots["Roots"][0]["ID"].as_str().unwrap().to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_dropping_every_connection_is_retried_with_backoff_then_recovers() {
    // An agent that accepts, reads the request line and hangs up: every request fails with a
    // transport error (neither agent-sim nor wiremock does this).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let log = seen.clone();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(tcp).lines();
                if let Ok(Some(line)) = lines.next_line().await {
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let path = path.split('?').next().unwrap_or("").to_owned();
                    log.lock().unwrap().push((path, Instant::now()));
                }
            });
        }
    });
    let web = ConnectService::builder("web")
        .agent(AgentClient::new(&addr.to_string()).unwrap())
        .watch_config(watch_config())
        .build()
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the failure reported", || {
        web.status()
            .last_error
            .is_some_and(|e| e.message.contains("cannot reach"))
    })
    .await;
    let first = seen.lock().unwrap()[0].1;
    until(first, FAULT_WINDOW).await;
    let config = watch_config();
    let bound = max_requests_while_failing(&config, FAULT_WINDOW);
    for path in [ROOTS_PATH, "/v1/agent/connect/ca/leaf/web"] {
        let times: Vec<Instant> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, at)| p == path && *at <= first + FAULT_WINDOW)
            .map(|(_, at)| *at)
            .collect();
        assert!(
            (2..=bound).contains(&times.len()),
            "{path}: {} requests in {FAULT_WINDOW:?} (bound {bound})",
            times.len()
        );
        for (k, pair) in times.windows(2).enumerate() {
            let floor = min_backoff(&config, k as u32 + 1);
            assert!(
                pair[1] - pair[0] >= floor,
                "{path}: retry {} too soon",
                k + 1
            );
        }
    }
    assert!(!web.status().ready);

    // A real agent takes the port over: the service gets ready on its own.
    server.abort();
    let _ = server.await;
    let _agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .http_addr(addr)
        .start()
        .await
        .unwrap();
    web.ready_timeout(READY).await.unwrap();
    assert_material_verifies(&web);
}

async fn rotate(agent: &Agent) {
    let put = Raw::new(agent)
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
}

/// The roots IDs (sorted) and index, and the leaf of `service` with its index, as `agent`
/// answers them to an anonymous caller (the partition the SDK's watches use).
async fn agent_view(agent: &Agent, service: &str) -> (Vec<String>, u64, LeafCert, u64) {
    let raw = Raw::new(agent);
    let roots = raw.get(ROOTS_PATH).await;
    let mut ids: Vec<String> = roots.json()["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let leaf = raw
        .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    (
        ids,
        roots.index(),
        serde_json::from_str(&leaf.body).unwrap(),
        leaf.index(),
    )
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// An echo server for `service`.
async fn echo_server(service: &ConnectService) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener =
        ConnectListener::with_config(service, listener, ListenerConfig::default()).unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = write.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
        }
    });
    addr
}

async fn echo(client: &ConnectService, addr: SocketAddr, server: &str) -> String {
    let stream = client
        .dialer()
        .dial(&StaticResolver::new(addr.to_string(), server))
        .await
        .unwrap();
    let (read, mut write) = tokio::io::split(stream);
    write.write_all(b"ping\n").await.unwrap();
    BufReader::new(read)
        .lines()
        .next_line()
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_with_an_index_that_goes_backwards_is_followed() {
    let first = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .start()
        .await
        .unwrap();
    let addr = first.addr();
    // History before the service starts, so the restarted agent's indexes are lower.
    rotate(&first).await;
    let client = AgentClient::new(&addr.to_string()).unwrap();
    let web = agent_service(&client, "web").await;
    let (first_roots, first_roots_index, first_leaf, first_leaf_index) =
        agent_view(&first, "web").await;
    let before = web.status();
    assert_eq!(
        before.leaf_serial.as_deref(),
        Some(first_leaf.serial_number.as_str())
    );
    assert_eq!(sorted(before.root_ids.clone()), first_roots);
    let generation = *web.material_updates().borrow();

    first.shutdown().await;
    eventually(
        Duration::from_secs(10),
        "the agent's absence reported",
        || {
            web.status()
                .last_error
                .is_some_and(|e| e.message.contains("cannot reach"))
        },
    )
    .await;
    let down = web.status();
    assert!(down.ready);
    assert_eq!(down.leaf_serial, before.leaf_serial);
    assert_eq!(*web.material_updates().borrow(), generation);
    assert_material_verifies(&web);

    // A new agent on the same port: a new CA, and every index starts again from the bottom.
    let second = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .http_addr(addr)
        .start()
        .await
        .unwrap();
    let (second_roots, second_roots_index, second_leaf, second_leaf_index) =
        agent_view(&second, "web").await;
    assert!(
        second_roots_index < first_roots_index && second_leaf_index < first_leaf_index,
        "the scenario needs indexes that go backwards: roots {first_roots_index} -> \
         {second_roots_index}, leaf {first_leaf_index} -> {second_leaf_index}"
    );
    assert_ne!(second_roots, first_roots);

    wait_for_serial(&web, &second_leaf.serial_number).await;
    eventually(Duration::from_secs(10), "the new roots trusted", || {
        sorted(web.status().root_ids) == second_roots
    })
    .await;
    assert_material_verifies(&web);
    eventually(Duration::from_secs(5), "last_error cleared", || {
        web.status().last_error.is_none()
    })
    .await;

    // Fully back: web talks to a db served from the new agent's CA.
    let db = agent_service(&client, "db").await;
    let db_addr = echo_server(&db).await;
    assert_eq!(echo(&web, db_addr, "db").await, "ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_with_the_same_indexes_is_followed() {
    let first = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .start()
        .await
        .unwrap();
    let addr = first.addr();
    let client = AgentClient::new(&addr.to_string()).unwrap();
    let web = agent_service(&client, "web").await;
    let (first_roots, first_roots_index, _, first_leaf_index) = agent_view(&first, "web").await;
    assert_eq!(sorted(web.status().root_ids), first_roots);

    first.shutdown().await;
    eventually(
        Duration::from_secs(10),
        "the agent's absence reported",
        || {
            web.status()
                .last_error
                .is_some_and(|e| e.message.contains("cannot reach"))
        },
    )
    .await;
    let second = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .http_addr(addr)
        .start()
        .await
        .unwrap();
    let (second_roots, second_roots_index, second_leaf, second_leaf_index) =
        agent_view(&second, "web").await;
    assert_eq!(
        (second_roots_index, second_leaf_index),
        (first_roots_index, first_leaf_index),
        "the scenario: the same history gives the same indexes"
    );
    assert_ne!(second_roots, first_roots, "but another CA");

    // Several blocking waits (500 ms each) pass; the new CA must be trusted by then.
    eventually(Duration::from_secs(5), "the new roots trusted", || {
        sorted(web.status().root_ids) == second_roots
    })
    .await;
    // The new roots are trusted at once; the service is ready again once the new CA's leaf is
    // held. (Both agents count serials alike, so the old and the new leaf may share a serial:
    // readiness, not the serial alone, says the new leaf arrived.)
    web.ready_timeout(READY)
        .await
        .unwrap_or_else(|e| panic!("no leaf of the new CA: {e}; {:?}", web.status()));
    assert!(web.material().is_some_and(|m| m.leaf_chains()));
    wait_for_serial(&web, &second_leaf.serial_number).await;
    assert_material_verifies(&web);
}

#[test]
fn backoff_is_exponential_capped_and_jittered() {
    let config = watch_config();
    for errors in 1..12 {
        let full = (config.backoff_base * (1 << (errors - 1))).min(config.backoff_max);
        let samples: Vec<Duration> = (0..200).map(|_| config.backoff(errors)).collect();
        for d in &samples {
            assert!(
                *d >= min_backoff(&config, errors) && *d <= full,
                "{errors}: {d:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
        let mut distinct = samples.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 150,
            "{errors}: only {} distinct delays in 200: no jitter",
            distinct.len()
        );
        let spread = distinct[distinct.len() - 1] - distinct[0];
        assert!(
            spread > full / 4,
            "{errors}: delays spread over {spread:?} only"
        );
    }
}
