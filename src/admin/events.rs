//! `/v1/events…`: HTTP ingest (`POST /v1/events`), the webhook log (`GET /v1/events`
//! with filters and a cursor, `GET /v1/events/{id}`) and replay.
//!
//! Ingest parses the body with the socket's own [`LineParser`] and sends it to the
//! committer as a one-event batch, so validation, idempotency and durability are the
//! socket's; the answer comes back over a channel once the event is durable. The log is
//! read from the store's indexes ([`Store::query`](crate::store::Store::query)); a
//! replay is a committer message.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{await_reply, error, json_response, rfc3339, Admin, Params, Response};
use crate::commit::{AckResult, AckTo, CommitMsg, IngestBatch, ReplayResult};
use crate::config::Format;
use crate::deliver::request::{is_secret_header, redact_form, redact_query, REDACTED, USER_AGENT};
use crate::ingest::parse::LineParser;
use crate::ingest::BOM;
use crate::store::{
    seq_time_ms, AttemptRecord, DeliveryState, DeliveryView, EndpointId, EventQuery, EventRecord,
    EventView, StoreError, BODY_EXCERPT,
};

/// Page size of `GET /v1/events` unless `limit` says otherwise, and its maximum.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// Index entries one `GET /v1/events` examines at most (a page may come back short,
/// with a cursor).
const SCAN_BUDGET: usize = 20_000;

/// Routes past which an event's page is built one at a time ([`Admin::get_event`]).
const MANY_ROUTES: usize = 1_000;

/// How long `POST /v1/events` waits for the committer before answering 503.
const ACK_WAIT: Duration = Duration::from_secs(10);

impl Admin {
    /// `POST /v1/events`: 202 accepted, 200 duplicate, 400 invalid, 413 too large, 503
    /// unavailable.
    pub(super) fn ingest(&self, body: &[u8]) -> Response {
        // A byte-order mark before the JSON is skipped, as the socket skips one before
        // its first line (RFC 8259 §8.1 lets a parser ignore it).
        let body = body.strip_prefix(BOM).unwrap_or(body).trim_ascii();
        if body.len() > self.max_line_bytes {
            self.counts.too_large.fetch_add(1, Ordering::Relaxed);
            return error(
                413,
                format!("event exceeds max_line_bytes ({})", self.max_line_bytes),
            );
        }
        if body.is_empty() {
            self.counts.invalid.fetch_add(1, Ordering::Relaxed);
            return error(400, "empty body: send one event as a JSON object");
        }
        let ev = match LineParser::for_ingest(self.retention).parse(body) {
            Ok(ev) => ev,
            Err(e) => {
                self.counts.invalid.fetch_add(1, Ordering::Relaxed);
                return error(400, e.0);
            }
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = self.commit.send(CommitMsg::Ingest(IngestBatch {
            to: AckTo::Channel(tx),
            events: vec![ev],
            sent_at: Instant::now(),
        }));
        if !sent {
            self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
            return error(503, "server is shutting down");
        }
        match rx.recv_timeout(ACK_WAIT).map(|mut r| r.pop()) {
            Ok(Some(AckResult::Ok { id, deliveries })) => {
                json_response(202, &json!({ "id": id, "deliveries": deliveries }))
            }
            Ok(Some(AckResult::Dup { id })) => {
                json_response(200, &json!({ "id": id, "duplicate": true }))
            }
            Ok(Some(AckResult::Unavailable(msg))) => error(503, msg),
            Ok(None) | Err(_) => {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                error(
                    503,
                    "no answer from the committer in time; the event may or may not be accepted: retry with the same id",
                )
            }
        }
    }

    /// `GET /v1/events/{id}`.
    ///
    /// Each attempt is made a JSON value only as it is written: an event routed to
    /// 10,000 endpoints with four attempts each (a 27 MB answer) took 190–240 MB while
    /// the whole answer was built as values first, and 16 such calls at once 3.1 GB.
    /// Such events' answers are also built one at a time (a lock of their own: a list
    /// does not wait behind them).
    pub(super) fn get_event(&self, id: &str) -> Response {
        let ev = match self.store.event_by_id(id) {
            Ok(Some(ev)) => ev,
            Ok(None) => return error(404, format!("no event {id:?}")),
            Err(e) => return error(500, e.to_string()),
        };
        let _one = (ev.routes().len() > MANY_ROUTES).then(super::one_big_event_at_a_time);
        let (names, view) = match self
            .store
            .endpoint_names()
            .and_then(|n| Ok((n, self.store.event_view(&ev)?)))
        {
            Ok(x) => x,
            Err(e) => return error(500, e.to_string()),
        };
        // `data` exactly as received: through a `Value`, a number beyond what an f64
        // holds would come out changed. Between the event's fields and its
        // deliveries, as the page is read.
        #[derive(serde::Serialize)]
        struct Page<'a> {
            #[serde(flatten)]
            head: Value,
            data: Option<&'a RawValue>,
            deliveries: Deliveries<'a>,
        }
        let display_id = ev.display_id();
        let page = Page {
            head: head(&ev),
            data: serde_json::from_slice::<&RawValue>(ev.data()).ok(),
            deliveries: Deliveries {
                view: &view,
                names: &names,
                event_id: &display_id,
                data: ev.data(),
            },
        };
        json_response(200, &page)
    }

    /// `GET /v1/events?type=&endpoint=&account=&status=&since=&until=&limit=&cursor=`.
    pub(super) fn list_events(&self, p: &Params) -> Response {
        if let Err(r) = p.only(&[
            "type", "account", "endpoint", "status", "since", "until", "limit", "cursor", "next",
        ]) {
            return r;
        }
        let limit = match p.get("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return error(400, format!("limit must be 1..={MAX_LIMIT}, not {l:?}")),
            },
        };
        let state = match p.get("status") {
            None => None,
            Some(s) => match DeliveryState::parse(s) {
                Some(st) => Some(st),
                None => {
                    return error(
                        400,
                        format!(
                            "status {s:?} is not a delivery state (pending, retrying, delivered, failed, paused, expired)"
                        ),
                    )
                }
            },
        };
        // A type ingest would refuse (`Action_Inquiry`) matches no event: a 400 says so,
        // where an empty log would read as "nothing arrived".
        if let Some(t) = p
            .get("type")
            .filter(|t| !crate::config::valid_event_type(t))
        {
            return error(
                400,
                format!("type {t:?} is not an event type ([a-z0-9_.-]{{1,64}}): no event has it"),
            );
        }
        let ep = match p.get("endpoint") {
            None => None,
            Some(name) => match self.endpoint_id(name) {
                Ok(Some(id)) => Some(id),
                Ok(None) => return error(404, format!("no endpoint {name:?}")),
                Err(e) => return error(500, e.to_string()),
            },
        };
        if p.get("cursor").is_some() && p.get("next").is_some() {
            return error(400, "give the cursor as `cursor` or as `next`, not both");
        }
        let before = match p.get("cursor").or_else(|| p.get("next")) {
            None => None,
            Some(c) => match decode_cursor(c) {
                Some(seq) => Some(seq),
                None => return error(400, format!("cursor {c:?} is not one this API gave")),
            },
        };
        let (since_ms, until_ms) = match p.window() {
            Ok(w) => w,
            Err(r) => return r,
        };
        let q = EventQuery {
            etype: p.get("type").map(str::to_string),
            account: p.get("account").map(str::to_string),
            ep,
            state,
            since_ms,
            until_ms,
            before,
            limit,
            budget: SCAN_BUDGET,
        };
        let _one = super::one_list_at_a_time();
        let page = match self.store.query(&q) {
            Ok(p) => p,
            Err(e) => return error(500, e.to_string()),
        };
        let names = match self.store.endpoint_names() {
            Ok(n) => n,
            Err(e) => return error(500, e.to_string()),
        };
        let events: Vec<Value> = page
            .events
            .iter()
            .map(|(ev, views)| summary(ev, views, &names))
            .collect();
        json_response(
            200,
            &json!({ "events": events, "next": page.next.map(encode_cursor) }),
        )
    }

    /// An endpoint's id by name: a running one, else one the log still remembers.
    fn endpoint_id(&self, name: &str) -> Result<Option<EndpointId>, StoreError> {
        if let Some(spec) = self.registry.read().ok().and_then(|r| r.get(name).cloned()) {
            return Ok(Some(spec.id));
        }
        Ok(self
            .store
            .endpoint_names()?
            .into_iter()
            .filter(|(_, n)| n == name)
            .map(|(id, _)| id)
            .max())
    }

    /// `POST /v1/events/{id}/replay[?endpoint=NAME]`.
    pub(super) fn replay(&self, id: &str, p: &Params) -> Response {
        if let Err(r) = p.only_with_values(&["endpoint"]) {
            return r;
        }
        let ev = match self.store.event_by_id(id) {
            Ok(Some(ev)) => ev,
            Ok(None) => return error(404, format!("no event {id:?}")),
            Err(e) => return error(500, e.to_string()),
        };
        let only = match p.get("endpoint") {
            None => None,
            Some(name) => match self.registry.read().ok().and_then(|r| r.get(name).cloned()) {
                Some(spec) => Some(spec.id),
                None => return error(404, format!("no endpoint {name:?}")),
            },
        };
        if only.is_none() && ev.routes().next().is_none() {
            // Nothing is pending or paused: the event has no delivery to replay.
            return error(
                409,
                "nothing to replay: the event was routed to no endpoint (name one with ?endpoint=NAME)",
            );
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.commit.send(CommitMsg::Replay {
            targets: vec![(ev.seq, only)],
            reply: tx,
        }) {
            return error(503, "server is shutting down");
        }
        let result = match await_reply(rx) {
            Ok(mut r) => r.pop(),
            Err(r) => return r,
        };
        let names = self.store.endpoint_names().unwrap_or_default();
        match result {
            Some(ReplayResult::Scheduled(eps)) => {
                let scheduled: Vec<String> = eps.iter().map(|ep| name_of(&names, *ep)).collect();
                json_response(202, &json!({ "id": id, "scheduled": scheduled }))
            }
            Some(ReplayResult::NoEvent) => error(404, format!("no event {id:?}")),
            Some(ReplayResult::Busy) => error(
                409,
                "nothing to replay: the deliveries are pending, paused, an ordered endpoint's retrying head, or retrying within the second (or their endpoints are gone)",
            ),
            Some(ReplayResult::Failed(msg)) => error(503, msg),
            None => error(500, "no answer for the replay"),
        }
    }
}

fn name_of(names: &std::collections::HashMap<EndpointId, String>, ep: EndpointId) -> String {
    names.get(&ep).cloned().unwrap_or_else(|| format!("#{ep}"))
}

/// An event's deliveries with their attempts, for its page, each attempt made a value
/// only as it is written ([`Admin::get_event`]).
struct Deliveries<'a> {
    view: &'a EventView,
    names: &'a std::collections::HashMap<EndpointId, String>,
    event_id: &'a str,
    data: &'a [u8],
}

impl serde::Serialize for Deliveries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        /// One delivery, its members in the order the log's pages give them.
        #[derive(serde::Serialize)]
        struct Delivery<'a> {
            endpoint: String,
            state: &'static str,
            attempts: Attempts<'a>,
        }
        struct Attempts<'a> {
            list: &'a [(EndpointId, u16, AttemptRecord)],
            event_id: &'a str,
            data: &'a [u8],
        }
        impl serde::Serialize for Attempts<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.list.len()))?;
                for (_, n, a) in self.list {
                    seq.serialize_element(&attempt_json(self.event_id, *n, a, self.data))?;
                }
                seq.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.view.deliveries.len()))?;
        for v in &self.view.deliveries {
            seq.serialize_element(&Delivery {
                endpoint: name_of(self.names, v.ep),
                state: v.state.as_str(),
                attempts: Attempts {
                    list: self.view.attempts_of(v.ep),
                    event_id: self.event_id,
                    data: self.data,
                },
            })?;
        }
        seq.end()
    }
}

/// An event's own fields, as the log and its page show them.
fn head(ev: &EventRecord) -> Value {
    json!({
        "id": ev.display_id(),
        "type": ev.etype(),
        "account": ev.account(),
        "created": rfc3339(seq_time_ms(ev.seq)),
        "time": rfc3339(ev.time_ms()),
    })
}

/// An event as the log lists it: without data, each delivery with its state.
fn summary(
    ev: &EventRecord,
    views: &[DeliveryView],
    names: &std::collections::HashMap<EndpointId, String>,
) -> Value {
    let mut out = head(ev);
    out["deliveries"] = views
        .iter()
        .map(|v| {
            json!({
                "endpoint": name_of(names, v.ep),
                "state": v.state.as_str(),
                "attempts": v.attempts,
            })
        })
        .collect();
    out
}

/// Cursors are opaque to clients: `c` and the sequence number to continue below, in hex.
fn encode_cursor(seq: u64) -> String {
    format!("c{seq:x}")
}

/// The sequence number of a cursor [`encode_cursor`] wrote: hex digits only, as
/// [`parse_generated_id`](crate::store::parse_generated_id) reads an id
/// (`from_str_radix` also takes a leading `+`, so `c+1f` was taken as `c1f`).
fn decode_cursor(c: &str) -> Option<u64> {
    let hex = c.strip_prefix('c')?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// One attempt as the log shows it, with the request it sent rebuilt from the record:
/// the standard headers from the event id and the attempt time, the endpoint's headers as
/// kept (secrets redacted), the body excerpt (or the event's data, when that was the body).
pub(super) fn attempt_json(event_id: &str, n: u16, a: &AttemptRecord, data: &[u8]) -> Value {
    let (method, url) = a.request_line.split_once(' ').unwrap_or(("", ""));
    let mut headers = serde_json::Map::new();
    if !url.is_empty() {
        // As sent: without a default port, and the rest in the order of the wire.
        let host = match crate::deliver::http1::parse_url(url.as_bytes()) {
            Ok(t) => t.host_header,
            Err(_) => url
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(rest))
                .unwrap_or("")
                .to_string(),
        };
        headers.insert("Host".into(), json!(host));
        headers.insert("User-Agent".into(), json!(USER_AGENT));
        if let Some(ct) = a.request.content_type {
            headers.insert("Content-Type".into(), json!(ct));
        }
        headers.insert("webhook-id".into(), json!(event_id));
        headers.insert(
            "webhook-timestamp".into(),
            json!((a.at_ms / 1000).to_string()),
        );
        if a.request.signed {
            headers.insert("webhook-signature".into(), json!(REDACTED));
        }
        // Redacted again as they are read: a record written before a header's name
        // counted as a secret keeps its value.
        for (k, v) in &a.request.headers {
            let v = if is_secret_header(k) {
                REDACTED
            } else {
                v.as_str()
            };
            headers.insert(k.clone(), json!(v));
        }
        if a.request.content_type.is_some() {
            headers.insert(
                "Content-Length".into(),
                json!(a.request.body_len.to_string()),
            );
        }
    }
    let body: &[u8] = if a.request.body_is_data {
        &data[..data.len().min(BODY_EXCERPT)]
    } else {
        &a.request.body_excerpt
    };
    let body = String::from_utf8_lossy(body);
    // A form body is a query: its credential-named fields are redacted as the URL's
    // (written so since; again here for records written before).
    let body = match a.request.content_type {
        Some(ct) if ct == Format::Form.content_type() => redact_form(&body).into(),
        _ => body,
    };
    json!({
        "n": n,
        "at": rfc3339(a.at_ms),
        "status_code": (a.status != 0).then_some(a.status),
        "timed_out": a.timed_out,
        "latency_ms": a.latency_us as f64 / 1000.0,
        "error": (!a.error.is_empty()).then_some(&a.error),
        "response_excerpt": String::from_utf8_lossy(&a.response_excerpt),
        "state_after": a.state_after.map(DeliveryState::as_str),
        "next_attempt_at": (a.next_due_ms != 0).then(|| rfc3339(a.next_due_ms)),
        "request": {
            "method": method,
            "url": redact_query(url),
            "headers": headers,
            "body": body,
            "body_length": a.request.body_len,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_read_back_as_written_and_nothing_else() {
        for seq in [0, 1, 0x0006_8949_3fd1_9802, u64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(seq)), Some(seq));
        }
        for forged in [
            "c+1f",
            "c-1",
            "c",
            "c 1",
            "c1_0",
            "1f",
            "c1ffffffffffffffff",
        ] {
            assert_eq!(decode_cursor(forged), None, "{forged}");
        }
    }

    #[test]
    fn an_attempt_s_host_is_the_one_sent() {
        for (url, host) in [
            ("http://h:80/pb?x=1", "h"),
            ("https://H.example:443/pb", "h.example"),
            ("http://h:8080?x=1", "h:8080"),
            ("http://[::1]:9/p", "[::1]:9"),
        ] {
            let a = AttemptRecord {
                request_line: format!("GET {url}").into(),
                ..AttemptRecord::default()
            };
            let v = attempt_json("e", 1, &a, b"{}");
            assert_eq!(v["request"]["headers"]["Host"], host, "{url}");
        }
    }
}
