//! HTTP and gRPC over Connect against an embedded agent-sim, with real TLS: HTTP/1.1 and HTTP/2
//! chosen by ALPN, the caller's identity in handlers, refusals by intention, the Consul DNS
//! connector with its pool and timeout, tonic both ways, and curl as a foreign client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/grpc_echo/echo.rs"]
mod echo;
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use consul_connect::agent::AgentClient;
use consul_connect::dialer::{DialError, ServerRefusal};
use consul_connect::http::{
    serve, serve_connection, AuthorizedStream, Caller, ConnectConnector, ConnectorError, HttpClient,
};
use consul_connect::listener::Rejection;
use consul_connect::tls::ExpectedServer;
use consul_connect::{grpc, ConnectListener, ConnectService};
use echo::{EchoClient, EchoServer};
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use support::agent::{fast_watch, sdk_client, start_agent, temp_dir, Raw};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::TlsConnector;

const READY: Duration = Duration::from_secs(10);

async fn service(agent: &AgentClient, name: &str) -> ConnectService {
    let service = ConnectService::builder(name)
        .agent(agent.clone())
        .watch_config(fast_watch())
        .build()
        .await
        .unwrap();
    service.ready_timeout(READY).await.unwrap();
    service
}

/// Registers `name` as a Connect-native service at `addr`, as an application would.
async fn register(raw: &Raw, name: &str, addr: SocketAddr) {
    let body = serde_json::json!({
        "Name": name, "Port": addr.port(), "Address": addr.ip().to_string(),
        "Connect": {"Native": true},
    });
    let answer = raw
        .put("/v1/agent/service/register", &body.to_string())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

async fn intention(raw: &Raw, source: &str, destination: &str, action: &str) {
    let body = serde_json::json!({
        "SourceName": source, "DestinationName": destination, "Action": action,
    });
    let answer = raw.post("/v1/connect/intentions", &body.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

async fn next_rejection(rejections: &mut broadcast::Receiver<Rejection>) -> Rejection {
    tokio::time::timeout(Duration::from_secs(5), rejections.recv())
        .await
        .expect("a rejection is reported")
        .unwrap()
}

/// `GET /` answers who called and over which HTTP version.
fn hello_app() -> Router {
    Router::new().route(
        "/",
        get(|caller: Caller, version: Version| async move {
            format!("caller={} version={version:?}\n", caller.id())
        }),
    )
}

/// Serves `hello_app` for `service` with `http::serve`; returns its address and rejection
/// reports.
async fn start_http(service: &ConnectService) -> (SocketAddr, broadcast::Receiver<Rejection>) {
    let listener = ConnectListener::bind(service, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let rejections = listener.rejections();
    tokio::spawn(serve(listener, hello_app()));
    (addr, rejections)
}

/// A hand-made Connect dial to `server` at `addr` offering exactly `alpn`.
async fn dial_with_alpn(
    client: &ConnectService,
    addr: SocketAddr,
    server: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut config = (*client
        .client_config()
        .for_server(ExpectedServer::new(server)))
    .clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// A hand-made Connect dial offering exactly `alpn`, then one `GET /` spoken as HTTP/2 or
/// HTTP/1.1. Returns the response version and body.
async fn get_with_alpn(
    client: &ConnectService,
    addr: SocketAddr,
    server: &str,
    alpn: &[&[u8]],
    h2: bool,
) -> Result<(Version, String), String> {
    let io = TokioIo::new(dial_with_alpn(client, addr, server, alpn).await?);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = Request::get(format!("http://{server}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = Request::get("/")
            .header(http::header::HOST, server)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    let version = response.version();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        version,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_by_alpn_with_the_caller_seen_by_the_handler() {
    let agent = start_agent().await;
    let client = sdk_client(&agent);
    let db = service(&client, "db").await;
    let web = service(&client, "web").await;
    let web_id = web.identity().unwrap().to_string();

    let (addr, _rejections) = start_http(&db).await;
    // (ALPN offered, speak HTTP/2, version the handler must see)
    let cases: [(&[&[u8]], bool, &str); 4] = [
        (&[b"http/1.1"], false, "HTTP/1.1"),
        (&[b"h2", b"http/1.1"], true, "HTTP/2.0"),
        // No ALPN: the server tells the protocol from the client's first bytes.
        (&[], false, "HTTP/1.1"),
        (&[], true, "HTTP/2.0"),
    ];
    for (alpn, h2, version) in cases {
        let (seen, body) = get_with_alpn(&web, addr, "db", alpn, h2)
            .await
            .unwrap_or_else(|e| panic!("{alpn:?} h2={h2}: {e}"));
        assert_eq!(
            body,
            format!("caller={web_id} version={version}\n"),
            "{alpn:?}"
        );
        assert_eq!(format!("{seen:?}"), version);
    }
    // ALPN agreed on h2 but the client speaks HTTP/1.1: `serve` holds to ALPN.
    assert!(get_with_alpn(&web, addr, "db", &[b"h2"], false)
        .await
        .is_err());
}

/// `db` serving `app` through `serve`, and a Connect connection to it from `web` that offered
/// only `http/1.1`. Dropping the returned agent stops it.
async fn http1_from_web_to_db_serving(
    app: Router,
) -> (agent_sim::Agent, tokio_rustls::client::TlsStream<TcpStream>) {
    let agent = start_agent().await;
    let client = sdk_client(&agent);
    let db = service(&client, "db").await;
    let web = service(&client, "web").await;
    let listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    tokio::spawn(serve(listener, app));
    let tls = dial_with_alpn(&web, addr, "db", &[b"http/1.1"])
        .await
        .unwrap();
    (agent, tls)
}

/// Request bodies of every size arrive whole over one HTTP/1.1 keep-alive connection through
/// `serve`, whose HTTP/1 connections run inside `PollAgain` (bodies are where hyper's
/// connection task wakes itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_request_bodies_arrive_whole_through_serve() {
    let app = Router::new().route(
        "/count",
        axum::routing::post(|request: axum::extract::Request| async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
            format!("{} {sum}", body.len())
        }),
    );
    let (_agent, tls) = http1_from_web_to_db_serving(app).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for size in [0usize, 1, 1000, 64 * 1024, (1 << 20) + 7, 4 << 20] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
        let request = Request::post("/count")
            .header(http::header::HOST, "db")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_11);
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(String::from_utf8_lossy(&answer), format!("{size} {sum}"));
    }
}

/// An HTTP/1.1 upgrade through `serve` (its connections run inside `PollAgain`): the 101 goes
/// out, then the upgraded connection carries bytes both ways, as a WebSocket would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upgrades_work_through_serve() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Router::new().route(
        "/echo",
        get(|mut request: axum::extract::Request| async move {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 64];
                loop {
                    let n = io.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    io.write_all(&buf[..n]).await.unwrap();
                }
            });
            http::Response::builder()
                .status(http::StatusCode::SWITCHING_PROTOCOLS)
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, "echo")
                .body(axum::body::Body::empty())
                .unwrap()
        }),
    );
    let (_agent, tls) = http1_from_web_to_db_serving(app).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let request = Request::get("/echo")
        .header(http::header::HOST, "db")
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    for message in [&b"ping"[..], b"over the upgraded connection"] {
        io.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_client_reaches_a_service_by_consul_name_and_reuses_connections() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let client = sdk_client(&agent);
    let db = service(&client, "db").await;
    let web = service(&client, "web").await;
    let web_id = web.identity().unwrap().to_string();

    // A server that counts the connections it accepts.
    let mut listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let stream = AuthorizedStream::new(stream, peer).unwrap();
            tokio::spawn(serve_connection(stream, hello_app()));
        }
    });
    register(&raw, "db", addr).await;

    let http = HttpClient::new(&web);
    for _ in 0..3 {
        let response = http.get("http://db.service.consul/").await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), Version::HTTP_2, "ALPN h2 means HTTP/2");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("caller={web_id} version=HTTP/2.0\n"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one pooled connection");

    // Offering only http/1.1: the same server answers over HTTP/1.1. (How many connections
    // hyper-util's pool opens for sequential HTTP/1.1 requests depends on when it sees the last
    // one idle again, so it is not counted.)
    let http1: HttpClient = HttpClient::with_connector(ConnectConnector::new(&web).http1_only());
    for _ in 0..3 {
        let response = http1.get("http://db.service.consul/").await.unwrap();
        assert_eq!(response.version(), Version::HTTP_11);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("caller={web_id} version=HTTP/1.1\n"));
    }
    let stream = web
        .dialer()
        .alpn([b"http/1.1".to_vec()])
        .dial_service("db")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // Case, datacenter and port: the same service.
    let response = http
        .get("http://DB.Service.dc1.consul:8080/")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Names the connector refuses, with the Go SDK's messages.
    let err = http
        .get("http://db.service.example.com/")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.connector_error(),
            Some(ConnectorError::InvalidDomain { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("invalid Consul DNS domain: "),
        "{err}"
    );
    for (uri, expected) in [
        ("http://db.query.consul/", "Query not found"),
        (
            "http://tag.db.service.consul/",
            "unsupported Consul DNS domain: ",
        ),
        (
            "http://nosuch.service.consul/",
            "no healthy instances found",
        ),
    ] {
        let err = http.get(uri).await.unwrap_err();
        assert!(err.connector_error().is_some(), "{uri}: {err:?}");
        assert!(err.to_string().contains(expected), "{uri}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_timeout_bounds_a_server_that_never_answers() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let client = sdk_client(&agent);
    let web = service(&client, "web").await;
    // Accepts TCP (the kernel does) but never speaks TLS.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    register(&raw, "slow", silent.local_addr().unwrap()).await;

    let http: HttpClient = HttpClient::with_connector(
        ConnectConnector::new(&web).dial_timeout(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let err = http.get("http://slow.service.consul/").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(
            err.connector_error(),
            Some(ConnectorError::Dial(DialError::Timeout { .. }))
        ),
        "{err:?}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_caller_gets_no_http_response() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let client = sdk_client(&agent);
    let db = service(&client, "db").await;
    let web = service(&client, "web").await;
    let api = service(&client, "api").await;
    let (addr, mut rejections) = start_http(&db).await;
    register(&raw, "db", addr).await;
    intention(&raw, "web", "db", "deny").await;

    let err = HttpClient::new(&web)
        .get("http://db.service.consul/")
        .await
        .expect_err("a denied caller gets no response");
    let rejection = next_rejection(&mut rejections).await;
    assert_eq!(rejection.peer.as_ref().map(|p| p.service()), Some("web"));
    assert!(
        rejection.reason.contains("default/web => default/db (ID: ")
            && rejection.reason.contains("Action: DENY)"),
        "{}",
        rejection.reason
    );
    eprintln!("denied client saw: {err}");

    // The server itself is fine: another caller gets through.
    let response = HttpClient::new(&api)
        .get("http://db.service.consul/")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// The refusal somewhere in an HTTP client error's causes. h2 keeps only the kind and text of
/// an I/O error that ends a connection (`h2::Error::Io`), so on an open HTTP/2 connection the
/// alert is known by its text alone.
fn refusal_in(err: &(dyn std::error::Error + 'static)) -> Option<ServerRefusal> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(ServerRefusal::from_io)
        {
            return Some(found);
        }
        if e.to_string() == "received fatal alert: AccessDenied" {
            return Some(ServerRefusal::Denied);
        }
        cause = e.source();
    }
    None
}

/// Issue #14: a deny reaches a pooled HTTP/2 connection that is already open, served by
/// `http::serve`, with either authorizer: a request in flight on it fails within a second,
/// and another caller's connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_closes_an_open_http2_connection_for_both_authorizers() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let client = sdk_client(&agent);
    let web = service(&client, "web").await;
    let api = service(&client, "api").await;
    let by_agent = service(&client, "db").await;
    let in_handshake = ConnectService::builder("inventory")
        .agent(client.clone())
        .watch_config(fast_watch())
        .intentions_authorizer(consul_connect::intentions::DefaultDecision::AclsDisabled)
        .build()
        .await
        .unwrap();
    in_handshake.ready_timeout(READY).await.unwrap();

    // `/` answers the caller's address (one per connection); `/hang` never answers, and says
    // when it was reached.
    let (entered, mut hanging) = tokio::sync::mpsc::unbounded_channel::<()>();
    let app = Router::new()
        .route(
            "/",
            get(|caller: Caller| async move { caller.remote_addr().to_string() }),
        )
        .route(
            "/hang",
            get(move || {
                let _ = entered.send(());
                std::future::pending::<String>()
            }),
        );
    let (web_http, api_http) = (HttpClient::new(&web), HttpClient::new(&api));
    let body = |response: http::Response<hyper::body::Incoming>| async move {
        assert_eq!(response.version(), Version::HTTP_2);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    };

    let mut servers = Vec::new();
    for (name, db) in [("db", &by_agent), ("inventory", &in_handshake)] {
        let listener = ConnectListener::bind(db, "127.0.0.1:0").await.unwrap();
        let rejections = listener.rejections();
        register(&raw, name, listener.local_addr()).await;
        tokio::spawn(serve(listener, app.clone()));
        let url = format!("http://{name}.service.consul/");
        body(web_http.get(&url).await.unwrap()).await;
        let api_addr = body(api_http.get(&url).await.unwrap()).await;
        // A request in flight on web's pooled connection.
        let in_flight = tokio::spawn({
            let web_http = web_http.clone();
            let url = format!("{url}hang");
            async move { web_http.get(&url).await }
        });
        hanging.recv().await.unwrap();
        servers.push((name, url, api_addr, in_flight, rejections));
    }

    intention(&raw, "web", "db", "deny").await;
    intention(&raw, "web", "inventory", "deny").await;
    for (name, url, api_addr, in_flight, mut rejections) in servers {
        let failed = tokio::time::timeout(Duration::from_secs(1), in_flight)
            .await
            .unwrap_or_else(|_| panic!("{name}: the open connection is still open after 1 s"))
            .unwrap()
            .expect_err("no answer on a closed connection");
        assert_eq!(
            refusal_in(&failed),
            Some(ServerRefusal::Denied),
            "{name}: {failed:?}"
        );
        // A new connection is refused. (hyper may report that one only as "connection
        // closed": the alert of a TLS 1.3 refusal arrives after the client's handshake.)
        web_http
            .get(&url)
            .await
            .expect_err("a new connection is refused");
        let rejection = next_rejection(&mut rejections).await;
        assert_eq!(rejection.peer.as_ref().map(|p| p.service()), Some("web"));
        assert!(
            rejection
                .reason
                .contains(&format!("default/web => default/{name}"))
                && rejection.reason.contains("DENY"),
            "{name}: {}",
            rejection.reason
        );
        // The other caller is still served, on the same connection.
        assert_eq!(
            body(api_http.get(&url).await.unwrap()).await,
            api_addr,
            "{name}"
        );
    }
}

/// Calls the `echo.Echo` service by Consul name as `caller`.
async fn echo_call(
    caller: &ConnectService,
    uri: &str,
    message: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let channel = grpc::channel(caller, uri).await?;
    Ok(EchoClient::new(channel).unary_echo(message).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_call_over_connect_and_a_denied_caller() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let client = sdk_client(&agent);
    let db = service(&client, "db").await;
    let web = service(&client, "web").await;
    let api = service(&client, "api").await;

    let listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let mut rejections = listener.rejections();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(grpc::incoming(listener)),
    );
    register(&raw, "db", addr).await;

    let answer = echo_call(&web, "http://db.service.consul", "ping")
        .await
        .unwrap();
    assert_eq!(
        answer,
        format!("ping (echoed for {})", web.identity().unwrap())
    );

    intention(&raw, "api", "db", "deny").await;
    let err = echo_call(&api, "http://db.service.consul", "ping")
        .await
        .expect_err("a denied caller gets no answer");
    // The client only sees the connection end (the agent's authorize runs after the handshake,
    // as in Consul); the server says who was refused and which intention decided.
    eprintln!("denied gRPC client saw: {err}");
    let rejection = next_rejection(&mut rejections).await;
    assert_eq!(rejection.peer.as_ref().map(|p| p.service()), Some("api"));
    assert!(
        rejection.reason.contains("default/api => default/db (ID: ")
            && rejection.reason.contains("Action: DENY)"),
        "{}",
        rejection.reason
    );
    // web still gets through.
    assert!(echo_call(&web, "http://db.service.consul", "again")
        .await
        .is_ok());
}

// ---------------------------------------------------------------------------------------------
// curl, a foreign client, with web's leaf from the agent
// ---------------------------------------------------------------------------------------------

/// Runs curl against `addr` as the holder of `cert`/`key`; `Ok(body)` or `Err(exit + stderr)`.
async fn curl(addr: SocketAddr, cert: &str, key: &str, version: &str) -> Result<String, String> {
    let args = vec![
        "-sS".to_owned(),
        "-k".to_owned(),
        "--max-time".to_owned(),
        "10".to_owned(),
        version.to_owned(),
        "--cert".to_owned(),
        cert.to_owned(),
        "--key".to_owned(),
        key.to_owned(),
        format!("https://{addr}/"),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(&args)
            .output()
            .expect("curl is installed (scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_leaf_gets_an_answer_naming_it_until_denied() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let client = sdk_client(&agent);
    let api = service(&client, "api").await;
    let (addr, mut rejections) = start_http(&api).await;

    let leaf = raw.get("/v1/agent/connect/ca/leaf/web").await.json();
    let dir = temp_dir("curl");
    let cert = dir.join("web.pem");
    let key = dir.join("web.key");
    std::fs::write(&cert, leaf["CertPEM"].as_str().unwrap()).unwrap();
    std::fs::write(&key, leaf["PrivateKeyPEM"].as_str().unwrap()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let web_id = leaf["ServiceURI"].as_str().unwrap();

    for (flag, version) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2.0")] {
        let body = curl(addr, cert, key, flag).await.unwrap();
        assert_eq!(body, format!("caller={web_id} version={version}\n"));
    }

    intention(&raw, "web", "api", "deny").await;
    for flag in ["--http1.1", "--http2"] {
        let err = curl(addr, cert, key, flag)
            .await
            .expect_err("no answer after the deny");
        assert!(!err.contains("caller="), "{err}");
        let rejection = next_rejection(&mut rejections).await;
        assert!(
            rejection
                .reason
                .contains("default/web => default/api (ID: ")
                && rejection.reason.contains("Action: DENY)"),
            "{}",
            rejection.reason
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_text_and_get_json_read_the_whole_answer() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let client = sdk_client(&agent);
    let db = service(&client, "db").await;
    let web = service(&client, "web").await;
    let app = Router::new()
        .route(
            "/text",
            get(|caller: Caller| async move { format!("hello {}", caller.service()) }),
        )
        .route(
            "/json",
            get(|caller: Caller| async move {
                axum::Json(serde_json::json!({"caller": caller.service(), "n": 7}))
            }),
        );
    let listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    register(&raw, "db", listener.local_addr()).await;
    tokio::spawn(serve(listener, app));

    let http = HttpClient::new(&web);
    let (status, text) = http
        .get_text("http://db.service.consul/text")
        .await
        .unwrap();
    assert_eq!((status.as_u16(), text.as_str()), (200, "hello web"));
    let json: serde_json::Value = http
        .get_json("http://db.service.consul/json")
        .await
        .unwrap();
    assert_eq!(json, serde_json::json!({"caller": "web", "n": 7}));
    // Not JSON: a typed error with the status and the URI.
    let err = http
        .get_json::<serde_json::Value, _>("http://db.service.consul/text")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, consul_connect::http::ClientError::Json { status, .. } if *status == 200),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_progress_and_accepts_no_more() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let client = sdk_client(&agent);
    let db = service(&client, "db").await;
    let web = service(&client, "web").await;
    // `/slow` answers when told to, and says when it has started.
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let app = {
        let (started, release) = (started.clone(), release.clone());
        Router::new().route(
            "/slow",
            get(move || {
                let (started, release) = (started.clone(), release.clone());
                async move {
                    started.notify_one();
                    release.notified().await;
                    "finished"
                }
            }),
        )
    };
    let listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    register(&raw, "db", addr).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(consul_connect::http::serve_with_graceful_shutdown(
        listener,
        app,
        async move {
            let _ = stopped.await;
        },
    ));

    let slow = |connector: ConnectConnector| {
        let http: HttpClient = HttpClient::with_connector(connector);
        tokio::spawn(async move { http.get_text("http://db.service.consul/slow").await })
    };

    // While the server runs, a request finishes normally (HTTP/2).
    let in_flight = slow(ConnectConnector::new(&web));
    started.notified().await;
    release.notify_one();
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "finished"));

    // Shut down while a request (HTTP/1.1) is in progress.
    let in_flight = slow(ConnectConnector::new(&web).http1_only());
    started.notified().await;
    stop.send(()).unwrap();
    // No new connection is accepted once the listener is gone...
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "still accepting after the shutdown signal");
    // ...the request in progress still gets its answer, and the server then returns.
    assert!(
        !server.is_finished(),
        "returned before the request in progress ended"
    );
    release.notify_one();
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "finished"));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server returns once its connections end")
        .unwrap()
        .unwrap();
}
