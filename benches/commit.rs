//! The committer's write path: what one round costs per event when it writes new events
//! (record, producer id, index, `due` key) and the outcomes of earlier ones (attempt
//! record, `due` key retired) into one write batch and commits it to RocksDB.
//!
//! Run: `cargo bench --bench commit` (plain `main`: timed rounds, nothing else).
//!
//! Four ways, alternating round by round so the machine's noise and the growing memtables
//! spread over all of them: the write batch grown as it fills or sized up front from
//! [`event_write_estimate`] and [`outcome_write_estimate`] (what the committer does), and
//! RocksDB's per-thread perf counters left on (its default) or turned off
//! ([`quiet_perf_counters`], what the committer does). Each round is 1,024 events of
//! ~770 bytes (the load generator's seed payload) plus the outcomes of the previous
//! round's 1,024; the commit is not fsynced. Reported: median and minimum nanoseconds per
//! event, building the batch and committing it.

use std::time::Instant;

use ricochet::store::{
    event_write_estimate, outcome_write_estimate, quiet_perf_counters, seq_floor, AttemptRecord,
    DeliveryState, DueKey, DueVal, EventRecord, RequestLog, Seq, Store,
};

const PER_ROUND: u64 = 1024;
const ROUNDS: usize = 40;

fn seq_of(i: u64) -> Seq {
    seq_floor(1_772_323_200_000 + i / 64) + i % 64
}

fn data(i: u64) -> Vec<u8> {
    let mut d = format!(
        r#"{{"sent_us":1772323200000000,"CampaignId":9876,"ActionId":"ACT-{i}","Status":"APPROVED","Amount":1234.56,"Currency":"USD","Oid":"ORD-{i}","items":["#
    );
    for k in 0..5 {
        d.push_str(&format!(
            r#"{{"sku":"SKU-{}","amt":19.99,"cat":"home","qty":2,"cartamt":1234.56,"rbt":"0","name":"Lamp"}}"#,
            (i * 31 + k) % 100_000
        ));
        d.push(if k < 4 { ',' } else { ']' });
    }
    d.push('}');
    d.into_bytes()
}

fn attempt() -> AttemptRecord {
    AttemptRecord {
        at_ms: 1_772_323_200_500,
        latency_us: 850,
        status: 200,
        timed_out: false,
        state_after: Some(DeliveryState::Delivered),
        next_due_ms: 0,
        error: String::new(),
        response_excerpt: b"ok".to_vec(),
        request_line: "POST http://127.0.0.1:9000/pb".into(),
        request: RequestLog {
            content_type: Some("application/json"),
            body_is_data: true,
            body_len: 770,
            ..RequestLog::default()
        },
    }
}

/// One round: events `first..first + PER_ROUND`, and the outcomes of the round before.
/// Returns nanoseconds per event.
fn round(store: &Store, first: u64, sized: bool, datas: &[Vec<u8>], rec: &AttemptRecord) -> f64 {
    let started = Instant::now();
    let mut batch = if sized {
        let n = PER_ROUND as usize;
        let d = datas[0].len();
        store.batch_sized(
            n * event_write_estimate(d, 12, 16, 8) + n * outcome_write_estimate(Some(rec)),
        )
    } else {
        store.batch()
    };
    for i in first..first + PER_ROUND {
        let id = format!("ld-bench-{i}");
        let acct = format!("acct-{}", i % 100);
        let ev = EventRecord::new(
            seq_of(i),
            Some(&id),
            "action_lifecycle",
            Some(&acct),
            1_772_323_200_000,
            &[(i % 16) as u32 + 1],
            &datas[(i % datas.len() as u64) as usize],
        );
        batch.put_event(store, &ev);
        let due = DueKey {
            due_ms: 1_772_323_200_000 + i / 64,
            seq: seq_of(i),
            ep: (i % 16) as u32 + 1,
        };
        batch.put_due(store, due, DueVal::NEW);
        if first >= PER_ROUND {
            let j = i - PER_ROUND;
            let ep = (j % 16) as u32 + 1;
            batch.put_attempt(store, seq_of(j), ep, 1, rec);
            batch.del_due(
                store,
                DueKey {
                    due_ms: 1_772_323_200_000 + j / 64,
                    seq: seq_of(j),
                    ep,
                },
            );
        }
    }
    store.commit(batch, false).expect("commit");
    started.elapsed().as_nanos() as f64 / PER_ROUND as f64
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    let datas: Vec<Vec<u8>> = (0..64).map(data).collect();
    let rec = attempt();
    let ways = [
        ("grown", false, false),
        ("sized", true, false),
        ("grown, counters off", false, true),
        ("sized, counters off", true, true),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    // Each way gets its own stream of events, so every round writes fresh keys and
    // retires the `due` keys of its own previous round.
    let stream = 1u64 << 32;
    let mut next = [0u64; 4];
    // A warm-up round per way, not timed.
    for (w, &(_, sized, quiet)) in ways.iter().enumerate() {
        set_counters(quiet);
        round(&store, w as u64 * stream, sized, &datas, &rec);
        next[w] = PER_ROUND;
    }
    for r in 0..ROUNDS {
        for k in 0..ways.len() {
            // Rotate the order each round.
            let w = (k + r) % ways.len();
            let (_, sized, quiet) = ways[w];
            set_counters(quiet);
            let t = round(&store, w as u64 * stream + next[w], sized, &datas, &rec);
            next[w] += PER_ROUND;
            times[w].push(t);
        }
    }
    println!("{:<22} {:>12} {:>10}", "way", "median ns", "min ns");
    for (w, (name, _, _)) in ways.iter().enumerate() {
        let t = &mut times[w];
        t.sort_by(f64::total_cmp);
        println!("{:<22} {:>12.0} {:>10.0}", name, t[t.len() / 2], t[0]);
    }
}

/// RocksDB's perf counters on (its default, `EnableCount`) or off for this thread.
fn set_counters(quiet: bool) {
    if quiet {
        quiet_perf_counters();
    } else {
        rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::EnableCount);
    }
}
