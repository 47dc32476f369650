//! An endpoint's ready queue on its worker: FIFO, or strictly ordered by acceptance.
//!
//! Owns the order in which a worker's lanes take an endpoint's deliveries. A FIFO queue
//! holds due deliveries in arrival order. An ordered queue (`ordered = true`) holds
//! every known delivery of the endpoint by sequence number — due or not — and offers
//! only the oldest: while it waits for its retry, the ones behind it wait too. Copies of a
//! delivery (a retry the worker kept and the same retry loaded again from the store) are
//! collapsed to the newest — at the same due time, to the one the store handed over, so
//! that no kept retry outlives its copy — and a copy of a recently finished one is
//! dropped — also one that came in while its delivery was being attempted — unless it
//! starts a new round (a replay: as many attempts as the finished one made). A paused
//! delivery is not finished: the copy that comes back when its endpoint is enabled is
//! taken in. Every copy dropped is handed back, for the worker to report. It must not
//! do I/O or decide retries.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;

/// How many finished sequence numbers an ordered queue remembers to drop late copies.
const RECENT: usize = 4096;

/// What the queue needs to know of an item.
pub trait Queued {
    /// The event's sequence number (acceptance order).
    fn seq(&self) -> u64;
    /// When the item may be attempted (unix ms).
    fn due_ms(&self) -> u64;
    /// A retry the worker kept for itself, never handed over by the store: the store's
    /// copy of it, handed over in its time, replaces it, and it is never handed back
    /// (nothing counted it).
    fn kept(&self) -> bool {
        false
    }
    /// Attempts made before this copy was handed over: fewer than a finished
    /// delivery's own make a late copy of it; as many or more, a new round (a replay).
    fn attempts(&self) -> u16 {
        0
    }
}

/// Whether the queue has work now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Now,
    /// The head is not due before this time (ordered queues only).
    At(u64),
    Empty,
}

pub enum JobQueue<T> {
    Fifo(VecDeque<T>),
    Ordered {
        items: BTreeMap<u64, T>,
        /// Recently finished deliveries, with the attempts each had made: a copy
        /// with fewer arriving now is stale.
        done: FxHashMap<u64, u16>,
        done_order: VecDeque<(u64, u16)>,
    },
}

impl<T: Queued> JobQueue<T> {
    pub fn new(ordered: bool) -> Self {
        if ordered {
            JobQueue::Ordered {
                items: BTreeMap::new(),
                done: FxHashMap::default(),
                done_order: VecDeque::new(),
            }
        } else {
            JobQueue::Fifo(VecDeque::new())
        }
    }

    /// Adds an item; returns it back when it is a stale copy, or the older copy it
    /// replaced (never a kept one).
    pub fn push(&mut self, item: T) -> Result<Option<T>, T> {
        match self {
            JobQueue::Fifo(q) => {
                q.push_back(item);
                Ok(None)
            }
            JobQueue::Ordered { items, done, .. } => {
                let seq = item.seq();
                // A new round of a finished delivery (a replay) runs; the entry stays, so
                // a late copy of the finished round is still dropped after it.
                if done.get(&seq).is_some_and(|&made| item.attempts() < made) {
                    return Err(item);
                }
                match items.get(&seq) {
                    Some(old) if holds_against(old, &item) => Err(item),
                    _ => Ok(items.insert(seq, item).filter(|old| !old.kept())),
                }
            }
        }
    }

    /// Whether an item can be taken at `now_ms` (a held-back head is none).
    pub fn ready(&self, now_ms: u64) -> Ready {
        match self {
            JobQueue::Fifo(q) if q.is_empty() => Ready::Empty,
            JobQueue::Fifo(_) => Ready::Now,
            JobQueue::Ordered { items, .. } => match items.first_key_value() {
                None => Ready::Empty,
                Some((_, head)) if head.due_ms() <= now_ms => Ready::Now,
                Some((_, head)) => Ready::At(head.due_ms()),
            },
        }
    }

    /// Takes the next item (call after [`ready`](Self::ready) said `Now`).
    pub fn pop(&mut self) -> Option<T> {
        match self {
            JobQueue::Fifo(q) => q.pop_front(),
            JobQueue::Ordered { items, .. } => items.pop_first().map(|(_, v)| v),
        }
    }

    /// Puts back an item that was taken but not attempted. An ordered queue may have
    /// taken in a copy of it meanwhile: the two are settled as [`push`](Self::push)
    /// settles a copy against the one it holds, and the one dropped is returned for the
    /// worker to report (never a kept one). Put back over the copy unreported, it was
    /// counted in worker memory for as long as the process ran (helper L, session 48).
    #[must_use = "a copy dropped is reported"]
    pub fn unpop(&mut self, item: T) -> Option<T> {
        match self {
            JobQueue::Fifo(q) => {
                q.push_front(item);
                None
            }
            JobQueue::Ordered { items, .. } => {
                let seq = item.seq();
                let copy = items.remove(&seq);
                match copy {
                    None => {
                        items.insert(seq, item);
                        None
                    }
                    Some(copy) if holds_against(&item, &copy) => {
                        items.insert(seq, item);
                        Some(copy)
                    }
                    Some(copy) => {
                        items.insert(seq, copy);
                        (!item.kept()).then_some(item)
                    }
                }
            }
        }
    }

    /// Puts `item`, the store's copy of a kept item a FIFO queue holds (the same
    /// delivery, as many attempts made), in its place; the kept one is dropped unreported
    /// (nothing counted it). `item` comes back when no such kept item is queued, and
    /// always from an ordered queue (its [`push`](Self::push) settles copies itself).
    pub fn replace_kept(&mut self, item: T) -> Result<(), T> {
        let JobQueue::Fifo(q) = self else {
            return Err(item);
        };
        let same = |t: &T| t.kept() && t.seq() == item.seq() && t.attempts() == item.attempts();
        match q.iter_mut().find(|t| same(t)) {
            Some(kept) => {
                *kept = item;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// Records that the delivery of `seq` is finished after `attempts` attempts (ordered
    /// queues drop later copies with fewer; `u16::MAX`: every copy); returns a copy of
    /// it that came in while it was being attempted (stale now).
    pub fn completed(&mut self, seq: u64, attempts: u16) -> Option<T> {
        let JobQueue::Ordered {
            items,
            done,
            done_order,
            ..
        } = self
        else {
            return None;
        };
        done.insert(seq, attempts);
        done_order.push_back((seq, attempts));
        if done_order.len() > RECENT {
            if let Some((old, n)) = done_order.pop_front() {
                // Unless it finished again since.
                if done.get(&old) == Some(&n) {
                    done.remove(&old);
                }
            }
        }
        items.remove(&seq)
    }

    /// Takes out a copy of `seq` that came in while it was being attempted, without
    /// marking it finished: the attempt paused the delivery, which comes back as a new
    /// copy once its endpoint is enabled.
    pub fn forget(&mut self, seq: u64) -> Option<T> {
        match self {
            JobQueue::Fifo(_) => None,
            JobQueue::Ordered { items, .. } => items.remove(&seq),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            JobQueue::Fifo(q) => q.len(),
            JobQueue::Ordered { items, .. } => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items from a key `from` on, taken out, with `from`: every item left has a
    /// lower key, and `from` is at least `floor` (the worker keeps keys of the endpoint
    /// elsewhere: in flight, in its timer wheel). `None` when it gives none.
    ///
    /// A FIFO queue keeps its `keep` lowest keys (counting from 0, `from` is the key of
    /// its `keep`-th lowest item, raised to `floor` when that is higher), the others in
    /// their order; a kept item among those given out goes like the others (the store
    /// has its key), and whoever counts what was handed over leaves it out. An ordered
    /// queue keeps its `keep` oldest deliveries (by sequence number) and gives out only
    /// a tail of the rest, so that nothing behind a delivery given out is left to go
    /// before it: the shortest tail whose keys all lie above those of every delivery
    /// before it, and at or above `floor`. An
    /// endpoint's first attempts fall due in acceptance order, so that is every
    /// delivery past the `keep` oldest, but for the head's retry (due later): while
    /// the store's copy of it is queued, nothing below its key is given out (nor, at
    /// the worker, while either copy is in flight: `floor`). A retry the worker kept
    /// ([`Queued::kept`]) is never given out: nothing counted it, and the store's copy
    /// comes in its time; nothing behind it is given out either.
    pub fn split_off<K: Ord + Copy>(
        &mut self,
        keep: usize,
        floor: Option<K>,
        key: impl Fn(&T) -> K,
    ) -> Option<(K, Vec<T>)> {
        match self {
            JobQueue::Fifo(q) => {
                if q.len() <= keep {
                    return None;
                }
                let mut keys: Vec<K> = q.iter().map(&key).collect();
                let (_, &mut cut, _) = keys.select_nth_unstable(keep);
                let from = floor.map_or(cut, |f| cut.max(f));
                let mut given = Vec::new();
                let mut kept = VecDeque::with_capacity(q.len());
                for item in q.drain(..) {
                    if key(&item) >= from {
                        given.push(item);
                    } else {
                        kept.push_back(item);
                    }
                }
                *q = kept;
                (!given.is_empty()).then_some((from, given))
            }
            JobQueue::Ordered { items, .. } => {
                let order: Vec<(u64, K)> = items
                    .values()
                    .filter(|t| !t.kept())
                    .map(|t| (t.seq(), key(t)))
                    .collect();
                if order.len() <= keep {
                    return None;
                }
                // The lowest key from each position to the end.
                let mut tail_min = order.iter().map(|&(_, k)| k).collect::<Vec<K>>();
                for i in (0..tail_min.len() - 1).rev() {
                    tail_min[i] = tail_min[i].min(tail_min[i + 1]);
                }
                // A kept retry is the head's: nothing before it may go.
                let last_kept = items.values().filter(|t| t.kept()).map(|t| t.seq()).max();
                let mut before: Option<K> = None;
                let mut cut = None;
                for (i, &(seq, k)) in order.iter().enumerate() {
                    if i >= keep
                        && last_kept.is_none_or(|s| s < seq)
                        && before.is_none_or(|b| b < tail_min[i])
                        && floor.is_none_or(|f| f <= tail_min[i])
                    {
                        cut = Some((seq, tail_min[i]));
                        break;
                    }
                    before = Some(before.map_or(k, |b| b.max(k)));
                }
                let (seq, from) = cut?;
                let given = items.split_off(&seq).into_values().collect();
                Some((from, given))
            }
        }
    }

    /// Removes everything, in queue order.
    pub fn drain(&mut self) -> Vec<T> {
        match self {
            JobQueue::Fifo(q) => q.drain(..).collect(),
            JobQueue::Ordered { items, .. } => std::mem::take(items).into_values().collect(),
        }
    }
}

/// Whether an ordered queue holding `old` keeps it against `new`, a copy of the same
/// delivery: `new` is older (its due time earlier), or as old and `old` is the store's
/// (a kept retry gives way to the store's copy of it).
fn holds_against<T: Queued>(old: &T, new: &T) -> bool {
    old.due_ms() > new.due_ms() || (old.due_ms() == new.due_ms() && !old.kept())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct J(u64, u64);
    impl Queued for J {
        fn seq(&self) -> u64 {
            self.0
        }
        fn due_ms(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn fifo_keeps_arrival_order() {
        let mut q = JobQueue::new(false);
        q.push(J(3, 0)).unwrap();
        q.push(J(1, 0)).unwrap();
        assert_eq!(q.ready(0), Ready::Now);
        assert_eq!(q.pop(), Some(J(3, 0)));
        assert_eq!(q.pop(), Some(J(1, 0)));
        assert_eq!(q.ready(0), Ready::Empty);
    }

    #[test]
    fn a_fifo_queue_gives_out_what_is_asked_and_keeps_the_rest_in_order() {
        let fifo = || {
            let mut q = JobQueue::new(false);
            for (seq, due) in [(1, 10), (2, 30), (3, 20), (4, 40)] {
                q.push(J(seq, due)).unwrap();
            }
            q
        };
        // The two lowest stay; from the third lowest key on, out.
        let mut q = fifo();
        let given = q.split_off(2, None, |j| j.1);
        assert_eq!(given, Some((30, vec![J(2, 30), J(4, 40)])));
        assert_eq!(q.drain(), [J(1, 10), J(3, 20)]);
        // Raised to a floor above a key kept elsewhere.
        let mut q = fifo();
        assert_eq!(
            q.split_off(1, Some(35), |j| j.1),
            Some((35, vec![J(4, 40)]))
        );
        assert_eq!(q.len(), 3);
        // Nothing past what it may keep, or nothing at or above the floor.
        assert_eq!(fifo().split_off(4, None, |j| j.1), None);
        assert_eq!(fifo().split_off(0, Some(41), |j| j.1), None);
    }

    #[test]
    fn an_ordered_queue_gives_out_only_a_tail_keyed_above_what_it_keeps() {
        let ordered = |items: &[(u64, u64)]| {
            let mut q = JobQueue::new(true);
            for &(seq, due) in items {
                q.push(J(seq, due)).unwrap();
            }
            q
        };
        // First attempts fall due in acceptance order: past the two oldest, all.
        let mut q = ordered(&[(1, 10), (2, 20), (3, 30), (4, 40)]);
        let given = q.split_off(2, None, |j| j.1);
        assert_eq!(given, Some((30, vec![J(3, 30), J(4, 40)])));
        assert_eq!(q.drain(), [J(1, 10), J(2, 20)]);
        // The store's copy of the head's retry falls due later: nothing keyed below it
        // goes.
        let mut q = ordered(&[(1, 35), (2, 20), (3, 30), (4, 40)]);
        assert_eq!(q.split_off(1, None, |j| j.1), Some((40, vec![J(4, 40)])));
        assert_eq!(q.len(), 3);
        // The tail may hold keys out of order, all above what stays.
        let mut q = ordered(&[(1, 10), (2, 20), (3, 50), (4, 40)]);
        let given = q.split_off(1, None, |j| j.1);
        assert_eq!(given, Some((20, vec![J(2, 20), J(3, 50), J(4, 40)])));
        // Raised to the floor; nothing past what it may keep; nothing above the floor.
        let mut q = ordered(&[(1, 10), (2, 20), (3, 30)]);
        assert_eq!(
            q.split_off(0, Some(25), |j| j.1),
            Some((30, vec![J(3, 30)]))
        );
        assert_eq!(ordered(&[(1, 10)]).split_off(1, None, |j| j.1), None);
        assert_eq!(ordered(&[(1, 10)]).split_off(0, Some(11), |j| j.1), None);
        assert_eq!(
            ordered(&[(1, 10)]).split_off(0, None, |j| j.1),
            Some((10, vec![J(1, 10)]))
        );
    }

    #[test]
    fn an_ordered_queue_gives_out_nothing_before_a_kept_retry() {
        let job = |seq, due, kept| K {
            seq,
            due,
            kept,
            attempts: 0,
        };
        let queue = |kept_seq| {
            let mut q = JobQueue::new(true);
            for seq in 1..=4 {
                q.push(job(seq, seq * 10, seq == kept_seq)).unwrap();
            }
            q
        };
        // The head's kept retry is neither given out nor counted in what stays.
        let mut q = queue(1);
        let given = q.split_off(1, None, |j| j.due);
        assert_eq!(
            given,
            Some((30, vec![job(3, 30, false), job(4, 40, false)]))
        );
        assert_eq!(q.drain(), [job(1, 10, true), job(2, 20, false)]);
        // Nothing at or before a kept one goes.
        let mut q = queue(3);
        let given = q.split_off(0, None, |j| j.due);
        assert_eq!(given, Some((40, vec![job(4, 40, false)])));
        assert_eq!(queue(4).split_off(0, None, |j| j.due), None);
    }

    #[test]
    fn ordered_head_holds_back_the_rest_until_due() {
        let mut q = JobQueue::new(true);
        q.push(J(5, 100)).unwrap();
        q.push(J(2, 500)).unwrap(); // an older delivery waiting for its retry
        q.push(J(9, 0)).unwrap();
        assert_eq!(q.ready(200), Ready::At(500));
        assert_eq!(q.ready(500), Ready::Now);
        assert_eq!(q.pop(), Some(J(2, 500)));
        assert_eq!(q.pop(), Some(J(5, 100)));
    }

    #[test]
    fn ordered_collapses_copies_and_drops_finished_ones() {
        let mut q = JobQueue::new(true);
        q.push(J(4, 100)).unwrap();
        // The same retry again (from the store): the newer due time wins.
        assert!(q.push(J(4, 100)).is_err());
        q.push(J(4, 300)).unwrap();
        assert!(q.push(J(4, 200)).is_err());
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some(J(4, 300)));
        q.completed(4, 1);
        assert!(
            q.push(J(4, 900)).is_err(),
            "a copy of a finished delivery is stale"
        );
        q.push(J(3, 0)).unwrap();
        assert_eq!(q.pop(), Some(J(3, 0)));
        q.push(J(6, 0)).unwrap();
        assert_eq!(q.unpop(J(5, 0)), None);
        assert_eq!(q.drain(), vec![J(5, 0), J(6, 0)]);
    }

    #[test]
    fn ordered_drops_a_copy_that_came_in_during_the_attempt() {
        // After a restart the held head is handed over first, and the loader loads the
        // same delivery again from the store, which may arrive while it is in flight.
        let mut q = JobQueue::new(true);
        q.push(J(7, 100)).unwrap();
        q.push(J(8, 100)).unwrap();
        assert_eq!(q.pop(), Some(J(7, 100)));
        assert_eq!(q.push(J(7, 100)), Ok(None), "not queued: taken in as new");
        // Delivered: the copy is stale, handed back, and 8 is next.
        assert_eq!(q.completed(7, 1), Some(J(7, 100)));
        assert_eq!(q.pop(), Some(J(8, 100)));
        // Failed again: its kept retry replaces the copy, which is handed back.
        q.push(J(8, 100)).unwrap();
        assert_eq!(q.push(J(8, 400)), Ok(Some(J(8, 100))));
        assert_eq!(q.drain(), vec![J(8, 400)]);
        assert_eq!(q.completed(8, 1), None);
        // Paused: its copy goes, and the copy that comes back on enable is taken in.
        q.push(J(9, 100)).unwrap();
        assert_eq!(q.pop(), Some(J(9, 100)));
        q.push(J(9, 100)).unwrap();
        assert_eq!(q.forget(9), Some(J(9, 100)));
        assert_eq!(
            q.push(J(9, 900)),
            Ok(None),
            "not finished: a resumed copy runs"
        );
        assert_eq!(q.drain(), vec![J(9, 900)]);
        // A FIFO queue keeps no copies apart.
        let mut f = JobQueue::new(false);
        assert_eq!(f.push(J(1, 0)), Ok(None));
        assert_eq!(f.completed(1, 1), None);
        assert_eq!(f.len(), 1);
    }

    #[derive(Debug, PartialEq)]
    struct K {
        seq: u64,
        due: u64,
        kept: bool,
        attempts: u16,
    }

    impl Queued for K {
        fn seq(&self) -> u64 {
            self.seq
        }
        fn due_ms(&self) -> u64 {
            self.due
        }
        fn kept(&self) -> bool {
            self.kept
        }
        fn attempts(&self) -> u16 {
            self.attempts
        }
    }

    #[test]
    fn ordered_prefers_the_store_s_copy_of_a_kept_retry() {
        let kept = |due| K {
            seq: 3,
            due,
            kept: true,
            attempts: 1,
        };
        let copy = |due| K {
            seq: 3,
            due,
            kept: false,
            attempts: 1,
        };
        let mut q = JobQueue::new(true);
        // The worker keeps its head's retry; the store's copy of it arrives: the copy
        // stays, and the kept one is not handed back (nothing counted it).
        assert_eq!(q.push(kept(500)), Ok(None));
        assert_eq!(q.push(copy(500)), Ok(None));
        assert_eq!(q.drain(), vec![copy(500)]);
        // A copy of an older retry is stale against the kept one.
        q.push(kept(500)).unwrap();
        assert_eq!(q.push(copy(200)), Err(copy(200)));
        // A kept retry behind its own copy (an equal due time) is the one dropped.
        let mut q = JobQueue::new(true);
        q.push(copy(500)).unwrap();
        assert_eq!(q.push(kept(500)), Err(kept(500)));
        // A later kept retry replaces a copy, which is handed back to be reported.
        assert_eq!(q.push(kept(900)), Ok(Some(copy(500))));
        assert_eq!(q.drain(), vec![kept(900)]);
    }

    #[test]
    fn an_ordered_queue_settles_an_item_put_back_against_a_copy_taken_in_meanwhile() {
        let job = |due, kept| K {
            seq: 3,
            due,
            kept,
            attempts: 1,
        };
        let mut q = JobQueue::new(true);
        // Nothing came in: put back as it was.
        q.push(job(500, false)).unwrap();
        let taken = q.pop().unwrap();
        assert_eq!(q.unpop(taken), None);
        assert_eq!(q.pop(), Some(job(500, false)));
        // A copy of the same round came in while it was out: one stays, the other is
        // handed back to be reported (before, the copy was overwritten unreported).
        assert_eq!(q.push(job(500, false)), Ok(None));
        assert_eq!(q.unpop(job(500, false)), Some(job(500, false)));
        assert_eq!(q.drain(), vec![job(500, false)]);
        // A kept retry put back gives way to the store's copy of it, unreported.
        q.push(job(500, false)).unwrap();
        assert_eq!(q.unpop(job(500, true)), None);
        assert_eq!(q.drain(), vec![job(500, false)]);
        // A later copy replaces the one put back, which is handed back.
        q.push(job(900, false)).unwrap();
        assert_eq!(q.unpop(job(500, false)), Some(job(500, false)));
        assert_eq!(q.drain(), vec![job(900, false)]);
        // An older copy is the one dropped.
        q.push(job(200, false)).unwrap();
        assert_eq!(q.unpop(job(500, false)), Some(job(200, false)));
        assert_eq!(q.drain(), vec![job(500, false)]);
        // A FIFO queue holds no copies to settle: the item goes back to the front.
        let mut q = JobQueue::new(false);
        q.push(J(1, 0)).unwrap();
        assert_eq!(q.unpop(J(2, 0)), None);
        assert_eq!(q.drain(), vec![J(2, 0), J(1, 0)]);
    }

    #[test]
    fn a_fifo_queue_puts_the_store_s_copy_in_the_place_of_a_kept_item() {
        let job = |seq, kept, attempts| K {
            seq,
            due: 500,
            kept,
            attempts,
        };
        let mut q = JobQueue::new(false);
        q.push(job(3, true, 1)).unwrap();
        q.push(job(4, false, 0)).unwrap();
        // Another delivery's, or another round's: none to replace.
        assert_eq!(q.replace_kept(job(4, false, 1)), Err(job(4, false, 1)));
        assert_eq!(q.replace_kept(job(3, false, 0)), Err(job(3, false, 0)));
        // The same: in its place, the kept one gone (unreported).
        assert_eq!(q.replace_kept(job(3, false, 1)), Ok(()));
        assert_eq!(q.drain(), vec![job(3, false, 1), job(4, false, 0)]);
        // Only a kept one gives way; an ordered queue settles copies as it takes them.
        q.push(job(3, false, 1)).unwrap();
        assert_eq!(q.replace_kept(job(3, false, 1)), Err(job(3, false, 1)));
        let mut o = JobQueue::new(true);
        o.push(job(3, true, 1)).unwrap();
        assert_eq!(o.replace_kept(job(3, false, 1)), Err(job(3, false, 1)));
    }

    #[test]
    fn ordered_takes_a_new_round_of_a_finished_delivery() {
        let job = |attempts| K {
            seq: 5,
            due: 0,
            kept: false,
            attempts,
        };
        let mut q = JobQueue::new(true);
        q.push(job(0)).unwrap();
        assert_eq!(q.pop(), Some(job(0)));
        q.completed(5, 1);
        // A late copy of the finished round is stale; a replay (as many attempts as it
        // made) runs, and once it finishes, a copy of it is stale in turn.
        assert_eq!(q.push(job(0)), Err(job(0)));
        assert_eq!(q.push(job(1)), Ok(None));
        assert_eq!(
            q.push(job(0)),
            Err(job(0)),
            "still late after the replay came"
        );
        assert_eq!(q.pop(), Some(job(1)));
        q.completed(5, 2);
        assert_eq!(q.push(job(1)), Err(job(1)));
        // Expired: every copy is stale.
        q.completed(5, u16::MAX);
        assert_eq!(q.push(job(9)), Err(job(9)));
    }
}
