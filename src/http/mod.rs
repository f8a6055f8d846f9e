//! http: HTTP/1.1 on a core: the connection loop (limits, timeouts, keep-alive, pipelining),
//! request framing, and response serialization.

pub mod conn;
pub mod request;
pub mod response;
