//! server: start-up and shutdown, in order. The top floor: the only module that sees every
//! other.
//!
//! Start: database (embedded cluster or URL) → migrations → partitions for now and ahead →
//! webhook delivery (with the
//! endpoints read) → persisters, query threads, partition upkeep, the key listener and the
//! cluster's supervisor →
//! one listener per core → cores → wait for SIGTERM/SIGINT or a failed core. `Running::stop`
//! is the whole shutdown, the same path backwards, each step bounded by the `shutdown::Stop`
//! budget: cores drain, then persisters commit what the rings hold, then delivery finishes its
//! attempts in flight and gives the rest back to the table, then the query threads, the upkeep
//! and the key listener end, then the embedded cluster stops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{self, KeyCache};
use crate::cluster::{self, Cluster};
use crate::config::{Config, Database};
use crate::db::partitions::{self, Upkeep};
use crate::db::{self, QueryPool, QueryThreads};
use crate::delivery::Engine;
use crate::hooks::{self, Hooks};
use crate::persist::{self, Persister};
use crate::queue::{Hub, RING_BYTES_MAX};
use crate::shutdown::Stop;
use crate::stats::Stats;
use crate::{api, core, http};

/// Pending connections the kernel queues per core (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;
/// How long a port found in use is tried again at start-up, and how often (see `probe_free`).
const BIND_RETRY: Duration = Duration::from_secs(3);
const BIND_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How often the supervisor looks whether the embedded PostgreSQL still runs.
const SUPERVISE_POLL: Duration = Duration::from_millis(100);
/// Pauses between failed restarts of the embedded PostgreSQL: doubling from the first, up to
/// the last. After `RESTARTS_BEFORE_LOST` failures in a row the node reports itself not live.
const RESTART_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
const RESTARTS_BEFORE_LOST: u32 = 5;
/// A signal this soon after the first is the same request to stop; a later one exits at once.
const SIGNAL_REPEAT_SAME_STOP: Duration = Duration::from_secs(1);
/// Attempts in flight at shutdown get at least this long to finish, whatever the budget left.
const DELIVERY_STOP_MIN: Duration = Duration::from_millis(500);

enum Stopped {
    Signal(i32),
    CoreFailed(usize, String),
}

/// Proves `addr` free with a plain bind. A server killed a moment ago can still hold its
/// listeners while the kernel tears down its io_uring, so "in use" is retried for
/// `BIND_RETRY`; a port a live server keeps stays refused.
fn probe_free(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        match probe.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(BIND_RETRY_PAUSE);
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("binding {addr}: is another server listening there?"))
            }
        }
    }
}

/// Binds one listener per core on the same address. The first bind resolves port 0, so every
/// core shares the port the kernel picked.
fn bind(addr: SocketAddr, cores: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    // SO_REUSEPORT would let this server silently share a port with another process (a second
    // server started by mistake would take half the traffic). A plain bind first proves the
    // port free.
    if addr.port() != 0 {
        probe_free(addr)?;
    }
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(cores);
    for i in 0..cores {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("binding {addr}"))?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        if i == 0 {
            addr = listener.local_addr()?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The database the server stores into: the embedded cluster (started, with the data
/// directory locked) or a URL.
struct Storage {
    db: postgres::Config,
    cluster: Option<Cluster>,
    /// How often the embedded cluster's data files are written back (`cluster::writeback`).
    writeback: Option<Duration>,
    lock: Option<std::fs::File>,
}

fn storage(database: &Database) -> anyhow::Result<Storage> {
    match database {
        Database::Url(url) => Ok(Storage {
            db: url.parse().context("parsing the database URL")?,
            cluster: None,
            writeback: None,
            lock: None,
        }),
        Database::Embedded {
            data_dir,
            writeback,
        } => {
            let lock = cluster::lock_data_dir(data_dir)?;
            let mut cluster = Cluster::new(data_dir)?;
            // Started from the main thread, which lives as long as the server: a server killed
            // with `kill -9` takes its cluster with it (a fast shutdown, every commit kept).
            cluster.start(true)?;
            // Only where the kernel would let bursts build: the pass has a price (it drops
            // the page cache of the files it hands over).
            let writeback = cluster::writeback::starts_late().and_then(|at| match writeback {
                Some(every) => {
                    tracing::info!(
                        every_ms = every.as_millis() as u64,
                        "the kernel starts writing dirty pages back only at {} MiB: the server \
                         hands the cluster's recently written files to write-back itself",
                        at >> 20
                    );
                    Some(*every)
                }
                None => {
                    tracing::warn!(
                        "the kernel starts writing dirty pages back only at {} MiB: under \
                         sustained ingest PostgreSQL's writes leave in bursts and durable \
                         commits stall behind them (100+ ms); set writeback_ms (the server then \
                         writes the cluster's files back itself) or vm.dirty_background_bytes \
                         = 33554432 (tuning/sysctl.conf)",
                        at >> 20
                    );
                    None
                }
            });
            Ok(Storage {
                db: cluster.client_config(),
                cluster: Some(cluster),
                writeback,
                lock: Some(lock),
            })
        }
    }
}

/// Watches the embedded PostgreSQL and restarts it when it dies (a `kill -9`, the OOM killer,
/// a crash): reaps it, waits out its orphaned backends, starts a new postmaster (which runs
/// crash recovery) and logs each step; restarts that fail are retried with backoff, and after
/// `RESTARTS_BEFORE_LOST` in a row `/health/live` fails so an orchestrator replaces the node.
/// Meanwhile persisters and query threads reconnect on their own, and requests get 503
/// `storage_unavailable` as during any outage. Between looks, it writes back the data files
/// the cluster wrote lately (`cluster::writeback`), when the server is set to.
struct Supervisor {
    quit: Arc<AtomicBool>,
    thread: JoinHandle<Cluster>,
}

impl Supervisor {
    fn spawn(
        mut cluster: Cluster,
        writeback: Option<Duration>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Supervisor> {
        let quit = Arc::new(AtomicBool::new(false));
        let quitting = quit.clone();
        // Sleeps `d` (in steps of at most SUPERVISE_POLL, to notice quitting); false once
        // quitting.
        let pause = move |d: Duration| {
            let until = Instant::now() + d;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() || quitting.load(Ordering::Relaxed) {
                    return !quitting.load(Ordering::Relaxed);
                }
                std::thread::sleep(left.min(SUPERVISE_POLL));
            }
        };
        let thread = std::thread::Builder::new()
            .name("cluster-supervisor".into())
            .spawn(move || {
                let writeback = writeback.map(|every| (cluster.writeback(every), every));
                let mut next_pass = Instant::now();
                // Looks at the cluster every SUPERVISE_POLL, and writes back on time.
                let next_look = |next_pass: Instant| match writeback {
                    Some(_) => {
                        SUPERVISE_POLL.min(next_pass.saturating_duration_since(Instant::now()))
                    }
                    None => SUPERVISE_POLL,
                };
                while pause(next_look(next_pass)) {
                    if let Some((w, every)) = &writeback {
                        if Instant::now() >= next_pass {
                            next_pass = Instant::now() + *every;
                            w.pass();
                        }
                    }
                    let Some(how) = cluster.exited() else {
                        continue;
                    };
                    tracing::error!(exit = %how, "embedded PostgreSQL died; restarting it");
                    let (mut failures, mut backoff) = (0, RESTART_BACKOFF_FIRST);
                    loop {
                        match cluster.restart() {
                            Ok(()) => {
                                stats.storage_restarts.add(1);
                                stats.storage_lost.set(false);
                                tracing::info!(failures, "embedded PostgreSQL restarted");
                                break;
                            }
                            Err(e) => {
                                failures += 1;
                                if failures >= RESTARTS_BEFORE_LOST {
                                    stats.storage_lost.set(true);
                                }
                                tracing::error!(
                                    failures,
                                    retry_in_s = backoff.as_secs(),
                                    error = %format!("{e:#}"),
                                    "embedded PostgreSQL did not restart"
                                );
                            }
                        }
                        if !pause(backoff) {
                            break;
                        }
                        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                    }
                }
                cluster
            })?;
        Ok(Supervisor { quit, thread })
    }

    /// Ends the watch (at once, or after a restart under way) and hands the cluster back.
    fn stop(self) -> Option<Cluster> {
        self.quit.store(true, Ordering::Relaxed);
        self.thread.join().ok()
    }
}

pub fn serve(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    // First, so that a port in use fails before any cluster starts. Connections that arrive
    // during start-up wait in the backlog.
    let listeners = bind(config.listen, config.cores)?;
    let Storage {
        db,
        cluster,
        writeback,
        lock: data_dir_lock,
    } = storage(&config.database)?;
    db::migrate(&db)?;
    let upkeep = Upkeep::new(&config.api.tiers.retentions(), config.api.retention_day);
    let first = partitions::upkeep_at_start(&db, &upkeep)?;
    tracing::info!(
        created = first.created.len(),
        dropped = first.dropped.len(),
        every_ms = upkeep.every().as_millis() as u64,
        "partitions ready"
    );

    let cores = config.cores;
    let hub = Arc::new(Hub::new(
        cores,
        config.ring_slots,
        RING_BYTES_MAX,
        config.persisters,
        config.persister_help_at,
    ));
    let stats = Arc::new(Stats::new(cores, config.persisters, started));
    let stop = Arc::new(Stop::new(cores, config.shutdown_timeout));
    let hooks = Arc::new(Hooks::new(config.memory));
    // Before the persisters: events committed from the first moment on are queued for the
    // webhooks that exist, whether this node delivers them or others do.
    db::connect(&db)
        .and_then(|mut c| hooks.reload(&mut c))
        .context("reading webhook endpoints")?;
    let webhook_listener = hooks::spawn_listener(db.clone(), hooks.clone(), stop.clone());
    let delivery = config
        .delivery
        .clone()
        .map(|settings| Engine::spawn(settings, hooks.clone(), db.clone(), stats.clone()));
    let persist = Arc::new(persist::Shared {
        hooks: hooks.clone(),
        hub: hub.clone(),
        limits: config.batch.clone(),
        db: db.clone(),
        stop: stop.clone(),
        stats: stats.clone(),
    });
    let persisters = (0..config.persisters)
        .map(|i| Persister::spawn(i, persist.clone()))
        .collect();
    let (queries, query_threads) = QueryPool::spawn(config.query_threads, &db);
    let supervisor = match cluster {
        Some(cluster) => Some(Supervisor::spawn(cluster, writeback, stats.clone())?),
        None => None,
    };
    let upkeep = partitions::spawn_upkeep(db.clone(), upkeep, stop.clone(), stats.upkeep.clone());
    let keys = Arc::new(KeyCache::default());
    let key_listener = auth::spawn_rotation_listener(db, keys.clone(), stop.clone());
    let guards = http::Guards::new(
        config.http.body_budget_bytes,
        config.http.pace_answers_per_s,
        cores,
    );
    let parts = core::Parts {
        http: config.http.clone(),
        guards: guards.clone(),
        api: Arc::new(api::Shared::new(
            config.api.clone(),
            hub.clone(),
            queries,
            keys,
            stats,
            guards,
            hooks,
        )),
        hub: hub.clone(),
        stop: stop.clone(),
    };

    let (stopped_tx, stopped_rx) = mpsc::channel::<Stopped>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let signal_tx = stopped_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first: Option<Instant> = None;
            for sig in signals.forever() {
                match first {
                    None => {
                        first = Some(Instant::now());
                        let _ = signal_tx.send(Stopped::Signal(sig));
                    }
                    // GNU `timeout`, and a service manager stopping a process group, signal
                    // the process and then its group, a fraction of a millisecond apart: the
                    // same request to stop, not an operator insisting.
                    Some(at) if at.elapsed() < SIGNAL_REPEAT_SAME_STOP => {
                        tracing::info!(signal = sig, "repeated signal: already stopping");
                    }
                    Some(_) => {
                        tracing::error!(
                            signal = sig,
                            "second signal during shutdown: exiting at once"
                        );
                        std::process::exit(130);
                    }
                }
            }
        })?;

    let addr = listeners[0].local_addr()?;
    let core_threads = listeners
        .into_iter()
        .enumerate()
        .map(|(id, listener)| {
            let parts = parts.clone();
            let tx = stopped_tx.clone();
            std::thread::Builder::new()
                .name(format!("core-{id}"))
                .spawn(move || {
                    if let Err(e) = core::run(id, parts, listener) {
                        let _ = tx.send(Stopped::CoreFailed(id, format!("{e:#}")));
                    }
                })
                .expect("spawning a core thread")
        })
        .collect();
    drop(parts);
    tracing::info!(
        %addr,
        cores,
        persisters = config.persisters,
        ack_mode = config.api.ack_mode.as_str(),
        database = if supervisor.is_some() { "embedded" } else { "url" },
        startup_ms = started.elapsed().as_millis() as u64,
        "listening"
    );
    let open = config.open_surfaces();
    if !open.is_empty() {
        tracing::warn!("open: {}", open.join("; "));
    }

    let failed = match stopped_rx.recv() {
        Ok(Stopped::Signal(sig)) => {
            tracing::info!(signal = sig, "shutting down");
            None
        }
        Ok(Stopped::CoreFailed(id, e)) => {
            tracing::error!(core = id, error = %e, "a core failed; shutting down");
            Some(e)
        }
        Err(_) => None,
    };
    Running {
        stop,
        hub,
        core_threads,
        persisters,
        delivery,
        query_threads,
        key_listener,
        webhook_listener,
        upkeep,
        supervisor,
        _data_dir_lock: data_dir_lock,
    }
    .stop();
    match failed {
        Some(e) => anyhow::bail!("core failed: {e}"),
        None => Ok(()),
    }
}

/// Everything that runs, in the order it stops.
struct Running {
    stop: Arc<Stop>,
    hub: Arc<Hub>,
    core_threads: Vec<JoinHandle<()>>,
    persisters: Vec<JoinHandle<()>>,
    delivery: Option<Engine>,
    query_threads: QueryThreads,
    key_listener: JoinHandle<()>,
    /// Keeps this node's view of webhook endpoints.
    webhook_listener: JoinHandle<()>,
    /// Creates and drops partitions of `events`.
    upkeep: JoinHandle<()>,
    /// Watches the embedded cluster, and holds it.
    supervisor: Option<Supervisor>,
    /// The embedded cluster's data directory lock, held until the end.
    _data_dir_lock: Option<std::fs::File>,
}

impl Running {
    /// The graceful shutdown, whole: each step waits for the one before.
    fn stop(self) {
        let stopping = Instant::now();
        // 1. Cores stop accepting and finish their in-flight requests: nothing pushes after.
        self.stop.drain();
        for t in self.core_threads {
            let _ = t.join();
        }
        let cores_done = stopping.elapsed();
        // 2. Persisters commit whatever the rings hold, then exit; the key listener ends.
        self.stop.finish();
        self.hub.doorbell.ring_all();
        for t in self.persisters {
            let _ = t.join();
        }
        let left = self.hub.queued_events();
        // 3. Delivery: attempts in flight finish within the budget; what is left is given
        // back to the table.
        if let Some(engine) = self.delivery {
            let by = self
                .stop
                .finish_by()
                .unwrap_or_else(Instant::now)
                .max(Instant::now() + DELIVERY_STOP_MIN);
            engine.stop(by);
        }
        // 4. Nothing asks the query threads any more.
        self.query_threads.join();
        let _ = self.key_listener.join();
        let _ = self.webhook_listener.join();
        let _ = self.upkeep.join();
        // 5. Last, the database the others wrote to.
        if let Some(mut cluster) = self.supervisor.and_then(Supervisor::stop) {
            cluster.stop();
        }
        tracing::info!(
            cores_ms = cores_done.as_millis() as u64,
            total_ms = stopping.elapsed().as_millis() as u64,
            events_left_in_rings = left,
            "shutdown complete"
        );
    }
}
