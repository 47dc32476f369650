//! Configuration: the TOML file of SPEC §2, command-line overrides and defaults.
//!
//! Owns parsing (serde, `deny_unknown_fields` so an unknown key is an error that names
//! it), value grammars (durations, response rules, retry schedules) and `validate()`.
//! It must not compile templates or touch the network or disk beyond reading the file:
//! the endpoint module turns an [`EndpointConfig`] into a runnable endpoint.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Errors while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<EndpointConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
    /// 0 = one per available core.
    pub workers: usize,
    pub driver: Driver,
    pub durability: Durability,
    pub max_line_bytes: usize,
    #[serde(with = "duration_str")]
    pub retention: Duration,
    pub allow_private_networks: bool,
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("ricochet-data"),
            socket: PathBuf::from("ricochet.sock"),
            listen: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 7878)),
            admin_token: None,
            workers: 0,
            driver: Driver::Auto,
            durability: Durability::Sync,
            max_line_bytes: 1 << 20,
            retention: Duration::from_secs(7 * 86_400),
            allow_private_networks: false,
            extra_ca_file: None,
        }
    }
}

impl ServerConfig {
    /// Worker count with `0` resolved to the available cores.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// monoio driver selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Auto,
    Uring,
    Legacy,
}

/// When an `ok` may be sent (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Ack after fsync; one fsync covers every event that arrived meanwhile (group commit).
    Sync,
    /// Ack after the write; the WAL is fsynced every ~10 ms.
    Batch,
    /// Ack after the write; never fsync explicitly.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Xml,
    Form,
    Text,
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

/// One `[[endpoint]]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
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
    #[serde(default)]
    pub max_rps: u32,
    #[serde(default = "default_max_in_flight")]
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

/// Consecutive-failure thresholds per status class (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisableAfter {
    #[serde(rename = "3xx")]
    pub c3xx: u32,
    #[serde(rename = "4xx")]
    pub c4xx: u32,
    #[serde(rename = "5xx")]
    pub c5xx: u32,
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

    /// Whether any clause looks at the body (so the body excerpt must be kept).
    pub fn reads_body(&self) -> bool {
        self.0.iter().any(|m| matches!(m, Matcher::Body(_)))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl<'de> Deserialize<'de> for ResponseRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Num(u16),
            Many(Vec<StrOrNum>),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum StrOrNum {
            S(String),
            N(u16),
        }
        let parse = |s: String| Matcher::parse(&s).map_err(de::Error::custom);
        let raw = Raw::deserialize(d)?;
        let v = match raw {
            Raw::One(s) => vec![parse(s)?],
            Raw::Num(n) => vec![parse(n.to_string())?],
            Raw::Many(list) => {
                if list.is_empty() {
                    return Err(de::Error::custom("empty response rule list"));
                }
                list.into_iter()
                    .map(|x| match x {
                        StrOrNum::S(s) => parse(s),
                        StrOrNum::N(n) => parse(n.to_string()),
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
}

impl<'de> Deserialize<'de> for RetryPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Name(n) => match n.as_str() {
                "standard" => Ok(RetryPolicy::Standard),
                "hourly" => Ok(RetryPolicy::Hourly),
                "none" => Ok(RetryPolicy::None),
                other => Err(de::Error::custom(format!(
                    "unknown retry schedule {other:?} (expected standard, hourly, none or a list of durations)"
                ))),
            },
            Raw::List(l) => l
                .iter()
                .map(|s| parse_duration(s).map_err(de::Error::custom))
                .collect::<Result<Vec<_>, _>>()
                .map(RetryPolicy::List),
        }
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

/// Parses `500ms`, `15s`, `3m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (expected e.g. 500ms, 15s, 3m, 2h, 7d)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "bad duration unit in {s:?} (expected ms, s, m, h or d)"
            ))
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Formats a duration in the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

mod duration_str {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(de::Error::custom)
    }
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
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

/// Headers ricochet sets itself; an endpoint may not override them.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
];

/// Whether `s` is a valid endpoint name: `[A-Za-z0-9_.-]{1,64}`.
pub fn valid_endpoint_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `s` is a valid event type: `[a-z0-9_.-]{1,64}`.
pub fn valid_event_type(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

impl EndpointConfig {
    /// Checks every field that does not need template compilation. Errors name the
    /// endpoint and the field.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if !valid_endpoint_name(n) {
            return Err(format!(
                "endpoint {n:?}: field `name`: must match [A-Za-z0-9_.-]{{1,64}}"
            ));
        }
        if self.events.is_empty() {
            return Err(format!(
                "endpoint {n}: field `events`: must list at least one event type or \"*\""
            ));
        }
        for e in &self.events {
            if e != "*" && !valid_event_type(e) {
                return Err(format!(
                    "endpoint {n}: field `events`: {e:?} is not an event type ([a-z0-9_.-]{{1,64}} or \"*\")"
                ));
            }
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "endpoint {n}: field `url`: must start with http:// or https://"
            ));
        }
        if self.max_in_flight == 0 {
            return Err(format!(
                "endpoint {n}: field `max_in_flight`: must be at least 1"
            ));
        }
        if self.timeout.is_zero() {
            return Err(format!("endpoint {n}: field `timeout`: must be positive"));
        }
        if self.method == Method::Get && self.body.is_some() {
            return Err(format!(
                "endpoint {n}: field `body`: a GET request has no body"
            ));
        }
        for (k, _) in &self.headers {
            if k.is_empty() || !k.bytes().all(is_token_byte) {
                return Err(format!(
                    "endpoint {n}: field `headers`: {k:?} is not a valid header name"
                ));
            }
            if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "endpoint {n}: field `headers`: {k:?} is set by ricochet and cannot be overridden"
                ));
            }
        }
        if let Some(secret) = &self.signing_secret {
            for s in secret.split_whitespace() {
                if !s.starts_with("whsec_") {
                    return Err(format!(
                        "endpoint {n}: field `signing_secret`: each secret must look like whsec_<base64>"
                    ));
                }
            }
        }
        for (class, v) in [
            ("3xx", self.disable_after.c3xx),
            ("4xx", self.disable_after.c4xx),
            ("5xx", self.disable_after.c5xx),
        ] {
            if v == 0 {
                return Err(format!(
                    "endpoint {n}: field `disable_after.{class}`: must be at least 1"
                ));
            }
        }
        Ok(())
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

impl Config {
    /// Reads and parses a file; unknown keys and bad values are errors naming them.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Every field check that needs no template compilation; all problems, not the first.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let s = &self.server;
        if s.max_line_bytes < 64 {
            errors.push("server: field `max_line_bytes`: must be at least 64".to_string());
        }
        if s.retention < Duration::from_secs(1) {
            errors.push("server: field `retention`: must be at least 1s".to_string());
        }
        let mut seen = BTreeMap::new();
        for e in &self.endpoints {
            if let Err(msg) = e.validate() {
                errors.push(msg);
            }
            if seen.insert(e.name.clone(), ()).is_some() {
                errors.push(format!("endpoint {}: field `name`: duplicate name", e.name));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (s, ms) in [
            ("500ms", 500),
            ("15s", 15_000),
            ("3m", 180_000),
            ("2h", 7_200_000),
            ("7d", 604_800_000),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms));
            assert_eq!(format_duration(Duration::from_millis(ms)), s);
        }
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("15w").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
[server]
data_dir = "d"
socket = "s.sock"
listen = "127.0.0.1:7879"
admin = "127.0.0.1:7878"
workers = 2
driver = "legacy"
durability = "batch"
max_line_bytes = 1048576
retention = "7d"
allow_private_networks = true

[[endpoint]]
name = "partner-555-inquiries"
events = ["action_inquiry"]
account = "partner-555"
url = "https://partner.example/pb?oid={OrderId}"
method = "POST"
format = "json"
body = '{"id": {Id}}'
headers = { Authorization = "Bearer abc", "X-Partner" = "{MediaPartnerId}" }
min_delay = "0s"
max_rps = 50
max_in_flight = 32
timeout = "10s"
success = "2xx"
error = "ERROR"
retry = ["1s", "5s", "30s"]
disable_after = { "3xx" = 2000, "4xx" = 1000, "5xx" = 2000 }
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ordered = false
enabled = true
"#;
        let c = Config::parse(text, "t").unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let e = &c.endpoints[0];
        assert_eq!(e.headers[0].0, "Authorization");
        assert_eq!(e.retry.wait_after(3), Some(Duration::from_secs(30)));
        assert_eq!(e.retry.wait_after(4), None);
        assert_eq!(
            e.error,
            Some(ResponseRule(vec![Matcher::Body("ERROR".into())]))
        );
        assert_eq!(c.server.durability, Durability::Batch);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[server]\nsokcet = \"x\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sokcet"), "{err}");
        let err = Config::parse(
            "[[endpoint]]\nname=\"a\"\nevents=[\"x\"]\nurl=\"http://h/\"\nretries=3\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("retries"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::parse("[server]\nretention = \"7 days\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention"), "{err}");
        let c = Config::parse(
            "[[endpoint]]\nname=\"bad name\"\nevents=[\"x\"]\nurl=\"http://h/\"\n",
            "t",
        )
        .unwrap();
        assert!(c.validate()[0].contains("`name`"));
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
    }

    #[test]
    fn schedules() {
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
}
