//! The grammars of what an answer means and what follows a failure: a `success` or
//! `error` [`ResponseRule`] and its [`Matcher`]s (and the typos of a status rule written
//! as body text, which `endpoint` reports), the [`RetryPolicy`] schedule, and the
//! [`DisableAfter`] thresholds: how each is read, written back and applied to a value.
//!
//! Values only: it must not deliver, schedule or count anything (the workers and the
//! scheduler apply these), nor check a whole endpoint (`endpoint` does).

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::duration::{duration_str, format_duration, parse_duration};

/// Consecutive-failure thresholds per status class (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a table of consecutive failures per class, such as { 4xx = 20, 5xx = 50 }"
)]
pub struct DisableAfter {
    #[serde(rename = "3xx", deserialize_with = "failures")]
    pub c3xx: u32,
    #[serde(rename = "4xx", deserialize_with = "failures")]
    pub c4xx: u32,
    #[serde(rename = "5xx", deserialize_with = "failures")]
    pub c5xx: u32,
}

fn failures<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    super::value::whole(d, "a whole number of consecutive failures, 1 to 4294967295")
}

impl Default for DisableAfter {
    fn default() -> Self {
        DisableAfter {
            c3xx: 2000,
            c4xx: 1000,
            c5xx: 2000,
        }
    }
}

/// One clause of a `success` / `error` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// An exact status code, `"200"`.
    Status(u16),
    /// A status class, `"2xx"` → 2.
    Class(u8),
    /// A case-sensitive substring of the first 64 KiB of the body, `"OK"`.
    Body(String),
}

impl Matcher {
    fn parse(s: &str) -> Result<Matcher, String> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_digit) {
            let code: u16 = s.parse().map_err(|_| format!("bad status {s:?}"))?;
            if !(100..=599).contains(&code) {
                return Err(format!("status {code} is not an HTTP status"));
            }
            return Ok(Matcher::Status(code));
        }
        if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && b[1..].eq_ignore_ascii_case(b"xx") {
            return Ok(Matcher::Class(b[0] - b'0'));
        }
        if s.is_empty() {
            return Err("empty response rule".into());
        }
        Ok(Matcher::Body(s.to_string()))
    }

    /// A body text that reads as a typo for a status class (`6xx`, `0xx`) or for a list
    /// of statuses (`"2xx,3xx"`): refused as a problem of the definition, not when it is
    /// read, so a definition stored before this check still loads (and is disabled as
    /// not compiling).
    pub(super) fn typo(&self) -> Option<String> {
        match self {
            Matcher::Body(s)
                if s.len() == 3
                    && s.as_bytes()[0].is_ascii_digit()
                    && s.as_bytes()[1..].eq_ignore_ascii_case(b"xx") =>
            {
                Some(format!("{s:?} is not an HTTP status class (1xx to 5xx)"))
            }
            // `"2xx,3xx"` or `"200 201"`: a list written as one string would be a body
            // text no receiver sends; the user meant a TOML/JSON list.
            Matcher::Body(s) if Self::reads_as_list(s) => {
                let items: Vec<String> = s
                    .split(Self::list_separator)
                    .filter(|t| !t.is_empty())
                    .map(|t| format!("{t:?}"))
                    .collect();
                Some(format!(
                    "{s:?} reads as a list of statuses written as one body text: write [{}]",
                    items.join(", ")
                ))
            }
            // `"200 "`, `"20x"`, `"200-299"`, `">=200"`, `"2xx or 3xx"`: a status rule
            // mistyped, which as body text no receiver's body holds, so that every
            // answer (the 200s too) would fail and count toward `disable_after`.
            Matcher::Body(s) if Self::reads_as_status(s) => {
                let t = s.trim();
                Some(match Matcher::parse(t) {
                    Ok(m @ (Matcher::Status(_) | Matcher::Class(_))) => format!(
                        "{s:?} has spaces around a status rule: write {:?} (as it is, it would \
                         be a body text)",
                        m.as_string()
                    ),
                    _ => format!(
                        "{s:?} reads as a status rule but is none: a status is three digits \
                         (\"200\"), a class a digit and xx (\"2xx\"), several a list \
                         ([\"200\", \"204\"]); as it is, it would be a body text"
                    ),
                })
            }
            _ => None,
        }
    }

    /// Made of status-like words only (three characters, the first a digit, the others
    /// digits, `x` or `*`), with separators (spaces, `,;|-/<>=+~.`, brackets and quotes)
    /// or `or`, `and`, `to` between them: no body text a receiver sends, a status rule
    /// mistyped (`"200..299"`, `"[200]"`, a list quoted whole). Body texts with any other
    /// word (`"OK 200"`) or number (`"1"`, `"-1"`, `"1.0"`) stay body texts.
    fn reads_as_status(s: &str) -> bool {
        let separator = |c: char| Self::list_separator(c) || "-/<>=+~.[]\"'".contains(c);
        let mut statuses = 0;
        let only = s.split(separator).filter(|w| !w.is_empty()).all(|w| {
            let b = w.as_bytes();
            let status_like = b.len() == 3
                && b[0].is_ascii_digit()
                && b[1..]
                    .iter()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'x' | b'X' | b'*'));
            statuses += usize::from(status_like);
            status_like
                || ["or", "and", "to"]
                    .iter()
                    .any(|x| w.eq_ignore_ascii_case(x))
        });
        only && statuses > 0
    }

    /// What separates the items of a list written as one text: `,` `;` `|` or spaces.
    fn list_separator(c: char) -> bool {
        matches!(c, ',' | ';' | '|') || c.is_ascii_whitespace()
    }

    /// Two or more separated items, each a status or a status class.
    fn reads_as_list(s: &str) -> bool {
        let mut n = 0;
        for t in s.split(Self::list_separator) {
            if t.is_empty() {
                continue;
            }
            let b = t.as_bytes();
            let status_like = b.len() == 3
                && b[0].is_ascii_digit()
                && (b[1..].iter().all(u8::is_ascii_digit) || b[1..].eq_ignore_ascii_case(b"xx"));
            if !status_like {
                return false;
            }
            n += 1;
        }
        n >= 2
    }

    fn as_string(&self) -> String {
        match self {
            Matcher::Status(c) => c.to_string(),
            Matcher::Class(c) => format!("{c}xx"),
            Matcher::Body(s) => s.clone(),
        }
    }
}

/// A `success` or `error` rule: matches when any clause matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRule(pub Vec<Matcher>);

impl ResponseRule {
    /// Whether a response with this status and body excerpt matches.
    pub fn matches(&self, status: u16, body: &[u8]) -> bool {
        self.0.iter().any(|m| match m {
            Matcher::Status(c) => *c == status,
            Matcher::Class(c) => status / 100 == *c as u16,
            Matcher::Body(text) => contains(body, text.as_bytes()),
        })
    }

    /// The rule as written in a definition (`"2xx"`, `["200","OK"]`), for messages.
    pub fn describe(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A substring search in time linear in the body, whatever the rule's length (a
/// window compared at every offset costs the rule's length at each: `cargo bench
/// --bench hot_path -- rules/`).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

impl<'de> Deserialize<'de> for ResponseRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "expected a status (\"200\" or 200), a class (\"2xx\"), body text, or a list of them"
        )]
        enum Raw {
            One(String),
            Num(u16),
            Many(Vec<StrOrNum>),
        }
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "expected a status, a class or body text")]
        enum StrOrNum {
            S(String),
            N(u16),
        }
        let parse = |s: String| Matcher::parse(&s).map_err(de::Error::custom);
        // A number is a status, never body text (`99` would match no answer).
        let status = |n: u16| match n {
            100..=599 => Ok(Matcher::Status(n)),
            _ => Err(de::Error::custom(format!(
                "status {n} is not an HTTP status"
            ))),
        };
        let raw = Raw::deserialize(d)?;
        let v = match raw {
            Raw::One(s) => vec![parse(s)?],
            Raw::Num(n) => vec![status(n)?],
            Raw::Many(list) => {
                if list.is_empty() {
                    return Err(de::Error::custom("empty response rule list"));
                }
                list.into_iter()
                    .map(|x| match x {
                        StrOrNum::S(s) => parse(s),
                        StrOrNum::N(n) => status(n),
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(ResponseRule(v))
    }
}

impl Serialize for ResponseRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.len() == 1 {
            s.serialize_str(&self.0[0].as_string())
        } else {
            let v: Vec<String> = self.0.iter().map(Matcher::as_string).collect();
            v.serialize(s)
        }
    }
}

/// The retry schedule (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RetryPolicy {
    /// impact.com: 15 retries at 15s, 15s, 15s, 3m, 3m, 15m, 15m, 15m, 2h, 2h, 2h, 6h ×4.
    #[default]
    Standard,
    /// Advocate: a retry every hour until 72 attempts in all.
    Hourly,
    /// One attempt.
    None,
    /// The waits before retry 1, 2, ...
    List(Vec<Duration>),
}

const STANDARD_WAITS_S: [u64; 15] = [
    15, 15, 15, 180, 180, 900, 900, 900, 7200, 7200, 7200, 21600, 21600, 21600, 21600,
];

/// The longest explicit retry list: with the first attempt, one attempt per number a
/// delivery's attempt counter (`u16`) holds; a longer list would write its last
/// attempts over the last number.
const MAX_LISTED_RETRIES: usize = u16::MAX as usize - 1;

impl RetryPolicy {
    /// The wait before the next attempt after `attempts_made` attempts (≥ 1) have failed,
    /// or `None` when every retry is spent.
    pub fn wait_after(&self, attempts_made: u32) -> Option<Duration> {
        let idx = attempts_made.checked_sub(1)? as usize;
        match self {
            RetryPolicy::Standard => STANDARD_WAITS_S.get(idx).map(|s| Duration::from_secs(*s)),
            RetryPolicy::Hourly => (attempts_made < 72).then(|| Duration::from_secs(3600)),
            RetryPolicy::None => None,
            RetryPolicy::List(waits) => waits.get(idx).copied(),
        }
    }

    /// How long after the first attempt the last retry falls due: the waits added up.
    pub fn span(&self) -> Duration {
        (1..).map_while(|n| self.wait_after(n)).sum()
    }
}

/// The message for a `retry` string that names no schedule, with what to write where
/// it reads as one written wrongly: a wait or waits written as one string (`"1s"`,
/// `"1s, 5s, 30s"`, which a user may take for a schedule) are a list, a name in
/// capitals (`"None"`) is the name.
fn unknown_schedule(s: &str) -> String {
    let expected = "expected standard, hourly, none or a list of durations";
    let waits: Vec<&str> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    let hint = if !waits.is_empty() && waits.iter().all(|w| parse_duration(w).is_ok()) {
        let list: Vec<String> = waits.iter().map(|w| format!("{w:?}")).collect();
        format!(": waits are a list, write [{}]", list.join(", "))
    } else if let Some(name) = ["standard", "hourly", "none"]
        .into_iter()
        .find(|n| s.trim().eq_ignore_ascii_case(n))
    {
        format!(": write {name:?}")
    } else {
        String::new()
    };
    format!("unknown retry schedule {s:?} ({expected}){hint}")
}

impl<'de> Deserialize<'de> for RetryPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RetryPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("standard, hourly, none or a list of durations ([\"1s\", \"5m\"])")
            }
            fn visit_str<E: de::Error>(self, n: &str) -> Result<RetryPolicy, E> {
                match n {
                    "standard" => Ok(RetryPolicy::Standard),
                    "hourly" => Ok(RetryPolicy::Hourly),
                    "none" => Ok(RetryPolicy::None),
                    other => Err(E::custom(unknown_schedule(other))),
                }
            }
            // Each wait read as any duration field is, so `retry = [30, 60]` gets the
            // same hint as `timeout = 30`, at the item (`retry[0]`).
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RetryPolicy, A::Error> {
                struct Wait(Duration);
                impl<'de> Deserialize<'de> for Wait {
                    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Wait, D::Error> {
                        duration_str::deserialize(d).map(Wait)
                    }
                }
                let mut waits = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(Wait(w)) = seq.next_element()? {
                    if waits.len() == MAX_LISTED_RETRIES {
                        return Err(de::Error::custom(format!(
                            "a retry list holds at most {MAX_LISTED_RETRIES} waits (a delivery's \
                             attempts are numbered up to {})",
                            u16::MAX
                        )));
                    }
                    waits.push(w);
                }
                Ok(RetryPolicy::List(waits))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for RetryPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryPolicy::Standard => s.serialize_str("standard"),
            RetryPolicy::Hourly => s.serialize_str("hourly"),
            RetryPolicy::None => s.serialize_str("none"),
            RetryPolicy::List(l) => l
                .iter()
                .map(|d| format_duration(*d))
                .collect::<Vec<_>>()
                .serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EndpointConfig};

    #[test]
    fn untagged_values_are_explained_when_they_fit_no_form() {
        let err = |field: &str| {
            let text = format!(
                "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\n{field}\n"
            );
            Config::parse(&text, "t")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let retry = err("retry = 5");
        assert!(
            retry.contains("expected standard, hourly, none or a list of durations"),
            "{retry}"
        );
        let success = err("success = true");
        assert!(success.contains("expected a status"), "{success}");
        // As many waits as a delivery's attempts can count, and not one more.
        let list = |n: usize| format!("retry = [{}]", vec!["\"1s\""; n].join(","));
        assert_eq!(err(&list(MAX_LISTED_RETRIES)), "");
        let long = err(&list(MAX_LISTED_RETRIES + 1));
        assert!(
            long.contains("a retry list holds at most 65534 waits"),
            "{long}"
        );
        for e in [retry, success] {
            assert!(!e.contains("untagged"), "{e}");
        }
    }

    #[test]
    fn response_rules() {
        let r = ResponseRule(vec![Matcher::parse("2xx").unwrap()]);
        assert!(r.matches(204, b""));
        assert!(!r.matches(301, b""));
        let r = ResponseRule(vec![Matcher::parse("OK").unwrap()]);
        assert!(r.matches(500, b"status: OK"));
        assert!(!r.matches(200, b"ok"));
        assert_eq!(Matcher::parse("200").unwrap(), Matcher::Status(200));
        assert_eq!(Matcher::parse("4XX").unwrap(), Matcher::Class(4));
        for typo in ["6xx", "0xx", "9XX"] {
            let e = Matcher::parse(typo).unwrap().typo().unwrap();
            assert!(e.contains("not an HTTP status class"), "{typo}: {e}");
        }
        assert_eq!(Matcher::parse("4xx").unwrap().typo(), None);
        for list in ["2xx,3xx", "200, 201", "2xx 304", "2xx;3xx", "200|204"] {
            let e = Matcher::parse(list).unwrap().typo().unwrap();
            assert!(e.contains("reads as a list"), "{list}: {e}");
        }
        assert_eq!(
            Matcher::parse("2xx,3xx").unwrap().typo().unwrap(),
            "\"2xx,3xx\" reads as a list of statuses written as one body text: write [\"2xx\", \"3xx\"]"
        );
        for text in [
            "OK 200",
            "200",
            "status 200, 201",
            "1",
            "-1",
            "0",
            "OK",
            "2000",
            "or",
            "1.0",
            r#"{"ok":true}"#,
            "1|OK",
        ] {
            assert_eq!(Matcher::parse(text).unwrap().typo(), None, "{text}");
        }
        // A status rule mistyped: as body text, every answer would fail.
        for typo in [
            "20x",
            "200-299",
            "2xx/3xx",
            "2xx or 3xx",
            ">=200",
            "2**",
            "2xx,",
            "200 to 299",
            "200..299",
            "[200]",
            r#"["200"]"#,
            "2xx.",
        ] {
            let e = Matcher::parse(typo).unwrap().typo().unwrap();
            assert!(
                e.contains("reads as a status rule but is none"),
                "{typo}: {e}"
            );
        }
        for (padded, write) in [("200 ", "200"), (" 2xx", "2xx"), ("\t204", "204")] {
            let e = Matcher::parse(padded).unwrap().typo().unwrap();
            assert!(
                e.contains(&format!("spaces around a status rule: write {write:?}")),
                "{padded:?}: {e}"
            );
        }
        // A stored definition with one still reads (it was a body text before); it is a
        // problem of the definition, so it does not compile.
        let cfg: EndpointConfig = serde_json::from_str(
            r#"{"name":"a","events":["t"],"url":"http://h/","success":"6xx","error":["0xx"]}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.problems(),
            [
                "endpoint a: field `success`: \"6xx\" is not an HTTP status class (1xx to 5xx)",
                "endpoint a: field `error`: \"0xx\" is not an HTTP status class (1xx to 5xx)"
            ]
        );
        // Body texts that only look like numbers stay body texts.
        assert_eq!(Matcher::parse("1").unwrap(), Matcher::Body("1".into()));
        // A number is a status: one that is none is refused, not read as body text.
        let rule = |v: &str| serde_json::from_str::<ResponseRule>(v).map_err(|e| e.to_string());
        assert_eq!(
            rule("204").unwrap(),
            ResponseRule(vec![Matcher::Status(204)])
        );
        for (v, bad) in [("99", 99), ("0", 0), ("1000", 1000), ("[200, 99]", 99)] {
            let e = rule(v).unwrap_err();
            assert!(
                e.starts_with(&format!("status {bad} is not an HTTP status")),
                "{v}: {e}"
            );
        }
    }

    #[test]
    fn a_schedule_written_wrongly_says_what_to_write() {
        let err = |v: &str| {
            serde_json::from_value::<RetryPolicy>(serde_json::json!(v))
                .unwrap_err()
                .to_string()
        };
        let unknown = |v: &str, hint: &str| {
            format!(
                "unknown retry schedule {v:?} (expected standard, hourly, none or a list of \
                 durations){hint}"
            )
        };
        // A wait written alone was taken for no schedule at all.
        assert_eq!(
            err("1s"),
            unknown("1s", r#": waits are a list, write ["1s"]"#)
        );
        assert_eq!(
            err("1s, 5m 30m"),
            unknown(
                "1s, 5m 30m",
                r#": waits are a list, write ["1s", "5m", "30m"]"#
            )
        );
        assert_eq!(err("None"), unknown("None", r#": write "none""#));
        assert_eq!(err(" Hourly "), unknown(" Hourly ", r#": write "hourly""#));
        assert_eq!(err("daily"), unknown("daily", ""));
        assert_eq!(err("1s, soon"), unknown("1s, soon", ""));
    }

    #[test]
    fn schedules() {
        assert_eq!(RetryPolicy::Standard.span(), Duration::from_secs(111_105));
        assert_eq!(RetryPolicy::Hourly.span(), Duration::from_secs(71 * 3600));
        assert_eq!(RetryPolicy::None.span(), Duration::ZERO);
        let s = RetryPolicy::Standard;
        assert_eq!(s.wait_after(1), Some(Duration::from_secs(15)));
        assert_eq!(s.wait_after(4), Some(Duration::from_secs(180)));
        assert_eq!(s.wait_after(15), Some(Duration::from_secs(21600)));
        assert_eq!(s.wait_after(16), None);
        assert_eq!(
            RetryPolicy::Hourly.wait_after(71),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(RetryPolicy::Hourly.wait_after(72), None);
        assert_eq!(RetryPolicy::None.wait_after(1), None);
    }
}
