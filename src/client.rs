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

use crate::ingest::BOM;

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
    /// The writer was still writing when the connection broke: lines after the
    /// `sent` ones may have reached the server too.
    pub sent_at_least: bool,
    pub error: std::io::Error,
}

/// Where a producer resumes after a send, if anywhere: the answers came in order, so
/// every line from the first unanswered one on (sent or not) is to be sent again.
/// `broke`: the connection broke off; `sent_exact`: `summary.sent` counts every line
/// the connection took (after a break the writer may still have been writing).
pub fn resume_advice(summary: &Summary, broke: bool, sent_exact: bool) -> Option<String> {
    if summary.answered() > summary.sent {
        // More answers than lines: not the line protocol, no place to resume.
        return None;
    }
    let from = summary.answered() + 1;
    let n = summary.unanswered();
    if broke && sent_exact && n == 0 {
        // Nothing is in doubt: the lines from there on never left.
        return Some(format!(
            "the input's non-blank lines from number {from} on were not sent; send them \
             from there"
        ));
    }
    if !broke && n == 0 {
        return None;
    }
    let sent = match (sent_exact, n) {
        (true, n) => format!("{n} of them were sent"),
        (false, 0) => "some of them may have been sent".to_string(),
        (false, n) => format!("at least {n} of them were sent"),
    };
    Some(format!(
        "no answer to the input's non-blank lines from number {from} on ({sent}): they may \
         or may not have been accepted; send them again from there (a line whose id was \
         accepted answers `dup`)"
    ))
}

/// Sends every line of `input`; `on_ack` sees each answer line.
pub fn send(
    target: &Target,
    input: Box<dyn Read + Send>,
    on_ack: impl FnMut(&str),
) -> Result<Summary, SendError> {
    let mut summary = Summary::default();
    let mut sent_at_least = false;
    match stream(target, input, on_ack, &mut summary, &mut sent_at_least) {
        Ok(()) => Ok(summary),
        Err(error) => Err(SendError {
            summary,
            sent_at_least,
            error,
        }),
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
    sent_at_least: &mut bool,
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
    // Lines whose newline the socket took, whether the input is all written, and
    // whether reading it failed (set before the writer shuts the socket's writing side,
    // so the reader, seeing the server's close that follows, knows the input ended the
    // send and waits for the writer's error rather than blame the connection).
    let sent = Arc::new(AtomicU64::new(0));
    let input_done = Arc::new(AtomicBool::new(false));
    let input_failed = Arc::new(AtomicBool::new(false));
    let input = Box::new(Watched {
        inner: input,
        failed: input_failed.clone(),
    });
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
    // input before the server could see its end, or reading the input failed. Otherwise
    // the connection broke (the server stopped, say) while the writer may wait for
    // input that never comes: it is not waited for.
    let res = if input_done.load(Ordering::SeqCst)
        || input_failed.load(Ordering::SeqCst)
        || pump.is_finished()
    {
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
        *sent_at_least = true;
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
/// hand (a slow producer's lines are not held back). A line goes out in pieces as it is
/// read, so a line of any length costs a chunk or two of memory (the server answers
/// one over its `max_line_bytes` with `err too_large`, and gives a blank one, however
/// long, no answer). Counts into `sent` every non-blank line whose newline the socket
/// took.
///
/// What the server sees as a connection's first line is the input's first line: the
/// server drops a byte order mark before it (and then judges it blank or not), so a
/// blank first line is sent as a bare newline, uncounted, rather than dropped, which
/// would make the next line the first (its mark dropped, where the server would have
/// refused it).
fn pump(
    mut input: Box<dyn Read + Send>,
    out: Box<dyn Write + Send>,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut out = Counted::new(out, sent);
    let mut buf = vec![0u8; CHUNK];
    // The current line's leading whitespace (and a first line's mark), held until the
    // line is known not to be blank; sent on, uncounted, once it would pass a chunk.
    let mut lead = Vec::new();
    let mut lead_sent = false;
    let mut in_line = false;
    let mut first = true;
    // The input's first bytes, looked at for a byte order mark.
    let mut head = 0usize;
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if first && (1..BOM.len()).contains(&head) {
                // The input ended inside what began as a mark: text, not blank.
                out.push(&lead);
                in_line = true;
            }
            if in_line {
                out.end_line(true);
            } else if lead_sent {
                out.end_line(false);
            }
            out.write_all()?;
            return out.flush();
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest);
            let part = &rest[..end.unwrap_or(rest.len())];
            // A first line's mark (possibly split across reads) is held as its lead; a
            // part of one that the next byte does not complete is the line's own text.
            let mut body = part;
            if first && head < BOM.len() {
                while head < BOM.len() && body.first() == Some(&BOM[head]) {
                    lead.push(BOM[head]);
                    body = &body[1..];
                    head += 1;
                }
                if head < BOM.len() && (!body.is_empty() || end.is_some()) {
                    if head > 0 {
                        out.push(&lead);
                        lead.clear();
                        in_line = true;
                    }
                    head = BOM.len();
                }
            }
            if in_line {
                out.push(body);
            } else if body.iter().any(|&b| !crate::ingest::is_blank_byte(b)) {
                out.push(&lead);
                out.push(body);
                lead.clear();
                in_line = true;
            } else if lead_sent {
                out.push(body);
            } else {
                lead.extend_from_slice(body);
                if lead.len() >= CHUNK {
                    // Long whitespace: on to the server, whose answer (none if the line
                    // stays blank) this need not guess.
                    out.push(&lead);
                    lead.clear();
                    lead_sent = true;
                }
            }
            match end {
                Some(at) => {
                    if in_line {
                        out.end_line(true);
                    } else if lead_sent || first {
                        // Blank, and so for the server, which does not answer it.
                        out.end_line(false);
                    }
                    lead.clear();
                    (in_line, lead_sent, first) = (false, false, false);
                    head = BOM.len();
                    rest = &rest[at + 1..];
                }
                None => rest = &[],
            }
            if out.pending() >= CHUNK {
                out.write_all()?;
            }
        }
        // The input has nothing more at hand for now: what is gathered goes out.
        out.write_all()?;
    }
}

/// The input of a [`send`], noting in `failed` that a read failed before the error
/// reaches [`pump`].
struct Watched {
    inner: Box<dyn Read + Send>,
    failed: Arc<AtomicBool>,
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let res = self.inner.read(buf);
        if res
            .as_ref()
            .is_err_and(|e| e.kind() != std::io::ErrorKind::Interrupted)
        {
            self.failed.store(true, Ordering::SeqCst);
        }
        res
    }
}

/// An input that names itself in its read errors (`cannot read events.ndjson: Is a
/// directory (os error 21)`): a file that opens but cannot be read, a disk error
/// midway, is said to be the input's fault, not the connection's.
pub struct Named<R> {
    inner: R,
    name: String,
}

impl<R> Named<R> {
    pub fn new(inner: R, name: impl Into<String>) -> Named<R> {
        Named {
            inner,
            name: name.into(),
        }
    }
}

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::Interrupted {
                e
            } else {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", self.name))
            }
        })
    }
}

/// The bytes [`pump`] gathers for the socket, and which of their newlines end a line the
/// server answers: `sent` counts those once the socket has taken them.
struct Counted<'a> {
    out: Box<dyn Write + Send>,
    sent: &'a AtomicU64,
    buf: Vec<u8>,
    /// Offsets in `buf` of the newlines that count, in order.
    ends: std::collections::VecDeque<usize>,
}

impl<'a> Counted<'a> {
    fn new(out: Box<dyn Write + Send>, sent: &'a AtomicU64) -> Counted<'a> {
        Counted {
            out,
            sent,
            buf: Vec::with_capacity(2 * CHUNK),
            ends: std::collections::VecDeque::new(),
        }
    }

    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Ends the line with a newline, counted if the server answers the line.
    fn end_line(&mut self, counts: bool) {
        if counts {
            self.ends.push_back(self.buf.len());
        }
        self.buf.push(b'\n');
    }

    fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything gathered, counting the lines whose newline each write took.
    fn write_all(&mut self) -> std::io::Result<()> {
        let mut done = 0;
        while done < self.buf.len() {
            match self.out.write(&self.buf[done..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    let mut lines = 0;
                    while self.ends.front().is_some_and(|&e| e < done) {
                        self.ends.pop_front();
                        lines += 1;
                    }
                    self.sent.fetch_add(lines, Ordering::SeqCst);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake server for one connection: it reads everything (so its close is no
    /// reset), then writes what `answer` makes of it, and closes.
    fn fake_server(
        answer: impl FnOnce(&[u8]) -> Vec<u8> + Send + 'static,
    ) -> (Target, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            s.write_all(&answer(&all)).unwrap();
        });
        (Target::Tcp(addr.to_string()), server)
    }

    /// Sends `lines` to a fake server that answers `answers`; returns the error and the
    /// answers seen.
    fn against(lines: &[u8], answers: &'static [u8]) -> (SendError, Vec<String>) {
        let (target, server) = fake_server(|_| answers.to_vec());
        let input = Box::new(std::io::Cursor::new(lines.to_vec()));
        let mut seen = Vec::new();
        let err = send(&target, input, |a| seen.push(a.to_string())).unwrap_err();
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
    fn resume_advice_claims_nothing_unsent_that_may_have_been_written() {
        let s = |sent, ok| Summary {
            sent,
            ok,
            dup: 0,
            err: 0,
        };
        assert_eq!(resume_advice(&s(5, 5), false, true), None);
        assert_eq!(resume_advice(&s(3, 5), true, true), None);
        let advice = |sum, broke, exact| resume_advice(&sum, broke, exact).unwrap();
        assert!(advice(s(5, 5), true, true)
            .starts_with("the input's non-blank lines from number 6 on were not sent"));
        // The writer was still writing: what it wrote last was not counted.
        let a = advice(s(5, 5), true, false);
        assert!(a.starts_with("no answer to the input's non-blank lines from number 6 on (some of them may have been sent): they may or may not"), "{a}");
        let a = advice(s(7, 5), true, false);
        assert!(
            a.contains("from number 6 on (at least 2 of them were sent)"),
            "{a}"
        );
        let a = advice(s(7, 5), false, true);
        assert!(a.contains("from number 6 on (2 of them were sent)"), "{a}");
    }

    /// Input handed out `step` bytes per read.
    struct Trickle(std::io::Cursor<Vec<u8>>, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    /// Records every write it is given.
    #[derive(Clone, Default)]
    struct Writes(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);
    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn pumped(input: &[u8], step: usize) -> (Vec<Vec<u8>>, u64) {
        let out = Writes::default();
        let sent = AtomicU64::new(0);
        let input = Box::new(Trickle(std::io::Cursor::new(input.to_vec()), step));
        pump(input, Box::new(out.clone()), &sent).unwrap();
        let writes = out.0.lock().unwrap().clone();
        (writes, sent.load(Ordering::SeqCst))
    }

    #[test]
    fn blank_lines_are_dropped_however_the_reads_split_them() {
        // The first line is blank: a bare newline, uncounted, for the server's first
        // line (below); the others are dropped.
        let input = b"  \t\r\n{\"a\":1}\r\n\n \x0c\n   \t  {}\n\t\t\n{\"last\":2}";
        let want = b"\n{\"a\":1}\r\n \x0c\n   \t  {}\n{\"last\":2}\n";
        for step in [1, 2, 3, 5, 8, 1000] {
            let (writes, sent) = pumped(input, step);
            assert_eq!(writes.concat(), want, "read {step} bytes at a time");
            assert_eq!(sent, 4);
        }
    }

    #[test]
    fn the_server_s_first_line_is_the_input_s_first_line() {
        // The server drops a mark before a connection's first line, and then judges it:
        // the same bytes reach it, and only lines it answers are counted.
        for (input, want, lines) in [
            (&b"\xef\xbb\xbf\n{}\n"[..], &b"\n{}\n"[..], 1),
            (b"\xef\xbb\xbf \t\n{}\n", b"\n{}\n", 1),
            (b"\xef\xbb\xbf{\"a\":1}\n", b"\xef\xbb\xbf{\"a\":1}\n", 1),
            // A second mark is the line's text (`err invalid` at the server).
            (
                b"\xef\xbb\xbf\xef\xbb\xbf\n{}\n",
                b"\xef\xbb\xbf\xef\xbb\xbf\n{}\n",
                2,
            ),
            // Not first: a mark is text.
            (b"\n\xef\xbb\xbf{}\n", b"\n\xef\xbb\xbf{}\n", 1),
            (b" \r\n\xef\xbb\xbf\n", b"\n\xef\xbb\xbf\n", 1),
            // Part of a mark is text too.
            (b"\xef\xbb{}\n", b"\xef\xbb{}\n", 1),
            (b"\xef\xbb\n{}\n", b"\xef\xbb\n{}\n", 2),
            (b"\xef\xbb", b"\xef\xbb\n", 1),
            (b"\xef", b"\xef\n", 1),
        ] {
            for step in [1, 2, 3, 1000] {
                let (writes, sent) = pumped(input, step);
                assert_eq!(
                    (writes.concat(), sent),
                    (want.to_vec(), lines),
                    "{input:?}, step {step}"
                );
            }
        }
    }

    #[test]
    fn long_whitespace_goes_out_in_pieces_too() {
        // 3 MiB of it: blank (no answer, not counted), then leading an event.
        let ws = vec![b' '; 3 << 20];
        for (tail, lines) in [(&b"\n{}\n"[..], 1), (b"{}\n", 1)] {
            let mut input = b"{}\n".to_vec();
            input.extend_from_slice(&ws);
            input.extend_from_slice(tail);
            let (writes, sent) = pumped(&input, usize::MAX);
            assert_eq!(writes.concat(), input, "{tail:?}");
            assert_eq!(sent, 1 + lines);
            let largest = writes.iter().map(Vec::len).max().unwrap();
            assert!(largest <= 2 * CHUNK + 1, "a write of {largest} bytes");
        }
    }

    #[test]
    fn a_long_line_goes_out_in_pieces() {
        // 3 MiB in one line: written as it is read, never gathered whole.
        let mut input = b"{\"pad\":\"".to_vec();
        input.resize(3 << 20, b'x');
        input.extend_from_slice(b"\"}\n{}\n");
        let (writes, sent) = pumped(&input, usize::MAX);
        assert_eq!(writes.concat(), input);
        assert_eq!(sent, 2);
        let largest = writes.iter().map(Vec::len).max().unwrap();
        assert!(largest <= 2 * CHUNK, "a write of {largest} bytes");
    }

    /// Lines, then a read that fails.
    struct Failing(std::io::Cursor<Vec<u8>>);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("the disk is on fire")),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn an_input_that_fails_is_named_and_not_taken_for_the_connection() {
        // The server answers the lines it got and closes once the writer, its input
        // failed, has shut the writing side: the reader sees that close while the
        // writer's thread may still be ending, and blamed the connection
        // (`the server closed the connection before every line was sent`) 1 time in 5
        // to 20.
        for _ in 0..200 {
            let (target, server) = fake_server(|got| {
                let lines = got.iter().filter(|&&b| b == b'\n').count();
                (0..lines)
                    .flat_map(|i| format!("ok e{i} 0\n").into_bytes())
                    .collect()
            });
            let lines = std::io::Cursor::new(b"{}\n{}\n".to_vec());
            let input = Box::new(Named::new(Failing(lines), "events.ndjson"));
            let err = send(&target, input, |_| {}).unwrap_err();
            server.join().unwrap();
            assert_eq!(
                err.error.to_string(),
                "cannot read events.ndjson: the disk is on fire"
            );
            let s = &err.summary;
            assert_eq!((s.sent, s.ok, err.sent_at_least), (2, 2, false));
        }
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
