//! `/v1/events`: HTTP ingest (`POST /v1/events`) and the webhook log's
//! `GET /v1/events/{id}`.
//!
//! Ingest parses the body with the socket's own [`LineParser`] and sends it to the
//! committer as a one-event batch, so validation, idempotency and durability are the
//! socket's; the answer comes back over a channel once the event is durable.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{error, json_response, rfc3339, Admin, Response};
use crate::commit::{AckResult, AckTo, CommitMsg, IngestBatch};
use crate::ingest::parse::LineParser;
use crate::store::{seq_time_ms, DeliveryState, StoreError};

/// How long `POST /v1/events` waits for the committer before answering 503.
const ACK_WAIT: Duration = Duration::from_secs(10);

impl Admin {
    /// `POST /v1/events`: 202 accepted, 200 duplicate, 400 invalid, 413 too large, 503
    /// unavailable.
    pub(super) fn ingest(&self, body: &[u8]) -> Response {
        let body = body.trim_ascii();
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
        let ev = match LineParser::default().parse(body) {
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
    pub(super) fn get_event(&self, id: &str) -> Response {
        match self.event(id) {
            Ok(Some(v)) => json_response(200, &v),
            Ok(None) => error(404, format!("no event {id:?}")),
            Err(e) => error(500, e.to_string()),
        }
    }

    fn event(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let Some(ev) = self.store.event_by_id(id)? else {
            return Ok(None);
        };
        let names: HashMap<u32, String> = self
            .store
            .endpoints()?
            .into_iter()
            .map(|(n, m)| (m.id, n))
            .collect();
        let attempts = self.store.attempts(ev.seq)?;
        let mut deliveries = Vec::new();
        for ep in &ev.routes {
            let mine: Vec<_> = attempts.iter().filter(|(e, _, _)| e == ep).collect();
            let mut state = mine
                .last()
                .and_then(|(_, _, a)| a.state_after)
                .unwrap_or(DeliveryState::Pending);
            // Disabling moves every pending delivery to the paused set at once.
            if self.store.is_paused(*ep, ev.seq)? {
                state = DeliveryState::Paused;
            }
            let list: Vec<Value> = mine
                .iter()
                .map(|(_, n, a)| {
                    let (method, url) = a.request_line.split_once(' ').unwrap_or(("", ""));
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
                        "request": { "method": method, "url": url },
                    })
                })
                .collect();
            deliveries.push(json!({
                "endpoint": names.get(ep).cloned().unwrap_or_else(|| format!("#{ep}")),
                "state": state.as_str(),
                "attempts": list,
            }));
        }
        let data: Value = serde_json::from_slice(&ev.data).unwrap_or(Value::Null);
        Ok(Some(json!({
            "id": ev.display_id(),
            "type": ev.etype,
            "account": ev.account,
            "created": rfc3339(seq_time_ms(ev.seq)),
            "time": rfc3339(ev.time_ms),
            "data": data,
            "deliveries": deliveries,
        })))
    }
}
