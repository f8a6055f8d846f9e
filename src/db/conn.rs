//! db::conn: how every connection to PostgreSQL is opened (bounded in time, and named so that
//! `pg_stat_activity` shows whose it is), and how a query thread gets back to PostgreSQL after
//! losing it: attempts back off and the warning is throttled, so an outage costs neither a
//! connection per request nor a log line per request.

use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::stats::LogEvery;

/// Longest wait for a TCP/unix connection to PostgreSQL.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest pause between connection attempts of one thread.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A thread that keeps failing to connect says so at most this often.
pub const CONNECT_WARN_EVERY: Duration = Duration::from_secs(10);

pub fn connect(config: &postgres::Config) -> Result<Client, postgres::Error> {
    let mut config = config.clone();
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("triggers");
    config.connect(NoTls)
}

/// Whether PostgreSQL has ended `client`'s session. A session it ended while the connection
/// sat idle (a restart, a termination) left its last message unread on the socket, and a
/// query sent there would fail although PostgreSQL is back: one non-blocking poll reads it.
fn ended(client: &mut Client) -> bool {
    // Nothing on these connections LISTENs: the poll drops no notification anyone waits for.
    // An error from an idle connection is the session's end (PostgreSQL's FATAL message). The
    // zero timeout lets the client's runtime look at the socket once (`iter` would not: it
    // polls without turning the runtime's reactor, so it never learns the socket is readable).
    loop {
        let polled = client.notifications().timeout_iter(Duration::ZERO).next();
        match polled {
            Ok(Some(_)) => {}
            Ok(None) => return client.is_closed(),
            Err(_) => return true,
        }
    }
}

/// One thread's connection, reopened with backoff when it is lost. Time is passed in.
pub struct Link {
    /// Who holds it, for the log: `"query thread"`.
    who: &'static str,
    client: Option<Client>,
    retry: Duration,
    next_attempt: Option<Instant>,
    /// Attempts failed since the connection was last up.
    failures: u64,
    warnings: LogEvery,
    /// A connection was opened that `get_fresh` has not yet reported.
    opened: bool,
}

impl Link {
    pub fn new(who: &'static str) -> Link {
        Link {
            who,
            client: None,
            retry: RETRY_MIN,
            next_attempt: None,
            failures: 0,
            warnings: LogEvery::new(CONNECT_WARN_EVERY),
            opened: false,
        }
    }

    /// The connection, reopened first if it is lost and an attempt is due; `None` while
    /// PostgreSQL cannot be reached.
    pub fn get(&mut self, config: &postgres::Config, now: Instant) -> Option<&mut Client> {
        self.get_fresh(config, now).map(|(client, _)| client)
    }

    /// `get`, and whether the connection is new since the last call (to set its session up).
    pub fn get_fresh(
        &mut self,
        config: &postgres::Config,
        now: Instant,
    ) -> Option<(&mut Client, bool)> {
        if self.client.as_mut().is_some_and(ended) {
            self.client = None;
        }
        if self.client.is_none() && self.next_attempt.is_none_or(|at| now >= at) {
            match connect(config) {
                Ok(client) => {
                    if self.failures > 0 {
                        tracing::info!(
                            who = self.who,
                            failed_attempts = self.failures,
                            "connected to PostgreSQL again"
                        );
                    }
                    self.client = Some(client);
                    self.opened = true;
                    self.retry = RETRY_MIN;
                    self.next_attempt = None;
                    self.failures = 0;
                    self.warnings.reset();
                }
                Err(e) => self.failed(&e, now),
            }
        }
        let client = self.client.as_mut()?;
        Some((client, std::mem::take(&mut self.opened)))
    }

    fn failed(&mut self, error: &postgres::Error, now: Instant) {
        self.failures += 1;
        self.next_attempt = Some(now + self.retry);
        self.retry = (self.retry * 2).min(RETRY_MAX);
        if let Some(attempts) = self.warnings.hit(now) {
            tracing::warn!(
                failed_attempts = attempts,
                error = error as &dyn std::error::Error,
                "{} cannot connect",
                self.who
            );
        }
    }
}
