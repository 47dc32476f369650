//! Replays ([`CommitMsg::Replay`]): scheduling deliveries again, now
//! ([`State::replay`]): a done one for a new round of attempts, a retrying one whose
//! retry waits on disk moved to now.
//!
//! It must not touch a delivery that is pending, paused, or held by a worker (a retry
//! in its wheel, an ordered endpoint's head): a second copy would go out beside it.
//!
//! [`CommitMsg::Replay`]: super::CommitMsg::Replay

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use crate::store::{self, DeliveryState, DueKey, DueVal, EndpointId, EventRecord, Seq};
use crate::worker::Job;

use super::{Delta, ReplayResult, State};

impl State {
    /// Schedules deliveries again, now. A done one (delivered, failed or expired) gets a
    /// new round of attempts with the retry schedule afresh; a retrying one whose retry
    /// waits on disk ([`Self::retry_on_disk`]) has it moved to now, its schedule going
    /// on. Pending and paused ones, a retry a worker holds, and an ordered endpoint's
    /// retrying head are left as they are. One to a disabled endpoint, or to an ordered
    /// one still resuming its paused deliveries, waits paused. Attempts continue in the
    /// same log.
    pub(super) fn replay(
        &mut self,
        targets: Vec<(Seq, Option<EndpointId>)>,
        now: u64,
    ) -> Vec<ReplayResult> {
        let mut batch = self.store.batch();
        let mut results = Vec::with_capacity(targets.len());
        let mut jobs = Vec::new();
        let mut delta = Delta::default();
        // Events already rewritten in this batch (a new route), by seq.
        let mut touched: HashMap<Seq, EventRecord> = HashMap::default();
        // Replayed deliveries left for a scan to bring: their endpoints' fresh ones do not
        // go before them ([`Share::disk_max`]).
        let mut on_disk = Vec::new();
        for (seq, only) in targets {
            let ev = match touched.remove(&seq) {
                Some(e) => Some(e),
                None => match self.store.event(seq) {
                    Ok(e) => e,
                    Err(e) => {
                        results.push(ReplayResult::Failed(e.to_string()));
                        continue;
                    }
                },
            };
            let Some(mut ev) = ev else {
                results.push(ReplayResult::NoEvent);
                continue;
            };
            let views = match self.store.deliveries(&ev) {
                Ok(v) => v,
                Err(e) => {
                    results.push(ReplayResult::Failed(e.to_string()));
                    continue;
                }
            };
            let wanted: Vec<EndpointId> = match only {
                Some(ep) => vec![ep],
                None => ev.routes().collect(),
            };
            let mut scheduled = Vec::new();
            for ep in wanted {
                let Some(info) = self.router.eps.get(&ep) else {
                    continue;
                };
                let attempts = match views.iter().find(|v| v.ep == ep) {
                    Some(v) => match v.state {
                        DeliveryState::Delivered
                        | DeliveryState::Failed
                        | DeliveryState::Expired => v.attempts,
                        DeliveryState::Retrying if self.delivers(info) && !info.holds_retries => {
                            // Its retry now, where it waits on disk only; one a worker
                            // holds (due within the loader's horizon, or in flight) is
                            // left alone, as is an ordered endpoint's held head.
                            let Some((old, val)) = self.retry_on_disk(seq, ep, v.attempts) else {
                                continue;
                            };
                            batch.del_due(&self.store, old);
                            let due = DueKey {
                                due_ms: now,
                                seq,
                                ep,
                            };
                            self.put_due_now(
                                &mut batch,
                                &mut jobs,
                                &mut on_disk,
                                info.worker,
                                due,
                                val,
                            );
                            scheduled.push(ep);
                            continue;
                        }
                        _ => continue,
                    },
                    None if ev.has_route(ep) => continue,
                    // The record holds no more routes (it has deleted endpoints' too):
                    // not replayed to this one.
                    None if ev.routes().len() >= store::MAX_ROUTES => continue,
                    None => {
                        ev = ev.with_route(ep);
                        batch.add_route(&self.store, &ev, ep);
                        0
                    }
                };
                let val = DueVal {
                    attempts,
                    first: attempts,
                };
                batch.clear_state(&self.store, DeliveryState::Failed, ep, seq);
                batch.clear_state(&self.store, DeliveryState::Expired, ep, seq);
                if attempts > 0 {
                    batch.set_state(&self.store, DeliveryState::Pending, ep, seq);
                }
                delta.pending += 1;
                // As `accept` takes a fresh one (a replay due now to an ordered endpoint
                // being resumed went to the worker before its paused retrying head).
                if !super::endpoints::joins_paused(&self.scan, &self.resuming, info) {
                    let due = DueKey {
                        due_ms: now,
                        seq,
                        ep,
                    };
                    self.put_due_now(&mut batch, &mut jobs, &mut on_disk, info.worker, due, val);
                } else {
                    batch.pause(&self.store, ep, seq, val);
                    delta.paused += 1;
                }
                scheduled.push(ep);
            }
            results.push(if scheduled.is_empty() {
                ReplayResult::Busy
            } else {
                ReplayResult::Scheduled(scheduled)
            });
            touched.insert(seq, ev);
        }
        if batch.is_empty() {
            return results;
        }
        if let Err(e) = self.store.commit(batch, true) {
            let msg = e.to_string();
            return results
                .into_iter()
                .map(|r| match r {
                    ReplayResult::Scheduled(_) => ReplayResult::Failed(msg.clone()),
                    r => r,
                })
                .collect();
        }
        self.stats.apply(delta);
        for due in on_disk {
            self.left_on_disk(due, now);
        }
        // One shared record per event, however many of its deliveries go out.
        let events: HashMap<Seq, Arc<EventRecord>> =
            touched.into_iter().map(|(s, e)| (s, Arc::new(e))).collect();
        for (worker, ep, due, val) in jobs {
            if let Some(ev) = events.get(&due.seq) {
                self.out_jobs[worker].push(Job {
                    event: ev.clone(),
                    ep,
                    due,
                    val,
                });
            }
        }
        results
    }

    /// Writes a replayed delivery's `due` entry, and queues it for its worker when no
    /// scan will pick it up ([`Self::hand_now`]), else notes it in `on_disk`, left for
    /// the scans ([`Self::left_on_disk`] once the batch is committed).
    fn put_due_now(
        &self,
        batch: &mut store::Batch,
        jobs: &mut Vec<(usize, EndpointId, DueKey, DueVal)>,
        on_disk: &mut Vec<DueKey>,
        worker: usize,
        due: DueKey,
        val: DueVal,
    ) {
        batch.put_due(&self.store, due, val);
        if self.hand_now(due) {
            jobs.push((worker, due.ep, due, val));
        } else {
            on_disk.push(due);
        }
    }

    /// The due entry of delivery (`seq`, `ep`) waiting for its retry after attempt
    /// `attempts`, if it is on disk only (at or above the loader's cursor): the key its
    /// last attempt scheduled. `None` when that attempt did not leave it retrying there
    /// (a worker holds it, or an enable moved it to now).
    fn retry_on_disk(&self, seq: Seq, ep: EndpointId, attempts: u16) -> Option<(DueKey, DueVal)> {
        let last = self
            .store
            .attempts(seq)
            .ok()?
            .into_iter()
            .find(|(e, n, _)| *e == ep && *n == attempts)?
            .2;
        if last.state_after != Some(DeliveryState::Retrying) || last.next_due_ms == 0 {
            return None;
        }
        let key = DueKey {
            due_ms: last.next_due_ms,
            seq,
            ep,
        };
        // A worker holds it: a scan brought it (below the cursor, and not in the spilled
        // range still to load), or it went ahead of them.
        if self.hand_now(key) || self.ahead.contains(&key) {
            return None;
        }
        let found = self
            .store
            .due_range(key, key.due_ms.saturating_add(1), 1)
            .ok()?;
        found.into_iter().next().filter(|(k, _)| *k == key)
    }
}
