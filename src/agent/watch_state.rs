//! The rules of a blocking-query watch as a state machine without I/O, as quinn-proto is under
//! quinn: [`run_watch`](super::run_watch) is the tokio glue that sends the queries, sleeps the
//! pauses and stops; everything it decides comes from here and is unit-tested without a
//! runtime.
//!
//! The rules: block on the last index seen; report an answer only when its index moved (or
//! after a reset); start over at index 0 when the index goes backwards (the agent's state was
//! reset) or after a failure; back off exponentially with jitter on failures, and keep the
//! error count until a *blocking* read succeeds (a non-blocking read may be answered from the
//! agent's cache while its servers still fail, issue #16); poll at `poll_interval` an endpoint
//! that sends no index, and never ask faster than `min_interval`.

use std::time::Duration;

use super::{QueryOptions, WatchConfig};

/// Where a watch stands: the index to block on and the failures since the last healthy read.
#[derive(Debug, Clone)]
pub struct WatchState {
    config: WatchConfig,
    index: u64,
    errors: u32,
}

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterAnswer {
    /// Whether to report the answer (its index moved, or the watch had started over).
    pub report: bool,
    /// How long to wait before the next query.
    pub pause: Duration,
}

impl WatchState {
    /// A watch that has seen nothing yet.
    pub fn new(config: WatchConfig) -> Self {
        Self {
            config,
            index: 0,
            errors: 0,
        }
    }

    /// The next query: blocking on the last index seen, non-blocking at index 0.
    pub fn next_query(&self) -> QueryOptions {
        QueryOptions {
            index: self.index,
            wait: Some(self.config.wait),
            datacenter: None,
        }
    }

    /// The index the next query blocks on (0: none).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Failures since the last healthy read.
    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// An answer carrying `answer_index` (`X-Consul-Index`, 0 when absent) arrived `elapsed`
    /// after its query was sent.
    pub fn on_answer(&mut self, answer_index: u64, elapsed: Duration) -> AfterAnswer {
        let blocking = self.index > 0;
        // Only a blocking read proves the agent healthy again; an endpoint that sends no index
        // never blocks, so any answer from it counts.
        if blocking || answer_index == 0 {
            self.errors = 0;
        }
        let report = answer_index != self.index || self.index == 0;
        self.index = if answer_index < self.index {
            0
        } else {
            answer_index.max(1)
        };
        let interval = if answer_index == 0 {
            self.config.poll_interval
        } else {
            self.config.min_interval
        };
        AfterAnswer {
            report,
            pause: interval.saturating_sub(elapsed),
        }
    }

    /// A query failed: start over (the next answer is read without blocking and always
    /// reported, so an agent back with new state at the same index is noticed) and return the
    /// back-off before the next query.
    pub fn on_error(&mut self) -> Duration {
        self.errors = self.errors.saturating_add(1);
        self.index = 0;
        self.config.backoff(self.errors)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn config() -> WatchConfig {
        WatchConfig {
            wait: Duration::from_secs(30),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            min_interval: Duration::from_millis(5),
            poll_interval: Duration::from_secs(1),
        }
    }

    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn blocks_on_the_last_index_and_reports_only_moves() {
        let mut w = WatchState::new(config());
        assert_eq!(w.next_query().index, 0);
        assert!(w.on_answer(10, FAST).report);
        assert_eq!(w.next_query().index, 10);
        assert_eq!(w.next_query().wait, Some(Duration::from_secs(30)));
        let same = w.on_answer(10, FAST);
        assert!(!same.report, "a wait that ran out changed nothing");
        assert_eq!(
            same.pause,
            Duration::from_millis(4),
            "min_interval less the elapsed"
        );
        assert!(w.on_answer(11, Duration::from_secs(2)).report);
        assert_eq!(w.index(), 11);
    }

    #[test]
    fn an_index_going_backwards_starts_over() {
        let mut w = WatchState::new(config());
        w.on_answer(50, FAST);
        assert!(w.on_answer(3, FAST).report);
        assert_eq!(w.index(), 0, "the next read does not block");
        assert!(
            w.on_answer(3, FAST).report,
            "after a reset every answer is reported"
        );
        assert_eq!(w.index(), 3);
    }

    #[test]
    fn endpoints_without_an_index_are_polled() {
        let mut w = WatchState::new(config());
        let first = w.on_answer(0, FAST);
        assert!(first.report);
        assert_eq!(first.pause, Duration::from_secs(1) - FAST);
        assert_eq!(w.index(), 1);
        assert!(
            w.on_answer(0, FAST).report,
            "no index: every answer may be new"
        );
    }

    #[test]
    fn back_off_holds_until_a_blocking_read_succeeds() {
        let mut w = WatchState::new(config());
        w.on_answer(7, FAST);
        let first = w.on_error();
        assert_eq!(w.index(), 0, "after a failure the next read does not block");
        // The non-blocking read is answered (from the agent's cache) but proves nothing...
        assert!(w.on_answer(7, FAST).report);
        assert_eq!(w.errors(), 1);
        // ...so the next failure backs off further.
        let second = w.on_error();
        assert_eq!(w.errors(), 2);
        assert!(second >= Duration::from_millis(100), "{second:?}");
        assert!(first <= Duration::from_millis(100), "{first:?}");
        // A blocking read that succeeds resets the count.
        w.on_answer(8, FAST);
        w.on_answer(8, FAST);
        assert_eq!(w.errors(), 0);
    }
}
