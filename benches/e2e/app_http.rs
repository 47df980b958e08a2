//! HTTP/2 over Connect (see the crate docs in `main.rs`).

use super::*;

/// The body each HTTP/2 request carries.
pub(crate) const APP_BODY: usize = 1024;

/// HTTP requests over one established connection, the same hyper and the same axum handler on
/// both sides: raw tokio-rustls against a Connect connection to `consul_connect::http::serve`.
/// HTTP/2 as the SDK's own clients negotiate it, and HTTP/1.1 as clients that do not offer
/// `h2` speak it (Go's Connect SDK among them).
pub(crate) async fn app_http(
    scale: &Scale,
    (raw_client, raw_server): (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>),
    (web, db): (&ConnectService, &ConnectService),
    table: &mut Table,
) {
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
    );
    let (h2, h1) = (b"h2".to_vec(), b"http/1.1".to_vec());

    // The raw server does what `serve_connection` does, with hyper alone.
    let mut server = (*raw_server).clone();
    server.alpn_protocols = vec![h2.clone(), h1.clone()];
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = listener.local_addr().unwrap();
    let raw_app = hyper_util::service::TowerToHyperService::new(app.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tcp.set_nodelay(true).unwrap();
            let (acceptor, raw_app) = (acceptor.clone(), raw_app.clone());
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let io = TokioIo::new(tls);
                if io.inner().get_ref().1.alpn_protocol() == Some(b"h2") {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, raw_app)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(io, raw_app)
                        .await;
                }
            });
        }
    });
    let listener = ConnectListener::bind(db, "127.0.0.1:0").await.unwrap();
    let connect_addr = listener.local_addr();
    tokio::spawn(consul_connect::http::serve(listener, app));

    let raw_tls = |alpn: Vec<u8>| {
        let mut client = (*raw_client).clone();
        client.alpn_protocols = vec![alpn];
        async move {
            let tcp = TcpStream::connect(raw_addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = ServerName::IpAddress(raw_addr.ip().into());
            TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap()
        }
    };
    // The SDK's dialer offers h2 and http/1.1; an HTTP/1.1-only client offers http/1.1 alone.
    let dial = |alpn: Vec<u8>| {
        let dialer = web.dialer().alpn([alpn]);
        let resolver = StaticResolver::new(connect_addr.to_string(), "db");
        async move { dialer.dial(&resolver).await }
    };
    let connect_h2 = dial(h2.clone()).await.unwrap();
    let connect_h1 = dial(h1.clone()).await.unwrap();
    let raw_h2 = raw_tls(h2.clone()).await;
    let raw_h1 = raw_tls(h1.clone()).await;
    for (alpn, tls) in [
        (&h2, raw_h2.get_ref().1.alpn_protocol()),
        (&h2, connect_h2.get_ref().1.alpn_protocol()),
        (&h1, raw_h1.get_ref().1.alpn_protocol()),
        (&h1, connect_h1.get_ref().1.alpn_protocol()),
    ] {
        assert_eq!(tls, Some(&alpn[..]));
    }
    // (label, concurrency, [raw, Connect])
    let figures = [
        (
            "HTTP/2",
            1,
            [AppSender::h2(raw_h2).await, AppSender::h2(connect_h2).await],
        ),
        (
            "HTTP/1.1",
            1,
            [AppSender::h1(raw_h1).await, AppSender::h1(connect_h1).await],
        ),
    ];
    let names = ["raw tokio-rustls + hyper", "Connect (http::serve)"];
    let concurrencies = |label: &str| {
        if label == "HTTP/2" {
            vec![1usize, 16]
        } else {
            vec![1]
        }
    };
    // Per figure, per target: one load per round; rounds interleave the two targets.
    let mut loads: Vec<(String, usize, [Vec<Load>; 2])> = Vec::new();
    for (label, _, _) in &figures {
        for c in concurrencies(label) {
            loads.push((label.to_string(), c, Default::default()));
        }
    }
    let rounds = scale.hs_rounds + 1;
    let secs = scale.http_secs / 2.0;
    for round in 0..rounds {
        for (label, concurrency, per_target) in &mut loads {
            let senders = &figures.iter().find(|f| f.0 == label.as_str()).unwrap().2;
            for (i, sender) in senders.iter().enumerate() {
                let load = least_disturbed(|| app_load(sender.clone(), *concurrency, secs)).await;
                assert_eq!(
                    load.failed, 0,
                    "{label} {}: {:?}",
                    names[i], load.first_error
                );
                let mut latencies = load.latencies.clone();
                let (p50, p99) = percentiles(&mut latencies);
                println!(
                    "  round {round}: {label} POST {APP_BODY} B, {:<26} {concurrency:>2} in flight {:>7.0} req/s  p50 {}  p99 {}, {} CPU and {:.2} context switches each  (others {:.0}% CPU)",
                    names[i],
                    load.rate(),
                    us(p50),
                    us(p99),
                    us(load.cpu_per_op()),
                    load.switches_per_op(),
                    load.foreign * 100.0
                );
                noted(
                    format!("{label} {} c={concurrency}", names[i]),
                    load.foreign,
                );
                per_target[i].push(load);
            }
        }
    }
    // The median round's rate, p50 and CPU; p99 over every round's requests.
    let stats = |loads: &[Load]| {
        let p50s: Vec<f64> = loads
            .iter()
            .map(|l| percentiles(&mut l.latencies.clone()).0.as_secs_f64())
            .collect();
        let mut all: Vec<Duration> = loads.iter().flat_map(|l| l.latencies.clone()).collect();
        let (_, p99) = percentiles(&mut all);
        let rates: Vec<f64> = loads.iter().map(Load::rate).collect();
        let cpus: Vec<f64> = loads.iter().map(|l| l.cpu_per_op().as_secs_f64()).collect();
        (
            median(&rates),
            Duration::from_secs_f64(median(&p50s)),
            p99,
            Duration::from_secs_f64(median(&cpus)),
        )
    };
    let fmt = |(rate, p50, p99, cpu): (f64, Duration, Duration, Duration)| {
        format!(
            "{rate:.0} req/s, p50 {} p99 {}, {} CPU",
            us(p50),
            us(p99),
            us(cpu)
        )
    };
    for (label, concurrency, per_target) in &loads {
        let (r, c) = (stats(&per_target[0]), stats(&per_target[1]));
        let what = |i: usize| {
            format!(
                "{label} POST {APP_BODY} B, one connection, {concurrency} in flight: {}",
                names[i]
            )
        };
        table.row(
            what(0),
            fmt(r),
            "(baseline)".into(),
            String::new(),
            String::new(),
            None,
        );
        let cpu = c.3.as_secs_f64() / r.3.as_secs_f64();
        let ratio = if *concurrency == 1 {
            format!(
                "{:.2} (p50), CPU {cpu:.2}",
                c.1.as_secs_f64() / r.1.as_secs_f64()
            )
        } else {
            format!("{:.2} (rate), CPU {cpu:.2}", c.0 / r.0)
        };
        table.row(what(1), fmt(c), fmt(r), ratio, String::new(), None);
    }
    table.note(format!(
        "HTTP over Connect: one established connection each, requests of {APP_BODY} B answered by \
         the same axum handler, hyper on both sides. Raw: tokio-rustls and hyper's HTTP/2 or \
         HTTP/1.1 server by ALPN, as `serve_connection` chooses; Connect: \
         `consul_connect::http::serve` (caller identity attached to each request; HTTP/1 \
         connections wrapped in `http::PollAgain`), reached with the SDK's dialer offering ALPN \
         `h2` or `http/1.1` alone. \
         Latency at 1 in flight, rate at 16; the median of {rounds} interleaved rounds."
    ));
}

/// One established HTTP connection to send requests on.
#[derive(Clone)]
pub(crate) enum AppSender {
    H1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl AppSender {
    pub(crate) async fn h2<IO>(io: IO) -> Self
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        AppSender::H2(sender)
    }

    pub(crate) async fn h1<IO>(io: IO) -> Self
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        AppSender::H1(Arc::new(tokio::sync::Mutex::new(sender)))
    }

    /// POSTs `body` to `/echo` and checks the answer.
    pub(crate) async fn send(self, body: Bytes) -> Result<(), String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/echo")
            .header(http::header::HOST, "db")
            .body(Full::new(body))
            .unwrap();
        let response = match self {
            AppSender::H2(mut sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
            AppSender::H1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| e.to_string())?;
        let ok = response.status() == StatusCode::OK;
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if ok && answer.to_bytes() == APP_BODY.to_string().as_bytes() {
            Ok(())
        } else {
            Err("unexpected answer".to_owned())
        }
    }
}

/// `concurrency` requests in flight on `sender`'s connection for `secs`, after a warm-up.
pub(crate) async fn app_load(sender: AppSender, concurrency: usize, secs: f64) -> Load {
    let body = Bytes::from(vec![b'x'; APP_BODY]);
    for _ in 0..50 {
        sender.clone().send(body.clone()).await.unwrap();
    }
    closed_loop(concurrency, secs, true, move || {
        sender.clone().send(body.clone())
    })
    .await
}
