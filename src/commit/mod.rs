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
//!   Those of a round whose write fails (a full disk) wait in memory, up to a cap, and
//!   are recorded by the first round whose write succeeds (`State::keep_unwritten`);
//!   a stop waits a few seconds for one (`State::record_waiting_at_stop`).
//! - **The loader.** The `due` column family is the timer wheel's backing store. A cursor
//!   splits it: deliveries with a key below the cursor are in some worker's memory, the
//!   rest only on disk. Every tick the loader moves the cursor up to `now + HORIZON_MS`,
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
//!
//! # Layout
//!
//! One concern a file, each adding to the one [`State`] the committer's thread owns
//! (the struct and its fields are here; the files that act on it have their own
//! `impl State` block):
//!
//! - this file: the messages and their answers, [`Committer`] and its loop, the
//!   committer's state, and the group-commit round — ingest (`accept`), outcomes
//!   (`record`), the write, the fsync and the answers (with the [syncer]), the hand-off
//!   of a round's jobs (`flush_jobs`) — and the metrics;
//! - [`route`]: which enabled endpoints an event goes to, and when its first attempt
//!   falls due;
//! - [`share`]: the in-memory cap and each endpoint's share of it: keys kept back, a
//!   backlog left on disk, deliveries given back;
//! - [`loader`]: the cursor over the due index and the spill, handing deliveries over
//!   (and ahead of the cursor), reading backlogs back, the expiry sweep;
//! - [`endpoints`]: creating, replacing, deleting, disabling and enabling endpoints,
//!   the shared scan that pauses or fails their due deliveries, and resumes;
//! - [`replay`]: scheduling deliveries again;
//! - [`retention`]: the retention floor, and scrubbing an idle store;
//! - [`start`]: what runs once at start: the pending count, ordered endpoints'
//!   backlogs, their held heads, and the bound past which a first attempt is never
//!   made.

mod endpoints;
mod loader;
mod replay;
mod retention;
mod route;
mod share;
mod start;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Durability;
use crate::endpoint::EndpointSpec;
use crate::metrics::{CommitSnapshot, Hist};
use crate::shard::{Mailbox, MailboxSender};
use crate::store::{
    self, seq_floor, seq_time_ms, AttemptRecord, DeliveryState, DisabledBy, DueKey, DueVal,
    EndpointId, EndpointMeta, EventRecord, Seq, Store,
};
use crate::syncer::{self, AckStats, Answer, SyncMsg};
use crate::tally::Tally;
use crate::worker::{now_ms, Job, WorkerMsg};

use endpoints::{Dropping, DueScan, Sweep};
use loader::{Spill, Waiting, RETRY_AHEAD_MS};
use retention::{Scrub, SCRUB_IDLE};
use share::{Share, RATE_EVERY};
use start::{count_pending, never_due_after, Pending};

pub use route::{RouteInfo, Router};
pub use share::{
    in_memory_cap, MAX_DEFERRED, MAX_IN_MEMORY, MAX_IN_MEMORY_BYTES, MIN_IN_MEMORY,
    PER_ENDPOINT_IN_MEMORY,
};

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

/// Events in a `sync` round from which its fsync overlaps the next round (the
/// [syncer]); smaller rounds are fsynced by the committer itself.
const PIPELINE_MIN_EVENTS: usize = 512;
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
#[derive(Clone)]
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

/// What [`State::record`] reads of the store about an outcome's delivery
/// ([`State::look_up`]).
#[derive(Debug, Default, Clone, Copy)]
struct Found {
    /// Retired already: nothing left to record or count.
    retired: bool,
    /// Its endpoint was deleted meanwhile, and the deletion failed it (counted there).
    failed_by_deletion: bool,
    /// A pause moved it to the paused set after its outcome was reported.
    was_paused: bool,
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
            CommitMsg::Outcomes(list) | CommitMsg::Unwritten(list) => list
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
    /// Never sent: outcomes the committer recorded in a round whose write failed (a
    /// full disk), waiting in [`State::unrecorded`] to be recorded again once writes
    /// succeed. What recording them changed in memory of their endpoint's record (its
    /// failure counts, an ordered one's held head) stands, to be written with the next
    /// round that succeeds; what it changed of worker memory and of the keys handed
    /// over ahead was undone (`State::keep_unwritten`), as the rest was never applied.
    Unwritten(Vec<Outcome>),
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
    /// A worker's answer to the enable `request` of `ep` ([`Switch::Enable`]), sent
    /// after every outcome it had reported: the endpoint's paused deliveries may
    /// resume.
    ///
    /// [`Switch::Enable`]: crate::worker::Switch::Enable
    Enabled {
        ep: EndpointId,
        request: u64,
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
    /// `ep`'s deliveries handed over, with `bytes` of events, every one it held from key
    /// `from` on (`None`: it gave none back) but those in `kept` (in flight or in its
    /// wheel, handed over ahead of the cursor). A retry its worker kept, given back
    /// too, is not in `count` or `bytes`: nothing counted it as handed over
    /// ([`Outcome::handed`]).
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
            CommitMsg::Outcomes(list) | CommitMsg::Unwritten(list) => list.len(),
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
    ///
    /// [`endpoint_share`]: share::endpoint_share
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
    /// Endpoints enabled whose worker has not yet answered the enable (with its
    /// number): they resume nothing until it has ([`CommitMsg::Enabled`]). Outcomes
    /// their worker judged under the disable come before the answer: an ordered head
    /// in flight at the disable whose retry was judged `paused` just before the enable
    /// reached its worker was found paused after the resume had sent the ones behind
    /// it. And the last enable's number.
    enabling: HashMap<EndpointId, u64>,
    last_enable: u64,
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
    ///
    /// [`loader_failed`]: loader::loader_failed
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
    /// endpoints' held heads and other retries at start ([`Self::send_holds`]) and quiet
    /// endpoints' fresh deliveries while the cursor lags or fresh deliveries spill
    /// ([`Self::hands_ahead`]). Their worker has them: the loader and the spill's scan
    /// skip them when they pass, a read-back leaves them out, the expiry sweep and a
    /// deletion's scan leave them to the outcome the worker reports. Each leaves when
    /// it is reported, given back or moved by a pause (its worker dropped it at the
    /// disable, and said so). (A held head's second copy was harmless while its
    /// endpoint stayed ordered, its queue taking one copy of a delivery, but one made
    /// `ordered = false` meanwhile sent the head twice; a FIFO queue always takes a
    /// second copy as a second delivery.)
    ahead: BTreeSet<DueKey>,
    /// Keys (and values) of quiet FIFO endpoints' retries written while the cursor
    /// lagged and due more than [`RETRY_AHEAD_MS`] out, and of enabled FIFO endpoints'
    /// retries in `due` at the start (whatever their time: [`Pending::far_retries`]), at
    /// most [`loader::MAX_FAR_RETRIES`]: handed over ahead once within it if the cursor
    /// still lags ([`Self::hand_far_retries`]), or left to the loader. Only a reminder:
    /// each key is in `due` as any other, and whatever moves it meanwhile (a pause, a
    /// deletion's scan, the expiry sweep, a replay) moves it there, so it is looked up
    /// there before it goes.
    far_retries: BTreeMap<DueKey, DueVal>,
    stats: Stats,
    write_failures: WriteFailures,
    /// Retention's store reads and writes that failed since the last line logged.
    retention_failures: Tally,
    /// Deleted endpoints' pages of deliveries the store refused to fail (a full disk,
    /// tried again each tick), since the last line logged.
    drop_failures: Tally,
    /// Outcomes whose look-ups the store refused ([`State::look_up`]) or whose round's
    /// write failed ([`CommitMsg::Unwritten`]), to be recorded at the next round, before
    /// its messages; and behind them, their workers' answers to an enable or a
    /// give-back, which the committer takes to come after every outcome reported before
    /// them.
    unrecorded: Unrecorded,
    /// The outcomes recorded in the current round, by message, kept until its write is
    /// done: should it fail, they wait in `unrecorded` ([`Self::keep_unwritten`]).
    round_outcomes: Vec<Vec<Outcome>>,
    /// Those look-ups refused since the last line logged.
    lookup_failures: Tally,
    scrub: Scrub,
}

/// Outcomes of attempts made while writes fail wait in memory for a write that
/// succeeds, up to this many ([`State::keep_unwritten`])…
const MAX_UNWRITTEN: usize = MAX_IN_MEMORY;
/// …and this much of their attempt records (those of deliveries handed over hold their
/// events in worker memory's count meanwhile; a retry an ordered endpoint's worker kept,
/// not counted there, holds its event here too). Past either, an outcome is dropped, as
/// all were before (its delivery stays where the store has it: made again after the
/// next restart), and counted in the log's line.
const MAX_UNWRITTEN_BYTES: usize = 64 << 20;

/// [`State::unrecorded`]: the messages, and which endpoints and deliveries have outcomes
/// among them, so that [`Unrecorded::keeps`] need not walk them (during a full disk they
/// can be [`MAX_UNWRITTEN`], and every outcome reported asks).
#[derive(Default)]
struct Unrecorded {
    msgs: Vec<CommitMsg>,
    eps: HashSet<EndpointId>,
    deliveries: HashSet<(EndpointId, Seq)>,
    /// Outcomes among them of rounds whose write failed, and what they count against
    /// [`MAX_UNWRITTEN_BYTES`] ([`unwritten_bytes`]).
    unwritten: usize,
    unwritten_bytes: usize,
}

/// How long a stop keeps trying to write the outcomes still waiting for a write
/// ([`State::record_waiting_at_stop`]). RocksDB refuses writes after a full disk until it
/// has seen the disk has room again, which it checks every 5 s
/// (`SstFileManagerImpl::ClearError`): a disk freed just before the stop takes up to
/// that long to be written again. Within the 10 s the stop gives the committer.
const STOP_WRITE_WAIT: Duration = Duration::from_secs(6);
/// How often a stop tries those writes again.
const STOP_WRITE_RETRY: Duration = Duration::from_millis(200);

/// What an outcome waiting for a write counts against [`MAX_UNWRITTEN_BYTES`].
fn unwritten_bytes(o: &Outcome) -> usize {
    store::outcome_write_estimate(o.attempt.as_ref())
        + if o.handed { 0 } else { o.event.encoded().len() }
}

impl Unrecorded {
    fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Whether an outcome of `ep`'s (of its delivery of `seq`, if given) waits here.
    fn keeps(&self, ep: EndpointId, seq: Option<Seq>) -> bool {
        !self.msgs.is_empty()
            && match seq {
                Some(seq) => self.deliveries.contains(&(ep, seq)),
                None => self.eps.contains(&ep),
            }
    }

    fn index(&mut self, msg: &CommitMsg) {
        if let CommitMsg::Outcomes(list) | CommitMsg::Unwritten(list) = msg {
            for o in list {
                self.eps.insert(o.ep);
                self.deliveries.insert((o.ep, o.event.seq));
            }
        }
        if let CommitMsg::Unwritten(list) = msg {
            self.unwritten += list.len();
            self.unwritten_bytes += list.iter().map(unwritten_bytes).sum::<usize>();
        }
    }

    fn push(&mut self, msg: CommitMsg) {
        self.index(&msg);
        self.msgs.push(msg);
    }

    /// `o` waits: as reported by its worker, or (`again`) recorded once in a round
    /// whose write failed.
    fn push_outcome(&mut self, o: Outcome, again: bool) {
        self.push(match again {
            true => CommitMsg::Unwritten(vec![o]),
            false => CommitMsg::Outcomes(vec![o]),
        });
    }

    /// Outcomes of a round whose write failed, before what that round added here at
    /// `at` and after.
    fn insert_unwritten(&mut self, at: usize, list: Vec<Outcome>) {
        let msg = CommitMsg::Unwritten(list);
        self.index(&msg);
        self.msgs.insert(at, msg);
    }

    fn len(&self) -> usize {
        self.msgs.len()
    }

    /// The attempt outcomes among the messages.
    fn outcomes(&self) -> usize {
        self.msgs
            .iter()
            .map(|m| match m {
                CommitMsg::Outcomes(list) | CommitMsg::Unwritten(list) => list.len(),
                _ => 0,
            })
            .sum()
    }

    /// All of it, for a round to record first.
    fn take(&mut self) -> Vec<CommitMsg> {
        self.eps.clear();
        self.deliveries.clear();
        (self.unwritten, self.unwritten_bytes) = (0, 0);
        std::mem::take(&mut self.msgs)
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
    /// Attempt outcomes dropped past [`MAX_UNWRITTEN`] (the rest wait for a write
    /// that succeeds).
    outcomes: u64,
    last_logged: Option<Instant>,
    /// A failure was logged and no success since.
    announced: bool,
}

const WRITE_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

impl WriteFailures {
    fn failed(&mut self, e: &store::StoreError, lines: u64, outcomes: u64, waiting: usize) {
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
            outcomes_waiting = waiting,
            outcomes_dropped = self.outcomes,
            "store write failed (counts since the last such line): the lines are answered \
             `unavailable`; attempt outcomes wait in memory and are recorded once writes \
             succeed, but past as many as workers may hold: deliveries whose outcome was \
             dropped are made again after a restart"
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
                    outcomes_dropped = self.outcomes,
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
            outcomes_dropped = self.outcomes,
            "store writes succeed again (the counts are those since the last failure \
             logged); the attempt outcomes that waited are recorded"
        );
        // The rate limit holds across a success: writes that fail and succeed by turns
        // log a pair of lines per interval at most.
        *self = WriteFailures {
            last_logged: self.last_logged,
            ..WriteFailures::default()
        };
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

impl Committer {
    /// Runs the committer on the calling thread until shutdown.
    pub fn run(self) -> Result<(), store::StoreError> {
        store::quiet_perf_counters();
        let max = self.store.max_seq()?.unwrap_or(0);
        let next_seq = (max + 1).max(seq_floor(now_ms()));
        let retention_ms = self.retention.as_millis() as u64;
        let Pending {
            pending,
            paused,
            ordered_backlog,
            retrying,
            with_paused,
            far_retries,
        } = count_pending(&self.store, &self.routes, retention_ms)?;
        let next_ep_id = self
            .store
            .endpoint_names()?
            .keys()
            .map(|id| id + 1)
            .max()
            .unwrap_or(1);
        let retention = self.retention;
        let (mut st, inbox) = self.into_state(next_seq, next_ep_id);
        st.stats.pending = pending;
        st.stats.paused = paused;
        st.far_retries = far_retries;
        let retention_every = retention_every(retention);
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
        st.send_holds(retrying);
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
                st.record_waiting_at_stop(&mut msgs, STOP_WRITE_WAIT);
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

    /// The committer's state at a start, before the census of the store: nothing loaded,
    /// held or counted yet, the loader's cursor at the start of the due index; and the
    /// inbox, for the loop.
    fn into_state(self, next_seq: Seq, next_ep_id: EndpointId) -> (State, Mailbox<CommitMsg>) {
        let n = self.workers.len();
        let state = State {
            store: self.store,
            durability: self.durability,
            retention_ms: self.retention.as_millis() as u64,
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
            enabling: HashMap::default(),
            last_enable: 0,
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
            far_retries: BTreeMap::new(),
            write_failures: WriteFailures::default(),
            retention_failures: Tally::default(),
            drop_failures: Tally::default(),
            unrecorded: Unrecorded::default(),
            round_outcomes: Vec::new(),
            lookup_failures: Tally::default(),
            scrub: Scrub::new(),
            stats: Stats {
                acks: AckStats::default(),
                commit_time: Hist::micros(),
                fsync_time: Hist::micros(),
                pending: 0,
                paused: 0,
                expired: 0,
            },
        };
        (state, self.inbox)
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

    /// An fsync made on the committer's thread: a small `sync` round's, the last one at
    /// shutdown, and any the syncer can no longer take.
    fn sync(&mut self) {
        let us = syncer::fsync(&self.store, &self.sync.poison);
        self.stats.fsync_time.record(us);
        self.unsynced = false;
        self.last_sync = Instant::now();
    }

    /// At the stop: outcomes still waiting for a write (a full disk refused their
    /// rounds, the last one included) are written as soon as the store takes writes
    /// again, tried every [`STOP_WRITE_RETRY`] for up to `wait`. Those that still cannot
    /// be written are said (their deliveries are made again after the next start).
    /// Without it they were given up at the first refusal, silently: a disk freed just
    /// before a stop (a restart to recover from a full disk) is refused until RocksDB
    /// has seen it has room ([`STOP_WRITE_WAIT`]), so every attempt made while it was
    /// full was made again after the restart.
    fn record_waiting_at_stop(&mut self, msgs: &mut Vec<CommitMsg>, wait: Duration) {
        let deadline = Instant::now() + wait;
        while !self.unrecorded.is_empty() && Instant::now() < deadline {
            std::thread::sleep(STOP_WRITE_RETRY.min(deadline - Instant::now()));
            self.round(msgs, &mut None);
        }
        let lost = self.unrecorded.outcomes();
        if lost > 0 {
            tracing::warn!(
                outcomes = lost,
                waited = ?wait,
                "attempt outcomes the store still refused to write at the stop (a full \
                 disk) are not recorded: their deliveries are made again after the next \
                 start, so their receivers may get them twice"
            );
        }
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
        let mut kept_retries = HashSet::default();
        // What earlier rounds could not record goes first (not before a deletion, which
        // opens a round of its own: see `split_before_delete`).
        if !self.unrecorded.is_empty()
            && !matches!(msgs.first(), Some(CommitMsg::DeleteEndpoint { .. }))
        {
            msgs.splice(0..0, self.unrecorded.take());
            kept_retries = kept_retries_in(msgs);
        }
        // What waits from before is ahead of anything this round adds (not spliced in a
        // deletion's round): this round's outcomes go before what it adds, should its
        // write fail.
        let waited = self.unrecorded.len();
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
        // Outcomes in this round so far (recorded, or left for a later round).
        let mut outcomes = 0u64;
        // Messages from a worker's answer on, cut off for the next round (see below).
        let mut rest = Vec::new();
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
        let mut drain = msgs.drain(..);
        while let Some(msg) = drain.next() {
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
                    let jobs = &mut jobs_from_outcomes;
                    self.record_all(list, false, now, &mut batch, jobs, &mut delta);
                }
                CommitMsg::Unwritten(list) => {
                    outcomes += list.len() as u64;
                    let jobs = &mut jobs_from_outcomes;
                    self.record_all(list, true, now, &mut batch, jobs, &mut delta);
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
                // Its worker's answer, in a round with outcomes: it opens the next round
                // (with all after it). Should this round's write fail, its outcomes
                // wait for a later one ([`Self::keep_unwritten`]): so does the answer,
                // behind them, as below. Applied here, an enable's resume went on
                // before an ordered head judged `paused` was in the paused set, and a
                // give-back read back a delivery its worker had reported (to be sent
                // again, its key still in `due`).
                msg @ (CommitMsg::Enabled { .. } | CommitMsg::GivenBack { .. }) if outcomes > 0 => {
                    rest.push(msg);
                    rest.extend(drain.by_ref());
                }
                // Its worker answered after an outcome that waits for a later round
                // (`record`): so does the answer. (An enable's resume would read the
                // paused set without an ordered head judged paused; a give-back's read-back
                // would bring a delivery done, its key still in `due`, and send it again.)
                msg @ (CommitMsg::Enabled { ep, .. } | CommitMsg::GivenBack { ep, .. })
                    if self.unrecorded.keeps(ep, None) =>
                {
                    self.unrecorded.push(msg);
                }
                CommitMsg::Enabled { ep, request } => {
                    // (One from before a later disable or enable: not this one's.)
                    if self.enabling.get(&ep) == Some(&request) {
                        self.enabling.remove(&ep);
                    }
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
        drop(drain);
        msgs.append(&mut rest);
        if !kept_retries.is_empty() {
            // A retry recorded again whose worker kept it and made it since (its
            // outcome recorded after it in this round): the store's copy is not handed
            // over. (Its worker, done with that delivery long since, no longer knew the
            // copy for one: it went again, and was counted done twice.)
            jobs_from_outcomes.retain(|(_, j)| !kept_retries.contains(&j.due));
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
                let dropped = self.keep_unwritten(waited);
                self.write_failures
                    .failed(&e, lines, dropped, self.unrecorded.unwritten);
                for (ep, before) in self.first_due_before.drain(..) {
                    if let Some(info) = self.router.eps.get_mut(&ep) {
                        info.meta.first_due_ms = before;
                    }
                }
                // Every answer of the round, the `dup`s too: a repeat of an id first
                // seen in this round names an event that was not written.
                syncer::refuse(&mut acks, &format!("cannot persist: {e}"), true);
                jobs_from_ingest.clear();
                // Retries under keys never written: the delivery keeps its old key until
                // its outcome is recorded again (`keep_unwritten`), which hands its retry
                // over then. Handed on now, its retry chain would run beside that key,
                // and leave it pending.
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
        self.round_outcomes.clear();
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
            if endpoints::joins_paused(&self.scan, &self.resuming, info) {
                // Routed, so enabled: an ordered endpoint resuming its paused
                // deliveries, or one held (enabled while its pause is under way,
                // `enable_ep`).
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

    /// Records a message's outcomes (`again`: recorded before in a round whose write
    /// failed), in order. Those recorded are kept until the round's write is done
    /// ([`Self::round_outcomes`]); those left for a later round are in `unrecorded`.
    fn record_all(
        &mut self,
        mut list: Vec<Outcome>,
        again: bool,
        now: u64,
        batch: &mut store::Batch,
        jobs: &mut Vec<(usize, Job)>,
        delta: &mut Delta,
    ) {
        list.retain(|o| self.record(o, again, now, batch, jobs, delta));
        if !list.is_empty() {
            self.round_outcomes.push(list);
        }
    }

    /// The write of a round failed: its outcomes recorded ([`Self::round_outcomes`])
    /// wait in `unrecorded` for a round whose write succeeds, before what the round
    /// left there itself (from `at` on: outcomes of the same deliveries behind them),
    /// and as if their workers had not reported them yet: counted in worker memory, and
    /// a key handed over ahead of the scans skipped by them ([`Self::unreport`]). Then
    /// they are recorded as they would have been ([`CommitMsg::Unwritten`]): a retry is
    /// handed over in its time, a delivery done is retired. Past [`MAX_UNWRITTEN`] or
    /// [`MAX_UNWRITTEN_BYTES`] the rest of the round's are dropped, as all were before:
    /// their deliveries keep their keys and are made again after a restart (a handed
    /// over ahead one when the loader reaches it). Returns how many were dropped.
    fn keep_unwritten(&mut self, at: usize) -> u64 {
        let lists = std::mem::take(&mut self.round_outcomes);
        let (mut count, mut bytes) = (self.unrecorded.unwritten, self.unrecorded.unwritten_bytes);
        let mut kept = Vec::new();
        let mut dropped = 0;
        for o in lists.into_iter().flatten() {
            // Once one is dropped, so are the rest: a later outcome of its delivery
            // recorded without it would retire a key never written.
            let size = unwritten_bytes(&o);
            if dropped > 0 || count >= MAX_UNWRITTEN || bytes + size > MAX_UNWRITTEN_BYTES {
                dropped += 1;
                continue;
            }
            (count, bytes) = (count + 1, bytes + size);
            self.unreport(&o);
            kept.push(o);
        }
        if !kept.is_empty() {
            self.unrecorded.insert_unwritten(at, kept);
        }
        dropped
    }

    /// Undoes [`Self::reported`] for `o`, whose round's write failed: its worker's
    /// memory counts it again, and a key the scans have yet to pass is skipped by them
    /// (the loader brought a second copy, the expiry sweep or a deletion's scan retired
    /// it under the outcome) until it is recorded.
    fn unreport(&mut self, o: &Outcome) {
        if !self.hand_now(o.due) {
            self.ahead.insert(o.due);
        }
        if o.handed {
            self.in_memory += 1;
            self.in_memory_bytes += o.event.encoded().len();
            let share = self.shares.entry(o.ep).or_default();
            share.held += 1;
            share.drained = share.drained.saturating_sub(1);
        }
    }

    /// What recording `o` needs to know of the store, read before anything is
    /// changed, so that a read the store refuses leaves the outcome whole for a later
    /// round ([`Self::not_recorded`]). (A default taken for a failed read counted the
    /// delivery done twice, or left it paused or in `due` beside its retry.)
    /// `known` and `enabled`: whether `o`'s endpoint is still there, and delivers.
    fn look_up(
        &self,
        o: &Outcome,
        expires: bool,
        (known, enabled): (bool, bool),
        batch: &store::Batch,
    ) -> store::Result<Found> {
        if o.next == Next::Stale {
            return Ok(Found::default());
        }
        let seq = o.event.seq;
        // Retired already, nothing left to record or count. A retry an ordered
        // endpoint's worker kept may have expired: its key retired by the loader or the
        // sweep, or never written (the floor passed while the outcome that kept it was on
        // its way). And any outcome of a delivery whose event passed retention while the
        // outcome was on its way, its key moved to the paused set meanwhile (an attempt
        // that ended just before its worker took a disable is reported before the
        // answer, and the pause moves its key) and expired there by retention: recorded,
        // a `Done` counted it done a second time, and a `paused` retry paused it again.
        let past = expires || seq < self.store.retention_floor();
        let retired = past
            && !batch.puts_due(o.due)
            && !self.store.has_due(o.due)?
            && (expires || !self.store.is_paused(o.ep, seq)?);
        if retired {
            return Ok(Found {
                retired,
                ..Found::default()
            });
        }
        // The endpoint was deleted while this outcome was on its way, and its deletion
        // failed the delivery already (counted there): an attempt that ended just
        // before its worker took a disable is reported before the answer, and the
        // pause can move its key before the outcome is recorded
        // ([`Self::start_pauses`]); the deletion fails what is paused.
        let failed_by_deletion = !known && self.store.is_failed(o.ep, seq)?;
        // Only around a disable (rare): whether pausing moved this delivery aside after
        // its outcome was reported, so the paused set and count move exactly. (A retry
        // is paused when its endpoint does not deliver.)
        let was_paused = !failed_by_deletion
            && (!enabled || o.next == Next::Paused || self.settling.contains(&o.ep))
            && self.store.is_paused(o.ep, seq)?;
        Ok(Found {
            retired,
            failed_by_deletion,
            was_paused,
        })
    }

    /// An outcome whose look-ups the store refused ([`Self::look_up`]). One that may
    /// pass is recorded again at the next round, whole, before that round's messages
    /// (its worker's answers behind it wait with it: see `round`), as if it came then:
    /// the loader's event reads that fail wait for the next tick the same way. One that
    /// lasts (a corrupt record) is not recorded, as in a round whose write fails: its
    /// delivery stays where the store has it (counted pending; made again after the
    /// next start), and it is only counted out of its worker's memory. Tried again, it
    /// would hold its endpoint's enables and give-backs for good.
    fn not_recorded(&mut self, o: Outcome, again: bool, e: &store::StoreError) {
        let lasting = e.lasting();
        if let Some(failures) = self.lookup_failures.note(WRITE_FAILURE_LOG_EVERY) {
            let what = match lasting {
                true => "not recorded: its delivery is made again after the next start",
                false => "recorded again at the next round",
            };
            tracing::error!(error = %e, failures, "cannot look up a delivery to record its outcome: {what} (failures: since the last such line)");
        }
        if lasting {
            self.reported(&o);
        } else {
            self.unrecorded.push_outcome(o, again);
        }
    }

    /// Counts `o`'s delivery out of its worker's memory, and out of the keys handed
    /// ahead of the loader's cursor (its key no longer skipped: a round not written
    /// leaves it in `due`, to be made again).
    fn reported(&mut self, o: &Outcome) {
        if !self.ahead.is_empty() {
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
    }

    /// Records `o` in `batch` (`again`: once more, its round's write having failed,
    /// [`CommitMsg::Unwritten`]). `false` if it was left for a later round.
    fn record(
        &mut self,
        o: &Outcome,
        again: bool,
        now: u64,
        batch: &mut store::Batch,
        jobs: &mut Vec<(usize, Job)>,
        delta: &mut Delta,
    ) -> bool {
        // Behind an outcome of the same delivery left for a later round: after it.
        if self.unrecorded.keeps(o.ep, Some(o.event.seq)) {
            self.unrecorded.push_outcome(o.clone(), again);
            return false;
        }
        // Expired by its worker, or a retry whose event passed retention meanwhile: it
        // is no ordered endpoint's head, and expires below.
        let expires = match o.next {
            Next::Expired => true,
            Next::Retry { .. } => o.event.seq < self.store.retention_floor(),
            _ => false,
        };
        // Whether its endpoint is still there, and delivers (nothing below changes
        // either: the record's counts and hold only).
        let (known, enabled) = match self.router.eps.get(&o.ep) {
            Some(i) => (true, self.delivers(i)),
            None => (false, false),
        };
        let found = match self.look_up(o, expires, (known, enabled), batch) {
            Ok(f) => f,
            Err(e) => {
                self.not_recorded(o.clone(), again, &e);
                return false;
            }
        };
        self.reported(o);
        // The endpoint's worker has not yet taken in the enable that reset its counts
        // (held, it is not yet told of it; or told, it has not answered): those it
        // reports meanwhile are the disabled run's, and written back they undid the
        // reset, for good when nothing came after them (shown by the API, and loaded
        // by the next start). It answers after every outcome it judged before it.
        // Recorded again (`again`), its record changed already (and later outcomes may
        // have changed it since).
        let held = self.scan.pausing(o.ep) || self.enabling.contains_key(&o.ep);
        if let Some(info) = self.router.eps.get_mut(&o.ep).filter(|_| !again) {
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
        if o.next == Next::Stale || found.retired {
            return true;
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
        let Found {
            failed_by_deletion,
            was_paused,
            ..
        } = found;
        let next = match o.next {
            _ if failed_by_deletion => Next::Stale,
            // The endpoint was deleted while this attempt ran: nothing more to do.
            _ if !known => Next::Done,
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
        if !known && !settled {
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
                // after it was enabled: it goes back with the others. (Not one judged
                // under the disable an enable ends: its worker reports those before it
                // answers the enable, and nothing resumes before the answer, see
                // `enabling`. One its worker judged as it disabled the endpoint itself,
                // its notice next in line.)
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
                                event: o.event.clone(),
                                ep: o.ep,
                                due,
                                val,
                            },
                        ));
                    }
                    return true;
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
                            event: o.event.clone(),
                            ep: o.ep,
                            due,
                            val,
                        },
                    ));
                } else {
                    self.left_on_disk(due, now);
                    if fifo.is_some() && self.lags(now) {
                        // Due further out: remembered, and handed over ahead once
                        // within [`RETRY_AHEAD_MS`] if the cursor lags still (left to
                        // it, it waited behind every other endpoint's backlog).
                        self.remember_far_retry(due, val, now);
                    }
                    if self.spill.is_none() {
                        // (While spilling, the workers already hold the most memory
                        // allowed.)
                        self.waiting
                            .keep(o.event.clone(), due_ms, self.cursor.due_ms);
                    }
                }
            }
        }
        true
    }
}

/// The keys of retries ordered endpoints' workers kept and made, among the outcomes of
/// `msgs` ([`Outcome::handed`]).
fn kept_retries_in(msgs: &[CommitMsg]) -> HashSet<DueKey> {
    msgs.iter()
        .filter_map(|m| match m {
            CommitMsg::Outcomes(list) | CommitMsg::Unwritten(list) => Some(list),
            _ => None,
        })
        .flatten()
        .filter(|o| !o.handed)
        .map(|o| o.due)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committer's state over `store` with the endpoints `routes` and one worker, as
    /// at a start with nothing loaded yet (the cursor at the start of the due index), and
    /// that worker's mailbox.
    pub(super) fn state(store: Store, routes: Vec<RouteInfo>) -> (State, Mailbox<WorkerMsg>) {
        let (worker, mb) = crate::shard::mailbox();
        let (_, inbox) = crate::shard::mailbox();
        let (syncer, _) = crossbeam_channel::unbounded();
        let committer = Committer {
            store,
            durability: Durability::None,
            retention: Duration::from_secs(86_400),
            inbox,
            workers: vec![worker],
            routes,
            registry: Registry::default(),
            syncer,
            sync: syncer::Shared::default(),
        };
        let (st, _) = committer.into_state(seq_floor(now_ms()), 1);
        (st, mb)
    }

    /// A store with `n` events, each delivered to endpoint 1 and due now (the first
    /// `retired` of them no longer in `due`: done meanwhile), and their keys in order.
    pub(super) fn deliveries(
        dir: &std::path::Path,
        n: u64,
        retired: usize,
    ) -> (Store, Vec<DueKey>) {
        let store = Store::open(dir).unwrap();
        let now = now_ms();
        let mut b = store.batch();
        let mut keys = Vec::new();
        for i in 0..n {
            let seq = seq_floor(now) + i;
            b.put_event(
                &store,
                &EventRecord::new(seq, None, "t", None, now, &[1], b"{}"),
            );
            let key = DueKey {
                due_ms: now,
                seq,
                ep: 1,
            };
            if keys.len() >= retired {
                b.put_due(&store, key, DueVal::NEW);
            }
            keys.push(key);
        }
        store.commit(b, false).unwrap();
        (store, keys)
    }

    /// The outcome of an attempt of the delivery under `due` (its first attempt, handed
    /// over by the loader), its event read from `store`: `next`, the attempt leaving
    /// the delivery `state`.
    pub(super) fn outcome(store: &Store, due: DueKey, next: Next, state: DeliveryState) -> Outcome {
        Outcome {
            event: Arc::new(store.event(due.seq).unwrap().unwrap()),
            ep: due.ep,
            due,
            attempts: 1,
            first: 0,
            attempt: Some(AttemptRecord {
                at_ms: due.due_ms,
                status: if state == DeliveryState::Delivered {
                    200
                } else {
                    500
                },
                state_after: Some(state),
                ..AttemptRecord::default()
            }),
            next,
            fails: [0; 3],
            handed: true,
        }
    }

    /// The keys of the jobs sent to the worker since the last call.
    pub(super) fn jobs_sent(mb: &Mailbox<WorkerMsg>) -> Vec<DueKey> {
        let mut keys = Vec::new();
        while let Some(m) = mb.try_recv() {
            if let WorkerMsg::Jobs(jobs) = m {
                keys.extend(jobs.iter().map(|j| j.due));
            }
        }
        keys
    }

    /// Which of `record`'s look-ups fails.
    #[derive(Debug, Clone, Copy)]
    enum LookUp {
        Due,
        Failed,
        Paused,
    }

    /// An outcome whose look-up `fails` once (reported in a round, then a round with
    /// nothing new): each time, the pending, paused and expired counts, and whether it
    /// waits for a later round. Endpoint 1's first delivery is out of `due`, the second
    /// pending. `Due`: a kept retry of an ordered endpoint's head whose event passed
    /// retention, its key expired by the sweep meanwhile (and counted there). `Failed`:
    /// a retry of a deleted endpoint, failed by the deletion. `Paused`: a delivery of a
    /// disabled endpoint, delivered, and paused by the disable meanwhile.
    fn an_outcome_whose_look_up_fails(
        fails: LookUp,
        fault: store::Fault,
    ) -> [(u64, u64, u64, bool); 2] {
        use crate::commit::route::tests::info;

        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 2, 1);
        let mut ep = info(1, &["t"], None);
        let retry = Next::Retry {
            due_ms: keys[0].due_ms + 15_000,
        };
        let (routes, o) = match fails {
            LookUp::Due => {
                (ep.ordered, ep.holds_retries) = (true, true);
                let o = outcome(&store, keys[0], retry, DeliveryState::Retrying);
                store.set_retention_floor(keys[0].seq + 1);
                (vec![ep], o)
            }
            LookUp::Failed => {
                let mut b = store.batch();
                b.fail_dropped(&store, 1, keys[0].seq);
                store.commit(b, false).unwrap();
                let o = outcome(&store, keys[0], retry, DeliveryState::Retrying);
                (Vec::new(), o)
            }
            LookUp::Paused => {
                ep.enabled = false;
                let mut b = store.batch();
                b.pause(&store, 1, keys[0].seq, DueVal::NEW);
                store.commit(b, false).unwrap();
                let o = outcome(&store, keys[0], Next::Done, DeliveryState::Delivered);
                (vec![ep], o)
            }
        };
        let (mut st, _mb) = state(store.clone(), routes);
        st.stats.pending = 1;
        if let LookUp::Paused = fails {
            (st.stats.pending, st.stats.paused) = (2, 1);
        }
        match fails {
            LookUp::Due => store.fail_due_lookups(1),
            LookUp::Failed => store.fail_failed_lookups(1, fault),
            LookUp::Paused => store.fail_paused_lookups(1, fault),
        }
        let mut msgs = vec![CommitMsg::Outcomes(vec![o])];
        let mut counts = Vec::new();
        for _ in 0..2 {
            st.round(&mut msgs, &mut None);
            let s = &st.stats;
            counts.push((s.pending, s.paused, s.expired, !st.unrecorded.is_empty()));
        }
        counts.try_into().unwrap()
    }

    #[test]
    fn an_outcome_whose_look_ups_fail_is_recorded_at_the_next_round_once() {
        // Each failed look-up took a default (found by reading, session 54): a retired
        // key taken for one still due, a delivery failed by its endpoint's deletion or
        // one paused meanwhile taken for neither, and each counted done again; the
        // paused one also stayed paused, to be sent again at the enable.
        assert_eq!(
            an_outcome_whose_look_up_fails(LookUp::Due, store::Fault::Transient),
            [(1, 0, 0, true), (1, 0, 0, false)],
            "retired already: nothing more to count"
        );
        assert_eq!(
            an_outcome_whose_look_up_fails(LookUp::Failed, store::Fault::Transient),
            [(1, 0, 0, true), (1, 0, 0, false)],
            "failed by the deletion already"
        );
        assert_eq!(
            an_outcome_whose_look_up_fails(LookUp::Paused, store::Fault::Transient),
            [(2, 1, 0, true), (1, 0, 0, false)],
            "delivered, out of the paused set"
        );
    }

    #[test]
    fn an_outcome_whose_look_up_fails_for_good_leaves_its_delivery_where_it_is() {
        // Tried again every round, it would hold its endpoint's enables and give-backs
        // for good: the delivery stays paused (counted so), as after a round whose
        // write fails.
        assert_eq!(
            an_outcome_whose_look_up_fails(LookUp::Paused, store::Fault::Corrupt),
            [(2, 1, 0, false), (2, 1, 0, false)]
        );
        assert_eq!(
            an_outcome_whose_look_up_fails(LookUp::Failed, store::Fault::Corrupt),
            [(1, 0, 0, false), (1, 0, 0, false)]
        );
    }

    /// A delivery of endpoint 1 (FIFO) handed over by the loader, and its attempt's
    /// outcome (`next`, leaving it `state`) reported in a round whose write fails (a full
    /// disk); then a round with nothing new, which writes. The state, its worker's
    /// mailbox, the delivery's key and the store.
    fn an_outcome_in_a_round_whose_write_fails(
        next: impl FnOnce(DueKey) -> Next,
        state_after: DeliveryState,
    ) -> (State, Mailbox<WorkerMsg>, DueKey, Store, tempfile::TempDir) {
        use crate::commit::route::tests::info;

        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 1, 0);
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        st.stats.pending = 1;
        st.load();
        assert_eq!(jobs_sent(&mb), keys, "handed over");
        assert_eq!(st.in_memory, 1);
        let o = outcome(&store, keys[0], next(keys[0]), state_after);
        store.fail_writes(1);
        st.round(&mut vec![CommitMsg::Outcomes(vec![o])], &mut None);
        assert!(store.has_due(keys[0]).unwrap(), "not written");
        assert_eq!(
            jobs_sent(&mb),
            [],
            "a retry under a key not written is not handed over"
        );
        st.round(&mut Vec::new(), &mut None);
        (st, mb, keys[0], store, dir)
    }

    #[test]
    fn a_retry_whose_outcome_a_full_disk_refused_is_made_once_writes_succeed() {
        // The outcome was dropped: the delivery kept its key in `due`, below the loader's
        // cursor, and its retry was made only after the next restart (docs/operations.md,
        // "Full disk"), however long the server ran on.
        let (st, mb, key, store, _dir) = an_outcome_in_a_round_whose_write_fails(
            |k| Next::Retry {
                due_ms: k.due_ms + 10,
            },
            DeliveryState::Retrying,
        );
        let retry = DueKey {
            due_ms: key.due_ms + 10,
            ..key
        };
        assert_eq!(jobs_sent(&mb), [retry], "its retry is handed over");
        assert!(!store.has_due(key).unwrap() && store.has_due(retry).unwrap());
        assert_eq!(
            store.attempts(key.seq).unwrap().len(),
            1,
            "its attempt is in the log"
        );
        assert_eq!((st.stats.pending, st.in_memory), (1, 1));
        assert!(st.unrecorded.is_empty());
    }

    #[test]
    fn a_delivery_whose_outcome_a_full_disk_refused_is_recorded_delivered_once_writes_succeed() {
        // Dropped, it stayed pending, and was sent again at the next restart.
        let (mut st, mb, key, store, _dir) =
            an_outcome_in_a_round_whose_write_fails(|_| Next::Done, DeliveryState::Delivered);
        assert!(!store.has_due(key).unwrap(), "done");
        assert_eq!(store.attempts(key.seq).unwrap().len(), 1);
        assert_eq!((st.stats.pending, st.in_memory), (0, 0));
        assert!(st.unrecorded.is_empty());
        st.load();
        st.round(&mut Vec::new(), &mut None);
        assert_eq!(jobs_sent(&mb), [], "not sent again");
    }

    #[test]
    fn an_ordered_head_s_retries_made_while_writes_fail_are_recorded_in_order_once() {
        // Its worker keeps the head's retry and makes it: both outcomes wait, and are
        // recorded in order. The store's copy of the retry, written and retired in the
        // same round, is not handed over: its worker, done with the delivery, would
        // send it again.
        use crate::commit::route::tests::info;

        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 1, 0);
        let mut ep = info(1, &["t"], None);
        (ep.ordered, ep.holds_retries) = (true, true);
        let (mut st, mb) = state(store.clone(), vec![ep]);
        st.stats.pending = 1;
        st.load();
        assert_eq!(jobs_sent(&mb), keys);
        let retry = DueKey {
            due_ms: keys[0].due_ms + 10,
            ..keys[0]
        };
        let first = outcome(
            &store,
            keys[0],
            Next::Retry {
                due_ms: retry.due_ms,
            },
            DeliveryState::Retrying,
        );
        let mut second = outcome(&store, retry, Next::Done, DeliveryState::Delivered);
        (second.attempts, second.handed) = (2, false);
        store.fail_writes(2);
        st.round(&mut vec![CommitMsg::Outcomes(vec![first])], &mut None);
        st.round(&mut vec![CommitMsg::Outcomes(vec![second])], &mut None);
        assert_eq!(st.unrecorded.unwritten, 2, "both wait");
        assert_eq!(
            st.in_memory, 1,
            "the head is counted in memory until recorded"
        );
        st.round(&mut Vec::new(), &mut None);
        assert_eq!(jobs_sent(&mb), [], "nothing handed over");
        assert!(!store.has_due(keys[0]).unwrap() && !store.has_due(retry).unwrap());
        assert_eq!(store.attempts(keys[0].seq).unwrap().len(), 2);
        assert_eq!((st.stats.pending, st.in_memory), (0, 0));
        assert_eq!(st.router.eps[&1].meta.hold, None, "no head held");
        assert!(st.unrecorded.is_empty());
    }

    #[test]
    fn a_delivery_handed_over_ahead_whose_outcome_waits_is_not_loaded_again() {
        // Handed over ahead of the loader's cursor (a quiet endpoint's fresh delivery
        // while the cursor lags): its key, still in `due` while its outcome waits, is
        // skipped by the loader as while its worker had it.
        use crate::commit::route::tests::info;

        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 1, 0);
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        st.stats.pending = 1;
        let o = outcome(&store, keys[0], Next::Done, DeliveryState::Delivered);
        st.ahead.insert(keys[0]);
        st.in_memory = 1;
        st.in_memory_bytes = o.event.encoded().len();
        st.shares.entry(1).or_default().held = 1;
        store.fail_writes(1);
        st.round(&mut vec![CommitMsg::Outcomes(vec![o])], &mut None);
        assert!(st.ahead.contains(&keys[0]));
        st.load();
        assert_eq!(jobs_sent(&mb), [], "not loaded again");
        st.round(&mut Vec::new(), &mut None);
        assert!(!store.has_due(keys[0]).unwrap());
        assert!(st.ahead.is_empty());
        assert_eq!(
            (st.stats.pending, st.in_memory, st.in_memory_bytes),
            (0, 0, 0)
        );
        st.load();
        assert_eq!(jobs_sent(&mb), []);
    }

    #[test]
    fn outcomes_a_full_disk_refused_are_written_at_the_stop_once_it_takes_writes() {
        // A stop whose own round the disk still refused (freed just before it: RocksDB
        // refuses writes until it sees the room, up to 5 s later) gave them up: their
        // deliveries, delivered, were all sent again after the restart.
        use crate::commit::route::tests::info;

        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 1, 0);
        let (worker, mb) = crate::shard::mailbox();
        let (inbox_tx, inbox) = crate::shard::mailbox();
        // No syncer: the stop is answered by the committer itself.
        let (syncer, _) = crossbeam_channel::unbounded();
        let committer = Committer {
            store: store.clone(),
            durability: Durability::None,
            retention: Duration::from_secs(86_400),
            inbox,
            workers: vec![worker],
            routes: vec![info(1, &["t"], None)],
            registry: Registry::default(),
            syncer,
            sync: syncer::Shared::default(),
        };
        let run = std::thread::spawn(move || committer.run());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut handed = Vec::new();
        while handed.is_empty() {
            assert!(Instant::now() < deadline, "never handed over");
            std::thread::sleep(Duration::from_millis(5));
            handed = jobs_sent(&mb);
        }
        assert_eq!(handed, keys);
        // The outcome's round, the stop's, and one more try at the stop.
        store.fail_writes(3);
        let o = outcome(&store, keys[0], Next::Done, DeliveryState::Delivered);
        inbox_tx.send(CommitMsg::Outcomes(vec![o]));
        let (reply, stopped) = crossbeam_channel::bounded(1);
        inbox_tx.send(CommitMsg::Shutdown(reply));
        stopped
            .recv_timeout(STOP_WRITE_WAIT + Duration::from_secs(5))
            .unwrap();
        run.join().unwrap().unwrap();
        assert!(
            !store.has_due(keys[0]).unwrap(),
            "recorded done at the stop"
        );
        assert_eq!(store.attempts(keys[0].seq).unwrap().len(), 1);
    }

    #[test]
    fn outcomes_past_the_cap_of_those_waiting_for_a_write_are_dropped() {
        // As all were before: the delivery stays in `due` (made again after a restart),
        // counted out of worker memory.
        use crate::commit::route::tests::info;

        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 1, 0);
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        st.stats.pending = 1;
        st.load();
        assert_eq!(jobs_sent(&mb), keys);
        let o = outcome(&store, keys[0], Next::Done, DeliveryState::Delivered);
        st.unrecorded.unwritten_bytes = MAX_UNWRITTEN_BYTES;
        store.fail_writes(1);
        st.round(&mut vec![CommitMsg::Outcomes(vec![o])], &mut None);
        assert!(st.unrecorded.is_empty());
        assert_eq!(st.write_failures.outcomes, 0, "counted, and logged");
        st.round(&mut Vec::new(), &mut None);
        assert!(store.has_due(keys[0]).unwrap());
        assert_eq!((st.stats.pending, st.in_memory), (1, 0));
    }

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
    fn write_failures_are_logged_at_most_once_an_interval_also_by_turns() {
        let e = store::StoreError::Corrupt {
            cf: "events",
            what: "a stand-in for a full disk".into(),
        };
        let mut w = WriteFailures::default();
        w.failed(&e, 3, 1, 0);
        assert!(w.announced && w.last_logged.is_some());
        assert_eq!(
            (w.rounds, w.lines, w.outcomes),
            (0, 0, 0),
            "logged: counted afresh"
        );
        w.failed(&e, 2, 0, 0);
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
        w.failed(&e, 1, 0, 0);
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
        w.failed(&e, 1, 0, 0);
        assert!(w.announced && w.rounds == 0);
    }
}
