//! An application-chosen crypto provider is used for every Connect handshake (its own test
//! binary: the provider is set once per process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use consul_connect::tls::{set_crypto_provider, ProviderAlreadySet};
use consul_connect::{ConnectListener, ConnectService, StaticResolver};
use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
use support::agent::{fast_watch, sdk_client, start_agent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_set_by_the_application_is_used() {
    // One suite only, and not the one aws-lc-rs prefers by default (AES-128-GCM).
    let mut provider = default_provider();
    provider.cipher_suites = vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    set_crypto_provider(Arc::new(provider)).unwrap();
    assert_eq!(
        set_crypto_provider(Arc::new(default_provider())),
        Err(ProviderAlreadySet),
        "the first provider stays"
    );

    let agent = start_agent().await;
    let client = sdk_client(&agent);
    let build = |name: &'static str| {
        let client = client.clone();
        async move {
            ConnectService::builder(name)
                .agent(client)
                .watch_config(fast_watch())
                .build_ready(std::time::Duration::from_secs(10))
                .await
                .unwrap()
        }
    };
    let (db, web) = (build("db").await, build("web").await);
    let mut listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let dialed = web
        .dialer()
        .dial(&StaticResolver::new(addr.to_string(), "db"))
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    for suite in [
        dialed.get_ref().1.negotiated_cipher_suite(),
        accepted.get_ref().1.negotiated_cipher_suite(),
    ] {
        assert_eq!(
            suite.map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
        );
    }
}
