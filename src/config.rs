//! Configuration: the TOML file of SPEC §2, command-line overrides and defaults.
//!
//! Owns parsing (serde, `deny_unknown_fields` so an unknown key is an error that names
//! it), value grammars (durations, response rules, retry schedules) and the checks that
//! need no template compilation ([`EndpointConfig::problems`], and the file-level ones:
//! `[server]` values, duplicate names).
//!
//! A file is read leniently ([`ConfigFile`]): it is parsed into a spanned TOML document
//! first, then `[server]` and each `[[endpoint]]` are deserialised on their own, and a bad
//! value is dropped and reported before the rest is deserialised again, so one run
//! reports every problem of every endpoint, each with the endpoint, the field and its
//! line:column. Only a TOML syntax error ends the reading at once.
//!
//! It must not compile templates or touch the network or disk beyond reading the file:
//! the endpoint module turns an [`EndpointConfig`] into a runnable endpoint (and calls
//! `problems` itself, so the checks run once).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::deliver::request::{is_secret_header, REDACTED};

/// Errors while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not TOML: nothing can be read past a syntax error.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Every problem found, one per line.
    #[error("{}", lines(.0))]
    Invalid(Vec<Problem>),
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A place in a configuration file: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// One problem of a configuration file. The message names the endpoint (or `server`)
/// and the field; `at` is where the offending value (or key) starts, when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub at: Option<Position>,
    pub message: String,
}

impl fmt::Display for Problem {
    /// `FILE:LINE:COLUMN: MESSAGE`, or `FILE: MESSAGE` without a position.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.at {
            Some(p) => write!(f, "{}:{}:{}: {}", self.file, p.line, p.column, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// `SCOPE: field `PATH`: MESSAGE` for a value that failed to deserialise, `PATH` in
/// `serde_path_to_error` form (`timeout`, `headers.X-Partner`, `retry[1]`). The field is
/// left out where the message names it already (an unknown or missing key) or there is
/// none (`.`, the whole table).
pub fn field_message(scope: &str, path: &str, message: &str) -> String {
    let message = if is_secret_path(path) {
        without_value(message)
    } else {
        std::borrow::Cow::Borrowed(message)
    };
    // An unknown key's path ends in the key itself, which the message names.
    let path = if message.starts_with("unknown field") {
        path.rsplit_once('.').map_or("", |(parent, _)| parent)
    } else {
        path
    };
    if path.is_empty() || path == "." {
        format!("{scope}: {message}")
    } else {
        format!("{scope}: field `{path}`: {message}")
    }
}

/// Whether a field's value may be a secret (`admin_token`, `signing_secret`, a header's
/// value): an error about it must not quote it (it goes to logs, terminals and API
/// answers).
fn is_secret_path(path: &str) -> bool {
    let first = path.split(['.', '[']).next().unwrap_or("");
    matches!(first, "admin_token" | "signing_secret" | "headers")
}

/// A deserialiser's message with the offending value left out: `invalid type: string
/// "Bearer x", expected a table` becomes `invalid type: string, expected a table`.
fn without_value(message: &str) -> std::borrow::Cow<'_, str> {
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let (Some(quote), Some(expected)) = (rest.find(['"', '`']), rest.rfind(", expected "))
        else {
            continue;
        };
        if quote < expected {
            let kind = rest[..quote].trim_end();
            return format!("{prefix}{kind}{}", &rest[expected..]).into();
        }
    }
    std::borrow::Cow::Borrowed(message)
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

/// Whether two listeners would bind the same address: one port (not 0, which picks a
/// free one) on one IP, or on any IP where one of them is the wildcard.
pub fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Most workers `workers` may ask for: one per core, and no machine this runs on has
/// more.
pub const MAX_WORKERS: usize = 1024;

/// `[server]`. Its `Debug` shows `admin_token` as [`REDACTED`].
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    #[serde(deserialize_with = "socket_addr_opt")]
    pub listen: Option<SocketAddr>,
    #[serde(deserialize_with = "socket_addr")]
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

/// An IP address and port; a host name is said to be one (it is not resolved).
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        let hint = if s
            .rsplit_once(':')
            .is_some_and(|(h, _)| h.parse::<std::net::IpAddr>().is_err())
        {
            ": an IP address and port, such as 127.0.0.1:7878 or [::1]:7878 (a host name \
             is not resolved)"
        } else {
            ": an IP address and port, such as 127.0.0.1:7878 or [::1]:7878"
        };
        de::Error::custom(format!("{s:?} is no socket address{hint}"))
    })
}

fn socket_addr_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

impl ServerConfig {
    /// What `serve` would refuse on this machine that the file's own checks do not
    /// look at (they run for `render` too): an empty `data_dir` or `socket` (after the
    /// flags), an `extra_ca_file` it cannot read as PEM certificates. The field, and
    /// the message that names it.
    pub fn startup_problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (field, path) in [("data_dir", &self.data_dir), ("socket", &self.socket)] {
            if path.as_os_str().is_empty() {
                out.push((field, "must not be empty".to_string()));
            }
        }
        if let Some(path) = &self.extra_ca_file {
            if path.as_os_str().is_empty() {
                out.push((
                    "extra_ca_file",
                    "must not be empty (leave it out for none)".to_string(),
                ));
            } else if let Err(e) = crate::deliver::tls::check_ca_file(path) {
                out.push(("extra_ca_file", e.to_string()));
            }
        }
        // The admin API would find its address taken by the TCP listener.
        if self.listen.is_some_and(|l| addresses_clash(l, self.admin)) {
            out.push((
                "listen",
                format!("binds the port of `admin` ({})", self.admin),
            ));
        }
        out.into_iter()
            .map(|(field, msg)| (field, format!("server: field `{field}`: {msg}")))
            .collect()
    }
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

impl Durability {
    /// As the config names it (`durability = "sync"`).
    pub fn name(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Batch => "batch",
            Durability::None => "none",
        }
    }
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

/// One `[[endpoint]]`. Its `Debug` shows the secrets as [`redacted`](Self::redacted) does.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
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

/// Debug output for a config struct: its serialized fields, so a field added later is
/// shown without being listed here, and a secret only as the caller redacted it.
fn debug_as_json<T: Serialize>(f: &mut fmt::Formatter<'_>, name: &str, v: &T) -> fmt::Result {
    match serde_json::to_string(v) {
        Ok(json) => write!(f, "{name} {json}"),
        Err(_) => write!(f, "{name} {{..}}"),
    }
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_as_json(f, "EndpointConfig", &self.redacted())
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.clone();
        if s.admin_token.is_some() {
            s.admin_token = Some(REDACTED.to_string());
        }
        debug_as_json(f, "ServerConfig", &s)
    }
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

/// Consecutive-failure thresholds per status class (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a table of consecutive failures per class, such as { 4xx = 20, 5xx = 50 }"
)]
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

    /// A body text that reads as a typo for a status class (`6xx`, `0xx`) or for a list
    /// of statuses (`"2xx,3xx"`): refused as a problem of the definition, not when it is
    /// read, so a definition stored before this check still loads (and is disabled as
    /// not compiling).
    fn typo(&self) -> Option<String> {
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
                    other => Err(E::custom(format!(
                        "unknown retry schedule {other:?} (expected standard, hourly, none or a list of durations)"
                    ))),
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

/// The shortest `retention`.
const MIN_RETENTION: Duration = Duration::from_secs(1);

/// The duration units and their milliseconds, largest first.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// The milliseconds of a duration unit.
fn unit_ms(unit: &str) -> Option<u64> {
    UNITS.iter().find(|(u, _)| *u == unit).map(|&(_, ms)| ms)
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
    let ms = match unit_ms(unit) {
        Some(size) => n.checked_mul(size),
        // `1.5`: no unit at all.
        _ if !unit.bytes().any(|b| b.is_ascii_alphabetic()) => {
            return Err(format!("duration {s:?} needs a unit (ms, s, m, h, d)"))
        }
        // `1.5s`, `1h30m`: the unit is fine, the form is not; said with what to write.
        _ if unit.starts_with('.') => {
            return Err(match one_unit(s) {
                Some(w) => {
                    format!("duration {s:?} has a fraction: write it in a smaller unit ({w:?})")
                }
                None => format!(
                    "duration {s:?} has a fraction of a millisecond, the smallest unit: \
                     write whole milliseconds"
                ),
            })
        }
        _ if UNITS.iter().any(|(u, _)| {
            unit.starts_with(u) && unit[u.len()..].starts_with(|c: char| c.is_ascii_digit())
        }) =>
        {
            return Err(match one_unit(s) {
                Some(w) => format!("duration {s:?} has two units: write it in one ({w:?})"),
                // `1h30`: the second number has no unit to read it by.
                None if s.ends_with(|c: char| c.is_ascii_digit()) => format!(
                    "duration {s:?} has a number after its unit: a duration is one number \
                     and one unit (ms, s, m, h, d)"
                ),
                None => format!("duration {s:?} has two units: write it in one"),
            });
        }
        _ => {
            return Err(format!(
                "bad duration unit in {s:?} (expected ms, s, m, h or d)"
            ))
        }
    };
    ms.filter(|&ms| ms <= MAX_DURATION_MS)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large (at most 36500d)"))
}

/// `2.5m` or `1h30m` written in one unit (`150s`, `90m`), when it is a whole number of
/// milliseconds.
fn one_unit(s: &str) -> Option<String> {
    let mut rest = s;
    let mut ms = 0f64;
    while !rest.is_empty() {
        let num = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let unit = rest[num..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |u| num + u);
        let size = unit_ms(&rest[num..unit])?;
        ms += rest[..num].parse::<f64>().ok()? * size as f64;
        rest = &rest[unit..];
    }
    (ms.fract() == 0.0 && ms > 0.0 && ms <= MAX_DURATION_MS as f64)
        .then(|| format_duration(Duration::from_millis(ms as u64)))
}

/// The longest duration any key takes: 100 years. Past it a deadline overflows (a
/// `timeout` of `u64::MAX` ms stopped the worker that armed it; a retry wait wrapped
/// round to 1 ms), and no wait that long means anything for a delivery.
const MAX_DURATION_MS: u64 = 36_500 * 86_400_000;

/// `d` in hours, minutes and seconds, for a reader (`30 h 51 min 45 s`), where
/// [`format_duration`] gives the one unit a config takes (`111105s`).
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if sec > 0 || parts.is_empty() {
        parts.push(format!("{sec} s"));
    }
    parts.join(" ")
}

/// Formats a duration in the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    // The largest unit it is a whole number of (`0ms` for none).
    let (unit, size) = UNITS
        .iter()
        .find(|&&(_, size)| ms != 0 && ms % size == 0)
        .unwrap_or(&("ms", 1));
    format!("{}{unit}", ms / size)
}

mod duration_str {
    use super::*;

    /// A duration string; a bare number is refused with the string it likely meant
    /// (`min_delay = 30`, as a form that asks for seconds has it, is `"30s"`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"15s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                parse_duration(s).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
                Err(E::custom(unitless(&format!("{n}s"), n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("a duration cannot be negative ({n})"))),
                }
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
                if n < 0.0 {
                    return Err(E::custom(format!("a duration cannot be negative ({n})")));
                }
                // Whole units only: a fraction of a second is written in milliseconds.
                let ms = (n * 1000.0).round();
                Err(E::custom(unitless(&format!("{ms}ms"), n)))
            }
        }
        d.deserialize_any(V)
    }

    fn unitless(write: &str, n: impl std::fmt::Display) -> String {
        format!("a duration is a string with its unit: write \"{write}\" (units ms, s, m, h, d), not {n}")
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
pub fn valid_endpoint_name(s: &str) -> bool {
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

impl Config {
    /// Reads and parses a file; unknown keys and bad values are errors naming them (all
    /// of them, see [`ConfigFile`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        ConfigFile::read(path)?.into_config()
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        ConfigFile::parse(text, origin)?.into_config()
    }
}

/// A configuration file read leniently: what deserialised, every problem found on the
/// way, and where each key of each endpoint stands, so that the problems found later,
/// when the endpoints are compiled, can be located too ([`ConfigFile::locate`]).
pub struct ConfigFile {
    /// `[server]` (the defaults of its bad values) and every endpoint that deserialised
    /// (a bad value of an optional key dropped for its default).
    pub config: Config,
    /// Problems found reading: values that do not deserialise, unknown or missing keys,
    /// bad `[server]` values, duplicate endpoint names. Each endpoint's own checks and its
    /// templates are left to compilation.
    pub problems: Vec<Problem>,
    origin: String,
    /// The keys of each endpoint of `config.endpoints`, in the same order.
    endpoint_keys: Vec<Keys>,
    /// Where `[server]`'s keys are.
    server_keys: Keys,
}

impl ConfigFile {
    /// Reads and parses a file. `Err` only when it cannot be read or is not TOML.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        ConfigFile::parse(&text, &path.display().to_string())
    }

    /// Parses `text` (`origin` names it in messages). `Err` only when it is not TOML.
    pub fn parse(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
        let lines = LineIndex::new(text);
        let root = toml::de::DeTable::parse(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: syntax_error(&lines, &e),
        })?;
        let mut file = ConfigFile {
            config: Config::default(),
            problems: Vec::new(),
            origin: origin.to_string(),
            endpoint_keys: Vec::new(),
            server_keys: Keys::default(),
        };
        let mut server_keys = Keys::default();
        for (key, value) in root.into_inner() {
            match key.get_ref().as_ref() {
                "server" => {
                    if !matches!(value.get_ref(), toml::de::DeValue::Table(_)) {
                        file.problems.push(Problem {
                            file: file.origin.clone(),
                            at: Some(lines.position(value.span().start)),
                            message: "`server` is one table: begin it with [server] (not \
                                      [[server]], nor `server = ...`)"
                                .into(),
                        });
                        continue;
                    }
                    server_keys = Keys::of(&value, &lines);
                    let (server, bad) = lenient::<ServerConfig>(value, |_| None);
                    file.report(&lines, "server", &server_keys, bad);
                    if let Some(server) = server {
                        file.config.server = server;
                    }
                }
                "endpoint" => {
                    let at = lines.position(value.span().start);
                    let toml::de::DeValue::Array(items) = value.into_inner() else {
                        file.problems.push(Problem {
                            file: file.origin.clone(),
                            at: Some(at),
                            message: "`endpoint` must be an array of tables: begin each endpoint with [[endpoint]]".into(),
                        });
                        continue;
                    };
                    for (i, item) in items.into_iter().enumerate() {
                        let scope = match item
                            .get_ref()
                            .get("name")
                            .and_then(|n| n.get_ref().as_str())
                        {
                            Some(name) => format!("endpoint {}", ShownName(name)),
                            None => format!("endpoint #{}", i + 1),
                        };
                        let keys = Keys::of(&item, &lines);
                        let (endpoint, bad) = lenient::<EndpointConfig>(item, stand_in);
                        file.report(&lines, &scope, &keys, bad);
                        if let Some(endpoint) = endpoint {
                            file.config.endpoints.push(endpoint);
                            file.endpoint_keys.push(keys);
                        }
                    }
                }
                other => file.problems.push(Problem {
                    file: file.origin.clone(),
                    at: Some(lines.position(key.span().start)),
                    message: format!("unknown key `{other}`, expected `server` or `endpoint`"),
                }),
            }
        }
        file.check_server(&server_keys);
        file.server_keys = server_keys;
        file.check_names();
        file.check_min_delays();
        Ok(file)
    }

    /// An endpoint whose `min_delay` is not shorter than the server's `retention` would
    /// never attempt a delivery: each expires (its event passes retention, counted from
    /// acceptance) before its first attempt is due.
    fn check_min_delays(&mut self) {
        let retention = self.config.server.retention;
        if retention < MIN_RETENTION {
            // Refused itself: compared with it, a `min_delay` the file may not even
            // give (`0ms` by default) would be reported too.
            return;
        }
        for i in 0..self.config.endpoints.len() {
            if let Some(message) = self.config.endpoints[i].min_delay_problem(retention) {
                let problem = self.locate(i, message);
                self.problems.push(problem);
            }
        }
    }

    /// What `check` warns of but does not refuse: endpoints whose retry schedule runs
    /// past the retention (`serve` warns of them too, as it starts).
    pub fn warnings(&self) -> Vec<Problem> {
        let retention = self.config.server.retention;
        (0..self.config.endpoints.len())
            .filter_map(|i| {
                let e = &self.config.endpoints[i];
                let lasts = e.outlasts(retention)?;
                Some(self.locate(
                    i,
                    format!(
                        "warning: endpoint {}: its min_delay and retry schedule ({}, {}) run \
                         past `retention` ({}): retries due after it expire unsent",
                        ShownName(&e.name),
                        format_duration(lasts),
                        human_duration(lasts),
                        format_duration(retention)
                    ),
                ))
            })
            .collect()
    }

    /// Locates a message about `config.endpoints[index]`: at the field it names
    /// (`` field `url` ``), else at the endpoint's table.
    pub fn locate(&self, index: usize, message: String) -> Problem {
        let keys = self.endpoint_keys.get(index);
        let at = match named_field(&message) {
            Some(field) => keys.and_then(|k| k.find(field)),
            None => keys.and_then(|k| k.table),
        };
        Problem {
            file: self.origin.clone(),
            at,
            message,
        }
    }

    /// The configuration, or every problem found reading it.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.problems.is_empty() {
            Ok(self.config)
        } else {
            Err(ConfigError::Invalid(self.problems))
        }
    }

    fn report(&mut self, lines: &LineIndex, scope: &str, keys: &Keys, bad: Vec<BadValue>) {
        for b in bad {
            let at = match &b.span {
                Some(span) => Some(lines.position(span.start)),
                None => keys.find(&b.path),
            };
            self.problems.push(Problem {
                file: self.origin.clone(),
                at,
                message: field_message(scope, &b.path, &b.message),
            });
        }
    }

    /// What `serve` would refuse in `[server]` on this machine ([`ServerConfig::
    /// startup_problems`]), located in the file: for `check`.
    pub fn startup_problems(&self) -> Vec<Problem> {
        self.startup_problems_of(|_| true)
    }

    /// [`ConfigFile::startup_problems`] of the keys no `serve` flag sets (so they stand
    /// as the file wrote them): `serve` reports those located, as `check` does.
    pub fn file_only_startup_problems(&self) -> Vec<Problem> {
        self.startup_problems_of(|field| field == "extra_ca_file")
    }

    fn startup_problems_of(&self, which: impl Fn(&str) -> bool) -> Vec<Problem> {
        self.config
            .server
            .startup_problems()
            .into_iter()
            .filter(|(field, _)| which(field))
            .map(|(field, message)| Problem {
                file: self.origin.clone(),
                at: self.server_keys.find(field),
                message,
            })
            .collect()
    }

    /// The `[server]` values that deserialise but make no sense.
    fn check_server(&mut self, keys: &Keys) {
        let s = &self.config.server;
        let mut bad: Vec<(&str, String)> = Vec::new();
        if s.max_line_bytes < 64 {
            bad.push(("max_line_bytes", "must be at least 64".into()));
        }
        if s.retention < MIN_RETENTION {
            bad.push(("retention", "must be at least 1s".into()));
        }
        if s.workers > MAX_WORKERS {
            bad.push((
                "workers",
                format!("must be at most {MAX_WORKERS} (one per core; 0 = every core)"),
            ));
        }
        // An empty token would be matched by a request without one.
        match s.admin_token.as_deref() {
            Some("") => bad.push((
                "admin_token",
                "must not be empty (leave it out for an API without a token)".into(),
            )),
            // A request's `Authorization` value is read trimmed: no request could match.
            Some(t) if t.trim() != t || t.chars().any(char::is_control) => bad.push((
                "admin_token",
                "must not begin or end with whitespace, nor hold control characters (no \
                 request could send it)"
                    .into(),
            )),
            _ => {}
        }
        for (field, msg) in bad {
            self.problems.push(Problem {
                file: self.origin.clone(),
                at: keys.find(field),
                message: format!("server: field `{field}`: {msg}"),
            });
        }
    }

    /// Every endpoint named like one before it.
    fn check_names(&mut self) {
        if let Some(e) = self.config.endpoints.get(crate::store::MAX_ROUTES) {
            let message = format!(
                "endpoint {}: more than {} endpoints, the most there may be (an event routed \
                 to every one must fit its record)",
                ShownName(&e.name),
                crate::store::MAX_ROUTES
            );
            let problem = self.locate(crate::store::MAX_ROUTES, message);
            self.problems.push(problem);
        }
        let mut seen = BTreeMap::new();
        let mut dups = Vec::new();
        for (i, e) in self.config.endpoints.iter().enumerate() {
            if seen.insert(e.name.as_str(), ()).is_some() {
                dups.push((
                    i,
                    format!(
                        "endpoint {}: field `name`: duplicate name",
                        ShownName(&e.name)
                    ),
                ));
            }
        }
        for (i, msg) in dups {
            let p = self.locate(i, msg);
            self.problems.push(p);
        }
    }
}

/// The field a message names: the text of its first `` field `…` ``.
fn named_field(message: &str) -> Option<&str> {
    let rest = &message[message.find("field `")? + "field `".len()..];
    Some(&rest[..rest.find('`')?])
}

/// Where a table and each value in it start, by path: `key`, `table.key`, `list[i]`.
#[derive(Default)]
struct Keys {
    table: Option<Position>,
    fields: Vec<(String, Position)>,
}

impl Keys {
    fn of(value: &toml::Spanned<toml::de::DeValue<'_>>, lines: &LineIndex) -> Keys {
        fn walk(
            path: &str,
            v: &toml::Spanned<toml::de::DeValue<'_>>,
            lines: &LineIndex,
            out: &mut Vec<(String, Position)>,
        ) {
            out.push((path.to_string(), lines.position(v.span().start)));
            match v.get_ref() {
                toml::de::DeValue::Table(t) => {
                    for (k, v) in t {
                        walk(&format!("{path}.{}", k.get_ref()), v, lines, out);
                    }
                }
                toml::de::DeValue::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        walk(&format!("{path}[{i}]"), v, lines, out);
                    }
                }
                _ => {}
            }
        }
        let mut fields = Vec::new();
        if let toml::de::DeValue::Table(t) = value.get_ref() {
            for (k, v) in t {
                walk(k.get_ref(), v, lines, &mut fields);
            }
        }
        Keys {
            table: Some(lines.position(value.span().start)),
            fields,
        }
    }

    /// The value at `path`, else the nearest enclosing one that is known, else the table.
    fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some((_, at)) = self.fields.iter().find(|(p, _)| p == path) {
                return Some(*at);
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return self.table,
            }
        }
    }
}

/// Byte offsets to line:column.
struct LineIndex<'t> {
    text: &'t str,
    /// Where each line starts.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> LineIndex<'t> {
        let mut starts = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1));
        LineIndex { text, starts }
    }

    fn position(&self, offset: usize) -> Position {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Position { line, column }
    }
}

/// A TOML syntax error as `line:column: what`, like every other problem of a file. The
/// line itself is not quoted (toml's own message does): it may be the line of a secret.
fn syntax_error(lines: &LineIndex, e: &toml::de::Error) -> String {
    let what = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let Position { line, column } = lines.position(span.start);
            format!("TOML syntax error at {line}:{column}: {what}")
        }
        None => format!("TOML syntax error: {what}"),
    }
}

/// A value that did not deserialise: the path to it, where it is, what is wrong.
struct BadValue {
    path: String,
    span: Option<std::ops::Range<usize>>,
    message: String,
}

/// The log filter for `RICOCHET_LOG`'s value (tracing's env-filter syntax): `info` when
/// it is unset or empty, and when it would leave ricochet's own logs off, errors
/// included (a bare word that is no level names a target, `verbose`; a typo in a target,
/// `richochet=debug`): then with the reason to warn of. A value sets ricochet's level
/// when one of its directives is a bare level or names the `ricochet` target.
pub fn log_filter(value: Option<&str>) -> (String, Option<String>) {
    const DEFAULT: &str = "info";
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return (DEFAULT.into(), None);
    };
    let directives: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let is_level = |d: &str| d.parse::<tracing::level_filters::LevelFilter>().is_ok();
    // A directive's target: before its span filter or its level.
    let ours = |d: &str| {
        let target = d.split(['[', '=']).next().unwrap_or("").trim();
        target == "ricochet" || target.starts_with("ricochet::")
    };
    if directives.iter().any(|&d| is_level(d) || ours(d)) {
        return (v.to_string(), None);
    }
    let why = match directives.iter().find(|&&d| !d.contains(['=', '['])) {
        Some(d) => format!("`{d}` is no level (off, error, warn, info, debug, trace)"),
        None => format!(
            "`{v}` sets no level for ricochet's own logs (add one such as `warn`, or \
             `ricochet=debug`)"
        ),
    };
    (
        DEFAULT.into(),
        Some(format!("RICOCHET_LOG: {why}: logging at {DEFAULT}")),
    )
}

/// What stands in for a required endpoint key that is missing (or dropped for a bad
/// value) while the rest of its definition is checked, as text that is TOML and JSON
/// alike. Never run: the problem reported refuses the definition.
pub fn stand_in(key: &str) -> Option<&'static str> {
    match key {
        "name" => Some(r#""missing-name""#),
        "events" => Some(r#"["*"]"#),
        "url" => Some(r#""http://missing-url.invalid/""#),
        _ => None,
    }
}

/// Deserialises a table; on an error, drops the offending top-level key and tries again,
/// so every bad value is reported, not only the first. Returns the value when what
/// remains deserialises (the dropped keys take their defaults) and every bad value.
/// A required key dropped ends it: its "missing field" error would only repeat the
/// problem already reported. A required key missing from the start is reported and,
/// when `stand_in` gives TOML for it, read as that, so that the rest is still checked
/// (an endpoint without `events` still has its templates compiled); the value is then
/// only for checking, and the problem reported refuses the file.
fn lenient<T: serde::de::DeserializeOwned>(
    mut value: toml::Spanned<toml::de::DeValue<'_>>,
    stand_in: fn(&str) -> Option<&'static str>,
) -> (Option<T>, Vec<BadValue>) {
    let mut bad = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let de = toml::de::ValueDeserializer::from(value.clone());
        let err = match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => return (Some(v), bad),
            Err(e) => e,
        };
        let path = err.path().to_string();
        let top = match err.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        let inner = err.into_inner();
        let message = inner.message().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        if missing.is_some_and(|m| dropped.iter().any(|d| d == m)) {
            return (None, bad);
        }
        let stand_in = missing.and_then(|m| Some((m.to_string(), stand_in(m)?)));
        bad.push(BadValue {
            path,
            span: inner.span(),
            message,
        });
        if let (Some((key, text)), toml::de::DeValue::Table(table)) = (stand_in, value.get_mut()) {
            let v = toml::de::DeValue::parse(text).expect("a stand-in is TOML");
            let k = toml::Spanned::new(0..0, std::borrow::Cow::Owned(key.clone()));
            if table.insert(k, v).is_none() {
                // (Dropped if it turns out bad after all: it is not the user's.)
                dropped.push(key);
                continue;
            }
            return (None, bad);
        }
        let (Some(key), toml::de::DeValue::Table(table)) = (top, value.get_mut()) else {
            return (None, bad);
        };
        if table.remove(key.as_str()).is_none() {
            return (None, bad);
        }
        dropped.push(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint's problems, one per line; there must be some.
    fn refused(e: &EndpointConfig) -> String {
        let p = e.problems();
        assert!(!p.is_empty(), "{} has no problem", e.name);
        p.join("\n")
    }

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
        // At most 100 years: a deadline past that overflows.
        assert_eq!(
            parse_duration("36500d").unwrap(),
            Duration::from_secs(36_500 * 86_400)
        );
        for s in ["36501d", "18446744073709551615ms", "10000000000000s"] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("at most 36500d"), "{s}: {e}");
        }
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
        assert_eq!(c.endpoints[0].problems(), Vec::<String>::new());
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
        assert!(refused(&c.endpoints[0]).contains("`name`"));
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let text = "[server]\nadmin_token = \"tok-s3cret\"\n\n[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\nheaders = { authorization = \"Bearer abc-s3cret\", X-Partner = \"p1\" }\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
        let cfg: Config = toml::from_str(text).unwrap();
        let shown = format!("{cfg:?}");
        for secret in ["tok-s3cret", "abc-s3cret", "MfKQ9r8GKYqr"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // Everything else is there, and the secrets are marked.
        for seen in [
            "\"name\":\"a\"",
            "\"X-Partner\":\"p1\"",
            "\"admin_token\":\"[redacted]\"",
        ] {
            assert!(shown.contains(seen), "{seen} not in {shown}");
        }
        assert_eq!(shown.matches(REDACTED).count(), 3, "{shown}");
        // Redaction works on a copy.
        assert_eq!(cfg.endpoints[0].headers[0].1, "Bearer abc-s3cret");
    }

    #[test]
    fn a_tcp_listener_on_the_admin_address_and_absurd_workers_are_refused() {
        // Checked with the flags applied, at start as by `check`.
        let startup = |text: &str| -> Vec<String> {
            ConfigFile::parse(text, "f.toml")
                .unwrap()
                .startup_problems()
                .iter()
                .map(|p| {
                    let at = p.at.expect("located");
                    format!("{}:{}: {}", at.line, at.column, p.message)
                })
                .collect()
        };
        let clash = |admin: &str, listen: &str| {
            startup(&format!(
                "[server]\nadmin = \"{admin}\"\nlisten = \"{listen}\"\n"
            ))
        };
        assert_eq!(
            clash("127.0.0.1:7000", "127.0.0.1:7000"),
            ["3:10: server: field `listen`: binds the port of `admin` (127.0.0.1:7000)"]
        );
        assert_eq!(clash("127.0.0.1:7000", "0.0.0.0:7000").len(), 1);
        assert!(clash("127.0.0.1:7000", "127.0.0.2:7000").is_empty());
        assert!(clash("127.0.0.1:0", "127.0.0.1:0").is_empty());
        assert_eq!(
            problems("[server]\nworkers = 100000\n"),
            ["2:11: server: field `workers`: must be at most 1024 (one per core; 0 = every core)"]
        );
    }

    #[test]
    fn an_empty_admin_token_is_refused() {
        assert_eq!(
            problems("[server]\nadmin_token = \"\"\n"),
            ["2:15: server: field `admin_token`: must not be empty (leave it out for an API without a token)"]
        );
        assert!(problems("[server]\nadmin_token = \"s3cret\"\n").is_empty());
        for t in [" ", "s3cr3t ", "\\ts3cr3t", "s3\\u0007cr3t"] {
            let p = problems(&format!("[server]\nadmin_token = \"{t}\"\n"));
            assert_eq!(p.len(), 1, "{t:?}");
            assert!(
                p[0].contains("must not begin or end with whitespace"),
                "{p:?}"
            );
            assert!(!p[0].contains("cr3t"), "the token is not quoted: {p:?}");
        }
    }

    #[test]
    fn server_paths_serve_would_refuse_are_refused() {
        let problems = |text: &str| -> Vec<String> {
            let file = ConfigFile::parse(text, "f.toml").unwrap();
            assert!(file.problems.is_empty(), "the file itself is fine");
            file.startup_problems()
                .iter()
                .map(|p| {
                    let at = p.at.expect("located");
                    format!("{}:{}: {}", at.line, at.column, p.message)
                })
                .collect()
        };
        assert_eq!(
            problems("[server]\ndata_dir = \"\"\nsocket = \"\"\n"),
            [
                "2:12: server: field `data_dir`: must not be empty",
                "3:10: server: field `socket`: must not be empty"
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        for (path, says) in [(&missing, "cannot read"), (&not_pem, "no CERTIFICATE")] {
            let p = problems(&format!("[server]\nextra_ca_file = {:?}\n", path));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with("2:17: server: field `extra_ca_file`: "),
                "{p:?}"
            );
            assert!(p[0].contains(says), "{p:?}");
        }
    }

    /// Each problem as `LINE:COLUMN: MESSAGE`.
    fn problems(text: &str) -> Vec<String> {
        ConfigFile::parse(text, "f.toml")
            .unwrap()
            .problems
            .iter()
            .map(|p| {
                let at = p.at.expect("located");
                format!("{}:{}: {}", at.line, at.column, p.message)
            })
            .collect()
    }

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
    fn more_endpoints_than_a_record_holds_routes_for_are_refused() {
        let n = crate::store::MAX_ROUTES + 1;
        let mut text = String::with_capacity(n * 48);
        for i in 0..n {
            text.push_str(&format!(
                "[[endpoint]]\nname = \"e{i}\"\nevents = [\"t\"]\nurl = \"http://h/\"\n"
            ));
        }
        let got = problems(&text);
        assert_eq!(got.len(), 1, "{:?}", &got[..got.len().min(3)]);
        assert!(
            got[0].starts_with(&format!(
                "{}:1: endpoint e65535: more than 65535 endpoints",
                4 * (n - 1) + 1
            )),
            "{got:?}"
        );
        // One fewer is fine.
        let fewer = text.rsplit_once("[[endpoint]]").unwrap().0;
        assert!(problems(fewer).is_empty());
    }

    #[test]
    fn misplaced_tables_and_addresses_are_said_plainly() {
        for (text, want) in [
            ("[[server]]\ndata_dir = \"x\"\n", "1:1: `server` is one table: begin it with [server]"),
            ("server = 5\n", "1:10: `server` is one table"),
            (
                "[server]\nadmin = \"localhost:7878\"\n",
                "2:9: server: field `admin`: \"localhost:7878\" is no socket address: an IP \
                 address and port, such as 127.0.0.1:7878 or [::1]:7878 (a host name is not \
                 resolved)",
            ),
            (
                "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\ndisable_after = 5\n",
                "5:17: endpoint a: field `disable_after`: invalid type: integer `5`, expected a \
                 table of consecutive failures per class",
            ),
        ] {
            let got = problems(text);
            assert_eq!(got.len(), 1, "{text}: {got:?}");
            assert!(got[0].starts_with(want), "{text}: {got:?}");
        }
    }

    #[test]
    fn a_retention_too_short_is_reported_once() {
        let text = "[server]\nretention = \"0s\"\n\n[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\n\
                    url = \"http://h/a\"\n";
        assert_eq!(
            problems(text),
            ["2:13: server: field `retention`: must be at least 1s"]
        );
    }

    #[test]
    fn a_fraction_or_two_units_in_a_duration_are_said_as_such() {
        for (v, write) in [("1.5s", "1500ms"), ("2.5m", "150s"), ("0.5d", "12h")] {
            let e = parse_duration(v).unwrap_err();
            assert_eq!(
                e,
                format!("duration {v:?} has a fraction: write it in a smaller unit ({write:?})")
            );
        }
        for v in ["1.0005s", "0.5ms"] {
            let e = parse_duration(v).unwrap_err();
            assert!(
                e.ends_with("the smallest unit: write whole milliseconds"),
                "{e}"
            );
        }
        assert_eq!(
            parse_duration("1.5").unwrap_err(),
            "duration \"1.5\" needs a unit (ms, s, m, h, d)"
        );
        for (two, write) in [
            ("1h30m", "90m"),
            ("2m30s", "150s"),
            ("1s500ms", "1500ms"),
            ("1d12h", "36h"),
        ] {
            let e = parse_duration(two).unwrap_err();
            assert_eq!(
                e,
                format!("duration {two:?} has two units: write it in one ({write:?})")
            );
        }
        assert_eq!(
            parse_duration("1h30").unwrap_err(),
            "duration \"1h30\" has a number after its unit: a duration is one number and one \
             unit (ms, s, m, h, d)"
        );
        let e = parse_duration("10sec").unwrap_err();
        assert!(e.starts_with("bad duration unit"), "{e}");
    }

    #[test]
    fn a_duration_without_its_unit_says_what_to_write() {
        let text = "[server]\nretention = -5\n\n[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\n\
                    url = \"http://h/a\"\nmin_delay = 30\ntimeout = 2.5\n\
                    retry = [\"30s\", 60]\n";
        assert_eq!(
            problems(text),
            [
                "2:13: server: field `retention`: a duration cannot be negative (-5)",
                "8:13: endpoint a: field `min_delay`: a duration is a string with its unit: \
                 write \"30s\" (units ms, s, m, h, d), not 30",
                "9:11: endpoint a: field `timeout`: a duration is a string with its unit: \
                 write \"2500ms\" (units ms, s, m, h, d), not 2.5",
                "10:17: endpoint a: field `retry[1]`: a duration is a string with its unit: \
                 write \"60s\" (units ms, s, m, h, d), not 60",
            ]
        );
    }

    #[test]
    fn every_bad_value_of_every_endpoint_is_reported_where_it_is() {
        let text = r#"[server]
retention = "7 days"
workers = 2

[[endpoint]]
name = "a"
events = ["t"]
url = "http://h/a"
timeout = "10sec"
max_rps = -1

[[endpoint]]
name = "b"
events = ["t"]
url = "http://h/b"
method = "DELETE"
retries = 3

[[endpoint]]
name = "c"
events = "t"
headers = { X-Ok = "1", X-Bad = 2 }

[[endpoint]]
name = "d"
events = ["t"]

[[endpoint]]
name = "ok"
events = ["t"]
url = "http://h/ok"
disable_after = { "4xx" = "many" }
"#;
        let got = problems(text);
        assert_eq!(
            got,
            [
                r#"2:13: server: field `retention`: bad duration unit in "7 days" (expected ms, s, m, h or d)"#,
                r#"9:11: endpoint a: field `timeout`: bad duration unit in "10sec" (expected ms, s, m, h or d)"#,
                "10:11: endpoint a: field `max_rps`: invalid value: integer `-1`, expected u32",
                "16:10: endpoint b: field `method`: unknown variant `DELETE`, expected one of `GET`, `POST`, `PUT`, `PATCH`",
                "17:1: endpoint b: unknown field `retries`, expected one of `name`, `events`, `account`, `url`, `method`, `format`, `body`, `headers`, `min_delay`, `max_rps`, `max_in_flight`, `timeout`, `success`, `error`, `retry`, `disable_after`, `signing_secret`, `ordered`, `enabled`",
                "21:10: endpoint c: field `events`: invalid type: string \"t\", expected a sequence",
                "22:33: endpoint c: field `headers.X-Bad`: invalid type: integer, expected a string",
                "24:1: endpoint d: missing field `url`",
                "32:27: endpoint ok: field `disable_after.4xx`: invalid type: string \"many\", expected u32",
            ],
            "{got:#?}"
        );
        // What deserialised once the bad values were dropped is kept: a, b and ok; and
        // d, read with a stand-in for its missing `url`, so that its other fields are
        // checked too (the problem reported refuses the file all the same).
        let file = ConfigFile::parse(text, "f.toml").unwrap();
        let names: Vec<&str> = file
            .config
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "d", "ok"]);
        assert_eq!(file.config.server.workers, 2);
        let err = file.into_config().unwrap_err().to_string();
        assert_eq!(err.lines().count(), 9, "{err}");
        assert!(
            err.starts_with("f.toml:2:13: server: field `retention`"),
            "{err}"
        );
    }

    #[test]
    fn problems_found_later_are_located_by_their_field() {
        let text = "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\nheaders = { X-A = \"1\", X-B = \"{Id\" }\nretry = [\"1s\", \"2s\"]\n\n[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\n";
        let file = ConfigFile::parse(text, "f.toml").unwrap();
        let at = |i: usize, msg: &str| {
            let p = file.locate(i, msg.to_string());
            p.at.map(|a| (a.line, a.column))
        };
        assert_eq!(at(0, "endpoint a: field `headers.X-B`: bad"), Some((5, 30)));
        assert_eq!(at(0, "endpoint a: field `retry[1]`: bad"), Some((6, 16)));
        // Unknown below a known key: the key; no field: the table.
        assert_eq!(at(0, "endpoint a: field `headers.X-C`: bad"), Some((5, 11)));
        assert_eq!(at(0, "endpoint a: field `timeout`: bad"), Some((1, 1)));
        assert_eq!(at(0, "endpoint a: bad"), Some((1, 1)));
        assert_eq!(
            problems(text),
            ["9:8: endpoint a: field `name`: duplicate name"]
        );
        assert_eq!(
            file.locate(0, "endpoint a: field `url`: bad".into())
                .to_string(),
            "f.toml:4:7: endpoint a: field `url`: bad"
        );
    }

    #[test]
    fn syntax_errors_end_the_reading() {
        let Err(ConfigError::Parse { path, message }) =
            ConfigFile::parse("[[endpoint]]\nname = \"a\nevents = []\n", "f.toml")
        else {
            panic!("parsed");
        };
        assert_eq!(path, "f.toml");
        assert_eq!(
            message,
            "TOML syntax error at 2:10: invalid basic string, expected `\"`"
        );
        // The line is not quoted: it may hold a secret.
        let Err(ConfigError::Parse { message, .. }) =
            ConfigFile::parse("[server]\nadmin_token = \"s3cret\" x\n", "f.toml")
        else {
            panic!("parsed");
        };
        assert!(
            message.starts_with("TOML syntax error at 2:24: "),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
        assert!(problems("[servre]\nx = 1\n")[0].starts_with("1:2: unknown key `servre`"));
        assert!(problems("endpoint = 3\n")[0].starts_with("1:12: `endpoint` must be an array"));
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
    fn a_log_filter_that_would_silence_every_log_is_not_used() {
        assert_eq!(log_filter(None), ("info".into(), None));
        assert_eq!(log_filter(Some("  ")), ("info".into(), None));
        for ok in [
            "debug",
            "WARN",
            "ricochet=debug,warn",
            "info,rocksdb=off",
            "ricochet::deliver=trace",
            "ricochet[span]=debug",
            "loud,debug",
            "5",
        ] {
            assert_eq!(log_filter(Some(ok)), (ok.to_string(), None), "{ok}");
        }
        for (bad, why) in [
            ("verbose", "`verbose` is no level"),
            ("debug-ish,x=info", "`debug-ish` is no level"),
            ("richochet=debug", "sets no level for ricochet's own logs"),
            ("RICOCHET=debug", "sets no level"),
            ("ricochet_x=info", "sets no level"),
            ("[{x}]", "sets no level"),
            ("[{x}]=debug", "sets no level"),
            (",", "sets no level"),
            ("monoio=trace,rustls=debug", "sets no level"),
        ] {
            let (filter, warn) = log_filter(Some(bad));
            assert_eq!(filter, "info", "{bad}");
            assert!(
                warn.as_deref().unwrap_or("").contains(why),
                "{bad}: {warn:?}"
            );
        }
    }

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
        for e in [retry, success] {
            assert!(!e.contains("untagged"), "{e}");
        }
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
    fn errors_about_secrets_do_not_quote_them() {
        let m = |path, msg| field_message("endpoint a", path, msg);
        assert_eq!(
            m(
                "headers",
                "invalid type: string \"Authorization: Bearer s3, expected x\", expected a table"
            ),
            "endpoint a: field `headers`: invalid type: string, expected a table"
        );
        assert_eq!(
            m(
                "headers.X-Api-Key",
                "invalid type: integer `123`, expected a string"
            ),
            "endpoint a: field `headers.X-Api-Key`: invalid type: integer, expected a string"
        );
        assert_eq!(
            m(
                "signing_secret",
                "invalid type: floating point `1.5`, expected a string"
            ),
            "endpoint a: field `signing_secret`: invalid type: floating point, expected a string"
        );
        assert_eq!(
            field_message(
                "server",
                "admin_token",
                "invalid value: integer `7`, expected x"
            ),
            "server: field `admin_token`: invalid value: integer, expected x"
        );
        // Other fields' values are quoted, as they help.
        assert_eq!(
            m("timeout", "invalid type: integer `5`, expected a string"),
            "endpoint a: field `timeout`: invalid type: integer `5`, expected a string"
        );
        // Nothing quoted: unchanged.
        assert_eq!(
            m("headers", "invalid type: sequence, expected a table"),
            "endpoint a: field `headers`: invalid type: sequence, expected a table"
        );
    }

    #[test]
    fn field_messages() {
        assert_eq!(field_message("server", ".", "m"), "server: m");
        assert_eq!(
            field_message("endpoint a", "timeout", "m"),
            "endpoint a: field `timeout`: m"
        );
        assert_eq!(
            field_message("endpoint a", "retries", "unknown field `retries`"),
            "endpoint a: unknown field `retries`"
        );
        assert_eq!(
            field_message("endpoint a", "disable_after.6xx", "unknown field `6xx`"),
            "endpoint a: field `disable_after`: unknown field `6xx`"
        );
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

#[cfg(test)]
mod name_tests {
    use super::valid_endpoint_name;

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
