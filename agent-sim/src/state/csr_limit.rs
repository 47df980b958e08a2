//! The CA's limits on signing new leaves (Consul 1.4.1+): `CSRMaxPerSecond` (a token bucket
//! with a burst of one, default 50) or, when that is 0, `CSRMaxConcurrent` (a semaphore; 0 =
//! unlimited). A signing that cannot get capacity within 500 ms is refused, and the agent
//! answers 429 `Rate limit reached, try again later`.
//!
//! The bucket runs on the store's clock, so tests drive it with a `ManualClock`; the semaphore
//! waits on tokio's timer, as signing itself takes wall time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a signing may wait for capacity (Consul's `csrLimitWait`).
pub const CSR_LIMIT_WAIT: Duration = Duration::from_millis(500);

/// `CSRMaxPerSecond` when the CA configuration does not set it.
pub const DEFAULT_CSR_MAX_PER_SECOND: f64 = 50.0;

/// The limits a CA configuration sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CsrLimits {
    /// New leaves per second; 0 turns the rate limit off.
    pub max_per_second: f64,
    /// Signings at once, used only when `max_per_second` is 0; 0 = unlimited.
    pub max_concurrent: u64,
}

impl Default for CsrLimits {
    fn default() -> Self {
        Self {
            max_per_second: DEFAULT_CSR_MAX_PER_SECOND,
            max_concurrent: 0,
        }
    }
}

impl CsrLimits {
    /// The limits in a CA `Config` map. Like Consul's weakly typed decoding, numbers may also
    /// be given as strings; a value that is neither keeps the default.
    pub fn from_config(config: &BTreeMap<String, Value>) -> Self {
        let number = |key: &str| {
            config.get(key).and_then(|v| match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
        };
        let defaults = Self::default();
        Self {
            max_per_second: number("CSRMaxPerSecond")
                .filter(|n| n.is_finite() && *n >= 0.0)
                .unwrap_or(defaults.max_per_second),
            max_concurrent: number("CSRMaxConcurrent")
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map_or(defaults.max_concurrent, |n| n as u64),
        }
    }
}

/// A signing refused for lack of capacity: HTTP 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Rate limit reached, try again later")]
pub struct RateLimited;

/// Admission to sign one leaf: wait until `not_before` on the store's clock (at most
/// [`CSR_LIMIT_WAIT`] ahead), and hold `permit` while signing.
#[derive(Debug)]
pub struct Admission {
    /// When the token bucket lets this signing start.
    pub not_before: Option<OffsetDateTime>,
    /// A concurrency slot, released on drop.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The server-wide limiter every leaf signing passes through.
#[derive(Debug, Default)]
pub struct CsrLimiter {
    bucket: Mutex<Bucket>,
    slots: Mutex<Option<(u64, Arc<Semaphore>)>>,
}

/// A token bucket of one token: `next_free` is when the next signing may start.
#[derive(Debug, Default)]
struct Bucket {
    rate: f64,
    next_free: Option<OffsetDateTime>,
}

impl CsrLimiter {
    /// Admits one signing under `limits` at `now`, or refuses it.
    ///
    /// The rate limit reserves the next free slot when it is at most [`CSR_LIMIT_WAIT`] away
    /// (the caller waits until [`Admission::not_before`]); the concurrency limit waits up to
    /// [`CSR_LIMIT_WAIT`] for a slot. A changed rate starts a new, full bucket, as Consul
    /// builds a new limiter when the configuration changes.
    pub async fn admit(
        &self,
        limits: CsrLimits,
        now: OffsetDateTime,
    ) -> Result<Admission, RateLimited> {
        if limits.max_per_second > 0.0 {
            let not_before = self.reserve(limits.max_per_second, now)?;
            return Ok(Admission {
                not_before: Some(not_before),
                permit: None,
            });
        }
        if limits.max_concurrent == 0 {
            return Ok(Admission {
                not_before: None,
                permit: None,
            });
        }
        let slots = self.slots(limits.max_concurrent);
        match tokio::time::timeout(CSR_LIMIT_WAIT, slots.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Admission {
                not_before: None,
                permit: Some(permit),
            }),
            _ => Err(RateLimited),
        }
    }

    fn reserve(&self, rate: f64, now: OffsetDateTime) -> Result<OffsetDateTime, RateLimited> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        if bucket.rate != rate {
            *bucket = Bucket {
                rate,
                next_free: None,
            };
        }
        let start = bucket.next_free.map_or(now, |free| free.max(now));
        if start - now > CSR_LIMIT_WAIT {
            return Err(RateLimited);
        }
        bucket.next_free = Some(start + Duration::from_secs_f64(1.0 / rate));
        Ok(start)
    }

    fn slots(&self, size: u64) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match &*slots {
            Some((n, sem)) if *n == size => sem.clone(),
            _ => {
                // A resized limit starts a new semaphore; signings holding the old one finish.
                let size = usize::try_from(size)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS);
                let sem = Arc::new(Semaphore::new(size));
                *slots = Some((size as u64, sem.clone()));
                sem
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn per_second(n: f64) -> CsrLimits {
        CsrLimits {
            max_per_second: n,
            max_concurrent: 0,
        }
    }

    #[tokio::test]
    async fn one_per_second_admits_one_then_refuses_until_the_next_second() {
        let lim = CsrLimiter::default();
        assert!(lim.admit(per_second(1.0), at(0)).await.is_ok());
        assert_eq!(
            lim.admit(per_second(1.0), at(0)).await.unwrap_err(),
            RateLimited
        );
        assert!(lim.admit(per_second(1.0), at(400)).await.is_err());
        // Within 500 ms of the next slot: admitted, to start at that slot.
        let a = lim.admit(per_second(1.0), at(600)).await.unwrap();
        assert_eq!(a.not_before, Some(at(1000)));
        assert!(lim.admit(per_second(1.0), at(1000)).await.is_err());
        assert!(lim.admit(per_second(1.0), at(2000)).await.is_ok());
    }

    #[tokio::test]
    async fn a_new_rate_starts_a_full_bucket_and_zero_disables() {
        let lim = CsrLimiter::default();
        assert!(lim.admit(per_second(1.0), at(0)).await.is_ok());
        assert!(lim.admit(per_second(2.0), at(0)).await.is_ok());
        for _ in 0..100 {
            let a = lim.admit(
                CsrLimits {
                    max_per_second: 0.0,
                    max_concurrent: 0,
                },
                at(0),
            );
            assert!(a.await.is_ok());
        }
    }

    #[tokio::test]
    async fn concurrency_waits_half_a_second_for_a_slot() {
        let lim = CsrLimiter::default();
        let one = CsrLimits {
            max_per_second: 0.0,
            max_concurrent: 1,
        };
        let held = lim.admit(one, at(0)).await.unwrap();
        assert!(held.permit.is_some());
        assert_eq!(lim.admit(one, at(0)).await.unwrap_err(), RateLimited);
        drop(held);
        assert!(lim.admit(one, at(0)).await.is_ok());
    }

    #[test]
    fn limits_read_from_the_ca_config_with_consul_defaults() {
        assert_eq!(
            CsrLimits::from_config(&BTreeMap::new()),
            CsrLimits::default()
        );
        let config = BTreeMap::from([
            ("CSRMaxPerSecond".to_owned(), Value::from(0)),
            ("CSRMaxConcurrent".to_owned(), Value::from("2")),
        ]);
        assert_eq!(
            CsrLimits::from_config(&config),
            CsrLimits {
                max_per_second: 0.0,
                max_concurrent: 2
            }
        );
    }
}
