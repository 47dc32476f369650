//! Small text formats shared by the commands: durations (`500ms`, `20s`), the sink's
//! response script (`200:0.8,500:0.2`), latency specs (`0ms`, `uniform:1ms-5ms`) and a
//! tiny per-thread random generator used to draw from them.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Parses `500ms`, `15s`, `3m`, `2h`, `7d`, `250us`, or a bare number of seconds (`2.5`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?}: expected e.g. 500ms, 20s, 3m"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => bail!("bad duration {s:?}: unknown unit {other:?} (us, ms, s, m, h, d)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("bad duration {s:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A share of requests for a command-line flag: a number in `[0, 1]`.
pub fn parse_probability(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a number"))?;
    check_share(v)
}

/// `v` when it is a share (of requests): a number in `[0, 1]`.
pub fn check_share(v: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&v) {
        bail!("expected a share between 0 and 1 (e.g. 0.01), not {v}");
    }
    Ok(v)
}

/// A count for a command-line flag that must be at least 1.
pub fn parse_positive(s: &str) -> Result<usize> {
    let v: usize = s
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a whole number"))?;
    if v == 0 {
        bail!("must be at least 1");
    }
    Ok(v)
}

/// [`parse_positive`] for `u64` flags.
pub fn parse_positive_u64(s: &str) -> Result<u64> {
    parse_positive(s).map(|v| v as u64)
}

/// One scripted answer: an HTTP status and its share of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptEntry {
    pub status: u16,
    pub weight: f64,
}

/// Which status the sink answers, drawn per request by weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub entries: Vec<ScriptEntry>,
    /// Cumulative thresholds in `[0, 1]`, one per entry.
    cumulative: Vec<f64>,
}

impl Script {
    /// Parses `200:0.8,500:0.2`. A lone status (`200`) means weight 1. Weights are
    /// normalised, so `200:4,500:1` is the same as `200:0.8,500:0.2`.
    pub fn parse(s: &str) -> Result<Script> {
        let mut entries = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (status, weight) = match part.split_once(':') {
                Some((st, w)) => (st.trim(), w.trim()),
                None => (part, "1"),
            };
            let status: u16 = status
                .parse()
                .with_context(|| format!("bad script entry {part:?}: status is not a number"))?;
            if !(100..=599).contains(&status) {
                bail!("bad script entry {part:?}: status must be an HTTP status, 100..=599");
            }
            let weight: f64 = weight
                .parse()
                .with_context(|| format!("bad script entry {part:?}: weight is not a number"))?;
            if !weight.is_finite() || weight < 0.0 {
                bail!("bad script entry {part:?}: weight must be >= 0");
            }
            entries.push(ScriptEntry { status, weight });
        }
        if entries.is_empty() {
            bail!("empty script: expected e.g. \"200:0.8,500:0.2\"");
        }
        let total: f64 = entries.iter().map(|e| e.weight).sum();
        if total <= 0.0 {
            bail!("script {s:?}: weights sum to zero");
        }
        let mut acc = 0.0;
        let mut cumulative = Vec::with_capacity(entries.len());
        for e in &mut entries {
            e.weight /= total;
            acc += e.weight;
            cumulative.push(acc);
        }
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Ok(Script {
            entries,
            cumulative,
        })
    }

    /// Index of the entry chosen by a uniform draw `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> usize {
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cumulative.len() - 1)
    }
}

impl std::fmt::Display for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            // Six decimals at most: normalising 0.7 gives 0.7000000000000001.
            let w = format!("{:.6}", e.weight);
            let w = w.trim_end_matches('0').trim_end_matches('.');
            write!(f, "{}:{}", e.status, if w.is_empty() { "0" } else { w })?;
        }
        Ok(())
    }
}

/// Extra time the sink waits before answering.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    Uniform(Duration, Duration),
}

impl Latency {
    /// Parses `0ms`, `5ms` or `uniform:1ms-5ms`.
    pub fn parse(s: &str) -> Result<Latency> {
        let s = s.trim();
        if let Some(range) = s.strip_prefix("uniform:") {
            let (lo, hi) = range
                .split_once('-')
                .with_context(|| format!("bad latency {s:?}: expected uniform:1ms-5ms"))?;
            let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
            if hi < lo {
                bail!("bad latency {s:?}: upper bound below lower bound");
            }
            Ok(Latency::Uniform(lo, hi))
        } else {
            Ok(Latency::Fixed(parse_duration(s)?))
        }
    }

    /// The delay for a uniform draw `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) => lo + (hi - lo).mul_f64(u),
        }
    }

    pub fn is_zero(&self) -> bool {
        matches!(*self, Latency::Fixed(d) if d.is_zero())
    }
}

/// xorshift64*: fast, good enough for picking scripted answers; one per thread.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Microseconds since the Unix epoch (the clock `sent_us` is written in).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("20").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn script_parse_and_pick() {
        let s = Script::parse("200:0.8,500:0.2").unwrap();
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[0].status, 200);
        assert_eq!(s.pick(0.0), 0);
        assert_eq!(s.pick(0.79), 0);
        assert_eq!(s.pick(0.81), 1);
        assert_eq!(s.pick(0.999_999), 1);

        let n = Script::parse("200:4, 500:1").unwrap();
        assert!((n.entries[0].weight - 0.8).abs() < 1e-9);

        let one = Script::parse("204").unwrap();
        assert_eq!(
            one.entries,
            vec![ScriptEntry {
                status: 204,
                weight: 1.0
            }]
        );
        assert_eq!(one.pick(0.5), 0);

        assert!(Script::parse("").is_err());
        assert!(Script::parse("abc:1").is_err());
        assert!(Script::parse("200:-1").is_err());
        assert!(Script::parse("200:0").is_err());
        assert!(Script::parse("42:1").is_err());
        assert!(Script::parse("999").is_err());
        assert!(Script::parse("600:1").is_err());
        assert!(Script::parse("599,100").is_ok());
    }

    #[test]
    fn a_script_shows_its_weights_as_written() {
        let s = Script::parse("200:0.7,500:0.2,404:0.1").unwrap();
        assert_eq!(s.to_string(), "200:0.7,500:0.2,404:0.1");
        assert_eq!(
            Script::parse("200:2,500:1").unwrap().to_string(),
            "200:0.666667,500:0.333333"
        );
        assert_eq!(
            Script::parse("200,500:0").unwrap().to_string(),
            "200:1,500:0"
        );
    }

    #[test]
    fn flag_values() {
        assert_eq!(parse_probability("0").unwrap(), 0.0);
        assert_eq!(parse_probability("1").unwrap(), 1.0);
        assert_eq!(parse_probability("0.25").unwrap(), 0.25);
        for bad in ["1.5", "2", "-0.1", "NaN", "x", ""] {
            assert!(parse_probability(bad).is_err(), "{bad}");
        }
        assert!(parse_probability("1.5")
            .unwrap_err()
            .to_string()
            .contains("between 0 and 1"));
        assert_eq!(parse_positive("3").unwrap(), 3);
        assert_eq!(parse_positive_u64("16").unwrap(), 16);
        assert!(parse_positive("0")
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
        assert!(parse_positive("-1").is_err());
        assert!(parse_positive_u64("0").is_err());
    }

    #[test]
    fn script_draws_follow_weights() {
        let s = Script::parse("200:0.8,500:0.2").unwrap();
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 2];
        for _ in 0..100_000 {
            counts[s.pick(rng.next_f64())] += 1;
        }
        let share = counts[1] as f64 / 100_000.0;
        assert!((share - 0.2).abs() < 0.01, "500 share {share}");
    }

    #[test]
    fn latency_specs() {
        assert!(Latency::parse("0ms").unwrap().is_zero());
        assert_eq!(
            Latency::parse("uniform:1ms-5ms").unwrap(),
            Latency::Uniform(Duration::from_millis(1), Duration::from_millis(5))
        );
        let l = Latency::parse("uniform:1ms-5ms").unwrap();
        assert_eq!(l.sample(0.5), Duration::from_millis(3));
        assert!(Latency::parse("uniform:5ms-1ms").is_err());
        assert!(Latency::parse("uniform:5ms").is_err());
    }
}
