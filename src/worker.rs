//! A worker: one thread, one monoio runtime, one shard of the endpoints.
//!
//! A worker owns its endpoints' live state outright — ready queues, delivery lanes with
//! their keep-alive connections, failure counters, the in-memory timer wheel — and its
//! share of the ingest connections. Nothing here is shared with another thread: all
//! cross-core traffic arrives in the worker's mailbox ([`WorkerMsg`]) and leaves through
//! the committer's (as it stops, it also leaves its last metrics snapshot in its slot
//! of [`FinalSnapshots`]; its delivery and ingest sockets count against process-wide
//! budgets, [`crate::fdlimit`]).
//!
//! The loop, top to bottom: the mailbox task takes new connections, acks and jobs; jobs
//! due later wait in the timer wheel; due jobs join their endpoint's queue; up to
//! `max_in_flight` lanes per endpoint take jobs from the queue, each owning one
//! connection; every attempt's outcome goes back to the committer in batches.
//!
//! Metrics are counted where outcomes are reported (`report_n`): plain integer
//! adds and histogram records in this worker's own cells, copied out on
//! [`WorkerMsg::Snapshot`].
//!
//! It must not block: no store access, no blocking DNS, no fsync.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

/// Persisted endpoint state by id, as handed to a worker at start.
pub type EndpointStates = std::collections::HashMap<EndpointId, EndpointMeta>;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::commit::{AckResult, CommitMsg, Next, Outcome};
use crate::deliver::dns::{ResolveError, ResolveFailure, Resolver, ResolverThread};
use crate::deliver::http1::Target;
use crate::deliver::request::{self, Scratch};
use crate::deliver::{ssrf, ConnSlot, Exchange, OpenCounts};
use crate::endpoint::EndpointSpec;
use crate::fdlimit::ConnPermit;
use crate::ingest::{self, ConnCtx, ConnShared};
use crate::local::{yield_now, LocalNotify};
use crate::metrics::{
    AttemptResult, EndpointCounts, FinalSnapshots, Hist, IngestCounters, WorkerSnapshot,
};
use crate::queue::{JobQueue, Queued, Ready};
use crate::ratelimit::TokenBucket;
use crate::schedule::wheel::TimerWheel;
use crate::schedule::{after_attempt, classify_response, FailClass, Verdict};
use crate::shard::{Mailbox, MailboxSender};
use crate::store::{
    seq_time_ms, AttemptRecord, DeliveryState, DisabledBy, DueKey, DueVal, EndpointId,
    EndpointMeta, EventRecord, FloorReader,
};
use crate::tally::Tally;
use crate::template::Doc;

/// How long an idle lane keeps its connection before it exits.
const LANE_IDLE: Duration = Duration::from_secs(30);

/// A lane whose delivery found no socket ([`Tried::NotSent`]) waits this long before it
/// tries again.
const NOT_SENT_PAUSE: Duration = Duration::from_secs(1);

/// At most one warning about deliveries held back for want of a socket this often.
const NOT_SENT_WARN_EVERY: Duration = Duration::from_secs(10);

/// What one try at an attempt came to.
enum Tried {
    /// The attempt was made (or failed before any request could be built or sent for
    /// a reason of the endpoint's or the receiver's): its record and verdict.
    Made(AttemptRecord, Verdict),
    /// No request could leave this machine: no socket to be had (the open-file budget
    /// in use, or the kernel out of descriptors or memory). Not an attempt: nothing is
    /// logged or counted against the endpoint, and the delivery goes again later.
    NotSent(String),
}

/// Retries attempted from the worker's own copy remembered per endpoint
/// ([`Ep::kept_attempts`]): an ordered endpoint attempts one at a time.
const KEPT_ATTEMPTS: usize = 4;
/// Response bytes kept in the attempt log.
const LOG_EXCERPT: usize = 1024;

/// The first `max` bytes of `body`, less a UTF-8 character the cut would split (the log
/// shows the excerpt as text, where half a character would read as U+FFFD). A body
/// that is not UTF-8 is cut where `max` falls.
fn excerpt(body: &[u8], max: usize) -> &[u8] {
    if body.len() <= max {
        return body;
    }
    let cut = &body[..max];
    match std::str::from_utf8(cut) {
        // Valid up to a character the cut left incomplete.
        Err(e) if e.error_len().is_none() => &cut[..e.valid_up_to()],
        _ => cut,
    }
}

/// One delivery handed to a worker.
pub struct Job {
    pub event: Arc<EventRecord>,
    pub ep: EndpointId,
    /// The due key it was loaded under (retired when it completes).
    pub due: DueKey,
    /// Attempts already made, and where the current round began.
    pub val: DueVal,
}

/// An accepted ingest connection.
pub enum IngestStream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

/// Messages to a worker.
pub enum WorkerMsg {
    /// An ingest connection to serve, with its share of the ingest budget (held until
    /// it closes).
    Conn(IngestStream, ConnPermit),
    Acks {
        conn: u64,
        ticket: u64,
        results: Vec<AckResult>,
    },
    Jobs(Vec<Job>),
    /// An endpoint was enabled (its paused deliveries follow as jobs) or disabled. The
    /// store moved its deliveries meanwhile, so the jobs held for it are dropped; an
    /// attempt in flight goes on, and its outcome stands. Both are answered once the
    /// outcomes reported so far are sent (see [`Switch`]).
    SetEnabled {
        ep: EndpointId,
        switch: Switch,
    },
    /// An endpoint was created or replaced: the next attempt uses this spec. `meta`
    /// gives a new endpoint its persisted state (a replaced one keeps its own).
    Upsert {
        spec: Arc<EndpointSpec>,
        meta: EndpointMeta,
    },
    /// An endpoint was deleted: its queued jobs are dropped (retired in the store), its
    /// lanes start no more attempts; answered on `done` then (its `DELETE` waits for it).
    Remove {
        ep: EndpointId,
        done: crossbeam_channel::Sender<()>,
    },
    /// Make one attempt of `event` with `spec` (no retries, no log) and answer with it.
    Test {
        spec: Arc<EndpointSpec>,
        event: Arc<EventRecord>,
        reply: crossbeam_channel::Sender<AttemptRecord>,
    },
    /// A slow endpoint holds more than it may ([`crate::commit`]'s give-back): keep its
    /// first `keep` deliveries (those in flight among them) and give the rest back to
    /// the store, where they are due still; answered with [`CommitMsg::GivenBack`]
    /// carrying `request`. `ahead`: the endpoint's deliveries the committer handed over
    /// ahead of its loader's cursor and has not seen reported (sorted), which it never
    /// hands over again.
    GiveBack {
        ep: EndpointId,
        keep: usize,
        request: u64,
        ahead: Vec<DueKey>,
    },
    /// Copy this worker's metrics out.
    Snapshot(crossbeam_channel::Sender<WorkerSnapshot>),
    /// Copy one endpoint's counters out (`None`: this worker has no such endpoint), for
    /// the admin API's view of one endpoint: a whole snapshot copies every endpoint's
    /// name.
    Counts {
        ep: EndpointId,
        reply: crossbeam_channel::Sender<Option<EndpointCounts>>,
    },
    /// Stop taking work, finish in-flight attempts (bounded), report, exit.
    Shutdown,
}

/// Which way [`WorkerMsg::SetEnabled`] switches an endpoint, and how it is answered.
pub enum Switch {
    /// Enabled: answered with [`CommitMsg::Enabled`] carrying `request`, after every
    /// outcome reported so far. An attempt in flight at the disable that ended before
    /// this message was judged under the disable (its retry `paused`); the committer
    /// resumes no paused delivery until it has that outcome, or it would find the
    /// ordered head paused only after the ones behind it were sent.
    Enable { request: u64 },
    /// Disabled: answered on `in_flight` with the deliveries in flight, after every
    /// outcome reported so far; the committer leaves those where they are.
    Disable {
        in_flight: crossbeam_channel::Sender<Vec<u64>>,
    },
}

/// Everything a worker starts with.
pub struct WorkerSetup {
    pub idx: usize,
    pub inbox: Mailbox<WorkerMsg>,
    pub commit: MailboxSender<CommitMsg>,
    pub endpoints: Vec<Arc<EndpointSpec>>,
    /// Persisted state of those endpoints (disabled, failure counters).
    pub state: EndpointStates,
    /// Where it leaves its last snapshot as it stops (at its `idx`).
    pub finals: FinalSnapshots,
    pub resolver: ResolverThread,
    pub max_line_bytes: usize,
    /// The server's `retention`: how far ahead an event's `time` may be.
    pub retention_for_ingest: Duration,
    /// The unanswered-line budget every worker's ingest connections share.
    pub line_budget: Arc<ingest::LineBudget>,
    pub allow_private_networks: bool,
    pub drain_timeout: Duration,
    /// Deliveries whose event passed it expire instead of their next attempt.
    pub retention: FloorReader,
}

/// An event as a worker holds it: the record plus its data index, built on first use.
struct WorkEvent {
    rec: Arc<EventRecord>,
    doc: OnceCell<Doc>,
}

impl WorkEvent {
    fn doc(&self) -> &Doc {
        self.doc.get_or_init(|| {
            Doc::parse(self.rec.data_bytes()).unwrap_or_else(|e| {
                tracing::warn!(seq = self.rec.seq, error = %e, "event data does not index; rendering as empty");
                Doc::parse(Bytes::from_static(b"{}")).expect("empty object parses")
            })
        })
    }
}

struct WJob {
    ev: Rc<WorkEvent>,
    ep: EndpointId,
    due: DueKey,
    attempts: u16,
    /// Attempts made before the current round (a replay starts a new one).
    first: u16,
    /// The endpoint's generation when the job arrived; a job from before an
    /// enable/disable is stale (the store moved the delivery meanwhile).
    gen: u32,
    /// An ordered endpoint's head retry, kept by the worker when it failed: the store
    /// hands over its copy in its time (which then replaces it). Nothing counted it as
    /// handed over, and its reports say so (`Outcome::handed`).
    kept: bool,
}

impl Queued for WJob {
    fn seq(&self) -> u64 {
        self.due.seq
    }
    fn due_ms(&self) -> u64 {
        self.due.due_ms
    }
    fn kept(&self) -> bool {
        self.kept
    }
    fn attempts(&self) -> u16 {
        self.attempts
    }
}

/// The last few retries of an ordered endpoint's head that its worker attempted from
/// its own copy ([`WJob::kept`]), as (sequence number, attempts made with that one,
/// whether that attempt sent nothing). The store's copy of such a retry is handed over
/// only if the loader reaches it first, or later (kept back, or read back from disk),
/// while the attempt runs or its outcome is on its way. An ordered queue drops that
/// copy; once a `PUT` has made the endpoint FIFO, the worker drops it by
/// [`KeptAttempts::covers`] (helper H, session 41: the head went twice). An attempt
/// that sent nothing (no socket) puts its kept copy back: the store's copy, when it
/// comes, takes its place ([`KeptAttempts::put_back`]).
#[derive(Default)]
struct KeptAttempts(VecDeque<(u64, u16, bool)>);

impl KeptAttempts {
    /// The kept retry of `seq`, `attempts` made before it, is being attempted (again,
    /// after an attempt that sent nothing: one entry for both).
    fn started(&mut self, seq: u64, attempts: u16) {
        let made = attempts.saturating_add(1);
        if let Some(i) = self.0.iter().rposition(|&(s, m, _)| (s, m) == (seq, made)) {
            self.0.remove(i);
        } else if self.0.len() == KEPT_ATTEMPTS {
            self.0.pop_front();
        }
        self.0.push_back((seq, made, false));
    }

    /// It was not sent after all (no socket to be had), and its kept copy is put back:
    /// should a `PUT` make the endpoint FIFO before it goes, the store's copy of it is
    /// no stale one but the delivery itself ([`Self::put_back`]).
    fn not_sent(&mut self, seq: u64, attempts: u16) {
        let made = attempts.saturating_add(1);
        if let Some(e) = self.0.iter_mut().rev().find(|e| (e.0, e.1) == (seq, made)) {
            e.2 = true;
        }
    }

    /// Whether a copy of `seq` handed over by the store with `attempts` made is one
    /// of a retry attempted from a kept copy: made before that attempt (fewer than it
    /// made; a replay starts a new round with as many), which sent its request.
    fn covers(&self, seq: u64, attempts: u16) -> bool {
        self.0
            .iter()
            .any(|&(s, made, unsent)| s == seq && attempts < made && !unsent)
    }

    /// Whether a copy of `seq` handed over by the store with `attempts` made is the
    /// store's copy of a kept retry whose attempt sent nothing: the kept copy was put
    /// back in the queue, unless something took it out since (a disable, an enable).
    fn put_back(&self, seq: u64, attempts: u16) -> bool {
        self.0
            .iter()
            .any(|&(s, made, unsent)| s == seq && attempts.saturating_add(1) == made && unsent)
    }
}

/// What a worker gives back of an endpoint ([`Ep::give_back`]): what
/// [`CommitMsg::GivenBack`] says.
#[derive(Default)]
struct Given {
    /// Every delivery it held from this key on is given back but those in `kept`
    /// (`None`: none).
    from: Option<DueKey>,
    /// How many of them the committer handed over (not a retry the worker kept,
    /// [`WJob::kept`], which it never counted), and the bytes of their events.
    count: usize,
    bytes: usize,
    /// Its keys at or above `from` still here: in flight, or in the timer wheel.
    kept: Vec<DueKey>,
}

/// An endpoint's live state on its worker.
struct Ep {
    /// Replaced live by [`WorkerMsg::Upsert`]; read afresh for every attempt.
    spec: RefCell<Arc<EndpointSpec>>,
    /// Deleted: lanes exit, jobs are dropped.
    removed: Cell<bool>,
    queue: RefCell<JobQueue<WJob>>,
    lanes: Cell<u32>,
    idle: RefCell<Vec<Rc<LocalNotify>>>,
    disabled: Cell<bool>,
    /// Consecutive failures per class: 3xx, 4xx, 5xx.
    fails: Cell<[u32; 3]>,
    /// `max_rps`; starts empty so a restart does not burst the backlog.
    bucket: RefCell<TokenBucket>,
    /// A lane is waiting for the next token (only one does; the others idle).
    pacing: Cell<bool>,
    /// The shortest time from a request to its answer seen so far (ms): how long the
    /// receiver takes to answer once it has a request, with no wait for it to accept a
    /// connection in it. `None` until an answer came.
    answers_within: Cell<Option<u64>>,
    /// Bumped on every enable/disable.
    gen: Cell<u32>,
    /// Per lane, the due key of the delivery it is attempting.
    attempting: RefCell<Vec<Rc<Cell<Option<DueKey>>>>>,
    /// Its head's retries attempted from the worker's own copy ([`KeptAttempts`]).
    kept_attempts: RefCell<KeptAttempts>,
    /// Delivery outcomes and attempts since start.
    counts: RefCell<EndpointCounts>,
    /// Delivery sockets its lanes hold (their share of the budget: [`crate::fdlimit`]).
    sockets: Rc<Cell<usize>>,
    /// Test attempts (`POST /v1/endpoints/{name}/test`) with a place under
    /// `max_in_flight`, and those waiting for one: the lanes leave them their places
    /// (and one for those waiting), so a test's request, on a connection of its own,
    /// does not make the endpoint's requests in flight pass `max_in_flight`
    /// ([`Worker::test_attempt`]).
    tests_placed: Cell<u32>,
    tests_waiting: Cell<u32>,
    /// Test attempts waiting for a place, woken as a lane exits or a test ends.
    room_waiters: RefCell<Vec<Rc<LocalNotify>>>,
}

impl Ep {
    fn new(spec: Arc<EndpointSpec>, meta: &EndpointMeta) -> Ep {
        Ep {
            bucket: RefCell::new(TokenBucket::new_empty(spec.cfg.max_rps, mono_ms())),
            queue: RefCell::new(JobQueue::new(spec.cfg.ordered)),
            spec: RefCell::new(spec),
            removed: Cell::new(false),
            lanes: Cell::new(0),
            idle: RefCell::new(Vec::new()),
            disabled: Cell::new(meta.is_disabled()),
            fails: Cell::new(meta.fails),
            pacing: Cell::new(false),
            answers_within: Cell::new(None),
            gen: Cell::new(0),
            attempting: RefCell::new(Vec::new()),
            kept_attempts: RefCell::new(KeptAttempts::default()),
            counts: RefCell::new(EndpointCounts::default()),
            sockets: Rc::new(Cell::new(0)),
            tests_placed: Cell::new(0),
            tests_waiting: Cell::new(0),
            room_waiters: RefCell::new(Vec::new()),
        }
    }

    fn spec(&self) -> Arc<EndpointSpec> {
        self.spec.borrow().clone()
    }

    /// How many lanes the endpoint may have: `max_in_flight` less the places test
    /// attempts hold, and one while any waits for a place (one for an ordered endpoint,
    /// if that leaves one).
    fn max_lanes(&self) -> u32 {
        let spec = self.spec.borrow();
        let tests = self.tests_placed.get() + u32::from(self.tests_waiting.get() > 0);
        let room = spec.cfg.max_in_flight.saturating_sub(tests);
        if spec.cfg.ordered {
            room.min(1)
        } else {
            room
        }
    }

    /// Whether a test attempt may send now: its request, with every lane's and the
    /// other tests', keeps within `max_in_flight` (a lane counts as in flight whether
    /// or not it is attempting: it may take a job at any moment).
    fn room_for_a_test(&self) -> bool {
        self.lanes.get() + self.tests_placed.get() < self.spec.borrow().cfg.max_in_flight
    }

    /// A lane exited or a test ended: test attempts waiting for a place look again.
    fn room_freed(&self) {
        for n in self.room_waiters.borrow_mut().drain(..) {
            n.notify();
        }
    }

    /// The deliveries whose attempts are in flight.
    fn in_flight(&self) -> Vec<u64> {
        self.attempting
            .borrow()
            .iter()
            .filter_map(|c| c.get().map(|k| k.seq))
            .collect()
    }

    /// Wakes every idle lane (to exit, or to re-read the spec).
    fn wake_lanes(&self) {
        for n in self.idle.borrow_mut().drain(..) {
            n.notify();
        }
    }

    /// Takes its queued deliveries past the first `keep` (less those in flight) out, to
    /// give back to the store ([`Worker::give_back`]): every one from a key `from` on,
    /// `from` above each key the worker keeps of it (queued, in flight, or waiting in
    /// the timer wheel: `timed`), so the committer can read them back from `from`
    /// without handing over a second copy of one still here. An ordered queue gives
    /// out only a tail of its oldest-first order ([`JobQueue::split_off`]): nothing
    /// behind a delivery given back goes before it.
    ///
    /// A FIFO endpoint's deliveries in flight or in the wheel that the committer handed
    /// over ahead of its cursor (`ahead`) do not bound `from`: it never hands those over
    /// again, and reads them back from disk only to skip them. One fresh delivery
    /// handed over ahead and hung at its receiver, its key above the whole backlog,
    /// kept every other one of a slow endpoint in memory (helper A, session 42). Those
    /// at or above `from` are named in the answer: still here.
    fn give_back(
        &self,
        keep: usize,
        timed: impl Iterator<Item = DueKey>,
        ahead: &[DueKey],
    ) -> Given {
        let flying: Vec<DueKey> = self
            .attempting
            .borrow()
            .iter()
            .filter_map(|c| c.get())
            .collect();
        let held: Vec<DueKey> = flying.iter().copied().chain(timed).collect();
        // (An ordered queue's second copy is the same delivery, but its order rules
        // what may go: as before.)
        let fifo = !self.spec.borrow().cfg.ordered;
        let is_ahead = |k: &DueKey| fifo && ahead.binary_search(k).is_ok();
        let floor = held.iter().copied().filter(|k| !is_ahead(k)).max();
        let keep = keep.saturating_sub(flying.len());
        let split = self
            .queue
            .borrow_mut()
            .split_off(keep, floor.map(DueKey::successor), |j| j.due);
        let Some((from, given)) = split else {
            return Given::default();
        };
        // A FIFO queue gives out a kept retry too (one put back after an attempt that
        // sent nothing stays when a `PUT` makes the endpoint FIFO: `upsert`); the
        // store's copy of it is read back from `from` with the rest. The committer never
        // counted it as handed over (its outcomes say so: `Outcome::handed`): counted
        // here, its count of what the endpoint's worker holds, and of their bytes, ran
        // one low for each (helper giveback, session 56).
        let handed = || given.iter().filter(|j| !j.kept);
        Given {
            from: Some(from),
            count: handed().count(),
            bytes: handed().map(|j| j.ev.rec.encoded().len()).sum(),
            kept: held.into_iter().filter(|k| *k >= from).collect(),
        }
    }
}

struct Worker {
    idx: usize,
    /// Deliveries held back for want of a socket since the last warning
    /// ([`Worker::not_sent`]).
    not_sent: Cell<Tally>,
    /// Ingest connections this worker could not take over ([`adopt_failed`]).
    adopt_failures: Cell<Tally>,
    commit: MailboxSender<CommitMsg>,
    conns: RefCell<HashMap<u64, Rc<ConnShared>>>,
    next_conn: Cell<u64>,
    endpoints: RefCell<HashMap<EndpointId, Rc<Ep>>>,
    wheel: RefCell<TimerWheel<WJob>>,
    timer_wake: LocalNotify,
    outbox: RefCell<Vec<Outcome>>,
    flush_scheduled: Cell<bool>,
    resolver: Resolver,
    empty_doc: Doc,
    max_line_bytes: usize,
    retention_for_ingest: Duration,
    allow_private: bool,
    retention: FloorReader,
    stopping: Cell<bool>,
    active: Cell<usize>,
    /// Test attempts (`POST /v1/endpoints/{name}/test`) under way: a stop waits for them
    /// as for attempts in flight (bounded); it stopped without them, and their callers
    /// got no answer.
    testing: Cell<usize>,
    idle_wake: LocalNotify,
    ingest_counters: Rc<IngestCounters>,
    line_budget: Arc<ingest::LineBudget>,
    /// µs per attempt.
    attempt_latency: RefCell<Hist>,
    /// ms from acceptance to attempt.
    delivery_lag: RefCell<Hist>,
    /// Connections the lanes opened, by reason.
    conn_opens: Rc<OpenCounts>,
    /// Lanes started, and lanes that exited after [`LANE_IDLE`] without work.
    lanes_started: Cell<u64>,
    lanes_idle_exits: Cell<u64>,
    /// Deliveries held back for want of a socket, since start.
    holds: Cell<u64>,
}

/// Milliseconds since the Unix epoch on the wall clock: event times, due times and the
/// retention cut-off (the workers' and the committer's one reading of it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on a clock that never steps back (counted from its first reading), for
/// what only measures intervals: the `max_rps` buckets. On the wall clock, a clock set
/// back an hour would hold a paced endpoint's next request back an hour.
fn mono_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Runs a worker until it is told to shut down.
pub async fn run(setup: WorkerSetup) {
    let endpoints = setup
        .endpoints
        .into_iter()
        .map(|spec| {
            let meta = setup.state.get(&spec.id).cloned().unwrap_or_default();
            (spec.id, Rc::new(Ep::new(spec, &meta)))
        })
        .collect();
    let w = Rc::new(Worker {
        idx: setup.idx,
        commit: setup.commit,
        conns: RefCell::new(HashMap::default()),
        next_conn: Cell::new(0),
        endpoints: RefCell::new(endpoints),
        wheel: RefCell::new(TimerWheel::new(now_ms())),
        timer_wake: LocalNotify::default(),
        outbox: RefCell::new(Vec::new()),
        flush_scheduled: Cell::new(false),
        resolver: Resolver::new(setup.resolver),
        empty_doc: Doc::parse(Bytes::from_static(b"{}")).expect("empty object parses"),
        max_line_bytes: setup.max_line_bytes,
        retention_for_ingest: setup.retention_for_ingest,
        allow_private: setup.allow_private_networks,
        retention: setup.retention,
        stopping: Cell::new(false),
        not_sent: Cell::new(Tally::default()),
        adopt_failures: Cell::new(Tally::default()),
        active: Cell::new(0),
        testing: Cell::new(0),
        idle_wake: LocalNotify::default(),
        ingest_counters: Rc::new(IngestCounters::default()),
        line_budget: setup.line_budget,
        attempt_latency: RefCell::new(Hist::micros()),
        delivery_lag: RefCell::new(Hist::millis()),
        conn_opens: Rc::new(OpenCounts::default()),
        lanes_started: Cell::new(0),
        lanes_idle_exits: Cell::new(0),
        holds: Cell::new(0),
    });
    monoio::spawn(timer_loop(w.clone()));
    monoio::spawn(crate::fdlimit::release_closed());
    let inbox = setup.inbox;
    while let Some(msg) = inbox.recv().await {
        if let WorkerMsg::Shutdown = msg {
            break;
        }
        w.handle(msg);
    }
    w.stopping.set(true);
    // Ingest connections read no more; wake idle lanes so they exit. Then wait (bounded)
    // for attempts in flight and for the answers to every line already read, which
    // come through the inbox.
    for c in w.conns.borrow().values() {
        c.stop();
    }
    for ep in w.endpoints.borrow().values() {
        ep.wake_lanes();
    }
    let deadline = Instant::now() + setup.drain_timeout;
    let mut inbox_open = true;
    while w.active.get() > 0 || w.testing.get() > 0 || !w.conns.borrow().is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let idle = monoio::time::timeout(left, w.idle_wake.wait());
        if !inbox_open {
            let _ = idle.await;
            continue;
        }
        monoio::select! {
            biased;
            msg = inbox.recv() => match msg {
                Some(WorkerMsg::Shutdown) => {}
                Some(msg) => w.handle(msg),
                None => inbox_open = false,
            },
            _ = idle => {}
        }
    }
    w.flush_outbox();
    let unfinished = w.active.get();
    if unfinished > 0 {
        // Their due keys stay: they are made again at the next start, and a receiver
        // that got the request meanwhile gets it twice.
        tracing::warn!(
            worker = w.idx,
            unfinished,
            bound = ?setup.drain_timeout,
            "attempts still in flight at the shutdown bound were abandoned; they are made again at the next start"
        );
    }
    let (conns, lines) = w
        .conns
        .borrow()
        .values()
        .map(|c| c.unanswered())
        .filter(|&n| n > 0)
        .fold((0, 0), |(c, l), n| (c + 1, l + n));
    if lines > 0 {
        // Read, so most were accepted, and their producers cannot tell which: their
        // answers were not read in time (a full socket), or were not yet durable.
        // Counted whole per batch of answers (one partly written counts in full); over
        // TCP the close resets a connection with input unread, which also drops the
        // answers written but not yet read: there the producer may miss more.
        tracing::warn!(
            worker = w.idx,
            connections = conns,
            lines,
            bound = ?setup.drain_timeout,
            "ingest lines left unanswered at the shutdown bound (answers their producers \
             did not read, or not yet durable; over TCP the reset at the close may drop \
             more): they may have been accepted; sent again, one with an `id` answers \
             `dup`, one without is a second event"
        );
    }
    // Before the inbox closes: a scrape that finds it closed reads this instead.
    if let Some(slot) = setup.finals.get(w.idx) {
        if let Ok(mut last) = slot.lock() {
            *last = Some(w.snapshot());
        }
    }
    drop(inbox);
    // The runtime drops its tasks after this: permits they hold go back at once, with
    // no wake-up of a task the runtime no longer runs.
    crate::fdlimit::stop_releasing();
    tracing::debug!(worker = w.idx, unfinished, "worker stopped");
}

async fn timer_loop(w: Rc<Worker>) {
    let mut due = Vec::new();
    loop {
        if w.stopping.get() {
            return;
        }
        let now = now_ms();
        w.wheel.borrow_mut().expire(now, &mut due);
        for job in due.drain(..) {
            w.enqueue(job);
        }
        let next = w.wheel.borrow().next_due();
        match next {
            Some(t) => {
                let wait = Duration::from_millis(t.saturating_sub(now_ms()).max(1));
                let _ = monoio::time::timeout(wait, w.timer_wake.wait()).await;
            }
            None => {
                let _ =
                    monoio::time::timeout(Duration::from_millis(500), w.timer_wake.wait()).await;
            }
        }
    }
}

/// Logs an ingest connection the worker could not take over (its runtime could not
/// register the socket: kernel memory, epoll's `max_user_watches`), which is closed, at
/// most once each [`NOT_SENT_WARN_EVERY`] with the count since: under such a shortage
/// every connection fails, and a line each flooded the log as producers reconnected.
fn adopt_failed(tally: &Cell<Tally>, kind: &str, e: &std::io::Error) {
    if let Some(failures) = Tally::note_in(tally, NOT_SENT_WARN_EVERY) {
        tracing::warn!(
            error = %e,
            kind,
            failures,
            "cannot take over an ingest connection: it is closed unanswered (the producer \
             reconnects); the runtime could not register its socket: the kernel is short \
             of memory or, with the legacy driver, of epoll watches \
             (fs.epoll.max_user_watches) (failures: since the last such line)"
        );
    }
}

impl Worker {
    fn handle(self: &Rc<Self>, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Conn(IngestStream::Unix(s), permit) => {
                match monoio::net::UnixStream::from_std(s) {
                    Ok(s) => self.spawn_conn(s, None, permit),
                    Err(e) => adopt_failed(&self.adopt_failures, "unix", &e),
                }
            }
            WorkerMsg::Conn(IngestStream::Tcp(s), permit) => {
                match monoio::net::TcpStream::from_std(s) {
                    Ok(s) => {
                        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
                        self.spawn_conn(s, Some(fd), permit)
                    }
                    Err(e) => adopt_failed(&self.adopt_failures, "tcp", &e),
                }
            }
            WorkerMsg::Acks {
                conn,
                ticket,
                results,
            } => {
                if let Some(c) = self.conns.borrow().get(&conn) {
                    c.complete(ticket, results);
                }
            }
            WorkerMsg::Jobs(jobs) => {
                let now = now_ms();
                let mut last: Option<Rc<WorkEvent>> = None;
                let mut woke_timer = false;
                for j in jobs {
                    let ev = match &last {
                        Some(e) if Arc::ptr_eq(&e.rec, &j.event) => e.clone(),
                        _ => {
                            let e = Rc::new(WorkEvent {
                                rec: j.event,
                                doc: OnceCell::new(),
                            });
                            last = Some(e.clone());
                            e
                        }
                    };
                    let gen = self
                        .endpoints
                        .borrow()
                        .get(&j.ep)
                        .map(|e| e.gen.get())
                        .unwrap_or(0);
                    let job = WJob {
                        ev,
                        ep: j.ep,
                        due: j.due,
                        attempts: j.val.attempts,
                        first: j.val.first,
                        gen,
                        kept: false,
                    };
                    if job.due.due_ms > now && !self.is_ordered(job.ep) {
                        self.wheel.borrow_mut().insert(job.due.due_ms, job);
                        woke_timer = true;
                    } else {
                        self.enqueue(job);
                    }
                }
                if woke_timer {
                    self.timer_wake.notify();
                }
            }
            WorkerMsg::SetEnabled { ep, switch } => {
                let enabled = matches!(switch, Switch::Enable { .. });
                let e = self.endpoints.borrow().get(&ep).cloned();
                let mut running = Vec::new();
                if let Some(e) = e {
                    e.gen.set(e.gen.get().wrapping_add(1));
                    e.disabled.set(!enabled);
                    if enabled {
                        e.fails.set([0; 3]);
                        // Tokens saved up while disabled are not a burst to send: the
                        // backlog starts at the rate, as after a restart.
                        let rate = e.spec.borrow().cfg.max_rps;
                        *e.bucket.borrow_mut() = TokenBucket::new_empty(rate, mono_ms());
                    }
                    // The store moved what is queued (paused or resumed it afresh).
                    let stale = e.queue.borrow_mut().drain();
                    for job in stale {
                        self.report(job, None, Next::Stale);
                    }
                    if !enabled {
                        // Only a disable's answer names them.
                        running = e.in_flight();
                    }
                }
                // Outcomes reported so far go before the answer, so the committer has
                // them before anything it does after this change.
                self.flush_outbox();
                match switch {
                    Switch::Disable { in_flight } => {
                        let _ = in_flight.send(running);
                    }
                    Switch::Enable { request } => {
                        self.commit.send(CommitMsg::Enabled { ep, request });
                    }
                }
            }
            WorkerMsg::Upsert { spec, meta } => self.upsert(spec, &meta),
            WorkerMsg::Remove { ep, done } => {
                self.remove(ep);
                let _ = done.send(());
            }
            WorkerMsg::Test { spec, event, reply } => {
                let w = self.clone();
                w.testing.set(w.testing.get() + 1);
                monoio::spawn(async move {
                    let _ = reply.send(w.test_attempt(&spec, event).await);
                    w.testing.set(w.testing.get() - 1);
                    if w.stopping.get() {
                        w.idle_wake.notify();
                    }
                });
            }
            WorkerMsg::GiveBack {
                ep,
                keep,
                request,
                ahead,
            } => self.give_back(ep, keep, request, &ahead),
            WorkerMsg::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            WorkerMsg::Counts { ep, reply } => {
                let counts = self.endpoints.borrow().get(&ep).map(|e| *e.counts.borrow());
                let _ = reply.send(counts);
            }
            WorkerMsg::Shutdown => {}
        }
    }

    fn snapshot(&self) -> WorkerSnapshot {
        let eps = self.endpoints.borrow();
        let queued: usize = eps.values().map(|e| e.queue.borrow().len()).sum();
        WorkerSnapshot {
            worker: self.idx,
            endpoints: eps
                .values()
                .map(|e| (e.spec.borrow().cfg.name.clone(), *e.counts.borrow()))
                .collect(),
            rejected_invalid: self.ingest_counters.invalid.get(),
            rejected_too_large: self.ingest_counters.too_large.get(),
            rejected_unavailable: self.ingest_counters.unavailable.get(),
            in_memory: (self.wheel.borrow().len() + queued + self.active.get()) as u64,
            attempt_latency: self.attempt_latency.borrow().clone(),
            delivery_lag: self.delivery_lag.borrow().clone(),
            connections_opened: self.conn_opens.get(),
            lanes_started: self.lanes_started.get(),
            lanes_idle_exits: self.lanes_idle_exits.get(),
            holds: self.holds.get(),
        }
    }

    /// Serves an ingest connection; `tcp_fd` is a TCP one's socket (for its close). Its
    /// `permit` is given back when it closes.
    fn spawn_conn<S>(
        self: &Rc<Self>,
        stream: S,
        tcp_fd: Option<std::os::fd::RawFd>,
        permit: ConnPermit,
    ) where
        S: monoio::io::Splitable + 'static,
        S::OwnedRead: monoio::io::AsyncReadRent + 'static,
        S::OwnedWrite: monoio::io::AsyncWriteRent + 'static,
    {
        let id = self.next_conn.get() + 1;
        self.next_conn.set(id);
        let shared = ingest::new_connection(self.line_budget.clone());
        self.conns.borrow_mut().insert(id, shared.clone());
        let ctx = ConnCtx {
            worker: self.idx,
            conn: id,
            max_line_bytes: self.max_line_bytes,
            retention: self.retention_for_ingest,
            commit: self.commit.clone(),
            counters: self.ingest_counters.clone(),
            tcp_fd,
        };
        if self.stopping.get() {
            shared.stop();
        }
        let w = self.clone();
        monoio::spawn(async move {
            ingest::serve_connection(stream, ctx, shared).await;
            drop(permit);
            w.conns.borrow_mut().remove(&id);
            if w.stopping.get() {
                w.idle_wake.notify();
            }
        });
    }

    fn is_ordered(&self, ep: EndpointId) -> bool {
        self.endpoints
            .borrow()
            .get(&ep)
            .is_some_and(|e| e.spec.borrow().cfg.ordered)
    }

    /// Creates an endpoint, or swaps a live one's spec: queued jobs stay queued and the
    /// next attempt renders with the new spec. A changed rate limit gets a fresh bucket,
    /// a changed `ordered` a queue of the other kind: holding the same jobs, except that
    /// a FIFO queue holds due ones only (the rest wait in the timer wheel) and no kept
    /// retry (its copy in the store keeps its time) but one whose attempt sent nothing
    /// ([`KeptAttempts::put_back`]).
    fn upsert(self: &Rc<Self>, spec: Arc<EndpointSpec>, meta: &EndpointMeta) {
        let existing = self.endpoints.borrow().get(&spec.id).cloned();
        let Some(ep) = existing else {
            let id = spec.id;
            self.endpoints
                .borrow_mut()
                .insert(id, Rc::new(Ep::new(spec, meta)));
            return;
        };
        let old = ep.spec.replace(spec.clone());
        if old.cfg.max_rps != spec.cfg.max_rps {
            *ep.bucket.borrow_mut() = TokenBucket::new_empty(spec.cfg.max_rps, mono_ms());
        }
        if old.cfg.ordered != spec.cfg.ordered {
            let jobs = ep.queue.borrow_mut().drain();
            let mut q = JobQueue::new(spec.cfg.ordered);
            let now = now_ms();
            let mut timed = false;
            for j in jobs {
                if !spec.cfg.ordered {
                    // A FIFO queue holds due jobs only. A kept retry goes: the store's
                    // copy of it comes in its time, as every retry's does. But not one
                    // whose attempt sent nothing (no socket), put back: the store's copy
                    // may have come during that attempt and been dropped as stale (the
                    // endpoint FIFO then, since a `PUT`), and it is the delivery now.
                    // Dropped at a `PUT` to ordered and back, nothing was left of it,
                    // pending until the next start (helper lanes2, session 55). The
                    // store's copy, if it comes, takes its place (`enqueue`).
                    if j.kept && !ep.kept_attempts.borrow().put_back(j.due.seq, j.attempts) {
                        continue;
                    }
                    // The store's copy of a kept retry being attempted, handed over
                    // during the attempt: the ordered queue would drop it as the
                    // attempt ends (`leave_ordered`), and one that comes from now on
                    // is dropped at `enqueue`. Kept in the FIFO queue, it went again
                    // after the attempt and its outcome was recorded twice (helper
                    // jobs, session 54).
                    if ep.kept_attempts.borrow().covers(j.due.seq, j.attempts) {
                        self.report(j, None, Next::Stale);
                        continue;
                    }
                    if j.due.due_ms > now {
                        self.wheel.borrow_mut().insert(j.due.due_ms, j);
                        timed = true;
                        continue;
                    }
                }
                if let Err(stale) | Ok(Some(stale)) = q.push(j) {
                    self.report(stale, None, Next::Stale);
                }
            }
            *ep.queue.borrow_mut() = q;
            if timed {
                self.timer_wake.notify();
            }
        }
        // Idle lanes re-read the spec; lanes over a lowered max_in_flight exit.
        ep.wake_lanes();
        self.fill_lanes(&ep);
    }

    /// Starts lanes for `ep`'s queued jobs, one a job, up to `max_lanes`.
    fn fill_lanes(self: &Rc<Self>, ep: &Rc<Ep>) {
        while ep.lanes.get() < ep.max_lanes() && ep.lanes.get() < ep.queue.borrow().len() as u32 {
            self.spawn_lane(ep.clone());
        }
    }

    /// Gives an endpoint's queued deliveries past the first `keep` (less those in
    /// flight) back to the store ([`WorkerMsg::GiveBack`], chosen by [`Ep::give_back`]).
    /// Dropped here unreported: their due keys stay in the store.
    fn give_back(&self, id: EndpointId, keep: usize, request: u64, ahead: &[DueKey]) {
        let ep = self.endpoints.borrow().get(&id).cloned();
        let given = ep
            .map(|ep| {
                let wheel = self.wheel.borrow();
                let timed = wheel.iter().filter(|j| j.ep == id).map(|j| j.due);
                ep.give_back(keep, timed, ahead)
            })
            .unwrap_or_default();
        // Outcomes reported so far go first: a delivery done here but not yet recorded
        // is in none of the places `Ep::give_back` looks, its due key still in the
        // store, and read back from `from` before its outcome retired the key it would
        // go out again (helper F's review).
        self.flush_outbox();
        self.commit.send(CommitMsg::GivenBack {
            ep: id,
            request,
            from: given.from,
            count: given.count,
            bytes: given.bytes,
            kept: given.kept,
        });
    }

    /// Deletes an endpoint: queued jobs are retired, lanes exit after their attempt.
    fn remove(self: &Rc<Self>, id: EndpointId) {
        let Some(ep) = self.endpoints.borrow_mut().remove(&id) else {
            return;
        };
        ep.removed.set(true);
        let queued = ep.queue.borrow_mut().drain();
        for job in queued {
            self.report(job, None, Next::Done);
        }
        ep.wake_lanes();
    }

    fn enqueue(self: &Rc<Self>, mut job: WJob) {
        let ep = self.endpoints.borrow().get(&job.ep).cloned();
        let Some(ep) = ep else {
            // Not ours any more: deleted while the job waited in the timer wheel (a
            // retry, a `min_delay`) or in the mailbox. Nothing here can deliver it; it
            // ends as the deletion says. A debug line: one per job was a WARN flood at
            // every deletion of an endpoint with retries waiting.
            tracing::debug!(endpoint = job.ep, "job for a deleted endpoint dropped");
            self.report(job, None, Next::Done);
            return;
        };
        if job.gen != ep.gen.get() {
            self.report(job, None, Next::Stale);
            return;
        }
        if ep.disabled.get() {
            let attempts = job.attempts;
            self.report_n(job, None, Next::Paused, attempts);
            return;
        }
        // (An ordered queue tells such a copy itself.)
        if !ep.spec.borrow().cfg.ordered && !job.kept {
            let kept = ep.kept_attempts.borrow();
            if kept.covers(job.due.seq, job.attempts) {
                drop(kept);
                self.report(job, None, Next::Stale);
                return;
            }
            if kept.put_back(job.due.seq, job.attempts) {
                drop(kept);
                // The store's copy of a kept retry that found no socket after a `PUT`
                // made the endpoint FIFO: it takes the kept copy's place (as in an
                // ordered queue). Queued beside it, both went: the retry twice at the
                // receiver, its outcome recorded twice (helper lanes, session 55).
                // Neither copy is dropped as stale: the kept one may be gone (a disable
                // drops it, and the store resumes this one on enable).
                let replaced = ep.queue.borrow_mut().replace_kept(job);
                match replaced {
                    Ok(()) => {
                        self.kick(ep);
                        return;
                    }
                    Err(copy) => job = copy,
                }
                // The kept copy may wait in the timer wheel instead, held there by a
                // `min_delay` a `PUT` raised: it takes its place there, and its time.
                // Queued, the store's copy went as soon as the `min_delay` was lowered
                // again, and the kept one after it when it came out (helper lanes2,
                // session 55).
                let mut wheel = self.wheel.borrow_mut();
                let parked = wheel.iter_mut().find(|t| {
                    t.kept
                        && t.ep == job.ep
                        && t.gen == job.gen
                        && t.due.seq == job.due.seq
                        && t.attempts == job.attempts
                });
                if let Some(kept) = parked {
                    *kept = job;
                    return;
                }
            }
        }
        let pushed = ep.queue.borrow_mut().push(job);
        match pushed {
            // A copy of a delivery the queue already holds (or just finished).
            Err(stale) => {
                self.report(stale, None, Next::Stale);
                return;
            }
            // An older copy it replaced.
            Ok(Some(stale)) => self.report(stale, None, Next::Stale),
            Ok(None) => {}
        }
        self.kick(ep);
    }

    /// Puts a lane to work on `ep`'s queue: an idle one, else a new one if allowed.
    fn kick(self: &Rc<Self>, ep: Rc<Ep>) {
        let idle = ep.idle.borrow_mut().pop();
        if let Some(n) = idle {
            n.notify();
        } else if ep.lanes.get() < ep.max_lanes() {
            self.spawn_lane(ep);
        }
    }

    /// A rate-limited endpoint's lane took a token and goes to send: when work remains
    /// and no other lane waits for the next token, one more is started (up to
    /// `max_in_flight`). Jobs that arrived while lanes idled for tokens woke those
    /// lanes instead of starting new ones, so without this the lanes in flight, not
    /// `max_rps`, would bound the rate of a slow receiver (two lanes answering in
    /// 200 ms made 20/s into 10/s).
    fn keep_a_lane_for_the_next_token(self: &Rc<Self>, ep: &Rc<Ep>) {
        if !ep.queue.borrow().is_empty() && ep.idle.borrow().is_empty() && !ep.pacing.get() {
            self.kick(ep.clone());
        }
    }

    /// Starts one more delivery lane for `ep` (the caller checked `max_lanes`).
    fn spawn_lane(self: &Rc<Self>, ep: Rc<Ep>) {
        // Stopping: jobs that come now stay due in the store for the next start.
        if self.stopping.get() {
            return;
        }
        ep.lanes.set(ep.lanes.get() + 1);
        self.lanes_started.set(self.lanes_started.get() + 1);
        monoio::spawn(lane(self.clone(), ep));
    }

    /// `POST /v1/endpoints/{name}/test`: one attempt on a fresh connection, its state
    /// `delivered` or `failed`; nothing is counted or reported to the committer. It
    /// keeps to the endpoint's limits as deliveries do: it waits for a place under
    /// `max_in_flight` (the lanes leave it one as they finish their attempts) and for a
    /// `max_rps` token, at most the endpoint's `timeout` together, then makes its attempt
    /// (another `timeout` at most). A test beside a busy endpoint's deliveries made
    /// their requests in flight pass `max_in_flight`, and tests one after another passed
    /// `max_rps`: a receiver that enforces its limits answers them 429, or refuses the
    /// connection.
    async fn test_attempt(
        self: &Rc<Self>,
        spec: &EndpointSpec,
        event: Arc<EventRecord>,
    ) -> AttemptRecord {
        let ep = self.endpoints.borrow().get(&spec.id).cloned();
        let Some(ep) = ep else {
            return self.test_attempt_now(spec, event).await;
        };
        ep.tests_waiting.set(ep.tests_waiting.get() + 1);
        // Idle lanes over the bound the waiting test sets exit now, not after
        // `LANE_IDLE`.
        ep.wake_lanes();
        let placed = Cell::new(false);
        let wait = async {
            while !ep.room_for_a_test() {
                let me = Rc::new(LocalNotify::default());
                ep.room_waiters.borrow_mut().push(me.clone());
                me.wait().await;
            }
            ep.tests_waiting.set(ep.tests_waiting.get() - 1);
            ep.tests_placed.set(ep.tests_placed.get() + 1);
            placed.set(true);
            resend_token(Some(&ep.bucket)).await;
        };
        let waited = monoio::time::timeout(spec.cfg.timeout, wait).await;
        let rec = match waited {
            Ok(()) => self.test_attempt_now(spec, event).await,
            Err(_) => AttemptRecord {
                at_ms: now_ms(),
                timed_out: true,
                error: format!(
                    "timed out after {} waiting for {} (not sent)",
                    crate::config::format_duration(spec.cfg.timeout),
                    if placed.get() {
                        "a max_rps token"
                    } else {
                        "a place under max_in_flight, which the endpoint's requests took"
                    }
                ),
                state_after: Some(DeliveryState::Failed),
                ..AttemptRecord::default()
            },
        };
        if placed.get() {
            ep.tests_placed.set(ep.tests_placed.get() - 1);
        } else {
            ep.tests_waiting.set(ep.tests_waiting.get() - 1);
        }
        ep.room_freed();
        // The places it held go back to the lanes.
        if !ep.disabled.get() && !ep.removed.get() {
            self.fill_lanes(&ep);
        }
        rec
    }

    /// The attempt of [`test_attempt`](Self::test_attempt), made now.
    async fn test_attempt_now(
        &self,
        spec: &EndpointSpec,
        event: Arc<EventRecord>,
    ) -> AttemptRecord {
        let ev = WorkEvent {
            rec: event,
            doc: OnceCell::new(),
        };
        let tried = self
            .try_once(
                spec,
                &ev,
                &mut ConnSlot::default(),
                &mut Vec::new(),
                &mut Scratch::default(),
                // A fresh connection: never sent twice.
                None,
            )
            .await;
        let (mut rec, verdict) = match tried {
            Tried::Made(rec, verdict) => (rec, verdict),
            Tried::NotSent(error) => (
                AttemptRecord {
                    at_ms: now_ms(),
                    error,
                    ..AttemptRecord::default()
                },
                Verdict::Permanent { class: None },
            ),
        };
        rec.state_after = Some(match verdict {
            Verdict::Delivered => DeliveryState::Delivered,
            _ => DeliveryState::Failed,
        });
        rec
    }

    /// Reports `job` expired without an attempt (its event passed retention). An
    /// ordered endpoint's queue moves on.
    fn expire(self: &Rc<Self>, ep: &Ep, job: WJob) {
        if ep.spec().cfg.ordered {
            self.leave_ordered(ep, job.due.seq, Next::Expired, u16::MAX);
        }
        self.report(job, None, Next::Expired);
    }

    /// An ordered endpoint's head `seq` leaves its place after `attempts` attempts,
    /// `next` being its outcome: a copy that came in meanwhile must not run again (a
    /// replay, a new round, may). A paused delivery is not finished: it comes back on
    /// enable.
    fn leave_ordered(self: &Rc<Self>, ep: &Ep, seq: u64, next: Next, attempts: u16) {
        let mut q = ep.queue.borrow_mut();
        let copy = match next {
            Next::Paused => q.forget(seq),
            _ => q.completed(seq, attempts),
        };
        drop(q);
        if let Some(stale) = copy {
            self.report(stale, None, Next::Stale);
        }
    }

    fn report(self: &Rc<Self>, job: WJob, attempt: Option<AttemptRecord>, next: Next) {
        let n = job.attempts;
        self.report_n(job, attempt, next, n);
    }

    fn report_n(
        self: &Rc<Self>,
        job: WJob,
        attempt: Option<AttemptRecord>,
        next: Next,
        attempts: u16,
    ) {
        let fails = match self.endpoints.borrow().get(&job.ep) {
            Some(ep) => {
                self.count(ep, attempt.as_ref(), next, job.due.seq);
                ep.fails.get()
            }
            None => Default::default(),
        };
        self.outbox.borrow_mut().push(Outcome {
            event: job.ev.rec.clone(),
            ep: job.ep,
            due: job.due,
            attempts,
            first: job.first,
            attempt,
            next,
            fails,
            handed: !job.kept,
        });
        if !self.flush_scheduled.replace(true) {
            let w = self.clone();
            monoio::spawn(async move {
                yield_now().await;
                w.flush_outbox();
            });
        }
    }

    /// Counts a reported outcome: the attempt's result, latency and lag, and what became
    /// of the delivery. The one place delivery metrics are counted.
    fn count(&self, ep: &Ep, attempt: Option<&AttemptRecord>, next: Next, seq: u64) {
        let mut c = ep.counts.borrow_mut();
        match attempt {
            Some(a) => {
                c.attempts[AttemptResult::of(a.status, a.timed_out) as usize] += 1;
                match a.state_after {
                    Some(DeliveryState::Delivered) => c.delivered += 1,
                    Some(DeliveryState::Failed) => c.failed += 1,
                    Some(DeliveryState::Retrying) => c.retrying += 1,
                    Some(DeliveryState::Paused) => c.paused += 1,
                    _ => {}
                }
                self.attempt_latency
                    .borrow_mut()
                    .record(a.latency_us as u64);
                self.delivery_lag
                    .borrow_mut()
                    .record(a.at_ms.saturating_sub(seq_time_ms(seq)));
            }
            None if next == Next::Paused => c.paused += 1,
            None => {}
        }
    }

    fn flush_outbox(&self) {
        self.flush_scheduled.set(false);
        let list = std::mem::take(&mut *self.outbox.borrow_mut());
        if !list.is_empty() {
            self.commit.send(CommitMsg::Outcomes(list));
        }
    }

    /// Tells the committer an endpoint this worker just disabled (`ep.disabled` is
    /// already set) is disabled: its queued jobs are reported paused, and the outcomes
    /// reported so far — the attempt that disabled it among them — go first, so the
    /// committer never sees the endpoint paused before that attempt is in the log.
    fn announce_disabled(self: &Rc<Self>, ep: &Ep, reason: String) {
        let spec = ep.spec();
        tracing::warn!(endpoint = %spec.cfg.name, %reason, "endpoint disabled");
        let queued: Vec<WJob> = ep.queue.borrow_mut().drain();
        for job in queued {
            self.report(job, None, Next::Paused);
        }
        self.flush_outbox();
        self.commit.send(CommitMsg::EndpointDisabled {
            ep: spec.id,
            by: DisabledBy::Receiver,
            detail: Some(reason),
        });
    }

    /// One HTTP attempt of `ev` with `spec`: build, resolve, exchange, classify. Counts
    /// nothing and decides nothing about the delivery.
    async fn try_once(
        &self,
        spec: &EndpointSpec,
        ev: &WorkEvent,
        slot: &mut ConnSlot,
        wbuf: &mut Vec<u8>,
        scratch: &mut Scratch,
        bucket: Option<&RefCell<TokenBucket>>,
    ) -> Tried {
        let cfg = &spec.cfg;
        // An attempt that ends before a request is written (a template, a look-up or the
        // SSRF guard refusing) leaves no connection flags of the last one behind.
        slot.begin_attempt();
        let at_ms = now_ms();
        let started = Instant::now();
        let mut rec = AttemptRecord {
            at_ms,
            ..AttemptRecord::default()
        };
        let doc = if spec.needs_doc {
            ev.doc()
        } else {
            &self.empty_doc
        };
        wbuf.clear();
        let verdict = match request::build(spec, &ev.rec, doc, at_ms / 1000, scratch, wbuf) {
            Err(e) => {
                rec.error = e.to_string();
                Verdict::Permanent { class: None }
            }
            Ok(target) => {
                rec.request_line = request::request_line(spec, &target);
                rec.request = request::log_of(spec, scratch);
                match self.addresses(&target, cfg.timeout).await {
                    Err(e) => {
                        rec.error = e.to_string();
                        match e.failure {
                            // SPEC §6: a host that does not resolve is never retried.
                            ResolveFailure::NotFound => Verdict::Permanent {
                                class: Some(FailClass::C5xx),
                            },
                            // The resolver could not answer now: a network error.
                            ResolveFailure::Transient => Verdict::Failed {
                                class: FailClass::C5xx,
                                retry_after: None,
                            },
                            // The look-up took the attempt's whole `timeout`.
                            ResolveFailure::TimedOut => {
                                rec.timed_out = true;
                                Verdict::Failed {
                                    class: FailClass::C5xx,
                                    retry_after: None,
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        rec.error = format!(
                                "blocked: {} resolves only to private or reserved addresses or this machine's own (allow_private_networks is off)",
                                target.host
                            );
                        Verdict::Permanent { class: None }
                    }
                    Ok(Some(addrs)) => {
                        let req = std::mem::take(wbuf);
                        // `timeout` is the whole attempt's: a name's look-up took
                        // some of it.
                        let left = match target.ip {
                            Some(_) => cfg.timeout,
                            None => cfg.timeout.saturating_sub(started.elapsed()),
                        };
                        // Pinned where it is made: the timeout holds a pointer
                        // to it instead of a copy.
                        let answer = {
                            let exchange = std::pin::pin!(slot.exchange(
                                &target,
                                addrs.as_slice(),
                                req,
                                async || resend_token(bucket).await
                            ));
                            monoio::time::timeout(left, exchange).await
                        };
                        match answer {
                            Err(_) => {
                                let in_body = slot.in_body();
                                let stage = slot.stage();
                                slot.reset();
                                rec.timed_out = true;
                                // Say how far it came: the answer's body if it had
                                // begun, else the stage.
                                rec.error = format!(
                                    "timed out after {} {}",
                                    crate::config::format_duration(cfg.timeout),
                                    match in_body {
                                        Some(b) => b.to_string(),
                                        None => stage.describe().to_string(),
                                    }
                                );
                                Verdict::Failed {
                                    class: FailClass::C5xx,
                                    retry_after: None,
                                }
                            }
                            Ok((Exchange::Failed(msg), b)) => {
                                *wbuf = b;
                                rec.error = msg;
                                Verdict::Failed {
                                    class: FailClass::C5xx,
                                    retry_after: None,
                                }
                            }
                            Ok((Exchange::NotSent(msg), b)) => {
                                *wbuf = b;
                                return Tried::NotSent(msg);
                            }
                            Ok((
                                Exchange::Response {
                                    status,
                                    retry_after,
                                },
                                b,
                            )) => {
                                *wbuf = b;
                                let body = slot.body_excerpt();
                                rec.status = status;
                                rec.response_excerpt = excerpt(body, LOG_EXCERPT).to_vec();
                                let (verdict, why) = classify_response(
                                    &cfg.success,
                                    cfg.error.as_ref(),
                                    status,
                                    body,
                                    retry_after,
                                );
                                if let Some(why) = why {
                                    rec.error = why;
                                }
                                verdict
                            }
                        }
                    }
                }
            }
        };
        rec.latency_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        Tried::Made(rec, verdict)
    }

    /// Makes one attempt of `job` and reports its outcome; hands the job back when no
    /// request could leave this machine ([`Tried::NotSent`]).
    async fn attempt(
        self: &Rc<Self>,
        ep: &Ep,
        job: WJob,
        slot: &mut ConnSlot,
        wbuf: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> Option<WJob> {
        let spec = ep.spec();
        let cfg = &spec.cfg;
        let (mut rec, verdict) = match self
            .try_once(&spec, &job.ev, slot, wbuf, scratch, Some(&ep.bucket))
            .await
        {
            Tried::Made(rec, verdict) => (rec, verdict),
            Tried::NotSent(why) => {
                self.not_sent(&why);
                return Some(job);
            }
        };
        let answered_ms = (rec.status != 0).then_some(u64::from(rec.latency_us) / 1000);
        if cfg.max_rps > 0 && slot.last_was_first() {
            let now = mono_ms();
            let mut bucket = ep.bucket.borrow_mut();
            // It reached the receiver only once the receiver accepted the connection,
            // which a loaded receiver may do late, and the next request on the same
            // connection would land right behind it: pace that one from its arrival, at
            // the latest its answer less the least time the receiver has taken to
            // answer. Only when the connection stays open: one the receiver closed (or
            // that failed) takes the next request to a new connection, accepted in turn,
            // and pacing it from a guess at the arrival cost a receiver that closes every
            // connection, its answer times varying, a quarter of its rate and more. So
            // does one that keeps connections by its answers' headers and closes them
            // anyway (seen closing the last one kept).
            if slot.is_kept() && !slot.receiver_closes_kept() {
                let answers_within = ep.answers_within.get().unwrap_or(0);
                bucket.restart_at(now.saturating_sub(answers_within), now);
            }
        }
        if let Some(ms) = answered_ms {
            let least = ep.answers_within.get().map_or(ms, |m| m.min(ms));
            ep.answers_within.set(Some(least));
        }
        // Consecutive-failure counters and automatic disabling.
        // The failure's class, counted; a `410` is a 4xx failure that disables at once.
        let failed = match &verdict {
            Verdict::Delivered => {
                ep.fails.set([0; 3]);
                None
            }
            Verdict::Failed { class, .. }
            | Verdict::Permanent {
                class: Some(class), ..
            } => Some(*class),
            Verdict::Gone => Some(FailClass::C4xx),
            Verdict::Permanent { class: None } => None,
        };
        let mut disable = None;
        if let Some(class) = failed {
            let mut f = ep.fails.get();
            let i = class as usize;
            f[i] += 1;
            ep.fails.set(f);
            let (limit, name, counted) = match class {
                FailClass::C3xx => (cfg.disable_after.c3xx, "3xx", ""),
                FailClass::C4xx => (cfg.disable_after.c4xx, "4xx", ""),
                // Not only 5xx answers: the reason says what counted.
                FailClass::C5xx => (
                    cfg.disable_after.c5xx,
                    "5xx",
                    " (5xx answers, network errors and timeouts count as 5xx, and so \
                     do other answers the success and error rules refuse)",
                ),
            };
            if matches!(verdict, Verdict::Gone) {
                disable = Some("the receiver answered 410 Gone".into());
            } else if f[i] >= limit {
                disable = Some(format!(
                    "{} {name} failures since the last success{counted}",
                    f[i]
                ));
            }
        }
        // Disabled from now on (this attempt's retry waits paused); announced once its
        // outcome is reported.
        let disable = disable.filter(|_| !ep.disabled.replace(true));
        let attempts = job.attempts.saturating_add(1);
        let in_round = attempts.saturating_sub(job.first);
        let (mut state, mut next) = after_attempt(cfg, in_round as u32, &verdict, now_ms());
        if ep.disabled.get() && matches!(next, Next::Retry { .. }) {
            state = DeliveryState::Paused;
            next = Next::Paused;
        }
        // Past retention, a retry is not kept: it expires (SPEC §2).
        if matches!(next, Next::Retry { .. }) && self.retention.is_past(job.due.seq) {
            state = DeliveryState::Expired;
            next = Next::Expired;
        }
        rec.state_after = Some(state);
        if let Next::Retry { due_ms } = next {
            rec.next_due_ms = due_ms;
        }
        // Read now, not from the spec the attempt began with: a `PUT` that switched
        // `ordered` meanwhile already rebuilt the queue.
        if ep.spec().cfg.ordered {
            match next {
                // The head keeps its place: the ones behind it wait for its retry. An
                // attempt's outcome stands across an enable/disable (the store left an
                // attempt in flight where it was), so its retry is of the current
                // generation.
                Next::Retry { due_ms } => {
                    let kept = WJob {
                        ev: job.ev.clone(),
                        ep: job.ep,
                        due: DueKey { due_ms, ..job.due },
                        attempts,
                        first: job.first,
                        gen: ep.gen.get(),
                        kept: true,
                    };
                    // A copy loaded from the store meanwhile is handed back (reported:
                    // the committer counts what it handed over); the kept retry itself
                    // was never handed over, so it goes unreported if a copy stays.
                    let pushed = ep.queue.borrow_mut().push(kept);
                    if let Ok(Some(stale)) = pushed {
                        self.report(stale, None, Next::Stale);
                    }
                }
                _ => self.leave_ordered(ep, job.due.seq, next, attempts),
            }
        }
        self.report_n(job, Some(rec), next, attempts);
        if let Some(reason) = disable {
            self.announce_disabled(ep, reason);
        }
        None
    }

    /// Counts a delivery held back for want of a socket, and says so at most every
    /// [`NOT_SENT_WARN_EVERY`] (under exhaustion it happens for every job).
    fn not_sent(&self, why: &str) {
        self.holds.set(self.holds.get() + 1);
        let Some(count) = Tally::note_in(&self.not_sent, NOT_SENT_WARN_EVERY) else {
            return;
        };
        // The count is the worker's, over every endpoint: none is named. It counts
        // holds, not deliveries: one held again a second later counts again.
        tracing::warn!(
            worker = self.idx,
            holds_since_last_warning = count,
            retry_in = ?NOT_SENT_PAUSE,
            "deliveries held back: no socket to be had ({why}); not counted as attempts \
             (ricochet_delivery_holds_total counts every hold)"
        );
    }

    /// Connects a rate-limited endpoint's lane before it takes a token (static URLs
    /// only), so arrivals at the receiver keep the bucket's spacing.
    async fn warm(&self, ep: &Ep, slot: &mut ConnSlot) {
        let spec = ep.spec();
        let Some(target) = spec.static_target.clone() else {
            return;
        };
        let Ok(Some(addrs)) = self.addresses(&target, spec.cfg.timeout).await else {
            return;
        };
        let _ = monoio::time::timeout(spec.cfg.timeout, slot.warm(&target, addrs.as_slice())).await;
    }

    /// Where to connect for `target`: its IP literal, else the addresses its name
    /// resolves to (`within` this long) that the SSRF guard allows (neither in a range it
    /// refuses nor one of this machine's own), in the resolver's order; `Ok(None)` when
    /// the guard blocks them all.
    async fn addresses(
        &self,
        target: &Target,
        within: Duration,
    ) -> Result<Option<Addrs>, ResolveError> {
        let allowed = |ip: &IpAddr| self.allow_private || !ssrf::refuses(*ip);
        match target.ip {
            Some(ip) => Ok(Some(ip).filter(allowed).map(Addrs::One)),
            None => {
                let mut ips = self.resolver.resolve(&target.host, within).await?;
                ips.retain(allowed);
                Ok((!ips.is_empty()).then_some(Addrs::Many(ips)))
            }
        }
    }
}

/// The addresses an attempt may connect to: an IP literal's (no allocation), or a
/// name's.
enum Addrs {
    One(IpAddr),
    Many(Vec<IpAddr>),
}

impl Addrs {
    fn as_slice(&self) -> &[IpAddr] {
        match self {
            Addrs::One(ip) => std::slice::from_ref(ip),
            Addrs::Many(v) => v,
        }
    }
}

/// Waits for a `max_rps` token. One lane per endpoint sleeps until the next token time;
/// the others idle until there is work and no pacer. Returns false when the lane should
/// re-check its loop (it idled, or the queue emptied while it waited).
async fn take_token(ep: &Ep, me: &Rc<LocalNotify>) -> bool {
    loop {
        let now = mono_ms();
        if ep.bucket.borrow_mut().try_take(now) {
            return true;
        }
        if ep.pacing.get() {
            ep.idle.borrow_mut().push(me.clone());
            me.wait().await;
            return false;
        }
        let at = ep.bucket.borrow().next_token_at(now);
        ep.pacing.set(true);
        monoio::time::sleep(Duration::from_millis(at.saturating_sub(now).max(1))).await;
        ep.pacing.set(false);
        if ep.queue.borrow().is_empty() {
            return false;
        }
        if ep.bucket.borrow_mut().try_take(mono_ms()) {
            // Hand the pacer's role on while work remains.
            if ep.queue.borrow().len() > 1 {
                if let Some(n) = ep.idle.borrow_mut().pop() {
                    n.notify();
                }
            }
            return true;
        }
    }
}

/// Waits for a `max_rps` token for a request sent again on a new connection within an
/// attempt (its kept connection closed under the first send, which the receiver may
/// have counted): the second request leaves as the bucket allows, like any other, so
/// the receiver never sees more than the bucket's bound in a second. It competes with
/// the endpoint's pacer for the next token, without taking over its role; the
/// attempt's `timeout` bounds the wait. `None` (a test attempt) and an unlimited
/// bucket do not wait.
async fn resend_token(bucket: Option<&RefCell<TokenBucket>>) {
    let Some(bucket) = bucket else { return };
    loop {
        let now = mono_ms();
        if bucket.borrow_mut().try_take(now) {
            return;
        }
        // Read again each time: a `PUT` changing `max_rps` replaces the bucket.
        let at = bucket.borrow().next_token_at(now);
        monoio::time::sleep(Duration::from_millis(at.saturating_sub(now).max(1))).await;
    }
}

/// Puts `job`, taken but not attempted, back in its endpoint's queue, and reports the
/// copy of it the queue drops, if one came in meanwhile ([`JobQueue::unpop`]).
fn put_back(w: &Rc<Worker>, ep: &Ep, job: WJob) {
    let dropped = ep.queue.borrow_mut().unpop(job);
    if let Some(stale) = dropped {
        w.report(stale, None, Next::Stale);
    }
}

/// Settles `job`, whose attempt sent nothing for want of a socket after awaiting its
/// host's addresses or a connect, by what became of its endpoint meanwhile; hands it
/// back when it is to be tried again. The endpoint deleted: it ends as the deletion's
/// queued jobs did (that queue is emptied for good, and a job put back there stayed
/// pending until the next start). Disabled, or disabled and enabled again: it is no
/// stale copy, since the store left its delivery where it was for this attempt's
/// outcome to move (a disable's answer named it); it waits paused, as its retry would
/// have, or goes as one of the new generation. Put back as of the old one, it was
/// dropped as stale: in `due` below the loader's cursor, neither paused nor handed over
/// again, it stayed pending until the next start (helper jobs, session 54).
fn settle_not_sent(w: &Rc<Worker>, ep: &Ep, mut job: WJob) -> Option<WJob> {
    if ep.removed.get() {
        w.report(job, None, Next::Done);
        return None;
    }
    if job.gen != ep.gen.get() {
        if ep.disabled.get() {
            if ep.spec().cfg.ordered {
                w.leave_ordered(ep, job.due.seq, Next::Paused, job.attempts);
            }
            w.report(job, None, Next::Paused);
            return None;
        }
        job.gen = ep.gen.get();
    }
    Some(job)
}

/// Holds `job` back until `until` (unix ms): an ordered endpoint's head stays the head
/// and this lane waits for it, as for a retry; any other waits in the timer wheel and
/// rejoins the queue then.
async fn hold(w: &Rc<Worker>, ep: &Rc<Ep>, me: &Rc<LocalNotify>, job: WJob, until: u64) {
    if ep.spec().cfg.ordered {
        put_back(w, ep, job);
        ep.idle.borrow_mut().push(me.clone());
        let wait = Duration::from_millis(until.saturating_sub(now_ms()).max(1));
        if monoio::time::timeout(wait, me.wait()).await.is_err() {
            ep.idle.borrow_mut().retain(|n| !Rc::ptr_eq(n, me));
        }
    } else {
        w.wheel.borrow_mut().insert(until, job);
        w.timer_wake.notify();
    }
}

/// A delivery lane: one connection, one attempt at a time, jobs from its endpoint's queue.
async fn lane(w: Rc<Worker>, ep: Rc<Ep>) {
    let mut slot = ConnSlot::for_endpoint(w.conn_opens.clone(), ep.sockets.clone());
    let mut wbuf = Vec::with_capacity(4096);
    let mut scratch = Scratch::default();
    let me = Rc::new(LocalNotify::default());
    let attempting = Rc::new(Cell::new(None));
    ep.attempting.borrow_mut().push(attempting.clone());
    loop {
        if ep.removed.get() || ep.lanes.get() > ep.max_lanes() {
            // Deleted, or one lane too many after max_in_flight was lowered.
            break;
        }
        let ready = ep.queue.borrow().ready(now_ms());
        let job = match ready {
            Ready::Now => {
                if ep.spec.borrow().cfg.max_rps > 0 {
                    w.warm(&ep, &mut slot).await;
                }
                if !take_token(&ep, &me).await {
                    continue;
                }
                let job = ep.queue.borrow_mut().pop();
                if job.is_none() {
                    // Another lane took the work while this one waited: the token is
                    // not spent.
                    ep.bucket.borrow_mut().give_back();
                }
                if ep.spec.borrow().cfg.max_rps > 0 {
                    w.keep_a_lane_for_the_next_token(&ep);
                }
                job
            }
            // An ordered head waiting for its retry: wait for it (or for new work).
            Ready::At(t) => {
                if w.stopping.get() {
                    break;
                }
                ep.idle.borrow_mut().push(me.clone());
                let wait = Duration::from_millis(t.saturating_sub(now_ms()).max(1));
                if monoio::time::timeout(wait, me.wait()).await.is_err() {
                    ep.idle.borrow_mut().retain(|n| !Rc::ptr_eq(n, &me));
                }
                continue;
            }
            Ready::Empty => None,
        };
        let Some(job) = job else {
            if w.stopping.get() {
                break;
            }
            ep.idle.borrow_mut().push(me.clone());
            // With sockets scarce an idle lane gives its connection up soon: endpoints
            // held back for want of one get it within a pause, not a lane's lifetime.
            let idle_for = match crate::fdlimit::Permit::scarce() {
                true => NOT_SENT_PAUSE,
                false => LANE_IDLE,
            };
            if monoio::time::timeout(idle_for, me.wait()).await.is_err() {
                ep.idle.borrow_mut().retain(|n| !Rc::ptr_eq(n, &me));
                if ep.queue.borrow().is_empty() {
                    w.lanes_idle_exits.set(w.lanes_idle_exits.get() + 1);
                    break;
                }
            }
            continue;
        };
        if w.stopping.get() {
            // Not started: it stays due in the store and runs after the restart.
            put_back(&w, &ep, job);
            break;
        }
        // Not to be attempted: stale, paused, or (its event gone: a delivery held here
        // past `retention`, in an ordered endpoint's queue or a slow endpoint's
        // backlog) expired unsent. The token taken for it, under `max_rps`, is not spent.
        let unsent = if job.gen != ep.gen.get() {
            Some(Next::Stale)
        } else if ep.disabled.get() {
            Some(Next::Paused)
        } else if w.retention.is_past(job.due.seq) {
            Some(Next::Expired)
        } else {
            None
        };
        if let Some(next) = unsent {
            ep.bucket.borrow_mut().give_back();
            match next {
                Next::Expired => w.expire(&ep, job),
                next => w.report(job, None, next),
            }
            continue;
        }
        // Every attempt waits for `min_delay` as it is now (SPEC §2: no attempt before
        // the event's time plus `min_delay`): one a `PUT` made longer holds a first
        // attempt scheduled under the shorter one, and a retry falling due before it.
        // Its due key stays; after a restart it is loaded at that time and waits here
        // again.
        {
            let min_delay = ep.spec.borrow().cfg.min_delay.as_millis() as u64;
            let not_before = job.ev.rec.time_ms().saturating_add(min_delay);
            // (Due by its own time, it is due by the delay's: the usual case.)
            let now = if not_before > job.due.due_ms {
                now_ms()
            } else {
                u64::MAX
            };
            if not_before > now {
                // The token taken for it (under `max_rps`) is not spent.
                ep.bucket.borrow_mut().give_back();
                hold(&w, &ep, &me, job, not_before).await;
                continue;
            }
        }
        w.active.set(w.active.get() + 1);
        attempting.set(Some(job.due));
        if job.kept {
            ep.kept_attempts
                .borrow_mut()
                .started(job.due.seq, job.attempts);
        }
        let not_sent = w
            .attempt(&ep, job, &mut slot, &mut wbuf, &mut scratch)
            .await;
        scratch.trim();
        request::trim(&mut wbuf);
        attempting.set(None);
        w.active.set(w.active.get() - 1);
        if w.stopping.get() && w.active.get() == 0 {
            w.idle_wake.notify();
        }
        if let Some(job) = not_sent {
            if job.kept {
                ep.kept_attempts
                    .borrow_mut()
                    .not_sent(job.due.seq, job.attempts);
            }
            // No socket to be had: the job keeps its place and this lane waits before
            // it tries again, the token it took unspent (each lane tries once a pause,
            // rather than every queued job once a pause). Its due key stays, so a stop
            // meanwhile loses nothing.
            ep.bucket.borrow_mut().give_back();
            if let Some(job) = settle_not_sent(&w, &ep, job) {
                put_back(&w, &ep, job);
                monoio::time::sleep(NOT_SENT_PAUSE).await;
            }
        }
    }
    ep.lanes.set(ep.lanes.get() - 1);
    ep.attempting
        .borrow_mut()
        .retain(|c| !Rc::ptr_eq(c, &attempting));
    ep.room_freed();
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, OnceCell};
    use std::rc::Rc;
    use std::sync::Arc;

    use super::{adopt_failed, excerpt, Ep, KeptAttempts, WJob, WorkEvent, KEPT_ATTEMPTS};
    use crate::endpoint::{url_endpoint, EndpointSpec};
    use crate::store::{DueKey, EndpointMeta, EventRecord};
    use crate::tally::Tally;

    #[test]
    fn connections_not_taken_over_are_logged_once_an_interval() {
        // Under a shortage every connection fails, each reconnect again.
        let tally = Cell::new(Tally::default());
        let e = std::io::Error::from_raw_os_error(libc::ENOMEM);
        let ((), lines) = crate::tally::logged(|| {
            for _ in 0..1000 {
                adopt_failed(&tally, "tcp", &e);
            }
        });
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].contains("failures=1"), "{}", lines[0]);
    }

    #[test]
    fn a_kept_retry_given_back_is_not_counted_as_handed_over() {
        // A FIFO endpoint (an ordered one until a `PUT`) holds four deliveries the
        // committer handed over and its former head's retry, kept by the worker and put
        // back after an attempt that found no socket: the committer never counted that
        // one (its outcome says `handed: false`). The give-back counted it with the
        // others, and the committer's count of what the endpoint's worker holds, and of
        // their bytes, ran one low (helper giveback, session 56).
        let spec = EndpointSpec::compile(1, url_endpoint(r#""http://127.0.0.1:9/""#)).unwrap();
        assert!(!spec.cfg.ordered);
        let ep = Ep::new(Arc::new(spec), &EndpointMeta::default());
        let job = |seq: u64, due_ms: u64, kept: bool, data: &[u8]| WJob {
            ev: Rc::new(WorkEvent {
                rec: Arc::new(EventRecord::new(seq, None, "t", None, 0, &[1], data)),
                doc: OnceCell::new(),
            }),
            ep: 1,
            due: DueKey { due_ms, seq, ep: 1 },
            attempts: u16::from(kept),
            first: 0,
            gen: 0,
            kept,
        };
        let data = |seq: u64| format!(r#"{{"n":{seq}}}"#).into_bytes();
        {
            let mut q = ep.queue.borrow_mut();
            for seq in 2..=5 {
                assert!(matches!(
                    q.push(job(seq, 1_000 + seq, false, &data(seq))),
                    Ok(None)
                ));
            }
            // The head's retry: due after the backlog, its event larger.
            let retry = job(1, 9_000, true, &[b'x'; 500]);
            assert!(matches!(q.push(retry), Ok(None)));
        }
        // Its attempt sent nothing: put back, it stayed at the `PUT` (`upsert`).
        ep.kept_attempts.borrow_mut().started(1, 0);
        ep.kept_attempts.borrow_mut().not_sent(1, 0);
        let given = ep.give_back(2, std::iter::empty(), &[]);
        // Seq 4, 5 and the kept retry go; the store has each one's key, and the retry's
        // copy is read back from disk with the others.
        let from = given.from.expect("some given back");
        assert_eq!(
            from,
            DueKey {
                due_ms: 1_004,
                seq: 4,
                ep: 1
            }
        );
        assert_eq!(ep.queue.borrow().len(), 2);
        let handed_bytes: usize = [4, 5]
            .iter()
            .map(|&seq| {
                EventRecord::new(seq, None, "t", None, 0, &[1], &data(seq))
                    .encoded()
                    .len()
            })
            .sum();
        assert_eq!(
            (given.count, given.bytes),
            (2, handed_bytes),
            "only what the committer counted as handed over"
        );
        assert!(given.kept.is_empty(), "nothing of it in flight or waiting");
    }

    #[test]
    fn a_store_copy_of_a_retry_attempted_from_a_kept_copy_is_known() {
        let mut k = KeptAttempts::default();
        // Seq 7's second attempt (one made before) runs from the worker's copy.
        k.started(7, 1);
        assert!(k.covers(7, 1), "the store's copy of that retry");
        assert!(
            !k.covers(7, 2),
            "a later round (a replay, a retry after it)"
        );
        assert!(!k.covers(8, 1), "another delivery");
        // Not sent after all, its kept copy put back: the store's copy is no stale one,
        // but takes that copy's place (not an older round's).
        k.not_sent(7, 1);
        assert!(!k.covers(7, 1));
        assert!(k.put_back(7, 1));
        assert!(!k.put_back(7, 0) && !k.put_back(8, 1));
        // Attempted again: covered again, with no second entry.
        k.started(7, 1);
        assert!(k.covers(7, 1) && !k.put_back(7, 1));
        assert_eq!(k.0.len(), 1);
        // Only the last few are remembered.
        for seq in 0..=KEPT_ATTEMPTS as u64 {
            k.started(seq, 3);
        }
        assert!(!k.covers(0, 3));
        assert!(k.covers(KEPT_ATTEMPTS as u64, 3));
    }

    #[test]
    fn an_excerpt_does_not_split_a_character() {
        // "é" is 2 bytes, "€" 3, "😀" 4: cut inside each, and just after each.
        for ch in ["é", "€", "😀"] {
            let body = format!("ab{ch}cd");
            let n = ch.len();
            for max in 3..2 + n {
                assert_eq!(excerpt(body.as_bytes(), max), b"ab", "{ch} cut at {max}");
            }
            assert_eq!(
                excerpt(body.as_bytes(), 2 + n),
                format!("ab{ch}").as_bytes()
            );
        }
        assert_eq!(excerpt(b"abc", 3), b"abc");
        assert_eq!(excerpt(b"abcd", 2), b"ab");
        // Not UTF-8: cut where the limit falls.
        assert_eq!(
            excerpt(&[0xff, 0x80, 0x80, 0x80, 0x80], 3),
            &[0xff, 0x80, 0x80]
        );
        assert_eq!(excerpt(&[0x80; 8], 1), &[0x80]);
    }
}
