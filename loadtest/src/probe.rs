//! Machine probes, taken at the start of every run: how long a small durable append
//! takes on the filesystem of the run's data dir (what `durability = "sync"` waits for
//! once per group commit), how long one core takes for a fixed piece of work, and how
//! long a load takes from a random place in 32 MiB (the size of this machine's L3, which
//! it shares with its neighbours: what a memtable insert mostly waits on).
//!
//! The same build gives figures a quarter apart on this kind of shared VM from one
//! session to the next (docs/perf/history.md#slow, session 13); the probes put the state of
//! the machine beside each run's figures, so runs from different hours can be read
//! against each other. They measure before the sink, ricochet and the generator start,
//! and take ~0.5–1 s together (most of it shuffling the memory probe's cycle). This
//! module must not be used to judge ricochet: it only describes the machine.

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

/// Appends (4 KiB each, then `fdatasync`) in the fsync probe.
const FSYNC_APPENDS: usize = 100;
/// Repetitions of the CPU work; the median is reported.
const CPU_REPS: usize = 5;
/// Passes over the CPU probe's 256 KiB buffer per repetition.
const CPU_PASSES: usize = 96;
/// Slots (u32) of the memory probe's random cycle: 32 MiB.
const MEM_SLOTS: usize = 8 << 20;
/// Dependent loads per repetition of the memory probe (three repetitions, the median).
const MEM_STEPS: usize = 1 << 19;

/// What the probes measured.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MachineProbe {
    /// One 4-KiB append plus `fdatasync`, median and 99th percentile.
    pub fdatasync_p50_us: f64,
    pub fdatasync_p99_us: f64,
    /// The fixed CPU work (a dependent multiply–rotate chain over 256 KiB, 96 passes):
    /// the median of five repetitions, wall clock on one thread.
    pub cpu_us: f64,
    /// One load from a random place in 32 MiB (a chase through a random cycle),
    /// nanoseconds, the median of three repetitions of 2^19 dependent loads.
    pub mem_ns: f64,
}

/// Runs the three probes, the fsync one in `dir` (its file is removed afterwards).
pub fn measure(dir: &Path) -> std::io::Result<MachineProbe> {
    let (fdatasync_p50_us, fdatasync_p99_us) = fdatasync(dir, FSYNC_APPENDS)?;
    Ok(MachineProbe {
        fdatasync_p50_us,
        fdatasync_p99_us,
        cpu_us: cpu_work(CPU_REPS),
        mem_ns: mem_latency(MEM_SLOTS, MEM_STEPS, 3),
    })
}

/// `n` appends of 4 KiB to a fresh file in `dir`, each followed by `fdatasync` (the file
/// grows, as a write-ahead log does); returns the median and p99 in microseconds.
pub fn fdatasync(dir: &Path, n: usize) -> std::io::Result<(f64, f64)> {
    let path = dir.join("probe.fdatasync");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = [0xa5u8; 4096];
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((percentile(&mut us, 50.0), percentile(&mut us, 99.0)))
}

/// The fixed CPU work `reps` times; the median wall time of one repetition, in µs.
pub fn cpu_work(reps: usize) -> f64 {
    let buf: Vec<u64> = (0..32_768u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let mut us = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for _ in 0..CPU_PASSES {
            for &x in black_box(&buf[..]) {
                h = (h ^ x).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
            }
        }
        black_box(h);
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    percentile(&mut us, 50.0)
}

/// Nanoseconds per dependent load through one random cycle over `slots` u32s (Sattolo's
/// shuffle, so the chase visits every slot before it repeats): the median of `reps`
/// repetitions of `steps` loads.
pub fn mem_latency(slots: usize, steps: usize, reps: usize) -> f64 {
    let next = random_cycle(slots);
    let mut ns = Vec::with_capacity(reps);
    let mut at = 0u32;
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..steps {
            at = next[at as usize];
        }
        ns.push(t.elapsed().as_secs_f64() * 1e9 / steps as f64);
    }
    black_box(at);
    percentile(&mut ns, 50.0)
}

/// A permutation of `0..n` that is one cycle through all `n` slots (Sattolo's algorithm,
/// xorshift for the random draws: the probe needs no quality beyond defeating prefetch).
fn random_cycle(n: usize) -> Vec<u32> {
    let mut next: Vec<u32> = (0..n as u32).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    next
}

/// The nearest-rank percentile `p` of `v` (sorted in place); 0 for an empty slice.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }

    #[test]
    fn the_memory_probe_chases_one_cycle_through_every_slot() {
        let next = random_cycle(1000);
        let (mut at, mut seen) = (0usize, vec![false; 1000]);
        for _ in 0..1000 {
            assert!(!seen[at], "slot {at} visited twice");
            seen[at] = true;
            at = next[at] as usize;
        }
        assert_eq!(at, 0, "the cycle closes after every slot");
        assert!(mem_latency(1 << 10, 1 << 10, 1) > 0.0);
    }

    #[test]
    fn the_fsync_probe_times_every_append_and_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("ricochet-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (p50, p99) = fdatasync(&dir, 5).unwrap();
        assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn the_fsync_probe_reports_a_missing_dir() {
        assert!(fdatasync(Path::new("/nonexistent/ricochet-probe"), 1).is_err());
    }
}
