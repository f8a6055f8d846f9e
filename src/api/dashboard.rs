//! api::dashboard: `GET /dashboard`, the node's live dashboard, and `GET /dashboard/data`, the
//! figures it draws.
//!
//! The page is one document with everything inlined: its script, its styles and uPlot (a small
//! canvas chart library, vendored unmodified under `assets/dashboard/vendor`), so it needs
//! nothing from the network; its Content-Security-Policy allows exactly those inline blocks
//! (by hash) and requests to this node. The data is the node's timeline (`stats::timeline`:
//! a point a second, each second's own percentiles) in columns, as charts draw them, with the
//! node's figures as `/api/queue/stats` shows them.

use std::sync::LazyLock;
use std::time::Instant;

use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::context::Context;
use super::error::ApiError;
use super::stats::{figures, snapshot, Snapshot};
use crate::http::{Request, Response};
use crate::stats::{Percentiles, Point, Sample, POINTS, STEP};

const TEMPLATE: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");
const UPLOT_JS: &str = include_str!("../../assets/dashboard/vendor/uplot-1.6.32/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/dashboard/vendor/uplot-1.6.32/uPlot.min.css");

/// The page, assembled once, and the policy that lets exactly its inline blocks run.
struct Page {
    html: String,
    policy: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let style = format!("{UPLOT_CSS}\n{APP_CSS}");
    let hash = |text: &str| {
        let digest = Sha256::digest(text.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    let html = TEMPLATE
        .replacen("{{style}}", &style, 1)
        .replacen("{{uplot}}", UPLOT_JS, 1)
        .replacen("{{app}}", APP_JS, 1);
    let policy = format!(
        "default-src 'none'; script-src {} {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(UPLOT_JS),
        hash(APP_JS),
        hash(&style),
    );
    Page { html, policy }
});

/// `GET /dashboard`.
pub fn page(ctx: &Context) -> Result<Response, ApiError> {
    let page = &*PAGE;
    let resp = Response::text(
        200,
        "text/html; charset=utf-8",
        page.html.as_bytes().to_vec(),
    )
    .header("content-security-policy", page.policy.clone())
    .header("x-content-type-options", "nosniff")
    .header("referrer-policy", "no-referrer")
    .header("cache-control", "no-cache");
    ctx.held(resp)
}

/// `GET /dashboard/data[?since=T]`: the points after `T` (seconds from the node's start, as
/// the points' `t` gives them), every kept point without it. Reading it takes a sample when
/// one is due.
pub fn data(ctx: &Context, req: &Request<'_>) -> Result<Response, ApiError> {
    let since = since(req.query)?;
    let snap = snapshot(ctx);
    let node = figures(ctx, &snap);
    let now = Instant::now();
    if ctx.stats.timeline.due(now) {
        ctx.stats.timeline.add(sample(ctx, snap, now));
    }
    let points = ctx.stats.timeline.since(since);
    let body = json!({
        "step_s": STEP.as_secs_f64(),
        "window_points": POINTS,
        "uptime_s": round(ctx.stats.started.elapsed().as_secs_f64(), 3),
        "node": node,
        "points": columns(&points),
    });
    ctx.held(Response::json_value(200, &body))
}

fn since(query: &str) -> Result<Option<f64>, ApiError> {
    let Some((_, value)) =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "since")
    else {
        return Ok(None);
    };
    match value.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(Some(t)),
        _ => Err(ApiError::InvalidParameter(
            "since",
            "seconds from the node's start, as a point's `t` gives them".into(),
        )),
    }
}

/// What the timeline keeps of a snapshot: the counts it shows as rates, the histograms it shows
/// as each second's percentiles, and the levels it shows as sampled.
fn sample(ctx: &Context, snap: Snapshot, at: Instant) -> Sample {
    let of = |list: &[(&str, u64)], name: &str| {
        list.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    };
    let event = |name| of(&snap.events, name);
    let delivery = |name| of(&snap.deliveries, name);
    let mut counts = vec![("requests", snap.requests)];
    for name in [
        "accepted",
        "committed",
        "duplicates",
        "rejected",
        "overloaded",
        "storage_unavailable",
    ] {
        counts.push((name, event(name)));
    }
    counts.push(("batches", snap.batches));
    counts.push(("batch_retries", snap.retries));
    for name in ["delivered", "retrying", "failed"] {
        counts.push((name, delivery(name)));
    }
    let mut levels: Vec<(String, f64)> = snap
        .rings
        .iter()
        .enumerate()
        .map(|(core, ring)| (format!("queue_depth/{core}"), ring.0 as f64))
        .collect();
    levels.push((
        "persisters_connected".into(),
        ctx.stats.persisters_connected.get() as f64,
    ));
    levels.push(("delivery_backlog".into(), delivery("backlog") as f64));
    levels.push(("delivery_in_memory".into(), delivery("in_memory") as f64));
    Sample {
        at,
        counts,
        histograms: vec![
            ("ingest", snap.ingest),
            ("queue_wait", snap.wait),
            ("commit", snap.commit),
            ("delivery_end_to_end", snap.end_to_end),
        ],
        levels,
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

/// The points as columns: `t`, `unix_s`, `dt`, then `rates` and `levels` by name, and
/// `latency_us` by name and percentile (`null` where a second recorded nothing).
fn columns(points: &[Point]) -> Value {
    let column = |f: &dyn Fn(&Point) -> Value| -> Value { points.iter().map(f).collect() };
    let Some(first) = points.first() else {
        return json!({"t": [], "unix_s": [], "dt": [], "rates": {}, "latency_us": {}, "levels": {}});
    };
    // Each of `names` (the first point's, in order) with the column `col` gives for its index.
    let named = |names: Vec<String>, col: &dyn Fn(usize) -> Value| -> Map<String, Value> {
        names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, col(i)))
            .collect()
    };
    let rates = named(
        first.rates.iter().map(|r| r.0.to_string()).collect(),
        &|i| column(&|p| json!(p.rates.get(i).map(|r| round(r.1, 2)))),
    );
    let latencies = named(
        first.latencies.iter().map(|l| l.0.to_string()).collect(),
        &|i| {
            let at = |f: fn(&Percentiles) -> u64| {
                column(&|p| json!(p.latencies.get(i).and_then(|l| l.1).map(|q| f(&q))))
            };
            json!({
                "count": at(|q| q.count),
                "p50": at(|q| q.p50),
                "p90": at(|q| q.p90),
                "p99": at(|q| q.p99),
                "p99_9": at(|q| q.p99_9),
                "max": at(|q| q.max),
            })
        },
    );
    let levels = named(first.levels.iter().map(|l| l.0.clone()).collect(), &|i| {
        column(&|p| json!(p.levels.get(i).map(|l| l.1)))
    });
    json!({
        "t": column(&|p| json!(p.t)),
        "unix_s": column(&|p| json!(round(p.unix_s, 3))),
        "dt": column(&|p| json!(round(p.dt, 3))),
        "rates": rates,
        "latency_us": latencies,
        "levels": levels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_every_asset_and_its_policy_allows_exactly_them() {
        let page = &*PAGE;
        assert!(!page.html.contains("{{"), "a placeholder was left");
        for asset in [UPLOT_JS, APP_JS] {
            assert!(page.html.contains(&format!("<script>{asset}</script>")));
        }
        assert_eq!(page.policy.matches("'sha256-").count(), 3);
        assert!(!page.policy.contains("unsafe"));
        assert!(!page.html.contains("<script src") && !page.html.contains("<link"));
    }

    #[test]
    fn since_is_seconds_from_start() {
        assert_eq!(since("").unwrap(), None);
        assert_eq!(since("since=12.5").unwrap(), Some(12.5));
        for bad in ["since=-1", "since=NaN", "since=inf", "since=x"] {
            assert!(since(bad).is_err(), "{bad}");
        }
    }
}
