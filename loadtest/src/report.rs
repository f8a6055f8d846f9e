//! report: the summary line, and the files `--out` writes: summary.json, one .hgrm percentile
//! distribution per run, an SVG plot of latency by percentile with one line per run, and
//! report.md (the runs side by side, with ratios to the first); a sweep adds sweep.json.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use serde_json::json;

use crate::plot;
use crate::run::Outcome;
use crate::sweep::Swept;

const QUANTILES: [(f64, &str); 6] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
    (1.0, "max"),
];

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn summary(o: &Outcome) -> String {
    let secs = o.elapsed.as_secs_f64();
    let achieved = o.requests() as f64 / secs;
    let mut s = format!(
        "{}\n  achieved {:.0} req/s ({:.0} events/s), asked {} req/s\n  status",
        o.target,
        achieved,
        achieved * o.events_per_request as f64,
        o.rate
    );
    for (code, n) in &o.statuses {
        let _ = write!(s, " {code}={n}");
    }
    let _ = write!(
        s,
        " connection_errors={}\n  latency ms (from intended send time):",
        o.errors
    );
    for (q, name) in QUANTILES {
        let _ = write!(s, " {name} {:.2}", ms(o.latency.value_at_quantile(q)));
    }
    match &o.verified {
        Some(Ok(v)) => {
            let _ = write!(
                s,
                "\n  verify ({}): {} acknowledged, {} found ({} more than once), {} unknown to the inbox; the inbox lists {} events",
                v.reading,
                v.acknowledged,
                v.found,
                v.found_more_than_once,
                v.unknown(),
                v.inbox_events
            );
        }
        Some(Err(e)) => {
            let _ = write!(s, "\n  verify: could not read the inbox: {e}");
        }
        None => {}
    }
    if o.rate_limited() > 0 {
        let _ = write!(
            s,
            "\n  WARNING: {} answers were 429 rate_limited (the tier's limit, not the server)",
            o.rate_limited()
        );
    }
    s
}

/// What `--verify` found wrong with one run, if anything: acknowledged events the inbox does
/// not list, or an inbox that could not be read.
pub fn verify_problem(o: &Outcome) -> Option<String> {
    match o.verified.as_ref()? {
        Ok(v) if v.unknown() > 0 => {
            // None found at all is rarely a loss: the target lists events under other ids, or
            // is not the server meant.
            let hint = if v.found == 0 {
                " (none of the ids it answered is in its inbox: check which server answers \
                 at that address, and whether it lists events by the ids it acknowledges)"
            } else {
                ""
            };
            Some(format!(
                "{}: {} of {} acknowledged events are not in its inbox{hint}",
                o.target,
                v.unknown(),
                v.acknowledged
            ))
        }
        Ok(_) => None,
        Err(e) => Some(format!("{}: verification failed: {e}", o.target)),
    }
}

/// One run as `summary.json` shows it.
fn run_json(o: &Outcome) -> serde_json::Value {
    let secs = o.elapsed.as_secs_f64();
    let mut lat = serde_json::Map::new();
    for (q, name) in QUANTILES {
        lat.insert(name.to_string(), json!(ms(o.latency.value_at_quantile(q))));
    }
    json!({
        "target": o.target,
        "asked_rate": o.rate,
        "achieved_rate": o.requests() as f64 / secs,
        "events_per_request": o.events_per_request,
        "seconds": secs,
        "statuses": o.statuses,
        "connection_errors": o.errors,
        "latency_ms": lat,
        "verify": o.verified.as_ref().map(|v| match v {
            Ok(v) => json!({
                "reading": v.reading,
                "acknowledged": v.acknowledged,
                "found": v.found,
                "found_more_than_once": v.found_more_than_once,
                "unknown": v.unknown(),
                "inbox_events": v.inbox_events,
            }),
            Err(e) => json!({"error": e}),
        }),
    })
}

/// A run's answers by status, and its connection errors, in one cell.
fn answers(o: &Outcome) -> String {
    let mut cell: Vec<String> = o
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    if o.errors > 0 {
        cell.push(format!("no answer: {}", o.errors));
    }
    cell.join(", ")
}

/// What `--verify` found, in one cell.
fn verified(o: &Outcome) -> String {
    match &o.verified {
        None => "not verified".into(),
        Some(Err(e)) => format!("could not read: {e}"),
        Some(Ok(v)) => {
            let mut cell = format!("{} of {} found", v.found, v.acknowledged);
            if v.found_more_than_once > 0 {
                let _ = write!(cell, ", {} more than once", v.found_more_than_once);
            }
            if v.unknown() > 0 {
                let _ = write!(cell, ", **{} unknown**", v.unknown());
            }
            let _ = write!(cell, "; inbox lists {} ({})", v.inbox_events, v.reading);
            cell
        }
    }
}

/// The run `baseline` names (a target's label, or its URL), the first without one.
fn baseline_of<'a>(
    runs: &[&'a Outcome],
    baseline: Option<&str>,
) -> anyhow::Result<Option<&'a Outcome>> {
    let Some(name) = baseline else {
        return Ok(runs.first().copied());
    };
    runs.iter()
        .find(|o| crate::run::is_named(&o.target, name))
        .copied()
        .map(Some)
        .with_context(|| format!("--baseline {name}: no target of that label or URL was measured"))
}

/// `report.md`: the runs side by side, then each other run's latency and rate as ratios of the
/// baseline's.
fn markdown(runs: &[&Outcome], title: &str, baseline: Option<&Outcome>) -> String {
    let mut md = format!(
        "# {title}\n\nLatency in ms from each request's intended send time (open loop).\n\n\
         | target | asked req/s | achieved req/s | p50 | p99 | p99.9 | max | answers | verify |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---|\n"
    );
    let q = |o: &Outcome, p: f64| ms(o.latency.value_at_quantile(p));
    let achieved = |o: &Outcome| o.requests() as f64 / o.elapsed.as_secs_f64();
    for o in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            o.target,
            o.rate,
            achieved(o),
            q(o, 0.5),
            q(o, 0.99),
            q(o, 0.999),
            q(o, 1.0),
            answers(o),
            verified(o)
        );
    }
    let others: Vec<&&Outcome> = runs
        .iter()
        .filter(|o| baseline.is_some_and(|b| !std::ptr::eq(**o, b)))
        .collect();
    if let Some(base) = baseline {
        if !others.is_empty() {
            let _ = write!(
                md,
                "\nRatios to the baseline, {} (below 1: lower latency, or a lower rate achieved):\n\n\
                 | target | achieved | p50 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|\n",
                base.target
            );
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}x", a / b)
                } else {
                    "-".into()
                }
            };
            for o in others {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    o.target,
                    ratio(achieved(o), achieved(base)),
                    ratio(q(o, 0.5), q(base, 0.5)),
                    ratio(q(o, 0.99), q(base, 0.99)),
                    ratio(q(o, 0.999), q(base, 0.999)),
                    ratio(q(o, 1.0), q(base, 1.0)),
                );
            }
        }
    }
    let rate_limited: Vec<&str> = runs
        .iter()
        .filter(|o| o.rate_limited() > 0)
        .map(|o| o.target.as_str())
        .collect();
    if !rate_limited.is_empty() {
        let _ = write!(
            md,
            "\n**Rate limited** (429s: the tier's limit shaped these runs, not the server): {}\n",
            rate_limited.join(", ")
        );
    }
    md
}

/// The files of `runs`: summary.json, a .hgrm per run, latency.svg, report.md (its ratios
/// against `baseline`, see `baseline_of`).
fn write_runs(
    dir: &Path,
    runs: &[&Outcome],
    title: &str,
    baseline: Option<&str>,
) -> anyhow::Result<()> {
    let base = baseline_of(runs, baseline)?;
    std::fs::create_dir_all(dir)?;
    let summary: Vec<_> = runs.iter().map(|o| run_json(o)).collect();
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    for (i, o) in runs.iter().enumerate() {
        std::fs::write(
            dir.join(format!("latency-{i}.hgrm")),
            triggers::stats::percentile_distribution(&o.latency),
        )?;
    }
    std::fs::write(dir.join("latency.svg"), plot::latency_svg(runs, title)?)?;
    std::fs::write(dir.join("report.md"), markdown(runs, title, base))?;
    Ok(())
}

pub fn write(
    dir: &Path,
    runs: &[Outcome],
    title: &str,
    baseline: Option<&str>,
) -> anyhow::Result<()> {
    let all: Vec<&Outcome> = runs.iter().collect();
    write_runs(dir, &all, title, baseline)
}

/// A sweep's files: `sweep.json` (every step of every target, and what held), and the files of
/// a run (summary, .hgrm, plot, report) for each target's highest step that held (or its first
/// step, when none held), so that the targets compare side by side at their best.
pub fn write_sweep(
    dir: &Path,
    swept: &[Swept],
    p99_ms: f64,
    baseline: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json: Vec<_> = swept
        .iter()
        .map(|s| {
            json!({
                "target": s.target,
                "p99_bound_ms": p99_ms,
                "highest_held": s.held,
                "steps": s.steps.iter().map(run_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    std::fs::write(
        dir.join("sweep.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    let best: Vec<&Outcome> = swept
        .iter()
        .filter_map(|s| {
            let held = s.steps.iter().rfind(|o| Some(o.rate) == s.held);
            held.or(s.steps.first())
        })
        .collect();
    let title = format!("sweep, p99 <= {p99_ms} ms: each target at its highest rate that held");
    write_runs(dir, &best, &title, baseline)
}
