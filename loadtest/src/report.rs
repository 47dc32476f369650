//! What a run measured, the per-second series, and how it is shown: a table with one
//! column per run and a median column, or JSON for machines.

use serde::Serialize;

use crate::stats::{fmt_count, fmt_us, Percentiles};

/// One second of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the generator started.
    pub t_s: f64,
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

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunMetrics {
    pub run: usize,
    pub run_tag: String,
    pub events_sent: u64,
    /// `ok` acks with at least one delivery.
    pub accepted: u64,
    pub dup_acks: u64,
    pub err_acks: u64,
    pub missing_acks: u64,
    /// ok/dup acks whose id is not the event at their position.
    pub ack_mismatch: u64,
    /// First write to last ack.
    pub ingest_s: f64,
    pub accepted_per_s: f64,
    /// Sum of `<deliveries>` in the acks.
    pub deliveries_expected: u64,
    /// Distinct events answered 2xx by the sink.
    pub delivered: u64,
    pub requests: u64,
    /// Delivered / (first delivery .. last delivery).
    pub deliveries_per_s: f64,
    /// The best one-second delivery rate.
    pub peak_deliveries_per_s: f64,
    pub requests_per_s: f64,
    /// From the end of ingest (or of the outage) to the last delivery.
    pub drain_s: f64,
    pub drained: bool,
    pub drain_end: String,
    pub ack: Percentiles,
    pub lag: Percentiles,
    /// 2xx answers for events already answered 2xx.
    pub duplicates: u64,
    pub retries: u64,
    /// Accepted, never seen by the sink.
    pub lost: u64,
    /// Accepted and seen, never answered 2xx (e.g. every retry got a scripted 500).
    pub undelivered: u64,
    pub misrouted: u64,
    pub status_2xx: u64,
    pub status_5xx: u64,
    pub resets: u64,
    pub ricochet_cpu_s: Option<f64>,
    pub ricochet_peak_rss_mib: Option<f64>,
    pub ricochet_exit: String,
    pub load_tool_cpu_s: Option<f64>,
    pub raw_requests_per_s: Option<f64>,
    /// deliveries/s as a share of the raw ceiling.
    pub raw_fraction: Option<f64>,
    pub notes: Vec<String>,
    pub series: Vec<Sample>,
}

#[derive(Clone, Copy)]
enum Unit {
    Count,
    Rate,
    Secs,
    Micros,
    MiB,
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
    ("accepted_per_s", "accepted events/s", Unit::Rate, |m| {
        Some(m.accepted_per_s)
    }),
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
        Some(m.ack.p50_us as f64)
    }),
    ("ack_p99_us", "ack latency p99", Unit::Micros, |m| {
        Some(m.ack.p99_us as f64)
    }),
    ("ack_p999_us", "ack latency p99.9", Unit::Micros, |m| {
        Some(m.ack.p999_us as f64)
    }),
    ("delivered", "delivered (distinct)", Unit::Count, |m| {
        Some(m.delivered as f64)
    }),
    ("deliveries_per_s", "deliveries/s", Unit::Rate, |m| {
        Some(m.deliveries_per_s)
    }),
    (
        "peak_deliveries_per_s",
        "deliveries/s, best 1s",
        Unit::Rate,
        |m| Some(m.peak_deliveries_per_s),
    ),
    ("requests_per_s", "http requests/s", Unit::Rate, |m| {
        Some(m.requests_per_s)
    }),
    ("lag_p50_us", "delivery lag p50", Unit::Micros, |m| {
        Some(m.lag.p50_us as f64)
    }),
    ("lag_p99_us", "delivery lag p99", Unit::Micros, |m| {
        Some(m.lag.p99_us as f64)
    }),
    ("lag_p999_us", "delivery lag p99.9", Unit::Micros, |m| {
        Some(m.lag.p999_us as f64)
    }),
    ("drain_s", "drain time", Unit::Secs, |m| Some(m.drain_s)),
    ("retries", "retried requests", Unit::Count, |m| {
        Some(m.retries as f64)
    }),
    ("duplicates", "duplicates", Unit::Count, |m| {
        Some(m.duplicates as f64)
    }),
    ("lost", "lost (never seen)", Unit::Count, |m| {
        Some(m.lost as f64)
    }),
    ("undelivered", "undelivered (no 2xx)", Unit::Count, |m| {
        Some(m.undelivered as f64)
    }),
    ("misrouted", "misrouted", Unit::Count, |m| {
        Some(m.misrouted as f64)
    }),
    ("ricochet_cpu_s", "ricochet CPU", Unit::Secs, |m| {
        m.ricochet_cpu_s
    }),
    (
        "ricochet_peak_rss_mib",
        "ricochet peak RSS",
        Unit::MiB,
        |m| m.ricochet_peak_rss_mib,
    ),
    ("load_tool_cpu_s", "load tool CPU", Unit::Secs, |m| {
        m.load_tool_cpu_s
    }),
    ("raw_requests_per_s", "raw ceiling req/s", Unit::Rate, |m| {
        m.raw_requests_per_s
    }),
    ("raw_fraction", "deliveries / raw", Unit::Share, |m| {
        m.raw_fraction
    }),
];

fn fmt(unit: Unit, v: Option<f64>) -> String {
    let Some(v) = v else {
        return "-".into();
    };
    match unit {
        Unit::Count => fmt_count(v.round() as u64),
        Unit::Rate => fmt_count(v.round() as u64),
        Unit::Secs => format!("{v:.2}s"),
        Unit::Micros => fmt_us(v.round() as u64),
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

/// Per row key, the median over runs that have the value.
pub fn medians(runs: &[RunMetrics]) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (key, _, _, get) in ROWS {
        let mut vals: Vec<f64> = runs.iter().filter_map(get).collect();
        let v = median(&mut vals)
            .and_then(serde_json::Number::from_f64)
            .map_or(serde_json::Value::Null, serde_json::Value::Number);
        out.insert((*key).into(), v);
    }
    out
}

/// The text table: one column per run, plus the median when there are several.
pub fn table(runs: &[RunMetrics]) -> String {
    let mut header = vec!["".to_string()];
    header.extend(runs.iter().map(|m| format!("run {}", m.run)));
    let with_median = runs.len() > 1;
    if with_median {
        header.push("median".into());
    }
    let mut rows = vec![header];
    for (_, label, unit, get) in ROWS {
        let vals: Vec<Option<f64>> = runs.iter().map(get).collect();
        if vals.iter().all(Option::is_none) {
            continue;
        }
        let mut row = vec![label.to_string()];
        row.extend(vals.iter().map(|v| fmt(*unit, *v)));
        if with_median {
            let mut present: Vec<f64> = vals.iter().flatten().copied().collect();
            row.push(fmt(*unit, median(&mut present)));
        }
        rows.push(row);
    }
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
        let m = medians(&runs);
        assert_eq!(m["accepted_per_s"], serde_json::json!(200.0));
        assert_eq!(m["raw_fraction"], serde_json::Value::Null);
    }
}
