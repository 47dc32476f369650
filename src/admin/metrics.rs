//! `GET /metrics`: asks every worker and the committer for a snapshot of their own
//! counters over their mailboxes, waits at most [`SCRAPE_WAIT`] for the answers, sums
//! them and writes the Prometheus text format ([`crate::metrics::encode`]). A part that
//! does not answer in time is left out and counted in `ricochet_metrics_unanswered`; a
//! worker that has stopped (a shutdown's drain) is read from the snapshot it left.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Admin, Response};
use crate::commit::CommitMsg;
use crate::metrics::{encode, AdminCounts, EndpointCounts, Scrape, WorkerSnapshot};
use crate::store::EndpointId;
use crate::worker::WorkerMsg;

/// The longest a scrape waits for the workers and the committer.
pub const SCRAPE_WAIT: Duration = Duration::from_secs(1);

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

    /// Snapshots of every worker and, with `committer`, of the committer; whatever
    /// answered within [`SCRAPE_WAIT`].
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
        // A worker that did not answer has stopped (a shutdown) and left its last
        // snapshot, or is stuck: then it is left out, and counted.
        for i in 0..self.workers.len() {
            if workers.iter().any(|w| w.worker == i) {
                continue;
            }
            match self.final_snapshot(i) {
                Some(last) => workers.push(last),
                None => unanswered += 1,
            }
        }
        let commit = crx.and_then(|rx| rx.recv_deadline(deadline).ok());
        if committer && commit.is_none() {
            unanswered += 1;
        }
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
