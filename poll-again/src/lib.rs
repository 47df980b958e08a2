//! [`PollAgain`]: a connection future that answers its own wakes by polling again.
//!
//! Shared by the `consul-connect` SDK's HTTP server and agent-sim's accept loop; it needs the
//! standard library only.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// How many times in a row [`PollAgain`] polls before it yields to the runtime.
const POLL_AGAIN_LIMIT: u32 = 8;

/// Polls a future again at once when it wakes its own task while being polled, instead of
/// passing that wake to the runtime. For connection tasks that serve HTTP/1.1 with hyper.
///
/// hyper's HTTP/1 server hands a request body to the handler through a channel that the
/// connection task both fills and drains, so every request with a body makes the task wake
/// itself mid-poll. tokio's multi-thread scheduler treats such a wake as a yield, and a yield
/// wakes a parked worker to steal work: a futex wake-up and a cross-core migration per request,
/// which on a small VM tripled the latency of a small POST. Wakes from elsewhere (sockets,
/// timers, other tasks) go to the runtime as before. After 8 polls in a row the wake is passed
/// on, so a future that keeps waking itself still yields.
///
/// `consul_connect::http::serve` and `serve_connection` already use it (the SDK re-exports it as
/// `consul_connect::http::PollAgain`); wrap the connection futures of your own accept loops in
/// it the same way.
///
/// ```no_run
/// # async fn run(listener: tokio::net::TcpListener, app: axum::Router) -> std::io::Result<()> {
/// use poll_again::PollAgain;
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::server::conn::auto;
/// use hyper_util::service::TowerToHyperService;
///
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     let service = TowerToHyperService::new(app.clone());
///     tokio::spawn(PollAgain::new(async move {
///         let _ = auto::Builder::new(TokioExecutor::new())
///             .serve_connection(TokioIo::new(tcp), service)
///             .await;
///     }));
/// }
/// # }
/// ```
pub struct PollAgain<F> {
    inner: Pin<Box<F>>,
    wake: Arc<SelfWake>,
    waker: Waker,
}

/// Not being polled; a wake goes to the task's waker.
const IDLE: u8 = 0;
/// Being polled; a wake is remembered and answered by polling again.
const POLLING: u8 = 1;
/// Being polled, and woken meanwhile.
const WOKEN: u8 = 2;

struct SelfWake {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl<F: Future> PollAgain<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        let wake = Arc::new(SelfWake {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        PollAgain {
            inner: Box::pin(inner),
            waker: Waker::from(wake.clone()),
            wake,
        }
    }
}

impl<F: Future> Future for PollAgain<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut task = this.wake.task.lock().unwrap_or_else(|e| e.into_inner());
            match &*task {
                Some(known) if known.will_wake(cx.waker()) => {}
                _ => *task = Some(cx.waker().clone()),
            }
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..POLL_AGAIN_LIMIT {
            this.wake.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(output) = this.inner.as_mut().poll(&mut inner_cx) {
                this.wake.state.store(IDLE, Ordering::Release);
                return Poll::Ready(output);
            }
            if this
                .wake
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
            // Woken during the poll: go round again.
        }
        this.wake.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Wake for SelfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            match state {
                IDLE => break,
                WOKEN => return,
                _ => match self.state.compare_exchange_weak(
                    POLLING,
                    WOKEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return,
                    Err(now) => state = now,
                },
            }
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

impl<F> std::fmt::Debug for PollAgain<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollAgain").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes that reach the task.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A future that wakes itself `n` times while polled, then completes.
    struct WakesItself {
        left: u32,
        polls: u32,
    }

    impl Future for WakesItself {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.polls += 1;
            if self.left == 0 {
                return Poll::Ready(self.polls);
            }
            self.left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn counting() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn a_self_wake_is_answered_by_polling_again_without_the_task() {
        let (counter, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut fut = PollAgain::new(WakesItself { left: 3, polls: 0 });
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(4));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_yields() {
        let (counter, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut fut = PollAgain::new(WakesItself {
            left: u32::MAX,
            polls: 0,
        });
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(fut.inner.polls, POLL_AGAIN_LIMIT);
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task() {
        let (counter, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut fut = PollAgain::new(rx);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        std::thread::spawn(move || tx.send(7).unwrap())
            .join()
            .unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(Ok(7)));
    }
}
