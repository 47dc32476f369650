//! The admin API: HTTP ingest, endpoints, the bearer token, `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ricochet::metrics::Exposition;
use serde_json::Value;

use crate::harness::*;

/// A response as read off the wire.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive connection to the admin API.
struct Http {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let s = TcpStream::connect(addr).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Http { s, buf: Vec::new() }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        // The server may answer (413) before reading everything; the answer still comes.
        let _ = self.s.write_all(&bytes);
        self.read_response()
    }

    fn read_response(&mut self) -> Resp {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("HTTP response") {
                let status = r.code.unwrap();
                let headers = owned_headers(r.headers);
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                while self.buf.len() < n + len {
                    let k = self.s.read(&mut chunk).expect("read body");
                    assert!(k > 0, "connection closed inside a response body");
                    self.buf.extend_from_slice(&chunk[..k]);
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Resp {
                    status,
                    headers,
                    body,
                };
            }
            let k = self.s.read(&mut chunk).expect("read head");
            assert!(k > 0, "connection closed before a response");
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }
}

fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    Http::connect(addr).send(method, path, headers, body)
}

fn post_event(srv: &TestServer, body: &str) -> Resp {
    call(srv.admin, "POST", "/v1/events", &[], body.as_bytes())
}

/// `GET /metrics`, parsed strictly.
fn scrape(srv: &TestServer) -> Exposition {
    let r = call(srv.admin, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    ricochet::metrics::parse(&text).unwrap_or_else(|e| panic!("/metrics: {e}\n{text}"))
}

fn metric(m: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.value(name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[test]
fn http_ingest_accepts_dedups_and_rejects() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint("sink", r#"["t"]"#, &rx.url("/"), ""));

    let r = post_event(&srv, &event("t", "h-1", r#"{"n": 1.50}"#));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"id": "h-1", "deliveries": 1}));
    let got = rx.wait_for(1, Duration::from_secs(10));
    assert_eq!(got[0].header("webhook-id"), Some("h-1"));
    assert_eq!(
        got[0].body, br#"{"n": 1.50}"#,
        "data reaches the receiver as sent"
    );

    // The same id again: accepted earlier, nothing new scheduled.
    let r = post_event(&srv, &event("t", "h-1", "{}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"id": "h-1", "duplicate": true})
    );

    // No id: a generated one, readable in the log; a pretty-printed body is fine.
    let r = post_event(
        &srv,
        "{\n  \"type\": \"t\",\n  \"data\": {\"k\": \"v\"}\n}\n",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("evt_"), "{id}");
    let v = srv.wait_event(&id, Duration::from_secs(10), |v| states(v) == ["delivered"]);
    assert_eq!(v["data"]["k"], "v");

    // A byte-order mark before the JSON is skipped, as on the socket.
    let r = post_event(&srv, &format!("\u{feff}{}", event("other", "h-bom", "{}")));
    assert_eq!(r.status, 202, "{}", r.text());

    // Routed nowhere: accepted with zero deliveries.
    let r = post_event(&srv, &event("other", "h-2", "{}"));
    assert_eq!((r.status, r.json()["deliveries"].clone()), (202, 0.into()));

    // Invalid events: the socket's reasons, as 400s.
    for (body, needle) in [
        ("not json", "not JSON"),
        ("{\"type\":\"t\",\"data\":", "not JSON"),
        ("[1,2]", "object"),
        (r#"{"type":"t"}"#, "`data`"),
        (r#"{"type":"Bad","data":{}}"#, "`type`"),
        (r#"{"type":"t","data":{},"id":"a b"}"#, "`id`"),
        ("", "empty"),
    ] {
        let r = post_event(&srv, body);
        assert_eq!(r.status, 400, "{body:?}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{body:?}: {msg}");
    }

    // Bodies over 1 MiB are refused before they are read; the answer still arrives.
    let big = vec![b'x'; (1 << 20) + 1];
    let r = call(srv.admin, "POST", "/v1/events", &[], &big);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().unwrap().contains("1 MiB"));
    // Counted as the socket's `err too_large` would be.
    let too_large = [("kind", "err"), ("code", "too_large")];
    assert_eq!(
        metric(&srv.metrics(), "ricochet_acks_total", &too_large),
        1.0
    );

    // Only the accepted events were delivered, once each.
    assert_eq!(rx.count(), 2);
    assert_eq!(srv.event("h-1")["deliveries"].as_array().unwrap().len(), 1);
}

#[test]
fn http_ingest_keeps_max_line_bytes_and_keep_alive() {
    let rx = TestReceiver::start();
    let srv = TestServer::start_with(
        ServerOpts::new(&endpoint("sink", r#"["t"]"#, &rx.url("/"), ""))
            .server("max_line_bytes = 256"),
    );
    let mut http = Http::connect(srv.admin);
    let big = event("t", "big", &format!(r#"{{"pad":"{}"}}"#, "x".repeat(300)));
    let r = http.send("POST", "/v1/events", &[], big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("max_line_bytes"));
    // The same connection serves the next requests: bodies are read exactly.
    let r = http.send(
        "POST",
        "/v1/events",
        &[],
        event("t", "small", "{}").as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let r = http.send("GET", "/health", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"status": "ok"}))
    );
    // Malformed HTTP and a bad Content-Length are 400s, not a hang or a crash.
    let mut s = TcpStream::connect(srv.admin).unwrap();
    s.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400 "), "{out:?}");
    let r = call(
        srv.admin,
        "POST",
        "/v1/events",
        &[("Transfer-Encoding", "chunked")],
        b"",
    );
    assert_eq!(r.status, 411);
    assert_eq!(call(srv.admin, "GET", "/nope", &[], b"").status, 404);
    assert_eq!(
        call(srv.admin, "DELETE", "/v1/events", &[], b"").status,
        405
    );
    // The server is still healthy and delivered the one accepted event.
    rx.wait_for(1, Duration::from_secs(10));
    assert_eq!(srv.get("/health").0, 200);
}

#[test]
fn idempotency_is_shared_between_socket_and_http() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint("sink", r#"["t"]"#, &rx.url("/"), ""));
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "both-1", "{}")), "ok both-1 1");
    let r = post_event(&srv, &event("t", "both-1", "{}"));
    assert_eq!(
        (r.status, r.json()["duplicate"].clone()),
        (200, true.into())
    );

    let r = post_event(&srv, &event("t", "both-2", "{}"));
    assert_eq!(r.status, 202);
    assert_eq!(c.send(&event("t", "both-2", "{}")), "dup both-2");

    rx.wait_for(2, Duration::from_secs(10));
    let ids = rx.ids();
    assert_eq!((ids["both-1"], ids["both-2"]), (1, 1), "{ids:?}");
}

#[test]
fn endpoints_list_and_detail_redact_secrets() {
    let rx = TestReceiver::start();
    let eps = format!(
        "{}{}",
        endpoint(
            "signed",
            r#"["t"]"#,
            &rx.url("/s"),
            r#"headers = { Authorization = "Bearer top-secret-token", "X-Partner" = "p-{Id}" }
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
max_rps = 7
retry = ["1s", "5s"]"#,
        ),
        endpoint("plain", r#"["*"]"#, &rx.url("/p"), "enabled = false"),
    );
    let srv = TestServer::start(&eps);
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "e-1", r#"{"Id": 5}"#)), "ok e-1 1");
    srv.wait_event("e-1", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });

    let (status, list) = srv.get("/v1/endpoints");
    assert_eq!(status, 200);
    let text = list.to_string();
    assert!(!text.contains("top-secret-token"), "{text}");
    assert!(!text.contains("MfKQ9r8"), "{text}");
    let names: Vec<&str> = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plain", "signed"]);

    let (status, ep) = srv.get("/v1/endpoints/signed");
    assert_eq!(status, 200, "{ep}");
    assert_eq!(ep["headers"]["Authorization"], "[redacted]");
    assert_eq!(ep["headers"]["X-Partner"], "p-{Id}");
    assert_eq!(ep["signing_secret"], "[redacted]");
    assert_eq!(ep["url"], rx.url("/s"));
    assert_eq!(ep["events"], serde_json::json!(["t"]));
    assert_eq!(ep["max_rps"], 7);
    assert_eq!(ep["retry"], serde_json::json!(["1s", "5s"]));
    assert_eq!(ep["method"], "POST");
    assert_eq!(ep["enabled"], true);
    assert_eq!(ep["disabled_reason"], Value::Null);
    assert_eq!(
        ep["consecutive_failures"],
        serde_json::json!({"3xx": 0, "4xx": 0, "5xx": 0})
    );
    assert_eq!(ep["counters"]["delivered"], 1);
    assert_eq!(ep["counters"]["attempts"], 1);
    assert_eq!(ep["counters"]["attempts_by_result"]["2xx"], 1);

    let (_, plain) = srv.get("/v1/endpoints/plain");
    assert_eq!(plain["enabled"], false);
    assert_eq!(plain["disabled_reason"], "disabled in the config file");
    assert_eq!(plain["signing_secret"], Value::Null);

    let (status, err) = srv.get("/v1/endpoints/nope");
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("nope"));
    assert_eq!(srv.post("/v1/endpoints/signed").0, 405);
    // An empty body is no endpoint definition.
    assert_eq!(srv.post("/v1/endpoints").0, 400);
}

#[test]
fn admin_token_guards_v1_but_not_health_or_metrics() {
    let rx = TestReceiver::start();
    let srv = TestServer::start_with(
        ServerOpts::new(&endpoint("sink", r#"["t"]"#, &rx.url("/"), ""))
            .server("admin_token = \"s3cret\""),
    );
    let good = [("Authorization", "Bearer s3cret")];
    for (method, path, body) in [
        ("GET", "/v1/endpoints", ""),
        ("GET", "/v1/endpoints/sink", ""),
        ("POST", "/v1/endpoints/sink/disable", ""),
        ("GET", "/v1/events/x", ""),
        (
            "POST",
            "/v1/events",
            r#"{"type":"t","id":"tok-1","data":{}}"#,
        ),
    ] {
        for headers in [
            &[][..],
            &[("Authorization", "Bearer wrong")][..],
            &[("Authorization", "s3cret")][..],
            &[("Authorization", "Bearer s3cret2")][..],
        ] {
            let r = call(srv.admin, method, path, headers, body.as_bytes());
            assert_eq!(r.status, 401, "{method} {path} {headers:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            assert!(r.json()["error"].as_str().unwrap().contains("token"));
        }
    }
    // Nothing above got through: the endpoint is enabled and the event unknown.
    let r = call(srv.admin, "GET", "/v1/endpoints/sink", &good, b"");
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, true.into()));
    let r = call(srv.admin, "GET", "/v1/events/tok-1", &good, b"");
    assert_eq!(r.status, 404);
    // With the token, calls work.
    let r = call(
        srv.admin,
        "POST",
        "/v1/events",
        &good,
        br#"{"type":"t","id":"tok-1","data":{}}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    rx.wait_for(1, Duration::from_secs(10));
    // Health and metrics stay open.
    assert_eq!(call(srv.admin, "GET", "/health", &[], b"").status, 200);
    let m = scrape(&srv);
    assert_eq!(metric(&m, "ricochet_events_ingested_total", &[]), 1.0);
}

#[test]
fn metrics_count_ingest_deliveries_and_latency() {
    let rx = TestReceiver::with_script(|r, _| {
        if r.path.starts_with("/bad") {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let eps = format!(
        "{}{}",
        endpoint("good", r#"["t"]"#, &rx.url("/good"), ""),
        endpoint("bad", r#"["t"]"#, &rx.url("/bad"), "retry = \"none\""),
    );
    let srv = TestServer::start(&eps);

    let before = scrape(&srv);
    assert_eq!(metric(&before, "ricochet_events_ingested_total", &[]), 0.0);
    assert_eq!(
        metric(
            &before,
            "ricochet_deliveries_total",
            &[("endpoint", "good"), ("outcome", "delivered")]
        ),
        0.0
    );
    assert_eq!(metric(&before, "ricochet_metrics_unanswered", &[]), 0.0);
    assert_eq!(
        metric(
            &before,
            "ricochet_attempt_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        0.0
    );

    let mut c = srv.connect();
    for i in 0..5 {
        assert_eq!(
            c.send(&event("t", &format!("m-{i}"), "{}")),
            format!("ok m-{i} 2")
        );
    }
    assert_eq!(c.send(&event("t", "m-0", "{}")), "dup m-0");
    assert!(c.send("{not json").starts_with("err invalid"));
    assert_eq!(post_event(&srv, &event("t", "m-http", "{}")).status, 202);
    assert_eq!(post_event(&srv, "nope").status, 400);

    for id in ["m-0", "m-1", "m-2", "m-3", "m-4", "m-http"] {
        srv.wait_event(id, Duration::from_secs(10), |v| {
            let mut s = states(v);
            s.sort();
            s == ["delivered", "failed"]
        });
    }
    let m = scrape(&srv);
    let get = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels);
    assert_eq!(get("ricochet_events_ingested_total", &[]), 6.0);
    assert_eq!(get("ricochet_acks_total", &[("kind", "ok")]), 6.0);
    assert_eq!(get("ricochet_acks_total", &[("kind", "dup")]), 1.0);
    assert_eq!(
        get(
            "ricochet_acks_total",
            &[("kind", "err"), ("code", "invalid")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "ricochet_acks_total",
            &[("kind", "err"), ("code", "too_large")]
        ),
        0.0
    );
    let d = |ep: &str, outcome: &str| {
        get(
            "ricochet_deliveries_total",
            &[("endpoint", ep), ("outcome", outcome)],
        )
    };
    assert_eq!((d("good", "delivered"), d("good", "failed")), (6.0, 0.0));
    assert_eq!((d("bad", "delivered"), d("bad", "failed")), (0.0, 6.0));
    assert_eq!(d("bad", "retrying"), 0.0);
    assert_eq!(
        get(
            "ricochet_attempts_total",
            &[("endpoint", "good"), ("result", "2xx")]
        ),
        6.0
    );
    assert_eq!(
        get(
            "ricochet_attempts_total",
            &[("endpoint", "bad"), ("result", "5xx")]
        ),
        6.0
    );
    assert_eq!(get("ricochet_attempts_total", &[]), 12.0);
    // Everything is done: nothing pending, nothing held in memory.
    assert_eq!(get("ricochet_deliveries_pending", &[]), 0.0);
    assert_eq!(get("ricochet_deliveries_in_memory", &[]), 0.0);
    assert_eq!(get("ricochet_deliveries_paused", &[]), 0.0);
    // Histograms: one sample per attempt / per acked event, plausible values.
    assert_eq!(get("ricochet_attempt_latency_seconds_count", &[]), 12.0);
    assert_eq!(get("ricochet_delivery_lag_seconds_count", &[]), 12.0);
    assert_eq!(get("ricochet_ack_latency_seconds_count", &[]), 7.0);
    for (name, n) in [
        ("ricochet_attempt_latency_seconds", 12.0),
        ("ricochet_ack_latency_seconds", 7.0),
        ("ricochet_delivery_lag_seconds", 12.0),
    ] {
        // Cumulative buckets: never decreasing, all of them within 10 s (these attempts
        // and acks are quick; the retries here wait well under that), all by +Inf.
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = ricochet::metrics::BUCKETS_S
            .iter()
            .map(|b| b.to_string())
            .collect();
        let counts: Vec<f64> = bounds.iter().map(|b| get(&bucket, &[("le", b)])).collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {counts:?}"
        );
        assert_eq!(get(&bucket, &[("le", "10")]), n, "{name}: {counts:?}");
        assert_eq!(get(&bucket, &[("le", "+Inf")]), n, "{name}");
    }
    assert!(get("ricochet_attempt_latency_seconds_sum", &[]) > 0.0);
    assert_eq!(get("ricochet_metrics_unanswered", &[]), 0.0);
    // The store's memory: the events and their outcomes are in its memtables; its block
    // cache is bounded (8 MiB).
    let store = |m: &Exposition, part| metric(m, "ricochet_store_memory_bytes", &[("part", part)]);
    assert!(
        store(&m, "memtables") > store(&before, "memtables"),
        "{} after against {} before",
        store(&m, "memtables"),
        store(&before, "memtables")
    );
    assert!(store(&m, "block_cache") <= (8 << 20) as f64);
    // And on disk: the WAL holds them (no memtable flushed yet), every family is named.
    let disk = |m: &Exposition, part| metric(m, "ricochet_store_disk_bytes", &[("part", part)]);
    assert!(
        disk(&m, "wal") > disk(&before, "wal"),
        "{} after against {} before",
        disk(&m, "wal"),
        disk(&before, "wal")
    );
    // (`metric` fails the test on a family without its sample.)
    for part in [
        "events",
        "attempts",
        "index",
        "idem",
        "due",
        "paused",
        "endpoints",
    ] {
        disk(&m, part);
    }
}

#[test]
fn metrics_pending_and_paused_follow_disable_and_enable() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint(
        "later",
        r#"["t"]"#,
        &rx.url("/"),
        "min_delay = \"1h\"",
    ));
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "p-1", "{}")), "ok p-1 1");
    assert_eq!(c.send(&event("t", "p-2", "{}")), "ok p-2 1");
    let m = scrape(&srv);
    assert_eq!(metric(&m, "ricochet_deliveries_pending", &[]), 2.0);
    assert_eq!(metric(&m, "ricochet_deliveries_paused", &[]), 0.0);
    // Due in an hour: on disk, not in a worker's memory.
    assert_eq!(metric(&m, "ricochet_deliveries_in_memory", &[]), 0.0);

    assert_eq!(srv.post("/v1/endpoints/later/disable").0, 200);
    // The snapshot is taken after the committer handled the disable.
    let m = scrape(&srv);
    assert_eq!(metric(&m, "ricochet_deliveries_pending", &[]), 2.0);
    assert_eq!(metric(&m, "ricochet_deliveries_paused", &[]), 2.0);
    assert_eq!(metric(&m, "ricochet_endpoints_disabled", &[]), 1.0);

    // Enabled again, the paused deliveries are pending again, and still wait for their
    // event time + min_delay (policy.rs sees one go out then).
    assert_eq!(srv.post("/v1/endpoints/later/enable").0, 200);
    for id in ["p-1", "p-2"] {
        srv.wait_event(id, Duration::from_secs(10), |v| states(v) == ["pending"]);
    }
    let m = scrape(&srv);
    assert_eq!(metric(&m, "ricochet_deliveries_pending", &[]), 2.0);
    assert_eq!(metric(&m, "ricochet_deliveries_paused", &[]), 0.0);
    assert_eq!(metric(&m, "ricochet_deliveries_in_memory", &[]), 0.0);
    assert_eq!(metric(&m, "ricochet_endpoints_disabled", &[]), 0.0);
    assert_eq!(rx.count(), 0);
}

#[test]
fn an_event_s_data_reads_back_exactly_as_received() {
    let srv = TestServer::start("");
    let data = r#"{"n": 123456789012345678901234567890, "f": 1.10, "e": 1E2, "s": "\u00e9"}"#;
    let line = format!(r#"{{"type":"t","id":"exact","data":{data}}}"#);
    assert_eq!(srv.connect().send(&line), "ok exact 0");
    let r = call(srv.admin, "GET", "/v1/events/exact", &[], b"");
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(body.contains(&format!(r#""data":{data}"#)), "{body}");
    assert_eq!(r.json()["id"], "exact");
}

#[test]
fn health_answers_get_and_head_only() {
    let srv = TestServer::start("");
    let mut http = Http::connect(srv.admin);
    let r = http.send("GET", "/health", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"status": "ok"}))
    );
    // HEAD, on every GET resource: the same head, no body; the connection stays usable.
    for path in ["/health", "/v1/endpoints", "/v1/events?limit=2"] {
        let get = http.send("GET", path, &[], b"");
        assert_eq!(get.status, 200, "{path}");
        let length = get.body.len().to_string();
        http.s
            .write_all(format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(http.s.read(&mut byte).unwrap(), 1, "closed inside the head");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head}");
        assert!(
            head.contains(&format!("Content-Length: {length}\r\n")),
            "{path}: {head}"
        );
        let r = http.send("GET", "/health", &[], b"");
        assert_eq!(
            r.status, 200,
            "no body bytes were left behind by HEAD {path}"
        );
    }
    for method in ["POST", "PUT", "DELETE"] {
        let r = call(srv.admin, method, "/health", &[], b"");
        assert_eq!(r.status, 405, "{method}");
        assert!(r.json()["error"].is_string());
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
    // Every 405 says what the resource takes (RFC 9110: `Allow` is required).
    for (method, path, allow) in [
        ("DELETE", "/v1/events", "GET, HEAD, POST"),
        ("PUT", "/v1/endpoints", "GET, HEAD, POST"),
        ("POST", "/v1/endpoints/x", "GET, HEAD, PUT, DELETE"),
        ("GET", "/v1/endpoints/x/enable", "POST"),
        ("GET", "/v1/events/x/replay", "POST"),
        ("DELETE", "/v1/events/x", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
    ] {
        let r = call(srv.admin, method, path, &[], b"");
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn bearer_scheme_is_case_insensitive_and_statuses_have_their_reasons() {
    let srv = TestServer::start_with(ServerOpts::new("").server("admin_token = \"s3cret\""));
    for (auth, status) in [
        ("Bearer s3cret", 200),
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer  s3cret", 200),
        ("Basic s3cret", 401),
        ("bearer S3CRET", 401),
        ("bearers3cret", 401),
    ] {
        let r = call(
            srv.admin,
            "GET",
            "/v1/endpoints",
            &[("Authorization", auth)],
            b"",
        );
        assert_eq!(r.status, status, "{auth}: {}", r.text());
    }
    // The status line's reason phrase is the status's own.
    let mut s = TcpStream::connect(srv.admin).unwrap();
    s.write_all(b"GET /v1/nothing HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: bearer s3cret\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
}

#[test]
fn web_pages_cannot_drive_the_admin_api() {
    let srv = TestServer::start("");
    let status = |head: &str, body: &str| -> u16 {
        let mut s = TcpStream::connect(srv.admin).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let req = format!(
            "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split(' ').nth(1).unwrap().parse().unwrap()
    };
    let port = srv.admin.port();
    // A page's cross-site "simple" POST (text/plain, no preflight): refused, nothing made.
    let ep = r#"{"name":"exfil","events":["*"],"url":"https://attacker.example/collect"}"#;
    let post = format!(
        "POST /v1/endpoints HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://attacker.example\r\nContent-Type: text/plain\r\n"
    );
    assert_eq!(status(&post, ep), 403);
    assert_eq!(srv.get("/v1/endpoints/exfil").0, 404);
    // A page whose name was rebound to 127.0.0.1 reads the log: refused.
    let rebound = format!("GET /v1/events HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\n");
    assert_eq!(status(&rebound, ""), 403);
    assert_eq!(
        status("GET /health HTTP/1.1\r\nHost: evil.example\r\n", ""),
        403
    );
    // Loopback names, and HTTP/1.0 without a Host, pass.
    for host in [
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".into(),
    ] {
        assert_eq!(
            status(&format!("GET /health HTTP/1.1\r\nHost: {host}\r\n"), ""),
            200,
            "{host}"
        );
    }
    assert_eq!(status("GET /health HTTP/1.0\r\n", ""), 200);
    // An empty `Host` is allowed (RFC 9112 §3.2), as none is.
    assert_eq!(status("GET /health HTTP/1.1\r\nHost: \r\n", ""), 200);
    // A loopback name before a colon that no port follows: malformed, 400 (it passed).
    for host in [
        "127.0.0.1:evil.example",
        "localhost:@evil.example",
        "[::1]:x",
    ] {
        assert_eq!(
            status(&format!("GET /health HTTP/1.1\r\nHost: {host}\r\n"), ""),
            400,
            "{host}"
        );
    }
    let post = post.replace("Origin: http://attacker.example\r\n", "");
    assert_eq!(status(&post, ep), 201);
    // Two Host headers (the last a loopback one), two Authorization headers: 400.
    let two = "GET /health HTTP/1.1\r\nHost: evil.example\r\nHost: localhost\r\n";
    assert_eq!(status(two, ""), 400);
    let two = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n";
    assert_eq!(status(two, ""), 400);
}

/// Bound to a wildcard address, the API is reached over the loopback too: there a
/// `Host` that is not a loopback name is refused as well (a rebound page's request).
#[test]
fn a_wildcard_admin_checks_host_on_its_loopback_connections() {
    wildcard_admin_checks_host("0.0.0.0:0");
}

/// The same bound to `[::]` (dual-stack: 127.0.0.1 arrives as `::ffff:127.0.0.1`).
#[test]
fn a_dual_stack_wildcard_admin_checks_host_on_its_loopback_connections() {
    wildcard_admin_checks_host("[::]:0");
}

fn wildcard_admin_checks_host(bind: &str) {
    let srv = TestServer::start_with(ServerOpts::new("").arg("--admin").arg(bind));
    let port = srv.admin.port();
    let status = |host: &str| -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect admin");
        let req =
            format!("GET /v1/endpoints HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split(' ').nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(status(&format!("rebind.attacker.example:{port}")), 403);
    assert_eq!(status(&format!("localhost:{port}")), 200);
    assert!(
        srv.log().contains("no admin_token"),
        "a warning for an API open beyond the loopback:\n{}",
        srv.log()
    );
}

/// An idle keep-alive connection holds one descriptor: the reserve for the API counts
/// one per connection (each used to hold a second handle while it waited, so 64 idle
/// ones took 128).
#[test]
fn an_idle_admin_connection_holds_one_descriptor() {
    let srv = TestServer::start("");
    let base = srv.open_fds();
    let n = 20;
    let _held: Vec<Http> = (0..n)
        .map(|_| {
            let mut h = Http::connect(srv.admin);
            assert_eq!(h.send("GET", "/health", &[], b"").status, 200);
            h
        })
        .collect();
    // Each thread waits for its next request once it has answered; a second handle
    // appeared as it began to wait. Watched for half a second, the count stays near one
    // descriptor a connection (with two it reaches 2n; what else the server opens
    // meanwhile, a table file, a log, stays well under n/2).
    let watch = Instant::now();
    let mut most = 0;
    while watch.elapsed() < Duration::from_millis(500) {
        most = most.max(srv.open_fds().saturating_sub(base));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(most >= n, "the connections are open: {most}");
    assert!(
        most < n + n / 2,
        "{most} descriptors for {n} idle connections"
    );
}

#[test]
fn a_new_connection_takes_the_slot_of_an_idle_one_when_all_are_taken() {
    let srv = TestServer::start("");
    let max = ricochet::admin::MAX_CONNS;
    // Every slot taken by a keep-alive connection that made one call and waits.
    let first_answered = std::time::Instant::now();
    let mut held: Vec<Http> = (0..max)
        .map(|_| {
            let mut h = Http::connect(srv.admin);
            assert_eq!(h.send("GET", "/health", &[], b"").status, 200);
            h
        })
        .collect();
    // None has waited a second for its next request yet (they were answered just now,
    // unless this machine took most of a second for 64 calls): a newcomer gets 503.
    if first_answered.elapsed() < Duration::from_millis(800) {
        assert_eq!(
            Http::connect(srv.admin)
                .send("GET", "/health", &[], b"")
                .status,
            503
        );
    }
    // Each held connection's end is watched: the one closed reports itself.
    let (closed_tx, closed) = std::sync::mpsc::channel();
    for (i, h) in held.iter().enumerate() {
        let s = h.s.try_clone().unwrap();
        let tx = closed_tx.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            if let Ok(0) = s.peek(&mut b) {
                let _ = tx.send(i);
            }
        });
    }

    // A connection that has just been answered is about to send again: none may be
    // closed for a newcomer until it has waited a second. The behaviour under test is
    // what happens after that wait.
    std::thread::sleep(Duration::from_millis(1100));

    // One more is served, and one idle connection (the one idle longest: which one that
    // is, the unit test of the idle list checks) is closed for it.
    let mut extra = Http::connect(srv.admin);
    assert_eq!(extra.send("GET", "/health", &[], b"").status, 200);
    let gone = closed
        .recv_timeout(Duration::from_secs(20))
        .expect("an idle connection was closed");

    // The others still work, on their own connections; only one was closed.
    for (i, h) in held.iter_mut().enumerate() {
        if i != gone {
            assert_eq!(h.send("GET", "/health", &[], b"").status, 200, "#{i}");
        }
    }
    assert!(closed.try_recv().is_err(), "only one was closed");
    assert_eq!(extra.send("GET", "/health", &[], b"").status, 200);
}

/// Writes all of `req` (ignoring a failed write: the server may have answered and shut
/// its side), then reads to the end: the answer's status line, or the read's error.
fn write_all_then_read(addr: SocketAddr, req: &[u8]) -> Result<String, std::io::Error> {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(req);
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    let got = String::from_utf8_lossy(&got);
    Ok(got.split("\r\n").next().unwrap_or("").to_string())
}

/// A request refused before it was read whole (its head over 16 KiB, a malformed one
/// with a body after it), or answered with `Connection: close` ahead of pipelined ones,
/// closed at once with the rest unread: the reset that close sends made the client lose
/// the answer (`ECONNRESET` on its read, 10 of 10 for each of these). The server now
/// shuts its side after the answer and reads what still comes.
#[test]
fn an_answer_that_closes_is_read_whole_not_reset() {
    let srv = TestServer::start("");
    let host = "Host: localhost\r\n";
    let mut big_head = format!("GET /health HTTP/1.1\r\n{host}X-Big: ").into_bytes();
    big_head.extend(std::iter::repeat_n(b'a', 200_000));
    big_head.extend_from_slice(b"\r\n\r\n");
    let mut bad_length =
        format!("POST /v1/events HTTP/1.1\r\n{host}Content-Length: x\r\n\r\n").into_bytes();
    bad_length.extend(std::iter::repeat_n(b'a', 300_000));
    let mut chunked =
        format!("POST /v1/events HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    chunked.extend(std::iter::repeat_n(b'a', 300_000));
    let mut pipelined =
        format!("GET /health HTTP/1.1\r\n{host}Connection: close\r\n\r\n").into_bytes();
    for _ in 0..2000 {
        pipelined.extend_from_slice(format!("GET /health HTTP/1.1\r\n{host}\r\n").as_bytes());
    }
    for (req, want) in [
        (&big_head, "HTTP/1.1 431 Request Header Fields Too Large"),
        (&bad_length, "HTTP/1.1 400 Bad Request"),
        (&chunked, "HTTP/1.1 411 Length Required"),
        (&pipelined, "HTTP/1.1 200 OK"),
    ] {
        for _ in 0..3 {
            let got = write_all_then_read(srv.admin, req);
            assert_eq!(got.as_deref().map_err(|e| e.kind()), Ok(want));
        }
    }
    assert_eq!(call(srv.admin, "GET", "/health", &[], b"").status, 200);
}

/// Every slot taken, each connection refused 503 used to be read on the accept thread
/// until its client closed, for up to 200 ms: behind 40 clients that never close, a new
/// connection waited 8 s for its answer (4.1 s behind 20). Now the accept thread writes
/// the 503 without waiting and goes on.
#[test]
fn refusals_do_not_hold_the_accept_thread() {
    let srv = TestServer::start("");
    let max = ricochet::admin::MAX_CONNS;
    // Every slot taken by a request that has begun to arrive (for less than the second
    // after which a newcomer may take its slot).
    let held: Vec<TcpStream> = (0..max)
        .map(|_| {
            let mut s = TcpStream::connect(srv.admin).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    // Clients that never close and send nothing: each is refused.
    let flood: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(srv.admin).unwrap())
        .collect();
    let start = Instant::now();
    let mut probe = Http::connect(srv.admin);
    let status = probe.send("GET", "/health", &[], b"").status;
    let took = start.elapsed();
    // 503 while the held requests are younger than a second; 200 if this machine was
    // slow enough for one to have aged past it (its slot taken for the probe).
    assert!(matches!(status, 503 | 200), "{status}");
    assert!(
        took < Duration::from_secs(2),
        "the answer waited {took:?} behind the refusals"
    );
    drop((held, flood));
}

/// 64 clients each trickling a request (a byte every 200 ms: each read finds one, and
/// the request is cut off only 10 s after its first byte, when a client reconnects)
/// held every slot: `/health` answered 503 to 19 of 27 calls over 30 s. A newcomer
/// now takes the slot of the request arriving longest, once it has been arriving a
/// second, and that one gets 408.
#[test]
fn trickled_requests_cannot_hold_every_slot() {
    let srv = TestServer::start("");
    let max = ricochet::admin::MAX_CONNS;
    let mut tricklers: Vec<TcpStream> = (0..max)
        .map(|_| {
            let mut s = TcpStream::connect(srv.admin).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let readers: Vec<TcpStream> = tricklers.iter().map(|s| s.try_clone().unwrap()).collect();
    let (stop_tx, stop) = std::sync::mpsc::channel::<()>();
    let trickle = std::thread::spawn(move || {
        while stop.recv_timeout(Duration::from_millis(200)).is_err() {
            for s in &mut tricklers {
                let _ = s.write_all(b"a");
            }
        }
    });
    // What each trickler got, once its connection ends.
    let (ended_tx, ended) = std::sync::mpsc::channel();
    for (i, mut s) in readers.into_iter().enumerate() {
        let tx = ended_tx.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = tx.send((i, String::from_utf8_lossy(&got).into_owned()));
        });
    }
    // A request is given its second before its slot may be taken: the behaviour under
    // test is what comes after that.
    std::thread::sleep(Duration::from_millis(1100));
    let start = Instant::now();
    let r = call(srv.admin, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(start.elapsed() < Duration::from_secs(5));
    let (i, got) = ended
        .recv_timeout(Duration::from_secs(5))
        .expect("a trickler was closed for the newcomer");
    assert!(
        got.starts_with("HTTP/1.1 408 ") && got.contains("new connection needed its slot"),
        "#{i}: {got}"
    );
    assert!(got.contains("Connection: close"), "#{i}: {got}");
    // The others still trickle: only one was closed for the one newcomer.
    assert!(ended.try_recv().is_err(), "only one was closed");
    stop_tx.send(()).unwrap();
    trickle.join().unwrap();
}
