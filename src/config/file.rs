//! Reading a configuration file leniently ([`ConfigFile`]): the TOML parsed into a
//! spanned document, `[server]` and each `[[endpoint]]` deserialised on their own with
//! every bad value dropped and reported (`lenient`) and a stand-in read for a missing
//! required key ([`stand_in`]), where each key stands (`Keys`, `LineIndex`) so that every
//! problem has its line:column, and the file-level checks (`[server]` values, duplicate
//! names, the number of endpoints, `min_delay` against `retention`). Also
//! [`log_filter`], the log filter from `RICOCHET_LOG`'s value.
//!
//! It must not check an endpoint's own fields (that is [`EndpointConfig::problems`],
//! run when the endpoint is compiled; [`ConfigFile::locate`] places its messages), nor
//! compile templates, nor touch the network: the configuration is the one file it reads
//! itself (checking `extra_ca_file` is `server`'s).

use std::collections::BTreeMap;
use std::path::Path;

use super::duration::{format_duration, human_duration};
use super::server::{MAX_WORKERS, MIN_RETENTION};
use super::{field_message, Config, ConfigError, Position, Problem};
use super::{EndpointConfig, ServerConfig, ShownName};

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
        let bytes = std::fs::read(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            path: origin.clone(),
            message: not_utf8(e.as_bytes(), e.utf8_error()),
        })?;
        ConfigFile::parse(&text, &origin)
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
    /// past the retention, and, with the SSRF guard on, URLs naming `localhost` (`serve`
    /// warns of both too, as it starts).
    pub fn warnings(&self) -> Vec<Problem> {
        let retention = self.config.server.retention;
        let guarded = !self.config.server.allow_private_networks;
        let mut warnings = Vec::new();
        for (i, e) in self.config.endpoints.iter().enumerate() {
            if let Some(lasts) = e.outlasts(retention) {
                warnings.push(self.locate(
                    i,
                    format!(
                        "warning: endpoint {}: its min_delay and retry schedule ({}, {}) run \
                         past `retention` ({}): retries due after it expire unsent",
                        ShownName(&e.name),
                        format_duration(lasts),
                        human_duration(lasts),
                        format_duration(retention)
                    ),
                ));
            }
            if let Some(w) = guarded
                .then(|| crate::endpoint::loopback_name_warning(e))
                .flatten()
            {
                warnings.push(self.locate(i, w));
            }
        }
        warnings
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
pub(super) fn named_field(message: &str) -> Option<&str> {
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

/// Where a file stops being UTF-8, which TOML is: said like a syntax error, at its
/// line:column, where reading it as a string said only `stream did not contain valid
/// UTF-8` (a Latin-1 `é` in a comment, a file an editor saved as UTF-16).
fn not_utf8(bytes: &[u8], e: std::str::Utf8Error) -> String {
    let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid up to there");
    let Position { line, column } = LineIndex::new(valid).position(valid.len());
    let utf16 = if bytes.starts_with(b"\xff\xfe") || bytes.starts_with(b"\xfe\xff") {
        " (it begins as UTF-16 does: save it as UTF-8)"
    } else {
        ""
    };
    format!("not UTF-8 at {line}:{column}: a TOML file is UTF-8 text{utf16}")
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

/// Deserialises a table; on an error, drops the offending top-level key (or, one table
/// down, the offending key of that table alone) and tries again, so every bad value is
/// reported, not only the first. Returns the value when what
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
        // A bad value one table down (`disable_after.4xx`, `headers.X-A`, an unknown key
        // there): only it is dropped, so that the table's other values are checked too.
        let nested = match err.path().iter().collect::<Vec<_>>()[..] {
            [serde_path_to_error::Segment::Map { .. }, serde_path_to_error::Segment::Map { key }] => {
                Some(key.clone())
            }
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
        if let (Some(nested), Some(toml::de::DeValue::Table(t))) = (
            &nested,
            table.get_mut(key.as_str()).map(toml::Spanned::get_mut),
        ) {
            if t.remove(nested.as_str()).is_some() {
                continue;
            }
        }
        if table.remove(key.as_str()).is_none() {
            return (None, bad);
        }
        dropped.push(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{problems, refused};

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
                "10:11: endpoint a: field `max_rps`: invalid value: integer `-1`, expected a whole number of requests per second, 0 (unlimited) to 4294967295",
                "16:10: endpoint b: field `method`: unknown variant `DELETE`, expected one of `GET`, `POST`, `PUT`, `PATCH`",
                "17:1: endpoint b: unknown field `retries`, expected one of `name`, `events`, `account`, `url`, `method`, `format`, `body`, `headers`, `min_delay`, `max_rps`, `max_in_flight`, `timeout`, `success`, `error`, `retry`, `disable_after`, `signing_secret`, `ordered`, `enabled`",
                r#"21:10: endpoint c: field `events`: invalid type: string "t", expected a list of event types, such as ["sale"] or ["*"]"#,
                "22:33: endpoint c: field `headers.X-Bad`: invalid type: integer, expected a string",
                "24:1: endpoint d: missing field `url`",
                "32:27: endpoint ok: field `disable_after.4xx`: invalid type: string \"many\", expected a whole number of consecutive failures, 1 to 4294967295",
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
    fn every_bad_value_of_a_table_is_reported() {
        // Each bad value one table down is dropped alone: the table's others are checked
        // too (the first ended the table's checks).
        let text = "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\n\
                    disable_after = { \"4xx\" = -1, \"2xx\" = 3, \"5xx\" = \"x\" }\n\
                    headers = { X-A = 1, X-B = \"ok\", X-C = [] }\n";
        assert_eq!(
            problems(text),
            [
                "5:27: endpoint a: field `disable_after.4xx`: invalid value: integer `-1`, \
                 expected a whole number of consecutive failures, 1 to 4294967295",
                "5:31: endpoint a: field `disable_after`: unknown field `2xx`, expected one of \
                 `3xx`, `4xx`, `5xx`",
                "5:50: endpoint a: field `disable_after.5xx`: invalid type: string \"x\", \
                 expected a whole number of consecutive failures, 1 to 4294967295",
                "6:19: endpoint a: field `headers.X-A`: invalid type: integer, expected a string",
                "6:40: endpoint a: field `headers.X-C`: invalid type: sequence, expected a string",
            ]
        );
        // What is left is kept: the good header, the defaults for the bad classes.
        let file = ConfigFile::parse(text, "f.toml").unwrap();
        let e = &file.config.endpoints[0];
        assert_eq!(e.headers, [("X-B".to_string(), "ok".to_string())]);
        assert_eq!(e.disable_after, crate::config::DisableAfter::default());
    }

    #[test]
    fn a_file_that_is_not_utf8_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let read = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            match ConfigFile::read(&path) {
                Err(ConfigError::Parse { message, .. }) => message,
                Err(e) => panic!("{name}: {e}"),
                Ok(_) => panic!("{name}: read"),
            }
        };
        // A Latin-1 é after a UTF-8 one: the column counts characters.
        assert_eq!(
            read("latin1.toml", b"[server]\nworkers = 2 # \xc3\xa9t\xe9\n"),
            "not UTF-8 at 2:17: a TOML file is UTF-8 text"
        );
        assert_eq!(
            read("utf16.toml", b"\xff\xfe[\x00s\x00"),
            "not UTF-8 at 1:1: a TOML file is UTF-8 text (it begins as UTF-16 does: save \
             it as UTF-8)"
        );
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
}
