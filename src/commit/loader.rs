//! The loader: the cursor over the due index, the timer wheel's backing store. Each tick
//! ([`State::load`]) moves the cursor up to `now + HORIZON_MS`, handing what it passes
//! to the owning workers while they hold less than the cap (or keeping it back: see
//! [`share`](super::share)); while workers are full, fresh deliveries spill to disk
//! ([`Spill`]) and a second scan loads them as workers drain. It also hands a quiet
//! endpoint's fresh deliveries and soon retries ahead of a lagging cursor
//! ([`State::hands_ahead`]; later retries once they are soon,
//! [`State::hand_far_retries`]), reads kept-back backlogs back from disk
//! ([`State::read_back`]), expires due deliveries past retention
//! ([`State::sweep_expired`]), and keeps the events of retries due soon ([`Waiting`]).
//! A tick also drives, a page at a time, the endpoints' scans, deletions and resumes
//! ([`endpoints`](super::endpoints)).
//!
//! A tick's work is bounded (by the cap, by pages, by [`SCAN_BUDGET`]): it must not hold
//! the committer from its next round for long. Of the store, it writes only its clean-up
//! (deliveries dropped, expired or paused on the way), never an event or an attempt.

use rustc_hash::FxHashMap as HashMap;
use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::store::{self, DueKey, DueVal, EndpointId, EventRecord, Seq, Store};
use crate::tally::Tally;
use crate::worker::{now_ms, Job};

use super::share::{Share, MAX_DEFERRED, MAX_IN_MEMORY_BYTES};
use super::{Delta, State, HORIZON_MS, PAGE, SCAN_BUDGET, WRITE_FAILURE_LOG_EVERY};

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
pub(super) const RETRY_AHEAD_MS: u64 = 10_000;

/// Such a retry due further out than [`RETRY_AHEAD_MS`] is remembered by its key, as
/// is each enabled FIFO endpoint's retry in `due` at a start
/// ([`Pending::far_retries`](super::start::Pending::far_retries)), at most this many
/// (the soonest due), and handed over once within it while the cursor still lags
/// ([`State::hand_far_retries`]); past the bound the loader brings it, as before. (Keys and values only, not events: some 400 KB at the bound. Handed over
/// at once instead, each would wait in its worker's wheel for up to the whole
/// schedule's step, minutes or hours, a second timer beside the loader's.)
pub(super) const MAX_FAR_RETRIES: usize = 8192;

/// Remembers the retry under `due` in `far` ([`State::far_retries`]), keeping the
/// [`MAX_FAR_RETRIES`] soonest due.
///
/// [`State::far_retries`]: super::State::far_retries
pub(super) fn remember_soonest(far: &mut BTreeMap<DueKey, DueVal>, due: DueKey, val: DueVal) {
    // (Past the bound and later than all of it: nothing to do. The start's census
    // meets most keys so, in key order.)
    if far.len() >= MAX_FAR_RETRIES && far.last_key_value().is_some_and(|(l, _)| *l < due) {
        return;
    }
    far.insert(due, val);
    if far.len() > MAX_FAR_RETRIES {
        far.pop_last();
    }
}

/// Spill mode: deliveries of events from `fence` on, with keys below the cursor, stay
/// on disk; a second scan from `scan` up to the cursor loads them as workers drain.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spill {
    pub(super) fence: Seq,
    pub(super) scan: DueKey,
}

/// Whether the scans have passed `k` (the loader's cursor is above it, and it is not in
/// `spill`'s range still to load): a key written now must then go to its worker at once
/// ([`State::hand_now`]), and one left on disk earlier has been brought.
pub(super) fn scans_passed(k: DueKey, cursor: DueKey, spill: Option<Spill>) -> bool {
    k < cursor && spill.is_none_or(|sp| !(k.seq >= sp.fence && k >= sp.scan))
}

/// Logs a store operation of the loader's (or a resume's) that failed, at most once per
/// [`WRITE_FAILURE_LOG_EVERY`] with the count since the last line: most are tried again
/// every tick, some for every key, so a failing store logged thousands of lines a
/// second. `what` names the operation that failed when the line was due, and what
/// becomes of its work (each call site's own: read again at the next tick, or left on
/// disk until the next start).
pub(super) fn loader_failed(tally: &Cell<Tally>, what: &str, e: &store::StoreError) {
    let mut t = tally.get();
    let due = t.note(WRITE_FAILURE_LOG_EVERY);
    tally.set(t);
    if let Some(failures) = due {
        tracing::error!(error = %e, failures, "{what} (failures: the loader's store failures since the last such line)");
    }
}

/// How far ahead a retry's event is kept in memory for the loader ([`Waiting`]).
const WAITING_WITHIN_MS: u64 = 10_000;
/// At most this many bytes of events are kept so.
const WAITING_BYTES: usize = 16 << 20;

/// The events of deliveries whose retry falls due soon, kept from the failed attempt
/// (which had the event in hand) so the loader hands the retry over without reading the
/// event back from the store. Only a shortcut: a retry whose event is not here (too far
/// out, over the cap, dropped after a restart) is read from the store as before.
#[derive(Default)]
pub(super) struct Waiting {
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
    pub(super) fn keep(&mut self, event: Arc<EventRecord>, due_ms: u64, cursor_ms: u64) {
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

impl State {
    /// Whether the loader's cursor lags behind `now` (workers hold the cap, backlogs
    /// after a restart) or fresh deliveries spill: a key due now waits behind the rest.
    pub(super) fn lags(&self, now: u64) -> bool {
        self.spill.is_some() || self.cursor.due_ms < now
    }

    /// Whether a delivery written under `k` must go to its worker now because no scan
    /// will pick it up: below the cursor, and not in the spilled range.
    pub(super) fn hand_now(&self, k: DueKey) -> bool {
        scans_passed(k, self.cursor, self.spill)
    }

    /// Whether a delivery written under `due`, which a scan would bring later (at or
    /// above the loader's cursor, or in the spilled range), goes to its worker now all
    /// the same (`round_jobs` already queued this round; a retry only a FIFO one's): it
    /// is due within `within_ms` (the loader's horizon for a fresh one,
    /// [`RETRY_AHEAD_MS`] for a retry, which the caller hands over only while the
    /// cursor lags), so the cursor lags behind now (workers hold the cap: backlogs
    /// loaded after a restart, an overload) or fresh deliveries spill, and its endpoint
    /// is quiet — it holds fewer than [`AHEAD_HELD`] in worker memory and no more than
    /// it drained in its last second (if it held some all through it: many endpoints at
    /// a low `max_rps`, each holding a few, are not quiet; with the spill, 8,192 of
    /// theirs went ahead at once), keeps nothing back, on disk or being given back, and
    /// has written none of its deliveries for a scan to bring that the scan has not
    /// brought yet ([`Share::disk_max`]: under an overload of many endpoints each
    /// holding a few, their fresh deliveries would go before their own older ones; of a
    /// backlog from before a restart, only an `ordered` endpoint's counts,
    /// [`Pending::ordered_backlog`]: its queue takes its deliveries in acceptance order
    /// as they come, so one handed over ahead of an older one still on disk would go
    /// first; its head's retry, which its worker keeps, holds a fresh one back there).
    /// Left for the cursor, it waited behind every other endpoint's backlog: after a
    /// restart with eight endpoints' backlogs of 10,000 draining, a quiet endpoint's
    /// fresh deliveries waited for 30,000 of them; left for the spill, behind every
    /// delivery spilled before it (a burst of 40,000 over ten endpoints held a trickle
    /// to others 2.7 s: helper A, session 43). At most [`MAX_AHEAD`] at a time, and
    /// within the bytes workers may hold. The scans skip it when they pass
    /// ([`Self::ahead`]).
    ///
    /// [`Pending::ordered_backlog`]: super::start::Pending::ordered_backlog
    pub(super) fn hands_ahead(
        &self,
        due: DueKey,
        now: u64,
        round_jobs: usize,
        within_ms: u64,
    ) -> bool {
        !self.hand_now(due)
            && due.due_ms <= now.saturating_add(within_ms)
            && self.ahead.len() + round_jobs < MAX_AHEAD
            && self.in_memory_bytes + self.out_bytes < MAX_IN_MEMORY_BYTES
            && self.quiet(due.ep)
    }

    /// Whether `ep` is quiet, as [`Self::hands_ahead`] says.
    fn quiet(&self, ep: EndpointId) -> bool {
        self.shares.get(&ep).is_none_or(|s| {
            s.held < AHEAD_HELD
                && s.rate.is_none_or(|drained| drained >= s.held)
                && s.disk_max.is_none_or(|d| self.hand_now(d))
                && s.deferred.is_empty()
                && s.on_disk_from.is_none()
                && s.giving_back.is_none()
        })
    }

    /// A FIFO endpoint's retry written under `due` while the cursor lags (the caller
    /// asks only then) and not handed over ahead: remembered
    /// ([`State::far_retries`]) if due more than [`RETRY_AHEAD_MS`] out and its
    /// endpoint quiet now (an endpoint draining a backlog of its own, failing, would
    /// fill the bound with retries that wait for the cursor anyway), keeping the
    /// [`MAX_FAR_RETRIES`] soonest. Nothing else: its key is in `due`, and one forgotten
    /// is brought by the loader.
    pub(super) fn remember_far_retry(&mut self, due: DueKey, val: DueVal, now: u64) {
        if self.hand_now(due)
            || due.due_ms <= now.saturating_add(RETRY_AHEAD_MS)
            || !self.quiet(due.ep)
        {
            return;
        }
        remember_soonest(&mut self.far_retries, due, val);
    }

    /// Hands over the remembered retries ([`State::far_retries`]) now due within
    /// [`RETRY_AHEAD_MS`] of `now`, as [`Self::hands_ahead`] would have as they were
    /// written: each is forgotten here, and goes to its worker (its key joining
    /// `ahead`) only if the cursor still lags, the scans have not passed it, its
    /// endpoint is still FIFO, delivering and quiet, within the bounds, and its key
    /// still in `due` (a pause, a deletion's scan, the expiry sweep or a replay may
    /// have moved it meanwhile, and each of those reads `due`, not this set: it is looked
    /// up there), and its event read. Any other is left to the loader, as it would have
    /// been. Bounded by [`SCAN_BUDGET`] a tick; the rest wait for the next.
    pub(super) fn hand_far_retries(&mut self, now: u64) {
        let within = now.saturating_add(RETRY_AHEAD_MS);
        if self
            .far_retries
            .first_key_value()
            .is_none_or(|(k, _)| k.due_ms > within)
        {
            return;
        }
        let lags = self.lags(now);
        let store = self.store.clone();
        let mut events = PageEvents::new(&store);
        let until = Instant::now() + SCAN_BUDGET;
        while let Some((&key, &val)) = self.far_retries.first_key_value() {
            if key.due_ms > within || Instant::now() >= until {
                break;
            }
            self.far_retries.pop_first();
            let Some(worker) = self
                .router
                .eps
                .get(&key.ep)
                .filter(|i| !i.ordered && !i.holds_retries && self.delivers(i))
                .map(|i| i.worker)
            else {
                continue;
            };
            if !lags
                || self.ahead.contains(&key)
                || key.seq < store.retention_floor()
                || !self.hands_ahead(key, now, self.out_count, RETRY_AHEAD_MS)
            {
                continue;
            }
            // Any read failing leaves it to the loader, which meets it again.
            if !matches!(store.has_due(key), Ok(true)) {
                continue;
            }
            let Ok(Some(event)) = events.get(key.seq) else {
                continue;
            };
            self.load_job(worker, key, val, event);
        }
        self.flush_jobs();
    }

    /// Queues a delivery the loader brings for `worker`, counted in this tick's
    /// `out_count` and `out_bytes` (which the bounds read before the jobs are flushed).
    fn load_job(&mut self, worker: usize, due: DueKey, val: DueVal, event: Arc<EventRecord>) {
        self.out_count += 1;
        self.out_bytes += event.encoded().len();
        self.out_jobs[worker].push(Job {
            event,
            ep: due.ep,
            due,
            val,
        });
    }

    /// A delivery written under `due` and not handed over: one a scan will bring (at
    /// or above the cursor, or in the spilled range) and due within the loader's
    /// horizon of `now` waits for it, and its endpoint is not quiet until that scan
    /// passes it ([`Share::disk_max`]). One due later (a retry's wait, a `min_delay`) is
    /// not overtaken by a fresh delivery due now (counted, a single failure's retry
    /// would keep an endpoint from being quiet until the cursor had caught up and gone
    /// past its time).
    pub(super) fn left_on_disk(&mut self, due: DueKey, now: u64) {
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
                // One whose event is not read is kept back: the scan goes on.
                if key.seq >= sp.fence {
                    let _ = self.hand_over(key, val, &mut events, &mut cleanup, &mut delta);
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
    /// deleted endpoint fail, a page a tick, whatever room workers have.
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
            // Not while fresh deliveries spill (the spill's to load: read back too, one
            // would go out twice), but for a deleted endpoint's backlog, read back past
            // the spill's range ([`Self::read_back`]) to be failed: its keys waited on
            // disk, pending, for as long as others' traffic kept workers full.
            if room > 0
                && s.deferred.len() < PAGE
                && s.on_disk_from.is_some()
                && (self.spill.is_none() || !exists)
                && Instant::now() < read_until
            {
                self.read_back(ep);
            }
            let mut taken = 0;
            // One by one: the cap counts their events as they go. A deleted endpoint's
            // fail, which takes no worker memory: waiting for room, they waited on other
            // endpoints' traffic to drain (helper lanes, session 55).
            while taken < room && (!exists || !self.memory_full(0)) {
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
                // which clears them): only those are looked up. One the look-up fails
                // for waits: handed over unchecked, a retired one went out twice.
                if holds_retries {
                    match self.store.has_due(key) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) if e.lasting() => {
                            loader_failed(
                                &self.loader_failures,
                                "cannot check a kept-back delivery: not handed over, left in `due` until the next start",
                                &e,
                            );
                            continue;
                        }
                        Err(e) => {
                            loader_failed(
                                &self.loader_failures,
                                "cannot check a kept-back delivery: kept back, checked again at the next tick",
                                &e,
                            );
                            self.keep_back(key, val);
                            break;
                        }
                    }
                }
                // Its event not read, it is kept back again (first): the endpoint's
                // next ones wait behind it until the next tick.
                if !self.hand_over(key, val, &mut events, &mut cleanup, &mut delta) {
                    break;
                }
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
    /// there up to the cursor, [`REFILL_SCAN`] at most per call. Those the spill's scan
    /// has yet to load are its own, and left to it ([`scans_passed`]): read back too,
    /// one went out twice, or a deleted endpoint's was failed twice and pending counted
    /// down twice. (Only a deleted endpoint's backlog is read back while fresh
    /// deliveries spill: the spill's scan fails its keys as it meets them, but leaves a
    /// live endpoint's on disk for the read-back, which must not have passed them.)
    fn read_back(&mut self, ep: EndpointId) {
        let Some(s) = self.shares.get(&ep) else {
            return;
        };
        let Some(from) = s.on_disk_from else {
            return;
        };
        let most = (2 * PAGE).saturating_sub(s.deferred.len());
        let (cursor, spill) = (self.cursor, self.spill);
        let (page, next) = match self
            .store
            .due_where(from, Some(cursor), REFILL_SCAN, most, |k| {
                k.ep == ep && scans_passed(*k, cursor, spill)
            }) {
            Ok(p) => p,
            Err(e) => {
                loader_failed(
                    &self.loader_failures,
                    "cannot read back a backlog left on disk: read again at the next tick",
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
            // Its keys stay in `due`: those above the cursor meet it again, those below
            // (it has passed them) the loader of the next start.
            Err(e) => loader_failed(
                &self.loader_failures,
                "loader clean-up write failed: the deliveries it dropped, expired or paused \
                 stay in `due`, those the loader passed until the next start",
                &e,
            ),
        }
    }

    /// A page of the due index from `from` to `until_ms`; `None` (logged) on a read error.
    fn read_due(&self, from: DueKey, until_ms: u64) -> Option<Vec<(DueKey, DueVal)>> {
        match self.store.due_range(from, until_ms, PAGE) {
            Ok(p) => Some(p),
            Err(e) => {
                loader_failed(
                    &self.loader_failures,
                    "loader cannot read the due index: read again at the next tick",
                    &e,
                );
                None
            }
        }
    }

    /// Sends one loaded delivery to its worker (or pauses/drops it). `false` when its
    /// event could not be read for now: the key is kept back ([`Self::keep_back`]),
    /// read again when the kept-back keys are handed over at the next tick (the cursor
    /// and the spill's scan have passed it), and the endpoint's later keys wait behind
    /// it. One whose event is corrupt is left on disk until the next start (kept back,
    /// it held the endpoint's every later delivery for good); a disabled endpoint's is
    /// paused all the same.
    #[must_use = "a delivery whose event was not read is kept back"]
    fn hand_over(
        &mut self,
        key: DueKey,
        val: DueVal,
        events: &mut PageEvents<'_>,
        cleanup: &mut store::Batch,
        delta: &mut Delta,
    ) -> bool {
        if !self.ahead.is_empty() && self.ahead.contains(&key) {
            // Handed over before the cursor (or the spill's scan) reached it; its worker
            // reports it. (Kept until then: an endpoint's backlog given back is read
            // back from disk below the cursor, this one among it while in flight.)
            return true;
        }
        let Some(info) = self.router.eps.get(&key.ep) else {
            // The endpoint no longer exists: nothing can deliver this.
            cleanup.del_due(&self.store, key);
            cleanup.fail_dropped(&self.store, key.ep, key.seq);
            delta.pending -= 1;
            return true;
        };
        if key.seq < self.store.retention_floor() {
            // Past retention (its event is gone or going): expired.
            cleanup.del_due(&self.store, key);
            delta.pending -= 1;
            delta.expired += 1;
            return true;
        }
        let delivers = self.delivers(info);
        if delivers && self.keeps_back(key.ep, key) {
            // Not read now: its event is read when it is handed over.
            self.keep_back(key, val);
            return true;
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
                return true;
            }
            // Read only to drop one whose event is gone: its resume reads it again.
            Err(e) if !delivers => {
                loader_failed(
                    &self.loader_failures,
                    "cannot read the event of a delivery to pause: paused all the same",
                    &e,
                );
                cleanup.del_due(&self.store, key);
                cleanup.pause(&self.store, key.ep, key.seq, val);
                delta.paused += 1;
                return true;
            }
            Err(e) if e.lasting() => {
                loader_failed(
                    &self.loader_failures,
                    "cannot read an event to hand over: its delivery is left on disk until the next start",
                    &e,
                );
                return true;
            }
            Err(e) => {
                loader_failed(
                    &self.loader_failures,
                    "cannot read an event to hand over: its delivery is kept back, read again at the next tick",
                    &e,
                );
                self.keep_back(key, val);
                return false;
            }
        };
        if !delivers {
            cleanup.del_due(&self.store, key);
            cleanup.pause(&self.store, key.ep, key.seq, val);
            delta.paused += 1;
            return true;
        }
        self.load_job(info.worker, key, val, event);
        true
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
    pub(super) fn load(&mut self) {
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
        // Not before the loader's first load (its cursor still at the start of the
        // index): until then no endpoint holds anything and each looks quiet, one about
        // to drain a backlog from before the start too, and the start's census
        // remembered every FIFO endpoint's retries (those of a busy one would all have
        // gone ahead, within MAX_AHEAD, at the first tick).
        if !self.far_retries.is_empty() && self.cursor != DueKey::MIN {
            self.hand_far_retries(now_ms());
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
                // One whose event is not read is kept back: the cursor goes on (stopped
                // there, it held every endpoint behind one failing read).
                let _ = self.hand_over(key, val, &mut events, &mut cleanup, &mut delta);
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
    use crate::commit::route::tests::info;
    use crate::commit::tests::{deliveries, jobs_sent, state};
    use crate::commit::HORIZON_MS;
    use crate::store::{DueVal, Fault};

    const NONE: [DueKey; 0] = [];

    /// A cursor past `keys` (and the loader's horizon beyond the first).
    fn passed(keys: &[DueKey]) -> DueKey {
        DueKey {
            due_ms: keys[0].due_ms + HORIZON_MS,
            seq: 0,
            ep: 0,
        }
    }

    /// `keys` kept back, the loader's cursor past them.
    fn kept_back(st: &mut State, keys: &[DueKey]) {
        st.cursor = passed(keys);
        for &k in keys {
            st.keep_back(k, DueVal::NEW);
        }
    }

    #[test]
    fn a_delivery_whose_event_cannot_be_read_is_kept_back_and_handed_over_at_the_next_tick() {
        // Loaded by the cursor, by the spill's scan, or from the kept-back keys: the
        // first event read fails, the endpoint's next delivery waits behind it.
        for from in ["cursor", "spill", "kept back"] {
            let dir = tempfile::tempdir().unwrap();
            let (store, keys) = deliveries(dir.path(), 2, 0);
            let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
            let past = passed(&keys);
            match from {
                "spill" => {
                    st.cursor = past;
                    st.spill = Some(Spill {
                        fence: 0,
                        scan: DueKey::MIN,
                    });
                }
                "kept back" => kept_back(&mut st, &keys),
                _ => {}
            }
            store.fail_event_reads(1, Fault::Transient);
            st.load();
            assert_eq!(jobs_sent(&mb), NONE, "{from}: not read");
            assert_eq!(st.deferred, 2, "{from}: both kept back");
            assert!(
                st.cursor > keys[1] && st.spill.is_none(),
                "{from}: the scans went on"
            );
            st.load();
            assert_eq!(
                jobs_sent(&mb),
                keys,
                "{from}: read at the next tick, in order"
            );
            st.load();
            assert_eq!(jobs_sent(&mb), NONE, "{from}: handed over once");
            assert_eq!(st.deferred, 0);
        }
    }

    #[test]
    fn a_kept_back_delivery_whose_look_up_fails_waits_for_the_next_tick() {
        // An ordered endpoint's kept-back keys are looked up before they are handed
        // over: the first was retired meanwhile (its worker made the head's retry
        // itself). Its look-up fails: handed over unchecked, it went out twice.
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 2, 1);
        let mut ordered = info(1, &["t"], None);
        (ordered.ordered, ordered.holds_retries) = (true, true);
        let (mut st, mb) = state(store.clone(), vec![ordered]);
        kept_back(&mut st, &keys);
        store.fail_due_lookups(1);
        st.load();
        assert_eq!(jobs_sent(&mb), NONE);
        assert_eq!(st.deferred, 2);
        st.load();
        assert_eq!(
            jobs_sent(&mb),
            [keys[1]],
            "the retired one is not handed over"
        );
        st.load();
        assert_eq!(jobs_sent(&mb), NONE);
        assert_eq!(st.deferred, 0);
    }

    #[test]
    fn a_deleted_endpoint_s_kept_back_keys_fail_while_workers_are_full() {
        // Its share was full: its keys were kept back. Then it was deleted, and other
        // endpoints' deliveries fill worker memory. Failing them takes no memory, so
        // they fail at the next tick, not once others' traffic has drained.
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 2, 0);
        let (mut st, mb) = state(
            store.clone(),
            vec![info(1, &["t"], None), info(2, &["t"], None)],
        );
        kept_back(&mut st, &keys);
        st.router.remove(1);
        st.in_memory = st.cap();
        assert!(st.memory_full(0));
        st.stats.pending = 2;
        st.load();
        assert_eq!(jobs_sent(&mb), NONE);
        assert_eq!(st.deferred, 0, "failed, not kept back");
        for &k in &keys {
            assert!(!store.has_due(k).unwrap());
            assert!(store.is_failed(1, k.seq).unwrap());
        }
        assert_eq!(st.stats.pending, 0);
        assert!(!st.shares.contains_key(&1), "its share is gone with it");
    }

    #[test]
    fn a_deleted_endpoint_s_backlog_on_disk_fails_while_fresh_deliveries_spill() {
        // Its backlog past the keys kept back waits on disk: two keys the cursor passed,
        // and two the spill's scan has yet to load. Then it was deleted, and workers are
        // full: fresh deliveries spill. Read back only while nothing spilled, its keys
        // stayed pending for as long as others' traffic kept workers full; read back
        // with the spilled ones, those were failed twice (again by the spill's scan),
        // pending counted down twice.
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 4, 0);
        let (mut st, mb) = state(
            store.clone(),
            vec![info(1, &["t"], None), info(2, &["t"], None)],
        );
        st.cursor = passed(&keys);
        st.spill = Some(Spill {
            fence: keys[2].seq,
            scan: DueKey::MIN,
        });
        st.shares.entry(1).or_default().on_disk_from = Some(keys[0]);
        st.on_disk += 1;
        st.router.remove(1);
        st.in_memory = st.cap();
        // Others' deliveries pending too: none counted down for the deletion's.
        st.stats.pending = 4 + 5;
        st.load();
        assert!(
            st.spill.is_some(),
            "workers are full: nothing spilled loads"
        );
        for &k in &keys[..2] {
            assert!(!store.has_due(k).unwrap(), "read back and failed");
            assert!(store.is_failed(1, k.seq).unwrap());
        }
        for &k in &keys[2..] {
            assert!(store.has_due(k).unwrap(), "the spill's, left to it");
        }
        assert_eq!(st.stats.pending, 2 + 5);
        assert_eq!((st.on_disk, st.deferred), (0, 0));
        assert!(!st.shares.contains_key(&1), "its share is gone with it");
        // Room: the spill's scan fails the rest, once.
        st.in_memory = 0;
        st.load();
        assert!(st.spill.is_none());
        assert_eq!(jobs_sent(&mb), NONE);
        for &k in &keys[2..] {
            assert!(!store.has_due(k).unwrap());
            assert!(store.is_failed(1, k.seq).unwrap());
        }
        assert_eq!(st.stats.pending, 5);
    }

    #[test]
    fn a_disabled_endpoint_s_delivery_whose_event_cannot_be_read_is_paused_all_the_same() {
        // The loader reads it only to drop one whose event is gone; left in `due`, the
        // cursor past it, its enable did not bring it back before the next start.
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 1, 0);
        let mut disabled = info(1, &["t"], None);
        disabled.enabled = false;
        let (mut st, mb) = state(store.clone(), vec![disabled]);
        store.fail_event_reads(1, Fault::Transient);
        st.load();
        assert_eq!(jobs_sent(&mb), NONE);
        assert!(!store.has_due(keys[0]).unwrap());
        assert_eq!(
            store.paused_of(1, 0, 8).unwrap(),
            [(keys[0].seq, DueVal::NEW)]
        );
        assert_eq!(st.stats.paused, 1);
    }

    #[test]
    fn a_delivery_whose_event_is_corrupt_is_left_on_disk_until_the_next_start() {
        // Kept back, it would hold its endpoint's every later delivery for good.
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = deliveries(dir.path(), 2, 0);
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        store.fail_event_reads(1, Fault::Corrupt);
        st.load();
        assert_eq!(jobs_sent(&mb), [keys[1]]);
        assert_eq!(st.deferred, 0);
        st.load();
        assert_eq!(jobs_sent(&mb), NONE);
        assert!(store.has_due(keys[0]).unwrap());
        // The next start's loader reads it again.
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        st.load();
        assert_eq!(jobs_sent(&mb), keys);
    }

    /// A worker's mailbox.
    type Mailbox = crate::shard::Mailbox<crate::worker::WorkerMsg>;

    /// Endpoint 1's first delivery (due now, the cursor at the start of the index: it
    /// lags) failed, its retry due `after_ms` later, reported in a round (`set_up` on
    /// the state first): the state, its worker's mailbox (what the round sent taken
    /// out), the store, the retry's key, and the delivery's time.
    fn failed_once(
        dir: &std::path::Path,
        after_ms: u64,
        set_up: impl FnOnce(&mut State),
    ) -> (State, Mailbox, Store, DueKey, u64) {
        use crate::commit::tests::outcome;
        use crate::commit::{CommitMsg, Next};
        use crate::store::DeliveryState;

        let (store, keys) = deliveries(dir, 1, 0);
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        st.stats.pending = 1;
        set_up(&mut st);
        let at = keys[0].due_ms;
        let retry = Next::Retry {
            due_ms: at + after_ms,
        };
        let o = outcome(&store, keys[0], retry, DeliveryState::Retrying);
        st.round(&mut vec![CommitMsg::Outcomes(vec![o])], &mut None);
        let key = DueKey {
            due_ms: at + after_ms,
            ..keys[0]
        };
        assert!(store.has_due(key).unwrap());
        let _ = jobs_sent(&mb);
        (st, mb, store, key, at)
    }

    #[test]
    fn a_quiet_endpoint_s_far_retry_goes_ahead_of_a_lagging_cursor_once_within_ten_seconds() {
        // Due 15 s out while the cursor lags: not handed over as it is written (its
        // worker's wheel would hold it 15 s), but remembered; 5 s later, within 10 s of
        // its time, it goes to its worker ahead of the cursor, once. Before, it waited
        // for the cursor to pass every key below it.
        let dir = tempfile::tempdir().unwrap();
        let (mut st, mb, _store, key, at) = failed_once(dir.path(), 15_000, |_| {});
        assert_eq!(st.far_retries.keys().copied().collect::<Vec<_>>(), [key]);
        st.hand_far_retries(at + 4_000);
        assert_eq!(jobs_sent(&mb), NONE, "not yet within 10 s");
        st.hand_far_retries(at + 5_000);
        assert_eq!(jobs_sent(&mb), [key]);
        assert!(st.ahead.contains(&key), "the scans skip it");
        assert!(st.far_retries.is_empty());
        st.hand_far_retries(at + 6_000);
        assert_eq!(jobs_sent(&mb), NONE, "once");
        // One due within 10 s goes at once, as before: nothing remembered.
        let dir = tempfile::tempdir().unwrap();
        let (st, _mb, _store, _key, _) = failed_once(dir.path(), 9_000, |_| {});
        assert!(st.far_retries.is_empty());
    }

    #[test]
    fn a_far_retry_is_remembered_only_of_a_quiet_fifo_endpoint_while_the_cursor_lags() {
        type SetUp = fn(&mut State);
        let set_ups: [(&str, SetUp); 3] = [
            ("not lagging", |st| {
                st.cursor = DueKey {
                    due_ms: now_ms() + HORIZON_MS,
                    seq: 0,
                    ep: 0,
                };
            }),
            ("busy", |st| {
                st.shares.entry(1).or_default().held = AHEAD_HELD + 1;
            }),
            ("ordered", |st| {
                let i = st.router.eps.get_mut(&1).unwrap();
                (i.ordered, i.holds_retries) = (true, true);
            }),
        ];
        for (what, set_up) in set_ups {
            let dir = tempfile::tempdir().unwrap();
            let (st, _mb, _store, _key, _) = failed_once(dir.path(), 15_000, set_up);
            assert!(st.far_retries.is_empty(), "{what}");
        }
    }

    #[test]
    fn a_remembered_retry_is_left_to_the_loader_unless_all_still_holds_within_ten_seconds() {
        // Each reads `due`, not the reminder: moved by a pause, a replay or the sweep,
        // it is not handed over from memory; nor once the cursor has caught up (the
        // loader brings it at its time), its endpoint disabled, deleted, made ordered or
        // busy, or its event past retention (checked before its event is read, which
        // the reader would hide too). Forgotten, its key stays for the loader.
        type Change = fn(&mut State, &Store, DueKey);
        let changes: [(&str, Change); 7] = [
            ("moved", |_, store, key| {
                let mut b = store.batch();
                b.del_due(store, key);
                store.commit(b, false).unwrap();
            }),
            ("caught up", |st, _, key| {
                st.cursor = DueKey {
                    due_ms: key.due_ms - 5_000 + HORIZON_MS,
                    seq: 0,
                    ep: 0,
                };
            }),
            ("disabled", |st, _, _| {
                st.router.eps.get_mut(&1).unwrap().enabled = false;
            }),
            ("deleted", |st, _, _| {
                st.router.remove(1);
            }),
            ("ordered", |st, _, _| {
                st.router.eps.get_mut(&1).unwrap().ordered = true;
            }),
            ("busy", |st, _, _| {
                st.shares.entry(1).or_default().held = AHEAD_HELD;
            }),
            ("expired", |_, store, key| {
                store.set_retention_floor(key.seq + 1)
            }),
        ];
        for (what, change) in changes {
            let dir = tempfile::tempdir().unwrap();
            let (mut st, mb, store, key, at) = failed_once(dir.path(), 15_000, |_| {});
            change(&mut st, &store, key);
            st.hand_far_retries(at + 5_000);
            assert_eq!(jobs_sent(&mb), NONE, "{what}");
            assert!(st.far_retries.is_empty() && st.ahead.is_empty(), "{what}");
            if what != "moved" {
                assert!(store.has_due(key).unwrap(), "{what}: left in `due`");
            }
        }
        // A read failing leaves it to the loader too.
        for fault in ["due", "event"] {
            let dir = tempfile::tempdir().unwrap();
            let (mut st, mb, store, key, at) = failed_once(dir.path(), 15_000, |_| {});
            match fault {
                "due" => store.fail_due_lookups(1),
                _ => store.fail_event_reads(1, Fault::Transient),
            }
            st.hand_far_retries(at + 5_000);
            assert_eq!(jobs_sent(&mb), NONE, "{fault}");
            assert!(st.far_retries.is_empty() && st.ahead.is_empty());
            assert!(store.has_due(key).unwrap());
        }
    }

    #[test]
    fn retries_in_due_at_a_start_go_ahead_of_the_lagging_cursor_after_its_first_load_if_quiet() {
        // At a start, endpoint 2 has a backlog of its own (AHEAD_HELD + 1 deliveries
        // due now) and a retry due in 5 s; endpoint 1 only retries, due in 5 s and in
        // 15 s; all above the backlog in the index, and workers have room for all but
        // the backlog's last key: the cursor lags once it has loaded the rest. The
        // start's census remembers the three retries. At the first tick nothing but the
        // backlog goes (before its load, endpoint 2 held nothing and looked quiet: its
        // retry went ahead too); at the next, 1's retry due in 5 s goes ahead, 2's is
        // forgotten (2 is busy) and left to the loader, 1's later one is still
        // remembered. Before, all three waited for the cursor.
        use crate::commit::start::count_pending;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = now_ms();
        let seq0 = crate::store::seq_floor(now);
        let retry = DueVal {
            attempts: 1,
            first: 0,
        };
        let mut b = store.batch();
        let mut put = |i: u64, due_ms: u64, ep: EndpointId, val: DueVal| {
            let seq = seq0 + i;
            b.put_event(
                &store,
                &EventRecord::new(seq, None, "t", None, now, &[ep], b"{}"),
            );
            let key = DueKey { due_ms, seq, ep };
            b.put_due(&store, key, val);
            key
        };
        let backlog: Vec<DueKey> = (0..AHEAD_HELD as u64 + 1)
            .map(|i| put(i, now - 1_000, 2, DueVal::NEW))
            .collect();
        let n = backlog.len() as u64;
        let soon = put(n, now + 5_000, 1, retry);
        let busy = put(n + 1, now + 5_000, 2, retry);
        let later = put(n + 2, now + 15_000, 1, retry);
        store.commit(b, false).unwrap();
        let routes = vec![info(1, &["t"], None), info(2, &["t"], None)];
        let p = count_pending(&store, &routes, 7 * 86_400_000).unwrap();
        let (mut st, mb) = state(store.clone(), routes);
        st.far_retries = p.far_retries;
        assert_eq!(st.far_retries.len(), 3);
        st.in_memory = st.cap() - AHEAD_HELD;
        st.load();
        assert_eq!(jobs_sent(&mb), backlog[..AHEAD_HELD]);
        assert!(st.lags(now_ms()) && st.far_retries.len() == 3);
        st.load();
        assert_eq!(jobs_sent(&mb), [soon]);
        assert!(st.ahead.contains(&soon));
        assert_eq!(st.far_retries.keys().copied().collect::<Vec<_>>(), [later]);
        assert!(store.has_due(busy).unwrap(), "left to the loader");
    }

    #[test]
    fn far_retries_keep_the_soonest_at_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = deliveries(dir.path(), 0, 0);
        let (mut st, _mb) = state(store, vec![info(1, &["t"], None)]);
        let now = now_ms();
        let at = |i: usize| DueKey {
            due_ms: now + RETRY_AHEAD_MS + 1_000 + i as u64,
            seq: i as u64,
            ep: 1,
        };
        for i in 1..=MAX_FAR_RETRIES {
            st.remember_far_retry(at(i), DueVal::NEW, now);
        }
        assert_eq!(st.far_retries.len(), MAX_FAR_RETRIES);
        // Past the bound: the latest is left to the loader, whichever it is.
        st.remember_far_retry(at(MAX_FAR_RETRIES + 1), DueVal::NEW, now);
        st.remember_far_retry(at(0), DueVal::NEW, now);
        assert_eq!(st.far_retries.len(), MAX_FAR_RETRIES);
        assert_eq!(st.far_retries.keys().next(), Some(&at(0)));
        assert_eq!(st.far_retries.keys().last(), Some(&at(MAX_FAR_RETRIES - 1)));
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
}
