//! Open connections after `accept`: authorized again when intentions change, closed when now
//! denied or older than the listener's limit.
//!
//! [`ServerStream`] is what [`ConnectAcceptor`](crate::ConnectAcceptor) hands out: the TLS
//! stream plus a close signal. [`Connections`] (one per acceptor and its clones) lists the open
//! streams by client; when the authorizer reports a change ([`Authorizer::changes`]) a task
//! asks it again once per distinct client, a few at a time, and closes the streams of those
//! now denied. The stream closes itself on its next poll: it sends the TLS alert
//! `access_denied` (TLS 1.3, `close_notify` on TLS 1.2, as
//! [`refuse_after_handshake`](crate::tls) does) and fails every later read and write with
//! [`ConnectionClosed`].
//!
//! A re-check that cannot be decided (the agent does not answer) keeps the connection, logs it
//! and tries again a little later: failing closed applies to new connections, where the client
//! can retry; cutting every open connection whenever the agent restarts would turn an agent
//! blip into an outage.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use rustls::{AlertDescription, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;

use crate::authz::Authorizer;
use crate::spiffe::ServiceId;
use crate::telemetry;
use crate::tls::final_records;

/// Distinct clients authorized again at once after a change.
const RECHECK_CONCURRENCY: usize = 8;
/// Delay before re-checking clients whose decision could not be had.
const RETRY_UNDECIDED: Duration = Duration::from_secs(2);

/// Why an accepted connection was closed by the server after `accept`; the error of every
/// read and write of a [`ServerStream`] from then on (`io::Error::get_ref` downcasts to it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionClosed {
    /// An intention (or the default policy) now denies the client: the intentions changed
    /// after it connected. The client was sent `access_denied`.
    #[error("{peer} is no longer authorized to connect to {target}: {reason}")]
    Denied {
        /// The client.
        peer: ServiceId,
        /// The service it connected to.
        target: String,
        /// Consul's reason.
        reason: String,
    },
    /// The connection reached the listener's maximum age
    /// ([`ListenerConfig::max_connection_age`](crate::listener::ListenerConfig)). The client
    /// was sent `close_notify`.
    #[error("connection from {peer} closed at its maximum age of {limit:?}")]
    MaxAge {
        /// The client.
        peer: ServiceId,
        /// The limit.
        limit: Duration,
    },
}

/// An accepted, authorized Connect stream: the TLS stream, closed by the server when the
/// client is no longer authorized or the connection is older than the listener allows.
///
/// Reads and writes go to the TLS stream until then. Once closed, the client has been sent
/// the TLS alert `access_denied` (TLS 1.3; `close_notify` on TLS 1.2 and at the age limit),
/// reads and writes fail with a [`ConnectionClosed`] error (a read at the age limit sees the
/// end of the stream instead), and shutting down succeeds.
///
/// ```no_run
/// # async fn run(mut listener: consul_connect::ConnectListener) -> std::io::Result<()> {
/// use consul_connect::tls::peer_identity;
/// let (stream, peer) = listener.accept().await?;
/// let serial = peer_identity(stream.get_ref().1).map(|p| p.serial().to_owned());
/// println!("{peer} connected with leaf {serial:?}");
/// # Ok(()) }
/// ```
pub struct ServerStream<IO = TcpStream> {
    tls: TlsStream<IO>,
    peer: ServiceId,
    closing: Closing,
    signal: Arc<CloseSignal>,
    /// For the empty connection state left behind when sealing the alert consumes the real one.
    config: Arc<ServerConfig>,
    _guard: Guard,
}

enum Closing {
    Open,
    Sending {
        records: Vec<u8>,
        sent: usize,
        why: ConnectionClosed,
    },
    ShuttingDown(ConnectionClosed),
    Closed(ConnectionClosed),
}

impl<IO> ServerStream<IO> {
    /// The transport and the rustls connection, as `tokio_rustls`' `get_ref` gives them (for
    /// [`peer_identity`](crate::tls::peer_identity), the ALPN protocol, addresses).
    ///
    /// After the stream was closed with `access_denied`, the connection is an empty one: the
    /// original was consumed to seal the alert with its keys.
    pub fn get_ref(&self) -> (&IO, &ServerConnection) {
        self.tls.get_ref()
    }

    /// The authorized client.
    pub fn peer(&self) -> &ServiceId {
        &self.peer
    }

    /// Why the server closed this stream, once it did.
    pub fn closed(&self) -> Option<ConnectionClosed> {
        self.signal.reason()
    }
}

impl<IO> fmt::Debug for ServerStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStream")
            .field("peer", &self.peer)
            .field("closed", &self.signal.reason())
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ServerStream<IO> {
    pub(crate) fn new(
        tls: TlsStream<IO>,
        peer: ServiceId,
        config: Arc<ServerConfig>,
        signal: Arc<CloseSignal>,
        guard: Guard,
    ) -> Self {
        Self {
            tls,
            peer,
            closing: Closing::Open,
            signal,
            config,
            _guard: guard,
        }
    }

    /// Drives the close once signalled: `Ready(None)` while open, `Ready(Some(why))` once the
    /// last records were sent (or could not be) and the transport shut down.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<Option<ConnectionClosed>> {
        loop {
            match &mut self.closing {
                Closing::Open => {
                    let Some(why) = self.signal.reason() else {
                        return Poll::Ready(None);
                    };
                    let records = self.last_records(&why);
                    self.closing = Closing::Sending {
                        records,
                        sent: 0,
                        why,
                    };
                }
                Closing::Sending { records, sent, why } => {
                    let io = self.tls.get_mut().0;
                    while *sent < records.len() {
                        match ready!(Pin::new(&mut *io).poll_write(cx, &records[*sent..])) {
                            Ok(n) if n > 0 => *sent += n,
                            _ => break, // the client is gone: nothing more to tell it
                        }
                    }
                    self.closing = Closing::ShuttingDown(why.clone());
                }
                Closing::ShuttingDown(why) => {
                    let _ = ready!(Pin::new(self.tls.get_mut().0).poll_shutdown(cx));
                    self.closing = Closing::Closed(why.clone());
                }
                Closing::Closed(why) => return Poll::Ready(Some(why.clone())),
            }
        }
    }

    /// What rustls still holds for the client, then `access_denied` (sealed with the
    /// connection's keys, which consumes it) or `close_notify`.
    fn last_records(&mut self, why: &ConnectionClosed) -> Vec<u8> {
        let conn = self.tls.get_mut().1;
        if matches!(why, ConnectionClosed::Denied { .. }) {
            if let Ok(empty) = ServerConnection::new(self.config.clone()) {
                let conn = std::mem::replace(conn, empty);
                return final_records(conn, AlertDescription::AccessDenied);
            }
        }
        conn.send_close_notify();
        let mut out = Vec::new();
        while conn.wants_write() {
            if conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        out
    }

    /// Runs `op` on the TLS stream unless closed; when it is pending, makes sure a close
    /// signalled meanwhile wakes this task.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        side: Side,
        op: impl FnOnce(Pin<&mut TlsStream<IO>>, &mut Context<'_>) -> Poll<io::Result<T>>,
        closed: impl FnOnce(ConnectionClosed) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        if let Some(why) = ready!(self.poll_closing(cx)) {
            return Poll::Ready(closed(why));
        }
        let poll = op(Pin::new(&mut self.tls), cx);
        if poll.is_pending() && self.signal.register(side, cx.waker()) {
            cx.waker().wake_by_ref();
        }
        poll
    }
}

fn closed_error(why: ConnectionClosed) -> io::Error {
    let kind = match why {
        ConnectionClosed::Denied { .. } => io::ErrorKind::PermissionDenied,
        ConnectionClosed::MaxAge { .. } => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, why)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_io(
            cx,
            Side::Read,
            |tls, cx| tls.poll_read(cx, buf),
            |why| match why {
                // At the age limit the server ends the stream as a graceful close would.
                ConnectionClosed::MaxAge { .. } => Ok(()),
                why => Err(closed_error(why)),
            },
        )
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(
            cx,
            Side::Write,
            |tls, cx| tls.poll_write(cx, buf),
            |why| Err(closed_error(why)),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(
            cx,
            Side::Write,
            |tls, cx| tls.poll_write_vectored(cx, bufs),
            |why| Err(closed_error(why)),
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_io(
            cx,
            Side::Write,
            |tls, cx| tls.poll_flush(cx),
            |why| Err(closed_error(why)),
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_io(cx, Side::Write, |tls, cx| tls.poll_shutdown(cx), |_| Ok(()))
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Side {
    Read,
    Write,
}

/// The server's decision to close one stream, and the tasks to wake for it (one reading,
/// one writing: the stream may be split).
#[derive(Default)]
pub(crate) struct CloseSignal {
    closed: AtomicBool,
    state: Mutex<SignalState>,
}

#[derive(Default)]
struct SignalState {
    why: Option<ConnectionClosed>,
    read: Option<Waker>,
    write: Option<Waker>,
}

impl CloseSignal {
    fn lock(&self) -> std::sync::MutexGuard<'_, SignalState> {
        // Wakers and a reason: a panic elsewhere cannot leave them half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the stream (the first reason stays) and wakes its tasks.
    pub(crate) fn close(&self, why: ConnectionClosed) {
        let wakers = {
            let mut state = self.lock();
            if state.why.is_some() {
                return;
            }
            state.why = Some(why);
            self.closed.store(true, Ordering::Release);
            [state.read.take(), state.write.take()]
        };
        wakers.into_iter().flatten().for_each(Waker::wake);
    }

    fn reason(&self) -> Option<ConnectionClosed> {
        if !self.closed.load(Ordering::Acquire) {
            return None;
        }
        self.lock().why.clone()
    }

    /// Wakes `waker` on close; true when already closed.
    fn register(&self, side: Side, waker: &Waker) -> bool {
        let mut state = self.lock();
        if state.why.is_some() {
            return true;
        }
        let slot = match side {
            Side::Read => &mut state.read,
            Side::Write => &mut state.write,
        };
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
        false
    }
}

/// What a stream holds so that dropping it leaves the registry and stops its age timer.
#[derive(Default)]
pub(crate) struct Guard {
    entry: Option<(Arc<Connections>, u64)>,
    deadline: Option<JoinHandle<()>>,
}

impl Guard {
    /// Closes `signal` with [`ConnectionClosed::MaxAge`] after `limit`.
    pub(crate) fn close_after(
        &mut self,
        limit: Duration,
        target: &str,
        peer: &ServiceId,
        signal: &Arc<CloseSignal>,
    ) {
        let signal = Arc::downgrade(signal);
        let (target, peer) = (target.to_owned(), peer.clone());
        self.deadline = Some(tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            if let Some(signal) = signal.upgrade() {
                telemetry::connection_closed(&target, "max_age", 1);
                tracing::info!(%target, %peer, ?limit, "closing a Connect connection at its maximum age");
                signal.close(ConnectionClosed::MaxAge { peer, limit });
            }
        }));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((connections, id)) = self.entry.take() {
            connections.lock().entries.remove(&id);
        }
        if let Some(deadline) = self.deadline.take() {
            deadline.abort();
        }
    }
}

/// The open connections of one acceptor (and its clones), by client, authorized again when
/// the authorizer reports a change.
pub(crate) struct Connections {
    target: String,
    authorizer: Arc<dyn Authorizer>,
    open: Mutex<Open>,
    /// The authorizer's changes, asked for at the first accept (it may start a watch, which
    /// needs the runtime), with the re-check task started then.
    changes: OnceLock<Option<watch::Receiver<u64>>>,
    /// Rung when a connection was registered already behind the latest change.
    behind: Arc<Notify>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

struct Entry {
    peer: ServiceId,
    serial: String,
    /// The latest change this connection was authorized after.
    checked: u64,
    signal: Arc<CloseSignal>,
}

impl Connections {
    pub(crate) fn new(target: &str, authorizer: Arc<dyn Authorizer>) -> Self {
        Self {
            target: target.to_owned(),
            authorizer,
            open: Mutex::default(),
            changes: OnceLock::new(),
            behind: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Plain entries: a panic elsewhere cannot leave them half-written.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The authorizer's current change count (0 when it reports none). Read before deciding
    /// on a new connection, so a change that lands during the decision re-checks it.
    pub(crate) fn generation(self: &Arc<Self>) -> u64 {
        let changes = self.changes.get_or_init(|| {
            let changes = self.authorizer.changes(&self.target)?;
            tokio::spawn(recheck_loop(
                Arc::downgrade(self),
                changes.clone(),
                self.behind.clone(),
            ));
            Some(changes)
        });
        changes.as_ref().map_or(0, |c| *c.borrow())
    }

    /// Lists a connection of `peer` authorized as of `generation`; the guard unlists it.
    pub(crate) fn register(
        self: &Arc<Self>,
        peer: &ServiceId,
        serial: &str,
        generation: u64,
        signal: &Arc<CloseSignal>,
    ) -> Guard {
        if self.changes.get().and_then(Option::as_ref).is_none() {
            return Guard::default(); // decisions never change: nothing to re-check
        }
        let id = {
            let mut open = self.lock();
            let id = open.next_id;
            open.next_id += 1;
            open.entries.insert(
                id,
                Entry {
                    peer: peer.clone(),
                    serial: serial.to_owned(),
                    checked: generation,
                    signal: signal.clone(),
                },
            );
            id
        };
        if self.generation() > generation {
            self.behind.notify_one();
        }
        Guard {
            entry: Some((self.clone(), id)),
            deadline: None,
        }
    }

    /// Authorizes again, once per distinct client, the connections not yet checked after
    /// change `generation`, and closes those now denied. True when some could not be decided.
    async fn recheck(&self, generation: u64) -> bool {
        let stale: HashMap<ServiceId, String> = self
            .lock()
            .entries
            .values()
            .filter(|e| e.checked < generation)
            .map(|e| (e.peer.clone(), e.serial.clone()))
            .collect();
        let mut pending = stale.into_iter();
        let mut running = JoinSet::new();
        let mut undecided = false;
        loop {
            while running.len() < RECHECK_CONCURRENCY {
                let Some((peer, serial)) = pending.next() else {
                    break;
                };
                let (authorizer, target) = (self.authorizer.clone(), self.target.clone());
                running.spawn(async move {
                    let decision = authorizer.authorize(&target, &peer, &serial).await;
                    (peer, decision)
                });
            }
            let Some(done) = running.join_next().await else {
                return undecided;
            };
            match done {
                Ok((peer, Ok(decision))) if decision.allowed => self.settle(&peer, generation),
                Ok((peer, Ok(decision))) => self.revoke(&peer, generation, decision.reason),
                Ok((peer, Err(e))) => {
                    undecided = true;
                    let error = telemetry::error_chain(&e);
                    tracing::warn!(target = %self.target, %peer, %error, "cannot re-check open Connect connections after an intentions change; keeping them and retrying");
                }
                Err(e) => {
                    undecided = true;
                    tracing::warn!(target = %self.target, error = %e, "re-checking open Connect connections failed; retrying");
                }
            }
        }
    }

    fn settle(&self, peer: &ServiceId, generation: u64) {
        for entry in self.lock().entries.values_mut() {
            if entry.peer == *peer && entry.checked < generation {
                entry.checked = generation;
            }
        }
    }

    fn revoke(&self, peer: &ServiceId, generation: u64, reason: String) {
        let why = ConnectionClosed::Denied {
            peer: peer.clone(),
            target: self.target.clone(),
            reason,
        };
        let mut closed = 0;
        for entry in self.lock().entries.values_mut() {
            if entry.peer == *peer && entry.checked < generation {
                entry.checked = u64::MAX; // never again
                entry.signal.close(why.clone());
                closed += 1;
            }
        }
        if closed > 0 {
            telemetry::connection_closed(&self.target, "denied", closed);
            tracing::warn!(target = %self.target, %peer, connections = closed, reason = %why, "closing open Connect connections: the client is no longer authorized");
        }
    }
}

/// Re-checks after each change, after a connection registered behind one, and a little after
/// a re-check that could not decide.
async fn recheck_loop(
    connections: Weak<Connections>,
    mut changes: watch::Receiver<u64>,
    behind: Arc<Notify>,
) {
    let mut retry = None;
    loop {
        let retry_at = async {
            match retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return; // the authorizer is gone
                }
            }
            () = behind.notified() => {}
            () = retry_at => {}
        }
        let Some(connections) = connections.upgrade() else {
            return;
        };
        let generation = *changes.borrow_and_update();
        let undecided = connections.recheck(generation).await;
        retry = undecided.then(|| tokio::time::Instant::now() + RETRY_UNDECIDED);
    }
}
