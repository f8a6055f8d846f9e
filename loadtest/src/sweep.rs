//! sweep: step the open-loop rate up until a step fails, and report the highest rate that held.
//! A step holds when its p99 is within the bound, at least 99.9% of its answers are 2xx, and
//! the generator achieved at least 95% of the asked rate.

use crate::report;
use crate::run::{run_once, Outcome, RunArgs};

/// The steps of a sweep.
pub struct Steps {
    pub start: u64,
    pub step: u64,
    pub max: u64,
    pub p99_ms: f64,
}

fn holds(o: &Outcome, rate: u64, p99_ms: f64) -> bool {
    let p99 = o.latency.value_at_quantile(0.99) as f64 / 1000.0;
    let achieved = o.requests() as f64 / o.elapsed.as_secs_f64();
    p99 <= p99_ms && o.ok_fraction() >= 0.999 && achieved >= 0.95 * rate as f64
}

pub async fn sweep(run: &RunArgs, steps: &Steps) -> anyhow::Result<()> {
    let target = run.targets()?.remove(0);
    let mut held = None;
    let mut rows = Vec::new();
    let mut rate = steps.start;
    while rate <= steps.max {
        let args = RunArgs {
            rate,
            ..run.clone()
        };
        let o = run_once(&target, &args, true).await?;
        let ok = holds(&o, rate, steps.p99_ms);
        println!(
            "rate {rate:>7}  achieved {:>9.0}  p99 {:>8.2} ms  ok {:>6.2}%  {}",
            o.requests() as f64 / o.elapsed.as_secs_f64(),
            o.latency.value_at_quantile(0.99) as f64 / 1000.0,
            o.ok_fraction() * 100.0,
            if ok { "holds" } else { "FAILS" }
        );
        rows.push(o);
        if !ok {
            break;
        }
        held = Some(rate);
        rate += steps.step;
    }
    let bound = steps.p99_ms;
    match held {
        Some(r) => println!("highest rate holding p99 <= {bound} ms: {r} req/s"),
        None => println!("no rate held p99 <= {bound} ms"),
    }
    if let Some(dir) = &run.out {
        report::write(dir, &rows, "sweep")?;
    }
    Ok(())
}
