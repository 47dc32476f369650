//! `ricochet send`: streams NDJSON events to a running server, pipelined, and counts
//! the answers.
//!
//! A writer thread copies the input to the socket while this thread reads the acks, so
//! lines are never held back waiting for answers. It must not parse events: the server
//! validates them and answers `err` for bad ones.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// Where to send.
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

/// Counts of lines sent and answers received.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub dup: u64,
    pub err: u64,
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
#[error("{source}")]
pub struct SendError {
    /// Lines written and answers read before the failure.
    pub summary: Summary,
    #[source]
    pub source: std::io::Error,
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
        Err(source) => Err(SendError { summary, source }),
    }
}

/// [`send`], counting into `summary` as it goes.
fn stream(
    target: &Target,
    input: Box<dyn Read + Send>,
    mut on_ack: impl FnMut(&str),
    summary: &mut Summary,
) -> std::io::Result<()> {
    let (reader, writer): (Box<dyn Read>, Box<dyn Write + Send>);
    let shutdown: Box<dyn Fn() + Send>;
    match target {
        Target::Unix(p) => {
            let s = UnixStream::connect(p)?;
            let w = s.try_clone()?;
            let sd = s.try_clone()?;
            shutdown = Box::new(move || {
                let _ = sd.shutdown(Shutdown::Write);
            });
            reader = Box::new(s);
            writer = Box::new(w);
        }
        Target::Tcp(a) => {
            let s = TcpStream::connect(a)?;
            let w = s.try_clone()?;
            let sd = s.try_clone()?;
            shutdown = Box::new(move || {
                let _ = sd.shutdown(Shutdown::Write);
            });
            reader = Box::new(s);
            writer = Box::new(w);
        }
    }
    // Returns the lines it wrote (a line counts once handed to the socket's buffer),
    // and the error that stopped it, if any.
    let pump = std::thread::spawn(move || -> (u64, std::io::Result<()>) {
        let mut out = BufWriter::with_capacity(256 * 1024, writer);
        let mut input = BufReader::with_capacity(256 * 1024, input);
        let mut line = Vec::new();
        let mut sent = 0u64;
        let res = (|| {
            loop {
                line.clear();
                if input.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                out.write_all(&line)?;
                sent += 1;
            }
            out.flush()
        })();
        drop(out);
        shutdown();
        (sent, res)
    });
    let mut acks = BufReader::new(reader);
    let mut line = String::new();
    let read = loop {
        line.clear();
        match acks.read_line(&mut line) {
            Ok(0) => break Ok(()),
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
    let (sent, written) = pump
        .join()
        .map_err(|_| std::io::Error::other("writer thread panicked"))?;
    summary.sent = sent;
    read.and(written)
}
