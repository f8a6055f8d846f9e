//! queue: the seam between the cores and the persisters.
//!
//! Each core pushes accepted events into its own lock-free ring (`ArrayQueue`), bounded in slots
//! and in payload bytes; every persister drains every ring. Outcomes travel back as one message per committed batch per core
//! into that core's `Mailbox`, whose task wakes the waiting requests. Nothing here blocks: a full
//! ring is refused at once (the caller answers 503), and a parked persister is woken only when it
//! said it was going to sleep.

use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::{Poll, Waker};
use std::thread::Thread;
use std::time::{Instant, SystemTime};

use atomic_waker::AtomicWaker;
use crossbeam_queue::{ArrayQueue, SegQueue};
use slab::Slab;

use crate::ids::{EventId, OrgId};

/// One validated event on its way to PostgreSQL.
#[derive(Debug)]
pub struct Event {
    pub org: OrgId,
    pub id: EventId,
    pub created_at: SystemTime,
    pub kind: Box<str>,
    pub dedup_id: Option<Box<str>>,
    /// The payload's JSON text, checked to be an object PostgreSQL's `jsonb` accepts.
    pub payload: Box<[u8]>,
    /// Who waits for the commit; `None` in enqueued ack mode.
    pub waiter: Option<Waiter>,
    pub enqueued_at: Instant,
    /// Past this the event is answered `Unavailable` and dropped, never stored later. `None` in
    /// enqueued ack mode: the client already has its 2xx, so the event waits for PostgreSQL as
    /// long as it takes (the bounded rings refuse new events meanwhile).
    pub deadline: Option<Instant>,
}

impl Event {
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

/// What a ring slot holds: one event, or the events of one batch request, which persisters
/// never split across transactions. A group's events share their enqueue time and deadline.
#[derive(Debug)]
pub enum Entry {
    One(Event),
    Group(Vec<Event>),
}

impl Entry {
    /// The event whose times stand for the whole entry.
    pub fn head(&self) -> &Event {
        match self {
            Entry::One(e) => e,
            Entry::Group(g) => &g[0],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Entry::One(_) => 1,
            Entry::Group(g) => g.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn payload_bytes(&self) -> usize {
        match self {
            Entry::One(e) => e.payload.len(),
            Entry::Group(g) => g.iter().map(|e| e.payload.len()).sum(),
        }
    }

    pub fn into_events(self) -> Vec<Event> {
        match self {
            Entry::One(e) => vec![e],
            Entry::Group(g) => g,
        }
    }
}

/// Payload bytes one core's ring may hold: with 256 KiB events or 5 MiB batches, the slot
/// count alone would not bound memory.
pub const RING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A core's bounded ring: slots and payload bytes both have a limit.
pub struct Ring {
    slots: ArrayQueue<Entry>,
    bytes: AtomicUsize,
}

impl Ring {
    fn new(slots: usize) -> Ring {
        Ring {
            slots: ArrayQueue::new(slots),
            bytes: AtomicUsize::new(0),
        }
    }

    fn push(&self, entry: Entry) -> Result<(), RingFull> {
        debug_assert!(!entry.is_empty(), "an entry holds at least one event");
        let b = entry.payload_bytes();
        if self.bytes.fetch_add(b, Ordering::AcqRel) + b > RING_BYTES_MAX {
            self.bytes.fetch_sub(b, Ordering::AcqRel);
            return Err(RingFull);
        }
        self.slots.push(entry).map_err(|_| {
            self.bytes.fetch_sub(b, Ordering::AcqRel);
            RingFull
        })
    }

    pub fn pop(&self) -> Option<Entry> {
        let entry = self.slots.pop()?;
        self.bytes
            .fetch_sub(entry.payload_bytes(), Ordering::AcqRel);
        Some(entry)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// A request waiting on core `core` in slot `slot` of that core's `Waiters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub core: u16,
    pub slot: u32,
}

/// What became of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed as a new row.
    Committed,
    /// Its `dedup_id` was already taken by this stored event of the same organization.
    Duplicate(EventId),
    /// PostgreSQL refused the row itself (say, a number beyond `numeric`); the reason is safe to
    /// show the client.
    Rejected(String),
    /// Not stored, and never will be: PostgreSQL stayed unreachable past the event's deadline.
    Unavailable,
}

#[derive(Debug)]
pub struct Completion {
    pub slot: u32,
    pub outcome: Outcome,
}

/// A core's inbox: completions from persisters and the shutdown call.
#[derive(Default)]
pub struct Mailbox {
    queue: SegQueue<Vec<Completion>>,
    shutdown: AtomicBool,
    waker: AtomicWaker,
}

pub enum Mail {
    Completions(Vec<Completion>),
    Shutdown,
}

impl Mailbox {
    pub fn deliver(&self, completions: Vec<Completion>) {
        self.queue.push(completions);
        self.waker.wake();
    }

    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Waits for the next piece of mail. Only the core's own mail task calls it. Shutdown is
    /// reported once, after any completions already queued.
    pub async fn next(&self, shutdown_seen: bool) -> Mail {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            if let Some(batch) = self.queue.pop() {
                return Poll::Ready(Mail::Completions(batch));
            }
            if !shutdown_seen && self.shutdown.load(Ordering::Acquire) {
                return Poll::Ready(Mail::Shutdown);
            }
            Poll::Pending
        })
        .await
    }
}

/// Persisters say here when they are about to sleep; a core that has just pushed wakes one.
/// The fences pair up so that either the persister sees the new event or the core sees the
/// persister's flag (both orders are checked; neither side can miss the other).
pub struct Doorbell {
    sleepers: Vec<(AtomicBool, OnceLock<Thread>)>,
}

impl Doorbell {
    fn new(persisters: usize) -> Doorbell {
        Doorbell {
            sleepers: (0..persisters)
                .map(|_| (AtomicBool::new(false), OnceLock::new()))
                .collect(),
        }
    }

    pub fn register(&self, persister: usize) {
        let _ = self.sleepers[persister].1.set(std::thread::current());
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

/// A core's ring had no free slot.
#[derive(Debug)]
pub struct RingFull;

/// Every queue shared between cores and persisters.
pub struct Hub {
    pub rings: Vec<Ring>,
    pub mailboxes: Vec<Mailbox>,
    pub doorbell: Doorbell,
}

impl Hub {
    pub fn new(cores: usize, ring_slots: usize, persisters: usize) -> Hub {
        Hub {
            rings: (0..cores).map(|_| Ring::new(ring_slots)).collect(),
            mailboxes: (0..cores).map(|_| Mailbox::default()).collect(),
            doorbell: Doorbell::new(persisters),
        }
    }

    /// Queues an entry on `core`'s ring; a full ring refuses it.
    pub fn push(&self, core: usize, entry: Entry) -> Result<(), RingFull> {
        debug_assert!(entry.head().waiter.is_none_or(|w| w.core as usize == core));
        self.rings[core].push(entry)?;
        self.doorbell.ring();
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.rings.iter().all(|r| r.is_empty())
    }

    pub fn queued(&self) -> usize {
        self.rings.iter().map(|r| r.len()).sum()
    }
}

enum Slot {
    Waiting(Option<Waker>),
    Done(Outcome),
    /// The request stopped waiting (its connection task was dropped); free on completion.
    Abandoned,
}

/// A core's table of requests waiting for their outcome. Core-local: no locks.
#[derive(Default)]
pub struct Waiters {
    slots: RefCell<Slab<Slot>>,
}

impl Waiters {
    pub fn register(&self) -> u32 {
        let slot = self.slots.borrow_mut().insert(Slot::Waiting(None));
        u32::try_from(slot).expect("waiters are bounded by ring slots")
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
