//! `ricochet-load fake-ricochet serve --config F`: a deliberately small stand-in for
//! `ricochet serve`, so `run` can be tested before (or without) the real binary. It
//! reads the same TOML (only `server.socket`, `server.admin`, `server.extra_ca_file` and
//! each endpoint's `name`, `events`, `account`, `url`, `enabled`, `timeout`), answers the ingest line protocol (`ok`/`dup`/
//! `err`, in order), POSTs each event's `data` to the routed (enabled) endpoints with
//! `webhook-id` (over TLS for `https://`, trusting only `extra_ca_file`), retries failures
//! every 200 ms (5 attempts; an attempt waits `timeout` for its answer, 5 s by default),
//! and serves `GET /health` and `GET /metrics` (`ricochet_deliveries_pending` only). It
//! ignores `max_rps`.
//! It journals every acked event and every finished delivery to `server.data_dir`
//! (written before the ack, never synced), so a `kill -9` and a start on the same data
//! dir resend what was pending and answer `dup` for ids it had acked: enough to test
//! `run`'s `restart`. No real durability, no templates: plumbing only, never a benchmark.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;

use crate::http;

#[derive(Args)]
pub struct FakeArgs {
    /// Only `serve` is understood.
    command: String,
    #[arg(long)]
    config: PathBuf,
    #[arg(long, default_value_t = 4)]
    delivery_threads: usize,
}

#[derive(Deserialize)]
struct Config {
    server: Server,
    #[serde(default)]
    endpoint: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Server {
    socket: PathBuf,
    admin: SocketAddr,
    extra_ca_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Endpoint {
    name: String,
    events: Vec<String>,
    /// Only events with this account (as ricochet: an event without one does not match).
    account: Option<String>,
    url: String,
    #[serde(default = "yes")]
    enabled: bool,
    /// How long an attempt waits for its answer (`5s` when not given).
    timeout: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    ty: String,
    id: Option<String>,
    account: Option<String>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

struct Target {
    name: String,
    addr: SocketAddr,
    path: String,
    /// The TLS server name for `https://`.
    tls: Option<String>,
    /// The endpoint's `account` filter.
    account: Option<String>,
    /// How long an attempt waits for its answer.
    timeout: Duration,
}

/// A kept-alive connection to the sink.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

struct Job {
    ep: usize,
    id: Arc<str>,
    body: Arc<str>,
    attempt: u32,
}

struct State {
    targets: Vec<Target>,
    tls: Option<Arc<rustls::ClientConfig>>,
    routes: HashMap<String, Vec<usize>>,
    wildcard: Vec<usize>,
    seen: Mutex<HashSet<String>>,
    next_id: AtomicU64,
    jobs: mpsc::Sender<Job>,
    retries: Mutex<Vec<(Instant, Job)>>,
    /// Deliveries not ended yet (2xx, or their last attempt).
    pending: AtomicU64,
    /// `<data_dir>/fake-journal`, appended with one `write` per record.
    journal: Option<Mutex<std::fs::File>>,
}

const ATTEMPTS: u32 = 5;

impl State {
    /// Appends one journal record (a line) before anything depends on it.
    fn journal(&self, rec: &str) -> std::io::Result<()> {
        match &self.journal {
            Some(f) => f.lock().unwrap().write_all(rec.as_bytes()),
            None => Ok(()),
        }
    }
}

/// The journal's records, one a line, tab separated: `a <id> <ep>,<ep>.. <data>` when an
/// event is acked, `d <id> <ep>` when its delivery to `ep` ended (2xx or last attempt).
/// Returns every acked id and the deliveries still pending (torn or unknown lines are
/// skipped: a torn `a` was never acked, a torn `d` only repeats a delivery).
fn replay(path: &Path, endpoints: usize) -> Result<(HashSet<String>, Vec<Job>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut seen = HashSet::new();
    let mut acked: Vec<(Arc<str>, usize, Arc<str>)> = Vec::new();
    let mut done: HashSet<(&str, usize)> = HashSet::new();
    for line in text.lines() {
        let mut f = line.splitn(4, '\t');
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some("a"), Some(id), Some(eps), Some(data)) => {
                seen.insert(id.to_string());
                let (id, data): (Arc<str>, Arc<str>) = (id.into(), data.into());
                for ep in eps.split(',').filter_map(|e| e.parse::<usize>().ok()) {
                    if ep < endpoints {
                        acked.push((id.clone(), ep, data.clone()));
                    }
                }
            }
            (Some("d"), Some(id), Some(ep), None) => {
                if let Ok(ep) = ep.parse() {
                    done.insert((id, ep));
                }
            }
            _ => {}
        }
    }
    let pending = acked
        .into_iter()
        .filter(|(id, ep, _)| !done.contains(&(&**id, *ep)))
        .map(|(id, ep, body)| Job {
            ep,
            id,
            body,
            attempt: 1,
        })
        .collect();
    Ok((seen, pending))
}

pub fn main(a: FakeArgs) -> Result<i32> {
    if a.command != "serve" {
        bail!("fake-ricochet only understands `serve`");
    }
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let cfg: Config = toml::from_str(&text).context("parsing the config")?;
    let mut targets = Vec::new();
    let mut routes: HashMap<String, Vec<usize>> = HashMap::new();
    let mut wildcard = Vec::new();
    for (i, e) in cfg.endpoint.iter().enumerate() {
        let t = crate::raw::parse_target(&e.url).with_context(|| format!("endpoint {}", e.name))?;
        targets.push(Target {
            name: e.name.clone(),
            addr: t.addr,
            path: t.path,
            tls: t.tls.then_some(t.host),
            account: e.account.clone(),
            timeout: match &e.timeout {
                Some(t) => crate::script::parse_duration(t)
                    .with_context(|| format!("endpoint {}: timeout", e.name))?,
                None => Duration::from_secs(5),
            },
        });
        if !e.enabled {
            continue;
        }
        for t in &e.events {
            if t == "*" {
                wildcard.push(i);
            } else {
                routes.entry(t.clone()).or_default().push(i);
            }
        }
    }
    let tls = match &cfg.server.extra_ca_file {
        Some(p) => {
            let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(Arc::new(crate::tls::client_config(&pem)?))
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Job>();
    let (mut seen, mut journal, mut restored) = (HashSet::new(), None, 0u64);
    if let Some(dir) = &cfg.server.data_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("fake-journal");
        let (ids, pending) = replay(&path, targets.len())?;
        if !ids.is_empty() {
            eprintln!(
                "fake-ricochet: journal has {} events, {} deliveries pending",
                ids.len(),
                pending.len()
            );
        }
        seen = ids;
        restored = pending.len() as u64;
        for job in pending {
            let _ = tx.send(job);
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        journal = Some(Mutex::new(f));
    }
    let state = Arc::new(State {
        targets,
        tls,
        routes,
        wildcard,
        seen: Mutex::new(seen),
        next_id: AtomicU64::new(0),
        jobs: tx,
        retries: Mutex::default(),
        pending: AtomicU64::new(restored),
        journal,
    });
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..a.delivery_threads.max(1) {
        let (state, rx) = (state.clone(), rx.clone());
        std::thread::spawn(move || deliver_loop(&state, &rx));
    }
    {
        let state = state.clone();
        std::thread::spawn(move || retry_loop(&state));
    }
    let admin = std::net::TcpListener::bind(cfg.server.admin)
        .with_context(|| format!("binding admin {}", cfg.server.admin))?;
    {
        let state = state.clone();
        std::thread::spawn(move || {
            for s in admin.incoming().flatten() {
                let _ = serve_admin(s, &state);
            }
        });
    }
    let _ = std::fs::remove_file(&cfg.server.socket);
    let ingest = UnixListener::bind(&cfg.server.socket)
        .with_context(|| format!("binding {}", cfg.server.socket.display()))?;
    eprintln!(
        "fake-ricochet: {} endpoints, socket {}, admin {}",
        state.targets.len(),
        cfg.server.socket.display(),
        cfg.server.admin
    );
    for s in ingest.incoming().flatten() {
        let state = state.clone();
        std::thread::spawn(move || ingest_conn(s, &state));
    }
    Ok(0)
}

fn ingest_conn(s: UnixStream, state: &State) -> Result<()> {
    let mut w = BufWriter::with_capacity(64 << 10, s.try_clone()?);
    let mut r = BufReader::with_capacity(256 << 10, s);
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            w.flush()?;
            return Ok(());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Line>(&line) {
            Err(e) => writeln!(w, "err invalid {e}")?,
            Ok(ev) => {
                let id = ev
                    .id
                    .unwrap_or_else(|| format!("fk-{}", state.next_id.fetch_add(1, Relaxed)));
                if !state.seen.lock().unwrap().insert(id.clone()) {
                    writeln!(w, "dup {id}")?;
                } else {
                    let eps: Vec<usize> = state
                        .routes
                        .get(&ev.ty)
                        .into_iter()
                        .flatten()
                        .chain(&state.wildcard)
                        .copied()
                        .filter(|&ep| match &state.targets[ep].account {
                            None => true,
                            Some(want) => ev.account.as_deref() == Some(want.as_str()),
                        })
                        .collect();
                    let eps_list: Vec<String> = eps.iter().map(usize::to_string).collect();
                    state.journal(&format!(
                        "a\t{id}\t{}\t{}\n",
                        eps_list.join(","),
                        ev.data.get()
                    ))?;
                    let (id_arc, body): (Arc<str>, Arc<str>) =
                        (id.as_str().into(), ev.data.get().into());
                    state.pending.fetch_add(eps.len() as u64, Relaxed);
                    for &ep in &eps {
                        let _ = state.jobs.send(Job {
                            ep,
                            id: id_arc.clone(),
                            body: body.clone(),
                            attempt: 1,
                        });
                    }
                    writeln!(w, "ok {id} {}", eps.len())?;
                }
            }
        }
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

fn deliver_loop(state: &State, rx: &Mutex<mpsc::Receiver<Job>>) {
    let mut conns: HashMap<SocketAddr, Conn> = HashMap::new();
    let mut buf = Vec::with_capacity(4096);
    loop {
        let job = match rx.lock().unwrap().recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let t = &state.targets[job.ep];
        let ok = match post(&mut conns, &mut buf, state.tls.as_ref(), t, &job) {
            Ok(status) => (200..300).contains(&status),
            Err(_) => {
                conns.remove(&t.addr);
                false
            }
        };
        if ok || job.attempt >= ATTEMPTS {
            let _ = state.journal(&format!("d\t{}\t{}\n", job.id, job.ep));
            state.pending.fetch_sub(1, Relaxed);
        } else {
            let job = Job {
                attempt: job.attempt + 1,
                ..job
            };
            state
                .retries
                .lock()
                .unwrap()
                .push((Instant::now() + Duration::from_millis(200), job));
        }
    }
}

fn retry_loop(state: &State) {
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        let due: Vec<Job> = {
            let mut r = state.retries.lock().unwrap();
            let (due, wait): (Vec<_>, Vec<_>) = r.drain(..).partition(|(at, _)| *at <= now);
            *r = wait;
            due.into_iter().map(|(_, j)| j).collect()
        };
        for j in due {
            let _ = state.jobs.send(j);
        }
    }
}

fn post(
    conns: &mut HashMap<SocketAddr, Conn>,
    buf: &mut Vec<u8>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    t: &Target,
    job: &Job,
) -> std::io::Result<u16> {
    let s = match conns.entry(t.addr) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(t.timeout))?;
            v.insert(match &t.tls {
                None => Conn::Plain(s),
                Some(host) => {
                    let cfg =
                        tls.ok_or_else(|| std::io::Error::other("https:// without extra_ca_file"))?;
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(std::io::Error::other)?;
                    let c = rustls::ClientConnection::new(cfg.clone(), name)
                        .map_err(std::io::Error::other)?;
                    Conn::Tls(Box::new(rustls::StreamOwned::new(c, s)))
                }
            })
        }
    };
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nwebhook-id: {}\r\nwebhook-timestamp: {ts}\r\nUser-Agent: ricochet/fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        t.path,
        t.addr,
        job.id,
        job.body.len(),
        job.body
    );
    s.write_all(req.as_bytes())?;
    s.flush()?;
    buf.clear();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(h) = http::parse_response(buf).map_err(|_| std::io::ErrorKind::InvalidData)? {
            if buf.len() >= h.head_len + h.content_length {
                if !h.keep_alive {
                    conns.remove(&t.addr);
                }
                return Ok(h.status);
            }
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn serve_admin(mut s: TcpStream, state: &State) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 2048];
    while http::find(&buf, b"\r\n\r\n").is_none() {
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/health") => (200, r#"{"status":"ok"}"#.to_string()),
        ("GET", "/metrics") => (
            200,
            format!(
                "ricochet_deliveries_pending {}\n",
                state.pending.load(Relaxed)
            ),
        ),
        ("GET", "/v1/endpoints") => {
            let names: Vec<&str> = state.targets.iter().map(|t| t.name.as_str()).collect();
            (200, serde_json::to_string(&names).unwrap_or_default())
        }
        _ => (404, r#"{"error":"not found"}"#.to_string()),
    };
    write!(
        s,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        http::reason(status),
        body.len()
    )?;
    Ok(())
}
