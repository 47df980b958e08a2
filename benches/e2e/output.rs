//! Output (see the crate docs in `main.rs`).

use super::*;

#[derive(Default)]
pub(crate) struct Table {
    pub(crate) rows: Vec<[String; 6]>,
    pub(crate) notes: Vec<String>,
    /// Handshakes/s at c=32 for raw, agent, intentions (for the rotation rows).
    pub(crate) steady_c32: Vec<f64>,
}

impl Table {
    pub(crate) fn row(
        &mut self,
        figure: String,
        value: String,
        baseline: String,
        ratio: String,
        target: String,
        met: Option<bool>,
    ) {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        self.rows
            .push([figure, value, baseline, ratio, target, met.to_owned()]);
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub(crate) fn print(&self, scale: &Scale) {
        let header = [
            "Figure",
            "Measured",
            "Baseline (same run)",
            "Ratio",
            "Target",
            "Met",
        ];
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        print!("{out}");
        println!();
        if scale.quick {
            println!(
                "- --quick: shorter measurements and 256 MiB bulk transfers (full run: 1 GiB)."
            );
        }
        for note in &self.notes {
            println!("- {note}");
        }
        let foreign = FOREIGN.lock().unwrap();
        let busy: Vec<String> = foreign
            .iter()
            .filter(|(_, f)| *f >= DISTURBED)
            .map(|(what, f)| format!("{what} ({:.0}%)", f * 100.0))
            .collect();
        let max = foreign.iter().map(|(_, f)| *f).fold(0.0, f64::max);
        println!(
            "- Other processes on the machine used at most {:.0}% of its CPU during a \
             measurement{}",
            max * 100.0,
            if busy.is_empty() {
                " (all under 10%).".to_owned()
            } else {
                format!("; 10% or more during: {}.", busy.join(", "))
            }
        );
    }
}

pub(crate) fn phase(name: &str) {
    println!("== {name}");
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("machine: nproc {}, CPU {cpu}, memory {mem}", workers())
}

pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub(crate) fn percentiles(latencies: &mut [Duration]) -> (Duration, Duration) {
    if latencies.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    latencies.sort_unstable();
    let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    (at(50), at(99))
}

/// Seconds as microseconds; `-` when unmeasured (NaN).
pub(crate) fn us_f(secs: f64) -> String {
    if secs.is_finite() {
        us(Duration::from_secs_f64(secs))
    } else {
        "-".into()
    }
}

pub(crate) fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

pub(crate) fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
