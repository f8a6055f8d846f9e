//! delivery: pushes committed events to their organizations' webhooks, at least once. Imports
//! `hooks`, `db`, `egress`, `stats`, `jsonb_text` and `ids`.
//!
//! The database is the queue (`deliveries`, one row per event still to push, leased by the node
//! working on it). Two threads per node, both off the cores:
//!
//! - the sender (`delivery`, an async runtime of its own) makes attempts: jobs arrive from
//!   persisters (freshly committed events, leased in their own transaction) and from claims;
//!   each endpoint has its own queue and at most `concurrency` attempts in flight, so a slow
//!   endpoint holds only its own jobs.
//! - the store (`delivery-store`) records outcomes in batches (attempts, rows moved on, events
//!   marked), and claims due rows from the table (retries, and anything a dead node left).
//!   The node's view of endpoints is `hooks`', kept by its listener.
//!
//! Memory is bounded by `hooks::MemoryLimits`: a job holds its share from its hand-off or claim
//! until its outcome is recorded. What does not fit stays in the table until there is room.
//!
//! - `breaker`: an endpoint that keeps failing rests, then is probed.
//! - `send`: one attempt over HTTP (address checks, signature, body, answer classes).
//! - `sign`: Standard Webhooks signatures.
//! - `schedule`: retry delays, jitter, `Retry-After`.

mod breaker;
mod governor;
mod schedule;
mod send;
mod sign;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use breaker::{Allowed, Breaker};
use governor::Governor;
pub use schedule::Schedule;

use crate::db::deliveries::{self, Attempt, Claimed, Next, Outcome, Recorder};
use crate::db::{classify, Failure, Link, CONNECT_WARN_EVERY};
use crate::hooks::{Hooks, Intake, Job};
use crate::ids::{now_micros, EventId, OrgId};
use crate::stats::{DeliveryStats, LogEvery, Stats};

/// How often due rows are claimed when the last claim found fewer than it asked for.
const CLAIM_EVERY: Duration = Duration::from_millis(250);
/// Rows one claim takes at most.
const CLAIM_ROWS_MAX: usize = 500;
/// How often the backlog in the table is counted for the stats, and up to how many rows.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
const BACKLOG_COUNT_MAX: i64 = 10_000_000;
/// Outcomes wait at most this long to be recorded with others, unless `RECORD_BATCH` of them
/// are ready sooner. Each batch is a transaction of up to four statements; recording them
/// by the hundred rather than by the handful costs PostgreSQL less per outcome, and the
/// store thread and its backend fewer wake-ups.
const RECORD_LINGER: Duration = Duration::from_millis(20);
const RECORD_BATCH: usize = 256;
/// Longest pause between attempts to record outcomes while PostgreSQL is away.
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At shutdown, outcomes of attempts that ended by the deadline get this long after it to be
/// recorded; what is still unrecorded then is left to its leases.
const RECORD_AFTER_STOP: Duration = Duration::from_secs(2);
/// An endpoint with this many jobs per allowed attempt in flight queued on this node takes no
/// more from claims.
const QUEUED_PER_SLOT: usize = 4;

/// How delivery runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: Schedule,
    /// Longest an attempt may take, connection, request and answer together.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts in flight to one endpoint from one node.
    pub concurrency: usize,
    /// Deliver to private, loopback and link-local addresses (tests, private networks).
    pub allow_private: bool,
    /// Niceness of delivery's threads and its PostgreSQL backend.
    pub nice: i32,
    /// Start attempts at a lowered rate while ingest is slower than usual (`governor`).
    pub yield_to_ingest: bool,
}

/// Lowers the calling thread's priority to niceness `nice` (on Linux, a thread's own).
fn lower_priority(nice: i32) {
    if nice > 0 {
        if let Err(e) = rustix::process::setpriority_process(None, nice) {
            tracing::warn!(nice, error = %e, "could not lower delivery's priority");
        }
    }
}

/// Sets up the store's PostgreSQL session: its backend at delivery's priority (a server on
/// this host that the server's user may renice; elsewhere that part fails quietly), and
/// commits that do not wait for their WAL flush. Losing the last outcomes in a crash of the
/// database host only means those deliveries are made again (the rows they would have
/// removed are still there): at least once holds, and the store does not wait for an fsync
/// per batch of outcomes.
fn set_up_session(client: &mut postgres::Client, nice: i32) {
    if let Err(e) = client.batch_execute("SET synchronous_commit = off") {
        tracing::debug!(error = %e, "could not set up the delivery session");
    }
    if nice == 0 {
        return;
    }
    let Ok(row) = client.query_one("SELECT pg_backend_pid()", &[]) else {
        return;
    };
    let pid = rustix::process::Pid::from_raw(row.get::<_, i32>(0));
    if let Err(e) = rustix::process::setpriority_process(pid, nice) {
        tracing::debug!(error = %e, "could not lower the delivery session's priority");
    }
}

/// How long a node holds a row it works on before any node may take it again. A job starts its
/// attempt only with the timeout and a margin of its lease left (else it is given back), so a
/// live node's lease never runs out under an attempt; the rest is the time a job may wait in
/// memory.
pub fn lease_for(timeout: Duration) -> Duration {
    timeout * 4
}

/// A finished job: its outcome, and the memory it gives back once recorded.
struct Done {
    outcome: Outcome,
    bytes: usize,
    /// The endpoint answered 410: disable it.
    gone: bool,
}

enum Msg {
    Jobs(Vec<Job>),
    /// An attempt ended: whether it delivered, `None` when none was made.
    Finished(OrgId, EventId, Option<bool>),
}

/// The sender's intake, as persisters and the store see it.
struct Inbox {
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
}

impl Intake for Inbox {
    fn take(&self, jobs: Vec<Job>) {
        // The sender outlives every hand-off but the last ones of a shutdown; jobs it never
        // takes keep their leases, which run out.
        let _ = self.tx.send(Msg::Jobs(jobs));
    }
}

/// State the two threads share.
struct Shared {
    settings: Settings,
    hooks: Arc<Hooks>,
    stats: Arc<DeliveryStats>,
    /// The node's stats, where the governor reads how ingest is doing.
    node: Arc<Stats>,
    /// Endpoints with enough queued on this node: claims skip them.
    busy: Mutex<HashSet<OrgId>>,
    done: Mutex<Finished>,
    /// Endpoints whose breaker opened (resting until then) or closed (`None`), for the store
    /// to tell every node.
    rests: Mutex<Vec<(OrgId, Option<SystemTime>)>>,
    stopping: AtomicBool,
    /// When stopping: attempts in flight past this instant are cut off.
    deadline: Mutex<Option<Instant>>,
    /// The sender has ended: nothing more will be done.
    sender_ended: AtomicBool,
}

/// The running engine.
pub struct Engine {
    shared: Arc<Shared>,
    inbox: Arc<Inbox>,
    sender: JoinHandle<()>,
    store: JoinHandle<()>,
}

impl Engine {
    pub fn spawn(
        settings: Settings,
        hooks: Arc<Hooks>,
        db: postgres::Config,
        node: Arc<Stats>,
    ) -> Engine {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            settings,
            hooks: hooks.clone(),
            stats: node.delivery.clone(),
            node,
            busy: Mutex::default(),
            done: Mutex::default(),
            rests: Mutex::default(),
            stopping: AtomicBool::new(false),
            deadline: Mutex::new(None),
            sender_ended: AtomicBool::new(false),
        });
        let store = {
            let (shared, tx) = (shared.clone(), tx.clone());
            std::thread::Builder::new()
                .name("delivery-store".into())
                .spawn(move || {
                    lower_priority(shared.settings.nice);
                    Store::new(shared, db, tx).run();
                })
                .expect("spawning the delivery store")
        };
        let sender = {
            let shared = shared.clone();
            let store_thread = store.thread().clone();
            let finished = tx.clone();
            std::thread::Builder::new()
                .name("delivery".into())
                .spawn(move || {
                    lower_priority(shared.settings.nice);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("building the delivery runtime");
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, sender(shared.clone(), rx, finished, store_thread));
                    shared.sender_ended.store(true, Ordering::Release);
                })
                .expect("spawning the delivery sender")
        };
        let inbox = Arc::new(Inbox { tx });
        hooks.connect(inbox.clone());
        Engine {
            shared,
            inbox,
            sender,
            store,
        }
    }

    /// Stops taking jobs, lets attempts in flight finish until `by`, gives back the leases of
    /// jobs not made, records every outcome, and ends both threads.
    pub fn stop(self, by: Instant) {
        self.shared.hooks.disconnect();
        *self.shared.deadline.lock().expect("deadline lock") = Some(by);
        self.shared.stopping.store(true, Ordering::Release);
        // Wakes the sender, which sees `stopping`.
        let _ = self.inbox.tx.send(Msg::Jobs(Vec::new()));
        let _ = self.sender.join();
        self.store.thread().unpark();
        let _ = self.store.join();
    }
}

/// Finished jobs waiting for the store, and since when the oldest of them waits.
#[derive(Default)]
struct Finished {
    list: Vec<Done>,
    since: Option<Instant>,
}

impl Finished {
    /// All of them, if the store should record them now; else how long until it should.
    fn take_if_due(&mut self, now: Instant, force: bool) -> Result<Vec<Done>, Duration> {
        let Some(since) = self.since else {
            return Ok(Vec::new());
        };
        let waited = now.saturating_duration_since(since);
        if force || waited >= RECORD_LINGER || self.list.len() >= RECORD_BATCH {
            self.since = None;
            return Ok(std::mem::take(&mut self.list));
        }
        Err(RECORD_LINGER - waited)
    }
}

/// One endpoint's jobs on this node.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    in_flight: usize,
}

/// How often the sender looks for endpoints whose rest is over.
const BREAKER_TICK: Duration = Duration::from_millis(100);

/// What woke the sender.
enum Wake {
    Msg(Msg),
    /// Endpoints whose rest may be over.
    Breakers,
    /// The governor's tick.
    Governor,
    /// The governor's limit lets an attempt start again.
    Room,
}

/// The sender: one queue and one breaker per endpoint, attempts as local tasks, started no
/// faster than the governor allows.
async fn sender(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Msg>,
    finished: tokio::sync::mpsc::UnboundedSender<Msg>,
    store: std::thread::Thread,
) {
    let s = &shared.settings;
    let client = send::client(s.connect_timeout, s.timeout, s.concurrency, s.allow_private);
    let mut queues: HashMap<OrgId, Queue> = HashMap::new();
    // Each endpoint's breaker, with the URL it judges: a new URL starts afresh.
    let mut breakers: HashMap<OrgId, (Arc<str>, Breaker)> = HashMap::new();
    // Jobs in flight, each as it is given back if a shutdown cannot wait for it.
    let mut flying: HashMap<(OrgId, EventId), Done> = HashMap::new();
    let mut tick = tokio::time::interval(BREAKER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut governor = Governor::new(Instant::now());
    let mut spare = governor::Spare::default();
    let mut governor_tick = tokio::time::interval(governor::TICK);
    governor_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut governed_since = Instant::now();
    // Attempts started since the governor's last tick.
    let mut started: u64 = 0;
    // Endpoints with jobs the governor's limit held back, oldest first.
    let mut held_back: Vec<OrgId> = Vec::new();
    loop {
        let deadline = *shared.deadline.lock().expect("deadline lock");
        let until = deadline.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            tokio::time::Instant::from_std,
        );
        let room_at = tokio::time::Instant::from_std(governor.next_start(Instant::now()));
        let wake = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Wake::Msg(m),
                None => break,
            },
            _ = tick.tick(), if !breakers.is_empty() => Wake::Breakers,
            // Only while there is something to govern: an idle node does not tick.
            _ = governor_tick.tick(), if s.yield_to_ingest
                && (!queues.is_empty() || governor.limit().is_some()) => Wake::Governor,
            () = tokio::time::sleep_until(room_at), if !held_back.is_empty() => Wake::Room,
            () = tokio::time::sleep_until(until), if deadline.is_some() => break,
        };
        let stopping = shared.stopping.load(Ordering::Acquire);
        let now = Instant::now();
        let orgs: Vec<OrgId> = match wake {
            Wake::Msg(Msg::Jobs(jobs)) => {
                let mut orgs = Vec::new();
                for job in jobs {
                    if !orgs.contains(&job.org) {
                        orgs.push(job.org);
                    }
                    queues.entry(job.org).or_default().jobs.push_back(job);
                }
                orgs
            }
            Wake::Msg(Msg::Finished(org, id, result)) => {
                flying.remove(&(org, id));
                if let Some(q) = queues.get_mut(&org) {
                    q.in_flight -= 1;
                }
                if let Some(delivered) = result {
                    let endpoint = shared.hooks.endpoint(org);
                    forget_other_url(&mut breakers, org, endpoint.as_deref());
                    let (_, b) = breakers.entry(org).or_insert_with(|| {
                        let url = endpoint.map_or_else(|| "".into(), |e| e.url.as_str().into());
                        (url, Breaker::default())
                    });
                    let was_open = !matches!(b.allowed(now), Allowed::All);
                    if b.record(delivered, now) {
                        shared.stats.breaker_opened.add(1);
                        if let Allowed::Rest(until) = b.allowed(now) {
                            tracing::info!(%org, rest_s = (until - now).as_secs(), "webhook endpoint keeps failing: resting it");
                            let at = SystemTime::now() + (until - now);
                            shared
                                .rests
                                .lock()
                                .expect("rests lock")
                                .push((org, Some(at)));
                        }
                    } else if was_open && delivered {
                        shared.rests.lock().expect("rests lock").push((org, None));
                    }
                    if b.is_idle() {
                        breakers.remove(&org);
                    }
                }
                vec![org]
            }
            Wake::Breakers => breakers
                .iter()
                .filter(|(_, (_, b))| b.allowed(now) == Allowed::Probe)
                .map(|(o, _)| *o)
                .collect(),
            Wake::Governor => {
                let ingest = shared.node.ingest_pulse.take();
                let elapsed = now.saturating_duration_since(governed_since);
                governed_since = now;
                if governor.tick(ingest, spare.read(), std::mem::take(&mut started), elapsed) {
                    shared.stats.yields.add(1);
                }
                shared
                    .hooks
                    .give_way(governor.limit().map_or(0, |l| l.ceil() as u64));
                // The limit may have grown or gone.
                std::mem::take(&mut held_back)
            }
            Wake::Room => std::mem::take(&mut held_back),
        };
        if stopping {
            // Jobs not started go back to the table, due at once.
            let left: Vec<Job> = queues.values_mut().flat_map(|q| q.jobs.drain(..)).collect();
            finish(&shared, left.iter().map(|j| released(j, None)), &store);
            if flying.is_empty() {
                break;
            }
            continue;
        }
        for org in orgs {
            let q = queues.entry(org).or_default();
            // This node's breaker (of the URL it judged: another URL starts afresh), or a rest
            // another node's breaker set.
            let endpoint = shared.hooks.endpoint(org);
            forget_other_url(&mut breakers, org, endpoint.as_deref());
            let local = breakers
                .get(&org)
                .map_or(Allowed::All, |(_, b)| b.allowed(now));
            let shared_rest = endpoint
                .and_then(|e| e.rest_until)
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .map(|left| Allowed::Rest(now + left));
            let allowed = match (local, shared_rest) {
                (Allowed::All, Some(rest)) => rest,
                (local, _) => local,
            };
            let cap = match allowed {
                Allowed::All => s.concurrency,
                Allowed::Probe => 1,
                Allowed::Rest(until) => {
                    // Resting: its jobs wait in the table until the rest is over, their
                    // attempts not spent.
                    let at = SystemTime::now() + until.saturating_duration_since(now);
                    let resting: Vec<Job> = q.jobs.drain(..).collect();
                    finish(
                        &shared,
                        resting.iter().map(|j| released(j, Some(at))),
                        &store,
                    );
                    0
                }
            };
            while q.in_flight < cap {
                let Some(next) = q.jobs.front() else { break };
                if lease_too_short(next, s.timeout) {
                    // Given back without an attempt, and without spending the governor's room.
                    let job = q.jobs.pop_front().expect("front exists");
                    finish(&shared, std::iter::once(released(&job, None)), &store);
                    continue;
                }
                if s.yield_to_ingest && !governor.take(now) {
                    if !held_back.contains(&org) {
                        held_back.push(org);
                    }
                    break;
                }
                let Some(job) = q.jobs.pop_front() else { break };
                started += 1;
                q.in_flight += 1;
                flying.insert((job.org, job.id), released(&job, None));
                let (shared, client, finished, store) = (
                    shared.clone(),
                    client.clone(),
                    finished.clone(),
                    store.clone(),
                );
                tokio::task::spawn_local(async move {
                    let (org, id) = (job.org, job.id);
                    let done = run(&shared, &client, job).await;
                    let result = done
                        .outcome
                        .attempt
                        .as_ref()
                        .map(|_| done.outcome.next == Next::Delivered);
                    finish(&shared, std::iter::once(done), &store);
                    let _ = finished.send(Msg::Finished(org, id, result));
                });
            }
            // A probing endpoint takes claims (they bring the probe); a resting one does not.
            let busy = q.jobs.len() >= s.concurrency * QUEUED_PER_SLOT
                || matches!(allowed, Allowed::Rest(_));
            if q.jobs.is_empty() && q.in_flight == 0 {
                queues.remove(&org);
            }
            let mut set = shared.busy.lock().expect("busy lock");
            if busy {
                set.insert(org);
            } else {
                set.remove(&org);
            }
        }
    }
    // Out of time: attempts still in flight are dropped with the runtime. Whether their
    // receivers got them is unknown, so they count as not made: their leases are given back
    // and the deliveries made again (with the same `webhook-id`).
    let left: Vec<Job> = queues.values_mut().flat_map(|q| q.jobs.drain(..)).collect();
    finish(
        &shared,
        flying
            .into_values()
            .chain(left.iter().map(|j| released(j, None))),
        &store,
    );
}

/// Forgets `org`'s breaker if it judged another URL than `endpoint`'s: a new URL starts afresh.
fn forget_other_url(
    breakers: &mut HashMap<OrgId, (Arc<str>, Breaker)>,
    org: OrgId,
    endpoint: Option<&crate::hooks::Endpoint>,
) {
    let other = breakers
        .get(&org)
        .zip(endpoint)
        .is_some_and(|((judged, _), e)| **judged != *e.url);
    if other {
        breakers.remove(&org);
    }
}

/// Hands finished jobs to the store, waking it for the first of a batch (it then sleeps out
/// the linger) and when a batch is full.
fn finish(shared: &Shared, done: impl Iterator<Item = Done>, store: &std::thread::Thread) {
    let mut f = shared.done.lock().expect("done lock");
    let before = f.list.len();
    f.list.extend(done);
    let after = f.list.len();
    let first = before == 0 && after > 0;
    if first {
        f.since = Some(Instant::now());
    }
    if first || (before < RECORD_BATCH && after >= RECORD_BATCH) {
        store.unpark();
    }
}

impl Done {
    /// `job` finished: `attempts` made in all, what follows, the attempt made now if any.
    fn of(job: &Job, attempts: u16, next: Next, attempt: Option<Attempt>) -> Done {
        Done {
            bytes: job.bytes(),
            outcome: Outcome {
                org: job.org,
                id: job.id,
                lease_until: job.lease_until,
                keep_days: job.keep_days,
                attempts: attempts as i16,
                next,
                attempt,
            },
            gone: false,
        }
    }
}

/// A job given back unmade, its attempts not spent: its lease ends, the row due at once, or
/// at `due`.
fn released(job: &Job, due: Option<SystemTime>) -> Done {
    Done::of(
        job,
        job.attempts,
        due.map_or(Next::Release, Next::Retry),
        None,
    )
}

/// One job: the attempt, if it can be made, and what follows from it.
async fn run(shared: &Shared, client: &reqwest::Client, job: Job) -> Done {
    let s = &shared.settings;
    let Some(endpoint) = shared.hooks.endpoint(job.org) else {
        // Not in this node's view: disabled since the job was queued (its row waits at
        // `infinity`, which `disable` set), deleted (its row is gone), or configured on another
        // node a moment ago and not yet read here (its row is due again at once).
        return released(&job, None);
    };
    if endpoint.generation != job.generation {
        // Queued for a webhook deleted since: never made, whatever webhook is set now (its
        // row, if any, is of the old generation, which no claim takes).
        return released(&job, None);
    }
    if lease_too_short(&job, s.timeout) {
        return released(&job, None);
    }
    shared.stats.attempted.add(1);
    if job.attempts == 0 {
        let waited = SystemTime::now()
            .duration_since(job.created_at)
            .unwrap_or_default();
        shared.stats.first_attempt_us.record_duration(waited);
    }
    let sent = send::attempt(client, &endpoint, &job, s.allow_private).await;
    shared
        .stats
        .attempt_us
        .record(sent.attempt.latency_us.max(0) as u64);
    let made = job.attempts + 1;
    let (next, gone) = match sent.kind {
        send::Answer::Delivered => {
            shared.stats.delivered.add(1);
            let took = SystemTime::now()
                .duration_since(job.created_at)
                .unwrap_or_default();
            shared.stats.end_to_end_us.record_duration(took);
            (Next::Delivered, false)
        }
        // The store disables the endpoint, which makes every row of it wait.
        send::Answer::Gone => (Next::Release, true),
        send::Answer::Failed { retry_after } => {
            match s
                .schedule
                .next_delay(made as usize, retry_after, unit_random())
            {
                Some(wait) => {
                    shared.stats.retrying.add(1);
                    (Next::Retry(now_micros() + wait), false)
                }
                None => {
                    shared.stats.failed.add(1);
                    (Next::Failed, false)
                }
            }
        }
    };
    Done {
        gone,
        ..Done::of(&job, made, next, Some(sent.attempt))
    }
}

/// Whether too little of `job`'s lease is left to start an attempt: twice the timeout, the
/// attempt and as much again for recording its outcome.
fn lease_too_short(job: &Job, timeout: Duration) -> bool {
    let left = job
        .lease_until
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    left < timeout * 2
}

fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source failed");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The store's connection (reopened with backoff when lost, set up by `set_up_session`), and
/// the statements prepared on it.
struct Session {
    link: Link,
    db: postgres::Config,
    nice: i32,
    recorder: Option<Recorder>,
}

impl Session {
    /// The connection, set up when new (which drops the statements prepared on the old one),
    /// and the slot of the recorder prepared on it.
    fn parts(&mut self, now: Instant) -> Option<(&mut postgres::Client, &mut Option<Recorder>)> {
        let (client, fresh) = self.link.get_fresh(&self.db, now)?;
        if fresh {
            set_up_session(client, self.nice);
            self.recorder = None;
        }
        Some((client, &mut self.recorder))
    }

    fn client(&mut self, now: Instant) -> Option<&mut postgres::Client> {
        self.parts(now).map(|(client, _)| client)
    }

    /// The connection and the recorder prepared on it; `Ok(None)` while PostgreSQL is away.
    fn recording(
        &mut self,
        now: Instant,
    ) -> Result<Option<(&mut postgres::Client, &Recorder)>, postgres::Error> {
        let Some((client, slot)) = self.parts(now) else {
            return Ok(None);
        };
        if slot.is_none() {
            *slot = Some(Recorder::prepare(client)?);
        }
        let slot: &Option<Recorder> = slot;
        Ok(slot.as_ref().map(|r| (client, r)))
    }
}

/// The store thread: records outcomes, claims due rows, counts the backlog.
struct Store {
    shared: Arc<Shared>,
    session: Session,
    to_sender: tokio::sync::mpsc::UnboundedSender<Msg>,
    /// Outcomes taken from the sender, not yet recorded (PostgreSQL may be away).
    pending: Vec<Done>,
    /// After a lost connection: no recording before then, and the next backoff.
    retry_at: Instant,
    retry_backoff: Duration,
    record_failures: LogEvery,
    next_claim: Instant,
    next_count: Instant,
}

impl Store {
    fn new(
        shared: Arc<Shared>,
        db: postgres::Config,
        to_sender: tokio::sync::mpsc::UnboundedSender<Msg>,
    ) -> Store {
        let now = Instant::now();
        let nice = shared.settings.nice;
        Store {
            shared,
            session: Session {
                link: Link::new("delivery store"),
                db,
                nice,
                recorder: None,
            },
            to_sender,
            pending: Vec::new(),
            retry_at: now,
            retry_backoff: RECORD_LINGER,
            record_failures: LogEvery::new(CONNECT_WARN_EVERY),
            next_claim: now,
            next_count: now,
        }
    }

    fn run(mut self) {
        loop {
            let ended = self.shared.sender_ended.load(Ordering::Acquire);
            let stopping = self.shared.stopping.load(Ordering::Acquire);
            let now = Instant::now();
            let linger = match self
                .shared
                .done
                .lock()
                .expect("done lock")
                .take_if_due(now, stopping)
            {
                Ok(mut due) => {
                    self.pending.append(&mut due);
                    None
                }
                Err(left) => Some(left),
            };
            if !self.pending.is_empty() {
                self.record(now);
            }
            if ended
                && self.pending.is_empty()
                && self.shared.done.lock().expect("done lock").list.is_empty()
            {
                break;
            }
            let out_of_time = || {
                let deadline = *self.shared.deadline.lock().expect("deadline lock");
                deadline.is_some_and(|by| now >= by + RECORD_AFTER_STOP)
            };
            if ended && !self.pending.is_empty() && out_of_time() {
                // PostgreSQL is away, or will not take them, at shutdown: the leases run out
                // and other nodes (or this one, restarted) take the rows again.
                tracing::warn!(
                    outcomes = self.pending.len(),
                    "delivery outcomes not recorded at shutdown"
                );
                break;
            }
            let rests = std::mem::take(&mut *self.shared.rests.lock().expect("rests lock"));
            if !rests.is_empty() {
                self.rest(rests, now);
            }
            if !stopping && now >= self.next_count {
                self.count(now);
            }
            if !stopping && now >= self.next_claim {
                self.claim(now);
            }
            let wake = self.next_claim.min(self.next_count);
            let mut pause = wake.saturating_duration_since(Instant::now());
            if !self.pending.is_empty() {
                // Recording failed: try again after the backoff.
                pause = pause.min(self.retry_at.saturating_duration_since(Instant::now()));
            }
            if let Some(left) = linger {
                pause = pause.min(left);
            }
            std::thread::park_timeout(pause.max(Duration::from_millis(1)).min(CLAIM_EVERY));
        }
    }

    /// Records the pending outcomes: in one transaction, or, when PostgreSQL refuses that
    /// for anything but a lost connection, one outcome at a time (`record_each`), so that no
    /// outcome can fail another's. What a lost connection left unrecorded is tried again after
    /// a backoff.
    fn record(&mut self, now: Instant) {
        if now < self.retry_at {
            return;
        }
        let outcomes: Vec<Outcome> = self.pending.iter().map(|d| d.outcome.clone()).collect();
        let batch = match self.session.recording(now) {
            Ok(None) => return,
            Ok(Some((client, recorder))) => {
                match recorder.record(client, &outcomes, now_micros()) {
                    Ok(()) => Ok(()),
                    Err(e) => Err((classify(&e, client.is_closed()), e)),
                }
            }
            Err(e) => Err((Failure::Connection, e)),
        };
        let recorded = match batch {
            Ok(()) => std::mem::take(&mut self.pending),
            Err((Failure::Connection, e)) => {
                self.failed_to_record(&e, now);
                return;
            }
            Err((_, e)) => {
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    outcomes = outcomes.len(),
                    "a batch of delivery outcomes was refused: recording them one by one"
                );
                self.record_each(now)
            }
        };
        self.record_failures.reset();
        self.retry_backoff = RECORD_LINGER;
        self.recorded(recorded, now);
    }

    /// Records the pending outcomes one at a time; returns those recorded (or given up on),
    /// and keeps those a lost connection left. One that PostgreSQL refuses is recorded without
    /// its attempt's texts, then without its attempt; if even its row cannot move on, it is
    /// left to its lease, which runs out (the delivery is made again: at least once holds).
    fn record_each(&mut self, now: Instant) -> Vec<Done> {
        let mut recorded = Vec::with_capacity(self.pending.len());
        let mut left = Vec::new();
        for done in std::mem::take(&mut self.pending) {
            let Ok(Some((client, recorder))) = self.session.recording(now) else {
                left.push(done);
                continue;
            };
            let o = &done.outcome;
            // Which form PostgreSQL took (0: the whole outcome), or the last refusal and
            // whether it was the connection's loss.
            let mut took = Err(None);
            for (n, form) in [o.clone(), o.without_texts(), o.without_attempt()]
                .iter()
                .enumerate()
            {
                match recorder.record(client, std::slice::from_ref(form), now_micros()) {
                    Ok(()) => {
                        took = Ok(n);
                        break;
                    }
                    Err(e) => {
                        let lost = matches!(classify(&e, client.is_closed()), Failure::Connection);
                        took = Err(Some((e, lost)));
                        if lost {
                            break;
                        }
                    }
                }
            }
            match took {
                Ok(0) => recorded.push(done),
                Ok(_) => {
                    self.shared.stats.unstorable.add(1);
                    recorded.push(done);
                }
                Err(Some((e, false))) => {
                    tracing::error!(
                        org = %o.org,
                        event = %o.id,
                        error = &e as &dyn std::error::Error,
                        "a delivery outcome could not be recorded in any form: its lease runs out"
                    );
                    self.shared.stats.unstorable.add(1);
                    recorded.push(done);
                }
                Err(_) => left.push(done),
            }
        }
        self.pending = left;
        recorded
    }

    /// A lost connection kept outcomes from being recorded: say so (at most every
    /// `CONNECT_WARN_EVERY`), and try again after a backoff that doubles up to a second.
    fn failed_to_record(&mut self, e: &postgres::Error, now: Instant) {
        if let Some(times) = self.record_failures.hit(now) {
            tracing::warn!(
                error = e as &dyn std::error::Error,
                outcomes = self.pending.len(),
                failed_times = times,
                "recording delivery outcomes failed; will retry"
            );
        }
        self.retry_at = now + self.retry_backoff;
        self.retry_backoff = (self.retry_backoff * 2).min(RECORD_BACKOFF_MAX);
    }

    /// What follows from outcomes recorded: endpoints that answered 410 are disabled, and
    /// the memory the jobs held is given back.
    fn recorded(&mut self, recorded: Vec<Done>, now: Instant) {
        let gone: HashSet<OrgId> = recorded
            .iter()
            .filter(|d| d.gone)
            .map(|d| d.outcome.org)
            .collect();
        if let Some(client) = self.session.client(now) {
            for org in gone {
                match deliveries::disable(client, org, "gone") {
                    Ok(_) => {
                        tracing::info!(%org, "webhook endpoint answered 410 Gone: disabled");
                        self.shared.stats.disabled.add(1);
                        self.shared.hooks.set(org, None);
                    }
                    Err(e) => {
                        tracing::warn!(%org, error = &e as &dyn std::error::Error, "disabling a gone endpoint failed");
                    }
                }
            }
        }
        let bytes = recorded.iter().map(|d| d.bytes).sum();
        self.shared.hooks.release(recorded.len(), bytes);
    }

    /// Tells every node (through the organization's row) that an endpoint rests or recovered.
    fn rest(&mut self, rests: Vec<(OrgId, Option<SystemTime>)>, now: Instant) {
        let Some(client) = self.session.client(now) else {
            return;
        };
        for (org, until) in rests {
            match deliveries::rest(client, org, until)
                .and_then(|()| self.shared.hooks.reload_one(client, org))
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(%org, error = &e as &dyn std::error::Error, "recording an endpoint's rest failed");
                }
            }
        }
    }

    /// Counts the backlog in the table, for the stats.
    fn count(&mut self, now: Instant) {
        self.next_count = now + BACKLOG_EVERY;
        let Some(client) = self.session.client(now) else {
            return;
        };
        if let Ok((due, paused)) = deliveries::backlog(client, BACKLOG_COUNT_MAX) {
            let d = &self.shared.stats;
            d.backlog.store(due as u64, Ordering::Relaxed);
            d.backlog_paused.store(paused as u64, Ordering::Relaxed);
        }
    }

    fn claim(&mut self, now: Instant) {
        self.next_claim = now + CLAIM_EVERY;
        // No endpoint anywhere (as this node last heard): nothing can be due.
        if !self.shared.hooks.any() {
            return;
        }
        // A claim scans due rows oldest first, past those of endpoints it skips: with memory
        // nearly full, or every endpoint busy, it would read a long backlog to take a handful.
        // It waits for a claim's worth of room (or a tenth of the memory), and a free endpoint.
        let hooks = &self.shared.hooks;
        let (room_jobs, room_bytes) = hooks.room();
        let held = hooks.held_jobs();
        let enough = CLAIM_ROWS_MAX.min((room_jobs + held) / 10).max(1);
        if room_jobs < enough || room_bytes == 0 {
            return;
        }
        // While delivery gives way to ingest, `room` is what starts within one attempt's
        // timeout (`Hooks::jobs_max`).
        let limit = room_jobs.min(CLAIM_ROWS_MAX);
        let skip: Vec<OrgId> = self
            .shared
            .busy
            .lock()
            .expect("busy lock")
            .iter()
            .copied()
            .collect();
        if skip.len() >= hooks.endpoints() {
            return;
        }
        let Some(client) = self.session.client(now) else {
            return;
        };
        let lease = self.shared.hooks.lease();
        let jobs: Vec<Job> =
            match deliveries::claim(client, limit as i64, room_bytes as i64, lease, &skip) {
                Ok(rows) => rows.into_iter().map(job_of).collect(),
                Err(e) => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "claiming due deliveries failed"
                    );
                    return;
                }
            };
        if jobs.len() == limit {
            // More may be due: look again at once.
            self.next_claim = now;
        }
        if jobs.is_empty() {
            return;
        }
        // Sized to the room read above; only a persister's concurrent hand-off can push the
        // total past the bound, by at most this claim.
        self.shared
            .hooks
            .hold(jobs.len(), jobs.iter().map(Job::bytes).sum());
        self.shared.stats.claimed.add(jobs.len() as u64);
        let _ = self.to_sender.send(Msg::Jobs(jobs));
    }
}

fn job_of(c: Claimed) -> Job {
    Job {
        org: c.org,
        id: c.id,
        kind: c.kind.into(),
        payload: c.payload.into_bytes().into(),
        printed: true,
        dedup_id: c.dedup_id.map(Into::into),
        created_at: c.created_at,
        keep_days: c.keep_days,
        generation: c.generation,
        attempts: c.attempts.max(0) as u16,
        lease_until: c.lease_until,
    }
}
