//! Endpoint policy: rate limits, minimum delay, automatic disabling, signatures, SSRF.

use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// The arrival times of `got`, asserting that no one-second window holds more than `max`.
/// Arrivals as the receiver stamps them: a thread per connection stamps a request once
/// it has read it, so on a loaded machine requests sent apart can be stamped together.
/// For a bound on the requests ricochet sends, [`attempts_at_most_per_second`] counts by
/// its own send times; this one is for requests the attempt records do not show (one
/// sent again on a new connection within an attempt).
fn at_most_per_second(got: &[Received], max: usize) -> Vec<std::time::Instant> {
    let times: Vec<_> = got.iter().map(|r| r.at).collect();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= max,
            "{in_window} requests within one second starting at #{i}"
        );
    }
    times
}

/// The times (unix ms) at which ricochet began the attempts of events `{prefix}-0` ..
/// `{prefix}-{n-1}`, sorted, once each event's deliveries are settled; asserts that no
/// one-second window holds more than `max`. Ricochet's own record of its pace: an
/// attempt's `at` is taken right after its token, and no stall at the receiver moves it.
fn attempts_at_most_per_second(srv: &TestServer, prefix: &str, n: usize, max: usize) -> Vec<u64> {
    let mut times = Vec::new();
    for i in 0..n {
        let v = srv.wait_event(&format!("{prefix}-{i}"), Duration::from_secs(20), |v| {
            states(v).iter().all(|s| s == "delivered" || s == "failed")
        });
        for d in v["deliveries"].as_array().unwrap() {
            for a in d["attempts"].as_array().unwrap() {
                let at = a["at"].as_str().unwrap();
                times.push(ricochet::ingest::parse::parse_rfc3339_ms(at).unwrap());
            }
        }
    }
    times.sort_unstable();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| **u - t < 1000).count();
        assert!(
            in_window <= max,
            "{in_window} attempts began within one second, from #{i} at {t} ms: {:?}",
            &times[i..i + in_window]
        );
    }
    times
}

#[test]
fn max_rps_holds_every_one_second_window() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint(
        "slowpoke",
        r#"["t"]"#,
        &rx.url("/"),
        "max_rps = 5",
    ));
    let mut c = srv.connect();
    c.send_each_ok("t", "rps", 30);
    let got = rx.wait_for(30, Duration::from_secs(20));
    // The bucket starts empty: 5 a second; one more allowed at a window's edge (send
    // times are whole milliseconds of another clock than the bucket's).
    let times = attempts_at_most_per_second(&srv, "rps", 30, 6);
    assert_eq!(times.len(), 30, "one attempt each");
    let span = got.last().unwrap().at - got[0].at;
    assert!(
        span >= Duration::from_millis(5000),
        "30 requests at 5/s took only {span:?}"
    );
}

#[test]
fn max_rps_keeps_spacing_at_a_receiver_slow_to_take_up_a_connection() {
    // The first request waits 1.2 s in the receiver's socket before it is read, longer
    // than two token intervals (500 ms at max_rps = 2). Paced only from when requests
    // leave, the second would follow the first's late arrival at once; paced again from
    // the first response, it leaves a full interval later.
    let rx = TestReceiver::slow_to_start_connections(Duration::from_millis(1200));
    let srv = TestServer::start(&endpoint(
        "late-reader",
        r#"["t"]"#,
        &rx.url("/"),
        "max_rps = 2\nmax_in_flight = 1",
    ));
    let mut c = srv.connect();
    c.send_each_ok("t", "slow", 5);
    let got = rx.wait_for(5, Duration::from_secs(20));
    // Half an interval of slack for scheduling on a busy machine; without the restart
    // the second request lands within a millisecond of the first.
    for (i, pair) in got.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(250),
            "request {} arrived {gap:?} after request {i} (max_rps = 2)",
            i + 1
        );
    }
    let m = srv.metrics();
    for (reason, n) in [("first", 1.0), ("peer_closed", 0.0), ("after_error", 0.0)] {
        assert_eq!(
            m.value("ricochet_connections_opened_total", &[("reason", reason)]),
            Some(n),
            "connections opened: {reason}"
        );
    }
}

#[test]
fn max_rps_is_reached_at_a_slow_receiver_that_closes_every_connection() {
    // Every answer comes after 200 ms and closes its connection, so every request is
    // the first on a new one. Two lanes in flight bounded it (jobs arriving while lanes
    // waited for tokens woke those lanes, started none), and each answer emptied the
    // bucket: 40 requests took 3.9 s. Paced by the bucket alone: 39 intervals, 1.95 s.
    let rx = TestReceiver::with_script(|_, _| {
        Reply::status(200)
            .header("Connection", "close")
            .delay(Duration::from_millis(200))
    });
    let srv = TestServer::start(&endpoint(
        "closer",
        r#"["t"]"#,
        &rx.url("/"),
        "max_rps = 20",
    ));
    srv.connect().send_each_ok("t", "c", 40);
    let got = rx.wait_for(40, Duration::from_secs(20));
    // A new connection per request: r + 2, the bound it had when counted at arrival.
    attempts_at_most_per_second(&srv, "c", 40, 22);
    let times: Vec<_> = got.iter().map(|r| r.at).collect();
    let span = *times.last().unwrap() - times[0];
    assert!(
        span < Duration::from_millis(2800),
        "40 requests at max_rps = 20 took {span:?}; gaps {:?}",
        times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        srv.metrics().value(
            "ricochet_connections_opened_total",
            &[("reason", "after_error")]
        ),
        Some(0.0)
    );
}

/// Sends `n` events at once to an endpoint at `rx` with `max_rps = rps` and `extra`
/// settings, and checks the requests' arrivals span less than `limit` (a rate not far
/// below `rps`) and ricochet began at most `rps + 2` of their attempts in any second
/// (the bucket's rate and its burst of two).
fn reaches_its_rate(rx: &TestReceiver, rps: u32, extra: &str, n: usize, limit: Duration) {
    let srv = TestServer::start(&endpoint(
        "paced",
        r#"["t"]"#,
        &rx.url("/"),
        &format!("max_rps = {rps}\nretry = \"none\"\n{extra}"),
    ));
    srv.connect().send_each_ok("t", "p", n);
    let mut times: Vec<_> = rx
        .wait_for(n, Duration::from_secs(30))
        .iter()
        .map(|r| r.at)
        .collect();
    times.sort();
    let span = *times.last().unwrap() - times[0];
    eprintln!("{n} requests at max_rps = {rps}: {span:?}");
    assert!(
        span < limit,
        "{n} requests at max_rps = {rps} took {span:?}"
    );
    attempts_at_most_per_second(&srv, "p", n, rps as usize + 2);
}

#[test]
fn max_rps_is_reached_at_a_receiver_that_closes_every_connection_whatever_its_answer_times() {
    // Every other answer takes 400 ms, and each closes its connection. Each request
    // being the first on its connection, the bucket restarted as of its estimated
    // arrival (the answer less the fastest answer), so every slow answer pushed the next
    // token back: 50 requests at max_rps = 10 took 6.73 and 6.83 s on the code before,
    // 4.90 s after (49 intervals). The next request goes on a new connection anyway:
    // paced by the bucket alone.
    let rx = TestReceiver::with_script(|_, i| {
        let slow = Duration::from_millis(if i % 2 == 1 { 400 } else { 0 });
        Reply::status(200).header("Connection", "close").delay(slow)
    });
    reaches_its_rate(&rx, 10, "", 50, Duration::from_millis(5800));
}

#[test]
fn max_rps_is_reached_at_a_receiver_that_closes_kept_connections_unannounced() {
    // Each answer keeps the connection by its headers, and the receiver closes it right
    // after. The next request on the one lane, 10 ms later (under the 50 ms idle that
    // has a kept connection looked at before reuse), was written on the closed
    // connection and sent again on a new one, and the bucket charged the resend a token
    // as the receiver might have counted both: half the rate, 150 requests at
    // max_rps = 100 in 3.18 and 3.19 s on the code before. Once the receiver is seen
    // closing kept connections, each is looked at before its reuse: 1.50 s (149
    // intervals of 10 ms).
    let rx = TestReceiver::with_script(|_, _| Reply::status(200).then_close());
    reaches_its_rate(
        &rx,
        100,
        "max_in_flight = 1",
        150,
        Duration::from_millis(2200),
    );
}

#[test]
fn max_rps_is_reached_at_a_receiver_that_closes_kept_connections_whatever_its_answer_times() {
    // The same receiver, its answers taking 0, 20 or 40 ms. Each request's connection
    // being kept by its answer, the bucket restarted as of the request's estimated
    // arrival, so each answer time pushed the next token back: 150 requests at
    // max_rps = 100 took 2.23 s with that restart (and the look before reuse).
    // A receiver seen closing the kept connection is paced by the bucket alone, as one
    // that says `Connection: close`: 1.58 s (149 intervals of 10 ms).
    let rx = TestReceiver::with_script(|_, i| {
        Reply::status(200)
            .delay(Duration::from_millis(20 * (i as u64 % 3)))
            .then_close()
    });
    reaches_its_rate(
        &rx,
        100,
        "max_in_flight = 8",
        150,
        Duration::from_millis(1900),
    );
}

#[test]
fn max_rps_is_reached_at_a_receiver_that_never_answers() {
    // Each attempt times out and its connection is dropped: the bucket restarted as of
    // the timeout, so 12 requests at max_rps = 4 with a 1 s timeout took 4.75 s (twice)
    // on the code before, 2.75 s after (11 intervals).
    let rx = TestReceiver::with_script(|_, _| Reply::status(200).delay(Duration::from_secs(5)));
    reaches_its_rate(&rx, 4, "timeout = \"1s\"", 12, Duration::from_millis(3600));
}

#[test]
fn min_delay_holds_back_the_first_attempt() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint(
        "later",
        r#"["t"]"#,
        &rx.url("/"),
        "min_delay = \"1500ms\"",
    ));
    let mut c = srv.connect();
    let sent = std::time::Instant::now();
    c.send(&event("t", "md-1", "{}"));
    let got = rx.wait_for(1, Duration::from_secs(10));
    let waited = got[0].at - sent;
    assert!(
        waited >= Duration::from_millis(1450),
        "first attempt after {waited:?}"
    );
    // An event whose time is long past is due at once.
    let old = unix_ms() - 60_000;
    let sent = std::time::Instant::now();
    c.send(&format!(
        r#"{{"type":"t","id":"md-2","time":{old},"data":{{}}}}"#
    ));
    let got = rx.wait_for(2, Duration::from_secs(10));
    assert!(got[1].at - sent < Duration::from_millis(1000));
}

/// Asserts that `what` happened within `limit` of `since`: a test whose timing says
/// nothing on a machine that slow fails saying so, not on its real assertion.
fn in_time(since: std::time::Instant, limit: Duration, what: &str) {
    assert!(
        since.elapsed() < limit,
        "too slow to tell: {what} {:?} after the start",
        since.elapsed()
    );
}

#[test]
fn a_min_delay_made_longer_holds_deliveries_already_scheduled() {
    // Scheduled under 1 s, attempted under the 3 s a PUT set meanwhile; on an ordered
    // endpoint the one behind waits too.
    for ordered in [false, true] {
        let rx = TestReceiver::start();
        let srv = TestServer::start(&endpoint(
            "later",
            r#"["t"]"#,
            &rx.url("/"),
            &format!("min_delay = \"1s\"\nordered = {ordered}"),
        ));
        let mut c = srv.connect();
        let sent = std::time::Instant::now();
        c.send_each_ok("t", "md", 2);
        let (status, v) = srv.call(
            "PUT",
            "/v1/endpoints/later",
            &ep(
                "later",
                &["t"],
                &rx.url("/"),
                serde_json::json!({"min_delay": "3s", "ordered": ordered}),
            ),
        );
        assert_eq!(status, 200, "{v}");
        in_time(sent, Duration::from_millis(900), "the PUT answered");
        let got = rx.wait_for(2, Duration::from_secs(10));
        for r in &got {
            let waited = r.at - sent;
            assert!(
                waited >= Duration::from_millis(2950),
                "ordered = {ordered}: attempted {waited:?} after the event, min_delay 3s"
            );
        }
        assert_eq!(ids_in_order(&got).len(), 2);
    }
}

#[test]
fn a_min_delay_made_longer_holds_a_retry_falling_due_before_it() {
    // First attempted under 0 s and answered 500, its retry (1 s later) falls before
    // the 4 s a PUT set meanwhile: no attempt before the event's time plus `min_delay`
    // (SPEC §2), a retry's included.
    for ordered in [false, true] {
        let rx = TestReceiver::with_script(|_, n| Reply::status(if n == 0 { 500 } else { 200 }));
        let srv = TestServer::start(&endpoint(
            "later",
            r#"["t"]"#,
            &rx.url("/"),
            &format!("retry = [\"1s\"]\nordered = {ordered}"),
        ));
        let mut c = srv.connect();
        let sent = std::time::Instant::now();
        c.send_each_ok("t", "md", 1);
        let first = rx.wait_for(1, Duration::from_secs(10))[0].at;
        let (status, v) = srv.call(
            "PUT",
            "/v1/endpoints/later",
            &ep(
                "later",
                &["t"],
                &rx.url("/"),
                serde_json::json!({"min_delay": "4s", "retry": ["1s"], "ordered": ordered}),
            ),
        );
        assert_eq!(status, 200, "{v}");
        in_time(first, Duration::from_millis(900), "the PUT answered");
        let got = rx.wait_for(2, Duration::from_secs(10));
        let waited = got[1].at - sent;
        assert!(
            waited >= Duration::from_millis(3950),
            "ordered = {ordered}: retried {waited:?} after the event, min_delay 4s"
        );
        let v = srv.wait_event("md-0", Duration::from_secs(5), |v| {
            states(v) == ["delivered"]
        });
        assert_eq!(v["deliveries"][0]["attempts"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn an_endpoint_enabled_again_still_keeps_min_delay() {
    // Paused before its first attempt was due, a delivery keeps its event time +
    // min_delay when the endpoint is enabled again (only retries resume at once).
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint(
        "later",
        r#"["t"]"#,
        &rx.url("/"),
        "min_delay = \"4s\"",
    ));
    let mut c = srv.connect();
    let sent = std::time::Instant::now();
    assert!(c.send(&event("t", "md-pause", "{}")).starts_with("ok "));
    assert_eq!(srv.post("/v1/endpoints/later/disable").0, 200);
    srv.wait_event("md-pause", Duration::from_secs(10), |v| {
        states(v) == ["paused"]
    });
    assert_eq!(srv.post("/v1/endpoints/later/enable").0, 200);
    srv.wait_event("md-pause", Duration::from_secs(10), |v| {
        states(v) == ["pending"]
    });
    in_time(
        sent,
        Duration::from_millis(3500),
        "paused and enabled again",
    );
    let got = rx.wait_for(1, Duration::from_secs(15));
    let waited = got[0].at - sent;
    assert!(
        waited >= Duration::from_millis(3950),
        "first attempt {waited:?} after the event, min_delay 4s"
    );
}

fn failing_ep(url: &str) -> String {
    endpoint(
        "fragile",
        r#"["t"]"#,
        url,
        "max_in_flight = 1\nretry = [\"30s\"]\ndisable_after = { \"5xx\" = 2 }",
    )
}

#[test]
fn disable_at_threshold_pauses_then_enable_delivers_and_state_survives_kill9() {
    // Slow failures, so all four events are routed before the endpoint is disabled.
    let rx = TestReceiver::with_script(|_, _| Reply::status(500).delay(Duration::from_millis(300)));
    let srv = TestServer::start(&failing_ep(&rx.url("/")));
    let mut c = srv.connect();
    c.send_each_ok("t", "d", 4);
    // Two consecutive 5xx → disabled; every delivery paused, none lost.
    for i in 0..4 {
        srv.wait_event(&format!("d-{i}"), Duration::from_secs(10), |v| {
            states(v) == ["paused"]
        });
    }
    assert_eq!(rx.count(), 2);
    let (status, ep) = srv.get("/v1/endpoints/fragile");
    assert_eq!(status, 200);
    assert_eq!(ep["enabled"], false);
    assert_eq!(
        ep["disabled_reason"],
        "2 5xx failures since the last success (5xx answers, network errors and timeouts \
         count as 5xx, and so do other answers the success and error rules refuse)"
    );
    // A disabled endpoint is not routed to.
    assert_eq!(c.send(&event("t", "d-late", "{}")), "ok d-late 0");

    // The disabled state and the paused deliveries survive kill -9.
    let dir = srv.kill9_for_restart();
    let srv = TestServer::start_in(dir, &ServerOpts::new(&failing_ep(&rx.url("/"))));
    assert_eq!(srv.get("/v1/endpoints/fragile").1["enabled"], false);
    assert_eq!(srv.event("d-3")["deliveries"][0]["state"], "paused");

    // Enable with the receiver healthy: all four delivered.
    rx.set_script(|_, _| Reply::status(200));
    let (status, _) = srv.post("/v1/endpoints/fragile/enable");
    assert_eq!(status, 200);
    for i in 0..4 {
        srv.wait_event(&format!("d-{i}"), Duration::from_secs(10), |v| {
            states(v) == ["delivered"]
        });
    }
    assert_eq!(srv.get("/v1/endpoints/fragile").1["enabled"], true);
}

#[test]
fn standard_webhooks_signature_verifies_with_an_independent_implementation() {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let rx = TestReceiver::start();
    let secret_a = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let secret_b = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
    let srv = TestServer::start(&endpoint(
        "signed",
        r#"["t"]"#,
        &rx.url("/"),
        &format!("signing_secret = \"{secret_a} {secret_b}\""),
    ));
    srv.connect()
        .send(&event("t", "sig-1", r#"{"amount": 12.50}"#));
    let r = &rx.wait_for(1, Duration::from_secs(10))[0];
    let id = r.header("webhook-id").unwrap();
    let ts = r.header("webhook-timestamp").unwrap();
    let sigs: Vec<&str> = r.header("webhook-signature").unwrap().split(' ').collect();
    assert_eq!(sigs.len(), 2, "one signature per secret");
    for (secret, sig) in [secret_a, secret_b].iter().zip(&sigs) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&r.body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(*sig, format!("v1,{expected}"));
    }
}

#[test]
fn ssrf_guard_refuses_names_resolving_to_loopback_unless_allowed() {
    let rx = TestReceiver::start();
    let url = format!("http://localhost:{}/", rx.addr.port());
    let srv = TestServer::start_with(
        ServerOpts::new(&endpoint(
            "by-name",
            r#"["t"]"#,
            &url,
            "retry = [\"100ms\"]",
        ))
        .server("allow_private_networks = false"),
    );
    srv.connect().send(&event("t", "ssrf-name", "{}"));
    let v = srv.wait_event("ssrf-name", Duration::from_secs(10), |v| {
        states(v) == ["failed"]
    });
    let a = &v["deliveries"][0]["attempts"];
    assert_eq!(a.as_array().unwrap().len(), 1, "blocked is never retried");
    assert!(a[0]["error"].as_str().unwrap().contains("blocked"));
    assert_eq!(rx.count(), 0);
    // With the switch on, the same name is delivered to.
    let srv2 = TestServer::start(&endpoint("by-name", r#"["t"]"#, &url, ""));
    srv2.connect().send(&event("t", "ssrf-ok", "{}"));
    rx.wait_for(1, Duration::from_secs(10));
}

/// An endpoint made over the API with the guard off, its URL a loopback address, is
/// disabled at a start with the guard on, its retrying delivery paused (it was run, and
/// every delivery failed as `blocked`, never retried); a start with the guard off again
/// runs it, and the delivery goes.
#[test]
fn a_stored_endpoint_the_ssrf_guard_refuses_waits_disabled_until_it_passes() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(500));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let open = ServerOpts::new("");
    let mut srv = TestServer::start_in(dir.clone(), &open);
    let def = ep(
        "loop",
        &["t"],
        &rx.url("/"),
        serde_json::json!({"retry": ["1s", "1s", "1s"]}),
    );
    let (status, v) = srv.call("POST", "/v1/endpoints", &def);
    assert_eq!(status, 201, "{v}");
    srv.connect().send(&event("t", "g-1", "{}"));
    srv.wait_event("g-1", Duration::from_secs(10), |v| {
        states(v) == ["retrying"]
    });
    assert_eq!(srv.stop(), Some(0));
    drop(srv);

    let guarded = ServerOpts::new("").server("allow_private_networks = false");
    let mut srv = TestServer::start_in(dir.clone(), &guarded);
    let (_, ep) = srv.get("/v1/endpoints/loop");
    assert_eq!(ep["enabled"], false, "{ep}");
    let reason = ep["disabled_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the SSRF guard refuses"), "{reason}");
    srv.wait_event("g-1", Duration::from_secs(10), |v| states(v) == ["paused"]);
    assert_eq!(srv.stop(), Some(0));
    drop(srv);

    rx.set_script(|_, _| Reply::status(200));
    let srv = TestServer::start_in(dir, &open);
    assert_eq!(srv.get("/v1/endpoints/loop").1["enabled"], true);
    srv.wait_event("g-1", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
}

fn ordered_ep(url: &str) -> String {
    endpoint(
        "fifo",
        r#"["t"]"#,
        url,
        "ordered = true\nretry = [\"1s\", \"1s\", \"1s\"]",
    )
}

fn ids_in_order(r: &[Received]) -> Vec<String> {
    r.iter()
        .map(|x| x.header("webhook-id").unwrap().to_string())
        .collect()
}

#[test]
fn ordered_endpoint_is_strict_fifo_behind_a_failing_head() {
    let rx = TestReceiver::with_script(|_, n| {
        if n == 0 {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let srv = TestServer::start(&ordered_ep(&rx.url("/")));
    let mut c = srv.connect();
    c.send_each_ok("t", "o", 5);
    let got = rx.wait_for(6, Duration::from_secs(15));
    assert_eq!(
        ids_in_order(&got),
        ["o-0", "o-0", "o-1", "o-2", "o-3", "o-4"]
    );
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "the head waited for its retry"
    );
}

#[test]
fn ordered_endpoint_is_not_held_by_an_event_that_expires_before_it_is_due() {
    // An event stamped 19.5 s ahead, with a `min_delay` of 10 s and a retention of 20 s,
    // falls due after the retention floor has surely passed it (the floor moves every
    // 2.5 s; the committer allows two moves and a second: 26 s after acceptance, 3.5 s
    // before it is due): it is never attempted, so the events after it, due in 10 s,
    // do not wait the 20 s until it expires. (An event stamped further ahead than the
    // retention is refused at ingest.)
    let rx = TestReceiver::start();
    let ep = ordered_ep(&rx.url("/")) + "min_delay = \"10s\"\n";
    let srv = TestServer::start_with(ServerOpts::new(&ep).server("retention = \"20s\""));
    let mut c = srv.connect();
    let ahead = unix_ms() + 19_500;
    let ack = c.send(&format!(
        r#"{{"type":"t","id":"skewed","time":{ahead},"data":{{}}}}"#
    ));
    assert!(ack.starts_with("ok skewed 1"), "{ack}");
    c.send_each_ok("t", "after", 3);
    let got = rx.wait_for(3, Duration::from_secs(15));
    assert_eq!(ids_in_order(&got), ["after-0", "after-1", "after-2"]);
    assert_eq!(states(&srv.event("skewed")), ["pending"]);
}

#[test]
fn ordered_endpoint_keeps_its_order_across_kill9() {
    let rx = TestReceiver::with_script(|r, _| {
        if r.header("webhook-id") == Some("k-0") {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let ep = endpoint(
        "fifo",
        r#"["t"]"#,
        &rx.url("/"),
        "ordered = true\nretry = [\"2s\", \"2s\"]",
    );
    let srv = TestServer::start(&ep);
    let mut c = srv.connect();
    for i in 0..4 {
        c.send(&event("t", &format!("k-{i}"), "{}"));
    }
    // The head failed once and waits for its retry; nothing behind it was sent.
    srv.wait_event("k-0", Duration::from_secs(10), |v| {
        v["deliveries"][0]["state"] == "retrying"
    });
    assert_eq!(ids_in_order(&rx.requests()), ["k-0"]);
    let dir = srv.kill9_for_restart();
    rx.set_script(|_, _| Reply::status(200));
    let _srv = TestServer::start_in(dir, &ServerOpts::new(&ep));
    let got = rx.wait_for(5, Duration::from_secs(15));
    assert_eq!(ids_in_order(&got), ["k-0", "k-0", "k-1", "k-2", "k-3"]);
}

#[test]
fn ordered_endpoint_keeps_acceptance_order_against_event_times_across_kill9() {
    // The first event's time is ahead, the second's long past: acceptance order still
    // holds, and the first's due time bounds the second's after a kill -9 between them.
    let rx = TestReceiver::start();
    let ep = ordered_ep(&rx.url("/"));
    let srv = TestServer::start(&ep);
    let now = unix_ms();
    let sent = std::time::Instant::now();
    let line =
        |id: &str, time: String| format!(r#"{{"type":"t","id":"{id}","time":{time},"data":{{}}}}"#);
    // The first in RFC 3339, the second in Unix milliseconds.
    let ahead = time::OffsetDateTime::from_unix_timestamp_nanos((now as i128 + 3000) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(srv
        .connect()
        .send(&line("ahead", format!("{ahead:?}")))
        .starts_with("ok "));
    let dir = srv.kill9_for_restart();
    let srv = TestServer::start_in(dir, &ServerOpts::new(&ep));
    assert!(srv
        .connect()
        .send(&line("past", (now - 60_000).to_string()))
        .starts_with("ok "));
    let got = rx.wait_for(2, Duration::from_secs(15));
    assert_eq!(ids_in_order(&got), ["ahead", "past"]);
    let waited = got[0].at - sent;
    assert!(
        waited >= Duration::from_millis(2950),
        "the first event's time is 3 s ahead; delivered after {waited:?}"
    );
}

/// An ordered endpoint's head waits for its retry; a replay of an older event, which
/// goes before it, fails once and is then delivered. After a restart the head still
/// holds back what was accepted after it. (Helper O, session 48: the endpoint's record
/// kept one held head, which the replay's retry replaced, then cleared when it was
/// delivered; after the restart nothing was handed over first, the loader reached
/// `after` long before the head's retry, and it went first.)
#[test]
fn an_ordered_head_still_holds_the_rest_after_a_restart_once_a_replay_s_retry_is_done() {
    let tries: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let seen = tries.clone();
    let rx = TestReceiver::with_script(move |r, _| {
        let id = r.header("webhook-id").unwrap_or("?").to_string();
        let mut m = seen.lock().unwrap();
        let n = m.entry(id.clone()).or_insert(0);
        *n += 1;
        match (id.as_str(), *n) {
            ("head", _) | ("old", 2) => Reply::status(500),
            _ => Reply::status(200),
        }
    });
    let ep = endpoint(
        "ord",
        r#"["t"]"#,
        &rx.url("/"),
        "ordered = true\nretry = [\"1s\", \"12s\"]",
    );
    let srv = TestServer::start(&ep);
    let mut c = srv.connect();
    assert_eq!(c.send(&event("t", "old", "{}")), "ok old 1");
    srv.wait_event("old", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    assert_eq!(c.send(&event("t", "head", "{}")), "ok head 1");
    // Failed twice: its next retry is 12 s out.
    srv.wait_event("head", Duration::from_secs(10), |v| {
        v["deliveries"][0]["attempts"].as_array().map(Vec::len) == Some(2)
    });
    assert_eq!(c.send(&event("t", "after", "{}")), "ok after 1");
    let (st, v) = srv.post("/v1/events/old/replay");
    assert_eq!(st, 202, "{v}");
    srv.wait_event("old", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
            && v["deliveries"][0]["attempts"].as_array().map(Vec::len) == Some(3)
    });
    assert_eq!(
        ids_in_order(&rx.requests()),
        ["old", "head", "head", "old", "old"],
        "`after` waits behind the head"
    );
    let dir = srv.kill9_for_restart();
    let before = rx.count();
    let _srv = TestServer::start_in(dir, &ServerOpts::new(&ep));
    let got = rx.wait_until(Duration::from_secs(30), "`after`", |r| {
        r.iter().any(|q| q.header("webhook-id") == Some("after"))
    });
    assert_eq!(
        ids_in_order(&got[before..]),
        ["head", "after"],
        "the head's retry goes before what was accepted after it"
    );
}

#[test]
fn a_success_resets_the_failure_counts_and_4xx_has_its_own_threshold() {
    // 400, 400, 200, 400, 400: never three 4xx in a row, still enabled; one more 400
    // makes three. (A 5xx threshold of 1 shows that the classes are counted apart.)
    let rx = TestReceiver::with_script(|_, n| {
        if n == 2 {
            Reply::status(200)
        } else {
            Reply::status(400)
        }
    });
    let srv = TestServer::start(&endpoint(
        "picky",
        r#"["t"]"#,
        &rx.url("/"),
        "max_in_flight = 1\nretry = \"none\"\ndisable_after = { \"4xx\" = 3, \"5xx\" = 1 }",
    ));
    let mut c = srv.connect();
    let settled = |v: &serde_json::Value| matches!(states(v).as_slice(), [s] if s == "failed" || s == "delivered");
    for i in 0..5 {
        let id = format!("p-{i}");
        c.send(&event("t", &id, "{}"));
        srv.wait_event(&id, Duration::from_secs(10), settled);
    }
    let (_, ep) = srv.get("/v1/endpoints/picky");
    assert_eq!(ep["enabled"], true, "{ep}");
    assert_eq!(ep["consecutive_failures"]["4xx"], 2, "{ep}");
    c.send(&event("t", "p-5", "{}"));
    srv.wait_event("p-5", Duration::from_secs(10), settled);
    let ep = srv.wait_endpoint("picky", Duration::from_secs(10), |v| v["enabled"] == false);
    assert!(
        ep["disabled_reason"].as_str().unwrap().contains("4xx"),
        "{ep}"
    );
    assert_eq!(rx.count(), 6);
}

#[test]
fn an_ordered_head_due_during_downtime_is_attempted_once_after_restart() {
    // After a restart the held head is handed over at once, and the loader loads the same
    // delivery from the store: a copy that arrives during the (slow) attempt must not
    // be attempted again once it is delivered.
    let rx = TestReceiver::with_script(|_, _| Reply::status(500));
    let ep = endpoint(
        "fifo",
        r#"["t"]"#,
        &rx.url("/"),
        "ordered = true\nretry = [\"1s\", \"1s\"]",
    );
    let srv = TestServer::start(&ep);
    srv.connect().send(&event("t", "once", "{}"));
    srv.wait_event("once", Duration::from_secs(10), |v| {
        v["deliveries"][0]["state"] == "retrying"
    });
    let dir = srv.kill9_for_restart();
    // Down for longer than the retry wait: the retry is overdue at the restart.
    std::thread::sleep(Duration::from_millis(1500));
    rx.set_script(|_, _| Reply::status(200).delay(Duration::from_millis(500)));
    let srv = TestServer::start_in(dir, &ServerOpts::new(&ep));
    rx.wait_for(2, Duration::from_secs(10));
    let v = srv.wait_event("once", Duration::from_secs(10), |v| {
        v["deliveries"][0]["state"] == "delivered"
    });
    // Anything sent twice would have arrived by now: the stale copy would go right after
    // the first answer, and the log shows that answer.
    srv.connect().send(&event("t", "after", "{}"));
    let got = rx.wait_for(3, Duration::from_secs(10));
    assert_eq!(ids_in_order(&got), ["once", "once", "after"]);
    assert_eq!(
        v["deliveries"][0]["attempts"].as_array().unwrap().len(),
        2,
        "{v}"
    );
}

/// After a restart an ordered endpoint's held head is handed over at once, while its key
/// waits in the store for the loader. Made `ordered = false` before the loader gets
/// there, the head is sent once: the loader's copy went to the timer wheel beside the
/// first, and both were sent.
#[test]
fn an_ordered_head_handed_over_at_start_is_sent_once_after_ordered_is_turned_off() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(500));
    let ep = endpoint(
        "fifo",
        r#"["t"]"#,
        &rx.url("/"),
        "ordered = true\nretry = [\"4s\"]",
    );
    let srv = TestServer::start(&ep);
    srv.connect().send(&event("t", "head", "{}"));
    srv.wait_event("head", Duration::from_secs(10), |v| {
        v["deliveries"][0]["state"] == "retrying"
    });
    let dir = srv.kill9_for_restart();
    rx.set_script(|_, _| Reply::status(200));
    let srv = TestServer::start_in(dir, &ServerOpts::new(&ep));
    let (status, v) = srv.call(
        "PUT",
        "/v1/endpoints/fifo",
        &serde_json::json!({
            "events": ["t"], "url": rx.url("/"), "ordered": false, "retry": ["4s"]
        }),
    );
    assert_eq!(status, 200, "{v}");
    let v = srv.wait_event("head", Duration::from_secs(15), |v| {
        v["deliveries"][0]["state"] == "delivered"
    });
    // A second copy would be due with the first, so sent by now; anything sent after
    // the next event is sent after that.
    srv.connect().send(&event("t", "after", "{}"));
    let got = rx.wait_for(3, Duration::from_secs(10));
    assert_eq!(ids_in_order(&got), ["head", "head", "after"]);
    assert_eq!(attempt_statuses(&v), [500, 200]);
}

/// An ordered endpoint's head, delivered in a run with `ordered = false` in the file, is
/// not sent again when the file makes it ordered once more: the held head recorded by
/// the first run was kept by the file's start (a `PUT` dropped it), and the next ordered
/// start sent it a second time, overwriting its attempt in the log.
#[test]
fn a_head_delivered_while_not_ordered_is_not_sent_again_when_ordered_returns() {
    let rx = TestReceiver::with_script(|_, _| Reply::status(500));
    let ep = |ordered: bool| {
        endpoint(
            "fifo",
            r#"["t"]"#,
            &rx.url("/"),
            &format!("ordered = {ordered}\nretry = [\"2s\"]"),
        )
    };
    let mut srv = TestServer::start(&ep(true));
    srv.connect().send(&event("t", "head", "{}"));
    srv.wait_event("head", Duration::from_secs(10), |v| {
        v["deliveries"][0]["state"] == "retrying"
    });
    assert_eq!(srv.stop(), Some(0));
    rx.set_script(|_, _| Reply::status(200));
    let dir = Arc::clone(&srv.dir);
    drop(srv);
    let mut srv = TestServer::start_in(dir.clone(), &ServerOpts::new(&ep(false)));
    srv.wait_event("head", Duration::from_secs(10), |v| {
        v["deliveries"][0]["state"] == "delivered"
    });
    assert_eq!(srv.stop(), Some(0));
    drop(srv);
    let srv = TestServer::start_in(dir, &ServerOpts::new(&ep(true)));
    // A held head would go at start, before anything sent after it: only `after` comes.
    srv.connect().send(&event("t", "after", "{}"));
    let got = rx.wait_for(3, Duration::from_secs(10));
    assert_eq!(ids_in_order(&got), ["head", "head", "after"]);
    let v = srv.event("head");
    assert_eq!(attempt_statuses(&v), [500, 200], "{v}");
}

/// A held head whose due entry is gone (delivered since, the hold left behind: by a
/// start that kept it, or a version that did) is not sent at an ordered start, though
/// its event is still there.
#[test]
fn an_ordered_start_sends_no_held_head_whose_due_entry_is_gone() {
    let rx = TestReceiver::start();
    let ep = endpoint(
        "fifo",
        r#"["t"]"#,
        &rx.url("/"),
        "ordered = true\nretry = [\"2s\"]",
    );
    let mut srv = TestServer::start(&ep);
    srv.connect().send(&event("t", "done", "{}"));
    srv.wait_event("done", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    assert_eq!(srv.stop(), Some(0));
    let dir = Arc::clone(&srv.dir);
    drop(srv);
    {
        let store = ricochet::store::Store::open(&dir.path().join("data")).unwrap();
        let seq = store.event_by_id("done").unwrap().unwrap().seq;
        let (name, mut meta) = store
            .endpoints()
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == "fifo")
            .unwrap();
        assert_eq!(meta.hold, None, "a delivered head holds nothing");
        meta.hold = Some((seq, unix_ms(), 1));
        let mut batch = store.batch();
        batch.put_endpoint(&store, &name, &meta);
        store.commit(batch, true).unwrap();
    }
    let srv = TestServer::start_in(dir, &ServerOpts::new(&ep));
    srv.connect().send(&event("t", "after", "{}"));
    let got = rx.wait_for(2, Duration::from_secs(10));
    assert_eq!(ids_in_order(&got), ["done", "after"]);
}

/// The status codes of a delivery's attempts, in the log's order.
fn attempt_statuses(v: &serde_json::Value) -> Vec<u64> {
    v["deliveries"][0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap_or(0))
        .collect()
}

/// A receiver whose first request waits at `gate`, then answers 500; every other
/// request gets 200 at once.
fn first_held_then_500(gate: &Gate) -> TestReceiver {
    let gate = gate.clone();
    TestReceiver::with_script(move |_, n| {
        if n == 0 {
            gate.wait();
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    })
}

/// Deliveries of type `t` each filler endpoint has waiting, due in an hour
/// ([`a_long_scan_ahead`]).
const SCAN_FILL: usize = 15_000;

/// A server whose due index makes a pause's scan take many pages: `fillers` get
/// [`SCAN_FILL`] deliveries each, due in an hour, and `(name, type, extra)` is an
/// endpoint at a gated receiver's `/{name}` (a 300 s timeout: it waits for the gate).
/// Also returns the endpoints' definitions, for a restart.
fn a_long_scan_ahead(
    fillers: &[&str],
    (name, etype, extra): (&str, &str, &str),
) -> (TestReceiver, Gate, TestServer, String) {
    let (rx, gate) = TestReceiver::gated();
    let mut eps = String::new();
    for f in fillers {
        eps += &endpoint(f, r#"["t"]"#, &rx.url("/later"), "min_delay = \"1h\"");
    }
    eps += &endpoint(
        name,
        &format!(r#"["{etype}"]"#),
        &rx.url(&format!("/{name}")),
        &format!("{extra}\ntimeout = \"300s\""),
    );
    let srv = TestServer::start(&eps);
    assert_eq!(srv.pipeline(event_lines("t", "t", SCAN_FILL)), SCAN_FILL);
    (rx, gate, srv, eps)
}

#[test]
fn endpoints_disabled_together_share_one_paged_pause_while_ingest_goes_on() {
    // Eight endpoints with 15,000 deliveries each due in an hour, and `held`, whose
    // worker queues 19 of its 20 deliveries behind one attempt a gated receiver holds.
    // Each disable used to scan the whole due index within a committer round, ingest
    // waiting: 100 endpoints disabled at once over 800,000 keys held every ack for
    // 13 s. Endpoints disabled together now share one scan, in pages between rounds:
    // an event sent after the disables is answered while the pause is under way, and
    // the pause still ends with every delivery where it belongs. Deletions meanwhile
    // join the same scan.
    let (rx, gate, srv, _) = a_long_scan_ahead(
        &["e0", "e1", "e2", "e3", "e4", "e5", "x0", "x1"],
        ("held", "h", "max_in_flight = 1"),
    );
    const N: usize = SCAN_FILL;
    srv.connect().send_each_ok("h", "h", 20);
    rx.wait_for(1, Duration::from_secs(20));
    for name in ["e0", "e1", "e2", "e3", "e4", "e5", "held"] {
        assert_eq!(srv.post(&format!("/v1/endpoints/{name}/disable")).0, 200);
    }
    assert_eq!(srv.connect().send(&event("o", "after", "{}")), "ok after 0");
    let all = (6 * N + 19) as f64;
    let paused = srv
        .metrics()
        .value("ricochet_deliveries_paused", &[])
        .unwrap();
    assert!(
        paused < all,
        "answered while the pause is under way: {paused} of {all} paused"
    );
    // While it is: `e0` enabled again (its deliveries pending again), `e1` and the
    // enabled `x0` and `x1` deleted (their deliveries failed).
    assert_eq!(srv.post("/v1/endpoints/e0/enable").0, 200);
    for name in ["e1", "x0", "x1"] {
        let path = format!("/v1/endpoints/{name}");
        assert_eq!(srv.call("DELETE", &path, &serde_json::Value::Null).0, 200);
    }
    let paused = (4 * N + 19) as f64;
    srv.wait_metric("ricochet_deliveries_paused", Duration::from_secs(60), |v| {
        v == paused
    });
    let pending = (5 * N + 20) as f64;
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(60),
        |v| v == pending,
    );
    // `held`'s 19 were dropped from its worker's queue at the disable, below the
    // loader's cursor: the scan moved them too, and the enable brings them.
    gate.open();
    assert_eq!(srv.post("/v1/endpoints/held/enable").0, 200);
    rx.wait_until(Duration::from_secs(20), "held's 20", |got| {
        got.iter().filter(|r| r.path == "/held").count() == 20
    });
    // The receiver sees a request before its outcome is recorded: awaited.
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(20),
        |v| v == (5 * N) as f64,
    );
    assert_eq!(
        srv.metrics().value("ricochet_deliveries_paused", &[]),
        Some((4 * N) as f64)
    );
    assert_eq!(rx.count(), 20, "nothing of the others went out");
}

/// The fillers of [`ord_enabled_during_a_long_pause`].
const FILLERS: [&str; 6] = ["f0", "f1", "f2", "f3", "f4", "f5"];

/// [`a_long_scan_ahead`] with [`FILLERS`] and an ordered `ord` at `/ord`: events `a-0`
/// .. `a-19` sent to `ord` (`{"n": i}`), the first held at the gate, every endpoint
/// disabled, `ord` enabled again at once, and `b-20` .. `b-24` sent while the pause is
/// under way.
fn ord_enabled_during_a_long_pause() -> (TestReceiver, Gate, TestServer, String) {
    let (rx, gate, srv, eps) = a_long_scan_ahead(&FILLERS, ("ord", "o", "ordered = true"));
    let mut conn = srv.connect();
    for i in 0..20 {
        let line = event("o", &format!("a-{i}"), &format!(r#"{{"n":{i}}}"#));
        assert_eq!(conn.send(&line), format!("ok a-{i} 1"));
    }
    rx.wait_for(1, Duration::from_secs(20));
    for name in FILLERS.iter().chain(&["ord"]) {
        assert_eq!(srv.post(&format!("/v1/endpoints/{name}/disable")).0, 200);
    }
    assert_eq!(srv.post("/v1/endpoints/ord/enable").0, 200);
    // Accepted while it is held: routed to it, and delivered after the others.
    for i in 20..25 {
        let line = event("o", &format!("b-{i}"), &format!(r#"{{"n":{i}}}"#));
        assert_eq!(conn.send(&line), format!("ok b-{i} 1"));
    }
    (rx, gate, srv, eps)
}

#[test]
fn an_endpoint_enabled_while_its_pause_is_under_way_resumes_once_it_is_done() {
    // Six endpoints with 15,000 deliveries each due in an hour make the shared scan
    // long; `ord` (ordered) has one attempt a gated receiver holds and 19 queued
    // behind it. All are disabled, and `ord` enabled again at once. The enable used to
    // finish `ord`'s part of the scan with a scan of its own over the whole index, in
    // the call, ingest waiting (0.2–1 s per call over 300,000–1,000,000 keys). It is
    // held now: routed again, its deliveries paused with those of events accepted
    // meanwhile, until the shared scan is done with it; then it resumes, each delivery
    // once and in acceptance order.
    let (rx, gate, srv, _) = ord_enabled_during_a_long_pause();
    const N: usize = SCAN_FILL;
    let all = (FILLERS.len() * N) as f64;
    let paused = srv
        .metrics()
        .value("ricochet_deliveries_paused", &[])
        .unwrap();
    assert!(
        paused < all + 24.0,
        "answered while the pause is under way: {paused} paused"
    );
    gate.open();
    let got = rx.wait_until(Duration::from_secs(60), "ord's 25", |got| {
        got.iter().filter(|r| r.path == "/ord").count() >= 25
    });
    srv.wait_metric("ricochet_deliveries_paused", Duration::from_secs(60), |v| {
        v == all
    });
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(60),
        |v| v == all,
    );
    let ns: Vec<u64> = got
        .iter()
        .filter(|r| r.path == "/ord")
        .map(|r| r.json()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..25).collect::<Vec<u64>>(), "each once, in order");
    assert_eq!(rx.count(), 25, "nothing of the others went out");
    // It was held, and resumed once the scan was done with it.
    let log = srv.log();
    let held = log
        .find("endpoint enabled while its pause is under way")
        .expect("held");
    let resumed = log
        .find("the pause of an endpoint enabled meanwhile is done")
        .expect("resumed");
    assert!(held < resumed);
    assert!(log[held..].lines().next().unwrap().contains("ord"));
}

/// The body's `n` of each request to `path`, as they came, and of those the first
/// arrivals of each `n`.
fn first_arrivals(requests: &[Received], path: &str) -> (Vec<u64>, Vec<u64>) {
    let ns: Vec<u64> = requests
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.json()["n"].as_u64().unwrap())
        .collect();
    let first = firsts(&ns);
    (ns, first)
}

/// Each distinct item of `xs` once, where it first stands (first arrivals, a resend
/// left out).
fn firsts<T: PartialEq + Clone>(xs: &[T]) -> Vec<T> {
    let mut first: Vec<T> = Vec::new();
    for x in xs {
        if !first.contains(x) {
            first.push(x.clone());
        }
    }
    first
}

#[test]
fn an_endpoint_held_at_a_kill9_resumes_after_the_restart() {
    // Held (enabled while its pause was under way) when the process dies: the start
    // finds its pause's marker with the endpoint enabled, ends the pause (one scan of
    // the due index for every such endpoint) and resumes it. Every delivery arrives,
    // in acceptance order; the one in flight at the kill again.
    let (rx, gate, srv, eps) = ord_enabled_during_a_long_pause();
    // The log is read from the process's output as it comes: awaited, not read once.
    srv.wait_log(
        "endpoint enabled while its pause is under way",
        Duration::from_secs(10),
    );
    let dir = srv.kill9_for_restart();
    gate.open();
    let srv = TestServer::start_in(dir, &ServerOpts::new(&eps));
    let got = rx.wait_until(Duration::from_secs(60), "ord's 25", |got| {
        let mut seen: Vec<u64> = got
            .iter()
            .filter(|r| r.path == "/ord")
            .map(|r| r.json()["n"].as_u64().unwrap())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len() == 25
    });
    let all = (FILLERS.len() * SCAN_FILL) as f64;
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(60),
        |v| v == all,
    );
    // The fillers' pause goes on in the shared scan.
    srv.wait_metric("ricochet_deliveries_paused", Duration::from_secs(60), |v| {
        v == all
    });
    // First arrivals in acceptance order; only the one in flight at the kill twice.
    let (ns, first) = first_arrivals(&rx.requests(), "/ord");
    assert_eq!(first, (0..25).collect::<Vec<u64>>(), "{ns:?}");
    let twice: Vec<u64> = first
        .iter()
        .copied()
        .filter(|&n| ns.iter().filter(|&&m| m == n).count() > 1)
        .collect();
    assert!(twice.is_empty() || twice == [0], "{ns:?}");
    assert!(got.len() >= 25);
    assert!(srv
        .log()
        .contains("paused the deliveries of endpoints enabled again before their pause was done"));
}

#[test]
fn endpoints_enabled_together_resume_within_the_workers_memory_cap() {
    // Eight endpoints at `max_rps = 1` with 5,000 paused deliveries each (40,000, past
    // the 30,000 deliveries workers may hold). Their retries and first attempts resume
    // due now and went to the workers at once, a page per endpoint and tick, whatever
    // the workers held: all of them in memory within a second (100 such endpoints with
    // 5,000 each: 211,974 and 480 MiB). They resume as workers have room now, the rest
    // waiting on disk: paused, or, once an endpoint holds what it may, kept back.
    let rx = TestReceiver::start();
    let names = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"];
    let mut eps = String::new();
    for name in names {
        eps += &endpoint(name, r#"["t"]"#, &rx.url("/"), "max_rps = 1");
    }
    let srv = TestServer::start(&eps);
    const N: usize = 5_000;
    assert_eq!(srv.pipeline(event_lines("t", "t", N)), N);
    for name in names {
        assert_eq!(srv.post(&format!("/v1/endpoints/{name}/disable")).0, 200);
    }
    // What the workers held came back as they dropped it, and is paused.
    let held = |v: f64| v == 0.0;
    srv.wait_metric(
        "ricochet_deliveries_in_memory",
        Duration::from_secs(30),
        held,
    );
    let paused = srv.wait_metric("ricochet_deliveries_paused", Duration::from_secs(30), |v| {
        v >= (8 * N - 100) as f64
    });
    for name in names {
        assert_eq!(srv.post(&format!("/v1/endpoints/{name}/enable")).0, 200);
    }
    // Below half the cap nothing holds them back. (Past it, each holds a quarter of
    // the cap at most, and 2,048 once measured slow at one a second: how far past half
    // they get depends on how soon that is.)
    let cap = ricochet::commit::MIN_IN_MEMORY as f64;
    srv.wait_metric(
        "ricochet_deliveries_in_memory",
        Duration::from_secs(30),
        |v| v >= cap / 2.0,
    );
    // Twenty loader ticks more: no page goes past the cap, and what the workers do
    // not hold waits on disk, paused or kept back (65,536 kept-back keys at most in
    // the committer's memory, the rest in the index; these endpoints are slow, so one
    // of them can always leave its keys there).
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < until {
        let m = srv.metrics();
        let in_memory = m.value("ricochet_deliveries_in_memory", &[]).unwrap();
        assert!(
            in_memory <= cap,
            "{in_memory} deliveries in workers' memory"
        );
        let kept = m.value("ricochet_deliveries_kept_back", &[]).unwrap();
        assert!(kept <= 65_536.0, "{kept} keys kept back in memory");
        let pending = m.value("ricochet_deliveries_pending", &[]).unwrap();
        assert!(pending >= paused - 100.0, "{pending} of {paused} pending");
    }
}

#[test]
fn an_attempt_running_across_disable_and_enable_stays_one_delivery() {
    // Disabling moves an endpoint's deliveries aside and enabling brings them back; one
    // whose attempt was still running must not come back as a second copy beside the
    // retry that attempt schedules.
    let gate = Gate::new();
    let rx = first_held_then_500(&gate);
    let srv = TestServer::start(&endpoint(
        "span",
        r#"["t"]"#,
        &rx.url("/"),
        "retry = [\"300ms\", \"300ms\"]",
    ));
    assert_eq!(srv.connect().send(&event("t", "s-0", "{}")), "ok s-0 1");
    rx.wait_for(1, Duration::from_secs(10));
    assert_eq!(srv.post("/v1/endpoints/span/disable").0, 200);
    assert_eq!(srv.post("/v1/endpoints/span/enable").0, 200);
    gate.open();
    let v = srv.wait_event("s-0", Duration::from_secs(10), |v| {
        states(v) == ["delivered"] && attempt_statuses(v) == [500, 200]
    });
    assert_eq!(
        rx.count(),
        2,
        "the held attempt and its retry, nothing else: {v}"
    );
}

/// The config of an ordered endpoint `fifo` of type `t` at `rx`, retried after 300 ms
/// twice, with `extra` keys ([`ordered_fifo_def`] is the same over the API).
fn ordered_fifo(rx: &TestReceiver, extra: &str) -> String {
    endpoint(
        "fifo",
        r#"["t"]"#,
        &rx.url("/"),
        &format!("ordered = true\nretry = [\"300ms\", \"300ms\"]\n{extra}"),
    )
}

/// An ordered endpoint whose head `h-0` fails once while `h-1` waits behind it; `act`
/// disables and enables it around that failure. The head must go again first.
fn ordered_head_goes_first_after(
    rx: &TestReceiver,
    extra: &str,
    act: impl FnOnce(&TestServer),
) -> TestServer {
    let srv = TestServer::start(&ordered_fifo(rx, extra));
    srv.connect().send_each_ok("t", "h", 2);
    act(&srv);
    let got = rx.wait_for(3, Duration::from_secs(10));
    assert_eq!(ids_in_order(&got), ["h-0", "h-0", "h-1"]);
    for id in ["h-0", "h-1"] {
        srv.wait_event(id, Duration::from_secs(10), |v| states(v) == ["delivered"]);
    }
    assert_eq!(
        attempt_statuses(&srv.event("h-0")),
        [500, 200],
        "{}",
        srv.event("h-0")
    );
    srv
}

/// With `fifo`'s head `h-0` held at `gate` ([`first_held_then_500`]): disables the
/// endpoint, lets the head fail, and waits until its retry is paused.
fn fail_head_while_disabled(srv: &TestServer, rx: &TestReceiver, gate: &Gate) {
    rx.wait_for(1, Duration::from_secs(10));
    assert_eq!(srv.post("/v1/endpoints/fifo/disable").0, 200);
    gate.open();
    srv.wait_event("h-0", Duration::from_secs(10), |v| {
        states(v) == ["paused"] && attempt_statuses(v) == [500]
    });
}

#[test]
fn an_ordered_head_that_failed_while_disabled_goes_first_once_enabled() {
    let gate = Gate::new();
    let rx = first_held_then_500(&gate);
    ordered_head_goes_first_after(&rx, "", |srv| {
        fail_head_while_disabled(srv, &rx, &gate);
        assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
    });
}

#[test]
fn an_ordered_head_running_across_disable_and_enable_keeps_its_place() {
    let gate = Gate::new();
    let rx = first_held_then_500(&gate);
    ordered_head_goes_first_after(&rx, "", |srv| {
        rx.wait_for(1, Duration::from_secs(10));
        assert_eq!(srv.post("/v1/endpoints/fifo/disable").0, 200);
        assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
        gate.open();
    });
}

#[test]
fn an_ordered_endpoint_disabled_by_its_receiver_sends_its_head_first_once_enabled() {
    // Held until both events are accepted: the 500 disables the endpoint.
    let gate = Gate::new();
    let rx = first_held_then_500(&gate);
    ordered_head_goes_first_after(&rx, "disable_after = { \"5xx\" = 1 }", |srv| {
        gate.open();
        srv.wait_endpoint("fifo", Duration::from_secs(10), |e| e["enabled"] == false);
        srv.wait_event("h-0", Duration::from_secs(10), |v| states(v) == ["paused"]);
        assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
    });
}

#[test]
fn an_ordered_endpoint_enabled_again_sends_its_paused_deliveries_before_new_ones() {
    // The paused deliveries are moved back a page per tick after the enable; an event
    // accepted meanwhile must wait behind them.
    let gate = Gate::new();
    let held = gate.clone();
    let rx = TestReceiver::with_script(move |_, n| {
        if n == 0 {
            held.wait();
        }
        Reply::status(200)
    });
    let srv = TestServer::start(&ordered_ep(&rx.url("/")));
    let mut c = srv.connect();
    c.send_each_ok("t", "old", 10);
    rx.wait_for(1, Duration::from_secs(10));
    assert_eq!(srv.post("/v1/endpoints/fifo/disable").0, 200);
    gate.open();
    srv.wait_event("old-9", Duration::from_secs(10), |v| {
        states(v) == ["paused"]
    });
    assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
    c.send_each_ok("t", "new", 5);
    let got = rx.wait_for(15, Duration::from_secs(10));
    let want: Vec<String> = (0..10)
        .map(|i| format!("old-{i}"))
        .chain((0..5).map(|i| format!("new-{i}")))
        .collect();
    assert_eq!(ids_in_order(&got), want);
}

/// Waits until each of `ids` is delivered, then asserts the receiver got exactly
/// `want` (webhook ids, in arrival order), and that nothing is left pending or paused:
/// no delivery waits for an enable's answer that never comes.
fn delivered_exactly(srv: &TestServer, rx: &TestReceiver, ids: &[&str], want: &[&str]) {
    for id in ids {
        srv.wait_event(id, Duration::from_secs(10), |v| states(v) == ["delivered"]);
    }
    srv.wait_nothing_pending(Duration::from_secs(10));
    assert_eq!(ids_in_order(&rx.requests()), want);
}

#[test]
fn an_ordered_endpoint_disabled_and_enabled_again_and_again_loses_nothing_and_keeps_its_order() {
    // An enable resumes nothing until its worker answers it, and a disable drops that
    // wait. Three disable/enable pairs in a row, events accepted after each enable and
    // the head's attempt in flight throughout: an earlier enable's answer must not
    // stand for a later one, and no endpoint may wait for an answer that is not
    // coming. Every event goes once, in acceptance order, the head first (its 500,
    // then its retry).
    let gate = Gate::new();
    let rx = first_held_then_500(&gate);
    let srv = TestServer::start(&ordered_fifo(&rx, ""));
    let mut c = srv.connect();
    c.send_each_ok("t", "h", 3);
    rx.wait_for(1, Duration::from_secs(10));
    for round in 0..3 {
        assert_eq!(srv.post("/v1/endpoints/fifo/disable").0, 200);
        assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
        c.send_each_ok("t", &format!("c{round}"), 2);
    }
    gate.open();
    let want = [
        "h-0", "h-0", "h-1", "h-2", "c0-0", "c0-1", "c1-0", "c1-1", "c2-0", "c2-1",
    ];
    delivered_exactly(&srv, &rx, &want[1..], &want);
    assert_eq!(attempt_statuses(&srv.event("h-0")), [500, 200]);
}

/// The definition (`POST /v1/endpoints`) of an ordered endpoint `fifo` at `rx`, retried
/// after 300 ms twice (what [`ordered_fifo`] writes in a config).
fn ordered_fifo_def(rx: &TestReceiver) -> serde_json::Value {
    ep(
        "fifo",
        &["t"],
        &rx.url("/"),
        serde_json::json!({"ordered": true, "retry": ["300ms", "300ms"]}),
    )
}

#[test]
fn an_ordered_endpoint_its_definition_disables_and_enables_again_resumes_in_order() {
    // `PUT` with `enabled = false`, then `true`: the definition's enable takes the same
    // path as the admin API's (its worker is told the new spec first, then the enable,
    // and answers it), with the head's attempt in flight across both.
    let gate = Gate::new();
    let rx = first_held_then_500(&gate);
    let def = |enabled: bool| {
        let mut def = ordered_fifo_def(&rx);
        def["enabled"] = enabled.into();
        def
    };
    let srv = TestServer::start("");
    let (status, v) = srv.call("POST", "/v1/endpoints", &def(true));
    assert_eq!(status, 201, "{v}");
    let mut c = srv.connect();
    c.send_each_ok("t", "h", 3);
    rx.wait_for(1, Duration::from_secs(10));
    for enabled in [false, true] {
        let (status, v) = srv.call("PUT", "/v1/endpoints/fifo", &def(enabled));
        assert_eq!(
            (status, &v["enabled"]),
            (200, &serde_json::json!(enabled)),
            "{v}"
        );
    }
    c.send_each_ok("t", "n", 2);
    gate.open();
    let want = ["h-0", "h-0", "h-1", "h-2", "n-0", "n-1"];
    delivered_exactly(&srv, &rx, &want[1..], &want);
}

#[test]
fn an_endpoint_deleted_right_after_an_enable_and_made_again_resumes_its_own_deliveries() {
    // Deleted before its worker answered the enable (the answer then names an endpoint
    // that is gone), and made again under the same name (a new endpoint): the new one
    // is disabled and enabled with events of its own waiting, and those all go, once,
    // in acceptance order. The old one's end failed.
    let gate = Gate::new();
    let rx = first_held_then_500(&gate);
    let def = ordered_fifo_def(&rx);
    let srv = TestServer::start("");
    let create = || {
        let (status, v) = srv.call("POST", "/v1/endpoints", &def);
        assert_eq!(status, 201, "{v}");
    };
    create();
    let mut c = srv.connect();
    c.send_each_ok("t", "a", 3);
    rx.wait_for(1, Duration::from_secs(10));
    assert_eq!(srv.post("/v1/endpoints/fifo/disable").0, 200);
    assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
    assert_eq!(
        srv.call("DELETE", "/v1/endpoints/fifo", &serde_json::Value::Null)
            .0,
        200
    );
    create();
    c.send_each_ok("t", "b", 2);
    assert_eq!(srv.post("/v1/endpoints/fifo/disable").0, 200);
    assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
    c.send_each_ok("t", "c", 2);
    gate.open();
    for id in ["a-0", "a-1", "a-2"] {
        srv.wait_event(id, Duration::from_secs(10), |v| states(v) == ["failed"]);
    }
    let want = ["a-0", "b-0", "b-1", "c-0", "c-1"];
    delivered_exactly(&srv, &rx, &want[1..], &want);
}

#[test]
fn an_ordered_endpoint_enabled_as_the_server_stops_resumes_after_the_restart() {
    // SIGTERM right after an enable: the stop comes before the resume (a tick after
    // the worker's answer) or during it, its jobs in workers that are stopping. What
    // was not delivered is on disk (paused, or due), the endpoint enabled: the next
    // start resumes it, the paused head first. (Without the start's resume of an
    // enabled endpoint's paused set, this fails.)
    let gate = Gate::new();
    let rx = first_held_then_500(&gate);
    let eps = ordered_ep(&rx.url("/"));
    let opts = ServerOpts::new(&eps);
    let mut srv = TestServer::start_with(opts.clone());
    srv.connect().send_each_ok("t", "h", 4);
    fail_head_while_disabled(&srv, &rx, &gate);
    assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
    assert_eq!(srv.stop(), Some(0));
    let srv = TestServer::start_in(Arc::clone(&srv.dir), &opts);
    let ids: Vec<String> = (0..4).map(|i| format!("h-{i}")).collect();
    for id in &ids {
        srv.wait_event(id, Duration::from_secs(10), |v| states(v) == ["delivered"]);
    }
    // First arrivals in acceptance order, the head's 500 first; none lost.
    let got = ids_in_order(&rx.requests());
    assert_eq!(got[0], "h-0");
    assert_eq!(firsts(&got[1..]), ids, "{got:?}");
}

#[test]
fn an_event_accepted_right_after_an_enable_waits_for_paused_deliveries_due_later() {
    // The paused deliveries fall due 2 s from now (their events are stamped then); one
    // accepted before the tick that moves them back must still go after them.
    let rx = TestReceiver::start();
    let srv = TestServer::start(&ordered_ep(&rx.url("/")));
    let mut c = srv.connect();
    let ahead = unix_ms() + 2_000;
    for i in 0..3 {
        let ack = c.send(&format!(
            r#"{{"type":"t","id":"old-{i}","time":{ahead},"data":{{}}}}"#
        ));
        assert!(ack.starts_with(&format!("ok old-{i} 1")), "{ack}");
    }
    assert_eq!(srv.post("/v1/endpoints/fifo/disable").0, 200);
    srv.wait_event("old-2", Duration::from_secs(10), |v| {
        states(v) == ["paused"]
    });
    assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
    c.send_each_ok("t", "new", 3);
    let got = rx.wait_for(6, Duration::from_secs(10));
    assert_eq!(
        ids_in_order(&got),
        ["old-0", "old-1", "old-2", "new-0", "new-1", "new-2"]
    );
}

#[test]
fn an_ordered_endpoint_enabled_again_forgets_a_first_attempt_time_it_no_longer_has() {
    // Accepted under min_delay = 1h, the first event set the endpoint's order bound an
    // hour ahead. Under min_delay = 0 and enabled again, it goes at once; so must the
    // events after it, instead of waiting out the hour that no delivery has any more.
    let rx = TestReceiver::start();
    let def = |delay: &str| {
        ep(
            "fifo",
            &["t"],
            &rx.url("/"),
            serde_json::json!({"ordered": true, "min_delay": delay}),
        )
    };
    let srv = TestServer::start("");
    let (status, v) = srv.call("POST", "/v1/endpoints", &def("1h"));
    assert_eq!(status, 201, "{v}");
    let mut c = srv.connect();
    c.send_each_ok("t", "old", 1);
    let (status, v) = srv.call("PUT", "/v1/endpoints/fifo", &def("0s"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(srv.post("/v1/endpoints/fifo/disable").0, 200);
    srv.wait_event("old-0", Duration::from_secs(10), |v| {
        states(v) == ["paused"]
    });
    assert_eq!(srv.post("/v1/endpoints/fifo/enable").0, 200);
    rx.wait_for(1, Duration::from_secs(10));
    c.send_each_ok("t", "new", 2);
    let got = rx.wait_for(3, Duration::from_secs(10));
    assert_eq!(ids_in_order(&got), ["old-0", "new-0", "new-1"]);
}

#[test]
fn an_endpoint_enabled_again_starts_at_its_rate_not_with_a_saved_burst() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint("paced", r#"["t"]"#, &rx.url("/"), "max_rps = 5"));
    srv.connect().send_each_ok("t", "p", 20);
    rx.wait_for(3, Duration::from_secs(10));
    assert_eq!(srv.post("/v1/endpoints/paced/disable").0, 200);
    // Disabled for longer than the bucket takes to fill (1 s at 5/s): the behaviour
    // under test is what the enable does with that time.
    std::thread::sleep(Duration::from_millis(1500));
    let enabled_at = std::time::Instant::now();
    assert_eq!(srv.post("/v1/endpoints/paced/enable").0, 200);
    let got = rx.wait_for(20, Duration::from_secs(20));
    attempts_at_most_per_second(&srv, "p", 20, 6);
    // The first request after the enable waits one interval (200 ms) for its token.
    let first = got
        .iter()
        .find(|r| r.at > enabled_at)
        .expect("requests after the enable");
    let waited = first.at - enabled_at;
    assert!(
        waited >= Duration::from_millis(195),
        "the first request after the enable came {waited:?} after it"
    );
}

#[test]
fn max_rps_sends_no_burst_after_an_idle_second() {
    // A receiver that counts per second must not see more than max_rps (+1 for a window
    // edge) in any second, even after the endpoint was idle long enough to fill its
    // bucket: the burst is two tokens, not a second's worth.
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint("paced", r#"["t"]"#, &rx.url("/"), "max_rps = 5"));
    let mut c = srv.connect();
    c.send_each_ok("t", "first", 1);
    rx.wait_for(1, Duration::from_secs(10));
    // Idle for longer than a second's worth of tokens takes to accrue: the behaviour
    // under test is what the bucket does with that time.
    std::thread::sleep(Duration::from_millis(1500));
    c.send_each_ok("t", "then", 20);
    rx.wait_for(21, Duration::from_secs(20));
    // As sent, the burst and the next second hold 2 + 4 (r + 1 in any second), and one
    // more may fall in at a window's edge (send times are whole milliseconds of another
    // clock than the bucket's). A bucket that kept a second's worth would show 10.
    let times = attempts_at_most_per_second(&srv, "then", 20, 7);
    // And the burst is two: the third after the idle spell waits a token (200 ms).
    let third = times[2] - times[0];
    assert!(
        third >= 100,
        "three attempts within {third} ms after an idle spell"
    );
}

#[test]
fn max_rps_counts_a_request_sent_again_after_its_connection_broke() {
    // Every request on a kept connection is read and then hung up on, so it goes again
    // on a new connection: two requests at the receiver per token, unless the second
    // one waits for a token of its own.
    let (rx, srv) = paced_at_five(|n| n % 2 == 1);
    srv.connect().send_each_ok("t", "r", 12);
    wait_delivered(&srv, "r", 12);
    let got = rx.requests();
    assert!(
        got.len() >= 20,
        "most attempts were sent twice: {}",
        got.len()
    );
    at_most_per_second(&got, 6);
}

#[test]
fn a_request_sent_again_after_its_connection_broke_waits_for_a_token() {
    // After an idle spell the bucket holds its burst of two; six deliveries then go at
    // 0, 0, 200, 400, 600 and 800 ms on the kept connection, and the receiver hangs up
    // on the sixth. Sent again at once and paid for afterwards, it made a seventh
    // request within 800 ms (max_rps + 2); it waits for the token due at 1,000 ms.
    let (rx, srv) = paced_at_five(|n| n == 6);
    // Two tokens take 400 ms at 5/s.
    six_after_an_idle_spell(&rx, &srv, Duration::from_millis(700));
    wait_delivered(&srv, "r", 6);
    let got = rx.requests();
    assert_eq!(got.len(), 8, "the warm-up, six, and the sixth again");
    // The sixth sent again waits for the token due 1,000 ms after the first two; sent at
    // once, it came 800 ms after them. Measured against 900 ms, not by a one-second
    // window: the receiver stamps a request once its connection's thread has read it,
    // and on a loaded machine the first stamp came late enough to put all seven in one
    // second (CI, legacy driver, session 54).
    let gap = got[7].at - got[1].at;
    assert!(
        gap >= Duration::from_millis(900),
        "the sixth sent again {gap:?} after the first of the six"
    );
}

#[test]
fn an_attempt_that_times_out_waiting_to_send_again_says_so() {
    // At `max_rps = 2` with a 300 ms `timeout`: after an idle spell, six deliveries go at
    // 0, 0, 500, 1,000, 1,500 and 2,000 ms on the kept connection, and the receiver hangs
    // up on the sixth. Sent again on a new connection, it waits for the token due at
    // 2,500 ms, and the attempt's time runs out first. The log said "connecting (no
    // connection made)": a connection was made, and the request had gone once.
    let (rx, srv) = paced(2, "timeout = \"300ms\"\nretry = \"none\"", |n| n == 6);
    // Two tokens take 1 s at 2/s.
    six_after_an_idle_spell(&rx, &srv, Duration::from_millis(1200));
    wait_delivered(&srv, "r", 5);
    let v = srv.wait_event("r-5", Duration::from_secs(20), |v| states(v) == ["failed"]);
    let attempt = &v["deliveries"][0]["attempts"][0];
    assert_eq!(attempt["timed_out"], true, "{v}");
    let error = attempt["error"].as_str().unwrap();
    assert!(
        error.starts_with("timed out after 300ms waiting to send the request again"),
        "{error}"
    );
    assert_eq!(
        rx.count(),
        7,
        "the warm-up and six, the sixth not sent again"
    );
}

/// Sends `warm-0`, then after `idle` (a spell that fills the bucket with its burst of
/// two), `r-0` .. `r-5`, to `paced`.
fn six_after_an_idle_spell(rx: &TestReceiver, srv: &TestServer, idle: Duration) {
    let mut c = srv.connect();
    c.send_each_ok("t", "warm", 1);
    rx.wait_for(1, Duration::from_secs(10));
    std::thread::sleep(idle);
    c.send_each_ok("t", "r", 6);
}

/// A receiver that reads every request and hangs up on the `n`th ones (counted from 0)
/// for which `hang_up(n)`, answering 200 to the others, and a server with one endpoint,
/// `paced`, of events `t` at `max_rps = 5`, one request at a time.
fn paced_at_five(hang_up: fn(usize) -> bool) -> (TestReceiver, TestServer) {
    paced(5, "", hang_up)
}

/// As [`paced_at_five`], at `max_rps = rps`, with the endpoint's `extra` keys.
fn paced(rps: u32, extra: &str, hang_up: fn(usize) -> bool) -> (TestReceiver, TestServer) {
    let rx = TestReceiver::with_script(move |_, n| {
        if hang_up(n) {
            Reply::hang_up()
        } else {
            Reply::status(200)
        }
    });
    let srv = TestServer::start(&endpoint(
        "paced",
        r#"["t"]"#,
        &rx.url("/"),
        &format!("max_rps = {rps}\nmax_in_flight = 1\n{extra}"),
    ));
    (rx, srv)
}

/// Waits until events `{prefix}-0` .. `{prefix}-{n-1}` each have their one delivery
/// `delivered`.
fn wait_delivered(srv: &TestServer, prefix: &str, n: usize) {
    for i in 0..n {
        srv.wait_event(&format!("{prefix}-{i}"), Duration::from_secs(20), |v| {
            states(v) == ["delivered"]
        });
    }
}

#[test]
fn an_endpoint_with_a_backlog_past_the_in_memory_cap_does_not_hold_up_the_others() {
    // `slow` gets more deliveries than workers hold in memory (30,000) and drains at
    // one a second. Workers used to take its backlog up to the cap, and every other
    // endpoint's deliveries then waited on disk until it drained below: `quick` got
    // none of its 20 in 60 s. An endpoint past its share of the cap keeps the rest of
    // its backlog on disk, so the others still have room.
    let rx = TestReceiver::start();
    let eps = format!(
        "{}{}",
        endpoint("slow", r#"["s"]"#, &rx.url("/slow"), "max_rps = 1"),
        endpoint("quick", r#"["q"]"#, &rx.url("/quick"), "")
    );
    let srv = TestServer::start(&eps);
    let n = ricochet::commit::MIN_IN_MEMORY + 2_000;
    let oks = srv.pipeline(event_lines("s", "s", n));
    assert_eq!(oks, n);
    srv.connect().send_each_ok("q", "q", 20);
    rx.wait_until(Duration::from_secs(20), "quick's 20 deliveries", |got| {
        got.iter().filter(|r| r.path == "/quick").count() == 20
    });
}

/// Endpoints `names` (each taking its own name as event type and URL path, with
/// `extra` in its definition) at one receiver that holds every request until its gate
/// opens (an attempt times out after 300 s), and `quick` (type `q`) at one that
/// answers at once.
fn hung_endpoints_and_quick(
    names: &[&str],
    extra: &str,
) -> (TestServer, TestReceiver, Gate, TestReceiver) {
    let (hung, gate) = TestReceiver::gated();
    let quick = TestReceiver::start();
    let mut eps = String::new();
    for name in names {
        let t = format!(r#"["{name}"]"#);
        let url = hung.url(&format!("/{name}"));
        eps += &endpoint(name, &t, &url, &format!("timeout = \"300s\"\n{extra}"));
    }
    eps += &endpoint("quick", r#"["q"]"#, &quick.url("/"), "");
    (TestServer::start(&eps), hung, gate, quick)
}

/// `quick`'s 20 arrive while the hung endpoints' backlogs wait, and the ends of those
/// come to wait on disk (left there or given back once the endpoints are measured
/// slow, which may come after `quick`'s 20: fresh deliveries of a quiet endpoint go
/// ahead of a full cap); once the gate opens, each of their `expected` deliveries
/// arrives once.
fn quick_first_then_every_hung_delivery_once(
    srv: &TestServer,
    (hung, gate, quick): (&TestReceiver, &Gate, &TestReceiver),
    expected: usize,
) {
    srv.connect().send_each_ok("q", "q", 20);
    quick.wait_for(20, Duration::from_secs(20));
    srv.wait_log("waits on disk", Duration::from_secs(20));
    gate.open();
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(120),
        |v| v == 0.0,
    );
    let ids = hung.ids();
    assert_eq!(
        ids.len(),
        expected,
        "every hung endpoint's delivery arrived"
    );
    let twice: Vec<_> = ids.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

/// `n` events for each of `names` (each its own event type), interleaved: `{"n":i}`
/// with id `{name}-{i}` for the `i`th.
fn interleaved(names: &[&str], n: usize) -> Vec<u8> {
    let mut lines = Vec::new();
    for i in 0..n {
        for name in names {
            let data = format!("{{\"n\":{i}}}");
            lines.extend_from_slice(event(name, &format!("{name}-{i}"), &data).as_bytes());
            lines.push(b'\n');
        }
    }
    lines
}

/// Endpoints `names` (with `extra` in their definitions) whose receivers hang get `n`
/// deliveries each, [`interleaved`], at once (before a second has passed to show any
/// of them slow); then as
/// [`quick_first_then_every_hung_delivery_once`]. Returns what the hung receiver got.
fn hung_endpoints_given_their_backlogs_at_once(
    names: &[&str],
    extra: &str,
    n: usize,
) -> Vec<Received> {
    let (srv, hung, gate, quick) = hung_endpoints_and_quick(names, extra);
    let all = names.len() * n;
    assert_eq!(srv.pipeline(interleaved(names, n)), all);
    quick_first_then_every_hung_delivery_once(&srv, (&hung, &gate, &quick), all);
    hung.requests()
}

#[test]
fn slow_endpoints_hold_a_little_each_so_four_leave_the_others_room() {
    // Four endpoints whose receivers hang, each then given 30,000 deliveries. The
    // first takes half the cap (15,000) before anyone is limited; each later one took
    // a quarter (7,500), so the fourth filled the cap and `quick`'s 20 waited on disk
    // until they drained. An endpoint that at its last second's rate takes more than
    // 10 s to drain what it holds now gets at most 2,048 once workers hold half the cap.
    const SLOW: [&str; 4] = ["slow1", "slow2", "slow3", "slow4"];
    let (srv, hung, gate, quick) = hung_endpoints_and_quick(&SLOW, "");
    for name in SLOW {
        srv.connect()
            .send_each_ok(name, &format!("{name}-first"), 100);
    }
    // Measured slow: a whole second with deliveries held and none done.
    srv.wait_metric("ricochet_endpoints_slow", Duration::from_secs(10), |v| {
        v == 4.0
    });
    for name in SLOW {
        assert_eq!(srv.pipeline(event_lines(name, name, 30_000)), 30_000);
    }
    let held = srv.metrics().value("ricochet_deliveries_in_memory", &[]);
    assert!(
        held.is_some_and(|h| h < ricochet::commit::MIN_IN_MEMORY as f64),
        "workers hold {held:?}, the whole cap"
    );
    // Their kept-back keys passed the bound too: the slow ones' ends wait on disk.
    quick_first_then_every_hung_delivery_once(&srv, (&hung, &gate, &quick), 4 * 30_100);
}

#[test]
fn hung_endpoints_given_their_backlogs_at_once_leave_them_on_disk_once_measured_slow() {
    // Three endpoints whose receivers hang get 45,000 deliveries each, interleaved, at
    // once: before a second has passed to show them slow. They take the workers to
    // 22,500 (a quarter of the cap each) and the rest is kept back, some 47,000 past
    // the 65,536 kept in memory, none of them half. Nothing looked again after that
    // key: the loader waited at the bound, and `quick`'s 20 with it, until they
    // drained. Each tick now looks again, and once the rates show them slow the ends
    // of their backlogs wait on disk.
    hung_endpoints_given_their_backlogs_at_once(&["slow1", "slow2", "slow3"], "", 45_000);
}

#[test]
fn hung_endpoints_that_filled_the_cap_before_they_were_measured_slow_give_it_back() {
    // Six endpoints whose receivers hang get 5,500 deliveries each, interleaved, at
    // once: before a second has passed to show them slow, and none near its share
    // (7,500), so workers take them up to the cap (30,000: 5,000 each). The limit for
    // slow endpoints applied only to what was handed over later, so the cap stayed
    // full and `quick`'s 20 waited on disk until the receivers answered. Their workers
    // now give back what each holds past 2,048, to wait on disk.
    const SLOW: [&str; 6] = ["slow1", "slow2", "slow3", "slow4", "slow5", "slow6"];
    hung_endpoints_given_their_backlogs_at_once(&SLOW, "", 5_500);
}

#[test]
fn hung_ordered_endpoints_that_filled_the_cap_give_back_their_tails_and_keep_their_order() {
    // As above, the six endpoints `ordered`. An ordered endpoint gave nothing back (its
    // queue holds every delivery it knows of), so the cap stayed full and `quick`'s 20
    // waited on disk until the receivers answered. Its worker now gives back the tail
    // of its queue past the 2,048 oldest, read back in acceptance order after them.
    const SLOW: [&str; 6] = ["ord1", "ord2", "ord3", "ord4", "ord5", "ord6"];
    const N: usize = 5_500;
    let got = hung_endpoints_given_their_backlogs_at_once(&SLOW, "ordered = true", N);
    for name in SLOW {
        let path = format!("/{name}");
        let order: Vec<u64> = got
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.json()["n"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..N as u64).collect();
        assert!(order == expected, "{name} out of order");
    }
}

#[test]
fn an_ordered_head_s_retry_in_flight_when_its_endpoint_turns_fifo_goes_once() {
    // Four ordered endpoints whose receivers hang are given 6,500 deliveries each at
    // once (below their shares of the cap, 26,000 in all within it) and give the tails
    // of their queues back to disk. `ord1`'s head is answered
    // 500; its retry, which the worker keeps and attempts itself, hangs; then a `PUT`
    // makes `ord1` FIFO. The store's copy of that retry, read back with the tail while
    // the attempt ran, went out beside it: an ordered queue drops a copy of what it is
    // attempting, a FIFO one sent it (helper H, session 41).
    const ORD: [&str; 4] = ["ord1", "ord2", "ord3", "ord4"];
    const N: usize = 6_500;
    let (rest, fail, retry) = (Gate::new(), Gate::new(), Gate::new());
    let is_head = |r: &Received| r.path == "/ord1" && r.json()["n"] == 0;
    let rx = {
        let (rest, fail, retry) = (rest.clone(), fail.clone(), retry.clone());
        let tries = std::sync::atomic::AtomicUsize::new(0);
        TestReceiver::with_script(move |r, _| {
            if !is_head(r) {
                rest.wait();
                return Reply::status(200);
            }
            match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => {
                    fail.wait();
                    Reply::status(500)
                }
                1 => {
                    retry.wait();
                    Reply::status(200)
                }
                _ => Reply::status(200),
            }
        })
    };
    let mut eps = String::new();
    for name in ORD {
        let (t, url) = (format!(r#"["{name}"]"#), rx.url(&format!("/{name}")));
        let extra = "ordered = true\ntimeout = \"300s\"\nretry = [\"1s\"]";
        eps += &endpoint(name, &t, &url, extra);
    }
    let srv = TestServer::start(&eps);
    assert_eq!(srv.pipeline(interleaved(&ORD, N)), ORD.len() * N);
    let wait = |name: &str, pred: fn(f64) -> bool| {
        srv.wait_metric(name, Duration::from_secs(30), pred);
    };
    wait("ricochet_endpoints_backlog_on_disk", |v| v == 4.0);
    fail.open();
    rx.wait_until(Duration::from_secs(20), "the head's retry", |got| {
        got.iter().filter(|r| is_head(r)).count() == 2
    });
    let mut def = srv.get("/v1/endpoints/ord1").1;
    def["ordered"] = serde_json::json!(false);
    let (status, v) = srv.call("PUT", "/v1/endpoints/ord1", &def);
    assert_eq!(status, 200, "{v}");
    rest.open();
    // Everything but the head handed over and sent; then the retry answers.
    rx.wait_until(Duration::from_secs(60), "the rest", |got| {
        got.iter().filter(|r| !is_head(r)).count() == ORD.len() * N - 1
    });
    wait("ricochet_endpoints_backlog_on_disk", |v| v == 0.0);
    wait("ricochet_deliveries_kept_back", |v| v == 0.0);
    retry.open();
    wait("ricochet_deliveries_pending", |v| v == 0.0);
    wait("ricochet_deliveries_in_memory", |v| v == 0.0);
    let got = rx.requests();
    assert_eq!(
        got.iter().filter(|r| is_head(r)).count(),
        2,
        "the retry went once"
    );
    let ids = rx.ids();
    let twice: Vec<_> = ids.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert_eq!(twice, [(&"ord1-0".to_string(), &2)], "delivered twice");
}

#[test]
fn an_ordered_endpoint_held_by_its_head_after_a_restart_leaves_its_backlog_on_disk() {
    // An ordered endpoint's head waits an hour for its retry, 100,000 deliveries behind
    // it, and the process is killed. At the start its held head is handed over first,
    // its key an hour ahead; every other key of it is below that, and none was left on
    // disk (a worker might hold a key above one kept back, so no key at or below one
    // handed over was), so the loader waited at the kept-back bound and `quick`'s 20
    // with it for the hour. Handed over ahead of the cursor, the head does not raise
    // the bound (an ordered endpoint had none for it until session 48), and the backlog
    // is left on disk above what the loader handed over.
    const N: usize = 100_000;
    let rx = TestReceiver::with_script(|req, _| {
        Reply::status(if req.body == b"{\"n\":0}" { 500 } else { 200 })
    });
    let quick = TestReceiver::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let eps = format!(
        "{}{}",
        endpoint(
            "ord",
            r#"["o"]"#,
            &rx.url("/"),
            "ordered = true\nretry = [\"1h\"]"
        ),
        endpoint("quick", r#"["q"]"#, &quick.url("/"), "")
    );
    let opts = ServerOpts::new(&eps);
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    let mut lines = Vec::new();
    for i in 0..N {
        lines
            .extend_from_slice(event("o", &format!("o-{i}"), &format!("{{\"n\":{i}}}")).as_bytes());
        lines.push(b'\n');
    }
    assert_eq!(srv.pipeline(lines), N);
    rx.wait_for(1, Duration::from_secs(20));
    srv.kill9();
    let srv = TestServer::start_in(dir.clone(), &opts);
    srv.wait_metric(
        "ricochet_endpoints_backlog_on_disk",
        Duration::from_secs(30),
        |v| v == 1.0,
    );
    srv.connect().send_each_ok("q", "q", 20);
    quick.wait_for(20, Duration::from_secs(20));
    assert_eq!(rx.count(), 1, "only the head's first attempt");
}

/// Endpoints whose backlogs wait for the loader after a restart.
const BACK: [&str; 8] = [
    "back1", "back2", "back3", "back4", "back5", "back6", "back7", "back8",
];

/// Starts ricochet on `eps` (with [`back_endpoints`] at `rx`, held), accepts [`BACK`]'s
/// `n` deliveries each and then 20 each of `after`'s endpoints ([`interleaved`]), kills
/// it with -9 and starts it again with `rx` answering in 40 ms: the new process, and
/// what `rx` had got before it.
fn restarted_with_backlogs(
    eps: &str,
    rx: &TestReceiver,
    n: usize,
    after: &[&str],
) -> (TestServer, usize) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new(eps);
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    assert_eq!(srv.pipeline(interleaved(&BACK, n)), BACK.len() * n);
    if !after.is_empty() {
        assert_eq!(srv.pipeline(interleaved(after, 20)), after.len() * 20);
    }
    srv.kill9();
    rx.set_script(|_, _| Reply::status(200).delay(Duration::from_millis(40)));
    let before = rx.count();
    (TestServer::start_in(dir, &opts), before)
}

/// The [`BACK`] endpoints, each at its path of `rx`, with a timeout long enough for a
/// receiver held until it is let go.
fn back_endpoints(rx: &TestReceiver) -> String {
    let mut eps = String::new();
    for name in BACK {
        let url = rx.url(&format!("/{name}"));
        eps += &endpoint(name, &format!(r#"["{name}"]"#), &url, "timeout = \"300s\"");
    }
    eps
}

/// Sends `quick`'s 20 events (type `q`) and waits for them to arrive; fewer than
/// `most` of `rx`'s requests (counted from `before`), the `what` deliveries, may arrive
/// meanwhile.
fn quick_s_20_arrive_before(
    srv: &TestServer,
    (quick, rx, before): (&TestReceiver, &TestReceiver, usize),
    most: usize,
    what: &str,
) {
    srv.connect().send_each_ok("q", "q", 20);
    quick.wait_for(20, Duration::from_secs(60));
    let drained = rx.count() - before;
    assert!(
        drained < most,
        "quick's 20 waited for {drained} of the {what} deliveries"
    );
}

/// [`quick_s_20_arrive_before`], then waits for every pending delivery to be done.
fn quick_s_20_go_before(
    srv: &TestServer,
    receivers: (&TestReceiver, &TestReceiver, usize),
    most: usize,
    what: &str,
) {
    quick_s_20_arrive_before(srv, receivers, most, what);
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(120),
        |v| v == 0.0,
    );
}

#[test]
fn a_quiet_endpoint_s_deliveries_and_retries_do_not_wait_behind_backlogs_loaded_after_a_restart() {
    // Eight endpoints' receivers hang while 8,000 deliveries each are accepted; the
    // process is killed and starts again with them answering, 40 ms each (256 lanes:
    // 6,400 a second at most). The loader starts at the beginning of the due index and
    // hands the backlogs over as they drain, up to the cap (30,000: 3,750 each, none at
    // its share, so nothing is kept back and the cursor waits for room). `quick`'s fresh
    // deliveries, due now, lay behind all of it and waited on disk until the cursor
    // reached them: some 34,000 of the backlogs' deliveries later. A fresh delivery of
    // an endpoint that holds next to nothing now goes to its worker at once, and the
    // loader skips it when it passes. `quick`'s first is answered 500 twice: its
    // retries, due in 1 s and then 2 s, waited on disk too, until the cursor had passed
    // every backlog key (at least 64,000 - 30,000 delivered); each now goes to the
    // worker ahead of the cursor as it is scheduled, and waits in the worker's timer
    // wheel for its time.
    const N: usize = 8_000;
    let (rx, gate) = TestReceiver::gated();
    // The first delivery `quick` sees is answered 500 twice, everything else 200.
    let first = std::sync::Mutex::new((None::<String>, 0));
    let quick = TestReceiver::with_script(move |r, _| {
        let id = r.header("webhook-id").unwrap_or_default().to_string();
        let mut first = first.lock().unwrap();
        let (first_id, failed) = &mut *first;
        if first_id.get_or_insert_with(|| id.clone()) == &id && *failed < 2 {
            *failed += 1;
            return Reply::status(500);
        }
        Reply::status(200)
    });
    let mut eps = back_endpoints(&rx);
    eps += &endpoint(
        "quick",
        r#"["q"]"#,
        &quick.url("/"),
        "retry = [\"1s\", \"2s\"]",
    );
    let (srv, before) = restarted_with_backlogs(&eps, &rx, N, &[]);
    quick_s_20_arrive_before(&srv, (&quick, &rx, before), N, "backlogs'");
    // The first event's two retries.
    quick.wait_for(22, Duration::from_secs(60));
    let drained = rx.count() - before;
    assert!(
        drained < 30_000,
        "quick's retries waited for {drained} of the backlogs' deliveries"
    );
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(120),
        |v| v == 0.0,
    );
    // The first three times (its retries), the others once.
    let ids = quick.ids();
    let mut counts: Vec<usize> = ids.values().copied().collect();
    counts.sort_unstable();
    assert!(
        ids.len() == 20 && counts[..19].iter().all(|&n| n == 1) && counts[19] == 3,
        "quick got {ids:?}"
    );
    // Each key handed over ahead was forgotten once reported.
    assert_eq!(
        srv.metrics().value("ricochet_deliveries_handed_ahead", &[]),
        Some(0.0)
    );
    assert_eq!(
        rx.ids().len(),
        BACK.len() * N,
        "every backlog delivery arrived"
    );
    gate.open();
}

#[test]
fn a_quiet_endpoint_s_retry_due_past_ten_seconds_does_not_wait_behind_backlogs_loaded_after_a_restart(
) {
    // As above, eight endpoints' backlogs wait for the loader after a restart, here
    // 16,000 each: the cursor passes the last of them only once 128,000 - 30,000 (the
    // cap) have been delivered, 15 s at the most the 256 lanes deliver (6,400 a second
    // at 40 ms each). `quick`'s first delivery is answered 500 once, its retry due 12 s
    // later: more than 10 s out, it was not handed over ahead as it was scheduled, and
    // waited on disk until the cursor had passed every backlog key (some 98,000
    // delivered, at whatever rate). It is now remembered, and handed over ahead of the
    // cursor once within 10 s of its time; the worker's wheel holds it until then.
    const N: usize = 16_000;
    let (rx, gate) = TestReceiver::gated();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let quick = TestReceiver::with_script(move |_, _| {
        if failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::status(200)
        } else {
            Reply::status(500)
        }
    });
    let mut eps = back_endpoints(&rx);
    eps += &endpoint("quick", r#"["q"]"#, &quick.url("/"), "retry = [\"12s\"]");
    let (srv, before) = restarted_with_backlogs(&eps, &rx, N, &[]);
    // The loader is handing the backlogs over.
    rx.wait_for(before + 1, Duration::from_secs(20));
    assert_eq!(srv.connect().send(&event("q", "q-0", "{}")), "ok q-0 1");
    retry_went_ahead("quick", &quick, &rx, before, N, 11_900);
    // It was handed over ahead, and forgotten once reported; the rest of the backlogs
    // is not waited for.
    srv.wait_metric(
        "ricochet_deliveries_handed_ahead",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    srv.wait_event("q-0", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    assert_eq!(quick.count(), 2);
    drop(srv);
    gate.open();
}

/// A receiver that answers its first request 500 and every later one 200.
/// `name`'s receiver `rcv` got an event's attempt and its retry, at least `after_ms`
/// apart, before the loader brought the backlogs' deliveries (`rx`'s, `before` of them
/// from before the restart; `n` an endpoint) past the cap and the bound ahead: the retry
/// went ahead of the lagging cursor.
fn retry_went_ahead(
    name: &str,
    rcv: &TestReceiver,
    rx: &TestReceiver,
    before: usize,
    n: usize,
    after_ms: u64,
) {
    let got = rcv.wait_for(2, Duration::from_secs(60));
    let drained = rx.count() - before;
    eprintln!("{name}'s retry after {drained} of the backlogs' deliveries");
    assert!(
        drained < BACK.len() * n - 30_000 - 8_000,
        "{name}'s retry waited for {drained} of the backlogs' deliveries"
    );
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id")),
        "one event, twice"
    );
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_millis(after_ms),
        "{name}'s retry went {waited:?} after the attempt, before its time"
    );
}

fn fails_once() -> TestReceiver {
    let failed = std::sync::atomic::AtomicBool::new(false);
    TestReceiver::with_script(move |_, _| {
        if failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::status(200)
        } else {
            Reply::status(500)
        }
    })
}

#[test]
fn a_quiet_endpoint_s_retries_waiting_at_a_restart_do_not_wait_behind_backlogs_loaded_after_it() {
    // `soon` (retry = ["4s"]) and `far` (retry = ["14s"]) each fail their first delivery;
    // then eight endpoints' backlogs of 16,000 each are accepted, their receivers held,
    // and the process is killed with -9 and started again with them answering in 40 ms
    // (as above: the cursor passes the last backlog key only once 128,000 - 30,000 have
    // been delivered, 15 s at the most). The two retries wait in `due` above every
    // backlog key, `soon`'s due within 10 s of the start, `far`'s further out. Written
    // before the start, neither was handed ahead nor remembered (whether its endpoint
    // was quiet was not known), and both waited for the cursor: some 98,000 of the
    // backlogs' deliveries. The start's census now remembers them, and each goes to its
    // worker ahead of the cursor once within 10 s of its time, its endpoint quiet.
    const N: usize = 16_000;
    let (rx, gate) = TestReceiver::gated();
    let (soon, far) = (fails_once(), fails_once());
    let mut eps = back_endpoints(&rx);
    eps += &endpoint("soon", r#"["s"]"#, &soon.url("/"), "retry = [\"4s\"]");
    eps += &endpoint("far", r#"["f"]"#, &far.url("/"), "retry = [\"14s\"]");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new(&eps);
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    assert_eq!(srv.connect().send(&event("s", "s-0", "{}")), "ok s-0 1");
    assert_eq!(srv.connect().send(&event("f", "f-0", "{}")), "ok f-0 1");
    for id in ["s-0", "f-0"] {
        srv.wait_event(id, Duration::from_secs(10), |v| states(v) == ["retrying"]);
    }
    assert_eq!(srv.pipeline(interleaved(&BACK, N)), BACK.len() * N);
    srv.kill9();
    rx.set_script(|_, _| Reply::status(200).delay(Duration::from_millis(40)));
    let before = rx.count();
    let srv = TestServer::start_in(dir, &opts);
    for (name, rcv, after) in [("soon", &soon, 3_900), ("far", &far, 13_900)] {
        retry_went_ahead(name, rcv, &rx, before, N, after);
    }
    // Both were handed over ahead, and forgotten once reported.
    srv.wait_metric(
        "ricochet_deliveries_handed_ahead",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    for id in ["s-0", "f-0"] {
        srv.wait_event(id, Duration::from_secs(10), |v| states(v) == ["delivered"]);
    }
    assert_eq!((soon.count(), far.count()), (2, 2));
    drop(srv);
    gate.open();
}

#[test]
fn an_ordered_endpoint_s_fresh_deliveries_go_before_backlogs_loaded_after_a_restart_but_not_before_its_own(
) {
    // As above, eight FIFO endpoints' backlogs of 8,000 each wait for the loader after
    // a restart. `quick` is ordered, with nothing of its own pending: its fresh
    // deliveries waited for the cursor, some 34,000 of the backlogs' deliveries (an
    // ordered endpoint's older deliveries might still wait on disk below it, and a
    // backlog from before the start was not known per endpoint); and before that, at
    // the start, they were paused behind a resume of its (empty) paused set that waited
    // for room in the workers. The start now takes each ordered endpoint's highest key in the
    // due index: `ord`, ordered too, has 20 deliveries accepted after the backlogs, so
    // its 20 fresh ones must still wait for the cursor to pass those, and all 40
    // arrive in acceptance order.
    const N: usize = 8_000;
    let (rx, gate) = TestReceiver::gated();
    let quick = TestReceiver::start();
    let mut eps = back_endpoints(&rx);
    eps += &endpoint(
        "ord",
        r#"["ord"]"#,
        &rx.url("/ord"),
        "ordered = true\ntimeout = \"300s\"",
    );
    eps += &endpoint("quick", r#"["q"]"#, &quick.url("/"), "ordered = true");
    let (srv, before) = restarted_with_backlogs(&eps, &rx, N, &["ord"]);
    let mut conn = srv.connect();
    for i in 20..40 {
        let id = format!("ordf-{i}");
        let line = event("ord", &id, &format!("{{\"n\":{i}}}"));
        assert_eq!(conn.send(&line), format!("ok {id} 1"));
    }
    quick_s_20_arrive_before(&srv, (&quick, &rx, before), N, "backlogs'");
    let ids = quick.ids();
    assert!(
        ids.len() == 20 && ids.values().all(|&n| n == 1),
        "quick got {ids:?}"
    );
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(120),
        |v| v == 0.0,
    );
    // `ord`'s first arrivals after the restart in acceptance order (the one in flight at
    // the kill goes again).
    let (ns, first) = first_arrivals(&rx.requests()[before..], "/ord");
    assert_eq!(first, (0..40).collect::<Vec<u64>>(), "{ns:?}");
    assert_eq!(
        srv.metrics().value("ricochet_deliveries_handed_ahead", &[]),
        Some(0.0)
    );
    gate.open();
}

#[test]
fn an_endpoint_made_ordered_while_the_cursor_lags_sends_no_fresh_delivery_before_its_replay() {
    // Helper R's review, session 46. After a restart with eight backlogs (the cursor
    // lags), FIFO `fe`'s delivered `f-0` is replayed: due now, it waits for the cursor,
    // and as `fe` is FIFO it does not keep `fe`'s fresh deliveries from going ahead. A
    // `PUT` makes `fe` ordered, and `f-1` is sent: it went ahead, before the replay
    // scheduled before it. An endpoint made ordered while the cursor lags now waits for
    // the scans to reach the present. `oe`, ordered from the start, gets the same.
    const N: usize = 10_000;
    let (rx, gate) = TestReceiver::gated();
    let fe = TestReceiver::start();
    let oe = TestReceiver::start();
    let mut eps = back_endpoints(&rx);
    eps += &endpoint("fe", r#"["f"]"#, &fe.url("/fe"), "");
    eps += &endpoint("oe", r#"["g"]"#, &oe.url("/oe"), "ordered = true");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new(&eps);
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    let mut c = srv.connect();
    assert_eq!(c.send(&event("f", "f-0", "{}")), "ok f-0 1");
    assert_eq!(c.send(&event("g", "g-0", "{}")), "ok g-0 1");
    fe.wait_for(1, Duration::from_secs(20));
    oe.wait_for(1, Duration::from_secs(20));
    srv.wait_event("f-0", Duration::from_secs(20), |v| {
        states(v) == ["delivered"]
    });
    srv.wait_event("g-0", Duration::from_secs(20), |v| {
        states(v) == ["delivered"]
    });
    assert_eq!(srv.pipeline(interleaved(&BACK, N)), BACK.len() * N);
    srv.kill9();
    rx.set_script(|_, _| Reply::status(200).delay(Duration::from_millis(40)));
    let before = rx.count();
    let srv = TestServer::start_in(dir.clone(), &opts);
    // The loader is handing the backlogs over.
    rx.wait_for(before + 1, Duration::from_secs(20));
    for path in [
        "/v1/events/f-0/replay?endpoint=fe",
        "/v1/events/g-0/replay?endpoint=oe",
    ] {
        let (st, v) = srv.post(path);
        assert_eq!(st, 202, "{path}: {v}");
    }
    let def = serde_json::json!({"events": ["f"], "url": fe.url("/fe"), "ordered": true});
    let (st, v) = srv.call("PUT", "/v1/endpoints/fe", &def);
    assert_eq!(st, 200, "{v}");
    let mut c = srv.connect();
    assert_eq!(c.send(&event("f", "f-1", "{}")), "ok f-1 1");
    assert_eq!(c.send(&event("g", "g-1", "{}")), "ok g-1 1");
    fe.wait_for(3, Duration::from_secs(120));
    oe.wait_for(3, Duration::from_secs(120));
    let ids = |r: &TestReceiver| -> Vec<String> {
        r.requests()
            .iter()
            .map(|q| q.header("webhook-id").unwrap_or("?").to_string())
            .collect()
    };
    assert_eq!(ids(&oe), ["g-0", "g-0", "g-1"]);
    assert_eq!(ids(&fe), ["f-0", "f-0", "f-1"]);
    gate.open();
}

#[test]
fn a_quiet_endpoint_s_fresh_deliveries_do_not_wait_behind_a_spilled_burst() {
    // A burst of 70,000 deliveries over ten endpoints (each below its share of the
    // cap) comes faster than their receiver drains it (20 ms an answer, 16 lanes each:
    // 8,000 a second), so past the cap (30,000) fresh deliveries spill: they stay on
    // disk and a scan loads them in key order as the workers drain. `quick`'s 20,
    // accepted after the burst, waited behind all of it, some 40,000 of the burst's
    // deliveries (helper A, session 43: a burst of 40,000 held a trickle to quiet
    // endpoints 2.7 s). A quiet endpoint's fresh deliveries now go to its worker at
    // once, and the spill's scan skips them when it passes.
    const BURST: [&str; 10] = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9"];
    const N: usize = 7_000;
    let rx = TestReceiver::with_script(|_, _| Reply::status(200).delay(Duration::from_millis(20)));
    let quick = TestReceiver::start();
    let mut eps = String::new();
    for name in BURST {
        let url = rx.url(&format!("/{name}"));
        eps += &endpoint(name, &format!(r#"["{name}"]"#), &url, "max_in_flight = 16");
    }
    eps += &endpoint("quick", r#"["q"]"#, &quick.url("/"), "");
    let srv = TestServer::start(&eps);
    assert_eq!(srv.pipeline(interleaved(&BURST, N)), BURST.len() * N);
    quick_s_20_go_before(&srv, (&quick, &rx, 0), 20_000, "burst's");
    let ids = quick.ids();
    assert!(
        ids.len() == 20 && ids.values().all(|&n| n == 1),
        "quick got {ids:?}"
    );
    let ids = rx.ids();
    assert_eq!(ids.len(), BURST.len() * N, "every burst delivery arrived");
    let twice: Vec<_> = ids.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // Each key handed over ahead was forgotten once reported.
    assert_eq!(
        srv.metrics().value("ricochet_deliveries_handed_ahead", &[]),
        Some(0.0)
    );
}

#[test]
fn a_fresh_delivery_handed_over_ahead_and_hung_does_not_keep_its_endpoint_from_giving_back() {
    // After a restart eight endpoints' backlogs fill the cap, their receivers holding
    // every request. `slow`'s own backlog lies behind them in the due index, so it is
    // quiet when a fresh delivery of it comes: that goes to its worker at once, ahead
    // of the cursor, and hangs at the receiver. Then the eight are answered, four at
    // once and four in 40 ms each (these keep workers past half the cap): the cursor
    // reaches `slow`'s backlog and hands it over before a second shows it slow (its
    // receiver answers in 200 ms). Its worker gave back only keys above every one it
    // kept, the one in flight among them, and the fresh key lies above the whole
    // backlog: nothing was given back, and `slow` held its share of the cap for as
    // long as the attempt's timeout (helper A). Now the fresh one does not bound the
    // give-back, stays with the worker, and is skipped as the backlog given back is
    // read back past it: it goes out once. (Read back into the kept-back keys while
    // its worker had it, and answered before its turn came, it went out again: helper
    // R's review.)
    const BUSY: [&str; 4] = ["busy1", "busy2", "busy3", "busy4"];
    const FAST: [&str; 4] = ["fast1", "fast2", "fast3", "fast4"];
    // Its backlog given back must fit one read-back (4,096) for the test below.
    const SLOW_N: usize = 5_500;
    let (rx, gate) = TestReceiver::gated();
    let mut eps = String::new();
    for name in BUSY.iter().chain(&FAST).chain(&["slow"]) {
        let url = rx.url(&format!("/{name}"));
        eps += &endpoint(name, &format!(r#"["{name}"]"#), &url, "timeout = \"300s\"");
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new(&eps);
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    // 20,000 and 14,000: the cap (30,000) and 4,000 more before `slow`'s; the busy
    // ones' are 5,000 past half the cap, for their drain to keep the workers past it
    // while `slow` is measured.
    assert_eq!(srv.pipeline(interleaved(&BUSY, 5_000)), 20_000);
    assert_eq!(srv.pipeline(interleaved(&FAST, 3_500)), 14_000);
    assert_eq!(srv.pipeline(interleaved(&["slow"], SLOW_N)), SLOW_N);
    srv.kill9();
    let fresh = b"{\"fresh\":true}".as_slice();
    let (back_gate, fresh_gate) = (Gate::new(), Gate::new());
    let script = |back: Gate, fresh_held: Gate, slow_ms: u64| {
        move |req: &Received, _: usize| {
            if req.body == fresh {
                fresh_held.wait();
                return Reply::status(200);
            }
            if req.path == "/slow" {
                return Reply::status(200).delay(Duration::from_millis(slow_ms));
            }
            back.wait();
            let ms = if req.path.starts_with("/busy") { 40 } else { 0 };
            Reply::status(200).delay(Duration::from_millis(ms))
        }
    };
    rx.set_script(script(back_gate.clone(), fresh_gate.clone(), 200));
    gate.open();
    let srv = TestServer::start_in(dir.clone(), &opts);
    assert_eq!(
        srv.connect()
            .send(&event("slow", "fresh", "{\"fresh\":true}")),
        "ok fresh 1"
    );
    // Sent at once, ahead of the backlogs.
    rx.wait_until(Duration::from_secs(20), "the fresh delivery", |got| {
        got.iter().any(|r| r.body == fresh)
    });
    back_gate.open();
    srv.wait_log("endpoint=slow given_back=", Duration::from_secs(30));
    // `slow` drains at its pace; at half what it may hold, the backlog given back is
    // read back, the fresh key's place at its end.
    srv.wait_metric(
        "ricochet_deliveries_kept_back",
        Duration::from_secs(30),
        |v| v > 0.0,
    );
    // The fresh one answered while the rest waits its turn; then all of it at once.
    fresh_gate.open();
    srv.wait_metric(
        "ricochet_deliveries_handed_ahead",
        Duration::from_secs(20),
        |v| v == 0.0,
    );
    rx.set_script(script(back_gate.clone(), fresh_gate.clone(), 0));
    for (gauge, v) in [
        ("ricochet_deliveries_pending", 0.0),
        ("ricochet_deliveries_kept_back", 0.0),
        ("ricochet_endpoints_backlog_on_disk", 0.0),
        ("ricochet_deliveries_in_memory", 0.0),
    ] {
        srv.wait_metric(gauge, Duration::from_secs(120), |x| x == v);
    }
    let old = rx
        .requests()
        .iter()
        .filter(|r| r.path == "/slow" && r.body != fresh)
        .map(|r| r.body.clone())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(old, SLOW_N, "every one of slow's backlog arrived");
    let copies = rx.requests().iter().filter(|r| r.body == fresh).count();
    assert_eq!(copies, 1, "the fresh delivery went out {copies} times");
    assert_eq!(
        srv.metrics().value("ricochet_deliveries_handed_ahead", &[]),
        Some(0.0)
    );
}

#[test]
fn a_backlog_past_the_keys_kept_back_waits_on_disk_and_is_read_back_once() {
    // `slow`'s receiver holds its attempts while 90,000 deliveries of it are accepted:
    // workers hold 15,000 (half the cap), and the rest are kept back, past the 65,536
    // keys the committer keeps in memory. Those made the workers count as full, so
    // `quick`'s 20 waited on disk until `slow` drained (an hour at 80 events/s to a
    // receiver that hangs, with the bound of 262,144 before). The end of `slow`'s
    // backlog now waits on disk and is read back as it drains: `quick`'s 20 arrive at
    // once, and every one of `slow`'s arrives once when its receiver answers.
    const N: usize = 90_000;
    let (srv, slow, gate, quick) = hung_endpoints_and_quick(&["slow"], "");
    assert_eq!(srv.pipeline(event_lines("slow", "s", N)), N);
    srv.wait_metric(
        "ricochet_endpoints_backlog_on_disk",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    let kept = srv.metrics().value("ricochet_deliveries_kept_back", &[]);
    assert!(kept.is_some_and(|k| k < 65_536.0), "kept back: {kept:?}");
    quick_first_then_every_hung_delivery_once(&srv, (&slow, &gate, &quick), N);
    srv.wait_log("all read back", Duration::from_secs(5));
    let m = srv.metrics();
    assert_eq!(
        m.value("ricochet_endpoints_backlog_on_disk", &[]),
        Some(0.0)
    );
    assert_eq!(m.value("ricochet_deliveries_kept_back", &[]), Some(0.0));
}

#[test]
fn the_loader_stops_at_the_event_bytes_workers_may_hold() {
    // 250 events of 700 KB (175 MB) wait for a receiver that never answers. After a
    // restart the loader handed over a whole page of them: all 250 in memory against
    // the 128 MiB the workers may hold (about 190 of these). It stops where the bytes
    // reach the bound.
    let (rx, gate) = TestReceiver::gated();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opts = ServerOpts::new(&endpoint(
        "big",
        r#"["b"]"#,
        &rx.url("/"),
        "max_in_flight = 1\ntimeout = \"300s\"",
    ));
    let mut srv = TestServer::start_in(dir.clone(), &opts);
    let data = format!(r#"{{"blob":"{}"}}"#, "x".repeat(700_000));
    let mut c = srv.connect();
    for i in 0..250 {
        let id = format!("big-{i}");
        assert_eq!(c.send(&event("b", &id, &data)), format!("ok {id} 1"));
    }
    rx.wait_for(1, Duration::from_secs(20));
    drop(c);
    srv.kill9();
    let srv = TestServer::start_in(dir.clone(), &opts);
    let held = srv.wait_metric(
        "ricochet_deliveries_in_memory",
        Duration::from_secs(20),
        |v| v > 0.0,
    );
    // Loaded in one tick; give the loader a few more to go past the bound if it would.
    std::thread::sleep(Duration::from_millis(300)); // ticks are the behaviour here
    let held = srv
        .metrics()
        .value("ricochet_deliveries_in_memory", &[])
        .unwrap_or(held);
    assert!(held <= 200.0, "{held} deliveries of 700 KB in memory");
    gate.open();
}

#[test]
fn an_ordered_endpoint_past_its_share_delivers_its_retried_head_once() {
    // 100,000 events to an ordered endpoint whose receiver answers its head 500 four
    // times. Its worker holds half the cap, the rest is kept back; the head's retries
    // made by the worker passed the loader meanwhile and were kept back too, and one,
    // handed over long after the head was delivered, went out again after later
    // events. Past the keys kept back in memory (65,536) the end of the backlog waits
    // on disk, and is read back in acceptance order as the endpoint drains.
    const N: usize = 100_000;
    let rx = TestReceiver::with_script(|req, _| {
        let head = req.body == b"{\"n\":0}";
        let tries = HEAD_TRIES.fetch_add(head as usize, std::sync::atomic::Ordering::SeqCst);
        Reply::status(if head && tries < 4 { 500 } else { 200 })
    });
    static HEAD_TRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let srv = TestServer::start(&endpoint(
        "ord",
        r#"["o"]"#,
        &rx.url("/"),
        "ordered = true\nretry = [\"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\"]",
    ));
    let mut lines = Vec::new();
    for i in 0..N {
        lines
            .extend_from_slice(event("o", &format!("o-{i}"), &format!("{{\"n\":{i}}}")).as_bytes());
        lines.push(b'\n');
    }
    let oks = srv.pipeline(lines);
    assert_eq!(oks, N);
    srv.wait_metric(
        "ricochet_deliveries_pending",
        Duration::from_secs(120),
        |v| v == 0.0,
    );
    // (Its head held the rest for 8 s, longer than the 100,000 took to be accepted.)
    srv.wait_log("all read back", Duration::from_secs(5));
    let got = rx.requests();
    let heads = got.iter().filter(|r| r.body == b"{\"n\":0}").count();
    assert_eq!(heads, 5, "the head: four 500s and one 200");
    assert_eq!(got.len(), N + 4);
    // Delivered in acceptance order: each body's number one more than the last 2xx's.
    let mut last = None;
    for r in got.iter().skip(4) {
        let n: u64 = r.json()["n"].as_u64().unwrap();
        assert_eq!(n, last.map_or(0, |l| l + 1), "out of order after {last:?}");
        last = Some(n);
    }
}

#[test]
fn an_ordered_endpoint_s_backlog_left_on_disk_below_a_key_its_worker_holds_is_not_sent_again_once_it_is_fifo(
) {
    // Four hung endpoints hold half the cap (3,800 each, too few to be asked to give any
    // back), so an endpoint past its limit has its deliveries kept back. `o`, ordered,
    // holds four deliveries behind its head, which was answered 500 and retries in 5 s:
    // `o` drains nothing, and is slow (limit 2,048). The loader hands the head's retry
    // over a second before it is due; 8,000 events accepted within that second are due
    // before it, and past `o`'s limit they are kept back. More follow, the keys kept
    // back reach their bound, and `o`, the slow endpoint with the most, leaves all but
    // its first 2,048 on disk: from a key below the retry its worker holds (an ordered
    // endpoint had no handed-over bound; its queue takes a second copy as the same
    // delivery). The retry is attempted and hangs; a `PUT` makes `o` FIFO; as `o`
    // drains, its backlog is read back from disk with the retry's key among it, and a
    // FIFO queue sent that copy beside the attempt in flight.
    const HUNG: [&str; 4] = ["h1", "h2", "h3", "h4"];
    const PER_HUNG: usize = 3_800;
    const FIRST: usize = 8_000;
    const THEN: usize = 62_000;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let rest = Gate::new();
    // The retry is held for as long as the drain takes (a gate holds a minute at most).
    let retry = Arc::new(AtomicBool::new(false));
    let is_head = |r: &Received| r.path == "/o" && r.body == b"{\"n\":0}";
    let rx = {
        let (rest, retry) = (rest.clone(), retry.clone());
        let tries = AtomicUsize::new(0);
        TestReceiver::with_script(move |r, _| {
            if !is_head(r) {
                rest.wait();
                return Reply::status(200);
            }
            match tries.fetch_add(1, SeqCst) {
                0 => Reply::status(500),
                1 => {
                    let until = std::time::Instant::now() + Duration::from_secs(280);
                    while !retry.load(SeqCst) && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Reply::status(200)
                }
                _ => Reply::status(200),
            }
        })
    };
    let mut eps = String::new();
    for name in HUNG {
        let (t, url) = (format!(r#"["{name}"]"#), rx.url(&format!("/{name}")));
        eps += &endpoint(name, &t, &url, "timeout = \"300s\"\nmax_in_flight = 4");
    }
    let extra = "ordered = true\ntimeout = \"300s\"\nmax_in_flight = 8\nretry = [\"5s\"]";
    eps += &endpoint("o", r#"["o"]"#, &rx.url("/o"), extra);
    let srv = TestServer::start(&eps);
    let all_hung = HUNG.len() * PER_HUNG;
    assert_eq!(srv.pipeline(interleaved(&HUNG, PER_HUNG)), all_hung);
    srv.wait_metric(
        "ricochet_deliveries_in_memory",
        Duration::from_secs(30),
        |v| v >= all_hung as f64,
    );
    let o_events = |from: usize, n: usize| {
        let mut lines = Vec::new();
        for i in from..from + n {
            let data = format!("{{\"n\":{i}}}");
            lines.extend_from_slice(event("o", &format!("o-{i}"), &data).as_bytes());
            lines.push(b'\n');
        }
        lines
    };
    assert_eq!(srv.pipeline(o_events(0, 5)), 5);
    rx.wait_until(Duration::from_secs(20), "the head's first attempt", |got| {
        got.iter().any(is_head)
    });
    let failed = std::time::Instant::now();
    // The retry is handed over about 4 s after the failure (a second before it is due).
    std::thread::sleep(Duration::from_millis(4_150));
    assert_eq!(srv.pipeline(o_events(5, FIRST)), FIRST);
    let first_took = failed.elapsed();
    rx.wait_until(Duration::from_secs(20), "the head's retry", |got| {
        got.iter().filter(|r| is_head(r)).count() == 2
    });
    assert_eq!(srv.pipeline(o_events(5 + FIRST, THEN)), THEN);
    srv.wait_metric(
        "ricochet_endpoints_backlog_on_disk",
        Duration::from_secs(30),
        |v| v == 1.0,
    );
    let mut def = srv.get("/v1/endpoints/o").1;
    def["ordered"] = serde_json::json!(false);
    let (status, v) = srv.call("PUT", "/v1/endpoints/o", &def);
    assert_eq!(status, 200, "{v}");
    rest.open();
    let others = all_hung + 4 + FIRST + THEN;
    // Counted, not filtered: the predicate runs under the receiver's lock at each
    // request, and a filter over 85,000 requests each time slowed the drain to ~400/s.
    // The two attempts of the head are among them (a third, the copy, is caught below).
    rx.wait_until(Duration::from_secs(240), "the rest", |got| {
        got.len() >= others + 2
    });
    let wait = |name: &str| srv.wait_metric(name, Duration::from_secs(30), |v| v == 0.0);
    wait("ricochet_endpoints_backlog_on_disk");
    wait("ricochet_deliveries_kept_back");
    let heads = rx.requests().iter().filter(|r| is_head(r)).count();
    retry.store(true, SeqCst);
    wait("ricochet_deliveries_pending");
    assert_eq!(
        heads, 2,
        "the head's retry, in flight, went out again (the first 8,000 took {first_took:?} from the failure)"
    );
    let ids = rx.ids();
    let twice: Vec<_> = ids.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert_eq!(twice, [(&"o-0".to_string(), &2)], "delivered twice");
}

#[test]
fn an_ordered_head_s_retry_whose_store_copy_came_during_it_goes_once_when_fifo() {
    // An ordered endpoint's head is answered 500 and retried at once: its worker keeps
    // the retry and attempts it before the committer has the outcome, so the store's
    // copy of it is handed over during that attempt (which hangs) and waits in the
    // ordered queue. Then a `PUT` makes the endpoint FIFO. The ordered queue would
    // have dropped that copy when the attempt ended; rebuilt as a FIFO queue it kept
    // it, and the retry went again after the attempt, its outcome recorded twice: the
    // pending count one lower than the deliveries pending (helper jobs, session 54).
    let (retry, hung) = (Gate::new(), Gate::new());
    let rx = {
        let (retry, hung) = (retry.clone(), hung.clone());
        let head_tries = std::sync::atomic::AtomicUsize::new(0);
        TestReceiver::with_script(move |r, _| {
            if r.path == "/hung" {
                hung.wait();
                return Reply::status(200);
            }
            if r.header("webhook-id") != Some("ord-0") {
                return Reply::status(200);
            }
            match head_tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Reply::status(500),
                1 => {
                    retry.wait();
                    Reply::status(200)
                }
                _ => Reply::status(200),
            }
        })
    };
    let mut eps = endpoint(
        "ord",
        r#"["o"]"#,
        &rx.url("/ord"),
        "ordered = true\ntimeout = \"300s\"\nretry = [\"0s\"]",
    );
    eps += &endpoint("hung", r#"["h"]"#, &rx.url("/hung"), "timeout = \"300s\"");
    let srv = TestServer::start(&eps);
    let mut c = srv.connect();
    // One delivery that stays pending throughout.
    c.send_each_ok("h", "hung", 1);
    rx.wait_for(1, Duration::from_secs(10));
    c.send_each_ok("o", "ord", 1);
    let head = |got: &[Received]| {
        got.iter()
            .filter(|r| r.header("webhook-id") == Some("ord-0"))
            .count()
    };
    rx.wait_until(Duration::from_secs(10), "the head's retry", |got| {
        head(got) == 2
    });
    // The failed attempt recorded: the store's copy of its retry went to the worker in
    // that round, ahead of anything the `PUT` below tells it.
    srv.wait_event("ord-0", Duration::from_secs(10), |v| {
        v["deliveries"][0]["attempts"].as_array().unwrap().len() == 1
    });
    let mut def = srv.get("/v1/endpoints/ord").1;
    def["ordered"] = serde_json::json!(false);
    def["max_in_flight"] = serde_json::json!(1);
    let (status, v) = srv.call("PUT", "/v1/endpoints/ord", &def);
    assert_eq!(status, 200, "{v}");
    // Behind whatever the endpoint's one lane has queued.
    assert_eq!(c.send(&event("o", "ord-1", "{}")), "ok ord-1 1");
    retry.open();
    rx.wait_until(Duration::from_secs(10), "the one after the head", |got| {
        got.iter().any(|r| r.header("webhook-id") == Some("ord-1"))
    });
    assert_eq!(head(&rx.requests()), 2, "the retry went once");
    srv.wait_event("ord-1", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });
    assert_eq!(
        srv.metrics().value("ricochet_deliveries_pending", &[]),
        Some(1.0),
        "only `hung-0` pending"
    );
    hung.open();
    srv.wait_nothing_pending(Duration::from_secs(10));
}

/// `n` test calls (`POST /v1/endpoints/{name}/test`) made at once; their answers.
fn tests_at_once(srv: &TestServer, name: &str, n: usize) -> Vec<serde_json::Value> {
    let admin = srv.admin;
    let path = format!("/v1/endpoints/{name}/test");
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || http_call(admin, "POST", &path))
        })
        .collect();
    calls
        .into_iter()
        .map(|c| {
            let (status, v) = c.join().unwrap();
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["success"], true, "{v}");
            v
        })
        .collect()
}

#[test]
fn test_calls_beside_deliveries_stay_within_max_in_flight() {
    // The receiver holds every request 300 ms and counts how many it holds at once. A
    // test call made its request on a connection of its own, beside the endpoint's
    // lanes: three of them while two deliveries were in flight made five requests at
    // once to an endpoint of `max_in_flight = 2`.
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (h, m) = (holding.clone(), most.clone());
    let rx = TestReceiver::with_script(move |_, _| {
        m.fetch_max(h.fetch_add(1, SeqCst) + 1, SeqCst);
        std::thread::sleep(Duration::from_millis(300)); // requests held in flight are the behaviour under test
        h.fetch_sub(1, SeqCst);
        Reply::status(200)
    });
    let srv = TestServer::start(&endpoint(
        "two",
        r#"["t"]"#,
        &rx.url("/"),
        "max_in_flight = 2\nretry = \"none\"",
    ));
    srv.connect().send_each_ok("t", "d", 8);
    rx.wait_for(2, Duration::from_secs(10));
    tests_at_once(&srv, "two", 3);
    rx.wait_for(11, Duration::from_secs(20));
    srv.wait_nothing_pending(Duration::from_secs(20));
    assert_eq!(
        rx.count(),
        11,
        "eight deliveries and three tests, once each"
    );
    let most = most.load(SeqCst);
    assert!(most <= 2, "{most} requests at once at max_in_flight = 2");
}

#[test]
fn test_calls_are_paced_by_max_rps() {
    // Five test calls at once to an endpoint of `max_rps = 2` (a burst of two): their
    // requests go as the bucket allows, at most three within any second (as
    // deliveries' do), not all five at once.
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint("paced", r#"["t"]"#, &rx.url("/"), "max_rps = 2"));
    let mut at: Vec<u64> = tests_at_once(&srv, "paced", 5)
        .iter()
        .map(|v| {
            let t = v["attempt"]["at"].as_str().unwrap();
            ricochet::ingest::parse::parse_rfc3339_ms(t).unwrap()
        })
        .collect();
    at.sort_unstable();
    for (i, t) in at.iter().enumerate() {
        let in_window = at[i..].iter().take_while(|u| **u - t < 1000).count();
        assert!(
            in_window <= 3,
            "{in_window} test requests within a second: {at:?}"
        );
    }
}

#[test]
fn a_test_call_that_finds_no_max_rps_token_within_its_timeout_is_not_sent() {
    // At `max_rps = 1` a test takes the token a second's idling accrued; a second test
    // right after it waits for the next, a second away, longer than its `timeout`
    // (300 ms): it answers unsent, timed out, and says what it waited for.
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint(
        "slow",
        r#"["t"]"#,
        &rx.url("/"),
        "max_rps = 1\ntimeout = \"300ms\"",
    ));
    // The bucket starts empty: a second fills it with its one token.
    std::thread::sleep(Duration::from_millis(1200));
    let (status, first) = srv.post("/v1/endpoints/slow/test");
    assert_eq!((status, &first["success"]), (200, &true.into()), "{first}");
    let (status, v) = srv.post("/v1/endpoints/slow/test");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["success"], false, "{v}");
    let attempt = &v["attempt"];
    assert_eq!(attempt["timed_out"], true, "{v}");
    assert_eq!(attempt["status_code"], serde_json::Value::Null, "{v}");
    let error = attempt["error"].as_str().unwrap();
    assert_eq!(
        error, "timed out after 300ms waiting for a max_rps token (not sent)",
        "{v}"
    );
    assert_eq!(rx.count(), 1, "the second test's request was not sent");
}
