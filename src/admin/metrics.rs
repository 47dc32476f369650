//! `GET /metrics`: asks every worker and the committer for a snapshot of their own
//! counters over their mailboxes, waits at most [`SCRAPE_WAIT`] for the answers, sums
//! them and writes the Prometheus text format ([`crate::metrics::encode`]). A part that
//! does not answer in time is counted in `ricochet_metrics_unanswered` and read from the
//! last snapshot it gave (left out only if it never gave one), so no counter drops to
//! 0 for one scrape (read as a reset, its whole value would count again as an
//! increase) nor a gauge clears an alert; a worker that has stopped (a shutdown's
//! drain) is read from the snapshot it left.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Admin, Response};
use crate::commit::CommitMsg;
use crate::metrics::{encode, AdminCounts, CommitSnapshot, EndpointCounts, Scrape, WorkerSnapshot};
use crate::store::EndpointId;
use crate::worker::WorkerMsg;

/// The longest a scrape waits for the workers and the committer.
pub const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// The last snapshot each part gave a scrape, for one that is late.
#[derive(Default)]
pub(super) struct LastSeen {
    workers: Vec<Option<WorkerSnapshot>>,
    commit: Option<CommitSnapshot>,
}

impl Admin {
    pub(super) fn metrics(&self) -> Response {
        let text = encode(&self.collect(true));
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            headers: Vec::new(),
            body: text.into_bytes(),
        }
    }

    /// One endpoint's counters from its worker (if it answers within [`SCRAPE_WAIT`],
    /// or has stopped and left its last snapshot), if it knows the endpoint.
    pub(super) fn counts(
        &self,
        worker: usize,
        ep: EndpointId,
        name: &str,
    ) -> Option<EndpointCounts> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        if self
            .workers
            .get(worker)?
            .send(WorkerMsg::Counts { ep, reply })
        {
            match rx.recv_timeout(SCRAPE_WAIT) {
                Ok(counts) => return counts,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
            }
        }
        let last = self.final_snapshot(worker)?;
        last.endpoints
            .into_iter()
            .find_map(|(n, c)| (n == name).then_some(c))
    }

    /// The snapshot worker `i` left as it stopped, if it has.
    fn final_snapshot(&self, i: usize) -> Option<WorkerSnapshot> {
        self.finals.get(i)?.lock().ok()?.clone()
    }

    /// Snapshots of every worker and, with `committer` (a scrape), of the committer;
    /// whatever answered within [`SCRAPE_WAIT`], and for a scrape the last snapshot of
    /// each part that did not.
    pub(super) fn collect(&self, committer: bool) -> Scrape {
        let deadline = Instant::now() + SCRAPE_WAIT;
        let mut unanswered = 0;
        let (wtx, wrx) = crossbeam_channel::unbounded();
        let mut asked = 0;
        for w in &self.workers {
            if w.send(WorkerMsg::Snapshot(wtx.clone())) {
                asked += 1;
            }
        }
        drop(wtx);
        let crx = committer.then(|| {
            let (ctx, crx) = crossbeam_channel::bounded(1);
            self.commit.send(CommitMsg::Snapshot(ctx));
            crx
        });
        let mut workers = Vec::with_capacity(self.workers.len());
        while workers.len() < asked {
            match wrx.recv_deadline(deadline) {
                Ok(s) => workers.push(s),
                Err(_) => break,
            }
        }
        let mut commit = crx.and_then(|rx| rx.recv_deadline(deadline).ok());
        let mut seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.workers.resize(self.workers.len(), None);
        for w in &workers {
            if let Some(slot) = seen.workers.get_mut(w.worker) {
                *slot = Some(w.clone());
            }
        }
        // A worker that did not answer has stopped (a shutdown) and left its last
        // snapshot, or is late: then it counts as unanswered, read as it last answered.
        for i in 0..self.workers.len() {
            if workers.iter().any(|w| w.worker == i) {
                continue;
            }
            match self.final_snapshot(i) {
                Some(last) => workers.push(last),
                None => {
                    unanswered += 1;
                    // (The endpoint list, which asks no committer, shows none instead.)
                    if committer {
                        workers.extend(seen.workers[i].clone());
                    }
                }
            }
        }
        if committer {
            match &commit {
                Some(c) => seen.commit = Some(c.clone()),
                None => {
                    unanswered += 1;
                    commit = seen.commit.clone();
                }
            }
        }
        drop(seen);
        workers.sort_by_key(|w| w.worker);
        Scrape {
            workers,
            commit,
            admin: AdminCounts {
                invalid: self.counts.invalid.load(Ordering::Relaxed),
                too_large: self.counts.too_large.load(Ordering::Relaxed),
                unavailable: self.counts.unavailable.load(Ordering::Relaxed),
                ingest_refused: crate::fdlimit::ConnPermit::refused(),
            },
            unanswered,
        }
    }
}
