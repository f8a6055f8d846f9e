//! persist: the only code that writes events. Never reports an event committed before COMMIT
//! returns, and never drops an event without answering it.
//!
//! Each persister thread drains every core's ring into a batch, flushed on rows, bytes or age
//! (the age clock starts with the batch's first row). A batch is binary COPY into a
//! per-connection temp staging table, then one statement that moves the rows into `events`
//! (`DELETE … RETURNING` feeding `INSERT … ON CONFLICT DO NOTHING RETURNING id`): that
//! statement's transaction commits the whole batch. A batch that cannot conflict (no dedup_ids,
//! first attempt) is one COPY straight into `events`. Ids are made before the event is queued, so
//! replaying a batch whose COMMIT outcome is unknown is safe: rows already stored conflict with
//! themselves and are reported committed. Outcomes go back as one message per batch per core.

pub mod copy;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Statement};
use uuid::Uuid;

use crate::db;
use crate::ids::EventId;
use crate::queue::{Completion, Entry, Event, Hub, Outcome};
use crate::stats::PersistStats;

/// First and longest pause between attempts while PostgreSQL is unreachable or refusing.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Staged rows between truncations of the staging table. Truncating costs a fixed handful of
/// file operations (measured: ~10% of a backend's CPU when done at every commit, as
/// `ON COMMIT DELETE ROWS` does); the DELETE that moves rows out is cheap but leaves dead rows
/// that later batches scan. Truncating every ~1k rows keeps both small.
const STAGING_TRUNCATE_ROWS: usize = 1024;
/// Longest a persister sleeps with nothing to do before it looks around anyway (a safety net:
/// cores wake it on every push).
const IDLE_PARK: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct BatchLimits {
    pub rows_max: usize,
    pub bytes_max: usize,
    pub linger: Duration,
}

/// What persisters share with the rest of the server.
pub struct PersistShared {
    pub hub: Arc<Hub>,
    pub limits: BatchLimits,
    pub db: postgres::Config,
    /// Set once no core will push again: drain the rings, then exit. If PostgreSQL is still
    /// unreachable at this instant, what is left is dropped (logged) so shutdown stays bounded.
    pub stop: OnceLock<Instant>,
    /// Persisters holding a working connection.
    pub connected: AtomicUsize,
    /// Persister threads alive (`/health/ready`).
    pub running: AtomicUsize,
}

/// A connection with its staging table and statements ready.
struct Conn {
    client: Client,
    /// Dead rows left in the staging table since it was last truncated.
    staged_rows: usize,
    /// A COPY landed rows in staging that no INSERT has moved (the attempt failed after it).
    staging_dirty: bool,
    insert: Statement,
    lookup: Statement,
}

impl Conn {
    fn open(config: &postgres::Config) -> Result<Conn, postgres::Error> {
        let mut client = db::connect(config)?;
        client.batch_execute(
            "CREATE TEMP TABLE staging (
                 org_id uuid NOT NULL, id uuid NOT NULL, type text NOT NULL,
                 payload jsonb NOT NULL, dedup_id text, created_at timestamptz NOT NULL
             )",
        )?;
        // One statement empties staging into events; its implicit transaction is the batch's
        // commit. Sorted so that concurrent batches take dedup-index locks in one order (no
        // deadlock between persisters).
        let insert = client.prepare(
            "WITH moved AS (
                 DELETE FROM staging
                 RETURNING org_id, id, type, payload, dedup_id, created_at
             )
             INSERT INTO events (org_id, id, type, payload, dedup_id, created_at)
             SELECT org_id, id, type, payload, dedup_id, created_at FROM moved
             ORDER BY org_id, dedup_id, id
             ON CONFLICT DO NOTHING
             RETURNING id",
        )?;
        // For rows the INSERT skipped: the stored events holding their dedup_ids (their own
        // ids when a replayed batch had in fact committed). Runs after the commit, on
        // committed rows.
        let lookup = client.prepare(
            "SELECT e.org_id, e.dedup_id, e.id
             FROM unnest($1::uuid[], $2::text[]) AS k(org_id, dedup_id)
             JOIN events e ON e.org_id = k.org_id AND e.dedup_id = k.dedup_id",
        )?;
        Ok(Conn {
            client,
            staged_rows: 0,
            staging_dirty: false,
            insert,
            lookup,
        })
    }

    /// Stores the batch in one transaction; outcomes in batch order.
    ///
    /// A first attempt at a batch without dedup_ids cannot conflict (its ids are new), so it is
    /// one COPY straight into `events`: two round trips, plain inserts. Everything else, and
    /// every replay after a failure whose outcome is unknown, takes three: COPY into staging
    /// (a temp table: its own transaction writes no WAL and waits for no flush), COPY's end,
    /// and the INSERT … ON CONFLICT whose commit holds every row.
    fn commit(&mut self, batch: &[Event], replay: bool) -> Result<Vec<Outcome>, postgres::Error> {
        if !replay && batch.iter().all(|e| e.dedup_id.is_none()) {
            let copied = copy::write_rows(&mut self.client, copy::Table::Events, batch)?;
            assert_eq!(
                copied as usize,
                batch.len(),
                "COPY must take every batched row"
            );
            return Ok(vec![Outcome::Committed; batch.len()]);
        }
        if self.staging_dirty || self.staged_rows >= STAGING_TRUNCATE_ROWS {
            self.client.batch_execute("TRUNCATE staging")?;
            self.staging_dirty = false;
            self.staged_rows = 0;
        }
        self.staging_dirty = true;
        let copied = copy::write_rows(&mut self.client, copy::Table::Staging, batch)?;
        assert_eq!(
            copied as usize,
            batch.len(),
            "COPY must take every batched row"
        );
        let inserted: HashSet<Uuid> = self
            .client
            .query(&self.insert, &[])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.staging_dirty = false;
        self.staged_rows += batch.len();
        let mut holders: HashMap<(Uuid, String), Uuid> = HashMap::new();
        let skipped: Vec<&Event> = batch
            .iter()
            .filter(|e| e.dedup_id.is_some() && !inserted.contains(&e.id.0))
            .collect();
        if !skipped.is_empty() {
            let orgs: Vec<Uuid> = skipped.iter().map(|e| e.org.0).collect();
            let dedups: Vec<&str> = skipped
                .iter()
                .filter_map(|e| e.dedup_id.as_deref())
                .collect();
            for row in self.client.query(&self.lookup, &[&orgs, &dedups])? {
                holders.insert((row.get(0), row.get(1)), row.get(2));
            }
        }
        Ok(batch
            .iter()
            .map(|e| {
                if inserted.contains(&e.id.0) {
                    return Outcome::Committed;
                }
                let holder = e
                    .dedup_id
                    .as_deref()
                    .and_then(|d| holders.get(&(e.org.0, d.to_string())));
                match holder {
                    Some(&holder) if holder != e.id.0 => Outcome::Duplicate(EventId(holder)),
                    // Skipped and holding its own dedup_id, or skipped on its own id: an
                    // earlier attempt of this batch committed.
                    _ => Outcome::Committed,
                }
            })
            .collect())
    }
}

enum Failure {
    /// The connection is gone: reconnect, then replay.
    Connection,
    /// Worth retrying on the same connection (deadlock, serialization, resources).
    Transient,
    /// PostgreSQL refused the data itself: some row of the batch is bad.
    Data(String),
}

fn classify(e: &postgres::Error, client_closed: bool) -> Failure {
    if client_closed {
        return Failure::Connection;
    }
    let Some(db) = e.as_db_error() else {
        return Failure::Connection;
    };
    let code = db.code();
    let class = &code.code()[..2];
    if code == &SqlState::T_R_DEADLOCK_DETECTED || code == &SqlState::T_R_SERIALIZATION_FAILURE {
        return Failure::Transient;
    }
    match class {
        // data exception, integrity violation, program limit (say, an index row too large)
        "22" | "23" | "54" => Failure::Data(db.message().to_string()),
        "08" | "57" => Failure::Connection,
        _ => Failure::Transient,
    }
}

/// Counts a persister thread as running until it ends, however it ends.
struct Running(Arc<PersistShared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Persister {
    index: usize,
    shared: Arc<PersistShared>,
    stats: Arc<crate::stats::Stats>,
    conn: Option<Conn>,
    /// Entries taken off the rings while PostgreSQL was unreachable, oldest first. Holds at
    /// most as many entries as all rings together.
    backlog: VecDeque<Entry>,
    backoff: Duration,
}

impl Persister {
    pub fn spawn(
        index: usize,
        shared: Arc<PersistShared>,
        stats: Arc<crate::stats::Stats>,
    ) -> std::thread::JoinHandle<()> {
        shared.running.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("persister-{index}"))
            .spawn(move || {
                let _running = Running(shared.clone());
                Persister {
                    index,
                    shared,
                    stats,
                    conn: None,
                    backlog: VecDeque::new(),
                    backoff: BACKOFF_MIN,
                }
                .run()
            })
            .expect("spawning a persister thread")
    }

    fn my_stats(&self) -> &PersistStats {
        &self.stats.persisters[self.index]
    }

    fn run(mut self) {
        self.shared.hub.doorbell.register(self.index);
        // Connect before the first event so that a misconfigured database shows at start-up.
        match Conn::open(&self.shared.db) {
            Ok(c) => self.set_conn(Some(c)),
            Err(e) => {
                tracing::warn!(persister = self.index, error = %e, "persister cannot connect yet")
            }
        }
        let mut batch = Vec::with_capacity(self.shared.limits.rows_max);
        while self.gather(&mut batch) {
            self.persist(std::mem::take(&mut batch));
            batch.reserve(self.shared.limits.rows_max);
        }
        self.set_conn(None);
        tracing::debug!(persister = self.index, "persister drained and stopped");
    }

    fn set_conn(&mut self, conn: Option<Conn>) {
        let before = self.conn.is_some();
        self.conn = conn;
        match (before, self.conn.is_some()) {
            (false, true) => {
                self.shared.connected.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.shared.connected.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Takes one entry from the backlog or any ring, answering those past their deadline.
    fn take(&mut self, now: Instant) -> Option<Entry> {
        loop {
            let entry = match self.backlog.pop_front() {
                Some(e) => e,
                None => self.shared.hub.rings.iter().find_map(|r| r.pop())?,
            };
            if entry.head().expired(now) {
                self.expire(entry.into_events());
                continue;
            }
            let waited = now.saturating_duration_since(entry.head().enqueued_at);
            self.my_stats().queue_wait_us.record_duration(waited);
            return Some(entry);
        }
    }

    /// Fills `batch`. Returns false once stopping and nothing is left. A group (one batch
    /// request) is never split, so a batch may pass `rows_max` by less than a group.
    fn gather(&mut self, batch: &mut Vec<Event>) -> bool {
        let limits = self.shared.limits.clone();
        let hub = self.shared.hub.clone();
        // Wait for a first entry.
        loop {
            if let Some(e) = self.take(Instant::now()) {
                batch.extend(e.into_events());
                break;
            }
            if self.shared.stop.get().is_some() && hub.is_empty() {
                return false;
            }
            hub.doorbell.will_sleep(self.index);
            if hub.is_empty() && self.shared.stop.get().is_none() {
                std::thread::park_timeout(IDLE_PARK);
            }
            hub.doorbell.awake(self.index);
        }
        // Fill up until rows, bytes or age say flush. The rest of the linger is slept out
        // without ringing for the doorbell: a wake-up per push would cost each pushed event a
        // futex call and a context switch, and no ring fills within a linger.
        let first = Instant::now();
        let mut bytes: usize = batch.iter().map(|e| e.payload.len()).sum();
        while batch.len() < limits.rows_max && bytes < limits.bytes_max {
            let now = Instant::now();
            if let Some(e) = self.take(now) {
                bytes += e.payload_bytes();
                batch.extend(e.into_events());
                continue;
            }
            let waited = now.duration_since(first);
            if waited >= limits.linger || self.shared.stop.get().is_some() {
                break;
            }
            std::thread::park_timeout(limits.linger - waited);
        }
        true
    }

    /// Commits `batch` and answers every event in it, however long PostgreSQL takes to come
    /// back; events whose deadline passes meanwhile are answered `Unavailable` and dropped.
    fn persist(&mut self, mut batch: Vec<Event>) {
        // After a failure whose outcome is unknown, rows may already be stored: from then on
        // only the ON CONFLICT path may write this batch.
        let mut replay = false;
        loop {
            if batch.is_empty() {
                return;
            }
            if self.conn.is_none() {
                match Conn::open(&self.shared.db) {
                    Ok(c) => {
                        tracing::info!(persister = self.index, "persister connected");
                        self.set_conn(Some(c));
                        self.backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        tracing::warn!(persister = self.index, error = %e, "persister cannot connect");
                        self.pause(&mut batch);
                        continue;
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            let started = Instant::now();
            match conn.commit(&batch, replay) {
                Ok(outcomes) => {
                    self.backoff = BACKOFF_MIN;
                    self.record_commit(started.elapsed(), &outcomes);
                    self.answer(batch.into_iter().zip(outcomes));
                    return;
                }
                Err(e) => {
                    let closed = conn.client.is_closed();
                    match classify(&e, closed) {
                        Failure::Data(why) if batch.len() == 1 => {
                            tracing::info!(persister = self.index, reason = %why, "PostgreSQL refused an event");
                            self.my_stats().refused.add(1);
                            self.answer(
                                batch
                                    .into_iter()
                                    .map(|ev| (ev, Outcome::Rejected(why.clone()))),
                            );
                            return;
                        }
                        Failure::Data(_) => {
                            // Find the bad rows by halves; the good ones still commit.
                            let right = batch.split_off(batch.len() / 2);
                            self.persist(batch);
                            self.persist(right);
                            return;
                        }
                        Failure::Connection => {
                            replay = true;
                            tracing::warn!(persister = self.index, error = %e, "lost the PostgreSQL connection; will replay the batch");
                            self.set_conn(None);
                            self.my_stats().retries.add(1);
                            self.pause(&mut batch);
                        }
                        Failure::Transient => {
                            replay = true;
                            tracing::warn!(persister = self.index, error = %e, "batch failed; retrying");
                            self.my_stats().retries.add(1);
                            self.pause(&mut batch);
                        }
                    }
                }
            }
        }
    }

    /// Waits before the next attempt. Meanwhile events keep their deadlines: those in the held
    /// batch and in the rings that run out of time are answered now, so no waiting client is
    /// left past its budget and no event answered 503 is stored later.
    fn pause(&mut self, batch: &mut Vec<Event>) {
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let now = Instant::now();
        if self.shared.stop.get().is_some_and(|by| now >= *by) {
            let mut dropped = std::mem::take(batch);
            dropped.extend(self.backlog.drain(..).flat_map(Entry::into_events));
            for ring in &self.shared.hub.rings {
                dropped.extend(std::iter::from_fn(|| ring.pop()).flat_map(Entry::into_events));
            }
            tracing::error!(
                persister = self.index,
                events = dropped.len(),
                "shutdown budget spent with PostgreSQL unreachable: dropping queued events"
            );
            self.expire(dropped);
            return;
        }
        let (expired, kept): (Vec<Event>, Vec<Event>) = std::mem::take(batch)
            .into_iter()
            .partition(|e| e.expired(now));
        *batch = kept;
        self.expire(expired);
        let backlog_max: usize = self.shared.hub.rings.iter().map(|r| r.capacity()).sum();
        for ring in &self.shared.hub.rings {
            while self.backlog.len() < backlog_max {
                let Some(e) = ring.pop() else { break };
                self.backlog.push_back(e);
            }
        }
        let (expired, kept): (VecDeque<Entry>, VecDeque<Entry>) = std::mem::take(&mut self.backlog)
            .into_iter()
            .partition(|e| e.head().expired(now));
        self.backlog = kept;
        self.expire(expired.into_iter().flat_map(Entry::into_events).collect());
    }

    fn expire(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.my_stats().expired.add(events.len() as u64);
        self.answer(events.into_iter().map(|e| (e, Outcome::Unavailable)));
    }

    fn record_commit(&self, took: Duration, outcomes: &[Outcome]) {
        let s = self.my_stats();
        s.commit_us.record_duration(took);
        s.batch_rows.record(outcomes.len() as u64);
        s.batches.add(1);
        let dups = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Duplicate(_)))
            .count() as u64;
        s.duplicates.add(dups);
        s.committed.add(outcomes.len() as u64 - dups);
    }

    /// Sends outcomes home: one message per core that has waiters in this batch.
    fn answer(&self, outcomes: impl Iterator<Item = (Event, Outcome)>) {
        let mut per_core: Vec<Vec<Completion>> = (0..self.shared.hub.mailboxes.len())
            .map(|_| Vec::new())
            .collect();
        for (event, outcome) in outcomes {
            if let Some(w) = event.waiter {
                per_core[w.core as usize].push(Completion {
                    slot: w.slot,
                    outcome,
                });
            }
        }
        for (core, completions) in per_core.into_iter().enumerate() {
            if !completions.is_empty() {
                self.shared.hub.mailboxes[core].deliver(completions);
            }
        }
    }
}
