//! db: PostgreSQL: connections, migrations, the query threads, and every statement the
//! server runs, one file per table. Imports `ids`, `shutdown` and `stats`.
//!
//! - `events`: the COPY row layout, batch writes (persisters), inbox pages and acks.
//! - `orgs`: organizations, their API keys and webhook configuration.
//! - `deliveries`: the webhook delivery queue and its attempts.
//! - `limits`: the token buckets every node leases rate-limit tokens from.
//! - `partitions`: `events` by retention and time; the upkeep that creates and drops partitions.
//! - `pool`: the query threads that run everything but event writes off the cores.
//! - `conn`: how every connection to PostgreSQL is opened.
//! - `listen`: how a change is announced to every node (NOTIFY), and the thread that LISTENs
//!   for the key and webhook listeners.
//!
//! Every function that touches a tenant's rows takes its `OrgId` first, so another tenant's id
//! behaves exactly like one that does not exist.

mod conn;
pub mod deliveries;
pub mod events;
pub mod limits;
pub mod listen;
pub mod orgs;
pub mod partitions;
mod pool;
#[cfg(test)]
mod statements;

use std::error::Error;

use anyhow::Context;
use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

pub use conn::{connect, Link, CONNECT_TIMEOUT, CONNECT_WARN_EVERY};
pub use pool::{QueryError, QueryPool, QueryThreads, Work};

use crate::ids::{EventId, OrgId};

/// Key of the advisory lock that serializes migrations between nodes starting together.
const MIGRATION_LOCK_KEY: i64 = 0x7472_6967_6765_7273; // "triggers"

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Applies every migration not yet applied, holding an advisory lock so that nodes sharing a
/// database take turns.
pub fn migrate(config: &postgres::Config) -> anyhow::Result<()> {
    let mut client = connect(config).context("connecting to PostgreSQL to migrate")?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])?;
    let report = embedded::migrations::runner().run(&mut client);
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])?;
    let report = report.context("applying migrations")?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "migration applied");
    }
    Ok(())
}

/// Applies migrations up to `version` only: a database as an older release left it, for the
/// tests of an upgrade.
pub fn migrate_until(config: &postgres::Config, version: u32) -> anyhow::Result<()> {
    let mut client = connect(config).context("connecting to PostgreSQL to migrate")?;
    embedded::migrations::runner()
        .set_target(refinery::Target::Version(version))
        .run(&mut client)
        .context("applying migrations")?;
    Ok(())
}

/// Why a statement failed, as the code that retries it must tell.
#[derive(Debug)]
pub enum Failure {
    /// The connection is gone: reconnect, then try again.
    Connection,
    /// Worth retrying on the same connection (deadlock, serialization, resources).
    Transient,
    /// PostgreSQL refused the data itself (its message): some row is bad, and will stay bad.
    Data(String),
}

/// Classifies `e`, from a client whose connection is `client_closed` or not.
pub fn classify(e: &postgres::Error, client_closed: bool) -> Failure {
    if client_closed {
        return Failure::Connection;
    }
    let Some(db) = e.as_db_error() else {
        return Failure::Connection;
    };
    let code = db.code();
    if code == &SqlState::T_R_DEADLOCK_DETECTED || code == &SqlState::T_R_SERIALIZATION_FAILURE {
        return Failure::Transient;
    }
    match &code.code()[..2] {
        // data exception, integrity violation, program limit (say, an index row too large)
        "22" | "23" | "54" => Failure::Data(db.message().to_string()),
        "08" | "57" => Failure::Connection,
        _ => Failure::Transient,
    }
}

/// The id newtypes go to and come from PostgreSQL as the `uuid`s they wrap.
macro_rules! uuid_column {
    ($($t:ident),*) => {$(
        impl ToSql for $t {
            fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
                self.0.to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <uuid::Uuid as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $t {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<$t, Box<dyn Error + Sync + Send>> {
                uuid::Uuid::from_sql(ty, raw).map($t)
            }

            fn accepts(ty: &Type) -> bool {
                <uuid::Uuid as FromSql>::accepts(ty)
            }
        }
    )*};
}

uuid_column!(OrgId, EventId);
