//! Event validation: serde_json (borrowing the payload as `RawValue`, what the server runs)
//! against simd-json (parse to a borrowed DOM, then re-serialize the payload, since the server
//! stores the payload's JSON text). `cargo bench --bench json`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use simd_json::prelude::*;

fn event(note_bytes: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"order.created","dedup_id":"order-42","payload":{{"order_id":42,"customer":"c-7","amount_cents":4999,"currency":"EUR","items":[{{"sku":"A-1","qty":2}},{{"sku":"B-7","qty":1}}],"note":"{}"}}}}"#,
        "x".repeat(note_bytes)
    )
    .into_bytes()
}

/// The simd-json equivalent of `validate`: the same fields, the same checks, and the payload's
/// text in hand at the end.
fn simd_validate(body: &mut [u8]) -> Option<(usize, String, Option<usize>)> {
    let v = simd_json::to_borrowed_value(body).ok()?;
    let kind = v.get("type")?.as_str()?;
    if kind.is_empty()
        || kind.len() > 255
        || !kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return None;
    }
    let payload = v.get("payload")?;
    payload.as_object()?;
    let dedup = v.get("dedup_id").and_then(|d| d.as_str()).map(str::len);
    Some((kind.len(), simd_json::to_string(payload).ok()?, dedup))
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_event");
    for note in [120, 8_000] {
        let body = event(note);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("serde_json_raw_value", body.len()),
            &body,
            |b, body| {
                b.iter(|| {
                    triggers::api::events::validate(black_box(body))
                        .unwrap()
                        .payload
                        .len()
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("simd_json_dom", body.len()),
            &body,
            |b, body| {
                let mut scratch = body.clone();
                b.iter(|| {
                    // simd-json parses in place; the server would parse its own read buffer, so
                    // only the refill is extra here (a memcpy of the body).
                    scratch.copy_from_slice(body);
                    simd_validate(black_box(&mut scratch)).unwrap().1.len()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
