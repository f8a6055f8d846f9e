//! run: one open-loop run against one target.
//!
//! Requests leave at a fixed arrival rate whatever the server does: request `i` is due at
//! `start + i / rate`, and its latency is measured from that intended time, so a stalled server
//! shows up in the tail instead of silently slowing the generator (no coordinated omission).
//! Request `i` goes out on connection `i % connections`; each connection sends its requests in
//! order, so a slow answer delays the ones behind it on that connection, and that delay counts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

use crate::client::{Conn, Target};
use crate::cpu::{Cpu, Probe};
use crate::orgs::{create_orgs, warm_up};
use crate::scenario::{Owned, Scenario, Shape};
use crate::verify::{self, Verified};

/// Runs started by this process: numbers the dedup_ids of runs that share organizations.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// Delay between the organizations' creation and the first request.
pub const START_DELAY: Duration = Duration::from_millis(200);

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Base URL of a target; repeat to compare several implementations side by side
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// A name for each --url, in the same order, for the summary and the plot
    #[arg(long)]
    pub label: Vec<String>,
    #[arg(long, value_enum, default_value_t = Scenario::Ingest)]
    pub scenario: Scenario,
    /// Requests per second (open loop)
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Seconds of load per run
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Keep-alive connections the load is spread over
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
    /// Organizations to create (hot-tenant uses one)
    #[arg(long, default_value_t = 100)]
    pub orgs: usize,
    /// Tier the organizations are created with; `auto` asks for the highest the target grants
    /// whose limit covers the run, and says which it got
    #[arg(long, default_value = "auto")]
    pub tier: String,
    /// Seconds of unmeasured load before each target's run (every key is used once first);
    /// 0: none
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Approximate size of each event's payload in bytes (at least ~110: the fixed fields)
    #[arg(long, default_value_t = 300)]
    pub payload_bytes: usize,
    /// Events per request in the batch scenario
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Give every event a dedup_id of its own (the server then stores and later expires one
    /// dedup row per event)
    #[arg(long)]
    pub dedup: bool,
    /// Write summary.json, latency.hgrm and latency.svg here
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Afterwards, read every organization's inbox and count the acknowledged events stored
    #[arg(long)]
    pub verify: bool,
    /// Seconds to wait before verifying: an implementation that answers before it stores
    /// (a queue in front of the database) is given time to catch up
    #[arg(long, default_value_t = 0)]
    pub verify_wait: u64,
    /// Every --url is a node of one deployment sharing a database: the connections are spread
    /// over them in turn, and they are measured as one target
    #[arg(long)]
    pub spread: bool,
    /// The target report.md's ratios are taken against: a --label or --url (the first target
    /// by default)
    #[arg(long)]
    pub baseline: Option<String>,
    /// Seconds to wait before each target after the first: implementations that answer before
    /// they store keep working after their run, on the same machine as the next target's
    #[arg(long, default_value_t = 0)]
    pub settle: u64,
    /// A shell command run before each target (after --settle), with TARGET_NAME and
    /// TARGET_URL set, e.g. to give the machine to that implementation alone; a target whose
    /// command fails is not measured
    #[arg(long)]
    pub before_each: Option<String>,
}

/// Whether a target named `target` ("label (url)", or its URL) is the one `name` names: its
/// label or its URL.
pub fn is_named(target: &str, name: &str) -> bool {
    target == name
        || target.starts_with(&format!("{name} ("))
        || target.ends_with(&format!("({name})"))
}

/// A target's label: its name without the URL that follows it (`is_named`'s form).
pub fn label(target: &str) -> &str {
    target.split(" (").next().unwrap_or(target)
}

impl RunArgs {
    /// Readies the machine for target `i`: waits `--settle` seconds (none before the first),
    /// then runs `--before-each`.
    async fn before_target(&self, i: usize, target: &Target) -> anyhow::Result<()> {
        if i > 0 && self.settle > 0 {
            eprintln!(
                "{}: waiting {} s for the previous target to settle",
                target.name, self.settle
            );
            tokio::time::sleep(Duration::from_secs(self.settle)).await;
        }
        let Some(command) = self.before_each.clone() else {
            return Ok(());
        };
        let (name, url) = (target.name.clone(), format!("http://{}", target.host));
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .args(["-c", &command])
                .env("TARGET_NAME", name)
                .env("TARGET_URL", url)
                .stdout(std::process::Stdio::null())
                .status()
        })
        .await??;
        anyhow::ensure!(status.success(), "--before-each exited with {status}");
        Ok(())
    }

    /// The targets to measure one after another: each --url, or all of them as one
    /// deployment with `--spread`. A --baseline must name one of them.
    pub fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let targets = if self.spread {
            vec![Target::spread(&self.url)?]
        } else {
            self.url
                .iter()
                .enumerate()
                .map(|(i, url)| {
                    let mut target = Target::parse(url)?;
                    if let Some(label) = self.label.get(i) {
                        target.name = format!("{label} ({url})");
                    }
                    Ok(target)
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        if let Some(name) = &self.baseline {
            anyhow::ensure!(
                targets.iter().any(|t| is_named(&t.name, name)),
                "--baseline {name} is not a --label or --url of this run"
            );
        }
        Ok(targets)
    }
}

/// Measures every target of `args` in turn with `measure`, each readied by `before_target`. A
/// target that cannot be measured is reported NOT MEASURED and skipped: the others' results
/// stand. Returns the results, and a line for each target not measured.
pub async fn each_target<T, F, Fut>(
    args: &RunArgs,
    mut measure: F,
) -> anyhow::Result<(Vec<T>, Vec<String>)>
where
    F: FnMut(Target) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let (mut measured, mut problems) = (Vec::new(), Vec::new());
    for (i, target) in args.targets()?.into_iter().enumerate() {
        let name = target.name.clone();
        let result = match args.before_target(i, &target).await {
            Ok(()) => measure(target).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(t) => measured.push(t),
            Err(e) => {
                eprintln!("{name}: NOT MEASURED: {e:#}");
                problems.push(format!("{name}: not measured: {e:#}"));
            }
        }
    }
    Ok((measured, problems))
}

/// What one run measured.
pub struct Outcome {
    pub target: String,
    pub rate: u64,
    pub events_per_request: usize,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    /// What the inbox holds of the events acknowledged (`--verify`), or why it could not be
    /// read.
    pub verified: Option<Result<Verified, String>>,
    /// (organization index, id) of every event acknowledged (`--verify`).
    pub acked: Vec<(usize, String)>,
    /// The CPU the target spent during the run, when it is on this machine (`run_measured`).
    pub cpu: Option<Cpu>,
}

impl Outcome {
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors
    }

    /// Requests per second sent and answered or failed: the rate the generator achieved.
    pub fn achieved(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU µs per request answered (any status) of the serving processes, when read.
    pub fn server_cpu_us(&self) -> Option<f64> {
        let c = self.cpu.as_ref()?;
        Some(self.per_answer_us(c.server.as_ref()?.cpu_s))
    }

    /// CPU µs per request answered of every process on the machine but loadtest, when the
    /// target is on this machine.
    pub fn machine_cpu_us(&self) -> Option<f64> {
        Some(self.per_answer_us(self.cpu.as_ref()?.others_s()))
    }

    fn per_answer_us(&self, cpu_s: f64) -> f64 {
        cpu_s * 1e6 / self.statuses.values().sum::<u64>().max(1) as f64
    }

    /// Requests answered 2xx.
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn ok_fraction(&self) -> f64 {
        self.ok() as f64 / self.requests().max(1) as f64
    }

    /// Requests answered 429: the tier's limit shaped the run, not the server.
    pub fn rate_limited(&self) -> u64 {
        self.statuses.get(&429).copied().unwrap_or(0)
    }
}

/// A latency histogram in µs, up to an hour (longer values count as an hour): a webhook
/// backlog built during a burst holds deliveries for minutes, and a bound of a minute made
/// every later delivery read as 67 s.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds")
}

/// Per-connection results, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    /// (organization index, id) of every event acknowledged, when verifying.
    acked: Vec<(usize, String)>,
}

/// What the progress line shows each second: requests answered so far, and the slowest answer
/// since the last line (so a stall shows when it happened, not only in the final tail).
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    slowest_us: AtomicU64,
}

/// When each request is due: the open-loop schedule of one connection.
struct Schedule {
    start: Instant,
    end: Instant,
    per_request: Duration,
}

impl Schedule {
    fn due(&self, i: u64) -> Option<Instant> {
        let due = self.start + self.per_request.mul_f64(i as f64);
        (due < self.end).then_some(due)
    }
}

async fn connection_loop(
    target: Target,
    shape: Shape,
    verify: bool,
    keys: Arc<Vec<String>>,
    c: usize,
    schedule: Arc<Schedule>,
    progress: Arc<Progress>,
) -> Tally {
    let mut t = Tally {
        latency: new_histogram(),
        statuses: BTreeMap::new(),
        errors: 0,
        acked: Vec::new(),
    };
    let mut conn: Option<Conn> = None;
    let mut owned = Owned::new();
    let mut i = c as u64;
    while let Some(due) = schedule.due(i) {
        tokio::time::sleep_until(due.into()).await;
        let req = shape.request(i, c, &mut owned);
        if conn.is_none() {
            conn = Conn::connect(&target).await.ok();
        }
        let result = match conn.as_mut() {
            Some(cn) => {
                let key = Some(keys[req.org].as_str());
                cn.request(req.method, &req.path, key, req.body.as_bytes())
                    .await
            }
            None => Err(anyhow::anyhow!("cannot connect")),
        };
        let took = due.elapsed();
        t.latency
            .saturating_record((took.as_micros() as u64).max(1));
        progress.sent.fetch_add(1, Ordering::Relaxed);
        progress
            .slowest_us
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(r) => {
                *t.statuses.entry(r.status).or_default() += 1;
                if shape.wants_ids(verify) {
                    let ids = shape.accepted_ids(r.status, &r.body);
                    shape.own(&mut owned, req.org, &ids);
                    if verify {
                        t.acked.extend(ids.into_iter().map(|id| (req.org, id)));
                    }
                }
            }
            Err(_) => {
                t.errors += 1;
                conn = None;
            }
        }
        i += shape.connections as u64;
    }
    t
}

/// Prints a progress line each second until `end`.
fn show_progress(progress: Arc<Progress>, start: Instant, end: Instant) {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval_at(
            (start + Duration::from_secs(1)).into(),
            Duration::from_secs(1),
        );
        while Instant::now() < end {
            tick.tick().await;
            let now = progress.sent.load(Ordering::Relaxed);
            let slowest = progress.slowest_us.swap(0, Ordering::Relaxed);
            eprintln!(
                "  {:>4}s  {:>8} req/s  {:>10} sent  slowest {:>8.2} ms",
                start.elapsed().as_secs(),
                now - last,
                now,
                slowest as f64 / 1000.0
            );
            last = now;
        }
    });
}

/// The organizations a run of `args` uses.
pub fn org_count(args: &RunArgs) -> usize {
    if args.scenario == Scenario::HotTenant {
        1
    } else {
        args.orgs.max(1)
    }
}

/// The organizations a run of `args` on `target` measures with: created on the tier
/// negotiated, and warmed up.
pub async fn prepare(target: &Target, args: &RunArgs) -> anyhow::Result<Arc<Vec<String>>> {
    let (keys, _) = create_orgs(target, args, org_count(args)).await?;
    let keys = Arc::new(keys);
    warm_up(target, args, &keys).await?;
    Ok(keys)
}

/// One measured run of `args` against `target` with `keys`, with the CPU it spent when it is
/// on this machine, verified with `--verify`; `quiet` leaves out the progress lines. Warns when
/// the target answered 429s.
pub async fn run_measured(
    target: &Target,
    args: &RunArgs,
    keys: Arc<Vec<String>>,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    let probe = Probe::start(target);
    let mut o = run_keys(
        target,
        args,
        keys.clone(),
        Instant::now() + START_DELAY,
        quiet,
    )
    .await?;
    o.cpu = probe.and_then(Probe::finish);
    verify_if_asked(&mut o, target, args, &keys).await;
    if o.rate_limited() > 0 {
        eprintln!(
            "WARNING: {}: {} of {} answers were 429 rate_limited: the tier's limit shaped this \
             run, not the server's speed",
            o.target,
            o.rate_limited(),
            o.requests()
        );
    }
    Ok(o)
}

/// With `--verify`: waits `--verify-wait` seconds, then reads what the target holds of the
/// events `o` acknowledged.
pub async fn verify_if_asked(o: &mut Outcome, target: &Target, args: &RunArgs, keys: &[String]) {
    if args.verify {
        tokio::time::sleep(Duration::from_secs(args.verify_wait)).await;
        o.verified = Some(
            verify::verify(target, keys, &o.acked)
                .await
                .map_err(|e| format!("{e:#}")),
        );
    }
}

/// One run of `args` against `target` with these organizations' keys, its first request due
/// at `start`: the load alone (no verification, no CPU).
pub async fn run_keys(
    target: &Target,
    args: &RunArgs,
    keys: Arc<Vec<String>>,
    start: Instant,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    let shape = Shape {
        scenario: args.scenario,
        orgs: keys.len(),
        connections: args.connections,
        payload_bytes: args.payload_bytes,
        batch_size: args.batch_size,
        dedup: args.dedup.then(|| RUNS.fetch_add(1, Ordering::Relaxed)),
    };
    let progress = Arc::new(Progress::default());
    let schedule = Arc::new(Schedule {
        start,
        end: start + Duration::from_secs(args.duration),
        per_request: Duration::from_secs_f64(1.0 / args.rate as f64),
    });
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| {
            tokio::spawn(connection_loop(
                target.for_connection(c),
                shape,
                args.verify,
                keys.clone(),
                c,
                schedule.clone(),
                progress.clone(),
            ))
        })
        .collect();
    if !quiet {
        show_progress(progress.clone(), start, schedule.end);
    }
    let mut latency = new_histogram();
    let mut statuses = BTreeMap::new();
    let mut errors = 0;
    let mut acked = Vec::new();
    for t in tasks {
        let t = t.await?;
        latency.add(&t.latency)?;
        for (s, n) in t.statuses {
            *statuses.entry(s).or_default() += n;
        }
        errors += t.errors;
        acked.extend(t.acked);
    }
    Ok(Outcome {
        target: target.name.clone(),
        rate: args.rate,
        events_per_request: shape.events_per_request(),
        elapsed: start.elapsed(),
        latency,
        statuses,
        errors,
        verified: None,
        acked,
        cpu: None,
    })
}

/// A run of 100 requests answered 202 in one second, with these latencies (µs), for tests.
#[cfg(test)]
pub fn outcome_of(target: &str, us: &[u64]) -> Outcome {
    let mut latency = new_histogram();
    for &v in us {
        latency.record(v).unwrap();
    }
    Outcome {
        target: target.into(),
        rate: 100,
        events_per_request: 1,
        elapsed: Duration::from_secs(1),
        latency,
        statuses: BTreeMap::from([(202, 100)]),
        errors: 0,
        verified: None,
        acked: Vec::new(),
        cpu: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_failures_against_the_rate() {
        let mut statuses = BTreeMap::new();
        statuses.insert(202, 98);
        statuses.insert(503, 1);
        let o = Outcome {
            target: "t".into(),
            rate: 100,
            events_per_request: 1,
            elapsed: Duration::from_secs(1),
            latency: new_histogram(),
            statuses,
            errors: 1,
            verified: None,
            acked: Vec::new(),
            cpu: None,
        };
        assert_eq!(o.requests(), 100);
        assert!((o.ok_fraction() - 0.98).abs() < 1e-9);
    }

    #[test]
    fn requests_are_due_at_the_rate_until_the_end() {
        let start = Instant::now();
        let s = Schedule {
            start,
            end: start + Duration::from_secs(1),
            per_request: Duration::from_millis(10),
        };
        assert_eq!(s.due(0), Some(start));
        assert_eq!(s.due(50), Some(start + Duration::from_millis(500)));
        assert_eq!(s.due(99), Some(start + Duration::from_millis(990)));
        assert_eq!(s.due(100), None);
    }
}
