//! What a run measured, the per-second series, and how it is shown: a table with one
//! column per run and a median column, or JSON for machines. An interrupted run
//! (SIGINT/SIGTERM) is shown as such and left out of every median.

use serde::Serialize;

use crate::ratecheck::RateCounts;
use crate::stats::{fmt_count, fmt_us, Percentiles};

/// One second of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the generator started.
    pub t_s: f64,
    /// Seconds the sample covers: a second or a little more, less for the last one.
    pub span_s: f64,
    pub sent_per_s: f64,
    pub accepted_per_s: f64,
    /// Every HTTP request the sink got (retries included).
    pub requests_per_s: f64,
    /// First 2xx deliveries.
    pub deliveries_per_s: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_p999_ms: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_p999_ms: f64,
    /// Accepted but not yet delivered.
    pub pending: u64,
}

/// The `restart` scenario option: ricochet killed with `kill -9` after ingest and
/// started again on the same data dir and config.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartMetrics {
    /// Pid of the process killed.
    pub killed_pid: u32,
    /// Pid of the restarted process (the drain runs against it).
    pub pid: u32,
    /// Accepted events not yet delivered when it was killed.
    pub backlog_at_kill: u64,
    /// Spawn of the new process -> first `200 {"status":"ok"}` from `GET /health`.
    pub health_s: f64,
    /// Spawn -> first `ok` (or `dup`) ack of the probe event on a fresh ingest connection:
    /// ready to accept. None when it never came (within `--startup-timeout`).
    pub first_ack_s: Option<f64>,
    /// The probe's id (`ld-<run>-<n>`, n above every generated id) and type.
    pub probe_id: String,
    pub probe_type: String,
    /// Lines written for the probe (a retry follows an `err` ack or a lost connection).
    pub probe_attempts: u32,
    /// The ack that ended the probe (`ok <id> <deliveries>`, `dup <id>`), or the last
    /// problem when none came.
    pub probe_ack: String,
    /// The probe counts as one more accepted event (in `accepted`, `events_sent`,
    /// `deliveries_expected` and the loss check; not in the ack latency or accepted/s).
    pub probe_accepted: bool,
    /// `<deliveries>` of its `ok` ack.
    pub probe_deliveries: u64,
    pub probe_delivered: bool,
    /// CPU seconds of the killed process (`ricochet_cpu_s` is both processes' sum).
    pub killed_cpu_s: Option<f64>,
    /// Peak RSS of the killed process (`ricochet_peak_rss_mib` is the larger of the two).
    pub killed_peak_rss_mib: Option<f64>,
    /// Peak RSS (`VmHWM`) of the restarted process, from start through the drain.
    pub peak_rss_mib: Option<f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunMetrics {
    pub run: usize,
    /// "http" or "https" when a run is one of several schemes (`--https`,
    /// `--https-compare`); empty otherwise.
    pub label: String,
    pub run_tag: String,
    pub events_sent: u64,
    /// Every `ok` ack (and the restart probe, when it was accepted).
    pub accepted: u64,
    /// Of those, `ok` acks with 0 deliveries (routed to no enabled endpoint): not
    /// expected at the sink, so outside the lost/undelivered check.
    pub ok_no_delivery: u64,
    pub dup_acks: u64,
    pub err_acks: u64,
    pub missing_acks: u64,
    /// ok/dup acks whose id is not the event at their position.
    pub ack_mismatch: u64,
    /// Set when the generator sent fewer events than asked (by count, or before its
    /// duration ended) because the server closed the connection, stopped reading or
    /// acking, or exited: how many of how many. Fails the run.
    pub ingest_cut_short: Option<String>,
    /// First write to last ack.
    pub ingest_s: f64,
    /// `ok` acks over first write -> last ack (the probe left out).
    pub accepted_per_s: f64,
    /// Sum of `<deliveries>` in the acks.
    pub deliveries_expected: u64,
    /// Distinct events answered 2xx by the sink.
    pub delivered: u64,
    pub requests: u64,
    /// Delivered / (start -> last delivery): the start is the generator's first write,
    /// or the sink coming up after an outage (the restart probe left out).
    pub deliveries_per_s: f64,
    /// Distinct events / (first .. last first attempt), when some requests were
    /// retries and the receiver was up throughout: throughput with the retries left out
    /// (`retry-storm`'s target compares it with `max`'s deliveries/s).
    pub first_attempts_per_s: Option<f64>,
    /// The best delivery rate of a whole per-second sample; None when no sample spanned
    /// a full second.
    pub peak_deliveries_per_s: Option<f64>,
    /// Requests (retries and failures included) / (start -> last request), the same
    /// start as `deliveries_per_s` (after an outage: only requests since it ended).
    pub requests_per_s: f64,
    /// From the end of ingest (or of the outage) to the last delivery; None without one.
    pub drain_s: Option<f64>,
    pub drained: bool,
    pub drain_end: String,
    pub ack: Percentiles,
    /// Arrival at the sink of the request answered the first 2xx (before the sink's
    /// latency) - the event's `sent_us` (with a rate: its scheduled send time).
    pub lag: Percentiles,
    /// 2xx answers for events already answered 2xx, as the sink saw them (a 2xx ricochet
    /// never read, its attempt timed out, included).
    pub duplicates: u64,
    pub retries: u64,
    /// Accepted, never seen by the sink (seen without a 2xx: `undelivered`).
    pub lost: u64,
    /// Accepted and seen, never answered 2xx (e.g. every retry got a scripted 500).
    pub undelivered: u64,
    pub misrouted: u64,
    /// The scenario's sink answers every request 2xx once up (no failing script entry,
    /// no resets), so `undelivered > 0` fails the run.
    pub all_deliveries_expected: bool,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub resets: u64,
    /// Responses whose body the sink sent slowly.
    pub slow_bodies: u64,
    /// Stopped by SIGINT/SIGTERM: its figures end where it stopped, and it is left out
    /// of the medians.
    pub interrupted: bool,
    /// The run's temp dir, when it was kept (`--keep`, a failure, an interruption).
    pub run_dir: Option<String>,
    pub ricochet_cpu_s: Option<f64>,
    pub ricochet_peak_rss_mib: Option<f64>,
    pub ricochet_exit: String,
    pub load_tool_cpu_s: Option<f64>,
    /// The machine's state at the run's start ([`crate::probe`]).
    pub machine: Option<crate::probe::MachineProbe>,
    /// Every raw measurement of the run; the ceiling is the best ([`RunMetrics::raw_ceiling`]).
    pub raw_points: Vec<crate::run::RawPoint>,
    /// Connections the sink accepted.
    pub sink_connections: u64,
    /// ricochet's own count of the connections it opened (from `/metrics` at the end;
    /// after a restart, the new process only).
    pub ricochet_connections: Option<crate::run::ConnectionCounts>,
    /// TLS handshakes the sink completed (HTTPS runs).
    pub tls_handshakes: Option<u64>,
    /// The per-endpoint one-second window check (scenarios with `max_rps > 0`).
    pub rate_check: Option<RateCounts>,
    /// `ricochet_deliveries_pending` when ricochet was stopped after a complete drain
    /// (deliveries it still retried although the sink had answered 2xx).
    pub ricochet_pending_at_end: Option<u64>,
    /// Scenarios with `restart = true` (or `--restart`).
    pub restart: Option<RestartMetrics>,
    /// CPU per unit of work in each phase ([`crate::cost`]).
    pub cost: crate::cost::CostBreakdown,
    pub notes: Vec<String>,
    pub series: Vec<Sample>,
}

impl RunMetrics {
    /// The raw ceiling of the run: the best of its raw measurements.
    pub fn raw_ceiling(&self) -> Option<crate::run::RawPoint> {
        crate::run::RawPoint::best(&self.raw_points)
    }

    /// deliveries/s as a share of the raw ceiling.
    pub fn raw_fraction(&self) -> Option<f64> {
        self.raw_ceiling()
            .map(|p| self.deliveries_per_s / p.requests_per_s.max(1e-9))
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Count,
    Rate,
    Secs,
    /// Seconds with milliseconds.
    Secs3,
    Micros,
    /// Microseconds with one decimal (CPU per event, the fsync probe).
    MicrosFrac,
    MiB,
    Nanos,
    Share,
}

type Getter = fn(&RunMetrics) -> Option<f64>;

/// (json key, label, unit, getter) for every row of the table.
const ROWS: &[(&str, &str, Unit, Getter)] = &[
    ("events_sent", "events sent", Unit::Count, |m| {
        Some(m.events_sent as f64)
    }),
    ("accepted", "accepted (ok)", Unit::Count, |m| {
        Some(m.accepted as f64)
    }),
    (
        "ok_no_delivery",
        "  ...of them ok with 0 deliveries",
        Unit::Count,
        |m| Some(m.ok_no_delivery as f64),
    ),
    (
        "accepted_per_s",
        "accepted events/s (first write -> last ack)",
        Unit::Rate,
        |m| Some(m.accepted_per_s),
    ),
    ("err_acks", "err acks", Unit::Count, |m| {
        Some(m.err_acks as f64)
    }),
    ("dup_acks", "dup acks", Unit::Count, |m| {
        Some(m.dup_acks as f64)
    }),
    ("missing_acks", "missing acks", Unit::Count, |m| {
        Some(m.missing_acks as f64)
    }),
    ("ack_mismatch", "acks out of place", Unit::Count, |m| {
        Some(m.ack_mismatch as f64)
    }),
    ("ack_p50_us", "ack latency p50", Unit::Micros, |m| {
        (m.ack.count > 0).then_some(m.ack.p50_us as f64)
    }),
    ("ack_p99_us", "ack latency p99", Unit::Micros, |m| {
        (m.ack.count > 0).then_some(m.ack.p99_us as f64)
    }),
    ("ack_p999_us", "ack latency p99.9", Unit::Micros, |m| {
        (m.ack.count > 0).then_some(m.ack.p999_us as f64)
    }),
    ("delivered", "delivered (distinct)", Unit::Count, |m| {
        Some(m.delivered as f64)
    }),
    (
        "deliveries_per_s",
        "deliveries/s (start -> last delivery)",
        Unit::Rate,
        |m| Some(m.deliveries_per_s),
    ),
    (
        "first_attempts_per_s",
        "first attempts/s",
        Unit::Rate,
        |m| m.first_attempts_per_s,
    ),
    (
        "peak_deliveries_per_s",
        "deliveries/s, best whole 1-s sample",
        Unit::Rate,
        |m| m.peak_deliveries_per_s,
    ),
    (
        "requests_per_s",
        "http requests/s (start -> last request)",
        Unit::Rate,
        |m| Some(m.requests_per_s),
    ),
    ("status_4xx", "4xx answers", Unit::Count, |m| {
        Some(m.status_4xx as f64)
    }),
    ("status_5xx", "5xx answers", Unit::Count, |m| {
        Some(m.status_5xx as f64)
    }),
    ("resets", "connection resets (sink)", Unit::Count, |m| {
        Some(m.resets as f64)
    }),
    ("slow_bodies", "slow bodies (sink)", Unit::Count, |m| {
        Some(m.slow_bodies as f64)
    }),
    ("lag_p50_us", "delivery lag p50", Unit::Micros, |m| {
        (m.lag.count > 0).then_some(m.lag.p50_us as f64)
    }),
    ("lag_p99_us", "delivery lag p99", Unit::Micros, |m| {
        (m.lag.count > 0).then_some(m.lag.p99_us as f64)
    }),
    ("lag_p999_us", "delivery lag p99.9", Unit::Micros, |m| {
        (m.lag.count > 0).then_some(m.lag.p999_us as f64)
    }),
    ("drain_s", "drain time", Unit::Secs, |m| m.drain_s),
    ("retries", "retried requests", Unit::Count, |m| {
        Some(m.retries as f64)
    }),
    ("duplicates", "duplicates", Unit::Count, |m| {
        Some(m.duplicates as f64)
    }),
    ("lost", "lost (never seen)", Unit::Count, |m| {
        Some(m.lost as f64)
    }),
    (
        "undelivered",
        "undelivered (seen, no 2xx)",
        Unit::Count,
        |m| Some(m.undelivered as f64),
    ),
    ("misrouted", "misrouted", Unit::Count, |m| {
        Some(m.misrouted as f64)
    }),
    ("ricochet_cpu_s", "ricochet CPU", Unit::Secs, |m| {
        m.ricochet_cpu_s
    }),
    (
        "ricochet_cpu_us_per_event",
        "ricochet CPU per accepted event",
        Unit::MicrosFrac,
        |m| {
            m.ricochet_cpu_s
                .filter(|_| m.accepted > 0)
                .map(|s| s * 1e6 / m.accepted as f64)
        },
    ),
    (
        "ricochet_peak_rss_mib",
        "ricochet peak RSS",
        Unit::MiB,
        |m| m.ricochet_peak_rss_mib,
    ),
    (
        "restart_backlog_at_kill",
        "restart: backlog at kill -9",
        Unit::Count,
        |m| m.restart.as_ref().map(|r| r.backlog_at_kill as f64),
    ),
    (
        "restart_health_s",
        "restart: health after",
        Unit::Secs3,
        |m| m.restart.as_ref().map(|r| r.health_s),
    ),
    (
        "restart_first_ack_s",
        "restart: first ack after",
        Unit::Secs3,
        |m| m.restart.as_ref().and_then(|r| r.first_ack_s),
    ),
    (
        "restart_peak_rss_mib",
        "restart: peak RSS (new pid)",
        Unit::MiB,
        |m| m.restart.as_ref().and_then(|r| r.peak_rss_mib),
    ),
    ("load_tool_cpu_s", "load tool CPU", Unit::Secs, |m| {
        m.load_tool_cpu_s
    }),
    (
        "cost_ingest_machine_busy",
        "ingest: machine busy",
        Unit::Share,
        |m| m.cost.ingest.as_ref().map(|c| c.machine_busy),
    ),
    (
        "cost_ingest_ricochet_net_us",
        "ingest: ricochet CPU per event, net of deliveries",
        Unit::MicrosFrac,
        |m| m.cost.ingest_net_ricochet_us(),
    ),
    (
        "cost_ingest_machine_net_us",
        "ingest: machine CPU per event, net of deliveries",
        Unit::MicrosFrac,
        |m| m.cost.ingest_net_machine_us(),
    ),
    (
        "cost_drain_machine_busy",
        "drain: machine busy",
        Unit::Share,
        |m| m.cost.drain.as_ref().map(|c| c.machine_busy),
    ),
    (
        "cost_drain_machine_us",
        "drain: machine CPU per delivery",
        Unit::MicrosFrac,
        |m| m.cost.drain.as_ref().map(|c| c.machine_us),
    ),
    (
        "cost_drain_ricochet_us",
        "drain: ricochet CPU per delivery",
        Unit::MicrosFrac,
        |m| m.cost.drain.as_ref().and_then(|c| c.ricochet_us),
    ),
    (
        "cost_drain_workers_us",
        "drain: - its workers",
        Unit::MicrosFrac,
        |m| m.cost.drain.as_ref().and_then(|c| c.ricochet_workers_us),
    ),
    (
        "cost_drain_workers_kernel_us",
        "drain: - its workers, kernel",
        Unit::MicrosFrac,
        |m| {
            m.cost
                .drain
                .as_ref()
                .and_then(|c| c.ricochet_workers_kernel_us)
        },
    ),
    (
        "cost_drain_committer_us",
        "drain: - committer + syncer",
        Unit::MicrosFrac,
        |m| m.cost.drain.as_ref().and_then(|c| c.ricochet_committer_us),
    ),
    (
        "cost_drain_rocksdb_us",
        "drain: - RocksDB threads",
        Unit::MicrosFrac,
        |m| m.cost.drain.as_ref().and_then(|c| c.ricochet_rocksdb_us),
    ),
    (
        "cost_drain_sink_us",
        "drain: sink CPU per delivery",
        Unit::MicrosFrac,
        |m| m.cost.drain.as_ref().and_then(|c| c.sink_us),
    ),
    (
        "cost_raw_machine_us",
        "raw: machine CPU per request",
        Unit::MicrosFrac,
        |m| m.cost.raw.as_ref().map(|c| c.machine_us),
    ),
    (
        "cost_raw_client_us",
        "raw: client CPU per request",
        Unit::MicrosFrac,
        |m| m.cost.raw.as_ref().and_then(|c| c.load_other_us),
    ),
    (
        "cost_raw_client_kernel_us",
        "raw: - kernel",
        Unit::MicrosFrac,
        |m| m.cost.raw.as_ref().and_then(|c| c.load_other_kernel_us),
    ),
    (
        "cost_raw_sink_us",
        "raw: sink CPU per request",
        Unit::MicrosFrac,
        |m| m.cost.raw.as_ref().and_then(|c| c.sink_us),
    ),
    (
        "cost_machine_bound_per_s",
        "end-to-end rate the CPU allows at these costs",
        Unit::Rate,
        |m| m.cost.machine_bound_per_s(),
    ),
    (
        "machine_fdatasync_p50_us",
        "machine: 4-KiB append + fdatasync p50",
        Unit::MicrosFrac,
        |m| m.machine.map(|p| p.fdatasync_p50_us),
    ),
    (
        "machine_fdatasync_p99_us",
        "machine: 4-KiB append + fdatasync p99",
        Unit::MicrosFrac,
        |m| m.machine.map(|p| p.fdatasync_p99_us),
    ),
    (
        "machine_cpu_us",
        "machine: fixed CPU work",
        Unit::Micros,
        |m| m.machine.map(|p| p.cpu_us),
    ),
    (
        "machine_mem_ns",
        "machine: random load over 32 MiB",
        Unit::Nanos,
        |m| m.machine.map(|p| p.mem_ns),
    ),
    ("raw_requests_per_s", "raw ceiling req/s", Unit::Rate, |m| {
        m.raw_ceiling().map(|p| p.requests_per_s)
    }),
    (
        "raw_connections",
        "raw ceiling at connections",
        Unit::Count,
        |m| m.raw_ceiling().map(|p| p.connections as f64),
    ),
    ("raw_fraction", "deliveries / raw", Unit::Share, |m| {
        m.raw_fraction()
    }),
    (
        "ricochet_connections_first",
        "connections opened (new lanes)",
        Unit::Count,
        |m| m.ricochet_connections.as_ref().map(|c| c.first() as f64),
    ),
    (
        "ricochet_connections_reopened",
        "connections reopened",
        Unit::Count,
        |m| m.ricochet_connections.as_ref().map(|c| c.reopened() as f64),
    ),
    (
        "tls_handshakes",
        "TLS handshakes (sink)",
        Unit::Count,
        |m| m.tls_handshakes.map(|n| n as f64),
    ),
    (
        "rate_endpoints_checked",
        "rate-limited endpoints checked",
        Unit::Count,
        |m| m.rate_check.map(|r| r.endpoints_checked as f64),
    ),
    (
        "rate_limit",
        "rate limit per 1-s window",
        Unit::Count,
        |m| m.rate_check.map(|r| r.limit as f64),
    ),
    (
        "rate_windows_over_limit",
        "1-s windows over the limit",
        Unit::Count,
        |m| m.rate_check.map(|r| r.windows_over_limit as f64),
    ),
    (
        "rate_windows_over_limit_new_conn",
        "  ...with a new connection",
        Unit::Count,
        |m| m.rate_check.map(|r| r.windows_over_limit_new_conn as f64),
    ),
    (
        "rate_endpoints_over_limit",
        "endpoints over the limit",
        Unit::Count,
        |m| m.rate_check.map(|r| r.endpoints_over_limit as f64),
    ),
    ("rate_worst_window", "worst 1-s window", Unit::Count, |m| {
        m.rate_check.map(|r| r.worst_window as f64)
    }),
    (
        "rate_windows_over_max_rps",
        "1-s windows over max_rps",
        Unit::Count,
        |m| m.rate_check.map(|r| r.windows_over_max_rps as f64),
    ),
    (
        "rate_beyond_bucket",
        "arrivals beyond the bucket",
        Unit::Count,
        |m| m.rate_check.map(|r| r.beyond_bucket as f64),
    ),
    (
        "rate_beyond_bucket_new_conn",
        "  ...with a new connection",
        Unit::Count,
        |m| m.rate_check.map(|r| r.beyond_bucket_new_conn as f64),
    ),
    (
        "rate_endpoints_beyond_bucket",
        "endpoints beyond the bucket",
        Unit::Count,
        |m| m.rate_check.map(|r| r.endpoints_beyond_bucket as f64),
    ),
];

/// Rows every run has, shown as `-` when a run had nothing to measure (no ack, no
/// delivery, no whole second); the other rows are left out when no run has them.
const ALWAYS_SHOWN: &[&str] = &[
    "ack_p50_us",
    "ack_p99_us",
    "ack_p999_us",
    "peak_deliveries_per_s",
    "lag_p50_us",
    "lag_p99_us",
    "lag_p999_us",
    "drain_s",
];

/// The value of the row `key` (a [`medians`] key) as the run table prints it.
pub fn fmt_key(key: &str, v: Option<f64>) -> String {
    let (_, _, unit, _) = ROWS
        .iter()
        .find(|(k, ..)| *k == key)
        .unwrap_or_else(|| panic!("no report row {key:?}"));
    fmt(*unit, v)
}

fn fmt(unit: Unit, v: Option<f64>) -> String {
    let Some(v) = v else {
        return "-".into();
    };
    match unit {
        Unit::Count => fmt_count(v.round() as u64),
        Unit::Rate => fmt_count(v.round() as u64),
        Unit::Secs => format!("{v:.2}s"),
        Unit::Secs3 => format!("{v:.3}s"),
        Unit::Micros => fmt_us(v.round() as u64),
        Unit::MicrosFrac => format!("{v:.1}us"),
        Unit::Nanos => format!("{v:.1}ns"),
        Unit::MiB => format!("{v:.1} MiB"),
        Unit::Share => format!("{:.1}%", v * 100.0),
    }
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The runs a median is taken over: those not interrupted.
fn completed(runs: &[RunMetrics]) -> impl Iterator<Item = &RunMetrics> {
    runs.iter().filter(|m| !m.interrupted)
}

/// Per row key, the median over the completed runs that have the value, and under
/// `runs_in_median` the numbers of the runs it is taken over (interrupted runs are left
/// out).
pub fn medians(runs: &[RunMetrics]) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (key, _, _, get) in ROWS {
        let mut vals: Vec<f64> = completed(runs).filter_map(get).collect();
        let v = median(&mut vals)
            .and_then(serde_json::Number::from_f64)
            .map_or(serde_json::Value::Null, serde_json::Value::Number);
        out.insert((*key).into(), v);
    }
    let numbers: Vec<usize> = completed(runs).map(|m| m.run).collect();
    out.insert("runs_in_median".into(), numbers.into());
    out
}

/// `--json`'s `median` for these runs: [`medians`], or null when no run completed.
pub fn median_json(runs: &[RunMetrics]) -> serde_json::Value {
    if completed(runs).next().is_none() {
        return serde_json::Value::Null;
    }
    medians(runs).into()
}

/// `run 1, 3` (`runs` when several), with the label after.
fn run_list(numbers: &[usize], label: &str) -> String {
    let list: Vec<String> = numbers.iter().map(usize::to_string).collect();
    format!(
        "run{} {}{}",
        if numbers.len() > 1 { "s" } else { "" },
        list.join(", "),
        if label.is_empty() {
            String::new()
        } else {
            format!(" {label}")
        }
    )
}

/// A line per label with interrupted runs: left out of the median, or no median at
/// all when no run completed.
pub fn interruptions(runs: &[RunMetrics]) -> String {
    let mut out = String::new();
    for l in labels(runs) {
        let of_label = || runs.iter().filter(|m| m.label == l);
        let stopped: Vec<usize> = of_label()
            .filter(|m| m.interrupted)
            .map(|m| m.run)
            .collect();
        if stopped.is_empty() {
            continue;
        }
        let done: Vec<usize> = of_label()
            .filter(|m| !m.interrupted)
            .map(|m| m.run)
            .collect();
        out += &format!("{} interrupted: ", run_list(&stopped, l));
        out += &if done.is_empty() {
            "no run completed, so no median\n".to_string()
        } else {
            format!(
                "left out of the median, which is of the completed {}\n",
                run_list(&done, "")
            )
        };
    }
    out
}

/// The labels of `runs` in order of first appearance ("" for unlabelled runs).
pub fn labels(runs: &[RunMetrics]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for m in runs {
        if !out.contains(&m.label.as_str()) {
            out.push(&m.label);
        }
    }
    out
}

/// The text table: one column per run (an interrupted one headed so), plus a median
/// column per label (scheme) when it has several runs, taken over its completed runs
/// (none when no run completed); a line under the table says which runs were left out.
pub fn table(runs: &[RunMetrics]) -> String {
    let mut header = vec!["".to_string()];
    header.extend(runs.iter().map(|m| {
        let mut h = format!("run {}", m.run);
        if !m.label.is_empty() {
            h = format!("{h} {}", m.label);
        }
        if m.interrupted {
            h += " (interrupted)";
        }
        h
    }));
    let median_labels: Vec<&str> = labels(runs)
        .into_iter()
        .filter(|l| {
            runs.iter().filter(|m| m.label == *l).count() > 1
                && completed(runs).any(|m| m.label == *l)
        })
        .collect();
    for l in &median_labels {
        header.push(if l.is_empty() {
            "median".into()
        } else {
            format!("median {l}")
        });
    }
    let mut rows = vec![header];
    for (key, label, unit, get) in ROWS {
        let vals: Vec<Option<f64>> = runs.iter().map(get).collect();
        if vals.iter().all(Option::is_none) && !ALWAYS_SHOWN.contains(key) {
            continue;
        }
        let mut row = vec![label.to_string()];
        row.extend(vals.iter().map(|v| fmt(*unit, *v)));
        for l in &median_labels {
            let mut present: Vec<f64> = runs
                .iter()
                .zip(&vals)
                .filter(|(m, _)| m.label == *l && !m.interrupted)
                .filter_map(|(_, v)| *v)
                .collect();
            row.push(fmt(*unit, median(&mut present)));
        }
        rows.push(row);
    }
    align(&rows) + &interruptions(runs)
}

/// `rows` as text columns: the first left-aligned, the others right-aligned, two spaces
/// apart, with a rule under the first row (the header).
pub fn align(rows: &[Vec<String>]) -> String {
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                out += cell;
                out += &" ".repeat(pad);
            } else {
                out += "  ";
                out += &" ".repeat(pad);
                out += cell;
            }
        }
        out.push('\n');
        if i == 0 {
            out += &"-".repeat(widths.iter().sum::<usize>() + 2 * (cols - 1));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cells of the table's row that starts with `label`.
    fn row<'a>(t: &'a str, label: &str) -> Vec<&'a str> {
        t.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label:?} in\n{t}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn no_delivery_shows_dashes_not_zeros() {
        let t = table(&[RunMetrics::default()]);
        for label in [
            "delivery lag p50",
            "delivery lag p99.9",
            "drain time",
            "ack latency p99",
        ] {
            assert_eq!(row(&t, label).last(), Some(&"-"), "{label}: {t}");
        }
        let with = RunMetrics {
            drain_s: Some(1.5),
            lag: Percentiles {
                count: 3,
                p50_us: 800,
                ..Default::default()
            },
            ..Default::default()
        };
        let t = table(&[with]);
        assert_eq!(row(&t, "drain time").last(), Some(&"1.50s"), "{t}");
        assert_eq!(row(&t, "delivery lag p50").last(), Some(&"800us"), "{t}");
        // Rows of optional features stay out.
        assert!(!t.contains("raw ceiling"));
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn table_has_median_column() {
        let runs: Vec<RunMetrics> = (1..=3)
            .map(|i| RunMetrics {
                run: i,
                accepted: 1000 * i as u64,
                accepted_per_s: 100.0 * i as f64,
                ricochet_cpu_s: Some(i as f64),
                ..Default::default()
            })
            .collect();
        let t = table(&runs);
        assert!(t.lines().next().unwrap().ends_with("median"), "{t}");
        let line = t.lines().find(|l| l.starts_with("accepted (ok)")).unwrap();
        assert!(line.ends_with("2,000"), "{line}");
        // Rows with no value in any run are left out.
        assert!(!t.contains("raw ceiling"));
        assert!(!t.contains("1-s windows"));
        assert!(!t.contains("first attempts/s"));
        let m = medians(&runs);
        assert_eq!(m["accepted_per_s"], serde_json::json!(200.0));
        assert_eq!(m["raw_fraction"], serde_json::Value::Null);
    }

    #[test]
    fn first_attempts_row_only_where_a_run_has_it() {
        let runs: Vec<RunMetrics> = [Some(900.0), None, Some(700.0)]
            .into_iter()
            .map(|f| RunMetrics {
                first_attempts_per_s: f,
                ..Default::default()
            })
            .collect();
        let t = table(&runs);
        let cells = row(&t, "first attempts/s");
        assert_eq!(cells[2..], ["900", "-", "700", "800"], "{t}");
    }

    #[test]
    fn restart_rows_show_per_run_values_and_medians() {
        let runs: Vec<RunMetrics> = [(0.5, Some(1.0)), (0.7, Some(3.0)), (0.6, None)]
            .into_iter()
            .enumerate()
            .map(|(i, (health_s, first_ack_s))| RunMetrics {
                run: i + 1,
                restart: Some(RestartMetrics {
                    health_s,
                    first_ack_s,
                    backlog_at_kill: 1000,
                    peak_rss_mib: Some(100.0),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let t = table(&runs);
        let cells = row(&t, "restart: health after");
        assert_eq!(cells[3..], ["0.500s", "0.700s", "0.600s", "0.600s"], "{t}");
        let cells = row(&t, "restart: first ack after");
        assert_eq!(cells[4..], ["1.000s", "3.000s", "-", "2.000s"], "{t}");
        let m = medians(&runs);
        assert_eq!(m["restart_first_ack_s"], serde_json::json!(2.0));
        assert_eq!(m["restart_backlog_at_kill"], serde_json::json!(1000.0));
        // No restart, no rows.
        assert!(!table(&[RunMetrics::default()]).contains("restart"));
    }

    /// `run --runs 3` interrupted in run 2: the median is run 1's, not the mean of a
    /// complete and a truncated run, in the table and the JSON.
    #[test]
    fn an_interrupted_run_is_marked_and_left_out_of_the_median() {
        let m = |run, deliveries_per_s, interrupted| RunMetrics {
            run,
            deliveries_per_s,
            interrupted,
            ..Default::default()
        };
        let runs = vec![m(1, 3_000.0, false), m(2, 1_000.0, true)];
        let t = table(&runs);
        let head = t.lines().next().unwrap();
        assert!(head.contains("run 2 (interrupted)"), "{t}");
        assert!(head.ends_with("median"), "{t}");
        let cells = row(&t, "deliveries/s (");
        assert_eq!(cells[cells.len() - 3..], ["3,000", "1,000", "3,000"], "{t}");
        assert!(
            t.contains(
                "run 2 interrupted: left out of the median, which is of the completed run 1"
            ),
            "{t}"
        );
        let j = median_json(&runs);
        assert_eq!(j["deliveries_per_s"], serde_json::json!(3_000.0));
        assert_eq!(j["runs_in_median"], serde_json::json!([1]));
        // No run completed: no median, and the table says so.
        let runs = vec![m(1, 3_000.0, true), m(2, 1_000.0, true)];
        assert_eq!(median_json(&runs), serde_json::Value::Null);
        let t = table(&runs);
        assert!(!t.lines().next().unwrap().contains("median"), "{t}");
        assert!(
            t.contains("runs 1, 2 interrupted: no run completed, so no median"),
            "{t}"
        );
        // Without interruptions nothing changes.
        let runs = vec![m(1, 3_000.0, false), m(2, 1_000.0, false)];
        assert_eq!(row(&table(&runs), "deliveries/s (").last(), Some(&"2,000"));
        assert!(!table(&runs).contains("interrupted"));
    }

    #[test]
    fn labelled_runs_get_a_median_per_label_and_rate_rows() {
        let runs: Vec<RunMetrics> = [(1, "http", 10.0), (1, "https", 8.0)]
            .into_iter()
            .chain([(2, "http", 30.0), (2, "https", 6.0)])
            .map(|(run, label, dps)| RunMetrics {
                run,
                label: label.into(),
                deliveries_per_s: dps,
                rate_check: Some(RateCounts {
                    max_rps: 2,
                    limit: 3,
                    endpoints_checked: 10,
                    worst_window: 3,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let t = table(&runs);
        let head = t.lines().next().unwrap();
        assert!(head.contains("run 1 https"), "{t}");
        assert!(head.ends_with("median http  median https"), "{t}");
        let cells = row(&t, "deliveries/s (");
        assert_eq!(cells[cells.len() - 2..], ["20", "7"], "{t}");
        let line = t
            .lines()
            .find(|l| l.starts_with("1-s windows over the limit"))
            .unwrap();
        assert!(line.ends_with(" 0"), "{line}");
        assert!(t.contains("worst 1-s window"));
        assert_eq!(labels(&runs), vec!["http", "https"]);
    }
}
