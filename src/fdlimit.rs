//! The process's open-file limit: raised at start, and shared out so that delivery
//! connections cannot take the descriptors the store needs.
//!
//! Owns the budget of outgoing (delivery) sockets: at most the open-file limit less a
//! reserve for RocksDB (its WAL, table files, flush and compaction outputs), ingest and
//! admin connections, listeners and the runtimes' own descriptors. A lane takes a
//! [`Permit`] before it connects and the permit goes with the connection. Ingest
//! connections have a budget of their own, half the reserve ([`ConnPermit`]): producers
//! that leave hundreds of connections open would otherwise take the store's
//! descriptors. Without it,
//! endpoints × `max_in_flight` could exhaust the descriptors: a WAL that cannot be
//! opened leaves RocksDB refusing writes until a restart, and a socket that cannot be
//! made would count as the receiver's failure. It must not decide what a lane does
//! without a permit (the worker holds the job back; see `worker`).
//!
//! The last tenth of the budget is shared out: from nine tenths in use, a holder (an
//! endpoint) gets another socket only while it holds fewer than are still free. One
//! endpoint whose receiver hangs, with a large `max_in_flight`, would otherwise take
//! every socket and hold back every other endpoint's deliveries; with the rule it
//! stops at nine tenths, the others share what is left, and as its attempts time out
//! it shrinks towards an even share (k such endpoints hold at most k/(k+1) of the budget
//! between them once it is scarce).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The delivery sockets of every worker.
static SOCKETS: Budget = Budget::new(usize::MAX);
/// Ingest connections (Unix socket and TCP).
static INGEST: Budget = Budget::new(usize::MAX);

/// Sockets open against how many may be.
#[derive(Debug)]
pub struct Budget {
    open: AtomicUsize,
    max: AtomicUsize,
}

/// Raises the soft open-file limit to the hard one (a server with thousands of
/// endpoints needs more than the usual 1,024) and sets the delivery budget from it.
/// Returns (the limit before, the limit now, the budget).
pub fn init() -> std::io::Result<(u64, u64, usize)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid rlimit, within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let budget = budget_for(lim.rlim_cur);
    SOCKETS.max.store(budget, Ordering::Release);
    INGEST
        .max
        .store(ingest_budget_for(lim.rlim_cur), Ordering::Release);
    Ok((before, lim.rlim_cur, budget))
}

/// Descriptors kept from delivery sockets: a quarter of the limit, at least 256 and at
/// most 16,384.
fn reserve_for(limit: usize) -> usize {
    (limit / 4).clamp(256, 16_384)
}

/// The delivery sockets a limit of `limit` open files leaves: everything but the
/// reserve.
pub fn budget_for(limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    limit.saturating_sub(reserve_for(limit)).max(1)
}

/// The ingest connections a limit of `limit` open files allows: half the reserve (the
/// other half is the store's, the admin API's and the process's own).
pub fn ingest_budget_for(limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    reserve_for(limit).min(limit) / 2
}

impl Budget {
    const fn new(max: usize) -> Budget {
        Budget {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// A permit for one more socket for a holder with `held` open, unless the budget is
    /// in use or (nine tenths of it in use) the holder has its share.
    fn take(&'static self, held: usize) -> bool {
        let max = self.max.load(Ordering::Acquire);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                allows(n, max, held).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Whether, with `open` of `max` sockets open, a holder of `held` of them gets one more.
fn allows(open: usize, max: usize, held: usize) -> bool {
    open < max && (open < max - max / 10 || held < max - open)
}

/// One delivery socket's share of the budget, given back when dropped (to the budget,
/// and to its holder's count).
#[derive(Debug)]
pub struct Permit {
    budget: &'static Budget,
    holder: Option<Rc<Cell<usize>>>,
}

impl Permit {
    /// A permit for one more delivery socket, for `holder` (an endpoint's count of the
    /// sockets it holds, which the permit raises while it lives) or for no one in
    /// particular, unless the budget is in use or the holder has its share of the
    /// last tenth.
    pub fn take(holder: Option<&Rc<Cell<usize>>>) -> Option<Permit> {
        Self::take_from(&SOCKETS, holder)
    }

    fn take_from(budget: &'static Budget, holder: Option<&Rc<Cell<usize>>>) -> Option<Permit> {
        let held = holder.map_or(0, |h| h.get());
        if !budget.take(held) {
            return None;
        }
        if let Some(h) = holder {
            h.set(held + 1);
        }
        Some(Permit {
            budget,
            holder: holder.cloned(),
        })
    }

    /// The budget (`usize::MAX` until [`init`]).
    pub fn budget() -> usize {
        SOCKETS.max.load(Ordering::Acquire)
    }

    /// Whether nine tenths of the budget or more are in use: an idle connection then
    /// holds a socket another endpoint may be waiting for.
    pub fn scarce() -> bool {
        let max = SOCKETS.max.load(Ordering::Acquire);
        SOCKETS.open.load(Ordering::Acquire) >= max - max / 10
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(h) = &self.holder {
            h.set(h.get() - 1);
        }
    }
}

/// One ingest connection's share of its budget, given back when dropped. It travels
/// with the connection from the accepting thread to its worker.
#[derive(Debug)]
pub struct ConnPermit(&'static Budget);

impl ConnPermit {
    /// A permit for one more ingest connection, unless as many are open as the limit
    /// allows.
    pub fn take() -> Option<ConnPermit> {
        Self::take_from(&INGEST)
    }

    fn take_from(budget: &'static Budget) -> Option<ConnPermit> {
        // Made only once taken: a permit dropped gives its count back.
        budget.take(0).then(|| ConnPermit(budget))
    }

    /// The ingest budget (`usize::MAX` until [`init`]).
    pub fn budget() -> usize {
        INGEST.max.load(Ordering::Acquire)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a failure to make a socket is this machine's want of resources (open-file
/// limits, kernel memory) rather than anything about the receiver.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_a_reserve() {
        assert_eq!(budget_for(1024), 768);
        assert_eq!(budget_for(256), 1);
        assert_eq!(budget_for(20_000), 15_000);
        assert_eq!(budget_for(1 << 20), (1 << 20) - 16_384);
        assert_eq!(ingest_budget_for(1024), 128);
        assert_eq!(ingest_budget_for(20_000), 2_500);
        assert_eq!(ingest_budget_for(1 << 20), 8_192);
        assert_eq!(ingest_budget_for(100), 50);
    }

    #[test]
    fn permits_are_counted_and_given_back() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(2)));
        let held = Rc::new(Cell::new(0));
        let a = Permit::take_from(budget, Some(&held)).expect("first");
        let b = Permit::take_from(budget, None).expect("second");
        assert_eq!(held.get(), 1);
        assert!(
            Permit::take_from(budget, None).is_none(),
            "the budget is in use"
        );
        drop(a);
        assert_eq!(held.get(), 0);
        assert!(Permit::take_from(budget, Some(&held)).is_some());
        drop(b);
        assert_eq!(budget.open.load(Ordering::Acquire), 0);
        assert_eq!(held.get(), 0);
    }

    #[test]
    fn ingest_permits_are_counted_and_a_refusal_takes_none() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(2)));
        let a = ConnPermit::take_from(budget).expect("first");
        let b = ConnPermit::take_from(budget).expect("second");
        for _ in 0..3 {
            assert!(ConnPermit::take_from(budget).is_none());
        }
        assert_eq!(budget.open.load(Ordering::Acquire), 2);
        drop(a);
        let c = ConnPermit::take_from(budget).expect("one given back");
        drop((b, c));
        assert_eq!(budget.open.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_last_tenth_is_shared_out() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(100)));
        // One holder alone takes nine tenths, and no more.
        let hog = Rc::new(Cell::new(0));
        let mut hogs: Vec<Permit> =
            std::iter::from_fn(|| Permit::take_from(budget, Some(&hog))).collect();
        assert_eq!(hogs.len(), 90);
        // Another gets sockets while it holds fewer than are free: 5 of the 10.
        let other = Rc::new(Cell::new(0));
        let others: Vec<Permit> =
            std::iter::from_fn(|| Permit::take_from(budget, Some(&other))).collect();
        assert_eq!(others.len(), 5);
        // The first, once some of its sockets close, gets none back while the budget
        // is scarce and it holds more than are free; the other gets them.
        hogs.truncate(85);
        assert_eq!(hog.get(), 85);
        assert!(Permit::take_from(budget, Some(&hog)).is_none());
        let more: Vec<Permit> =
            std::iter::from_fn(|| Permit::take_from(budget, Some(&other))).collect();
        assert_eq!((more.len(), other.get()), (3, 8));
        assert!(allows(65, 100, 4) && !allows(95, 100, 5) && !allows(100, 100, 0));
        drop((others, more, hogs));
        assert_eq!((hog.get(), other.get()), (0, 0));
        assert_eq!(budget.open.load(Ordering::Acquire), 0);
    }

    #[test]
    fn want_of_descriptors_is_local() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_local_exhaustion(&std::io::Error::from_raw_os_error(
                errno
            )));
        }
        assert!(!is_local_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
    }
}
