//! delivery::breaker: one endpoint's circuit breaker, on each node. After `FAILURES_TO_OPEN`
//! failed attempts in a row the endpoint rests: no attempt is made to it for the cool-down
//! (its deliveries wait in the table, their attempts not spent), then one attempt probes it.
//! A probe that succeeds closes the breaker; one that fails rests the endpoint again, twice as
//! long, up to `COOL_DOWN_MAX`. Time is passed in.

use std::time::{Duration, Instant};

/// Failed attempts in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
const COOL_DOWN_FIRST: Duration = Duration::from_secs(5);
const COOL_DOWN_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    failures: u32,
    /// Resting until then.
    open_until: Option<Instant>,
    cool_down: Duration,
}

/// How many attempts to the endpoint may be in flight now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Closed: the endpoint's usual concurrency.
    All,
    /// Resting until then: none.
    Rest(Instant),
    /// The rest is over: one attempt, to probe.
    Probe,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            failures: 0,
            open_until: None,
            cool_down: COOL_DOWN_FIRST,
        }
    }
}

impl Breaker {
    pub fn allowed(&self, now: Instant) -> Allowed {
        match self.open_until {
            None => Allowed::All,
            Some(until) if now < until => Allowed::Rest(until),
            Some(_) => Allowed::Probe,
        }
    }

    /// Counts an attempt's result. Returns true when this opened the breaker.
    pub fn record(&mut self, delivered: bool, now: Instant) -> bool {
        if delivered {
            *self = Breaker::default();
            return false;
        }
        self.failures += 1;
        match self.open_until {
            // A failed probe: rest again, longer.
            Some(until) if now >= until => {
                self.cool_down = (self.cool_down * 2).min(COOL_DOWN_MAX);
                self.open_until = Some(now + self.cool_down);
                true
            }
            // Already resting (an attempt that was in flight when it opened).
            Some(_) => false,
            None if self.failures >= FAILURES_TO_OPEN => {
                self.open_until = Some(now + self.cool_down);
                true
            }
            None => false,
        }
    }

    /// Nothing to remember: closed with no failure counted.
    pub fn is_idle(&self) -> bool {
        self.failures == 0 && self.open_until.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_probes_after_the_rest_and_backs_off() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(!b.record(false, t0));
        }
        assert!(!b.record(true, t0), "a success resets the count");
        for _ in 0..FAILURES_TO_OPEN - 1 {
            b.record(false, t0);
        }
        assert!(b.record(false, t0), "the fifth in a row opens it");
        assert_eq!(b.allowed(t0 + s(1)), Allowed::Rest(t0 + s(5)));
        assert!(
            !b.record(false, t0 + s(1)),
            "a late failure does not extend the rest"
        );
        assert_eq!(b.allowed(t0 + s(5)), Allowed::Probe);
        assert!(b.record(false, t0 + s(5)), "a failed probe rests it again");
        assert_eq!(b.allowed(t0 + s(6)), Allowed::Rest(t0 + s(15)));
        assert!(!b.record(true, t0 + s(15)));
        assert_eq!(b.allowed(t0 + s(15)), Allowed::All);
        assert!(b.is_idle());
    }

    #[test]
    fn the_rest_is_bounded() {
        let mut now = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            b.record(false, now);
        }
        for _ in 0..20 {
            let Allowed::Rest(until) = b.allowed(now) else {
                panic!("resting")
            };
            assert!(until - now <= COOL_DOWN_MAX);
            now = until;
            b.record(false, now);
        }
    }
}
