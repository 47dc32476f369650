//! Durations as a config writes them, one whole number and one unit (`500ms`, `15s`,
//! `3m`, `2h`, `7d`), at most 100 years: [`parse_duration`] (which says what to write
//! instead of a fraction, two units or a bare number), [`format_duration`] back to that
//! form, [`human_duration`] for a reader, and `duration_str`, the serde helper every
//! duration field reads and writes through.
//!
//! It must not know which field a duration is for, nor the bounds a field sets
//! (`retention`'s least, a positive `timeout`): those are the field's own checks.

use std::time::Duration;

use serde::de::{self, Deserializer};

/// The duration units and their milliseconds, largest first.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// The milliseconds of a duration unit.
fn unit_ms(unit: &str) -> Option<u64> {
    UNITS.iter().find(|(u, _)| *u == unit).map(|&(_, ms)| ms)
}

/// Parses `500ms`, `15s`, `3m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (expected e.g. 500ms, 15s, 3m, 2h, 7d)"))?;
    let ms = match unit_ms(unit) {
        Some(size) => n.checked_mul(size),
        // `1.5`: no unit at all.
        _ if !unit.bytes().any(|b| b.is_ascii_alphabetic()) => {
            return Err(format!("duration {s:?} needs a unit (ms, s, m, h, d)"))
        }
        // `1.5s`, `1h30m`: the unit is fine, the form is not; said with what to write.
        _ if unit.starts_with('.') => {
            return Err(match one_unit(s) {
                Some(w) => {
                    format!("duration {s:?} has a fraction: write it in a smaller unit ({w:?})")
                }
                None => format!(
                    "duration {s:?} has a fraction of a millisecond, the smallest unit: \
                     write whole milliseconds"
                ),
            })
        }
        _ if UNITS.iter().any(|(u, _)| {
            unit.starts_with(u) && unit[u.len()..].starts_with(|c: char| c.is_ascii_digit())
        }) =>
        {
            return Err(match one_unit(s) {
                Some(w) => format!("duration {s:?} has two units: write it in one ({w:?})"),
                // `1h30`: the second number has no unit to read it by.
                None if s.ends_with(|c: char| c.is_ascii_digit()) => format!(
                    "duration {s:?} has a number after its unit: a duration is one number \
                     and one unit (ms, s, m, h, d)"
                ),
                None => format!("duration {s:?} has two units: write it in one"),
            });
        }
        _ => {
            return Err(format!(
                "bad duration unit in {s:?} (expected ms, s, m, h or d)"
            ))
        }
    };
    ms.filter(|&ms| ms <= MAX_DURATION_MS)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large (at most 36500d)"))
}

/// `2.5m` or `1h30m` written in one unit (`150s`, `90m`), when it is a whole number of
/// milliseconds.
fn one_unit(s: &str) -> Option<String> {
    let mut rest = s;
    let mut ms = 0f64;
    while !rest.is_empty() {
        let num = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let unit = rest[num..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |u| num + u);
        let size = unit_ms(&rest[num..unit])?;
        ms += rest[..num].parse::<f64>().ok()? * size as f64;
        rest = &rest[unit..];
    }
    (ms.fract() == 0.0 && ms > 0.0 && ms <= MAX_DURATION_MS as f64)
        .then(|| format_duration(Duration::from_millis(ms as u64)))
}

/// The longest duration any key takes: 100 years. Past it a deadline overflows (a
/// `timeout` of `u64::MAX` ms stopped the worker that armed it; a retry wait wrapped
/// round to 1 ms), and no wait that long means anything for a delivery.
const MAX_DURATION_MS: u64 = 36_500 * 86_400_000;

/// `d` in hours, minutes and seconds, for a reader (`30 h 51 min 45 s`), where
/// [`format_duration`] gives the one unit a config takes (`111105s`).
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if sec > 0 || parts.is_empty() {
        parts.push(format!("{sec} s"));
    }
    parts.join(" ")
}

/// Formats a duration in the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    // The largest unit it is a whole number of (`0ms` for none).
    let (unit, size) = UNITS
        .iter()
        .find(|&&(_, size)| ms != 0 && ms % size == 0)
        .unwrap_or(&("ms", 1));
    format!("{}{unit}", ms / size)
}

pub(super) mod duration_str {
    use super::*;

    /// A duration string; a bare number is refused with the string it likely meant
    /// (`min_delay = 30`, as a form that asks for seconds has it, is `"30s"`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"15s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                parse_duration(s).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
                Err(E::custom(unitless(&format!("{n}s"), n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("a duration cannot be negative ({n})"))),
                }
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
                if n < 0.0 {
                    return Err(E::custom(format!("a duration cannot be negative ({n})")));
                }
                // Whole units only: a fraction of a second is written in milliseconds.
                let ms = (n * 1000.0).round();
                Err(E::custom(unitless(&format!("{ms}ms"), n)))
            }
        }
        d.deserialize_any(V)
    }

    fn unitless(write: &str, n: impl std::fmt::Display) -> String {
        format!("a duration is a string with its unit: write \"{write}\" (units ms, s, m, h, d), not {n}")
    }
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::problems;

    #[test]
    fn durations_round_trip() {
        for (s, ms) in [
            ("500ms", 500),
            ("15s", 15_000),
            ("3m", 180_000),
            ("2h", 7_200_000),
            ("7d", 604_800_000),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms));
            assert_eq!(format_duration(Duration::from_millis(ms)), s);
        }
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("15w").is_err());
        assert!(parse_duration("s").is_err());
        // At most 100 years: a deadline past that overflows.
        assert_eq!(
            parse_duration("36500d").unwrap(),
            Duration::from_secs(36_500 * 86_400)
        );
        for s in ["36501d", "18446744073709551615ms", "10000000000000s"] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("at most 36500d"), "{s}: {e}");
        }
    }

    #[test]
    fn a_fraction_or_two_units_in_a_duration_are_said_as_such() {
        for (v, write) in [("1.5s", "1500ms"), ("2.5m", "150s"), ("0.5d", "12h")] {
            let e = parse_duration(v).unwrap_err();
            assert_eq!(
                e,
                format!("duration {v:?} has a fraction: write it in a smaller unit ({write:?})")
            );
        }
        for v in ["1.0005s", "0.5ms"] {
            let e = parse_duration(v).unwrap_err();
            assert!(
                e.ends_with("the smallest unit: write whole milliseconds"),
                "{e}"
            );
        }
        assert_eq!(
            parse_duration("1.5").unwrap_err(),
            "duration \"1.5\" needs a unit (ms, s, m, h, d)"
        );
        for (two, write) in [
            ("1h30m", "90m"),
            ("2m30s", "150s"),
            ("1s500ms", "1500ms"),
            ("1d12h", "36h"),
        ] {
            let e = parse_duration(two).unwrap_err();
            assert_eq!(
                e,
                format!("duration {two:?} has two units: write it in one ({write:?})")
            );
        }
        assert_eq!(
            parse_duration("1h30").unwrap_err(),
            "duration \"1h30\" has a number after its unit: a duration is one number and one \
             unit (ms, s, m, h, d)"
        );
        let e = parse_duration("10sec").unwrap_err();
        assert!(e.starts_with("bad duration unit"), "{e}");
    }

    #[test]
    fn a_duration_without_its_unit_says_what_to_write() {
        let text = "[server]\nretention = -5\n\n[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\n\
                    url = \"http://h/a\"\nmin_delay = 30\ntimeout = 2.5\n\
                    retry = [\"30s\", 60]\n";
        assert_eq!(
            problems(text),
            [
                "2:13: server: field `retention`: a duration cannot be negative (-5)",
                "8:13: endpoint a: field `min_delay`: a duration is a string with its unit: \
                 write \"30s\" (units ms, s, m, h, d), not 30",
                "9:11: endpoint a: field `timeout`: a duration is a string with its unit: \
                 write \"2500ms\" (units ms, s, m, h, d), not 2.5",
                "10:17: endpoint a: field `retry[1]`: a duration is a string with its unit: \
                 write \"60s\" (units ms, s, m, h, d), not 60",
            ]
        );
    }
}
