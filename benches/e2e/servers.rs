//! Servers (see the crate docs in `main.rs`).

use super::*;

/// What a test server does with an accepted connection.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// Write one byte and close (the handshake benchmarks).
    Hello,
    /// Read an 8-byte length, swallow that many bytes, answer one byte (bulk transfer).
    Sink,
}

pub(crate) async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, mode: Mode) {
    match mode {
        Mode::Hello => {
            let _ = stream.write_all(b"k").await;
            let _ = stream.flush().await;
        }
        Mode::Sink => {
            let mut len = [0u8; 8];
            if stream.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(len);
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                match stream.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left -= n as u64,
                }
            }
            let _ = stream.write_all(b"k").await;
            let _ = stream.flush().await;
            // Wait for the client to close.
            let _ = stream.read(&mut buf).await;
        }
    }
}

pub(crate) async fn serve_raw(acceptor: TlsAcceptor, mode: Mode) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve_stream(tls, mode).await;
                }
            });
        }
    });
    addr
}

pub(crate) async fn serve_connect(
    service: &ConnectService,
    mode: Mode,
) -> (
    SocketAddr,
    tokio::sync::broadcast::Receiver<consul_connect::listener::Rejection>,
) {
    let mut listener = ConnectListener::bind(service, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let rejections = listener.rejections();
    tokio::spawn(async move {
        while let Ok((stream, _peer)) = listener.accept().await {
            tokio::spawn(serve_stream(stream, mode));
        }
    });
    (addr, rejections)
}

pub(crate) async fn service(
    builder: consul_connect::service::ConnectServiceBuilder,
) -> ConnectService {
    let service = builder.build().await.unwrap();
    service
        .ready_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    service
}
