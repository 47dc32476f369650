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
//! It must not compile templates or touch the network or disk beyond reading the file
//! (and `extra_ca_file`, which [`ServerConfig::startup_problems`] reads to check it): the
//! endpoint module turns an [`EndpointConfig`] into a runnable endpoint (and calls
//! `problems` itself, so the checks run once).
//!
//! # Submodules
//!
//! - `server`: `[server]` ([`ServerConfig`], [`Driver`], [`Durability`]): its defaults,
//!   socket addresses and their clashes, the limits of its values ([`MAX_WORKERS`]), and
//!   what `serve` would refuse on this machine.
//! - `endpoint`: one `[[endpoint]]` ([`EndpointConfig`], [`Method`], [`Format`]): its
//!   defaults and headers, endpoint names and event types, and
//!   [`EndpointConfig::problems`].
//! - `rules`: the grammars of what an answer means and what follows a failure:
//!   [`ResponseRule`] and its [`Matcher`]s, [`RetryPolicy`], [`DisableAfter`].
//! - `value`: the whole numbers, words and paths several keys take, read with
//!   messages that say what the key takes (not `expected usize`).
//! - `duration`: durations as a config writes them ([`parse_duration`],
//!   [`format_duration`], [`human_duration`]) and the serde helper every duration field
//!   reads through.
//! - `file`: reading a file leniently ([`ConfigFile`]): where each key stands, bad
//!   values and unknown keys dropped and reported, stand-ins for missing keys, the
//!   file-level checks; and [`log_filter`] for `RICOCHET_LOG`.
//! - this file: [`Config`] and its entry points, [`ConfigError`] and its located
//!   [`Problem`]s, [`field_message`] (which leaves secret values out), and the `Debug`
//!   output the config structs share.

mod duration;
mod endpoint;
mod file;
mod rules;
mod server;
mod value;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use duration::{format_duration, human_duration, parse_duration};
pub use endpoint::{valid_event_type, EndpointConfig, Format, Method, ShownName};
pub use file::{log_filter, stand_in, ConfigFile};
pub use rules::{DisableAfter, Matcher, ResponseRule, RetryPolicy};
pub use server::{parse_socket_addr, Driver, Durability, ServerConfig, MAX_WORKERS};

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
/// (Also for a stored endpoint's record that does not decode: its message is logged.)
pub(crate) fn without_value(message: &str) -> std::borrow::Cow<'_, str> {
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

/// Debug output for a config struct: its serialized fields, so a field added later is
/// shown without being listed here, and a secret only as the caller redacted it.
fn debug_as_json<T: Serialize>(f: &mut fmt::Formatter<'_>, name: &str, v: &T) -> fmt::Result {
    match serde_json::to_string(v) {
        Ok(json) => write!(f, "{name} {json}"),
        Err(_) => write!(f, "{name} {{..}}"),
    }
}

impl Config {
    /// Reads and parses a file; unknown keys and bad values are errors naming them (all
    /// of them, see [`ConfigFile`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        ConfigFile::read(path)?.into_config()
    }

    /// [`Config::load`] of a file's text; `origin` names it in messages (for tests).
    #[cfg(test)]
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        ConfigFile::parse(text, origin)?.into_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::request::REDACTED;
    use std::time::Duration;

    /// An endpoint's problems, one per line; there must be some.
    pub(super) fn refused(e: &EndpointConfig) -> String {
        let p = e.problems();
        assert!(!p.is_empty(), "{} has no problem", e.name);
        p.join("\n")
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

    /// Each problem as `LINE:COLUMN: MESSAGE`.
    pub(super) fn problems(text: &str) -> Vec<String> {
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
}
