//! Triggers: a thread-per-core event-ingestion server on io_uring that answers 2xx only after
//! PostgreSQL has committed the event.
//!
//! How a request flows: a core (`core`) accepts on its own `SO_REUSEPORT` listener and runs the
//! connection (`http::conn`): framing with limits (`http::request`), routing (`api`), key check
//! against the shared cache (`auth`, misses go to the query threads in `db`), validation
//! (`api::events`), then a push onto the core's bounded ring (`queue`). Persister threads
//! (`persist`) drain every ring into batches, COPY each batch into PostgreSQL in one transaction,
//! and send one completion message per batch back to each core, whose mail task wakes the
//! waiting requests: 202 or 409. Latency and counters are recorded per core and per persister
//! (`stats`) and merged when read. With no database URL the server runs its own cluster (`pg`).
//!
//! Module map:
//! - `server`: start-up and shutdown order: cluster, migrations, persisters, cores, signals.
//! - `config`: the one `Config`, from flags, `TRIGGERS_*` variables, a file and the defaults.
//! - `core`, `http`, `api`: serving. `queue`, `persist`: the write path. `db`, `pg`: PostgreSQL.
//! - `auth`, `ids`, `stats`: keys, identifiers, measurements.

pub mod api;
pub mod auth;
pub mod config;
pub mod core;
pub mod db;
pub mod http;
pub mod ids;
pub mod persist;
pub mod pg;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod stats;

use std::sync::Arc;
use std::time::Instant;

/// What every core and thread shares. Built once at start-up.
pub struct Shared {
    pub config: config::Config,
    pub hub: Arc<queue::Hub>,
    pub stats: Arc<stats::Stats>,
    pub keys: Arc<auth::KeyCache>,
    /// Ingest tokens per organization, by tier.
    pub org_limits: ratelimit::Limiter<ids::OrgId>,
    /// Self-serve key generation per client address.
    pub keygen_limits: ratelimit::Limiter<std::net::IpAddr>,
    pub queries: db::QueryPool,
    pub persist: Arc<persist::PersistShared>,
    pub started: Instant,
}
