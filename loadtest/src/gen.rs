//! The generator: streams events into ricochet's ingest socket and reads the acks.
//!
//! Per connection one writer thread and one reader thread share a ring of send stamps.
//! The writer formats events into a reused buffer and writes them in large batches
//! (pipelined, never waiting for acks); ricochet answers every line in order, so the
//! k-th ack on a connection belongs to the k-th event written there and its latency is
//! `ack time - ring[k]`. Open loop: with `rate > 0` event `n` is due at `n / rate`
//! seconds and its stamp is that intended time, so a stalled server shows up as latency
//! (no coordinated omission). With `rate = 0` the writer goes flat out and the stamp is
//! the time the line was formatted. The ring also bounds how far the writer may run
//! ahead of the acks. With a `linger` (Kafka's `linger.ms`), a rate-limited writer waits
//! at least that long between writes and sends what fell due meanwhile in one write, as
//! a batching producer does; each event's latency still counts from its due time.
//!
//! Each writer says why it stopped ([`End`]): its share was sent (its events up to
//! `events`, or it was still writing when `duration` ended), it was told to stop
//! (Ctrl-C), or it was cut short: the server closed the connection, stopped reading or
//! stopped acking (even when `duration` ended while the writer waited on it), or the
//! harness said the server is gone ([`Gen::abort`]). A cut makes the result's
//! [`GenResult::shortfall`]: sending fewer events than asked is a failure, even when every
//! line written was acked. Only a stop is not one.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

use crate::http::parse_load_id;
use crate::ids::Bits;
use crate::payload::{write_event, EventKey, Payload};
use crate::script::unix_micros;
use crate::stats::{self, Hists, Percentiles};

const RELAXED: Ordering = Ordering::Relaxed;

/// Where ricochet ingests.
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub target: Target,
    /// Events per second over all connections; 0 = flat out.
    pub rate: f64,
    /// Stop after this many events (0 = only the duration limits).
    pub events: u64,
    pub duration: Duration,
    /// Event `n` gets type `types[n % types.len()]`.
    pub types: Vec<String>,
    /// Event `n` gets account `accounts[n % accounts.len()]`; none when empty.
    pub accounts: Vec<String>,
    pub payload: Payload,
    /// The `<run>` in ids `ld-<run>-<n>`.
    pub run: String,
    pub connections: usize,
    /// Give up when no ack arrives for this long while events are outstanding.
    pub ack_timeout: Duration,
    /// Keep retrying the first connect this long (the server may still be starting).
    pub connect_timeout: Duration,
    /// Most events in flight (written, not yet acked) per connection; a power of two.
    pub window: usize,
    /// With `rate > 0`: the least time between a connection's writes (zero: each event
    /// goes out as soon as it is due).
    pub linger: Duration,
}

impl GenConfig {
    pub fn new(target: Target, run: String) -> GenConfig {
        GenConfig {
            target,
            rate: 0.0,
            events: 100_000,
            duration: Duration::from_secs(10),
            types: vec![endpoint_type(0)],
            accounts: Vec::new(),
            payload: Payload::Seed,
            run,
            connections: 1,
            ack_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            window: 1 << 14,
            linger: Duration::ZERO,
        }
    }
}

/// The ring (most lines in flight per connection) for a configured `window`: at least
/// 2, rounded up to a power of two.
pub fn ring_size(window: usize) -> usize {
    window.max(2).next_power_of_two()
}

/// `load.e<n>`: the type `run` subscribes endpoint `n` to.
pub fn endpoint_type(n: u64) -> String {
    format!("load.e{n}")
}

/// `acct-<n>`: the account `run` filters endpoint `n` on.
pub fn endpoint_account(n: u64) -> String {
    format!("acct-{n}")
}

/// `load.e0` .. `load.e<E-1>`: the types `run` subscribes endpoint `n` to.
pub fn endpoint_types(endpoints: u64) -> Vec<String> {
    (0..endpoints.max(1)).map(endpoint_type).collect()
}

/// `acct-0` .. `acct-<E-1>`: the accounts `run` filters endpoint `n` on (event `n`
/// carries `acct-<n % E>`, the same index as its type).
pub fn endpoint_accounts(endpoints: u64) -> Vec<String> {
    (0..endpoints.max(1)).map(endpoint_account).collect()
}

/// The type and account of event `n` (see [`GenConfig::types`], [`GenConfig::accounts`]).
pub fn event_key<'a>(types: &'a [String], accounts: &'a [String], n: u64) -> EventKey<'a> {
    let pick =
        |v: &[String]| -> Option<usize> { (!v.is_empty()).then(|| (n % v.len() as u64) as usize) };
    EventKey {
        ty: pick(types).map_or("", |i| types[i].as_str()),
        account: pick(accounts).map(|i| accounts[i].as_str()),
    }
}

/// A short run tag for ids: 8 hex digits from the clock and the pid.
pub fn new_run_tag() -> String {
    let x = unix_micros() ^ (u64::from(std::process::id()) << 40);
    format!(
        "{:08x}",
        (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
    )
}

/// Counters the writers and readers update and the printers read.
pub struct GenShared {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub ok: AtomicU64,
    pub dup: AtomicU64,
    pub err: AtomicU64,
    /// Sum of `<deliveries>` over `ok` acks.
    pub deliveries: AtomicU64,
    /// `ok` acks with zero deliveries (routed nowhere).
    pub unrouted: AtomicU64,
    /// `ok`/`dup` acks whose id is not the one expected at that position.
    pub mismatched: AtomicU64,
    /// Events `n` acked `ok` with at least one delivery.
    pub accepted: Bits,
    /// µs since start of the latest ack.
    last_ack_us: AtomicU64,
    lat: Vec<Mutex<Hists>>,
    /// I/O problems and missing acks (a few per connection at most).
    problems: Mutex<Vec<String>>,
    /// The first `err` ack lines.
    err_samples: Mutex<Vec<String>>,
    readers_done: AtomicUsize,
    /// Connections whose writer ended [`End::Cut`].
    cut_short: AtomicUsize,
    /// The earliest `at` (µs since start) of those cuts; `u64::MAX` while none.
    first_cut_us: AtomicU64,
    /// Set by [`Gen::abort`]: the server is gone, stop writing.
    aborted: AtomicBool,
}

impl GenShared {
    /// Ack latency (µs) since the previous call.
    pub fn ack_interval(&self) -> Histogram<u64> {
        stats::take_interval(&self.lat)
    }

    fn note(&self, msg: String) {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
    }

    fn sample_err(&self, msg: String) {
        let mut s = self.err_samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < 8 {
            s.push(msg);
        }
    }
}

/// The generator's final account.
#[derive(Debug, Clone)]
pub struct GenResult {
    pub sent: u64,
    pub ok: u64,
    pub dup: u64,
    pub err: u64,
    pub deliveries: u64,
    pub unrouted: u64,
    pub mismatched: u64,
    pub missing: u64,
    /// From the first write to the last ack.
    pub elapsed: Duration,
    pub ack: Percentiles,
    /// I/O problems, then the first `err` lines.
    pub notes: Vec<String>,
    /// Unix µs of the start (so `started_unix_us + elapsed` is the last ack).
    pub started_unix_us: u64,
    /// Fewer events sent than asked (by `events`, or before `duration` ended) because a
    /// connection was cut short (the server closed it, stopped reading or stopped
    /// acking, or [`Gen::abort`]): how many were sent of how many. None after a stop
    /// (Ctrl-C).
    pub shortfall: Option<String>,
}

impl GenResult {
    /// An `err` ack, a missing ack, or fewer events sent than asked.
    pub fn failed(&self) -> bool {
        self.err > 0 || self.missing > 0 || self.shortfall.is_some()
    }

    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut s = format!(
            "sent {} ok {} dup {} err {} in {:.2}s ({:.0} accepted/s); ack {}",
            self.sent,
            self.ok,
            self.dup,
            self.err,
            secs,
            self.ok as f64 / secs,
            self.ack.brief()
        );
        if self.missing > 0 {
            s += &format!("; {} acks missing", self.missing);
        }
        if self.mismatched > 0 {
            s += &format!("; {} acks out of order", self.mismatched);
        }
        if self.unrouted > 0 {
            s += &format!("; {} accepted with 0 deliveries", self.unrouted);
        }
        s
    }
}

/// Per connection: stamps of events in flight and how far each side got.
struct Conn {
    ring: Box<[AtomicU64]>,
    written: AtomicU64,
    acked: AtomicU64,
    /// µs since start of the writer's last successful write (0 before the first).
    last_write_us: AtomicU64,
    writer_done: AtomicBool,
    reader_done: AtomicBool,
}

/// A running generator.
pub struct Gen {
    shared: Arc<GenShared>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
    started_unix_us: u64,
    connections: usize,
    /// The configured `events` and `duration`, for the shortfall message.
    events: u64,
    duration: Duration,
}

type Halves = (Box<dyn Read + Send>, Box<dyn Write + Send>);

fn connect_once(target: &Target) -> std::io::Result<Halves> {
    match target {
        Target::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            let w = s.try_clone()?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            w.set_write_timeout(Some(Duration::from_millis(200)))?;
            Ok((Box::new(s), Box::new(w)))
        }
        Target::Tcp(addr) => {
            let s = std::net::TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            let w = s.try_clone()?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            w.set_write_timeout(Some(Duration::from_millis(200)))?;
            Ok((Box::new(s), Box::new(w)))
        }
    }
}

fn connect(target: &Target, timeout: Duration) -> Result<Halves> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect_once(target) {
            Ok(h) => return Ok(h),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {target}")),
        }
    }
}

impl Gen {
    /// Connects every connection, then starts the writers and readers.
    pub fn start(cfg: GenConfig, stop: Arc<AtomicBool>) -> Result<Gen> {
        if cfg.types.is_empty() {
            bail!("no event types");
        }
        if let Target::Tcp(a) = &cfg.target {
            if !a.ip().is_loopback() {
                bail!("refusing to send load to {a}: only loopback targets are allowed");
            }
        }
        let k = cfg.connections.max(1);
        let mut halves = Vec::with_capacity(k);
        for _ in 0..k {
            halves.push(connect(&cfg.target, cfg.connect_timeout)?);
        }
        let shared = Arc::new(GenShared {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            dup: AtomicU64::new(0),
            err: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            mismatched: AtomicU64::new(0),
            accepted: Bits::default(),
            last_ack_us: AtomicU64::new(0),
            lat: (0..k).map(|_| Mutex::default()).collect(),
            problems: Mutex::default(),
            err_samples: Mutex::default(),
            readers_done: AtomicUsize::new(0),
            cut_short: AtomicUsize::new(0),
            first_cut_us: AtomicU64::new(u64::MAX),
            aborted: AtomicBool::new(false),
        });
        let cfg = Arc::new(cfg);
        let window = ring_size(cfg.window);
        let started = Instant::now();
        let t0_us = unix_micros();
        let mut threads = Vec::with_capacity(2 * k);
        for (c, (r, w)) in halves.into_iter().enumerate() {
            let conn = Arc::new(Conn {
                ring: (0..window).map(|_| AtomicU64::new(0)).collect(),
                written: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                last_write_us: AtomicU64::new(0),
                writer_done: AtomicBool::new(false),
                reader_done: AtomicBool::new(false),
            });
            let writer = Writer {
                c: c as u64,
                k: k as u64,
                cfg: cfg.clone(),
                shared: shared.clone(),
                conn: conn.clone(),
                stop: stop.clone(),
                started,
                t0_us,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("gen-writer-{c}"))
                    .spawn(move || writer.run(w))?,
            );
            let reader = Reader {
                c: c as u64,
                k: k as u64,
                cfg: cfg.clone(),
                shared: shared.clone(),
                conn,
                started,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("gen-reader-{c}"))
                    .spawn(move || reader.run(r))?,
            );
        }
        Ok(Gen {
            shared,
            threads,
            started,
            started_unix_us: t0_us,
            connections: k,
            events: cfg.events,
            duration: cfg.duration,
        })
    }

    pub fn shared(&self) -> &Arc<GenShared> {
        &self.shared
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Every connection has written its events and heard every ack (or given up).
    pub fn is_done(&self) -> bool {
        self.shared.readers_done.load(RELAXED) >= self.connections
    }

    /// The server is gone (its process exited): stop writing. Unlike a stop (Ctrl-C), a
    /// connection that had not sent its share by then is cut short, as when the server
    /// closes it, whichever the writer notices first. The readers still take the acks
    /// already on the way (until the connection closes or the ack timeout).
    pub fn abort(&self) {
        self.shared.aborted.store(true, RELAXED);
    }

    pub fn join(self) -> GenResult {
        for t in self.threads {
            let _ = t.join();
        }
        let s = &self.shared;
        let last = s.last_ack_us.load(RELAXED);
        let shortfall = shortfall(
            s.sent.load(RELAXED),
            self.events,
            self.duration,
            s.cut_short.load(RELAXED),
            Duration::from_micros(s.first_cut_us.load(RELAXED)),
            self.connections,
        );
        GenResult {
            sent: s.sent.load(RELAXED),
            ok: s.ok.load(RELAXED),
            dup: s.dup.load(RELAXED),
            err: s.err.load(RELAXED),
            deliveries: s.deliveries.load(RELAXED),
            unrouted: s.unrouted.load(RELAXED),
            mismatched: s.mismatched.load(RELAXED),
            // Acks are counted per line, so this also covers lines a server dropped.
            missing: s.sent.load(RELAXED).saturating_sub(s.acked.load(RELAXED)),
            elapsed: if last > 0 {
                Duration::from_micros(last)
            } else {
                self.started.elapsed()
            },
            ack: Percentiles::of(&stats::merge_total(&s.lat)),
            notes: {
                let mut n = s.problems.lock().unwrap_or_else(|e| e.into_inner()).clone();
                n.extend(
                    s.err_samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .cloned(),
                );
                n
            },
            started_unix_us: self.started_unix_us,
            shortfall,
        }
    }
}

/// The message for `cut` of `connections` connections cut short, the first of them
/// having last written at `first_cut`: `sent` of `events` (or, with no event count,
/// when writing stopped of `duration`).
fn shortfall(
    sent: u64,
    events: u64,
    duration: Duration,
    cut: usize,
    first_cut: Duration,
    connections: usize,
) -> Option<String> {
    if cut == 0 {
        return None;
    }
    let sent_of = if events > 0 {
        format!(
            "sent {} of {} events",
            stats::fmt_count(sent),
            stats::fmt_count(events)
        )
    } else {
        format!(
            "sent {} events, stopping after {:.2}s of the {duration:?} asked",
            stats::fmt_count(sent),
            first_cut.as_secs_f64()
        )
    };
    Some(format!(
        "{sent_of}: {cut} of {connections} connection(s) stopped sending early because the server closed the connection, stopped reading or acking, or is gone (see the notes)"
    ))
}

struct Writer {
    c: u64,
    k: u64,
    cfg: Arc<GenConfig>,
    shared: Arc<GenShared>,
    conn: Arc<Conn>,
    stop: Arc<AtomicBool>,
    started: Instant,
    t0_us: u64,
}

const BATCH: usize = 64 << 10;

/// Why a connection's writer stopped.
#[derive(Debug)]
enum End {
    /// It wrote every event of its share (`events`).
    Events,
    /// It was still writing when `duration` ended.
    Duration,
    /// Told to stop (Ctrl-C): not a shortfall.
    Stopped,
    /// Cut short: the server closed the connection, stopped reading or acking (the
    /// reader gave up), or [`Gen::abort`]. `at`: its last successful write, since the
    /// start; `why` goes to the notes.
    Cut { at: Duration, why: String },
}

impl Writer {
    fn run(self, mut w: Box<dyn Write + Send>) {
        if let End::Cut { at, why } = self.write_all_events(&mut *w) {
            self.shared.note(why);
            self.shared.cut_short.fetch_add(1, RELAXED);
            self.shared
                .first_cut_us
                .fetch_min(at.as_micros() as u64, RELAXED);
        }
        self.conn.writer_done.store(true, Ordering::Release);
    }

    /// A cut now, for `why`.
    fn cut(&self, why: String) -> End {
        End::Cut {
            at: Duration::from_micros(self.conn.last_write_us.load(RELAXED)),
            why: format!(
                "connection {}: {why}, having written {} events",
                self.c,
                stats::fmt_count(self.conn.written.load(RELAXED))
            ),
        }
    }

    /// Whether to stop writing before the share is sent: told to (Ctrl-C, checked
    /// first: a stop is never a cut), aborted, or the reader gave up.
    fn halted(&self) -> Option<End> {
        if self.stop.load(RELAXED) {
            Some(End::Stopped)
        } else if self.shared.aborted.load(RELAXED) {
            Some(self.cut("aborted: the server is gone".into()))
        } else if self.conn.reader_done.load(RELAXED) {
            Some(self.cut(
                "stopped writing: the server closed the connection or stopped reading or acking"
                    .into(),
            ))
        } else {
            None
        }
    }

    /// Writes `buf` (retrying on the write timeout so a stop, an abort or a reader that
    /// gave up is noticed), then publishes the count of events written.
    fn flush(&self, w: &mut dyn Write, buf: &mut Vec<u8>, j: u64) -> Result<(), End> {
        let mut at = 0;
        while at < buf.len() {
            match w.write(&buf[at..]) {
                Ok(0) => return Err(self.cut("ingest connection closed while writing".into())),
                Ok(n) => {
                    at += n;
                    self.conn
                        .last_write_us
                        .store(self.started.elapsed().as_micros() as u64, RELAXED);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    // The server is not reading. Keep trying unless told to stop,
                    // aborted, or the reader has given up on it (no ack for the ack
                    // timeout).
                    if let Some(end) = self.halted() {
                        return Err(end);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.cut(format!("writing events: {e}"))),
            }
        }
        buf.clear();
        let before = self.conn.written.swap(j, Ordering::Release);
        self.shared.sent.fetch_add(j - before, RELAXED);
        Ok(())
    }

    /// Writes this connection's share and says why it stopped: decided where it
    /// stopped, never from the clock afterwards.
    fn write_all_events(&self, w: &mut dyn Write) -> End {
        match self.write_events(w) {
            Ok(end) | Err(end) => end,
        }
    }

    fn write_events(&self, w: &mut dyn Write) -> Result<End, End> {
        let cfg = &*self.cfg;
        let mask = self.conn.ring.len() as u64 - 1;
        let window = self.conn.ring.len() as u64;
        let mut buf = Vec::with_capacity(BATCH + 4096);
        let mut j: u64 = 0;
        loop {
            let n = self.c + j * self.k;
            let end = if cfg.events > 0 && n >= cfg.events {
                Some(End::Events)
            } else if self.started.elapsed() >= cfg.duration {
                Some(End::Duration)
            } else {
                self.halted()
            };
            if let Some(end) = end {
                // What is formatted goes out too; failing to send it cuts a share that
                // was otherwise complete.
                let flushed = self.flush(w, &mut buf, j);
                return match (end, flushed) {
                    (End::Events | End::Duration, Err(e)) => Err(e),
                    (end, _) => Ok(end),
                };
            }
            if cfg.rate > 0.0 {
                let due = n as f64 / cfg.rate;
                let now = self.started.elapsed().as_secs_f64();
                if now < due {
                    self.flush(w, &mut buf, j)?;
                    // Until it is due (looking again after 2 ms at most), or the linger.
                    let wait = (due - now).min(0.002).max(cfg.linger.as_secs_f64());
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    continue;
                }
            }
            if j - self.conn.acked.load(Ordering::Acquire) >= window {
                self.flush(w, &mut buf, j)?;
                // Waiting on the server's acks: one that never comes cuts the share
                // short, even if `duration` ends meanwhile.
                while j - self.conn.acked.load(Ordering::Acquire) >= window {
                    if let Some(end) = self.halted() {
                        return Err(end);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            let stamp = if cfg.rate > 0.0 {
                self.t0_us + (n as f64 * 1e6 / cfg.rate) as u64
            } else {
                unix_micros()
            };
            self.conn.ring[(j & mask) as usize].store(stamp, RELAXED);
            let key = event_key(&cfg.types, &cfg.accounts, n);
            write_event(&mut buf, cfg.payload, key, &cfg.run, n, stamp);
            j += 1;
            if buf.len() >= BATCH {
                self.flush(w, &mut buf, j)?;
            }
        }
    }
}

struct Reader {
    c: u64,
    k: u64,
    cfg: Arc<GenConfig>,
    shared: Arc<GenShared>,
    conn: Arc<Conn>,
    started: Instant,
}

/// One parsed ack line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack<'a> {
    Ok { id: &'a [u8], deliveries: u64 },
    Dup { id: &'a [u8] },
    Err,
    Unknown,
}

pub fn parse_ack(line: &[u8]) -> Ack<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    match parts.next() {
        Some(b"ok") => match (parts.next(), parts.next()) {
            (Some(id), Some(d)) => match crate::http::parse_digits(d) {
                Some(deliveries) => Ack::Ok { id, deliveries },
                None => Ack::Unknown,
            },
            _ => Ack::Unknown,
        },
        Some(b"dup") => match parts.next() {
            Some(id) => Ack::Dup { id },
            None => Ack::Unknown,
        },
        Some(b"err") => Ack::Err,
        _ => Ack::Unknown,
    }
}

impl Reader {
    fn run(self, mut r: Box<dyn Read + Send>) {
        if let Err(msg) = self.read_acks(&mut *r) {
            self.shared.note(msg);
        }
        self.conn.reader_done.store(true, RELAXED);
        self.shared.readers_done.fetch_add(1, RELAXED);
    }

    fn read_acks(&self, r: &mut dyn Read) -> Result<(), String> {
        let cfg = &*self.cfg;
        let mask = self.conn.ring.len() as u64 - 1;
        let window = self.conn.ring.len() as u64;
        let mut buf: Vec<u8> = vec![0; 256 << 10];
        let (mut start, mut end) = (0usize, 0usize);
        let mut k: u64 = 0;
        let mut last_progress = Instant::now();
        let mut lats: Vec<u64> = Vec::with_capacity(8192);
        let run = cfg.run.as_bytes();
        loop {
            let done = self.conn.writer_done.load(Ordering::Acquire);
            let written = self.conn.written.load(Ordering::Acquire);
            if k >= written {
                if done {
                    return Ok(());
                }
                // Nothing outstanding: silence is not a stall.
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= cfg.ack_timeout {
                return Err(format!(
                    "connection {}: no ack for {:?} with {} events outstanding; giving up",
                    self.c,
                    cfg.ack_timeout,
                    written - k
                ));
            }
            if start > 0 && start == end {
                (start, end) = (0, 0);
            } else if end == buf.len() {
                buf.copy_within(start..end, 0);
                (start, end) = (0, end - start);
                if end == buf.len() {
                    return Err("an ack line longer than 256 KiB".into());
                }
            }
            let got = match r.read(&mut buf[end..]) {
                Ok(0) => {
                    return Err(format!(
                        "connection {}: server closed the connection after {k} acks",
                        self.c
                    ));
                }
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(format!("connection {}: reading acks: {e}", self.c)),
            };
            end += got;
            let now = unix_micros();
            let (mut ok, mut dup, mut err, mut deliveries, mut unrouted, mut mismatched) =
                (0, 0, 0, 0, 0, 0);
            while let Some(nl) = buf[start..end].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + nl];
                start += nl + 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                // The position says which event an ack is for; the id in an ok/dup
                // ack says so too and wins, so a server that drops or adds ack lines
                // shifts only the `mismatched` count, never the accounting.
                let pos_n = self.c + k * self.k;
                let ack = parse_ack(line);
                let id_n = match ack {
                    Ack::Ok { id, .. } | Ack::Dup { id } => parse_load_id(id)
                        .filter(|(r, n)| *r == run && *n >= self.c && (n - self.c) % self.k == 0)
                        .map(|(_, n)| n),
                    Ack::Err | Ack::Unknown => None,
                };
                if matches!(ack, Ack::Ok { .. } | Ack::Dup { .. }) && id_n != Some(pos_n) {
                    mismatched += 1;
                }
                let n = id_n.unwrap_or(pos_n);
                // Its stamp, if still in the ring (else the positional one).
                let j = (n - self.c) / self.k;
                let j = if j.abs_diff(k) < window / 2 { j } else { k };
                let stamp = self.conn.ring[(j & mask) as usize].load(RELAXED);
                lats.push(now.saturating_sub(stamp));
                k += 1;
                match ack {
                    Ack::Ok { deliveries: d, .. } => {
                        ok += 1;
                        deliveries += d;
                        if d > 0 {
                            self.shared.accepted.set(n);
                        } else {
                            unrouted += 1;
                        }
                    }
                    Ack::Dup { .. } => dup += 1,
                    Ack::Err => {
                        err += 1;
                        self.shared.sample_err(format!(
                            "ack {k} (event ld-{}-{n}?): {}",
                            cfg.run,
                            String::from_utf8_lossy(line)
                        ));
                    }
                    Ack::Unknown => {
                        err += 1;
                        self.shared.sample_err(format!(
                            "ack {k}: unexpected line {:?}",
                            String::from_utf8_lossy(line)
                        ));
                    }
                }
            }
            if !lats.is_empty() {
                let mut h = self.shared.lat[self.c as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for &l in &lats {
                    h.record(l);
                }
                drop(h);
                let acked = lats.len() as u64;
                lats.clear();
                last_progress = Instant::now();
                self.conn.acked.store(k, Ordering::Release);
                let s = &self.shared;
                s.acked.fetch_add(acked, RELAXED);
                s.ok.fetch_add(ok, RELAXED);
                s.dup.fetch_add(dup, RELAXED);
                s.err.fetch_add(err, RELAXED);
                s.deliveries.fetch_add(deliveries, RELAXED);
                s.unrouted.fetch_add(unrouted, RELAXED);
                s.mismatched.fetch_add(mismatched, RELAXED);
                s.last_ack_us
                    .fetch_max(self.started.elapsed().as_micros() as u64, RELAXED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    #[test]
    fn events_spread_types_and_accounts_alike() {
        let (types, accounts) = (endpoint_types(3), endpoint_accounts(3));
        for n in 0..9 {
            let k = event_key(&types, &accounts, n);
            assert_eq!(k.ty, format!("load.e{}", n % 3));
            assert_eq!(k.account, Some(format!("acct-{}", n % 3)).as_deref());
        }
        let k = event_key(&types, &[], 4);
        assert_eq!((k.ty, k.account), ("load.e1", None));
        assert_eq!(endpoint_accounts(0), vec!["acct-0".to_string()]);
    }

    #[test]
    fn ack_parsing() {
        assert_eq!(
            parse_ack(b"ok ld-a-1 2"),
            Ack::Ok {
                id: b"ld-a-1",
                deliveries: 2
            }
        );
        assert_eq!(parse_ack(b"dup ld-a-1\r"), Ack::Dup { id: b"ld-a-1" });
        assert_eq!(parse_ack(b"err invalid bad type"), Ack::Err);
        assert_eq!(parse_ack(b"ok ld-a-1"), Ack::Unknown);
        assert_eq!(parse_ack(b"hello"), Ack::Unknown);
    }

    /// A fresh temp dir for a test's ingest socket, removed when dropped.
    struct TestSocket {
        dir: PathBuf,
        path: PathBuf,
    }

    impl TestSocket {
        fn new(tag: &str) -> TestSocket {
            let dir = std::env::temp_dir().join(format!("rl-gen-{tag}-{}", new_run_tag()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("ingest.sock");
            TestSocket { dir, path }
        }
    }

    impl Drop for TestSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A fake ingest server answering each line; every 7th is a dup, every 11th an err.
    fn fake_ingest(path: PathBuf) -> JoinHandle<u64> {
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut lines = 0u64;
            let mut out = Vec::new();
            for line in BufReader::new(s).lines() {
                let line = line.unwrap();
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert!(v["data"]["sent_us"].as_u64().unwrap() > 0);
                let id = v["id"].as_str().unwrap();
                let n: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
                assert_eq!(v["account"], format!("acct-{}", n % 4));
                lines += 1;
                out.clear();
                if lines % 11 == 0 {
                    out.extend_from_slice(b"err invalid test\n");
                } else if lines % 7 == 0 {
                    writeln!(out, "dup {id}").unwrap();
                } else {
                    writeln!(out, "ok {id} 1").unwrap();
                }
                w.write_all(&out).unwrap();
            }
            lines
        })
    }

    #[test]
    fn gen_against_fake_ingest() {
        let sock = TestSocket::new("test");
        let path = sock.path.clone();
        let server = fake_ingest(path.clone());
        let mut cfg = GenConfig::new(Target::Unix(path), "t1".into());
        cfg.events = 5_000;
        cfg.window = 256;
        cfg.types = endpoint_types(4);
        cfg.accounts = endpoint_accounts(4);
        let gen = Gen::start(cfg, Arc::new(AtomicBool::new(false))).unwrap();
        let shared = gen.shared().clone();
        let res = gen.join();
        drop(shared);
        assert_eq!(res.sent, 5_000);
        assert_eq!(res.err, 5_000 / 11);
        assert_eq!(res.ok + res.dup + res.err, 5_000);
        assert_eq!(res.missing, 0);
        assert_eq!(res.mismatched, 0);
        assert_eq!(res.ack.count, 5_000);
        assert_eq!(res.shortfall, None);
        assert_eq!(server.join().unwrap(), 5_000);
    }

    /// A server that drops every 50th ack: accounting follows the ids, not positions.
    #[test]
    fn gen_survives_dropped_acks() {
        let sock = TestSocket::new("test3");
        let path = sock.path.clone();
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            for (i, line) in BufReader::new(s).lines().enumerate() {
                let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                if i % 50 != 49 {
                    writeln!(w, "ok {} 1", v["id"].as_str().unwrap()).unwrap();
                }
            }
        });
        let mut cfg = GenConfig::new(Target::Unix(path), "t3".into());
        cfg.events = 1_000;
        cfg.ack_timeout = Duration::from_millis(500);
        let gen = Gen::start(cfg, Arc::new(AtomicBool::new(false))).unwrap();
        let shared = gen.shared().clone();
        let res = gen.join();
        assert_eq!((res.sent, res.ok, res.missing), (1_000, 980, 20));
        assert!(res.mismatched > 0);
        for n in 0..1_000 {
            assert_eq!(shared.accepted.get(n), n % 50 != 49, "event {n}");
        }
        assert!(
            res.notes.iter().any(|n| n.contains("no ack for")),
            "{:?}",
            res.notes
        );
        drop(shared);
        server.join().unwrap();
    }

    #[test]
    fn gen_rate_limited_two_connections() {
        let sock = TestSocket::new("test2");
        let path = sock.path.clone();
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let mut hs = Vec::new();
            for _ in 0..2 {
                let (s, _) = l.accept().unwrap();
                hs.push(std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    for line in BufReader::new(s).lines() {
                        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                        writeln!(w, "ok {} 1", v["id"].as_str().unwrap()).unwrap();
                    }
                }));
            }
            for h in hs {
                h.join().unwrap();
            }
        });
        let mut cfg = GenConfig::new(Target::Unix(path), "t2".into());
        cfg.events = 1_000;
        cfg.rate = 4_000.0;
        cfg.connections = 2;
        let t = Instant::now();
        let gen = Gen::start(cfg, Arc::new(AtomicBool::new(false))).unwrap();
        let shared = gen.shared().clone();
        let res = gen.join();
        assert!(t.elapsed() >= Duration::from_millis(200), "open loop paced");
        assert_eq!((res.sent, res.ok, res.mismatched), (1_000, 1_000, 0));
        assert!((0..1_000).all(|n| shared.accepted.get(n)));
        assert_eq!(res.shortfall, None);
        drop(shared);
        server.join().unwrap();
    }

    /// A server that acks the first `after` lines, then closes the connection.
    fn closing_ingest(path: PathBuf, after: usize) -> JoinHandle<()> {
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            for line in BufReader::new(s).lines().take(after) {
                let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                writeln!(w, "ok {} 1", v["id"].as_str().unwrap()).unwrap();
            }
        })
    }

    /// A server that acks every line for `open`, then shuts the connection.
    /// An ingest server that answers every line and closes once it has answered at
    /// least `lines` and then read nothing for `quiet`: between two of a lingering
    /// producer's writes, however late the machine runs them.
    fn ingest_closing_when_quiet(path: PathBuf, lines: usize, quiet: Duration) -> JoinHandle<()> {
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (r, mut w) = (s.try_clone().unwrap(), s.try_clone().unwrap());
            let answered = Arc::new(AtomicUsize::new(0));
            let last = Arc::new(std::sync::Mutex::new(Instant::now()));
            let acker = {
                let (answered, last) = (answered.clone(), last.clone());
                std::thread::spawn(move || {
                    // Once the socket is shut down, a read may end inside a line and a
                    // write fail: the acker stops there.
                    for line in BufReader::new(r).lines() {
                        let Ok(line) = line else { return };
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                            return;
                        };
                        if writeln!(w, "ok {} 1", v["id"].as_str().unwrap_or_default()).is_err() {
                            return;
                        }
                        *last.lock().unwrap() = Instant::now();
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                })
            };
            let began = Instant::now();
            while answered.load(Ordering::SeqCst) < lines || last.lock().unwrap().elapsed() < quiet
            {
                assert!(began.elapsed() < Duration::from_secs(20), "no quiet moment");
                std::thread::sleep(Duration::from_millis(2));
            }
            s.shutdown(std::net::Shutdown::Both).unwrap();
            acker.join().unwrap();
        })
    }

    /// With a 200 ms linger the writes go out 200 ms apart and the server closes between
    /// two (after the second, once it has read nothing for 50 ms), so nothing is in
    /// flight then and no ack is missing: the events never sent are what fails the run.
    /// (It closed at a fixed 300 ms, which a late second write on a loaded machine
    /// passed, leaving acks missing.)
    #[test]
    fn a_server_closing_early_is_a_shortfall() {
        let sock = TestSocket::new("closes");
        let server = ingest_closing_when_quiet(sock.path.clone(), 900, Duration::from_millis(50));
        let mut cfg = GenConfig::new(Target::Unix(sock.path.clone()), "tc".into());
        cfg.events = 5_000;
        cfg.rate = 5_000.0;
        cfg.linger = Duration::from_millis(200);
        let res = Gen::start(cfg, Arc::new(AtomicBool::new(false)))
            .unwrap()
            .join();
        server.join().unwrap();
        // Event 0 at once, then what fell due by about 200 ms (on a loaded machine the
        // server sees its quiet 50 ms later, after the next batch or two: 2,217 of
        // them once, beside a soak): short of the 5,000 asked either way.
        assert!((900..5_000).contains(&res.sent), "{}", res.summary());
        assert_eq!(res.ok, res.sent, "{}", res.summary());
        assert_eq!(res.missing, 0, "{}", res.summary());
        let s = res.shortfall.clone().expect("a shortfall");
        assert!(
            s.starts_with(&format!(
                "sent {} of 5,000 events",
                stats::fmt_count(res.sent)
            )),
            "{s}"
        );
        assert!(res.failed());

        // Only a duration: stopped long before it ended.
        let sock = TestSocket::new("closes-d");
        let server = closing_ingest(sock.path.clone(), 200);
        let mut cfg = GenConfig::new(Target::Unix(sock.path.clone()), "td".into());
        cfg.events = 0;
        cfg.rate = 2_000.0;
        cfg.duration = Duration::from_secs(5);
        let t = Instant::now();
        let res = Gen::start(cfg, Arc::new(AtomicBool::new(false)))
            .unwrap()
            .join();
        server.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(4));
        let s = res.shortfall.expect("a shortfall");
        assert!(s.contains("of the 5s asked"), "{s}");
    }

    #[test]
    fn the_shortfall_says_what_was_sent_of_what_was_asked() {
        assert_eq!(
            shortfall(1_000, 5_000, Duration::ZERO, 0, Duration::ZERO, 1),
            None
        );
        let s = shortfall(1_000, 5_000, Duration::ZERO, 1, Duration::ZERO, 2).unwrap();
        assert!(
            s.starts_with("sent 1,000 of 5,000 events: 1 of 2 connection(s)"),
            "{s}"
        );
        let s = shortfall(
            1_000,
            0,
            Duration::from_secs(5),
            2,
            Duration::from_millis(250),
            2,
        )
        .unwrap();
        assert!(
            s.starts_with("sent 1,000 events, stopping after 0.25s of the 5s asked: 2 of 2"),
            "{s}"
        );
    }

    /// A share sent in full is no shortfall, flat out and with a rate, limited by
    /// `events` and by `duration` alone.
    #[test]
    fn a_complete_share_is_no_shortfall_in_each_mode() {
        for (rate, events) in [(0.0, 3_000), (0.0, 0), (5_000.0, 500), (5_000.0, 0)] {
            let mode = format!("rate {rate}, events {events}");
            let sock = TestSocket::new("whole");
            let server = closing_ingest(sock.path.clone(), usize::MAX);
            let mut cfg = GenConfig::new(Target::Unix(sock.path.clone()), "tw".into());
            cfg.rate = rate;
            cfg.events = events;
            cfg.duration = Duration::from_millis(if events > 0 { 10_000 } else { 300 });
            let res = Gen::start(cfg, Arc::new(AtomicBool::new(false)))
                .unwrap()
                .join();
            server.join().unwrap();
            assert_eq!(res.shortfall, None, "{mode}: {}", res.summary());
            assert!(!res.failed(), "{mode}: {}", res.summary());
            assert!(res.notes.is_empty(), "{mode}: {:?}", res.notes);
            if events > 0 {
                assert_eq!(res.sent, events, "{mode}");
            } else {
                assert!(res.sent > 0, "{mode}");
            }
            assert_eq!(res.ok, res.sent, "{mode}");
        }
    }

    /// A server that acks the first `acked` lines, then holds the connection open until
    /// told, still reading (and dropping) lines when `reads`, else reading nothing more.
    fn stalling_ingest(
        path: PathBuf,
        acked: usize,
        reads: bool,
    ) -> (JoinHandle<()>, std::sync::mpsc::Sender<()>) {
        let l = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut lines = BufReader::new(s).lines();
            for line in lines.by_ref().take(acked) {
                let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                writeln!(w, "ok {} 1", v["id"].as_str().unwrap()).unwrap();
            }
            if reads {
                for line in lines {
                    if line.is_err() {
                        break;
                    }
                }
            }
            let _ = rx.recv();
        });
        (server, tx)
    }

    /// A server that stops reading (the writer blocks in a write) or stops acking (the
    /// writer waits on its window) cuts the share short even when the reader gives up
    /// only after `duration` ended, and the message gives when writing stopped, not
    /// when the generator was joined.
    #[test]
    fn a_server_that_stalls_is_a_shortfall_even_past_the_duration() {
        for reads in [false, true] {
            let sock = TestSocket::new("stalls");
            let (server, release) = stalling_ingest(sock.path.clone(), 500, reads);
            let mut cfg = GenConfig::new(Target::Unix(sock.path.clone()), "tt".into());
            cfg.events = 0;
            cfg.duration = Duration::from_millis(600);
            cfg.ack_timeout = Duration::from_secs(1);
            if reads {
                cfg.window = 1_024;
            }
            let t = Instant::now();
            let res = Gen::start(cfg, Arc::new(AtomicBool::new(false)))
                .unwrap()
                .join();
            assert!(t.elapsed() >= Duration::from_secs(1), "waited for the acks");
            let _ = release.send(());
            server.join().unwrap();
            assert_eq!(res.ok, 500, "reads {reads}: {}", res.summary());
            let s = res
                .shortfall
                .clone()
                .unwrap_or_else(|| panic!("reads {reads}: no shortfall: {}", res.summary()));
            let after: f64 = s
                .split("stopping after ")
                .nth(1)
                .and_then(|r| r.split("s of the 600ms asked").next())
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("{s}"));
            assert!(after < 0.5, "reads {reads}: {s}");
            assert!(
                res.notes.iter().any(|n| n.contains("stopped writing")),
                "reads {reads}: {:?}",
                res.notes
            );
        }
    }

    /// [`Gen::abort`] (the server is gone) cuts short a writer that has not noticed it
    /// yet (asleep in a 500 ms linger); a stop in the same place is no shortfall.
    #[test]
    fn an_abort_is_a_shortfall_a_stop_is_not() {
        for abort in [true, false] {
            let sock = TestSocket::new("abort");
            let server = closing_ingest(sock.path.clone(), usize::MAX);
            let mut cfg = GenConfig::new(Target::Unix(sock.path.clone()), "ta".into());
            cfg.events = 5_000;
            cfg.rate = 1_000.0;
            cfg.linger = Duration::from_millis(500);
            let stop = Arc::new(AtomicBool::new(false));
            let gen = Gen::start(cfg, stop.clone()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            if abort {
                gen.abort();
            } else {
                stop.store(true, Ordering::Relaxed);
            }
            let res = gen.join();
            server.join().unwrap();
            // What was due at the start went out; the writer slept through the rest.
            assert!(res.sent < 100, "{abort}: {}", res.summary());
            assert_eq!((res.ok, res.missing), (res.sent, 0), "{abort}");
            if abort {
                let s = res.shortfall.clone().expect("a shortfall");
                let want = format!("sent {} of 5,000 events: 1 of 1", res.sent);
                assert!(s.starts_with(&want), "{s}");
                assert!(res.failed());
                assert!(
                    res.notes.iter().any(|n| n.contains("aborted")),
                    "{:?}",
                    res.notes
                );
            } else {
                assert_eq!(res.shortfall, None);
                assert!(!res.failed(), "{}", res.summary());
            }
        }
    }

    #[test]
    fn a_stop_is_no_shortfall() {
        let sock = TestSocket::new("stop");
        let server = closing_ingest(sock.path.clone(), usize::MAX);
        let mut cfg = GenConfig::new(Target::Unix(sock.path.clone()), "ts".into());
        cfg.events = 0;
        cfg.rate = 2_000.0;
        let stop = Arc::new(AtomicBool::new(false));
        let gen = Gen::start(cfg, stop.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let res = gen.join();
        server.join().unwrap();
        assert_eq!(res.shortfall, None);
        assert!(!res.failed(), "{}", res.summary());
    }

    /// With a linger the writer sends what fell due meanwhile together: 400 events over
    /// 100 ms with a 20 ms linger arrive in a handful of reads, not hundreds.
    #[test]
    fn gen_linger_batches_writes() {
        let sock = TestSocket::new("linger");
        let path = sock.path.clone();
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let (mut buf, mut pending, mut reads) = (vec![0u8; 1 << 20], Vec::new(), 0);
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return reads;
                }
                reads += 1;
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let v: serde_json::Value = serde_json::from_slice(&pending[..end]).unwrap();
                    writeln!(w, "ok {} 1", v["id"].as_str().unwrap()).unwrap();
                    pending.drain(..=end);
                }
            }
        });
        let mut cfg = GenConfig::new(Target::Unix(path), "tl".into());
        cfg.events = 400;
        cfg.rate = 4_000.0;
        cfg.linger = Duration::from_millis(20);
        cfg.payload = Payload::parse("small").unwrap();
        let t = Instant::now();
        let res = Gen::start(cfg, Arc::new(AtomicBool::new(false)))
            .unwrap()
            .join();
        assert!(t.elapsed() >= Duration::from_millis(90), "open loop paced");
        assert_eq!((res.sent, res.ok, res.mismatched), (400, 400, 0));
        assert_eq!(res.shortfall, None);
        let reads = server.join().unwrap();
        // 100 ms in writes at least 20 ms apart: 6 at most, with room for a split read.
        assert!((1..=12).contains(&reads), "{reads} reads");
    }
}
