//! How the agent client reaches the agent: TCP or a unix socket, each optionally under TLS.
//!
//! hyper-util's `HttpConnector` only dials TCP and knows nothing of TLS; `hyper-rustls` would
//! add TLS but not unix sockets. This connector is the small sum of the two: dial, then, for
//! https, a rustls handshake with the agent's server name.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where the connector dials, whatever the request's URI says.
#[derive(Clone, Debug)]
pub(crate) enum Dial {
    /// The URI's host and port, over TCP.
    Tcp,
    /// A unix socket at this path.
    #[cfg_attr(not(unix), allow(dead_code))]
    Unix(PathBuf),
}

/// TLS towards the agent: the client configuration and the name to verify the agent as.
#[derive(Clone)]
pub(crate) struct AgentTls {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

/// A `tower::Service<Uri>` connector for hyper-util's pooled client.
#[derive(Clone)]
pub(crate) struct AgentConnector {
    tcp: HttpConnector,
    dial: Dial,
    tls: Option<AgentTls>,
}

impl AgentConnector {
    pub(crate) fn new(dial: Dial, tls: Option<AgentTls>) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(5)));
        // The URI is `https://…` for TLS; the TLS is ours, on top of the TCP stream.
        tcp.enforce_http(false);
        Self { tcp, dial, tls }
    }

    #[cfg(test)]
    pub(crate) fn dial(&self) -> &Dial {
        &self.dial
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for AgentConnector {
    type Response = TokioIo<AgentStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let plain = match &this.dial {
                Dial::Tcp => {
                    let mut tcp = this.tcp.clone();
                    Plain::Tcp(tcp.call(uri).await?.into_inner())
                }
                #[cfg(unix)]
                Dial::Unix(path) => Plain::Unix(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?,
                ),
                #[cfg(not(unix))]
                Dial::Unix(_) => return Err("unix sockets need a unix system".into()),
            };
            let Some(tls) = &this.tls else {
                return Ok(TokioIo::new(AgentStream::Plain(plain)));
            };
            let name = tls.server_name.clone();
            let stream = tls.connector.connect(name, plain).await.map_err(|e| {
                format!(
                    "TLS handshake with the agent (server name {:?}) failed: {e}",
                    tls.server_name.to_str()
                )
            })?;
            Ok(TokioIo::new(AgentStream::Tls(Box::new(stream))))
        })
    }
}

/// A connection to the agent.
pub(crate) enum AgentStream {
    Plain(Plain),
    Tls(Box<TlsStream<Plain>>),
}

/// The transport under the (optional) TLS.
pub(crate) enum Plain {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Connection for AgentStream {
    fn connected(&self) -> Connected {
        match self {
            AgentStream::Plain(Plain::Tcp(s)) => s.connected(),
            AgentStream::Tls(s) => match s.get_ref().0 {
                Plain::Tcp(s) => s.connected(),
                #[cfg(unix)]
                Plain::Unix(_) => Connected::new(),
            },
            #[cfg(unix)]
            AgentStream::Plain(Plain::Unix(_)) => Connected::new(),
        }
    }
}

/// Forwards a tokio I/O call to whichever stream is inside.
macro_rules! forward {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            AgentStream::Plain(Plain::Tcp($s)) => $call,
            #[cfg(unix)]
            AgentStream::Plain(Plain::Unix($s)) => $call,
            AgentStream::Tls($s) => $call,
        }
    };
}

macro_rules! forward_plain {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Plain::Tcp($s) => $call,
            #[cfg(unix)]
            Plain::Unix($s) => $call,
        }
    };
}

impl AsyncRead for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        forward!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        forward_plain!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        forward_plain!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        forward_plain!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        forward_plain!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A server verifier that accepts any certificate: `CONSUL_HTTP_SSL_VERIFY=false`, Go's
/// `InsecureSkipVerify`. The handshake signatures are still checked (so the peer holds the key
/// of the certificate it sent), but neither the chain nor the name is: anyone on the path can
/// pose as the agent and read the ACL token.
#[derive(Debug)]
pub(crate) struct DangerousAcceptAnyAgentCertificate(
    pub(crate) Arc<rustls::crypto::CryptoProvider>,
);

impl DangerousAcceptAnyAgentCertificate {
    fn algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.0.signature_verification_algorithms
    }
}

impl rustls::client::danger::ServerCertVerifier for DangerousAcceptAnyAgentCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    crate::tls::signature_checks_with!(DangerousAcceptAnyAgentCertificate::algorithms);
}
