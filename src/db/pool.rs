//! db::pool: the query threads, each with its own connection, running everything but event
//! writes off the cores; a core awaits the answer on a oneshot channel, so its event loop keeps
//! serving. Two lanes, so that no tenant's work holds up the node's or another tenant's:
//!
//! - the node lane (`NODE_THREADS`): key look-ups, rate-limit leases, health checks, retention
//!   classes: short statements that every tenant's requests wait on. Nothing a tenant asks for
//!   queues there.
//! - the tenant lane (`query_threads`): inbox pages, acks, the key and webhook routes, signups.
//!   Each owner (an organization; self-serve signup counts as one) has a queue of its own, the
//!   queues are served in turn, and one owner runs on at most all threads but one at once: while
//!   one organization's statements run, a thread is left for everyone else.
//!
//! Every wait has a bound: an owner's queue and the lane's, in jobs (full: `Busy`, a 503
//! `overloaded`); a job's wait to start (past it, answered `Busy` unrun); each statement
//! (`statement_timeout`; one that runs out is `Busy` too: the caller asked for too much at once);
//! and the caller's wait, past all of these (`Unavailable`: PostgreSQL did not answer). A job
//! whose caller is gone (its connection closed) is dropped unrun, so a job answered 503 never
//! runs later; a job run inside a transaction (`write`) commits only if its caller still waits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::Client;

use super::conn::Link;
use crate::ids::OrgId;

/// Threads of the node lane: its statements take well under a millisecond each.
const NODE_THREADS: usize = 1;
/// Jobs queued in a lane, and for one owner of the tenant lane; past them: `Busy`.
const LANE_QUEUED_MAX: usize = 1024;
const OWNER_QUEUED_MAX: usize = 64;
/// Longest a job waits for a thread; later it is answered `Busy` without running.
const START_WAIT: Duration = Duration::from_secs(2);
/// `statement_timeout` of each lane's sessions. A tenant's inbox page of 4 MiB takes tens of
/// milliseconds; a node statement, well under one.
const TENANT_STATEMENT: Duration = Duration::from_secs(5);
const NODE_STATEMENT: Duration = Duration::from_secs(2);
/// What a caller waits past the start and statement bounds before it answers 503
/// `storage_unavailable`: only a PostgreSQL that does not answer at all takes that long.
const CALLER_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// The queue is full, the job waited too long to start, or its statement ran out of time.
    Busy,
    /// PostgreSQL could not be reached, or the query failed; logged where it happened.
    Unavailable,
}

/// Whose work a job is: it decides the lane, and in the tenant lane the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    /// The node's own: key look-ups, leases, health.
    Node,
    /// An organization's request.
    Org(OrgId),
    /// Self-serve signup, all of it one owner.
    Signup,
}

/// A job: runs with a live connection, or learns why not (`Busy`: it waited too long to
/// start; `Unavailable`: PostgreSQL cannot be reached).
type Job = Box<dyn FnOnce(Result<&mut Client, QueryError>) + Send>;

struct Queued {
    job: Job,
    start_by: Instant,
}

/// One owner's jobs in a lane.
#[derive(Default)]
struct Owner {
    jobs: VecDeque<Queued>,
    running: usize,
}

/// A lane's queues, and which owners may start a job, in turn. An owner is in `ready` exactly
/// when it has jobs queued and runs fewer than `running_max`.
struct Queues {
    owners: HashMap<Work, Owner>,
    ready: VecDeque<Work>,
    queued: usize,
    /// Jobs one owner may run at once, and have queued.
    running_max: usize,
    owner_queued_max: usize,
    stopped: bool,
}

impl Queues {
    fn new(running_max: usize, owner_queued_max: usize) -> Queues {
        Queues {
            owners: HashMap::new(),
            ready: VecDeque::new(),
            queued: 0,
            running_max,
            owner_queued_max,
            stopped: false,
        }
    }

    fn push(&mut self, work: Work, job: Queued) -> Result<(), QueryError> {
        if self.stopped {
            return Err(QueryError::Unavailable);
        }
        let owner = self.owners.entry(work).or_default();
        if self.queued >= LANE_QUEUED_MAX || owner.jobs.len() >= self.owner_queued_max {
            if owner.jobs.is_empty() && owner.running == 0 {
                self.owners.remove(&work);
            }
            return Err(QueryError::Busy);
        }
        owner.jobs.push_back(job);
        self.queued += 1;
        if owner.jobs.len() == 1 && owner.running < self.running_max {
            self.ready.push_back(work);
        }
        Ok(())
    }

    /// The next job, of the owner whose turn it is.
    fn take(&mut self) -> Option<(Work, Queued)> {
        let work = self.ready.pop_front()?;
        let owner = self.owners.get_mut(&work).expect("a ready owner is known");
        let job = owner.jobs.pop_front().expect("a ready owner has jobs");
        self.queued -= 1;
        owner.running += 1;
        if !owner.jobs.is_empty() && owner.running < self.running_max {
            self.ready.push_back(work);
        }
        Some((work, job))
    }

    /// `work`'s job has ended.
    fn done(&mut self, work: Work) {
        let owner = self
            .owners
            .get_mut(&work)
            .expect("a running owner is known");
        owner.running -= 1;
        if owner.jobs.is_empty() {
            if owner.running == 0 {
                self.owners.remove(&work);
            }
        } else if owner.running + 1 == self.running_max {
            // It was at its limit, so not ready; now it is.
            self.ready.push_back(work);
        }
    }
}

/// A lane: its queues, and the condition its threads wait on.
struct Lane {
    queues: Mutex<Queues>,
    wake: Condvar,
    statement: Duration,
}

impl Lane {
    fn new(threads: usize, owner_queued_max: usize, statement: Duration) -> Arc<Lane> {
        Arc::new(Lane {
            queues: Mutex::new(Queues::new(
                threads.saturating_sub(1).max(1),
                owner_queued_max,
            )),
            wake: Condvar::new(),
            statement,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, work: Work, job: Job) -> Result<(), QueryError> {
        let start_by = Instant::now() + START_WAIT;
        self.lock().push(work, Queued { job, start_by })?;
        self.wake.notify_one();
        Ok(())
    }

    /// Runs jobs on this thread until the lane stops.
    fn serve(&self, config: &postgres::Config) {
        // While PostgreSQL is away, jobs fail at once between connection attempts.
        let mut link = Link::new("query thread");
        loop {
            let (work, queued) = {
                let mut q = self.lock();
                loop {
                    if q.stopped {
                        return;
                    }
                    if let Some(next) = q.take() {
                        break next;
                    }
                    q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            let now = Instant::now();
            if now > queued.start_by {
                (queued.job)(Err(QueryError::Busy));
            } else {
                match link.get_fresh(config, now) {
                    Some((client, fresh)) => {
                        if fresh {
                            set_statement_timeout(client, self.statement);
                        }
                        (queued.job)(Ok(client));
                    }
                    None => (queued.job)(Err(QueryError::Unavailable)),
                }
            }
            let mut q = self.lock();
            q.done(work);
            drop(q);
            // `done` may have made an owner ready that no other thread was woken for.
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }
}

fn set_statement_timeout(client: &mut Client, timeout: Duration) {
    let sql = format!("SET statement_timeout = {}", timeout.as_millis());
    if let Err(e) = client.batch_execute(&sql) {
        tracing::warn!(
            error = &e as &dyn std::error::Error,
            "could not set a query thread's statement_timeout"
        );
    }
}

/// How a failed statement is answered: one that ran out of time is the caller's to retry
/// later (`Busy`); anything else is logged here and is `Unavailable`.
fn failed(what: &'static str, e: &postgres::Error) -> QueryError {
    if e.code() == Some(&SqlState::QUERY_CANCELED) {
        tracing::info!(query = what, "statement ran past its statement_timeout");
        return QueryError::Busy;
    }
    tracing::warn!(
        query = what,
        error = e as &dyn std::error::Error,
        "query failed"
    );
    QueryError::Unavailable
}

/// The query threads of both lanes, as the cores hand them work.
#[derive(Clone)]
pub struct QueryPool {
    node: Arc<Lane>,
    tenants: Arc<Lane>,
}

impl QueryPool {
    /// `threads` for the tenant lane, `NODE_THREADS` for the node lane.
    pub fn spawn(threads: usize, config: &postgres::Config) -> (QueryPool, QueryThreads) {
        let node = Lane::new(NODE_THREADS, LANE_QUEUED_MAX, NODE_STATEMENT);
        let tenants = Lane::new(threads, OWNER_QUEUED_MAX, TENANT_STATEMENT);
        let mut handles = Vec::new();
        for (name, lane, n) in [
            ("query-node", &node, NODE_THREADS),
            ("query", &tenants, threads),
        ] {
            for i in 0..n {
                let (lane, config) = (lane.clone(), config.clone());
                handles.push(
                    std::thread::Builder::new()
                        .name(format!("{name}-{i}"))
                        .spawn(move || lane.serve(&config))
                        .expect("spawning a query thread"),
                );
            }
        }
        let lanes = [node.clone(), tenants.clone()];
        (QueryPool { node, tenants }, QueryThreads { handles, lanes })
    }

    fn lane(&self, work: Work) -> &Lane {
        match work {
            Work::Node => &self.node,
            Work::Org(_) | Work::Signup => &self.tenants,
        }
    }

    /// Queues `job` for `work`'s lane; it runs with a live connection (`None` while PostgreSQL
    /// cannot be reached, or when it waited too long to start). Nobody waits for it.
    pub fn send(
        &self,
        work: Work,
        job: impl FnOnce(Option<&mut Client>) + Send + 'static,
    ) -> Result<(), QueryError> {
        self.lane(work)
            .push(work, Box::new(move |client| job(client.ok())))
    }

    /// Runs `f` for `work` on a query thread and awaits its result without blocking the calling
    /// core. If the caller stops waiting (its connection closed) before `f` starts, `f` never
    /// runs.
    pub async fn run<T, F>(&self, work: Work, what: &'static str, f: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    {
        self.call(work, move |c, _| f(c).map_err(|e| failed(what, &e)))
            .await
    }

    /// `run`, with `f` inside a transaction that commits only if the caller still waits: a
    /// change whose caller was answered 503 (or went away) does not take effect.
    pub async fn write<T, F>(&self, work: Work, what: &'static str, f: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut postgres::Transaction<'_>) -> Result<T, postgres::Error> + Send + 'static,
    {
        self.call(work, move |c, waiting| {
            let mut t = c.transaction().map_err(|e| failed(what, &e))?;
            let value = f(&mut t).map_err(|e| failed(what, &e))?;
            if !waiting() {
                // Dropped: rolled back.
                return Err(QueryError::Unavailable);
            }
            t.commit().map_err(|e| failed(what, &e))?;
            Ok(value)
        })
        .await
    }

    /// Queues `job` for `work`'s lane and awaits its result, at most as long as the job may wait
    /// to start and its statements may run, and a margin. The job gets a live connection and a
    /// way to ask whether its caller still waits; it never starts once its caller has gone.
    async fn call<T, J>(&self, work: Work, job: J) -> Result<T, QueryError>
    where
        T: Send + 'static,
        J: FnOnce(&mut Client, &dyn Fn() -> bool) -> Result<T, QueryError> + Send + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel();
        let lane = self.lane(work);
        lane.push(
            work,
            Box::new(move |client: Result<&mut Client, QueryError>| {
                if tx.is_canceled() {
                    return;
                }
                let result = client.and_then(|c| job(c, &|| !tx.is_canceled()));
                let _ = tx.send(result);
            }),
        )?;
        let wait = START_WAIT + lane.statement + CALLER_MARGIN;
        match monoio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => result,
            _ => Err(QueryError::Unavailable),
        }
    }
}

/// The query threads; `join` ends them (queries still queued are dropped, and their callers
/// see `Unavailable`).
pub struct QueryThreads {
    handles: Vec<std::thread::JoinHandle<()>>,
    lanes: [Arc<Lane>; 2],
}

impl QueryThreads {
    pub fn join(self) {
        for lane in &self.lanes {
            lane.stop();
        }
        for h in self.handles {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(start_by: Instant) -> Queued {
        Queued {
            job: Box::new(|_| {}),
            start_by,
        }
    }

    /// Owners in the order `take` serves them, with `done` after each.
    fn order(q: &mut Queues) -> Vec<Work> {
        let mut served = Vec::new();
        while let Some((work, _)) = q.take() {
            served.push(work);
            q.done(work);
        }
        served
    }

    #[test]
    fn owners_are_served_in_turn_however_many_jobs_one_queued() {
        let (a, b) = (Work::Org(OrgId::new()), Work::Org(OrgId::new()));
        let mut q = Queues::new(1, 64);
        let now = Instant::now();
        for _ in 0..5 {
            q.push(a, job(now)).unwrap();
        }
        q.push(b, job(now)).unwrap();
        q.push(Work::Signup, job(now)).unwrap();
        let served = order(&mut q);
        assert_eq!(&served[..3], &[a, b, Work::Signup]);
        assert_eq!(served.len(), 7);
        assert!(q.owners.is_empty() && q.ready.is_empty() && q.queued == 0);
    }

    #[test]
    fn an_owner_at_its_limit_waits_while_others_run() {
        let (a, b) = (Work::Org(OrgId::new()), Work::Org(OrgId::new()));
        // Two threads: one owner runs on one of them at most.
        let mut q = Queues::new(1, 64);
        let now = Instant::now();
        q.push(a, job(now)).unwrap();
        q.push(a, job(now)).unwrap();
        let (first, _) = q.take().unwrap();
        assert_eq!(first, a);
        assert!(q.take().is_none(), "a's second job waits for its first");
        q.push(b, job(now)).unwrap();
        assert_eq!(q.take().unwrap().0, b, "b runs beside a");
        q.done(a);
        assert_eq!(q.take().unwrap().0, a);
    }

    #[test]
    fn queues_are_bounded_per_owner_and_per_lane() {
        let a = Work::Org(OrgId::new());
        let mut q = Queues::new(1, 3);
        let now = Instant::now();
        for _ in 0..3 {
            q.push(a, job(now)).unwrap();
        }
        assert_eq!(q.push(a, job(now)).err(), Some(QueryError::Busy));
        // Another owner still gets in.
        q.push(Work::Signup, job(now)).unwrap();
        let mut lane = Queues::new(1, LANE_QUEUED_MAX + 1);
        for _ in 0..LANE_QUEUED_MAX {
            lane.push(Work::Node, job(now)).unwrap();
        }
        assert_eq!(
            lane.push(Work::Node, job(now)).err(),
            Some(QueryError::Busy)
        );
        // A refused first job leaves no owner behind.
        let b = Work::Org(OrgId::new());
        assert_eq!(lane.push(b, job(now)).err(), Some(QueryError::Busy));
        assert!(!lane.owners.contains_key(&b));
    }
}
