//! Routing by type, `*` and account (SPEC §4).

use std::time::Duration;

use crate::harness::*;

#[test]
fn routes_by_type_wildcard_and_account() {
    let rx = TestReceiver::start();
    let eps = [
        endpoint(
            "inquiries",
            r#"["action_inquiry"]"#,
            &rx.url("/inquiries"),
            "",
        ),
        endpoint("everything", r#"["*"]"#, &rx.url("/all"), ""),
        endpoint(
            "p555",
            r#"["action_inquiry", "action_lifecycle"]"#,
            &rx.url("/p555"),
            "account = \"partner-555\"",
        ),
    ]
    .join("\n");
    let srv = TestServer::start(&eps);
    let mut c = srv.connect();
    // inquiry without account: inquiries + everything.
    assert_eq!(c.send(&event("action_inquiry", "r1", "{}")), "ok r1 2");
    // inquiry for partner-555: all three.
    assert_eq!(
        c.send(r#"{"type":"action_inquiry","id":"r2","account":"partner-555","data":{}}"#),
        "ok r2 3"
    );
    // lifecycle for another account: only the wildcard.
    assert_eq!(
        c.send(r#"{"type":"action_lifecycle","id":"r3","account":"partner-9","data":{}}"#),
        "ok r3 1"
    );
    let got = rx.wait_for(6, Duration::from_secs(10));
    let mut pairs: Vec<(String, String)> = got
        .iter()
        .map(|r| (r.header("webhook-id").unwrap().to_string(), r.path.clone()))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![
            ("r1".into(), "/all".into()),
            ("r1".into(), "/inquiries".into()),
            ("r2".into(), "/all".into()),
            ("r2".into(), "/inquiries".into()),
            ("r2".into(), "/p555".into()),
            ("r3".into(), "/all".into()),
        ]
    );
    // And no endpoint at all: ok with 0.
    let srv2 = TestServer::start(&endpoint("only-x", r#"["x"]"#, &rx.url("/x"), ""));
    assert_eq!(srv2.connect().send(&event("y", "none", "{}")), "ok none 0");
}

#[test]
fn request_shape_headers_and_passthrough_body() {
    let rx = TestReceiver::start();
    let srv = TestServer::start(&endpoint(
        "shape",
        r#"["t"]"#,
        &rx.url("/hook?x=1"),
        "headers = { Authorization = \"Bearer abc\", \"X-Partner\" = \"p-1\" }",
    ));
    let data = r#"{"Amount": 250.00, "s": "a\"b", "n": null}"#;
    assert_eq!(
        srv.connect().send(&event("t", "shape-1", data)),
        "ok shape-1 1"
    );
    let r = &rx.wait_for(1, Duration::from_secs(10))[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hook?x=1");
    assert_eq!(
        r.body,
        data.as_bytes(),
        "json passthrough keeps the bytes as received"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("webhook-id"), Some("shape-1"));
    assert!(r.header("user-agent").unwrap().starts_with("ricochet/"));
    let ts: u64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    let now = unix_ms() / 1000;
    assert!(ts.abs_diff(now) < 60);
    assert_eq!(r.header("authorization"), Some("Bearer abc"));
    assert_eq!(r.header("x-partner"), Some("p-1"));
}

#[test]
fn default_bodies_and_content_types_by_format() {
    let rx = TestReceiver::start();
    let eps = [("form", "form"), ("xml", "xml"), ("text", "text")]
        .map(|(name, format)| {
            endpoint(
                name,
                r#"["t"]"#,
                &rx.url(&format!("/{name}")),
                &format!("format = \"{format}\""),
            )
        })
        .join("\n");
    let srv = TestServer::start(&eps);
    let data = r#"{"ActionId":"A-1","Amount":12.50,"Note":"a&b <c>","Items":[1],"Nil":null}"#;
    assert_eq!(srv.connect().send(&event("t", "f-1", data)), "ok f-1 3");
    let mut got = rx.wait_for(3, Duration::from_secs(10));
    got.sort_by(|a, b| a.path.cmp(&b.path));
    let seen: Vec<(&str, &str, String)> = got
        .iter()
        .map(|r| {
            (
                r.path.as_str(),
                r.header("Content-Type").unwrap(),
                String::from_utf8(r.body.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "/form",
                "application/x-www-form-urlencoded",
                "ActionId=A-1&Amount=12.50&Note=a%26b+%3Cc%3E&Nil=".to_string()
            ),
            ("/text", "text/plain; charset=utf-8", data.to_string()),
            (
                "/xml",
                "application/xml",
                "<event><ActionId>A-1</ActionId><Amount>12.50</Amount><Note>a&amp;b &lt;c&gt;</Note><Nil></Nil></event>"
                    .to_string()
            ),
        ]
    );
}
