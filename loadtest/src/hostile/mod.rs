//! hostile: attacks, one shape at a time, against a server that serves a well-behaved victim
//! tenant meanwhile. For each shape: what the attackers were answered, the server's peak
//! resident memory (read from `/proc/<pid>/status`), and the victim's service, against the
//! victim alone in the same sitting: its ingest latency and errors, and (`probe`) its reads'
//! latency and, under the shapes that attack delivery, its webhook deliveries' end-to-end
//! latency and how many never arrived. `--rss-max-mb`, `--p99-max-ratio`,
//! `--probe-p99-max-ms` and `--undelivered-max` turn the report into a check (exit 1), which
//! the end-to-end tests use.
//!
//! - `attack`: the shapes, one loop per attacker connection, and the tenants some need readied.
//! - `probe`: the victim's reads and deliveries, measured beside its ingest.
//! - `receiver`: the webhook endpoints this process runs, the victim's and the attackers'.
//! - here: the rows (victim alone, then under each shape), memory sampling, the table, the check.

mod attack;
mod probe;
mod receiver;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;

use crate::client::{Conn, Target};
use crate::run::{prepare, run_measured, Outcome, RunArgs, START_DELAY};
use crate::scenario::Scenario;
pub use attack::Attack;
use attack::{arm, attack, disarm, seed, Answers, Setup};
use probe::Measured;
use receiver::{Answering, Endpoint};

#[derive(clap::Args)]
pub struct HostileArgs {
    /// Base URL of the server
    #[arg(long)]
    pub url: String,
    /// The server's process id, whose resident memory is watched
    #[arg(long)]
    pub server_pid: u32,
    /// Attacks to run, in order (default: all; those on delivery only when the server delivers
    /// to this machine's loopback address)
    #[arg(long, value_enum, value_delimiter = ',')]
    pub attacks: Vec<Attack>,
    /// Attacker connections per shape
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Connections the `idle` shape opens
    #[arg(long, default_value_t = 5000)]
    pub idle_connections: usize,
    /// Seconds the victim runs under each attack (and alone, first)
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// The victim tenant's rate (requests per second, one event each)
    #[arg(long, default_value_t = 1000)]
    pub victim_rate: u64,
    /// Fail when the server's resident memory passes this many MB
    #[arg(long)]
    pub rss_max_mb: Option<u64>,
    /// Fail when the victim's p99 under an attack passes this multiple of its baseline
    #[arg(long)]
    pub p99_max_ratio: Option<f64>,
    /// Fail when the victim's inbox or /health p99 in any row passes this many milliseconds
    #[arg(long)]
    pub probe_p99_max_ms: Option<f64>,
    /// Fail when, in any row that measures delivery, more than this many of the victim's events
    /// had not reached its webhook 5 s after the row
    #[arg(long)]
    pub undelivered_max: Option<u64>,
    /// Write the table (hostile.md) and the figures (hostile.json) here
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Scheduling niceness (0-19) of the attackers' thread. On a machine whose few CPUs the
    /// attackers, the victim and the server share, 19 takes the attack's own client CPU out of
    /// the victim's way, as if the attackers ran elsewhere; the server still serves every
    /// attacker connection.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub attacker_nice: i32,
    /// Pin the attackers' thread to this CPU (run the server on the others, e.g. with
    /// `taskset`): the attack then takes no CPU time from the server, as from another machine
    #[arg(long)]
    pub attacker_cpu: Option<usize>,
}

/// Resident memory of `pid` now, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The highest resident memory seen until `until`, sampled every 20 ms.
fn watch_rss(pid: u32, until: Instant) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while Instant::now() < until {
            peak = peak.max(rss_bytes(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    })
}

/// Posts `n` events of ~250 KB for the attackers' tenant, so its inbox pages are large.
async fn seed_big_events(target: &Target, key: &str, n: usize) -> anyhow::Result<()> {
    let mut conn = Conn::connect(target).await?;
    let body = format!(
        r#"{{"type":"big","payload":{{"blob":"{}"}}}}"#,
        "b".repeat(250_000)
    );
    for _ in 0..n {
        let r = conn
            .request("POST", "/api/events", Some(key), body.as_bytes())
            .await?;
        ensure!(r.status == 202, "seeding big events: HTTP {}", r.status);
    }
    Ok(())
}

/// A key of a new organization on the unlimited tier.
async fn new_key(target: &Target, name: &str) -> anyhow::Result<String> {
    new_key_on(target, name, "unlimited").await
}

/// A key of a new organization on `tier`.
async fn new_key_on(target: &Target, name: &str, tier: &str) -> anyhow::Result<String> {
    let mut conn = Conn::connect(target).await?;
    let body = format!(r#"{{"organization_name":"{name}","tier":"{tier}"}}"#);
    let r = conn
        .request("POST", "/api/keys/generate", None, body.as_bytes())
        .await?;
    ensure!(
        r.status == 201,
        "creating an organization: HTTP {} {} (start the server with --keygen-tier-max unlimited)",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)?;
    Ok(v["api_key"].as_str().context("no api_key")?.to_string())
}

/// One row of the table.
struct Row {
    attack: String,
    answers: BTreeMap<String, u64>,
    peak_rss: u64,
    victim: Outcome,
    probe: Measured,
}

/// The victim's probe: its organization, and its webhook's endpoint when delivery is measured.
struct Prober {
    key: String,
    endpoint: Option<Endpoint>,
}

impl Prober {
    /// A new victim organization for the probe, its webhook pointed at an endpoint of the
    /// victim's. Without loopback delivery the probe measures reads only: the shapes that
    /// attack delivery are then left out of `attacks` when they were not asked for by name
    /// (`asked`), and fail the run when they were.
    async fn new(
        target: &Target,
        attacks: &mut Vec<Attack>,
        asked: bool,
    ) -> anyhow::Result<Prober> {
        let key = new_key(target, "victim-probe").await?;
        let endpoint = receiver::start(Answering::Victim, "victim-hook", 0, None)?;
        let endpoint = match crate::webhook::configure(target, &key, &endpoint.url).await {
            Ok(_) => Some(endpoint),
            Err(e) => {
                let needed: Vec<Attack> =
                    attacks.iter().copied().filter(|a| a.delivers()).collect();
                ensure!(
                    needed.is_empty() || !asked,
                    "{needed:?} measure the victim's webhook deliveries, which needs the server to \
                     deliver to 127.0.0.1 (--webhook-delivery true --webhook-allow-private true); \
                     configuring the victim's webhook: {e:#}"
                );
                eprintln!("the victim's webhook was refused, so delivery is not measured: {e:#}");
                if !needed.is_empty() {
                    eprintln!("leaving out {needed:?}, which attack delivery");
                    attacks.retain(|a| !a.delivers());
                }
                None
            }
        };
        Ok(Prober { key, endpoint })
    }

    /// The victim's run of `args` with `keys` and, in the same window, the probe (delivery
    /// too with `delivery`).
    async fn row(
        &self,
        target: &Target,
        args: &RunArgs,
        keys: Arc<Vec<String>>,
        delivery: bool,
    ) -> (anyhow::Result<Outcome>, Measured) {
        let start = Instant::now() + START_DELAY;
        let end = start + Duration::from_secs(args.duration);
        let endpoint = self
            .endpoint
            .as_ref()
            .filter(|_| delivery)
            .map(|e| e.seen.clone());
        tokio::join!(
            run_measured(target, args, keys, true),
            probe::measure(target, &self.key, endpoint, start, end)
        )
    }
}

fn victim_args(args: &HostileArgs) -> RunArgs {
    RunArgs {
        url: vec![args.url.clone()],
        label: Vec::new(),
        scenario: Scenario::Ingest,
        rate: args.victim_rate,
        duration: args.duration,
        connections: 16,
        orgs: 1,
        tier: "unlimited".into(),
        // The baseline run comes first and is itself the reference: no warm-up.
        warmup: 0,
        payload_bytes: 300,
        batch_size: 1,
        dedup: false,
        out: None,
        verify: false,
        verify_wait: 0,
        spread: false,
        baseline: None,
        settle: 0,
        before_each: None,
    }
}

/// Runs the victim alone, then under each attack; prints (and writes) the table; fails when a
/// bound given is passed or the victim saw an error.
pub async fn hostile(args: &HostileArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let mut attacks = if args.attacks.is_empty() {
        <Attack as clap::ValueEnum>::value_variants().to_vec()
    } else {
        args.attacks.clone()
    };
    let key = new_key(&target, "attacker").await?;
    if attacks.contains(&Attack::BigPages) {
        seed_big_events(&target, &key, 40).await?;
    }
    // Every organization is made now, before `signup` can spend this address's signups.
    let prober = Prober::new(&target, &mut attacks, !args.attacks.is_empty()).await?;
    let mut own_keys = BTreeMap::new();
    for &shape in attacks.iter().filter(|a| a.own_org()) {
        let name = clap::ValueEnum::to_possible_value(&shape)
            .map_or_else(|| "shape".to_string(), |v| v.get_name().to_string());
        let own = new_key_on(&target, &format!("attacker-{name}"), shape.tier()).await?;
        seed(shape, &target, &own)
            .await
            .with_context(|| format!("readying {shape:?}"))?;
        own_keys.insert(format!("{shape:?}"), own);
    }
    let victim = victim_args(args);
    let mut rows = Vec::new();
    // Between shapes: the last one's connections close.
    let settle = Duration::from_secs(args.duration.min(2));

    eprintln!(
        "victim alone: {} req/s for {} s",
        args.victim_rate, args.duration
    );
    let rss = watch_rss(
        args.server_pid,
        Instant::now() + Duration::from_secs(args.duration + 1),
    );
    // One victim organization for the baseline and every shape.
    let victim_keys = prepare(&target, &victim).await?;
    let (baseline, probe) = prober
        .row(&target, &victim, victim_keys.clone(), true)
        .await;
    if probe
        .delivery
        .as_ref()
        .is_some_and(|d| d.posted > 0 && d.undelivered == d.posted)
    {
        eprintln!(
            "WARNING: not one of the victim's events reached its webhook: is the server \
             delivering (--webhook-delivery true)?"
        );
    }
    rows.push(Row {
        attack: "none (baseline)".into(),
        answers: BTreeMap::new(),
        peak_rss: rss.await?,
        victim: baseline?,
        probe,
    });
    for shape in attacks {
        tokio::time::sleep(settle).await;
        let shape_key = own_keys.get(&format!("{shape:?}")).unwrap_or(&key);
        let armed = arm(
            shape,
            &target,
            shape_key,
            args.attacker_nice,
            args.attacker_cpu,
        )
        .await
        .with_context(|| format!("readying {shape:?}"))?;
        let ramp = Duration::from_secs(1);
        let until = Instant::now() + ramp + Duration::from_secs(args.duration + 1);
        let setup = Arc::new(Setup {
            target: target.clone(),
            key: shape_key.clone(),
            ids: armed.ids.clone(),
            until,
            answers: Answers::default(),
        });
        let connections = if shape == Attack::Idle {
            args.idle_connections
        } else {
            args.connections
        };
        eprintln!("{shape:?}: {connections} attacker connections");
        let rss = watch_rss(args.server_pid, until);
        // The attackers run on a runtime of their own, so their tasks never delay the victim's
        // in one scheduler (they still share the machine's CPUs with it and the server).
        let attackers_rt = crate::side::runtime("attacker", args.attacker_nice, args.attacker_cpu)?;
        for n in 0..connections {
            attackers_rt.spawn(attack(shape, setup.clone(), n));
        }
        tokio::time::sleep(ramp).await;
        let (outcome, probe) = prober
            .row(&target, &victim, victim_keys.clone(), shape.delivers())
            .await;
        let peak_rss = rss.await;
        // Attackers still waiting record `no answer` at `until`.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(attackers_rt);
        disarm(armed, &target, shape_key).await;
        let (outcome, peak_rss) = (
            outcome.with_context(|| format!("the victim's run under {shape:?}"))?,
            peak_rss?,
        );
        let answers = setup.answers.lock().unwrap().clone();
        rows.push(Row {
            attack: format!("{shape:?}"),
            answers,
            peak_rss,
            victim: outcome,
            probe,
        });
    }
    let table = render(&rows, args);
    println!("{table}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("hostile.md"), &table)?;
        std::fs::write(
            dir.join("hostile.json"),
            serde_json::to_vec_pretty(&figures(&rows))?,
        )?;
    }
    check(&rows, args)
}

fn p(o: &Outcome, q: f64) -> f64 {
    o.latency.value_at_quantile(q) as f64 / 1000.0
}

/// Victim requests that were not answered 2xx.
fn victim_errors(o: &Outcome) -> u64 {
    o.errors
        + o.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum::<u64>()
}

/// A probe's p99 in ms; `None` when it recorded nothing.
fn p99_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0)
}

/// `x` with two decimals, or `-` when not measured.
fn or_dash<T: std::fmt::Display>(x: Option<T>, two_decimals: bool) -> String {
    match x {
        Some(x) if two_decimals => format!("{x:.2}"),
        Some(x) => x.to_string(),
        None => "-".into(),
    }
}

fn render(rows: &[Row], args: &HostileArgs) -> String {
    let mut t = format!(
        "Victim: one tenant at {} req/s for {} s per row; attackers: {} connections per shape ({} for idle), niceness {}, CPU {}. \
         Probe, another victim tenant in the same window: inbox (10 events) and /health every 20 ms on one connection; \
         in the rows with delivery, an event every 50 ms, timed from its post to its arrival at the victim's webhook, \
         undelivered if not there 5 s after the row.\n\n\
         | attack | attackers were answered | server peak RSS MB | victim p50 ms | victim p99 ms | victim errors \
         | victim inbox p99 ms | victim /health p99 ms | probe non-2xx | victim delivery p99 ms | undelivered |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        args.victim_rate,
        args.duration,
        args.connections,
        args.idle_connections,
        args.attacker_nice,
        args.attacker_cpu
            .map_or_else(|| "any".to_string(), |c| c.to_string())
    );
    for r in rows {
        let answers: Vec<String> = r
            .answers
            .iter()
            .map(|(k, n)| format!("{k} × {n}"))
            .collect();
        let delivery = r.probe.delivery.as_ref();
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
            r.attack,
            if answers.is_empty() {
                "-".into()
            } else {
                answers.join(", ")
            },
            r.peak_rss as f64 / 1e6,
            p(&r.victim, 0.5),
            p(&r.victim, 0.99),
            victim_errors(&r.victim),
            or_dash(p99_ms(&r.probe.inbox), true),
            or_dash(p99_ms(&r.probe.health), true),
            r.probe.non_2xx,
            or_dash(delivery.and_then(|d| p99_ms(&d.latency)), true),
            or_dash(delivery.map(|d| d.undelivered), false),
        );
    }
    t
}

fn figures(rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                serde_json::json!({
                    "attack": r.attack,
                    "answers": r.answers,
                    "peak_rss_bytes": r.peak_rss,
                    "victim_p50_ms": p(&r.victim, 0.5),
                    "victim_p99_ms": p(&r.victim, 0.99),
                    "victim_requests": r.victim.requests(),
                    "victim_errors": victim_errors(&r.victim),
                    "victim_inbox_p99_ms": p99_ms(&r.probe.inbox),
                    "victim_health_p99_ms": p99_ms(&r.probe.health),
                    "probe_requests": r.probe.requests,
                    "probe_non_2xx": r.probe.non_2xx,
                    // null in the rows that do not measure delivery.
                    "victim_delivery_p99_ms": r.probe.delivery.as_ref().and_then(|d| p99_ms(&d.latency)),
                    "victim_events_posted": r.probe.delivery.as_ref().map(|d| d.posted),
                    "victim_undelivered": r.probe.delivery.as_ref().map(|d| d.undelivered),
                })
            })
            .collect(),
    )
}

fn check(rows: &[Row], args: &HostileArgs) -> anyhow::Result<()> {
    let baseline_p99 = p(&rows[0].victim, 0.99);
    let mut failures = Vec::new();
    for r in rows {
        if victim_errors(&r.victim) > 0 {
            failures.push(format!(
                "{}: the victim saw {} errors",
                r.attack,
                victim_errors(&r.victim)
            ));
        }
        if let Some(max) = args.rss_max_mb {
            if r.peak_rss > max * 1_000_000 {
                failures.push(format!(
                    "{}: peak RSS {} MB > {max} MB",
                    r.attack,
                    r.peak_rss / 1_000_000
                ));
            }
        }
        if r.probe.non_2xx > 0 {
            failures.push(format!(
                "{}: the victim's probe saw {} of {} requests not answered 2xx",
                r.attack, r.probe.non_2xx, r.probe.requests
            ));
        }
        if let Some(max) = args.probe_p99_max_ms {
            for (what, h) in [("inbox", &r.probe.inbox), ("/health", &r.probe.health)] {
                if let Some(p99) = p99_ms(h).filter(|p99| *p99 > max) {
                    failures.push(format!(
                        "{}: victim {what} p99 {p99:.2} ms > {max} ms",
                        r.attack
                    ));
                }
            }
        }
        if let (Some(max), Some(d)) = (args.undelivered_max, &r.probe.delivery) {
            if d.undelivered > max {
                failures.push(format!(
                    "{}: {} of the victim's {} events not delivered > {max}",
                    r.attack, d.undelivered, d.posted
                ));
            }
        }
        if let Some(ratio) = args.p99_max_ratio {
            let p99 = p(&r.victim, 0.99);
            if p99 > baseline_p99 * ratio {
                failures.push(format!(
                    "{}: victim p99 {p99:.2} ms > {ratio} × baseline {baseline_p99:.2} ms",
                    r.attack
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
