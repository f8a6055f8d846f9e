//! api::stats: `GET /api/queue/stats`: queue depths, counters and latency histograms merged
//! across cores and persisters. `?format=hgrm` gives the ingest histogram as the classic
//! HdrHistogram percentile-distribution text (values in milliseconds).

use std::fmt::Write;
use std::rc::Rc;

use base64::Engine;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{require_admin, ApiError, Request};
use crate::config::AckMode;
use crate::core::Core;
use crate::http::response::Response;
use crate::stats::{Counter, Stats};

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

fn encoded(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The percentile distribution as HdrHistogram's `outputPercentileDistribution` prints it.
fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let p = v.quantile_iterated_to();
        let ms = v.value_iterated_to() as f64 / 1000.0;
        if p < 1.0 {
            let _ = writeln!(
                out,
                "{ms:12.3} {p:14.12} {total:10} {:14.2}",
                1.0 / (1.0 - p)
            );
        } else {
            let _ = writeln!(out, "{ms:12.3} {p:14.12} {total:10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len(),
        h.buckets(),
        h.distinct_values()
    );
    out
}

pub fn show(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    require_admin(core, req)?;
    let shared = &core.shared;
    let stats: &Stats = &shared.stats;
    let ingest = Stats::merged(stats.cores.iter().map(|c| &c.ingest_us));
    if req.query.split('&').any(|p| p == "format=hgrm") {
        return Ok(Response::text(
            200,
            "text/plain; charset=utf-8",
            hgrm(&ingest).into_bytes(),
        ));
    }
    let wait = Stats::merged(stats.persisters.iter().map(|p| &p.queue_wait_us));
    let commit = Stats::merged(stats.persisters.iter().map(|p| &p.commit_us));
    let rows = Stats::merged(stats.persisters.iter().map(|p| &p.batch_rows));
    let sum_cores = |f: fn(&crate::stats::CoreStats) -> &Counter| -> u64 {
        stats.cores.iter().map(|c| f(c).get()).sum()
    };
    let sum_persisters = |f: fn(&crate::stats::PersistStats) -> &Counter| -> u64 {
        stats.persisters.iter().map(|p| f(p).get()).sum()
    };
    let rings: Vec<Value> = shared
        .hub
        .rings
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"core": i, "queue_depth": r.len(), "queue_capacity": r.capacity()}))
        .collect();
    let durability = match shared.config.ack_mode {
        AckMode::Durable => "2xx is sent after the COMMIT that stores the event",
        AckMode::Enqueued => "2xx is sent once the event is queued; a crash loses queued events",
    };
    Ok(Response::json_value(
        200,
        &json!({
            "ack_mode": shared.config.ack_mode.as_str(),
            "durability": durability,
            "cores": rings,
            "queue_depth": shared.hub.queued(),
            "queue_capacity": shared.hub.rings.iter().map(|r| r.capacity()).sum::<usize>(),
            "events": {
                "accepted": sum_cores(|c| &c.accepted),
                "duplicates": sum_cores(|c| &c.duplicates),
                "rejected": sum_cores(|c| &c.rejected),
                "overloaded": sum_cores(|c| &c.overloaded),
                "storage_unavailable": sum_cores(|c| &c.unavailable),
                "committed": sum_persisters(|p| &p.committed),
                "refused_by_storage": sum_persisters(|p| &p.refused),
                "expired": sum_persisters(|p| &p.expired),
            },
            "batches_committed": sum_persisters(|p| &p.batches),
            "batch_retries": sum_persisters(|p| &p.retries),
            "batch_rows": summary(&rows),
            "latency_us": {
                "ingest": summary(&ingest),
                "queue_wait": summary(&wait),
                "commit": summary(&commit),
            },
            "histograms": {
                "encoding": "HdrHistogram V2, base64",
                "ingest_us": encoded(&ingest),
                "queue_wait_us": encoded(&wait),
                "commit_us": encoded(&commit),
            },
        }),
    ))
}
