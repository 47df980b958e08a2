//! What one client can hold open: connections per client address and in total, and how long
//! a new connection may stay silent. Without these, a few hundred connections that send their
//! headers slowly (or not at all) held every descriptor and locked real clients out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a connection may take to start its request, and (through hyper's
/// `header_read_timeout`) to send its headers.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one client address may hold (Consul's `limits.http_max_conns_per_client`).
pub(crate) const MAX_CONNS_PER_CLIENT: usize = 200;
/// Connections in total, kept well below usual descriptor limits.
pub(crate) const MAX_CONNS: usize = 2048;

/// Open connections, per client address and in total.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    per_client: usize,
    total: usize,
    /// How long a connection may take to start its request, and to send its headers.
    pub(crate) header_timeout: Duration,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; its slot is released on drop.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub(crate) fn new(per_client: usize, total: usize, header_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            per_client,
            total,
            header_timeout,
            open: Mutex::default(),
        })
    }

    /// A slot for a connection from `ip`, or `None` when the client or the server is full
    /// (the caller closes the connection, as Consul's `connlimit` does).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_ip) = &mut *open;
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= self.per_client || *total >= self.total {
            if *count == 0 {
                by_ip.remove(&ip);
            }
            return None;
        }
        *count += 1;
        *total += 1;
        Some(ConnPermit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Whether the client sent something within `timeout`. hyper's own header timeout only
/// starts once it knows the protocol, which takes a first byte.
pub(crate) async fn spoke_in_time(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut byte)).await,
        Ok(Ok(1..))
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn caps_per_client_and_in_total() {
        let limits = ConnLimits::new(2, 3, HEADER_READ_TIMEOUT);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "third from one client");
        let _b1 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "over the total");
        drop(a1);
        assert!(
            limits.admit(b).is_some(),
            "a slot freed by a closed connection"
        );
    }

    /// A connection that sends nothing, and one that stops halfway through its headers, are
    /// closed by the server (they stayed open for good before).
    #[tokio::test]
    async fn silent_and_slow_clients_are_closed() {
        let store = std::sync::Arc::new(
            crate::state::Store::new(
                test_settings(),
                std::sync::Arc::new(crate::clock::SystemClock::new()),
            )
            .unwrap(),
        );
        let cache = std::sync::Arc::new(crate::cache::ConnectCache::new(
            store.clone(),
            Default::default(),
        ));
        let app = crate::http::router(crate::http::AppState::new(store, cache));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_millis(300);
        let limits = ConnLimits::new(MAX_CONNS_PER_CLIENT, MAX_CONNS, timeout);
        let server = tokio::spawn(crate::http::server::serve_with(
            crate::http::server::Listener::Tcp(listener),
            app,
            std::future::pending(),
            limits,
            false,
        ));
        for sent in [&b""[..], b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\n"] {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            client.write_all(sent).await.unwrap();
            let mut rest = Vec::new();
            let closed =
                tokio::time::timeout(HEADER_READ_TIMEOUT * 2, client.read_to_end(&mut rest)).await;
            assert!(
                closed.is_ok(),
                "still open after {:?} having sent {sent:?}",
                HEADER_READ_TIMEOUT * 2
            );
        }
        server.abort();
    }

    fn test_settings() -> crate::state::StoreSettings {
        crate::state::StoreSettings {
            datacenter: "dc1".into(),
            node_name: "node1".into(),
            node_id: uuid::Uuid::new_v4().to_string(),
            node_address: "127.0.0.1".into(),
            ca: Default::default(),
            acl: Default::default(),
            version: Default::default(),
        }
    }
}
