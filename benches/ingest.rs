//! Ingest hot path: framing, parsing one line (simd-json tape + envelope + data span),
//! routing it, and encoding the records the committer writes for it.
//!
//! `cargo bench --bench ingest`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

use ricochet::commit::{RouteInfo, Router};
use ricochet::ingest::parse::LineParser;
use ricochet::store::EndpointMeta;
use ricochet::store::{DueKey, EventRecord};

const LINE: &str = r#"{"type":"action_lifecycle","id":"act-1000234","account":"partner-555","time":"2026-04-08T09:00:00Z","data":{"ActionId":"1000.2345.6789","ActionTrackerId":12345,"ActionTrackerName":"Standard Sale Tracker","CampaignId":5678,"MediaPartnerId":555,"State":"PENDING","Amount":250.00,"Currency":"USD","Payout":12.50,"OrderId":"ORD-99812","EventDate":"2026-04-08T09:00:00Z","items":[{"Sku":"SKU-1","Quantity":1,"Price":50.00},{"Sku":"SKU-2","Quantity":2,"Price":100.00}]}}"#;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(LINE.len() as u64));
    let mut p = LineParser::default();
    g.bench_function("parse_line", |b| {
        b.iter(|| black_box(p.parse(black_box(LINE.as_bytes())).unwrap()))
    });
    // Framing: split a 64 KiB read into lines.
    let mut chunk = Vec::new();
    while chunk.len() < 64 * 1024 {
        chunk.extend_from_slice(LINE.as_bytes());
        chunk.push(b'\n');
    }
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("frame_64k", |b| {
        b.iter(|| {
            let mut n = 0usize;
            ricochet::ingest::split_lines(black_box(&chunk), 0, |line| n += line.len());
            black_box(n)
        })
    });
    // Routing: 16 endpoints over 8 types (two per type, one account-scoped) plus a wildcard.
    let types = [
        "action_lifecycle",
        "action_inquiry",
        "action_clearing",
        "tracking_value_request",
        "job_completed",
        "publisher_application",
        "advocate.coupon_created",
        "other",
    ];
    let routes: Vec<RouteInfo> = (0..17u32)
        .map(|i| RouteInfo {
            id: i + 1,
            name: format!("e{i}"),
            worker: (i % 2) as usize,
            events: if i == 16 {
                vec!["*".into()]
            } else {
                vec![types[i as usize % 8].into()]
            },
            account: (i % 2 == 1).then(|| "partner-555".to_string()),
            min_delay_ms: 0,
            enabled: true,
            ordered: false,
            holds_retries: false,
            meta: EndpointMeta::default(),
        })
        .collect();
    let router = Router::new(routes);
    let mut out = Vec::new();
    g.throughput(Throughput::Elements(1));
    g.bench_function("route", |b| {
        b.iter(|| {
            router.route(
                black_box("action_lifecycle"),
                black_box(Some("partner-555")),
                &mut out,
            );
            black_box(out.len())
        })
    });
    // Fan-out: one type subscribed by 10,000 endpoints (session 38's event routed to
    // 10,000). Linear in them: 4 ms an event when each was looked up among those
    // already taken (before session 51; 82 µs after).
    let fan_out = Router::new(
        (0..10_000u32)
            .map(|i| RouteInfo {
                id: i + 1,
                name: format!("f{i}"),
                worker: (i % 2) as usize,
                events: vec!["action_lifecycle".into()],
                account: None,
                min_delay_ms: 0,
                enabled: true,
                ordered: false,
                holds_retries: false,
                meta: EndpointMeta::default(),
            })
            .collect(),
    );
    g.bench_function("route_to_10000", |b| {
        b.iter(|| {
            fan_out.route(black_box("action_lifecycle"), black_box(None), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("parse_and_route", |b| {
        b.iter(|| {
            let ev = p.parse(black_box(LINE.as_bytes())).unwrap();
            router.route(&ev.etype, ev.account.as_deref(), &mut out);
            black_box(out.len())
        })
    });
    g.finish();

    let ev = p.parse(LINE.as_bytes()).unwrap();
    let new_record = || {
        EventRecord::new(
            1 << 40,
            black_box(ev.ext_id.as_deref()),
            black_box(&ev.etype),
            ev.account.as_deref(),
            1_775_638_800_000,
            &[3],
            black_box(&ev.data),
        )
    };
    let mut g = c.benchmark_group("keys");
    g.bench_function("event_record_new", |b| b.iter(|| black_box(new_record())));
    let encoded = new_record().encoded().to_vec();
    g.bench_function("event_record_decode", |b| {
        b.iter(|| black_box(EventRecord::decode(1 << 40, black_box(&encoded)).unwrap()))
    });
    let k = DueKey {
        due_ms: 1_775_638_800_000,
        seq: 1 << 40,
        ep: 7,
    };
    g.bench_function("due_key_round_trip", |b| {
        b.iter(|| black_box(DueKey::decode(&black_box(k).encode())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
