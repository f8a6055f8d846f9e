//! http: HTTP/1.1 on one core, for any `Handler`. Imports nothing of the crate: it knows
//! requests, responses and framing, never routes, keys or the API's errors.
//!
//! - `budget`: the node-wide bound on the memory request and response bodies hold.
//! - `guards`: what the cores share to guard the node (the budget and the pace).
//! - `pace`: answers that serve no one wait their turn while the node serves someone.
//! - `request`: framing as pure functions over bytes (limits, RFC 9112 rules, chunked bodies).
//! - `response`: a response and its serialization.
//! - `handler`: what the application provides (`Handler`), what it sees of a request, and the
//!   refusals the HTTP layer answers on its own.
//! - `conn`: one core's HTTP state (`Server`: limits, open connections, drain, `Date`, request
//!   ids) and each connection from accept to close (timeouts, keep-alive, pipelining).
//!
//! The handler is a type parameter, so dispatch is static: no boxing on the hot path.

pub mod budget;
pub mod conn;
pub mod guards;
pub mod handler;
pub mod pace;
pub mod request;
pub mod response;

pub use budget::{Budget, Lease};
pub use conn::{Limits, Server};
pub use guards::Guards;
pub use handler::{Handler, Refusal, Request};
pub use pace::Pace;
pub use request::{Field, FrameError, Method};
pub use response::Response;
