//! http::handler: what the application behind the HTTP layer provides, what it sees of a
//! request, and the refusals the HTTP layer answers on its own (through the handler, so every
//! error body has the application's shape).

use std::net::IpAddr;
use std::time::Duration;

use super::request::{Field, FrameError, Method};
use super::response::Response;

/// What the application behind the HTTP layer provides. Its futures need not be `Send`: each
/// core runs its own connections on its own thread.
#[allow(async_fn_in_trait)]
pub trait Handler {
    /// Where a request goes, resolved from its head before its body is read. Unknown paths and
    /// wrong methods are routes too (the handler answers them), so the body can be read and the
    /// connection kept.
    type Route: Copy;

    fn route(&self, method: Method, path: &str) -> Self::Route;

    /// Largest body `route` takes: a larger declared body is refused before it is read.
    fn body_bytes_max(&self, route: Self::Route) -> usize;

    /// What `admit` learned from a request's head, handed on to `handle`.
    type Admitted;

    /// Decides from the head alone, before any of the body is read (`req.body` is empty).
    /// `Err` is the answer: a small announced body is then read and dropped to keep the
    /// connection, a larger or chunked one is never read and the connection closes.
    fn admit(&self, route: Self::Route, req: &Request<'_>) -> Result<Self::Admitted, Response>;

    async fn handle(
        &self,
        route: Self::Route,
        admitted: Self::Admitted,
        req: &Request<'_>,
    ) -> Response;

    /// The answer to a request the HTTP layer refuses; the connection then closes.
    fn refused(&self, refusal: Refusal) -> Response;

    /// Called once the response to a request on `route` is written, with the time since its
    /// head was read.
    fn responded(&self, route: Self::Route, took: Duration);
}

/// A request the HTTP layer refuses on its own: its framing is broken or too large, the client
/// is too slow, or the core has no room for another connection. Each status and `code` is stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Frame(FrameError),
    /// The body is over the route's limit (bytes).
    BodyTooLarge(usize),
    /// The head or body was not received in time.
    Timeout,
    /// The core is at its connection limit.
    Overloaded,
    /// The node's budget for large bodies is spent (see `http::budget`).
    BodiesBusy,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Frame(FrameError::HeadTooLarge) => 431,
            Refusal::Frame(FrameError::UnsupportedCoding) => 501,
            Refusal::Frame(FrameError::BodyTooLarge) | Refusal::BodyTooLarge(_) => 413,
            Refusal::Frame(_) => 400,
            Refusal::Timeout => 408,
            Refusal::Overloaded | Refusal::BodiesBusy => 503,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refusal::Frame(FrameError::HeadTooLarge) => "headers_too_large",
            Refusal::Frame(FrameError::UnsupportedCoding) => "unsupported_transfer_encoding",
            Refusal::Frame(FrameError::BodyTooLarge) | Refusal::BodyTooLarge(_) => {
                "payload_too_large"
            }
            Refusal::Frame(_) => "bad_request",
            Refusal::Timeout => "request_timeout",
            Refusal::Overloaded | Refusal::BodiesBusy => "overloaded",
        }
    }

    pub fn message(self) -> String {
        match self {
            Refusal::Frame(FrameError::HeadTooLarge) => "Request headers are too large".into(),
            Refusal::Frame(FrameError::UnsupportedCoding) => {
                "Only the chunked transfer coding is supported".into()
            }
            Refusal::Frame(FrameError::AmbiguousLength) => {
                "Malformed request: conflicting or repeated Content-Length/Transfer-Encoding".into()
            }
            Refusal::Frame(FrameError::BadLength) => {
                "Malformed request: invalid Content-Length".into()
            }
            Refusal::Frame(FrameError::Malformed) => {
                "Malformed request: unparseable request line or header".into()
            }
            Refusal::Frame(FrameError::LineTooLong) => {
                "Malformed request: a chunk-size line or the trailers are too long".into()
            }
            Refusal::Frame(FrameError::BadHost) => {
                "Malformed request: HTTP/1.1 needs exactly one Host header".into()
            }
            Refusal::Frame(FrameError::BodyTooLarge) => "Request body is too large".into(),
            Refusal::BodyTooLarge(max) => format!("Request body exceeds {max} bytes"),
            Refusal::Timeout => "The request was not received in time".into(),
            Refusal::Overloaded => "Server is at capacity; retry shortly".into(),
            Refusal::BodiesBusy => {
                "Server holds as many large bodies as it may; retry shortly (small requests still pass)"
                    .into()
            }
        }
    }
}

/// What a handler sees of a request; every field borrows the connection's buffer.
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: &'a str,
    pub peer: IpAddr,
    pub body: &'a [u8],
    /// The buffer the head was parsed from, which `fields` index.
    pub(super) head: &'a [u8],
    pub(super) fields: &'a [Field],
}

impl<'a> Request<'a> {
    /// The values of every header field named `name` (ASCII case-insensitive), in order.
    pub fn headers(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        let head = self.head;
        self.fields
            .iter()
            .filter(move |f| head[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |f| &head[f.value.clone()])
    }

    /// The value of the last header field named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &'a str) -> Option<&'a [u8]> {
        self.headers(name).last()
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::parse_head;
    use super::*;

    #[test]
    fn a_header_is_found_by_name_in_any_case_and_the_last_one_wins() {
        let raw = "GET / HTTP/1.1\r\nX-Api-Key: one\r\nHost: a\r\nx-api-key:  two \r\n\r\n";
        let mut fields = Vec::new();
        parse_head(raw.as_bytes(), &mut fields).unwrap().unwrap();
        let req = Request {
            method: Method::Get,
            path: "/",
            query: "",
            peer: IpAddr::from([127, 0, 0, 1]),
            body: b"",
            head: raw.as_bytes(),
            fields: &fields,
        };
        assert_eq!(req.header("X-API-KEY"), Some(&b"two"[..]));
        assert_eq!(
            req.headers("x-api-key").collect::<Vec<_>>(),
            [&b"one"[..], b"two"]
        );
        assert_eq!(req.header("host"), Some(&b"a"[..]));
        assert_eq!(req.header("authorization"), None);
    }

    #[test]
    fn every_refusal_has_its_status_and_a_stable_code() {
        let cases = [
            (
                Refusal::Frame(FrameError::HeadTooLarge),
                431,
                "headers_too_large",
            ),
            (Refusal::Frame(FrameError::Malformed), 400, "bad_request"),
            (
                Refusal::Frame(FrameError::AmbiguousLength),
                400,
                "bad_request",
            ),
            (Refusal::Frame(FrameError::BadLength), 400, "bad_request"),
            (Refusal::Frame(FrameError::LineTooLong), 400, "bad_request"),
            (Refusal::Frame(FrameError::BadHost), 400, "bad_request"),
            (
                Refusal::Frame(FrameError::UnsupportedCoding),
                501,
                "unsupported_transfer_encoding",
            ),
            (Refusal::BodyTooLarge(10), 413, "payload_too_large"),
            (Refusal::Timeout, 408, "request_timeout"),
            (Refusal::Overloaded, 503, "overloaded"),
            (Refusal::BodiesBusy, 503, "overloaded"),
        ];
        for (refusal, status, code) in cases {
            assert_eq!(
                (refusal.status(), refusal.code()),
                (status, code),
                "{refusal:?}"
            );
        }
        assert!(Refusal::BodyTooLarge(10).message().contains("10 bytes"));
    }
}
