//! Every captured exchange of a real Consul (1.4.5 and 1.10.9), replayed in capture order
//! against agent-sim in the matching `--consul-version` mode: status, the headers clients read,
//! and the body's shape (JSON keys and value types, recursively; IDs, indexes, serials, times,
//! PEM and trust domains differ per agent) or, for plain-text errors, the exact text.
//!
//! The requests are the 1.10.9 captures' (the 1.4.5 set holds responses only, answering the
//! same-numbered requests). Samples agent-sim cannot reproduce, or does not match yet, are
//! listed below with the reason; nothing is skipped silently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;

use agent_sim::profile::ConsulVersion;
use agent_sim::Agent;
use serde_json::Value;
use support::agent::{Raw, CLUSTER_ID};
use support::samples::{dir_1_10_9, Sample};

/// Samples not replayed, and why.
const NOT_REPLAYED: &[(&str, &str)] = &[
    ("acl", "part 3 needs an agent with ACLs on and the capture's tokens: tests/acl.rs covers ACL answers"),
    ("wan", "part 4, two datacenters: replayed by consul_1_10_9_wan_samples_replay"),
    ("19", "blocking reads with the capture's index and 2-5 s waits: tests/agent_cache.rs covers blocking"),
    ("39_", "blocking across a rotation needs a concurrent CA write: tests/agent_sim_ca.rs covers it"),
    ("40_", "blocking across a rotation needs a concurrent CA write: tests/agent_sim_ca.rs covers it"),
    ("18c", "blocking health read with the capture's index (streaming backend)"),
    ("18d", "blocking health read with the capture's index (streaming backend)"),
    ("m53b", "blocking config-entry list with the capture's index and a 2 s wait"),
];

/// Samples replayed (their requests build the state later ones need) whose answer agent-sim
/// does not match yet in 1.10.9 mode, and what differs. Checked to still differ, so the list
/// stays honest.
const GAPS_1_10_9: &[(&str, &str)] = &[];

/// The same for 1.4.5 mode.
const GAPS_1_4_5: &[(&str, &str)] = &[];

fn skipped(name: &str) -> Option<&'static str> {
    NOT_REPLAYED
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, why)| *why)
}

/// The capture's files in capture order: by the stem before the first `_` (so `m48c` comes
/// before `m48c2`).
fn capture_order(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".http"))
        .collect();
    names.sort_by(|a, b| {
        let stem = |n: &str| n.split('_').next().unwrap_or(n).to_owned();
        stem(a).cmp(&stem(b))
    });
    names
}

/// Headers whose presence and value clients depend on. `X-Consul-Index` and friends are
/// compared for presence only (indexes differ per agent).
const VALUE_HEADERS: &[&str] = &[
    "Content-Type",
    "X-Consul-Default-Acl-Policy",
    "X-Consul-Query-Backend",
    "X-Consul-Effective-Consistency",
    "X-Cache",
    "Allow",
];
const PRESENCE_HEADERS: &[&str] = &[
    "X-Consul-Index",
    "X-Consul-Knownleader",
    "X-Consul-Lastcontact",
];

/// Compares the shape of two JSON values; returns the differences.
fn shape_diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => shape_diff(&format!("{path}.{k}"), wv, gv, out),
                    None => out.push(format!("{path}.{k} missing")),
                }
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}.{k} not in the capture"));
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                out.push(format!("{path}: {} items, captured {}", g.len(), w.len()));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                shape_diff(&format!("{path}[{i}]"), wv, gv, out);
            }
        }
        (Value::Bool(w), Value::Bool(g)) if w != g => {
            out.push(format!("{path}: {g}, captured {w}"))
        }
        (Value::Null, Value::Null)
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_)) => {}
        _ => out.push(format!("{path}: {got}, captured {want}")),
    }
}

/// Consul lists roots in ID order, and IDs (certificate hashes) differ per run: compare the
/// active root with the active root.
fn active_root_first(body: &mut Value) {
    if let Some(Value::Array(roots)) = body.get_mut("Roots") {
        roots.sort_by_key(|r| r.get("Active") != Some(&Value::Bool(true)));
    }
}

/// What differs between a captured answer and agent-sim's.
fn differences(
    want: &Sample,
    status: u16,
    headers: &http::HeaderMap,
    body: &str,
    ids: &HashMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    if want.status != status {
        out.push(format!("status {status}, captured {}", want.status));
    }
    for name in VALUE_HEADERS {
        let ours = headers.get(*name).and_then(|v| v.to_str().ok());
        if want.header(name) != ours {
            out.push(format!(
                "{name}: {ours:?}, captured {:?}",
                want.header(name)
            ));
        }
    }
    for name in PRESENCE_HEADERS {
        if want.header(name).is_some() != headers.contains_key(*name) {
            out.push(format!("{name} presence differs"));
        }
    }
    let want_body = ids.iter().fold(want.body.clone(), |b, (theirs, ours)| {
        b.replace(theirs, ours)
    });
    match (
        serde_json::from_str::<Value>(&want_body),
        serde_json::from_str::<Value>(body),
    ) {
        (Ok(mut w), Ok(mut g)) => {
            active_root_first(&mut w);
            active_root_first(&mut g);
            shape_diff("$", &w, &g, &mut out)
        }
        _ if want_body.starts_with("-----BEGIN") => {
            if !body.starts_with("-----BEGIN") {
                out.push("not PEM".into());
            }
        }
        _ => {
            if want_body.trim_end() != body.trim_end() {
                out.push(format!("body {body:?}, captured {want_body:?}"));
            }
        }
    }
    out
}

/// The top-level `ID` of a JSON body.
fn body_id(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body)
        .ok()?
        .get("ID")?
        .as_str()
        .map(str::to_owned)
}

/// Sends the request of sample `name` (its IDs replaced by ours) to `raw`, and learns the ID
/// mapping from the answer; `None` for a capture without a request.
async fn send_sample(
    raw: &Raw,
    dir: &Path,
    name: &str,
    ids: &mut HashMap<String, String>,
) -> Option<support::agent::Answer> {
    let request = Sample::load_path(&dir.join(name));
    let (method, target) = request.request.clone()?;
    let target = ids
        .iter()
        .fold(target, |t, (theirs, ours)| t.replace(theirs, ours));
    let headers: Vec<(&str, &str)> = request
        .request_headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "Host" | "Content-Length"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let answer = raw
        .send_with_headers(&method, &target, &request.request_body, &headers)
        .await;
    if let (Some(ours), Some(theirs)) = (body_id(&answer.body), body_id(&request.body)) {
        ids.insert(theirs, ours);
    }
    Some(answer)
}

/// Compares `answer` with the captured `want`; a difference is a failure unless `name` is a
/// listed gap, and a listed gap that matches is one too.
fn judge(
    name: &str,
    want: &Sample,
    answer: &support::agent::Answer,
    ids: &mut HashMap<String, String>,
    gaps: &[(&str, &str)],
    failures: &mut Vec<String>,
) {
    if let (Some(ours), Some(theirs)) = (body_id(&answer.body), body_id(&want.body)) {
        ids.insert(theirs, ours);
    }
    let diff = differences(want, answer.status, &answer.headers, &answer.body, ids);
    let gap = gaps.iter().find(|(n, _)| name.starts_with(n));
    match (diff.is_empty(), gap) {
        (true, None) | (false, Some(_)) => {}
        (false, None) => failures.push(format!("{name}:\n    {}", diff.join("\n    "))),
        (true, Some(_)) => failures.push(format!("{name}: listed as a gap but matches now")),
    }
}

/// Replays `names` (checking the answers against `expected(name)`) on a fresh agent.
async fn replay(
    version: ConsulVersion,
    gaps: &[(&str, &str)],
    expected: impl Fn(&str) -> Option<Sample>,
) {
    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .consul_version(version)
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&agent);
    let dir = dir_1_10_9();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for name in capture_order(&dir) {
        if skipped(&name).is_some() {
            continue;
        }
        let Some(answer) = send_sample(&raw, &dir, &name, &mut ids).await else {
            continue;
        };
        let Some(want) = expected(&name) else {
            continue;
        };
        checked += 1;
        judge(&name, &want, &answer, &mut ids, gaps, &mut failures);
    }
    assert!(checked > 40, "{version}: only {checked} samples checked");
    assert!(
        failures.is_empty(),
        "{version}: {} of {checked} samples differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Part 4's samples agent-sim does not match yet, and why.
const GAPS_WAN: &[(&str, &str)] = &[
    (
        "wan03",
        "X-Cache: HIT in the capture, whose agent cache already held dc2's roots (04_, the \
         first read in dc1, is a MISS); a first read here is a MISS",
    ),
    (
        "wan18",
        "agent/self carries a subset of Consul's DebugConfig, Stats and Member (as 51_)",
    ),
];

/// Waits until dc2's replica lists as many intentions as dc1 holds (replication is
/// asynchronous in Consul too; the capture read dc2 after it had caught up).
async fn replicated(dc1: &Raw, dc2: &Raw) {
    let want = dc1.get("/v1/connect/intentions").await.json();
    let mut answer = dc2.get("/v1/connect/intentions").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while answer.json().as_array().map(Vec::len) != want.as_array().map(Vec::len) {
        assert!(std::time::Instant::now() < deadline, "dc2 never caught up");
        let index = answer.index();
        answer = dc2
            .get(&format!("/v1/connect/intentions?index={index}&wait=5s"))
            .await;
    }
}

/// Part 4 (`wan*`): a primary dc1 and a secondary dc2, each sample sent to the agent it was
/// captured from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_1_10_9_wan_samples_replay() {
    let dc1 = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .node_name("dc1-server")
        .start()
        .await
        .unwrap();
    let dc2 = Agent::builder()
        .datacenter("dc2")
        .node_name("dc2-server")
        .primary(&dc1)
        .start()
        .await
        .unwrap();
    let (raw1, raw2) = (Raw::new(&dc1), Raw::new(&dc2));
    let dir = dir_1_10_9();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut dc1_wrote = false;
    for name in capture_order(&dir)
        .into_iter()
        .filter(|n| n.starts_with("wan"))
    {
        let in_dc1 = name.contains("_dc1_");
        let raw = if in_dc1 { &raw1 } else { &raw2 };
        if !in_dc1 && std::mem::take(&mut dc1_wrote) {
            replicated(&raw1, &raw2).await;
        }
        let Some(answer) = send_sample(raw, &dir, &name, &mut ids).await else {
            continue;
        };
        dc1_wrote |= in_dc1 && answer.status == 200;
        checked += 1;
        let want = Sample::load_path(&dir.join(&name));
        judge(&name, &want, &answer, &mut ids, GAPS_WAN, &mut failures);
    }
    assert!(checked >= 18, "only {checked} samples checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} samples differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_1_10_9_samples_replay() {
    replay(ConsulVersion::V1_10_9, GAPS_1_10_9, |name| {
        Some(Sample::load_path(&dir_1_10_9().join(name)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_1_4_5_samples_replay() {
    replay(ConsulVersion::V1_4_5, GAPS_1_4_5, |name| {
        let path = Sample::dir().join(name);
        path.exists().then(|| Sample::load_path(&path))
    })
    .await;
}
