//! Storage: the only code that knows RocksDB, its column families and key encodings.
//!
//! The **events** column family is the durable record (the write-ahead event log): an
//! event is acked only after its record — with the list of endpoints it was routed to —
//! is in RocksDB under the configured durability. Everything else is derived state that
//! makes delivery resumable:
//!
//! | column family | key                                   | value                       |
//! |---------------|---------------------------------------|-----------------------------|
//! | `events`      | seq u64 BE                            | [`EventRecord`]             |
//! | `due`         | due_ms u64 BE ‖ seq u64 BE ‖ ep u32 BE | attempts made so far, u16 LE |
//! | `attempts`    | seq u64 BE ‖ ep u32 BE ‖ n u16 BE      | [`AttemptRecord`]           |
//! | `paused`      | ep u32 BE ‖ seq u64 BE                 | attempts made so far, u16 LE |
//! | `idem`        | producer id bytes                     | seq u64 BE                  |
//! | `endpoints`   | endpoint name                         | [`EndpointMeta`] (JSON)     |
//!
//! A delivery (event, endpoint) is pending exactly while it has a key in `due` (or in
//! `paused` while its endpoint is disabled); each `due` key is written once and removed
//! once with a single-delete, so the queue leaves no tombstones behind. Big-endian
//! integers make keys sort numerically, so `due` iterates in due-time order.
//!
//! Sequence numbers are time-derived (`unix_ms << 10 | counter`), unique across restarts
//! and across a wiped data dir, and sort events by acceptance time.
//!
//! This module must not block a worker's I/O thread: only the committer thread writes,
//! and only the committer and admin threads read.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

/// Event sequence number: the event's key in the log.
pub type Seq = u64;
/// Stable numeric id of an endpoint (persisted by name in `endpoints`).
pub type EndpointId = u32;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record in {cf}: {what}")]
    Corrupt { cf: &'static str, what: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

const CF_EVENTS: &str = "events";
const CF_DUE: &str = "due";
const CF_ATTEMPTS: &str = "attempts";
const CF_PAUSED: &str = "paused";
const CF_IDEM: &str = "idem";
const CF_ENDPOINTS: &str = "endpoints";
const ALL_CFS: [&str; 6] = [
    CF_EVENTS,
    CF_DUE,
    CF_ATTEMPTS,
    CF_PAUSED,
    CF_IDEM,
    CF_ENDPOINTS,
];

/// Bits of a [`Seq`] below the millisecond timestamp.
pub const SEQ_COUNTER_BITS: u32 = 10;

/// The millisecond timestamp a sequence number was derived from.
pub fn seq_time_ms(seq: Seq) -> u64 {
    seq >> SEQ_COUNTER_BITS
}

/// The first sequence number of millisecond `ms`.
pub fn seq_floor(ms: u64) -> Seq {
    ms << SEQ_COUNTER_BITS
}

/// Delivery states (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum DeliveryState {
    Pending = 0,
    Retrying = 1,
    Delivered = 2,
    Failed = 3,
    Paused = 4,
    Expired = 5,
}

impl DeliveryState {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Pending,
            1 => Self::Retrying,
            2 => Self::Delivered,
            3 => Self::Failed,
            4 => Self::Paused,
            5 => Self::Expired,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Paused => "paused",
            Self::Expired => "expired",
        }
    }
}

/// One accepted event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: Seq,
    /// The producer's idempotency key, if it gave one.
    pub ext_id: Option<String>,
    pub etype: String,
    pub account: Option<String>,
    /// Event time (the producer's `time`, else arrival), unix ms.
    pub time_ms: u64,
    /// Endpoints this event was routed to when it was accepted.
    pub routes: Vec<EndpointId>,
    /// The `data` JSON exactly as received.
    pub data: Bytes,
}

impl EventRecord {
    /// The id ricochet reports for this event: the producer's id, else `evt_<seq hex>`.
    pub fn display_id(&self) -> std::borrow::Cow<'_, str> {
        match &self.ext_id {
            Some(id) => std::borrow::Cow::Borrowed(id),
            None => std::borrow::Cow::Owned(generated_id(self.seq)),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1); // version
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        put_str(out, Some(&self.etype));
        put_str(out, self.ext_id.as_deref());
        put_str(out, self.account.as_deref());
        out.extend_from_slice(&(self.routes.len() as u16).to_le_bytes());
        for r in &self.routes {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
    }

    pub fn decode(seq: Seq, buf: &[u8]) -> Result<EventRecord> {
        let bad = |what: &str| StoreError::Corrupt {
            cf: CF_EVENTS,
            what: format!("event {seq}: {what}"),
        };
        let mut r = Reader(buf);
        if r.u8().ok_or_else(|| bad("empty"))? != 1 {
            return Err(bad("unknown version"));
        }
        let time_ms = r.u64().ok_or_else(|| bad("time"))?;
        let etype = r.str().ok_or_else(|| bad("type"))?.unwrap_or_default();
        let ext_id = r.str().ok_or_else(|| bad("id"))?;
        let account = r.str().ok_or_else(|| bad("account"))?;
        let n = r.u16().ok_or_else(|| bad("routes"))?;
        let mut routes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            routes.push(r.u32().ok_or_else(|| bad("route"))?);
        }
        Ok(EventRecord {
            seq,
            ext_id,
            etype,
            account,
            time_ms,
            routes,
            data: Bytes::copy_from_slice(r.0),
        })
    }
}

/// `evt_` + 16 hex digits of the sequence number.
pub fn generated_id(seq: Seq) -> String {
    format!("evt_{seq:016x}")
}

/// Parses an id of the form [`generated_id`] produces.
pub fn parse_generated_id(id: &str) -> Option<Seq> {
    let hex = id.strip_prefix("evt_")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// One delivery attempt as stored in the attempt log.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttemptRecord {
    pub at_ms: u64,
    pub latency_us: u32,
    /// 0 when no response was received.
    pub status: u16,
    pub timed_out: bool,
    /// The delivery's state after this attempt.
    pub state_after: Option<DeliveryState>,
    /// When the next attempt is due (retrying), else 0.
    pub next_due_ms: u64,
    pub error: String,
    pub response_excerpt: Vec<u8>,
    /// The request as sent: method and final URL.
    pub request_line: std::sync::Arc<str>,
}

impl AttemptRecord {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(&self.latency_us.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.push(self.timed_out as u8);
        out.push(self.state_after.map(|s| s as u8).unwrap_or(0));
        out.extend_from_slice(&self.next_due_ms.to_le_bytes());
        put_str(out, Some(&self.error));
        put_str(out, Some(&self.request_line));
        out.extend_from_slice(&self.response_excerpt);
    }

    pub fn decode(buf: &[u8]) -> Result<AttemptRecord> {
        let bad = || StoreError::Corrupt {
            cf: CF_ATTEMPTS,
            what: "truncated attempt".into(),
        };
        let mut r = Reader(buf);
        if r.u8().ok_or_else(bad)? != 1 {
            return Err(bad());
        }
        Ok(AttemptRecord {
            at_ms: r.u64().ok_or_else(bad)?,
            latency_us: r.u32().ok_or_else(bad)?,
            status: r.u16().ok_or_else(bad)?,
            timed_out: r.u8().ok_or_else(bad)? != 0,
            state_after: DeliveryState::from_u8(r.u8().ok_or_else(bad)?),
            next_due_ms: r.u64().ok_or_else(bad)?,
            error: r.str().ok_or_else(bad)?.unwrap_or_default(),
            request_line: r.str().ok_or_else(bad)?.unwrap_or_default().into(),
            response_excerpt: r.0.to_vec(),
        })
    }
}

/// Persisted per-endpoint state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EndpointMeta {
    pub id: EndpointId,
    /// Set while the endpoint is disabled, with why.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Consecutive failures per class (3xx, 4xx, 5xx) when last recorded.
    #[serde(default)]
    pub fails: [u32; 3],
    /// `ordered` endpoints: the delivery at the head waiting for its retry, as
    /// (seq, due_ms, attempts), so a restart puts it back in front.
    #[serde(default)]
    pub hold: Option<(Seq, u64, u16)>,
}

/// The reason recorded when the config file says `enabled = false`.
pub const DISABLED_IN_CONFIG: &str = "disabled in the config file";

/// A key of the `due` column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DueKey {
    pub due_ms: u64,
    pub seq: Seq,
    pub ep: EndpointId,
}

impl DueKey {
    pub const MIN: DueKey = DueKey {
        due_ms: 0,
        seq: 0,
        ep: 0,
    };

    pub fn encode(&self) -> [u8; 20] {
        let mut k = [0u8; 20];
        k[..8].copy_from_slice(&self.due_ms.to_be_bytes());
        k[8..16].copy_from_slice(&self.seq.to_be_bytes());
        k[16..].copy_from_slice(&self.ep.to_be_bytes());
        k
    }

    pub fn decode(k: &[u8]) -> Option<DueKey> {
        if k.len() != 20 {
            return None;
        }
        Some(DueKey {
            due_ms: u64::from_be_bytes(k[..8].try_into().ok()?),
            seq: u64::from_be_bytes(k[8..16].try_into().ok()?),
            ep: u32::from_be_bytes(k[16..].try_into().ok()?),
        })
    }
}

fn attempt_key(seq: Seq, ep: EndpointId, n: u16) -> [u8; 14] {
    let mut k = [0u8; 14];
    k[..8].copy_from_slice(&seq.to_be_bytes());
    k[8..12].copy_from_slice(&ep.to_be_bytes());
    k[12..].copy_from_slice(&n.to_be_bytes());
    k
}

fn paused_key(ep: EndpointId, seq: Seq) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&ep.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The RocksDB handle. Cheap to clone; shared by the committer and the admin API.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

/// A typed write batch: every mutation goes through here.
pub struct Batch {
    wb: WriteBatch,
    scratch: Vec<u8>,
    events: usize,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_max_total_wal_size(256 << 20);
        // One memtable budget for all column families.
        opts.set_db_write_buffer_size(64 << 20);
        let mut cfs = Vec::new();
        for name in ALL_CFS {
            let mut o = Options::default();
            // Events and attempts compress well; the small index families are not worth it.
            o.set_compression_type(match name {
                CF_EVENTS | CF_ATTEMPTS => rocksdb::DBCompressionType::Lz4,
                _ => rocksdb::DBCompressionType::None,
            });
            let mut bb = BlockBasedOptions::default();
            match name {
                CF_EVENTS | CF_ATTEMPTS => {
                    o.set_write_buffer_size(32 << 20);
                }
                CF_IDEM => {
                    bb.set_bloom_filter(10.0, false);
                    o.set_write_buffer_size(32 << 20);
                    o.set_memtable_whole_key_filtering(true);
                    o.set_memtable_prefix_bloom_ratio(0.05);
                }
                _ => {
                    o.set_write_buffer_size(16 << 20);
                }
            }
            o.set_block_based_table_factory(&bb);
            cfs.push(ColumnFamilyDescriptor::new(name, o));
        }
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Store { db: Arc::new(db) })
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// The highest sequence number in the log.
    pub fn max_seq(&self) -> Result<Option<Seq>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_EVENTS));
        it.seek_to_last();
        if it.valid() {
            let k = it.key().unwrap_or_default();
            return Ok(k.try_into().ok().map(u64::from_be_bytes));
        }
        it.status()?;
        Ok(None)
    }

    pub fn batch(&self) -> Batch {
        Batch {
            wb: WriteBatch::default(),
            scratch: Vec::with_capacity(1024),
            events: 0,
        }
    }

    /// Writes a batch atomically; `sync` fsyncs the WAL before returning.
    pub fn commit(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch.wb, &wo)?;
        Ok(())
    }

    /// Fsyncs the WAL (durability `batch`).
    pub fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// The sequence number recorded for a producer id.
    pub fn idem_get(&self, id: &[u8]) -> Result<Option<Seq>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_IDEM), id)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    pub fn event(&self, seq: Seq) -> Result<Option<EventRecord>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_EVENTS), seq.to_be_bytes())?
        {
            Some(v) => Ok(Some(EventRecord::decode(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// Looks an event up by the id ricochet reported for it.
    pub fn event_by_id(&self, id: &str) -> Result<Option<EventRecord>> {
        if let Some(seq) = self.idem_get(id.as_bytes())? {
            if let Some(ev) = self.event(seq)? {
                return Ok(Some(ev));
            }
        }
        match parse_generated_id(id) {
            Some(seq) => Ok(self.event(seq)?.filter(|e| e.ext_id.is_none())),
            None => Ok(None),
        }
    }

    /// Every attempt of an event, ordered by endpoint then attempt number.
    pub fn attempts(&self, seq: Seq) -> Result<Vec<(EndpointId, u16, AttemptRecord)>> {
        let mut out = Vec::new();
        let prefix = seq.to_be_bytes();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_ATTEMPTS));
        it.seek(prefix);
        while it.valid() {
            let k = it.key().unwrap_or_default();
            if k.len() != 14 || k[..8] != prefix {
                break;
            }
            let ep = u32::from_be_bytes(k[8..12].try_into().unwrap_or_default());
            let n = u16::from_be_bytes(k[12..14].try_into().unwrap_or_default());
            out.push((
                ep,
                n,
                AttemptRecord::decode(it.value().unwrap_or_default())?,
            ));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    pub fn is_paused(&self, ep: EndpointId, seq: Seq) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_PAUSED), paused_key(ep, seq))?
            .is_some())
    }

    /// Whether a delivery still has a due entry (pending or retrying).
    pub fn due_entries_of(&self, seq: Seq, ep: EndpointId, from_ms: u64) -> Result<bool> {
        // Used by the admin API only: scans from `from_ms`; a delivery has at most one key.
        let mut it = self.db.raw_iterator_cf(self.cf(CF_DUE));
        it.seek(
            DueKey {
                due_ms: from_ms,
                seq: 0,
                ep: 0,
            }
            .encode(),
        );
        while it.valid() {
            if let Some(k) = it.key().and_then(DueKey::decode) {
                if k.seq == seq && k.ep == ep {
                    return Ok(true);
                }
            }
            it.next();
        }
        it.status()?;
        Ok(false)
    }

    /// Up to `limit` due entries with key ≥ `from` and due time < `until_ms`, in key order.
    pub fn due_range(
        &self,
        from: DueKey,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(DueKey, u16)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(until_ms.to_be_bytes().to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_DUE), ro);
        it.seek(from.encode());
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            let k = it
                .key()
                .and_then(DueKey::decode)
                .ok_or(StoreError::Corrupt {
                    cf: CF_DUE,
                    what: "bad key".into(),
                })?;
            out.push((k, read_u16(it.value().unwrap_or_default())));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Number of keys in `due` (pending deliveries), for tests and diagnostics. Scans.
    pub fn count_due(&self) -> Result<usize> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_DUE), IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Paused deliveries of an endpoint, oldest first, up to `limit`, after `after_seq`.
    pub fn paused_of(
        &self,
        ep: EndpointId,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, u16)>> {
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
                read_u16(&v),
            ));
        }
        Ok(out)
    }

    /// Every persisted endpoint, by name.
    pub fn endpoints(&self) -> Result<Vec<(String, EndpointMeta)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_ENDPOINTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let meta: EndpointMeta =
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    cf: CF_ENDPOINTS,
                    what: format!("{name}: {e}"),
                })?;
            out.push((name, meta));
        }
        Ok(out)
    }
}

impl Batch {
    /// Number of events put in this batch.
    pub fn event_count(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }

    pub fn put_event(&mut self, store: &Store, ev: &EventRecord) {
        self.scratch.clear();
        ev.encode(&mut self.scratch);
        self.wb
            .put_cf(store.cf(CF_EVENTS), ev.seq.to_be_bytes(), &self.scratch);
        if let Some(id) = &ev.ext_id {
            self.wb
                .put_cf(store.cf(CF_IDEM), id.as_bytes(), ev.seq.to_be_bytes());
        }
        self.events += 1;
    }

    pub fn put_due(&mut self, store: &Store, key: DueKey, attempts: u16) {
        self.wb
            .put_cf(store.cf(CF_DUE), key.encode(), attempts.to_le_bytes());
    }

    /// Removes a due key. Each key is put once and removed once, so a single-delete.
    pub fn del_due(&mut self, store: &Store, key: DueKey) {
        self.wb.single_delete_cf(store.cf(CF_DUE), key.encode());
    }

    pub fn put_attempt(
        &mut self,
        store: &Store,
        seq: Seq,
        ep: EndpointId,
        n: u16,
        rec: &AttemptRecord,
    ) {
        self.scratch.clear();
        rec.encode(&mut self.scratch);
        self.wb.put_cf(
            store.cf(CF_ATTEMPTS),
            attempt_key(seq, ep, n),
            &self.scratch,
        );
    }

    pub fn put_paused(&mut self, store: &Store, ep: EndpointId, seq: Seq, attempts: u16) {
        self.wb.put_cf(
            store.cf(CF_PAUSED),
            paused_key(ep, seq),
            attempts.to_le_bytes(),
        );
    }

    pub fn del_paused(&mut self, store: &Store, ep: EndpointId, seq: Seq) {
        self.wb.delete_cf(store.cf(CF_PAUSED), paused_key(ep, seq));
    }

    pub fn put_endpoint(&mut self, store: &Store, name: &str, meta: &EndpointMeta) {
        let v = serde_json::to_vec(meta).unwrap_or_default();
        self.wb.put_cf(store.cf(CF_ENDPOINTS), name.as_bytes(), v);
    }
}

fn read_u16(v: &[u8]) -> u16 {
    v.get(..2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes)
        .unwrap_or(0)
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(s) => {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    /// `Some(None)` for an absent string, `None` when truncated.
    fn str(&mut self) -> Option<Option<String>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Some(None);
        }
        let b = self.take(n as usize)?;
        Some(Some(String::from_utf8_lossy(b).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: Seq) -> EventRecord {
        EventRecord {
            seq,
            ext_id: Some(format!("id-{seq}")),
            etype: "action_inquiry".into(),
            account: None,
            time_ms: 1_700_000_000_000,
            routes: vec![1, 7],
            data: Bytes::from_static(br#"{"a":1.50}"#),
        }
    }

    #[test]
    fn event_record_round_trip() {
        let e = ev(42);
        let mut buf = Vec::new();
        e.encode(&mut buf);
        assert_eq!(EventRecord::decode(42, &buf).unwrap(), e);
        assert!(EventRecord::decode(42, &buf[..5]).is_err());
    }

    #[test]
    fn attempt_round_trip() {
        let a = AttemptRecord {
            at_ms: 5,
            latency_us: 1200,
            status: 503,
            timed_out: false,
            state_after: Some(DeliveryState::Retrying),
            next_due_ms: 99,
            error: "boom".into(),
            response_excerpt: b"busy".to_vec(),
            request_line: "POST http://x/".into(),
        };
        let mut buf = Vec::new();
        a.encode(&mut buf);
        assert_eq!(AttemptRecord::decode(&buf).unwrap(), a);
    }

    #[test]
    fn due_keys_sort_by_time() {
        let a = DueKey {
            due_ms: 1,
            seq: u64::MAX,
            ep: 9,
        };
        let b = DueKey {
            due_ms: 2,
            seq: 0,
            ep: 0,
        };
        assert!(a.encode() < b.encode());
        assert_eq!(DueKey::decode(&a.encode()), Some(a));
    }

    #[test]
    fn generated_ids() {
        assert_eq!(parse_generated_id(&generated_id(0xabc)), Some(0xabc));
        assert_eq!(parse_generated_id("evt_12"), None);
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..5u64 {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.max_seq().unwrap(), round.checked_sub(1).map(|r| 100 + r));
            let mut b = s.batch();
            b.put_event(&s, &ev(100 + round));
            b.put_due(
                &s,
                DueKey {
                    due_ms: 10 + round,
                    seq: 100 + round,
                    ep: 1,
                },
                0,
            );
            s.commit(b, true).unwrap();
            assert_eq!(
                s.due_range(DueKey::MIN, u64::MAX, 100).unwrap().len(),
                round as usize + 1
            );
            assert_eq!(
                s.idem_get(format!("id-{}", 100 + round).as_bytes())
                    .unwrap(),
                Some(100 + round)
            );
        }
        let s = Store::open(dir.path()).unwrap();
        let due = s.due_range(DueKey::MIN, 12, 100).unwrap();
        assert_eq!(due.len(), 2);
        let mut b = s.batch();
        b.del_due(&s, due[0].0);
        s.commit(b, false).unwrap();
        assert_eq!(s.count_due().unwrap(), 4);
        assert_eq!(s.event_by_id("id-101").unwrap().unwrap().seq, 101);
    }
}
