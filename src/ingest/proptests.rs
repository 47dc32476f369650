//! Property tests of the ingest line parser and framing against references: for
//! generated lines (JSON values built structurally, spelled with random escapes and
//! whitespace, in envelopes right and wrong) and for corrupted copies of them (bytes
//! flipped, inserted, removed, the line cut), [`LineParser::parse`] accepts exactly the
//! lines a reference built on serde_json accepts, never panics, and reads the same
//! `type`, `id`, `account`, `time` and `data` bytes; whatever it accepts, the template
//! engine's [`Doc`] reads too. Framing: however a stream's bytes are split into reads,
//! a connection's reader answers its lines as a reference framing of the whole stream
//! does (`\n` or `\r\n`, a byte order mark before the first line, blank lines unanswered,
//! lines over `max_line_bytes` answered `too_large`).
//!
//! The reference encodes what ricochet does on purpose where serde_json differs: a
//! `\u` escape that is half a surrogate pair without its other half is read as U+FFFD
//! (and so kept in `data`; in `id` or `account` it is refused); a number beyond the f64 range is JSON (RFC 8259 allows it;
//! serde_json refuses it), kept in `data` as it came, and the wrong type for an envelope
//! field; and an envelope field given twice, or `data` written with an escaped key, is
//! refused.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;

use super::parse::{LineParser, MAX_TIME_MS, MIN_MS_TIME};
use crate::template::Doc;

// ---------------------------------------------------------------- the reference

/// What the reference reads from an accepted line.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    etype: String,
    ext_id: Option<String>,
    account: Option<String>,
    time_ms: Option<u64>,
    data: Vec<u8>,
}

/// The reference's verdict: accepted (with what it read), refused, or out of its reach
/// (nested deeper than serde_json's recursion limit of 128).
#[derive(Debug)]
enum Verdict {
    Accept(Read),
    Refuse(String),
    Unknown,
}

/// `line` with every `\u` escape that is half a surrogate pair without the other half
/// written `\ufffd` (same length). Written apart from the parser's own pass: strings
/// are found by a tokenizer that keeps to the JSON grammar's string rules.
fn lone_surrogates_replaced(line: &[u8]) -> Vec<u8> {
    let mut out = line.to_vec();
    let hex = |b: &[u8]| -> Option<u16> {
        let s = std::str::from_utf8(b.get(..4)?).ok()?;
        if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(s, 16).ok()
    };
    let mut i = 0;
    while i < line.len() {
        if line[i] != b'"' {
            i += 1;
            continue;
        }
        // A string: to its closing quote.
        i += 1;
        while i < line.len() && line[i] != b'"' {
            if line[i] != b'\\' {
                i += 1;
                continue;
            }
            if line.get(i + 1) != Some(&b'u') {
                i += 2;
                continue;
            }
            let Some(u) = hex(&line[i + 2..]) else {
                i += 2;
                continue;
            };
            let is_high = (0xd800..0xdc00).contains(&u);
            let low_follows = line.get(i + 6..i + 8) == Some(b"\\u")
                && hex(&line[i + 8..]).is_some_and(|l| (0xdc00..0xe000).contains(&l));
            if is_high && low_follows {
                i += 12;
            } else {
                if (0xd800..0xe000).contains(&u) {
                    out[i..i + 6].copy_from_slice(b"\\ufffd");
                }
                i += 6;
            }
        }
        i += 1;
    }
    out
}

/// serde_json's verdict on whether `text` is one JSON value, with numbers beyond the
/// f64 range (which it refuses, "number out of range") written `0` padded with spaces
/// in the text returned.
fn json_with_huge_numbers_in_range(text: &str) -> Result<String, serde_json::Error> {
    let mut text = text.to_string();
    loop {
        let e = match serde_json::from_str::<Value>(&text) {
            Ok(_) => return Ok(text),
            Err(e) => e,
        };
        if !e.to_string().starts_with("number out of range") {
            return Err(e);
        }
        // serde_json stops inside or just after the number: find its extent.
        let b = text.as_bytes();
        let num = |c: u8| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E');
        let line_start = b
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c == b'\n')
            .nth(e.line().saturating_sub(2))
            .map_or(0, |(i, _)| i + 1);
        let line_start = if e.line() <= 1 { 0 } else { line_start };
        let at = (line_start + e.column()).min(b.len());
        let mut start = at.min(b.len().saturating_sub(1));
        while start > 0 && !num(b[start]) {
            start -= 1;
        }
        while start > 0 && num(b[start - 1]) {
            start -= 1;
        }
        let mut end = start;
        while end < b.len() && num(b[end]) {
            end += 1;
        }
        // Only a whole number: serde_json stops at its first bad byte, and a token
        // such as `1e310e0` is out of range before it is no number at all.
        if !rfc_number(&text[start..end]) {
            return Err(e);
        }
        let mut fixed = text.as_bytes().to_vec();
        fixed[start] = b'0';
        fixed[start + 1..end].fill(b' ');
        text = String::from_utf8(fixed).unwrap();
    }
}

/// RFC 8259's number grammar, as a little state machine.
fn rfc_number(t: &str) -> bool {
    // States: 0 start, 1 after `-`, 2 after a leading 0, 3 in integer digits, 4 after
    // `.`, 5 in fraction digits, 6 after `e`, 7 after the exponent's sign, 8 in its
    // digits. Accepting: 2, 3, 5, 8.
    let mut st = 0;
    for c in t.bytes() {
        st = match (st, c) {
            (0, b'-') => 1,
            (0 | 1, b'0') => 2,
            (0 | 1, b'1'..=b'9') => 3,
            (3, b'0'..=b'9') => 3,
            (2 | 3, b'.') => 4,
            (4 | 5, b'0'..=b'9') => 5,
            (2 | 3 | 5, b'e' | b'E') => 6,
            (6, b'+' | b'-') => 7,
            (6..=8, b'0'..=b'9') => 8,
            _ => return false,
        };
    }
    matches!(st, 2 | 3 | 5 | 8)
}

/// An object's members, keys and values raw, duplicates kept.
struct Members<'a>(Vec<(&'a RawValue, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members<'a>, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<&RawValue>()? {
                    v.push((k, m.next_value::<&RawValue>()?));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// SPEC §3's `id`: 1..128 bytes, no whitespace (Unicode's) and no control characters,
/// and not of the form of generated ids (`evt_` and 16 hex digits).
fn id_ok(id: &str) -> bool {
    let generated = id
        .strip_prefix("evt_")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|c| c.is_ascii_hexdigit()));
    (1..=128).contains(&id.len())
        && !id.chars().any(|c| c.is_whitespace() || c.is_control())
        && !generated
}

/// The reference reading of one ingest line.
fn reference(line: &[u8]) -> Verdict {
    let refuse = |why: &str| Verdict::Refuse(why.to_string());
    if std::str::from_utf8(line).is_err() {
        return refuse("not UTF-8");
    }
    // The text `data` is taken from: lone surrogates replaced.
    let kept = String::from_utf8(lone_surrogates_replaced(line)).unwrap();
    let text = match json_with_huge_numbers_in_range(&kept) {
        Ok(t) => t,
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => return Verdict::Unknown,
        Err(e) => return Verdict::Refuse(format!("not JSON: {e}")),
    };
    let Ok(Members(members)) = serde_json::from_str::<Members>(&text) else {
        return refuse("not an object");
    };
    let mut fields: [Option<&RawValue>; 5] = [None; 5];
    let names = ["type", "id", "account", "time", "data"];
    let mut data_key_raw = "";
    for (k, v) in &members {
        let key: String = serde_json::from_str(k.get()).unwrap();
        if let Some(n) = names.iter().position(|&f| f == key) {
            if fields[n].replace(v).is_some() {
                return refuse("given twice");
            }
            if key == "data" {
                data_key_raw = k.get();
            }
        }
    }
    let value = |n: usize| fields[n].map(|v| serde_json::from_str::<Value>(v.get()).unwrap());
    // Whether field `n` had half a surrogate pair (the replaced text has the same offsets).
    let replaced = |n: usize| {
        fields[n].is_some_and(|v| {
            let at = v.get().as_ptr() as usize - text.as_ptr() as usize;
            line[at..at + v.get().len()] != kept.as_bytes()[at..at + v.get().len()]
        })
    };
    let etype = match value(0) {
        Some(Value::String(s)) if crate::config::valid_event_type(&s) => s,
        _ => return refuse("type"),
    };
    let ext_id = match value(1) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if id_ok(&s) && !replaced(1) => Some(s),
        _ => return refuse("id"),
    };
    let account = match value(2) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !replaced(2) => Some(s),
        _ => return refuse("account"),
    };
    let time_ms = match value(3) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            match time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => match u64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)) {
                    Ok(ms) => Some(ms),
                    Err(_) => return refuse("time before 1970"),
                },
                Err(_) => return refuse("time syntax"),
            }
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ms) if ms >= MIN_MS_TIME => Some(ms),
            _ => return refuse("time number"),
        },
        _ => return refuse("time type"),
    };
    if time_ms.is_some_and(|t| t > MAX_TIME_MS) {
        return refuse("time after 9999");
    }
    let Some(data) = fields[4] else {
        return refuse("no data");
    };
    if !data.get().starts_with('{') {
        return refuse("data not an object");
    }
    if data_key_raw != "\"data\"" {
        return refuse("data key escaped");
    }
    // Its bytes from the line as kept (the number-fixed text has the same offsets).
    let at = data.get().as_ptr() as usize - text.as_ptr() as usize;
    Verdict::Accept(Read {
        etype,
        ext_id,
        account,
        time_ms,
        data: kept.as_bytes()[at..at + data.get().len()].to_vec(),
    })
}

/// Parses `line` (after `before`, with the same parser: buffers are reused) and checks
/// it against the reference. Returns whether it was accepted.
fn check(before: &[u8], line: &[u8]) -> Result<bool, TestCaseError> {
    let mut parser = LineParser::default();
    let _ = parser.parse(before);
    let ours = parser.parse(line);
    let shown = String::from_utf8_lossy(line);
    match (reference(line), ours) {
        (Verdict::Unknown, _) => Ok(false),
        (Verdict::Accept(want), Ok(ev)) => {
            let got = Read {
                etype: ev.etype,
                ext_id: ev.ext_id,
                account: ev.account,
                time_ms: ev.time_ms,
                data: ev.data.to_vec(),
            };
            prop_assert_eq!(&got, &want, "{}", shown);
            // What ingest accepts, the template engine reads.
            let doc = Doc::parse(Bytes::from(got.data.clone()));
            prop_assert!(doc.is_ok(), "{}: data {:?}", shown, doc);
            Ok(true)
        }
        (Verdict::Refuse(_), Err(e)) => {
            prop_assert!(!e.0.is_empty());
            Ok(false)
        }
        (Verdict::Accept(want), Err(e)) => Err(TestCaseError::fail(format!(
            "{shown}: refused ({}), the reference read {want:?}",
            e.0
        ))),
        (Verdict::Refuse(why), Ok(ev)) => Err(TestCaseError::fail(format!(
            "{shown}: accepted as {ev:?}, the reference refused ({why})"
        ))),
    }
}

// ---------------------------------------------------------------- generators

/// JSON whitespace, mostly none.
fn ws() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(String::new()),
        2 => prop::sample::select(vec![" ", "\t", "\r", "  ", " \t\r "]).prop_map(String::from),
    ]
}

/// `c` as JSON's `\u` escapes: one, or a surrogate pair beyond the BMP; hex digits in
/// upper or lower case. Shared with the template engine's property tests.
pub(crate) fn u_escape(c: char, upper: bool) -> String {
    let mut buf = [0u16; 2];
    c.encode_utf16(&mut buf)
        .iter()
        .map(|u| {
            if upper {
                format!("\\u{u:04X}")
            } else {
                format!("\\u{u:04x}")
            }
        })
        .collect()
}

/// One character spelled inside a JSON string: as itself where allowed, or escaped.
fn spelled_char() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        4 => prop::char::range('a', 'z'),
        2 => prop::sample::select(vec![
            '"', '\\', '/', '\n', '\r', '\t', '\0', '\u{1}', '\u{1f}', '\u{7f}', '\u{85}',
            '\u{a0}', '\u{2028}', '\u{feff}', ' ', '{', '}', '[', ']', ':', ',', 'é', '€',
            '😀', '\u{10ffff}', '\u{fffd}',
        ]),
        1 => any::<char>(),
    ];
    (c, 0u8..8).prop_map(|(c, how)| {
        let esc = u_escape;
        match c {
            '"' if how < 4 => "\\\"".into(),
            '\\' if how < 4 => "\\\\".into(),
            '\n' if how < 4 => "\\n".into(),
            '\t' if how < 4 => "\\t".into(),
            '\r' if how < 4 => "\\r".into(),
            '/' if how == 1 => "\\/".into(),
            '"' | '\\' | '\0'..='\u{1f}' => esc(c, how % 2 == 0),
            _ if how == 7 => esc(c, how % 2 == 0),
            _ => c.to_string(),
        }
    })
}

/// The content of a JSON string as written between its quotes.
fn string_text() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        8 => spelled_char(),
        // Halves of surrogate pairs, alone or in the wrong order.
        1 => prop::sample::select(vec![
            "\\ud83d", "\\uDE00", "\\udbff", "\\udc00\\ud83d", "\\ud83d\\u0041",
            "\\ud83d\\ud83d\\ude00", "\\\\ud83d", "\\ud800\\udfff",
        ]).prop_map(String::from),
    ];
    prop::collection::vec(part, 0..8).prop_map(|v| v.concat())
}

/// A JSON number as text, in every form the grammar has: a sign or none, an integer
/// part of up to `int` digits, a fraction of up to `frac` digits or none, an exponent
/// of up to `exp` digits (either case, either sign) or none. Shared with the template
/// engine's property tests.
pub(crate) fn json_number(int: usize, frac: usize, exp: usize) -> impl Strategy<Value = String> {
    let re = |pattern: String| prop::string::string_regex(&pattern).expect("a valid regex");
    (
        any::<bool>(),
        prop_oneof![
            Just("0".to_string()),
            re(format!("[1-9][0-9]{{0,{}}}", int - 1))
        ],
        prop::option::of(re(format!("[0-9]{{1,{frac}}}"))),
        prop::option::of(("[eE]", "[+-]?", re(format!("[0-9]{{1,{exp}}}")))),
    )
        .prop_map(|(neg, int, frac, exp)| {
            let mut t = String::new();
            if neg {
                t.push('-');
            }
            t.push_str(&int);
            if let Some(f) = frac {
                t.push('.');
                t.push_str(&f);
            }
            if let Some((e, s, d)) = exp {
                t.push_str(&e);
                t.push_str(&s);
                t.push_str(&d);
            }
            t
        })
}

fn number_text() -> impl Strategy<Value = String> {
    let formed = json_number(26, 5, 3);
    prop_oneof![
        6 => formed,
        1 => prop::sample::select(vec![
            "-0", "0.0", "-0.0e-0", "1e309", "-1E+400", "1e-400", "1.8e308", "1.7976931348623157e308",
            "18446744073709551615", "18446744073709551616", "-9223372036854775808",
            "-9223372036854775809", "1700000000000", "1700000000000.0", "1.7e12",
            "253402300799999", "253402300800000", "99999999999", "100000000000",
        ]).prop_map(String::from),
        1 => (1usize..400).prop_map(|n| "9".repeat(n)),
        // Long digit runs on either side of the point and exponents far out, which
        // number parsers take different paths for.
        1 => (
            any::<bool>(),
            "[1-9][0-9]{0,3}",
            0usize..400,
            prop::option::of((0usize..400, "[0-9]{0,3}")),
            prop::option::of(-999i32..999),
        )
            .prop_map(|(neg, lead, zeros, frac, exp)| {
                let mut t = String::from(if neg { "-" } else { "" });
                t.push_str(&lead);
                t.push_str(&"0".repeat(zeros));
                if let Some((z, f)) = frac {
                    t.push('.');
                    t.push_str(&"0".repeat(z));
                    t.push_str(&f);
                    if z == 0 && f.is_empty() {
                        t.push('5');
                    }
                }
                if let Some(e) = exp {
                    t.push_str(&format!("e{e}"));
                }
                t
            }),
    ]
}

fn scalar_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => prop::sample::select(vec!["null", "true", "false"]).prop_map(String::from),
        3 => number_text(),
        4 => string_text().prop_map(|s| format!("\"{s}\"")),
    ]
}

/// A key: one of a few names (the envelope's among them, some spelled with escapes),
/// or any string.
fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "type", "id", "account", "time", "data", "d\\u0061ta", "\\u0074ype", "x", "k",
            "DATA", "data ", "",
        ]).prop_map(String::from),
        1 => string_text(),
    ]
}

/// Any JSON value's text, nested a few levels, whitespace and duplicates included.
fn value_text() -> impl Strategy<Value = String> {
    scalar_text().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            (
                prop::collection::vec((ws(), inner.clone(), ws()), 0..6),
                ws()
            )
                .prop_map(|(v, w)| {
                    let items: Vec<String> = v
                        .into_iter()
                        .map(|(a, x, b)| format!("{a}{x}{b}"))
                        .collect();
                    format!("[{w}{}]", items.join(","))
                }),
            object_of(inner),
        ]
    })
}

/// An object value (the `data` of most lines).
fn object_text() -> impl Strategy<Value = String> {
    object_of(value_text())
}

/// An object of up to five members whose values are `values`, whitespace around
/// every token.
fn object_of(values: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (
        prop::collection::vec((ws(), key_text(), ws(), values, ws()), 0..6),
        ws(),
    )
        .prop_map(|(v, w)| {
            let items: Vec<String> = v
                .into_iter()
                .map(|(a, k, b, x, c)| format!("{a}\"{k}\"{b}:{c}{x}{a}"))
                .collect();
            format!("{{{w}{}}}", items.join(","))
        })
}

fn type_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9_.-]{1,64}".prop_map(|s| format!("\"{s}\"")),
        1 => prop::sample::select(vec![
            "\"\"", "\"Bad\"", "\"a b\"", "\"\\u0061\"", "\"a\\/b\"", "5", "null", "[\"t\"]",
            "\"é\"",
        ]).prop_map(String::from),
        1 => "[a-z0-9_.-]{65}".prop_map(|s| format!("\"{s}\"")),
        1 => value_text(),
    ]
}

fn id_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[!-~&&[^\"\\\\]]{1,20}".prop_map(|s| format!("\"{s}\"")),
        2 => string_text().prop_map(|s| format!("\"{s}\"")),
        1 => prop::sample::select(vec![
            "null", "\"\"", "\"evt_00000000000000ab\"", "\"evt_00000000000000AB\"", "\"evt_0000000000000abc\"",
            "\"evt_+00000000000000a\"", "\"a\\u00a0b\"", "\"a\\u2028b\"", "\"a\\u0085b\"", "\"a\\ud83d\"", "7",
        ]).prop_map(String::from),
        1 => (120usize..136).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
        1 => (60usize..68).prop_map(|n| format!("\"{}\"", "é".repeat(n))),
    ]
}

fn time_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => number_text(),
        1 => (MIN_MS_TIME - 5..MAX_TIME_MS + 5).prop_map(|n| n.to_string()),
        2 => prop::sample::select(vec![
            "\"2026-04-08T10:05:00Z\"", "\"2026-04-08T10:05:00.123+02:00\"", "\"1970-01-01T00:00:00Z\"",
            "\"1969-12-31T23:59:59.999Z\"", "\"9999-12-31T23:59:59.999Z\"", "\"2026-02-30T00:00:00Z\"",
            "\"2026-04-08 10:05:00Z\"", "\"2026-04-08t10:05:00z\"", "\"yesterday\"", "null", "\"\"",
            "\"2026-04-08T10:05:60Z\"", "\"2026-04-08T10:05:00\\u005a\"",
        ]).prop_map(String::from),
    ]
}

fn data_value() -> impl Strategy<Value = String> {
    prop_oneof![8 => object_text(), 1 => value_text()]
}

/// An ingest line: the envelope's fields (some missing, some twice, keys sometimes
/// escaped) and others, in any order, with any whitespace.
fn line_text() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        1 => type_value().prop_map(|v| ("type".to_string(), v)),
        1 => data_value().prop_map(|v| ("data".to_string(), v)),
        3 => id_value().prop_map(|v| ("id".to_string(), v)),
        2 => prop_oneof![Just("null".to_string()), string_text().prop_map(|s| format!("\"{s}\"")), scalar_text()]
            .prop_map(|v| ("account".to_string(), v)),
        3 => time_value().prop_map(|v| ("time".to_string(), v)),
        3 => (key_text(), value_text()),
    ];
    (
        any::<bool>(),
        any::<bool>(),
        type_value(),
        data_value(),
        prop::collection::vec((field, ws(), ws(), 0u8..20), 0..5),
        any::<prop::sample::Index>(),
        ws(),
        ws(),
    )
        .prop_map(|(has_type, has_data, t, d, extra, at, w0, w1)| {
            let mut members: Vec<String> = Vec::new();
            if has_type || extra.is_empty() {
                members.push(format!("\"type\":{t}"));
            }
            for ((k, v), a, b, spell) in extra {
                // Now and then the key spelled with an escape.
                let k = match (spell, k.as_str()) {
                    (0, "type") => "\\u0074ype".to_string(),
                    (0, "data") => "d\\u0061ta".to_string(),
                    (1, "id") => "i\\u0064".to_string(),
                    _ => k,
                };
                members.push(format!("{a}\"{k}\"{b}:{a}{v}{b}"));
            }
            if has_data || members.len() < 2 {
                let i = at.index(members.len() + 1);
                members.insert(i, format!("\"data\":{d}"));
            }
            format!("{w0}{{{}}}{w1}", members.join(","))
        })
}

/// A corrupted copy of `line`: bytes flipped, inserted, removed, or the line cut.
fn corrupted() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        0u8..6,
        prop_oneof![
            7 => prop::sample::select(b"{}[]\":,\\ \t\r0123456789-+.eEtrufalsn/u\x00\x01\x7f".to_vec()),
            1 => any::<u8>(),
        ],
    );
    (line_text(), prop::collection::vec(edit, 1..4)).prop_map(|(line, edits)| {
        let mut b = line.into_bytes();
        for (at, op, byte) in edits {
            if b.is_empty() {
                break;
            }
            let i = at.index(b.len());
            match op {
                0 => {
                    b.remove(i);
                }
                1 => b.insert(i, byte),
                2 => b[i] = byte,
                3 => b.truncate(i),
                // A multi-byte character inserted, or part of one.
                _ => {
                    let s = ["é", "€", "😀", "\u{a0}", "\u{feff}"][i % 5].as_bytes();
                    let n = if op == 4 { s.len() } else { 1 + i % s.len() };
                    b.splice(i..i, s[..n].iter().copied());
                }
            }
        }
        b
    })
}

/// Bytes that are not UTF-8 (overlong forms, surrogates, past U+10FFFF, stray or
/// missing continuation bytes), and characters near the edges.
const ODD_BYTES: [&[u8]; 16] = [
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x80\x80",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\xbf",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xff",
    "\u{10ffff}".as_bytes(),
    "\u{d7ff}".as_bytes(),
    "\u{e000}".as_bytes(),
];

/// What may stand before or after a line's object: whitespace of JSON and of others,
/// controls, a byte order mark, another value.
const AROUND: [&[u8]; 14] = [
    b" ",
    b"\t",
    b"\r",
    b"\r\r",
    b"\x00",
    b"\x0b",
    b"\x0c",
    b"\xef\xbb\xbf",
    b"\xc2\xa0",
    b"\xe2\x80\xa8",
    b"0",
    b"{}",
    b"\"",
    b",",
];

// ---------------------------------------------------------------- properties

proptest! {
    // No regression files: they would land outside this module's directory.
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_lines_read_as_the_reference_reads_them(line in line_text(), before in line_text()) {
        check(before.as_bytes(), line.as_bytes())?;
    }

    #[test]
    fn corrupted_lines_read_as_the_reference_reads_them(line in corrupted(), before in corrupted()) {
        check(&before, &line)?;
    }

    #[test]
    fn any_value_as_data_reads_as_the_reference_reads_it(data in value_text(), t in type_value()) {
        let line = format!(r#"{{"type":{t},"data":{data}}}"#);
        check(b"", line.as_bytes())?;
        let line = format!(r#"{{"data" : {data} ,"type":{t}}}"#);
        check(b"", line.as_bytes())?;
    }

    #[test]
    fn odd_bytes_anywhere_read_as_the_reference_reads_them(
        line in line_text(),
        at in any::<prop::sample::Index>(),
        odd in prop::sample::select(ODD_BYTES.to_vec()),
    ) {
        let mut b = line.into_bytes();
        let i = at.index(b.len() + 1);
        b.splice(i..i, odd.iter().copied());
        check(b"", &b)?;
    }

    #[test]
    fn bytes_around_the_object_read_as_the_reference_reads_them(
        line in line_text(),
        before in prop::collection::vec(prop::sample::select(AROUND.to_vec()), 0..3),
        after in prop::collection::vec(prop::sample::select(AROUND.to_vec()), 0..3),
    ) {
        let b = [before.concat(), line.into_bytes(), after.concat()].concat();
        check(b"", &b)?;
    }

    /// Runs of escapes (backslashes, quotes, surrogate pairs) placed across the 64-byte
    /// blocks simd-json scans in, where an escape's state carries from one to the next.
    #[test]
    fn escapes_across_block_edges_read_as_the_reference_reads_them(
        pad in 0usize..140,
        run in prop::collection::vec(prop::sample::select(vec![
            "\\\\", "\\\"", "\\ud83d\\ude00", "\\ud83d", "\\u0022", "\\/", "\\n", "x",
        ]), 0..40),
        // Now and then a quote or backslash alone, which ends the string or escapes
        // what follows.
        odd in prop::option::of((any::<prop::sample::Index>(), prop::sample::select(vec!["\"", "\\"]))),
        tail in prop::sample::select(vec!["\"}", "\",\"q\":\"\\\\\"}", "\"}}", "\\\"}", "}"]),
        data_first in any::<bool>(),
    ) {
        let mut run = run;
        if let Some((at, b)) = odd {
            run.insert(at.index(run.len() + 1), b);
        }
        let data = format!("{{\"p\":\"{}{}{tail}", "x".repeat(pad), run.concat());
        let line = if data_first {
            format!("{{\"data\":{data},\"type\":\"t\"}}")
        } else {
            format!("{{\"type\":\"t\",\"data\":{data}}}")
        };
        check(b"", line.as_bytes())?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(line in prop::collection::vec(any::<u8>(), 0..48)) {
        check(b"", &line)?;
    }
}

// ---------------------------------------------------------------- framing

/// A connection's bytes, handed out in reads of the given sizes (then the rest).
struct Reads {
    data: Vec<u8>,
    sizes: std::collections::VecDeque<usize>,
}

impl monoio::io::AsyncReadRent for Reads {
    async fn read<T: monoio::buf::IoBufMut>(&mut self, mut buf: T) -> monoio::BufResult<usize, T> {
        let want = self.sizes.pop_front().unwrap_or(usize::MAX).max(1);
        let n = want.min(buf.bytes_total()).min(self.data.len());
        // SAFETY: `n` is at most the buffer's room and the bytes left.
        unsafe {
            buf.write_ptr()
                .copy_from_nonoverlapping(self.data.as_ptr(), n);
            buf.set_init(n);
        }
        self.data.drain(..n);
        (Ok(n), buf)
    }

    async fn readv<T: monoio::buf::IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Ok(0), buf)
    }
}

/// One answer, as the writer would make it from what the reader framed: an `err` line,
/// or the event handed to the committer.
fn answer_of(r: Result<crate::commit::NewEvent, String>) -> String {
    match r {
        Ok(e) => format!(
            "event {} {:?} {:?} {:?} {:?}",
            e.etype,
            e.ext_id,
            e.account,
            e.time_ms,
            String::from_utf8_lossy(&e.data)
        ),
        Err(msg) => msg,
    }
}

const RETENTION: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The answers a connection's reader gives `stream` read in reads of `sizes`.
fn framed(stream: &[u8], sizes: &[usize], max_line_bytes: usize) -> Vec<String> {
    framed_in(stream, sizes, max_line_bytes, Default::default())
}

/// [`framed`], the connection drawing on `budget` (shared with others).
pub(crate) fn framed_in(
    stream: &[u8],
    sizes: &[usize],
    max_line_bytes: usize,
    budget: std::sync::Arc<super::LineBudget>,
) -> Vec<String> {
    use super::{read_lines, ConnCtx, ConnShared, Slot};
    use crate::commit::{AckTo, CommitMsg};
    let (commit, mailbox) = crate::shard::mailbox::<CommitMsg>();
    let ctx = ConnCtx {
        worker: 0,
        conn: 1,
        max_line_bytes,
        retention: RETENTION,
        commit,
        counters: Default::default(),
        tcp_fd: None,
    };
    let shared = ConnShared::new(budget);
    let mut rd = Reads {
        data: stream.to_vec(),
        sizes: sizes.iter().copied().collect(),
    };
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .unwrap();
    rt.block_on(read_lines(&mut rd, &ctx, &shared));
    let mut events = std::collections::HashMap::new();
    while let Some(msg) = mailbox.try_recv() {
        let CommitMsg::Ingest(b) = msg else {
            panic!("not a batch")
        };
        let AckTo::Conn { ticket, .. } = b.to else {
            panic!("not a connection's")
        };
        events.insert(ticket, b.events);
    }
    let mut out = Vec::new();
    for batch in shared.pending.borrow_mut().drain(..) {
        for slot in batch.slots {
            out.push(match slot {
                Slot::Ready(msg) => String::from_utf8(msg).unwrap(),
                Slot::Event(i) => answer_of(Ok(events[&batch.ticket][i].clone())),
            });
        }
    }
    out
}

/// The reference framing: the whole stream split at `\n`, each line's `\r` before it
/// dropped, a byte order mark before the first line dropped, blank lines skipped,
/// lines longer than `max_line_bytes` refused.
fn reference_framing(stream: &[u8], max_line_bytes: usize) -> Vec<String> {
    let mut lines: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut parser = LineParser::for_ingest(RETENTION);
    let mut out = Vec::new();
    for (n, mut line) in lines.into_iter().enumerate() {
        if n == 0 {
            line = line.strip_prefix(super::BOM).unwrap_or(line);
        }
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            continue;
        }
        if line.len() > max_line_bytes {
            out.push(format!(
                "err too_large line exceeds max_line_bytes ({max_line_bytes})\n"
            ));
            continue;
        }
        out.push(answer_of(parser.parse(line).map_err(|e| {
            let mut msg = String::from("err invalid ");
            super::push_printable(&mut msg, &e.0);
            msg + "\n"
        })));
    }
    out
}

/// A stream's line: an ingest line, blank, long, or with odd bytes.
fn stream_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => line_text().prop_map(String::into_bytes),
        2 => prop::sample::select(vec!["", " ", "\t \r", "\r", " \r\r", "\x0c", "x"])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => (0usize..300, prop::sample::select(vec![" ", "\t", "\r", "x"]))
            .prop_map(|(n, c)| c.repeat(n).into_bytes()),
        1 => (0usize..300, line_text()).prop_map(|(n, l)| [" ".repeat(n), l].concat().into_bytes()),
        1 => corrupted(),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec((stream_line(), any::<bool>()), 0..10),
        any::<bool>(),
    )
        .prop_map(|(bom, lines, last_nl)| {
            let mut s = if bom { super::BOM.to_vec() } else { Vec::new() };
            let n = lines.len();
            for (i, (line, crlf)) in lines.into_iter().enumerate() {
                s.extend_from_slice(&line);
                if i + 1 < n || last_nl {
                    s.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                }
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_split_into_reads_frames_as_the_whole_stream(
        stream in stream(),
        sizes in prop_oneof![
            Just(vec![1usize; 4096]),
            prop::collection::vec(1usize..80, 0..64),
            prop::collection::vec(1usize..5000, 0..4),
        ],
        max_line_bytes in prop_oneof![16usize..64, 64usize..400, Just(1 << 20)],
    ) {
        let want = reference_framing(&stream, max_line_bytes);
        let got = framed(&stream, &sizes, max_line_bytes);
        prop_assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&stream));
    }
}

/// Beyond the reference's depth (serde_json stops at 128): as deep as simd-json goes
/// (1,024 levels, the line's object one of them) `data` is taken as it came, deeper is
/// refused, and neither the parser nor `Doc` recurses (100,000 levels open).
#[test]
fn deep_nesting_is_taken_to_simd_json_s_limit_and_refused_past_it() {
    for (o, c) in [("[", "]"), ("{\"a\":", "}")] {
        let nested = |d: usize| format!("{{\"x\":{}1{}}}", o.repeat(d), c.repeat(d));
        let line = |data: &str| format!("{{\"type\":\"t\",\"data\":{data}}}");
        let data = nested(1022);
        let ev = LineParser::default().parse(line(&data).as_bytes()).unwrap();
        assert_eq!(&ev.data[..], data.as_bytes());
        assert!(Doc::parse(ev.data).is_ok());
        for data in [nested(1023), nested(100_000), o.repeat(100_000)] {
            let err = LineParser::default()
                .parse(line(&data).as_bytes())
                .unwrap_err()
                .0;
            assert!(err.starts_with("not JSON: "), "{err}");
        }
    }
}
