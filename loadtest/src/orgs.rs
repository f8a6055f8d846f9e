//! orgs: the organizations a run measures with, made ready before anything is measured: the
//! target's contract checked, the tier negotiated, the organizations created, and a warm-up.
//!
//! Tiers differ between implementations: this server grants `unlimited` when its operator
//! allows it; an earlier one refuses an unknown tier (422), another accepts any name and limits
//! it like `free` without a word. So with `--tier auto` (the default) the tiers are asked for
//! from the highest down, and a tier is taken when the target accepts it and its limit (from
//! the key's answer, or `GET /api/keys`) covers what the run will send each organization. What
//! was granted, and what was refused on the way, is said; a limit below the run's needs is
//! warned about loudly, before and after the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::client::{Conn, Target};
use crate::run::{run_keys, RunArgs};
use crate::scenario::Scenario;

/// Tiers tried by `--tier auto`, highest first (the contract's names).
const TIERS: [&str; 7] = [
    "unlimited",
    "enterprise",
    "business",
    "professional",
    "pro",
    "starter",
    "free",
];

/// Checks that `target` speaks the events contract before anything is measured, and says on
/// stderr what answered: the contract's `GET /health` is a JSON object with a `status`.
/// Anything else (nothing listening, another program holding the port, a web server, a proxy's
/// error page) is refused here, so that it is never measured, or verified, as if it were the
/// server meant.
pub async fn check_contract(target: &Target) -> anyhow::Result<Conn> {
    let mut conn = Conn::connect(target).await.with_context(|| {
        format!(
            "{}: nothing accepts connections there: is the server running?",
            target.name
        )
    })?;
    let r = conn
        .request("GET", "/health", None, b"")
        .await
        .with_context(|| format!("{}: GET /health got no HTTP answer", target.name))?;
    let health: Option<serde_json::Map<String, Value>> = serde_json::from_slice(&r.body).ok();
    let status = health
        .as_ref()
        .and_then(|h| h.get("status"))
        .and_then(Value::as_str);
    let (Some(health), Some(status), 200 | 503) = (&health, status, r.status) else {
        let body = String::from_utf8_lossy(&r.body);
        let body: String = body.chars().take(120).collect();
        bail!(
            "{}: this is not an events server speaking the contract: GET /health answered HTTP \
             {} {body:?}, not the JSON {{\"status\": ...}} it should. Is the server you meant \
             running there, or does another program hold that port?",
            target.name,
            r.status
        );
    };
    let version = health.get("version").and_then(Value::as_str).unwrap_or("?");
    eprintln!(
        "{}: GET /health: HTTP {} status {status}, version {version}",
        target.name, r.status
    );
    Ok(conn)
}

/// One organization created, or why not.
enum Created {
    /// Its key, and the events per minute its tier allows when the target says.
    Key(String, Option<u64>),
    /// The tier was refused: the answer's status and body.
    Refused(u16, String),
}

/// Creates one organization on `tier`; waits out a 429 on key generation.
async fn create(conn: &mut Conn, name: &str, tier: &str) -> anyhow::Result<Created> {
    let body = json!({"organization_name": name, "tier": tier}).to_string();
    loop {
        let r = conn
            .request("POST", "/api/keys/generate", None, body.as_bytes())
            .await?;
        let text = String::from_utf8_lossy(&r.body).chars().take(200).collect();
        match r.status {
            200 | 201 => {
                let v: Value = serde_json::from_slice(&r.body)?;
                let key = v["api_key"].as_str().context("no api_key")?.to_string();
                let limit = match v["rate_limit_per_minute"].as_u64() {
                    Some(l) => Some(l),
                    None => limit_of(conn, &key).await?,
                };
                return Ok(Created::Key(key, limit));
            }
            429 => {
                let wait = r.retry_after.unwrap_or(1);
                eprintln!("key generation rate limited; waiting {wait}s (raise the server's signup limit for large runs)");
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            s @ 400..=499 => return Ok(Created::Refused(s, text)),
            s => bail!("creating an organization: HTTP {s}: {text}"),
        }
    }
}

/// The events per minute a key's organization may send, as `GET /api/keys` says (`None`: no
/// limit said).
async fn limit_of(conn: &mut Conn, key: &str) -> anyhow::Result<Option<u64>> {
    let r = conn.request("GET", "/api/keys", Some(key), b"").await?;
    if r.status != 200 {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok(v["rate_limit_per_minute"].as_u64())
}

/// The events per minute each organization receives in a run of `args` over `orgs`.
fn needed_per_org(args: &RunArgs, orgs: usize) -> u64 {
    let per_request = match args.scenario {
        Scenario::Batch => args.batch_size,
        _ => 1,
    } as f64;
    (args.rate as f64 * per_request * 60.0 / orgs.max(1) as f64).ceil() as u64
}

/// The tier a run takes, and its limit when the target says one.
pub struct Granted {
    pub tier: String,
    pub limit: Option<u64>,
    /// Events per minute each organization receives.
    pub needed: u64,
}

impl Granted {
    pub fn falls_short(&self) -> bool {
        self.limit.is_some_and(|l| l < self.needed)
    }
}

/// Creates `n` organizations on the tier negotiated for `args` (see the module's comment),
/// after the contract check; says what was granted.
pub async fn create_orgs(
    target: &Target,
    args: &RunArgs,
    n: usize,
) -> anyhow::Result<(Vec<String>, Granted)> {
    let mut conn = check_contract(target).await?;
    let needed = needed_per_org(args, n);
    let asked: Vec<&str> = if args.tier == "auto" {
        TIERS.to_vec()
    } else {
        vec![args.tier.as_str()]
    };
    let mut refused = Vec::new();
    // The first organization tries the tiers; the best accepted so far is kept.
    let mut best: Option<(String, String, Option<u64>)> = None;
    for tier in &asked {
        match create(&mut conn, "loadtest-0", tier).await? {
            Created::Refused(status, body) => {
                refused.push(format!("`{tier}` HTTP {status} {body}"));
            }
            Created::Key(key, limit) => {
                let covers = limit.is_none_or(|l| l >= needed);
                let better = best
                    .as_ref()
                    .is_none_or(|(_, _, b)| limit.unwrap_or(u64::MAX) > b.unwrap_or(u64::MAX));
                if better {
                    best = Some((tier.to_string(), key, limit));
                }
                if covers {
                    break;
                }
                refused.push(format!(
                    "`{tier}` allows only {} events/min",
                    limit.unwrap_or(0)
                ));
            }
        }
    }
    let Some((tier, first, limit)) = best else {
        bail!(
            "{}: no tier was granted: {}",
            target.name,
            refused.join("; ")
        );
    };
    let granted = Granted {
        tier,
        limit,
        needed,
    };
    let said = match granted.limit {
        Some(l) => format!("{l} events/min per organization"),
        None => "no limit said".into(),
    };
    let passed = if refused.is_empty() {
        String::new()
    } else {
        format!("; passed over: {}", refused.join("; "))
    };
    eprintln!(
        "{}: tier `{}` granted ({said}; the run sends each organization ~{needed}/min){passed}",
        target.name, granted.tier
    );
    if granted.falls_short() {
        eprintln!(
            "WARNING: {}: the tier granted allows {said}, below the ~{needed}/min this run sends \
             each organization: expect 429s, which measure the limit, not the server (raise \
             --orgs, lower --rate, or let the operator grant a higher tier)",
            target.name
        );
    }
    let mut keys = vec![first];
    while keys.len() < n {
        match create(
            &mut conn,
            &format!("loadtest-{}", keys.len()),
            &granted.tier,
        )
        .await?
        {
            Created::Key(key, _) => keys.push(key),
            Created::Refused(status, body) => bail!(
                "{}: tier `{}` granted once, then refused: HTTP {status} {body}",
                target.name,
                granted.tier
            ),
        }
    }
    Ok((keys, granted))
}

/// Readies `keys` on `target` before a measured run: each key used once (an implementation may
/// do costly work on a key's first use, such as hashing it), then `args.warmup` seconds of the
/// run's own load, neither measured.
pub async fn warm_up(
    target: &Target,
    args: &RunArgs,
    keys: &Arc<Vec<String>>,
) -> anyhow::Result<()> {
    if args.warmup == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let mut conn = Conn::connect(target).await?;
    for key in keys.iter() {
        let r = conn
            .request(
                "POST",
                "/api/events",
                Some(key),
                br#"{"type":"loadtest.warmup","payload":{}}"#,
            )
            .await?;
        if !(200..300).contains(&r.status) {
            bail!(
                "{}: warm-up event answered HTTP {}: {}",
                target.name,
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    let warm = RunArgs {
        duration: args.warmup,
        verify: false,
        ..args.clone()
    };
    let o = run_keys(target, &warm, keys.clone(), Instant::now(), true).await?;
    eprintln!(
        "{}: warmed up: every key used once, then {} s at {} req/s ({} answered 2xx), not measured ({:.1} s)",
        target.name,
        args.warmup,
        args.rate,
        o.ok(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(line: &[&str]) -> RunArgs {
        let mut argv = vec!["loadtest", "--url", "http://127.0.0.1:1"];
        argv.extend_from_slice(line);
        Cli::parse_from(argv).run
    }

    #[test]
    fn each_organization_needs_its_share_of_the_events_per_minute() {
        assert_eq!(needed_per_org(&args(&["--rate", "1000"]), 100), 600);
        let batch = args(&["--rate", "10", "--scenario", "batch", "--batch-size", "50"]);
        assert_eq!(needed_per_org(&batch, 10), 3_000);
        let short = Granted {
            tier: "free".into(),
            limit: Some(100),
            needed: 600,
        };
        assert!(short.falls_short());
        let unsaid = Granted {
            limit: None,
            ..short
        };
        assert!(!unsaid.falls_short());
    }
}
