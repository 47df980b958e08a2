//! The accept loop: one task per connection, served by hyper (HTTP/1.1 and HTTP/2).
//!
//! `axum::serve` would do the same, with three differences that matter here: its connection
//! tasks outlive the server task (so a dropped agent still answered its open blocking queries
//! minutes later); it cannot wrap them in [`PollAgain`], which saves a worker wake-up per
//! request with a body; and it closes a connection with a request body still arriving, which
//! can reset the answer away ([`LingeringStream`] closes as Go's server does).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_service::Service;

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// their requests. Dropping (aborting) the returned future ends every connection at once.
pub(crate) async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "agent-sim: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Small requests and answers: do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                let (stream, closing) = LingeringStream::new(stream);
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service(&app, peer))
                    .into_owned();
                let connection = graceful.watch(connection);
                connections.spawn(PollAgain::new(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, error = %e, "agent-sim: connection ended");
                    }
                    closing.linger().await;
                }));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // The caller bounds this wait (`Agent::shutdown` gives it a second) by dropping the
    // future, and with it `connections`, which aborts the connections still open.
    graceful.shutdown().await;
}

/// How long a closed connection still reads what its client sends (Go's `rstAvoidanceDelay`).
const LINGER: Duration = Duration::from_millis(500);

/// A connection's socket that closes the way Go's HTTP server does (`closeWriteAndWait`).
///
/// hyper closes a connection whose request body it did not read (a 413 for an oversize body,
/// for one) with that body still arriving; the kernel then answers with a reset, which can
/// destroy the answer before the client reads it, or fail the client's write so it never
/// looks. So when hyper shuts the socket down, a duplicate of it is kept in [`Closing`]; once
/// hyper has dropped its own, [`Closing::linger`] reads and drops what the client still sends
/// until it closes or [`LINGER`] passes.
struct LingeringStream {
    stream: tokio::net::TcpStream,
    closing: Closing,
}

/// Where [`LingeringStream`] leaves the duplicate socket on shutdown.
#[derive(Clone, Default)]
struct Closing(Arc<Mutex<Option<std::net::TcpStream>>>);

impl LingeringStream {
    fn new(stream: tokio::net::TcpStream) -> (Self, Closing) {
        let closing = Closing::default();
        let stream = LingeringStream {
            stream,
            closing: closing.clone(),
        };
        (stream, closing)
    }
}

impl tokio::io::AsyncRead for LingeringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LingeringStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        {
            let mut kept = self.closing.0.lock().unwrap_or_else(|e| e.into_inner());
            if kept.is_none() {
                *kept = duplicate(&self.stream);
            }
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(unix)]
fn duplicate(stream: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    let fd = stream.as_fd().try_clone_to_owned().ok()?;
    Some(std::net::TcpStream::from(fd))
}

#[cfg(not(unix))]
fn duplicate(_: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    None
}

impl Closing {
    /// After hyper is done with the connection: drains it for up to [`LINGER`] if hyper shut
    /// it down, then closes it.
    async fn linger(self) {
        use tokio::io::AsyncReadExt;
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(socket) = kept else { return };
        // The duplicate shares the original's non-blocking mode, as tokio needs.
        let Ok(mut socket) = tokio::net::TcpStream::from_std(socket) else {
            return;
        };
        let mut sink = vec![0u8; 16 * 1024];
        let drain = async { while let Ok(1..) = socket.read(&mut sink).await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// The router as a hyper service, with the peer address where axum's `ConnectInfo` finds it.
fn service(
    app: &Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    let app = app.clone();
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(request).await }
    })
}

/// How many times in a row [`PollAgain`] polls before it yields to the runtime.
const POLL_AGAIN_LIMIT: u32 = 8;

/// Polls a future again at once when it wakes its own task while being polled, instead of
/// passing that wake to the runtime.
///
/// hyper hands a request body to the handler through a channel that the connection task both
/// fills and drains, so every request with a body makes the task wake itself mid-poll. tokio's
/// multi-thread scheduler treats such a wake as a yield, and a yield wakes a parked worker to
/// steal work: a futex wake-up and a cross-core migration per request, which on a small VM
/// tripled the latency of `POST /v1/agent/connect/authorize`. Wakes from elsewhere (sockets,
/// timers, other tasks) go to the runtime as before. After [`POLL_AGAIN_LIMIT`] polls in a row
/// the wake is passed on, so a future that keeps waking itself still yields.
struct PollAgain<F> {
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
    fn new(inner: F) -> Self {
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
