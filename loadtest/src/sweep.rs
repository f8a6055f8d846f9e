//! sweep: step the open-loop rate up until a step fails, and report the highest rate that held.
//! A step holds when its p99 is within the bound, at least 99.9% of its answers are 2xx, and
//! the generator achieved at least 95% of the asked rate.

use crate::report;
use crate::run::{prepare, run_measured, Outcome, RunArgs};

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

/// What a sweep is doing, shown before each step: which step of how many, and what held so far.
fn step_line(step: u64, total: u64, rate: u64, seconds: u64, held: Option<u64>) -> String {
    let so_far = match held {
        Some(r) => format!("highest held so far {r} req/s"),
        None => "none held yet".to_string(),
    };
    format!("sweep step {step}/{total}: {rate} req/s for {seconds} s ({so_far})")
}

pub async fn sweep(run: &RunArgs, steps: &Steps) -> anyhow::Result<()> {
    let target = run.targets()?.remove(0);
    // One set of organizations, warmed up once at the first step's rate, for every step.
    let first = RunArgs {
        rate: steps.start,
        ..run.clone()
    };
    let keys = prepare(&target, &first).await?;
    let mut held = None;
    let mut rows = Vec::new();
    let mut rate = steps.start;
    let total = (steps.max.saturating_sub(steps.start)) / steps.step.max(1) + 1;
    let mut step = 0;
    while rate <= steps.max {
        step += 1;
        eprintln!("{}", step_line(step, total, rate, run.duration, held));
        let args = RunArgs {
            rate,
            ..run.clone()
        };
        let o = run_measured(&target, &args, keys.clone(), true).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_says_where_the_sweep_is_and_what_held() {
        assert_eq!(
            step_line(1, 5, 2000, 10, None),
            "sweep step 1/5: 2000 req/s for 10 s (none held yet)"
        );
        assert_eq!(
            step_line(3, 5, 4000, 10, Some(3000)),
            "sweep step 3/5: 4000 req/s for 10 s (highest held so far 3000 req/s)"
        );
    }
}
