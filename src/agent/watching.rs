//! Watches: the pacing of a blocking-query watch and the loop that runs one (the rules it
//! follows are [`WatchState`](super::WatchState)'s).

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use super::{AgentError, Indexed, QueryOptions, WatchState};

/// How a blocking-query watch paces itself. Built from [`Default`] and the setters, so a new
/// setting never breaks a caller:
///
/// ```
/// use std::time::Duration;
/// let pacing = consul_connect::agent::WatchConfig::default()
///     .wait(Duration::from_secs(60))
///     .backoff_range(Duration::from_millis(100), Duration::from_secs(10));
/// assert_eq!(pacing.wait, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchConfig {
    /// The blocking wait sent as `?wait=`.
    pub wait: Duration,
    /// First delay after an error; doubles with each consecutive error.
    pub backoff_base: Duration,
    /// Longest delay after errors.
    pub backoff_max: Duration,
    /// Shortest time between two requests, so an endpoint that answers at once is not
    /// hammered.
    pub min_interval: Duration,
    /// Time between two requests to an endpoint that sends no `X-Consul-Index` and so cannot
    /// block (Consul 1.4's intention match): the watch polls it.
    pub poll_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(300),
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            min_interval: Duration::from_millis(50),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl WatchConfig {
    /// The blocking wait sent as `?wait=`.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The first delay after an error (doubling with each consecutive one) and the longest.
    pub fn backoff_range(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// The shortest time between two requests.
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The time between two requests to an endpoint that cannot block.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The delay after `errors` consecutive errors: exponential, capped, with jitter in its
    /// upper half so watchers of a restarted agent do not return together.
    pub fn backoff(&self, errors: u32) -> Duration {
        let exp = self.backoff_base.saturating_mul(
            1u32.checked_shl(errors.saturating_sub(1).min(20))
                .unwrap_or(u32::MAX),
        );
        let capped = exp.min(self.backoff_max);
        let half = capped / 2;
        half + Duration::from_nanos(rand::rng().random_range(0..=half.as_nanos() as u64))
    }
}

/// What a watch reports.
#[derive(Debug)]
pub enum WatchEvent<T> {
    /// A new value (its index moved).
    Update(Indexed<T>),
    /// A failed fetch; the watch backs off and tries again.
    Error(AgentError),
}

/// Runs a blocking-query loop until `stop` turns true: calls `fetch` with the last index,
/// reports each new value or error to `on_event`, backs off on errors, resets the index when it
/// goes backwards (an agent restart), and keeps at least `min_interval` between requests. An
/// endpoint that sends no index is polled every `poll_interval`, each answer reported.
///
/// After an error the next read does not block and its answer is reported even at an unchanged
/// index (receivers must ignore a value equal to the one they hold). The back-off only resets
/// once a blocking read succeeds: a cached non-blocking answer does not prove the agent can
/// serve blocking queries again.
pub async fn run_watch<T, F, Fut>(
    config: WatchConfig,
    stop: watch::Receiver<bool>,
    fetch: F,
    on_event: impl FnMut(WatchEvent<T>),
) where
    F: FnMut(QueryOptions) -> Fut,
    Fut: Future<Output = Result<Indexed<T>, AgentError>>,
{
    run_watch_woken(config, stop, None, fetch, on_event).await;
}

/// [`run_watch`], whose pause between two queries (a back-off after errors included) is cut
/// short each time `wake` changes: something outside has learnt that the answer has probably
/// moved (the leaf, when the CA roots change). A query already in flight is left to finish, so
/// no blocking query is abandoned on the agent.
pub(crate) async fn run_watch_woken<T, F, Fut>(
    config: WatchConfig,
    mut stop: watch::Receiver<bool>,
    mut wake: Option<watch::Receiver<u64>>,
    mut fetch: F,
    mut on_event: impl FnMut(WatchEvent<T>),
) where
    F: FnMut(QueryOptions) -> Fut,
    Fut: Future<Output = Result<Indexed<T>, AgentError>>,
{
    let mut state = WatchState::new(config);
    loop {
        if *stop.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = fetch(state.next_query()) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let pause = match result {
            Ok(got) => {
                let after = state.on_answer(got.index, started.elapsed());
                if after.report {
                    on_event(WatchEvent::Update(got));
                }
                after.pause
            }
            Err(e) => {
                let pause = state.on_error();
                on_event(WatchEvent::Error(e));
                pause
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                () = woken(&mut wake) => tracing::debug!(cut = ?pause, "watch woken before its pause ended"),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Resolves when `wake` has changed since it was last seen; never without one.
async fn woken(wake: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = wake {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}
