//! With the `axum` feature: `ConnectListener` as an `axum::serve::Listener`, and `Caller` as
//! connect info and an extractor.

use std::io;
use std::net::SocketAddr;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::FromRequestParts;
use axum::serve::{IncomingStream, Listener};
use http::request::Parts;
use http::StatusCode;

use super::{accept_authorized, AuthorizedStream, Caller};
use crate::listener::ConnectListener;

/// `axum::serve(listener, app)` over Connect. Connections arrive already verified and
/// authorized; the address is the client's. If the TCP listener itself fails (transient
/// accept errors are retried inside the listener), the failure is logged and no further
/// connection is accepted, while open ones carry on.
impl Listener for ConnectListener {
    type Io = AuthorizedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match accept_authorized(self).await {
            Ok(stream) => {
                let remote = stream.caller().remote_addr();
                (stream, remote)
            }
            Err(e) => {
                tracing::error!(error = %e, "the Connect listener failed; accepting no more connections");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnectListener::local_addr(self))
    }
}

/// `app.into_make_service_with_connect_info::<Caller>()` gives handlers
/// `ConnectInfo<Caller>` (or just `Caller`, the extractor below).
impl Connected<IncomingStream<'_, ConnectListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, ConnectListener>) -> Self {
        stream.io().caller().clone()
    }
}

/// The caller from the request extensions ([`super::serve`]) or from axum's connect info
/// (`axum::serve` with `into_make_service_with_connect_info::<Caller>()`). Without
/// either, the request is answered 500: the server is set up wrongly.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        match parts.extensions.get::<ConnectInfo<Caller>>() {
            Some(ConnectInfo(caller)) => Ok(caller.clone()),
            None => Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "no Connect caller: serve with consul_connect::http::serve, or axum::serve \
                 with into_make_service_with_connect_info::<Caller>()",
            )),
        }
    }
}
