//! Counting what is logged at most once an interval: under a fault the same warning
//! could come thousands of times a second (accept failures, deliveries held back,
//! refused connections, failed retention writes), so each site keeps a [`Tally`] and
//! logs the count since its last line.
//!
//! Owns nothing but the count and the time of the last line; what to log is the
//! caller's.

use std::time::{Duration, Instant};

/// Occurrences since the last line logged, and when that was.
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    count: u64,
    last: Option<Instant>,
}

impl Tally {
    /// Nothing counted, nothing logged yet.
    pub const fn new() -> Tally {
        Tally {
            count: 0,
            last: None,
        }
    }

    /// Counts one occurrence; returns the count to log (this one included) when a line
    /// is due: the first time, then once `every` has passed since the last.
    pub fn note(&mut self, every: Duration) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }

    /// [`Tally::note`] on a tally kept in a `Cell` (a worker's, shared by its tasks).
    pub fn note_in(cell: &std::cell::Cell<Tally>, every: Duration) -> Option<u64> {
        let mut t = cell.get();
        let due = t.note(every);
        cell.set(t);
        due
    }
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::new()
    }
}

/// The log lines `f` writes on this thread, as the server's log has them (for tests
/// that bound how often a site logs).
#[cfg(test)]
pub(crate) fn logged<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (r, text.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_the_count_once_an_interval() {
        let mut t = Tally::default();
        assert_eq!(t.note(Duration::from_secs(10)), Some(1));
        assert_eq!(t.note(Duration::from_secs(10)), None);
        assert_eq!(t.note(Duration::from_secs(10)), None);
        // An interval of zero has always passed: the two counted come out with this one.
        assert_eq!(t.note(Duration::ZERO), Some(3));
        assert_eq!(t.note(Duration::ZERO), Some(1));
    }
}
