//! End to end, in one process, each figure next to its baseline measured in the same run:
//!
//! - mutual-TLS handshakes over loopback: plain tokio-rustls with the same P-256 certificates
//!   against `ConnectDialer` → `ConnectListener` with the agent authorizer and with the
//!   intentions authorizer (rate at concurrency 1 and 32, latency p50/p99 at concurrency 1);
//! - bulk throughput over one established connection: plain TCP, raw rustls, Connect;
//! - HTTP/2 requests over one established connection: raw tokio-rustls + hyper against a
//!   Connect stream to `consul_connect::http::serve`;
//! - agent-sim's authorize and cached-leaf endpoints under keep-alive HTTP/1.1 load, and
//!   authorize at 10 and 100,000 intentions; the same two endpoints with the client in another
//!   process (agent-sim on the runtime of its binary);
//! - leaf issuance through the agent against rcgen signing alone;
//! - resident memory per registered Connect service holding a leaf;
//! - handshakes while roots and leaves rotate, and how many fail.
//!
//! Everything (agent-sim, servers, clients) shares one multi-thread tokio runtime with one
//! worker per core, so on a small machine a high concurrency measures scheduling as well as
//! crypto. The exceptions say so in the table: bulk transfers run client and server on two
//! threads pinned to different cores, one authorize row runs agent and client on one thread,
//! and the memory and issuance figures use an agent of their own. Run: `cargo bench --bench
//! e2e` (about 3 min on a quiet machine; `-- --quick` for a pass under 2 min with smaller
//! sizes, said so in the table).
//!
//! Other processes on a shared machine distort such figures, so each measurement reads
//! `/proc/stat`: it waits briefly for a quiet moment, is made again when other processes took
//! 10% or more of the CPU meanwhile (within a time budget), and the table says which figures
//! were disturbed anyway. `E2E_ONLY=memory,handshakes,bulk,apphttp,http,process,rotation` runs some
//! sections, `E2E_TARGETS=raw,agent,intentions` some handshake rows (for profiling one of
//! them), `E2E_BULK_REPS=n` the bulk repetitions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sim::ca::{BuiltinCa, CaProvider, EcKey};
use agent_sim::Agent;
use bytes::Bytes;
use consul_connect::agent::{AgentClient, QueryOptions};
use consul_connect::intentions::DefaultDecision;
use consul_connect::spiffe::{ServiceId, TrustDomain};
use consul_connect::{ConnectListener, ConnectService, StaticResolver};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raw_tls::raw_configs;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[path = "../support/raw_tls.rs"]
mod raw_tls;

mod app_http;
mod bulk;
mod handshakes;
mod http_load;
mod memory;
mod output;
mod process;
mod quiet;
mod rotation;
mod servers;

use app_http::*;
use bulk::*;
use handshakes::*;
use http_load::*;
use memory::*;
use output::*;
use process::*;
use quiet::*;
use rotation::*;
use servers::*;

pub(crate) const CLUSTER_ID: &str = "11111111-2222-3333-4444-555555555555";
pub(crate) const CHUNK: usize = 64 * 1024;

/// How long and how big each measurement is.
pub(crate) struct Scale {
    pub(crate) quick: bool,
    /// Handshake load: seconds per measurement, and interleaved rounds (median reported).
    pub(crate) hs_secs: f64,
    pub(crate) hs_rounds: usize,
    /// Bulk transfer size, and repetitions per variant (median reported).
    pub(crate) bulk_bytes: u64,
    pub(crate) bulk_reps: usize,
    /// HTTP load: seconds per measurement.
    pub(crate) http_secs: f64,
    /// Services registered (each issued a leaf) for the memory and issuance figures.
    pub(crate) services: usize,
    /// Total intentions for the "large" authorize figure.
    pub(crate) big_intentions: usize,
    /// Rotation under load: seconds per run, rotations per run.
    pub(crate) rot_secs: f64,
    pub(crate) rotations: usize,
    /// Sections to run (`E2E_ONLY=handshakes,bulk`, for profiling one of them); all when unset.
    pub(crate) only: Option<Vec<String>>,
}

impl Scale {
    /// Whether the section `name` runs.
    pub(crate) fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    }

    pub(crate) fn new(quick: bool) -> Self {
        let only = std::env::var("E2E_ONLY")
            .ok()
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
        if quick {
            Self {
                quick,
                hs_secs: 1.0,
                hs_rounds: 2,
                bulk_bytes: 256 << 20,
                bulk_reps: 15,
                http_secs: 1.0,
                services: 10_000,
                big_intentions: 100_000,
                rot_secs: 3.0,
                rotations: 2,
                only,
            }
        } else {
            Self {
                quick,
                hs_secs: 2.0,
                hs_rounds: 5,
                bulk_bytes: 1 << 30,
                bulk_reps: 25,
                http_secs: 3.0,
                services: 10_000,
                big_intentions: 100_000,
                rot_secs: 6.0,
                rotations: 4,
                only,
            }
        }
    }
}

pub(crate) fn main() {
    // Started again as the load of the "from another process" rows.
    if child_main() {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without
    // it, where a two-minute measurement in a debug build has no place.
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e is a benchmark: run it with `cargo bench --bench e2e [-- --quick]`");
        return;
    }
    // Criterion-style `--quick` selects the short pass.
    let quick = std::env::args().any(|a| a == "--quick");
    QUICK.store(quick, Ordering::Relaxed);
    START.get_or_init(Instant::now);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(Scale::new(quick)));
    // Blocking queries of the SDK watches and agent-sim's tasks do not need a graceful end.
    runtime.shutdown_timeout(Duration::from_millis(100));
}

pub(crate) async fn run(scale: Scale) {
    let started = Instant::now();
    let mut table = Table::default();
    println!("{}", machine());
    println!(
        "mode: {}; tokio multi-thread runtime, {} workers; agent-sim, servers and clients share it\n",
        if scale.quick { "--quick" } else { "full" },
        workers()
    );

    let td = TrustDomain::new(&format!("{CLUSTER_ID}.consul")).unwrap();
    if scale.runs("memory") {
        // An agent of its own: its 10,000 cached leaves would otherwise all be re-issued at
        // each rotation below, inside this process, and weigh on every later figure.
        phase("memory per service and leaf issuance");
        memory_and_issuance(&scale, &td, &mut table).await;
    }

    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .start()
        .await
        .unwrap();
    let addr = agent.addr();

    let mut admin = Http::connect(addr).await;
    let ten = ten_intentions();
    for body in &ten {
        let (status, answer) = admin
            .send(Method::POST, "/v1/connect/intentions", body)
            .await;
        assert_eq!(status, StatusCode::OK, "{answer:?}");
    }

    phase("services and listeners");
    let sdk = AgentClient::new(&addr.to_string()).unwrap();
    let web = service(ConnectService::builder("web").agent(sdk.clone())).await;
    let db_agent = service(ConnectService::builder("db").agent(sdk.clone())).await;
    let db_ixn = service(
        ConnectService::builder("db")
            .agent(sdk.clone())
            .intentions_authorizer(DefaultDecision::AclsDisabled),
    )
    .await;
    let roots = sdk.roots(&QueryOptions::default()).await.unwrap().value;
    let db_leaf = sdk
        .leaf("db", &QueryOptions::default())
        .await
        .unwrap()
        .value;
    let web_leaf = sdk
        .leaf("web", &QueryOptions::default())
        .await
        .unwrap()
        .value;
    let (raw_client, raw_server) = raw_configs(&roots, &db_leaf, &web_leaf);

    let raw_hs = serve_raw(TlsAcceptor::from(raw_server.clone()), Mode::Hello).await;
    let (agent_hs, agent_rejections) = serve_connect(&db_agent, Mode::Hello).await;
    let (ixn_hs, ixn_rejections) = serve_connect(&db_ixn, Mode::Hello).await;

    let raw = Target::Raw {
        connector: TlsConnector::from(raw_client.clone()),
        addr: raw_hs,
    };
    let via_agent = Target::Connect {
        client: web.clone(),
        resolver: StaticResolver::new(agent_hs.to_string(), "db"),
    };
    let via_ixn = Target::Connect {
        client: web.clone(),
        resolver: StaticResolver::new(ixn_hs.to_string(), "db"),
    };
    // The intentions authorizer denies until its first list arrives (it polls every second).
    wait_until_ok(&via_ixn).await;
    wait_until_ok(&via_agent).await;
    wait_until_ok(&raw).await;

    if scale.runs("handshakes") {
        phase("handshakes");
        handshakes(&scale, [&raw, &via_agent, &via_ixn], &mut table).await;
    }

    if scale.runs("bulk") {
        phase("bulk throughput");
        bulk(
            &scale,
            (
                TlsConnector::from(raw_client.clone()),
                TlsAcceptor::from(raw_server.clone()),
            ),
            (web.clone(), db_ixn.clone()),
            &mut table,
        )
        .await;
    }

    if scale.runs("apphttp") {
        phase("HTTP/2 over Connect");
        app_http(
            &scale,
            (raw_client.clone(), raw_server.clone()),
            (&web, &db_ixn),
            &mut table,
        )
        .await;
    }

    if scale.runs("http") {
        phase("agent-sim HTTP");
        // A fresh connection: agent-sim closes one that sat idle past its header timeout
        // (30 s) during the sections above, as hyper's server does.
        admin = Http::connect(addr).await;
        http_section(
            &scale,
            addr,
            &mut admin,
            &web,
            &web_leaf.serial_number,
            ten.len(),
            &mut table,
        )
        .await;
    }

    if scale.runs("process") {
        phase("agent-sim HTTP from another process");
        let authorize = serde_json::json!({
            "Target": "db",
            "ClientCertURI": web.identity().unwrap().to_string(),
            "ClientCertSerial": web_leaf.serial_number,
        })
        .to_string();
        tokio::task::block_in_place(|| process_section(&scale, &authorize, &mut table));
    }

    if scale.runs("rotation") {
        phase("rotation under load");
        let steady = table.steady_c32.clone();
        for (name, target, rejections, steady) in [
            (
                "Connect (intentions authorizer)",
                &via_ixn,
                ixn_rejections,
                steady.get(2).copied(),
            ),
            (
                "Connect (agent authorizer)",
                &via_agent,
                agent_rejections,
                steady.get(1).copied(),
            ),
        ] {
            rotation(
                &scale,
                addr,
                name,
                target,
                (&web, &db_ixn, &db_agent),
                rejections,
                steady,
                &mut table,
            )
            .await;
        }
    }

    println!();
    table.print(&scale);
    println!(
        "\nwhole run: {:.1} s (incl. building fixtures)",
        started.elapsed().as_secs_f64()
    );
    drop(agent);
}

pub(crate) async fn http_section(
    scale: &Scale,
    addr: SocketAddr,
    admin: &mut Http,
    web: &ConnectService,
    web_serial: &str,
    existing: usize,
    table: &mut Table,
) {
    let authorize = serde_json::json!({
        "Target": "db",
        "ClientCertURI": web.identity().unwrap().to_string(),
        "ClientCertSerial": web_serial,
    })
    .to_string();
    let (status, answer) = admin
        .send(Method::POST, "/v1/agent/connect/authorize", &authorize)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&answer).contains("\"Authorized\":true"),
        "{answer:?}"
    );
    let authz_req = Req::new(Method::POST, "/v1/agent/connect/authorize", &authorize);
    let leaf_req = Req::new(Method::GET, "/v1/agent/connect/ca/leaf/db", "");
    let small = [
        http_load(addr, &authz_req, 1, scale.http_secs).await,
        http_load(addr, &authz_req, 16, scale.http_secs).await,
    ];
    let leaf = [
        http_load(addr, &leaf_req, 1, scale.http_secs).await,
        http_load(addr, &leaf_req, 16, scale.http_secs).await,
    ];
    let took = add_intentions(addr, scale.big_intentions - existing).await;
    println!(
        "  created {} more intentions over HTTP in {:.1} s",
        scale.big_intentions - existing,
        took.as_secs_f64()
    );
    let big = [
        http_load(addr, &authz_req, 1, scale.http_secs).await,
        http_load(addr, &authz_req, 16, scale.http_secs).await,
    ];
    http_rows(&small, &big, &leaf, scale.big_intentions, table);

    // The same authorize with agent-sim and its client on one thread (a current-thread
    // runtime of their own): what the handler costs without a wake-up of the other worker.
    let secs = scale.http_secs;
    let mut one = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let agent = Agent::builder()
                .cluster_id(CLUSTER_ID)
                .start()
                .await
                .unwrap();
            let mut admin = Http::connect(agent.addr()).await;
            for body in ten_intentions() {
                let (status, _) = admin
                    .send(Method::POST, "/v1/connect/intentions", &body)
                    .await;
                assert_eq!(status, StatusCode::OK);
            }
            let req = Req::new(Method::POST, "/v1/agent/connect/authorize", &authorize);
            http_load(agent.addr(), &req, 1, secs).await
        })
    })
    .join()
    .unwrap();
    let (p50, p99) = percentiles(&mut one.latencies);
    table.row(
        "POST authorize, 10 intentions, 1 client, agent and client on one thread".into(),
        format!("{:.0} req/s, p50 {} p99 {}", one.rate(), us(p50), us(p99)),
        String::new(),
        String::new(),
        "p50 < 50 µs".into(),
        Some(p50 < Duration::from_micros(50)),
    );

    // What the AgentAuthorizer adds to each accepted connection: one authorize call through
    // the SDK's pooled agent client, against the same request over a dedicated connection.
    let req = consul_connect::api::AuthorizeRequest {
        target: "db".into(),
        client_cert_uri: web.identity().unwrap().to_string(),
        client_cert_serial: web_serial.to_owned(),
    };
    let agent = web.agent().clone();
    for _ in 0..200 {
        assert!(agent.authorize(&req).await.unwrap().authorized);
    }
    let secs = scale.http_secs;
    let mut sdk = least_disturbed(|| {
        let agent = agent.clone();
        let req = req.clone();
        async move {
            quiet().await;
            let cpu = Cpu::now();
            // On a worker, as the other loads and as an accepting listener calls it.
            let mut load = tokio::spawn(async move {
                let start = Instant::now();
                let mut load = Load::default();
                while start.elapsed().as_secs_f64() < secs {
                    let t = Instant::now();
                    agent.authorize(&req).await.unwrap();
                    load.ok += 1;
                    load.latencies.push(t.elapsed());
                }
                load.secs = start.elapsed().as_secs_f64();
                load
            })
            .await
            .unwrap();
            (load.foreign, load.own_cpu) = cpu.since();
            load.switches = context_switches() - cpu.switches;
            load
        }
    })
    .await;
    noted("SDK AgentClient::authorize".into(), sdk.foreign);
    let (p50, p99) = percentiles(&mut sdk.latencies);
    let mut raw = big[0].latencies.clone();
    let (raw50, raw99) = percentiles(&mut raw);
    println!(
        "  SDK AgentClient::authorize, 1 caller: {:.0} calls/s  p50 {}  p99 {}, {} CPU and {:.2} context switches each",
        sdk.rate(),
        us(p50),
        us(p99),
        us(sdk.cpu_per_op()),
        sdk.switches_per_op()
    );
    table.row(
        "authorize through the SDK's pooled AgentClient, 1 caller".into(),
        format!("{:.0} calls/s, p50 {} p99 {}", sdk.rate(), us(p50), us(p99)),
        format!("p50 {} p99 {} raw hyper", us(raw50), us(raw99)),
        format!("{:.2} (p50)", p50.as_secs_f64() / raw50.as_secs_f64()),
        String::new(),
        None,
    );
}
