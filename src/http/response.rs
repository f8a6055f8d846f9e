//! http::response: a response and its serialization. Every response carries `Content-Length`,
//! `Date` and `X-Request-Id`; bodies are JSON unless the handler says otherwise.

use std::io::Write;

use super::budget::Lease;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// The node budget's share a large body holds (see `http::budget`), kept until the body
    /// has been written.
    pub lease: Option<Lease>,
    /// Whether the answer serves a known client: its key or the admin token was verified and
    /// its request was not refused. `None` until the handler decides (`serving`); an answer
    /// that does not serve (`None` included) waits its turn while the node serves someone
    /// (`http::pace`).
    pub served: Option<bool>,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
            lease: None,
            served: None,
        }
    }

    pub fn json_value(status: u16, value: &serde_json::Value) -> Response {
        Response::json(
            status,
            serde_json::to_vec(value).expect("a JSON value serializes"),
        )
    }

    pub fn text(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            content_type,
            ..Response::json(status, body)
        }
    }

    /// Says whether the answer serves a known client (see `served`), unless that was said
    /// already: the handler that knows more decides first.
    pub fn serving(mut self, serves: bool) -> Response {
        self.served.get_or_insert(serves);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends `resp` to `out`. `head_only` answers a HEAD request: same headers, no body.
pub fn write(
    out: &mut Vec<u8>,
    resp: &Response,
    request_id: &[u8],
    date: &[u8],
    keep_alive: bool,
    head_only: bool,
) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(request_id);
    if resp.status != 204 {
        let _ = write!(
            out,
            "\r\ncontent-type: {}\r\ncontent-length: {}",
            resp.content_type,
            resp.body.len()
        );
    }
    for (name, value) in &resp.headers {
        let _ = write!(out, "\r\n{name}: {value}");
    }
    if !keep_alive {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
}
