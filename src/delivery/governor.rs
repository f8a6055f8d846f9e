//! delivery::governor: delivery yields to ingest.
//!
//! A client waits for its event's commit; a receiver does not wait for its delivery. So when
//! the two compete for the node's CPU or its PostgreSQL, delivery gives way. Every tick the
//! sender reads how long ingest's batches took on average since the last tick, each from its
//! oldest event's arrival to its commit (persisters note them in `stats::Pulse`), and compares
//! that with the figure's own recent floor. Two slow ticks in a row halve the rate at which
//! attempts start (from the rate they were starting at); each calm tick raises it again (by a
//! share of the rate cut from, or by 5 %); a limit well above what delivery asks for is
//! lifted. A limit never goes below `RATE_MIN`, so delivery always moves; while there is one,
//! the node holds in memory only the deliveries that may start within an attempt's timeout
//! (`Hooks::give_way`), and the rest wait in the table. Those in memory were handed over at
//! commit and cost no claim: a limited delivery is not a dearer one (until this was so, a
//! limit sent every delivery through a claim, 41 µs of PostgreSQL each, and cutting the rate
//! cost ingest more than it spared it). With or without a limit, the rate may at most double
//! from one tick to the next (from `RAMP_BASE` when idle): a burst of work after a quiet spell
//! ramps up over a few ticks, and the floor is seen before delivery is at full speed.
//!
//! Slow is relative: half as slow again as the floor, plus `MARGIN_US`. A node on a distant
//! PostgreSQL has a high floor and is not held back by it; a storage stall holds delivery back
//! too, which spares PostgreSQL work while it is struggling. The mean, not the slowest batch:
//! a tick holds hundreds of batches, and its slowest is one scheduling hiccup or another at
//! any load, while the mean rises only when ingest as a whole waits.
//!
//! Slow is stricter while the host's CPUs are scarce (idle less than `SPARE_MIN` of the
//! tick): a tenth above the floor plus `SCARCE_MARGIN_US`. Then delivery's work and ingest's
//! wait for the same CPUs, and a mean a little above its floor already comes with a long
//! tail (two CPUs, 10,000 requests/s: ingest p99 8-9 ms with this rule, 20-28 ms without).
//! With CPU to spare, so small a rise is noise, and cutting on it would only make deliveries
//! late (2,000 events/s: deliveries' p99 went from 6 ms to seconds when the strict rule held
//! at any load). See results/2026-11-30-delivery-tail.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often the governor looks.
pub const TICK: Duration = Duration::from_millis(100);
/// The floor is the fastest tick of the last this many that committed anything (5 s): slow
/// means slower than ingest has just been, so a floor that has risen for reasons of its own
/// (a longer batch, a bigger table) does not hold delivery back for good.
const FLOOR_TICKS: usize = 50;
/// Slow: above the floor by half of it plus this.
const MARGIN_US: u64 = 500;
/// The host's CPUs are scarce when less than this share of their time was idle over a tick.
const SPARE_MIN: f64 = 0.4;
/// Slow while CPUs are scarce: above the floor by a tenth of it plus this.
const SCARCE_MARGIN_US: u64 = 100;
/// Slow ticks in a row that cut the rate (one slow tick is often a disk's hiccup).
const STRIKES: u32 = 2;
/// Attempts per second a limit never goes below.
const RATE_MIN: f64 = 100.0;
/// Each calm tick adds this share of the rate the last cut was made from, or multiplies the
/// limit by `GROWTH_FACTOR`, whichever is more (after many cuts, the share is small).
const GROWTH: f64 = 0.02;
const GROWTH_FACTOR: f64 = 1.05;
/// Calm ticks after which a limit above twice the rate delivery asks for is lifted.
const LIFT_TICKS: u32 = 20;
/// Attempts per second an idle delivery may start at, doubling each tick from there.
const RAMP_BASE: f64 = 1_000.0;

/// The rate attempts may start at.
pub struct Governor {
    /// Mean batch of each recent tick that committed something, in µs.
    recent: VecDeque<u64>,
    strikes: u32,
    calm: u32,
    /// Attempts per second; `None`: no limit.
    limit: Option<f64>,
    /// The rate the last cut was made from: growth steps are a share of it.
    cut_from: f64,
    /// Attempts per second started over the last tick.
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl Governor {
    pub fn new(now: Instant) -> Governor {
        Governor {
            recent: VecDeque::with_capacity(FLOOR_TICKS),
            strikes: 0,
            calm: 0,
            limit: None,
            cut_from: 0.0,
            rate: 0.0,
            tokens: 0.0,
            refilled: now,
        }
    }

    /// The limit in attempts per second, if any (the ramp aside).
    pub fn limit(&self) -> Option<f64> {
        self.limit
    }

    /// The rate attempts may start at now: the limit, and at most twice the last tick's.
    fn allowed(&self) -> f64 {
        let ramp = RAMP_BASE + 2.0 * self.rate;
        self.limit.map_or(ramp, |l| l.min(ramp))
    }

    /// One tick: `ingest_us` is ingest's mean batch since the last tick (`None`: none
    /// committed), `spare` the share of the host's CPU time left idle (`None`: unknown),
    /// `started` the attempts started over `elapsed`. Returns whether the rate was cut.
    pub fn tick(
        &mut self,
        ingest_us: Option<u64>,
        spare: Option<f64>,
        started: u64,
        elapsed: Duration,
    ) -> bool {
        let rate = started as f64 / elapsed.as_secs_f64().max(0.001);
        self.rate = rate;
        let scarce = spare.is_some_and(|s| s < SPARE_MIN);
        let slow = ingest_us.is_some_and(|us| {
            let floor = self.recent.iter().copied().min().unwrap_or(us);
            if scarce {
                us > floor + floor / 10 + SCARCE_MARGIN_US
            } else {
                us > floor + floor / 2 + MARGIN_US
            }
        });
        if let Some(us) = ingest_us {
            if self.recent.len() == FLOOR_TICKS {
                self.recent.pop_front();
            }
            self.recent.push_back(us);
        }
        if !slow {
            self.strikes = 0;
            self.calm += 1;
            if let Some(limit) = self.limit {
                let grown = (limit + self.cut_from * GROWTH).max(limit * GROWTH_FACTOR);
                self.limit = if self.calm >= LIFT_TICKS && grown > 2.0 * rate {
                    None
                } else {
                    Some(grown)
                };
            }
            return false;
        }
        self.calm = 0;
        self.strikes += 1;
        if self.strikes < STRIKES {
            return false;
        }
        self.strikes = 0;
        // Halve what was actually starting (below the limit when delivery asked for less).
        let from = self.limit.map_or(rate, |l| l.min(rate));
        self.cut_from = from;
        self.limit = Some((from / 2.0).max(RATE_MIN));
        true
    }

    /// Takes the right to start one attempt now, if the limit leaves one.
    pub fn take(&mut self, now: Instant) -> bool {
        let limit = self.allowed();
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        // At most a tick's worth saved up: a burst after a pause stays small.
        self.tokens = (self.tokens + dt * limit).min(limit * TICK.as_secs_f64());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When `take` may next succeed.
    pub fn next_start(&self, now: Instant) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        now + Duration::from_secs_f64(missing / self.allowed())
    }
}

/// The share of the host's CPU time left idle, from one reading to the next (Linux's
/// `/proc/stat`; `None` where it cannot be read, and at the first reading).
#[derive(Default)]
pub struct Spare {
    last: Option<(u64, u64)>,
}

impl Spare {
    pub fn read(&mut self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let now = idle_and_total(&stat)?;
        let last = self.last.replace(now)?;
        let total = now.1.checked_sub(last.1).filter(|&t| t > 0)?;
        Some(now.0.saturating_sub(last.0) as f64 / total as f64)
    }
}

/// Idle (and waiting for I/O) and total ticks of all CPUs, from `/proc/stat`'s first line.
fn idle_and_total(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is within user and nice).
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    let total = ticks.iter().take(8).sum();
    Some((idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = TICK;
    /// The host's CPUs mostly idle, and mostly busy.
    const PLENTY: Option<f64> = Some(0.8);
    const SCARCE: Option<f64> = Some(0.2);

    fn calm(g: &mut Governor, ticks: usize, ingest_us: Option<u64>, started: u64) {
        for _ in 0..ticks {
            assert!(!g.tick(ingest_us, PLENTY, started, T));
        }
    }

    #[test]
    fn a_node_whose_ingest_stays_at_its_floor_sets_no_limit() {
        let mut g = Governor::new(Instant::now());
        calm(&mut g, 100, Some(2_000), 1_000);
        // Up to half as slow again plus the margin is not slow.
        calm(&mut g, 10, Some(3_500), 1_000);
        assert_eq!(g.limit(), None);
        // Only the ramp: twice the 10,000/s started, plus the base, a tick's worth at once.
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!((0..5_000).take_while(|_| g.take(later)).count(), 2_100);
    }

    #[test]
    fn an_idle_delivery_ramps_up_from_the_base_doubling_each_tick() {
        let t0 = Instant::now();
        let mut g = Governor::new(t0);
        let mut at = t0;
        let mut started = Vec::new();
        for _ in 0..5 {
            let tick_end = at + T;
            let mut n = 0;
            // Asks for far more than it may start, every millisecond of the tick.
            while at < tick_end {
                at += Duration::from_millis(1);
                while g.take(at) {
                    n += 1;
                }
            }
            started.push(n);
            g.tick(Some(2_000), PLENTY, n, T);
        }
        // 1,000/s, then 1,000 + twice the last rate: 3,000/s, 7,000/s, ... (a tick of each,
        // within a token of rounding).
        let per_tick: Vec<u64> = [100, 300, 700, 1_500, 3_100].to_vec();
        for (got, want) in started.iter().zip(per_tick) {
            assert!(got.abs_diff(want) <= 1, "{started:?}");
        }
    }

    #[test]
    fn two_slow_ticks_in_a_row_halve_the_rate_that_was_starting_and_one_does_not() {
        let mut g = Governor::new(Instant::now());
        calm(&mut g, 50, Some(2_000), 1_000); // 10,000 attempts/s
        assert!(!g.tick(Some(5_000), PLENTY, 1_000, T));
        calm(&mut g, 1, Some(2_000), 1_000);
        assert!(!g.tick(Some(5_000), PLENTY, 1_000, T));
        assert_eq!(g.limit(), None);
        assert!(g.tick(Some(5_000), PLENTY, 1_000, T));
        assert_eq!(g.limit(), Some(5_000.0));
        // Still slow: halved again from what the limit let start.
        assert!(!g.tick(Some(5_000), PLENTY, 500, T));
        assert!(g.tick(Some(5_000), PLENTY, 500, T));
        assert_eq!(g.limit(), Some(2_500.0));
    }

    #[test]
    fn calm_ticks_grow_the_limit_back_and_lift_it_once_far_above_demand() {
        let mut g = Governor::new(Instant::now());
        calm(&mut g, 50, Some(2_000), 1_000);
        g.tick(Some(5_000), PLENTY, 1_000, T);
        g.tick(Some(5_000), PLENTY, 1_000, T);
        assert_eq!(g.limit(), Some(5_000.0));
        // 5 % a tick (more than 2 % of 10,000 here); lifted once calm for 20 ticks and above
        // twice the 1,000/s now asked for.
        g.tick(Some(2_000), PLENTY, 500, T);
        assert_eq!(g.limit(), Some(5_250.0));
        calm(&mut g, 18, Some(2_000), 100);
        assert!(g.limit().is_some());
        calm(&mut g, 1, Some(2_000), 100);
        assert_eq!(g.limit(), None);
    }

    #[test]
    fn a_slowdown_while_delivery_is_idle_leaves_it_the_minimum_rate() {
        let mut g = Governor::new(Instant::now());
        calm(&mut g, 50, Some(2_000), 0);
        g.tick(Some(50_000), PLENTY, 0, T);
        assert!(g.tick(Some(50_000), PLENTY, 0, T));
        assert_eq!(g.limit(), Some(RATE_MIN));
    }

    #[test]
    fn ticks_without_commits_neither_count_as_slow_nor_move_the_floor() {
        let mut g = Governor::new(Instant::now());
        calm(&mut g, 10, Some(2_000), 1_000);
        calm(&mut g, 100, None, 1_000);
        // The floor is still 2 ms, so 4 ms is slow.
        g.tick(Some(4_000), PLENTY, 1_000, T);
        assert!(g.tick(Some(4_000), PLENTY, 1_000, T));
    }

    #[test]
    fn the_limit_meters_starts_without_bursting() {
        let t0 = Instant::now();
        let mut g = Governor::new(t0);
        calm(&mut g, 50, Some(2_000), 200); // 2,000/s
        g.tick(Some(5_000), PLENTY, 200, T);
        g.tick(Some(5_000), PLENTY, 200, T);
        assert_eq!(g.limit(), Some(1_000.0));
        // After a long pause only a tick's worth (100) may start at once.
        let later = t0 + Duration::from_secs(10);
        let burst = (0..1_000).take_while(|_| g.take(later)).count();
        assert_eq!(burst, 100);
        assert!(!g.take(later));
        let next = g.next_start(later);
        assert!(next > later && next <= later + Duration::from_millis(1));
        assert!(g.take(later + Duration::from_millis(2)));
    }

    #[test]
    fn while_cpus_are_scarce_a_smaller_rise_is_slow() {
        let mut g = Governor::new(Instant::now());
        calm(&mut g, 50, Some(2_000), 1_000);
        // 2,400 µs: slow only while CPUs are scarce (above 2,000 + 200 + 100).
        assert!(!g.tick(Some(2_400), PLENTY, 1_000, T));
        assert!(!g.tick(Some(2_400), PLENTY, 1_000, T));
        assert_eq!(g.limit(), None);
        assert!(!g.tick(Some(2_250), SCARCE, 1_000, T));
        assert!(!g.tick(Some(2_400), SCARCE, 1_000, T));
        assert!(g.tick(Some(2_400), SCARCE, 1_000, T));
        assert_eq!(g.limit(), Some(5_000.0));
        // Unknown spare CPU: the relaxed rule.
        assert!(!g.tick(Some(2_400), None, 500, T));
        assert!(!g.tick(Some(2_400), None, 500, T));
    }

    #[test]
    fn spare_cpu_is_the_idle_share_of_all_cpus_ticks() {
        let a = "cpu  100 10 50 800 40 0 0 0 0 0\ncpu0 50 5 25 400 20 0 0 0 0 0\n";
        let b = "cpu  130 10 60 850 50 0 0 0 0 0\ncpu0 65 5 30 425 25 0 0 0 0 0\n";
        let (idle_a, total_a) = idle_and_total(a).unwrap();
        let (idle_b, total_b) = idle_and_total(b).unwrap();
        assert_eq!((idle_a, total_a), (840, 1_000));
        // 60 of 100 ticks idle or waiting for I/O.
        assert_eq!((idle_b - idle_a, total_b - total_a), (60, 100));
        assert_eq!(idle_and_total("intr 1 2 3\n"), None);
        let mut spare = Spare::default();
        // The first reading has nothing to compare with; on Linux the next one does.
        assert_eq!(spare.read(), None);
        std::thread::sleep(Duration::from_millis(30));
        if cfg!(target_os = "linux") {
            let share = spare.read().expect("a second reading");
            assert!((0.0..=1.0).contains(&share), "{share}");
        }
    }
}
