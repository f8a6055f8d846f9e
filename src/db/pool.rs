//! db::pool: a few threads, each with its own connection, running the queries the cores hand
//! over. The cores never touch a connection: they await the answer on a oneshot channel, so
//! their event loops keep serving. The queue is bounded (full → `Busy`) and so is the wait
//! (→ `Unavailable`).

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use postgres::Client;

use super::conn::Link;

/// Queries queued for the query threads; past this a request is answered 503 `overloaded`.
const QUERY_QUEUE_MAX: usize = 1024;
/// Longest a core waits for a query's answer before 503 `storage_unavailable`.
const QUERY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// The query queue is full.
    Busy,
    /// PostgreSQL could not be reached, or the query failed; logged where it happened.
    Unavailable,
}

type Job = Box<dyn FnOnce(Option<&mut Client>) + Send>;

/// A few threads, each with its own connection, running queries handed over by the cores.
#[derive(Clone)]
pub struct QueryPool {
    jobs: Sender<Job>,
}

impl QueryPool {
    pub fn spawn(threads: usize, config: &postgres::Config) -> (QueryPool, QueryThreads) {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(QUERY_QUEUE_MAX);
        // Never sent on: dropping the sender (in `QueryThreads::join`) tells the threads to end,
        // whoever still holds a `QueryPool`.
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let handles = (0..threads)
            .map(|i| {
                let rx: Receiver<Job> = rx.clone();
                let stopped = stopped.clone();
                let config = config.clone();
                std::thread::Builder::new()
                    .name(format!("query-{i}"))
                    .spawn(move || {
                        // While PostgreSQL is away, jobs fail at once between attempts.
                        let mut link = Link::new("query thread");
                        loop {
                            let job = crossbeam_channel::select! {
                                recv(rx) -> job => match job { Ok(job) => job, Err(_) => return },
                                recv(stopped) -> _ => return,
                            };
                            job(link.get(&config, Instant::now()));
                        }
                    })
                    .expect("spawning a query thread")
            })
            .collect();
        (QueryPool { jobs }, QueryThreads { handles, stop })
    }

    /// Queues `job` for a query thread, which runs it with a live connection (`None` while
    /// PostgreSQL cannot be reached); nobody waits for it.
    pub fn send(
        &self,
        job: impl FnOnce(Option<&mut Client>) + Send + 'static,
    ) -> Result<(), QueryError> {
        self.jobs.try_send(Box::new(job)).map_err(|e| match e {
            TrySendError::Full(_) => QueryError::Busy,
            TrySendError::Disconnected(_) => QueryError::Unavailable,
        })
    }

    /// Runs `f` on a query thread with a live connection and awaits its result without
    /// blocking the calling core.
    pub async fn run<T, F>(&self, what: &'static str, f: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.send(move |client: Option<&mut Client>| {
            let result = match client {
                None => Err(QueryError::Unavailable),
                Some(c) => f(c).map_err(|e| {
                    tracing::warn!(
                        query = what,
                        error = &e as &dyn std::error::Error,
                        "query failed"
                    );
                    QueryError::Unavailable
                }),
            };
            let _ = tx.send(result);
        })?;
        match monoio::time::timeout(QUERY_WAIT, rx).await {
            Ok(Ok(result)) => result,
            _ => Err(QueryError::Unavailable),
        }
    }
}

/// The query threads; `join` ends them (queries still queued are dropped, and their callers
/// see `Unavailable`).
pub struct QueryThreads {
    handles: Vec<std::thread::JoinHandle<()>>,
    stop: Sender<()>,
}

impl QueryThreads {
    pub fn join(self) {
        drop(self.stop);
        for h in self.handles {
            let _ = h.join();
        }
    }
}
