//! queue: the seam between the cores and the persisters. Imports `db` (the row an event becomes)
//! and `ids`.
//!
//! - `ring`: each core pushes accepted events into its own lock-free ring, bounded in slots and
//!   in payload bytes; every persister drains every ring. A full ring is refused at once.
//! - `doorbell`: a parked persister is woken only when it said it was going to sleep; helpers
//!   only when a backlog of events builds while the lead persister is busy.
//! - `mailbox`: outcomes travel back as one message per committed batch per core.
//! - `waiters`: each core's table of requests waiting for their outcome, which also holds the
//!   storage budget: how long a request may wait for its commit.
//!
//! - `event`: what travels: events, ring entries, waiters and outcomes.
//!
//! Nothing here blocks a core. `Hub` holds every ring, mailbox and the doorbell.

mod doorbell;
mod event;
mod mailbox;
mod ring;
mod waiters;

#[cfg(test)]
mod stress;

pub use doorbell::Doorbell;
pub use event::{Completion, Entry, Event, Outcome, Waiter};
pub use mailbox::{deliver_mail, Mailbox};
pub use ring::{Ring, RingFull};
pub use waiters::Waiters;

/// Payload bytes one core's ring may hold: with 256 KiB events or 5 MiB batches, the slot
/// count alone would not bound memory.
pub const RING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Every queue shared between cores and persisters.
pub struct Hub {
    pub rings: Vec<Ring>,
    pub mailboxes: Vec<Mailbox>,
    pub doorbell: Doorbell,
}

impl Hub {
    /// Rings of `ring_slots` entries and `ring_bytes_max` payload bytes for `cores` cores, and
    /// a doorbell for `persisters` persisters whose helpers join at `help_at` queued events.
    pub fn new(
        cores: usize,
        ring_slots: usize,
        ring_bytes_max: usize,
        persisters: usize,
        help_at: usize,
    ) -> Hub {
        Hub {
            rings: (0..cores)
                .map(|_| Ring::new(ring_slots, ring_bytes_max))
                .collect(),
            mailboxes: (0..cores).map(|_| Mailbox::default()).collect(),
            doorbell: Doorbell::new(persisters, help_at),
        }
    }

    /// Queues an entry on `core`'s ring and wakes a sleeping persister if one is needed; a full
    /// ring refuses it.
    #[allow(clippy::result_large_err)]
    pub fn push(&self, core: usize, entry: Entry) -> Result<(), RingFull> {
        debug_assert!(entry.head().waiter.is_none_or(|w| w.core as usize == core));
        self.rings[core].push(entry)?;
        self.doorbell.ring(|| self.queued_events());
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.rings.iter().all(|r| r.is_empty())
    }

    /// Events the rings hold: a batch request counts for each of its events, since a backlog
    /// is measured in the rows it will cost.
    pub fn queued_events(&self) -> usize {
        self.rings.iter().map(|r| r.queued_events()).sum()
    }
}
