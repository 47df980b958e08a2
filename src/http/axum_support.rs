//! With the `axum` feature: `Caller` as an axum extractor.
//!
//! `ConnectListener` is deliberately not an `axum::serve::Listener`: `axum::serve(listener,
//! app)` would compile and then give handlers no caller (axum passes connection data only
//! through `into_make_service_with_connect_info`). [`super::serve`] takes the same two
//! arguments and puts the [`Caller`] in every request:
//!
//! ```compile_fail
//! # async fn run(api: consul_connect::ConnectService, app: axum::Router) -> std::io::Result<()> {
//! let listener = consul_connect::ConnectListener::bind(&api, "127.0.0.1:9292").await?;
//! axum::serve(listener, app).await // error: ConnectListener is not an axum Listener
//! # }
//! ```
//!
//! ```no_run
//! # async fn run(api: consul_connect::ConnectService, app: axum::Router) -> std::io::Result<()> {
//! let listener = consul_connect::ConnectListener::bind(&api, "127.0.0.1:9292").await?;
//! consul_connect::http::serve(listener, app).await
//! # }
//! ```

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::StatusCode;

use super::Caller;

/// The caller from the request extensions, where every Connect server path of this crate
/// ([`super::serve`], [`super::serve_connection`], `grpc::incoming`) puts it. A router served
/// some other way (not over Connect) is answered 500: the server is set up wrongly.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "no Connect caller: this router is not served by consul_connect::http::serve",
        ))
    }
}
