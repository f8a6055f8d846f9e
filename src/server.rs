//! server: start-up and shutdown, in order.
//!
//! Start: database (embedded cluster or URL) → migrations → persisters and query threads →
//! one listener per core → cores → wait for SIGTERM/SIGINT. Shutdown runs the same path
//! backwards: cores stop accepting and finish their in-flight requests, persisters drain every
//! ring and commit, the embedded cluster stops. Each step is bounded and the total is logged.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::persist::{BatchLimits, PersistShared, Persister};
use crate::queue::Hub;
use crate::stats::Stats;
use crate::{auth, core, db, pg, Shared};

/// Pending connections the kernel queues per core (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

enum Stop {
    Signal(i32),
    CoreFailed(usize, String),
}

/// Binds one listener per core on the same address. The first bind resolves port 0, so every
/// core shares the port the kernel picked.
fn bind(addr: SocketAddr, cores: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    // SO_REUSEPORT would let this server silently share a port with another process (a second
    // server started by mistake would take half the traffic). A plain bind first proves the
    // port free.
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe
            .bind(&addr.into())
            .with_context(|| format!("binding {addr}: is another server listening there?"))?;
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

/// Keeps a second server off the same data directory (and so off the same cluster).
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let path = dir.join("triggers.lock");
    let file = std::fs::File::create(&path)?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another triggers server is using data directory {} (lock {})",
            dir.display(),
            path.display()
        )
    })?;
    Ok(file)
}

pub fn serve(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    // First, so that a port in use fails before any cluster starts. Connections that arrive
    // during start-up wait in the backlog.
    let listeners = bind(config.listen, config.cores)?;
    let mut _lock = None;
    let mut cluster = None;
    let db_config: postgres::Config = match &config.database_url {
        Some(url) => url.parse().context("parsing the database URL")?,
        None => {
            _lock = Some(lock_data_dir(&config.data_dir)?);
            let mut c = pg::Cluster::new(&config.data_dir)?;
            c.start(false)?;
            if let Some(warning) = pg::writeback_warning() {
                tracing::warn!("{warning}");
            }
            let db = c.client_config();
            cluster = Some(c);
            db
        }
    };
    db::migrate(&db_config)?;

    let cores = config.cores;
    let hub = Arc::new(Hub::new(cores, config.ring_slots, config.persisters));
    let stats = Arc::new(Stats::new(cores, config.persisters));
    let persist = Arc::new(PersistShared {
        hub: hub.clone(),
        limits: BatchLimits {
            rows_max: config.batch_rows_max,
            bytes_max: config.batch_bytes_max,
            linger: config.batch_linger,
        },
        db: db_config.clone(),
        stop: OnceLock::new(),
        connected: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
    });
    let persisters: Vec<_> = (0..config.persisters)
        .map(|i| Persister::spawn(i, persist.clone(), stats.clone()))
        .collect();
    let (queries, query_threads) = db::QueryPool::spawn(config.query_threads, &db_config);
    let keys = Arc::new(auth::KeyCache::default());
    let listener_stop = Arc::new(AtomicBool::new(false));
    let key_listener =
        auth::spawn_rotation_listener(db_config.clone(), keys.clone(), listener_stop.clone());
    let addr = listeners[0].local_addr()?;
    let shared = Arc::new(Shared {
        config: config.clone(),
        hub: hub.clone(),
        stats,
        keys,
        org_limits: Default::default(),
        keygen_limits: Default::default(),
        queries,
        persist: persist.clone(),
        started,
    });

    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let signal_tx = stop_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen > 1 {
                    tracing::error!(
                        signal = sig,
                        "second signal during shutdown: exiting at once"
                    );
                    std::process::exit(130);
                }
                let _ = signal_tx.send(Stop::Signal(sig));
            }
        })?;

    let core_threads: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(id, listener)| {
            let shared = shared.clone();
            let tx = stop_tx.clone();
            std::thread::Builder::new()
                .name(format!("core-{id}"))
                .spawn(move || {
                    if let Err(e) = core::run(id, shared, listener) {
                        let _ = tx.send(Stop::CoreFailed(id, format!("{e:#}")));
                    }
                })
                .expect("spawning a core thread")
        })
        .collect();
    tracing::info!(
        %addr,
        cores,
        persisters = config.persisters,
        ack_mode = config.ack_mode.as_str(),
        database = if cluster.is_some() { "embedded" } else { "url" },
        startup_ms = started.elapsed().as_millis() as u64,
        "listening"
    );

    let mut failed = None;
    match stop_rx.recv() {
        Ok(Stop::Signal(sig)) => tracing::info!(signal = sig, "shutting down"),
        Ok(Stop::CoreFailed(id, e)) => {
            tracing::error!(core = id, error = %e, "a core failed; shutting down");
            failed = Some(e);
        }
        Err(_) => {}
    }
    let stopping = Instant::now();
    for mailbox in &hub.mailboxes {
        mailbox.shutdown();
    }
    for t in core_threads {
        let _ = t.join();
    }
    let cores_done = stopping.elapsed();
    let _ = persist.stop.set(Instant::now() + config.shutdown_timeout);
    hub.doorbell.ring_all();
    for t in persisters {
        let _ = t.join();
    }
    let left = hub.queued();
    drop(shared);
    query_threads.join();
    listener_stop.store(true, Ordering::Release);
    let _ = key_listener.join();
    if let Some(mut c) = cluster {
        c.stop();
    }
    tracing::info!(
        cores_ms = cores_done.as_millis() as u64,
        total_ms = stopping.elapsed().as_millis() as u64,
        left_in_rings = left,
        "shutdown complete"
    );
    match failed {
        Some(e) => anyhow::bail!("core failed: {e}"),
        None => Ok(()),
    }
}
