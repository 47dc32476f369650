//! ricochet — a high-throughput postback (webhook) dispatcher.
//!
//! # Data flow
//!
//! ```text
//!  producers ──NDJSON──▶ ingest (acceptor threads → worker tasks: frame, parse, batch)
//!                            │ IngestBatch                       ▲ Acks (after durable)
//!                            ▼                                   │
//!                        commit (one thread: idempotency, routing, group commit,
//!                            │    the loader of due deliveries)   ◀── Outcomes
//!                            │ ─ answers ─▶ syncer (one thread: fsync, then Acks)
//!                            ▼ Jobs                                        │
//!                        worker N (monoio, thread per core): timer wheel → endpoint
//!                            queue → lanes (keep-alive HTTP/1.1) ──▶ receivers
//!                                                                          │
//!                        store (RocksDB): events = the durable record;     │
//!                            due index, attempt log, idempotency keys ◀────┘
//!  admin (own threads): GET /health, /v1/events[/{id}], /v1/endpoints read the store
//!      (the log's secondary indexes) and the endpoint registry;
//!      POST /v1/events, endpoint create/replace/delete/enable/disable, replay and
//!      recover → commit (answered over a channel once durable) → Upsert/Remove/
//!      SetEnabled to the owning worker;
//!      POST …/test → the owning worker (one attempt, answered over a channel);
//!      GET /metrics → Snapshot to every worker and the committer, summed, encoded
//! ```
//!
//! # Layout
//! - [`config`]: the TOML file, flags and defaults; validation (`server`, `endpoint`,
//!   `rules`, `duration`, `file`: one file per part).
//! - [`runtime`]: monoio runtime per worker, io_uring or legacy driver.
//! - [`server`]: wires everything for `ricochet serve` (binds the listeners, runs their
//!   acceptor threads); shutdown.
//! - [`ingest`]: an ingest connection's line framing, parsing, ordered acks,
//!   backpressure.
//! - [`commit`]: the single writer: group commit, idempotency, routing, loader,
//!   endpoint changes, replays, retention (one file each; `share`: the in-memory cap;
//!   `start`: the census at start).
//! - [`store`]: the only code that knows RocksDB: column families and keys (`keys`,
//!   `records`, `endpoints`, `batch`: the one way to write; `due`, `query`, `reader`:
//!   the reads).
//! - [`syncer`]: under `durability = "sync"`, the fsync of each group of rounds and
//!   the answers it releases.
//! - [`shard`]: endpoint → worker, cross-thread mailboxes.
//! - [`worker`]: a core's endpoints, queues, lanes, timer wheel.
//! - [`schedule`]: retry decisions and the timer wheel.
//! - [`deliver`]: HTTP/1.1 exchange on a kept connection, TLS, request building, DNS,
//!   SSRF guard.
//! - [`fdlimit`]: the open-file limit, raised at start, and the delivery sockets' and
//!   ingest connections' shares of it.
//! - [`endpoint`]: an endpoint's compiled templates.
//! - [`template`]: template compiler and renderer.
//! - [`queue`]: an endpoint's ready queue, FIFO or ordered.
//! - [`ratelimit`]: token buckets.
//! - [`admin`]: the admin HTTP API, one file per resource.
//! - [`metrics`]: per-thread counters and histograms, snapshots, Prometheus text format.
//! - [`client`]: `ricochet send`.
//! - [`render`]: `ricochet render`.
//! - [`local`]: single-thread async primitives.
//! - [`tally`]: counts for warnings logged at most once an interval.
//!
//! The binary (`main.rs`) is command-line parsing and wiring only.

// These docs are the developers' map of the internals (`cargo doc --document-private-items`,
// as CI builds them): a module's doc naming the private constant or function that holds
// its rule is the point, not a leak.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod client;
pub mod commit;
pub mod config;
pub mod deliver;
pub mod endpoint;
pub mod fdlimit;
pub mod ingest;
pub mod local;
pub mod metrics;
pub mod queue;
pub mod ratelimit;
pub mod render;
pub mod runtime;
pub mod schedule;
pub mod server;
pub mod shard;
pub mod store;
pub mod syncer;
pub mod tally;
pub mod template;
pub mod worker;
