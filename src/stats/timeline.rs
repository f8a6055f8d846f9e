//! stats::timeline: a node's recent figures, a point a second, for the dashboard.
//!
//! A point is what happened between two samples: the rate of each count, the percentiles of
//! what each histogram gained (the difference of two cumulative histograms, so a point shows
//! that second's latencies, not the average since start), and each level as sampled.
//!
//! Sampling is lazy: whoever reads the timeline takes a sample when the last one is a step old,
//! so a node nobody watches does no work for it. A sample after a gap longer than `GAP` starts
//! afresh rather than draw minutes as one point. The last `POINTS` points are kept.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Time between points.
pub const STEP: Duration = Duration::from_secs(1);
/// A sample this close to the last one is not due: a poller a little early still gets a point
/// a step.
const EARLY: Duration = Duration::from_millis(100);
/// A longer wait between samples starts the timeline afresh.
const GAP: Duration = Duration::from_secs(5);
/// Points kept: five minutes.
pub const POINTS: usize = 300;

/// A node's figures at one moment, by name.
pub struct Sample {
    pub at: Instant,
    /// Counts since start: a point shows their rate.
    pub counts: Vec<(&'static str, u64)>,
    /// Histograms since start: a point shows the percentiles of what they gained.
    pub histograms: Vec<(&'static str, Histogram<u64>)>,
    /// Levels: a point shows them as sampled.
    pub levels: Vec<(String, f64)>,
}

/// Percentiles of the values one histogram gained during a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl Percentiles {
    /// `None` for a histogram that holds nothing.
    fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        let q = |p: f64| h.value_at_quantile(p);
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p99_9: q(0.999),
            max: h.max(),
        })
    }
}

/// What happened between two samples.
#[derive(Clone, Debug)]
pub struct Point {
    /// Seconds from the node's start to the sample that ends the point, in whole milliseconds.
    pub t: f64,
    /// That sample's wall-clock time, in seconds since the Unix epoch.
    pub unix_s: f64,
    /// Seconds the point covers.
    pub dt: f64,
    /// Per second.
    pub rates: Vec<(&'static str, f64)>,
    /// `None`: nothing was recorded during the point.
    pub latencies: Vec<(&'static str, Option<Percentiles>)>,
    pub levels: Vec<(String, f64)>,
}

pub struct Timeline {
    started: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last: Option<Sample>,
    points: VecDeque<Point>,
}

impl Timeline {
    /// The timeline of a node started at `started`.
    pub fn new(started: Instant) -> Timeline {
        Timeline {
            started,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a sample taken at `now` would be kept: there is none yet, or the last is a step
    /// old. Asked before taking one, which costs a merge of every recorder.
    pub fn due(&self, now: Instant) -> bool {
        Self::due_after(self.inner().last.as_ref(), now)
    }

    fn due_after(last: Option<&Sample>, now: Instant) -> bool {
        last.is_none_or(|last| now.saturating_duration_since(last.at) + EARLY >= STEP)
    }

    /// Adds `sample` (taken at `sample.at`): a point from the last sample to it, or a fresh
    /// start when there is none or it is older than `GAP`. A sample that is not due (another
    /// reader took one meanwhile) is dropped.
    pub fn add(&self, sample: Sample) {
        let mut inner = self.inner();
        if !Self::due_after(inner.last.as_ref(), sample.at) {
            return;
        }
        let point = inner
            .last
            .as_ref()
            .filter(|last| sample.at.saturating_duration_since(last.at) <= GAP)
            .map(|last| self.point(last, &sample));
        if let Some(point) = point {
            if inner.points.len() == POINTS {
                inner.points.pop_front();
            }
            inner.points.push_back(point);
        }
        inner.last = Some(sample);
    }

    fn point(&self, last: &Sample, now: &Sample) -> Point {
        let dt = now.at.saturating_duration_since(last.at).as_secs_f64();
        let before = |name: &str| last.counts.iter().find(|(n, _)| *n == name).map(|c| c.1);
        let rates = now
            .counts
            .iter()
            .map(|&(name, count)| {
                let gained = count.saturating_sub(before(name).unwrap_or(0));
                (name, gained as f64 / dt)
            })
            .collect();
        let latencies = now
            .histograms
            .iter()
            .map(|(name, h)| {
                let mut gained = h.clone();
                let earlier = last.histograms.iter().find(|(n, _)| n == name);
                // Cumulative histograms only grow; one that did not is shown as it stands.
                if let Some((_, earlier)) = earlier {
                    if gained.subtract(earlier).is_err() {
                        gained = h.clone();
                    }
                }
                (*name, Percentiles::of(&gained))
            })
            .collect();
        let wall = SystemTime::now() - Instant::now().saturating_duration_since(now.at);
        Point {
            // In whole milliseconds: a reader hands `t` back as `since`, and a number with
            // three decimals survives the trip through JSON exactly.
            t: now.at.saturating_duration_since(self.started).as_millis() as f64 / 1000.0,
            unix_s: wall
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            dt,
            rates,
            latencies,
            levels: now.levels.clone(),
        }
    }

    /// The points after `t` seconds from start (every point for `None`), oldest first.
    pub fn since(&self, t: Option<f64>) -> Vec<Point> {
        let inner = self.inner();
        let after = t.unwrap_or(f64::NEG_INFINITY);
        inner
            .points
            .iter()
            .filter(|p| p.t > after)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    fn sample(at: Instant, requests: u64, latencies: &[u64]) -> Sample {
        Sample {
            at,
            counts: vec![("requests", requests)],
            histograms: vec![("ingest", histogram(latencies))],
            levels: vec![("queue_depth/0".into(), requests as f64)],
        }
    }

    #[test]
    fn a_point_shows_the_rate_and_the_latencies_of_its_own_interval() {
        let t0 = Instant::now();
        let timeline = Timeline::new(t0);
        timeline.add(sample(t0, 100, &[50_000; 10]));
        assert!(timeline.since(None).is_empty(), "one sample is no interval");
        let t1 = t0 + Duration::from_secs(2);
        assert!(timeline.due(t1));
        // Ten slow values before, two fast ones during the interval.
        timeline.add(sample(t1, 300, &[&[50_000; 10][..], &[200, 400]].concat()));
        let points = timeline.since(None);
        assert_eq!(points.len(), 1);
        let p = &points[0];
        assert_eq!((p.t, p.dt), (2.0, 2.0));
        assert_eq!(p.rates, vec![("requests", 100.0)]);
        let ingest = p.latencies[0].1.expect("two values gained");
        assert_eq!(ingest.count, 2);
        assert_eq!((ingest.p50, ingest.max), (200, 400));
        assert_eq!(p.levels, vec![("queue_depth/0".to_string(), 300.0)]);
    }

    #[test]
    fn an_interval_with_no_values_has_no_percentiles() {
        let t0 = Instant::now();
        let timeline = Timeline::new(t0);
        timeline.add(sample(t0, 0, &[900]));
        timeline.add(sample(t0 + STEP, 0, &[900]));
        assert_eq!(timeline.since(None)[0].latencies, vec![("ingest", None)]);
    }

    #[test]
    fn samples_closer_than_a_step_are_dropped_and_a_gap_starts_afresh() {
        let t0 = Instant::now();
        let timeline = Timeline::new(t0);
        timeline.add(sample(t0, 0, &[]));
        let early = t0 + Duration::from_millis(500);
        assert!(!timeline.due(early));
        timeline.add(sample(early, 50, &[]));
        timeline.add(sample(t0 + STEP, 10, &[]));
        let points = timeline.since(None);
        assert_eq!(points.len(), 1);
        assert_eq!(
            points[0].rates[0].1, 10.0,
            "measured from t0, not from the dropped one"
        );
        // A minute unwatched: no point averages it; the next one measures from there.
        let later = t0 + Duration::from_secs(61);
        timeline.add(sample(later, 6_010, &[]));
        timeline.add(sample(later + STEP, 6_020, &[]));
        let points = timeline.since(Some(points[0].t));
        assert_eq!(points.len(), 1);
        assert_eq!((points[0].t, points[0].rates[0].1), (62.0, 10.0));
    }

    #[test]
    fn the_timeline_keeps_the_last_points_only() {
        let t0 = Instant::now();
        let timeline = Timeline::new(t0);
        for i in 0..=(POINTS as u64 + 10) {
            timeline.add(sample(t0 + STEP * i as u32, i, &[]));
        }
        let points = timeline.since(None);
        assert_eq!(points.len(), POINTS);
        assert_eq!(points.last().unwrap().t, (POINTS + 10) as f64);
        assert_eq!(timeline.since(Some((POINTS + 9) as f64)).len(), 1);
    }
}
