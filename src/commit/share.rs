//! The in-memory cap and each endpoint's share of it ([`Share`]): how many deliveries,
//! and bytes of their events, workers may hold ([`in_memory_cap`],
//! [`MAX_IN_MEMORY_BYTES`]), how much of that one endpoint may take, and what happens to
//! the rest: keys kept back in memory ([`Share::deferred`]), a backlog left on disk
//! ([`Share::on_disk_from`]), deliveries a slow endpoint's worker gives back
//! ([`State::ask_give_back`]).
//!
//! It decides and counts: it must not move the loader's cursor or read the due index
//! (the [`loader`](super::loader) does, and reads a backlog left on disk back), nor write
//! the store (a key kept back or left on disk keeps its `due` entry as it is).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::store::{DueKey, DueVal, EndpointId};
use crate::worker::WorkerMsg;

use super::loader::{scans_passed, Spill};
use super::{State, PAGE};

/// Deliveries held in worker memory before the loader stops loading, at least…
///
/// Each costs ~1.2 KiB of resident memory at `max` (its event, and the allocator's
/// pages it keeps in use). A lower floor saves memory; in sessions 2–7 20,000 and 25,000
/// cost `retry-storm` and `backlog` 14–30% more CPU (fresh deliveries spilled to disk
/// and read back). Session 43 measured 30,000 against 50,000: `max` peaked 25–30 MiB
/// lower at the same rates (~1.5% more CPU per event), `backlog` and `retry-storm` the
/// same (docs/perf/history.md, "Session 43").
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
pub(super) fn endpoint_share(cap: usize) -> usize {
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
pub(super) const RATE_EVERY: Duration = Duration::from_secs(1);

/// Due keys kept back from endpoints at their share, at most (about 50 bytes each in
/// memory: 3 MiB). When they reach it, the slow endpoint ([`Share::slow`]) with the most
/// leaves the end of its own on disk ([`Share::on_disk_from`]); with none (several
/// draining a backlog fast, together), workers count as full, and the loader waits as
/// it does for the cap.
pub const MAX_DEFERRED: usize = 1 << 16;

/// One endpoint's part of the in-memory count.
#[derive(Default)]
pub(super) struct Share {
    /// Its deliveries handed over and not yet reported.
    pub(super) held: usize,
    /// Its deliveries due (below the cursor) but kept back while it holds its share,
    /// in key order: handed over as it drains, before any later one of it.
    pub(super) deferred: BTreeMap<DueKey, DueVal>,
    /// Its kept-back backlog from this key on is on disk only: every key of it here
    /// or above and below the cursor is neither in `deferred` nor in a worker (but
    /// those handed over ahead of the cursor, which a read-back leaves out). Read back
    /// into `deferred` a page at a time as it drains ([`State::read_back`]). Without
    /// it, one endpoint's backlog past [`MAX_DEFERRED`] (a receiver slow for an hour at
    /// 80 events/s) made the workers count as full, and every other endpoint's
    /// deliveries waited on disk until it drained.
    pub(super) on_disk_from: Option<DueKey>,
    /// The highest key handed over to its worker since this entry was made (but
    /// those handed over ahead of the cursor): a key left on disk is always above it. A
    /// FIFO queue takes a second copy as a second delivery; an ordered one takes it as
    /// the same, but a `PUT` may make it FIFO before the copy is read back.
    pub(super) handed_max: DueKey,
    /// The highest key of it written for a scan to bring (at or above the cursor, or in
    /// the spilled range), due within the loader's horizon, and not handed over (a
    /// first attempt or a retry waiting on disk; one handed over ahead and given back;
    /// one resumed or replayed; the present, for one made ordered
    /// while the scans lag): until that scan has passed it, the endpoint is not quiet
    /// ([`State::hands_ahead`]), so its fresh deliveries do not go before its own older
    /// ones.
    pub(super) disk_max: Option<DueKey>,
    /// Its deliveries reported since the rate was last taken.
    pub(super) drained: usize,
    /// Its deliveries reported in the last [`RATE_EVERY`]; `None` unless it held some
    /// all through it (a backlog's first moments say nothing yet).
    pub(super) rate: Option<usize>,
    /// What it held when that window began ([`Share::slow`]).
    rate_held: usize,
    /// What it held when the current window began.
    start_held: usize,
    /// The give-back asked of its worker and not yet answered ([`State::ask_give_back`]):
    /// meanwhile nothing more of it is handed over, so that what the worker gives back
    /// is every key it holds from some key on.
    pub(super) giving_back: Option<u64>,
}

impl Share {
    /// `due` was left on disk for a scan to bring, the scans standing at `cursor` and
    /// `spill`. The highest key still to be brought ([`Self::disk_max`], replaced once
    /// the scan that was to bring it has passed it) stands for all of them only while
    /// it is: a key the cursor passed (written above it before a spill began) says
    /// nothing of a spilled key below it that the spill's scan has yet to load, and kept
    /// as the highest, it let the endpoint's later fresh deliveries go ahead of that one
    /// (helper R's review, session 43). Once replaced, the highest is safe again: the
    /// cursor does not move while a spill is under way, so a key waiting for it is
    /// brought after every spilled one, and a spilled key after every smaller one.
    pub(super) fn note_left_on_disk(&mut self, due: DueKey, cursor: DueKey, spill: Option<Spill>) {
        let brought = self
            .disk_max
            .is_some_and(|d| scans_passed(d, cursor, spill));
        self.disk_max = Some(match self.disk_max {
            Some(d) if !brought => d.max(due),
            _ => due,
        });
    }

    /// Nothing of it held, kept back, or left on disk.
    pub(super) fn idle(&self) -> bool {
        self.held == 0
            && self.deferred.is_empty()
            && self.on_disk_from.is_none()
            && self.giving_back.is_none()
    }

    /// Whether at its last second's rate it takes more than [`SLOW_SECS`] to drain
    /// what it holds, and took as long for what it held when that second began: an
    /// endpoint fed a trickle that a burst fills at once is not slow before a whole
    /// second shows what it drains with work to do.
    pub(super) fn slow(&self) -> bool {
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
    pub(super) fn limit(&self, cap: usize) -> usize {
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
    pub(super) fn take_rate(&mut self) {
        self.rate = (self.start_held > 0 && self.held > 0).then_some(self.drained);
        self.rate_held = self.start_held;
        self.start_held = self.held;
        self.drained = 0;
    }
}

impl State {
    pub(super) fn cap(&self) -> usize {
        in_memory_cap(self.router.eps.len())
    }

    /// Whether workers hold as many deliveries as they may, `more` about to be handed
    /// over ([`Self::memory_full`]), or [`MAX_DEFERRED`] keys are kept back.
    pub(super) fn workers_full(&self, more: usize) -> bool {
        self.memory_full(more) || self.deferred >= MAX_DEFERRED
    }

    /// Whether workers hold [`in_memory_cap`] deliveries or [`MAX_IN_MEMORY_BYTES`] of
    /// their events, `more` about to be handed over (and the loader's, counted as it
    /// goes).
    pub(super) fn memory_full(&self, more: usize) -> bool {
        self.in_memory + self.out_count + more >= self.cap()
            || self.in_memory_bytes + self.out_bytes >= MAX_IN_MEMORY_BYTES
    }

    /// Whether `ep`'s delivery under `key`, about to be handed over, is kept back: its
    /// endpoint holds its share while workers hold half the cap, or a delivery of it
    /// before this one is kept back already.
    pub(super) fn keeps_back(&self, ep: EndpointId, key: DueKey) -> bool {
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
    pub(super) fn keep_back(&mut self, key: DueKey, val: DueVal) {
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
    /// what it has handed over stay (a worker may hold a key above one kept back: a
    /// fresh delivery due before a loaded one). With no such endpoint nothing
    /// moves, and workers count as full ([`Self::workers_full`]): endpoints draining a
    /// backlog fast read theirs back slower than the loader and the spill bring it
    /// (`backlog`'s drain ran at 34,600 deliveries/s against 101,000 when the endpoint
    /// with half the keys went to disk too).
    pub(super) fn leave_on_disk(&mut self) {
        // At most MAX_DEFERRED / PAGE of them have more than a page.
        let mut candidates: Vec<(usize, EndpointId)> = self
            .shares
            .iter()
            .filter(|(_, s)| s.deferred.len() > PAGE && s.slow())
            .map(|(&ep, s)| (s.deferred.len(), ep))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (_, ep) in candidates {
            // An ordered endpoint's too: its queue takes a second copy of a delivery as
            // the same one, but a `PUT` may make it FIFO before the copy is read back
            // (session 48: a head's retry in flight went out twice). A held head handed
            // over at a start went ahead of the cursor and does not raise the bound.
            let Some(s) = self.shares.get_mut(&ep) else {
                continue;
            };
            let mut left = 0usize;
            let mut lowest = None;
            while s.deferred.len() > PAGE {
                let Some(entry) = s.deferred.last_entry() else {
                    break;
                };
                if *entry.key() <= s.handed_max {
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
    /// to give the rest back ([`WorkerMsg::GiveBack`]): the limit applies to what is
    /// handed over from then on, so hung endpoints whose backlogs all came within their
    /// first second, before any was measured slow, filled the cap between them and held
    /// it until their receivers answered (six × 40,000: a healthy endpoint waited
    /// 120 s). Until the worker answers, nothing more of the endpoint is handed over
    /// ([`Share::giving_back`]). Asked once per rate window at most.
    pub(super) fn ask_give_back(&mut self) {
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
    pub(super) fn given_back(
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
