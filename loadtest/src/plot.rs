//! SVG chart of a run: throughput per second on top, latency percentiles per second
//! (log scale) below. A series with a single sample (an ingest under a second) is
//! drawn as a dot: a one-point line would not show.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Sample;

type Series<'a> = (&'a str, RGBColor, fn(&Sample) -> f64);

/// Drawn in this order: requests under deliveries (equal without retries).
const THROUGHPUT: &[Series] = &[
    ("http requests/s", RGBColor(255, 140, 0), |s| {
        s.requests_per_s
    }),
    ("deliveries/s", RGBColor(0, 160, 0), |s| s.deliveries_per_s),
    ("accepted events/s", BLUE, |s| s.accepted_per_s),
];

const LATENCY: &[Series] = &[
    ("ack p50", RGBColor(120, 160, 255), |s| s.ack_p50_ms),
    ("ack p99", BLUE, |s| s.ack_p99_ms),
    ("ack p99.9", RGBColor(0, 0, 120), |s| s.ack_p999_ms),
    ("lag p50", RGBColor(255, 150, 150), |s| s.lag_p50_ms),
    ("lag p99", RED, |s| s.lag_p99_ms),
    ("lag p99.9", RGBColor(120, 0, 0), |s| s.lag_p999_ms),
];

/// A legend entry for a line series: a short stroke in its colour.
pub fn legend_line(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// Draws a chart's legend box (every chart here uses the same style).
pub fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// A chart builder on `area` in the style every chart here shares: its caption, margin
/// and label areas.
pub fn styled_chart<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(80);
    b
}

/// A line through `points` in `color`, 2 px wide; a lone point gets a dot instead, as a
/// one-point line draws nothing.
fn line<DB: DrawingBackend>(
    points: Vec<(f64, f64)>,
    color: RGBColor,
) -> LineSeries<DB, (f64, f64)> {
    if points.len() == 1 {
        LineSeries::new(points, color.filled().stroke_width(2)).point_size(4)
    } else {
        LineSeries::new(points, color.stroke_width(2))
    }
}

/// Writes the chart for one run's samples to `path`.
pub fn write_svg(path: &Path, title: &str, samples: &[Sample]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(380);
    let t_max = samples.iter().map(|s| s.t_s).fold(1.0f64, f64::max).ceil();

    let y_max = samples
        .iter()
        .flat_map(|s| THROUGHPUT.iter().map(move |(_, _, f)| f(s)))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = styled_chart(&top, &format!("{title}: throughput"))
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .y_label_formatter(&|v| crate::stats::fmt_count(v.max(0.0).round() as u64))
        .draw()
        .map_err(|e| err(&e))?;
    for &(label, color, get) in THROUGHPUT {
        chart
            .draw_series(line(
                samples.iter().map(|s| (s.t_s, get(s))).collect(),
                color,
            ))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(legend_line(color));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(|e| err(&e))?;

    const FLOOR_MS: f64 = 0.01;
    let l_max = samples
        .iter()
        .flat_map(|s| LATENCY.iter().map(move |(_, _, f)| f(s)))
        .fold(1.0f64, f64::max)
        * 2.0;
    let mut chart = styled_chart(&bottom, &format!("{title}: latency per second"))
        .build_cartesian_2d(0f64..t_max, (FLOOR_MS..l_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("milliseconds (log)")
        .draw()
        .map_err(|e| err(&e))?;
    for &(label, color, get) in LATENCY {
        // Seconds without samples (0) are left out rather than drawn at the floor.
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| get(s) > 0.0)
            .map(|s| (s.t_s, get(s).max(FLOOR_MS)))
            .collect();
        chart
            .draw_series(line(points, color))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(legend_line(color));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg() {
        let samples: Vec<Sample> = (1..=10)
            .map(|t| Sample {
                t_s: t as f64,
                accepted_per_s: 1000.0 * t as f64,
                deliveries_per_s: 900.0 * t as f64,
                requests_per_s: 950.0 * t as f64,
                ack_p50_ms: 0.5,
                ack_p99_ms: 2.0,
                ack_p999_ms: 5.0,
                lag_p50_ms: if t > 2 { 1.0 } else { 0.0 },
                lag_p99_ms: 4.0,
                lag_p999_ms: 9.0,
                ..Default::default()
            })
            .collect();
        let path = std::env::temp_dir().join(format!("rl-plot-{}.svg", std::process::id()));
        write_svg(&path, "test", &samples).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("deliveries/s"));
        assert!(svg.contains("lag p99.9"));
        // Lines only: no dots.
        assert!(!svg.contains("<circle"), "dots on a 10-sample chart");
        let _ = std::fs::remove_file(path);
    }

    /// An ingest under a second leaves one sample: every series must still show.
    #[test]
    fn a_lone_sample_is_drawn_as_a_dot() {
        let samples = [Sample {
            t_s: 0.6,
            span_s: 0.6,
            accepted_per_s: 5_000.0,
            deliveries_per_s: 4_000.0,
            requests_per_s: 4_500.0,
            ack_p50_ms: 0.5,
            ack_p99_ms: 2.0,
            ack_p999_ms: 5.0,
            lag_p50_ms: 1.0,
            lag_p99_ms: 4.0,
            lag_p999_ms: 9.0,
            ..Default::default()
        }];
        let path = std::env::temp_dir().join(format!("rl-plot1-{}.svg", std::process::id()));
        write_svg(&path, "one", &samples).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        // 3 throughput series and 6 latency series, a dot each.
        assert_eq!(svg.matches("<circle").count(), 9, "{svg}");
        // In the series' colour (deliveries/s: rgb(0, 160, 0)).
        assert!(svg.contains("fill=\"#00A000\""), "{svg}");
    }
}
