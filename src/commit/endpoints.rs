//! Endpoint changes, made by the committer as the one writer of the store and the
//! router: creating or replacing ([`State::put_endpoint`]), deleting
//! ([`State::delete_endpoint`], [`Dropping`]), disabling and enabling
//! ([`State::disable_ep`], [`State::enable_ep`]). A disable moves the endpoint's due
//! deliveries to its paused set and a deletion fails them, both through one scan of
//! the due index shared by every endpoint under way ([`DueScan`]); an enable resumes
//! the paused ones in acceptance order ([`State::resume`]), once the worker has
//! answered it, after every outcome it judged under the disable.
//!
//! A change over the API is persisted (synced) before it is made, and the owning worker
//! is told before any job that depends on it. A change must not hold the committer for a
//! scan of its own (but at start, [`State::finish_pauses_at_start`]): past a page, the
//! work goes on in the loader's ticks, within [`SCAN_BUDGET`].

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::endpoint::EndpointSpec;
use crate::store::{
    self, DisabledBy, DueKey, DueVal, EndpointId, EndpointMeta, EndpointSource, Seq,
};
use crate::worker::{now_ms, Job, Switch, WorkerMsg};

use super::loader::loader_failed;
use super::route::RouteInfo;
use super::share::Share;
use super::{
    Delta, EndpointOpError, PutMode, State, HORIZON_MS, PAGE, SCAN_BUDGET, WRITE_FAILURE_LOG_EVERY,
};

/// How long a disable waits for the worker to say which attempts are in flight, and a
/// deletion for it to drop the endpoint (it answers from its mailbox task, within a
/// moment unless the process is stopping).
const IN_FLIGHT_ANSWER: Duration = Duration::from_secs(2);
/// Keys of the due index read per page of the shared scan ([`DueScan`]), each page one
/// write…
const SCAN_KEYS: usize = 16_384;
/// …and deliveries moved by it at most (the write costs more than the read: ~1 ms per
/// 500, measured with a backlog of 800,000).
const SCAN_MOVES: usize = 2048;

/// An endpoint's record as enabling it makes it: no disable, no failures counted, and
/// no first-attempt bound (every delivery of it is paused: resuming them in acceptance
/// order builds the bound afresh, see `State::resume`).
fn enabled_afresh(meta: &mut EndpointMeta) {
    meta.first_due_ms = 0;
    meta.enable();
    meta.fails = [0; 3];
}

/// A deleted endpoint whose pending deliveries are being failed: its paused ones, no
/// more than [`DROP_SCAN`] a page, then those waiting in `due` beyond the loader's
/// cursor, by the shared scan ([`DueScan`]), so a deletion with a large backlog
/// neither holds the committer nor builds one huge write, and a thousand deletions
/// read the due index once. Persisted as [`Store::deleting`] until done.
///
/// [`Store::deleting`]: crate::store::Store::deleting
#[derive(Debug, Clone, Copy)]
pub(super) struct Dropping {
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
    pub(super) fn new(ep: EndpointId, scan_due: bool) -> Dropping {
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
pub(super) struct DueScan {
    /// The next key to read, while there are members.
    at: DueKey,
    pub(super) members: HashMap<EndpointId, ScanMember>,
}

/// What the scan does with a member's due deliveries.
pub(super) enum Sweep {
    /// Moves them to the paused set, but those of attempts in flight at the disable
    /// (by sequence number): their outcomes move them.
    Pause { running: HashSet<u64> },
    /// Fails those at or beyond the loader's cursor (those below it are in a worker or
    /// spilled, and fail as they come back); `failed` from its paused set before.
    Drop { failed: u64 },
}

pub(super) struct ScanMember {
    sweep: Sweep,
    /// A pause's worker has yet to say which attempts are in flight: until it does, the
    /// scan moves none of the endpoint's keys, and its part is not done.
    answer: Option<crossbeam_channel::Receiver<Vec<u64>>>,
    /// A pause's `~pausing/<id>` marker is in the store ([`store::Batch::pausing`]).
    pub(super) marked: bool,
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
    pub(super) fn join(&mut self, ep: EndpointId, sweep: Sweep) {
        self.join_answered(ep, sweep, None);
    }

    /// `ep` joins the scan, its pause waiting for its worker's `answer` if there is one
    /// ([`Self::answers`]).
    fn join_answered(
        &mut self,
        ep: EndpointId,
        sweep: Sweep,
        answer: Option<crossbeam_channel::Receiver<Vec<u64>>>,
    ) {
        if self.members.is_empty() {
            self.at = DueKey::MIN;
        }
        self.members.insert(
            ep,
            ScanMember {
                sweep,
                answer,
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
    pub(super) fn pausing(&self, ep: EndpointId) -> bool {
        !self.members.is_empty()
            && self
                .members
                .get(&ep)
                .is_some_and(|m| matches!(m.sweep, Sweep::Pause { .. }))
    }

    /// Takes the answers workers gave late on which attempts were in flight at their
    /// endpoints' disables: each such pause starts its part of the scan from here, as
    /// if it joined now. A worker gone (stopping) has nothing in flight. Whether a
    /// member can move anything yet.
    fn answers(&mut self) -> bool {
        let at = self.at;
        let mut any = false;
        for m in self.members.values_mut() {
            if let Some(answer) = &m.answer {
                let seqs = match answer.try_recv() {
                    Ok(seqs) => seqs,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => Vec::new(),
                    Err(crossbeam_channel::TryRecvError::Empty) => continue,
                };
                if let Sweep::Pause { running } = &mut m.sweep {
                    running.extend(seqs);
                }
                (m.answer, m.start, m.lapped) = (None, at, false);
            }
            any |= m.answer.is_none();
        }
        any
    }

    /// Whether the scan takes this key, with the loader's cursor at `cursor` and the
    /// keys handed over ahead of it `ahead` (a deleted endpoint's worker reports those).
    fn picks(&self, k: &DueKey, cursor: DueKey, ahead: &BTreeSet<DueKey>) -> bool {
        self.members.get(&k.ep).is_some_and(|m| match &m.sweep {
            Sweep::Pause { .. } if m.answer.is_some() => false,
            Sweep::Pause { running } => !running.contains(&k.seq),
            Sweep::Drop { .. } => *k >= cursor && !ahead.contains(k),
        })
    }

    /// Whether a page read up to `next` (the end: `None`) ends `m`'s part.
    fn ends(m: &ScanMember, next: Option<DueKey>) -> bool {
        if m.answer.is_some() {
            return false;
        }
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
            for m in self.members.values_mut().filter(|m| m.answer.is_none()) {
                m.lapped = true;
            }
        }
        self.at = next.unwrap_or(DueKey::MIN);
        done.into_iter()
            .filter_map(|ep| self.members.remove_entry(&ep))
            .collect()
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

impl State {
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
    /// Each worker's answer says which those are. Without one in time, the endpoint's
    /// part of the scan waits for it ([`DueScan::answers`]), the endpoint paused and,
    /// enabled meanwhile, held: everything was paused then, the attempts in flight too,
    /// and an enable before their outcomes brought back a second copy of each beside
    /// the attempt, which went out again, and both outcomes counted the delivery done.
    pub(super) fn start_pauses(&mut self) {
        let fresh = self.scan.members.is_empty();
        // One wait for all of the round's answers: a worker that does not answer in
        // time holds the round once, not once per endpoint it owns.
        let deadline = Instant::now() + IN_FLIGHT_ANSWER;
        for (ep, in_flight) in std::mem::take(&mut self.pausing) {
            let (running, late): (HashSet<u64>, _) = match in_flight.recv_deadline(deadline) {
                Ok(seqs) => (seqs.into_iter().collect(), None),
                // A worker gone (stopping) has nothing in flight.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    (HashSet::default(), None)
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        endpoint = ep,
                        "no answer from the worker on attempts in flight in time: the \
                         endpoint's deliveries are paused once it answers"
                    );
                    (HashSet::default(), Some(in_flight))
                }
            };
            // Enabled again later in the round, it is held until its part of the scan
            // is done ([`Self::enable_ep`]).
            self.scan.join_answered(ep, Sweep::Pause { running }, late);
        }
        // A scan already under way goes on at the next tick: endpoints disabled one
        // round after another do not each cost a page in their round.
        if fresh {
            self.scan_page();
        }
    }

    /// One page of the shared scan ([`DueScan`]), in its own write. `false` when the
    /// store refuses it (a full disk): the scan stays where it was, for the next tick
    /// (a disabled endpoint's dropped jobs wait in `due` meanwhile); and when every
    /// member waits for its worker's answer.
    fn scan_page(&mut self) -> bool {
        if !self.scan.answers() {
            return false;
        }
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
    pub(super) fn scan_pages(&mut self) {
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
    pub(super) fn finish_pauses_at_start(&mut self, eps: &HashSet<EndpointId>) {
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
    pub(super) fn resume(&mut self) {
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
            let Some(worker) = self
                .router
                .eps
                .get(&ep)
                .filter(|i| self.delivers(i))
                .map(|i| i.worker)
            else {
                self.settling.remove(&ep);
                continue;
            };
            if self.enabling.contains_key(&ep) {
                // Its worker has yet to answer the enable: an outcome it judged under
                // the disable may still be on its way, a paused head among them.
                still.push(ep);
                continue;
            }
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
                    loader_failed(
                        &self.loader_failures,
                        "cannot read paused deliveries: read again at the next tick",
                        &e,
                    );
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
            // Its keys a scan is to bring: its fresh deliveries do not go before them
            // ([`Share::disk_max`]).
            let mut left_for_scan = Vec::new();
            let mut first_due_before = None;
            let mut events = self.store.event_reader();
            // The deliveries resumed now: up to one whose event cannot be read for now
            // (its due time, `min_delay` after it, is not known); it and those after it
            // stay paused, for the next tick.
            let mut resumed = page.len();
            for (i, &(seq, val)) in page.iter().enumerate() {
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
                        Err(e) if e.lasting() => loader_failed(
                            &self.loader_failures,
                            "cannot read a paused event: its delivery resumes due now",
                            &e,
                        ),
                        Err(e) => {
                            loader_failed(
                                &self.loader_failures,
                                "cannot read a paused event: it and its endpoint's later \
                                 paused deliveries resume from the next tick",
                                &e,
                            );
                            resumed = i;
                            break;
                        }
                    }
                }
                let due = DueKey { due_ms, seq, ep };
                batch.unpause(&self.store, ep, seq);
                batch.put_due(&self.store, due, val);
                if self.hand_now(due) {
                    below_cursor.push((due, val, event));
                } else {
                    left_for_scan.push(due);
                }
            }
            drop(events);
            let info = self.router.eps.get_mut(&ep).expect("looked up above");
            if first_due_before.is_some() {
                batch.put_endpoint(&self.store, &info.name, &info.meta);
            }
            if let Err(e) = self.store.commit(batch, false) {
                loader_failed(
                    &self.loader_failures,
                    "cannot resume paused deliveries: tried again at the next tick",
                    &e,
                );
                if let Some(before) = first_due_before {
                    info.meta.first_due_ms = before;
                }
                still.push(ep);
                continue;
            }
            self.stats.apply(Delta {
                paused: -(resumed as i64),
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
                    // Past retention meanwhile: the kept-back keys' hand-over expires it
                    // (left alone, its key stayed in `due`, counted pending, until the
                    // next start).
                    Ok(None) => self.keep_back(due, val),
                    Err(e) if e.lasting() => loader_failed(
                        &self.loader_failures,
                        "cannot read a resumed event: its delivery is left on disk until the \
                         next start",
                        &e,
                    ),
                    // Below the cursor, no scan brings it: kept back, it is read again
                    // when the kept-back keys are handed over.
                    Err(e) => {
                        loader_failed(
                            &self.loader_failures,
                            "cannot read a resumed event: its delivery is kept back, read \
                             again at the next tick",
                            &e,
                        );
                        self.keep_back(due, val);
                    }
                }
            }
            self.flush_jobs();
            if resumed < page.len() || page.len() == room {
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
    pub(super) fn store_enabled(&mut self, ep: EndpointId, enabled: bool) -> Result<(), String> {
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
    ///
    /// [`CommitMsg::EndpointDisabled`]: super::CommitMsg::EndpointDisabled
    pub(super) fn disable_ep(&mut self, ep: EndpointId, by: DisabledBy, detail: Option<&str>) {
        let Some(info) = self.router.eps.get_mut(&ep) else {
            return;
        };
        if info.enabled {
            let (tx, rx) = crossbeam_channel::bounded(1);
            self.workers[info.worker].send(WorkerMsg::SetEnabled {
                ep,
                switch: Switch::Disable { in_flight: tx },
            });
            self.pausing.insert(ep, rx);
            self.enabling.remove(&ep);
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
    pub(super) fn enable_ep(&mut self, ep: EndpointId) {
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

    /// Tells an enabled endpoint's worker, and resumes its paused deliveries once it
    /// has answered ([`State::enabling`]).
    fn start_resume(&mut self, ep: EndpointId) {
        let Some(info) = self.router.eps.get(&ep) else {
            return;
        };
        self.last_enable += 1;
        let request = self.last_enable;
        self.workers[info.worker].send(WorkerMsg::SetEnabled {
            ep,
            switch: Switch::Enable { request },
        });
        self.enabling.insert(ep, request);
        // Events accepted from now on join the paused ones (see `accept`).
        if !self.resuming.contains(&ep) {
            self.resuming.push(ep);
        }
        self.settling.insert(ep);
    }

    /// Whether `info`'s deliveries go to its worker: it is enabled, and not held
    /// ([`Self::enable_ep`]).
    pub(super) fn delivers(&self, info: &RouteInfo) -> bool {
        info.enabled && !self.scan.pausing(info.id)
    }

    /// Creates or replaces an endpoint: persisted (synced), then the router, the
    /// registry and the owning worker follow. Queued deliveries stay where they are; the
    /// worker uses the new spec from the next attempt on.
    pub(super) fn put_endpoint(
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
            // not known (those from before the start are not counted for a FIFO
            // endpoint), so its fresh ones wait for the scans to reach the present
            // (helper R's review, session 46: a fresh one went before the replay of an
            // older event scheduled before the `PUT`, when replays of a FIFO endpoint
            // were not counted).
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
    ///
    /// [`split_before_delete`]: super::split_before_delete
    pub(super) fn delete_endpoint(&mut self, name: &str) -> Result<EndpointId, EndpointOpError> {
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
        self.enabling.remove(&id);
        self.settling.remove(&id);
        self.pausing.remove(&id);
        if let Ok(mut reg) = self.registry.write() {
            reg.remove(name);
        }
        // Answered once its worker has dropped what it held, as a disable is: no attempt
        // of it begins after the answer (one in flight goes on and records its outcome).
        // Answered at once, the worker went on starting attempts of its queue until it
        // read the deletion: 56 and 76 of them 10-13 ms after the answer, in 2 of 8
        // deletes of an endpoint draining 20,000 (helper churn, session 53). A worker gone
        // (stopping) has nothing to send.
        let (done, removed) = crossbeam_channel::bounded(1);
        self.workers[worker].send(WorkerMsg::Remove { ep: id, done });
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            removed.recv_timeout(IN_FLIGHT_ANSWER)
        {
            tracing::warn!(endpoint = %name, id, "no answer from the worker on a deletion in time; answered without it");
        }
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
    pub(super) fn drop_deleted(&mut self) {
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
                    // Tried again each tick (and for each deletion under way): a line
                    // each time filled the log while a disk stayed full.
                    if let Some(failures) = self.drop_failures.note(WRITE_FAILURE_LOG_EVERY) {
                        tracing::error!(
                            error = %e,
                            id = d.ep,
                            failures,
                            "cannot fail a deleted endpoint's deliveries: a store write \
                             failed (a full or failing disk: free space, or check the disk); \
                             tried again each tick (failures: since the last such line)"
                        );
                    }
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
}

/// Whether a delivery made now to `info`'s endpoint (a fresh event's, a replay's) joins
/// its paused set rather than go due: the endpoint does not deliver
/// ([`State::delivers`]), or it is `ordered` and its paused deliveries are being given
/// due times (`resuming`: [`State::resume`], a page a tick from the enable on). Due now,
/// it would go to the worker before them, a paused retrying head among them, or before
/// those that fall due later (a future `time`, a `min_delay`); paused, it is given its
/// time behind them, in the same pass. Takes the state's parts, not the state: `accept`
/// holds its endpoint's record mutably meanwhile.
pub(super) fn joins_paused(scan: &DueScan, resuming: &[EndpointId], info: &RouteInfo) -> bool {
    let delivers = info.enabled && !scan.pausing(info.id);
    !delivers || (info.ordered && resuming.contains(&info.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::route::tests::info;
    use crate::commit::tests::{deliveries, jobs_sent, state};
    use crate::store::{seq_floor, EventRecord, Fault, Store};

    #[test]
    fn a_deletion_whose_writes_fail_is_logged_once_an_interval_not_each_tick() {
        // A full disk: each tick tries the deletions under way again, and each failed
        // write was an ERROR line, 20 a second per deletion for as long as it lasted.
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = deliveries(dir.path(), 2, 0);
        let (mut st, _mb) = state(
            store.clone(),
            vec![info(1, &["t"], None), info(2, &["t"], None)],
        );
        st.dropping = vec![Dropping::new(1, false), Dropping::new(2, false)];
        let ticks = 50;
        store.fail_writes(2 * ticks);
        let ((), lines) = crate::tally::logged(|| {
            for _ in 0..ticks {
                st.drop_deleted();
            }
        });
        assert_eq!(st.dropping.len(), 2, "both wait for the next tick");
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains("cannot fail a deleted endpoint's deliveries")
                && lines[0].contains("failures=1"),
            "{}",
            lines[0]
        );
        // Writes succeed again: both are done, nothing more is said of the failures.
        let ((), lines) = crate::tally::logged(|| st.drop_deleted());
        assert!(st.dropping.is_empty());
        assert!(
            lines.iter().all(|l| !l.contains("cannot fail")),
            "{lines:#?}"
        );
    }

    const NONE: [DueKey; 0] = [];

    /// A store holding one event of now, its delivery to endpoint 1 paused with
    /// `val`, and its sequence number.
    fn one_paused(dir: &std::path::Path, val: DueVal) -> (Store, Seq, u64) {
        let store = Store::open(dir).unwrap();
        let now = now_ms();
        let seq = seq_floor(now);
        let mut b = store.batch();
        b.put_event(
            &store,
            &EventRecord::new(seq, None, "t", None, now, &[1], b"{}"),
        );
        b.pause(&store, 1, seq, val);
        store.commit(b, false).unwrap();
        (store, seq, now)
    }

    #[test]
    fn a_paused_delivery_whose_event_cannot_be_read_resumes_at_the_next_tick_after_its_min_delay() {
        // Resumed due now, it went out before its `min_delay` (SPEC §2).
        let dir = tempfile::tempdir().unwrap();
        let (store, seq, now) = one_paused(dir.path(), DueVal::NEW);
        let mut ep = info(1, &["t"], None);
        ep.min_delay_ms = 60_000;
        let (mut st, _mb) = state(store.clone(), vec![ep]);
        st.resuming = vec![1];
        store.fail_event_reads(1, Fault::Transient);
        st.resume();
        assert_eq!(store.paused_of(1, 0, 8).unwrap().len(), 1, "still paused");
        assert!(store
            .due_range(DueKey::MIN, u64::MAX, 8)
            .unwrap()
            .is_empty());
        assert_eq!(st.resuming, [1], "resumed again at the next tick");
        st.resume();
        assert!(store.paused_of(1, 0, 8).unwrap().is_empty());
        let due = store.due_range(DueKey::MIN, u64::MAX, 8).unwrap();
        let key = DueKey {
            due_ms: now + 60_000,
            seq,
            ep: 1,
        };
        assert_eq!(due, [(key, DueVal::NEW)]);
        assert!(st.resuming.is_empty());
    }

    /// A paused retry of endpoint 1 (see [`one_paused`]) being resumed, the loader's
    /// cursor past now: it resumes due now, below the cursor, where no scan brings it.
    fn a_retry_resuming_below_the_cursor(
        dir: &std::path::Path,
    ) -> (
        Store,
        Seq,
        State,
        crate::shard::Mailbox<crate::worker::WorkerMsg>,
    ) {
        let retry = DueVal {
            attempts: 1,
            first: 0,
        };
        let (store, seq, now) = one_paused(dir, retry);
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        st.cursor = DueKey {
            due_ms: now + 60_000,
            seq: 0,
            ep: 0,
        };
        st.resuming = vec![1];
        (store, seq, st, mb)
    }

    #[test]
    fn a_resumed_delivery_below_the_cursor_whose_event_cannot_be_read_is_kept_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, seq, mut st, mb) = a_retry_resuming_below_the_cursor(dir.path());
        store.fail_event_reads(1, Fault::Transient);
        st.resume();
        assert_eq!(jobs_sent(&mb), NONE);
        assert_eq!(st.deferred, 1);
        st.load();
        let sent = jobs_sent(&mb);
        assert_eq!(
            sent.iter().map(|k| (k.seq, k.ep)).collect::<Vec<_>>(),
            [(seq, 1)]
        );
        st.load();
        assert_eq!(jobs_sent(&mb), NONE, "handed over once");
    }

    #[test]
    fn a_resumed_delivery_below_the_cursor_whose_event_is_past_retention_expires() {
        let dir = tempfile::tempdir().unwrap();
        let (store, seq, mut st, mb) = a_retry_resuming_below_the_cursor(dir.path());
        st.stats.pending = 1;
        store.set_retention_floor(seq + 1);
        st.resume();
        st.load();
        assert_eq!(jobs_sent(&mb), NONE);
        assert!(store
            .due_range(DueKey::MIN, u64::MAX, 8)
            .unwrap()
            .is_empty());
        assert_eq!((st.stats.pending, st.stats.expired), (0, 1));
    }

    /// Endpoint 1 (`ordered` or not) with two deliveries, of events accepted one after
    /// the other: the first one's attempt in flight when the endpoint is disabled, the
    /// second queued (paused by the disable). The endpoint is enabled again, and the
    /// first attempt's retry, judged `paused` by its worker before the enable reached
    /// it, is reported after the enable (the racing order: the worker reports it
    /// before it answers the enable). Returns the sequence numbers of the two events,
    /// the deliveries handed to the worker in turn (after the enable's round and the
    /// loader's tick, then after the outcome's round and the next tick), and those
    /// left paused. With `look_up_fails`, the store refuses the outcome's first look-up
    /// (of the paused set), with `write_fails` its round's write, and the rounds and
    /// ticks go on until nothing waits. The
    /// outcome carries the disabled run's failure counts: last, the endpoint's counts
    /// after it all, as the committer holds them and as its stored record has them.
    fn an_attempt_judged_paused_reported_after_the_enable(
        ordered: bool,
        look_up_fails: bool,
        write_fails: bool,
    ) -> ([Seq; 2], Vec<Seq>, Vec<Seq>, [[u32; 3]; 2]) {
        use crate::commit::{CommitMsg, Next, Outcome};
        use crate::store::{AttemptRecord, DeliveryState};
        use crate::worker::WorkerMsg;

        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 2, 0);
        let (now, first) = (keys[0].due_ms, keys[0].seq);
        let seqs = [first, keys[1].seq];
        let mut ep = info(1, &["t"], None);
        ep.ordered = ordered;
        ep.holds_retries = ordered;
        let (mut st, mb) = state(store.clone(), vec![ep]);
        // Both were handed to the worker: the loader's cursor is past them.
        st.cursor = DueKey {
            due_ms: now + 60_000,
            seq: 0,
            ep: 0,
        };
        // What the worker is told: jobs (their sequence numbers), and the enable's
        // number; a disable is answered with the first delivery in flight.
        let told = |mb: &crate::shard::Mailbox<WorkerMsg>| {
            let (mut jobs, mut enable) = (Vec::new(), None);
            while let Some(m) = mb.try_recv() {
                match m {
                    WorkerMsg::Jobs(list) => jobs.extend(list.iter().map(|j| j.due.seq)),
                    WorkerMsg::SetEnabled { switch, .. } => match switch {
                        Switch::Disable { in_flight } => in_flight.send(vec![first]).unwrap(),
                        Switch::Enable { request } => enable = Some(request),
                    },
                    _ => {}
                }
            }
            (jobs, enable)
        };
        st.disable_ep(1, DisabledBy::Admin, None);
        assert_eq!(told(&mb), (vec![], None));
        st.start_pauses();
        assert!(!st.scan.pausing(1), "paused within the disable's round");
        assert_eq!(
            store.paused_of(1, 0, 8).unwrap(),
            [(first + 1, DueVal::NEW)]
        );

        let (reply, answer) = crossbeam_channel::bounded(1);
        let mut msgs = vec![CommitMsg::SetEnabled {
            ep: 1,
            enabled: true,
            reply,
        }];
        st.round(&mut msgs, &mut None);
        assert_eq!(answer.try_recv(), Ok(Ok(())));
        let (mut handed, enable) = told(&mb);
        let request = enable.expect("the worker is told of the enable");
        // The loader's tick comes before the worker's report.
        st.load();
        handed.extend(told(&mb).0);

        let outcome = Outcome {
            event: Arc::new(store.event(first).unwrap().unwrap()),
            ep: 1,
            due: keys[0],
            attempts: 1,
            first: 0,
            attempt: Some(AttemptRecord {
                at_ms: now,
                status: 500,
                state_after: Some(DeliveryState::Paused),
                ..AttemptRecord::default()
            }),
            next: Next::Paused,
            fails: [0, 0, 1],
            handed: true,
        };
        let mut msgs = vec![
            CommitMsg::Outcomes(vec![outcome]),
            CommitMsg::Enabled { ep: 1, request },
        ];
        if look_up_fails {
            store.fail_paused_lookups(1, Fault::Transient);
        }
        if write_fails {
            store.fail_writes(1);
        }
        st.round(&mut msgs, &mut None);
        st.load();
        handed.extend(told(&mb).0);
        if look_up_fails || write_fails {
            assert!(!st.unrecorded.is_empty(), "the outcome waits");
        }
        // The worker's answer, after an outcome, opens the next round (carried over by
        // the committer's loop).
        assert!(matches!(msgs[..], [CommitMsg::Enabled { .. }]));
        while !msgs.is_empty() || !st.unrecorded.is_empty() {
            st.round(&mut msgs, &mut None);
            st.load();
            handed.extend(told(&mb).0);
        }
        let paused = store
            .paused_of(1, 0, 8)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        let info = &st.router.eps[&1];
        let stored = store.endpoint_meta(&info.name).unwrap().expect("stored");
        (seqs, handed, paused, [info.meta.fails, stored.fails])
    }

    #[test]
    fn an_ordered_head_judged_paused_but_reported_after_the_enable_still_goes_first() {
        // Found by reading (helper O; the window is about one synced write): the
        // resume read the paused set before the head was in it, so the one behind it
        // went to the worker first, and the head only at the next tick.
        let ([head, next], handed, paused, _) =
            an_attempt_judged_paused_reported_after_the_enable(true, false, false);
        assert_eq!(handed, [head, next], "the head first");
        assert_eq!(paused, NONE_SEQ);
    }

    #[test]
    fn a_fifo_delivery_judged_paused_but_reported_after_the_enable_resumes_too() {
        // Not left paused until a restart (as a paused outcome of an enabled endpoint
        // was before its record resumed the endpoint again).
        let ([head, next], handed, paused, _) =
            an_attempt_judged_paused_reported_after_the_enable(false, false, false);
        let mut sorted = handed.clone();
        sorted.sort();
        assert_eq!(sorted, [head, next], "each once: {handed:?}");
        assert_eq!(paused, NONE_SEQ);
    }

    #[test]
    fn an_attempt_in_flight_at_a_disable_answered_late_is_settled_once_by_its_outcome() {
        // Found by reading (session 54): a worker that did not say within
        // `IN_FLIGHT_ANSWER` which attempts were in flight had them paused with the
        // rest. Enabled and resumed before its outcome came, the delivery went out
        // again beside the attempt, and its outcome and the copy's each counted it done.
        use crate::commit::tests::outcome;
        use crate::commit::{CommitMsg, Next};
        use crate::store::DeliveryState;
        use crate::worker::WorkerMsg;

        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 2, 0);
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        st.stats.pending = 2;
        // Both were handed to the worker: the loader's cursor is past them.
        st.cursor = DueKey {
            due_ms: keys[0].due_ms + 60_000,
            seq: 0,
            ep: 0,
        };
        st.disable_ep(1, DisabledBy::Admin, None);
        let answer = match mb.try_recv() {
            Some(WorkerMsg::SetEnabled {
                switch: Switch::Disable { in_flight },
                ..
            }) => in_flight,
            _ => panic!("the worker is told of the disable"),
        };
        // No answer in time (the worker busy, the machine loaded).
        st.start_pauses();
        let (reply, enabled) = crossbeam_channel::bounded(1);
        let mut msgs = vec![CommitMsg::SetEnabled {
            ep: 1,
            enabled: true,
            reply,
        }];
        st.round(&mut msgs, &mut None);
        assert_eq!(enabled.try_recv(), Ok(Ok(())));
        // The worker answers late: the first delivery's attempt is in flight. Then
        // it answers what it is told at once, and the committer's ticks go on; the
        // attempt's outcome comes after them. (A committer that gave up on the answer
        // no longer takes it.)
        let _ = answer.send(vec![keys[0].seq]);
        let mut handed = Vec::new();
        for _ in 0..4 {
            let mut msgs = Vec::new();
            while let Some(m) = mb.try_recv() {
                match m {
                    WorkerMsg::Jobs(list) => handed.extend(list.iter().map(|j| j.due.seq)),
                    WorkerMsg::SetEnabled { switch, .. } => match switch {
                        Switch::Enable { request } => {
                            msgs.push(CommitMsg::Enabled { ep: 1, request })
                        }
                        Switch::Disable { in_flight } => in_flight.send(vec![keys[0].seq]).unwrap(),
                    },
                    _ => {}
                }
            }
            st.round(&mut msgs, &mut None);
            st.load();
        }
        assert_eq!(handed, [keys[1].seq], "only the one paused goes again");
        assert_eq!((st.stats.pending, st.stats.paused), (2, 0));
        let done = outcome(&store, keys[0], Next::Done, DeliveryState::Delivered);
        st.round(&mut vec![CommitMsg::Outcomes(vec![done])], &mut None);
        assert_eq!(st.stats.pending, 1, "the other is in its worker");
        assert!(store.paused_of(1, 0, 8).unwrap().is_empty());
        let due: Vec<Seq> = store
            .due_range(DueKey::MIN, u64::MAX, 8)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.seq)
            .collect();
        assert_eq!(due, [keys[1].seq]);
    }

    #[test]
    fn an_enable_s_answer_waits_behind_an_outcome_left_for_the_next_round() {
        // Its worker answered the enable after the outcome: resumed before the outcome
        // was recorded (its look-up refused), the one behind the head went first.
        let ([head, next], handed, paused, _) =
            an_attempt_judged_paused_reported_after_the_enable(true, true, false);
        assert_eq!(handed, [head, next], "the head first");
        assert_eq!(paused, NONE_SEQ);
    }

    #[test]
    fn an_enable_s_answer_waits_behind_an_outcome_whose_write_failed() {
        // Its worker answered the enable after the outcome, in the same round, whose
        // write failed (a full disk): the outcome was recorded after the next restart
        // only, the resume went on before it, and the one behind the head went first.
        let ([head, next], handed, paused, _) =
            an_attempt_judged_paused_reported_after_the_enable(true, false, true);
        assert_eq!(handed, [head, next], "the head first");
        assert_eq!(paused, NONE_SEQ);
    }

    #[test]
    fn counts_of_the_disabled_run_reported_after_an_enable_do_not_undo_its_reset() {
        // Found by reading (helper rulesaudit, session 57): an enable resets the
        // endpoint's failure counts (SPEC §6: the counts start afresh), in the committer
        // at once and in its worker when the worker takes the enable in. An outcome the
        // worker reported in between carries the disabled run's counts: recorded, it
        // wrote them back over the reset, and with nothing reported after it they
        // stayed, shown by `GET /v1/endpoints/{name}` and loaded by the next start, where
        // the endpoint was disabled again by as few failures as the threshold less them.
        // (And one whose round's write failed, recorded again: it changes the counts
        // no more than it did the first time.)
        for (ordered, look_up_fails, write_fails) in [
            (false, false, false),
            (true, false, false),
            (true, true, false),
            (true, false, true),
        ] {
            let (_, _, _, fails) = an_attempt_judged_paused_reported_after_the_enable(
                ordered,
                look_up_fails,
                write_fails,
            );
            assert_eq!(
                fails, [[0; 3]; 2],
                "ordered {ordered}, look-up fails {look_up_fails}, write fails {write_fails}: \
                 [committer, store]"
            );
        }
    }

    const NONE_SEQ: [Seq; 0] = [];

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
}
