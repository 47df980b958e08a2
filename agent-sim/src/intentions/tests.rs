// A failed unwrap is a failed test, which is what a test should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use super::*;
use consul_connect_types::intentions::sort_by_precedence;
use consul_connect_types::spiffe::TrustDomain;

const TD: &str = "678277b4-c121-fe15-9eff-637834838f87.consul";
const SAMPLE_ID: &str = "5887dc37-28b6-ab1e-5d8b-e5fa4499b42d";

const OFF: DefaultDecision = DefaultDecision::AclsDisabled;
const ACL_ALLOW: DefaultDecision = DefaultDecision::AclDefaultAllow;
const ACL_DENY: DefaultDecision = DefaultDecision::AclDefaultDeny;

/// An intention from `ns/name` pairs, with its precedence set.
fn ixn(id: &str, src: &str, dst: &str, action: &str) -> Intention {
    let (source_ns, source_name) = src.split_once('/').unwrap();
    let (destination_ns, destination_name) = dst.split_once('/').unwrap();
    let mut ixn = Intention {
        id: id.to_owned(),
        source_ns: source_ns.to_owned(),
        source_name: source_name.to_owned(),
        destination_ns: destination_ns.to_owned(),
        destination_name: destination_name.to_owned(),
        source_type: "consul".to_owned(),
        action: action.to_owned(),
        meta: Some(BTreeMap::new()),
        create_index: 1,
        modify_index: 1,
        ..Intention::default()
    };
    ixn.precedence = precedence(&ixn);
    ixn
}

/// `"id: src_ns/src -> dst_ns/dst action"`.
fn spec(s: &str) -> Intention {
    let (id, rest) = s.split_once(": ").unwrap();
    match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
        [src, "->", dst, action] => ixn(id, src, dst, action),
        other => panic!("bad spec {other:?}"),
    }
}

fn client(ns: &str, name: &str) -> ServiceId {
    ServiceId::new(TrustDomain::new(TD).unwrap(), ns, "dc1", name).unwrap()
}

fn set_of(specs: &[&str]) -> IntentionSet {
    let mut set = IntentionSet::new();
    for s in specs {
        set.insert(spec(s)).unwrap();
    }
    set
}

fn ids<'a>(list: impl IntoIterator<Item = &'a Intention>) -> Vec<&'a str> {
    list.into_iter().map(|i| i.id.as_str()).collect()
}

/// The body of a captured `curl -i` response.
fn sample_body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").unwrap().1
}

// -- decision table ------------------------------------------------------------------------

struct Case {
    name: &'static str,
    ixns: &'static [&'static str],
    source: &'static str,
    target: &'static str,
    default: DefaultDecision,
    allowed: bool,
    matched: Option<&'static str>,
    reason: &'static str,
}

const LADDER: &[&str] = &[
    "p9: default/web -> default/db deny",
    "p8: default/* -> default/db allow",
    "p7: */* -> default/db deny",
    "p6: default/web -> default/* allow",
    "p5: default/* -> default/* deny",
    "p4: */* -> default/* allow",
    "p3: default/web -> */* deny",
    "p2: default/* -> */* allow",
    "p1: */* -> */* deny",
];

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { name: "no intentions, ACLs disabled", ixns: &[],
        source: "default/web", target: "default/db", default: OFF,
        allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
    Case { name: "no intentions, ACL default deny", ixns: &[],
        source: "default/web", target: "default/db", default: ACL_DENY,
        allowed: false, matched: None, reason: "Default behavior configured by ACLs" },
    Case { name: "no intentions, ACL default allow", ixns: &[],
        source: "default/web", target: "default/db", default: ACL_ALLOW,
        allowed: true, matched: None, reason: "Default behavior configured by ACLs" },
    Case { name: "exact deny", ixns: &["a: default/web -> default/db deny"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: false, matched: Some("a"),
        reason: "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)" },
    Case { name: "exact allow beats ACL default deny", ixns: &["a: default/web -> default/db allow"],
        source: "default/web", target: "default/db", default: ACL_DENY,
        allowed: true, matched: Some("a"),
        reason: "Matched intention: ALLOW default/web => default/db (ID: a, Precedence: 9)" },
    Case { name: "exact allow does not cover another source", ixns: &["a: default/web -> default/db allow"],
        source: "default/api", target: "default/db", default: ACL_DENY,
        allowed: false, matched: None, reason: "Default behavior configured by ACLs" },
    Case { name: "exact deny (9) beats */* allow (1)",
        ixns: &["a: default/web -> default/db deny", "b: */* -> */* allow"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: false, matched: Some("a"),
        reason: "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)" },
    Case { name: "*/* allow (1) covers other clients",
        ixns: &["a: default/web -> default/db deny", "b: */* -> */* allow"],
        source: "default/api", target: "default/db", default: ACL_DENY,
        allowed: true, matched: Some("b"),
        reason: "Matched intention: ALLOW */* => */* (ID: b, Precedence: 1)" },
    Case { name: "exact deny (9) beats ns/* allow (8)",
        ixns: &["a: default/web -> default/db deny", "b: default/* -> default/db allow"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: false, matched: Some("a"),
        reason: "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)" },
    Case { name: "ns/* allow (8) covers the rest of the namespace",
        ixns: &["a: default/web -> default/db deny", "b: default/* -> default/db allow"],
        source: "default/api", target: "default/db", default: ACL_DENY,
        allowed: true, matched: Some("b"),
        reason: "Matched intention: ALLOW default/* => default/db (ID: b, Precedence: 8)" },
    Case { name: "exact allow (9) beats ns/* deny (8)",
        ixns: &["a: default/web -> default/db allow", "b: default/* -> default/db deny"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: true, matched: Some("a"),
        reason: "Matched intention: ALLOW default/web => default/db (ID: a, Precedence: 9)" },
    Case { name: "ns/* deny (8) for the others",
        ixns: &["a: default/web -> default/db allow", "b: default/* -> default/db deny"],
        source: "default/api", target: "default/db", default: ACL_ALLOW,
        allowed: false, matched: Some("b"),
        reason: "Matched intention: DENY default/* => default/db (ID: b, Precedence: 8)" },
    Case { name: "* -> db allow (7) beats web -> * deny (6)",
        ixns: &["a: */* -> default/db allow", "b: default/web -> default/* deny"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: true, matched: Some("a"),
        reason: "Matched intention: ALLOW */* => default/db (ID: a, Precedence: 7)" },
    Case { name: "web -> * deny (6) for another destination",
        ixns: &["a: */* -> default/db allow", "b: default/web -> default/* deny"],
        source: "default/web", target: "default/cache", default: OFF,
        allowed: false, matched: Some("b"),
        reason: "Matched intention: DENY default/web => default/* (ID: b, Precedence: 6)" },
    Case { name: "no match falls to ACL default deny",
        ixns: &["a: */* -> default/db allow", "b: default/web -> default/* deny"],
        source: "default/api", target: "default/cache", default: ACL_DENY,
        allowed: false, matched: None, reason: "Default behavior configured by ACLs" },
    Case { name: "no match falls to ACLs disabled",
        ixns: &["a: */* -> default/db allow", "b: default/web -> default/* deny"],
        source: "default/api", target: "default/cache", default: OFF,
        allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
    Case { name: "ns/* -> db allow (8) beats web -> * deny (6)",
        ixns: &["a: default/* -> default/db allow", "b: default/web -> default/* deny"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: true, matched: Some("a"),
        reason: "Matched intention: ALLOW default/* => default/db (ID: a, Precedence: 8)" },
    Case { name: "web -> * allow (6) beats ns/* -> * deny (5)",
        ixns: &["a: default/web -> default/* allow", "b: default/* -> default/* deny"],
        source: "default/web", target: "default/cache", default: ACL_DENY,
        allowed: true, matched: Some("a"),
        reason: "Matched intention: ALLOW default/web => default/* (ID: a, Precedence: 6)" },
    Case { name: "ns/* -> * deny (5) for the others",
        ixns: &["a: default/web -> default/* allow", "b: default/* -> default/* deny"],
        source: "default/api", target: "default/cache", default: ACL_ALLOW,
        allowed: false, matched: Some("b"),
        reason: "Matched intention: DENY default/* => default/* (ID: b, Precedence: 5)" },
    Case { name: "*/* -> ns/* allow (4) beats ns/* -> */* deny (2)",
        ixns: &["a: */* -> default/* allow", "b: default/* -> */* deny"],
        source: "default/web", target: "default/cache", default: OFF,
        allowed: true, matched: Some("a"),
        reason: "Matched intention: ALLOW */* => default/* (ID: a, Precedence: 4)" },
    Case { name: "*/* -> db allow (7) beats web -> */* deny (3)",
        ixns: &["a: default/web -> */* deny", "b: */* -> default/db allow"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: true, matched: Some("b"),
        reason: "Matched intention: ALLOW */* => default/db (ID: b, Precedence: 7)" },
    Case { name: "web -> */* deny (3) elsewhere",
        ixns: &["a: default/web -> */* deny", "b: */* -> default/db allow"],
        source: "default/web", target: "default/cache", default: OFF,
        allowed: false, matched: Some("a"),
        reason: "Matched intention: DENY default/web => */* (ID: a, Precedence: 3)" },
    Case { name: "*/* deny (1) beats ACL default allow", ixns: &["a: */* -> */* deny"],
        source: "default/web", target: "default/db", default: ACL_ALLOW,
        allowed: false, matched: Some("a"),
        reason: "Matched intention: DENY */* => */* (ID: a, Precedence: 1)" },
    // The full ladder: each shape decides exactly when every shape above it misses.
    Case { name: "ladder 9", ixns: LADDER, source: "default/web", target: "default/db", default: OFF,
        allowed: false, matched: Some("p9"),
        reason: "Matched intention: DENY default/web => default/db (ID: p9, Precedence: 9)" },
    Case { name: "ladder 8", ixns: LADDER, source: "default/api", target: "default/db", default: OFF,
        allowed: true, matched: Some("p8"),
        reason: "Matched intention: ALLOW default/* => default/db (ID: p8, Precedence: 8)" },
    Case { name: "ladder 7", ixns: LADDER, source: "other/web", target: "default/db", default: OFF,
        allowed: false, matched: Some("p7"),
        reason: "Matched intention: DENY */* => default/db (ID: p7, Precedence: 7)" },
    Case { name: "ladder 6", ixns: LADDER, source: "default/web", target: "default/cache", default: OFF,
        allowed: true, matched: Some("p6"),
        reason: "Matched intention: ALLOW default/web => default/* (ID: p6, Precedence: 6)" },
    Case { name: "ladder 5", ixns: LADDER, source: "default/api", target: "default/cache", default: OFF,
        allowed: false, matched: Some("p5"),
        reason: "Matched intention: DENY default/* => default/* (ID: p5, Precedence: 5)" },
    Case { name: "ladder 4", ixns: LADDER, source: "other/api", target: "default/cache", default: ACL_DENY,
        allowed: true, matched: Some("p4"),
        reason: "Matched intention: ALLOW */* => default/* (ID: p4, Precedence: 4)" },
    Case { name: "ladder 3", ixns: LADDER, source: "default/web", target: "other/db", default: OFF,
        allowed: false, matched: Some("p3"),
        reason: "Matched intention: DENY default/web => */* (ID: p3, Precedence: 3)" },
    Case { name: "ladder 2", ixns: LADDER, source: "default/api", target: "other/db", default: ACL_DENY,
        allowed: true, matched: Some("p2"),
        reason: "Matched intention: ALLOW default/* => */* (ID: p2, Precedence: 2)" },
    Case { name: "ladder 1", ixns: LADDER, source: "other/api", target: "other/db", default: ACL_ALLOW,
        allowed: false, matched: Some("p1"),
        reason: "Matched intention: DENY */* => */* (ID: p1, Precedence: 1)" },
    // Case: destination lookups ignore case, source comparison does not (#16244).
    Case { name: "mixed-case intention destination matches", ixns: &["a: default/web -> default/DB deny"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: false, matched: Some("a"),
        reason: "Matched intention: DENY default/web => default/DB (ID: a, Precedence: 9)" },
    Case { name: "mixed-case target matches", ixns: &["a: default/web -> default/db deny"],
        source: "default/web", target: "default/Db", default: OFF,
        allowed: false, matched: Some("a"),
        reason: "Matched intention: DENY default/web => default/db (ID: a, Precedence: 9)" },
    Case { name: "mixed-case target namespace matches", ixns: &["a: default/web -> default/* deny"],
        source: "default/web", target: "DEFAULT/db", default: OFF,
        allowed: false, matched: Some("a"),
        reason: "Matched intention: DENY default/web => default/* (ID: a, Precedence: 6)" },
    Case { name: "mixed-case intention source does not match", ixns: &["a: default/Web -> default/db deny"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
    Case { name: "mixed-case client does not match", ixns: &["a: default/web -> default/db deny"],
        source: "default/Web", target: "default/db", default: OFF,
        allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
    Case { name: "mixed-case source namespace does not match", ixns: &["a: Default/web -> default/db deny"],
        source: "default/web", target: "default/db", default: ACL_ALLOW,
        allowed: true, matched: None, reason: "Default behavior configured by ACLs" },
    Case { name: "other source namespace does not match", ixns: &["a: other/web -> default/db allow"],
        source: "default/web", target: "default/db", default: ACL_DENY,
        allowed: false, matched: None, reason: "Default behavior configured by ACLs" },
    Case { name: "intentions for other destinations do not apply",
        ixns: &["a: default/web -> default/cache deny", "b: default/web -> other/* deny",
                "c: default/web -> other/db deny"],
        source: "default/web", target: "default/db", default: OFF,
        allowed: true, matched: None, reason: "ACLs disabled, access is allowed by default" },
    Case { name: "target namespace selects the buckets",
        ixns: &["a: default/web -> default/db allow", "c: default/web -> other/db deny"],
        source: "default/web", target: "other/db", default: OFF,
        allowed: false, matched: Some("c"),
        reason: "Matched intention: DENY default/web => other/db (ID: c, Precedence: 9)" },
];

#[test]
fn decision_table() {
    assert!(CASES.len() >= 30, "{} cases", CASES.len());
    for case in CASES {
        let (src_ns, src_name) = case.source.split_once('/').unwrap();
        let (dst_ns, dst_name) = case.target.split_once('/').unwrap();
        let source = client(src_ns, src_name);
        // Insertion order must not matter.
        for reversed in [false, true] {
            let mut specs = case.ixns.to_vec();
            if reversed {
                specs.reverse();
            }
            let set = set_of(&specs);
            let what = format!("{} (reversed: {reversed})", case.name);

            let d = set.decide(&source, dst_ns, dst_name, case.default, Wording::Consul1_4);
            assert_eq!(d.allowed, case.allowed, "{what}: allowed");
            assert_eq!(d.matched.as_deref(), case.matched, "{what}: matched");
            assert_eq!(d.reason, case.reason, "{what}: reason");

            // The SDK path: the agent's match list, decided by the free function.
            let list: Vec<Intention> = set
                .match_destination(dst_ns, dst_name)
                .into_iter()
                .cloned()
                .collect();
            assert_eq!(
                decide_matches(&list, &source, case.default, Wording::Consul1_4),
                d,
                "{what}: sdk"
            );

            // `/intentions/check` gives the same answer by names.
            let checked = set.check(
                src_ns,
                src_name,
                dst_ns,
                dst_name,
                case.default,
                Wording::Consul1_4,
            );
            assert_eq!(checked, d, "{what}: check");
        }
    }
}

#[test]
fn trust_domain_and_datacenter_are_ignored() {
    let set = set_of(&["a: default/web -> default/db deny"]);
    let foreign: ServiceId = "spiffe://other-cluster.consul/ns/default/dc/dc9/svc/web"
        .parse()
        .unwrap();
    let d = set.decide(&foreign, "default", "db", OFF, Wording::Consul1_4);
    assert!(!d.allowed);
    assert_eq!(d.matched.as_deref(), Some("a"));
}

// -- precedence, order, display ------------------------------------------------------------

#[test]
fn sort_is_precedence_then_source_then_destination() {
    let mut list = vec![
        spec("1: b/a -> a/a allow"),
        spec("2: a/b -> a/a allow"),
        spec("3: a/a -> b/a allow"),
        spec("4: a/a -> a/b allow"),
        spec("5: a/a -> a/a allow"),
        spec("6: a/* -> a/a allow"),
        spec("7: */* -> */* allow"),
        spec("8: A/a -> a/a allow"),
        spec("9: a/* -> */* allow"),
    ];
    list.reverse();
    sort_by_precedence(&mut list);
    // 'A' < 'a' by bytes; the source decides before the destination ("3" before "1").
    assert_eq!(ids(&list), ["8", "5", "4", "3", "2", "1", "6", "9", "7"]);

    // "8" is "5" up to case, so a set (which refuses duplicates) holds the rest.
    let mut set = IntentionSet::new();
    for i in list.iter().rev().filter(|i| i.id != "8") {
        set.insert(i.clone()).unwrap();
    }
    assert_eq!(
        ids(set.all_sorted()),
        ["5", "4", "3", "2", "1", "6", "9", "7"]
    );
    assert_eq!(
        ids(set.match_destination("a", "a")),
        ["5", "2", "1", "6", "9", "7"]
    );
    assert_eq!(compare_precedence(&list[0], &list[0]), Ordering::Equal);
}

// -- validation ----------------------------------------------------------------------------

fn valid() -> Intention {
    ixn("", "default/web", "default/db", "allow")
}

fn messages(ixn: &Intention) -> Vec<String> {
    match validate(ixn) {
        Ok(()) => Vec::new(),
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn valid_intentions_pass() {
    for (src, dst) in [
        ("default/web", "default/db"),
        ("default/*", "default/db"),
        ("*/*", "*/*"),
        ("default/web", "*/*"),
    ] {
        assert_eq!(
            validate(&ixn("", src, dst, "deny")),
            Ok(()),
            "{src} -> {dst}"
        );
    }
    let mut edge = valid();
    edge.description = "d".repeat(512);
    edge.meta = Some(
        (0..64)
            .map(|i| (format!("{i:0>128}"), "v".repeat(512)))
            .collect(),
    );
    assert_eq!(validate(&edge), Ok(()));
}

#[test]
fn every_message() {
    type Mutate = fn(&mut Intention);
    let long_key = "k".repeat(129);
    let cases: Vec<(Mutate, String)> = vec![
        (|i| i.source_ns.clear(), "SourceNS must be set".into()),
        (|i| i.source_name.clear(), "SourceName must be set".into()),
        (
            |i| i.destination_ns.clear(),
            "DestinationNS must be set".into(),
        ),
        (
            |i| i.destination_name.clear(),
            "DestinationName must be set".into(),
        ),
        (
            |i| i.source_ns = "def*".into(),
            "SourceNS: wildcard character '*' cannot be used with partial values".into(),
        ),
        (
            |i| i.source_name = "*web".into(),
            "SourceName: wildcard character '*' cannot be used with partial values".into(),
        ),
        (
            |i| i.destination_ns = "**".into(),
            "DestinationNS: wildcard character '*' cannot be used with partial values".into(),
        ),
        (
            |i| i.destination_name = "d*b".into(),
            "DestinationName: wildcard character '*' cannot be used with partial values".into(),
        ),
        (
            |i| i.source_ns = "*".into(),
            "SourceName: exact value cannot follow wildcard namespace".into(),
        ),
        (
            |i| i.destination_ns = "*".into(),
            "DestinationName: exact value cannot follow wildcard namespace".into(),
        ),
        (
            |i| i.description = "d".repeat(513),
            "Description exceeds maximum length 512".into(),
        ),
        (
            |i| i.meta = Some((0..65).map(|n| (n.to_string(), String::new())).collect()),
            "Meta exceeds maximum element count 64".into(),
        ),
        (
            |i| i.meta = Some([("k".repeat(129), "v".into())].into()),
            format!("Meta key \"{long_key}\" exceeds maximum length 128"),
        ),
        (
            |i| i.meta = Some([("key".into(), "v".repeat(513))].into()),
            "Meta value for key \"key\" exceeds maximum length 512".into(),
        ),
        (
            |i| i.action = "Allow".into(),
            "Action must be set to 'allow' or 'deny'".into(),
        ),
        (
            |i| i.action.clear(),
            "Action must be set to 'allow' or 'deny'".into(),
        ),
        (
            |i| i.source_type = "CONSUL".into(),
            "SourceType must be set to 'consul'".into(),
        ),
    ];
    for (mutate, expected) in cases {
        let mut i = valid();
        mutate(&mut i);
        assert_eq!(messages(&i), std::slice::from_ref(&expected), "{expected}");
    }
}

#[test]
fn errors_accumulate_in_consuls_order() {
    let mut i = valid();
    i.source_ns = "*".into();
    i.source_name = "we*b".into();
    i.destination_ns = "de*".into();
    i.destination_name.clear();
    i.description = "d".repeat(600);
    let mut meta: BTreeMap<String, String> = (0..63)
        .map(|n| (format!("m{n:02}"), String::new()))
        .collect();
    meta.insert("b".repeat(129), "v".repeat(513));
    meta.insert("a".into(), "v".repeat(513));
    i.meta = Some(meta);
    i.action = "maybe".into();
    i.source_type = "external".into();

    let err = validate(&i).unwrap_err();
    use IntentionField::*;
    assert_eq!(
        err.errors(),
        [
            ValidationError::Missing(DestinationName),
            ValidationError::PartialWildcard(SourceName),
            ValidationError::ExactAfterWildcardNamespace(SourceName),
            ValidationError::PartialWildcard(DestinationNs),
            ValidationError::DescriptionTooLong,
            ValidationError::TooManyMeta,
            ValidationError::MetaValueTooLong { key: "a".into() },
            ValidationError::MetaKeyTooLong {
                key: "b".repeat(129)
            },
            ValidationError::MetaValueTooLong {
                key: "b".repeat(129)
            },
            ValidationError::InvalidAction,
            ValidationError::InvalidSourceType,
        ]
    );
    let b = "b".repeat(129);
    assert_eq!(
        err.to_string(),
        format!(
            "11 error(s) occurred:\n\n\
             * DestinationName must be set\n\
             * SourceName: wildcard character '*' cannot be used with partial values\n\
             * SourceName: exact value cannot follow wildcard namespace\n\
             * DestinationNS: wildcard character '*' cannot be used with partial values\n\
             * Description exceeds maximum length 512\n\
             * Meta exceeds maximum element count 64\n\
             * Meta value for key \"a\" exceeds maximum length 512\n\
             * Meta key \"{b}\" exceeds maximum length 128\n\
             * Meta value for key \"{b}\" exceeds maximum length 512\n\
             * Action must be set to 'allow' or 'deny'\n\
             * SourceType must be set to 'consul'"
        )
    );
}

#[test]
fn empty_names_report_in_field_order() {
    let mut i = valid();
    i.source_ns.clear();
    i.source_name.clear();
    i.destination_ns.clear();
    i.destination_name.clear();
    assert_eq!(
        messages(&i),
        [
            "SourceNS must be set",
            "SourceName must be set",
            "DestinationNS must be set",
            "DestinationName must be set"
        ]
    );
    // An empty name under the wildcard namespace is also an "exact" value, as in Go.
    i.source_ns = "*".into();
    assert_eq!(
        messages(&i),
        [
            "SourceName must be set",
            "DestinationNS must be set",
            "DestinationName must be set",
            "SourceName: exact value cannot follow wildcard namespace"
        ]
    );
}

#[test]
fn multierror_display_equals_sample_21() {
    let raw = include_str!("../../../tests/data/consul-1.4.5/21_bad_intention_unknown_action.http");
    let mut i: Intention =
        serde_json::from_str(r#"{"SourceName":"web","DestinationName":"db","Action":"bogus"}"#)
            .unwrap();
    fill_defaults(&mut i);
    let err = validate(&i).unwrap_err();
    assert_eq!(err.to_string(), sample_body(raw));
    assert_eq!(
        err.to_string(),
        "1 error(s) occurred:\n\n* Action must be set to 'allow' or 'deny'"
    );
}

#[test]
fn multierror_display_equals_sample_38() {
    let raw = include_str!("../../../tests/data/consul-1.4.5/38_bad_intention_missing_names.http");
    let mut i: Intention = serde_json::from_str(r#"{"Action":"allow"}"#).unwrap();
    fill_defaults(&mut i);
    let err = validate(&i).unwrap_err();
    assert_eq!(err.to_string(), sample_body(raw));
    assert_eq!(
        err.to_string(),
        "2 error(s) occurred:\n\n* SourceName must be set\n* DestinationName must be set"
    );
}

#[test]
fn fill_defaults_as_the_server() {
    let mut i: Intention =
        serde_json::from_str(r#"{"SourceName":"web","DestinationName":"*","Action":"deny"}"#)
            .unwrap();
    assert_eq!((i.precedence, i.meta.is_none()), (0, true));
    fill_defaults(&mut i);
    assert_eq!(i.source_type, "consul");
    assert_eq!(i.source_ns, "default");
    assert_eq!(i.destination_ns, "default");
    assert_eq!(i.precedence, 6);
    assert_eq!(i.meta, Some(BTreeMap::new()));
    assert_eq!(validate(&i), Ok(()));

    // Given values are kept.
    let mut j = ixn("", "*/*", "other/db", "allow");
    j.source_type = "nope".into();
    fill_defaults(&mut j);
    assert_eq!(
        (j.source_ns.as_str(), j.destination_ns.as_str()),
        ("*", "other")
    );
    assert_eq!(j.source_type, "nope");
}

#[test]
fn go_quoting_of_meta_keys() {
    assert_eq!(go_quote("plain"), r#""plain""#);
    assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(
        go_quote("\n\t\r\u{7}\u{8}\u{b}\u{c}"),
        r#""\n\t\r\a\b\v\f""#
    );
    assert_eq!(go_quote("\u{0}\u{1f}\u{7f}"), r#""\x00\x1f\x7f""#);
    assert_eq!(go_quote("\u{85}é"), "\"\\u0085é\"");
    let err = ValidationError::MetaKeyTooLong { key: "a\"b".into() };
    assert_eq!(
        err.to_string(),
        r#"Meta key "a\"b" exceeds maximum length 128"#
    );
}

// -- IntentionSet --------------------------------------------------------------------------

#[test]
fn insert_get_remove() {
    let mut set = IntentionSet::new();
    assert!(set.is_empty());
    let mut i = ixn("a", "default/web", "default/db", "deny");
    i.precedence = 0; // recomputed on insert
    assert_eq!(set.insert(i).unwrap(), None);
    assert_eq!(set.len(), 1);
    assert_eq!(set.get("a").unwrap().precedence, 9);
    assert!(set.get("b").is_none());
    assert_eq!(set.iter().count(), 1);
    let removed = set.remove("a").unwrap();
    assert_eq!(removed.id, "a");
    assert!(set.is_empty());
    assert!(set.remove("a").is_none());
    assert!(
        set.by_destination.buckets.is_empty(),
        "empty buckets are dropped"
    );
    assert!(set.by_source.buckets.is_empty());
    assert!(set.by_names.is_empty());
}

#[test]
fn a_removed_deny_no_longer_decides() {
    let mut set = set_of(&["a: default/web -> default/db deny", "b: */* -> */* allow"]);
    let web = client("default", "web");
    assert_eq!(
        set.decide(&web, "default", "db", ACL_DENY, Wording::Consul1_4)
            .matched
            .as_deref(),
        Some("a")
    );
    set.remove("a").unwrap();
    let d = set.decide(&web, "default", "db", ACL_DENY, Wording::Consul1_4);
    assert!(d.allowed);
    assert_eq!(d.matched.as_deref(), Some("b"));
    set.remove("b").unwrap();
    let d = set.decide(&web, "default", "db", ACL_DENY, Wording::Consul1_4);
    assert_eq!((d.allowed, d.matched), (false, None));
}

#[test]
fn a_replaced_intention_moves_buckets() {
    let mut set = set_of(&[
        "a: default/web -> default/db deny",
        "z: default/api -> default/db allow",
    ]);
    let web = client("default", "web");
    let old = set
        .insert(spec("a: default/web -> default/cache deny"))
        .unwrap()
        .unwrap();
    assert_eq!(old.destination_name, "db");
    assert_eq!(set.len(), 2);

    assert_eq!(ids(set.match_destination("default", "db")), ["z"]);
    assert_eq!(ids(set.match_destination("default", "cache")), ["a"]);
    assert_eq!(
        set.decide(&web, "default", "db", OFF, Wording::Consul1_4)
            .matched,
        None
    );
    assert_eq!(
        set.decide(&web, "default", "cache", OFF, Wording::Consul1_4)
            .matched
            .as_deref(),
        Some("a")
    );

    // Source side too.
    set.insert(spec("a: default/cron -> default/cache deny"))
        .unwrap();
    assert!(set.match_source("default", "web").is_empty());
    assert_eq!(ids(set.match_source("default", "cron")), ["a"]);
    assert!(!set.by_source.buckets["default"].contains_key("web"));

    // A change of action only: the new action decides.
    set.insert(spec("a: default/cron -> default/cache allow"))
        .unwrap();
    let d = set.decide(
        &client("default", "cron"),
        "default",
        "cache",
        ACL_DENY,
        Wording::Consul1_4,
    );
    assert!(d.allowed);
    assert_eq!(set.len(), 2);
}

#[test]
fn duplicates_are_found_case_insensitively() {
    let mut set = set_of(&["a: default/web -> default/db deny"]);
    let dup = spec("b: DEFAULT/Web -> default/DB allow");
    assert_eq!(set.find_duplicate(&dup).map(|i| i.id.as_str()), Some("a"));
    let err = set.insert(dup.clone()).unwrap_err();
    assert_eq!(err.existing.id, "a");
    assert_eq!(
        err.to_string(),
        "duplicate intention found: DENY default/web => default/db (ID: a, Precedence: 9)"
    );
    assert_eq!(set.len(), 1);
    assert!(set.get("b").is_none());
    assert_eq!(ids(set.match_destination("default", "db")), ["a"]);

    // The same ID is an update, not a duplicate, even with other letter case.
    assert!(set
        .find_duplicate(&spec("a: default/WEB -> default/db deny"))
        .is_none());
    set.insert(spec("a: default/WEB -> default/db deny"))
        .unwrap();
    assert_eq!(set.find_duplicate(&dup).map(|i| i.id.as_str()), Some("a"));

    // An update of another intention onto taken names is refused and changes nothing.
    set.insert(spec("c: default/api -> default/db allow"))
        .unwrap();
    assert!(set
        .insert(spec("c: default/web -> default/db allow"))
        .is_err());
    assert_eq!(set.get("c").unwrap().source_name, "api");
    assert_eq!(ids(set.match_source("default", "api")), ["c"]);

    // Once the original is gone, the names are free.
    set.remove("a").unwrap();
    assert!(set.insert(dup).is_ok());
}

#[test]
fn duplicate_message_equals_sample_30() {
    let raw = include_str!("../../../tests/data/consul-1.4.5/30_bad_intention_duplicate.http");
    let set = set_of(&[&format!("{SAMPLE_ID}: default/web -> default/db deny")]);
    let err = set
        .clone()
        .insert(spec("new: default/web -> default/db deny"))
        .unwrap_err();
    assert_eq!(err.to_string(), sample_body(raw));
}

#[test]
fn match_uses_consuls_buckets() {
    let set = set_of(&[
        "1: default/web -> default/db deny",
        "2: default/* -> default/db allow",
        "3: */* -> default/db deny",
        "4: default/web -> default/* allow",
        "5: */* -> */* allow",
        "6: default/web -> other/db deny",
        "7: other/* -> other/* deny",
    ]);
    assert_eq!(
        ids(set.match_destination("default", "db")),
        ["1", "2", "3", "4", "5"]
    );
    assert_eq!(
        ids(set.match_destination("Default", "DB")),
        ["1", "2", "3", "4", "5"]
    );
    assert_eq!(ids(set.match_destination("default", "*")), ["4", "5"]);
    assert_eq!(ids(set.match_destination("*", "db")), ["5"]);
    assert_eq!(ids(set.match_destination("other", "db")), ["6", "7", "5"]);
    assert_eq!(ids(set.match_destination("nowhere", "db")), ["5"]);

    assert_eq!(
        ids(set.match_source("default", "web")),
        ["1", "6", "2", "3", "4", "5"]
    );
    assert_eq!(
        ids(set.match_source("default", "WEB")),
        ["1", "6", "2", "3", "4", "5"]
    );
    assert_eq!(ids(set.match_source("default", "*")), ["2", "3", "5"]);
    assert_eq!(ids(set.match_source("other", "x")), ["3", "7", "5"]);
    assert_eq!(ids(set.match_source("*", "*")), ["3", "5"]);
}

/// The index against a brute-force filter and sort, over many generated sets.
#[test]
fn index_agrees_with_brute_force() {
    const NS: [&str; 4] = ["default", "Default", "other", "*"];
    const NAMES: [&str; 5] = ["web", "Web", "db", "DB", "*"];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..40 {
        let mut set = IntentionSet::new();
        let mut all: Vec<Intention> = Vec::new();
        for k in 0..60 {
            let src = format!("{}/{}", NS[next(4)], NAMES[next(5)]);
            let dst = format!("{}/{}", NS[next(4)], NAMES[next(5)]);
            let action = ["allow", "deny"][next(2)];
            let i = ixn(&format!("{round}-{k}"), &src, &dst, action);
            if validate(&i).is_err() {
                continue;
            }
            if set.insert(i.clone()).is_ok() {
                all.push(i);
            }
            if next(5) == 0 {
                // Remove a random earlier one now and then.
                let victim = all.swap_remove(next(all.len()));
                set.remove(&victim.id).unwrap();
            }
        }
        assert_eq!(set.len(), all.len());
        for ns in NS {
            for name in NAMES {
                let (lns, lname) = (ns.to_lowercase(), name.to_lowercase());
                let covers = |qns: &str, qname: &str| {
                    let (qns, qname) = (qns.to_lowercase(), qname.to_lowercase());
                    (qns == "*" && qname == "*")
                        || (ns != "*" && qns == lns && qname == "*")
                        || (ns != "*" && name != "*" && qns == lns && qname == lname)
                };
                let mut expect: Vec<&Intention> = all
                    .iter()
                    .filter(|i| covers(&i.destination_ns, &i.destination_name))
                    .collect();
                expect.sort_by(|a, b| compare_precedence(a, b));
                assert_eq!(set.match_destination(ns, name), expect, "dst {ns}/{name}");

                let mut expect: Vec<&Intention> = all
                    .iter()
                    .filter(|i| covers(&i.source_ns, &i.source_name))
                    .collect();
                expect.sort_by(|a, b| compare_precedence(a, b));
                assert_eq!(set.match_source(ns, name), expect, "src {ns}/{name}");
            }
        }
        let mut sorted = all.clone();
        sort_by_precedence(&mut sorted);
        assert_eq!(set.all_sorted(), sorted.iter().collect::<Vec<_>>());
    }
}

// -- scale ---------------------------------------------------------------------------------

/// The intentions that concern `default/svc-42`: its own bucket (10), three in
/// (`default`,`*`) and two in (`*`,`*`).
fn relevant_to_svc_42() -> Vec<Intention> {
    let mut v: Vec<Intention> = (0..10)
        .map(|s| {
            ixn(
                &format!("x-{s}-42"),
                &format!("default/src-{s}"),
                "default/svc-42",
                "deny",
            )
        })
        .collect();
    v.extend((0..3).map(|k| {
        ixn(
            &format!("w{k}"),
            &format!("default/w-{k}"),
            "default/*",
            "deny",
        )
    }));
    v.extend((0..2).map(|k| ixn(&format!("s{k}"), &format!("default/s-{k}"), "*/*", "allow")));
    v
}

#[test]
fn decision_cost_does_not_grow_with_the_set() {
    let mut big = IntentionSet::new();
    for i in 0..100_000u32 {
        let (src, dst) = (i / 10_000, i % 10_000);
        let spec = ixn(
            &format!("x-{src}-{dst}"),
            &format!("default/src-{src}"),
            &format!("default/svc-{dst}"),
            "deny",
        );
        big.insert(spec).unwrap();
    }
    for extra in relevant_to_svc_42().into_iter().skip(10) {
        big.insert(extra).unwrap();
    }
    assert_eq!(big.len(), 100_005);

    let mut small = IntentionSet::new();
    for i in relevant_to_svc_42() {
        small.insert(i).unwrap();
    }

    let nobody = client("default", "nobody");
    let d_big = big.decide(&nobody, "default", "svc-42", ACL_DENY, Wording::Consul1_4);
    let d_small = small.decide(&nobody, "default", "svc-42", ACL_DENY, Wording::Consul1_4);
    // No source matches "nobody", so every candidate is examined: exactly the 15 in the
    // destination's three buckets, out of 100,005.
    assert_eq!(d_big.matched, None);
    assert_eq!(d_big.examined, 15);
    assert_eq!(d_big, d_small);
    assert_eq!(big.match_destination("default", "svc-42").len(), 15);

    // A matching client stops at its intention.
    let d = big.decide(
        &client("default", "src-7"),
        "default",
        "svc-42",
        ACL_ALLOW,
        Wording::Consul1_4,
    );
    assert_eq!(d.matched.as_deref(), Some("x-7-42"));
    assert!(!d.allowed);
    assert!(d.examined <= 15);
    assert_eq!(
        d,
        small.decide(
            &client("default", "src-7"),
            "default",
            "svc-42",
            ACL_ALLOW,
            Wording::Consul1_4
        )
    );

    // By source as well: src-3 has 10,000 intentions, but a source outside the set
    // only sees the wildcard-source buckets (none here).
    assert!(big.match_source("default", "nobody").is_empty());
    assert_eq!(big.match_source("default", "src-3").len(), 10_000);
}
