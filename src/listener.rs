//! Accepting Connect connections: mutual TLS, then authorization, before the application sees
//! a byte.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::acceptor::{AcceptError, ConnectAcceptor};
use crate::service::ConnectService;
use crate::spiffe::ServiceId;
use crate::telemetry;

pub use crate::acceptor::RejectReason;

/// A server-side Connect stream over TCP: the TLS stream, closed by the server when the client
/// is no longer authorized or the connection is older than the listener allows.
pub use crate::acceptor::ServerStream;

/// Default limit for a client to complete the TLS handshake and authorization.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of handshakes in progress at once; past it the oldest in-progress handshake
/// is dropped so that stalled clients cannot lock out others.
pub const DEFAULT_MAX_PENDING: usize = 1024;

/// A refused connection, as [`ConnectListener::rejections`] reports it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The client's address.
    pub remote: SocketAddr,
    /// The client's identity, when its certificate got that far.
    pub peer: Option<ServiceId>,
    /// Why it was refused.
    pub reason: String,
}

/// Options of a [`ConnectListener`], built from [`Default`] and the setters.
///
/// ```
/// use std::time::Duration;
/// let options = consul_connect::listener::ListenerConfig::default()
///     .handshake_timeout(Duration::from_secs(5))
///     .max_connection_age(Duration::from_secs(3600));
/// assert_eq!(options.max_connection_age, Some(Duration::from_secs(3600)));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// Time allowed for handshake plus authorization (default 10 s).
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once (default 1024); past it the oldest is shed.
    pub max_pending: usize,
    /// Connections older than this are closed (default `None`: never), whatever the
    /// intentions say. See [`ConnectAcceptor::max_connection_age`].
    pub max_connection_age: Option<Duration>,
}

impl ListenerConfig {
    /// Time allowed for handshake plus authorization.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Handshakes in progress at once; past it the oldest is shed.
    pub fn max_pending(mut self, max: usize) -> Self {
        self.max_pending = max;
        self
    }

    /// Connections older than `age` are closed.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.max_connection_age = Some(age);
        self
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            max_connection_age: None,
        }
    }
}

/// Accepts Connect clients of a [`ConnectService`].
///
/// Each connection's handshake runs in its own task with a timeout, so a slow client cannot
/// hold up others. [`ConnectListener::accept`] returns only streams whose client passed the
/// certificate checks and authorization; the rest are logged (who, why) and closed. Accepted
/// connections are authorized again when the intentions change, and closed when now denied.
///
/// ```no_run
/// # async fn run(db: consul_connect::ConnectService) -> std::io::Result<()> {
/// use consul_connect::ConnectListener;
/// let mut listener = ConnectListener::bind(&db, "127.0.0.1:9191").await?;
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     println!("{peer} connected");
///     # drop(stream);
/// }
/// # }
/// ```
pub struct ConnectListener {
    incoming: mpsc::Receiver<(ServerStream, ServiceId)>,
    rejections: broadcast::Sender<Rejection>,
    local_addr: SocketAddr,
    task: JoinHandle<io::Error>,
}

impl fmt::Debug for ConnectListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectListener")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ConnectListener {
    /// Binds `addr` and accepts for `service`.
    pub async fn bind(service: &ConnectService, addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::from_tcp(service, TcpListener::bind(addr).await?)
    }

    /// Accepts on an existing listener.
    pub fn from_tcp(service: &ConnectService, listener: TcpListener) -> io::Result<Self> {
        Self::with_config(service, listener, ListenerConfig::default())
    }

    /// Accepts on an existing listener with explicit options.
    pub fn with_config(
        service: &ConnectService,
        listener: TcpListener,
        config: ListenerConfig,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, incoming) = mpsc::channel(64);
        let (rejections, _) = broadcast::channel(256);
        let ctx = Arc::new(AcceptContext {
            rejections: rejections.clone(),
            max_pending: config.max_pending.max(1),
            acceptor: ConnectAcceptor::new(service).max_connection_age(config.max_connection_age),
            target: service.name().to_owned(),
            timeout: config.handshake_timeout,
        });
        let task = tokio::spawn(accept_loop(listener, ctx, tx, config.max_pending.max(1)));
        Ok(Self {
            incoming,
            rejections,
            local_addr,
            task,
        })
    }

    /// Refused connections from now on (who and why), for audit logs and tests. Slow
    /// receivers miss the oldest reports rather than slowing the listener.
    pub fn rejections(&self) -> broadcast::Receiver<Rejection> {
        self.rejections.subscribe()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next authorized connection and its client's identity. Fails only if the TCP
    /// listener itself fails.
    pub async fn accept(&mut self) -> io::Result<(ServerStream, ServiceId)> {
        match self.incoming.recv().await {
            Some(conn) => Ok(conn),
            None => Err(io::Error::other("the Connect listener stopped")),
        }
    }
}

impl Drop for ConnectListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct AcceptContext {
    rejections: broadcast::Sender<Rejection>,
    max_pending: usize,
    acceptor: ConnectAcceptor,
    target: String,
    timeout: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<AcceptContext>,
    tx: mpsc::Sender<(ServerStream, ServiceId)>,
    max_pending: usize,
) -> io::Error {
    // Handshakes in progress, oldest first. At the limit the oldest is shed rather than the
    // accept loop stopping: stalled clients cannot lock out the ones that complete quickly.
    let in_flight: Arc<std::sync::Mutex<VecDeque<(u64, oneshot::Sender<()>)>>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return e,
        };
        if tx.is_closed() {
            return io::Error::other("the Connect listener was dropped");
        }
        let (shed_tx, shed) = oneshot::channel();
        let id = next_id;
        next_id += 1;
        {
            let mut queue = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            while queue.len() >= max_pending {
                match queue.pop_front() {
                    Some((_, oldest)) => {
                        let _ = oldest.send(());
                    }
                    None => break,
                }
            }
            queue.push_back((id, shed_tx));
        }
        let ctx = ctx.clone();
        let tx = tx.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("connect.handshake", side = "server", service = %ctx.target, %remote);
            let attempt = tracing::Instrument::instrument(handshake(&ctx, tcp), span);
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(ctx.timeout, attempt) => Some(outcome),
                _ = shed => None,
            };
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(i, _)| *i != id);
            let Some(outcome) = outcome else {
                let reason = RejectReason::Shed(ctx.max_pending);
                telemetry::handshake(&ctx.target, "server", Err(reason.kind()));
                tracing::info!(%remote, target = %ctx.target, %reason, "Connect client refused");
                let _ = ctx.rejections.send(Rejection {
                    remote,
                    peer: None,
                    reason: reason.to_string(),
                });
                return;
            };
            let (reason, peer) = match outcome {
                Ok(Ok((stream, peer))) => {
                    telemetry::handshake(&ctx.target, "server", Ok(()));
                    tracing::debug!(%remote, %peer, target = %ctx.target, "Connect client accepted");
                    let _ = tx.send((stream, peer)).await;
                    return;
                }
                Ok(Err(AcceptError { reason, peer })) => (reason, peer),
                Err(_) => (RejectReason::Timeout(ctx.timeout), None),
            };
            telemetry::handshake(&ctx.target, "server", Err(reason.kind()));
            let who = peer
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "unknown".into());
            // With every cause: "cannot authorize ...: client error (Connect)" alone hides
            // the agent's "Connection refused".
            let reason_text = telemetry::error_chain(&reason);
            tracing::info!(%remote, peer = %who, target = %ctx.target, reason = %reason_text, "Connect client refused");
            let _ = ctx.rejections.send(Rejection {
                remote,
                peer,
                reason: reason_text,
            });
        });
    }
}

/// The handshake and authorization; on failure, why and (when known) who.
async fn handshake(
    ctx: &AcceptContext,
    tcp: TcpStream,
) -> Result<(ServerStream, ServiceId), AcceptError> {
    let _ = tcp.set_nodelay(true);
    ctx.acceptor.accept(tcp).await
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23) // EMFILE, ENFILE
}
