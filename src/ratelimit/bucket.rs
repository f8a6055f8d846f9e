//! ratelimit::bucket: token buckets in a sharded map, and what a draw on one tells the client.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::Instant;

/// Shards of the bucket map: enough that cores rarely meet on one lock.
const SHARDS: usize = 64;
/// Buckets per shard before idle ones are swept (a full bucket carries no state worth keeping).
pub(super) const SHARD_BUCKETS_MAX: usize = 16_384;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The state a client is told in the rate-limit headers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_s: u64,
}

impl Quota {
    /// What a client is told when `tokens` are there for it, of a bucket of `per_minute`.
    pub(super) fn of(tokens: f64, per_minute: u64) -> Quota {
        let burst = per_minute as f64;
        let tokens = tokens.min(burst);
        Quota {
            limit: per_minute,
            remaining: tokens.max(0.0).floor() as u64,
            reset_s: ((burst - tokens) / (burst / 60.0)).ceil().max(0.0) as u64,
        }
    }
}

/// Refused: retry after this many seconds (at least 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limited {
    pub quota: Quota,
    pub retry_after_s: u64,
}

impl Limited {
    /// Refused with `tokens` there for the client, `n` asked, of a bucket of `per_minute`:
    /// retry once the rest can have refilled.
    pub(super) fn short(tokens: f64, n: f64, per_minute: u64) -> Limited {
        let per_second = per_minute as f64 / 60.0;
        Limited {
            quota: Quota::of(tokens, per_minute),
            retry_after_s: ((n - tokens) / per_second).ceil().max(1.0) as u64,
        }
    }
}

/// A map split into `SHARDS` locks, so that cores rarely meet on one.
pub(super) struct Shards<K, V> {
    shards: Vec<Mutex<HashMap<K, V>>>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Copy, V> Default for Shards<K, V> {
    fn default() -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl<K: Hash + Eq + Copy, V> Shards<K, V> {
    /// Runs `f` on the shard that holds `key`, with its lock held.
    pub(super) fn with<R>(&self, key: K, f: impl FnOnce(&mut HashMap<K, V>) -> R) -> R {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        f(&mut shard.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

pub struct Limiter<K> {
    buckets: Shards<K, Bucket>,
}

impl<K: Hash + Eq + Copy> Default for Limiter<K> {
    fn default() -> Self {
        Limiter {
            buckets: Shards::default(),
        }
    }
}

impl<K: Hash + Eq + Copy> Limiter<K> {
    /// Takes `n` tokens from `key`'s bucket of `per_minute` (also its burst). All or nothing.
    pub fn take(&self, key: K, per_minute: u64, n: u64, now: Instant) -> Result<Quota, Limited> {
        self.draw(key, per_minute, n, true, now)
    }

    /// Whether `n` tokens could be taken now, taking none: for costs known only afterwards
    /// (check first, `take` once the cost is known).
    pub fn check(&self, key: K, per_minute: u64, n: u64, now: Instant) -> Result<Quota, Limited> {
        self.draw(key, per_minute, n, false, now)
    }

    /// Takes as many of `n` tokens as `key`'s bucket holds, at least one: how many it took.
    pub fn take_up_to(
        &self,
        key: K,
        per_minute: u64,
        n: u64,
        now: Instant,
    ) -> Result<(u64, Quota), Limited> {
        let available = self.check(key, per_minute, 1, now)?.remaining.max(1);
        let n = n.clamp(1, available);
        self.take(key, per_minute, n, now).map(|q| (n, q))
    }

    /// Puts back `n` tokens taken and not spent (never past the burst).
    pub fn give_back(&self, key: K, per_minute: u64, n: u64) {
        let burst = per_minute as f64;
        self.buckets.with(key, |map| {
            if let Some(b) = map.get_mut(&key) {
                b.tokens = (b.tokens + n as f64).min(burst);
            }
        });
    }

    fn draw(
        &self,
        key: K,
        per_minute: u64,
        n: u64,
        take: bool,
        now: Instant,
    ) -> Result<Quota, Limited> {
        let (n, burst) = (n as f64, per_minute as f64);
        let per_second = burst / 60.0;
        self.buckets.with(key, |map| {
            if map.len() >= SHARD_BUCKETS_MAX {
                // Buckets that have refilled to the brim are indistinguishable from new ones.
                map.retain(|_, b| {
                    b.tokens + now.duration_since(b.at).as_secs_f64() * per_second < burst
                });
            }
            let b = map.entry(key).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * per_second).min(burst);
            b.at = now;
            if b.tokens < n {
                return Err(Limited::short(b.tokens, n, per_minute));
            }
            if take {
                b.tokens -= n;
            }
            Ok(Quota::of(b.tokens, per_minute))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_gives_its_burst_then_refills_at_its_rate() {
        let l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..60 {
            let q = l.take(1u32, 60, 1, t0).unwrap();
            assert_eq!(q.remaining, 59 - i);
        }
        let refused = l.take(1, 60, 1, t0).unwrap_err();
        assert_eq!(refused.retry_after_s, 1);
        assert_eq!(refused.quota.remaining, 0);
        // One token per second comes back.
        assert!(l.take(1, 60, 1, t0 + Duration::from_millis(1000)).is_ok());
        assert!(l.take(1, 60, 1, t0 + Duration::from_millis(1500)).is_err());
        // After a full window the burst is back, and never more than the burst.
        let later = t0 + Duration::from_secs(600);
        assert_eq!(l.take(1, 60, 60, later).unwrap().remaining, 0);
        assert!(l.take(1, 60, 1, later).is_err());
    }

    #[test]
    fn check_tells_what_take_would_do_and_takes_nothing() {
        let l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", 2, 1, t0).is_ok());
        }
        l.take("a", 2, 2, t0).unwrap();
        let refused = l.check("a", 2, 1, t0).unwrap_err();
        assert_eq!(refused.retry_after_s, 30);
        assert!(l.take("a", 2, 1, t0).is_err());
    }

    #[test]
    fn up_to_takes_what_is_there_and_what_is_given_back_comes_back() {
        let l = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(l.take_up_to("a", 100, 30, t0).unwrap().0, 30);
        assert_eq!(l.take_up_to("a", 100, 500, t0).unwrap().0, 70);
        assert!(l.take_up_to("a", 100, 1, t0).is_err());
        l.give_back("a", 100, 20);
        assert_eq!(l.take_up_to("a", 100, 500, t0).unwrap().0, 20);
        l.give_back("a", 100, 1000);
        assert_eq!(
            l.take_up_to("a", 100, 500, t0).unwrap().0,
            100,
            "never past the burst"
        );
    }

    #[test]
    fn many_tokens_at_once_are_all_or_nothing_and_keys_are_apart() {
        let l = Limiter::default();
        let t0 = Instant::now();
        assert!(l.take("a", 100, 101, t0).is_err());
        assert_eq!(l.take("a", 100, 100, t0).unwrap().remaining, 0);
        let r = l.take("a", 100, 10, t0).unwrap_err();
        assert_eq!(r.retry_after_s, 6); // 10 tokens at 100/min
        assert_eq!(l.take("b", 100, 1, t0).unwrap().remaining, 99);
    }
}
