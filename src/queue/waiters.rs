//! queue::waiters: one core's table of requests waiting for their events' outcomes, and the
//! storage budget: the one place that knows how long a request may wait for its commit.
//!
//! Core-local: a `RefCell`, never borrowed across an `.await`. A request registers a slot
//! before its event is queued; the core's mail task completes it; the request takes the
//! outcome. A request dropped while waiting (its connection went away) leaves its slot
//! abandoned, freed when the outcome arrives.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use super::event::{Completion, Outcome, Waiter};

/// Extra wait on top of the storage budget before a core stops waiting for a persister on its
/// own. Persisters answer every event by its deadline; this only guards against a persister
/// stuck inside one database call.
const WAIT_GRACE: Duration = Duration::from_secs(5);

enum Slot {
    Waiting(Option<Waker>),
    Done(Outcome),
    /// The request stopped waiting (its connection task was dropped); free on completion.
    Abandoned,
}

pub struct Waiters {
    core: u16,
    /// Longest an event waits for its commit; past it the persisters answer `Unavailable` and
    /// drop the event.
    storage_wait: Duration,
    slots: RefCell<Slab<Slot>>,
}

impl Waiters {
    pub fn new(core: usize, storage_wait: Duration) -> Waiters {
        Waiters {
            core: u16::try_from(core).expect("cores are bounded by config"),
            storage_wait,
            slots: RefCell::new(Slab::new()),
        }
    }

    /// A slot for an event queued at `now`, and the event's deadline.
    pub fn register(&self, now: Instant) -> (Waiter, Instant) {
        let slot = self.slots.borrow_mut().insert(Slot::Waiting(None));
        let waiter = Waiter {
            core: self.core,
            slot: u32::try_from(slot).expect("waiters are bounded by ring slots"),
        };
        (waiter, now + self.storage_wait)
    }

    /// Gives up a slot whose event never reached a ring.
    pub fn cancel(&self, slot: u32) {
        self.slots.borrow_mut().remove(slot as usize);
    }

    pub fn complete(&self, c: Completion) {
        let mut slots = self.slots.borrow_mut();
        let Some(entry) = slots.get_mut(c.slot as usize) else {
            debug_assert!(false, "completion for a free slot {}", c.slot);
            return;
        };
        match std::mem::replace(entry, Slot::Done(c.outcome)) {
            Slot::Waiting(waker) => {
                if let Some(w) = waker {
                    w.wake();
                }
            }
            Slot::Abandoned => {
                slots.remove(c.slot as usize);
            }
            Slot::Done(_) => debug_assert!(false, "slot {} completed twice", c.slot),
        }
    }

    pub async fn wait(&self, slot: u32) -> Outcome {
        let mut guard = AbandonOnDrop {
            waiters: self,
            slot: Some(slot),
        };
        poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            match &mut slots[slot as usize] {
                Slot::Waiting(w) => {
                    if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *w = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                Slot::Done(_) => {
                    let Slot::Done(outcome) = slots.remove(slot as usize) else {
                        unreachable!()
                    };
                    guard.slot = None;
                    Poll::Ready(outcome)
                }
                Slot::Abandoned => unreachable!("a slot is abandoned only by its waiter"),
            }
        })
        .await
    }

    /// The outcomes of `slots`, in order. Persisters answer every event by its deadline; the
    /// overall bound only guards against a persister stuck inside one database call.
    pub async fn outcomes(&self, slots: &[u32]) -> Vec<Outcome> {
        let all = async {
            let mut out = Vec::with_capacity(slots.len());
            for &slot in slots {
                out.push(self.wait(slot).await);
            }
            out
        };
        match monoio::time::timeout(self.storage_wait + WAIT_GRACE, all).await {
            Ok(out) => out,
            Err(_) => {
                tracing::error!(
                    core = self.core,
                    "no outcome from the persisters within the storage budget"
                );
                vec![Outcome::Unavailable; slots.len()]
            }
        }
    }

    /// Slots in use: waiting, done but not taken, or abandoned.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct AbandonOnDrop<'a> {
    waiters: &'a Waiters,
    slot: Option<u32>,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot else { return };
        let mut slots = self.waiters.slots.borrow_mut();
        if matches!(slots[slot as usize], Slot::Done(_)) {
            slots.remove(slot as usize);
        } else {
            slots[slot as usize] = Slot::Abandoned;
        }
    }
}
