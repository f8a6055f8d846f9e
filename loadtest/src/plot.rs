//! plot: latency by percentile, one line per run, as HdrHistogram's plotter draws it: the
//! percentile on a log scale of 1/(1-p) (so 99%, 99.9% and 99.999% are evenly apart) and the
//! latency on a log scale too (a server a hundred times faster is a line of its own, not a flat
//! line at zero). Drawn with plotters into an SVG; each run has a colour of its own.

use plotters::prelude::*;

use crate::run::Outcome;

/// Percentiles shown: up to 99.999% (x = 5 on the 1/(1-p) decade scale).
const X_MAX: f64 = 5.0;
const LABELS: [&str; 6] = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
/// Points per line.
const POINTS: u32 = 200;

/// Twelve colours told apart at a glance (Tableau 10 and two more), then hues a golden angle
/// apart: a sweep of many runs gets a colour per run, never one twice.
pub fn color(i: usize) -> RGBColor {
    const PALETTE: [(u8, u8, u8); 12] = [
        (0x4e, 0x79, 0xa7),
        (0xe1, 0x57, 0x59),
        (0x59, 0xa1, 0x4f),
        (0xf2, 0x8e, 0x2b),
        (0xb0, 0x7a, 0xa1),
        (0x76, 0xb7, 0xb2),
        (0xed, 0xc9, 0x48),
        (0x9c, 0x75, 0x5f),
        (0xff, 0x9d, 0xa7),
        (0xba, 0xb0, 0xac),
        (0x1b, 0x1b, 0x1b),
        (0x8c, 0xd1, 0x7d),
    ];
    if let Some(&(r, g, b)) = PALETTE.get(i) {
        return RGBColor(r, g, b);
    }
    let hue = (i as f64 * 137.508) % 360.0;
    let (r, g, b) = HSLColor(hue / 360.0, 0.65, 0.45).rgb();
    RGBColor(r, g, b)
}

/// The latency in ms at percentile `x` (on the decade scale) of a run.
fn at(o: &Outcome, x: f64) -> f64 {
    let p = 1.0 - 10f64.powf(-x);
    (o.latency.value_at_quantile(p) as f64 / 1000.0).max(0.001)
}

/// The SVG of `runs`' latency by percentile.
pub fn latency_svg(runs: &[&Outcome], title: &str) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let lines: Vec<Vec<(f64, f64)>> = runs
            .iter()
            .map(|o| {
                (0..=POINTS)
                    .map(|k| {
                        let x = X_MAX * f64::from(k) / f64::from(POINTS);
                        (x, at(o, x))
                    })
                    .collect()
            })
            .collect();
        let values = lines.iter().flatten().map(|p| p.1);
        let low = values.clone().fold(f64::INFINITY, f64::min).min(1.0);
        let high = values.fold(0.0, f64::max).max(1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{title}: latency by percentile (ms, from intended send time)"),
                ("sans-serif", 18),
            )
            .margin(16)
            .margin_right(40)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..X_MAX, (low / 1.5..high * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(LABELS.len())
            .x_label_formatter(&|x| {
                LABELS
                    .get(x.round() as usize)
                    .filter(|_| (x - x.round()).abs() < 1e-6)
                    .map_or(String::new(), |l| (*l).to_string())
            })
            .y_label_formatter(&|v| {
                if *v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            })
            .x_desc("percentile")
            .y_desc("latency (ms, log scale)")
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()?;
        for (i, (o, line)) in runs.iter().zip(lines).enumerate() {
            let style = color(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(line, style))?
                .label(format!("{} @ {} req/s", o.target, o.rate))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0xcc, 0xcc, 0xcc))
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::outcome_of as outcome;

    /// Lines of an SVG this module drew that plot a run (axes and ticks have a few points).
    fn data_lines(svg: &str) -> usize {
        svg.split("<polyline")
            .skip(1)
            .filter(|l| {
                let points = l.split("points=\"").nth(1).unwrap_or("");
                points
                    .split('"')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .count()
                    > 100
            })
            .count()
    }

    #[test]
    fn a_line_per_run_on_log_axes_with_every_label_inside_the_picture() {
        // One server a hundred times faster than the other: both lines must be drawn apart.
        let fast = outcome("fast", &(1..1000).map(|i| 100 + i).collect::<Vec<_>>());
        let slow = outcome(
            "slow",
            &(1..1000).map(|i| 10_000 + 100 * i).collect::<Vec<_>>(),
        );
        let svg = latency_svg(&[&fast, &slow], "test").unwrap();
        assert_eq!(data_lines(&svg), 2);
        for label in [
            "99.999%",
            "fast @ 100 req/s",
            "slow @ 100 req/s",
            "log scale",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        for text in svg.split("<text ").skip(1) {
            let x: f64 = text["x=\"".len()..]
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!((0.0..=960.0).contains(&x), "a label at x={x}");
        }
    }

    #[test]
    fn every_run_of_a_long_sweep_has_a_colour_of_its_own() {
        let colors: std::collections::HashSet<(u8, u8, u8)> = (0..40)
            .map(|i| {
                let c = color(i);
                (c.0, c.1, c.2)
            })
            .collect();
        assert_eq!(colors.len(), 40);
    }
}
