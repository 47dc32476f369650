//! Writes: [`Batch`], the typed write batch every mutation goes through, and
//! [`Store::commit`], which writes one atomically. A batch groups its type, account and
//! endpoint index entries into posting groups, and puts its attempt records and `due`
//! changes in key order, when it is committed; [`event_write_estimate`] and
//! [`outcome_write_estimate`] size its buffer up front.
//!
//! Must not read the store: a batch is built from what its caller knows (the `store`
//! it is given only names the column families).

use rocksdb::{WriteBatch, WriteOptions};

use crate::config::EndpointConfig;

use super::keys::{
    attempt_key, deleting_key, id_key, paused_key, CONFIG_PREFIX, NAME_PREFIX, PAUSING_PREFIX,
};
use super::{
    encode_group, AttemptRecord, DeliveryState, DueKey, DueVal, EndpointId, EndpointMeta,
    EventRecord, IndexKey, Result, Seq, Store, CF_ATTEMPTS, CF_DUE, CF_ENDPOINTS, CF_EVENTS,
    CF_IDEM, CF_INDEX, CF_PAUSED,
};

/// A typed write batch: every mutation goes through here.
pub struct Batch {
    pub(super) wb: WriteBatch,
    scratch: Vec<u8>,
    events: usize,
    /// The batch's type, account and endpoint index entries by key prefix (allocated
    /// with room for the sequence number), written as one posting group each when the
    /// batch is committed: the first member, then any others. With many endpoints most
    /// groups have one member, which then costs no allocation beyond its key.
    postings: rustc_hash::FxHashMap<Vec<u8>, (Seq, Vec<Seq>)>,
    /// Reused buffer for a posting's key prefix.
    prefix: Vec<u8>,
    /// The batch's attempt records: keys with their value's place in `attempt_bytes`,
    /// written in key order when the batch is committed (see [`Batch::write_sorted`]).
    attempts: Vec<([u8; 14], u32, u32)>,
    attempt_bytes: Vec<u8>,
    /// The batch's puts (with the value) and removals of due keys, written in key order
    /// too.
    due: Vec<([u8; 20], Option<[u8; 4]>)>,
}

/// A little over what a new event with these parts adds to a write batch: its record,
/// its idempotency key, its due key and its share of the index, for one route (each
/// further route adds a due key and a posting). For sizing a batch up front.
pub fn event_write_estimate(data: usize, id: usize, etype: usize, account: usize) -> usize {
    data + 2 * id + etype + account + 128
}

/// A little over what one attempt's outcome adds to a write batch: its attempt record,
/// the due key it retires and the one a retry adds.
pub fn outcome_write_estimate(rec: Option<&AttemptRecord>) -> usize {
    192 + rec.map_or(0, |a| {
        a.request_line.len()
            + a.error.len()
            + a.response_excerpt.len()
            + a.request.body_excerpt.len()
            + a.request
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 8)
                .sum::<usize>()
    })
}

impl Store {
    pub fn batch(&self) -> Batch {
        self.batch_sized(0)
    }

    /// A batch whose write buffer starts with room for `bytes` (an estimate of what the
    /// caller will write), so it is not copied each time it doubles as it fills.
    pub fn batch_sized(&self, bytes: usize) -> Batch {
        Batch {
            wb: if bytes == 0 {
                WriteBatch::default()
            } else {
                WriteBatch::with_capacity_bytes(bytes)
            },
            scratch: Vec::with_capacity(1024),
            events: 0,
            postings: Default::default(),
            prefix: Vec::with_capacity(64),
            attempts: Vec::new(),
            attempt_bytes: Vec::new(),
            due: Vec::new(),
        }
    }

    /// Writes a batch atomically; `sync` fsyncs the WAL before returning.
    pub fn commit(&self, mut batch: Batch, sync: bool) -> Result<()> {
        #[cfg(test)]
        self.faults.write()?;
        batch.write_postings(self);
        batch.write_sorted(self);
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch.wb, &wo)?;
        Ok(())
    }
}

impl Batch {
    /// Number of events put in this batch.
    pub fn event_count(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.wb.is_empty() && self.attempts.is_empty() && self.due.is_empty()
    }

    /// The event, its idempotency key and its index entries (type, account, endpoints).
    pub fn put_event(&mut self, store: &Store, ev: &EventRecord) {
        self.wb
            .put_cf(store.cf(CF_EVENTS), ev.seq.to_be_bytes(), ev.encoded());
        if let Some(id) = ev.ext_id() {
            self.wb
                .put_cf(store.cf(CF_IDEM), id.as_bytes(), ev.seq.to_be_bytes());
        }
        self.post(IndexKey::Type(ev.etype()), ev.seq);
        if let Some(a) = ev.account() {
            self.post(IndexKey::Account(a), ev.seq);
        }
        for ep in ev.routes() {
            self.post(IndexKey::Endpoint(ep), ev.seq);
        }
        self.events += 1;
    }

    /// Adds `seq` to this batch's posting group for `key`.
    fn post(&mut self, key: IndexKey<'_>, seq: Seq) {
        self.prefix.clear();
        key.write_prefix(&mut self.prefix);
        match self.postings.get_mut(self.prefix.as_slice()) {
            Some((_, more)) => more.push(seq),
            None => {
                let mut key = Vec::with_capacity(self.prefix.len() + 8);
                key.extend_from_slice(&self.prefix);
                self.postings.insert(key, (seq, Vec::new()));
            }
        }
    }

    /// Writes one key per posting group: the prefix and the group's largest sequence
    /// number, the others in the value ([`encode_group`]).
    fn write_postings(&mut self, store: &Store) {
        if self.postings.is_empty() {
            return;
        }
        let index = store.cf(CF_INDEX);
        // In key order: each insert lands next to the one before it in the memtable.
        let mut groups: Vec<_> = self.postings.drain().collect();
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (mut key, (first, mut seqs)) in groups {
            self.scratch.clear();
            let max = if seqs.is_empty() {
                first
            } else {
                // Already ascending (a batch's events take ascending numbers); kept
                // exact whatever the caller did.
                seqs.push(first);
                seqs.sort_unstable();
                seqs.dedup();
                encode_group(&seqs, &mut self.scratch);
                seqs[seqs.len() - 1]
            };
            key.extend_from_slice(&max.to_be_bytes());
            self.wb.put_cf(index, key, &self.scratch);
        }
    }

    /// Rewrites an event whose routes grew (a replay to a new endpoint), indexing the
    /// new route.
    pub fn add_route(&mut self, store: &Store, ev: &EventRecord, ep: EndpointId) {
        self.wb
            .put_cf(store.cf(CF_EVENTS), ev.seq.to_be_bytes(), ev.encoded());
        self.wb.put_cf(
            store.cf(CF_INDEX),
            IndexKey::EndpointAdded(ep).key(ev.seq, ep),
            [],
        );
    }

    /// Adds a due key. This and the other `due` and attempt writes go into the batch
    /// when it is committed ([`Batch::write_sorted`]); they take the store like every
    /// other write, though they need it only then.
    pub fn put_due(&mut self, _store: &Store, key: DueKey, val: DueVal) {
        self.due.push((key.encode(), Some(val.encode())));
    }

    /// Whether this batch puts `key` in the due index (and does not remove it again).
    pub fn puts_due(&self, key: DueKey) -> bool {
        let k = key.encode();
        self.due
            .iter()
            .rev()
            .find(|(d, _)| *d == k)
            .is_some_and(|(_, v)| v.is_some())
    }

    /// Removes a due key. Each key is put once and removed once, so a single-delete.
    pub fn del_due(&mut self, _store: &Store, key: DueKey) {
        self.due.push((key.encode(), None));
    }

    pub fn put_attempt(
        &mut self,
        _store: &Store,
        seq: Seq,
        ep: EndpointId,
        n: u16,
        rec: &AttemptRecord,
    ) {
        let start = self.attempt_bytes.len();
        rec.encode(&mut self.attempt_bytes);
        let len = self.attempt_bytes.len() - start;
        self.attempts
            .push((attempt_key(seq, ep, n), start as u32, len as u32));
    }

    /// Writes the batch's attempt records and due-key changes, each in key order. A
    /// round's outcomes are for events of several ages (first attempts of new events,
    /// retries of older ones) and its retries fall due at several times, so in arrival
    /// order each insert lands far from the one before it in the memtable's skiplist; in
    /// key order consecutive searches walk the same nodes, and with the insert hints
    /// (`hinted`) each starts from the last one of its stream.
    fn write_sorted(&mut self, store: &Store) {
        if !self.attempts.is_empty() {
            let cf = store.cf(CF_ATTEMPTS);
            // Stable: a key written twice keeps its last value.
            self.attempts.sort_by_key(|a| a.0);
            for (key, start, len) in self.attempts.drain(..) {
                let v = &self.attempt_bytes[start as usize..(start + len) as usize];
                self.wb.put_cf(cf, key, v);
            }
            self.attempt_bytes.clear();
        }
        if !self.due.is_empty() {
            let cf = store.cf(CF_DUE);
            // Stable: a key removed and put again in one batch stays put.
            self.due.sort_by_key(|a| a.0);
            for (key, val) in self.due.drain(..) {
                match val {
                    Some(v) => self.wb.put_cf(cf, key, v),
                    None => self.wb.single_delete_cf(cf, key),
                }
            }
        }
    }

    /// Records that a delivery is in `state` (an indexed state).
    pub fn set_state(&mut self, store: &Store, state: DeliveryState, ep: EndpointId, seq: Seq) {
        let index = store.cf(CF_INDEX);
        self.wb
            .put_cf(index, IndexKey::State(state, ep).key(seq, ep), []);
        self.wb
            .put_cf(index, IndexKey::StateAll(state).key(seq, ep), []);
    }

    /// Records that a delivery left `state`.
    pub fn clear_state(&mut self, store: &Store, state: DeliveryState, ep: EndpointId, seq: Seq) {
        let index = store.cf(CF_INDEX);
        self.wb
            .delete_cf(index, IndexKey::State(state, ep).key(seq, ep));
        self.wb
            .delete_cf(index, IndexKey::StateAll(state).key(seq, ep));
    }

    /// Sets a delivery aside while its endpoint is disabled.
    pub fn pause(&mut self, store: &Store, ep: EndpointId, seq: Seq, val: DueVal) {
        self.wb
            .put_cf(store.cf(CF_PAUSED), paused_key(ep, seq), val.encode());
        self.set_state(store, DeliveryState::Paused, ep, seq);
    }

    /// Records as `failed` a delivery dropped before an attempt settled it (its endpoint
    /// was deleted): the state index says so, as no attempt record does, and the
    /// delivery's state reads `failed` ([`Store::event_view`]).
    pub fn fail_dropped(&mut self, store: &Store, ep: EndpointId, seq: Seq) {
        // A replayed one dropped before its attempt is not pending any more either.
        self.clear_state(store, DeliveryState::Pending, ep, seq);
        self.set_state(store, DeliveryState::Failed, ep, seq);
    }

    /// Takes a delivery out of the paused set (resumed, delivered meanwhile, or expired).
    pub fn unpause(&mut self, store: &Store, ep: EndpointId, seq: Seq) {
        self.wb.delete_cf(store.cf(CF_PAUSED), paused_key(ep, seq));
        self.clear_state(store, DeliveryState::Paused, ep, seq);
    }

    pub fn put_endpoint(&mut self, store: &Store, name: &str, meta: &EndpointMeta) {
        let v = serde_json::to_vec(meta).unwrap_or_default();
        self.wb.put_cf(store.cf(CF_ENDPOINTS), name.as_bytes(), v);
    }

    /// Stores an endpoint's configuration and the name of its id.
    pub fn put_endpoint_config(
        &mut self,
        store: &Store,
        id: EndpointId,
        name: &str,
        cfg: &EndpointConfig,
    ) {
        let cf = store.cf(CF_ENDPOINTS);
        let v = serde_json::to_vec(cfg).unwrap_or_default();
        self.wb.put_cf(cf, format!("{CONFIG_PREFIX}{name}"), v);
        let mut k = NAME_PREFIX.as_bytes().to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        self.wb.put_cf(cf, k, name.as_bytes());
    }

    /// Removes an endpoint (its id's name stays, for the log) and records that its
    /// pending deliveries are to be failed ([`Store::deleting`]): the committer does
    /// that in pages, and [`Batch::deleted`] ends it.
    pub fn delete_endpoint(&mut self, store: &Store, name: &str, id: EndpointId) {
        let cf = store.cf(CF_ENDPOINTS);
        self.wb.delete_cf(cf, name.as_bytes());
        self.wb.delete_cf(cf, format!("{CONFIG_PREFIX}{name}"));
        self.wb.put_cf(cf, deleting_key(id), []);
    }

    /// Every pending delivery of deleted endpoint `id` is failed.
    pub fn deleted(&mut self, store: &Store, id: EndpointId) {
        self.wb.delete_cf(store.cf(CF_ENDPOINTS), deleting_key(id));
    }

    /// Records that disabled endpoint `id`'s due deliveries are being moved to its
    /// paused set ([`Store::pausing`]): a restart goes on with it. [`Batch::paused_all`]
    /// ends it.
    pub fn pausing(&mut self, store: &Store, id: EndpointId) {
        self.wb
            .put_cf(store.cf(CF_ENDPOINTS), id_key(PAUSING_PREFIX, id), []);
    }

    /// Every due delivery of disabled endpoint `id` is paused.
    pub fn paused_all(&mut self, store: &Store, id: EndpointId) {
        self.wb
            .delete_cf(store.cf(CF_ENDPOINTS), id_key(PAUSING_PREFIX, id));
    }

    /// Range-deletes every event and attempt below `floor` (retention).
    pub fn delete_before(&mut self, store: &Store, floor: Seq) {
        self.wb
            .delete_range_cf(store.cf(CF_EVENTS), 0u64.to_be_bytes(), floor.to_be_bytes());
        self.wb.delete_range_cf(
            store.cf(CF_ATTEMPTS),
            0u64.to_be_bytes(),
            floor.to_be_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RequestLog;

    #[test]
    fn the_write_estimates_cover_what_events_and_outcomes_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let data = br#"{"ActionId":"ACT-1","Amount":19.99,"items":[]}"#.repeat(16);
        let (id, etype, account) = ("ld-run-123456", "action.created", "partner-555");
        let rec = AttemptRecord {
            at_ms: 1_764_000_000_000,
            latency_us: 900,
            status: 500,
            timed_out: false,
            state_after: Some(DeliveryState::Retrying),
            next_due_ms: 1_764_000_001_000,
            error: "upstream said no".into(),
            response_excerpt: b"{\"error\":\"busy\"}".to_vec(),
            request_line: "POST http://partner.example/pb?oid=ORD-1".into(),
            request: RequestLog {
                headers: vec![("X-Partner".into(), "555".into())],
                ..RequestLog::default()
            },
        };
        let mut b = s.batch();
        let mut estimate = 0;
        for seq in 1..=200u64 {
            let ev = EventRecord::new(seq, Some(id), etype, Some(account), 1, &[3], &data);
            b.put_event(&s, &ev);
            let due = DueKey {
                due_ms: 1,
                seq,
                ep: 3,
            };
            b.put_due(&s, due, DueVal::NEW);
            estimate += event_write_estimate(data.len(), id.len(), etype.len(), account.len());
            // Its first attempt failed: the record, the due key retired, a retry's added.
            b.put_attempt(&s, seq, 3, 1, &rec);
            b.del_due(&s, due);
            b.put_due(
                &s,
                DueKey { due_ms: 2, ..due },
                DueVal {
                    attempts: 1,
                    first: 0,
                },
            );
            estimate += outcome_write_estimate(Some(&rec));
        }
        b.write_postings(&s);
        b.write_sorted(&s);
        let written = b.wb.size_in_bytes();
        assert!(
            written <= estimate,
            "wrote {written} bytes, estimated {estimate}"
        );
        assert!(
            estimate < written * 5 / 4,
            "estimated {estimate} for {written} bytes"
        );
    }

    #[test]
    fn a_batchs_attempts_and_due_changes_land_whatever_order_they_were_added_in() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let rec = |status: u16| AttemptRecord {
            at_ms: 1,
            latency_us: 2,
            status,
            timed_out: false,
            state_after: None,
            next_due_ms: 0,
            error: String::new(),
            response_excerpt: Vec::new(),
            request_line: format!("POST /{status}").into(),
            request: RequestLog::default(),
        };
        let key = |due_ms, seq, ep| DueKey { due_ms, seq, ep };
        let val = |attempts| DueVal { attempts, first: 0 };
        let mut b = s.batch();
        b.put_due(&s, key(50, 9, 1), val(1));
        b.put_due(&s, key(70, 9, 2), val(1));
        b.put_due(&s, key(60, 3, 1), val(1));
        s.commit(b, false).unwrap();

        // Attempts added newest event first and out of attempt order; due changes out
        // of key order, one key removed and put again, one put and removed.
        let mut b = s.batch();
        b.put_attempt(&s, 9, 2, 2, &rec(502));
        b.put_attempt(&s, 3, 1, 1, &rec(500));
        b.put_attempt(&s, 9, 2, 1, &rec(501));
        b.put_attempt(&s, 9, 1, 1, &rec(200));
        b.del_due(&s, key(70, 9, 2));
        b.put_due(&s, key(80, 9, 2), val(2));
        b.del_due(&s, key(60, 3, 1));
        b.put_due(&s, key(60, 3, 1), val(2));
        b.put_due(&s, key(10, 4, 1), val(1));
        b.del_due(&s, key(10, 4, 1));
        assert!(!b.is_empty());
        s.commit(b, false).unwrap();

        let statuses = |seq| -> Vec<(EndpointId, u16, u16)> {
            s.attempts(seq)
                .unwrap()
                .into_iter()
                .map(|(ep, n, a)| (ep, n, a.status))
                .collect()
        };
        assert_eq!(statuses(9), [(1, 1, 200), (2, 1, 501), (2, 2, 502)]);
        assert_eq!(statuses(3), [(1, 1, 500)]);
        let due: Vec<(DueKey, u16)> = s
            .due_range(DueKey::MIN, u64::MAX, 100)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.attempts))
            .collect();
        assert_eq!(
            due,
            [(key(50, 9, 1), 1), (key(60, 3, 1), 2), (key(80, 9, 2), 2)]
        );
    }
}
