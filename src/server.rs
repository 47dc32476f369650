//! `ricochet serve`: wires the store, the committer, the workers, the listeners and the
//! admin API together, and shuts them down in order.
//!
//! Start: lock the data dir (`ricochet.lock`), open the store, bind the listeners (a
//! start refused there changes nothing in the store), give every configured endpoint
//! its stable id, start the committer and one worker per core, then accept on the
//! listeners. Stop (SIGINT/SIGTERM, and SIGHUP unless it is ignored): workers stop
//! reading ingest connections, answer every line already read and finish in-flight
//! attempts (bounded), the committer writes their outcomes and syncs, the admin API
//! closes and finishes the answers it is writing (bounded), and the process exits 0.
//! It must not contain delivery or storage logic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::admin::AdminSetup;
use crate::commit::{CommitMsg, Committer, Registry, RouteInfo};
use crate::config::{Config, ConfigFile, Problem};
use crate::deliver::dns::ResolverThread;
use crate::endpoint::{guarded_url_problem, EndpointSpec};
use crate::fdlimit::{self, ConnPermit};
use crate::runtime;
use crate::shard::{mailbox, worker_for, MailboxSender};
use crate::store::{seq_time_ms, DisabledBy, EndpointId, EndpointMeta, EndpointSource, Store};
use crate::syncer::{self, Syncer};
use crate::tally::Tally;
use crate::worker::{self, IngestStream, WorkerMsg, WorkerSetup};

/// How long workers may take to finish in-flight attempts at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long past [`DRAIN_TIMEOUT`] a stop waits for a worker thread to end (its runtime
/// torn down) before it goes on without it.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long a stop waits, once the committer is done, for the admin requests being
/// answered (a client reading a large answer slowly is cut off past it).
const ADMIN_ANSWER_WAIT: Duration = Duration::from_secs(5);
/// Endpoints that left the config file named one line each at a start; the rest are
/// counted in one line.
const REMOVED_NAMED: usize = 10;

/// `ricochet check`: compiles every endpoint of a configuration file, with the problems
/// found reading it and every endpoint's own (its checks and templates, which
/// compilation runs once), each located in the file, each once; and what `serve` would
/// also refuse on this machine ([`ConfigFile::startup_problems`]: a missing
/// `extra_ca_file`…).
pub fn check(file: &ConfigFile) -> Result<Vec<EndpointSpec>, Vec<Problem>> {
    compile_with(file, file.startup_problems())
}

fn compile_with(file: &ConfigFile, more: Vec<Problem>) -> Result<Vec<EndpointSpec>, Vec<Problem>> {
    let mut problems = file.problems.clone();
    problems.extend(more);
    let mut specs = Vec::new();
    let guarded = !file.config.server.allow_private_networks;
    for (i, e) in file.config.endpoints.iter().enumerate() {
        match EndpointSpec::compile_all(i as u32, e.clone()) {
            Ok(s) => specs.push(s),
            Err(errs) => problems.extend(errs.into_iter().map(|e| file.locate(i, e.to_string()))),
        }
        if let Some(p) = guarded.then(|| guarded_url_problem(e)).flatten() {
            problems.push(file.locate(i, p));
        }
    }
    // In file order (stable: one place's problems keep theirs).
    problems.sort_by_key(|p| p.at.map_or((usize::MAX, 0), |a| (a.line, a.column)));
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(problems)
    }
}

/// Reads and compiles a configuration file; every problem, one per line, in the error.
pub fn load(path: &Path) -> anyhow::Result<(Config, Vec<EndpointSpec>)> {
    let file = ConfigFile::read(path)?;
    // What no flag changes is reported located, as `check` does; the rest once the
    // flags are applied (`serve`).
    match compile_with(&file, file.file_only_startup_problems()) {
        Ok(specs) => Ok((file.config, specs)),
        Err(problems) => {
            // The log gets each problem's first line: a template error's source line,
            // below it, may hold a secret that the name rule does not mask (a custom
            // header's credential, a URL's `?t=…`, a body's text). `check` shows it.
            let cut = problems.iter().any(|p| p.message.contains('\n'));
            let mut lines: Vec<String> = problems
                .iter()
                .map(|p| without_source(&p.to_string()).to_string())
                .collect();
            if cut {
                lines.push(format!(
                    "(the template lines are left out of the log: `ricochet check --config {}` shows them)",
                    path.display()
                ));
            }
            Err(invalid(lines.into_iter()))
        }
    }
}

/// A message as the log shows it: its first line, without the template source line and
/// caret a template error carries below it (see [`crate::template::TemplateError`]):
/// a template may hold a credential in text no rule recognises as one, and the log
/// goes where the config file does not (a journal, a log shipper).
fn without_source(message: &str) -> &str {
    message.split('\n').next().unwrap_or_default()
}

/// The error of a configuration with `problems`, one per line.
fn invalid(problems: impl Iterator<Item = String>) -> anyhow::Error {
    let text: Vec<String> = problems.collect();
    anyhow::anyhow!(
        "invalid configuration:\n  {}",
        text.join("\n").replace('\n', "\n  ")
    )
}

/// Runs the dispatcher until SIGINT/SIGTERM (or SIGHUP, unless ignored); a second one
/// ends the process at once. `specs` are `cfg`'s endpoints, compiled
/// ([`load`]); `signals` were caught before it was read ([`StopSignals::catch`]).
pub fn serve(cfg: Config, specs: Vec<EndpointSpec>, signals: StopSignals) -> anyhow::Result<()> {
    end_on_panic();
    let s = &cfg.server;
    // Checked here, after the flags (`--data-dir` may fill in an empty `data_dir`).
    let problems = s.startup_problems();
    if !problems.is_empty() {
        return Err(invalid(problems.into_iter().map(|(_, msg)| msg)));
    }
    let store_files = match crate::fdlimit::init() {
        Ok(l) => {
            tracing::info!(
                open_files = l.now,
                raised_from = l.before,
                delivery_sockets = l.sockets,
                ingest_connections = l.ingest,
                store_table_files = l.store_files,
                "open-file limit"
            );
            Some(l.store_files)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            None
        }
    };
    let driver = runtime::choose(s.driver)?;
    crate::deliver::tls::init(s.extra_ca_file.as_deref())?;
    // Owner only: the store holds endpoint definitions with their secrets, and events.
    // Every file the store makes is owner-only too (the process's umask is 077 from
    // here on; the socket gets the mode the umask it started with gives), so a data dir
    // that already existed open to others does not show its files' contents.
    // SAFETY: umask cannot fail; no other thread creates files yet.
    let umask = unsafe { libc::umask(0o077) };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&s.data_dir)
        .with_context(|| format!("cannot create data dir {}", s.data_dir.display()))?;
    if let Ok(meta) = std::fs::metadata(&s.data_dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                data_dir = %s.data_dir.display(),
                mode = format_args!("{mode:04o}"),
                "the data dir is open to its group or others, and it holds the endpoints' \
                 secrets: `chmod 700` it (the files ricochet makes are owner-only; files \
                 made there before may not be)"
            );
        }
    }
    let _lock = lock_data_dir(&s.data_dir)?;
    let store = Store::open_limited(&s.data_dir, store_files)
        .with_context(|| format!("cannot open the store in {}", s.data_dir.display()))?;
    // Said, because a mistyped `--data-dir` starts on an empty store as well: no API
    // endpoints, nothing pending. (By what it holds, not whether it existed: a refused
    // start may have created it.)
    let newest = store.max_seq()?;
    if newest.is_none() && store.endpoint_names()?.is_empty() {
        tracing::info!(data_dir = %s.data_dir.display(), "the store is empty: a new data dir");
    }
    let now = worker::now_ms();
    let newest_ms = newest.map(seq_time_ms).unwrap_or(0);
    if let Some(behind) = clock_behind(newest_ms, now) {
        tracing::warn!(
            now = %crate::admin::rfc3339(now),
            newest_event = %crate::admin::rfc3339(newest_ms),
            behind = %crate::config::human_duration(behind),
            "the clock reads earlier than the newest event in the store was accepted: it was \
             set back since, or was ahead then. Delivery times are the clock's: a retry or a \
             min_delay due after now waits until the clock reaches it (as much as `behind` \
             longer), and new events show `created` at the newest event's time until then; \
             check the system clock (NTP)"
        );
    }

    // Every listener is bound before the config file's endpoints are applied: a start
    // refused for a socket path, a port in use or an admin address must change nothing
    // in the store (it deleted the endpoints the file left out, failing their pending
    // deliveries, and then refused to run).
    let unix = bind_unix(&s.socket)?;
    // Ours from here on: removed when `serve` returns, also on a failed start.
    let _socket_file = SocketFile::bound(&s.socket);
    set_socket_mode(&s.socket, 0o777 & !umask)?;
    let tcp = match s.listen {
        Some(addr) => {
            Some(TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?)
        }
        None => None,
    };
    let admin_listener = TcpListener::bind(s.admin)
        .with_context(|| format!("cannot start the admin API on {}", s.admin))?;

    let specs = apply_endpoints(&store, specs, !s.allow_private_networks)?;
    let guarded_names = !s.allow_private_networks;
    for spec in &specs {
        if let Some(problem) = spec.cfg.min_delay_problem(s.retention) {
            // An endpoint created over the API before the retention was shortened (the
            // file's are refused): it runs, and says what it will do.
            tracing::error!(
                endpoint = %spec.cfg.name,
                "{problem}: no delivery of it will be made until its min_delay is shortened \
                 (PUT) or the retention lengthened"
            );
        } else if let Some(lasts) = spec.cfg.outlasts(s.retention) {
            tracing::warn!(
                endpoint = %spec.cfg.name,
                // min_delay + every retry's wait, in config syntax and for a reader.
                runs_for = %crate::config::format_duration(lasts),
                lasts = %crate::config::human_duration(lasts),
                retention = %crate::config::format_duration(s.retention),
                "the endpoint's min_delay and retry schedule run past the retention: retries \
                 due after it expire unsent"
            );
        }
        if let Some(w) = guarded_names
            .then(|| crate::endpoint::loopback_name_warning(&spec.cfg))
            .flatten()
        {
            tracing::warn!("{}", w.trim_start_matches("warning: "));
        }
    }
    let known: HashMap<String, EndpointMeta> = store.endpoints()?.into_iter().collect();

    let n = s.worker_count();
    let finals = crate::metrics::final_snapshots(n);
    let mut worker_tx = Vec::new();
    let mut worker_rx = Vec::new();
    for _ in 0..n {
        let (tx, rx) = mailbox::<WorkerMsg>();
        worker_tx.push(tx);
        worker_rx.push(rx);
    }
    let (commit_tx, commit_rx) = mailbox::<CommitMsg>();
    let routes: Vec<RouteInfo> = specs
        .iter()
        .map(|spec| {
            let meta = known[&spec.cfg.name].clone();
            RouteInfo {
                id: spec.id,
                name: spec.cfg.name.clone(),
                worker: worker_for(&spec.cfg.name, n),
                events: spec.cfg.events.clone(),
                account: spec.cfg.account.clone(),
                min_delay_ms: spec.cfg.min_delay.as_millis() as u64,
                // A stored definition that no longer compiles has a reason (`apply_endpoints`).
                enabled: !meta.is_disabled(),
                ordered: spec.cfg.ordered,
                holds_retries: spec.cfg.ordered,
                meta,
            }
        })
        .collect();
    let specs: Vec<Arc<EndpointSpec>> = specs.into_iter().map(Arc::new).collect();
    let registry: Registry = Arc::new(RwLock::new(
        specs
            .iter()
            .map(|s| (s.cfg.name.clone(), s.clone()))
            .collect::<BTreeMap<_, _>>(),
    ));
    let sync = syncer::Shared::default();
    let (sync_tx, sync_rx) = crossbeam_channel::unbounded();
    let syncer = Syncer::new(store.clone(), worker_tx.clone(), sync_rx, sync.clone());
    let sync_thread = std::thread::Builder::new()
        .name("ricochet-sync".into())
        .spawn(move || syncer.run())?;
    let committer = Committer {
        store: store.clone(),
        durability: s.durability,
        retention: s.retention,
        inbox: commit_rx,
        workers: worker_tx.clone(),
        routes,
        registry: registry.clone(),
        syncer: sync_tx,
        sync,
    };
    let commit_thread = std::thread::Builder::new()
        .name("ricochet-commit".into())
        .spawn(move || committer.run())?;

    let resolver = ResolverThread::start();
    let mut per_worker: Vec<Vec<Arc<EndpointSpec>>> = (0..n).map(|_| Vec::new()).collect();
    for spec in &specs {
        per_worker[worker_for(&spec.cfg.name, n)].push(spec.clone());
    }
    let line_budget = Arc::new(crate::ingest::LineBudget::for_server(s.max_line_bytes));
    let mut worker_threads = Vec::new();
    // Each worker thread says when it ends (a panic included): a stop waits for them
    // within a bound.
    let (ended_tx, ended_rx) = crossbeam_channel::unbounded::<usize>();
    // How far each got, for the warning if one does not end: 0 running, 1 its run
    // returned (the runtime being torn down), 2 the runtime gone (the thread exiting).
    let mut stages = Vec::new();
    let stall = exit_stall();
    for (idx, (inbox, endpoints)) in worker_rx.into_iter().zip(per_worker).enumerate() {
        let setup = WorkerSetup {
            idx,
            finals: finals.clone(),
            inbox,
            commit: commit_tx.clone(),
            state: endpoints
                .iter()
                .map(|e| (e.id, known[&e.cfg.name].clone()))
                .collect(),
            endpoints,
            resolver: resolver.clone(),
            max_line_bytes: s.max_line_bytes,
            retention_for_ingest: s.retention,
            line_budget: line_budget.clone(),
            allow_private_networks: s.allow_private_networks,
            drain_timeout: DRAIN_TIMEOUT,
            retention: store.floor_reader(),
        };
        worker_threads.push(
            std::thread::Builder::new()
                .name(format!("ricochet-worker-{idx}"))
                .spawn({
                    let ended = ThreadEnd {
                        idx,
                        tx: ended_tx.clone(),
                    };
                    let stage = Arc::new(AtomicU8::new(0));
                    stages.push(stage.clone());
                    move || {
                        let run = async {
                            worker::run(setup).await;
                            stage.store(1, Ordering::Relaxed);
                        };
                        if let Err(e) = runtime::block_on(driver, run) {
                            tracing::error!(worker = idx, error = %e, "worker failed to start");
                        }
                        stage.store(2, Ordering::Relaxed);
                        if let Some(d) = stall.filter(|_| idx == 0) {
                            std::thread::sleep(d);
                        }
                        drop(ended);
                    }
                })?,
        );
    }

    let stopping = Arc::new(AtomicBool::new(false));
    spawn_acceptor(
        "ricochet-accept-unix",
        worker_tx.clone(),
        stopping.clone(),
        move || {
            unix.accept().map(|(s, _)| {
                let _ = s.set_nonblocking(true);
                IngestStream::Unix(s)
            })
        },
    )?;
    let mut tcp_addr = None;
    if let Some(l) = tcp {
        let addr = l.local_addr()?;
        tcp_addr = Some(addr);
        if !addr.ip().to_canonical().is_loopback() {
            tracing::warn!(
                listen = %addr,
                "TCP ingest listens beyond the loopback: whoever reaches it can send events \
                 (the line protocol has no authentication; use a firewall or a loopback \
                 address)"
            );
        }
        spawn_acceptor(
            "ricochet-accept-tcp",
            worker_tx.clone(),
            stopping.clone(),
            move || {
                l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    if let Err(e) = keep_alive(&s) {
                        tracing::debug!(error = %e, "cannot set TCP keepalive on an ingest connection");
                    }
                    let _ = s.set_nonblocking(true);
                    IngestStream::Tcp(s)
                })
            },
        )?;
    }
    let answering = Arc::new(crate::admin::Answering::default());
    let admin_addr = crate::admin::start(AdminSetup {
        listener: admin_listener,
        store: store.clone(),
        token: s.admin_token.clone(),
        commit: commit_tx.clone(),
        workers: worker_tx.clone(),
        finals,
        registry,
        max_line_bytes: s.max_line_bytes,
        retention: s.retention,
        allow_private_networks: s.allow_private_networks,
        stopping: stopping.clone(),
        answering: answering.clone(),
    })
    .with_context(|| format!("cannot start the admin API on {}", s.admin))?;
    if !admin_addr.ip().to_canonical().is_loopback() && s.admin_token.is_none() {
        tracing::warn!(
            admin = %admin_addr,
            "the admin API listens beyond the loopback with no admin_token: whoever reaches \
             it can read the events and change the endpoints (set admin_token)"
        );
    }
    tracing::info!(
        socket = %s.socket.display(),
        tcp = %tcp_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        admin = %admin_addr,
        workers = n,
        driver = %driver.name(),
        durability = %s.durability.name(),
        "ricochet ready"
    );

    wait_for_signal(signals);
    stopping.store(true, Ordering::SeqCst);
    tracing::info!("shutting down: answering the lines read, finishing in-flight attempts");
    for w in &worker_tx {
        w.send(WorkerMsg::Shutdown);
    }
    // Each drains within DRAIN_TIMEOUT; one that does not end soon after (a runtime
    // that hangs as it is torn down, say) is left behind, as a kill -9 would leave it:
    // its attempts in flight are made again at the next start. The stop stays bounded.
    drop(ended_tx);
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT + WORKER_EXIT_GRACE;
    let mut ended = vec![false; worker_threads.len()];
    while ended.iter().any(|e| !e) {
        match ended_rx.recv_deadline(deadline) {
            Ok(idx) => ended[idx] = true,
            Err(_) => break,
        }
    }
    for (idx, t) in worker_threads.into_iter().enumerate() {
        if ended[idx] {
            let _ = t.join();
        } else {
            let stage = match stages[idx].load(Ordering::Relaxed) {
                0 => "draining",
                1 => "tearing down its runtime",
                _ => "exiting its thread",
            };
            tracing::warn!(
                worker = idx,
                stage,
                bound = ?DRAIN_TIMEOUT + WORKER_EXIT_GRACE,
                "a worker did not end within the shutdown bound; stopping without it (its attempts in flight are made again at the next start)"
            );
        }
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    commit_tx.send(CommitMsg::Shutdown(tx));
    let _ = rx.recv_timeout(Duration::from_secs(10));
    // Admin requests being answered get their answers (a `POST /v1/events` the
    // committer has just answered, a page being written): the exit cut them off. No
    // new connection is taken from here on.
    let requests = answering.count();
    if requests > 0 {
        tracing::info!(requests, "answering the admin requests in flight");
    }
    let left = answering.close(ADMIN_ANSWER_WAIT);
    if left > 0 {
        tracing::warn!(
            requests = left,
            bound = ?ADMIN_ANSWER_WAIT,
            "admin requests still unanswered at the shutdown bound are cut off"
        );
    }
    // RocksDB's background work is stopped, and waited for: a compaction under way is
    // cut short (dropped, and made again after the next start; what was written is in
    // the WAL). Else the process's exit joins RocksDB's threads once each has finished
    // its job, and a compaction under way held the exit, after `stopped`, for as long
    // as it ran: a second with a store of a few hundred MB, past the stop's bound with
    // a bigger one.
    store.cancel_background_work();
    drop(commit_tx);
    drop(_socket_file);
    drop(commit_thread);
    drop(sync_thread);
    tracing::info!("stopped");
    Ok(())
}

/// Test hook: `RICOCHET_TEST_STALL_WORKER_EXIT=SECS` keeps worker 0's thread from
/// ending for SECS once its runtime is gone (a thread stuck on its way out), so that a
/// test can hold the stop to its bound. Unset, nothing changes.
fn exit_stall() -> Option<Duration> {
    let secs = std::env::var("RICOCHET_TEST_STALL_WORKER_EXIT").ok()?;
    secs.parse().ok().map(Duration::from_secs)
}

/// Tells the stop that a worker thread ended, when dropped (at the end of the thread, or
/// as a panic unwinds it).
struct ThreadEnd {
    idx: usize,
    tx: crossbeam_channel::Sender<usize>,
}

impl Drop for ThreadEnd {
    fn drop(&mut self) {
        let _ = self.tx.send(self.idx);
    }
}

/// Merges the config file's endpoints with the persisted ones, by name: the file's are
/// created or updated (and keep their ids), endpoints created over the API run on from
/// their stored definition (disabled, their deliveries paused, while it no longer
/// compiles or, `guarded`, its URL is an address the SSRF guard refuses), and
/// endpoints the file named once and no longer has are deleted. Returns every endpoint
/// to run, with its stable id.
fn apply_endpoints(
    store: &Store,
    from_file: Vec<EndpointSpec>,
    guarded: bool,
) -> anyhow::Result<Vec<EndpointSpec>> {
    let stored = store.stored_endpoints()?;
    let mut known: HashMap<String, EndpointMeta> = stored
        .iter()
        .map(|e| (e.name.clone(), e.meta.clone()))
        .collect();
    let mut next_id = store
        .endpoint_names()?
        .keys()
        .map(|id| id + 1)
        .max()
        .unwrap_or(1);
    let in_file: HashSet<String> = from_file.iter().map(|s| s.cfg.name.clone()).collect();
    let mut batch = store.batch();
    let mut specs = Vec::new();
    // Endpoints disabled here: their deliveries waiting are paused at once, as a
    // disable over the API does (nothing is in flight yet), not as each falls due.
    let mut disabled: HashSet<EndpointId> = HashSet::new();
    for mut spec in from_file {
        let meta = known.entry(spec.cfg.name.clone()).or_insert_with(|| {
            let m = EndpointMeta {
                id: next_id,
                ..EndpointMeta::default()
            };
            next_id += 1;
            m
        });
        if meta.source == EndpointSource::Api && !meta.from_file {
            tracing::warn!(
                endpoint = %spec.cfg.name,
                "the config file names an endpoint stored as made over the admin API (or a \
                 file endpoint an older version stored so once replaced over it): the \
                 file's definition replaces it, and a start whose file no longer lists it \
                 deletes it"
            );
        }
        meta.source = EndpointSource::Config;
        meta.from_file = true;
        // The held head is an ordered endpoint's only: kept from an earlier ordered
        // run, it would be sent again at the next ordered start, delivered or not.
        if !spec.cfg.ordered {
            meta.hold = None;
            meta.hold_first = 0;
        }
        // `enabled` in the file disables, and enables again what the file disabled;
        // an automatic disable (410, disable_after) stays until enabled explicitly.
        match (spec.cfg.enabled, meta.disabled_by()) {
            (false, None) => {
                meta.disable(DisabledBy::Config);
                disabled.insert(meta.id);
            }
            // The file's definition replaces one disabled by an API `PUT`: it lifts that
            // disable as a `PUT` with `enabled = true` would.
            (true, Some(DisabledBy::Config | DisabledBy::Definition)) => meta.enable(),
            (true, Some(_)) => tracing::warn!(
                endpoint = %spec.cfg.name,
                reason = without_source(meta.disabled_reason.as_deref().unwrap_or_default()),
                "endpoint stays disabled until it is enabled over the admin API"
            ),
            _ => {}
        }
        batch.put_endpoint(store, &spec.cfg.name, meta);
        batch.put_endpoint_config(store, meta.id, &spec.cfg.name, &spec.cfg);
        spec.id = meta.id;
        specs.push(spec);
    }
    let mut removed = 0;
    for e in stored.into_iter().filter(|e| !in_file.contains(&e.name)) {
        match (e.meta.is_the_file_s(), e.config) {
            (false, Some(cfg)) => {
                // What `POST` would refuse now: a definition that no longer compiles, or
                // a URL the SSRF guard refuses (turned on since it was made: every
                // delivery would fail, its retries with it).
                // (Whether it compiles, and the reason.)
                let (compiles, refused) = match EndpointSpec::compile(e.meta.id, cfg.clone()) {
                    Ok(spec) => match guarded.then(|| guarded_url_problem(&cfg)).flatten() {
                        None => {
                            if e.meta.disabled_by() == Some(DisabledBy::NotCompiling) {
                                // The cause is gone (a version or a setting changed back).
                                tracing::warn!(
                                    endpoint = %e.name,
                                    "a stored endpoint disabled as not compiling passes the \
                                     checks again: it is enabled, its deliveries resume"
                                );
                                let mut meta = e.meta.clone();
                                meta.enable();
                                batch.put_endpoint(store, &e.name, &meta);
                            }
                            specs.push(spec);
                            continue;
                        }
                        Some(problem) => (true, problem),
                    },
                    Err(err) => (false, err.to_string()),
                };
                // Kept, disabled: its deliveries wait paused (the loader would drop
                // those of an endpoint it does not know) until a definition that passes
                // replaces it, or a start where this one passes.
                tracing::error!(
                    endpoint = %e.name,
                    error = without_source(&refused),
                    "a stored endpoint no longer compiles or passes the checks: it is \
                     disabled and its deliveries wait; PUT a definition that passes to run \
                     it again (a start where this one passes runs it again too)"
                );
                let mut meta = e.meta.clone();
                if !meta.is_disabled() {
                    if compiles {
                        meta.disable_refused(&refused);
                    } else {
                        meta.disable_because(DisabledBy::NotCompiling, &refused);
                    }
                    batch.put_endpoint(store, &e.name, &meta);
                    disabled.insert(meta.id);
                }
                specs.push(EndpointSpec::not_compiling(e.meta.id, cfg, refused));
            }
            _ => {
                // A line each for the first few: a file cut from 10,000 endpoints to 100
                // wrote 9,900 lines.
                removed += 1;
                if removed <= REMOVED_NAMED {
                    tracing::warn!(
                        endpoint = %e.name,
                        "endpoint left the config file (or `serve` was started without \
                         --config): deleted; its pending deliveries end failed (an endpoint \
                         of that name made again is a new one: replay them by event)"
                    );
                }
                // Its pending deliveries are failed by the committer (`Store::deleting`).
                batch.delete_endpoint(store, &e.name, e.meta.id);
            }
        }
    }
    if removed > REMOVED_NAMED {
        tracing::warn!(
            more = removed - REMOVED_NAMED,
            deleted = removed,
            "more endpoints left the config file, deleted as those named above"
        );
    }
    if specs.len() > crate::store::MAX_ROUTES {
        // Before anything is written: the start changes nothing.
        bail!(
            "{} endpoints (the config file's and those created over the API), more than \
             the {} there may be (an event routed to every one must fit its record)",
            specs.len(),
            crate::store::MAX_ROUTES
        );
    }
    // A pause under way is marked with the disable, as a disable over the API marks
    // it: the pause below goes in pages, and a start killed half-way (or whose write of
    // a page fails) left the rest in `due` under their old times with nothing to say so.
    // The next start found the endpoint disabled already and paused nothing, so an
    // enable resumed the pages moved and left the rest waiting for their old retry
    // times (an hour's `retry`: sent an hour late; an `ordered` endpoint's after later
    // ones). With the marker, the committer finishes the pause at the next start.
    for &ep in &disabled {
        batch.pausing(store, ep);
    }
    store.commit(batch, true)?;
    if !disabled.is_empty() {
        let mut moved = 0;
        store.pause_due(|k| disabled.contains(&k.ep), &mut moved)?;
        let mut done = store.batch();
        for &ep in &disabled {
            done.paused_all(store, ep);
        }
        store.commit(done, false)?;
        tracing::info!(moved, "deliveries of endpoints disabled at start paused");
    }
    specs.sort_by_key(|s| s.id);
    Ok(specs)
}

/// How far the clock may read behind the newest event in the store before a start says
/// so ([`clock_behind`]): sequence numbers run ahead of the clock only past 1,024 events
/// in one millisecond, never by seconds.
const CLOCK_BEHIND_WARN: Duration = Duration::from_secs(2);

/// How far the clock (`now_ms`) reads behind the acceptance time of the newest event in
/// the store (`newest_ms`), when by more than [`CLOCK_BEHIND_WARN`]. Due times are the
/// wall clock's and survive a restart as they are, so after a clock set back across a
/// restart (by hand, or NTP stepping back a clock that ran ahead) every retry and
/// `min_delay` waits that much longer, and new events' sequence numbers continue from
/// the newest one (`created` stays there) until the clock catches up: measured with the
/// clock 10 minutes back, a retry due 3 s after the kill and a delivery 5 s after its
/// event went 10 minutes late, and nothing said why.
fn clock_behind(newest_ms: u64, now_ms: u64) -> Option<Duration> {
    let behind = Duration::from_millis(newest_ms.saturating_sub(now_ms));
    (behind > CLOCK_BEHIND_WARN).then_some(behind)
}

/// The ingest socket's file, removed when dropped if it is still the one bound.
struct SocketFile {
    path: std::path::PathBuf,
    /// The bound socket's device and inode.
    id: Option<(u64, u64)>,
}

impl SocketFile {
    fn bound(path: &Path) -> SocketFile {
        SocketFile {
            path: path.to_path_buf(),
            id: socket_id(path),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Only while it is still our socket: never another file put in its place, nor
        // the socket of a server started on the path after ours was removed.
        if self.id.is_some() && socket_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The device and inode of the socket at `path` (not what a link there points to).
fn socket_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_socket().then(|| (m.dev(), m.ino()))
}

/// Gives the ingest socket at `path` the mode the umask `serve` started with gives (its
/// own umask is 077 by then), if `path` is still that socket (not a link put there).
fn set_socket_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    if socket_id(path).is_none() {
        bail!("{} is no longer the socket just bound", path.display());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket left by an earlier run is removed, never another file.
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: give `socket` a free path",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by a running server", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))
}

/// Warns that ingest connections are being closed for want of a permit: at most every
/// 10 s over both listeners, with the count since the last warning
/// (`ricochet_ingest_connections_refused_total` has them all).
fn warn_refused() {
    static REFUSED: std::sync::Mutex<Tally> = std::sync::Mutex::new(Tally::new());
    let Ok(mut tally) = REFUSED.lock() else {
        return;
    };
    let Some(closed) = tally.note(Duration::from_secs(10)) else {
        return;
    };
    tracing::warn!(
        open = ConnPermit::budget(),
        closed,
        "ingest connections closed at once: as many are open as the open-file limit \
         allows (half of what it keeps from delivery sockets); close idle producers' \
         connections or raise the limit"
    );
}

fn spawn_acceptor<F>(
    name: &str,
    workers: Vec<MailboxSender<WorkerMsg>>,
    stopping: Arc<AtomicBool>,
    mut accept: F,
) -> std::io::Result<()>
where
    F: FnMut() -> std::io::Result<IngestStream> + Send + 'static,
{
    let listener = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut next = 0usize;
            let mut failed = Tally::default();
            while !stopping.load(Ordering::SeqCst) {
                match accept() {
                    Ok(conn) => {
                        let Some(permit) = ConnPermit::take() else {
                            // Closed unanswered: the producer sees the connection end
                            // and can try again (one left waiting in the backlog would
                            // hang without a word).
                            drop(conn);
                            warn_refused();
                            continue;
                        };
                        workers[next % workers.len()].send(WorkerMsg::Conn(conn, permit));
                        next += 1;
                    }
                    Err(e) => fdlimit::after_failed_accept(&mut failed, &e, &listener),
                }
            }
        })?;
    Ok(())
}

/// TCP keepalive for an ingest connection, [`KEEPALIVE_IDLE`] idle, then a probe every
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`] unanswered ending it: a producer whose
/// host vanished (or a NAT that forgot the flow) no longer holds its connection permit
/// and descriptor forever, waiting in a read no byte will end. A live producer answers
/// the probes however long it is quiet.
fn keep_alive(s: &std::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let set = |level: libc::c_int, name: libc::c_int, v: u32| {
        let v = libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
        // SAFETY: an int option of the right size on the connection's open socket.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        KEEPALIVE_IDLE.as_secs() as u32,
    )?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        KEEPALIVE_INTERVAL.as_secs() as u32,
    )?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)?;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
}

const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;

/// Takes the data dir for this process: an exclusive lock on `ricochet.lock` in it,
/// held while the returned file is open. A second `serve` on the same dir is refused
/// with that said (RocksDB's own lock refused it with "While lock file: …/LOCK:
/// Resource temporarily unavailable").
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("ricochet.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on the descriptor of a file this function opened.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "the data dir {} is in use by another running ricochet serve: stop it first, \
                 or give this one another data dir",
                dir.display()
            );
        }
        return Err(e).with_context(|| format!("cannot lock {}", path.display()));
    }
    Ok(file)
}

/// Whether `sig` is ignored (as `nohup` leaves SIGHUP).
fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: reads the current action into a zeroed struct; changes nothing.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The thread that answers one admin connection: a panic there ends that request only.
pub const ADMIN_CONN_THREAD: &str = "ricochet-admin-conn";

/// Makes a panic (a bug) end the process at once, with SIGABRT, once it is printed and
/// logged, unless it is in a thread answering one admin connection. A worker (or the
/// committer) that died alone would leave its endpoints unattempted and its producers
/// unanswered while the rest ran on, its share of the in-memory budget never given
/// back; the store is the record, and a restart (by the supervisor) resumes everything
/// from it, losing nothing acked, as after a kill -9.
fn end_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        if name == ADMIN_CONN_THREAD {
            tracing::error!(
                thread = name,
                "a thread panicked: its admin request is dropped"
            );
            return;
        }
        tracing::error!(
            thread = name,
            "a thread panicked: ending the process; what was acked is in the store, and a \
             restart resumes it"
        );
        std::process::abort();
    }));
}

/// The signals that stop the server, caught from [`StopSignals::catch`] on.
pub struct StopSignals(signal_hook::iterator::Signals);

impl StopSignals {
    /// Catches the stop signals: one that comes before the server is ready (a
    /// supervisor's stop right after the start) then waits for it, instead of killing
    /// it on the spot. Called first, before the config file is read: compiling one of
    /// 20,000 endpoints takes most of a second, and a stop then killed the process
    /// (helper term, session 53).
    pub fn catch() -> anyhow::Result<StopSignals> {
        // SIGHUP too: a closed terminal (or ssh session) stops the server as politely as
        // Ctrl-C; by default it killed it on the spot, leaving the socket file behind. Not
        // when it is ignored (`nohup`): then the server is meant to outlive the terminal.
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut stop_on = vec![SIGINT, SIGTERM];
        if !ignored(SIGHUP) {
            stop_on.push(SIGHUP);
        }
        // A second one ends the process at once (Ctrl-C twice, a supervisor out of
        // patience), as a kill -9 would: nothing acked is lost, attempts in flight are made
        // again at the next start. Not one within `ONE_STOP` of the first: `timeout` and
        // other tools signal the process and then its group, so one stop can arrive twice.
        // The iterator first: a signal between the two registrations then reaches it (and
        // a second one is taken as the first stop), where the other order left it noted as
        // the first stop but never stopping the server.
        let signals = signal_hook::iterator::Signals::new(&stop_on)?;
        for &sig in &stop_on {
            // SAFETY: the handler only reads the clock, touches an atomic, writes to
            // stderr and ends the process: all async-signal-safe.
            unsafe { signal_hook::low_level::register(sig, move || on_stop_signal(sig)) }?;
        }
        Ok(StopSignals(signals))
    }
}

/// Stop signals this close after the first are the same stop, sent twice.
const ONE_STOP: Duration = Duration::from_millis(100);

/// The monotonic time of the first stop signal, in ns (0: none yet).
static FIRST_STOP_NS: AtomicU64 = AtomicU64::new(0);

/// Run in the signal handler: notes the first stop signal; a later one ends the process
/// with the signal's default action, said on stderr first.
fn on_stop_signal(sig: libc::c_int) {
    if !is_second_stop(&FIRST_STOP_NS, monotonic_ns()) {
        return;
    }
    const SAID: &[u8] = b"ricochet: a second stop signal: ending at once (what was acked is \
        kept; attempts in flight are made again at the next start)\n";
    // SAFETY: write(2) on stderr is async-signal-safe; `SAID` is a valid buffer.
    unsafe { libc::write(2, SAID.as_ptr().cast(), SAID.len()) };
    let _ = signal_hook::low_level::emulate_default_handler(sig);
}

/// Whether a stop signal at `now_ns` is a second stop: not the first (noted in `first`),
/// nor within [`ONE_STOP`] of it.
fn is_second_stop(first: &AtomicU64, now_ns: u64) -> bool {
    let now = now_ns.max(1);
    match first.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => false,
        Err(at) => now.saturating_sub(at) >= ONE_STOP.as_nanos() as u64,
    }
}

/// `CLOCK_MONOTONIC` in ns (async-signal-safe, unlike `Instant` in general).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; clock_gettime is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn wait_for_signal(StopSignals(mut signals): StopSignals) {
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "signal received");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn one_stop_sent_twice_is_not_a_second_stop() {
        let first = std::sync::atomic::AtomicU64::new(0);
        let ms = 1_000_000;
        assert!(!super::is_second_stop(&first, 5_000 * ms));
        // `timeout` signals the process, then its group: the same stop.
        assert!(!super::is_second_stop(&first, 5_000 * ms + 20));
        assert!(!super::is_second_stop(&first, 5_099 * ms));
        assert!(super::is_second_stop(&first, 5_100 * ms));
        assert!(super::is_second_stop(&first, 9_000 * ms));
    }

    /// A start whose clock reads more than 2 s before the newest event was accepted says
    /// so; a clock ahead of it, or within the 2 s, says nothing.
    #[test]
    fn a_clock_behind_the_newest_event_is_told_past_two_seconds() {
        let newest = 1_800_000_000_000;
        assert_eq!(super::clock_behind(newest, newest + 60_000), None);
        assert_eq!(super::clock_behind(newest, newest), None);
        assert_eq!(super::clock_behind(newest, newest - 2_000), None);
        assert_eq!(
            super::clock_behind(newest, newest - 600_000),
            Some(Duration::from_secs(600))
        );
    }

    /// The config file's `enabled = false` pauses the endpoint's waiting deliveries at
    /// the start that reads it, in pages after the write that disables it. A start
    /// stopped half-way (a kill -9, a write refused) left the rest in `due` under their
    /// old times, unmarked: the next start found the endpoint disabled already and
    /// paused nothing, and an enable resumed only the pages moved (killed 0.25 s into
    /// such a start over 20,000 retries an hour out, 14,688 were paused and 5,312 waited
    /// for their hour). The disable's write marks the pause under way, as a disable over
    /// the API does, so the committer finishes it at the next start; a pause done
    /// leaves no mark.
    #[test]
    fn a_pause_at_start_stopped_half_way_stays_marked_for_the_next_start() {
        use crate::config::ConfigFile;
        use crate::store::{DueKey, DueVal, Store};
        let file = |enabled: bool| {
            let text = format!(
                "[[endpoint]]\nname = \"late\"\nevents = [\"t\"]\n\
                 url = \"http://receiver.example/\"\nenabled = {enabled}\n"
            );
            super::check(&ConfigFile::parse(&text, "test.toml").unwrap()).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ep = super::apply_endpoints(&store, file(true), false).unwrap()[0].id;
        let mut b = store.batch();
        for seq in 1..=10 {
            let key = DueKey {
                due_ms: 3_600_000 + seq,
                seq,
                ep,
            };
            b.put_due(&store, key, DueVal::NEW);
        }
        store.commit(b, false).unwrap();

        // The disable is written, the pause's first page is not.
        store.fail_writes_after(1, 1);
        assert!(super::apply_endpoints(&store, file(false), false).is_err());
        assert_eq!(store.count_due().unwrap(), 10, "nothing paused yet");
        assert_eq!(
            store.pausing().unwrap(),
            [ep],
            "the pause is marked under way"
        );
        // The next start finds the endpoint disabled already: the mark stays for the
        // committer, which finishes the pause (`Committer::run`).
        super::apply_endpoints(&store, file(false), false).unwrap();
        assert_eq!(store.pausing().unwrap(), [ep]);

        // A pause done at the start leaves no mark (the committer would scan the whole
        // due index again at every start).
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ep = super::apply_endpoints(&store, file(true), false).unwrap()[0].id;
        let mut b = store.batch();
        b.put_due(
            &store,
            DueKey {
                due_ms: 3_600_000,
                seq: 1,
                ep,
            },
            DueVal::NEW,
        );
        store.commit(b, false).unwrap();
        super::apply_endpoints(&store, file(false), false).unwrap();
        assert_eq!(store.count_due().unwrap(), 0);
        assert_eq!(store.paused_of(ep, 0, 10).unwrap().len(), 1);
        assert!(store.pausing().unwrap().is_empty());
    }

    /// Set in the child this test runs: it panics there, on another thread.
    const CHILD: &str = "RICOCHET_TEST_PANIC_CHILD";

    #[test]
    fn a_panic_on_any_thread_ends_the_process() {
        if std::env::var_os(CHILD).is_some() {
            super::end_on_panic();
            // One admin request's thread: that request only.
            let admin = std::thread::Builder::new()
                .name(super::ADMIN_CONN_THREAD.into())
                .spawn(|| panic!("admin bug"))
                .unwrap()
                .join();
            assert!(admin.is_err());
            let _ = std::thread::Builder::new()
                .name("ricochet-w0".into())
                .spawn(|| panic!("worker bug"))
                .unwrap()
                .join();
            // Not reached with the hook: the panic aborted the process.
            std::process::exit(0);
        }
        use std::os::unix::process::ExitStatusExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "server::tests::a_panic_on_any_thread_ends_the_process",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
        assert!(stderr.contains("admin bug"), "{stderr}");
        assert!(stderr.contains("worker bug"), "{stderr}");
    }
}
