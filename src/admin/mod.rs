//! The admin HTTP API (SPEC §7): health, Prometheus metrics, HTTP ingest, endpoints
//! managed live, the webhook log, replay and recover.
//!
//! Runs on its own threads with blocking sockets (one per connection, at most
//! [`MAX_CONNS`]: one more closes a connection that has waited a second for a request,
//! the one idle longest, else the one whose request has been arriving longest, and one
//! that gets no slot or no thread is answered 503 without the accept loop waiting; a
//! request must arrive within 10 s of its first byte, and its answer be read within
//! 30 s; a connection that closes after its answer lingers, read until its client
//! closes, so that the client reads the answer instead of a reset: [`linger`]) and
//! reads the store directly, so it never slows a worker. Everything that changes state
//! goes through the committer's mailbox and is answered over a channel once durable: an
//! ingested event (a one-event batch), an endpoint created, replaced or deleted, a
//! replay. Metrics are snapshots the workers and the committer send back when asked; a
//! test delivery is one attempt made by the endpoint's worker. The compiled endpoints
//! are read from the [`Registry`] the committer keeps. Binds loopback by default; with
//! `admin_token` every `/v1` call needs `Authorization: Bearer <token>` (the scheme in
//! any case, the token compared in constant time), while `/health` (GET, HEAD) and
//! `/metrics` stay open. Web pages may not drive it: a request with an `Origin` header
//! (which browsers send with any cross-site POST) is refused, and on a connection to a
//! loopback address (bound to one, or to a wildcard address) so is a `Host` that is not
//! a loopback name (a page whose name was rebound to 127.0.0.1). Request heads are
//! capped at 16 KiB and bodies at [`MAX_BODY`]; a malformed request is a 4xx, never a
//! panic.
//! Only the event list, `replay` and `recover` take query parameters; another `/v1`
//! call given one answers 400 rather than ignore a filter it does not have. From a
//! shutdown's signal on, every `/v1` call but a `GET` answers 503: no new work.
//!
//! It must not write the store, and must not block a worker or the committer: every
//! wait on them is bounded.
//!
//! One file per resource: `events.rs` (`/v1/events…`), `endpoints.rs`
//! (`/v1/endpoints…`), `metrics.rs` (`/metrics`); `samples.rs` holds the sample events
//! of test deliveries, `linger.rs` the closing of connections.

mod endpoints;
mod events;
mod linger;
mod metrics;
mod samples;

pub use linger::LINGER_MAX;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::commit::{CommitMsg, Registry};
use crate::deliver::http1::percent_decode;
use crate::metrics::FinalSnapshots;
use crate::shard::MailboxSender;
use crate::store::Store;
use crate::worker::WorkerMsg;

/// Largest request head.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body (1 MiB).
const MAX_BODY: usize = 1 << 20;
/// Connections served at once. One more closes a connection waiting for a request (for
/// at least `EVICTABLE_AFTER`: [`Waiting::evict`]) to take its place; with none such it
/// is answered 503.
pub const MAX_CONNS: usize = 64;
/// How long a connection waits for its first or next request.
const IDLE: Duration = Duration::from_secs(30);
/// How long one request may take to arrive, from its first byte to its last: a request
/// trickled in slower (slowloris) is answered 408 and its connection closed.
const REQUEST_TIME: Duration = Duration::from_secs(10);
/// How long one answer may take to be written, from its first byte to its last: a
/// client that reads it slower (a slow read: a few bytes now and then, each in time for
/// a per-write timeout) is cut off and its connection closed, or it could hold its slot
/// and thread for as long as it likes, and 64 such clients every slot, without a token
/// (`/metrics` is open). A 6.5 MB list takes milliseconds over the loopback.
const ANSWER_TIME: Duration = Duration::from_secs(30);

/// Everything the admin API starts with.
pub struct AdminSetup {
    /// Bound by the caller before anything else starts (a start that cannot bind it
    /// changes nothing).
    pub listener: TcpListener,
    pub store: Store,
    pub token: Option<String>,
    pub commit: MailboxSender<CommitMsg>,
    pub workers: Vec<MailboxSender<WorkerMsg>>,
    /// The workers' last snapshots, left as they stop.
    pub finals: FinalSnapshots,
    /// The running endpoints, compiled (kept by the committer).
    pub registry: Registry,
    pub max_line_bytes: usize,
    /// The server's `retention`: how far ahead a posted event's `time` may be.
    pub retention: Duration,
    /// The SSRF guard's switch: off, a definition whose URL is a refused address is.
    pub allow_private_networks: bool,
    /// Set once a shutdown begins: from then on every call that changes something
    /// answers 503, as the ingest sockets stop taking lines (reads still answer while
    /// in-flight attempts drain).
    pub stopping: Arc<AtomicBool>,
    /// The requests being answered, which a stop waits for before the process exits.
    pub answering: Arc<Answering>,
}

/// The admin requests being answered: each from its first byte read to its answer's
/// last written. A stop closes the API and waits for them ([`Answering::close`]): the
/// process's exit cut them off (a `POST /v1/events` accepted but never answered, a page
/// half sent).
pub struct Answering {
    /// How many are being answered; signalled (`done`) when it falls to 0.
    count: Mutex<usize>,
    done: std::sync::Condvar,
    /// Set by [`Answering::close`]: no connection is taken any more, and each answer
    /// closes its connection.
    closed: AtomicBool,
    /// The listener's descriptor (-1 until the API starts).
    listener: std::sync::atomic::AtomicI32,
}

impl Default for Answering {
    fn default() -> Answering {
        Answering {
            count: Mutex::new(0),
            done: std::sync::Condvar::new(),
            closed: AtomicBool::new(false),
            listener: std::sync::atomic::AtomicI32::new(-1),
        }
    }
}

impl Answering {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many are being answered.
    pub fn count(&self) -> usize {
        *self.lock()
    }

    /// Closes the API (the listener, so new connections are refused; each answer from
    /// here on closes its connection, so no client sends another request on it), then
    /// waits until no request is being answered, or `bound` has passed: how many still
    /// are. Without the close, clients that kept calling (a dashboard) held the wait.
    pub fn close(&self, bound: Duration) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        let fd = self.listener.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: the listener's socket, open until the process exits: the admin
            // thread never drops it (once `closed` is set and this shutdown has made its
            // `accept` fail, it parks). Shut, it refuses connections, and the accept the
            // thread waits in fails at once.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
        let (left, _) = self
            .done
            .wait_timeout_while(self.lock(), bound, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *left
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn start(&self) -> AnswerGuard<'_> {
        *self.lock() += 1;
        AnswerGuard(self)
    }
}

/// One request being answered ([`Answering`]), until dropped.
struct AnswerGuard<'a>(&'a Answering);

impl Drop for AnswerGuard<'_> {
    fn drop(&mut self) {
        let mut n = self.0.lock();
        *n -= 1;
        if *n == 0 {
            self.0.done.notify_all();
        }
    }
}

/// Rejects the admin API answers itself (HTTP ingest), for `/metrics`.
#[derive(Default)]
struct HttpCounts {
    invalid: AtomicU64,
    too_large: AtomicU64,
    unavailable: AtomicU64,
}

struct Admin {
    store: Store,
    token: Option<String>,
    commit: MailboxSender<CommitMsg>,
    workers: Vec<MailboxSender<WorkerMsg>>,
    finals: FinalSnapshots,
    registry: Registry,
    max_line_bytes: usize,
    retention: Duration,
    allow_private_networks: bool,
    stopping: Arc<AtomicBool>,
    answering: Arc<Answering>,
    counts: HttpCounts,
    conns: AtomicUsize,
    waiting: Waiting,
    /// Closes connections after their last answer ([`linger`]).
    linger: linger::Linger,
    /// What each worker and the committer last answered a scrape (`metrics.rs`).
    last_seen: Mutex<metrics::LastSeen>,
}

/// How long a connection must have waited for a request, or its request have been
/// arriving, before a new connection may take its slot: one that just connected, or
/// just got its answer, is about to send, and a request of a client that is not
/// trickling it arrives within milliseconds.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// One connection waiting for a request. Its socket is held as its descriptor (not a
/// second handle: that would be a second descriptor for every connection, beyond the
/// reserve counted for the API), which stays the connection's while it is listed: its
/// thread takes it out of the list before it closes the socket, and an eviction shuts
/// it down under the list's lock.
struct Wait {
    ticket: u64,
    /// Since when it waits for a request; once it is `arriving`, since its first byte.
    since: Instant,
    fd: RawFd,
    /// Whether bytes of the request have come.
    arriving: bool,
}

/// The connections waiting for a request, from the end of the last answer (or the
/// connection's start) until the request has arrived whole: a new connection that finds
/// every slot taken closes one of them for its place ([`Self::evict`]). Requests still
/// arriving are listed too: 64 clients that each trickle a request, reconnecting once
/// it times out, otherwise held every slot, and `/health` answered 503.
#[derive(Default)]
struct Waiting {
    inner: Mutex<(u64, Vec<Wait>)>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Wait>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters `conn` as waiting for a request from now; its ticket. The caller takes it
    /// out ([`Self::unpark`]) before `conn` is closed.
    fn park(&self, conn: &TcpStream) -> u64 {
        let mut g = self.lock();
        g.0 += 1;
        let ticket = g.0;
        g.1.push(Wait {
            ticket,
            since: Instant::now(),
            fd: conn.as_raw_fd(),
            arriving: false,
        });
        ticket
    }

    /// Notes that the request's first bytes came: from now it is timed as arriving.
    fn arriving(&self, ticket: u64) {
        if let Some(w) = self.lock().1.iter_mut().find(|w| w.ticket == ticket) {
            w.since = Instant::now();
            w.arriving = true;
        }
    }

    /// Takes the connection out of the list; false if it was evicted meanwhile.
    fn unpark(&self, ticket: u64) -> bool {
        let mut g = self.lock();
        let Some(i) = g.1.iter().position(|w| w.ticket == ticket) else {
            return false;
        };
        g.1.swap_remove(i);
        true
    }

    /// Ends the wait of one connection that has waited `min_wait`, if any; false if none
    /// has. The one idle longest (no byte of a request yet: closing it costs its client
    /// nothing but a new connection), else the one whose request has been arriving
    /// longest (a client trickling it; one that is merely slow gets 408). Only reading
    /// is shut: a request that arrived whole at that moment (its thread read it) is
    /// still answered, on a connection that then closes.
    fn evict(&self, min_wait: Duration) -> bool {
        let mut g = self.lock();
        let longest = |arriving: bool| {
            g.1.iter()
                .enumerate()
                .filter(|(_, w)| w.arriving == arriving && w.since.elapsed() >= min_wait)
                .min_by_key(|(_, w)| w.since)
                .map(|(i, _)| i)
        };
        let Some(i) = longest(false).or_else(|| longest(true)) else {
            return false;
        };
        let fd = g.1.swap_remove(i).fd;
        // SAFETY: `fd` is still the connection's open socket: it was listed until just
        // now, under the lock still held, and its thread closes it only after taking it
        // out of the list under the same lock.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        true
    }
}

/// A taken connection slot ([`MAX_CONNS`]): given back when its thread ends, also by a
/// panic (which drops that request only), so that no slot is lost for good.
struct ConnSlot<'a>(&'a AtomicUsize);

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the API on `setup.listener` in the background; returns its address.
pub fn start(setup: AdminSetup) -> std::io::Result<SocketAddr> {
    let listener = setup.listener;
    let local = listener.local_addr()?;
    setup
        .answering
        .listener
        .store(listener.as_raw_fd(), Ordering::SeqCst);
    let admin = Arc::new(Admin {
        store: setup.store,
        token: setup.token,
        commit: setup.commit,
        workers: setup.workers,
        finals: setup.finals,
        registry: setup.registry,
        max_line_bytes: setup.max_line_bytes,
        retention: setup.retention,
        allow_private_networks: setup.allow_private_networks,
        stopping: setup.stopping,
        answering: setup.answering,
        counts: HttpCounts::default(),
        conns: AtomicUsize::new(0),
        waiting: Waiting::default(),
        linger: linger::Linger::start()?,
        last_seen: Mutex::default(),
    });
    std::thread::Builder::new()
        .name("ricochet-admin".into())
        .spawn(move || {
            let mut failed = crate::tally::Tally::default();
            let mut no_thread = crate::tally::Tally::default();
            for conn in listener.incoming() {
                let conn = match conn {
                    Ok(c) => c,
                    // Closed by a stop ([`Answering::close`]): the thread waits for the
                    // process's exit still holding the API, and with it a handle on the
                    // store, as it did when it accepted until the exit. Returning dropped
                    // what could be the store's last handle, and RocksDB then closed on
                    // this thread while the process exited under it: the stop ended by
                    // a signal instead of exit 0 (once in an integration run).
                    Err(_) if admin.answering.closed() => loop {
                        std::thread::park();
                    },
                    Err(e) => {
                        crate::fdlimit::after_failed_accept(&mut failed, &e, "admin");
                        continue;
                    }
                };
                let (conns, waiting, linger) = (&admin.conns, &admin.waiting, &admin.linger);
                admit(conn, conns, waiting, linger, &mut no_thread, |conn| {
                    spawn_conn_thread(&admin, conn)
                });
            }
        })?;
    Ok(local)
}

/// Takes `conn` in: a slot ([`MAX_CONNS`], a waiting connection evicted for it if every
/// slot is taken: [`Waiting::evict`]) and a thread of its own (`spawn`, which gives
/// `conn` back when no thread could be started). Without either it is answered 503
/// ([`refuse`]); a failed spawn is also logged, once each 10 s with the failures since
/// (`no_thread`).
fn admit(
    conn: TcpStream,
    conns: &AtomicUsize,
    waiting: &Waiting,
    linger: &linger::Linger,
    no_thread: &mut crate::tally::Tally,
    spawn: impl FnOnce(TcpStream) -> Result<(), (TcpStream, std::io::Error)>,
) {
    if conns.fetch_add(1, Ordering::AcqRel) >= MAX_CONNS && !waiting.evict(EVICTABLE_AFTER) {
        conns.fetch_sub(1, Ordering::AcqRel);
        refuse(conn, &error(503, "too many admin connections"), linger);
        return;
    }
    if let Err((conn, e)) = spawn(conn) {
        conns.fetch_sub(1, Ordering::AcqRel);
        if let Some(failures) = no_thread.note(Duration::from_secs(10)) {
            tracing::warn!(
                error = %e,
                failures,
                "cannot start a thread for an admin connection: answered 503"
            );
        }
        refuse(
            conn,
            &error(503, "cannot serve the connection now (no thread)"),
            linger,
        );
    }
}

/// Starts the thread that serves `conn` and takes its slot. `conn` goes to the thread
/// once it runs: a closure that owned it would drop it with a failed spawn, unread and
/// unanswered (a reset for the client), instead of giving it back to be answered.
fn spawn_conn_thread(
    admin: &Arc<Admin>,
    conn: TcpStream,
) -> Result<(), (TcpStream, std::io::Error)> {
    let (handover, take) = std::sync::mpsc::sync_channel::<TcpStream>(1);
    let mine = admin.clone();
    let spawned = std::thread::Builder::new()
        .name(crate::server::ADMIN_CONN_THREAD.into())
        .spawn(move || {
            if let Ok(conn) = take.recv() {
                let _slot = ConnSlot(&mine.conns);
                mine.serve(conn);
            }
        });
    match spawned {
        // Fails only if the thread ended before it took the connection (its slot
        // not taken): the caller answers it as for a failed spawn.
        Ok(_) => handover.send(conn).map_err(|e| {
            (
                e.0,
                std::io::Error::other("the connection's thread ended at once"),
            )
        }),
        Err(e) => Err((conn, e)),
    }
}

/// Answers `resp` on a connection no thread serves, on the accept thread without
/// waiting: one write that does not block (a new connection's send buffer takes a short
/// answer whole), then it lingers ([`linger`]) for the client to read it. Closed with its
/// request unread, the socket would send a reset, which can reach the client before it
/// reads the answer (`ECONNRESET` instead of the 503); read on the accept thread, until
/// the client closed or for 200 ms, a flood of connections that never close held each
/// new one back 200 ms per refusal queued before it (4.1 s behind 20).
fn refuse(conn: TcpStream, resp: &Response, linger: &linger::Linger) {
    let out = response_bytes(resp, false, true);
    if conn.set_nonblocking(true).is_ok() && (&conn).write(&out).is_ok_and(|n| n == out.len()) {
        linger.close(conn, 0);
    }
}

/// One parsed request.
struct Request {
    method: String,
    /// The path without the query, still percent-encoded.
    path: String,
    /// The query string (after `?`), still encoded.
    query: String,
    auth: Option<String>,
    /// The `Host` header, if any.
    host: Option<String>,
    /// Whether an `Origin` header came (a browser's request).
    origin: bool,
    close: bool,
    body: Vec<u8>,
}

/// A request refused before routing: answer, then drop up to `discard` body bytes.
struct Reject {
    resp: Response,
    discard: usize,
    /// An event too large for `POST /v1/events` (counted as the socket's `too_large`).
    event_too_large: bool,
}

pub(crate) struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

/// `body` as JSON. Objects keep the order they serialise in: a struct's fields, and a
/// `Value`'s keys as they were inserted (serde_json's `preserve_order`).
fn json_response(status: u16, body: &impl serde::Serialize) -> Response {
    Response {
        status,
        content_type: "application/json",
        headers: Vec::new(),
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

fn error(status: u16, msg: impl Into<String>) -> Response {
    json_response(status, &json!({ "error": msg.into() }))
}

/// 405, with the methods the resource takes (RFC 9110 §15.5.6: `Allow` is required).
fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = error(405, format!("method not allowed (allowed: {allow})"));
    r.headers.push(("Allow", allow));
    r
}

/// The standard reason phrase of `status` (RFC 9110).
fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// The host of a `Host` header without its port; `None` when the header is not `host`
/// or `host:port` (RFC 9112 §3.2 asks for a 400 then): a port is digits only, an IPv6
/// address is in brackets.
fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        (
            ip,
            if after.is_empty() {
                None
            } else {
                Some(after.strip_prefix(':')?)
            },
        )
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()));
    // Empty is allowed (RFC 9112 §3.2: for a target without an authority); with a port,
    // a name must come before it.
    let name_ok = (!name.is_empty() || port.is_none())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:%!$&'()*+;=".contains(&b));
    (port_ok && name_ok).then_some(name)
}

/// Whether a `Host` header names the loopback: `localhost` (or a name under it),
/// 127.0.0.0/8 or `[::1]` (`[::ffff:127.0.0.1]` too), with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    // `localhost` itself, or any name under it (its last label).
    name.rsplit('.')
        .next()
        .is_some_and(|label| label.eq_ignore_ascii_case("localhost"))
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 7235), spaces may separate it from the token.
fn bearer_token(auth: &str) -> Option<&str> {
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

impl Admin {
    fn serve(&self, mut conn: TcpStream) {
        // Reached through a loopback address (also when bound to a wildcard one):
        // `Host` must name this machine's loopback.
        // (`to_canonical`: on a dual-stack `[::]` bind, 127.0.0.1 is `::ffff:127.0.0.1`.)
        let loopback = conn
            .local_addr()
            .is_ok_and(|a| a.ip().to_canonical().is_loopback());
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        loop {
            // From here until the request has arrived whole, a new connection may take
            // this one's slot (`Waiting::evict`).
            let ticket = self.waiting.park(&conn);
            if buf.is_empty() {
                let _ = conn.set_read_timeout(Some(IDLE));
                match conn.read(&mut chunk) {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    // Closed by its client, idle too long, or evicted: nothing to answer.
                    _ => {
                        self.waiting.unpark(ticket);
                        return;
                    }
                }
            }
            self.waiting.arriving(ticket);
            // Until its answer is written (this iteration's end, or a return).
            let _answering = self.answering.start();
            let read = read_request(&mut conn, &mut buf, Instant::now() + REQUEST_TIME);
            // Evicted meanwhile: a request that came whole is answered, and is the last.
            let evicted = !self.waiting.unpark(ticket);
            let (resp, keep_alive, body, discard) = match read {
                Ok(Some(req)) => {
                    let resp = self.route(&req, loopback);
                    (
                        resp,
                        !(req.close || evicted || self.answering.closed()),
                        req.method != "HEAD",
                        0,
                    )
                }
                Ok(None) if evicted => (
                    error(
                        408,
                        "request not complete when a new connection needed its slot (every \
                         admin connection was taken)",
                    ),
                    false,
                    true,
                    0,
                ),
                Ok(None) => return,
                Err(Reject {
                    resp,
                    discard,
                    event_too_large,
                }) => {
                    if event_too_large {
                        self.counts.too_large.fetch_add(1, Ordering::Relaxed);
                    }
                    (resp, false, true, discard)
                }
            };
            let by = Instant::now() + ANSWER_TIME;
            if write_response(&mut conn, &resp, keep_alive, body, by).is_err() {
                return;
            }
            if !keep_alive {
                // What the client still sends (the rest of a refused request, requests
                // pipelined after the last) is read and dropped, or the close would
                // reset the connection, and the answer be lost with it.
                self.linger.close(conn, discard);
                return;
            }
        }
    }

    fn route(&self, req: &Request, loopback: bool) -> Response {
        if req.origin {
            return error(
                403,
                "requests from web pages (with an Origin header) are refused",
            );
        }
        if req.host.as_deref().is_some_and(|h| host_name(h).is_none()) {
            return error(400, "malformed Host header (expected host or host:port)");
        }
        // An empty `Host` is as none (a browser always names the host it asks).
        let host = req.host.as_deref().filter(|h| !h.trim().is_empty());
        if loopback && !host.is_none_or(is_loopback_host) {
            return error(
                403,
                "the Host header must name this machine's loopback (localhost, 127.0.0.1, [::1])",
            );
        }
        let path = req.path.as_str();
        // HEAD is GET without the body (RFC 9110 §9.3.2): `serve` leaves the body out.
        let method = match req.method.as_str() {
            "HEAD" => "GET",
            m => m,
        };
        match path {
            "/health" if method == "GET" => return json_response(200, &json!({ "status": "ok" })),
            "/health" => return method_not_allowed("GET, HEAD"),
            "/metrics" if method == "GET" => return self.metrics(),
            "/metrics" => return method_not_allowed("GET, HEAD"),
            _ => {}
        }
        if path == "/v1" || path.starts_with("/v1/") {
            if let Some(token) = &self.token {
                let given = req.auth.as_deref().and_then(bearer_token).unwrap_or("");
                if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    let mut r = error(401, "missing or wrong bearer token");
                    r.headers.push(("WWW-Authenticate", "Bearer"));
                    return r;
                }
            }
        }
        // A shutdown takes no new work: an event taken now would wait for the next
        // start, and a replay's or an enable's deliveries too.
        if self.stopping.load(Ordering::SeqCst) && !matches!(method, "GET") {
            if path == "/v1/events" && method == "POST" {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
            }
            return error(503, "server is shutting down");
        }
        let params = Params::parse(&req.query);
        if path == "/v1/endpoints" {
            if !matches!(method, "GET" | "POST") {
                return method_not_allowed("GET, HEAD, POST");
            }
            if let Err(r) = params.only(&[]) {
                return r;
            }
            return match method {
                "GET" => self.list_endpoints(),
                _ => self.create_endpoint(&req.body),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/endpoints/") {
            return self.endpoint_call(method, rest, &params, &req.body);
        }
        if path == "/v1/events" {
            return match method {
                "POST" => match params.only(&[]) {
                    Ok(()) => self.ingest(&req.body),
                    Err(r) => r,
                },
                "GET" => self.list_events(&params),
                _ => method_not_allowed("GET, HEAD, POST"),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/events/") {
            if let Some(id) = rest.strip_suffix("/replay") {
                return match method {
                    "POST" => self.replay(&percent_decode(id), &params),
                    _ => method_not_allowed("POST"),
                };
            }
            if rest.contains('/') {
                return error(404, "no such resource");
            }
            if method != "GET" {
                return method_not_allowed("GET, HEAD");
            }
            if let Err(r) = params.only(&[]) {
                return r;
            }
            return self.get_event(&percent_decode(rest));
        }
        error(404, "no such resource")
    }
}

/// Reads one request into `buf` by `deadline` (`buf` may hold its first bytes already,
/// and keeps any bytes of the next one). `Ok(None)`: the peer closed or failed before a
/// whole request.
fn read_request(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Option<Request>, Reject> {
    let reject = |status, msg: &str| Reject {
        event_too_large: false,
        resp: error(status, msg),
        discard: 0,
    };
    let mut chunk = [0u8; 8192];
    let (head_len, mut req, content_length, expect_continue) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut content_length: Option<usize> = None;
                // The absolute form (`GET http://host/path`, RFC 9112 §3.2.2): its
                // authority stands for `Host`.
                let (target, authority) = split_absolute(r.path.unwrap_or("/"));
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let path = if path.is_empty() { "/" } else { path };
                let mut req = Request {
                    method: r.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    auth: None,
                    host: None,
                    origin: false,
                    close: r.version == Some(0),
                    body: Vec::new(),
                };
                let mut expect_continue = false;
                // What the `Connection` headers say, if anything.
                let mut close: Option<bool> = None;
                for h in r.headers.iter() {
                    let name = h.name;
                    if name.eq_ignore_ascii_case("content-length") {
                        let v = std::str::from_utf8(h.value)
                            .ok()
                            .map(str::trim)
                            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|v| v.parse::<usize>().ok());
                        match (v, content_length) {
                            (None, _) => return Err(reject(400, "bad Content-Length")),
                            (Some(a), Some(b)) if a != b => {
                                return Err(reject(400, "conflicting Content-Length headers"))
                            }
                            (Some(a), _) => content_length = Some(a),
                        }
                    } else if name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(reject(
                            411,
                            "send the body with Content-Length (Transfer-Encoding is not supported)",
                        ));
                    } else if name.eq_ignore_ascii_case("authorization") {
                        if req.auth.is_some() {
                            return Err(reject(400, "more than one Authorization header"));
                        }
                        req.auth = Some(String::from_utf8_lossy(h.value).into_owned());
                    } else if name.eq_ignore_ascii_case("host") {
                        // RFC 9112 §3.2: more than one is a 400.
                        if req.host.is_some() {
                            return Err(reject(400, "more than one Host header"));
                        }
                        req.host = Some(String::from_utf8_lossy(h.value).into_owned());
                    } else if name.eq_ignore_ascii_case("origin") {
                        req.origin = true;
                    } else if name.eq_ignore_ascii_case("connection") {
                        // A list of options (`TE, close`), or several headers: `close`
                        // wins; `keep-alive` keeps an HTTP/1.0 connection open.
                        for opt in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                            if opt.eq_ignore_ascii_case(b"close") {
                                close = Some(true);
                            } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                                close.get_or_insert(false);
                            }
                        }
                    } else if name.eq_ignore_ascii_case("expect") {
                        expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
                    }
                }
                if let Some(c) = close {
                    req.close = c;
                }
                if let Some(a) = authority {
                    req.host = Some(a.to_string());
                }
                // RFC 9112 §3.2: an HTTP/1.1 request without one is a 400.
                if r.version == Some(1) && req.host.is_none() {
                    return Err(reject(400, "missing Host header"));
                }
                break (n, req, content_length.unwrap_or(0), expect_continue);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(reject(431, "request head over 16 KiB"));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(reject(431, "more than 64 header fields"));
            }
            Err(_) => return Err(reject(400, "malformed request")),
        }
        match read_by(conn, &mut chunk, deadline)? {
            None => return Ok(None),
            Some(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if content_length > MAX_BODY {
        let already = buf.len() - head_len;
        return Err(Reject {
            event_too_large: req.method == "POST" && req.path == "/v1/events",
            resp: error(413, "request body over 1 MiB"),
            discard: if expect_continue {
                0
            } else {
                content_length - already.min(content_length)
            },
        });
    }
    let total = head_len + content_length;
    if buf.len() < total && expect_continue {
        let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
        if write_by(conn, cont, deadline).is_err() {
            return Ok(None);
        }
    }
    while buf.len() < total {
        match read_by(conn, &mut chunk, deadline)? {
            None => return Ok(None),
            Some(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    req.body = buf[head_len..total].to_vec();
    buf.drain(..total);
    Ok(Some(req))
}

/// A request target in absolute form split into its origin form and its authority
/// (`http://h:1/p?q` → (`/p?q`, `h:1`); the path may come out empty, for `/`); any
/// other target as it is.
fn split_absolute(target: &str) -> (&str, Option<&str>) {
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|s| &target[s.len()..])
    });
    let Some(rest) = rest else {
        return (target, None);
    };
    let i = rest.find(['/', '?']).unwrap_or(rest.len());
    (&rest[i..], Some(&rest[..i]))
}

/// One read that gives up at `deadline` with a 408; `None` when the peer closed or failed.
fn read_by(
    conn: &mut TcpStream,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<Option<usize>, Reject> {
    let too_slow = || Reject {
        event_too_large: false,
        resp: error(
            408,
            format!("request not complete within {} s", REQUEST_TIME.as_secs()),
        ),
        discard: 0,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(too_slow());
    }
    let _ = conn.set_read_timeout(Some(left));
    match conn.read(chunk) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(too_slow())
        }
        Err(_) => Ok(None),
    }
}

/// Writes `r` by `deadline` ([`write_by`]); without `body` (an answer to `HEAD`) only
/// its head, whose `Content-Length` is still the body's.
fn write_response(
    conn: &mut TcpStream,
    r: &Response,
    keep_alive: bool,
    body: bool,
    deadline: Instant,
) -> std::io::Result<()> {
    write_by(conn, &response_bytes(r, keep_alive, body), deadline)
}

/// `r` as it goes on the wire ([`write_response`]).
fn response_bytes(r: &Response, keep_alive: bool, body: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in &r.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if body {
        out.extend_from_slice(&r.body);
    }
    out
}

/// Writes all of `bytes` by `deadline`, or fails (`TimedOut`): a write timeout alone
/// bounds each write, and a client that reads a little before each runs out would keep
/// the writer for as long as it pleases.
fn write_by(conn: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let _ = conn.set_write_timeout(Some(left));
        match conn.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// RFC 3339 UTC with exactly three digits of milliseconds, so that times of one width
/// sort as text (`…:39.670Z` before `…:39.671Z`).
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Compares the SHA-256 digests of the two, byte for byte without an early end, so the
/// time taken says nothing of the token, its length included (a length check first
/// told a caller how long the token is).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest;
    let (a, b) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A request's query parameters, decoded (`+` is a space).
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    fn parse(q: &str) -> Params {
        Params(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (
                        percent_decode(&k.replace('+', " ")),
                        percent_decode(&v.replace('+', " ")),
                    )
                })
                .collect(),
        )
    }

    /// The last value of `key`; empty values count as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// 400 naming the first parameter not in `known`, or given twice: a misspelt
    /// filter would widen what a call does (`recover?sinec=…` would re-deliver every
    /// failed delivery, `GET /v1/events?stauts=failed` list the whole log), and of two
    /// values one would be ignored. A call that takes none passes `&[]`: a filter it
    /// ignored (`GET /v1/endpoints?enabled=false`) would answer something else than
    /// was asked.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), Response> {
        for (i, (k, _)) in self.0.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                let takes = match known {
                    [] => "none".to_string(),
                    _ => known.join(", "),
                };
                return Err(error(
                    400,
                    format!("unknown query parameter {k:?} (this call takes {takes})"),
                ));
            }
            if self.0[..i].iter().any(|(seen, _)| seen == k) {
                return Err(error(400, format!("query parameter {k:?} given twice")));
            }
        }
        Ok(())
    }

    /// [`only`](Self::only), and 400 for a parameter given with no value, for the calls
    /// that change state (`replay`, `recover`): there an empty value read as absent
    /// widens what is done (`replay?endpoint=$EP` with `EP` unset would replay to every
    /// endpoint, `recover?since=$SINCE` the whole log). A listing takes an empty filter
    /// as none, as SPEC §7 writes the call (`?type=&endpoint=…`).
    pub(crate) fn only_with_values(&self, known: &[&str]) -> Result<(), Response> {
        self.only(known)?;
        match self.0.iter().find(|(_, v)| v.is_empty()) {
            Some((k, _)) => Err(error(
                400,
                format!("query parameter {k:?} has no value (leave it out to not give it)"),
            )),
            None => Ok(()),
        }
    }

    /// A time given as RFC 3339 or unix milliseconds, as unix ms. An RFC 3339 time
    /// between two milliseconds counts as the next one: the log keeps acceptance times to
    /// the millisecond (`created`), and `created >= since`, `created < until` with a
    /// `since` or `until` of `…41.3505Z` hold for `created` `…41.351Z` and on, and
    /// `…41.350Z` and before, as a window read down to the millisecond would have them.
    fn time_ms(&self, key: &str) -> Result<Option<u64>, Response> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let ms = match v.parse::<u64>() {
            // Unix seconds (a receiver's `webhook-timestamp`, say) read as milliseconds
            // would be a time in 1970 and widen the window to the whole log: a
            // `recover` would send every failed delivery again. 0 (the beginning) is
            // meant as written, and so is an RFC 3339 time, whatever its year.
            Ok(ms) if ms != 0 && crate::ingest::parse::looks_like_seconds(ms) => {
                return Err(error(
                    400,
                    format!(
                        "{key}: {v:?} is before 1973-03-03 as unix milliseconds: unix seconds? \
                         (unix milliseconds or RFC 3339 expected; 0 for the beginning)"
                    ),
                ));
            }
            Ok(ms) => ms,
            Err(_) => {
                time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .and_then(|t| {
                        // Before 1970 (however little) is refused, not rounded to 0;
                        // the last millisecond of 9999 is not rounded past the bound.
                        let ns = u128::try_from(t.unix_timestamp_nanos()).ok()?;
                        let ms = u64::try_from(ns.div_ceil(1_000_000)).ok()?;
                        let max = crate::ingest::parse::MAX_TIME_MS;
                        Some(if ns / 1_000_000 == u128::from(max) {
                            max
                        } else {
                            ms
                        })
                    })
                    .ok_or_else(|| {
                        // A `+02:00` offset unencoded in the query reads as a space.
                        let hint = if v.contains(' ') {
                            " (a `+` in a query string is a space: write an offset's as %2B)"
                        } else {
                            ""
                        };
                        error(
                            400,
                            format!("{key}: {v:?} is neither RFC 3339 nor unix milliseconds{hint}"),
                        )
                    })?
            }
        };
        // Past the year 9999 (UTC) nothing is logged, and such a value is no millisecond
        // time (nanoseconds, a typo; an offset west of 9999-12-31T23:59:59): refused, not
        // wrapped into some other time.
        if ms > crate::ingest::parse::MAX_TIME_MS {
            return Err(error(
                400,
                format!(
                    "{key}: {v:?} is after 9999-12-31T23:59:59.999Z (unix milliseconds expected)"
                ),
            ));
        }
        Ok(Some(ms))
    }

    /// `since` and `until` ([`Self::time_ms`]), refused when `since` is later than
    /// `until` (an upside-down window is a mistake, not an empty answer). `since` equal
    /// to `until` is a window of one instant, empty since `until` is exclusive, and
    /// answered empty.
    pub(crate) fn window(&self) -> Result<(Option<u64>, Option<u64>), Response> {
        let since = self.time_ms("since")?;
        let until = self.time_ms("until")?;
        if let (Some(s), Some(u)) = (since, until) {
            if s > u {
                return Err(error(
                    400,
                    format!("since ({}) is after until ({})", rfc3339(s), rfc3339(u)),
                ));
            }
        }
        Ok((since, until))
    }
}

/// Waits for a committer's answer, bounded.
fn await_reply<T>(rx: crossbeam_channel::Receiver<T>) -> Result<T, Response> {
    rx.recv_timeout(COMMIT_WAIT).map_err(|_| {
        error(
            503,
            "no answer from the committer in time; the change may or may not be applied",
        )
    })
}

/// How long a call waits for the committer before answering 503.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Held while a list (`GET /v1/endpoints`, `GET /v1/events`) is built: one at a time.
/// With 10,000 endpoints a list takes ~55 MB while it is built (6.5 MB of JSON), and 16
/// built at once left the process at 1 GB (the allocators keep their high-water mark).
static LISTING: Mutex<()> = Mutex::new(());

/// [`LISTING`], held by the caller until it drops the guard.
fn one_list_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    LISTING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held while the page of an event routed to many endpoints is built
/// (`GET /v1/events/{id}`): one at a time, beside the lists (a list waiting 3 s behind
/// sixteen 27 MB pages, with one lock for both).
static BIG_EVENT: Mutex<()> = Mutex::new(());

/// [`BIG_EVENT`], held by the caller until it drops the guard.
fn one_big_event_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    BIG_EVENT.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::Tally;
    use std::net::Shutdown;

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let p = Params::parse("since=1&until=2");
        assert!(p.only(&["since", "until"]).is_ok());
        let p = Params::parse("sinec=1");
        let r = p.only(&["since", "until"]).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(Params::parse("").only(&[]).is_ok());
        // A parameter without a value, as a script with an unset variable sends it: a
        // 400 where it would widen a change, no filter in a listing.
        for q in ["endpoint=", "endpoint", "since=&until=2"] {
            let known = ["endpoint", "since", "until"];
            let r = Params::parse(q).only_with_values(&known).unwrap_err();
            assert_eq!(r.status, 400, "{q}");
            assert!(
                String::from_utf8(r.body).unwrap().contains("has no value"),
                "{q}"
            );
            assert!(Params::parse(q).only(&known).is_ok(), "{q}");
        }
        let r = Params::parse("since=1&until=2&since=3")
            .only(&["since", "until"])
            .unwrap_err();
        assert_eq!(
            (r.status, String::from_utf8(r.body).unwrap()),
            (
                400,
                r#"{"error":"query parameter \"since\" given twice"}"#.to_string()
            )
        );
    }

    #[test]
    fn a_window_in_unix_seconds_or_upside_down_is_refused() {
        let window = |q: &str| {
            Params::parse(q)
                .window()
                .map_err(|r| (r.status, String::from_utf8(r.body).unwrap()))
        };
        // A receiver's `webhook-timestamp` (seconds) read as milliseconds was 1970-01-21:
        // the whole log.
        let (status, body) = window("since=1796465842").unwrap_err();
        assert_eq!(status, 400);
        assert!(body.contains("unix seconds?"), "{body}");
        assert!(window("until=99999999999").is_err());
        assert_eq!(window("since=0").unwrap(), (Some(0), None));
        // Written as RFC 3339, a time in 1970 is what it says.
        assert_eq!(
            window("since=1970-01-01T00:00:00.001Z").unwrap(),
            (Some(1), None)
        );
        // And one before 1970 is refused, however little before (rounded towards zero
        // it was read as 0, the beginning, as ingest's `time` was: helper ingestaudit).
        assert!(window("since=1969-12-31T23:59:59.9999Z").is_err());
        assert!(window("since=1969-12-31T23:59:59.999Z").is_err());
        assert_eq!(
            window("since=1796465842111&until=2026-12-31T00:00:00Z").unwrap(),
            (Some(1_796_465_842_111), Some(1_798_675_200_000))
        );
        let (status, body) =
            window("since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z").unwrap_err();
        assert_eq!(status, 400);
        assert!(
            body.contains(
                "since (2026-12-02T00:00:00.000Z) is after until (2026-12-01T00:00:00.000Z)"
            ),
            "{body}"
        );
        // An empty window of one instant is no mistake: `until` is exclusive.
        assert!(window("since=1796465842111&until=1796465842111").is_ok());
        // An offset's `+` unencoded is a space: said so.
        let (_, body) = window("since=2026-12-05T22:00:00+02:00").unwrap_err();
        assert!(body.contains("write an offset's as %2B"), "{body}");
        assert_eq!(
            window("since=2026-12-05T22:00:00%2B02:00").unwrap(),
            (Some(1_796_500_800_000), None)
        );
    }

    /// The log shows acceptance times to the millisecond (`created`). A window bound
    /// between two milliseconds was cut down to the one before: `until=…58.7385Z` left out
    /// the event `created` at `…58.738Z` (before it), and `since=…58.7385Z` took it in.
    #[test]
    fn a_window_bound_between_milliseconds_counts_as_the_next_one() {
        let window = |q: &str| Params::parse(q).window().map_err(|r| r.status);
        let created = 1_796_677_618_738; // 2026-12-07T21:06:58.738Z
        assert_eq!(
            window("since=2026-12-07T21:06:58.7385Z&until=2026-12-07T21:06:58.738000001Z"),
            Ok((Some(created + 1), Some(created + 1)))
        );
        // A whole millisecond stays as it is, however many zeros follow it.
        assert_eq!(
            window("since=2026-12-07T21:06:58.738Z&until=2026-12-07T21:06:58.738000000Z"),
            Ok((Some(created), Some(created)))
        );
        // The last instant of 9999 is not rounded past the largest time taken.
        assert_eq!(
            window("until=9999-12-31T23:59:59.9999Z"),
            Ok((None, Some(crate::ingest::parse::MAX_TIME_MS)))
        );
        assert!(window("since=1969-12-31T23:59:59.9999999Z").is_err());
    }

    #[test]
    fn times_have_three_digits_of_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_000_479_670), "2026-11-30T01:01:19.670Z");
        assert_eq!(rfc3339(1_796_000_479_700), "2026-11-30T01:01:19.700Z");
        assert_eq!(rfc3339(1_796_000_479_001), "2026-11-30T01:01:19.001Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn loopback_host_names() {
        for h in [
            "localhost",
            "LOCALHOST:7878",
            "localhost.",
            "api.localhost:80",
            "127.0.0.1",
            "127.0.0.1:7878",
            "127.9.8.7:1",
            "[::1]",
            "[::1]:7878",
            "[::ffff:127.0.0.1]:7878",
            "localhost:",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "x",
            "evil.example",
            "evil.example:7878",
            "localhost.evil.example",
            "notlocalhost",
            "10.0.0.1:7878",
            "[::2]:7878",
            "[::1]x",
            "127.0.0.1.evil.example",
            // Not a port after the colon (malformed: a 400 before this is asked).
            "127.0.0.1:evil.example",
            "localhost:@evil.example",
            "127.0.0.1:7878, evil",
            "[::1]:x",
            "localhost:7878:1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        for h in [
            "127.0.0.1:evil.example",
            "a b",
            "[::1",
            "[::1]7878",
            "x/y",
            "localhost:80:1",
        ] {
            assert_eq!(host_name(h), None, "{h}");
        }
        assert_eq!(host_name(" api.example:8080 "), Some("api.example"));
        assert_eq!(host_name(""), Some(""));
        assert_eq!(host_name(":80"), None);
        assert_eq!(host_name("[::1]:1"), Some("::1"));
    }

    #[test]
    fn helpers() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(percent_decode("%é%"), "%é%");
        // Two hex digits, no sign: `from_str_radix` takes a leading `+`, which made
        // `%+1` a name of the byte 1 (`/v1/events/%+41` read event `A`).
        assert_eq!(percent_decode("%+1%+41%-1"), "%+1%+41%-1");
        assert_eq!(percent_decode("%41%7e"), "A~");
    }

    #[test]
    fn every_status_sent_has_its_reason_phrase() {
        assert_eq!(reason(504), "Gateway Timeout");
        assert_eq!(reason(500), "Internal Server Error");
        assert_eq!(reason(431), "Request Header Fields Too Large");
        // Every literal status the API answers with, wherever it is written.
        let sources = [
            include_str!("mod.rs"),
            include_str!("endpoints.rs"),
            include_str!("events.rs"),
            include_str!("metrics.rs"),
        ];
        let mut seen = 0;
        for src in sources {
            for call in ["error(", "json_response(", "status: "] {
                for (i, _) in src.match_indices(call) {
                    let rest = &src[i + call.len()..];
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if digits.len() == 3 {
                        let status: u16 = digits.parse().unwrap();
                        let want = http::StatusCode::from_u16(status)
                            .unwrap()
                            .canonical_reason()
                            .unwrap_or_else(|| panic!("{status} is no standard status"));
                        assert_eq!(reason(status), want);
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 20, "found only {seen} statuses");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer tok"), Some("tok"));
        assert_eq!(bearer_token("bearer tok"), Some("tok"));
        assert_eq!(bearer_token("BEARER  tok"), Some("tok"));
        assert_eq!(bearer_token("Basic tok"), None);
        assert_eq!(bearer_token("Bearertok"), None);
        assert_eq!(bearer_token("tok"), None);
    }

    /// Runs `read_request` over `raw` sent by a client socket; returns what it made of it.
    fn read_raw(raw: &[u8]) -> Result<Option<(String, String, Vec<u8>)>, u16> {
        read_req(raw).map(|r| r.map(|r| (r.method, r.path, r.body)))
    }

    fn read_req(raw: &[u8]) -> Result<Option<Request>, u16> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let raw = raw.to_vec();
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            let _ = c.write_all(&raw);
            let _ = c.shutdown(Shutdown::Write);
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        });
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        let r = read_request(&mut s, &mut buf, Instant::now() + Duration::from_secs(5));
        drop(s);
        client.join().unwrap();
        r.map_err(|rej| rej.resp.status)
    }

    #[test]
    fn a_request_trickled_in_past_its_deadline_is_answered_408() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (done, stop) = std::sync::mpsc::channel::<()>();
        // A byte every 20 ms: each read finds one, the request is never complete.
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            for b in b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
                .iter()
                .cycle()
            {
                if c.write_all(&[*b]).is_err()
                    || stop.recv_timeout(Duration::from_millis(20)).is_ok()
                {
                    return;
                }
            }
        });
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        let start = Instant::now();
        let r = read_request(&mut s, &mut buf, start + Duration::from_millis(300));
        let waited = start.elapsed();
        done.send(()).unwrap();
        client.join().unwrap();
        assert_eq!(r.err().map(|r| r.resp.status), Some(408));
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(buf.len() > 1, "the bytes trickled in: {}", buf.len());
    }

    /// Sets a socket buffer's size (`SO_RCVBUF`, `SO_SNDBUF`), which also stops the
    /// kernel from growing it.
    fn buffer_size(s: &TcpStream, opt: libc::c_int, bytes: libc::c_int) {
        // SAFETY: a valid socket and an int option of the right size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }

    #[test]
    fn an_answer_read_too_slowly_is_cut_off_at_its_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (done, stop) = std::sync::mpsc::channel::<()>();
        // A slow reader (1 MB/s: 16 KiB every 15 ms, through 64 KiB buffers), so that
        // each write of the answer makes some progress well within any per-write
        // timeout; it gives up after 3 s (the answer would take 16 s at that pace).
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            buffer_size(&c, libc::SO_RCVBUF, 64 << 10);
            let started = Instant::now();
            let mut chunk = vec![0u8; 16 << 10];
            let mut got = 0;
            while started.elapsed() < Duration::from_secs(3) {
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
                if stop.recv_timeout(Duration::from_millis(15)).is_ok() {
                    break;
                }
            }
            got
        });
        let (mut s, _) = l.accept().unwrap();
        buffer_size(&s, libc::SO_SNDBUF, 64 << 10);
        let big = Response {
            status: 200,
            content_type: "application/json",
            headers: Vec::new(),
            body: vec![b' '; 16 << 20],
        };
        let start = Instant::now();
        let r = write_response(
            &mut s,
            &big,
            false,
            true,
            start + Duration::from_millis(300),
        );
        let took = start.elapsed();
        let _ = done.send(());
        drop(s);
        let read = client.join().unwrap();
        assert!(r.is_err(), "a 16 MiB answer cannot have been read");
        assert!(read > 0, "the client read some of it");
        assert!(
            took < Duration::from_millis(1500),
            "cut off at its deadline (300 ms), not when the client gave up (3 s): {took:?}"
        );
    }

    #[test]
    fn the_connection_idle_longest_is_evicted_first_then_the_request_arriving_longest() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let pair = || {
            let c = TcpStream::connect(addr).unwrap();
            (c, l.accept().unwrap().0)
        };
        let waiting = Waiting::default();
        let (mut c1, mut s1) = pair();
        let (_c2, s2) = pair();
        let (_c3, s3) = pair();
        let (_c4, s4) = pair();
        let (_c5, s5) = pair();
        let t1 = waiting.park(&s1);
        let t2 = waiting.park(&s2);
        let t3 = waiting.park(&s3);
        let t4 = waiting.park(&s4);
        let t5 = waiting.park(&s5);
        assert!(waiting.unpark(t2), "a request came whole on the second");
        // The fourth's request begins to arrive, then the fifth's: both are younger
        // as arriving requests than the first and third are as idle connections.
        waiting.arriving(t4);
        waiting.arriving(t5);
        assert!(
            !waiting.evict(Duration::from_secs(3600)),
            "none has waited an hour"
        );
        assert!(waiting.evict(Duration::ZERO));
        assert!(!waiting.unpark(t1), "the first was evicted");
        // Its reading side is shut: its thread's read ends; it could still answer.
        let mut b = [0u8; 1];
        assert_eq!(s1.read(&mut b).unwrap(), 0);
        (&s1).write_all(b"HTTP/1.1 503 x\r\n\r\n").unwrap();
        drop(s1);
        let mut got = Vec::new();
        c1.read_to_end(&mut got).unwrap();
        assert!(got.starts_with(b"HTTP/1.1 503"), "{got:?}");
        // The idle ones go first, whatever the age of the arriving ones.
        assert!(waiting.evict(Duration::ZERO));
        assert!(!waiting.unpark(t3));
        // Then the request arriving longest: the fourth.
        assert!(waiting.evict(Duration::ZERO));
        assert!(!waiting.unpark(t4));
        assert!((&s4).read(&mut b).is_ok_and(|n| n == 0));
        assert!(waiting.unpark(t5), "the fifth still waits");
        assert!(!waiting.evict(Duration::ZERO), "none waits");
    }

    /// A client whose request has reached the server, and the server's end of its
    /// connection, accepted, the request unread (what a close would answer with a reset).
    fn client_with_request_sent(l: &TcpListener) -> (TcpStream, TcpStream) {
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (s, _) = l.accept().unwrap();
        s.peek(&mut [0u8; 1]).unwrap();
        (c, s)
    }

    /// What a client reading to the end gets, on a thread of its own; a reset fails it.
    fn read_answer(mut c: TcpStream) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).expect("the whole answer, no reset");
            String::from_utf8_lossy(&got).into_owned()
        })
    }

    #[test]
    fn a_connection_no_thread_could_be_started_for_is_answered_503_not_reset() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (c, s) = client_with_request_sent(&l);
        let (conns, waiting) = (AtomicUsize::new(0), Waiting::default());
        let linger = linger::Linger::start().unwrap();
        let client = read_answer(c);
        // The spawn fails as out of threads or memory: the connection comes back.
        admit(
            s,
            &conns,
            &waiting,
            &linger,
            &mut Tally::default(),
            |conn| Err((conn, std::io::Error::from_raw_os_error(libc::EAGAIN))),
        );
        let got = client.join().unwrap();
        assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
        assert!(got.contains("no thread"), "{got}");
        assert_eq!(conns.load(Ordering::Acquire), 0, "its slot is given back");
    }

    #[test]
    fn a_connection_over_the_cap_is_answered_503_not_reset() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (c, s) = client_with_request_sent(&l);
        // Every slot taken, none idle to evict.
        let (conns, waiting) = (AtomicUsize::new(MAX_CONNS), Waiting::default());
        let linger = linger::Linger::start().unwrap();
        let client = read_answer(c);
        admit(s, &conns, &waiting, &linger, &mut Tally::default(), |_| {
            panic!("no thread for a connection over the cap")
        });
        let got = client.join().unwrap();
        assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
        assert!(got.contains("too many admin connections"), "{got}");
        assert_eq!(conns.load(Ordering::Acquire), MAX_CONNS);
    }

    #[test]
    fn a_connection_s_slot_comes_back_when_its_thread_panics() {
        let conns = Arc::new(AtomicUsize::new(2));
        let c = conns.clone();
        let ended = std::thread::spawn(move || {
            let _slot = ConnSlot(&c);
            panic!("a bug answering one request");
        })
        .join();
        assert!(ended.is_err());
        assert_eq!(conns.load(Ordering::Acquire), 1);
    }

    #[test]
    fn connection_host_and_target_forms() {
        let req = |raw: &str| read_req(raw.as_bytes()).unwrap().unwrap();
        let close = |conn: &str| {
            req(&format!(
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: {conn}\r\n\r\n"
            ))
            .close
        };
        assert!(close("close"));
        assert!(close("TE, close"));
        assert!(close("keep-alive ,CLOSE"));
        assert!(!close("keep-alive"));
        assert!(!close("TE"));
        assert!(
            req("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
                .close
        );
        assert!(req("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!req("GET / HTTP/1.0\r\nConnection: te, Keep-Alive\r\n\r\n").close);
        // HTTP/1.1 needs a Host; HTTP/1.0 does not.
        assert_eq!(read_raw(b"GET / HTTP/1.1\r\n\r\n").err(), Some(400));
        // The absolute form: its authority is the Host.
        let r = req(
            "GET http://127.0.0.1:7878/v1/events?limit=2 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        );
        assert_eq!(
            (r.path.as_str(), r.query.as_str(), r.host.as_deref()),
            ("/v1/events", "limit=2", Some("127.0.0.1:7878"))
        );
        let r = req("GET HTTP://localhost HTTP/1.1\r\n\r\n");
        assert_eq!(
            (r.path.as_str(), r.host.as_deref()),
            ("/", Some("localhost"))
        );
        // More header fields than are read: 431, as a head too large.
        let mut many = "GET / HTTP/1.1\r\nHost: h\r\n".to_string();
        for i in 0..64 {
            many.push_str(&format!("X-{i}: 1\r\n"));
        }
        assert_eq!(read_raw(format!("{many}\r\n").as_bytes()).err(), Some(431));
    }

    #[test]
    fn requests_are_read_or_refused_with_a_status() {
        let (m, p, b) =
            read_raw(b"POST /v1/events?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
                .unwrap()
                .unwrap();
        assert_eq!(
            (m.as_str(), p.as_str(), &b[..]),
            ("POST", "/v1/events", &b"abc"[..])
        );
        assert_eq!(read_raw(b"GARBAGE\x01\r\n\r\n"), Err(400));
        assert_eq!(
            read_raw(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            read_raw(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            ),
            Err(400)
        );
        assert_eq!(
            read_raw(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(411)
        );
        assert_eq!(
            read_raw(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1048577\r\n\r\n"),
            Err(413)
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(read_raw(&huge), Err(431));
        // A body cut short by the peer is no request.
        assert_eq!(
            read_raw(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc"),
            Ok(None)
        );
    }
}
