//! `run`: one scenario end to end, measured.
//!
//! Per run: start the in-process sink on a free loopback port, write a ricochet config
//! (one endpoint per event type, `allow_private_networks = true`), start
//! `ricochet serve` on a fresh temp dir, wait for `GET /health`, run the generator,
//! end any scripted outage, wait for the drain (the sink has delivered every accepted
//! id, or the sink went idle, or the drain timeout), read ricochet's CPU and peak RSS
//! from /proc, stop it, and account for every accepted id.
//!
//! `--https` serves the sink over TLS (a CA made per run, written into the run dir and
//! named in ricochet's `[server] extra_ca_file`; endpoints `https://localhost:PORT/e/<n>`);
//! `--https-compare` runs every repetition twice, plain HTTP and HTTPS, and reports the
//! HTTPS/HTTP deliveries/s ratio. Scenarios with `[endpoint] max_rps > 0` also get the
//! sink's per-endpoint one-second window check ([`crate::ratecheck`]).

use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cost;
use crate::gen::{self, Gen, GenConfig, GenShared, Target};
use crate::procstat;
use crate::raw;
use crate::report::{self, RestartMetrics, RunMetrics, Sample};
use crate::scenario::{Outage, Scenario, BUILT_IN};
use crate::script::{parse_duration, parse_positive};
use crate::sink::{RateLimit, Sink, SinkConfig, SinkCounts};
use crate::stats::{self, fmt_count, Percentiles};

#[derive(Args, Clone)]
pub struct RunArgs {
    /// A built-in scenario name (max, many-endpoints, retry-storm, backlog, templates,
    /// smoke) or a scenario TOML file.
    #[arg(long, required_unless_present = "list")]
    scenario: Option<String>,
    /// List the built-in scenarios and exit.
    #[arg(long)]
    pub(crate) list: bool,
    /// Repeat the scenario; the report shows each run and the median of the completed
    /// runs (an interrupted run is marked and left out).
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    pub(crate) runs: usize,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write an SVG of throughput and latency per second (one file per run: NAME-2.svg..).
    /// The paths are checked for writing before the first run; a chart that fails to
    /// draw later is reported and the table or JSON still printed.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// The ricochet binary (default: target/release/ricochet under $CARGO_TARGET_DIR,
    /// /root/.cache/ricochet-target or ./target).
    #[arg(long)]
    pub(crate) ricochet: Option<PathBuf>,
    /// Also measure the raw ceiling (bare client -> same sink) after each run.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    raw_duration: Duration,
    /// Connections of the bare client. Default: both 16 and as many as ricochet opened
    /// in the run (its lanes), and the ceiling is the better of the two — with few
    /// connections the bare loop is bound by round-trip latency, not by the machine.
    #[arg(long, value_parser = parse_positive)]
    raw_connections: Option<usize>,
    /// Override the scenario's event count.
    #[arg(long)]
    events: Option<u64>,
    /// Override the scenario's send duration.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Override the scenario's rate (events/s, 0 = flat out).
    #[arg(long)]
    rate: Option<f64>,
    /// Override the scenario's drain timeout.
    #[arg(long, value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// Override the scenario's generator window: most lines in flight (written, not yet
    /// acked) per ingest connection, rounded up to a power of two. Under flat-out load
    /// ack latency is about window / throughput, so a small window shows ack latency with
    /// a bounded producer.
    #[arg(long, value_parser = parse_positive)]
    pub(crate) window: Option<usize>,
    /// Override the scenario's linger: with a rate, the least time between a
    /// connection's writes, so what falls due meanwhile goes out in one write, as a
    /// batching producer sends (Kafka's linger.ms). Latency still counts from each
    /// event's due time.
    #[arg(long, value_parser = parse_duration)]
    linger: Option<Duration>,
    /// Override the scenario's `restart`: after ingest (before an outage ends) kill -9
    /// ricochet, start it again on the same data dir, and time its first /health and the
    /// first ok ack of a probe event. `--restart=false` turns it off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    restart: Option<bool>,
    /// Longest wait for ricochet's /health.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    startup_timeout: Duration,
    /// Keep each run's temp dir (config, data, ricochet.log) instead of deleting it. It
    /// is kept anyway when the run fails (an error, or a finding that makes the exit
    /// status 1) or is interrupted.
    #[arg(long)]
    keep: bool,
    /// Serve the sink over HTTPS (endpoints https://localhost:PORT, ricochet trusts the
    /// run's CA through [server] extra_ca_file).
    #[arg(long, conflicts_with = "https_compare")]
    pub(crate) https: bool,
    /// Run every repetition twice, plain HTTP then HTTPS (alternating the order on even
    /// runs), and report HTTPS deliveries/s as a ratio of HTTP's.
    #[arg(long)]
    pub(crate) https_compare: bool,
    /// Override the scenario's [sink] rate_tolerance: arrivals allowed per 1-s window
    /// above max_rps before the rate check counts a violation.
    #[arg(long)]
    rate_tolerance: Option<u32>,
}

/// How the sink is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The HTTPS ratio must reach this share of plain HTTP's deliveries/s (issue 4).
const HTTPS_TARGET: f64 = 0.7;

/// backlog: "ready to accept within 5 s after a restart with that backlog".
const RESTART_TARGET_S: f64 = 5.0;

pub fn cmd_run(a: RunArgs) -> Result<i32> {
    if a.list {
        for (name, text) in BUILT_IN {
            let s = Scenario::parse(name, "built in", text)?;
            println!(
                "{name:<16} {}",
                s.description.lines().next().unwrap_or_default()
            );
        }
        return Ok(0);
    }
    let sc = scenario_of(&a)?;
    let ricochet = resolve_ricochet(a.ricochet.as_deref())?;
    if let Some(plot) = &a.plot {
        check_plot_paths(plot, a.runs, a.https, a.https_compare)?;
    }
    let stop = crate::stop_flag()?;
    announce(&sc, &ricochet, false);
    let runs = measure(&sc, &a, &ricochet, &stop)?;
    if runs.is_empty() && stop.load(Ordering::Relaxed) {
        eprintln!("ricochet-load: interrupted before any run completed");
        return Ok(EXIT_INTERRUPTED);
    }
    let labelled = a.https || a.https_compare;
    let compare = a.https_compare.then(|| https_compare(&runs));
    let interrupted = stop.load(Ordering::Relaxed);
    if a.json {
        // Over the completed runs only; null where none completed.
        let median = if labelled {
            let by: serde_json::Map<String, serde_json::Value> = report::labels(&runs)
                .into_iter()
                .map(|l| {
                    let subset: Vec<RunMetrics> =
                        runs.iter().filter(|m| m.label == l).cloned().collect();
                    (l.to_string(), report::median_json(&subset))
                })
                .collect();
            serde_json::Value::Object(by)
        } else {
            report::median_json(&runs)
        };
        let mut out = serde_json::json!({
            "scenario": sc.name,
            "source": sc.source,
            "description": sc.description,
            "settings": settings_json(&sc),
            "ricochet": ricochet.display().to_string(),
            "interrupted": interrupted,
            "runs": runs,
            "median": median,
        });
        if let Some(c) = &compare {
            out["https_compare"] = serde_json::to_value(c)?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "\nscenario {}: {}\nsettings: {}\n",
            sc.name,
            sc.description.replace('\n', " "),
            settings_text(&sc, false)
        );
        print!("{}", report::table(&runs));
        if let Some(c) = &compare {
            print!("{}", c.text());
        }
        print_notes("", &runs);
    }
    Ok(exit_status(&runs, interrupted))
}

/// The exit status of an interrupted `run`, `sweep` or `gen` (SIGINT/SIGTERM), as a shell
/// reports a command killed by SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;

/// `run`'s and `sweep`'s exit status: 130 when interrupted, else 1 when any run failed
/// ([`run_failed`]) or none ran, else 0.
pub fn exit_status<'a>(runs: impl IntoIterator<Item = &'a RunMetrics>, interrupted: bool) -> i32 {
    if interrupted {
        return EXIT_INTERRUPTED;
    }
    let mut runs = runs.into_iter().peekable();
    i32::from(runs.peek().is_none() || runs.any(run_failed))
}

/// The schemes each repetition runs (`--https`, `--https-compare`), with the label its
/// runs and plots carry: none when only plain HTTP runs.
fn scheme_labels(https: bool, https_compare: bool) -> &'static [(Scheme, &'static str)] {
    if https_compare {
        &[(Scheme::Http, "http"), (Scheme::Https, "https")]
    } else if https {
        &[(Scheme::Https, "https")]
    } else {
        &[(Scheme::Http, "")]
    }
}

/// Every SVG `--plot` will write for these runs and schemes.
fn plot_paths(plot: &Path, runs: usize, https: bool, https_compare: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for i in 1..=runs {
        for (_, l) in scheme_labels(https, https_compare) {
            out.push(plot_path(plot, i, runs, l));
        }
    }
    out
}

/// Fails now, not after the runs, when a `--plot` file cannot be written.
pub fn check_plot_paths(plot: &Path, runs: usize, https: bool, https_compare: bool) -> Result<()> {
    for path in plot_paths(plot, runs, https, https_compare) {
        check_writable(&path)
            .with_context(|| format!("--plot: cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Whether `path` can be written: opens it for appending (creating it, which is undone,
/// when it did not exist).
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The scenario `a` names, with its command-line overrides applied.
pub fn scenario_of(a: &RunArgs) -> Result<Scenario> {
    let name = a.scenario.clone().unwrap_or_default();
    let mut sc = Scenario::load(&name)?;
    if let Some(e) = a.events {
        sc.events = e;
    }
    if let Some(d) = a.duration {
        sc.duration = d;
    }
    if let Some(r) = a.rate {
        sc.rate = r;
    }
    if let Some(d) = a.drain_timeout {
        sc.drain_timeout = d;
    }
    if let Some(t) = a.rate_tolerance {
        sc.rate_tolerance = t;
    }
    if let Some(w) = a.window {
        sc.window = w.max(2);
    }
    if let Some(l) = a.linger {
        sc.linger = l;
    }
    if let Some(r) = a.restart {
        sc.restart = r;
    }
    Ok(sc)
}

/// The header lines every measurement starts with (stderr); `swept` as in
/// [`settings_text`].
pub fn announce(sc: &Scenario, ricochet: &Path, swept: bool) {
    eprintln!(
        "scenario {} ({}): {}",
        sc.name,
        sc.source,
        settings_text(sc, swept)
    );
    eprintln!(
        "ricochet {}; sink and raw on the {} driver",
        ricochet.display(),
        stats::driver_name()
    );
    if sc.max_rps > 0 {
        eprintln!(
            "rate check: every endpoint at most {} + {} arrivals per 1-s window",
            sc.max_rps, sc.rate_tolerance
        );
    }
}

/// Runs `sc` `a.runs` times (per scheme with `--https-compare`), writing each run's plot
/// and, without `--json`, its one-line summary. Stops early on Ctrl-C.
pub fn measure(
    sc: &Scenario,
    a: &RunArgs,
    ricochet: &Path,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<RunMetrics>> {
    let schemes = scheme_labels(a.https, a.https_compare);
    let mut runs = Vec::new();
    'runs: for i in 1..=a.runs {
        // Alternate which scheme goes first, so neither always runs on a warmer box.
        let mut order = schemes.to_vec();
        if i % 2 == 0 {
            order.reverse();
        }
        for (scheme, label) in order {
            if stop.load(Ordering::Relaxed) {
                break 'runs;
            }
            eprintln!("--- run {i}/{} {label}", a.runs);
            let mut m = match run_once(sc, a, i, scheme, ricochet, stop) {
                Ok(m) => m,
                // Ctrl-C while ricochet starts (or in a restart): report what ran.
                Err(e) if stop.load(Ordering::Relaxed) => {
                    eprintln!("run {i}{}: interrupted: {e:#}", label_suffix(label));
                    break 'runs;
                }
                Err(e) => return Err(e.context(format!("run {i} {label}"))),
            };
            m.label = label.to_string();
            if let Some(plot) = &a.plot {
                let path = plot_path(plot, i, a.runs, label);
                match crate::plot::write_svg(
                    &path,
                    &format!("{} run {i} {label}", sc.name),
                    &m.series,
                ) {
                    Ok(()) => eprintln!("plot written to {}", path.display()),
                    Err(e) => {
                        let msg = format!("plot {} not written: {e:#}", path.display());
                        eprintln!("ricochet-load: {msg}");
                        m.notes.push(msg);
                    }
                }
            }
            if !a.json {
                eprintln!("{}", one_line(&m));
            }
            runs.push(m);
        }
    }
    Ok(runs)
}

/// The notes runs left (drain ends, panics in ricochet's log, …), a line each, after
/// `prefix` (`sweep` names the window).
pub fn print_notes(prefix: &str, runs: &[RunMetrics]) {
    for m in runs {
        for n in &m.notes {
            println!("{prefix}run {}{}: {n}", m.run, label_suffix(&m.label));
        }
    }
}

/// Whether a run lost, misrouted or mis-acked an event, left an event undelivered where
/// the scenario expects every delivery to succeed ([`RunMetrics::all_deliveries_expected`]),
/// sent fewer events than asked because ricochet closed the ingest connection (or stopped
/// reading or acking, or exited), broke a rate limit, or never became ready after its
/// restart.
pub fn run_failed(m: &RunMetrics) -> bool {
    m.lost > 0
        || m.ingest_cut_short.is_some()
        || (m.undelivered > 0 && m.all_deliveries_expected)
        || m.missing_acks > 0
        || m.err_acks > 0
        || m.misrouted > 0
        || m.ack_mismatch > 0
        || m.rate_check.is_some_and(|r| r.windows_over_limit > 0)
        || m.restart.as_ref().is_some_and(|r| r.first_ack_s.is_none())
}

/// The notes for accepted events the sink never saw (`lost`) or never answered 2xx
/// (`undelivered`): in an interrupted run they are the interrupt's, not losses or retries
/// given up.
fn accounting_notes(
    lost: u64,
    undelivered: u64,
    all_expected: bool,
    interrupted: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if interrupted {
        if lost + undelivered > 0 {
            out.push(format!(
                "interrupted: by then {lost} accepted events were not yet seen by the sink and {undelivered} not yet answered 2xx (the interrupt's doing, not losses or retries given up)"
            ));
        }
        return out;
    }
    if lost > 0 {
        out.push(format!("{lost} accepted events never reached the sink"));
    }
    if undelivered > 0 {
        out.push(format!(
            "{undelivered} accepted events reached the sink but never got a 2xx{}",
            if all_expected {
                " although the sink answers every request with a 2xx (a failure)"
            } else {
                " (the scenario's script fails some answers: expected with finite retries)"
            }
        ));
    }
    out
}

/// Whether the scenario's sink answers every request with a 2xx once it is up (a
/// script of 2xx statuses only, no resets): then an accepted event that reached the sink
/// and never got a 2xx was given up by ricochet, a failure. A script with failures (and
/// finite retries) leaves some undelivered by design.
pub fn all_deliveries_expected(sc: &Scenario) -> bool {
    sc.reset == 0.0
        && sc
            .script
            .entries
            .iter()
            .all(|e| (200..300).contains(&e.status) || e.weight == 0.0)
}

pub fn rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!("{}/s", rate)
    } else {
        "flat out".into()
    }
}

/// The scenario as run (after the command-line overrides), for the report header;
/// `swept` when `sweep` sets the window run by run.
fn settings_text(sc: &Scenario, swept: bool) -> String {
    let window = gen::ring_size(sc.window);
    format!(
        "{} endpoints, {} events max, {:?} max, rate {}{}, {} connection(s), window {}, {} durability, outage {}, drain timeout {:?}{}",
        fmt_count(sc.endpoints),
        fmt_count(sc.events),
        sc.duration,
        rate_text(sc.rate),
        if sc.rate > 0.0 && !sc.linger.is_zero() {
            format!(" (linger {:?})", sc.linger)
        } else {
            String::new()
        },
        sc.connections,
        if swept {
            "by run (swept)".to_string()
        } else if window != sc.window {
            format!(
                "{} (asked {}, rounded up to a power of two)",
                fmt_count(window as u64),
                sc.window
            )
        } else {
            fmt_count(window as u64)
        },
        sc.durability,
        sc.outage.name(),
        sc.drain_timeout,
        if sc.restart {
            ", kill -9 and restart after ingest"
        } else {
            ""
        }
    )
}

/// The same for `--json`.
fn settings_json(sc: &Scenario) -> serde_json::Value {
    serde_json::json!({
        "endpoints": sc.endpoints,
        "events": sc.events,
        "duration_s": sc.duration.as_secs_f64(),
        "rate": sc.rate,
        "connections": sc.connections,
        "window": gen::ring_size(sc.window),
        "linger_s": sc.linger.as_secs_f64(),
        "durability": sc.durability,
        "outage": sc.outage.name(),
        "drain_timeout_s": sc.drain_timeout.as_secs_f64(),
        "restart": sc.restart,
    })
}

/// ` <label>`, or nothing for an unlabelled run.
fn label_suffix(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!(" {label}")
    }
}

/// One HTTP/HTTPS pair of runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComparePair {
    pub run: usize,
    pub http_deliveries_per_s: f64,
    pub https_deliveries_per_s: f64,
    /// https / http deliveries/s.
    pub ratio: f64,
    pub http_ricochet_cpu_s: Option<f64>,
    pub https_ricochet_cpu_s: Option<f64>,
    /// ricochet CPU µs per delivered event.
    pub http_cpu_us_per_delivery: Option<f64>,
    pub https_cpu_us_per_delivery: Option<f64>,
}

/// `--https-compare`: the pairs and their medians.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Compare {
    pub pairs: Vec<ComparePair>,
    pub http_deliveries_per_s: Option<f64>,
    pub https_deliveries_per_s: Option<f64>,
    /// Median of the per-pair ratios.
    pub ratio: Option<f64>,
    pub target: f64,
}

fn cpu_per_delivery(m: &RunMetrics) -> Option<f64> {
    m.ricochet_cpu_s
        .filter(|_| m.delivered > 0)
        .map(|c| c * 1e6 / m.delivered as f64)
}

/// The HTTP/HTTPS pairs of completed runs (an interrupted run pairs with nothing).
pub fn https_compare(runs: &[RunMetrics]) -> Compare {
    let mut pairs = Vec::new();
    let find = |run: usize, label: &str| {
        runs.iter()
            .find(|m| m.run == run && m.label == label && !m.interrupted)
    };
    let mut ids: Vec<usize> = runs.iter().map(|m| m.run).collect();
    ids.dedup();
    for run in ids {
        let (Some(h), Some(s)) = (find(run, "http"), find(run, "https")) else {
            continue;
        };
        pairs.push(ComparePair {
            run,
            http_deliveries_per_s: h.deliveries_per_s,
            https_deliveries_per_s: s.deliveries_per_s,
            ratio: s.deliveries_per_s / h.deliveries_per_s.max(1e-9),
            http_ricochet_cpu_s: h.ricochet_cpu_s,
            https_ricochet_cpu_s: s.ricochet_cpu_s,
            http_cpu_us_per_delivery: cpu_per_delivery(h),
            https_cpu_us_per_delivery: cpu_per_delivery(s),
        });
    }
    let med = |f: fn(&ComparePair) -> f64| {
        let mut v: Vec<f64> = pairs.iter().map(f).collect();
        report::median(&mut v)
    };
    Compare {
        http_deliveries_per_s: med(|p| p.http_deliveries_per_s),
        https_deliveries_per_s: med(|p| p.https_deliveries_per_s),
        ratio: med(|p| p.ratio),
        target: HTTPS_TARGET,
        pairs,
    }
}

impl Compare {
    pub fn text(&self) -> String {
        let opt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        let mut out = String::from("\nhttps vs http (same scenario, events and duration):\n");
        for p in &self.pairs {
            out += &format!(
                "  run {}: deliveries/s {} http, {} https = {:.3}; ricochet CPU {}s vs {}s ({} vs {} us/delivery)\n",
                p.run,
                fmt_count(p.http_deliveries_per_s.round() as u64),
                fmt_count(p.https_deliveries_per_s.round() as u64),
                p.ratio,
                opt(p.http_ricochet_cpu_s, 2),
                opt(p.https_ricochet_cpu_s, 2),
                opt(p.http_cpu_us_per_delivery, 1),
                opt(p.https_cpu_us_per_delivery, 1),
            );
        }
        match self.ratio {
            Some(r) => {
                out += &format!(
                    "  https/http deliveries/s ratio {r:.3} (median of {} pair(s); target >= {}: {})\n",
                    self.pairs.len(),
                    self.target,
                    if r >= self.target { "met" } else { "NOT met" }
                );
            }
            None => out += "  no complete http/https pair\n",
        }
        out
    }
}

fn one_line(m: &RunMetrics) -> String {
    let rate = m.rate_check.map_or(String::new(), |r| {
        format!(
            ", rate windows over {} {} (worst {})",
            r.limit, r.windows_over_limit, r.worst_window
        )
    });
    format!(
        "run {}{}: accepted {} ({:.0}/s{}), delivered {} ({:.0}/s), ack {}, lag {}, lost {}, undelivered {}{}, dup {}, drain {} ({})",
        m.run,
        label_suffix(&m.label),
        fmt_count(m.accepted),
        m.accepted_per_s,
        if m.ok_no_delivery > 0 {
            format!(", {} with 0 deliveries", fmt_count(m.ok_no_delivery))
        } else {
            String::new()
        },
        fmt_count(m.delivered),
        m.deliveries_per_s,
        m.ack.brief(),
        m.lag.brief(),
        m.lost,
        m.undelivered,
        if m.undelivered > 0 && m.interrupted {
            " (interrupted)"
        } else if m.undelivered > 0 && !m.all_deliveries_expected {
            " (the script fails some answers)"
        } else {
            ""
        },
        m.duplicates,
        m.drain_s.map_or("-".into(), |d| format!("{d:.2}s")),
        m.drain_end
    ) + &rate
        + &m.restart.as_ref().map_or(String::new(), |r| {
            format!(
                ", restart: health after {:.3}s, first ack after {}",
                r.health_s,
                r.first_ack_s.map_or("-".into(), |t| format!("{t:.3}s"))
            )
        })
}

/// `base` for the first run, `NAME-<run>.svg` for the others; a scheme label other than
/// the first run's plain `http` adds `-https` (`NAME-https.svg`, `NAME-2-https.svg`).
fn plot_path(base: &Path, run: usize, runs: usize, label: &str) -> PathBuf {
    let suffix = if label == "https" { "-https" } else { "" };
    if (runs <= 1 || run == 1) && suffix.is_empty() {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot".into());
    if runs <= 1 || run == 1 {
        return base.with_file_name(format!("{stem}{suffix}.svg"));
    }
    base.with_file_name(format!("{stem}-{run}{suffix}.svg"))
}

/// The host name for HTTPS endpoint URLs: `localhost` (exercising SNI and the DNS name
/// in the certificate) when it resolves to 127.0.0.1 first, where the sink listens;
/// else the IP literal, which the certificate also names.
fn https_host() -> (&'static str, Option<String>) {
    let first = ("localhost", 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip());
    if first == Some(IpAddr::V4(Ipv4Addr::LOCALHOST)) {
        ("localhost", None)
    } else {
        (
            "127.0.0.1",
            Some(format!(
                "localhost resolves to {first:?}, not 127.0.0.1 first: HTTPS endpoints use https://127.0.0.1:PORT"
            )),
        )
    }
}

/// `--ricochet`, else the first existing default location.
pub fn resolve_ricochet(arg: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = arg {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--ricochet {}: no such file", p.display());
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/ricochet"));
    }
    candidates.push(PathBuf::from(
        "/root/.cache/ricochet-target/release/ricochet",
    ));
    candidates.push(PathBuf::from("target/release/ricochet"));
    candidates.push(PathBuf::from("../target/release/ricochet"));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "no ricochet binary at {}; build it (cargo build --release --bin ricochet) or pass --ricochet PATH",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A free loopback port (bound and released at once).
fn reserve_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// Kills ricochet if a run ends early (error or panic), so no server is left behind.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM (ricochet drains in-flight attempts), SIGKILL after `grace`.
    fn terminate(&mut self, grace: Duration) -> String {
        let Some(mut child) = self.0.take() else {
            return "not running".into();
        };
        if let Ok(Some(st)) = child.try_wait() {
            return format!("had exited: {st}");
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return format!("stopped by SIGTERM: {st}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let st = child.wait().map(|s| s.to_string()).unwrap_or_default();
        format!("killed after {grace:?} without exiting on SIGTERM: {st}")
    }

    /// SIGKILL at once (a crash: nothing is flushed or finished), and reap it.
    fn kill9(&mut self) -> String {
        let Some(mut child) = self.0.take() else {
            return "not running".into();
        };
        if let Ok(Some(st)) = child.try_wait() {
            return format!("had exited: {st}");
        }
        let _ = child.kill();
        match child.wait() {
            Ok(st) => format!("killed: {st}"),
            Err(e) => format!("killed, wait failed: {e}"),
        }
    }
}

/// Starts `ricochet serve --config <config>` in its own process group (killed by the
/// kernel if this process dies), output appended to `log`. Returns it with the instant
/// just before the spawn, from which startup is timed.
fn spawn_ricochet(ricochet: &Path, config: &Path, log: &Path) -> Result<(ChildGuard, Instant)> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(ricochet);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it makes the kernel SIGKILL ricochet if this
    // process dies without cleaning up (e.g. a second Ctrl-C), so no server is orphaned.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let at = Instant::now();
    let child = command.spawn().with_context(|| {
        format!(
            "starting {} serve --config {}",
            ricochet.display(),
            config.display()
        )
    })?;
    Ok((ChildGuard(Some(child)), at))
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last lines of ricochet's log, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n  ");
    if tail.is_empty() {
        format!("(ricochet's log {} is empty)", path.display())
    } else {
        format!("last lines of {}:\n  {tail}", path.display())
    }
}

/// The first few panic lines in ricochet's log (a panicked worker may leave the process
/// alive but deaf, which shows up as missing acks or lost deliveries).
fn panics_in_log(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("panicked at") && out.len() < 3 {
            let detail = lines.get(i + 1).copied().unwrap_or_default();
            out.push(format!("{} {}", l.trim(), detail.trim()));
        }
    }
    out
}

/// One measurement of the bare client: how many connections, how many requests/s.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RawPoint {
    pub connections: usize,
    pub requests_per_s: f64,
}

impl RawPoint {
    /// The ceiling: the point with the most requests/s.
    pub fn best(points: &[RawPoint]) -> Option<RawPoint> {
        points
            .iter()
            .copied()
            .max_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s))
    }
}

/// The connection counts the raw ceiling is measured at: the one asked for, or else 16
/// and the number of lanes ricochet opened in the run (at most 1,024) when that differs.
fn raw_connection_counts(asked: Option<usize>, lanes: usize) -> Vec<usize> {
    let lanes = lanes.min(1024);
    match asked {
        Some(n) => vec![n.max(1)],
        None if lanes > 0 && lanes != 16 => vec![16, lanes],
        None => vec![16],
    }
}

/// What ricochet's `/metrics` says of the delivery connections it opened.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ConnectionCounts {
    /// `ricochet_connections_opened_total` by its `reason` label, in the order listed.
    pub by_reason: Vec<(String, u64)>,
    /// `ricochet_lanes_idle_exits_total`.
    pub lanes_idle_exits: u64,
}

impl ConnectionCounts {
    /// Reads the two families from a Prometheus text exposition; `None` when ricochet
    /// does not export them.
    pub fn from_metrics(text: &str) -> Option<ConnectionCounts> {
        let mut out = ConnectionCounts::default();
        let mut seen = false;
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if let Some(labels) = series.strip_prefix("ricochet_connections_opened_total{") {
                if let Some(reason) = labels
                    .strip_prefix("reason=\"")
                    .and_then(|r| r.strip_suffix("\"}"))
                {
                    out.by_reason.push((reason.to_string(), v as u64));
                    seen = true;
                }
            } else if series == "ricochet_lanes_idle_exits_total" {
                out.lanes_idle_exits = v as u64;
            }
        }
        seen.then_some(out)
    }

    /// Connections opened on a new lane.
    pub fn first(&self) -> u64 {
        self.by_reason
            .iter()
            .filter(|(r, _)| r == "first")
            .map(|(_, n)| n)
            .sum()
    }

    /// Connections opened again for a lane that had one (closed, failed, stale, moved).
    pub fn reopened(&self) -> u64 {
        self.by_reason
            .iter()
            .filter(|(r, _)| r != "first")
            .map(|(_, n)| n)
            .sum()
    }
}

/// The value of an unlabelled series in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(' ')?;
        v.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// A one-shot HTTP/1.1 request to the admin API: (status, body).
pub fn admin_request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "not an HTTP response from {addr}: {:?}",
                text.lines().next()
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Polls `GET /health` every `poll` until `{"status":"ok"}`; returns the time since `t`
/// (the spawn). Gives up at once when `stop` is set (Ctrl-C).
fn wait_health(
    admin: SocketAddr,
    child: &mut ChildGuard,
    timeout: Duration,
    log: &Path,
    t: Instant,
    poll: Duration,
    stop: &AtomicBool,
) -> Result<Duration> {
    let mut last_err = String::new();
    while t.elapsed() < timeout {
        if stop.load(Ordering::Relaxed) {
            bail!(
                "interrupted while waiting for ricochet to become healthy (after {:.2}s)",
                t.elapsed().as_secs_f64()
            );
        }
        if let Some(st) = child.exited() {
            bail!(
                "ricochet exited before becoming healthy ({st}); {}",
                log_tail(log, 30)
            );
        }
        match admin_request(admin, "GET", "/health") {
            Ok((200, body)) if body.contains("ok") => return Ok(t.elapsed()),
            Ok((status, body)) => last_err = format!("{status} {body}"),
            Err(e) => last_err = e.to_string(),
        }
        std::thread::sleep(poll);
    }
    bail!(
        "ricochet did not answer GET http://{admin}/health with {{\"status\":\"ok\"}} within {timeout:?} (last: {last_err}); {}",
        log_tail(log, 30)
    )
}

/// What the restart probe got.
#[derive(Debug, Default)]
struct ProbeOutcome {
    /// Since the spawn, when the `ok`/`dup` ack arrived.
    after: Option<Duration>,
    attempts: u32,
    /// The final ack line, or the last problem.
    ack: String,
    /// `ok` with deliveries, or `dup` (an earlier attempt got in).
    accepted: bool,
    /// From an `ok` ack.
    deliveries: u64,
}

/// Reads one line (without the newline) into `buf`, until `deadline`.
fn read_ack_line(
    s: &mut std::os::unix::net::UnixStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> std::result::Result<(), String> {
    let mut tmp = [0u8; 512];
    while !buf.contains(&b'\n') {
        if Instant::now() >= deadline {
            return Err("no ack before the deadline".into());
        }
        match s.read(&mut tmp) {
            Ok(0) => return Err("the server closed the connection without an ack".into()),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("reading the ack: {e}")),
        }
    }
    let nl = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    buf.truncate(nl);
    Ok(())
}

/// Sends one event (`line()` formats it with a fresh stamp) on its own ingest connection
/// until it is acked `ok` or `dup`: connects every 2 ms while nothing listens, resends
/// 10 ms after an `err` ack or a lost connection, and gives up `timeout` after `since`
/// or when `give_up()` says so.
fn probe_ingest(
    socket: &Path,
    id: &str,
    line: &dyn Fn() -> Vec<u8>,
    since: Instant,
    timeout: Duration,
    give_up: &dyn Fn() -> bool,
) -> ProbeOutcome {
    use std::os::unix::net::UnixStream;
    let deadline = since + timeout;
    let mut out = ProbeOutcome::default();
    let mut conn: Option<UnixStream> = None;
    let mut buf = Vec::with_capacity(256);
    while Instant::now() < deadline && !give_up() {
        let s = match &mut conn {
            Some(s) => s,
            None => match UnixStream::connect(socket) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    conn.insert(s)
                }
                Err(e) => {
                    out.ack = format!("connecting to {}: {e}", socket.display());
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
            },
        };
        out.attempts += 1;
        buf.clear();
        let sent = s
            .write_all(&line())
            .map_err(|e| format!("writing the probe: {e}"))
            .and_then(|()| read_ack_line(s, &mut buf, deadline));
        if let Err(e) = sent {
            out.ack = e;
            conn = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let at = since.elapsed();
        out.ack = String::from_utf8_lossy(&buf).trim().to_string();
        match gen::parse_ack(&buf) {
            gen::Ack::Ok {
                id: got,
                deliveries,
            } if got == id.as_bytes() => {
                out.after = Some(at);
                out.accepted = deliveries > 0;
                out.deliveries = deliveries;
                return out;
            }
            gen::Ack::Dup { id: got } if got == id.as_bytes() => {
                out.after = Some(at);
                out.accepted = true;
                return out;
            }
            gen::Ack::Err => {}
            // Another id or an unknown line: start over on a fresh connection.
            _ => conn = None,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if out.ack.is_empty() {
        out.ack = "never sent (stopped)".into();
    }
    out
}

/// What [`restart_ricochet`] needs from the run.
struct RestartSetup<'a> {
    sc: &'a Scenario,
    ricochet: &'a Path,
    config: &'a Path,
    log: &'a Path,
    socket: &'a Path,
    admin: SocketAddr,
    tag: &'a str,
    /// The probe's `n`: above every generated id, so it is one more distinct event.
    probe_n: u64,
    timeout: Duration,
    stop: &'a AtomicBool,
}

/// `kill -9` the running ricochet, start it again with the same config (same data dir,
/// socket and admin port), and time, from the spawn, its first healthy `GET /health` and
/// (concurrently, on its own connection) the first `ok` ack of one probe event shaped
/// like the generator's. Replaces `child` with the new process.
fn restart_ricochet(
    child: &mut ChildGuard,
    r: &RestartSetup,
    backlog: u64,
) -> Result<RestartMetrics> {
    let killed_pid = child.pid();
    // Read before the kill: a reaped process has no /proc entry.
    let killed_cpu_s = procstat::cpu_seconds(killed_pid);
    let killed_peak_rss_mib = procstat::peak_rss_kib(killed_pid).map(|k| k as f64 / 1024.0);
    let how = child.kill9();
    eprintln!(
        "restart: kill -9 of ricochet pid {killed_pid} with {} accepted events undelivered ({how})",
        fmt_count(backlog)
    );
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(r.log) {
        let _ = writeln!(
            f,
            "--- ricochet-load: pid {killed_pid} {how}; starting again on the same data dir"
        );
    }
    let (new_child, spawned) = spawn_ricochet(r.ricochet, r.config, r.log)?;
    *child = new_child;
    let pid = child.pid();

    let ep = r.probe_n % r.sc.endpoints;
    let (ty, account) = (gen::endpoint_type(ep), gen::endpoint_account(ep));
    let id = format!("ld-{}-{}", r.tag, r.probe_n);
    let payload = r.sc.payload;
    let line = || {
        let mut buf = Vec::with_capacity(1024);
        crate::payload::write_event(
            &mut buf,
            payload,
            crate::payload::EventKey {
                ty: &ty,
                account: Some(&account),
            },
            r.tag,
            r.probe_n,
            crate::script::unix_micros(),
        );
        buf
    };
    let cancel = AtomicBool::new(false);
    let give_up = || cancel.load(Ordering::Relaxed) || r.stop.load(Ordering::Relaxed);
    let (health, probe) = std::thread::scope(|s| {
        let probe = s.spawn(|| probe_ingest(r.socket, &id, &line, spawned, r.timeout, &give_up));
        let health = wait_health(
            r.admin,
            child,
            r.timeout,
            r.log,
            spawned,
            Duration::from_millis(5),
            r.stop,
        );
        if health.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        (health, probe.join())
    });
    let health = health.context("after the kill -9 restart")?;
    let probe = probe.map_err(|_| anyhow!("the restart probe thread panicked"))?;
    eprintln!(
        "restart: ricochet pid {pid} healthy after {:.3}s, first ack after {} ({} probe attempt(s): {})",
        health.as_secs_f64(),
        probe
            .after
            .map_or("-".into(), |d| format!("{:.3}s", d.as_secs_f64())),
        probe.attempts,
        probe.ack
    );
    Ok(RestartMetrics {
        killed_pid,
        pid,
        backlog_at_kill: backlog,
        health_s: health.as_secs_f64(),
        first_ack_s: probe.after.map(|d| d.as_secs_f64()),
        probe_id: id,
        probe_type: ty,
        probe_attempts: probe.attempts,
        probe_ack: probe.ack,
        probe_accepted: probe.accepted,
        probe_deliveries: probe.deliveries,
        probe_delivered: false,
        killed_cpu_s,
        killed_peak_rss_mib,
        peak_rss_mib: None,
    })
}

/// Builds the per-second samples from counter deltas.
struct Sampler {
    started: Instant,
    last: Instant,
    prev_sent: u64,
    prev_ok: u64,
    prev_sink: SinkCounts,
    samples: Vec<Sample>,
    /// The latest sample's ack latency and delivery lag (count 0: none in it).
    last_ack: Percentiles,
    last_lag: Percentiles,
}

impl Sampler {
    fn new(started: Instant) -> Sampler {
        Sampler {
            started,
            last: started,
            prev_sent: 0,
            prev_ok: 0,
            prev_sink: SinkCounts::default(),
            samples: Vec::new(),
            last_ack: Percentiles::default(),
            last_lag: Percentiles::default(),
        }
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= Duration::from_secs(1)
    }

    fn take(&mut self, g: &GenShared, sink: Option<&Sink>) {
        let dt = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        let sent = g.sent.load(Ordering::Relaxed);
        let ok = g.ok.load(Ordering::Relaxed);
        let accepted = ok.saturating_sub(g.unrouted.load(Ordering::Relaxed));
        let ack = Percentiles::of(&g.ack_interval());
        let (c, lag) = match sink {
            Some(s) => (
                s.shared().counts(),
                Percentiles::of(&s.shared().lag_interval()),
            ),
            None => (SinkCounts::default(), Percentiles::default()),
        };
        let ms = |us: u64| us as f64 / 1e3;
        self.last_ack = ack;
        self.last_lag = lag;
        self.samples.push(Sample {
            t_s: self.started.elapsed().as_secs_f64(),
            span_s: dt,
            sent_per_s: (sent - self.prev_sent) as f64 / dt,
            accepted_per_s: (ok - self.prev_ok) as f64 / dt,
            requests_per_s: c.requests.saturating_sub(self.prev_sink.requests) as f64 / dt,
            deliveries_per_s: c.delivered.saturating_sub(self.prev_sink.delivered) as f64 / dt,
            ack_p50_ms: ms(ack.p50_us),
            ack_p99_ms: ms(ack.p99_us),
            ack_p999_ms: ms(ack.p999_us),
            lag_p50_ms: ms(lag.p50_us),
            lag_p99_ms: ms(lag.p99_us),
            lag_p999_ms: ms(lag.p999_us),
            pending: accepted.saturating_sub(c.delivered),
        });
        self.prev_sent = sent;
        self.prev_ok = ok;
        self.prev_sink = c;
    }
}

/// Progress on a terminal (indicatif), or a plain line every 5 s otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    fn new(len: u64, phase: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = if len > 0 {
                ProgressBar::new(len)
            } else {
                ProgressBar::no_length()
            };
            let template = if len > 0 {
                format!("{phase:>6} {{spinner}} [{{elapsed_precise}}] [{{bar:30.cyan/blue}}] {{human_pos}}/{{human_len}} {{msg}}")
            } else {
                format!("{phase:>6} {{spinner}} [{{elapsed_precise}}] {{human_pos}} {{msg}}")
            };
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            bar,
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, pos: u64, msg: String) {
        match &self.bar {
            Some(b) => {
                b.set_position(pos);
                b.set_message(msg);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                eprintln!("  {} {msg}", fmt_count(pos));
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// A rate of the latest sample for the progress line; `-` before the first.
fn rate_of(s: &Sampler, f: fn(&Sample) -> f64) -> String {
    s.samples
        .last()
        .map_or("-".into(), |x| format!("{:.0}", f(x)))
}

/// A percentile of the latest sample for the progress line; `-` when it had none.
fn pct_of(p: &Percentiles, f: fn(&Percentiles) -> u64) -> String {
    if p.count == 0 {
        "-".into()
    } else {
        stats::fmt_us(f(p))
    }
}

/// `count` per second over unix µs `from_us` → `to_us`; 0 for an empty window (nothing
/// happened after the start).
fn rate_over(count: u64, from_us: u64, to_us: u64) -> f64 {
    let secs = to_us.saturating_sub(from_us) as f64 / 1e6;
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// The best delivery rate over a whole sample (a second or a little more), `None` when
/// no sample spanned a full second (the last one, at the drain's end, is shorter).
fn best_full_second(samples: &[Sample]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.span_s >= 0.999)
        .map(|s| s.deliveries_per_s)
        .reduce(f64::max)
}

fn run_once(
    sc: &Scenario,
    a: &RunArgs,
    index: usize,
    scheme: Scheme,
    ricochet: &Path,
    stop: &Arc<AtomicBool>,
) -> Result<RunMetrics> {
    let tag = gen::new_run_tag();
    let dir =
        std::env::temp_dir().join(format!("ricochet-load-{}-{}-{tag}", sc.name, scheme.name()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut result = run_in(sc, a, index, scheme, ricochet, stop, &tag, &dir);
    let failed = match &result {
        Ok(m) => run_failed(m),
        Err(_) => true,
    };
    if a.keep || failed || stop.load(Ordering::Relaxed) {
        eprintln!("run files kept in {}", dir.display());
        if let Ok(m) = &mut result {
            m.run_dir = Some(dir.display().to_string());
        }
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// What `run` has told the generator during ingest, so each note is made once.
#[derive(Default)]
struct IngestWatch {
    interrupted: bool,
    exited: bool,
}

impl IngestWatch {
    /// Notes an interrupt (the generator shares `stop` and winds down by itself, with no
    /// shortfall), and when ricochet has exited (`exited` gives its status) aborts the
    /// generator: a connection that had not sent its share is then cut short (a
    /// failure) whether or not its writer noticed the closed socket first.
    fn check(
        &mut self,
        g: &Gen,
        stop: &AtomicBool,
        exited: impl FnOnce() -> Option<String>,
        notes: &mut Vec<String>,
    ) {
        if stop.load(Ordering::Relaxed) && !self.interrupted {
            self.interrupted = true;
            notes.push("interrupted during ingest".to_string());
        }
        if self.exited {
            return;
        }
        if let Some(st) = exited() {
            self.exited = true;
            g.abort();
            notes.push(format!("ricochet exited during ingest ({st})"));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    sc: &Scenario,
    a: &RunArgs,
    index: usize,
    scheme: Scheme,
    ricochet: &Path,
    stop: &Arc<AtomicBool>,
    tag: &str,
    dir: &Path,
) -> Result<RunMetrics> {
    let (data_dir, socket) = (dir.join("data"), dir.join("ingest.sock"));
    let (config, log) = (dir.join("ricochet.toml"), dir.join("ricochet.log"));
    let mut sink_cfg = SinkConfig::new("127.0.0.1:0".parse()?, sc.script.clone());
    sink_cfg.threads = sc.sink_threads;
    sink_cfg.latency = sc.latency;
    sink_cfg.reset = sc.reset;
    sink_cfg.slow_body = sc.slow_body;
    sink_cfg.endpoints = Some(sc.endpoints);
    if sc.max_rps > 0 {
        sink_cfg.rate = Some(RateLimit {
            max_rps: sc.max_rps,
            tolerance: sc.rate_tolerance,
        });
    }
    let mut notes = Vec::new();
    // Before anything of the run starts, so the probes see the machine alone.
    let machine = crate::probe::measure(dir)
        .map_err(|e| notes.push(format!("machine probe failed: {e}")))
        .ok();
    let ca_file = dir.join("sink-ca.pem");
    if scheme == Scheme::Https {
        let t = crate::tls::SinkTls::generate()?;
        std::fs::write(&ca_file, &t.ca_pem)
            .with_context(|| format!("writing {}", ca_file.display()))?;
        sink_cfg.tls = Some(t);
    }
    let (mut sink, sink_addr) = if sc.outage == Outage::Refuse {
        (None, reserve_port()?)
    } else {
        let s = Sink::start(sink_cfg.clone()).context("starting the sink")?;
        let addr = s.addr();
        (Some(s), addr)
    };
    if sc.outage == Outage::Unavailable {
        if let Some(s) = &sink {
            s.shared().set_down(true);
        }
    }
    let admin = reserve_port()?;
    let sink_base = match scheme {
        Scheme::Http => format!("http://{sink_addr}"),
        Scheme::Https => {
            let (host, note) = https_host();
            notes.extend(note);
            format!("https://{host}:{}", sink_addr.port())
        }
    };
    let text = sc.ricochet_config(
        &data_dir,
        &socket,
        admin,
        &sink_base,
        (scheme == Scheme::Https).then_some(ca_file.as_path()),
    )?;
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let (mut child, spawned) = spawn_ricochet(ricochet, &config, &log)?;
    let pid = child.pid();
    let startup = wait_health(
        admin,
        &mut child,
        a.startup_timeout,
        &log,
        spawned,
        Duration::from_millis(100),
        stop,
    )?;
    eprintln!(
        "ricochet pid {pid} healthy after {:.2}s (admin {admin}, sink {sink_base}, files {})",
        startup.as_secs_f64(),
        dir.display()
    );
    let load_cpu_before = procstat::self_cpu_seconds();
    // (deliveries, requests) the sink has counted so far.
    let sink_now = |sink: &Option<Sink>| {
        sink.as_ref().map_or((0, 0), |s| {
            let c = s.shared().counts();
            (c.delivered, c.requests)
        })
    };
    let (mark_start, sink_at_start) = (cost::Mark::take(Some(pid)), sink_now(&sink));

    // Ingest.
    let mut gcfg = GenConfig::new(Target::Unix(socket.clone()), tag.to_string());
    gcfg.rate = sc.rate;
    gcfg.events = sc.events;
    gcfg.duration = sc.duration;
    gcfg.types = gen::endpoint_types(sc.endpoints);
    gcfg.accounts = gen::endpoint_accounts(sc.endpoints);
    gcfg.payload = sc.payload;
    gcfg.connections = sc.connections;
    gcfg.window = sc.window;
    gcfg.linger = sc.linger;
    gcfg.ack_timeout = Duration::from_secs(15);
    gcfg.connect_timeout = Duration::from_secs(10);
    // The generator sees a real interrupt itself (no shortfall); ricochet exiting is an
    // abort (a shortfall for every connection that had not sent its share).
    let g = Gen::start(gcfg, stop.clone()).map_err(|e| anyhow!("{e:#}; {}", log_tail(&log, 20)))?;
    let gs = g.shared().clone();
    let mut sampler = Sampler::new(g.started());
    let planned = if sc.events > 0 {
        sc.events
    } else {
        (sc.rate * sc.duration.as_secs_f64()) as u64
    };
    let mut progress = Progress::new(planned, "ingest");
    let mut watch = IngestWatch::default();
    while !g.is_done() {
        std::thread::sleep(Duration::from_millis(100));
        watch.check(
            &g,
            stop,
            || child.exited().map(|st| st.to_string()),
            &mut notes,
        );
        if sampler.due() {
            sampler.take(&gs, sink.as_ref());
        }
        let delivered = sink.as_ref().map_or(0, |s| s.shared().counts().delivered);
        progress.update(
            gs.sent.load(Ordering::Relaxed),
            format!(
                "acked {} ({}/s) err {} delivered {} ack p99 {}",
                fmt_count(gs.acked.load(Ordering::Relaxed)),
                rate_of(&sampler, |s| s.accepted_per_s),
                gs.err.load(Ordering::Relaxed),
                fmt_count(delivered),
                pct_of(&sampler.last_ack, |p| p.p99_us)
            ),
        );
    }
    progress.finish();
    let gres = g.join();
    let (mark_ingest, sink_at_ingest_end) = (cost::Mark::take(Some(pid)), sink_now(&sink));
    notes.extend(gres.notes.iter().cloned());
    if let Some(s) = &gres.shortfall {
        notes.push(format!("ingest cut short (a failure): {s}"));
    }
    // The last ack, not now: a wait for missing acks is not drain time.
    let ingest_end_us = gres.started_unix_us + gres.elapsed.as_micros() as u64;
    // `ok` acks that routed to at least one endpoint: the events the sink should get.
    let gen_accepted = gres.ok - gres.unrouted;
    // Every generated id is below this (connection c sends c, c + k, c + 2k, ..).
    let id_bound = gres.sent.saturating_mul(sc.connections as u64) + sc.connections as u64;

    // Restart with the backlog in place (before any outage ends).
    let mut restart = None;
    if sc.restart {
        if stop.load(Ordering::Relaxed) {
            notes.push("restart skipped: interrupted".into());
        } else if let Some(st) = child.exited() {
            notes.push(format!("restart skipped: ricochet had exited ({st})"));
        } else {
            let delivered = sink.as_ref().map_or(0, |s| {
                // The probe is accounted for, but not part of the measured deliveries.
                s.shared().set_untimed(id_bound);
                s.shared().counts().delivered
            });
            let r = restart_ricochet(
                &mut child,
                &RestartSetup {
                    sc,
                    ricochet,
                    config: &config,
                    log: &log,
                    socket: &socket,
                    admin,
                    tag,
                    probe_n: id_bound,
                    timeout: a.startup_timeout,
                    stop,
                },
                gen_accepted.saturating_sub(delivered),
            )?;
            if let Some(t) = r.first_ack_s.filter(|&t| t > RESTART_TARGET_S) {
                notes.push(format!(
                    "restart: first ack after {t:.3}s (target: ready to accept within {RESTART_TARGET_S} s, not met)"
                ));
            }
            if r.first_ack_s.is_none() {
                notes.push(format!(
                    "restart: the probe {} was never acked ok within {:?} ({} attempts; last: {})",
                    r.probe_id, a.startup_timeout, r.probe_attempts, r.probe_ack
                ));
            } else if !r.probe_accepted {
                notes.push(format!(
                    "restart: the probe {} was acked without a delivery ({})",
                    r.probe_id, r.probe_ack
                ));
            }
            restart = Some(r);
        }
    }

    // End of the outage.
    match sc.outage {
        Outage::None => {}
        Outage::Unavailable => {
            if let Some(s) = &sink {
                s.shared().set_down(false);
            }
        }
        Outage::Refuse => {
            let mut cfg = sink_cfg.clone();
            cfg.listen = sink_addr;
            let s = Sink::start(cfg).context("starting the sink after the outage")?;
            if restart.is_some() {
                s.shared().set_untimed(id_bound);
            }
            sink = Some(s);
        }
    }
    let up_at = Instant::now();
    let up_unix_us = crate::script::unix_micros();
    // The drain's counters start here: the process that drains, the sink that answers.
    let (mark_up, sink_at_up) = (cost::Mark::take(Some(child.pid())), sink_now(&sink));
    // With a restart, the drain is timed from the sink coming up (not from the last ack,
    // which the restart follows).
    let drain_from_us = if restart.is_some() {
        up_unix_us
    } else {
        ingest_end_us
    };
    if sc.outage != Outage::None {
        eprintln!(
            "outage over after {:.2}s of ingest; draining",
            gres.elapsed.as_secs_f64()
        );
    }

    // Drain. An accepted probe is one more event to deliver.
    let probe = restart
        .as_ref()
        .filter(|r| r.probe_accepted)
        .map(|_| id_bound);
    let to_deliver = gen_accepted + u64::from(probe.is_some());
    let mut progress = Progress::new(to_deliver, "drain");
    let mut last_requests = u64::MAX;
    let mut idle_since = Instant::now();
    let drain_end = loop {
        let c = sink
            .as_ref()
            .map(|s| s.shared().counts())
            .unwrap_or_default();
        if c.delivered >= to_deliver {
            break "all accepted events delivered".to_string();
        }
        if c.requests != last_requests {
            last_requests = c.requests;
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= sc.drain_idle {
            break format!("no request for {:?}", sc.drain_idle);
        }
        if up_at.elapsed() >= sc.drain_timeout {
            break format!("drain timeout {:?}", sc.drain_timeout);
        }
        if stop.load(Ordering::Relaxed) {
            break "interrupted".to_string();
        }
        if let Some(st) = child.exited() {
            break format!("ricochet exited ({st})");
        }
        if sampler.due() {
            sampler.take(&gs, sink.as_ref());
        }
        progress.update(
            c.delivered,
            format!(
                "delivered of {} ({}/s) retries {} lag p99 {}",
                fmt_count(to_deliver),
                rate_of(&sampler, |s| s.deliveries_per_s),
                fmt_count(c.retries),
                pct_of(&sampler.last_lag, |p| p.p99_us)
            ),
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    progress.finish();
    sampler.take(&gs, sink.as_ref());
    let drained = drain_end.starts_with("all");
    // Deliveries go on until ricochet is stopped below: the note names both counts.
    let delivered_at_drain_end = sink.as_ref().map_or(0, |s| s.shared().counts().delivered);

    // ricochet's resources (both processes' CPU after a restart), then stop it.
    let pid = child.pid();
    let (mark_drain, sink_at_drain_end) = (cost::Mark::take(Some(pid)), sink_now(&sink));
    let mut cpu = procstat::cpu_seconds(pid);
    let mut hwm = procstat::peak_rss_kib(pid).map(|k| k as f64 / 1024.0);
    if let Some(r) = &mut restart {
        r.peak_rss_mib = hwm;
        cpu = cpu.zip(r.killed_cpu_s).map(|(a, b)| a + b);
        hwm = match (hwm, r.killed_peak_rss_mib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    // Every id had a 2xx at the sink, but ricochet may still hold deliveries whose 2xx
    // it did not read (a timeout, a reset): their resends are duplicates the receiver
    // gets. Waited for as the drain is (until none is pending, or no request came for
    // `drain_idle`), so that `duplicates` counts them; what is left is said.
    let pending_at_end = if drained {
        let requests = || sink.as_ref().map_or(0, |s| s.shared().counts().requests);
        let (mut last_requests, mut idle_since) = (requests(), Instant::now());
        loop {
            let pending = match admin_request(admin, "GET", "/metrics") {
                Ok((200, text)) => metric_value(&text, "ricochet_deliveries_pending"),
                _ => None,
            };
            let now = requests();
            if now != last_requests {
                (last_requests, idle_since) = (now, Instant::now());
            }
            if pending.is_none_or(|p| p == 0)
                || idle_since.elapsed() >= sc.drain_idle
                || up_at.elapsed() >= sc.drain_timeout
                || stop.load(Ordering::Relaxed)
                || child.exited().is_some()
            {
                break pending;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        None
    };
    if let Some(n) = pending_at_end.filter(|&n| n > 0) {
        notes.push(format!(
            "ricochet still had {n} deliveries pending when it was stopped, though the sink \
             had answered every id 2xx: attempts whose answer it did not read (timed out, \
             reset), whose resends would be duplicates not counted here"
        ));
    }
    // Its own count of the connections it opened, and why (the process running now).
    let ricochet_connections = match admin_request(admin, "GET", "/metrics") {
        Ok((200, text)) => ConnectionCounts::from_metrics(&text),
        _ => None,
    };
    if let Some(c) = &ricochet_connections {
        if c.reopened() > 0 {
            notes.push(format!(
                "ricochet reopened {} connections ({}) and closed {} idle lanes",
                c.reopened(),
                c.by_reason
                    .iter()
                    .filter(|(r, n)| r != "first" && *n > 0)
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.lanes_idle_exits
            ));
        }
    }
    let exit = child.terminate(Duration::from_secs(10));
    if !exit.starts_with("stopped") {
        notes.push(format!("ricochet {exit}"));
    }
    let load_cpu = match (load_cpu_before, procstat::self_cpu_seconds()) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };

    // Account for every accepted id.
    let sink = sink.ok_or_else(|| anyhow!("the sink never started"))?;
    let shared = sink.shared().clone();
    let ids = shared.ids.run(tag.as_bytes());
    let (mut lost, mut undelivered) = (0u64, 0u64);
    let mut counted = 0;
    for n in 0..id_bound {
        if counted == gen_accepted {
            break;
        }
        if gs.accepted.get(n) {
            counted += 1;
            if !ids.seen.get(n) {
                lost += 1;
            } else if !ids.delivered.get(n) {
                undelivered += 1;
            }
        }
    }
    if let Some(n) = probe {
        if !ids.seen.get(n) {
            lost += 1;
        } else if !ids.delivered.get(n) {
            undelivered += 1;
        }
    }
    let probe_delivered = probe.is_some_and(|n| ids.delivered.get(n));
    if let Some(r) = &mut restart {
        r.probe_delivered = probe_delivered;
    }
    let c = shared.counts();
    if !drained {
        notes.push(format!(
            "drain stopped ({drain_end}) with {} of {} events to deliver delivered; {} by the end of the run (ricochet delivers until it has stopped), as in \"delivered (distinct)\"",
            fmt_count(delivered_at_drain_end),
            fmt_count(to_deliver),
            fmt_count(c.delivered),
        ));
    }
    let lag = Percentiles::of(&shared.lag_total());
    // Both before the raw ceiling below, whose requests reach the same sink.
    let (last_us, last_request_us) = (shared.last_delivery_us(), shared.last_request_us());
    // The rates' common start: the generator's first write, or, where the sink was down
    // during ingest, the moment it came up (nothing was delivered before). Deliveries/s
    // runs from there to the last delivery, http requests/s to the last request (the
    // same instant when no request failed), counting only what came after the start.
    let (rates_from_us, before) = if sc.outage == Outage::None {
        (gres.started_unix_us, sink_at_start)
    } else {
        (up_unix_us, sink_at_up)
    };
    let timed_deliveries = c
        .delivered
        .saturating_sub(before.0)
        .saturating_sub(u64::from(probe_delivered));
    // First attempts: a scenario's throughput with its retries left out. Only where
    // the receiver was up throughout (an outage's first attempts are its 503s).
    let first_attempts_per_s = match shared.first_attempt_window_us() {
        (from, to) if to > from && sc.outage == Outage::None && c.retries > 0 => {
            let probe_seen = probe.is_some_and(|n| ids.seen.get(n));
            let n = c.distinct_ids.saturating_sub(probe_seen as u64);
            Some(rate_over(n, from, to))
        }
        _ => None,
    };

    if a.raw && scheme == Scheme::Https {
        notes.push("no raw ceiling for an HTTPS run: the raw client speaks plain HTTP".into());
    }
    // CPU per unit of work: ingest per accepted event; the drain (from the end of ingest,
    // or of the outage) per delivery, when every request in it was answered with a
    // delivery — a drain with failures in it is mostly waiting for their retries.
    let mut costs = cost::CostBreakdown {
        ingest: cost::PhaseCost::between(
            &mark_start,
            &mark_ingest,
            gres.ok,
            sink_at_ingest_end.0 - sink_at_start.0,
            sink_at_ingest_end.1 - sink_at_start.1,
        ),
        ..Default::default()
    };
    let drain_deliveries = sink_at_drain_end.0.saturating_sub(sink_at_up.0);
    if sink_at_drain_end.1.saturating_sub(sink_at_up.1) == drain_deliveries {
        costs.drain = cost::PhaseCost::between(
            &mark_up,
            &mark_drain,
            drain_deliveries,
            drain_deliveries,
            drain_deliveries,
        );
    }
    let mut raw_points = Vec::new();
    if a.raw && scheme == Scheme::Http && !stop.load(Ordering::Relaxed) {
        let lanes = ricochet_connections
            .as_ref()
            .map_or(0, |c| c.first() as usize);
        for conns in raw_connection_counts(a.raw_connections, lanes) {
            let before = cost::Mark::take(None);
            let r = match raw::run(&raw::RawConfig {
                addr: sink.addr(),
                path: "/e/0".into(),
                connections: conns,
                threads: 1,
                duration: a.raw_duration,
            }) {
                Ok(r) => r,
                Err(e) => {
                    notes.push(format!("raw ceiling at {conns} connections failed: {e:#}"));
                    continue;
                }
            };
            eprintln!("raw ceiling, {conns} connections: {}", r.summary());
            // The cost of the best measurement is the raw phase's.
            if raw_points
                .iter()
                .all(|p: &RawPoint| p.requests_per_s < r.requests_per_s)
            {
                costs.raw =
                    cost::PhaseCost::between(&before, &cost::Mark::take(None), r.requests, 0, 0);
            }
            raw_points.push(RawPoint {
                connections: conns,
                requests_per_s: r.requests_per_s,
            });
        }
    }
    let rate_check = shared.rate_counts();
    drop(sink);

    for line in panics_in_log(&log) {
        notes.push(format!("ricochet.log: {line}"));
    }
    if c.duplicates > 0 {
        notes.push(format!(
            "{} duplicate deliveries (2xx for an id already answered 2xx)",
            c.duplicates
        ));
    }
    if c.misrouted > 0 {
        notes.push(format!(
            "{} requests arrived on the wrong endpoint path",
            c.misrouted
        ));
    }
    if c.tls_errors > 0 {
        notes.push(format!(
            "{} TLS connections failed at the sink (handshake or record errors; see ricochet.log)",
            c.tls_errors
        ));
    }
    if let Some(r) = rate_check {
        if r.windows_over_limit > 0 {
            notes.push(format!(
                "rate check: {} arrivals on {} endpoints had more than {} (max_rps {} + tolerance {}) arrivals in the 1-s window ending at them; worst window {}{}",
                r.windows_over_limit,
                r.endpoints_over_limit,
                r.limit,
                r.max_rps,
                r.limit - r.max_rps,
                r.worst_window,
                if r.worst_saturated { " or more" } else { "" }
            ));
            notes.push(format!(
                "rate check: {} of those windows hold a request that opened a new connection (late by its setup); {} requests on {} endpoints were beyond a replayed max_rps bucket ({} of them within 1 s of a new connection)",
                r.windows_over_limit_new_conn,
                r.beyond_bucket,
                r.endpoints_beyond_bucket,
                r.beyond_bucket_new_conn
            ));
        }
        if r.unchecked > 0 {
            notes.push(format!(
                "rate check: {} requests on paths other than /e/<n> were not checked",
                r.unchecked
            ));
        }
    }
    if gres.unrouted > 0 {
        notes.push(format!(
            "{} events acked ok with 0 deliveries (routed to no enabled endpoint): in accepted, not expected at the sink",
            gres.unrouted
        ));
    }
    let all_expected = all_deliveries_expected(sc);
    let interrupted = stop.load(Ordering::Relaxed);
    notes.extend(accounting_notes(
        lost,
        undelivered,
        all_expected,
        interrupted,
    ));
    if gres.mismatched > 0 {
        notes.push(format!(
            "{} ok/dup acks named another event than the one at their position (acks lost, added or reordered)",
            gres.mismatched
        ));
    }
    Ok(RunMetrics {
        run: index,
        label: String::new(),
        run_tag: tag.to_string(),
        events_sent: gres.sent + u64::from(restart.as_ref().is_some_and(|r| r.probe_attempts > 0)),
        accepted: gres.ok + u64::from(probe.is_some()),
        ok_no_delivery: gres.unrouted,
        dup_acks: gres.dup,
        err_acks: gres.err,
        missing_acks: gres.missing,
        ack_mismatch: gres.mismatched,
        ingest_cut_short: gres.shortfall.clone(),
        ingest_s: gres.elapsed.as_secs_f64(),
        accepted_per_s: gres.ok as f64 / gres.elapsed.as_secs_f64().max(1e-9),
        deliveries_expected: gres.deliveries
            + restart
                .as_ref()
                .filter(|r| r.probe_accepted)
                .map_or(0, |r| r.probe_deliveries),
        delivered: c.delivered,
        requests: c.requests,
        deliveries_per_s: rate_over(timed_deliveries, rates_from_us, last_us),
        first_attempts_per_s,
        peak_deliveries_per_s: best_full_second(&sampler.samples),
        requests_per_s: rate_over(
            c.requests.saturating_sub(before.1),
            rates_from_us,
            last_request_us,
        ),
        ricochet_pending_at_end: pending_at_end,
        drain_s: (last_us > 0).then(|| last_us.saturating_sub(drain_from_us) as f64 / 1e6),
        drained,
        drain_end,
        ack: gres.ack,
        lag,
        duplicates: c.duplicates,
        retries: c.retries,
        lost,
        undelivered,
        misrouted: c.misrouted,
        all_deliveries_expected: all_expected,
        status_2xx: c.status_2xx,
        status_4xx: c.status_4xx,
        status_5xx: c.status_5xx,
        resets: c.resets,
        slow_bodies: c.slow_bodies,
        interrupted,
        run_dir: None,
        ricochet_cpu_s: cpu,
        ricochet_peak_rss_mib: hwm,
        ricochet_exit: exit,
        load_tool_cpu_s: load_cpu,
        machine,
        raw_points,
        sink_connections: c.connections,
        ricochet_connections,
        tls_handshakes: (scheme == Scheme::Https).then_some(c.tls_handshakes),
        rate_check,
        restart,
        cost: costs,
        notes,
        series: std::mem::take(&mut sampler.samples),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_counts_from_metrics() {
        let text = "# HELP ricochet_connections_opened_total x\n\
            # TYPE ricochet_connections_opened_total counter\n\
            ricochet_connections_opened_total{reason=\"first\"} 10000\n\
            ricochet_connections_opened_total{reason=\"peer_closed\"} 0\n\
            ricochet_connections_opened_total{reason=\"after_error\"} 7\n\
            ricochet_connections_opened_total{reason=\"stale\"} 2\n\
            ricochet_lanes_started_total 10000\n\
            ricochet_lanes_idle_exits_total 3\n";
        let c = ConnectionCounts::from_metrics(text).unwrap();
        assert_eq!(
            (c.first(), c.reopened(), c.lanes_idle_exits),
            (10_000, 9, 3)
        );
        assert_eq!(c.by_reason[2], ("after_error".to_string(), 7));
        assert_eq!(
            ConnectionCounts::from_metrics("ricochet_build_info 1\n"),
            None
        );
    }

    #[test]
    fn raw_ceiling_is_measured_at_16_and_at_ricochets_lane_count() {
        assert_eq!(raw_connection_counts(None, 256), vec![16, 256]);
        assert_eq!(raw_connection_counts(None, 16), vec![16]);
        assert_eq!(raw_connection_counts(None, 0), vec![16]);
        assert_eq!(raw_connection_counts(None, 10_000), vec![16, 1024]);
        assert_eq!(raw_connection_counts(Some(64), 256), vec![64]);
        assert_eq!(raw_connection_counts(Some(0), 256), vec![1]);
        let p = |connections, requests_per_s| RawPoint {
            connections,
            requests_per_s,
        };
        assert_eq!(
            RawPoint::best(&[p(16, 70e3), p(256, 100e3)]),
            Some(p(256, 100e3))
        );
        assert_eq!(RawPoint::best(&[]), None);
    }

    #[test]
    fn plot_paths() {
        let p = Path::new("/tmp/out.svg");
        assert_eq!(plot_path(p, 1, 1, ""), PathBuf::from("/tmp/out.svg"));
        assert_eq!(plot_path(p, 1, 3, ""), PathBuf::from("/tmp/out.svg"));
        assert_eq!(plot_path(p, 2, 3, ""), PathBuf::from("/tmp/out-2.svg"));
        assert_eq!(plot_path(p, 1, 1, "http"), PathBuf::from("/tmp/out.svg"));
        assert_eq!(
            plot_path(p, 1, 1, "https"),
            PathBuf::from("/tmp/out-https.svg")
        );
        assert_eq!(
            plot_path(p, 2, 2, "https"),
            PathBuf::from("/tmp/out-2-https.svg")
        );
    }

    #[test]
    fn compare_pairs_runs_by_number() {
        let m = |run, label: &str, dps, cpu| RunMetrics {
            run,
            label: label.into(),
            deliveries_per_s: dps,
            delivered: 1000,
            ricochet_cpu_s: Some(cpu),
            ..Default::default()
        };
        let runs = vec![
            m(1, "http", 100.0, 1.0),
            m(1, "https", 90.0, 1.5),
            m(2, "https", 60.0, 1.5),
            m(2, "http", 100.0, 1.0),
        ];
        let c = https_compare(&runs);
        assert_eq!(c.pairs.len(), 2);
        assert!((c.pairs[0].ratio - 0.9).abs() < 1e-9);
        assert!((c.pairs[1].ratio - 0.6).abs() < 1e-9);
        assert!((c.ratio.unwrap() - 0.75).abs() < 1e-9);
        assert_eq!(c.pairs[0].https_cpu_us_per_delivery, Some(1500.0));
        let t = c.text();
        assert!(t.contains("ratio 0.750") && t.contains("met)"), "{t}");
        assert!(https_compare(&runs[..1]).ratio.is_none());
    }

    #[test]
    fn rates_share_a_start() {
        // 5,000 events at 2,000/s from t = 1 s: the last delivery at 3.5 s. Without
        // failures the requests are the deliveries and end at the same moment, so both
        // rates come out the same.
        assert_eq!(rate_over(5_000, 1_000_000, 3_500_000), 2_000.0);
        // A first delivery 0.6 s late no longer shortens the window: still <= the rate.
        assert!(rate_over(5_000, 1_000_000, 3_500_100) <= 2_000.0);
        // Nothing after the start (or no delivery at all, last = 0): 0, not infinity.
        assert_eq!(rate_over(10, 5_000_000, 5_000_000), 0.0);
        assert_eq!(rate_over(0, 5_000_000, 0), 0.0);
    }

    #[test]
    fn best_second_needs_a_whole_sample() {
        let s = |span_s, deliveries_per_s| Sample {
            span_s,
            deliveries_per_s,
            ..Default::default()
        };
        // The short last sample (a burst over 0.2 s) is no 1-s window.
        let samples = [s(1.0, 900.0), s(1.08, 1_100.0), s(0.2, 5_000.0)];
        assert_eq!(best_full_second(&samples), Some(1_100.0));
        assert_eq!(best_full_second(&[s(0.4, 2_000.0)]), None);
        assert_eq!(best_full_second(&[]), None);
    }

    #[test]
    fn undelivered_fails_only_where_every_answer_is_a_2xx() {
        let sc = |script: &str, reset: f64| {
            let mut s = Scenario::parse("x", "t", "events = 10").unwrap();
            s.script = crate::script::Script::parse(script).unwrap();
            s.reset = reset;
            s
        };
        assert!(all_deliveries_expected(&sc("200", 0.0)));
        assert!(all_deliveries_expected(&sc("200:0.5,204:0.5", 0.0)));
        assert!(!all_deliveries_expected(&sc("200:0.8,500:0.2", 0.0)));
        assert!(!all_deliveries_expected(&sc("200", 0.01)));
        assert!(!all_deliveries_expected(&sc("404", 0.0)));
        let m = |undelivered, all_deliveries_expected, lost| RunMetrics {
            undelivered,
            all_deliveries_expected,
            lost,
            ..Default::default()
        };
        assert!(!run_failed(&m(0, true, 0)));
        assert!(run_failed(&m(3, true, 0)));
        assert!(!run_failed(&m(3, false, 0)));
        assert!(run_failed(&m(0, false, 1)));
        assert_eq!(exit_status(&[m(0, true, 0)], false), 0);
        assert_eq!(exit_status(&[m(3, true, 0)], false), 1);
        assert_eq!(exit_status(&[], false), 1);
        // Interrupted wins, whatever the runs found.
        assert_eq!(exit_status(&[m(0, true, 1)], true), EXIT_INTERRUPTED);
        assert_eq!(exit_status(&[], true), EXIT_INTERRUPTED);
    }

    #[test]
    fn an_interrupted_run_blames_the_interrupt_not_retries() {
        let notes = accounting_notes(5, 700, false, true);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("interrupted: "), "{notes:?}");
        assert!(notes[0].contains("5 accepted events") && notes[0].contains("700 not yet"));
        assert!(
            !notes[0].contains("expected with finite retries"),
            "{notes:?}"
        );
        assert!(accounting_notes(0, 0, false, true).is_empty());
        // Complete runs keep their notes.
        let notes = accounting_notes(1, 2, false, false);
        assert!(notes[0].contains("1 accepted events never reached the sink"));
        assert!(notes[1].contains("expected with finite retries"));
        assert!(accounting_notes(0, 2, true, false)[0].contains("(a failure)"));
        // An interrupted run pairs with nothing in --https-compare.
        let m = |run, label: &str, interrupted| RunMetrics {
            run,
            label: label.into(),
            deliveries_per_s: 100.0,
            interrupted,
            ..Default::default()
        };
        let c = https_compare(&[
            m(1, "http", false),
            m(1, "https", false),
            m(2, "https", true),
        ]);
        assert_eq!(c.pairs.len(), 1);
        let c = https_compare(&[m(2, "https", false), m(2, "http", true)]);
        assert!(c.pairs.is_empty() && c.ratio.is_none());
    }

    #[test]
    fn ingest_cut_short_fails_the_run() {
        let m = RunMetrics {
            all_deliveries_expected: true,
            ingest_cut_short: Some("sent 1,000 of 5,000 events".into()),
            ..Default::default()
        };
        assert!(run_failed(&m));
        assert_eq!(exit_status(&[m], false), 1);
    }

    /// While ingesting, ricochet exiting aborts the generator (a writer asleep in its
    /// linger, that has not seen the socket close, is cut short: a failure), and an
    /// interrupt stops it with no shortfall; each is noted once.
    #[test]
    fn ricochet_exiting_during_ingest_cuts_it_short_an_interrupt_does_not() {
        use std::io::{BufRead, BufReader, Write};
        for exits in [true, false] {
            let dir = std::env::temp_dir().join(format!("rl-watch-{}", gen::new_run_tag()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("ingest.sock");
            let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
            // Acks every line until the generator closes the connection.
            let server = std::thread::spawn(move || {
                let (s, _) = l.accept().unwrap();
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { return };
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    writeln!(w, "ok {} 1", v["id"].as_str().unwrap()).unwrap();
                }
            });
            let mut cfg = GenConfig::new(Target::Unix(path), "tw".into());
            cfg.events = 5_000;
            cfg.rate = 1_000.0;
            cfg.linger = Duration::from_millis(500);
            let stop = Arc::new(AtomicBool::new(false));
            let g = Gen::start(cfg, stop.clone()).unwrap();
            let (mut watch, mut notes) = (IngestWatch::default(), Vec::new());
            watch.check(&g, &stop, || None, &mut notes);
            assert!(notes.is_empty(), "{notes:?}");
            std::thread::sleep(Duration::from_millis(100));
            if !exits {
                stop.store(true, Ordering::Relaxed);
            }
            for _ in 0..2 {
                let status = exits.then(|| "signal: 9 (SIGKILL)".to_string());
                watch.check(&g, &stop, || status, &mut notes);
            }
            let res = g.join();
            server.join().unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            if exits {
                assert_eq!(
                    notes,
                    vec!["ricochet exited during ingest (signal: 9 (SIGKILL))".to_string()]
                );
                let s = res.shortfall.expect("a shortfall");
                assert!(s.contains("of 5,000 events"), "{s}");
            } else {
                assert_eq!(notes, vec!["interrupted during ingest".to_string()]);
                assert_eq!(res.shortfall, None, "{}", res.summary());
            }
        }
    }

    #[test]
    fn plot_paths_are_checked_before_the_run() {
        let dir = std::env::temp_dir().join(format!("rl-plotcheck-{}", gen::new_run_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let plot = dir.join("out.svg");
        assert_eq!(
            super::plot_paths(&plot, 2, false, true),
            vec![
                dir.join("out.svg"),
                dir.join("out-https.svg"),
                dir.join("out-2.svg"),
                dir.join("out-2-https.svg")
            ]
        );
        check_plot_paths(&plot, 2, false, true).unwrap();
        // The check leaves no files behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let err = check_plot_paths(&dir.join("no/such/dir/out.svg"), 1, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--plot: cannot write"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let e = resolve_ricochet(Some(Path::new("/nonexistent/ricochet"))).unwrap_err();
        assert!(e.to_string().contains("no such file"));
    }
}
