//! Agent faults on demand: a wiremock agent whose roots and leaf endpoints answer what the test
//! says (good answers captured from a real agent-sim, error statuses, truncated JSON, delays,
//! indexes that go backwards), with a log of every request so tests can bound the request rate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_sim::Agent;
use consul_connect::agent::{AgentClient, WatchConfig};
use consul_connect::api::{CaRootList, LeafCert};
use consul_connect::tls::{verify_peer, PeerRole};
use consul_connect::ConnectService;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::agent::{Raw, CLUSTER_ID, TRUST_DOMAIN};
use super::certs::TestCa;

/// Watch pacing small enough for tests, with backoff far slower than the success floor so a
/// watch that does not back off is told apart by its request count.
pub fn watch_config() -> WatchConfig {
    WatchConfig::default()
        .wait(Duration::from_millis(500))
        .backoff_range(Duration::from_millis(40), Duration::from_millis(320))
        .min_interval(Duration::from_millis(20))
        .poll_interval(Duration::from_millis(100))
}

/// The shortest delay `WatchConfig::backoff` may return after `errors` consecutive errors: half
/// the capped exponential delay (the jitter is in the upper half).
pub fn min_backoff(config: &WatchConfig, errors: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << errors.saturating_sub(1).min(20));
    exp.min(config.backoff_max) / 2
}

/// The most requests one watch can send within `window` of its first failed request while
/// every answer fails: retry k waits at least `min_backoff(k)` after the answer to request k,
/// and that answer comes after the request arrives.
pub fn max_requests_while_failing(config: &WatchConfig, window: Duration) -> usize {
    let mut elapsed = Duration::ZERO;
    let mut requests = 1;
    for errors in 1.. {
        elapsed += min_backoff(config, errors);
        if elapsed > window {
            break;
        }
        requests += 1;
    }
    requests
}

/// The most requests one watch can send within `window` while every answer is an immediate
/// success with an unchanged index: one per `min_interval`, plus one for transit jitter.
pub fn max_requests_while_polling(config: &WatchConfig, window: Duration) -> usize {
    (window.as_micros() / config.min_interval.as_micros()) as usize + 2
}

/// What an endpoint answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Names the reply in the request log (`good`, `500`, `truncated`...).
    pub label: &'static str,
    status: u16,
    body: String,
    index: Option<u64>,
    delay: Duration,
}

impl Reply {
    /// 200 with a JSON body and `X-Consul-Index`.
    pub fn json(label: &'static str, body: impl Into<String>, index: u64) -> Self {
        Self {
            label,
            status: 200,
            body: body.into(),
            index: Some(index),
            delay: Duration::ZERO,
        }
    }

    /// `status` with a plain-text message, as Consul answers errors.
    pub fn status(label: &'static str, status: u16, message: &str) -> Self {
        Self {
            label,
            status,
            body: message.to_owned(),
            index: None,
            delay: Duration::ZERO,
        }
    }

    /// The same reply, sent after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn template(&self) -> ResponseTemplate {
        let mut t = ResponseTemplate::new(self.status).set_delay(self.delay);
        t = if self.status == 200 {
            t.set_body_raw(self.body.clone().into_bytes(), "application/json")
        } else {
            t.set_body_raw(self.body.clone().into_bytes(), "text/plain; charset=utf-8")
        };
        if let Some(index) = self.index {
            t = t.insert_header("X-Consul-Index", index.to_string().as_str());
        }
        t
    }
}

/// One request an endpoint answered.
#[derive(Clone, Debug)]
pub struct Hit {
    /// When it arrived.
    pub at: Instant,
    /// Its `?index=` (None: a non-blocking read).
    pub index: Option<u64>,
    /// The label of the reply it got.
    pub label: &'static str,
}

/// A scriptable endpoint: answers `current`, or the queued one-off replies first.
#[derive(Clone)]
pub struct Endpoint {
    state: Arc<Mutex<EndpointState>>,
}

struct EndpointState {
    current: Reply,
    /// When set, what blocking reads (`?index=` given) get instead of `current`.
    blocking: Option<Reply>,
    queued: VecDeque<Reply>,
    hits: Vec<Hit>,
}

impl Endpoint {
    fn new(reply: Reply) -> Self {
        Self {
            state: Arc::new(Mutex::new(EndpointState {
                current: reply,
                blocking: None,
                queued: VecDeque::new(),
                hits: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer `reply` from now on.
    pub fn set(&self, reply: Reply) {
        let mut state = self.lock();
        state.queued.clear();
        state.current = reply;
    }

    /// Answer `reply` to blocking reads (`?index=` given) from now on, while non-blocking
    /// reads keep getting what [`Endpoint::set`] said, as an agent whose servers fail but
    /// whose cache still answers (`None` ends it).
    pub fn set_blocking(&self, reply: Option<Reply>) {
        self.lock().blocking = reply;
    }

    /// Answer `reply` to the next request only, then carry on as before.
    pub fn once(&self, reply: Reply) {
        self.lock().queued.push_back(reply);
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.lock().hits.clone()
    }

    /// The requests answered with `label`.
    pub fn hits_labelled(&self, label: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.label == label)
            .collect()
    }
}

impl Respond for Endpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let index = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "index")
            .and_then(|(_, v)| v.parse().ok());
        let mut state = self.lock();
        let reply = match (state.queued.pop_front(), &state.blocking) {
            (Some(reply), _) => reply,
            (None, Some(blocking)) if index.is_some() => blocking.clone(),
            (None, _) => state.current.clone(),
        };
        state.hits.push(Hit {
            at: Instant::now(),
            index,
            label: reply.label,
        });
        reply.template()
    }
}

/// A fake local agent serving `/v1/agent/connect/ca/roots` and the leaf of one service.
pub struct MockAgent {
    /// The wiremock server.
    pub server: MockServer,
    /// `GET /v1/agent/connect/ca/roots`.
    pub roots: Endpoint,
    /// `GET /v1/agent/connect/ca/leaf/<service>`.
    pub leaf: Endpoint,
    /// The leaf's path.
    pub leaf_path: String,
}

/// The roots path.
pub const ROOTS_PATH: &str = "/v1/agent/connect/ca/roots";

impl MockAgent {
    /// Starts the mock with the first replies of both endpoints.
    pub async fn start(service: &str, roots: Reply, leaf: Reply) -> Self {
        let server = MockServer::start().await;
        let roots = Endpoint::new(roots);
        let leaf = Endpoint::new(leaf);
        let leaf_path = format!("/v1/agent/connect/ca/leaf/{service}");
        Mock::given(method("GET"))
            .and(path(ROOTS_PATH))
            .respond_with(roots.clone())
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(leaf_path.as_str()))
            .respond_with(leaf.clone())
            .mount(&server)
            .await;
        Self {
            server,
            roots,
            leaf,
            leaf_path,
        }
    }

    /// An SDK client of the mock.
    pub fn client(&self) -> AgentClient {
        AgentClient::new(&self.server.address().to_string()).expect("mock address")
    }

    /// How many requests for `path` wiremock itself recorded.
    pub async fn received(&self, path: &str) -> usize {
        self.server
            .received_requests()
            .await
            .expect("request recording is on")
            .iter()
            .filter(|r| r.url.path() == path)
            .count()
    }
}

/// Good answers captured from a real agent-sim started with a known CA key, so more good
/// leaves can be forged with that key.
pub struct Captured {
    /// The roots body exactly as agent-sim sent it.
    pub roots_body: String,
    /// Its `X-Consul-Index`.
    pub roots_index: u64,
    /// The roots, decoded.
    pub roots: CaRootList,
    /// The leaf body exactly as agent-sim sent it.
    pub leaf_body: String,
    /// Its `X-Consul-Index`.
    pub leaf_index: u64,
    /// The leaf, decoded.
    pub leaf: LeafCert,
    /// agent-sim's CA (root and key).
    pub ca: TestCa,
    /// The CA key PEM given to agent-sim.
    pub ca_key_pem: String,
}

/// Starts agent-sim, reads its roots and the leaf of `service`, and stops it.
pub async fn capture(service: &str) -> Captured {
    let ca_key = rcgen::KeyPair::generate().expect("P-256 key");
    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .ca_private_key(ca_key.serialize_pem())
        .start()
        .await
        .expect("agent-sim starts");
    let raw = Raw::new(&agent);
    let roots = raw.get(ROOTS_PATH).await;
    assert_eq!(roots.status, 200, "{}", roots.body);
    let leaf = raw
        .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    assert_eq!(leaf.status, 200, "{}", leaf.body);
    agent.shutdown().await;
    let roots_list: CaRootList = serde_json::from_str(&roots.body).expect("roots JSON");
    let ca = TestCa::from_pem(
        &roots_list.roots[0].root_cert,
        &ca_key.serialize_pem(),
        TRUST_DOMAIN,
    );
    Captured {
        roots_index: roots.index(),
        leaf_index: leaf.index(),
        leaf: serde_json::from_str(&leaf.body).expect("leaf JSON"),
        roots: roots_list,
        roots_body: roots.body,
        leaf_body: leaf.body,
        ca,
        ca_key_pem: ca_key.serialize_pem(),
    }
}

impl Captured {
    /// The captured roots, answered at `index`.
    pub fn roots_reply(&self, index: u64) -> Reply {
        Reply::json("good", self.roots_body.clone(), index)
    }

    /// The captured leaf, answered at `index`.
    pub fn leaf_reply(&self, index: u64) -> Reply {
        Reply::json("good", self.leaf_body.clone(), index)
    }

    /// A new good leaf of `service` signed by agent-sim's CA key: the leaf and its JSON.
    pub fn new_leaf(&self, service: &str, index: u64) -> (LeafCert, String) {
        let mut leaf = self.ca.leaf(service).leaf_cert();
        leaf.create_index = index;
        leaf.modify_index = index;
        let json = serde_json::to_string(&leaf).expect("leaf serializes");
        (leaf, json)
    }
}

/// `leaf` as the leaf endpoint answers it.
pub fn leaf_json(leaf: &LeafCert) -> String {
    serde_json::to_string(leaf).expect("leaf serializes")
}

/// Waits until `cond` holds, checking every 10 ms, or panics after `limit` naming `what`.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The held leaf verifies, as client and as server, under the held roots, and names `service`:
/// the service would accept its own certificate.
pub fn assert_material_verifies(service: &ConnectService) {
    let material = service.material().expect("material is held");
    let chain = material.leaf_chain();
    for role in [PeerRole::Client, PeerRole::Server] {
        let id = verify_peer(&material, &chain[0], &chain[1..], UnixTime::now(), role)
            .unwrap_or_else(|e| panic!("the held leaf fails its own {role:?} check: {e}"));
        assert_eq!(id.service(), service.name(), "held leaf identity");
    }
}

/// The serial of the leaf the Connect server at `addr` presents, read from a TLS handshake.
pub async fn presented_serial(addr: std::net::SocketAddr) -> String {
    let seen = Arc::new(Mutex::new(None));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordServer(seen.clone())))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The recorder refuses the server once it has seen its certificate: nothing else is needed.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await;
    let der = seen
        .lock()
        .unwrap()
        .take()
        .expect("the server sent a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("leaf DER");
    consul_connect_types::api::serial_hex(cert.raw_serial())
}

#[derive(Debug)]
struct RecordServer(Arc<Mutex<Option<Vec<u8>>>>);

impl rustls::client::danger::ServerCertVerifier for RecordServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.to_vec());
        Err(rustls::Error::General("certificate recorded".into()))
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not reached".into()))
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not reached".into()))
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TCP relay in front of an agent that counts the client connections it holds open, so a
/// test can see when the SDK closes its pooled connections.
pub struct ConnectionCounter {
    addr: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicUsize>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectionCounter {
    /// Relays connections on an ephemeral loopback port to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (o, a) = (open.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            open,
            accepted,
            task,
        }
    }

    /// The relay's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Client connections accepted and not yet closed.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Client connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP proxy in front of agent-sim that reproduces Consul 1.10-1.11's leaf cache stall
/// (hashicorp/consul#12048): a blocking leaf query keeps the agent's fetch for that service
/// running until its `wait` ends, even after its client has gone, and a non-blocking leaf
/// read for the service is held until then. Everything else is forwarded as is.
pub struct LeafStallProxy {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<StallState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct StallState {
    /// Per leaf path: until when a blocking query's fetch runs.
    pending_until: std::collections::HashMap<String, Instant>,
    /// Non-blocking leaf reads held, and for how long.
    held: Vec<Duration>,
}

impl LeafStallProxy {
    /// Proxies to `upstream` on an ephemeral loopback port.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        use http_body_util::Full;
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state: Arc<Mutex<StallState>> = Arc::default();
        let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = shared.clone();
                let client = client.clone();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    stall_then_forward(req, state.clone(), client.clone(), upstream)
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The proxy's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Whether a blocking leaf query has been seen.
    pub fn blocking_query_seen(&self) -> bool {
        !self.state.lock().unwrap().pending_until.is_empty()
    }

    /// How long each held non-blocking leaf read was held.
    pub fn held(&self) -> Vec<Duration> {
        self.state.lock().unwrap().held.clone()
    }
}

impl Drop for LeafStallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// [`LeafStallProxy`]'s handler: records blocking leaf queries, holds non-blocking leaf reads
/// while one is pending, then forwards the request to `upstream`.
async fn stall_then_forward(
    req: http::Request<hyper::body::Incoming>,
    state: Arc<Mutex<StallState>>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    upstream: std::net::SocketAddr,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, BoxError> {
    use http_body_util::{BodyExt, Full};
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if path.starts_with("/v1/agent/connect/ca/leaf/") {
        if param("index").is_some() {
            let wait = param("wait")
                .and_then(|w| w.trim_end_matches("ms").parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(300));
            let until = Instant::now() + wait;
            let mut s = state.lock().unwrap();
            let entry = s.pending_until.entry(path.clone()).or_insert(until);
            *entry = (*entry).max(until);
        } else {
            let until = state.lock().unwrap().pending_until.get(&path).copied();
            if let Some(until) = until.filter(|u| *u > Instant::now()) {
                state.lock().unwrap().held.push(until - Instant::now());
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
        }
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut forward = http::Request::builder()
        .method(parts.method)
        .uri(format!("http://{upstream}{target}"));
    for (name, value) in &parts.headers {
        forward = forward.header(name, value);
    }
    let resp = client.request(forward.body(Full::new(body))?).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(http::Response::from_parts(parts, Full::new(body)))
}
