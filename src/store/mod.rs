//! Storage: the only code that knows RocksDB, its column families and key encodings.
//!
//! The **events** column family is the durable record (the write-ahead event log): an
//! event is acked only after its record — with the list of endpoints it was routed to —
//! is in RocksDB under the configured durability. Everything else is derived state that
//! makes delivery resumable:
//!
//! | column family | key                                   | value                       |
//! |---------------|---------------------------------------|-----------------------------|
//! | `events`      | seq u64 BE                            | [`EventRecord`]             |
//! | `due`         | due_ms u64 BE ‖ seq u64 BE ‖ ep u32 BE | [`DueVal`]                  |
//! | `attempts`    | seq u64 BE ‖ ep u32 BE ‖ n u16 BE      | [`AttemptRecord`]           |
//! | `paused`      | ep u32 BE ‖ seq u64 BE                 | [`DueVal`]                  |
//! | `idem`        | producer id bytes                     | seq u64 BE                  |
//! | `endpoints`   | endpoint name                         | [`EndpointMeta`] (JSON)     |
//! |               | `~config/` name                       | its config (JSON)           |
//! |               | `~name/` ep u32 BE                    | name (every id ever given)  |
//! |               | `~pausing/`, `~deleting/` ep u32 BE   | empty: a pause, a deletion under way |
//! | `index`       | see [`IndexKey`]                      | a posting group, or empty   |
//! | `default`     | `format`                              | u32 BE: [`FORMAT`]          |
//!
//! A delivery (event, endpoint) is pending exactly while it has a key in `due` (or in
//! `paused` while its endpoint is disabled); each `due` key is written once and removed
//! once with a single-delete, so the queue leaves no tombstones behind. Big-endian
//! integers make keys sort numerically, so `due` iterates in due-time order. A write
//! batch puts its attempt records and its `due` changes in key order (whatever order
//! they were added in), and those two families' memtables start each insert's search
//! from the last insert with the same key prefix (see `hinted`).
//!
//! The `index` family makes the webhook log's filters cheap ([`Store::query`]): every
//! event is indexed by type, account and each endpoint it went to; deliveries in the
//! rarer, settled states (`failed`, `paused`, `expired`, and `pending` again after a
//! replay) are indexed by state, per endpoint and overall. `pending`, `retrying` and
//! `delivered` are found through the other indexes and checked one by one (indexing
//! `retrying` would cost writes on every retry). The type, account and endpoint entries
//! of one write batch are grouped: one key per value, ending in the batch's largest
//! sequence number with that value, whose value lists the batch's other ones (see
//! [`encode_group`]). Batches take ascending, disjoint ranges of sequence numbers, so the
//! groups under one prefix never interleave; the query cursor (`GroupCursor`) relies on
//! it.
//!
//! Retention: [`Store::set_retention_floor`] moves a floor below which events and
//! attempts are range-deleted (by the committer) and index and idempotency entries are
//! dropped by compaction filters; queries never read below it.
//!
//! Sequence numbers are time-derived (`unix_ms << 10 | counter`), unique across restarts
//! and across a wiped data dir, and sort events by acceptance time.
//!
//! This module must not block a worker's I/O thread: only the committer thread writes
//! (the syncer thread fsyncs the WAL the committer wrote), and only the committer and
//! admin threads read.
//!
//! # Submodules
//!
//! - `keys`: the key encodings, and the numbers keys are made of (sequence numbers,
//!   endpoint ids, generated event ids, posting groups).
//! - `records`: the typed values of `events`, `attempts`, `due` and `paused`
//!   ([`EventRecord`], [`AttemptRecord`], [`DueVal`], [`DeliveryState`]) and their byte
//!   layouts.
//! - `endpoints`: the endpoint records of `endpoints` ([`EndpointMeta`] and its kin) and
//!   the reads of that family.
//! - `batch`: [`Batch`], the one way to write, and [`Store::commit`].
//! - `due`: the delivery queue's reads (`due` and `paused`, in pages), and
//!   [`Store::pause_due`], a disable's move from the one to the other.
//! - `query`: the webhook log's reads: an event's attempts and delivery states, pages
//!   of the log filtered through `index`.
//! - `reader`: readers handed out to other threads' loops ([`EventReader`],
//!   [`FloorReader`]).
//! - `faults` (test builds only): read and write failures a unit test injects.
//! - this file: [`Store`] itself (opening RocksDB, the column families and their
//!   options, the retention floor, point reads of events and idempotency keys, memory,
//!   sizes and maintenance) and [`StoreError`].

mod batch;
mod due;
mod endpoints;
#[cfg(test)]
mod faults;
mod keys;
mod query;
mod reader;
mod records;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, Options, ReadOptions, WriteOptions, DB,
};

pub use batch::{event_write_estimate, outcome_write_estimate, Batch};
pub use due::DuePage;
pub use endpoints::{DisabledBy, EndpointMeta, EndpointSource, StoredEndpoint};
#[cfg(test)]
pub use faults::Fault;
pub use keys::{
    decode_group, encode_group, generated_id, parse_generated_id, seq_floor, seq_time_ms, DueKey,
    EndpointId, IndexKey, Seq,
};
pub use query::{DeliveryView, EventPage, EventQuery, EventView, PAGE_DELIVERIES};
pub use reader::{EventReader, FloorReader};
pub use records::{
    AttemptRecord, DeliveryState, DueVal, EventRecord, RequestLog, BODY_EXCERPT, MAX_ROUTES,
};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record in {cf}: {what}")]
    Corrupt { cf: &'static str, what: String },
    /// The store's layout is newer than this binary reads: a newer ricochet wrote it.
    #[error(
        "its store format is {found}, written by a newer ricochet; this one reads format \
         {FORMAT} and older: run the newer version on it, or start on another data dir"
    )]
    NewerFormat { found: u32 },
    /// A read or write failure a unit test injected (`faults`).
    #[cfg(test)]
    #[error("a failure injected by a test")]
    Injected,
}

impl StoreError {
    /// Whether the same read, tried again, fails again: a record that does not decode,
    /// or one RocksDB finds corrupt. Any other failure (an I/O error, a busy or timed-out
    /// read) may pass at the next try.
    pub fn lasting(&self) -> bool {
        match self {
            StoreError::Corrupt { .. } | StoreError::NewerFormat { .. } => true,
            StoreError::Db(e) => e.kind() == rocksdb::ErrorKind::Corruption,
            #[cfg(test)]
            StoreError::Injected => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The layout of the store's keys and values this binary writes and reads, recorded in
/// the store at its first open (one opened before the record existed has this layout).
/// A change that an older binary would misread raises it, and the newer binary then
/// converts a store of the older format as it opens it; an older binary refuses a store
/// of a newer format instead of misreading it.
pub const FORMAT: u32 = 1;
/// Key of the store's format in the default column family.
const FORMAT_KEY: &[u8] = b"format";

const CF_EVENTS: &str = "events";
const CF_DUE: &str = "due";
const CF_ATTEMPTS: &str = "attempts";
const CF_PAUSED: &str = "paused";
const CF_IDEM: &str = "idem";
const CF_ENDPOINTS: &str = "endpoints";
const CF_INDEX: &str = "index";
const ALL_CFS: [&str; 7] = [
    CF_EVENTS,
    CF_DUE,
    CF_ATTEMPTS,
    CF_PAUSED,
    CF_IDEM,
    CF_ENDPOINTS,
    CF_INDEX,
];

/// The RocksDB handle. Cheap to clone; shared by the committer and the admin API.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Retention floor: events below this sequence number are gone (or going).
    floor: Arc<AtomicU64>,
    /// Read failures a unit test injects.
    #[cfg(test)]
    faults: Arc<faults::Faults>,
}

/// One block cache for all column families (RocksDB otherwise gives each its own 32 MiB).
/// Small on purpose: the loader reads events back in order (one block serves the events
/// next to each other, and the iterator holds it while it does), and the OS page cache
/// keeps the compressed blocks anyway. 32 MiB, measured against this: peak RSS 20–30 MiB
/// higher at `max` and `backlog`, no faster (docs/perf/history.md#budget, session 12).
const BLOCK_CACHE_BYTES: usize = 8 << 20;

/// Bytes RocksDB holds in memory by what holds them ([`Store::memory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMemory {
    pub memtables: u64,
    pub table_readers: u64,
    pub block_cache: u64,
}

/// Bytes the store takes on disk ([`Store::disk`]): each column family's table files,
/// and the write-ahead log's files (what is not yet in table files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreDisk {
    pub tables: Vec<(&'static str, u64)>,
    pub wal: u64,
}

/// Column family options whose memtable inserts start their search from the last insert
/// whose key has the same first `prefix` bytes (RocksDB's
/// `memtable_insert_with_hint_prefix_extractor`, which its C API reaches only through an
/// options string). Without it an insert that does not land right beside the last one
/// searches the skiplist from the top. Attempts take 6 bytes (the event's time to 64 ms),
/// `due` keys 7 (the due time to 256 ms): a round's first attempts, its retries of events
/// 1, 3 and 7 s old, and its retries due 1, 2 and 4 s ahead each keep their own place.
fn hinted(prefix: usize) -> Result<Options> {
    Ok(Options::default().get_options_from_string(format!(
        "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{prefix}"
    ))?)
}

/// Turns RocksDB's per-thread performance counters off for the calling thread. They are
/// on by default (`kEnableCount`): every key comparison in a memtable insert or read
/// then also bumps a thread-local counter nothing reads. Called by the threads that
/// write and read the store hardest (the committer, the syncer).
pub fn quiet_perf_counters() {
    rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
}

/// Test hook: `RICOCHET_TEST_SLOW_COMPACTION_MS=MS` makes the event index's compaction
/// filter take MS per key, so that a test can stop the server while a
/// compaction is under way (one that outlasts the stop). Unset, nothing changes.
fn slow_compaction() -> Option<std::time::Duration> {
    let ms = std::env::var("RICOCHET_TEST_SLOW_COMPACTION_MS").ok()?;
    ms.parse().ok().map(std::time::Duration::from_millis)
}

/// Shard bits of a table cache for `max_open_files` of `n`: shards of 16 files or more,
/// at most RocksDB's default 64 shards.
fn table_cache_shard_bits(n: usize) -> i32 {
    let shards = (n / 16).max(1);
    (shards.ilog2() as i32).min(6)
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, every table file kept open.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_limited(dir, None)
    }

    /// Opens (creating if needed) the store in `dir`, keeping at most `table_files` of
    /// its table files open at once (RocksDB's `max_open_files`; the server's share of
    /// the open-file limit, [`crate::fdlimit::store_files_for`]). `None`: all of them.
    pub fn open_limited(dir: &Path, table_files: Option<usize>) -> Result<Store> {
        let floor = Arc::new(AtomicU64::new(0));
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_max_total_wal_size(256 << 20);
        // RocksDB's own log (`LOG`: a line per flush and compaction, ~4 MB an hour at
        // 2,000 events/s, and a statistics dump every 10 minutes) grows for as long as
        // the process runs, and each start keeps the last one (up to 1,000): rolled at
        // 8 MiB, 4 files in all (the current one counts), it takes at most 32 MiB.
        opts.set_max_log_file_size(8 << 20);
        opts.set_keep_log_file_num(4);
        if let Some(n) = table_files {
            opts.set_max_open_files(i32::try_from(n).unwrap_or(i32::MAX));
            // The table cache is split into 2^bits shards, each holding its share: with
            // the default 64, a small budget was one file per shard (two busy files
            // in one shard kept reopening each other) and up to 64 open in all, above
            // it. At least 16 files a shard.
            opts.set_table_cache_num_shard_bits(table_cache_shard_bits(n));
        }
        // One memtable budget for all column families. 32 MiB was measured twice; on the
        // 16-lane `max` it cost ~10% throughput (compaction doubled) and saved no RSS
        // (docs/perf/history.md#reverted-s3; glibc's heap keeps
        // freed memtable blocks: docs/operations.md, "Memory").
        opts.set_db_write_buffer_size(64 << 20);
        let block_cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut cfs = Vec::new();
        for name in ALL_CFS {
            let mut o = match name {
                CF_ATTEMPTS => hinted(6)?,
                CF_DUE => hinted(7)?,
                _ => Options::default(),
            };
            // Events and attempts compress well; the small index families are not worth it.
            o.set_compression_type(match name {
                CF_EVENTS | CF_ATTEMPTS | CF_INDEX => rocksdb::DBCompressionType::Lz4,
                _ => rocksdb::DBCompressionType::None,
            });
            let mut bb = BlockBasedOptions::default();
            bb.set_block_cache(&block_cache);
            match name {
                CF_EVENTS | CF_ATTEMPTS => {
                    o.set_write_buffer_size(32 << 20);
                }
                CF_IDEM => {
                    bb.set_bloom_filter(10.0, false);
                    o.set_write_buffer_size(32 << 20);
                    o.set_memtable_whole_key_filtering(true);
                    o.set_memtable_prefix_bloom_ratio(0.05);
                    // Keys of events past retention go at compaction.
                    let f = floor.clone();
                    o.set_compaction_filter(
                        "ricochet-idem-retention",
                        move |_, _: &[u8], v: &[u8]| match v.try_into().map(u64::from_be_bytes) {
                            Ok(seq) if seq < f.load(Ordering::Relaxed) => Decision::Remove,
                            _ => Decision::Keep,
                        },
                    );
                }
                CF_INDEX => {
                    o.set_write_buffer_size(16 << 20);
                    let f = floor.clone();
                    let slow = slow_compaction();
                    o.set_compaction_filter(
                        "ricochet-index-retention",
                        move |_, k: &[u8], _: &[u8]| {
                            if let Some(d) = slow {
                                std::thread::sleep(d);
                            }
                            match IndexKey::seq_of(k) {
                                Some(seq) if seq < f.load(Ordering::Relaxed) => Decision::Remove,
                                _ => Decision::Keep,
                            }
                        },
                    );
                }
                _ => {
                    o.set_write_buffer_size(16 << 20);
                }
            }
            o.set_block_based_table_factory(&bb);
            cfs.push(ColumnFamilyDescriptor::new(name, o));
        }
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let store = Store {
            db: Arc::new(db),
            floor,
            #[cfg(test)]
            faults: Arc::default(),
        };
        store.check_format()?;
        Ok(store)
    }

    /// Refuses a store of a newer [`FORMAT`] than this binary's; records the format in
    /// one that has none (a new store, or one made before the record existed: both have
    /// this layout).
    fn check_format(&self) -> Result<()> {
        match self.db.get(FORMAT_KEY)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        cf: "default",
                        what: format!("store format of {} bytes", v.len()),
                    })?;
                if found > FORMAT {
                    return Err(StoreError::NewerFormat { found });
                }
                Ok(())
            }
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db.put_opt(FORMAT_KEY, FORMAT.to_be_bytes(), &wo)?;
                // Into a table file at once: nothing else writes the default family, so
                // its memtable would keep every WAL file from this one on (and the
                // events in them, past retention) until the next start.
                Ok(self.db.flush()?)
            }
        }
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Moves the retention floor up (never down): events below `seq` are no longer read,
    /// and compactions drop their index and idempotency entries.
    pub fn set_retention_floor(&self, seq: Seq) {
        self.floor.fetch_max(seq, Ordering::Relaxed);
    }

    pub fn retention_floor(&self) -> Seq {
        self.floor.load(Ordering::Relaxed)
    }

    /// The highest sequence number in the log.
    pub fn max_seq(&self) -> Result<Option<Seq>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_EVENTS));
        it.seek_to_last();
        if it.valid() {
            let k = it.key().unwrap_or_default();
            return Ok(k.try_into().ok().map(u64::from_be_bytes));
        }
        it.status()?;
        Ok(None)
    }

    /// Fsyncs the WAL (durability `batch`).
    pub fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// The sequence number recorded for a producer id.
    pub fn idem_get(&self, id: &[u8]) -> Result<Option<Seq>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_IDEM), id)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// [`idem_get`](Self::idem_get) for many ids at once (one read of the memtables and
    /// files for the whole set); the answers come in the order of `ids`.
    pub fn idem_get_many(&self, ids: &[&[u8]]) -> Vec<Result<Option<Seq>>> {
        if ids.is_empty() {
            return Vec::new();
        }
        self.db
            .batched_multi_get_cf(self.cf(CF_IDEM), ids.iter().copied(), false)
            .into_iter()
            .map(|r| Ok(r?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))))
            .collect()
    }

    pub fn event(&self, seq: Seq) -> Result<Option<EventRecord>> {
        self.event_as(seq, EventRecord::decode)
    }

    /// [`Store::event`] without its `data` ([`EventRecord::decode_head`]).
    fn event_head(&self, seq: Seq) -> Result<Option<EventRecord>> {
        self.event_as(seq, EventRecord::decode_head)
    }

    fn event_as(
        &self,
        seq: Seq,
        decode: fn(Seq, &[u8]) -> Result<EventRecord>,
    ) -> Result<Option<EventRecord>> {
        if seq < self.retention_floor() {
            return Ok(None);
        }
        #[cfg(test)]
        self.faults.event_read()?;
        match self
            .db
            .get_pinned_cf(self.cf(CF_EVENTS), seq.to_be_bytes())?
        {
            Some(v) => Ok(Some(decode(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// Looks an event up by the id ricochet reported for it.
    pub fn event_by_id(&self, id: &str) -> Result<Option<EventRecord>> {
        if let Some(seq) = self.idem_get(id.as_bytes())? {
            if let Some(ev) = self.event(seq)? {
                return Ok(Some(ev));
            }
        }
        match parse_generated_id(id) {
            Some(seq) => Ok(self.event(seq)?.filter(|e| e.ext_id().is_none())),
            None => Ok(None),
        }
    }

    /// Column family `name`'s integer property `prop` (0 if RocksDB has none).
    fn cf_property(&self, name: &'static str, prop: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(name), prop)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Bytes on disk (table files, as [`Store::disk`] counts them) and in memtables per
    /// column family.
    pub fn sizes(&self) -> Vec<(&'static str, u64, u64)> {
        self.disk()
            .tables
            .into_iter()
            .map(|(name, sst)| {
                let mem = self.cf_property(name, "rocksdb.cur-size-all-mem-tables");
                (name, sst, mem)
            })
            .collect()
    }

    /// What RocksDB holds in memory now: its memtables (unflushed and those still being
    /// flushed or pinned by a reader), its table readers (index and filter blocks of
    /// open table files) and its block cache. Property reads: cheap, no I/O.
    pub fn memory(&self) -> StoreMemory {
        let mut m = StoreMemory::default();
        for name in ALL_CFS {
            m.memtables += self.cf_property(name, "rocksdb.size-all-mem-tables");
            m.table_readers += self.cf_property(name, "rocksdb.estimate-table-readers-mem");
        }
        // One cache shared by every family: read once.
        m.block_cache = self
            .db
            .property_int_value("rocksdb.block-cache-usage")
            .ok()
            .flatten()
            .unwrap_or(0);
        m
    }

    /// What the store takes on disk now: each family's table files (every version's,
    /// so a file a compaction replaced counts until no reader holds it and it is
    /// deleted) and the WAL files in the data dir. Property reads and one read of the
    /// data dir's listing: for the admin thread, not for a worker's.
    pub fn disk(&self) -> StoreDisk {
        let tables = ALL_CFS
            .iter()
            .map(|&name| (name, self.cf_property(name, "rocksdb.total-sst-files-size")))
            .collect();
        // RocksDB names its WAL files `NNNNNN.log` (its own text log is `LOG`). A file
        // deleted between the listing and its size counts as empty.
        let wal = std::fs::read_dir(self.db.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().as_encoded_bytes().ends_with(b".log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        StoreDisk { tables, wal }
    }

    /// Flushes every memtable to SST files (benchmarks measure sizes on disk).
    pub fn flush(&self) -> Result<()> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    /// RocksDB's sequence number of the last write: unchanged while nothing is written.
    pub fn last_write(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Takes off the disk what retention deleted below `floor`, for a store that has
    /// been idle: flushes every memtable, so the WAL files that hold them (events and
    /// attempts included) are deleted, then compacts the event and attempt logs below
    /// `floor` (their range deletes then drop the data from the table files) and the due
    /// index (its deleted keys slow every scan of it until a compaction). Under traffic
    /// flushes and compactions do this on their own; idle, nothing would, and a WAL kept
    /// events past retention for as long as the store was idle. Blocks for as long as
    /// that takes: not for a thread that answers producers.
    pub fn scrub_below(&self, floor: Seq) -> Result<()> {
        self.flush()?;
        for cf in [CF_EVENTS, CF_ATTEMPTS] {
            self.db.compact_range_cf(
                self.cf(cf),
                Some(0u64.to_be_bytes()),
                Some(floor.to_be_bytes()),
            );
        }
        self.db
            .compact_range_cf(self.cf(CF_DUE), None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Stops RocksDB's background work (flushes, compactions, a manual compaction under
    /// way) and waits for it: at shutdown only, as nothing is flushed or compacted
    /// after it.
    pub fn cancel_background_work(&self) {
        self.db.cancel_all_background_work(true);
    }

    /// Whether the event log or the attempt log still holds a key below `floor`.
    pub fn has_before(&self, floor: Seq) -> Result<bool> {
        for cf in [CF_EVENTS, CF_ATTEMPTS] {
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(floor.to_be_bytes().to_vec());
            let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
            it.seek_to_first();
            if it.valid() {
                return Ok(true);
            }
            it.status()?;
        }
        Ok(false)
    }

    /// Drops whole SST files of events and attempts below `floor` (cheap; the range
    /// deletes in [`Batch::delete_before`] cover the rest).
    pub fn drop_files_before(&self, floor: Seq) -> Result<()> {
        self.db.delete_file_in_range_cf(
            self.cf(CF_EVENTS),
            0u64.to_be_bytes(),
            floor.to_be_bytes(),
        )?;
        self.db.delete_file_in_range_cf(
            self.cf(CF_ATTEMPTS),
            0u64.to_be_bytes(),
            floor.to_be_bytes(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ev(seq: Seq) -> EventRecord {
        EventRecord::new(
            seq,
            Some(&format!("id-{seq}")),
            "action_inquiry",
            None,
            1_700_000_000_000,
            &[1, 7],
            br#"{"a":1.50}"#,
        )
    }

    /// An option as RocksDB recorded it in the newest OPTIONS file of `dir`.
    fn recorded_option(dir: &Path, name: &str) -> String {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().into_string().unwrap()))
            .filter(|n| n.starts_with("OPTIONS-"))
            .max_by_key(|n| n[8..].parse::<u64>().unwrap_or(0))
            .expect("an OPTIONS file");
        let text = std::fs::read_to_string(dir.join(newest)).unwrap();
        let prefix = format!("{name}=");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&prefix))
            .expect("option recorded");
        line.trim().trim_start_matches(&prefix).to_string()
    }

    #[test]
    fn a_scrub_takes_what_retention_deleted_off_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let marker = b"scrub-marker-9f3c";
        let mut b = s.batch();
        for seq in 1000..1100u64 {
            let data = format!(
                r#"{{"m":"{}-{seq}"}}"#,
                std::str::from_utf8(marker).unwrap()
            );
            let e = EventRecord::new(seq, None, "a", None, 0, &[1], data.as_bytes());
            b.put_event(&s, &e);
            b.put_attempt(
                &s,
                seq,
                1,
                1,
                &AttemptRecord {
                    state_after: Some(DeliveryState::Delivered),
                    response_excerpt: marker.to_vec(),
                    ..AttemptRecord::default()
                },
            );
        }
        s.commit(b, true).unwrap();
        let on_disk = || -> usize {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
                .map(|bytes| bytes.windows(marker.len()).filter(|w| *w == marker).count())
                .sum()
        };
        // Retention deletes them: gone for reads, still in the WAL.
        s.set_retention_floor(1100);
        let mut b = s.batch();
        b.delete_before(&s, 1100);
        s.commit(b, true).unwrap();
        assert!(s.event(1050).unwrap().is_none());
        assert!(on_disk() > 0);
        let written = s.last_write();
        s.scrub_below(1100).unwrap();
        assert_eq!(on_disk(), 0);
        // A scrub writes nothing: an idle store stays idle.
        assert_eq!(s.last_write(), written);
    }

    #[test]
    fn a_limited_store_keeps_at_most_its_share_of_table_files_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_limited(dir.path(), Some(40)).unwrap());
        assert_eq!(recorded_option(dir.path(), "max_open_files"), "40");
        assert_eq!(recorded_option(dir.path(), "table_cache_numshardbits"), "1");
        assert_eq!(
            [32, 416, 2_404, 8_096].map(table_cache_shard_bits),
            [1, 4, 6, 6]
        );
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(recorded_option(dir.path(), "max_open_files"), "-1");
    }

    #[test]
    fn rocksdb_s_own_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(recorded_option(dir.path(), "max_log_file_size"), "8388608");
        assert_eq!(recorded_option(dir.path(), "keep_log_file_num"), "4");
    }

    #[test]
    fn memory_counts_memtables_until_a_flush_then_the_table_readers_and_read_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let before = s.memory();
        let mut b = s.batch();
        for seq in 0..2_000 {
            b.put_event(&s, &ev(seq));
        }
        s.commit(b, false).unwrap();
        let written = s.memory();
        assert!(
            written.memtables >= before.memtables + 2_000 * 40,
            "{before:?} then {written:?}"
        );
        assert_eq!(written.table_readers, 0, "no table file yet: {written:?}");
        s.flush().unwrap();
        let flushed = s.memory();
        assert!(
            flushed.memtables < written.memtables,
            "{written:?} then {flushed:?}"
        );
        assert!(flushed.table_readers > 0, "{flushed:?}");
        // A read from a table file goes through the block cache.
        assert!(s.event(1_000).unwrap().is_some());
        assert!(s.memory().block_cache > 0, "{:?}", s.memory());
    }

    #[test]
    fn disk_counts_the_wal_until_a_flush_then_the_families_table_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let family =
            |d: &StoreDisk, name: &str| d.tables.iter().find(|(n, _)| *n == name).unwrap().1;
        let mut b = s.batch();
        for seq in 0..2_000 {
            b.put_event(&s, &ev(seq));
        }
        s.commit(b, true).unwrap();
        let written = s.disk();
        assert_eq!(
            written.tables.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ALL_CFS
        );
        assert!(written.wal >= 2_000 * 40, "{written:?}");
        assert_eq!(family(&written, CF_EVENTS), 0, "{written:?}");
        s.flush().unwrap();
        let flushed = s.disk();
        assert!(family(&flushed, CF_EVENTS) > 0, "{flushed:?}");
        assert!(family(&flushed, CF_IDEM) > 0, "{flushed:?}");
        assert_eq!(family(&flushed, CF_ATTEMPTS), 0, "{flushed:?}");
        // The flushed memtables' WAL files are deleted.
        assert!(flushed.wal < written.wal, "{written:?} then {flushed:?}");
    }

    #[test]
    fn a_store_records_its_format_and_one_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let format = |s: &Store| s.db.get(FORMAT_KEY).unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(format(&s), Some(FORMAT.to_be_bytes().to_vec()));
        // Made before the record existed: the same layout, recorded at the next open.
        s.db.delete(FORMAT_KEY).unwrap();
        let mut b = s.batch();
        b.put_event(&s, &ev(5));
        s.commit(b, true).unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(format(&s), Some(FORMAT.to_be_bytes().to_vec()));
        assert!(s.event(5).unwrap().is_some());
        drop(s);
        // Written as another binary would have: through RocksDB itself.
        let put = |value: &[u8]| {
            let db = DB::open_cf(&Options::default(), dir.path(), ALL_CFS).unwrap();
            db.put(FORMAT_KEY, value).unwrap();
        };
        // Written by a newer ricochet: refused.
        put(&(FORMAT + 1).to_be_bytes());
        let err = Store::open(dir.path())
            .err()
            .expect("a newer format is refused");
        assert!(matches!(err, StoreError::NewerFormat { found } if found == FORMAT + 1));
        assert_eq!(
            err.to_string(),
            format!(
                "its store format is {}, written by a newer ricochet; this one reads format \
                 {FORMAT} and older: run the newer version on it, or start on another data dir",
                FORMAT + 1
            )
        );
        // Not a format at all.
        put(b"v1");
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Corrupt { cf: "default", .. })
        ));
        // This one's again: opens.
        put(&FORMAT.to_be_bytes());
        assert!(Store::open(dir.path()).unwrap().event(5).unwrap().is_some());
    }

    #[test]
    fn idem_lookups_in_bulk_answer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.batch();
        b.put_event(&s, &ev(7));
        s.commit(b, false).unwrap();
        s.flush().unwrap(); // one id in a file, one in the memtable
        let mut b = s.batch();
        b.put_event(&s, &ev(9));
        s.commit(b, false).unwrap();
        let got: Vec<Option<Seq>> = s
            .idem_get_many(&[b"id-9", b"nope", b"id-7", b"id-9"])
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, [Some(9), None, Some(7), Some(9)]);
        assert!(s.idem_get_many(&[]).is_empty());
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..5u64 {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.max_seq().unwrap(), round.checked_sub(1).map(|r| 100 + r));
            let mut b = s.batch();
            b.put_event(&s, &ev(100 + round));
            b.put_due(
                &s,
                DueKey {
                    due_ms: 10 + round,
                    seq: 100 + round,
                    ep: 1,
                },
                DueVal::NEW,
            );
            s.commit(b, true).unwrap();
            assert_eq!(
                s.due_range(DueKey::MIN, u64::MAX, 100).unwrap().len(),
                round as usize + 1
            );
            assert_eq!(
                s.idem_get(format!("id-{}", 100 + round).as_bytes())
                    .unwrap(),
                Some(100 + round)
            );
        }
        let s = Store::open(dir.path()).unwrap();
        let due = s.due_range(DueKey::MIN, 12, 100).unwrap();
        assert_eq!(due.len(), 2);
        let mut b = s.batch();
        b.del_due(&s, due[0].0);
        s.commit(b, false).unwrap();
        assert_eq!(s.count_due().unwrap(), 4);
        assert_eq!(s.event_by_id("id-101").unwrap().unwrap().seq, 101);
    }
}
