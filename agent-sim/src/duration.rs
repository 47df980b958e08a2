//! Go duration strings (`72h`, `1m30s`, `500ms`), as Consul reads them.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time: invalid duration {0:?}")]
pub struct InvalidDuration(pub String);

/// Parses a Go duration: a sequence of decimal numbers, each with a unit (`ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`). A lone `0` is zero; negative durations are refused.
///
/// ```
/// use agent_sim::duration::parse;
/// use std::time::Duration;
/// assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
/// assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
/// assert!(parse("10").is_err());
/// ```
pub fn parse(s: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration(s.to_owned());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(invalid()),
        };
        total += value * nanos_per_unit;
        rest = next;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("72h", 72 * 3600 * 1000),
            ("5m", 300_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("2s", 2000),
            ("0", 0),
            ("1.5s", 1500),
            ("100us", 0),
        ];
        for (input, millis) in cases {
            assert_eq!(parse(input).unwrap().as_millis(), millis, "{input}");
        }
    }

    #[test]
    fn refuses_bad_durations() {
        for input in ["", "10", "h", "5x", "-5s", "1..5s", "s5", " 5s"] {
            assert!(parse(input).is_err(), "{input:?}");
        }
    }
}
