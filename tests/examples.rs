//! The seed catalogue in `docs/examples/` against the real binary: every config passes
//! `ricochet check`, and `ricochet render` of every endpoint for its sample event prints
//! a well-formed HTTP/1.1 request (request line, headers, blank line, body) that carries
//! the event's data points: query values percent-decode to the data, JSON bodies parse
//! and hold each data point with its type and value.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ricochet");

/// Read at run time: `cargo test` sets `CARGO_MANIFEST_DIR` for the test process, and a
/// test binary built in another checkout that shares the target dir (CI's clone) can be
/// reused here with that checkout's path compiled in.
fn examples_dir() -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join("docs/examples")
}

/// One `[[endpoint]]` table of an example config, read line by line (the examples keep
/// `name`, `method` and `format` on lines of their own).
#[derive(Debug)]
struct Endpoint {
    name: String,
    method: String,
    format: Option<String>,
}

fn quoted(line: &str, key: &str) -> Option<String> {
    let rest = line
        .strip_prefix(key)?
        .trim_start()
        .strip_prefix('=')?
        .trim();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

fn endpoints(toml: &str) -> Vec<Endpoint> {
    let mut found: Vec<Endpoint> = Vec::new();
    for line in toml.lines() {
        let line = line.trim();
        if line == "[[endpoint]]" {
            found.push(Endpoint {
                name: String::new(),
                method: "GET".into(),
                format: None,
            });
        } else if let Some(ep) = found.last_mut() {
            if let Some(v) = quoted(line, "name") {
                ep.name = v;
            } else if let Some(v) = quoted(line, "method") {
                ep.method = v;
            } else if let Some(v) = quoted(line, "format") {
                ep.format = Some(v);
            }
        }
    }
    found
}

fn run(args: &[&str]) -> Output {
    // A scratch working directory: nothing the binary might create lands in the repo.
    let cwd = tempfile::tempdir().expect("temp dir");
    Command::new(BIN)
        .args(args)
        .current_dir(cwd.path())
        .output()
        .expect("run ricochet")
}

fn explain(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad escape in {s}")));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8 after decoding")
}

/// Compares what the request carries for data point `key` with the event's value.
fn same_point(ty: &str, key: &str, got: &str, want: &Value) {
    match want {
        Value::Null => assert_eq!(got, "", "{ty}: {key}"),
        Value::String(s) => assert_eq!(got, s, "{ty}: {key}"),
        Value::Number(n) => assert_eq!(got.parse::<f64>().ok(), n.as_f64(), "{ty}: {key} = {got}"),
        other => assert_eq!(got, other.to_string(), "{ty}: {key}"),
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_request(ctx: &str, raw: &[u8]) -> Request {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{ctx}: no blank line after the headers:\n{}",
                String::from_utf8_lossy(raw)
            )
        });
    let head = std::str::from_utf8(&raw[..split]).expect("head is UTF-8");
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().expect("request line");
    let parts: Vec<&str> = request_line.split(' ').collect();
    assert_eq!(parts.len(), 3, "{ctx}: request line {request_line:?}");
    assert_eq!(parts[2], "HTTP/1.1", "{ctx}: request line {request_line:?}");
    assert!(
        parts[1].starts_with('/'),
        "{ctx}: origin-form target expected: {request_line:?}"
    );
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{ctx}: malformed header line {line:?}"));
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
            "{ctx}: bad header name {name:?}"
        );
        assert!(
            !value.contains(['\r', '\n']),
            "{ctx}: header {name} spans lines"
        );
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Request {
        method: parts[0].to_string(),
        target: parts[1].to_string(),
        headers,
        body,
    }
}

fn check_example(ty: &str) {
    let dir = examples_dir();
    let config = dir.join(format!("{ty}.toml"));
    let event_file = dir.join("events").join(format!("{ty}.json"));
    let config_s = config.to_str().expect("utf-8 path");
    let event_s = event_file.to_str().expect("utf-8 path");

    let out = run(&["check", "--config", config_s]);
    assert!(
        out.status.success(),
        "{}",
        explain(&format!("ricochet check {ty}.toml"), &out)
    );

    let line: Value =
        serde_json::from_str(&std::fs::read_to_string(&event_file).expect("event file"))
            .expect("event file is one JSON object");
    assert_eq!(line["type"], ty, "event type");
    let event_id = line["id"].as_str().expect("event id");
    let data = line["data"].as_object().expect("data object");

    let toml = std::fs::read_to_string(&config).expect("config");
    let eps = endpoints(&toml);
    assert!(
        eps.iter().any(|e| e.method == "GET"),
        "{ty}: a GET endpoint"
    );
    assert!(
        eps.iter()
            .any(|e| e.method == "POST" && e.format.as_deref() == Some("json")),
        "{ty}: a POST json endpoint"
    );
    for ep in &eps {
        let ctx = format!("{ty} / {}", ep.name);
        let out = run(&[
            "render",
            "--config",
            config_s,
            "--endpoint",
            &ep.name,
            event_s,
        ]);
        assert!(
            out.status.success(),
            "{}",
            explain(&format!("ricochet render {ctx}"), &out)
        );
        let req = parse_request(&ctx, &out.stdout);

        assert_eq!(req.method, ep.method, "{ctx}: method");
        assert_eq!(req.header("Host"), Some("partner.example"), "{ctx}: Host");
        assert_eq!(
            req.header("webhook-id"),
            Some(event_id),
            "{ctx}: webhook-id"
        );
        let ts = req.header("webhook-timestamp").unwrap_or_default();
        assert!(
            !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit()),
            "{ctx}: webhook-timestamp {ts:?}"
        );
        let ua = req.header("User-Agent").unwrap_or_default();
        assert!(ua.starts_with("ricochet/"), "{ctx}: User-Agent {ua:?}");
        assert!(
            req.target.starts_with("/postback/"),
            "{ctx}: target {}",
            req.target
        );

        if let Some(query) = req.target.split_once('?').map(|(_, q)| q) {
            let mut checked = 0;
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                assert!(
                    v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~%,".contains(&b)),
                    "{ctx}: query value of {k} not percent-encoded: {v}"
                );
                if let Some(want) = data.get(k) {
                    same_point(&ctx, k, &percent_decode(v), want);
                    checked += 1;
                }
            }
            assert!(
                checked >= 4,
                "{ctx}: only {checked} data points in the query"
            );
        }

        if ep.method == "GET" {
            assert!(req.body.is_empty(), "{ctx}: GET with a body");
            continue;
        }
        if let Some(cl) = req.header("Content-Length") {
            assert_eq!(
                cl.parse::<usize>().ok(),
                Some(req.body.len()),
                "{ctx}: Content-Length"
            );
        }
        if ep.format.as_deref() == Some("json") {
            let ct = req.header("Content-Type").unwrap_or_default();
            assert!(
                ct.starts_with("application/json"),
                "{ctx}: Content-Type {ct:?}"
            );
            assert_eq!(
                req.header("Authorization"),
                Some("Bearer replace-me"),
                "{ctx}: Authorization"
            );
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_else(|e| {
                panic!(
                    "{ctx}: body is not JSON ({e}):\n{}",
                    String::from_utf8_lossy(&req.body)
                )
            });
            let body = body.as_object().expect("body is an object");
            let mut checked = 0;
            for (k, v) in body {
                if let Some(want) = data.get(k).filter(|w| !w.is_array()) {
                    assert_eq!(v, want, "{ctx}: body {k}");
                    checked += 1;
                }
            }
            assert!(
                checked >= 4,
                "{ctx}: only {checked} data points in the body"
            );
            for key in ["items", "properties"] {
                if let Some(Value::Array(want)) = data.get(key) {
                    let got = body.get(key).and_then(Value::as_array).map(Vec::len);
                    assert_eq!(got, Some(want.len()), "{ctx}: {key} joined");
                }
            }
        }
    }
}

/// The text of the `[[endpoint]]` table named `name` in `toml`.
fn table<'a>(toml: &'a str, name: &str) -> &'a str {
    toml.split("[[endpoint]]")
        .skip(1)
        .find(|t| {
            t.lines()
                .any(|l| quoted(l.trim(), "name").as_deref() == Some(name))
        })
        .unwrap_or_else(|| panic!("no endpoint {name}"))
}

/// The data paths a template text refers to: `{A.b}` and `{join(items, …)}`'s `items`.
fn refs(text: &str) -> BTreeSet<String> {
    let path = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices('{') {
        let rest = &text[i + 1..];
        if let Some(args) = rest.strip_prefix("join(") {
            out.insert(path(args.trim_start()));
        } else if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            out.insert(path(rest));
        }
    }
    out
}

/// The data points of an event's `data`: every leaf's dotted path, an array counting as
/// one point (joined whole).
fn data_points(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                data_points(v, &p, out);
            }
        }
        _ => out.push(at.to_string()),
    }
}

/// docs/templates.md: `<type>-get` and `<type>-post` carry every data point, each
/// written out or inside an object written whole.
fn check_every_point_is_carried(ty: &str) {
    let dir = examples_dir();
    let toml = std::fs::read_to_string(dir.join(format!("{ty}.toml"))).expect("config");
    let line: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("events").join(format!("{ty}.json"))).expect("event"),
    )
    .expect("event JSON");
    let mut points = Vec::new();
    data_points(&line["data"], "", &mut points);
    for name in [format!("{ty}-get"), format!("{ty}-post")] {
        let refs = refs(table(&toml, &name));
        let missing: Vec<&String> = points
            .iter()
            .filter(|p| {
                !refs
                    .iter()
                    .any(|r| r == *p || p.starts_with(&format!("{r}.")))
            })
            .collect();
        assert!(missing.is_empty(), "{name} leaves out {missing:?}");
    }
}

/// Every example config has its sample event and the other way round.
#[test]
fn catalogue_is_complete() {
    let dir = examples_dir();
    let names = |dir: &Path, ext: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("examples dir")
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(ext).map(String::from))
            .collect()
    };
    let configs = names(&dir, ".toml");
    let events = names(&dir.join("events"), ".json");
    assert_eq!(configs, events);
    let listed: BTreeSet<String> = TYPES.iter().map(|t| t.to_string()).collect();
    assert_eq!(configs, listed, "TYPES below lists every example");
    for ty in TYPES {
        check_every_point_is_carried(ty);
    }
}

const TYPES: [&str; 7] = [
    "action_lifecycle",
    "action_inquiry",
    "action_clearing",
    "tracking_value_request",
    "job_completed",
    "publisher_application",
    "advocate.coupon_created",
];

#[test]
fn action_lifecycle() {
    check_example(TYPES[0]);
}

#[test]
fn action_inquiry() {
    check_example(TYPES[1]);
}

#[test]
fn action_clearing() {
    check_example(TYPES[2]);
}

#[test]
fn tracking_value_request() {
    check_example(TYPES[3]);
}

#[test]
fn job_completed() {
    check_example(TYPES[4]);
}

#[test]
fn publisher_application() {
    check_example(TYPES[5]);
}

#[test]
fn advocate_coupon_created() {
    check_example(TYPES[6]);
}
