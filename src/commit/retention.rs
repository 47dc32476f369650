//! Retention: the floor below which events and attempts are range-deleted and paused
//! deliveries expire ([`State::retention`]; due ones expire as the loader reaches
//! them), and the scrub of an idle store ([`Scrub`]).
//!
//! It must not hold the committer: the scrub runs on a thread of its own, stopped at
//! shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{seq_floor, DueKey, EndpointId, Seq, Store};
use crate::worker::now_ms;

use super::{Delta, State, PAGE, WRITE_FAILURE_LOG_EVERY};

/// How long the store must have had no write before it is scrubbed
/// ([`Store::scrub_below`]).
pub(super) const SCRUB_IDLE: Duration = Duration::from_secs(60);

/// When to scrub the store: once per idle spell of [`SCRUB_IDLE`] (no write at all), on
/// a thread of its own so that the committer answers producers meanwhile.
pub(super) struct Scrub {
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
    pub(super) fn new() -> Scrub {
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
    pub(super) fn stop(&mut self, store: &Store) {
        if self.running.load(Ordering::Acquire) {
            store.cancel_background_work();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Begins a scrub below `floor` if the store has had no write for `idle` and has not
    /// been scrubbed since its last write. Returns whether it began one.
    pub(super) fn tick(&mut self, store: &Store, floor: Seq, idle: Duration) -> bool {
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

impl State {
    /// Moves the retention floor to `now - retention`: events and attempts below it are
    /// range-deleted, paused deliveries below it expire (due ones expire as the loader
    /// reaches them), and compactions drop index and idempotency entries below it.
    pub(super) fn retention(&mut self) {
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
            Err(e) => self.retention_failed("cannot read the log", &e),
        }
        let mut expired = 0u64;
        // Endpoints whose paused set could not be read, and the first error: one line
        // for the run, not one per endpoint (thousands on a failing disk, each run).
        let (mut unread, mut first_error) = (0u64, None);
        let eps: Vec<EndpointId> = self.router.eps.keys().copied().collect();
        for ep in eps {
            let mut after = 0;
            loop {
                let page = match self.store.paused_of(ep, after, PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        unread += 1;
                        first_error.get_or_insert(e);
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
        if let Some(e) = first_error {
            let what = format!(
                "cannot read the paused deliveries of {unread} endpoints (those past it \
                 expire at a later run)"
            );
            self.retention_failed(&what, &e);
        }
        if let Err(e) = self.store.commit(batch, false) {
            self.retention_failed("delete failed (tried again at the next run)", &e);
            return;
        }
        if let Err(e) = self.store.drop_files_before(floor) {
            self.retention_failed(
                "cannot drop old files (their space is freed later, by compaction)",
                &e,
            );
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

    /// Logs a store failure of retention's, at most once each [`WRITE_FAILURE_LOG_EVERY`]
    /// with the failures since: retention runs up to ten times a second (a short
    /// `retention`), and under a full or failing disk each run failed again.
    fn retention_failed(&mut self, what: &str, e: &crate::store::StoreError) {
        if let Some(failures) = self.retention_failures.note(WRITE_FAILURE_LOG_EVERY) {
            tracing::error!(
                error = %e,
                failures,
                "retention: {what}; a full or failing disk: free space, or check the disk \
                 (failures: retention's store failures since the last such line)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::route::tests::info;
    use crate::commit::tests::{outcome, state};
    use crate::commit::{CommitMsg, Next};
    use crate::store::{DeliveryState, DisabledBy, DueVal, EventRecord};
    use crate::worker::{Switch, WorkerMsg};

    /// Endpoint 1 with two deliveries in its worker, of an event 10 s old and one of
    /// now, disabled as the first one's attempt ends: its worker reports the outcome
    /// (`next`, leaving the delivery `state`), then answers that nothing is in flight,
    /// and the pause moves both keys before the outcome is recorded. Retention at 5 s
    /// runs in between. Returns the store (what stays paused) and the committer.
    fn an_outcome_recorded_after_its_delivery_paused_and_expired(
        dir: &std::path::Path,
        next: Next,
        state_after: DeliveryState,
    ) -> (Store, State) {
        let store = Store::open(dir).unwrap();
        let now = now_ms();
        let mut b = store.batch();
        let mut keys = Vec::new();
        for time in [now - 10_000, now] {
            let seq = seq_floor(time);
            b.put_event(
                &store,
                &EventRecord::new(seq, None, "t", None, time, &[1], b"{}"),
            );
            let key = DueKey {
                due_ms: time,
                seq,
                ep: 1,
            };
            b.put_due(&store, key, DueVal::NEW);
            keys.push(key);
        }
        store.commit(b, false).unwrap();
        let (mut st, mb) = state(store.clone(), vec![info(1, &["t"], None)]);
        st.stats.pending = 2;
        st.cursor = DueKey {
            due_ms: now + 60_000,
            seq: 0,
            ep: 0,
        };
        st.disable_ep(1, DisabledBy::Admin, None);
        match mb.try_recv() {
            Some(WorkerMsg::SetEnabled {
                switch: Switch::Disable { in_flight },
                ..
            }) => in_flight.send(Vec::new()).unwrap(),
            _ => panic!("the worker is told of the disable"),
        }
        st.start_pauses();
        assert_eq!((st.stats.pending, st.stats.paused), (2, 2));
        // (Its event was in hand when the attempt ended.)
        let o = outcome(&store, keys[0], next, state_after);
        st.retention_ms = 5_000;
        st.retention();
        assert_eq!(
            (st.stats.pending, st.stats.paused, st.stats.expired),
            (1, 1, 1),
            "the old one expired"
        );
        st.round(&mut vec![CommitMsg::Outcomes(vec![o])], &mut None);
        (store, st)
    }

    #[test]
    fn retention_that_cannot_read_logs_one_line_an_interval_not_one_per_endpoint() {
        // A failing disk: each run (ten a second with a short retention) logged an
        // ERROR line for every endpoint whose paused set it could not read.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let eps = (1..=100).map(|i| info(i, &["t"], None)).collect();
        let (mut st, _mb) = state(store.clone(), eps);
        store.fail_paused_pages(u32::MAX);
        let runs = 50;
        let ((), lines) = crate::tally::logged(|| {
            for i in 0..runs {
                // A floor that moves at each run, as the clock would.
                st.retention_ms = 5_000 - i;
                st.retention();
            }
        });
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains("cannot read the paused deliveries of 100 endpoints")
                && lines[0].contains("failures=1"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn an_outcome_of_a_delivery_paused_and_expired_meanwhile_counts_it_no_more() {
        // Found by reading (session 54): retention expired the paused delivery (and
        // counted it), then its outcome was recorded as if it were still pending: a
        // `Done` counted it done again, a `paused` retry paused it again.
        for (next, state_after) in [
            (Next::Done, DeliveryState::Delivered),
            (Next::Done, DeliveryState::Failed),
            (Next::Paused, DeliveryState::Paused),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (store, st) = an_outcome_recorded_after_its_delivery_paused_and_expired(
                dir.path(),
                next,
                state_after,
            );
            assert_eq!(
                (st.stats.pending, st.stats.paused, st.stats.expired),
                (1, 1, 1),
                "{state_after:?}: counted once"
            );
            assert_eq!(
                store.paused_of(1, 0, 8).unwrap().len(),
                1,
                "{state_after:?}: only the other one paused"
            );
        }
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
}
