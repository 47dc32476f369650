//! Where a run's CPU goes, per unit of work: the CPU of ricochet's threads (by group), of
//! the sink and the rest of the load tool, and the machine's busy time, read at the edges
//! of each phase — ingest, drain, raw ceiling — and divided by what the phase did
//! (accepted events, deliveries, bare requests). All figures are core-microseconds per
//! unit: 10 µs per delivery at 50,000 deliveries/s is half a core.
//!
//! The phases answer "what bounds the figure" with numbers from the same run: a delivery
//! in the drain (ricochet and the sink, nothing else running) against a bare request in
//! the raw phase (the client and the same sink), and an accepted event during ingest net
//! of the deliveries made meanwhile. From those two, [`CostBreakdown::machine_bound_per_s`]
//! is the end-to-end rate the machine's cores allow at these costs.
//!
//! This module only reads `/proc` and does arithmetic; it must not change what it
//! measures (one read of a few dozen small files per phase edge).

use serde::Serialize;

use crate::procstat::{self, ThreadTicks};

/// ricochet's thread groups, by thread name (`comm` is cut at 15 bytes).
fn ricochet_group(name: &str) -> Option<&'static str> {
    Some(if name.starts_with("ricochet-worker") {
        "workers"
    } else if name.starts_with("ricochet-commit") || name.starts_with("ricochet-sync") {
        "committer"
    } else if name.starts_with("rocksdb") {
        "rocksdb"
    } else {
        "other"
    })
}

/// The load tool's thread groups: the sink's threads live through every phase; the
/// generator's and the bare client's have exited when a phase ends, so their time is
/// the process's less the sink's.
fn load_group(name: &str) -> Option<&'static str> {
    name.starts_with("sink-").then_some("sink")
}

/// The counters at one edge of a phase.
#[derive(Debug, Clone, Default)]
pub struct Mark {
    ricochet: Option<ThreadTicks>,
    load: Option<ThreadTicks>,
    /// (busy, all) ticks of the machine.
    machine: Option<(u64, u64)>,
    at: Option<std::time::Instant>,
}

impl Mark {
    /// Reads the counters now; `ricochet` is its pid while it runs.
    pub fn take(ricochet: Option<u32>) -> Mark {
        Mark {
            ricochet: ricochet.and_then(|pid| ThreadTicks::read(pid, ricochet_group)),
            load: ThreadTicks::read(std::process::id(), load_group),
            machine: procstat::machine_ticks(),
            at: Some(std::time::Instant::now()),
        }
    }
}

/// One phase's CPU per unit of work, in core-microseconds. A figure is `None` where its
/// process was not running through the whole phase.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PhaseCost {
    pub seconds: f64,
    /// Accepted events (ingest), deliveries (drain) or requests (raw).
    pub units: u64,
    /// Deliveries the sink counted during the phase.
    pub deliveries: u64,
    /// Requests the sink counted during the phase (failed attempts and retries too).
    pub requests: u64,
    /// Cores the machine has (from `/proc/stat`).
    pub cores: f64,
    /// Busy share of all the machine's cores.
    pub machine_busy: f64,
    /// Busy time of the whole machine (every process) per unit.
    pub machine_us: f64,
    pub ricochet_us: Option<f64>,
    pub ricochet_workers_us: Option<f64>,
    pub ricochet_workers_kernel_us: Option<f64>,
    /// The committer and the syncer.
    pub ricochet_committer_us: Option<f64>,
    /// RocksDB's flush and compaction threads.
    pub ricochet_rocksdb_us: Option<f64>,
    pub sink_us: Option<f64>,
    /// The load tool apart from the sink: the generator during ingest, the bare client
    /// in the raw phase (and the run's own sampling, a fraction of a percent).
    pub load_other_us: Option<f64>,
    pub load_other_kernel_us: Option<f64>,
}

impl PhaseCost {
    /// The phase from `a` to `b`, which did `units` of work, and in which the sink
    /// counted `deliveries` deliveries out of `requests` requests.
    pub fn between(
        a: &Mark,
        b: &Mark,
        units: u64,
        deliveries: u64,
        requests: u64,
    ) -> Option<PhaseCost> {
        let (ma, mb) = (a.machine?, b.machine?);
        let seconds = b.at?.duration_since(a.at?).as_secs_f64();
        if units == 0 || seconds <= 0.0 {
            return None;
        }
        let tps = procstat::ticks_per_second();
        let per = |ticks: u64| ticks as f64 * 1e6 / tps / units as f64;
        let all = mb.1.saturating_sub(ma.1);
        let busy = mb.0.saturating_sub(ma.0);
        let mut c = PhaseCost {
            seconds,
            units,
            deliveries,
            requests,
            cores: all as f64 / tps / seconds,
            machine_busy: busy as f64 / (all.max(1)) as f64,
            machine_us: per(busy),
            ..PhaseCost::default()
        };
        let diff =
            |a: (u64, u64), b: (u64, u64)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
        if let (Some(ra), Some(rb)) = (&a.ricochet, &b.ricochet) {
            let total = diff(ra.total, rb.total);
            let g = |name| diff(ra.group(name), rb.group(name));
            let (wu, wk) = g("workers");
            let (cu, ck) = g("committer");
            let (du, dk) = g("rocksdb");
            c.ricochet_us = Some(per(total.0 + total.1));
            c.ricochet_workers_us = Some(per(wu + wk));
            c.ricochet_workers_kernel_us = Some(per(wk));
            c.ricochet_committer_us = Some(per(cu + ck));
            c.ricochet_rocksdb_us = Some(per(du + dk));
        }
        if let (Some(la), Some(lb)) = (&a.load, &b.load) {
            let total = diff(la.total, lb.total);
            let (su, sk) = diff(la.group("sink"), lb.group("sink"));
            let (ou, ok) = (total.0.saturating_sub(su), total.1.saturating_sub(sk));
            c.sink_us = Some(per(su + sk));
            c.load_other_us = Some(per(ou + ok));
            c.load_other_kernel_us = Some(per(ok));
        }
        Some(c)
    }
}

/// A run's phases.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CostBreakdown {
    /// From the generator's start to its last ack; per accepted event.
    pub ingest: Option<PhaseCost>,
    /// From the end of ingest (or of the outage, in the process that drains after a
    /// restart) to the last delivery, when every request in it was answered with a
    /// delivery; per delivery.
    pub drain: Option<PhaseCost>,
    /// The raw ceiling's best measurement; per request.
    pub raw: Option<PhaseCost>,
}

impl CostBreakdown {
    /// The ingest phase and the drain, when every request of the ingest phase was a
    /// delivery (failed attempts during ingest have no price here).
    fn priced(&self) -> Option<(&PhaseCost, &PhaseCost)> {
        let i = self
            .ingest
            .as_ref()
            .filter(|i| i.requests == i.deliveries)?;
        Some((i, self.drain.as_ref()?))
    }

    /// The machine's busy time per accepted event during ingest, less the deliveries
    /// made meanwhile priced at the drain's cost per delivery: what accepting an event
    /// costs (generator, ingest, commit, fsync). An estimate that leans low: a drain's
    /// deliveries read their events back from RocksDB, and deliveries handed over from
    /// memory during ingest cost less.
    pub fn ingest_net_machine_us(&self) -> Option<f64> {
        let (i, d) = self.priced()?;
        let net = i.machine_us - i.deliveries as f64 * d.machine_us / i.units as f64;
        (net > 0.0).then_some(net)
    }

    /// ricochet's own CPU per accepted event during ingest, net of the deliveries made
    /// meanwhile (priced at ricochet's drain cost per delivery).
    pub fn ingest_net_ricochet_us(&self) -> Option<f64> {
        let (i, d) = self.priced()?;
        let net = i.ricochet_us? - i.deliveries as f64 * d.ricochet_us? / i.units as f64;
        (net > 0.0).then_some(net)
    }

    /// The end-to-end rate (events accepted and delivered per second) the machine's
    /// cores allow when every event costs [`Self::ingest_net_machine_us`] to accept and
    /// the drain's machine time to deliver. Where the CPU is what bounds a run, its
    /// deliveries/s come close to this; where something else does (rate limits, waiting
    /// for retries), they stay below it.
    pub fn machine_bound_per_s(&self) -> Option<f64> {
        let d = self.drain.as_ref()?;
        Some(d.cores * 1e6 / (self.ingest_net_machine_us()? + d.machine_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(secs: u64, machine: (u64, u64), ric: &[(&'static str, u64, u64)]) -> Mark {
        let at = start() + std::time::Duration::from_secs(secs);
        let ticks = |groups: &[(&'static str, u64, u64)]| ThreadTicks {
            total: groups.iter().fold((0, 0), |t, g| (t.0 + g.1, t.1 + g.2)),
            groups: groups.to_vec(),
        };
        Mark {
            ricochet: Some(ticks(ric)),
            load: Some(ticks(&[("sink", secs * 10, secs * 30)])),
            machine: Some(machine),
            at: Some(at),
        }
    }

    fn start() -> std::time::Instant {
        static T: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *T.get_or_init(std::time::Instant::now)
    }

    #[test]
    fn per_unit_figures_and_the_machine_bound() {
        let tps = procstat::ticks_per_second();
        let t = tps as u64;
        // Two cores for 10 s, fully busy; ricochet's workers use 1 core (half kernel).
        let a = mark(0, (0, 0), &[("workers", 0, 0), ("committer", 0, 0)]);
        let b = mark(
            10,
            (20 * t, 20 * t),
            &[("workers", 5 * t, 5 * t), ("committer", 2 * t, 0)],
        );
        let i = PhaseCost::between(&a, &b, 500_000, 200_000, 200_000).unwrap();
        assert!((i.cores - 2.0).abs() < 1e-9, "{i:?}");
        assert!((i.machine_busy - 1.0).abs() < 1e-9);
        assert!((i.machine_us - 40.0).abs() < 1e-9);
        assert!((i.ricochet_workers_us.unwrap() - 20.0).abs() < 1e-9);
        assert!((i.ricochet_workers_kernel_us.unwrap() - 10.0).abs() < 1e-9);
        assert!((i.ricochet_us.unwrap() - 24.0).abs() < 1e-9);
        // The load tool's process is its sink here: 40 ticks a second for 10 s.
        assert!((i.sink_us.unwrap() - 400.0 * 1e6 / tps / 500_000.0).abs() < 1e-9);
        assert_eq!(i.load_other_us, Some(0.0));
        // The drain: 10 s of the whole machine for 800,000 deliveries = 25 µs each.
        let c = mark(
            20,
            (40 * t, 40 * t),
            &[("workers", 10 * t, 10 * t), ("committer", 4 * t, 0)],
        );
        let d = PhaseCost::between(&b, &c, 800_000, 800_000, 800_000).unwrap();
        assert!((d.machine_us - 25.0).abs() < 1e-9);
        let mut cb = CostBreakdown {
            ingest: Some(i),
            drain: Some(d),
            raw: None,
        };
        // 40 µs per accepted event, of which 200k/500k deliveries × 25 µs = 10 µs.
        assert!((cb.ingest_net_machine_us().unwrap() - 30.0).abs() < 1e-9);
        // 2 cores / (30 + 25 µs).
        let bound = cb.machine_bound_per_s().unwrap();
        assert!((bound - 2e6 / 55.0).abs() < 1e-6, "{bound}");
        // ricochet: 24 µs per event in ingest less 0.4 × 15 µs per delivery.
        assert!((cb.ingest_net_ricochet_us().unwrap() - 18.0).abs() < 1e-9);
        // Failed requests during ingest (an outage): no price, no bound.
        cb.ingest.as_mut().unwrap().requests = 300_000;
        assert_eq!(cb.ingest_net_machine_us(), None);
        assert_eq!(cb.ingest_net_ricochet_us(), None);
        assert_eq!(cb.machine_bound_per_s(), None);
    }

    #[test]
    fn no_work_or_no_counters_is_no_figure() {
        let a = mark(0, (0, 0), &[]);
        let b = mark(1, (100, 200), &[]);
        assert_eq!(PhaseCost::between(&a, &b, 0, 0, 0), None);
        assert_eq!(PhaseCost::between(&a, &Mark::default(), 10, 0, 0), None);
        assert_eq!(CostBreakdown::default().machine_bound_per_s(), None);
    }

    #[test]
    fn marks_read_this_process() {
        let m = Mark::take(Some(std::process::id()));
        let r = m.ricochet.unwrap();
        // This test process has no ricochet-named threads: all of it is "other".
        assert_eq!(r.group("workers"), (0, 0));
        assert!(m.machine.is_some() && m.load.is_some());
    }

    #[test]
    fn thread_names_map_to_groups() {
        assert_eq!(ricochet_group("ricochet-worker"), Some("workers"));
        assert_eq!(ricochet_group("ricochet-sync"), Some("committer"));
        assert_eq!(ricochet_group("rocksdb:low"), Some("rocksdb"));
        assert_eq!(ricochet_group("ricochet-dns"), Some("other"));
        assert_eq!(load_group("sink-1"), Some("sink"));
        assert_eq!(load_group("raw-0"), None);
        assert_eq!(load_group("gen-writer-0"), None);
    }
}
