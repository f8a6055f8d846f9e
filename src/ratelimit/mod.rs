//! ratelimit: token buckets per organization (ingest, by tier) and per client address (self-serve
//! key generation), shared by every core so a limit holds however a client's connections spread.
//!
//! Buckets live in a sharded map; taking tokens locks one shard for a few arithmetic
//! operations and never across an `.await`. A bucket holds `burst` tokens and refills at
//! `per_minute / 60` per second, so over any window an organization gets at most one burst more
//! than its rate. Time is passed in, so the arithmetic is tested without sleeping. Imports
//! nothing of the crate.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::Instant;

/// Shards of the bucket map: enough that cores rarely meet on one lock.
const SHARDS: usize = 64;
/// Buckets per shard before idle ones are swept (a full bucket carries no state worth keeping).
const SHARD_BUCKETS_MAX: usize = 16_384;

/// A rate-limit tier: events per minute; `None` is unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    pub per_minute: Option<u64>,
}

impl Tier {
    /// Events per minute, unlimited highest: how tiers are ordered.
    pub fn rate(&self) -> u64 {
        self.per_minute.unwrap_or(u64::MAX)
    }
}

/// The tiers an operator configured, by name. Always holds `Tiers::DEFAULT`.
#[derive(Clone, Debug)]
pub struct Tiers(Vec<Tier>);

impl Tiers {
    /// The tier of an organization created without naming one.
    pub const DEFAULT: &'static str = "free";

    /// From `name = events per minute` pairs, `0` meaning unlimited.
    pub fn new(per_minute: BTreeMap<String, u64>) -> Result<Tiers, String> {
        let tiers: Vec<Tier> = per_minute
            .into_iter()
            .map(|(name, n)| Tier {
                name,
                per_minute: (n > 0).then_some(n),
            })
            .collect();
        if !tiers.iter().any(|t| t.name == Tiers::DEFAULT) {
            return Err(format!("must define the default tier `{}`", Tiers::DEFAULT));
        }
        Ok(Tiers(tiers))
    }

    pub fn get(&self, name: &str) -> Option<&Tier> {
        self.0.iter().find(|t| t.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| t.name.as_str())
    }
}

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

/// Refused: retry after this many seconds (at least 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limited {
    pub quota: Quota,
    pub retry_after_s: u64,
}

pub struct Limiter<K> {
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Copy> Default for Limiter<K> {
    fn default() -> Self {
        Limiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
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

    fn draw(
        &self,
        key: K,
        per_minute: u64,
        n: u64,
        take: bool,
        now: Instant,
    ) -> Result<Quota, Limited> {
        let burst = per_minute as f64;
        let per_second = per_minute as f64 / 60.0;
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
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
        let quota = |tokens: f64| Quota {
            limit: per_minute,
            remaining: tokens.max(0.0).floor() as u64,
            reset_s: ((burst - tokens) / per_second).ceil().max(0.0) as u64,
        };
        if b.tokens >= n as f64 {
            if take {
                b.tokens -= n as f64;
            }
            Ok(quota(b.tokens))
        } else {
            let short = n as f64 - b.tokens;
            Err(Limited {
                quota: quota(b.tokens),
                retry_after_s: (short / per_second).ceil().max(1.0) as u64,
            })
        }
    }
}

/// A quota's headers: the `X-RateLimit-*` trio clients of the earlier implementations read, and
/// the IETF pair (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy` and `RateLimit`).
pub fn headers(policy: &str, q: &Quota) -> [(&'static str, String); 5] {
    [
        ("x-ratelimit-limit", q.limit.to_string()),
        ("x-ratelimit-remaining", q.remaining.to_string()),
        ("x-ratelimit-reset", q.reset_s.to_string()),
        (
            "ratelimit-policy",
            format!("\"{policy}\";q={};w=60", q.limit),
        ),
        (
            "ratelimit",
            format!("\"{policy}\";r={};t={}", q.remaining, q.reset_s),
        ),
    ]
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
    fn many_tokens_at_once_are_all_or_nothing_and_keys_are_apart() {
        let l = Limiter::default();
        let t0 = Instant::now();
        assert!(l.take("a", 100, 101, t0).is_err());
        assert_eq!(l.take("a", 100, 100, t0).unwrap().remaining, 0);
        let r = l.take("a", 100, 10, t0).unwrap_err();
        assert_eq!(r.retry_after_s, 6); // 10 tokens at 100/min
        assert_eq!(l.take("b", 100, 1, t0).unwrap().remaining, 99);
    }

    #[test]
    fn tiers_need_the_default_and_zero_is_unlimited() {
        let mut m = BTreeMap::from([("pro".to_string(), 1000), ("unlimited".to_string(), 0)]);
        assert!(Tiers::new(m.clone()).unwrap_err().contains("free"));
        m.insert("free".into(), 100);
        let t = Tiers::new(m).unwrap();
        assert_eq!(t.get("free").unwrap().per_minute, Some(100));
        assert_eq!(t.get("unlimited").unwrap().per_minute, None);
        assert!(t.get("gold").is_none());
        assert_eq!(t.names().collect::<Vec<_>>(), ["free", "pro", "unlimited"]);
    }

    #[test]
    fn headers_carry_both_conventions() {
        let h = headers(
            "free",
            &Quota {
                limit: 100,
                remaining: 7,
                reset_s: 56,
            },
        );
        assert_eq!(h[0], ("x-ratelimit-limit", "100".into()));
        assert_eq!(h[3].1, "\"free\";q=100;w=60");
        assert_eq!(h[4].1, "\"free\";r=7;t=56");
    }
}
