//! The admin HTTP API (SPEC §7): `GET /health` and the webhook log's
//! `GET /v1/events/{id}`.
//!
//! Runs on its own threads with blocking sockets and reads the store directly, so it
//! never slows a worker. Binds loopback by default; with `admin_token` every `/v1` call
//! needs `Authorization: Bearer <token>` (compared in constant time). Request bodies are
//! capped. It must not write the store: changes go through the committer.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::commit::CommitMsg;
use crate::shard::MailboxSender;
use crate::store::{seq_time_ms, DeliveryState, Store};

const MAX_HEAD: usize = 16 * 1024;

struct Admin {
    store: Store,
    token: Option<String>,
    commit: MailboxSender<CommitMsg>,
}

/// Binds `addr` and serves the API in the background; returns the bound address.
pub fn start(
    addr: SocketAddr,
    store: Store,
    token: Option<String>,
    commit: MailboxSender<CommitMsg>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let admin = Arc::new(Admin {
        store,
        token,
        commit,
    });
    std::thread::Builder::new()
        .name("ricochet-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let admin = admin.clone();
                let _ = std::thread::Builder::new()
                    .name("ricochet-admin-conn".into())
                    .spawn(move || admin.serve(conn));
            }
        })?;
    Ok(local)
}

struct Response {
    status: u16,
    body: Value,
}

fn error(status: u16, msg: impl Into<String>) -> Response {
    Response {
        status,
        body: json!({ "error": msg.into() }),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    }
}

impl Admin {
    fn serve(&self, mut conn: TcpStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = Vec::with_capacity(4096);
        loop {
            // Read one request head.
            let mut chunk = [0u8; 4096];
            let head_len = loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => break Some(n),
                    Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                    _ => break None,
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_len) = head_len else {
                let _ = write_response(&mut conn, &error(400, "malformed request"), false);
                return;
            };
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let _ = req.parse(&buf);
            let method = req.method.unwrap_or("").to_string();
            let path = req.path.unwrap_or("/").to_string();
            let mut content_length = 0usize;
            let mut auth = None;
            let mut close = req.version == Some(0);
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    content_length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                } else if h.name.eq_ignore_ascii_case("authorization") {
                    auth = Some(String::from_utf8_lossy(h.value).into_owned());
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                }
            }
            if content_length > 1 << 20 {
                let _ = write_response(&mut conn, &error(413, "request body over 1 MiB"), false);
                return;
            }
            // Skip the body (no call here takes one yet).
            let mut have = buf.len() - head_len;
            while have < content_length {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have += n,
                }
            }
            buf.clear();
            let resp = self.route(&method, &path, auth.as_deref());
            if write_response(&mut conn, &resp, !close).is_err() || close {
                return;
            }
        }
    }

    fn route(&self, method: &str, path: &str, auth: Option<&str>) -> Response {
        let path = path.split('?').next().unwrap_or("/");
        if path == "/health" {
            return Response {
                status: 200,
                body: json!({ "status": "ok" }),
            };
        }
        if path.starts_with("/v1/") {
            if let Some(token) = &self.token {
                let given = auth.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
                if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    return error(401, "missing or wrong bearer token");
                }
            }
        }
        if let Some(rest) = path.strip_prefix("/v1/endpoints/") {
            return self.endpoint_call(method, rest);
        }
        if let Some(id) = path.strip_prefix("/v1/events/") {
            if method != "GET" {
                return error(405, "method not allowed");
            }
            let id = percent_decode(id);
            return match self.event(&id) {
                Ok(Some(v)) => Response {
                    status: 200,
                    body: v,
                },
                Ok(None) => error(404, format!("no event {id:?}")),
                Err(e) => error(500, e.to_string()),
            };
        }
        error(404, "no such resource")
    }

    /// `GET /v1/endpoints/{name}`, `POST /v1/endpoints/{name}/enable|disable`.
    fn endpoint_call(&self, method: &str, rest: &str) -> Response {
        let (name, action) = match rest.split_once('/') {
            Some((n, a)) => (percent_decode(n), Some(a)),
            None => (percent_decode(rest), None),
        };
        let meta = match self.store.endpoints() {
            Ok(all) => all.into_iter().find(|(n, _)| *n == name).map(|(_, m)| m),
            Err(e) => return error(500, e.to_string()),
        };
        let Some(meta) = meta else {
            return error(404, format!("no endpoint {name:?}"));
        };
        match (method, action) {
            ("GET", None) => Response {
                status: 200,
                body: json!({
                    "name": name,
                    "enabled": meta.disabled_reason.is_none(),
                    "disabled_reason": meta.disabled_reason,
                    "consecutive_failures": {
                        "3xx": meta.fails[0], "4xx": meta.fails[1], "5xx": meta.fails[2]
                    },
                }),
            },
            ("POST", Some("enable")) => {
                self.commit.send(CommitMsg::EnableEndpoint { ep: meta.id });
                Response {
                    status: 200,
                    body: json!({ "name": name, "enabled": true }),
                }
            }
            ("POST", Some("disable")) => {
                self.commit.send(CommitMsg::EndpointDisabled {
                    ep: meta.id,
                    reason: "disabled over the admin API".into(),
                });
                Response {
                    status: 200,
                    body: json!({ "name": name, "enabled": false }),
                }
            }
            _ => error(405, "method not allowed"),
        }
    }

    fn event(&self, id: &str) -> Result<Option<Value>, crate::store::StoreError> {
        let Some(ev) = self.store.event_by_id(id)? else {
            return Ok(None);
        };
        let eps: HashMap<u32, (String, bool)> = self
            .store
            .endpoints()?
            .into_iter()
            .map(|(n, m)| (m.id, (n, m.disabled_reason.is_some())))
            .collect();
        let attempts = self.store.attempts(ev.seq)?;
        let mut deliveries = Vec::new();
        for ep in &ev.routes {
            let mine: Vec<_> = attempts.iter().filter(|(e, _, _)| e == ep).collect();
            let mut state = mine
                .last()
                .and_then(|(_, _, a)| a.state_after)
                .unwrap_or(DeliveryState::Pending);
            let disabled = eps.get(ep).is_some_and(|(_, d)| *d);
            // A pending or retrying delivery of a disabled endpoint gets no attempt: it
            // is paused (it moves to the paused set when its due time comes).
            if self.store.is_paused(*ep, ev.seq)?
                || (disabled && matches!(state, DeliveryState::Pending | DeliveryState::Retrying))
            {
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
                "endpoint": eps.get(ep).map(|(n, _)| n.clone()).unwrap_or_else(|| format!("#{ep}")),
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

fn write_response(conn: &mut TcpStream, r: &Response, keep_alive: bool) -> std::io::Result<()> {
    let body = serde_json::to_vec(&r.body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        r.status,
        reason(r.status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body)
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(percent_decode("%é%"), "%é%");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
