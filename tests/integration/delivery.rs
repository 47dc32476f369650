//! Outcomes, retries and the attempt log (SPEC §6, §7).

use std::time::Duration;

use crate::harness::*;

fn attempts(v: &serde_json::Value) -> usize {
    v["deliveries"][0]["attempts"].as_array().unwrap().len()
}

#[test]
fn retries_follow_the_schedule_then_deliver() {
    let rx = TestReceiver::with_script(|_, n| {
        if n < 2 {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let srv = TestServer::start(&endpoint(
        "flaky",
        r#"["t"]"#,
        &rx.url("/"),
        r#"retry = ["1s", "2s"]"#,
    ));
    assert_eq!(srv.connect().send(&event("t", "rt-1", "{}")), "ok rt-1 1");
    let got = rx.wait_for(3, Duration::from_secs(20));
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(
        gap1 >= Duration::from_millis(950) && gap1 < Duration::from_millis(2500),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(1950) && gap2 < Duration::from_millis(3500),
        "{gap2:?}"
    );
    let v = srv.wait_event("rt-1", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    assert_eq!(attempts(&v), 3);
    let a = &v["deliveries"][0]["attempts"];
    assert_eq!(a[0]["status_code"], 500);
    assert_eq!(a[2]["status_code"], 200);
    assert_eq!(a[0]["request"]["method"], "POST");
    assert_eq!(v["deliveries"][0]["endpoint"], "flaky");
}

#[test]
fn retries_exhausted_means_failed() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(503).body("busy"));
    let srv = TestServer::start(&endpoint(
        "down",
        r#"["t"]"#,
        &rx.url("/"),
        r#"retry = ["500ms"]"#,
    ));
    srv.connect().send(&event("t", "ex-1", "{}"));
    let v = srv.wait_event("ex-1", Duration::from_secs(15), |v| states(v) == ["failed"]);
    assert_eq!(attempts(&v), 2);
    assert_eq!(
        v["deliveries"][0]["attempts"][1]["response_excerpt"],
        "busy"
    );
    assert_eq!(rx.count(), 2);
}

#[test]
fn body_text_success_rule_and_error_rule() {
    let rx = TestReceiver::with_script(|r, _| match r.path.as_str() {
        "/text-ok" => Reply::status(500).body("result: OK"),
        "/text-no" => Reply::status(200).body("nope"),
        _ => Reply::status(200).body("ERROR: unknown partner"),
    });
    let eps = [
        endpoint(
            "text-ok",
            r#"["t"]"#,
            &rx.url("/text-ok"),
            "success = \"OK\"\nretry = \"none\"",
        ),
        endpoint(
            "text-no",
            r#"["t"]"#,
            &rx.url("/text-no"),
            "success = \"OK\"\nretry = \"none\"",
        ),
        endpoint(
            "err-rule",
            r#"["t"]"#,
            &rx.url("/err"),
            "error = \"ERROR\"\nretry = \"none\"",
        ),
    ]
    .join("\n");
    let srv = TestServer::start(&eps);
    srv.connect().send(&event("t", "rules-1", "{}"));
    let v = srv.wait_event("rules-1", Duration::from_secs(10), |v| {
        states(v).iter().all(|s| s != "pending")
    });
    let by_ep = by_endpoint(&v, |d| d["state"].as_str().unwrap().to_string());
    assert_eq!(by_ep["text-ok"], "delivered");
    assert_eq!(by_ep["text-no"], "failed");
    assert_eq!(by_ep["err-rule"], "failed");
    // A 200 refused says which rule refused it.
    let errors = by_endpoint(&v, |d| d["attempts"][0]["error"].clone());
    assert_eq!(errors["text-ok"], serde_json::Value::Null);
    assert_eq!(errors["text-no"], "the success rule \"OK\" did not match");
    assert_eq!(errors["err-rule"], "the error rule \"ERROR\" matched");
}

/// A text rule is a substring of the first 64 KiB of the body (SPEC §6), for `success`
/// and `error` alike: a match ending on the window's last byte counts, one ending a byte
/// later does not, however much of the body the receiver sends.
#[test]
fn a_body_text_rule_reads_the_first_64_kib_only() {
    const WINDOW: usize = 64 * 1024;
    let rx = TestReceiver::with_script(|r, _| {
        let (word, end) = match r.path.as_str() {
            "/ok-in" => ("OK", WINDOW),
            "/ok-out" => ("OK", WINDOW + 1),
            "/err-in" => ("ERROR", WINDOW),
            _ => ("ERROR", WINDOW + 1),
        };
        Reply::status(200).body(&format!("{}{word}", "x".repeat(end - word.len())))
    });
    let eps = [
        ("ok-in", "success = \"OK\""),
        ("ok-out", "success = \"OK\""),
        ("err-in", "error = \"ERROR\""),
        ("err-out", "error = \"ERROR\""),
    ]
    .iter()
    .map(|(name, rule)| {
        endpoint(
            name,
            r#"["t"]"#,
            &rx.url(&format!("/{name}")),
            &format!("{rule}\nretry = \"none\""),
        )
    })
    .collect::<Vec<_>>()
    .join("\n");
    let srv = TestServer::start(&eps);
    assert_eq!(
        srv.connect().send(&event("t", "window-1", "{}")),
        "ok window-1 4"
    );
    let v = srv.wait_event("window-1", Duration::from_secs(10), |v| {
        states(v).iter().all(|s| s == "delivered" || s == "failed")
    });
    let by_ep = by_endpoint(&v, |d| {
        (
            d["state"].as_str().unwrap().to_string(),
            d["attempts"][0]["error"].clone(),
        )
    });
    let null = serde_json::Value::Null;
    assert_eq!(by_ep["ok-in"], ("delivered".to_string(), null.clone()));
    assert_eq!(
        by_ep["ok-out"],
        (
            "failed".to_string(),
            "the success rule \"OK\" did not match".into()
        )
    );
    assert_eq!(
        by_ep["err-in"],
        (
            "failed".to_string(),
            "the error rule \"ERROR\" matched".into()
        )
    );
    assert_eq!(by_ep["err-out"], ("delivered".to_string(), null));
}

#[test]
fn timeout_is_recorded_as_timed_out() {
    let rx = TestReceiver::with_script(|_, n| {
        if n == 0 {
            Reply::status(200).delay(Duration::from_millis(1500))
        } else {
            Reply::status(200)
        }
    });
    let srv = TestServer::start(&endpoint(
        "slow",
        r#"["t"]"#,
        &rx.url("/"),
        // Retries to spare: on a loaded machine a quick answer can miss 300 ms too.
        "timeout = \"300ms\"\nretry = [\"200ms\", \"200ms\", \"200ms\"]",
    ));
    srv.connect().send(&event("t", "to-1", "{}"));
    let v = srv.wait_event("to-1", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    let a = v["deliveries"][0]["attempts"].as_array().unwrap();
    assert_eq!(a[0]["timed_out"], true);
    assert!(a[0]["status_code"].is_null());
    let last = a.last().unwrap();
    assert_eq!(last["timed_out"], false);
    assert_eq!(last["status_code"], 200);
}

/// A listener on loopback whose receiver never answers, in one of four ways: its accept
/// queue full (a connect never completes, as behind a firewall that drops it), it
/// accepts and reads but never speaks (a TLS handshake stalls; a plain request waits for
/// its answer), or it accepts and never reads (a large request stops part-way).
fn silent_listener(how: &'static str) -> std::net::SocketAddr {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    if how == "full" {
        // Listening again with a backlog of 0: one connection not accepted fills it.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
        let filler = std::net::TcpStream::connect(addr).unwrap();
        std::thread::spawn(move || {
            let _held = (l, filler);
            std::thread::sleep(Duration::from_secs(60)); // held for the test's length
        });
        return addr;
    }
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let mut s = s.unwrap();
            if how == "reads" {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                });
            } else {
                held.push(s);
            }
        }
    });
    addr
}

/// A timeout used to say only `timed out after 500ms`: a receiver out of reach, one that
/// stalls the TLS handshake, one that stopped reading the request and one that never
/// answered it looked alike in the log.
#[test]
fn a_timeout_says_how_far_the_attempt_came() {
    let cases = [
        ("syn", "full", "http", "connecting (no connection made)"),
        ("tls", "reads", "https", "in the TLS handshake"),
        (
            "mute",
            "reads",
            "http",
            "waiting for the answer (the request was sent)",
        ),
        (
            "deaf",
            "never-reads",
            "http",
            "sending the request (the receiver stopped reading it)",
        ),
    ];
    let mut eps = String::new();
    for (name, how, scheme, _) in cases {
        let url = format!("{scheme}://{}/", silent_listener(how));
        let opts = "timeout = \"500ms\"\nretry = \"none\"";
        eps += &endpoint(name, &format!("[\"{name}\"]"), &url, opts);
    }
    let mut opts = ServerOpts::new(&eps);
    opts.server_extra = "max_line_bytes = 16777216\n".into();
    let srv = TestServer::start_with(opts);
    let mut c = srv.connect();
    for (name, ..) in cases {
        // More than the socket buffers hold (4 MiB to send, 128 KiB to receive here).
        let data = match name {
            "deaf" => format!(r#"{{"blob":"{}"}}"#, "x".repeat(12 << 20)),
            _ => "{}".into(),
        };
        assert_eq!(c.send(&event(name, name, &data)), format!("ok {name} 1"));
    }
    for (name, _, _, stage) in cases {
        let v = srv.wait_event(name, Duration::from_secs(20), |v| states(v) == ["failed"]);
        let a = &v["deliveries"][0]["attempts"][0];
        assert_eq!(a["timed_out"], true, "{a}");
        assert_eq!(
            a["error"],
            format!("timed out after 500ms {stage}"),
            "{name}: {a}"
        );
    }
}

#[test]
fn unresolvable_host_fails_at_once_and_is_never_retried() {
    let srv = TestServer::start(&endpoint(
        "nxdomain",
        r#"["t"]"#,
        "http://no-such-host.invalid/hook",
        "retry = [\"100ms\", \"100ms\"]",
    ));
    srv.connect().send(&event("t", "nx-1", "{}"));
    let v = srv.wait_event("nx-1", Duration::from_secs(10), |v| states(v) == ["failed"]);
    assert_eq!(attempts(&v), 1);
    assert!(v["deliveries"][0]["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("resolve"));
}

#[test]
fn a_host_that_does_not_resolve_counts_toward_disabling() {
    let srv = TestServer::start(&endpoint(
        "nx-disable",
        r#"["t"]"#,
        "http://gone-away.invalid/hook",
        "max_in_flight = 1\ndisable_after = { \"5xx\" = 2 }",
    ));
    let mut c = srv.connect();
    c.send(&event("t", "nd-1", "{}"));
    srv.wait_event("nd-1", Duration::from_secs(10), |v| states(v) == ["failed"]);
    c.send(&event("t", "nd-2", "{}"));
    srv.wait_event("nd-2", Duration::from_secs(10), |v| states(v) == ["failed"]);
    // Two in a row: a network error each, so the endpoint is disabled and the next
    // event is not routed to it (its deliveries would wait paused, not fail).
    let v = srv.wait_endpoint("nx-disable", Duration::from_secs(10), |v| {
        v["enabled"] == false
    });
    assert!(
        v["disabled_reason"].as_str().unwrap().contains("5xx"),
        "{v}"
    );
    assert_eq!(c.send(&event("t", "nd-3", "{}")), "ok nd-3 0");
}

#[test]
fn bytes_after_a_response_are_never_the_next_requests_answer() {
    // The first request gets two responses in one write (a broken receiver); the second
    // gets 503. Reusing the connection would read the stray 200 as the second's answer.
    let rx = TestReceiver::with_script(|_, n| match n {
        0 => Reply::status(200)
            .body("OK")
            .then_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"),
        1 => Reply::status(503),
        _ => Reply::status(200).body("OK").then_raw(b"junk"),
    });
    let srv = TestServer::start(&endpoint(
        "stray",
        r#"["t"]"#,
        &rx.url("/"),
        "max_in_flight = 1\nretry = \"none\"",
    ));
    let mut c = srv.connect();
    c.send(&event("t", "st-1", "{}"));
    srv.wait_event("st-1", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    c.send(&event("t", "st-2", "{}"));
    let v = srv.wait_event("st-2", Duration::from_secs(10), |v| states(v) == ["failed"]);
    assert_eq!(v["deliveries"][0]["attempts"][0]["status_code"], 503, "{v}");
    c.send(&event("t", "st-3", "{}"));
    srv.wait_event("st-3", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    c.send(&event("t", "st-4", "{}"));
    srv.wait_event("st-4", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    // Each request reached the receiver, each answered by its own response.
    assert_eq!(rx.count(), 4);
}

/// As above, the stray answer in the same write, but the first answer exactly 4 KiB: all
/// that the first read of a new connection takes (its buffer starts at 4 KiB,
/// `RBUF_MIN`). The answer ended where the read did, nothing was left in the buffer, the
/// stray one stayed in the socket, and the next request, sent at once, read it as its
/// own (recorded `200`, `STRAY`, delivered, where the receiver answered `503`). A read
/// that fills its room is now followed by a look at the socket.
#[test]
fn a_stray_answer_left_in_the_socket_by_a_full_read_is_never_the_next_requests_answer() {
    // `HTTP/1.1 200 X\r\nContent-Length: 4056\r\n\r\n` is 40 bytes.
    let body = "x".repeat(4096 - 40);
    let rx = TestReceiver::with_script(move |_, n| match n {
        0 => Reply::status(200)
            .body(&body)
            .then_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY"),
        _ => Reply::status(503),
    });
    let srv = TestServer::start(&endpoint(
        "full",
        r#"["t"]"#,
        &rx.url("/"),
        "max_in_flight = 1\nretry = \"none\"",
    ));
    let mut c = srv.connect();
    // Together: the second goes right behind the first, within the idle peek's 50 ms.
    assert_eq!(c.send(&event("t", "fr-1", "{}")), "ok fr-1 1");
    assert_eq!(c.send(&event("t", "fr-2", "{}")), "ok fr-2 1");
    let v = srv.wait_event("fr-1", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    assert_eq!(v["deliveries"][0]["attempts"][0]["status_code"], 200, "{v}");
    let v = srv.wait_event("fr-2", Duration::from_secs(10), |v| {
        states(v) == ["delivered"] || states(v) == ["failed"]
    });
    let a = &v["deliveries"][0]["attempts"][0];
    assert_eq!(a["status_code"], 503, "{a}");
    assert_eq!(rx.count(), 2);
}

/// Reads one request (head and `Content-Length` body) from `r`; its path, or `None` at
/// the end of the connection.
fn read_request(r: &mut impl std::io::BufRead) -> Option<String> {
    let (mut path, mut len, mut line) = (None, 0, String::new());
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        match path {
            None => path = line.split(' ').nth(1).map(str::to_string),
            Some(_) => {
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().ok()?;
                    }
                }
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    path
}

/// A `204` that announces a body (which it may not have) and a `304` (which answers a
/// conditional GET ricochet never sends) that announces one too, each sending it after
/// its head: the connection used to be kept, and the next request on it read that body
/// as the start of its answer (`bad response: malformed response head`), recorded as a
/// failure whatever the receiver answered it. The connection is now not reused.
#[test]
fn a_body_sent_after_a_bodiless_answer_is_never_the_next_requests_answer() {
    use std::io::{BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let answered = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                let mut stray: &[u8] = b"";
                while let Some(path) = read_request(&mut r) {
                    // The body the last answer announced comes only now, as a request
                    // on the same connection shows it was kept: ahead of that request's
                    // own answer.
                    let _ = w.write_all(std::mem::take(&mut stray));
                    if !answered.lock().unwrap().insert(path.clone()) {
                        let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
                        continue;
                    }
                    let (head, body): (&[u8], &[u8]) = match path.as_str() {
                        "/no-content" => (
                            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                            b"hello",
                        ),
                        _ => (
                            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                            b"5\r\nhello\r\n0\r\n\r\n",
                        ),
                    };
                    let _ = w.write_all(head);
                    stray = body;
                }
            });
        }
    });
    let eps: String = ["no-content", "not-modified"]
        .iter()
        .map(|name| {
            endpoint(
                name,
                r#"["t"]"#,
                &format!("http://{addr}/{name}"),
                "max_in_flight = 1\nretry = \"none\"",
            )
        })
        .collect();
    let srv = TestServer::start(&eps);
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "bl-1", "{}")), "ok bl-1 2");
    let v = srv.wait_event("bl-1", Duration::from_secs(10), |v| {
        states(v).iter().all(|s| s == "delivered" || s == "failed")
    });
    let status = by_endpoint(&v, |d| d["attempts"][0]["status_code"].clone());
    assert_eq!(status["no-content"], 204, "{v}");
    assert_eq!(status["not-modified"], 304, "{v}");
    assert_eq!(c.send(&event("t", "bl-2", "{}")), "ok bl-2 2");
    let v = srv.wait_event("bl-2", Duration::from_secs(10), |v| {
        states(v).iter().all(|s| s == "delivered" || s == "failed")
    });
    // Each answered by its own answer, on a new connection.
    let attempts = by_endpoint(&v, |d| d["attempts"][0].clone());
    for name in ["no-content", "not-modified"] {
        let a = &attempts[name];
        assert_eq!(a["status_code"], 200, "{name}: {a}");
        assert_eq!(a["response_excerpt"], "OK", "{name}: {a}");
        assert!(a["error"].is_null(), "{name}: {a}");
    }
}

#[test]
fn an_upper_case_scheme_is_a_scheme() {
    let rx = TestReceiver::start();
    let url = rx.url("/up").replacen("http://", "HTTP://", 1);
    let srv = TestServer::start(&endpoint("upper", r#"["t"]"#, &url, ""));
    assert_eq!(srv.connect().send(&event("t", "up-1", "{}")), "ok up-1 1");
    let got = rx.wait_for(1, Duration::from_secs(10));
    assert_eq!(got[0].path, "/up");
}

/// With the guard on (the default), a URL written with a loopback address is refused
/// by `check` and over the API (every delivery would fail); a host the event's data
/// fills in is judged at each delivery, and a loopback one fails it, unretried.
#[test]
fn ssrf_guard_refuses_loopback_by_default() {
    let rx = TestReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("guarded.toml");
    std::fs::write(&cfg, endpoint("local", r#"["t"]"#, &rx.url("/"), "")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "4:7: endpoint local: field `url`: 127.0.0.1 is a loopback, private or \
                       reserved address, which the SSRF guard refuses"
        ),
        "{said}"
    );
    let url = format!("http://{{H}}:{}/", rx.addr.port());
    let opts = ServerOpts::new(&endpoint("local", r#"["t"]"#, &url, ""))
        .server("allow_private_networks = false");
    let srv = TestServer::start_with(opts);
    let def = serde_json::json!({ "name": "lit", "events": ["t"], "url": rx.url("/") });
    let (status, v) = srv.call("POST", "/v1/endpoints", &def);
    assert_eq!(status, 400, "{v}");
    srv.connect()
        .send(&event("t", "ssrf-1", r#"{"H":"127.0.0.1"}"#));
    let v = srv.wait_event("ssrf-1", Duration::from_secs(10), |v| {
        states(v) == ["failed"]
    });
    assert!(v["deliveries"][0]["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("blocked"));
    assert_eq!(rx.count(), 0);
}

/// The wait between a first answer `first` and the retry after it, with `retry` as the
/// endpoint's one scheduled wait.
fn retry_gap(first: impl Fn() -> Reply + Send + Sync + 'static, retry: &str) -> Duration {
    let rx = TestReceiver::with_script(
        move |_, n| {
            if n == 0 {
                first()
            } else {
                Reply::status(200)
            }
        },
    );
    let srv = TestServer::start(&endpoint(
        "limited",
        r#"["t"]"#,
        &rx.url("/"),
        &format!("retry = [{retry:?}]"),
    ));
    srv.connect().send(&event("t", "ra-1", "{}"));
    let got = rx.wait_for(2, Duration::from_secs(15));
    got[1].at - got[0].at
}

#[test]
fn retry_after_on_429_stretches_the_wait() {
    let gap = retry_gap(|| Reply::status(429).header("Retry-After", "2"), "1s");
    assert!(
        gap >= Duration::from_millis(1950),
        "Retry-After: 2 not honoured: {gap:?}"
    );
}

#[test]
fn gone_disables_the_endpoint_and_pauses_its_deliveries() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(410));
    let srv = TestServer::start(&endpoint(
        "gone",
        r#"["t"]"#,
        &rx.url("/"),
        "max_in_flight = 1\nretry = [\"100ms\"]",
    ));
    let mut c = srv.connect();
    c.send(&event("t", "g-1", "{}"));
    let v = srv.wait_event("g-1", Duration::from_secs(10), |v| states(v) == ["paused"]);
    assert_eq!(v["deliveries"][0]["attempts"][0]["status_code"], 410);
    // The endpoint is disabled: a new event is not routed to it, nothing more arrives.
    assert_eq!(c.send(&event("t", "g-2", "{}")), "ok g-2 0");
    assert_eq!(rx.count(), 1);
    // The reason, and the failure that led to it among the counts (a 4xx).
    let (_, ep) = srv.get("/v1/endpoints/gone");
    assert_eq!(
        ep["disabled_reason"], "the receiver answered 410 Gone",
        "{ep}"
    );
    assert_eq!(ep["consecutive_failures"]["4xx"], 1, "{ep}");
}

#[test]
fn gone_on_the_last_attempt_fails_the_delivery() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(410));
    let srv = TestServer::start(&endpoint(
        "gone-once",
        r#"["t"]"#,
        &rx.url("/"),
        "max_in_flight = 1\nretry = \"none\"",
    ));
    let mut c = srv.connect();
    c.send(&event("t", "g-1", "{}"));
    // No attempt left by its schedule: failed, not paused for an attempt it may not make.
    let v = srv.wait_event("g-1", Duration::from_secs(10), |v| states(v) == ["failed"]);
    assert_eq!(v["deliveries"][0]["attempts"].as_array().unwrap().len(), 1);
    // The endpoint is disabled all the same; enabling it does not bring the delivery back.
    assert_eq!(c.send(&event("t", "g-2", "{}")), "ok g-2 0");
    assert_eq!(srv.post("/v1/endpoints/gone-once/enable").0, 200);
    assert_eq!(c.send(&event("t", "g-3", "{}")), "ok g-3 1");
    srv.wait_event("g-3", Duration::from_secs(10), |v| states(v) == ["failed"]);
    let v = srv.event("g-1");
    assert_eq!(states(&v), ["failed"]);
    assert_eq!(v["deliveries"][0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(rx.count(), 2);
}

#[test]
fn retry_after_as_an_http_date_on_503_stretches_the_wait() {
    // Four seconds ahead, to the second: 3–4 s after the answer, past the scheduled 2 s
    // and within its cap (twice the scheduled wait).
    let gap = retry_gap(
        || {
            let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
            // IMF-fixdate (RFC 9110 §5.6.7): Sun, 06 Nov 1994 08:49:37 GMT
            let date = format!(
                "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
                &at.weekday().to_string()[..3],
                at.day(),
                &at.month().to_string()[..3],
                at.year(),
                at.hour(),
                at.minute(),
                at.second()
            );
            Reply::status(503).header("Retry-After", &date)
        },
        "2s",
    );
    assert!(
        gap >= Duration::from_millis(2900) && gap < Duration::from_millis(4900),
        "Retry-After 3–4 s ahead, retry scheduled in 2 s, cap 4 s: waited {gap:?}"
    );
}

#[test]
fn a_redirect_is_an_answer_not_followed_and_counts_as_3xx() {
    let rx = TestReceiver::with_script(|r, _| {
        if r.path == "/moved" {
            Reply::status(200)
        } else {
            Reply::status(302).header("Location", "/moved")
        }
    });
    let srv = TestServer::start(&endpoint(
        "moving",
        r#"["t"]"#,
        &rx.url("/hook"),
        "retry = \"none\"\ndisable_after = { \"3xx\" = 2 }",
    ));
    let mut c = srv.connect();
    c.send(&event("t", "r-1", "{}"));
    let v = srv.wait_event("r-1", Duration::from_secs(10), |v| states(v) == ["failed"]);
    assert_eq!(v["deliveries"][0]["attempts"][0]["status_code"], 302);
    assert_eq!(srv.get("/v1/endpoints/moving").1["enabled"], true);
    c.send(&event("t", "r-2", "{}"));
    srv.wait_event("r-2", Duration::from_secs(10), |v| states(v) == ["failed"]);
    // Two consecutive 3xx reach the threshold; nothing ever went to the Location.
    let ep = srv.wait_endpoint("moving", Duration::from_secs(10), |v| v["enabled"] == false);
    assert!(
        ep["disabled_reason"].as_str().unwrap().contains("3xx"),
        "{ep}"
    );
    let paths: Vec<String> = rx.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/hook", "/hook"]);
}

/// Deliveries of large events waiting for a slow receiver: workers hold no more than
/// about 128 MiB of their events; the rest wait on disk and all go once it answers.
#[test]
fn large_events_waiting_for_a_slow_receiver_are_held_on_disk_past_a_byte_cap() {
    const EVENTS: usize = 2000;
    let (rx, gate) = TestReceiver::gated();
    let srv = TestServer::start(&endpoint(
        "slow",
        r#"["t"]"#,
        &rx.url("/"),
        "max_in_flight = 1\ntimeout = \"60s\"",
    ));
    let pad = "a".repeat(100_000);
    let mut c = srv.connect();
    for i in 0..EVENTS {
        let id = format!("big-{i}");
        assert_eq!(
            c.send(&event("t", &id, &format!(r#"{{"p":"{pad}"}}"#))),
            format!("ok {id} 1")
        );
    }
    // 2,000 events of 100 KB: 200 MB; workers take about 128 MiB of them.
    let in_memory = srv
        .metrics()
        .value("ricochet_deliveries_in_memory", &[])
        .unwrap();
    assert!(
        (1000.0..1500.0).contains(&in_memory),
        "{in_memory} deliveries in memory"
    );
    gate.open();
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(60),
        |n| n == 0.0,
    );
    let ids = rx.ids();
    assert_eq!(ids.len(), EVENTS, "every delivery arrived");
}

/// Workers hold at most 30,000 deliveries (`MIN_IN_MEMORY`, with fewer than 6,000
/// endpoints); past that, fresh ones wait on disk for the loader. The cut falls inside
/// one event's fan-out here (520 endpoints × 60 events): the routes handed over before
/// it must not be loaded again from disk.
#[test]
fn an_event_whose_fan_out_fills_the_workers_is_delivered_once_per_endpoint() {
    const ENDPOINTS: usize = 520;
    const EVENTS: usize = 60;
    let (rx, gate) = TestReceiver::gated();
    let eps: String = (0..ENDPOINTS)
        .map(|i| {
            endpoint(
                &format!("e{i}"),
                r#"["t"]"#,
                &rx.url(&format!("/e{i}")),
                "max_in_flight = 1",
            )
        })
        .collect();
    let srv = TestServer::start(&eps);
    // Every delivery is accepted while the first of each endpoint is held: the workers
    // fill up during event 57 (30,000 / 520 = 57.7).
    let mut c = srv.connect();
    for i in 0..EVENTS {
        assert_eq!(
            c.send(&event("t", &format!("f-{i}"), "{}")),
            format!("ok f-{i} {ENDPOINTS}")
        );
    }
    gate.open();
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(60),
        |v| v == 0.0,
    );
    let got = rx.requests();
    let mut seen = std::collections::HashSet::new();
    let dups: Vec<String> = got
        .iter()
        .map(|r| format!("{} {}", r.path, r.header("webhook-id").unwrap()))
        .filter(|k| !seen.insert(k.clone()))
        .collect();
    assert_eq!(
        dups.len(),
        0,
        "sent twice: {:?}…",
        &dups[..dups.len().min(5)]
    );
    assert_eq!(got.len(), ENDPOINTS * EVENTS);
}

/// Endpoints whose `max_in_flight` add up past the open-file limit: the delivery
/// sockets stop at their budget (the limit less a reserve), so the store keeps its
/// descriptors and no attempt fails for want of one. Deliveries beyond the budget are
/// held back, not counted as attempts, and all arrive once sockets are free; ingest
/// goes on throughout.
#[test]
fn delivery_sockets_stay_within_the_open_file_limit() {
    const EVENTS: usize = 150;
    const ENDPOINTS: usize = 4;
    let (rx, gate) = TestReceiver::gated();
    let eps: String = (0..ENDPOINTS)
        .map(|i| {
            endpoint(
                &format!("fd{i}"),
                r#"["t"]"#,
                &rx.url("/"),
                "max_in_flight = 150\ntimeout = \"60s\"\nretry = [\"1s\", \"1s\", \"1s\"]",
            )
        })
        .collect();
    let mut opts = ServerOpts::new(&eps);
    // A budget of 256 delivery sockets, for 600 wanted.
    opts.open_files_limit = Some(512);
    let srv = TestServer::start_with(opts);
    let mut c = srv.connect();
    for i in 0..EVENTS {
        let id = format!("fd-{i}");
        assert_eq!(
            c.send(&event("t", &id, "{}")),
            format!("ok {id} {ENDPOINTS}")
        );
    }
    // Nine tenths of the budget (the last tenth is kept for endpoints holding few).
    rx.wait_for(256 - 25, Duration::from_secs(20));
    srv.wait_log("deliveries held back", Duration::from_secs(20));
    let holds = srv.metrics().value("ricochet_delivery_holds_total", &[]);
    assert!(holds >= Some(1.0), "{holds:?}");
    // Ingest goes on while the delivery sockets are in use.
    assert_eq!(
        c.send(&event("t", "fd-late", "{}")),
        format!("ok fd-late {ENDPOINTS}")
    );
    gate.open();
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(60),
        |v| v == 0.0,
    );
    for i in (0..EVENTS)
        .map(|i| format!("fd-{i}"))
        .chain(["fd-late".into()])
    {
        let v = srv.event(&i);
        for d in v["deliveries"].as_array().unwrap() {
            assert_eq!(d["state"], "delivered", "{v}");
            assert_eq!(
                d["attempts"].as_array().unwrap().len(),
                1,
                "one attempt, none failed for want of a socket: {v}"
            );
        }
    }
    assert_eq!(rx.count(), (EVENTS + 1) * ENDPOINTS);
}

/// Endpoints whose receivers hang, with more lanes than there are delivery sockets, do
/// not hold back the others: from nine tenths of the budget in use only endpoints
/// holding fewer than a hundredth of it get more, so another endpoint's deliveries go
/// out while their attempts wait. (Shared by what was still free, six hung endpoints
/// arriving one after another took every socket: 231, 13, 6, 3, 2, 1.)
#[test]
fn endpoints_that_hang_leave_sockets_for_the_others() {
    const HUNG: usize = 8;
    const OTHERS: usize = 40;
    let (stuck, gate) = TestReceiver::gated();
    let fine = TestReceiver::start();
    let mut eps: String = (0..HUNG)
        .map(|i| {
            endpoint(
                &format!("hog{i}"),
                &format!(r#"["slow{i}"]"#),
                &stuck.url("/"),
                // Longer than the test: no attempt ends and frees its socket.
                "max_in_flight = 400\ntimeout = \"300s\"",
            )
        })
        .collect();
    eps += &endpoint("other", r#"["fast"]"#, &fine.url("/"), "max_in_flight = 8");
    let mut opts = ServerOpts::new(&eps);
    // A budget of 256 delivery sockets: nine tenths are 231, a hundredth 2.
    opts.open_files_limit = Some(512);
    let srv = TestServer::start_with(opts);
    let mut c = srv.connect();
    // The first takes nine tenths, each later one a hundredth, its receiver answering
    // none of them.
    let mut sent = 0;
    for i in 0..HUNG {
        let n = if i == 0 { 300 } else { 5 };
        c.send_each_ok(&format!("slow{i}"), &format!("hog{i}"), n);
        sent += n;
        stuck.wait_for(231 + 2 * i, Duration::from_secs(20));
    }
    srv.wait_log("deliveries held back", Duration::from_secs(20));
    c.send_each_ok("fast", "other", OTHERS);
    fine.wait_for(OTHERS, Duration::from_secs(20));
    assert_eq!(
        stuck.count(),
        231 + 2 * (HUNG - 1),
        "the hung endpoints' share"
    );
    gate.open();
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(60),
        |v| v == 0.0,
    );
    assert_eq!(stuck.ids().len(), sent);
    assert_eq!(fine.ids().len(), OTHERS);
}

/// Refused connects in a churn (40 endpoints of 64 lanes, every attempt refused and the
/// next one made at once) stay within the delivery sockets' budget. On io_uring a
/// dropped socket is closed when the runtime next parks, and its permit used to be
/// given back at once: descriptors peaked at 489 and 497 of the limit of 512 against a
/// budget of 256 (the store's files, ingest and the rest on top), a step from RocksDB
/// failing to open a file. Now within the budget and the process's own.
#[test]
fn refused_connects_in_a_churn_stay_within_the_socket_budget() {
    const EVENTS: usize = 3000;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let eps: String = (0..40)
        .map(|i| {
            endpoint(
                &format!("refused{i}"),
                r#"["t"]"#,
                &format!("http://127.0.0.1:{port}/"),
                "max_in_flight = 64\nretry = [\"1s\", \"1s\", \"1s\"]\n\
                 disable_after = { \"5xx\" = 1000000 }",
            )
        })
        .collect();
    let mut opts = ServerOpts::new(&eps);
    opts.open_files_limit = Some(512);
    let srv = TestServer::start_with(opts);
    let idle = srv.open_fds();
    let oks = srv.pipeline(event_lines("t", "r", EVENTS));
    assert_eq!(oks, EVENTS);
    // The churn is the behaviour: sample the descriptors through it.
    let mut most = 0;
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        most = most.max(srv.open_fds());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        most <= idle + 256 + 16,
        "{most} descriptors open, {idle} idle, a budget of 256 delivery sockets"
    );
    assert!(!srv.log().contains("Too many open files"), "{}", srv.log());
}

/// A connect the receiver refuses opens no connection: `ricochet_connections_opened_total`
/// counts connections made, not tries (it counted every refused one as `after_error`).
#[test]
fn refused_connects_are_not_counted_as_connections_opened() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = TestServer::start(&endpoint(
        "nobody",
        r#"["t"]"#,
        &format!("http://127.0.0.1:{port}/"),
        "retry = \"none\"\nmax_in_flight = 1",
    ));
    srv.connect().send_each_ok("t", "refused", 3);
    srv.wait_metric("ricochet_deliveries_total", Duration::from_secs(20), |v| {
        v == 3.0
    });
    let m = srv.metrics();
    assert_eq!(
        m.value("ricochet_attempts_total", &[("result", "error")]),
        Some(3.0)
    );
    assert_eq!(m.value("ricochet_connections_opened_total", &[]), Some(0.0));
}

/// Joins nested over one array render n² parts, most writing nothing: one event made its
/// worker render for seconds (ingest and every delivery of that worker waiting), and
/// was then delivered with an empty body. It now fails at once, never retried, saying
/// why; the same event's other endpoint gets it.
#[test]
fn a_render_past_the_render_budget_fails_its_delivery_and_nothing_else() {
    let rx = TestReceiver::start();
    let nested = r#"format = "text"
body = '{join(items, i, "{join(items, j, "{nothing}", "")}", "")}'
retry = ["1s"]"#;
    let srv = TestServer::start(&format!(
        "{}{}",
        endpoint("nested", r#"["t"]"#, &rx.url("/nested"), nested),
        endpoint("plain", r#"["t"]"#, &rx.url("/plain"), "")
    ));
    let items = vec!["0"; 3_000].join(",");
    let data = format!(r#"{{"items":[{items}]}}"#);
    assert_eq!(
        srv.connect().send(&event("t", "nest-1", &data)),
        "ok nest-1 2"
    );
    let v = srv.wait_event("nest-1", Duration::from_secs(10), |v| {
        let mut s = states(v);
        s.sort();
        s == ["delivered", "failed"]
    });
    let nested = v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint"] == "nested")
        .unwrap();
    let a = nested["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 1, "never retried: {v}");
    let error = a[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("body: rendering this event takes more than 4194304 steps"),
        "{error}"
    );
    let got = rx.wait_for(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/plain");
}

/// An answer whose body the receiver cuts short by closing the connection: the
/// attempt's error says the head came and how much of the body, as a timeout there
/// does, where it said only that the connection closed before a complete response.
#[test]
fn a_body_cut_short_by_a_close_says_how_far_it_came() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for body in [
            &b"Content-Length: 100\r\n\r\nok"[..],
            &b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\nde"[..],
        ] {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
            let _ = s.write_all(body);
            // Dropped: closed with the body short.
        }
    });
    let srv = TestServer::start(&endpoint(
        "short",
        r#"["t"]"#,
        &format!("http://{addr}/"),
        "retry = \"none\"",
    ));
    let mut c = srv.connect();
    for (id, want) in [
        (
            "c-1",
            "connection closed in the body of a 200 response (2 of its 100 bytes read)",
        ),
        (
            "c-2",
            "connection closed in the body of a 200 response (5 bytes read)",
        ),
    ] {
        c.send(&event("t", id, "{}"));
        let v = srv.wait_event(id, Duration::from_secs(10), |v| states(v) == ["failed"]);
        let a = &v["deliveries"][0]["attempts"][0];
        assert_eq!(a["timed_out"], false, "{a}");
        assert_eq!(a["error"], want, "{a}");
    }
}

/// An answer whose body stops short of its `Content-Length` (a length counted in
/// characters, say) times out; the attempt's error says the head came and how much of
/// the body, where it said only that time ran out.
#[test]
fn a_timeout_in_an_answer_s_body_says_how_far_it_came() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok");
        // Held open past the attempt's timeout, then dropped.
        let _ = s.read(&mut buf);
    });
    let srv = TestServer::start(&endpoint(
        "short",
        r#"["t"]"#,
        &format!("http://{addr}/"),
        "timeout = \"500ms\"\nretry = \"none\"",
    ));
    srv.connect().send(&event("t", "s-1", "{}"));
    let v = srv.wait_event("s-1", Duration::from_secs(10), |v| states(v) == ["failed"]);
    let a = &v["deliveries"][0]["attempts"][0];
    assert_eq!(a["timed_out"], true, "{a}");
    assert_eq!(
        a["error"], "timed out after 500ms in the body of a 200 response (2 of its 100 bytes read)",
        "{a}"
    );
}
