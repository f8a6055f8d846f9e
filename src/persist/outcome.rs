//! persist::outcome: what becomes of an event, decided without I/O: the outcome a written row
//! means for its client, and which events have run out of time.

use std::collections::VecDeque;
use std::time::Instant;

use crate::db::events::{EventRow, Written};
use crate::queue::{Entry, Event, Outcome};

/// The client's outcome for `row`, which a batch write reported as `written`.
pub fn of(row: &EventRow, written: Written) -> Outcome {
    match written {
        Written::Inserted => Outcome::Committed,
        Written::Skipped {
            holder: Some(holder),
        } if holder != row.id => Outcome::Duplicate(holder),
        // Skipped and holding its own dedup_id, or skipped on its own id: an earlier attempt
        // of this batch committed it.
        Written::Skipped { .. } => Outcome::Committed,
    }
}

/// Splits `events` into those still in time at `now` and those past their deadline, which are
/// to be answered `Unavailable` and never stored.
pub fn split_expired(events: Vec<Event>, now: Instant) -> (Vec<Event>, Vec<Event>) {
    events.into_iter().partition(|e| !e.expired(now))
}

/// The same for ring entries (a group's events share one deadline): the entries still in time,
/// and the events of those past it.
pub fn split_expired_entries(
    entries: VecDeque<Entry>,
    now: Instant,
) -> (VecDeque<Entry>, Vec<Event>) {
    let (kept, expired): (VecDeque<Entry>, VecDeque<Entry>) =
        entries.into_iter().partition(|e| !e.head().expired(now));
    (
        kept,
        expired.into_iter().flat_map(Entry::into_events).collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ids::EventId;

    fn event(deadline: Option<Instant>) -> Event {
        Event::sample(2, deadline)
    }

    #[test]
    fn a_skipped_row_is_a_duplicate_only_when_another_event_holds_its_dedup_id() {
        let e = event(None);
        let other = EventId::new_v7();
        assert_eq!(of(&e.row, Written::Inserted), Outcome::Committed);
        assert_eq!(
            of(
                &e.row,
                Written::Skipped {
                    holder: Some(other)
                }
            ),
            Outcome::Duplicate(other)
        );
        // A replay finding its own row: an earlier attempt committed it.
        assert_eq!(
            of(
                &e.row,
                Written::Skipped {
                    holder: Some(e.row.id)
                }
            ),
            Outcome::Committed
        );
        assert_eq!(
            of(&e.row, Written::Skipped { holder: None }),
            Outcome::Committed
        );
    }

    #[test]
    fn events_past_their_deadline_expire_and_enqueued_ones_never_do() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let events = vec![
            event(Some(now - s)),
            event(None),
            event(Some(now + s)),
            event(Some(now)),
        ];
        let ids: Vec<EventId> = events.iter().map(|e| e.row.id).collect();
        let (kept, expired) = split_expired(events, now);
        assert_eq!(
            kept.iter().map(|e| e.row.id).collect::<Vec<_>>(),
            [ids[1], ids[2]]
        );
        assert_eq!(
            expired.iter().map(|e| e.row.id).collect::<Vec<_>>(),
            [ids[0], ids[3]]
        );

        let entries = VecDeque::from([
            Entry::Group(vec![event(Some(now - s)), event(Some(now - s))]),
            Entry::One(event(Some(now + s))),
        ]);
        let (kept, expired) = split_expired_entries(entries, now);
        assert_eq!((kept.len(), expired.len()), (1, 2));
    }
}
