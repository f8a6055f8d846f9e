//! persist: the only code that writes events. Never reports an event committed before COMMIT
//! returns, and never drops an event without answering it. Imports `queue`, `hooks`, `db`,
//! `stats`, `shutdown` and `ids`.
//!
//! Each persister thread drains every core's ring into a `batch::Batch`, committed on rows,
//! bytes or age. `db::events::Writer` stores a batch in one transaction; ids are made before an
//! event is queued, so replaying a batch whose COMMIT outcome is unknown is safe (rows already
//! stored conflict with themselves and are reported committed). A batch holding events of
//! organizations with a webhook (`hooks`) queues their deliveries in the same statement and
//! hands them to delivery after the commit. `outcome` turns what was
//! written into each client's answer, sent home as one message per batch per core. While
//! PostgreSQL is away, events keep their deadlines: those that run out are answered
//! `Unavailable` and never stored later.

pub mod batch;
pub mod outcome;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use batch::BatchLimits;

use crate::db::events::{Deliveries, Writer, Written};
use crate::db::{classify, Failure, CONNECT_WARN_EVERY};
use crate::hooks::{Hooks, Job};
use crate::ids::{now_micros, OrgId};
use crate::queue::{Completion, Entry, Event, Hub, Outcome};
use crate::shutdown::Stop;
use crate::stats::{LogEvery, PersistStats, Stats};
use batch::Batch;

/// First and longest pause between attempts while PostgreSQL is unreachable or refusing.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Longest a persister sleeps with nothing to do before it looks around anyway (a safety net:
/// cores wake it on every push).
const IDLE_PARK: Duration = Duration::from_millis(100);
/// Refused rows are logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What every persister shares with the rest of the server.
pub struct Shared {
    pub hub: Arc<Hub>,
    /// Which organizations' events are pushed to webhooks, and delivery's hand-off.
    pub hooks: Arc<Hooks>,
    pub limits: BatchLimits,
    pub db: postgres::Config,
    pub stop: Arc<Stop>,
    pub stats: Arc<Stats>,
}

/// Counts a persister thread as running until it ends, however it ends.
struct Running(Arc<Stats>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.persisters_running.down();
    }
}

pub struct Persister {
    index: usize,
    shared: Arc<Shared>,
    writer: Option<Writer>,
    /// Entries taken off the rings while PostgreSQL was unreachable, oldest first. Holds at
    /// most as many entries as all rings together.
    backlog: VecDeque<Entry>,
    backoff: Duration,
    refusals: LogEvery,
    connect_failures: LogEvery,
}

impl Persister {
    pub fn spawn(index: usize, shared: Arc<Shared>) -> std::thread::JoinHandle<()> {
        shared.stats.persisters_running.up();
        std::thread::Builder::new()
            .name(format!("persister-{index}"))
            .spawn(move || {
                let _running = Running(shared.stats.clone());
                Persister {
                    index,
                    shared,
                    writer: None,
                    backlog: VecDeque::new(),
                    backoff: BACKOFF_MIN,
                    refusals: LogEvery::new(REFUSAL_LOG_EVERY),
                    connect_failures: LogEvery::new(CONNECT_WARN_EVERY),
                }
                .run();
            })
            .expect("spawning a persister thread")
    }

    fn my_stats(&self) -> &PersistStats {
        &self.shared.stats.persisters[self.index]
    }

    fn run(mut self) {
        self.shared.hub.doorbell.register(self.index);
        // Connect before the first event so that a misconfigured database shows at start-up.
        match Writer::open(&self.shared.db) {
            Ok(w) => self.set_writer(Some(w)),
            Err(e) => self.log_connect_failure(&e),
        }
        let mut batch = Batch::new(self.shared.limits.clone());
        batch.make_room();
        while self.gather(&mut batch) {
            self.persist(batch.take());
            batch.make_room();
        }
        self.set_writer(None);
        tracing::debug!(persister = self.index, "persister drained and stopped");
    }

    fn set_writer(&mut self, writer: Option<Writer>) {
        let before = self.writer.is_some();
        self.writer = writer;
        match (before, self.writer.is_some()) {
            (false, true) => self.shared.stats.persisters_connected.up(),
            (true, false) => self.shared.stats.persisters_connected.down(),
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

    /// Fills `batch` until it is due. Returns false once finishing and nothing is left.
    fn gather(&mut self, batch: &mut Batch) -> bool {
        let hub = self.shared.hub.clone();
        let stop = self.shared.stop.clone();
        // Wait for a first entry: the lead for any, a helper for a backlog (see
        // `queue::Doorbell`), so that a helper rung once does not go on splitting the lead's
        // batches after the backlog is gone.
        let wanted = |me: &Persister| {
            !me.backlog.is_empty()
                || stop.is_finishing()
                || hub.doorbell.wanted(me.index, || hub.queued_events())
        };
        loop {
            let now = Instant::now();
            if wanted(self) {
                if let Some(e) = self.take(now) {
                    batch.add(e, now);
                    break;
                }
            }
            if stop.is_finishing() && hub.is_empty() {
                return false;
            }
            hub.doorbell.will_sleep(self.index);
            // (`wanted` holds while finishing.)
            if !wanted(self) || (hub.is_empty() && !stop.is_finishing()) {
                std::thread::park_timeout(IDLE_PARK);
            }
            hub.doorbell.awake(self.index);
        }
        // Fill up until the batch is full or old enough. The rest of the linger is slept out
        // without ringing for the doorbell: a wake-up per push would cost each pushed event a
        // futex call and a context switch, and no ring fills within a linger.
        while !batch.is_full() {
            let now = Instant::now();
            if let Some(e) = self.take(now) {
                batch.add(e, now);
                continue;
            }
            let left = batch.linger_left(now);
            if left.is_zero() || stop.is_finishing() {
                break;
            }
            std::thread::park_timeout(left);
        }
        true
    }

    /// Commits `batch` and answers every event in it, however long PostgreSQL takes to come
    /// back; events whose deadline passes meanwhile are answered `Unavailable` and dropped.
    fn persist(&mut self, mut batch: Vec<Event>) {
        // After a failure whose outcome is unknown, rows may already be stored: from then on
        // only the ON CONFLICT path may write this batch.
        let mut replay = false;
        let mut push = Push::plan(&self.shared.hooks, &batch);
        loop {
            if batch.is_empty() {
                push.abandon(&self.shared.hooks);
                return;
            }
            if self.writer.is_none() {
                match Writer::open(&self.shared.db) {
                    Ok(w) => {
                        tracing::info!(persister = self.index, "persister connected");
                        self.connect_failures.reset();
                        self.set_writer(Some(w));
                        self.backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        self.log_connect_failure(&e);
                        self.pause(&mut batch, &mut push);
                        continue;
                    }
                }
            }
            let writer = self.writer.as_mut().expect("connected above");
            let started = Instant::now();
            match writer.write(&batch, replay, push.deliveries().as_ref()) {
                Ok(written) => {
                    self.backoff = BACKOFF_MIN;
                    push.hand_off(&self.shared.hooks, &written);
                    let outcomes: Vec<Outcome> = batch
                        .iter()
                        .zip(written)
                        .map(|(e, w)| outcome::of(&e.row, w))
                        .collect();
                    let now = Instant::now();
                    self.record_commit(now - started, &outcomes);
                    if let Some(oldest) = batch.iter().map(|e| e.enqueued_at).min() {
                        self.shared.stats.ingest_pulse.note(now - oldest);
                    }
                    self.answer(batch.into_iter().zip(outcomes));
                    return;
                }
                Err(e) => {
                    let closed = writer.is_closed();
                    match classify(&e, closed) {
                        Failure::Data(why) if batch.len() == 1 => {
                            push.abandon(&self.shared.hooks);
                            self.log_refusal(&why);
                            self.my_stats().refused.add(1);
                            self.answer(
                                batch
                                    .into_iter()
                                    .map(|ev| (ev, Outcome::Rejected(why.clone()))),
                            );
                            return;
                        }
                        Failure::Data(_) => {
                            push.abandon(&self.shared.hooks);
                            // Find the refused rows; the others still commit.
                            for part in batch::split_for_retry(batch) {
                                self.persist(part);
                            }
                            return;
                        }
                        Failure::Connection => {
                            replay = true;
                            tracing::warn!(
                                persister = self.index,
                                error = &e as &dyn std::error::Error,
                                "lost the PostgreSQL connection; will replay the batch"
                            );
                            self.set_writer(None);
                            self.my_stats().retries.add(1);
                            self.pause(&mut batch, &mut push);
                        }
                        Failure::Transient => {
                            replay = true;
                            tracing::warn!(
                                persister = self.index,
                                error = &e as &dyn std::error::Error,
                                "batch failed; retrying"
                            );
                            self.my_stats().retries.add(1);
                            self.pause(&mut batch, &mut push);
                        }
                    }
                }
            }
        }
    }

    /// Waits before the next attempt. Meanwhile events keep their deadlines: those in the held
    /// batch and in the rings that run out of time are answered now, so no waiting client is
    /// left past its budget and no event answered 503 is stored later.
    fn pause(&mut self, batch: &mut Vec<Event>, push: &mut Push) {
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let now = Instant::now();
        if self.shared.stop.finish_by().is_some_and(|by| now >= by) {
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
            push.abandon(&self.shared.hooks);
            self.expire(dropped);
            return;
        }
        let (kept, expired) = outcome::split_expired(std::mem::take(batch), now);
        *batch = kept;
        if !expired.is_empty() {
            // The plan named rows that will not be written now.
            push.abandon(&self.shared.hooks);
            *push = Push::plan(&self.shared.hooks, batch);
        }
        self.expire(expired);
        let backlog_max: usize = self.shared.hub.rings.iter().map(|r| r.capacity()).sum();
        for ring in &self.shared.hub.rings {
            while self.backlog.len() < backlog_max {
                let Some(e) = ring.pop() else { break };
                self.backlog.push_back(e);
            }
        }
        let (kept, expired) =
            outcome::split_expired_entries(std::mem::take(&mut self.backlog), now);
        self.backlog = kept;
        self.expire(expired);
    }

    /// A tenant sending refused rows must not fill the log.
    fn log_refusal(&mut self, why: &str) {
        if let Some(refused) = self.refusals.hit(Instant::now()) {
            tracing::info!(persister = self.index, refused, reason = %why, "PostgreSQL refused events");
        }
    }

    /// An outage must not fill the log either.
    fn log_connect_failure(&mut self, e: &postgres::Error) {
        if let Some(attempts) = self.connect_failures.hit(Instant::now()) {
            tracing::warn!(
                persister = self.index,
                failed_attempts = attempts,
                error = e as &dyn std::error::Error,
                "persister cannot connect"
            );
        }
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
        let mailboxes = &self.shared.hub.mailboxes;
        let mut per_core: Vec<Vec<Completion>> = (0..mailboxes.len()).map(|_| Vec::new()).collect();
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
                mailboxes[core].deliver(completions);
            }
        }
    }
}

/// The webhook deliveries a batch queues: the organizations whose events are pushed, and the
/// jobs this node takes in memory when its delivery engine has room (leased in the batch's own
/// transaction, handed over after the commit).
struct Push {
    orgs: Vec<OrgId>,
    /// Index in the batch of each job, and the job.
    jobs: Vec<(usize, Job)>,
    /// What `Hooks::reserve` took for `jobs`; `None`: the rows are left for any node's claim.
    reserved: Option<(usize, usize)>,
    lease_until: std::time::SystemTime,
}

impl Push {
    fn plan(hooks: &Hooks, batch: &[Event]) -> Push {
        let mut push = Push {
            orgs: hooks.pushing(batch.iter().map(|e| e.row.org)),
            jobs: Vec::new(),
            reserved: None,
            lease_until: std::time::SystemTime::UNIX_EPOCH,
        };
        if push.orgs.is_empty() {
            return push;
        }
        let lease_until = now_micros() + hooks.lease();
        push.lease_until = lease_until;
        // The generation of each organization's webhook as this node knows it: a job of a
        // webhook deleted meanwhile is not made (`delivery::run`).
        let generations: Vec<i64> = push
            .orgs
            .iter()
            .map(|&org| hooks.endpoint(org).map_or(-1, |e| e.generation))
            .collect();
        let jobs: Vec<(usize, Job)> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let generation = generations[push.orgs.binary_search(&e.row.org).ok()?];
                let r = &e.row;
                let job = Job {
                    org: r.org,
                    id: r.id,
                    kind: r.kind.clone(),
                    payload: r.payload.0.clone(),
                    printed: false,
                    dedup_id: r.dedup_id.clone(),
                    created_at: r.created_at,
                    keep_days: r.keep_days,
                    generation,
                    attempts: 0,
                    lease_until,
                };
                Some((i, job))
            })
            .collect();
        let bytes = jobs.iter().map(|(_, j)| j.bytes()).sum();
        if hooks.reserve(jobs.len(), bytes) {
            push.reserved = Some((jobs.len(), bytes));
            push.jobs = jobs;
        }
        push
    }

    fn deliveries(&self) -> Option<Deliveries<'_>> {
        (!self.orgs.is_empty()).then(|| Deliveries {
            orgs: &self.orgs,
            lease_until: self.reserved.map(|_| self.lease_until),
        })
    }

    /// After the commit: the jobs of rows this write stored go to delivery.
    fn hand_off(&mut self, hooks: &Hooks, written: &[Written]) {
        let Some(reserved) = self.reserved.take() else {
            return;
        };
        let jobs = std::mem::take(&mut self.jobs)
            .into_iter()
            .filter(|(i, _)| written[*i] == Written::Inserted)
            .map(|(_, j)| j)
            .collect();
        hooks.hand_off(jobs, reserved);
    }

    /// The batch will not be written as planned: give the memory back.
    fn abandon(&mut self, hooks: &Hooks) {
        if let Some((jobs, bytes)) = self.reserved.take() {
            hooks.release(jobs, bytes);
        }
        self.jobs.clear();
    }
}
