//! shutdown: the one stop signal every running part watches. Imports nothing of the crate.
//!
//! A graceful stop has two phases, begun in order by `server` (which holds the whole sequence):
//! 1. `drain`: every core stops accepting, cancels its idle reads and lets in-flight requests
//!    finish, within the budget. Cores wait for it with `drained`.
//! 2. `finish`, once no core will push again: persisters commit what the rings still hold and
//!    exit; past the budget with PostgreSQL unreachable they drop what is left (logged), so a
//!    stop is always bounded. The key-rotation listener ends too.
//!
//! Each phase has its own deadline, `budget` after it begins.

use std::future::poll_fn;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

pub struct Stop {
    budget: Duration,
    drain_by: OnceLock<Instant>,
    finish_by: OnceLock<Instant>,
    /// One per core: wakes its runtime from the signal thread.
    cores: Vec<AtomicWaker>,
}

impl Stop {
    pub fn new(cores: usize, budget: Duration) -> Stop {
        Stop {
            budget,
            drain_by: OnceLock::new(),
            finish_by: OnceLock::new(),
            cores: (0..cores).map(|_| AtomicWaker::new()).collect(),
        }
    }

    /// Phase 1: cores drain. Idempotent.
    pub fn drain(&self) {
        let _ = self.drain_by.set(Instant::now() + self.budget);
        for waker in &self.cores {
            waker.wake();
        }
    }

    /// Resolves once draining has begun, with the instant by which `core` must be done.
    pub async fn drained(&self, core: usize) -> Instant {
        poll_fn(|cx| {
            self.cores[core].register(cx.waker());
            match self.drain_by.get() {
                Some(by) => Poll::Ready(*by),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Phase 2: the threads behind the cores finish. Idempotent.
    pub fn finish(&self) {
        let _ = self.finish_by.set(Instant::now() + self.budget);
    }

    /// When finishing has begun: the instant past which persisters stop waiting for PostgreSQL.
    pub fn finish_by(&self) -> Option<Instant> {
        self.finish_by.get().copied()
    }

    pub fn is_finishing(&self) -> bool {
        self.finish_by.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_waiting_for_the_drain_wakes_with_its_deadline() {
        let stop = std::sync::Arc::new(Stop::new(2, Duration::from_secs(7)));
        let waiting = stop.clone();
        let core = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap();
            rt.block_on(waiting.drained(1))
        });
        std::thread::sleep(Duration::from_millis(20));
        let before = Instant::now();
        stop.drain();
        let by = core.join().unwrap();
        assert!(
            by >= before + Duration::from_secs(7) && by <= Instant::now() + Duration::from_secs(7)
        );
        assert!(!stop.is_finishing());
        stop.finish();
        assert!(stop.finish_by().is_some());
    }
}
