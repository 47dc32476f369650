//! Host name resolution off the workers.
//!
//! Owns the resolver threads (the system resolver blocks, so it never runs on a worker)
//! and each worker's answer cache. Workers ask through [`Resolver::resolve`] for names
//! only (an IP literal is parsed once, with its URL: `http1::Target::ip`); it answers
//! cached names at once and otherwise awaits a thread's reply. A few threads share the
//! queue, and a name asked for again while its look-up runs waits for that one, so one
//! name whose resolver does not answer holds up only its own look-ups. It must not
//! decide whether an address may be used: that is the SSRF guard's job.
//!
//! A failed look-up says whether the name does not exist ([`ResolveFailure::NotFound`]:
//! SPEC §6 never retries such a delivery), the resolver could not answer now
//! ([`ResolveFailure::Transient`]: a network error, retried on the schedule), or did not
//! answer within the attempt's time ([`ResolveFailure::TimedOut`]: the look-up is part of
//! the attempt, whose `timeout` covers connect, send and response, SPEC §2). A late
//! answer still fills the cache for the next attempt.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dns_lookup::{AddrInfoHints, LookupErrorKind, SockType};

use crate::local::oneshot;

/// How long an answer is reused.
const TTL: Duration = Duration::from_secs(30);
/// How long a failed look-up is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Threads asking the system resolver: a slow name's look-ups (the system resolver's own
/// timeouts are seconds) leave the others free to answer.
const THREADS: usize = 4;

/// Why a name did not resolve.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
    pub failure: ResolveFailure,
}

/// Whether a failed look-up is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveFailure {
    /// The name does not exist or has no addresses (NXDOMAIN, NODATA).
    NotFound,
    /// The resolver could not answer now (a timeout, SERVFAIL, no resolver reachable).
    Transient,
    /// No answer within the time the attempt had for it.
    TimedOut,
}

impl ResolveFailure {
    /// What a `getaddrinfo` error means for the delivery. Only "no such name" and "no
    /// addresses" are final; anything else may pass.
    fn of(kind: LookupErrorKind) -> ResolveFailure {
        match kind {
            LookupErrorKind::NoName | LookupErrorKind::NoData => ResolveFailure::NotFound,
            _ => ResolveFailure::Transient,
        }
    }
}

/// RFC 6761 §6.4: names under `.invalid` never resolve, and resolvers should say so at
/// once instead of asking the network.
fn is_special_invalid(host: &str) -> bool {
    is_or_under(host, b"invalid")
}

/// Whether `host` is the name `tail` or a name under it (case-insensitive, a trailing
/// dot or not).
fn is_or_under(host: &str, tail: &[u8]) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host).as_bytes();
    h.len() >= tail.len()
        && h[h.len() - tail.len()..].eq_ignore_ascii_case(tail)
        && (h.len() == tail.len() || h[h.len() - tail.len() - 1] == b'.')
}

/// RFC 6761 §6.3: `localhost` and names under it are the loopback addresses, answered
/// without asking the network (a trailing dot or not).
fn is_special_localhost(host: &str) -> bool {
    is_or_under(host, b"localhost")
}

type Answer = Result<Vec<IpAddr>, ResolveError>;

struct Query {
    host: String,
    reply: oneshot::Sender<Answer>,
}

/// Cloneable handle to the resolver threads.
#[derive(Clone)]
pub struct ResolverThread {
    tx: crossbeam_channel::Sender<Query>,
}

impl ResolverThread {
    /// Starts the resolver threads.
    pub fn start() -> ResolverThread {
        Self::with_lookup(THREADS, lookup)
    }

    /// Starts `threads` threads answering with `lookup` (the system resolver, or a test's).
    fn with_lookup(
        threads: usize,
        lookup: impl Fn(&str) -> Answer + Send + Sync + 'static,
    ) -> ResolverThread {
        let (tx, rx) = crossbeam_channel::unbounded::<Query>();
        let lookup = std::sync::Arc::new(lookup);
        let running = std::sync::Arc::new(Running::default());
        for _ in 0..threads {
            let (rx, lookup, running) = (rx.clone(), lookup.clone(), running.clone());
            std::thread::Builder::new()
                .name("ricochet-dns".into())
                .spawn(move || {
                    for q in rx {
                        if let Some(host) = running.join(q) {
                            let answer = lookup(&host);
                            running.finish(&host, answer);
                        }
                    }
                })
                .expect("spawn resolver thread");
        }
        ResolverThread { tx }
    }
}

/// The names being looked up, each with everyone waiting for its answer.
#[derive(Default)]
struct Running(std::sync::Mutex<HashMap<String, Vec<oneshot::Sender<Answer>>>>);

impl Running {
    /// Joins `q` to the look-up of its name if one is running; else starts one and
    /// returns the name for the caller to look up.
    fn join(&self, q: Query) -> Option<String> {
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match running.get_mut(&q.host) {
            Some(waiters) => {
                waiters.push(q.reply);
                None
            }
            None => {
                running.insert(q.host.clone(), vec![q.reply]);
                Some(q.host)
            }
        }
    }

    /// Answers everyone waiting for `host`.
    fn finish(&self, host: &str, answer: Answer) {
        let waiters = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host)
            .unwrap_or_default();
        for reply in waiters {
            reply.send(answer.clone());
        }
    }
}

fn lookup(host: &str) -> Answer {
    let fail = |reason: String, failure| {
        Err(ResolveError {
            host: host.to_string(),
            reason,
            failure,
        })
    };
    if is_special_invalid(host) {
        return fail(
            "names under .invalid never resolve (RFC 6761)".into(),
            ResolveFailure::NotFound,
        );
    }
    if is_special_localhost(host) {
        return Ok(vec![
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ]);
    }
    let hints = AddrInfoHints {
        socktype: SockType::Stream.into(),
        ..AddrInfoHints::default()
    };
    match dns_lookup::getaddrinfo(Some(host), None, Some(hints)) {
        Ok(addrs) => {
            let mut v: Vec<IpAddr> = Vec::new();
            for a in addrs.flatten() {
                let ip = a.sockaddr.ip();
                if !v.contains(&ip) {
                    v.push(ip);
                }
            }
            if v.is_empty() {
                fail("no addresses".into(), ResolveFailure::NotFound)
            } else {
                Ok(v)
            }
        }
        Err(e) => {
            let failure = ResolveFailure::of(e.kind());
            fail(std::io::Error::from(e).to_string(), failure)
        }
    }
}

type Cache = Rc<RefCell<HashMap<String, (Answer, Instant)>>>;

/// A worker's resolver: the thread plus a local cache.
pub struct Resolver {
    thread: ResolverThread,
    cache: Cache,
}

impl Resolver {
    pub fn new(thread: ResolverThread) -> Resolver {
        Resolver {
            thread,
            cache: Cache::default(),
        }
    }

    /// The addresses of the name `host`, if the answer comes `within` this long (an IP
    /// literal never gets here: the worker takes
    /// [`Target::ip`](crate::deliver::http1::Target::ip); the system resolver would
    /// answer one anyway). Must run on a monoio runtime with timers: a late answer is
    /// awaited by a task of its own, which caches it.
    pub async fn resolve(&self, host: &str, within: Duration) -> Answer {
        if let Some((answer, until)) = self.cache.borrow().get(host) {
            if *until > Instant::now() {
                return answer.clone();
            }
        }
        let (tx, mut rx) = oneshot::channel();
        let sent = self
            .thread
            .tx
            .send(Query {
                host: host.to_string(),
                reply: tx,
            })
            .is_ok();
        let reply = if !sent {
            None
        } else {
            match monoio::time::timeout(within, &mut rx).await {
                Ok(reply) => reply,
                Err(_) => return self.too_late(host, within, rx),
            }
        };
        let answer = reply.unwrap_or_else(|| {
            Err(ResolveError {
                host: host.to_string(),
                reason: "resolver stopped".into(),
                failure: ResolveFailure::Transient,
            })
        });
        remember(&self.cache, host.to_string(), answer.clone());
        answer
    }
}

impl Resolver {
    /// A look-up that took longer than `within`: its answer, when it comes, is cached by
    /// a task of its own.
    fn too_late(&self, host: &str, within: Duration, rx: oneshot::Receiver<Answer>) -> Answer {
        let (cache, name) = (self.cache.clone(), host.to_string());
        monoio::spawn(async move {
            if let Some(answer) = rx.await {
                remember(&cache, name, answer);
            }
        });
        Err(ResolveError {
            host: host.to_string(),
            reason: format!(
                "no answer within {}",
                crate::config::format_duration(within)
            ),
            failure: ResolveFailure::TimedOut,
        })
    }
}

/// Caches `answer` for its time to live.
fn remember(cache: &Cache, host: String, answer: Answer) {
    let ttl = if answer.is_ok() { TTL } else { NEGATIVE_TTL };
    cache
        .borrow_mut()
        .insert(host, (answer, Instant::now() + ttl));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_no_such_name_is_final() {
        assert_eq!(
            ResolveFailure::of(LookupErrorKind::NoName),
            ResolveFailure::NotFound
        );
        assert_eq!(
            ResolveFailure::of(LookupErrorKind::NoData),
            ResolveFailure::NotFound
        );
        for k in [
            LookupErrorKind::Again,
            LookupErrorKind::Fail,
            LookupErrorKind::System,
            LookupErrorKind::Memory,
            LookupErrorKind::IO,
        ] {
            assert_eq!(ResolveFailure::of(k), ResolveFailure::Transient, "{k:?}");
        }
    }

    #[test]
    fn localhost_names_are_loopback_without_the_network() {
        for h in ["localhost", "LocalHost.", "api.localhost", "a.b.localhost."] {
            assert!(is_special_localhost(h), "{h}");
            assert_eq!(
                lookup(h).unwrap(),
                [
                    "127.0.0.1".parse::<IpAddr>().unwrap(),
                    "::1".parse().unwrap()
                ],
                "{h}"
            );
        }
        for h in [
            "notlocalhost",
            "localhost.example",
            "localhostx",
            "example.com",
        ] {
            assert!(!is_special_localhost(h), "{h}");
        }
    }

    #[test]
    fn invalid_names_fail_at_once_without_the_network() {
        for h in ["x.invalid", "a.b.INVALID", "invalid", "x.invalid."] {
            assert!(is_special_invalid(h), "{h}");
            let e = lookup(h).unwrap_err();
            assert_eq!(e.failure, ResolveFailure::NotFound, "{h}");
        }
        for h in ["notinvalid", "invalid.example", "x.invalidx", "example.com"] {
            assert!(!is_special_invalid(h), "{h}");
        }
    }

    #[test]
    fn a_late_answer_times_out_and_is_cached_when_it_comes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let (open, gate) = crossbeam_channel::bounded::<()>(0);
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        // Answers once the test opens the gate (dropping `open`), at once after that.
        let thread = ResolverThread::with_lookup(1, move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = gate.recv();
            Ok(vec![IpAddr::from([192, 0, 2, 7])])
        });
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        crate::runtime::block_on(driver, async move {
            let r = Resolver::new(thread);
            let e = r
                .resolve("slow.example", Duration::from_millis(50))
                .await
                .unwrap_err();
            assert_eq!(e.failure, ResolveFailure::TimedOut);
            assert_eq!(
                e.to_string(),
                "cannot resolve slow.example: no answer within 50ms"
            );
            assert_eq!(asked.load(Ordering::SeqCst), 1);
            drop(open);
            // Answered now: from the late reply's cache entry, or from a second look-up.
            let v = r
                .resolve("slow.example", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(v, [IpAddr::from([192, 0, 2, 7])]);
            // Either way, the answer is cached now.
            let n = asked.load(Ordering::SeqCst);
            assert!(n <= 2, "{n} look-ups");
            r.resolve("slow.example", Duration::from_millis(1))
                .await
                .unwrap();
            assert_eq!(asked.load(Ordering::SeqCst), n);
        })
        .unwrap();
    }

    #[test]
    fn a_name_that_does_not_answer_holds_up_only_its_own_look_ups() {
        let (open, gate) = crossbeam_channel::bounded::<()>(0);
        let thread = ResolverThread::with_lookup(THREADS, move |host| {
            if host == "stuck.example" {
                let _ = gate.recv();
            }
            Ok(vec![IpAddr::from([192, 0, 2, 8])])
        });
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        crate::runtime::block_on(driver, async move {
            let r = Resolver::new(thread);
            // More attempts than threads ask for the name: they wait for one look-up.
            for _ in 0..2 * THREADS {
                let e = r
                    .resolve("stuck.example", Duration::from_millis(20))
                    .await
                    .unwrap_err();
                assert_eq!(e.failure, ResolveFailure::TimedOut);
            }
            let v = r
                .resolve("quick.example", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(v, [IpAddr::from([192, 0, 2, 8])]);
            drop(open);
        })
        .unwrap();
    }

    #[test]
    fn localhost_resolves_to_loopback() {
        let v = lookup("localhost").unwrap();
        assert!(v.iter().all(|ip| ip.is_loopback()), "{v:?}");
    }
}
