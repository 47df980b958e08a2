//! Inputs the fuzz targets in `fuzz/` (or probing around them) turned up, replayed through the
//! normal test suite. See `fuzz/README.md` for the targets and how each input was found.
//!
//! A test marked `#[ignore = "fuzz bug: ..."]` reproduces a bug that is not fixed yet; remove
//! the attribute together with the fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_sim::acl_rules::Policy;

/// The stack of a tokio worker thread, on which agent-sim parses the rules of
/// `PUT /v1/acl/policy` bodies.
const WORKER_STACK: usize = 2 * 1024 * 1024;

/// agent-sim's request body limit (`http::MAX_BODY_BYTES`): a client can send this much.
const MAX_BODY_BYTES: usize = 512 * 1024;

/// Parses `rules` on a thread with a tokio worker's stack. A stack overflow aborts the whole
/// test process (it is not a panic), which is why these tests live in their own binary.
fn parse_on_worker_stack(rules: String) -> Result<(), String> {
    assert!(rules.len() <= MAX_BODY_BYTES, "{} bytes", rules.len());
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || Policy::parse(&rules).map(drop).map_err(|e| e.to_string()))
        .expect("spawn")
        .join()
        .expect("no panic")
}

// ---------------------------------------------------------------------------------------------
// acl_rules: unbounded recursion in the HCL and JSON readers.

#[test]
fn acl_rules_deep_hcl_list_does_not_overflow_the_stack() {
    let depth = 100_000;
    let rules = format!("service = {}{}", "[".repeat(depth), "]".repeat(depth));
    // Any answer will do, as long as there is one: Consul's hcl rejects the shape anyway.
    let _ = parse_on_worker_stack(rules);
}

#[test]
fn acl_rules_deep_hcl_object_does_not_overflow_the_stack() {
    let depth = 100_000;
    let rules = format!("service {}{{}}{}", "{ a ".repeat(depth), "}".repeat(depth));
    let _ = parse_on_worker_stack(rules);
}

#[test]
fn acl_rules_deep_json_object_does_not_overflow_the_stack() {
    let depth = 80_000;
    let rules = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let _ = parse_on_worker_stack(rules);
}

#[test]
fn acl_rules_deep_json_array_does_not_overflow_the_stack() {
    let depth = 200_000;
    let rules = format!(
        r#"{{"service":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let _ = parse_on_worker_stack(rules);
}

/// `flatten_json` clones the accumulated keys at every level of a chain of single-member
/// objects: quadratic in the depth. 4,000 levels (20 KB) take seconds; with a depth limit (or
/// keys shared instead of cloned) it is instant. Run on a big stack so that only time is
/// measured, not the overflow above.
#[test]
fn acl_rules_deep_json_chain_parses_in_linear_time() {
    let depth = 4_000;
    let rules = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let started = std::time::Instant::now();
    std::thread::Builder::new()
        .stack_size(256 * 1024 * 1024)
        .spawn(move || drop(Policy::parse(&rules)))
        .expect("spawn")
        .join()
        .expect("no panic");
    // Generous: a linear parse of 20 KB takes well under a millisecond even unoptimized.
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_millis(500),
        "{elapsed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// acl_rules: the nesting limit (`check_nesting`, d064052) is a pre-scan with its own idea of
// strings and comments. Wherever the HCL scanner disagrees, brackets the pre-scan does not see
// still reach the recursive reader. Each input below hides `[` × 100,000 (200 KB, under the
// body limit) from the pre-scan; the fuzz target found them by placing its nesting marker
// (U+0001, see fuzz/fuzz_targets/acl_rules.rs) there.

/// `[` × 100,000 after `prefix`: with the limit enforced where the reader nests, any prefix is
/// refused (or parsed) without overflowing.
fn hidden_nesting(prefix: &str) -> String {
    format!("{prefix}{}", "[".repeat(100_000))
}

#[test]
fn acl_rules_nesting_limit_sees_past_an_unterminated_string() {
    // hcl ends an unterminated string at the newline and scans on; the pre-scan keeps skipping
    // to the next `"`, of which there is none.
    let rules = hidden_nesting("a = [ \"x\n, ");
    assert!(parse_on_worker_stack(rules).is_err());
}

#[test]
fn acl_rules_nesting_limit_sees_past_a_quote_in_a_heredoc() {
    // A heredoc body is literal text; the pre-scan takes its `"` for the start of a string.
    let rules = hidden_nesting("a = <<EOF\n\"\nEOF\nb = ");
    assert!(parse_on_worker_stack(rules).is_err());
}

#[test]
fn acl_rules_nesting_limit_sees_past_a_comment_opener_in_a_heredoc() {
    let rules = hidden_nesting("a = <<EOF\n/*\nEOF\nb = ");
    assert!(parse_on_worker_stack(rules).is_err());
}

#[test]
fn acl_rules_nesting_limit_sees_past_a_quote_in_an_interpolation() {
    // Inside `${…}` hcl keeps `"` as text; the pre-scan ends the string there, then takes the
    // real closing quote for the start of another string that never ends.
    let rules = hidden_nesting("a = \"${\"}\"\nb = ");
    assert!(parse_on_worker_stack(rules).is_err());
}

/// A minimized crash of `fuzz/fuzz_targets/acl_rules.rs`, with its nesting markers expanded as
/// the target does (U+0001 → `[`, U+0002 → `a { `), 100,000 times each.
fn acl_rules_fuzz_input(name: &str) -> String {
    let path = format!(
        "{}/tests/data/fuzz/acl_rules/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let input = std::fs::read_to_string(&path).expect("fuzz input");
    input
        .replacen('\u{1}', &"[".repeat(100_000), 1)
        .replacen('\u{2}', &"a { ".repeat(100_000), 1)
}

#[test]
fn acl_rules_fuzz_unterminated_string_then_block() {
    // "\"\n\u{2}": the fuzzer's minimized crash (every one of its 22 crashes minimized to it).
    let rules = acl_rules_fuzz_input("unterminated-string-then-block");
    assert!(parse_on_worker_stack(rules).is_err());
}

#[test]
fn acl_rules_fuzz_unterminated_string_then_list() {
    // "\"\n=\u{1}"
    let rules = acl_rules_fuzz_input("unterminated-string-then-list");
    assert!(parse_on_worker_stack(rules).is_err());
}
