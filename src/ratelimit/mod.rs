//! ratelimit: token buckets per organization (ingest, by tier) and per client address (self-serve
//! key generation), shared by every core so a limit holds however a client's connections spread.
//! A bucket holds `burst` tokens and refills at `per_minute / 60` per second, so over any window
//! an organization gets at most one burst more than its rate. Time is passed in, so the
//! arithmetic is tested without sleeping. Imports nothing of the crate.
//!
//! - `bucket`: buckets in a sharded map; taking tokens locks one shard for a few arithmetic
//!   operations and never across an `.await`.
//! - `lease`: an organization's ingest tokens leased from a bucket every node shares (kept in
//!   PostgreSQL), so a tier's limit holds across nodes; a `bucket::Limiter` is then the node's
//!   own bucket, used when the shared one cannot be reached.

use std::collections::BTreeMap;

mod bucket;
mod lease;

pub use bucket::{Limited, Limiter, Quota};
pub use lease::{Ask, Draw, Leases};

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
