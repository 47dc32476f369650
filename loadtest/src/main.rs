//! `ricochet-load`: end-to-end load tests for ricochet.
//!
//! Layout (one file per concern):
//! - `main.rs`: CLI and wiring only.
//! - `sink.rs`: the scriptable HTTP/1.1 receiver (thread-per-core monoio, SO_REUSEPORT);
//!   `ids.rs`: which event ids it has seen/delivered; `http.rs`: framing;
//!   `ratecheck.rs`: per-endpoint one-second windows against `max_rps`;
//!   `tls.rs`: its HTTPS mode (throwaway CA, rustls over monoio).
//! - `gen.rs`: pipelined NDJSON writer + ack reader; `payload.rs`: the event lines.
//! - `raw.rs`: bare keep-alive client, the delivery ceiling without ricochet.
//! - `scenario.rs`: scenario files; `run.rs`: sink + ricochet + gen + drain, measured;
//!   `procstat.rs`: CPU and peak RSS from /proc; `cost.rs`: CPU per unit of work in
//!   each phase (ingest, drain, raw), by thread group; `report.rs`: table and JSON;
//!   `plot.rs`: SVG charts; `sweep.rs`: one scenario at several producer windows, and
//!   the latency–throughput curve they make.
//! - `fake.rs`: a tiny stand-in for `ricochet serve` used to test `run` itself.
//!
//! Data flow of `run`: gen --NDJSON--> ricochet --HTTP--> sink, with gen reading acks
//! and the sink stamping lag from the `sent_us` the generator put in each event.

// The options' doc comments are their `--help` text, read in a terminal: `<n>` and
// `[sink]` there are words, not HTML tags or links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod cost;
mod fake;
mod gen;
mod http;
mod ids;
mod payload;
mod plot;
mod probe;
mod procstat;
mod ratecheck;
mod raw;
mod report;
mod run;
mod scenario;
mod script;
mod sink;
mod stats;
mod sweep;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::script::{
    parse_duration, parse_positive, parse_positive_u64, parse_probability, Latency, Script,
};
use crate::stats::{fmt_count, Percentiles};

#[derive(Parser)]
#[command(
    name = "ricochet-load",
    version,
    about = "Load generator, sink and raw-ceiling client for ricochet (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Scriptable HTTP/1.1 receiver that counts deliveries, duplicates, missing ids and lag.
    #[command(
        after_help = "A delivery (first 2xx for an id) or a duplicate (a 2xx for an id already answered 2xx, as the receiver sees it: also when the sender never read the first, e.g. its attempt timed out) is counted, and its lag (arrival - sent_us) stamped, when the request arrives: before --latency and before the answer is written, so the lag leaves out the sink's own latency.\n\nMissing ids: per run tag of the generator's ids ld-<run>-<n>, the numbers below the highest n seen that never arrived (after a run ended by --duration rather than --events, up to connections - 1 of them at the top were never sent).\n\nExit status: 0 (also when stopped by Ctrl-C, its normal end without --duration); 1 when the --max-rps check found a 1-s window over the limit; 2 on errors (e.g. the port is in use)."
    )]
    Sink(SinkArgs),
    /// Stream events into ricochet's ingest socket and measure ack latency.
    #[command(
        after_help = "Exit status: 0; 1 when an event got an `err` ack or no ack, or fewer events were sent than asked (by --events, or before --duration ended) because the server closed the connection or stopped reading or acking; 130 when interrupted (SIGINT/SIGTERM); 2 on errors."
    )]
    Gen(GenArgs),
    /// Bare keep-alive HTTP client loop: the delivery ceiling without ricochet.
    Raw(RawArgs),
    /// Run a scenario end to end: sink + ricochet + gen, drained and measured.
    #[command(after_help = RUN_EXIT_STATUS)]
    Run(run::RunArgs),
    /// Run a scenario at several generator windows: ack latency against throughput.
    #[command(after_help = RUN_EXIT_STATUS)]
    Sweep(sweep::SweepArgs),
    /// Probe the machine as every `run` does at its start: fdatasync latency, a fixed CPU
    /// work and memory latency (compare before a benchmark; `machine:` in a run report).
    Machine(MachineArgs),
    /// Minimal stand-in for `ricochet serve`, only for testing `run` itself.
    #[command(hide = true, name = "fake-ricochet")]
    FakeRicochet(fake::FakeArgs),
}

/// The exit status `run` and `sweep` document in `--help`.
const RUN_EXIT_STATUS: &str = "Exit status:
  0    every run passed
  1    a run failed: it lost an accepted event (never seen by the sink); left one
       undelivered (seen, never answered 2xx) although the scenario's sink answers every
       request 2xx once up (a script with failing statuses or resets, and finite
       retries, leaves some undelivered by design: reported, not a failure); got `err`
       acks, missed acks or acks out of place; sent fewer events than asked because
       ricochet closed the ingest connection, stopped reading or acking, or exited; saw a misrouted
       delivery; had a 1-s window over the rate limit; or never got the probe acked
       after a restart
  2    an error (ricochet missing, dying at start, not becoming healthy, ...)
  130  interrupted (SIGINT/SIGTERM): the runs so far are reported, the interrupted one
       marked and left out of the median
A run's temp dir is kept when it failed (1, 2) or was interrupted, or with --keep.";

#[derive(Args)]
struct MachineArgs {
    /// Directory to probe fdatasync in (its filesystem is what counts; default: the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the probes as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Threads, each with its own runtime and SO_REUSEPORT listener (a port another
    /// process already listens on is refused).
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    threads: usize,
    /// Answers by weight, e.g. "200:0.8,500:0.2" (statuses 100..=599).
    #[arg(long, default_value = "200")]
    script: String,
    /// Delay before each answer (after the delivery is counted and its lag stamped):
    /// "0ms", "5ms" or "uniform:1ms-5ms". The delay runs on
    /// monoio's timer, which has 1-ms ticks: it rounds each deadline up to the next tick
    /// and sleeps whole milliseconds, so a delay d lasts d to d + 2 ms, about d + 1 ms on
    /// average ("5ms" answers after a median of about 6 ms).
    #[arg(long, default_value = "0ms")]
    latency: String,
    /// Share of requests answered by resetting the connection (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    reset: f64,
    /// Share of responses whose body trickles out over ~150 ms (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    slow_body: f64,
    /// Check that event n arrives on /e/<n % E>.
    #[arg(long)]
    endpoints: Option<u64>,
    /// Serve HTTPS (self-signed CA made at start, leaf for localhost and 127.0.0.1) and
    /// write the CA certificate (PEM) to this file.
    #[arg(long, value_name = "CA_PEM_OUT")]
    tls_ca: Option<PathBuf>,
    /// Check every endpoint /e/<n> (n < --endpoints) against this many requests/s: count
    /// one-second windows with more than max_rps + --rate-tolerance arrivals.
    #[arg(long, requires = "endpoints")]
    max_rps: Option<u32>,
    /// Extra arrivals allowed per one-second window for --max-rps (edge jitter).
    #[arg(long, default_value_t = 1)]
    rate_tolerance: u32,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

#[derive(Args)]
struct GenArgs {
    /// ricochet's Unix ingest socket.
    #[arg(long, conflicts_with = "connect", required_unless_present = "connect")]
    socket: Option<PathBuf>,
    /// ricochet's TCP ingest address (loopback only).
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Events per second, open loop; 0 = flat out. With a rate each event's stamp
    /// (`sent_us`, from which ack latency and the sink's delivery lag count) is its
    /// scheduled send time, so both include time the generator held the event.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Stop after this many events (0 = only --duration limits).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Spread events over types load.e0..load.e<E-1> and accounts acct-0..acct-<E-1>
    /// (event n: load.e<n % E>, acct-<n % E>; what `run` subscribes endpoint n to).
    #[arg(long, default_value_t = 1, value_parser = parse_positive_u64)]
    endpoints: u64,
    /// Explicit event types, comma separated (overrides --endpoints' types; events then
    /// carry no account unless --accounts is given).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Explicit accounts, comma separated: event n carries account n % (their count).
    /// Overrides --endpoints' accounts.
    #[arg(long, value_delimiter = ',')]
    accounts: Vec<String>,
    /// seed (action lifecycle with 5 items, ~760 bytes) or small.
    #[arg(long, default_value = "seed")]
    payload: String,
    /// Ingest connections, each with its own writer and reader thread.
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    connections: usize,
    /// Run tag in ids ld-<run>-<n> (default: random).
    #[arg(long)]
    run: Option<String>,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ack_timeout: Duration,
    /// Most events written but not yet acked, per connection (rounded up to a power of
    /// two); ack latency under flat-out load is about window / throughput.
    #[arg(long, default_value_t = 16384, value_parser = parse_positive)]
    window: usize,
    /// With --rate: the least time between a connection's writes, so what falls due
    /// meanwhile goes out in one write (Kafka's linger.ms); 0s sends each event when due.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    linger: Duration,
}

#[derive(Args)]
struct RawArgs {
    #[arg(long, default_value = "http://127.0.0.1:8089/e/0")]
    url: String,
    #[arg(long, default_value_t = 16, value_parser = parse_positive)]
    connections: usize,
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    threads: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
}

/// Set by the first SIGINT/SIGTERM (every loop checks it and winds down with a
/// report); a second one exits at once.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .context("installing a signal handler")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing a signal handler")?;
    }
    Ok(stop)
}

/// Raises the open-file limit to its hard maximum: the sink may hold one connection per
/// endpoint (10,000 in many-endpoints), and ricochet inherits the limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    raise_fd_limit();
    let result = match cli.cmd {
        Cmd::Sink(a) => cmd_sink(a),
        Cmd::Gen(a) => cmd_gen(a),
        Cmd::Raw(a) => cmd_raw(a),
        Cmd::Run(a) => run::cmd_run(a),
        Cmd::Sweep(a) => sweep::cmd_sweep(a),
        Cmd::Machine(a) => cmd_machine(a),
        Cmd::FakeRicochet(a) => fake::main(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ricochet-load: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn cmd_sink(a: SinkArgs) -> Result<i32> {
    let stop = stop_flag()?;
    let mut cfg = sink::SinkConfig::new(a.listen, Script::parse(&a.script)?);
    cfg.threads = a.threads;
    cfg.latency = Latency::parse(&a.latency)?;
    cfg.reset = a.reset;
    cfg.slow_body = a.slow_body;
    cfg.endpoints = a.endpoints;
    cfg.rate = a.max_rps.filter(|&r| r > 0).map(|max_rps| sink::RateLimit {
        max_rps,
        tolerance: a.rate_tolerance,
    });
    if let Some(path) = &a.tls_ca {
        let t = tls::SinkTls::generate()?;
        std::fs::write(path, &t.ca_pem).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("sink CA certificate written to {}", path.display());
        cfg.tls = Some(t);
    }
    let s = sink::Sink::start(cfg.clone())?;
    eprintln!(
        "sink listening on {}://{} ({} threads, {} driver, script {}, latency {}, reset {}, slow-body {})",
        if cfg.tls.is_some() { "https" } else { "http" },
        s.addr(),
        cfg.threads,
        stats::driver_name(),
        cfg.script,
        a.latency,
        a.reset,
        a.slow_body
    );
    let started = Instant::now();
    let mut prev = s.shared().counts();
    let mut tick = started;
    while !stop.load(Ordering::Relaxed) && a.duration.is_none_or(|d| started.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(50));
        if tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let dt = tick.elapsed().as_secs_f64();
        tick = Instant::now();
        let c = s.shared().counts();
        let lag = Percentiles::of(&s.shared().lag_interval());
        println!(
            "t={:>4.0}s  req/s {:>8.0}  2xx/s {:>8.0}  delivered {:>10}  dup {:>6}  retries {:>8}  conns {:>5}  lag {}",
            started.elapsed().as_secs_f64(),
            (c.requests - prev.requests) as f64 / dt,
            (c.status_2xx - prev.status_2xx) as f64 / dt,
            c.delivered,
            c.duplicates,
            c.retries,
            c.open_connections,
            lag.brief()
        );
        prev = c;
    }
    let lag = Percentiles::of(&s.shared().lag_total());
    let secs = started.elapsed().as_secs_f64();
    let s_rate = s.shared().rate_counts();
    let shared = s.shared().clone();
    let c = s.stop();
    let gaps = shared.ids.gaps();
    println!("--- sink summary ({secs:.1}s)");
    println!(
        "requests {} ({:.0}/s)  2xx {}  3xx {}  4xx {}  5xx {}  resets {}  slow {}  bad {}",
        fmt_count(c.requests),
        c.requests as f64 / secs.max(1e-9),
        c.status_2xx,
        c.status_3xx,
        c.status_4xx,
        c.status_5xx,
        c.resets,
        c.slow_bodies,
        c.bad_requests
    );
    println!(
        "distinct ids {}  delivered {}  duplicates {}  retries {}  misrouted {}  without id {}  connections {}",
        c.distinct_ids, c.delivered, c.duplicates, c.retries, c.misrouted, c.no_id, c.connections
    );
    if gaps.is_empty() {
        println!("missing ids -  (no generator ids ld-<run>-<n> seen)");
    } else {
        println!(
            "missing ids {}  (never seen, below the highest id seen per run; {})",
            gaps.iter().map(|g| g.missing).sum::<u64>(),
            gaps.iter()
                .map(|g| format!("run {}: {} of 0..={} missing", g.tag, g.missing, g.highest))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("delivery lag {}", lag.brief());
    if cfg.tls.is_some() {
        println!(
            "tls handshakes {}  tls errors {}",
            c.tls_handshakes, c.tls_errors
        );
    }
    if let Some(r) = s_rate {
        println!(
            "rate check (max_rps {}, limit {} per 1-s window): endpoints {}  arrivals {}  windows over limit {}  endpoints over limit {}  windows over max_rps {}  worst window {}{}  beyond the bucket {} on {} endpoints  (with a new connection: {} windows, {} beyond)",
            r.max_rps,
            r.limit,
            r.endpoints_checked,
            r.arrivals,
            r.windows_over_limit,
            r.endpoints_over_limit,
            r.windows_over_max_rps,
            r.worst_window,
            if r.worst_saturated { "+" } else { "" },
            r.beyond_bucket,
            r.endpoints_beyond_bucket,
            r.windows_over_limit_new_conn,
            r.beyond_bucket_new_conn
        );
        return Ok(i32::from(r.windows_over_limit > 0));
    }
    Ok(0)
}

fn cmd_gen(a: GenArgs) -> Result<i32> {
    let stop = stop_flag()?;
    let target = match (a.socket, a.connect) {
        (Some(p), _) => gen::Target::Unix(p),
        (None, Some(addr)) => gen::Target::Tcp(addr),
        (None, None) => anyhow::bail!("give --socket PATH or --connect ADDR"),
    };
    let run = a.run.unwrap_or_else(gen::new_run_tag);
    let mut cfg = gen::GenConfig::new(target, run);
    cfg.rate = a.rate;
    cfg.events = a.events;
    cfg.duration = a.duration;
    cfg.accounts = match (a.accounts.is_empty(), a.types.is_empty()) {
        (false, _) => a.accounts,
        (true, true) => gen::endpoint_accounts(a.endpoints),
        (true, false) => Vec::new(),
    };
    cfg.types = if a.types.is_empty() {
        gen::endpoint_types(a.endpoints)
    } else {
        a.types
    };
    cfg.payload = payload::Payload::parse(&a.payload)?;
    cfg.connections = a.connections;
    cfg.ack_timeout = a.ack_timeout;
    cfg.window = a.window;
    cfg.linger = a.linger;
    eprintln!(
        "gen -> {} run {} ({} events max, {:?} max, rate {}, {} connection(s), {} types, {} accounts, {} payload)",
        cfg.target,
        cfg.run,
        cfg.events,
        cfg.duration,
        if cfg.rate > 0.0 {
            format!("{}/s", cfg.rate)
        } else {
            "flat out".into()
        },
        cfg.connections,
        cfg.types.len(),
        cfg.accounts.len(),
        a.payload
    );
    let g = gen::Gen::start(cfg, stop.clone())?;
    let shared = g.shared().clone();
    let mut tick = Instant::now();
    let (mut prev_sent, mut prev_acked) = (0, 0);
    while !g.is_done() {
        std::thread::sleep(Duration::from_millis(50));
        if tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let dt = tick.elapsed().as_secs_f64();
        tick = Instant::now();
        let sent = shared.sent.load(Ordering::Relaxed);
        let acked = shared.acked.load(Ordering::Relaxed);
        let ack = Percentiles::of(&shared.ack_interval());
        println!(
            "t={:>4.0}s  sent/s {:>8.0}  acked/s {:>8.0}  ok {:>10}  dup {:>6}  err {:>6}  in flight {:>7}  ack {}",
            g.started().elapsed().as_secs_f64(),
            (sent - prev_sent) as f64 / dt,
            (acked - prev_acked) as f64 / dt,
            shared.ok.load(Ordering::Relaxed),
            shared.dup.load(Ordering::Relaxed),
            shared.err.load(Ordering::Relaxed),
            sent - acked,
            ack.brief()
        );
        (prev_sent, prev_acked) = (sent, acked);
    }
    drop(shared);
    let res = g.join();
    println!("--- gen summary");
    println!("{}", res.summary());
    for n in &res.notes {
        println!("  note: {n}");
    }
    if let Some(s) = &res.shortfall {
        eprintln!("ricochet-load: gen failed: {s}");
    }
    if stop.load(Ordering::Relaxed) {
        return Ok(run::EXIT_INTERRUPTED);
    }
    Ok(i32::from(res.failed()))
}

fn cmd_machine(a: MachineArgs) -> Result<i32> {
    let dir = a.dir.unwrap_or_else(std::env::temp_dir);
    let p = probe::measure(&dir).with_context(|| format!("probing {}", dir.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&p)?);
    } else {
        println!(
            "4-KiB append + fdatasync in {}: p50 {:.1}us  p99 {:.1}us\n\
             fixed CPU work: {:.2}ms\n\
             random load over 32 MiB: {:.1}ns",
            dir.display(),
            p.fdatasync_p50_us,
            p.fdatasync_p99_us,
            p.cpu_us / 1e3,
            p.mem_ns
        );
    }
    Ok(0)
}

fn cmd_raw(a: RawArgs) -> Result<i32> {
    let (addr, path) = raw::parse_url(&a.url)?;
    eprintln!(
        "raw -> http://{addr}{path}: {} connections on {} threads for {:?} ({} driver)",
        a.connections,
        a.threads,
        a.duration,
        stats::driver_name()
    );
    let res = raw::run(&raw::RawConfig {
        addr,
        path,
        connections: a.connections,
        threads: a.threads,
        duration: a.duration,
    })?;
    println!("{}", res.summary());
    Ok(i32::from(res.requests == 0))
}
