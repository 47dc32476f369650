//! Latency histograms (microseconds) and their summaries, shared by every command, plus
//! the runtime helper that builds one monoio runtime per thread.

use std::future::Future;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency kept exactly: one hour in microseconds; larger values saturate.
const MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds")
}

/// A lifetime histogram and a per-interval one that the sampler drains each second.
/// One per producing thread, locked once per batch of records.
pub struct Hists {
    pub total: Histogram<u64>,
    pub interval: Histogram<u64>,
}

impl Default for Hists {
    fn default() -> Self {
        Hists {
            total: new_hist(),
            interval: new_hist(),
        }
    }
}

impl Hists {
    pub fn record(&mut self, us: u64) {
        let us = us.max(1);
        self.total.saturating_record(us);
        self.interval.saturating_record(us);
    }
}

/// Sums the lifetime histograms of several threads.
pub fn merge_total(all: &[Mutex<Hists>]) -> Histogram<u64> {
    let mut out = new_hist();
    for h in all {
        let h = h.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.add(&h.total);
    }
    out
}

/// Sums and clears the interval histograms of several threads.
pub fn take_interval(all: &[Mutex<Hists>]) -> Histogram<u64> {
    let mut out = new_hist();
    for h in all {
        let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.add(&h.interval);
        h.interval.reset();
    }
    out
}

/// The percentiles every report shows, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// `p50 1.2ms  p99 3.4ms  p99.9 8.0ms`
    pub fn brief(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        format!(
            "p50 {}  p99 {}  p99.9 {}",
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us)
        )
    }
}

/// Human latency: `850us`, `1.23ms`, `2.50s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// Human count: `1234567` -> `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs `fut` on a fresh monoio runtime for this thread: io_uring where the kernel
/// allows it, else the legacy epoll driver (`MONOIO_FORCE_LEGACY_DRIVER=1` forces it).
pub fn block_on<F: Future>(fut: F) -> std::io::Result<F::Output> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(1024)
        .enable_timer()
        .build()?;
    Ok(rt.block_on(fut))
}

/// Which driver [`block_on`] picks on this machine.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "legacy (epoll)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(850), "850us");
        assert_eq!(fmt_us(1_234), "1.23ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
    }

    #[test]
    fn percentiles_and_merge() {
        let all: Vec<Mutex<Hists>> = (0..2).map(|_| Mutex::default()).collect();
        for v in 1..=1000 {
            all[(v % 2) as usize].lock().unwrap().record(v);
        }
        let p = Percentiles::of(&merge_total(&all));
        assert_eq!(p.count, 1000);
        assert!((495..=505).contains(&p.p50_us));
        assert!(p.p99_us >= 985);
        let interval = take_interval(&all);
        assert_eq!(interval.len(), 1000);
        assert!(take_interval(&all).is_empty());
        assert_eq!(merge_total(&all).len(), 1000);
        assert_eq!(Percentiles::of(&new_hist()).brief(), "-");
    }
}
