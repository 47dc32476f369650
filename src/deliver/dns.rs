//! Host name resolution off the workers.
//!
//! Owns the resolver threads (the system resolver blocks, so it never runs on a worker)
//! and each worker's answer cache. Workers ask through [`Resolver::resolve`] for names
//! only (an IP literal is parsed once, with its URL: `http1::Target::ip`); it answers
//! cached names at once and otherwise awaits a thread's reply. A name is asked for once
//! at a time: a worker's attempts that want it while its question is out wait for that
//! answer, and a thread that takes a name another thread is looking up joins that
//! look-up. The threads share one queue; while none is free a question starts another
//! (up to [`MAX_THREADS`]; one idle for [`IDLE_EXIT`] ends, down to [`THREADS`]), so
//! names whose resolver does not answer hold up only their own look-ups. Answers are
//! reused for [`TTL`], failures for [`NEGATIVE_TTL`], whatever the records' own TTLs.
//! It must not decide whether an address may be used: that is the SSRF guard's job.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dns_lookup::{AddrInfoHints, LookupErrorKind, SockType};

use crate::local::oneshot;

/// How long an answer is reused.
const TTL: Duration = Duration::from_secs(30);
/// How long a failed look-up is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Threads asking the system resolver, always running.
const THREADS: usize = 4;
/// Threads at most: a name whose resolver does not answer holds one for the system
/// resolver's own timeouts (5 s, twice, by default), so while every thread is held the
/// next question starts another, and names that answer are not queued behind them.
const MAX_THREADS: usize = 32;
/// A thread beyond [`THREADS`] idle this long ends.
const IDLE_EXIT: Duration = Duration::from_secs(60);

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
pub(crate) fn is_special_localhost(host: &str) -> bool {
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
    pool: Arc<Pool>,
}

/// What the resolver threads share.
struct Pool {
    rx: crossbeam_channel::Receiver<Query>,
    lookup: Box<dyn Fn(&str) -> Answer + Send + Sync>,
    running: Running,
    /// Threads running, and of them those waiting for a question.
    threads: AtomicUsize,
    idle: AtomicUsize,
    /// Threads always running, and at most.
    min: usize,
    max: usize,
    /// [`IDLE_EXIT`]; tests shorten it.
    idle_exit: Duration,
}

impl ResolverThread {
    /// Starts the resolver threads.
    pub fn start() -> ResolverThread {
        match held_lookups() {
            None => Self::with_lookup(THREADS, MAX_THREADS, IDLE_EXIT, lookup),
            Some(gate) => Self::with_lookup(THREADS, MAX_THREADS, IDLE_EXIT, move |host| {
                hold_lookup(&gate, host);
                lookup(host)
            }),
        }
    }

    /// Starts `min` threads answering with `lookup` (the system resolver, or a test's),
    /// and more up to `max` while every one is busy, each ending after `idle_exit`
    /// without a question while more than `min` run.
    fn with_lookup(
        min: usize,
        max: usize,
        idle_exit: Duration,
        lookup: impl Fn(&str) -> Answer + Send + Sync + 'static,
    ) -> ResolverThread {
        let (tx, rx) = crossbeam_channel::unbounded::<Query>();
        let pool = Arc::new(Pool {
            rx,
            lookup: Box::new(lookup),
            running: Running::default(),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            min,
            max: max.max(min),
            idle_exit,
        });
        for _ in 0..min {
            pool.threads.fetch_add(1, Ordering::SeqCst);
            pool.clone().spawn();
        }
        ResolverThread { tx, pool }
    }

    /// Queues a look-up of `host`, answered on `reply`; starts another thread if none is
    /// free to take it. False if the threads are gone.
    fn ask(&self, host: &str, reply: oneshot::Sender<Answer>) -> bool {
        let q = Query {
            host: host.to_string(),
            reply,
        };
        if self.tx.send(q).is_err() {
            return false;
        }
        // Fewer threads free than questions waiting (a burst of new names finds every
        // thread idle, then all of them held by the first few).
        if self.tx.len() > self.pool.idle.load(Ordering::SeqCst) {
            let pool = &self.pool;
            let more = pool
                .threads
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < pool.max).then_some(n + 1)
                })
                .is_ok();
            if more {
                self.pool.clone().spawn();
            }
        }
        true
    }

    /// The resolver threads running now.
    #[cfg(test)]
    fn threads(&self) -> usize {
        self.pool.threads.load(Ordering::SeqCst)
    }
}

impl Pool {
    /// Starts a thread, already counted in `threads`.
    fn spawn(self: Arc<Self>) {
        let started = std::thread::Builder::new()
            .name("ricochet-dns".into())
            .spawn({
                let pool = self.clone();
                move || pool.serve()
            });
        if started.is_err() {
            // The threads running take the question in turn.
            self.threads.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Answers questions until the queue closes, or (a thread beyond `min`) none came
    /// for `idle_exit`.
    fn serve(&self) {
        loop {
            self.idle.fetch_add(1, Ordering::SeqCst);
            let next = self.rx.recv_timeout(self.idle_exit);
            self.idle.fetch_sub(1, Ordering::SeqCst);
            match next {
                Ok(q) => {
                    if let Some(host) = self.running.join(q) {
                        let answer = (self.lookup)(&host);
                        self.running.finish(&host, answer);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let retired = self
                        .threads
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n > self.min).then_some(n - 1)
                        })
                        .is_ok();
                    if retired {
                        return;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.threads.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
        }
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

/// Test hook: `RICOCHET_TEST_HOLD_LOOKUPS=PATH` holds every look-up on its thread until
/// a file at PATH exists (at most a minute), so that a test can act while a delivery
/// waits for its host's addresses. Unset, nothing changes.
fn held_lookups() -> Option<std::path::PathBuf> {
    std::env::var_os("RICOCHET_TEST_HOLD_LOOKUPS").map(Into::into)
}

/// Waits, on a resolver thread, for the test's gate at `gate` ([`held_lookups`]).
fn hold_lookup(gate: &std::path::Path, host: &str) {
    tracing::info!(host, "test hook: look-up held");
    let until = Instant::now() + Duration::from_secs(60);
    while !gate.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
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
    // Checked before the special names: `..localhost` (a placeholder rendered `..` in
    // the host) is no name under `localhost`, and the system's resolver refuses such a
    // name elsewhere.
    if host
        .strip_suffix('.')
        .unwrap_or(host)
        .split('.')
        .any(str::is_empty)
    {
        return fail(
            "a name with an empty label never resolves".into(),
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

type Cache = Rc<RefCell<Answers>>;

/// A worker's answers, each with when it expires. Expired ones are swept out as the
/// map grows (names a template fills in can be new on every delivery), so it holds
/// about the names of the last [`TTL`], not every name ever asked for.
#[derive(Default)]
struct Answers {
    map: HashMap<String, (Answer, Instant)>,
    /// The size at which the next insert sweeps.
    sweep_at: usize,
}

/// The least size at which a cache is swept.
const SWEEP_FROM: usize = 1024;
/// The names a worker has asked the threads for, each with the attempts waiting for it.
type Asked = Rc<RefCell<HashMap<String, Vec<oneshot::Sender<Answer>>>>>;

/// A worker's resolver: the threads plus a local cache.
pub struct Resolver {
    thread: ResolverThread,
    cache: Cache,
    asked: Asked,
}

impl Resolver {
    pub fn new(thread: ResolverThread) -> Resolver {
        Resolver {
            thread,
            cache: Cache::default(),
            asked: Asked::default(),
        }
    }

    /// The addresses of the name `host`, if the answer comes `within` this long (an IP
    /// literal never gets here: the worker takes
    /// [`Target::ip`](crate::deliver::http1::Target::ip); the system resolver would
    /// answer one anyway). Must run on a monoio runtime with timers: a late answer is
    /// awaited by a task of its own, which caches it.
    pub async fn resolve(&self, host: &str, within: Duration) -> Answer {
        if let Some((answer, until)) = self.cache.borrow().map.get(host) {
            if *until > Instant::now() {
                return answer.clone();
            }
        }
        let (tx, mut rx) = oneshot::channel();
        let first = match self.asked.borrow_mut().entry(host.to_string()) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.get_mut().push(tx);
                false
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(vec![tx]);
                true
            }
        };
        if first {
            self.ask(host);
        }
        let fail = |reason: String, failure| ResolveError {
            host: host.to_string(),
            reason,
            failure,
        };
        match monoio::time::timeout(within, &mut rx).await {
            Ok(Some(answer)) => answer,
            Ok(None) => Err(stopped(host)),
            // The answer, when it comes, is cached for the next attempt.
            Err(_) => Err(fail(
                format!(
                    "no answer within {}",
                    crate::config::format_duration(within)
                ),
                ResolveFailure::TimedOut,
            )),
        }
    }

    /// Asks the threads for `host`; a task of its own awaits the answer, caches it and
    /// hands it to every attempt waiting for it then (some may have given up).
    fn ask(&self, host: &str) {
        let (tx, rx) = oneshot::channel();
        let asked = self.thread.ask(host, tx);
        let (cache, waiting, name) = (self.cache.clone(), self.asked.clone(), host.to_string());
        monoio::spawn(async move {
            let answer = match asked {
                true => rx.await,
                false => None,
            };
            let answer = answer.unwrap_or_else(|| Err(stopped(&name)));
            remember(&cache, name.clone(), answer.clone());
            let waiters = waiting.borrow_mut().remove(&name).unwrap_or_default();
            for w in waiters {
                w.send(answer.clone());
            }
        });
    }
}

/// The answer when the resolver threads are gone (the process is stopping).
fn stopped(host: &str) -> ResolveError {
    ResolveError {
        host: host.to_string(),
        reason: "resolver stopped".into(),
        failure: ResolveFailure::Transient,
    }
}

/// Caches `answer` for its time to live.
fn remember(cache: &Cache, host: String, answer: Answer) {
    let ttl = if answer.is_ok() { TTL } else { NEGATIVE_TTL };
    let now = Instant::now();
    let mut c = cache.borrow_mut();
    if c.map.len() >= c.sweep_at.max(SWEEP_FROM) {
        c.map.retain(|_, (_, until)| *until > now);
        // Twice what is left: a sweep costs its size, at most once per as many inserts.
        c.sweep_at = 2 * c.map.len();
    }
    c.map.insert(host, (answer, now + ttl));
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
    fn names_with_an_empty_label_fail_at_once_without_the_network() {
        for h in [
            "...localhost",
            ".localhost",
            "a..localhost",
            "a..example.com",
            ".",
            "localhost..",
        ] {
            let e = lookup(h).unwrap_err();
            assert_eq!(e.failure, ResolveFailure::NotFound, "{h}");
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
        let thread = ResolverThread::with_lookup(1, 1, IDLE_EXIT, move |_| {
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

    /// A look-up that answers `host` with `ip` once the gate opens (`stuck.*` names), at
    /// once otherwise, counting the look-ups of each name.
    type Counts = Arc<std::sync::Mutex<HashMap<String, usize>>>;
    fn gated_lookup(
        gate: crossbeam_channel::Receiver<()>,
    ) -> (Counts, impl Fn(&str) -> Answer + Send + Sync + 'static) {
        let counts = Counts::default();
        let counted = counts.clone();
        let lookup = move |host: &str| {
            *counted.lock().unwrap().entry(host.to_string()).or_default() += 1;
            if host.starts_with("stuck") {
                let _ = gate.recv();
            }
            Ok(vec![IpAddr::from([192, 0, 2, 8])])
        };
        (counts, lookup)
    }

    #[test]
    fn names_that_do_not_answer_hold_up_only_their_own_look_ups() {
        // As many silent names as the threads always running, each asked for by more
        // attempts than there are threads, then a name that answers. With a fixed pool
        // of THREADS threads every one sat in a silent look-up, and each attempt queued a
        // look-up of its own: the name that answers waited behind them all.
        let (open, gate) = crossbeam_channel::bounded::<()>(0);
        let (counts, lookup) = gated_lookup(gate);
        let thread = ResolverThread::with_lookup(THREADS, MAX_THREADS, IDLE_EXIT, lookup);
        let pool = thread.clone();
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        crate::runtime::block_on(driver, async move {
            let r = Resolver::new(thread);
            for n in 0..THREADS {
                for _ in 0..2 * THREADS {
                    let e = r
                        .resolve(&format!("stuck{n}.example"), Duration::from_millis(5))
                        .await
                        .unwrap_err();
                    assert_eq!(e.failure, ResolveFailure::TimedOut);
                }
            }
            let v = r
                .resolve("quick.example", Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(v, [IpAddr::from([192, 0, 2, 8])]);
            assert!(pool.threads() > THREADS, "{} threads", pool.threads());
            // Each silent name was asked for once, however many attempts wanted it.
            let counts = counts.lock().unwrap().clone();
            assert_eq!(counts.len(), THREADS + 1, "{counts:?}");
            assert!(counts.values().all(|&n| n == 1), "{counts:?}");
            drop(open);
        })
        .unwrap();
    }

    #[test]
    fn attempts_waiting_for_a_name_share_one_look_up_and_its_answer() {
        let (open, gate) = crossbeam_channel::bounded::<()>(0);
        let (counts, lookup) = gated_lookup(gate);
        let thread = ResolverThread::with_lookup(1, 4, IDLE_EXIT, lookup);
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        crate::runtime::block_on(driver, async move {
            let r = Rc::new(Resolver::new(thread));
            let waiting: Vec<_> = (0..20)
                .map(|_| {
                    let r = r.clone();
                    monoio::spawn(async move {
                        r.resolve("stuck.example", Duration::from_secs(10)).await
                    })
                })
                .collect();
            // Let every task ask before the answer comes.
            for _ in 0..3 {
                crate::local::yield_now().await;
            }
            drop(open);
            for w in waiting {
                assert_eq!(w.await.unwrap(), [IpAddr::from([192, 0, 2, 8])]);
            }
            assert_eq!(counts.lock().unwrap()["stuck.example"], 1);
        })
        .unwrap();
    }

    #[test]
    fn threads_started_for_a_busy_spell_end_when_idle() {
        let (open, gate) = crossbeam_channel::bounded::<()>(0);
        let (_, lookup) = gated_lookup(gate);
        let thread = ResolverThread::with_lookup(1, 3, Duration::from_millis(50), lookup);
        let pool = thread.clone();
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        crate::runtime::block_on(driver, async move {
            let r = Resolver::new(thread);
            for n in 0..5 {
                let name = format!("stuck{n}.example");
                let _ = r.resolve(&name, Duration::from_millis(5)).await;
            }
            // Never more than the most.
            assert_eq!(pool.threads(), 3);
            drop(open);
            let deadline = Instant::now() + Duration::from_secs(10);
            while pool.threads() > 1 && Instant::now() < deadline {
                monoio::time::sleep(Duration::from_millis(10)).await; // a bounded poll
            }
            assert_eq!(pool.threads(), 1);
        })
        .unwrap();
    }

    #[test]
    fn expired_answers_are_swept_out_as_the_cache_grows() {
        let cache = Cache::default();
        let stale = Instant::now() - Duration::from_secs(1);
        for n in 0..SWEEP_FROM {
            let answer = Ok(vec![IpAddr::from([192, 0, 2, 1])]);
            cache
                .borrow_mut()
                .map
                .insert(format!("old{n}"), (answer, stale));
        }
        for n in 0..10 * SWEEP_FROM {
            remember(
                &cache,
                format!("new{n}"),
                Ok(vec![IpAddr::from([192, 0, 2, 2])]),
            );
        }
        let c = cache.borrow();
        assert!(c.map.keys().all(|k| k.starts_with("new")));
        assert_eq!(c.map.len(), 10 * SWEEP_FROM);
        drop(c);
        // Once expired, they go too, at the next sweep.
        for (_, until) in cache.borrow_mut().map.values_mut() {
            *until = stale;
        }
        for n in 0..=10 * SWEEP_FROM {
            remember(
                &cache,
                format!("newer{n}"),
                Ok(vec![IpAddr::from([192, 0, 2, 3])]),
            );
        }
        assert!(cache.borrow().map.len() <= 10 * SWEEP_FROM + 1);
        assert!(cache.borrow().map.keys().all(|k| k.starts_with("newer")));
    }

    /// A host in one of the numeric forms the system resolver reads as an IPv4 address
    /// (inet_aton's: `127.1`, `2130706433`, hex, octal) is no IP literal to the URL
    /// parser (today): it reaches the resolver as a name, which answers the address
    /// (without asking the network) that the SSRF guard then judges and the connect
    /// uses. So the guard sees what is connected to, however the address was written.
    #[test]
    fn numeric_host_forms_resolve_to_the_address_the_guard_judges() {
        use crate::deliver::{http1::parse_url, ssrf::is_blocked};
        for (host, ip, blocked) in [
            ("127.1", "127.0.0.1", true),
            ("2130706433", "127.0.0.1", true),
            ("0x7f000001", "127.0.0.1", true),
            ("0x7f.1", "127.0.0.1", true),
            ("0177.0.0.1", "127.0.0.1", true),
            ("127.0.0.01", "127.0.0.1", true),
            ("0", "0.0.0.0", true),
            ("0300.0250.1.1", "192.168.1.1", true),
            ("10.0x1", "10.0.0.1", true),
            ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254", true),
            ("2852039166", "169.254.169.254", true),
            // Octal: 010 is 8, the address connected to and judged alike.
            ("010.8.8.8", "8.8.8.8", false),
            ("0x08080808", "8.8.8.8", false),
        ] {
            let t = parse_url(format!("http://{host}/").as_bytes()).unwrap();
            // The worker's choice (`Worker::addresses`): an IP literal as parsed, else
            // what the name resolves to.
            let connected = match t.ip {
                Some(ip) => vec![ip],
                None => lookup(&t.host).unwrap(),
            };
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(connected, [ip], "{host}");
            assert_eq!(is_blocked(ip), blocked, "{host}");
        }
    }

    #[test]
    fn localhost_resolves_to_loopback() {
        let v = lookup("localhost").unwrap();
        assert!(v.iter().all(|ip| ip.is_loopback()), "{v:?}");
    }
}
