//! persist::copy: binary COPY of a batch, into the connection's staging table or `events`.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::Client;

use crate::queue::Event;

/// The columns a batch fills, in COPY order.
pub const COLUMN_NAMES: [&str; 6] = ["org_id", "id", "type", "payload", "dedup_id", "created_at"];

/// Their types, in the same order.
pub const COLUMNS: [Type; 6] = [
    Type::UUID,
    Type::UUID,
    Type::TEXT,
    Type::JSONB,
    Type::TEXT,
    Type::TIMESTAMPTZ,
];

/// A payload's JSON text sent as `jsonb` without parsing it again: the binary `jsonb` format is
/// a version byte (1) followed by the text.
#[derive(Debug)]
pub struct RawJsonb<'a>(pub &'a [u8]);

impl ToSql for RawJsonb<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// Where a batch's rows are copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// The connection's temp staging table, for the INSERT … ON CONFLICT that follows.
    Staging,
    /// `events` itself: only for rows that cannot conflict (no dedup_id, first attempt).
    Events,
}

/// Copies `batch` in binary; returns the rows PostgreSQL took.
pub fn write_rows(
    client: &mut Client,
    table: Table,
    batch: &[Event],
) -> Result<u64, postgres::Error> {
    let name = match table {
        Table::Staging => "staging",
        Table::Events => "events",
    };
    let sink = client.copy_in(&format!(
        "COPY {name} ({}) FROM STDIN (FORMAT binary)",
        COLUMN_NAMES.join(", ")
    ))?;
    let mut writer = BinaryCopyInWriter::new(sink, &COLUMNS);
    for e in batch {
        writer.write(&[
            &e.org.0,
            &e.id.0,
            &&*e.kind,
            &RawJsonb(&e.payload),
            &e.dedup_id.as_deref(),
            &e.created_at,
        ])?;
    }
    writer.finish()
}
