//! The syncer: the thread that makes the committer's rounds durable and answers them.
//!
//! Under `durability = "sync"` the committer writes a round without an fsync and hands
//! the round's deliveries to the workers. A large round (or any round while earlier ones
//! are still here) then comes here with its answers, and the committer goes on to the
//! next round while this thread fsyncs the WAL; small rounds with nothing queued here
//! the committer fsyncs itself (`commit::State::answer_synced` says why). One fsync
//! covers every round written before it started, so the rounds that queue up while one
//! fsync runs are all covered by the next (group commit across rounds). The rules:
//!
//! - answers go out in the order their rounds were written, each only after an fsync
//!   that started after its round's write. A `dup` therefore never goes out before the
//!   original it names is durable, whichever round wrote that original;
//! - a round that wrote no events (only `dup`s, or its write failed) needs no fsync of
//!   its own, but still waits behind the rounds before it;
//! - after a failed fsync the WAL's state is unknown: every `ok` and `dup` of that group
//!   and of every later round becomes `unavailable`, and the committer (which reads the
//!   same [`Poison`]) refuses further ingest until a restart.
//!
//! Under `batch` the committer answers as soon as a round is written, and every ~10 ms
//! sends an empty round with `fsync` set: the periodic fsync runs here too, and the
//! committer does not wait for it. Under `none` this thread idles.
//!
//! It counts the answers it sends (and their latency) and times its fsyncs in
//! [`SyncStats`], which the committer reads under a lock when it takes a metrics
//! snapshot, so a slow fsync never holds a scrape up. It must not write the store (it
//! only syncs the WAL) and makes no routing or scheduling decision.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::commit::{AckResult, AckTo};
use crate::metrics::{CommitSnapshot, Hist};
use crate::shard::MailboxSender;
use crate::store::Store;
use crate::worker::WorkerMsg;

/// Set once, with the reason, when an fsync failed: ingest is refused from then on.
pub type Poison = Arc<OnceLock<String>>;

/// One batch's answers: where they go, when the batch was handed to the committer, and
/// one result per event.
pub type Answer = (AckTo, Instant, Vec<AckResult>);

/// Messages to the syncer, in the order the committer wrote its rounds.
pub enum SyncMsg {
    /// A round's answers; `fsync` when the round wrote events.
    Round { answers: Vec<Answer>, fsync: bool },
    /// Answer everything before this, then stop; the reply says it is done.
    Shutdown(Sender<()>),
}

/// Answer counters and latency: the committer keeps one (answers it sends directly),
/// the syncer another.
pub struct AckStats {
    pub ok: u64,
    pub dup: u64,
    pub unavailable: u64,
    /// µs from hand-off to the committer to the answer, per event.
    pub latency: Hist,
}

impl Default for AckStats {
    fn default() -> Self {
        AckStats {
            ok: 0,
            dup: 0,
            unavailable: 0,
            latency: Hist::micros(),
        }
    }
}

impl AckStats {
    /// Adds these counts to a snapshot.
    pub fn add_to(&self, s: &mut CommitSnapshot) {
        s.acks_ok += self.ok;
        s.acks_dup += self.dup;
        s.acks_unavailable += self.unavailable;
        s.ack_latency.merge(&self.latency);
    }
}

/// What the syncer has counted: its answers and its fsyncs.
pub struct SyncStats {
    pub acks: AckStats,
    /// µs per fsync.
    pub fsync_time: Hist,
}

impl Default for SyncStats {
    fn default() -> Self {
        SyncStats {
            acks: AckStats::default(),
            fsync_time: Hist::micros(),
        }
    }
}

impl SyncStats {
    /// Adds these counts to a snapshot.
    pub fn add_to(&self, s: &mut CommitSnapshot) {
        self.acks.add_to(s);
        s.fsync_time.merge(&self.fsync_time);
    }
}

/// What the committer and the syncer share.
#[derive(Clone, Default)]
pub struct Shared {
    /// Set by whichever fsync failed first.
    pub poison: Poison,
    /// Rounds queued at the syncer and not yet answered: the committer counts them in,
    /// the syncer out.
    pub queue: Arc<AtomicUsize>,
    /// Written by the syncer, read into the committer's snapshots.
    pub stats: Arc<Mutex<SyncStats>>,
}

/// Counts one batch's answers and sends them where they go.
pub fn send_answer(workers: &[MailboxSender<WorkerMsg>], stats: &mut AckStats, a: Answer) {
    let (to, sent_at, results) = a;
    for r in &results {
        match r {
            AckResult::Ok { .. } => stats.ok += 1,
            AckResult::Dup { .. } => stats.dup += 1,
            AckResult::Unavailable(_) => stats.unavailable += 1,
        }
    }
    let us = sent_at.elapsed().as_micros().min(u64::MAX as u128) as u64;
    stats.latency.record_n(us, results.len() as u64);
    match to {
        AckTo::Conn {
            worker,
            conn,
            ticket,
        } => {
            workers[worker].send(WorkerMsg::Acks {
                conn,
                ticket,
                results,
            });
        }
        AckTo::Channel(reply) => {
            let _ = reply.send(results);
        }
    }
}

/// Sends a round's answers once an fsync covers it; after a failed fsync (`poison` set)
/// its `ok`s and `dup`s go out as `unavailable`.
pub fn release(
    workers: &[MailboxSender<WorkerMsg>],
    stats: &mut AckStats,
    poison: &Poison,
    mut answers: Vec<Answer>,
) {
    if let Some(reason) = poison.get() {
        refuse(&mut answers, reason, true);
    }
    for a in answers {
        send_answer(workers, stats, a);
    }
}

/// Fsyncs the WAL and returns the µs it took; a failure is logged and sets `poison`.
pub fn fsync(wal: &impl Wal, poison: &Poison) -> u64 {
    let started = Instant::now();
    let result = wal.sync();
    let us = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
    if let Err(e) = result {
        tracing::error!(error = %e, "WAL sync failed; refusing further ingest");
        let _ = poison.set(format!("WAL sync failed: {e}"));
    }
    us
}

/// Turns the `ok` (and, with `dups`, the `dup`) answers of `answers` into `unavailable`.
pub fn refuse(answers: &mut [Answer], reason: &str, dups: bool) {
    for (_, _, results) in answers.iter_mut() {
        for r in results.iter_mut() {
            let hit = match r {
                AckResult::Ok { .. } => true,
                AckResult::Dup { .. } => dups,
                AckResult::Unavailable(_) => false,
            };
            if hit {
                *r = AckResult::Unavailable(reason.to_string());
            }
        }
    }
}

/// What fsyncs the WAL; [`Store`] in the server, a fake in tests.
pub trait Wal: Send + 'static {
    fn sync(&self) -> Result<(), String>;
}

impl Wal for Store {
    fn sync(&self) -> Result<(), String> {
        self.sync_wal().map_err(|e| e.to_string())
    }
}

/// The syncer thread's state.
pub struct Syncer<W: Wal> {
    wal: W,
    workers: Vec<MailboxSender<WorkerMsg>>,
    inbox: Receiver<SyncMsg>,
    shared: Shared,
}

impl<W: Wal> Syncer<W> {
    pub fn new(
        wal: W,
        workers: Vec<MailboxSender<WorkerMsg>>,
        inbox: Receiver<SyncMsg>,
        shared: Shared,
    ) -> Syncer<W> {
        Syncer {
            wal,
            workers,
            inbox,
            shared,
        }
    }

    /// Runs until [`SyncMsg::Shutdown`] or until the committer drops its sender.
    pub fn run(mut self) {
        crate::store::quiet_perf_counters();
        let mut group = Vec::new();
        loop {
            match self.inbox.recv() {
                Ok(m) => group.push(m),
                Err(_) => return,
            }
            group.extend(self.inbox.try_iter());
            if self.step(&mut group) {
                return;
            }
        }
    }

    /// Handles one group of messages (everything queued): one fsync if any round in it
    /// needs one, then every answer and reply in order. True after a shutdown.
    fn step(&mut self, group: &mut Vec<SyncMsg>) -> bool {
        let needs = group
            .iter()
            .any(|m| matches!(m, SyncMsg::Round { fsync: true, .. }));
        let fsync_us = (needs && self.shared.poison.get().is_none())
            .then(|| fsync(&self.wal, &self.shared.poison));
        let mut stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(us) = fsync_us {
            stats.fsync_time.record(us);
        }
        let mut stop = false;
        for m in group.drain(..) {
            match m {
                SyncMsg::Round { answers, .. } => {
                    release(&self.workers, &mut stats.acks, &self.shared.poison, answers);
                    // Release: the poison above is visible to whoever sees the count drop.
                    self.shared.queue.fetch_sub(1, Ordering::AcqRel);
                }
                SyncMsg::Shutdown(reply) => {
                    let _ = reply.send(());
                    stop = true;
                }
            }
        }
        stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts fsyncs; fails from the `fail_from`-th on.
    #[derive(Clone)]
    struct FakeWal {
        syncs: Arc<AtomicUsize>,
        fail_from: usize,
    }

    impl Wal for FakeWal {
        fn sync(&self) -> Result<(), String> {
            let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.fail_from {
                Err("EIO".into())
            } else {
                Ok(())
            }
        }
    }

    fn answer(results: Vec<AckResult>) -> (Answer, crossbeam_channel::Receiver<Vec<AckResult>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        ((AckTo::Channel(tx), Instant::now(), results), rx)
    }

    fn ok(id: &str) -> AckResult {
        AckResult::Ok {
            id: id.into(),
            deliveries: 1,
        }
    }

    fn dup(id: &str) -> AckResult {
        AckResult::Dup { id: id.into() }
    }

    /// A syncer, its fsync count, its poison, and its queue count (set to `rounds`, as
    /// the committer would count them in); its stats are `s.shared.stats`.
    fn syncer(
        fail_from: usize,
        rounds: usize,
    ) -> (Syncer<FakeWal>, Arc<AtomicUsize>, Poison, Arc<AtomicUsize>) {
        let syncs = Arc::new(AtomicUsize::new(0));
        let shared = Shared::default();
        shared.queue.store(rounds, Ordering::SeqCst);
        let (_, rx) = crossbeam_channel::unbounded();
        let s = Syncer::new(
            FakeWal {
                syncs: syncs.clone(),
                fail_from,
            },
            Vec::new(),
            rx,
            shared.clone(),
        );
        (s, syncs, shared.poison, shared.queue)
    }

    #[test]
    fn one_fsync_covers_every_round_queued_and_answers_keep_their_order() {
        let (mut s, syncs, _, queue) = syncer(usize::MAX, 3);
        let (a1, r1) = answer(vec![ok("a"), ok("b")]);
        let (a2, r2) = answer(vec![dup("a")]);
        let (a3, r3) = answer(vec![ok("c")]);
        let mut group = vec![
            SyncMsg::Round {
                answers: vec![a1],
                fsync: true,
            },
            SyncMsg::Round {
                answers: vec![a2],
                fsync: false,
            },
            SyncMsg::Round {
                answers: vec![a3],
                fsync: true,
            },
        ];
        assert!(!s.step(&mut group));
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        assert_eq!(r1.try_recv().unwrap(), vec![ok("a"), ok("b")]);
        assert_eq!(r2.try_recv().unwrap(), vec![dup("a")]);
        assert_eq!(r3.try_recv().unwrap(), vec![ok("c")]);
        let st = s.shared.stats.lock().unwrap();
        assert_eq!((st.acks.ok, st.acks.dup), (3, 1));
        assert_eq!(st.fsync_time.count(), 1);
        assert_eq!(queue.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn rounds_without_events_need_no_fsync() {
        let (mut s, syncs, _, queue) = syncer(usize::MAX, 1);
        let (a, r) = answer(vec![dup("x")]);
        let mut group = vec![SyncMsg::Round {
            answers: vec![a],
            fsync: false,
        }];
        s.step(&mut group);
        assert_eq!(syncs.load(Ordering::SeqCst), 0);
        assert_eq!(r.try_recv().unwrap(), vec![dup("x")]);
        assert_eq!(queue.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_fsync_refuses_its_group_and_every_later_answer() {
        let (mut s, syncs, poison, queue) = syncer(2, 3);
        let (a1, r1) = answer(vec![ok("a")]);
        s.step(&mut vec![SyncMsg::Round {
            answers: vec![a1],
            fsync: true,
        }]);
        assert_eq!(r1.try_recv().unwrap(), vec![ok("a")]);
        let (a2, r2) = answer(vec![ok("b"), dup("a")]);
        s.step(&mut vec![SyncMsg::Round {
            answers: vec![a2],
            fsync: true,
        }]);
        assert!(poison.get().unwrap().contains("EIO"));
        let refused = r2.try_recv().unwrap();
        assert!(refused
            .iter()
            .all(|r| matches!(r, AckResult::Unavailable(m) if m.contains("WAL sync failed"))));
        // Later rounds are refused without another fsync attempt.
        let (a3, r3) = answer(vec![dup("a")]);
        s.step(&mut vec![SyncMsg::Round {
            answers: vec![a3],
            fsync: true,
        }]);
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
        assert!(matches!(
            r3.try_recv().unwrap()[0],
            AckResult::Unavailable(_)
        ));
        let st = s.shared.stats.lock().unwrap();
        assert_eq!((st.acks.ok, st.acks.unavailable), (1, 3));
        assert_eq!(queue.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn stats_reach_a_snapshot_and_shutdown_stops_after_the_answers() {
        let (mut s, _, _, _) = syncer(usize::MAX, 1);
        let (a, r) = answer(vec![ok("a")]);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let mut group = vec![
            SyncMsg::Round {
                answers: vec![a],
                fsync: true,
            },
            SyncMsg::Shutdown(stop_tx),
        ];
        assert!(s.step(&mut group));
        assert_eq!(r.try_recv().unwrap(), vec![ok("a")]);
        stop_rx.try_recv().unwrap();
        let mut snap = CommitSnapshot {
            acks_ok: 5,
            ..Default::default()
        };
        s.shared.stats.lock().unwrap().add_to(&mut snap);
        assert_eq!(snap.acks_ok, 6);
        assert_eq!(snap.ack_latency.count(), 1);
        assert_eq!(snap.fsync_time.count(), 1);
    }
}
