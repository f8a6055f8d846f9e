//! copy_ceiling: the bare-COPY ceiling. Binary COPY of event rows (the server's own row
//! encoder), one synchronous commit per batch, on as many connections as the server has
//! persisters: how many rows per second PostgreSQL itself takes on this machine, with no HTTP,
//! no queues and no dedup.
//!
//! Two table shapes: `bare` (the event columns and a primary key: what PostgreSQL takes at
//! best) and `events` (a copy of the server's `events` table with every index and default it
//! has: the ceiling for this schema, which the server can approach but never pass).

use std::time::{Duration, Instant, SystemTime};

use postgres::NoTls;
use triggers::db::events::{column_definitions, copy_rows, EventRow, JsonText};
use triggers::ids::{EventId, OrgId};

const TABLE: &str = "loadtest_copy_ceiling";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The event columns with a primary key (org_id, id) and nothing else
    Bare,
    /// `LIKE events INCLUDING ALL`: the server's own table, indexes included (needs the
    /// server's database)
    Events,
}

/// Rows per second over `seconds`, with `connections` writers each committing `batch` rows.
pub fn run(
    url: &str,
    shape: Shape,
    seconds: u64,
    batch: usize,
    connections: usize,
    payload_bytes: usize,
) -> anyhow::Result<f64> {
    let mut admin = postgres::Client::connect(url, NoTls)?;
    let create = match shape {
        Shape::Bare => format!(
            "CREATE TABLE {TABLE} ({}, PRIMARY KEY (org_id, id))",
            column_definitions()
        ),
        Shape::Events => format!("CREATE TABLE {TABLE} (LIKE events INCLUDING ALL)"),
    };
    admin.batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}; {create}"))?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let url = url.to_string();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut client = postgres::Client::connect(&url, NoTls)?;
                let orgs: Vec<OrgId> = (0..100).map(|_| OrgId::new()).collect();
                let mut rows = 0u64;
                while Instant::now() < end {
                    // Built before the COPY starts, as the server's batches are.
                    let batch_rows: Vec<EventRow> = (0..batch as u64)
                        .map(|k| EventRow {
                            org: orgs[(k % 100) as usize],
                            id: EventId::new_v7(),
                            created_at: SystemTime::now(),
                            kind: "order.created".into(),
                            dedup_id: None,
                            payload: JsonText(
                                crate::scenario::payload(
                                    rows + k + w as u64 * 1_000_000_000,
                                    payload_bytes,
                                )
                                .into_bytes()
                                .into(),
                            ),
                            keep_days: 1,
                        })
                        .collect();
                    // A COPY outside a transaction block commits on its own: two round
                    // trips, as the server's dedup-free batches take.
                    rows += copy_rows(&mut client, TABLE, &batch_rows)?;
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
