//! The server's integration tests, one binary: the real `triggers` binary over real sockets,
//! against one real PostgreSQL cluster for the whole run (`testkit::shared_cluster`; tests
//! isolate by organization) and a few private clusters for the tests that stop theirs.
//!
//! One module per concern; each test's name states what it proves.

mod api;
mod backup;
mod batch;
mod dashboard;
mod durability;
mod hostile;
mod http_framing;
mod inbox_ack;
mod isolation;
mod jsonb_text;
mod keys_webhooks;
mod nodes;
mod openapi;
mod ops;
mod rate_limits;
mod retention;
mod webhooks;
