//! db::events: every statement on `events`: the COPY row layout and batch writes (persisters),
//! inbox pages and acknowledgements (query threads).
//!
//! The columns a batch fills are declared once, in `COPY_COLUMNS`: the COPY statements, the
//! staging table, the statement that moves staged rows into `events`, the micro-benchmarks and
//! the load generator's COPY ceiling are all built from it.

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, GenericClient, Statement};

use super::conn::connect;
use crate::ids::{EventId, OrgId};

/// Staged rows between truncations of the staging table. Truncating costs a fixed handful of
/// file operations (measured: ~10% of a backend's CPU when done at every commit, as
/// `ON COMMIT DELETE ROWS` does); the DELETE that moves rows out is cheap but leaves dead rows
/// that later batches scan. Truncating every ~1k rows keeps both small.
const STAGING_TRUNCATE_ROWS: usize = 1024;

/// New rows up to this many are one INSERT from arrays (one round trip) rather than a COPY
/// (two): for a few rows the round trip costs more than COPY saves on rows. Measured at 12k
/// and 20k req/s (results/2026-11-30-delivery-yields): 64 cost PostgreSQL more at 20k, 8 did
/// not.
const SMALL_BATCH_ROWS: usize = 8;
/// The same when the batch queues webhook deliveries, whose COPY takes a transaction and an
/// INSERT besides (five round trips).
const SMALL_QUEUEING_BATCH_ROWS: usize = 64;

/// A column a batch fills.
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
    pub nullable: bool,
}

/// The columns of `EventRow`, in COPY order: the one declaration of the row layout.
pub const COPY_COLUMNS: [Column; 7] = [
    Column {
        name: "org_id",
        ty: Type::UUID,
        nullable: false,
    },
    Column {
        name: "id",
        ty: Type::UUID,
        nullable: false,
    },
    Column {
        name: "type",
        ty: Type::TEXT,
        nullable: false,
    },
    Column {
        name: "payload",
        ty: Type::JSONB,
        nullable: false,
    },
    Column {
        name: "dedup_id",
        ty: Type::TEXT,
        nullable: true,
    },
    Column {
        name: "created_at",
        ty: Type::TIMESTAMPTZ,
        nullable: false,
    },
    Column {
        name: "keep_days",
        ty: Type::INT2,
        nullable: false,
    },
];

/// `org_id, id, ...`: the column names, for statements.
pub fn column_names() -> String {
    COPY_COLUMNS.map(|c| c.name).join(", ")
}

/// `org_id uuid NOT NULL, ...`: the columns as a table definition.
pub fn column_definitions() -> String {
    COPY_COLUMNS
        .map(|c| {
            let null = if c.nullable { "" } else { " NOT NULL" };
            format!("{} {}{null}", c.name, c.ty.name())
        })
        .join(", ")
}

/// A payload's JSON text, checked to be an object PostgreSQL's `jsonb` accepts. It is sent
/// without being parsed again: the binary `jsonb` format is a version byte (1) and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(pub Box<[u8]>);

impl ToSql for JsonText {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// One event as a batch stores it.
#[derive(Debug)]
pub struct EventRow {
    pub org: OrgId,
    pub id: EventId,
    pub created_at: SystemTime,
    pub kind: Box<str>,
    pub dedup_id: Option<Box<str>>,
    pub payload: JsonText,
    /// The retention of the organization's tier, in days (`0`: forever): the class of
    /// partitions the row goes to (see `db::partitions`).
    pub keep_days: i16,
}

impl EventRow {
    /// The row's values in `COPY_COLUMNS` order.
    pub fn values(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.org,
            &self.id,
            &self.kind,
            &self.payload,
            &self.dedup_id,
            &self.created_at,
            &self.keep_days,
        ]
    }
}

/// Binary COPY of `rows` into `table`; returns the rows PostgreSQL took.
pub fn copy_rows<'a>(
    client: &mut impl GenericClient,
    table: &str,
    rows: impl IntoIterator<Item = &'a EventRow>,
) -> Result<u64, postgres::Error> {
    let sink = client.copy_in(&format!(
        "COPY {table} ({}) FROM STDIN (FORMAT binary)",
        column_names()
    ))?;
    let mut writer = BinaryCopyInWriter::new(sink, &COPY_COLUMNS.map(|c| c.ty));
    for row in rows {
        writer.write(&row.values())?;
    }
    writer.finish()
}

/// What became of one row of a written batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Stored by this write.
    Inserted,
    /// Not stored by this write: `holder` is the stored event of the same organization holding
    /// its `dedup_id` (its own id when an earlier attempt of the batch committed it), `None` when
    /// it has no dedup_id (skipped on its own id: an earlier attempt stored it).
    Skipped { holder: Option<EventId> },
}

/// Webhook deliveries to queue with a batch: one `deliveries` row per new event of these
/// organizations, in the batch's transaction.
pub struct Deliveries<'a> {
    pub orgs: &'a [OrgId],
    /// The committing node takes the rows in memory until then; `None`: due for any node.
    pub lease_until: Option<SystemTime>,
}

/// The `INSERT INTO deliveries` of those rows (`org_id`, `id`) of `from` (a relation named
/// `f`) whose organization is
/// in the array parameter `orgs`, leased until the parameter `lease` (`NULL`: not leased). A
/// leased row is due when its lease runs out (see `db::deliveries`), one that is not, at once.
///
/// `orgs` is this node's view of who has a webhook, which may be a moment old: the
/// organization's row decides. An organization whose webhook is gone gets no row, and a row is
/// queued in the generation current at its commit, so that one queued while a deletion was
/// committing on another node is never made (see `db::orgs::clear_webhook`).
fn queue_deliveries(from: &str, orgs: &str, lease: &str) -> String {
    format!(
        "INSERT INTO deliveries (org_id, event_id, due_at, lease_until, generation)
         SELECT f.org_id, f.id, coalesce({lease}::timestamptz, now()), {lease}::timestamptz,
                o.webhook_generation
         FROM {from} JOIN organizations o ON o.org_id = f.org_id
         WHERE f.org_id = ANY({orgs}::uuid[]) AND o.webhook_url IS NOT NULL"
    )
}

/// For rows the INSERT skipped: the stored events holding their dedup_ids (their own ids when
/// a replayed batch had in fact committed). Runs after the commit, on committed rows.
///
/// Planned at each run, not prepared once: a prepared statement may settle on a generic plan
/// after five runs, and one made while `events` was nearly empty (a node's first minute)
/// reads the whole table for every lookup until autovacuum's first analyze replaces it. It
/// runs only for batches with skipped rows; planning it costs one more round trip there.
const LOOKUP: &str = "SELECT d.org_id, d.dedup_id, d.event_id
                      FROM unnest($1::uuid[], $2::text[]) AS k(org_id, dedup_id)
                      JOIN event_dedup d ON d.org_id = k.org_id AND d.dedup_id = k.dedup_id";

/// The statement that moves the staged rows into `events`, its implicit transaction the
/// batch's commit, returning the `org_id, id` of the rows it stored. A row with a dedup_id is
/// stored only if it claims that dedup_id in `event_dedup` (the claim and the event commit
/// together); rows already stored (a replayed batch) are skipped on their own id. Sorted so
/// that concurrent batches take the same index locks in the same order (no deadlock between
/// persisters).
fn move_staged(columns: &str) -> String {
    format!(
        "WITH moved AS (DELETE FROM staging RETURNING {columns}),
         claimed AS (
             INSERT INTO event_dedup (org_id, dedup_id, event_id, keep_days)
             SELECT org_id, dedup_id, id, keep_days FROM moved WHERE dedup_id IS NOT NULL
             ORDER BY org_id, dedup_id
             ON CONFLICT DO NOTHING
             RETURNING event_id),
         inserted AS (
             INSERT INTO events ({columns})
             SELECT {columns} FROM moved
             WHERE dedup_id IS NULL OR id IN (SELECT event_id FROM claimed)
             ORDER BY org_id, id
             ON CONFLICT DO NOTHING
             RETURNING org_id, id)"
    )
}

/// A persister's connection, with its staging table and statements ready.
pub struct Writer {
    client: Client,
    /// Dead rows left in the staging table since it was last truncated.
    staged_rows: usize,
    /// A COPY landed rows in staging that no INSERT has moved (the attempt failed after it).
    staging_dirty: bool,
    insert: Statement,
    /// `insert`, also queueing deliveries for new events of the organizations in `$1`.
    insert_queueing: Statement,
    /// Queues deliveries for the events `$1`, `$2` of the organizations in `$3`, leased until
    /// `$4`.
    queue: Statement,
    /// Inserts new rows from arrays and queues deliveries for those of the organizations in
    /// `$8`, leased until `$9`: one round trip for a small batch. Rows without dedup_ids only.
    insert_small: Statement,
}

impl Writer {
    pub fn open(config: &postgres::Config) -> Result<Writer, postgres::Error> {
        let mut client = connect(config)?;
        let columns = column_names();
        client.batch_execute(&format!(
            "CREATE TEMP TABLE staging ({})",
            column_definitions()
        ))?;
        let moving = move_staged(&columns);
        let insert = client.prepare(&format!("{moving} SELECT id FROM inserted"))?;
        // Only rows this statement inserts are queued: a replayed batch's rows that an earlier,
        // committed attempt stored were queued by that attempt.
        let insert_queueing = client.prepare(&format!(
            "{moving}, queued AS ({} ON CONFLICT DO NOTHING) SELECT id FROM inserted",
            queue_deliveries("inserted AS f", "$1", "$2")
        ))?;
        let queue = client.prepare(&queue_deliveries(
            "unnest($1::uuid[], $2::uuid[]) AS f(org_id, id)",
            "$3",
            "$4",
        ))?;
        let insert_small = client.prepare(&format!(
            "WITH inserted AS (
                 INSERT INTO events ({columns})
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[],
                                      $5::text[], $6::timestamptz[], $7::int2[])
                 RETURNING org_id, id)
             {}",
            queue_deliveries("inserted AS f", "$8", "$9")
        ))?;
        Ok(Writer {
            client,
            staged_rows: 0,
            staging_dirty: false,
            insert,
            insert_queueing,
            queue,
            insert_small,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Stores `batch` in one transaction; what became of each row, in order. `replay`: an earlier
    /// attempt of this batch failed with its outcome unknown, so some rows may be stored.
    ///
    /// A first attempt at a batch without dedup_ids cannot conflict (its ids are new): see
    /// `write_new`. Everything else takes three round trips: COPY into staging (a temp table:
    /// its own transaction writes no WAL and waits for no flush), COPY's end, and the
    /// INSERT … ON CONFLICT whose commit holds every row (and the `deliveries` rows of
    /// `deliveries`, when given).
    pub fn write<R: AsRef<EventRow>>(
        &mut self,
        batch: &[R],
        replay: bool,
        deliveries: Option<&Deliveries<'_>>,
    ) -> Result<Vec<Written>, postgres::Error> {
        let rows = || batch.iter().map(AsRef::as_ref);
        if !replay && rows().all(|r| r.dedup_id.is_none()) {
            self.write_new(batch, deliveries)?;
            return Ok(vec![Written::Inserted; rows().len()]);
        }
        if self.staging_dirty || self.staged_rows >= STAGING_TRUNCATE_ROWS {
            self.client.batch_execute("TRUNCATE staging")?;
            self.staging_dirty = false;
            self.staged_rows = 0;
        }
        self.staging_dirty = true;
        let copied = copy_rows(&mut self.client, "staging", rows())?;
        assert_eq!(copied as usize, rows().len(), "COPY must take every row");
        let moved = match deliveries {
            None => self.client.query(&self.insert, &[])?,
            Some(d) => self
                .client
                .query(&self.insert_queueing, &[&d.orgs, &d.lease_until])?,
        };
        let inserted: HashSet<EventId> = moved.iter().map(|r| r.get(0)).collect();
        self.staging_dirty = false;
        self.staged_rows += rows().len();
        let skipped: Vec<&EventRow> = rows()
            .filter(|r| r.dedup_id.is_some() && !inserted.contains(&r.id))
            .collect();
        let mut holders: HashMap<(OrgId, String), EventId> = HashMap::new();
        if !skipped.is_empty() {
            let orgs: Vec<OrgId> = skipped.iter().map(|r| r.org).collect();
            let dedups: Vec<&str> = skipped
                .iter()
                .filter_map(|r| r.dedup_id.as_deref())
                .collect();
            for row in self.client.query(LOOKUP, &[&orgs, &dedups])? {
                holders.insert((row.get(0), row.get(1)), row.get(2));
            }
        }
        Ok(rows()
            .map(|r| {
                if inserted.contains(&r.id) {
                    return Written::Inserted;
                }
                let holder = r
                    .dedup_id
                    .as_deref()
                    .and_then(|d| holders.get(&(r.org, d.to_string())).copied());
                Written::Skipped { holder }
            })
            .collect())
    }

    /// Stores rows that cannot conflict (a first attempt, no dedup_ids) as plain inserts. A
    /// small batch is one INSERT from arrays that also queues its deliveries: one round trip.
    /// A larger one is a COPY (two round trips), and with deliveries to queue, the COPY and
    /// the INSERT of their rows in a transaction (five).
    fn write_new<R: AsRef<EventRow>>(
        &mut self,
        batch: &[R],
        deliveries: Option<&Deliveries<'_>>,
    ) -> Result<(), postgres::Error> {
        let rows = || batch.iter().map(AsRef::as_ref);
        let (orgs, lease_until) = deliveries.map_or((&[][..], None), |d| (d.orgs, d.lease_until));
        let small = match deliveries {
            None => SMALL_BATCH_ROWS,
            Some(_) => SMALL_QUEUEING_BATCH_ROWS,
        };
        let ids = || rows().map(|r| r.id).collect::<Vec<_>>();
        let row_orgs = || rows().map(|r| r.org).collect::<Vec<_>>();
        if batch.len() <= small {
            self.client.execute(
                &self.insert_small,
                &[
                    &row_orgs(),
                    &ids(),
                    &rows().map(|r| &*r.kind).collect::<Vec<_>>(),
                    &rows().map(|r| &r.payload).collect::<Vec<_>>(),
                    &rows().map(|r| r.dedup_id.as_deref()).collect::<Vec<_>>(),
                    &rows().map(|r| r.created_at).collect::<Vec<_>>(),
                    &rows().map(|r| r.keep_days).collect::<Vec<_>>(),
                    &orgs,
                    &lease_until,
                ],
            )?;
            return Ok(());
        }
        let copied = if deliveries.is_none() {
            copy_rows(&mut self.client, "events", rows())?
        } else {
            let mut tx = self.client.transaction()?;
            let copied = copy_rows(&mut tx, "events", rows())?;
            tx.execute(&self.queue, &[&row_orgs(), &ids(), &orgs, &lease_until])?;
            tx.commit()?;
            copied
        };
        assert_eq!(copied as usize, batch.len(), "COPY must take every row");
        Ok(())
    }
}

/// An event's delivery state, as the `status` column holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Delivered,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
        }
    }
}

/// One inbox page: a keyset scan in id order (UUIDv7: time order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// `None`: every status.
    pub status: Option<Status>,
    pub kind: Option<String>,
    pub limit: u32,
    pub descending: bool,
    /// Start after this id (in the page's order).
    pub after: Option<EventId>,
    /// Rows to skip; ignored when `after` is given.
    pub offset: u64,
    /// The organization's oldest id still kept (its tier's retention; `None`: forever). Older
    /// events are not shown, and partitions that hold only older ones are not read.
    pub kept_since: Option<EventId>,
}

/// How far past the reader's clock an inbox page looks: ids come from each node's clock, and one
/// running this far ahead would hide its events for as long. Partitions made ahead of time
/// (empty) start further on, and pages do not read them.
const PAGE_AHEAD: Duration = Duration::from_secs(3600);

/// An event as the inbox shows it.
pub struct StoredEvent {
    pub id: EventId,
    pub kind: String,
    /// The payload's JSON text, as PostgreSQL prints it.
    pub payload: String,
    pub dedup_id: Option<String>,
    pub status: String,
    pub created_at: SystemTime,
    pub delivered_at: Option<SystemTime>,
}

/// Rows of a page read by its first fetch; each next fetch reads twice as many as the last, so
/// that rows past a page's byte bound cost PostgreSQL at most what the page itself did, and a
/// page of small events takes a few round trips, not one per handful.
const PAGE_FETCH_FIRST: usize = 8;

/// One page of `org`'s events, and whether more follow. Before a row is kept, `room` is asked
/// with its payload's size; `false` ends the page early (with more to follow), which is how
/// the caller bounds a page in bytes.
///
/// What a page costs PostgreSQL is what it shows. Its ids come first, by the filters alone:
/// the rows it skips (`offset`) are passed over by id and status, their payloads never read.
/// Then its rows are read by id, a few at first and more each time, and those past the byte
/// bound are never read either.
pub fn page(
    client: &mut Client,
    org: OrgId,
    q: &PageQuery,
    mut room: impl FnMut(usize) -> bool,
) -> Result<(Vec<StoredEvent>, bool), postgres::Error> {
    // Only the retention classes the organization's events are stored in, and within them
    // only partitions of the kept time: the partitions a page plans and reads.
    let classes: Vec<i16> = match client.query_opt(
        "SELECT keep_classes FROM organizations WHERE org_id = $1",
        &[&org],
    )? {
        Some(row) => row.get(0),
        None => return Ok((Vec::new(), false)),
    };
    let status = q.status.map(Status::as_str);
    let mut sql = String::from("SELECT id FROM events WHERE org_id = $1 AND keep_days = ANY($2)");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&org, &classes];
    if let Some(s) = &status {
        params.push(s);
        sql.push_str(&format!(" AND status = ${}", params.len()));
    }
    if let Some(k) = &q.kind {
        params.push(k);
        sql.push_str(&format!(" AND type = ${}", params.len()));
    }
    let ceiling = EventId::first_at(SystemTime::now() + PAGE_AHEAD);
    params.push(&ceiling);
    sql.push_str(&format!(" AND id < ${}", params.len()));
    if let Some(since) = &q.kept_since {
        params.push(since);
        sql.push_str(&format!(" AND id >= ${}", params.len()));
    }
    if let Some(after) = &q.after {
        params.push(after);
        let op = if q.descending { "<" } else { ">" };
        sql.push_str(&format!(" AND id {op} ${}", params.len()));
    }
    let fetch_rows = i64::from(q.limit) + 1;
    let offset = if q.after.is_some() {
        0
    } else {
        q.offset as i64
    };
    params.push(&fetch_rows);
    params.push(&offset);
    let order = if q.descending { "DESC" } else { "ASC" };
    sql.push_str(&format!(
        " ORDER BY id {order} LIMIT ${} OFFSET ${}",
        params.len() - 1,
        params.len()
    ));
    let ids: Vec<EventId> = client
        .query(&sql, &params)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ids.is_empty() {
        return Ok((Vec::new(), false));
    }
    let rows = client.prepare(&format!(
        "SELECT id, type, payload::text, dedup_id, status, created_at, delivered_at
         FROM events WHERE org_id = $1 AND keep_days = ANY($2) AND id = ANY($3)
         ORDER BY id {order}"
    ))?;
    // The id past the page's last says only that more follow.
    let more = ids.len() > q.limit as usize;
    let mut rest = &ids[..ids.len().min(q.limit as usize)];
    let mut events = Vec::new();
    let mut fetch = PAGE_FETCH_FIRST;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(fetch.min(rest.len()));
        rest = later;
        fetch *= 2;
        // A row gone since its id was read (its retention ran out) is simply not shown.
        for r in client.query(&rows, &[&org, &classes, &now])? {
            let payload: String = r.get(2);
            if !room(payload.len()) {
                return Ok((events, true));
            }
            events.push(StoredEvent {
                id: r.get(0),
                kind: r.get(1),
                payload,
                dedup_id: r.get(3),
                status: r.get(4),
                created_at: r.get(5),
                delivered_at: r.get(6),
            });
        }
    }
    Ok((events, more))
}

/// Marks `org`'s events among `ids` delivered (once: later acks keep the first time) and
/// returns the ids found with their delivery time. One statement: rows already delivered are
/// read, not rewritten.
pub fn acknowledge(
    client: &mut Client,
    org: OrgId,
    ids: &[EventId],
) -> Result<Vec<(EventId, SystemTime)>, postgres::Error> {
    let rows = client.query(
        "WITH marked AS (
             UPDATE events SET status = 'delivered', delivered_at = now()
             WHERE org_id = $1 AND id = ANY($2) AND status <> 'delivered'
             RETURNING id, delivered_at
         )
         SELECT id, delivered_at FROM marked
         UNION ALL
         SELECT id, delivered_at FROM events
         WHERE org_id = $1 AND id = ANY($2) AND status = 'delivered'",
        &[&org, &ids],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_layout_makes_the_statements_and_the_values_follow_it() {
        assert_eq!(
            column_names(),
            "org_id, id, type, payload, dedup_id, created_at, keep_days"
        );
        assert_eq!(
            column_definitions(),
            "org_id uuid NOT NULL, id uuid NOT NULL, type text NOT NULL, \
             payload jsonb NOT NULL, dedup_id text, created_at timestamptz NOT NULL, \
             keep_days int2 NOT NULL"
        );
        let row = EventRow {
            org: OrgId::new(),
            id: EventId::new_v7(),
            created_at: SystemTime::now(),
            kind: "t".into(),
            dedup_id: None,
            payload: JsonText(b"{}".to_vec().into()),
            keep_days: 1,
        };
        for (value, column) in row.values().iter().zip(&COPY_COLUMNS) {
            let mut out = BytesMut::new();
            let null = value.to_sql_checked(&column.ty, &mut out).unwrap();
            assert_eq!(matches!(null, IsNull::Yes), column.name == "dedup_id");
        }
    }
}
