//! `/v1/endpoints…`: list, create, read, replace, delete, enable, disable, test and
//! recover.
//!
//! An endpoint reads as its config keys (the `[[endpoint]]` table as JSON, with
//! `signing_secret` and secret header values redacted) plus its live state from
//! the store (`enabled`, `disabled_reason`, `consecutive_failures`, `source`) and its
//! owning worker's counters since start. A create or replace body is the same keys as
//! JSON, read straight from the bytes (so `headers` keep the body's order, and a bad
//! value's error names its field's path); it is compiled here (a bad field or template
//! is a 400 naming it and its position) and applied by the committer, which persists it
//! and hands it to the owning worker live. Where a body carries the redaction marker
//! where `GET` shows one, the stored secret is kept, so read-edit-write works.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::events::attempt_json;
use super::{
    await_reply, error, json_response, method_not_allowed, percent_decode, Admin, Params, Response,
};
use crate::commit::{CommitMsg, EndpointOpError, PutMode, ReplayResult};
use crate::config::{field_message, EndpointConfig, ShownName};
use crate::endpoint::{EndpointError, EndpointSpec};
use crate::metrics::{AttemptResult, EndpointCounts};
use crate::shard::worker_for;
use crate::store::{seq_floor, DeliveryState, EndpointMeta, EventRecord};
use crate::worker::WorkerMsg;

use crate::deliver::request::is_secret_header;
pub use crate::deliver::request::REDACTED;

/// Failed deliveries scheduled per committer message by `recover`.
const RECOVER_PAGE: usize = 1000;

impl Admin {
    fn spec(&self, name: &str) -> Option<Arc<EndpointSpec>> {
        self.registry.read().ok()?.get(name).cloned()
    }

    fn meta(&self, name: &str) -> Result<Option<EndpointMeta>, Response> {
        self.store
            .endpoint_meta(name)
            .map_err(|e| error(500, e.to_string()))
    }

    /// `GET /v1/endpoints`: every running endpoint, by name.
    pub(super) fn list_endpoints(&self) -> Response {
        let _one = super::one_list_at_a_time();
        let metas = match self.store.endpoints() {
            Ok(m) => m,
            Err(e) => return error(500, e.to_string()),
        };
        let specs: Vec<Arc<EndpointSpec>> = match self.registry.read() {
            Ok(r) => r.values().cloned().collect(),
            Err(_) => return error(500, "endpoint registry unavailable"),
        };
        let scrape = self.collect(false);
        // By name, so that the list costs linear time in the endpoints (a scan per
        // endpoint took 10 s for 50,000).
        let metas: HashMap<&str, &EndpointMeta> =
            metas.iter().map(|(n, m)| (n.as_str(), m)).collect();
        let counts: HashMap<&str, EndpointCounts> = scrape
            .workers
            .iter()
            .flat_map(|w| w.endpoints.iter())
            .map(|(n, c)| (n.as_str(), *c))
            .collect();
        let list: Vec<View> = specs
            .iter()
            .map(|spec| {
                let name = spec.cfg.name.as_str();
                describe(&spec.cfg, metas.get(name).copied(), counts.get(name))
            })
            .collect();
        json_response(200, &List { endpoints: list })
    }

    /// `POST /v1/endpoints`.
    pub(super) fn create_endpoint(&self, body: &[u8]) -> Response {
        self.put(body, None, PutMode::Create)
    }

    /// Parses, compiles and applies an endpoint definition; answers with the endpoint
    /// as applied (201 created, 200 replaced). Described from what this call committed,
    /// not read back after: another client's write in between is not this answer's.
    fn put(&self, body: &[u8], path_name: Option<&str>, mode: PutMode) -> Response {
        self.try_put(body, path_name, mode)
            .unwrap_or_else(|refused| refused)
    }

    fn try_put(
        &self,
        body: &[u8],
        path_name: Option<&str>,
        mode: PutMode,
    ) -> Result<Response, Response> {
        let mut cfg = parse_definition(body, path_name).map_err(|m| error(400, m))?;
        let stored = path_name.and_then(|n| self.spec(n));
        if let Err(missing) = keep_redacted(&mut cfg, stored.as_ref().map(|s| &s.cfg)) {
            return Err(match (mode, &stored) {
                (PutMode::Replace, None) => error(404, format!("no endpoint {:?}", cfg.name)),
                _ => error(400, missing),
            });
        }
        // What the server's settings make of it, reported with the compile's problems
        // (each of them, as the file's are).
        let mut more: Vec<String> = cfg.min_delay_problem(self.retention).into_iter().collect();
        if !self.allow_private_networks {
            more.extend(crate::endpoint::guarded_url_problem(&cfg));
        }
        let spec = match EndpointSpec::compile_all(0, cfg) {
            Ok(spec) if more.is_empty() => spec,
            Ok(_) => return Err(error(400, more.join("\n"))),
            Err(errs) => {
                more.insert(0, messages(errs));
                return Err(error(400, more.join("\n")));
            }
        };
        let name = spec.cfg.name.clone();
        let applied = spec.cfg.clone();
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
            Ok((id, meta)) => {
                let counts = self.counts(worker_for(&name, self.workers.len()), id, &name);
                let status = match mode {
                    PutMode::Create => 201,
                    PutMode::Replace => 200,
                };
                Ok(json_response(
                    status,
                    &describe(&applied, Some(&meta), counts.as_ref()),
                ))
            }
            Err(e) => Err(op_error(e)),
        }
    }

    fn read_endpoint(&self, name: &str) -> Response {
        let Some(spec) = self.spec(name) else {
            return error(404, format!("no endpoint {name:?}"));
        };
        let meta = match self.meta(name) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let counts = self.counts(worker_for(name, self.workers.len()), spec.id, name);
        json_response(200, &describe(&spec.cfg, meta.as_ref(), counts.as_ref()))
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
        // Only `recover` takes parameters; a call that is a 405 or a 404 is answered so.
        let known = matches!(
            (method, action),
            ("GET" | "PUT" | "DELETE", None) | ("POST", Some("enable" | "disable" | "test"))
        );
        if known {
            if let Err(r) = params.only(&[]) {
                return r;
            }
        }
        match (method, action) {
            ("GET", None) => return self.read_endpoint(&name),
            ("PUT", None) => return self.put(body, Some(&name), PutMode::Replace),
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
            (_, None) => return method_not_allowed("GET, HEAD, PUT, DELETE"),
            ("POST", Some("enable" | "disable" | "test" | "recover")) => {}
            (_, Some("enable" | "disable" | "test" | "recover")) => {
                return method_not_allowed("POST")
            }
            _ => return error(404, "no such resource"),
        }
        let Some(spec) = self.spec(&name) else {
            return error(404, format!("no endpoint {name:?}"));
        };
        if let (Some(why), Some("enable" | "test")) = (&spec.broken, action) {
            return error(
                409,
                format!(
                    "endpoint {name}: its stored definition no longer compiles; PUT one that \
                     compiles first: {why}"
                ),
            );
        }
        match action {
            Some(a @ ("enable" | "disable")) => {
                let enabled = a == "enable";
                let (tx, rx) = crossbeam_channel::bounded(1);
                self.commit.send(CommitMsg::SetEnabled {
                    ep: spec.id,
                    enabled,
                    reply: tx,
                });
                match await_reply(rx) {
                    Ok(Ok(())) => json_response(200, &json!({ "name": name, "enabled": enabled })),
                    // Not stored, so not made: the committer writes the record first.
                    Ok(Err(e)) => error(
                        503,
                        format!("cannot store the change, so it was not made: {e}"),
                    ),
                    Err(r) => r,
                }
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
        // Up to one `timeout` waiting for a place under `max_in_flight` and a `max_rps`
        // token, one for the attempt.
        let Ok(attempt) = rx.recv_timeout(spec.cfg.timeout * 2 + Duration::from_secs(5)) else {
            return error(504, "the test attempt did not finish in time");
        };
        let id = event.display_id();
        // `data` exactly as the sample has it (`250.00`, not `250.0`), as the request
        // sent it: through a `Value` its numbers would be rewritten.
        #[derive(serde::Serialize)]
        struct Sent<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            etype: &'a str,
            account: Option<&'a str>,
            data: Option<&'a RawValue>,
        }
        #[derive(serde::Serialize)]
        struct Answer<'a> {
            endpoint: &'a str,
            event: Sent<'a>,
            success: bool,
            attempt: Value,
        }
        json_response(
            200,
            &Answer {
                endpoint: &spec.cfg.name,
                event: Sent {
                    id: &id,
                    etype: event.etype(),
                    account: event.account(),
                    data: serde_json::from_slice::<&RawValue>(event.data()).ok(),
                },
                success: attempt.state_after == Some(DeliveryState::Delivered),
                attempt: attempt_json(&id, 1, &attempt, event.data()),
            },
        )
    }

    /// `POST /v1/endpoints/{name}/recover?since=&until=`: replays every failed delivery
    /// of the endpoint among events accepted in the window.
    fn recover(&self, spec: &EndpointSpec, params: &Params) -> Response {
        if let Err(r) = params.only_with_values(&["since", "until"]) {
            return r;
        }
        let (since, until) = match params.window() {
            Ok((s, u)) => (
                s.map(seq_floor).unwrap_or(0),
                u.map(seq_floor).unwrap_or(u64::MAX),
            ),
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
                        .count();
                    // Not stored (a full disk), or an event not read: those deliveries
                    // are still failed. A 202 counting only the others read as "nothing
                    // more to recover", and the pages after it were sent to the same
                    // refusing store.
                    if let Some(why) = results.iter().find_map(|r| match r {
                        ReplayResult::Failed(why) => Some(why),
                        _ => None,
                    }) {
                        return error(
                            503,
                            format!(
                                "cannot store the replay of every failed delivery: {why} \
                                 ({scheduled} scheduled before it stand; call again once the \
                                 store takes writes: those are not failed any more, so they \
                                 are not scheduled twice)"
                            ),
                        );
                    }
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

/// Keys `GET` adds to an endpoint's config keys (its live state): a definition may
/// carry them back, as read, and they are ignored.
const READ_ONLY_KEYS: [&str; 4] = [
    "source",
    "disabled_reason",
    "consecutive_failures",
    "counters",
];

/// Parses a create or replace body into an endpoint definition. Read straight from the
/// bytes, so `headers` keep the body's order, and with the path of every error tracked:
/// a bad value is an error naming its field (`` field `timeout` ``, `` field
/// `headers.X-Partner` ``) and its position in the body. `path_name` (a `PUT`'s) stands in
/// for a missing `name`, and must equal a given one.
fn parse_definition(body: &[u8], path_name: Option<&str>) -> Result<EndpointConfig, String> {
    // A byte-order mark before the JSON is skipped (RFC 8259 §8.1), as ingest skips one.
    let body = body.strip_prefix(crate::ingest::BOM).unwrap_or(body);
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("the body must be a JSON object of endpoint keys".into());
    };
    let given = obj.get("name");
    if let (Some(path_name), Some(n)) = (path_name, given) {
        if n.as_str() != Some(path_name) {
            return Err(format!(
                "the body's name {n} differs from the path's {path_name:?}"
            ));
        }
    }
    let scope = match given.and_then(Value::as_str).or(path_name) {
        Some(name) => format!("endpoint {}", ShownName(name)),
        None => "endpoint".to_string(),
    };
    let name = if given.is_none() { path_name } else { None };
    // On an error, the offending key is dropped and the rest read again, so that every
    // bad key is reported, not only the first (as `check` does for the file). Positions
    // are the body's for the first; the others name their field.
    let mut problems: Vec<String> = Vec::new();
    let mut rest: Option<(serde_json::Map<String, Value>, Vec<String>)> = None;
    loop {
        let text;
        let bytes = match &rest {
            None => body,
            Some((obj, _)) => {
                text = serde_json::to_vec(obj).expect("a JSON value serialises");
                &text[..]
            }
        };
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let mut track = serde_path_to_error::Track::new();
        let err = match serde::de::DeserializeSeed::deserialize(
            Definition { name },
            serde_path_to_error::Deserializer::new(&mut de, &mut track),
        ) {
            Ok(cfg) if problems.is_empty() => return Ok(cfg),
            Ok(_) => break,
            Err(e) => e,
        };
        let path = track.path();
        let message = match &rest {
            None => err.to_string(),
            Some(_) => without_position(&err),
        };
        let first_pass = rest.is_none();
        let (obj, stood_in) = rest.get_or_insert_with(|| (obj.clone(), Vec::new()));
        let quoted = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|m| m.split('`').next())
                .map(str::to_string)
        };
        // A required key missing, or dropped below for its bad value, is stood in for so
        // that the rest is checked (never used: the definition is refused).
        let stand_in = |key: &str| {
            crate::config::stand_in(key)
                .map(|text| serde_json::from_str::<Value>(text).expect("a stand-in is JSON"))
                .filter(|_| !stood_in.iter().any(|k| k == key))
        };
        problems.push(field_message(&scope, &path.to_string(), &message));
        if let Some(key) = quoted("missing field `") {
            let Some(v) = stand_in(&key) else { break };
            obj.insert(key.clone(), v);
            stood_in.push(key);
            continue;
        }
        // A key given twice: the rewritten body holds it once (the last), read again.
        if quoted("duplicate field `").is_some() && first_pass {
            continue;
        }
        // (An unknown key is named by its message: the body's keys reach the
        // definition through `Entries`, past what the path tracks.)
        let top = match (path.iter().next(), quoted("unknown field `")) {
            (Some(serde_path_to_error::Segment::Map { key }), _) => key.clone(),
            (_, Some(key)) => key,
            _ => break,
        };
        if obj.shift_remove(&top).is_none() {
            break;
        }
        // A required key dropped comes back stood in for: no "missing field" repeats it.
        if let Some(v) = stand_in(&top) {
            obj.insert(top.clone(), v);
            stood_in.push(top);
        }
    }
    Err(problems.join("\n"))
}

/// A JSON error's message without serde_json's " at line L column C" (which would
/// point into a body rewritten to read the rest).
fn without_position(e: &serde_json::Error) -> String {
    let m = e.to_string();
    match m.rfind(" at line ") {
        Some(i) if e.line() > 0 => m[..i].to_string(),
        _ => m,
    }
}

/// Deserialises an [`EndpointConfig`] from a JSON object, skipping [`READ_ONLY_KEYS`]
/// and putting `name` first when given.
struct Definition<'a> {
    name: Option<&'a str>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Definition<'_> {
    type Value = EndpointConfig;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<EndpointConfig, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Definition<'_> {
    type Value = EndpointConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of endpoint keys")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<EndpointConfig, A::Error> {
        use serde::Deserialize as _;
        EndpointConfig::deserialize(serde::de::value::MapAccessDeserializer::new(Entries {
            name: self.name.map(str::to_string),
            name_next: false,
            inner: map,
        }))
    }
}

/// The body's entries as [`Definition`] hands them on.
struct Entries<A> {
    /// `name` to hand on before the body's entries.
    name: Option<String>,
    /// The key just handed on was `name`: its value comes from `name`.
    name_next: bool,
    inner: A,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for Entries<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::IntoDeserializer as _;
        if self.name.is_some() {
            self.name_next = true;
            return seed.deserialize("name".into_deserializer()).map(Some);
        }
        while let Some(key) = self.inner.next_key::<String>()? {
            if READ_ONLY_KEYS.contains(&key.as_str()) {
                self.inner.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        use serde::de::IntoDeserializer as _;
        if self.name_next {
            self.name_next = false;
            let name = self.name.take().unwrap_or_default();
            return seed.deserialize(name.into_deserializer());
        }
        self.inner.next_value_seed(seed)
    }
}

/// Puts the stored secrets back where a definition carries the redaction marker `GET`
/// shows in their place: a secret header's value (matched by name in any case) or
/// `signing_secret`, exactly `[redacted]`. So an endpoint read, edited and written back
/// keeps its secrets. `Err` names each marker with no stored value behind it, or whose
/// secret would go somewhere else, one per line: a `url` with another scheme, host or
/// port than the stored one's must come with its secrets given again (else whoever may
/// change an endpoint could send them, and signatures made with them, to a host of
/// their own).
fn keep_redacted(cfg: &mut EndpointConfig, stored: Option<&EndpointConfig>) -> Result<(), String> {
    let name = cfg.name.clone();
    let moved = stored.is_some_and(|s| !same_origin(&s.url, &cfg.url));
    let why = if moved {
        "keeps the stored value only while `url` keeps its scheme, host and port"
    } else {
        "keeps the stored value, and there is none"
    };
    let missing = |field: &str| {
        format!("endpoint {name}: field `{field}`: {REDACTED:?} {why} (give the value itself)")
    };
    let stored = stored.filter(|_| !moved);
    let mut problems = Vec::new();
    for (k, v) in cfg.headers.iter_mut() {
        if v != REDACTED || !is_secret_header(k) {
            continue;
        }
        let kept = stored.and_then(|s| {
            s.headers
                .iter()
                .find(|(sk, _)| sk.eq_ignore_ascii_case(k))
                .map(|(_, sv)| sv.clone())
        });
        match kept {
            Some(value) => *v = value,
            None => problems.push(missing(&format!("headers.{k}"))),
        }
    }
    // The secrets are a list separated by spaces, and the marker stands for the stored
    // ones, alone or among new ones: `[redacted] whsec_new` adds a secret for a rotation
    // without sending the old ones again.
    if let Some(secrets) = &cfg.signing_secret {
        if secrets.split_whitespace().any(|w| w == REDACTED) {
            match stored.and_then(|s| s.signing_secret.as_deref()) {
                None => problems.push(missing("signing_secret")),
                Some(kept) => cfg.signing_secret = Some(with_kept(secrets, kept)),
            }
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("\n")),
    }
}

/// `secrets` (separated by spaces) with the redaction marker standing for `kept`, each
/// secret once.
fn with_kept(secrets: &str, kept: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for given in secrets.split_whitespace() {
        let given = if given == REDACTED { kept } else { given };
        for w in given.split_whitespace() {
            if !out.contains(&w) {
                out.push(w);
            }
        }
    }
    out.join(" ")
}

/// Whether two URL templates send to the same scheme, host and port: the text before
/// the path, compared without regard to case.
fn same_origin(a: &str, b: &str) -> bool {
    fn origin(url: &str) -> &str {
        let start = url.find("://").map_or(0, |i| i + 3);
        let end = url[start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| start + i);
        &url[..end]
    }
    origin(a).eq_ignore_ascii_case(origin(b))
}

/// Compilation errors, one message per line.
fn messages(errs: Vec<EndpointError>) -> String {
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

fn op_error(e: EndpointOpError) -> Response {
    match e {
        EndpointOpError::Exists(_) | EndpointOpError::TooMany(_) => error(409, e.to_string()),
        EndpointOpError::NotFound(_) => error(404, e.to_string()),
        EndpointOpError::Store(_) => error(503, e.to_string()),
    }
}

/// The endpoint as `GET` shows it: its config keys in definition order (secrets
/// redacted, `headers` in their order, `enabled` as it is now) and its live state.
#[derive(serde::Serialize)]
struct View {
    #[serde(flatten)]
    cfg: EndpointConfig,
    source: &'static str,
    disabled_reason: Option<String>,
    consecutive_failures: Value,
    counters: Value,
}

/// Every running endpoint, for `GET /v1/endpoints`.
#[derive(serde::Serialize)]
struct List {
    endpoints: Vec<View>,
}

fn describe(
    cfg: &EndpointConfig,
    meta: Option<&EndpointMeta>,
    counts: Option<&EndpointCounts>,
) -> View {
    let default = EndpointMeta::default();
    let meta = meta.unwrap_or(&default);
    let mut cfg = cfg.redacted();
    cfg.enabled = !meta.is_disabled();
    View {
        cfg,
        source: meta.source.as_str(),
        disabled_reason: meta.disabled_reason.clone(),
        consecutive_failures: json!({ "3xx": meta.fails[0], "4xx": meta.fails[1], "5xx": meta.fails[2] }),
        counters: counts.map_or(Value::Null, |c| {
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
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_origin_is_scheme_host_and_port() {
        use super::same_origin;
        let base = "https://Partner.example:8443/hook?a=1";
        assert!(same_origin(base, "HTTPS://partner.example:8443/other"));
        assert!(same_origin(base, "https://partner.example:8443"));
        assert!(same_origin("http://h/{ActionId}", "http://h?x={Id}"));
        for other in [
            "http://partner.example:8443/hook",
            "https://partner.example/hook",
            "https://partner.example:8444/hook",
            "https://evil.example:8443/hook",
            "https://partner.example:8443.evil.example/hook",
            "https://{host}/hook",
        ] {
            assert!(!same_origin(base, other), "{other}");
        }
    }

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
        let v = serde_json::to_value(describe(&spec.cfg, Some(&meta), None)).unwrap();
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

    #[test]
    fn describe_keeps_the_header_order() {
        let mut cfg = parse_definition(
            br#"{"name":"p","events":["t"],"url":"http://h/","headers":{"Z-First":"1","A-Second":"2","M-Third":"3"}}"#,
            None,
        )
        .unwrap();
        let names: Vec<&str> = cfg.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Z-First", "A-Second", "M-Third"]);
        cfg.headers
            .push(("Authorization".into(), "Bearer x".into()));
        let spec = EndpointSpec::compile(1, cfg).unwrap();
        let text = serde_json::to_string(&describe(&spec.cfg, None, None)).unwrap();
        assert!(
            text.contains(r#""headers":{"Z-First":"1","A-Second":"2","M-Third":"3","Authorization":"[redacted]"}"#),
            "{text}"
        );
    }

    #[test]
    fn a_byte_order_mark_before_the_definition_is_skipped() {
        let body = "\u{feff}{\"name\":\"p\",\"events\":[\"t\"],\"url\":\"http://h/\"}";
        assert_eq!(parse_definition(body.as_bytes(), None).unwrap().name, "p");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (body, want) in [
            (
                r#"{"name":"p","events":["t"],"url":"http://h/","timeout":"10 s"}"#,
                "endpoint p: field `timeout`: bad duration unit in \"10 s\"",
            ),
            (
                r#"{"name":"p","events":["t"],"url":"http://h/","max_rps":-1}"#,
                "endpoint p: field `max_rps`: invalid value: integer `-1`, expected a whole number of requests per second, 0 (unlimited) to 4294967295",
            ),
            (
                r#"{"name":"p","events":["t"],"url":"http://h/","method":3}"#,
                "endpoint p: field `method`: invalid type: integer `3`, expected one of `GET`, `POST`, `PUT`, `PATCH`",
            ),
            (
                r#"{"name":"p","events":["t"],"url":"http://h/","headers":{"X":1}}"#,
                "endpoint p: field `headers.X`: invalid type: integer, expected a string",
            ),
            (
                r#"{"name":"p","events":["t"],"url":"http://h/","retry":["1s","soon"]}"#,
                "endpoint p: field `retry[1]`: bad duration \"soon\"",
            ),
            (
                r#"{"name":"p","events":["t"],"url":"http://h/","disable_after":{"4xx":"x"}}"#,
                "endpoint p: field `disable_after.4xx`: invalid type",
            ),
            (
                r#"{"name":"p","events":["t"],"url":"http://h/","bogus":1}"#,
                "endpoint p: unknown field `bogus`",
            ),
            (
                r#"{"name":"p","events":["t"]}"#,
                "endpoint p: missing field `url`",
            ),
        ] {
            let err = parse_definition(body.as_bytes(), None).unwrap_err();
            assert!(err.starts_with(want), "{body}: {err}");
        }
        // A position in the body comes with a bad value.
        let err = parse_definition(br#"{"name":"p","timeout":"x"}"#, None).unwrap_err();
        let first = err.lines().next().unwrap();
        assert!(first.ends_with("at line 1 column 25"), "{err}");
    }

    #[test]
    fn every_bad_key_of_a_definition_is_reported() {
        let body = br#"{"name":"x","events":["t"],"url":"http://h/","foo":1,"bar":2,
            "max_rps":"five","timeout":"ten"}"#;
        let err = parse_definition(body, None).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(
            lines[0].starts_with("endpoint x: unknown field `foo`"),
            "{err}"
        );
        assert!(lines[0].ends_with("at line 1 column 50"), "{err}");
        assert!(
            lines[1].starts_with("endpoint x: unknown field `bar`"),
            "{err}"
        );
        assert!(
            lines[2].starts_with("endpoint x: field `max_rps`: "),
            "{err}"
        );
        assert!(
            lines[3].starts_with("endpoint x: field `timeout`: "),
            "{err}"
        );
        assert!(!lines[1..].iter().any(|l| l.contains(" at line ")), "{err}");
        // A bad required key is reported once, not again as missing.
        let err = parse_definition(br#"{"name":"x","events":"t","url":7}"#, None).unwrap_err();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(!err.contains("missing"), "{err}");
        let err =
            parse_definition(br#"{"name":5,"events":["t"],"url":"http://h/"}"#, None).unwrap_err();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("endpoint: field `name`: invalid type"),
            "{err}"
        );
        // Nor does it hide another that is missing, or what follows a duplicate.
        let err = parse_definition(br#"{"name":"x","events":"t"}"#, None).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].starts_with("endpoint x: field `events`"), "{err}");
        assert_eq!(lines[1], "endpoint x: missing field `url`", "{err}");
        let err = parse_definition(
            br#"{"name":"x","events":["t"],"url":"http://h/","timeout":"1s","timeout":"x"}"#,
            None,
        )
        .unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].contains("duplicate field `timeout`"), "{err}");
        assert!(
            lines[1].starts_with("endpoint x: field `timeout`: bad duration"),
            "{err}"
        );
    }

    #[test]
    fn a_definition_takes_the_path_name_and_drops_what_get_adds() {
        let body = br#"{"events":["t"],"url":"http://h/","source":"api","enabled":false,
            "disabled_reason":"x","consecutive_failures":{"3xx":0},"counters":null}"#;
        let cfg = parse_definition(body, Some("from-path")).unwrap();
        assert_eq!(cfg.name, "from-path");
        assert!(!cfg.enabled);
        let err = parse_definition(
            br#"{"name":"a","events":["t"],"url":"http://h/"}"#,
            Some("b"),
        )
        .unwrap_err();
        assert!(err.contains("differs"), "{err}");
        assert!(parse_definition(b"[1]", None).is_err());
    }

    #[test]
    fn redacted_secrets_keep_the_stored_ones() {
        let stored = parse_definition(
            br#"{"name":"p","events":["t"],"url":"http://h/","headers":{"Authorization":"Bearer real","X":"1"},"signing_secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#,
            None,
        )
        .unwrap();
        let mut cfg = parse_definition(
            br#"{"name":"p","events":["t"],"url":"http://h/2","headers":{"authorization":"[redacted]","X":"[redacted]"},"signing_secret":"[redacted]"}"#,
            None,
        )
        .unwrap();
        keep_redacted(&mut cfg, Some(&stored)).unwrap();
        assert_eq!(
            cfg.headers,
            [
                ("authorization".to_string(), "Bearer real".to_string()),
                // Not a secret header: GET never redacts it, so the marker is its value.
                ("X".to_string(), "[redacted]".to_string()),
            ]
        );
        assert_eq!(cfg.signing_secret, stored.signing_secret);

        // A rotation: the marker among new secrets stands for the stored ones, in its
        // place; the marker twice, or a secret given again, once.
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for (given, kept) in [
            (
                "[redacted] whsec_bmV3bmV3bmV3",
                format!("{old} whsec_bmV3bmV3bmV3"),
            ),
            (
                "whsec_bmV3bmV3bmV3  [redacted]",
                format!("whsec_bmV3bmV3bmV3 {old}"),
            ),
            (&format!("[redacted] {old} [redacted]"), old.to_string()),
        ] {
            let mut c = cfg.clone();
            c.url = "http://h/".into();
            c.signing_secret = Some(given.to_string());
            keep_redacted(&mut c, Some(&stored)).unwrap();
            assert_eq!(c.signing_secret.as_deref(), Some(kept.as_str()), "{given}");
        }

        // Nothing stored to keep.
        let mut fresh = cfg.clone();
        fresh.signing_secret = Some(REDACTED.into());
        let err = keep_redacted(&mut fresh, None).unwrap_err();
        assert!(err.contains("field `signing_secret`"), "{err}");
        let mut no_auth = stored.clone();
        no_auth.headers.retain(|(k, _)| k != "Authorization");
        let mut cfg = parse_definition(
            br#"{"name":"p","events":["t"],"url":"http://h/","headers":{"Proxy-Authorization":"[redacted]"}}"#,
            None,
        )
        .unwrap();
        let err = keep_redacted(&mut cfg, Some(&no_auth)).unwrap_err();
        assert!(err.contains("field `headers.Proxy-Authorization`"), "{err}");
        // Moved to another host with two markers: both named, one per line.
        let mut moved = parse_definition(
            br#"{"name":"p","events":["t"],"url":"http://elsewhere/","headers":{"Authorization":"[redacted]"},"signing_secret":"[redacted]"}"#,
            None,
        )
        .unwrap();
        let err = keep_redacted(&mut moved, Some(&stored)).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].contains("field `headers.Authorization`"), "{err}");
        assert!(lines[1].contains("field `signing_secret`"), "{err}");
    }

    #[test]
    fn compile_messages_come_once_each() {
        let cfg = parse_definition(
            br#"{"name":"p","events":["t"],"url":"http://h/","signing_secret":"nope also-nope","max_in_flight":0,"headers":{"User-Agent":"mine"}}"#,
            None,
        )
        .unwrap();
        let Err(errs) = EndpointSpec::compile_all(0, cfg) else {
            panic!("compiled");
        };
        let msg = messages(errs);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(
            lines,
            [
                "endpoint p: field `max_in_flight`: must be at least 1",
                "endpoint p: field `headers.User-Agent`: User-Agent is set by ricochet on every request and cannot be given",
                "endpoint p: field `signing_secret`: each secret must be whsec_<base64> of a non-empty key",
            ],
            "{msg}"
        );
    }
}
