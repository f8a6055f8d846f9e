//! delivery::schedule: when a failed delivery is tried again. The schedule is a list of
//! delays, one per attempt (the first is usually 0: at once); each is spread by ±20 % so that
//! deliveries failed together do not come back together. An answer's `Retry-After` (429, 503)
//! replaces the next delay, within `[RETRY_AFTER_MIN, retry_after_max]`.

use std::time::Duration;

/// A `Retry-After` shorter than this is taken as this.
const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
/// Spread of each delay: ±20 %.
const JITTER: f64 = 0.2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Delay before each attempt, the first attempt's first.
    pub delays: Vec<Duration>,
    pub retry_after_max: Duration,
}

impl Schedule {
    /// Parses `"0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h"`.
    pub fn parse(text: &str, retry_after_max: Duration) -> Result<Schedule, String> {
        let delays = text
            .split(',')
            .map(|d| humantime::parse_duration(d.trim()).map_err(|e| format!("{d:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > i16::MAX as usize {
            return Err("needs between 1 and 32767 delays".into());
        }
        Ok(Schedule {
            delays,
            retry_after_max,
        })
    }

    /// How many attempts a delivery gets.
    pub fn attempts(&self) -> usize {
        self.delays.len()
    }

    /// The wait before attempt `made + 1`, after `made` failed attempts; `None` when none is
    /// left. `retry_after`: what the last answer asked for. `unit`: a random number in [0, 1).
    pub fn next_delay(
        &self,
        made: usize,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let planned = *self.delays.get(made)?;
        if let Some(asked) = retry_after {
            return Some(asked.clamp(RETRY_AFTER_MIN, self.retry_after_max.max(RETRY_AFTER_MIN)));
        }
        Some(planned.mul_f64(1.0 + JITTER * (2.0 * unit - 1.0)))
    }
}

/// `Retry-After` as seconds or an HTTP date, as a wait from `now`.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(s) = value.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_schedule_with_jitter_and_retry_after_clamped() {
        let s = Schedule::parse("0s, 5s, 5m", Duration::from_secs(3600)).unwrap();
        assert_eq!(s.attempts(), 3);
        assert_eq!(s.next_delay(0, None, 0.9), Some(Duration::ZERO));
        assert_eq!(s.next_delay(1, None, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(s.next_delay(1, None, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(s.next_delay(3, None, 0.5), None, "no attempt left");
        let ra = |d| s.next_delay(2, Some(Duration::from_secs(d)), 0.5);
        assert_eq!(ra(0), Some(Duration::from_secs(1)));
        assert_eq!(ra(7200), Some(Duration::from_secs(3600)));
        assert!(Schedule::parse("5s, soon", Duration::ZERO).is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
