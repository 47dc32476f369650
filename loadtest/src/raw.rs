//! The raw ceiling: a bare HTTP/1.1 keep-alive client loop against the sink, with no
//! ricochet in between. Each thread runs a monoio runtime with its share of the
//! connections; each connection sends one request, reads the whole response, repeats.
//! Requests carry the seed payload (with `sent_us: 0`, so the sink records no lag) and
//! no `webhook-id`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use serde::Serialize;

use crate::http;
use crate::payload::{write_data, Payload};
use crate::stats::{self, Percentiles};

#[derive(Debug, Clone)]
pub struct RawConfig {
    pub addr: SocketAddr,
    pub path: String,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
}

/// Splits `http://127.0.0.1:PORT/path` into address and path; loopback only.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String)> {
    let t = parse_target(url)?;
    if t.tls {
        bail!("{url:?}: only http:// URLs are supported");
    }
    Ok((t.addr, t.path))
}

/// A parsed loopback URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTarget {
    /// `https://`.
    pub tls: bool,
    /// The host as written (`localhost` or the IP): the TLS server name.
    pub host: String,
    pub addr: SocketAddr,
    pub path: String,
}

/// Splits `http(s)://HOST:PORT/path` (HOST a loopback IP or `localhost`, which means
/// 127.0.0.1); anything else is refused.
pub fn parse_target(url: &str) -> Result<UrlTarget> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => bail!("{url:?}: only http:// and https:// URLs are supported"),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .or_else(|_| {
            authority
                .replace("localhost", "127.0.0.1")
                .parse::<SocketAddr>()
        })
        .with_context(|| format!("{url:?}: expected host:port with a literal IP"))?;
    if !addr.ip().is_loopback() {
        bail!("refusing to send load to {addr}: only loopback targets are allowed");
    }
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(UrlTarget {
        tls,
        host,
        addr,
        path: path.to_string(),
    })
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RawResult {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_other: u64,
    pub errors: u64,
    pub connects: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub latency: Percentiles,
    /// The first error's text (connect, write, read or framing), when any.
    pub first_error: Option<String>,
}

impl RawResult {
    pub fn summary(&self) -> String {
        format!(
            "{} requests in {:.2}s = {:.0} req/s ({} 2xx, {} other, {} errors, {} connects); latency {}",
            self.requests,
            self.elapsed_s,
            self.requests_per_s,
            self.status_2xx,
            self.status_other,
            self.errors,
            self.connects,
            self.latency.brief()
        ) + &self
            .first_error
            .as_ref()
            .map_or(String::new(), |e| format!("; first error: {e}"))
    }
}

/// How long the client keeps trying when no connection has succeeded yet: then the
/// target is taken to be unreachable and the run ends with the first error.
pub const GIVE_UP_WITHOUT_CONNECTION: Duration = Duration::from_secs(1);

/// What every thread's connections share.
struct RawShared {
    started: Instant,
    /// Connections made by all threads.
    connects: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl RawShared {
    fn error(&self, what: impl FnOnce() -> String) {
        let mut e = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(what());
        }
    }

    /// No connection yet, and long enough trying.
    fn unreachable(&self) -> bool {
        self.connects.load(Relaxed) == 0 && self.started.elapsed() >= GIVE_UP_WITHOUT_CONNECTION
    }
}

struct ThreadTally {
    requests: u64,
    s2xx: u64,
    other: u64,
    errors: u64,
    lat: Histogram<u64>,
}

fn request_bytes(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut body = Vec::new();
    write_data(&mut body, Payload::Seed, 0, 0);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ricochet-load/raw\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

/// Runs the client for `cfg.duration` and sums every thread. Fails, with the first
/// connect error, when no connection succeeds within [`GIVE_UP_WITHOUT_CONNECTION`].
pub fn run(cfg: &RawConfig) -> Result<RawResult> {
    if !cfg.addr.ip().is_loopback() {
        bail!("refusing to send load to {}: loopback only", cfg.addr);
    }
    if cfg.threads == 0 || cfg.connections == 0 {
        bail!("the raw client needs at least one thread and one connection");
    }
    let threads = cfg.threads;
    let conns = cfg.connections;
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let shared = Arc::new(RawShared {
        started,
        connects: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let req_bytes = request_bytes(cfg.addr, &cfg.path);
    let mut handles = Vec::new();
    for t in 0..threads {
        let mine = conns / threads + usize::from(t < conns % threads);
        if mine == 0 {
            continue;
        }
        let (addr, req, shared) = (cfg.addr, req_bytes.clone(), shared.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("raw-{t}"))
                .spawn(move || stats::block_on(raw_thread(addr, req, mine, deadline, shared)))?,
        );
    }
    let mut out = RawResult::default();
    let mut lat = stats::new_hist();
    for h in handles {
        let tally = h
            .join()
            .map_err(|_| anyhow!("raw client thread panicked"))?
            .context("building the raw client runtime")?;
        out.requests += tally.requests;
        out.status_2xx += tally.s2xx;
        out.status_other += tally.other;
        out.errors += tally.errors;
        let _ = lat.add(&tally.lat);
    }
    out.connects = shared.connects.load(Relaxed);
    out.elapsed_s = started.elapsed().as_secs_f64();
    out.requests_per_s = out.requests as f64 / out.elapsed_s.max(1e-9);
    out.latency = Percentiles::of(&lat);
    out.first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if out.connects == 0 {
        bail!(
            "no connection to {} succeeded ({} attempts in {:.1}s): {}",
            cfg.addr,
            out.errors,
            out.elapsed_s,
            out.first_error.as_deref().unwrap_or("no attempt made")
        );
    }
    Ok(out)
}

async fn raw_thread(
    addr: SocketAddr,
    req: Vec<u8>,
    conns: usize,
    deadline: Instant,
    shared: Arc<RawShared>,
) -> ThreadTally {
    let tally = Rc::new(RefCell::new(ThreadTally {
        requests: 0,
        s2xx: 0,
        other: 0,
        errors: 0,
        lat: stats::new_hist(),
    }));
    let req: Rc<[u8]> = req.into();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            monoio::spawn(raw_conn(
                addr,
                req.clone(),
                deadline,
                tally.clone(),
                shared.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(tally)
        .ok()
        .expect("every connection task finished")
        .into_inner()
}

/// One connection's loop, reconnecting after errors until the deadline, or until
/// [`GIVE_UP_WITHOUT_CONNECTION`] when no connection of the run ever succeeded.
async fn raw_conn(
    addr: SocketAddr,
    req: Rc<[u8]>,
    deadline: Instant,
    tally: Rc<RefCell<ThreadTally>>,
    shared: Arc<RawShared>,
) {
    let mut wbuf: Vec<u8> = Vec::with_capacity(req.len());
    let mut rbuf: Vec<u8> = Vec::with_capacity(8 << 10);
    while Instant::now() < deadline {
        let mut stream = match TcpStream::connect_addr(addr).await {
            Ok(s) => s,
            Err(e) => {
                tally.borrow_mut().errors += 1;
                shared.error(|| format!("connecting to {addr}: {e}"));
                if shared.unreachable() {
                    return;
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.connects.fetch_add(1, Relaxed);
        rbuf.clear();
        'conn: while Instant::now() < deadline {
            let t = Instant::now();
            wbuf.clear();
            wbuf.extend_from_slice(&req);
            let (res, b) = stream.write_all(wbuf).await;
            wbuf = b;
            if let Err(e) = res {
                tally.borrow_mut().errors += 1;
                shared.error(|| format!("writing a request: {e}"));
                break;
            }
            let head = loop {
                match http::parse_response(&rbuf) {
                    Ok(Some(h)) if rbuf.len() >= h.head_len + h.content_length => break h,
                    Ok(_) => {}
                    Err(e) => {
                        tally.borrow_mut().errors += 1;
                        shared.error(|| format!("a malformed response: {e:?}"));
                        break 'conn;
                    }
                }
                if rbuf.capacity() - rbuf.len() < 1024 {
                    rbuf.reserve(8 << 10);
                }
                let len = rbuf.len();
                let (res, slice) = stream.read(rbuf.slice_mut(len..)).await;
                rbuf = slice.into_inner();
                match res {
                    Ok(n) if n > 0 => {}
                    Ok(_) => {
                        tally.borrow_mut().errors += 1;
                        shared.error(|| "the server closed the connection mid-response".into());
                        break 'conn;
                    }
                    Err(e) => {
                        tally.borrow_mut().errors += 1;
                        shared.error(|| format!("reading a response: {e}"));
                        break 'conn;
                    }
                }
            };
            rbuf.drain(..head.head_len + head.content_length);
            let mut tl = tally.borrow_mut();
            tl.requests += 1;
            if (200..300).contains(&head.status) {
                tl.s2xx += 1;
            } else {
                tl.other += 1;
            }
            tl.lat
                .saturating_record((t.elapsed().as_micros() as u64).max(1));
            drop(tl);
            if !head.keep_alive {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Script;
    use crate::sink::{Sink, SinkConfig};

    #[test]
    fn url_parsing() {
        let (a, p) = parse_url("http://127.0.0.1:8080/e/1?x=1").unwrap();
        assert_eq!((a.port(), p.as_str()), (8080, "/e/1?x=1"));
        assert_eq!(parse_url("http://127.0.0.1:9").unwrap().1, "/");
        assert!(parse_url("https://127.0.0.1:1/").is_err());
        assert!(parse_url("http://10.0.0.1:80/").is_err());
        assert!(parse_url("http://localhost:80/").is_ok());
        let t = parse_target("https://localhost:8443/e/3").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.addr.port()), ("localhost", 8443));
        assert_eq!(t.addr.ip().to_string(), "127.0.0.1");
        assert_eq!(t.path, "/e/3");
        assert_eq!(parse_target("https://[::1]:1").unwrap().host, "::1");
        assert!(parse_target("https://10.0.0.1:443/").is_err());
        assert!(parse_target("ftp://127.0.0.1:1/").is_err());
    }

    /// Nothing listens: the run ends after about a second with the connect error.
    #[test]
    fn raw_against_nothing_stops_early_with_the_error() {
        // A port that was free a moment ago (bound and released).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let t = Instant::now();
        let err = run(&RawConfig {
            addr,
            path: "/".into(),
            connections: 4,
            threads: 1,
            duration: Duration::from_secs(30),
        })
        .unwrap_err()
        .to_string();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(err.contains("no connection"), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{err}");
        let bad = RawConfig {
            addr,
            path: "/".into(),
            connections: 0,
            threads: 1,
            duration: Duration::from_secs(1),
        };
        assert!(run(&bad).is_err());
    }

    /// Sink and raw client on loopback for one second, bounded.
    #[test]
    fn raw_against_sink_for_one_second() {
        let mut scfg = SinkConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Script::parse("200:0.9,500:0.1").unwrap(),
        );
        scfg.threads = 2;
        let sink = Sink::start(scfg).unwrap();
        let res = run(&RawConfig {
            addr: sink.addr(),
            path: "/e/0".into(),
            connections: 4,
            threads: 2,
            duration: Duration::from_secs(1),
        })
        .unwrap();
        let counts = sink.stop();
        assert!(res.requests > 100, "{}", res.summary());
        assert_eq!(res.errors, 0, "{}", res.summary());
        assert_eq!(res.connects, 4);
        assert_eq!(counts.requests, res.requests);
        assert_eq!(counts.no_id, res.requests);
        assert_eq!(counts.status_2xx, res.status_2xx);
        assert!(res.status_other > 0);
        assert!(counts.body_bytes > 400 * res.requests);
    }
}
