//! Injectable time, so expiry, renewal and rotation are tested without waiting.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

/// A source of the current time.
///
/// Certificate validity, leaf renewal and intention timestamps read this clock; socket and
/// blocking-query timeouts use tokio's timer.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> OffsetDateTime;

    /// A receiver that changes whenever the clock jumps (a [`ManualClock`] advanced by a
    /// test). The system clock never jumps, so its receiver never changes.
    fn jumps(&self) -> watch::Receiver<()>;
}

/// The wall clock.
#[derive(Debug)]
pub struct SystemClock {
    never: watch::Sender<()>,
}

impl SystemClock {
    /// The wall clock.
    pub fn new() -> Self {
        Self {
            never: watch::channel(()).0,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn jumps(&self) -> watch::Receiver<()> {
        self.never.subscribe()
    }
}

/// A clock that only moves when told to.
///
/// ```
/// use agent_sim::clock::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(time::OffsetDateTime::UNIX_EPOCH);
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now().unix_timestamp(), 60);
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
    jumped: watch::Sender<()>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(start),
            jumped: watch::channel(()).0,
        }
    }

    /// Moves the clock forward and wakes everything waiting on a deadline.
    pub fn advance(&self, by: Duration) {
        {
            let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
            *now += by;
        }
        self.jumped.send_replace(());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn jumps(&self) -> watch::Receiver<()> {
        self.jumped.subscribe()
    }
}
