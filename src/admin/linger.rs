//! Closing an admin connection so that its client reads the last answer (RFC 9112
//! §9.6, a staged close): the writing side is shut right after the answer (the client
//! reads it, then the end), and what the client still sends is read and dropped until
//! it closes, for a bounded time and byte count, by one thread for every such
//! connection.
//!
//! Closed at once, a socket with bytes unread (a refused request's rest: an over-long
//! head, a body after a 400 or 411, requests pipelined after `Connection: close`)
//! sends a reset, and the client's kernel drops the answer it had not read yet: the
//! client saw `ECONNRESET` instead of the 431 (10 of 10 clients that wrote a 200 KB head,
//! then read). The connection's own thread and slot are free as soon as it is handed
//! over, and the accept thread hands over its 503s without waiting on them: at most
//! [`LINGER_MAX`] connections linger at once, one more closes the one lingering longest
//! (its client has had the longest to read its answer).
//!
//! Must not block whoever hands a connection over: a lock held for a push only.

use std::collections::VecDeque;
use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Connections lingering at once (descriptors beyond the API's [`super::MAX_CONNS`],
/// counted in the reserve: `fdlimit`).
pub const LINGER_MAX: usize = 8;
/// How long a connection lingers at most.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(2);
/// Bytes read and dropped from a lingering connection at most (more when its caller
/// asks: the rest of a body refused 413): a request head and a body at their limits.
const LINGER_BYTES: usize = super::MAX_HEAD + super::MAX_BODY;
/// How long the thread waits on the connections it has before it looks for new ones
/// (their bytes wait in the kernel meanwhile).
const TICK: Duration = Duration::from_millis(20);
/// Bytes read from one connection per round: one that streams cannot hold the thread
/// from the others.
const ROUND_BYTES: usize = 256 << 10;

struct Lingering {
    id: u64,
    conn: TcpStream,
    until: Instant,
    /// Bytes still to read and drop before closing anyway.
    left: usize,
}

#[derive(Default)]
struct Held {
    next_id: u64,
    conns: VecDeque<Lingering>,
}

#[derive(Default)]
struct Shared {
    held: Mutex<Held>,
    /// Signalled when a connection comes to an empty list.
    came: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle connections are closed through ([`Linger::close`]).
#[derive(Clone)]
pub(super) struct Linger(Arc<Shared>);

impl Linger {
    /// Starts the thread that reads lingering connections.
    pub(super) fn start() -> std::io::Result<Linger> {
        let shared = Arc::new(Shared::default());
        let mine = shared.clone();
        std::thread::Builder::new()
            .name("ricochet-linger".into())
            .spawn(move || run(&mine))?;
        Ok(Linger(shared))
    }

    /// Closes `conn`, whose last answer is written: its writing side now, the rest once
    /// its client closes, after [`LINGER_TIME`], or once `discard` bytes (at least
    /// [`LINGER_BYTES`]) are read, whichever comes first. Never blocks.
    pub(super) fn close(&self, conn: TcpStream, discard: usize) {
        // The answer ends with a FIN: a client reading to the end closes its side then.
        let _ = conn.shutdown(Shutdown::Write);
        if conn.set_nonblocking(true).is_err() {
            return;
        }
        let mut g = self.0.lock();
        if g.conns.len() >= LINGER_MAX {
            // Closed under the lock: the thread reads only what is listed, under it.
            g.conns.pop_front();
        }
        g.next_id += 1;
        let id = g.next_id;
        g.conns.push_back(Lingering {
            id,
            conn,
            until: Instant::now() + LINGER_TIME,
            left: discard.max(LINGER_BYTES),
        });
        if g.conns.len() == 1 {
            self.0.came.notify_one();
        }
    }

    /// The clients of the connections lingering now, longest first (tests).
    #[cfg(test)]
    pub(super) fn peers(&self) -> Vec<std::net::SocketAddr> {
        let g = self.0.lock();
        g.conns
            .iter()
            .filter_map(|l| l.conn.peer_addr().ok())
            .collect()
    }
}

fn run(shared: &Shared) {
    let mut chunk = vec![0u8; 16 << 10];
    let mut polled: Vec<(u64, libc::pollfd)> = Vec::new();
    let mut g = shared.lock();
    loop {
        let now = Instant::now();
        g.conns.retain(|l| l.until > now);
        let Some(first_end) = g.conns.iter().map(|l| l.until).min() else {
            g = shared.came.wait(g).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        polled.clear();
        polled.extend(g.conns.iter().map(|l| {
            let fd = libc::pollfd {
                fd: l.conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            (l.id, fd)
        }));
        drop(g);
        let wait = first_end.saturating_duration_since(now).min(TICK);
        let mut fds: Vec<libc::pollfd> = polled.iter().map(|(_, fd)| *fd).collect();
        // SAFETY: `fds` is an array of `fds.len()` pollfds. A descriptor closed meanwhile
        // (a connection `close` pushed out) only makes poll report it, or the socket
        // that took its number: nothing is read but what is still listed, by its id.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().max(1) as libc::c_int,
            )
        };
        g = shared.lock();
        if ready <= 0 {
            continue;
        }
        for ((id, _), fd) in polled.iter().zip(&fds) {
            if fd.revents == 0 {
                continue;
            }
            if let Some(i) = g.conns.iter().position(|l| l.id == *id) {
                if !read_some(&mut g.conns[i], &mut chunk) {
                    g.conns.remove(i);
                }
            }
        }
    }
}

/// Reads and drops what `l`'s client has sent, up to [`ROUND_BYTES`]; whether it is to
/// linger on (false once its client closed or failed, or its bytes are all read).
fn read_some(l: &mut Lingering, chunk: &mut [u8]) -> bool {
    let mut round = 0;
    while round < ROUND_BYTES {
        match l.conn.read(chunk) {
            Ok(0) => return false,
            Ok(n) => {
                round += n;
                l.left = l.left.saturating_sub(n);
                if l.left == 0 {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A connected pair: the client's end and the server's.
    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (c, l.accept().unwrap().0)
    }

    #[test]
    fn a_client_still_sending_reads_the_answer_then_the_end() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let linger = Linger::start().unwrap();
        let (mut c, mut s) = pair(&l);
        // The server answers after a little of the request; the client sends 300 KB
        // more (more than the socket buffers hold, so the server must read), then reads.
        c.write_all(b"POST / HTTP/1.1\r\n").unwrap();
        s.read_exact(&mut [0u8; 17]).unwrap();
        s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        linger.close(s, 0);
        c.write_all(&vec![b'a'; 300 << 10])
            .expect("the rest is read, not refused");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .expect("the answer, then the end; no reset");
        assert!(got.starts_with(b"HTTP/1.1 400 "), "{got:?}");
    }

    #[test]
    fn lingering_is_bounded_in_connections_time_and_bytes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let linger = Linger::start().unwrap();
        // More than LINGER_MAX clients that never close: the oldest are closed.
        let clients: Vec<TcpStream> = (0..LINGER_MAX + 3)
            .map(|_| {
                let (c, s) = pair(&l);
                linger.close(s, 0);
                c
            })
            .collect();
        let newest: Vec<_> = clients[3..]
            .iter()
            .map(|c| c.local_addr().unwrap())
            .collect();
        assert_eq!(linger.peers(), newest, "the three oldest were closed");
        // A client that sends more than it may: closed once that much is read.
        let (mut c, s) = pair(&l);
        linger.close(s, 0);
        let sent = std::thread::spawn(move || {
            let chunk = vec![b'a'; 64 << 10];
            let mut sent = 0;
            while c.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let sent = sent.join().unwrap();
        // Buffers hold some more, short of the 64 KiB write that failed.
        assert!(
            (LINGER_BYTES - (64 << 10)..LINGER_BYTES + (16 << 20)).contains(&sent),
            "{sent}"
        );
        // And all are gone after LINGER_TIME.
        let start = Instant::now();
        while !linger.peers().is_empty() {
            assert!(start.elapsed() < LINGER_TIME * 3, "{:?}", linger.peers());
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(clients);
    }
}
