//! Refusing a client so that it learns why: `access_denied` when authorization denied it,
//! `internal_error` when no decision could be made.
//!
//! # Why two mechanisms
//!
//! rustls 0.23 picks the alert of a failed client-certificate check from the verifier's error
//! (`impl From<CertificateError> for AlertDescription`): `ApplicationVerificationFailure`
//! becomes `access_denied`, `Other(..)` `certificate_unknown`, and any error that is not a
//! certificate error `handshake_failure`. No verifier error yields `internal_error`, and a
//! server has no public API to send a fatal alert after the handshake (only `close_notify`).
//!
//! - An in-handshake authorizer ([`HandshakeAuthorizer`](super::HandshakeAuthorizer), the
//!   intentions authorizer) refuses with `ApplicationVerificationFailure`, so the client gets
//!   `access_denied` from rustls itself. That error carries no payload, so the verifier also
//!   records the [`VerifyError`] in a task-local slot that [`recording_refusals`] reads, for
//!   the server's logs and rejection reports. The slot is diagnostics only: the decision never
//!   depends on it.
//! - The agent authorizer decides after the handshake (it needs an HTTP call, and rustls
//!   verifiers are synchronous). On TLS 1.3, [`refuse_after_handshake`] then writes the fatal
//!   alert itself: it takes the connection's transmit key with rustls'
//!   `dangerous_extract_secrets` (the server configuration enables secret extraction for this
//!   alone; the secrets never leave this function and are never logged) and seals one alert
//!   record with the negotiated suite's AEAD, at the next sequence number. On TLS 1.2, or if
//!   anything about that fails, the connection is closed with `close_notify` instead, as
//!   before: the client still fails closed, without the reason.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

use rustls::crypto::cipher::OutboundPlainMessage;
use rustls::{AlertDescription, ConnectionTrafficSecrets, ContentType, ProtocolVersion};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::VerifyError;

tokio::task_local! {
    static REFUSAL: Slot;
}

#[derive(Clone, Default)]
struct Slot(Arc<Mutex<Option<VerifyError>>>);

/// Records `error` for the [`recording_refusals`] call around the current handshake, if any.
pub(crate) fn record_refusal(error: &VerifyError) {
    let _ = REFUSAL.try_with(|slot| {
        *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
    });
}

/// Runs a server-side handshake made with [`server_config`](super::server_config) (such as
/// `TlsAcceptor::accept`) and, when the in-handshake authorizer refused the client, returns
/// an error from which [`VerifyError::from_io`] recovers the refusal
/// ([`VerifyError::Unauthorized`] with the peer and reason). The client was sent
/// `access_denied`, whose rustls error carries no detail; other outcomes pass unchanged.
///
/// ```no_run
/// # async fn run(config: std::sync::Arc<rustls::ServerConfig>, tcp: tokio::net::TcpStream) {
/// use consul_connect::tls::{recording_refusals, VerifyError};
///
/// let acceptor = tokio_rustls::TlsAcceptor::from(config);
/// if let Err(e) = recording_refusals(acceptor.accept(tcp)).await {
///     if let Some(why) = VerifyError::from_io(&e) {
///         eprintln!("client refused: {why}");
///     }
/// }
/// # }
/// ```
pub async fn recording_refusals<T, F>(handshake: F) -> io::Result<T>
where
    F: Future<Output = io::Result<T>>,
{
    let slot = Slot::default();
    let result = REFUSAL.scope(slot.clone(), handshake).await;
    let recorded = slot.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    match (result, recorded) {
        (Err(_), Some(refusal)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::from(refusal),
        )),
        (result, _) => result,
    }
}

/// Refuses a client whose handshake completed: sends the fatal `alert` (TLS 1.3), or
/// `close_notify` where that is not possible, then closes the connection. See the module
/// docs for why and how.
pub(crate) async fn refuse_after_handshake<IO>(
    stream: tokio_rustls::server::TlsStream<IO>,
    alert: AlertDescription,
) where
    IO: AsyncWrite + Unpin,
{
    let (mut io, conn) = stream.into_inner();
    let records = final_records(conn, alert);
    let close = async {
        io.write_all(&records).await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close).await;
}

/// The last bytes to send on an established connection refused with `alert`: what rustls
/// still holds for the peer, then the sealed alert (TLS 1.3) or `close_notify`.
pub(crate) fn final_records(
    mut conn: rustls::ServerConnection,
    alert: AlertDescription,
) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        if conn.write_tls(&mut out).is_err() {
            break;
        }
    }
    if let Some(record) = sealed_alert(conn, alert) {
        out.extend_from_slice(&record);
    }
    out
}

/// A TLS 1.3 record holding the fatal `alert`, sealed with the connection's transmit key, or
/// `None` (TLS 1.2, or secrets unavailable) with the connection closed by `close_notify`.
fn sealed_alert(conn: rustls::ServerConnection, alert: AlertDescription) -> Option<Vec<u8>> {
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let suite = conn.negotiated_cipher_suite().and_then(|s| s.tls13());
    let Some(suite) = suite.filter(|_| tls13) else {
        return close_notify(conn);
    };
    let secrets = match conn.dangerous_extract_secrets() {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::debug!(error = %e, "cannot seal a TLS alert; closing without it");
            return None;
        }
    };
    let (seq, traffic) = secrets.tx;
    let (key, iv) = match traffic {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => return None,
    };
    let payload = [2u8, u8::from(alert)]; // level fatal, then the description
    let message = OutboundPlainMessage {
        typ: ContentType::Alert,
        version: ProtocolVersion::TLSv1_2,
        payload: payload[..].into(),
    };
    let mut encrypter = suite.aead_alg.encrypter(key, iv);
    encrypter.encrypt(message, seq).ok().map(|m| m.encode())
}

fn close_notify(mut conn: rustls::ServerConnection) -> Option<Vec<u8>> {
    conn.send_close_notify();
    let mut out = Vec::new();
    while conn.wants_write() {
        if conn.write_tls(&mut out).is_err() {
            break;
        }
    }
    Some(out)
}
