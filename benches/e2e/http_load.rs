//! agent-sim over HTTP (see the crate docs in `main.rs`).

use super::*;

/// One keep-alive HTTP/1.1 connection to agent-sim.
pub(crate) struct Http {
    pub(crate) sender: SendRequest<Full<Bytes>>,
    pub(crate) host: String,
}

impl Http {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self {
            sender,
            host: addr.to_string(),
        }
    }

    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, Bytes) {
        let req = Req::new(method, path, body);
        self.request(&req).await
    }

    pub(crate) async fn request(&mut self, req: &Req) -> (StatusCode, Bytes) {
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(req.path.as_str())
            .header(http::header::HOST, self.host.as_str());
        if !req.body.is_empty() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(req.body.clone())).unwrap();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }
}

/// A request to repeat.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) body: Bytes,
}

impl Req {
    pub(crate) fn new(method: Method, path: &str, body: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            body: Bytes::from(body.to_owned()),
        }
    }
}

/// `clients` keep-alive connections sending `req` back to back for `secs`.
pub(crate) async fn http_load(addr: SocketAddr, req: &Req, clients: usize, secs: f64) -> Load {
    let req = Arc::new(Req {
        method: req.method.clone(),
        path: req.path.clone(),
        body: req.body.clone(),
    });
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Http::connect(addr).await);
    }
    // Warm up each connection (and the agent cache entry) before timing.
    for conn in &mut conns {
        for _ in 0..50 {
            let (status, body) = conn.request(&req).await;
            assert_eq!(status, StatusCode::OK, "{body:?}");
        }
    }
    let conns = Arc::new(tokio::sync::Mutex::new(conns));
    let mut total = least_disturbed(|| http_load_once(conns.clone(), req.clone(), secs)).await;
    assert_eq!(total.failed, 0, "{} {}", req.method, req.path);
    let (p50, p99) = percentiles(&mut total.latencies);
    println!(
        "  {} {} clients={clients:<2} {:>7.0} req/s  p50 {}  p99 {}, {} CPU and {:.2} context switches each  (others {:.0}% CPU)",
        req.method,
        req.path,
        total.rate(),
        us(p50),
        us(p99),
        us(total.cpu_per_op()),
        total.switches_per_op(),
        total.foreign * 100.0
    );
    noted(
        format!("{} {} clients={clients}", req.method, req.path),
        total.foreign,
    );
    total
}

/// One timed run of [`http_load`] over the warmed-up connections.
pub(crate) async fn http_load_once(
    conns: Arc<tokio::sync::Mutex<Vec<Http>>>,
    req: Arc<Req>,
    secs: f64,
) -> Load {
    let mut conns = conns.lock().await;
    quiet().await;
    let cpu = Cpu::now();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = conns
        .drain(..)
        .map(|mut conn| {
            let req = req.clone();
            tokio::spawn(async move {
                let mut load = Load::default();
                while Instant::now() < until {
                    let t = Instant::now();
                    let (status, _) = conn.request(&req).await;
                    if status == StatusCode::OK {
                        load.ok += 1;
                        load.latencies.push(t.elapsed());
                    } else {
                        load.failed += 1;
                    }
                }
                (load, conn)
            })
        })
        .collect();
    let mut total = Load::default();
    for task in tasks {
        let (load, conn) = task.await.unwrap();
        total.ok += load.ok;
        total.failed += load.failed;
        total.latencies.extend(load.latencies);
        conns.push(conn);
    }
    total.secs = start.elapsed().as_secs_f64();
    (total.foreign, total.own_cpu) = cpu.since();
    total.switches = context_switches() - cpu.switches;
    total
}

pub(crate) fn http_rows(
    small: &[Load; 2],
    big: &[Load; 2],
    leaf: &[Load; 2],
    n_big: usize,
    table: &mut Table,
) {
    let stats = |load: &Load| {
        let mut latencies = load.latencies.clone();
        let (p50, p99) = percentiles(&mut latencies);
        (load.rate(), p50, p99)
    };
    let s = [stats(&small[0]), stats(&small[1])];
    let b = [stats(&big[0]), stats(&big[1])];
    let l = [stats(&leaf[0]), stats(&leaf[1])];
    let fmt = |(rate, p50, p99): (f64, Duration, Duration)| {
        format!("{rate:.0} req/s, p50 {} p99 {}", us(p50), us(p99))
    };
    // One client's p50 has the target; 16 clients' figures are shown beside it.
    let p50_rows = |table: &mut Table, what: &str, runs: &[(f64, Duration, Duration); 2]| {
        for (i, clients) in [1, 16].into_iter().enumerate() {
            let one = i == 0;
            table.row(
                format!("{what}, {clients} client(s)"),
                fmt(runs[i]),
                String::new(),
                String::new(),
                if one {
                    "p50 < 50 µs".into()
                } else {
                    String::new()
                },
                one.then(|| runs[0].1 < Duration::from_micros(50)),
            );
        }
    };
    p50_rows(table, "POST authorize, 10 intentions", &s);
    for (i, clients) in [1, 16].into_iter().enumerate() {
        let flat = b[i].1.as_secs_f64() / s[i].1.as_secs_f64();
        table.row(
            format!("POST authorize, {n_big} intentions, {clients} client(s)"),
            fmt(b[i]),
            format!("p50 {} at 10", us(s[i].1)),
            format!("{flat:.2} (p50)"),
            if i == 0 {
                "p50 < 50 µs, flat (≤ 1.2×)".into()
            } else {
                "flat (≤ 1.2×)".into()
            },
            Some(flat <= 1.2 && (i == 1 || b[0].1 < Duration::from_micros(50))),
        );
    }
    p50_rows(table, "GET leaf/db (cached)", &l);
    table.note(
        "agent-sim HTTP: each client is one keep-alive HTTP/1.1 connection (hyper) sending \
         requests back to back; latency is request sent to body received. The 100,000 \
         intentions are 8 exact sources per destination across 12,500 destinations; `db` keeps \
         the same 10 candidates, so only the table around it grows."
            .to_owned(),
    );
}

/// Ten intentions, all with `db` as destination or a wildcard one: web may connect.
pub(crate) fn ten_intentions() -> Vec<String> {
    let mut ten = vec![intention_body("web", "db", "allow")];
    ten.extend((0..8).map(|i| intention_body(&format!("src-{i}"), "db", "deny")));
    ten.push(intention_body("ops", "*", "deny"));
    ten
}

pub(crate) fn intention_body(source: &str, destination: &str, action: &str) -> String {
    serde_json::json!({
        "SourceName": source,
        "DestinationName": destination,
        "Action": action,
    })
    .to_string()
}

/// Creates `count` intentions (8 sources per destination `svc-N`) over 16 connections.
pub(crate) async fn add_intentions(addr: SocketAddr, count: usize) -> Duration {
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut http = Http::connect(addr).await;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= count {
                        break;
                    }
                    let body = intention_body(
                        &format!("src-{}", i % 8),
                        &format!("svc-{}", i / 8),
                        "deny",
                    );
                    let (status, answer) = http
                        .send(Method::POST, "/v1/connect/intentions", &body)
                        .await;
                    assert_eq!(status, StatusCode::OK, "{answer:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}
