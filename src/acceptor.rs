//! [`ConnectAcceptor`]: the server side of one Connect connection, mutual TLS then
//! authorization, for accept loops of your own.
//!
//! It is the one way the SDK turns an accepted socket into a Connect stream:
//! [`ConnectListener`](crate::ConnectListener) uses it too. There is no way through it that
//! skips authorization; the raw rustls configuration, which runs only an in-handshake
//! authorizer, is behind [`ConnectService::dangerous`](crate::ConnectService::dangerous).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::authz::{Authorizer, AuthzError};
use crate::service::ConnectService;
use crate::spiffe::ServiceId;
use crate::tls::{peer_identity, recording_refusals, refuse_after_handshake, VerifyError};

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
}

impl fmt::Debug for ConnectAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectAcceptor")
            .field("target", &self.target)
            .field("authorizer", &self.authorizer)
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
            authorizer,
            target: service.name().into(),
        }
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
    pub async fn accept<IO>(&self, io: IO) -> Result<(TlsStream<IO>, ServiceId), AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let refuse = |reason, peer| AcceptError { reason, peer };
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
        if !self.authorize_after {
            return Ok((stream, peer.into_service_id()));
        }
        let id = peer.service_id().clone();
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
        Ok((stream, id))
    }
}
