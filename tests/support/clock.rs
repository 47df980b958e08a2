//! A clock for the SDK that tests set by hand, so expiry is tested without waiting.

use std::sync::{Arc, Mutex};

use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;
use time::OffsetDateTime;

use super::certs::unix;

/// A [`TimeProvider`] that stands still until told otherwise.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: OffsetDateTime) -> Arc<Self> {
        Arc::new(Self(Mutex::new(at)))
    }

    /// Shows `at` from now on.
    pub fn set(&self, at: OffsetDateTime) {
        *self.0.lock().unwrap() = at;
    }

    /// What the clock shows.
    pub fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

impl TimeProvider for ManualClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(unix(self.now()))
    }
}
