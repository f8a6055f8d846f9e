//! ratelimit::lease: an organization's ingest tokens, leased from a bucket every node shares and
//! spent here in memory, so that a tier's limit holds across the nodes of one database.
//!
//! The shared bucket (PostgreSQL's `rate_buckets`, leased from by `db::limits`) refills at the
//! tier's rate up to its burst, and a lease takes at most what it holds. A lease is
//! `per_minute / LEASES_PER_MINUTE` tokens (3 s of the rate), so the bucket sees one statement
//! per few seconds of an organization's traffic on a node. A node may spend one lease ahead of
//! what it holds (its credit): a request never waits for the database while the node has
//! credit, and a lease is started, without anyone waiting for it, once the node spends into it.
//! The tolerance follows: together the nodes admit at most one lease per node more than the
//! bucket allows (what each spent on credit that the bucket then did not have), and, while a
//! node holds leased tokens its clients no longer spend there, up to one lease per node less.
//!
//! One lease per organization is in flight on a node at a time. After a lease the node knows
//! what the bucket held: until enough can have refilled, requests are refused here without
//! asking again (a tenant flooding past its limit costs the database nothing). A request that
//! needs more than the credit (a large batch, or a node deep in debt) waits for a lease that
//! takes nothing unless the bucket holds what it needs, so a refused request strands nothing.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::bucket::{Limited, Quota, Shards, SHARD_BUCKETS_MAX};

/// A lease is this fraction of a tier's minute: 3 s of its rate.
pub const LEASES_PER_MINUTE: u64 = 20;
/// A lease in flight longer than this is taken for lost: another may start.
const LEASE_LOST_AFTER: Duration = Duration::from_secs(2);

/// A node's leased tokens for one organization.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// Below zero: spent on credit, not yet covered by a lease.
    tokens: f64,
    /// What the shared bucket held after the last lease, and when.
    shared_left: f64,
    at: Instant,
    /// A lease is in flight since then.
    leasing: Option<Instant>,
}

impl Held {
    fn new(shared_left: f64, now: Instant) -> Held {
        Held {
            tokens: 0.0,
            shared_left,
            at: now,
            leasing: None,
        }
    }
}

/// A lease to take: none unless the bucket holds `need`, up to `want`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ask {
    pub need: f64,
    pub want: f64,
}

/// What a request's tokens come to.
#[derive(Debug, PartialEq)]
pub enum Draw {
    /// Taken. With `lease`, the node spent into its credit: start that lease, waiting for
    /// nothing (`deposit` or `lease_failed` must follow).
    Taken {
        quota: Quota,
        lease: Option<Ask>,
    },
    Refused(Limited),
    /// Take this lease and wait for it, then draw again (`deposit` or `lease_failed` must
    /// follow).
    Lease(Ask),
    /// Another request's lease is in flight: draw again shortly.
    Wait,
}

pub struct Leases<K> {
    held: Shards<K, Held>,
    /// Leases taken from the shared bucket.
    pub leases: AtomicU64,
    /// Requests admitted by the node's own bucket because the shared one could not be reached
    /// in time (ingest fails open: an event refused is lost to its sender).
    pub fail_open: AtomicU64,
}

impl<K: Hash + Eq + Copy> Default for Leases<K> {
    fn default() -> Self {
        Leases {
            held: Shards::default(),
            leases: AtomicU64::new(0),
            fail_open: AtomicU64::new(0),
        }
    }
}

impl<K: Hash + Eq + Copy> Leases<K> {
    /// One lease of a tier: also the credit a node may spend ahead of its leases.
    pub fn lease_size(per_minute: u64) -> f64 {
        per_minute.div_ceil(LEASES_PER_MINUTE) as f64
    }

    /// Spends `n` tokens of `key` (on credit, if need be), refuses when even the shared bucket
    /// cannot have them yet, or says to wait for a lease.
    pub fn draw(&self, key: K, per_minute: u64, n: u64, now: Instant) -> Draw {
        let (n, credit) = (n as f64, Self::lease_size(per_minute));
        self.held.with(key, |map| {
            if map.len() >= SHARD_BUCKETS_MAX {
                // Forgotten tokens are a lease no one spends, forgotten debt one spent on
                // credit: both within the stated tolerance.
                map.retain(|_, h| h.tokens >= 1.0 || h.leasing.is_some());
            }
            // What the shared bucket holds is not known before a first lease: as much as it
            // could.
            let h = map
                .entry(key)
                .or_insert_with(|| Held::new(per_minute as f64, now));
            // The most this node could have: what it holds and the shared bucket at most
            // holds now (others only take from it).
            let could = h.tokens + shared_now(h, per_minute, now);
            if could < n {
                return Draw::Refused(Limited::short(could, n, per_minute));
            }
            let in_flight = h
                .leasing
                .is_some_and(|since| now.saturating_duration_since(since) < LEASE_LOST_AFTER);
            if h.tokens + credit >= n {
                h.tokens -= n;
                let lease = (h.tokens < 0.0 && !in_flight).then(|| {
                    h.leasing = Some(now);
                    Ask {
                        need: 0.0,
                        want: credit,
                    }
                });
                return Draw::Taken {
                    quota: Quota::of(h.tokens + shared_now(h, per_minute, now), per_minute),
                    lease,
                };
            }
            if in_flight {
                return Draw::Wait;
            }
            h.leasing = Some(now);
            let need = n - credit - h.tokens;
            Draw::Lease(Ask {
                need,
                want: need.max(credit),
            })
        })
    }

    /// Adds a lease's `granted` tokens to what `key` holds; `left` is what the shared bucket
    /// held after it.
    pub fn deposit(&self, key: K, granted: f64, left: f64, now: Instant) {
        self.leases.fetch_add(1, Ordering::Relaxed);
        self.held.with(key, |map| {
            let h = map.entry(key).or_insert_with(|| Held::new(left, now));
            h.tokens += granted;
            h.shared_left = left;
            h.at = now;
            h.leasing = None;
        });
    }

    /// The lease `draw` asked for did not happen: the next request may try again.
    pub fn lease_failed(&self, key: K) {
        self.held.with(key, |map| {
            if let Some(h) = map.get_mut(&key) {
                h.leasing = None;
            }
        });
    }
}

/// What the shared bucket can hold now at most: what it held at the last lease, refilled since.
fn shared_now(h: &Held, per_minute: u64, now: Instant) -> f64 {
    let refilled = now.saturating_duration_since(h.at).as_secs_f64() * per_minute as f64 / 60.0;
    (h.shared_left + refilled).min(per_minute as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(d: Draw) -> (Quota, Option<Ask>) {
        match d {
            Draw::Taken { quota, lease } => (quota, lease),
            other => panic!("expected tokens, got {other:?}"),
        }
    }

    #[test]
    fn a_node_spends_on_credit_while_its_lease_is_in_flight_and_no_further() {
        let l = Leases::default();
        let t0 = Instant::now();
        assert_eq!(Leases::<u32>::lease_size(60), 3.0);
        // A first request: taken on credit, and a lease started that nobody waits for.
        let (q, lease) = taken(l.draw(1u32, 60, 1, t0));
        assert_eq!(
            lease,
            Some(Ask {
                need: 0.0,
                want: 3.0
            })
        );
        assert_eq!(q.limit, 60);
        // The rest of the credit, with no second lease.
        assert_eq!(taken(l.draw(1, 60, 2, t0)).1, None);
        assert_eq!(
            l.draw(1, 60, 1, t0),
            Draw::Wait,
            "credit spent, lease in flight"
        );
        l.deposit(1, 3.0, 57.0, t0);
        assert_eq!(l.leases.load(Ordering::Relaxed), 1);
        // The lease paid the debt: the next request spends on credit again.
        let (q, lease) = taken(l.draw(1, 60, 1, t0));
        assert_eq!((q.remaining, lease.is_some()), (56, true));
        l.lease_failed(1);
        assert_eq!(
            taken(l.draw(2, 60, 1, t0)).1.map(|a| a.want),
            Some(3.0),
            "keys are apart"
        );
    }

    #[test]
    fn a_batch_beyond_the_credit_waits_for_a_lease_of_what_it_needs() {
        let l = Leases::default();
        let t0 = Instant::now();
        assert_eq!(
            l.draw(1u32, 60, 10, t0),
            Draw::Lease(Ask {
                need: 7.0,
                want: 7.0
            })
        );
        assert_eq!(l.draw(1, 60, 10, t0), Draw::Wait);
        l.deposit(1, 7.0, 53.0, t0);
        let (q, lease) = taken(l.draw(1, 60, 10, t0));
        assert_eq!(
            (q.remaining, lease.is_some()),
            (50, true),
            "3 spent on credit"
        );
    }

    #[test]
    fn once_the_shared_bucket_is_short_requests_are_refused_here_until_it_can_have_refilled() {
        let l = Leases::default();
        let t0 = Instant::now();
        assert!(matches!(l.draw(1u32, 60, 2, t0), Draw::Taken { .. }));
        // The bucket was empty: the lease took nothing, and 2 are owed.
        l.deposit(1, 0.0, 0.0, t0);
        match l.draw(1, 60, 1, t0) {
            Draw::Refused(r) => {
                assert_eq!(r.retry_after_s, 3, "2 owed and 1 asked, at 1 a second");
                assert_eq!(r.quota.remaining, 0);
            }
            other => panic!("{other:?}"),
        }
        let later = t0 + Duration::from_secs(3);
        let (_, lease) = taken(l.draw(1, 60, 1, later));
        assert!(lease.is_some(), "on credit again, with a lease");
        assert!(
            matches!(l.draw(1, 60, 1, later), Draw::Refused(_)),
            "3 owed, 3 refilled"
        );
        let a_second_on = later + Duration::from_secs(1);
        assert_eq!(l.draw(1, 60, 1, a_second_on), Draw::Wait, "no credit left");
        // A lease that never answered does not block the next one for ever.
        let lost = later + LEASE_LOST_AFTER;
        assert_eq!(
            l.draw(1, 60, 1, lost),
            Draw::Lease(Ask {
                need: 1.0,
                want: 3.0
            })
        );
    }
}
