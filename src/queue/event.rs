//! queue::event: what crosses the seam: an event on its way to PostgreSQL, the ring entry that
//! carries it, the waiter it answers, and the outcome that travels back.

use std::time::Instant;

use crate::db::events::EventRow;
use crate::ids::EventId;
#[cfg(test)]
use crate::{db::events::JsonText, ids::OrgId};

/// One validated event on its way to PostgreSQL.
#[derive(Debug)]
pub struct Event {
    pub row: EventRow,
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

#[cfg(test)]
impl Event {
    /// A test event: a payload of `payload_bytes` spaces and a dedup_id, waiting for nobody, due
    /// by `deadline`.
    pub fn sample(payload_bytes: usize, deadline: Option<Instant>) -> Event {
        Event {
            row: EventRow {
                org: OrgId::new(),
                id: EventId::new_v7(),
                created_at: std::time::SystemTime::now(),
                kind: "sample".into(),
                dedup_id: Some("d".into()),
                payload: JsonText(vec![b' '; payload_bytes].into()),
                keep_days: 1,
            },
            waiter: None,
            enqueued_at: Instant::now(),
            deadline,
        }
    }
}

impl AsRef<EventRow> for Event {
    fn as_ref(&self) -> &EventRow {
        &self.row
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
            Entry::One(e) => e.row.payload.0.len(),
            Entry::Group(g) => g.iter().map(|e| e.row.payload.0.len()).sum(),
        }
    }

    pub fn into_events(self) -> Vec<Event> {
        match self {
            Entry::One(e) => vec![e],
            Entry::Group(g) => g,
        }
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
