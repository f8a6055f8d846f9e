//! queue::ring: one core's bounded ring. Lock-free (`ArrayQueue`); bounded in slots and in
//! payload bytes, both checked before an entry is taken.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

use super::event::Entry;

/// A core's ring had no room: no free slot, or the entry's bytes would pass the byte bound.
/// Holds the refused entry, untouched.
#[derive(Debug)]
pub struct RingFull(pub Entry);

pub struct Ring {
    slots: ArrayQueue<Entry>,
    bytes: AtomicUsize,
    bytes_max: usize,
}

impl Ring {
    pub fn new(slots: usize, bytes_max: usize) -> Ring {
        Ring {
            slots: ArrayQueue::new(slots),
            bytes: AtomicUsize::new(0),
            bytes_max,
        }
    }

    // The refused entry goes back by value: the caller frees its waiters or retries with it.
    #[allow(clippy::result_large_err)]
    pub fn push(&self, entry: Entry) -> Result<(), RingFull> {
        debug_assert!(!entry.is_empty(), "an entry holds at least one event");
        let b = entry.payload_bytes();
        // Reserve the bytes first, and only if they fit: the count never passes the bound, not
        // even for a moment (a reserve-then-undo would show readers a count over it).
        let reserved = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(b).filter(|&total| total <= self.bytes_max)
            });
        if reserved.is_err() {
            return Err(RingFull(entry));
        }
        self.slots.push(entry).map_err(|entry| {
            self.bytes.fetch_sub(b, Ordering::AcqRel);
            RingFull(entry)
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
