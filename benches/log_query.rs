//! Webhook log queries over a large log: the first page of each filter `GET /v1/events`
//! offers, read through [`Store::query`] with the admin API's parameters (limit 50,
//! budget 20,000), then the same pages over HTTP from the admin API itself, and the size
//! of the indexes on disk.
//!
//! Run: `cargo bench --bench log_query` (plain `main`, no criterion: the fill alone takes
//! minutes).
//!
//! - `RICOCHET_LOG_BENCH_DIR`: the data dir (default `$HOME/.cache/ricochet-logbench`,
//!   outside the repo). A complete log of the requested size there is reused; a smaller
//!   one, or an interrupted fill, is extended (the log is generated deterministically
//!   from the event number, so a fill can be resumed).
//! - `RICOCHET_LOG_BENCH_EVENTS`: events in the log (default 10,000,000).
//! - `RICOCHET_LOG_BENCH_REPS`: runs of each query (default 40; HTTP runs: half that).
//! - `RICOCHET_LOG_BENCH_COLD`: cold runs of each query (default 3; 0 skips them): a
//!   fresh open after the data dir's files are dropped from the page cache.
//!
//! The log: 7 event types of the seed catalogue with a skewed mix (one at 0.5%), ~1,000
//! accounts (Zipf; 10% of events have none), 200 endpoints (each event routed to 1–3),
//! 280–380-byte `data` payloads, one event every ~60 ms (10M events ≈ 7 days), one
//! attempt per delivery, 1% of deliveries failed (state-indexed as the committer does).
//! After the fill every memtable is flushed and the bench waits for RocksDB's background
//! compactions to finish (read from its `LOG`; the store exposes no manual compaction).
//!
//! Queries run round-robin (every query once per round) so machine noise spreads over
//! all of them; each is reported as min / median / p90, plus its first (coldest) run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet::admin::{self, AdminSetup};
use ricochet::config::EndpointConfig;
use ricochet::shard::mailbox;
use ricochet::store::{
    seq_floor, seq_time_ms, AttemptRecord, Batch, DeliveryState, EndpointId, EndpointMeta,
    EndpointSource, EventQuery, EventRecord, RequestLog, Seq, Store,
};

/// Event types and their share of the log, per 100,000.
const TYPES: [(&str, u64); 7] = [
    ("action_lifecycle", 40_000),
    ("action_inquiry", 20_000),
    ("tracking_value_request", 15_000),
    ("action_clearing", 12_000),
    ("job_completed", 8_000),
    ("publisher_application", 4_500),
    ("advocate.coupon_created", 500),
];
const COMMON_TYPE: &str = "action_lifecycle";
const RARE_TYPE: &str = "advocate.coupon_created";
const ACCOUNTS: usize = 1000;
const ENDPOINTS: u32 = 200;
/// Mean spacing of events: 10M events span ~6.9 days.
const INTERVAL_MS: u64 = 60;
/// 2026-03-01T00:00:00Z: the first event's millisecond.
const BASE_MS: u64 = 1_772_323_200_000;
const BATCH_EVENTS: usize = 5_000;
/// Deliveries that failed for good, per 10,000.
const FAILED_PER_10K: u64 = 100;
/// What `GET /v1/events` uses (src/admin/events.rs).
const LIMIT: usize = 50;
const BUDGET: usize = 20_000;
/// Bumped when the generated log changes: an older fill is then refused, not reused.
const FORMAT: u32 = 1;
const COMPLETE: &str = "logbench-complete";
const FILLING: &str = "logbench-filling";

fn main() {
    let dir = std::env::var_os("RICOCHET_LOG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/ricochet-logbench")
        });
    let events = env_u64("RICOCHET_LOG_BENCH_EVENTS", 10_000_000);
    let reps = env_u64("RICOCHET_LOG_BENCH_REPS", 40).max(1) as usize;
    println!("log_query: {events} events in {}", dir.display());

    let counts = prepare(&dir, events);
    {
        // Compactions a reopen starts run to the end before anything is measured.
        let _store = Store::open(&dir).expect("open store");
        settle(&dir, Duration::from_secs(20 * 60));
    }
    println!(
        "log: {} events, {} deliveries ({} failed), {} index entries written",
        counts.events, counts.deliveries, counts.failed, counts.index_entries
    );
    if let Some(secs) = counts.fill_secs {
        println!(
            "fill: {:.0} s, {:.0} events/s (batches of {BATCH_EVENTS}, no sync)",
            secs,
            counts.events as f64 / secs
        );
    }

    let queries = queries(events);
    let cold_runs = env_u64("RICOCHET_LOG_BENCH_COLD", 3) as usize;
    let (cold, cold_open) = run_cold(&dir, &queries, cold_runs);
    let store = Store::open(&dir).expect("open store");
    let direct = run_direct(&store, &queries, reps);
    let deep = run_deep(&store, (reps / 4).max(3));
    let http = run_http(&store, &queries, (reps / 2).max(1));

    println!();
    println!(
        "first page (limit {LIMIT}, budget {BUDGET}), {reps} runs each, ms; HTTP = GET /v1/events \
         on the admin API, keep-alive, {} runs",
        (reps / 2).max(1)
    );
    println!(
        "cold = median of {cold_runs} runs, each on a store opened afresh after the data dir's \
         files were dropped from the page cache (open itself: median {:.0} ms)",
        Stats::of(&cold_open).median
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8} {:>7}  {:<14} {:>9} {:>9}",
        "query", "min", "median", "p90", "first", "events", "page", "HTTP med", "cold"
    );
    for (i, q) in queries.iter().enumerate() {
        let s = Stats::of(&direct[i].times);
        let h = Stats::of(&http[i]);
        println!(
            "{:<44} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}  {:<14} {:>9.2} {:>9.2}",
            q.name,
            s.min,
            s.median,
            s.p90,
            s.first,
            direct[i].returned,
            direct[i].page,
            h.median,
            Stats::of(&cold[i]).median
        );
    }
    let all = Stats::of(&deep.iter().flatten().copied().collect::<Vec<_>>());
    let last = Stats::of(deep.last().map(Vec::as_slice).unwrap_or(&[]));
    println!(
        "{:<44} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7}  {:<14}",
        format!("type={COMMON_TYPE}: pages 1-20, per page"),
        all.min,
        all.median,
        all.p90,
        "",
        LIMIT,
        "full"
    );
    println!(
        "{:<44} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7}  {:<14}",
        "  ... page 20 alone", last.min, last.median, last.p90, "", LIMIT, "full"
    );

    println!();
    report_sizes(&store, &dir, &counts);
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------
// The generated log

/// splitmix64: a tiny deterministic generator (every event is a function of its number).
struct Rng(u64);

impl Rng {
    fn for_event(i: u64) -> Rng {
        Rng(i.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x005E_ED0F_10C5)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What an event is, without its payload (cheap: recomputed when a fill resumes).
struct Meta {
    ms: u64,
    etype: &'static str,
    /// Zipf rank, 1-based.
    account: Option<usize>,
    routes: Vec<EndpointId>,
    failed: Vec<bool>,
    has_id: bool,
    rng: Rng,
}

struct Gen {
    /// Cumulative Zipf(1) weights of the accounts.
    zipf: Vec<f64>,
    request_lines: Vec<Arc<str>>,
}

impl Gen {
    fn new() -> Gen {
        let mut acc = 0.0;
        let zipf = (1..=ACCOUNTS)
            .map(|k| {
                acc += 1.0 / k as f64;
                acc
            })
            .collect();
        let request_lines = (0..=ENDPOINTS)
            .map(|ep| format!("POST http://hooks-{ep:03}.partner.example/ricochet/postback").into())
            .collect();
        Gen {
            zipf,
            request_lines,
        }
    }

    fn meta(&self, i: u64) -> Meta {
        let mut r = Rng::for_event(i);
        let ms = BASE_MS + i * INTERVAL_MS + r.below(INTERVAL_MS);
        let mut w = r.below(100_000);
        let mut etype = TYPES[0].0;
        for (t, share) in TYPES {
            if w < share {
                etype = t;
                break;
            }
            w -= share;
        }
        let account = (r.below(10) != 0).then(|| {
            let total = *self.zipf.last().unwrap();
            let u = (r.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
            self.zipf.partition_point(|&c| c <= u).min(ACCOUNTS - 1) + 1
        });
        let n = match r.below(100) {
            0..40 => 1,
            40..75 => 2,
            _ => 3,
        };
        let mut routes = Vec::with_capacity(n);
        while routes.len() < n {
            let ep = 1 + r.below(ENDPOINTS as u64) as EndpointId;
            if !routes.contains(&ep) {
                routes.push(ep);
            }
        }
        let failed = routes
            .iter()
            .map(|_| r.below(10_000) < FAILED_PER_10K)
            .collect();
        let has_id = r.below(10) < 8;
        Meta {
            ms,
            etype,
            account,
            routes,
            failed,
            has_id,
            rng: r,
        }
    }

    /// Writes event `i`, its attempts and its failed-state entries into `b`.
    fn put(&self, store: &Store, b: &mut Batch, i: u64, counts: &mut Counts) {
        let mut m = self.meta(i);
        let seq = seq_floor(m.ms);
        let data = payload(m.etype, i, m.ms, &mut m.rng);
        let body_len = data.len() as u32;
        let ev = EventRecord::new(
            seq,
            m.has_id
                .then(|| format!("{}-{i}", &m.etype[..3]))
                .as_deref(),
            m.etype,
            m.account.map(account_name).as_deref(),
            m.ms - m.rng.below(5_000),
            &m.routes,
            &data,
        );
        b.put_event(store, &ev);
        counts.add(&m);
        for (k, &ep) in m.routes.iter().enumerate() {
            let latency_us = 2_000 + m.rng.below(150_000) as u32;
            let request = RequestLog {
                signed: true,
                content_type: Some("application/json"),
                body_len,
                body_is_data: true,
                ..RequestLog::default()
            };
            let a = if m.failed[k] {
                AttemptRecord {
                    at_ms: m.ms + 3_600_000,
                    latency_us,
                    status: 500,
                    state_after: Some(DeliveryState::Failed),
                    error: "HTTP 500".into(),
                    response_excerpt: b"{\"error\":\"internal\"}".to_vec(),
                    request_line: self.request_lines[ep as usize].clone(),
                    request,
                    ..AttemptRecord::default()
                }
            } else {
                AttemptRecord {
                    at_ms: m.ms + latency_us as u64 / 1000 + 5,
                    latency_us,
                    status: 200,
                    state_after: Some(DeliveryState::Delivered),
                    response_excerpt: b"OK".to_vec(),
                    request_line: self.request_lines[ep as usize].clone(),
                    request,
                    ..AttemptRecord::default()
                }
            };
            b.put_attempt(store, seq, ep, 1, &a);
            if m.failed[k] {
                b.set_state(store, DeliveryState::Failed, ep, seq);
            }
        }
    }
}

fn account_name(rank: usize) -> String {
    format!("acct-{rank:04}")
}

fn endpoint_name(ep: EndpointId) -> String {
    format!("hook-{ep:03}")
}

/// The event number whose sequence number this is.
fn event_of(seq: Seq) -> u64 {
    (seq_time_ms(seq) - BASE_MS) / INTERVAL_MS
}

/// 280–380 bytes of JSON shaped like the seed catalogue's payloads.
fn payload(etype: &str, i: u64, ms: u64, r: &mut Rng) -> Bytes {
    let date = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let cents = |r: &mut Rng| format!("{}.{:02}", r.below(900) + 10, r.below(100));
    let s = match etype {
        "action_lifecycle" | "action_inquiry" | "action_clearing" => {
            let state = ["PENDING", "APPROVED", "REVERSED", "LOCKED"][r.below(4) as usize];
            format!(
                r#"{{"ActionId":"1000.{}.{}","ActionTrackerId":{},"ActionTrackerName":"Standard Sale Tracker","CampaignId":{},"MediaPartnerId":{},"State":"{state}","Amount":{},"Currency":"USD","Payout":{},"OrderId":"ORD-{i}","EventDate":"{date}","items":[{{"Sku":"SKU-{}","Quantity":{},"Price":{}}},{{"Sku":"SKU-{}","Quantity":1,"Price":{}}}]}}"#,
                r.below(10_000),
                r.below(100_000),
                r.below(90_000) + 10_000,
                r.below(9_000) + 1_000,
                r.below(900_000) + 100_000,
                cents(r),
                cents(r),
                r.below(5_000),
                r.below(4) + 1,
                cents(r),
                r.below(5_000),
                cents(r),
            )
        }
        "tracking_value_request" => format!(
            r#"{{"RequestId":"tvr-{i}","CampaignId":{},"MediaPartnerId":{},"ClickId":"{:016x}","TrackingValue":"{}","Currency":"EUR","Amount":{},"IpAddress":"10.{}.{}.{}","UserAgent":"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0","ReferringUrl":"https://shop.example/p/{}","EventDate":"{date}"}}"#,
            r.below(9_000) + 1_000,
            r.below(900_000) + 100_000,
            r.next(),
            r.below(1_000_000),
            cents(r),
            r.below(256),
            r.below(256),
            r.below(256),
            r.below(100_000),
        ),
        "job_completed" => format!(
            r#"{{"JobId":"job-{i}","JobType":"{}","Status":"COMPLETED","RecordsProcessed":{},"RecordsFailed":{},"StartedAt":"{date}","FinishedAt":"{date}","DurationMs":{},"ResultUrl":"https://files.example/jobs/{i}/result.csv","RequestedBy":"user-{}@partner.example"}}"#,
            ["EXPORT", "IMPORT", "RECONCILE"][r.below(3) as usize],
            r.below(2_000_000),
            r.below(50),
            r.below(600_000),
            r.below(5_000),
        ),
        "publisher_application" => format!(
            r#"{{"ApplicationId":"app-{i}","CampaignId":{},"MediaPartnerId":{},"MediaPartnerName":"Partner Media {}","Website":"https://partner{}.example","Status":"{}","Category":"{}","Country":"{}","SubmittedAt":"{date}","Notes":"auto-screened, score {}"}}"#,
            r.below(9_000) + 1_000,
            r.below(900_000) + 100_000,
            r.below(100_000),
            r.below(100_000),
            ["PENDING", "APPROVED", "DECLINED"][r.below(3) as usize],
            ["Coupon", "Content", "Loyalty", "Social"][r.below(4) as usize],
            ["US", "GB", "DE", "FR", "NL"][r.below(5) as usize],
            r.below(100),
        ),
        _ => format!(
            r#"{{"CouponId":"cpn-{i}","Code":"SAVE{}-{:06X}","AdvocateId":"adv-{}","CampaignId":{},"Discount":{{"Type":"PERCENT","Value":{}}},"ValidFrom":"{date}","ValidUntil":"{date}","MaxUses":{},"Channel":"{}","CreatedAt":"{date}"}}"#,
            r.below(50) + 5,
            r.below(1 << 24),
            r.below(1_000_000),
            r.below(9_000) + 1_000,
            r.below(40) + 5,
            r.below(100) + 1,
            ["email", "sms", "social"][r.below(3) as usize],
        ),
    };
    Bytes::from(s)
}

// ---------------------------------------------------------------------------------------
// Filling (or reusing) the data dir

#[derive(Default)]
struct Counts {
    events: u64,
    deliveries: u64,
    failed: u64,
    index_entries: u64,
    fill_secs: Option<f64>,
}

impl Counts {
    fn add(&mut self, m: &Meta) {
        let failed = m.failed.iter().filter(|f| **f).count() as u64;
        self.events += 1;
        self.deliveries += m.routes.len() as u64;
        self.failed += failed;
        // type + account + one per route + two per failed delivery (per endpoint, overall)
        self.index_entries += 1 + m.account.is_some() as u64 + m.routes.len() as u64 + 2 * failed;
    }
}

fn read_marker(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn write_marker(path: &Path, kv: &[(&str, String)]) {
    let text: String = kv.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(path, text).expect("write marker");
}

/// Makes `dir` hold a complete log of `events` events: reuses, extends or fills it.
fn prepare(dir: &Path, events: u64) -> Counts {
    let complete = read_marker(&dir.join(COMPLETE));
    let filling = read_marker(&dir.join(FILLING));
    let ours = |m: &Option<BTreeMap<String, String>>| {
        m.as_ref()
            .is_some_and(|m| m.get("format").map(String::as_str) == Some(&FORMAT.to_string()))
    };
    let have = complete
        .as_ref()
        .filter(|_| ours(&complete))
        .and_then(|m| m.get("events")?.parse::<u64>().ok());
    if let (Some(n), Some(m)) = (have, &complete) {
        if n == events {
            println!("reusing the complete log in {}", dir.display());
            let g = |k: &str| m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            return Counts {
                events: n,
                deliveries: g("deliveries"),
                failed: g("failed"),
                index_entries: g("index_entries"),
                fill_secs: m.get("fill_secs").and_then(|v| v.parse().ok()),
            };
        }
    }
    let non_empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    let extendable = (have.is_some_and(|n| n < events)) || ours(&filling);
    if non_empty && !extendable {
        if complete.is_some() || filling.is_some() {
            println!(
                "{} holds a log of another size or format: removing it",
                dir.display()
            );
            std::fs::remove_dir_all(dir).expect("remove old bench dir");
        } else {
            panic!(
                "{} is not empty and holds no log_query marker: refusing to write there \
                 (set RICOCHET_LOG_BENCH_DIR)",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).expect("create bench dir");
    let _ = std::fs::remove_file(dir.join(COMPLETE));
    write_marker(
        &dir.join(FILLING),
        &[
            ("format", FORMAT.to_string()),
            ("events", events.to_string()),
        ],
    );
    let counts = fill(dir, events);
    write_marker(
        &dir.join(COMPLETE),
        &[
            ("format", FORMAT.to_string()),
            ("events", counts.events.to_string()),
            ("deliveries", counts.deliveries.to_string()),
            ("failed", counts.failed.to_string()),
            ("index_entries", counts.index_entries.to_string()),
            (
                "fill_secs",
                format!("{:.1}", counts.fill_secs.unwrap_or_default()),
            ),
        ],
    );
    let _ = std::fs::remove_file(dir.join(FILLING));
    counts
}

fn fill(dir: &Path, events: u64) -> Counts {
    let store = Store::open(dir).expect("open store");
    let gen = Gen::new();
    // The endpoints, by name, as the admin API finds them.
    let mut b = store.batch();
    for ep in 1..=ENDPOINTS {
        let name = endpoint_name(ep);
        let cfg: EndpointConfig = toml::from_str(&format!(
            "name = \"{name}\"\nevents = [\"*\"]\nurl = \"http://hooks-{ep:03}.partner.example/ricochet/postback\"\n"
        ))
        .expect("endpoint config");
        let meta = EndpointMeta {
            id: ep,
            source: EndpointSource::Api,
            ..EndpointMeta::default()
        };
        b.put_endpoint(&store, &name, &meta);
        b.put_endpoint_config(&store, ep, &name, &cfg);
    }
    store.commit(b, true).expect("commit endpoints");

    let start = match store.max_seq().expect("max seq") {
        Some(seq) => event_of(seq) + 1,
        None => 0,
    };
    let mut counts = Counts::default();
    for i in 0..start.min(events) {
        counts.add(&gen.meta(i));
    }
    if start >= events {
        println!("the log already holds {start} events");
        store.flush().expect("flush");
        counts.fill_secs = None;
        return counts;
    }
    if start > 0 {
        println!("resuming the fill at event {start}");
    }
    let t0 = Instant::now();
    let (mut t_last, mut n_last) = (t0, start);
    let mut i = start;
    while i < events {
        let mut b = store.batch();
        let end = (i + BATCH_EVENTS as u64).min(events);
        for j in i..end {
            gen.put(&store, &mut b, j, &mut counts);
        }
        store.commit(b, false).expect("commit batch");
        if end / 1_000_000 > i / 1_000_000 || end == events {
            let now = Instant::now();
            println!(
                "  {end:>10} events  {:>6.0} s  {:>7.0} events/s overall  {:>7.0} events/s since the last line",
                (now - t0).as_secs_f64(),
                (end - start) as f64 / (now - t0).as_secs_f64(),
                (end - n_last) as f64 / (now - t_last).as_secs_f64(),
            );
            (t_last, n_last) = (now, end);
        }
        i = end;
    }
    let write_secs = t0.elapsed().as_secs_f64();
    store.flush().expect("flush");
    println!(
        "filled {} events in {:.0} s ({:.0} events/s); flushed at {:.0} s",
        events - start,
        write_secs,
        (events - start) as f64 / write_secs,
        t0.elapsed().as_secs_f64()
    );
    settle(dir, Duration::from_secs(30 * 60));
    // The fill rate counts the writes only (compactions after them are not part of it).
    counts.fill_secs = (start == 0).then_some(write_secs);
    counts
}

/// Waits until RocksDB has no flush or compaction running (started = finished in its
/// `LOG` for a few seconds in a row), at most `max`.
fn settle(dir: &Path, max: Duration) {
    let t0 = Instant::now();
    let mut quiet = 0;
    let mut last_note = t0;
    loop {
        let (busy, done) = match std::fs::read_to_string(dir.join("LOG")) {
            Ok(log) => {
                let n = |e: &str| log.matches(&format!("\"event\": \"{e}\"")).count();
                let running = n("compaction_started").saturating_sub(n("compaction_finished"))
                    + n("flush_started").saturating_sub(n("flush_finished"));
                (running, n("compaction_finished"))
            }
            Err(_) => return,
        };
        quiet = if busy == 0 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            if t0.elapsed() > Duration::from_secs(5) {
                println!(
                    "background work settled after {:.0} s ({done} compactions since open)",
                    t0.elapsed().as_secs_f64()
                );
            }
            return;
        }
        if t0.elapsed() > max {
            println!("background work still running after {max:?}: measuring anyway");
            return;
        }
        if last_note.elapsed() > Duration::from_secs(30) {
            println!(
                "  waiting for compactions: {busy} running, {done} done, {:.0} s",
                t0.elapsed().as_secs_f64()
            );
            last_note = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

// ---------------------------------------------------------------------------------------
// Queries

struct Query {
    name: String,
    q: EventQuery,
    /// The same query as `GET /v1/events?…`.
    http: String,
}

fn queries(events: u64) -> Vec<Query> {
    let ep: EndpointId = 17;
    let ep_name = endpoint_name(ep);
    let top = account_name(1);
    let mid = account_name(50);
    let base = EventQuery {
        limit: LIMIT,
        budget: BUDGET,
        ..EventQuery::default()
    };
    let mid_log = seq_floor(BASE_MS + events / 2 * INTERVAL_MS);
    let mk = |name: String, q: EventQuery, http: String| Query { name, q, http };
    vec![
        mk("no filter".into(), base.clone(), String::new()),
        mk(
            format!("type={COMMON_TYPE} (40%)"),
            EventQuery {
                etype: Some(COMMON_TYPE.into()),
                ..base.clone()
            },
            format!("type={COMMON_TYPE}"),
        ),
        mk(
            format!("type={RARE_TYPE} (0.5%)"),
            EventQuery {
                etype: Some(RARE_TYPE.into()),
                ..base.clone()
            },
            format!("type={RARE_TYPE}"),
        ),
        mk(
            format!("endpoint={ep_name}"),
            EventQuery {
                ep: Some(ep),
                ..base.clone()
            },
            format!("endpoint={ep_name}"),
        ),
        mk(
            format!("endpoint={ep_name}&status=failed"),
            EventQuery {
                ep: Some(ep),
                state: Some(DeliveryState::Failed),
                ..base.clone()
            },
            format!("endpoint={ep_name}&status=failed"),
        ),
        mk(
            format!("endpoint={ep_name}&status=delivered"),
            EventQuery {
                ep: Some(ep),
                state: Some(DeliveryState::Delivered),
                ..base.clone()
            },
            format!("endpoint={ep_name}&status=delivered"),
        ),
        mk(
            "status=failed".into(),
            EventQuery {
                state: Some(DeliveryState::Failed),
                ..base.clone()
            },
            "status=failed".into(),
        ),
        mk(
            format!("account={top} (top, ~12%)"),
            EventQuery {
                account: Some(top.clone()),
                ..base.clone()
            },
            format!("account={top}"),
        ),
        mk(
            format!("account={mid} (~0.24%)"),
            EventQuery {
                account: Some(mid.clone()),
                ..base.clone()
            },
            format!("account={mid}"),
        ),
        mk(
            format!("type={COMMON_TYPE}&account={top}"),
            EventQuery {
                etype: Some(COMMON_TYPE.into()),
                account: Some(top.clone()),
                ..base.clone()
            },
            format!("type={COMMON_TYPE}&account={top}"),
        ),
        mk(
            format!("type={COMMON_TYPE}&account={mid}"),
            EventQuery {
                etype: Some(COMMON_TYPE.into()),
                account: Some(mid.clone()),
                ..base.clone()
            },
            format!("type={COMMON_TYPE}&account={mid}"),
        ),
        mk(
            format!("type={COMMON_TYPE}, cursor mid-log"),
            EventQuery {
                etype: Some(COMMON_TYPE.into()),
                before: Some(mid_log),
                ..base.clone()
            },
            format!("type={COMMON_TYPE}&cursor=c{mid_log:x}"),
        ),
    ]
}

struct Measured {
    times: Vec<f64>,
    returned: usize,
    page: &'static str,
}

fn run_direct(store: &Store, queries: &[Query], reps: usize) -> Vec<Measured> {
    let mut out: Vec<Measured> = queries
        .iter()
        .map(|_| Measured {
            times: Vec::with_capacity(reps),
            returned: 0,
            page: "",
        })
        .collect();
    for rep in 0..reps {
        for (i, q) in queries.iter().enumerate() {
            let t = Instant::now();
            let page = store.query(&q.q).expect("query");
            out[i].times.push(t.elapsed().as_secs_f64() * 1e3);
            if rep == 0 {
                out[i].returned = page.events.len();
                out[i].page = match (page.events.len() == LIMIT, page.next.is_some()) {
                    (true, _) => "full",
                    (false, true) => "SHORT (budget)",
                    (false, false) => "all matches",
                };
            }
        }
    }
    out
}

/// Each query `runs` times on a cold store: the data dir's files dropped from the page
/// cache (`POSIX_FADV_DONTNEED`, this dir only), a fresh open (so an empty block cache),
/// one query. Returns per query the times (ms), and the times of the opens.
fn run_cold(dir: &Path, queries: &[Query], runs: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let mut out = vec![Vec::with_capacity(runs); queries.len()];
    let mut opens = Vec::new();
    for _ in 0..runs {
        for (i, q) in queries.iter().enumerate() {
            evict_page_cache(dir);
            let t = Instant::now();
            let store = Store::open(dir).expect("open store");
            opens.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            store.query(&q.q).expect("query");
            out[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    (out, opens)
}

fn evict_page_cache(dir: &Path) {
    use std::os::fd::AsRawFd;
    for entry in std::fs::read_dir(dir).expect("read bench dir").flatten() {
        if let Ok(f) = std::fs::File::open(entry.path()) {
            // SAFETY: a valid open descriptor; advice only, no memory is touched.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

/// `type=COMMON_TYPE`, 20 pages following `next`, `walks` times: per page index, the
/// times of that page (ms).
fn run_deep(store: &Store, walks: usize) -> Vec<Vec<f64>> {
    let mut pages: Vec<Vec<f64>> = (0..20).map(|_| Vec::with_capacity(walks)).collect();
    for _ in 0..walks {
        let mut q = EventQuery {
            etype: Some(COMMON_TYPE.into()),
            limit: LIMIT,
            budget: BUDGET,
            ..EventQuery::default()
        };
        for p in pages.iter_mut() {
            let t = Instant::now();
            let page = store.query(&q).expect("query");
            p.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(page.events.len(), LIMIT, "deep page short");
            q.before = page.next;
        }
    }
    pages
}

/// The same queries through the admin API (its own thread, a keep-alive connection):
/// endpoint name lookup, the query, delivery names, JSON.
fn run_http(store: &Store, queries: &[Query], reps: usize) -> Vec<Vec<f64>> {
    let (commit, _commit_rx) = mailbox();
    let addr = admin::start(AdminSetup {
        listener: std::net::TcpListener::bind("127.0.0.1:0").expect("bind admin API"),
        store: store.clone(),
        token: None,
        commit,
        workers: Vec::new(),
        finals: ricochet::metrics::final_snapshots(0),
        registry: Arc::new(RwLock::new(BTreeMap::new())),
        max_line_bytes: 1 << 20,
        retention: std::time::Duration::from_secs(7 * 86_400),
        allow_private_networks: false,
        stopping: Arc::new(AtomicBool::new(false)),
        answering: Arc::default(),
    })
    .expect("start admin API");
    let mut conn = TcpStream::connect(addr).expect("connect admin API");
    conn.set_nodelay(true).ok();
    let mut out = vec![Vec::with_capacity(reps); queries.len()];
    for rep in 0..reps {
        for (i, q) in queries.iter().enumerate() {
            let t = Instant::now();
            let (status, body) = http_get(&mut conn, &format!("/v1/events?{}", q.http));
            out[i].push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(
                status,
                200,
                "{}: {}",
                q.http,
                String::from_utf8_lossy(&body)
            );
            if rep == 0 {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                let n = v["events"].as_array().map_or(0, Vec::len);
                if n == 0 && !q.name.contains("failed") {
                    println!("warning: HTTP {} returned no events", q.http);
                }
            }
        }
    }
    out
}

fn http_get(conn: &mut TcpStream, path: &str) -> (u16, Vec<u8>) {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").expect("send");
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "admin API closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).expect("read body");
        assert!(n > 0, "admin API closed the connection mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (status, buf[head_end..head_end + len].to_vec())
}

struct Stats {
    min: f64,
    median: f64,
    p90: f64,
    first: f64,
}

impl Stats {
    fn of(v: &[f64]) -> Stats {
        if v.is_empty() {
            return Stats {
                min: f64::NAN,
                median: f64::NAN,
                p90: f64::NAN,
                first: f64::NAN,
            };
        }
        let first = v[0];
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stats {
            min: s[0],
            median,
            p90: s[((n * 9).div_ceil(10)).max(1) - 1],
            first,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sizes

fn report_sizes(store: &Store, dir: &Path, counts: &Counts) {
    let sizes = store.sizes();
    let n = counts.events.max(1) as f64;
    println!("column family sizes ({} events):", counts.events);
    println!(
        "{:<10} {:>12} {:>10} {:>12} {:>12}",
        "family", "SST MiB", "memtable", "B / event", ""
    );
    let mut total = 0;
    for (name, sst, mem) in &sizes {
        total += sst;
        let extra = if *name == "index" {
            format!(
                "{:.1} B / entry ({} entries)",
                *sst as f64 / counts.index_entries.max(1) as f64,
                counts.index_entries
            )
        } else {
            String::new()
        };
        println!(
            "{:<10} {:>12.1} {:>10} {:>12.1} {}",
            name,
            *sst as f64 / (1 << 20) as f64,
            mem,
            *sst as f64 / n,
            extra
        );
    }
    println!(
        "{:<10} {:>12.1} {:>10} {:>12.1}",
        "all SSTs",
        total as f64 / (1 << 20) as f64,
        "",
        total as f64 / n
    );
    let du: u64 = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "data dir on disk (SSTs, WAL, logs): {:.1} MiB",
        du as f64 / (1 << 20) as f64
    );
}
