//! Denial of service: clients that open TCP and send nothing, slow-loris handshakes, a thousand
//! half-open connections at once (legitimate clients must keep being served meanwhile), and
//! agent-sim's limits on request bodies and blocking queries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use consul_connect::listener::{ListenerConfig, Rejection};
use consul_connect::{ConnectListener, ConnectService, StaticResolver};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;
use support::agent::{sdk_client, start_agent, Raw};
use support::faults::{eventually, watch_config};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// A legitimate client's whole exchange (dial, handshake, authorize, echo) must finish within
/// this, well below the handshake timeouts the attacks below hold connections open for.
const LEGIT_BOUND: Duration = Duration::from_millis(1500);

struct Setup {
    _agent: agent_sim::Agent,
    web: ConnectService,
    _db: ConnectService,
    addr: SocketAddr,
    rejections: broadcast::Receiver<Rejection>,
}

/// agent-sim, `db` serving echo behind a listener configured with `config`, and `web`.
async fn setup(config: ListenerConfig) -> Setup {
    let agent = start_agent().await;
    let client = sdk_client(&agent);
    let service = |name: &'static str| {
        let client = client.clone();
        async move {
            let s = ConnectService::builder(name)
                .agent(client)
                .watch_config(watch_config())
                .build()
                .await
                .unwrap();
            s.ready_timeout(Duration::from_secs(10)).await.unwrap();
            s
        }
    };
    let db = service("db").await;
    let web = service("web").await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener = ConnectListener::with_config(&db, tcp, config).unwrap();
    let addr = listener.local_addr();
    let rejections = listener.rejections();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = write.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
        }
    });
    Setup {
        _agent: agent,
        web,
        _db: db,
        addr,
        rejections,
    }
}

/// One legitimate exchange: dial db as web, send a line, read it back. Returns how long it took.
async fn legit_round_trip(web: &ConnectService, addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let exchange = async {
        let stream = web
            .dialer()
            .dial(&StaticResolver::new(addr.to_string(), "db"))
            .await
            .map_err(|e| e.to_string())?;
        let (read, mut write) = tokio::io::split(stream);
        write
            .write_all(b"legit\n")
            .await
            .map_err(|e| e.to_string())?;
        match BufReader::new(read).lines().next_line().await {
            Ok(Some(line)) if line == "legit" => Ok(()),
            other => Err(format!("no echo: {other:?}")),
        }
    };
    match tokio::time::timeout(LEGIT_BOUND, exchange).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no echo within {LEGIT_BOUND:?}")),
    }
}

/// Reads until the server closes the connection (EOF or reset) or `limit` passes; returns
/// when it closed, or None.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Instant> {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            // A TLS alert or other bytes: keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

/// A real TLS ClientHello, as a slow-loris client would dribble it.
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("db").unwrap())
            .unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert!(hello.len() > 100, "a ClientHello: {} bytes", hello.len());
    assert_eq!(hello[0], 0x16, "a TLS handshake record");
    hello
}

/// Counts the rejections reported so far, including those a lagging receiver missed.
fn drain(rejections: &mut broadcast::Receiver<Rejection>, seen: &mut Vec<Rejection>) -> usize {
    let mut missed = 0;
    loop {
        match rejections.try_recv() {
            Ok(r) => seen.push(r),
            Err(broadcast::error::TryRecvError::Lagged(n)) => missed += n as usize,
            Err(_) => return missed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(400);
    let mut s = setup(ListenerConfig::default().handshake_timeout(timeout)).await;
    // Before the connect: the server's clock starts at its accept, which can come before the
    // client's connect returns.
    let opened = Instant::now();
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    let local = idle.local_addr().unwrap();

    let closed = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("the server closes an idle connection");
    let held = closed - opened;
    assert!(held >= timeout, "closed after {held:?}, before the timeout");
    assert!(
        held <= timeout + Duration::from_secs(2),
        "held {held:?} for a {timeout:?} timeout"
    );
    let rejection = tokio::time::timeout(Duration::from_secs(2), s.rejections.recv())
        .await
        .expect("the timeout is reported")
        .unwrap();
    assert_eq!(rejection.remote, local);
    assert!(rejection.peer.is_none());
    assert!(
        rejection.reason.contains("handshake timed out"),
        "{}",
        rejection.reason
    );
    legit_round_trip(&s.web, s.addr).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_handshakes_are_cut_off_and_others_are_served() {
    let timeout = Duration::from_secs(2);
    let mut s = setup(ListenerConfig::default().handshake_timeout(timeout)).await;
    let hello = Arc::new(client_hello());
    let dribbled = Arc::new(AtomicUsize::new(0));
    const LORISES: usize = 20;

    let mut lorises = tokio::task::JoinSet::new();
    for _ in 0..LORISES {
        let hello = hello.clone();
        let dribbled = dribbled.clone();
        let addr = s.addr;
        lorises.spawn(async move {
            // Timed from before the connect: the server's clock starts at its accept, which
            // can come before this task runs again after the connect.
            let opened = Instant::now();
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let mut sent = 0;
            let mut buf = [0u8; 64];
            // One byte of the ClientHello every 100 ms, until the server hangs up.
            loop {
                if sent < hello.len() {
                    if tcp.write_all(&hello[sent..=sent]).await.is_err() {
                        return (opened.elapsed(), sent);
                    }
                    sent += 1;
                    dribbled.fetch_add(1, Ordering::Relaxed);
                }
                match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return (opened.elapsed(), sent),
                    _ => {}
                }
            }
        });
    }
    // Every loris has started its hello: now a legitimate client must get through.
    eventually(Duration::from_secs(5), "the lorises dribbling", || {
        dribbled.load(Ordering::Relaxed) >= 3 * LORISES
    })
    .await;
    let took = legit_round_trip(&s.web, s.addr)
        .await
        .expect("served despite the slow lorises");
    let mut seen = Vec::new();
    assert_eq!(drain(&mut s.rejections, &mut seen), 0);
    assert!(seen.is_empty(), "no loris was cut off yet: {seen:?}");
    eprintln!("legitimate round trip among {LORISES} slow lorises: {took:?}");

    let mut cut = 0;
    while let Some(result) = tokio::time::timeout(Duration::from_secs(10), lorises.join_next())
        .await
        .expect("every loris is cut off")
    {
        let (held, sent) = result.unwrap();
        assert!(held >= timeout, "cut after {held:?}");
        assert!(held <= timeout + Duration::from_secs(2), "held {held:?}");
        assert!(
            sent < hello.len(),
            "cut off while still sending ({sent} of {} bytes): the timeout bounds the whole \
             handshake, not the silence",
            hello.len()
        );
        cut += 1;
    }
    assert_eq!(cut, LORISES);
    eventually(Duration::from_secs(2), "every loris reported", || {
        drain(&mut s.rejections, &mut seen);
        seen.len() >= LORISES
    })
    .await;
    assert!(
        seen.iter().all(|r| r.reason.contains("timed out")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_do_not_starve_legitimate_clients() {
    const HALF_OPEN: usize = 1000;
    let timeout = Duration::from_secs(4);
    let mut s = setup(ListenerConfig::default().handshake_timeout(timeout)).await;
    let hello = client_hello();
    let attack_started = Instant::now();
    let mut attackers = Vec::with_capacity(HALF_OPEN);
    for i in 0..HALF_OPEN {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        // A third send nothing, the rest a few bytes of a handshake they never finish.
        if i % 3 != 0 {
            tcp.write_all(&hello[..i % 7 + 1]).await.unwrap();
        }
        attackers.push(tcp);
    }

    for round in 0..5 {
        let took = legit_round_trip(&s.web, s.addr)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        eprintln!("legitimate round trip {round} among {HALF_OPEN} half-open: {took:?}");
    }
    let mut seen = Vec::new();
    let missed = drain(&mut s.rejections, &mut seen);
    assert!(
        attack_started.elapsed() < timeout && seen.is_empty() && missed == 0,
        "the half-open connections were still pending while the legitimate ones were served \
         ({:?} since the attack began, {} refused)",
        attack_started.elapsed(),
        seen.len() + missed
    );

    // Then every one of them is closed by the server, and reported.
    let mut closers = tokio::task::JoinSet::new();
    for mut tcp in attackers {
        closers.spawn(async move { closed_within(&mut tcp, Duration::from_secs(15)).await });
    }
    let mut closed = 0;
    while let Some(result) = closers.join_next().await {
        let at = result.unwrap().expect("closed by the server");
        assert!(at - attack_started >= timeout);
        closed += 1;
    }
    assert_eq!(closed, HALF_OPEN);
    let mut reported = 0;
    eventually(Duration::from_secs(5), "all rejections reported", || {
        reported += drain(&mut s.rejections, &mut seen);
        reported + seen.len() >= HALF_OPEN
    })
    .await;
    assert_eq!(reported + seen.len(), HALF_OPEN);
    assert!(seen.iter().all(|r| r.reason.contains("timed out")));
    legit_round_trip(&s.web, s.addr).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_max_pending_do_not_starve_legitimate_clients() {
    let max_pending = 16;
    let s = setup(
        ListenerConfig::default()
            .handshake_timeout(Duration::from_secs(3))
            .max_pending(max_pending),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 * max_pending {
        idle.push(TcpStream::connect(s.addr).await.unwrap());
    }
    let result = legit_round_trip(&s.web, s.addr).await;
    assert!(
        result.is_ok(),
        "{} idle connections from one address hold all {max_pending} handshake slots: {result:?}",
        idle.len()
    );
}

/// Sends `body` with `method` to the agent and returns the status, without panicking on a
/// transport error.
async fn send(addr: SocketAddr, method: &str, path: &str, body: Bytes) -> Result<u16, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(body))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// A valid JSON intention from `source` to db, `bytes` long (padded with whitespace, which
/// JSON allows between tokens; the description is limited to 512 bytes).
fn intention_body(bytes: usize, source: &str) -> Bytes {
    let head = format!(r#"{{"SourceName":"{source}","DestinationName":"db","#);
    let tail = r#""Action":"allow"}"#;
    let mut body = String::with_capacity(bytes);
    body.push_str(&head);
    body.push_str(&" ".repeat(bytes - head.len() - tail.len()));
    body.push_str(tail);
    assert_eq!(body.len(), bytes);
    Bytes::from(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sim_refuses_oversize_bodies_with_413() {
    let agent = start_agent().await;
    let addr = agent.addr();
    let limit = agent_sim::http::MAX_BODY_BYTES;
    let two_mib = intention_body(2 << 20, "big");
    let routes = [
        ("POST", "/v1/connect/intentions".to_owned()),
        ("PUT", "/v1/agent/service/register".to_owned()),
        ("PUT", "/v1/connect/ca/configuration".to_owned()),
        ("POST", "/v1/agent/connect/authorize".to_owned()),
    ];
    for (method, path) in &routes {
        let status = send(addr, method, path, two_mib.clone()).await;
        assert_eq!(status, Ok(413), "{method} {path} with 2 MiB");
    }
    // An existing intention's update goes through the same limit.
    let created = Raw::new(&agent)
        .post(
            "/v1/connect/intentions",
            r#"{"SourceName":"web","DestinationName":"db","Action":"allow"}"#,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.json()["ID"].as_str().unwrap().to_owned();
    let path = format!("/v1/connect/intentions/{id}");
    assert_eq!(send(addr, "PUT", &path, two_mib.clone()).await, Ok(413));

    // The limit is where agent-sim says: a valid intention just under it is taken.
    let under = send(
        addr,
        "POST",
        "/v1/connect/intentions",
        intention_body(limit - 1024, "under"),
    )
    .await;
    assert_eq!(under, Ok(200), "a {} byte intention", limit - 1024);
    let over = send(
        addr,
        "POST",
        "/v1/connect/intentions",
        intention_body(limit + 1, "over"),
    )
    .await;
    assert_eq!(over, Ok(413), "one byte over {limit}");

    // A chunked body (no Content-Length) is cut off at the limit as well.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = tcp.split();
    let writer = async {
        let head = format!(
            "POST /v1/connect/intentions HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..32 {
            write
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            write.write_all(&chunk).await?;
            write.write_all(b"\r\n").await?;
        }
        write.write_all(b"0\r\n\r\n").await
    };
    let reader = async {
        let mut answer = vec![0u8; 64];
        let n = read.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let (_, answer) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the agent answers a streamed oversize body");
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "chunked 2 MiB body answered {answer:?}"
    );
    // The agent is still serving.
    assert_eq!(
        Raw::new(&agent)
            .get("/v1/agent/connect/ca/roots")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sim_bounds_blocking_queries_per_client() {
    const QUERIES: usize = 300;
    const CONSUL_LIMIT: usize = 200;
    let agent = start_agent().await;
    let addr = agent.addr();
    let index = Raw::new(&agent)
        .get("/v1/agent/connect/ca/roots")
        .await
        .index();
    let path = format!("/v1/agent/connect/ca/roots?index={index}&wait=30s");
    let mut queries = tokio::task::JoinSet::new();
    for _ in 0..QUERIES {
        let path = path.clone();
        queries.spawn(async move { send(addr, "GET", &path, Bytes::new()).await });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut refused = 0;
    let mut answered = 0;
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, queries.join_next()).await {
        match result.unwrap() {
            Ok(429) | Err(_) => refused += 1,
            Ok(_) => answered += 1,
        }
    }
    let held = QUERIES - refused - answered;
    // The agent still answers others while it holds them: another client, that is another
    // address, since agent-sim (as Consul's http_max_conns_per_client) also caps the
    // connections of one address.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(addr).await.unwrap();
    other
        .write_all(b"GET /v1/agent/self HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    other.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        held <= CONSUL_LIMIT,
        "{held} blocking queries from one client held open after 2 s ({refused} refused, \
         {answered} answered early); Consul would refuse those past {CONSUL_LIMIT}"
    );
}

/// A client still sending an oversize body reads agent-sim's 413 instead of a reset: after
/// answering early, agent-sim drains what keeps arriving before it closes, as Go's HTTP server
/// does. 64 MiB is more than the loopback socket buffers hold, so without the drain the
/// client's writes fail once agent-sim closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_an_oversize_body_reads_the_413() {
    let agent = start_agent().await;
    let addr = agent.addr();
    let len = 64usize << 20;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /v1/connect/intentions HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n"
        );
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..len / chunk.len() {
            write.write_all(&chunk).await?;
        }
        write.flush().await
    });
    let mut answer = Vec::new();
    let read_all = tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut answer));
    let got = read_all.await.expect("agent-sim closes the connection");
    let written = writer.await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        written.is_ok(),
        "the body write failed: {written:?}; read {answer:?}"
    );
    assert!(got.is_ok(), "{got:?}");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
