//! `sweep`: one scenario at several generator windows, and the curve they make.
//!
//! A producer that pipelines keeps some number of lines in flight (written, not yet
//! acked). Run closed loop (`rate = 0`), the generator keeps `window` lines in flight per
//! connection, so by Little's law its ack latency is about (window × connections) ÷
//! throughput: a deep window buys throughput with latency, a shallow one buys latency
//! with throughput. `sweep` runs the scenario once per window (`--runs` times each, each
//! run exactly as `run` would), prints one row of medians per window, and with
//! `--curve FILE.svg` draws ack p50 / p99 and delivery lag p99 against accepted events/s,
//! a point per window, beside the corner issue 6 asks for (ack p99 ≤ 5 ms at ≥ 100,000
//! events/s).
//!
//! It owns no measuring of its own: every figure comes from [`crate::run::measure`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use serde::Serialize;

use crate::gen;
use crate::plot::{draw_legend, legend_line, styled_chart};
use crate::report::{self, RunMetrics};
use crate::run::{self, RunArgs};
use crate::stats::fmt_count;

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Generator windows to measure, comma-separated: lines in flight per ingest
    /// connection, each rounded up to a power of two (`--window` of `run`, one at a time).
    #[arg(long, value_delimiter = ',', required_unless_present = "list")]
    windows: Vec<usize>,
    /// Write the curve as SVG: ack p50 / p99 and delivery lag p99 (log scale) against
    /// accepted events/s, one point per window.
    #[arg(long)]
    curve: Option<PathBuf>,
}

/// One window's runs.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Lines in flight per connection (the generator's ring).
    pub window: usize,
    /// In flight in all: window × connections.
    pub in_flight: usize,
    /// Over the completed runs, as `run --json`'s `median`: null when none completed.
    pub median: serde_json::Value,
    pub runs: Vec<RunMetrics>,
}

impl Point {
    fn new(window: usize, connections: usize, runs: Vec<RunMetrics>) -> Point {
        Point {
            window,
            in_flight: window * connections,
            median: report::median_json(&runs),
            runs,
        }
    }

    /// The median of a `report` row key, if the runs had it.
    fn get(&self, key: &str) -> Option<f64> {
        self.median.get(key).and_then(serde_json::Value::as_f64)
    }
}

/// The windows as the generator will use them: rounded up to powers of two, each once,
/// smallest first.
pub fn windows_in_order(asked: &[usize]) -> Vec<usize> {
    let mut w: Vec<usize> = asked.iter().map(|&w| gen::ring_size(w)).collect();
    w.sort_unstable();
    w.dedup();
    w
}

pub fn cmd_sweep(a: SweepArgs) -> Result<i32> {
    if a.run.list {
        return run::cmd_run(a.run);
    }
    if a.run.window.is_some() {
        bail!("sweep takes its windows from --windows, not --window");
    }
    if a.run.https_compare {
        bail!("sweep measures one scheme: use --https, or run --https-compare per window");
    }
    let windows = windows_in_order(&a.windows);
    if windows.is_empty() {
        bail!("--windows: give at least one window");
    }
    let base = run::scenario_of(&a.run)?;
    let ricochet = run::resolve_ricochet(a.run.ricochet.as_deref())?;
    // Unwritable chart paths fail now, not after the runs.
    if let Some(plot) = &a.run.plot {
        for &w in &windows {
            run::check_plot_paths(&per_window(plot, w), a.run.runs, a.run.https, false)?;
        }
    }
    if let Some(curve) = &a.curve {
        run::check_writable(curve)
            .with_context(|| format!("--curve: cannot write {}", curve.display()))?;
    }
    let stop = crate::stop_flag()?;
    run::announce(&base, &ricochet, true);
    eprintln!(
        "windows {} per connection × {} connection(s)",
        windows
            .iter()
            .map(|w| fmt_count(*w as u64))
            .collect::<Vec<_>>()
            .join(", "),
        base.connections
    );
    let mut points = Vec::new();
    for &w in &windows {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let mut args = a.run.clone();
        args.window = Some(w);
        args.plot = a.run.plot.as_deref().map(|p| per_window(p, w));
        let sc = run::scenario_of(&args)?;
        eprintln!(
            "=== window {w}: {} lines in flight",
            fmt_count((w * sc.connections) as u64)
        );
        let runs = run::measure(&sc, &args, &ricochet, &stop)?;
        if !runs.is_empty() {
            points.push(Point::new(w, sc.connections, runs));
        }
    }
    if let Some(path) = &a.curve {
        match write_curve(path, &format!("{} by producer window", base.name), &points) {
            Ok(()) => eprintln!("curve written to {}", path.display()),
            // The table still follows.
            Err(e) => eprintln!("ricochet-load: curve {} not written: {e:#}", path.display()),
        }
    }
    if a.run.json {
        let out = serde_json::json!({
            "scenario": base.name,
            "source": base.source,
            "description": base.description,
            "ricochet": ricochet.display().to_string(),
            "connections": base.connections,
            "rate": base.rate,
            "points": points,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "\nscenario {} by producer window ({} connection(s), rate {}, medians of {} run(s) each)\n",
            base.name,
            base.connections,
            run::rate_text(base.rate),
            a.run.runs
        );
        print!("{}", table(&points));
        for p in &points {
            run::print_notes(&format!("window {}, ", p.window), &p.runs);
        }
    }
    Ok(run::exit_status(
        points.iter().flat_map(|p| &p.runs),
        stop.load(std::sync::atomic::Ordering::Relaxed),
    ))
}

/// `--plot`'s path for one window: `NAME-w<window>.svg`, so windows do not overwrite
/// each other's plots (`run` then adds its `-2`, `-3` per run).
fn per_window(plot: &Path, window: usize) -> PathBuf {
    let stem = plot
        .file_stem()
        .map_or_else(|| "plot".into(), |s| s.to_string_lossy().into_owned());
    let name = match plot.extension() {
        Some(ext) => format!("{stem}-w{window}.{}", ext.to_string_lossy()),
        None => format!("{stem}-w{window}"),
    };
    plot.with_file_name(name)
}

/// (header, report row key): the columns of the table, each printed as `run` prints
/// that row.
const COLUMNS: &[(&str, &str)] = &[
    ("accepted/s", "accepted_per_s"),
    ("deliveries/s", "deliveries_per_s"),
    ("ack p50", "ack_p50_us"),
    ("ack p99", "ack_p99_us"),
    ("ack p99.9", "ack_p999_us"),
    ("lag p50", "lag_p50_us"),
    ("lag p99", "lag_p99_us"),
    ("peak RSS", "ricochet_peak_rss_mib"),
    ("lost", "lost"),
];

/// The text table: a row per window, a column per figure (medians over its completed
/// runs), then, as under `run`'s table, a line per window with interrupted runs (left
/// out of its median, or no median when none completed).
pub fn table(points: &[Point]) -> String {
    let mut header = vec!["window".to_string(), "in flight".to_string()];
    header.extend(COLUMNS.iter().map(|(head, _)| head.to_string()));
    let mut rows = vec![header];
    for p in points {
        let mut r = vec![fmt_count(p.window as u64), fmt_count(p.in_flight as u64)];
        r.extend(
            COLUMNS
                .iter()
                .map(|(_, key)| report::fmt_key(key, p.get(key))),
        );
        rows.push(r);
    }
    let mut out = report::align(&rows);
    for p in points {
        for line in report::interruptions(&p.runs).lines() {
            out += &format!("window {}: {line}\n", fmt_count(p.window as u64));
        }
    }
    out
}

/// Issue 6's targets for `max`, drawn as a shaded corner: ack p99 at most 5 ms at
/// 100,000 accepted events/s or more.
const ACK_TARGET_MS: f64 = 5.0;
const RATE_TARGET: f64 = 100_000.0;

type Curve = (&'static str, RGBColor, &'static str);

const CURVES: &[Curve] = &[
    ("ack p50", RGBColor(120, 160, 255), "ack_p50_us"),
    ("ack p99", BLUE, "ack_p99_us"),
    ("delivery lag p99", RED, "lag_p99_us"),
];

/// Draws the sweep: latency (ms, log scale) against accepted events/s, one marked point
/// per window, labelled with the lines in flight.
pub fn write_curve(path: &Path, title: &str, points: &[Point]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let xy = |p: &Point, key: &str| -> Option<(f64, f64)> {
        Some((p.get("accepted_per_s")?, p.get(key)? / 1000.0)).filter(|&(_, y)| y > 0.0)
    };
    let x_max = points
        .iter()
        .filter_map(|p| p.get("accepted_per_s"))
        .fold(RATE_TARGET, f64::max)
        * 1.1;
    let (mut y_min, mut y_max) = (ACK_TARGET_MS, ACK_TARGET_MS);
    for p in points {
        for (_, _, key) in CURVES {
            if let Some((_, y)) = xy(p, key) {
                y_min = y_min.min(y);
                y_max = y_max.max(y);
            }
        }
    }
    let (y_lo, y_hi) = (y_min / 2.0, y_max * 2.0);
    let root = SVGBackend::new(path, (1100, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = styled_chart(&root, title)
        .build_cartesian_2d(0f64..x_max, (y_lo..y_hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("accepted events/s")
        .y_desc("milliseconds (log)")
        .x_label_formatter(&|v| fmt_count(v.max(0.0).round() as u64))
        .draw()
        .map_err(|e| err(&e))?;
    // The corner both targets ask for, shaded, and the 5-ms line across the whole chart.
    let target = RGBColor(0, 150, 60);
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(RATE_TARGET, y_lo), (x_max, ACK_TARGET_MS)],
            target.mix(0.15).filled(),
        )))
        .map_err(|e| err(&e))?
        .label("target: ack p99 ≤ 5 ms at ≥ 100,000 events/s")
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 20, y + 5)], target.mix(0.3).filled())
        });
    chart
        .draw_series(LineSeries::new(
            [(0.0, ACK_TARGET_MS), (x_max, ACK_TARGET_MS)],
            target.stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    for &(label, color, key) in CURVES {
        let line: Vec<(f64, f64)> = points.iter().filter_map(|p| xy(p, key)).collect();
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(legend_line(color));
        chart
            .draw_series(line.iter().map(|&c| Circle::new(c, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    // Each ack p99 point names its window: lines in flight in all.
    chart
        .draw_series(points.iter().filter_map(|p| {
            let c = xy(p, "ack_p99_us")?;
            Some(
                EmptyElement::at(c)
                    + Text::new(
                        format!("{} in flight", fmt_count(p.in_flight as u64)),
                        (7, 4),
                        ("sans-serif", 13).into_font().color(&BLACK),
                    ),
            )
        }))
        .map_err(|e| err(&e))?;
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn run_at(accepted_per_s: f64, ack_p99_us: u64) -> RunMetrics {
        RunMetrics {
            accepted_per_s,
            deliveries_per_s: accepted_per_s * 0.9,
            ack: Percentiles {
                p50_us: ack_p99_us / 3,
                p99_us: ack_p99_us,
                p999_us: ack_p99_us * 2,
                count: 1_000,
                ..Default::default()
            },
            lag: Percentiles {
                count: 1_000,
                p50_us: 900,
                p99_us: 4_000,
                ..Default::default()
            },
            ricochet_peak_rss_mib: Some(120.5),
            ..Default::default()
        }
    }

    #[test]
    fn windows_are_rounded_deduplicated_and_sorted() {
        assert_eq!(
            windows_in_order(&[256, 30, 32, 1, 100]),
            vec![2, 32, 128, 256]
        );
        assert!(windows_in_order(&[]).is_empty());
    }

    #[test]
    fn each_window_gets_its_own_plot() {
        assert_eq!(
            per_window(Path::new("/tmp/out/max.svg"), 32),
            PathBuf::from("/tmp/out/max-w32.svg")
        );
        assert_eq!(per_window(Path::new("max"), 8), PathBuf::from("max-w8"));
    }

    #[test]
    fn a_point_holds_the_medians_of_its_runs() {
        let p = Point::new(
            32,
            2,
            vec![
                run_at(40_000.0, 3_000),
                run_at(44_000.0, 5_000),
                run_at(42_000.0, 4_000),
            ],
        );
        assert_eq!(p.in_flight, 64);
        assert_eq!(p.get("accepted_per_s"), Some(42_000.0));
        assert_eq!(p.get("ack_p99_us"), Some(4_000.0));
        assert_eq!(p.runs.len(), 3);
    }

    #[test]
    fn the_table_has_a_row_per_window() {
        let points = vec![
            Point::new(32, 2, vec![run_at(42_000.0, 3_500)]),
            Point::new(16_384, 2, vec![run_at(67_000.0, 250_000)]),
        ];
        let t = table(&points);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].contains("in flight") && lines[0].contains("ack p99"));
        assert!(
            lines[2].contains("64") && lines[2].contains("42,000") && lines[2].contains("3.50ms")
        );
        assert!(lines[3].contains("32,768") && lines[3].contains("250.00ms"));
        assert!(lines[3].contains("120.5 MiB"));
    }

    /// As in `run`: interrupted runs are left out of a window's median; a window with no
    /// completed run has a null median (not a map of nulls) and says why under the table.
    #[test]
    fn a_window_whose_runs_were_all_interrupted_has_no_median() {
        let stopped = |run| RunMetrics {
            run,
            interrupted: true,
            ..run_at(50_000.0, 9_000)
        };
        let points = vec![
            Point::new(
                32,
                1,
                vec![
                    RunMetrics {
                        run: 1,
                        ..run_at(40_000.0, 3_000)
                    },
                    stopped(2),
                ],
            ),
            Point::new(64, 1, vec![stopped(1)]),
        ];
        let json = serde_json::to_value(&points).unwrap();
        assert_eq!(json[0]["median"]["accepted_per_s"], 40_000.0);
        assert_eq!(json[0]["median"]["runs_in_median"], serde_json::json!([1]));
        assert_eq!(json[1]["median"], serde_json::Value::Null, "{}", json[1]);
        assert_eq!(points[1].get("accepted_per_s"), None);
        let t = table(&points);
        assert!(
            t.contains("window 32: run 2 interrupted: left out of the median, which is of the completed run 1"),
            "{t}"
        );
        assert!(
            t.contains("window 64: run 1 interrupted: no run completed, so no median"),
            "{t}"
        );
        // Without interruptions, no such line.
        assert!(!table(&points[..0]).contains("interrupted"));
        let t = table(&[Point::new(32, 1, vec![run_at(40_000.0, 3_000)])]);
        assert!(!t.contains("interrupted"), "{t}");
    }

    #[test]
    fn writes_the_curve() {
        let points = vec![
            Point::new(16, 2, vec![run_at(35_000.0, 2_000)]),
            Point::new(256, 2, vec![run_at(55_000.0, 18_000)]),
            Point::new(16_384, 2, vec![run_at(67_000.0, 250_000)]),
        ];
        let path = std::env::temp_dir().join(format!("rl-curve-{}.svg", std::process::id()));
        write_curve(&path, "test", &points).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("target: ack p99 ≤ 5 ms at ≥ 100,000 events/s"));
        assert!(svg.contains("512 in flight") && svg.contains("32,768 in flight"));
        assert!(svg.contains("delivery lag p99"));
    }
}
