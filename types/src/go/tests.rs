// A failed unwrap is a failed test, which is what a test should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::time::Duration;

#[test]
fn parses_as_go_does() {
    let cases = [
        ("72h", Duration::from_secs(72 * 3600)),
        ("5m", Duration::from_secs(300)),
        ("500ms", Duration::from_millis(500)),
        ("1h30m", Duration::from_secs(5400)),
        ("0", Duration::ZERO),
        ("+2s", Duration::from_secs(2)),
        ("1.5s", Duration::from_millis(1500)),
        ("1.s", Duration::from_secs(1)),
        (".5s", Duration::from_millis(500)),
        ("100us", Duration::from_micros(100)),
        ("3µs", Duration::from_micros(3)),
        ("3μs", Duration::from_micros(3)),
        ("7ns", Duration::from_nanos(7)),
        // Integer arithmetic: below a nanosecond truncates, as in Go.
        ("0.6ns", Duration::ZERO),
        ("1.9ns", Duration::from_nanos(1)),
        ("0.3333333333s", Duration::from_nanos(333_333_333)),
        // The largest Go duration.
        (
            "2562047h47m16.854775807s",
            Duration::from_nanos(i64::MAX as u64),
        ),
        (
            "9223372036854775807ns",
            Duration::from_nanos(i64::MAX as u64),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(parse_duration(input), Ok(want), "{input}");
    }
}

#[test]
fn refuses_with_gos_messages() {
    let cases = [
        ("", r#"time: invalid duration """#),
        ("h", r#"time: invalid duration "h""#),
        ("1..5s", r#"time: missing unit in duration "1..5s""#),
        (".s", r#"time: invalid duration ".s""#),
        (" 5s", r#"time: invalid duration " 5s""#),
        ("-5s", r#"time: invalid duration "-5s""#),
        ("2562048h", r#"time: invalid duration "2562048h""#),
        (
            "9223372036854775808ns",
            r#"time: invalid duration "9223372036854775808ns""#,
        ),
        (
            "2562047h47m16.854775808s",
            r#"time: invalid duration "2562047h47m16.854775808s""#,
        ),
        ("10", r#"time: missing unit in duration "10""#),
        ("1s2", r#"time: missing unit in duration "1s2""#),
        ("5x", r#"time: unknown unit "x" in duration "5x""#),
        ("5 s", r#"time: unknown unit " s" in duration "5 s""#),
    ];
    for (input, message) in cases {
        let err = parse_duration(input).unwrap_err();
        assert_eq!(err.to_string(), message, "{input:?}");
    }
}

#[test]
fn quotes_as_go_does() {
    assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(
        go_quote("\n\t\u{1}\u{7f}\u{85}é"),
        "\"\\n\\t\\x01\\x7f\\u0085é\""
    );
}
