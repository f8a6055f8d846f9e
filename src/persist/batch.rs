//! persist::batch: the batch a persister fills. It is due when it holds `rows_max` rows or
//! `bytes_max` payload bytes, or when its first row has waited `linger`, whichever comes first.
//! Time is passed in, so every rule is tested without sleeping.

use std::time::{Duration, Instant};

use crate::queue::{Entry, Event};

/// When a batch commits. The persisters' settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    pub rows_max: usize,
    pub bytes_max: usize,
    pub linger: Duration,
}

pub struct Batch {
    limits: BatchLimits,
    events: Vec<Event>,
    bytes: usize,
    /// When the first row arrived: the age clock.
    first_at: Option<Instant>,
}

impl Batch {
    pub fn new(limits: BatchLimits) -> Batch {
        Batch {
            events: Vec::new(),
            limits,
            bytes: 0,
            first_at: None,
        }
    }

    /// Adds a ring entry taken at `now`, whole: a group (one batch request) is never split, so
    /// a batch may pass `rows_max` by less than a group.
    pub fn add(&mut self, entry: Entry, now: Instant) {
        self.first_at.get_or_insert(now);
        self.bytes += entry.payload_bytes();
        self.events.extend(entry.into_events());
    }

    /// Holds enough rows or bytes to commit at once.
    pub fn is_full(&self) -> bool {
        self.events.len() >= self.limits.rows_max || self.bytes >= self.limits.bytes_max
    }

    /// How much longer the batch may wait for more rows: zero once its first row has waited
    /// `linger` (and for an empty batch, which has nothing to wait for).
    pub fn linger_left(&self, now: Instant) -> Duration {
        self.first_at.map_or(Duration::ZERO, |first| {
            self.limits
                .linger
                .saturating_sub(now.saturating_duration_since(first))
        })
    }

    /// The batch's events, leaving it empty, without room, and with its age clock stopped.
    pub fn take(&mut self) -> Vec<Event> {
        self.bytes = 0;
        self.first_at = None;
        std::mem::take(&mut self.events)
    }

    /// Makes room for a full batch. Called once the last batch is answered and freed, so a
    /// persister never holds an empty buffer (~290 KB at 2,000 rows) beside a committing batch,
    /// and the allocation is off every event's path.
    pub fn make_room(&mut self) {
        self.events.reserve(self.limits.rows_max);
    }
}

/// How a batch PostgreSQL refused is retried to find the refused rows: one part per
/// organization when it holds several, so a tenant whose rows are all fine pays one more
/// commit and no more; a single organization's rows by halves.
pub fn split_for_retry(mut events: Vec<Event>) -> Vec<Vec<Event>> {
    let first = events[0].row.org;
    if events.iter().all(|e| e.row.org == first) {
        let right = events.split_off(events.len() / 2);
        return vec![events, right];
    }
    let mut parts: Vec<Vec<Event>> = Vec::new();
    for e in events {
        match parts.iter_mut().find(|p| p[0].row.org == e.row.org) {
            Some(part) => part.push(e),
            None => parts.push(vec![e]),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::events::EventRow;
    use crate::ids::OrgId;

    fn event(payload_bytes: usize) -> Event {
        Event::sample(payload_bytes, None)
    }

    fn limits() -> BatchLimits {
        BatchLimits {
            rows_max: 3,
            bytes_max: 1000,
            linger: Duration::from_micros(200),
        }
    }

    #[test]
    fn a_batch_is_full_at_its_row_bound() {
        let t0 = Instant::now();
        let mut b = Batch::new(limits());
        for _ in 0..2 {
            b.add(Entry::One(event(10)), t0);
        }
        assert!(!b.is_full());
        b.add(Entry::One(event(10)), t0);
        assert!(b.is_full());
        assert_eq!(b.take().len(), 3);
        assert!(!b.is_full());
        assert!(b.take().is_empty());
    }

    #[test]
    fn a_batch_is_full_at_its_byte_bound() {
        let t0 = Instant::now();
        let mut b = Batch::new(limits());
        b.add(Entry::One(event(999)), t0);
        assert!(!b.is_full());
        b.add(Entry::One(event(1)), t0);
        assert!(b.is_full());
        assert_eq!(b.take().len(), 2);
    }

    #[test]
    fn the_age_clock_starts_with_the_first_row_and_stops_at_take() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let mut b = Batch::new(limits());
        assert_eq!(
            b.linger_left(t0),
            Duration::ZERO,
            "an empty batch waits for nothing"
        );
        b.add(Entry::One(event(1)), t0 + us(50));
        b.add(Entry::One(event(1)), t0 + us(150));
        assert_eq!(b.linger_left(t0 + us(100)), us(150));
        assert_eq!(b.linger_left(t0 + us(250)), Duration::ZERO);
        assert_eq!(b.linger_left(t0 + us(900)), Duration::ZERO);
        b.take();
        b.add(Entry::One(event(1)), t0 + us(1000));
        assert_eq!(b.linger_left(t0 + us(1000)), us(200));
    }

    #[test]
    fn a_refused_batch_is_retried_per_organization_then_by_halves() {
        let orgs = [OrgId::new(), OrgId::new()];
        let events: Vec<Event> = [0, 1, 0, 1, 1]
            .iter()
            .map(|&o| Event {
                row: EventRow {
                    org: orgs[o],
                    ..Event::sample(1, None).row
                },
                ..Event::sample(1, None)
            })
            .collect();
        let ids: Vec<_> = events.iter().map(|e| e.row.id).collect();
        let parts = split_for_retry(events);
        let part_ids: Vec<Vec<_>> = parts
            .iter()
            .map(|p| p.iter().map(|e| e.row.id).collect())
            .collect();
        assert_eq!(
            part_ids,
            [vec![ids[0], ids[2]], vec![ids[1], ids[3], ids[4]]]
        );
        let halves = split_for_retry(parts.into_iter().nth(1).unwrap());
        assert_eq!(halves.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_group_is_never_split_even_past_the_row_bound() {
        let t0 = Instant::now();
        let mut b = Batch::new(limits());
        b.add(Entry::One(event(1)), t0);
        b.add(Entry::Group((0..5).map(|_| event(1)).collect()), t0);
        assert!(b.is_full());
        assert_eq!(b.take().len(), 6);
    }
}
