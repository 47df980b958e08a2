//! Go-compatible text helpers: what Consul's messages and durations look like, written here as
//! plain functions so that both the SDK and agent-sim produce and read the same text.

/// Go's `%q` for a string: double quotes, with `"` and `\` escaped, control characters as
/// `\n`, `\t`, ..., `\x1f`, `\u0085`; other characters as they are. (Go also escapes a few
/// non-printable Unicode ranges beyond the controls; meta keys in practice never hold them.)
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Why [`parse_duration`] refused a string; `Display` is Go's `time.ParseDuration` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not a duration at all, negative, or larger than Go's `time.Duration` holds.
    #[error("time: invalid duration {}", go_quote(.0))]
    Invalid(String),
    /// A number without a unit (`10`).
    #[error("time: missing unit in duration {}", go_quote(.0))]
    MissingUnit(String),
    /// A unit Go does not know (`5x`).
    #[error("time: unknown unit {} in duration {}", go_quote(.unit), go_quote(.input))]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole input.
        input: String,
    },
}

/// Go's `time.Duration` limit: 2^63 - 1 nanoseconds (about 292 years).
const MAX_NANOS: u64 = i64::MAX as u64;

/// Parses a duration exactly as Go's `time.ParseDuration` does (`72h`, `1m30s`, `1.5h`,
/// `500ms`): a sequence of decimal numbers, each with a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`,
/// `m`, `h`). Integer arithmetic as in Go, so a fraction below a nanosecond truncates (`0.6ns`
/// is zero) and anything over 2^63 - 1 ns is refused. A lone `0` is zero. Negative durations,
/// which Go accepts, are refused: nothing Consul reads this way may be negative.
///
/// ```
/// use consul_connect_types::go::parse_duration;
/// use std::time::Duration;
///
/// assert_eq!(parse_duration("1m30s")?, Duration::from_secs(90));
/// assert_eq!(parse_duration("1.5h")?, Duration::from_secs(5400));
/// assert_eq!(parse_duration("0.6ns")?, Duration::ZERO);
/// assert_eq!(
///     parse_duration("10").unwrap_err().to_string(),
///     r#"time: missing unit in duration "10""#
/// );
/// assert!(parse_duration("2562048h").is_err());
/// # Ok::<(), consul_connect_types::go::DurationError>(())
/// ```
///
/// # Errors
///
/// [`DurationError`] with Go's message.
pub fn parse_duration(input: &str) -> Result<std::time::Duration, DurationError> {
    let invalid = || DurationError::Invalid(input.to_owned());
    let mut s = input;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return Err(invalid());
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s.starts_with('.') || s.starts_with(|c: char| c.is_ascii_digit())) {
            return Err(invalid());
        }
        let (whole, rest) = split_digits(s);
        let whole_digits = s.len() - rest.len();
        let mut value = leading_int(whole).ok_or_else(invalid)?;
        s = rest;
        // The fraction, kept as digits over a power of ten; digits past u64 precision are
        // dropped, as Go's leadingFraction does.
        let (mut frac, mut scale, mut frac_digits) = (0u64, 1f64, 0usize);
        if let Some(rest) = s.strip_prefix('.') {
            let (digits, rest) = split_digits(rest);
            frac_digits = digits.len();
            let mut overflow = false;
            for d in digits.bytes() {
                if overflow {
                    continue;
                }
                match frac
                    .checked_mul(10)
                    .and_then(|f| f.checked_add(u64::from(d - b'0')))
                {
                    Some(f) if f <= MAX_NANOS => {
                        frac = f;
                        scale *= 10.0;
                    }
                    _ => overflow = true,
                }
            }
            s = rest;
        }
        if whole_digits == 0 && frac_digits == 0 {
            return Err(invalid()); // "." or ".s"
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_owned()));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let per_unit: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_owned(),
                    input: input.to_owned(),
                })
            }
        };
        if value > MAX_NANOS / per_unit {
            return Err(invalid());
        }
        value *= per_unit;
        if frac > 0 {
            // Go: v += uint64(float64(f) * (float64(unit) / scale)), truncating.
            value += (frac as f64 * (per_unit as f64 / scale)) as u64;
            if value > MAX_NANOS {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(invalid)?;
    }
    Ok(std::time::Duration::from_nanos(total))
}

/// Formats a whole number of seconds the short way Consul's configuration shows durations:
/// `72h`, `90m`, `45s`.
///
/// ```
/// use consul_connect_types::go::format_duration_short;
/// use std::time::Duration;
///
/// assert_eq!(format_duration_short(Duration::from_secs(72 * 3600)), "72h");
/// assert_eq!(format_duration_short(Duration::from_secs(90 * 60)), "90m");
/// ```
pub fn format_duration_short(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Splits off the leading ASCII digits.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// The value of a run of digits (zero when empty), or `None` past 2^63 - 1, as Go's
/// `leadingInt`.
fn leading_int(digits: &str) -> Option<u64> {
    digits.bytes().try_fold(0u64, |v, d| {
        v.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .filter(|v| *v <= MAX_NANOS)
    })
}

#[cfg(test)]
mod tests;
