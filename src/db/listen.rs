//! db::listen: how a change is announced to every node sharing the database (`notify`), and a
//! thread that LISTENs on channels and hands what it hears to its owner: the
//! key listener (`auth`) and the webhook listener (`hooks`) are each a `Listener`. Each time
//! the thread connects, it LISTENs first and then lets the owner read what it may have missed
//! (a change made in between is heard of, never lost); a lost connection is reopened with a
//! pause and a warning at most every `CONNECT_WARN_EVERY`. It ends once the stop signal
//! reaches its finishing phase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Notification};

use super::conn::{connect, CONNECT_WARN_EVERY};
use crate::shutdown::Stop;
use crate::stats::LogEvery;

/// Longest wait for a notice: how often the thread looks at its stop flag, and how often its
/// owner hears (perhaps of nothing) while nothing is announced.
const POLL: Duration = Duration::from_millis(250);
/// Pause before connecting again.
const RETRY: Duration = Duration::from_secs(1);

/// Sends `payload` on `channel` to every session LISTENing there, once `tx` commits (and never
/// if it does not): how a change reaches every node sharing the database.
pub fn notify(
    tx: &mut postgres::Transaction<'_>,
    channel: &str,
    payload: &str,
) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])?;
    Ok(())
}

/// What a listening thread does with what it hears.
pub trait Listener: Send + 'static {
    /// Connected, and listening: read what notices may have been missed (`again`: this is not
    /// the first connection). An error drops the connection and tries again.
    fn connected(&mut self, client: &mut Client, again: bool) -> Result<(), postgres::Error>;

    /// The notices of one wait, oldest first (none after `POLL` of silence). An error drops
    /// the connection and tries again.
    fn heard(
        &mut self,
        client: &mut Client,
        notices: Vec<Notification>,
    ) -> Result<(), postgres::Error>;
}

/// Starts thread `name` listening on `channels` for `listener` (`who`, for the log).
pub fn spawn(
    name: &'static str,
    who: &'static str,
    config: postgres::Config,
    channels: &'static [&'static str],
    stop: Arc<Stop>,
    mut listener: impl Listener,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut failures = LogEvery::new(CONNECT_WARN_EVERY);
            let mut again = false;
            let listen: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
            while !stop.is_finishing() {
                let opened = connect(&config).and_then(|mut c| {
                    c.batch_execute(&listen)?;
                    listener.connected(&mut c, again)?;
                    Ok(c)
                });
                let mut client = match opened {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some(attempts) = failures.hit(Instant::now()) {
                            tracing::warn!(
                                failed_attempts = attempts,
                                error = &e as &dyn std::error::Error,
                                "{who} cannot connect"
                            );
                        }
                        std::thread::sleep(RETRY);
                        continue;
                    }
                };
                failures.reset();
                again = true;
                while !stop.is_finishing() {
                    let heard =
                        wait(&mut client).and_then(|notices| listener.heard(&mut client, notices));
                    if let Err(e) = heard {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "{who} lost its connection"
                        );
                        break;
                    }
                }
            }
        })
        .expect("spawning a listener")
}

/// Waits up to `POLL` for a first notice, then takes whatever else has come.
fn wait(client: &mut Client) -> Result<Vec<Notification>, postgres::Error> {
    let mut notes = client.notifications();
    let mut notices = Vec::new();
    let mut wait = POLL;
    while let Some(n) = notes.timeout_iter(wait).next()? {
        notices.push(n);
        wait = Duration::ZERO;
    }
    Ok(notices)
}
