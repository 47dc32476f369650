//! Delivery: one HTTP/1.1 exchange on a keep-alive connection.
//!
//! Owns the connection a delivery lane keeps (connect, write the request, read and parse
//! the response, decide whether the connection can be reused) and turns what happened
//! into an [`Exchange`] the worker classifies. A request that fails on a reused idle
//! connection before any response byte arrived is sent once more on a fresh connection.
//! It must not decide retries or touch the store.

pub mod dns;
pub mod http1;
pub mod request;
pub mod ssrf;
pub mod tls;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use http1::{Progress, ResponseParser, RetryAfter};

/// Bytes of the response body kept for `success`/`error` matching.
pub const MATCH_LIMIT: usize = 64 * 1024;

/// A kept-alive connection and its reusable buffers.
pub struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    parser: ResponseParser,
    rbuf: Vec<u8>,
    /// False once the server said it will close the connection.
    reusable: bool,
}

/// What one exchange produced.
#[derive(Debug)]
pub enum Exchange {
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Connect, write or read failed, or the response was malformed.
    Failed(String),
}

/// A lane's connection slot.
#[derive(Default)]
pub struct ConnSlot {
    conn: Option<Conn>,
}

impl ConnSlot {
    /// Forgets the connection (after a timeout or an error).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// The body excerpt of the last response.
    pub fn body_excerpt(&self) -> &[u8] {
        self.conn
            .as_ref()
            .map(|c| c.parser.body_excerpt())
            .unwrap_or(&[])
    }

    /// Sends `req` to `addr` and reads the response. `req` is handed back for reuse.
    pub async fn exchange(
        &mut self,
        target: &http1::Target,
        addr: SocketAddr,
        req: Vec<u8>,
    ) -> (Exchange, Vec<u8>) {
        if target.scheme == http1::Scheme::Https {
            return (Exchange::Failed(tls::UNAVAILABLE.to_string()), req);
        }
        let mut req = req;
        for try_no in 0..2 {
            let reused = matches!(&self.conn, Some(c) if c.addr == addr && c.reusable);
            if !reused {
                self.conn = None;
                match TcpStream::connect_addr(addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        self.conn = Some(Conn {
                            stream,
                            addr,
                            parser: ResponseParser::new(MATCH_LIMIT),
                            rbuf: Vec::with_capacity(16 * 1024),
                            reusable: true,
                        });
                    }
                    Err(e) => return (Exchange::Failed(format!("connect {addr}: {e}")), req),
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                unreachable!("connection set above")
            };
            let (res, b) = conn.stream.write_all(req).await;
            req = b;
            let result = match res {
                Err(e) => Err((format!("write: {e}"), true)),
                Ok(_) => read_response(conn).await,
            };
            match result {
                Ok((status, retry_after, keep_alive)) => {
                    if let Some(c) = self.conn.as_mut() {
                        // The excerpt stays readable; the stream is replaced next time.
                        c.reusable = keep_alive;
                    }
                    return (
                        Exchange::Response {
                            status,
                            retry_after,
                        },
                        req,
                    );
                }
                Err((msg, nothing_received)) => {
                    self.conn = None;
                    if reused && nothing_received && try_no == 0 {
                        continue; // a stale idle connection: once more on a fresh one
                    }
                    return (Exchange::Failed(msg), req);
                }
            }
        }
        (Exchange::Failed("connection closed".into()), req)
    }
}

/// Reads one response. Errors carry whether no byte of a response had arrived.
async fn read_response(conn: &mut Conn) -> Result<(u16, Option<Duration>, bool), (String, bool)> {
    conn.parser.reset();
    let mut received = false;
    loop {
        if !conn.rbuf.is_empty() {
            received = true;
            match conn.parser.feed(&conn.rbuf, false) {
                Ok((used, progress)) => {
                    conn.rbuf.drain(..used);
                    if progress == Progress::Done {
                        return Ok(finish(&conn.parser));
                    }
                }
                Err(e) => return Err((format!("bad response: {e}"), false)),
            }
        }
        let buf = reserve(std::mem::take(&mut conn.rbuf));
        let filled = buf.len();
        let (res, b) = conn.stream.read(buf.slice_mut(filled..)).await;
        let mut b = b.into_inner();
        match res {
            Ok(0) => {
                conn.rbuf = b;
                return match conn.parser.eof() {
                    Ok(Progress::Done) => {
                        let (s, ra, _) = finish(&conn.parser);
                        Ok((s, ra, false))
                    }
                    Ok(Progress::NeedMore) | Err(_) => Err((
                        "connection closed before a complete response".into(),
                        !received,
                    )),
                };
            }
            Ok(_) => conn.rbuf = b,
            Err(e) => {
                b.clear();
                conn.rbuf = b;
                return Err((format!("read: {e}"), !received));
            }
        }
    }
}

fn reserve(mut b: Vec<u8>) -> Vec<u8> {
    if b.capacity() - b.len() < 4096 {
        b.reserve(16 * 1024);
    }
    b
}

fn finish(p: &ResponseParser) -> (u16, Option<Duration>, bool) {
    let ra = p.retry_after().map(|r| match r {
        RetryAfter::Delay(d) => d,
        RetryAfter::At(t) => t
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    });
    (p.status(), ra, p.keep_alive())
}
