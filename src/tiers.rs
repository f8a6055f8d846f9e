//! tiers: the plans an operator sells. A tier is a rate limit (events per minute) and a retention
//! (days an event is kept); an organization has one tier, named in its row. Imports nothing of
//! the crate.

use std::collections::BTreeMap;

/// Longest retention a tier may have, in days (the `events` partitions are listed by it, as a
/// `smallint`).
pub const RETENTION_DAYS_MAX: u16 = 32_767;

/// The longest of some retentions in days, `0` (forever) being longer than any.
pub fn longest(days: impl IntoIterator<Item = u16>) -> u16 {
    days.into_iter()
        .max_by_key(|&d| if d == 0 { u32::MAX } else { u32::from(d) })
        .unwrap_or(0)
}

/// A tier: events per minute (`None`: unlimited) and days its events are kept (`0`: forever).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    pub per_minute: Option<u64>,
    pub retention_days: u16,
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

    /// From `name = events per minute` pairs (`0`: unlimited) and `name = days` pairs (`0`:
    /// forever). Every tier needs a retention; retentions of tiers not configured are ignored,
    /// so a file that replaces the tiers may keep the default retentions.
    pub fn new(
        per_minute: BTreeMap<String, u64>,
        retention_days: &BTreeMap<String, u16>,
    ) -> Result<Tiers, String> {
        let mut tiers = Vec::with_capacity(per_minute.len());
        for (name, n) in per_minute {
            let Some(&days) = retention_days.get(&name) else {
                return Err(format!(
                    "tier `{name}` has no retention: add it to `retention`"
                ));
            };
            if days > RETENTION_DAYS_MAX {
                return Err(format!(
                    "tier `{name}` keeps events {days} days; at most {RETENTION_DAYS_MAX}"
                ));
            }
            tiers.push(Tier {
                name,
                per_minute: (n > 0).then_some(n),
                retention_days: days,
            });
        }
        if !tiers.iter().any(|t| t.name == Tiers::DEFAULT) {
            return Err(format!("must define the default tier `{}`", Tiers::DEFAULT));
        }
        Ok(Tiers(tiers))
    }

    pub fn get(&self, name: &str) -> Option<&Tier> {
        self.0.iter().find(|t| t.name == name)
    }

    /// The tier named `name`, or why there is none (naming the tiers there are).
    pub fn find(&self, name: &str) -> Result<&Tier, String> {
        self.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            format!("unknown tier `{name}`; known tiers: {}", known.join(", "))
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| t.name.as_str())
    }

    /// Days the events of an organization on tier `name` are kept. A tier no longer configured
    /// (the organization's row names it still) keeps them as long as any tier does: an
    /// operator's edit never shortens what was promised.
    pub fn retention_days(&self, name: &str) -> u16 {
        match self.get(name) {
            Some(t) => t.retention_days,
            None => self.longest_retention(),
        }
    }

    /// The longest retention of any tier (`0`: some tier keeps events forever).
    pub fn longest_retention(&self) -> u16 {
        longest(self.0.iter().map(|t| t.retention_days))
    }

    /// Every retention some tier has, each once: the classes `events` is partitioned by.
    pub fn retentions(&self) -> Vec<u16> {
        let mut days: Vec<u16> = self.0.iter().map(|t| t.retention_days).collect();
        days.sort_unstable();
        days.dedup();
        days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(pairs: &[(&str, u16)]) -> BTreeMap<String, u16> {
        pairs.iter().map(|(n, d)| (n.to_string(), *d)).collect()
    }

    #[test]
    fn tiers_need_the_default_and_a_retention_and_zero_is_unlimited() {
        let days = retention(&[("free", 1), ("pro", 7), ("unlimited", 0), ("gone", 3)]);
        let mut m = BTreeMap::from([("pro".to_string(), 1000), ("unlimited".to_string(), 0)]);
        assert!(Tiers::new(m.clone(), &days).unwrap_err().contains("free"));
        m.insert("free".into(), 100);
        let t = Tiers::new(m.clone(), &days).unwrap();
        assert_eq!(t.get("free").unwrap().per_minute, Some(100));
        assert_eq!(t.get("unlimited").unwrap().per_minute, None);
        assert!(t.get("gold").is_none());
        assert_eq!(t.names().collect::<Vec<_>>(), ["free", "pro", "unlimited"]);
        m.insert("gold".into(), 5);
        let err = Tiers::new(m, &days).unwrap_err();
        assert!(err.contains("`gold` has no retention"), "{err}");
    }

    #[test]
    fn retention_of_a_tier_no_longer_configured_is_the_longest() {
        let m = BTreeMap::from([("free".to_string(), 100), ("pro".to_string(), 1000)]);
        let t = Tiers::new(m.clone(), &retention(&[("free", 1), ("pro", 30)])).unwrap();
        assert_eq!(t.retention_days("free"), 1);
        assert_eq!(t.retention_days("platinum"), 30);
        assert_eq!(t.retentions(), [1, 30]);
        let forever = Tiers::new(m, &retention(&[("free", 1), ("pro", 0)])).unwrap();
        assert_eq!(forever.longest_retention(), 0);
        assert_eq!(longest([7, 1, 30]), 30);
        assert_eq!(longest([7, 0, 30]), 0);
        assert_eq!(longest([]), 0);
        assert_eq!(forever.retention_days("platinum"), 0);
    }
}
