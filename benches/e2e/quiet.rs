//! Other processes (see the crate docs in `main.rs`).

use super::*;

/// CPU time the whole machine and this process have used, from `/proc` (clock ticks).
pub(crate) struct Cpu {
    pub(crate) busy: u64,
    pub(crate) own: u64,
    pub(crate) switches: u64,
    pub(crate) at: Instant,
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
pub(crate) const CLK_TCK: f64 = 100.0;

impl Cpu {
    pub(crate) fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait.
        let busy = stat
            .lines()
            .next()
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take(8)
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .filter_map(|(_, v)| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        let own_stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command's closing parenthesis start at field 3; utime and stime are
        // fields 14 and 15.
        let own = own_stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        Self {
            busy,
            own,
            switches: context_switches(),
            at: Instant::now(),
        }
    }

    /// The share of the machine's CPU capacity that other processes (and the hypervisor's
    /// steal) used since `self`.
    pub(crate) fn foreign_since(&self) -> f64 {
        self.since().0
    }

    /// That share, and the CPU seconds this process used since `self`.
    pub(crate) fn since(&self) -> (f64, f64) {
        self.since_excluding(0)
    }

    /// [`Cpu::since`], not counting `ticks` of CPU time a child process of ours used.
    pub(crate) fn since_excluding(&self, ticks: u64) -> (f64, f64) {
        let now = Cpu::now();
        let capacity = now.at.duration_since(self.at).as_secs_f64() * CLK_TCK * workers() as f64;
        let own = now.own.saturating_sub(self.own) as f64;
        let foreign = now.busy.saturating_sub(self.busy) as f64 - own - ticks as f64;
        ((foreign / capacity).clamp(0.0, 1.0), own / CLK_TCK)
    }
}

/// Context switches so far, summed over this process's threads (`/proc/self/task/*/status`).
pub(crate) fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Waits (a little) for other processes to leave the CPU before a measurement: up to 2 s
/// (5 s without `--quick`) for a window of 200 ms in which they used under 10% of it.
pub(crate) async fn quiet() {
    if over_budget() {
        return;
    }
    let limit = if QUICK.load(Ordering::Relaxed) { 2 } else { 5 };
    let deadline = Instant::now() + Duration::from_secs(limit);
    loop {
        let cpu = Cpu::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if cpu.foreign_since() < DISTURBED || Instant::now() > deadline {
            return;
        }
    }
}

/// A measurement during which other processes took this share of the CPU or more is
/// disturbed.
pub(crate) const DISTURBED: f64 = 0.10;

/// How many times a disturbed measurement is made: 3 (2 with `--quick`), and only once after
/// the run's budget for waiting and measuring again is spent.
pub(crate) fn attempts() -> usize {
    match (QUICK.load(Ordering::Relaxed), over_budget()) {
        (_, true) => 1,
        (true, false) => 2,
        (false, false) => 3,
    }
}

/// Whether the run is past the time after which it neither waits for other processes nor
/// measures again: 70 s with `--quick` (so a busy machine cannot push it past 2 minutes),
/// 4 minutes otherwise.
pub(crate) fn over_budget() -> bool {
    let budget = if QUICK.load(Ordering::Relaxed) {
        70
    } else {
        240
    };
    START
        .get()
        .is_some_and(|start| start.elapsed() > Duration::from_secs(budget))
}

pub(crate) static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Runs `measure` until other processes stayed under [`DISTURBED`] during it, at most
/// [`attempts`] times; returns the least disturbed run.
pub(crate) async fn least_disturbed<F, Fut>(mut measure: F) -> Load
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Load>,
{
    let mut best: Option<Load> = None;
    for attempt in 1..=attempts() {
        let load = measure().await;
        let foreign = load.foreign;
        if best.as_ref().is_none_or(|b| load.foreign < b.foreign) {
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

pub(crate) static QUICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) static FOREIGN: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

/// Records how much of the CPU other processes took during a measurement.
pub(crate) fn noted(what: String, foreign: f64) {
    FOREIGN.lock().unwrap().push((what, foreign));
}
