//! Host name resolution off the workers.
//!
//! Owns a resolver thread (the system resolver blocks, so it never runs on a worker) and
//! each worker's answer cache. Workers ask through [`Resolver::resolve`], which answers
//! IP literals and cached names at once and otherwise awaits the thread's reply. It must
//! not decide whether an address may be used: that is the SSRF guard's job.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::local::oneshot;

/// How long an answer is reused.
const TTL: Duration = Duration::from_secs(30);
/// How long a failed look-up is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Why a name did not resolve.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

type Answer = Result<Vec<IpAddr>, ResolveError>;

struct Query {
    host: String,
    reply: oneshot::Sender<Answer>,
}

/// Cloneable handle to the resolver thread.
#[derive(Clone)]
pub struct ResolverThread {
    tx: crossbeam_channel::Sender<Query>,
}

impl ResolverThread {
    /// Starts the resolver thread.
    pub fn start() -> ResolverThread {
        let (tx, rx) = crossbeam_channel::unbounded::<Query>();
        std::thread::Builder::new()
            .name("ricochet-dns".into())
            .spawn(move || {
                for q in rx {
                    let answer = lookup(&q.host);
                    q.reply.send(answer);
                }
            })
            .expect("spawn resolver thread");
        ResolverThread { tx }
    }
}

fn lookup(host: &str) -> Answer {
    match (host, 0u16).to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if v.is_empty() {
                Err(ResolveError {
                    host: host.to_string(),
                    reason: "no addresses".into(),
                })
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(ResolveError {
            host: host.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// A worker's resolver: the thread plus a local cache.
pub struct Resolver {
    thread: ResolverThread,
    cache: RefCell<HashMap<String, (Answer, Instant)>>,
}

impl Resolver {
    pub fn new(thread: ResolverThread) -> Resolver {
        Resolver {
            thread,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// The addresses of `host` (an IP literal or a name).
    pub async fn resolve(&self, host: &str) -> Answer {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some((answer, until)) = self.cache.borrow().get(host) {
            if *until > Instant::now() {
                return answer.clone();
            }
        }
        let (tx, rx) = oneshot::channel();
        let sent = self
            .thread
            .tx
            .send(Query {
                host: host.to_string(),
                reply: tx,
            })
            .is_ok();
        let answer = if sent { rx.await } else { None }.unwrap_or_else(|| {
            Err(ResolveError {
                host: host.to_string(),
                reason: "resolver stopped".into(),
            })
        });
        let ttl = if answer.is_ok() { TTL } else { NEGATIVE_TTL };
        self.cache
            .borrow_mut()
            .insert(host.to_string(), (answer.clone(), Instant::now() + ttl));
        answer
    }
}
