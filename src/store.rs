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
//! | `paused`      | ep u32 BE ‖ seq u64 BE                 | [`DueVal`]                  |
//! | `idem`        | producer id bytes                     | seq u64 BE                  |
//! | `endpoints`   | endpoint name                         | [`EndpointMeta`] (JSON)     |
//! |               | `~config/` name                       | its config (JSON)           |
//! |               | `~name/` ep u32 BE                    | name (every id ever given)  |
//! | `index`       | see [`IndexKey`]                      | a posting group, or empty   |
//!
//! A delivery (event, endpoint) is pending exactly while it has a key in `due` (or in
//! `paused` while its endpoint is disabled); each `due` key is written once and removed
//! once with a single-delete, so the queue leaves no tombstones behind. Big-endian
//! integers make keys sort numerically, so `due` iterates in due-time order. A write
//! batch puts its attempt records and its `due` changes in key order (whatever order
//! they were added in), and those two families' memtables start each insert's search
//! from the last insert with the same key prefix (see `hinted`).
//!
//! The `index` family makes the webhook log's filters cheap ([`Store::query`]): every
//! event is indexed by type, account and each endpoint it went to; deliveries in the
//! rarer, settled states (`failed`, `paused`, `expired`, and `pending` again after a
//! replay) are indexed by state, per endpoint and overall. `pending`, `retrying` and
//! `delivered` are found through the other indexes and checked one by one (indexing
//! `retrying` would cost writes on every retry). The type, account and endpoint entries
//! of one write batch are grouped: one key per value, ending in the batch's largest
//! sequence number with that value, whose value lists the batch's other ones (see
//! [`encode_group`]). Batches take ascending, disjoint ranges of sequence numbers, so the
//! groups under one prefix never interleave; the query cursor (`GroupCursor`) relies on
//! it.
//!
//! Retention: [`Store::set_retention_floor`] moves a floor below which events and
//! attempts are range-deleted (by the committer) and index and idempotency entries are
//! dropped by compaction filters; queries never read below it.
//!
//! Sequence numbers are time-derived (`unix_ms << 10 | counter`), unique across restarts
//! and across a wiped data dir, and sort events by acceptance time.
//!
//! This module must not block a worker's I/O thread: only the committer thread writes
//! (the syncer thread fsyncs the WAL the committer wrote),
//! and only the committer and admin threads read.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

use crate::config::EndpointConfig;
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
const CF_INDEX: &str = "index";
const ALL_CFS: [&str; 7] = [
    CF_EVENTS,
    CF_DUE,
    CF_ATTEMPTS,
    CF_PAUSED,
    CF_IDEM,
    CF_ENDPOINTS,
    CF_INDEX,
];

/// Key prefix in `endpoints` of an endpoint's stored configuration.
const CONFIG_PREFIX: &str = "~config/";
/// Key prefix in `endpoints` of the name given to an id.
const NAME_PREFIX: &str = "~name/";
/// `~deleting/<id>`: an endpoint deleted whose pending deliveries are not all failed yet.
const DELETING_PREFIX: &str = "~deleting/";
/// `~pausing/<id>`: an endpoint disabled whose due deliveries are not all paused yet.
const PAUSING_PREFIX: &str = "~pausing/";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "retrying" => Self::Retrying,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            "paused" => Self::Paused,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// Whether every delivery in this state has a state-index entry (the rarer, settled
    /// states); `pending`, `retrying` (which changes with every retry) and `delivered` are
    /// found through the other indexes.
    pub fn fully_indexed(self) -> bool {
        matches!(self, Self::Failed | Self::Paused | Self::Expired)
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

/// One accepted event, held as its record in `events`: one buffer, read through
/// accessors. The record's fields, in order: version `1` u8, event time u64 LE, type,
/// producer id, account (each a string: u32 LE length, `u32::MAX` for none, then the
/// bytes), the routes (u16 LE count, then u32 LE endpoint ids) and the `data` JSON
/// exactly as received, to the end.
///
/// Every loaded delivery holds its event (through an `Arc`), so the in-memory form is the
/// stored one: two allocations per event (the `Arc` and the bytes) instead of one per
/// field, nothing to encode again at commit and nothing to take apart when the loader
/// reads an event back. [`EventRecord::decode`] checks the whole layout once, so the
/// accessors only walk it.
#[derive(Clone, PartialEq)]
pub struct EventRecord {
    pub seq: Seq,
    raw: Bytes,
}

/// Bytes before the type: version, event time.
const EVENT_HEAD: usize = 1 + 8;

/// The most routes an event record holds (their count is a `u16`), and so the most
/// endpoints there may be: an event routed to every one of them must fit.
pub const MAX_ROUTES: usize = u16::MAX as usize;

impl EventRecord {
    /// Encodes a new event.
    pub fn new(
        seq: Seq,
        ext_id: Option<&str>,
        etype: &str,
        account: Option<&str>,
        time_ms: u64,
        routes: &[EndpointId],
        data: &[u8],
    ) -> EventRecord {
        let strs = etype.len() + ext_id.map_or(0, str::len) + account.map_or(0, str::len);
        let mut out =
            Vec::with_capacity(EVENT_HEAD + 12 + strs + 2 + 4 * routes.len() + data.len());
        out.push(1); // version
        out.extend_from_slice(&time_ms.to_le_bytes());
        put_str(&mut out, Some(etype));
        put_str(&mut out, ext_id);
        put_str(&mut out, account);
        // At most MAX_ROUTES endpoints exist, and a replay adds none past it: past it the
        // count would wrap and the route ids be read as the data.
        assert!(routes.len() <= MAX_ROUTES, "{} routes", routes.len());
        out.extend_from_slice(&(routes.len() as u16).to_le_bytes());
        for r in routes {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(data);
        EventRecord {
            seq,
            raw: Bytes::from(out),
        }
    }

    /// Takes a stored record, checking its layout (the version, every length, and that
    /// the strings are UTF-8) before copying it out of RocksDB's buffer.
    pub fn decode(seq: Seq, buf: &[u8]) -> Result<EventRecord> {
        Self::check(seq, buf)?;
        Ok(EventRecord {
            seq,
            raw: Bytes::copy_from_slice(buf),
        })
    }

    /// [`EventRecord::decode`] without the event's `data` (which then reads as empty):
    /// for a page of the log, which shows none of it, so that a page of large events
    /// does not hold them all.
    pub fn decode_head(seq: Seq, buf: &[u8]) -> Result<EventRecord> {
        let data_at = Self::check(seq, buf)?;
        Ok(EventRecord {
            seq,
            raw: Bytes::copy_from_slice(&buf[..data_at]),
        })
    }

    /// Checks a stored record's layout; returns where its `data` begins.
    fn check(seq: Seq, buf: &[u8]) -> Result<usize> {
        let bad = |what: &str| StoreError::Corrupt {
            cf: CF_EVENTS,
            what: format!("event {seq}: {what}"),
        };
        let mut r = Reader(buf);
        if r.u8().ok_or_else(|| bad("empty"))? != 1 {
            return Err(bad("unknown version"));
        }
        r.u64().ok_or_else(|| bad("time"))?;
        for what in ["type", "id", "account"] {
            if let Some(b) = r.str_bytes().ok_or_else(|| bad(what))? {
                std::str::from_utf8(b).map_err(|_| bad(what))?;
            }
        }
        let n = r.u16().ok_or_else(|| bad("routes"))?;
        r.take(4 * n as usize).ok_or_else(|| bad("route"))?;
        Ok(buf.len() - r.0.len())
    }

    /// The stored record: what `events` holds under this event's key.
    pub fn encoded(&self) -> &[u8] {
        &self.raw
    }

    /// A reader past the event time, at the type.
    fn fields(&self) -> Reader<'_> {
        Reader(&self.raw[EVENT_HEAD..])
    }

    /// The string field `i` (0 type, 1 producer id, 2 account).
    fn string(&self, i: usize) -> Option<&str> {
        let mut r = self.fields();
        for _ in 0..i {
            r.str_bytes();
        }
        // Checked in `decode`; `new` writes strings.
        r.str_bytes()
            .flatten()
            .map(|b| std::str::from_utf8(b).unwrap_or_default())
    }

    /// Event time (the producer's `time`, else arrival), unix ms.
    pub fn time_ms(&self) -> u64 {
        u64::from_le_bytes(self.raw[1..EVENT_HEAD].try_into().expect("8 bytes"))
    }

    pub fn etype(&self) -> &str {
        self.string(0).unwrap_or_default()
    }

    /// The producer's idempotency key, if it gave one.
    pub fn ext_id(&self) -> Option<&str> {
        self.string(1)
    }

    pub fn account(&self) -> Option<&str> {
        self.string(2)
    }

    /// The routes' count and bytes, and where `data` begins.
    fn routes_and_data(&self) -> (&[u8], usize) {
        let mut r = self.fields();
        for _ in 0..3 {
            r.str_bytes();
        }
        let n = r.u16().unwrap_or(0) as usize;
        let routes = r.take(4 * n).unwrap_or_default();
        (routes, self.raw.len() - r.0.len())
    }

    /// Endpoints this event was routed to (when it was accepted, and any a replay added).
    pub fn routes(&self) -> impl ExactSizeIterator<Item = EndpointId> + Clone + '_ {
        self.routes_and_data()
            .0
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn has_route(&self, ep: EndpointId) -> bool {
        self.routes().any(|r| r == ep)
    }

    /// The same event routed to `ep` as well (a replay to a new endpoint).
    pub fn with_route(&self, ep: EndpointId) -> EventRecord {
        let mut routes: Vec<EndpointId> = self.routes().collect();
        routes.push(ep);
        EventRecord::new(
            self.seq,
            self.ext_id(),
            self.etype(),
            self.account(),
            self.time_ms(),
            &routes,
            self.data(),
        )
    }

    /// The `data` JSON exactly as received.
    pub fn data(&self) -> &[u8] {
        &self.raw[self.routes_and_data().1..]
    }

    /// [`EventRecord::data`] as shared bytes (no copy).
    pub fn data_bytes(&self) -> Bytes {
        self.raw.slice(self.routes_and_data().1..)
    }

    /// The id ricochet reports for this event: the producer's id, else `evt_<seq hex>`.
    pub fn display_id(&self) -> std::borrow::Cow<'_, str> {
        match self.ext_id() {
            Some(id) => std::borrow::Cow::Borrowed(id),
            None => std::borrow::Cow::Owned(generated_id(self.seq)),
        }
    }
}

impl std::fmt::Debug for EventRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecord")
            .field("seq", &self.seq)
            .field("ext_id", &self.ext_id())
            .field("etype", &self.etype())
            .field("account", &self.account())
            .field("time_ms", &self.time_ms())
            .field("routes", &self.routes().collect::<Vec<_>>())
            .field("data", &String::from_utf8_lossy(self.data()))
            .finish()
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

/// The request an attempt sent, as kept in the attempt log: enough to show it exactly,
/// without secrets. The standard headers are rebuilt from the record when read
/// (`webhook-id` from the event, `webhook-timestamp` from `at_ms`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestLog {
    /// A `webhook-signature` header was sent (its value is never kept).
    pub signed: bool,
    /// `Content-Type` sent, if any.
    pub content_type: Option<&'static str>,
    pub body_len: u32,
    /// The body was the event's `data` as received (so it is not copied here).
    pub body_is_data: bool,
    /// The first [`BODY_EXCERPT`] bytes of a rendered body.
    pub body_excerpt: Vec<u8>,
    /// The endpoint's headers as sent, secrets redacted: (name, value) pairs.
    pub headers: Vec<(String, String)>,
}

/// Body bytes kept per attempt.
pub const BODY_EXCERPT: usize = 1024;

const CONTENT_TYPES: [&str; 4] = [
    "application/json",
    "application/xml",
    "application/x-www-form-urlencoded",
    "text/plain; charset=utf-8",
];

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
    /// The rest of the request as sent.
    pub request: RequestLog,
}

/// Offset of `state_after` in an encoded [`AttemptRecord`] (read without decoding it).
const ATTEMPT_STATE_AT: usize = 1 + 8 + 4 + 2 + 1;

impl AttemptRecord {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(2);
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(&self.latency_us.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.push(self.timed_out as u8);
        out.push(self.state_after.map(|s| s as u8).unwrap_or(u8::MAX));
        out.extend_from_slice(&self.next_due_ms.to_le_bytes());
        put_str(out, Some(&self.error));
        put_str(out, Some(&self.request_line));
        let r = &self.request;
        out.push(r.signed as u8 | (r.body_is_data as u8) << 1);
        let ct = r
            .content_type
            .and_then(|c| CONTENT_TYPES.iter().position(|t| *t == c))
            .map_or(0, |i| i as u8 + 1);
        out.push(ct);
        out.extend_from_slice(&r.body_len.to_le_bytes());
        put_bytes(out, &r.body_excerpt);
        out.extend_from_slice(&(r.headers.len() as u16).to_le_bytes());
        for (k, v) in &r.headers {
            put_str(out, Some(k));
            put_str(out, Some(v));
        }
        out.extend_from_slice(&self.response_excerpt);
    }

    pub fn decode(buf: &[u8]) -> Result<AttemptRecord> {
        let bad = || StoreError::Corrupt {
            cf: CF_ATTEMPTS,
            what: "truncated attempt".into(),
        };
        let mut r = Reader(buf);
        let version = r.u8().ok_or_else(bad)?;
        if version != 2 {
            return Err(bad());
        }
        let mut a = AttemptRecord {
            at_ms: r.u64().ok_or_else(bad)?,
            latency_us: r.u32().ok_or_else(bad)?,
            status: r.u16().ok_or_else(bad)?,
            timed_out: r.u8().ok_or_else(bad)? != 0,
            state_after: DeliveryState::from_u8(r.u8().ok_or_else(bad)?),
            next_due_ms: r.u64().ok_or_else(bad)?,
            error: r.str().ok_or_else(bad)?.unwrap_or_default(),
            request_line: r.str().ok_or_else(bad)?.unwrap_or_default().into(),
            ..AttemptRecord::default()
        };
        let flags = r.u8().ok_or_else(bad)?;
        a.request.signed = flags & 1 != 0;
        a.request.body_is_data = flags & 2 != 0;
        let ct = r.u8().ok_or_else(bad)?;
        a.request.content_type = ct
            .checked_sub(1)
            .and_then(|i| CONTENT_TYPES.get(i as usize).copied());
        a.request.body_len = r.u32().ok_or_else(bad)?;
        a.request.body_excerpt = r.bytes().ok_or_else(bad)?.to_vec();
        let n = r.u16().ok_or_else(bad)?;
        for _ in 0..n {
            let k = r.str().ok_or_else(bad)?.unwrap_or_default();
            let v = r.str().ok_or_else(bad)?.unwrap_or_default();
            a.request.headers.push((k, v));
        }
        a.response_excerpt = r.0.to_vec();
        Ok(a)
    }
}

/// The value kept with a pending delivery (in `due` and `paused`): attempts made so far,
/// and the attempt count when its current round began (0, or the count at its last
/// replay), so a replayed delivery gets its retry schedule afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DueVal {
    pub attempts: u16,
    pub first: u16,
}

impl DueVal {
    pub const NEW: DueVal = DueVal {
        attempts: 0,
        first: 0,
    };

    fn encode(self) -> [u8; 4] {
        let mut v = [0u8; 4];
        v[..2].copy_from_slice(&self.attempts.to_le_bytes());
        v[2..].copy_from_slice(&self.first.to_le_bytes());
        v
    }

    fn decode(v: &[u8]) -> DueVal {
        let at = |i: usize| {
            v.get(i..i + 2)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_le_bytes)
                .unwrap_or(0)
        };
        DueVal {
            attempts: at(0),
            first: at(2),
        }
    }

    /// Attempts made in the current round (what the retry schedule counts).
    pub fn in_round(self) -> u16 {
        self.attempts.saturating_sub(self.first)
    }
}

/// Keys of the `index` column family. Every key ends in, or for `StateAll` continues
/// with, a sequence number, so a prefix iterated backwards gives newest first. `Type`,
/// `Account`, `Endpoint` keys are posting groups (the key's seq is the group's largest,
/// the value lists the rest, see [`encode_group`]; an empty value is a group of one);
/// `EndpointAdded`, `State` and `StateAll` keys are one entry each, with empty values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKey<'a> {
    /// `T` ‖ len u8 ‖ type ‖ seq
    Type(&'a str),
    /// `A` ‖ len u16 BE ‖ account ‖ seq
    Account(&'a str),
    /// `E` ‖ ep ‖ seq: every delivery routed when its event was accepted. Queries by
    /// endpoint read it together with [`IndexKey::EndpointAdded`].
    Endpoint(EndpointId),
    /// `e` ‖ ep ‖ seq: a route added to an older event (a replay to a new endpoint).
    /// Kept apart so that `Endpoint` groups never interleave.
    EndpointAdded(EndpointId),
    /// `S` ‖ state ‖ ep ‖ seq: deliveries in an indexed state, per endpoint.
    State(DeliveryState, EndpointId),
    /// `G` ‖ state ‖ seq ‖ ep: the same, over all endpoints.
    StateAll(DeliveryState),
}

impl IndexKey<'_> {
    /// The bytes before the sequence number.
    fn prefix(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        self.write_prefix(&mut k);
        k
    }

    /// Appends the bytes before the sequence number to `k`.
    fn write_prefix(&self, k: &mut Vec<u8>) {
        match *self {
            IndexKey::Type(t) => {
                let t = &t.as_bytes()[..t.len().min(255)];
                k.push(b'T');
                k.push(t.len() as u8);
                k.extend_from_slice(t);
            }
            IndexKey::Account(a) => {
                let a = &a.as_bytes()[..a.len().min(u16::MAX as usize)];
                k.push(b'A');
                k.extend_from_slice(&(a.len() as u16).to_be_bytes());
                k.extend_from_slice(a);
            }
            IndexKey::Endpoint(ep) => {
                k.push(b'E');
                k.extend_from_slice(&ep.to_be_bytes());
            }
            IndexKey::EndpointAdded(ep) => {
                k.push(b'e');
                k.extend_from_slice(&ep.to_be_bytes());
            }
            IndexKey::State(st, ep) => {
                k.push(b'S');
                k.push(st as u8);
                k.extend_from_slice(&ep.to_be_bytes());
            }
            IndexKey::StateAll(st) => {
                k.push(b'G');
                k.push(st as u8);
            }
        }
    }

    fn key(&self, seq: Seq, ep: EndpointId) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(&seq.to_be_bytes());
        if let IndexKey::StateAll(_) = self {
            k.extend_from_slice(&ep.to_be_bytes());
        }
        k
    }

    /// The sequence number in an index key (for the retention filter).
    fn seq_of(key: &[u8]) -> Option<Seq> {
        let at = match key.first()? {
            b'G' => 2,
            _ => key.len().checked_sub(8)?,
        };
        key.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes)
    }
}

/// Encodes a posting group's value: `seqs` ascending and distinct, the last one going into
/// the key; the value holds the others, from the largest down, each as the LEB128 varint
/// of its distance to the one above it (sequence numbers of one batch are dense, so most
/// take one or two bytes).
pub fn encode_group(seqs: &[Seq], out: &mut Vec<u8>) {
    for pair in seqs.windows(2).rev() {
        let mut gap = pair[1] - pair[0];
        while gap >= 0x80 {
            out.push(gap as u8 | 0x80);
            gap >>= 7;
        }
        out.push(gap as u8);
    }
}

/// Decodes a posting group: the key's `max` then the value's members, largest first,
/// into `out` (cleared first).
pub fn decode_group(max: Seq, value: &[u8], out: &mut Vec<Seq>) -> Result<()> {
    let bad = || StoreError::Corrupt {
        cf: CF_INDEX,
        what: "bad posting group".into(),
    };
    out.clear();
    out.push(max);
    let mut cur = max;
    let mut gap = 0u64;
    let mut shift = 0u32;
    for &b in value {
        if shift > 63 {
            return Err(bad());
        }
        gap |= u64::from(b & 0x7f) << shift;
        if b & 0x80 != 0 {
            shift += 7;
            continue;
        }
        cur = cur.checked_sub(gap).filter(|_| gap > 0).ok_or_else(bad)?;
        out.push(cur);
        gap = 0;
        shift = 0;
    }
    if shift != 0 {
        return Err(bad());
    }
    Ok(())
}

/// Persisted per-endpoint state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EndpointMeta {
    pub id: EndpointId,
    /// Set while the endpoint is disabled, with why, in words (the admin API shows it).
    /// Change it only through the methods that keep it and `disabled_by` together
    /// ([`EndpointMeta::disable`], [`EndpointMeta::enable`] and their kin).
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Who disabled it; absent in records written before it was stored (see
    /// [`EndpointMeta::disabled_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_by: Option<DisabledBy>,
    /// Consecutive failures per class (3xx, 4xx, 5xx) when last recorded.
    #[serde(default)]
    pub fails: [u32; 3],
    /// `ordered` endpoints: the delivery at the head waiting for its retry, as
    /// (seq, due_ms, attempts), so a restart puts it back in front.
    #[serde(default)]
    pub hold: Option<(Seq, u64, u16)>,
    /// The held delivery's round start (see [`DueVal`]): nonzero after a replay.
    #[serde(default)]
    pub hold_first: u16,
    /// `ordered` endpoints: the latest first-attempt due time given to a delivery while
    /// it was in the future, so that one accepted later is never due before it (an
    /// earlier event time can put it there), after a restart too. 0 if none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_due_ms: u64,
    /// Where its configuration comes from.
    #[serde(default)]
    pub source: EndpointSource,
    /// The config file listed it at a start: it is the file's, replaced over the API
    /// since or not, and deleted at a start whose file no longer lists it (an endpoint
    /// created over the API and never named by the file runs on). Records written
    /// before this was kept have it false: their `source` says the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_file: bool,
}

impl EndpointMeta {
    /// Whether the config file owns it ([`EndpointMeta::from_file`]).
    pub fn is_the_file_s(&self) -> bool {
        self.from_file || self.source == EndpointSource::Config
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Where an endpoint's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointSource {
    /// The config file: applied at every start, removed when the file drops it.
    #[default]
    Config,
    /// Created over the admin API: persisted here only.
    Api,
}

impl EndpointSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointSource::Config => "config",
            EndpointSource::Api => "api",
        }
    }
}

/// Keys of the due index read per write by [`Store::pause_due`].
const PAUSE_SCAN: usize = 16_384;

/// Due entries found by a paged scan, and the key to go on from (`None`: the end).
pub type DuePage = (Vec<(DueKey, DueVal)>, Option<DueKey>);

/// The entry a `due` iterator is at.
fn due_entry(it: &rocksdb::DBRawIteratorWithThreadMode<'_, DB>) -> Result<(DueKey, DueVal)> {
    let k = it
        .key()
        .and_then(DueKey::decode)
        .ok_or(StoreError::Corrupt {
            cf: CF_DUE,
            what: "bad key".into(),
        })?;
    Ok((k, DueVal::decode(it.value().unwrap_or_default())))
}

/// Reads the retention floor ([`Store::floor_reader`]): events below it are gone.
#[derive(Clone, Debug)]
pub struct FloorReader(Arc<AtomicU64>);

impl FloorReader {
    /// Whether event `seq` is below the retention floor.
    pub fn is_past(&self, seq: Seq) -> bool {
        seq < self.0.load(Ordering::Relaxed)
    }
}

/// An endpoint as persisted.
#[derive(Debug, Clone)]
pub struct StoredEndpoint {
    pub name: String,
    pub meta: EndpointMeta,
    /// Absent for endpoints written before configurations were stored.
    pub config: Option<EndpointConfig>,
}

/// Who disabled an endpoint: it decides what may enable it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledBy {
    /// The config file says `enabled = false`; the file saying `true` enables it again.
    Config,
    /// A definition sent over the API says `enabled = false`; a definition saying
    /// `true` (or the config file) enables it again.
    Definition,
    /// Its stored definition no longer compiles (a newer version checks templates more
    /// strictly); any definition that compiles replaces it and decides alone.
    NotCompiling,
    /// The receiver's answers (`410 Gone`, `disable_after`): only an explicit enable.
    Receiver,
    /// `POST /v1/endpoints/{name}/disable`: only an explicit enable.
    Admin,
}

impl DisabledBy {
    /// The reason shown, in words (a detail may follow, see
    /// [`EndpointMeta::disable_because`]).
    pub fn words(self) -> &'static str {
        match self {
            DisabledBy::Config => LEGACY_IN_CONFIG,
            DisabledBy::Definition => LEGACY_IN_SPEC,
            DisabledBy::Admin => LEGACY_ADMIN,
            DisabledBy::NotCompiling => LEGACY_NOT_COMPILING,
            DisabledBy::Receiver => "disabled by the receiver's answers",
        }
    }

    /// The cause of a disable recorded before causes were stored, from the words this
    /// program wrote then: the only place a reason's text is read.
    fn from_legacy_reason(reason: &str) -> DisabledBy {
        match reason {
            LEGACY_IN_CONFIG => DisabledBy::Config,
            LEGACY_IN_SPEC => DisabledBy::Definition,
            LEGACY_ADMIN => DisabledBy::Admin,
            r if r.starts_with(LEGACY_NOT_COMPILING) => DisabledBy::NotCompiling,
            _ => DisabledBy::Receiver,
        }
    }
}

// The words of the fixed reasons. They are also how records written before
// `disabled_by` existed tell their cause, so they never change.
const LEGACY_IN_CONFIG: &str = "disabled in the config file";
const LEGACY_IN_SPEC: &str = "disabled by its definition (enabled = false)";
const LEGACY_ADMIN: &str = "disabled over the admin API";
const LEGACY_NOT_COMPILING: &str = "its stored definition no longer compiles";

impl EndpointMeta {
    pub fn is_disabled(&self) -> bool {
        self.disabled_reason.is_some()
    }

    /// Who disabled it, `None` while it is enabled.
    pub fn disabled_by(&self) -> Option<DisabledBy> {
        let reason = self.disabled_reason.as_deref()?;
        Some(
            self.disabled_by
                .unwrap_or_else(|| DisabledBy::from_legacy_reason(reason)),
        )
    }

    /// Disables it, with the cause's words as the reason.
    pub fn disable(&mut self, by: DisabledBy) {
        self.disabled_reason = Some(by.words().to_string());
        self.disabled_by = Some(by);
    }

    /// Disables it with a detail: the receiver's answer is the whole reason (`410 Gone`,
    /// the failures counted); a compile error follows the cause's words.
    pub fn disable_because(&mut self, by: DisabledBy, detail: &str) {
        self.disabled_reason = Some(match by {
            DisabledBy::Receiver => detail.to_string(),
            _ => format!("{}: {detail}", by.words()),
        });
        self.disabled_by = Some(by);
    }

    /// Disables it as its stored definition, which compiles, is refused now by a check
    /// it no longer passes (the SSRF guard's): [`DisabledBy::NotCompiling`], as what
    /// lifts it is the same (a definition that passes), its reason saying why.
    pub fn disable_refused(&mut self, why: &str) {
        self.disabled_reason = Some(format!("its stored definition is refused now: {why}"));
        self.disabled_by = Some(DisabledBy::NotCompiling);
    }

    pub fn enable(&mut self) {
        self.disabled_reason = None;
        self.disabled_by = None;
    }
}

/// A key of the `due` column family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

    /// The least key above this one.
    pub fn successor(self) -> DueKey {
        if self.ep < u32::MAX {
            DueKey {
                ep: self.ep + 1,
                ..self
            }
        } else if self.seq < u64::MAX {
            DueKey {
                seq: self.seq + 1,
                ep: 0,
                ..self
            }
        } else {
            DueKey {
                due_ms: self.due_ms + 1,
                seq: 0,
                ep: 0,
            }
        }
    }

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
    /// Retention floor: events below this sequence number are gone (or going).
    floor: Arc<AtomicU64>,
}

/// A typed write batch: every mutation goes through here.
pub struct Batch {
    wb: WriteBatch,
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

/// One block cache for all column families (RocksDB otherwise gives each its own 32 MiB).
/// Small on purpose: the loader reads events back in order (one block serves the events
/// next to each other, and the iterator holds it while it does), and the OS page cache
/// keeps the compressed blocks anyway. 32 MiB, measured against this: peak RSS 20–30 MiB
/// higher at `max` and `backlog`, no faster (docs/perf/history.md#budget, session 12).
const BLOCK_CACHE_BYTES: usize = 8 << 20;

/// Bytes RocksDB holds in memory by what holds them ([`Store::memory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMemory {
    pub memtables: u64,
    pub table_readers: u64,
    pub block_cache: u64,
}

/// Column family options whose memtable inserts start their search from the last insert
/// whose key has the same first `prefix` bytes (RocksDB's
/// `memtable_insert_with_hint_prefix_extractor`, which its C API reaches only through an
/// options string). Without it an insert that does not land right beside the last one
/// searches the skiplist from the top. Attempts take 6 bytes (the event's time to 64 ms),
/// `due` keys 7 (the due time to 256 ms): a round's first attempts, its retries of events
/// 1, 3 and 7 s old, and its retries due 1, 2 and 4 s ahead each keep their own place.
fn hinted(prefix: usize) -> Result<Options> {
    Ok(Options::default().get_options_from_string(format!(
        "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{prefix}"
    ))?)
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

/// Turns RocksDB's per-thread performance counters off for the calling thread. They are
/// on by default (`kEnableCount`): every key comparison in a memtable insert or read
/// then also bumps a thread-local counter nothing reads. Called by the threads that
/// write and read the store hardest (the committer, the syncer).
pub fn quiet_perf_counters() {
    rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
}

/// Shard bits of a table cache for `max_open_files` of `n`: shards of 16 files or more,
/// at most RocksDB's default 64 shards.
fn table_cache_shard_bits(n: usize) -> i32 {
    let shards = (n / 16).max(1);
    (shards.ilog2() as i32).min(6)
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, every table file kept open.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_limited(dir, None)
    }

    /// Opens (creating if needed) the store in `dir`, keeping at most `table_files` of
    /// its table files open at once (RocksDB's `max_open_files`; the server's share of
    /// the open-file limit, [`crate::fdlimit::store_files_for`]). `None`: all of them.
    pub fn open_limited(dir: &Path, table_files: Option<usize>) -> Result<Store> {
        let floor = Arc::new(AtomicU64::new(0));
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_max_total_wal_size(256 << 20);
        // RocksDB's own log (`LOG`: a line per flush and compaction, ~4 MB an hour at
        // 2,000 events/s, and a statistics dump every 10 minutes) grows for as long as
        // the process runs, and each start keeps the last one (up to 1,000): rolled at
        // 8 MiB, 4 files in all (the current one counts), it takes at most 32 MiB.
        opts.set_max_log_file_size(8 << 20);
        opts.set_keep_log_file_num(4);
        if let Some(n) = table_files {
            opts.set_max_open_files(i32::try_from(n).unwrap_or(i32::MAX));
            // The table cache is split into 2^bits shards, each holding its share: with
            // the default 64, a small budget was one file per shard (two busy files
            // in one shard kept reopening each other) and up to 64 open in all, above
            // it. At least 16 files a shard.
            opts.set_table_cache_num_shard_bits(table_cache_shard_bits(n));
        }
        // One memtable budget for all column families. 32 MiB was measured twice; on the
        // 16-lane `max` it cost ~10% throughput (compaction doubled) and saved no RSS
        // (docs/perf/history.md#reverted-s3; glibc's heap keeps
        // freed memtable blocks: docs/operations.md, "Memory").
        opts.set_db_write_buffer_size(64 << 20);
        let block_cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut cfs = Vec::new();
        for name in ALL_CFS {
            let mut o = match name {
                CF_ATTEMPTS => hinted(6)?,
                CF_DUE => hinted(7)?,
                _ => Options::default(),
            };
            // Events and attempts compress well; the small index families are not worth it.
            o.set_compression_type(match name {
                CF_EVENTS | CF_ATTEMPTS | CF_INDEX => rocksdb::DBCompressionType::Lz4,
                _ => rocksdb::DBCompressionType::None,
            });
            let mut bb = BlockBasedOptions::default();
            bb.set_block_cache(&block_cache);
            match name {
                CF_EVENTS | CF_ATTEMPTS => {
                    o.set_write_buffer_size(32 << 20);
                }
                CF_IDEM => {
                    bb.set_bloom_filter(10.0, false);
                    o.set_write_buffer_size(32 << 20);
                    o.set_memtable_whole_key_filtering(true);
                    o.set_memtable_prefix_bloom_ratio(0.05);
                    // Keys of events past retention go at compaction.
                    let f = floor.clone();
                    o.set_compaction_filter(
                        "ricochet-idem-retention",
                        move |_, _: &[u8], v: &[u8]| match v.try_into().map(u64::from_be_bytes) {
                            Ok(seq) if seq < f.load(Ordering::Relaxed) => Decision::Remove,
                            _ => Decision::Keep,
                        },
                    );
                }
                CF_INDEX => {
                    o.set_write_buffer_size(16 << 20);
                    let f = floor.clone();
                    o.set_compaction_filter(
                        "ricochet-index-retention",
                        move |_, k: &[u8], _: &[u8]| match IndexKey::seq_of(k) {
                            Some(seq) if seq < f.load(Ordering::Relaxed) => Decision::Remove,
                            _ => Decision::Keep,
                        },
                    );
                }
                _ => {
                    o.set_write_buffer_size(16 << 20);
                }
            }
            o.set_block_based_table_factory(&bb);
            cfs.push(ColumnFamilyDescriptor::new(name, o));
        }
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Store {
            db: Arc::new(db),
            floor,
        })
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Moves the retention floor up (never down): events below `seq` are no longer read,
    /// and compactions drop their index and idempotency entries.
    pub fn set_retention_floor(&self, seq: Seq) {
        self.floor.fetch_max(seq, Ordering::Relaxed);
    }

    pub fn retention_floor(&self) -> Seq {
        self.floor.load(Ordering::Relaxed)
    }

    /// The retention floor to read where the store itself is not (the workers: a
    /// delivery they hold whose event passed it expires instead of being attempted).
    pub fn floor_reader(&self) -> FloorReader {
        FloorReader(self.floor.clone())
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
        batch.write_postings(self);
        batch.write_sorted(self);
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

    /// [`idem_get`](Self::idem_get) for many ids at once (one read of the memtables and
    /// files for the whole set); the answers come in the order of `ids`.
    pub fn idem_get_many(&self, ids: &[&[u8]]) -> Vec<Result<Option<Seq>>> {
        if ids.is_empty() {
            return Vec::new();
        }
        self.db
            .batched_multi_get_cf(self.cf(CF_IDEM), ids.iter().copied(), false)
            .into_iter()
            .map(|r| Ok(r?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))))
            .collect()
    }

    pub fn event(&self, seq: Seq) -> Result<Option<EventRecord>> {
        self.event_as(seq, EventRecord::decode)
    }

    /// [`Store::event`] without its `data` ([`EventRecord::decode_head`]).
    fn event_head(&self, seq: Seq) -> Result<Option<EventRecord>> {
        self.event_as(seq, EventRecord::decode_head)
    }

    fn event_as(
        &self,
        seq: Seq,
        decode: fn(Seq, &[u8]) -> Result<EventRecord>,
    ) -> Result<Option<EventRecord>> {
        if seq < self.retention_floor() {
            return Ok(None);
        }
        match self
            .db
            .get_pinned_cf(self.cf(CF_EVENTS), seq.to_be_bytes())?
        {
            Some(v) => Ok(Some(decode(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// A reader for many events in about ascending order (the loader's pages): see
    /// [`EventReader`]. One per pass: its iterator does not see later writes.
    pub fn event_reader(&self) -> EventReader<'_> {
        EventReader {
            store: self,
            following: false,
            last: None,
            // Blocks go through the block cache, as for point reads: the scattered
            // reads of one pass and the runs of the next may share them.
            it: self.db.raw_iterator_cf(self.cf(CF_EVENTS)),
            floor: self.retention_floor(),
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
            Some(seq) => Ok(self.event(seq)?.filter(|e| e.ext_id().is_none())),
            None => Ok(None),
        }
    }

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

    /// Whether `key` is in the due index.
    pub fn has_due(&self, key: DueKey) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_DUE), key.encode())?
            .is_some())
    }

    pub fn is_paused(&self, ep: EndpointId, seq: Seq) -> Result<bool> {
        self.is_paused_at(ep, seq, None)
    }

    /// Whether the delivery of `seq` to `ep` is `failed`.
    pub fn is_failed(&self, ep: EndpointId, seq: Seq) -> Result<bool> {
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

    /// Up to `limit` due entries with key ≥ `from` and due time < `until_ms`, in key order.
    pub fn due_range(
        &self,
        from: DueKey,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(DueKey, DueVal)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(until_ms.to_be_bytes().to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_DUE), ro);
        it.seek(from.encode());
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            out.push(due_entry(&it)?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The due entries `mine` picks among the first `scan` keys ≥ `from` (and below
    /// `below`, if given), in key order, at most `most` of them, and the key to go on
    /// from (`None` at the end of the index, or at `below`): the index is ordered by
    /// time, so moving all of some endpoints' deliveries scans it in pages this way.
    pub fn due_where(
        &self,
        from: DueKey,
        below: Option<DueKey>,
        scan: usize,
        most: usize,
        mut mine: impl FnMut(&DueKey) -> bool,
    ) -> Result<DuePage> {
        let mut ro = ReadOptions::default();
        if let Some(b) = below {
            ro.set_iterate_upper_bound(b.encode().to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_DUE), ro);
        it.seek(from.encode());
        let mut out = Vec::new();
        let mut scanned = 0;
        while it.valid() {
            let (k, v) = due_entry(&it)?;
            if scanned == scan || out.len() == most {
                return Ok((out, Some(k)));
            }
            scanned += 1;
            if mine(&k) {
                out.push((k, v));
            }
            it.next();
        }
        it.status()?;
        Ok((out, None))
    }

    /// Moves every due delivery `pick` chooses to its endpoint's paused set, a write
    /// per [`PAUSE_SCAN`] keys read (a disable's: rare, and a large backlog must not
    /// make one huge write). `moved` counts what is written, also when a later page
    /// fails.
    pub fn pause_due(&self, mut pick: impl FnMut(&DueKey) -> bool, moved: &mut u64) -> Result<()> {
        let mut from = Some(DueKey::MIN);
        while let Some(at) = from {
            let (page, next) = self.due_where(at, None, PAUSE_SCAN, usize::MAX, &mut pick)?;
            let mut batch = self.batch();
            for &(key, val) in &page {
                batch.del_due(self, key);
                batch.pause(self, key.ep, key.seq, val);
            }
            self.commit(batch, false)?;
            *moved += page.len() as u64;
            from = next;
        }
        Ok(())
    }

    /// Endpoints disabled whose due deliveries were still being paused, by id
    /// ([`Batch::pausing`]).
    pub fn pausing(&self) -> Result<Vec<EndpointId>> {
        self.ids_under(PAUSING_PREFIX)
    }

    /// Endpoints deleted whose pending deliveries are still being failed, by id
    /// ([`Batch::delete_endpoint`]).
    pub fn deleting(&self) -> Result<Vec<EndpointId>> {
        self.ids_under(DELETING_PREFIX)
    }

    /// The ids of every `<prefix><id>` marker in `endpoints`.
    fn ids_under(&self, prefix: &str) -> Result<Vec<EndpointId>> {
        Ok(self.by_id(prefix)?.into_iter().map(|(id, _)| id).collect())
    }

    /// Every `<prefix><id>` entry of `endpoints` (the id big-endian), with its value.
    fn by_id(&self, prefix: &str) -> Result<Vec<(EndpointId, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_ENDPOINTS));
        it.seek(prefix);
        while it.valid() {
            let k = it.key().unwrap_or_default();
            let Some(id) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            if let Ok(id) = id.try_into().map(u32::from_be_bytes) {
                out.push((id, it.value().unwrap_or_default().to_vec()));
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Number of keys in `due` (pending deliveries), for tests and diagnostics. Scans.
    pub fn count_due(&self) -> Result<usize> {
        self.each_due(|_| {})
    }

    /// Every key in `due`, in order, passed to `each`; returns how many there are.
    /// Scans the whole index (the committer's census at start).
    pub fn each_due(&self, mut each: impl FnMut(DueKey)) -> Result<usize> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_DUE), IteratorMode::Start) {
            let (k, _) = item?;
            if let Some(k) = DueKey::decode(&k) {
                each(k);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Paused deliveries of an endpoint, oldest first, up to `limit`, from `after_seq`.
    pub fn paused_of(
        &self,
        ep: EndpointId,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DueVal)>> {
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
                DueVal::decode(&v),
            ));
        }
        Ok(out)
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

    /// Every persisted endpoint, by name (state only).
    pub fn endpoints(&self) -> Result<Vec<(String, EndpointMeta)>> {
        Ok(self
            .stored_endpoints()?
            .into_iter()
            .map(|e| (e.name, e.meta))
            .collect())
    }

    /// One endpoint's persisted state, by name (a point read: `GET` of one endpoint
    /// must not cost a scan of thousands).
    pub fn endpoint_meta(&self, name: &str) -> Result<Option<EndpointMeta>> {
        let Some(v) = self
            .db
            .get_pinned_cf(self.cf(CF_ENDPOINTS), name.as_bytes())?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                cf: CF_ENDPOINTS,
                what: format!("{name}: {e}"),
            })
    }

    /// Every persisted endpoint with its stored configuration.
    pub fn stored_endpoints(&self) -> Result<Vec<StoredEndpoint>> {
        let mut out: Vec<StoredEndpoint> = Vec::new();
        let mut configs = std::collections::HashMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_ENDPOINTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let corrupt = |e: serde_json::Error| StoreError::Corrupt {
                cf: CF_ENDPOINTS,
                what: format!("{key}: {e}"),
            };
            if let Some(name) = key.strip_prefix(CONFIG_PREFIX) {
                let cfg: EndpointConfig = serde_json::from_slice(&v).map_err(corrupt)?;
                configs.insert(name.to_string(), cfg);
            } else if !key.starts_with('~') {
                let meta: EndpointMeta = serde_json::from_slice(&v).map_err(corrupt)?;
                out.push(StoredEndpoint {
                    name: key,
                    meta,
                    config: None,
                });
            }
        }
        for e in &mut out {
            e.config = configs.remove(&e.name);
        }
        Ok(out)
    }

    /// The name every endpoint id was given (deleted ones included). Reads only the
    /// `~name/` keys (data dirs from before they existed fall back to the metas).
    pub fn endpoint_names(&self) -> Result<std::collections::HashMap<EndpointId, String>> {
        let mut out: std::collections::HashMap<EndpointId, String> = self
            .by_id(NAME_PREFIX)?
            .into_iter()
            .map(|(id, name)| (id, String::from_utf8_lossy(&name).into_owned()))
            .collect();
        if out.is_empty() {
            for (name, meta) in self.endpoints()? {
                out.insert(meta.id, name);
            }
        }
        Ok(out)
    }

    /// Column family `name`'s integer property `prop` (0 if RocksDB has none).
    fn cf_property(&self, name: &'static str, prop: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(name), prop)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Bytes on disk (SST files) and in memtables per column family.
    pub fn sizes(&self) -> Vec<(&'static str, u64, u64)> {
        ALL_CFS
            .iter()
            .map(|&name| {
                (
                    name,
                    self.cf_property(name, "rocksdb.total-sst-files-size"),
                    self.cf_property(name, "rocksdb.cur-size-all-mem-tables"),
                )
            })
            .collect()
    }

    /// What RocksDB holds in memory now: its memtables (unflushed and those still being
    /// flushed or pinned by a reader), its table readers (index and filter blocks of
    /// open table files) and its block cache. Property reads: cheap, no I/O.
    pub fn memory(&self) -> StoreMemory {
        let mut m = StoreMemory::default();
        for name in ALL_CFS {
            m.memtables += self.cf_property(name, "rocksdb.size-all-mem-tables");
            m.table_readers += self.cf_property(name, "rocksdb.estimate-table-readers-mem");
        }
        // One cache shared by every family: read once.
        m.block_cache = self
            .db
            .property_int_value("rocksdb.block-cache-usage")
            .ok()
            .flatten()
            .unwrap_or(0);
        m
    }

    /// Flushes every memtable to SST files (benchmarks measure sizes on disk).
    pub fn flush(&self) -> Result<()> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    /// RocksDB's sequence number of the last write: unchanged while nothing is written.
    pub fn last_write(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Takes off the disk what retention deleted below `floor`, for a store that has
    /// been idle: flushes every memtable, so the WAL files that hold them (events and
    /// attempts included) are deleted, then compacts the event and attempt logs below
    /// `floor` (their range deletes then drop the data from the table files) and the due
    /// index (its deleted keys slow every scan of it until a compaction). Under traffic
    /// flushes and compactions do this on their own; idle, nothing would, and a WAL kept
    /// events past retention for as long as the store was idle. Blocks for as long as
    /// that takes: not for a thread that answers producers.
    pub fn scrub_below(&self, floor: Seq) -> Result<()> {
        self.flush()?;
        for cf in [CF_EVENTS, CF_ATTEMPTS] {
            self.db.compact_range_cf(
                self.cf(cf),
                Some(0u64.to_be_bytes()),
                Some(floor.to_be_bytes()),
            );
        }
        self.db
            .compact_range_cf(self.cf(CF_DUE), None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Stops RocksDB's background work (flushes, compactions, a manual compaction under
    /// way) and waits for it: at shutdown only, as nothing is flushed or compacted
    /// after it.
    pub fn cancel_background_work(&self) {
        self.db.cancel_all_background_work(true);
    }

    /// Whether the event log or the attempt log still holds a key below `floor`.
    pub fn has_before(&self, floor: Seq) -> Result<bool> {
        for cf in [CF_EVENTS, CF_ATTEMPTS] {
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(floor.to_be_bytes().to_vec());
            let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
            it.seek_to_first();
            if it.valid() {
                return Ok(true);
            }
            it.status()?;
        }
        Ok(false)
    }

    /// Drops whole SST files of events and attempts below `floor` (cheap; the range
    /// deletes in [`Batch::delete_before`] cover the rest).
    pub fn drop_files_before(&self, floor: Seq) -> Result<()> {
        self.db.delete_file_in_range_cf(
            self.cf(CF_EVENTS),
            0u64.to_be_bytes(),
            floor.to_be_bytes(),
        )?;
        self.db.delete_file_in_range_cf(
            self.cf(CF_ATTEMPTS),
            0u64.to_be_bytes(),
            floor.to_be_bytes(),
        )?;
        Ok(())
    }
}

/// Events read one by one in about ascending sequence order, as the loader hands a
/// page of due deliveries to the workers. While the events asked for are dense (the
/// fresh deliveries spilled during a burst, the retries of a high failure rate), one
/// iterator over the log follows them, a step per event passed; where they are sparse,
/// each is a point read. Measured by `cargo bench --bench loader`: a step costs ~0.35 µs,
/// a point read ~2.3–3.7 µs, a seek ~8 µs — so the reader steps at most
/// [`READER_STEPS`] keys, and seeks only to follow a dense run again.
pub struct EventReader<'a> {
    store: &'a Store,
    it: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
    floor: Seq,
    /// The iterator is at (or just before) the events asked for.
    following: bool,
    /// The event asked for last.
    last: Option<Seq>,
}

/// How far [`EventReader`] steps forward before it reads the event on its own instead.
const READER_STEPS: usize = 8;

/// Whether `to` may be at most [`READER_STEPS`] keys after `from`: close in number, or
/// early in the next millisecond (a dense run of sequence numbers crosses into it there).
fn near(from: Seq, to: Seq) -> bool {
    let steps = READER_STEPS as u64;
    to > from
        && (to - from <= steps
            || (seq_time_ms(to) == seq_time_ms(from) + 1
                && to - seq_floor(seq_time_ms(to)) < steps))
}

impl EventReader<'_> {
    /// The event `seq`, like [`Store::event`] (`None` if it is past retention or gone).
    pub fn get(&mut self, seq: Seq) -> Result<Option<EventRecord>> {
        if seq < self.floor {
            return Ok(None);
        }
        let last = self.last.replace(seq);
        let target = seq.to_be_bytes();
        let at = self
            .it
            .key()
            .and_then(|k| k.try_into().ok())
            .map(u64::from_be_bytes);
        if self.following {
            if at.is_some_and(|at| at == seq || near(at, seq)) {
                let mut steps = 0;
                while let Some(k) = self.it.key() {
                    match k.cmp(&target[..]) {
                        std::cmp::Ordering::Equal => return self.current(seq),
                        std::cmp::Ordering::Less if steps < READER_STEPS => {
                            self.it.next();
                            steps += 1;
                        }
                        // Stepped from below to past it: the log has no such event.
                        std::cmp::Ordering::Greater if steps > 0 => return Ok(None),
                        _ => break,
                    }
                }
            }
            // Behind the iterator, far ahead of it, or past the end: on its own.
            self.following = false;
        } else if last.is_some_and(|l| near(l, seq)) {
            // Dense again: the iterator follows from here.
            self.it.seek(target);
            self.following = true;
            return match self.it.key() {
                Some(k) if k == target => self.current(seq),
                _ => {
                    self.it.status()?;
                    Ok(None)
                }
            };
        }
        self.store.event(seq)
    }

    fn current(&self, seq: Seq) -> Result<Option<EventRecord>> {
        let v = self.it.value().unwrap_or_default();
        Ok(Some(EventRecord::decode(seq, v)?))
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

fn deleting_key(id: EndpointId) -> Vec<u8> {
    id_key(DELETING_PREFIX, id)
}

/// `<prefix><id>` in `endpoints`, the id big-endian ([`Store::by_id`] reads them).
fn id_key(prefix: &str, id: EndpointId) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
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
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(n as usize)
    }
    /// A string's bytes: `Some(None)` for an absent string, `None` when truncated.
    fn str_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Some(None);
        }
        self.take(n as usize).map(Some)
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

    #[test]
    fn a_due_key_s_successor_orders_after_it_and_before_any_greater_key() {
        let k = DueKey {
            due_ms: 5,
            seq: 7,
            ep: u32::MAX,
        };
        assert!(k.successor() > k);
        let k = DueKey {
            due_ms: 5,
            seq: 7,
            ep: 3,
        };
        assert!(k.successor() > k);
        assert!(
            k.successor()
                < DueKey {
                    due_ms: 5,
                    seq: 7,
                    ep: 5,
                }
        );
    }

    #[test]
    fn an_endpoints_disabled_cause_is_stored_and_old_records_are_read_by_their_words() {
        let mut meta = EndpointMeta::default();
        assert_eq!(meta.disabled_by(), None);
        meta.disable_because(DisabledBy::Receiver, "410 Gone");
        assert_eq!(meta.disabled_reason.as_deref(), Some("410 Gone"));
        assert_eq!(meta.disabled_by(), Some(DisabledBy::Receiver));
        // A receiver's words that look like a fixed cause's are still the receiver's.
        meta.disable_because(DisabledBy::Receiver, LEGACY_IN_CONFIG);
        let json = serde_json::to_string(&meta).unwrap();
        assert!(json.contains(r#""disabled_by":"receiver""#), "{json}");
        let back: EndpointMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back.disabled_by(), Some(DisabledBy::Receiver));
        meta.disable_because(DisabledBy::NotCompiling, "body: 1:2: unknown data point");
        assert_eq!(
            meta.disabled_reason.as_deref(),
            Some("its stored definition no longer compiles: body: 1:2: unknown data point")
        );
        meta.enable();
        assert_eq!(
            (meta.disabled_reason.as_deref(), meta.disabled_by()),
            (None, None)
        );
        let json = serde_json::to_string(&meta).unwrap();
        assert!(!json.contains("disabled_by"), "{json}");

        // Records written before the cause was stored: read from the words written then.
        let old = |reason: &str| {
            let json = serde_json::json!({ "id": 3, "disabled_reason": reason });
            serde_json::from_value::<EndpointMeta>(json)
                .unwrap()
                .disabled_by()
        };
        assert_eq!(old("disabled in the config file"), Some(DisabledBy::Config));
        assert_eq!(
            old("disabled by its definition (enabled = false)"),
            Some(DisabledBy::Definition)
        );
        assert_eq!(old("disabled over the admin API"), Some(DisabledBy::Admin));
        assert_eq!(
            old("its stored definition no longer compiles: x"),
            Some(DisabledBy::NotCompiling)
        );
        assert_eq!(old("5 consecutive 5xx"), Some(DisabledBy::Receiver));
        for by in [
            DisabledBy::Config,
            DisabledBy::Definition,
            DisabledBy::Admin,
        ] {
            let mut m = EndpointMeta::default();
            m.disable(by);
            assert_eq!(old(m.disabled_reason.as_deref().unwrap()), Some(by));
        }
    }

    fn ev(seq: Seq) -> EventRecord {
        EventRecord::new(
            seq,
            Some(&format!("id-{seq}")),
            "action_inquiry",
            None,
            1_700_000_000_000,
            &[1, 7],
            br#"{"a":1.50}"#,
        )
    }

    #[test]
    fn event_record_round_trip() {
        let e = ev(42);
        let back = EventRecord::decode(42, e.encoded()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.ext_id(), Some("id-42"));
        assert_eq!(back.etype(), "action_inquiry");
        assert_eq!(back.account(), None);
        assert_eq!(back.time_ms(), 1_700_000_000_000);
        assert_eq!(back.routes().collect::<Vec<_>>(), [1, 7]);
        assert_eq!(back.data(), br#"{"a":1.50}"#);
        assert_eq!(back.data_bytes(), Bytes::from_static(br#"{"a":1.50}"#));
        assert_eq!(back.display_id(), "id-42");
        // Cut anywhere inside the fields before `data`: refused, never read past the end.
        let head = e.encoded().len() - e.data().len();
        for cut in 0..head {
            assert!(
                EventRecord::decode(42, &e.encoded()[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut bad = e.encoded().to_vec();
        bad[EVENT_HEAD + 4] = 0xff; // the type's first byte: not UTF-8
        assert!(EventRecord::decode(42, &bad).is_err());
        bad[0] = 2;
        assert!(EventRecord::decode(42, &bad).is_err());
    }

    #[test]
    fn an_event_gains_a_route_and_keeps_the_rest() {
        let e = EventRecord::new(9, None, "t", Some("acct"), 5, &[], b"[]");
        assert_eq!(e.display_id(), generated_id(9));
        assert!(!e.has_route(4));
        let e2 = e.with_route(4).with_route(6);
        assert_eq!(e2.routes().collect::<Vec<_>>(), [4, 6]);
        assert!(e2.has_route(6));
        assert_eq!(
            (
                e2.seq,
                e2.ext_id(),
                e2.etype(),
                e2.account(),
                e2.time_ms(),
                e2.data()
            ),
            (9, None, "t", Some("acct"), 5, &b"[]"[..])
        );
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
            request: RequestLog {
                signed: true,
                content_type: Some("application/json"),
                body_len: 12,
                body_is_data: false,
                body_excerpt: b"{\"a\": true}".to_vec(),
                headers: vec![("X-Partner".into(), "555".into())],
            },
        };
        let mut buf = Vec::new();
        a.encode(&mut buf);
        assert_eq!(AttemptRecord::decode(&buf).unwrap(), a);
    }

    /// An option as RocksDB recorded it in the newest OPTIONS file of `dir`.
    fn recorded_option(dir: &Path, name: &str) -> String {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().into_string().unwrap()))
            .filter(|n| n.starts_with("OPTIONS-"))
            .max_by_key(|n| n[8..].parse::<u64>().unwrap_or(0))
            .expect("an OPTIONS file");
        let text = std::fs::read_to_string(dir.join(newest)).unwrap();
        let prefix = format!("{name}=");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&prefix))
            .expect("option recorded");
        line.trim().trim_start_matches(&prefix).to_string()
    }

    #[test]
    fn a_scrub_takes_what_retention_deleted_off_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let marker = b"scrub-marker-9f3c";
        let mut b = s.batch();
        for seq in 1000..1100u64 {
            let data = format!(
                r#"{{"m":"{}-{seq}"}}"#,
                std::str::from_utf8(marker).unwrap()
            );
            let e = EventRecord::new(seq, None, "a", None, 0, &[1], data.as_bytes());
            b.put_event(&s, &e);
            b.put_attempt(
                &s,
                seq,
                1,
                1,
                &AttemptRecord {
                    state_after: Some(DeliveryState::Delivered),
                    response_excerpt: marker.to_vec(),
                    ..AttemptRecord::default()
                },
            );
        }
        s.commit(b, true).unwrap();
        let on_disk = || -> usize {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
                .map(|bytes| bytes.windows(marker.len()).filter(|w| *w == marker).count())
                .sum()
        };
        // Retention deletes them: gone for reads, still in the WAL.
        s.set_retention_floor(1100);
        let mut b = s.batch();
        b.delete_before(&s, 1100);
        s.commit(b, true).unwrap();
        assert!(s.event(1050).unwrap().is_none());
        assert!(on_disk() > 0);
        let written = s.last_write();
        s.scrub_below(1100).unwrap();
        assert_eq!(on_disk(), 0);
        // A scrub writes nothing: an idle store stays idle.
        assert_eq!(s.last_write(), written);
    }

    #[test]
    fn a_limited_store_keeps_at_most_its_share_of_table_files_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_limited(dir.path(), Some(40)).unwrap());
        assert_eq!(recorded_option(dir.path(), "max_open_files"), "40");
        assert_eq!(recorded_option(dir.path(), "table_cache_numshardbits"), "1");
        assert_eq!(
            [32, 416, 2_404, 8_096].map(table_cache_shard_bits),
            [1, 4, 6, 6]
        );
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(recorded_option(dir.path(), "max_open_files"), "-1");
    }

    #[test]
    fn rocksdb_s_own_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(recorded_option(dir.path(), "max_log_file_size"), "8388608");
        assert_eq!(recorded_option(dir.path(), "keep_log_file_num"), "4");
    }

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
    fn memory_counts_memtables_until_a_flush_then_the_table_readers_and_read_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let before = s.memory();
        let mut b = s.batch();
        for seq in 0..2_000 {
            b.put_event(&s, &ev(seq));
        }
        s.commit(b, false).unwrap();
        let written = s.memory();
        assert!(
            written.memtables >= before.memtables + 2_000 * 40,
            "{before:?} then {written:?}"
        );
        assert_eq!(written.table_readers, 0, "no table file yet: {written:?}");
        s.flush().unwrap();
        let flushed = s.memory();
        assert!(
            flushed.memtables < written.memtables,
            "{written:?} then {flushed:?}"
        );
        assert!(flushed.table_readers > 0, "{flushed:?}");
        // A read from a table file goes through the block cache.
        assert!(s.event(1_000).unwrap().is_some());
        assert!(s.memory().block_cache > 0, "{:?}", s.memory());
    }

    #[test]
    fn idem_lookups_in_bulk_answer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.batch();
        b.put_event(&s, &ev(7));
        s.commit(b, false).unwrap();
        s.flush().unwrap(); // one id in a file, one in the memtable
        let mut b = s.batch();
        b.put_event(&s, &ev(9));
        s.commit(b, false).unwrap();
        let got: Vec<Option<Seq>> = s
            .idem_get_many(&[b"id-9", b"nope", b"id-7", b"id-9"])
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, [Some(9), None, Some(7), Some(9)]);
        assert!(s.idem_get_many(&[]).is_empty());
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
                DueVal::NEW,
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

    #[test]
    fn event_reader_answers_like_point_reads_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut on_disk = s.batch();
        let ms_end = seq_floor(6) - 3..seq_floor(6) + 3;
        for seq in [10, 11, 12, 14]
            .into_iter()
            .chain(20..60)
            .chain(ms_end.clone())
        {
            on_disk.put_event(&s, &ev(seq));
        }
        s.commit(on_disk, false).unwrap();
        s.flush().unwrap();
        // Some in a table file, some still in the memtable.
        let mut recent = s.batch();
        for seq in [60, 61, 100, 200] {
            recent.put_event(&s, &ev(seq));
        }
        s.commit(recent, false).unwrap();
        let wanted = [
            10, 11, 11, 13, 14, 12, 40, 41, 59, 60, 61, 62, 99, 100, 300, 5, 200, 55, 56,
        ];
        let mut r = s.event_reader();
        for seq in wanted.into_iter().chain(ms_end) {
            let got = r.get(seq).unwrap();
            assert_eq!(got, s.event(seq).unwrap(), "seq {seq}");
            assert_eq!(got.is_some(), ![13, 62, 99, 300, 5].contains(&seq));
        }
        s.set_retention_floor(30);
        let mut r = s.event_reader();
        assert_eq!(r.get(20).unwrap(), None);
        assert_eq!(r.get(30).unwrap(), Some(ev(30)));
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

    #[test]
    fn posting_groups_round_trip_and_refuse_corrupt_values() {
        for seqs in [
            vec![5],
            vec![1, 2, 3],
            vec![7, 200, 70_000, 70_001, u64::MAX - 1, u64::MAX],
        ] {
            let mut v = Vec::new();
            encode_group(&seqs, &mut v);
            let mut out = Vec::new();
            decode_group(*seqs.last().unwrap(), &v, &mut out).unwrap();
            let mut want = seqs.clone();
            want.reverse();
            assert_eq!(out, want);
        }
        let mut out = Vec::new();
        // A gap of 0 (a repeated member), a gap below zero, a truncated varint.
        assert!(decode_group(10, &[0], &mut out).is_err());
        assert!(decode_group(10, &[11], &mut out).is_err());
        assert!(decode_group(10, &[0x81], &mut out).is_err());
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
    fn a_record_holds_the_most_routes_there_may_be() {
        let routes: Vec<EndpointId> = (1..=MAX_ROUTES as u32).collect();
        let e = EventRecord::new(7, None, "t", None, 0, &routes, b"{\"k\":1}");
        let back = EventRecord::decode(7, e.encoded()).unwrap();
        assert_eq!(back.routes().len(), MAX_ROUTES);
        assert_eq!(back.routes().last(), Some(MAX_ROUTES as u32));
        assert_eq!(back.data(), b"{\"k\":1}");
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

    #[test]
    fn endpoint_configs_and_names_persist() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let cfg: EndpointConfig =
            toml::from_str("name = \"p\"\nevents = [\"t\"]\nurl = \"http://h/\"\n").unwrap();
        let mut b = s.batch();
        let meta = EndpointMeta {
            id: 7,
            source: EndpointSource::Api,
            ..EndpointMeta::default()
        };
        b.put_endpoint(&s, "p", &meta);
        b.put_endpoint_config(&s, 7, "p", &cfg);
        s.commit(b, true).unwrap();
        let all = s.stored_endpoints().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].meta, meta);
        assert_eq!(all[0].config.as_ref().unwrap().url, "http://h/");
        let mut b = s.batch();
        b.delete_endpoint(&s, "p", 7);
        s.commit(b, true).unwrap();
        assert!(s.stored_endpoints().unwrap().is_empty());
        assert_eq!(s.endpoint_names().unwrap()[&7], "p");
    }
}
