//! Readers handed out for loops outside the store's own calls: [`EventReader`], with
//! which the loader reads the events of a page of due deliveries in about ascending
//! order (one iterator while they are dense, point reads where they are sparse), and
//! [`FloorReader`], with which the workers check the retention floor.
//!
//! Both only read: an [`EventReader`] is for one pass (its iterator does not see later
//! writes), a [`FloorReader`] only loads the floor the store moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::DB;

use super::{seq_floor, seq_time_ms, EventRecord, Result, Seq, Store, CF_EVENTS};

/// Reads the retention floor ([`Store::floor_reader`]): events below it are gone.
#[derive(Clone, Debug)]
pub struct FloorReader(Arc<AtomicU64>);

impl FloorReader {
    /// Whether event `seq` is below the retention floor.
    pub fn is_past(&self, seq: Seq) -> bool {
        seq < self.0.load(Ordering::Relaxed)
    }
}

impl Store {
    /// The retention floor to read where the store itself is not (the workers: a
    /// delivery they hold whose event passed it expires instead of being attempted).
    pub fn floor_reader(&self) -> FloorReader {
        FloorReader(self.floor.clone())
    }

    /// A reader for many events in about ascending order (the loader's pages): see
    /// [`EventReader`]. One per pass: its iterator does not see later writes.
    pub fn event_reader(&self) -> EventReader<'_> {
        EventReader {
            store: self,
            following: false,
            last: None,
            // Blocks go through the block cache, as for point reads: the scattered
            // reads of one pass and the runs of the next may share them.
            it: self.db.raw_iterator_cf(self.cf(CF_EVENTS)),
            floor: self.retention_floor(),
        }
    }
}

/// Events read one by one in about ascending sequence order, as the loader hands a
/// page of due deliveries to the workers. While the events asked for are dense (the
/// fresh deliveries spilled during a burst, the retries of a high failure rate), one
/// iterator over the log follows them, a step per event passed; where they are sparse,
/// each is a point read. Measured by `cargo bench --bench loader`: a step costs ~0.35 µs,
/// a point read ~2.3–3.7 µs, a seek ~8 µs — so the reader steps at most
/// [`READER_STEPS`] keys, and seeks only to follow a dense run again.
pub struct EventReader<'a> {
    store: &'a Store,
    it: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
    floor: Seq,
    /// The iterator is at (or just before) the events asked for.
    following: bool,
    /// The event asked for last.
    last: Option<Seq>,
}

/// How far [`EventReader`] steps forward before it reads the event on its own instead.
const READER_STEPS: usize = 8;

/// Whether `to` may be at most [`READER_STEPS`] keys after `from`: close in number, or
/// early in the next millisecond (a dense run of sequence numbers crosses into it there).
fn near(from: Seq, to: Seq) -> bool {
    let steps = READER_STEPS as u64;
    to > from
        && (to - from <= steps
            || (seq_time_ms(to) == seq_time_ms(from) + 1
                && to - seq_floor(seq_time_ms(to)) < steps))
}

impl EventReader<'_> {
    /// The event `seq`, like [`Store::event`] (`None` if it is past retention or gone).
    pub fn get(&mut self, seq: Seq) -> Result<Option<EventRecord>> {
        if seq < self.floor {
            return Ok(None);
        }
        #[cfg(test)]
        self.store.faults.event_read()?;
        let last = self.last.replace(seq);
        let target = seq.to_be_bytes();
        let at = self
            .it
            .key()
            .and_then(|k| k.try_into().ok())
            .map(u64::from_be_bytes);
        if self.following {
            if at.is_some_and(|at| at == seq || near(at, seq)) {
                let mut steps = 0;
                while let Some(k) = self.it.key() {
                    match k.cmp(&target[..]) {
                        std::cmp::Ordering::Equal => return self.current(seq),
                        std::cmp::Ordering::Less if steps < READER_STEPS => {
                            self.it.next();
                            steps += 1;
                        }
                        // Stepped from below to past it: the log has no such event.
                        std::cmp::Ordering::Greater if steps > 0 => return Ok(None),
                        _ => break,
                    }
                }
            }
            // Behind the iterator, far ahead of it, or past the end: on its own.
            self.following = false;
        } else if last.is_some_and(|l| near(l, seq)) {
            // Dense again: the iterator follows from here.
            self.it.seek(target);
            self.following = true;
            return match self.it.key() {
                Some(k) if k == target => self.current(seq),
                _ => {
                    self.it.status()?;
                    Ok(None)
                }
            };
        }
        self.store.event(seq)
    }

    fn current(&self, seq: Seq) -> Result<Option<EventRecord>> {
        let v = self.it.value().unwrap_or_default();
        Ok(Some(EventRecord::decode(seq, v)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::ev;

    #[test]
    fn event_reader_answers_like_point_reads_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut on_disk = s.batch();
        let ms_end = seq_floor(6) - 3..seq_floor(6) + 3;
        for seq in [10, 11, 12, 14]
            .into_iter()
            .chain(20..60)
            .chain(ms_end.clone())
        {
            on_disk.put_event(&s, &ev(seq));
        }
        s.commit(on_disk, false).unwrap();
        s.flush().unwrap();
        // Some in a table file, some still in the memtable.
        let mut recent = s.batch();
        for seq in [60, 61, 100, 200] {
            recent.put_event(&s, &ev(seq));
        }
        s.commit(recent, false).unwrap();
        let wanted = [
            10, 11, 11, 13, 14, 12, 40, 41, 59, 60, 61, 62, 99, 100, 300, 5, 200, 55, 56,
        ];
        let mut r = s.event_reader();
        for seq in wanted.into_iter().chain(ms_end) {
            let got = r.get(seq).unwrap();
            assert_eq!(got, s.event(seq).unwrap(), "seq {seq}");
            assert_eq!(got.is_some(), ![13, 62, 99, 300, 5].contains(&seq));
        }
        s.set_retention_floor(30);
        let mut r = s.event_reader();
        assert_eq!(r.get(20).unwrap(), None);
        assert_eq!(r.get(30).unwrap(), Some(ev(30)));
    }
}
