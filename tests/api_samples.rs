//! The wire types read every body a real Consul 1.4.5 agent sent and write it back unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use consul_connect_types::api::{
    AgentService, AuthorizeResponse, CaConfiguration, CaRootList, CatalogService, Intention,
    IntentionCheck, IntentionCreated, IntentionMatches, LeafCert, ServiceEntry,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use support::samples::Sample;

/// Parses the sample's body as `T`, writes it back, and compares field by field.
fn round_trip<T: DeserializeOwned + Serialize>(name: &str) {
    let sample = Sample::load(name);
    let original: Value =
        serde_json::from_str(&sample.body).unwrap_or_else(|e| panic!("{name}: {e}"));
    let typed: T = serde_json::from_str(&sample.body).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = serde_json::to_value(&typed).unwrap();
    assert_same(name, "$", &original, &again);
}

fn assert_same(sample: &str, path: &str, want: &Value, got: &Value) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let gv = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{sample}: {path}.{k} missing after round trip"));
                assert_same(sample, &format!("{path}.{k}"), wv, gv);
            }
            for k in g.keys() {
                assert!(
                    w.contains_key(k),
                    "{sample}: {path}.{k} added by round trip"
                );
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{sample}: {path} length");
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                assert_same(sample, &format!("{path}[{i}]"), wv, gv);
            }
        }
        _ => assert_eq!(want, got, "{sample}: {path}"),
    }
}

#[test]
fn roots_round_trip() {
    for name in [
        "04_agent_ca_roots.http",
        "05_ca_roots.http",
        "39_roots_blocking_during_rotation.http",
        "42_agent_ca_roots_after_rotation.http",
        "43_ca_roots_after_rotation.http",
    ] {
        round_trip::<CaRootList>(name);
    }
}

#[test]
fn root_json_types_are_consuls() {
    let roots: CaRootList =
        serde_json::from_str(&Sample::load("42_agent_ca_roots_after_rotation.http").body).unwrap();
    assert_eq!(roots.roots.len(), 2);
    let active = roots.active().expect("active root");
    assert_eq!(active.serial_number, 23);
    assert_eq!(active.intermediate_certs.as_ref().map(Vec::len), Some(1));
    let old = roots.roots.iter().find(|r| !r.active).unwrap();
    assert_eq!(old.intermediate_certs, None);
}

#[test]
fn leaves_round_trip() {
    for name in [
        "07_agent_leaf_web.http",
        "23_bad_leaf_unknown_service.http",
        "40_leaf_blocking_during_rotation.http",
        "45_agent_leaf_web_after_rotation.http",
        "46_agent_leaf_db_after_rotation.http",
        "54_agent_leaf_sserver.http",
    ] {
        round_trip::<LeafCert>(name);
    }
    let leaf: LeafCert =
        serde_json::from_str(&Sample::load("07_agent_leaf_web.http").body).unwrap();
    assert_eq!(leaf.serial_number, "08");
    assert!(
        !format!("{leaf:?}").contains("PRIVATE KEY"),
        "Debug must not show the key"
    );
}

#[test]
fn ca_configuration_round_trips() {
    round_trip::<CaConfiguration>("06_ca_configuration.http");
    round_trip::<CaConfiguration>("44_ca_configuration_after_rotation.http");
}

#[test]
fn intentions_round_trip() {
    round_trip::<Vec<Intention>>("10_intentions_list_empty.http");
    round_trip::<Vec<Intention>>("12_intentions_list.http");
    round_trip::<Vec<Intention>>("57_intentions_list_after_delete.http");
    round_trip::<Intention>("16_intention_get_by_id.http");
    round_trip::<IntentionMatches>("13_intentions_match_dest_db.http");
    round_trip::<IntentionMatches>("53_intentions_match_source_web.http");
    round_trip::<IntentionCheck>("14_intentions_check_web_db.http");
    round_trip::<IntentionCheck>("52_intentions_check_db_web_default.http");
    round_trip::<IntentionCreated>("11_intention_create_deny.http");
    round_trip::<IntentionCreated>("48_intention_update_allow.http");
}

#[test]
fn intention_times_keep_nanoseconds() {
    let list: Vec<Intention> =
        serde_json::from_str(&Sample::load("12_intentions_list.http").body).unwrap();
    assert_eq!(list[0].created_at.nanosecond(), 665_669_921);
    assert_eq!(
        list[0].parsed_action(),
        Some(consul_connect_types::api::IntentionAction::Deny)
    );
}

#[test]
fn authorize_round_trips() {
    for name in [
        "09_authorize_allow_default.http",
        "15_authorize_deny.http",
        "26_authorize_foreign_trust_domain.http",
        "49_authorize_allow_intention.http",
    ] {
        round_trip::<AuthorizeResponse>(name);
    }
}

#[test]
fn discovery_round_trips() {
    round_trip::<BTreeMap<String, AgentService>>("03_agent_services.http");
    round_trip::<Vec<ServiceEntry>>("17_health_connect_db.http");
    round_trip::<Vec<CatalogService>>("18_catalog_connect_db.http");
}

#[test]
fn agent_self_config_is_read() {
    let s: consul_connect_types::api::AgentSelf =
        serde_json::from_str(&Sample::load("51_agent_self.http").body).unwrap();
    assert_eq!(s.config.datacenter, "dc1");
    assert_eq!(s.config.version, "1.4.5");
}
