//! Metrics: the counters and latency histograms each thread keeps for itself, the
//! snapshots they hand over at scrape time, and the Prometheus text format.
//!
//! Owns every metric's name, unit and help text, and the exposition format (text format
//! 0.0.4). Nothing here is shared between threads: a worker or the committer owns its
//! counters (plain integers, `Cell`s, `RefCell`s) and [`Hist`]s outright; at scrape the
//! admin thread asks each of them for a snapshot over its mailbox, sums the replies
//! ([`Scrape`]) and encodes them ([`encode`]). Latency histograms are exported as
//! Prometheus **histograms** (SPEC §7): cumulative `_bucket{le}` counts over the fixed
//! boundaries [`BUCKETS_S`] since the process started, plus `_sum` and `_count`, read
//! from HdrHistograms with two significant digits (a value within ~1% of a boundary may
//! land in the neighbouring bucket; `_sum` and `_count` are exact).
//!
//! It must not do I/O, take locks or use atomics on the hot path: a metric is a plain
//! integer add or a [`Hist::record`]. The one thing shared is [`FinalSnapshots`]: each
//! worker writes its slot once, as it stops, and a scrape reads it for a worker that
//! has stopped (a shutdown's drain), so its counters stay in the sums. (Ingest
//! connections refused a permit are an atomic of [`crate::fdlimit`], counted off the
//! hot path, in the accepting threads.) [`parse`] is a strict reader of the format for
//! tests and tools; the server never calls it.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::deliver::OpenReason;

/// Upper bounds (seconds) of every latency histogram's buckets: 100 µs to a day, about
/// three per decade, so one set serves a loopback attempt and a day-long retry lag.
pub const BUCKETS_S: [f64; 23] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// A latency histogram with the exact sum of what it recorded.
#[derive(Clone, Debug)]
pub struct Hist {
    h: Histogram<u64>,
    sum: u64,
    /// Recorded units per second (1e6 for microseconds).
    per_s: f64,
}

impl Hist {
    /// Microseconds, 1 µs to 1 h (longer values count as 1 h).
    pub fn micros() -> Hist {
        Hist::new(3_600_000_000, 1e6)
    }

    /// Milliseconds, 1 ms to 30 days (longer values count as 30 days).
    pub fn millis() -> Hist {
        Hist::new(30 * 86_400_000, 1e3)
    }

    fn new(high: u64, per_s: f64) -> Hist {
        Hist {
            h: Histogram::new_with_bounds(1, high, 2).expect("static histogram bounds are valid"),
            sum: 0,
            per_s,
        }
    }

    /// Records one value (in the histogram's unit).
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.h.saturating_record(v);
        self.sum = self.sum.saturating_add(v);
    }

    /// Records `n` occurrences of `v`.
    #[inline]
    pub fn record_n(&mut self, v: u64, n: u64) {
        self.h.saturating_record_n(v, n);
        self.sum = self.sum.saturating_add(v.saturating_mul(n));
    }

    /// Adds another histogram of the same kind.
    pub fn merge(&mut self, other: &Hist) {
        if self.h.add(&other.h).is_err() {
            // Same bounds on both sides, so this cannot happen; never lose the count.
            for v in other.h.iter_recorded() {
                self.h
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The value at quantile `q`, in seconds; `None` while empty.
    #[cfg(test)]
    pub fn quantile_s(&self, q: f64) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.value_at_quantile(q) as f64 / self.per_s)
    }

    pub fn sum_s(&self) -> f64 {
        self.sum as f64 / self.per_s
    }

    /// How many recorded values are at most each bound of [`BUCKETS_S`] (cumulative).
    pub fn buckets(&self) -> [u64; BUCKETS_S.len()] {
        let mut counts = [0u64; BUCKETS_S.len()];
        for v in self.h.iter_recorded() {
            let secs = self.h.highest_equivalent(v.value_iterated_to()) as f64 / self.per_s;
            // The bucket of the value's whole HdrHistogram range, judged by its upper end
            // (a value is never counted below a bound it may exceed).
            if let Some(i) = BUCKETS_S.iter().position(|&b| secs <= b) {
                counts[i] += v.count_at_value();
            }
        }
        for i in 1..counts.len() {
            counts[i] += counts[i - 1];
        }
        counts
    }
}

/// What an attempt came back with, for `ricochet_attempts_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    S1xx = 0,
    S2xx,
    S3xx,
    S4xx,
    S5xx,
    /// No response within the endpoint's `timeout`.
    Timeout,
    /// No response: connection, DNS, SSRF guard or URL error.
    Error,
}

impl AttemptResult {
    pub const ALL: [AttemptResult; 7] = [
        AttemptResult::S1xx,
        AttemptResult::S2xx,
        AttemptResult::S3xx,
        AttemptResult::S4xx,
        AttemptResult::S5xx,
        AttemptResult::Timeout,
        AttemptResult::Error,
    ];

    /// Classifies an attempt by its status (0 = no response) and whether it timed out.
    pub fn of(status: u16, timed_out: bool) -> AttemptResult {
        match status {
            _ if timed_out => AttemptResult::Timeout,
            100..=199 => AttemptResult::S1xx,
            200..=299 => AttemptResult::S2xx,
            300..=399 => AttemptResult::S3xx,
            400..=499 => AttemptResult::S4xx,
            500..=599 => AttemptResult::S5xx,
            _ => AttemptResult::Error,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            AttemptResult::S1xx => "1xx",
            AttemptResult::S2xx => "2xx",
            AttemptResult::S3xx => "3xx",
            AttemptResult::S4xx => "4xx",
            AttemptResult::S5xx => "5xx",
            AttemptResult::Timeout => "timeout",
            AttemptResult::Error => "error",
        }
    }
}

/// One endpoint's delivery counters since start, kept by its worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    /// Attempts that delivered.
    pub delivered: u64,
    /// Attempts after which the delivery failed for good.
    pub failed: u64,
    /// Attempts that failed with a retry scheduled.
    pub retrying: u64,
    /// Deliveries set aside because the endpoint is disabled.
    pub paused: u64,
    /// Attempts by [`AttemptResult`].
    pub attempts: [u64; 7],
}

impl EndpointCounts {
    pub fn add(&mut self, o: &EndpointCounts) {
        self.delivered += o.delivered;
        self.failed += o.failed;
        self.retrying += o.retrying;
        self.paused += o.paused;
        for (a, b) in self.attempts.iter_mut().zip(o.attempts) {
            *a += b;
        }
    }

    pub fn attempts_total(&self) -> u64 {
        self.attempts.iter().sum()
    }
}

/// Lines a worker's ingest connections rejected before the committer saw them. Shared
/// by a worker and its connections, which run on the same thread.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub invalid: Cell<u64>,
    pub too_large: Cell<u64>,
    /// Lines refused for the memory of unfinished lines (`err unavailable`).
    pub unavailable: Cell<u64>,
}

impl IngestCounters {
    #[inline]
    pub fn count_invalid(&self) {
        self.invalid.set(self.invalid.get() + 1);
    }

    #[inline]
    pub fn count_too_large(&self) {
        self.too_large.set(self.too_large.get() + 1);
    }

    #[inline]
    pub fn count_unavailable(&self) {
        self.unavailable.set(self.unavailable.get() + 1);
    }
}

/// A worker's metrics at one moment.
#[derive(Debug, Clone)]
pub struct WorkerSnapshot {
    pub worker: usize,
    /// Per endpoint owned by this worker, by name.
    pub endpoints: Vec<(String, EndpointCounts)>,
    pub rejected_invalid: u64,
    pub rejected_too_large: u64,
    /// Lines its connections answered `err unavailable` (the memory of unfinished lines).
    pub rejected_unavailable: u64,
    /// Deliveries in the worker's memory: timer wheel, ready queues and in flight.
    pub in_memory: u64,
    /// Attempt latency, µs.
    pub attempt_latency: Hist,
    /// Attempt time − event acceptance time, ms.
    pub delivery_lag: Hist,
    /// Connections opened by the lanes, by [`OpenReason`] (its `ALL` order).
    pub connections_opened: [u64; OpenReason::COUNT],
    /// Delivery lanes started (each opens its own connection).
    pub lanes_started: u64,
    /// Lanes that exited after a spell without work (closing their connection).
    pub lanes_idle_exits: u64,
    /// Times a delivery was held back a second for want of a socket (not attempts).
    pub holds: u64,
}

/// Per worker, the snapshot it took as it stopped: a scrape during a shutdown reads it
/// for a worker that has finished (its counters would otherwise drop out of the sums,
/// which Prometheus reads as a reset).
pub type FinalSnapshots = std::sync::Arc<Vec<std::sync::Mutex<Option<WorkerSnapshot>>>>;

/// Empty final snapshots for `workers` workers.
pub fn final_snapshots(workers: usize) -> FinalSnapshots {
    std::sync::Arc::new((0..workers).map(|_| std::sync::Mutex::new(None)).collect())
}

/// The committer's metrics at one moment.
#[derive(Debug, Clone)]
pub struct CommitSnapshot {
    pub acks_ok: u64,
    pub acks_dup: u64,
    pub acks_unavailable: u64,
    /// From a batch's hand-off to the committer to its durable ack, µs, per event.
    pub ack_latency: Hist,
    /// µs per group-commit write that carried events (the RocksDB write alone).
    pub commit_time: Hist,
    /// µs per fsync of the WAL (under `sync` one covers every round written before it).
    pub fsync_time: Hist,
    /// Deliveries not yet delivered or failed (due, retrying, in flight or paused).
    pub pending: u64,
    /// Of those, set aside because their endpoint is disabled.
    pub paused: u64,
    /// Deliveries that outlived retention undelivered, since start.
    pub expired: u64,
    pub endpoints_disabled: u64,
    /// Of the pending deliveries workers do not hold, those kept back from endpoints
    /// at their share of workers' memory, as keys in the committer's memory.
    pub kept_back: u64,
    /// Endpoints at their share whose kept-back backlog waits partly on disk, read
    /// back as they drain.
    pub backlogs_on_disk: u64,
    /// Of the deliveries workers hold, those handed over ahead of the loader's cursor
    /// and not yet reported (quiet endpoints' fresh ones while it lags, ordered
    /// endpoints' held heads at a start).
    pub handed_ahead: u64,
    /// Endpoints that at their last second's rate take more than 10 s to drain the
    /// deliveries their workers hold.
    pub endpoints_slow: u64,
}

impl Default for CommitSnapshot {
    fn default() -> Self {
        CommitSnapshot {
            acks_ok: 0,
            acks_dup: 0,
            acks_unavailable: 0,
            ack_latency: Hist::micros(),
            commit_time: Hist::micros(),
            fsync_time: Hist::micros(),
            pending: 0,
            paused: 0,
            expired: 0,
            endpoints_disabled: 0,
            kept_back: 0,
            backlogs_on_disk: 0,
            handed_ahead: 0,
            endpoints_slow: 0,
        }
    }
}

/// What the admin thread reads itself: HTTP ingest rejects it answers without the
/// committer, and the ingest connections the accepting threads refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminCounts {
    pub invalid: u64,
    pub too_large: u64,
    pub unavailable: u64,
    /// Ingest connections closed at once for want of a permit ([`crate::fdlimit`]).
    pub ingest_refused: u64,
}

/// Everything one scrape collected.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub workers: Vec<WorkerSnapshot>,
    pub commit: Option<CommitSnapshot>,
    pub admin: AdminCounts,
    /// Workers and committer that did not answer in time.
    pub unanswered: usize,
    /// What the store holds in memory.
    pub store: crate::store::StoreMemory,
    /// What the store takes on disk.
    pub disk: crate::store::StoreDisk,
}

/// Writes one metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
    out.push('\n');
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Hist) {
    family(out, name, "histogram", help);
    let bucket = format!("{name}_bucket");
    for (b, n) in BUCKETS_S.iter().zip(h.buckets()) {
        sample(out, &bucket, &[("le", &b.to_string())], n as f64);
    }
    sample(out, &bucket, &[("le", "+Inf")], h.count() as f64);
    sample(out, &format!("{name}_sum"), &[], h.sum_s());
    sample(out, &format!("{name}_count"), &[], h.count() as f64);
}

/// Encodes a scrape in the Prometheus text format (version 0.0.4).
pub fn encode(s: &Scrape) -> String {
    let mut out = String::with_capacity(4096);
    let c = s.commit.clone().unwrap_or_default();
    let (mut invalid, mut too_large) = (s.admin.invalid, s.admin.too_large);
    let mut unavailable = c.acks_unavailable + s.admin.unavailable;
    let mut in_memory = 0u64;
    let mut attempt_latency = Hist::micros();
    let mut delivery_lag = Hist::millis();
    let mut eps: BTreeMap<&str, EndpointCounts> = BTreeMap::new();
    let mut opened = [0u64; OpenReason::COUNT];
    let (mut lanes_started, mut lanes_idle_exits, mut holds) = (0u64, 0u64, 0u64);
    for w in &s.workers {
        for (a, b) in opened.iter_mut().zip(w.connections_opened) {
            *a += b;
        }
        lanes_started += w.lanes_started;
        lanes_idle_exits += w.lanes_idle_exits;
        holds += w.holds;
        invalid += w.rejected_invalid;
        too_large += w.rejected_too_large;
        unavailable += w.rejected_unavailable;
        in_memory += w.in_memory;
        attempt_latency.merge(&w.attempt_latency);
        delivery_lag.merge(&w.delivery_lag);
        for (name, counts) in &w.endpoints {
            eps.entry(name).or_default().add(counts);
        }
    }

    family(
        &mut out,
        "ricochet_build_info",
        "gauge",
        "Always 1; the version label says which ricochet runs.",
    );
    sample(
        &mut out,
        "ricochet_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    family(
        &mut out,
        "ricochet_events_ingested_total",
        "counter",
        "Events accepted and durable (socket and HTTP ingest).",
    );
    sample(
        &mut out,
        "ricochet_events_ingested_total",
        &[],
        c.acks_ok as f64,
    );
    family(
        &mut out,
        "ricochet_acks_total",
        "counter",
        "Answers to ingested events by kind (ok, dup, err) and error code.",
    );
    for (kind, code, n) in [
        ("ok", "", c.acks_ok),
        ("dup", "", c.acks_dup),
        ("err", "invalid", invalid),
        ("err", "too_large", too_large),
        ("err", "unavailable", unavailable),
    ] {
        if code.is_empty() {
            sample(&mut out, "ricochet_acks_total", &[("kind", kind)], n as f64);
        } else {
            sample(
                &mut out,
                "ricochet_acks_total",
                &[("kind", kind), ("code", code)],
                n as f64,
            );
        }
    }
    family(
        &mut out,
        "ricochet_deliveries_total",
        "counter",
        "Delivery outcomes by endpoint: delivered, failed (for good), retrying (a retry is scheduled), paused (endpoint disabled).",
    );
    for (name, e) in &eps {
        for (outcome, n) in [
            ("delivered", e.delivered),
            ("failed", e.failed),
            ("retrying", e.retrying),
            ("paused", e.paused),
        ] {
            sample(
                &mut out,
                "ricochet_deliveries_total",
                &[("endpoint", name), ("outcome", outcome)],
                n as f64,
            );
        }
    }
    family(
        &mut out,
        "ricochet_attempts_total",
        "counter",
        "HTTP attempts by endpoint and result: status class, timeout, or error (no response).",
    );
    for (name, e) in &eps {
        for r in AttemptResult::ALL {
            sample(
                &mut out,
                "ricochet_attempts_total",
                &[("endpoint", name), ("result", r.label())],
                e.attempts[r as usize] as f64,
            );
        }
    }
    family(
        &mut out,
        "ricochet_connections_opened_total",
        "counter",
        "Connections the delivery lanes opened (made, not tried), by reason: first (a new lane), peer_closed (the receiver closed the last one), after_error (the last one failed or timed out), stale (a kept connection failed before any response; the request went again), peer_changed (another address).",
    );
    for r in OpenReason::ALL {
        sample(
            &mut out,
            "ricochet_connections_opened_total",
            &[("reason", r.label())],
            opened[r as usize] as f64,
        );
    }
    family(
        &mut out,
        "ricochet_lanes_started_total",
        "counter",
        "Delivery lanes started (one connection and one attempt at a time each).",
    );
    sample(
        &mut out,
        "ricochet_lanes_started_total",
        &[],
        lanes_started as f64,
    );
    family(
        &mut out,
        "ricochet_lanes_idle_exits_total",
        "counter",
        "Delivery lanes that exited (closing their connection) after a spell without work.",
    );
    sample(
        &mut out,
        "ricochet_lanes_idle_exits_total",
        &[],
        lanes_idle_exits as f64,
    );
    family(
        &mut out,
        "ricochet_ingest_connections_refused_total",
        "counter",
        "Ingest connections closed at once, unanswered: as many were open as the open-file \
         limit allows for ingest.",
    );
    sample(
        &mut out,
        "ricochet_ingest_connections_refused_total",
        &[],
        s.admin.ingest_refused as f64,
    );
    family(
        &mut out,
        "ricochet_store_memory_bytes",
        "gauge",
        "Bytes the store (RocksDB) holds in memory, by part: memtables (written, not yet \
         in table files, and those being flushed), table_readers (index and filter blocks \
         of open table files), block_cache.",
    );
    for (part, v) in [
        ("memtables", s.store.memtables),
        ("table_readers", s.store.table_readers),
        ("block_cache", s.store.block_cache),
    ] {
        sample(
            &mut out,
            "ricochet_store_memory_bytes",
            &[("part", part)],
            v as f64,
        );
    }
    family(
        &mut out,
        "ricochet_store_disk_bytes",
        "gauge",
        "Bytes the store (RocksDB) takes on disk, by part: each column family's table \
         files (events, attempts, index, idem, due, paused, endpoints), and wal (written, \
         not yet in table files).",
    );
    for (part, v) in s.disk.tables.iter().copied().chain([("wal", s.disk.wal)]) {
        sample(
            &mut out,
            "ricochet_store_disk_bytes",
            &[("part", part)],
            v as f64,
        );
    }
    family(
        &mut out,
        "ricochet_delivery_holds_total",
        "counter",
        "Times a delivery was held back a second for want of a socket (the open-file \
         limit's budget in use, or the kernel out of descriptors or socket memory); not \
         attempts.",
    );
    sample(&mut out, "ricochet_delivery_holds_total", &[], holds as f64);
    family(
        &mut out,
        "ricochet_deliveries_pending",
        "gauge",
        "Deliveries not yet delivered or failed: waiting, retrying, in flight or paused.",
    );
    sample(
        &mut out,
        "ricochet_deliveries_pending",
        &[],
        c.pending as f64,
    );
    family(
        &mut out,
        "ricochet_deliveries_in_memory",
        "gauge",
        "Pending deliveries held by workers: timer wheels, ready queues and in flight.",
    );
    sample(
        &mut out,
        "ricochet_deliveries_in_memory",
        &[],
        in_memory as f64,
    );
    family(
        &mut out,
        "ricochet_deliveries_paused",
        "gauge",
        "Pending deliveries set aside because their endpoint is disabled.",
    );
    sample(&mut out, "ricochet_deliveries_paused", &[], c.paused as f64);
    family(
        &mut out,
        "ricochet_deliveries_kept_back",
        "gauge",
        "Pending deliveries kept back from endpoints holding their share of workers' \
         memory, as keys in the committer's memory; handed over as they drain.",
    );
    sample(
        &mut out,
        "ricochet_deliveries_kept_back",
        &[],
        c.kept_back as f64,
    );
    family(
        &mut out,
        "ricochet_deliveries_handed_ahead",
        "gauge",
        "Deliveries workers hold that were handed over ahead of the loader's cursor \
         (quiet endpoints' fresh ones while it lags), not yet reported.",
    );
    sample(
        &mut out,
        "ricochet_deliveries_handed_ahead",
        &[],
        c.handed_ahead as f64,
    );
    family(
        &mut out,
        "ricochet_endpoints_backlog_on_disk",
        "gauge",
        "Endpoints past their share whose kept-back backlog waits partly on disk, read \
         back as they drain.",
    );
    sample(
        &mut out,
        "ricochet_endpoints_backlog_on_disk",
        &[],
        c.backlogs_on_disk as f64,
    );
    family(
        &mut out,
        "ricochet_endpoints_slow",
        "gauge",
        "Endpoints that at their last second's rate take more than 10 s to drain the \
         deliveries workers hold for them; past half the in-memory cap each holds at \
         most 2,048.",
    );
    sample(
        &mut out,
        "ricochet_endpoints_slow",
        &[],
        c.endpoints_slow as f64,
    );
    family(
        &mut out,
        "ricochet_deliveries_expired_total",
        "counter",
        "Deliveries that outlived the retention period undelivered (their events left the log).",
    );
    sample(
        &mut out,
        "ricochet_deliveries_expired_total",
        &[],
        c.expired as f64,
    );
    family(
        &mut out,
        "ricochet_endpoints_disabled",
        "gauge",
        "Endpoints disabled (automatically or over the admin API).",
    );
    sample(
        &mut out,
        "ricochet_endpoints_disabled",
        &[],
        c.endpoints_disabled as f64,
    );
    histogram(
        &mut out,
        "ricochet_ack_latency_seconds",
        "From a batch's hand-off to the committer to its durable ack, per event.",
        &c.ack_latency,
    );
    histogram(
        &mut out,
        "ricochet_commit_seconds",
        "One group-commit write carrying events: the RocksDB write (its fsync is ricochet_fsync_seconds).",
        &c.commit_time,
    );
    histogram(
        &mut out,
        "ricochet_fsync_seconds",
        "One fsync of the write-ahead log: with durability sync it covers every round written before it began.",
        &c.fsync_time,
    );
    histogram(
        &mut out,
        "ricochet_attempt_latency_seconds",
        "One HTTP attempt: resolve, connect, send, response.",
        &attempt_latency,
    );
    histogram(
        &mut out,
        "ricochet_delivery_lag_seconds",
        "Attempt start minus the event's acceptance time, per attempt.",
        &delivery_lag,
    );
    family(
        &mut out,
        "ricochet_metrics_unanswered",
        "gauge",
        "Workers and committer that did not answer this scrape in time (their numbers are read from the last snapshot each gave).",
    );
    sample(
        &mut out,
        "ricochet_metrics_unanswered",
        &[],
        s.unanswered as f64,
    );
    out
}

/// One sample read back by [`parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed exposition: samples in order and each family's declared type.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include all of `labels`, summed over
    /// every such sample; `None` when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            let all = labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v));
            if all {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// The family a sample belongs to: its name without a summary/histogram suffix when the
/// stem was declared so.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            if matches!(
                types.get(stem).map(String::as_str),
                Some("summary" | "histogram")
            ) {
                return stem;
            }
        }
    }
    name
}

/// Parses the Prometheus text format strictly: valid names, quoted and escaped label
/// values, numeric values, at most one `# TYPE` per family placed before its samples,
/// each family's samples contiguous, and no sample repeated.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut seen_families: Vec<String> = Vec::new();
    let mut seen_samples: std::collections::HashSet<(String, Vec<(String, String)>)> =
        Default::default();
    for (n, line) in text.lines().enumerate() {
        let at = |msg: &str| format!("line {}: {msg}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts.next().ok_or_else(|| at("TYPE without a name"))?;
                    let kind = parts.next().ok_or_else(|| at("TYPE without a type"))?;
                    if !valid_metric_name(name) {
                        return Err(at("bad metric name"));
                    }
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "summary" | "histogram" | "untyped"
                    ) {
                        return Err(at("unknown type"));
                    }
                    if exp.types.contains_key(name) {
                        return Err(at("second TYPE for a family"));
                    }
                    if seen_families.iter().any(|f| f == name) {
                        return Err(at("TYPE after the family's samples"));
                    }
                    exp.types.insert(name.to_string(), kind.to_string());
                }
                Some("HELP") => {
                    let name = parts.next().ok_or_else(|| at("HELP without a name"))?;
                    if !valid_metric_name(name) {
                        return Err(at("bad metric name"));
                    }
                }
                _ => {} // a plain comment
            }
            continue;
        }
        // name{labels} value [timestamp]
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without a value"))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let close;
            loop {
                // Skip a separator.
                while let Some((_, c)) = chars.peek() {
                    if *c == ',' || *c == ' ' {
                        chars.next();
                    } else {
                        break;
                    }
                }
                let Some(&(start, c)) = chars.peek() else {
                    return Err(at("unterminated label set"));
                };
                if c == '}' {
                    close = start;
                    break;
                }
                let mut end = start;
                while let Some(&(i, c)) = chars.peek() {
                    if c == '=' {
                        end = i;
                        break;
                    }
                    chars.next();
                }
                let lname = &r[start..end];
                if !valid_label_name(lname) {
                    return Err(at("bad label name"));
                }
                chars.next(); // '='
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(at("label value not quoted"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(at("unterminated label value")),
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(at("bad escape in a label value")),
                        },
                        Some((_, c)) => value.push(c),
                    }
                }
                if labels.iter().any(|(k, _): &(String, String)| k == lname) {
                    return Err(at("label repeated"));
                }
                labels.push((lname.to_string(), value));
                match chars.peek() {
                    Some((_, ',')) | Some((_, '}')) => {}
                    _ => return Err(at("expected , or } after a label")),
                }
            }
            rest = &r[close + 1..];
        }
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| at("bad value"))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing text"));
        }
        let fam = family_of(name, &exp.types).to_string();
        match exp.types.get(&fam).map(String::as_str) {
            Some("summary") if fam == name && !labels.iter().any(|(k, _)| k == "quantile") => {
                return Err(at("summary sample without a quantile"));
            }
            Some("histogram") if fam == name => {
                return Err(at("histogram sample without a suffix"));
            }
            Some("histogram")
                if name.ends_with("_bucket") && !labels.iter().any(|(k, _)| k == "le") =>
            {
                return Err(at("histogram bucket without le"));
            }
            Some("counter") if value < 0.0 => return Err(at("negative counter")),
            _ => {}
        }
        match seen_families.last() {
            Some(last) if *last == fam => {}
            _ => {
                if seen_families.contains(&fam) {
                    return Err(at("family's samples are not contiguous"));
                }
                seen_families.push(fam);
            }
        }
        let mut key_labels = labels.clone();
        key_labels.sort();
        if !seen_samples.insert((name.to_string(), key_labels)) {
            return Err(at("sample repeated"));
        }
        exp.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        let mut lat = Hist::micros();
        for v in 1..=1000 {
            lat.record(v * 1000); // 1 ms .. 1 s
        }
        let mut lag = Hist::millis();
        lag.record(250);
        let counts = EndpointCounts {
            delivered: 3,
            failed: 1,
            retrying: 2,
            paused: 0,
            attempts: [0, 3, 0, 0, 3, 0, 0],
        };
        let w = |i| WorkerSnapshot {
            worker: i,
            endpoints: vec![("a\"b\\c".to_string(), counts), ("plain".into(), counts)],
            rejected_invalid: 1,
            rejected_too_large: 2,
            rejected_unavailable: 0,
            in_memory: 5,
            attempt_latency: lat.clone(),
            delivery_lag: lag.clone(),
            connections_opened: [16, 0, 2, 1, 0],
            lanes_started: 16,
            lanes_idle_exits: 3,
            holds: 4,
        };
        let mut ack = Hist::micros();
        ack.record_n(800, 10);
        Scrape {
            workers: vec![w(0), w(1)],
            commit: Some(CommitSnapshot {
                acks_ok: 10,
                acks_dup: 1,
                acks_unavailable: 0,
                ack_latency: ack,
                commit_time: Hist::micros(),
                fsync_time: Hist::micros(),
                pending: 7,
                paused: 2,
                expired: 4,
                endpoints_disabled: 1,
                kept_back: 9,
                backlogs_on_disk: 1,
                handed_ahead: 3,
                endpoints_slow: 2,
            }),
            admin: AdminCounts {
                invalid: 1,
                ..AdminCounts::default()
            },
            unanswered: 0,
            store: crate::store::StoreMemory {
                memtables: 40 << 20,
                table_readers: 1 << 20,
                block_cache: 8 << 20,
            },
            disk: crate::store::StoreDisk {
                tables: vec![("events", 900 << 20), ("index", 70 << 20)],
                wal: 30 << 20,
            },
        }
    }

    #[test]
    fn output_parses_as_text_format_and_sums_workers() {
        let text = encode(&scrape());
        let exp = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(exp.types["ricochet_deliveries_total"], "counter");
        assert_eq!(exp.types["ricochet_ack_latency_seconds"], "histogram");
        assert_eq!(exp.value("ricochet_events_ingested_total", &[]), Some(10.0));
        assert_eq!(
            exp.value(
                "ricochet_acks_total",
                &[("kind", "err"), ("code", "invalid")]
            ),
            Some(3.0)
        );
        assert_eq!(
            exp.value(
                "ricochet_deliveries_total",
                &[("endpoint", "a\"b\\c"), ("outcome", "delivered")]
            ),
            Some(6.0)
        );
        assert_eq!(
            exp.value(
                "ricochet_connections_opened_total",
                &[("reason", "after_error")]
            ),
            Some(4.0)
        );
        assert_eq!(exp.value("ricochet_lanes_idle_exits_total", &[]), Some(6.0));
        assert_eq!(exp.value("ricochet_delivery_holds_total", &[]), Some(8.0));
        assert_eq!(
            exp.value(
                "ricochet_attempts_total",
                &[("endpoint", "plain"), ("result", "5xx")]
            ),
            Some(6.0)
        );
        assert_eq!(exp.value("ricochet_deliveries_in_memory", &[]), Some(10.0));
        assert_eq!(exp.value("ricochet_deliveries_pending", &[]), Some(7.0));
        assert_eq!(exp.value("ricochet_deliveries_kept_back", &[]), Some(9.0));
        assert_eq!(
            exp.value("ricochet_deliveries_handed_ahead", &[]),
            Some(3.0)
        );
        assert_eq!(
            exp.value("ricochet_endpoints_backlog_on_disk", &[]),
            Some(1.0)
        );
        assert_eq!(exp.value("ricochet_endpoints_slow", &[]), Some(2.0));
        let store = |part| exp.value("ricochet_store_memory_bytes", &[("part", part)]);
        assert_eq!(store("memtables"), Some((40 << 20) as f64));
        assert_eq!(store("table_readers"), Some((1 << 20) as f64));
        assert_eq!(store("block_cache"), Some((8 << 20) as f64));
        let disk = |part| exp.value("ricochet_store_disk_bytes", &[("part", part)]);
        assert_eq!(disk("events"), Some((900 << 20) as f64));
        assert_eq!(disk("index"), Some((70 << 20) as f64));
        assert_eq!(disk("wal"), Some((30 << 20) as f64));
        assert_eq!(
            exp.value("ricochet_deliveries_expired_total", &[]),
            Some(4.0)
        );
        assert_eq!(
            exp.value("ricochet_attempt_latency_seconds_count", &[]),
            Some(2000.0)
        );
        // 1..1000 ms, once per worker: cumulative buckets at the bounds (HdrHistogram's
        // ~1% ranges may move a value next to a bound across it).
        let le = |b: &str| {
            exp.value("ricochet_attempt_latency_seconds_bucket", &[("le", b)])
                .unwrap()
        };
        assert_eq!(le("0.0005"), 0.0);
        assert!((18.0..=20.0).contains(&le("0.01")), "{}", le("0.01"));
        assert!((985.0..=1000.0).contains(&le("0.5")), "{}", le("0.5"));
        assert!((1980.0..=2000.0).contains(&le("1")), "{}", le("1"));
        assert_eq!(le("2.5"), 2000.0);
        assert_eq!(le("+Inf"), 2000.0);
        let sum = exp
            .value("ricochet_attempt_latency_seconds_sum", &[])
            .unwrap();
        assert!((sum - 2.0 * 500.5).abs() < 1e-6, "{sum}");
        assert_eq!(
            exp.value("ricochet_delivery_lag_seconds_sum", &[]),
            Some(0.5)
        );
        let ack = |b: &str| {
            exp.value("ricochet_ack_latency_seconds_bucket", &[("le", b)])
                .unwrap()
        };
        assert_eq!((ack("0.0005"), ack("0.001")), (0.0, 10.0));
    }

    #[test]
    fn empty_scrape_is_valid_with_empty_histograms() {
        let text = encode(&Scrape {
            workers: vec![],
            commit: None,
            admin: AdminCounts::default(),
            unanswered: 3,
            store: Default::default(),
            disk: Default::default(),
        });
        let exp = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            exp.value("ricochet_ack_latency_seconds_bucket", &[("le", "+Inf")]),
            Some(0.0)
        );
        assert_eq!(exp.value("ricochet_metrics_unanswered", &[]), Some(3.0));
        assert_eq!(
            exp.value("ricochet_ack_latency_seconds_count", &[]),
            Some(0.0)
        );
    }

    #[test]
    fn parser_rejects_what_prometheus_rejects() {
        for bad in [
            "1abc 1",
            "a{b=c} 1",
            "a{b=\"c} 1",
            "a{b=\"c\\x\"} 1",
            "a{1b=\"c\"} 1",
            "a x",
            "a 1 2 3",
            "a{b=\"1\",b=\"2\"} 1",
            "# TYPE a counter\na -1",
            "# TYPE a summary\na 1",
            "a 1\n# TYPE a counter",
            "# TYPE a counter\n# TYPE a gauge",
            "a 1\nb 1\na{x=\"y\"} 1",
            "a 1\na 2",
            "# TYPE a widget",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        let ok = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"q\\\"\\n\",y=\"\"} 1.5e3 1700000000\n# free comment\nb NaN\nc +Inf\n";
        let exp = parse(ok).unwrap();
        assert_eq!(exp.samples[0].labels[0].1, "q\"\n");
        assert_eq!(exp.value("a_total", &[]), Some(1500.0));
    }

    #[test]
    fn attempt_results_classify() {
        assert_eq!(AttemptResult::of(204, false), AttemptResult::S2xx);
        assert_eq!(AttemptResult::of(0, true), AttemptResult::Timeout);
        assert_eq!(AttemptResult::of(0, false), AttemptResult::Error);
        assert_eq!(AttemptResult::of(503, false), AttemptResult::S5xx);
        assert_eq!(AttemptResult::of(999, false), AttemptResult::Error);
    }

    #[test]
    fn hist_saturates_and_merges() {
        let mut a = Hist::micros();
        a.record(u64::MAX / 2);
        let mut b = Hist::micros();
        b.record(0);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!(a.quantile_s(1.0).unwrap() <= 3700.0);
    }
}
