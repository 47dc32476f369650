//! The sink: a scriptable HTTP/1.1 keep-alive receiver standing in for every webhook
//! endpoint. Thread-per-core: each thread runs its own monoio runtime and its own
//! SO_REUSEPORT listener on the same address, and the kernel spreads connections.
//!
//! Per request it frames the request, draws an answer from the script (or resets the
//! connection, or answers slowly), marks the `webhook-id` in the shared [`IdSet`] and
//! records the delivery lag `now - sent_us` for first 2xx deliveries, `now` being the
//! request's arrival: before the scripted latency and the answer. [`Sink`] is the
//! handle `run` uses in-process; `ricochet-load sink` wraps it with a printer.
//!
//! With [`SinkConfig::tls`] every connection is TLS ([`crate::tls::TlsConn`]: rustls
//! driven by hand on the same monoio connections; same framing and bookkeeping). With
//! [`SinkConfig::rate`] every request on `/e/<n>` also goes through the per-endpoint
//! one-second window check of [`crate::ratecheck`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use std::{future::Future, io};

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use serde::Serialize;

use crate::http::{self, FrameError};
use crate::ids::{IdSet, RunCache};
use crate::ratecheck::{RateCheck, RateCounts};
use crate::script::{unix_micros, Latency, Rng, Script};
use crate::stats::{self, Hists};
use crate::tls::{SinkTls, TlsConn};

/// Everything the sink needs to start.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub script: Script,
    pub latency: Latency,
    /// Share of requests answered by resetting the connection (RST, no response).
    pub reset: f64,
    /// Share of responses whose body trickles out in pieces (see [`SLOW_PIECE_GAP`]).
    pub slow_body: f64,
    /// When known, a request for event `n` must arrive on `/e/<n % endpoints>`.
    pub endpoints: Option<u64>,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<SinkTls>,
    /// Check every endpoint's arrivals against its `max_rps` (needs `endpoints`).
    pub rate: Option<RateLimit>,
}

/// The per-endpoint rate check's parameters: at most `max_rps + tolerance` arrivals of
/// one endpoint in any one-second window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max_rps: u32,
    pub tolerance: u32,
}

impl SinkConfig {
    pub fn new(listen: SocketAddr, script: Script) -> SinkConfig {
        SinkConfig {
            listen,
            threads: 1,
            script,
            latency: Latency::Fixed(Duration::ZERO),
            reset: 0.0,
            slow_body: 0.0,
            endpoints: None,
            tls: None,
            rate: None,
        }
    }
}

/// A slow body goes out in [`SLOW_PIECES`] pieces this far apart.
pub const SLOW_PIECE_GAP: Duration = Duration::from_millis(50);
const SLOW_PIECES: usize = 4;
const SLOW_BODY: &[u8] = b"OK, slowly..............................................SLOW BODY";

/// Per-thread counters; summed into [`SinkCounts`] on demand.
#[derive(Default)]
#[repr(align(128))]
struct Counters {
    requests: AtomicU64,
    body_bytes: AtomicU64,
    s2xx: AtomicU64,
    s3xx: AtomicU64,
    s4xx: AtomicU64,
    s5xx: AtomicU64,
    resets: AtomicU64,
    slow: AtomicU64,
    no_id: AtomicU64,
    distinct: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    misrouted: AtomicU64,
    bad_requests: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_errors: AtomicU64,
    /// Unix µs of this thread's latest request (0 before any).
    last_request_us: AtomicU64,
}

/// A snapshot of the sink's counters.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct SinkCounts {
    /// Every framed request, whatever the answer.
    pub requests: u64,
    pub body_bytes: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Requests answered by resetting the connection.
    pub resets: u64,
    pub slow_bodies: u64,
    /// Requests without a `webhook-id` header (e.g. the raw client).
    pub no_id: u64,
    /// Distinct `webhook-id`s seen.
    pub distinct_ids: u64,
    /// Distinct ids answered 2xx at least once.
    pub delivered: u64,
    /// 2xx answers for ids already answered 2xx: re-deliveries after success.
    pub duplicates: u64,
    /// Requests for ids seen before but not yet delivered (retries after failures).
    pub retries: u64,
    /// Requests whose path does not match the event's endpoint.
    pub misrouted: u64,
    pub bad_requests: u64,
    pub connections: u64,
    pub open_connections: u64,
    /// TLS handshakes completed (TLS mode).
    pub tls_handshakes: u64,
    /// TLS connections rustls rejected (handshake or record errors, alerts).
    pub tls_errors: u64,
}

const MODE_UP: u8 = 0;
const MODE_503: u8 = 1;

/// The first and the latest of a kind of moment (unix µs; 0 before any), stamped by
/// every sink thread.
#[derive(Default)]
struct Window {
    first: AtomicU64,
    last: AtomicU64,
}

impl Window {
    fn stamp(&self, t: u64) {
        self.last.fetch_max(t, Relaxed);
        let _ = self.first.compare_exchange(0, t, Relaxed, Relaxed);
    }

    fn get(&self) -> (u64, u64) {
        (self.first.load(Relaxed), self.last.load(Relaxed))
    }
}

/// State shared by the sink threads and its handle.
pub struct SinkShared {
    counters: Vec<Counters>,
    lags: Vec<Mutex<Hists>>,
    pub ids: IdSet,
    mode: AtomicU8,
    stop: AtomicBool,
    /// First deliveries.
    deliveries: Window,
    /// First attempts: requests for an id not seen before, whatever their answer.
    first_attempts: Window,
    /// A generated id's `n` whose delivery is counted but not timed (no lag sample, not
    /// in the first/last delivery stamps): `run`'s restart probe. `u64::MAX` = none.
    untimed_n: AtomicU64,
    rate: Option<RateCheck>,
}

impl SinkShared {
    pub fn counts(&self) -> SinkCounts {
        let mut s = SinkCounts::default();
        for c in &self.counters {
            s.requests += c.requests.load(Relaxed);
            s.body_bytes += c.body_bytes.load(Relaxed);
            s.status_2xx += c.s2xx.load(Relaxed);
            s.status_3xx += c.s3xx.load(Relaxed);
            s.status_4xx += c.s4xx.load(Relaxed);
            s.status_5xx += c.s5xx.load(Relaxed);
            s.resets += c.resets.load(Relaxed);
            s.slow_bodies += c.slow.load(Relaxed);
            s.no_id += c.no_id.load(Relaxed);
            s.distinct_ids += c.distinct.load(Relaxed);
            s.delivered += c.delivered.load(Relaxed);
            s.duplicates += c.duplicates.load(Relaxed);
            s.retries += c.retries.load(Relaxed);
            s.misrouted += c.misrouted.load(Relaxed);
            s.bad_requests += c.bad_requests.load(Relaxed);
            s.connections += c.connections.load(Relaxed);
            s.open_connections += c.open.load(Relaxed);
            s.tls_handshakes += c.tls_handshakes.load(Relaxed);
            s.tls_errors += c.tls_errors.load(Relaxed);
        }
        s
    }

    /// The rate check's findings, when the sink checks rates.
    pub fn rate_counts(&self) -> Option<RateCounts> {
        self.rate.as_ref().map(RateCheck::counts)
    }

    /// Delivery lag (µs) of every first delivery so far.
    pub fn lag_total(&self) -> Histogram<u64> {
        stats::merge_total(&self.lags)
    }

    /// Delivery lag (µs) since the previous call.
    pub fn lag_interval(&self) -> Histogram<u64> {
        stats::take_interval(&self.lags)
    }

    /// Unix µs of the latest request, whatever its answer (0 before any).
    pub fn last_request_us(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.last_request_us.load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Unix µs of the latest first delivery (0 before any).
    pub fn last_delivery_us(&self) -> u64 {
        self.deliveries.get().1
    }

    #[cfg(test)]
    pub fn first_delivery_us(&self) -> u64 {
        self.deliveries.get().0
    }

    /// Unix µs of the first and of the latest first attempt, (0, 0) before any: the
    /// window of first attempts, retries and re-deliveries left out.
    pub fn first_attempt_window_us(&self) -> (u64, u64) {
        self.first_attempts.get()
    }

    /// Deliveries of `ld-<any run>-<n>` count (delivered, duplicates, ids) but leave the
    /// delivery window and the lag histogram alone.
    pub fn set_untimed(&self, n: u64) {
        self.untimed_n.store(n, Relaxed);
    }

    fn timed(&self, id: &[u8]) -> bool {
        let u = self.untimed_n.load(Relaxed);
        u == u64::MAX || http::parse_load_id(id).is_none_or(|(_, n)| n != u)
    }

    /// While down, every request is answered 503 and nothing counts as delivered.
    pub fn set_down(&self, down: bool) {
        self.mode
            .store(if down { MODE_503 } else { MODE_UP }, Relaxed);
    }
}

/// A running sink.
pub struct Sink {
    shared: Arc<SinkShared>,
    threads: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Sink {
    /// Binds `threads` SO_REUSEPORT listeners (port 0 picks a free port, shared by all)
    /// and starts serving. Returns once every thread is listening.
    pub fn start(cfg: SinkConfig) -> Result<Sink> {
        let threads = cfg.threads.max(1);
        let rate = match (cfg.rate, cfg.endpoints) {
            (None, _) => None,
            (Some(r), Some(e)) if e > 0 => Some(RateCheck::new(e, r.max_rps, r.tolerance)?),
            (Some(_), _) => {
                return Err(anyhow!(
                    "the rate check needs the endpoint count (--endpoints)"
                ))
            }
        };
        if cfg.listen.port() != 0 {
            ensure_port_free(cfg.listen)?;
        }
        let shared = Arc::new(SinkShared {
            counters: (0..threads).map(|_| Counters::default()).collect(),
            lags: (0..threads).map(|_| Mutex::default()).collect(),
            ids: IdSet::default(),
            mode: AtomicU8::new(MODE_UP),
            stop: AtomicBool::new(false),
            deliveries: Window::default(),
            first_attempts: Window::default(),
            untimed_n: AtomicU64::new(u64::MAX),
            rate,
        });
        let cfg = Arc::new(cfg);
        let mut sink = Sink {
            shared: shared.clone(),
            threads: Vec::with_capacity(threads),
            addr: cfg.listen,
        };
        for index in 0..threads {
            let (tx, rx) = mpsc::channel();
            let (shared, cfg, addr) = (shared.clone(), cfg.clone(), sink.addr);
            let handle = std::thread::Builder::new()
                .name(format!("sink-{index}"))
                .spawn(move || sink_thread(index, addr, cfg, shared, tx))
                .context("spawning a sink thread")?;
            sink.threads.push(handle);
            match rx.recv() {
                Ok(Ok(bound)) => sink.addr = bound,
                Ok(Err(e)) => {
                    sink.stop_threads();
                    return Err(anyhow!("sink thread {index} cannot listen on {addr}: {e}"));
                }
                Err(_) => {
                    sink.stop_threads();
                    return Err(anyhow!("sink thread {index} died while starting"));
                }
            }
        }
        Ok(sink)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shared(&self) -> &Arc<SinkShared> {
        &self.shared
    }

    /// Stops accepting, closes every connection and joins the threads.
    pub fn stop(mut self) -> SinkCounts {
        self.stop_threads();
        self.shared.counts()
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Canned answers, built once per thread: per script entry, keep-alive and close.
struct Responses {
    script: Vec<[Vec<u8>; 2]>,
    slow: Vec<[Vec<u8>; 2]>,
    unavailable: [Vec<u8>; 2],
    bad_request: Vec<u8>,
    too_large: Vec<u8>,
}

impl Responses {
    fn new(script: &Script) -> Responses {
        let both = |status: u16| {
            [
                http::canned_response(status, true),
                http::canned_response(status, false),
            ]
        };
        let slow = |status: u16| {
            [
                http::response_with_body(status, SLOW_BODY, true),
                http::response_with_body(status, SLOW_BODY, false),
            ]
        };
        Responses {
            script: script.entries.iter().map(|e| both(e.status)).collect(),
            slow: script.entries.iter().map(|e| slow(e.status)).collect(),
            unavailable: both(503),
            bad_request: http::canned_response(400, false),
            too_large: http::canned_response(413, false),
        }
    }
}

struct ThreadCtx {
    cfg: Arc<SinkConfig>,
    shared: Arc<SinkShared>,
    index: usize,
    responses: Responses,
    rng: RefCell<Rng>,
    cache: RefCell<RunCache>,
    /// Open connections: next key, key -> fd.
    conns: RefCell<(u64, HashMap<u64, RawFd>)>,
}

/// What to do with one framed request.
enum Answer {
    /// Send `response` after `delay`; slowly if `slow`.
    Respond {
        status_idx: Option<usize>,
        delay: Duration,
        slow: bool,
    },
    /// Reset the connection instead of answering.
    Reset,
}

impl ThreadCtx {
    fn counters(&self) -> &Counters {
        &self.shared.counters[self.index]
    }

    /// Decides the answer and does all the bookkeeping; no I/O, no await.
    /// `opens_conn`: the first request on its connection.
    fn handle(&self, req: &http::Request, buf: &[u8], scratch: &[u8], opens_conn: bool) -> Answer {
        let c = self.counters();
        c.requests.fetch_add(1, Relaxed);
        // The clock, read once per request for every stamp below.
        let now = unix_micros();
        c.last_request_us.fetch_max(now, Relaxed);
        if let Some(rate) = &self.shared.rate {
            rate.record(http::endpoint_index(&buf[req.path.clone()]), opens_conn);
        }
        let body = req.body(buf, scratch);
        c.body_bytes.fetch_add(body.len() as u64, Relaxed);
        let mut rng = self.rng.borrow_mut();

        let (status_idx, status) = if self.shared.mode.load(Relaxed) == MODE_503 {
            (None, 503)
        } else if self.cfg.reset > 0.0 && rng.next_f64() < self.cfg.reset {
            c.resets.fetch_add(1, Relaxed);
            self.mark(req, buf, body, false, now);
            return Answer::Reset;
        } else {
            let idx = self.cfg.script.pick(rng.next_f64());
            (Some(idx), self.cfg.script.entries[idx].status)
        };
        match status {
            200..=299 => &c.s2xx,
            300..=399 => &c.s3xx,
            400..=499 => &c.s4xx,
            _ => &c.s5xx,
        }
        .fetch_add(1, Relaxed);
        self.mark(req, buf, body, (200..300).contains(&status), now);

        let delay = if self.cfg.latency.is_zero() {
            Duration::ZERO
        } else {
            self.cfg.latency.sample(rng.next_f64())
        };
        let slow = status_idx.is_some() && self.cfg.slow_body > 0.0 && {
            let s = rng.next_f64() < self.cfg.slow_body;
            if s {
                c.slow.fetch_add(1, Relaxed);
            }
            s
        };
        Answer::Respond {
            status_idx,
            delay,
            slow,
        }
    }

    /// Id bookkeeping, the first-attempt window and, for a first delivery, the lag
    /// sample; `now` is the request's arrival (unix µs).
    fn mark(&self, req: &http::Request, buf: &[u8], body: &[u8], delivered: bool, now: u64) {
        let c = self.counters();
        let mut lag_wanted = delivered;
        if let Some(r) = &req.webhook_id {
            let id = &buf[r.clone()];
            let m = self
                .shared
                .ids
                .mark(&mut self.cache.borrow_mut(), id, delivered);
            // Only a first request or a first delivery is stamped or timed.
            let timed = (m.first_seen || m.first_delivery) && self.shared.timed(id);
            if m.first_seen {
                c.distinct.fetch_add(1, Relaxed);
                if timed {
                    self.shared.first_attempts.stamp(now);
                }
            }
            if m.retry {
                c.retries.fetch_add(1, Relaxed);
            }
            if m.duplicate {
                c.duplicates.fetch_add(1, Relaxed);
            }
            if m.first_delivery {
                c.delivered.fetch_add(1, Relaxed);
            }
            lag_wanted = m.first_delivery && timed;
            if let Some(e) = self.cfg.endpoints.filter(|&e| e > 0) {
                if let (Some((_, n)), Some(path_ep)) = (
                    http::parse_load_id(id),
                    http::endpoint_index(&buf[req.path.clone()]),
                ) {
                    if n % e != path_ep {
                        c.misrouted.fetch_add(1, Relaxed);
                    }
                }
            }
        } else {
            c.no_id.fetch_add(1, Relaxed);
        }
        if !lag_wanted {
            return;
        }
        if req.webhook_id.is_some() {
            self.shared.deliveries.stamp(now);
        }
        let sent = http::find_sent_us_json(body)
            .or_else(|| http::find_sent_us_query(&buf[req.path.clone()]))
            .filter(|&s| s > 0);
        if let Some(sent) = sent {
            let mut lags = self.shared.lags[self.index]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            lags.record(now.saturating_sub(sent));
        }
    }
}

/// Refuses a port another process listens on. The sink's own listeners use
/// SO_REUSEPORT, which would let it join (and split the traffic with) another sink's
/// SO_REUSEPORT group on the same port without a word; a plain bind (no SO_REUSEPORT)
/// fails while anything listens there, and is closed again before the sink binds.
fn ensure_port_free(addr: SocketAddr) -> Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(anyhow!(
            "cannot listen on {addr}: the port is already in use by another process (another sink?); the sink does not share a port"
        )),
        Err(e) => Err(anyhow!("cannot listen on {addr}: {e}")),
    }
}

fn sink_thread(
    index: usize,
    addr: SocketAddr,
    cfg: Arc<SinkConfig>,
    shared: Arc<SinkShared>,
    ready: mpsc::Sender<std::io::Result<SocketAddr>>,
) {
    let seed = unix_micros() ^ ((index as u64 + 1) << 32);
    let ctx = Rc::new(ThreadCtx {
        responses: Responses::new(&cfg.script),
        cfg,
        shared,
        index,
        rng: RefCell::new(Rng::new(seed)),
        cache: RefCell::default(),
        conns: RefCell::default(),
    });
    let ready2 = ready.clone();
    let run = async move {
        let opts = ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(4096);
        let listener = match TcpListener::bind_with_config(addr, &opts) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(listener.local_addr());
        accept_loop(listener, ctx).await;
    };
    if let Err(e) = stats::block_on(run) {
        let _ = ready2.send(Err(e));
    }
}

/// Registers a connection's fd while its task runs, so a stop can shut it down, and
/// counts it as closed however the task ends.
struct OpenGuard(Rc<ThreadCtx>, u64);

impl OpenGuard {
    fn new(ctx: &Rc<ThreadCtx>, stream: &TcpStream) -> OpenGuard {
        let c = ctx.counters();
        c.connections.fetch_add(1, Relaxed);
        c.open.fetch_add(1, Relaxed);
        let mut conns = ctx.conns.borrow_mut();
        let key = conns.0;
        conns.0 += 1;
        conns.1.insert(key, stream.as_raw_fd());
        OpenGuard(ctx.clone(), key)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.conns.borrow_mut().1.remove(&self.1);
        self.0.counters().open.fetch_sub(1, Relaxed);
    }
}

/// Shuts down every open connection of this thread (their reads end at once) and gives
/// the tasks up to a second to finish.
async fn close_all(ctx: &ThreadCtx) {
    for &fd in ctx.conns.borrow().1.values() {
        // SAFETY: fds of live connections (a task removes its fd before closing it).
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
    for _ in 0..200 {
        if ctx.conns.borrow().1.is_empty() {
            return;
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn accept_loop(listener: TcpListener, ctx: Rc<ThreadCtx>) {
    let shared = ctx.shared.clone();
    let stop = async move {
        while !shared.stop.load(Relaxed) {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        monoio::select! {
            _ = &mut stop => {
                drop(listener);
                close_all(&ctx).await;
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = OpenGuard::new(&ctx, &stream);
                    match &ctx.cfg.tls {
                        None => {
                            monoio::spawn(async move {
                                let mut stream = stream;
                                serve_conn(&mut stream, &guard.0).await;
                                drop(guard);
                            });
                        }
                        Some(tls) => {
                            let shared = ctx.shared.clone();
                            let index = ctx.index;
                            let counted = Box::new(move || {
                                shared.counters[index]
                                    .tls_handshakes
                                    .fetch_add(1, Relaxed);
                            });
                            let Ok(mut conn) = TlsConn::new(stream, tls.server.clone(), counted)
                            else {
                                ctx.counters().tls_errors.fetch_add(1, Relaxed);
                                continue;
                            };
                            monoio::spawn(async move {
                                if serve_conn(&mut conn, &guard.0).await {
                                    conn.close().await;
                                }
                                if conn.failed {
                                    guard.0.counters().tls_errors.fetch_add(1, Relaxed);
                                }
                                drop(guard);
                            });
                        }
                    }
                }
                // Out of descriptors or a connection aborted before accept: back off.
                Err(_) => monoio::time::sleep(Duration::from_millis(5)).await,
            },
        }
    }
}

/// A sink connection's byte stream: plain TCP, or TLS over it ([`TlsConn`]).
/// Owned buffers in and out, as monoio's io_uring driver wants.
pub trait SinkStream {
    /// Appends what arrives next to `buf` (at least one byte; `Ok(0)` at end of stream)
    /// and hands `buf` back.
    fn recv_append(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)>;
    /// Sends all of `buf` and hands it back.
    fn send_all(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;
    /// The TCP connection underneath.
    fn tcp(&self) -> &TcpStream;
    /// Ends the stream gracefully when the sink closes it (TLS: close_notify).
    fn close(&mut self) -> impl Future<Output = ()>;
}

impl SinkStream for TcpStream {
    async fn recv_append(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(buf.capacity().max(16 << 10));
        }
        let len = buf.len();
        let (res, slice) = self.read(buf.slice_mut(len..)).await;
        (res, slice.into_inner())
    }

    async fn send_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, buf) = self.write_all(buf).await;
        (res.map(drop), buf)
    }

    fn tcp(&self) -> &TcpStream {
        self
    }

    async fn close(&mut self) {}
}

/// Writes `buf` fully and clears it; false if the peer went away.
async fn flush<S: SinkStream>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    if buf.is_empty() {
        return true;
    }
    let (res, b) = stream.send_all(std::mem::take(buf)).await;
    *buf = b;
    buf.clear();
    res.is_ok()
}

/// Sends a response whose body trickles out in pieces.
async fn write_slowly<S: SinkStream>(stream: &mut S, resp: &[u8], out: &mut Vec<u8>) -> bool {
    let body_start = resp.len() - SLOW_BODY.len();
    let piece = SLOW_BODY.len().div_ceil(SLOW_PIECES);
    out.extend_from_slice(&resp[..body_start]);
    let mut at = body_start;
    while at < resp.len() {
        let end = (at + piece).min(resp.len());
        out.extend_from_slice(&resp[at..end]);
        if !flush(stream, out).await {
            return false;
        }
        at = end;
        if at < resp.len() {
            monoio::time::sleep(SLOW_PIECE_GAP).await;
        }
    }
    true
}

/// Forces an RST on close (SO_LINGER with a zero timeout).
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd owned by `stream`, and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One keep-alive connection: frame every buffered request, answer in order (batched
/// into one write when nothing delays them), then read more. True when the sink chose to
/// close (after `Connection: close` or a 400) with everything written.
async fn serve_conn<S: SinkStream>(stream: &mut S, ctx: &ThreadCtx) -> bool {
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut wbuf: Vec<u8> = Vec::with_capacity(4 << 10);
    let mut scratch: Vec<u8> = Vec::new();
    let mut served = 0u64;
    loop {
        let mut consumed = 0;
        let mut close = false;
        while consumed < rbuf.len() {
            let req = match http::parse_request(&rbuf[consumed..], &mut scratch) {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => {
                    ctx.counters().bad_requests.fetch_add(1, Relaxed);
                    wbuf.extend_from_slice(match e {
                        FrameError::Malformed => &ctx.responses.bad_request,
                        FrameError::TooLarge => &ctx.responses.too_large,
                    });
                    close = true;
                    break;
                }
            };
            let answer = ctx.handle(&req, &rbuf[consumed..], &scratch, served == 0);
            served += 1;
            consumed += req.consumed;
            let ka = usize::from(!req.keep_alive);
            match answer {
                Answer::Reset => {
                    let _ = flush(stream, &mut wbuf).await;
                    set_linger_zero(stream.tcp());
                    return false;
                }
                Answer::Respond {
                    status_idx,
                    delay,
                    slow,
                } => {
                    if !delay.is_zero() {
                        if !flush(stream, &mut wbuf).await {
                            return false;
                        }
                        monoio::time::sleep(delay).await;
                    }
                    match status_idx {
                        Some(i) if slow => {
                            if !flush(stream, &mut wbuf).await
                                || !write_slowly(stream, &ctx.responses.slow[i][ka], &mut wbuf)
                                    .await
                            {
                                return false;
                            }
                        }
                        Some(i) => wbuf.extend_from_slice(&ctx.responses.script[i][ka]),
                        None => wbuf.extend_from_slice(&ctx.responses.unavailable[ka]),
                    }
                }
            }
            if !req.keep_alive {
                close = true;
                break;
            }
        }
        if !flush(stream, &mut wbuf).await {
            return false;
        }
        if close {
            return true;
        }
        // Keep unparsed bytes at the front, then read more after them.
        rbuf.drain(..consumed);
        let (res, b) = stream.recv_append(std::mem::take(&mut rbuf)).await;
        rbuf = b;
        match res {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    fn start(script: &str) -> Sink {
        let mut cfg = SinkConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Script::parse(script).unwrap(),
        );
        cfg.threads = 2;
        cfg.endpoints = Some(4);
        Sink::start(cfg).unwrap()
    }

    fn read_responses(s: &mut impl Read, n: usize) -> Vec<u16> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut tmp = [0u8; 4096];
        while out.len() < n {
            let k = s.read(&mut tmp).unwrap();
            assert!(k > 0, "connection closed early");
            buf.extend_from_slice(&tmp[..k]);
            while let Some(h) = http::parse_response(&buf).unwrap() {
                if buf.len() < h.head_len + h.content_length {
                    break;
                }
                out.push(h.status);
                buf.drain(..h.head_len + h.content_length);
            }
        }
        out
    }

    #[test]
    fn pipelined_chunked_and_ids() {
        let sink = start("200");
        let mut s = StdStream::connect(sink.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sent = unix_micros() - 1_000;
        let body = format!("{{\"sent_us\":{sent},\"x\":1}}");
        let mut req = Vec::new();
        for (id, path) in [("ld-t-1", "/e/1"), ("ld-t-2", "/e/3"), ("ld-t-1", "/e/1")] {
            req.extend_from_slice(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nwebhook-id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        // A chunked one, split over two writes.
        let chunked = format!(
            "POST /e/2 HTTP/1.1\r\nwebhook-id: ld-t-6\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        req.extend_from_slice(&chunked.as_bytes()[..40]);
        s.write_all(&req).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&chunked.as_bytes()[40..]).unwrap();
        assert_eq!(read_responses(&mut s, 4), vec![200; 4]);

        let c = sink.shared().counts();
        assert_eq!(c.requests, 4);
        assert_eq!(c.distinct_ids, 3);
        assert_eq!(c.delivered, 3);
        assert_eq!(c.duplicates, 1);
        // ld-t-2 went to /e/3 but 2 % 4 == 2.
        assert_eq!(c.misrouted, 1);
        let lag = Percentiles::of(&sink.shared().lag_total());
        assert_eq!(lag.count, 3);
        assert!(lag.p50_us >= 1_000, "lag {lag:?}");
        assert!(sink.shared().ids.delivered(b"t", 6));
        let c = sink.stop();
        assert_eq!(c.open_connections, 0);
    }

    use crate::stats::Percentiles;

    #[test]
    fn an_untimed_id_counts_but_is_not_timed() {
        let sink = start("200");
        sink.shared().set_untimed(9);
        let mut s = StdStream::connect(sink.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let post = |s: &mut StdStream, id: &str, path: &str| {
            let body = format!("{{\"sent_us\":{},\"x\":1}}", unix_micros() - 1_000);
            write!(
                s,
                "POST {path} HTTP/1.1\r\nHost: x\r\nwebhook-id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            assert_eq!(read_responses(s, 1), vec![200]);
        };
        post(&mut s, "ld-t-9", "/e/1");
        assert_eq!(sink.shared().first_delivery_us(), 0);
        assert_eq!(sink.shared().last_delivery_us(), 0);
        assert_eq!(sink.shared().first_attempt_window_us(), (0, 0));
        post(&mut s, "ld-t-5", "/e/1");
        let first = sink.shared().first_delivery_us();
        assert!(first > 0);
        assert_eq!(sink.shared().first_attempt_window_us(), (first, first));
        std::thread::sleep(Duration::from_millis(5));
        post(&mut s, "ld-t-9", "/e/1");
        assert_eq!(sink.shared().last_delivery_us(), first);
        // A second request for a timed id is no first attempt.
        post(&mut s, "ld-t-5", "/e/1");
        assert_eq!(sink.shared().first_attempt_window_us(), (first, first));
        post(&mut s, "ld-t-13", "/e/1");
        let (from, to) = sink.shared().first_attempt_window_us();
        assert!(from == first && to > first, "{from} {to} {first}");
        let c = sink.shared().counts();
        assert_eq!((c.delivered, c.duplicates, c.misrouted), (3, 2, 0));
        assert_eq!(Percentiles::of(&sink.shared().lag_total()).count, 2);
        assert!(sink.shared().ids.delivered(b"t", 9));
    }

    #[test]
    fn script_down_mode_and_close() {
        let sink = start("500");
        let mut s = StdStream::connect(sink.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /e/0?sent_us=5 HTTP/1.1\r\nwebhook-id: ld-q-0\r\n\r\n")
            .unwrap();
        assert_eq!(read_responses(&mut s, 1), vec![500]);
        sink.shared().set_down(true);
        s.write_all(b"GET /e/0 HTTP/1.1\r\nwebhook-id: ld-q-0\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(read_responses(&mut s, 1), vec![503]);
        let mut rest = Vec::new();
        assert_eq!(
            s.read_to_end(&mut rest).unwrap(),
            0,
            "closed after Connection: close"
        );
        let c = sink.shared().counts();
        assert_eq!(
            (c.status_5xx, c.delivered, c.retries, c.distinct_ids),
            (2, 0, 1, 1)
        );
        // Malformed input gets a 400 and a close.
        let mut s = StdStream::connect(sink.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"BROKEN\r\n\r\n").unwrap();
        assert_eq!(read_responses(&mut s, 1), vec![400]);
    }

    /// A rustls client over a std socket, trusting `ca_pem`.
    fn tls_client(
        addr: SocketAddr,
        ca_pem: &str,
        name: &str,
    ) -> rustls::StreamOwned<rustls::ClientConnection, StdStream> {
        let cfg = Arc::new(crate::tls::client_config(ca_pem.as_bytes()).unwrap());
        let conn = rustls::ClientConnection::new(
            cfg,
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rustls::StreamOwned::new(conn, s)
    }

    #[test]
    fn tls_sink_answers_a_rustls_client() {
        let tls = crate::tls::SinkTls::generate().unwrap();
        let mut cfg = SinkConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Script::parse("200").unwrap(),
        );
        cfg.threads = 2;
        cfg.endpoints = Some(4);
        cfg.tls = Some(tls.clone());
        let sink = Sink::start(cfg).unwrap();
        let body = format!("{{\"sent_us\":{},\"x\":1}}", unix_micros() - 500);
        let big = format!("{{\"sent_us\":1,\"pad\":\"{}\"}}", "p".repeat(40_000));
        for (conn, name) in ["localhost", "127.0.0.1"].into_iter().enumerate() {
            let mut s = tls_client(sink.addr(), &tls.ca_pem, name);
            // Pipelined, and a large body spanning several TLS records.
            let mut req = Vec::new();
            for i in 0..3u64 {
                let id = conn as u64 * 4 + i;
                req.extend_from_slice(
                    format!(
                        "POST /e/{} HTTP/1.1\r\nHost: x\r\nwebhook-id: ld-s-{id}\r\nContent-Length: {}\r\n\r\n{body}",
                        id % 4,
                        body.len()
                    )
                    .as_bytes(),
                );
            }
            req.extend_from_slice(
                format!(
                    "POST /e/{} HTTP/1.1\r\nwebhook-id: ld-s-{}\r\nContent-Length: {}\r\n\r\n{big}",
                    (conn * 4 + 3) % 4,
                    conn * 4 + 3,
                    big.len()
                )
                .as_bytes(),
            );
            s.write_all(&req).unwrap();
            s.flush().unwrap();
            assert_eq!(read_responses(&mut s, 4), vec![200; 4]);
            assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            // Connection: close ends with a close_notify, then EOF.
            s.write_all(b"GET /e/0 HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            assert_eq!(read_responses(&mut s, 1), vec![200]);
            let mut rest = Vec::new();
            assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
        }
        let c = sink.shared().counts();
        assert_eq!((c.requests, c.delivered, c.misrouted), (10, 8, 0));
        assert_eq!((c.tls_handshakes, c.tls_errors), (2, 0));
        assert_eq!(c.body_bytes as usize, 6 * body.len() + 2 * big.len());

        // A client that does not trust the CA: no answer, counted as a TLS error.
        let other = crate::tls::SinkTls::generate().unwrap();
        let mut s = tls_client(sink.addr(), &other.ca_pem, "localhost");
        assert!(
            s.write_all(b"GET /e/0 HTTP/1.1\r\n\r\n")
                .and_then(|_| s.flush())
                .is_err()
                || s.read(&mut [0u8; 16]).is_err()
        );
        drop(s);
        let t = std::time::Instant::now();
        while sink.shared().counts().tls_errors == 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let c = sink.stop();
        assert_eq!((c.tls_errors, c.tls_handshakes, c.requests), (1, 2, 10));
        assert_eq!(c.open_connections, 0);
    }

    #[test]
    fn rate_check_counts_windows_per_endpoint() {
        let mut cfg = SinkConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Script::parse("200").unwrap(),
        );
        cfg.endpoints = Some(3);
        cfg.rate = Some(RateLimit {
            max_rps: 2,
            tolerance: 1,
        });
        let sink = Sink::start(cfg).unwrap();
        let mut s = StdStream::connect(sink.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Five at once to /e/1 (two over the limit of 3), two to /e/2, one elsewhere.
        let mut req = Vec::new();
        for path in ["/e/1", "/e/1", "/e/2", "/e/1", "/e/1", "/e/2", "/e/1", "/x"] {
            req.extend_from_slice(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes());
        }
        s.write_all(&req).unwrap();
        assert_eq!(read_responses(&mut s, 8), vec![200; 8]);
        let r = sink.shared().rate_counts().unwrap();
        assert_eq!((r.max_rps, r.limit), (2, 3));
        assert_eq!((r.endpoints_checked, r.arrivals, r.unchecked), (2, 7, 1));
        assert_eq!((r.windows_over_limit, r.endpoints_over_limit), (2, 1));
        assert_eq!(r.worst_window, 5);
        // Without the endpoint count there is nothing to check against.
        let mut cfg = SinkConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Script::parse("200").unwrap(),
        );
        cfg.rate = Some(RateLimit {
            max_rps: 2,
            tolerance: 1,
        });
        assert!(Sink::start(cfg).is_err());
        assert!(start("200").shared().rate_counts().is_none());
    }

    #[test]
    fn a_second_sink_on_a_taken_port_is_refused() {
        let first = start("200");
        let mut cfg = SinkConfig::new(first.addr(), Script::parse("200").unwrap());
        cfg.threads = 2;
        let err = Sink::start(cfg).err().expect("the port is taken");
        assert!(err.to_string().contains("already in use"), "{err}");
        // Once the first is gone, the port can be had again.
        let addr = first.addr();
        drop(first);
        let again = Sink::start(SinkConfig::new(addr, Script::parse("200").unwrap()));
        assert!(again.is_ok(), "{:?}", again.err());
    }

    #[test]
    fn resets_and_slow_bodies() {
        let mut cfg = SinkConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Script::parse("200").unwrap(),
        );
        cfg.reset = 1.0;
        let sink = Sink::start(cfg).unwrap();
        let mut s = StdStream::connect(sink.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        assert_eq!(sink.stop().resets, 1);

        let mut cfg = SinkConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Script::parse("200").unwrap(),
        );
        cfg.slow_body = 1.0;
        let sink = Sink::start(cfg).unwrap();
        let mut s = StdStream::connect(sink.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = std::time::Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_responses(&mut s, 1), vec![200]);
        assert!(t.elapsed() >= SLOW_PIECE_GAP * (SLOW_PIECES as u32 - 1));
        assert_eq!(sink.stop().slow_bodies, 1);
    }
}
