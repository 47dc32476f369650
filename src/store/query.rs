//! The webhook log's reads: one event's attempts and the state of each of its
//! deliveries, read from one snapshot ([`EventView`], [`DeliveryView`]); pages of the
//! log, newest first, filtered through the `index` family ([`EventQuery`],
//! [`EventPage`], and the backwards cursors over its posting groups); and the point
//! checks of one delivery's state (paused, failed, in an indexed state).
//!
//! Read-only: the index entries are written by [`Batch`](super::Batch). A page must
//! stay bounded (its candidates by the query's `budget`, its deliveries by
//! [`PAGE_DELIVERIES`]), and a query never reads below the retention floor.

use rocksdb::{ReadOptions, DB};

use super::keys::paused_key;
use super::records::ATTEMPT_STATE_AT;
use super::{
    decode_group, seq_floor, AttemptRecord, DeliveryState, EndpointId, EventRecord, IndexKey,
    Result, Seq, Store, StoreError, CF_ATTEMPTS, CF_EVENTS, CF_INDEX, CF_PAUSED,
};

/// A delivery's state as the webhook log shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryView {
    pub ep: EndpointId,
    pub state: DeliveryState,
    pub attempts: u16,
}

/// One event's attempts (by endpoint, then attempt number) and delivery states, as one
/// snapshot saw them ([`Store::event_view`]).
#[derive(Debug)]
pub struct EventView {
    pub attempts: Vec<(EndpointId, u16, AttemptRecord)>,
    pub deliveries: Vec<DeliveryView>,
}

impl EventView {
    /// The attempts made to `ep`, in order: a slice of [`EventView::attempts`], found by
    /// a binary search (they are in key order), so a view of an event routed to
    /// thousands of endpoints costs no more per delivery than one routed to a few.
    pub fn attempts_of(&self, ep: EndpointId) -> &[(EndpointId, u16, AttemptRecord)] {
        let from = self.attempts.partition_point(|(e, _, _)| *e < ep);
        let to = from + self.attempts[from..].partition_point(|(e, _, _)| *e == ep);
        &self.attempts[from..to]
    }
}

/// A webhook-log query ([`Store::query`]). Filters combine.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub etype: Option<String>,
    pub account: Option<String>,
    pub ep: Option<EndpointId>,
    /// Events with a delivery (to `ep`, if given) in this state.
    pub state: Option<DeliveryState>,
    /// Accepted at or after (unix ms).
    pub since_ms: Option<u64>,
    /// Accepted before (unix ms).
    pub until_ms: Option<u64>,
    /// Only events with a sequence number below this (the cursor).
    pub before: Option<Seq>,
    pub limit: usize,
    /// Candidates examined at most before the page is returned as it is.
    pub budget: usize,
}

/// One page of the webhook log, newest first.
#[derive(Debug, Default)]
pub struct EventPage {
    /// The events without their `data` ([`EventRecord::decode_head`]: it reads empty).
    pub events: Vec<(EventRecord, Vec<DeliveryView>)>,
    /// Continue below this sequence number; `None` when the log is exhausted.
    pub next: Option<Seq>,
    /// The work count (candidates examined, or index seeks) when the page filled.
    filled_at: Option<usize>,
    /// The deliveries its events have ([`PAGE_DELIVERIES`]).
    deliveries: usize,
}

/// A page of the webhook log ends once its events have this many deliveries, whatever
/// its `limit`: a page of 200 events routed to 10,000 endpoints each was 104 MB of JSON,
/// and 2.4 GB of memory while it was built. An event with more is a page of its own.
pub const PAGE_DELIVERIES: usize = 10_000;

/// How much further a full page looks for one more match, to answer `next: null` when
/// it holds the last ones; past this it gives a cursor (whose page may be empty).
const LOOK_AHEAD: usize = 256;

impl EventPage {
    fn push(&mut self, ev: EventRecord, views: Vec<DeliveryView>, limit: usize, work: usize) {
        self.deliveries += views.len();
        self.events.push((ev, views));
        if self.filled_at.is_none() && self.holds(limit) {
            self.filled_at = Some(work);
        }
    }

    /// Whether the page holds as much as it may: `limit` events, or their deliveries
    /// [`PAGE_DELIVERIES`].
    fn holds(&self, limit: usize) -> bool {
        self.events.len() >= limit || self.deliveries >= PAGE_DELIVERIES
    }

    /// Whether a full page has looked [`LOOK_AHEAD`] further, at work count `work`, and
    /// so ends with a cursor.
    fn looked_ahead(&mut self, limit: usize, work: usize) -> bool {
        self.filled_at.is_some_and(|at| work >= at + LOOK_AHEAD) && self.full(limit)
    }

    /// Called with one more match in hand: whether the page already holds `limit` (or
    /// [`PAGE_DELIVERIES`]), and then a cursor below its last event (a page that takes
    /// the last match has none).
    fn full(&mut self, limit: usize) -> bool {
        if !self.holds(limit) {
            return false;
        }
        self.next = self.events.last().map(|(e, _)| e.seq);
        true
    }
}

type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

/// Read options for one consistent view (`snap`), or for the latest state.
fn read_at(snap: Option<&Snapshot<'_>>) -> ReadOptions {
    let mut ro = ReadOptions::default();
    if let Some(s) = snap {
        ro.set_snapshot(s);
    }
    ro
}

impl Store {
    /// Every attempt of an event, ordered by endpoint then attempt number.
    pub fn attempts(&self, seq: Seq) -> Result<Vec<(EndpointId, u16, AttemptRecord)>> {
        self.attempts_at(seq, None)
    }

    /// An event's attempts and the state of each of its deliveries, read from one
    /// snapshot: an attempt and the state it led to are written together, so they are
    /// seen together (separate reads could see a delivery paused before its attempt).
    pub fn event_view(&self, ev: &EventRecord) -> Result<EventView> {
        let snap = self.db.snapshot();
        Ok(EventView {
            attempts: self.attempts_at(ev.seq, Some(&snap))?,
            deliveries: self.deliveries_at(ev, Some(&snap))?,
        })
    }

    fn attempts_at(
        &self,
        seq: Seq,
        snap: Option<&Snapshot<'_>>,
    ) -> Result<Vec<(EndpointId, u16, AttemptRecord)>> {
        let mut out = Vec::new();
        self.scan_attempts(seq, snap, |ep, n, v| {
            out.push((ep, n, AttemptRecord::decode(v)?));
            Ok(())
        })?;
        Ok(out)
    }

    fn scan_attempts(
        &self,
        seq: Seq,
        snap: Option<&Snapshot<'_>>,
        mut f: impl FnMut(EndpointId, u16, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let prefix = seq.to_be_bytes();
        let mut ro = read_at(snap);
        ro.set_iterate_upper_bound((seq + 1).to_be_bytes().to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_ATTEMPTS), ro);
        it.seek(prefix);
        while it.valid() {
            let k = it.key().unwrap_or_default();
            if k.len() != 14 || k[..8] != prefix {
                break;
            }
            let ep = u32::from_be_bytes(k[8..12].try_into().unwrap_or_default());
            let n = u16::from_be_bytes(k[12..14].try_into().unwrap_or_default());
            f(ep, n, it.value().unwrap_or_default())?;
            it.next();
        }
        it.status()?;
        Ok(())
    }

    pub fn is_paused(&self, ep: EndpointId, seq: Seq) -> Result<bool> {
        #[cfg(test)]
        self.faults.paused_lookup()?;
        self.is_paused_at(ep, seq, None)
    }

    /// Whether the delivery of `seq` to `ep` is `failed`.
    pub fn is_failed(&self, ep: EndpointId, seq: Seq) -> Result<bool> {
        #[cfg(test)]
        self.faults.failed_lookup()?;
        self.has_index(IndexKey::State(DeliveryState::Failed, ep), seq, ep, None)
    }

    fn is_paused_at(&self, ep: EndpointId, seq: Seq, snap: Option<&Snapshot<'_>>) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf_opt(self.cf(CF_PAUSED), paused_key(ep, seq), &read_at(snap))?
            .is_some())
    }

    fn has_index(
        &self,
        key: IndexKey<'_>,
        seq: Seq,
        ep: EndpointId,
        snap: Option<&Snapshot<'_>>,
    ) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf_opt(self.cf(CF_INDEX), key.key(seq, ep), &read_at(snap))?
            .is_some())
    }

    /// The state and attempt count of each delivery of `ev`, read from one snapshot.
    pub fn deliveries(&self, ev: &EventRecord) -> Result<Vec<DeliveryView>> {
        self.deliveries_at(ev, Some(&self.db.snapshot()))
    }

    fn deliveries_at(
        &self,
        ev: &EventRecord,
        snap: Option<&Snapshot<'_>>,
    ) -> Result<Vec<DeliveryView>> {
        // The last attempt per endpoint: (attempts, state after it). The scan is in key
        // order, by endpoint then attempt number, so an endpoint's attempts come
        // together and `last` is sorted by endpoint: one pass, one search per route.
        let mut last: Vec<(EndpointId, u16, Option<DeliveryState>)> = Vec::new();
        self.scan_attempts(ev.seq, snap, |ep, n, v| {
            let st = v
                .get(ATTEMPT_STATE_AT)
                .and_then(|b| DeliveryState::from_u8(*b));
            match last.last_mut() {
                Some(l) if l.0 == ep => *l = (ep, n.max(l.1), st),
                _ => last.push((ep, n, st)),
            }
            Ok(())
        })?;
        let mut out = Vec::with_capacity(ev.routes().len());
        for ep in ev.routes() {
            let (attempts, after) = last
                .binary_search_by_key(&ep, |l| l.0)
                .map_or((0, None), |i| (last[i].1, last[i].2));
            let state = if self.is_paused_at(ep, ev.seq, snap)? {
                DeliveryState::Paused
            } else {
                match after {
                    // Dropped unsettled, its endpoint deleted ([`Batch::fail_dropped`]).
                    None | Some(DeliveryState::Retrying | DeliveryState::Paused)
                        if self.has_index(
                            IndexKey::State(DeliveryState::Failed, ep),
                            ev.seq,
                            ep,
                            snap,
                        )? =>
                    {
                        DeliveryState::Failed
                    }
                    None => DeliveryState::Pending,
                    Some(DeliveryState::Retrying | DeliveryState::Paused) => {
                        DeliveryState::Retrying
                    }
                    Some(done) => {
                        // Replayed and not attempted yet? Or dropped so, its endpoint
                        // deleted (a replay clears the `failed` entry, so one there now
                        // is the drop's)?
                        if self.has_index(
                            IndexKey::State(DeliveryState::Pending, ep),
                            ev.seq,
                            ep,
                            snap,
                        )? {
                            DeliveryState::Pending
                        } else if done != DeliveryState::Failed
                            && self.has_index(
                                IndexKey::State(DeliveryState::Failed, ep),
                                ev.seq,
                                ep,
                                snap,
                            )?
                        {
                            DeliveryState::Failed
                        } else {
                            done
                        }
                    }
                }
            };
            out.push(DeliveryView {
                ep,
                state,
                attempts,
            });
        }
        Ok(out)
    }

    /// One page of the webhook log. Candidates come from the most selective index the
    /// query allows (state, endpoint, type, account, else the log itself), newest first;
    /// each is checked against every filter. At most `q.budget` candidates are examined,
    /// so a page may come back short with a cursor to continue.
    pub fn query(&self, q: &EventQuery) -> Result<EventPage> {
        let lo = q
            .since_ms
            .map(seq_floor)
            .unwrap_or(0)
            .max(self.retention_floor());
        let mut hi = q.before.unwrap_or(u64::MAX);
        if let Some(u) = q.until_ms {
            hi = hi.min(seq_floor(u));
        }
        let mut page = EventPage::default();
        if hi <= lo || q.limit == 0 {
            return Ok(page);
        }
        // Every candidate's deliveries are read from one view of the store.
        let snap = self.db.snapshot();
        // Every index the filters allow; with two or more, their intersection is walked
        // by leapfrogging (each is sorted by sequence number).
        let mut sources: Vec<IndexKey<'_>> = Vec::new();
        match (q.state, q.ep) {
            (Some(st), Some(ep)) if st.fully_indexed() => sources.push(IndexKey::State(st, ep)),
            (Some(st), None) if st.fully_indexed() => sources.push(IndexKey::StateAll(st)),
            (_, Some(ep)) => sources.push(IndexKey::Endpoint(ep)),
            _ => {}
        }
        if let Some(t) = &q.etype {
            sources.push(IndexKey::Type(t));
        }
        if let Some(a) = &q.account {
            sources.push(IndexKey::Account(a));
        }
        if !sources.is_empty() {
            return self.query_indexes(q, &sources, lo, hi, &snap);
        }
        let mut examined = 0usize;
        // No index applies: the event log itself, newest first.
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(hi.to_be_bytes().to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_EVENTS), ro);
        it.seek_to_last();
        while it.valid() {
            let k = it.key().unwrap_or_default();
            let Some(seq) = k.try_into().ok().map(u64::from_be_bytes) else {
                it.prev();
                continue;
            };
            if seq < lo {
                break;
            }
            if examined >= q.budget {
                page.next = Some(seq + 1);
                return Ok(page);
            }
            if page.looked_ahead(q.limit, examined) {
                return Ok(page);
            }
            examined += 1;
            let ev = EventRecord::decode_head(seq, it.value().unwrap_or_default())?;
            if let Some(views) = self.matches(q, &ev, &snap)? {
                if page.full(q.limit) {
                    return Ok(page);
                }
                page.push(ev, views, q.limit, examined);
            }
            it.prev();
        }
        it.status()?;
        Ok(page)
    }

    /// [`Store::query`] over one index or several: a candidate is a sequence number
    /// present in all of them, found by seeking each index in turn to the largest entry
    /// at or below the current target (a leapfrog join; with one index, every entry is a
    /// candidate). Each seek counts against the budget.
    fn query_indexes(
        &self,
        q: &EventQuery,
        sources: &[IndexKey<'_>],
        lo: Seq,
        hi: Seq,
        snap: &Snapshot<'_>,
    ) -> Result<EventPage> {
        let mut page = EventPage::default();
        let mut cursors: Vec<IndexCursor<'_>> =
            sources.iter().map(|k| IndexCursor::new(self, k)).collect();
        let n = cursors.len();
        let mut seeks = 0usize;
        let mut target = hi - 1;
        'candidates: loop {
            // Find the largest seq ≤ target in every index.
            let mut agreed = 0;
            let mut i = 0;
            while agreed < n {
                if seeks >= q.budget {
                    page.next = Some(target + 1);
                    return Ok(page);
                }
                if page.looked_ahead(q.limit, seeks) {
                    return Ok(page);
                }
                seeks += 1;
                let Some(got) = cursors[i].seek_le(target)? else {
                    break 'candidates;
                };
                if got < lo {
                    break 'candidates;
                }
                if got == target {
                    agreed += 1;
                } else {
                    target = got;
                    agreed = 1;
                }
                i = (i + 1) % n;
            }
            if let Some(ev) = self.event_head(target)? {
                if let Some(views) = self.matches(q, &ev, snap)? {
                    if page.full(q.limit) {
                        return Ok(page);
                    }
                    page.push(ev, views, q.limit, seeks);
                }
            }
            if target == 0 {
                break;
            }
            target -= 1;
        }
        Ok(page)
    }

    /// The event's delivery views if it passes every filter of `q`.
    fn matches(
        &self,
        q: &EventQuery,
        ev: &EventRecord,
        snap: &Snapshot<'_>,
    ) -> Result<Option<Vec<DeliveryView>>> {
        if q.etype.as_deref().is_some_and(|t| t != ev.etype())
            || q.account
                .as_deref()
                .is_some_and(|a| ev.account() != Some(a))
            || q.ep.is_some_and(|ep| !ev.has_route(ep))
        {
            return Ok(None);
        }
        let views = self.deliveries_at(ev, Some(snap))?;
        if let Some(st) = q.state {
            let hit = views
                .iter()
                .any(|v| v.state == st && q.ep.is_none_or(|ep| ep == v.ep));
            if !hit {
                return Ok(None);
            }
        }
        Ok(Some(views))
    }

    /// Delivery sequence numbers of an endpoint in an indexed state, accepted in
    /// `[from, to)`, oldest first, up to `limit`.
    pub fn in_state(
        &self,
        state: DeliveryState,
        ep: EndpointId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Seq>> {
        let key = IndexKey::State(state, ep);
        let prefix = key.prefix();
        let mut upper = prefix.clone();
        upper.extend_from_slice(&to.to_be_bytes());
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_INDEX), ro);
        it.seek(key.key(from.max(self.retention_floor()), ep));
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            let k = it.key().unwrap_or_default();
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some(seq) = IndexKey::seq_of(k) {
                out.push(seq);
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }
}

/// A backwards cursor over one filter's index entries: one key prefix, or for an
/// endpoint the groups written at acceptance and the routes added later.
struct IndexCursor<'a> {
    parts: Vec<GroupCursor<'a>>,
}

impl<'a> IndexCursor<'a> {
    fn new(store: &'a Store, key: &IndexKey<'_>) -> IndexCursor<'a> {
        let mut parts = vec![GroupCursor::new(store, key.prefix())];
        if let IndexKey::Endpoint(ep) = *key {
            parts.push(GroupCursor::new(
                store,
                IndexKey::EndpointAdded(ep).prefix(),
            ));
        }
        IndexCursor { parts }
    }

    /// The largest sequence number ≤ `seq` in this index.
    fn seek_le(&mut self, seq: Seq) -> Result<Option<Seq>> {
        let mut best = None;
        for part in &mut self.parts {
            best = best.max(part.seek_le(seq)?);
        }
        Ok(best)
    }
}

/// A backwards cursor over the posting groups of one index prefix. It relies on the
/// groups under a prefix never interleaving (each covers a range of sequence numbers no
/// other group reaches into), which holds because each group comes from one write batch
/// and batches take ascending, disjoint ranges; entries of one member (the per-entry
/// families, and data written before groups existed) are groups of one.
struct GroupCursor<'a> {
    it: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
    prefix: Vec<u8>,
    /// Reused seek key.
    key: Vec<u8>,
    /// The group last read, largest first (empty: none).
    group: Vec<Seq>,
}

impl<'a> GroupCursor<'a> {
    fn new(store: &'a Store, prefix: Vec<u8>) -> GroupCursor<'a> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(prefix.clone());
        GroupCursor {
            it: store.db.raw_iterator_cf_opt(store.cf(CF_INDEX), ro),
            key: Vec::with_capacity(prefix.len() + 12),
            prefix,
            group: Vec::new(),
        }
    }

    /// The largest member ≤ `seq` of the group read last, if it has one.
    fn in_group(&self, seq: Seq) -> Option<Seq> {
        let at = self.group.partition_point(|&s| s > seq);
        self.group.get(at).copied()
    }

    /// Reads the group at the iterator into `group`; false when the iterator has left
    /// the prefix (`group` is then empty).
    fn read_group(&mut self) -> Result<bool> {
        self.group.clear();
        if !self.it.valid() {
            self.it.status()?;
            return Ok(false);
        }
        let key = self.it.key().unwrap_or_default();
        if !key.starts_with(&self.prefix) {
            return Ok(false);
        }
        let Some(max) = IndexKey::seq_of(key) else {
            return Err(StoreError::Corrupt {
                cf: CF_INDEX,
                what: "short index key".into(),
            });
        };
        decode_group(max, self.it.value().unwrap_or_default(), &mut self.group)?;
        Ok(true)
    }

    /// The largest sequence number ≤ `seq` under this prefix.
    fn seek_le(&mut self, seq: Seq) -> Result<Option<Seq>> {
        // Inside the range of the group read last: no other group reaches into it.
        if let (Some(&max), Some(&min)) = (self.group.first(), self.group.last()) {
            if (min..=max).contains(&seq) {
                return Ok(self.in_group(seq));
            }
        }
        // The first group ending at or after `seq` may reach down to it…
        self.key.clear();
        self.key.extend_from_slice(&self.prefix);
        self.key.extend_from_slice(&seq.to_be_bytes());
        self.it.seek(&self.key);
        if self.read_group()? {
            if let Some(s) = self.in_group(seq) {
                return Ok(Some(s));
            }
        }
        // …else the answer is the largest key at or before it (`StateAll` keys go on
        // with an endpoint id, hence the 0xff bytes).
        self.key.extend_from_slice(&[0xff; 4]);
        self.it.seek_for_prev(&self.key);
        if self.read_group()? {
            return Ok(self.group.first().copied());
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use crate::store::tests::ev;
    use crate::store::DueVal;

    /// A store with `n` events (seq 1000..): type `a` for even seqs, `b` for odd; account
    /// `p1` for every third; routes [1] and, for odd seqs, also 2. Endpoint 2's deliveries
    /// of every fifth event failed; endpoint 1's were delivered for seqs ≥ 1000 + n/2.
    fn filled(n: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.batch();
        for i in 0..n {
            let seq = 1000 + i;
            let routes = if seq % 2 == 1 { vec![1, 2] } else { vec![1] };
            let e = EventRecord::new(
                seq,
                None,
                if seq % 2 == 0 { "a" } else { "b" },
                (seq % 3 == 0).then_some("p1"),
                0,
                &routes,
                b"{}",
            );
            b.put_event(&s, &e);
            if routes.contains(&2) && seq % 5 == 0 {
                let a = AttemptRecord {
                    state_after: Some(DeliveryState::Failed),
                    ..AttemptRecord::default()
                };
                b.put_attempt(&s, seq, 2, 1, &a);
                b.set_state(&s, DeliveryState::Failed, 2, seq);
            }
            if i >= n / 2 {
                let a = AttemptRecord {
                    state_after: Some(DeliveryState::Delivered),
                    ..AttemptRecord::default()
                };
                b.put_attempt(&s, seq, 1, 1, &a);
            }
        }
        s.commit(b, false).unwrap();
        (dir, s)
    }

    /// Every page of `q` until the cursor runs out; the sequence numbers in order.
    fn all_pages(s: &Store, mut q: EventQuery) -> Vec<Seq> {
        let mut out = Vec::new();
        loop {
            let page = s.query(&q).unwrap();
            out.extend(page.events.iter().map(|(e, _)| e.seq));
            match page.next {
                Some(n) => q.before = Some(n),
                None => return out,
            }
        }
    }

    fn q(limit: usize) -> EventQuery {
        EventQuery {
            limit,
            budget: 1_000_000,
            ..EventQuery::default()
        }
    }

    /// Events spread over batches of uneven sizes, events from before posting groups
    /// (one key each) below them, and routes added later to events inside a group's
    /// range: every filter and page size gives what a scan of the events would.
    #[test]
    fn grouped_indexes_answer_like_a_scan_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mk = |seq: Seq| {
            EventRecord::new(
                seq,
                None,
                ["a", "b", "c"][(seq % 3) as usize],
                (seq % 4 != 0).then(|| format!("p{}", seq % 2)).as_deref(),
                0,
                if seq % 5 == 0 { &[1, 2] } else { &[1] },
                b"{}",
            )
        };
        let mut all: Vec<EventRecord> = Vec::new();
        // Old layout: one index key per entry, empty value.
        for seq in 900..940 {
            let e = mk(seq);
            let mut b = s.batch();
            b.wb.put_cf(s.cf(CF_EVENTS), seq.to_be_bytes(), e.encoded());
            let index = s.cf(CF_INDEX);
            b.wb.put_cf(index, IndexKey::Type(e.etype()).key(seq, 0), []);
            if let Some(a) = e.account() {
                b.wb.put_cf(index, IndexKey::Account(a).key(seq, 0), []);
            }
            for ep in e.routes() {
                b.wb.put_cf(index, IndexKey::Endpoint(ep).key(seq, ep), []);
            }
            s.commit(b, false).unwrap();
            all.push(e);
        }
        // Grouped: batches of 1, 2, 3, … events, with gaps in the numbering.
        let mut seq = 1000;
        for size in 1..=12u64 {
            let mut b = s.batch();
            for _ in 0..size {
                let e = mk(seq);
                b.put_event(&s, &e);
                all.push(e);
                seq += 1 + seq % 3;
            }
            s.commit(b, false).unwrap();
        }
        // Routes to endpoint 3 added later to events in the middle of groups.
        // (`all` holds the 40 old-layout events, then the grouped ones.)
        for at in [43, 50, 71, 20] {
            all[at] = all[at].with_route(3);
            let e = &all[at];
            let mut b = s.batch();
            b.add_route(&s, e, 3);
            s.commit(b, false).unwrap();
        }
        // Endpoint 3 also in a later group of its own.
        let mut b = s.batch();
        let e = EventRecord::new(5000, None, "c", Some("p0"), 0, &[3], b"{}");
        b.put_event(&s, &e);
        all.push(e);
        s.commit(b, false).unwrap();

        let filters: Vec<EventQuery> = vec![
            EventQuery {
                etype: Some("a".into()),
                ..q(1)
            },
            EventQuery {
                etype: Some("b".into()),
                ..q(4)
            },
            EventQuery {
                account: Some("p1".into()),
                ..q(3)
            },
            EventQuery {
                ep: Some(2),
                ..q(2)
            },
            EventQuery {
                ep: Some(3),
                ..q(2)
            },
            EventQuery {
                ep: Some(1),
                ..q(7)
            },
            EventQuery {
                etype: Some("c".into()),
                account: Some("p0".into()),
                ..q(2)
            },
            EventQuery {
                etype: Some("a".into()),
                ep: Some(2),
                ..q(1)
            },
            EventQuery {
                ep: Some(3),
                etype: Some("b".into()),
                account: Some("p1".into()),
                ..q(5)
            },
            EventQuery {
                etype: Some("b".into()),
                before: Some(1040),
                ..q(3)
            },
        ];
        for f in filters {
            let mut want: Vec<Seq> = all
                .iter()
                .filter(|e| {
                    f.etype.as_deref().is_none_or(|t| t == e.etype())
                        && f.account.as_deref().is_none_or(|a| e.account() == Some(a))
                        && f.ep.is_none_or(|ep| e.has_route(ep))
                        && f.before.is_none_or(|b| e.seq < b)
                })
                .map(|e| e.seq)
                .collect();
            want.sort_unstable_by(|a, b| b.cmp(a));
            assert!(!want.is_empty(), "{f:?}");
            assert_eq!(all_pages(&s, f.clone()), want, "{f:?}");
        }
    }

    /// A page of the log holds its events without their data (a page of 1,000 events
    /// of 1 MiB held a gigabyte): by the log itself and through an index alike.
    #[test]
    fn a_page_of_the_log_holds_no_event_data() {
        let (_d, s) = filled(20);
        for q in [
            q(5),
            EventQuery {
                etype: Some("a".into()),
                ..q(5)
            },
        ] {
            let page = s.query(&q).unwrap();
            assert_eq!(page.events.len(), 5);
            for (e, _) in &page.events {
                let full = s.event(e.seq).unwrap().unwrap();
                assert_eq!(full.data(), b"{}");
                assert_eq!(e.data(), b"", "seq {}", e.seq);
                assert_eq!(e.encoded().len(), full.encoded().len() - 2);
                let routes: Vec<_> = e.routes().collect();
                assert_eq!(routes, full.routes().collect::<Vec<_>>());
                assert_eq!(
                    (e.etype(), e.account(), e.time_ms()),
                    (full.etype(), full.account(), full.time_ms())
                );
            }
        }
    }

    #[test]
    fn queries_use_indexes_newest_first_and_page_without_gaps() {
        let (_d, s) = filled(200);
        let expect = |f: &dyn Fn(u64) -> bool| -> Vec<Seq> {
            (1000..1200).rev().filter(|x| f(*x)).collect()
        };
        let by_type = all_pages(
            &s,
            EventQuery {
                etype: Some("a".into()),
                ..q(7)
            },
        );
        assert_eq!(by_type, expect(&|x| x % 2 == 0));
        let by_account = all_pages(
            &s,
            EventQuery {
                account: Some("p1".into()),
                ..q(9)
            },
        );
        assert_eq!(by_account, expect(&|x| x % 3 == 0));
        let by_ep = all_pages(
            &s,
            EventQuery {
                ep: Some(2),
                ..q(50)
            },
        );
        assert_eq!(by_ep, expect(&|x| x % 2 == 1));
        let failed = all_pages(
            &s,
            EventQuery {
                ep: Some(2),
                state: Some(DeliveryState::Failed),
                ..q(3)
            },
        );
        assert_eq!(failed, expect(&|x| x % 2 == 1 && x % 5 == 0));
        let failed_any = all_pages(
            &s,
            EventQuery {
                state: Some(DeliveryState::Failed),
                ..q(4)
            },
        );
        assert_eq!(failed_any, failed);
        // Filter-checked states and combinations.
        let delivered = all_pages(
            &s,
            EventQuery {
                state: Some(DeliveryState::Delivered),
                etype: Some("b".into()),
                ..q(10)
            },
        );
        assert_eq!(delivered, expect(&|x| x >= 1100 && x % 2 == 1));
        let pending_on_1 = all_pages(
            &s,
            EventQuery {
                ep: Some(1),
                state: Some(DeliveryState::Pending),
                ..q(10)
            },
        );
        assert_eq!(pending_on_1, expect(&|x| x < 1100));
        // Time window (seq → ms: these seqs are all in ms 0 and 1).
        let all = all_pages(&s, q(1000));
        assert_eq!(all.len(), 200);
        let window = all_pages(
            &s,
            EventQuery {
                since_ms: Some(1),
                ..q(1000)
            },
        );
        assert_eq!(window, expect(&|x| x >= seq_floor(1)));
        // Intersections of two and three indexes.
        let type_acct = all_pages(
            &s,
            EventQuery {
                etype: Some("a".into()),
                account: Some("p1".into()),
                ..q(4)
            },
        );
        assert_eq!(type_acct, expect(&|x| x % 2 == 0 && x % 3 == 0));
        let ep_type_acct = all_pages(
            &s,
            EventQuery {
                ep: Some(2),
                etype: Some("b".into()),
                account: Some("p1".into()),
                ..q(5)
            },
        );
        assert_eq!(ep_type_acct, expect(&|x| x % 2 == 1 && x % 3 == 0));
        let failed_acct = all_pages(
            &s,
            EventQuery {
                state: Some(DeliveryState::Failed),
                account: Some("p1".into()),
                ..q(2)
            },
        );
        assert_eq!(
            failed_acct,
            expect(&|x| x % 2 == 1 && x % 5 == 0 && x % 3 == 0)
        );
        let nothing = all_pages(
            &s,
            EventQuery {
                etype: Some("a".into()),
                ep: Some(2),
                ..q(5)
            },
        );
        assert!(nothing.is_empty());
        // A tiny budget still walks the intersection to the end, page by page.
        let small = all_pages(
            &s,
            EventQuery {
                etype: Some("a".into()),
                account: Some("p1".into()),
                budget: 3,
                ..q(4)
            },
        );
        assert_eq!(small, type_acct);
        let none = all_pages(
            &s,
            EventQuery {
                until_ms: Some(0),
                ..q(1000)
            },
        );
        assert!(none.is_empty());
    }

    #[test]
    fn a_small_budget_returns_short_pages_that_still_cover_everything() {
        let (_d, s) = filled(100);
        let mut qu = EventQuery {
            ep: Some(2),
            state: Some(DeliveryState::Delivered),
            budget: 5,
            ..q(10)
        };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = s.query(&qu).unwrap();
            assert!(page.events.len() <= 10);
            pages += 1;
            seen.extend(page.events.iter().map(|(e, _)| e.seq));
            match page.next {
                Some(n) => qu.before = Some(n),
                None => break,
            }
        }
        // Endpoint 2 was never delivered to: nothing matches, but every page was bounded.
        assert!(seen.is_empty());
        assert!(pages >= 10, "{pages} pages");
        qu = EventQuery {
            ep: Some(1),
            state: Some(DeliveryState::Delivered),
            budget: 5,
            ..q(10)
        };
        assert_eq!(all_pages(&s, qu), (1050..1100).rev().collect::<Vec<_>>());
    }

    /// A page of the log ends at `limit` events or at [`PAGE_DELIVERIES`] deliveries,
    /// whichever comes first; an event with more is a page of its own.
    #[test]
    fn a_log_page_ends_at_its_limit_or_at_its_deliveries() {
        let views = |n: usize| {
            (0..n)
                .map(|i| DeliveryView {
                    ep: i as EndpointId,
                    state: DeliveryState::Pending,
                    attempts: 0,
                })
                .collect::<Vec<_>>()
        };
        let ev = |seq: Seq| EventRecord::new(seq, None, "t", None, 5, &[], b"{}");
        let mut page = EventPage::default();
        for seq in [9, 8] {
            assert!(!page.full(50));
            page.push(ev(seq), views(4_000), 50, 1);
        }
        assert!(!page.full(50), "8,000 deliveries");
        page.push(ev(7), views(4_000), 50, 1);
        assert!(page.full(50), "12,000 deliveries");
        assert_eq!((page.events.len(), page.next), (3, Some(7)));
        // One event past the bound: alone.
        let mut page = EventPage::default();
        assert!(!page.full(50));
        page.push(ev(9), views(PAGE_DELIVERIES + 1), 50, 1);
        assert!(page.full(50));
        // The limit, as before.
        let mut page = EventPage::default();
        for seq in [9, 8] {
            page.push(ev(seq), views(1), 2, 1);
        }
        assert!(page.full(2));
    }

    /// An attempt and the pause it caused are one write; a reader racing that write
    /// sees both or neither, never a paused delivery without its attempt.
    #[test]
    fn event_view_sees_an_attempt_and_its_pause_together() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let evs: Vec<EventRecord> = (1..=300).map(ev).collect();
        let mut b = s.batch();
        for e in &evs {
            b.put_event(&s, e);
        }
        s.commit(b, false).unwrap();
        // The writer commits event k's attempt once the reader is reading event k.
        let reading = Arc::new(AtomicU64::new(0));
        let writer = {
            let (s, reading) = (s.clone(), reading.clone());
            std::thread::spawn(move || {
                for seq in 1..=300 {
                    while reading.load(Ordering::Acquire) != seq {
                        std::hint::spin_loop();
                    }
                    let mut b = s.batch();
                    let a = AttemptRecord {
                        status: 410,
                        state_after: Some(DeliveryState::Paused),
                        ..AttemptRecord::default()
                    };
                    b.put_attempt(&s, seq, 1, 1, &a);
                    b.pause(
                        &s,
                        1,
                        seq,
                        DueVal {
                            attempts: 1,
                            first: 0,
                        },
                    );
                    s.commit(b, false).unwrap();
                }
            })
        };
        for e in &evs {
            reading.store(e.seq, Ordering::Release);
            loop {
                let EventView {
                    attempts,
                    deliveries,
                } = s.event_view(e).unwrap();
                if deliveries[0].state == DeliveryState::Paused {
                    assert_eq!(
                        attempts.len(),
                        1,
                        "seq {}: paused without its attempt",
                        e.seq
                    );
                    assert_eq!(attempts[0].2.status, 410);
                    break;
                }
            }
        }
        writer.join().unwrap();
    }

    /// Deliveries are listed in route order whatever the endpoints' ids, each with its
    /// own attempts (found by key order, not by a scan per route).
    #[test]
    fn an_event_s_view_groups_attempts_by_endpoint_whatever_the_route_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let e = EventRecord::new(7, Some("g"), "t", None, 0, &[9, 2, 5], b"{}");
        let mut b = s.batch();
        b.put_event(&s, &e);
        let at = |status, state| AttemptRecord {
            status,
            state_after: Some(state),
            ..AttemptRecord::default()
        };
        b.put_attempt(&s, 7, 9, 1, &at(200, DeliveryState::Delivered));
        b.put_attempt(&s, 7, 2, 1, &at(500, DeliveryState::Retrying));
        b.put_attempt(&s, 7, 2, 2, &at(204, DeliveryState::Delivered));
        s.commit(b, false).unwrap();
        let view = s.event_view(&e).unwrap();
        let states: Vec<(EndpointId, DeliveryState, u16)> = view
            .deliveries
            .iter()
            .map(|v| (v.ep, v.state, v.attempts))
            .collect();
        assert_eq!(
            states,
            [
                (9, DeliveryState::Delivered, 1),
                (2, DeliveryState::Delivered, 2),
                (5, DeliveryState::Pending, 0),
            ]
        );
        let of = |ep| -> Vec<(u16, u16)> {
            view.attempts_of(ep)
                .iter()
                .map(|(_, n, a)| (*n, a.status))
                .collect()
        };
        assert_eq!(of(2), [(1, 500), (2, 204)]);
        assert_eq!(of(9), [(1, 200)]);
        assert_eq!(of(5), []);
        assert_eq!(of(3), []);
    }

    #[test]
    fn delivery_states_follow_attempts_pauses_and_replays() {
        let (_d, s) = filled(10);
        let ev = s.event(1005).unwrap().unwrap();
        let st = |s: &Store| -> Vec<(EndpointId, DeliveryState, u16)> {
            s.deliveries(&ev)
                .unwrap()
                .iter()
                .map(|v| (v.ep, v.state, v.attempts))
                .collect()
        };
        assert_eq!(
            st(&s),
            vec![
                (1, DeliveryState::Delivered, 1),
                (2, DeliveryState::Failed, 1)
            ]
        );
        // A replay of the failed one: pending again until its next attempt.
        let mut b = s.batch();
        b.clear_state(&s, DeliveryState::Failed, 2, 1005);
        b.set_state(&s, DeliveryState::Pending, 2, 1005);
        s.commit(b, false).unwrap();
        assert_eq!(st(&s)[1], (2, DeliveryState::Pending, 1));
        let pause = |ep: EndpointId| {
            let mut b = s.batch();
            let val = DueVal {
                attempts: 1,
                first: 1,
            };
            b.pause(&s, ep, 1005, val);
            s.commit(b, false).unwrap();
        };
        pause(2);
        assert_eq!(st(&s)[1].1, DeliveryState::Paused);
        let mut b = s.batch();
        b.unpause(&s, 2, 1005);
        b.clear_state(&s, DeliveryState::Pending, 2, 1005);
        b.put_attempt(
            &s,
            1005,
            2,
            2,
            &AttemptRecord {
                state_after: Some(DeliveryState::Retrying),
                ..AttemptRecord::default()
            },
        );
        s.commit(b, false).unwrap();
        assert_eq!(st(&s)[1], (2, DeliveryState::Retrying, 2));
        // A replay of the delivered one, paused, then dropped with its endpoint: failed
        // (it was the last attempt's `delivered` again, and `status=failed` missed it).
        let mut b = s.batch();
        b.set_state(&s, DeliveryState::Pending, 1, 1005);
        s.commit(b, false).unwrap();
        pause(1);
        assert_eq!(st(&s)[0].1, DeliveryState::Paused);
        let mut b = s.batch();
        b.unpause(&s, 1, 1005);
        b.fail_dropped(&s, 1, 1005);
        s.commit(b, false).unwrap();
        assert_eq!(st(&s)[0], (1, DeliveryState::Failed, 1));
    }

    #[test]
    fn retention_floor_hides_and_deletes_old_events() {
        let (_d, s) = filled(50);
        s.set_retention_floor(1020);
        let mut b = s.batch();
        b.delete_before(&s, 1020);
        s.commit(b, false).unwrap();
        assert!(s.event(1019).unwrap().is_none());
        assert!(s.event(1020).unwrap().is_some());
        assert!(s.attempts(1030).unwrap().len() == 1);
        assert!(s.attempts(1019).unwrap().is_empty());
        let all = all_pages(&s, q(1000));
        assert_eq!(all, (1020..1050).rev().collect::<Vec<_>>());
        // Compaction drops index entries below the floor.
        s.flush().unwrap();
        s.db.compact_range_cf(s.cf(CF_INDEX), None::<&[u8]>, None::<&[u8]>);
        let mut it = s.db.raw_iterator_cf(s.cf(CF_INDEX));
        it.seek_to_first();
        while it.valid() {
            assert!(IndexKey::seq_of(it.key().unwrap()).unwrap() >= 1020);
            it.next();
        }
    }
}
