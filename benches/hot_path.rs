//! Pure-CPU hot-path benchmarks: request-head writing, response parsing, the response
//! rules' body match, the timer wheel and the token bucket. End-to-end throughput comes
//! from `loadtest/`, not from here.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ricochet::config::{Matcher, ResponseRule};
use ricochet::deliver::http1::{write_request_head, Progress, ResponseParser};
use ricochet::ratelimit::TokenBucket;
use ricochet::schedule::wheel::TimerWheel;

fn request_head(c: &mut Criterion) {
    let headers: [(&[u8], &[u8]); 6] = [
        (b"Content-Type", b"application/json"),
        (b"User-Agent", b"ricochet/0.1.0"),
        (b"webhook-id", b"inq-554433"),
        (b"webhook-timestamp", b"1775642700"),
        (
            b"webhook-signature",
            b"v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
        ),
        (b"Authorization", b"Bearer abcdefghijklmnopqrstuvwxyz"),
    ];
    let mut buf = Vec::with_capacity(1024);
    let mut group = c.benchmark_group("http1");
    group.throughput(Throughput::Elements(1));
    group.bench_function("write_request_head/6_headers", |b| {
        b.iter(|| {
            buf.clear();
            write_request_head(
                &mut buf,
                black_box("POST"),
                black_box(b"/pb?oid=ORD-1234567&st=APPROVED".as_slice()),
                black_box(b"partner.example".as_slice()),
                black_box(&headers),
                Some(black_box(187)),
            );
            black_box(buf.len())
        })
    });

    let small: &[u8] = b"HTTP/1.1 200 OK\r\nDate: Wed, 08 Apr 2026 10:05:00 GMT\r\n\
        Content-Type: application/json\r\nContent-Length: 16\r\nConnection: keep-alive\r\n\
        Server: nginx\r\n\r\n{\"status\":\"ok\"}\n";
    let chunked: &[u8] = b"HTTP/1.1 200 OK\r\nDate: Wed, 08 Apr 2026 10:05:00 GMT\r\n\
        Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nServer: nginx\r\n\r\n\
        2\r\nOK\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    let mut parser = ResponseParser::new(64 * 1024);
    for (name, response) in [
        ("parse_response/content_length", small),
        ("parse_response/chunked", chunked),
    ] {
        group.throughput(Throughput::Bytes(response.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                parser.reset();
                let (n, progress) = parser.feed(black_box(response), false).unwrap();
                assert_eq!(progress, Progress::Done);
                black_box((n, parser.status(), parser.body_excerpt().len()))
            })
        });
    }
    // The same response arriving in two reads that split the head (the buffered path).
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("parse_response/content_length_split_head", |b| {
        b.iter(|| {
            parser.reset();
            let (a, rest) = black_box(small).split_at(40);
            parser.feed(a, false).unwrap();
            let (_, progress) = parser.feed(rest, false).unwrap();
            assert_eq!(progress, Progress::Done);
            black_box(parser.status())
        })
    });
    group.finish();
}

/// A body-text rule against a whole 64 KiB excerpt that does not hold it: the worst case,
/// paid on the worker's thread for every response.
fn body_rule(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules");
    let body: Vec<u8> = (0..64 * 1024).map(|i| b"abcdefgh"[i % 8]).collect();
    group.throughput(Throughput::Bytes(body.len() as u64));
    for n in [2usize, 1024] {
        // All but its last byte matches at every offset of the body's pattern.
        let mut text: String = (0..n).map(|i| char::from(b"abcdefgh"[i % 8])).collect();
        text.pop();
        text.push('Z');
        let rule = ResponseRule(vec![Matcher::Body(text)]);
        group.bench_function(format!("body_text_{n}_bytes_in_64k_miss"), |b| {
            b.iter(|| black_box(rule.matches(200, black_box(&body))))
        });
    }
    group.finish();
}

fn timer_wheel(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut group = c.benchmark_group("wheel");
    group.throughput(Throughput::Elements(N));
    let mut out = Vec::with_capacity(N as usize);

    // Retry timers: dues spread over the next 6 h, expired in 10 s steps. One wheel is
    // reused across iterations (steady state: slot buffers already grown).
    let spread: Vec<u64> = (0..N)
        .map(|i| 1 + (i.wrapping_mul(2_654_435_761) % (6 * 3600 * 1000)))
        .collect();
    let mut wheel = TimerWheel::new(0);
    let mut now = 0u64;
    group.bench_function("insert_expire_100k/spread_6h", |b| {
        b.iter(|| {
            for (i, &offset) in spread.iter().enumerate() {
                wheel.insert(now + offset, i as u32);
            }
            while !wheel.is_empty() {
                now += 10_000;
                out.clear();
                wheel.expire(now, &mut out);
                black_box(out.len());
            }
        })
    });

    // Rate-limit and min-delay timers: dues within the next second, expired every 1 ms.
    let near: Vec<u64> = (0..N).map(|i| 1 + (i * 7919) % 1000).collect();
    group.bench_function("insert_expire_100k/within_1s", |b| {
        b.iter(|| {
            for (i, &offset) in near.iter().enumerate() {
                wheel.insert(now + offset, i as u32);
            }
            for _ in 0..1000 {
                now += 1;
                out.clear();
                wheel.expire(now, &mut out);
                black_box(out.len());
            }
        })
    });

    // Cold: a fresh wheel each time, so every slot buffer grows from empty.
    group.bench_function("insert_expire_100k/spread_6h_fresh_wheel", |b| {
        b.iter_batched_ref(
            || TimerWheel::new(0),
            |w| {
                for (i, &due) in spread.iter().enumerate() {
                    w.insert(due, i as u32);
                }
                let mut now = 0;
                while !w.is_empty() {
                    now += 10_000;
                    out.clear();
                    w.expire(now, &mut out);
                    black_box(out.len());
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn token_bucket(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit");
    group.throughput(Throughput::Elements(1));
    let mut bucket = TokenBucket::new(50, 0);
    let mut now = 0u64;
    group.bench_function("try_take", |b| {
        b.iter(|| {
            now += 1;
            black_box(bucket.try_take(black_box(now)))
        })
    });
    group.finish();
}

criterion_group!(benches, request_head, body_rule, timer_wheel, token_bucket);
criterion_main!(benches);
