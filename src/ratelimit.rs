//! Per-endpoint token bucket enforcing `max_rps`.
//!
//! Owns: the arithmetic of "may this endpoint get another request now, and if not, when".
//! Rate `r` tokens per second; a burst (capacity) of two tokens, or of 10 ms worth at
//! rates over 200/s ([`burst`]). So `max_rps = r` means what it says to a receiver that
//! counts per second: at most `r + 1` requests in any one-second window (`r`-and-a-bit
//! above 200/s), never the `2r - 1` a one-second burst allows after an idle second. The
//! second token absorbs a late wake-up (a sleeping lane wakes on a millisecond timer)
//! without losing rate.
//!
//! Must not: read the clock (callers pass `now_ms` or `now_us`, from a clock that never
//! steps back: a bucket set a wall clock's step ahead of its next reading would hold its
//! next token back that long), sleep, lock or allocate.
//! Queueing and timers for requests that must wait belong to the worker.
//!
//! Arithmetic: integers only, so nothing drifts. One token is [`UNIT`] micro-tokens; over
//! `dt` microseconds the bucket gains `dt * r` micro-tokens (exactly `r` tokens per
//! second), capped at `burst(r)`. A take costs `UNIT`.
//!
//! Guarantee (checked by the property test below): if `k` takes succeed at times
//! `t_1 <= ... <= t_k` (µs), then `k <= floor((C + (t_k - t_1) * r) / UNIT)` where `C` is
//! the fill at `t_1` (at most `burst(r)`). Hence in any window `[t, t + 1000 ms)` at most
//! `burst(r) / UNIT + floor(999 * r / 1000)` takes succeed with ms timestamps: `r + 1`
//! for `r <= 200` (`r` for `r = 1`), and over any span of `T` seconds at most
//! `r * T + burst(r) / UNIT`: the long-run average never exceeds `r`.
//! A bucket from [`TokenBucket::new_empty`] starts at `C = 0`, so `T` seconds after its
//! creation at most `floor(r * T)` takes have succeeded.

/// Micro-tokens per token.
const UNIT: u64 = 1_000_000;
/// Microseconds per second; with `UNIT` micro-tokens per token, a rate of `r` tokens per
/// second adds exactly `r` micro-tokens per microsecond.
const MICROS_PER_SEC: u64 = 1_000_000;

/// A token bucket: at most `rate` requests per second, with a burst of [`burst`].
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; 0 = unlimited.
    rate: u32,
    /// Fill in micro-tokens, at most [`burst`]`(rate)`, as of `last_us`.
    tokens: u64,
    /// Time of the last refill (µs). Never moves backwards.
    last_us: u64,
}

impl TokenBucket {
    /// A full bucket (a burst is allowed at once). `rate_per_sec == 0` means unlimited.
    pub fn new(rate_per_sec: u32, now_ms: u64) -> Self {
        TokenBucket {
            rate: rate_per_sec,
            tokens: burst(rate_per_sec),
            last_us: ms_to_us(now_ms),
        }
    }

    /// An empty bucket: the first token arrives `1/rate` s after `now_ms`. Used after a
    /// restart so a backlog does not go out as one burst.
    pub fn new_empty(rate_per_sec: u32, now_ms: u64) -> Self {
        TokenBucket {
            rate: rate_per_sec,
            tokens: 0,
            last_us: ms_to_us(now_ms),
        }
    }

    /// Whether the bucket never limits.
    #[cfg(test)]
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Takes a token if one is available at `now_ms`.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        self.try_take_us(ms_to_us(now_ms))
    }

    /// [`try_take`](Self::try_take) with a microsecond clock.
    pub fn try_take_us(&mut self, now_us: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now_us);
        if self.tokens >= UNIT {
            self.tokens -= UNIT;
            true
        } else {
            false
        }
    }

    /// The first millisecond (`>= now_ms`) at which [`try_take`](Self::try_take) will
    /// succeed if nothing else takes first; `now_ms` when a token is available now.
    pub fn next_token_at(&self, now_ms: u64) -> u64 {
        let at_us = self.next_token_at_us(ms_to_us(now_ms));
        at_us.div_ceil(1000).max(now_ms)
    }

    /// [`next_token_at`](Self::next_token_at) with a microsecond clock.
    pub fn next_token_at_us(&self, now_us: u64) -> u64 {
        if self.rate == 0 {
            return now_us;
        }
        let tokens = self.tokens_at(now_us);
        if tokens >= UNIT {
            return now_us;
        }
        let wait = (UNIT - tokens).div_ceil(u64::from(self.rate));
        now_us.max(self.last_us).saturating_add(wait)
    }

    /// Makes the bucket hold, at `now_ms`, no more than it would had it been empty at
    /// `at_ms` (`<= now_ms`): the next token comes at least one interval (`1/rate` s)
    /// after `at_ms`. For a request that may have reached the receiver as late as
    /// `at_ms` (the first one on a new connection waits for the receiver to accept it),
    /// so the one after it keeps its spacing at the receiver, not only at the sender.
    pub fn restart_at(&mut self, at_ms: u64, now_ms: u64) {
        if self.rate == 0 {
            return;
        }
        let now_us = ms_to_us(now_ms).max(self.last_us);
        self.refill(now_us);
        let since_us = now_us.saturating_sub(ms_to_us(at_ms));
        self.tokens = self
            .tokens
            .min(since_us.saturating_mul(u64::from(self.rate)));
    }

    /// Returns a token taken for a request that did not go out after all (its delivery
    /// was not due yet): the fill is as if it had not been taken, up to the burst.
    pub fn give_back(&mut self) {
        if self.rate == 0 {
            return;
        }
        self.tokens = (self.tokens + UNIT).min(burst(self.rate));
    }

    /// Fill at `now_us` without changing the bucket.
    fn tokens_at(&self, now_us: u64) -> u64 {
        let cap = burst(self.rate);
        if now_us <= self.last_us || self.tokens >= cap {
            return self.tokens.min(cap);
        }
        // After one second the bucket is full whatever it held (the burst is at most a
        // second's worth): bound `dt` so the product cannot overflow (1e6 * u32::MAX <
        // 2^63).
        let dt = (now_us - self.last_us).min(MICROS_PER_SEC);
        (self.tokens + dt * u64::from(self.rate)).min(cap)
    }

    fn refill(&mut self, now_us: u64) {
        if now_us > self.last_us {
            self.tokens = self.tokens_at(now_us);
            self.last_us = now_us;
        }
    }
}

/// The most a bucket of `rate` holds, in micro-tokens: two tokens, or 10 ms worth when
/// that is more (over 200/s, in whole tokens), so a lane woken by a millisecond timer
/// finds what accrued meanwhile. At most one second's worth (for `rate` 1: one token).
/// Whole tokens keep the window bound exact: a fraction would add to the accrual's.
pub fn burst(rate: u32) -> u64 {
    let rate = u64::from(rate);
    (rate / 100).max(2).min(rate.max(1)) * UNIT
}

fn ms_to_us(ms: u64) -> u64 {
    ms.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_given_back_can_be_taken_again_but_adds_no_burst() {
        let mut b = TokenBucket::new_empty(2, 0);
        assert!(b.try_take(500));
        assert!(!b.try_take(500));
        b.give_back();
        assert!(b.try_take(500));
        assert!(!b.try_take(500));
        // A full bucket stays at its burst (2 tokens at this rate).
        let mut full = TokenBucket::new(2, 0);
        full.give_back();
        assert!(full.try_take(0) && full.try_take(0));
        assert!(!full.try_take(0));
    }

    #[test]
    fn restart_spaces_the_next_token_from_then() {
        let mut b = TokenBucket::new(2, 0);
        assert!(b.try_take(0));
        // The request was answered (and may have arrived) at 1,200 ms: the token the
        // bucket had from then on is gone, the next is 500 ms after.
        b.restart_at(1_200, 1_200);
        assert!(!b.try_take(1_200));
        assert_eq!(b.next_token_at(1_200), 1_700);
        assert!(!b.try_take(1_699));
        assert!(b.try_take(1_700));
        // Never moves the clock back; unlimited stays unlimited.
        b.restart_at(10, 1_700);
        assert_eq!(b.next_token_at(1_700), 2_200);
        let mut u = TokenBucket::new(0, 0);
        u.restart_at(5, 5);
        assert!(u.try_take(5));
    }

    #[test]
    fn a_restart_in_the_past_keeps_what_accrued_since() {
        // 20/s: a token every 50 ms.
        let mut b = TokenBucket::new_empty(20, 0);
        assert!(b.try_take(50));
        // 0.8 token held as of 90.
        assert!(!b.try_take(90));
        // Empty as of 30: 1.2 tokens would have accrued since, more than it holds.
        b.restart_at(30, 90);
        assert_eq!(b.next_token_at(90), 100);
        // Empty as of 80: 0.2 token since; the next is a whole interval after 80.
        b.restart_at(80, 90);
        assert_eq!(b.next_token_at(90), 130);
    }

    #[test]
    fn unlimited_always_takes() {
        let mut b = TokenBucket::new(0, 0);
        assert!(b.is_unlimited());
        assert!((0..100_000).all(|_| b.try_take(5)));
        assert_eq!(b.next_token_at(7), 7);
        let mut e = TokenBucket::new_empty(0, 0);
        assert!(e.try_take(0));
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut b = TokenBucket::new(10, 1_000);
        assert_eq!((0..20).filter(|_| b.try_take(1_000)).count(), 2);
        assert_eq!(b.next_token_at(1_000), 1_100);
        assert!(!b.try_take(1_099));
        assert!(b.try_take(1_100));
        assert!(!b.try_take(1_100));
        // A long pause refills to the burst, never more.
        assert_eq!((0..50).filter(|_| b.try_take(100_000)).count(), 2);
    }

    #[test]
    fn the_burst_is_two_tokens_or_ten_milliseconds_worth() {
        assert_eq!(burst(1), UNIT);
        assert_eq!(burst(2), 2 * UNIT);
        assert_eq!(burst(200), 2 * UNIT);
        assert_eq!(burst(1_000), 10 * UNIT);
        assert_eq!(burst(50_000), 500 * UNIT);
        assert_eq!(burst(250), 2 * UNIT);
        assert_eq!(burst(350), 3 * UNIT);
    }

    #[test]
    fn a_second_holds_at_most_the_rate_plus_one() {
        for rate in [1u32, 2, 5, 50, 200] {
            // Full at the start, polled every millisecond for 10 s.
            let mut b = TokenBucket::new(rate, 0);
            let taken: Vec<u64> = (0..10_000u64).filter(|&ms| b.try_take(ms)).collect();
            let most = (0..taken.len())
                .map(|i| {
                    taken[i..]
                        .iter()
                        .take_while(|&&t| t < taken[i] + 1000)
                        .count()
                })
                .max()
                .unwrap();
            let bound = if rate == 1 { 1 } else { rate as usize + 1 };
            assert!(most <= bound, "{most} in a second at {rate}/s");
        }
    }

    #[test]
    fn a_late_wake_up_loses_no_rate() {
        // A lane that sleeps until the next token and wakes 1 ms late every time.
        let mut b = TokenBucket::new_empty(200, 0);
        let mut now = 0;
        let mut taken = 0;
        while now < 10_000 {
            now = b.next_token_at(now) + 1;
            if b.try_take(now) {
                taken += 1;
            }
        }
        assert!(taken >= 1_998, "{taken} in 10 s at 200/s");
    }

    #[test]
    fn empty_bucket_has_no_burst() {
        let mut b = TokenBucket::new_empty(4, 0);
        assert!(!b.try_take(0));
        assert_eq!(b.next_token_at(0), 250);
        assert!(!b.try_take(249));
        assert!(b.try_take(250));
        assert!(!b.try_take(250));
        assert_eq!(b.next_token_at(300), 500);
    }

    #[test]
    fn non_dividing_rates_do_not_drift() {
        // 3 per second: tokens at 333.33.. ms intervals; over 1000 s exactly 3000.
        let mut b = TokenBucket::new_empty(3, 0);
        let taken = (0..=1_000_000u64).filter(|&ms| b.try_take(ms)).count();
        assert_eq!(taken, 3000);
        let mut b = TokenBucket::new_empty(7, 0);
        // Polled every 3 ms up to 9_999_999 ms: floor(9_999_999 * 7 / 1000) tokens.
        let taken = (0..10_000_000u64)
            .step_by(3)
            .filter(|&ms| b.try_take(ms))
            .count();
        assert_eq!(taken, 69_999);
    }

    #[test]
    fn huge_rates_and_times_do_not_overflow() {
        let mut b = TokenBucket::new(u32::MAX, u64::MAX / 2000);
        assert!(b.try_take(u64::MAX / 2000));
        assert!(b.try_take(u64::MAX));
        assert_eq!(b.next_token_at(u64::MAX), u64::MAX);
        let b = TokenBucket::new_empty(1, u64::MAX);
        assert_eq!(b.next_token_at(u64::MAX), u64::MAX);
    }

    #[test]
    fn clock_going_backwards_gives_nothing() {
        let mut b = TokenBucket::new(1, 10_000);
        assert!(b.try_take(10_000));
        assert!(!b.try_take(5_000));
        assert_eq!(b.next_token_at(5_000), 11_000);
        assert!(!b.try_take(10_999));
        assert!(b.try_take(11_000));
    }

    #[test]
    fn microsecond_api() {
        let mut b = TokenBucket::new_empty(3, 0);
        assert_eq!(b.next_token_at_us(0), 333_334);
        assert!(!b.try_take_us(333_333));
        assert!(b.try_take_us(333_334));
        assert_eq!(b.next_token_at(334), 667);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Checks the guarantee in the module doc: between any two successes at
            /// `t_i <= t_j`, at most `burst + (t_j - t_i) * r` tokens (counting both),
            /// which bounds every 1-second window by `burst + floor(999 r / 1000)`:
            /// `r + 1` up to 200/s, plus: `next_token_at` is exact.
            #[test]
            fn never_exceeds_the_rate(
                rate in prop_oneof![1u32..5, 1u32..200, 201u32..2_000, Just(1000u32), Just(7u32)],
                empty in any::<bool>(),
                start in 0u64..10_000,
                steps in prop::collection::vec((0u64..400, 1usize..30), 1..200),
            ) {
                let mut b = if empty {
                    TokenBucket::new_empty(rate, start)
                } else {
                    TokenBucket::new(rate, start)
                };
                let r = u64::from(rate);
                let mut now = start;
                let mut successes: Vec<u64> = Vec::new();
                for (dt, attempts) in steps {
                    now += dt;
                    let predicted = b.next_token_at(now);
                    prop_assert!(predicted >= now);
                    if predicted > now {
                        prop_assert!(!b.clone().try_take(predicted - 1));
                    }
                    prop_assert!(b.clone().try_take(predicted));
                    for _ in 0..attempts {
                        if b.try_take(now) {
                            successes.push(now);
                        }
                    }
                }
                let cap = burst(rate) / UNIT;
                let initial = if empty { 0 } else { cap };
                for (i, &ti) in successes.iter().enumerate() {
                    // Successes in [ti, ti + 1000).
                    let in_window = successes[i..].iter().take_while(|&&t| t < ti + 1000).count() as u64;
                    prop_assert!(in_window <= cap + 999 * r / 1000, "{} in a second at rate {}", in_window, r);
                    prop_assert!(in_window <= r + 1 || r > 200, "{} in a second at rate {}", in_window, r);
                    prop_assert!(in_window < 2 * r || r == 0);
                    // Everything since creation: initial fill plus what accrued.
                    let since_start = (i + 1) as u64;
                    prop_assert!(since_start <= initial + (ti - start) * r / 1000);
                }
            }
        }
    }
}
