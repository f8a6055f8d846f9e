//! queue::ring: one core's bounded ring. Lock-free (`ArrayQueue`); bounded in slots and in
//! payload bytes, both checked before an entry is taken. It also counts the events its entries
//! hold (a batch request is one entry of many events): the backlog persisters measure.

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
    /// Events in the queued entries. Raised before an entry lands (and lowered again if it
    /// finds no slot), lowered after it leaves, so a pop never takes away what no push added.
    events: AtomicUsize,
}

impl Ring {
    pub fn new(slots: usize, bytes_max: usize) -> Ring {
        Ring {
            slots: ArrayQueue::new(slots),
            bytes: AtomicUsize::new(0),
            bytes_max,
            events: AtomicUsize::new(0),
        }
    }

    // The refused entry goes back by value: the caller frees its waiters or retries with it.
    #[allow(clippy::result_large_err)]
    pub fn push(&self, entry: Entry) -> Result<(), RingFull> {
        debug_assert!(!entry.is_empty(), "an entry holds at least one event");
        let (b, n) = (entry.payload_bytes(), entry.len());
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
        self.events.fetch_add(n, Ordering::AcqRel);
        self.slots.push(entry).map_err(|entry| {
            self.bytes.fetch_sub(b, Ordering::AcqRel);
            self.events.fetch_sub(n, Ordering::AcqRel);
            RingFull(entry)
        })
    }

    pub fn pop(&self) -> Option<Entry> {
        let entry = self.slots.pop()?;
        self.bytes
            .fetch_sub(entry.payload_bytes(), Ordering::AcqRel);
        self.events.fetch_sub(entry.len(), Ordering::AcqRel);
        Some(entry)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Events in the queued entries (a batch request's entry holds many).
    pub fn queued_events(&self) -> usize {
        self.events.load(Ordering::Acquire)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Event;

    #[test]
    fn counts_the_events_of_its_entries_and_forgets_refused_ones() {
        let ring = Ring::new(2, 1024);
        let group = || Entry::Group((0..100).map(|_| Event::sample(1, None)).collect());
        ring.push(group()).unwrap();
        ring.push(Entry::One(Event::sample(1, None))).unwrap();
        assert_eq!(
            ring.queued_events(),
            101,
            "a batch request counts each event"
        );
        assert!(ring.push(group()).is_err(), "no free slot");
        assert!(
            Ring::new(4, 10).push(group()).is_err(),
            "over the byte bound"
        );
        assert_eq!(ring.queued_events(), 101, "a refused entry is not counted");
        assert_eq!(ring.pop().map(|e| e.len()), Some(100));
        assert_eq!(ring.queued_events(), 1);
        ring.pop().unwrap();
        assert_eq!(ring.queued_events(), 0);
    }
}
