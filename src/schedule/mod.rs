//! Scheduling: what happens after an attempt, and when.
//!
//! Owns the retry decision of SPEC §6 (schedules, `Retry-After`, never-retried cases)
//! as a pure function from an attempt's [`Verdict`] to the delivery's next state, and the
//! per-worker in-memory [`wheel::TimerWheel`]. It must not do I/O or touch the store:
//! the committer persists what this decides.

pub mod wheel;

use std::time::Duration;

use crate::commit::Next;
use crate::config::{EndpointConfig, ResponseRule};
use crate::store::DeliveryState;

/// The longest any wait may be stretched by `Retry-After`.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(6 * 3600);

/// Status class a failure counts toward for automatic disabling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailClass {
    C3xx = 0,
    C4xx = 1,
    /// 5xx, and network errors and timeouts.
    C5xx = 2,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// A retryable failure.
    Failed {
        class: FailClass,
        /// From a `Retry-After` header on a 429 or 503.
        retry_after: Option<Duration>,
    },
    /// `410 Gone`: the endpoint is disabled at once.
    Gone,
    /// Never retried: malformed URL, unresolvable host, blocked by the SSRF guard.
    /// `class` is the class it counts toward for automatic disabling: a host that does
    /// not resolve is a network error (5xx); a malformed URL or a blocked target is the
    /// endpoint's own setting and counts toward none.
    Permanent {
        class: Option<FailClass>,
    },
}

/// Classifies a response by the endpoint's `success` and `error` rules (each searched
/// at most once), with why the rules refused it when its status alone does not say so
/// (1xx, 2xx) or the `error` rule matched: the attempt log's `error` for it (a `200`
/// logged as failed with no word of why sent operators looking at the receiver).
pub fn classify_response(
    success: &ResponseRule,
    error: Option<&ResponseRule>,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> (Verdict, Option<String>) {
    let error_hit = error.filter(|e| e.matches(status, body));
    if error_hit.is_none() && success.matches(status, body) {
        return (Verdict::Delivered, None);
    }
    let why = match error_hit {
        Some(e) => Some(format!("the error rule {} matched", e.describe())),
        None => {
            (status < 300).then(|| format!("the success rule {} did not match", success.describe()))
        }
    };
    if status == 410 {
        return (Verdict::Gone, why);
    }
    let class = match status / 100 {
        3 => FailClass::C3xx,
        4 => FailClass::C4xx,
        _ => FailClass::C5xx,
    };
    let verdict = Verdict::Failed {
        class,
        retry_after: if status == 429 || status == 503 {
            retry_after
        } else {
            None
        },
    };
    (verdict, why)
}

/// The delivery's state and next step after `attempts_made` attempts, the last of which
/// ended with `verdict` at `now_ms`.
pub fn after_attempt(
    cfg: &EndpointConfig,
    attempts_made: u32,
    verdict: &Verdict,
    now_ms: u64,
) -> (DeliveryState, Next) {
    match verdict {
        Verdict::Delivered => (DeliveryState::Delivered, Next::Done),
        Verdict::Permanent { .. } => (DeliveryState::Failed, Next::Done),
        // The endpoint is disabled (the worker does that): the delivery waits paused for
        // its next attempt, unless it has none left.
        Verdict::Gone => match cfg.retry.wait_after(attempts_made) {
            None => (DeliveryState::Failed, Next::Done),
            Some(_) => (DeliveryState::Paused, Next::Paused),
        },
        Verdict::Failed { retry_after, .. } => match cfg.retry.wait_after(attempts_made) {
            None => (DeliveryState::Failed, Next::Done),
            Some(wait) => {
                let wait = match retry_after {
                    Some(ra) => wait.max((*ra).min(wait * 2).min(RETRY_AFTER_CAP)),
                    None => wait,
                };
                (
                    DeliveryState::Retrying,
                    Next::Retry {
                        due_ms: now_ms + wait.as_millis() as u64,
                    },
                )
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Matcher, RetryPolicy};

    /// What [`classify_response`] says refused a response.
    fn refused_by_rules(
        success: &ResponseRule,
        error: Option<&ResponseRule>,
        status: u16,
        body: &[u8],
    ) -> Option<String> {
        classify_response(success, error, status, body, None).1
    }

    #[test]
    fn a_response_the_rules_refuse_says_which_rule() {
        let rule = |s: &str| -> ResponseRule { serde_json::from_str(s).unwrap() };
        let (ok, text) = (rule(r#""2xx""#), rule(r#"["200", "OK"]"#));
        let error = rule(r#""ERROR""#);
        assert_eq!(
            refused_by_rules(&text, None, 204, b"fine").as_deref(),
            Some(r#"the success rule ["200","OK"] did not match"#)
        );
        assert_eq!(
            refused_by_rules(&ok, Some(&error), 200, b"ERROR: no such order").as_deref(),
            Some(r#"the error rule "ERROR" matched"#)
        );
        assert_eq!(
            refused_by_rules(&ok, Some(&error), 500, b"ERROR").as_deref(),
            Some(r#"the error rule "ERROR" matched"#)
        );
        // A success; a failure its status explains.
        assert_eq!(refused_by_rules(&ok, Some(&error), 200, b"ok"), None);
        assert_eq!(refused_by_rules(&ok, None, 503, b""), None);
        assert_eq!(refused_by_rules(&text, None, 404, b""), None);
    }

    fn cfg(retry: RetryPolicy) -> EndpointConfig {
        let mut c: EndpointConfig =
            toml::from_str("name=\"a\"\nevents=[\"t\"]\nurl=\"http://h/\"\n").unwrap();
        c.retry = retry;
        c
    }

    #[test]
    fn rules() {
        let ok = ResponseRule(vec![Matcher::Class(2)]);
        let err = ResponseRule(vec![Matcher::Body("ERROR".into())]);
        assert_eq!(
            classify_response(&ok, None, 200, b"", None).0,
            Verdict::Delivered
        );
        assert_eq!(
            classify_response(&ok, Some(&err), 200, b"ERROR: no", None).0,
            Verdict::Failed {
                class: FailClass::C5xx,
                retry_after: None
            }
        );
        assert_eq!(
            classify_response(&ok, None, 410, b"", None).0,
            Verdict::Gone
        );
        assert_eq!(
            classify_response(&ok, None, 404, b"", Some(Duration::from_secs(9))).0,
            Verdict::Failed {
                class: FailClass::C4xx,
                retry_after: None
            }
        );
        assert_eq!(
            classify_response(&ok, None, 429, b"", Some(Duration::from_secs(9))).0,
            Verdict::Failed {
                class: FailClass::C4xx,
                retry_after: Some(Duration::from_secs(9))
            }
        );
        assert_eq!(
            classify_response(&ok, None, 302, b"", None).0,
            Verdict::Failed {
                class: FailClass::C3xx,
                retry_after: None
            }
        );
    }

    #[test]
    fn retries_follow_the_schedule() {
        let c = cfg(RetryPolicy::List(vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
        ]));
        let f = Verdict::Failed {
            class: FailClass::C5xx,
            retry_after: None,
        };
        assert_eq!(
            after_attempt(&c, 1, &f, 1000),
            (DeliveryState::Retrying, Next::Retry { due_ms: 2000 })
        );
        assert_eq!(
            after_attempt(&c, 2, &f, 1000),
            (DeliveryState::Retrying, Next::Retry { due_ms: 3000 })
        );
        assert_eq!(
            after_attempt(&c, 3, &f, 1000),
            (DeliveryState::Failed, Next::Done)
        );
        assert_eq!(
            after_attempt(&c, 1, &Verdict::Permanent { class: None }, 0),
            (DeliveryState::Failed, Next::Done)
        );
    }

    #[test]
    fn gone_pauses_only_a_delivery_with_attempts_left() {
        let c = cfg(RetryPolicy::List(vec![Duration::from_secs(1)]));
        assert_eq!(
            after_attempt(&c, 1, &Verdict::Gone, 0),
            (DeliveryState::Paused, Next::Paused)
        );
        // Its schedule is spent: failed, as any other last failure; enabling the
        // endpoint again does not bring it back.
        assert_eq!(
            after_attempt(&c, 2, &Verdict::Gone, 0),
            (DeliveryState::Failed, Next::Done)
        );
        let none = cfg(RetryPolicy::None);
        assert_eq!(
            after_attempt(&none, 1, &Verdict::Gone, 0),
            (DeliveryState::Failed, Next::Done)
        );
    }

    #[test]
    fn retry_after_stretches_within_caps() {
        let c = cfg(RetryPolicy::List(vec![Duration::from_secs(10)]));
        let f = |s| Verdict::Failed {
            class: FailClass::C5xx,
            retry_after: Some(Duration::from_secs(s)),
        };
        // At least the header's wait...
        assert_eq!(
            after_attempt(&c, 1, &f(15), 0).1,
            Next::Retry { due_ms: 15_000 }
        );
        // ...capped at twice the scheduled wait...
        assert_eq!(
            after_attempt(&c, 1, &f(100), 0).1,
            Next::Retry { due_ms: 20_000 }
        );
        // ...and never shorter than the schedule.
        assert_eq!(
            after_attempt(&c, 1, &f(1), 0).1,
            Next::Retry { due_ms: 10_000 }
        );
        let c = cfg(RetryPolicy::List(vec![Duration::from_secs(5 * 3600)]));
        assert_eq!(
            after_attempt(&c, 1, &f(9 * 3600), 0).1,
            Next::Retry {
                due_ms: 6 * 3600 * 1000
            }
        );
    }
}
