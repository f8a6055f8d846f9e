//! report: the summary line, and the files `--out` writes: summary.json, one .hgrm percentile
//! distribution per run, an SVG plot of latency by percentile with one line per run, and
//! report.md (the runs side by side, with ratios to the first); a sweep adds sweep.json.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use serde_json::{json, Value};

use crate::cpu::Cpu;
use crate::plot;
use crate::run::{label, Outcome};
use crate::sweep::Swept;
use crate::verify::Verified;

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
    let achieved = o.achieved();
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
    if let Some(c) = &o.cpu {
        let _ = write!(s, "\n  cpu (this machine, {:.1} s):", c.seconds);
        if let Some(server) = &c.server {
            let _ = write!(
                s,
                " server {:.2} cores, {:.0} µs per answer ({}; {} in all);",
                server.cpu_s / c.seconds,
                o.server_cpu_us().unwrap_or_default(),
                server.holders.join(", "),
                match server.processes {
                    1 => "1 process".to_string(),
                    n => format!("{n} processes"),
                }
            );
        }
        let _ = write!(
            s,
            " machine less loadtest {:.2} cores, {:.0} µs per answer; loadtest {:.2} cores",
            c.others_s() / c.seconds,
            o.machine_cpu_us().unwrap_or_default(),
            c.loadtest_s / c.seconds
        );
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

/// One run as `summary.json` shows it; `outcome` reads it back.
fn run_json(o: &Outcome) -> serde_json::Value {
    let mut lat = serde_json::Map::new();
    for (q, name) in QUANTILES {
        lat.insert(name.to_string(), json!(ms(o.latency.value_at_quantile(q))));
    }
    json!({
        "target": o.target,
        "asked_rate": o.rate,
        "achieved_rate": o.achieved(),
        "events_per_request": o.events_per_request,
        "seconds": o.elapsed.as_secs_f64(),
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
        "cpu": o.cpu.as_ref().map(Cpu::to_json),
        "histogram": triggers::stats::encoded(&o.latency),
    })
}

/// A run of a `summary.json` (as `run_json` wrote it), for `loadtest report`.
fn outcome(v: &Value) -> anyhow::Result<Outcome> {
    let target = v["target"].as_str().context("a run without a target")?;
    let field = |k: &str| v[k].as_u64().with_context(|| format!("{target}: no {k}"));
    let latency = v["histogram"]
        .as_str()
        .and_then(triggers::stats::decoded)
        .with_context(|| {
            format!("{target}: no latency histogram (written by a loadtest older than `report`)")
        })?;
    let verified = match &v["verify"] {
        Value::Null => None,
        Value::Object(m) if m.contains_key("error") => {
            Some(Err(m["error"].as_str().unwrap_or("?").to_string()))
        }
        r => Some(Ok(Verified {
            acknowledged: r["acknowledged"].as_u64().context("verify.acknowledged")? as usize,
            found: r["found"].as_u64().context("verify.found")? as usize,
            found_more_than_once: r["found_more_than_once"].as_u64().unwrap_or(0) as usize,
            inbox_events: r["inbox_events"].as_u64().unwrap_or(0) as usize,
            reading: r["reading"].as_str().unwrap_or("?").to_string(),
        })),
    };
    Ok(Outcome {
        target: target.to_string(),
        rate: field("asked_rate")?,
        events_per_request: field("events_per_request")? as usize,
        elapsed: Duration::from_secs_f64(v["seconds"].as_f64().context("seconds")?),
        latency,
        statuses: v["statuses"]
            .as_object()
            .context("statuses")?
            .iter()
            .filter_map(|(s, n)| Some((s.parse().ok()?, n.as_u64()?)))
            .collect(),
        errors: field("connection_errors")?,
        verified,
        acked: Vec::new(),
        cpu: Cpu::from_json(&v["cpu"]),
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

/// `report.md`: the runs side by side, a sweep's highest rates that held (`sweeps`, as
/// sweep.json holds them), the CPU of targets on this machine, then each other run's figures
/// as ratios of the baseline's.
fn markdown(
    runs: &[&Outcome],
    title: &str,
    baseline: Option<&Outcome>,
    sweeps: &[Value],
) -> String {
    let mut md = format!(
        "# {title}\n\nLatency in ms from each request's intended send time (open loop).\n\n\
         | target | asked req/s | achieved req/s | p50 | p99 | p99.9 | max | answers | verify |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---|\n"
    );
    let q = |o: &Outcome, p: f64| ms(o.latency.value_at_quantile(p));
    for o in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            o.target,
            o.rate,
            o.achieved(),
            q(o, 0.5),
            q(o, 0.99),
            q(o, 0.999),
            q(o, 1.0),
            answers(o),
            verified(o)
        );
    }
    if !sweeps.is_empty() {
        let rows: Vec<(&str, &Value)> = sweeps.iter().map(|s| ("", s)).collect();
        md.push_str(&sweep_table(&rows));
    }
    let with_cpu = runs.iter().any(|o| o.cpu.is_some());
    if with_cpu {
        md.push_str(&cpu_table(runs));
    }
    let others: Vec<&&Outcome> = runs
        .iter()
        .filter(|o| baseline.is_some_and(|b| !std::ptr::eq(**o, b)))
        .collect();
    if let (Some(base), false) = (baseline, others.is_empty()) {
        let (cpu_head, cpu_rule) = if with_cpu {
            (" server CPU/answer | machine CPU/answer |", "---:|---:|")
        } else {
            ("", "")
        };
        let _ = write!(
            md,
            "\nRatios to the baseline, {} (below 1: lower latency, less CPU, or a lower rate \
             achieved):\n\n| target | achieved | p50 | p99 | p99.9 | max |{cpu_head}\n\
             |---|---:|---:|---:|---:|---:|{cpu_rule}\n",
            base.target
        );
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        for o in others {
            let _ = write!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                o.target,
                ratio(Some(o.achieved()), Some(base.achieved())),
                ratio(Some(q(o, 0.5)), Some(q(base, 0.5))),
                ratio(Some(q(o, 0.99)), Some(q(base, 0.99))),
                ratio(Some(q(o, 0.999)), Some(q(base, 0.999))),
                ratio(Some(q(o, 1.0)), Some(q(base, 1.0))),
            );
            if with_cpu {
                let _ = write!(
                    md,
                    " {} | {} |",
                    ratio(o.server_cpu_us(), base.server_cpu_us()),
                    ratio(o.machine_cpu_us(), base.machine_cpu_us())
                );
            }
            md.push('\n');
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

/// The CPU each run's target spent, for targets on this machine.
fn cpu_table(runs: &[&Outcome]) -> String {
    let mut md = String::from(
        "\nCPU on this machine during each run. **server**: the processes holding the target's \
         listening socket, and their descendants (a database, queue or worker started apart \
         from it is not counted); **machine**: the CPU time of every process but loadtest (on a \
         machine given to one target: everything it runs, and whatever else ran). Cores: CPU \
         seconds per second; µs: CPU per request answered.\n\n\
         | target | server cores | server µs/answer | server processes | machine cores | \
         machine µs/answer | loadtest cores |\n|---|---:|---:|---|---:|---:|---:|\n",
    );
    for o in runs {
        let Some(c) = &o.cpu else {
            let _ = writeln!(
                md,
                "| {} | - | - | not on this machine | - | - | - |",
                o.target
            );
            continue;
        };
        let server = match &c.server {
            Some(s) => format!(
                "{:.2} | {:.0} | {} ({} in all)",
                s.cpu_s / c.seconds,
                o.server_cpu_us().unwrap_or_default(),
                s.holders.join(", "),
                s.processes
            ),
            None => "- | - | not readable by loadtest".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {server} | {:.2} | {:.0} | {:.2} |",
            o.target,
            c.others_s() / c.seconds,
            o.machine_cpu_us().unwrap_or_default(),
            c.loadtest_s / c.seconds
        );
    }
    md
}

/// The highest rate each swept target held, from sweep.json's entries, each with the part of a
/// study it belongs to (empty outside `--parts`).
fn sweep_table(sweeps: &[(&str, &Value)]) -> String {
    let parts = sweeps.iter().any(|(part, _)| !part.is_empty());
    let (head, rule) = if parts { ("| part ", "|---") } else { ("", "") };
    let mut md = format!(
        "\n{head}| swept target | p99 bound ms | highest rate that held | p99 there | steps run |\n\
         {rule}|---|---:|---:|---:|---:|\n",
    );
    for (part, s) in sweeps {
        let steps = s["steps"].as_array().map_or(&[][..], Vec::as_slice);
        let held = s["highest_held"].as_u64();
        let p99 = held
            .and_then(|r| steps.iter().rfind(|o| o["asked_rate"].as_u64() == Some(r)))
            .and_then(|o| o["latency_ms"]["p99"].as_f64());
        if parts {
            let _ = write!(md, "| {part} ");
        }
        let target = s["target"].as_str().unwrap_or("?");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            if parts { label(target) } else { target },
            s["p99_bound_ms"],
            held.map_or("none".into(), |r| format!("{r} req/s")),
            p99.map_or("-".into(), |p| format!("{p:.2}")),
            steps.len()
        );
    }
    md
}

/// The files of `runs`: summary.json, a .hgrm per run, latency.svg, report.md (its ratios
/// against `baseline`, see `baseline_of`); and sweep.json, when they are a sweep's (`sweeps`).
fn write_runs(
    dir: &Path,
    runs: &[&Outcome],
    title: &str,
    baseline: Option<&str>,
    sweeps: &[Value],
) -> anyhow::Result<()> {
    let base = baseline_of(runs, baseline)?;
    std::fs::create_dir_all(dir)?;
    let json = |v: &[Value]| anyhow::Ok(serde_json::to_string_pretty(v)? + "\n");
    let summary: Vec<_> = runs.iter().map(|o| run_json(o)).collect();
    std::fs::write(dir.join("summary.json"), json(&summary)?)?;
    if !sweeps.is_empty() {
        std::fs::write(dir.join("sweep.json"), json(sweeps)?)?;
    }
    for (i, o) in runs.iter().enumerate() {
        std::fs::write(
            dir.join(format!("latency-{i}.hgrm")),
            triggers::stats::percentile_distribution(&o.latency),
        )?;
    }
    std::fs::write(dir.join("latency.svg"), plot::latency_svg(runs, title)?)?;
    std::fs::write(dir.join("report.md"), markdown(runs, title, base, sweeps))?;
    Ok(())
}

pub fn write(
    dir: &Path,
    runs: &[Outcome],
    title: &str,
    baseline: Option<&str>,
) -> anyhow::Result<()> {
    let all: Vec<&Outcome> = runs.iter().collect();
    write_runs(dir, &all, title, baseline, &[])
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
    let sweeps: Vec<_> = swept
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
    let best: Vec<&Outcome> = swept
        .iter()
        .filter_map(|s| {
            let held = s.steps.iter().rfind(|o| Some(o.rate) == s.held);
            held.or(s.steps.first())
        })
        .collect();
    let title = format!("sweep, p99 <= {p99_ms} ms: each target at its highest rate that held");
    write_runs(dir, &best, &title, baseline, &sweeps)
}

/// What one `--out` directory holds: its runs (a sweep's: each target's best step), and its
/// sweeps' entries when it is a sweep's.
struct OutDir {
    runs: Vec<Outcome>,
    sweeps: Option<Vec<Value>>,
}

fn read_out_dir(dir: &Path) -> anyhow::Result<OutDir> {
    let read = |name: &str| -> anyhow::Result<Option<Value>> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Ok(Some(serde_json::from_str(&text).with_context(|| {
                    format!("{}: not JSON", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    let summary = read("summary.json")?.with_context(|| {
        format!(
            "{}: no summary.json (not a loadtest --out directory)",
            dir.display()
        )
    })?;
    let runs = summary
        .as_array()
        .context("summary.json: not a list of runs")?
        .iter()
        .map(|run| outcome(run).with_context(|| format!("{}", dir.display())))
        .collect::<anyhow::Result<_>>()?;
    let sweeps = match read("sweep.json")? {
        Some(Value::Array(s)) => Some(s),
        Some(_) => anyhow::bail!("{}: sweep.json is not a list", dir.display()),
        None => None,
    };
    Ok(OutDir { runs, sweeps })
}

/// `loadtest report`: the files of runs or sweeps measured apart (each `--out` directory of
/// its own: a target per machine, say) written again as one comparison into `out`. The title
/// is the first directory's unless given.
pub fn merge(
    dirs: &[PathBuf],
    out: &Path,
    title: Option<&str>,
    baseline: Option<&str>,
) -> anyhow::Result<()> {
    let (mut runs, mut sweeps, mut swept_dirs) = (Vec::new(), Vec::new(), 0);
    for dir in dirs {
        let d = read_out_dir(dir)?;
        runs.extend(d.runs);
        if let Some(s) = d.sweeps {
            sweeps.extend(s);
            swept_dirs += 1;
        }
    }
    anyhow::ensure!(
        swept_dirs == 0 || swept_dirs == dirs.len(),
        "some of these directories are sweeps and some are runs: report them apart"
    );
    let title = match title {
        Some(t) => t.to_string(),
        None => std::fs::read_to_string(dirs[0].join("report.md"))
            .ok()
            .and_then(|md| Some(md.lines().next()?.strip_prefix("# ")?.to_string()))
            .unwrap_or_else(|| "comparison".into()),
    };
    let all: Vec<&Outcome> = runs.iter().collect();
    write_runs(out, &all, &title, baseline, &sweeps)
}

/// `loadtest report --parts`: the parts of one study (each directory a run or a sweep, named
/// by its folder) as two tables, `figures.md`: every run of every part, and every sweep's
/// highest rate that held.
pub fn parts(dirs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut runs = String::from(
        "| part | target | asked req/s | achieved req/s | p50 | p99 | p99.9 | max | \
         found / acknowledged | CPU µs/answer: server, machine |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    let mut swept = Vec::new();
    for dir in dirs {
        let part = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        let d = read_out_dir(dir)?;
        if let Some(s) = d.sweeps {
            swept.extend(s.into_iter().map(|s| (part.clone(), s)));
            continue;
        }
        for o in &d.runs {
            let q = |p: f64| ms(o.latency.value_at_quantile(p));
            let found = match &o.verified {
                Some(Ok(v)) => format!("{} / {}", v.found, v.acknowledged),
                Some(Err(_)) => "could not read".into(),
                None => "-".into(),
            };
            let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
            let cpu = match o.cpu {
                Some(_) => format!("{}, {}", us(o.server_cpu_us()), us(o.machine_cpu_us())),
                None => "-".into(),
            };
            let _ = writeln!(
                runs,
                "| {part} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {found} | {cpu} |",
                label(&o.target),
                o.rate,
                o.achieved(),
                q(0.5),
                q(0.99),
                q(0.999),
                q(1.0),
            );
        }
    }
    let mut md = format!(
        "Latency in ms from each request's intended send time (open loop). CPU per request \
         answered, in µs: the target's serving processes, and every process on the machine but \
         loadtest (see each part's report).\n\n{runs}"
    );
    if !swept.is_empty() {
        let rows: Vec<(&str, &Value)> = swept.iter().map(|(p, s)| (p.as_str(), s)).collect();
        md.push_str(&sweep_table(&rows));
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("figures.md"), md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Server;
    use crate::run::outcome_of;

    fn with_cpu(mut o: Outcome, server_s: f64, machine_s: f64) -> Outcome {
        o.cpu = Some(Cpu {
            seconds: 1.0,
            server: Some(Server {
                cpu_s: server_s,
                holders: vec!["triggers 42".into()],
                processes: 3,
            }),
            machine_s,
            loadtest_s: 0.1,
        });
        o
    }

    #[test]
    fn a_run_read_back_from_its_summary_is_the_run_written() {
        let mut o = with_cpu(
            outcome_of("this (http://a)", &[900, 1000, 50_000]),
            0.02,
            0.5,
        );
        o.errors = 2;
        o.verified = Some(Ok(Verified {
            acknowledged: 100,
            found: 99,
            found_more_than_once: 1,
            inbox_events: 120,
            reading: "no status".into(),
        }));
        let back = outcome(&run_json(&o)).unwrap();
        assert_eq!(back.target, o.target);
        assert_eq!((back.rate, back.errors), (o.rate, o.errors));
        assert_eq!(back.statuses, o.statuses);
        assert_eq!(
            back.latency, o.latency,
            "the whole histogram, not its percentiles"
        );
        assert_eq!(back.verified, o.verified);
        assert_eq!(back.cpu, o.cpu);
        assert_eq!(run_json(&back), run_json(&o));

        let mut unread = o;
        unread.verified = Some(Err("422 from the inbox".into()));
        assert_eq!(
            outcome(&run_json(&unread)).unwrap().verified,
            Some(Err("422 from the inbox".into()))
        );
        let mut old = run_json(&unread);
        old.as_object_mut().unwrap().remove("histogram");
        let e = outcome(&old).err().unwrap().to_string();
        assert!(e.contains("no latency histogram"), "{e}");
    }

    #[test]
    fn the_report_sets_cpu_per_answer_beside_the_baseline_and_says_who_was_not_measured() {
        // 100 answers each: 0.02 s of server CPU is 200 µs per answer; 0.5 s of the machine,
        // less loadtest's 0.1, is 4,000.
        let a = with_cpu(outcome_of("a", &[1000]), 0.02, 0.5);
        let b = with_cpu(outcome_of("b", &[3000]), 0.08, 0.9);
        let remote = outcome_of("remote", &[2000]);
        let md = markdown(&[&a, &b, &remote], "t", Some(&a), &[]);
        assert!(
            md.contains("| a | 0.02 | 200 | triggers 42 (3 in all) | 0.40 | 4000 | 0.10 |"),
            "{md}"
        );
        assert!(
            md.contains("| remote | - | - | not on this machine |"),
            "{md}"
        );
        assert!(
            md.contains("| b | 1.00x | 3.00x | 3.00x | 3.00x | 3.00x | 4.00x | 2.00x |"),
            "{md}"
        );
        assert!(
            md.contains("| remote | 1.00x | 2.00x | 2.00x | 2.00x | 2.00x | - | - |"),
            "{md}"
        );
        let plain = markdown(&[&remote], "t", Some(&remote), &[]);
        assert!(
            !plain.contains("CPU"),
            "no CPU table when nothing was measured: {plain}"
        );
    }

    #[test]
    fn a_sweeps_table_gives_each_target_its_highest_rate_and_the_p99_there() {
        let step = |rate: u64, p99: f64| json!({"asked_rate": rate, "latency_ms": {"p99": p99}});
        let sweeps = [
            json!({"target": "a (http://a)", "p99_bound_ms": 10.0, "highest_held": 200,
                   "steps": [step(100, 1.0), step(200, 12.0), step(200, 4.0), step(300, 30.0), step(300, 31.0)]}),
            json!({"target": "b (http://b)", "p99_bound_ms": 10.0, "highest_held": null,
                   "steps": [step(100, 40.0), step(100, 41.0)]}),
        ];
        let unparted: Vec<_> = sweeps.iter().map(|s| ("", s)).collect();
        let md = sweep_table(&unparted);
        assert!(
            md.contains("\n| a (http://a) | 10.0 | 200 req/s | 4.00 | 5 |"),
            "{md}"
        );
        assert!(
            md.contains("\n| b (http://b) | 10.0 | none | - | 2 |"),
            "{md}"
        );
        let parted: Vec<_> = sweeps.iter().map(|s| ("sweep-p10", s)).collect();
        let md = sweep_table(&parted);
        assert!(md.contains("| part | swept target |"), "{md}");
        assert!(
            md.contains("\n| sweep-p10 | a | 10.0 | 200 req/s |"),
            "{md}"
        );
    }
}
