//! queue::doorbell: persisters say here when they are about to sleep; a core that has just
//! pushed wakes one.
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
}

impl Doorbell {
    pub fn new(persisters: usize) -> Doorbell {
        Doorbell {
            sleepers: (0..persisters)
                .map(|_| (AtomicBool::new(false), OnceLock::new()))
                .collect(),
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

    /// Wakes one sleeping persister, if any sleeps.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        for (asleep, thread) in &self.sleepers {
            if asleep.load(Ordering::Relaxed) && asleep.swap(false, Ordering::AcqRel) {
                if let Some(t) = thread.get() {
                    t.unpark();
                }
                return;
            }
        }
    }

    pub fn ring_all(&self) {
        for (asleep, thread) in &self.sleepers {
            asleep.store(false, Ordering::Relaxed);
            if let Some(t) = thread.get() {
                t.unpark();
            }
        }
    }
}
