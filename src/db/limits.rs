//! db::limits: the statement on `rate_buckets`: leasing tokens from an organization's bucket
//! shared by every node.

use postgres::types::Type;
use postgres::Client;

use crate::ids::OrgId;

/// What a lease took, and what the bucket holds after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lease {
    pub granted: f64,
    pub left: f64,
}

/// Takes up to `want` tokens from `org`'s bucket of `per_minute` (also its burst), refilled for
/// the time since it was last leased from, but none unless it holds `need` (a request refused
/// leaves nothing stranded on its node); a new bucket starts full. One statement, so nodes
/// leasing at once take turns on the row and never take more than it holds.
pub fn lease(
    client: &mut Client,
    org: OrgId,
    per_minute: u64,
    need: f64,
    want: f64,
) -> Result<Lease, postgres::Error> {
    let burst = per_minute as f64;
    let per_second = burst / 60.0;
    // What the bucket holds now: refilled since its last lease (never for a negative time: a
    // statement that waited for another node's lease on the row may have started before it).
    let held = "least($2, b.tokens
                + greatest(0, extract(epoch FROM now() - b.updated_at))::float8 * $3)";
    // All of `want` that it holds, or none unless it holds `need`.
    let grant = |held: &str| format!("(CASE WHEN {held} >= $4 THEN least($5, {held}) ELSE 0 END)");
    let (grant_new, grant_held) = (grant("$2"), grant(held));
    let sql = format!(
        "INSERT INTO rate_buckets AS b (org_id, tokens, updated_at, granted)
         VALUES ($1, $2 - {grant_new}, now(), {grant_new})
         ON CONFLICT (org_id) DO UPDATE SET
             granted = {grant_held},
             tokens = {held} - {grant_held},
             updated_at = greatest(b.updated_at, now())
         RETURNING granted, tokens"
    );
    // Typed parameters: one round trip, no statement prepared first.
    let row = client.query_typed_one(
        &sql,
        &[
            (&org, Type::UUID),
            (&burst, Type::FLOAT8),
            (&per_second, Type::FLOAT8),
            (&need, Type::FLOAT8),
            (&want, Type::FLOAT8),
        ],
    )?;
    Ok(Lease {
        granted: row.get(0),
        left: row.get(1),
    })
}
