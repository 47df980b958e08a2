//! Validity periods: whole seconds in UTC, backdating, calendar years, and what a certificate
//! can encode.

use time::{Date, Duration, Month, OffsetDateTime, UtcOffset};

use super::CaError;

/// How far back a leaf's or a cross-signed certificate's NotBefore is set, as Consul does to
/// absorb clock skew between nodes. Roots are not backdated.
pub const BACKDATE: Duration = Duration::minutes(1);

/// Lifetime of a generated root in calendar years (Go's `AddDate(10, 0, 0)`).
pub const ROOT_VALIDITY_YEARS: i32 = 10;

/// Lifetime of a cross-signed root, counted from its backdated NotBefore. Consul hard-codes this
/// (`effectiveNow.Add(7 * 24 * time.Hour)`; the 1.4.5 sample shows NotAfter = NotBefore + 7 days).
pub const CROSS_SIGNED_VALIDITY: Duration = Duration::days(7);

/// `now` in UTC without its fraction of a second (certificates hold whole seconds), so that
/// NotAfter − NotBefore is exactly the requested lifetime.
pub(super) fn whole_seconds_utc(now: OffsetDateTime) -> Result<OffsetDateTime, CaError> {
    let utc = now
        .checked_to_offset(UtcOffset::UTC)
        .ok_or_else(|| CaError::Validity {
            reason: format!("{now} cannot be expressed in UTC"),
        })?;
    let utc = utc.replace_nanosecond(0).unwrap_or(utc);
    check_encodable(utc)?;
    Ok(utc)
}

/// The validity of a certificate issued at `now` for `ttl`: backdated as Consul backdates,
/// ending `ttl` later, encodable. `what` names the certificate in errors.
pub(super) fn validity(
    now: OffsetDateTime,
    ttl: std::time::Duration,
    what: &str,
) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    let ttl = Duration::try_from(ttl)
        .ok()
        .filter(|ttl| ttl.is_positive())
        .ok_or_else(|| CaError::Validity {
            reason: format!("{what} TTL {ttl:?} must be positive and representable"),
        })?;
    let not_before = backdated(now)?;
    let not_after = not_before
        .checked_add(ttl)
        .ok_or_else(|| CaError::Validity {
            reason: format!("{not_before} + {ttl} is out of range"),
        })?;
    check_encodable(not_after)?;
    Ok((not_before, not_after))
}

pub(super) fn backdated(now: OffsetDateTime) -> Result<OffsetDateTime, CaError> {
    let now = whole_seconds_utc(now)?;
    let not_before = now.checked_sub(BACKDATE).ok_or_else(|| CaError::Validity {
        reason: format!("{now} - {BACKDATE} is out of range"),
    })?;
    check_encodable(not_before)?;
    Ok(not_before)
}

/// Adds calendar years as Go's `AddDate(years, 0, 0)`: 29 February becomes 1 March in a
/// non-leap target year.
pub(super) fn add_calendar_years(t: OffsetDateTime, years: i32) -> Option<OffsetDateTime> {
    let year = t.year().checked_add(years)?;
    t.replace_year(year).ok().or_else(|| {
        let march_first = Date::from_calendar_date(year, Month::March, 1).ok()?;
        Some(t.replace_date(march_first))
    })
}

/// Certificates hold years 0–9999 (GeneralizedTime); rcgen would panic beyond.
pub(super) fn check_encodable(t: OffsetDateTime) -> Result<(), CaError> {
    if (0..=9999).contains(&t.year()) {
        Ok(())
    } else {
        Err(CaError::Validity {
            reason: format!("{t} cannot be written in a certificate"),
        })
    }
}
