//! api::stats: `GET /api/queue/stats`: queue depths, counters and latency histograms merged
//! across cores and persisters. `?format=hgrm` gives one histogram (`&histogram=`, the ingest
//! one unless named) as the classic HdrHistogram percentile-distribution text, values in
//! milliseconds (said in the `X-Histogram-Unit` header).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::context::{AckMode, Context};
use super::error::ApiError;
use crate::http::{Request, Response};
use crate::stats::{encoded, CoreStats, Counter, PersistStats, Stats};

fn summary(h: &Histogram<u64>) -> Value {
    let q = |p: f64| h.value_at_quantile(p);
    json!({
        "count": h.len(),
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "p99_9": q(0.999),
        "p99_99": q(0.9999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// Everything the stats views (and the dashboard) show, read once.
pub(super) struct Snapshot {
    /// Requests answered, every route.
    pub(super) requests: u64,
    pub(super) ingest: Histogram<u64>,
    pub(super) wait: Histogram<u64>,
    pub(super) commit: Histogram<u64>,
    rows: Histogram<u64>,
    /// (name, value) in a fixed order, shared by both views.
    pub(super) events: Vec<(&'static str, u64)>,
    pub(super) batches: u64,
    pub(super) retries: u64,
    /// Per core: depth, capacity, queued payload bytes.
    pub(super) rings: Vec<(usize, usize, usize)>,
    /// Webhook delivery: commit → first attempt, one attempt, commit → delivered.
    first_attempt: Histogram<u64>,
    attempt: Histogram<u64>,
    pub(super) end_to_end: Histogram<u64>,
    pub(super) deliveries: Vec<(&'static str, u64)>,
}

impl Snapshot {
    /// The latency histograms, by the names `latency_us` shows them under.
    fn latencies(&self) -> [(&'static str, &Histogram<u64>); 6] {
        [
            ("ingest", &self.ingest),
            ("queue_wait", &self.wait),
            ("commit", &self.commit),
            ("delivery_first_attempt", &self.first_attempt),
            ("delivery_attempt", &self.attempt),
            ("delivery_end_to_end", &self.end_to_end),
        ]
    }
}

pub(super) fn snapshot(ctx: &Context) -> Snapshot {
    let stats: &Stats = &ctx.stats;
    let cores =
        |f: fn(&CoreStats) -> &Counter| -> u64 { stats.cores.iter().map(|c| f(c).get()).sum() };
    let persisters = |f: fn(&PersistStats) -> &Counter| -> u64 {
        stats.persisters.iter().map(|p| f(p).get()).sum()
    };
    Snapshot {
        requests: cores(|c| &c.requests),
        ingest: Stats::merged(stats.cores.iter().map(|c| &c.ingest_us)),
        wait: Stats::merged(stats.persisters.iter().map(|p| &p.queue_wait_us)),
        commit: Stats::merged(stats.persisters.iter().map(|p| &p.commit_us)),
        rows: Stats::merged(stats.persisters.iter().map(|p| &p.batch_rows)),
        events: vec![
            ("accepted", cores(|c| &c.accepted)),
            ("duplicates", cores(|c| &c.duplicates)),
            ("rejected", cores(|c| &c.rejected)),
            ("overloaded", cores(|c| &c.overloaded)),
            ("storage_unavailable", cores(|c| &c.unavailable)),
            ("committed", persisters(|p| &p.committed)),
            ("refused_by_storage", persisters(|p| &p.refused)),
            ("expired", persisters(|p| &p.expired)),
        ],
        batches: persisters(|p| &p.batches),
        retries: persisters(|p| &p.retries),
        rings: ctx
            .hub
            .rings
            .iter()
            .map(|r| (r.len(), r.capacity(), r.queued_bytes()))
            .collect(),
        first_attempt: Stats::merged(std::iter::once(&stats.delivery.first_attempt_us)),
        attempt: Stats::merged(std::iter::once(&stats.delivery.attempt_us)),
        end_to_end: Stats::merged(std::iter::once(&stats.delivery.end_to_end_us)),
        deliveries: {
            let d = &stats.delivery;
            let mut v = d.counters().to_vec();
            v.push(("in_memory", ctx.hooks.held_jobs() as u64));
            v.push(("backlog", d.backlog.load(Relaxed)));
            v.push(("backlog_paused", d.backlog_paused.load(Relaxed)));
            v.push(("limit_per_s", ctx.hooks.giving_way()));
            v
        },
    }
}

pub fn show(ctx: &Context, req: &Request<'_>) -> Result<Response, ApiError> {
    let snap = snapshot(ctx);
    let param = |name: &str| {
        url::form_urlencoded::parse(req.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    if param("format").as_deref() == Some("hgrm") {
        let name = param("histogram").unwrap_or_else(|| "ingest".into());
        let Some((_, histogram)) = snap.latencies().into_iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = snap.latencies().iter().map(|(n, _)| *n).collect();
            return Err(ApiError::InvalidParameter(
                "histogram",
                format!("use one of {}", names.join(", ")),
            ));
        };
        let mut resp = Response::text(
            200,
            "text/plain; charset=utf-8",
            crate::stats::percentile_distribution(histogram).into_bytes(),
        );
        resp.headers.push(("x-histogram", name));
        resp.headers.push(("x-histogram-unit", "ms".into()));
        return Ok(resp);
    }
    let mut body = figures(ctx, &snap);
    body["histograms"] = json!({
        "encoding": "HdrHistogram V2, base64",
        "ingest_us": encoded(&snap.ingest),
        "queue_wait_us": encoded(&snap.wait),
        "commit_us": encoded(&snap.commit),
        "batch_rows": encoded(&snap.rows),
    });
    ctx.held(Response::json_value(200, &body))
}

/// The node's figures as `GET /api/queue/stats` shows them, but for the encoded histograms.
pub(super) fn figures(ctx: &Context, snap: &Snapshot) -> Value {
    let rings: Vec<Value> = snap
        .rings
        .iter()
        .enumerate()
        .map(|(i, (depth, capacity, bytes))| {
            json!({"core": i, "queue_depth": depth, "queue_capacity": capacity, "queued_bytes": bytes})
        })
        .collect();
    let ack_mode = ctx.settings.ack_mode;
    let durability = match ack_mode {
        AckMode::Durable => "2xx is sent after the COMMIT that stores the event",
        AckMode::Enqueued => "2xx is sent once the event is queued; a crash loses queued events",
    };
    let events: serde_json::Map<String, Value> = snap
        .events
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "ack_mode": ack_mode.as_str(),
        "durability": durability,
        "requests": snap.requests,
        "cores": rings,
        "queue_depth": snap.rings.iter().map(|r| r.0).sum::<usize>(),
        "queue_capacity": snap.rings.iter().map(|r| r.1).sum::<usize>(),
        "events": events,
        "persisters": {
            "running": ctx.stats.persisters_running.get(),
            "connected": ctx.stats.persisters_connected.get(),
        },
        "embedded_postgres": {
            "restarts": ctx.stats.storage_restarts.get(),
            "lost": ctx.stats.storage_lost.get(),
        },
        "body_budget": {
            "held_bytes": ctx.guards.budget.held(),
            "max_bytes": ctx.guards.budget.max(),
        },
        "rate_limits": {
            "leases": ctx.limits.shared.leases.load(Relaxed),
            "fail_open": ctx.limits.shared.fail_open.load(Relaxed),
        },
        "partitions": {
            "passes": ctx.stats.upkeep.passes.get(),
            "skipped": ctx.stats.upkeep.skipped.get(),
            "failures": ctx.stats.upkeep.failures.get(),
            "created": ctx.stats.upkeep.created.get(),
            "dropped": ctx.stats.upkeep.dropped.get(),
            "trimmed_rows": ctx.stats.upkeep.trimmed.get(),
        },
        "pace": {
            "answers_per_s": ctx.guards.pace.per_s(),
            "active": ctx.guards.pace.busy(Instant::now()),
            "held_back": ctx.guards.pace.held_back(),
        },
        "webhook_delivery": snap.deliveries.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "batches_committed": snap.batches,
        "batch_retries": snap.retries,
        "batch_rows": summary(&snap.rows),
        "latency_us": snap
            .latencies()
            .into_iter()
            .map(|(name, h)| (name.to_string(), summary(h)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// The delivery figures that are levels, not counters, with their help text.
const DELIVERY_LEVELS: &[(&str, &str)] = &[
    ("in_memory", "Deliveries this node holds in memory."),
    (
        "backlog",
        "Deliveries queued in the database, due now or later (every node's, counted every few seconds).",
    ),
    (
        "backlog_paused",
        "Deliveries waiting for a disabled endpoint.",
    ),
    (
        "limit_per_s",
        "Attempts per second delivery may start while it gives way to ingest; 0: no limit.",
    ),
];

/// Latency bucket bounds for Prometheus, in microseconds: fine around the 1 ms target.
const LATENCY_BUCKETS_US: &[u64] = &[
    100, 250, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
const ROW_BUCKETS: &[u64] = &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_000, 5_000];

/// One Prometheus histogram from an HdrHistogram; recorded values divided by `divisor` are the
/// exported unit (1e6: microseconds into seconds). Dividing keeps `le` labels exact.
fn prom_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    h: &Histogram<u64>,
    bounds: &[u64],
    divisor: f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for &b in bounds {
        let le = b as f64 / divisor;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{le}\"}} {}",
            h.count_between(0, b)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum {}", h.mean() * h.len() as f64 / divisor);
    let _ = writeln!(out, "{name}_count {}", h.len());
}

/// `GET /metrics`: the same figures in the Prometheus text exposition format.
pub fn metrics(ctx: &Context) -> Result<Response, ApiError> {
    let snap = snapshot(ctx);
    let mut out = String::with_capacity(8 * 1024);
    let us = 1e6;
    prom_histogram(
        &mut out,
        "triggers_ingest_seconds",
        "POST /api/events: request read to response written.",
        &snap.ingest,
        LATENCY_BUCKETS_US,
        us,
    );
    prom_histogram(
        &mut out,
        "triggers_queue_wait_seconds",
        "Time events waited in a core's ring.",
        &snap.wait,
        LATENCY_BUCKETS_US,
        us,
    );
    prom_histogram(
        &mut out,
        "triggers_commit_seconds",
        "COPY through COMMIT of one batch.",
        &snap.commit,
        LATENCY_BUCKETS_US,
        us,
    );
    prom_histogram(
        &mut out,
        "triggers_batch_rows",
        "Events per committed batch.",
        &snap.rows,
        ROW_BUCKETS,
        1.0,
    );
    for (name, help, h) in [
        (
            "triggers_delivery_first_attempt_seconds",
            "Webhook delivery: event created to its first attempt.",
            &snap.first_attempt,
        ),
        (
            "triggers_delivery_attempt_seconds",
            "Webhook delivery: one attempt, request to answer.",
            &snap.attempt,
        ),
        (
            "triggers_delivery_end_to_end_seconds",
            "Webhook delivery: event created to delivered.",
            &snap.end_to_end,
        ),
    ] {
        prom_histogram(&mut out, name, help, h, LATENCY_BUCKETS_US, us);
    }
    let _ = writeln!(
        out,
        "# HELP triggers_deliveries_total Webhook delivery attempts and outcomes.\n# TYPE triggers_deliveries_total counter"
    );
    let is_level = |what: &str| DELIVERY_LEVELS.iter().any(|(l, _)| *l == what);
    for (what, n) in snap.deliveries.iter().filter(|(w, _)| !is_level(w)) {
        let _ = writeln!(out, "triggers_deliveries_total{{outcome=\"{what}\"}} {n}");
    }
    for (what, help) in DELIVERY_LEVELS {
        let n = snap
            .deliveries
            .iter()
            .find(|(w, _)| w == what)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "# HELP triggers_delivery_{what} {help}\n# TYPE triggers_delivery_{what} gauge\ntriggers_delivery_{what} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP triggers_requests_total Requests answered, every route.\n# TYPE triggers_requests_total counter\ntriggers_requests_total {}",
        snap.requests
    );
    let _ = writeln!(
        out,
        "# HELP triggers_events_total Events by outcome.\n# TYPE triggers_events_total counter"
    );
    for (outcome, n) in &snap.events {
        let _ = writeln!(out, "triggers_events_total{{outcome=\"{outcome}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP triggers_batches_total Batches committed.\n# TYPE triggers_batches_total counter\ntriggers_batches_total {}", snap.batches);
    let _ = writeln!(out, "# HELP triggers_batch_retries_total Batches retried after a lost connection or transient error.\n# TYPE triggers_batch_retries_total counter\ntriggers_batch_retries_total {}", snap.retries);
    let _ = writeln!(out, "# HELP triggers_queue_depth Entries in each core's ring.\n# TYPE triggers_queue_depth gauge");
    for (i, r) in snap.rings.iter().enumerate() {
        let _ = writeln!(out, "triggers_queue_depth{{core=\"{i}\"}} {}", r.0);
    }
    let _ = writeln!(out, "# HELP triggers_queue_capacity Slots in each core's ring.\n# TYPE triggers_queue_capacity gauge");
    for (i, r) in snap.rings.iter().enumerate() {
        let _ = writeln!(out, "triggers_queue_capacity{{core=\"{i}\"}} {}", r.1);
    }
    let _ = writeln!(out, "# HELP triggers_body_budget_held_bytes Bytes of request and response bodies over 64 KiB held now.\n# TYPE triggers_body_budget_held_bytes gauge\ntriggers_body_budget_held_bytes {}", ctx.guards.budget.held());
    let _ = writeln!(out, "# HELP triggers_body_budget_max_bytes The most such bodies may hold (body_budget_bytes).\n# TYPE triggers_body_budget_max_bytes gauge\ntriggers_body_budget_max_bytes {}", ctx.guards.budget.max());
    let _ = writeln!(out, "# HELP triggers_paced_answers_held_back_total Answers that serve no one held back by the pace (pace_answers_per_s).\n# TYPE triggers_paced_answers_held_back_total counter\ntriggers_paced_answers_held_back_total {}", ctx.guards.pace.held_back());
    let _ = writeln!(out, "# HELP triggers_embedded_postgres_restarts_total Restarts of the embedded PostgreSQL after it died.\n# TYPE triggers_embedded_postgres_restarts_total counter\ntriggers_embedded_postgres_restarts_total {}", ctx.stats.storage_restarts.get());
    let durable = u8::from(ctx.settings.ack_mode == AckMode::Durable);
    let _ = writeln!(out, "# HELP triggers_durable_ack 1 when 2xx means committed, 0 in enqueued mode.\n# TYPE triggers_durable_ack gauge\ntriggers_durable_ack {durable}");
    let _ = writeln!(out, "# HELP triggers_uptime_seconds Seconds since start.\n# TYPE triggers_uptime_seconds gauge\ntriggers_uptime_seconds {}", ctx.stats.started.elapsed().as_secs());
    ctx.held(Response::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        out.into_bytes(),
    ))
}
