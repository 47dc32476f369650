//! Delivery: one HTTP/1.1 exchange on a keep-alive connection, plain or TLS.
//!
//! Owns the connection a delivery lane keeps (connect, TLS handshake for `https://`,
//! write the request, read and parse the response, decide whether the connection can be
//! reused) and turns what happened into an [`Exchange`] the worker classifies. A kept
//! connection is reused only for the same scheme, socket address and, for TLS, SNI name
//! (the one TLS configuration is process-wide, so it always matches). A request that
//! fails on a reused idle connection before any response byte arrived is sent once more
//! on a fresh connection; one on which the receiver sent anything while it was idle is
//! not reused. Every connect is counted by why it happened ([`OpenReason`]),
//! and the slot remembers whether the last request was the first on its connection (the
//! worker's rate limiter paces from that request's answer). It must not decide retries
//! or touch the store.

pub mod dns;
pub mod http1;
pub mod request;
pub mod ssrf;
pub mod tls;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use http1::{Progress, ResponseParser, RetryAfter, Scheme, Target};

/// A lane's read buffer starts this small (10,000 idle lanes must stay cheap) and grows
/// for large responses.
const RBUF_MIN: usize = 4 * 1024;

/// A kept connection idle at least this long is checked for anything the receiver sent
/// meanwhile before it is reused ([`Stream::is_quiet`]). Receivers speak unasked when an
/// idle timeout closes the connection, seconds after the last answer; a connection busy
/// enough to be reused sooner skips the check's system call (0.45–0.6 µs here:
/// docs/perf/history.md, session 21).
const QUIET_CHECK_AFTER: Duration = Duration::from_millis(50);

/// Bytes of the response body kept for `success`/`error` matching.
pub const MATCH_LIMIT: usize = 64 * 1024;

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
    /// A kept connection failed before any response byte (the request is sent again),
    /// or the receiver sent something on it while it was idle.
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
    /// any answer, and it went again on a new one.
    resent: bool,
    counts: Option<Rc<OpenCounts>>,
    /// [`QUIET_CHECK_AFTER`]; tests lower it.
    quiet_after: Duration,
}

impl Default for ConnSlot {
    fn default() -> ConnSlot {
        ConnSlot {
            conn: None,
            failed: false,
            first: false,
            resent: false,
            counts: None,
            quiet_after: QUIET_CHECK_AFTER,
        }
    }
}

impl ConnSlot {
    /// A slot whose connects are counted in `counts`.
    pub fn counted(counts: Rc<OpenCounts>) -> ConnSlot {
        ConnSlot {
            counts: Some(counts),
            ..ConnSlot::default()
        }
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

    /// Whether the last request was the first on its connection (which the receiver had
    /// to accept before reading it).
    pub fn last_was_first(&self) -> bool {
        self.first
    }

    /// Whether the last exchange sent its request a second time (on a new connection,
    /// after the kept one broke before any answer): the receiver may have seen both.
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

    /// Whether a reusable connection to `addr` for `target` is open.
    pub fn is_open(&self, target: &Target, addr: SocketAddr) -> bool {
        matches!(&self.conn, Some(c) if c.reusable && c.peer.matches(target, addr))
    }

    /// Whether the kept connection's receiver sent something since its last response
    /// (checked only once it has been idle for `quiet_after`).
    fn spoke_while_idle(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.idle_since.elapsed() >= self.quiet_after && !c.stream.is_quiet())
    }

    /// Opens the connection ahead of the request, so a rate-limited request goes out
    /// when its token is taken rather than a connect (and handshake) later. A failure is
    /// left for [`exchange`](Self::exchange) to meet and report.
    pub async fn warm(&mut self, target: &Target, addr: SocketAddr) {
        if !self.is_open(target, addr) {
            let _ = self.open(target, addr, None).await;
        }
    }

    /// Replaces the connection with a fresh one to `addr`; the old one's buffers serve
    /// the new one. `reason`: why, when the caller knows better than the slot's state.
    async fn open(
        &mut self,
        target: &Target,
        addr: SocketAddr,
        reason: Option<OpenReason>,
    ) -> Result<(), String> {
        if let Some(c) = &self.counts {
            c.count(reason.unwrap_or_else(|| self.open_reason()));
        }
        let (parser, mut rbuf) = match self.conn.take() {
            Some(c) => (c.parser, c.rbuf),
            None => (
                ResponseParser::new(MATCH_LIMIT),
                Vec::with_capacity(RBUF_MIN),
            ),
        };
        rbuf.clear();
        // Boxed: the connect and TLS handshake futures are large, and a future held
        // inline makes every request's future as large (moved on each attempt).
        let stream = match Box::pin(Stream::connect(target, addr)).await {
            Ok(s) => s,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        self.failed = false;
        self.conn = Some(Conn {
            stream,
            peer: Peer::of(target, addr),
            parser,
            rbuf,
            reusable: true,
            sent: 0,
            idle_since: Instant::now(),
        });
        Ok(())
    }

    /// Sends `req` to `addr` and reads the response. `req` is handed back for reuse.
    pub async fn exchange(
        &mut self,
        target: &Target,
        addr: SocketAddr,
        req: Vec<u8>,
    ) -> (Exchange, Vec<u8>) {
        let mut req = req;
        self.first = false;
        self.resent = false;
        for try_no in 0..2 {
            let mut reused = self.is_open(target, addr);
            let mut stale = try_no > 0; // the second try only follows a stale connection
            if reused && self.spoke_while_idle() {
                // It spoke while idle: whatever it sent answers no request of ours.
                reused = false;
                stale = true;
            }
            if !reused {
                let reason = stale.then_some(OpenReason::Stale);
                if let Err(msg) = self.open(target, addr, reason).await {
                    return (Exchange::Failed(msg), req);
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                unreachable!("connection set above")
            };
            self.first = conn.sent == 0;
            self.resent = try_no > 0;
            conn.sent += 1;
            let (res, b) = conn.stream.write_all(req).await;
            req = b;
            let result = match res {
                Err(e) => Err((format!("write: {e}"), true)),
                Ok(()) => read_response(conn).await,
            };
            match result {
                Ok((status, retry_after, keep_alive)) => {
                    if let Some(c) = self.conn.as_mut() {
                        // The excerpt stays readable; the stream is replaced next time.
                        c.reusable = keep_alive;
                        c.idle_since = Instant::now();
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
                    if reused && nothing_received && try_no == 0 {
                        continue; // a stale idle connection: once more on a fresh one
                    }
                    return (Exchange::Failed(msg), req);
                }
            }
        }
        (Exchange::Failed("connection closed".into()), req)
    }
}

/// What must match before a kept connection is reused: scheme, socket address and, for
/// TLS, the SNI name the certificate was checked against.
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

    fn matches(&self, target: &Target, addr: SocketAddr) -> bool {
        self.scheme == target.scheme
            && self.addr == addr
            && (self.scheme == Scheme::Http || self.sni == target.host)
    }
}

/// The byte stream under HTTP/1.1.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

impl Stream {
    /// Connects to `addr`, with a TLS handshake for `https://`.
    async fn connect(target: &Target, addr: SocketAddr) -> Result<Stream, String> {
        let tcp = TcpStream::connect_addr(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
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

/// Reads one response. Errors carry whether no byte of a response had arrived.
async fn read_response(conn: &mut Conn) -> Result<(u16, Option<Duration>, bool), (String, bool)> {
    conn.parser.reset();
    let mut received = false;
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
                        // it would read them as the next request's answer.
                        return Ok((status, retry_after, keep_alive && conn.rbuf.is_empty()));
                    }
                }
                Err(e) => return Err((format!("bad response: {e}"), false)),
            }
        }
        let buf = reserve(std::mem::take(&mut conn.rbuf));
        let (res, mut b) = conn.stream.read_append(buf).await;
        match res {
            Ok(0) => {
                conn.rbuf = b;
                return match conn.parser.eof() {
                    Ok(Progress::Done) => {
                        let (s, ra, _) = finish(&conn.parser);
                        Ok((s, ra, false))
                    }
                    Ok(Progress::NeedMore) | Err(_) => Err((
                        "connection closed before a complete response".into(),
                        !received,
                    )),
                };
            }
            Ok(_) => conn.rbuf = b,
            Err(e) => {
                b.clear();
                conn.rbuf = b;
                return Err((format!("read: {e}"), !received));
            }
        }
    }
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
        let b: SocketAddr = "10.0.0.2:443".parse().unwrap();
        let tls = Peer::of(&target("https://a.example/x"), a);
        assert!(tls.matches(&target("https://a.example/other?q=1"), a));
        assert!(tls.matches(&target("https://A.example:443/"), a));
        assert!(
            !tls.matches(&target("https://b.example/"), a),
            "SNI differs"
        );
        assert!(
            !tls.matches(&target("https://a.example/"), b),
            "address differs"
        );
        assert!(
            !tls.matches(&target("http://a.example:443/"), a),
            "scheme differs"
        );

        let plain = Peer::of(&target("http://a.example:443/"), a);
        assert!(
            plain.matches(&target("http://b.example:443/"), a),
            "Host is per request"
        );
        assert!(!plain.matches(&target("https://a.example/"), a));
        assert!(!plain.matches(&target("http://a.example:443/"), b));
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
        /// Answer with keep-alive; then, once told, send a `408` unasked and say so.
        KeepThenStray,
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
                        Step::Keep | Step::KeepThenStray => "keep-alive",
                        Step::Close => "close",
                    };
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: {conn}\r\n\r\nok"
                    );
                    if let (Step::KeepThenStray, Some((go, sent))) = (step, &stray) {
                        go.recv().unwrap();
                        let _ = write!(
                            w,
                            "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
                        );
                        sent.send(()).unwrap();
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
                let (ex, b) = slot.exchange(&target, addr, req).await;
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

    #[test]
    fn a_connection_that_spoke_while_idle_is_not_reused() {
        let (go_tx, go_rx) = mpsc::channel();
        let (sent_tx, sent_rx) = mpsc::channel();
        let addr = receiver_with(
            vec![vec![Step::KeepThenStray, Step::Keep], vec![Step::Keep]],
            Some((go_rx, sent_tx)),
        );
        let target = http1::parse_url(format!("http://{addr}/x").as_bytes()).unwrap();
        let counts = Rc::new(OpenCounts::default());
        let mut slot = ConnSlot::counted(counts.clone());
        slot.quiet_after = Duration::ZERO;
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        let statuses = crate::runtime::block_on(driver, async move {
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
                let (ex, b) = slot.exchange(&target, addr, req).await;
                req = b;
                match ex {
                    Exchange::Response { status, .. } => statuses.push(status),
                    other => panic!("{other:?}"),
                }
            }
            statuses
        })
        .unwrap();
        assert_eq!(
            statuses,
            [200, 200],
            "the unasked 408 was read as an answer"
        );
        let [first, peer_closed, after_error, stale, peer_changed] = counts.get();
        assert_eq!(
            (first, peer_closed, after_error, stale, peer_changed),
            (1, 0, 0, 1, 0)
        );
    }
}
