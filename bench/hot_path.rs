//! The ingest hot path's pieces, each alone: request framing, ring push/pop, histogram record,
//! and encoding one event as a binary COPY row (the row's own values and column types, as the
//! persisters' COPY sends them). `cargo bench --bench hot_path`.

use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use triggers::db::events::{EventRow, JsonText, COPY_COLUMNS};
use triggers::http::request::parse_head;
use triggers::ids::{EventId, OrgId};
use triggers::queue::{Entry, Event, Hub, RING_BYTES_MAX};
use triggers::stats::Recorder;

const REQUEST: &[u8] = b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:8090\r\nUser-Agent: loadtest\r\nContent-Type: application/json\r\nX-API-Key: trg_58dc53deae40ec0e9bf4d1f445869181112265cb58fab722541490e2bd226b51cd5976aa\r\nContent-Length: 310\r\n\r\n";
const PAYLOAD: &[u8] = br#"{"order_id":42,"customer":"c-7","amount_cents":4999,"currency":"EUR","items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}],"note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

fn event() -> Event {
    let now = Instant::now();
    Event {
        row: EventRow {
            org: OrgId::new(),
            id: EventId::new_v7(),
            created_at: SystemTime::now(),
            kind: "order.created".into(),
            dedup_id: Some("order-42".into()),
            payload: JsonText(PAYLOAD.into()),
            keep_days: 1,
        },
        waiter: None,
        enqueued_at: now,
        deadline: None,
    }
}

fn bench(c: &mut Criterion) {
    let mut fields = Vec::with_capacity(16);
    c.bench_function("parse_head (6 headers)", |b| {
        b.iter(|| {
            parse_head(black_box(REQUEST), &mut fields)
                .unwrap()
                .unwrap()
                .len
        });
    });

    let hub = Hub::new(1, 1024, RING_BYTES_MAX, 1, 0);
    c.bench_function("ring push + pop (one event)", |b| {
        b.iter_batched(
            event,
            |e| {
                hub.push(0, Entry::One(e)).unwrap();
                hub.rings[0].pop().unwrap()
            },
            criterion::BatchSize::SmallInput,
        );
    });

    let rec = Recorder::latency();
    let mut v = 0u64;
    c.bench_function("histogram record", |b| {
        b.iter(|| {
            v = (v + 7919) % 50_000;
            rec.record(black_box(v));
        });
    });

    let e = event();
    let mut out = BytesMut::with_capacity(1024);
    c.bench_function("COPY row encoding (6 columns)", |b| {
        b.iter(|| {
            out.clear();
            for (value, column) in e.row.values().iter().zip(&COPY_COLUMNS) {
                let _ = value.to_sql_checked(&column.ty, &mut out).unwrap();
            }
            out.len()
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
