//! Per-endpoint rate check: does every endpoint's traffic stay within its `max_rps`?
//!
//! For each endpoint `/e/<n>` the sink keeps a small ring of its latest arrival times
//! (ms since the check started, `cap` slots, `cap > limit`). On every arrival `t` it
//! counts the arrivals of that endpoint in the one-second window `(t - 1000 ms, t]`
//! (itself included) and counts a violation when that is more than `limit`. Every
//! request counts (retries, 5xx and resets included): ricochet's token bucket governs
//! attempts, not distinct events.
//!
//! `limit = max_rps + tolerance`. ricochet's bucket has a burst of two tokens (10 ms
//! worth above 200/s) and starts empty, so a steadily backlogged endpoint gets one
//! request every `1/max_rps` s and a window holds `max_rps` of them; the default
//! tolerance of 1 absorbs the few ms of jitter (scheduling, loopback, the sink's read
//! batching) that can slide one more arrival in at a window edge. The bucket's own worst
//! case, after an idle gap has refilled it, is `max_rps + 1` per window up to 200/s.
//!
//! A second, finer check replays every endpoint's arrivals through the bucket itself
//! (GCRA: rate `max_rps`, burst `max_rps`, full at the first arrival, which is lenient
//! against ricochet's empty start and its burst of two) and counts arrivals that found
//! it empty, allowing each arrival [`BUCKET_SLACK_US`] of earliness for jitter. It
//! tells traffic no `max_rps` bucket could have sent, over spans of any length.
//!
//! Both findings are also counted when the second before the offending arrival held a
//! request that opened a new connection (`*_new_conn`). The bucket paces when ricochet
//! *starts* an attempt; a first request on a fresh connection reaches the sink only
//! after the TCP handshake and the sink's accept, so when thousands of endpoints connect
//! at once (many-endpoints' first seconds) it arrives late and the requests after it,
//! on the warm connection, look bunched up behind it.
//!
//! Memory: `cap` u32 per endpoint plus 17 bytes (`cap = limit + 1 + min(limit + 1, 16)`,
//! so the worst window is exact up to `cap + 1` arrivals and reported as that bound,
//! `saturated`, beyond). 10,000 endpoints at `max_rps = 2` take about 490 KB. State is
//! split over [`SHARDS`] mutexes by endpoint number, so sink threads rarely contend.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

/// The window length.
pub const WINDOW_MS: u32 = 1000;
/// How early an arrival may be against the replayed bucket (loopback and scheduling
/// jitter).
pub const BUCKET_SLACK_US: u64 = 5_000;
const SHARDS: usize = 64;
const SEEN: u8 = 1;
const OVER: u8 = 2;
const BEYOND: u8 = 4;

/// What the check found so far.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RateCounts {
    pub max_rps: u32,
    /// Most arrivals allowed in a window: `max_rps + tolerance`.
    pub limit: u32,
    /// Endpoints with at least one arrival.
    pub endpoints_checked: u64,
    /// Arrivals on `/e/<n>` with `n` below the endpoint count.
    pub arrivals: u64,
    /// Arrivals on any other path (not checked).
    pub unchecked: u64,
    /// Arrivals whose window `(t - 1 s, t]` held more than `limit` arrivals.
    pub windows_over_limit: u64,
    /// Arrivals whose window held more than `max_rps` (no tolerance; context only).
    pub windows_over_max_rps: u64,
    /// Endpoints with at least one window over `limit`.
    pub endpoints_over_limit: u64,
    /// The most arrivals seen in one window.
    pub worst_window: u32,
    /// `worst_window` hit the ring's size: the true worst is at least that.
    pub worst_saturated: bool,
    /// Arrivals that found the replayed bucket (rate and burst `max_rps`) empty, even
    /// allowing [`BUCKET_SLACK_US`] of jitter.
    pub beyond_bucket: u64,
    /// Endpoints with at least one such arrival.
    pub endpoints_beyond_bucket: u64,
    /// Of `windows_over_limit`: windows that also hold a request which opened a new
    /// connection (its arrival includes the connection's setup).
    pub windows_over_limit_new_conn: u64,
    /// Of `beyond_bucket`: arrivals less than 1 s after one that opened a connection.
    pub beyond_bucket_new_conn: u64,
}

impl RateCounts {
    fn add(&mut self, o: &RateCounts) {
        self.endpoints_checked += o.endpoints_checked;
        self.arrivals += o.arrivals;
        self.unchecked += o.unchecked;
        self.windows_over_limit += o.windows_over_limit;
        self.windows_over_max_rps += o.windows_over_max_rps;
        self.endpoints_over_limit += o.endpoints_over_limit;
        self.beyond_bucket += o.beyond_bucket;
        self.endpoints_beyond_bucket += o.endpoints_beyond_bucket;
        self.windows_over_limit_new_conn += o.windows_over_limit_new_conn;
        self.beyond_bucket_new_conn += o.beyond_bucket_new_conn;
        if o.worst_window > self.worst_window {
            self.worst_window = o.worst_window;
            self.worst_saturated = o.worst_saturated;
        } else if o.worst_window == self.worst_window {
            self.worst_saturated |= o.worst_saturated;
        }
    }
}

/// The endpoints of one shard: endpoint `n` is slot `n / SHARDS` of shard `n % SHARDS`.
struct Shard {
    /// `cap` arrival times (ms) per slot, a ring written at `next`.
    times: Vec<u32>,
    next: Vec<u16>,
    len: Vec<u16>,
    flags: Vec<u8>,
    /// GCRA theoretical arrival time per slot (µs; 0 = no arrival yet, bucket full).
    tat: Vec<u64>,
    /// Per slot, 1 + the ms of the latest arrival that opened a connection (0 = none).
    opened: Vec<u32>,
    counts: RateCounts,
}

/// The check for `endpoints` endpoints; shared by every sink thread.
pub struct RateCheck {
    max_rps: u32,
    limit: u32,
    cap: usize,
    endpoints: u64,
    epoch: Instant,
    shards: Vec<Mutex<Shard>>,
}

impl RateCheck {
    pub fn new(endpoints: u64, max_rps: u32, tolerance: u32) -> Result<RateCheck> {
        let limit = max_rps.saturating_add(tolerance);
        if max_rps == 0 || limit > 30_000 {
            bail!("rate check: max_rps {max_rps} + tolerance {tolerance} must be 1..=30000");
        }
        let cap = limit as usize + 1 + (limit as usize + 1).min(16);
        let shards = (0..SHARDS)
            .map(|s| {
                let slots = (endpoints as usize).saturating_sub(s).div_ceil(SHARDS);
                Mutex::new(Shard {
                    times: vec![0; slots * cap],
                    next: vec![0; slots],
                    len: vec![0; slots],
                    flags: vec![0; slots],
                    tat: vec![0; slots],
                    opened: vec![0; slots],
                    counts: RateCounts::default(),
                })
            })
            .collect();
        Ok(RateCheck {
            max_rps,
            limit,
            cap,
            endpoints,
            epoch: Instant::now(),
            shards,
        })
    }

    /// Records an arrival on endpoint `n` (None: a path that is not `/e/<n>`) now;
    /// `opens_conn` when it is the first request on its connection.
    pub fn record(&self, endpoint: Option<u64>, opens_conn: bool) {
        self.record_with(endpoint, opens_conn, || {
            self.epoch.elapsed().as_micros() as u64 + 1
        });
    }

    /// Records an arrival at `now_ms`; returns the arrivals in its window (0 if
    /// unchecked). Arrival times of one endpoint must not go backwards.
    #[cfg(test)]
    fn record_at(&self, endpoint: Option<u64>, now_ms: u32) -> u32 {
        self.record_with(endpoint, false, || u64::from(now_ms) * 1000 + 1)
    }

    /// The clock (µs, > 0) is read under the shard's lock, so one endpoint's times are
    /// in order whichever sink thread its connections landed on.
    fn record_with(
        &self,
        endpoint: Option<u64>,
        opens_conn: bool,
        now: impl FnOnce() -> u64,
    ) -> u32 {
        let n = match endpoint {
            Some(n) if n < self.endpoints => n as usize,
            _ => {
                let mut s = self.lock(0);
                s.counts.unchecked += 1;
                return 0;
            }
        };
        let mut guard = self.lock(n % SHARDS);
        let s = &mut *guard;
        let slot = n / SHARDS;
        let now_us = now();
        let now = (now_us / 1000) as u32;
        let cap = self.cap;
        let ring = &mut s.times[slot * cap..(slot + 1) * cap];
        let (next, len) = (s.next[slot] as usize, s.len[slot] as usize);
        // Newest first: count the earlier arrivals still inside (now - 1 s, now].
        let mut inside = 0;
        while inside < len {
            let t = ring[(next + cap - 1 - inside) % cap];
            if now.wrapping_sub(t) >= WINDOW_MS {
                break;
            }
            inside += 1;
        }
        ring[next] = now;
        s.next[slot] = ((next + 1) % cap) as u16;
        s.len[slot] = (len + 1).min(cap) as u16;
        let count = inside as u32 + 1;
        if opens_conn {
            s.opened[slot] = now + 1;
        }
        let opened = s.opened[slot];
        let new_conn = opened != 0 && now.wrapping_sub(opened - 1) < WINDOW_MS;
        let c = &mut s.counts;
        c.arrivals += 1;
        // GCRA: emission interval T, burst tolerance (burst - 1) * T plus the slack.
        let t = 1_000_000 / u64::from(self.max_rps);
        let tolerance = u64::from(self.max_rps - 1) * t + BUCKET_SLACK_US;
        let tat = &mut s.tat[slot];
        if *tat == 0 || now_us + tolerance >= *tat {
            *tat = (*tat).max(now_us) + t;
        } else {
            // Not taken from the bucket: one excess arrival counts once.
            c.beyond_bucket += 1;
            c.beyond_bucket_new_conn += u64::from(new_conn);
            if s.flags[slot] & BEYOND == 0 {
                s.flags[slot] |= BEYOND;
                c.endpoints_beyond_bucket += 1;
            }
        }
        if s.flags[slot] & SEEN == 0 {
            s.flags[slot] |= SEEN;
            c.endpoints_checked += 1;
        }
        if count > self.max_rps {
            c.windows_over_max_rps += 1;
        }
        if count > self.limit {
            c.windows_over_limit += 1;
            c.windows_over_limit_new_conn += u64::from(new_conn);
            if s.flags[slot] & OVER == 0 {
                s.flags[slot] |= OVER;
                c.endpoints_over_limit += 1;
            }
        }
        let saturated = inside == cap;
        if count > c.worst_window {
            c.worst_window = count;
            c.worst_saturated = saturated;
        }
        count
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counts(&self) -> RateCounts {
        let mut out = RateCounts {
            max_rps: self.max_rps,
            limit: self.limit,
            ..RateCounts::default()
        };
        for i in 0..SHARDS {
            out.add(&self.lock(i).counts);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_stays_within_the_limit() {
        // max_rps 2, no tolerance: one arrival every 500 ms never puts 3 in a window.
        let rc = RateCheck::new(4, 2, 0).unwrap();
        for i in 0..20 {
            assert!(rc.record_at(Some(1), 500 * i) <= 2);
        }
        let c = rc.counts();
        assert_eq!(
            (c.arrivals, c.endpoints_checked, c.windows_over_limit),
            (20, 1, 0)
        );
        assert_eq!(c.worst_window, 2);
        assert_eq!(c.windows_over_max_rps, 0);
    }

    #[test]
    fn window_is_half_open_one_second() {
        let rc = RateCheck::new(1, 2, 0).unwrap();
        assert_eq!(rc.record_at(Some(0), 0), 1);
        assert_eq!(rc.record_at(Some(0), 1), 2);
        // 1000 ms after the first: the first has left the window (t - 1 s, t].
        assert_eq!(rc.record_at(Some(0), 1000), 2);
        // 999 ms after the second: it is still inside, and so is the third.
        assert_eq!(rc.record_at(Some(0), 1000), 3);
        let c = rc.counts();
        assert_eq!((c.windows_over_limit, c.endpoints_over_limit), (1, 1));
        assert_eq!(c.worst_window, 3);
    }

    #[test]
    fn tolerance_absorbs_edge_jitter_but_not_bursts() {
        // max_rps 2, tolerance 1 (limit 3). Steady 500 ms spacing with a late arrival
        // pulling the next window's edge in: 3 in a window, allowed.
        let rc = RateCheck::new(2, 2, 1).unwrap();
        for t in [0, 500, 998, 1500, 2000] {
            rc.record_at(Some(0), t);
        }
        let c = rc.counts();
        assert_eq!(c.limit, 3);
        assert_eq!(c.windows_over_limit, 0);
        assert!(c.windows_over_max_rps > 0, "{c:?}");
        assert_eq!(c.worst_window, 3);
        // A burst of 5 within 10 ms on endpoint 1: two arrivals over the limit.
        for t in 0..5 {
            rc.record_at(Some(1), 3000 + 2 * t);
        }
        let c = rc.counts();
        assert_eq!(c.windows_over_limit, 2);
        assert_eq!(c.endpoints_over_limit, 1);
        assert_eq!(c.endpoints_checked, 2);
        assert_eq!(c.worst_window, 5);
    }

    #[test]
    fn endpoints_are_independent_and_unknown_paths_unchecked() {
        let rc = RateCheck::new(200, 1, 0).unwrap();
        // Endpoints 3 and 67 share a shard but not a ring.
        for n in [3, 67, 131, 3 + 64 * 3] {
            assert_eq!(rc.record_at(Some(n), 10), 1);
        }
        assert_eq!(rc.record_at(Some(200), 10), 0);
        assert_eq!(rc.record_at(None, 10), 0);
        let c = rc.counts();
        assert_eq!((c.endpoints_checked, c.arrivals, c.unchecked), (4, 4, 2));
        assert_eq!(c.windows_over_limit, 0);
    }

    #[test]
    fn worst_window_saturates_at_the_ring_size() {
        let rc = RateCheck::new(1, 2, 1).unwrap();
        // limit 3 -> cap 8: the count is exact up to 9.
        for _ in 0..9 {
            rc.record_at(Some(0), 7);
        }
        let c = rc.counts();
        assert_eq!((c.worst_window, c.worst_saturated), (9, true));
        assert_eq!(c.windows_over_limit, 6);
        let rc = RateCheck::new(1, 2, 1).unwrap();
        for _ in 0..8 {
            rc.record_at(Some(0), 7);
        }
        assert_eq!(rc.counts().worst_window, 8);
        assert!(!rc.counts().worst_saturated);
    }

    #[test]
    fn replayed_bucket_allows_a_refill_burst_but_not_more() {
        // max_rps 2: a full bucket's burst of 2 plus a token every 500 ms is 4 in the
        // closed second [0, 1000] and 4 in (t - 1 s, t] once the last is 1 ms early:
        // over the window limit of 3, within the bucket.
        let rc = RateCheck::new(2, 2, 1).unwrap();
        for t in [0, 0, 500, 999] {
            rc.record_at(Some(0), t);
        }
        let c = rc.counts();
        assert_eq!((c.windows_over_limit, c.worst_window), (1, 4));
        assert_eq!(c.beyond_bucket, 0);
        // Steady 500 ms spacing after an idle gap, a little jitter: within the bucket.
        for t in [5000, 5000, 5499, 6001, 6498, 7000] {
            rc.record_at(Some(0), t);
        }
        assert_eq!(rc.counts().beyond_bucket, 0);
        // A third at once is beyond it, and so is a request 400 ms after a token.
        for t in [10_000, 10_000, 10_000, 10_500, 10_900] {
            rc.record_at(Some(1), t);
        }
        let c = rc.counts();
        assert_eq!((c.beyond_bucket, c.endpoints_beyond_bucket), (2, 1));
    }

    #[test]
    fn findings_next_to_a_new_connection_are_told_apart() {
        let rc = RateCheck::new(2, 2, 1).unwrap();
        let at = |n, opens, ms: u32| rc.record_with(Some(n), opens, || u64::from(ms) * 1000 + 1);
        // Endpoint 0: a late first request (new connection), two quick ones behind it.
        at(0, true, 1500);
        at(0, false, 1504);
        at(0, false, 1505);
        at(0, false, 1506);
        // Endpoint 1: the same on a warm connection opened 2 s earlier.
        at(1, true, 0);
        for ms in [2000, 2004, 2005, 2006] {
            at(1, false, ms);
        }
        let c = rc.counts();
        assert_eq!(
            (c.windows_over_limit, c.windows_over_limit_new_conn),
            (2, 1)
        );
        assert_eq!((c.beyond_bucket, c.beyond_bucket_new_conn), (4, 2));
    }

    #[test]
    fn a_gap_empties_the_window() {
        let rc = RateCheck::new(1, 2, 0).unwrap();
        rc.record_at(Some(0), 0);
        rc.record_at(Some(0), 100);
        assert_eq!(rc.record_at(Some(0), 5000), 1);
        assert!(RateCheck::new(1, 0, 1).is_err());
    }
}
