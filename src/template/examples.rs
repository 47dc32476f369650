//! The templates of the seed catalogue (`docs/examples/`) compile and render what their
//! sample events say, without the binary: every URL template becomes one URL whose
//! query holds each data point percent-encoded, every JSON body is valid JSON that
//! carries each data point with its exact type and value.

use bytes::Bytes;
use serde_json::Value;

use super::{BodyFormat, Context, Doc, Template};

const EXAMPLES: [(&str, &str, &str); 7] = [
    (
        "action_lifecycle",
        include_str!("../../docs/examples/action_lifecycle.toml"),
        include_str!("../../docs/examples/events/action_lifecycle.json"),
    ),
    (
        "action_inquiry",
        include_str!("../../docs/examples/action_inquiry.toml"),
        include_str!("../../docs/examples/events/action_inquiry.json"),
    ),
    (
        "action_clearing",
        include_str!("../../docs/examples/action_clearing.toml"),
        include_str!("../../docs/examples/events/action_clearing.json"),
    ),
    (
        "tracking_value_request",
        include_str!("../../docs/examples/tracking_value_request.toml"),
        include_str!("../../docs/examples/events/tracking_value_request.json"),
    ),
    (
        "job_completed",
        include_str!("../../docs/examples/job_completed.toml"),
        include_str!("../../docs/examples/events/job_completed.json"),
    ),
    (
        "publisher_application",
        include_str!("../../docs/examples/publisher_application.toml"),
        include_str!("../../docs/examples/events/publisher_application.json"),
    ),
    (
        "advocate.coupon_created",
        include_str!("../../docs/examples/advocate.coupon_created.toml"),
        include_str!("../../docs/examples/events/advocate.coupon_created.json"),
    ),
];

/// The raw text of the event line's `data` (the files keep it as the last member).
fn raw_data(line: &str) -> &str {
    let start = line.find("\"data\":").expect("event has data") + "\"data\":".len();
    line.trim_end()[start..]
        .strip_suffix('}')
        .expect("data is last")
}

/// Every `<key> = '<value>'` and `<key> = '''\n<value>'''` in the file, in order.
fn literal_strings<'a>(toml: &'a str, key: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let multi = format!("\n{key} = '''\n");
    let single = format!("\n{key} = '");
    let mut rest = toml;
    while let Some(i) = rest.find(&single) {
        if rest[i..].starts_with(&multi) {
            let body = &rest[i + multi.len()..];
            let end = body.find("'''").expect("closed");
            found.push(&body[..end]);
            rest = &body[end + 3..];
        } else {
            let body = &rest[i + single.len()..];
            let end = body.find('\'').expect("closed");
            found.push(&body[..end]);
            rest = &body[end + 1..];
        }
    }
    found
}

fn render(src: &str, ctx: Context, doc: &Doc) -> Vec<u8> {
    let t = Template::compile(src, ctx).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    t.render(doc, &mut out);
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The text a query value carries for a data value.
fn query_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn every_example_renders_its_sample_event() {
    for (ty, toml, event) in EXAMPLES {
        let line: Value = serde_json::from_str(event).unwrap();
        assert_eq!(line["type"], ty);
        let data: Value = serde_json::from_str(raw_data(event)).unwrap();
        assert_eq!(data, line["data"]);
        let doc = Doc::parse(Bytes::copy_from_slice(raw_data(event).as_bytes())).unwrap();

        let urls = literal_strings(toml, "url");
        assert_eq!(urls.len(), 2, "{ty}");
        for url in urls {
            let out = String::from_utf8(render(url, Context::Url, &doc)).unwrap();
            assert!(out.starts_with("https://partner.example/"), "{out}");
            assert!(!out.contains([' ', '{', '}', '"', '\n']), "{out}");
            if let Some((_, query)) = out.split_once('?') {
                let mut checked = 0;
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap();
                    if let Some(want) = data.get(k) {
                        let got = percent_decode(v);
                        match want {
                            Value::Number(n) => {
                                assert_eq!(got.parse::<f64>().ok(), n.as_f64(), "{ty} {k}")
                            }
                            _ => assert_eq!(got, query_text(want), "{ty} {k}"),
                        }
                        checked += 1;
                    }
                }
                assert!(checked >= 4, "{ty}: only {checked} query values checked");
            }
        }

        let bodies = literal_strings(toml, "body");
        assert_eq!(bodies.len(), 1, "{ty}");
        let out = render(bodies[0], Context::Body(BodyFormat::Json), &doc);
        let body: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{ty}: {e}\n{}", String::from_utf8_lossy(&out)));
        let mut checked = 0;
        for (k, v) in body.as_object().unwrap() {
            if let Some(want) = data.get(k).filter(|w| !w.is_array()) {
                assert_eq!(v, want, "{ty} {k}");
                checked += 1;
            }
        }
        assert!(checked >= 4, "{ty}: only {checked} body values checked");
        // Arrays built by join have one element per data element.
        for key in ["items", "properties"] {
            if let Some(Value::Array(want)) = data.get(key) {
                assert_eq!(
                    body[key].as_array().map(Vec::len),
                    Some(want.len()),
                    "{ty} {key}"
                );
            }
        }
        // Numbers keep their text in the wire bytes, not just their value.
        let text = String::from_utf8(out).unwrap();
        if ty == "action_lifecycle" {
            assert!(text.contains("\"Payout\": 10.50,"), "{text}");
            assert!(text.contains("\"item_price\":12.50,"), "{text}");
            assert!(
                text.contains("\"name\":\"Trail Runner \\\"Lite\\\"\""),
                "{text}"
            );
            assert_eq!(body["items"].as_array().unwrap().len(), 5);
        }
    }
}
