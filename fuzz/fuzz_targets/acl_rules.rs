//! Arbitrary text as ACL rules (HCL, or JSON when it starts with `{`): `Policy::parse` must not
//! panic, its errors must format, and a parsed policy feeds `Authorizer::new` under both
//! default policies and as a management token.
//!
//! Beyond "never panics", the authorizer is checked against a brute-force model of Consul's
//! lookup (exact rule, else longest prefix, else default; rules for the same name merged with
//! `deny > write > read`), for every name and prefix the policy mentions and variations of
//! them. Parsing is also checked to be deterministic.
//!
//! Run it with the stack limited to what the agent's tokio workers get (`ulimit -s 2048`, see
//! README.md): agent-sim parses rules from `PUT /v1/acl/policy` bodies on those threads. The
//! control characters U+0001, U+0002 and U+0003 in the input expand to deep nesting (see
//! `AMPLIFY`), so that the fuzzer can probe where the nesting limit is enforced.
#![no_main]

use agent_sim::acl_rules::{Access, Authorizer, DefaultPolicy, NamedRule, Policy, ServiceRule};
use libfuzzer_sys::fuzz_target;

/// Levels of nesting a marker expands to: enough to overflow a 2 MiB stack in this build.
const AMPLIFY: usize = 5_000;

fuzz_target!(|input: &str| {
    // Nesting amplifier: libFuzzer rarely grows thousands of brackets by itself, so the control
    // characters U+0001..U+0003 stand for deep nesting (a list, an HCL block, a JSON object).
    // Wherever the fuzzer places one where the nesting-depth check does not look but the
    // reader does, the parse overflows the stack.
    let amplified;
    let rules = if input.contains(['\u{1}', '\u{2}', '\u{3}']) {
        amplified = input
            .replacen('\u{1}', &"[".repeat(AMPLIFY), 1)
            .replacen('\u{2}', &"a { ".repeat(AMPLIFY), 1)
            .replacen('\u{3}', &r#"{"a":"#.repeat(AMPLIFY), 1);
        amplified.as_str()
    } else {
        input
    };
    let parsed = Policy::parse(rules);
    let policy = match parsed {
        Ok(policy) => policy,
        Err(e) => {
            let _ = e.to_string();
            let _ = format!("{e:?}");
            let line = e.line();
            assert!(line >= 1, "error line {line} for {rules:?}: {e}");
            return;
        }
    };
    assert_eq!(
        Policy::parse(rules).as_ref(),
        Ok(&policy),
        "parse is not deterministic"
    );

    let names = query_names(&policy);
    for default in [DefaultPolicy::Allow, DefaultPolicy::Deny] {
        let authz = Authorizer::new([&policy], default, false);
        let twice = Authorizer::new([&policy, &policy], default, false);
        let root = Authorizer::new([&policy], default, true);
        let def = match default {
            DefaultPolicy::Allow => Access::Write,
            DefaultPolicy::Deny => Access::Deny,
        };
        for name in &names {
            let want = model_service(&policy, name);
            let got = authz.service_access(name);
            assert_eq!(
                got,
                want.map_or(def, |(p, _)| p),
                "service_access({name:?}) for {rules:?}"
            );
            let want_ixn = match want {
                Some((_, Some(i))) => i,
                Some((Access::Deny, None)) => Access::Deny,
                Some((_, None)) => Access::Read,
                None => def,
            };
            assert_eq!(
                authz.intention_access(name),
                want_ixn,
                "intention_access({name:?}) for {rules:?}"
            );
            assert_eq!(
                authz.node_access(name),
                model_named(policy.nodes(), policy.node_prefixes(), name).unwrap_or(def),
                "node_access({name:?})"
            );
            assert_eq!(
                authz.agent_access(name),
                model_named(policy.agents(), policy.agent_prefixes(), name).unwrap_or(def),
                "agent_access({name:?})"
            );
            // Merging a policy with itself changes nothing.
            assert_eq!(twice.service_access(name), got);
            assert_eq!(twice.intention_access(name), authz.intention_access(name));
            assert_eq!(twice.node_access(name), authz.node_access(name));
            assert_eq!(twice.agent_access(name), authz.agent_access(name));
            assert_eq!(root.service_access(name), Access::Write);
            assert!(root.intention_write(name) && root.node_write(name) && root.agent_write(name));
            let _ = (authz.service_read(name), authz.service_write(name));
            let _ = (authz.intention_read(name), authz.intention_write(name));
        }
        assert_eq!(authz.acl_access(), policy.acl().unwrap_or(Access::Deny));
        assert_eq!(authz.operator_access(), policy.operator().unwrap_or(def));
        assert_eq!(
            authz.intention_default_allow(),
            default == DefaultPolicy::Allow
        );
        let _ = (
            authz.acl_read(),
            authz.acl_write(),
            authz.operator_read(),
            authz.operator_write(),
        );
        assert!(root.acl_write() && root.operator_write());
    }
});

/// Names to query: every rule name, its prefixes at character boundaries, extensions, and case
/// variants; plus a few fixed ones.
fn query_names(policy: &Policy) -> Vec<String> {
    let mut base: Vec<&str> = Vec::new();
    base.extend(policy.services().iter().map(ServiceRule::name));
    base.extend(policy.service_prefixes().iter().map(ServiceRule::name));
    for rules in [
        policy.nodes(),
        policy.node_prefixes(),
        policy.agents(),
        policy.agent_prefixes(),
    ] {
        base.extend(rules.iter().map(NamedRule::name));
    }
    let mut names: Vec<String> = vec![String::new(), "web".into(), "db".into(), "*".into()];
    for name in base.into_iter().take(16) {
        names.push(name.to_owned());
        names.push(format!("{name}x"));
        names.push(format!("{name}\u{e9}"));
        names.push(name.to_uppercase());
        for (i, _) in name.char_indices().skip(1).take(8) {
            names.push(name[..i].to_owned());
        }
    }
    names
}

/// Consul's merge precedence: deny > write > read.
fn rank(a: Access) -> u8 {
    match a {
        Access::Deny => 3,
        Access::Write => 2,
        Access::Read => 1,
    }
}

fn merge(cur: Option<Access>, new: Option<Access>) -> Option<Access> {
    match (cur, new) {
        (Some(c), Some(n)) => Some(if rank(n) >= rank(c) { n } else { c }),
        (c, None) => c,
        (None, n) => n,
    }
}

/// (policy, intentions) of the service rule that decides for `name`, if any.
fn model_service(policy: &Policy, name: &str) -> Option<(Access, Option<Access>)> {
    let merged = |rules: &[ServiceRule], key: &str| {
        let mut out: Option<(Access, Option<Access>)> = None;
        for r in rules.iter().filter(|r| r.name() == key) {
            out = Some(match out {
                None => (r.policy(), r.intentions()),
                Some((p, i)) => (
                    merge(Some(p), Some(r.policy())).unwrap_or(p),
                    merge(i, r.intentions()),
                ),
            });
        }
        out
    };
    if let Some(rule) = merged(policy.services(), name) {
        return Some(rule);
    }
    let best = policy
        .service_prefixes()
        .iter()
        .filter(|r| name.starts_with(r.name()))
        .map(|r| r.name().len())
        .max()?;
    let prefix = &name[..best];
    merged(policy.service_prefixes(), prefix)
}

fn model_named(exact: &[NamedRule], prefixes: &[NamedRule], name: &str) -> Option<Access> {
    let merged = |rules: &[NamedRule], key: &str| {
        rules
            .iter()
            .filter(|r| r.name() == key)
            .fold(None, |acc, r| merge(acc, Some(r.policy())))
    };
    if let Some(a) = merged(exact, name) {
        return Some(a);
    }
    let best = prefixes
        .iter()
        .filter(|r| name.starts_with(r.name()))
        .map(|r| r.name().len())
        .max()?;
    merged(prefixes, &name[..best])
}
