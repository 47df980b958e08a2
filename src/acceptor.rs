//! [`ConnectAcceptor`]: the server side of one Connect connection, mutual TLS then
//! authorization, for accept loops of your own.
//!
//! It is the one way the SDK turns an accepted socket into a Connect stream:
//! [`ConnectListener`](crate::ConnectListener) uses it too. There is no way through it that
//! skips authorization; the raw rustls configuration, which runs only an in-handshake
//! authorizer, is behind [`ConnectService::dangerous`](crate::ConnectService::dangerous).
//!
//! The streams it hands out stay under its watch: when the authorizer reports that
//! intentions changed, open connections are authorized again and those now denied are closed
//! with `access_denied` (see [`ServerStream`]).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::authz::{Authorizer, AuthzError};
use crate::revoke::{CloseSignal, Connections};
use crate::service::ConnectService;
use crate::spiffe::ServiceId;
use crate::tls::{peer_identity, recording_refusals, refuse_after_handshake, VerifyError};

pub use crate::revoke::{ConnectionClosed, ServerStream};

/// Why an incoming connection was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The client did not finish the handshake in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The handshake was still in progress, the oldest of more than the limit, when another
    /// client connected.
    #[error("handshake shed: more than {0} in progress and this one was the oldest")]
    Shed(usize),
    /// The client's certificate failed a check, or the in-handshake authorizer refused it
    /// ([`VerifyError::Unauthorized`]).
    #[error("client certificate rejected: {0}")]
    Verify(VerifyError),
    /// The TLS handshake failed otherwise.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The handshake completed without a usable client identity.
    #[error("client presented no SPIFFE service identity")]
    NoIdentity,
    /// Authorization refused the client or could not be had.
    #[error(transparent)]
    Authz(#[from] AuthzError),
}

impl RejectReason {
    /// A short, stable name of why, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RejectReason::Timeout(_) => "timeout",
            RejectReason::Shed(_) => "shed",
            RejectReason::Verify(v) => v.kind(),
            RejectReason::Handshake(_) => "tls",
            RejectReason::NoIdentity => "no_identity",
            RejectReason::Authz(AuthzError::Denied { .. }) => "denied",
            RejectReason::Authz(_) => "authz_unavailable",
        }
    }
}

/// A refused connection: why, and who when the client's certificate got that far.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct AcceptError {
    /// Why it was refused.
    pub reason: RejectReason,
    /// The client's identity, when known.
    pub peer: Option<ServiceId>,
}

/// Accepts one Connect connection at a time over any transport: the TLS handshake with the
/// client-certificate checks, then the service's authorizer, before the stream is handed out.
///
/// A client that an intention denies gets the TLS alert `access_denied`; one that could not
/// be authorized (the agent did not answer) gets `internal_error` (TLS 1.3; `close_notify` on
/// TLS 1.2 after the handshake). Cloning is cheap.
///
/// An accepted connection is authorized again whenever the authorizer reports that the
/// intentions changed ([`Authorizer::changes`]), within about a second, and closed with
/// `access_denied` when now denied; one whose re-check cannot be decided (the agent does not
/// answer) is kept, and checked again a little later. With
/// [`ConnectAcceptor::max_connection_age`], connections are also closed at that age.
///
/// ```no_run
/// # async fn run(db: consul_connect::ConnectService) -> std::io::Result<()> {
/// let acceptor = db.acceptor();
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:9191").await?;
/// loop {
///     let (socket, _) = tcp.accept().await?;
///     let acceptor = acceptor.clone();
///     tokio::spawn(async move {
///         match acceptor.accept(socket).await {
///             Ok((stream, peer)) => println!("{peer} connected"), // authorized
///             Err(refused) => eprintln!("refused: {refused}"),
///         }
///     });
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct ConnectAcceptor {
    tls: TlsAcceptor,
    authorizer: Arc<dyn Authorizer>,
    /// False when the authorizer decides inside the handshake (the verifier already did).
    authorize_after: bool,
    target: Arc<str>,
    connections: Arc<Connections>,
    max_age: Option<Duration>,
}

impl fmt::Debug for ConnectAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectAcceptor")
            .field("target", &self.target)
            .field("authorizer", &self.authorizer)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl ConnectAcceptor {
    /// The acceptor of `service`, with its authorizer.
    pub fn new(service: &ConnectService) -> Self {
        let authorizer = service.authorizer().clone();
        Self {
            tls: TlsAcceptor::from(service.dangerous().server_config()),
            authorize_after: authorizer.handshake_hook().is_none(),
            connections: Arc::new(Connections::new(service.name(), authorizer.clone())),
            authorizer,
            target: service.name().into(),
            max_age: None,
        }
    }

    /// Closes connections once they are `limit` old (`None`, the default: never), whatever
    /// the intentions say: for those who want every client authorized afresh now and then.
    /// The stream ends as at a deny, with `close_notify` instead of `access_denied`; an HTTP
    /// client sees its connection close and dials again.
    pub fn max_connection_age(mut self, limit: Option<Duration>) -> Self {
        self.max_age = limit;
        self
    }

    /// The service clients connect to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs the handshake and authorization on `io`; the stream is returned only when the
    /// client passed both. No timeout is applied: wrap the call in one.
    ///
    /// # Errors
    ///
    /// [`AcceptError`] with the reason and, when known, the client's identity.
    pub async fn accept<IO>(&self, io: IO) -> Result<(ServerStream<IO>, ServiceId), AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let refuse = |reason, peer| AcceptError { reason, peer };
        // Before deciding: a change that lands meanwhile re-checks this connection.
        let generation = self.connections.generation();
        let stream =
            recording_refusals(self.tls.accept(io)).await.map_err(
                |e| match VerifyError::from_io(&e) {
                    // Denied inside the handshake: the identity was verified first, so name it.
                    Some(VerifyError::Unauthorized { peer, reason }) => {
                        let who = Some(peer.clone());
                        refuse(
                            RejectReason::Verify(VerifyError::Unauthorized { peer, reason }),
                            who,
                        )
                    }
                    Some(v) => refuse(RejectReason::Verify(v), None),
                    None => refuse(RejectReason::Handshake(e), None),
                },
            )?;
        let peer = peer_identity(stream.get_ref().1)
            .ok_or_else(|| refuse(RejectReason::NoIdentity, None))?;
        let id = peer.service_id().clone();
        if !self.authorize_after {
            return Ok((self.admit(stream, &id, peer.serial(), generation), id));
        }
        let decision = match self
            .authorizer
            .authorize(&self.target, &id, peer.serial())
            .await
        {
            Ok(decision) => decision,
            Err(e) => {
                // Fail closed, and tell the client it was not a deny.
                refuse_after_handshake(stream, AlertDescription::InternalError).await;
                return Err(refuse(RejectReason::Authz(e), Some(id)));
            }
        };
        if !decision.allowed {
            refuse_after_handshake(stream, AlertDescription::AccessDenied).await;
            let denied = AuthzError::Denied {
                peer: id.clone(),
                target: self.target.to_string(),
                reason: decision.reason,
            };
            return Err(refuse(RejectReason::Authz(denied), Some(id)));
        }
        Ok((self.admit(stream, &id, peer.serial(), generation), id))
    }

    /// Lists an authorized stream for re-checks and its age limit.
    fn admit<IO>(
        &self,
        stream: TlsStream<IO>,
        peer: &ServiceId,
        serial: &str,
        generation: u64,
    ) -> ServerStream<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let signal = Arc::new(CloseSignal::default());
        let mut guard = self.connections.register(peer, serial, generation, &signal);
        if let Some(limit) = self.max_age {
            guard.close_after(limit, &self.target, peer, &signal);
        }
        let config = self.tls.config().clone();
        ServerStream::new(stream, peer.clone(), config, signal, guard)
    }
}
