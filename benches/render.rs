//! Template benches (criterion, `harness = false`): the action-lifecycle POST json body
//! of `docs/examples/action_lifecycle.toml` (every data point of the seed, five items in
//! the join) rendered for `docs/examples/events/action_lifecycle.json`, against a naive
//! serde_json baseline that builds the same document; and `Doc::parse` of that event.
//!
//! A counting global allocator reports allocations per render and per parse before the
//! timings (`render` must not allocate when the buffer has capacity).
//!
//! Run: `cargo bench --bench render`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use criterion::Criterion;
use ricochet::template::{BodyFormat, Context, Doc, Template};
use serde_json::{Map, Value};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = include_str!("../docs/examples/action_lifecycle.toml");
const EVENT: &str = include_str!("../docs/examples/events/action_lifecycle.json");

/// The POST endpoint's `body = '''…'''`.
fn body_template() -> &'static str {
    let start = CONFIG.find("body = '''\n").expect("body") + "body = '''\n".len();
    let len = CONFIG[start..].find("'''").expect("closed");
    &CONFIG[start..start + len]
}

/// The event line's `data` text (kept as its last member).
fn event_data() -> Bytes {
    let start = EVENT.find("\"data\":").expect("data") + "\"data\":".len();
    let data = EVENT.trim_end()[start..].strip_suffix('}').expect("last");
    Bytes::copy_from_slice(data.as_bytes())
}

/// The naive way: the same document built as a `serde_json::Value` from the already
/// parsed data, then serialised. (It does not even keep `10.50` as written.)
fn serde_baseline(data: &Value, out: &mut Vec<u8>) {
    let src = data.as_object().expect("object");
    let mut doc = Map::new();
    for (k, v) in src {
        if k != "items" {
            doc.insert(k.clone(), v.clone());
        }
    }
    let items: Vec<Value> = src["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            let mut m = Map::new();
            m.insert(
                "sku".into(),
                Value::String(i["sku"].as_str().unwrap_or("").into()),
            );
            m.insert("item_price".into(), i["amt"].clone());
            m.insert(
                "category".into(),
                Value::String(i["cat"].as_str().unwrap_or("").into()),
            );
            m.insert("quantity".into(), i["qty"].clone());
            m.insert("cartamt".into(), i["cartamt"].clone());
            m.insert(
                "rbt".into(),
                Value::String(i["rbt"].as_str().unwrap_or("").into()),
            );
            m.insert(
                "name".into(),
                Value::String(i["name"].as_str().unwrap_or("").into()),
            );
            Value::Object(m)
        })
        .collect();
    doc.insert("items".into(), Value::Array(items));
    serde_json::to_writer(out, &Value::Object(doc)).expect("serialise");
}

fn allocations_per(runs: usize, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..runs {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / runs as f64
}

fn report_allocations(t: &Template, doc: &Doc, data: &Value, raw: &Bytes) {
    let mut out = Vec::with_capacity(8192);
    t.render(doc, &mut out);
    let render = allocations_per(10_000, || {
        out.clear();
        t.render(black_box(doc), &mut out);
    });
    let baseline = allocations_per(1_000, || {
        out.clear();
        serde_baseline(black_box(data), &mut out);
    });
    let parse = allocations_per(1_000, || {
        black_box(Doc::parse(raw.clone()).expect("parse"));
    });
    println!(
        "allocations per call: render {render} · serde_json baseline {baseline} · Doc::parse {parse} \
         (template {} bytes of literal text, output {} bytes)",
        t.size_hint(),
        {
            out.clear();
            t.render(doc, &mut out);
            out.len()
        }
    );
}

fn main() {
    let template = Template::compile(body_template(), Context::Body(BodyFormat::Json))
        .unwrap_or_else(|e| panic!("{e}"));
    let raw = event_data();
    let doc = Doc::parse(raw.clone()).expect("event data");
    let data: Value = serde_json::from_slice(&raw).expect("event data");

    let mut out = Vec::new();
    template.render(&doc, &mut out);
    serde_json::from_slice::<Value>(&out).expect("rendered body is JSON");

    report_allocations(&template, &doc, &data, &raw);

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("render");
        let mut out = Vec::with_capacity(8192);
        g.bench_function("lifecycle_json", |b| {
            b.iter(|| {
                out.clear();
                template.render(black_box(&doc), &mut out);
                black_box(out.len())
            })
        });
        g.bench_function("lifecycle_json_serde_baseline", |b| {
            b.iter(|| {
                out.clear();
                serde_baseline(black_box(&data), &mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("parse");
        g.bench_function("lifecycle_doc", |b| {
            b.iter(|| Doc::parse(black_box(raw.clone())).expect("parse"))
        });
        g.bench_function("lifecycle_serde_value_baseline", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&raw)).expect("parse"))
        });
        g.finish();
    }
    c.final_summary();
}
