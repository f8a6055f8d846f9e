//! copy_ceiling: the bare-COPY ceiling. Binary COPY of event-shaped rows (the server's own row
//! encoder) into a table shaped like `events`, one synchronous commit per batch, on as many
//! connections as the server has persisters: how many rows per second PostgreSQL itself takes on
//! this machine, with no HTTP, no queues and no dedup.

use std::time::{Duration, Instant, SystemTime};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::NoTls;
use triggers::persist::copy::{RawJsonb, COLUMNS};
use uuid::Uuid;

const TABLE: &str = "loadtest_copy_ceiling";

/// Rows per second over `seconds`, with `connections` writers each committing `batch` rows.
pub fn run(
    url: &str,
    seconds: u64,
    batch: usize,
    connections: usize,
    payload_bytes: usize,
) -> anyhow::Result<f64> {
    let mut admin = postgres::Client::connect(url, NoTls)?;
    admin.batch_execute(&format!(
        "DROP TABLE IF EXISTS {TABLE};
         CREATE TABLE {TABLE} (org_id uuid NOT NULL, id uuid NOT NULL, type text NOT NULL,
             payload jsonb NOT NULL, dedup_id text, created_at timestamptz NOT NULL,
             PRIMARY KEY (org_id, id))"
    ))?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let url = url.to_string();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut client = postgres::Client::connect(&url, NoTls)?;
                let orgs: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
                let mut rows = 0u64;
                while Instant::now() < end {
                    let mut tx = client.transaction()?;
                    let sink = tx.copy_in(&format!("COPY {TABLE} FROM STDIN (FORMAT binary)"))?;
                    let mut writer = BinaryCopyInWriter::new(sink, &COLUMNS);
                    for k in 0..batch as u64 {
                        let payload =
                            crate::payload(rows + k + w as u64 * 1_000_000_000, payload_bytes);
                        writer.write(&[
                            &orgs[(k % 100) as usize],
                            &Uuid::now_v7(),
                            &"order.created",
                            &RawJsonb(payload.as_bytes()),
                            &None::<&str>,
                            &SystemTime::now(),
                        ])?;
                    }
                    rows += writer.finish()?;
                    tx.commit()?;
                }
                Ok(rows)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| anyhow::anyhow!("a COPY worker panicked"))??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    admin.batch_execute(&format!("DROP TABLE {TABLE}"))?;
    Ok(rate)
}
