//! stats: latency histograms and counters, recorded where things happen and merged on read.
//!
//! Each core and each persister owns its recorders, so recording is an uncontended lock and an
//! array increment; `GET /api/queue/stats` merges them. Values are microseconds unless named
//! otherwise. Recording never fails: values past the top are clamped to it. Imports nothing of
//! the crate.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::fmt::Write as _;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

mod timeline;
pub use timeline::{Percentiles, Point, Sample, Timeline, POINTS, STEP};

/// Largest latency a histogram tells apart: one minute.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Three significant digits: 0.1% error at every magnitude.
const SIGNIFICANT_DIGITS: u8 = 3;

pub struct Recorder {
    hist: Mutex<Histogram<u64>>,
}

impl Recorder {
    fn new(max: u64) -> Recorder {
        let hist = Histogram::new_with_bounds(1, max, SIGNIFICANT_DIGITS)
            .expect("static histogram bounds are valid");
        Recorder {
            hist: Mutex::new(hist),
        }
    }

    pub fn latency() -> Recorder {
        Recorder::new(LATENCY_US_MAX)
    }

    pub fn record(&self, value: u64) {
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(value.max(1));
    }

    pub fn record_duration(&self, d: Duration) {
        self.record(d.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Adds this recorder's values into `into`.
    pub fn merge_into(&self, into: &mut Histogram<u64>) {
        let h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        into.add(&*h)
            .expect("histograms of one kind share their bounds");
    }
}

/// A counter readable from any thread.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A level readable from any thread: how many of something exist now.
#[derive(Default)]
pub struct Gauge(AtomicUsize);

impl Gauge {
    pub fn up(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn down(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A yes or no readable from any thread.
#[derive(Default)]
pub struct Flag(AtomicBool);

impl Flag {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A cause worth a log line that may repeat thousands of times (an outage, a hostile tenant):
/// the line leaves at most once per `every`, carrying how often the cause came since the last.
/// Time is passed in.
pub struct LogEvery {
    every: Duration,
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl LogEvery {
    pub const fn new(every: Duration) -> LogEvery {
        LogEvery {
            every,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// Counts one occurrence at `now`. `Some(n)` when a line is due: it stands for `n`
    /// occurrences (this one included).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < self.every)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// The cause is over: the next occurrence is logged at once.
    pub fn reset(&mut self) {
        self.unlogged = 0;
        self.logged_at = None;
    }
}

/// Durations noted by many threads and taken, as their mean, by one: two atomics, no lock.
#[derive(Default)]
pub struct Pulse {
    total_us: AtomicU64,
    count: AtomicU64,
}

impl Pulse {
    pub fn note(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The mean in µs of what was noted since the last call, if anything was.
    pub fn take(&self) -> Option<u64> {
        let count = self.count.swap(0, Ordering::Relaxed);
        let total = self.total_us.swap(0, Ordering::Relaxed);
        (count > 0).then(|| total / count)
    }
}

/// Recorded by a serving core.
pub struct CoreStats {
    /// Requests answered, on any route.
    pub requests: Counter,
    /// Request head read → response written, for `POST /api/events`.
    pub ingest_us: Recorder,
    /// 202s sent.
    pub accepted: Counter,
    /// 409s sent.
    pub duplicates: Counter,
    /// 4xx other than 409 on ingest for an authenticated organization (bad input, rate limit).
    pub rejected: Counter,
    /// 503 `overloaded`: the ring was full.
    pub overloaded: Counter,
    /// 503 `storage_unavailable`.
    pub unavailable: Counter,
}

/// Recorded by a persister.
pub struct PersistStats {
    /// Ring push → taken into a batch.
    pub queue_wait_us: Recorder,
    /// COPY through COMMIT of one batch.
    pub commit_us: Recorder,
    /// Rows per committed batch.
    pub batch_rows: Recorder,
    pub committed: Counter,
    pub duplicates: Counter,
    pub batches: Counter,
    /// Rows PostgreSQL refused on their own.
    pub refused: Counter,
    /// Events dropped unstored because PostgreSQL stayed unreachable past their deadline.
    pub expired: Counter,
    /// Batches retried after a connection loss or transient error.
    pub retries: Counter,
}

/// Recorded by the partition upkeep (`db::partitions`).
#[derive(Default)]
pub struct UpkeepStats {
    /// Passes this node ran, and skipped because another node was running one.
    pub passes: Counter,
    pub skipped: Counter,
    /// Passes that failed (logged; the next tries again).
    pub failures: Counter,
    /// Partitions created and dropped.
    pub created: Counter,
    pub dropped: Counter,
    /// Rows deleted: dedup_ids, attempts and parked deliveries of expired events.
    pub trimmed: Counter,
}

/// Recorded by webhook delivery (`delivery`).
#[derive(Default)]
pub struct DeliveryStats {
    /// Attempts made (requests sent, or refused before sending).
    pub attempted: Counter,
    pub delivered: Counter,
    /// Attempts that failed with attempts left.
    pub retrying: Counter,
    /// Deliveries whose last attempt failed.
    pub failed: Counter,
    /// Endpoints disabled after answering 410 Gone.
    pub disabled: Counter,
    /// Times an endpoint's breaker opened (it failed too often in a row and rests).
    pub breaker_opened: Counter,
    /// Rows taken from the table (retries, and rows a stopped node left).
    pub claimed: Counter,
    /// Times delivery cut its rate to give way to ingest (`delivery::governor`).
    pub yields: Counter,
    /// Outcomes PostgreSQL refused as they were (one bad row never fails its batch): recorded
    /// without their answer's text or without their attempt, or, refused even so, left to
    /// their lease.
    pub unstorable: Counter,
    /// Event created → its first attempt begins.
    pub first_attempt_us: Recorder,
    /// One attempt, request sent to answer read.
    pub attempt_us: Recorder,
    /// Event created → delivered.
    pub end_to_end_us: Recorder,
    /// Deliveries queued in the database and not paused, as last counted (every node's), and
    /// those waiting for a disabled endpoint. Counted every few seconds, up to a cap.
    pub backlog: AtomicU64,
    pub backlog_paused: AtomicU64,
}

impl DeliveryStats {
    /// (name, value) of every counter, in a fixed order shared by both stats views.
    pub fn counters(&self) -> [(&'static str, u64); 9] {
        [
            ("attempted", self.attempted.get()),
            ("delivered", self.delivered.get()),
            ("retrying", self.retrying.get()),
            ("failed", self.failed.get()),
            ("endpoints_disabled", self.disabled.get()),
            ("endpoints_rested", self.breaker_opened.get()),
            ("claimed", self.claimed.get()),
            ("yields", self.yields.get()),
            ("unstorable_outcomes", self.unstorable.get()),
        ]
    }
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::latency()
    }
}

pub struct Stats {
    pub cores: Vec<CoreStats>,
    pub persisters: Vec<PersistStats>,
    /// Persister threads alive (`/health/ready`).
    pub persisters_running: Gauge,
    /// Persisters holding a working connection.
    pub persisters_connected: Gauge,
    /// When the server started (`uptime_s`).
    pub started: Instant,
    /// Ingest's committed batches, each from its oldest event's arrival to its commit, for
    /// delivery's governor.
    pub ingest_pulse: Pulse,
    /// Times the embedded PostgreSQL was restarted after it died.
    pub storage_restarts: Counter,
    /// The embedded PostgreSQL died and could not be restarted: `/health/live` fails.
    pub storage_lost: Flag,
    pub delivery: std::sync::Arc<DeliveryStats>,
    pub upkeep: std::sync::Arc<UpkeepStats>,
    /// The last minutes, a point a second, for the dashboard (sampled while it is watched).
    pub timeline: Timeline,
}

impl Stats {
    /// Recorders for `cores` cores and `persisters` persisters of a server started at `started`.
    pub fn new(cores: usize, persisters: usize, started: Instant) -> Stats {
        Stats {
            cores: (0..cores)
                .map(|_| CoreStats {
                    requests: Counter::default(),
                    ingest_us: Recorder::latency(),
                    accepted: Counter::default(),
                    duplicates: Counter::default(),
                    rejected: Counter::default(),
                    overloaded: Counter::default(),
                    unavailable: Counter::default(),
                })
                .collect(),
            persisters: (0..persisters)
                .map(|_| PersistStats {
                    queue_wait_us: Recorder::latency(),
                    commit_us: Recorder::latency(),
                    batch_rows: Recorder::new(1_000_000),
                    committed: Counter::default(),
                    duplicates: Counter::default(),
                    batches: Counter::default(),
                    refused: Counter::default(),
                    expired: Counter::default(),
                    retries: Counter::default(),
                })
                .collect(),
            persisters_running: Gauge::default(),
            persisters_connected: Gauge::default(),
            started,
            ingest_pulse: Pulse::default(),
            storage_restarts: Counter::default(),
            storage_lost: Flag::default(),
            delivery: std::sync::Arc::default(),
            upkeep: std::sync::Arc::default(),
            timeline: Timeline::new(started),
        }
    }

    /// Merges one recorder of every core (or persister) into a fresh histogram.
    pub fn merged<'a>(recorders: impl Iterator<Item = &'a Recorder>) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
            .expect("static histogram bounds are valid");
        for r in recorders {
            r.merge_into(&mut h);
        }
        h
    }
}

/// A histogram as HdrHistogram's tools exchange it: V2 serialization, base64 (what the stats
/// view and loadtest's summaries carry).
pub fn encoded(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The histogram `encoded` wrote, or `None` for text that is not one.
pub fn decoded(text: &str) -> Option<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    Deserializer::new().deserialize(&mut &bytes[..]).ok()
}

/// The percentile distribution as HdrHistogram's `outputPercentileDistribution` prints it, for a
/// histogram of microseconds shown in milliseconds (the `.hgrm` files plotters read).
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let p = v.quantile_iterated_to();
        let ms = v.value_iterated_to() as f64 / 1000.0;
        if p < 1.0 {
            let _ = writeln!(
                out,
                "{ms:12.3} {p:14.12} {total:10} {:14.2}",
                1.0 / (1.0 - p)
            );
        } else {
            let _ = writeln!(out, "{ms:12.3} {p:14.12} {total:10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len(),
        h.buckets(),
        h.distinct_values()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_cause_is_logged_first_then_once_per_period_with_its_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut log = LogEvery::new(s(10));
        assert_eq!(log.hit(t0), Some(1));
        assert_eq!(log.hit(t0 + s(1)), None);
        assert_eq!(log.hit(t0 + s(9)), None);
        assert_eq!(log.hit(t0 + s(10)), Some(3));
        log.reset();
        assert_eq!(log.hit(t0 + s(11)), Some(1));
    }

    #[test]
    fn merged_histograms_hold_every_core_s_values() {
        let stats = Stats::new(2, 1, Instant::now());
        stats.cores[0].ingest_us.record(100);
        stats.cores[1].ingest_us.record(5_000);
        stats.cores[1].ingest_us.record(u64::MAX);
        let h = Stats::merged(stats.cores.iter().map(|c| &c.ingest_us));
        assert_eq!(h.len(), 3);
        assert_eq!(h.min(), 100);
        assert!(h.max() >= LATENCY_US_MAX);
    }
}
