//! agent-sim with its client in another process (see the crate docs in `main.rs`).
//!
//! agent-sim serves on [`agent_sim::runtime`], the runtime its binary uses, on a thread of
//! its own; the client is this benchmark executable started again with [`CHILD_ENV`] set, a
//! current-thread runtime sending pre-built HTTP/1.1 requests over keep-alive connections
//! (as `wrk` does), so requests and answers cross processes and cores as they do between an
//! application and its local agent.

use super::*;

/// Set in the child's environment: `addr;method;path;body;clients;secs`.
const CHILD_ENV: &str = "E2E_LOAD_CHILD";

/// The rows: authorize and the cached leaf at 1 and 16 connections.
pub(crate) fn process_section(scale: &Scale, authorize: &str, table: &mut Table) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = agent_sim::runtime().unwrap();
        runtime.block_on(async move {
            let agent = Agent::builder()
                .cluster_id(CLUSTER_ID)
                .spin_before_sleep(true) // as the binary does
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
            ready_tx.send(agent.addr()).unwrap();
            let _ = stop_rx.await;
            agent.shutdown().await;
        });
    });
    let addr = ready_rx.recv().unwrap();
    let secs = scale.http_secs;
    let runs = [
        (
            "POST authorize, 10 intentions",
            "POST",
            "/v1/agent/connect/authorize",
            authorize,
        ),
        (
            "GET leaf/db (cached)",
            "GET",
            "/v1/agent/connect/ca/leaf/db",
            "",
        ),
    ];
    // Consul 1.10.9 from wrk on this machine (BENCHMARKS.md): 14.0k req/s at 1 connection,
    // 24.5k at 16.
    const CONSUL: [f64; 2] = [14_000.0, 24_500.0];
    for (what, method, path, body) in runs {
        for (i, clients) in [1usize, 16].into_iter().enumerate() {
            let spec = format!("{addr};{method};{path};{body};{clients};{secs}");
            let load = least_disturbed_blocking(|| child_load(&spec));
            noted(
                format!("{method} {path} clients={clients}, other process"),
                load.foreign,
            );
            println!(
                "  {method} {path} clients={clients:<2} from another process {:>7.0} req/s  p50 {}  p99 {}  (others {:.0}% CPU)",
                load.rate,
                us(load.p50),
                us(load.p99),
                load.foreign * 100.0
            );
            let authorize = method == "POST";
            let (target, met) = match (authorize, i) {
                (true, 0) => (
                    "≥ Consul's 14.0k req/s".into(),
                    Some(load.rate >= CONSUL[0]),
                ),
                (true, _) => (
                    "≥ 3× Consul's 24.5k req/s".into(),
                    Some(load.rate >= 3.0 * CONSUL[1]),
                ),
                _ => (String::new(), None),
            };
            table.row(
                format!("{what}, {clients} connection(s) from another process"),
                format!(
                    "{:.0} req/s, p50 {} p99 {}",
                    load.rate,
                    us(load.p50),
                    us(load.p99)
                ),
                if authorize {
                    format!("Consul 1.10.9: {:.1}k req/s (wrk)", CONSUL[i] / 1000.0)
                } else {
                    String::new()
                },
                if authorize {
                    format!("{:.2}", load.rate / CONSUL[i])
                } else {
                    String::new()
                },
                target,
                met,
            );
        }
    }
    table.note(
        "agent-sim from another process: agent-sim on the runtime of its binary \
         (`agent_sim::runtime()`), the client a second process (this benchmark started again) \
         sending the same pre-built HTTP/1.1 request back to back over keep-alive connections, \
         as `wrk` does; Consul's figures were measured with wrk on this machine (BENCHMARKS.md)."
            .to_owned(),
    );
    let _ = stop_tx.send(());
    server.join().unwrap();
}

/// What the child process measured, and how busy the rest of the machine was.
struct ChildLoad {
    rate: f64,
    p50: Duration,
    p99: Duration,
    foreign: f64,
}

/// Runs one child load, waiting for a quiet moment first; other processes' share of the CPU
/// excludes the child's own.
fn child_load(spec: &str) -> ChildLoad {
    quiet_blocking();
    let cpu = Cpu::now();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, spec)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "load child failed: {spec}");
    let line = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let [ok, secs, p50, p99, child_ticks] = fields[..] else {
        panic!("load child printed {line:?}");
    };
    let (foreign, _) = cpu.since_excluding(child_ticks as u64);
    ChildLoad {
        rate: ok / secs,
        p50: Duration::from_secs_f64(p50),
        p99: Duration::from_secs_f64(p99),
        foreign,
    }
}

/// [`least_disturbed`] for a measurement that blocks the calling thread.
fn least_disturbed_blocking(mut measure: impl FnMut() -> ChildLoad) -> ChildLoad {
    let mut best: Option<ChildLoad> = None;
    for attempt in 1..=attempts() {
        let load = measure();
        let foreign = load.foreign;
        if best.as_ref().is_none_or(|b| foreign < b.foreign) {
            best = Some(load);
        }
        if foreign < DISTURBED {
            break;
        }
        if attempt < attempts() {
            println!(
                "    (other processes took {:.0}% of the CPU: measuring again)",
                foreign * 100.0
            );
        }
    }
    best.expect("at least one attempt")
}

/// [`quiet`] on a thread outside any runtime.
fn quiet_blocking() {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(quiet());
}

/// In the child process (when [`CHILD_ENV`] is set): runs the load, prints `ok secs p50 p99
/// cpu-ticks` and returns true.
pub(crate) fn child_main() -> bool {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return false;
    };
    let parts: Vec<&str> = spec.splitn(6, ';').collect();
    let [addr, method, path, body, clients, secs] = parts[..] else {
        panic!("{CHILD_ENV}={spec:?}");
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let clients: usize = clients.parse().unwrap();
    let secs: f64 = secs.parse().unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !body.is_empty() {
        let _ = write!(
            request,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    request.push_str("\r\n");
    request.push_str(body);
    let request: Arc<[u8]> = request.into_bytes().into();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ok, secs, mut latencies) = runtime.block_on(async move {
        let mut conns = Vec::new();
        for _ in 0..clients {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut conn = RawConn::new(tcp);
            for _ in 0..50 {
                conn.round_trip(&request).await;
            }
            conns.push(conn);
        }
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut conn| {
                let request = request.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(1 << 16);
                    while Instant::now() < until {
                        let t = Instant::now();
                        conn.round_trip(&request).await;
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        (all.len(), start.elapsed().as_secs_f64(), all)
    });
    let (p50, p99) = percentiles(&mut latencies);
    println!(
        "{ok} {secs} {} {} {}",
        p50.as_secs_f64(),
        p99.as_secs_f64(),
        Cpu::now().own
    );
    true
}

/// A keep-alive HTTP/1.1 connection reading answers with a `Content-Length` (agent-sim's).
struct RawConn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends `request` and reads one `200 OK` answer whole.
    async fn round_trip(&mut self, request: &[u8]) {
        self.tcp.write_all(request).await.unwrap();
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap();
                assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or_else(|| panic!("no Content-Length: {head}"));
                let whole = end + 4 + length;
                while self.buf.len() < whole {
                    self.read_more().await;
                }
                assert_eq!(self.buf.len(), whole, "one request in flight");
                return;
            }
            self.read_more().await;
        }
    }

    async fn read_more(&mut self) {
        let n = self.tcp.read_buf(&mut self.buf).await.unwrap();
        assert!(n > 0, "agent-sim closed the connection");
    }
}
