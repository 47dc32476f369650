//! The loader's event reads: a pass over a page of due deliveries reads each one's event
//! from the log, either by a point read per event ([`Store::event`]) or through one
//! forward iterator ([`Store::event_reader`]), which the loader uses.
//!
//! Run: `cargo bench --bench loader` (plain `main`: one fill, then timed passes).
//!
//! The log: 200,000 events of 280–380 bytes in write batches of 500, 60 per millisecond
//! (sequence numbers as the committer gives them); the first 150,000 flushed to table
//! files, the rest in the memtable. Each pass reads up to 20,000 events in ascending order
//! from the 20,000th on, every `stride`-th one: stride 1 is a run of fresh deliveries
//! spilled during a burst, stride 5 the retries of a 20% failure rate, larger strides
//! sparser retries. Passes alternate between the two ways (every configuration once per
//! round, 15 rounds) so machine noise spreads over both; each is reported as the median
//! and min nanoseconds per event read.

use std::time::Instant;

use ricochet::store::{seq_floor, EventRecord, Seq, Store};

const EVENTS: u64 = 200_000;
const ON_DISK: u64 = 150_000;
const PER_MS: u64 = 60;
const READS: u64 = 20_000;
const ROUNDS: usize = 15;
const STRIDES: [u64; 5] = [1, 2, 5, 16, 64];

fn seq_of(i: u64) -> Seq {
    seq_floor(1_772_323_200_000 + i / PER_MS) + i % PER_MS
}

fn event(i: u64) -> EventRecord {
    let n = 280 + (i * 7919) % 100;
    let mut data = format!(r#"{{"ActionId":"{i}","Note":""#);
    while data.len() < n as usize - 2 {
        data.push(char::from(b'a' + (i % 26) as u8));
    }
    data.push_str(r#""}"#);
    EventRecord::new(
        seq_of(i),
        Some(&format!("ev-{i}")),
        "action_lifecycle",
        Some(&format!("acct-{}", i % 1000)),
        1_772_323_200_000 + i / PER_MS,
        &[(i % 16) as u32 + 1],
        data.as_bytes(),
    )
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    let mut i = 0;
    while i < EVENTS {
        let mut b = store.batch();
        for j in i..(i + 500).min(EVENTS) {
            b.put_event(&store, &event(j));
        }
        store.commit(b, false).expect("write");
        i += 500;
        if i == ON_DISK {
            store.flush().expect("flush");
        }
    }
    let first = 20_000;
    let mut results: Vec<(u64, &str, Vec<f64>)> = Vec::new();
    for &stride in &STRIDES {
        results.push((stride, "point reads", Vec::new()));
        results.push((stride, "event reader", Vec::new()));
    }
    let mut checksum = 0usize;
    for _ in 0..ROUNDS {
        for (stride, way, times) in results.iter_mut() {
            let reads = READS.min((EVENTS - first) / *stride);
            let seqs = (0..reads).map(|k| seq_of(first + k * *stride));
            let started = Instant::now();
            if *way == "point reads" {
                for seq in seqs {
                    checksum += store
                        .event(seq)
                        .expect("read")
                        .map_or(0, |e| e.data().len());
                }
            } else {
                let mut r = store.event_reader();
                for seq in seqs {
                    checksum += r.get(seq).expect("read").map_or(0, |e| e.data().len());
                }
            }
            times.push(started.elapsed().as_nanos() as f64 / reads as f64);
        }
    }
    println!(
        "{:<8} {:<14} {:>12} {:>10}",
        "stride", "way", "median ns", "min ns"
    );
    for (stride, way, mut times) in results {
        times.sort_by(f64::total_cmp);
        println!(
            "{:<8} {:<14} {:>12.0} {:>10.0}",
            stride,
            way,
            times[times.len() / 2],
            times[0]
        );
    }
    std::hint::black_box(checksum);
}
