//! Spinning before sleeping, as Go's scheduler does.
//!
//! A request from another process wakes a worker that is asleep in `epoll_wait`, and on a
//! virtual machine that halts idle vCPUs the wake-up costs tens of microseconds: more than the
//! request itself. Go's runtime keeps a thread polling the network for a while before it
//! sleeps, which is most of why Consul answers one client quickly. [`Spinner`] does the same
//! for agent-sim: after a connection makes progress, one task yields in a loop for
//! [`SPIN_WINDOW`], so its worker keeps polling the I/O driver without blocking and picks up
//! the next request at once. It stops as soon as a second connection makes progress: several
//! busy connections keep the workers awake on their own, and spinning would only take a core
//! from the clients.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long the spinner polls after the last progress of a lone connection.
pub(crate) const SPIN_WINDOW: Duration = Duration::from_micros(100);

/// How long the spinner rests once several connections are busy.
const CROWDED_REST: Duration = Duration::from_millis(1);

/// Keeps one worker polling for a short while after a connection made progress.
#[derive(Debug, Default)]
pub(crate) struct Spinner {
    wake: Notify,
    /// The connection that made progress last.
    last: AtomicU64,
    /// Another connection made progress since the spinner last looked.
    crowded: AtomicBool,
    /// Progress since the spinner last looked: it extends the window.
    progress: AtomicBool,
    /// The spinner is spinning or resting (no need to wake it).
    spinning: AtomicBool,
}

impl Spinner {
    /// Connection `conn` is being polled.
    fn progress(&self, conn: u64) {
        // Loads before stores: with many busy connections the flags are already set, and
        // cache lines that are only read are not bounced between cores.
        if self.last.load(Relaxed) != conn {
            self.last.store(conn, Relaxed);
            if !self.crowded.load(Relaxed) {
                self.crowded.store(true, Relaxed);
            }
        }
        if !self.spinning.load(Relaxed) {
            self.wake.notify_one();
        } else if !self.progress.load(Relaxed) {
            self.progress.store(true, Relaxed);
        }
    }

    /// The spinner's task: runs until aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            self.spinning.store(true, Relaxed);
            self.crowded.store(false, Relaxed);
            let mut until = Instant::now() + SPIN_WINDOW;
            loop {
                tokio::task::yield_now().await;
                if take(&self.crowded) {
                    tokio::time::sleep(CROWDED_REST).await;
                    break;
                }
                let now = Instant::now();
                if take(&self.progress) {
                    until = now + SPIN_WINDOW;
                } else if now >= until {
                    break;
                }
            }
            self.spinning.store(false, Relaxed);
        }
    }
}

/// Clears `flag` and says whether it was set, writing only when it was (the spin loop looks at
/// each flag at every turn, and a write would take the line from the core that sets it).
fn take(flag: &AtomicBool) -> bool {
    flag.load(Relaxed) && flag.swap(false, Relaxed)
}

/// `connection` (numbered `conn`, unique per server), reporting its progress to `spinner` if
/// there is one.
pub(crate) fn watch<F: Future>(
    spinner: Option<&Arc<Spinner>>,
    conn: u64,
    connection: F,
) -> Watched<F> {
    Watched {
        spinner: spinner.cloned(),
        conn,
        // Boxed once per connection, so that `Watched` is `Unpin`.
        inner: Box::pin(connection),
    }
}

/// A connection future that tells the [`Spinner`] each time it is polled.
pub(crate) struct Watched<F> {
    spinner: Option<Arc<Spinner>>,
    conn: u64,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if let Some(spinner) = &self.spinner {
            spinner.progress(self.conn);
        }
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (bounded) until `cond` holds, running `each` before every look.
    async fn until(what: &str, mut each: impl FnMut(), cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            each();
            if cond() {
                return;
            }
            assert!(Instant::now() < deadline, "{what}");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spins_while_a_connection_progresses_then_sleeps() {
        let spinner = Arc::new(Spinner::default());
        let task = tokio::spawn(spinner.clone().run());
        let mut watched = std::pin::pin!(watch(Some(&spinner), 1, std::future::pending::<()>()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Each poll is progress, which (re)starts the window.
        let progress = || assert!(watched.as_mut().poll(&mut cx).is_pending());
        until("a polled connection starts the spinner", progress, || {
            spinner.spinning.load(Relaxed)
        })
        .await;
        until(
            "with no more progress the spinner stops",
            || {},
            || !spinner.spinning.load(Relaxed),
        )
        .await;
        task.abort();
    }
}
