//! Handshakes (see the crate docs in `main.rs`).

use super::*;

/// Where a handshake goes and how it is made.
pub(crate) enum Target {
    /// Plain tokio-rustls.
    Raw {
        connector: TlsConnector,
        addr: SocketAddr,
    },
    /// `ConnectDialer::dial` as the client service.
    Connect {
        client: ConnectService,
        resolver: StaticResolver,
    },
}

impl Target {
    /// One full mutual-TLS handshake, ended when the server's first application byte arrives
    /// (so the server's verification and authorization of the client are included: in TLS 1.3
    /// the client finishes its side before the server has checked the client certificate).
    pub(crate) async fn once(&self) -> Result<(), String> {
        let mut byte = [0u8; 1];
        match self {
            Target::Raw { connector, addr } => {
                let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                tcp.set_nodelay(true).map_err(|e| e.to_string())?;
                let name = ServerName::IpAddress(addr.ip().into());
                let mut tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            }
            Target::Connect { client, resolver } => {
                let mut stream = client
                    .dialer()
                    .dial(resolver)
                    .await
                    .map_err(|e| e.to_string())?;
                stream
                    .read_exact(&mut byte)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

pub(crate) async fn wait_until_ok(target: &Target) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match target.once().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("target never accepted: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The outcome of a load run.
#[derive(Default)]
pub(crate) struct Load {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) secs: f64,
    pub(crate) latencies: Vec<Duration>,
    /// Share of the machine's CPU other processes used meanwhile.
    pub(crate) foreign: f64,
    /// CPU time this process used meanwhile (all threads), in seconds.
    pub(crate) own_cpu: f64,
    /// Context switches of this process's threads meanwhile.
    pub(crate) switches: u64,
}

impl Load {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// CPU time of this process per completed operation: steadier than the rate when other
    /// processes share the machine.
    pub(crate) fn cpu_per_op(&self) -> Duration {
        Duration::from_secs_f64(self.own_cpu / self.ok.max(1) as f64)
    }

    /// Context switches (a worker thread parking or being preempted) per operation.
    pub(crate) fn switches_per_op(&self) -> f64 {
        self.switches as f64 / self.ok.max(1) as f64
    }
}

/// `concurrency` tasks making handshakes back to back for `secs`, measured again when other
/// processes took the CPU meanwhile (see [`least_disturbed`]).
pub(crate) async fn hs_load(
    target: &Arc<Target>,
    concurrency: usize,
    secs: f64,
    record: bool,
) -> Load {
    least_disturbed(|| hs_load_once(target, concurrency, secs, record)).await
}

pub(crate) async fn hs_load_once(
    target: &Arc<Target>,
    concurrency: usize,
    secs: f64,
    record: bool,
) -> Load {
    let target = target.clone();
    closed_loop(concurrency, secs, record, move || {
        let target = target.clone();
        async move { target.once().await }
    })
    .await
}

/// `concurrency` tasks each running `op` back to back for `secs`, after a quiet moment: the
/// count, failures, latencies (when `record`), and this process's CPU meanwhile.
pub(crate) async fn closed_loop<F, Fut>(concurrency: usize, secs: f64, record: bool, op: F) -> Load
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    quiet().await;
    let cpu = Cpu::now();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut load = Load::default();
                while Instant::now() < until {
                    let t = Instant::now();
                    match op().await {
                        Ok(()) => {
                            load.ok += 1;
                            if record {
                                load.latencies.push(t.elapsed());
                            }
                        }
                        Err(e) => {
                            load.failed += 1;
                            load.first_error.get_or_insert(e);
                        }
                    }
                }
                load
            })
        })
        .collect();
    let mut total = Load::default();
    for task in tasks {
        let load = task.await.unwrap();
        total.ok += load.ok;
        total.failed += load.failed;
        total.latencies.extend(load.latencies);
        if total.first_error.is_none() {
            total.first_error = load.first_error;
        }
    }
    total.secs = start.elapsed().as_secs_f64();
    (total.foreign, total.own_cpu) = cpu.since();
    total.switches = context_switches() - cpu.switches;
    total
}

pub(crate) async fn handshakes(scale: &Scale, targets: [&Target; 3], table: &mut Table) {
    let names = [
        "raw tokio-rustls",
        "Connect, AgentAuthorizer",
        "Connect, IntentionsAuthorizer",
    ];
    // Targets are borrowed; the load tasks need owned handles.
    let owned: Vec<Arc<Target>> = targets.iter().map(|t| Arc::new(clone_target(t))).collect();
    let mut rates = vec![[Vec::new(), Vec::new()]; 3];
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); 3];
    // `E2E_TARGETS=raw,agent,intentions` limits the rows (for profiling one of them).
    let wanted = std::env::var("E2E_TARGETS").ok();
    let wanted = |i: usize| {
        wanted
            .as_deref()
            .is_none_or(|w| w.split(',').any(|t| t == ["raw", "agent", "intentions"][i]))
    };
    for round in 0..scale.hs_rounds {
        for (i, target) in owned.iter().enumerate().filter(|(i, _)| wanted(*i)) {
            for (j, concurrency) in [1, 32].into_iter().enumerate() {
                let load = hs_load(target, concurrency, scale.hs_secs, concurrency == 1).await;
                assert_eq!(load.failed, 0, "{}: {:?}", names[i], load.first_error);
                println!(
                    "  round {round}: {:<30} c={concurrency:<2} {:>7.0} handshakes/s, {} CPU and {:.2} context switches each  (others {:.0}% CPU)",
                    names[i],
                    load.rate(),
                    us(load.cpu_per_op()),
                    load.switches_per_op(),
                    load.foreign * 100.0
                );
                cpu[i].push(load.cpu_per_op().as_secs_f64());
                noted(
                    format!("handshakes {} c={concurrency}", names[i]),
                    load.foreign,
                );
                rates[i][j].push(load.rate());
                latencies[i].extend(load.latencies);
            }
        }
    }
    let rate = |i: usize, j: usize| median(&rates[i][j]);
    // CPU time per handshake over both concurrencies: the cost, whatever the scheduling.
    let cpu_base = median(&cpu[0]);
    for (i, name) in names.iter().enumerate() {
        let c = median(&cpu[i]);
        table.row(
            format!("CPU time per handshake (client + server + agent): {name}"),
            us_f(c),
            if i == 0 {
                "(baseline)".into()
            } else {
                us_f(cpu_base)
            },
            if i == 0 {
                String::new()
            } else {
                format!("{:.2}", c / cpu_base)
            },
            String::new(),
            None,
        );
    }
    for (j, concurrency) in [1, 32].into_iter().enumerate() {
        let base = rate(0, j);
        table.row(
            format!("handshakes/s, c={concurrency}: {}", names[0]),
            format!("{base:.0}"),
            "(baseline)".into(),
            String::new(),
            String::new(),
            None,
        );
        for (i, name) in names.iter().enumerate().skip(1) {
            let r = rate(i, j) / base;
            let (target, met) = match (concurrency, i) {
                (32, 1) => ("≥ 0.75 × raw".to_owned(), Some(r >= 0.75)),
                (32, 2) => ("≥ 0.90 × raw".to_owned(), Some(r >= 0.9)),
                _ => (String::new(), None),
            };
            table.row(
                format!("handshakes/s, c={concurrency}: {name}"),
                format!("{:.0}", rate(i, j)),
                format!("{base:.0}"),
                format!("{r:.2}"),
                target,
                met,
            );
        }
        if concurrency == 32 {
            table.steady_c32 = (0..3).map(|i| rate(i, j)).collect();
        }
    }
    let base = percentiles(&mut latencies[0]);
    for (i, name) in names.iter().enumerate() {
        let (p50, p99) = percentiles(&mut latencies[i]);
        let (baseline, ratio) = if i == 0 {
            ("(baseline)".to_owned(), String::new())
        } else {
            (
                format!("{} / {}", us(base.0), us(base.1)),
                format!(
                    "{:.2} / {:.2}",
                    p50.as_secs_f64() / base.0.as_secs_f64(),
                    p99.as_secs_f64() / base.1.as_secs_f64()
                ),
            )
        };
        table.row(
            format!("handshake latency p50 / p99, c=1: {name}"),
            format!("{} / {}", us(p50), us(p99)),
            baseline,
            ratio,
            String::new(),
            None,
        );
    }
    table.note(format!(
        "Handshakes: a new TCP connection and a full mutual-TLS handshake (TLS 1.3, P-256 leaves, \
         no resumption), ended when the server's first application byte arrives, so the server's \
         check and authorization of the client count. Median of {} interleaved rounds of {:.0} s; \
         latency over all rounds at c=1. c=32 on {} cores measures the scheduler as much as the \
         crypto: clients, servers and agent-sim share the runtime.",
        scale.hs_rounds,
        scale.hs_secs,
        workers()
    ));
}

pub(crate) fn clone_target(target: &Target) -> Target {
    match target {
        Target::Raw { connector, addr } => Target::Raw {
            connector: connector.clone(),
            addr: *addr,
        },
        Target::Connect { client, resolver } => Target::Connect {
            client: client.clone(),
            resolver: resolver.clone(),
        },
    }
}
