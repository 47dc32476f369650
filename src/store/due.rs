//! The delivery queue's reads: the `due` index (pending deliveries in due-time order:
//! the loader's pages, the committer's census at start, a disable's scan) and the
//! `paused` sets (a disabled endpoint's deliveries, set aside), and
//! [`Store::pause_due`], which moves deliveries from the one to the other a page at a
//! time.
//!
//! Its keys and values are [`DueKey`] and [`DueVal`]; every other write goes through
//! [`Batch`](super::Batch). Must not decide what falls due or when (the committer and
//! the retry schedule do).

use rocksdb::{Direction, IteratorMode, ReadOptions, DB};

use super::keys::paused_key;
use super::{DueKey, DueVal, EndpointId, Result, Seq, Store, StoreError, CF_DUE, CF_PAUSED};

/// Keys of the due index read per write by [`Store::pause_due`].
const PAUSE_SCAN: usize = 16_384;

/// Due entries found by a paged scan, and the key to go on from (`None`: the end).
pub type DuePage = (Vec<(DueKey, DueVal)>, Option<DueKey>);

/// The entry a `due` iterator is at.
fn due_entry(it: &rocksdb::DBRawIteratorWithThreadMode<'_, DB>) -> Result<(DueKey, DueVal)> {
    let k = it
        .key()
        .and_then(DueKey::decode)
        .ok_or(StoreError::Corrupt {
            cf: CF_DUE,
            what: "bad key".into(),
        })?;
    Ok((k, DueVal::decode(it.value().unwrap_or_default())))
}

impl Store {
    /// Whether `key` is in the due index.
    pub fn has_due(&self, key: DueKey) -> Result<bool> {
        #[cfg(test)]
        self.faults.due_lookup()?;
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_DUE), key.encode())?
            .is_some())
    }

    /// Up to `limit` due entries with key ≥ `from` and due time < `until_ms`, in key order.
    pub fn due_range(
        &self,
        from: DueKey,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(DueKey, DueVal)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(until_ms.to_be_bytes().to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_DUE), ro);
        it.seek(from.encode());
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            out.push(due_entry(&it)?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The due entries `mine` picks among the first `scan` keys ≥ `from` (and below
    /// `below`, if given), in key order, at most `most` of them, and the key to go on
    /// from (`None` at the end of the index, or at `below`): the index is ordered by
    /// time, so moving all of some endpoints' deliveries scans it in pages this way.
    pub fn due_where(
        &self,
        from: DueKey,
        below: Option<DueKey>,
        scan: usize,
        most: usize,
        mut mine: impl FnMut(&DueKey) -> bool,
    ) -> Result<DuePage> {
        let mut ro = ReadOptions::default();
        if let Some(b) = below {
            ro.set_iterate_upper_bound(b.encode().to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_DUE), ro);
        it.seek(from.encode());
        let mut out = Vec::new();
        let mut scanned = 0;
        while it.valid() {
            let (k, v) = due_entry(&it)?;
            if scanned == scan || out.len() == most {
                return Ok((out, Some(k)));
            }
            scanned += 1;
            if mine(&k) {
                out.push((k, v));
            }
            it.next();
        }
        it.status()?;
        Ok((out, None))
    }

    /// Moves every due delivery `pick` chooses to its endpoint's paused set, a write
    /// per [`PAUSE_SCAN`] keys read (a disable's: rare, and a large backlog must not
    /// make one huge write). `moved` counts what is written, also when a later page
    /// fails.
    pub fn pause_due(&self, mut pick: impl FnMut(&DueKey) -> bool, moved: &mut u64) -> Result<()> {
        let mut from = Some(DueKey::MIN);
        while let Some(at) = from {
            let (page, next) = self.due_where(at, None, PAUSE_SCAN, usize::MAX, &mut pick)?;
            let mut batch = self.batch();
            for &(key, val) in &page {
                batch.del_due(self, key);
                batch.pause(self, key.ep, key.seq, val);
            }
            self.commit(batch, false)?;
            *moved += page.len() as u64;
            from = next;
        }
        Ok(())
    }

    /// Number of keys in `due` (pending deliveries), for tests. Scans.
    #[cfg(test)]
    pub fn count_due(&self) -> Result<usize> {
        self.each_due(|_, _| {})
    }

    /// Every key in `due` with its value, in order, passed to `each`; returns how many
    /// there are. Scans the whole index (the committer's census at start).
    pub fn each_due(&self, mut each: impl FnMut(DueKey, DueVal)) -> Result<usize> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_DUE), IteratorMode::Start) {
            let (k, v) = item?;
            if let Some(k) = DueKey::decode(&k) {
                each(k, DueVal::decode(&v));
            }
            n += 1;
        }
        Ok(n)
    }

    /// Paused deliveries of an endpoint, oldest first, up to `limit`, from `after_seq`.
    pub fn paused_of(
        &self,
        ep: EndpointId,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DueVal)>> {
        #[cfg(test)]
        self.faults.paused_page()?;
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_PAUSED),
            IteratorMode::From(&paused_key(ep, after_seq), Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if k.len() != 12 || k[..4] != ep.to_be_bytes() || out.len() >= limit {
                break;
            }
            out.push((
                u64::from_be_bytes(k[4..].try_into().unwrap_or_default()),
                DueVal::decode(&v),
            ));
        }
        Ok(out)
    }
}
