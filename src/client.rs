//! `ricochet send`: streams NDJSON events to a running server, pipelined, and counts
//! the answers.
//!
//! A writer thread copies the input to the socket while this thread reads the acks, so
//! lines are never held back waiting for answers. It must not parse events: the server
//! validates them and answers `err` for bad ones.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Where to send.
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "the socket {}", p.display()),
            Target::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Counts of lines sent and answers received.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub dup: u64,
    pub err: u64,
}

impl Summary {
    /// Answers read, of every kind.
    pub fn answered(&self) -> u64 {
        self.ok + self.dup + self.err
    }

    /// Lines written that got no answer (the last ones sent): the connection ended
    /// before the server answered them, so they may or may not have been accepted.
    pub fn unanswered(&self) -> u64 {
        self.sent.saturating_sub(self.answered())
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} ok {} dup {} err {}",
            self.sent, self.ok, self.dup, self.err
        )
    }
}

/// A send that broke off, with what was counted until then.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendError {
    /// Lines written and answers read before the failure.
    pub summary: Summary,
    pub error: std::io::Error,
}

/// Sends every line of `input`; `on_ack` sees each answer line.
pub fn send(
    target: &Target,
    input: Box<dyn Read + Send>,
    on_ack: impl FnMut(&str),
) -> Result<Summary, SendError> {
    let mut summary = Summary::default();
    match stream(target, input, on_ack, &mut summary) {
        Ok(()) => Ok(summary),
        Err(error) => Err(SendError { summary, error }),
    }
}

/// Lines gathered before a write (fewer when the input has nothing more at hand).
const CHUNK: usize = 256 * 1024;

/// [`send`], counting into `summary` as it goes.
fn stream(
    target: &Target,
    input: Box<dyn Read + Send>,
    mut on_ack: impl FnMut(&str),
    summary: &mut Summary,
) -> std::io::Result<()> {
    let (reader, writer): (Box<dyn Read>, Box<dyn Write + Send>);
    let shutdown: Arc<dyn Fn(Shutdown) + Send + Sync>;
    let cannot_connect = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot connect to {target}: {e}"))
    };
    match target {
        Target::Unix(p) => {
            let s = UnixStream::connect(p).map_err(cannot_connect)?;
            let w = s.try_clone()?;
            let sd = s.try_clone()?;
            shutdown = Arc::new(move |how| {
                let _ = sd.shutdown(how);
            });
            reader = Box::new(s);
            writer = Box::new(w);
        }
        Target::Tcp(a) => {
            let s = TcpStream::connect(a).map_err(cannot_connect)?;
            let w = s.try_clone()?;
            let sd = s.try_clone()?;
            shutdown = Arc::new(move |how| {
                let _ = sd.shutdown(how);
            });
            reader = Box::new(s);
            writer = Box::new(w);
        }
    }
    // Lines whose newline the socket took, and whether the input is all written.
    let sent = Arc::new(AtomicU64::new(0));
    let input_done = Arc::new(AtomicBool::new(false));
    let pump = {
        let (sent, input_done, shutdown) = (sent.clone(), input_done.clone(), shutdown.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let res = pump(input, writer, &sent);
            if res.is_ok() {
                input_done.store(true, Ordering::SeqCst);
            }
            shutdown(Shutdown::Write);
            res
        })
    };
    let mut acks = BufReader::new(reader);
    let mut line = String::new();
    let read = loop {
        line.clear();
        match acks.read_line(&mut line) {
            Ok(0) => break Ok(()),
            Ok(_) if !line.ends_with('\n') => {
                // The connection ended inside an answer: no answer, not counted.
                break Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the connection ended inside an answer ({:?})", line),
                ));
            }
            Ok(_) => {}
            Err(e) => break Err(e),
        }
        let l = line.trim_end();
        match l.split(' ').next() {
            Some("ok") => summary.ok += 1,
            Some("dup") => summary.dup += 1,
            _ => summary.err += 1,
        }
        on_ack(l);
    };
    // The writer is done (its error, if any, says why), or finishing: it wrote all the
    // input before the server could see its end. Otherwise the connection broke (the
    // server stopped, say) while the writer may wait for input that never comes: it
    // is not waited for.
    let res = if input_done.load(Ordering::SeqCst) || pump.is_finished() {
        let written = pump
            .join()
            .map_err(|_| std::io::Error::other("writer thread panicked"))?;
        summary.sent = sent.load(Ordering::SeqCst);
        read.and(written)
    } else {
        shutdown(Shutdown::Both);
        // Not joined: the writer may not have counted its last write yet, which the
        // server read and answered (`sent 20989 ok 22710`): every line answered was
        // sent.
        summary.sent = sent.load(Ordering::SeqCst).max(summary.answered());
        read.and(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the server closed the connection before every line was sent",
        )))
    };
    let answered = summary.answered();
    if res.is_ok() && answered > summary.sent {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{answered} answers to {} lines: the other end does not speak the line protocol",
                summary.sent
            ),
        ));
    }
    res
}

/// Copies `input`'s non-blank lines to `out`, each ending in `\n`, in chunks of up to
/// [`CHUNK`] bytes: a chunk goes out when full or when the input has nothing more at
/// hand (a slow producer's lines are not held back). Counts into `sent` every line
/// whose newline the socket took.
fn pump(
    input: Box<dyn Read + Send>,
    mut out: Box<dyn Write + Send>,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut input = BufReader::with_capacity(CHUNK, input);
    let mut chunk = Vec::with_capacity(CHUNK + 4096);
    let mut line = Vec::new();
    loop {
        line.clear();
        let eof = input.read_until(b'\n', &mut line)? == 0;
        if !eof && !line.iter().all(|b| b.is_ascii_whitespace()) {
            chunk.extend_from_slice(&line);
            if chunk.last() != Some(&b'\n') {
                chunk.push(b'\n');
            }
        }
        if eof || chunk.len() >= CHUNK || input.buffer().is_empty() {
            write_counted(&mut out, &chunk, sent)?;
            chunk.clear();
        }
        if eof {
            return out.flush();
        }
    }
}

/// Writes all of `buf`, adding to `sent` the newlines each write took.
fn write_counted(out: &mut dyn Write, mut buf: &[u8], sent: &AtomicU64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match out.write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let lines = memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
                sent.fetch_add(lines, Ordering::SeqCst);
                buf = &buf[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Sends `lines` to a fake server that reads everything (so its close is no reset)
    /// and then answers `answers`; returns the error and the answers seen.
    fn against(lines: &[u8], answers: &'static [u8]) -> (SendError, Vec<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            s.write_all(answers).unwrap();
        });
        let input = Box::new(std::io::Cursor::new(lines.to_vec()));
        let mut seen = Vec::new();
        let err = send(&Target::Tcp(addr.to_string()), input, |a| {
            seen.push(a.to_string())
        })
        .unwrap_err();
        server.join().unwrap();
        (err, seen)
    }

    #[test]
    fn an_answer_cut_off_by_the_close_is_not_counted() {
        // One and a half answers.
        let (err, seen) = against(b"{}\n{}\n{}\n", b"ok a 0\nok b");
        assert_eq!(seen, ["ok a 0"]);
        assert_eq!((err.summary.ok, err.summary.err), (1, 0));
        assert!(
            err.error.to_string().contains("inside an answer"),
            "{}",
            err.error
        );
    }

    #[test]
    fn more_answers_than_lines_is_an_error() {
        let (err, _) = against(b"{}\n", b"ok a 0\nok b 0\nok c 0\n");
        assert_eq!((err.summary.sent, err.summary.ok), (1, 3));
        assert!(
            err.error.to_string().starts_with("3 answers to 1 lines"),
            "{}",
            err.error
        );
    }

    #[test]
    fn a_failed_connect_names_its_target() {
        let input = Box::new(std::io::empty());
        let err = send(&Target::Unix("/nonexistent/r.sock".into()), input, |_| {}).unwrap_err();
        assert_eq!(
            err.error.to_string(),
            "cannot connect to the socket /nonexistent/r.sock: No such file or directory (os error 2)"
        );
    }
}
