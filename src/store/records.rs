//! The typed values of the event log, the attempt log and the delivery queue: an
//! [`EventRecord`] (held in memory as its stored bytes), an [`AttemptRecord`] with the
//! [`RequestLog`] it keeps, a pending delivery's [`DueVal`] and the [`DeliveryState`]s,
//! with their byte layouts and the little writers and reader those layouts use.
//!
//! Owns the value encodings and their version checks; must not touch RocksDB nor know
//! the keys the values go under (`keys`).

use bytes::Bytes;

use super::{generated_id, EndpointId, Result, Seq, StoreError, CF_ATTEMPTS, CF_EVENTS};
use serde::Serialize;

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
    pub(super) fn from_u8(b: u8) -> Option<Self> {
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
pub(super) const ATTEMPT_STATE_AT: usize = 1 + 8 + 4 + 2 + 1;

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

    pub(super) fn encode(self) -> [u8; 4] {
        let mut v = [0u8; 4];
        v[..2].copy_from_slice(&self.attempts.to_le_bytes());
        v[2..].copy_from_slice(&self.first.to_le_bytes());
        v
    }

    pub(super) fn decode(v: &[u8]) -> DueVal {
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
    use crate::store::tests::ev;

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

    #[test]
    fn a_record_holds_the_most_routes_there_may_be() {
        let routes: Vec<EndpointId> = (1..=MAX_ROUTES as u32).collect();
        let e = EventRecord::new(7, None, "t", None, 0, &routes, b"{\"k\":1}");
        let back = EventRecord::decode(7, e.encoded()).unwrap();
        assert_eq!(back.routes().len(), MAX_ROUTES);
        assert_eq!(back.routes().last(), Some(MAX_ROUTES as u32));
        assert_eq!(back.data(), b"{\"k\":1}");
    }
}
