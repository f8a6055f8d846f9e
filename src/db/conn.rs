//! db::conn: how every connection to PostgreSQL is opened: bounded in time, and named so that
//! `pg_stat_activity` shows whose it is.

use std::time::Duration;

use postgres::{Client, NoTls};

/// Longest wait for a TCP/unix connection to PostgreSQL.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub fn connect(config: &postgres::Config) -> Result<Client, postgres::Error> {
    let mut config = config.clone();
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("triggers");
    config.connect(NoTls)
}
