//! Every JSON body that real Consul 1.4.5 and 1.10.9 agents answered decodes through the wire
//! types: the type is chosen by the request's route, as a client would choose it.
//!
//! The 1.4.5 captures hold no request line; each one's request is that of the same-named 1.10.9
//! capture, which replays the 1.4.5 set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use consul_connect_types::api::{
    AclPolicy, AclToken, AgentSelf, AgentService, AuthorizeResponse, CaConfiguration, CaRootList,
    CatalogService, ConfigEntry, Intention, IntentionCheck, IntentionCreated, IntentionMatches,
    LeafCert, ServiceEntry,
};
use serde::de::DeserializeOwned;
use support::samples::{dir_1_10_9, Sample};

/// A decoder for one route's answers.
type Decoder = fn(&str) -> Result<(), String>;

/// Decodes `body` as `T`, or says why not.
fn decode<T: DeserializeOwned>(body: &str) -> Result<(), String> {
    serde_json::from_str::<T>(body)
        .map(drop)
        .map_err(|e| format!("as {}: {e}", std::any::type_name::<T>()))
}

/// The decoder for a successful JSON answer to `method path`, or `None` for routes whose answer
/// is not one of the wire types (`true`, a leader address, a datacenter list).
fn decoder_for(method: &str, target: &str) -> Option<Decoder> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let by_route: Decoder = match (method, segments.as_slice()) {
        ("GET", ["agent", "connect", "ca", "roots"]) => decode::<CaRootList>,
        ("GET", ["connect", "ca", "roots"]) if !query.contains("pem=true") => decode::<CaRootList>,
        ("GET", ["agent", "connect", "ca", "leaf", _]) => decode::<LeafCert>,
        ("POST", ["agent", "connect", "authorize"]) => decode::<AuthorizeResponse>,
        ("GET", ["agent", "self"]) => decode::<AgentSelf>,
        ("GET", ["agent", "services"]) => decode::<BTreeMap<String, AgentService>>,
        ("GET", ["agent", "service", _]) => decode::<AgentService>,
        ("GET", ["connect", "ca", "configuration"]) => decode::<CaConfiguration>,
        ("GET", ["connect", "intentions"]) => decode::<Vec<Intention>>,
        ("POST", ["connect", "intentions"]) => decode::<IntentionCreated>,
        ("GET", ["connect", "intentions", "match"]) => decode::<IntentionMatches>,
        ("GET", ["connect", "intentions", "check"]) => decode::<IntentionCheck>,
        ("GET", ["connect", "intentions", _]) => decode::<Intention>,
        ("GET", ["health", "connect" | "service", _]) => decode::<Vec<ServiceEntry>>,
        ("GET", ["catalog", "connect" | "service", _]) => decode::<Vec<CatalogService>>,
        ("PUT", ["acl", "token"]) => decode::<AclToken>,
        ("PUT", ["acl", "policy"]) => decode::<AclPolicy>,
        ("GET", ["config", _, _]) => decode::<ConfigEntry>,
        ("GET", ["config", _]) => decode::<Vec<ConfigEntry>>,
        _ => return None,
    };
    Some(by_route)
}

/// Decodes every successful JSON body of a capture set; returns the failures and how many bodies
/// were decoded.
fn decode_set(
    dir: &Path,
    request_of: impl Fn(&str, &Sample) -> (String, String),
) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut decoded = 0;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".http"))
        .collect();
    names.sort();
    for name in names {
        let sample = Sample::load_path(&dir.join(&name));
        let json = sample
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/json"));
        if !(200..300).contains(&sample.status) || !json || sample.body.trim().is_empty() {
            continue;
        }
        let (method, target) = request_of(&name, &sample);
        let Some(decoder) = decoder_for(&method, &target) else {
            continue;
        };
        decoded += 1;
        if let Err(e) = decoder(&sample.body) {
            failures.push(format!("{name} ({method} {target}): {e}"));
        }
    }
    (failures, decoded)
}

#[test]
fn every_1_10_9_body_decodes() {
    let (failures, decoded) = decode_set(&dir_1_10_9(), |name, sample| {
        sample
            .request
            .clone()
            .unwrap_or_else(|| panic!("{name}: no request line"))
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The set's JSON answers of these routes; a parser that skipped them would pass vacuously.
    assert!(decoded >= 145, "only {decoded} bodies decoded");
}

#[test]
fn every_1_4_5_body_decodes() {
    let (failures, decoded) = decode_set(&Sample::dir(), |name, _| {
        Sample::load_path(&dir_1_10_9().join(name))
            .request
            .unwrap_or_else(|| panic!("{name}: no request line in the 1.10.9 replay"))
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(decoded >= 34, "only {decoded} bodies decoded");
}

/// Removes `field` wherever it appears in a JSON value.
fn without(value: &mut serde_json::Value, field: &str) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove(field);
            map.values_mut().for_each(|v| without(v, field));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| without(v, field)),
        _ => {}
    }
}

#[test]
fn fields_security_depends_on_are_never_defaulted() {
    let cases: [(&str, &[&str], Decoder); 2] = [
        (
            "07_agent_leaf_web.http",
            &["CertPEM", "PrivateKeyPEM", "ServiceURI", "Service"],
            decode::<LeafCert>,
        ),
        (
            "04_agent_ca_roots.http",
            &["RootCert", "TrustDomain", "Roots", "ActiveRootID"],
            decode::<CaRootList>,
        ),
    ];
    for dir in [Sample::dir(), dir_1_10_9()] {
        for (name, fields, decoder) in cases {
            let body = Sample::load_path(&dir.join(name)).body;
            decoder(&body).unwrap();
            for field in fields {
                let mut value: serde_json::Value = serde_json::from_str(&body).unwrap();
                without(&mut value, field);
                let err = decoder(&value.to_string()).expect_err(field);
                assert!(err.contains(field), "{name} without {field}: {err}");
            }
        }
    }
}
