//! Lock-free bookkeeping of which event ids the sink has seen and which it answered
//! with a 2xx, shared by every sink thread. Generator ids (`ld-<run>-<n>`) land in a
//! chunked atomic bitset per run tag, so marking one costs a `fetch_or`; any other id
//! falls back to a mutex-guarded hash map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::http::parse_load_id;

const CHUNK_BITS: u64 = 1 << 20;
const CHUNK_WORDS: usize = (CHUNK_BITS / 64) as usize;
const CHUNKS: usize = 4096;

/// A grow-on-demand bitset over `0..CHUNKS*CHUNK_BITS` (4 Gi ids, 128 KiB per
/// touched million).
pub struct Bits {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl Default for Bits {
    fn default() -> Self {
        Bits {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl Bits {
    /// Sets bit `n`; returns whether it was already set. `None` if `n` is out of range.
    pub fn set(&self, n: u64) -> Option<bool> {
        let chunk = self.chunks.get((n / CHUNK_BITS) as usize)?;
        let words = chunk.get_or_init(|| (0..CHUNK_WORDS).map(|_| AtomicU64::new(0)).collect());
        let bit = n % CHUNK_BITS;
        let mask = 1u64 << (bit % 64);
        Some(words[(bit / 64) as usize].fetch_or(mask, Relaxed) & mask != 0)
    }

    /// How many bits are set.
    pub fn count(&self) -> u64 {
        self.chunks
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|words| words.iter())
            .map(|w| u64::from(w.load(Relaxed).count_ones()))
            .sum()
    }

    /// The highest set bit, `None` when none is.
    pub fn highest(&self) -> Option<u64> {
        self.chunks.iter().enumerate().rev().find_map(|(c, chunk)| {
            let words = chunk.get()?;
            words.iter().enumerate().rev().find_map(|(i, w)| {
                let w = w.load(Relaxed);
                (w != 0).then(|| {
                    c as u64 * CHUNK_BITS + i as u64 * 64 + u64::from(63 - w.leading_zeros())
                })
            })
        })
    }

    pub fn get(&self, n: u64) -> bool {
        let Some(chunk) = self.chunks.get((n / CHUNK_BITS) as usize) else {
            return false;
        };
        let Some(words) = chunk.get() else {
            return false;
        };
        let bit = n % CHUNK_BITS;
        words[(bit / 64) as usize].load(Relaxed) & (1u64 << (bit % 64)) != 0
    }
}

/// Per generator run: which `n` were seen and which answered 2xx.
#[derive(Default)]
pub struct RunIds {
    pub seen: Bits,
    pub delivered: Bits,
}

/// The ids of one run tag the sink never saw below the highest it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunGaps {
    pub tag: String,
    /// The highest `n` seen.
    pub highest: u64,
    /// `highest + 1 -` the distinct `n` seen: numbers below the highest never seen.
    pub missing: u64,
}

/// What the sink learned from one request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// First request ever carrying this id.
    pub first_seen: bool,
    /// A 2xx answer for an id that already had one.
    pub duplicate: bool,
    /// A 2xx answer, the first for this id.
    pub first_delivery: bool,
    /// Seen before but not yet delivered: a retry.
    pub retry: bool,
}

/// A run tag and its bitsets.
type TaggedRun = (Box<[u8]>, Arc<RunIds>);

/// Every id the sink has seen, shared by its threads.
#[derive(Default)]
pub struct IdSet {
    runs: RwLock<Vec<TaggedRun>>,
    /// Ids not from the generator: bit 0 = seen, bit 1 = delivered.
    other: Mutex<HashMap<Box<[u8]>, u8>>,
}

/// A thread's cache of the last run tag it looked up, so the shared lock is taken once
/// per run, not once per request.
#[derive(Default)]
pub struct RunCache {
    last: Option<TaggedRun>,
}

impl IdSet {
    /// The bitsets of a run tag, created on first use.
    pub fn run(&self, tag: &[u8]) -> Arc<RunIds> {
        if let Some((_, ids)) = self
            .runs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(t, _)| &**t == tag)
        {
            return ids.clone();
        }
        let mut runs = self.runs.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, ids)) = runs.iter().find(|(t, _)| &**t == tag) {
            return ids.clone();
        }
        let ids = Arc::new(RunIds::default());
        runs.push((tag.into(), ids.clone()));
        ids
    }

    /// Records a request carrying `id`; `delivered` when it was answered 2xx.
    pub fn mark(&self, cache: &mut RunCache, id: &[u8], delivered: bool) -> Mark {
        let (was_seen, was_delivered) = match parse_load_id(id) {
            Some((tag, n)) => {
                let ids = match &cache.last {
                    Some((t, ids)) if **t == *tag => ids.clone(),
                    _ => {
                        let ids = self.run(tag);
                        cache.last = Some((tag.into(), ids.clone()));
                        ids
                    }
                };
                match ids.seen.set(n) {
                    Some(was_seen) => {
                        let was_delivered = if delivered {
                            ids.delivered.set(n).unwrap_or(false)
                        } else {
                            ids.delivered.get(n)
                        };
                        (was_seen, was_delivered)
                    }
                    None => self.mark_other(id, delivered),
                }
            }
            None => self.mark_other(id, delivered),
        };
        Mark {
            first_seen: !was_seen,
            duplicate: delivered && was_delivered,
            first_delivery: delivered && !was_delivered,
            retry: was_seen && !was_delivered,
        }
    }

    /// Per run tag (in order of first appearance): the ids missing below the highest
    /// seen. The generator numbers a run's events 0, 1, 2, .. with no gaps (connection
    /// `c` of `k` sends `c, c + k, ..`), so a gap is an event that never arrived — except
    /// up to `k - 1` at the very top when a duration, not an event count, ended the run.
    pub fn gaps(&self) -> Vec<RunGaps> {
        let runs = self.runs.read().unwrap_or_else(|e| e.into_inner());
        runs.iter()
            .filter_map(|(tag, ids)| {
                // Count before looking for the highest: bits are only ever set, so every
                // bit counted is then at or below the highest found.
                let seen = ids.seen.count();
                ids.seen.highest().map(|highest| RunGaps {
                    tag: String::from_utf8_lossy(tag).into_owned(),
                    highest,
                    missing: (highest + 1).saturating_sub(seen),
                })
            })
            .collect()
    }

    fn mark_other(&self, id: &[u8], delivered: bool) -> (bool, bool) {
        let mut other = self.other.lock().unwrap_or_else(|e| e.into_inner());
        let flags = match other.get_mut(id) {
            Some(f) => f,
            None => other.entry(id.into()).or_insert(0),
        };
        let before = *flags;
        *flags |= 1 | if delivered { 2 } else { 0 };
        (before & 1 != 0, before & 2 != 0)
    }

    /// Was generator event `n` of run `tag` ever answered 2xx?
    #[cfg(test)]
    pub fn delivered(&self, tag: &[u8], n: u64) -> bool {
        self.run(tag).delivered.get(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_set_get_across_chunks() {
        let b = Bits::default();
        for n in [0, 63, 64, CHUNK_BITS - 1, CHUNK_BITS, 5 * CHUNK_BITS + 17] {
            assert!(!b.get(n));
            assert_eq!(b.set(n), Some(false));
            assert_eq!(b.set(n), Some(true));
            assert!(b.get(n));
        }
        assert!(!b.get(1));
        assert_eq!(b.set(CHUNKS as u64 * CHUNK_BITS), None);
    }

    #[test]
    fn count_and_highest_across_chunks() {
        let b = Bits::default();
        assert_eq!(b.count(), 0);
        assert_eq!(b.highest(), None);
        for (i, n) in [
            0,
            5,
            63,
            64,
            127,
            CHUNK_BITS - 1,
            CHUNK_BITS,
            CHUNK_BITS + 70,
        ]
        .into_iter()
        .enumerate()
        {
            b.set(n);
            assert_eq!(b.count(), i as u64 + 1);
            assert_eq!(b.highest(), Some(n));
        }
        b.set(5);
        assert_eq!(b.count(), 8);
        assert_eq!(b.highest(), Some(CHUNK_BITS + 70));
        let top = CHUNKS as u64 * CHUNK_BITS - 1;
        b.set(top);
        assert_eq!(b.count(), 9);
        assert_eq!(b.highest(), Some(top));
    }

    #[test]
    fn gaps_below_the_highest_id_per_run() {
        let set = IdSet::default();
        let mut cache = RunCache::default();
        assert!(set.gaps().is_empty());
        // Run a: 0..10 without 3 and 7, 5 twice. Run b: only 4 (0..4 missing).
        for n in (0..10).filter(|n| *n != 3 && *n != 7).chain([5]) {
            set.mark(&mut cache, format!("ld-a-{n}").as_bytes(), n % 2 == 0);
        }
        set.mark(&mut cache, b"ld-b-4", true);
        set.mark(&mut cache, b"evt_1", true);
        let g = set.gaps();
        assert_eq!(
            g,
            vec![
                RunGaps {
                    tag: "a".into(),
                    highest: 9,
                    missing: 2
                },
                RunGaps {
                    tag: "b".into(),
                    highest: 4,
                    missing: 4
                },
            ]
        );
    }

    #[test]
    fn marks_follow_delivery_lifecycle() {
        let set = IdSet::default();
        let mut cache = RunCache::default();
        // 500 first, then a retry that succeeds, then a duplicate delivery.
        let m = set.mark(&mut cache, b"ld-r1-5", false);
        assert!(m.first_seen && !m.first_delivery && !m.retry);
        let m = set.mark(&mut cache, b"ld-r1-5", true);
        assert!(!m.first_seen && m.first_delivery && m.retry && !m.duplicate);
        let m = set.mark(&mut cache, b"ld-r1-5", true);
        assert!(m.duplicate && !m.first_delivery && !m.retry);
        assert!(set.delivered(b"r1", 5));
        assert!(!set.delivered(b"r2", 5));
        // Other runs and foreign ids are kept apart.
        assert!(set.mark(&mut cache, b"ld-r2-5", true).first_delivery);
        assert!(set.mark(&mut cache, b"evt_123", true).first_delivery);
        assert!(set.mark(&mut cache, b"evt_123", true).duplicate);
    }
}
