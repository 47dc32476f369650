//! Scenario files (TOML): what `run` generates, how the sink answers, and the ricochet
//! config it writes. The built-in scenarios live in `loadtest/scenarios/*.toml`; they
//! are compiled in, so `--scenario max` works from any directory, and a file of the
//! same name under `./loadtest/scenarios/` or `./scenarios/` wins (edit without a
//! rebuild). The format is documented in `loadtest/README.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::payload::Payload;
use crate::script::{check_share, parse_duration, Latency, Script};

/// Compiled-in scenarios: (name, file text).
pub const BUILT_IN: &[(&str, &str)] = &[
    ("max", include_str!("../scenarios/max.toml")),
    (
        "many-endpoints",
        include_str!("../scenarios/many-endpoints.toml"),
    ),
    ("retry-storm", include_str!("../scenarios/retry-storm.toml")),
    ("backlog", include_str!("../scenarios/backlog.toml")),
    ("templates", include_str!("../scenarios/templates.toml")),
    ("smoke", include_str!("../scenarios/smoke.toml")),
];

/// The scenario file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    #[serde(default)]
    pub description: String,
    /// Endpoints `load-e0..`; event n has type `load.e<n % endpoints>`.
    #[serde(default = "one")]
    pub endpoints: u64,
    /// Events to send (0 = until `duration`).
    #[serde(default)]
    pub events: u64,
    /// Longest the generator sends.
    #[serde(default = "default_duration")]
    pub duration: String,
    /// Events per second, open loop; 0 = flat out.
    #[serde(default)]
    pub rate: f64,
    #[serde(default = "default_payload")]
    pub payload: String,
    /// Ingest connections.
    #[serde(default = "one_usize")]
    pub connections: usize,
    /// Most events in flight (written, not acked) per connection.
    #[serde(default = "default_window")]
    pub window: usize,
    /// With a rate: the least time between a connection's writes, so what falls due
    /// meanwhile goes out in one write (a batching producer); "0s" = each event at once.
    #[serde(default = "zero_duration")]
    pub linger: String,
    /// ricochet `[server] workers`.
    #[serde(default = "two")]
    pub workers: usize,
    /// ricochet `[server] durability`.
    #[serde(default = "default_durability")]
    pub durability: String,
    /// Longest wait for deliveries after the generator is done.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
    /// Stop draining when the sink got no request for this long.
    #[serde(default = "default_drain_idle")]
    pub drain_idle: String,
    /// `none`, or what is down while events are ingested: `503` (the sink answers 503
    /// to everything) or `refuse` (nothing listens on the sink port). It comes back
    /// when the generator is done.
    #[serde(default = "default_outage")]
    pub outage: String,
    /// When the generator is done (before any outage ends): `kill -9` ricochet, start it
    /// again on the same data dir and config, and time `/health` and the first `ok` ack
    /// of a probe event; the drain then runs against the restarted process.
    #[serde(default)]
    pub restart: bool,
    #[serde(default)]
    pub sink: SinkSection,
    /// Extra keys for ricochet's `[server]` table.
    #[serde(default)]
    pub server: toml::Table,
    /// Keys copied into every generated `[[endpoint]]` (`url` may use `$SINK`, `$N`).
    #[serde(default)]
    pub endpoint: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    #[serde(default = "one_usize")]
    pub threads: usize,
    #[serde(default = "default_script")]
    pub script: String,
    #[serde(default = "default_latency")]
    pub latency: String,
    #[serde(default)]
    pub reset: f64,
    #[serde(default)]
    pub slow_body: f64,
    /// Extra arrivals per one-second window the rate check allows above the endpoints'
    /// `max_rps` (only used when `[endpoint] max_rps > 0`).
    #[serde(default = "one_u32")]
    pub rate_tolerance: u32,
}

impl Default for SinkSection {
    fn default() -> Self {
        SinkSection {
            threads: 1,
            script: default_script(),
            latency: default_latency(),
            reset: 0.0,
            slow_body: 0.0,
            rate_tolerance: 1,
        }
    }
}

fn one() -> u64 {
    1
}
fn one_usize() -> usize {
    1
}
fn one_u32() -> u32 {
    1
}
fn two() -> usize {
    2
}
fn default_window() -> usize {
    16384
}
fn zero_duration() -> String {
    "0s".into()
}
fn default_duration() -> String {
    "20s".into()
}
fn default_payload() -> String {
    "seed".into()
}
fn default_durability() -> String {
    "sync".into()
}
fn default_drain_timeout() -> String {
    "60s".into()
}
fn default_drain_idle() -> String {
    "10s".into()
}
fn default_outage() -> String {
    "none".into()
}
fn default_script() -> String {
    "200".into()
}
fn default_latency() -> String {
    "0ms".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    None,
    Unavailable,
    Refuse,
}

impl Outage {
    /// As written in a scenario file.
    pub fn name(self) -> &'static str {
        match self {
            Outage::None => "none",
            Outage::Unavailable => "503",
            Outage::Refuse => "refuse",
        }
    }
}

/// A checked scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub source: String,
    pub description: String,
    pub endpoints: u64,
    pub events: u64,
    pub duration: Duration,
    pub rate: f64,
    pub payload: Payload,
    pub connections: usize,
    pub window: usize,
    pub linger: Duration,
    pub workers: usize,
    pub durability: String,
    pub drain_timeout: Duration,
    pub drain_idle: Duration,
    pub outage: Outage,
    /// Kill -9 and restart ricochet after ingest (see [`ScenarioFile::restart`]).
    pub restart: bool,
    pub sink_threads: usize,
    pub script: Script,
    pub latency: Latency,
    pub reset: f64,
    pub slow_body: f64,
    /// `[endpoint] max_rps` (0 = unlimited): the sink checks it when > 0.
    pub max_rps: u32,
    pub rate_tolerance: u32,
    pub server: toml::Table,
    pub endpoint: toml::Table,
}

/// Keys `run` writes itself and a scenario may not set.
const RESERVED_SERVER: &[&str] = &["data_dir", "socket", "admin"];
const RESERVED_ENDPOINT: &[&str] = &["name", "events", "account"];

impl Scenario {
    /// `name_or_path` is a file path, or the name of a scenario on disk or built in.
    pub fn load(name_or_path: &str) -> Result<Scenario> {
        let as_path = Path::new(name_or_path);
        if as_path.is_file() {
            let text = std::fs::read_to_string(as_path)
                .with_context(|| format!("reading {}", as_path.display()))?;
            let name = as_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| name_or_path.into());
            return Scenario::parse(&name, &as_path.display().to_string(), &text);
        }
        for dir in ["loadtest/scenarios", "scenarios"] {
            let p = PathBuf::from(dir).join(format!("{name_or_path}.toml"));
            if p.is_file() {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                return Scenario::parse(name_or_path, &p.display().to_string(), &text);
            }
        }
        match BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, text)) => Scenario::parse(n, "built in", text),
            None => bail!(
                "no scenario {name_or_path:?}: not a file, and the built-in ones are {}",
                BUILT_IN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    pub fn parse(name: &str, source: &str, text: &str) -> Result<Scenario> {
        let f: ScenarioFile =
            toml::from_str(text).with_context(|| format!("scenario {name} ({source})"))?;
        let ctx = || format!("scenario {name} ({source})");
        if f.endpoints == 0 {
            bail!("{}: endpoints must be at least 1", ctx());
        }
        if f.events == 0 && f.duration.trim().is_empty() {
            bail!("{}: give events, duration or both", ctx());
        }
        if !(f.rate.is_finite() && f.rate >= 0.0) {
            bail!("{}: rate must be >= 0", ctx());
        }
        for (key, v) in [("reset", f.sink.reset), ("slow_body", f.sink.slow_body)] {
            check_share(v).with_context(|| format!("{}: [sink] {key}", ctx()))?;
        }
        for k in RESERVED_SERVER {
            if f.server.contains_key(*k) {
                bail!("{}: [server] {k} is set by run itself", ctx());
            }
        }
        for k in RESERVED_ENDPOINT {
            if f.endpoint.contains_key(*k) {
                bail!("{}: [endpoint] {k} is set by run itself", ctx());
            }
        }
        let outage = match f.outage.as_str() {
            "none" => Outage::None,
            "503" => Outage::Unavailable,
            "refuse" => Outage::Refuse,
            o => bail!("{}: outage {o:?}: expected none, 503 or refuse", ctx()),
        };
        if !matches!(f.durability.as_str(), "sync" | "batch" | "none") {
            bail!("{}: durability must be sync, batch or none", ctx());
        }
        if let Some(url) = f.endpoint.get("url") {
            if !url.as_str().is_some_and(|u| u.starts_with("$SINK")) {
                bail!(
                    "{}: [endpoint] url must start with $SINK (the sink's http://127.0.0.1:PORT)",
                    ctx()
                );
            }
        }
        let max_rps = match f.endpoint.get("max_rps") {
            None => 0,
            Some(v) => match v.as_integer().map(u32::try_from) {
                Some(Ok(r)) => r,
                _ => bail!(
                    "{}: [endpoint] max_rps must be a non-negative integer",
                    ctx()
                ),
            },
        };
        let dur =
            |s: &str, what: &str| parse_duration(s).with_context(|| format!("{}: {what}", ctx()));
        Ok(Scenario {
            name: name.into(),
            source: source.into(),
            description: f.description.trim().into(),
            endpoints: f.endpoints,
            events: f.events,
            duration: dur(&f.duration, "duration")?,
            rate: f.rate,
            payload: Payload::parse(&f.payload).with_context(ctx)?,
            connections: f.connections.max(1),
            window: f.window.max(2),
            linger: dur(&f.linger, "linger")?,
            workers: f.workers.max(1),
            durability: f.durability,
            drain_timeout: dur(&f.drain_timeout, "drain_timeout")?,
            drain_idle: dur(&f.drain_idle, "drain_idle")?,
            outage,
            restart: f.restart,
            sink_threads: f.sink.threads.max(1),
            script: Script::parse(&f.sink.script).with_context(ctx)?,
            latency: Latency::parse(&f.sink.latency).with_context(ctx)?,
            reset: f.sink.reset,
            slow_body: f.sink.slow_body,
            max_rps,
            rate_tolerance: f.sink.rate_tolerance,
            server: f.server,
            endpoint: f.endpoint,
        })
    }

    /// ricochet's config for this scenario, as TOML text. `sink_base` replaces `$SINK`
    /// in endpoint URLs (`http://127.0.0.1:PORT` or `https://localhost:PORT`);
    /// `extra_ca_file` (the HTTPS sink's CA) goes into `[server]`.
    pub fn ricochet_config(
        &self,
        data_dir: &Path,
        socket: &Path,
        admin: std::net::SocketAddr,
        sink_base: &str,
        extra_ca_file: Option<&Path>,
    ) -> Result<String> {
        use toml::Value;
        let mut server = toml::Table::new();
        server.insert(
            "data_dir".into(),
            Value::String(data_dir.display().to_string()),
        );
        server.insert("socket".into(), Value::String(socket.display().to_string()));
        server.insert("admin".into(), Value::String(admin.to_string()));
        server.insert("workers".into(), Value::Integer(self.workers as i64));
        server.insert("durability".into(), Value::String(self.durability.clone()));
        server.insert("allow_private_networks".into(), Value::Boolean(true));
        for (k, v) in &self.server {
            server.insert(k.clone(), v.clone());
        }
        if let Some(ca) = extra_ca_file {
            server.insert(
                "extra_ca_file".into(),
                Value::String(ca.display().to_string()),
            );
        }
        let base = sink_base;
        let url_template = self
            .endpoint
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("$SINK/e/$N")
            .to_string();
        let mut endpoints = Vec::with_capacity(self.endpoints as usize);
        for n in 0..self.endpoints {
            let mut e = toml::Table::new();
            e.insert("name".into(), Value::String(format!("load-e{n}")));
            e.insert(
                "events".into(),
                Value::Array(vec![Value::String(crate::gen::endpoint_type(n))]),
            );
            // Event n carries type load.e<n % E> and account acct-<n % E>: both filters
            // match for exactly one endpoint.
            e.insert(
                "account".into(),
                Value::String(crate::gen::endpoint_account(n)),
            );
            e.insert(
                "url".into(),
                Value::String(
                    url_template
                        .replace("$SINK", base)
                        .replace("$N", &n.to_string()),
                ),
            );
            for (k, v) in &self.endpoint {
                if k != "url" {
                    e.insert(k.clone(), v.clone());
                }
            }
            endpoints.push(Value::Table(e));
        }
        let mut root = toml::Table::new();
        root.insert("server".into(), Value::Table(server));
        root.insert("endpoint".into(), Value::Array(endpoints));
        let mut text = format!(
            "# written by ricochet-load for scenario {} ({})\n",
            self.name, self.source
        );
        text += &toml::to_string(&root).context("writing the ricochet config")?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses() {
        for (name, text) in BUILT_IN {
            let s = Scenario::parse(name, "built in", text).unwrap();
            assert!(!s.description.is_empty(), "{name} has no description");
            assert!(s.events > 0 || !s.duration.is_zero());
        }
        let m = Scenario::load("many-endpoints").unwrap();
        assert_eq!(m.endpoints, 10_000);
        assert_eq!(m.rate, 40_000.0);
        assert_eq!(
            m.endpoint.get("max_rps").and_then(|v| v.as_integer()),
            Some(2)
        );
        assert_eq!((m.max_rps, m.rate_tolerance), (2, 1));
        let r = Scenario::load("retry-storm").unwrap();
        assert_eq!(r.script.entries.len(), 2);
        let b = Scenario::load("backlog").unwrap();
        assert_eq!(b.events, 1_000_000);
        assert!(b.restart, "backlog measures readiness after a restart");
        assert!(!Scenario::load("max").unwrap().restart);
        assert!(Scenario::load("no-such-scenario").is_err());
        // The linger: none unless a file sets one; a bad one names the key.
        assert!(Scenario::load("max").unwrap().linger.is_zero());
        let l = Scenario::parse(
            "l",
            "test",
            "description = \"x\"\nrate = 10\nlinger = \"5ms\"\n",
        );
        assert_eq!(l.unwrap().linger, Duration::from_millis(5));
        let bad = Scenario::parse("l", "test", "description = \"x\"\nlinger = \"soon\"\n");
        assert!(format!("{:#}", bad.unwrap_err()).contains("linger"));
    }

    #[test]
    fn config_generation_routes_one_type_per_endpoint() {
        let s = Scenario::load("templates").unwrap();
        let text = s
            .ricochet_config(
                Path::new("/tmp/d"),
                Path::new("/tmp/s.sock"),
                "127.0.0.1:7000".parse().unwrap(),
                "http://127.0.0.1:9000",
                None,
            )
            .unwrap();
        let v: toml::Table = toml::from_str(&text).unwrap();
        let server = v["server"].as_table().unwrap();
        assert_eq!(server["allow_private_networks"].as_bool(), Some(true));
        assert_eq!(server["socket"].as_str(), Some("/tmp/s.sock"));
        let eps = v["endpoint"].as_array().unwrap();
        assert_eq!(eps.len() as u64, s.endpoints);
        let e3 = eps[3].as_table().unwrap();
        assert_eq!(e3["name"].as_str(), Some("load-e3"));
        assert_eq!(e3["url"].as_str(), Some("http://127.0.0.1:9000/e/3"));
        assert_eq!(
            e3["events"].as_array().unwrap()[0].as_str(),
            Some("load.e3")
        );
        assert_eq!(e3["account"].as_str(), Some("acct-3"));
        // The generator's event n routes to endpoint n % E, by type and by account.
        let (types, accounts) = (
            crate::gen::endpoint_types(s.endpoints),
            crate::gen::endpoint_accounts(s.endpoints),
        );
        for n in 0..3 * s.endpoints {
            let k = crate::gen::event_key(&types, &accounts, n);
            let routed: Vec<usize> = eps
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e["events"].as_array().unwrap()[0].as_str() == Some(k.ty)
                        && e["account"].as_str() == k.account
                })
                .map(|(i, _)| i)
                .collect();
            assert_eq!(routed, vec![(n % s.endpoints) as usize], "event {n}");
        }
        let body = e3["body"].as_str().unwrap();
        assert!(body.contains("join(items, i,"), "{body}");
        assert!(body.contains("{sent_us}"), "{body}");
        assert!(!server.contains_key("extra_ca_file"));
        assert_eq!(s.max_rps, 0);

        // HTTPS: the base and the CA file.
        let text = s
            .ricochet_config(
                Path::new("/tmp/d"),
                Path::new("/tmp/s.sock"),
                "127.0.0.1:7000".parse().unwrap(),
                "https://localhost:9443",
                Some(Path::new("/tmp/run/sink-ca.pem")),
            )
            .unwrap();
        let v: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            v["server"]["extra_ca_file"].as_str(),
            Some("/tmp/run/sink-ca.pem")
        );
        assert_eq!(
            v["endpoint"][5]["url"].as_str(),
            Some("https://localhost:9443/e/5")
        );
    }

    #[test]
    fn restart_and_window_keys() {
        let s = Scenario::parse("x", "t", "events = 10").unwrap();
        assert!(!s.restart);
        assert_eq!(s.window, 16384);
        let s = Scenario::parse("x", "t", "events = 10\nrestart = true\nwindow = 64").unwrap();
        assert!(s.restart);
        assert_eq!(s.window, 64);
        // A window below 2 is raised to 2 (the generator's ring needs two slots).
        assert_eq!(Scenario::parse("x", "t", "window = 0").unwrap().window, 2);
        assert!(Scenario::parse("x", "t", "restart = \"yes\"").is_err());
    }

    #[test]
    fn rejects_bad_scenarios() {
        assert!(Scenario::parse("x", "t", "bogus = 1").is_err());
        assert!(Scenario::parse("x", "t", "endpoints = 0").is_err());
        assert!(Scenario::parse("x", "t", "outage = \"maybe\"").is_err());
        assert!(Scenario::parse("x", "t", "[endpoint]\nname = \"x\"").is_err());
        assert!(Scenario::parse("x", "t", "[endpoint]\naccount = \"x\"").is_err());
        assert!(Scenario::parse("x", "t", "[server]\nsocket = \"x\"").is_err());
        assert!(Scenario::parse("x", "t", "[endpoint]\nurl = \"http://10.0.0.1/\"").is_err());
        assert!(Scenario::parse("x", "t", "[sink]\nscript = \"abc\"").is_err());
        assert!(Scenario::parse("x", "t", "[endpoint]\nmax_rps = -1").is_err());
        assert!(Scenario::parse("x", "t", "[sink]\nreset = 1.5").is_err());
        assert!(Scenario::parse("x", "t", "[sink]\nslow_body = -0.1").is_err());
        assert!(Scenario::parse("x", "t", "[sink]\nscript = \"999\"").is_err());
        assert!(Scenario::parse("x", "t", "[endpoint]\nmax_rps = \"2\"").is_err());
        let ok = Scenario::parse(
            "x",
            "t",
            "events = 10\n[endpoint]\nurl = \"$SINK/e/$N?sent_us={sent_us}\"\nmethod = \"GET\"",
        )
        .unwrap();
        let text = ok
            .ricochet_config(
                Path::new("/d"),
                Path::new("/s"),
                "127.0.0.1:1".parse().unwrap(),
                "http://127.0.0.1:2",
                None,
            )
            .unwrap();
        assert!(
            text.contains("http://127.0.0.1:2/e/0?sent_us={sent_us}"),
            "{text}"
        );
    }
}
