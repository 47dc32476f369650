//! `/v1/endpoints…`: list, create, read, replace, delete, enable, disable, test and
//! recover.
//!
//! An endpoint reads as its config keys (the `[[endpoint]]` table as JSON, with
//! `signing_secret` and `Authorization` header values redacted) plus its live state from
//! the store (`enabled`, `disabled_reason`, `consecutive_failures`, `source`) and its
//! owning worker's counters since start. A create or replace body is the same keys as
//! JSON; it is compiled here (a bad field or template is a 400 naming it and its
//! position) and applied by the committer, which persists it and hands it to the
//! owning worker live.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::events::attempt_json;
use super::{
    await_reply, error, json_response, method_not_allowed, percent_decode, Admin, Params, Response,
};
use crate::commit::{CommitMsg, EndpointOpError, PutMode, ReplayResult};
use crate::config::EndpointConfig;
use crate::endpoint::EndpointSpec;
use crate::metrics::{AttemptResult, EndpointCounts};
use crate::shard::worker_for;
use crate::store::{seq_floor, DeliveryState, EndpointMeta, EventRecord};
use crate::worker::WorkerMsg;

pub use crate::deliver::request::REDACTED;
use crate::deliver::request::SECRET_HEADERS;

/// Failed deliveries scheduled per committer message by `recover`.
const RECOVER_PAGE: usize = 1000;

impl Admin {
    fn spec(&self, name: &str) -> Option<Arc<EndpointSpec>> {
        self.registry.read().ok()?.get(name).cloned()
    }

    fn meta(&self, name: &str) -> Result<Option<EndpointMeta>, Response> {
        match self.store.endpoints() {
            Ok(all) => Ok(all.into_iter().find(|(n, _)| n == name).map(|(_, m)| m)),
            Err(e) => Err(error(500, e.to_string())),
        }
    }

    /// `GET /v1/endpoints`: every running endpoint, by name.
    pub(super) fn list_endpoints(&self) -> Response {
        let metas = match self.store.endpoints() {
            Ok(m) => m,
            Err(e) => return error(500, e.to_string()),
        };
        let specs: Vec<Arc<EndpointSpec>> = match self.registry.read() {
            Ok(r) => r.values().cloned().collect(),
            Err(_) => return error(500, "endpoint registry unavailable"),
        };
        let scrape = self.collect(None, false);
        let list: Vec<Value> = specs
            .iter()
            .map(|spec| {
                let meta = metas
                    .iter()
                    .find(|(n, _)| *n == spec.cfg.name)
                    .map(|(_, m)| m);
                let counts = counts_of(&scrape.workers, &spec.cfg.name);
                describe(spec, meta, counts.as_ref())
            })
            .collect();
        json_response(200, &json!({ "endpoints": list }))
    }

    /// `POST /v1/endpoints`.
    pub(super) fn create_endpoint(&self, body: &[u8]) -> Response {
        match self.put(body, None, PutMode::Create) {
            Ok(name) => self.read_endpoint(&name, 201),
            Err(r) => r,
        }
    }

    /// Parses, compiles and applies an endpoint definition; returns its name.
    fn put(&self, body: &[u8], path_name: Option<&str>, mode: PutMode) -> Result<String, Response> {
        let mut v: Value =
            serde_json::from_slice(body).map_err(|e| error(400, format!("invalid JSON: {e}")))?;
        let Some(obj) = v.as_object_mut() else {
            return Err(error(
                400,
                "the body must be a JSON object of endpoint keys",
            ));
        };
        if let Some(path_name) = path_name {
            match obj.get("name") {
                None => {
                    obj.insert("name".into(), json!(path_name));
                }
                Some(n) if n.as_str() == Some(path_name) => {}
                Some(n) => {
                    return Err(error(
                        400,
                        format!("the body's name {n} differs from the path's {path_name:?}"),
                    ))
                }
            }
        }
        let cfg: EndpointConfig =
            serde_json::from_value(v).map_err(|e| error(400, format!("invalid endpoint: {e}")))?;
        let spec = EndpointSpec::compile_all(0, cfg).map_err(|errs| {
            let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            error(400, msgs.join("\n"))
        })?;
        let name = spec.cfg.name.clone();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = self.commit.send(CommitMsg::PutEndpoint {
            spec: Box::new(spec),
            mode,
            reply: tx,
        });
        if !sent {
            return Err(error(503, "server is shutting down"));
        }
        match await_reply(rx)? {
            Ok(_) => Ok(name),
            Err(e) => Err(op_error(e)),
        }
    }

    fn read_endpoint(&self, name: &str, status: u16) -> Response {
        let Some(spec) = self.spec(name) else {
            return error(404, format!("no endpoint {name:?}"));
        };
        let meta = match self.meta(name) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let worker = worker_for(name, self.workers.len());
        let scrape = self.collect(Some(worker), false);
        let counts = counts_of(&scrape.workers, name);
        json_response(status, &describe(&spec, meta.as_ref(), counts.as_ref()))
    }

    /// `/v1/endpoints/{name}` and `/v1/endpoints/{name}/{action}`.
    pub(super) fn endpoint_call(
        &self,
        method: &str,
        rest: &str,
        params: &Params,
        body: &[u8],
    ) -> Response {
        let (name, action) = match rest.split_once('/') {
            Some((n, a)) => (percent_decode(n), Some(a)),
            None => (percent_decode(rest), None),
        };
        match (method, action) {
            ("GET", None) => return self.read_endpoint(&name, 200),
            ("PUT", None) => {
                return match self.put(body, Some(&name), PutMode::Replace) {
                    Ok(name) => self.read_endpoint(&name, 200),
                    Err(r) => r,
                }
            }
            ("DELETE", None) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                if !self.commit.send(CommitMsg::DeleteEndpoint {
                    name: name.clone(),
                    reply: tx,
                }) {
                    return error(503, "server is shutting down");
                }
                return match await_reply(rx) {
                    Ok(Ok(_)) => json_response(200, &json!({ "name": name, "deleted": true })),
                    Ok(Err(e)) => op_error(e),
                    Err(r) => r,
                };
            }
            (_, None) => return method_not_allowed(),
            ("POST", Some("enable" | "disable" | "test" | "recover")) => {}
            (_, Some("enable" | "disable" | "test" | "recover")) => return method_not_allowed(),
            _ => return error(404, "no such resource"),
        }
        let Some(spec) = self.spec(&name) else {
            return error(404, format!("no endpoint {name:?}"));
        };
        match action {
            Some("enable") => {
                self.commit.send(CommitMsg::EnableEndpoint { ep: spec.id });
                json_response(200, &json!({ "name": name, "enabled": true }))
            }
            Some("disable") => {
                self.commit.send(CommitMsg::EndpointDisabled {
                    ep: spec.id,
                    reason: "disabled over the admin API".into(),
                });
                json_response(200, &json!({ "name": name, "enabled": false }))
            }
            Some("test") => self.test(&spec),
            _ => self.recover(&spec, params),
        }
    }

    /// `POST /v1/endpoints/{name}/test`: one attempt of a sample event of the endpoint's
    /// first type, made by its worker; not logged, not retried, not counted.
    fn test(&self, spec: &Arc<EndpointSpec>) -> Response {
        let etype = spec.cfg.events.first().cloned().unwrap_or_default();
        let sample = super::samples::sample(&etype);
        let now = crate::worker::now_ms();
        let seq = seq_floor(now);
        let event = Arc::new(EventRecord::new(
            seq,
            Some(&format!("test_{seq:016x}")),
            &sample.etype,
            spec.cfg.account.as_deref().or(sample.account.as_deref()),
            now,
            &[spec.id],
            &sample.data,
        ));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let worker = worker_for(&spec.cfg.name, self.workers.len());
        if !self.workers[worker].send(WorkerMsg::Test {
            spec: spec.clone(),
            event: event.clone(),
            reply: tx,
        }) {
            return error(503, "server is shutting down");
        }
        let Ok(attempt) = rx.recv_timeout(spec.cfg.timeout + Duration::from_secs(5)) else {
            return error(504, "the test attempt did not finish in time");
        };
        let id = event.display_id();
        json_response(
            200,
            &json!({
                "endpoint": spec.cfg.name,
                "event": {
                    "id": id,
                    "type": event.etype(),
                    "account": event.account(),
                    "data": serde_json::from_slice::<Value>(event.data()).unwrap_or(Value::Null),
                },
                "success": attempt.state_after == Some(DeliveryState::Delivered),
                "attempt": attempt_json(&id, 1, &attempt, event.data()),
            }),
        )
    }

    /// `POST /v1/endpoints/{name}/recover?since=&until=`: replays every failed delivery
    /// of the endpoint among events accepted in the window.
    fn recover(&self, spec: &EndpointSpec, params: &Params) -> Response {
        let since = match params.time_ms("since") {
            Ok(t) => t.map(seq_floor).unwrap_or(0),
            Err(r) => return r,
        };
        let until = match params.time_ms("until") {
            Ok(t) => t.map(seq_floor).unwrap_or(u64::MAX),
            Err(r) => return r,
        };
        let mut from = since;
        let mut scheduled = 0usize;
        loop {
            let page =
                match self
                    .store
                    .in_state(DeliveryState::Failed, spec.id, from, until, RECOVER_PAGE)
                {
                    Ok(p) => p,
                    Err(e) => return error(500, e.to_string()),
                };
            let Some(&last) = page.last() else {
                break;
            };
            let (tx, rx) = crossbeam_channel::bounded(1);
            let targets = page.iter().map(|&seq| (seq, Some(spec.id))).collect();
            if !self.commit.send(CommitMsg::Replay { targets, reply: tx }) {
                return error(503, "server is shutting down");
            }
            match await_reply(rx) {
                Ok(results) => {
                    scheduled += results
                        .iter()
                        .filter(|r| matches!(r, ReplayResult::Scheduled(_)))
                        .count()
                }
                Err(r) => return r,
            }
            if page.len() < RECOVER_PAGE {
                break;
            }
            from = last + 1;
        }
        json_response(
            202,
            &json!({ "endpoint": spec.cfg.name, "scheduled": scheduled }),
        )
    }
}

fn op_error(e: EndpointOpError) -> Response {
    match e {
        EndpointOpError::Exists(_) => error(409, e.to_string()),
        EndpointOpError::NotFound(_) => error(404, e.to_string()),
        EndpointOpError::Store(_) => error(503, e.to_string()),
    }
}

/// An endpoint's counters from whichever snapshot holds it.
fn counts_of(workers: &[crate::metrics::WorkerSnapshot], name: &str) -> Option<EndpointCounts> {
    workers
        .iter()
        .flat_map(|w| w.endpoints.iter())
        .find(|(n, _)| n == name)
        .map(|(_, c)| *c)
}

/// The endpoint as JSON: config keys (redacted) and live state.
fn describe(
    spec: &EndpointSpec,
    meta: Option<&EndpointMeta>,
    counts: Option<&EndpointCounts>,
) -> Value {
    let mut v = serde_json::to_value(&spec.cfg).unwrap_or_else(|_| json!({}));
    redact(&mut v);
    let default = EndpointMeta::default();
    let meta = meta.unwrap_or(&default);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("name".into(), json!(spec.cfg.name));
        obj.insert("source".into(), json!(meta.source.as_str()));
        obj.insert("enabled".into(), json!(meta.disabled_reason.is_none()));
        obj.insert("disabled_reason".into(), json!(meta.disabled_reason));
        obj.insert(
            "consecutive_failures".into(),
            json!({ "3xx": meta.fails[0], "4xx": meta.fails[1], "5xx": meta.fails[2] }),
        );
        obj.insert(
            "counters".into(),
            counts.map_or(Value::Null, |c| {
                let attempts: serde_json::Map<String, Value> = AttemptResult::ALL
                    .iter()
                    .map(|r| (r.label().to_string(), json!(c.attempts[*r as usize])))
                    .collect();
                json!({
                    "delivered": c.delivered,
                    "failed": c.failed,
                    "retrying": c.retrying,
                    "paused": c.paused,
                    "attempts": c.attempts_total(),
                    "attempts_by_result": attempts,
                })
            }),
        );
    }
    v
}

/// Replaces secrets in a serialized endpoint config: `signing_secret` and the values of
/// `Authorization`-like headers.
fn redact(v: &mut Value) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    if let Some(s) = obj.get_mut("signing_secret") {
        if !s.is_null() {
            *s = json!(REDACTED);
        }
    }
    if let Some(Value::Object(headers)) = obj.get_mut("headers") {
        for (k, val) in headers.iter_mut() {
            if SECRET_HEADERS.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                *val = json!(REDACTED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointConfig;

    #[test]
    fn describe_redacts_secrets_and_adds_state() {
        let cfg: EndpointConfig = toml::from_str(
            r#"
            name = "p"
            events = ["t"]
            url = "http://h/x"
            headers = { authorization = "Bearer abc", "X-Partner" = "{Id}" }
            signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            "#,
        )
        .unwrap();
        let spec = EndpointSpec::compile(3, cfg).unwrap();
        let meta = EndpointMeta {
            id: 3,
            disabled_reason: Some("410".into()),
            fails: [0, 2, 0],
            ..EndpointMeta::default()
        };
        let v = describe(&spec, Some(&meta), None);
        let text = v.to_string();
        assert!(!text.contains("abc"), "{text}");
        assert!(!text.contains("MfKQ"), "{text}");
        assert_eq!(v["headers"]["authorization"], REDACTED);
        assert_eq!(v["headers"]["X-Partner"], "{Id}");
        assert_eq!(v["signing_secret"], REDACTED);
        assert_eq!(v["enabled"], false);
        assert_eq!(v["disabled_reason"], "410");
        assert_eq!(v["consecutive_failures"]["4xx"], 2);
        assert_eq!(v["timeout"], "10s");
        assert_eq!(v["success"], "2xx");
        assert!(v["counters"].is_null());
    }
}
