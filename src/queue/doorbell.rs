//! queue::doorbell: persisters say here when they are about to sleep; a core that has just
//! pushed wakes one.
//!
//! The first persister is the lead: it is woken by any push. The others help only when the
//! rings hold `help_at` events or more while the lead is busy. A commit costs far more than
//! a row (measured: ~345 µs of server and PostgreSQL CPU per commit, ~27 µs per row), so a
//! helper that commits the two or three events that arrived during the lead's commit doubles
//! the commits for nothing the lead's next batch would not do a moment later; a backlog that
//! outgrows one commit is worth a second (results/2026-11-30-lead-persister). The backlog is
//! counted in events, not requests: one batch request of 100 events waiting is a backlog, and
//! counting it as one kept batch ingest on a single PostgreSQL backend
//! (results/2026-11-30-help-by-events).
//!
//! The fences pair up so that either the persister sees the new event or the core sees the
//! persister's flag: a persister stores its flag, fences, then looks at the rings once more
//! before it parks; a core pushes, fences, then looks at the flags. Whichever order the two
//! run in, one of them sees the other (the stress test in `queue::stress` holds it to that).

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

pub struct Doorbell {
    sleepers: Vec<(AtomicBool, OnceLock<Thread>)>,
    /// Events queued in the rings at which a helper is woken while the lead is busy.
    help_at: usize,
}

impl Doorbell {
    pub fn new(persisters: usize, help_at: usize) -> Doorbell {
        assert!(
            persisters > 0,
            "a doorbell rings for at least one persister"
        );
        Doorbell {
            sleepers: (0..persisters)
                .map(|_| (AtomicBool::new(false), OnceLock::new()))
                .collect(),
            help_at,
        }
    }

    /// Called by persister `i`'s own thread before it first sleeps.
    pub fn register(&self, i: usize) {
        let _ = self.sleepers[i].1.set(std::thread::current());
    }

    /// Marks persister `i` as going to sleep; the caller must look at the rings once more
    /// before it parks.
    pub fn will_sleep(&self, i: usize) {
        self.sleepers[i].0.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    pub fn awake(&self, i: usize) {
        self.sleepers[i].0.store(false, Ordering::Relaxed);
    }

    /// Wakes the lead if it sleeps; if it is busy, one sleeping helper when `queued()` (the
    /// events the rings hold) has reached `help_at`. A busy lead looks at the rings again
    /// before it sleeps, so whatever no helper takes, the lead does.
    /// The rings are counted only when a helper sleeps: this runs at every push.
    pub fn ring(&self, queued: impl FnOnce() -> usize) {
        fence(Ordering::SeqCst);
        let (lead, helpers) = self.sleepers.split_first().expect("at least one persister");
        if wake(lead) {
            return;
        }
        let sleeping = || {
            helpers
                .iter()
                .any(|(asleep, _)| asleep.load(Ordering::Relaxed))
        };
        if sleeping() && queued() >= self.help_at {
            helpers.iter().any(wake);
        }
    }

    /// Whether persister `i` should take work now: the lead always, a helper when `queued()`
    /// has reached `help_at`.
    pub fn wanted(&self, i: usize, queued: impl FnOnce() -> usize) -> bool {
        i == 0 || queued() >= self.help_at
    }

    /// Wakes every persister (shutting down).
    pub fn ring_all(&self) {
        for (asleep, thread) in &self.sleepers {
            asleep.store(false, Ordering::Relaxed);
            if let Some(t) = thread.get() {
                t.unpark();
            }
        }
    }
}

/// Wakes the persister of `sleeper` if it said it sleeps; whether it did.
fn wake((asleep, thread): &(AtomicBool, OnceLock<Thread>)) -> bool {
    if !(asleep.load(Ordering::Relaxed) && asleep.swap(false, Ordering::AcqRel)) {
        return false;
    }
    if let Some(t) = thread.get() {
        t.unpark();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which persisters are still flagged asleep.
    fn asleep(bell: &Doorbell) -> Vec<bool> {
        bell.sleepers
            .iter()
            .map(|(a, _)| a.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn any_push_wakes_the_lead_and_only_a_backlog_wakes_a_helper() {
        let bell = Doorbell::new(3, 4);
        for i in 0..3 {
            bell.will_sleep(i);
        }
        bell.ring(|| 1);
        assert_eq!(asleep(&bell), [false, true, true], "the lead first");
        bell.ring(|| 3);
        assert_eq!(
            asleep(&bell),
            [false, true, true],
            "a busy lead takes a small queue"
        );
        bell.ring(|| 4);
        assert_eq!(asleep(&bell), [false, false, true], "one helper per push");
        bell.ring(|| 9);
        assert_eq!(asleep(&bell), [false, false, false]);
        bell.ring(|| unreachable!("no helper sleeps: the rings are not counted"));
    }

    #[test]
    fn with_help_at_zero_or_one_every_push_wakes_a_sleeper() {
        for help_at in [0, 1] {
            let bell = Doorbell::new(2, help_at);
            bell.will_sleep(0);
            bell.will_sleep(1);
            bell.ring(|| 1);
            bell.ring(|| 1);
            assert_eq!(asleep(&bell), [false, false]);
        }
    }
}
