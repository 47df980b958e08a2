//! Rotation under load: connections keep being made while the CA root rotates twice and every
//! leaf is re-issued; no handshake fails, every connection is authorized, and a client still
//! holding a leaf from before the rotations keeps being accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use consul_connect::agent::WatchConfig;
use consul_connect::{ConnectListener, ConnectService, StaticResolver};
use support::agent::{sdk_client, start_agent, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn service(client: &consul_connect::AgentClient, name: &str) -> ConnectService {
    let service = ConnectService::builder(name)
        .agent(client.clone())
        .watch_config(WatchConfig::default().min_interval(Duration::from_millis(5)))
        .build()
        .await
        .unwrap();
    service
        .ready_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    service
}

/// Waits until `service` holds a leaf other than `serial` (that is, the re-issued one).
async fn wait_for_new_leaf(service: &ConnectService, serial: &str) -> String {
    let mut updates = service.material_updates();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let status = service.status();
            match status.leaf_serial {
                Some(s)
                    if s != serial
                        && service
                            .material()
                            .is_some_and(|m| m.leaf_chain().len() == 2) =>
                {
                    return s
                }
                _ => updates.changed().await.unwrap(),
            }
        }
    })
    .await
    .expect("the leaf is re-issued after the rotation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handshake_fails_while_roots_rotate_twice() {
    let agent = start_agent().await;
    let client = sdk_client(&agent);
    let raw = Raw::new(&agent);
    let db = service(&client, "db").await;
    let web = service(&client, "web").await;
    // A client outside the SDK keeps presenting the leaf it had before the rotations.
    let old_leaf = raw.get("/v1/agent/connect/ca/leaf/stale").await.json();
    let stale_config = support::rawtls::client_with_leaf_pem(
        old_leaf["CertPEM"].as_str().unwrap(),
        old_leaf["PrivateKeyPEM"].as_str().unwrap(),
    );

    let mut listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let mut rejections = listener.rejections();
    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _peer)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).await.is_ok() {
                        let _ = stream.write_all(&byte).await;
                    }
                });
            }
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut workers = Vec::new();
    for i in 0..4 {
        let (stop, ok, failed, first_error) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let (web, stale_config) = (web.clone(), stale_config.clone());
        workers.push(tokio::spawn(async move {
            let resolver = StaticResolver::new(addr.to_string(), "db");
            let dialer = web.dialer();
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let mut byte = [i as u8];
                    if i == 3 {
                        // The old leaf, presented by a plain rustls client.
                        let tcp = tokio::net::TcpStream::connect(addr)
                            .await
                            .map_err(|e| e.to_string())?;
                        let mut stream = tokio_rustls::TlsConnector::from(stale_config.clone())
                            .connect(
                                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                                tcp,
                            )
                            .await
                            .map_err(|e| format!("old leaf: {e}"))?;
                        stream.write_all(&byte).await.map_err(|e| e.to_string())?;
                        stream
                            .read_exact(&mut byte)
                            .await
                            .map_err(|e| format!("old leaf, no echo: {e}"))?;
                    } else {
                        let mut stream = dialer.dial(&resolver).await.map_err(|e| e.to_string())?;
                        stream.write_all(&byte).await.map_err(|e| e.to_string())?;
                        stream
                            .read_exact(&mut byte)
                            .await
                            .map_err(|e| format!("no echo: {e}"))?;
                    }
                    Ok::<_, String>(())
                }
                .await;
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        first_error.lock().unwrap().get_or_insert(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    // Let the load settle, then rotate twice, each time until every watching service holds
    // its re-issued leaf (leaf, then the cross-signed root).
    let wait_for_progress = |count: Arc<AtomicU64>, at_least: u64| async move {
        tokio::time::timeout(Duration::from_secs(20), async {
            while count.load(Ordering::Relaxed) < at_least {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("connections are being made");
    };
    wait_for_progress(ok.clone(), 50).await;
    for round in 0..2 {
        let db_serial = db.status().leaf_serial.unwrap();
        let web_serial = web.status().leaf_serial.unwrap();
        let put = raw
            .put(
                "/v1/connect/ca/configuration",
                r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
            )
            .await;
        assert_eq!(put.status, 200, "rotation {round}: {}", put.body);
        wait_for_new_leaf(&db, &db_serial).await;
        wait_for_new_leaf(&web, &web_serial).await;
        let before = ok.load(Ordering::Relaxed);
        wait_for_progress(ok.clone(), before + 50).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let roots = raw.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(
        roots["Roots"].as_array().unwrap().len(),
        3,
        "two rotations: three roots"
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed; first: {:?}",
        ok + failed,
        first_error.lock().unwrap()
    );
    assert!(
        rejections.try_recv().is_err(),
        "the server refused a connection"
    );
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        ok,
        "every connection was authorized and accepted"
    );
    println!("{ok} connections across two root rotations, none failed");
}
