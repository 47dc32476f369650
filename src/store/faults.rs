//! Read and write failures a unit test injects (test builds only): the next reads of an
//! event, look-ups of a due key, a paused delivery or a failed one, reads of a page of
//! a paused set, or writes of a batch, fail as they would on a failing (or full) disk,
//! so the callers' paths for a
//! failed read or write can be tested. The store's reads and [`Store::commit`] check
//! here first; a build that is not a test has none of it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::{Result, Store, StoreError};

/// What an injected event read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A failure that may pass when read again ([`StoreError::Injected`]).
    Transient,
    /// A record that does not decode: read again, it fails again.
    Corrupt,
}

/// The reads still to fail.
#[derive(Default)]
pub(super) struct Faults {
    event_reads: AtomicU32,
    events_corrupt: AtomicBool,
    due_lookups: AtomicU32,
    paused_lookups: AtomicU32,
    failed_lookups: AtomicU32,
    /// Reads of a page of an endpoint's paused set ([`Store::paused_of`]).
    paused_pages: AtomicU32,
    /// Those two fail as a corrupt record would, for good.
    lookups_corrupt: AtomicBool,
    writes: AtomicU32,
    /// Writes that pass before those counted in `writes` fail.
    writes_passing: AtomicU32,
}

/// Takes one of the failures counted in `n`, as the error it makes: `corrupt`, one
/// that lasts.
fn fail_if(n: &AtomicU32, corrupt: bool) -> Result<()> {
    match (take(n), corrupt) {
        (false, _) => Ok(()),
        (true, false) => Err(StoreError::Injected),
        (true, true) => Err(StoreError::Corrupt {
            cf: "paused",
            what: "a corrupt record injected by a test".into(),
        }),
    }
}

/// Takes one of the failures counted in `n`: whether there was one.
fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Faults {
    /// Before an event is read.
    pub(super) fn event_read(&self) -> Result<()> {
        if !take(&self.event_reads) {
            return Ok(());
        }
        Err(if self.events_corrupt.load(Ordering::SeqCst) {
            StoreError::Corrupt {
                cf: "events",
                what: "a corrupt record injected by a test".into(),
            }
        } else {
            StoreError::Injected
        })
    }

    /// Before a due key is looked up.
    pub(super) fn due_lookup(&self) -> Result<()> {
        fail_if(&self.due_lookups, false)
    }

    /// Before a page of a paused set is read ([`Store::paused_of`]).
    pub(super) fn paused_page(&self) -> Result<()> {
        fail_if(&self.paused_pages, false)
    }

    /// Before a paused delivery is looked up ([`Store::is_paused`]).
    pub(super) fn paused_lookup(&self) -> Result<()> {
        fail_if(
            &self.paused_lookups,
            self.lookups_corrupt.load(Ordering::SeqCst),
        )
    }

    /// Before a failed delivery is looked up ([`Store::is_failed`]).
    pub(super) fn failed_lookup(&self) -> Result<()> {
        fail_if(
            &self.failed_lookups,
            self.lookups_corrupt.load(Ordering::SeqCst),
        )
    }

    /// Before a batch is written ([`Store::commit`]): nothing of it is.
    pub(super) fn write(&self) -> Result<()> {
        if take(&self.writes_passing) {
            return Ok(());
        }
        fail_if(&self.writes, false)
    }
}

impl Store {
    /// The next `n` event reads (a point read, or an [`EventReader`]'s) fail with
    /// `fault`.
    ///
    /// [`EventReader`]: super::EventReader
    pub fn fail_event_reads(&self, n: u32, fault: Fault) {
        self.faults
            .events_corrupt
            .store(fault == Fault::Corrupt, Ordering::SeqCst);
        self.faults.event_reads.store(n, Ordering::SeqCst);
    }

    /// The next `n` look-ups of a due key ([`Store::has_due`]) fail.
    pub fn fail_due_lookups(&self, n: u32) {
        self.faults.due_lookups.store(n, Ordering::SeqCst);
    }

    /// The next `n` look-ups of a paused delivery ([`Store::is_paused`]) fail with
    /// `fault`.
    pub fn fail_paused_lookups(&self, n: u32, fault: Fault) {
        self.faults
            .lookups_corrupt
            .store(fault == Fault::Corrupt, Ordering::SeqCst);
        self.faults.paused_lookups.store(n, Ordering::SeqCst);
    }

    /// The next `n` look-ups of a failed delivery ([`Store::is_failed`]) fail with
    /// `fault`.
    pub fn fail_failed_lookups(&self, n: u32, fault: Fault) {
        self.faults
            .lookups_corrupt
            .store(fault == Fault::Corrupt, Ordering::SeqCst);
        self.faults.failed_lookups.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads of a page of a paused set ([`Store::paused_of`]) fail.
    pub fn fail_paused_pages(&self, n: u32) {
        self.faults.paused_pages.store(n, Ordering::SeqCst);
    }

    /// The next `n` writes of a batch ([`Store::commit`]) fail, as on a full disk:
    /// nothing of the batch is written.
    pub fn fail_writes(&self, n: u32) {
        self.fail_writes_after(0, n);
    }

    /// The next `pass` writes of a batch succeed, and the `n` after them fail (a disk
    /// that fills, or a process that stops, part-way through a sequence of writes).
    pub fn fail_writes_after(&self, pass: u32, n: u32) {
        self.faults.writes_passing.store(pass, Ordering::SeqCst);
        self.faults.writes.store(n, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::ev;
    use crate::store::{DueKey, DueVal};

    #[test]
    fn injected_read_failures_fail_the_next_reads_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.batch();
        b.put_event(&s, &ev(7));
        let key = DueKey {
            due_ms: 1,
            seq: 7,
            ep: 1,
        };
        b.put_due(&s, key, DueVal::NEW);
        s.commit(b, false).unwrap();
        s.fail_event_reads(2, Fault::Transient);
        assert!(matches!(s.event(7), Err(StoreError::Injected)));
        let mut r = s.event_reader();
        assert!(r.get(7).is_err_and(|e| !e.lasting()));
        assert_eq!(r.get(7).unwrap(), Some(ev(7)));
        s.fail_event_reads(1, Fault::Corrupt);
        assert!(s.event(7).is_err_and(|e| e.lasting()));
        assert_eq!(s.event(7).unwrap(), Some(ev(7)));
        s.fail_due_lookups(1);
        assert!(s.has_due(key).is_err());
        assert!(s.has_due(key).unwrap());
        s.fail_paused_lookups(1, Fault::Transient);
        assert!(s.is_paused(1, 7).is_err_and(|e| !e.lasting()));
        assert!(!s.is_paused(1, 7).unwrap());
        s.fail_failed_lookups(1, Fault::Corrupt);
        assert!(s.is_failed(1, 7).is_err_and(|e| e.lasting()));
        assert!(!s.is_failed(1, 7).unwrap());
        s.fail_writes(1);
        let mut b = s.batch();
        b.del_due(&s, key);
        assert!(s.commit(b, false).is_err_and(|e| !e.lasting()));
        assert!(s.has_due(key).unwrap(), "nothing of it written");
        let mut b = s.batch();
        b.del_due(&s, key);
        s.commit(b, false).unwrap();
        assert!(!s.has_due(key).unwrap());
        s.fail_writes_after(1, 1);
        s.commit(s.batch(), false).unwrap();
        assert!(s.commit(s.batch(), false).is_err());
        s.commit(s.batch(), false).unwrap();
    }
}
