//! `[server]`: [`ServerConfig`] and its defaults, the monoio [`Driver`] and the
//! [`Durability`] of an ack, socket addresses (an IP and port; a host name is refused, not
//! resolved) and whether two clash, the limits of its values ([`MAX_WORKERS`], the
//! shortest `retention`), and what `serve` would refuse on this machine
//! ([`ServerConfig::startup_problems`]).
//!
//! It must not locate problems in a file: `file` checks the `[server]` values that
//! deserialise but make no sense, and says where they are. Nor may it start or bind
//! anything: beyond its values, it only reads `extra_ca_file` (to check it) and asks
//! how many cores there are.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::debug_as_json;
use super::duration::duration_str;
use super::value;
use crate::deliver::request::REDACTED;

/// Whether two listeners would bind the same address: one port (not 0, which picks a
/// free one) on one IP, or on any IP where one of them is the wildcard.
fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
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
    #[serde(deserialize_with = "value::path")]
    pub data_dir: PathBuf,
    #[serde(deserialize_with = "value::path")]
    pub socket: PathBuf,
    #[serde(deserialize_with = "socket_addr_opt")]
    pub listen: Option<SocketAddr>,
    #[serde(deserialize_with = "socket_addr")]
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
    /// 0 = one per available core.
    #[serde(deserialize_with = "workers")]
    pub workers: usize,
    pub driver: Driver,
    pub durability: Durability,
    #[serde(deserialize_with = "max_line_bytes")]
    pub max_line_bytes: usize,
    #[serde(with = "duration_str")]
    pub retention: Duration,
    pub allow_private_networks: bool,
    #[serde(deserialize_with = "value::path_opt")]
    pub extra_ca_file: Option<PathBuf>,
}

fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    value::whole(d, "a whole number of worker threads (0 = one per core)")
}

fn max_line_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    value::whole(d, "a whole number of bytes, at least 64")
}

/// An IP address and port; a host name is said to be one (it is not resolved).
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = value::string(
        d,
        "an IP address and port as a string, such as \"127.0.0.1:7878\"",
    )?;
    parse_socket_addr(&s).map_err(de::Error::custom)
}

/// An address as `listen` and `admin` (and `serve`'s `--listen` and `--admin`) take it:
/// an IP address and port; a host name is said to be one (it is not resolved), where
/// the standard parser says only `invalid socket address syntax`.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
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
        format!("{s:?} is no socket address{hint}")
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Auto,
    Uring,
    Legacy,
}

impl<'de> Deserialize<'de> for Driver {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use Driver::*;
        value::word(d, &["auto", "uring", "legacy"], &[Auto, Uring, Legacy])
    }
}

/// When an `ok` may be sent (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Ack after fsync; one fsync covers every event that arrived meanwhile (group commit).
    Sync,
    /// Ack after the write; the WAL is fsynced every ~10 ms.
    Batch,
    /// Ack after the write; never fsync explicitly.
    None,
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use Durability::*;
        value::word(d, &["sync", "batch", "none"], &[Sync, Batch, None])
    }
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

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.clone();
        if s.admin_token.is_some() {
            s.admin_token = Some(REDACTED.to_string());
        }
        debug_as_json(f, "ServerConfig", &s)
    }
}

/// The shortest `retention`.
pub(super) const MIN_RETENTION: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use crate::config::tests::problems;
    use crate::config::ConfigFile;

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
}
