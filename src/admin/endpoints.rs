//! `/v1/endpoints`: the configured endpoints with their live state, and
//! `POST /v1/endpoints/{name}/enable|disable`.
//!
//! An endpoint reads as its config keys (the `[[endpoint]]` table as JSON, with
//! `signing_secret` and `Authorization` header values redacted) plus its live state from
//! the store (`enabled`, `disabled_reason`, `consecutive_failures`) and its owning
//! worker's counters since start. Enabling and disabling go through the committer.

use serde_json::{json, Value};

use super::{error, json_response, method_not_allowed, not_yet, percent_decode, Admin, Response};
use crate::commit::CommitMsg;
use crate::endpoint::EndpointSpec;
use crate::metrics::{AttemptResult, EndpointCounts};
use crate::shard::worker_for;
use crate::store::EndpointMeta;

/// What a redacted secret reads as.
pub const REDACTED: &str = "[redacted]";

/// Header names whose values are secrets.
const SECRET_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];

impl Admin {
    /// `GET /v1/endpoints`: every configured endpoint, by name.
    pub(super) fn list_endpoints(&self) -> Response {
        let metas = match self.store.endpoints() {
            Ok(m) => m,
            Err(e) => return error(500, e.to_string()),
        };
        let scrape = self.collect(None, false);
        let list: Vec<Value> = self
            .endpoints
            .values()
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

    /// `/v1/endpoints/{name}` and `/v1/endpoints/{name}/{action}`.
    pub(super) fn endpoint_call(&self, method: &str, rest: &str) -> Response {
        let (name, action) = match rest.split_once('/') {
            Some((n, a)) => (percent_decode(n), Some(a)),
            None => (percent_decode(rest), None),
        };
        match (method, action) {
            ("PUT", None) => return not_yet("replacing endpoints over the API"),
            ("DELETE", None) => return not_yet("deleting endpoints over the API"),
            ("POST", Some("test")) => return not_yet("test deliveries"),
            ("POST", Some("recover")) => return not_yet("recover"),
            _ => {}
        }
        let meta = match self.store.endpoints() {
            Ok(all) => all.into_iter().find(|(n, _)| *n == name).map(|(_, m)| m),
            Err(e) => return error(500, e.to_string()),
        };
        let Some(meta) = meta else {
            return error(404, format!("no endpoint {name:?}"));
        };
        match (method, action) {
            ("GET", None) => {
                let Some(spec) = self.endpoints.get(&name) else {
                    return error(404, format!("no endpoint {name:?} in the configuration"));
                };
                let worker = worker_for(&name, self.workers.len());
                let scrape = self.collect(Some(worker), false);
                let counts = counts_of(&scrape.workers, &name);
                json_response(200, &describe(spec, Some(&meta), counts.as_ref()))
            }
            ("POST", Some("enable")) => {
                self.commit.send(CommitMsg::EnableEndpoint { ep: meta.id });
                json_response(200, &json!({ "name": name, "enabled": true }))
            }
            ("POST", Some("disable")) => {
                self.commit.send(CommitMsg::EndpointDisabled {
                    ep: meta.id,
                    reason: "disabled over the admin API".into(),
                });
                json_response(200, &json!({ "name": name, "enabled": false }))
            }
            (_, None | Some("enable" | "disable")) => method_not_allowed(),
            _ => error(404, "no such resource"),
        }
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
            hold: None,
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
