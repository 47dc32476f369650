//! The admin API's management calls (SPEC §7): endpoint CRUD applied live and persisted,
//! test deliveries, the webhook log's filtered and paginated list, replay and recover,
//! retention, and the bearer token over all of them.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ricochet::metrics::Exposition;
use serde_json::{json, Value};

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(10);

/// Percent-encodes a query parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// RFC 3339 → unix milliseconds.
fn ms(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("not RFC 3339: {rfc3339:?}: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A header of an attempt's `request.headers`, by name in any case.
fn hdr<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()
        .unwrap_or_else(|| panic!("headers is not an object: {headers}"))
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// The error message of an error answer.
fn err_msg(v: &Value) -> String {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error object: {v}"))
        .to_string()
}

/// The first position in `msg`, written `L:C` or `line L, column C`.
fn position(msg: &str) -> Option<(u32, u32)> {
    let num = |s: &str| -> Option<(u32, usize)> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        Some((s[..end].parse().ok()?, end))
    };
    for (i, _) in msg.char_indices() {
        let rest = &msg[i..];
        if let Some(r) = rest.strip_prefix("line ") {
            if let Some((line, n)) = num(r) {
                if let Some((col, _)) = r[n..].strip_prefix(", column ").and_then(num) {
                    return Some((line, col));
                }
            }
        }
        let starts_number = msg[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_digit());
        if starts_number {
            if let Some((line, n)) = num(rest) {
                if let Some((col, _)) = rest[n..].strip_prefix(':').and_then(num) {
                    return Some((line, col));
                }
            }
        }
    }
    None
}

/// Polls `f` (a remote API: there is no event to await) until it gives `Ok`; on timeout
/// the panic shows the last `Err` (what was seen instead).
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last seen: {seen}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every event of `GET /v1/events?{query}` following `next` to the end; checks that no
/// page holds more than `limit` (when the query sets one). Pages alternate between the
/// `cursor=` and `next=` spellings.
/// Sends one empty event per `(type, id)`, each answered as routed to one endpoint.
fn send_routed_once(c: &mut Conn, events: &[(&str, &str)]) {
    for (etype, id) in events {
        assert_eq!(c.send(&event(etype, id, "{}")), format!("ok {id} 1"));
    }
}

fn list_all(srv: &TestServer, query: &str) -> Vec<Value> {
    let limit: Option<usize> = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .map(|l| l.parse().unwrap());
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 10_000, "pagination does not end");
        let mut path = format!("/v1/events?{query}");
        if let Some(c) = &cursor {
            let key = if page % 2 == 0 { "cursor" } else { "next" };
            path.push_str(&format!("&{key}={}", enc(c)));
        }
        let (status, v) = srv.get(&path);
        assert_eq!(status, 200, "GET {path}: {v}");
        let events = v["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {v}"));
        if let Some(limit) = limit {
            assert!(events.len() <= limit, "{path}: {} > {limit}", events.len());
        }
        // (The scan budget, which can also end a page short, is not reached here.)
        assert!(
            page == 0 || !events.is_empty(),
            "{path}: a cursor led to an empty page (its page held the last match)"
        );
        out.extend(events.iter().cloned());
        match &v["next"] {
            Value::Null => return out,
            Value::String(s) => cursor = Some(s.clone()),
            other => panic!("{path}: next is {other}"),
        }
    }
    unreachable!()
}

fn list_ids(srv: &TestServer, query: &str) -> Vec<String> {
    list_all(srv, query)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn metric(m: &Exposition, name: &str) -> f64 {
    m.value(name, &[])
        .unwrap_or_else(|| panic!("no sample {name}"))
}

/// An attempt's `request.body`: the first 1 KiB of the body sent.
fn assert_excerpt(excerpt: &Value, sent: &[u8]) {
    let excerpt = excerpt
        .as_str()
        .unwrap_or_else(|| panic!("request.body is not a string: {excerpt}"));
    assert_eq!(
        excerpt.as_bytes(),
        &sent[..sent.len().min(1024)],
        "sent {:?}",
        String::from_utf8_lossy(sent)
    );
}

/// The deliveries of an event as (endpoint, state, attempts), sorted.
fn deliveries(v: &Value) -> Vec<(String, String, usize)> {
    let mut d: Vec<_> = v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let n = match &d["attempts"] {
                Value::Array(a) => a.len(),
                n => n.as_u64().unwrap_or_else(|| panic!("attempts: {d}")) as usize,
            };
            (
                d["endpoint"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
                n,
            )
        })
        .collect();
    d.sort();
    d
}

fn dl(ep: &str, state: &str, attempts: usize) -> (String, String, usize) {
    (ep.to_string(), state.to_string(), attempts)
}

/// Waits until the event's deliveries are exactly `want` (sorted by endpoint).
fn wait_deliveries(srv: &TestServer, id: &str, want: &[(&str, &str, usize)]) -> Value {
    let want: Vec<_> = want.iter().map(|(e, s, n)| dl(e, s, *n)).collect();
    srv.wait_event(id, WAIT, |v| deliveries(v) == want)
}

/// The endpoint object without its counters (which change as deliveries happen).
fn without_counters(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("counters");
    v
}

fn endpoint_names(srv: &TestServer) -> Vec<String> {
    let (status, list) = srv.get("/v1/endpoints");
    assert_eq!(status, 200, "{list}");
    list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn endpoint_crud_round_trip_and_routing() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint("mid", r#"["other"]"#, &rx.url("/mid"), ""));

    let zeta = ep(
        "zeta",
        &["t"],
        &rx.url("/z?k={n}"),
        json!({"headers": {"X-N": "n-{n}"}, "retry": "none", "max_rps": 5, "min_delay": "0s"}),
    );
    let (status, created) = srv.call("POST", "/v1/endpoints", &zeta);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "zeta");
    assert_eq!(created["source"], "api");
    assert_eq!(created["url"], rx.url("/z?k={n}"));
    assert_eq!(created["events"], json!(["t"]));
    assert_eq!(created["headers"], json!({"X-N": "n-{n}"}));
    assert_eq!(created["retry"], "none");
    assert_eq!(created["max_rps"], 5);
    assert_eq!(created["method"], "POST");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["disabled_reason"], Value::Null);
    assert_eq!(
        created["consecutive_failures"],
        json!({"3xx": 0, "4xx": 0, "5xx": 0})
    );
    let (status, got) = srv.get("/v1/endpoints/zeta");
    assert_eq!(status, 200, "{got}");
    assert_eq!(without_counters(&got), without_counters(&created));

    // Created disabled: listed, but not routed to.
    let alpha = ep(
        "alpha",
        &["t"],
        &rx.url("/alpha"),
        json!({"enabled": false}),
    );
    let (status, a) = srv.call("POST", "/v1/endpoints", &alpha);
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["enabled"], false);

    let (status, list) = srv.get("/v1/endpoints");
    assert_eq!(status, 200);
    let summary: Vec<(String, String)> = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alpha".to_string(), "api".to_string()),
            ("mid".to_string(), "config".to_string()),
            ("zeta".to_string(), "api".to_string()),
        ]
    );

    // A name that exists, from the API or from the config file.
    for name in ["zeta", "mid"] {
        let (status, v) = srv.call(
            "POST",
            "/v1/endpoints",
            &ep(name, &["t"], &rx.url("/dup"), json!({})),
        );
        assert_eq!(status, 409, "{name}: {v}");
        assert!(err_msg(&v).contains(name), "{v}");
    }

    // Template errors name the field and the position; nothing is created.
    for (field, value, line, col) in [
        // The `"` at column 11 cannot continue the placeholder.
        ("body", json!(r#"{"a": "{Id"}"#), 1, Some(11)),
        ("body", json!("{foo(x)}"), 1, None),
        ("body", json!("{\"a\": 1,\n \"b\": \"{nope(}\"}"), 2, None),
        ("url", json!("http://example.com/x?{Id"), 1, None),
    ] {
        let mut bad = ep("bad-tpl", &["t"], &rx.url("/bad"), json!({}));
        bad[field] = value.clone();
        let (status, v) = srv.call("POST", "/v1/endpoints", &bad);
        assert_eq!(status, 400, "{field} = {value}: {v}");
        let msg = err_msg(&v);
        assert!(
            msg.contains(&format!("`{field}`")),
            "{field} = {value}: {msg}"
        );
        let pos = position(&msg);
        assert!(
            pos.is_some_and(|(l, c)| l == line && col.is_none_or(|col| c == col)),
            "{field} = {value}: position {pos:?}, want line {line} column {col:?}: {msg}"
        );
    }
    let mut bad = ep("bad-tpl", &["t"], &rx.url("/bad"), json!({}));
    bad["headers"] = json!({"X-Broken": "{Id"});
    let (status, v) = srv.call("POST", "/v1/endpoints", &bad);
    assert_eq!(status, 400, "{v}");
    let msg = err_msg(&v);
    assert!(
        msg.contains("X-Broken") || msg.contains("`headers`"),
        "{msg}"
    );
    assert_eq!(srv.get("/v1/endpoints/bad-tpl").0, 404);

    // Unknown keys are named.
    let mut bad = ep("bad-key", &["t"], &rx.url("/bad"), json!({}));
    bad["bogus_key"] = json!(1);
    let (status, v) = srv.call("POST", "/v1/endpoints", &bad);
    assert_eq!(status, 400, "{v}");
    assert!(err_msg(&v).contains("bogus_key"), "{v}");

    // Bad values.
    for (key, value) in [
        ("name", json!("bad name!")),
        ("method", json!("FETCH")),
        ("format", json!("yaml")),
        ("min_delay", json!("soon")),
        ("retry", json!("sometimes")),
        ("events", json!("t")),
        ("max_rps", json!(-1)),
        ("success", json!(["999"])),
    ] {
        let mut bad = ep("bad-val", &["t"], &rx.url("/bad"), json!({}));
        bad[key] = value.clone();
        let (status, v) = srv.call("POST", "/v1/endpoints", &bad);
        assert_eq!(status, 400, "{key} = {value}: {v}");
        assert!(
            err_msg(&v).contains(&format!("field `{key}`")),
            "{key} = {value}: {v}"
        );
    }
    let (status, v) = srv.call(
        "POST",
        "/v1/endpoints",
        &json!({"name": "bad-val", "events": ["t"]}),
    );
    assert_eq!(status, 400, "missing url: {v}");
    assert!(err_msg(&v).contains("url"), "{v}");
    assert_eq!(srv.get("/v1/endpoints/bad-val").0, 404);

    // Bodies that are no JSON object.
    for body in [r#"{"name": "x","#, "[1, 2]", "", "nope"] {
        let (status, v) = http_json(srv.admin, "POST", "/v1/endpoints", body, None);
        assert_eq!(status, 400, "{body:?}: {v}");
        assert!(!err_msg(&v).is_empty());
    }

    // Events reach the created endpoint, rendered with its templates.
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "c-1", r#"{"n": 7}"#)), "ok c-1 1");
    let got = rx.wait_for(1, WAIT);
    assert_eq!(got[0].path, "/z?k=7");
    assert_eq!(got[0].header("X-N"), Some("n-7"));
    assert_eq!(got[0].header("webhook-id"), Some("c-1"));

    // PUT: a different name in the body, an unknown endpoint, bad keys and templates.
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/zeta",
        &ep("other", &["t"], &rx.url("/z2"), json!({})),
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/nope",
        &json!({"events": ["t"], "url": rx.url("/z2")}),
    );
    assert_eq!(status, 404, "{v}");
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/zeta",
        &json!({"events": ["t"], "url": rx.url("/z2"), "bogus_key": true}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(err_msg(&v).contains("bogus_key"), "{v}");
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/zeta",
        &json!({"events": ["t"], "url": rx.url("/z2"), "body": "{\"a\": {Id"}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(err_msg(&v).contains("`body`"), "{v}");
    let (status, v) = http_json(srv.admin, "PUT", "/v1/endpoints/zeta", "{", None);
    assert_eq!(status, 400, "{v}");
    // None of that changed it.
    assert_eq!(
        without_counters(&srv.get("/v1/endpoints/zeta").1),
        without_counters(&created)
    );

    // A PUT without `name` replaces the definition.
    let (status, put) = srv.call(
        "PUT",
        "/v1/endpoints/zeta",
        &json!({"events": ["t"], "url": rx.url("/z2"), "headers": {"X-N": "m-{n}"}}),
    );
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["name"], "zeta");
    assert_eq!(put["url"], rx.url("/z2"));
    assert_eq!(put["headers"], json!({"X-N": "m-{n}"}));
    assert_eq!(
        put["retry"], "standard",
        "PUT replaces: unset keys take their defaults"
    );
    assert_eq!(put["source"], "api");
    assert_eq!(
        without_counters(&srv.get("/v1/endpoints/zeta").1),
        without_counters(&put)
    );
    assert_eq!(c.send(&event("t", "c-2", r#"{"n": 8}"#)), "ok c-2 1");
    let got = rx.wait_for(2, WAIT);
    assert_eq!(got[1].path, "/z2");
    assert_eq!(got[1].header("X-N"), Some("m-8"));

    // Delete.
    let (status, v) = srv.call("DELETE", "/v1/endpoints/zeta", &Value::Null);
    assert_eq!((status, v), (200, json!({"name": "zeta", "deleted": true})));
    let (status, v) = srv.call("DELETE", "/v1/endpoints/zeta", &Value::Null);
    assert_eq!(status, 404, "{v}");
    assert_eq!(srv.get("/v1/endpoints/zeta").0, 404);
    assert_eq!(
        srv.call(
            "PUT",
            "/v1/endpoints/zeta",
            &json!({"events": ["t"], "url": rx.url("/z3")})
        )
        .0,
        404
    );
    assert_eq!(
        srv.call("DELETE", "/v1/endpoints/nope", &Value::Null).0,
        404
    );
    assert_eq!(endpoint_names(&srv), ["alpha", "mid"]);
    // No longer routed to (alpha is disabled, mid takes other types).
    assert_eq!(c.send(&event("t", "c-3", r#"{"n": 9}"#)), "ok c-3 0");

    // The log keeps what happened before.
    wait_deliveries(&srv, "c-1", &[("zeta", "delivered", 1)]);
    wait_deliveries(&srv, "c-2", &[("zeta", "delivered", 1)]);
    assert_eq!(rx.count(), 2);
}

#[test]
fn put_replaces_an_endpoint_live_under_load() {
    const N: usize = 3000;
    // R1 is slowish and gets 4 requests at a time, so deliveries queue up behind it.
    let r1 = TestReceiver::with_script(|_, _| {
        Reply::status(200)
            .body("OK")
            .delay(Duration::from_millis(2))
    });
    let r2 = TestReceiver::start();
    let srv = TestServer::start("");
    let (status, v) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep(
            "live",
            &["s"],
            &r1.url("/one"),
            json!({"headers": {"X-Gen": "v1-{n}"}, "max_in_flight": 4}),
        ),
    );
    assert_eq!(status, 201, "{v}");

    let lines: Vec<String> = (0..N)
        .map(|i| event("s", &format!("s-{i}"), &format!(r#"{{"n": {i}}}"#)))
        .collect();
    let w = UnixStream::connect(&srv.socket).unwrap();
    let r = BufReader::new(w.try_clone().unwrap());
    let put_done = Arc::new(AtomicBool::new(false));
    // Writes 0..2000 while R1 works through them and the PUT happens, and the rest once
    // the PUT has answered.
    let writer = {
        let put_done = put_done.clone();
        std::thread::spawn(move || {
            let mut w = w;
            let mut chunk = String::new();
            for (i, l) in lines.iter().enumerate() {
                if i == 2000 {
                    while !put_done.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                }
                chunk.push_str(l);
                chunk.push('\n');
                if i % 50 == 49 || i == N - 1 {
                    w.write_all(chunk.as_bytes()).unwrap();
                    chunk.clear();
                }
            }
            w
        })
    };
    let reader = std::thread::spawn(move || {
        r.lines()
            .take(N)
            .map(|l| l.unwrap())
            .collect::<Vec<String>>()
    });

    // Under way: R1 has some, the rest queue behind it.
    r1.wait_for(300, WAIT);
    let (status, put) = srv.call(
        "PUT",
        "/v1/endpoints/live",
        &json!({"events": ["s"], "url": r2.url("/two"), "headers": {"X-Gen": "v2-{n}"}}),
    );
    put_done.store(true, Ordering::Release);
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["url"], r2.url("/two"));

    let acks = reader.join().unwrap();
    drop(writer.join().unwrap());
    assert_eq!(acks.len(), N);
    for (i, a) in acks.iter().enumerate() {
        assert_eq!(a, &format!("ok s-{i} 1"));
    }

    // Every id arrives exactly once, at one receiver or the other.
    poll(Duration::from_secs(15), "every id at R1 or R2", || {
        let (n1, n2) = (r1.ids().len(), r2.ids().len());
        if n1 + n2 >= N {
            Ok(())
        } else {
            Err(format!("{n1} ids at R1, {n2} at R2"))
        }
    });
    let (ids1, ids2) = (r1.ids(), r2.ids());
    let mut all: HashMap<String, usize> = HashMap::new();
    for (id, n) in ids1.iter().chain(ids2.iter()) {
        *all.entry(id.clone()).or_insert(0) += n;
    }
    let missing: Vec<usize> = (0..N)
        .filter(|i| !all.contains_key(&format!("s-{i}")))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    let twice: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(all.len(), N);
    assert!(ids1.len() >= 300, "{}", ids1.len());
    assert!(
        ids2.keys()
            .any(|id| id[2..].parse::<usize>().unwrap() < 2000),
        "no delivery queued at the PUT went to the new url (R1 got {})",
        ids1.len()
    );
    // Events accepted after the PUT answered were written after it: the new url only.
    let late_at_r1: Vec<&String> = ids1
        .keys()
        .filter(|id| id[2..].parse::<usize>().unwrap() >= 2000)
        .collect();
    assert!(
        late_at_r1.is_empty(),
        "sent after the PUT, delivered to the old url: {late_at_r1:?}"
    );
    // Each request was rendered wholly from one version: url and header agree.
    for (rx, gen, path) in [(&r1, "v1", "/one"), (&r2, "v2", "/two")] {
        for req in rx.requests() {
            let n = req.json()["n"].as_u64().unwrap();
            assert_eq!(req.path, path);
            assert_eq!(
                req.header("X-Gen"),
                Some(format!("{gen}-{n}").as_str()),
                "request to {path} for s-{n}"
            );
        }
    }
    // The log agrees: all delivered, one attempt each.
    let v = srv.wait_event("s-2999", WAIT, |v| states(v) == ["delivered"]);
    assert_eq!(
        v["deliveries"][0]["attempts"][0]["request"]["url"],
        r2.url("/two")
    );
    let v = srv.wait_event("s-0", WAIT, |v| states(v) == ["delivered"]);
    assert_eq!(v["deliveries"][0]["attempts"].as_array().unwrap().len(), 1);
}

#[test]
fn endpoints_delete_recreate_and_persist_across_restart() {
    let rx = TestReceiver::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new(&endpoint("cfg", r#"["c"]"#, &rx.url("/cfg"), ""));
    let mut srv = TestServer::start_in(dir.clone(), &opts);

    let (status, v) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep("keep", &["k"], &rx.url("/keep1"), json!({})),
    );
    assert_eq!(status, 201, "{v}");
    let (status, _) = srv.call("DELETE", "/v1/endpoints/keep", &Value::Null);
    assert_eq!(status, 200);
    // The same name again, a different definition.
    let (status, v) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep(
            "keep",
            &["k"],
            &rx.url("/keep2"),
            json!({"headers": {"X-V": "2"}}),
        ),
    );
    assert_eq!(status, 201, "{v}");
    let mut c = srv.connect();
    assert_eq!(c.send(&event("k", "k-1", "{}")), "ok k-1 1");
    let got = rx.wait_for(1, WAIT);
    assert_eq!(
        (got[0].path.as_str(), got[0].header("X-V")),
        ("/keep2", Some("2"))
    );
    wait_deliveries(&srv, "k-1", &[("keep", "delivered", 1)]);

    // Another one created and deleted; and a PUT, which must persist too.
    let (status, _) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep("gone", &["g"], &rx.url("/gone"), json!({})),
    );
    assert_eq!(status, 201);
    assert_eq!(
        srv.call("DELETE", "/v1/endpoints/gone", &Value::Null).0,
        200
    );
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/keep",
        &json!({"name": "keep", "events": ["k"], "url": rx.url("/keep3"), "headers": {"X-V": "3"}}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(srv.get("/v1/endpoints/cfg").1["source"], "config");
    // The file's endpoint disabled by a definition over the API: the file's definition
    // (enabled by default) replaces it at the next start, and lifts that disable too.
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/cfg",
        &json!({"name": "cfg", "events": ["c"], "url": rx.url("/cfg"), "enabled": false}),
    );
    assert_eq!((status, v["enabled"].clone()), (200, json!(false)), "{v}");
    drop(c);

    assert_eq!(srv.stop(), Some(0));
    drop(srv);
    // Restart with the config file's endpoint changed: applied by name.
    let opts = ServerOpts::new(&endpoint("cfg", r#"["c"]"#, &rx.url("/cfg2"), ""));
    let srv = TestServer::start_in(dir.clone(), &opts);
    assert_eq!(endpoint_names(&srv), ["cfg", "keep"]);
    let (_, cfg) = srv.get("/v1/endpoints/cfg");
    assert_eq!(
        (cfg["source"].clone(), cfg["url"].clone()),
        (json!("config"), json!(rx.url("/cfg2")))
    );
    assert_eq!(
        (cfg["enabled"].clone(), cfg["disabled_reason"].clone()),
        (json!(true), Value::Null),
        "{cfg}"
    );
    let (status, keep) = srv.get("/v1/endpoints/keep");
    assert_eq!(status, 200, "{keep}");
    assert_eq!(keep["source"], "api");
    assert_eq!(keep["url"], rx.url("/keep3"));
    assert_eq!(keep["headers"], json!({"X-V": "3"}));
    assert_eq!(srv.get("/v1/endpoints/gone").0, 404);

    let mut c = srv.connect();
    assert_eq!(c.send(&event("k", "k-2", "{}")), "ok k-2 1");
    assert_eq!(c.send(&event("c", "c-1", "{}")), "ok c-1 1");
    assert_eq!(c.send(&event("g", "g-1", "{}")), "ok g-1 0");
    let got = rx.wait_for(3, WAIT);
    let mut seen: Vec<(String, String)> = got[1..]
        .iter()
        .map(|r| (r.path.clone(), r.header("webhook-id").unwrap().to_string()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/cfg2".to_string(), "c-1".to_string()),
            ("/keep3".to_string(), "k-2".to_string())
        ]
    );
    let k2 = got.iter().find(|r| r.path == "/keep3").unwrap();
    assert_eq!(k2.header("X-V"), Some("3"));
    // The log from before the restart still names the endpoint.
    wait_deliveries(&srv, "k-1", &[("keep", "delivered", 1)]);
    wait_deliveries(&srv, "k-2", &[("keep", "delivered", 1)]);
    // A name taken by the file cannot be created over the API.
    let (status, _) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep("cfg", &["c"], &rx.url("/x"), json!({})),
    );
    assert_eq!(status, 409);
}

/// A start that is refused (its admin address in use, here) changes nothing in the
/// store: the endpoint its file leaves out is not deleted, and its pending delivery is
/// still retrying at the next start (it was failed, and the endpoint gone).
#[test]
fn a_refused_start_deletes_no_endpoint() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(500));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new(&endpoint(
        "p",
        r#"["t"]"#,
        &rx.url("/p"),
        r#"retry = ["1h"]"#,
    ));
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "rs-1", "{}")), "ok rs-1 1");
    rx.wait_for(1, WAIT);
    srv.wait_event("rs-1", WAIT, |v| states(v) == ["retrying"]);
    assert_eq!(srv.stop(), Some(0));

    // The same data dir, a file without the endpoint, an admin address taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let file = std::fs::read_to_string(&srv.config_path).unwrap();
    let without = file.split("[[endpoint]]").next().unwrap().replace(
        "admin = \"127.0.0.1:0\"",
        &format!("admin = \"{}\"", taken.local_addr().unwrap()),
    );
    let refused_cfg = dir.path().join("refused.toml");
    std::fs::write(&refused_cfg, without).unwrap();
    let out = run(
        &["serve", "--config", refused_cfg.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot start the admin API"), "{stderr}");

    let srv = TestServer::start_in(dir, &opts);
    assert_eq!(srv.get("/v1/endpoints/p").0, 200);
    assert_eq!(states(&srv.event("rs-1")), ["retrying"]);
}

/// A second `serve` on a data dir in use is refused with that said, and the first runs
/// on; a start on an empty store says so (a mistyped `--data-dir` starts empty), also
/// after a refused start created it; a restart with events does not.
#[test]
fn a_data_dir_in_use_is_refused_and_an_empty_store_is_announced() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let empty = "the store is empty: a new data dir";
    // A start refused (its admin port taken) on the fresh dir: the store exists now.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A `serve` beside the test server's, on its data dir: `name`'s socket and config.
    let serve_beside = |name: &str, admin: String| {
        let cfg = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "[server]\ndata_dir = {:?}\nsocket = {:?}\nadmin = \"{admin}\"\n",
            dir.path().join("data"),
            dir.path().join(format!("{name}.sock")),
        );
        std::fs::write(&cfg, text).unwrap();
        run(
            &["serve", "--config", cfg.to_str().unwrap()],
            Duration::from_secs(30),
        )
    };
    let out = serve_beside("refused", taken.local_addr().unwrap().to_string());
    assert_eq!(out.status.code(), Some(1));
    let opts = ServerOpts::new("");
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    assert!(srv.log().contains(empty), "{}", srv.log());
    let out = serve_beside("second", "127.0.0.1:0".into());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use by another running ricochet serve"),
        "{stderr}"
    );
    assert_eq!(srv.connect().send(&event("t", "du-1", "{}")), "ok du-1 0");
    assert_eq!(srv.stop(), Some(0));
    let srv = TestServer::start_in(dir, &opts);
    assert!(!srv.log().contains(empty), "{}", srv.log());
}

/// A data dir whose store a newer ricochet wrote (a newer store format) is refused at
/// the start with that said, and left as it was: this binary's format back, it runs.
#[test]
fn a_store_of_a_newer_format_is_refused_at_the_start() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let data = dir.path().join("data");
    let opts = ServerOpts::new("");
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    assert_eq!(srv.connect().send(&event("t", "nf-1", "{}")), "ok nf-1 0");
    assert_eq!(srv.stop(), Some(0));
    // What a newer binary would leave: its format in the default column family.
    let set_format = |format: u32| {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &data).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &data, cfs).unwrap();
        db.put(b"format", format.to_be_bytes()).unwrap();
    };
    let newer = ricochet::store::FORMAT + 1;
    set_format(newer);
    let cfg = dir.path().join("newer.toml");
    let text = format!(
        "[server]\ndata_dir = {data:?}\nsocket = {:?}\nadmin = \"127.0.0.1:0\"\n",
        dir.path().join("newer.sock"),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = run(
        &["serve", "--config", cfg.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot open the store in {}: its store format is {newer}, written by a newer \
             ricochet",
            data.display()
        )),
        "{stderr}"
    );
    set_format(ricochet::store::FORMAT);
    let srv = TestServer::start_in(dir, &opts);
    assert_eq!(srv.event("nf-1")["id"], "nf-1");
}

/// A file endpoint replaced over the API is still the file's: a start whose file no
/// longer lists it deletes it (it ran on as an API endpoint, its deliveries still going
/// to the API's URL). An endpoint created over the API that the file comes to name is
/// taken over with a warning, and is the file's from then on.
#[test]
fn an_endpoint_is_the_file_s_once_the_file_names_it_whoever_replaced_it_since() {
    let rx = TestReceiver::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let in_file = |names: &[&str]| {
        let text: String = names
            .iter()
            .map(|n| endpoint(n, r#"["t"]"#, &rx.url(&format!("/{n}")), ""))
            .collect();
        ServerOpts::new(&text)
    };
    let mut srv = TestServer::start_in(dir.clone(), &in_file(&["f"]));
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/f",
        &ep("f", &["t"], &rx.url("/f-api"), json!({})),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep("a", &["t"], &rx.url("/a"), json!({})),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(srv.stop(), Some(0));
    drop(srv);

    // `f` left the file: deleted, though replaced over the API. `a` never was the
    // file's: it runs on. Then the file names `a`.
    let mut srv = TestServer::start_in(dir.clone(), &in_file(&["a"]));
    assert_eq!(srv.get("/v1/endpoints/f").0, 404);
    assert!(
        srv.log().contains(
            "endpoint left the config file (or `serve` was started without --config): deleted"
        ),
        "{}",
        srv.log()
    );
    assert!(
        srv.log()
            .contains("the config file names an endpoint stored as made over the admin API"),
        "{}",
        srv.log()
    );
    assert_eq!(srv.get("/v1/endpoints/a").1["source"], "config");
    assert_eq!(srv.stop(), Some(0));
    drop(srv);

    // With `a` gone from the file as well, nothing is left.
    let srv = TestServer::start_in(dir, &in_file(&[]));
    assert_eq!(srv.get("/v1/endpoints/a").0, 404);
    assert_eq!(endpoint_names(&srv), Vec::<String>::new());
}

/// A form body is a query's syntax: the attempt log redacts its credential-named
/// fields as it does the URL's query, and an error in its template masks them (both
/// showed the partner's key).
#[test]
fn a_form_body_s_credential_fields_are_redacted_in_the_log_and_in_errors() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint(
        "form",
        r#"["t"]"#,
        &rx.url("/f"),
        "format = \"form\"\nbody = \"api_key=K3Y&oid={oid}\"",
    ));
    assert_eq!(
        srv.connect().send(&event("t", "fb-1", r#"{"oid":"o1"}"#)),
        "ok fb-1 1"
    );
    let got = rx.wait_for(1, WAIT);
    assert_eq!(String::from_utf8_lossy(&got[0].body), "api_key=K3Y&oid=o1");
    let v = srv.wait_event("fb-1", WAIT, |v| states(v) == ["delivered"]);
    let logged = &v["deliveries"][0]["attempts"][0]["request"]["body"];
    assert_eq!(logged, "api_key=[redacted]&oid=o1", "{v}");

    let def = ep(
        "bad",
        &["t"],
        &rx.url("/b"),
        json!({ "format": "form", "body": "api_key=K3Y&oid={oid" }),
    );
    let (status, v) = srv.call("POST", "/v1/endpoints", &def);
    assert_eq!(status, 400, "{v}");
    let msg = err_msg(&v);
    assert!(!msg.contains("K3Y"), "{msg}");
    assert!(msg.contains("api_key=***&oid={oid"), "{msg}");
}

/// A definition's `enabled = true` lifts only the disable a definition caused; a
/// disable over the admin API (like an automatic one) waits for an explicit enable, also
/// after a kill -9 (who disabled it is part of the stored state).
#[test]
fn a_definition_enables_only_what_a_definition_disabled() {
    let rx = TestReceiver::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new("");
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    let def = |enabled: bool| ep("d", &["t"], &rx.url("/d"), json!({ "enabled": enabled }));
    let state = |srv: &TestServer| {
        let (status, v) = srv.get("/v1/endpoints/d");
        assert_eq!(status, 200, "{v}");
        (v["enabled"].clone(), v["disabled_reason"].clone())
    };

    let (status, v) = srv.call("POST", "/v1/endpoints", &def(false));
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        state(&srv),
        (
            json!(false),
            json!("disabled by its definition (enabled = false)")
        )
    );
    let (status, v) = srv.call("PUT", "/v1/endpoints/d", &def(true));
    assert_eq!(status, 200, "{v}");
    assert_eq!(state(&srv), (json!(true), Value::Null));

    assert_eq!(srv.post("/v1/endpoints/d/disable").0, 200);
    poll(WAIT, "the disable", || match state(&srv) {
        (Value::Bool(false), r) => Ok(r),
        seen => Err(format!("{seen:?}")),
    });
    srv.kill9();
    drop(srv);
    let srv = TestServer::start_in(dir, &opts);
    let (status, v) = srv.call("PUT", "/v1/endpoints/d", &def(true));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        state(&srv),
        (json!(false), json!("disabled over the admin API"))
    );
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "en-1", "{}")), "ok en-1 0");

    assert_eq!(srv.post("/v1/endpoints/d/enable").0, 200);
    poll(WAIT, "the enable", || match state(&srv) {
        (Value::Bool(true), _) => Ok(()),
        seen => Err(format!("{seen:?}")),
    });
    assert_eq!(c.send(&event("t", "en-2", "{}")), "ok en-2 1");
    let got = rx.wait_for(1, WAIT);
    assert_eq!(got[0].header("webhook-id"), Some("en-2"));
}

/// `enable` and `disable` answer once the change is stored: a kill -9 right after the
/// answer keeps it. Enabling an endpoint that is enabled changes nothing, and its
/// retries go on (they used to be dropped, and waited for a restart).
#[test]
fn enable_and_disable_answer_once_stored_and_enabling_an_enabled_endpoint_keeps_its_retries() {
    let rx = TestReceiver::with_script(|_, n| Reply::status(if n < 3 { 500 } else { 200 }));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new(&endpoint(
        "r",
        r#"["t"]"#,
        &rx.url("/r"),
        r#"retry = ["1s", "1s", "1s", "1s"]"#,
    ));
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    assert_eq!(srv.connect().send(&event("t", "re-1", "{}")), "ok re-1 1");
    wait_deliveries(&srv, "re-1", &[("r", "retrying", 2)]);
    let (status, v) = srv.post("/v1/endpoints/r/enable");
    assert_eq!((status, &v), (200, &json!({"name": "r", "enabled": true})));
    rx.wait_for(4, WAIT);
    wait_deliveries(&srv, "re-1", &[("r", "delivered", 4)]);

    let enabled = |srv: &TestServer| srv.get("/v1/endpoints/r").1["enabled"].clone();
    assert_eq!(srv.post("/v1/endpoints/r/disable").0, 200);
    assert_eq!(enabled(&srv), json!(false));
    srv.kill9();
    drop(srv);
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    assert_eq!(enabled(&srv), json!(false));
    assert_eq!(srv.post("/v1/endpoints/r/enable").0, 200);
    assert_eq!(enabled(&srv), json!(true));
    srv.kill9();
    drop(srv);
    let srv = TestServer::start_in(dir, &opts);
    assert_eq!(enabled(&srv), json!(true));
}

#[test]
fn test_call_sends_one_sample_request_outside_the_log() {
    let ok = TestReceiver::with_script(|_, _| Reply::status(200).body("OK"));
    let down = TestReceiver::with_script(|_, _| Reply::status(500).body("nope"));
    let eps = format!(
        "{}{}",
        endpoint(
            "probe",
            r#"["action_inquiry", "t"]"#,
            &ok.url("/probe?x=1"),
            "signing_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\""
        ),
        endpoint(
            "probe-bad",
            r#"["zz.custom"]"#,
            &down.url("/bad"),
            "retry = [\"100ms\"]"
        ),
    );
    let srv = TestServer::start(&eps);

    let (status, raw) = http_raw(srv.admin, "POST", "/v1/endpoints/probe/test", "", None);
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["endpoint"], "probe");
    assert_eq!(v["success"], true, "{v}");
    let ev = &v["event"];
    assert_eq!(ev["type"], "action_inquiry", "{v}");
    let id = ev["id"].as_str().expect("event id").to_string();
    assert!(!id.is_empty());
    assert!(
        ev["data"].as_object().is_some_and(|d| !d.is_empty()),
        "a seed sample, not an empty object: {v}"
    );
    let a = &v["attempt"];
    assert_eq!(a["status_code"], 200, "{v}");
    assert_eq!(a["timed_out"], false);
    assert_eq!(a["error"], Value::Null);
    assert_eq!(a["response_excerpt"], "OK");
    assert!(a["latency_ms"].as_f64().is_some(), "{a}");
    ms(a["at"].as_str().expect("at"));
    assert_eq!(a["request"]["method"], "POST");
    assert_eq!(a["request"]["url"], ok.url("/probe?x=1"));
    assert_eq!(
        hdr(&a["request"]["headers"], "webhook-id"),
        Some(id.as_str())
    );
    assert_eq!(
        hdr(&a["request"]["headers"], "webhook-signature"),
        Some("[redacted]")
    );
    // The receiver saw exactly that one request by the time the call answered.
    let got = ok.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("webhook-id"), Some(id.as_str()));
    assert_eq!(got[0].path, "/probe?x=1");
    assert_eq!(
        got[0].json(),
        ev["data"],
        "no body template: the body is the data"
    );
    assert!(got[0]
        .header("webhook-signature")
        .is_some_and(|s| s.starts_with("v1,")));
    assert_excerpt(&a["request"]["body"], &got[0].body);
    // The answer shows the data as sent, number for number (`250.00` stays `250.00`).
    let sent = String::from_utf8(got[0].body.clone()).unwrap();
    assert!(
        raw.contains(&format!(r#""data":{sent}"#)),
        "{sent} is not in {raw}"
    );

    // A failing endpoint: success false with the status; a generic sample for an unknown type.
    let (status, b) = srv.post("/v1/endpoints/probe-bad/test");
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["endpoint"], "probe-bad");
    assert_eq!(b["success"], false, "{b}");
    assert_eq!(b["event"]["type"], "zz.custom");
    assert!(b["event"]["data"].is_object(), "{b}");
    assert_eq!(b["attempt"]["status_code"], 500);
    assert_eq!(b["attempt"]["response_excerpt"], "nope");
    let bad_id = b["event"]["id"].as_str().unwrap().to_string();
    assert_eq!(down.count(), 1);

    // Unknown endpoint.
    assert_eq!(srv.post("/v1/endpoints/nope/test").0, 404);

    // A real event to the failing endpoint retries after 100ms; a retried test request
    // would have come in before that event's second attempt finished.
    let mut c = srv.connect();
    assert_eq!(
        c.send(&event("zz.custom", "real-bad", "{}")),
        "ok real-bad 1"
    );
    wait_deliveries(&srv, "real-bad", &[("probe-bad", "failed", 2)]);
    assert_eq!(
        down.ids().get(&bad_id),
        Some(&1),
        "the test request is not retried"
    );
    assert_eq!(down.count(), 3);

    // Neither test event is in the webhook log.
    assert_eq!(c.send(&event("t", "real-ok", "{}")), "ok real-ok 1");
    wait_deliveries(&srv, "real-ok", &[("probe", "delivered", 1)]);
    assert_eq!(list_ids(&srv, ""), ["real-ok", "real-bad"]);
    assert_eq!(srv.get(&format!("/v1/events/{}", enc(&id))).0, 404);
    assert_eq!(srv.get(&format!("/v1/events/{}", enc(&bad_id))).0, 404);
}

#[test]
fn webhook_log_filters_pages_and_keeps_redacted_requests() {
    let good = TestReceiver::with_script(|_, _| Reply::status(200).body("OK"));
    let bad = TestReceiver::with_script(|_, _| Reply::status(500).body("down"));
    let eps = format!(
        "{}{}",
        endpoint(
            "good",
            r#"["a", "b"]"#,
            &good.url("/good?src=log&token=t0p"),
            r#"headers = { Authorization = "Bearer topsecret", "X-Partner" = "p-{n}", "X-Api-Key" = "k3y" }
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw""#,
        ),
        endpoint("bad", r#"["a"]"#, &bad.url("/bad"), "retry = \"none\""),
    );
    let srv = TestServer::start(&eps);
    let id = |i: usize| format!("log-{i:02}");
    let etype = |i: usize| if i % 2 == 0 { "a" } else { "b" };
    let account = |i: usize| if i % 3 == 0 { "acc-x" } else { "acc-y" };
    let pad = "x".repeat(3000);
    let mut c = srv.connect();
    for i in 0..60 {
        let data = if i == 59 {
            format!(r#"{{"n":{i},"pad":"{pad}"}}"#)
        } else {
            format!(r#"{{"n":{i}}}"#)
        };
        let routes = if etype(i) == "a" { 2 } else { 1 };
        assert_eq!(
            c.send(&event_for(etype(i), &id(i), account(i), &data)),
            format!("ok {} {routes}", id(i))
        );
        if i == 19 || i == 39 {
            // Keeps the acceptance times of the three groups apart for since/until.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for i in 0..60 {
        if etype(i) == "a" {
            wait_deliveries(
                &srv,
                &id(i),
                &[("bad", "failed", 1), ("good", "delivered", 1)],
            );
        } else {
            wait_deliveries(&srv, &id(i), &[("good", "delivered", 1)]);
        }
    }

    let expect = |pred: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..60).rev().filter(|i| pred(*i)).map(id).collect()
    };

    // Newest first, with the shape of each entry.
    let all = list_all(&srv, "");
    let all_ids: Vec<String> = all
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all_ids, expect(&|_| true));
    let created: Vec<i64> = all
        .iter()
        .map(|e| ms(e["created"].as_str().unwrap()))
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    let e0 = all.iter().find(|e| e["id"] == "log-00").unwrap();
    assert_eq!(
        (e0["type"].clone(), e0["account"].clone()),
        (json!("a"), json!("acc-x"))
    );
    ms(e0["time"].as_str().unwrap());
    assert_eq!(
        deliveries(e0),
        [dl("bad", "failed", 1), dl("good", "delivered", 1)]
    );
    assert!(
        e0["deliveries"][0]["attempts"].is_u64(),
        "a count in the list: {e0}"
    );

    // Filters, alone and combined.
    let failed_a = expect(&|i| etype(i) == "a");
    for (query, want) in [
        ("type=a", failed_a.clone()),
        ("type=b", expect(&|i| etype(i) == "b")),
        ("type=zzz", vec![]),
        ("account=acc-x", expect(&|i| account(i) == "acc-x")),
        ("account=acc-y", expect(&|i| account(i) == "acc-y")),
        ("endpoint=bad", failed_a.clone()),
        ("endpoint=good", expect(&|_| true)),
        ("status=failed", failed_a.clone()),
        ("status=delivered", expect(&|_| true)),
        ("status=pending", vec![]),
        ("status=retrying", vec![]),
        ("endpoint=bad&status=failed", failed_a.clone()),
        ("endpoint=bad&status=delivered", vec![]),
        ("endpoint=good&status=failed", vec![]),
        ("type=b&status=failed", vec![]),
        (
            "type=b&account=acc-x&endpoint=good&status=delivered",
            expect(&|i| etype(i) == "b" && account(i) == "acc-x"),
        ),
        (
            "account=acc-x&type=a&limit=3",
            expect(&|i| etype(i) == "a" && account(i) == "acc-x"),
        ),
        ("limit=7", expect(&|_| true)),
        ("limit=1", expect(&|_| true)),
        ("limit=1000", expect(&|_| true)),
    ] {
        assert_eq!(list_ids(&srv, query), want, "{query}");
    }

    // since (inclusive) / until (exclusive) on acceptance time, RFC 3339 or unix ms.
    let created_of = |i: usize| {
        all.iter().find(|e| e["id"] == id(i).as_str()).unwrap()["created"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (c20, c40) = (created_of(20), created_of(40));
    let (m20, m40) = (ms(&c20), ms(&c40));
    assert!(m20 < m40);
    let created_ms: HashMap<String, i64> = all_ids
        .iter()
        .cloned()
        .zip(created.iter().copied())
        .collect();
    let window = |lo: Option<i64>, hi: Option<i64>| -> Vec<String> {
        all_ids
            .iter()
            .filter(|i| {
                lo.is_none_or(|lo| created_ms[*i] >= lo) && hi.is_none_or(|hi| created_ms[*i] < hi)
            })
            .cloned()
            .collect()
    };
    let mid = window(Some(m20), Some(m40));
    assert!(
        mid.contains(&id(20)) && !mid.contains(&id(40)) && !mid.contains(&id(19)),
        "{mid:?}"
    );
    for (query, want) in [
        (format!("since={}&until={m40}", enc(&c20)), mid.clone()),
        (format!("since={m20}&until={}", enc(&c40)), mid.clone()),
        (format!("since={}", enc(&c40)), window(Some(m40), None)),
        (format!("until={m20}"), window(None, Some(m20))),
        (
            format!("since={m20}&until={m40}&type=a&limit=4"),
            window(Some(m20), Some(m40))
                .into_iter()
                .filter(|i| failed_a.contains(i))
                .collect(),
        ),
        // Pages of exactly what there is: the last full page has no cursor.
        (
            format!("since={m20}&until={m40}&limit={}", mid.len()),
            mid.clone(),
        ),
        (format!("since={m20}&until={m40}&limit=1"), mid.clone()),
    ] {
        assert_eq!(list_ids(&srv, &query), want, "{query}");
    }

    // Bad parameters.
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "status=bogus",
        // No event can have a type ingest refuses: not an empty log.
        "type=Action_Inquiry",
        "since=yesterday",
        "until=2026-13-45T00:00:00Z",
        // Past the year 9999 (2^54 wrapped to 0: an empty log; nanoseconds).
        "until=18014398509481984",
        "since=1795441637365000000",
        "until=9999-12-31T23:59:59-01:00",
        "stauts=failed",
        "type=a&type=b",
    ] {
        let (status, v) = srv.get(&format!("/v1/events?{query}"));
        assert_eq!(status, 400, "{query}: {v}");
        assert!(!err_msg(&v).is_empty());
    }
    // An upside-down window is a mistake, not an empty log; so is Unix seconds.
    let (status, v) = srv.get(&format!("/v1/events?since={m40}&until={m20}"));
    assert_eq!(status, 400, "{v}");
    assert!(err_msg(&v).contains("is after until"), "{v}");
    let (status, v) = srv.get(&format!("/v1/events?since={}", m20 / 1000));
    assert_eq!(status, 400, "{v}");
    assert!(err_msg(&v).contains("unix seconds?"), "{v}");
    let (status, v) = srv.get("/v1/events?endpoint=nope");
    assert_eq!(status, 404, "{v}");
    assert!(err_msg(&v).contains("nope"));
    // A call that takes no parameter refuses one, rather than answering as if it had
    // applied it (a filter it does not have, here).
    for (status, v) in [
        srv.get("/v1/endpoints?enabled=false"),
        srv.get("/v1/events/log-00?endpoint=good"),
        srv.get("/v1/endpoints/good?x=1"),
        srv.post("/v1/endpoints/good/disable?until=tomorrow"),
    ] {
        assert_eq!(status, 400, "{v}");
        assert!(err_msg(&v).contains("takes none"), "{v}");
    }
    let (status, v) = http_json(
        srv.admin,
        "POST",
        "/v1/events?endpoint=good",
        &event("t", "param-1", "{}"),
        None,
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(srv.get("/v1/events/param-1").0, 404, "not ingested");
    let (status, v) = http_json(srv.admin, "DELETE", "/v1/endpoints/good?force=1", "", None);
    assert_eq!(status, 400, "{v}");
    let (_, ep) = srv.get("/v1/endpoints/good");
    assert_eq!(ep["enabled"], true, "neither disabled nor deleted: {ep}");
    // A call that does not exist is still a 404 or a 405, parameters or not.
    assert_eq!(srv.post("/v1/endpoints/good/bogus?x=1").0, 404);
    assert_eq!(
        http_json(srv.admin, "PATCH", "/v1/endpoints/good?x=1", "", None).0,
        405
    );

    // The request kept per attempt: what was sent, secrets redacted.
    let d0 = srv.event("log-00");
    let sent = good
        .requests()
        .into_iter()
        .find(|r| r.header("webhook-id") == Some("log-00"))
        .unwrap();
    assert_eq!(sent.header("Authorization"), Some("Bearer topsecret"));
    assert_eq!(sent.header("X-Api-Key"), Some("k3y"));
    assert_eq!(sent.path, "/good?src=log&token=t0p");
    assert!(sent
        .header("webhook-signature")
        .is_some_and(|s| s.starts_with("v1,")));
    let gd = d0["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint"] == "good")
        .unwrap();
    // Its members in the order api.md shows (and the log's pages give).
    let keys: Vec<&str> = gd.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["endpoint", "state", "attempts"]);
    let req = &gd["attempts"][0]["request"];
    assert_eq!(req["method"], "POST");
    assert_eq!(req["url"], good.url("/good?src=log&token=[redacted]"));
    let h = &req["headers"];
    for name in [
        "Host",
        "User-Agent",
        "Content-Type",
        "Content-Length",
        "webhook-id",
        "webhook-timestamp",
        "X-Partner",
    ] {
        assert_eq!(hdr(h, name), sent.header(name), "{name} in {req}");
    }
    // In the order of the wire.
    let logged: Vec<&str> = h.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let wire: Vec<&str> = sent.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(logged, wire);
    assert!(hdr(h, "User-Agent").unwrap().starts_with("ricochet/"));
    assert_eq!(hdr(h, "X-Partner"), Some("p-0"));
    assert_eq!(hdr(h, "Authorization"), Some("[redacted]"));
    assert_eq!(hdr(h, "X-Api-Key"), Some("[redacted]"));
    assert_eq!(hdr(h, "webhook-signature"), Some("[redacted]"));
    assert_excerpt(&req["body"], &sent.body);
    let def = srv.get("/v1/endpoints/good").1;
    assert_eq!(def["headers"]["X-Api-Key"], "[redacted]", "{def}");
    assert_eq!(def["headers"]["X-Partner"], "p-{n}", "{def}");
    let bd = d0["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint"] == "bad")
        .unwrap();
    assert_eq!(bd["attempts"][0]["status_code"], 500);
    assert_eq!(bd["attempts"][0]["request"]["url"], bad.url("/bad"));
    assert_eq!(
        hdr(&bd["attempts"][0]["request"]["headers"], "webhook-id"),
        Some("log-00")
    );

    // The body excerpt is the first 1 KiB.
    let big = srv.event("log-59");
    let sent = good
        .requests()
        .into_iter()
        .find(|r| r.header("webhook-id") == Some("log-59"))
        .unwrap();
    assert!(sent.body.len() > 3000);
    let excerpt = big["deliveries"][0]["attempts"][0]["request"]["body"]
        .as_str()
        .unwrap();
    assert_eq!(excerpt.as_bytes(), &sent.body[..1024]);

    // No secret anywhere in the API's answers.
    let mut texts = vec![
        srv.get("/v1/endpoints").1.to_string(),
        d0.to_string(),
        big.to_string(),
    ];
    texts.push(srv.event("log-01").to_string());
    texts.push(json!(all).to_string());
    for t in texts {
        assert!(!t.contains("topsecret"), "{t}");
        assert!(!t.contains("MfKQ9r8"), "{t}");
    }
}

#[test]
fn pagination_is_stable_while_events_keep_arriving() {
    let rx = TestReceiver::start();
    // Deliveries wait an hour: this test is about the log only.
    let srv = TestServer::start(&endpoint(
        "hold",
        r#"["p", "q"]"#,
        &rx.url("/"),
        "min_delay = \"1h\"",
    ));
    let mut first = Vec::new();
    let lines: Vec<String> = (0..300)
        .map(|i| {
            if i % 6 == 5 {
                event("q", &format!("q-{i:03}"), "{}")
            } else {
                first.push(format!("p-{i:03}"));
                event("p", &format!("p-{i:03}"), "{}")
            }
        })
        .collect();
    assert_eq!(first.len(), 250);
    for a in send_pipelined(&srv, lines) {
        assert!(a.starts_with("ok ") && a.ends_with(" 1"), "{a}");
    }

    // The first page, then a writer adds newer events of the same type between pages.
    let (status, page) = srv.get("/v1/events?type=p&limit=40");
    assert_eq!(status, 200, "{page}");
    let mut pages = vec![page];
    let stop = Arc::new(AtomicBool::new(false));
    let (tick_tx, tick_rx) = mpsc::channel::<()>();
    let writer = {
        let stop = stop.clone();
        let mut c = srv.connect();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let id = format!("late-{n}");
                assert_eq!(c.send(&event("p", &id, "{}")), format!("ok {id} 1"));
                n += 1;
                let _ = tick_tx.send(());
            }
            n
        })
    };
    let mut param = 0;
    while let Value::String(next) = pages.last().unwrap()["next"].clone() {
        assert!(pages.len() < 200, "pagination does not end");
        // At least one more event arrived since the previous page.
        tick_rx
            .recv_timeout(WAIT)
            .expect("the writer makes progress");
        while tick_rx.try_recv().is_ok() {}
        let key = ["cursor", "next"][param % 2];
        param += 1;
        let path = format!("/v1/events?type=p&limit=40&{key}={}", enc(&next));
        let (status, page) = srv.get(&path);
        assert_eq!(status, 200, "{path}: {page}");
        pages.push(page);
    }
    stop.store(true, Ordering::Release);
    let late = writer.join().unwrap();
    assert!(
        late >= pages.len() - 1,
        "{late} late events over {} pages",
        pages.len()
    );

    let mut got: Vec<String> = Vec::new();
    let mut created: Vec<i64> = Vec::new();
    for p in &pages {
        let events = p["events"].as_array().unwrap();
        assert!(events.len() <= 40, "{}", events.len());
        for e in events {
            assert_eq!(e["type"], "p");
            got.push(e["id"].as_str().unwrap().to_string());
            created.push(ms(e["created"].as_str().unwrap()));
        }
    }
    let late_seen: Vec<&String> = got.iter().filter(|i| i.starts_with("late-")).collect();
    assert!(
        late_seen.is_empty(),
        "newer than the first page: {late_seen:?}"
    );
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "an id on two pages");
    let mut want = first.clone();
    want.reverse();
    assert_eq!(got, want, "each of the 250 once, newest first");
    assert!(created.windows(2).all(|w| w[0] >= w[1]));

    // Once quiet, the list holds the late ones too, newest first.
    let now = list_ids(&srv, "type=p&limit=1000");
    assert_eq!(now.len(), 250 + late);
    let mut want_now: Vec<String> = (0..late).rev().map(|n| format!("late-{n}")).collect();
    want_now.extend(want);
    assert_eq!(now, want_now);
}

#[test]
fn replay_sends_a_retrying_delivery_now_and_its_schedule_goes_on() {
    // The first attempt fails and its retry waits an hour; the receiver then recovers.
    let rx = TestReceiver::with_script(|_, n| Reply::status(if n == 0 { 500 } else { 200 }));
    let eps = [
        endpoint(
            "slow-retry",
            r#"["t"]"#,
            &rx.url("/s"),
            r#"retry = ["1h", "1h"]"#,
        ),
        endpoint(
            "in-order",
            r#"["o"]"#,
            &rx.url("/o"),
            "retry = [\"1h\"]\nordered = true",
        ),
    ]
    .concat();
    let srv = TestServer::start(&eps);
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "rt-0", "{}")), "ok rt-0 1");
    wait_deliveries(&srv, "rt-0", &[("slow-retry", "retrying", 1)]);

    let (status, v) = srv.post("/v1/events/rt-0/replay");
    assert_eq!(
        (status, v),
        (202, json!({"id": "rt-0", "scheduled": ["slow-retry"]}))
    );
    let e = wait_deliveries(&srv, "rt-0", &[("slow-retry", "delivered", 2)]);
    let attempts = &e["deliveries"][0]["attempts"];
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[1]["status_code"], 200);
    assert_eq!(rx.ids()["rt-0"], 2);

    // A replayed retry that fails again goes on with the schedule's next wait.
    rx.set_script(|_, _| Reply::status(500));
    assert_eq!(c.send(&event("t", "rt-1", "{}")), "ok rt-1 1");
    wait_deliveries(&srv, "rt-1", &[("slow-retry", "retrying", 1)]);
    assert_eq!(srv.post("/v1/events/rt-1/replay").0, 202);
    let e = wait_deliveries(&srv, "rt-1", &[("slow-retry", "retrying", 2)]);
    let second = &e["deliveries"][0]["attempts"][1];
    assert_eq!(second["state_after"], "retrying", "{second}");
    assert!(!second["next_attempt_at"].is_null(), "{second}");
    // Its last retry was spent: a failure now would be final, so it is `failed`.
    assert_eq!(srv.post("/v1/events/rt-1/replay").0, 202);
    wait_deliveries(&srv, "rt-1", &[("slow-retry", "failed", 3)]);

    // An ordered endpoint's retrying head keeps its place: not replayed.
    assert_eq!(c.send(&event("o", "ord-0", "{}")), "ok ord-0 1");
    wait_deliveries(&srv, "ord-0", &[("in-order", "retrying", 1)]);
    let (status, v) = srv.post("/v1/events/ord-0/replay");
    assert_eq!(status, 409, "{v}");
}

/// An ordered endpoint `in-order` whose receiver fails the first request: `ord-0` sent
/// and retrying, its retry `retry` later.
fn ordered_head_retrying(retry: &str) -> (TestReceiver, TestServer) {
    let rx = TestReceiver::with_script(|_, n| match n {
        0 => Reply::status(500),
        _ => Reply::status(200),
    });
    let srv = TestServer::start(&endpoint(
        "in-order",
        r#"["o"]"#,
        &rx.url("/o"),
        &format!("retry = [\"{retry}\"]\nordered = true"),
    ));
    assert_eq!(srv.connect().send(&event("o", "ord-0", "{}")), "ok ord-0 1");
    wait_deliveries(&srv, "ord-0", &[("in-order", "retrying", 1)]);
    (rx, srv)
}

/// `PUT`s `in-order` back with `ordered = false`.
fn switch_off_ordered(srv: &TestServer) {
    let mut def = srv.get("/v1/endpoints/in-order").1;
    def["ordered"] = json!(false);
    let (status, v) = srv.call("PUT", "/v1/endpoints/in-order", &def);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn an_ordered_head_s_retry_keeps_its_time_once_the_endpoint_is_no_longer_ordered() {
    // The worker keeps an ordered head's retry; switched to `ordered = false`, that
    // retry still waits for its time, and goes once: the store's copy is the one sent.
    let (rx, srv) = ordered_head_retrying("3s");
    let mut c = srv.connect();
    switch_off_ordered(&srv);
    // No longer held back by the retrying head.
    assert_eq!(c.send(&event("o", "ord-1", "{}")), "ok ord-1 1");
    wait_deliveries(&srv, "ord-1", &[("in-order", "delivered", 1)]);
    wait_deliveries(&srv, "ord-0", &[("in-order", "delivered", 2)]);
    // A second copy of the retry would have gone at the same time as the first.
    assert_eq!(c.send(&event("o", "ord-2", "{}")), "ok ord-2 1");
    wait_deliveries(&srv, "ord-2", &[("in-order", "delivered", 1)]);
    let got: Vec<Received> = rx
        .requests()
        .into_iter()
        .filter(|r| r.header("webhook-id") == Some("ord-0"))
        .collect();
    assert_eq!(got.len(), 2, "the retry went once");
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_millis(2900),
        "the retry kept its time: sent {waited:?} after the first attempt"
    );
}

#[test]
fn replay_and_recover_deliver_again_on_an_ordered_endpoint() {
    // The worker remembers finished deliveries, to drop late copies of them; a replay
    // is a new round, not such a copy.
    let rx = TestReceiver::with_script(|r, _| {
        if r.header("webhook-id") == Some("f-0") {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let srv = TestServer::start(&endpoint(
        "in-order",
        r#"["o"]"#,
        &rx.url("/o"),
        "retry = \"none\"\nordered = true",
    ));
    let mut c = srv.connect();
    assert_eq!(c.send(&event("o", "d-0", "{}")), "ok d-0 1");
    assert_eq!(c.send(&event("o", "f-0", "{}")), "ok f-0 1");
    wait_deliveries(&srv, "d-0", &[("in-order", "delivered", 1)]);
    wait_deliveries(&srv, "f-0", &[("in-order", "failed", 1)]);
    let (status, v) = srv.post("/v1/events/d-0/replay");
    assert_eq!(
        (status, v),
        (202, json!({"id": "d-0", "scheduled": ["in-order"]}))
    );
    wait_deliveries(&srv, "d-0", &[("in-order", "delivered", 2)]);
    rx.set_script(|_, _| Reply::status(200));
    let (status, v) = srv.post("/v1/endpoints/in-order/recover");
    assert_eq!(
        (status, v),
        (202, json!({"endpoint": "in-order", "scheduled": 1}))
    );
    wait_deliveries(&srv, "f-0", &[("in-order", "delivered", 2)]);
    let ids = rx.ids();
    assert_eq!((ids["d-0"], ids["f-0"]), (2, 2));
}

#[test]
fn a_replay_to_an_ordered_endpoint_being_resumed_waits_behind_its_paused_head() {
    // `h`, the ordered endpoint's retrying head, is paused by a disable; at the enable
    // it is given its due time again by the resume, which runs at the loader's next
    // tick. A replay meanwhile of a later event (`d`, never routed to it) must not go
    // before it, as a fresh delivery accepted then does not: it joins the paused set
    // behind the head.
    let rx = TestReceiver::with_script(|r, _| {
        Reply::status(if r.header("webhook-id") == Some("h") {
            500
        } else {
            200
        })
    });
    let eps = [
        endpoint(
            "in-order",
            r#"["o"]"#,
            &rx.url("/o"),
            "retry = [\"1h\", \"1h\"]\nordered = true",
        ),
        endpoint("side", r#"["s"]"#, &rx.url("/s"), ""),
    ]
    .concat();
    let srv = TestServer::start(&eps);
    let mut c = srv.connect();
    assert_eq!(c.send(&event("o", "h", "{}")), "ok h 1");
    wait_deliveries(&srv, "h", &[("in-order", "retrying", 1)]);
    assert_eq!(c.send(&event("s", "d", "{}")), "ok d 1");
    wait_deliveries(&srv, "d", &[("side", "delivered", 1)]);
    assert_eq!(srv.post("/v1/endpoints/in-order/disable").0, 200);
    wait_deliveries(&srv, "h", &[("in-order", "paused", 1)]);
    assert_eq!(srv.post("/v1/endpoints/in-order/enable").0, 200);
    let (status, v) = srv.post("/v1/events/d/replay?endpoint=in-order");
    assert_eq!(
        (status, v),
        (202, json!({"id": "d", "scheduled": ["in-order"]}))
    );
    // The head's retry goes at once, fails, and holds `d` back for an hour.
    wait_deliveries(&srv, "h", &[("in-order", "retrying", 2)]);
    wait_deliveries(
        &srv,
        "d",
        &[("in-order", "pending", 0), ("side", "delivered", 1)],
    );
    let to_ordered: Vec<String> = rx
        .requests()
        .into_iter()
        .filter(|r| r.path == "/o")
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .collect();
    assert_eq!(
        to_ordered,
        ["h", "h"],
        "nothing went before the head's retry"
    );
    let m = srv.metrics();
    assert_eq!(
        (
            metric(&m, "ricochet_deliveries_pending"),
            metric(&m, "ricochet_deliveries_paused")
        ),
        (2.0, 0.0)
    );
}

#[test]
fn replay_leaves_alone_a_retry_of_an_endpoint_no_longer_ordered() {
    let (rx, srv) = ordered_head_retrying("1h");
    // Its place in the order is kept: not replayed.
    assert_eq!(srv.post("/v1/events/ord-0/replay").0, 409);
    switch_off_ordered(&srv);
    // An attempt of the head's retry may still be under way on the worker, so a
    // replay still leaves it to its time; it is not sent early either.
    let (status, v) = srv.post("/v1/events/ord-0/replay");
    assert_eq!(status, 409, "{v}");
    // A later event goes at once (FIFO now) while the head's retry waits.
    assert_eq!(srv.connect().send(&event("o", "ord-1", "{}")), "ok ord-1 1");
    wait_deliveries(&srv, "ord-1", &[("in-order", "delivered", 1)]);
    assert_eq!(rx.ids()["ord-0"], 1);
}

#[test]
fn replay_and_recover_redeliver_failed_deliveries() {
    let rx = TestReceiver::with_script(|r, _| {
        if r.path.starts_with("/f") {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let eps = [
        endpoint("flaky", r#"["r", "m"]"#, &rx.url("/f"), "retry = \"none\""),
        endpoint(
            "later",
            r#"["h", "m"]"#,
            &rx.url("/later"),
            "min_delay = \"1h\"",
        ),
        endpoint("extra", r#"["x"]"#, &rx.url("/x"), ""),
    ]
    .concat();
    let srv = TestServer::start(&eps);
    let r = |i: usize| format!("r-{i}");
    let mut c = srv.connect();
    for i in 0..8 {
        assert_eq!(c.send(&event("r", &r(i), "{}")), format!("ok r-{i} 1"));
        if i == 1 || i == 4 {
            // Keeps r-0..1, r-2..4 and r-5..7 apart in acceptance time for the window.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(c.send(&event("m", "m-0", "{}")), "ok m-0 2");
    assert_eq!(c.send(&event("h", "h-0", "{}")), "ok h-0 1");
    for i in 0..8 {
        wait_deliveries(&srv, &r(i), &[("flaky", "failed", 1)]);
    }
    wait_deliveries(
        &srv,
        "m-0",
        &[("flaky", "failed", 1), ("later", "pending", 0)],
    );
    rx.set_script(|_, _| Reply::status(200));

    // Replay a failed delivery: a new attempt in the same delivery, same webhook-id.
    let (status, v) = srv.post("/v1/events/r-0/replay");
    assert_eq!(
        (status, v),
        (202, json!({"id": "r-0", "scheduled": ["flaky"]}))
    );
    let e = wait_deliveries(&srv, "r-0", &[("flaky", "delivered", 2)]);
    let attempts = &e["deliveries"][0]["attempts"];
    assert_eq!(
        (
            attempts[0]["status_code"].clone(),
            attempts[1]["status_code"].clone()
        ),
        (json!(500), json!(200))
    );
    assert_eq!(
        hdr(&attempts[1]["request"]["headers"], "webhook-id"),
        Some("r-0")
    );
    assert_eq!(rx.ids()["r-0"], 2);
    let listed = list_all(&srv, "endpoint=flaky&status=delivered");
    assert_eq!(listed.len(), 1);
    assert_eq!(deliveries(&listed[0]), [dl("flaky", "delivered", 2)]);
    // A delivered one can be replayed too.
    let (status, v) = srv.post("/v1/events/r-0/replay");
    assert_eq!(
        (status, v),
        (202, json!({"id": "r-0", "scheduled": ["flaky"]}))
    );
    wait_deliveries(&srv, "r-0", &[("flaky", "delivered", 3)]);
    assert_eq!(rx.ids()["r-0"], 3);

    // Pending deliveries are not replayed; with another one failed, only that one is.
    let (status, v) = srv.post("/v1/events/h-0/replay");
    assert_eq!(status, 409, "{v}");
    assert_eq!(srv.post("/v1/events/h-0/replay?endpoint=later").0, 409);
    let (status, v) = srv.post("/v1/events/m-0/replay");
    assert_eq!(
        (status, v),
        (202, json!({"id": "m-0", "scheduled": ["flaky"]}))
    );
    wait_deliveries(
        &srv,
        "m-0",
        &[("flaky", "delivered", 2), ("later", "pending", 0)],
    );
    // Nor paused ones.
    assert_eq!(srv.post("/v1/endpoints/later/disable").0, 200);
    wait_deliveries(&srv, "h-0", &[("later", "paused", 0)]);
    let (status, v) = srv.post("/v1/events/h-0/replay");
    assert_eq!(status, 409, "{v}");

    // To an endpoint the event was never routed to: a new delivery, just that one.
    let (status, v) = srv.post("/v1/events/r-1/replay?endpoint=extra");
    assert_eq!(
        (status, v),
        (202, json!({"id": "r-1", "scheduled": ["extra"]}))
    );
    wait_deliveries(
        &srv,
        "r-1",
        &[("extra", "delivered", 1), ("flaky", "failed", 1)],
    );
    assert!(rx
        .requests()
        .iter()
        .any(|q| q.path == "/x" && q.header("webhook-id") == Some("r-1")));
    // An event routed to no endpoint has nothing to replay, and the answer says how to
    // send it to one.
    assert_eq!(c.send(&event("n", "n-0", "{}")), "ok n-0 0");
    let (status, v) = srv.post("/v1/events/n-0/replay");
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("?endpoint=NAME"),
        "{v}"
    );
    let (status, v) = srv.post("/v1/events/n-0/replay?endpoint=extra");
    assert_eq!(
        (status, v),
        (202, json!({"id": "n-0", "scheduled": ["extra"]}))
    );
    wait_deliveries(&srv, "n-0", &[("extra", "delivered", 1)]);

    assert_eq!(srv.post("/v1/events/nope/replay").0, 404);
    assert_eq!(srv.post("/v1/events/r-1/replay?endpoint=nope").0, 404);
    // A name left empty (a script's unset variable) is not "every endpoint".
    let (status, v) = srv.post("/v1/events/r-1/replay?endpoint=");
    assert_eq!(status, 400, "{v}");
    let (status, v) = srv.post("/v1/endpoints/flaky/recover?since=");
    assert_eq!(status, 400, "{v}");

    // Recover a window: [created(r-2), created(r-5)) holds r-2..r-4.
    let all = list_all(&srv, "type=r");
    let created = |id: &str| {
        all.iter().find(|e| e["id"] == id).unwrap()["created"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (c2, c5) = (created("r-2"), created("r-5"));
    assert!(ms(&created("r-1")) < ms(&c2) && ms(&created("r-4")) < ms(&c5));
    // A misspelt window is refused, not taken as no window (which would recover all).
    let (status, v) = srv.post(&format!("/v1/endpoints/flaky/recover?sinec={}", ms(&c2)));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"sinec\""), "{v}");
    assert_eq!(srv.post("/v1/events/r-1/replay?endpiont=flaky").0, 400);
    let (status, v) = srv.post(&format!(
        "/v1/endpoints/flaky/recover?since={}&until={}",
        enc(&c2),
        ms(&c5)
    ));
    assert_eq!(
        (status, v),
        (202, json!({"endpoint": "flaky", "scheduled": 3}))
    );
    for i in 2..5 {
        wait_deliveries(&srv, &r(i), &[("flaky", "delivered", 2)]);
    }
    for i in [5, 6, 7] {
        assert_eq!(
            deliveries(&srv.event(&r(i))),
            [dl("flaky", "failed", 1)],
            "r-{i}"
        );
    }
    // Everything else failed: r-1 and r-5..7.
    let (status, v) = srv.post("/v1/endpoints/flaky/recover");
    assert_eq!(
        (status, v),
        (202, json!({"endpoint": "flaky", "scheduled": 4}))
    );
    for i in [5, 6, 7] {
        wait_deliveries(&srv, &r(i), &[("flaky", "delivered", 2)]);
    }
    wait_deliveries(
        &srv,
        "r-1",
        &[("extra", "delivered", 1), ("flaky", "delivered", 2)],
    );
    let (status, v) = srv.post("/v1/endpoints/flaky/recover");
    assert_eq!(
        (status, v),
        (202, json!({"endpoint": "flaky", "scheduled": 0}))
    );
    assert_eq!(srv.post("/v1/endpoints/nope/recover").0, 404);
    assert!(list_ids(&srv, "endpoint=flaky&status=failed").is_empty());

    let ids = rx.ids();
    for i in 1..8 {
        let want = if i == 1 { 3 } else { 2 };
        assert_eq!(ids[&r(i)], want, "r-{i}");
    }
}

/// A `recover` the store cannot take (a full disk) is a 503, as a `replay` is: it
/// answered 202 `"scheduled": 0`, which reads as nothing left to recover, while every
/// failed delivery stayed failed (and each further page went to the refusing store).
#[test]
fn a_recover_the_full_disk_cannot_store_is_a_503() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(500));
    let mut opts = ServerOpts::new(&endpoint(
        "down",
        r#"["t"]"#,
        &rx.url("/down"),
        "retry = \"none\"\n",
    ));
    opts.file_size_limit = Some(4 << 20);
    let srv = TestServer::start_with(opts);
    let mut c = srv.connect();
    let ids: Vec<String> = (0..3).map(|i| format!("lost-{i}")).collect();
    for id in &ids {
        assert_eq!(c.send(&event("t", id, "{}")), format!("ok {id} 1"));
        wait_deliveries(&srv, id, &[("down", "failed", 1)]);
    }
    // Events routed nowhere, until the store refuses them.
    c.fill_store("u");
    let (status, body) = srv.post("/v1/endpoints/down/recover");
    assert_eq!(status, 503, "{body}");
    let msg = err_msg(&body);
    assert!(msg.contains("0 scheduled before it stand"), "{msg}");
    // As the replay of one of them says.
    let (status, body) = srv.post("/v1/events/lost-0/replay");
    assert_eq!(status, 503, "{body}");
    // Nothing changed: each still failed, nothing sent again.
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(list_ids(&srv, "endpoint=down&status=failed"), want);
    assert_eq!(rx.count(), 3);
}

#[test]
fn retention_removes_old_events_and_expires_pending_deliveries() {
    let down = TestReceiver::with_script(|_, _| Reply::status(500));
    let ok = TestReceiver::start();
    let eps = [
        endpoint("stuck", r#"["t"]"#, &down.url("/"), "retry = [\"30s\"]"),
        endpoint("fine", r#"["d"]"#, &ok.url("/"), ""),
    ]
    .concat();
    let srv = TestServer::start_with(ServerOpts::new(&eps).server("retention = \"2s\""));
    let mut c = srv.connect();
    const N: usize = 5;
    c.send_each_ok("t", "ret", N);
    assert_eq!(c.send(&event("d", "d-0", "{}")), "ok d-0 1");
    for i in 0..N {
        wait_deliveries(&srv, &format!("ret-{i}"), &[("stuck", "retrying", 1)]);
    }
    wait_deliveries(&srv, "d-0", &[("fine", "delivered", 1)]);
    assert_eq!(c.send(&event("t", "ret-0", "{}")), "dup ret-0");
    let m = srv.metrics();
    assert_eq!(metric(&m, "ricochet_deliveries_expired_total"), 0.0);
    assert_eq!(metric(&m, "ricochet_deliveries_pending"), N as f64);

    let start = Instant::now();
    poll(
        Duration::from_secs(12),
        "events removed and deliveries expired",
        || {
            let status: Vec<u16> = (0..N)
                .map(|i| srv.get(&format!("/v1/events/ret-{i}")).0)
                .chain([srv.get("/v1/events/d-0").0])
                .collect();
            let m = srv.metrics();
            let expired = metric(&m, "ricochet_deliveries_expired_total");
            let pending = metric(&m, "ricochet_deliveries_pending");
            if status.iter().all(|s| *s == 404) && expired >= N as f64 && pending == 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "GET ret-0..{N}, d-0: {status:?}; expired_total {expired}; pending {pending}"
                ))
            }
        },
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "removed before the retention passed"
    );
    assert!(list_ids(&srv, "").is_empty());
    // The idempotency keys went with them: the same ids are new events.
    assert_eq!(c.send(&event("t", "ret-0", "{}")), "ok ret-0 1");
    assert_eq!(c.send(&event("d", "d-0", "{}")), "ok d-0 1");
    wait_deliveries(&srv, "d-0", &[("fine", "delivered", 1)]);
    assert_eq!(ok.ids()["d-0"], 2);
}

/// Deliveries a worker holds also expire when their event passes retention: an ordered
/// endpoint's queue behind a retrying head, and a slow endpoint's backlog waiting for a
/// lane. None is sent after its event is gone, and each is counted once.
#[test]
fn deliveries_a_worker_holds_expire_unsent_past_retention() {
    let down = TestReceiver::with_script(|_, _| Reply::status(500));
    let slow =
        TestReceiver::with_script(|_, _| Reply::status(200).delay(Duration::from_millis(1500)));
    let retries = format!("retry = [{}]", vec!["\"1s\""; 20].join(", "));
    let eps = [
        endpoint(
            "ord",
            r#"["o"]"#,
            &down.url("/"),
            &format!("ordered = true\n{retries}"),
        ),
        endpoint("slow", r#"["s"]"#, &slow.url("/"), "max_in_flight = 1"),
    ]
    .concat();
    let srv = TestServer::start_with(ServerOpts::new(&eps).server("retention = \"2s\""));
    let mut c = srv.connect();
    c.send_each_ok("o", "o", 3);
    c.send_each_ok("s", "s", 4);
    poll(Duration::from_secs(20), "all seven expired", || {
        let m = srv.metrics();
        let expired = metric(&m, "ricochet_deliveries_expired_total");
        let pending = metric(&m, "ricochet_deliveries_pending");
        if pending == 0.0 {
            Ok(())
        } else {
            Err(format!("expired_total {expired}; pending {pending}"))
        }
    });
    // The ordered head was attempted until it expired; those behind it were not while
    // it was. (One may be attempted once it leads, when the retention floor, which moves
    // in steps, passed the head's event a step before its own: the three are accepted
    // within a millisecond or so, and a step can fall between them.)
    let order: Vec<String> = down
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(order.first().map(String::as_str), Some("o-0"), "{order:?}");
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    // Each slow attempt takes 1.5 s: the first two went out before their event passed
    // the floor (2 s, moved every 250 ms), the last never.
    let sent = slow.ids();
    assert!(!sent.contains_key("s-3"), "{sent:?}");
    assert!(sent.values().all(|n| *n == 1), "{sent:?}");
    let m = srv.metrics();
    assert_eq!(
        metric(&m, "ricochet_deliveries_expired_total") as usize + sent.len(),
        7,
        "every delivery ends once: {sent:?}"
    );
}

#[test]
fn admin_token_guards_the_management_calls() {
    let rx = TestReceiver::start();
    let srv = TestServer::start_with(
        ServerOpts::new(&endpoint("sink", r#"["t"]"#, &rx.url("/"), ""))
            .server("admin_token = \"s3cret\""),
    );
    let tok = Some("s3cret");
    let new_ep = ep("tok-ep", &["t"], &rx.url("/tok"), json!({})).to_string();
    let put = json!({"events": ["t"], "url": rx.url("/tok2")}).to_string();
    let calls: Vec<(&str, &str, &str)> = vec![
        ("POST", "/v1/endpoints", new_ep.as_str()),
        ("PUT", "/v1/endpoints/sink", put.as_str()),
        ("DELETE", "/v1/endpoints/sink", ""),
        ("POST", "/v1/endpoints/sink/test", ""),
        ("POST", "/v1/endpoints/sink/recover", ""),
        ("GET", "/v1/events", ""),
        ("GET", "/v1/events?type=t&limit=5", ""),
        ("POST", "/v1/events/tk-1/replay", ""),
        ("POST", "/v1/events/tk-1/replay?endpoint=sink", ""),
    ];
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "tk-1", "{}")), "ok tk-1 1");
    rx.wait_for(1, WAIT);
    for (method, path, body) in &calls {
        for token in [None, Some("wrong")] {
            let (status, v) = http_json(srv.admin, method, path, body, token);
            assert_eq!(status, 401, "{method} {path} {token:?}: {v}");
            assert!(err_msg(&v).contains("token"), "{v}");
        }
    }
    // Nothing got through: no test request, no replay, nothing created or changed.
    let (status, list) = http_json(srv.admin, "GET", "/v1/endpoints", "", tok);
    assert_eq!(status, 200);
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(list["endpoints"][0]["url"], rx.url("/"));

    // With the token, each call works.
    let call = |method: &str, path: &str, body: &str| http_json(srv.admin, method, path, body, tok);
    let wait_delivered = |n: usize| {
        poll(WAIT, "tk-1 delivered", || {
            let (status, v) = call("GET", "/v1/events/tk-1", "");
            assert_eq!(status, 200, "{v}");
            let d = deliveries(&v);
            if d == [dl("sink", "delivered", n)] {
                Ok(())
            } else {
                Err(format!("{d:?}"))
            }
        })
    };
    wait_delivered(1);
    assert_eq!(rx.count(), 1);
    let (status, v) = call("POST", "/v1/endpoints", &new_ep);
    assert_eq!(status, 201, "{v}");
    let (status, v) = call("GET", "/v1/events", "");
    assert_eq!(
        (status, v["events"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{v}"
    );
    let (status, v) = call("GET", "/v1/events?type=t&limit=5", "");
    assert_eq!(status, 200, "{v}");
    let (status, v) = call("POST", "/v1/endpoints/sink/test", "");
    assert_eq!((status, v["success"].clone()), (200, json!(true)), "{v}");
    let (status, v) = call("POST", "/v1/events/tk-1/replay", "");
    assert_eq!(status, 202, "{v}");
    wait_delivered(2);
    let (status, v) = call("POST", "/v1/endpoints/sink/recover", "");
    assert_eq!(
        (status, v),
        (202, json!({"endpoint": "sink", "scheduled": 0}))
    );
    let (status, v) = call("PUT", "/v1/endpoints/sink", &put);
    assert_eq!(status, 200, "{v}");
    let (status, v) = call("DELETE", "/v1/endpoints/tok-ep", "");
    assert_eq!(status, 200, "{v}");
    let (status, v) = call("DELETE", "/v1/endpoints/sink", "");
    assert_eq!(status, 200, "{v}");
}

/// `GET` on the admin API, the body as sent (key order and all).
fn get_raw(srv: &TestServer, path: &str) -> (u16, String) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(srv.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("response");
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

#[test]
fn bad_values_are_400s_naming_the_field_each_once() {
    let rx = TestReceiver::start();
    let srv = TestServer::start("");
    let base = |extra: &str| {
        format!(
            r#"{{"name":"f","events":["t"],"url":"{}"{extra}}}"#,
            rx.url("/f")
        )
    };
    for (extra, want) in [
        (
            r#","timeout":"10 s""#,
            r#"endpoint f: field `timeout`: bad duration unit in "10 s""#,
        ),
        (
            r#","max_rps":-1"#,
            "endpoint f: field `max_rps`: invalid value: integer `-1`, expected a whole number of requests per second, 0 (unlimited) to 4294967295",
        ),
        (
            r#","headers":{"X-Ok":"1","X":1}"#,
            "endpoint f: field `headers.X`: invalid type: integer, expected a string",
        ),
        // A secret of the wrong type is not quoted back (the answer may reach logs).
        (
            r#","headers":"Authorization: Bearer s3cret-26""#,
            "endpoint f: field `headers`: invalid type: string, expected a table",
        ),
        (
            r#","signing_secret":12345678"#,
            "endpoint f: field `signing_secret`: invalid type: integer, expected",
        ),
        (
            r#","disable_after":{"4xx":"x"}"#,
            "endpoint f: field `disable_after.4xx`: invalid type",
        ),
        (
            r#","headers":{"User-Agent":"mine"}"#,
            "endpoint f: field `headers.User-Agent`: User-Agent is set by ricochet on every request and cannot be given",
        ),
        (
            r#","headers":{"user-agent":"mine"}"#,
            "endpoint f: field `headers.user-agent`: user-agent is set by ricochet",
        ),
    ] {
        let (status, v) = http_json(srv.admin, "POST", "/v1/endpoints", &base(extra), None);
        assert_eq!(status, 400, "{extra}: {v}");
        let msg = err_msg(&v);
        assert!(msg.starts_with(want), "{extra}: {msg}");
        assert!(!msg.contains("s3cret") && !msg.contains("12345678"), "{msg}");
    }
    // Every problem, each once: the signing secret's message is not repeated.
    let (status, v) = http_json(
        srv.admin,
        "POST",
        "/v1/endpoints",
        &base(r#","signing_secret":"nope","max_in_flight":0"#),
        None,
    );
    assert_eq!(status, 400, "{v}");
    let msg = err_msg(&v);
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(
        lines,
        [
            "endpoint f: field `max_in_flight`: must be at least 1",
            "endpoint f: field `signing_secret`: each secret must be whsec_<base64> of a non-empty key",
        ],
        "{msg}"
    );
    assert_eq!(srv.get("/v1/endpoints/f").0, 404);
}

#[test]
fn headers_arrive_in_the_order_they_were_given() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint(
        "from-file",
        r#"["t"]"#,
        &rx.url("/file"),
        r#"headers = { "Z-First" = "1", "A-Second" = "2", "M-Third" = "3" }"#,
    ));
    // Sent as written: a JSON object's order is the order the receiver sees.
    let body = format!(
        r#"{{"name":"from-api","events":["t"],"url":"{}","headers":{{"Z-First":"1","A-Second":"2","M-Third":"3"}}}}"#,
        rx.url("/api")
    );
    let (status, v) = http_json(srv.admin, "POST", "/v1/endpoints", &body, None);
    assert_eq!(status, 201, "{v}");
    for name in ["from-api", "from-file"] {
        let (status, text) = get_raw(&srv, &format!("/v1/endpoints/{name}"));
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(r#""headers":{"Z-First":"1","A-Second":"2","M-Third":"3"}"#),
            "{name}: {text}"
        );
    }
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "ord-1", "{}")), "ok ord-1 2");
    let got = rx.wait_for(2, WAIT);
    for r in &got {
        let mine: Vec<&str> = r
            .headers
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| ["Z-First", "A-Second", "M-Third"].contains(k))
            .collect();
        assert_eq!(mine, ["Z-First", "A-Second", "M-Third"], "{}", r.path);
        // ricochet's own User-Agent, once.
        let agents = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
            .count();
        assert_eq!(agents, 1, "{:?}", r.headers);
    }
}

#[test]
fn a_definition_read_edited_and_written_back_keeps_its_secrets() {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let rx = TestReceiver::start();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let srv = TestServer::start(&endpoint(
        "filed",
        r#"["other"]"#,
        &rx.url("/filed"),
        r#"headers = { Authorization = "Bearer file-token" }"#,
    ));
    let created = ep(
        "rt",
        &["t"],
        &rx.url("/v1"),
        json!({
            "headers": {"Authorization": "Bearer real-token", "X-Plain": "p"},
            "signing_secret": secret,
        }),
    );
    let (status, v) = srv.call("POST", "/v1/endpoints", &created);
    assert_eq!(status, 201, "{v}");

    // GET, edit, PUT back as read (live state and all).
    let (status, mut def) = srv.get("/v1/endpoints/rt");
    assert_eq!(status, 200, "{def}");
    assert_eq!(def["headers"]["Authorization"], "[redacted]");
    assert_eq!(def["signing_secret"], "[redacted]");
    def["url"] = json!(rx.url("/v2"));
    let (status, put) = srv.call("PUT", "/v1/endpoints/rt", &def);
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["url"], rx.url("/v2"));
    assert_eq!(put["headers"]["Authorization"], "[redacted]");

    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "rt-1", r#"{"a": 1}"#)), "ok rt-1 1");
    let r = &rx.wait_for(1, WAIT)[0];
    assert_eq!(r.path, "/v2");
    assert_eq!(r.header("Authorization"), Some("Bearer real-token"));
    assert_eq!(r.header("X-Plain"), Some("p"));
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "rt-1.{}.",
            r.header("webhook-timestamp").expect("webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&r.body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(
        r.header("webhook-signature"),
        Some(format!("v1,{want}").as_str())
    );

    // The same for an endpoint of the config file.
    let (_, mut def) = srv.get("/v1/endpoints/filed");
    def["events"] = json!(["t2"]);
    let (status, v) = srv.call("PUT", "/v1/endpoints/filed", &def);
    assert_eq!(status, 200, "{v}");
    assert_eq!(c.send(&event("t2", "rt-2", "{}")), "ok rt-2 1");
    let got = rx.wait_for(2, WAIT);
    assert_eq!(got[1].path, "/filed");
    assert_eq!(got[1].header("Authorization"), Some("Bearer file-token"));

    // Sent elsewhere (another port here), the secrets must be given again: the markers
    // are refused, and nothing changes.
    let elsewhere = TestReceiver::start();
    let mut def = srv.get("/v1/endpoints/rt").1;
    def["url"] = json!(elsewhere.url("/stolen"));
    let (status, v) = srv.call("PUT", "/v1/endpoints/rt", &def);
    assert_eq!(status, 400, "{v}");
    assert!(
        err_msg(&v).contains("field `headers.Authorization`")
            && err_msg(&v).contains("keeps its scheme, host and port"),
        "{v}"
    );
    assert_eq!(srv.get("/v1/endpoints/rt").1["url"], rx.url("/v2"));
    def["headers"]["Authorization"] = json!("Bearer new-token");
    let (status, v) = srv.call("PUT", "/v1/endpoints/rt", &def);
    assert_eq!(status, 400, "{v}");
    assert!(err_msg(&v).contains("field `signing_secret`"), "{v}");
    def["signing_secret"] = json!("whsec_bmV3LXNlY3JldC1rZXktMzItYnl0ZXMtbG9uZyE=");
    let (status, v) = srv.call("PUT", "/v1/endpoints/rt", &def);
    assert_eq!(status, 200, "{v}");
    def["url"] = json!(rx.url("/v2"));
    def["headers"]["Authorization"] = json!("Bearer real-token");
    def["signing_secret"] = json!(secret);
    let (status, v) = srv.call("PUT", "/v1/endpoints/rt", &def);
    assert_eq!(status, 200, "{v}");
    assert_eq!(elsewhere.count(), 0);

    // A marker with nothing stored behind it is refused, and changes nothing.
    let mut def = srv.get("/v1/endpoints/rt").1;
    def["headers"] = json!({"Proxy-Authorization": "[redacted]"});
    let (status, v) = srv.call("PUT", "/v1/endpoints/rt", &def);
    assert_eq!(status, 400, "{v}");
    assert!(
        err_msg(&v).contains("field `headers.Proxy-Authorization`"),
        "{v}"
    );
    let mut fresh = ep("fresh", &["t"], &rx.url("/f"), json!({}));
    fresh["signing_secret"] = json!("[redacted]");
    let (status, v) = srv.call("POST", "/v1/endpoints", &fresh);
    assert_eq!(status, 400, "{v}");
    assert!(err_msg(&v).contains("field `signing_secret`"), "{v}");
    assert_eq!(srv.get("/v1/endpoints/fresh").0, 404);
    assert_eq!(srv.get("/v1/endpoints/rt").1["url"], rx.url("/v2"));
}

/// Rewrites the stored definition of endpoint `name` in the stopped server's data dir
/// as `edit` changes it: what an older version, checking templates less strictly, could
/// have stored.
fn rewrite_stored_definition(
    dir: &tempfile::TempDir,
    name: &str,
    edit: impl FnOnce(&mut ricochet::config::EndpointConfig),
) {
    let store = ricochet::store::Store::open(&dir.path().join("data")).unwrap();
    let stored = store.stored_endpoints().unwrap();
    let e = stored.iter().find(|e| e.name == name).unwrap();
    let mut cfg = e.config.clone().unwrap();
    edit(&mut cfg);
    let mut batch = store.batch();
    batch.put_endpoint_config(&store, e.meta.id, name, &cfg);
    store.commit(batch, true).unwrap();
}

/// A newer version may check templates more strictly than the one that stored an
/// endpoint. Such an endpoint is kept, disabled with the reason, its deliveries waiting
/// paused; a `PUT` of a definition that compiles runs it again, deliveries included.
#[test]
fn a_stored_endpoint_that_no_longer_compiles_waits_for_a_fixed_definition() {
    // The receiver fails at first, so the event's delivery is still pending at the stop.
    let rx = TestReceiver::with_script(|_, n| Reply::status(if n == 0 { 500 } else { 200 }));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new("");
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    let (status, v) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep(
            "legacy",
            &["t"],
            &rx.url("/legacy"),
            json!({"body": "{\"id\": {Id}}", "retry": ["1s"]}),
        ),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        srv.connect().send(&event("t", "l-1", r#"{"Id":"a"}"#)),
        "ok l-1 1"
    );
    wait_deliveries(&srv, "l-1", &[("legacy", "retrying", 1)]);
    srv.kill9();
    drop(srv);

    // What an older version could have stored: a json body that is not JSON.
    rewrite_stored_definition(&dir, "legacy", |cfg| cfg.body = Some("hello {Id}".into()));

    let srv = TestServer::start_in(dir.clone(), &opts);
    let (status, v) = srv.get("/v1/endpoints/legacy");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["enabled"], false, "{v}");
    assert_eq!(v["body"], "hello {Id}");
    let reason = v["disabled_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("its stored definition no longer compiles")
            && reason.contains("field `body`"),
        "{reason}"
    );
    // Its delivery waits, paused; it cannot be enabled or tested as it is.
    wait_deliveries(&srv, "l-1", &[("legacy", "paused", 1)]);
    let (status, v) = srv.call("POST", "/v1/endpoints/legacy/enable", &Value::Null);
    assert_eq!(status, 409, "{v}");
    assert_eq!(
        srv.call("POST", "/v1/endpoints/legacy/test", &Value::Null)
            .0,
        409
    );
    assert_eq!(rx.count(), 1);

    // A definition that compiles: the endpoint runs again and its delivery arrives.
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/legacy",
        &ep(
            "legacy",
            &["t"],
            &rx.url("/legacy"),
            json!({"body": "{\"id\": \"{Id}\"}", "retry": ["1s"]}),
        ),
    );
    assert_eq!(status, 200, "{v}");
    wait_deliveries(&srv, "l-1", &[("legacy", "delivered", 2)]);
    let got = rx.requests();
    assert_eq!(got[1].body, br#"{"id": "a"}"#);
    assert_eq!(srv.get("/v1/endpoints/legacy").1["enabled"], true);
}

/// The error line of a stored endpoint that no longer compiles, logged at each start,
/// leaves out the template's source line: a custom header's value may be a credential
/// no name rule recognises (the API's `disabled_reason` still has the whole message).
#[test]
fn a_stored_endpoint_that_no_longer_compiles_is_logged_without_its_template() {
    let rx = TestReceiver::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new("");
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    let (status, v) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep(
            "legacy",
            &["t"],
            &rx.url("/legacy"),
            json!({"headers": {"X-Partner-Ref": "HEADERSECRET {Id}"}}),
        ),
    );
    assert_eq!(status, 201, "{v}");
    srv.kill9();
    drop(srv);
    // What an older version could have stored: a header template that does not compile.
    rewrite_stored_definition(&dir, "legacy", |cfg| {
        cfg.headers = vec![("X-Partner-Ref".into(), "HEADERSECRET {zz(".into())];
    });
    let srv = TestServer::start_in(dir.clone(), &opts);
    srv.wait_log("no longer compiles", Duration::from_secs(10));
    let log = srv.log();
    assert!(
        log.contains("field `headers.X-Partner-Ref`: line 1, column 15: unknown function `zz`"),
        "{log}"
    );
    assert!(!log.contains("HEADERSECRET"), "{log}");
    let (_, v) = srv.get("/v1/endpoints/legacy");
    assert_eq!(v["enabled"], false, "{v}");
}

/// No attempt of a deleted endpoint begins after its `DELETE` is answered: the answer
/// waits for its worker to have dropped what it held, as a `disable`'s does (an attempt
/// in flight goes on). Answered once stored, the worker went on starting attempts of its
/// queue until it read the deletion: 56 and 76 attempts began 10-13 ms after the
/// answer, in 2 of 8 deletes of an endpoint draining 20,000 (helper churn, session 53).
/// Each of 12 endpoints is deleted here while it drains 4,000; an attempt whose request
/// the receiver read after the answer must have begun before it (`at` is stamped as the
/// attempt begins, in wall-clock milliseconds).
#[test]
fn no_attempt_of_a_deleted_endpoint_begins_after_its_delete_is_answered() {
    let rx = TestReceiver::start();
    let srv = TestServer::start("");
    let mut late = Vec::new();
    for k in 0..12 {
        let name = format!("del{k}");
        let etype = format!("t{k}");
        let path = format!("/{name}");
        let (status, v) = srv.call(
            "POST",
            "/v1/endpoints",
            &ep(
                &name,
                &[&etype],
                &rx.url(&path),
                json!({"max_in_flight": 64}),
            ),
        );
        assert_eq!(status, 201, "{v}");
        assert_eq!(srv.pipeline(event_lines(&etype, &name, 4000)), 4000);
        // Deleted while it drains.
        rx.wait_until(WAIT, "deliveries under way", |got| {
            got.iter().filter(|r| r.path == path).count() >= 500
        });
        let (status, v) = srv.call("DELETE", &format!("/v1/endpoints/{name}"), &Value::Null);
        let (answered_at, answered_ms) = (Instant::now(), unix_ms() as i64);
        assert_eq!(status, 200, "{v}");
        // Every attempt has ended (failed or delivered) once nothing is pending.
        srv.wait_nothing_pending(WAIT);
        let read_after: Vec<String> = rx
            .requests()
            .into_iter()
            .filter(|r| r.path == path && r.at > answered_at)
            .map(|r| r.header("webhook-id").unwrap().to_string())
            .collect();
        for id in read_after {
            let ev = srv.event(&id);
            for d in ev["deliveries"].as_array().unwrap() {
                for a in d["attempts"].as_array().unwrap() {
                    let began = ms(a["at"].as_str().unwrap());
                    if began > answered_ms {
                        late.push((name.clone(), id.clone(), began - answered_ms));
                    }
                }
            }
        }
    }
    assert!(
        late.is_empty(),
        "attempts begun after the delete's answer (endpoint, event, ms after): {} {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
}

/// A deleted endpoint's deliveries still pending end `failed` (nothing can deliver them),
/// whichever way they waited: a retry on disk, a first attempt held by `min_delay`, a
/// paused one. The log's filters and the pending count agree.
#[test]
fn a_deleted_endpoint_s_pending_deliveries_end_failed() {
    let rx = TestReceiver::with_script(|r, _| {
        Reply::status(if r.path.starts_with("/ok") { 200 } else { 500 })
    });
    let srv = TestServer::start("");
    for (name, etype, extra, path) in [
        ("retrying", "r", json!({"retry": ["1h"]}), "/"),
        ("waiting", "w", json!({"min_delay": "1h"}), "/"),
        ("paused", "p", json!({"min_delay": "1h"}), "/"),
        ("soon", "s", json!({"retry": ["1s", "1s"]}), "/"),
        ("replayed", "x", json!({"retry": "none"}), "/"),
        ("redone", "y", json!({}), "/ok"),
    ] {
        let (status, v) = srv.call(
            "POST",
            "/v1/endpoints",
            &ep(name, &[etype], &rx.url(path), extra),
        );
        assert_eq!(status, 201, "{v}");
    }
    let mut c = srv.connect();
    send_routed_once(
        &mut c,
        &[
            ("r", "d-r"),
            ("w", "d-w"),
            ("p", "d-p"),
            ("s", "d-s"),
            ("x", "d-x"),
            ("y", "d-y"),
        ],
    );
    srv.wait_event("d-r", WAIT, |v| states(v) == ["retrying"]);
    srv.wait_event("d-s", WAIT, |v| states(v) == ["retrying"]);
    assert_eq!(srv.post("/v1/endpoints/paused/disable").0, 200);
    srv.wait_event("d-p", WAIT, |v| states(v) == ["paused"]);
    assert_eq!(states(&srv.event("d-w")), ["pending"]);
    // Failed, then replayed while disabled: pending again (paused), until the delete.
    srv.wait_event("d-x", WAIT, |v| states(v) == ["failed"]);
    assert_eq!(srv.post("/v1/endpoints/replayed/disable").0, 200);
    assert_eq!(srv.post("/v1/events/d-x/replay").0, 202);
    srv.wait_event("d-x", WAIT, |v| states(v) == ["paused"]);
    // Delivered, then replayed while disabled: the same, though its last attempt was a
    // success (it read `delivered` again after the delete, and `status=failed` missed it).
    srv.wait_event("d-y", WAIT, |v| states(v) == ["delivered"]);
    assert_eq!(srv.post("/v1/endpoints/redone/disable").0, 200);
    assert_eq!(srv.post("/v1/events/d-y/replay").0, 202);
    srv.wait_event("d-y", WAIT, |v| states(v) == ["paused"]);

    for name in [
        "retrying", "waiting", "paused", "soon", "replayed", "redone",
    ] {
        assert_eq!(
            srv.call("DELETE", &format!("/v1/endpoints/{name}"), &Value::Null)
                .0,
            200
        );
    }
    for id in ["d-r", "d-w", "d-p", "d-x", "d-y"] {
        assert_eq!(states(&srv.event(id)), ["failed"], "{id}");
    }
    // Its retry due within the loader's second is its worker's: failed once the worker
    // hands it back.
    srv.wait_event("d-s", WAIT, |v| states(v) == ["failed"]);
    let ids = |query: &str| -> Vec<String> {
        list_all(&srv, query)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids("status=failed"),
        ["d-y", "d-x", "d-s", "d-p", "d-w", "d-r"]
    );
    assert_eq!(ids("status=failed&endpoint=retrying"), ["d-r"]);
    assert_eq!(ids("status=failed&endpoint=redone"), ["d-y"]);
    for state in ["pending", "retrying", "paused"] {
        assert!(ids(&format!("status={state}")).is_empty(), "{state}");
    }
    srv.wait_metric("ricochet_deliveries_pending", WAIT, |v| v == 0.0);
    for (id, n) in [("d-r", 1), ("d-w", 0), ("d-p", 0)] {
        let v = srv.event(id);
        assert_eq!(
            v["deliveries"][0]["attempts"].as_array().unwrap().len(),
            n,
            "{id}"
        );
    }
}

/// Endpoints that take every delivery socket of a server started with
/// [`few_sockets_lookups_held`] (44) when their deliveries hang at `stuck`: `first`
/// (events of type `etype`) nine tenths of them (40), then `hog1`-`hog4` (types
/// `h1`-`h4`) one each.
fn socket_takers(first: &str, etype: &str, stuck: &TestReceiver) -> String {
    let mut eps = endpoint(
        first,
        &format!(r#"["{etype}"]"#),
        &stuck.url("/"),
        "max_in_flight = 40\ntimeout = \"300s\"",
    );
    for i in 1..=4 {
        eps += &endpoint(
            &format!("hog{i}"),
            &format!(r#"["h{i}"]"#),
            &stuck.url("/"),
            "timeout = \"300s\"",
        );
    }
    eps
}

/// `opts` with 300 open files (44 delivery sockets) and every host-name look-up held
/// until a file exists at `go` (the `RICOCHET_TEST_HOLD_LOOKUPS` hook).
fn few_sockets_lookups_held(mut opts: ServerOpts, go: &std::path::Path) -> ServerOpts {
    opts.open_files_limit = Some(300);
    opts.env.push((
        "RICOCHET_TEST_HOLD_LOOKUPS".into(),
        go.to_str().unwrap().into(),
    ));
    opts
}

/// A server whose 44 delivery sockets (300 open files) hung deliveries all hold, with an
/// endpoint `named` whose URL names its host: `named-0` accepted, its lane waits for
/// the host's addresses, every look-up held ([`Self::release`]) by a test hook.
struct SocketsTakenLookupHeld {
    srv: TestServer,
    stuck: TestReceiver,
    /// Answers the hung deliveries once opened.
    gate: Gate,
    go: std::path::PathBuf,
    _lookups: tempfile::TempDir,
}

impl SocketsTakenLookupHeld {
    fn start() -> SocketsTakenLookupHeld {
        let (stuck, gate) = TestReceiver::gated();
        // 300 open files leave 44 delivery sockets: nine tenths (40) for one endpoint,
        // then one more for each of four others, and none for anyone after them.
        let mut eps = socket_takers("hog", "h", &stuck);
        let by_name = stuck.url("/").replace("127.0.0.1", "localhost");
        eps += &endpoint("named", r#"["n"]"#, &by_name, "");
        let lookups = tempfile::tempdir().unwrap();
        let go = lookups.path().join("go");
        let srv = TestServer::start_with(few_sockets_lookups_held(ServerOpts::new(&eps), &go));
        let mut c = srv.connect();
        c.send_each_ok("h", "hog", 40);
        stuck.wait_for(40, WAIT);
        for i in 1..=4 {
            c.send_each_ok(&format!("h{i}"), &format!("hog{i}"), 1);
        }
        stuck.wait_for(44, WAIT);
        c.send_each_ok("n", "named", 1);
        srv.wait_log("test hook: look-up held", WAIT);
        SocketsTakenLookupHeld {
            srv,
            stuck,
            gate,
            go,
            _lookups: lookups,
        }
    }

    /// Lets the look-ups answer: `named-0`'s attempt finds every socket taken.
    fn release(&self) {
        std::fs::write(&self.go, b"").unwrap();
    }

    /// Waits until `named-0`'s delivery is `state` with no attempt made: no request
    /// left for it.
    fn ends_unsent(&self, state: &str) {
        let v = self
            .srv
            .wait_event("named-0", WAIT, |v| states(v) == [state]);
        let attempts = v["deliveries"][0]["attempts"].as_array().unwrap();
        assert!(attempts.is_empty(), "no request left: {v}");
    }
}

/// A delivery whose lane was waiting for its host's addresses when its endpoint was
/// deleted, and then found no delivery socket free, ends `failed` as the deletion's
/// queued ones did. It was put back in the deleted endpoint's queue, which nothing reads
/// again: pending until the next restart, and counted so (helper churn, session 53, by
/// reading; found here with the look-up held by a test hook).
#[test]
fn a_delivery_waiting_for_addresses_when_its_endpoint_is_deleted_is_not_left_pending() {
    let held = SocketsTakenLookupHeld::start();
    let srv = &held.srv;
    let (status, v) = srv.call("DELETE", "/v1/endpoints/named", &Value::Null);
    assert_eq!(status, 200, "{v}");
    held.release();
    held.ends_unsent("failed");
    srv.wait_metric("ricochet_deliveries_pending", WAIT, |v| v == 44.0);
    assert_eq!(held.stuck.count(), 44);
}

/// A delivery whose lane was waiting for its host's addresses when its endpoint was
/// disabled, and then found no delivery socket free, waits paused with the endpoint's
/// others and goes once it is enabled. The disable's answer named it in flight, so the
/// store left it where it was for the attempt's outcome to move; put back in the queue
/// under the generation before the disable, the lane dropped it as a stale copy: below
/// the loader's cursor and not paused, pending until the next restart (helper jobs,
/// session 54).
#[test]
fn a_delivery_waiting_for_addresses_when_its_endpoint_is_disabled_waits_paused() {
    let held = SocketsTakenLookupHeld::start();
    let srv = &held.srv;
    assert_eq!(srv.post("/v1/endpoints/named/disable").0, 200);
    held.release();
    held.ends_unsent("paused");
    srv.wait_metric("ricochet_deliveries_paused", WAIT, |v| v == 1.0);
    held.gate.open();
    assert_eq!(srv.post("/v1/endpoints/named/enable").0, 200);
    srv.wait_event("named-0", WAIT, |v| states(v) == ["delivered"]);
    srv.wait_nothing_pending(WAIT);
}

/// As above, the endpoint disabled and enabled again while the look-up was held: the
/// delivery goes once a socket is free, as one that was never disabled would.
#[test]
fn a_delivery_waiting_for_addresses_across_a_disable_and_an_enable_goes() {
    let held = SocketsTakenLookupHeld::start();
    let srv = &held.srv;
    assert_eq!(srv.post("/v1/endpoints/named/disable").0, 200);
    assert_eq!(srv.post("/v1/endpoints/named/enable").0, 200);
    held.release();
    srv.wait_metric("ricochet_delivery_holds_total", WAIT, |v| v >= 1.0);
    held.gate.open();
    srv.wait_event("named-0", WAIT, |v| states(v) == ["delivered"]);
    srv.wait_nothing_pending(WAIT);
}

/// A server where `named`, an ordered endpoint made FIFO by a `PUT`, holds the retry of
/// its head `named-0` put back in its queue: the retry, attempted from the worker's own
/// copy (`retry = ["0s"]`), waited for its host's addresses (held by a test hook) while
/// the `PUT` came, then found no delivery socket (300 open files: 44 sockets, 40 held by
/// `big`, one each by `hog1`-`hog4`, their receiver hung). The store's copy of that
/// retry has not come: the loader's cursor stands still while workers hold all the event
/// bytes they may (`big`'s backlog of 700 KB events).
struct HeadRetryPutBack {
    srv: TestServer,
    c: Conn,
    /// `named`'s receiver (answers 200).
    rx: TestReceiver,
    /// Answers the hung deliveries once opened.
    gate: Gate,
    _stuck: TestReceiver,
    /// Its look-ups go on once this file exists.
    go: std::path::PathBuf,
    /// About when `named-0` was accepted (its event's time).
    head_at: Instant,
    _lookups: tempfile::TempDir,
}

impl HeadRetryPutBack {
    fn start() -> HeadRetryPutBack {
        let h = HeadRetryPutBack::start_held();
        h.release();
        h
    }

    /// As [`Self::start`], but the retry's attempt still waits for its look-up: the
    /// store's copy of the retry, handed over now, comes during the attempt.
    fn start_held() -> HeadRetryPutBack {
        let (stuck, gate) = TestReceiver::gated();
        let rx = TestReceiver::start();
        let mut eps = socket_takers("big", "b", &stuck);
        let by_name = rx.url("/").replace("127.0.0.1", "localhost");
        eps += &endpoint(
            "named",
            r#"["n"]"#,
            &by_name,
            "ordered = true\ntimeout = \"15s\"\nretry = [\"0s\"]",
        );
        // Its delivery fails at once, with no socket and no look-up (its URL renders
        // with no host): once it has, the loader's cursor has passed every key before it
        // (`min_delay` keeps it from going ahead of the cursor).
        eps += &endpoint(
            "probe",
            r#"["p"]"#,
            "http://{no_such_field}/",
            "min_delay = \"2s\"",
        );
        let lookups = tempfile::tempdir().unwrap();
        let go = lookups.path().join("go");
        // One worker: what the loader hands over reaches it in the loader's order.
        let opts = ServerOpts::new(&eps).arg("--workers").arg("1");
        let srv = TestServer::start_with(few_sockets_lookups_held(opts, &go));
        let mut c = srv.connect();
        let data = format!(r#"{{"blob":"{}"}}"#, "x".repeat(700_000));
        let big = |c: &mut Conn, from: usize, to: usize| {
            for i in from..to {
                let id = format!("big-{i}");
                assert_eq!(c.send(&event("b", &id, &data)), format!("ok {id} 1"));
            }
        };
        big(&mut c, 0, 40);
        stuck.wait_for(40, WAIT);
        for i in 1..=4 {
            c.send_each_ok(&format!("h{i}"), &format!("hog{i}"), 1);
        }
        stuck.wait_for(44, WAIT);
        let head_at = Instant::now();
        c.send_each_ok("n", "named", 1);
        srv.wait_log("test hook: look-up held", WAIT);
        let mut def = srv.get("/v1/endpoints/named").1;
        def["timeout"] = json!("300s");
        let (status, v) = srv.call("PUT", "/v1/endpoints/named", &def);
        assert_eq!(status, 200, "{v}");
        // 160 more while the first attempt waits: workers take 152 of them (with the 40
        // in flight, 128 MiB), and the loader's cursor stops there.
        big(&mut c, 40, 200);
        srv.wait_metric("ricochet_deliveries_in_memory", WAIT, |v| v >= 197.0);
        let v = srv.event("named-0");
        assert_eq!(
            v["deliveries"][0]["attempts"].as_array().unwrap().len(),
            0,
            "workers were full before the first attempt ended: {v}"
        );
        // The first attempt times out waiting (15 s: the 112 MB above, which must be in
        // before it ends, take seconds on a loaded machine); its retry, the worker's own
        // copy, is attempted at once under the new timeout and waits for the same
        // look-up. The store's copy of the retry waits behind the cursor.
        srv.wait_event("named-0", Duration::from_secs(30), |v| {
            v["deliveries"][0]["attempts"].as_array().unwrap().len() == 1
        });
        def["ordered"] = json!(false);
        def["max_in_flight"] = json!(1);
        let (status, v) = srv.call("PUT", "/v1/endpoints/named", &def);
        assert_eq!(status, 200, "{v}");
        // The worker has the `PUT` before this scrape (its mailbox answers in order).
        srv.metrics();
        HeadRetryPutBack {
            srv,
            c,
            rx,
            gate,
            _stuck: stuck,
            go,
            head_at,
            _lookups: lookups,
        }
    }

    /// The look-up answers: no socket, and the retry's kept copy is put back in the
    /// FIFO queue.
    fn release(&self) {
        std::fs::write(&self.go, b"").unwrap();
        self.srv
            .wait_metric("ricochet_delivery_holds_total", WAIT, |v| v >= 1.0);
    }

    /// `PUT`s `named` with `change` made to its definition.
    fn put(&self, change: impl FnOnce(&mut Value)) {
        let mut def = self.srv.get("/v1/endpoints/named").1;
        change(&mut def);
        let (status, v) = self.srv.call("PUT", "/v1/endpoints/named", &def);
        assert_eq!(status, 200, "{v}");
    }

    /// Room in worker memory: `big` deleted, the loader's cursor goes on, and once
    /// `probe-0` has failed, it has handed over every key due before it.
    fn make_room(&mut self) {
        self.c.send_each_ok("p", "probe", 1);
        let (status, v) = self.srv.call("DELETE", "/v1/endpoints/big", &Value::Null);
        assert_eq!(status, 200, "{v}");
        self.srv
            .wait_event("probe-0", WAIT, |v| states(v) == ["failed"]);
    }

    /// Sockets free: `named-0` is delivered, then `named-1` goes behind whatever is left
    /// in `named`'s queue (one lane); how many times `named-0` reached the receiver.
    fn head_sent(&mut self) -> usize {
        self.gate.open();
        self.srv
            .wait_event("named-0", WAIT, |v| states(v) == ["delivered"]);
        assert_eq!(self.c.send(&event("n", "named-1", "{}")), "ok named-1 1");
        self.rx.wait_until(WAIT, "the one after the head", |got| {
            got.iter()
                .any(|r| r.header("webhook-id") == Some("named-1"))
        });
        self.srv.wait_nothing_pending(WAIT);
        self.rx
            .requests()
            .iter()
            .filter(|r| r.header("webhook-id") == Some("named-0"))
            .count()
    }
}

/// The store's copy of an ordered head's retry, come after the worker put its own copy
/// back ([`HeadRetryPutBack`]). Queued beside the kept copy, both went: the head twice at
/// the receiver, its outcome recorded twice (helper lanes, session 55). The store's copy
/// now takes the kept one's place.
#[test]
fn an_ordered_head_s_retry_that_found_no_socket_after_a_put_to_fifo_goes_once() {
    let mut h = HeadRetryPutBack::start();
    h.make_room();
    assert_eq!(h.head_sent(), 1, "the head's retry went once");
}

/// As above, the endpoint disabled and enabled before the store's copy comes: the
/// disable drops the kept copy, and the copy the store resumes at the enable is the
/// delivery, not one to drop as the kept copy's.
#[test]
fn an_ordered_head_s_retry_put_back_then_paused_goes_once_enabled() {
    let mut h = HeadRetryPutBack::start();
    assert_eq!(h.srv.post("/v1/endpoints/named/disable").0, 200);
    h.srv
        .wait_event("named-0", WAIT, |v| states(v) == ["paused"]);
    h.make_room();
    assert_eq!(h.srv.post("/v1/endpoints/named/enable").0, 200);
    assert_eq!(h.head_sent(), 1, "the resumed head went once");
}

/// As above, but the store's copy comes while the retry's attempt still waits for its
/// look-up, and is dropped as the kept copy's (the endpoint FIFO by then); the attempt
/// then finds no socket and puts the kept copy back. A `PUT` to `ordered` and back to
/// FIFO dropped that kept copy as one whose store copy comes in its time, and nothing
/// was left of the delivery: pending, never sent, until the next start (helper lanes2,
/// session 55). The kept copy whose attempt sent nothing now stays.
#[test]
fn an_ordered_head_s_retry_put_back_goes_once_after_a_put_to_ordered_and_back() {
    let mut h = HeadRetryPutBack::start_held();
    h.make_room();
    h.release();
    // Both while the lane waits a second before it tries the kept copy again.
    h.put(|d| d["ordered"] = json!(true));
    h.put(|d| d["ordered"] = json!(false));
    assert_eq!(h.head_sent(), 1, "the head's retry went once");
}

/// As [`an_ordered_head_s_retry_that_found_no_socket_after_a_put_to_fifo_goes_once`],
/// but a `PUT` raises `min_delay` past the head's event time plus what has passed: the
/// lane parks the kept copy in the timer wheel until then. Another `PUT` takes the
/// `min_delay` back; the store's copy comes. Queued, it went at once, and the kept copy
/// again when it came out of the wheel (helper lanes2, session 55); it now takes the
/// kept copy's place in the wheel.
#[test]
fn an_ordered_head_s_retry_parked_for_a_min_delay_goes_once() {
    let mut h = HeadRetryPutBack::start();
    let exits = h
        .srv
        .metrics()
        .value("ricochet_lanes_idle_exits_total", &[]);
    let exits = exits.unwrap_or(0.0);
    // Out of the wheel then (the event's time is a moment after `head_at`).
    let delay = h.head_at.elapsed().as_secs() + 15;
    h.put(|d| d["min_delay"] = json!(format!("{delay}s")));
    // Parked, its lane has nothing left and, sockets scarce, ends after a second idle
    // (`named`'s is the only lane not in flight).
    h.srv
        .wait_metric("ricochet_lanes_idle_exits_total", WAIT, |v| v > exits);
    h.put(|d| d["min_delay"] = json!("0s"));
    h.make_room();
    // Nothing shows the kept copy leave the wheel when it is no longer there: wait for
    // its time.
    let parked_until = h.head_at + Duration::from_secs(delay + 2);
    std::thread::sleep(parked_until.saturating_duration_since(Instant::now()));
    assert_eq!(h.head_sent(), 1, "the head's retry went once");
}

/// The config file deletes the endpoints it no longer has and disables those it sets
/// `enabled = false`, at start. Their deliveries waiting on disk end `failed` and
/// `paused` right after, as a delete or a disable over the API does: not as each falls
/// due, an hour later here. The log's filters and the counts agree.
#[test]
fn config_file_removal_and_disable_settle_waiting_deliveries_at_start() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(500));
    let retry = r#"retry = ["1h"]"#;
    let waits = r#"min_delay = "1h""#;
    let off = |extra: &str| {
        endpoint(
            "off",
            r#"["o"]"#,
            &rx.url("/o"),
            &format!("{retry}\n{extra}"),
        )
    };
    let first = [
        endpoint("gone", r#"["g"]"#, &rx.url("/g"), retry),
        endpoint("gone-waiting", r#"["w"]"#, &rx.url("/w"), waits),
        endpoint("gone-paused", r#"["p"]"#, &rx.url("/p"), waits),
        off(""),
    ]
    .concat();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut srv = TestServer::start_in(dir.clone(), &ServerOpts::new(&first));
    let mut c = srv.connect();
    send_routed_once(
        &mut c,
        &[("g", "g-1"), ("w", "w-1"), ("p", "p-1"), ("o", "o-1")],
    );
    srv.wait_event("g-1", WAIT, |v| states(v) == ["retrying"]);
    srv.wait_event("o-1", WAIT, |v| states(v) == ["retrying"]);
    assert_eq!(srv.post("/v1/endpoints/gone-paused/disable").0, 200);
    srv.wait_event("p-1", WAIT, |v| states(v) == ["paused"]);
    assert_eq!(states(&srv.event("w-1")), ["pending"]);
    drop(c);
    assert_eq!(srv.stop(), Some(0));

    let srv = TestServer::start_in(dir, &ServerOpts::new(&off("enabled = false")));
    // (The committer fails them in its first pages, right after the start.)
    for id in ["g-1", "w-1", "p-1"] {
        srv.wait_event(id, WAIT, |v| states(v) == ["failed"]);
    }
    assert_eq!(states(&srv.event("o-1")), ["paused"]);
    let ids = |query: &str| -> Vec<String> {
        list_all(&srv, query)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("status=failed"), ["p-1", "w-1", "g-1"]);
    assert_eq!(ids("status=paused"), ["o-1"]);
    for state in ["pending", "retrying"] {
        assert!(ids(&format!("status={state}")).is_empty(), "{state}");
    }
    let m = srv.metrics();
    assert_eq!(m.value("ricochet_deliveries_pending", &[]), Some(1.0));
    assert_eq!(m.value("ricochet_deliveries_paused", &[]), Some(1.0));
    // Enabled again, its paused retry goes out at once, not an hour after its attempt.
    assert_eq!(srv.post("/v1/endpoints/off/enable").0, 200);
    srv.wait_event("o-1", WAIT, |v| {
        v["deliveries"][0]["attempts"].as_array().unwrap().len() == 2
    });
}

/// Clients writing one name at once: each `POST`/`PUT` answer shows the definition that
/// call applied. It was read back after the write, so it could show another client's
/// (a 201 with the other's URL), or a 404 for a create a `DELETE` had just undone.
#[test]
fn a_create_or_replace_answers_with_what_it_applied_whoever_writes_next() {
    let srv = TestServer::start("");
    let admin = srv.admin;
    // 300 calls of `method` on `path` with url `url`, each answered `ok` showing that url
    // or `other` (409 or 404: the name taken or gone), then a `DELETE` with `delete`;
    // the answers that were neither.
    let writer = move |method: &'static str,
                       path: &'static str,
                       url: &'static str,
                       ok: u16,
                       other: u16,
                       delete: bool| {
        std::thread::spawn(move || {
            let def = format!(r#"{{"name":"r","events":["t"],"url":"{url}"}}"#);
            let mut wrong = Vec::new();
            for _ in 0..300 {
                let (status, v) = http_json(admin, method, path, &def, None);
                if !(status == ok && v["url"] == url || status == other) {
                    wrong.push(format!("{method} {status} {v}"));
                }
                if delete {
                    http_json(admin, "DELETE", "/v1/endpoints/r", "", None);
                }
            }
            wrong
        })
    };
    let creator = writer("POST", "/v1/endpoints", "http://a.example/", 201, 409, true);
    let replacer = writer(
        "PUT",
        "/v1/endpoints/r",
        "http://b.example/",
        200,
        404,
        false,
    );
    let mut wrong = creator.join().unwrap();
    wrong.extend(replacer.join().unwrap());
    assert!(
        wrong.is_empty(),
        "{} answers not the caller's: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
}

#[test]
fn deleting_an_endpoint_with_deliveries_in_its_timers_logs_no_warning_per_delivery() {
    // 200 deliveries held by `min_delay` in the worker's timer wheel when the endpoint
    // is deleted: each one, firing, was dropped with a WARN line of its own (75,518 in
    // a 43-minute churn of endpoints). They end failed, as the deletion says, quietly.
    let rx = TestReceiver::start();
    let srv = TestServer::start("");
    let (status, v) = srv.call(
        "POST",
        "/v1/endpoints",
        &ep("later", &["t"], &rx.url("/"), json!({"min_delay": "900ms"})),
    );
    assert_eq!(status, 201, "{v}");
    srv.connect().send_each_ok("t", "later", 200);
    let (status, _) = srv.call("DELETE", "/v1/endpoints/later", &Value::Null);
    assert_eq!(status, 200);
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(20),
        |v| v == 0.0,
    );
    let v = srv.event("later-199");
    assert_eq!(states(&v), ["failed"], "{v}");
    let warnings = srv.log().lines().filter(|l| l.contains(" WARN ")).count();
    assert!(warnings < 5, "{warnings} WARN lines:\n{}", srv.log());
    assert_eq!(rx.count(), 0);
}

#[test]
fn a_start_names_a_few_endpoints_that_left_the_file_and_counts_the_rest() {
    // A file cut from 10,000 endpoints to 100 wrote 9,900 warnings at the start.
    let rx = TestReceiver::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let text: String = (0..25)
        .map(|i| endpoint(&format!("f{i}"), r#"["t"]"#, &rx.url("/"), ""))
        .collect();
    let mut srv = TestServer::start_in(dir.clone(), &ServerOpts::new(&text));
    assert_eq!(srv.stop(), Some(0));
    drop(srv);
    let mut srv = TestServer::start_in(dir.clone(), &ServerOpts::new(""));
    for i in 0..25 {
        assert_eq!(srv.get(&format!("/v1/endpoints/f{i}")).0, 404);
    }
    let log = srv.log();
    let named = log.matches("endpoint left the config file").count();
    assert_eq!(named, 10, "{log}");
    assert!(
        log.lines().any(|l| l
            .contains("more endpoints left the config file, deleted as those named above")
            && l.contains("more=15")
            && l.contains("deleted=25")),
        "{log}"
    );
    assert_eq!(srv.stop(), Some(0));
}
