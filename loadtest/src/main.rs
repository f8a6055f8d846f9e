//! loadtest: an open-loop load generator for any implementation of the Triggers API contract.
//!
//! Organizations are created through `POST /api/keys/generate` and only the shared contract is
//! spoken, so the same command measures this server and the earlier implementations.
//!
//! - `run`: one open-loop run (the scheduler: requests leave at a fixed rate, latency counts
//!   from each request's intended send time).
//! - `orgs`: a run's organizations made ready: the contract checked, the tier negotiated, a
//!   warm-up.
//! - `scenario`: what each scenario sends.
//! - `verify`: reading acknowledged events back.
//! - `sweep`: stepping the rate up to the highest that holds a p99 bound.
//! - `hostile`: attacks, one shape at a time, against a server serving a victim tenant.
//! - `webhook`: webhook delivery end to end, with a receiver in this process.
//! - `report`: the files `--out` writes (and `loadtest report` merges), `plot` the latency plot
//!   among them; `cpu`: what a target on this machine spent of the CPU during a run.
//! - `client`, `copy_ceiling`: the HTTP client, the bare-COPY ceiling.

mod client;
mod copy_ceiling;
mod cpu;
mod hostile;
mod orgs;
mod plot;
mod report;
mod run;
mod scenario;
mod side;
mod sweep;
mod verify;
mod webhook;

use clap::{Parser, Subcommand};

use run::RunArgs;

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
    /// Step the rate up until p99 crosses a bound (twice in a row); report the highest rate
    /// that held, for each --url in turn
    Sweep {
        #[command(flatten)]
        run: RunArgs,
        /// First rate (requests per second)
        #[arg(long, default_value_t = 2000)]
        start: u64,
        /// Rate added at each step
        #[arg(long, default_value_t = 2000)]
        step: u64,
        /// Multiply the rate by this at each step instead (e.g. 1.25): one sweep then spans
        /// targets hundreds of times apart in a few dozen steps
        #[arg(long)]
        growth: Option<f64>,
        /// Highest rate tried
        #[arg(long, default_value_t = 100_000)]
        max: u64,
        /// A step holds when its p99 is at or under this many milliseconds...
        #[arg(long, default_value_t = 10.0)]
        p99_ms: f64,
    },
    /// Write one comparison (report.md, summary.json, the plot; sweep.json for sweeps) from
    /// the --out directories of runs or sweeps measured apart, e.g. each implementation on a
    /// machine of its own
    Report {
        /// Directories `run --out` or `sweep --out` wrote, in the order to show them
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
        /// Where to write the comparison
        #[arg(long)]
        out: std::path::PathBuf,
        /// The report's title (the first directory's by default)
        #[arg(long)]
        title: Option<String>,
        /// The run the ratios are taken against: a label or URL (the first run by default)
        #[arg(long)]
        baseline: Option<String>,
        /// The directories are the parts of one study (runs and sweeps of the same targets,
        /// each named by its folder): write figures.md, every part's runs in one table and
        /// every sweep's highest rate that held in another, instead of merging them
        #[arg(long, conflicts_with_all = ["title", "baseline"])]
        parts: bool,
    },
    /// Attack a server one shape at a time while a victim tenant runs; report what each attack
    /// was answered, the server's peak memory and the victim's latency
    Hostile(hostile::HostileArgs),
    /// Run ingest with every organization's webhook pointed at a receiver in this process;
    /// report deliveries (once, duplicated, missing), signatures, and end-to-end latency
    Webhook(webhook::WebhookArgs),
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

/// `run`: each target in turn, one summary each. A target that cannot be measured (refused,
/// unreachable, failing mid-run) is reported and skipped: the others' results are still
/// printed and written. Fails afterwards when a target was not measured, or `--verify` found
/// acknowledged events missing from an inbox or could not read it.
async fn run_all(args: &RunArgs) -> anyhow::Result<()> {
    let (outcomes, mut problems) = run::each_target(args, |target| async move {
        eprintln!(
            "{}: {:?} at {} req/s for {} s over {} connections",
            target.name, args.scenario, args.rate, args.duration, args.connections
        );
        let keys = run::prepare(&target, args).await?;
        let o = run::run_measured(&target, args, keys, false).await?;
        println!("{}", report::summary(&o));
        Ok(o)
    })
    .await?;
    problems.extend(outcomes.iter().filter_map(report::verify_problem));
    if let (Some(dir), false) = (&args.out, outcomes.is_empty()) {
        report::write(
            dir,
            &outcomes,
            &format!("{:?}", args.scenario),
            args.baseline.as_deref(),
        )?;
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run_all(&args).await,
        Command::Report {
            dirs,
            out,
            title,
            baseline,
            parts,
        } => {
            if parts {
                report::parts(&dirs, &out)?;
                println!("{}", out.join("figures.md").display());
            } else {
                report::merge(&dirs, &out, title.as_deref(), baseline.as_deref())?;
                println!("{}", out.join("report.md").display());
            }
            Ok(())
        }
        Command::Hostile(args) => hostile::hostile(&args).await,
        Command::Webhook(args) => webhook::webhook(&args).await,
        Command::Sweep {
            run,
            start,
            step,
            growth,
            max,
            p99_ms,
        } => {
            anyhow::ensure!(growth.is_none_or(|g| g > 1.0), "--growth must be above 1");
            let steps = sweep::Steps {
                start,
                step,
                growth,
                max,
                p99_ms,
            };
            sweep::sweep(&run, &steps).await
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
            Ok(())
        }
    }
}
