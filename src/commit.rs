//! The committer: the one thread that writes the store.
//!
//! It owns group commit, idempotency, routing and the hand-off of due deliveries to the
//! workers:
//!
//! - **Ingest.** Connections send batches of parsed events. Each round the committer
//!   drains what is queued (up to [`ROUND_ITEMS`] events and outcomes), checks
//!   idempotency keys, routes each event to the enabled
//!   endpoints subscribed to it, and writes events, idempotency keys and one `due` key per
//!   delivery in a single write batch — with `durability = sync` one fsync covers the whole
//!   round. Only then do the acks go back: to the connection's worker, or over a channel
//!   to the admin API's `POST /v1/events`. The round is written first and fsynced
//!   after its deliveries have gone to the workers, so the fsync is not part of the
//!   delivery lag (delivery is at-least-once; only the `ok` promises durability). A
//!   large round's fsync and answers go to the [syncer] thread, and the
//!   committer builds the next round meanwhile; a small one it fsyncs itself
//!   (`State::answer_synced` says why).
//! - **Outcomes.** Workers report every attempt's outcome; the committer appends it to the
//!   attempt log and retires or reschedules the delivery's `due` key in the same rounds.
//! - **The loader.** The `due` column family is the timer wheel's backing store. A cursor
//!   splits it: deliveries with a key below the cursor are in some worker's memory, the
//!   rest only on disk. Every tick the loader moves the cursor up to `now + HORIZON`,
//!   sending what it passes to the owning workers, but only while fewer than
//!   a cap of deliveries are in memory ([`in_memory_cap`], and [`MAX_IN_MEMORY_BYTES`]
//!   of their events) — so a million pending retries cost disk,
//!   not memory, and a backlog after a restart streams in as it drains. A retry due
//!   within seconds keeps its event in memory from the failed attempt (`Waiting`, up to
//!   16 MiB), so the loader hands it over without reading the event back.
//! - **Endpoints and replays.** Creating, replacing and deleting endpoints, and
//!   replaying deliveries, are committer messages too: the committer is the one writer
//!   of the store and the router, and tells the owning worker before any job that
//!   depends on the change.
//! - **Retention.** Every few seconds it moves the retention floor: events and attempts
//!   below it are range-deleted, paused deliveries below it expire; due deliveries
//!   below it expire when the loader reaches them.
//! - **Metrics.** It counts the acks it sends, times each batch from hand-off to durable
//!   ack, times its writes and its own fsyncs, and keeps the number of pending and
//!   paused deliveries (counted once at start, then moved by every write that adds or
//!   retires one); [`CommitMsg::Snapshot`] copies them out at the end of a round, with
//!   what the syncer counted added.
//!
//! It must not do network I/O, and nothing else may write the store.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Durability;
use crate::endpoint::EndpointSpec;
use crate::metrics::{CommitSnapshot, Hist};
use crate::shard::{Mailbox, MailboxSender};
use crate::store::{
    self, seq_floor, seq_time_ms, AttemptRecord, DeliveryState, DisabledBy, DueKey, DueVal,
    EndpointId, EndpointMeta, EndpointSource, EventRecord, Seq, Store,
};
use crate::syncer::{self, AckStats, Answer, SyncMsg};
use crate::tally::Tally;
use crate::worker::{now_ms, Job, WorkerMsg};

/// A round stops taking messages once they carry this many events and outcomes, so a
/// flat-out producer's backlog is written as several moderate batches rather than one
/// that grows to many MiB (glibc keeps the high-water mark of the C++ heap).
const ROUND_ITEMS: usize = 2048;
/// …or this many messages.
const ROUND_MSGS: usize = 4096;

/// How far ahead of now the loader hands deliveries to workers.
pub const HORIZON_MS: u64 = 1000;
/// How often the loader runs.
const TICK: Duration = Duration::from_millis(50);

/// How often the retention floor moves: an eighth of the retention, between 100 ms and
/// a minute.
fn retention_every(retention: Duration) -> Duration {
    (retention / 8).clamp(Duration::from_millis(100), Duration::from_secs(60))
}
/// How long a disable waits for the worker to say which attempts are in flight (it
/// answers from its mailbox task, within a moment unless the process is stopping).
const IN_FLIGHT_ANSWER: Duration = Duration::from_secs(2);
/// Keys of the due index read per page of the shared scan ([`DueScan`]), each page one
/// write…
const SCAN_KEYS: usize = 16_384;
/// …and deliveries moved by it at most (the write costs more than the read: ~1 ms per
/// 500, measured with a backlog of 800,000).
const SCAN_MOVES: usize = 2048;
/// How long a loader tick may spend on the shared scan, and on deletions' paused sets:
/// a page at least, more while this lasts.
const SCAN_BUDGET: Duration = Duration::from_millis(5);
/// With `durability = "batch"`, the longest a write waits for its fsync (SPEC §2).
const BATCH_SYNC_EVERY: Duration = Duration::from_millis(10);

/// How long the committer may wait for a message: until the loader's next tick, or,
/// when a `batch` write is not yet fsynced (for `unsynced_for`), until its fsync is due
/// — an idle committer must not leave the last writes unsynced for a whole tick.
fn idle_wait(since_load: Duration, unsynced_for: Option<Duration>) -> Duration {
    let mut wait = TICK.saturating_sub(since_load);
    if let Some(age) = unsynced_for {
        wait = wait.min(BATCH_SYNC_EVERY.saturating_sub(age));
    }
    wait.max(Duration::from_millis(1))
}
/// Deliveries held in worker memory before the loader stops loading, at least…
///
/// Each costs ~1.2 KiB of resident memory at `max` (its event, and the allocator's
/// pages it keeps in use). A lower floor saves memory; in sessions 2–7 20,000 and 25,000
/// cost `retry-storm` and `backlog` 14–30% more CPU (fresh deliveries spilled to disk
/// and read back). Session 43 measured 30,000 against 50,000: `max` peaked 25–30 MiB
/// lower at the same rates (~1.5% more CPU per event), `backlog` and `retry-storm` the
/// same (docs/performance.md, "Session 43").
pub const MIN_IN_MEMORY: usize = 30_000;
/// …and at most; in between, [`PER_ENDPOINT_IN_MEMORY`] per endpoint.
pub const MAX_IN_MEMORY: usize = 100_000;
/// Deliveries per endpoint the cap allows for, so a rate-limited endpoint with a backlog
/// keeps a few queued and paces evenly instead of bursting whenever it runs dry.
pub const PER_ENDPOINT_IN_MEMORY: usize = 5;

/// Bytes of events the deliveries held in worker memory may come to (each delivery
/// counting its event): with large events the count alone would let memory grow with
/// their size (50,000 deliveries of 1 MB events). Typical events stay far below it
/// (50,000 of 2 KB are 100 MB).
pub const MAX_IN_MEMORY_BYTES: usize = 128 << 20;

/// The in-memory cap for `endpoints` endpoints: a floor for few endpoints (each drains
/// fast), and a few deliveries queued per endpoint when there are many.
pub fn in_memory_cap(endpoints: usize) -> usize {
    (endpoints * PER_ENDPOINT_IN_MEMORY).clamp(MIN_IN_MEMORY, MAX_IN_MEMORY)
}

/// The deliveries one endpoint may hold in worker memory once workers hold half the
/// cap: a quarter of it. An endpoint that drains slowly (a low `max_rps`, a receiver
/// down, an `ordered` endpoint held by its head) would otherwise fill the cap with its
/// backlog, and every other endpoint's deliveries would wait on disk until it drained.
/// Past its share an endpoint's deliveries are kept back as due keys only
/// ([`Share::deferred`]) and handed over as it drains. (An eighth kept back the
/// deliveries of four endpoints draining a backlog together, each past it before the
/// cap was reached: `backlog`'s drain ran 30% slower through the kept-back keys.)
fn endpoint_share(cap: usize) -> usize {
    cap / 4
}

/// The deliveries a slow endpoint may hold in worker memory once workers hold half the
/// cap, at most: one that at its last second's rate takes more than [`SLOW_SECS`] to
/// drain what it holds (a receiver that hangs until the timeout, a low `max_rps`, an
/// `ordered` head waiting for its retry). With a quarter each, three such endpoints
/// filled the cap, and every other endpoint's deliveries waited on disk; with this,
/// it takes about a dozen (the first still takes half the cap before anyone is limited).
const SLOW_HELD: usize = 2048;
/// See [`SLOW_HELD`].
const SLOW_SECS: usize = 10;
/// How often each endpoint's drain rate is taken ([`Share::rate`]).
const RATE_EVERY: Duration = Duration::from_secs(1);

/// Due keys kept back from endpoints at their share, at most (about 50 bytes each in
/// memory: 3 MiB). When they reach it, the slow endpoint ([`Share::slow`]) with the most
/// leaves the end of its own on disk ([`Share::on_disk_from`]); with none (several
/// draining a backlog fast, together), workers count as full, and the loader waits as
/// it does for the cap.
pub const MAX_DEFERRED: usize = 1 << 16;

/// Due keys read per tick from an endpoint's backlog left on disk (the index is
/// ordered by time: the keys of other endpoints are read past).
const REFILL_SCAN: usize = 8192;

/// A fresh delivery goes to its worker ahead of a lagging cursor ([`State::hands_ahead`])
/// only while its endpoint holds fewer than this in worker memory: a quiet endpoint,
/// not one draining a backlog of its own.
const AHEAD_HELD: usize = 256;
/// Deliveries handed over ahead of the cursor and not yet reported, at most
/// ([`State::ahead`]): what workers may hold past the cap for quiet endpoints.
const MAX_AHEAD: usize = 8192;

/// A FIFO endpoint's retry written while the cursor lags (workers hold the cap, or fresh
/// deliveries spill) and due within this of now goes to its worker at once, ahead of
/// the cursor, if its endpoint is quiet ([`State::hands_ahead`]); the worker's timer
/// wheel holds it until its time. Left for the cursor, it waited behind every other
/// endpoint's backlog.
const RETRY_AHEAD_MS: u64 = 10_000;

/// One endpoint's part of the in-memory count.
#[derive(Default)]
struct Share {
    /// Its deliveries handed over and not yet reported.
    held: usize,
    /// Its deliveries due (below the cursor) but kept back while it holds its share,
    /// in key order: handed over as it drains, before any later one of it.
    deferred: BTreeMap<DueKey, DueVal>,
    /// Its kept-back backlog from this key on is on disk only: every key of it here
    /// or above and below the cursor is neither in `deferred` nor in a worker (but an
    /// ordered endpoint's, whose queue takes a copy as the same delivery). Read back
    /// into `deferred` a page at a time as it drains ([`State::read_back`]). Without
    /// it, one endpoint's backlog past [`MAX_DEFERRED`] (a receiver slow for an hour at
    /// 80 events/s) made the workers count as full, and every other endpoint's
    /// deliveries waited on disk until it drained.
    on_disk_from: Option<DueKey>,
    /// The highest key handed over to its worker since this entry was made: a FIFO
    /// endpoint's key left on disk is always above it (its queue takes a second copy
    /// as a second delivery; an ordered queue takes it as the same one).
    handed_max: DueKey,
    /// The highest key of it written for a scan to bring (at or above the cursor, or in
    /// the spilled range), due within the loader's horizon, and not handed over (a
    /// first attempt or a retry waiting on disk; one handed over ahead and given back;
    /// an ordered endpoint's resumed or replayed; the present, for one made ordered
    /// while the scans lag): until that scan has passed it, the endpoint is not quiet
    /// ([`State::hands_ahead`]), so its fresh deliveries do not go before its own older
    /// ones.
    disk_max: Option<DueKey>,
    /// Its deliveries reported since the rate was last taken.
    drained: usize,
    /// Its deliveries reported in the last [`RATE_EVERY`]; `None` unless it held some
    /// all through it (a backlog's first moments say nothing yet).
    rate: Option<usize>,
    /// What it held when that window began ([`Share::slow`]).
    rate_held: usize,
    /// What it held when the current window began.
    start_held: usize,
    /// The give-back asked of its worker and not yet answered ([`State::ask_give_back`]):
    /// meanwhile nothing more of it is handed over, so that what the worker gives back
    /// is every key it holds from some key on.
    giving_back: Option<u64>,
}

impl Share {
    /// `due` was left on disk for a scan to bring, the scans standing at `cursor` and
    /// `spill`. The highest key still to be brought ([`Self::disk_max`], replaced once
    /// the scan that was to bring it has passed it) stands for all of them only while
    /// it is: a key the cursor passed (written above it before a spill began) says
    /// nothing of a spilled key below it that the spill's scan has yet to load, and kept
    /// as the highest, it let the endpoint's later fresh deliveries go ahead of that one
    /// (helper R's review, session 43). Once replaced,
    /// the highest is safe again: the cursor does not move while a spill is under way,
    /// so a key waiting for it is brought after every spilled one, and a spilled key
    /// after every smaller one.
    fn note_left_on_disk(&mut self, due: DueKey, cursor: DueKey, spill: Option<Spill>) {
        let brought = self
            .disk_max
            .is_some_and(|d| scans_passed(d, cursor, spill));
        self.disk_max = Some(match self.disk_max {
            Some(d) if !brought => d.max(due),
            _ => due,
        });
    }

    /// Nothing of it held, kept back, or left on disk.
    fn idle(&self) -> bool {
        self.held == 0
            && self.deferred.is_empty()
            && self.on_disk_from.is_none()
            && self.giving_back.is_none()
    }

    /// Whether at its last second's rate it takes more than [`SLOW_SECS`] to drain
    /// what it holds, and took as long for what it held when that second began: an
    /// endpoint fed a trickle that a burst fills at once is not slow before a whole
    /// second shows what it drains with work to do.
    fn slow(&self) -> bool {
        self.rate
            .is_some_and(|rate| rate * SLOW_SECS < self.held.min(self.rate_held))
    }

    /// What it may hold in worker memory once workers hold half the cap `cap`: a
    /// quarter of it, or [`SLOW_HELD`] when it drains slowly; and when its last second
    /// had more to do than it drained (its rate is what it can do, not what it was
    /// given), no more than [`SLOW_SECS`] of its work at that rate, [`SLOW_HELD`] at
    /// least. Refilled to its share, an endpoint draining a steady 1,000 a second
    /// counted as slow a second later, gave the rest back, drained, and was refilled
    /// again, every few seconds (helper G, session 40).
    fn limit(&self, cap: usize) -> usize {
        match self.rate {
            _ if self.slow() => endpoint_share(cap).min(SLOW_HELD),
            Some(rate) if self.rate_held > rate => self.work_limit(cap),
            _ => endpoint_share(cap),
        }
    }

    /// [`SLOW_SECS`] of its work at its last second's rate, at least [`SLOW_HELD`] and
    /// at most its share of `cap`: what it holds once it drains at that rate.
    fn work_limit(&self, cap: usize) -> usize {
        let work = self.rate.unwrap_or(0) * SLOW_SECS;
        endpoint_share(cap).min(work.max(SLOW_HELD))
    }

    /// Its kept-back backlog from `from` on waits on disk (with any part of it there
    /// already): whether none did before.
    fn leave_on_disk_from(&mut self, from: DueKey) -> bool {
        let before = self.on_disk_from.replace(from);
        if let Some(f) = before {
            self.on_disk_from = Some(f.min(from));
        }
        before.is_none()
    }

    /// Takes the rate of the window that ends now.
    fn take_rate(&mut self) {
        self.rate = (self.start_held > 0 && self.held > 0).then_some(self.drained);
        self.rate_held = self.start_held;
        self.start_held = self.held;
        self.drained = 0;
    }
}
/// Events in a `sync` round from which its fsync overlaps the next round (the
/// [syncer]); smaller rounds are fsynced by the committer itself.
pub const PIPELINE_MIN_EVENTS: usize = 512;
/// Rows read per loader page.
const PAGE: usize = 2048;

/// An event parsed from an ingest line, not yet durable.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub ext_id: Option<String>,
    pub etype: String,
    pub account: Option<String>,
    pub time_ms: Option<u64>,
    pub data: Bytes,
}

/// A batch of events, answered once durable with one result per event.
pub struct IngestBatch {
    pub to: AckTo,
    pub events: Vec<NewEvent>,
    /// When the batch was handed to the committer (for the ack-latency histogram).
    pub sent_at: Instant,
}

/// Where a batch's results go.
pub enum AckTo {
    /// An ingest connection: one [`WorkerMsg::Acks`] to its worker.
    Conn {
        worker: usize,
        conn: u64,
        ticket: u64,
    },
    /// A caller on another thread (the admin API's `POST /v1/events`).
    Channel(crossbeam_channel::Sender<Vec<AckResult>>),
}

/// The answer for one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckResult {
    Ok { id: String, deliveries: u32 },
    Dup { id: String },
    Unavailable(String),
}

/// What happens to a delivery after an attempt (or instead of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered or failed for good: retire the due key.
    Done,
    /// Try again at this time.
    Retry { due_ms: u64 },
    /// The endpoint is disabled: keep the delivery aside until it is enabled.
    Paused,
    /// The worker dropped a copy made stale by an enable/disable; the store already
    /// holds the delivery where it belongs. Nothing to write.
    Stale,
    /// Its event passed retention before its next attempt: it expires.
    Expired,
}

/// A worker's report on one delivery.
pub struct Outcome {
    pub event: Arc<EventRecord>,
    pub ep: EndpointId,
    /// The due key this job was loaded under; retired now.
    pub due: DueKey,
    /// Attempts made including this one.
    pub attempts: u16,
    /// Attempts made before the delivery's current round (see [`DueVal`]).
    pub first: u16,
    pub attempt: Option<AttemptRecord>,
    pub next: Next,
    /// The endpoint's consecutive-failure counters after this attempt.
    pub fails: [u32; 3],
    /// Whether the job was handed over (counted in memory); an ordered endpoint's
    /// worker also reports retries it kept itself.
    pub handed: bool,
}

/// An endpoint's record as enabling it makes it: no disable, no failures counted, and
/// no first-attempt bound (every delivery of it is paused: resuming them in acceptance
/// order builds the bound afresh, see `State::resume`).
fn enabled_afresh(meta: &mut EndpointMeta) {
    meta.first_due_ms = 0;
    meta.enable();
    meta.fails = [0; 3];
}

/// About what a round's messages write ([`store::event_write_estimate`],
/// [`store::outcome_write_estimate`]): the round's write batch starts this large instead
/// of doubling its way there, a copy of all it holds each time.
fn round_bytes(msgs: &[CommitMsg]) -> usize {
    msgs.iter()
        .map(|m| match m {
            CommitMsg::Ingest(b) => b
                .events
                .iter()
                .map(|e| {
                    store::event_write_estimate(
                        e.data.len(),
                        e.ext_id.as_ref().map_or(0, String::len),
                        e.etype.len(),
                        e.account.as_ref().map_or(0, String::len),
                    )
                })
                .sum(),
            CommitMsg::Outcomes(list) => list
                .iter()
                .map(|o| store::outcome_write_estimate(o.attempt.as_ref()))
                .sum(),
            _ => 0,
        })
        .sum()
}

/// Messages to the committer.
pub enum CommitMsg {
    Ingest(IngestBatch),
    Outcomes(Vec<Outcome>),
    /// Disable an endpoint: `detail` is the receiver's answer for
    /// [`DisabledBy::Receiver`], `None` for a cause whose words are fixed.
    EndpointDisabled {
        ep: EndpointId,
        by: DisabledBy,
        detail: Option<String>,
    },
    /// The admin API enables (its paused deliveries become due, in order) or disables
    /// an endpoint. Answered once the endpoint's record is written and synced, so an
    /// answered call survives kill -9; `Err` is the store's refusal.
    SetEnabled {
        ep: EndpointId,
        enabled: bool,
        reply: crossbeam_channel::Sender<Result<(), String>>,
    },
    /// Flush, sync, and stop; the reply says it is done.
    Shutdown(crossbeam_channel::Sender<()>),
    /// Copy the committer's metrics out, at the end of the current round.
    Snapshot(crossbeam_channel::Sender<CommitSnapshot>),
    /// Create or replace an endpoint (compiled by the caller); answered once durable
    /// with its id and its record as written.
    PutEndpoint {
        spec: Box<EndpointSpec>,
        mode: PutMode,
        reply: crossbeam_channel::Sender<Result<(EndpointId, EndpointMeta), EndpointOpError>>,
    },
    /// Delete an endpoint by name; answered once durable.
    DeleteEndpoint {
        name: String,
        reply: crossbeam_channel::Sender<Result<EndpointId, EndpointOpError>>,
    },
    /// Schedule deliveries again now: (event, endpoint or every route). Answered once
    /// durable with what was scheduled per target.
    Replay {
        targets: Vec<(Seq, Option<EndpointId>)>,
        reply: crossbeam_channel::Sender<Vec<ReplayResult>>,
    },
    /// A worker's answer to [`WorkerMsg::GiveBack`] `request`: it dropped `count` of
    /// `ep`'s deliveries, with `bytes` of events, every one it held from key `from` on
    /// (`None`: it gave none back) but those in `kept` (in flight or in its wheel,
    /// handed over ahead of the cursor).
    GivenBack {
        ep: EndpointId,
        request: u64,
        from: Option<DueKey>,
        count: usize,
        bytes: usize,
        kept: Vec<DueKey>,
    },
}

impl CommitMsg {
    /// Events plus attempt outcomes: what a message adds to a round's write batch.
    fn items(&self) -> usize {
        match self {
            CommitMsg::Ingest(b) => b.events.len(),
            CommitMsg::Outcomes(list) => list.len(),
            _ => 1,
        }
    }
}

/// Adds waiting messages (from `next`) to a round until it holds [`ROUND_MSGS`] messages
/// or [`ROUND_ITEMS`] events and outcomes. The rest wait for the next round.
fn fill_round(msgs: &mut Vec<CommitMsg>, mut next: impl FnMut() -> Option<CommitMsg>) {
    let mut items: usize = msgs.iter().map(CommitMsg::items).sum();
    while msgs.len() < ROUND_MSGS && items < ROUND_ITEMS {
        let Some(m) = next() else { break };
        items += m.items();
        msgs.push(m);
    }
}

/// Whether a [`CommitMsg::PutEndpoint`] may create, replace, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    Create,
    Replace,
}

/// Why an endpoint operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointOpError {
    #[error("endpoint {0:?} already exists")]
    Exists(String),
    #[error("no endpoint {0:?}")]
    NotFound(String),
    #[error("cannot persist: {0}")]
    Store(String),
    #[error("there are {0} endpoints, the most there may be (an event routed to every one must fit its record): delete one first")]
    TooMany(usize),
}

/// What a replay of one target did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayResult {
    /// Deliveries scheduled, by endpoint.
    Scheduled(Vec<EndpointId>),
    /// The event is not in the log (unknown, or past retention).
    NoEvent,
    /// Nothing to schedule: every targeted delivery is pending, paused, or retrying where
    /// a replay leaves it (see `replay`).
    Busy,
    Failed(String),
}

/// The compiled endpoints by name, as the admin API reads them. Only the committer (and
/// start-up) writes it.
pub type Registry = Arc<RwLock<BTreeMap<String, Arc<EndpointSpec>>>>;

/// What the committer knows of an endpoint.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub id: EndpointId,
    pub name: String,
    pub worker: usize,
    pub events: Vec<String>,
    pub account: Option<String>,
    pub min_delay_ms: u64,
    pub enabled: bool,
    pub ordered: bool,
    /// Its worker may hold a retry whose `due` key is still on disk: the endpoint is
    /// `ordered` (the head's retry stays in its queue), or was since this process
    /// started (a `PUT` to `ordered = false` moves that retry into the FIFO queue). A
    /// replay then leaves its retries alone.
    pub holds_retries: bool,
    pub meta: EndpointMeta,
}

impl RouteInfo {
    /// When a delivery not yet attempted, of an event at `time_ms`, falls due: at its
    /// event time plus `min_delay`, not before `now`, and on an `ordered` endpoint not
    /// before any delivery given a due time before it (SPEC §6: acceptance order).
    /// One due only at or after `expires_ms` is never attempted (its event is past
    /// retention by then: see `State::never_due_from`), so it holds nothing back:
    /// an event stamped a month ahead would otherwise hold every later one until it
    /// expired too.
    /// Returns the previous bound when `meta` changed (to be persisted, or restored if
    /// the round that changed it is not written).
    fn first_due(&mut self, time_ms: u64, now: u64, expires_ms: u64) -> (u64, Option<u64>) {
        let mut due_ms = now.max(time_ms.saturating_add(self.min_delay_ms));
        if !self.ordered || due_ms >= expires_ms {
            return (due_ms, None);
        }
        due_ms = due_ms.max(self.meta.first_due_ms);
        if due_ms > now && due_ms > self.meta.first_due_ms {
            let before = std::mem::replace(&mut self.meta.first_due_ms, due_ms);
            return (due_ms, Some(before));
        }
        (due_ms, None)
    }
}

/// Event type (and account) → subscribed, enabled endpoints.
///
/// Endpoints come and go one at a time ([`insert`](Self::insert),
/// [`remove`](Self::remove)), each in time proportional to its own event types (and the
/// endpoints sharing them), not to the number of endpoints: with 50,000 of them a
/// rebuild per change made every create over the API take tens of milliseconds.
#[derive(Default)]
pub struct Router {
    by_type: HashMap<String, Vec<EndpointId>>,
    wildcard: Vec<EndpointId>,
    names: HashMap<String, EndpointId>,
    eps: HashMap<EndpointId, RouteInfo>,
}

impl Router {
    pub fn new(routes: Vec<RouteInfo>) -> Router {
        let mut r = Router::default();
        r.eps.reserve(routes.len());
        r.names.reserve(routes.len());
        for info in routes {
            r.insert(info);
        }
        r
    }

    /// Adds an endpoint, or replaces the one with its id (its types and name re-indexed).
    fn insert(&mut self, info: RouteInfo) {
        self.remove(info.id);
        for t in &info.events {
            if t == "*" {
                self.wildcard.push(info.id);
            } else if let Some(ids) = self.by_type.get_mut(t.as_str()) {
                ids.push(info.id);
            } else {
                self.by_type.insert(t.clone(), vec![info.id]);
            }
        }
        self.names.insert(info.name.clone(), info.id);
        self.eps.insert(info.id, info);
    }

    /// Takes an endpoint out of every index.
    fn remove(&mut self, id: EndpointId) -> Option<RouteInfo> {
        let info = self.eps.remove(&id)?;
        for t in &info.events {
            let ids = if t == "*" {
                &mut self.wildcard
            } else if let Some(ids) = self.by_type.get_mut(t.as_str()) {
                ids
            } else {
                continue;
            };
            ids.retain(|e| *e != id);
            if ids.is_empty() && t != "*" {
                self.by_type.remove(t.as_str());
            }
        }
        if self.names.get(&info.name) == Some(&id) {
            self.names.remove(&info.name);
        }
        Some(info)
    }

    fn by_name(&self, name: &str) -> Option<&RouteInfo> {
        self.names.get(name).and_then(|id| self.eps.get(id))
    }

    /// `id`'s name for a log line, `#id` once it is deleted (its `endpoint deleted`
    /// line gives both).
    fn name_of(&self, id: EndpointId) -> String {
        self.eps
            .get(&id)
            .map_or_else(|| format!("#{id}"), |i| i.name.clone())
    }

    pub fn route(&self, etype: &str, account: Option<&str>, out: &mut Vec<EndpointId>) {
        out.clear();
        let typed = self.by_type.get(etype).map(Vec::as_slice).unwrap_or(&[]);
        for id in typed.iter().chain(self.wildcard.iter()) {
            let Some(info) = self.eps.get(id) else {
                continue;
            };
            if !info.enabled || out.contains(id) {
                continue;
            }
            let ok = match (&info.account, account) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            };
            if ok {
                out.push(*id);
            }
        }
    }
}

/// Spill mode: deliveries of events from `fence` on, with keys below the cursor, stay
/// on disk; a second scan from `scan` up to the cursor loads them as workers drain.
#[derive(Debug, Clone, Copy)]
struct Spill {
    fence: Seq,
    scan: DueKey,
}

/// Whether the scans have passed `k` (the loader's cursor is above it, and it is not in
/// `spill`'s range still to load): a key written now must then go to its worker at once
/// ([`State::hand_now`]), and one left on disk earlier has been brought.
fn scans_passed(k: DueKey, cursor: DueKey, spill: Option<Spill>) -> bool {
    k < cursor && spill.is_none_or(|sp| !(k.seq >= sp.fence && k >= sp.scan))
}

/// Handles to start the committer with.
pub struct Committer {
    pub store: Store,
    pub durability: Durability,
    pub retention: Duration,
    pub inbox: Mailbox<CommitMsg>,
    pub workers: Vec<MailboxSender<WorkerMsg>>,
    pub routes: Vec<RouteInfo>,
    pub registry: Registry,
    /// The [syncer] thread's inbox, and what it shares with the committer.
    pub syncer: crossbeam_channel::Sender<SyncMsg>,
    pub sync: syncer::Shared,
}

struct State {
    store: Store,
    durability: Durability,
    retention_ms: u64,
    workers: Vec<MailboxSender<WorkerMsg>>,
    router: Router,
    next_seq: Seq,
    cursor: DueKey,
    /// Set while fresh deliveries spill to disk because workers hold too many.
    spill: Option<Spill>,
    in_memory: usize,
    /// The encoded size of their events (an event counted once per delivery).
    in_memory_bytes: usize,
    /// Per endpoint: what it holds and what is kept back from it ([`endpoint_share`]).
    shares: HashMap<EndpointId, Share>,
    /// The loader's deliveries in `out_jobs`, and their events' bytes: counted against
    /// the cap as it goes, so a page of large events stops where the cap is reached.
    out_count: usize,
    out_bytes: usize,
    /// Keys kept back, of every endpoint.
    deferred: usize,
    /// Endpoints whose kept-back backlog is partly on disk ([`Share::on_disk_from`]).
    on_disk: usize,
    /// [`State::leave_on_disk`] found no endpoint to leave keys on disk this tick.
    none_to_leave: bool,
    /// Give-backs asked of workers and not yet answered ([`Share::giving_back`]), and
    /// the number of the last one asked.
    giving_back: usize,
    last_give_back: u64,
    /// Per worker: jobs to hand over at the end of the round.
    out_jobs: Vec<Vec<Job>>,
    last_sync: Instant,
    unsynced: bool,
    /// Large rounds' answers under `sync` go through the syncer.
    syncer: crossbeam_channel::Sender<SyncMsg>,
    /// The poison (set by whichever fsync failed), the rounds queued at the syncer, and
    /// what it counted.
    sync: syncer::Shared,
    /// Endpoints whose meta changed this round.
    dirty: HashSet<EndpointId>,
    /// Endpoints whose paused deliveries are being moved back to `due`.
    resuming: Vec<EndpointId>,
    /// Endpoints enabled while deliveries they paused may still be in the paused set:
    /// an outcome reported before the pause looks there (see `record`). Left once
    /// their paused set is empty.
    settling: HashSet<EndpointId>,
    /// Endpoints disabled this round, with their worker's answer to come: which of
    /// their deliveries are in flight (those keep their due keys; see `start_pauses`).
    pausing: HashMap<EndpointId, crossbeam_channel::Receiver<Vec<u64>>>,
    /// Disabled endpoints whose due deliveries are being moved to their paused sets, and
    /// deleted ones whose due deliveries are being failed.
    scan: DueScan,
    /// Scan pages the store refused (a full disk), logged at most every 10 s.
    scan_failures: Tally,
    /// Reads and writes of the loader's ticks (and of resumes) the store refused
    /// ([`loader_failed`]).
    loader_failures: Cell<Tally>,
    /// `ordered` endpoints whose first-attempt bound this round's events moved, with the
    /// bound before: put back if the round is not written.
    first_due_before: Vec<(EndpointId, u64)>,
    registry: Registry,
    /// The id the next new endpoint gets (ids are never reused).
    next_ep_id: EndpointId,
    /// A sweep of the due index (from this key, above the loader's cursor) expiring
    /// deliveries past retention, a page per tick.
    sweep: Option<DueKey>,
    /// Deleted endpoints whose pending deliveries are still being failed, a page each
    /// per tick.
    dropping: Vec<Dropping>,
    /// Events of retries due soon, kept from their failed attempt for the loader.
    waiting: Waiting,
    /// Deliveries handed over under keys a scan has yet to pass (at or above the
    /// loader's cursor, or in the spilled range: [`Self::flush_jobs`]): the ordered
    /// endpoints' held heads at start ([`Self::send_holds`]) and quiet endpoints' fresh
    /// deliveries while the cursor lags or fresh deliveries spill
    /// ([`Self::hands_ahead`]). Their worker has them: the loader and the spill's scan
    /// skip them when they pass, a read-back leaves them out, the expiry sweep and a
    /// deletion's scan leave them to the outcome the worker reports. Each leaves when it
    /// is reported, given back or moved by a pause (its worker dropped it at the
    /// disable, and said so). (A held head's second copy was harmless while its endpoint
    /// stayed ordered, its queue taking one copy of a delivery, but one made `ordered =
    /// false` meanwhile sent the head twice; a FIFO queue always takes a second copy as a
    /// second delivery.)
    ahead: BTreeSet<DueKey>,
    stats: Stats,
    write_failures: WriteFailures,
    /// Retention writes that failed since the last line logged.
    retention_failures: Tally,
    scrub: Scrub,
}

/// How long the store must have had no write before it is scrubbed
/// ([`Store::scrub_below`]).
const SCRUB_IDLE: Duration = Duration::from_secs(60);

/// When to scrub the store: once per idle spell of [`SCRUB_IDLE`] (no write at all), on
/// a thread of its own so that the committer answers producers meanwhile.
struct Scrub {
    /// The store's last write as last seen, and since when.
    seen: u64,
    since: Instant,
    /// Scrubbed (or begun) since that write.
    done: bool,
    /// A scrub is running.
    running: Arc<AtomicBool>,
    /// The last scrub's thread, joined at [`Scrub::stop`].
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scrub {
    fn new() -> Scrub {
        Scrub {
            seen: 0,
            since: Instant::now(),
            done: false,
            running: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// At shutdown: a scrub still running is cut short (RocksDB's background work
    /// cancelled; a compaction cut short is dropped, nothing of the log with it) and its
    /// thread joined, so the process does not exit with it inside RocksDB.
    fn stop(&mut self, store: &Store) {
        if self.running.load(Ordering::Acquire) {
            store.cancel_background_work();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Begins a scrub below `floor` if the store has had no write for `idle` and has not
    /// been scrubbed since its last write. Returns whether it began one.
    fn tick(&mut self, store: &Store, floor: Seq, idle: Duration) -> bool {
        let last = store.last_write();
        if last != self.seen {
            (self.seen, self.since, self.done) = (last, Instant::now(), false);
            return false;
        }
        if self.done || self.since.elapsed() < idle || self.running.load(Ordering::Acquire) {
            return false;
        }
        self.done = true;
        self.running.store(true, Ordering::Release);
        let (store, running) = (store.clone(), self.running.clone());
        let spawned = std::thread::Builder::new()
            .name("ricochet-scrub".into())
            .spawn(move || {
                let began = Instant::now();
                match store.scrub_below(floor) {
                    Ok(()) => tracing::debug!(
                        ms = began.elapsed().as_millis() as u64,
                        "idle store scrubbed: memtables flushed, what retention deleted compacted away"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot scrub the idle store"),
                }
                running.store(false, Ordering::Release);
            });
        match spawned {
            Ok(t) => self.thread = Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread to scrub the idle store");
                self.running.store(false, Ordering::Release);
            }
        }
        true
    }
}

/// Writes the store refused (a full disk), logged at most every
/// [`WRITE_FAILURE_LOG_EVERY`] with what they cost, and once when writes succeed after a
/// failure was logged: one line per round flooded the log (hundreds a second).
#[derive(Default)]
struct WriteFailures {
    /// Since the last line logged.
    rounds: u64,
    lines: u64,
    outcomes: u64,
    last_logged: Option<Instant>,
    /// A failure was logged and no success since.
    announced: bool,
}

const WRITE_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

impl WriteFailures {
    fn failed(&mut self, e: &store::StoreError, lines: u64, outcomes: u64) {
        self.rounds += 1;
        self.lines += lines;
        self.outcomes += outcomes;
        if self
            .last_logged
            .is_some_and(|t| t.elapsed() < WRITE_FAILURE_LOG_EVERY)
        {
            return;
        }
        tracing::error!(
            error = %e,
            rounds = self.rounds,
            lines_refused = self.lines,
            outcomes_unrecorded = self.outcomes,
            "store write failed (counts since the last such line): the lines are answered \
             `unavailable`; deliveries whose attempt outcome was not recorded are made again \
             after a restart"
        );
        *self = WriteFailures {
            last_logged: Some(Instant::now()),
            announced: true,
            ..WriteFailures::default()
        };
    }

    fn succeeded(&mut self) {
        if !self.announced {
            // Failures counted but not logged (within the interval after a success
            // line) are reported once the interval has passed.
            if self.rounds > 0
                && self
                    .last_logged
                    .is_none_or(|t| t.elapsed() >= WRITE_FAILURE_LOG_EVERY)
            {
                tracing::warn!(
                    rounds = self.rounds,
                    lines_refused = self.lines,
                    outcomes_unrecorded = self.outcomes,
                    "store writes failed for a moment and succeed again"
                );
                *self = WriteFailures {
                    last_logged: Some(Instant::now()),
                    ..WriteFailures::default()
                };
            }
            return;
        }
        tracing::warn!(
            rounds = self.rounds,
            lines_refused = self.lines,
            outcomes_unrecorded = self.outcomes,
            "store writes succeed again (the counts are those since the last failure logged)"
        );
        // The rate limit holds across a success: writes that fail and succeed by turns
        // log a pair of lines per interval at most.
        *self = WriteFailures {
            last_logged: self.last_logged,
            ..WriteFailures::default()
        };
    }
}

/// A deleted endpoint whose pending deliveries are being failed: its paused ones, no
/// more than [`DROP_SCAN`] a page, then those waiting in `due` beyond the loader's
/// cursor, by the shared scan ([`DueScan`]), so a deletion with a large backlog
/// neither holds the committer nor builds one huge write, and a thousand deletions
/// read the due index once. Persisted as [`Store::deleting`] until done.
#[derive(Debug, Clone, Copy)]
struct Dropping {
    ep: EndpointId,
    /// The paused set from this sequence number on; `None` once it is empty.
    paused_from: Option<Seq>,
    /// Whether its due deliveries are failed by the scan (not for an endpoint whose
    /// worker may hold its head's retry: the loader fails those as they fall due, see
    /// [`State::delete_endpoint`]).
    scan_due: bool,
    failed: u64,
}

impl Dropping {
    fn new(ep: EndpointId, scan_due: bool) -> Dropping {
        Dropping {
            ep,
            paused_from: Some(0),
            scan_due,
            failed: 0,
        }
    }
}

/// One scan of the due index, a page at a time, shared by every disabled endpoint whose
/// due deliveries are being moved to its paused set and every deleted one whose due
/// deliveries are being failed. The index is ordered by due time, so an endpoint's
/// deliveries are anywhere in it: a scan per endpoint made a mass disable (a receiver
/// down for every endpoint of a platform) hold the committer for a scan of the whole
/// index per endpoint, and a mass deletion read it once per endpoint and tick.
///
/// An endpoint joins where the scan is, and is done when the scan comes back there:
/// past the end, the scan goes on from the start. What it needs moved is in the index
/// already when it joins (a disabled endpoint's worker dropped its jobs then; attempts
/// in flight are the outcomes' to move; no new delivery is routed to a disabled or
/// deleted endpoint, and one enabled meanwhile is held, its new deliveries paused:
/// [`State::enable_ep`]).
struct DueScan {
    /// The next key to read, while there are members.
    at: DueKey,
    members: HashMap<EndpointId, ScanMember>,
}

/// What the scan does with a member's due deliveries.
enum Sweep {
    /// Moves them to the paused set, but those of attempts in flight at the disable
    /// (by sequence number): their outcomes move them.
    Pause { running: HashSet<u64> },
    /// Fails those at or beyond the loader's cursor (those below it are in a worker or
    /// spilled, and fail as they come back); `failed` from its paused set before.
    Drop { failed: u64 },
}

struct ScanMember {
    sweep: Sweep,
    /// A pause's `~pausing/<id>` marker is in the store ([`store::Batch::pausing`]).
    marked: bool,
    /// Where the scan was when it joined.
    start: DueKey,
    /// The scan has passed the end of the index since it joined.
    lapped: bool,
    /// Deliveries moved or failed so far.
    moved: u64,
}

impl Default for DueScan {
    fn default() -> DueScan {
        DueScan {
            at: DueKey::MIN,
            members: HashMap::default(),
        }
    }
}

impl DueScan {
    /// `ep` joins the scan (it is started if none is under way).
    fn join(&mut self, ep: EndpointId, sweep: Sweep) {
        if self.members.is_empty() {
            self.at = DueKey::MIN;
        }
        self.members.insert(
            ep,
            ScanMember {
                sweep,
                marked: false,
                start: self.at,
                lapped: false,
                moved: 0,
            },
        );
    }

    /// Whether `ep`'s pause is under way: an enabled endpoint ([`State::enable_ep`]) is
    /// held, its deliveries paused as a disabled one's, until the scan is done with it,
    /// and a deletion waits for it ([`State::drop_deleted`]). (No scan, no look-up: it
    /// is asked per delivery routed.)
    fn pausing(&self, ep: EndpointId) -> bool {
        !self.members.is_empty()
            && self
                .members
                .get(&ep)
                .is_some_and(|m| matches!(m.sweep, Sweep::Pause { .. }))
    }

    /// Whether the scan takes this key, with the loader's cursor at `cursor` and the
    /// keys handed over ahead of it `ahead` (a deleted endpoint's worker reports those).
    fn picks(&self, k: &DueKey, cursor: DueKey, ahead: &BTreeSet<DueKey>) -> bool {
        self.members.get(&k.ep).is_some_and(|m| match &m.sweep {
            Sweep::Pause { running } => !running.contains(&k.seq),
            Sweep::Drop { .. } => *k >= cursor && !ahead.contains(k),
        })
    }

    /// Whether a page read up to `next` (the end: `None`) ends `m`'s part.
    fn ends(m: &ScanMember, next: Option<DueKey>) -> bool {
        match next {
            // Every key from where it joined was read before the end, or since the lap.
            None => m.start == DueKey::MIN || m.lapped,
            // Every key below `n` was read since the lap.
            Some(n) => m.lapped && n >= m.start,
        }
    }

    /// The members a page read up to `next` ends.
    fn ending(&self, next: Option<DueKey>) -> Vec<EndpointId> {
        self.members
            .iter()
            .filter(|(_, m)| DueScan::ends(m, next))
            .map(|(&ep, _)| ep)
            .collect()
    }

    /// After a page read up to `next` and `moved` written: the members now done, taken
    /// out.
    fn advance(
        &mut self,
        moved: &[(DueKey, DueVal)],
        next: Option<DueKey>,
    ) -> Vec<(EndpointId, ScanMember)> {
        for (k, _) in moved {
            if let Some(m) = self.members.get_mut(&k.ep) {
                m.moved += 1;
            }
        }
        let done = self.ending(next);
        if next.is_none() {
            for m in self.members.values_mut() {
                m.lapped = true;
            }
        }
        self.at = next.unwrap_or(DueKey::MIN);
        done.into_iter()
            .filter_map(|ep| self.members.remove_entry(&ep))
            .collect()
    }
}

/// Logs a store operation of the loader's (or a resume's) that failed, at most once per
/// [`WRITE_FAILURE_LOG_EVERY`] with the count since the last line: each is tried again
/// every tick, some for every key, so a failing store logged thousands of lines a
/// second. The line names the operation that failed when it was due.
fn loader_failed(tally: &Cell<Tally>, what: &str, e: &store::StoreError) {
    let mut t = tally.get();
    let due = t.note(WRITE_FAILURE_LOG_EVERY);
    tally.set(t);
    if let Some(failures) = due {
        tracing::error!(error = %e, failures, "{what} (failures: the count since the last such line; tried again each tick)");
    }
}

/// Logs a deletion done: every pending delivery it found in the store failed.
fn deleted_done(ep: EndpointId, failed: u64) {
    // By id: the name is gone with the endpoint (the `endpoint deleted` line gives
    // both). Those its worker held fail as it drops them, and its keys kept back or
    // left on disk below the cursor as they are read back, not counted here.
    tracing::info!(
        id = ep,
        failed_in_store = failed,
        "a deleted endpoint's deliveries waiting in the store failed (those its worker \
         held fail as it drops them; below the loader's cursor, a backlog kept back or \
         left on disk fails as it is read back, its own line when all is)"
    );
}

/// The smallest page an endpoint's paused deliveries resume in while workers have
/// room ([`State::resume`] shares the room out among the endpoints resuming).
const RESUME_PAGE_MIN: usize = 64;

/// Keys read per page of a deletion ([`Dropping`]).
const DROP_SCAN: usize = PAGE * 2;

/// How far ahead a retry's event is kept in memory for the loader ([`Waiting`]).
const WAITING_WITHIN_MS: u64 = 10_000;
/// At most this many bytes of events are kept so.
const WAITING_BYTES: usize = 16 << 20;

/// The events of deliveries whose retry falls due soon, kept from the failed attempt
/// (which had the event in hand) so the loader hands the retry over without reading the
/// event back from the store. Only a shortcut: a retry whose event is not here (too far
/// out, over the cap, dropped after a restart) is read from the store as before.
#[derive(Default)]
struct Waiting {
    events: HashMap<Seq, Kept>,
    /// The kept events' encoded size.
    bytes: usize,
    /// The loader's due time when entries were last purged.
    purged_ms: u64,
}

/// An event kept in [`Waiting`].
struct Kept {
    event: Arc<EventRecord>,
    /// Its retries not yet handed over.
    retries: u32,
    /// The latest one's due time.
    last_due_ms: u64,
}

impl Waiting {
    fn keep(&mut self, event: Arc<EventRecord>, due_ms: u64, cursor_ms: u64) {
        if due_ms > cursor_ms + WAITING_WITHIN_MS {
            return;
        }
        let full = self.bytes >= WAITING_BYTES;
        match self.events.entry(event.seq) {
            Entry::Occupied(mut o) => {
                let k = o.get_mut();
                k.retries += 1;
                k.last_due_ms = k.last_due_ms.max(due_ms);
            }
            Entry::Vacant(v) if !full => {
                self.bytes += event.encoded().len();
                v.insert(Kept {
                    event,
                    retries: 1,
                    last_due_ms: due_ms,
                });
            }
            Entry::Vacant(_) => {}
        }
    }

    /// The event of a retry the loader hands over, if kept.
    fn take(&mut self, seq: Seq) -> Option<Arc<EventRecord>> {
        let Entry::Occupied(mut o) = self.events.entry(seq) else {
            return None;
        };
        o.get_mut().retries -= 1;
        Some(if o.get().retries == 0 {
            let e = o.remove().event;
            self.bytes -= e.encoded().len();
            e
        } else {
            o.get().event.clone()
        })
    }

    /// Forgets events whose retries the loader has all passed (those left went another
    /// way: paused, deleted, expired), once a second of due time.
    fn purge(&mut self, cursor_ms: u64) {
        if cursor_ms < self.purged_ms + 1000 {
            return;
        }
        self.purged_ms = cursor_ms;
        let bytes = &mut self.bytes;
        self.events.retain(|_, k| {
            let keep = k.last_due_ms >= cursor_ms;
            if !keep {
                *bytes -= k.event.encoded().len();
            }
            keep
        });
    }
}

/// The committer's own metrics (see [`CommitSnapshot`]).
struct Stats {
    /// The answers the committer sends itself (`batch`, `none`).
    acks: AckStats,
    /// µs per write carrying events (the write alone; the fsync is timed apart).
    commit_time: Hist,
    /// µs per fsync the committer made itself (small `sync` rounds', the last one; the
    /// syncer times its own).
    fsync_time: Hist,
    /// Keys in `due` plus keys in `paused`: deliveries not yet done.
    pending: u64,
    /// Keys in `paused`.
    paused: u64,
    /// Deliveries that outlived retention without being delivered.
    expired: u64,
}

/// Changes to the pending/paused counts made by one write batch; applied only once the
/// batch is written.
#[derive(Debug, Default, Clone, Copy)]
struct Delta {
    pending: i64,
    paused: i64,
    expired: u64,
}

impl Stats {
    fn apply(&mut self, d: Delta) {
        self.pending = self.pending.saturating_add_signed(d.pending);
        self.paused = self.paused.saturating_add_signed(d.paused);
        self.expired += d.expired;
    }
}

/// How long after its event's time a first attempt is never made, with `retention_ms`:
/// the retention floor has passed the event by then (it moves every `retention_every`,
/// and the loader and the workers check it before an attempt), with a second pass and a
/// second to spare.
fn never_due_after(retention_ms: u64) -> u64 {
    let every = retention_every(Duration::from_millis(retention_ms)).as_millis() as u64;
    retention_ms.saturating_add(2 * every + 1000)
}

/// What the store holds pending at a start ([`count_pending`]).
struct Pending {
    /// Deliveries pending (`due` and `paused` keys), and of those the paused ones.
    pending: u64,
    paused: u64,
    /// Each `ordered` endpoint's highest `due` key, its held head's and those never due
    /// left out: the end of its backlog from before the start, which the loader brings
    /// from the beginning of the index. Its [`Share::disk_max`] at the start, so that
    /// its fresh deliveries do not go ahead of it ([`State::hands_ahead`]). (A FIFO
    /// endpoint's may, as FIFO allows; one made ordered later waits for the scans to
    /// reach the present: [`State::put_endpoint`].)
    ordered_backlog: HashMap<EndpointId, DueKey>,
    /// Endpoints with paused deliveries.
    with_paused: HashSet<EndpointId>,
}

/// Counts the deliveries pending in the store (`due` and `paused` keys) and of those the
/// paused ones, and takes each `ordered` endpoint's highest `due` key but its held
/// head's and those never due ([`Pending::ordered_backlog`]; `routes` say which). Scans
/// both column families once, at start.
fn count_pending(
    store: &Store,
    routes: &[RouteInfo],
    retention_ms: u64,
) -> Result<Pending, store::StoreError> {
    let ordered: HashSet<EndpointId> = routes.iter().filter(|i| i.ordered).map(|i| i.id).collect();
    let heads: HashSet<DueKey> = routes
        .iter()
        .filter(|i| i.ordered && i.enabled)
        .filter_map(|i| {
            let (seq, due_ms, _) = i.meta.hold?;
            Some(DueKey {
                due_ms,
                seq,
                ep: i.id,
            })
        })
        .collect();
    let mut ordered_backlog = HashMap::default();
    let never_after = never_due_after(retention_ms);
    let due = store.each_due(|k| {
        if !ordered.is_empty()
            && ordered.contains(&k.ep)
            && k.due_ms < seq_time_ms(k.seq).saturating_add(never_after)
            && !heads.contains(&k)
        {
            // (In key order: the last one seen is the highest.)
            ordered_backlog.insert(k.ep, k);
        }
    })? as u64;
    let mut paused = 0u64;
    let mut with_paused = HashSet::default();
    let ids = store.endpoints()?.into_iter().map(|(_, meta)| meta.id);
    for id in ids.chain(store.deleting()?) {
        let mut after = 0;
        loop {
            let page = store.paused_of(id, after, PAGE * 8)?;
            paused += page.len() as u64;
            if !page.is_empty() {
                with_paused.insert(id);
            }
            match page.last() {
                Some(&(seq, _)) if page.len() == PAGE * 8 => after = seq + 1,
                _ => break,
            }
        }
    }
    Ok(Pending {
        pending: due + paused,
        paused,
        ordered_backlog,
        with_paused,
    })
}

impl Committer {
    /// Runs the committer on the calling thread until shutdown.
    pub fn run(self) -> Result<(), store::StoreError> {
        store::quiet_perf_counters();
        let max = self.store.max_seq()?.unwrap_or(0);
        let next_seq = (max + 1).max(seq_floor(now_ms()));
        let n = self.workers.len();
        let retention_ms = self.retention.as_millis() as u64;
        let Pending {
            pending,
            paused,
            ordered_backlog,
            with_paused,
        } = count_pending(&self.store, &self.routes, retention_ms)?;
        let next_ep_id = self
            .store
            .endpoint_names()?
            .keys()
            .map(|id| id + 1)
            .max()
            .unwrap_or(1);
        let mut st = State {
            store: self.store,
            durability: self.durability,
            retention_ms,
            workers: self.workers,
            router: Router::new(self.routes),
            next_seq,
            cursor: DueKey::MIN,
            spill: None,
            in_memory: 0,
            in_memory_bytes: 0,
            shares: HashMap::default(),
            out_count: 0,
            out_bytes: 0,
            deferred: 0,
            on_disk: 0,
            none_to_leave: false,
            giving_back: 0,
            last_give_back: 0,
            out_jobs: (0..n).map(|_| Vec::new()).collect(),
            last_sync: Instant::now(),
            unsynced: false,
            syncer: self.syncer,
            sync: self.sync,
            dirty: HashSet::default(),
            resuming: Vec::new(),
            settling: HashSet::default(),
            pausing: HashMap::default(),
            scan: DueScan::default(),
            scan_failures: Tally::default(),
            loader_failures: Default::default(),
            first_due_before: Vec::new(),
            registry: self.registry,
            next_ep_id,
            sweep: None,
            dropping: Vec::new(),
            waiting: Waiting::default(),
            ahead: BTreeSet::new(),
            write_failures: WriteFailures::default(),
            retention_failures: Tally::default(),
            scrub: Scrub::new(),
            stats: Stats {
                acks: AckStats::default(),
                commit_time: Hist::micros(),
                fsync_time: Hist::micros(),
                pending,
                paused,
                expired: 0,
            },
        };
        let retention_every = retention_every(self.retention);
        // Deletions not finished before the stop (or made by the config file): nothing
        // is in a worker yet, so all of the due index is theirs to scan.
        st.dropping = st
            .store
            .deleting()?
            .into_iter()
            .map(|ep| Dropping::new(ep, true))
            .collect();
        // Pauses not finished before the stop: nothing is in flight now. A disabled
        // endpoint's goes on in the shared scan. Those of endpoints enabled again (held
        // at the stop, or by the config file at this start) end before their paused
        // deliveries resume, all in one scan of the due index: one scan each held the
        // first ack a full scan per endpoint after a mass enable. A deleted one's
        // deliveries are the deletion's.
        let mut enabled = HashSet::default();
        for ep in st.store.pausing()? {
            match st.router.eps.get(&ep).map(|i| i.enabled) {
                Some(false) => {
                    let running = HashSet::default();
                    st.scan.join(ep, Sweep::Pause { running });
                    if let Some(m) = st.scan.members.get_mut(&ep) {
                        m.marked = true;
                    }
                }
                Some(true) => {
                    enabled.insert(ep);
                }
                None => {
                    let mut batch = st.store.batch();
                    batch.paused_all(&st.store, ep);
                    st.store.commit(batch, false)?;
                }
            }
        }
        st.finish_pauses_at_start(&enabled);
        // Retention first: a held head whose event passed retention while the process
        // was down is not sent (its event is gone), like every other such delivery.
        st.retention();
        let mut last_retention = Instant::now();
        // Ordered endpoints get their held head first, so nothing overtakes it.
        st.send_holds();
        for (ep, k) in ordered_backlog {
            st.shares.entry(ep).or_default().disk_max = Some(k);
        }
        // Enabled endpoints resume any paused deliveries (enabled again in the config,
        // or their pause ended above); an ordered one's new deliveries join them
        // meanwhile (see `accept`). Only those with some: the rest have nothing to
        // resume, and an ordered one's fresh deliveries would be paused until its turn
        // came (a resume reads a page per endpoint and tick within [`SCAN_BUDGET`], and
        // waits for room in the workers, which a restart's backlogs fill).
        st.resuming = st
            .router
            .eps
            .values()
            .filter(|i| i.enabled && (with_paused.contains(&i.id) || enabled.contains(&i.id)))
            .map(|i| i.id)
            .collect();
        let inbox = self.inbox;
        let mut msgs = Vec::with_capacity(1024);
        let mut last_load = Instant::now() - TICK;
        let mut last_rates = Instant::now();
        loop {
            let unsynced_for =
                (st.durability == Durability::Batch && st.unsynced).then(|| st.last_sync.elapsed());
            let timeout = idle_wait(last_load.elapsed(), unsynced_for);
            // (Messages carried over from the last round go first, without waiting.)
            if msgs.is_empty() {
                match inbox.recv_timeout(timeout) {
                    Ok(m) => msgs.push(m),
                    Err(true) => return Ok(()),
                    Err(false) => {}
                }
            }
            fill_round(&mut msgs, || inbox.try_recv());
            let later = split_before_delete(&mut msgs);
            let mut shutdown = None;
            st.round(&mut msgs, &mut shutdown);
            msgs.extend(later);
            // Retention before the load: the floor it moves is what the loader expires
            // by (at start it ran before anything was handed over).
            if last_retention.elapsed() >= retention_every {
                st.retention();
                last_retention = Instant::now();
            }
            if last_rates.elapsed() >= RATE_EVERY {
                for s in st.shares.values_mut() {
                    s.take_rate();
                }
                st.ask_give_back();
                last_rates = Instant::now();
            }
            if last_load.elapsed() >= TICK {
                st.load();
                last_load = Instant::now();
                let floor = st.store.retention_floor();
                st.scrub.tick(&st.store, floor, SCRUB_IDLE);
            }
            if st.durability == Durability::Batch
                && st.unsynced
                && st.last_sync.elapsed() >= BATCH_SYNC_EVERY
            {
                st.sync_in_background();
            }
            if let Some(reply) = shutdown {
                if st.unsynced {
                    st.sync();
                }
                // After every answer already passed to the syncer.
                if st.syncer.send(SyncMsg::Shutdown(reply.clone())).is_err() {
                    let _ = reply.send(());
                }
                st.scrub.stop(&st.store);
                return Ok(());
            }
        }
    }
}

/// Cuts `msgs` before its first endpoint deletion that is not its first message, and
/// returns the rest: a deletion starts a round of its own, so what came before it (an
/// event routed to the endpoint, an outcome moving one of its deliveries) is written
/// before the deletion looks for the endpoint's pending deliveries in the store.
fn split_before_delete(msgs: &mut Vec<CommitMsg>) -> Vec<CommitMsg> {
    match msgs
        .iter()
        .skip(1)
        .position(|m| matches!(m, CommitMsg::DeleteEndpoint { .. }))
    {
        Some(i) => msgs.split_off(i + 1),
        None => Vec::new(),
    }
}

impl State {
    /// A first attempt of event `seq` due at or after this is never made
    /// ([`never_due_after`]).
    fn never_due_from(&self, seq: Seq) -> u64 {
        seq_time_ms(seq).saturating_add(never_due_after(self.retention_ms))
    }

    fn cap(&self) -> usize {
        in_memory_cap(self.router.eps.len())
    }

    /// Whether workers hold as many deliveries as they may, `more` about to be handed
    /// over ([`Self::memory_full`]), or [`MAX_DEFERRED`] keys are kept back.
    fn workers_full(&self, more: usize) -> bool {
        self.memory_full(more) || self.deferred >= MAX_DEFERRED
    }

    /// Whether workers hold [`in_memory_cap`] deliveries or [`MAX_IN_MEMORY_BYTES`] of
    /// their events, `more` about to be handed over (and the loader's, counted as it
    /// goes).
    fn memory_full(&self, more: usize) -> bool {
        self.in_memory + self.out_count + more >= self.cap()
            || self.in_memory_bytes + self.out_bytes >= MAX_IN_MEMORY_BYTES
    }

    /// Whether `ep`'s delivery under `key`, about to be handed over, is kept back: its
    /// endpoint holds its share while workers hold half the cap, or a delivery of it
    /// before this one is kept back already.
    fn keeps_back(&self, ep: EndpointId, key: DueKey) -> bool {
        let Some(s) = self.shares.get(&ep) else {
            return false;
        };
        let cap = self.cap();
        (s.held >= s.limit(cap) && 2 * self.in_memory >= cap)
            || s.deferred.first_key_value().is_some_and(|(k, _)| *k < key)
            || s.on_disk_from.is_some_and(|from| key >= from)
            || s.giving_back.is_some()
    }

    /// Keeps `key` back from its endpoint's worker ([`Self::keeps_back`]): in memory,
    /// or on disk where the endpoint's backlog is ([`Share::on_disk_from`]).
    fn keep_back(&mut self, key: DueKey, val: DueVal) {
        let s = self.shares.entry(key.ep).or_default();
        if s.on_disk_from.is_some_and(|from| key >= from) {
            // Its `due` key is written: the read-back reaches it.
            return;
        }
        if s.deferred.insert(key, val).is_none() {
            self.deferred += 1;
            // At the bound; when no endpoint could leave its keys on disk, not again
            // before the next tick (a look at every endpoint for each key would cost
            // thousands per key).
            if self.deferred >= MAX_DEFERRED && !self.none_to_leave {
                self.leave_on_disk();
            }
        }
    }

    /// The kept-back keys have reached [`MAX_DEFERRED`]: of the endpoints that drain
    /// slowly ([`Share::slow`]), the one with the most keeps its first [`PAGE`] in
    /// memory and leaves the rest on disk, where they are already. Keys at or below
    /// what a FIFO one has handed over stay (a worker may hold a key above one kept
    /// back: a fresh delivery due before a loaded one). With no such endpoint nothing
    /// moves, and workers count as full ([`Self::workers_full`]): endpoints draining a
    /// backlog fast read theirs back slower than the loader and the spill bring it
    /// (`backlog`'s drain ran at 34,600 deliveries/s against 101,000 when the endpoint
    /// with half the keys went to disk too).
    fn leave_on_disk(&mut self) {
        // At most MAX_DEFERRED / PAGE of them have more than a page.
        let mut candidates: Vec<(usize, EndpointId)> = self
            .shares
            .iter()
            .filter(|(_, s)| s.deferred.len() > PAGE && s.slow())
            .map(|(&ep, s)| (s.deferred.len(), ep))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (_, ep) in candidates {
            // An ordered queue takes a second copy of a delivery as the same one (a
            // held head handed over at start lies above everything kept back): only a
            // FIFO one needs the bound.
            let ordered = self.router.eps.get(&ep).is_some_and(|i| i.ordered);
            let Some(s) = self.shares.get_mut(&ep) else {
                continue;
            };
            let mut left = 0usize;
            let mut lowest = None;
            while s.deferred.len() > PAGE {
                let Some(entry) = s.deferred.last_entry() else {
                    break;
                };
                if !ordered && *entry.key() <= s.handed_max {
                    break;
                }
                lowest = Some(entry.remove_entry().0);
                left += 1;
            }
            let Some(lowest) = lowest else {
                continue;
            };
            self.deferred -= left;
            if s.leave_on_disk_from(lowest) {
                self.on_disk += 1;
                tracing::info!(
                    endpoint = %self.router.name_of(ep),
                    on_disk = left,
                    "an endpoint's backlog past the deliveries kept back in memory waits on disk; it is read back as it drains"
                );
            }
            return;
        }
        self.none_to_leave = true;
    }

    /// Once workers hold half the cap, asks the worker of each endpoint that drains
    /// slowly and holds more than a page past 10 s of its work (at least [`SLOW_HELD`])
    /// to give the rest back ([`WorkerMsg::GiveBack`]): the limit applies to what is handed over
    /// from then on, so hung endpoints whose backlogs all came within their first
    /// second, before any was measured slow, filled the cap between them and held it
    /// until their receivers answered (six × 40,000: a healthy endpoint waited 120 s).
    /// Until the worker answers, nothing more of the endpoint is handed over
    /// ([`Share::giving_back`]). Asked once per rate window at most.
    fn ask_give_back(&mut self) {
        let cap = self.cap();
        if 2 * self.in_memory < cap {
            return;
        }
        // What it keeps: what it may hold once no longer slow ([`Share::work_limit`]);
        // keeping less, it would read the difference straight back.
        let asks: Vec<(EndpointId, usize)> = self
            .shares
            .iter()
            .filter(|(_, s)| s.giving_back.is_none() && s.slow())
            .map(|(&ep, s)| (ep, s.held, s.work_limit(cap)))
            .filter(|&(_, held, keep)| held > keep + PAGE)
            .map(|(ep, _, keep)| (ep, keep))
            .collect();
        for (ep, keep) in asks {
            let Some(info) = self.router.eps.get(&ep) else {
                continue;
            };
            if !self.delivers(info) {
                continue;
            }
            let worker = info.worker;
            let Some(s) = self.shares.get_mut(&ep) else {
                continue;
            };
            self.last_give_back += 1;
            s.giving_back = Some(self.last_give_back);
            self.giving_back += 1;
            let ahead = self.ahead.iter().filter(|k| k.ep == ep).copied().collect();
            self.workers[worker].send(WorkerMsg::GiveBack {
                ep,
                keep,
                request: self.last_give_back,
                ahead,
            });
        }
    }

    /// A worker gave back `count` of `ep`'s deliveries, every one it held from `from`
    /// on ([`Self::ask_give_back`]): their keys are in `due` still, and from `from` on
    /// the endpoint's backlog waits on disk, read back as it drains
    /// ([`Share::on_disk_from`]); keys kept back meanwhile from there on join it. An
    /// answer to a request a disable cancelled only counts them: the pause moves them.
    fn given_back(
        &mut self,
        ep: EndpointId,
        request: u64,
        from: Option<DueKey>,
        count: usize,
        bytes: usize,
        kept: &[DueKey],
    ) {
        self.in_memory = self.in_memory.saturating_sub(count);
        self.in_memory_bytes = self.in_memory_bytes.saturating_sub(bytes);
        let Some(s) = self.shares.get_mut(&ep) else {
            return;
        };
        s.held = s.held.saturating_sub(count);
        if s.giving_back != Some(request) {
            return;
        }
        s.giving_back = None;
        self.giving_back -= 1;
        let Some(from) = from else {
            return;
        };
        // The worker dropped them: read back from disk as the rest. Those it still has
        // are skipped when read back, as when the loader passes them.
        let mut dropped_ahead = None;
        self.ahead.retain(|k| {
            let keep = k.ep != ep || *k < from || kept.contains(k);
            if !keep {
                dropped_ahead = dropped_ahead.max(Some(*k));
            }
            keep
        });
        if let Some(k) = dropped_ahead {
            // Those it had been handed ahead of the scans now wait for them: its fresh
            // deliveries do not go before them. (Helper R's review, session 46: an
            // ordered endpoint handed 4,630 ahead in one round gave back 2,583 of them,
            // drained the rest and, quiet again, sent a fresh one before 2,573.)
            s.note_left_on_disk(k, self.cursor, self.spill);
        }
        if s.leave_on_disk_from(from) {
            self.on_disk += 1;
        }
        let from = s.on_disk_from.unwrap_or(from);
        self.deferred -= s.deferred.split_off(&from).len();
        tracing::info!(
            endpoint = %self.router.name_of(ep),
            given_back = count,
            "a slow endpoint gave back its deliveries in memory past what it may hold: its backlog from there waits on disk; it is read back as it drains"
        );
    }

    /// An fsync made on the committer's thread: a small `sync` round's, the last one at
    /// shutdown, and any the syncer can no longer take.
    fn sync(&mut self) {
        let us = syncer::fsync(&self.store, &self.sync.poison);
        self.stats.fsync_time.record(us);
        self.unsynced = false;
        self.last_sync = Instant::now();
    }

    /// `batch`'s periodic fsync, on the syncer's thread: the committer does not wait.
    fn sync_in_background(&mut self) {
        self.hand_to_syncer(Vec::new(), true);
        self.unsynced = false;
        self.last_sync = Instant::now();
    }

    /// One group-commit round over `msgs`.
    fn round(
        &mut self,
        msgs: &mut Vec<CommitMsg>,
        shutdown: &mut Option<crossbeam_channel::Sender<()>>,
    ) {
        let now = now_ms();
        let mut batch = self.store.batch_sized(round_bytes(msgs));
        let mut acks: Vec<Answer> = Vec::new();
        let mut delta = Delta::default();
        let mut snapshots = Vec::new();
        let mut round_ids: HashSet<String> = HashSet::default();
        let mut routes = Vec::new();
        let mut jobs_from_ingest: Vec<(usize, Job)> = Vec::new();
        let mut jobs_from_outcomes: Vec<(usize, Job)> = Vec::new();
        // Answered after the round's deliveries are paused: a client that hears a
        // disable answered and enables again is then behind every outcome the
        // worker had reported before it paused.
        let mut enable_replies = Vec::new();
        let mut put_replies = Vec::new();
        let mut outcomes = 0u64;
        // Every producer id of the round looked up at once, in message order.
        let known_ids = {
            let ids: Vec<&[u8]> = msgs
                .iter()
                .filter_map(|m| match m {
                    CommitMsg::Ingest(b) => Some(b.events.iter()),
                    _ => None,
                })
                .flatten()
                .filter_map(|ev| ev.ext_id.as_deref().map(str::as_bytes))
                .collect();
            self.store.idem_get_many(&ids)
        };
        let mut known_ids = known_ids.into_iter();
        for msg in msgs.drain(..) {
            match msg {
                CommitMsg::Ingest(b) => {
                    let mut results = Vec::with_capacity(b.events.len());
                    for ev in b.events {
                        let known = match &ev.ext_id {
                            Some(_) => known_ids.next(),
                            None => None,
                        };
                        if let Some(reason) = self.sync.poison.get() {
                            results.push(AckResult::Unavailable(reason.clone()));
                            continue;
                        }
                        results.push(self.accept(
                            ev,
                            known,
                            now,
                            &mut batch,
                            &mut round_ids,
                            &mut routes,
                            &mut jobs_from_ingest,
                            &mut delta,
                        ));
                        delta.pending += match results.last() {
                            Some(AckResult::Ok { deliveries, .. }) => *deliveries as i64,
                            _ => 0,
                        };
                    }
                    acks.push((b.to, b.sent_at, results));
                }
                CommitMsg::Outcomes(list) => {
                    outcomes += list.len() as u64;
                    for o in list {
                        self.record(o, now, &mut batch, &mut jobs_from_outcomes, &mut delta);
                    }
                }
                CommitMsg::EndpointDisabled { ep, by, detail } => {
                    self.disable_ep(ep, by, detail.as_deref());
                }
                CommitMsg::SetEnabled { ep, enabled, reply } => {
                    // Stored (synced) first, then made: a change the store cannot take is
                    // not made at all (undoing one already told to the worker would leave
                    // the jobs it dropped waiting for a restart).
                    if let Err(e) = self.store_enabled(ep, enabled) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    if enabled {
                        self.enable_ep(ep);
                    } else {
                        self.disable_ep(ep, DisabledBy::Admin, None);
                    }
                    // Answered once the round is done: a disable's worker has dropped its
                    // jobs, and its deliveries are paused or being paused (`start_pauses`).
                    enable_replies.push(reply);
                }
                CommitMsg::Shutdown(reply) => *shutdown = Some(reply),
                CommitMsg::Snapshot(reply) => snapshots.push(reply),
                CommitMsg::PutEndpoint { spec, mode, reply } => {
                    put_replies.push((reply, self.put_endpoint(*spec, mode)));
                }
                CommitMsg::DeleteEndpoint { name, reply } => {
                    let _ = reply.send(self.delete_endpoint(&name));
                }
                CommitMsg::Replay { targets, reply } => {
                    let _ = reply.send(self.replay(targets, now));
                }
                CommitMsg::GivenBack {
                    ep,
                    request,
                    from,
                    count,
                    bytes,
                    kept,
                } => self.given_back(ep, request, from, count, bytes, &kept),
            }
        }
        let dirtied: Vec<EndpointId> = self.dirty.drain().collect();
        for ep in &dirtied {
            if let Some(info) = self.router.eps.get(ep) {
                batch.put_endpoint(&self.store, &info.name, &info.meta);
            }
        }
        // A pause starts with the disable's record, so a restart goes on with it (a
        // scan under way reaches an endpoint disabled now only at a later tick).
        for &ep in self.pausing.keys() {
            batch.pausing(&self.store, ep);
        }
        let mut written = true;
        let mut fsync = false;
        let events = batch.event_count();
        if !batch.is_empty() {
            let has_events = events > 0;
            let started = Instant::now();
            // Not synced yet: under `sync` the fsync comes once the round's deliveries
            // are out (`answer_synced`).
            let result = self.store.commit(batch, false);
            if has_events {
                self.stats
                    .commit_time
                    .record(started.elapsed().as_micros() as u64);
            }
            if let Err(e) = result {
                written = false;
                let lines = acks.iter().map(|(_, _, r)| r.len() as u64).sum();
                self.write_failures.failed(&e, lines, outcomes);
                for (ep, before) in self.first_due_before.drain(..) {
                    if let Some(info) = self.router.eps.get_mut(&ep) {
                        info.meta.first_due_ms = before;
                    }
                }
                // Every answer of the round, the `dup`s too: a repeat of an id first
                // seen in this round names an event that was not written.
                syncer::refuse(&mut acks, &format!("cannot persist: {e}"), true);
                jobs_from_ingest.clear();
                // Retries under keys never written: the delivery keeps its old key, and
                // is made again after a restart (as the failure's log line says). Handed
                // on, its retry chain would run beside that key, and leave it pending.
                jobs_from_outcomes.clear();
                // The endpoint records (a disable and its reason, failure counts) are
                // written with the next round that succeeds.
                self.dirty.extend(dirtied);
            } else {
                self.write_failures.succeeded();
                if has_events {
                    match self.durability {
                        Durability::Sync => fsync = true,
                        _ => self.unsynced = true,
                    }
                }
            }
        }
        self.first_due_before.clear();
        if written {
            self.stats.apply(delta);
        }
        // Deliveries of an endpoint paused this round, or disabled, are in the paused
        // set now (or will be, once a running attempt ends): their jobs go nowhere.
        let paused_now: Vec<EndpointId> = self.pausing.keys().copied().collect();
        if !paused_now.is_empty() {
            self.start_pauses();
            // Also those queued earlier in the round (a replay's, a resume page's): the
            // pause moves their due entries aside (none is in flight yet).
            for queued in &mut self.out_jobs {
                queued.retain(|job| !paused_now.contains(&job.ep));
            }
        }
        for (worker, job) in jobs_from_ingest.into_iter().chain(jobs_from_outcomes) {
            let delivers = self
                .router
                .eps
                .get(&job.ep)
                .is_some_and(|i| self.delivers(i));
            if delivers && !paused_now.contains(&job.ep) {
                self.out_jobs[worker].push(job);
            }
        }
        // Deliveries may start before their events are fsynced: delivery is at-least-once
        // and an event's `ok` still waits for the fsync. A crash of the process loses
        // nothing written (the WAL is in the page cache); only an OS crash before the
        // fsync could deliver an event that was never acked (its producer sends it again:
        // a duplicate, never a loss).
        self.flush_jobs();
        if self.durability == Durability::Sync {
            self.answer_synced(acks, fsync, events);
        } else {
            for a in acks {
                syncer::send_answer(&self.workers, &mut self.stats.acks, a);
            }
        }
        for reply in enable_replies {
            let _ = reply.send(Ok(()));
        }
        for (reply, r) in put_replies {
            let _ = reply.send(r);
        }
        for reply in snapshots {
            let _ = reply.send(self.snapshot());
        }
    }

    /// Under `sync`: answers a round once an fsync covers it. A small round, with the
    /// syncer idle, is fsynced right here — the next round would be small too, and a
    /// producer waiting for its acks gains nothing from overlapping them, only the
    /// hop to another thread. A round of [`PIPELINE_MIN_EVENTS`] or more, or any round
    /// while the syncer still holds earlier ones, goes to the syncer, and the committer
    /// goes on to the next round during the fsync.
    fn answer_synced(&mut self, answers: Vec<Answer>, fsync: bool, events: usize) {
        if answers.is_empty() && !fsync {
            return;
        }
        // Acquire: a syncer that is done has also set the poison, if its fsync failed.
        let idle = self.sync.queue.load(Ordering::Acquire) == 0;
        if idle && events < PIPELINE_MIN_EVENTS {
            self.sync_and_answer(answers, fsync);
        } else {
            self.hand_to_syncer(answers, fsync);
        }
    }

    /// Queues a round (its answers, and whether it needs an fsync) at the syncer, counted
    /// in [`syncer::Shared::queue`] until it is answered.
    fn hand_to_syncer(&mut self, answers: Vec<Answer>, fsync: bool) {
        self.sync.queue.fetch_add(1, Ordering::AcqRel);
        let round = SyncMsg::Round { answers, fsync };
        if let Err(e) = self.syncer.send(round) {
            // The syncer is gone (it only stops at shutdown): do its work here.
            self.sync.queue.fetch_sub(1, Ordering::AcqRel);
            if let SyncMsg::Round { answers, fsync } = e.into_inner() {
                self.sync_and_answer(answers, fsync);
            }
        }
    }

    /// Fsyncs on this thread (if the round wrote events), then answers.
    fn sync_and_answer(&mut self, answers: Vec<Answer>, fsync: bool) {
        if fsync {
            self.sync();
        }
        syncer::release(
            &self.workers,
            &mut self.stats.acks,
            &self.sync.poison,
            answers,
        );
    }

    fn snapshot(&self) -> CommitSnapshot {
        let st = &self.stats;
        let mut s = CommitSnapshot {
            commit_time: st.commit_time.clone(),
            fsync_time: st.fsync_time.clone(),
            pending: st.pending,
            paused: st.paused,
            expired: st.expired,
            endpoints_disabled: self.router.eps.values().filter(|i| !i.enabled).count() as u64,
            kept_back: self.deferred as u64,
            endpoints_slow: self.shares.values().filter(|s| s.slow()).count() as u64,
            backlogs_on_disk: self.on_disk as u64,
            handed_ahead: self.ahead.len() as u64,
            ..CommitSnapshot::default()
        };
        st.acks.add_to(&mut s);
        if let Ok(sync) = self.sync.stats.lock() {
            sync.add_to(&mut s);
        }
        s
    }

    fn flush_jobs(&mut self) {
        (self.out_count, self.out_bytes) = (0, 0);
        for w in 0..self.out_jobs.len() {
            if self.out_jobs[w].is_empty() {
                continue;
            }
            let mut jobs = std::mem::take(&mut self.out_jobs[w]);
            // Whether any may be kept back: only from half the cap on, or behind one
            // kept back already.
            let check = self.deferred > 0
                || self.on_disk > 0
                || self.giving_back > 0
                || 2 * (self.in_memory + jobs.len()) >= self.cap();
            jobs.retain(|job| {
                // Handed ahead of the scan that would bring it (the loader's cursor,
                // or the spill's): never kept back (the scan would pass its key again
                // and keep back a second copy). A scan's own keys are behind it by now.
                let ahead = !self.hand_now(job.due);
                if check && !ahead && self.keeps_back(job.ep, job.due) {
                    self.keep_back(job.due, job.val);
                    return false;
                }
                if ahead {
                    self.ahead.insert(job.due);
                }
                self.in_memory += 1;
                self.in_memory_bytes += job.event.encoded().len();
                let s = self.shares.entry(job.ep).or_default();
                s.held += 1;
                if !ahead {
                    // (One handed ahead is never read back while its worker has it.
                    // Counted, one fresh delivery after a restart would lift the
                    // bound above the endpoint's whole backlog, and none of it could
                    // be left on disk: helper R's review.)
                    s.handed_max = s.handed_max.max(job.due);
                }
                true
            });
            if !jobs.is_empty() {
                self.workers[w].send(WorkerMsg::Jobs(jobs));
            }
        }
    }

    /// `known`: what the idempotency store held for the event's producer id (looked up
    /// for the whole round before it started).
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        ev: NewEvent,
        known: Option<store::Result<Option<Seq>>>,
        now: u64,
        batch: &mut store::Batch,
        round_ids: &mut HashSet<String>,
        routes: &mut Vec<EndpointId>,
        jobs: &mut Vec<(usize, Job)>,
        delta: &mut Delta,
    ) -> AckResult {
        if let Some(id) = &ev.ext_id {
            if round_ids.contains(id) {
                return AckResult::Dup { id: id.clone() };
            }
            let known = known.unwrap_or_else(|| self.store.idem_get(id.as_bytes()));
            match known {
                Ok(Some(seq)) if seq_time_ms(seq) + self.retention_ms > now => {
                    return AckResult::Dup { id: id.clone() };
                }
                Ok(_) => {}
                Err(e) => return AckResult::Unavailable(format!("cannot check id: {e}")),
            }
            round_ids.insert(id.clone());
        }
        let seq = self.next_seq.max(seq_floor(now));
        self.next_seq = seq + 1;
        self.router.route(&ev.etype, ev.account.as_deref(), routes);
        let rec = Arc::new(EventRecord::new(
            seq,
            ev.ext_id.as_deref(),
            &ev.etype,
            ev.account.as_deref(),
            ev.time_ms.unwrap_or(now),
            routes,
            &ev.data,
        ));
        batch.put_event(&self.store, &rec);
        let never = self.never_due_from(seq);
        for &ep in routes.iter() {
            let info = self
                .router
                .eps
                .get_mut(&ep)
                .expect("the router routes to known endpoints");
            let worker = info.worker;
            if (info.ordered && self.resuming.contains(&ep)) || self.scan.pausing(ep) {
                // Its paused deliveries are being given due times in acceptance order
                // (`resume`), a page a tick: this one joins them, behind, and is given
                // its time in the same pass. Due now, it would overtake those that fall
                // due later (a future `time`, a `min_delay`). Held (enabled while its
                // pause is under way, `enable_ep`), it waits with them.
                batch.pause(&self.store, ep, seq, DueVal::NEW);
                delta.paused += 1;
                continue;
            }
            let (due_ms, moved) = info.first_due(rec.time_ms(), now, never);
            if let Some(before) = moved {
                self.dirty.insert(ep);
                if !self.first_due_before.iter().any(|&(e, _)| e == ep) {
                    self.first_due_before.push((ep, before));
                }
            }
            let due = DueKey { due_ms, seq, ep };
            batch.put_due(&self.store, due, DueVal::NEW);
            if due < self.cursor && self.spill.is_none() && self.workers_full(jobs.len()) {
                // Workers hold enough: from the next event on, fresh deliveries wait on
                // disk. This one's routes all go to their workers (some already have):
                // a fence at this event would load those again from disk.
                self.spill = Some(Spill {
                    fence: seq + 1,
                    scan: DueKey {
                        due_ms: now,
                        seq: 0,
                        ep: 0,
                    },
                });
                tracing::debug!(seq, "workers are full: spilling fresh deliveries to disk");
            }
            if self.hand_now(due) || self.hands_ahead(due, now, jobs.len(), HORIZON_MS) {
                jobs.push((
                    worker,
                    Job {
                        event: rec.clone(),
                        ep,
                        due,
                        val: DueVal::NEW,
                    },
                ));
            } else {
                self.left_on_disk(due, now);
            }
        }
        AckResult::Ok {
            id: rec.display_id().into_owned(),
            deliveries: routes.len() as u32,
        }
    }

    fn record(
        &mut self,
        o: Outcome,
        now: u64,
        batch: &mut store::Batch,
        jobs: &mut Vec<(usize, Job)>,
        delta: &mut Delta,
    ) {
        if !self.ahead.is_empty() {
            // Reported: the loader no longer skips its key (a round not written leaves
            // it in `due`, to be made again).
            self.ahead.remove(&o.due);
        }
        if o.handed {
            self.in_memory = self.in_memory.saturating_sub(1);
            self.in_memory_bytes = self.in_memory_bytes.saturating_sub(o.event.encoded().len());
            if let Entry::Occupied(mut s) = self.shares.entry(o.ep) {
                let share = s.get_mut();
                share.held = share.held.saturating_sub(1);
                share.drained += 1;
                // A deleted endpoint's, once nothing of it is held or kept back.
                if share.idle() && !self.router.eps.contains_key(&o.ep) {
                    s.remove();
                }
            }
        }
        // Expired by its worker, or a retry whose event passed retention meanwhile: it
        // is no ordered endpoint's head, and expires below.
        let expires = match o.next {
            Next::Expired => true,
            Next::Retry { .. } => o.event.seq < self.store.retention_floor(),
            _ => false,
        };
        // A retry an ordered endpoint's worker kept may have expired already: its key
        // retired by the loader or the sweep, or never written (the floor passed while
        // the outcome that kept it was on its way). Nothing is left to retire or count.
        let retired =
            expires && !batch.puts_due(o.due) && !self.store.has_due(o.due).unwrap_or(true);
        // Held, the endpoint's worker is not yet told of the enable that reset its
        // counts: those it reports meanwhile are the disabled run's.
        let held = self.scan.pausing(o.ep);
        if let Some(info) = self.router.eps.get_mut(&o.ep) {
            if info.meta.fails != o.fails && !held {
                info.meta.fails = o.fails;
                self.dirty.insert(o.ep);
            }
            if info.ordered {
                let next = if expires { Next::Done } else { o.next };
                let hold = match (next, info.meta.hold) {
                    (Next::Retry { due_ms }, _) => Some((o.event.seq, due_ms, o.attempts)),
                    (Next::Done | Next::Paused, Some((s, _, _))) if s == o.event.seq => None,
                    (_, h) => h,
                };
                let first = if hold.is_some() { o.first } else { 0 };
                if hold != info.meta.hold || first != info.meta.hold_first {
                    info.meta.hold = hold;
                    info.meta.hold_first = first;
                    self.dirty.insert(o.ep);
                }
            }
        }
        let seq = o.event.seq;
        if o.next == Next::Stale || retired {
            return;
        }
        let in_round = o.attempts.saturating_sub(o.first);
        if let Some(a) = &o.attempt {
            batch.put_attempt(&self.store, seq, o.ep, o.attempts, a);
            // The state index follows the delivery.
            if o.first > 0 && in_round == 1 {
                batch.clear_state(&self.store, DeliveryState::Pending, o.ep, seq);
            }
            // `retrying` is not indexed (it churns with every retry); `failed` is.
            if a.state_after == Some(DeliveryState::Failed) {
                batch.set_state(&self.store, DeliveryState::Failed, o.ep, seq);
            }
        }
        batch.del_due(&self.store, o.due);
        let known = self.router.eps.get(&o.ep);
        let enabled = known.is_some_and(|i| self.delivers(i));
        // The endpoint was deleted while this attempt ran, and its deletion failed the
        // delivery already (counted there): an attempt in flight at a disable whose
        // worker did not answer in time is paused too ([`Self::start_pauses`]), and
        // the deletion fails what is paused.
        let failed_by_deletion =
            known.is_none() && self.store.is_failed(o.ep, seq).unwrap_or(false);
        let next = match o.next {
            _ if failed_by_deletion => Next::Stale,
            // The endpoint was deleted while this attempt ran: nothing more to do.
            _ if known.is_none() => Next::Done,
            // Past retention: it expires instead of waiting for another attempt.
            Next::Retry { .. } | Next::Expired if expires => {
                delta.expired += 1;
                Next::Done
            }
            // Disabled meanwhile: the retry waits in the paused set instead.
            Next::Retry { .. } if !enabled => Next::Paused,
            n => n,
        };
        let val = DueVal {
            attempts: o.attempts,
            first: o.first,
        };
        // Only around a disable (rare): whether pausing moved this delivery aside after
        // its outcome was reported, so the paused set and count move exactly.
        let was_paused = (!enabled || next == Next::Paused || self.settling.contains(&o.ep))
            && self.store.is_paused(o.ep, seq).unwrap_or(false);
        // Enabled again before its paused copy was resumed: it is resumed with this
        // attempt counted.
        let next = match next {
            Next::Retry { .. } if was_paused => Next::Paused,
            n => n,
        };
        // Deleted meanwhile and not settled by this outcome: it ends failed.
        let settled = o.attempt.as_ref().is_some_and(|a| {
            matches!(
                a.state_after,
                Some(DeliveryState::Delivered | DeliveryState::Failed)
            )
        });
        if known.is_none() && !settled {
            batch.fail_dropped(&self.store, o.ep, seq);
        }
        // Delivered after all: not failed.
        if failed_by_deletion
            && settled
            && o.attempt.as_ref().and_then(|a| a.state_after) == Some(DeliveryState::Delivered)
        {
            batch.clear_state(&self.store, DeliveryState::Failed, o.ep, seq);
        }
        match next {
            Next::Stale => {}
            Next::Done | Next::Expired => {
                delta.pending -= 1;
                if was_paused {
                    batch.unpause(&self.store, o.ep, seq);
                    delta.paused -= 1;
                }
            }
            Next::Paused => {
                batch.pause(&self.store, o.ep, seq, val);
                delta.paused += !was_paused as i64;
                // Reported while its worker still had the endpoint disabled, recorded
                // after it was enabled: it goes back with the others.
                if enabled && !self.resuming.contains(&o.ep) {
                    self.resuming.push(o.ep);
                }
            }
            Next::Retry { due_ms } => {
                let due = DueKey {
                    due_ms,
                    seq,
                    ep: o.ep,
                };
                batch.put_due(&self.store, due, val);
                if self.hand_now(due) {
                    if let Some(info) = self.router.eps.get(&o.ep) {
                        jobs.push((
                            info.worker,
                            Job {
                                event: o.event,
                                ep: o.ep,
                                due,
                                val,
                            },
                        ));
                    }
                    return;
                }
                // A scan would bring it later. A FIFO endpoint's worker may have it
                // ahead of the scans (an ordered one keeps its head's retry itself; one
                // that was ordered since the start may hold a copy still).
                let fifo = self
                    .router
                    .eps
                    .get(&o.ep)
                    .filter(|i| !i.ordered && !i.holds_retries)
                    .map(|i| i.worker);
                if let Some(worker) = fifo.filter(|_| {
                    self.lags(now) && self.hands_ahead(due, now, jobs.len(), RETRY_AHEAD_MS)
                }) {
                    // Due within [`RETRY_AHEAD_MS`] while the cursor lags, and its
                    // endpoint quiet: as a fresh delivery would, its worker's wheel
                    // holding it until its time. (Not while the cursor keeps up: the
                    // loader brings it at its time.)
                    jobs.push((
                        worker,
                        Job {
                            event: o.event,
                            ep: o.ep,
                            due,
                            val,
                        },
                    ));
                } else {
                    self.left_on_disk(due, now);
                    if self.spill.is_none() {
                        // (While spilling, the workers already hold the most memory
                        // allowed.)
                        self.waiting.keep(o.event, due_ms, self.cursor.due_ms);
                    }
                }
            }
        }
    }

    /// Starts moving every pending delivery of the endpoints disabled this round from
    /// `due` to `paused`, so none waits out an old retry time once its endpoint is
    /// enabled again (a first attempt still keeps its `min_delay`: see `resume`). They
    /// join the scan of the due index under way ([`DueScan`]), or start one, whose first
    /// page is read here: a small index is done within the round, a large one goes on
    /// in the loader's ticks, and a thousand endpoints disabled at once share one scan.
    ///
    /// A delivery whose attempt is in flight keeps its due key: the attempt's outcome
    /// moves it (a retry of a disabled endpoint is paused then), so an enable before
    /// that outcome does not bring back a second copy beside the attempt's own retry.
    /// Each worker's answer says which those are; without one in time, everything is
    /// paused.
    fn start_pauses(&mut self) {
        let fresh = self.scan.members.is_empty();
        // One wait for all of the round's answers: a worker that does not answer in
        // time holds the round once, not once per endpoint it owns.
        let deadline = Instant::now() + IN_FLIGHT_ANSWER;
        for (ep, in_flight) in std::mem::take(&mut self.pausing) {
            let running: HashSet<u64> = match in_flight.recv_deadline(deadline) {
                Ok(seqs) => seqs.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(endpoint = ep, error = %e, "no answer from the worker on attempts in flight; pausing them too");
                    HashSet::default()
                }
            };
            // Enabled again later in the round, it is held until its part of the scan
            // is done ([`Self::enable_ep`]).
            self.scan.join(ep, Sweep::Pause { running });
        }
        // A scan already under way goes on at the next tick: endpoints disabled one
        // round after another do not each cost a page in their round.
        if fresh {
            self.scan_page();
        }
    }

    /// One page of the shared scan ([`DueScan`]), in its own write. `false` when the
    /// store refuses it (a full disk): the scan stays where it was, for the next tick
    /// (a disabled endpoint's dropped jobs wait in `due` meanwhile).
    fn scan_page(&mut self) -> bool {
        let (scan, cursor, ahead) = (&self.scan, self.cursor, &self.ahead);
        let mut delta = Delta::default();
        let page = self
            .store
            .due_where(scan.at, None, SCAN_KEYS, SCAN_MOVES, |k| {
                scan.picks(k, cursor, ahead)
            })
            .and_then(|(page, next)| {
                let mut batch = self.store.batch();
                for &(key, val) in &page {
                    batch.del_due(&self.store, key);
                    match scan.members.get(&key.ep).map(|m| &m.sweep) {
                        Some(Sweep::Pause { .. }) => {
                            batch.pause(&self.store, key.ep, key.seq, val);
                            delta.paused += 1;
                        }
                        _ => {
                            batch.fail_dropped(&self.store, key.ep, key.seq);
                            delta.pending -= 1;
                        }
                    }
                }
                // A pause's marker is written with the disable's record; here too, for
                // one whose round's write failed.
                for (&ep, m) in &scan.members {
                    if !m.marked && matches!(m.sweep, Sweep::Pause { .. }) {
                        batch.pausing(&self.store, ep);
                    }
                }
                for ep in scan.ending(next) {
                    match scan.members.get(&ep).map(|m| &m.sweep) {
                        Some(Sweep::Drop { .. }) => batch.deleted(&self.store, ep),
                        _ => batch.paused_all(&self.store, ep),
                    }
                }
                self.store.commit(batch, false)?;
                Ok((page, next))
            });
        let (page, next) = match page {
            Ok(p) => p,
            Err(e) => {
                if let Some(failures) = self.scan_failures.note(Duration::from_secs(10)) {
                    tracing::error!(
                        error = %e,
                        failures,
                        endpoints = self.scan.members.len(),
                        "cannot pause the deliveries of disabled endpoints or fail those of \
                         deleted ones: tried again each tick"
                    );
                }
                return false;
            }
        };
        self.stats.apply(delta);
        if !self.ahead.is_empty() {
            // Paused: their worker dropped them at the disable.
            for (k, _) in &page {
                self.ahead.remove(k);
            }
        }
        for m in self.scan.members.values_mut() {
            m.marked = true;
        }
        for (ep, m) in self.scan.advance(&page, next) {
            match m.sweep {
                Sweep::Pause { running } => {
                    tracing::info!(
                        endpoint = %self.router.name_of(ep),
                        id = ep,
                        moved = m.moved,
                        in_flight = running.len(),
                        "paused the deliveries of a disabled endpoint"
                    );
                    // Enabled while its pause was under way: held until now.
                    if let Some(info) = self.router.eps.get(&ep).filter(|i| i.enabled) {
                        tracing::info!(
                            endpoint = %info.name,
                            id = ep,
                            "the pause of an endpoint enabled meanwhile is done: it resumes"
                        );
                        self.start_resume(ep);
                    }
                }
                Sweep::Drop { failed } => deleted_done(ep, failed + m.moved),
            }
        }
        true
    }

    /// Pages of the shared scan for up to [`SCAN_BUDGET`] (a page at least) while one is
    /// under way.
    fn scan_pages(&mut self) {
        let until = Instant::now() + SCAN_BUDGET;
        while !self.scan.members.is_empty() && self.scan_page() && Instant::now() < until {}
    }

    /// Ends at a start the pauses of endpoints enabled again (`eps`) with one scan of
    /// the whole due index, before their paused sets resume (nothing is in flight, and
    /// nothing waits on the start but the first ack). While running, an enabled
    /// endpoint is held until the shared scan is done with it instead
    /// ([`Self::enable_ep`]), and a deletion waits for it ([`Self::delete_endpoint`]): a
    /// scan of its own in the call held ingest 0.2–1 s per call in a mass pause.
    /// Refused by the store (a full disk), the pauses are left: the deliveries still in
    /// `due` keep their times, and the markers stay for the next start.
    fn finish_pauses_at_start(&mut self, eps: &HashSet<EndpointId>) {
        if eps.is_empty() {
            return;
        }
        let mut moved = 0;
        let result = self
            .store
            .pause_due(|k| eps.contains(&k.ep), &mut moved)
            .and_then(|()| {
                let mut batch = self.store.batch();
                for &ep in eps {
                    batch.paused_all(&self.store, ep);
                }
                self.store.commit(batch, false)
            });
        self.stats.paused += moved;
        match result {
            Ok(()) => tracing::info!(
                endpoints = eps.len(),
                moved,
                "paused the deliveries of endpoints enabled again before their pause was done"
            ),
            Err(e) => tracing::error!(
                endpoints = eps.len(),
                error = %e,
                "cannot end the pauses of endpoints enabled again: their deliveries still in \
                 `due` keep their times"
            ),
        }
    }

    /// Moves paused deliveries of resumed endpoints back to `due` (a page per endpoint
    /// and tick at most, as workers have room and for [`SCAN_BUDGET`]), in acceptance
    /// order: a retry is due now, a delivery not yet attempted when it would
    /// have been (event time + `min_delay`, SPEC §2: no attempt before it).
    fn resume(&mut self) {
        let now = now_ms();
        let mut still = Vec::new();
        // Endpoints not reached for want of room: first at the next tick.
        let mut not_reached = Vec::new();
        // The room workers have, shared out: the first endpoints' pages must not take
        // it all while the others (each draining at its own pace) get nothing.
        let fair = (self.cap().saturating_sub(self.in_memory) / self.resuming.len().max(1))
            .max(RESUME_PAGE_MIN);
        // A page or more a tick, while [`SCAN_BUDGET`] lasts: a hundred endpoints
        // enabled at once with 3,000 paused each held a tick ~100 ms.
        let until = Instant::now() + SCAN_BUDGET;
        for ep in std::mem::take(&mut self.resuming) {
            let Some((worker, ordered)) = self
                .router
                .eps
                .get(&ep)
                .filter(|i| self.delivers(i))
                .map(|i| (i.worker, i.ordered))
            else {
                self.settling.remove(&ep);
                continue;
            };
            // A page's retries are due now and go to the worker at once: only while
            // workers have room for it. Enabling many endpoints with large paused sets
            // took worker memory far past the cap (100 endpoints at `max_rps = 5` with
            // 5,000 paused each: 177,620 deliveries in memory against 50,000, within
            // 10 s). The rest wait paused, on disk.
            let room = self
                .cap()
                .saturating_sub(self.in_memory + self.out_count)
                .min(fair)
                .min(PAGE);
            // (No room is `workers_full`'s count; it also counts bytes and kept-back keys.)
            if self.workers_full(0) || Instant::now() >= until {
                not_reached.push(ep);
                continue;
            }
            let page = match self.store.paused_of(ep, 0, room) {
                Ok(p) => p,
                Err(e) => {
                    loader_failed(&self.loader_failures, "cannot read paused deliveries", &e);
                    still.push(ep);
                    continue;
                }
            };
            if page.is_empty() {
                self.resumed(ep);
                continue;
            }
            let mut batch = self.store.batch();
            let mut below_cursor = Vec::new();
            // An ordered endpoint's keys a scan is to bring: its fresh deliveries do not
            // go before them ([`Share::disk_max`]).
            let mut left_for_scan = Vec::new();
            let mut first_due_before = None;
            let mut events = self.store.event_reader();
            for &(seq, val) in &page {
                let mut event = None;
                let mut due_ms = now;
                if val.attempts == 0 {
                    match events.get(seq) {
                        Ok(Some(e)) => {
                            let never = self.never_due_from(seq);
                            let info = self.router.eps.get_mut(&ep).expect("looked up above");
                            let moved;
                            (due_ms, moved) = info.first_due(e.time_ms(), now, never);
                            if first_due_before.is_none() {
                                first_due_before = moved;
                            }
                            event = Some(e);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            loader_failed(&self.loader_failures, "cannot read a paused event", &e)
                        }
                    }
                }
                let due = DueKey { due_ms, seq, ep };
                batch.unpause(&self.store, ep, seq);
                batch.put_due(&self.store, due, val);
                if self.hand_now(due) {
                    below_cursor.push((due, val, event));
                } else if ordered {
                    left_for_scan.push(due);
                }
            }
            drop(events);
            let info = self.router.eps.get_mut(&ep).expect("looked up above");
            if first_due_before.is_some() {
                batch.put_endpoint(&self.store, &info.name, &info.meta);
            }
            if let Err(e) = self.store.commit(batch, false) {
                loader_failed(&self.loader_failures, "cannot resume paused deliveries", &e);
                if let Some(before) = first_due_before {
                    info.meta.first_due_ms = before;
                }
                still.push(ep);
                continue;
            }
            self.stats.apply(Delta {
                paused: -(page.len() as i64),
                ..Delta::default()
            });
            for due in left_for_scan {
                self.left_on_disk(due, now);
            }
            // Keys below the cursor are never loaded: hand them over now, or keep them
            // back (their events are read when handed over) once workers hold as much
            // as they may: large events fill the byte bound before the count.
            for (due, val, event) in below_cursor {
                if self.memory_full(0) {
                    self.keep_back(due, val);
                    continue;
                }
                let event = match event {
                    Some(e) => Ok(Some(e)),
                    None => self.store.event(due.seq),
                };
                match event {
                    Ok(Some(e)) => self.out_jobs[worker].push(Job {
                        event: Arc::new(e),
                        ep,
                        due,
                        val,
                    }),
                    Ok(None) => {}
                    Err(e) => {
                        loader_failed(&self.loader_failures, "cannot read a resumed event", &e)
                    }
                }
            }
            self.flush_jobs();
            if page.len() == room {
                still.push(ep);
            } else {
                self.resumed(ep);
            }
        }
        not_reached.extend(still);
        self.resuming = not_reached;
    }

    /// Every paused delivery of `ep` is handed over (or due in the store): an ordered
    /// endpoint's new deliveries are given due times as they come again.
    fn resumed(&mut self, ep: EndpointId) {
        self.settling.remove(&ep);
    }

    /// Writes an endpoint's record as an enable or a disable over the API makes it, synced,
    /// before the change is made ([`Self::enable_ep`], [`Self::disable_ep`] then make the
    /// same record): an answered change survives a crash, and one the store cannot
    /// take is not made.
    fn store_enabled(&mut self, ep: EndpointId, enabled: bool) -> Result<(), String> {
        let Some(info) = self.router.eps.get(&ep) else {
            return Ok(()); // deleted meanwhile: nothing left to keep
        };
        let mut meta = info.meta.clone();
        match (enabled, info.enabled) {
            (true, true) => return Ok(()), // enabling an enabled endpoint changes nothing
            (true, false) => enabled_afresh(&mut meta),
            (false, _) => meta.disable(DisabledBy::Admin),
        }
        let mut batch = self.store.batch();
        batch.put_endpoint(&self.store, &info.name, &meta);
        if !enabled && info.enabled {
            // Its pause starts with the answer: a restart right after it goes on with it.
            batch.pausing(&self.store, ep);
        }
        self.store.commit(batch, true).map_err(|e| e.to_string())
    }

    /// Disables an endpoint (`detail` as in [`CommitMsg::EndpointDisabled`]). If it was
    /// enabled, its worker is told, and its deliveries are paused at the end of the
    /// round. Disabling a disabled endpoint only updates why.
    fn disable_ep(&mut self, ep: EndpointId, by: DisabledBy, detail: Option<&str>) {
        let Some(info) = self.router.eps.get_mut(&ep) else {
            return;
        };
        if info.enabled {
            let (tx, rx) = crossbeam_channel::bounded(1);
            self.workers[info.worker].send(WorkerMsg::SetEnabled {
                ep,
                enabled: false,
                in_flight: Some(tx),
            });
            self.pausing.insert(ep, rx);
            // Its keys kept back are in `due` still: the pause moves them with the rest,
            // and those its worker gives back (the answer then only counts them).
            if let Some(s) = self.shares.get_mut(&ep) {
                self.deferred -= s.deferred.len();
                s.deferred.clear();
                if s.on_disk_from.take().is_some() {
                    self.on_disk -= 1;
                }
                if s.giving_back.take().is_some() {
                    self.giving_back -= 1;
                }
            }
        }
        info.enabled = false;
        match detail {
            Some(d) => info.meta.disable_because(by, d),
            None => info.meta.disable(by),
        }
        self.dirty.insert(ep);
    }

    /// Enables an endpoint; its paused deliveries resume in order. Enabling an enabled
    /// endpoint changes nothing: telling its worker would drop the retries it holds
    /// (they belong to the old generation) with nothing paused to bring them back.
    ///
    /// One whose pause is still under way (disabled in this round, or its part of a
    /// shared scan not done) is held: routed again, but its deliveries wait paused, the
    /// new ones with them, as a disabled endpoint's do ([`Self::delivers`]), until the
    /// scan is done with it and it resumes ([`Self::scan_page`]). Its worker is told
    /// then: it holds nothing of it meanwhile, so no scan page can move a delivery a
    /// worker has.
    fn enable_ep(&mut self, ep: EndpointId) {
        let Some(info) = self.router.eps.get_mut(&ep) else {
            return;
        };
        if info.enabled {
            return;
        }
        info.enabled = true;
        enabled_afresh(&mut info.meta);
        self.dirty.insert(ep);
        if self.scan.pausing(ep) || self.pausing.contains_key(&ep) {
            tracing::info!(
                endpoint = %info.name,
                id = ep,
                "endpoint enabled while its pause is under way: held, paused, until it is done"
            );
            return;
        }
        self.start_resume(ep);
    }

    /// Tells an enabled endpoint's worker, and resumes its paused deliveries.
    fn start_resume(&mut self, ep: EndpointId) {
        let Some(info) = self.router.eps.get(&ep) else {
            return;
        };
        self.workers[info.worker].send(WorkerMsg::SetEnabled {
            ep,
            enabled: true,
            in_flight: None,
        });
        // Events accepted from now on join the paused ones (see `accept`).
        if !self.resuming.contains(&ep) {
            self.resuming.push(ep);
        }
        self.settling.insert(ep);
    }

    /// Whether `info`'s deliveries go to its worker: it is enabled, and not held
    /// ([`Self::enable_ep`]).
    fn delivers(&self, info: &RouteInfo) -> bool {
        info.enabled && !self.scan.pausing(info.id)
    }

    /// Creates or replaces an endpoint: persisted (synced), then the router, the
    /// registry and the owning worker follow. Queued deliveries stay where they are; the
    /// worker uses the new spec from the next attempt on.
    fn put_endpoint(
        &mut self,
        mut spec: EndpointSpec,
        mode: PutMode,
    ) -> Result<(EndpointId, EndpointMeta), EndpointOpError> {
        let name = spec.cfg.name.clone();
        let existing = self.router.by_name(&name).map(|i| (i.id, i.meta.clone()));
        let (id, mut meta) = match (mode, existing) {
            (PutMode::Create, Some(_)) => return Err(EndpointOpError::Exists(name)),
            (PutMode::Replace, None) => return Err(EndpointOpError::NotFound(name)),
            (_, Some(e)) => e,
            (_, None) if self.router.eps.len() >= store::MAX_ROUTES => {
                return Err(EndpointOpError::TooMany(store::MAX_ROUTES))
            }
            (_, None) => {
                let id = self.next_ep_id;
                self.next_ep_id += 1;
                (
                    id,
                    EndpointMeta {
                        id,
                        ..EndpointMeta::default()
                    },
                )
            }
        };
        spec.id = id;
        meta.id = id;
        meta.source = EndpointSource::Api;
        let was_enabled = !meta.is_disabled();
        // `enabled = false` disables; `true` lifts only a disable it caused.
        // A definition that compiles replaces one that did not: it decides alone.
        if meta.disabled_by() == Some(DisabledBy::NotCompiling) {
            meta.enable();
        }
        match (spec.cfg.enabled, meta.disabled_by()) {
            (false, None) => meta.disable(DisabledBy::Definition),
            (true, Some(DisabledBy::Definition | DisabledBy::Config)) => meta.enable(),
            _ => {}
        }
        if !spec.cfg.ordered {
            meta.hold = None;
            meta.hold_first = 0;
        }
        let mut batch = self.store.batch();
        batch.put_endpoint(&self.store, &name, &meta);
        batch.put_endpoint_config(&self.store, id, &name, &spec.cfg);
        self.store
            .commit(batch, true)
            .map_err(|e| EndpointOpError::Store(e.to_string()))?;
        let worker = crate::shard::worker_for(&name, self.workers.len());
        let created = !self.router.eps.contains_key(&id);
        let made_ordered = spec.cfg.ordered && self.router.eps.get(&id).is_some_and(|i| !i.ordered);
        let now_enabled = !meta.is_disabled();
        // A replaced endpoint changes state below, through the usual paths.
        let (enabled, route_meta, held) = if created {
            (now_enabled, meta.clone(), false)
        } else {
            let old = &self.router.eps[&id];
            (old.enabled, old.meta.clone(), old.holds_retries)
        };
        self.router.insert(RouteInfo {
            id,
            name: name.clone(),
            worker,
            events: spec.cfg.events.clone(),
            account: spec.cfg.account.clone(),
            min_delay_ms: spec.cfg.min_delay.as_millis() as u64,
            enabled,
            ordered: spec.cfg.ordered,
            holds_retries: spec.cfg.ordered || held,
            meta: EndpointMeta {
                source: EndpointSource::Api,
                hold: meta.hold,
                ..route_meta
            },
        });
        let spec = Arc::new(spec);
        if let Ok(mut reg) = self.registry.write() {
            reg.insert(name.clone(), spec.clone());
        }
        self.workers[worker].send(WorkerMsg::Upsert {
            spec,
            meta: meta.clone(),
        });
        let now = now_ms();
        if made_ordered && self.lags(now) {
            // Made ordered while the scans lag: which of its deliveries wait for them is
            // not known (those resumed or replayed while it was FIFO, or from before the
            // start are not counted for a FIFO endpoint), so its fresh ones wait for the
            // scans to reach the present (helper R's review, session 46: a fresh one went
            // before the replay of an older event scheduled before the `PUT`).
            let until = DueKey {
                due_ms: now.saturating_add(HORIZON_MS),
                seq: Seq::MAX,
                ep: id,
            };
            let (cursor, spill) = (self.cursor, self.spill);
            self.shares
                .entry(id)
                .or_default()
                .note_left_on_disk(until, cursor, spill);
        }
        if !created && was_enabled && !now_enabled {
            // Only `enabled = false` disables here, and its words are the whole reason.
            let by = meta.disabled_by().unwrap_or(DisabledBy::Definition);
            self.disable_ep(id, by, None);
        } else if !created && !was_enabled && now_enabled {
            self.enable_ep(id);
        }
        tracing::info!(endpoint = %name, id, created, "endpoint applied");
        Ok((id, meta))
    }

    /// Deletes an endpoint: no new deliveries route to it, its worker drops its queue,
    /// and every delivery still pending ends `failed` (nothing can deliver it): the
    /// paused ones and those waiting on disk in pages from this write on
    /// ([`Dropping`]), those a worker holds when it hands them back, and those in
    /// spilled pages as the loader reaches them (for an endpoint that was `ordered` at
    /// some time since the start, those on disk too). It runs first in its round
    /// ([`split_before_delete`]): the store it scans holds everything before.
    fn delete_endpoint(&mut self, name: &str) -> Result<EndpointId, EndpointOpError> {
        let Some((id, worker)) = self.router.by_name(name).map(|i| (i.id, i.worker)) else {
            return Err(EndpointOpError::NotFound(name.to_string()));
        };
        let store_err = |e: store::StoreError| EndpointOpError::Store(e.to_string());
        // A pause under way goes on first: the jobs its worker dropped at the disable
        // wait below the cursor, where the deletion's scan does not look, and the pause
        // moves them to the paused set the deletion then fails ([`Self::drop_deleted`]).
        let pausing = self.scan.pausing(id);
        // Those on disk only (at or beyond the cursor): no worker holds these. Except
        // where an endpoint ordered at some time since the start keeps its head's retry
        // (which its worker reports when it drops its queue): those wait for the loader.
        let holds_retries = self.router.eps.get(&id).is_some_and(|i| i.holds_retries);
        let mut dropping = Dropping::new(id, !holds_retries);
        let mut batch = self.store.batch();
        let mut delta = Delta::default();
        batch.delete_endpoint(&self.store, name, id);
        // The first page in the deletion's own write: a small backlog is done with it.
        if !pausing {
            self.drop_page(&mut dropping, &mut batch, &mut delta)
                .map_err(store_err)?;
        }
        self.store.commit(batch, true).map_err(store_err)?;
        self.stats.apply(delta);
        self.router.remove(id);
        if self.shares.get(&id).is_some_and(Share::idle) {
            self.shares.remove(&id);
        }
        self.dirty.remove(&id);
        self.resuming.retain(|e| *e != id);
        self.settling.remove(&id);
        self.pausing.remove(&id);
        if let Ok(mut reg) = self.registry.write() {
            reg.remove(name);
        }
        self.workers[worker].send(WorkerMsg::Remove { ep: id });
        tracing::info!(endpoint = %name, id, "endpoint deleted");
        let fresh = self.scan.members.is_empty();
        self.dropped(dropping);
        // A small backlog is done within the call.
        if fresh && !self.scan.members.is_empty() {
            self.scan_page();
        }
        Ok(id)
    }

    /// One page of a deletion's paused set: fails, in `batch`, up to [`DROP_SCAN`] of
    /// its paused deliveries. Ends the deletion in `batch` when the set is empty and
    /// the scan has nothing to do for it.
    fn drop_page(
        &self,
        d: &mut Dropping,
        batch: &mut store::Batch,
        delta: &mut Delta,
    ) -> store::Result<()> {
        if let Some(from) = d.paused_from {
            let page = self.store.paused_of(d.ep, from, DROP_SCAN)?;
            for &(seq, _) in &page {
                batch.unpause(&self.store, d.ep, seq);
                batch.fail_dropped(&self.store, d.ep, seq);
            }
            let n = page.len() as i64;
            (delta.pending, delta.paused) = (delta.pending - n, delta.paused - n);
            d.failed += n as u64;
            d.paused_from = match page.last() {
                Some(&(seq, _)) if page.len() == DROP_SCAN => Some(seq + 1),
                _ => None,
            };
        }
        if d.paused_from.is_none() && !d.scan_due {
            batch.deleted(&self.store, d.ep);
        }
        Ok(())
    }

    /// Keeps a deletion for the next tick while its paused set is not empty; then hands
    /// it to the shared scan, or logs it done.
    fn dropped(&mut self, d: Dropping) {
        if d.paused_from.is_some() {
            self.dropping.push(d);
        } else if d.scan_due {
            self.scan.join(d.ep, Sweep::Drop { failed: d.failed });
        } else {
            deleted_done(d.ep, d.failed);
        }
    }

    /// A page of the paused sets of deletions under way ([`Dropping`]), each in its own
    /// write, for up to [`SCAN_BUDGET`] (the rest go first at the next tick); one whose
    /// write fails stays where it was, for the next tick.
    fn drop_deleted(&mut self) {
        let until = Instant::now() + SCAN_BUDGET;
        let mut queue = std::mem::take(&mut self.dropping).into_iter();
        let mut waiting = Vec::new();
        for d in queue.by_ref() {
            if self.scan.pausing(d.ep) {
                // Deleted while its pause was under way: that goes on first.
                waiting.push(d);
                continue;
            }
            let mut next = d;
            let mut batch = self.store.batch();
            let mut delta = Delta::default();
            let result = self
                .drop_page(&mut next, &mut batch, &mut delta)
                .and_then(|()| self.store.commit(batch, false));
            match result {
                Ok(()) => {
                    self.stats.apply(delta);
                    self.dropped(next);
                }
                Err(e) => {
                    tracing::error!(error = %e, id = d.ep, "cannot fail a deleted endpoint's deliveries; trying again");
                    self.dropping.push(d);
                }
            }
            if Instant::now() >= until {
                break;
            }
        }
        // Those not reached go first next time.
        let rest: Vec<Dropping> = waiting.into_iter().chain(queue).collect();
        self.dropping.splice(0..0, rest);
    }

    /// Schedules deliveries again, now. A done one (delivered, failed or expired) gets a
    /// new round of attempts with the retry schedule afresh; a retrying one whose retry
    /// waits on disk ([`Self::retry_on_disk`]) has it moved to now, its schedule going
    /// on. Pending and paused ones, a retry a worker holds, and an ordered endpoint's
    /// retrying head are left as they are. Attempts continue in the same log.
    fn replay(&mut self, targets: Vec<(Seq, Option<EndpointId>)>, now: u64) -> Vec<ReplayResult> {
        let mut batch = self.store.batch();
        let mut results = Vec::with_capacity(targets.len());
        let mut jobs = Vec::new();
        let mut delta = Delta::default();
        // Events already rewritten in this batch (a new route), by seq.
        let mut touched: HashMap<Seq, EventRecord> = HashMap::default();
        // An ordered endpoint's replayed deliveries left for a scan to bring: its fresh
        // ones do not go before them ([`Share::disk_max`]).
        let mut on_disk = Vec::new();
        for (seq, only) in targets {
            let ev = match touched.remove(&seq) {
                Some(e) => Some(e),
                None => match self.store.event(seq) {
                    Ok(e) => e,
                    Err(e) => {
                        results.push(ReplayResult::Failed(e.to_string()));
                        continue;
                    }
                },
            };
            let Some(mut ev) = ev else {
                results.push(ReplayResult::NoEvent);
                continue;
            };
            let views = match self.store.deliveries(&ev) {
                Ok(v) => v,
                Err(e) => {
                    results.push(ReplayResult::Failed(e.to_string()));
                    continue;
                }
            };
            let wanted: Vec<EndpointId> = match only {
                Some(ep) => vec![ep],
                None => ev.routes().collect(),
            };
            let mut scheduled = Vec::new();
            for ep in wanted {
                let Some(info) = self.router.eps.get(&ep) else {
                    continue;
                };
                let attempts = match views.iter().find(|v| v.ep == ep) {
                    Some(v) => match v.state {
                        DeliveryState::Delivered
                        | DeliveryState::Failed
                        | DeliveryState::Expired => v.attempts,
                        DeliveryState::Retrying if self.delivers(info) && !info.holds_retries => {
                            // Its retry now, where it waits on disk only; one a worker
                            // holds (due within the loader's horizon, or in flight) is
                            // left alone, as is an ordered endpoint's held head.
                            let Some((old, val)) = self.retry_on_disk(seq, ep, v.attempts) else {
                                continue;
                            };
                            batch.del_due(&self.store, old);
                            let due = DueKey {
                                due_ms: now,
                                seq,
                                ep,
                            };
                            self.put_due_now(&mut batch, &mut jobs, info.worker, due, val);
                            scheduled.push(ep);
                            continue;
                        }
                        _ => continue,
                    },
                    None if ev.has_route(ep) => continue,
                    // The record holds no more routes (it has deleted endpoints' too):
                    // not replayed to this one.
                    None if ev.routes().len() >= store::MAX_ROUTES => continue,
                    None => {
                        ev = ev.with_route(ep);
                        batch.add_route(&self.store, &ev, ep);
                        0
                    }
                };
                let val = DueVal {
                    attempts,
                    first: attempts,
                };
                batch.clear_state(&self.store, DeliveryState::Failed, ep, seq);
                batch.clear_state(&self.store, DeliveryState::Expired, ep, seq);
                if attempts > 0 {
                    batch.set_state(&self.store, DeliveryState::Pending, ep, seq);
                }
                delta.pending += 1;
                if self.delivers(info) {
                    let due = DueKey {
                        due_ms: now,
                        seq,
                        ep,
                    };
                    if !self.put_due_now(&mut batch, &mut jobs, info.worker, due, val)
                        && info.ordered
                    {
                        on_disk.push(due);
                    }
                } else {
                    batch.pause(&self.store, ep, seq, val);
                    delta.paused += 1;
                }
                scheduled.push(ep);
            }
            results.push(if scheduled.is_empty() {
                ReplayResult::Busy
            } else {
                ReplayResult::Scheduled(scheduled)
            });
            touched.insert(seq, ev);
        }
        if batch.is_empty() {
            return results;
        }
        if let Err(e) = self.store.commit(batch, true) {
            let msg = e.to_string();
            return results
                .into_iter()
                .map(|r| match r {
                    ReplayResult::Scheduled(_) => ReplayResult::Failed(msg.clone()),
                    r => r,
                })
                .collect();
        }
        self.stats.apply(delta);
        for due in on_disk {
            self.left_on_disk(due, now);
        }
        // One shared record per event, however many of its deliveries go out.
        let events: HashMap<Seq, Arc<EventRecord>> =
            touched.into_iter().map(|(s, e)| (s, Arc::new(e))).collect();
        for (worker, ep, due, val) in jobs {
            if let Some(ev) = events.get(&due.seq) {
                self.out_jobs[worker].push(Job {
                    event: ev.clone(),
                    ep,
                    due,
                    val,
                });
            }
        }
        results
    }

    /// Moves the retention floor to `now - retention`: events and attempts below it are
    /// range-deleted, paused deliveries below it expire (due ones expire as the loader
    /// reaches them), and compactions drop index and idempotency entries below it.
    fn retention(&mut self) {
        let cutoff = now_ms().saturating_sub(self.retention_ms);
        let floor = seq_floor(cutoff);
        if floor <= self.store.retention_floor() {
            return;
        }
        self.store.set_retention_floor(floor);
        if self.sweep.is_none() {
            self.sweep = Some(DueKey::MIN);
        }
        let mut batch = self.store.batch();
        match self.store.has_before(floor) {
            Ok(true) => batch.delete_before(&self.store, floor),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "retention cannot read the log"),
        }
        let mut expired = 0u64;
        let eps: Vec<EndpointId> = self.router.eps.keys().copied().collect();
        for ep in eps {
            let mut after = 0;
            loop {
                let page = match self.store.paused_of(ep, after, PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "retention cannot read paused deliveries");
                        break;
                    }
                };
                let full = page.len() == PAGE;
                let mut more = full;
                for &(seq, _) in &page {
                    if seq >= floor {
                        more = false;
                        break;
                    }
                    batch.unpause(&self.store, ep, seq);
                    expired += 1;
                    after = seq + 1;
                }
                if !more {
                    break;
                }
            }
        }
        if let Err(e) = self.store.commit(batch, false) {
            // At most every interval (under a full disk a short retention failed every
            // 128 ms), with how many failed since.
            if let Some(failures) = self.retention_failures.note(WRITE_FAILURE_LOG_EVERY) {
                tracing::error!(error = %e, failures, "retention delete failed");
            }
            return;
        }
        if let Err(e) = self.store.drop_files_before(floor) {
            tracing::warn!(error = %e, "retention cannot drop old files");
        }
        self.stats.apply(Delta {
            pending: -(expired as i64),
            paused: -(expired as i64),
            expired,
        });
        if expired > 0 {
            tracing::info!(expired, "paused deliveries past retention expired");
        }
    }

    fn send_holds(&mut self) {
        // (worker, due key, value) of every enabled ordered endpoint's held head.
        let holds: Vec<(usize, DueKey, DueVal)> = self
            .router
            .eps
            .values()
            .filter(|i| i.ordered && i.enabled)
            .filter_map(|i| {
                let (seq, due_ms, attempts) = i.meta.hold?;
                let first = i.meta.hold_first;
                Some((
                    i.worker,
                    DueKey {
                        due_ms,
                        seq,
                        ep: i.id,
                    },
                    DueVal { attempts, first },
                ))
            })
            .collect();
        for (worker, due, val) in holds {
            // A head whose due entry is gone is no longer waiting (delivered, failed or
            // expired since it was recorded): sending it would repeat it.
            match self.store.has_due(due) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read an ordered endpoint's head");
                    continue;
                }
            }
            match self.store.event(due.seq) {
                Ok(Some(e)) => {
                    // Remembered in `ahead` if at or above the cursor.
                    self.out_jobs[worker].push(Job {
                        event: Arc::new(e),
                        ep: due.ep,
                        due,
                        val,
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot read an ordered endpoint's head"),
            }
        }
        self.flush_jobs();
    }

    /// Writes a replayed delivery's `due` entry, and queues it for its worker when no
    /// scan will pick it up ([`Self::hand_now`]); whether it did.
    fn put_due_now(
        &self,
        batch: &mut store::Batch,
        jobs: &mut Vec<(usize, EndpointId, DueKey, DueVal)>,
        worker: usize,
        due: DueKey,
        val: DueVal,
    ) -> bool {
        batch.put_due(&self.store, due, val);
        let handed = self.hand_now(due);
        if handed {
            jobs.push((worker, due.ep, due, val));
        }
        handed
    }

    /// The due entry of delivery (`seq`, `ep`) waiting for its retry after attempt
    /// `attempts`, if it is on disk only (at or above the loader's cursor): the key its
    /// last attempt scheduled. `None` when that attempt did not leave it retrying there
    /// (a worker holds it, or an enable moved it to now).
    fn retry_on_disk(&self, seq: Seq, ep: EndpointId, attempts: u16) -> Option<(DueKey, DueVal)> {
        let last = self
            .store
            .attempts(seq)
            .ok()?
            .into_iter()
            .find(|(e, n, _)| *e == ep && *n == attempts)?
            .2;
        if last.state_after != Some(DeliveryState::Retrying) || last.next_due_ms == 0 {
            return None;
        }
        let key = DueKey {
            due_ms: last.next_due_ms,
            seq,
            ep,
        };
        // A worker holds it: a scan brought it (below the cursor, and not in the spilled
        // range still to load), or it went ahead of them.
        if self.hand_now(key) || self.ahead.contains(&key) {
            return None;
        }
        let found = self
            .store
            .due_range(key, key.due_ms.saturating_add(1), 1)
            .ok()?;
        found.into_iter().next().filter(|(k, _)| *k == key)
    }

    /// Whether the loader's cursor lags behind `now` (workers hold the cap, backlogs
    /// after a restart) or fresh deliveries spill: a key due now waits behind the rest.
    fn lags(&self, now: u64) -> bool {
        self.spill.is_some() || self.cursor.due_ms < now
    }

    /// Whether a delivery written under `k` must go to its worker now because no scan
    /// will pick it up: below the cursor, and not in the spilled range.
    fn hand_now(&self, k: DueKey) -> bool {
        scans_passed(k, self.cursor, self.spill)
    }

    /// Whether a delivery written under `due`, which a scan would bring later (at or
    /// above the loader's cursor, or in the spilled range), goes to its worker now all
    /// the same (`round_jobs` already queued this round; a retry only a FIFO one's): it
    /// is due within
    /// `within_ms` (the loader's horizon for a fresh one, [`RETRY_AHEAD_MS`] for a
    /// retry, which the caller hands over only while the cursor lags), so the cursor
    /// lags behind now (workers hold the cap: backlogs loaded after
    /// a restart, an overload) or fresh deliveries spill, and its endpoint is quiet — it
    /// holds fewer than [`AHEAD_HELD`] in worker memory and no more than it drained in
    /// its last second (if it held some all through it: many endpoints at a low
    /// `max_rps`, each holding a few, are not quiet; with the spill, 8,192 of theirs went
    /// ahead at once), keeps nothing back, on disk or being given back, and has written
    /// none of its deliveries for a scan to bring that the scan has not brought yet
    /// ([`Share::disk_max`]: under an overload of many endpoints each holding a few,
    /// their fresh deliveries would go before their own older ones; of a backlog from
    /// before a restart, only an `ordered` endpoint's counts, [`Pending::ordered_backlog`]:
    /// its queue takes its deliveries in acceptance order as they come, so one handed
    /// over ahead of an older one still on disk would go first; its head's retry, which
    /// its worker keeps, holds a fresh one back there). Left for the cursor, it waited
    /// behind every
    /// other endpoint's backlog: after a restart with eight endpoints' backlogs of 10,000
    /// draining, a quiet endpoint's fresh deliveries waited for 30,000 of them; left for
    /// the spill, behind every delivery spilled before it (a burst of 40,000 over ten
    /// endpoints held a trickle to others 2.7 s: helper A, session 43). At most
    /// [`MAX_AHEAD`] at a time, and within the bytes workers may hold. The scans skip it
    /// when they pass ([`Self::ahead`]).
    fn hands_ahead(&self, due: DueKey, now: u64, round_jobs: usize, within_ms: u64) -> bool {
        !self.hand_now(due)
            && due.due_ms <= now.saturating_add(within_ms)
            && self.ahead.len() + round_jobs < MAX_AHEAD
            && self.in_memory_bytes + self.out_bytes < MAX_IN_MEMORY_BYTES
            && self.shares.get(&due.ep).is_none_or(|s| {
                s.held < AHEAD_HELD
                    && s.rate.is_none_or(|drained| drained >= s.held)
                    && s.disk_max.is_none_or(|d| self.hand_now(d))
                    && s.deferred.is_empty()
                    && s.on_disk_from.is_none()
                    && s.giving_back.is_none()
            })
    }

    /// A delivery written under `due` and not handed over: one a scan will bring (at
    /// or above the cursor, or in the spilled range) and due within the loader's
    /// horizon of `now` waits for it, and its endpoint is not quiet until that scan
    /// passes it ([`Share::disk_max`]). One due later (a retry's wait, a `min_delay`) is
    /// not overtaken by a fresh delivery due now (counted, a single failure's retry
    /// would keep an endpoint from being quiet until the cursor had caught up and gone
    /// past its time).
    fn left_on_disk(&mut self, due: DueKey, now: u64) {
        if !self.hand_now(due) && due.due_ms <= now.saturating_add(HORIZON_MS) {
            let (cursor, spill) = (self.cursor, self.spill);
            self.shares
                .entry(due.ep)
                .or_default()
                .note_left_on_disk(due, cursor, spill);
        }
    }

    /// Loads spilled deliveries (keys below the cursor from the fence on) while workers
    /// have room; leaves spill mode when the scan reaches the cursor.
    fn load_spilled(&mut self) {
        let store = self.store.clone();
        let mut events = PageEvents::new(&store);
        while let Some(sp) = self.spill {
            if self.workers_full(0) {
                return;
            }
            let until = self.cursor.due_ms.saturating_add(1);
            let Some(page) = self.read_due(sp.scan, until) else {
                return;
            };
            let full = page.len() == PAGE;
            let mut cleanup = self.store.batch();
            let mut delta = Delta::default();
            let mut reached_cursor = !full;
            for (key, val) in page {
                if key >= self.cursor {
                    reached_cursor = true;
                    break;
                }
                if key.seq >= sp.fence && self.workers_full(0) {
                    // The rest of the page waits: the scan resumes at this key.
                    reached_cursor = false;
                    break;
                }
                if let Some(s) = self.spill.as_mut() {
                    s.scan = key.successor();
                }
                if key.seq >= sp.fence {
                    self.hand_over(key, val, &mut events, &mut cleanup, &mut delta);
                }
            }
            self.commit_cleanup(cleanup, delta);
            self.flush_jobs();
            events.next_page();
            if reached_cursor {
                tracing::debug!("spilled deliveries all loaded");
                self.spill = None;
            }
        }
    }

    /// Hands over the keys kept back from endpoints that have drained to half their
    /// share, in key order, up to their share (a page each per tick); those of a
    /// deleted endpoint fail.
    fn hand_over_kept_back(&mut self) {
        let cap = self.cap();
        let store = self.store.clone();
        let mut events = PageEvents::new(&store);
        let mut cleanup = self.store.batch();
        let mut delta = Delta::default();
        let mut gone = Vec::new();
        // Backlogs read back from disk for this long a tick at most, whatever their
        // number: after an outage shared by many endpoints each has one.
        let read_until = Instant::now() + SCAN_BUDGET;
        let eps: Vec<EndpointId> = self
            .shares
            .iter()
            .filter(|(_, s)| !s.deferred.is_empty() || s.on_disk_from.is_some())
            .map(|(&ep, _)| ep)
            .collect();
        for ep in eps {
            let info = self.router.eps.get(&ep);
            let exists = info.is_some();
            let holds_retries = info.is_none_or(|i| i.holds_retries);
            let Some(s) = self.shares.get(&ep) else {
                continue;
            };
            let limit = s.limit(cap);
            let room = match exists {
                _ if s.giving_back.is_some() => 0,
                false => PAGE,
                true if 2 * s.held <= limit => (limit - s.held).min(PAGE),
                true => 0,
            };
            if room > 0
                && s.deferred.len() < PAGE
                && s.on_disk_from.is_some()
                && self.spill.is_none()
                && Instant::now() < read_until
            {
                self.read_back(ep);
            }
            let mut taken = 0;
            // One by one: the cap counts their events as they go.
            while taken < room && !self.memory_full(0) {
                let Some((key, val)) = self
                    .shares
                    .get_mut(&ep)
                    .and_then(|s| s.deferred.pop_first())
                else {
                    break;
                };
                self.deferred -= 1;
                taken += 1;
                // Retired meanwhile: an ordered endpoint's head retry, which its worker
                // kept and made itself (its key kept back here as the loader passed
                // it). Handed over, it went out again after later deliveries. No other
                // endpoint's kept-back key is retired but through here (or by a pause,
                // which clears them): only those are looked up.
                if holds_retries {
                    match self.store.has_due(key) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => loader_failed(
                            &self.loader_failures,
                            "cannot check a kept-back delivery",
                            &e,
                        ),
                    }
                }
                self.hand_over(key, val, &mut events, &mut cleanup, &mut delta);
            }
            if !exists && self.shares.get(&ep).is_some_and(Share::idle) {
                gone.push(ep);
            }
        }
        for ep in gone {
            self.shares.remove(&ep);
        }
        self.commit_cleanup(cleanup, delta);
        self.flush_jobs();
    }

    /// Reads the next keys of `ep`'s backlog left on disk ([`Share::on_disk_from`])
    /// back into its kept-back keys, up to [`PAGE`] of them: the keys of the index from
    /// there up to the cursor, [`REFILL_SCAN`] at most per call. Not while fresh
    /// deliveries spill (those above the fence are the spill's to load: read back too,
    /// one would go out twice).
    fn read_back(&mut self, ep: EndpointId) {
        let Some(s) = self.shares.get(&ep) else {
            return;
        };
        let Some(from) = s.on_disk_from else {
            return;
        };
        let most = (2 * PAGE).saturating_sub(s.deferred.len());
        let cursor = self.cursor;
        let (page, next) = match self
            .store
            .due_where(from, Some(cursor), REFILL_SCAN, most, |k| k.ep == ep)
        {
            Ok(p) => p,
            Err(e) => {
                loader_failed(
                    &self.loader_failures,
                    "cannot read back a backlog left on disk; trying again",
                    &e,
                );
                return;
            }
        };
        let Some(s) = self.shares.get_mut(&ep) else {
            return;
        };
        for (key, val) in page {
            // Its worker has it (handed over ahead, kept at a give-back) and reports
            // it: kept back too, it would be handed over again once that outcome had
            // retired it (helper R's review).
            if self.ahead.contains(&key) {
                continue;
            }
            if s.deferred.insert(key, val).is_none() {
                self.deferred += 1;
            }
        }
        match next {
            Some(n) if n < cursor => s.on_disk_from = Some(n),
            _ => {
                s.on_disk_from = None;
                self.on_disk -= 1;
                match self.router.eps.get(&ep) {
                    Some(info) => tracing::info!(
                        endpoint = %info.name,
                        "an endpoint's backlog left on disk is all read back"
                    ),
                    None => tracing::info!(
                        id = ep,
                        "a deleted endpoint's backlog left on disk is all read back, to be failed"
                    ),
                }
            }
        }
    }

    /// Writes the loader's clean-up (deliveries dropped or paused on the way).
    fn commit_cleanup(&mut self, cleanup: store::Batch, delta: Delta) {
        if cleanup.is_empty() {
            return;
        }
        match self.store.commit(cleanup, false) {
            Ok(()) => self.stats.apply(delta),
            Err(e) => loader_failed(&self.loader_failures, "loader clean-up write failed", &e),
        }
    }

    /// A page of the due index from `from` to `until_ms`; `None` (logged) on a read error.
    fn read_due(&self, from: DueKey, until_ms: u64) -> Option<Vec<(DueKey, DueVal)>> {
        match self.store.due_range(from, until_ms, PAGE) {
            Ok(p) => Some(p),
            Err(e) => {
                loader_failed(
                    &self.loader_failures,
                    "loader cannot read the due index",
                    &e,
                );
                None
            }
        }
    }

    /// Sends one loaded delivery to its worker (or pauses/drops it).
    fn hand_over(
        &mut self,
        key: DueKey,
        val: DueVal,
        events: &mut PageEvents<'_>,
        cleanup: &mut store::Batch,
        delta: &mut Delta,
    ) {
        if !self.ahead.is_empty() && self.ahead.contains(&key) {
            // Handed over before the cursor (or the spill's scan) reached it; its worker
            // reports it. (Kept until then: an endpoint's backlog given back is read
            // back from disk below the cursor, this one among it while in flight.)
            return;
        }
        let Some(info) = self.router.eps.get(&key.ep) else {
            // The endpoint no longer exists: nothing can deliver this.
            cleanup.del_due(&self.store, key);
            cleanup.fail_dropped(&self.store, key.ep, key.seq);
            delta.pending -= 1;
            return;
        };
        if key.seq < self.store.retention_floor() {
            // Past retention (its event is gone or going): expired.
            cleanup.del_due(&self.store, key);
            delta.pending -= 1;
            delta.expired += 1;
            return;
        }
        let delivers = self.delivers(info);
        if delivers && self.keeps_back(key.ep, key) {
            // Not read now: its event is read when it is handed over.
            self.keep_back(key, val);
            return;
        }
        let event = match self
            .waiting
            .take(key.seq)
            .map_or_else(|| events.get(key.seq), |e| Ok(Some(e)))
        {
            Ok(Some(e)) => e,
            Ok(None) => {
                cleanup.del_due(&self.store, key);
                delta.pending -= 1;
                return;
            }
            Err(e) => {
                loader_failed(
                    &self.loader_failures,
                    "cannot read an event to hand over",
                    &e,
                );
                return;
            }
        };
        if !delivers {
            cleanup.del_due(&self.store, key);
            cleanup.pause(&self.store, key.ep, key.seq, val);
            delta.paused += 1;
            return;
        }
        self.out_count += 1;
        self.out_bytes += event.encoded().len();
        self.out_jobs[info.worker].push(Job {
            event,
            ep: key.ep,
            due: key,
            val,
        });
    }

    /// One page of the expiry sweep: due deliveries above the cursor (so on disk only)
    /// whose events are past retention expire. Those below the cursor are in a worker
    /// or spilled, and expire when reported or handed over.
    fn sweep_expired(&mut self) {
        let Some(from) = self.sweep else {
            return;
        };
        let from = from.max(self.cursor);
        let floor = self.store.retention_floor();
        let Some(page) = self.read_due(from, u64::MAX) else {
            return;
        };
        let mut batch = self.store.batch();
        let mut delta = Delta::default();
        for (key, _) in &page {
            // One handed ahead expires as its worker reports it.
            if key.seq < floor && !self.ahead.contains(key) {
                batch.del_due(&self.store, *key);
                delta.pending -= 1;
                delta.expired += 1;
            }
        }
        self.sweep = match page.last() {
            Some(&(last, _)) if page.len() == PAGE => Some(last.successor()),
            _ => None,
        };
        if delta.expired > 0 {
            tracing::debug!(
                expired = delta.expired,
                "due deliveries past retention expired"
            );
        }
        self.commit_cleanup(batch, delta);
    }

    /// Moves the cursor toward `now + HORIZON_MS`, handing what it passes to workers.
    fn load(&mut self) {
        if !self.scan.members.is_empty() {
            self.scan_pages();
        }
        self.sweep_expired();
        if !self.dropping.is_empty() {
            self.drop_deleted();
        }
        if !self.resuming.is_empty() {
            self.resume();
        }
        // At the bound with no endpoint able to leave its keys on disk, the loader
        // waits: look again each tick, since a rate taken meanwhile may show one slow
        // (hung endpoints whose backlogs came before their first second was out; no key
        // kept back after the bound would ever look again).
        self.none_to_leave = false;
        if self.deferred >= MAX_DEFERRED {
            self.leave_on_disk();
        }
        if self.deferred > 0 || self.on_disk > 0 {
            self.hand_over_kept_back();
        }
        if self.spill.is_some() {
            self.load_spilled();
            if self.spill.is_some() {
                return;
            }
        }
        let horizon = now_ms() + HORIZON_MS;
        self.waiting.purge(self.cursor.due_ms);
        let store = self.store.clone();
        let mut events = PageEvents::new(&store);
        while !self.workers_full(0) {
            let Some(page) = self.read_due(self.cursor, horizon) else {
                return;
            };
            let full = page.len() == PAGE;
            let mut cleanup = self.store.batch();
            let mut delta = Delta::default();
            let mut stopped = false;
            for (key, val) in page {
                if self.workers_full(0) {
                    // The rest of the page waits: the cursor stays at this key.
                    stopped = true;
                    break;
                }
                self.cursor = key.successor();
                self.hand_over(key, val, &mut events, &mut cleanup, &mut delta);
            }
            self.commit_cleanup(cleanup, delta);
            self.flush_jobs();
            if stopped {
                break;
            }
            if !full {
                self.cursor = self.cursor.max(DueKey {
                    due_ms: horizon,
                    seq: 0,
                    ep: 0,
                });
                break;
            }
            events.next_page();
        }
    }
}

/// The events of the deliveries the loader hands over: read in order through one
/// [`store::EventReader`], and shared within a page by the deliveries of one event.
struct PageEvents<'a> {
    reader: store::EventReader<'a>,
    cache: HashMap<Seq, Arc<EventRecord>>,
}

impl<'a> PageEvents<'a> {
    fn new(store: &'a Store) -> PageEvents<'a> {
        PageEvents {
            reader: store.event_reader(),
            cache: HashMap::default(),
        }
    }

    fn get(&mut self, seq: Seq) -> store::Result<Option<Arc<EventRecord>>> {
        if let Some(e) = self.cache.get(&seq) {
            return Ok(Some(e.clone()));
        }
        Ok(self.reader.get(seq)?.map(|e| {
            let e = Arc::new(e);
            self.cache.insert(seq, e.clone());
            e
        }))
    }

    /// Forgets the page's events (the reader keeps its place).
    fn next_page(&mut self) {
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_starts_a_round_of_its_own() {
        let (snap, _) = crossbeam_channel::unbounded();
        let (del, _) = crossbeam_channel::unbounded();
        let s = || CommitMsg::Snapshot(snap.clone());
        let d = |n: &str| CommitMsg::DeleteEndpoint {
            name: n.into(),
            reply: del.clone(),
        };
        let kinds = |m: &[CommitMsg]| -> Vec<String> {
            m.iter()
                .map(|m| match m {
                    CommitMsg::DeleteEndpoint { name, .. } => format!("delete {name}"),
                    _ => "other".into(),
                })
                .collect()
        };
        let mut msgs = vec![s(), s(), d("a"), s(), d("b")];
        let later = split_before_delete(&mut msgs);
        assert_eq!(kinds(&msgs), ["other", "other"]);
        assert_eq!(kinds(&later), ["delete a", "other", "delete b"]);
        // A deletion that opens the round goes with what follows, up to the next one.
        let mut msgs = later;
        let later = split_before_delete(&mut msgs);
        assert_eq!(kinds(&msgs), ["delete a", "other"]);
        assert_eq!(kinds(&later), ["delete b"]);
        let mut msgs = vec![s(), s()];
        assert!(split_before_delete(&mut msgs).is_empty());
        assert_eq!(msgs.len(), 2);
    }

    #[test]
    fn an_idle_committer_wakes_for_batch_fsyncs() {
        let ms = Duration::from_millis;
        // Nothing to fsync: until the loader's tick.
        assert_eq!(idle_wait(ms(0), None), TICK);
        assert_eq!(idle_wait(ms(45), None), ms(5));
        // A `batch` write 3 ms old: its fsync is due in 7 ms, before the tick.
        assert_eq!(idle_wait(ms(0), Some(ms(3))), ms(7));
        assert_eq!(idle_wait(ms(48), Some(ms(3))), ms(2));
        // Overdue or at the tick: never a zero wait (the loop would spin).
        assert_eq!(idle_wait(ms(0), Some(ms(30))), ms(1));
        assert_eq!(idle_wait(ms(80), None), ms(1));
    }

    fn info(id: u32, events: &[&str], account: Option<&str>) -> RouteInfo {
        RouteInfo {
            id,
            name: format!("e{id}"),
            worker: 0,
            events: events.iter().map(|s| s.to_string()).collect(),
            account: account.map(str::to_string),
            min_delay_ms: 0,
            ordered: false,
            holds_retries: false,
            enabled: true,
            meta: EndpointMeta::default(),
        }
    }

    #[test]
    fn first_due_keeps_acceptance_order_only_on_ordered_endpoints() {
        let now = 1_000_000;
        let mut free = info(1, &["t"], None);
        free.min_delay_ms = 500;
        let never = u64::MAX;
        assert_eq!(
            free.first_due(now + 10_000, now, never),
            (now + 10_500, None)
        );
        assert_eq!(free.first_due(now - 60_000, now, never), (now, None));
        assert_eq!(free.meta.first_due_ms, 0);

        let mut fifo = info(2, &["t"], None);
        fifo.ordered = true;
        fifo.min_delay_ms = 500;
        // Due now: nothing to remember.
        assert_eq!(fifo.first_due(now - 60_000, now, never), (now, None));
        assert_eq!(fifo.meta.first_due_ms, 0);
        // Due later: remembered (with the bound before), and it bounds later ones.
        assert_eq!(
            fifo.first_due(now + 10_000, now, never),
            (now + 10_500, Some(0))
        );
        assert_eq!(
            fifo.first_due(now - 60_000, now, never),
            (now + 10_500, None)
        );
        assert_eq!(
            fifo.first_due(now + 20_000, now, never),
            (now + 20_500, Some(now + 10_500))
        );
        // Once the bound has passed, it holds nothing back.
        let later = now + 30_000;
        assert_eq!(fifo.first_due(later - 60_000, later, never), (later, None));
        assert_eq!(fifo.meta.first_due_ms, now + 20_500);
        // One due after its event expires holds nothing back, nor is held.
        let expires = later + 60_000;
        assert_eq!(
            fifo.first_due(later + 3_600_000, later, expires),
            (later + 3_600_500, None)
        );
        assert_eq!(
            fifo.first_due(later - 60_000, later, expires),
            (later, None)
        );
        assert_eq!(fifo.meta.first_due_ms, now + 20_500);
    }

    fn ingest(events: usize) -> CommitMsg {
        let ev = NewEvent {
            ext_id: None,
            etype: "t".into(),
            account: None,
            time_ms: None,
            data: Bytes::from_static(b"{}"),
        };
        CommitMsg::Ingest(IngestBatch {
            to: AckTo::Conn {
                worker: 0,
                conn: 0,
                ticket: 0,
            },
            events: vec![ev; events],
            sent_at: Instant::now(),
        })
    }

    #[test]
    fn a_round_stops_taking_messages_at_its_item_cap() {
        // 1,000 events per message: the third message crosses the cap, the fourth waits.
        let mut waiting: std::collections::VecDeque<_> = (0..5).map(|_| ingest(1000)).collect();
        let mut msgs = vec![waiting.pop_front().unwrap()];
        fill_round(&mut msgs, || waiting.pop_front());
        assert_eq!(msgs.len(), 3);
        assert_eq!(waiting.len(), 2);
        // A message larger than the cap on its own still makes a round.
        let mut msgs = vec![ingest(ROUND_ITEMS * 2)];
        let mut more = Some(ingest(1));
        fill_round(&mut msgs, || more.take());
        assert_eq!(msgs.len(), 1);
        assert!(more.is_some());
        // Small messages (a disable notice counts 1) stop at the message cap.
        let mut msgs = Vec::new();
        fill_round(&mut msgs, || {
            Some(CommitMsg::EndpointDisabled {
                ep: 1,
                by: DisabledBy::Admin,
                detail: None,
            })
        });
        assert_eq!(msgs.len(), ROUND_ITEMS.min(ROUND_MSGS));
        // Nothing waiting: the round is what it has.
        let mut msgs = vec![ingest(3)];
        fill_round(&mut msgs, || None);
        assert_eq!(msgs.len(), 1);
    }

    #[test]
    fn routing_by_type_wildcard_and_account() {
        let r = Router::new(vec![
            info(1, &["a"], None),
            info(2, &["*"], None),
            info(3, &["a", "b"], Some("p1")),
        ]);
        let mut out = Vec::new();
        r.route("a", None, &mut out);
        assert_eq!(out, vec![1, 2]);
        r.route("a", Some("p1"), &mut out);
        assert_eq!(out, vec![1, 3, 2]);
        r.route("b", Some("p2"), &mut out);
        assert_eq!(out, vec![2]);
    }

    #[test]
    fn the_start_takes_each_ordered_endpoint_s_highest_due_key_but_held_heads_and_those_never_due()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day = 86_400_000;
        let t = 1_700_000_000_000;
        let key = |due_ms: u64, ms: u64, ep: EndpointId| DueKey {
            due_ms,
            seq: seq_floor(ms),
            ep,
        };
        // 1: two keys; 2: its held head above its other key; 3: a key due only past
        // the retention of its event (a week), and one key; 4: only one never due.
        let keys = [
            key(t, t, 1),
            key(t + 5, t + 1, 1),
            key(t + 2, t, 2),
            key(t + 3_600_000, t - 10, 2),
            key(t + 1, t, 3),
            key(t + 30 * day, t, 3),
            key(t + 30 * day, t, 4),
        ];
        let mut b = store.batch();
        for k in keys {
            b.put_due(&store, k, DueVal::NEW);
        }
        let mut meta = EndpointMeta {
            id: 1,
            ..EndpointMeta::default()
        };
        b.put_endpoint(&store, "e1", &meta);
        b.pause(&store, 1, seq_floor(t + 9), DueVal::NEW);
        meta.id = 2;
        b.put_endpoint(&store, "e2", &meta);
        store.commit(b, false).unwrap();
        let mut routes: Vec<RouteInfo> = (1..=4).map(|id| info(id, &["a"], None)).collect();
        for r in &mut routes {
            r.ordered = true;
        }
        routes[1].meta.hold = Some((seq_floor(t - 10), t + 3_600_000, 1));
        let p = count_pending(&store, &routes, 7 * day).unwrap();
        assert_eq!((p.pending, p.paused), (8, 1));
        let mut got: Vec<_> = p.ordered_backlog.into_iter().collect();
        got.sort_unstable();
        assert_eq!(got, [(1, keys[1]), (2, keys[2]), (3, keys[4])]);
        assert_eq!(p.with_paused.into_iter().collect::<Vec<_>>(), [1]);
        // A FIFO endpoint's backlog is not taken.
        routes[0].ordered = false;
        let p = count_pending(&store, &routes, 7 * day).unwrap();
        assert_eq!(p.ordered_backlog.get(&1), None);
        assert_eq!(p.ordered_backlog.len(), 2);
    }

    #[test]
    fn an_idle_store_is_scrubbed_once_per_idle_spell() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let write = |seq: u64| {
            let mut b = store.batch();
            let e = EventRecord::new(seq, None, "a", None, 0, &[1], b"{}");
            b.put_event(&store, &e);
            store.commit(b, false).unwrap();
        };
        let wal_bytes = || -> u64 {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        };
        let mut scrub = Scrub::new();
        let idle = Duration::from_millis(20);
        write(1);
        // A write seen: the spell starts; not idle long enough yet.
        assert!(!scrub.tick(&store, 0, idle));
        assert!(!scrub.tick(&store, 0, idle));
        std::thread::sleep(idle);
        assert!(wal_bytes() > 0);
        assert!(scrub.tick(&store, 0, idle));
        let ended = |scrub: &Scrub| {
            let began = Instant::now();
            while scrub.running.load(Ordering::Acquire) {
                assert!(began.elapsed() < Duration::from_secs(10), "the scrub ends");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        ended(&scrub);
        assert_eq!(wal_bytes(), 0, "the memtables were flushed, the WAL let go");
        assert!(scrub.thread.is_some(), "kept to be joined");
        // Once per spell: idle on, no second scrub; a write starts a new spell.
        std::thread::sleep(idle);
        assert!(!scrub.tick(&store, 0, idle));
        write(2);
        assert!(!scrub.tick(&store, 0, idle));
        std::thread::sleep(idle);
        assert!(scrub.tick(&store, 0, idle));
        ended(&scrub);
        // A scrub under way at shutdown is stopped and its thread joined.
        write(3);
        assert!(!scrub.tick(&store, 0, idle));
        std::thread::sleep(idle);
        assert!(scrub.tick(&store, 0, idle));
        scrub.stop(&store);
        assert!(scrub.thread.is_none() && !scrub.running.load(Ordering::Acquire));
    }

    #[test]
    fn write_failures_are_logged_at_most_once_an_interval_also_by_turns() {
        let e = store::StoreError::Corrupt {
            cf: "events",
            what: "a stand-in for a full disk".into(),
        };
        let mut w = WriteFailures::default();
        w.failed(&e, 3, 1);
        assert!(w.announced && w.last_logged.is_some());
        assert_eq!(
            (w.rounds, w.lines, w.outcomes),
            (0, 0, 0),
            "logged: counted afresh"
        );
        w.failed(&e, 2, 0);
        assert_eq!(
            (w.rounds, w.lines),
            (1, 2),
            "within the interval: counted, not logged"
        );
        w.succeeded();
        assert!(
            !w.announced && w.last_logged.is_some(),
            "the limit holds across it"
        );
        // Failing again at once is counted, not logged, and the next success says
        // nothing either, until the interval has passed: then it reports the count.
        w.failed(&e, 1, 0);
        assert!(!w.announced);
        w.succeeded();
        assert_eq!(w.rounds, 1);
        let Some(interval_ago) = Instant::now().checked_sub(WRITE_FAILURE_LOG_EVERY) else {
            return; // a clock too young to go back an interval
        };
        w.last_logged = Some(interval_ago);
        w.succeeded();
        assert_eq!(w.rounds, 0, "reported");
        // And a failure an interval later is logged again.
        w.last_logged = Some(interval_ago);
        w.failed(&e, 1, 0);
        assert!(w.announced && w.rounds == 0);
    }

    #[test]
    fn endpoints_come_and_go_one_at_a_time() {
        let mut r = Router::new(vec![info(1, &["a"], None), info(2, &["*"], None)]);
        let mut out = Vec::new();
        // Replaced: its old types no longer route to it, its new ones do.
        r.insert(info(1, &["b", "*"], None));
        r.route("a", None, &mut out);
        assert_eq!(out, vec![2, 1]);
        r.route("b", None, &mut out);
        assert_eq!(out, vec![1, 2]);
        assert!(!r.by_type.contains_key("a"), "an emptied type is dropped");
        r.insert(info(3, &["b"], Some("p")));
        r.route("b", Some("p"), &mut out);
        assert_eq!(out, vec![1, 3, 2]);
        assert_eq!(r.by_name("e3").map(|i| i.id), Some(3));
        // Removed: from every type, the wildcard and the names.
        assert_eq!(r.remove(1).map(|i| i.id), Some(1));
        assert!(r.remove(1).is_none());
        r.route("b", Some("p"), &mut out);
        assert_eq!(out, vec![3, 2]);
        assert!(r.by_name("e1").is_none());
        assert_eq!(r.wildcard, vec![2]);
        r.remove(3);
        r.remove(2);
        assert!(r.by_type.is_empty() && r.wildcard.is_empty() && r.names.is_empty());
    }

    #[test]
    fn a_spilled_key_below_one_the_cursor_passed_keeps_its_endpoint_from_being_quiet() {
        let key = |due_ms, seq| DueKey { due_ms, seq, ep: 3 };
        let mut spill = None;
        let brought = scans_passed;
        let mut s = Share::default();
        // A key written above a lagging cursor (a retry due soon), then passed by it.
        s.note_left_on_disk(key(600, 1), key(500, 0), spill);
        let cursor = key(1_100, 0);
        assert!(brought(s.disk_max.unwrap(), cursor, spill));
        // A burst spills; one of the endpoint's fresh deliveries is left for the scan.
        spill = Some(Spill {
            fence: 10,
            scan: key(100, 0),
        });
        s.note_left_on_disk(key(120, 11), cursor, spill);
        assert_eq!(s.disk_max, Some(key(120, 11)));
        assert!(
            !brought(s.disk_max.unwrap(), cursor, spill),
            "quiet with a spilled delivery of its own not loaded"
        );
        // Another: the highest of those still to come stands for both.
        s.note_left_on_disk(key(150, 12), cursor, spill);
        assert_eq!(s.disk_max, Some(key(150, 12)));
        // The scan passes the first only: still not quiet.
        spill = Some(Spill {
            fence: 10,
            scan: key(130, 0),
        });
        assert!(!brought(s.disk_max.unwrap(), cursor, spill));
        // The spill ends: quiet again.
        spill = None;
        assert!(brought(s.disk_max.unwrap(), cursor, spill));
    }

    #[test]
    fn in_memory_cap_scales_with_endpoints() {
        assert_eq!(in_memory_cap(0), MIN_IN_MEMORY);
        assert_eq!(in_memory_cap(16), MIN_IN_MEMORY);
        assert_eq!(in_memory_cap(16_000), 80_000);
        assert_eq!(in_memory_cap(30_000), MAX_IN_MEMORY);
    }

    #[test]
    fn waiting_keeps_soon_retries_events_until_each_retry_is_taken() {
        let ev = |seq| Arc::new(EventRecord::new(seq, None, "t", None, 0, &[1, 2], b"{}"));
        let size = ev(1).encoded().len();
        let mut w = Waiting::default();
        // Event 1 waits for two retries (two endpoints), event 2 for one; event 3's
        // retry is too far out to keep.
        w.keep(ev(1), 2_000, 1_000);
        w.keep(ev(1), 5_000, 1_000);
        w.keep(ev(2), 3_000, 1_000);
        w.keep(ev(3), 1_000 + WAITING_WITHIN_MS + 1, 1_000);
        assert_eq!(w.bytes, 2 * size);
        assert!(w.take(3).is_none());
        assert_eq!(w.take(1).map(|e| e.seq), Some(1));
        assert_eq!(w.bytes, 2 * size, "event 1 still waits for a retry");
        assert_eq!(w.take(1).map(|e| e.seq), Some(1));
        assert!(w.take(1).is_none());
        assert_eq!(w.bytes, size);
        // Event 2's retry left another way (its endpoint was deleted): once the loader
        // has passed its due time by a second's purge, it is forgotten.
        w.purge(3_000);
        assert_eq!(w.events.len(), 1, "not past it yet");
        w.purge(3_500);
        assert_eq!(w.events.len(), 1, "purged at most once a second");
        w.purge(4_001);
        assert!(w.events.is_empty());
        assert_eq!(w.bytes, 0);
    }

    #[test]
    fn waiting_keeps_nothing_new_once_full() {
        let big = vec![b'x'; 1 << 20];
        let ev = |seq| Arc::new(EventRecord::new(seq, None, "t", None, 0, &[1], &big));
        let mut w = Waiting::default();
        let mut seq = 0;
        while w.bytes < WAITING_BYTES {
            seq += 1;
            w.keep(ev(seq), 10, 0);
        }
        let full = w.bytes;
        w.keep(ev(seq + 1), 10, 0);
        assert_eq!(w.bytes, full);
        assert!(w.take(seq + 1).is_none());
        // A second retry of a kept event is still counted.
        w.keep(ev(seq), 10, 0);
        assert!(w.take(seq).is_some() && w.take(seq).is_some());
    }

    fn key(due_ms: u64, ep: EndpointId) -> DueKey {
        DueKey {
            due_ms,
            seq: due_ms,
            ep,
        }
    }

    /// The endpoints a scan of `index` (sorted) moves and finishes, `per_page` keys read
    /// a page, with `ep` joining before the page its number in `joins` gives.
    fn scan(
        index: &[DueKey],
        per_page: usize,
        joins: &[(usize, EndpointId)],
        pages: usize,
    ) -> (Vec<DueKey>, Vec<(usize, EndpointId, u64)>) {
        let mut p = DueScan::default();
        let (mut moved, mut done) = (Vec::new(), Vec::new());
        for page in 0..pages {
            for &(_, ep) in joins.iter().filter(|(at, _)| *at == page) {
                p.join(
                    ep,
                    Sweep::Pause {
                        running: HashSet::default(),
                    },
                );
            }
            if p.members.is_empty() {
                continue;
            }
            let from = index.partition_point(|k| *k < p.at);
            let read = &index[from..(from + per_page).min(index.len())];
            let next = index.get(from + per_page).copied();
            let picked: Vec<(DueKey, DueVal)> = read
                .iter()
                .filter(|k| p.picks(k, DueKey::MIN, &BTreeSet::new()))
                .map(|&k| {
                    (
                        k,
                        DueVal {
                            attempts: 0,
                            first: 0,
                        },
                    )
                })
                .collect();
            moved.extend(picked.iter().map(|(k, _)| *k));
            for (ep, m) in p.advance(&picked, next) {
                done.push((page, ep, m.moved));
            }
        }
        (moved, done)
    }

    #[test]
    fn the_due_scan_finds_every_key_of_endpoints_that_join_it_under_way() {
        // Endpoints 1..=3's keys spread over 30 keys; 3 keys a page.
        let index: Vec<DueKey> = (0..30).map(|i| key(i, 1 + (i % 3) as u32)).collect();
        // 1 starts the scan: done at the end, 10 pages. 2 joins at page 4 (key 12): the
        // scan goes round to it, done at page 14 (the first page whose end passes 12).
        // 3 joins at page 10, after the lap started (the scan is at the start again).
        let (moved, done) = scan(&index, 3, &[(0, 1), (4, 2), (10, 3)], 40);
        assert_eq!(done, vec![(9, 1, 10), (13, 2, 10), (19, 3, 10)]);
        let mut moved = moved;
        moved.sort();
        assert_eq!(moved, index, "every key moved once");
        // Alone at the start, an index read in one page is done in it.
        assert_eq!(scan(&index, 64, &[(0, 2)], 1).1, vec![(0, 2, 10)]);
        // An empty index ends a pause at once.
        assert_eq!(scan(&[], 8, &[(0, 1)], 1).1, vec![(0, 1, 0)]);
    }

    #[test]
    fn the_due_scan_leaves_attempts_in_flight_and_a_deleted_endpoint_s_keys_below_the_cursor() {
        let index: Vec<DueKey> = (0..6).map(|i| key(i, 1)).collect();
        let mut p = DueScan::default();
        p.join(
            1,
            Sweep::Pause {
                running: [2, 4].into_iter().collect(),
            },
        );
        p.join(2, Sweep::Drop { failed: 0 });
        let cursor = key(3, 0);
        let picked: Vec<DueKey> = index
            .iter()
            .copied()
            .filter(|k| p.picks(k, cursor, &BTreeSet::new()))
            .collect();
        assert_eq!(
            picked.iter().map(|k| k.seq).collect::<Vec<_>>(),
            vec![0, 1, 3, 5]
        );
        assert!(
            !p.picks(&key(3, 3), cursor, &BTreeSet::new()),
            "another endpoint's key"
        );
        // A deleted endpoint's keys below the loader's cursor are in a worker or spilled.
        assert!(!p.picks(&key(2, 2), cursor, &BTreeSet::new()));
        assert!(p.picks(&key(3, 2), cursor, &BTreeSet::new()));
        // So are its keys handed over ahead of the cursor; a paused endpoint's move.
        let ahead: BTreeSet<DueKey> = [key(4, 2), key(5, 1)].into_iter().collect();
        assert!(!p.picks(&key(4, 2), cursor, &ahead));
        assert!(p.picks(&key(5, 2), cursor, &ahead));
        assert!(p.picks(&key(5, 1), cursor, &ahead));
    }

    #[test]
    fn an_endpoint_is_slow_only_after_a_whole_second_with_work_to_drain() {
        let window = |s: &mut Share, held: usize, drained: usize| {
            s.held = held;
            s.drained = drained;
            s.take_rate();
        };
        // Hung: 100 held a whole second, none done.
        let mut hung = Share::default();
        window(&mut hung, 100, 0);
        assert!(!hung.slow(), "nothing known before a whole second");
        window(&mut hung, 100, 0);
        assert!(hung.slow());
        assert_eq!(hung.limit(50_000), SLOW_HELD);
        // A trickle of 500 a second, then a burst to 12,500 late in a window: what it
        // drained was all it had, so it is not slow until a whole second says so.
        let mut fast = Share::default();
        window(&mut fast, 20, 500);
        window(&mut fast, 20, 500);
        window(&mut fast, 12_500, 500);
        assert!(!fast.slow(), "judged by a second it had little to do");
        assert_eq!(fast.limit(50_000), 12_500);
        window(&mut fast, 9_000, 5_000);
        assert!(!fast.slow(), "5,000 a second drains 12,500 in under 10 s");
        assert_eq!(fast.limit(50_000), 12_500);
        // 1,000 a second with more to do: ten seconds of it, not a share it would then
        // be slow with (and give back).
        let mut steady = Share::default();
        window(&mut steady, 10_000, 1_000);
        window(&mut steady, 10_000, 1_000);
        assert!(!steady.slow());
        assert_eq!(steady.limit(50_000), 10_000);
        window(&mut steady, 10_000, 100);
        assert!(steady.slow());
        assert_eq!(steady.limit(50_000), SLOW_HELD);
        window(&mut steady, 1_000, 150);
        assert!(!steady.slow());
        assert_eq!(
            steady.limit(50_000),
            SLOW_HELD,
            "ten seconds of 150 a second is less"
        );
        // One that drains 500 a second with 12,500 to do is slow.
        let mut slow = Share::default();
        window(&mut slow, 12_500, 0);
        window(&mut slow, 12_500, 500);
        assert!(slow.slow());
        // Idle a whole second: nothing known again.
        window(&mut slow, 0, 12_500);
        window(&mut slow, 0, 0);
        assert!(!slow.slow());
    }
}
