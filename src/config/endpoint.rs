//! One `[[endpoint]]`: [`EndpointConfig`] and its defaults, its [`Method`] and body
//! [`Format`], its headers (kept in file order), endpoint names ([`ShownName`] as
//! messages show them) and event types, which events it routes, and
//! [`EndpointConfig::problems`]: every check of its fields that needs no template
//! compilation.
//!
//! It must not compile templates (the `crate::endpoint` module does, and calls
//! `problems` itself, so the checks run once), nor know where in a file a key stands:
//! its messages name the endpoint and the field, and `file` locates them.

use std::fmt;
use std::time::Duration;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use super::debug_as_json;
use super::duration::{duration_str, format_duration};
use super::rules::{DisableAfter, Matcher, ResponseRule, RetryPolicy};
use super::value;
use crate::deliver::request::{is_secret_header, REDACTED};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use Method::*;
        value::word(
            d,
            &["GET", "POST", "PUT", "PATCH"],
            &[Get, Post, Put, Patch],
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Xml,
    Form,
    Text,
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use Format::*;
        value::word(
            d,
            &["json", "xml", "form", "text"],
            &[Json, Xml, Form, Text],
        )
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml",
            Format::Form => "application/x-www-form-urlencoded",
            Format::Text => "text/plain; charset=utf-8",
        }
    }
}

/// One `[[endpoint]]`. Its `Debug` shows the secrets as [`redacted`](Self::redacted) does.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    #[serde(deserialize_with = "events")]
    pub events: Vec<String>,
    #[serde(default)]
    pub account: Option<String>,
    pub url: String,
    #[serde(default = "default_method")]
    pub method: Method,
    #[serde(default = "default_format")]
    pub format: Format,
    #[serde(default)]
    pub body: Option<String>,
    /// Kept in file order: header order is part of the request a receiver sees.
    #[serde(default, with = "ordered_headers")]
    pub headers: Vec<(String, String)>,
    #[serde(default, with = "duration_str")]
    pub min_delay: Duration,
    #[serde(default, deserialize_with = "max_rps")]
    pub max_rps: u32,
    #[serde(default = "default_max_in_flight", deserialize_with = "max_in_flight")]
    pub max_in_flight: u32,
    #[serde(default = "default_timeout", with = "duration_str")]
    pub timeout: Duration,
    #[serde(default = "default_success")]
    pub success: ResponseRule,
    #[serde(default)]
    pub error: Option<ResponseRule>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub disable_after: DisableAfter,
    #[serde(default)]
    pub signing_secret: Option<String>,
    #[serde(default)]
    pub ordered: bool,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl EndpointConfig {
    /// A copy with the secrets replaced by [`REDACTED`]: `signing_secret` and the values
    /// of secret headers (`Authorization`, `X-Api-Key` …: [`is_secret_header`]).
    pub fn redacted(&self) -> EndpointConfig {
        let mut cfg = self.clone();
        if cfg.signing_secret.is_some() {
            cfg.signing_secret = Some(REDACTED.to_string());
        }
        for (k, v) in cfg.headers.iter_mut() {
            if is_secret_header(k) {
                *v = REDACTED.to_string();
            }
        }
        cfg
    }
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_as_json(f, "EndpointConfig", &self.redacted())
    }
}

fn events<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(r#"a list of event types, such as ["sale"] or ["*"]"#)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(t) = seq.next_element::<String>()? {
                out.push(t);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V)
}

fn max_rps<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    value::whole(
        d,
        "a whole number of requests per second, 0 (unlimited) to 4294967295",
    )
}

fn max_in_flight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    value::whole(d, "a whole number of concurrent requests, 1 to 4294967295")
}

fn default_method() -> Method {
    Method::Post
}
fn default_format() -> Format {
    Format::Json
}
fn default_max_in_flight() -> u32 {
    32
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_success() -> ResponseRule {
    ResponseRule(vec![Matcher::Class(2)])
}
fn default_true() -> bool {
    true
}

impl EndpointConfig {
    /// How long its deliveries may run (`min_delay` and the whole retry schedule), when
    /// that passes `retention`: retries due after it expire unsent. A warning, not a
    /// problem (the first attempts are made).
    pub fn outlasts(&self, retention: Duration) -> Option<Duration> {
        let lasts = self.min_delay + self.retry.span();
        (lasts >= retention).then_some(lasts)
    }

    /// A `min_delay` not shorter than the server's `retention`: every delivery would
    /// expire (its event passing retention, counted from acceptance) before its first
    /// attempt is due. Refused in the file and over the API alike.
    pub fn min_delay_problem(&self, retention: Duration) -> Option<String> {
        (self.min_delay >= retention).then(|| {
            format!(
                "endpoint {}: field `min_delay`: {} is not shorter than `retention` ({}): \
                 every delivery would expire before its first attempt",
                ShownName(&self.name),
                format_duration(self.min_delay),
                format_duration(retention)
            )
        })
    }
}

mod ordered_headers {
    use super::*;
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, String)>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of header names to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if k == value::TOML_DATETIME_KEY {
                        // A date-time, as the TOML reader hands one over.
                        return Err(serde::de::Error::invalid_type(
                            serde::de::Unexpected::Other("date-time"),
                            &self,
                        ));
                    }
                    out.push((k, v));
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
    pub fn serialize<S: serde::Serializer>(
        h: &[(String, String)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(h.len()))?;
        for (k, v) in h {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Headers ricochet sets itself on every request (SPEC §4); an endpoint may not
/// override them (a second one would be sent, not a replacement).
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
];

/// Headers about the connection or the body's encoding, which ricochet manages: the
/// hop-by-hop ones of RFC 9110 §7.6.1 (`TE` and `Upgrade` need a `Connection` option,
/// which cannot be given either) and `Content-Encoding` (the body is sent as rendered,
/// never compressed, so the header would misdescribe it).
const CONNECTION_HEADERS: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-encoding",
];

/// Whether `s` is a valid endpoint name: `[A-Za-z0-9_.-]{1,64}`, but not `.` or `..`,
/// which HTTP clients drop from a URL's path (RFC 3986 §5.2.4): the admin API's
/// `/v1/endpoints/..` would be out of their reach.
fn valid_endpoint_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An endpoint's name as messages show it: as it is when valid, quoted when not (a
/// space or a control character in it would run into the rest of the line).
pub struct ShownName<'a>(pub &'a str);

impl std::fmt::Display for ShownName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if valid_endpoint_name(self.0) {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// Whether `s` is a valid event type: `[a-z0-9_.-]{1,64}`.
pub fn valid_event_type(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

impl EndpointConfig {
    /// Checks every field that needs no template compilation: every problem found, one
    /// message each, naming the endpoint and the field. The signing secrets are checked
    /// where they are decoded, when the endpoint is compiled.
    pub fn problems(&self) -> Vec<String> {
        let n = ShownName(&self.name);
        let mut out = Vec::new();
        if !valid_endpoint_name(&self.name) {
            // The name itself is the problem: quoted, here and in every message of it.
            out.push(format!(
                "endpoint {n}: field `name`: must match [A-Za-z0-9_.-]{{1,64}}, and not be \
                 `.` or `..` (HTTP clients drop those from a URL's path)"
            ));
        }
        if self.events.is_empty() {
            out.push(format!(
                "endpoint {n}: field `events`: must list at least one event type or \"*\""
            ));
        }
        for e in &self.events {
            if e != "*" && !valid_event_type(e) {
                out.push(format!(
                    "endpoint {n}: field `events`: {e:?} is not an event type ([a-z0-9_.-]{{1,64}} or \"*\")"
                ));
            }
        }
        let rules = [
            ("success", Some(&self.success)),
            ("error", self.error.as_ref()),
        ];
        for (field, rule) in rules {
            for typo in rule
                .iter()
                .flat_map(|r| r.0.iter())
                .filter_map(Matcher::typo)
            {
                out.push(format!("endpoint {n}: field `{field}`: {typo}"));
            }
        }
        // Schemes are case-insensitive (RFC 3986 §3.1), as `parse_url` reads them.
        let scheme_is = |p: &str| {
            self.url
                .get(..p.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p))
        };
        if !(scheme_is("http://") || scheme_is("https://")) {
            // In the words a rendered URL's check uses (compiling leaves the scheme to
            // this check).
            out.push(format!(
                "endpoint {n}: field `url`: {}",
                crate::deliver::http1::UrlError::UnsupportedScheme
            ));
        }
        if self.max_in_flight == 0 {
            out.push(format!(
                "endpoint {n}: field `max_in_flight`: must be at least 1"
            ));
        }
        if self.timeout.is_zero() {
            out.push(format!("endpoint {n}: field `timeout`: must be positive"));
        }
        if self.method == Method::Get && self.body.is_some() {
            out.push(format!(
                "endpoint {n}: field `body`: a GET request has no body"
            ));
        }
        for (i, (k, v)) in self.headers.iter().enumerate() {
            if self.headers[..i]
                .iter()
                .any(|(seen, _)| seen.eq_ignore_ascii_case(k))
            {
                out.push(format!(
                    "endpoint {n}: field `headers.{k}`: given twice (header names are case-insensitive)"
                ));
            } else if k.is_empty() || !k.bytes().all(is_token_byte) {
                out.push(format!(
                    "endpoint {n}: field `headers`: {k:?} is not a valid header name"
                ));
            } else if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                out.push(format!(
                    "endpoint {n}: field `headers.{k}`: {k} is set by ricochet on every request and cannot be given"
                ));
            } else if CONNECTION_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                out.push(format!(
                    "endpoint {n}: field `headers.{k}`: {k} is about the connection or the body's encoding, which ricochet manages, and cannot be given"
                ));
            } else if k.eq_ignore_ascii_case("expect")
                && (self.method == Method::Get || !v.trim().eq_ignore_ascii_case("100-continue"))
            {
                // RFC 9110 §10.1.1: the only expectation, and only with content.
                out.push(format!(
                    "endpoint {n}: field `headers.{k}`: only `100-continue` may be expected, and only of a request with a body (not GET)"
                ));
            }
            // The marker `GET /v1/endpoints/NAME` shows in place of a secret, copied into
            // a definition with no stored value behind it (the API puts stored values
            // back before this check, so here it is a file's, or a `POST`'s refused
            // earlier): sent as written, every request would carry `[redacted]` as its
            // credential and fail.
            if v == REDACTED && is_secret_header(k) {
                out.push(format!(
                    "endpoint {n}: field `headers.{k}`: {REDACTED:?} is the mark the admin API \
                     shows in place of a secret, not a secret: give the value itself"
                ));
            }
        }
        for (class, v) in [
            ("3xx", self.disable_after.c3xx),
            ("4xx", self.disable_after.c4xx),
            ("5xx", self.disable_after.c5xx),
        ] {
            if v == 0 {
                out.push(format!(
                    "endpoint {n}: field `disable_after.{class}`: must be at least 1"
                ));
            }
        }
        out
    }

    /// Whether this endpoint subscribes to an event of `event_type` for `account`.
    pub fn routes(&self, event_type: &str, account: Option<&str>) -> bool {
        self.events.iter().any(|e| e == "*" || e == event_type)
            && match (&self.account, account) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{problems, refused};
    use crate::config::{file::named_field, Config, ConfigFile};

    #[test]
    fn a_bad_name_is_quoted_in_every_message_of_its_endpoint() {
        // Quoted in the name's message only, the name ran into the rest of the others'.
        let text = |name: &str, rest: &str| {
            format!("[[endpoint]]\nname = {name:?}\nevents = [\"t\"]\nurl = \"http://h/\"\n{rest}")
        };
        // The checks after reading, and a value that does not read.
        let file = ConfigFile::parse(&text("a b", "max_in_flight = 0\n"), "f.toml").unwrap();
        let checked = file.config.endpoints[0].problems();
        let unread = problems(&text("a b", "method = \"DELETE\"\n"));
        assert_eq!(checked.len(), 2, "{checked:?}");
        assert_eq!(unread.len(), 1, "{unread:?}");
        for m in checked.iter().chain(&unread) {
            assert!(m.contains("endpoint \"a b\": field `"), "{m}");
        }
        let ok = problems(&text("a", "method = \"DELETE\"\n"));
        assert!(
            ok.len() == 1 && ok[0].contains("endpoint a: field `method`"),
            "{ok:?}"
        );
    }

    #[test]
    fn a_secret_header_given_as_the_redaction_mark_is_refused() {
        // A definition read over the API and pasted into the file keeps the mark where
        // its secrets were; sent as written, the receiver would get `[redacted]`.
        let text = "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\n\
                    headers = { Authorization = \"[redacted]\", \"X-Api-Key\" = \"k\", \
                    \"X-Note\" = \"[redacted]\" }\n";
        let file = ConfigFile::parse(text, "f.toml").unwrap();
        let p = file.config.endpoints[0].problems();
        assert_eq!(
            p,
            vec![
                "endpoint a: field `headers.Authorization`: \"[redacted]\" is the mark the admin \
                 API shows in place of a secret, not a secret: give the value itself"
                    .to_string()
            ],
            "a header that is no secret may say anything"
        );
    }

    #[test]
    fn a_min_delay_not_shorter_than_the_retention_is_refused() {
        let text = "[server]\nretention = \"1h\"\n\n[[endpoint]]\nname = \"a\"\n\
                    events = [\"t\"]\nurl = \"http://h/a\"\nmin_delay = \"60m\"\n\n\
                    [[endpoint]]\nname = \"b\"\nevents = [\"t\"]\nurl = \"http://h/b\"\n\
                    min_delay = \"59m\"\n";
        assert_eq!(
            problems(text),
            [
                "8:13: endpoint a: field `min_delay`: 1h is not shorter than `retention` (1h): \
              every delivery would expire before its first attempt"
            ]
        );
    }

    #[test]
    fn headers_keep_the_file_order() {
        let c = Config::parse(
            "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\nheaders = { Z-First = \"1\", A-Second = \"2\", M-Third = \"3\" }\n\n[[endpoint]]\nname = \"b\"\nevents = [\"t\"]\nurl = \"http://h/\"\n[endpoint.headers]\nZz = \"1\"\nAa = \"2\"\n",
            "t",
        )
        .unwrap();
        let names = |i: usize| -> Vec<String> {
            c.endpoints[i]
                .headers
                .iter()
                .map(|(k, _)| k.clone())
                .collect()
        };
        assert_eq!(names(0), ["Z-First", "A-Second", "M-Third"]);
        assert_eq!(names(1), ["Zz", "Aa"]);
    }

    /// Endpoint `a` for events `t` at `http://h/`, every other key its default.
    fn plain_endpoint() -> EndpointConfig {
        toml::from_str("name=\"a\"\nevents=[\"t\"]\nurl=\"http://h/\"\n").unwrap()
    }

    #[test]
    fn ricochets_own_headers_are_reserved() {
        for name in [
            "User-Agent",
            "user-agent",
            "webhook-id",
            "Content-Type",
            "Host",
        ] {
            let mut e = plain_endpoint();
            e.headers = vec![(name.to_string(), "mine".to_string())];
            let err = refused(&e);
            assert_eq!(
                err,
                format!("endpoint a: field `headers.{name}`: {name} is set by ricochet on every request and cannot be given")
            );
        }
    }

    #[test]
    fn connection_headers_are_refused() {
        for name in [
            "TE",
            "Upgrade",
            "keep-alive",
            "Proxy-Connection",
            "Trailer",
            "Content-Encoding",
        ] {
            let mut e = plain_endpoint();
            e.headers = vec![(name.to_string(), "x".to_string())];
            assert_eq!(
                refused(&e),
                format!("endpoint a: field `headers.{name}`: {name} is about the connection or the body's encoding, which ricochet manages, and cannot be given")
            );
        }
        // `Expect: 100-continue` works (the interim answer is read past), with a body.
        let mut e = plain_endpoint();
        e.headers = vec![("Expect".to_string(), "100-continue".to_string())];
        assert!(e.problems().is_empty());
        let refused_expect = "endpoint a: field `headers.Expect`: only `100-continue` may be expected, and only of a request with a body (not GET)";
        e.headers = vec![("Expect".to_string(), "x".to_string())];
        assert_eq!(refused(&e), refused_expect);
        e.headers = vec![("Expect".to_string(), "100-continue".to_string())];
        e.method = Method::Get;
        assert_eq!(refused(&e), refused_expect);
    }

    #[test]
    fn a_header_given_twice_is_refused() {
        let mut e = plain_endpoint();
        e.headers = [("X-A", "1"), ("X-B", "2"), ("x-a", "3")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec();
        assert_eq!(
            refused(&e),
            "endpoint a: field `headers.x-a`: given twice (header names are case-insensitive)"
        );
        // The same name twice in a JSON definition, which a JSON object does not refuse.
        let d: EndpointConfig = serde_json::from_str(
            r#"{"name":"a","events":["t"],"url":"http://h/","headers":{"X-A":"1","X-A":"2"}}"#,
        )
        .unwrap();
        assert!(refused(&d).contains("`headers.X-A`: given twice"));
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut e: EndpointConfig =
            toml::from_str("name=\"a\"\nevents=[\"T\"]\nurl=\"ftp://h/\"\nmax_in_flight=0\n")
                .unwrap();
        e.disable_after.c4xx = 0;
        let err = refused(&e);
        let fields: Vec<&str> = err.lines().filter_map(named_field).collect();
        assert_eq!(
            fields,
            ["events", "url", "max_in_flight", "disable_after.4xx"],
            "{err}"
        );
    }

    #[test]
    fn url_schemes_are_case_insensitive() {
        for url in ["HTTP://h/", "Https://h/x", "http://h/", "https://h/"] {
            let e: EndpointConfig =
                toml::from_str(&format!("name=\"a\"\nevents=[\"t\"]\nurl=\"{url}\"\n")).unwrap();
            assert_eq!(e.problems(), Vec::<String>::new(), "{url}");
        }
        for url in ["ftp://h/", "http:/h/", "httpx://h/", "HTTP:"] {
            let e: EndpointConfig =
                toml::from_str(&format!("name=\"a\"\nevents=[\"t\"]\nurl=\"{url}\"\n")).unwrap();
            assert!(refused(&e).contains("field `url`"), "{url}");
        }
    }

    #[test]
    fn routing() {
        let mut e: EndpointConfig = toml::from_str(
            "name=\"a\"\nevents=[\"t1\",\"t2\"]\nurl=\"http://h/\"\naccount=\"p\"\n",
        )
        .unwrap();
        assert!(e.routes("t1", Some("p")));
        assert!(!e.routes("t1", None));
        assert!(!e.routes("t3", Some("p")));
        e.account = None;
        e.events = vec!["*".into()];
        assert!(e.routes("anything", None));
    }

    #[test]
    fn endpoint_names_are_the_pattern_but_dot_segments() {
        for ok in [
            "a",
            "partner-555.inquiries",
            "...",
            ".a",
            "a.",
            "_",
            &"x".repeat(64),
        ] {
            assert!(valid_endpoint_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(!valid_endpoint_name(bad), "{bad}");
        }
    }
}
