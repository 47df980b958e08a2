//! Arbitrary bytes as intention JSON: one `Intention` object, or an array of them (to build a
//! set). Each goes through `validate` (before and after `fill_defaults`), `precedence`, its
//! `Display`, a serde round trip and `IntentionSet::insert`; then the set answers matches and
//! decisions, some intentions are removed, and it answers again.
//!
//! Beyond "never panics", the set is checked against a brute-force model:
//! - insert refuses exactly the case-insensitive duplicates of another ID, and replaces by ID;
//! - `match_destination`/`match_source` return the model's bucket members in evaluation order;
//! - `decide`/`check` equal `decide_matches` over the model's matches;
//! - a deserialized intention serializes, and reads back equal.
#![no_main]

use std::collections::BTreeMap;

use agent_sim::intentions::{fill_defaults, validate, IntentionSet};
use consul_connect::api::Intention;
use consul_connect::intentions::{
    compare_precedence, decide_matches, decide_matches_by_name, precedence, DefaultDecision,
    Wording, WILDCARD,
};

/// The reasons' wording does not change the decisions compared here.
const WORDING: Wording = Wording::Consul1_9;
use consul_connect::spiffe::{ServiceId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ixns: Vec<Intention> = match serde_json::from_slice::<Vec<Intention>>(data) {
        Ok(list) => list,
        Err(_) => match serde_json::from_slice::<Intention>(data) {
            Ok(one) => vec![one],
            Err(_) => return,
        },
    };

    let mut set = IntentionSet::new();
    let mut model: BTreeMap<String, Intention> = BTreeMap::new();

    for mut ixn in ixns.into_iter().take(32) {
        round_trip(&ixn);
        if let Err(e) = validate(&ixn) {
            assert!(!e.errors().is_empty());
            let _ = e.to_string();
        }
        let _ = ixn.to_string();
        fill_defaults(&mut ixn);
        assert_eq!(ixn.precedence, precedence(&ixn));
        assert!(
            (1..=9).contains(&ixn.precedence),
            "precedence {}",
            ixn.precedence
        );
        assert!(ixn.meta.is_some());
        if let Err(e) = validate(&ixn) {
            for err in e.errors() {
                let _ = err.to_string();
            }
            let _ = e.to_string();
        }
        let _ = ixn.to_string();
        let _ = ixn.parsed_action();
        round_trip(&ixn);

        let duplicate_in_model = model
            .values()
            .find(|other| other.id != ixn.id && names(other) == names(&ixn))
            .cloned();
        match set.insert(ixn.clone()) {
            Ok(replaced) => {
                assert!(
                    duplicate_in_model.is_none(),
                    "inserted a duplicate of {duplicate_in_model:?}"
                );
                let previous = model.insert(ixn.id.clone(), ixn.clone());
                assert_eq!(replaced, previous, "insert replaced the wrong intention");
            }
            Err(dup) => {
                let _ = dup.to_string();
                let existing = duplicate_in_model
                    .unwrap_or_else(|| panic!("refused {ixn} as a duplicate of {}", dup.existing));
                assert_eq!(*dup.existing, existing);
            }
        }
        assert_eq!(set.len(), model.len());
        check_queries(&set, &model);
    }

    // Remove every other intention (by model order), then check again; then remove unknown IDs.
    let ids: Vec<String> = model.keys().cloned().collect();
    for id in ids.iter().step_by(2) {
        let removed = set.remove(id);
        assert_eq!(removed, model.remove(id), "remove {id:?}");
        assert!(set.get(id).is_none());
    }
    assert!(set.remove("\u{0}no such id").is_none() || model.contains_key("\u{0}no such id"));
    assert_eq!(set.len(), model.len());
    check_queries(&set, &model);
});

/// A deserialized intention serializes and reads back the same.
fn round_trip(ixn: &Intention) {
    let json = serde_json::to_vec(ixn)
        .unwrap_or_else(|e| panic!("a deserialized intention does not serialize: {e}: {ixn:?}"));
    let back: Intention = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "serialized intention does not read back: {e}: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(&back, ixn, "serde round trip changed the intention");
}

type Names = (String, String, String, String);

fn names(ixn: &Intention) -> Names {
    (
        ixn.source_ns.to_lowercase(),
        ixn.source_name.to_lowercase(),
        ixn.destination_ns.to_lowercase(),
        ixn.destination_name.to_lowercase(),
    )
}

/// The model's answer to `match?by=destination` (or source): the buckets (`*`,`*`), (ns,`*`) and
/// (ns,name) of the lowercased names, in evaluation order.
fn model_matches<'a>(
    model: &'a BTreeMap<String, Intention>,
    ns: &str,
    name: &str,
    by_source: bool,
) -> Vec<&'a Intention> {
    let (ns, name) = (ns.to_lowercase(), name.to_lowercase());
    let mut out: Vec<&Intention> = model
        .values()
        .filter(|ixn| {
            let (ins, iname) = if by_source {
                (ixn.source_ns.to_lowercase(), ixn.source_name.to_lowercase())
            } else {
                (
                    ixn.destination_ns.to_lowercase(),
                    ixn.destination_name.to_lowercase(),
                )
            };
            (ins == WILDCARD && iname == WILDCARD)
                || (ns != WILDCARD && ins == ns && iname == WILDCARD)
                || (ns != WILDCARD && name != WILDCARD && ins == ns && iname == name)
        })
        .collect();
    out.sort_by(|a, b| compare_precedence(a, b));
    out
}

fn check_queries(set: &IntentionSet, model: &BTreeMap<String, Intention>) {
    // Query with every name pair the model mentions, as written and upper-cased, and a few more.
    let mut queries: Vec<(String, String)> = vec![
        ("default".into(), "web".into()),
        ("default".into(), WILDCARD.into()),
        (WILDCARD.into(), WILDCARD.into()),
    ];
    for ixn in model.values().take(8) {
        for (ns, name) in [
            (&ixn.destination_ns, &ixn.destination_name),
            (&ixn.source_ns, &ixn.source_name),
        ] {
            queries.push((ns.clone(), name.clone()));
            queries.push((ns.to_uppercase(), name.to_uppercase()));
        }
    }
    let td = TrustDomain::new("abc.consul").expect("trust domain");

    for (ns, name) in &queries {
        let by_dest = set.match_destination(ns, name);
        let expected = model_matches(model, ns, name, false);
        assert_eq!(by_dest, expected, "match_destination({ns:?}, {name:?})");
        let by_src = set.match_source(ns, name);
        let expected_src = model_matches(model, ns, name, true);
        assert_eq!(by_src, expected_src, "match_source({ns:?}, {name:?})");

        for default in [
            DefaultDecision::AclsDisabled,
            DefaultDecision::AclDefaultAllow,
            DefaultDecision::AclDefaultDeny,
        ] {
            // Sources: every source pair in the model that is a valid SPIFFE service id.
            for src in model.values().take(4) {
                let checked =
                    set.check(&src.source_ns, &src.source_name, ns, name, default, WORDING);
                let want = decide_matches_by_name(
                    expected.iter().copied(),
                    &src.source_ns,
                    &src.source_name,
                    default,
                    WORDING,
                );
                assert_eq!(checked, want, "check({src}) for {ns:?}/{name:?}");
                if let Ok(id) = ServiceId::new(td.clone(), &src.source_ns, "dc1", &src.source_name)
                {
                    let decided = set.decide(&id, ns, name, default, WORDING);
                    let want = decide_matches(expected.iter().copied(), &id, default, WORDING);
                    assert_eq!(decided, want, "decide({id}) for {ns:?}/{name:?}");
                    assert!(decided.examined <= expected.len());
                }
            }
        }
    }

    let sorted = set.all_sorted();
    assert_eq!(sorted.len(), model.len());
    for pair in sorted.windows(2) {
        assert_ne!(
            compare_precedence(pair[0], pair[1]),
            std::cmp::Ordering::Greater,
            "all_sorted out of order"
        );
    }
    for (id, ixn) in model {
        assert_eq!(set.get(id), Some(ixn));
        assert!(set.find_duplicate(ixn).is_none());
    }
}
