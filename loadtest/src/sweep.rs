//! sweep: step the open-loop rate up until a step fails, and report the highest rate that held,
//! for each target in turn. A step holds when its p99 is within the bound, at least 99.9% of
//! its answers are 2xx, and the generator achieved at least 95% of the asked rate. Machines are
//! noisy: a step that fails is run again, and fails only if it fails twice.

use crate::report;
use crate::run::{each_target, prepare, run_measured, Outcome, RunArgs};

/// The steps of a sweep.
pub struct Steps {
    pub start: u64,
    pub step: u64,
    /// Each step's rate is the last one's times this, when set (instead of adding `step`).
    pub growth: Option<f64>,
    pub max: u64,
    pub p99_ms: f64,
}

impl Steps {
    /// The rates the steps ask for, in order.
    fn rates(&self) -> Vec<u64> {
        let mut rates = Vec::new();
        let mut rate = self.start.max(1);
        while rate <= self.max {
            rates.push(rate);
            rate = match self.growth {
                Some(g) => ((rate as f64 * g).round() as u64).max(rate + 1),
                None => rate + self.step.max(1),
            };
        }
        rates
    }
}

fn holds(o: &Outcome, rate: u64, p99_ms: f64) -> bool {
    let p99 = o.latency.value_at_quantile(0.99) as f64 / 1000.0;
    p99 <= p99_ms && o.ok_fraction() >= 0.999 && o.achieved() >= 0.95 * rate as f64
}

/// What a sweep is doing, shown before each step: which step of how many, and what held so far.
fn step_line(step: u64, total: u64, rate: u64, seconds: u64, held: Option<u64>) -> String {
    let so_far = match held {
        Some(r) => format!("highest held so far {r} req/s"),
        None => "none held yet".to_string(),
    };
    format!("sweep step {step}/{total}: {rate} req/s for {seconds} s ({so_far})")
}

/// One target's sweep: its steps (the retries of failed steps included) and the highest rate
/// that held.
pub struct Swept {
    pub target: String,
    pub steps: Vec<Outcome>,
    pub held: Option<u64>,
}

async fn sweep_one(
    target: &crate::client::Target,
    run: &RunArgs,
    steps: &Steps,
) -> anyhow::Result<Swept> {
    // One set of organizations, warmed up once at the first step's rate, for every step.
    let first = RunArgs {
        rate: steps.start,
        ..run.clone()
    };
    let keys = prepare(target, &first).await?;
    let mut swept = Swept {
        target: target.name.clone(),
        steps: Vec::new(),
        held: None,
    };
    let rates = steps.rates();
    let total = rates.len() as u64;
    for (step, rate) in (1..).zip(rates) {
        eprintln!(
            "{}: {}",
            target.name,
            step_line(step, total, rate, run.duration, swept.held)
        );
        let args = RunArgs {
            rate,
            ..run.clone()
        };
        let mut ok = false;
        for attempt in ["", " (again)"] {
            let o = run_measured(target, &args, keys.clone(), true).await?;
            ok = holds(&o, rate, steps.p99_ms);
            println!(
                "{}  rate {rate:>7}  achieved {:>9.0}  p99 {:>8.2} ms  ok {:>6.2}%  {}{attempt}",
                target.name,
                o.achieved(),
                o.latency.value_at_quantile(0.99) as f64 / 1000.0,
                o.ok_fraction() * 100.0,
                if ok { "holds" } else { "FAILS" }
            );
            swept.steps.push(o);
            if ok {
                break;
            }
        }
        if !ok {
            break;
        }
        swept.held = Some(rate);
    }
    Ok(swept)
}

/// Sweeps every target in turn (`each_target`); the command fails afterwards if one could not
/// be swept.
pub async fn sweep(run: &RunArgs, steps: &Steps) -> anyhow::Result<()> {
    let bound = steps.p99_ms;
    let (swept, problems) = each_target(run, |target| async move {
        let s = sweep_one(&target, run, steps).await?;
        match s.held {
            Some(r) => println!(
                "{}: highest rate holding p99 <= {bound} ms: {r} req/s",
                s.target
            ),
            None => println!("{}: no rate held p99 <= {bound} ms", s.target),
        }
        Ok(s)
    })
    .await?;
    if let (Some(dir), false) = (&run.out, swept.is_empty()) {
        report::write_sweep(dir, &swept, bound, run.baseline.as_deref())?;
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_a_step_or_grow_by_a_factor_up_to_the_max() {
        let mut steps = Steps {
            start: 100,
            step: 50,
            growth: None,
            max: 260,
            p99_ms: 10.0,
        };
        assert_eq!(steps.rates(), [100, 150, 200, 250]);
        steps.growth = Some(1.5);
        steps.max = 600;
        assert_eq!(steps.rates(), [100, 150, 225, 338, 507]);
        steps.start = 1;
        steps.max = 3;
        assert_eq!(
            steps.rates(),
            [1, 2, 3],
            "a factor too small to move still steps"
        );
    }

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
