//! loadtest: an open-loop load generator for any implementation of the Triggers API contract.
//!
//! Requests leave at a fixed arrival rate whatever the server does: request `i` is due at
//! `start + i / rate`, and its latency is measured from that intended time, so a stalled server
//! shows up in the tail instead of silently slowing the generator (no coordinated omission).
//! Organizations are created through `POST /api/keys/generate` and only the shared contract is
//! spoken, so the same command measures this server and the earlier implementations.

mod client;
mod copy_ceiling;
mod report;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use client::{Conn, Target};

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Open-loop load generator for the Triggers API contract"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario at a fixed rate against one or more targets, one after the other
    Run(RunArgs),
    /// Step the rate up until p99 crosses a bound; report the highest rate that held
    Sweep {
        #[command(flatten)]
        run: RunArgs,
        /// First rate (requests per second)
        #[arg(long, default_value_t = 2000)]
        start: u64,
        /// Rate added at each step
        #[arg(long, default_value_t = 2000)]
        step: u64,
        /// Highest rate tried
        #[arg(long, default_value_t = 100_000)]
        max: u64,
        /// A step holds when its p99 is at or under this many milliseconds...
        #[arg(long, default_value_t = 10.0)]
        p99_ms: f64,
    },
    /// The bare-COPY ceiling: binary COPY of event-shaped rows straight into PostgreSQL
    CopyCeiling {
        /// PostgreSQL to measure, e.g. "host=/tmp/trg/run user=triggers dbname=triggers"
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rows per committed batch
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Parallel writers (the server runs 2 persisters by default)
        #[arg(long, default_value_t = 2)]
        connections: usize,
        #[arg(long, default_value_t = 300)]
        payload_bytes: usize,
        /// Shape of the table the rows are copied into
        #[arg(long, value_enum, default_value_t = copy_ceiling::Shape::Bare)]
        table: copy_ceiling::Shape,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// POST /api/events spread over many organizations
    Ingest,
    /// POST /api/events, all from one organization
    HotTenant,
    /// POST /api/events/batch with --batch-size events each
    Batch,
    /// 70% ingest, 20% inbox reads, 10% acks (the earlier implementations' benchmark mix)
    Mixed,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Base URL of a target; repeat to compare several implementations side by side
    #[arg(long, required = true)]
    url: Vec<String>,
    /// A name for each --url, in the same order, for the summary and the plot
    #[arg(long)]
    label: Vec<String>,
    #[arg(long, value_enum, default_value_t = Scenario::Ingest)]
    scenario: Scenario,
    /// Requests per second (open loop)
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds of load per run
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Keep-alive connections the load is spread over
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Organizations to create (hot-tenant uses one)
    #[arg(long, default_value_t = 100)]
    orgs: usize,
    /// Tier the organizations are created with
    #[arg(long, default_value = "unlimited")]
    tier: String,
    /// Approximate size of each event's payload in bytes (at least ~110: the fixed fields)
    #[arg(long, default_value_t = 300)]
    payload_bytes: usize,
    /// Events per request in the batch scenario
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Write summary.json, latency.hgrm and latency.svg here
    #[arg(long)]
    out: Option<PathBuf>,
    /// Afterwards, read every organization's inbox and count the acknowledged events stored
    #[arg(long)]
    verify: bool,
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
    pub verified: Option<(usize, usize)>,
}

impl Outcome {
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors
    }

    pub fn ok_fraction(&self) -> f64 {
        let ok: u64 = self
            .statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        ok as f64 / self.requests().max(1) as f64
    }
}

fn payload(i: u64, bytes: usize) -> String {
    let head = format!(
        r#"{{"order_id":{i},"customer":"c-{}","amount_cents":4999,"currency":"EUR","items":[{{"sku":"A-1","qty":2}}],"note":""#,
        i % 1000
    );
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// Creates `n` organizations; retries a 429 after its Retry-After.
async fn create_orgs(target: &Target, n: usize, tier: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::connect(target).await?;
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let body = json!({"organization_name": format!("loadtest-{}", keys.len()), "tier": tier});
        let r = conn
            .request(
                "POST",
                "/api/keys/generate",
                None,
                body.to_string().as_bytes(),
            )
            .await?;
        match r.status {
            200 | 201 => {
                let v: Value = serde_json::from_slice(&r.body)?;
                keys.push(v["api_key"].as_str().context("no api_key")?.to_string());
            }
            429 => {
                let wait = r.retry_after.unwrap_or(1);
                eprintln!("key generation rate limited; waiting {wait}s (raise the server's signup limit for large runs)");
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            s => bail!(
                "creating an organization: HTTP {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    Ok(keys)
}

/// Per-connection results, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    /// (organization index, id) of every 202.
    acked: Vec<(usize, String)>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

async fn connection_loop(
    target: Target,
    args: RunArgs,
    keys: Arc<Vec<String>>,
    c: usize,
    start: Instant,
    end: Instant,
    progress: Arc<Progress>,
) -> Tally {
    let mut t = Tally {
        latency: new_histogram(),
        statuses: BTreeMap::new(),
        errors: 0,
        acked: Vec::new(),
    };
    let mut conn: Option<Conn> = None;
    let mut own_ids: Vec<(usize, String)> = Vec::new();
    let per_request = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut i = c as u64;
    loop {
        let due = start + per_request.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let mut org = match args.scenario {
            Scenario::HotTenant => 0,
            _ => (i as usize / args.connections + c) % keys.len(),
        };
        // Bodies are formatted, not built as JSON values: the generator shares the machine with
        // the server, so its own cost per request has to stay small.
        let event = |n: u64| {
            format!(
                r#"{{"type":"order.created","payload":{}}}"#,
                payload(n, args.payload_bytes)
            )
        };
        let (method, path, body) = match args.scenario {
            Scenario::Ingest | Scenario::HotTenant => ("POST", "/api/events".to_string(), event(i)),
            Scenario::Batch => {
                let events: Vec<String> = (0..args.batch_size as u64)
                    .map(|k| event(i * 1000 + k))
                    .collect();
                let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
                ("POST", "/api/events/batch".to_string(), body)
            }
            Scenario::Mixed => match i % 10 {
                0 if !own_ids.is_empty() => {
                    // Acknowledged with its own organization's key: another's would be a 404.
                    let (owner, id) = own_ids.swap_remove(0);
                    org = owner;
                    ("POST", format!("/api/ack/{id}"), String::new())
                }
                1 | 2 => ("GET", "/api/inbox?limit=50".to_string(), String::new()),
                _ => ("POST", "/api/events".to_string(), event(i)),
            },
        };
        let key = keys[org].as_str();
        if conn.is_none() {
            conn = Conn::connect(&target).await.ok();
        }
        let result = match conn.as_mut() {
            Some(cn) => cn.request(method, &path, Some(key), body.as_bytes()).await,
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
                let wants_ids = args.verify || args.scenario == Scenario::Mixed;
                if wants_ids
                    && (r.status == 202 || (r.status == 200 && args.scenario == Scenario::Batch))
                {
                    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                    let mut ids: Vec<String> = match &v["results"] {
                        Value::Array(items) => items
                            .iter()
                            .filter(|x| x["status"] == 202)
                            .filter_map(|x| x["id"].as_str().map(str::to_string))
                            .collect(),
                        _ => v["id"].as_str().map(str::to_string).into_iter().collect(),
                    };
                    if args.scenario == Scenario::Mixed {
                        own_ids.extend(ids.iter().map(|id| (org, id.clone())));
                        own_ids.truncate(1000);
                    }
                    if args.verify {
                        t.acked.extend(ids.drain(..).map(|id| (org, id)));
                    }
                }
            }
            Err(_) => {
                t.errors += 1;
                conn = None;
            }
        }
        i += args.connections as u64;
    }
    t
}

/// Walks every organization's inbox (all statuses) and counts the acknowledged ids present.
async fn verify(
    target: &Target,
    keys: &[String],
    acked: &[(usize, String)],
) -> anyhow::Result<(usize, usize)> {
    let mut conn = Conn::connect(target).await?;
    let mut stored = 0;
    for (org, key) in keys.iter().enumerate() {
        let want: HashSet<&str> = acked
            .iter()
            .filter(|(o, _)| *o == org)
            .map(|(_, id)| id.as_str())
            .collect();
        if want.is_empty() {
            continue;
        }
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/inbox?status=all&limit=1000&cursor={c}"),
                None => "/api/inbox?status=all&limit=1000".to_string(),
            };
            let r = conn.request("GET", &path, Some(key), b"").await?;
            if r.status != 200 {
                bail!("inbox read: HTTP {}", r.status);
            }
            let v: Value = serde_json::from_slice(&r.body)?;
            for e in v["events"].as_array().into_iter().flatten() {
                if let Some(id) = e["id"].as_str() {
                    seen.insert(id.to_string());
                }
            }
            match v["next_cursor"].as_str() {
                Some(c) if v["has_more"] == true => cursor = Some(c.to_string()),
                _ => break,
            }
        }
        stored += want.iter().filter(|id| seen.contains(**id)).count();
    }
    Ok((acked.len(), stored))
}

/// What the progress line shows each second: requests answered so far, and the slowest answer
/// since the last line (so a stall shows when it happened, not only in the final tail).
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    slowest_us: AtomicU64,
}

async fn run_once(target: &Target, args: &RunArgs, quiet: bool) -> anyhow::Result<Outcome> {
    let orgs = if args.scenario == Scenario::HotTenant {
        1
    } else {
        args.orgs.max(1)
    };
    let keys = Arc::new(create_orgs(target, orgs, &args.tier).await?);
    let progress = Arc::new(Progress::default());
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(args.duration);
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| {
            tokio::spawn(connection_loop(
                target.clone(),
                args.clone(),
                keys.clone(),
                c,
                start,
                end,
                progress.clone(),
            ))
        })
        .collect();
    if !quiet {
        let progress = progress.clone();
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
    let elapsed = start.elapsed();
    let verified = if args.verify {
        Some(verify(target, &keys, &acked).await?)
    } else {
        None
    };
    Ok(Outcome {
        target: target.name.clone(),
        rate: args.rate,
        events_per_request: if args.scenario == Scenario::Batch {
            args.batch_size
        } else {
            1
        },
        elapsed,
        latency,
        statuses,
        errors,
        verified,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let mut outcomes = Vec::new();
            for (i, url) in args.url.iter().enumerate() {
                let mut target = Target::parse(url)?;
                if let Some(label) = args.label.get(i) {
                    target.name = format!("{label} ({url})");
                }
                eprintln!(
                    "{url}: {:?} at {} req/s for {} s over {} connections",
                    args.scenario, args.rate, args.duration, args.connections
                );
                let o = run_once(&target, &args, false).await?;
                println!("{}", report::summary(&o));
                outcomes.push(o);
            }
            if let Some(dir) = &args.out {
                report::write(dir, &outcomes, &format!("{:?}", args.scenario))?;
            }
            for o in &outcomes {
                if let Some((acknowledged, stored)) = o.verified {
                    anyhow::ensure!(
                        stored == acknowledged,
                        "{}: {} of {acknowledged} acknowledged events are not stored",
                        o.target,
                        acknowledged - stored
                    );
                }
            }
        }
        Command::Sweep {
            run,
            start,
            step,
            max,
            p99_ms,
        } => {
            let target = Target::parse(&run.url[0])?;
            let mut held = None;
            let mut rows = Vec::new();
            let mut rate = start;
            while rate <= max {
                let args = RunArgs {
                    rate,
                    ..run.clone()
                };
                let o = run_once(&target, &args, true).await?;
                let p99 = o.latency.value_at_quantile(0.99) as f64 / 1000.0;
                let achieved = o.requests() as f64 / o.elapsed.as_secs_f64();
                let holds =
                    p99 <= p99_ms && o.ok_fraction() >= 0.999 && achieved >= 0.95 * rate as f64;
                println!(
                    "rate {rate:>7}  achieved {achieved:>9.0}  p99 {p99:>8.2} ms  ok {:>6.2}%  {}",
                    o.ok_fraction() * 100.0,
                    if holds { "holds" } else { "FAILS" }
                );
                rows.push(o);
                if !holds {
                    break;
                }
                held = Some(rate);
                rate += step;
            }
            match held {
                Some(r) => println!("highest rate holding p99 <= {p99_ms} ms: {r} req/s"),
                None => println!("no rate held p99 <= {p99_ms} ms"),
            }
            if let Some(dir) = &run.out {
                report::write(dir, &rows, "sweep")?;
            }
        }
        Command::CopyCeiling {
            database_url,
            seconds,
            batch,
            connections,
            payload_bytes,
            table,
        } => {
            let rate = tokio::task::spawn_blocking(move || {
                copy_ceiling::run(
                    &database_url,
                    table,
                    seconds,
                    batch,
                    connections,
                    payload_bytes,
                )
            })
            .await??;
            println!("COPY ceiling: {rate:.0} rows/s ({connections} connections, {batch} rows per commit, ~{payload_bytes}-byte payloads, {table:?} table)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_objects_of_about_the_asked_size() {
        for size in [300, 2000] {
            let p = payload(7, size);
            let v: Value = serde_json::from_str(&p).unwrap();
            assert!(v.is_object());
            assert!(
                p.len() >= size - 2 && p.len() <= size + 2,
                "{} vs {size}",
                p.len()
            );
        }
        // Below the fixed fields' size the payload is just those fields.
        assert!(payload(7, 10).len() < 120);
    }

    #[test]
    fn targets_parse_host_and_port() {
        let t = Target::parse("http://127.0.0.1:8090/").unwrap();
        assert_eq!(t.addr.port(), 8090);
        assert_eq!(t.name, "http://127.0.0.1:8090");
        assert!(Target::parse("https://example.com").is_err());
    }

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
        };
        assert_eq!(o.requests(), 100);
        assert!((o.ok_fraction() - 0.98).abs() < 1e-9);
    }
}
