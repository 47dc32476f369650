//! The process's open-file limit: raised at start, and shared out so that delivery
//! connections cannot take the descriptors the store needs.
//!
//! Owns the budget of outgoing (delivery) sockets: at most the open-file limit less a
//! reserve for RocksDB (its WAL, table files, flush and compaction outputs), ingest and
//! admin connections, listeners and the runtimes' own descriptors. A lane takes a
//! [`Permit`] before it connects and the permit goes with the connection. Without it,
//! endpoints × `max_in_flight` could exhaust the descriptors: a WAL that cannot be
//! opened leaves RocksDB refusing writes until a restart, and a socket that cannot be
//! made would count as the receiver's failure. It must not decide what a lane does
//! without a permit (the worker holds the job back; see `worker`).
//!
//! The last tenth of the delivery budget is kept for endpoints that hold few sockets:
//! from nine tenths in use, a holder (an endpoint) gets another only while it holds
//! fewer than a hundredth of the budget (at least one). One endpoint whose receiver
//! hangs, with a large `max_in_flight`, would otherwise take every socket and hold back
//! every other endpoint's deliveries (and a rule by what is still free let a few such
//! endpoints take it all, each up to what the last had left); with this one, the last
//! tenth goes at most a hundredth to each endpoint, so at least ten share it, answering
//! or not. About ten more endpoints hanging at once still fill it, and while they keep
//! getting deliveries each socket a timed-out attempt frees is taken by one of them
//! again (no queue orders the waiting lanes). The cost: when every endpoint that wants
//! sockets holds many, the last tenth stays unused.
//!
//! Ingest connections have a budget of their own, half the reserve ([`ConnPermit`]):
//! producers that leave hundreds of connections open would otherwise take the store's
//! descriptors. The other half is the store's, the admin API's (at most 64 connections)
//! and the process's own: the store keeps at most [`store_files_for`] table files open
//! at once (RocksDB would otherwise keep every table file of a large store open, and a
//! store that grew past the limit could not open its next WAL or flush output). When
//! the limit is reached anyway, every listener (ingest and admin) backs off the same
//! way ([`after_failed_accept`]).
//!
//! A permit dropped on a worker is given back only once the worker's runtime has had
//! the chance to close its socket ([`release_closed`]): on io_uring a dropped socket is
//! closed by an operation submitted when the runtime next parks, and permits given back
//! at once let a churn of refused connects hold hundreds of descriptors past the
//! budget, until RocksDB could not open a file.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::tally::Tally;

/// The delivery sockets of every worker.
static SOCKETS: Budget = Budget::new(usize::MAX);
/// Ingest connections (Unix socket and TCP).
static INGEST: Budget = Budget::new(usize::MAX);
/// Ingest connections closed for want of a permit, since start.
static INGEST_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Descriptors of the store's half of the reserve that are not RocksDB's: the admin
/// API's connections (those it serves and those it lingers over closing) and 32 of the
/// process's own (standard streams, listeners, io_uring and event descriptors, the
/// resolver's sockets).
const NOT_TABLE_FILES: usize = crate::admin::MAX_CONNS + crate::admin::LINGER_MAX + 32;

/// Sockets open against how many may be.
#[derive(Debug)]
pub struct Budget {
    open: AtomicUsize,
    max: AtomicUsize,
}

/// What [`init`] found and set.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The soft open-file limit the process started with…
    pub before: u64,
    /// …and the one it runs with.
    pub now: u64,
    /// Delivery sockets ([`Permit`]).
    pub sockets: usize,
    /// Ingest connections ([`ConnPermit`]).
    pub ingest: usize,
    /// Table files the store may keep open ([`store_files_for`]).
    pub store_files: usize,
}

/// Raises the soft open-file limit to the hard one (a server with thousands of
/// endpoints needs more than the usual 1,024) and sets the budgets from it.
pub fn init() -> std::io::Result<Limits> {
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
    let limits = Limits {
        before,
        now: lim.rlim_cur,
        sockets: budget_for(lim.rlim_cur),
        ingest: ingest_budget_for(lim.rlim_cur),
        store_files: store_files_for(lim.rlim_cur),
    };
    SOCKETS.max.store(limits.sockets, Ordering::Release);
    INGEST.max.store(limits.ingest, Ordering::Release);
    Ok(limits)
}

/// Descriptors kept from delivery sockets: a quarter of the limit, at least 256 and at
/// most 16,384.
fn reserve_for(limit: usize) -> usize {
    (limit / 4).clamp(256, 16_384)
}

/// The delivery sockets a limit of `limit` open files leaves: everything but the
/// reserve.
fn budget_for(limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    limit.saturating_sub(reserve_for(limit)).max(1)
}

/// The ingest connections a limit of `limit` open files allows: half the reserve (the
/// other half is the store's, the admin API's and the process's own).
fn ingest_budget_for(limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    reserve_for(limit).min(limit) / 2
}

/// The store's `max_open_files` at a limit of `limit` open files: half the reserve less
/// what is not table files, at least 32. RocksDB keeps ten of them for its own files
/// (its WAL, manifest, info log), so 32 leaves 22 table files open, the rest reopened
/// as needed: a store with more table files reads a little slower, instead of running
/// out of descriptors.
pub(crate) fn store_files_for(limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    (reserve_for(limit).min(limit) / 2)
        .saturating_sub(NOT_TABLE_FILES)
        .max(32)
}

impl Budget {
    const fn new(max: usize) -> Budget {
        Budget {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// One more unit for a holder with `held` open, unless the budget is in use or
    /// (nine tenths of it in use) the holder has its share.
    fn take(&'static self, held: usize) -> Option<Share> {
        let max = self.max.load(Ordering::Acquire);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                allows(n, max, held).then_some(n + 1)
            })
            .ok()
            // Made only once taken: a share dropped gives its count back.
            .map(|_| Share(self))
    }
}

/// One unit of a budget, given back when dropped.
#[derive(Debug)]
struct Share(&'static Budget);

impl Drop for Share {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether, with `open` of `max` sockets open, a holder of `held` of them gets one more:
/// in the last tenth, only while it holds fewer than a hundredth of `max` (at least 1).
fn allows(open: usize, max: usize, held: usize) -> bool {
    open < max && (open < max - max / 10 || held < (max / 100).max(1))
}

/// One delivery socket's share of the budget, given back when dropped (to its holder's
/// count at once; to the budget at once, or on a worker once its socket is closed).
#[derive(Debug)]
pub struct Permit {
    share: Option<Share>,
    holder: Option<Rc<Cell<usize>>>,
}

thread_local! {
    /// On a thread running [`release_closed`]: the shares of permits dropped since it
    /// last ran, with its wake-up.
    static CLOSING: RefCell<Option<(Vec<Share>, Rc<crate::local::LocalNotify>)>> =
        const { RefCell::new(None) };
}

/// Ends [`release_closed`]'s work on this thread (a worker whose runtime is about to
/// drop its tasks): what it holds goes back now, and later drops give back at once.
pub fn stop_releasing() {
    let held = CLOSING.try_with(|c| c.borrow_mut().take()).ok().flatten();
    drop(held);
}

/// How long a dropped permit's share waits: the runtime parks (and submits the
/// socket's close) before a timer this long fires.
const CLOSE_WAIT: Duration = Duration::from_millis(2);

/// Gives back, on this worker, the shares of permits dropped here once their sockets'
/// closes have been submitted: each batch after a timer of [`CLOSE_WAIT`], which fires
/// only after the runtime has parked. Runs for the worker's life.
pub async fn release_closed() {
    let wake = Rc::new(crate::local::LocalNotify::default());
    CLOSING.with(|c| *c.borrow_mut() = Some((Vec::new(), wake.clone())));
    loop {
        wake.wait().await;
        let n = CLOSING.with(|c| c.borrow().as_ref().map_or(0, |(v, _)| v.len()));
        monoio::time::sleep(CLOSE_WAIT).await;
        // Those dropped before the wait; later ones wait for the next round.
        let done: Option<Vec<Share>> = CLOSING.with(|c| {
            let mut c = c.borrow_mut();
            // Gone: `stop_releasing` gave everything back.
            let (v, w) = c.as_mut()?;
            let done: Vec<Share> = v.drain(..n.min(v.len())).collect();
            if !v.is_empty() {
                w.notify();
            }
            Some(done)
        });
        let Some(done) = done else {
            return;
        };
        drop(done);
    }
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
        let share = budget.take(held)?;
        if let Some(h) = holder {
            h.set(held + 1);
        }
        Some(Permit {
            share: Some(share),
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
        if let Some(h) = &self.holder {
            h.set(h.get() - 1);
        }
        let Some(share) = self.share.take() else {
            return;
        };
        // (A thread being torn down has no `CLOSING`: the share is given back at once.)
        let share = CLOSING
            .try_with(|c| match c.borrow_mut().as_mut() {
                Some((v, wake)) => {
                    v.push(share);
                    wake.notify();
                    None
                }
                None => Some(share),
            })
            .unwrap_or(None);
        drop(share);
    }
}

/// One ingest connection's share of its budget, given back when dropped. It travels
/// with the connection from the accepting thread to its worker.
#[derive(Debug)]
pub struct ConnPermit {
    _share: Share,
}

impl ConnPermit {
    /// A permit for one more ingest connection, unless as many are open as the limit
    /// allows.
    pub fn take() -> Option<ConnPermit> {
        let permit = Self::take_from(&INGEST);
        if permit.is_none() {
            INGEST_REFUSED.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// Ingest connections refused a permit since start.
    pub fn refused() -> u64 {
        INGEST_REFUSED.load(Ordering::Relaxed)
    }

    fn take_from(budget: &'static Budget) -> Option<ConnPermit> {
        budget.take(0).map(|_share| ConnPermit { _share })
    }

    /// The ingest budget (`usize::MAX` until [`init`]).
    pub fn budget() -> usize {
        INGEST.max.load(Ordering::Acquire)
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

/// After a listener's `accept` failed (out of descriptors, mostly): one warning each
/// 10 s with the failures since the last, and a pause of 50 ms before the next try, so
/// that a shortage does not spin a core while it lasts (the connection waits in the
/// listen backlog meanwhile).
pub fn after_failed_accept(failed: &mut Tally, e: &std::io::Error, listener: &str) {
    if let Some(failures) = failed.note(Duration::from_secs(10)) {
        tracing::warn!(error = %e, failures, listener, "accept failed");
    }
    std::thread::sleep(Duration::from_millis(50));
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
        assert_eq!(store_files_for(1024), 32);
        assert_eq!(store_files_for(4096), 408);
        assert_eq!(store_files_for(20_000), 2_396);
        assert_eq!(store_files_for(1 << 20), 8_088);
        assert_eq!(store_files_for(100), 32);
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
    fn the_last_tenth_is_kept_for_endpoints_holding_few() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(1000)));
        let take_all = |h: &Rc<Cell<usize>>| -> Vec<Permit> {
            std::iter::from_fn(|| Permit::take_from(budget, Some(h))).collect()
        };
        // One holder alone takes nine tenths, and no more; a second that wants as
        // many gets a hundredth.
        let hog = Rc::new(Cell::new(0));
        let mut hogs = take_all(&hog);
        assert_eq!(hogs.len(), 900);
        let hog2 = Rc::new(Cell::new(0));
        let hogs2 = take_all(&hog2);
        assert_eq!(hogs2.len(), 10);
        // Nine more get as many each: then the budget is in use.
        let rest: Vec<(Rc<Cell<usize>>, Vec<Permit>)> = (0..9)
            .map(|_| {
                let h = Rc::new(Cell::new(0));
                let p = take_all(&h);
                (h, p)
            })
            .collect();
        assert!(rest.iter().all(|(h, p)| h.get() == 10 && p.len() == 10));
        assert_eq!(budget.open.load(Ordering::Acquire), 1000);
        assert!(Permit::take_from(budget, None).is_none());
        // Sockets that close go to those holding few, not back to the first.
        hogs.truncate(850);
        assert!(Permit::take_from(budget, Some(&hog)).is_none());
        let light = Rc::new(Cell::new(0));
        assert_eq!(take_all(&light).len(), 10);
        assert!(allows(899, 1000, 500) && !allows(900, 1000, 10) && allows(900, 1000, 9));
        assert!(allows(9, 10, 0) && !allows(9, 10, 1) && !allows(10, 10, 0));
        drop((hogs, hogs2, rest));
        assert_eq!((hog.get(), hog2.get(), light.get()), (0, 0, 0));
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
