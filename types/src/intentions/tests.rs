// A failed unwrap is a failed test, which is what a test should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::api::AuthorizeResponse;

const SAMPLE_ID: &str = "5887dc37-28b6-ab1e-5d8b-e5fa4499b42d";

const OFF: DefaultDecision = DefaultDecision::AclsDisabled;
const ACL_ALLOW: DefaultDecision = DefaultDecision::AclDefaultAllow;
const ACL_DENY: DefaultDecision = DefaultDecision::AclDefaultDeny;

/// An intention from `ns/name` pairs, read from JSON as an agent sends it, with its precedence
/// computed.
fn ixn(id: &str, src: &str, dst: &str, action: &str) -> Intention {
    let (source_ns, source_name) = src.split_once('/').unwrap();
    let (destination_ns, destination_name) = dst.split_once('/').unwrap();
    let mut ixn: Intention = serde_json::from_value(serde_json::json!({
        "ID": id, "SourceNS": source_ns, "SourceName": source_name,
        "DestinationNS": destination_ns, "DestinationName": destination_name,
        "SourceType": "consul", "Action": action,
    }))
    .unwrap();
    ixn.precedence = precedence(&ixn);
    ixn
}

fn client(ns: &str, name: &str) -> ServiceId {
    format!("spiffe://678277b4-c121-fe15-9eff-637834838f87.consul/ns/{ns}/dc/dc1/svc/{name}")
        .parse()
        .unwrap()
}

/// The body of a captured `curl -i` response.
fn sample_body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").unwrap().1
}

#[test]
fn non_allow_action_denies_like_go() {
    // Go authorizes with `Action == "allow"`; an unvalidated action never allows.
    let list = vec![ixn("a", "default/web", "default/db", "ALLOW")];
    let d = decide_matches(
        &list,
        &client("default", "web"),
        ACL_ALLOW,
        Wording::Consul1_4,
    );
    assert!(!d.allowed);
    assert_eq!(d.matched.as_deref(), Some("a"));
}

#[test]
fn reasons_equal_the_captured_authorize_answers() {
    let web = client("default", "web");
    for (raw, action) in [
        (
            include_str!("../../../tests/data/consul-1.4.5/15_authorize_deny.http"),
            "deny",
        ),
        (
            include_str!("../../../tests/data/consul-1.4.5/49_authorize_allow_intention.http"),
            "allow",
        ),
    ] {
        let captured: AuthorizeResponse = serde_json::from_str(sample_body(raw)).unwrap();
        let list = vec![ixn(SAMPLE_ID, "default/web", "default/db", action)];
        let d = decide_matches(&list, &web, OFF, Wording::Consul1_4);
        assert_eq!(d.allowed, captured.authorized);
        assert_eq!(d.reason, captured.reason);
    }
}

#[test]
fn default_decisions() {
    assert!(OFF.allowed() && ACL_ALLOW.allowed() && !ACL_DENY.allowed());
    assert_eq!(OFF.reason(), "ACLs disabled, access is allowed by default");
    assert_eq!(ACL_ALLOW.reason(), "Default behavior configured by ACLs");
    assert_eq!(ACL_DENY.reason(), "Default behavior configured by ACLs");
    let d = decide_matches(&[], &client("default", "web"), ACL_DENY, Wording::Consul1_9);
    assert_eq!((d.allowed, d.matched, d.examined), (false, None, 0));
}

#[test]
fn precedence_of_all_nine_shapes() {
    let dests = [("default/db", 9), ("default/*", 6), ("*/*", 3)];
    let sources = [("default/web", 0), ("default/*", 1), ("*/*", 2)];
    let mut seen = Vec::new();
    for (dst, max) in dests {
        for (src, drop) in sources {
            let p = precedence(&ixn("x", src, dst, "allow"));
            assert_eq!(p, max - drop, "{src} -> {dst}");
            seen.push(p);
        }
    }
    assert_eq!(seen, [9, 8, 7, 6, 5, 4, 3, 2, 1]);
    // Precedence looks at the shape only, not at the letters.
    assert_eq!(precedence(&ixn("x", "Other/Web", "Default/DB", "deny")), 9);
}

#[test]
fn display_is_consuls_string() {
    let mut i = ixn(SAMPLE_ID, "default/web", "default/db", "deny");
    assert_eq!(
        i.to_string(),
        "DENY default/web => default/db (ID: 5887dc37-28b6-ab1e-5d8b-e5fa4499b42d, Precedence: 9)"
    );
    i.action = "allow".into();
    i.precedence = 3; // the stored field is shown, as Go does
    assert_eq!(
        i.to_string(),
        "ALLOW default/web => default/db (ID: 5887dc37-28b6-ab1e-5d8b-e5fa4499b42d, Precedence: 3)"
    );
}

#[test]
fn modern_reasons_equal_the_captured_1_10_answers() {
    let web = client("default", "web");
    // 15: a legacy (UUID) intention; m17: a config entry's, which has no ID.
    for (raw, id) in [
        (
            include_str!("../../../tests/data/consul-1.10.9/15_authorize_deny.http"),
            "03171e54-b449-e76c-3d09-aedae4c6a4e3",
        ),
        (
            include_str!("../../../tests/data/consul-1.10.9/m17_authorize_l4_deny_config.http"),
            "",
        ),
    ] {
        let captured: AuthorizeResponse = serde_json::from_str(sample_body(raw)).unwrap();
        let list = vec![ixn(id, "default/web", "default/db", "deny")];
        let d = decide_matches(&list, &web, OFF, Wording::Consul1_9);
        assert_eq!(d.allowed, captured.authorized);
        assert_eq!(d.reason, captured.reason);
    }
}

#[test]
fn an_l7_intention_never_admits_an_l4_connection() {
    let raw = include_str!("../../../tests/data/consul-1.10.9/m36_authorize_l7_intention.http");
    let captured: AuthorizeResponse = serde_json::from_str(sample_body(raw)).unwrap();
    let mut l7 = ixn("", "default/web", "default/api", "");
    l7.permissions = Some(serde_json::from_str(
        r#"[{"Action":"allow","HTTP":{"PathPrefix":"/v1"}},{"Action":"deny","HTTP":{"PathExact":"/admin"}}]"#,
    ).unwrap());
    let d = decide_matches(&[l7], &client("default", "web"), OFF, Wording::Consul1_9);
    assert!(!captured.authorized && !d.allowed);
    assert_eq!(d.reason, captured.reason);
}

#[test]
fn a_peer_source_never_matches_a_local_client() {
    let mut peered = ixn("a", "default/web", "default/db", "deny");
    peered.source_peer = Some("other-cluster".into());
    let d = decide_matches(
        &[peered],
        &client("default", "web"),
        ACL_ALLOW,
        Wording::Consul1_9,
    );
    assert!(d.allowed);
    assert_eq!(d.matched, None);
}

#[test]
fn a_source_partition_must_be_the_callers() {
    let mut eu = ixn("p", "default/web", "default/db", "allow");
    eu.source_partition = Some("eu".into());
    let default_web = client("default", "web");
    let eu_web: ServiceId =
        "spiffe://678277b4-c121-fe15-9eff-637834838f87.consul/ap/eu/ns/default/dc/dc1/svc/web"
            .parse()
            .unwrap();
    // An allow for eu's web does not admit the default partition's web, and the reverse.
    let d = decide_matches([&eu], &default_web, ACL_DENY, Wording::Consul1_9);
    assert_eq!((d.allowed, d.matched), (false, None));
    let d = decide_matches([&eu], &eu_web, ACL_DENY, Wording::Consul1_9);
    assert!(d.allowed);
    let plain = ixn("q", "default/web", "default/db", "allow");
    let d = decide_matches([&plain], &eu_web, ACL_DENY, Wording::Consul1_9);
    assert_eq!((d.allowed, d.matched), (false, None));
    for empty in [None, Some(String::new()), Some("default".to_owned())] {
        let mut i = plain.clone();
        i.source_partition = empty;
        assert!(decide_matches([&i], &default_web, ACL_DENY, Wording::Consul1_9).allowed);
    }
}
