//! hostile: attacks, one shape at a time, against a server that serves a well-behaved victim
//! tenant meanwhile. For each shape: what the attackers were answered, the server's peak
//! resident memory (read from `/proc/<pid>/status`), and the victim's latency and errors,
//! against the victim alone in the same sitting. `--rss-max-mb` and `--p99-max-ratio` turn the
//! report into a check (exit 1), which the end-to-end tests use.
//!
//! - `attack`: the shapes, one loop per attacker connection.
//! - here: the rows (victim alone, then under each shape), memory sampling, the table, the check.

mod attack;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::client::{Conn, Target};
use crate::run::{prepare, run_measured, Outcome, RunArgs};
use crate::scenario::Scenario;
pub use attack::Attack;
use attack::{attack, Answers, Setup};

#[derive(clap::Args)]
pub struct HostileArgs {
    /// Base URL of the server
    #[arg(long)]
    pub url: String,
    /// The server's process id, whose resident memory is watched
    #[arg(long)]
    pub server_pid: u32,
    /// Attacks to run, in order (default: all)
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
    let mut conn = Conn::connect(target).await?;
    let body = format!(r#"{{"organization_name":"{name}","tier":"unlimited"}}"#);
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
    let attacks = if args.attacks.is_empty() {
        <Attack as clap::ValueEnum>::value_variants().to_vec()
    } else {
        args.attacks.clone()
    };
    let key = new_key(&target, "attacker").await?;
    if attacks.contains(&Attack::BigPages) {
        seed_big_events(&target, &key, 40).await?;
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
    let baseline = run_measured(&target, &victim, victim_keys.clone(), true).await?;
    rows.push(Row {
        attack: "none (baseline)".into(),
        answers: BTreeMap::new(),
        peak_rss: rss.await?,
        victim: baseline,
    });
    for shape in attacks {
        tokio::time::sleep(settle).await;
        let ramp = Duration::from_secs(1);
        let until = Instant::now() + ramp + Duration::from_secs(args.duration + 1);
        let setup = Arc::new(Setup {
            target: target.clone(),
            key: key.clone(),
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
        let outcome = run_measured(&target, &victim, victim_keys.clone(), true).await;
        let peak_rss = rss.await;
        // Attackers still waiting record `no answer` at `until`.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(attackers_rt);
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

fn render(rows: &[Row], args: &HostileArgs) -> String {
    let mut t = format!(
        "Victim: one tenant at {} req/s for {} s per row; attackers: {} connections per shape ({} for idle), niceness {}, CPU {}.\n\n\
         | attack | attackers were answered | server peak RSS MB | victim p50 ms | victim p99 ms | victim errors |\n|---|---|---|---|---|---|\n",
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
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} | {:.2} | {:.2} | {} |",
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
