//! Triggers: a thread-per-core event-ingestion server on io_uring that answers 2xx only after
//! PostgreSQL has committed the event.
//!
//! How a request flows: a core (`core`) accepts on its own `SO_REUSEPORT` listener and hands
//! the connection to its `http::Server`, which frames requests with limits and calls the
//! core's `api::Context`, an `http::Handler`. The API routes the request, checks its key
//! (`auth`: the shared cache, misses on the query threads of `db`), validates the event, and
//! pushes it onto the core's bounded ring (`queue`). Persister threads (`persist`) drain every
//! ring into batches and store each in one transaction (`db::events`), then send one
//! completion message per batch back to each core, whose mail task wakes the waiting requests:
//! 202 or 409. Latency and counters are recorded per core and per persister (`stats`) and
//! merged when read. With no database URL the server runs its own PostgreSQL (`cluster`).
//!
//! The modules stand on floors; each imports only from floors below its own (a test reads the
//! imports and holds the code to this table):
//!
//! | floor | modules | what they are |
//! |---|---|---|
//! | 7 | `server`, `ops` | start-up and shutdown order; the operator's commands |
//! | 6 | `config` | flags, environment, file, defaults → each subsystem's settings |
//! | 5 | `core` | one pinned runtime per core: accept loop, mail and drain tasks |
//! | 4 | `api`, `persist` | the routes; the only writer of events |
//! | 3 | `auth`, `queue` | keys and the key cache; rings, doorbell, mailboxes, waiters |
//! | 2 | `db` | connections, migrations, query threads, every SQL statement |
//! | 1 | `http`, `cluster`, `egress`, `ratelimit`, `shutdown`, `stats` | HTTP/1.1 for any handler; the embedded PostgreSQL; where webhooks may go; token buckets; the stop signal; histograms |
//! | 0 | `ids`, `jsonb_text`, `tiers` | identifiers; the text PostgreSQL prints for a jsonb value; the plans organizations are on (rate, retention) |

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod core;
pub mod db;
pub mod delivery;
pub mod egress;
pub mod hooks;
pub mod http;
pub mod ids;
pub mod jsonb_text;
pub mod ops;
pub mod persist;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod tiers;

/// The floors of the table above, lowest first; `main.rs` stands above them all.
#[cfg(test)]
const FLOORS: &[&[&str]] = &[
    &["ids", "jsonb_text", "tiers"],
    &[
        "http",
        "cluster",
        "egress",
        "ratelimit",
        "shutdown",
        "stats",
    ],
    &["db"],
    &["auth", "hooks", "queue"],
    &["api", "delivery", "persist"],
    &["core"],
    &["config"],
    &["server", "ops"],
];

#[cfg(test)]
mod floors;
