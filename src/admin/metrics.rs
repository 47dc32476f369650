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
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// The last snapshot each part gave a scrape, for one that is late.
#[derive(Default)]
pub(super) struct LastSeen {
    workers: Vec<Option<WorkerSnapshot>>,
    commit: Option<CommitSnapshot>,
}

impl LastSeen {
    /// Completes one collection of `workers_total` workers' snapshots (`workers`, those
    /// that answered) and, for a scrape, the committer's (`commit`, `None` if it did not
    /// answer): remembers what answered; a worker that did not has stopped and left its
    /// final snapshot (`finals`), read as such, or is late and counts as unanswered, read
    /// for a scrape as it last answered (the endpoint list, which asks no committer,
    /// shows none instead); a late committer likewise. Returns the parts unanswered.
    fn complete(
        &mut self,
        workers_total: usize,
        workers: &mut Vec<WorkerSnapshot>,
        commit: Option<&mut Option<CommitSnapshot>>,
        finals: impl Fn(usize) -> Option<WorkerSnapshot>,
    ) -> usize {
        let scrape = commit.is_some();
        let mut unanswered = 0;
        self.workers.resize(workers_total, None);
        for w in workers.iter() {
            if let Some(slot) = self.workers.get_mut(w.worker) {
                *slot = Some(w.clone());
            }
        }
        for i in 0..workers_total {
            if workers.iter().any(|w| w.worker == i) {
                continue;
            }
            match finals(i) {
                Some(last) => workers.push(last),
                None => {
                    unanswered += 1;
                    if scrape {
                        workers.extend(self.workers[i].clone());
                    }
                }
            }
        }
        if let Some(commit) = commit {
            match commit {
                Some(c) => self.commit = Some(c.clone()),
                None => {
                    unanswered += 1;
                    *commit = self.commit.clone();
                }
            }
        }
        unanswered
    }
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
        let unanswered = self
            .last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .complete(
                self.workers.len(),
                &mut workers,
                committer.then_some(&mut commit),
                |i| self.final_snapshot(i),
            );
        workers.sort_by_key(|w| w.worker);
        // The store's figures go with a scrape, as the committer's do.
        let (store, disk) = if committer {
            (self.store.memory(), self.store.disk())
        } else {
            Default::default()
        };
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
            store,
            disk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::OpenReason;

    fn worker(worker: usize, in_memory: u64) -> WorkerSnapshot {
        WorkerSnapshot {
            worker,
            endpoints: Vec::new(),
            rejected_invalid: 0,
            rejected_too_large: 0,
            rejected_unavailable: 0,
            in_memory,
            attempt_latency: crate::metrics::Hist::micros(),
            delivery_lag: crate::metrics::Hist::millis(),
            connections_opened: [0; OpenReason::COUNT],
            lanes_started: 0,
            lanes_idle_exits: 0,
            holds: 0,
        }
    }

    fn commit(pending: u64) -> CommitSnapshot {
        CommitSnapshot {
            pending,
            ..CommitSnapshot::default()
        }
    }

    /// (worker, in_memory) of each snapshot, by worker.
    fn read(workers: &[WorkerSnapshot]) -> Vec<(usize, u64)> {
        let mut v: Vec<_> = workers.iter().map(|w| (w.worker, w.in_memory)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_late_part_is_read_from_the_snapshot_it_last_gave_and_counted_unanswered() {
        let mut seen = LastSeen::default();
        let none = |_| None;
        let (mut ws, mut c) = (vec![worker(0, 5), worker(1, 7)], Some(commit(40)));
        assert_eq!(seen.complete(2, &mut ws, Some(&mut c), none), 0);

        // Worker 1 and the committer late: their counters stay where they were, so no
        // counter reads 0 for one scrape and no gauge clears.
        let (mut ws, mut c) = (vec![worker(0, 6)], None);
        assert_eq!(seen.complete(2, &mut ws, Some(&mut c), none), 2);
        assert_eq!(read(&ws), [(0, 6), (1, 7)]);
        assert_eq!(c.map(|c| c.pending), Some(40));

        // Back in time: their new figures, remembered in turn.
        let (mut ws, mut c) = (vec![worker(1, 9), worker(0, 6)], Some(commit(41)));
        assert_eq!(seen.complete(2, &mut ws, Some(&mut c), none), 0);
        assert_eq!(read(&ws), [(0, 6), (1, 9)]);
        let (mut ws, mut c) = (Vec::new(), None);
        assert_eq!(seen.complete(2, &mut ws, Some(&mut c), none), 3);
        assert_eq!(read(&ws), [(0, 6), (1, 9)]);
        assert_eq!(c.map(|c| c.pending), Some(41));
    }

    #[test]
    fn a_part_that_never_answered_is_left_out_and_a_stopped_worker_read_as_it_stopped() {
        let mut seen = LastSeen::default();
        let (mut ws, mut c) = (vec![worker(1, 3)], None);
        assert_eq!(seen.complete(3, &mut ws, Some(&mut c), |_| None), 3);
        assert_eq!(read(&ws), [(1, 3)]);
        assert!(c.is_none());

        // Worker 1 has stopped (a shutdown): its final snapshot, and it is not late.
        let finals = |i| (i == 1).then(|| worker(1, 4));
        let (mut ws, mut c) = (vec![worker(0, 1), worker(2, 2)], Some(commit(0)));
        assert_eq!(seen.complete(3, &mut ws, Some(&mut c), finals), 0);
        assert_eq!(read(&ws), [(0, 1), (1, 4), (2, 2)]);
    }

    #[test]
    fn the_endpoint_list_counts_a_late_worker_but_shows_none_of_its_old_figures() {
        let mut seen = LastSeen::default();
        let mut ws = vec![worker(0, 5), worker(1, 7)];
        assert_eq!(seen.complete(2, &mut ws, None, |_| None), 0);
        let mut ws = vec![worker(0, 5)];
        assert_eq!(seen.complete(2, &mut ws, None, |_| None), 1);
        assert_eq!(read(&ws), [(0, 5)]);
        // What it answered then is what a scrape reads while it is late.
        let (mut ws, mut c) = (Vec::new(), Some(commit(0)));
        assert_eq!(seen.complete(2, &mut ws, Some(&mut c), |_| None), 2);
        assert_eq!(read(&ws), [(0, 5), (1, 7)]);
    }
}
