//! Bulk (see the crate docs in `main.rs`).

use super::*;

pub(crate) async fn bulk(
    scale: &Scale,
    (raw, acceptor): (TlsConnector, TlsAcceptor),
    (web, db): (ConnectService, ConnectService),
    table: &mut Table,
) {
    // Per variant: (rate, share of the CPU other processes took) of each run.
    let mut runs: [Vec<(f64, f64)>; 3] = Default::default();
    // Per variant: CPU seconds per GiB of each run, of the whole process and of the client and
    // server threads during the transfer (the data path alone: no handshake, no other task).
    let mut cpu_costs: [Vec<f64>; 3] = Default::default();
    let mut path_costs: [Vec<f64>; 3] = Default::default();
    let names = ["plain TCP", "raw rustls", "Connect stream"];
    let (mut suite, mut raw_suite) = (String::new(), String::new());
    // `E2E_BULK_REPS` overrides the repetitions (to study the spread).
    let reps = std::env::var("E2E_BULK_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(scale.bulk_reps);
    for _ in 0..reps {
        for (i, variant_runs) in runs.iter_mut().enumerate() {
            for attempt in 1..=attempts() {
                quiet().await;
                let cpu = Cpu::now();
                let bytes = scale.bulk_bytes;
                let (addr, server_cpu) = sink_on_thread(i, acceptor.clone(), db.clone()).await;
                let (raw, web) = (raw.clone(), web.clone());
                // Client and server on threads of their own, one connection each, so they
                // never share a worker: with both on one worker the rate halves, whichever the
                // variant, and the workers' placement would decide the figure.
                let ((rate, client_cpu), negotiated_now) = on_client_thread(move || async move {
                    match i {
                        0 => {
                            let s = TcpStream::connect(addr).await.unwrap();
                            s.set_nodelay(true).unwrap();
                            (transfer(s, bytes).await, String::new())
                        }
                        1 => {
                            let s = TcpStream::connect(addr).await.unwrap();
                            s.set_nodelay(true).unwrap();
                            let name = ServerName::IpAddress(addr.ip().into());
                            let tls = raw.connect(name, s).await.unwrap();
                            let suite = negotiated(tls.get_ref().1);
                            (transfer(tls, bytes).await, suite)
                        }
                        _ => {
                            let stream = web
                                .dialer()
                                .dial(&StaticResolver::new(addr.to_string(), "db"))
                                .await
                                .unwrap();
                            let suite = negotiated(stream.get_ref().1);
                            (transfer(stream, bytes).await, suite)
                        }
                    }
                })
                .await;
                match i {
                    1 => raw_suite = negotiated_now,
                    2 => suite = negotiated_now,
                    _ => {}
                }
                let (foreign, own) = cpu.since();
                let gib = scale.bulk_bytes as f64 / (1u64 << 30) as f64;
                let cpu_per_gib = own / gib;
                let server_cpu = server_cpu.await.unwrap_or_default();
                let path_per_gib = (client_cpu + server_cpu).as_secs_f64() / gib;
                cpu_costs[i].push(cpu_per_gib);
                path_costs[i].push(path_per_gib);
                println!(
                    "  {:<15} {:>8.0} MiB/s, {:.2} CPU-s per GiB, {:.2} in the two threads  (others {:.0}% CPU)",
                    names[i],
                    rate / (1 << 20) as f64,
                    cpu_per_gib,
                    path_per_gib,
                    foreign * 100.0
                );
                variant_runs.push((rate, foreign));
                if foreign < DISTURBED || attempt == attempts() {
                    noted(format!("bulk {}", names[i]), foreign);
                    break;
                }
            }
        }
    }
    // The median of the undisturbed runs (of all runs if every one was disturbed): loopback
    // throughput on a VM spreads by ±30% from run to run, the median holds still.
    let rates = runs
        .clone()
        .map(|runs| runs.iter().map(|(r, _)| *r).collect::<Vec<f64>>());
    let spread = runs.clone().map(|runs| {
        let mut rates: Vec<f64> = runs.iter().map(|(r, _)| *r).collect();
        rates.sort_by(f64::total_cmp);
        let at = |q: usize| rates[(rates.len() * q / 4).min(rates.len() - 1)];
        (at(1), at(3))
    });
    let best = runs.map(|runs| {
        let clean: Vec<f64> = runs
            .iter()
            .filter(|(_, f)| *f < DISTURBED)
            .map(|(r, _)| *r)
            .collect();
        if clean.is_empty() {
            median(&runs.iter().map(|(r, _)| *r).collect::<Vec<_>>())
        } else {
            median(&clean)
        }
    });
    let mib = |r: f64| format!("{:.0} MiB/s", r / (1 << 20) as f64);
    let cpu = cpu_costs.map(|c| median(&c));
    let path = path_costs.map(|c| median(&c));
    let with_cpu = |i: usize| {
        format!(
            "{} (IQR {:.0}–{:.0}), {:.2} CPU-s/GiB ({:.2} in the two threads)",
            mib(best[i]),
            spread[i].0 / (1 << 20) as f64,
            spread[i].1 / (1 << 20) as f64,
            cpu[i],
            path[i]
        )
    };
    table.row(
        format!("bulk, {}: {}", size(scale.bulk_bytes), names[0]),
        with_cpu(0),
        "(reference)".into(),
        String::new(),
        String::new(),
        None,
    );
    table.row(
        format!("bulk, {}: {}", size(scale.bulk_bytes), names[1]),
        with_cpu(1),
        "(baseline)".into(),
        format!("{:.2} of TCP", best[1] / best[0]),
        String::new(),
        None,
    );
    let r = best[2] / best[1];
    let (low, high) = ratio_interval(&rates[1], &rates[2]);
    table.row(
        format!("bulk, {}: {}", size(scale.bulk_bytes), names[2]),
        with_cpu(2),
        mib(best[1]),
        format!(
            "{r:.2} (95% CI {low:.2}–{high:.2}; CPU {:.2}, in the two threads {:.2})",
            cpu[2] / cpu[1],
            path[2] / path[1]
        ),
        "≥ 0.97 × raw".into(),
        Some(r >= 0.97),
    );
    table.note(format!(
        "Bulk: one established connection, {} written in 64 KiB writes, timed until the server \
         acknowledges the last byte; client and server run on threads of their own, pinned to \
         different cores; the median of {reps} interleaved runs per variant{}, leaving out runs \
         other processes disturbed unless all were. Single runs spread by ±30% on this kind of \
         machine (IQR = middle half of the runs; the ratio's 95% bootstrap interval says what \
         the medians can resolve); `hot_paths`' bulk_in_memory is the noise-free comparison. CPU-s/GiB is \
         this process's CPU time per GiB (connection set-up and every other task included), and \
         in brackets that of the client and server threads during the transfer alone \
         (`/proc/thread-self/schedstat`), medians over runs. Negotiated: raw \
         {raw_suite}; Connect {suite}.",
        size(scale.bulk_bytes),
        if scale.quick {
            " (--quick: 256 MiB instead of 1 GiB)"
        } else {
            ""
        }
    ));
}

/// A 95% bootstrap interval for median(`b`) / median(`a`), from 2,000 resamples.
pub(crate) fn ratio_interval(a: &[f64], b: &[f64]) -> (f64, f64) {
    use rand::Rng;
    if a.is_empty() || b.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = rand::rng();
    let mut resample = |v: &[f64]| {
        let r: Vec<f64> = (0..v.len())
            .map(|_| v[rng.random_range(0..v.len())])
            .collect();
        median(&r)
    };
    let mut ratios: Vec<f64> = (0..2000).map(|_| resample(b) / resample(a)).collect();
    ratios.sort_by(f64::total_cmp);
    (ratios[50], ratios[1949])
}

/// A sink server for one bulk connection on a new thread with a current-thread runtime of its
/// own: plain TCP (`kind` 0), raw rustls (1) or a `ConnectListener` of `db` (2).
pub(crate) async fn sink_on_thread(
    kind: usize,
    acceptor: TlsAcceptor,
    db: ConnectService,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<Duration>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (cpu_tx, cpu_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        pin_current_thread(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            // This thread's CPU for the transfer itself, the handshake left out.
            let sink = |stream| async move {
                let before = thread_cpu();
                serve_stream(stream, Mode::Sink).await;
                let _ = cpu_tx.send(thread_cpu().saturating_sub(before));
            };
            if kind == 2 {
                let mut listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
                let _ = tx.send(listener.local_addr());
                let (stream, _) = listener.accept().await.unwrap();
                sink(Box::new(stream) as Box<dyn Stream>).await;
                return;
            }
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _ = tx.send(listener.local_addr().unwrap());
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            if kind == 0 {
                sink(Box::new(tcp)).await;
            } else {
                sink(Box::new(acceptor.accept(tcp).await.unwrap())).await;
            }
        });
    });
    (rx.await.unwrap(), cpu_rx)
}

/// A byte stream of any of the bulk variants.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// CPU time the calling thread has used (`/proc/thread-self/schedstat`, nanoseconds); zero
/// where that file does not exist.
pub(crate) fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Runs `work` on a new thread with a current-thread runtime of its own, as a client in
/// another process would run.
pub(crate) async fn on_client_thread<F, Fut, T>(work: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        pin_current_thread(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(runtime.block_on(work()));
    });
    rx.await.unwrap()
}

/// Pins the calling thread to CPU `cpu` (modulo the CPU count) with `taskset`, so the bulk
/// client and server run on different cores: left to itself the kernel often wakes the reader
/// on the writer's core, which halves loopback throughput at random. Best effort: without
/// `taskset` the thread stays unpinned.
pub(crate) fn pin_current_thread(cpu: usize) {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(str::to_owned) else {
        return;
    };
    let cpu = (cpu % workers()).to_string();
    let _ = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu, &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The protocol version and cipher suite of an established connection.
pub(crate) fn negotiated(conn: &rustls::CommonState) -> String {
    format!(
        "{:?} {:?}",
        conn.protocol_version().unwrap(),
        conn.negotiated_cipher_suite().unwrap().suite()
    )
}

/// Sends `bytes` over `stream` in 64 KiB writes: bytes per second until acknowledged, and the
/// calling thread's CPU meanwhile.
pub(crate) async fn transfer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    bytes: u64,
) -> (f64, Duration) {
    let chunk = vec![0x5au8; CHUNK];
    let cpu = thread_cpu();
    let start = Instant::now();
    stream.write_all(&bytes.to_be_bytes()).await.unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
        stream.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    stream.flush().await.unwrap();
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    (bytes as f64 / secs, thread_cpu().saturating_sub(cpu))
}
