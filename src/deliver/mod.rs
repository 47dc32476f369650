//! Delivery: one HTTP/1.1 exchange on a keep-alive connection, plain or TLS.
//!
//! Owns the connection a delivery lane keeps (connect, TLS handshake for `https://`,
//! write the request, read and parse the response, decide whether the connection can be
//! reused) and turns what happened into an [`Exchange`] the worker classifies. A kept
//! connection is reused only for the same scheme and port, an address the host still
//! resolves to and, for TLS, the same SNI name (the one TLS configuration is
//! process-wide, so it always matches); a new one tries the host's addresses in turn
//! until one connects, the one that connected last first. A request that fails on a
//! reused idle connection before any response byte arrived, or is answered `408` and
//! closed there, is sent once more on a fresh connection; one on which the receiver sent
//! anything while it was idle is not reused, and one it said it would close is shut as
//! soon as its response is read. Every connect is counted by why it happened
//! ([`OpenReason`]), and the slot remembers whether the last request was the first on
//! its connection (the worker's rate limiter paces the next from that request's
//! estimated arrival). It must not decide retries or touch the store.

pub mod dns;
pub mod http1;
pub mod request;
pub mod ssrf;
pub mod tls;

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use http1::{Progress, ResponseParser, RetryAfter, Scheme, Target};

use crate::fdlimit::Permit;

/// A lane's read buffer starts this small (10,000 idle lanes must stay cheap) and grows
/// for large responses.
const RBUF_MIN: usize = 4 * 1024;

/// A kept connection idle at least this long is checked for anything the receiver sent
/// meanwhile before it is reused ([`Stream::is_quiet`]). Receivers speak unasked when an
/// idle timeout closes the connection, seconds after the last answer; a connection busy
/// enough to be reused sooner skips the check's system call (0.45–0.6 µs here:
/// docs/perf/history.md, session 21).
const QUIET_CHECK_AFTER: Duration = Duration::from_millis(50);

/// A kept connection that fails with no answer (a broken write, a close or a reset), or
/// answers `408` and closes, at most this long after the request was begun was closed
/// by the receiver for idleness as the request crossed it: the request goes again at
/// once on a new connection, as the same attempt. Later than that, the receiver had the
/// request (it may have acted on it) and the failure is the attempt's outcome, retried
/// only by the schedule. A round trip on any real path is well inside it.
const RESEND_WITHIN: Duration = Duration::from_secs(1);

/// Bytes of the response body kept for `success`/`error` matching.
const MATCH_LIMIT: usize = 64 * 1024;

/// A kept-alive connection and its reusable buffers.
pub struct Conn {
    stream: Stream,
    peer: Peer,
    parser: ResponseParser,
    rbuf: Vec<u8>,
    /// False once the server said it will close the connection.
    reusable: bool,
    /// Requests written on it so far.
    sent: u32,
    /// When the last response was read.
    idle_since: Instant,
    /// Its share of the process's delivery sockets ([`crate::fdlimit`]).
    _permit: Permit,
}

/// What one exchange produced.
#[derive(Debug)]
pub enum Exchange {
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Connect, write or read failed, or the response was malformed.
    Failed(String),
    /// No request left: this machine could not make a socket for it (the delivery
    /// sockets the open-file limit allows are in use, or the kernel refused one for
    /// want of descriptors or memory). Nothing about the receiver; not an attempt.
    NotSent(String),
}

/// Why a connection could not be opened.
#[derive(Debug)]
struct OpenError {
    msg: String,
    /// For want of this machine's resources: nothing was sent anywhere.
    local: bool,
}

impl OpenError {
    fn remote(msg: String) -> OpenError {
        OpenError { msg, local: false }
    }
}

/// Why a connection was opened (counted per worker, `ricochet_connections_opened_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenReason {
    /// The slot's first connection: a new lane.
    First,
    /// The receiver said it would close the last one (`Connection: close`, HTTP/1.0).
    PeerClosed,
    /// The last one failed or timed out.
    AfterError,
    /// A kept connection failed before any response byte, or answered `408` and closed,
    /// within [`RESEND_WITHIN`] of the request (the request is sent again), or the
    /// receiver sent something on it while it was idle.
    Stale,
    /// The URL now resolves to another address (or scheme or TLS name).
    PeerChanged,
}

impl OpenReason {
    pub const COUNT: usize = 5;
    pub const ALL: [OpenReason; Self::COUNT] = [
        OpenReason::First,
        OpenReason::PeerClosed,
        OpenReason::AfterError,
        OpenReason::Stale,
        OpenReason::PeerChanged,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OpenReason::First => "first",
            OpenReason::PeerClosed => "peer_closed",
            OpenReason::AfterError => "after_error",
            OpenReason::Stale => "stale",
            OpenReason::PeerChanged => "peer_changed",
        }
    }
}

/// Connections opened, by [`OpenReason`]; shared by one worker's lanes (one thread).
#[derive(Debug, Default)]
pub struct OpenCounts([Cell<u64>; OpenReason::COUNT]);

impl OpenCounts {
    fn count(&self, r: OpenReason) {
        let c = &self.0[r as usize];
        c.set(c.get() + 1);
    }

    pub fn get(&self) -> [u64; OpenReason::COUNT] {
        std::array::from_fn(|i| self.0[i].get())
    }
}

/// A lane's connection slot.
pub struct ConnSlot {
    conn: Option<Conn>,
    /// The last connection failed (or timed out) and was dropped.
    failed: bool,
    /// The last request was the first written on its connection.
    first: bool,
    /// The last exchange wrote its request twice: the kept connection broke before
    /// any answer (or answered `408` and closed) within [`RESEND_WITHIN`], and it went
    /// again on a new one.
    resent: bool,
    counts: Option<Rc<OpenCounts>>,
    /// The delivery sockets its endpoint holds, for the budget's share-out
    /// ([`crate::fdlimit`]).
    held: Option<Rc<Cell<usize>>>,
    /// [`QUIET_CHECK_AFTER`]; tests lower it.
    quiet_after: Duration,
    /// [`RESEND_WITHIN`]; tests lower it.
    resend_within: Duration,
    /// The receiver closed a kept connection (seen before its reuse, or under a request:
    /// a stale connection, sent again on a new one) and no kept connection has answered
    /// since: it may close every connection after one answer without saying so. Until
    /// a kept connection answers again, one is looked at before every reuse, not only
    /// after `quiet_after`, so its close is seen before a request is written on it and
    /// the request is not sent twice (which a rate limit has to count twice).
    peer_closes: bool,
    /// The address the last connection was made to: tried first among a name's
    /// addresses next time, so one that refuses is not met on every reconnect.
    last_good: Option<IpAddr>,
    /// How far the last exchange came: what a timeout interrupted ([`Self::stage`]). A
    /// cell: the connect future sets it while it holds the slot's other fields.
    stage: Cell<Stage>,
}

/// How far an exchange came, for a timeout's message: a receiver out of reach (a
/// firewall that drops the connect, a full accept queue), one that stalls in the TLS
/// handshake, one that stopped reading, and one that took the request and never
/// answered are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connecting,
    Handshake,
    /// Connected again after the kept connection closed under the first send, and
    /// waiting for leave to send the request a second time (`before_resend`).
    Resending,
    Sending,
    Waiting,
}

impl Stage {
    /// The words after "timed out after 10s".
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Connecting => "connecting (no connection made)",
            Stage::Handshake => "in the TLS handshake",
            Stage::Resending => {
                "waiting to send the request again (the kept connection closed under it, and max_rps paces the second send)"
            }
            Stage::Sending => "sending the request (the receiver stopped reading it)",
            Stage::Waiting => "waiting for the answer (the request was sent)",
        }
    }
}

impl Default for ConnSlot {
    fn default() -> ConnSlot {
        ConnSlot {
            conn: None,
            failed: false,
            first: false,
            resent: false,
            counts: None,
            held: None,
            quiet_after: QUIET_CHECK_AFTER,
            resend_within: RESEND_WITHIN,
            last_good: None,
            peer_closes: false,
            stage: Cell::new(Stage::Connecting),
        }
    }
}

impl ConnSlot {
    /// A slot whose connects are counted in `counts`.
    #[cfg(test)]
    pub fn counted(counts: Rc<OpenCounts>) -> ConnSlot {
        ConnSlot {
            counts: Some(counts),
            ..ConnSlot::default()
        }
    }

    /// A slot whose connects are counted in `counts`, and whose socket counts among
    /// the `held` ones of its endpoint.
    pub fn for_endpoint(counts: Rc<OpenCounts>, held: Rc<Cell<usize>>) -> ConnSlot {
        ConnSlot {
            counts: Some(counts),
            held: Some(held),
            ..ConnSlot::default()
        }
    }

    /// How far the last exchange came. Read before [`Self::reset`].
    pub fn stage(&self) -> Stage {
        self.stage.get()
    }

    /// Forgets the connection (after a timeout or an error).
    pub fn reset(&mut self) {
        self.conn = None;
        self.failed = true;
    }

    /// Why the next connect happens, from what became of the last connection.
    fn open_reason(&self) -> OpenReason {
        match &self.conn {
            Some(c) if !c.reusable => OpenReason::PeerClosed,
            Some(_) => OpenReason::PeerChanged,
            None if self.failed => OpenReason::AfterError,
            None => OpenReason::First,
        }
    }

    /// The response the connection was reading when an attempt ran out of time, if its
    /// head had come: [`ResponseParser::in_body`]. Read before [`Self::reset`].
    pub fn in_body(&self) -> Option<http1::InBody> {
        self.conn.as_ref().and_then(|c| c.parser.in_body())
    }

    /// Forgets what the last exchange did ([`Self::last_was_first`],
    /// [`Self::last_was_resent`]), for an attempt that may end before it writes a request.
    pub fn begin_attempt(&mut self) {
        self.first = false;
        self.resent = false;
    }

    /// Whether the last request was the first on its connection (which the receiver had
    /// to accept before reading it).
    pub fn last_was_first(&self) -> bool {
        self.first
    }

    /// Whether the last exchange sent its request a second time (on a new connection,
    /// after the kept one broke before any answer or answered `408` and closed, within
    /// [`RESEND_WITHIN`]): the receiver may have seen both.
    pub fn last_was_resent(&self) -> bool {
        self.resent
    }

    /// The body excerpt of the last response.
    pub fn body_excerpt(&self) -> &[u8] {
        self.conn
            .as_ref()
            .map(|c| c.parser.body_excerpt())
            .unwrap_or(&[])
    }

    /// Whether the last exchange left its connection open for the next request (not
    /// closed by the receiver, not failed).
    pub fn is_kept(&self) -> bool {
        matches!(&self.conn, Some(c) if c.reusable)
    }

    /// Whether the receiver has closed a kept connection since a kept connection last
    /// answered: its next request will likely go on a new connection, whatever the last
    /// answer said.
    pub fn receiver_closes_kept(&self) -> bool {
        self.peer_closes
    }

    /// Whether a reusable connection for `target` to one of `ips` is open.
    pub fn is_open(&self, target: &Target, ips: &[IpAddr]) -> bool {
        matches!(&self.conn, Some(c) if c.reusable && c.peer.matches(target, ips))
    }

    /// Whether the kept connection's receiver sent something since its last response
    /// (checked only once it has been idle for `quiet_after`, or at every reuse while
    /// the receiver is seen closing kept connections: [`Self::peer_closes`]).
    fn spoke_while_idle(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| {
            (self.peer_closes || c.idle_since.elapsed() >= self.quiet_after) && !c.stream.is_quiet()
        })
    }

    /// Opens the connection ahead of the request, so a rate-limited request goes out
    /// when its token is taken rather than a connect (and handshake) later. A failure is
    /// left for [`exchange`](Self::exchange) to meet and report.
    pub async fn warm(&mut self, target: &Target, ips: &[IpAddr]) {
        if !self.is_open(target, ips) {
            let _ = self.open(target, ips, None).await;
        }
    }

    /// Replaces the connection with a fresh one to the first of `ips` that takes it
    /// (the one that took the last, then the others in their order: RFC 1123 §2.3); the
    /// old one's buffers serve the new one. `reason`: why, when the caller knows better
    /// than the slot's state.
    async fn open(
        &mut self,
        target: &Target,
        ips: &[IpAddr],
        reason: Option<OpenReason>,
    ) -> Result<(), OpenError> {
        // Why, read before the old connection goes.
        let reason = reason.unwrap_or_else(|| self.open_reason());
        let (parser, mut rbuf) = match self.conn.take() {
            Some(c) => (c.parser, c.rbuf),
            None => (
                ResponseParser::new(MATCH_LIMIT),
                Vec::with_capacity(RBUF_MIN),
            ),
        };
        rbuf.clear();
        // (The old connection's permit went with it, just above.)
        let Some(permit) = Permit::take(self.held.as_ref()) else {
            return Err(OpenError {
                msg: format!(
                    "not sent: the {} delivery sockets the open-file limit leaves are in use \
                     (or, nine tenths of them in use, this endpoint has its share)",
                    Permit::budget()
                ),
                local: true,
            });
        };
        let order = connect_order(self.last_good, ips);
        let stage = &self.stage;
        stage.set(Stage::Connecting);
        // Boxed: the connect and TLS handshake futures are large, and a future held
        // inline makes every request's future as large (moved on each attempt).
        let connected = Box::pin(async {
            // Only a failed connect moves on to the next address: a TLS failure is the
            // receiver's certificate or protocol, not where it was reached.
            let mut errors = String::new();
            for ip in order {
                let addr = SocketAddr::new(ip, target.port);
                match Stream::connect_tcp(addr).await {
                    Ok(tcp) => {
                        if target.scheme == Scheme::Https {
                            stage.set(Stage::Handshake);
                        }
                        return Stream::over(target, tcp)
                            .await
                            .map(|s| (s, addr))
                            .map_err(OpenError::remote);
                    }
                    // No socket to be had: the next address would fare no better.
                    Err(e) if e.local => return Err(e),
                    Err(e) => {
                        if !errors.is_empty() {
                            errors.push_str("; ");
                        }
                        errors.push_str(&e.msg);
                    }
                }
            }
            Err(OpenError::remote(errors))
        })
        .await;
        let (stream, addr) = match connected {
            Ok(c) => c,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        // Counted once made: a refused connect opened nothing.
        if let Some(c) = &self.counts {
            c.count(reason);
        }
        self.failed = false;
        self.last_good = Some(addr.ip());
        self.conn = Some(Conn {
            stream,
            peer: Peer::of(target, addr),
            parser,
            rbuf,
            reusable: true,
            sent: 0,
            idle_since: Instant::now(),
            _permit: permit,
        });
        Ok(())
    }

    /// Sends `req` to one of `ips` (at `target`'s port) and reads the response. `req`
    /// is handed back for reuse. A request sent again on a new connection (the kept one
    /// closed under it) first awaits `before_resend`: a second request at the receiver,
    /// which a rate limit must pace as any other (the worker waits for a `max_rps`
    /// token there).
    pub async fn exchange(
        &mut self,
        target: &Target,
        ips: &[IpAddr],
        req: Vec<u8>,
        mut before_resend: impl AsyncFnMut(),
    ) -> (Exchange, Vec<u8>) {
        let mut req = req;
        self.first = false;
        self.resent = false;
        for try_no in 0..2 {
            let mut reused = self.is_open(target, ips);
            let mut stale = try_no > 0; // the second try only follows a stale connection
            if reused && self.spoke_while_idle() {
                // It spoke while idle: whatever it sent answers no request of ours.
                reused = false;
                stale = true;
                self.peer_closes = true;
            }
            if !reused {
                let reason = stale.then_some(OpenReason::Stale);
                if let Err(e) = self.open(target, ips, reason).await {
                    // On a second try the first may have reached the receiver.
                    let ex = match e.local && try_no == 0 {
                        true => Exchange::NotSent(e.msg),
                        false => Exchange::Failed(e.msg),
                    };
                    return (ex, req);
                }
            }
            if try_no > 0 {
                // Connected first, so the request leaves as the token allows.
                self.stage.set(Stage::Resending);
                before_resend().await;
            }
            let Some(conn) = self.conn.as_mut() else {
                unreachable!("connection set above")
            };
            self.first = conn.sent == 0;
            self.resent = try_no > 0;
            conn.sent += 1;
            // (Only a kept connection's first try may go again: only it reads the clock.)
            let sent_at = (reused && try_no == 0).then(Instant::now);
            self.stage.set(Stage::Sending);
            let (res, b) = conn.stream.write_all(req).await;
            req = b;
            // (A broken write may still have an answer to read, below.)
            self.stage.set(Stage::Waiting);
            let result = match res {
                // A receiver may answer before it has read the whole request (a `413`
                // to a large body) and close: the answer is in the socket even though
                // the write broke (RFC 9112 §9.5), and it is the attempt's outcome, on
                // a kept connection too (where a `408` the receiver sent as it closed
                // the idle connection is told apart below, as after any write).
                Err(e) if closed_under(&e) => match read_response(conn).await {
                    Ok((status, retry_after, _)) => Ok((status, retry_after, false)),
                    Err((_, true)) => Err((format!("write: {e}"), true)),
                    Err(partial) => Err(partial),
                },
                Err(e) => Err((format!("write: {e}"), true)),
                Ok(()) => read_response(conn).await,
            };
            // The receiver closed the kept connection for idleness as the request
            // crossed it: the close (a broken write, no answer, or a `408`) came within
            // a round trip's allowance of the request. Not a receiver that took the
            // request (or its head: a large body may still be on its way), worked on
            // it and then closed unanswered: that is the attempt's outcome, as on a new
            // connection.
            let within = self.resend_within;
            let crossed = || sent_at.is_some_and(|t| t.elapsed() < within);
            match result {
                // A `408` that closes a kept connection is the receiver closing it for
                // idleness (sent just before our request arrived, or without reading
                // it): the request may go again on a new one (RFC 9110 §15.5.9).
                Ok((408, _, false)) if crossed() => {
                    self.conn = None;
                    self.peer_closes = true;
                    continue;
                }
                Ok((status, retry_after, keep_alive)) => {
                    if reused {
                        self.peer_closes = false;
                    }
                    if let Some(c) = self.conn.as_mut() {
                        // The excerpt stays readable; the stream is replaced next time,
                        // and one the receiver will close is shut now (RFC 9112 §9.6),
                        // not left open until the lane's next request.
                        c.reusable = keep_alive;
                        c.idle_since = Instant::now();
                        if !keep_alive {
                            c.stream.shutdown();
                        }
                    }
                    return (
                        Exchange::Response {
                            status,
                            retry_after,
                        },
                        req,
                    );
                }
                Err((msg, nothing_received)) => {
                    self.conn = None;
                    self.failed = true;
                    if nothing_received && crossed() {
                        self.peer_closes = true;
                        continue; // a stale idle connection: once more on a fresh one
                    }
                    return (Exchange::Failed(msg), req);
                }
            }
        }
        (Exchange::Failed("connection closed".into()), req)
    }
}

/// What must match before a kept connection is reused: scheme, port, an address the
/// host resolves to now and, for TLS, the SNI name the certificate was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    scheme: Scheme,
    addr: SocketAddr,
    /// The TLS server name; empty for plain HTTP, where any `Host` may share a connection.
    sni: String,
}

impl Peer {
    fn of(target: &Target, addr: SocketAddr) -> Peer {
        Peer {
            scheme: target.scheme,
            addr,
            sni: match target.scheme {
                Scheme::Https => target.host.clone(),
                Scheme::Http => String::new(),
            },
        }
    }

    fn matches(&self, target: &Target, ips: &[IpAddr]) -> bool {
        self.scheme == target.scheme
            && self.addr.port() == target.port
            && ips.contains(&self.addr.ip())
            && (self.scheme == Scheme::Http || self.sni == target.host)
    }
}

/// The byte stream under HTTP/1.1.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

impl Stream {
    /// The TCP connection to `addr`.
    async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, OpenError> {
        let tcp = TcpStream::connect_addr(addr).await.map_err(|e| OpenError {
            msg: format!("connect {addr}: {e}"),
            local: crate::fdlimit::is_local_exhaustion(&e),
        })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// The stream over a connected `tcp`: with a TLS handshake for `https://`.
    async fn over(target: &Target, tcp: TcpStream) -> Result<Stream, String> {
        match target.scheme {
            Scheme::Http => Ok(Stream::Plain(tcp)),
            Scheme::Https => tls::TlsStream::connect(tls::config().clone(), tcp, &target.host)
                .await
                .map(|s| Stream::Tls(Box::new(s))),
        }
    }

    /// Whether the receiver has sent nothing since the last response was read: no byte,
    /// no end of stream, no reset. Bytes that arrive on an idle connection (a `408`
    /// before an idle-timeout close, say) answer no request of ours, and a connection
    /// that carried them must not be reused: they would be read as the next request's
    /// answer. One non-blocking `MSG_PEEK` of one byte, which leaves the socket as it was.
    fn is_quiet(&self) -> bool {
        let fd = match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(s) if s.has_unread() => return false,
            Stream::Tls(s) => s.tcp().as_raw_fd(),
        };
        let mut byte = 0u8;
        // SAFETY: `fd` is the open socket `self` owns, and the buffer is one valid byte.
        let n = unsafe {
            libc::recv(
                fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Whether bytes the receiver sent are read from the socket and not yet given as
    /// plaintext (TLS records not yet decrypted, or the end of the stream): never for
    /// plain TCP, whose reads hand over all they take.
    fn has_unread(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(s) => s.has_unread(),
        }
    }

    /// Ends the connection both ways (a FIN to the receiver); the socket itself is
    /// closed when the stream is dropped.
    fn shutdown(&self) {
        let fd = match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.tcp().as_raw_fd(),
        };
        // SAFETY: `fd` is the open socket `self` owns; no operation is pending on it.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Stream::Plain(s) => {
                let (res, b) = s.write_all(buf).await;
                (res.map(drop), b)
            }
            Stream::Tls(s) => s.write_all(buf).await,
        }
    }

    /// Appends what arrives next to `buf` (which has spare capacity); `Ok(0)` at the end.
    async fn read_append(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Plain(s) => {
                let filled = buf.len();
                let (res, b) = s.read(buf.slice_mut(filled..)).await;
                (res, b.into_inner())
            }
            Stream::Tls(s) => {
                let mut buf = buf;
                let res = s.read_append(&mut buf).await;
                (res, buf)
            }
        }
    }
}

/// Whether a write failed because the receiver closed or reset the connection (so what
/// it sent before is readable, and nothing more will come).
fn closed_under(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Reads one response. Errors carry whether no byte of a response had arrived.
async fn read_response(conn: &mut Conn) -> Result<(u16, Option<Duration>, bool), (String, bool)> {
    conn.parser.reset();
    let mut received = false;
    // Whether the last read took all the room it had: the socket may hold more.
    let mut filled = false;
    loop {
        if !conn.rbuf.is_empty() {
            received = true;
            match conn.parser.feed(&conn.rbuf, false) {
                Ok((used, progress)) => {
                    conn.rbuf.drain(..used);
                    if progress == Progress::Done {
                        let (status, retry_after, keep_alive) = finish(&conn.parser);
                        // Bytes past the end of the response answer no request of ours:
                        // the connection is out of step with the receiver, and reusing
                        // it would read them as the next request's answer. Over TLS they
                        // may still be ciphertext: rustls takes 4 KiB at a time, so a
                        // record after the response's can be in the socket read and not
                        // yet decrypted.
                        // And a read that filled its room may have left more in the
                        // socket (a response ending exactly where a read did, as rare
                        // as that is): one peek, only then.
                        let after = !conn.rbuf.is_empty()
                            || conn.stream.has_unread()
                            || (keep_alive && filled && !conn.stream.is_quiet());
                        return Ok((status, retry_after, keep_alive && !after));
                    }
                }
                Err(e) => return Err((format!("bad response: {e}"), false)),
            }
        }
        let buf = reserve(std::mem::take(&mut conn.rbuf));
        let room = buf.capacity() - buf.len();
        let (res, mut b) = conn.stream.read_append(buf).await;
        match res {
            Ok(0) => {
                conn.rbuf = b;
                // Read before `eof` ends a close-delimited body: a body cut short says
                // how far it came, as a timeout there does.
                let in_body = conn.parser.in_body();
                return match conn.parser.eof() {
                    Ok(Progress::Done) => {
                        let (s, ra, _) = finish(&conn.parser);
                        Ok((s, ra, false))
                    }
                    Ok(Progress::NeedMore) | Err(_) => Err((
                        match in_body {
                            Some(at) => format!("connection closed {at}"),
                            None => "connection closed before a complete response".into(),
                        },
                        !received,
                    )),
                };
            }
            Ok(n) => {
                filled = n >= room;
                conn.rbuf = b;
            }
            Err(e) => {
                b.clear();
                conn.rbuf = b;
                // (A TLS 1.3 receiver refuses a missing client certificate here.)
                return Err((format!("read: {e}{}", tls::hint(&e)), !received));
            }
        }
    }
}

/// The order to try a name's addresses in: the one connected last first (while the name
/// still has it), then the rest as resolved.
fn connect_order(last_good: Option<IpAddr>, ips: &[IpAddr]) -> impl Iterator<Item = IpAddr> + '_ {
    let good = last_good.filter(|ip| ips.contains(ip));
    good.into_iter()
        .chain(ips.iter().copied().filter(move |ip| Some(*ip) != good))
}

fn reserve(mut b: Vec<u8>) -> Vec<u8> {
    if b.capacity() - b.len() < 4096 {
        b.reserve(RBUF_MIN);
    }
    b
}

fn finish(p: &ResponseParser) -> (u16, Option<Duration>, bool) {
    let ra = p.retry_after().map(|r| match r {
        RetryAfter::Delay(d) => d,
        RetryAfter::At(t) => t
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    });
    (p.status(), ra, p.keep_alive())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        http1::parse_url(url.as_bytes()).unwrap()
    }

    #[test]
    fn reuse_needs_scheme_address_and_sni_to_match() {
        let a: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let b = &["10.0.0.2".parse::<IpAddr>().unwrap()][..];
        let tls = Peer::of(&target("https://a.example/x"), a);
        assert!(tls.matches(&target("https://a.example/other?q=1"), &[a.ip()]));
        assert!(tls.matches(&target("https://A.example:443/"), &[a.ip()]));
        assert!(
            !tls.matches(&target("https://b.example/"), &[a.ip()]),
            "SNI differs"
        );
        assert!(
            !tls.matches(&target("https://a.example/"), b),
            "address differs"
        );
        assert!(
            !tls.matches(&target("http://a.example:443/"), &[a.ip()]),
            "scheme differs"
        );

        let plain = Peer::of(&target("http://a.example:443/"), a);
        assert!(
            plain.matches(&target("http://b.example:443/"), &[a.ip()]),
            "Host is per request"
        );
        assert!(!plain.matches(&target("https://a.example/"), &[a.ip()]));
        assert!(!plain.matches(&target("http://a.example:443/"), b));
        assert!(
            !plain.matches(&target("http://a.example:80/"), &[a.ip()]),
            "port differs"
        );
        assert!(
            plain.matches(&target("http://a.example:443/"), &[b[0], a.ip()]),
            "one of a name's addresses"
        );
    }
}

#[cfg(test)]
mod reconnect_tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A receiver that serves each connection by a script: for every request, answer
    /// (keep-alive or `Connection: close`) or drop the connection unanswered.
    #[derive(Clone, Copy)]
    enum Step {
        Keep,
        Close,
        Drop,
        /// Answer with keep-alive; then, once told, send a `408` unasked that closes the
        /// connection, say so, and close it.
        KeepThenStray,
        /// Answer `Connection: close` and keep the socket open; report whether the
        /// client closed its side within 10 s.
        CloseAndWatch,
        /// Take the request, work on it this long, then close unanswered.
        DropAfter(Duration),
        /// Take the request, work on it this long, then answer `408` and close.
        Late408(Duration),
        /// Answer `413` and close as soon as the head is read, the body unread.
        Early413,
    }

    type Stray = (mpsc::Receiver<()>, mpsc::Sender<()>);

    fn receiver(conns: Vec<Vec<Step>>) -> SocketAddr {
        receiver_with(conns, None)
    }

    fn receiver_with(conns: Vec<Vec<Step>>, stray: Option<Stray>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for steps in conns {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                for step in steps {
                    // Read one request head (the test requests have no body).
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let conn = match step {
                        Step::Drop => break,
                        Step::DropAfter(d) => {
                            std::thread::sleep(d);
                            break;
                        }
                        Step::Late408(d) => {
                            std::thread::sleep(d);
                            let _ = write!(
                                w,
                                "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            );
                            break;
                        }
                        Step::Early413 => {
                            let _ = write!(
                                w,
                                "HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig"
                            );
                            break;
                        }
                        Step::Keep | Step::KeepThenStray => "keep-alive",
                        Step::Close | Step::CloseAndWatch => "close",
                    };
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: {conn}\r\n\r\nok"
                    );
                    if let (Step::KeepThenStray, Some((go, sent))) = (step, &stray) {
                        go.recv().unwrap();
                        let _ = write!(
                            w,
                            "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        sent.send(()).unwrap();
                        break;
                    }
                    if let (Step::CloseAndWatch, Some((_, closed))) = (step, &stray) {
                        w.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                            .unwrap();
                        let mut rest = String::new();
                        let eof = matches!(r.read_line(&mut rest), Ok(0));
                        if eof {
                            closed.send(()).unwrap();
                        }
                    }
                }
            }
        });
        addr
    }

    #[test]
    fn counts_why_connections_open_and_marks_first_requests() {
        let addr = receiver(vec![
            vec![Step::Keep, Step::Close],
            vec![Step::Keep, Step::Drop],
            vec![Step::Keep, Step::Keep],
        ]);
        let target = http1::parse_url(format!("http://{addr}/x").as_bytes()).unwrap();
        let counts = Rc::new(OpenCounts::default());
        let mut slot = ConnSlot::counted(counts.clone());
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        let firsts = crate::runtime::block_on(driver, async move {
            let mut firsts = Vec::new();
            let mut req = Vec::new();
            for _ in 0..5 {
                req.clear();
                req.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
                let (ex, b) = slot.exchange(&target, &[addr.ip()], req, async || {}).await;
                req = b;
                assert!(
                    matches!(ex, Exchange::Response { status: 200, .. }),
                    "{ex:?}"
                );
                firsts.push(slot.last_was_first());
            }
            firsts
        })
        .unwrap();
        // conn 1: first request, then reused (answered with close); conn 2: first, then
        // the server drops request 4 unanswered and it goes again on conn 3 (stale); 5
        // reuses conn 3.
        assert_eq!(firsts, [true, false, true, true, false]);
        let [first, peer_closed, after_error, stale, peer_changed] = counts.get();
        assert_eq!(
            (first, peer_closed, after_error, stale, peer_changed),
            (1, 1, 0, 1, 0)
        );
    }

    /// Two requests on one slot; between them the receiver sends an unasked `408` that
    /// closes the connection. The statuses answered, whether the second went twice, and
    /// the connects by reason.
    fn around_a_stray_408(quiet_after: Duration) -> (Vec<u16>, bool, [u64; OpenReason::COUNT]) {
        let (go_tx, go_rx) = mpsc::channel();
        let (sent_tx, sent_rx) = mpsc::channel();
        let addr = receiver_with(
            vec![vec![Step::KeepThenStray], vec![Step::Keep]],
            Some((go_rx, sent_tx)),
        );
        let target = http1::parse_url(format!("http://{addr}/x").as_bytes()).unwrap();
        let counts = Rc::new(OpenCounts::default());
        let mut slot = ConnSlot::counted(counts.clone());
        slot.quiet_after = quiet_after;
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        let (statuses, resent) = crate::runtime::block_on(driver, async move {
            let mut statuses = Vec::new();
            let mut req = Vec::new();
            for i in 0..2 {
                if i == 1 {
                    // The 408 is in the socket before the second request is written
                    // (loopback delivers it within the receiver's write).
                    go_tx.send(()).unwrap();
                    sent_rx.recv().unwrap();
                }
                req.clear();
                req.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
                let (ex, b) = slot.exchange(&target, &[addr.ip()], req, async || {}).await;
                req = b;
                match ex {
                    Exchange::Response { status, .. } => statuses.push(status),
                    other => panic!("{other:?}"),
                }
            }
            (statuses, slot.last_was_resent())
        })
        .unwrap();
        (statuses, resent, counts.get())
    }

    #[test]
    fn a_connection_that_spoke_while_idle_is_not_reused() {
        let (statuses, resent, counts) = around_a_stray_408(Duration::ZERO);
        assert_eq!(
            statuses,
            [200, 200],
            "the unasked 408 was read as an answer"
        );
        assert!(
            !resent,
            "the idle check kept the request from the closed connection"
        );
        let [first, peer_closed, after_error, stale, peer_changed] = counts;
        assert_eq!(
            (first, peer_closed, after_error, stale, peer_changed),
            (1, 0, 0, 1, 0)
        );
    }

    #[test]
    fn an_unasked_408_on_a_busy_kept_connection_sends_the_request_again() {
        // Reused sooner than the idle check runs, the 408 already in the socket is read
        // as the answer: the request goes again on a new connection.
        let (statuses, resent, counts) = around_a_stray_408(Duration::from_secs(3600));
        assert_eq!(
            statuses,
            [200, 200],
            "the unasked 408 was taken as the answer"
        );
        assert!(resent, "the second request went twice");
        let [first, _, _, stale, _] = counts;
        assert_eq!((first, stale), (1, 1));
    }

    #[test]
    fn a_connection_the_receiver_will_close_is_shut_once_answered() {
        let (_go_tx, go_rx) = mpsc::channel();
        let (closed_tx, closed_rx) = mpsc::channel();
        let addr = receiver_with(vec![vec![Step::CloseAndWatch]], Some((go_rx, closed_tx)));
        let target = http1::parse_url(format!("http://{addr}/x").as_bytes()).unwrap();
        let mut slot = ConnSlot::default();
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        let slot = crate::runtime::block_on(driver, async move {
            let req = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
            let (ex, _) = slot.exchange(&target, &[addr.ip()], req, async || {}).await;
            assert!(
                matches!(ex, Exchange::Response { status: 200, .. }),
                "{ex:?}"
            );
            slot
        })
        .unwrap();
        // The slot (and its connection's parser, for the excerpt) is still held here.
        assert_eq!(slot.body_excerpt(), b"ok");
        closed_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the receiver saw no end of the connection it closes");
    }

    #[test]
    fn an_answer_sent_before_the_request_was_read_is_the_outcome() {
        // The receiver reads the head of a large request, answers 413 and closes with
        // the body unread (a reset): the write breaks, the 413 is in the socket.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let mut w = s;
            let _ = write!(
                w,
                "HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig"
            );
            drop(r);
            drop(w);
        });
        let target = http1::parse_url(format!("http://{addr}/x").as_bytes()).unwrap();
        let mut slot = ConnSlot::default();
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        let ex = crate::runtime::block_on(driver, async move {
            let body = vec![b'x'; 16 << 20];
            let mut req = format!(
                "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(&body);
            slot.exchange(&target, &[addr.ip()], req, async || {})
                .await
                .0
        })
        .unwrap();
        assert!(
            matches!(ex, Exchange::Response { status: 413, .. }),
            "{ex:?}"
        );
    }

    /// Two exchanges on one slot against `steps` on the first connection, then a second
    /// connection that answers 200: the second exchange's outcome, whether it was
    /// sent again, and the connects by reason. The second request carries `body`.
    fn second_on_a_kept_connection(
        steps: Vec<Step>,
        body: usize,
    ) -> (Exchange, bool, [u64; OpenReason::COUNT]) {
        let addr = receiver(vec![steps, vec![Step::Keep]]);
        let target = http1::parse_url(format!("http://{addr}/x").as_bytes()).unwrap();
        let counts = Rc::new(OpenCounts::default());
        let mut slot = ConnSlot::counted(counts.clone());
        slot.resend_within = Duration::from_millis(500);
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        let (ex, resent) = crate::runtime::block_on(driver, async move {
            let req = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
            let (ex, _) = slot.exchange(&target, &[addr.ip()], req, async || {}).await;
            assert!(
                matches!(ex, Exchange::Response { status: 200, .. }),
                "{ex:?}"
            );
            let mut req = format!("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {body}\r\n\r\n")
                .into_bytes();
            req.resize(req.len() + body, b'x');
            let (ex, _) = slot.exchange(&target, &[addr.ip()], req, async || {}).await;
            (ex, slot.last_was_resent())
        })
        .unwrap();
        (ex, resent, counts.get())
    }

    #[test]
    fn a_kept_connection_closed_unanswered_after_the_request_was_taken_is_not_sent_again() {
        // The receiver had the request 900 ms (almost twice the allowance for a close
        // crossing it) before closing: it may have acted on it. Sending it again at
        // once, outside the schedule and the log, was a second postback (`retry =
        // "none"` too).
        let (ex, resent, counts) = second_on_a_kept_connection(
            vec![Step::Keep, Step::DropAfter(Duration::from_millis(900))],
            0,
        );
        assert!(matches!(ex, Exchange::Failed(_)), "{ex:?}");
        assert!(!resent);
        let [first, _, _, stale, _] = counts;
        assert_eq!((first, stale), (1, 0));
        // A late `408` likewise is the receiver's answer.
        let (ex, resent, _) = second_on_a_kept_connection(
            vec![Step::Keep, Step::Late408(Duration::from_millis(900))],
            0,
        );
        assert!(
            matches!(ex, Exchange::Response { status: 408, .. }),
            "{ex:?}"
        );
        assert!(!resent);
        // So is a close that breaks the write of a large body: the receiver had its
        // head 900 ms.
        let (ex, resent, _) = second_on_a_kept_connection(
            vec![Step::Keep, Step::DropAfter(Duration::from_millis(900))],
            16 << 20,
        );
        assert!(matches!(ex, Exchange::Failed(_)), "{ex:?}");
        assert!(!resent, "sent again after its head had been read");
        // Closed at once (the idle close crossing the request): sent again.
        let (ex, resent, counts) = second_on_a_kept_connection(vec![Step::Keep, Step::Drop], 0);
        assert!(
            matches!(ex, Exchange::Response { status: 200, .. }),
            "{ex:?}"
        );
        assert!(resent);
        assert_eq!(counts[OpenReason::Stale as usize], 1);
    }

    #[test]
    fn an_answer_before_the_request_was_read_is_the_outcome_on_a_kept_connection_too() {
        let (ex, resent, counts) =
            second_on_a_kept_connection(vec![Step::Keep, Step::Early413], 16 << 20);
        assert!(
            matches!(ex, Exchange::Response { status: 413, .. }),
            "{ex:?}"
        );
        assert!(!resent, "the whole request went again on a new connection");
        assert_eq!(counts[OpenReason::Stale as usize], 0);
    }

    #[test]
    fn a_name_s_next_address_is_tried_when_one_refuses() {
        // The receiver listens on 127.0.0.1 only: 127.0.0.2 (loopback too) refuses.
        let addr = receiver(vec![vec![Step::Keep, Step::Close], vec![Step::Keep]]);
        let refusing: IpAddr = "127.0.0.2".parse().unwrap();
        let ips = [refusing, addr.ip()];
        let target = http1::parse_url(format!("http://{addr}/x").as_bytes()).unwrap();
        let counts = Rc::new(OpenCounts::default());
        let mut slot = ConnSlot::counted(counts.clone());
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        let (statuses, failed) = crate::runtime::block_on(driver, async move {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let req = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
                match slot.exchange(&target, &ips, req, async || {}).await.0 {
                    Exchange::Response { status, .. } => statuses.push(status),
                    other => panic!("{other:?}"),
                }
            }
            let req = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
            let failed = slot
                .exchange(&target, &[refusing], req, async || {})
                .await
                .0;
            (statuses, failed)
        })
        .unwrap();
        // Three answers over two connections, both to the address that takes them.
        assert_eq!(statuses, [200, 200, 200]);
        let [first, peer_closed, ..] = counts.get();
        assert_eq!((first, peer_closed), (1, 1));
        match failed {
            Exchange::Failed(msg) => assert!(msg.contains("127.0.0.2"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_address_that_connected_last_is_tried_first() {
        let [a, b, c]: [IpAddr; 3] = ["10.0.0.1", "10.0.0.2", "::1"].map(|s| s.parse().unwrap());
        let order = |last, ips: &[IpAddr]| connect_order(last, ips).collect::<Vec<_>>();
        assert_eq!(order(None, &[a, b, c]), [a, b, c]);
        assert_eq!(order(Some(b), &[a, b, c]), [b, a, c]);
        assert_eq!(order(Some(c), &[a, b, c]), [c, a, b]);
        // No longer among the name's addresses: the resolver's order.
        assert_eq!(order(Some(c), &[a, b]), [a, b]);
    }
}
