//! Ingest: the line protocol of SPEC §3 on the Unix-socket and TCP connections.
//!
//! The listeners and their acceptor threads are [`crate::server`]'s: they hand each new
//! connection to a worker, round-robin. On its worker a connection is two tasks: the
//! **reader** frames lines, parses them, and sends each read's events to the committer
//! as one batch; the **writer** answers every non-blank line in order once its batch is
//! durable. All connections together share [`MAX_LINES_IN_FLIGHT`] unanswered lines and
//! [`MAX_BYTES_IN_FLIGHT`] bytes of them, split evenly among the connections that have
//! any ([`LineBudget`]), with at least [`MIN_LINES_PER_CONNECTION`] and
//! [`MIN_BYTES_PER_CONNECTION`] each; past either share a connection's reader stops
//! reading (backpressure), so accepted input is never dropped. An oversize line is
//! skipped to its end and answered `err too_large`; the connection lives on. A line
//! still arriving is held whole until its end: past [`FREE_TAIL`] its bytes count in
//! [`MAX_UNFINISHED_BYTES`], shared by all connections ([`TailHold`]), and a line that
//! would take the total past it is refused like an oversize one, answered
//! `err unavailable` (refused, not waited for: connections each holding half a line and
//! waiting for one another's to end would never read again). At
//! shutdown ([`ConnShared::stop`]) a reader stops reading at once (a line still
//! arriving is left unanswered, so it was not accepted), and the writer answers every
//! line read before it shuts the connection's write side; over TCP what the peer still
//! sends is then read and dropped until the answers have reached it (bounded), so the
//! close is no reset that would drop answers still queued.
//!
//! This module must not write the store or route events: that is the committer's job.

pub mod parse;
#[cfg(test)]
pub(crate) mod proptests;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};

use crate::commit::{AckResult, AckTo, CommitMsg, IngestBatch};
use crate::local::LocalNotify;
use crate::metrics::IngestCounters;
use crate::shard::MailboxSender;
use parse::LineParser;

/// Unanswered lines all ingest connections together may hold before readers pause: one
/// busy producer may use all of them, two get half each, and so on.
const MAX_LINES_IN_FLIGHT: usize = 8192;
/// Unanswered lines a connection may hold however many others are busy (so many
/// producers are bounded by this times their number).
const MIN_LINES_PER_CONNECTION: usize = 512;
/// Bytes of unanswered lines all ingest connections together may hold before readers
/// pause, split as the lines are: with large events the lines alone would let memory
/// grow with their size (8,192 lines of 1 MiB).
const MAX_BYTES_IN_FLIGHT: usize = 64 << 20;
/// Bytes of unanswered lines a connection may hold however many others are busy. A
/// connection with none in flight always reads, so a line of `max_line_bytes` goes.
const MIN_BYTES_PER_CONNECTION: usize = 1 << 20;
/// Bytes of unfinished lines (read, their end not yet) all ingest connections together
/// may hold past [`FREE_TAIL`] each. Without it each could hold up to `max_line_bytes`
/// while its producer takes its time: 300 connections with 900 KB each held +372 MiB.
/// Never less than one line of `max_line_bytes` ([`LineBudget::for_server`]).
pub const MAX_UNFINISHED_BYTES: usize = 64 << 20;
/// An unfinished line up to this long counts in no budget (a read's worth: connections
/// with small lines never touch the shared count); a longer one holds all its bytes
/// from [`MAX_UNFINISHED_BYTES`] until it ends.
const FREE_TAIL: usize = READ_CHUNK;
const READ_CHUNK: usize = 64 * 1024;
/// What a connection reads at most at a time until a read fills its window, and again
/// once a read brings less than half of it with nothing left unframed: an idle
/// connection (a read waiting) holds this much, not [`READ_CHUNK`] (see
/// [`parse::LineParser`]'s `Default` for the figures).
const FIRST_READ: usize = 4 * 1024;
/// Longest a stopped TCP connection waits for its answers to reach the peer ([`linger`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);
/// How often [`linger`] looks at the socket while nothing arrives.
const LINGER_LOOK: std::time::Duration = std::time::Duration::from_millis(20);
/// A UTF-8 byte order mark: ignored before a connection's first line.
pub(crate) const BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

/// One answer slot, in line order.
enum Slot {
    /// Already known (`err ...`).
    Ready(Vec<u8>),
    /// The n-th event of the batch; answered by the committer.
    Event(usize),
}

struct PendingBatch {
    ticket: u64,
    slots: Vec<Slot>,
    /// The bytes of its events' lines.
    bytes: usize,
    /// `None` until the committer answers (always `Some` for batches without events).
    results: Option<Vec<AckResult>>,
}

/// The process-wide split of [`MAX_LINES_IN_FLIGHT`]: how many connections, on every
/// worker, have unanswered lines. A connection touches it when it becomes busy or idle,
/// not per line. A reader paused at its share always has lines of its own in flight, so
/// its own acks wake it to look again; no connection waits on another worker. And the
/// bytes of unfinished lines past [`FREE_TAIL`] ([`TailHold`]), never waited for.
#[derive(Debug)]
pub struct LineBudget {
    busy: AtomicUsize,
    /// Bytes the connections' [`TailHold`]s hold.
    unfinished: AtomicUsize,
    /// What they may hold together.
    unfinished_limit: usize,
}

/// (Tests': the server's is [`LineBudget::for_server`].)
#[cfg(test)]
impl Default for LineBudget {
    fn default() -> Self {
        LineBudget::with_unfinished_limit(MAX_UNFINISHED_BYTES)
    }
}

/// Test hook: `RICOCHET_TEST_UNFINISHED_BYTES=N` puts the budget of unfinished lines at
/// N bytes instead of [`MAX_UNFINISHED_BYTES`] (still at least one longest line), so a
/// test reaches it with a few lines. Read once at start-up; unset, nothing changes.
fn test_unfinished_limit() -> Option<usize> {
    std::env::var("RICOCHET_TEST_UNFINISHED_BYTES")
        .ok()?
        .parse()
        .ok()
}

impl LineBudget {
    fn with_unfinished_limit(unfinished_limit: usize) -> Self {
        LineBudget {
            busy: AtomicUsize::new(0),
            unfinished: AtomicUsize::new(0),
            unfinished_limit,
        }
    }

    /// The server's budget. A line of `max_line_bytes` (its `\r` and a byte order mark
    /// before it too) always fits in an empty one: a budget smaller than a line allowed
    /// would refuse that line however long its producer retried.
    pub fn for_server(max_line_bytes: usize) -> Self {
        let limit = test_unfinished_limit().unwrap_or(MAX_UNFINISHED_BYTES);
        LineBudget::with_unfinished_limit(limit.max(max_line_bytes + 1 + BOM.len()))
    }

    /// Bytes of unfinished lines held past [`FREE_TAIL`] now.
    #[cfg(test)]
    fn unfinished_bytes(&self) -> usize {
        self.unfinished.load(Ordering::Relaxed)
    }

    /// Unanswered lines one busy connection may hold now.
    pub fn per_connection(&self) -> usize {
        (MAX_LINES_IN_FLIGHT / self.busy()).max(MIN_LINES_PER_CONNECTION)
    }

    /// Bytes of unanswered lines one busy connection may hold now.
    pub fn bytes_per_connection(&self) -> usize {
        (MAX_BYTES_IN_FLIGHT / self.busy()).max(MIN_BYTES_PER_CONNECTION)
    }

    fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed).max(1)
    }
}

/// State shared by a connection's reader and writer and the worker's mailbox task.
pub struct ConnShared {
    pending: RefCell<VecDeque<PendingBatch>>,
    in_flight: Cell<usize>,
    /// The bytes of those lines.
    in_flight_bytes: Cell<usize>,
    budget: Arc<LineBudget>,
    reader_done: Cell<bool>,
    writer_failed: Cell<bool>,
    /// Set at shutdown: read no more.
    stopped: Cell<bool>,
    writer_wake: LocalNotify,
    reader_wake: LocalNotify,
    stop_wake: LocalNotify,
}

impl ConnShared {
    fn new(budget: Arc<LineBudget>) -> Self {
        ConnShared {
            pending: RefCell::new(VecDeque::new()),
            in_flight: Cell::new(0),
            in_flight_bytes: Cell::new(0),
            budget,
            reader_done: Cell::new(false),
            writer_failed: Cell::new(false),
            stopped: Cell::new(false),
            writer_wake: LocalNotify::default(),
            reader_wake: LocalNotify::default(),
            stop_wake: LocalNotify::default(),
        }
    }

    /// Shutdown: the reader stops reading (a read under way is cancelled, and an
    /// unfinished line is dropped unanswered); the lines it framed are still answered,
    /// once durable, before the connection closes.
    pub fn stop(&self) {
        self.stopped.set(true);
        self.stop_wake.notify();
        self.reader_wake.notify();
    }

    /// Sets the unanswered-line count, counting the connection busy while it is not 0.
    fn set_in_flight(&self, n: usize) {
        match (self.in_flight.replace(n), n) {
            (0, 1..) => {
                self.budget.busy.fetch_add(1, Ordering::Relaxed);
            }
            (1.., 0) => {
                self.budget.busy.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// `lines` more unanswered lines holding `bytes` of events (the reader framed them).
    fn take(&self, lines: usize, bytes: usize) {
        self.set_in_flight(self.in_flight.get() + lines);
        self.in_flight_bytes.set(self.in_flight_bytes.get() + bytes);
    }

    /// `lines` holding `bytes` answered (the writer wrote them).
    fn give_back(&self, lines: usize, bytes: usize) {
        self.set_in_flight(self.in_flight.get().saturating_sub(lines));
        self.in_flight_bytes
            .set(self.in_flight_bytes.get().saturating_sub(bytes));
    }

    /// Lines read and not yet answered.
    pub fn unanswered(&self) -> usize {
        self.in_flight.get()
    }

    /// Whether the reader must wait for answers before reading more.
    fn over_share(&self) -> bool {
        self.in_flight.get() >= self.budget.per_connection()
            || self.in_flight_bytes.get() >= self.budget.bytes_per_connection()
    }

    /// The committer's answers for batch `ticket`.
    pub fn complete(&self, ticket: u64, results: Vec<AckResult>) {
        if let Some(b) = self
            .pending
            .borrow_mut()
            .iter_mut()
            .find(|b| b.ticket == ticket)
        {
            b.results = Some(results);
        }
        self.writer_wake.notify();
    }
}

impl Drop for ConnShared {
    /// A connection that ends with lines unanswered (its peer gone) is no longer busy.
    fn drop(&mut self) {
        self.set_in_flight(0);
    }
}

/// What a connection needs from its worker.
pub struct ConnCtx {
    pub worker: usize,
    pub conn: u64,
    pub max_line_bytes: usize,
    /// The server's `retention` ([`parse::LineParser::for_ingest`]).
    pub retention: std::time::Duration,
    pub commit: MailboxSender<CommitMsg>,
    /// The worker's counters of lines rejected here.
    pub counters: Rc<IngestCounters>,
    /// A TCP connection's socket, read for its unsent bytes before the close after a
    /// stop ([`linger`]); `None` for a Unix one (its close loses no queued answer).
    pub tcp_fd: Option<std::os::fd::RawFd>,
}

/// Serves one ingest connection until the peer closes it and every answer is written.
pub async fn serve_connection<S>(stream: S, ctx: ConnCtx, shared: Rc<ConnShared>)
where
    S: Splitable,
    S::OwnedRead: AsyncReadRent + 'static,
    S::OwnedWrite: monoio::io::AsyncWriteRent + 'static,
{
    let (mut rd, wr) = stream.into_split();
    let writer = monoio::spawn(write_acks(wr, shared.clone()));
    read_lines(&mut rd, &ctx, &shared).await;
    shared.reader_done.set(true);
    shared.writer_wake.notify();
    writer.await;
    if let Some(fd) = ctx
        .tcp_fd
        .filter(|_| shared.stopped.get() && !shared.writer_failed.get())
    {
        linger(&mut rd, fd).await;
    }
}

/// After a stop, the answers written and the write side shut: reads and drops what the
/// TCP peer still sends until every answer has reached it (nothing left unacknowledged
/// in the socket), or it closes, for at most [`LINGER`]. A close with input unread is a
/// reset, and a reset drops the answers still queued in the socket.
async fn linger<R: AsyncReadRent>(rd: &mut R, fd: std::os::fd::RawFd) {
    let deadline = std::time::Instant::now() + LINGER;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || unsent(fd) == Some(0) {
            return;
        }
        buf.clear();
        match monoio::time::timeout(left.min(LINGER_LOOK), rd.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => buf = b,
            Ok(_) => return,
            // Nothing came meanwhile: look at the socket again.
            Err(_) => buf = Vec::with_capacity(READ_CHUNK),
        }
    }
}

/// Bytes written to TCP socket `fd` that its peer has not acknowledged yet.
fn unsent(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; `fd` is the connection's open socket.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0).then_some(n.max(0) as usize)
}

/// Creates the shared state of a new connection, drawing on `budget`.
pub fn new_connection(budget: Arc<LineBudget>) -> Rc<ConnShared> {
    Rc::new(ConnShared::new(budget))
}

/// What a connection's unfinished line holds of [`MAX_UNFINISHED_BYTES`]: nothing while
/// it is at most [`FREE_TAIL`] long (no shared count touched), all its bytes past that,
/// given back when the line ends, is refused, or the connection ends.
struct TailHold<'a> {
    budget: &'a LineBudget,
    held: usize,
}

impl TailHold<'_> {
    /// Holds the `tail` bytes of the line now unfinished; false if the budget cannot
    /// (then nothing is held, and the line must be dropped).
    fn cover(&mut self, tail: usize) -> bool {
        if tail <= FREE_TAIL {
            self.release();
            return true;
        }
        if tail <= self.held {
            // A large line ended and the next began in the same read.
            self.budget
                .unfinished
                .fetch_sub(self.held - tail, Ordering::Relaxed);
            self.held = tail;
            return true;
        }
        let more = tail - self.held;
        let limit = self.budget.unfinished_limit;
        let taken =
            self.budget
                .unfinished
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                    total.checked_add(more).filter(|&t| t <= limit)
                });
        if taken.is_ok() {
            self.held = tail;
            true
        } else {
            self.release();
            false
        }
    }

    fn release(&mut self) {
        if self.held > 0 {
            self.budget
                .unfinished
                .fetch_sub(std::mem::take(&mut self.held), Ordering::Relaxed);
        }
    }
}

impl Drop for TailHold<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

struct Framer<'a> {
    ctx: &'a ConnCtx,
    parser: LineParser,
    /// What the rest of a line dropped for its length gets.
    skipping: Skip,
    /// No line framed yet: a UTF-8 byte order mark before the first one is dropped (a
    /// file saved with one, sent as it is; RFC 8259 §8.1 lets a parser ignore it).
    at_start: bool,
    ticket: u64,
    slots: Vec<Slot>,
    /// The bytes `slots` hold in memory until answered: their events' lines, and the
    /// `err` answers made here (a read of short bad lines is mostly answers).
    bytes: usize,
    events: Vec<crate::commit::NewEvent>,
    /// [`LineBudget`]'s, for the `err unavailable` answer.
    unfinished_limit: usize,
}

impl Framer<'_> {
    fn line(&mut self, mut line: &[u8]) {
        if std::mem::take(&mut self.at_start) {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        match std::mem::take(&mut self.skipping) {
            Skip::No => {}
            Skip::Blank(_) if is_blank(line) => return,
            Skip::Blank(Refusal::TooLarge) | Skip::Line(Refusal::TooLarge) => {
                self.too_large();
                return;
            }
            Skip::Blank(Refusal::Unavailable) | Skip::Line(Refusal::Unavailable) => {
                self.unavailable();
                return;
            }
        }
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        if is_blank(line) {
            return;
        }
        if line.len() > self.ctx.max_line_bytes {
            self.too_large();
            return;
        }
        match self.parser.parse(line) {
            Ok(ev) => {
                self.bytes += line.len();
                self.slots.push(Slot::Event(self.events.len()));
                self.events.push(ev);
            }
            Err(e) => {
                self.ctx.counters.count_invalid();
                let mut msg = String::from("err invalid ");
                push_printable(&mut msg, &e.0);
                msg.push('\n');
                let msg = msg.into_bytes();
                self.bytes += msg.len();
                self.slots.push(Slot::Ready(msg));
            }
        }
    }

    fn too_large(&mut self) {
        self.ctx.counters.count_too_large();
        let msg = format!(
            "err too_large line exceeds max_line_bytes ({})\n",
            self.ctx.max_line_bytes
        );
        self.bytes += msg.len();
        self.slots.push(Slot::Ready(msg.into_bytes()));
    }

    /// A line refused for the memory of unfinished lines ([`TailHold`]): SPEC §3's
    /// "cannot persist now; retry later".
    fn unavailable(&mut self) {
        self.ctx.counters.count_unavailable();
        let msg = format!(
            "err unavailable too many long lines arriving at once (unfinished lines hold \
             their budget of {} bytes); retry later\n",
            self.unfinished_limit
        );
        self.bytes += msg.len();
        self.slots.push(Slot::Ready(msg.into_bytes()));
    }

    /// Hands the lines framed so far to the writer (and their events to the committer).
    fn flush(&mut self, shared: &ConnShared) {
        if self.slots.is_empty() {
            return;
        }
        self.ticket += 1;
        let slots = std::mem::take(&mut self.slots);
        let bytes = std::mem::take(&mut self.bytes);
        shared.take(slots.len(), bytes);
        let results = if self.events.is_empty() {
            Some(Vec::new())
        } else {
            let events = std::mem::take(&mut self.events);
            let n = events.len();
            let sent = self.ctx.commit.send(CommitMsg::Ingest(IngestBatch {
                to: AckTo::Conn {
                    worker: self.ctx.worker,
                    conn: self.ctx.conn,
                    ticket: self.ticket,
                },
                events,
                sent_at: std::time::Instant::now(),
            }));
            if sent {
                None
            } else {
                Some(vec![
                    AckResult::Unavailable("server is shutting down".into());
                    n
                ])
            }
        };
        shared.pending.borrow_mut().push_back(PendingBatch {
            ticket: self.ticket,
            slots,
            bytes,
            results,
        });
        shared.writer_wake.notify();
    }
}

async fn read_lines<R: AsyncReadRent>(rd: &mut R, ctx: &ConnCtx, shared: &ConnShared) {
    let mut framer = Framer {
        ctx,
        parser: LineParser::for_ingest(ctx.retention),
        skipping: Skip::No,
        at_start: true,
        ticket: 0,
        slots: Vec::new(),
        bytes: 0,
        events: Vec::new(),
        unfinished_limit: shared.budget.unfinished_limit,
    };
    let mut tail = TailHold {
        budget: &shared.budget,
        held: 0,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
    // How much one read may bring: [`FIRST_READ`] or [`READ_CHUNK`].
    let mut chunk = FIRST_READ;
    // Bytes of `buf` already searched for a newline.
    let mut scanned = 0usize;
    let halted = || shared.writer_failed.get() || shared.stopped.get();
    loop {
        while shared.over_share() && !halted() {
            shared.reader_wake.wait().await;
        }
        if halted() {
            return;
        }
        let window = read_window(&mut buf, chunk);
        let filled = window.len();
        let (res, b) = monoio::select! {
            biased;
            read = rd.read(buf.slice_mut(window)) => read,
            // Cancelled by a stop: what the read would have brought is not taken.
            _ = shared.stop_wake.wait() => return,
        };
        buf = b.into_inner();
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "ingest read failed");
                0
            }
        };
        if n == 0 {
            // The last line, without its newline; or the rest of an oversize one, whether
            // or not part of it is still buffered.
            if framer.skipping != Skip::No || !buf.is_empty() {
                let last = std::mem::take(&mut buf);
                framer.line(&last);
            }
            framer.flush(shared);
            return;
        }
        let start = split_lines(&buf, scanned, |line| framer.line(line));
        framer.flush(shared);
        buf.drain(..start);
        scanned = buf.len();
        if buf.is_empty() {
            framer.parser.trim();
        }
        if n == filled {
            chunk = READ_CHUNK;
        } else if n < FIRST_READ / 2 && buf.is_empty() && buf.capacity() > FIRST_READ {
            // A producer that sends a line now and then: back to a small buffer.
            chunk = FIRST_READ;
            buf = Vec::with_capacity(FIRST_READ);
        }
        settle(&mut buf);
        // (A byte order mark before the first line does not count: it is dropped.)
        let bom = if framer.at_start && buf.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        let refused = if unfinished_too_long(&buf, ctx.max_line_bytes + bom)
            // (A line already refused keeps no more than a read's worth of its rest.)
            || (framer.skipping != Skip::No && buf.len() > FREE_TAIL)
        {
            Some(Refusal::TooLarge)
        } else if tail.cover(buf.len()) {
            None
        } else {
            Some(Refusal::Unavailable)
        };
        if let Some(why) = refused {
            // The current line is already too long, or cannot be held: drop what we
            // have, skip to its end (a blank one stays blank until a byte of its rest is
            // not; one already refused keeps its answer).
            let blank = is_blank(&buf[bom..]);
            framer.skipping = match framer.skipping {
                Skip::No if blank => Skip::Blank(why),
                Skip::No => Skip::Line(why),
                Skip::Blank(was) if blank => Skip::Blank(was),
                Skip::Blank(was) | Skip::Line(was) => Skip::Line(was),
            };
            // The first line has begun: a mark further on in it is its text, wherever
            // a read happens to start (it was dropped at the start of the next read).
            framer.at_start = false;
            tail.release();
            if buf.capacity() > parse::KEEP_BYTES {
                // Given back now, not after the next read (the producer may be slow to
                // send the rest).
                buf = Vec::with_capacity(READ_CHUNK);
            } else {
                buf.clear();
            }
            scanned = 0;
        }
    }
}

/// What the rest of a line dropped unfinished (its end not read yet) gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Skip {
    #[default]
    No,
    /// Whitespace so far: no answer if the rest is whitespace too, as for any blank
    /// line, whatever its length (the answer must not depend on how reads split it).
    Blank(Refusal),
    /// The refusal's answer.
    Line(Refusal),
}

/// Why a line was dropped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Over `max_line_bytes`: `err too_large`.
    TooLarge,
    /// The budget of unfinished lines is taken ([`TailHold`]): `err unavailable`.
    Unavailable,
}

/// A line of whitespace only (blank lines get no answer).
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|&b| is_blank_byte(b))
}

/// Whitespace as JSON has it (space, tab, carriage return; a newline ends the line): a
/// line of other control characters, such as a form feed, is not blank but invalid.
pub fn is_blank_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

/// Where the next read goes in `buf`, its unfinished rest kept: at most `chunk` (at
/// most [`READ_CHUNK`]) after it, however far a long line grew the buffer. The line
/// budget is checked between reads, so what one read brings is what a connection may
/// run past its share (a read filling a 2 MiB buffer could bring 100,000 short lines
/// at once).
fn read_window(buf: &mut Vec<u8>, chunk: usize) -> std::ops::Range<usize> {
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk);
    }
    buf.len()..buf.capacity().min(buf.len() + chunk)
}

/// After framing: a buffer a large line grew past [`parse::KEEP_BYTES`] goes back once
/// what is left of it is small (a producer still streaming large lines keeps it), so
/// a connection holds a read's worth again.
fn settle(buf: &mut Vec<u8>) {
    if buf.capacity() > parse::KEEP_BYTES && buf.len() <= READ_CHUNK / 4 {
        let mut small = Vec::with_capacity(READ_CHUNK);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

/// Appends `text` with its control characters (the parser's message may quote an input
/// byte) written as `\u{1b}`, so an answer stays one printable line.
fn push_printable(out: &mut String, text: &str) {
    for c in text.chars() {
        if c.is_control() {
            let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
}

/// Whether the unfinished line in `buf` is already over the limit. A line's length does
/// not count its terminator, so a trailing `\r` (the first half of a `\r\n` whose `\n`
/// is still on its way) is not held against it: the answer must not depend on where
/// the producer's bytes were split between reads.
fn unfinished_too_long(buf: &[u8], max_line_bytes: usize) -> bool {
    buf.len() > max_line_bytes + usize::from(buf.last() == Some(&b'\r'))
}

/// Calls `f` with every complete line of `buf` (without its `\n`), looking for line ends
/// from `scanned` on (the bytes before it are known to hold none). Returns where the
/// unfinished rest begins.
pub fn split_lines(buf: &[u8], scanned: usize, mut f: impl FnMut(&[u8])) -> usize {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', &buf[scanned..]) {
        let end = scanned + end;
        f(&buf[start..end]);
        start = end + 1;
    }
    start
}

async fn write_acks<W: monoio::io::AsyncWriteRent>(mut wr: W, shared: Rc<ConnShared>) {
    let mut out: Vec<u8> = Vec::new();
    loop {
        let mut answered = 0usize;
        let mut answered_bytes = 0usize;
        loop {
            let ready = matches!(shared.pending.borrow().front(), Some(b) if b.results.is_some());
            if !ready {
                break;
            }
            let Some(batch) = shared.pending.borrow_mut().pop_front() else {
                break;
            };
            let results = batch.results.unwrap_or_default();
            answered_bytes += batch.bytes;
            for slot in batch.slots {
                answered += 1;
                match slot {
                    Slot::Ready(line) => out.extend_from_slice(&line),
                    Slot::Event(i) => match results.get(i) {
                        Some(AckResult::Ok { id, deliveries }) => {
                            out.extend_from_slice(b"ok ");
                            out.extend_from_slice(id.as_bytes());
                            out.push(b' ');
                            out.extend_from_slice(
                                itoa::Buffer::new().format(*deliveries).as_bytes(),
                            );
                            out.push(b'\n');
                        }
                        Some(AckResult::Dup { id }) => {
                            out.extend_from_slice(b"dup ");
                            out.extend_from_slice(id.as_bytes());
                            out.push(b'\n');
                        }
                        Some(AckResult::Unavailable(msg)) => {
                            let _ = writeln!(out, "err unavailable {msg}");
                        }
                        None => out.extend_from_slice(b"err unavailable no answer\n"),
                    },
                }
            }
        }
        if !out.is_empty() {
            let (res, b) = wr.write_all(out).await;
            out = b;
            out.clear();
            if res.is_err() {
                shared.writer_failed.set(true);
                shared.reader_wake.notify();
                return;
            }
        }
        if answered > 0 {
            shared.give_back(answered, answered_bytes);
            shared.reader_wake.notify();
            continue;
        }
        if shared.reader_done.get() && shared.pending.borrow().is_empty() {
            let _ = wr.shutdown().await;
            return;
        }
        shared.writer_wake.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_connections_split_the_line_budget() {
        let budget = Arc::new(LineBudget::default());
        assert_eq!(budget.per_connection(), MAX_LINES_IN_FLIGHT);
        let a = new_connection(budget.clone());
        let b = new_connection(budget.clone());
        // Open but idle connections take no share.
        assert_eq!(budget.per_connection(), MAX_LINES_IN_FLIGHT);
        a.set_in_flight(10);
        assert_eq!(budget.per_connection(), MAX_LINES_IN_FLIGHT);
        a.set_in_flight(MAX_LINES_IN_FLIGHT);
        assert!(a.over_share());
        b.set_in_flight(1);
        assert_eq!(budget.per_connection(), MAX_LINES_IN_FLIGHT / 2);
        assert!(!b.over_share());
        // Answered down to zero: idle again, the other gets everything back.
        a.set_in_flight(0);
        assert_eq!(budget.per_connection(), MAX_LINES_IN_FLIGHT);
        a.set_in_flight(5);
        // A connection dropped with lines unanswered gives its share back.
        drop(b);
        assert_eq!(budget.busy.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(budget.busy.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn large_lines_pause_a_reader_by_their_bytes() {
        let budget = Arc::new(LineBudget::default());
        let a = new_connection(budget.clone());
        a.set_in_flight(10);
        a.in_flight_bytes.set(MAX_BYTES_IN_FLIGHT - 1);
        assert!(!a.over_share());
        a.in_flight_bytes.set(MAX_BYTES_IN_FLIGHT);
        assert!(a.over_share(), "10 lines, but 64 MiB of them");
        // Two busy: half the bytes each, never less than the floor.
        let b = new_connection(budget.clone());
        b.set_in_flight(1);
        assert_eq!(budget.bytes_per_connection(), MAX_BYTES_IN_FLIGHT / 2);
        let many: Vec<_> = (0..200).map(|_| new_connection(budget.clone())).collect();
        for c in &many {
            c.set_in_flight(1);
        }
        assert_eq!(budget.bytes_per_connection(), MIN_BYTES_PER_CONNECTION);
    }

    #[test]
    fn every_connection_keeps_a_floor_however_many_are_busy() {
        let budget = Arc::new(LineBudget::default());
        let many: Vec<_> = (0..100).map(|_| new_connection(budget.clone())).collect();
        for c in &many {
            c.set_in_flight(1);
        }
        assert_eq!(budget.per_connection(), MIN_LINES_PER_CONNECTION);
        assert!(!many[0].over_share());
        many[0].set_in_flight(MIN_LINES_PER_CONNECTION);
        assert!(many[0].over_share());
    }

    /// A valid line of `len` bytes with id `id`.
    fn line_of(id: &str, len: usize) -> Vec<u8> {
        let head = format!(r#"{{"type":"t","id":"{id}","data":{{"p":""#);
        let mut l = head.into_bytes();
        l.resize(len - 3, b'a');
        l.extend_from_slice(b"\"}}");
        assert_eq!(l.len(), len);
        l
    }

    /// `lines`, each ended by `\n`, read 64 KiB at a time by a connection drawing on
    /// `budget` (max_line_bytes 1 MiB).
    fn frame(lines: &[Vec<u8>], budget: &Arc<LineBudget>) -> Vec<String> {
        let stream: Vec<u8> = lines
            .iter()
            .flat_map(|l| [&l[..], b"\n"].concat())
            .collect();
        let sizes = vec![READ_CHUNK; stream.len() / READ_CHUNK + 1];
        proptests::framed_in(&stream, &sizes, 1 << 20, budget.clone())
    }

    #[test]
    fn a_long_line_past_the_budget_of_unfinished_lines_is_refused_and_the_next_taken() {
        let budget = Arc::new(LineBudget::with_unfinished_limit(300_000));
        // Other connections' unfinished lines hold 250,000 bytes.
        budget.unfinished.store(250_000, Ordering::Relaxed);
        let answers = frame(&[line_of("big", 100_000), line_of("next", 200)], &budget);
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert!(
            answers[0].starts_with("err unavailable ") && answers[0].ends_with("retry later\n"),
            "{}",
            answers[0]
        );
        assert!(
            answers[1].starts_with("event t Some(\"next\")"),
            "{}",
            answers[1]
        );
        // It holds nothing once refused (nor did the short line).
        assert_eq!(budget.unfinished_bytes(), 250_000);
        // With room for it, the same line is taken, and what it held given back.
        budget.unfinished.store(200_000, Ordering::Relaxed);
        let answers = frame(&[line_of("big", 100_000), line_of("next", 200)], &budget);
        assert!(
            answers[0].starts_with("event t Some(\"big\")"),
            "{answers:?}"
        );
        assert!(
            answers[1].starts_with("event t Some(\"next\")"),
            "{answers:?}"
        );
        assert_eq!(budget.unfinished_bytes(), 200_000);
    }

    #[test]
    fn lines_no_longer_than_a_read_never_ask_the_budget_of_unfinished_lines() {
        // The budget all taken: lines of up to 64 KiB go as ever, however reads split
        // them.
        let budget = Arc::new(LineBudget::with_unfinished_limit(1 << 20));
        budget.unfinished.store(1 << 20, Ordering::Relaxed);
        let lines: Vec<_> = (0..20)
            .map(|i| line_of(&format!("l{i}"), FREE_TAIL - i * 1000))
            .collect();
        let answers = frame(&lines, &budget);
        assert_eq!(answers.len(), 20);
        assert!(
            answers.iter().all(|a| a.starts_with("event ")),
            "{answers:?}"
        );
        assert_eq!(budget.unfinished_bytes(), 1 << 20);
    }

    #[test]
    fn a_refused_blank_line_stays_unanswered_unless_its_rest_is_not_blank() {
        let budget = Arc::new(LineBudget::with_unfinished_limit(100_000));
        budget.unfinished.store(100_000, Ordering::Relaxed);
        let blank = vec![b' '; 200_000];
        let answers = frame(&[blank.clone(), line_of("a", 100)], &budget);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(answers[0].starts_with("event t Some(\"a\")"), "{answers:?}");
        let mut then_text = blank;
        then_text.extend_from_slice(&line_of("b", 200_000));
        let answers = frame(&[then_text, line_of("a", 100)], &budget);
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert!(answers[0].starts_with("err unavailable "), "{answers:?}");
        assert!(answers[1].starts_with("event t Some(\"a\")"), "{answers:?}");
    }

    #[test]
    fn a_tail_hold_takes_past_the_free_tail_and_gives_all_back() {
        let budget = LineBudget::with_unfinished_limit(1 << 20);
        let mut a = TailHold {
            budget: &budget,
            held: 0,
        };
        assert!(a.cover(FREE_TAIL));
        assert_eq!(budget.unfinished_bytes(), 0);
        assert!(a.cover(FREE_TAIL + 1));
        assert!(a.cover(700_000));
        assert_eq!(budget.unfinished_bytes(), 700_000);
        let mut b = TailHold {
            budget: &budget,
            held: 0,
        };
        // No room for b's line: it holds nothing, a keeps its own.
        assert!(b.cover(300_000));
        assert!(!b.cover(400_000));
        assert_eq!((b.held, budget.unfinished_bytes()), (0, 700_000));
        // a's line ended and a long one began in the same read.
        assert!(a.cover(100_000));
        assert_eq!(budget.unfinished_bytes(), 100_000);
        assert!(b.cover(400_000));
        // A connection ending mid-line gives back what it held.
        drop(a);
        assert_eq!(budget.unfinished_bytes(), 400_000);
        assert!(b.cover(10));
        assert_eq!(budget.unfinished_bytes(), 0);
    }

    #[test]
    fn the_server_s_budget_of_unfinished_lines_fits_its_longest_line() {
        assert_eq!(
            LineBudget::for_server(1 << 20).unfinished_limit,
            MAX_UNFINISHED_BYTES
        );
        let huge = 100 << 20;
        assert!(LineBudget::for_server(huge).unfinished_limit >= huge + 1 + BOM.len());
    }

    #[test]
    fn answers_quote_control_characters_escaped() {
        let mut out = String::new();
        push_printable(&mut out, "bad ('\x1b') at 3\nnext\u{85}é");
        assert_eq!(out, "bad ('\\u{1b}') at 3\\u{a}next\\u{85}é");
    }

    #[test]
    fn splits_complete_lines_and_returns_the_rest() {
        let mut lines = Vec::new();
        let rest = split_lines(b"a\n\nbc\r\nde", 0, |l| lines.push(l.to_vec()));
        assert_eq!(lines, [b"a".to_vec(), b"".to_vec(), b"bc\r".to_vec()]);
        assert_eq!(rest, 7);
        // Searching from `scanned` still hands whole lines from the start.
        let mut lines = Vec::new();
        let rest = split_lines(b"abcdef\ngh", 3, |l| lines.push(l.to_vec()));
        assert_eq!((lines, rest), (vec![b"abcdef".to_vec()], 7));
        let rest = split_lines(b"no end", 0, |_| panic!("no complete line"));
        assert_eq!(rest, 0);
    }

    #[test]
    fn a_read_brings_at_most_a_chunk_however_large_the_buffer_grew() {
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        assert_eq!(read_window(&mut buf, READ_CHUNK), 0..READ_CHUNK);
        // A connection's first reads: a small window in a small buffer.
        let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
        assert_eq!(read_window(&mut buf, FIRST_READ), 0..FIRST_READ);
        assert_eq!(buf.capacity(), FIRST_READ);
        // A long line grew it to 2 MiB; framed, 10 bytes of the next line are left.
        let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
        buf.extend_from_slice(b"0123456789");
        let w = read_window(&mut buf, READ_CHUNK);
        assert_eq!(w, 10..10 + READ_CHUNK);
        // Still growing for a line longer than what is free.
        let mut buf = vec![b'x'; READ_CHUNK - 100];
        let w = read_window(&mut buf, READ_CHUNK);
        assert_eq!(w.start, READ_CHUNK - 100);
        assert!(w.len() >= READ_CHUNK / 4 && w.len() <= READ_CHUNK, "{w:?}");
        assert!(buf.capacity() >= w.end);
    }

    #[test]
    fn a_large_line_s_buffer_goes_back_once_little_is_left() {
        let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
        buf.extend_from_slice(&[b'y'; 1000]);
        settle(&mut buf);
        assert_eq!((buf.len(), buf.capacity()), (1000, READ_CHUNK));
        assert!(buf.iter().all(|&b| b == b'y'));
        // Still a large line's worth pending: kept.
        let mut buf = vec![b'z'; parse::KEEP_BYTES + 1];
        settle(&mut buf);
        assert_eq!(buf.len(), parse::KEEP_BYTES + 1);
    }

    #[test]
    fn a_trailing_cr_is_not_held_against_an_unfinished_line() {
        let line = vec![b'x'; 200];
        assert!(!unfinished_too_long(&line, 200));
        let mut with_cr = line.clone();
        with_cr.push(b'\r');
        // The `\n` of this `\r\n` may arrive in the next read: still a 200-byte line.
        assert!(!unfinished_too_long(&with_cr, 200));
        with_cr.push(b'y');
        assert!(unfinished_too_long(&with_cr, 200));
        let mut over = line.clone();
        over.push(b'z');
        assert!(unfinished_too_long(&over, 200));
        let mut cr_over = over.clone();
        cr_over.push(b'\r');
        assert!(unfinished_too_long(&cr_over, 200));
    }
}
