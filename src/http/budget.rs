//! http::budget: the node's one bound on the memory that request and response bodies hold.
//!
//! Each connection is already bounded (its route's body limit, the write timeout); this bounds
//! them all together, across cores: 50 clients each sending a 5 MiB batch slowly would
//! otherwise hold 250 MB. A body of up to `FREE_BYTES` is not counted: every connection may
//! hold that much, so small events always pass. A larger body is counted in full for as long
//! as it is held, through a `Lease`; when the budget cannot cover it, the request is answered
//! 503 with `Retry-After` instead of being read (or, for a response, built).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bodies up to this size are not counted.
pub const FREE_BYTES: usize = 64 * 1024;

/// Bytes of bodies above `FREE_BYTES` held across the node, and the most it may hold.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// An empty lease, to be resized as its body grows.
    fn lease(self: &Arc<Self>) -> Lease {
        Lease {
            budget: self.clone(),
            counted: 0,
        }
    }

    /// Makes `lease` cover a body of `bytes` (see `Lease::resize`), taking a lease only once
    /// the body is large enough to count: the common small body touches nothing shared.
    #[must_use]
    pub fn cover(self: &Arc<Self>, lease: &mut Option<Lease>, bytes: usize) -> bool {
        match lease {
            None if bytes <= FREE_BYTES => true,
            held => held.get_or_insert_with(|| self.lease()).resize(bytes),
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// The part of the budget one body holds; given back when dropped. `Send`, so a query thread
/// can grow it while it reads a page.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<Budget>,
    counted: usize,
}

impl Lease {
    /// Makes the lease cover a body of `bytes`. Shrinking always succeeds; growing fails,
    /// changing nothing, when the node's budget cannot cover it.
    #[must_use]
    pub fn resize(&mut self, bytes: usize) -> bool {
        let want = if bytes <= FREE_BYTES { 0 } else { bytes };
        let held = &self.budget.held;
        if want <= self.counted {
            held.fetch_sub(self.counted - want, Ordering::Relaxed);
            self.counted = want;
            return true;
        }
        let more = want - self.counted;
        let grew = held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
            now.checked_add(more).filter(|n| *n <= self.budget.max)
        });
        if grew.is_ok() {
            self.counted = want;
        }
        grew.is_ok()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_are_free_and_large_ones_count_in_full_until_dropped() {
        let budget = Budget::new(10 * FREE_BYTES);
        let mut small = budget.lease();
        assert!(small.resize(FREE_BYTES));
        assert_eq!(budget.held(), 0);
        let mut lazy = None;
        assert!(budget.cover(&mut lazy, FREE_BYTES));
        assert!(lazy.is_none(), "a small body takes no lease");
        assert!(budget.cover(&mut lazy, 2 * FREE_BYTES));
        assert_eq!(budget.held(), 2 * FREE_BYTES);
        drop(lazy);
        let mut a = budget.lease();
        assert!(a.resize(6 * FREE_BYTES));
        assert_eq!(budget.held(), 6 * FREE_BYTES);
        let mut b = budget.lease();
        // Past the budget: refused, nothing changes.
        assert!(!b.resize(5 * FREE_BYTES));
        assert_eq!((budget.held(), b.counted), (6 * FREE_BYTES, 0));
        assert!(b.resize(4 * FREE_BYTES));
        assert_eq!(budget.held(), 10 * FREE_BYTES);
        // Small bodies still pass when the budget is spent.
        assert!(small.resize(FREE_BYTES));
        // Shrinking gives back; shrinking under the free size gives back everything.
        assert!(a.resize(2 * FREE_BYTES));
        assert_eq!(budget.held(), 6 * FREE_BYTES);
        assert!(a.resize(10));
        assert_eq!(budget.held(), 4 * FREE_BYTES);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn concurrent_leases_never_exceed_the_budget() {
        let budget = Budget::new(100 * FREE_BYTES);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut granted = 0;
                    for i in 0..10_000 {
                        let mut lease = budget.lease();
                        if lease.resize((2 + (i + t) % 7) * FREE_BYTES) {
                            granted += 1;
                            assert!(budget.held() <= budget.max());
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(
            granted, 40_000,
            "the budget fits four of the largest leases"
        );
        assert_eq!(budget.held(), 0);
    }
}
