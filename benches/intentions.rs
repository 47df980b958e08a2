//! Deciding one (source, destination) pair as the number of intentions grows.
//!
//! Every size gives the target destination the same buckets (eight exact sources, one
//! `default/*` and one `*/*` intention), so the only thing that grows is the number of other
//! intentions; the time per decision should stay flat.
//!
//! Run: `cargo bench --bench intentions` (add `-- --quick` for a fast pass).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use agent_sim::intentions::{fill_defaults, IntentionSet};
use consul_connect::api::Intention;
use consul_connect::intentions::DefaultDecision;
use consul_connect::spiffe::ServiceId;
use criterion::{criterion_main, BenchmarkId, Criterion};

/// Exact sources per destination: with the two wildcard intentions, `svc-0` has ten candidates
/// at every size, including the smallest (8 + 2 = 10 intentions).
const SOURCES_PER_DESTINATION: usize = 8;

fn intention(id: String, source: String, destination_ns: &str, destination: String) -> Intention {
    let mut ixn = Intention {
        id,
        source_ns: "default".to_owned(),
        source_name: source,
        destination_ns: destination_ns.to_owned(),
        destination_name: destination,
        source_type: "consul".to_owned(),
        action: "deny".to_owned(),
        meta: Some(BTreeMap::new()),
        create_index: 1,
        modify_index: 1,
        ..Intention::default()
    };
    fill_defaults(&mut ixn);
    ixn
}

/// `total` intentions: destinations with eight exact sources each, and the two wildcard
/// intentions that every destination in `default` sees.
fn build(total: usize) -> IntentionSet {
    let mut set = IntentionSet::new();
    let mut add = |ixn: Intention| {
        set.insert(ixn)
            .unwrap_or_else(|e| panic!("generated intentions are unique: {e}"));
    };
    for i in 0..total.saturating_sub(2) {
        let (source, destination) = (i % SOURCES_PER_DESTINATION, i / SOURCES_PER_DESTINATION);
        add(intention(
            format!("x-{source}-{destination}"),
            format!("src-{source}"),
            "default",
            format!("svc-{destination}"),
        ));
    }
    add(intention(
        "ns-wild".into(),
        "ops".into(),
        "default",
        "*".into(),
    ));
    add(intention(
        "all-wild".into(),
        "audit".into(),
        "*",
        "*".into(),
    ));
    set
}

fn decide(c: &mut Criterion) {
    let client: ServiceId =
        "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/src-7"
            .parse()
            .unwrap_or_else(|e| panic!("a valid service URI: {e}"));
    let stranger: ServiceId =
        "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/nobody"
            .parse()
            .unwrap_or_else(|e| panic!("a valid service URI: {e}"));

    let mut group = c.benchmark_group("intentions/decide");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for total in [10, 1_000, 100_000] {
        let set = build(total);
        // Matches the last of the destination's exact intentions.
        group.bench_with_input(BenchmarkId::new("match", total), &set, |b, set| {
            b.iter(|| {
                set.decide(
                    black_box(&client),
                    "default",
                    black_box("svc-0"),
                    DefaultDecision::AclDefaultDeny,
                    consul_connect_types::intentions::Wording::Consul1_9,
                )
            })
        });
        // Matches nothing: walks all 10 candidates, then the ACL default decides.
        group.bench_with_input(BenchmarkId::new("default", total), &set, |b, set| {
            b.iter(|| {
                set.decide(
                    black_box(&stranger),
                    "default",
                    black_box("svc-0"),
                    DefaultDecision::AclDefaultDeny,
                    consul_connect_types::intentions::Wording::Consul1_9,
                )
            })
        });
    }
    group.finish();
}

/// Private, so the function `criterion_group!` generates needs no doc comment.
mod group {
    criterion::criterion_group!(benches, super::decide);
}
criterion_main!(group::benches);
