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

mod bucket;
mod lease;

pub use bucket::{Limited, Limiter, Quota};
pub use lease::{Ask, Draw, Leases};

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
